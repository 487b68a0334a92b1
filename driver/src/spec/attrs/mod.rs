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
//!
//! # Layout
//!
//! This module holds the key table, the error type and [`parse`], which runs one step per
//! concern: `context` sorts the raw context into attributes, `issuer` reads the issuer or
//! Kubernetes CSR signer, `subject` the names, `keys` the key and its usages, `files` the file
//! names and PKCS#12 settings, `trust` the trust bundle; `values` holds the value parsers they
//! share (lists, variables, durations, booleans).

mod context;
mod files;
mod issuer;
mod keys;
mod subject;
mod trust;
mod values;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use crate::spec::request::CertRequest;
use context::Attrs;

pub use context::set_key;
pub use files::pkcs12_password;
pub use trust::{DEFAULT_MAX_TRUST_SOURCES, check_trust_sources};
pub use values::parse_duration;

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

const VARIABLES_HELP: &str = "${POD_NAME}, ${POD_NAMESPACE}, ${POD_UID}, ${SERVICE_ACCOUNT_NAME}";

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

/// The volume context a publish may carry: names and values of every attribute, kubelet's keys
/// included. Far above any honest spec (a service-account token is about 1 KiB), and it bounds
/// what `state.json` records of the context.
pub const MAX_CONTEXT_BYTES: usize = 64 * 1024;
/// Subject alternative names per certificate, all kinds together.
pub const MAX_SANS: usize = 100;
/// Pass-through annotations per request: how many, and their names and values together.
pub const MAX_ANNOTATIONS: usize = 32;
pub const MAX_ANNOTATION_BYTES: usize = 8 * 1024;

/// Parses a CSI volume context into the certificate it asks for. See the module docs for the
/// rules. The steps run in a fixed order, so with several problems the same one is reported
/// every time.
pub fn parse(ctx: &HashMap<String, String>) -> Result<CertRequest, AttrError> {
    check_context_size(ctx)?;
    let attrs = Attrs::collect(ctx)?;
    let signer = issuer::parse_signer(&attrs)?;
    let home = signer.home;
    let (subject, sans) = subject::parse_names(&attrs, home)?;
    let (duration, renew_before) = values::parse_lifetime(&attrs)?;
    let is_ca = values::flag(&attrs, "is-ca", false)?;
    let usages = keys::parse_usages(attrs.get("key-usages"), is_ca)?;
    let (key_algorithm, key_encoding) = keys::parse_key(&attrs, home)?;
    let reuse_private_key = values::flag(&attrs, "reuse-private-key", false)?;
    let renew = values::flag(&attrs, "renew", true)?;
    let mut files = files::parse_files(&attrs, home)?;
    let fs_group = attrs.get("fs-group").map(values::parse_gid).transpose()?;
    let trust = trust::parse_trust(&attrs, &mut files, home)?;

    Ok(CertRequest {
        pod: attrs.pod.clone(),
        issuer: signer.issuer,
        kube_csr: signer.kube_csr,
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

/// Refuses a context over [`MAX_CONTEXT_BYTES`], naming its largest attribute.
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

#[cfg(test)]
mod tests;
