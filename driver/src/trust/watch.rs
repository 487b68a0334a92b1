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
//! the node runs it with its other background work (see `node.rs`).
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

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::DynamicObject;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, ResourceExt};
use serde::de::DeserializeOwned;
use sha2::{Digest as _, Sha256};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{Instrument, debug, info, info_span, warn};

use super::bundle::{self, Bundle, SourcePem};
use super::source::{self, ObjectRef, PolicyError, ResolvedSource, TrustSpec};
use crate::kube::discovery::{Apis, NoClusterTrustBundles};

/// Data of one object: key → value (ConfigMap `data` and `binaryData`, Secret `data`,
/// ClusterTrustBundle `spec.trustBundle` under the key `trustBundle`).
type ObjectData = BTreeMap<String, Value>;

const CTB_KEY: &str = "trustBundle";

/// SHA-256 of a value's bytes.
type Digest = [u8; 32];

/// What extraction checks a value against: the per-source cap and the node's byte budget for
/// all source text, with the bytes held now.
#[derive(Debug)]
struct Bounds {
    max_source_bytes: usize,
    max_total_bytes: usize,
    held: AtomicUsize,
}

impl Bounds {
    /// Reserves `bytes` of the budget, or `None` when they do not fit.
    fn reserve(self: &Arc<Self>, bytes: usize) -> Option<Reservation> {
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
struct Reservation {
    bytes: usize,
    bounds: Arc<Bounds>,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.bounds.held.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

/// One key's value as the cache keeps it. Clones share the text and its one reservation.
#[derive(Clone, Debug)]
enum Value {
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
    fn new(bytes: &[u8], bounds: &Arc<Bounds>, previous: Option<&Value>) -> Value {
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
pub const DEFAULT_MAX_SOURCE_BYTES: usize = 1 << 20;
/// Four times the sources one volume may name by default: room for several workloads with
/// different CAs in one namespace, while a namespace that lists thousands of names costs the
/// node's API budget 64 lists and watches, not thousands.
pub const DEFAULT_MAX_WATCHES_PER_NAMESPACE: usize = 64;
/// A quarter of the chart's 128 MiB memory limit: thousands of typical CA sources (a few KiB
/// each), while one namespace at its watch budget with 1 MiB sources (64 MiB of text, about
/// 104 MiB resident) cannot take the driver past its limit.
pub const DEFAULT_MAX_TOTAL_BYTES: usize = 32 << 20;

impl Default for TrustLimits {
    fn default() -> Self {
        TrustLimits {
            max_source_bytes: DEFAULT_MAX_SOURCE_BYTES,
            max_watches_per_namespace: DEFAULT_MAX_WATCHES_PER_NAMESPACE,
            max_total_bytes: DEFAULT_MAX_TOTAL_BYTES,
        }
    }
}

/// What one watch currently knows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Snapshot {
    /// `None` until the first list completed; then object name → data (shared with the watch's
    /// own state, so publishing a snapshot copies no text).
    objects: Option<BTreeMap<String, Arc<ObjectData>>>,
    /// The last watch error (e.g. 403 from RBAC), cleared when the watch recovers.
    error: Option<String>,
    /// The cluster serves no ClusterTrustBundle API, so this (ClusterTrustBundle) source is never
    /// listed.
    no_api: bool,
}

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

struct Entry {
    /// Live subscriptions by the namespace of the volume's pod (a volume naming the object
    /// twice counts twice).
    refs: HashMap<String, usize>,
    tx: Arc<watch::Sender<Snapshot>>,
    /// Dropping it ends the watch.
    _stop: oneshot::Sender<()>,
}

struct Shared {
    client: kube::Client,
    /// Which ClusterTrustBundle version to read.
    apis: Apis,
    trust_namespace: Option<String>,
    limits: TrustLimits,
    bounds: Arc<Bounds>,
    watches: Mutex<Watches>,
    start: mpsc::UnboundedSender<BoxFuture<'static, ()>>,
}

#[derive(Default)]
struct Watches {
    entries: HashMap<ObjectRef, Entry>,
    /// Distinct objects the volumes of each pod namespace subscribe to.
    per_namespace: HashMap<String, usize>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Watches> {
        // Mutations are counter changes and inserts/removes that cannot panic midway, so a
        // poisoned map is intact.
        self.watches.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The cache. Cheap to clone; all clones share the watches.
#[derive(Clone)]
pub struct TrustCache {
    shared: Arc<Shared>,
}

/// One subscriber's view of one watched object; dropping it releases the watch.
struct Subscription {
    object: ObjectRef,
    /// The namespace of the subscribing volume's pod, whose watch budget this counts against.
    namespace: String,
    rx: watch::Receiver<Snapshot>,
    shared: Arc<Shared>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut guard = self.shared.lock();
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
        let mut v: Vec<ObjectRef> = self.shared.lock().entries.keys().cloned().collect();
        v.sort();
        v
    }

    /// Bytes of source text the cache holds: each watched value once, however many volumes
    /// read it (what `--max-trust-bytes` bounds).
    pub fn held_bytes(&self) -> usize {
        self.shared.bounds.held.load(Ordering::Acquire)
    }

    /// Subscribes to one object for a volume of a pod in `namespace`, starting its watch if
    /// nobody watches it yet. The caller holds the lock and has checked the namespace's budget.
    fn subscribe_object(
        &self,
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
                let task = watch_object(
                    &self.shared.client,
                    &self.shared.apis,
                    &self.shared.bounds,
                    object,
                    tx.clone(),
                    stop_rx,
                );
                let span = info_span!("trust-watch", object = %object);
                // The receiver lives in the drive future; if that is gone the node is shutting
                // down and the subscription simply never fills.
                let _ = self.shared.start.send(Box::pin(task.instrument(span)));
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
            shared: self.shared.clone(),
        }
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
        let mut guard = self.shared.lock();
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
                let sub = self.subscribe_object(watches, &s.object, pod_namespace);
                (s, sub)
            })
            .collect();
        drop(guard);
        let mut trust = VolumeTrust {
            issuer_ca: spec.issuer_ca,
            public_roots: spec.public_roots,
            subs,
            seen: Vec::new(),
        };
        trust.seen = trust.fingerprint();
        Ok(trust)
    }
}

/// Runs the watch futures the cache starts.
async fn drive(mut start: mpsc::UnboundedReceiver<BoxFuture<'static, ()>>) {
    let mut running = FuturesUnordered::new();
    loop {
        tokio::select! {
            next = start.recv() => match next {
                Some(task) => running.push(task),
                None => {
                    while running.next().await.is_some() {}
                    return;
                }
            },
            Some(()) = running.next(), if !running.is_empty() => {}
        }
    }
}

fn watch_object(
    client: &kube::Client,
    apis: &Apis,
    bounds: &Arc<Bounds>,
    object: &ObjectRef,
    tx: Arc<watch::Sender<Snapshot>>,
    stop: oneshot::Receiver<()>,
) -> BoxFuture<'static, ()> {
    let by_name = |name: &str| watcher::Config::default().fields(&format!("metadata.name={name}"));
    match object {
        ObjectRef::ConfigMap { namespace, name } => Box::pin(run_watch(
            Api::<ConfigMap>::namespaced(client.clone(), namespace),
            by_name(name),
            configmap_data,
            bounds.clone(),
            tx,
            stop,
        )),
        ObjectRef::Secret { namespace, name } => Box::pin(run_watch(
            Api::<Secret>::namespaced(client.clone(), namespace),
            by_name(name),
            secret_data,
            bounds.clone(),
            tx,
            stop,
        )),
        ObjectRef::ClusterTrustBundle { name } => Box::pin(watch_ctb(
            client.clone(),
            apis.clone(),
            by_name(name),
            bounds.clone(),
            tx,
            stop,
        )),
        ObjectRef::Signer {
            signer_name,
            labels,
        } => {
            let mut config =
                watcher::Config::default().fields(&format!("spec.signerName={signer_name}"));
            if !labels.is_empty() {
                config = config.labels(labels);
            }
            Box::pin(watch_ctb(
                client.clone(),
                apis.clone(),
                config,
                bounds.clone(),
                tx,
                stop,
            ))
        }
    }
}

fn configmap_data(cm: &ConfigMap, bounds: &Arc<Bounds>, prev: Option<&ObjectData>) -> ObjectData {
    let before = |k: &String| prev.and_then(|p| p.get(k));
    let mut out = ObjectData::new();
    for (k, v) in cm.binary_data.iter().flatten() {
        out.insert(k.clone(), Value::new(&v.0, bounds, before(k)));
    }
    for (k, v) in cm.data.iter().flatten() {
        out.insert(k.clone(), Value::new(v.as_bytes(), bounds, before(k)));
    }
    out
}

fn secret_data(s: &Secret, bounds: &Arc<Bounds>, prev: Option<&ObjectData>) -> ObjectData {
    s.data
        .iter()
        .flatten()
        .map(|(k, v)| {
            let before = prev.and_then(|p| p.get(k));
            (k.clone(), Value::new(&v.0, bounds, before))
        })
        .collect()
}

/// `spec.trustBundle`, the same field in every ClusterTrustBundle version. A bundle without it
/// (the API requires it) reads as one without the key, which `content` reports.
fn ctb_data(b: &DynamicObject, bounds: &Arc<Bounds>, prev: Option<&ObjectData>) -> ObjectData {
    let before = prev.and_then(|p| p.get(CTB_KEY));
    b.data
        .get("spec")
        .and_then(|spec| spec.get(CTB_KEY))
        .and_then(serde_json::Value::as_str)
        .map(|pem| {
            ObjectData::from([(
                CTB_KEY.to_owned(),
                Value::new(pem.as_bytes(), bounds, before),
            )])
        })
        .unwrap_or_default()
}

/// Watches ClusterTrustBundles with `config` in the version discovery found, once it has
/// answered; with no version served, marks the source as such and idles until stopped.
async fn watch_ctb(
    client: kube::Client,
    apis: Apis,
    config: watcher::Config,
    bounds: Arc<Bounds>,
    tx: Arc<watch::Sender<Snapshot>>,
    mut stop: oneshot::Receiver<()>,
) {
    tx.send_if_modified(|s| {
        let waiting = Some(
            "waiting for API discovery to tell which ClusterTrustBundle version the cluster serves"
                .to_owned(),
        );
        let changed = s.objects.is_none() && s.error != waiting;
        if changed {
            s.error = waiting;
        }
        changed
    });
    let version = tokio::select! {
        _ = &mut stop => return,
        version = apis.cluster_trust_bundles() => version,
    };
    match version {
        Some(version) => {
            let api = Api::<DynamicObject>::all_with(client, &version.api_resource());
            run_watch(api, config, ctb_data, bounds, tx, stop).await;
        }
        None => {
            tx.send_replace(Snapshot {
                objects: None,
                error: None,
                no_api: true,
            });
            let _ = stop.await;
        }
    }
}

/// Lists and watches with `config` until `stop` fires (or its sender is dropped), publishing the
/// matching objects' data whenever it changes. Relists after 410 Gone; backs off on errors.
async fn run_watch<K>(
    api: Api<K>,
    config: watcher::Config,
    extract: fn(&K, &Arc<Bounds>, Option<&ObjectData>) -> ObjectData,
    bounds: Arc<Bounds>,
    tx: Arc<watch::Sender<Snapshot>>,
    mut stop: oneshot::Receiver<()>,
) where
    K: kube::Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    info!("watching trust source");
    let mut stream = watcher::watcher(api, config).default_backoff().boxed();
    let mut live: BTreeMap<String, Arc<ObjectData>> = BTreeMap::new();
    let mut relist: Option<BTreeMap<String, Arc<ObjectData>>> = None;
    let mut synced = false;
    // Cloning `live` clones names and `Arc`s, never text; the comparison is by digest.
    let publish = |live: &BTreeMap<String, Arc<ObjectData>>| {
        tx.send_if_modified(|s| {
            let next = Snapshot {
                objects: Some(live.clone()),
                error: None,
                no_api: false,
            };
            let changed = *s != next;
            *s = next;
            changed
        });
    };
    loop {
        let item = tokio::select! {
            _ = &mut stop => return,
            item = stream.next() => item,
        };
        let Some(item) = item else {
            warn!("trust source watch ended");
            return;
        };
        match item {
            Ok(Event::Init) => relist = Some(BTreeMap::new()),
            Ok(Event::InitApply(obj)) => {
                if let Some(r) = relist.as_mut() {
                    let name = obj.name_any();
                    let data = extract(&obj, &bounds, live.get(&name).map(|d| &**d));
                    r.insert(name, Arc::new(data));
                }
            }
            Ok(Event::InitDone) => {
                // The relist is the whole truth: what it lacks was deleted meanwhile.
                if let Some(r) = relist.take() {
                    live = r;
                }
                synced = true;
                publish(&live);
            }
            Ok(Event::Apply(obj)) => {
                let name = obj.name_any();
                let data = extract(&obj, &bounds, live.get(&name).map(|d| &**d));
                live.insert(name, Arc::new(data));
                if synced {
                    publish(&live);
                }
            }
            Ok(Event::Delete(obj)) => {
                live.remove(&obj.name_any());
                if synced {
                    publish(&live);
                }
            }
            Err(error) => {
                warn!(%error, "trust source watch failed; retrying with backoff");
                let message = error.to_string();
                tx.send_if_modified(|s| {
                    let changed = s.error.as_deref() != Some(message.as_str());
                    s.error = Some(message);
                    changed
                });
            }
        }
    }
}

