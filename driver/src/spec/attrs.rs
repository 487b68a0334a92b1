//! CSI volume context → [`CertRequest`].
//!
//! A pure parser: no I/O, no clock. Every problem becomes an [`AttrError`] that names the
//! attribute exactly as the user wrote it, the offending value and what would be accepted, because
//! the message ends up in `kubectl describe pod` and is the only help the user gets.
//!
//! # Keys
//!
//! The keys of cert-manager's csi-driver are accepted verbatim under [`CERT_MANAGER_PREFIX`], so
//! a pod spec written for it works unchanged, and under our own [`CERTVOL_PREFIX`]. When a key is
//! set under both prefixes, ours wins. An empty value counts as unset, as in cert-manager (its
//! defaulting treats `""` as absent), so an empty value under our prefix does not hide a
//! non-empty one under cert-manager's.
//!
//! Unknown keys under either prefix are errors: a typo such as `isuer-name` must not silently
//! turn into a default. Spellings that look like cert-manager's but never were csi-driver keys
//! (`keystore-pkcs12-*`, `disable-auto-renew`) are rejected with a hint naming the right key.
//! certvol's extensions (`renew`, the extra file layouts, `pkcs12-profile`,
//! `pkcs12-password-key`, `truststore-pkcs12-file`) exist only under our prefix.
//!
//! # PKCS#12 passwords
//!
//! The password of the keystore and truststore comes from the Secret named by the volume's
//! `nodePublishSecretRef` (kubelet sends its data with NodePublishVolume), key
//! `pkcs12-password-key` (default [`DEFAULT_PKCS12_PASSWORD_KEY`]); see [`pkcs12_password`].
//! The literal `pkcs12-password` attribute exists only for parity with cert-manager: it puts the
//! password in the pod spec for everyone who can read the pod. [`stable_context`] drops it, so
//! it never reaches `state.json`.
//!
//! `csi.storage.k8s.io/*` keys fill [`PodInfo`] and are never annotations (the service account
//! tokens and `ephemeral` are dropped here; the CSI layer checks `ephemeral` itself). Keys under
//! any other prefix become [`CertRequest::annotations`]. Keys without a `/` are dropped, as
//! cert-manager does, so a spec yields the same request under both drivers.
//!
//! # Default key algorithm
//!
//! The spec's *home prefix* is the prefix of the `issuer-name` key that was used (ours when both
//! are set, by the precedence rule above). When `key-algorithm` is unset, the algorithm is
//! ECDSA if the home prefix is [`CERTVOL_PREFIX`] (the spec was written against certvol, which
//! prefers small, fast keys) and RSA if it is [`CERT_MANAGER_PREFIX`] (parity with cert-manager).
//! `key-size` then defaults to 256 for ECDSA and 2048 for RSA, and `key-encoding` to PKCS8 for
//! ECDSA and Ed25519 and PKCS1 for RSA, as cert-manager's defaulting does.
//!
//! # Variables
//!
//! `${POD_NAME}`, `${POD_NAMESPACE}`, `${POD_UID}` and `${SERVICE_ACCOUNT_NAME}` (cert-manager's
//! names; the brace-less `$POD_NAME` form works too, as with Go's `os.Expand`) are expanded in
//! `common-name`, `dns-names`, `uri-sans`, `literal-subject` and the subject fields. A `$` not
//! followed by a name or `{` is kept literally.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::time::Duration;

use crate::files::layout::Password;
use crate::spec::request::{
    CaSource, CertRequest, FileNames, IssuerRef, KeyAlgorithm, KeyEncoding, KeyUsage, KubeCsrRef,
    PasswordSource, Pkcs12Files, Pkcs12Profile, PodInfo, Sans, Subject,
};
use crate::trust::source::{self as trust_source, KeyRef, SignerSelector, TrustSpec};

/// certvol's own attribute prefix; wins over [`CERT_MANAGER_PREFIX`] when both set a key.
pub const CERTVOL_PREFIX: &str = "csi.certvol.io/";
/// cert-manager csi-driver's prefix, accepted for compatibility.
pub const CERT_MANAGER_PREFIX: &str = "csi.cert-manager.io/";
/// Service account tokens kubelet sends (CSIDriver `tokenRequests`); they change on every
/// republish and are secrets, so they are neither kept nor echoed.
pub const TOKENS_KEY: &str = "csi.storage.k8s.io/serviceAccount.tokens";

const POD_INFO_PREFIX: &str = "csi.storage.k8s.io/";
const POD_NAME_KEY: &str = "csi.storage.k8s.io/pod.name";
const POD_NAMESPACE_KEY: &str = "csi.storage.k8s.io/pod.namespace";
const POD_UID_KEY: &str = "csi.storage.k8s.io/pod.uid";
const SERVICE_ACCOUNT_KEY: &str = "csi.storage.k8s.io/serviceAccount.name";

/// cert-manager's default certificate duration (90 days).
pub const DEFAULT_DURATION: Duration = Duration::from_secs(2160 * 3600);
const DEFAULT_DURATION_TEXT: &str = "2160h";

/// Every key accepted under [`CERTVOL_PREFIX`]; the first 31 (`CERT_MANAGER_KEY_COUNT`) are
/// cert-manager csi-driver's (same spelling) and also accepted under [`CERT_MANAGER_PREFIX`].
pub const KEYS: [&str; 47] = [
    "issuer-name",
    "issuer-kind",
    "issuer-group",
    "common-name",
    "dns-names",
    "ip-sans",
    "uri-sans",
    "duration",
    "is-ca",
    "key-usages",
    "key-algorithm",
    "key-size",
    "key-encoding",
    "literal-subject",
    "organizations",
    "organizationalunits",
    "countries",
    "provinces",
    "localities",
    "streetaddresses",
    "postalcodes",
    "serialnumber",
    "renew-before",
    "reuse-private-key",
    "ca-file",
    "certificate-file",
    "privatekey-file",
    "fs-group",
    "pkcs12-enable",
    "pkcs12-filename",
    "pkcs12-password",
    // certvol extensions from here on.
    "renew",
    "signer-name",
    "ca-source",
    "key-chain-file",
    "chain-file",
    "pkcs12-profile",
    "pkcs12-password-key",
    "truststore-pkcs12-file",
    "trust-bundle-file",
    "trust-issuer-ca",
    "trust-configmaps",
    "trust-secrets",
    "trust-cluster-bundles",
    "trust-signer-name",
    "trust-signer-labels",
    "trust-public-roots",
];
const CERT_MANAGER_KEY_COUNT: usize = 31;

/// Keys that look like cert-manager's but are not accepted, each with what to write instead.
const UNSUPPORTED_KEYS: [(&str, &str); 4] = [
    // cert-manager's csi-driver never had these spellings (its own docs once mentioned them);
    // cert-manager's Certificate resource calls the feature `keystores.pkcs12`.
    (
        "keystore-pkcs12-enable",
        "csi-driver spells it \"pkcs12-enable\"; write \"csi.cert-manager.io/pkcs12-enable\"",
    ),
    (
        "keystore-pkcs12-file",
        "csi-driver spells it \"pkcs12-filename\"; write \"csi.cert-manager.io/pkcs12-filename\"",
    ),
    (
        "keystore-pkcs12-password",
        "csi-driver spells it \"pkcs12-password\"; write \"csi.cert-manager.io/pkcs12-password\", \
         or better keep the password in the Secret of nodePublishSecretRef \
         (\"csi.certvol.io/pkcs12-password-key\")",
    ),
    (
        "disable-auto-renew",
        "to turn renewal off, set \"csi.certvol.io/renew\" to \"false\"",
    ),
];

/// cert-manager csi-driver's default keystore file name.
pub const DEFAULT_PKCS12_FILE: &str = "keystore.p12";
/// Default key of the nodePublishSecretRef Secret holding the keystore password.
pub const DEFAULT_PKCS12_PASSWORD_KEY: &str = "pkcs12-password";

/// Subject fields that `literal-subject` replaces.
const SUBJECT_FIELDS: [&str; 8] = [
    "common-name",
    "organizations",
    "organizationalunits",
    "countries",
    "provinces",
    "localities",
    "streetaddresses",
    "postalcodes",
];

const VARIABLES_HELP: &str = "${POD_NAME}, ${POD_NAMESPACE}, ${POD_UID}, ${SERVICE_ACCOUNT_NAME}";
const DURATION_HELP: &str = "a Go duration such as \"2160h\", \"90m\" or \"1h30m\"";
const BOOL_HELP: &str = "\"true\" or \"false\"";

/// Why a volume context cannot be turned into a [`CertRequest`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AttrError {
    #[error("volume attribute {attribute:?} is required: {why}")]
    Missing { attribute: String, why: String },

    #[error("volume attribute {attribute:?}: value {value:?} {problem}; accepted: {accepted}")]
    Invalid {
        attribute: String,
        value: String,
        problem: String,
        accepted: String,
    },

    /// One entry of a comma-separated list is wrong; `entry` is that entry (after variable
    /// expansion), not the whole list.
    #[error("volume attribute {attribute:?}: entry {entry:?} {problem}; accepted: {accepted}")]
    InvalidEntry {
        attribute: String,
        entry: String,
        problem: String,
        accepted: String,
    },

    #[error(
        "volume attribute {attribute:?} is not a known attribute{suggestion}; accepted keys \
         under {prefix:?}: {accepted}"
    )]
    UnknownKey {
        attribute: String,
        prefix: &'static str,
        /// Empty, or `" (did you mean \"issuer-name\"?)"`.
        suggestion: String,
        accepted: String,
    },

    #[error("volume attribute {attribute:?} is a certvol extension; write it as {expected:?}")]
    WrongPrefix { attribute: String, expected: String },

    /// The input is over one of certvol's size limits (which keep a volume's state within what
    /// recovery reads back, and one pod's publish cheap for the node).
    #[error("volume attribute {attribute:?}: {what} is {got}; at most {max} is accepted")]
    TooLarge {
        attribute: String,
        what: &'static str,
        got: String,
        max: String,
    },

    #[error("volume attribute {attribute:?} is not supported by certvol: {hint}")]
    NotSupported {
        attribute: String,
        hint: &'static str,
    },

    #[error("volume attribute {attribute:?} cannot be combined with {other:?}: {why}")]
    Conflict {
        attribute: String,
        other: String,
        why: &'static str,
    },

    #[error(
        "volume attribute {attribute:?}: unknown variable {variable:?}; known variables: \
         {VARIABLES_HELP}"
    )]
    UnknownVariable { attribute: String, variable: String },

    #[error(
        "volume attribute {attribute:?} uses {variable} but kubelet did not send \
         {context_key:?}: podInfoOnMount must be enabled (podInfoOnMount: true) on the \
         CSIDriver object"
    )]
    MissingPodInfo {
        attribute: String,
        variable: &'static str,
        context_key: &'static str,
    },

    #[error(
        "volume attribute {attribute:?}: file name {name:?} is also used by {other}; every \
         file in the volume needs a distinct name"
    )]
    DuplicateFileName {
        attribute: String,
        name: String,
        other: String,
    },

    /// An attribute that only means something together with another one.
    #[error(
        "volume attribute {attribute:?} has no effect without {requires}; accepted: set that \
         too, or remove {attribute:?}"
    )]
    Requires { attribute: String, requires: String },

    /// The keystore password is not where the volume says it is.
    #[error(
        "volume attribute {attribute:?}: the PKCS#12 password is read from key {key:?} of the \
         Secret named by the volume's nodePublishSecretRef, but {found}; accepted: a \
         nodePublishSecretRef Secret holding a non-empty {key:?} (or, for cert-manager parity \
         only, a literal \"csi.cert-manager.io/pkcs12-password\")"
    )]
    MissingSecretKey {
        attribute: String,
        key: String,
        found: String,
    },

    #[error(
        "the volume asks for a certificate without any identity: set {attribute:?} or at least \
         one of \"{prefix}dns-names\", \"{prefix}ip-sans\", \"{prefix}uri-sans\" or \
         \"{prefix}literal-subject\""
    )]
    NothingRequested {
        attribute: String,
        prefix: &'static str,
    },
}

impl AttrError {
    /// The attribute key at fault, exactly as the user wrote it (or, for a missing or defaulted
    /// attribute, as the user would write it).
    pub fn attribute(&self) -> &str {
        match self {
            AttrError::Missing { attribute, .. }
            | AttrError::Invalid { attribute, .. }
            | AttrError::InvalidEntry { attribute, .. }
            | AttrError::UnknownKey { attribute, .. }
            | AttrError::WrongPrefix { attribute, .. }
            | AttrError::TooLarge { attribute, .. }
            | AttrError::NotSupported { attribute, .. }
            | AttrError::Conflict { attribute, .. }
            | AttrError::UnknownVariable { attribute, .. }
            | AttrError::MissingPodInfo { attribute, .. }
            | AttrError::DuplicateFileName { attribute, .. }
            | AttrError::Requires { attribute, .. }
            | AttrError::MissingSecretKey { attribute, .. }
            | AttrError::NothingRequested { attribute, .. } => attribute,
        }
    }
}

