//! The trust bundle a volume asks for (`trust-*`) and the node's cap on its sources.

use std::collections::BTreeMap;

use super::AttrError;
use super::CERTVOL_PREFIX;
use super::context::{Attr, Attrs, invalid, invalid_entry};
use super::files::check_file_name;
use super::values::{parse_bool, split_list};
use crate::spec::request::{CertRequest, FileNames};
use crate::trust::source::{self as trust_source, KeyRef, SignerSelector, TrustSpec};

/// Default of `--max-trust-sources-per-volume`: a volume typically names one to three sources
/// (a partner CA, a corporate root, a signer's bundles); each distinct one costs the node a list
/// and a watch.
pub const DEFAULT_MAX_TRUST_SOURCES: usize = 16;

/// The node's cap on Kubernetes trust sources per volume (`--max-trust-sources-per-volume`):
/// the entries of trust-configmaps, trust-secrets and trust-cluster-bundles plus a
/// trust-signer-name, after duplicates are dropped. The error names the attribute whose entries
/// cross the cap. Checked at publish only, so a lowered cap never breaks a published volume.
pub fn check_trust_sources(req: &CertRequest, max: usize) -> Result<(), AttrError> {
    let Some(spec) = &req.trust else {
        return Ok(());
    };
    let lists = [
        (&spec.config_maps_attribute, spec.config_maps.len()),
        (&spec.secrets_attribute, spec.secrets.len()),
        (&spec.cluster_bundles_attribute, spec.cluster_bundles.len()),
        (&spec.signer_attribute, usize::from(spec.signer.is_some())),
    ];
    let total: usize = lists.iter().map(|(_, n)| n).sum();
    if total <= max {
        return Ok(());
    }
    let mut seen = 0;
    let mut crossing = lists[0].0;
    for (attribute, n) in lists {
        seen += n;
        if seen > max {
            crossing = attribute;
            break;
        }
    }
    Err(AttrError::TooLarge {
        attribute: crossing.clone(),
        what: "the number of Kubernetes trust sources the volume names (the entries of \
               trust-configmaps, trust-secrets and trust-cluster-bundles and a trust-signer-name, \
               together)",
        got: total.to_string(),
        max: format!("{max} (the node's --max-trust-sources-per-volume)"),
    })
}

/// The `trust-*` attributes (all certvol only). A bundle is requested when a source or the file
/// name is set, or `trust-issuer-ca`/`trust-public-roots` is "true"; explicit "false" values alone
/// request nothing.
pub(super) fn parse_trust(
    attrs: &Attrs<'_>,
    files: &mut FileNames,
    home: &str,
) -> Result<Option<TrustSpec>, AttrError> {
    let flag = |name: &str| attrs.get(name).map(parse_bool).transpose();
    let issuer_ca = flag("trust-issuer-ca")?;
    let public_roots = flag("trust-public-roots")?;
    let file = attrs.get("trust-bundle-file");
    let sources = parse_sources(attrs)?;
    let requested = file.is_some()
        || !sources.is_empty()
        || issuer_ca == Some(true)
        || public_roots == Some(true);
    if !requested {
        return Ok(None);
    }
    let issuer_ca = issuer_ca.unwrap_or(true);
    let public_roots = public_roots.unwrap_or(false);
    if !issuer_ca && !public_roots && sources.is_empty() {
        return Err(AttrError::Missing {
            attribute: key(attrs, "trust-configmaps"),
            why: format!(
                "the volume asks for a trust bundle ({:?} is set) but {:?} is \"false\" and no \
                 other source is set (trust-configmaps, trust-secrets, trust-cluster-bundles, \
                 trust-signer-name, trust-public-roots)",
                key(attrs, "trust-bundle-file"),
                key(attrs, "trust-issuer-ca"),
            ),
        });
    }
    files.trust_bundle = Some(bundle_file(attrs, file, files, home)?);
    Ok(Some(TrustSpec {
        issuer_ca,
        config_maps: sources.config_maps,
        config_maps_attribute: key(attrs, "trust-configmaps"),
        secrets: sources.secrets,
        secrets_attribute: key(attrs, "trust-secrets"),
        cluster_bundles: sources.cluster_bundles,
        cluster_bundles_attribute: key(attrs, "trust-cluster-bundles"),
        signer: sources.signer,
        signer_attribute: key(attrs, "trust-signer-name"),
        public_roots,
    }))
}

/// The Kubernetes objects a trust bundle is made from, duplicates dropped.
struct Sources {
    config_maps: Vec<KeyRef>,
    secrets: Vec<KeyRef>,
    cluster_bundles: Vec<String>,
    signer: Option<SignerSelector>,
}

impl Sources {
    fn is_empty(&self) -> bool {
        self.config_maps.is_empty()
            && self.secrets.is_empty()
            && self.cluster_bundles.is_empty()
            && self.signer.is_none()
    }
}

