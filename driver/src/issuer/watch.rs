//! One node-scoped watch on the issuer's request objects (cert-manager CertificateRequests or
//! Kubernetes CertificateSigningRequests) feeding an in-memory cache that issuances wait on.
//!
//! Every issuance on the node shares this watch (selected by the `certvol.io/node` label, one
//! stream per watched namespace), so waiting costs no GETs or LISTs of its own: an issuance
//! creates its request and then waits for the cache to show a final status.
//!
//! Anyone who may create request objects can put the node's label on them, so the label is no
//! proof of ownership and the objects are untrusted input: the cache keeps only objects shaped
//! like certvol's own (see [`Owner`]), only the few fields issuance reads ([`Cached`]), and only
//! so many per tenant ([`CacheLimits`]); list pages are small ([`REQUEST_PAGE_SIZE`](crate::kube::client::REQUEST_PAGE_SIZE)).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Resource};
use parking_lot::{Mutex, MutexGuard};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::issuer::cached::{Cached, Watched};
use crate::issuer::labels::Owner;
use crate::issuer::{IssueError, Issued};
use crate::kube::client::{REQUEST_PAGE_SIZE, retry_delay};
use crate::obs::metrics::Metrics;

/// `(namespace, name)` of a request; the namespace is empty for cluster-scoped kinds.
pub(crate) type Key = (String, String);

/// How many objects the cache holds at most.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheLimits {
    /// Per tenant ([`Watched::scope`]): one namespace's volumes on this node times the request
    /// history they keep. Beyond it, new objects of that namespace are dropped (and counted).
    pub per_namespace: usize,
    /// In all; bounds the memory whatever the scopes claim (a CertificateSigningRequest's
    /// namespace label is written by whoever creates it).
    pub total: usize,
    /// Bytes of certificates, CAs and condition texts one tenant's cached objects may hold: a
    /// tenant that runs its own issuer controls `status.ca` (its CA Secret, up to 1 MiB) and so
    /// could make every one of its [`CacheLimits::per_namespace`] objects weigh a MiB.
    pub per_namespace_bytes: usize,
    /// The same in all.
    pub total_bytes: usize,
}

impl Default for CacheLimits {
    /// A node runs at most a few hundred pods (kubelet's default is 110), each with a volume or
    /// two and a short request history; a cached object costs a few KiB.
    fn default() -> Self {
        CacheLimits {
            per_namespace: 512,
            total: 4096,
            // A certificate chain and its CA are a few KiB: 512 of them are about 4 MiB.
            per_namespace_bytes: 8 << 20,
            total_bytes: 32 << 20,
        }
    }
}

/// Why an object the watch delivered was not cached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dropped {
    /// Not one of this node's requests (see [`Owner`]).
    Foreign,
    /// Its namespace (or the node) already has as many objects cached as allowed.
    OverLimit,
}

impl Dropped {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Dropped::Foreign => "foreign",
            Dropped::OverLimit => "over_limit",
        }
    }
}

struct Entry {
    cached: Cached,
    scope: String,
    /// The watch stream that delivered it.
    stream: usize,
}

/// One watch stream's progress (one per watched namespace, or one for all).
#[derive(Default)]
struct Stream {
    /// Keys listed since the stream's last `Init`: the watcher relists after a 410 Gone or a
    /// reconnect, and what the relist does not contain was deleted meanwhile.
    relist: Option<HashSet<Key>>,
    /// Whether a full list has completed at least once (for timeout diagnostics).
    synced: bool,
    /// Whether the last thing the stream yielded was an error (API server unreachable, RBAC
    /// withdrawn): cleared by the next event, which only arrives once the server answers.
    failing: bool,
    /// Whether the stream failed since its last complete list: the next complete list is a
    /// recovery (see [`RequestCache::recoveries`]).
    failed_since_list: bool,
}

struct State {
    live: HashMap<Key, Entry>,
    /// Per scope: objects cached and the bytes they weigh ([`Cached::weight`]).
    per_scope: HashMap<String, (usize, usize)>,
    /// Bytes all cached objects weigh.
    total_bytes: usize,
    streams: Vec<Stream>,
    /// Recently deleted requests: key → (change number of the deletion, uid). A waiter may wake
    /// only after both the ADDED and the DELETED event of its request were applied (the change
    /// counter coalesces), so "absent now" alone cannot tell "not seen yet" from "already gone".
    tombstones: HashMap<Key, (u64, Option<String>)>,
    tombstone_order: VecDeque<Key>,
    /// Scopes already warned about being over their limit (bounded like the tombstones).
    warned: HashSet<String>,
    dropped_foreign: u64,
    dropped_over_limit: u64,
}

/// How many deletions are remembered; waiters look them up within moments of the event.
const TOMBSTONES: usize = 1024;

impl State {
    fn new(streams: usize) -> Self {
        State {
            live: HashMap::new(),
            per_scope: HashMap::new(),
            total_bytes: 0,
            streams: (0..streams.max(1)).map(|_| Stream::default()).collect(),
            tombstones: HashMap::new(),
            tombstone_order: VecDeque::new(),
            warned: HashSet::new(),
            dropped_foreign: 0,
            dropped_over_limit: 0,
        }
    }

    fn bury(&mut self, key: Key, change: u64, uid: Option<String>) {
        if self.tombstone_order.len() >= TOMBSTONES
            && let Some(old) = self.tombstone_order.pop_front()
        {
            self.tombstones.remove(&old);
        }
        self.tombstones.insert(key.clone(), (change, uid));
        self.tombstone_order.push_back(key);
    }