/// The volume context without keys that change between republishes (the service account
/// tokens) or that are secrets (a literal `pkcs12-password`), as a sorted map, so the volume
/// layer can tell a repeated publish from a changed one and can record it in `state.json`.
pub fn stable_context(ctx: &HashMap<String, String>) -> BTreeMap<String, String> {
    ctx.iter()
        .filter(|(k, _)| k.as_str() != TOKENS_KEY && !is_literal_password_key(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Whether `key` is a literal `pkcs12-password` attribute, whose value is a secret.
pub fn is_literal_password_key(key: &str) -> bool {
    [CERTVOL_PREFIX, CERT_MANAGER_PREFIX]
        .iter()
        .any(|p| key.strip_prefix(p) == Some("pkcs12-password"))
}

/// The password of the volume's PKCS#12 files: the nodePublishSecretRef Secret's key when
/// kubelet sent it (the Secret wins over a literal), else the literal `pkcs12-password`
/// attribute (cert-manager parity). A key named explicitly by `pkcs12-password-key` must be in
/// the Secret.
pub fn pkcs12_password(
    source: &PasswordSource,
    ctx: &HashMap<String, String>,
    secrets: &HashMap<String, String>,
) -> Result<Password, AttrError> {
    match secrets.get(&source.secret_key) {
        Some(value) if !value.is_empty() => return Ok(Password::new(value.clone())),
        _ => {}
    }
    let literal = source
        .literal_attribute
        .as_ref()
        .and_then(|k| ctx.get(k))
        .filter(|v| !v.is_empty());
    if let (Some(literal), None) = (literal, &source.secret_key_attribute) {
        return Ok(Password::new(literal.clone()));
    }
    let found = match secrets.get(&source.secret_key) {
        Some(_) => "its value is empty".to_owned(),
        None if secrets.is_empty() => "kubelet sent no Secret (set nodePublishSecretRef on the \
                                       pod's csi volume)"
            .to_owned(),
        // The Secret's other key names are not listed: kubelet reads it with the node's
        // credentials, and the message reaches whoever can see the pod's events, who may not
        // be allowed to read the Secret.
        None => "the Secret has no such key".to_owned(),
    };
    Err(AttrError::MissingSecretKey {
        attribute: source
            .secret_key_attribute
            .clone()
            .unwrap_or_else(|| format!("{CERTVOL_PREFIX}pkcs12-password-key")),
        key: source.secret_key.clone(),
        found,
    })
}

/// Parses a CSI volume context into the certificate it asks for. See the module docs for the
/// rules.
/// The volume context a publish may carry: names and values of every attribute, kubelet's keys
/// included. Far above any honest spec (a service-account token is about 1 KiB), and it bounds
/// what `state.json` records of the context.
pub const MAX_CONTEXT_BYTES: usize = 64 * 1024;
/// Subject alternative names per certificate, all kinds together.
pub const MAX_SANS: usize = 100;
/// Pass-through annotations per request: how many, and their names and values together.
pub const MAX_ANNOTATIONS: usize = 32;
pub const MAX_ANNOTATION_BYTES: usize = 8 * 1024;

fn check_context_size(ctx: &HashMap<String, String>) -> Result<(), AttrError> {
    let total: usize = ctx.iter().map(|(k, v)| k.len() + v.len()).sum();
    if total <= MAX_CONTEXT_BYTES {
        return Ok(());
    }
    // Name the attribute that weighs most: the one to look at first.
    let largest = ctx
        .iter()
        .max_by_key(|(k, v)| (k.len() + v.len(), k.as_str()))
        .map(|(k, _)| k.clone())
        .unwrap_or_default();
    Err(AttrError::TooLarge {
        attribute: largest,
        what: "the volume context (attribute names and values, this one the largest)",
        got: format!("{total} bytes"),
        max: format!("{MAX_CONTEXT_BYTES} bytes"),
    })
}

pub fn parse(ctx: &HashMap<String, String>) -> Result<CertRequest, AttrError> {
    check_context_size(ctx)?;
    let attrs = Attrs::collect(ctx)?;

    let kube_csr = parse_kube_csr(&attrs)?;
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

    let pod = &attrs.pod;
    let subject = parse_subject(&attrs, pod)?;
    let sans = parse_sans(&attrs, pod)?;
    if subject.common_name.is_none() && subject.literal.is_none() && sans.is_empty() {
        return Err(AttrError::NothingRequested {
            attribute: format!("{home}common-name"),
            prefix: home,
        });
    }

    let (duration, duration_text) = match attrs.get("duration") {
        Some(a) => (duration_attr(a)?, format!("{:?}", a.value)),
        None => (
            DEFAULT_DURATION,
            format!("{DEFAULT_DURATION_TEXT:?} (the default)"),
        ),
    };
    let renew_before = match attrs.get("renew-before") {
        None => None,
        Some(a) => {
            let before = duration_attr(a)?;
            if before >= duration {
                return Err(invalid(
                    a,
                    format!("is not shorter than the certificate duration {duration_text}"),
                    "a Go duration shorter than the certificate duration, such as \"720h\"",
                ));
            }
            Some(before)
        }
    };

    let is_ca = attrs
        .get("is-ca")
        .map(parse_bool)
        .transpose()?
        .unwrap_or(false);
    let usages = parse_usages(attrs.get("key-usages"), is_ca)?;
    let (key_algorithm, key_encoding) = parse_key(&attrs, home)?;
    let reuse_private_key = attrs
        .get("reuse-private-key")
        .map(parse_bool)
        .transpose()?
        .unwrap_or(false);
    let renew = attrs
        .get("renew")
        .map(parse_bool)
        .transpose()?
        .unwrap_or(true);
    let mut files = parse_files(&attrs, home)?;
    let fs_group = attrs.get("fs-group").map(parse_gid).transpose()?;
    let trust = parse_trust(&attrs, &mut files, home)?;

    Ok(CertRequest {
        pod: attrs.pod.clone(),
        issuer,
        kube_csr,
        subject,
        sans,
        duration,
        renew_before,
        is_ca,
        usages,
        key_algorithm,
        key_encoding,
        reuse_private_key,
        renew,
        files,
        fs_group,
        annotations: attrs.annotations,
        trust,
    })
}

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

/// One set attribute: the key as written and its (non-empty) value.
#[derive(Clone, Copy, Debug)]
struct Attr<'a> {
    key: &'a str,
    value: &'a str,
}

/// The context sorted into our attributes (by name without prefix), pod info and annotations.
struct Attrs<'a> {
    ours: BTreeMap<&'static str, Attr<'a>>,
    pod: PodInfo,
    annotations: BTreeMap<String, String>,
}

/// Request-object annotations under this prefix are certvol's own.
const RESERVED_ANNOTATION_PREFIX: &str = "certvol.io/";

impl<'a> Attrs<'a> {
    fn collect(ctx: &'a HashMap<String, String>) -> Result<Self, AttrError> {
        // Sorted, so that with several bad keys the same one is reported every time.
        let sorted: BTreeMap<&str, &str> =
            ctx.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let mut attrs = Attrs {
            ours: BTreeMap::new(),
            pod: PodInfo::default(),
            annotations: BTreeMap::new(),
        };
        for (key, value) in sorted {
            let attr = Attr { key, value };
            if let Some(name) = key.strip_prefix(CERTVOL_PREFIX) {
                let name = known_name(attr, name, CERTVOL_PREFIX, &KEYS)?;
                if let Some(name) = name.filter(|_| !value.is_empty()) {
                    attrs.ours.insert(name, attr);
                }
            } else if let Some(name) = key.strip_prefix(CERT_MANAGER_PREFIX) {
                if KEYS[CERT_MANAGER_KEY_COUNT..].contains(&name) {
                    return Err(AttrError::WrongPrefix {
                        attribute: key.to_owned(),
                        expected: format!("{CERTVOL_PREFIX}{name}"),
                    });
                }
                let name = known_name(
                    attr,
                    name,
                    CERT_MANAGER_PREFIX,
                    &KEYS[..CERT_MANAGER_KEY_COUNT],
                )?;
                if let Some(name) = name.filter(|_| !value.is_empty()) {
                    // Ours wins whichever order the keys come in.
                    attrs.ours.entry(name).or_insert(attr);
                }
            } else if key.starts_with(POD_INFO_PREFIX) {
                let field = match key {
                    POD_NAME_KEY => &mut attrs.pod.name,
                    POD_NAMESPACE_KEY => &mut attrs.pod.namespace,
                    POD_UID_KEY => &mut attrs.pod.uid,
                    SERVICE_ACCOUNT_KEY => &mut attrs.pod.service_account,
                    _ => continue,
                };
                value.clone_into(field);
            } else if key.starts_with(RESERVED_ANNOTATION_PREFIX) {
                // certvol's own labels and annotations on request objects (the node name the
                // chart's admission policy checks) must not be settable by a pod.
                return Err(invalid(
                    attr,
                    "would become an annotation under certvol.io/, which certvol reserves for its own",
                    "annotations under any other prefix (e.g. team.example.com/owner)",
                ));
            } else if key.contains('/') {
                attrs.annotations.insert(key.to_owned(), value.to_owned());
                let bytes: usize = attrs
                    .annotations
                    .iter()
                    .map(|(k, v)| k.len() + v.len())
                    .sum();
                if attrs.annotations.len() > MAX_ANNOTATIONS || bytes > MAX_ANNOTATION_BYTES {
                    return Err(AttrError::TooLarge {
                        attribute: key.to_owned(),
                        what: "the pass-through annotations up to this one",
                        got: format!("{} annotations, {bytes} bytes", attrs.annotations.len()),
                        max: format!("{MAX_ANNOTATIONS} annotations, {MAX_ANNOTATION_BYTES} bytes"),
                    });
                }
            }
        }
        Ok(attrs)
    }

    fn get(&self, name: &str) -> Option<Attr<'a>> {
        self.ours.get(name).copied()
    }

    fn value_or(&self, name: &str, default: &str) -> String {
        self.get(name).map_or(default, |a| a.value).to_owned()
    }
}

/// The key under which `name` (without prefix) is set to a non-empty value in `ctx`, certvol's
/// spelling winning as in [`parse`]; `None` when it is not set.
pub fn set_key<'a>(ctx: &'a HashMap<String, String>, name: &str) -> Option<&'a str> {
    [CERTVOL_PREFIX, CERT_MANAGER_PREFIX]
        .iter()
        .find_map(|prefix| {
            ctx.get_key_value(&format!("{prefix}{name}"))
                .filter(|(_, v)| !v.is_empty())
                .map(|(k, _)| k.as_str())
        })
}

/// Maps an attribute name to its `'static` spelling, or explains why it is not accepted.
/// `Ok(None)` means "accepted, carries nothing" (an explicit `pkcs12-enable: "false"`).
fn known_name(
    attr: Attr<'_>,
    name: &str,
    prefix: &'static str,
    accepted: &[&'static str],
) -> Result<Option<&'static str>, AttrError> {
    if let Some(known) = accepted.iter().find(|k| **k == name) {
        return Ok(Some(known));
    }
    if let Some((_, hint)) = UNSUPPORTED_KEYS.iter().find(|(k, _)| *k == name) {
        // Turning a feature off that we lack anyway asks for nothing we cannot do.
        if name == "keystore-pkcs12-enable" && attr.value == "false" {
            return Ok(None);
        }
        return Err(AttrError::NotSupported {
            attribute: attr.key.to_owned(),
            hint,
        });
    }
    let suggestion = accepted
        .iter()
        .map(|k| (edit_distance(name, k), *k))
        .filter(|(d, _)| *d <= 2)
        .min()
        .map(|(_, k)| format!(" (did you mean {:?}?)", format!("{prefix}{k}")))
        .unwrap_or_default();
    Err(AttrError::UnknownKey {
        attribute: attr.key.to_owned(),
        prefix,
        suggestion,
        accepted: accepted.join(", "),
    })
}

/// Levenshtein distance, for "did you mean" on short attribute names.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let replace = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = replace.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

fn invalid(attr: Attr<'_>, problem: impl Into<String>, accepted: impl Into<String>) -> AttrError {
    AttrError::Invalid {
        attribute: attr.key.to_owned(),
        value: attr.value.to_owned(),
        problem: problem.into(),
        accepted: accepted.into(),
    }
}

fn invalid_entry(attr: Attr<'_>, entry: &str, problem: &str, accepted: &str) -> AttrError {
    AttrError::InvalidEntry {
        attribute: attr.key.to_owned(),
        entry: entry.to_owned(),
        problem: problem.to_owned(),
        accepted: accepted.to_owned(),
    }
}

/// Comma-separated list: entries trimmed, empty entries dropped.
fn split_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Expands `${VAR}` / `$VAR` with the pod's values.
fn expand(attr: Attr<'_>, pod: &PodInfo) -> Result<String, AttrError> {
    let mut out = String::with_capacity(attr.value.len());
    let mut rest = attr.value;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        let (name, len) = if let Some(body) = after.strip_prefix('{') {
            let Some(end) = body.find('}') else {
                return Err(invalid(
                    attr,
                    "has a \"${\" without a closing \"}\"",
                    format!("text with the variables {VARIABLES_HELP}"),
                ));
            };
            (&body[..end], end + 2)
        } else {
            let len = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            if len == 0 || after.starts_with(|c: char| c.is_ascii_digit()) {
                // Not a variable reference: keep the dollar sign.
                out.push('$');
                rest = after;
                continue;
            }
            (&after[..len], len)
        };
        let (variable, context_key, value) = match name {
            "POD_NAME" => ("${POD_NAME}", POD_NAME_KEY, &pod.name),
            "POD_NAMESPACE" => ("${POD_NAMESPACE}", POD_NAMESPACE_KEY, &pod.namespace),
            "POD_UID" => ("${POD_UID}", POD_UID_KEY, &pod.uid),
            "SERVICE_ACCOUNT_NAME" => (
                "${SERVICE_ACCOUNT_NAME}",
                SERVICE_ACCOUNT_KEY,
                &pod.service_account,
            ),
            _ => {
                return Err(AttrError::UnknownVariable {
                    attribute: attr.key.to_owned(),
                    variable: rest[pos..pos + 1 + len].to_owned(),
                });
            }
        };
        if value.is_empty() {
            return Err(AttrError::MissingPodInfo {
                attribute: attr.key.to_owned(),
                variable,
                context_key,
            });
        }
        out.push_str(value);
        rest = &after[len..];
    }
    out.push_str(rest);
    Ok(out)
}

fn parse_subject(attrs: &Attrs<'_>, pod: &PodInfo) -> Result<Subject, AttrError> {
    if let Some(literal) = attrs.get("literal-subject") {
        let conflicting = SUBJECT_FIELDS
            .iter()
            .chain(std::iter::once(&"serialnumber"))
            .find_map(|f| attrs.get(f));
        if let Some(other) = conflicting {
            return Err(AttrError::Conflict {
                attribute: literal.key.to_owned(),
                other: other.key.to_owned(),
                why: "literal-subject gives the whole subject, so the individual subject fields \
                      must be unset (common names go in the literal as CN=...)",
            });
        }
        let expanded = expand(literal, pod)?;
        if let Err(problem) = check_rfc4514(&expanded) {
            return Err(AttrError::Invalid {
                attribute: literal.key.to_owned(),
                value: expanded,
                problem: problem.to_owned(),
                accepted: "an RFC 4514 distinguished name such as \
                           \"CN=app,O=Example,C=GB\""
                    .to_owned(),
            });
        }
        return Ok(Subject {
            literal: Some(expanded),
            ..Subject::default()
        });
    }

    let single = |name: &str| -> Result<Option<String>, AttrError> {
        match attrs.get(name) {
            None => Ok(None),
            Some(a) => Ok(Some(expand(a, pod)?).filter(|s| !s.trim().is_empty())),
        }
    };
    let list = |name: &str| -> Result<Vec<String>, AttrError> {
        match attrs.get(name) {
            None => Ok(Vec::new()),
            Some(a) => Ok(split_list(&expand(a, pod)?)),
        }
    };
    Ok(Subject {
        common_name: single("common-name")?,
        organizations: list("organizations")?,
        organizational_units: list("organizationalunits")?,
        countries: list("countries")?,
        provinces: list("provinces")?,
        localities: list("localities")?,
        street_addresses: list("streetaddresses")?,
        postal_codes: list("postalcodes")?,
        serial_number: single("serialnumber")?,
        literal: None,
    })
}

