//! A watch-driven cache of exactly the objects volumes name for their trust bundles.
//!
//! Least privilege: every ConfigMap, Secret and ClusterTrustBundle a volume names gets a watch
//! of its own, scoped to its namespace and selected by `fieldSelector=metadata.name=NAME`, which
//! RBAC can authorize with `resourceNames` (list/watch with a name field selector), so the
//! driver needs no right to read other objects. ClusterTrustBundles chosen by signer use
//! `fieldSelector=spec.signerName=...` plus the label selector. Volumes naming the same object
//! share one watch (reference-counted); the watch stops when the last subscriber is dropped.
//!
//! ClusterTrustBundles are read in the version API discovery found (v1, v1beta1 or v1alpha1, as
//! `DynamicObject`s: one schema, only `apiVersion` differs); a watch started before discovery
//! answered waits for it. On a cluster that serves none, the source reports
//! [`SourceError::NoApi`] instead of watching.
//!
//! The cache never spawns: [`TrustCache::new`] returns the future that runs every watch, and
//! the node runs it with its other background work (see `node`).
//!
//! Subscribers get a [`tokio::sync::watch`] view of each object; [`VolumeTrust::changed`]
//! resolves when the content a volume reads changed, not on every resourceVersion bump.
//!
//! Bounded memory: the cache holds each source's text once (an `Arc<str>` shared by the watch's
//! state, every subscriber and every bundle built from it) with its SHA-256, and a volume
//! remembers only digests of what it last read, so 100 volumes naming one 1 MiB key cost 1 MiB,
//! not 100. A value over [`TrustLimits::max_source_bytes`] is not kept at all (the source reports
//! [`SourceError::TooLarge`]), nor one that would take all kept text past
//! [`TrustLimits::max_total_bytes`] ([`SourceError::OverBudget`]; each kept value holds a
//! reservation of its bytes until it is dropped), and the volumes of one namespace may have at
//! most [`TrustLimits::max_watches_per_namespace`] distinct objects watched (each costs a list and
//! a watch through the node's API budget).
//!
//! `cache` holds the public [`TrustCache`] and `shared` the watch table it and each
//! [`VolumeTrust`] (`volume`) share; `task` runs one object's watch, `value` and `limits` are
//! what a watch keeps and the bounds on it, `content` reads a source out of a watch's snapshot.

mod cache;
mod content;
mod error;
mod limits;
mod shared;
mod task;
mod value;
mod volume;

pub use cache::TrustCache;
pub use error::SourceError;
pub(crate) use limits::{DEFAULT_MAX_WATCHES_PER_NAMESPACE, TrustLimits};
pub(crate) use volume::VolumeTrust;

#[cfg(test)]
mod tests;