    fn remove(&mut self, key: &Key) -> Option<Entry> {
        let entry = self.live.remove(key)?;
        let weight = entry.cached.weight();
        self.total_bytes = self.total_bytes.saturating_sub(weight);
        if let Some((n, bytes)) = self.per_scope.get_mut(&entry.scope) {
            *n = n.saturating_sub(1);
            *bytes = bytes.saturating_sub(weight);
            if *n == 0 {
                self.per_scope.remove(&entry.scope);
            }
        }
        Some(entry)
    }

    /// Caches `entry` unless its scope or the node is at its limit. A cached version of the
    /// object that moved to a full scope is removed and returned with the error.
    fn admit(
        &mut self,
        key: Key,
        entry: Entry,
        limits: CacheLimits,
    ) -> Result<(), (Dropped, Option<Box<Entry>>)> {
        // Taken out first, so an update is weighed without its older copy; it goes back in
        // below unless the new copy does not fit.
        let old = self.remove(&key).map(Box::new);
        let updated = old.as_ref().is_some_and(|o| o.scope == entry.scope);
        let (in_scope, scope_bytes) = self.per_scope.get(&entry.scope).copied().unwrap_or((0, 0));
        let weight = entry.cached.weight();
        // An update of an object already counted is not a new one for the count limits.
        let over_count =
            !updated && (in_scope >= limits.per_namespace || self.live.len() >= limits.total);
        let over_bytes = scope_bytes + weight > limits.per_namespace_bytes
            || self.total_bytes + weight > limits.total_bytes;
        if over_count || over_bytes {
            return Err((Dropped::OverLimit, old));
        }
        let (n, bytes) = self.per_scope.entry(entry.scope.clone()).or_insert((0, 0));
        *n += 1;
        *bytes += weight;
        self.total_bytes += weight;
        self.live.insert(key, entry);
        Ok(())
    }

    /// Stream `stream` completed a list: whatever its relist lacks was deleted while the watch
    /// was down. Returns whether the list follows a failure (a recovery).
    fn listed(&mut self, stream: usize, change: u64) -> bool {
        if let Some(listed) = self.streams[stream].relist.take() {
            let gone: Vec<Key> = self
                .live
                .iter()
                .filter(|(k, e)| e.stream == stream && !listed.contains(*k))
                .map(|(k, _)| k.clone())
                .collect();
            for key in gone {
                if let Some(entry) = self.remove(&key) {
                    self.bury(key, change, entry.cached.uid);
                }
            }
        }
        let progress = &mut self.streams[stream];
        progress.synced = true;
        std::mem::take(&mut progress.failed_since_list)
    }

    /// Stream `stream` saw `object` deleted. Returns whether that changed anything for the
    /// waiters: an object never cached (foreign or dropped) changes nothing for anyone.
    fn deleted<R: Resource>(&mut self, stream: usize, change: u64, object: &R) -> bool {
        let Some(key) = key_of(object) else {
            return false;
        };
        if let Some(listed) = self.streams[stream].relist.as_mut() {
            listed.remove(&key);
        }
        match self.remove(&key) {
            Some(entry) => {
                self.bury(key, change, entry.cached.uid);
                true
            }
            None => false,
        }
    }

    fn drop_counted(&mut self, why: Dropped, scope: &str, kind: &str, limits: CacheLimits) {
        match why {
            Dropped::Foreign => self.dropped_foreign += 1,
            Dropped::OverLimit => {
                self.dropped_over_limit += 1;
                if self.warned.len() < TOMBSTONES && self.warned.insert(scope.to_owned()) {
                    warn!(
                        %kind,
                        namespace = %scope,
                        per_namespace = limits.per_namespace,
                        total = limits.total,
                        "more labelled {kind}s than the node caches (--max-requests-per-namespace); ignoring the rest of this namespace's"
                    );
                }
            }
        }
    }
}

/// The cache of this node's requests of kind `R` plus a change counter waiters subscribe to.
pub(crate) struct RequestCache<R> {
    state: Mutex<State>,
    owner: Owner,
    limits: CacheLimits,
    metrics: Metrics,
    changes: watch::Sender<u64>,
    /// Counts completed lists that followed a failure: the API server answers again.
    recoveries: watch::Sender<u64>,
    kind: std::marker::PhantomData<fn() -> R>,
}

/// A waiter's view of the change counter, taken before its request was created.
pub(crate) struct Subscription {
    changes: watch::Receiver<u64>,
    since: u64,
}

/// How waiting for a request ended.
#[derive(Debug)]
pub(crate) enum Waited {
    /// The check function returned a final result.
    Done(Result<Issued, IssueError>),
    /// The request was in the cache and then disappeared (deleted, e.g. garbage-collected).
    Deleted,
    /// No final result in time. Carries the last version seen, if any.
    TimedOut {
        last: Option<Box<Cached>>,
        synced: bool,
    },
}