/// Syntax check of an RFC 4514 distinguished name: `type=value` pairs separated by unescaped
/// `,` (RDNs) or `+` (multi-valued RDNs), types being keywords or dotted OIDs. Attribute
/// semantics are left to the CSR builder.
fn check_rfc4514(dn: &str) -> Result<(), &'static str> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut chars = dn.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' if chars.next().is_none() => return Err("ends with a lone backslash"),
            // The escaped character was consumed by the guard above.
            '\\' => {}
            ',' | '+' => {
                parts.push(&dn[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&dn[start..]);
    for part in parts {
        let Some((ty, _value)) = part.split_once('=') else {
            return Err("has a component without \"type=value\"");
        };
        let ty = ty.trim();
        let keyword = ty.starts_with(|c: char| c.is_ascii_alphabetic())
            && ty.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
        let oid = ty.contains('.')
            && ty
                .split('.')
                .all(|arc| !arc.is_empty() && arc.chars().all(|c| c.is_ascii_digit()));
        if !keyword && !oid {
            return Err("has an attribute type that is neither a keyword (CN, O, ...) nor an OID");
        }
    }
    Ok(())
}

/// Refuses `a` once the certificate would carry more than [`MAX_SANS`] names.
fn check_san_count(a: Attr<'_>, sans: &Sans) -> Result<(), AttrError> {
    let n = sans.dns_names.len() + sans.ip_addresses.len() + sans.uris.len();
    if n < MAX_SANS {
        return Ok(());
    }
    Err(AttrError::TooLarge {
        attribute: a.key.to_owned(),
        what: "the number of subject alternative names (dns-names, ip-sans and uri-sans together)",
        got: format!("more than {n}"),
        max: MAX_SANS.to_string(),
    })
}

fn parse_sans(attrs: &Attrs<'_>, pod: &PodInfo) -> Result<Sans, AttrError> {
    let mut sans = Sans::default();
    if let Some(a) = attrs.get("dns-names") {
        for name in split_list(&expand(a, pod)?) {
            if let Err(problem) = check_dns_name(&name) {
                return Err(invalid_entry(
                    a,
                    &name,
                    problem,
                    "DNS names made of letters, digits and '-' in dot-separated labels of at \
                     most 63 characters, optionally starting with \"*.\", at most 253 \
                     characters in all, separated by commas",
                ));
            }
            check_san_count(a, &sans)?;
            sans.dns_names.push(name);
        }
    }
    if let Some(a) = attrs.get("ip-sans") {
        for entry in split_list(a.value) {
            let ip = entry.parse::<IpAddr>().map_err(|_| {
                invalid_entry(
                    a,
                    &entry,
                    "is not an IP address",
                    "IPv4 or IPv6 addresses such as \"10.0.0.1\" or \"fd00::1\", separated by \
                     commas",
                )
            })?;
            check_san_count(a, &sans)?;
            sans.ip_addresses.push(ip);
        }
    }
    if let Some(a) = attrs.get("uri-sans") {
        for uri in split_list(&expand(a, pod)?) {
            if let Err(problem) = check_uri(&uri) {
                return Err(invalid_entry(
                    a,
                    &uri,
                    problem,
                    "absolute URIs with a scheme such as \"spiffe://cluster.local/ns/default/sa/app\", \
                     separated by commas",
                ));
            }
            check_san_count(a, &sans)?;
            sans.uris.push(uri);
        }
    }
    Ok(sans)
}

fn check_dns_name(name: &str) -> Result<(), &'static str> {
    if name.len() > 253 {
        return Err("is longer than 253 characters");
    }
    let labels = name.strip_prefix("*.").unwrap_or(name);
    for label in labels.split('.') {
        if label.is_empty() {
            return Err("has an empty label (a leading, trailing or doubled '.')");
        }
        if label.len() > 63 {
            return Err("has a label longer than 63 characters");
        }
        if label.contains('*') {
            return Err("has a '*' that is not a whole leftmost \"*.\" label");
        }
        if !label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err("contains a character other than letters, digits, '-' and '.'");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("has a label that starts or ends with '-'");
        }
    }
    Ok(())
}

fn check_uri(uri: &str) -> Result<(), &'static str> {
    let Some((scheme, rest)) = uri.split_once(':') else {
        return Err("has no scheme");
    };
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if !scheme_ok {
        return Err("has no valid scheme");
    }
    if rest.is_empty() {
        return Err("has nothing after the scheme");
    }
    if uri.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("contains whitespace or control characters");
    }
    Ok(())
}

enum DurationError {
    Syntax,
    NotPositive,
    TooLong,
}

fn duration_problem(e: DurationError) -> &'static str {
    match e {
        DurationError::Syntax => "is not a valid duration",
        DurationError::NotPositive => "is not a positive duration",
        DurationError::TooLong => "is longer than the maximum of 2562047h",
    }
}

fn duration_attr(attr: Attr<'_>) -> Result<Duration, AttrError> {
    go_duration(attr.value).map_err(|e| invalid(attr, duration_problem(e), DURATION_HELP))
}

/// Parses a positive Go duration (`"20s"`, `"1h30m"`) with the same rules as the `duration`
/// attribute, for command-line flags; the error is a one-line message naming the value.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    go_duration(s).map_err(|e| format!("{s:?} {}; accepted: {DURATION_HELP}", duration_problem(e)))
}

/// Go's `time.ParseDuration` syntax, limited like Go to `i64::MAX` nanoseconds, and positive
/// only: a sign, then number+unit pairs (`1h30m`, `1.5h`, `.5s`), or a bare `0`.
fn go_duration(s: &str) -> Result<Duration, DurationError> {
    const MAX_NANOS: u128 = i64::MAX as u128;
    let (negative, mut rest) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    if rest == "0" {
        return Err(DurationError::NotPositive);
    }
    if rest.is_empty() {
        return Err(DurationError::Syntax);
    }
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let int_len = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let (int_digits, r) = rest.split_at(int_len);
        let (frac_digits, r) = match r.strip_prefix('.') {
            Some(r) => r.split_at(r.find(|c: char| !c.is_ascii_digit()).unwrap_or(r.len())),
            None => ("", r),
        };
        if int_digits.is_empty() && frac_digits.is_empty() {
            return Err(DurationError::Syntax);
        }
        let unit_len = r
            .find(|c: char| c == '.' || c.is_ascii_digit())
            .unwrap_or(r.len());
        let (unit, r) = r.split_at(unit_len);
        let scale: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return Err(DurationError::Syntax),
        };
        let mut whole: u128 = 0;
        for d in int_digits.bytes() {
            whole = whole * 10 + u128::from(d - b'0');
            if whole > MAX_NANOS {
                return Err(DurationError::TooLong);
            }
        }
        // Digits past 10^-20 cannot change the nanosecond count of any unit here.
        let (mut frac, mut denom) = (0u128, 1u128);
        for d in frac_digits.bytes().take(20) {
            frac = frac * 10 + u128::from(d - b'0');
            denom *= 10;
        }
        total += whole * scale + frac * scale / denom;
        if total > MAX_NANOS {
            return Err(DurationError::TooLong);
        }
        rest = r;
    }
    if negative || total == 0 {
        return Err(DurationError::NotPositive);
    }
    u64::try_from(total)
        .map(Duration::from_nanos)
        .map_err(|_| DurationError::TooLong)
}

fn parse_bool(attr: Attr<'_>) -> Result<bool, AttrError> {
    match attr.value {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(invalid(attr, "is not a boolean", BOOL_HELP)),
    }
}