fn parse_sources(attrs: &Attrs<'_>) -> Result<Sources, AttrError> {
    let config_maps = key_refs(attrs, "trust-configmaps")?;
    let secrets = key_refs(attrs, "trust-secrets")?;
    let cluster_bundles = cluster_bundles(attrs)?;
    let labels = signer_labels(attrs)?;
    let signer = signer(attrs, labels)?;
    Ok(Sources {
        config_maps,
        secrets,
        cluster_bundles,
        signer,
    })
}

/// The key under which `name` is set, or certvol's spelling of it when unset.
fn key(attrs: &Attrs<'_>, name: &str) -> String {
    attrs
        .get(name)
        .map_or_else(|| format!("{CERTVOL_PREFIX}{name}"), |a| a.key.to_owned())
}

/// `trust-configmaps` or `trust-secrets`: object keys, duplicates dropped.
fn key_refs(attrs: &Attrs<'_>, name: &str) -> Result<Vec<KeyRef>, AttrError> {
    let Some(a) = attrs.get(name) else {
        return Ok(Vec::new());
    };
    let accepted = "NAME/KEY (the pod's namespace) or NAMESPACE/NAME/KEY (the node's \
                    --trust-namespace only), separated by commas";
    let mut out: Vec<KeyRef> = Vec::new();
    for entry in split_list(a.value) {
        let r = KeyRef::parse(&entry).map_err(|p| invalid_entry(a, &entry, p, accepted))?;
        if !out.contains(&r) {
            out.push(r);
        }
    }
    if out.is_empty() {
        return Err(invalid(a, "lists no entry", accepted));
    }
    Ok(out)
}

fn cluster_bundles(attrs: &Attrs<'_>) -> Result<Vec<String>, AttrError> {
    let mut cluster_bundles: Vec<String> = Vec::new();
    let Some(a) = attrs.get("trust-cluster-bundles") else {
        return Ok(cluster_bundles);
    };
    const ACCEPTED: &str = "ClusterTrustBundle names (lowercase letters, digits, '-', '.' \
                            and the ':' of signer prefixes), separated by commas";
    for entry in split_list(a.value) {
        if !trust_source::is_cluster_bundle_name(&entry) {
            return Err(invalid_entry(
                a,
                &entry,
                "is not a ClusterTrustBundle name",
                ACCEPTED,
            ));
        }
        if !cluster_bundles.contains(&entry) {
            cluster_bundles.push(entry);
        }
    }
    if cluster_bundles.is_empty() {
        return Err(invalid(a, "lists no ClusterTrustBundle", ACCEPTED));
    }
    Ok(cluster_bundles)
}

fn signer_labels(attrs: &Attrs<'_>) -> Result<Option<BTreeMap<String, String>>, AttrError> {
    let Some(a) = attrs.get("trust-signer-labels") else {
        return Ok(None);
    };
    const ACCEPTED: &str = "label requirements KEY=VALUE separated by commas, such as \
                            \"env=prod,team=web\"";
    let mut labels = BTreeMap::new();
    for entry in split_list(a.value) {
        let Some((k, v)) = entry.split_once('=') else {
            return Err(invalid_entry(a, &entry, "is not KEY=VALUE", ACCEPTED));
        };
        let (k, v) = (k.trim(), v.trim());
        if !trust_source::is_label_key(k) {
            return Err(invalid_entry(
                a,
                &entry,
                "has an invalid label key",
                ACCEPTED,
            ));
        }
        if !trust_source::is_label_value(v) {
            return Err(invalid_entry(
                a,
                &entry,
                "has an invalid label value",
                ACCEPTED,
            ));
        }
        if labels
            .insert(k.to_owned(), v.to_owned())
            .is_some_and(|old| old != v)
        {
            return Err(invalid_entry(
                a,
                &entry,
                "sets a label key a second time with another value",
                ACCEPTED,
            ));
        }
    }
    Ok(Some(labels))
}

/// `trust-signer-name`, restricted by `trust-signer-labels`, which needs it.
fn signer(
    attrs: &Attrs<'_>,
    labels: Option<BTreeMap<String, String>>,
) -> Result<Option<SignerSelector>, AttrError> {
    let Some(a) = attrs.get("trust-signer-name") else {
        if labels.is_some() {
            return Err(AttrError::Missing {
                attribute: key(attrs, "trust-signer-name"),
                why: format!(
                    "{:?} only restricts the ClusterTrustBundles selected by signer name",
                    key(attrs, "trust-signer-labels")
                ),
            });
        }
        return Ok(None);
    };
    if let Err(problem) = trust_source::check_signer_name(a.value) {
        return Err(invalid(
            a,
            problem,
            "a signer name DOMAIN/PATH such as \"example.com/my-signer\"",
        ));
    }
    Ok(Some(SignerSelector {
        signer_name: a.value.to_owned(),
        labels: labels.unwrap_or_default(),
    }))
}