/// One PEM text of a source: how reports name it, the shared text and its digest.
#[derive(Debug, PartialEq, Eq)]
struct Piece {
    label: String,
    text: Arc<str>,
    digest: Digest,
}

/// A source's content now: `Ok(None)` while its watch has not listed yet. Clones `Arc`s only.
fn content(source: &ResolvedSource, snap: &Snapshot) -> Result<Option<Vec<Piece>>, SourceError> {
    if snap.no_api {
        let what = match &source.object {
            ObjectRef::ClusterTrustBundle { name } => name.clone(),
            ObjectRef::Signer { signer_name, .. } => signer_name.clone(),
            other => other.to_string(),
        };
        return Err(SourceError::NoApi(NoClusterTrustBundles::trust(
            &source.attribute,
            &what,
        )));
    }
    let Some(objects) = &snap.objects else {
        return Ok(None);
    };
    let attribute = || source.attribute.clone();
    let object = || source.object.to_string();
    let one = |name: &str| -> Result<&ObjectData, SourceError> {
        objects
            .get(name)
            .map(|data| &**data)
            .ok_or_else(|| SourceError::NotFound {
                attribute: attribute(),
                object: object(),
            })
    };
    let text = |data: &ObjectData, key: &str, object: String| -> Result<Piece, SourceError> {
        let value = data.get(key).ok_or_else(|| SourceError::MissingKey {
            attribute: attribute(),
            object: object.clone(),
            key: key.to_owned(),
            // A Secret's key names are not for whoever reads the pod's events (who may not
            // be allowed to read the Secret); a ConfigMap's help fix a typo.
            available: if matches!(source.object, ObjectRef::Secret { .. }) {
                "not listed for a Secret".into()
            } else if data.is_empty() {
                "none".into()
            } else {
                data.keys()
                    .map(String::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        })?;
        match value {
            Value::Text { text, digest, .. } => Ok(Piece {
                label: String::new(),
                text: text.clone(),
                digest: *digest,
            }),
            Value::NotText => Err(SourceError::NotText {
                attribute: attribute(),
                object,
                key: key.to_owned(),
            }),
            Value::TooLarge { bytes, max } => Err(SourceError::TooLarge {
                attribute: attribute(),
                object,
                key: key.to_owned(),
                bytes: *bytes,
                max: *max,
            }),
            Value::OverBudget { bytes, max } => Err(SourceError::OverBudget {
                attribute: attribute(),
                object,
                key: key.to_owned(),
                bytes: *bytes,
                max: *max,
            }),
        }
    };
    let labelled = |label: String, piece: Piece| Piece { label, ..piece };
    let pems = match &source.object {
        ObjectRef::ConfigMap { name, .. } | ObjectRef::Secret { name, .. } => {
            let key = source.key.as_deref().unwrap_or_default();
            vec![labelled(source.label(), text(one(name)?, key, object())?)]
        }
        ObjectRef::ClusterTrustBundle { name } => {
            vec![labelled(
                source.label(),
                text(one(name)?, CTB_KEY, object())?,
            )]
        }
        ObjectRef::Signer { .. } => {
            if objects.is_empty() {
                return Err(SourceError::NoneSelected {
                    attribute: attribute(),
                    object: object(),
                });
            }
            // One source per bundle, by object name, so reports point at the right object.
            objects
                .iter()
                .map(|(name, data)| {
                    let label = format!("ClusterTrustBundle {name}");
                    Ok(labelled(label.clone(), text(data, CTB_KEY, label)?))
                })
                .collect::<Result<Vec<_>, SourceError>>()?
        }
    };
    Ok(Some(pems))
}

/// One volume's subscriptions. Dropping it releases the watches.
pub struct VolumeTrust {
    issuer_ca: bool,
    public_roots: bool,
    subs: Vec<(ResolvedSource, Subscription)>,
    /// Each source when last observed, for [`VolumeTrust::changed`]: labels and digests (or the
    /// error), never the text, so a volume holds no copy of what it reads.
    seen: Vec<Seen>,
}

/// What [`VolumeTrust::changed`] compares: per source, its pieces' labels and digests.
type Seen = Result<Option<Vec<(String, Digest)>>, SourceError>;

impl VolumeTrust {
    fn fingerprint(&self) -> Vec<Seen> {
        self.subs
            .iter()
            .map(|(s, sub)| {
                content(s, &sub.rx.borrow()).map(|pieces| {
                    pieces.map(|p| p.into_iter().map(|p| (p.label, p.digest)).collect())
                })
            })
            .collect()
    }

    /// The Kubernetes objects this volume reads.
    pub fn objects(&self) -> Vec<ObjectRef> {
        self.subs.iter().map(|(s, _)| s.object.clone()).collect()
    }

    /// Waits until every source has been listed once, up to `timeout`; then the first missing
    /// object, key or selection is the error. On timeout the error names the first source not
    /// yet read and the watch's last error (e.g. RBAC forbids it).
    pub async fn ready(&mut self, timeout: Duration) -> Result<(), SourceError> {
        let deadline = tokio::time::Instant::now() + timeout;
        for (source, sub) in &mut self.subs {
            loop {
                let (listed, error) = {
                    let snap = sub.rx.borrow_and_update();
                    // No API: nothing to wait for; `content` reports it below.
                    (snap.objects.is_some() || snap.no_api, snap.error.clone())
                };
                if listed {
                    break;
                }
                match tokio::time::timeout_at(deadline, sub.rx.changed()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) | Err(_) => {
                        return Err(SourceError::Unavailable {
                            attribute: source.attribute.clone(),
                            object: source.object.to_string(),
                            waited: timeout,
                            reason: error.unwrap_or_else(|| {
                                "the API server has not answered the list yet".into()
                            }),
                        });
                    }
                }
            }
        }
        self.seen = self.fingerprint();
        for c in &self.seen {
            if let Err(e) = c {
                return Err(e.clone());
            }
        }
        Ok(())
    }

    /// The bundle's sources in order: the issuing CA (`issuing_ca_pem`, e.g. from
    /// [`super::rotation::in_bundle`]) when the spec includes it, each object's content, the
    /// public roots when asked for. Errors when a source is missing or not listed yet.
    pub fn sources(&self, issuing_ca_pem: &str) -> Result<Vec<SourcePem>, SourceError> {
        let mut out = Vec::new();
        if self.issuer_ca {
            out.push(SourcePem::new("issuing CA", issuing_ca_pem));
        }
        for (source, sub) in &self.subs {
            match content(source, &sub.rx.borrow())? {
                Some(pieces) => out.extend(pieces.into_iter().map(|p| SourcePem {
                    label: p.label,
                    pem: p.text,
                })),
                None => {
                    return Err(SourceError::Unavailable {
                        attribute: source.attribute.clone(),
                        object: source.object.to_string(),
                        waited: Duration::ZERO,
                        reason: "not listed yet (call ready first)".into(),
                    });
                }
            }
        }
        if self.public_roots {
            out.push(bundle::public_roots());
        }
        Ok(out)
    }

    /// The assembled bundle (see [`bundle::assemble`]); write `bundle.pem()`, report
    /// `bundle.rejected`.
    pub fn bundle(&self, issuing_ca_pem: &str) -> Result<Bundle, SourceError> {
        Ok(bundle::assemble(&self.sources(issuing_ca_pem)?))
    }

    /// Resolves when the content of any source differs from when this volume last looked (at
    /// subscription, [`VolumeTrust::ready`] or the previous `changed`): a changed key, a deleted
    /// or recreated object, another set of signer bundles. Returns `false` when the cache has
    /// stopped (shutdown). Never resolves for a spec without Kubernetes sources.
    pub async fn changed(&mut self) -> bool {
        if self.subs.is_empty() {
            std::future::pending::<()>().await;
        }
        loop {
            let now = self.fingerprint();
            if now != self.seen {
                self.seen = now;
                return true;
            }
            let waits = self
                .subs
                .iter_mut()
                .map(|(_, sub)| Box::pin(sub.rx.changed()));
            let (result, _, _) = futures::future::select_all(waits).await;
            if result.is_err() {
                return false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(object: ObjectRef, key: Option<&str>) -> ResolvedSource {
        ResolvedSource {
            object,
            key: key.map(str::to_owned),
            attribute: "csi.certvol.io/trust-configmaps".into(),
        }
    }

    type Entries<'a> = &'a [(&'a str, &'a [u8])];

    fn bounds(max_source_bytes: usize, max_total_bytes: usize) -> Arc<Bounds> {
        Arc::new(Bounds {
            max_source_bytes,
            max_total_bytes,
            held: AtomicUsize::new(0),
        })
    }

    /// The node's byte budget: a value that does not fit is not kept, and what a value held is
    /// released when it is dropped.
    #[test]
    fn values_reserve_and_release_the_byte_budget() {
        let b = bounds(100, 150);
        let first = Value::new(&[b'a'; 100], &b, None);
        assert!(matches!(first, Value::Text { .. }), "{first:?}");
        assert!(matches!(
            Value::new(&[b'a'; 101], &b, None),
            Value::TooLarge {
                bytes: 101,
                max: 100
            }
        ));
        let second = Value::new(&[b'b'; 60], &b, None);
        assert!(
            matches!(
                second,
                Value::OverBudget {
                    bytes: 60,
                    max: 150
                }
            ),
            "{second:?}"
        );
        assert!(matches!(Value::new(&[0xff; 60], &b, None), Value::NotText));
        assert_eq!(b.held.load(Ordering::Acquire), 100);
        // The same text again (a relist, an update of another key) reuses the reservation,
        // although a second 100 bytes would not fit.
        let again = Value::new(&[b'a'; 100], &b, Some(&first));
        assert!(matches!(again, Value::Text { .. }), "{again:?}");
        assert_eq!(b.held.load(Ordering::Acquire), 100);
        drop(again);
        drop(first);
        assert_eq!(b.held.load(Ordering::Acquire), 0);
        let third = Value::new(&[b'c'; 60], &b, None);
        assert!(matches!(third, Value::Text { .. }), "{third:?}");
        assert_eq!(b.held.load(Ordering::Acquire), 60);
    }

    fn snap(objects: &[(&str, Entries)]) -> Snapshot {
        Snapshot {
            objects: Some(
                objects
                    .iter()
                    .map(|(n, d)| {
                        (
                            (*n).to_owned(),
                            Arc::new(
                                d.iter()
                                    .map(|(k, v)| {
                                        ((*k).to_owned(), Value::new(v, &bounds(64, 1 << 20), None))
                                    })
                                    .collect(),
                            ),
                        )
                    })
                    .collect(),
            ),
            error: None,
            no_api: false,
        }
    }

    #[test]
    fn cache_and_subscriptions_can_move_between_tasks() {
        fn send_sync<T: Send + Sync>() {}
        fn send<T: Send>() {}
        send_sync::<TrustCache>();
        send::<VolumeTrust>();
    }

    #[test]
    fn content_table() {
        let cm = ObjectRef::ConfigMap {
            namespace: "shop".into(),
            name: "ca".into(),
        };
        let secret = ObjectRef::Secret {
            namespace: "shop".into(),
            name: "ca".into(),
        };
        let signer = ObjectRef::Signer {
            signer_name: "example.com/s".into(),
            labels: String::new(),
        };
        let pending = Snapshot::default();
        assert_eq!(
            content(&source(cm.clone(), Some("ca.crt")), &pending),
            Ok(None)
        );
        type Row<'a> = (ResolvedSource, Snapshot, Result<Vec<&'a str>, &'a str>);
        let rows: Vec<Row> = vec![
            (
                source(cm.clone(), Some("ca.crt")),
                snap(&[("ca", &[("ca.crt", b"PEM")])]),
                Ok(vec!["ConfigMap shop/ca key ca.crt"]),
            ),
            (
                source(cm.clone(), Some("ca.crt")),
                snap(&[]),
                Err("ConfigMap shop/ca does not exist"),
            ),
            (
                source(cm.clone(), Some("ca.crt")),
                snap(&[("ca", &[("other", b"x"), ("z", b"y")])]),
                Err("ConfigMap shop/ca has no key \"ca.crt\"; its keys: other, z"),
            ),
            (
                source(cm.clone(), Some("ca.crt")),
                snap(&[("ca", &[("ca.crt", &[0xff, 0xfe])])]),
                Err("is not UTF-8 text"),
            ),
            (
                // A Secret's other keys are not named (whoever sees the pod's events may not
                // read the Secret).
                source(secret.clone(), Some("ca.crt")),
                snap(&[("ca", &[("tls.key", b"x")])]),
                Err("Secret shop/ca has no key \"ca.crt\"; its keys: not listed for a Secret"),
            ),
            (
                // Over the cap (64 bytes here): named with its size and the cap, and for a
                // Secret without its other keys or any content.
                source(secret.clone(), Some("ca.crt")),
                snap(&[("ca", &[("ca.crt", &[b'A'; 65]), ("tls.key", b"KEY")])]),
                Err(
                    "Secret shop/ca key \"ca.crt\" is 65 bytes; a trust source may hold at most 64 bytes (the node's --max-trust-source-bytes)",
                ),
            ),
            (
                source(signer.clone(), None),
                snap(&[("a", &[(CTB_KEY, &[b'B'; 100])])]),
                Err(
                    "ClusterTrustBundle a key \"trustBundle\" is 100 bytes; a trust source may hold at most 64",
                ),
            ),
            (
                source(signer.clone(), None),
                snap(&[]),
                Err("there are no ClusterTrustBundles with signerName example.com/s"),
            ),
            (
                source(signer.clone(), None),
                snap(&[("b", &[(CTB_KEY, b"2")]), ("a", &[(CTB_KEY, b"1")])]),
                Ok(vec!["ClusterTrustBundle a", "ClusterTrustBundle b"]),
            ),
        ];
        for (src, snap, want) in rows {
            match (content(&src, &snap), want) {
                (Ok(Some(pems)), Ok(labels)) => {
                    let got: Vec<&str> = pems.iter().map(|p| p.label.as_str()).collect();
                    assert_eq!(got, labels);
                }
                (Err(e), Err(fragment)) => {
                    let msg = e.to_string();
                    assert!(msg.contains(fragment), "{msg}");
                    assert!(
                        !msg.contains("tls.key") && !msg.contains("AAA") && !msg.contains("BBB"),
                        "{msg}"
                    );
                    assert!(
                        msg.starts_with("volume attribute \"csi.certvol.io/trust-configmaps\""),
                        "{msg}"
                    );
                    assert_eq!(e.attribute(), "csi.certvol.io/trust-configmaps");
                }
                (got, want) => panic!("got {got:?}, want {want:?}"),
            }
        }
    }

    /// An API server of a given Kubernetes version as far as ClusterTrustBundles go: discovery
    /// answers for `certificates.k8s.io/v1` (CSRs, plus ClusterTrustBundles if `ctb` is v1) and
    /// for `ctb`; bundles are listed only in `ctb`; watches stay open without events. Everything
    /// else is 404, as kube-apiserver answers for versions it does not serve.
    fn apiserver(ctb: Option<&'static str>, seen: Arc<Mutex<Vec<String>>>) -> kube::Client {
        use crate::kube::fakeapi;
        use serde_json::json;
        fakeapi::client(move |req| {
            let seen = seen.clone();
            async move {
                seen.lock()
                    .unwrap()
                    .push(format!("{}?{}", req.path, req.query));
                let path = req.path;
                let gv = |v: &str| format!("/apis/certificates.k8s.io/{v}");
                let mut resources = Vec::new();
                if path == gv("v1") {
                    resources.push("certificatesigningrequests");
                }
                if ctb.is_some_and(|v| path == gv(v)) {
                    resources.push("clustertrustbundles");
                }
                let listing = ctb.is_some_and(|v| path == format!("{}/clustertrustbundles", gv(v)));
                if listing && req.query.contains("watch=true") {
                    // An open watch with nothing to report.
                    std::future::pending::<()>().await;
                }
                if !resources.is_empty() {
                    (
                        200,
                        fakeapi::resource_list(path.trim_start_matches("/apis/"), &resources),
                    )
                } else if listing {
                    let api_version = format!("certificates.k8s.io/{}", ctb.unwrap_or_default());
                    (
                        200,
                        json!({"apiVersion": api_version, "kind": "ClusterTrustBundleList",
                               "metadata": {"resourceVersion": "7"},
                               "items": [{"apiVersion": api_version, "kind": "ClusterTrustBundle",
                                          "metadata": {"name": "example.com:s:a", "resourceVersion": "7"},
                                          "spec": {"signerName": "example.com/s", "trustBundle": "PEM-A"}}]}),
                    )
                } else {
                    (404, fakeapi::not_found())
                }
            }
        })
    }

    fn trust_spec(key: &str, value: &str) -> TrustSpec {
        let ctx = [
            ("csi.certvol.io/issuer-name", "ca"),
            ("csi.certvol.io/dns-names", "a.example"),
            (key, value),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        crate::spec::attrs::parse(&ctx).unwrap().trust.unwrap()
    }

    /// The trust watch reads ClusterTrustBundles in the version the server serves: v1 on 1.37
    /// (where the old hard-coded v1beta1 404s), v1beta1 on 1.36 with the beta enabled, and on
    /// 1.30 (none) the source fails with NoApi naming the attribute instead of waiting out a 404.
    #[tokio::test]
    async fn cluster_trust_bundles_are_watched_in_the_served_version() {
        for version in ["v1", "v1beta1"] {
            let seen = Arc::new(Mutex::new(Vec::new()));
            let client = apiserver(Some(version), seen.clone());
            let (apis, discovering) =
                Apis::discover(client.clone(), crate::kube::discovery::CSR_API);
            let discovering = tokio::spawn(discovering);
            let (cache, drive) = TrustCache::new(client, None, apis);
            let drive = tokio::spawn(drive);
            for (key, value) in [
                ("csi.certvol.io/trust-cluster-bundles", "example.com:s:a"),
                ("csi.certvol.io/trust-signer-name", "example.com/s"),
            ] {
                let mut trust = cache.subscribe(&trust_spec(key, value), "shop").unwrap();
                trust
                    .ready(Duration::from_secs(5))
                    .await
                    .unwrap_or_else(|e| panic!("{version} {key}: {e}"));
                let labels: Vec<String> = trust
                    .sources("")
                    .unwrap()
                    .into_iter()
                    .map(|s| s.label)
                    .filter(|l| l.starts_with("ClusterTrustBundle"))
                    .collect();
                assert_eq!(
                    labels,
                    ["ClusterTrustBundle example.com:s:a"],
                    "{version} {key}"
                );
            }
            let lists: Vec<String> = seen
                .lock()
                .unwrap()
                .iter()
                .filter(|p| p.contains("/clustertrustbundles?"))
                .cloned()
                .collect();
            assert!(!lists.is_empty());
            let prefix = format!("/apis/certificates.k8s.io/{version}/clustertrustbundles?");
            assert!(lists.iter().all(|p| p.starts_with(&prefix)), "{lists:?}");
            drop(cache);
            drive.abort();
            discovering.await.unwrap();
        }

        let seen = Arc::new(Mutex::new(Vec::new()));
        let client = apiserver(None, seen.clone());
        let (apis, discovering) = Apis::discover(client.clone(), crate::kube::discovery::CSR_API);
        tokio::spawn(discovering);
        let (cache, drive) = TrustCache::new(client, None, apis);
        tokio::spawn(drive);
        let key = "csi.certvol.io/trust-cluster-bundles";
        let mut trust = cache
            .subscribe(&trust_spec(key, "example.com:s:a"), "shop")
            .unwrap();
        match trust.ready(Duration::from_secs(5)).await {
            Err(e @ SourceError::NoApi(_)) => {
                assert_eq!(e.attribute(), key);
                let msg = e.to_string();
                assert!(
                    msg.starts_with("volume attribute \"csi.certvol.io/trust-cluster-bundles\" (\"example.com:s:a\") needs the ClusterTrustBundle API"),
                    "{msg}"
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(
            !seen
                .lock()
                .unwrap()
                .iter()
                .any(|p| p.contains("/clustertrustbundles")),
            "no bundle read without the API: {:?}",
            seen.lock().unwrap()
        );
    }

    /// An API server holding ConfigMaps (namespace, name) → data: lists by name answer with the
    /// object (or none), watches stay open without events. Counts the lists.
    type ConfigMaps = Vec<((&'static str, &'static str), Vec<(&'static str, String)>)>;

    fn configmap_server(objects: ConfigMaps, lists: Arc<Mutex<usize>>) -> kube::Client {
        use crate::kube::fakeapi;
        use serde_json::json;
        let objects = Arc::new(objects);
        fakeapi::client(move |req| {
            let objects = objects.clone();
            let lists = lists.clone();
            async move {
                if req.query.contains("watch=true") {
                    std::future::pending::<()>().await;
                }
                let wanted = req
                    .query
                    .split('&')
                    .find_map(|p| p.strip_prefix("fieldSelector=metadata.name%3D"))
                    .unwrap_or_default()
                    .to_owned();
                *lists.lock().unwrap() += 1;
                let items: Vec<_> = objects
                    .iter()
                    .filter(|((ns, name), _)| {
                        req.path == format!("/api/v1/namespaces/{ns}/configmaps") && *name == wanted
                    })
                    .map(|((ns, name), data)| {
                        let data: BTreeMap<&str, &str> =
                            data.iter().map(|(k, v)| (*k, v.as_str())).collect();
                        json!({"metadata": {"name": name, "namespace": ns,
                                            "resourceVersion": "5"},
                               "data": data})
                    })
                    .collect();
                (
                    200,
                    json!({"apiVersion": "v1", "kind": "ConfigMapList",
                           "metadata": {"resourceVersion": "5"}, "items": items}),
                )
            }
        })
    }

    fn configmaps_spec(entries: &str) -> TrustSpec {
        trust_spec("csi.certvol.io/trust-configmaps", entries)
    }

    /// 100 volumes naming one 1 MiB ConfigMap key hold one copy of it: the cache's value is the
    /// only owner of the text once every volume has read it (subscribe and ready fingerprint
    /// it, bundle sources are built from it), every volume's bundle source is that same
    /// allocation, and the cache accounts 1 MiB. Before, each volume kept its own copy of the
    /// text for change detection (and every read copied it again).
    #[tokio::test]
    async fn a_hundred_volumes_on_one_source_share_one_copy() {
        let pem = "x".repeat(1 << 20);
        let lists = Arc::new(Mutex::new(0));
        let client = configmap_server(
            vec![(("shop", "big"), vec![("ca.crt", pem.clone())])],
            lists.clone(),
        );
        let (apis, _) = Apis::discover(client.clone(), crate::kube::discovery::CSR_API);
        let (cache, drive) = TrustCache::new(client, None, apis);
        let drive = tokio::spawn(drive);
        let spec = configmaps_spec("big/ca.crt");
        let mut volumes = Vec::new();
        for _ in 0..100 {
            let mut v = cache.subscribe(&spec, "shop").unwrap();
            v.ready(Duration::from_secs(5)).await.unwrap();
            volumes.push(v);
        }
        let sources: Vec<SourcePem> = volumes
            .iter()
            .map(|v| {
                let mut s = v.sources("").unwrap();
                s.retain(|s| s.label == "ConfigMap shop/big key ca.crt");
                s.remove(0)
            })
            .collect();
        assert!(sources.iter().all(|s| Arc::ptr_eq(&s.pem, &sources[0].pem)));
        assert_eq!(&*sources[0].pem, pem.as_str());
        drop(sources);
        let text = {
            let watches = cache.shared.lock();
            let entry = watches.entries.values().next().unwrap();
            let snap = entry.tx.borrow();
            match snap.objects.as_ref().unwrap()["big"].get("ca.crt") {
                Some(Value::Text { text, .. }) => text.clone(),
                other => panic!("{other:?}"),
            }
        };
        // The clone just taken, and the cache's own: no volume holds one.
        assert_eq!(Arc::strong_count(&text), 2);
        assert_eq!(cache.held_bytes(), 1 << 20);
        assert_eq!(*lists.lock().unwrap(), 1, "one list for all volumes");
        drop(volumes);
        assert!(cache.watched().is_empty());
        drop(cache);
        drive.abort();
    }

    /// The volumes of one namespace may have at most `max_watches_per_namespace` distinct
    /// objects watched: past it the publish is refused naming the first object over, the
    /// namespace and the cap, and nothing is subscribed; objects the namespace already watches
    /// are free; other namespaces have their own budget; dropping volumes frees it; a recovered
    /// volume is counted but never refused.
    #[tokio::test]
    async fn distinct_watches_per_namespace_are_capped() {
        let lists = Arc::new(Mutex::new(0));
        let client = configmap_server(Vec::new(), lists);
        let (apis, _) = Apis::discover(client.clone(), crate::kube::discovery::CSR_API);
        let limits = TrustLimits {
            max_watches_per_namespace: 2,
            ..TrustLimits::default()
        };
        let (cache, _drive) = TrustCache::with_limits(client, None, apis, limits);
        let a = cache
            .subscribe(&configmaps_spec("a/k,b/k"), "shop")
            .unwrap();
        let watched = cache.watched();
        let Err(err) = cache.subscribe(&configmaps_spec("a/k,c/k,d/k"), "shop") else {
            panic!("over the budget");
        };
        assert!(matches!(err, SourceError::TooManyWatches { .. }), "{err:?}");
        assert_eq!(err.attribute(), "csi.certvol.io/trust-configmaps");
        assert_eq!(
            err.to_string(),
            "volume attribute \"csi.certvol.io/trust-configmaps\": ConfigMap shop/c would make 4 \
             distinct trust sources watched for the volumes of namespace \"shop\"; this node \
             watches at most 2 per namespace (--max-trust-watches-per-namespace): name fewer \
             distinct ConfigMaps, Secrets and ClusterTrustBundles, share them between volumes, or \
             remove volumes that name others"
        );
        assert_eq!(cache.watched(), watched, "nothing subscribed");
        // Already watched for this namespace (another key of the same object too): free.
        let again = cache
            .subscribe(&configmaps_spec("b/k,a/other"), "shop")
            .unwrap();
        // Another namespace's budget is its own, even for objects "shop" has watched.
        let other = cache.subscribe(&configmaps_spec("a/k,x/k"), "web").unwrap();
        assert!(cache.subscribe(&configmaps_spec("y/k"), "web").is_err());
        // A volume recovered after a restart is never refused, and past the budget a volume
        // naming only what the namespace watches already is still fine.
        let recovered = cache.resubscribe(&configmaps_spec("c/k"), "shop").unwrap();
        let within = cache
            .subscribe(&configmaps_spec("c/k,a/k"), "shop")
            .unwrap();
        assert!(cache.subscribe(&configmaps_spec("d/k"), "shop").is_err());
        drop((recovered, again, within));
        drop(a);
        // "shop" holds nothing now; "web" still holds a and x.
        let c = cache
            .subscribe(&configmaps_spec("c/k,d/k"), "shop")
            .unwrap();
        assert_eq!(cache.watched().len(), 4, "{:?}", cache.watched());
        drop((c, other));
        assert!(cache.watched().is_empty());
    }

    /// `--max-trust-bytes` through the cache: with room for one 1 MiB source, a second distinct
    /// one fails its volume with OverBudget naming the object, the key and the budget; once the
    /// first is no longer named, the retried volume (a fresh watch) reads it.
    #[tokio::test]
    async fn the_node_byte_budget_refuses_a_source_that_does_not_fit() {
        let big = "x".repeat(1 << 20);
        let client = configmap_server(
            vec![
                (("shop", "one"), vec![("ca.crt", big.clone())]),
                (("shop", "two"), vec![("ca.crt", big.clone())]),
            ],
            Arc::new(Mutex::new(0)),
        );
        let (apis, _) = Apis::discover(client.clone(), crate::kube::discovery::CSR_API);
        let limits = TrustLimits {
            max_total_bytes: 3 << 19,
            ..TrustLimits::default()
        };
        let (cache, drive) = TrustCache::with_limits(client, None, apis, limits);
        let drive = tokio::spawn(drive);
        let mut one = cache
            .subscribe(&configmaps_spec("one/ca.crt"), "shop")
            .unwrap();
        one.ready(Duration::from_secs(5)).await.unwrap();
        let mut two = cache
            .subscribe(&configmaps_spec("two/ca.crt"), "shop")
            .unwrap();
        let err = two.ready(Duration::from_secs(5)).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "volume attribute \"csi.certvol.io/trust-configmaps\": ConfigMap shop/two key \
             \"ca.crt\" (1048576 bytes) is not kept: this node's trust sources would hold more \
             than 1572864 bytes in all (--max-trust-bytes); retried when the object changes or \
             once no volume on the node names it"
        );
        assert_eq!(cache.held_bytes(), 1 << 20);
        drop((one, two));
        // The watches stop as their tasks see it; the budget is released with their state.
        let released = async {
            while cache.held_bytes() != 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), released)
            .await
            .expect("released");
        let mut two = cache
            .subscribe(&configmaps_spec("two/ca.crt"), "shop")
            .unwrap();
        two.ready(Duration::from_secs(5)).await.unwrap();
        assert_eq!(cache.held_bytes(), 1 << 20);
        drop(two);
        drop(cache);
        drive.abort();
    }
}
