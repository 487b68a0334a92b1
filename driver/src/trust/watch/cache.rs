//! The cache volumes subscribe through.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;
use tokio::sync::mpsc;

use super::error::SourceError;
use super::limits::{Bounds, TrustLimits};
use super::shared::{Shared, Watches};
use super::task::drive;
use super::volume::VolumeTrust;
use crate::kube::discovery::Apis;
use crate::trust::source::{self, ObjectRef, ResolvedSource, TrustSpec};

/// The cache. Cheap to clone; all clones share the watches.
#[derive(Clone)]
pub struct TrustCache {
    pub(super) shared: Arc<Shared>,
}

impl TrustCache {
    /// A cache reading through `client`; `trust_namespace` is the node's `--trust-namespace`;
    /// `apis` tells which ClusterTrustBundle version the cluster serves.
    /// The returned future runs every watch the cache starts and must be driven for subscribers
    /// to see anything; it ends when the cache and all subscriptions are dropped.
    pub fn new(
        client: kube::Client,
        trust_namespace: Option<String>,
        apis: Apis,
    ) -> (TrustCache, impl Future<Output = ()> + Send + 'static) {
        TrustCache::with_limits(client, trust_namespace, apis, TrustLimits::default())
    }

    /// [`TrustCache::new`] with the operator's `limits`.
    pub fn with_limits(
        client: kube::Client,
        trust_namespace: Option<String>,
        apis: Apis,
        limits: TrustLimits,
    ) -> (TrustCache, impl Future<Output = ()> + Send + 'static) {
        let (start, rx) = mpsc::unbounded_channel();
        let cache = TrustCache {
            shared: Arc::new(Shared {
                client,
                apis,
                trust_namespace,
                limits,
                bounds: Arc::new(Bounds {
                    max_source_bytes: limits.max_source_bytes,
                    max_total_bytes: limits.max_total_bytes,
                    held: AtomicUsize::new(0),
                }),
                watches: Mutex::new(Watches::default()),
                start,
            }),
        };
        (cache, drive(rx))
    }

    /// The objects watched right now (for diagnostics and tests).
    pub fn watched(&self) -> Vec<ObjectRef> {
        let mut v: Vec<ObjectRef> = self.shared.watches.lock().entries.keys().cloned().collect();
        v.sort();
        v
    }

    /// Bytes of source text the cache holds: each watched value once, however many volumes
    /// read it (what `--max-trust-bytes` bounds).
    pub fn held_bytes(&self) -> usize {
        self.shared.bounds.held.load(Ordering::Acquire)
    }

    /// Subscribes a volume to every object its trust spec names, after the namespace policy
    /// (the pod's namespace, or the node's trust namespace) and the namespace's watch budget:
    /// when the volumes of `pod_namespace` would have more than
    /// [`TrustLimits::max_watches_per_namespace`] distinct objects watched, nothing is
    /// subscribed and the error names the first object over the budget.
    pub fn subscribe(
        &self,
        spec: &TrustSpec,
        pod_namespace: &str,
    ) -> Result<VolumeTrust, SourceError> {
        self.subscribe_inner(spec, pod_namespace, true)
    }

    /// [`TrustCache::subscribe`] for a volume published before a restart: counted in its
    /// namespace's budget but never refused by it (it was admitted under the budget of its
    /// time; the operator may have lowered the flag since).
    pub fn resubscribe(
        &self,
        spec: &TrustSpec,
        pod_namespace: &str,
    ) -> Result<VolumeTrust, SourceError> {
        self.subscribe_inner(spec, pod_namespace, false)
    }

    fn subscribe_inner(
        &self,
        spec: &TrustSpec,
        pod_namespace: &str,
        bounded: bool,
    ) -> Result<VolumeTrust, SourceError> {
        let sources = source::resolve(spec, pod_namespace, self.shared.trust_namespace.as_deref())?;
        let mut guard = self.shared.watches.lock();
        let watches = &mut *guard;
        if bounded {
            let held = watches
                .per_namespace
                .get(pod_namespace)
                .copied()
                .unwrap_or(0);
            let mut new: Vec<&ResolvedSource> = Vec::new();
            for s in &sources {
                let counted = watches
                    .entries
                    .get(&s.object)
                    .is_some_and(|e| e.refs.contains_key(pod_namespace));
                if !counted && !new.iter().any(|n| n.object == s.object) {
                    new.push(s);
                }
            }
            let max = self.shared.limits.max_watches_per_namespace;
            // Objects the namespace watches already cost nothing, even past the budget (it can
            // be, through recovered volumes after the operator lowered the flag).
            if let Some(last) = new.len().checked_sub(1)
                && held + new.len() > max
            {
                let over = new[max.saturating_sub(held).min(last)];
                return Err(SourceError::TooManyWatches {
                    attribute: over.attribute.clone(),
                    object: over.object.to_string(),
                    namespace: pod_namespace.to_owned(),
                    count: held + new.len(),
                    max,
                });
            }
        }
        let subs = sources
            .into_iter()
            .map(|s| {
                let sub = self
                    .shared
                    .subscribe_object(watches, &s.object, pod_namespace);
                (s, sub)
            })
            .collect();
        drop(guard);
        Ok(VolumeTrust::new(spec, subs))
    }
}