/// The bundle's file name (`trust-bundle-file` or the default), distinct from the others.
fn bundle_file(
    attrs: &Attrs<'_>,
    file: Option<Attr<'_>>,
    files: &FileNames,
    home: &str,
) -> Result<String, AttrError> {
    let bundle_file = match file {
        Some(a) => {
            if let Err(problem) = check_file_name(a.value) {
                return Err(invalid(
                    a,
                    problem,
                    "a plain file name such as \"ca-bundle.crt\": no '/', not starting with \
                     \"..\", no leading or trailing spaces, at most 255 bytes",
                ));
            }
            a.value.to_owned()
        }
        None => trust_source::DEFAULT_BUNDLE_FILE.to_owned(),
    };
    let pkcs12 = files.pkcs12.as_ref();
    for (other, name) in [
        ("ca-file", Some(&files.ca)),
        ("certificate-file", Some(&files.certificate)),
        ("privatekey-file", Some(&files.private_key)),
        ("key-chain-file", files.key_chain.as_ref()),
        ("chain-file", files.chain.as_ref()),
        ("pkcs12-filename", pkcs12.and_then(|p| p.keystore.as_ref())),
        (
            "truststore-pkcs12-file",
            pkcs12.and_then(|p| p.truststore.as_ref()),
        ),
    ] {
        if name == Some(&bundle_file) {
            return Err(AttrError::DuplicateFileName {
                attribute: key(attrs, "trust-bundle-file"),
                name: bundle_file,
                other: match attrs.get(other) {
                    Some(a) => format!("{:?}", a.key),
                    None => format!("{:?} (its default)", format!("{home}{other}")),
                },
            });
        }
    }
    Ok(bundle_file)
}

#[cfg(test)]
mod tests {
    use super::super::tests::parse_ok;
    use super::*;

    /// The cap on Kubernetes trust sources per volume: counted over all four attributes after
    /// duplicates are dropped, the error names the attribute whose entries cross the cap, the
    /// count and the cap (the node's flag); the issuing CA and public roots are not counted.
    #[test]
    fn trust_source_count_cap_table() {
        let names = |prefix: &str, n: usize| -> String {
            (0..n)
                .map(|i| format!("{prefix}{i}/ca.crt"))
                .collect::<Vec<_>>()
                .join(",")
        };
        let bundles = |n: usize| -> String {
            (0..n)
                .map(|i| format!("b{i}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        let (cm16, cm17, cm10, s6, s7) = (
            names("cm", 16),
            names("cm", 17),
            names("cm", 10),
            names("s", 6),
            names("s", 7),
        );
        let dup = format!("{cm16},cm0/ca.crt,cm1/ca.crt");
        let b6 = bundles(6);
        // Attributes, cap, expected error (attribute, count) or None when accepted.
        type Row<'a> = (Vec<(&'a str, &'a str)>, usize, Option<(&'a str, usize)>);
        let rows: Vec<Row> = vec![
            (vec![("csi.certvol.io/trust-configmaps", &cm16)], 16, None),
            (vec![("csi.certvol.io/trust-configmaps", &dup)], 16, None),
            (
                vec![("csi.certvol.io/trust-configmaps", &cm17)],
                16,
                Some(("csi.certvol.io/trust-configmaps", 17)),
            ),
            (
                vec![
                    ("csi.certvol.io/trust-configmaps", &cm10),
                    ("csi.certvol.io/trust-secrets", &s7),
                ],
                16,
                Some(("csi.certvol.io/trust-secrets", 17)),
            ),
            (
                vec![
                    ("csi.certvol.io/trust-configmaps", &cm10),
                    ("csi.certvol.io/trust-secrets", &s6),
                    ("csi.certvol.io/trust-signer-name", "example.com/s"),
                ],
                16,
                Some(("csi.certvol.io/trust-signer-name", 17)),
            ),
            (
                vec![
                    ("csi.certvol.io/trust-cluster-bundles", &b6),
                    ("csi.certvol.io/trust-public-roots", "true"),
                ],
                6,
                None,
            ),
            (
                vec![("csi.certvol.io/trust-cluster-bundles", &b6)],
                5,
                Some(("csi.certvol.io/trust-cluster-bundles", 6)),
            ),
            (vec![("csi.certvol.io/trust-public-roots", "true")], 1, None),
            (vec![], 1, None),
        ];
        for (attrs, max, want) in rows {
            let req = parse_ok(&attrs);
            match (check_trust_sources(&req, max), want) {
                (Ok(()), None) => {}
                (Err(e), Some((attribute, count))) => {
                    assert!(matches!(e, AttrError::TooLarge { .. }), "{e:?}");
                    assert_eq!(e.attribute(), attribute);
                    assert_eq!(
                        e.to_string(),
                        format!(
                            "volume attribute {attribute:?}: the number of Kubernetes trust \
                             sources the volume names (the entries of trust-configmaps, \
                             trust-secrets and trust-cluster-bundles and a trust-signer-name, \
                             together) is {count}; at most {max} (the node's \
                             --max-trust-sources-per-volume) is accepted"
                        )
                    );
                }
                (got, want) => panic!("{attrs:?} cap {max}: got {got:?}, want {want:?}"),
            }
        }
    }
}
