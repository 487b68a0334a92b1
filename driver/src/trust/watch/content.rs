//! A source's content read out of its watch's snapshot, or the error that names what is missing.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::error::SourceError;
use super::task::Snapshot;
use super::value::{CTB_KEY, Digest, ObjectData, Value};
use crate::kube::discovery::NoClusterTrustBundles;
use crate::trust::source::{ObjectRef, ResolvedSource};

/// One PEM text of a source: how reports name it, the shared text and its digest.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Piece {
    pub(super) label: String,
    pub(super) text: Arc<str>,
    pub(super) digest: Digest,
}

/// A source's content now: `Ok(None)` while its watch has not listed yet. Clones `Arc`s only.
pub(super) fn content(
    source: &ResolvedSource,
    snap: &Snapshot,
) -> Result<Option<Vec<Piece>>, SourceError> {
    if snap.no_api {
        return Err(no_api(source));
    }
    let Some(objects) = &snap.objects else {
        return Ok(None);
    };
    let one = |name: &str| -> Result<&ObjectData, SourceError> {
        objects
            .get(name)
            .map(|data| &**data)
            .ok_or_else(|| SourceError::NotFound {
                attribute: source.attribute.clone(),
                object: source.object.to_string(),
            })
    };
    let labelled = |label: String, piece: Piece| Piece { label, ..piece };
    let pems = match &source.object {
        ObjectRef::ConfigMap { name, .. } | ObjectRef::Secret { name, .. } => {
            let key = source.key.as_deref().unwrap_or_default();
            let piece = text(source, one(name)?, key, source.object.to_string())?;
            vec![labelled(source.label(), piece)]
        }
        ObjectRef::ClusterTrustBundle { name } => {
            let piece = text(source, one(name)?, CTB_KEY, source.object.to_string())?;
            vec![labelled(source.label(), piece)]
        }
        ObjectRef::Signer { .. } => signer_bundles(source, objects)?,
    };
    Ok(Some(pems))
}

/// The error for a ClusterTrustBundle source on a cluster that serves no version of the API.
fn no_api(source: &ResolvedSource) -> SourceError {
    let what = match &source.object {
        ObjectRef::ClusterTrustBundle { name } => name.clone(),
        ObjectRef::Signer { signer_name, .. } => signer_name.clone(),
        other => other.to_string(),
    };
    SourceError::NoApi(NoClusterTrustBundles::trust(&source.attribute, &what))
}

/// Every ClusterTrustBundle a signer selection found, one piece per bundle by object name, so
/// reports point at the right object; none is an error.
fn signer_bundles(
    source: &ResolvedSource,
    objects: &BTreeMap<String, Arc<ObjectData>>,
) -> Result<Vec<Piece>, SourceError> {
    if objects.is_empty() {
        return Err(SourceError::NoneSelected {
            attribute: source.attribute.clone(),
            object: source.object.to_string(),
        });
    }
    objects
        .iter()
        .map(|(name, data)| {
            let label = format!("ClusterTrustBundle {name}");
            let piece = text(source, data, CTB_KEY, label.clone())?;
            Ok(Piece { label, ..piece })
        })
        .collect()
}

/// The text under `key` of `data` (the object `object` names in errors), not yet labelled.
fn text(
    source: &ResolvedSource,
    data: &ObjectData,
    key: &str,
    object: String,
) -> Result<Piece, SourceError> {
    let attribute = source.attribute.clone();
    let Some(value) = data.get(key) else {
        return Err(SourceError::MissingKey {
            attribute,
            object,
            key: key.to_owned(),
            available: available_keys(source, data),
        });
    };
    match value {
        Value::Text { text, digest, .. } => Ok(Piece {
            label: String::new(),
            text: text.clone(),
            digest: *digest,
        }),
        Value::NotText => Err(SourceError::NotText {
            attribute,
            object,
            key: key.to_owned(),
        }),
        Value::TooLarge { bytes, max } => Err(SourceError::TooLarge {
            attribute,
            object,
            key: key.to_owned(),
            bytes: *bytes,
            max: *max,
        }),
        Value::OverBudget { bytes, max } => Err(SourceError::OverBudget {
            attribute,
            object,
            key: key.to_owned(),
            bytes: *bytes,
            max: *max,
        }),
    }
}

/// The keys a missing key's error lists.
fn available_keys(source: &ResolvedSource, data: &ObjectData) -> String {
    // A Secret's key names are not for whoever reads the pod's events (who may not be allowed
    // to read the Secret); a ConfigMap's help fix a typo.
    if matches!(source.object, ObjectRef::Secret { .. }) {
        "not listed for a Secret".into()
    } else if data.is_empty() {
        "none".into()
    } else {
        data.keys()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join(", ")
    }
}
