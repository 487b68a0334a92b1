//! One key's value as a watch keeps it: the text once, its digest, and its share of the byte
//! budget.

use std::collections::BTreeMap;
use std::sync::Arc;

use sha2::{Digest as _, Sha256};

use super::limits::{Bounds, Reservation};

/// Data of one object: key → value (ConfigMap `data` and `binaryData`, Secret `data`,
/// ClusterTrustBundle `spec.trustBundle` under the key `trustBundle`).
pub(super) type ObjectData = BTreeMap<String, Value>;

pub(super) const CTB_KEY: &str = "trustBundle";

/// SHA-256 of a value's bytes.
pub(super) type Digest = [u8; 32];

/// One key's value as the cache keeps it. Clones share the text and its one reservation.
#[derive(Clone, Debug)]
pub(super) enum Value {
    /// The text, shared by everyone who reads it, and its digest.
    Text {
        text: Arc<str>,
        digest: Digest,
        _held: Arc<Reservation>,
    },
    /// Not UTF-8: unusable as PEM, so the bytes are not kept.
    NotText,
    /// Over the size cap: not kept.
    TooLarge { bytes: usize, max: usize },
    /// Within the size cap, but the node's trust sources hold so much already that it would take
    /// them past `--max-trust-bytes`: not kept.
    OverBudget { bytes: usize, max: usize },
}

impl Value {
    /// The value of `bytes`; `previous` is what the watch held for the same key, reused when the
    /// text is the same, so a relist or an update of other keys needs no second reservation.
    pub(super) fn new(bytes: &[u8], bounds: &Arc<Bounds>, previous: Option<&Value>) -> Value {
        if bytes.len() > bounds.max_source_bytes {
            return Value::TooLarge {
                bytes: bytes.len(),
                max: bounds.max_source_bytes,
            };
        }
        let Ok(text) = std::str::from_utf8(bytes) else {
            return Value::NotText;
        };
        let digest: Digest = Sha256::digest(bytes).into();
        if let Some(same @ Value::Text { digest: d, .. }) = previous
            && *d == digest
        {
            return same.clone();
        }
        let Some(held) = bounds.reserve(bytes.len()) else {
            return Value::OverBudget {
                bytes: bytes.len(),
                max: bounds.max_total_bytes,
            };
        };
        Value::Text {
            text: Arc::from(text),
            digest,
            _held: Arc::new(held),
        }
    }
}

/// By digest: deciding whether a source changed never compares texts.
impl PartialEq for Value {
    fn eq(&self, other: &Value) -> bool {
        match (self, other) {
            (Value::Text { digest: a, .. }, Value::Text { digest: b, .. }) => a == b,
            (Value::NotText, Value::NotText) => true,
            (Value::TooLarge { bytes: a, max: m }, Value::TooLarge { bytes: b, max: n })
            | (Value::OverBudget { bytes: a, max: m }, Value::OverBudget { bytes: b, max: n }) => {
                a == b && m == n
            }
            _ => false,
        }
    }
}

impl Eq for Value {}
