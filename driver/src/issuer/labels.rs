//! The labels and annotations certvol writes on the request objects it files (both kinds), and
//! the check that a labelled object carries them the way certvol writes them ([`Owner`]).

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use sha2::{Digest, Sha256};

use crate::spec::request::{CertRequest, PodInfo};

/// Label holding the (label-safe) node id; the node's watch selects on it.
pub const LABEL_NODE: &str = "certvol.io/node";
/// Label holding a hash of the CSI volume id (volume ids are longer than a label value allows).
pub const LABEL_VOLUME: &str = "certvol.io/volume";
/// Label holding the pod name (hashed when it is not a valid label value).
pub const LABEL_POD: &str = "certvol.io/pod";
/// Annotation holding the node name verbatim: the `certvol.io/node` label is a hash for names
/// longer than a label allows, and the chart's admission policy compares the request with the
/// node name its bound token carries. Volume attributes cannot set it (the prefix is reserved).
pub const ANNOTATION_NODE_NAME: &str = "certvol.io/node-name";

/// The request's annotations: the volume's pass-through ones, then certvol's own.
pub fn annotations(cert: &CertRequest, node_id: &str) -> BTreeMap<String, String> {
    let mut out = cert.annotations.clone();
    out.insert(ANNOTATION_NODE_NAME.to_owned(), node_id.to_owned());
    out
}

/// The labels of the request certvol files for `volume_id` of `pod` on `node_id`: the node's
/// watch selects on the first, the others say whose it is.
pub(crate) fn request_labels(
    node_id: &str,
    volume_id: &str,
    pod: &PodInfo,
) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_NODE.to_owned(), label_value(node_id)),
        (LABEL_VOLUME.to_owned(), hashed_label(volume_id)),
        (LABEL_POD.to_owned(), label_value(&pod.name)),
    ])
}

/// Whether `v` is a valid Kubernetes label value: at most 63 characters, alphanumerics with `-`,
/// `_` and `.` inside, starting and ending with an alphanumeric (or empty).
pub fn is_valid_label_value(v: &str) -> bool {
    if v.is_empty() {
        return true;
    }
    let bytes = v.as_bytes();
    v.len() <= 63
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// A label value naming `v`: `v` itself when it is a valid, non-empty label value, otherwise a
/// stable hash of it (so long or odd node and pod names still select exactly).
pub fn label_value(v: &str) -> String {
    if !v.is_empty() && is_valid_label_value(v) {
        v.to_owned()
    } else {
        hashed_label(v)
    }
}

/// `sha256-` and the first 20 bytes of SHA-256 in hex: 47 characters, always a valid label value.
pub fn hashed_label(v: &str) -> String {
    let digest = Sha256::digest(v.as_bytes());
    format!("sha256-{}", hex::encode(&digest[..20]))
}

/// What makes a request object this node's own, beyond the label the watch selects on (which
/// anyone who may create such objects can set): the name [`crate::issuer::request_name`] gives,
/// this node's name in the `certvol.io/node-name` annotation (when present), and a volume label as certvol
/// writes it. Objects that lack any of these are ignored: not cached, and they wake no waiter.
#[derive(Clone, Debug)]
pub(crate) struct Owner {
    node_id: String,
    node_label: String,
}

impl Owner {
    pub(crate) fn new(node_id: &str) -> Self {
        Owner {
            node_id: node_id.to_owned(),
            node_label: label_value(node_id),
        }
    }

    /// Why `meta` is not one of this node's requests, or `None` when it is.
    pub(crate) fn foreign(&self, meta: &ObjectMeta) -> Option<&'static str> {
        if !meta.name.as_deref().is_some_and(is_request_name) {
            return Some("name");
        }
        let label = |k: &str| meta.labels.as_ref().and_then(|l| l.get(k));
        if label(LABEL_NODE) != Some(&self.node_label) {
            return Some("node label");
        }
        if !label(LABEL_VOLUME).is_some_and(|v| is_hashed_label(v)) {
            return Some("volume label");
        }
        let node_name = meta
            .annotations
            .as_ref()
            .and_then(|a| a.get(ANNOTATION_NODE_NAME));
        // Requests filed by certvol 0.1.0 have no such annotation: one pending across the
        // upgrade must still be seen. Anyone who can create these objects can write the
        // annotation anyway; what bounds them is the cache's limits.
        if node_name.is_some_and(|n| n != &self.node_id) {
            return Some("node-name annotation");
        }
        None
    }
}

/// Whether `name` has the shape of [`crate::issuer::request_name`]: `certvol-`, 20 hex digits,
/// `-` and a revision.
pub(crate) fn is_request_name(name: &str) -> bool {
    let Some(rest) = name.strip_prefix("certvol-") else {
        return false;
    };
    let Some((hash, revision)) = rest.split_once('-') else {
        return false;
    };
    hash.len() == 20
        && hash.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        && !revision.is_empty()
        && revision.len() <= 20
        && revision.bytes().all(|b| b.is_ascii_digit())
}

/// Whether `v` has the shape of [`hashed_label`].
fn is_hashed_label(v: &str) -> bool {
    v.strip_prefix("sha256-")
        .is_some_and(|h| h.len() == 40 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_kept_when_valid_and_hashed_otherwise() {
        assert_eq!(label_value("node-1"), "node-1");
        assert_eq!(
            label_value("ip-10-0-0-1.ec2.internal"),
            "ip-10-0-0-1.ec2.internal"
        );
        let long = "n".repeat(64);
        for odd in [long.as_str(), "", "-lead", "trail.", "has space", "ünï"] {
            let v = label_value(odd);
            assert!(
                v.starts_with("sha256-") && is_valid_label_value(&v),
                "{odd:?} -> {v}"
            );
            assert_eq!(v, label_value(odd), "stable");
        }
        assert_ne!(label_value(&"a".repeat(64)), label_value(&"a".repeat(65)));
        assert!(is_valid_label_value(&"a".repeat(63)));
        assert!(!is_valid_label_value(&"a".repeat(64)));
    }
}
