//! Who signs the certificate: cert-manager's `issuer-*` attributes, or `signer-name` and
//! `ca-source` for the Kubernetes CSR API backend.

use super::context::{Attrs, invalid};
use super::{AttrError, CERT_MANAGER_PREFIX, CERTVOL_PREFIX};
use crate::spec::request::{CaSource, IssuerRef, KubeCsrRef};
use crate::trust::source as trust_source;

/// The signer a volume names, and its *home prefix* (see the module docs of `attrs`).
pub(super) struct Signer {
    pub(super) issuer: IssuerRef,
    pub(super) kube_csr: Option<KubeCsrRef>,
    pub(super) home: &'static str,
}

/// The issuer (or Kubernetes CSR signer) and the home prefix: that of the `issuer-name` key in
/// use.
pub(super) fn parse_signer(attrs: &Attrs<'_>) -> Result<Signer, AttrError> {
    let kube_csr = parse_kube_csr(attrs)?;
    let issuer_name = match (attrs.get("issuer-name"), &kube_csr) {
        (Some(a), _) => Some(a),
        // A Kubernetes CSR signer stands in for the cert-manager issuer.
        (None, Some(_)) => None,
        (None, None) => {
            return Err(AttrError::Missing {
                attribute: format!("{CERT_MANAGER_PREFIX}issuer-name"),
                why: format!(
                    "it names the cert-manager issuer that signs the certificate (\"{CERTVOL_PREFIX}\
                     issuer-name\" works too; with --issuer kubernetes-csr set \"{CERTVOL_PREFIX}\
                     signer-name\" instead)"
                ),
            });
        }
    };
    // signer-name exists under our prefix only, so a spec without issuer-name is ours.
    let home = match issuer_name {
        Some(a) if a.key.starts_with(CERT_MANAGER_PREFIX) => CERT_MANAGER_PREFIX,
        _ => CERTVOL_PREFIX,
    };
    let issuer = IssuerRef {
        name: issuer_name.map(|a| a.value.to_owned()).unwrap_or_default(),
        kind: attrs.value_or("issuer-kind", "Issuer"),
        group: attrs.value_or("issuer-group", "cert-manager.io"),
    };
    Ok(Signer {
        issuer,
        kube_csr,
        home,
    })
}

const SIGNER_NAME_HELP: &str = "a signer name of the form \"example.com/signer-name\" (a fully \
                                qualified DNS domain, \"/\", then letters, digits, '-', '_' and '.')";
const CA_SOURCE_HELP: &str = "\"clustertrustbundle-signer\" (the default), \
                              \"clustertrustbundle:NAME\", \"configmap:NAME/KEY\" or \
                              \"secret:NAME/KEY\" (in the pod's namespace)";

/// `signer-name` and `ca-source` (Kubernetes CSR API backend).
fn parse_kube_csr(attrs: &Attrs<'_>) -> Result<Option<KubeCsrRef>, AttrError> {
    let source = attrs.get("ca-source");
    let Some(signer) = attrs.get("signer-name") else {
        if let Some(source) = source {
            return Err(AttrError::Missing {
                attribute: format!("{CERTVOL_PREFIX}signer-name"),
                why: format!(
                    "{:?} only applies to Kubernetes CSR API volumes, which name their signer",
                    source.key
                ),
            });
        }
        return Ok(None);
    };
    if let Err(problem) = trust_source::check_signer_name(signer.value) {
        return Err(invalid(signer, problem, SIGNER_NAME_HELP));
    }
    let ca_source = match source {
        None => CaSource::default(),
        Some(a) => parse_ca_source(a.value).map_err(|p| invalid(a, p, CA_SOURCE_HELP))?,
    };
    Ok(Some(KubeCsrRef {
        signer_name: signer.value.to_owned(),
        ca_source,
    }))
}

fn parse_ca_source(value: &str) -> Result<CaSource, &'static str> {
    let name_key = |rest: &str| -> Result<(String, String), &'static str> {
        let (name, key) = rest
            .split_once('/')
            .ok_or("needs NAME/KEY after the colon")?;
        if trust_source::is_dns_subdomain(name) && trust_source::is_data_key(key) {
            Ok((name.to_owned(), key.to_owned()))
        } else {
            Err("names an invalid object name or key")
        }
    };
    if value == "clustertrustbundle-signer" {
        return Ok(CaSource::ClusterTrustBundleSigner);
    }
    if let Some(name) = value.strip_prefix("clustertrustbundle:") {
        if !trust_source::is_cluster_bundle_name(name) {
            return Err("names an invalid ClusterTrustBundle");
        }
        return Ok(CaSource::ClusterTrustBundle(name.to_owned()));
    }
    if let Some(rest) = value.strip_prefix("configmap:") {
        let (name, key) = name_key(rest)?;
        return Ok(CaSource::ConfigMap { name, key });
    }
    if let Some(rest) = value.strip_prefix("secret:") {
        let (name, key) = name_key(rest)?;
        return Ok(CaSource::Secret { name, key });
    }
    Err("is not a known CA source")
}
