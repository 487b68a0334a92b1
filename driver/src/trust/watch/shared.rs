//! The watch table the cache and its subscriptions share: which objects are watched, for whom,
//! and the reference counts that stop a watch when its last subscriber goes.

use std::collections::HashMap;
use std::sync::Arc;

use futures::future::BoxFuture;
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{Instrument, debug, info_span};

use super::limits::{Bounds, TrustLimits};
use super::task::{Snapshot, WatchArgs, watch_object};
use crate::kube::discovery::Apis;
use crate::trust::source::ObjectRef;

/// One watched object: who subscribes, where its watch publishes, and the watch's stop.
pub(super) struct Entry {
    /// Live subscriptions by the namespace of the volume's pod (a volume naming the object
    /// twice counts twice).
    pub(super) refs: HashMap<String, usize>,
    pub(super) tx: Arc<watch::Sender<Snapshot>>,
    /// Dropping it ends the watch.
    _stop: oneshot::Sender<()>,
}

/// What the cache's clones and every subscription share.
pub(super) struct Shared {
    pub(super) client: kube::Client,
    /// Which ClusterTrustBundle version to read.
    pub(super) apis: Apis,
    pub(super) trust_namespace: Option<String>,
    pub(super) limits: TrustLimits,
    pub(super) bounds: Arc<Bounds>,
    pub(super) watches: Mutex<Watches>,
    /// Hands a new watch task to the future [`super::TrustCache::new`] returned.
    pub(super) start: mpsc::UnboundedSender<BoxFuture<'static, ()>>,
}

/// The watch table, under [`Shared::watches`].
#[derive(Default)]
pub(super) struct Watches {
    pub(super) entries: HashMap<ObjectRef, Entry>,
    /// Distinct objects the volumes of each pod namespace subscribe to.
    pub(super) per_namespace: HashMap<String, usize>,
}

impl Shared {
    /// Subscribes to one object for a volume of a pod in `namespace`, starting its watch if
    /// nobody watches it yet. The caller holds the lock and has checked the namespace's budget.
    pub(super) fn subscribe_object(
        self: &Arc<Self>,
        watches: &mut Watches,
        object: &ObjectRef,
        namespace: &str,
    ) -> Subscription {
        let rx = match watches.entries.get_mut(object) {
            Some(e) => {
                let refs = e.refs.entry(namespace.to_owned()).or_insert(0);
                if *refs == 0 {
                    *watches
                        .per_namespace
                        .entry(namespace.to_owned())
                        .or_insert(0) += 1;
                }
                *refs += 1;
                e.tx.subscribe()
            }
            None => {
                *watches
                    .per_namespace
                    .entry(namespace.to_owned())
                    .or_insert(0) += 1;
                let tx = Arc::new(watch::Sender::new(Snapshot::default()));
                let (stop_tx, stop_rx) = oneshot::channel();
                let args = WatchArgs {
                    bounds: self.bounds.clone(),
                    tx: tx.clone(),
                    stop: stop_rx,
                };
                let task = watch_object(&self.client, &self.apis, object, args);
                let span = info_span!("trust-watch", object = %object);
                // The receiver lives in the drive future; if that is gone the node is shutting
                // down and the subscription simply never fills.
                let _ = self.start.send(Box::pin(task.instrument(span)));
                let rx = tx.subscribe();
                watches.entries.insert(
                    object.clone(),
                    Entry {
                        refs: HashMap::from([(namespace.to_owned(), 1)]),
                        tx,
                        _stop: stop_tx,
                    },
                );
                rx
            }
        };
        Subscription {
            object: object.clone(),
            namespace: namespace.to_owned(),
            rx,
            shared: self.clone(),
        }
    }
}

/// One subscriber's view of one watched object; dropping it releases the watch.
pub(super) struct Subscription {
    object: ObjectRef,
    /// The namespace of the subscribing volume's pod, whose watch budget this counts against.
    namespace: String,
    pub(super) rx: watch::Receiver<Snapshot>,
    shared: Arc<Shared>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut guard = self.shared.watches.lock();
        let watches = &mut *guard;
        let Some(e) = watches.entries.get_mut(&self.object) else {
            return;
        };
        let Some(refs) = e.refs.get_mut(&self.namespace) else {
            return;
        };
        *refs = refs.saturating_sub(1);
        if *refs > 0 {
            return;
        }
        e.refs.remove(&self.namespace);
        if let Some(n) = watches.per_namespace.get_mut(&self.namespace) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                watches.per_namespace.remove(&self.namespace);
            }
        }
        if e.refs.is_empty() {
            watches.entries.remove(&self.object);
            debug!(object = %self.object, "trust source no longer used; stopping its watch");
        }
    }
}
