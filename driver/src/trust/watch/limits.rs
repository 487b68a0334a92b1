//! The operator's bounds on what the trust cache holds and watches, and the byte budget every
//! kept value reserves from.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The operator's bounds on what the cache holds and watches (`--max-trust-source-bytes`,
/// `--max-trust-watches-per-namespace`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrustLimits {
    /// Largest value of one source (one ConfigMap or Secret key, one ClusterTrustBundle's
    /// `trustBundle`), in bytes.
    pub max_source_bytes: usize,
    /// Most distinct objects (ConfigMaps, Secrets, ClusterTrustBundles, signer selections) the
    /// volumes of pods in one namespace may have watched at once.
    pub max_watches_per_namespace: usize,
    /// Most bytes of source text the node holds in all (each value counted once).
    pub max_total_bytes: usize,
}

/// A ConfigMap holds at most 1 MiB in all (the API server's limit), so no real single key is
/// larger; the public root set, the largest bundle people paste, is about 200 KiB.
pub(crate) const DEFAULT_MAX_SOURCE_BYTES: usize = 1 << 20;
/// Four times the sources one volume may name by default: room for several workloads with
/// different CAs in one namespace, while a namespace that lists thousands of names costs the
/// node's API budget 64 lists and watches, not thousands.
pub(crate) const DEFAULT_MAX_WATCHES_PER_NAMESPACE: usize = 64;
/// A quarter of the chart's 128 MiB memory limit: thousands of typical CA sources (a few KiB
/// each), while one namespace at its watch budget with 1 MiB sources (64 MiB of text, about
/// 104 MiB resident) cannot take the driver past its limit.
pub(crate) const DEFAULT_MAX_TOTAL_BYTES: usize = 32 << 20;

impl Default for TrustLimits {
    fn default() -> Self {
        TrustLimits {
            max_source_bytes: DEFAULT_MAX_SOURCE_BYTES,
            max_watches_per_namespace: DEFAULT_MAX_WATCHES_PER_NAMESPACE,
            max_total_bytes: DEFAULT_MAX_TOTAL_BYTES,
        }
    }
}

/// What extraction checks a value against: the per-source cap and the node's byte budget for
/// all source text, with the bytes held now.
#[derive(Debug)]
pub(super) struct Bounds {
    pub(super) max_source_bytes: usize,
    pub(super) max_total_bytes: usize,
    pub(super) held: AtomicUsize,
}

impl Bounds {
    /// Reserves `bytes` of the budget, or `None` when they do not fit.
    pub(super) fn reserve(self: &Arc<Self>, bytes: usize) -> Option<Reservation> {
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                held.checked_add(bytes)
                    .filter(|&total| total <= self.max_total_bytes)
            })
            .ok()?;
        Some(Reservation {
            bytes,
            bounds: self.clone(),
        })
    }
}

/// Bytes of the budget held by one value's text; released when the last clone of the value is
/// dropped, which is when no snapshot and no watch state refers to it any more.
#[derive(Debug)]
pub(super) struct Reservation {
    bytes: usize,
    bounds: Arc<Bounds>,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.bounds.held.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}