impl<R: Watched> RequestCache<R> {
    /// A cache for the requests of `owner`'s node, fed by `streams` watch streams (one per
    /// watched namespace; at least one), counting what it drops in `metrics`.
    pub(crate) fn new(
        owner: Owner,
        limits: CacheLimits,
        streams: usize,
        metrics: Metrics,
    ) -> Arc<Self> {
        Arc::new(RequestCache {
            state: Mutex::new(State::new(streams)),
            owner,
            limits,
            metrics,
            changes: watch::Sender::new(0),
            recoveries: watch::Sender::new(0),
            kind: std::marker::PhantomData,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain maps behind, which are still consistent
        // enough to serve (the next relist replaces them anyway): a lock that cannot poison.
        self.state.lock()
    }

    /// Subscribe before creating a request, so that a change between the create and the first
    /// look at the cache still wakes the waiter, and a deletion after this point is recognised.
    pub(crate) fn subscribe(&self) -> Subscription {
        let changes = self.changes.subscribe();
        let since = *changes.borrow();
        Subscription { changes, since }
    }

    pub(crate) fn get(&self, key: &Key) -> Option<Cached> {
        self.lock().live.get(key).map(|e| e.cached.clone())
    }

    pub(crate) fn len(&self) -> usize {
        self.lock().live.len()
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.lock().live.is_empty()
    }

    /// How many delivered objects were not cached, by reason: (foreign, over a limit).
    #[cfg(test)]
    pub(crate) fn dropped(&self) -> (u64, u64) {
        let state = self.lock();
        (state.dropped_foreign, state.dropped_over_limit)
    }

    /// Whether objects of `scope` (a namespace) were ever dropped for being over a limit: a
    /// request of ours missing from the cache may be one of them.
    pub(crate) fn was_over_limit(&self, scope: &str) -> bool {
        self.lock().warned.contains(scope)
    }

    /// Whether the watch is serving: every stream has listed once and none's latest attempt
    /// failed. This is the issuer's part of the node's readiness.
    pub(crate) fn healthy(&self) -> bool {
        let state = self.lock();
        state.streams.iter().all(|s| s.synced && !s.failing)
    }

    /// Records that the watch stream failed; the watcher retries with backoff.
    #[cfg(test)]
    pub(crate) fn watch_failed(&self) {
        self.stream_failed(0);
    }

    /// Records that watch stream `stream` failed.
    pub(crate) fn stream_failed(&self, stream: usize) {
        let mut state = self.lock();
        if let Some(s) = state.streams.get_mut(stream) {
            s.failing = true;
            s.failed_since_list = true;
        }
    }

    /// Changes each time a watch stream completes a list after having failed, i.e. when the API
    /// server answers again after an outage. Work that backed off because the API was down (failed
    /// renewals) can be retried at once instead of sleeping out its backoff.
    pub(crate) fn recoveries(&self) -> watch::Receiver<u64> {
        self.recoveries.subscribe()
    }

    /// Applies one event of the (single) watch stream and wakes waiters.
    #[cfg(test)]
    pub(crate) fn apply(&self, event: Event<R>) {
        self.apply_from(0, event);
    }

    /// Applies one event of watch stream `stream` and wakes waiters, unless the event was about
    /// an object that is not the node's (those change nothing, so they wake no one).
    pub(crate) fn apply_from(&self, stream: usize, event: Event<R>) {
        let mut recovered = false;
        {
            let mut state = self.lock();
            // The number this change will carry once sent: only `apply_from` moves the counter,
            // and it does so under the state lock, so reading it there is exact.
            let change = self.changes.borrow().wrapping_add(1);
            if stream >= state.streams.len() {
                return;
            }
            // The watcher yields `Init` before it sends its list request; everything else
            // carries an answer from the API server.
            if !matches!(event, Event::Init) {
                state.streams[stream].failing = false;
            }
            let changed = match event {
                Event::Init => {
                    state.streams[stream].relist = Some(HashSet::new());
                    true
                }
                Event::InitDone => {
                    recovered = state.listed(stream, change);
                    true
                }
                // Listed objects are current, so they go live at once: a result that lands
                // during a long relist is seen without waiting for InitDone.
                Event::InitApply(object) | Event::Apply(object) => {
                    self.applied(&mut state, stream, change, &object)
                }
                Event::Delete(object) => state.deleted(stream, change, &object),
            };
            if !changed {
                return;
            }
            self.changes.send_modify(|n| *n = n.wrapping_add(1));
        }
        if recovered {
            self.recoveries.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// Caches (or drops) an object stream `stream` listed or saw change. Returns whether that
    /// changed anything for the waiters.
    fn applied(&self, state: &mut State, stream: usize, change: u64, object: &R) -> bool {
        let Some(key) = key_of(object) else {
            return false;
        };
        let kind = R::kind(&());
        let scope = object.scope();
        let admitted = match self.owner.foreign(object.meta()) {
            Some(why) => {
                debug!(%kind, namespace = %key.0, name = %key.1, why, "ignoring a labelled object that is not this node's");
                Err((Dropped::Foreign, state.remove(&key).map(Box::new)))
            }
            None => {
                let entry = Entry {
                    cached: object.cached(),
                    scope: scope.clone(),
                    stream,
                };
                state.admit(key.clone(), entry, self.limits)
            }
        };
        match admitted {
            Ok(()) => {
                if let Some(listed) = state.streams[stream].relist.as_mut() {
                    listed.insert(key);
                }
            }
            Err((why, old)) => {
                self.metrics.request_dropped(why.as_str());
                state.drop_counted(why, &scope, &kind, self.limits);
                // An object of ours that someone changed into a foreign one (or that no longer
                // fits) is gone for the waiters.
                match old {
                    Some(entry) => state.bury(key, change, entry.cached.uid),
                    None => return false,
                }
            }
        }
        true
    }

    /// Whether `key` was deleted after change `since`, or is the deletion of the object `uid`.
    fn deleted(&self, key: &Key, since: u64, uid: Option<&str>) -> bool {
        match self.lock().tombstones.get(key) {
            None => false,
            Some((change, dead_uid)) => match (uid, dead_uid.as_deref()) {
                (Some(ours), Some(dead)) => ours == dead,
                _ => *change > since,
            },
        }
    }

    /// Whether every stream has completed a list.
    fn synced(&self) -> bool {
        self.lock().streams.iter().all(|s| s.synced)
    }

    /// Waits up to `timeout` for `check` to return a final result for `key`, looking at the cache
    /// first (the result may already be there) and then after every change. `subscription` must
    /// be taken before the request is created; `uid` is the created object's, if known.
    pub(crate) async fn wait<F>(
        &self,
        key: &Key,
        subscription: Subscription,
        uid: Option<String>,
        timeout: Duration,
        check: F,
    ) -> Waited
    where
        F: Fn(&Cached) -> Option<Result<Issued, IssueError>>,
    {
        let Subscription { mut changes, since } = subscription;
        let mut uid = uid;
        let mut last: Option<Cached> = None;
        let waiting = async {
            loop {
                changes.borrow_and_update();
                match self.get(key) {
                    Some(cached) => {
                        if let Some(result) = check(&cached) {
                            return Waited::Done(result);
                        }
                        if uid.is_none() {
                            uid = cached.uid.clone();
                        }
                        last = Some(cached);
                    }
                    None if last.is_some() => return Waited::Deleted,
                    None if self.deleted(key, since, uid.as_deref()) => return Waited::Deleted,
                    None => {}
                }
                if changes.changed().await.is_err() {
                    // The sender lives as long as the cache; this only happens while shutting down.
                    return Waited::Done(Err(IssueError::Unavailable {
                        message: "the request watch has stopped".into(),
                    }));
                }
            }
        };
        match tokio::time::timeout(timeout, waiting).await {
            Ok(waited) => waited,
            Err(_) => Waited::TimedOut {
                last: last.map(Box::new),
                synced: self.synced(),
            },
        }
    }
}

fn key_of<R: Resource>(object: &R) -> Option<Key> {
    let meta = object.meta();
    Some((
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone()?,
    ))
}

/// Runs watch stream `stream` of the node's watch until the process ends: lists (in pages of
/// [`REQUEST_PAGE_SIZE`](crate::kube::client::REQUEST_PAGE_SIZE)) and watches every request of `R` matching `selector` that `api` reaches (one
/// namespace, or all), relisting after 410 Gone.
///
/// After an error the watch starts over with a fresh list once a backoff has passed, instead of
/// letting the watcher resume its watch: a resumed watch yields nothing until a request changes,
/// so only a completed relist proves the API server answers again (readiness depends on it).
pub(crate) async fn run<R: Watched>(
    api: Api<R>,
    selector: String,
    cache: Arc<RequestCache<R>>,
    stream_index: usize,
) {
    let kind = R::kind(&()).into_owned();
    info!(%selector, %kind, "watching requests");
    let mut failures: u32 = 0;
    loop {
        let config = watcher::Config::default()
            .labels(&selector)
            .page_size(REQUEST_PAGE_SIZE);
        let mut stream = watcher::watcher(api.clone(), config).boxed();
        // The watcher's stream does not end on its own; if it ever does, start over like after
        // an error.
        let mut delay = retry_delay(failures.saturating_add(1), rand::random::<f64>());
        while let Some(item) = stream.next().await {
            match item {
                Ok(event) => {
                    if matches!(event, Event::InitDone) {
                        if failures > 0 {
                            info!(%kind, "request watch recovered");
                        }
                        debug!(%kind, "request list complete");
                        failures = 0;
                    }
                    cache.apply_from(stream_index, event);
                }
                Err(error) => {
                    // Waiters keep waiting: results that arrive meanwhile show up in the relist.
                    cache.stream_failed(stream_index);
                    failures = failures.saturating_add(1);
                    delay = retry_delay(failures, rand::random::<f64>());
                    warn!(%error, %kind, retry_in = ?delay, "request watch failed; relisting after a backoff");
                    break;
                }
            }
        }
        tokio::time::sleep(delay).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::issuer::cached::{MAX_MESSAGE, Pem, request_key_of_der};
    use crate::issuer::certmanager::resource::{
        self, CertificateRequest, CertificateRequestStatus, Condition,
    };
    use crate::issuer::labels::{ANNOTATION_NODE_NAME, LABEL_NODE, LABEL_VOLUME};
    use k8s_openapi::ByteString;

    fn cr(name: &str, ready: Option<(&str, &str)>) -> CertificateRequest {
        let mut cr = resource::build(
            &resource::tests::issue_request(resource::tests::cert_request()),
            "node-1",
        );
        cr.metadata.name = Some(request_name(name));
        if let Some((status, reason)) = ready {
            cr.status = Some(CertificateRequestStatus {
                conditions: vec![Condition {
                    type_: "Ready".into(),
                    status: status.into(),
                    reason: Some(reason.into()),
                    message: Some(format!("{reason} message")),
                    last_transition_time: None,
                }],
                certificate: (status == "True").then(|| ByteString(b"LEAF".to_vec())),
                ..Default::default()
            });
        }
        cr
    }

    /// Waits (in a task) up to 5 s for request "a" to reach a final state.
    fn spawn_wait_for_a(
        cache: &Arc<RequestCache<CertificateRequest>>,
        rx: Subscription,
    ) -> tokio::task::JoinHandle<Waited> {
        let cache = cache.clone();
        tokio::spawn(async move {
            cache
                .wait(
                    &key("a"),
                    rx,
                    None,
                    Duration::from_secs(5),
                    resource::outcome_of,
                )
                .await
        })
    }

    /// The name certvol gives short test name `name` (as a volume id) on node-1.
    fn request_name(name: &str) -> String {
        crate::issuer::request_name("node-1", name, 1)
    }

    fn key(name: &str) -> Key {
        ("shop".into(), request_name(name))
    }

    fn new_cache() -> Arc<RequestCache<CertificateRequest>> {
        RequestCache::new(
            Owner::new("node-1"),
            CacheLimits::default(),
            1,
            Metrics::detached(),
        )
    }

    #[tokio::test]
    async fn a_result_already_in_the_cache_is_returned_at_once() {
        let cache = new_cache();
        cache.apply(Event::Apply(cr("a", Some(("True", "Issued")))));
        let waited = cache
            .wait(
                &key("a"),
                cache.subscribe(),
                None,
                Duration::from_secs(5),
                resource::outcome_of,
            )
            .await;
        assert!(
            matches!(waited, Waited::Done(Ok(ref i)) if i.chain_pem == "LEAF"),
            "{waited:?}"
        );
    }

    #[tokio::test]
    async fn waiters_wake_on_later_changes() {
        let cache = new_cache();
        let rx = cache.subscribe();
        let waiter = spawn_wait_for_a(&cache, rx);
        tokio::task::yield_now().await;
        cache.apply(Event::Apply(cr("a", None)));
        cache.apply(Event::Apply(cr("other", Some(("False", "Failed")))));
        cache.apply(Event::Apply(cr("a", Some(("False", "Pending")))));
        cache.apply(Event::Apply(cr("a", Some(("False", "Failed")))));
        let waited = waiter.await.unwrap();
        assert!(
            matches!(waited, Waited::Done(Err(IssueError::Failed { ref message, .. })) if message == "Failed message"),
            "{waited:?}"
        );
    }

    #[tokio::test]
    async fn deletion_while_waiting_is_reported() {
        let cache = new_cache();
        cache.apply(Event::Apply(cr("a", None)));
        let rx = cache.subscribe();
        let waiter = spawn_wait_for_a(&cache, rx);
        tokio::task::yield_now().await;
        cache.apply(Event::Delete(cr("a", None)));
        assert!(matches!(waiter.await.unwrap(), Waited::Deleted));
    }

    #[tokio::test]
    async fn a_deletion_coalesced_with_the_creation_is_still_seen() {
        let cache = new_cache();
        let rx = cache.subscribe();
        // Both events land before the waiter first looks.
        let mut ours = cr("a", None);
        ours.metadata.uid = Some("uid-ours".into());
        cache.apply(Event::Apply(ours.clone()));
        cache.apply(Event::Delete(ours));
        let waited = cache
            .wait(
                &key("a"),
                rx,
                Some("uid-ours".into()),
                Duration::from_secs(5),
                resource::outcome_of,
            )
            .await;
        assert!(matches!(waited, Waited::Deleted), "{waited:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn an_older_deletion_of_the_same_name_is_not_ours() {
        let cache = new_cache();
        let mut old = cr("a", None);
        old.metadata.uid = Some("uid-old".into());
        cache.apply(Event::Apply(old.clone()));
        cache.apply(Event::Delete(old));
        // Deleted before this waiter subscribed, and another uid: keep waiting for ours.
        let waited = cache
            .wait(
                &key("a"),
                cache.subscribe(),
                Some("uid-new".into()),
                Duration::from_secs(5),
                resource::outcome_of,
            )
            .await;
        assert!(matches!(waited, Waited::TimedOut { .. }), "{waited:?}");
        let waited = cache
            .wait(
                &key("a"),
                cache.subscribe(),
                None,
                Duration::from_secs(5),
                resource::outcome_of,
            )
            .await;
        assert!(matches!(waited, Waited::TimedOut { .. }), "{waited:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn timeout_reports_the_last_status_seen() {
        let cache = new_cache();
        cache.apply(Event::Apply(cr("a", Some(("False", "Pending")))));
        let waited = cache
            .wait(
                &key("a"),
                cache.subscribe(),
                None,
                Duration::from_secs(30),
                resource::outcome_of,
            )
            .await;
        match waited {
            Waited::TimedOut {
                last: Some(last),
                synced,
            } => {
                assert!(!synced);
                assert_eq!(last.name, request_name("a"));
            }
            other => panic!("{other:?}"),
        }
        let waited = cache
            .wait(
                &key("never"),
                cache.subscribe(),
                None,
                Duration::from_secs(30),
                resource::outcome_of,
            )
            .await;
        assert!(matches!(waited, Waited::TimedOut { last: None, .. }));
    }

    #[test]
    fn healthy_after_the_first_list_and_again_once_a_failed_watch_answers() {
        let cache = new_cache();
        assert!(!cache.healthy(), "not before the first list");
        cache.apply(Event::Init);
        assert!(!cache.healthy(), "not while listing the first time");
        cache.apply(Event::InitDone);
        assert!(cache.healthy());
        cache.watch_failed();
        assert!(
            !cache.healthy(),
            "a failed watch attempt makes the issuer unreachable"
        );
        // The relist has not been answered yet.
        cache.apply(Event::Init);
        assert!(!cache.healthy());
        cache.apply(Event::InitDone);
        assert!(cache.healthy());
    }

    #[test]
    fn a_list_completed_after_a_failure_is_a_recovery_and_only_that() {
        let cache = new_cache();
        let mut recoveries = cache.recoveries();
        cache.apply(Event::Init);
        cache.apply(Event::InitApply(cr("a", None)));
        cache.apply(Event::InitDone);
        assert!(
            !recoveries.has_changed().unwrap(),
            "the first list is no recovery"
        );
        cache.apply(Event::Apply(cr("a", Some(("True", "Issued")))));
        assert!(!recoveries.has_changed().unwrap());
        cache.watch_failed();
        cache.watch_failed();
        cache.apply(Event::Init);
        assert!(
            !recoveries.has_changed().unwrap(),
            "not before the list completes"
        );
        cache.apply(Event::InitApply(cr("a", None)));
        cache.apply(Event::InitDone);
        assert!(recoveries.has_changed().unwrap());
        assert_eq!(
            *recoveries.borrow_and_update(),
            1,
            "one recovery per outage"
        );
        // A relist with no failure recorded since the last one is not a recovery.
        cache.apply(Event::Init);
        cache.apply(Event::InitDone);
        assert!(!recoveries.has_changed().unwrap());
    }

    #[tokio::test]
    async fn relist_keeps_results_that_arrive_meanwhile_and_drops_deleted_objects() {
        let cache = new_cache();
        cache.apply(Event::Init);
        cache.apply(Event::InitApply(cr("gone", None)));
        cache.apply(Event::InitApply(cr("a", None)));
        cache.apply(Event::InitDone);
        assert_eq!(cache.len(), 2);

        // A waiter for "a"; then the watch breaks (410 Gone) and the watcher relists.
        let rx = cache.subscribe();
        let waiter = spawn_wait_for_a(&cache, rx);
        tokio::task::yield_now().await;
        cache.apply(Event::Init);
        // During the relist the old view stays in place...
        assert!(cache.get(&key("gone")).is_some());
        // ...and the signed result is in the list: the waiter must see it.
        cache.apply(Event::InitApply(cr("a", Some(("True", "Issued")))));
        let waited = waiter.await.unwrap();
        assert!(matches!(waited, Waited::Done(Ok(_))), "{waited:?}");
        cache.apply(Event::InitDone);
        // "gone" was deleted while the watch was down: the relist drops it.
        assert!(cache.get(&key("gone")).is_none());
        assert!(cache.get(&key("a")).is_some());
        assert_eq!(cache.len(), 1);
    }

    #[tokio::test]
    async fn a_request_missing_from_a_relist_counts_as_deleted() {
        let cache = new_cache();
        cache.apply(Event::Apply(cr("a", None)));
        let rx = cache.subscribe();
        let waiter = spawn_wait_for_a(&cache, rx);
        tokio::task::yield_now().await;
        cache.apply(Event::Init);
        cache.apply(Event::InitApply(cr("b", None)));
        cache.apply(Event::InitDone);
        assert!(matches!(waiter.await.unwrap(), Waited::Deleted));
    }

    /// Whether anything woke subscribers since `rx` was taken.
    fn woke(rx: &Subscription) -> bool {
        rx.changes.has_changed().unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn labelled_objects_not_shaped_like_ours_are_ignored_and_wake_no_one() {
        let cache = new_cache();
        let ours = cr("a", Some(("True", "Issued")));
        assert!(Owner::new("node-1").foreign(&ours.metadata).is_none());
        // As certvol 0.1.0 filed them: no node-name annotation. Still this node's.
        let mut unannotated = ours.clone();
        unannotated
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .remove(ANNOTATION_NODE_NAME);
        assert!(
            Owner::new("node-1")
                .foreign(&unannotated.metadata)
                .is_none()
        );
        let mut foreign: Vec<(&str, CertificateRequest)> = Vec::new();
        let mut renamed = ours.clone();
        renamed.metadata.name = Some("hog-1".into());
        foreign.push(("name", renamed));
        let mut almost = ours.clone();
        almost.metadata.name = Some("certvol-0123456789abcdef012g-1".into());
        foreign.push(("name with a non-hex digit", almost));
        let mut other_node = ours.clone();
        other_node
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(ANNOTATION_NODE_NAME.into(), "node-2".into());
        foreign.push(("node-name annotation of another node", other_node));
        let mut other_label = ours.clone();
        other_label
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .insert(LABEL_NODE.into(), "node-2".into());
        foreign.push(("node label", other_label));
        let mut no_volume = ours.clone();
        no_volume
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .insert(LABEL_VOLUME.into(), "mine".into());
        foreign.push(("volume label not a hash", no_volume));

        // A waiter for the very key the foreign objects claim.
        let rx = cache.subscribe();
        let waiter = spawn_wait_for_a(&cache, cache.subscribe());
        tokio::task::yield_now().await;
        for (what, object) in &foreign {
            cache.apply(Event::Apply(object.clone()));
            cache.apply(Event::Delete(object.clone()));
            assert!(cache.is_empty(), "{what}: cached");
            assert!(!woke(&rx), "{what}: woke the waiters");
        }
        assert_eq!(cache.dropped(), (foreign.len() as u64, 0));
        // The foreign objects that carry the waiter's key (all but the renamed ones) neither
        // answered it nor counted as its deletion.
        assert!(
            matches!(waiter.await.unwrap(), Waited::TimedOut { last: None, .. }),
            "a foreign object answered the waiter"
        );

        // Ours is cached and wakes; if it is later changed into a foreign one it is gone.
        cache.apply(Event::Apply(cr("a", None)));
        assert!(woke(&rx));
        assert_eq!(cache.len(), 1);
        let rx = cache.subscribe();
        let waiter = spawn_wait_for_a(&cache, cache.subscribe());
        tokio::task::yield_now().await;
        let mut stripped = cr("a", None);
        stripped.metadata.labels = None;
        cache.apply(Event::Apply(stripped));
        assert!(woke(&rx));
        assert!(cache.is_empty());
        assert!(matches!(waiter.await.unwrap(), Waited::Deleted));
    }

    fn in_namespace(name: &str, namespace: &str) -> CertificateRequest {
        let mut cr = cr(name, None);
        cr.metadata.namespace = Some(namespace.into());
        cr
    }

    #[test]
    fn one_namespace_cannot_make_the_node_cache_more_than_its_limit() {
        let limits = CacheLimits {
            per_namespace: 3,
            total: 5,
            ..CacheLimits::default()
        };
        let cache = RequestCache::<CertificateRequest>::new(
            Owner::new("node-1"),
            limits,
            1,
            Metrics::detached(),
        );
        for i in 0..10 {
            cache.apply(Event::Apply(in_namespace(&format!("t{i}"), "tenant")));
        }
        assert_eq!(cache.len(), 3, "the tenant's namespace is capped");
        assert_eq!(cache.dropped(), (0, 7));
        assert!(cache.was_over_limit("tenant") && !cache.was_over_limit("honest"));
        // Another namespace is not affected by the tenant's flood...
        let rx = cache.subscribe();
        for i in 0..2 {
            cache.apply(Event::Apply(in_namespace(&format!("h{i}"), "honest")));
        }
        assert!(woke(&rx));
        assert!(cache.get(&("honest".into(), request_name("h1"))).is_some());
        // ...up to the node's total.
        let rx = cache.subscribe();
        cache.apply(Event::Apply(in_namespace("late", "third")));
        assert!(!woke(&rx), "a dropped object wakes no one");
        assert!(cache.get(&("third".into(), request_name("late"))).is_none());
        assert_eq!(cache.len(), 5);
        assert_eq!(cache.dropped(), (0, 8));
        // Updates of cached objects still land at the limit.
        let mut signed = in_namespace("t0", "tenant");
        signed.status = cr("x", Some(("True", "Issued"))).status;
        cache.apply(Event::Apply(signed));
        let key = ("tenant".to_owned(), request_name("t0"));
        assert!(resource::outcome_of(&cache.get(&key).unwrap()).is_some());
        // A deletion frees room for the next one.
        cache.apply(Event::Delete(in_namespace("t1", "tenant")));
        cache.apply(Event::Apply(in_namespace("t9", "tenant")));
        assert!(cache.get(&("tenant".into(), request_name("t9"))).is_some());
        assert_eq!(cache.len(), 5);
    }

    /// A tenant running its own CA issuer controls `status.ca`: a MiB on each of its requests
    /// would multiply by the count cap. The byte budget bounds what the copies weigh.
    #[test]
    fn what_one_namespace_s_requests_weigh_is_capped_too() {
        let limits = CacheLimits {
            per_namespace_bytes: 20_000,
            total_bytes: 30_000,
            ..CacheLimits::default()
        };
        let cache = RequestCache::<CertificateRequest>::new(
            Owner::new("node-1"),
            limits,
            1,
            Metrics::detached(),
        );
        let heavy = |name: &str, namespace: &str, ca: usize| {
            let mut cr = in_namespace(name, namespace);
            cr.status = Some(CertificateRequestStatus {
                ca: Some(ByteString(vec![b'A'; ca])),
                ..Default::default()
            });
            cr
        };
        for i in 0..5 {
            cache.apply(Event::Apply(heavy(&format!("t{i}"), "tenant", 8_000)));
        }
        assert_eq!(cache.len(), 2, "two 8 kB copies fit the tenant's 20 kB");
        assert_eq!(cache.dropped(), (0, 3));
        // An update that makes a cached copy heavier than the budget drops it.
        cache.apply(Event::Apply(heavy("t0", "tenant", 15_000)));
        assert!(cache.get(&("tenant".into(), request_name("t0"))).is_none());
        // The honest namespace has its own share, within the node's total.
        cache.apply(Event::Apply(heavy("h0", "honest", 8_000)));
        assert!(cache.get(&("honest".into(), request_name("h0"))).is_some());
        cache.apply(Event::Apply(heavy("h1", "honest", 20_000)));
        assert!(
            cache.get(&("honest".into(), request_name("h1"))).is_none(),
            "over the node's total"
        );
        // A deletion gives its bytes back.
        cache.apply(Event::Delete(heavy("t1", "tenant", 8_000)));
        cache.apply(Event::Apply(heavy("t7", "tenant", 8_000)));
        assert!(cache.get(&("tenant".into(), request_name("t7"))).is_some());
    }

    #[test]
    fn certificate_signing_requests_count_against_the_pods_namespace() {
        use crate::issuer::kubecsr::resource::{self as csr, tests::signer};
        let limits = CacheLimits {
            per_namespace: 2,
            total: 100,
            ..CacheLimits::default()
        };
        let cache =
            RequestCache::<k8s_openapi::api::certificates::v1::CertificateSigningRequest>::new(
                Owner::new("node-1"),
                limits,
                1,
                Metrics::detached(),
            );
        let req = resource::tests::issue_request(resource::tests::cert_request());
        for (i, namespace) in ["shop", "shop", "shop", "bank"].iter().enumerate() {
            let mut object = csr::build(&req, &signer(), "node-1");
            object.metadata.name = Some(request_name(&format!("v{i}")));
            object
                .metadata
                .labels
                .as_mut()
                .unwrap()
                .insert(csr::LABEL_NAMESPACE.into(), (*namespace).into());
            cache.apply(Event::Apply(object));
        }
        assert_eq!(cache.len(), 3);
        assert_eq!(cache.dropped(), (0, 1));
        assert!(cache.get(&(String::new(), request_name("v3"))).is_some());
        // Relabelled into the full namespace: no longer cached, and its waiters are told.
        let rx = cache.subscribe();
        let mut moved = csr::build(&req, &signer(), "node-1");
        moved.metadata.name = Some(request_name("v3"));
        cache.apply(Event::Apply(moved));
        assert!(woke(&rx));
        assert!(cache.get(&(String::new(), request_name("v3"))).is_none());
        assert!(cache.deleted(&(String::new(), request_name("v3")), rx.since, None));
    }

    #[test]
    fn the_cache_keeps_a_small_copy_of_what_issuance_reads() {
        let cert = resource::tests::cert_request();
        let key = crate::x509::keys::PrivateKey::generate(cert.key_algorithm).unwrap();
        let csr = crate::x509::keys::build_csr(&cert, &key).unwrap();
        let mut req = resource::tests::issue_request(cert);
        (req.csr_pem, req.csr_der) = (csr.pem, csr.der);
        let mut object = resource::build(&req, "node-1");
        let padding = "x".repeat(256 * 1024);
        object
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert("example.com/padding".into(), padding.clone());
        object
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .insert("example.com/l".into(), "y".repeat(63));
        object.metadata.uid = Some("uid-1".into());
        object.metadata.resource_version = Some("42".into());
        object.status = Some(CertificateRequestStatus {
            conditions: vec![Condition {
                type_: "Ready".into(),
                status: "False".into(),
                reason: Some("Pending".into()),
                message: Some(padding.clone()),
                last_transition_time: None,
            }],
            certificate: Some(ByteString(b"LEAF".to_vec())),
            ca: Some(ByteString(vec![b'A'; crate::x509::pki::MAX_PEM_BYTES + 1])),
            ..Default::default()
        });
        let cached = object.cached();
        assert_eq!(cached.name, req.name);
        assert_eq!(cached.namespace, "shop");
        assert_eq!(cached.uid.as_deref(), Some("uid-1"));
        assert_eq!(cached.resource_version.as_deref(), Some("42"));
        assert_eq!(cached.request_key, request_key_of_der(&req.csr_der));
        assert!(cached.request_key.is_some());
        assert_eq!(cached.certificate, Some(Pem::Text(b"LEAF".to_vec())));
        assert_eq!(
            cached.ca,
            Some(Pem::TooLarge(crate::x509::pki::MAX_PEM_BYTES + 1)),
            "only the size of an oversized field is kept"
        );
        let message = cached.conditions[0].message.as_deref().unwrap();
        assert!(message.len() <= MAX_MESSAGE + 3 && message.ends_with('…'));
        // Everything the cache holds of a 512 KiB object.
        let held = cached.name.len()
            + cached.namespace.len()
            + cached
                .conditions
                .iter()
                .map(|c| {
                    c.type_.len()
                        + c.status.len()
                        + c.reason.as_ref().map_or(0, String::len)
                        + c.message.as_ref().map_or(0, String::len)
                })
                .sum::<usize>()
            + 4
            + 32;
        assert!(held < 2048, "{held} bytes");
    }

    #[test]
    fn a_watch_per_namespace_is_healthy_once_all_have_listed_and_relists_only_its_own() {
        let cache = RequestCache::<CertificateRequest>::new(
            Owner::new("node-1"),
            CacheLimits::default(),
            2,
            Metrics::detached(),
        );
        cache.apply_from(0, Event::Init);
        cache.apply_from(0, Event::InitApply(in_namespace("a", "shop")));
        cache.apply_from(0, Event::InitDone);
        assert!(!cache.healthy(), "the second namespace has not listed yet");
        cache.apply_from(1, Event::Init);
        cache.apply_from(1, Event::InitApply(in_namespace("b", "bank")));
        cache.apply_from(1, Event::InitDone);
        assert!(cache.healthy());
        let recoveries = cache.recoveries();
        cache.stream_failed(1);
        assert!(!cache.healthy());
        // The second namespace relists empty: only its object is gone.
        cache.apply_from(1, Event::Init);
        cache.apply_from(1, Event::InitDone);
        assert!(cache.healthy());
        assert!(recoveries.has_changed().unwrap());
        assert!(cache.get(&("shop".into(), request_name("a"))).is_some());
        assert!(cache.get(&("bank".into(), request_name("b"))).is_none());
    }
}
