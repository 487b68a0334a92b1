//! Why a trust source's content is not available, as the volume's attribute names it.

use std::time::Duration;

use crate::kube::discovery::NoClusterTrustBundles;
use crate::trust::source::PolicyError;

/// Why a source's content is not available.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SourceError {
    #[error(
        "volume attribute {attribute:?}: {object} does not exist; create it or change the attribute"
    )]
    NotFound { attribute: String, object: String },
    #[error("volume attribute {attribute:?}: {object} has no key {key:?}; its keys: {available}")]
    MissingKey {
        attribute: String,
        object: String,
        key: String,
        available: String,
    },
    #[error(
        "volume attribute {attribute:?}: {object} key {key:?} is not UTF-8 text; accepted: PEM certificates"
    )]
    NotText {
        attribute: String,
        object: String,
        key: String,
    },
    /// The value is over `--max-trust-source-bytes`. Names the key asked for and the sizes
    /// only: never the content, nor (for a Secret) its other keys.
    #[error(
        "volume attribute {attribute:?}: {object} key {key:?} is {bytes} bytes; a trust source may \
         hold at most {max} bytes (the node's --max-trust-source-bytes)"
    )]
    TooLarge {
        attribute: String,
        object: String,
        key: String,
        bytes: usize,
        max: usize,
    },
    /// Keeping the value would take the node's source text past `--max-trust-bytes`. Retried
    /// when the object changes or its watch restarts (the last volume naming it is gone).
    #[error(
        "volume attribute {attribute:?}: {object} key {key:?} ({bytes} bytes) is not kept: this \
         node's trust sources would hold more than {max} bytes in all (--max-trust-bytes); \
         retried when the object changes or once no volume on the node names it"
    )]
    OverBudget {
        attribute: String,
        object: String,
        key: String,
        bytes: usize,
        max: usize,
    },
    /// Subscribing would take the volumes of `namespace` past `--max-trust-watches-per-namespace`
    /// distinct watched objects. Not the volume's fault alone (its neighbours hold the others),
    /// so not InvalidArgument; see `csi.rs` for the code.
    #[error(
        "volume attribute {attribute:?}: {object} would make {count} distinct trust sources \
         watched for the volumes of namespace {namespace:?}; this node watches at most {max} per \
         namespace (--max-trust-watches-per-namespace): name fewer distinct ConfigMaps, Secrets \
         and ClusterTrustBundles, share them between volumes, or remove volumes that name others"
    )]
    TooManyWatches {
        attribute: String,
        object: String,
        namespace: String,
        count: usize,
        max: usize,
    },
    #[error(
        "volume attribute {attribute:?}: there are no {object}; create one or change the attribute"
    )]
    NoneSelected { attribute: String, object: String },
    #[error(
        "volume attribute {attribute:?}: {object} could not be read within {waited:?}: {reason}"
    )]
    Unavailable {
        attribute: String,
        object: String,
        waited: Duration,
        reason: String,
    },
    /// The source is a ClusterTrustBundle and the cluster serves no version of that API.
    #[error(transparent)]
    NoApi(NoClusterTrustBundles),
    #[error(transparent)]
    Policy(#[from] PolicyError),
}

impl SourceError {
    /// The attribute that named the source.
    pub fn attribute(&self) -> &str {
        match self {
            SourceError::NotFound { attribute, .. }
            | SourceError::MissingKey { attribute, .. }
            | SourceError::NotText { attribute, .. }
            | SourceError::TooLarge { attribute, .. }
            | SourceError::OverBudget { attribute, .. }
            | SourceError::TooManyWatches { attribute, .. }
            | SourceError::NoneSelected { attribute, .. }
            | SourceError::Unavailable { attribute, .. } => attribute,
            SourceError::NoApi(e) => &e.attribute,
            SourceError::Policy(p) => p.attribute(),
        }
    }
}