fn parse_usages(attr: Option<Attr<'_>>, is_ca: bool) -> Result<Vec<KeyUsage>, AttrError> {
    let mut usages = match attr {
        None => vec![KeyUsage::DigitalSignature, KeyUsage::KeyEncipherment],
        Some(a) => {
            let accepted = || {
                KeyUsage::ALL
                    .iter()
                    .map(|(_, n)| format!("{n:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
                    + ", separated by commas"
            };
            let names = split_list(a.value);
            if names.is_empty() {
                return Err(invalid(a, "lists no key usage", accepted()));
            }
            let mut usages = Vec::with_capacity(names.len() + 1);
            for name in &names {
                let usage = KeyUsage::from_name(name)
                    .ok_or_else(|| invalid_entry(a, name, "is not a key usage", &accepted()))?;
                usages.push(usage);
            }
            usages
        }
    };
    if is_ca {
        usages.push(KeyUsage::CertSign);
    }
    usages.sort();
    usages.dedup();
    Ok(usages)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Family {
    Rsa,
    Ecdsa,
    Ed25519,
}

fn parse_key(attrs: &Attrs<'_>, home: &str) -> Result<(KeyAlgorithm, KeyEncoding), AttrError> {
    let family = match attrs.get("key-algorithm") {
        Some(a) => {
            if a.value.eq_ignore_ascii_case("rsa") {
                Family::Rsa
            } else if a.value.eq_ignore_ascii_case("ecdsa") {
                Family::Ecdsa
            } else if a.value.eq_ignore_ascii_case("ed25519") {
                Family::Ed25519
            } else {
                return Err(invalid(
                    a,
                    "is not a key algorithm",
                    "\"RSA\", \"ECDSA\" or \"Ed25519\" (any case)",
                ));
            }
        }
        None if home == CERTVOL_PREFIX => Family::Ecdsa,
        None => Family::Rsa,
    };
    // Explains a surprising size error when the user never chose the algorithm.
    let defaulted = if attrs.get("key-algorithm").is_none() {
        let name = if family == Family::Rsa {
            "RSA"
        } else {
            "ECDSA"
        };
        format!(
            " (key-algorithm defaults to {name} for volumes whose issuer-name is under \
             \"{home}\"; set it to pick another algorithm)"
        )
    } else {
        String::new()
    };
    let algorithm = match (family, attrs.get("key-size")) {
        (Family::Rsa, None) => KeyAlgorithm::Rsa2048,
        (Family::Ecdsa, None) => KeyAlgorithm::EcdsaP256,
        (Family::Ed25519, None) => KeyAlgorithm::Ed25519,
        (family, Some(size)) => match (family, size.value) {
            (Family::Rsa, "2048") => KeyAlgorithm::Rsa2048,
            (Family::Rsa, "3072") => KeyAlgorithm::Rsa3072,
            (Family::Rsa, "4096") => KeyAlgorithm::Rsa4096,
            (Family::Ecdsa, "256") => KeyAlgorithm::EcdsaP256,
            (Family::Ecdsa, "384") => KeyAlgorithm::EcdsaP384,
            _ => {
                let (problem, accepted) = match family {
                    Family::Rsa => (
                        "is not a supported RSA key size",
                        "2048 (default), 3072 or 4096",
                    ),
                    // cert-manager accepts P-521; say it is a gap, not a typo.
                    Family::Ecdsa if size.value == "521" => (
                        "is not supported yet: certvol has no P-521 keys",
                        "256 (default) or 384",
                    ),
                    Family::Ecdsa => ("is not a supported ECDSA key size", "256 (default) or 384"),
                    Family::Ed25519 => (
                        "is not allowed: Ed25519 keys have a fixed size",
                        "no key-size with Ed25519",
                    ),
                };
                return Err(invalid(size, problem, format!("{accepted}{defaulted}")));
            }
        },
    };
    let encoding = match attrs.get("key-encoding") {
        None if family == Family::Rsa => KeyEncoding::Pkcs1,
        None => KeyEncoding::Pkcs8,
        Some(a) if a.value.eq_ignore_ascii_case("pkcs1") => {
            if family == Family::Ed25519 {
                return Err(invalid(
                    a,
                    "cannot be used with Ed25519 keys, which have no PKCS#1 form",
                    "\"PKCS8\" with Ed25519",
                ));
            }
            KeyEncoding::Pkcs1
        }
        Some(a) if a.value.eq_ignore_ascii_case("pkcs8") => KeyEncoding::Pkcs8,
        Some(a) => {
            return Err(invalid(
                a,
                "is not a key encoding",
                "\"PKCS1\" or \"PKCS8\" (any case)",
            ));
        }
    };
    Ok((algorithm, encoding))
}

const FILE_NAME_HELP: &str = "a plain file name such as \"tls.crt\": no '/', not starting \
                              with \"..\", no leading or trailing spaces, at most 255 bytes";

/// One file name of the volume: the attribute that chose it (as written, or as it would be
/// written for a default) and whether the user wrote it.
struct Chosen {
    attribute: String,
    name: String,
    explicit: bool,
}

fn file_attr(attr: Attr<'_>) -> Result<Chosen, AttrError> {
    check_file_name(attr.value).map_err(|problem| invalid(attr, problem, FILE_NAME_HELP))?;
    Ok(Chosen {
        attribute: attr.key.to_owned(),
        name: attr.value.to_owned(),
        explicit: true,
    })
}

fn prefix_of(attr: Attr<'_>) -> &'static str {
    if attr.key.starts_with(CERT_MANAGER_PREFIX) {
        CERT_MANAGER_PREFIX
    } else {
        CERTVOL_PREFIX
    }
}

fn parse_files(attrs: &Attrs<'_>, home: &str) -> Result<FileNames, AttrError> {
    let defaults = FileNames::default();
    let mut chosen: Vec<Chosen> = Vec::new();
    let mut pem = |name: &str, default: String| -> Result<String, AttrError> {
        let c = match attrs.get(name) {
            Some(a) => file_attr(a)?,
            None => Chosen {
                attribute: format!("{home}{name}"),
                name: default,
                explicit: false,
            },
        };
        let name = c.name.clone();
        chosen.push(c);
        Ok(name)
    };
    let ca = pem("ca-file", defaults.ca)?;
    let certificate = pem("certificate-file", defaults.certificate)?;
    let private_key = pem("privatekey-file", defaults.private_key)?;

    let optional = |name: &str, chosen: &mut Vec<Chosen>| -> Result<Option<String>, AttrError> {
        let Some(a) = attrs.get(name) else {
            return Ok(None);
        };
        let c = file_attr(a)?;
        let name = c.name.clone();
        chosen.push(c);
        Ok(Some(name))
    };
    let key_chain = optional("key-chain-file", &mut chosen)?;
    let chain = optional("chain-file", &mut chosen)?;
    let pkcs12 = parse_pkcs12(attrs, &mut chosen)?;
    check_distinct(&chosen)?;
    Ok(FileNames {
        ca,
        certificate,
        private_key,
        key_chain,
        chain,
        trust_bundle: None,
        pkcs12,
    })
}

/// The PKCS#12 keystore (`pkcs12-enable`, `pkcs12-filename`) and truststore
/// (`truststore-pkcs12-file`), with their shared profile and password source.
fn parse_pkcs12(
    attrs: &Attrs<'_>,
    chosen: &mut Vec<Chosen>,
) -> Result<Option<Pkcs12Files>, AttrError> {
    let enable = attrs.get("pkcs12-enable");
    let enabled = enable.map(parse_bool).transpose()?.unwrap_or(false);
    let keystore = match (enabled, attrs.get("pkcs12-filename")) {
        (true, Some(a)) => Some(file_attr(a)?),
        (true, None) => Some(Chosen {
            attribute: format!(
                "{}pkcs12-filename",
                enable.map_or(CERT_MANAGER_PREFIX, prefix_of)
            ),
            name: DEFAULT_PKCS12_FILE.to_owned(),
            explicit: false,
        }),
        (false, Some(a)) => {
            return Err(AttrError::Requires {
                attribute: a.key.to_owned(),
                requires: format!("\"{}pkcs12-enable\" set to \"true\"", prefix_of(a)),
            });
        }
        (false, None) => None,
    };
    let truststore = attrs
        .get("truststore-pkcs12-file")
        .map(file_attr)
        .transpose()?;
    let keystore_name = keystore.as_ref().map(|c| c.name.clone());
    let truststore_name = truststore.as_ref().map(|c| c.name.clone());
    chosen.extend(keystore);
    chosen.extend(truststore);

    let settings = ["pkcs12-profile", "pkcs12-password-key", "pkcs12-password"];
    if keystore_name.is_none() && truststore_name.is_none() {
        if let Some(a) = settings.iter().find_map(|k| attrs.get(k)) {
            return Err(AttrError::Requires {
                attribute: a.key.to_owned(),
                requires: format!(
                    "a PKCS#12 file (\"{}pkcs12-enable\" set to \"true\", or \
                     \"{CERTVOL_PREFIX}truststore-pkcs12-file\")",
                    prefix_of(a)
                ),
            });
        }
        return Ok(None);
    }

    let profile = match attrs.get("pkcs12-profile") {
        None => Pkcs12Profile::default(),
        Some(a) => match a.value {
            "modern" => Pkcs12Profile::Modern,
            "legacy" => Pkcs12Profile::Legacy,
            _ => {
                return Err(invalid(
                    a,
                    "is not a PKCS#12 profile",
                    "\"modern\" (AES-256-CBC, PBKDF2-HMAC-SHA256, SHA-256 MAC; the default) or \
                     \"legacy\" (3DES, SHA-1 MAC; for Java before 8u301)",
                ));
            }
        },
    };
    let secret_key = attrs.get("pkcs12-password-key");
    if let Some(a) = secret_key {
        check_secret_key(a.value).map_err(|problem| {
            invalid(
                a,
                problem,
                "a Secret data key: letters, digits, '-', '_' and '.', at most 253 characters",
            )
        })?;
    }
    Ok(Some(Pkcs12Files {
        keystore: keystore_name,
        truststore: truststore_name,
        profile,
        password: PasswordSource {
            secret_key: secret_key
                .map_or(DEFAULT_PKCS12_PASSWORD_KEY, |a| a.value)
                .to_owned(),
            secret_key_attribute: secret_key.map(|a| a.key.to_owned()),
            literal_attribute: attrs.get("pkcs12-password").map(|a| a.key.to_owned()),
        },
    }))
}

/// Kubernetes' rule for ConfigMap and Secret data keys.
fn check_secret_key(key: &str) -> Result<(), &'static str> {
    if key.len() > 253 {
        return Err("is longer than 253 characters");
    }
    if !key
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err("contains a character other than letters, digits, '-', '_' and '.'");
    }
    if key == "." || key == ".." {
        return Err("is \".\" or \"..\"");
    }
    Ok(())
}

/// Every file name of the volume must be distinct; blames an attribute the user wrote (at least
/// one of two equal names is explicit, since the defaults differ).
fn check_distinct(chosen: &[Chosen]) -> Result<(), AttrError> {
    for (i, first) in chosen.iter().enumerate() {
        for second in &chosen[i + 1..] {
            if first.name != second.name {
                continue;
            }
            let (blamed, other) = if second.explicit {
                (second, first)
            } else {
                (first, second)
            };
            let other = if other.explicit {
                format!("{:?}", other.attribute)
            } else {
                format!("{:?} (its default)", other.attribute)
            };
            return Err(AttrError::DuplicateFileName {
                attribute: blamed.attribute.clone(),
                name: blamed.name.clone(),
                other,
            });
        }
    }
    Ok(())
}

/// The `trust-*` attributes (all certvol only). A bundle is requested when a source or the file
/// name is set, or `trust-issuer-ca`/`trust-public-roots` is "true"; explicit "false" values alone
/// request nothing.
fn parse_trust(
    attrs: &Attrs<'_>,
    files: &mut FileNames,
    home: &str,
) -> Result<Option<TrustSpec>, AttrError> {
    let flag = |name: &str| attrs.get(name).map(parse_bool).transpose();
    let issuer_ca = flag("trust-issuer-ca")?;
    let public_roots = flag("trust-public-roots")?;
    let file = attrs.get("trust-bundle-file");
    let key = |name: &str| {
        attrs
            .get(name)
            .map_or_else(|| format!("{CERTVOL_PREFIX}{name}"), |a| a.key.to_owned())
    };
    let key_refs = |name: &str| -> Result<Vec<KeyRef>, AttrError> {
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
    };
    let config_maps = key_refs("trust-configmaps")?;
    let secrets = key_refs("trust-secrets")?;
    let mut cluster_bundles: Vec<String> = Vec::new();
    if let Some(a) = attrs.get("trust-cluster-bundles") {
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
    }
    let labels = match attrs.get("trust-signer-labels") {
        None => None,
        Some(a) => {
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
            Some(labels)
        }
    };
    let signer = match attrs.get("trust-signer-name") {
        Some(a) => {
            if let Err(problem) = trust_source::check_signer_name(a.value) {
                return Err(invalid(
                    a,
                    problem,
                    "a signer name DOMAIN/PATH such as \"example.com/my-signer\"",
                ));
            }
            Some(SignerSelector {
                signer_name: a.value.to_owned(),
                labels: labels.unwrap_or_default(),
            })
        }
        None => {
            if labels.is_some() {
                return Err(AttrError::Missing {
                    attribute: key("trust-signer-name"),
                    why: format!(
                        "{:?} only restricts the ClusterTrustBundles selected by signer name",
                        key("trust-signer-labels")
                    ),
                });
            }
            None
        }
    };
    let requested = file.is_some()
        || !config_maps.is_empty()
        || !secrets.is_empty()
        || !cluster_bundles.is_empty()
        || signer.is_some()
        || issuer_ca == Some(true)
        || public_roots == Some(true);
    if !requested {
        return Ok(None);
    }
    let issuer_ca = issuer_ca.unwrap_or(true);
    let public_roots = public_roots.unwrap_or(false);
    if !issuer_ca
        && !public_roots
        && config_maps.is_empty()
        && secrets.is_empty()
        && cluster_bundles.is_empty()
        && signer.is_none()
    {
        return Err(AttrError::Missing {
            attribute: key("trust-configmaps"),
            why: format!(
                "the volume asks for a trust bundle ({:?} is set) but {:?} is \"false\" and no \
                 other source is set (trust-configmaps, trust-secrets, trust-cluster-bundles, \
                 trust-signer-name, trust-public-roots)",
                key("trust-bundle-file"),
                key("trust-issuer-ca"),
            ),
        });
    }
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
                attribute: key("trust-bundle-file"),
                name: bundle_file,
                other: match attrs.get(other) {
                    Some(a) => format!("{:?}", a.key),
                    None => format!("{:?} (its default)", format!("{home}{other}")),
                },
            });
        }
    }
    files.trust_bundle = Some(bundle_file);
    Ok(Some(TrustSpec {
        issuer_ca,
        config_maps,
        config_maps_attribute: key("trust-configmaps"),
        secrets,
        secrets_attribute: key("trust-secrets"),
        cluster_bundles,
        cluster_bundles_attribute: key("trust-cluster-bundles"),
        signer,
        signer_attribute: key("trust-signer-name"),
        public_roots,
    }))
}

fn check_file_name(name: &str) -> Result<(), &'static str> {
    if name.len() > 255 {
        return Err("is longer than 255 bytes");
    }
    if name.contains('/') {
        return Err("contains '/'");
    }
    if name.contains('\0') {
        return Err("contains a NUL character");
    }
    if name == "." {
        return Err("is \".\"");
    }
    // Also covers ".."; names starting with ".." are reserved for the `..data` swap layout.
    if name.starts_with("..") {
        return Err("starts with \"..\" (reserved for the volume's internal layout)");
    }
    if name.trim() != name {
        return Err("has leading or trailing spaces");
    }
    Ok(())
}

fn parse_gid(attr: Attr<'_>) -> Result<u32, AttrError> {
    const ACCEPTED: &str = "a decimal group id from 0 to 4294967294";
    // `u32::from_str` would also take "+5"; only plain digits are a gid.
    if !attr.value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid(attr, "is not a decimal group id", ACCEPTED));
    }
    match attr.value.parse::<u32>() {
        // chown(2) reads (gid_t)-1 as "leave the group unchanged", so it would silently
        // do nothing.
        Ok(u32::MAX) => Err(invalid(
            attr,
            "is reserved: chown reads it as \"leave the group unchanged\"",
            ACCEPTED,
        )),
        Ok(gid) => Ok(gid),
        Err(_) => Err(invalid(attr, "is out of range", ACCEPTED)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CM: &str = "csi.cert-manager.io/";
    const CV: &str = "csi.certvol.io/";
    const POD: [(&str, &str); 4] = [
        ("csi.storage.k8s.io/pod.name", "web-0"),
        ("csi.storage.k8s.io/pod.namespace", "shop"),
        ("csi.storage.k8s.io/pod.uid", "0b5c-11"),
        ("csi.storage.k8s.io/serviceAccount.name", "web"),
    ];

    /// Row name, extra attributes, check on the parsed request.
    type AcceptedRow = (
        &'static str,
        &'static [(&'static str, &'static str)],
        fn(&CertRequest),
    );
    /// Extra attributes, expected `attribute()`, fragment of the message.
    type ErrorRow<'a> = (Vec<(&'a str, &'a str)>, &'a str, &'a str);

    fn ctx(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    /// A minimal valid cert-manager-style volume, with `extra` added or overriding.
    fn with(extra: &[(&str, &str)]) -> HashMap<String, String> {
        let mut c = ctx(&[
            ("csi.cert-manager.io/issuer-name", "ca"),
            ("csi.cert-manager.io/common-name", "app"),
        ]);
        c.extend(ctx(extra));
        c
    }

    fn parse_ok(extra: &[(&str, &str)]) -> CertRequest {
        match parse(&with(extra)) {
            Ok(r) => r,
            Err(e) => panic!("{extra:?} should parse, got: {e}"),
        }
    }

    #[test]
    fn defaults_match_cert_manager() {
        let req = parse_ok(&[]);
        let expected = CertRequest {
            pod: PodInfo::default(),
            issuer: IssuerRef {
                name: "ca".into(),
                kind: "Issuer".into(),
                group: "cert-manager.io".into(),
            },
            kube_csr: None,
            subject: Subject {
                common_name: Some("app".into()),
                ..Subject::default()
            },
            sans: Sans::default(),
            duration: Duration::from_secs(90 * 24 * 3600),
            renew_before: None,
            is_ca: false,
            usages: vec![KeyUsage::DigitalSignature, KeyUsage::KeyEncipherment],
            key_algorithm: KeyAlgorithm::Rsa2048,
            key_encoding: KeyEncoding::Pkcs1,
            reuse_private_key: false,
            renew: true,
            files: FileNames {
                ca: "ca.crt".into(),
                certificate: "tls.crt".into(),
                private_key: "tls.key".into(),
                key_chain: None,
                chain: None,
                trust_bundle: None,
                pkcs12: None,
            },
            fs_group: None,
            annotations: BTreeMap::new(),
            trust: None,
        };
        assert_eq!(req, expected);
    }

    #[test]
    fn certvol_spec_defaults_to_ecdsa_p256_pkcs8() {
        let req = parse(&ctx(&[
            ("csi.certvol.io/issuer-name", "ca"),
            ("csi.certvol.io/common-name", "app"),
        ]))
        .unwrap();
        assert_eq!(req.key_algorithm, KeyAlgorithm::EcdsaP256);
        assert_eq!(req.key_encoding, KeyEncoding::Pkcs8);
        // The home prefix comes from issuer-name only: other keys under ours do not change it.
        let req = parse_ok(&[("csi.certvol.io/dns-names", "a.example")]);
        assert_eq!(req.key_algorithm, KeyAlgorithm::Rsa2048);
    }

    #[test]
    fn pod_info_annotations_and_dropped_keys() {
        let mut extra = POD.to_vec();
        extra.extend([
            ("example.com/team", "payments"),
            ("csi.storage.k8s.io/ephemeral", "true"),
            (TOKENS_KEY, "{\"aud\":{\"token\":\"secret\"}}"),
            ("no-prefix", "dropped"),
        ]);
        let req = parse_ok(&extra);
        assert_eq!(
            req.pod,
            PodInfo {
                name: "web-0".into(),
                namespace: "shop".into(),
                uid: "0b5c-11".into(),
                service_account: "web".into(),
            }
        );
        assert_eq!(
            req.annotations,
            BTreeMap::from([("example.com/team".to_owned(), "payments".to_owned())])
        );
    }

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

    #[test]
    fn input_limits_name_the_attribute_and_the_limit() {
        // The whole context.
        let big = "x".repeat(MAX_CONTEXT_BYTES);
        let mut extra = POD.to_vec();
        extra.push(("example.com/blob", big.as_str()));
        let text = parse(&with(&extra)).unwrap_err().to_string();
        assert!(
            text.starts_with("volume attribute \"example.com/blob\": the volume context")
                && text.contains(&format!("at most {MAX_CONTEXT_BYTES} bytes")),
            "{text}"
        );
        assert!(
            text.len() < 400,
            "the message must not echo the value: {text}"
        );

        // Subject alternative names: exactly the limit passes, one more is refused.
        let names = |n: usize| {
            (0..n)
                .map(|i| format!("n{i}.example.com"))
                .collect::<Vec<_>>()
        };
        let ok = names(MAX_SANS).join(",");
        let mut extra = POD.to_vec();
        extra.push(("csi.cert-manager.io/dns-names", ok.as_str()));
        assert_eq!(parse_ok(&extra).sans.dns_names.len(), MAX_SANS);
        let over = names(MAX_SANS - 1).join(",");
        let mut extra = POD.to_vec();
        extra.push(("csi.cert-manager.io/dns-names", over.as_str()));
        extra.push(("csi.cert-manager.io/ip-sans", "10.0.0.1,10.0.0.2"));
        let text = parse(&with(&extra)).unwrap_err().to_string();
        assert!(
            text.starts_with("volume attribute \"csi.cert-manager.io/ip-sans\"")
                && text.contains(&format!("at most {MAX_SANS} is accepted")),
            "{text}"
        );

        // Pass-through annotations.
        let keys: Vec<String> = (0..=MAX_ANNOTATIONS)
            .map(|i| format!("example.com/a{i:02}"))
            .collect();
        let mut extra = POD.to_vec();
        extra.extend(keys.iter().map(|k| (k.as_str(), "v")));
        let text = parse(&with(&extra)).unwrap_err().to_string();
        assert!(
            text.contains(&format!("\"{}\"", keys[MAX_ANNOTATIONS]))
                && text.contains("pass-through annotations"),
            "{text}"
        );
    }

    #[test]
    fn certvols_annotation_prefix_is_reserved() {
        let mut extra = POD.to_vec();
        extra.push(("certvol.io/node-name", "another-node"));
        let err = parse(&with(&extra)).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("\"certvol.io/node-name\"") && text.contains("reserves"),
            "{text}"
        );
    }

    #[test]
    fn stable_context_drops_only_tokens_and_literal_passwords() {
        let c = with(&[
            (TOKENS_KEY, "t1"),
            ("example.com/x", "y"),
            ("csi.cert-manager.io/pkcs12-enable", "true"),
            ("csi.cert-manager.io/pkcs12-password", "hunter2"),
            ("csi.certvol.io/pkcs12-password", "hunter3"),
            ("csi.certvol.io/pkcs12-password-key", "pw"),
        ]);
        let stable = stable_context(&c);
        assert!(!stable.contains_key(TOKENS_KEY));
        assert_eq!(
            stable.keys().map(String::as_str).collect::<Vec<_>>(),
            [
                "csi.cert-manager.io/common-name",
                "csi.cert-manager.io/issuer-name",
                "csi.cert-manager.io/pkcs12-enable",
                "csi.certvol.io/pkcs12-password-key",
                "example.com/x",
            ]
        );
        assert!(!format!("{stable:?}").contains("hunter"));
        let c = with(&[(TOKENS_KEY, "t1"), ("example.com/x", "y")]);
        let stable = stable_context(&c);
        assert_eq!(stable.len(), 3);
        let again = with(&[(TOKENS_KEY, "t2"), ("example.com/x", "y")]);
        assert_eq!(stable, stable_context(&again));
        let changed = with(&[(TOKENS_KEY, "t2"), ("example.com/x", "z")]);
        assert_ne!(stable, stable_context(&changed));
    }

    /// Accepted values, one row per key and behaviour: extra attributes → check.
    #[test]
    fn signer_name_replaces_issuer_name() {
        let req = parse(&ctx(&[
            ("csi.certvol.io/signer-name", "example.com/workloads"),
            ("csi.certvol.io/dns-names", "a.example"),
        ]))
        .unwrap();
        assert_eq!(req.issuer.name, "");
        assert_eq!(req.kube_csr.unwrap().signer_name, "example.com/workloads");
        // A certvol spec: ECDSA by default.
        assert_eq!(req.key_algorithm, KeyAlgorithm::EcdsaP256);
        let err = parse(&ctx(&[("csi.certvol.io/dns-names", "a.example")])).unwrap_err();
        assert!(err.to_string().contains("signer-name"), "{err}");
    }

    #[test]
    fn accepted_values_table() {
        let rows: &[AcceptedRow] = &[
            (
                "issuer-kind",
                &[("csi.cert-manager.io/issuer-kind", "ClusterIssuer")],
                |r| assert_eq!(r.issuer.kind, "ClusterIssuer"),
            ),
            (
                "issuer-group",
                &[("csi.cert-manager.io/issuer-group", "example.com")],
                |r| assert_eq!(r.issuer.group, "example.com"),
            ),
            (
                "signer-name with the default CA source",
                &[("csi.certvol.io/signer-name", "example.com/workloads.v1")],
                |r| {
                    let k = r.kube_csr.as_ref().unwrap();
                    assert_eq!(k.signer_name, "example.com/workloads.v1");
                    assert_eq!(k.ca_source, CaSource::ClusterTrustBundleSigner);
                },
            ),
            (
                "ca-source: a named ClusterTrustBundle",
                &[
                    ("csi.certvol.io/signer-name", "example.com/w"),
                    (
                        "csi.certvol.io/ca-source",
                        "clustertrustbundle:example.com:w:v2",
                    ),
                ],
                |r| {
                    assert_eq!(
                        r.kube_csr.as_ref().unwrap().ca_source,
                        CaSource::ClusterTrustBundle("example.com:w:v2".into())
                    )
                },
            ),
            (
                "ca-source: a ConfigMap key",
                &[
                    ("csi.certvol.io/signer-name", "example.com/w"),
                    ("csi.certvol.io/ca-source", "configmap:corp-ca/ca.crt"),
                ],
                |r| {
                    assert_eq!(
                        r.kube_csr.as_ref().unwrap().ca_source,
                        CaSource::ConfigMap {
                            name: "corp-ca".into(),
                            key: "ca.crt".into()
                        }
                    )
                },
            ),
            (
                "ca-source: a Secret key",
                &[
                    ("csi.certvol.io/signer-name", "example.com/w"),
                    ("csi.certvol.io/ca-source", "secret:corp-ca/tls_ca.pem"),
                ],
                |r| {
                    assert_eq!(
                        r.kube_csr.as_ref().unwrap().ca_source,
                        CaSource::Secret {
                            name: "corp-ca".into(),
                            key: "tls_ca.pem".into()
                        }
                    )
                },
            ),
            (
                "ours wins over cert-manager's",
                &[
                    ("csi.certvol.io/issuer-name", "mine"),
                    ("csi.certvol.io/common-name", "ours"),
                ],
                |r| {
                    assert_eq!(r.issuer.name, "mine");
                    assert_eq!(r.subject.common_name.as_deref(), Some("ours"));
                    // issuer-name under ours makes it a certvol spec.
                    assert_eq!(r.key_algorithm, KeyAlgorithm::EcdsaP256);
                },
            ),
            (
                "empty value under ours does not hide cert-manager's",
                &[
                    ("csi.certvol.io/common-name", ""),
                    ("csi.certvol.io/issuer-kind", ""),
                ],
                |r| {
                    assert_eq!(r.subject.common_name.as_deref(), Some("app"));
                    assert_eq!(r.issuer.kind, "Issuer");
                },
            ),
            (
                "dns-names trimmed, empty entries ignored, wildcard",
                &[(
                    "csi.cert-manager.io/dns-names",
                    " a.example.com, ,*.b-1.example.com,, ",
                )],
                |r| assert_eq!(r.sans.dns_names, ["a.example.com", "*.b-1.example.com"]),
            ),
            (
                "dns-names with variables",
                &[(
                    "csi.cert-manager.io/dns-names",
                    "${POD_NAME}.${POD_NAMESPACE}.svc",
                )],
                |r| assert_eq!(r.sans.dns_names, ["web-0.shop.svc"]),
            ),
            (
                "ip-sans",
                &[("csi.cert-manager.io/ip-sans", "10.0.0.1, fd00::1")],
                |r| {
                    assert_eq!(
                        r.sans.ip_addresses,
                        [
                            "10.0.0.1".parse::<IpAddr>().unwrap(),
                            "fd00::1".parse().unwrap()
                        ]
                    )
                },
            ),
            (
                "uri-sans with variables",
                &[(
                    "csi.cert-manager.io/uri-sans",
                    "spiffe://cluster.local/ns/${POD_NAMESPACE}/sa/${SERVICE_ACCOUNT_NAME},urn:x",
                )],
                |r| {
                    assert_eq!(
                        r.sans.uris,
                        ["spiffe://cluster.local/ns/shop/sa/web", "urn:x"]
                    )
                },
            ),
            (
                "duration 1h30m",
                &[("csi.cert-manager.io/duration", "1h30m")],
                |r| assert_eq!(r.duration, Duration::from_secs(5400)),
            ),
            (
                "duration decimal",
                &[("csi.cert-manager.io/duration", "1.5h")],
                |r| assert_eq!(r.duration, Duration::from_secs(5400)),
            ),
            (
                "duration µs and ms",
                &[("csi.cert-manager.io/duration", "1s500ms250µs")],
                |r| assert_eq!(r.duration, Duration::from_micros(1_500_250)),
            ),
            (
                "is-ca true adds cert sign",
                &[("csi.cert-manager.io/is-ca", "true")],
                |r| {
                    assert!(r.is_ca);
                    assert_eq!(
                        r.usages,
                        [
                            KeyUsage::DigitalSignature,
                            KeyUsage::KeyEncipherment,
                            KeyUsage::CertSign
                        ]
                    );
                },
            ),
            (
                "is-ca false",
                &[("csi.cert-manager.io/is-ca", "false")],
                |r| assert!(!r.is_ca),
            ),
            (
                "key-usages sorted and deduplicated",
                &[(
                    "csi.cert-manager.io/key-usages",
                    "client auth, server auth,client auth,",
                )],
                |r| assert_eq!(r.usages, [KeyUsage::ServerAuth, KeyUsage::ClientAuth]),
            ),
            (
                "key-usages with is-ca",
                &[
                    (
                        "csi.cert-manager.io/key-usages",
                        "cert sign, digital signature",
                    ),
                    ("csi.cert-manager.io/is-ca", "true"),
                ],
                |r| assert_eq!(r.usages, [KeyUsage::DigitalSignature, KeyUsage::CertSign]),
            ),
            (
                "key-algorithm ecdsa",
                &[("csi.cert-manager.io/key-algorithm", "ecdsa")],
                |r| {
                    assert_eq!(
                        (r.key_algorithm, r.key_encoding),
                        (KeyAlgorithm::EcdsaP256, KeyEncoding::Pkcs8)
                    )
                },
            ),
            (
                "key-algorithm mixed case, ECDSA 384",
                &[
                    ("csi.cert-manager.io/key-algorithm", "EcDsA"),
                    ("csi.cert-manager.io/key-size", "384"),
                ],
                |r| assert_eq!(r.key_algorithm, KeyAlgorithm::EcdsaP384),
            ),
            (
                "key-algorithm Ed25519",
                &[("csi.cert-manager.io/key-algorithm", "Ed25519")],
                |r| {
                    assert_eq!(
                        (r.key_algorithm, r.key_encoding),
                        (KeyAlgorithm::Ed25519, KeyEncoding::Pkcs8)
                    )
                },
            ),
            (
                "RSA 3072",
                &[
                    ("csi.cert-manager.io/key-algorithm", "RSA"),
                    ("csi.cert-manager.io/key-size", "3072"),
                ],
                |r| assert_eq!(r.key_algorithm, KeyAlgorithm::Rsa3072),
            ),
            (
                "key-size alone follows the cert-manager default (RSA)",
                &[("csi.cert-manager.io/key-size", "4096")],
                |r| assert_eq!(r.key_algorithm, KeyAlgorithm::Rsa4096),
            ),
            (
                "key-size alone follows the certvol default (ECDSA)",
                &[
                    ("csi.certvol.io/issuer-name", "ca"),
                    ("csi.certvol.io/key-size", "384"),
                ],
                |r| assert_eq!(r.key_algorithm, KeyAlgorithm::EcdsaP384),
            ),
            (
                "certvol spec can still ask for RSA",
                &[
                    ("csi.certvol.io/issuer-name", "ca"),
                    ("csi.certvol.io/key-algorithm", "rsa"),
                ],
                |r| {
                    assert_eq!(
                        (r.key_algorithm, r.key_encoding),
                        (KeyAlgorithm::Rsa2048, KeyEncoding::Pkcs1)
                    )
                },
            ),
            (
                "key-encoding pkcs8 with RSA",
                &[("csi.cert-manager.io/key-encoding", "pkcs8")],
                |r| assert_eq!(r.key_encoding, KeyEncoding::Pkcs8),
            ),
            (
                "key-encoding PKCS1 with ECDSA (SEC1)",
                &[
                    ("csi.cert-manager.io/key-algorithm", "ECDSA"),
                    ("csi.cert-manager.io/key-encoding", "PKCS1"),
                ],
                |r| assert_eq!(r.key_encoding, KeyEncoding::Pkcs1),
            ),
            (
                "literal-subject with variables and escapes",
                &[
                    ("csi.cert-manager.io/common-name", ""),
                    (
                        "csi.cert-manager.io/literal-subject",
                        "CN=${POD_NAME},O=Example\\, Inc+OU=web,1.2.3=x",
                    ),
                ],
                |r| {
                    assert_eq!(
                        r.subject.literal.as_deref(),
                        Some("CN=web-0,O=Example\\, Inc+OU=web,1.2.3=x")
                    );
                    assert_eq!(r.subject.common_name, None);
                },
            ),
            (
                "subject fields",
                &[
                    (
                        "csi.cert-manager.io/organizations",
                        "Example, ${POD_NAMESPACE}",
                    ),
                    ("csi.cert-manager.io/organizationalunits", "web"),
                    ("csi.cert-manager.io/countries", "GB,FR"),
                    ("csi.cert-manager.io/provinces", "Kent"),
                    ("csi.cert-manager.io/localities", "Dover"),
                    ("csi.cert-manager.io/streetaddresses", "1 High St"),
                    ("csi.cert-manager.io/postalcodes", "CT16"),
                    ("csi.cert-manager.io/serialnumber", "${POD_UID}"),
                ],
                |r| {
                    let s = &r.subject;
                    assert_eq!(s.organizations, ["Example", "shop"]);
                    assert_eq!(s.organizational_units, ["web"]);
                    assert_eq!(s.countries, ["GB", "FR"]);
                    assert_eq!(s.provinces, ["Kent"]);
                    assert_eq!(s.localities, ["Dover"]);
                    assert_eq!(s.street_addresses, ["1 High St"]);
                    assert_eq!(s.postal_codes, ["CT16"]);
                    assert_eq!(s.serial_number.as_deref(), Some("0b5c-11"));
                },
            ),
            (
                "brace-less variable, literal dollars",
                &[("csi.cert-manager.io/common-name", "$POD_NAME costs $5 $")],
                |r| assert_eq!(r.subject.common_name.as_deref(), Some("web-0 costs $5 $")),
            ),
            (
                "renew-before",
                &[("csi.cert-manager.io/renew-before", "720h")],
                |r| assert_eq!(r.renew_before, Some(Duration::from_secs(720 * 3600))),
            ),
            (
                "renew-before under a custom duration",
                &[
                    ("csi.cert-manager.io/duration", "1h"),
                    ("csi.cert-manager.io/renew-before", "59m"),
                ],
                |r| assert_eq!(r.renew_before, Some(Duration::from_secs(59 * 60))),
            ),
            (
                "reuse-private-key",
                &[("csi.cert-manager.io/reuse-private-key", "true")],
                |r| assert!(r.reuse_private_key),
            ),
            (
                "file names",
                &[
                    ("csi.cert-manager.io/ca-file", "root.pem"),
                    ("csi.cert-manager.io/certificate-file", "cert.pem"),
                    ("csi.certvol.io/privatekey-file", ".key.pem"),
                ],
                |r| {
                    assert_eq!(
                        r.files,
                        FileNames {
                            ca: "root.pem".into(),
                            certificate: "cert.pem".into(),
                            private_key: ".key.pem".into(),
                            ..FileNames::default()
                        }
                    )
                },
            ),
            (
                "file names may swap defaults",
                &[
                    ("csi.cert-manager.io/ca-file", "tls.crt"),
                    ("csi.cert-manager.io/certificate-file", "ca.crt"),
                ],
                |r| {
                    assert_eq!(
                        (r.files.ca.as_str(), r.files.certificate.as_str()),
                        ("tls.crt", "ca.crt")
                    )
                },
            ),
            (
                "fs-group 0",
                &[("csi.cert-manager.io/fs-group", "0")],
                |r| assert_eq!(r.fs_group, Some(0)),
            ),
            (
                "fs-group max",
                &[("csi.cert-manager.io/fs-group", "4294967294")],
                |r| assert_eq!(r.fs_group, Some(4_294_967_294)),
            ),
            ("renew false", &[("csi.certvol.io/renew", "false")], |r| {
                assert!(!r.renew)
            }),
            ("renew true", &[("csi.certvol.io/renew", "true")], |r| {
                assert!(r.renew)
            }),
            (
                "pkcs12-enable false asks for nothing",
                &[("csi.cert-manager.io/pkcs12-enable", "false")],
                |r| {
                    assert!(r.annotations.is_empty());
                    assert_eq!(r.files.pkcs12, None);
                },
            ),
            (
                "keystore-pkcs12-enable false asks for nothing",
                &[("csi.cert-manager.io/keystore-pkcs12-enable", "false")],
                |r| assert_eq!(r.files.pkcs12, None),
            ),
            (
                "pkcs12-enable defaults: keystore.p12, modern, Secret key pkcs12-password",
                &[("csi.cert-manager.io/pkcs12-enable", "true")],
                |r| {
                    assert_eq!(
                        r.files.pkcs12,
                        Some(Pkcs12Files {
                            keystore: Some("keystore.p12".into()),
                            truststore: None,
                            profile: Pkcs12Profile::Modern,
                            password: PasswordSource {
                                secret_key: "pkcs12-password".into(),
                                secret_key_attribute: None,
                                literal_attribute: None,
                            },
                        })
                    );
                    assert_eq!(
                        r.files.all(),
                        ["ca.crt", "tls.crt", "tls.key", "keystore.p12"]
                    );
                },
            ),
            (
                "cert-manager keystore keys verbatim, literal password",
                &[
                    ("csi.cert-manager.io/pkcs12-enable", "true"),
                    ("csi.cert-manager.io/pkcs12-filename", "crt.p12"),
                    ("csi.cert-manager.io/pkcs12-password", "my-password"),
                ],
                |r| {
                    let p = r.files.pkcs12.as_ref().unwrap();
                    assert_eq!(p.keystore.as_deref(), Some("crt.p12"));
                    assert_eq!(
                        p.password.literal_attribute.as_deref(),
                        Some("csi.cert-manager.io/pkcs12-password")
                    );
                    // The request holds where the password is, never the password.
                    assert!(!format!("{r:?}").contains("my-password"));
                },
            ),
            (
                "keystore and truststore under our prefix, legacy, own Secret key",
                &[
                    ("csi.certvol.io/pkcs12-enable", "true"),
                    ("csi.certvol.io/pkcs12-filename", "app.p12"),
                    ("csi.certvol.io/truststore-pkcs12-file", "trust.p12"),
                    ("csi.certvol.io/pkcs12-profile", "legacy"),
                    ("csi.certvol.io/pkcs12-password-key", "keystore.pass_1"),
                ],
                |r| {
                    let p = r.files.pkcs12.as_ref().unwrap();
                    assert_eq!(p.keystore.as_deref(), Some("app.p12"));
                    assert_eq!(p.truststore.as_deref(), Some("trust.p12"));
                    assert_eq!(p.profile, Pkcs12Profile::Legacy);
                    assert_eq!(p.password.secret_key, "keystore.pass_1");
                    assert_eq!(
                        p.password.secret_key_attribute.as_deref(),
                        Some("csi.certvol.io/pkcs12-password-key")
                    );
                },
            ),
            (
                "truststore alone, modern profile explicitly",
                &[
                    ("csi.certvol.io/truststore-pkcs12-file", "cacerts.p12"),
                    ("csi.certvol.io/pkcs12-profile", "modern"),
                ],
                |r| {
                    let p = r.files.pkcs12.as_ref().unwrap();
                    assert_eq!(
                        (p.keystore.as_deref(), p.truststore.as_deref()),
                        (None, Some("cacerts.p12"))
                    );
                    assert_eq!(p.profile, Pkcs12Profile::Modern);
                },
            ),
            (
                "key-chain-file and chain-file",
                &[
                    ("csi.certvol.io/key-chain-file", "tls-combined.pem"),
                    ("csi.certvol.io/chain-file", "intermediates.pem"),
                ],
                |r| {
                    assert_eq!(r.files.key_chain.as_deref(), Some("tls-combined.pem"));
                    assert_eq!(r.files.chain.as_deref(), Some("intermediates.pem"));
                    assert_eq!(r.files.pkcs12, None);
                },
            ),
            (
                "SANs alone are enough",
                &[
                    ("csi.cert-manager.io/common-name", ""),
                    ("csi.cert-manager.io/ip-sans", "10.0.0.1"),
                ],
                |r| {
                    assert_eq!(r.subject.common_name, None);
                    assert_eq!(r.sans.ip_addresses.len(), 1);
                },
            ),
            ("no trust attribute: no bundle", &[], |r| {
                assert_eq!(r.trust, None)
            }),
            (
                "explicit false values alone ask for no bundle",
                &[
                    ("csi.certvol.io/trust-issuer-ca", "false"),
                    ("csi.certvol.io/trust-public-roots", "false"),
                ],
                |r| assert_eq!(r.trust, None),
            ),
            (
                "a ConfigMap source: default file name, issuing CA included",
                &[(
                    "csi.certvol.io/trust-configmaps",
                    "ca/ca.crt, certvol/roots/all.pem,ca/ca.crt",
                )],
                |r| {
                    let t = r.trust.as_ref().unwrap();
                    assert_eq!(r.files.trust_bundle.as_deref(), Some("ca-bundle.crt"));
                    assert!(t.issuer_ca);
                    assert!(!t.public_roots);
                    let refs: Vec<(Option<&str>, &str, &str)> = t
                        .config_maps
                        .iter()
                        .map(|k| (k.namespace.as_deref(), k.name.as_str(), k.key.as_str()))
                        .collect();
                    assert_eq!(
                        refs,
                        vec![
                            (None, "ca", "ca.crt"),
                            (Some("certvol"), "roots", "all.pem")
                        ]
                    );
                    assert_eq!(t.config_maps_attribute, "csi.certvol.io/trust-configmaps");
                },
            ),
            (
                "every source kind and a chosen file",
                &[
                    ("csi.certvol.io/trust-bundle-file", "trust.pem"),
                    ("csi.certvol.io/trust-issuer-ca", "false"),
                    ("csi.certvol.io/trust-secrets", "s/ca.crt"),
                    (
                        "csi.certvol.io/trust-cluster-bundles",
                        "example.com:foo:v1,plain",
                    ),
                    ("csi.certvol.io/trust-signer-name", "example.com/foo"),
                    ("csi.certvol.io/trust-signer-labels", "env=prod, team=web"),
                    ("csi.certvol.io/trust-public-roots", "true"),
                ],
                |r| {
                    let t = r.trust.as_ref().unwrap();
                    assert_eq!(r.files.trust_bundle.as_deref(), Some("trust.pem"));
                    assert!(!t.issuer_ca);
                    assert!(t.public_roots);
                    assert_eq!(t.secrets[0].name, "s");
                    assert_eq!(t.cluster_bundles, vec!["example.com:foo:v1", "plain"]);
                    let s = t.signer.as_ref().unwrap();
                    assert_eq!(s.signer_name, "example.com/foo");
                    assert_eq!(s.label_selector(), "env=prod,team=web");
                },
            ),
            (
                "public roots alone",
                &[("csi.certvol.io/trust-public-roots", "true")],
                |r| {
                    let t = r.trust.as_ref().unwrap();
                    assert!(t.public_roots && t.issuer_ca);
                    assert!(t.config_maps.is_empty());
                },
            ),
        ];
        for (name, extra, check) in rows {
            let mut extra = extra.to_vec();
            extra.extend(POD);
            let req = match parse(&with(&extra)) {
                Ok(r) => r,
                Err(e) => panic!("row {name:?}: unexpected error: {e}"),
            };
            check(&req);
        }
    }

    /// Errors, one row per variant and validation rule: full context → attribute in the error
    /// and a fragment of its message.
    #[test]
    fn error_table() {
        let long_label = format!("{}.example", "a".repeat(64));
        let long_name = ["abcdefghi"; 26].join(".");
        let long_file = "f".repeat(256);
        let rows: Vec<ErrorRow> = vec![
            // Missing
            (
                vec![("csi.cert-manager.io/issuer-name", "")],
                "csi.cert-manager.io/issuer-name",
                "is required: it names the cert-manager issuer",
            ),
            // UnknownKey
            (
                vec![("csi.certvol.io/isuer-name", "ca")],
                "csi.certvol.io/isuer-name",
                "is not a known attribute (did you mean \"csi.certvol.io/issuer-name\"?)",
            ),
            (
                vec![("csi.cert-manager.io/organisation", "x")],
                "csi.cert-manager.io/organisation",
                "accepted keys under \"csi.cert-manager.io/\": issuer-name, issuer-kind",
            ),
            (
                vec![("csi.cert-manager.io/dns-names-x", "")],
                "csi.cert-manager.io/dns-names-x",
                "is not a known attribute (did you mean \"csi.cert-manager.io/dns-names\"?)",
            ),
            // Kubernetes CSR API keys
            (
                vec![("csi.certvol.io/signer-name", "example.com")],
                "csi.certvol.io/signer-name",
                "value \"example.com\" is not of the form DOMAIN/PATH; accepted: a signer name of the form \"example.com/signer-name\"",
            ),
            (
                vec![("csi.certvol.io/signer-name", "Example.com/x")],
                "csi.certvol.io/signer-name",
                "has a domain part that is not a fully qualified DNS name",
            ),
            (
                vec![("csi.certvol.io/signer-name", "localhost/x")],
                "csi.certvol.io/signer-name",
                "has a domain part that is not a fully qualified DNS name",
            ),
            (
                vec![("csi.certvol.io/signer-name", "example.com/a b")],
                "csi.certvol.io/signer-name",
                "has a path part that is not letters, digits, '-', '_' and '.'",
            ),
            (
                vec![
                    ("csi.certvol.io/signer-name", "example.com/x"),
                    ("csi.certvol.io/ca-source", "configmap:corp-ca"),
                ],
                "csi.certvol.io/ca-source",
                "value \"configmap:corp-ca\" needs NAME/KEY after the colon; accepted: \"clustertrustbundle-signer\" (the default)",
            ),
            (
                vec![
                    ("csi.certvol.io/signer-name", "example.com/x"),
                    ("csi.certvol.io/ca-source", "secret:Bad_Name/ca.crt"),
                ],
                "csi.certvol.io/ca-source",
                "names an invalid object name or key",
            ),
            (
                vec![
                    ("csi.certvol.io/signer-name", "example.com/x"),
                    ("csi.certvol.io/ca-source", "vault:pki"),
                ],
                "csi.certvol.io/ca-source",
                "is not a known CA source; accepted: \"clustertrustbundle-signer\"",
            ),
            (
                vec![("csi.certvol.io/ca-source", "configmap:corp-ca/ca.crt")],
                "csi.certvol.io/signer-name",
                "is required: \"csi.certvol.io/ca-source\" only applies to Kubernetes CSR API volumes",
            ),
            (
                vec![("csi.cert-manager.io/signer-name", "example.com/x")],
                "csi.cert-manager.io/signer-name",
                "is a certvol extension; write it as \"csi.certvol.io/signer-name\"",
            ),
            // WrongPrefix
            (
                vec![("csi.cert-manager.io/renew", "false")],
                "csi.cert-manager.io/renew",
                "is a certvol extension; write it as \"csi.certvol.io/renew\"",
            ),
            // NotSupported
            (
                vec![("csi.cert-manager.io/keystore-pkcs12-file", "ks.p12")],
                "csi.cert-manager.io/keystore-pkcs12-file",
                "is not supported by certvol: csi-driver spells it \"pkcs12-filename\"; write \
                 \"csi.cert-manager.io/pkcs12-filename\"",
            ),
            (
                vec![("csi.certvol.io/keystore-pkcs12-enable", "true")],
                "csi.certvol.io/keystore-pkcs12-enable",
                "write \"csi.cert-manager.io/pkcs12-enable\"",
            ),
            (
                vec![("csi.cert-manager.io/keystore-pkcs12-password", "x")],
                "csi.cert-manager.io/keystore-pkcs12-password",
                "\"csi.certvol.io/pkcs12-password-key\"",
            ),
            // WrongPrefix: our keystore extensions
            (
                vec![("csi.cert-manager.io/pkcs12-profile", "legacy")],
                "csi.cert-manager.io/pkcs12-profile",
                "write it as \"csi.certvol.io/pkcs12-profile\"",
            ),
            (
                vec![("csi.cert-manager.io/pkcs12-password-key", "pw")],
                "csi.cert-manager.io/pkcs12-password-key",
                "write it as \"csi.certvol.io/pkcs12-password-key\"",
            ),
            (
                vec![("csi.cert-manager.io/truststore-pkcs12-file", "t.p12")],
                "csi.cert-manager.io/truststore-pkcs12-file",
                "write it as \"csi.certvol.io/truststore-pkcs12-file\"",
            ),
            (
                vec![("csi.cert-manager.io/key-chain-file", "k.pem")],
                "csi.cert-manager.io/key-chain-file",
                "write it as \"csi.certvol.io/key-chain-file\"",
            ),
            (
                vec![("csi.cert-manager.io/chain-file", "c.pem")],
                "csi.cert-manager.io/chain-file",
                "write it as \"csi.certvol.io/chain-file\"",
            ),
            // Invalid: PKCS#12 values
            (
                vec![("csi.cert-manager.io/pkcs12-enable", "yes")],
                "csi.cert-manager.io/pkcs12-enable",
                "value \"yes\" is not a boolean; accepted: \"true\" or \"false\"",
            ),
            (
                vec![
                    ("csi.certvol.io/pkcs12-enable", "true"),
                    ("csi.certvol.io/pkcs12-profile", "aes"),
                ],
                "csi.certvol.io/pkcs12-profile",
                "value \"aes\" is not a PKCS#12 profile; accepted: \"modern\"",
            ),
            (
                vec![
                    ("csi.certvol.io/pkcs12-enable", "true"),
                    ("csi.certvol.io/pkcs12-password-key", "pass word"),
                ],
                "csi.certvol.io/pkcs12-password-key",
                "contains a character other than letters, digits, '-', '_' and '.'; accepted: a \
                 Secret data key",
            ),
            (
                vec![
                    ("csi.cert-manager.io/pkcs12-enable", "true"),
                    ("csi.cert-manager.io/pkcs12-filename", "../ks.p12"),
                ],
                "csi.cert-manager.io/pkcs12-filename",
                "contains '/'; accepted: a plain file name",
            ),
            (
                vec![("csi.certvol.io/truststore-pkcs12-file", "..trust.p12")],
                "csi.certvol.io/truststore-pkcs12-file",
                "starts with \"..\"",
            ),
            (
                vec![("csi.certvol.io/key-chain-file", "a/b.pem")],
                "csi.certvol.io/key-chain-file",
                "contains '/'",
            ),
            (
                vec![("csi.certvol.io/chain-file", " chain.pem")],
                "csi.certvol.io/chain-file",
                "has leading or trailing spaces",
            ),
            // Requires: keystore settings without a keystore
            (
                vec![("csi.cert-manager.io/pkcs12-filename", "ks.p12")],
                "csi.cert-manager.io/pkcs12-filename",
                "has no effect without \"csi.cert-manager.io/pkcs12-enable\" set to \"true\"",
            ),
            (
                vec![
                    ("csi.certvol.io/pkcs12-enable", "false"),
                    ("csi.certvol.io/pkcs12-filename", "ks.p12"),
                ],
                "csi.certvol.io/pkcs12-filename",
                "has no effect without \"csi.certvol.io/pkcs12-enable\" set to \"true\"",
            ),
            (
                vec![("csi.cert-manager.io/pkcs12-password", "hunter2")],
                "csi.cert-manager.io/pkcs12-password",
                "has no effect without a PKCS#12 file (\"csi.cert-manager.io/pkcs12-enable\" set \
                 to \"true\", or \"csi.certvol.io/truststore-pkcs12-file\")",
            ),
            (
                vec![("csi.certvol.io/pkcs12-profile", "legacy")],
                "csi.certvol.io/pkcs12-profile",
                "has no effect without a PKCS#12 file",
            ),
            (
                vec![("csi.certvol.io/pkcs12-password-key", "pw")],
                "csi.certvol.io/pkcs12-password-key",
                "has no effect without a PKCS#12 file",
            ),
            // DuplicateFileName across every file of the volume
            (
                vec![("csi.certvol.io/key-chain-file", "tls.key")],
                "csi.certvol.io/key-chain-file",
                "file name \"tls.key\" is also used by \"csi.cert-manager.io/privatekey-file\" \
                 (its default); every file in the volume needs a distinct name",
            ),
            (
                vec![
                    ("csi.certvol.io/key-chain-file", "x.pem"),
                    ("csi.certvol.io/chain-file", "x.pem"),
                ],
                "csi.certvol.io/chain-file",
                "is also used by \"csi.certvol.io/key-chain-file\";",
            ),
            (
                vec![
                    ("csi.cert-manager.io/pkcs12-enable", "true"),
                    ("csi.certvol.io/chain-file", "keystore.p12"),
                ],
                "csi.certvol.io/chain-file",
                "is also used by \"csi.cert-manager.io/pkcs12-filename\" (its default)",
            ),
            (
                vec![
                    ("csi.certvol.io/pkcs12-enable", "true"),
                    ("csi.certvol.io/pkcs12-filename", "store.p12"),
                    ("csi.certvol.io/truststore-pkcs12-file", "store.p12"),
                ],
                "csi.certvol.io/truststore-pkcs12-file",
                "is also used by \"csi.certvol.io/pkcs12-filename\";",
            ),
            (
                vec![("csi.certvol.io/truststore-pkcs12-file", "ca.crt")],
                "csi.certvol.io/truststore-pkcs12-file",
                "is also used by \"csi.cert-manager.io/ca-file\" (its default)",
            ),
            (
                vec![("csi.cert-manager.io/disable-auto-renew", "true")],
                "csi.cert-manager.io/disable-auto-renew",
                "set \"csi.certvol.io/renew\" to \"false\"",
            ),
            // InvalidEntry: dns-names
            (
                vec![("csi.cert-manager.io/dns-names", "ok.example, a..b")],
                "csi.cert-manager.io/dns-names",
                "entry \"a..b\" has an empty label",
            ),
            (
                vec![("csi.certvol.io/dns-names", "-a.example")],
                "csi.certvol.io/dns-names",
                "starts or ends with '-'",
            ),
            (
                vec![("csi.cert-manager.io/dns-names", "a_b.example")],
                "csi.cert-manager.io/dns-names",
                "contains a character other than",
            ),
            (
                vec![("csi.cert-manager.io/dns-names", "a.*.example")],
                "csi.cert-manager.io/dns-names",
                "has a '*' that is not a whole leftmost",
            ),
            (
                vec![("csi.cert-manager.io/dns-names", "example.")],
                "csi.cert-manager.io/dns-names",
                "has an empty label",
            ),
            (
                vec![("csi.cert-manager.io/dns-names", &long_label)],
                "csi.cert-manager.io/dns-names",
                "has a label longer than 63 characters",
            ),
            (
                vec![("csi.cert-manager.io/dns-names", &long_name)],
                "csi.cert-manager.io/dns-names",
                "is longer than 253 characters",
            ),
            (
                vec![("csi.cert-manager.io/dns-names", "${POD_NAME}_x")],
                "csi.cert-manager.io/dns-names",
                "entry \"web-0_x\"",
            ),
            // InvalidEntry: ip-sans, uri-sans
            (
                vec![("csi.cert-manager.io/ip-sans", "10.0.0.1, 10.0.0.300")],
                "csi.cert-manager.io/ip-sans",
                "entry \"10.0.0.300\" is not an IP address; accepted: IPv4 or IPv6",
            ),
            (
                vec![("csi.cert-manager.io/uri-sans", "no-scheme")],
                "csi.cert-manager.io/uri-sans",
                "entry \"no-scheme\" has no scheme",
            ),
            (
                vec![("csi.cert-manager.io/uri-sans", "1http://x")],
                "csi.cert-manager.io/uri-sans",
                "has no valid scheme",
            ),
            (
                vec![("csi.cert-manager.io/uri-sans", "urn:")],
                "csi.cert-manager.io/uri-sans",
                "has nothing after the scheme",
            ),
            (
                vec![("csi.cert-manager.io/uri-sans", "http://a b")],
                "csi.cert-manager.io/uri-sans",
                "contains whitespace",
            ),
            // Invalid: durations
            (
                vec![("csi.cert-manager.io/duration", "0")],
                "csi.cert-manager.io/duration",
                "value \"0\" is not a positive duration",
            ),
            (
                vec![("csi.cert-manager.io/duration", "0s")],
                "csi.cert-manager.io/duration",
                "is not a positive duration",
            ),
            (
                vec![("csi.cert-manager.io/duration", "90d")],
                "csi.cert-manager.io/duration",
                "value \"90d\" is not a valid duration; accepted: a Go duration",
            ),
            (
                vec![("csi.cert-manager.io/duration", "1")],
                "csi.cert-manager.io/duration",
                "is not a valid duration",
            ),
            (
                vec![("csi.cert-manager.io/duration", "h")],
                "csi.cert-manager.io/duration",
                "is not a valid duration",
            ),
            (
                vec![("csi.cert-manager.io/duration", "3000000h")],
                "csi.cert-manager.io/duration",
                "is longer than the maximum of 2562047h",
            ),
            (
                vec![("csi.cert-manager.io/renew-before", "2160h")],
                "csi.cert-manager.io/renew-before",
                "is not shorter than the certificate duration \"2160h\" (the default)",
            ),
            (
                vec![
                    ("csi.cert-manager.io/duration", "1h"),
                    ("csi.cert-manager.io/renew-before", "2h"),
                ],
                "csi.cert-manager.io/renew-before",
                "duration \"1h\"",
            ),
            (
                vec![("csi.cert-manager.io/renew-before", "-5m")],
                "csi.cert-manager.io/renew-before",
                "is not a positive duration",
            ),
            // Invalid: booleans
            (
                vec![("csi.cert-manager.io/is-ca", "yes")],
                "csi.cert-manager.io/is-ca",
                "value \"yes\" is not a boolean; accepted: \"true\" or \"false\"",
            ),
            (
                vec![("csi.cert-manager.io/is-ca", "True")],
                "csi.cert-manager.io/is-ca",
                "is not a boolean",
            ),
            (
                vec![("csi.cert-manager.io/reuse-private-key", "1")],
                "csi.cert-manager.io/reuse-private-key",
                "is not a boolean",
            ),
            (
                vec![("csi.certvol.io/renew", "maybe")],
                "csi.certvol.io/renew",
                "is not a boolean",
            ),
            // key usages
            (
                vec![("csi.cert-manager.io/key-usages", "server auth, foo")],
                "csi.cert-manager.io/key-usages",
                "entry \"foo\" is not a key usage; accepted: \"signing\", \"digital signature\"",
            ),
            (
                vec![("csi.cert-manager.io/key-usages", "Server Auth")],
                "csi.cert-manager.io/key-usages",
                "entry \"Server Auth\" is not a key usage",
            ),
            (
                vec![("csi.cert-manager.io/key-usages", " , ")],
                "csi.cert-manager.io/key-usages",
                "lists no key usage",
            ),
            // key algorithm, size, encoding
            (
                vec![("csi.cert-manager.io/key-algorithm", "DSA")],
                "csi.cert-manager.io/key-algorithm",
                "value \"DSA\" is not a key algorithm; accepted: \"RSA\", \"ECDSA\" or \"Ed25519\"",
            ),
            (
                vec![("csi.cert-manager.io/key-size", "1024")],
                "csi.cert-manager.io/key-size",
                "is not a supported RSA key size; accepted: 2048 (default), 3072 or 4096 (key-algorithm defaults to RSA",
            ),
            (
                vec![
                    ("csi.cert-manager.io/key-algorithm", "ECDSA"),
                    ("csi.cert-manager.io/key-size", "521"),
                ],
                "csi.cert-manager.io/key-size",
                "is not supported yet: certvol has no P-521 keys",
            ),
            (
                vec![
                    ("csi.certvol.io/issuer-name", "ca"),
                    ("csi.certvol.io/key-size", "4096"),
                ],
                "csi.certvol.io/key-size",
                "key-algorithm defaults to ECDSA for volumes whose issuer-name is under \"csi.certvol.io/\"",
            ),
            (
                vec![
                    ("csi.cert-manager.io/key-algorithm", "ed25519"),
                    ("csi.cert-manager.io/key-size", "256"),
                ],
                "csi.cert-manager.io/key-size",
                "Ed25519 keys have a fixed size",
            ),
            (
                vec![("csi.cert-manager.io/key-encoding", "PKCS12")],
                "csi.cert-manager.io/key-encoding",
                "is not a key encoding; accepted: \"PKCS1\" or \"PKCS8\"",
            ),
            (
                vec![
                    ("csi.cert-manager.io/key-algorithm", "Ed25519"),
                    ("csi.cert-manager.io/key-encoding", "pkcs1"),
                ],
                "csi.cert-manager.io/key-encoding",
                "cannot be used with Ed25519 keys",
            ),
            // literal-subject
            (
                vec![("csi.cert-manager.io/literal-subject", "CN=x")],
                "csi.cert-manager.io/literal-subject",
                "cannot be combined with \"csi.cert-manager.io/common-name\"",
            ),
            (
                vec![
                    ("csi.cert-manager.io/common-name", ""),
                    ("csi.certvol.io/literal-subject", "CN=x"),
                    ("csi.cert-manager.io/serialnumber", "1"),
                ],
                "csi.certvol.io/literal-subject",
                "cannot be combined with \"csi.cert-manager.io/serialnumber\"",
            ),
            (
                vec![
                    ("csi.cert-manager.io/common-name", ""),
                    ("csi.cert-manager.io/literal-subject", "app"),
                ],
                "csi.cert-manager.io/literal-subject",
                "has a component without \"type=value\"",
            ),
            (
                vec![
                    ("csi.cert-manager.io/common-name", ""),
                    ("csi.cert-manager.io/literal-subject", "CN=a,\\"),
                ],
                "csi.cert-manager.io/literal-subject",
                "lone backslash",
            ),
            (
                vec![
                    ("csi.cert-manager.io/common-name", ""),
                    ("csi.cert-manager.io/literal-subject", "C N=a"),
                ],
                "csi.cert-manager.io/literal-subject",
                "neither a keyword",
            ),
            // variables
            (
                vec![(
                    "csi.cert-manager.io/common-name",
                    "${POD_NAME}-${NODE_NAME}",
                )],
                "csi.cert-manager.io/common-name",
                "unknown variable \"${NODE_NAME}\"; known variables: ${POD_NAME}, ${POD_NAMESPACE}, \
              ${POD_UID}, ${SERVICE_ACCOUNT_NAME}",
            ),
            (
                vec![("csi.certvol.io/uri-sans", "spiffe://x/$NODE")],
                "csi.certvol.io/uri-sans",
                "unknown variable \"$NODE\"",
            ),
            (
                vec![("csi.cert-manager.io/common-name", "${}")],
                "csi.cert-manager.io/common-name",
                "unknown variable \"${}\"",
            ),
            (
                vec![("csi.cert-manager.io/dns-names", "${POD_NAME.example")],
                "csi.cert-manager.io/dns-names",
                "has a \"${\" without a closing \"}\"",
            ),
            // Invalid: file names
            (
                vec![("csi.cert-manager.io/ca-file", "../ca.crt")],
                "csi.cert-manager.io/ca-file",
                "contains '/'",
            ),
            (
                vec![("csi.cert-manager.io/certificate-file", "..data")],
                "csi.cert-manager.io/certificate-file",
                "starts with \"..\"",
            ),
            (
                vec![("csi.cert-manager.io/privatekey-file", "..")],
                "csi.cert-manager.io/privatekey-file",
                "starts with \"..\"",
            ),
            (
                vec![("csi.cert-manager.io/privatekey-file", ".")],
                "csi.cert-manager.io/privatekey-file",
                "is \".\"",
            ),
            (
                vec![("csi.cert-manager.io/ca-file", " ca.crt")],
                "csi.cert-manager.io/ca-file",
                "leading or trailing spaces",
            ),
            (
                vec![("csi.cert-manager.io/ca-file", "a\0b")],
                "csi.cert-manager.io/ca-file",
                "NUL",
            ),
            (
                vec![("csi.cert-manager.io/ca-file", &long_file)],
                "csi.cert-manager.io/ca-file",
                "longer than 255 bytes",
            ),
            // DuplicateFileName
            (
                vec![("csi.cert-manager.io/certificate-file", "ca.crt")],
                "csi.cert-manager.io/certificate-file",
                "file name \"ca.crt\" is also used by \"csi.cert-manager.io/ca-file\" (its default)",
            ),
            (
                vec![("csi.certvol.io/ca-file", "tls.key")],
                "csi.certvol.io/ca-file",
                "is also used by \"csi.cert-manager.io/privatekey-file\" (its default)",
            ),
            (
                vec![
                    ("csi.cert-manager.io/ca-file", "x.pem"),
                    ("csi.cert-manager.io/privatekey-file", "x.pem"),
                ],
                "csi.cert-manager.io/privatekey-file",
                "is also used by \"csi.cert-manager.io/ca-file\";",
            ),
            // Invalid: fs-group
            (
                vec![("csi.cert-manager.io/fs-group", "-1")],
                "csi.cert-manager.io/fs-group",
                "value \"-1\" is not a decimal group id; accepted: a decimal group id from 0 to 4294967294",
            ),
            (
                vec![("csi.cert-manager.io/fs-group", "+5")],
                "csi.cert-manager.io/fs-group",
                "not a decimal group id",
            ),
            (
                vec![("csi.cert-manager.io/fs-group", " 5")],
                "csi.cert-manager.io/fs-group",
                "not a decimal group id",
            ),
            (
                vec![("csi.cert-manager.io/fs-group", "4294967295")],
                "csi.cert-manager.io/fs-group",
                "is reserved",
            ),
            (
                vec![("csi.cert-manager.io/fs-group", "4294967296")],
                "csi.cert-manager.io/fs-group",
                "is out of range",
            ),
            // NothingRequested
            (
                vec![("csi.cert-manager.io/common-name", "")],
                "csi.cert-manager.io/common-name",
                "without any identity: set \"csi.cert-manager.io/common-name\" or at least one of \
              \"csi.cert-manager.io/dns-names\"",
            ),
            (
                vec![
                    ("csi.cert-manager.io/common-name", "  "),
                    ("csi.cert-manager.io/dns-names", " , "),
                ],
                "csi.cert-manager.io/common-name",
                "without any identity",
            ),
            (
                vec![
                    ("csi.cert-manager.io/common-name", ""),
                    ("csi.certvol.io/issuer-name", "ca"),
                ],
                "csi.certvol.io/common-name",
                "\"csi.certvol.io/uri-sans\"",
            ),
            // trust-*
            (
                vec![("csi.cert-manager.io/trust-configmaps", "ca/ca.crt")],
                "csi.cert-manager.io/trust-configmaps",
                "is a certvol extension; write it as \"csi.certvol.io/trust-configmaps\"",
            ),
            (
                vec![("csi.certvol.io/trust-configmaps", "ca/ca.crt,just-a-name")],
                "csi.certvol.io/trust-configmaps",
                "entry \"just-a-name\" is not NAME/KEY or NAMESPACE/NAME/KEY; accepted: NAME/KEY (the pod's namespace)",
            ),
            (
                vec![("csi.certvol.io/trust-secrets", "Bad/ca.crt")],
                "csi.certvol.io/trust-secrets",
                "entry \"Bad/ca.crt\" has an object name that is not a DNS subdomain",
            ),
            (
                vec![("csi.certvol.io/trust-secrets", "s/a b")],
                "csi.certvol.io/trust-secrets",
                "has a key that is not a valid data key",
            ),
            (
                vec![("csi.certvol.io/trust-configmaps", " , ")],
                "csi.certvol.io/trust-configmaps",
                "lists no entry",
            ),
            (
                vec![("csi.certvol.io/trust-cluster-bundles", "ok,Not_OK")],
                "csi.certvol.io/trust-cluster-bundles",
                "entry \"Not_OK\" is not a ClusterTrustBundle name",
            ),
            (
                vec![("csi.certvol.io/trust-signer-name", "my-signer")],
                "csi.certvol.io/trust-signer-name",
                "value \"my-signer\" is not of the form DOMAIN/PATH; accepted: a signer name",
            ),
            (
                vec![("csi.certvol.io/trust-signer-labels", "env=prod")],
                "csi.certvol.io/trust-signer-name",
                "is required: \"csi.certvol.io/trust-signer-labels\" only restricts",
            ),
            (
                vec![
                    ("csi.certvol.io/trust-signer-name", "example.com/s"),
                    ("csi.certvol.io/trust-signer-labels", "env"),
                ],
                "csi.certvol.io/trust-signer-labels",
                "entry \"env\" is not KEY=VALUE",
            ),
            (
                vec![
                    ("csi.certvol.io/trust-signer-name", "example.com/s"),
                    ("csi.certvol.io/trust-signer-labels", "env=a,env=b"),
                ],
                "csi.certvol.io/trust-signer-labels",
                "sets a label key a second time",
            ),
            (
                vec![("csi.certvol.io/trust-public-roots", "yes")],
                "csi.certvol.io/trust-public-roots",
                "is not a boolean",
            ),
            (
                vec![("csi.certvol.io/trust-issuer-ca", "TRUE")],
                "csi.certvol.io/trust-issuer-ca",
                "is not a boolean",
            ),
            (
                vec![
                    ("csi.certvol.io/trust-bundle-file", "b.pem"),
                    ("csi.certvol.io/trust-issuer-ca", "false"),
                ],
                "csi.certvol.io/trust-configmaps",
                "asks for a trust bundle (\"csi.certvol.io/trust-bundle-file\" is set) but \"csi.certvol.io/trust-issuer-ca\" is \"false\"",
            ),
            (
                vec![("csi.certvol.io/trust-bundle-file", "../x")],
                "csi.certvol.io/trust-bundle-file",
                "contains '/'",
            ),
            (
                vec![("csi.certvol.io/trust-bundle-file", "ca.crt")],
                "csi.certvol.io/trust-bundle-file",
                "file name \"ca.crt\" is also used by \"csi.cert-manager.io/ca-file\" (its default)",
            ),
            (
                vec![
                    ("csi.certvol.io/trust-bundle-file", "all.pem"),
                    ("csi.certvol.io/key-chain-file", "all.pem"),
                ],
                "csi.certvol.io/trust-bundle-file",
                "file name \"all.pem\" is also used by \"csi.certvol.io/key-chain-file\"",
            ),
            (
                vec![
                    ("csi.certvol.io/trust-public-roots", "true"),
                    ("csi.certvol.io/truststore-pkcs12-file", "ca-bundle.crt"),
                    ("csi.certvol.io/pkcs12-password-key", "pw"),
                ],
                "csi.certvol.io/trust-bundle-file",
                "file name \"ca-bundle.crt\" is also used by \"csi.certvol.io/truststore-pkcs12-file\"",
            ),
            (
                vec![
                    ("csi.certvol.io/trust-public-roots", "true"),
                    ("csi.cert-manager.io/certificate-file", "ca-bundle.crt"),
                ],
                "csi.certvol.io/trust-bundle-file",
                "is also used by \"csi.cert-manager.io/certificate-file\"",
            ),
        ];
        for (extra, attribute, fragment) in rows {
            let mut extra = extra.clone();
            extra.extend(POD);
            let err = match parse(&with(&extra)) {
                Ok(req) => panic!("{extra:?} should fail, parsed to {req:?}"),
                Err(e) => e,
            };
            let msg = err.to_string();
            assert_eq!(err.attribute(), attribute, "{extra:?}: {msg}");
            assert!(
                msg.contains(fragment),
                "{extra:?}:\n  message:  {msg}\n  expected: {fragment}"
            );
            assert!(
                msg.contains(&format!("{attribute:?}")),
                "message must name the attribute: {msg}"
            );
            assert!(!msg.contains("hunter2"), "secret leaked: {msg}");
            assert!(!msg.contains('\n'), "one-line message: {msg}");
        }
    }

    #[test]
    fn pkcs12_password_comes_from_the_secret_first_then_the_literal() {
        let secrets = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let source = |extra: &[(&str, &str)]| {
            let mut extra = extra.to_vec();
            extra.push(("csi.cert-manager.io/pkcs12-enable", "true"));
            let c = with(&extra);
            let req = parse(&c).unwrap();
            (req.files.pkcs12.unwrap().password, c)
        };

        // The default key of the Secret.
        let (src, c) = source(&[]);
        let pw = pkcs12_password(&src, &c, &secrets(&[("pkcs12-password", "from-secret")]));
        assert_eq!(pw.unwrap().expose(), "from-secret");

        // The Secret wins over a literal.
        let (src, c) = source(&[("csi.cert-manager.io/pkcs12-password", "literal")]);
        let pw = pkcs12_password(&src, &c, &secrets(&[("pkcs12-password", "from-secret")]));
        assert_eq!(pw.unwrap().expose(), "from-secret");
        // ...and the literal is used without one; ours wins over cert-manager's.
        let pw = pkcs12_password(&src, &c, &HashMap::new());
        assert_eq!(pw.unwrap().expose(), "literal");
        let (src, c) = source(&[
            ("csi.cert-manager.io/pkcs12-password", "theirs"),
            ("csi.certvol.io/pkcs12-password", "ours"),
        ]);
        assert_eq!(
            pkcs12_password(&src, &c, &HashMap::new()).unwrap().expose(),
            "ours"
        );

        // A named key must be in the Secret, even with a literal present.
        let (src, c) = source(&[
            ("csi.certvol.io/pkcs12-password-key", "ks-pass"),
            ("csi.cert-manager.io/pkcs12-password", "literal"),
        ]);
        let err = pkcs12_password(
            &src,
            &c,
            &secrets(&[("other", "x"), ("pkcs12-password", "y")]),
        )
        .unwrap_err();
        assert_eq!(err.attribute(), "csi.certvol.io/pkcs12-password-key");
        let msg = err.to_string();
        assert!(
            msg.contains("read from key \"ks-pass\"")
                && msg.contains("the Secret has no such key")
                && !msg.contains("other"),
            "{msg}"
        );
        assert_eq!(
            pkcs12_password(&src, &c, &secrets(&[("ks-pass", "named")]))
                .unwrap()
                .expose(),
            "named"
        );

        // Nothing at all: the message says kubelet sent no Secret, naming the default key.
        let (src, c) = source(&[]);
        let err = pkcs12_password(&src, &c, &HashMap::new()).unwrap_err();
        assert_eq!(err.attribute(), "csi.certvol.io/pkcs12-password-key");
        let msg = err.to_string();
        assert!(
            msg.contains("key \"pkcs12-password\"") && msg.contains("kubelet sent no Secret"),
            "{msg}"
        );
        // An empty value is no password.
        let err = pkcs12_password(&src, &c, &secrets(&[("pkcs12-password", "")])).unwrap_err();
        assert!(err.to_string().contains("its value is empty"), "{err}");
        assert!(!format!("{:?}", Password::new("hunter2")).contains("hunter2"));
    }

    #[test]
    fn duration_message_reads_well() {
        let err = parse(&with(&[("csi.cert-manager.io/duration", "-1h")])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "volume attribute \"csi.cert-manager.io/duration\": value \"-1h\" is not a positive \
             duration; accepted: a Go duration such as \"2160h\", \"90m\" or \"1h30m\""
        );
    }

    #[test]
    fn missing_pod_info_asks_for_pod_info_on_mount() {
        let err = parse(&with(&[("csi.cert-manager.io/common-name", "${POD_NAME}")])).unwrap_err();
        assert_eq!(
            err,
            AttrError::MissingPodInfo {
                attribute: "csi.cert-manager.io/common-name".into(),
                variable: "${POD_NAME}",
                context_key: "csi.storage.k8s.io/pod.name",
            }
        );
        assert!(err.to_string().contains("podInfoOnMount must be enabled"));
        let err = parse(&with(&[
            (
                "csi.cert-manager.io/organizations",
                "${SERVICE_ACCOUNT_NAME}",
            ),
            ("csi.storage.k8s.io/pod.name", "web-0"),
        ]))
        .unwrap_err();
        assert_eq!(err.attribute(), "csi.cert-manager.io/organizations");
        assert!(
            err.to_string()
                .contains("\"csi.storage.k8s.io/serviceAccount.name\"")
        );
    }

    #[test]
    fn first_bad_key_is_reported_deterministically() {
        let c = with(&[("csi.certvol.io/zzz", "1"), ("csi.certvol.io/aaa", "1")]);
        for _ in 0..10 {
            assert_eq!(parse(&c).unwrap_err().attribute(), "csi.certvol.io/aaa");
        }
    }

    #[test]
    fn every_documented_key_is_accepted_under_both_prefixes() {
        for key in &KEYS[..CERT_MANAGER_KEY_COUNT] {
            for prefix in [CM, CV] {
                let k = format!("{prefix}{key}");
                // An empty value means "unset"; that is enough to prove the key is known.
                let c = with(&[(k.as_str(), "")]);
                if let Err(AttrError::UnknownKey { .. }) = parse(&c) {
                    panic!("{k} rejected as unknown");
                }
            }
        }
    }

    #[test]
    fn parse_duration_for_flags() {
        assert_eq!(parse_duration("20s"), Ok(Duration::from_secs(20)));
        assert_eq!(
            parse_duration("0s"),
            Err(
                "\"0s\" is not a positive duration; accepted: a Go duration such as \"2160h\", \
                 \"90m\" or \"1h30m\""
                    .to_owned()
            )
        );
    }

    #[test]
    fn go_duration_syntax() {
        let ok = [
            ("1ns", 1),
            ("1us", 1_000),
            ("1μs", 1_000),
            ("+2ms", 2_000_000),
            (".5s", 500_000_000),
            ("1.s", 1_000_000_000),
            ("1.000000000000000000000001s", 1_000_000_000),
            ("2562047h", 2_562_047 * 3_600_000_000_000),
        ];
        for (s, nanos) in ok {
            assert_eq!(
                go_duration(s).ok(),
                Some(Duration::from_nanos(nanos)),
                "{s}"
            );
        }
        for s in [
            "", "-", ".", "1.5", "1hm", "1 h", "1e3s", "--1s", "2562048h",
        ] {
            assert!(go_duration(s).is_err(), "{s} should be rejected");
        }
        assert!(matches!(go_duration("-0"), Err(DurationError::NotPositive)));
        assert!(matches!(
            go_duration("2562048h"),
            Err(DurationError::TooLong)
        ));
    }
}
