//! One node-scoped watch on the issuer's request objects (cert-manager CertificateRequests or
//! Kubernetes CertificateSigningRequests) feeding an in-memory cache that issuances wait on.
//!
//! Every issuance on the node shares this single watch (selected by the `certvol.io/node` label),
//! so waiting costs no GETs or LISTs of its own: an issuance creates its request and then waits for
//! the cache to show a final status.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::StreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::issuer::{IssueError, Issued};

/// `(namespace, name)` of a request; the namespace is empty for cluster-scoped kinds.
pub type Key = (String, String);

fn key_of<R: Resource>(cr: &R) -> Option<Key> {
    let meta = cr.meta();
    Some((
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone()?,
    ))
}

struct State<R> {
    live: HashMap<Key, R>,
    /// Objects listed since the watcher's last `Init`: the watcher relists after a 410 Gone or a
    /// reconnect, and what the relist does not contain was deleted meanwhile.
    relist: Option<HashMap<Key, R>>,
    /// Whether a full list has completed at least once (for timeout diagnostics).
    synced: bool,
    /// Whether the last thing the watch stream yielded was an error (API server unreachable,
    /// RBAC withdrawn): cleared by the next event, which only arrives once the server answers.
    failing: bool,
    /// Whether the watch failed since its last complete list: the next complete list is a
    /// recovery (see [`RequestCache::recoveries`]).
    failed_since_list: bool,
    /// Recently deleted requests: key → (change number of the deletion, uid). A waiter may wake
    /// only after both the ADDED and the DELETED event of its request were applied (the change
    /// counter coalesces), so "absent now" alone cannot tell "not seen yet" from "already gone".
    tombstones: HashMap<Key, (u64, Option<String>)>,
    tombstone_order: VecDeque<Key>,
}

impl<R> Default for State<R> {
    fn default() -> Self {
        State {
            live: HashMap::new(),
            relist: None,
            synced: false,
            failing: false,
            failed_since_list: false,
            tombstones: HashMap::new(),
            tombstone_order: VecDeque::new(),
        }
    }
}

/// How many deletions are remembered; waiters look them up within moments of the event.
const TOMBSTONES: usize = 1024;

impl<R: Resource> State<R> {
    fn bury(&mut self, key: Key, change: u64, cr: &R) {
        if self.tombstone_order.len() >= TOMBSTONES
            && let Some(old) = self.tombstone_order.pop_front()
        {
            self.tombstones.remove(&old);
        }
        self.tombstones
            .insert(key.clone(), (change, cr.meta().uid.clone()));
        self.tombstone_order.push_back(key);
    }
}

/// The cache of this node's requests plus a change counter waiters subscribe to.
pub struct RequestCache<R> {
    state: Mutex<State<R>>,
    changes: watch::Sender<u64>,
    /// Counts completed lists that followed a failure: the API server answers again.
    recoveries: watch::Sender<u64>,
}

/// A waiter's view of the change counter, taken before its request was created.
pub struct Subscription {
    changes: watch::Receiver<u64>,
    since: u64,
}

/// How waiting for a request ended.
#[derive(Debug)]
pub enum Waited<R> {
    /// The check function returned a final result.
    Done(Result<Issued, IssueError>),
    /// The request was in the cache and then disappeared (deleted, e.g. garbage-collected).
    Deleted,
    /// No final result in time. Carries the last version seen, if any.
    TimedOut { last: Option<Box<R>>, synced: bool },
}

impl<R: Resource + Clone> RequestCache<R> {
    pub fn new() -> Arc<Self> {
        Arc::new(RequestCache {
            state: Mutex::new(State::default()),
            changes: watch::Sender::new(0),
            recoveries: watch::Sender::new(0),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State<R>> {
        // A panic while holding the lock leaves plain maps behind, which are still consistent
        // enough to serve: the next relist replaces them anyway.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Subscribe before creating a request, so that a change between the create and the first
    /// look at the cache still wakes the waiter, and a deletion after this point is recognised.
    pub fn subscribe(&self) -> Subscription {
        let changes = self.changes.subscribe();
        let since = *changes.borrow();
        Subscription { changes, since }
    }

    pub fn get(&self, key: &Key) -> Option<R> {
        self.lock().live.get(key).cloned()
    }

    pub fn len(&self) -> usize {
        self.lock().live.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lock().live.is_empty()
    }

    /// Whether the watch is serving: it has listed once and its latest attempt did not fail.
    /// This is the cert-manager part of the node's readiness.
    pub fn healthy(&self) -> bool {
        let state = self.lock();
        state.synced && !state.failing
    }

    /// Records that the watch stream failed; the watcher retries with backoff.
    pub fn watch_failed(&self) {
        let mut state = self.lock();
        state.failing = true;
        state.failed_since_list = true;
    }

    /// Changes each time the watch completes a list after having failed, i.e. when the API
    /// server answers again after an outage. Work that backed off because the API was down (failed
    /// renewals) can be retried at once instead of sleeping out its backoff.
    pub fn recoveries(&self) -> watch::Receiver<u64> {
        self.recoveries.subscribe()
    }

    /// Applies one watcher event and wakes waiters.
    pub fn apply(&self, event: Event<R>) {
        // managedFields can outweigh the rest of the object and nothing here reads them.
        let event = event.modify(|cr| cr.meta_mut().managed_fields = None);
        // The number this change will carry once sent: only `apply` moves the counter, and only
        // the single watch loop calls it, so reading it first is exact.
        let change = self.changes.borrow().wrapping_add(1);
        let mut recovered = false;
        {
            let mut state = self.lock();
            // The watcher yields `Init` before it sends its list request; everything else
            // carries an answer from the API server.
            if !matches!(event, Event::Init) {
                state.failing = false;
            }
            match event {
                Event::Init => state.relist = Some(HashMap::new()),
                Event::InitApply(cr) => {
                    if let Some(key) = key_of(&cr) {
                        // Listed objects are current, so they go live at once: a result that lands
                        // during a long relist is seen without waiting for InitDone.
                        if let Some(relist) = state.relist.as_mut() {
                            relist.insert(key.clone(), cr.clone());
                        }
                        state.live.insert(key, cr);
                    }
                }
                Event::InitDone => {
                    if let Some(relist) = state.relist.take() {
                        // Whatever the relist lacks was deleted while the watch was down.
                        let old = std::mem::replace(&mut state.live, relist);
                        for (key, cr) in old {
                            if !state.live.contains_key(&key) {
                                state.bury(key, change, &cr);
                            }
                        }
                    }
                    state.synced = true;
                    recovered = std::mem::take(&mut state.failed_since_list);
                }
                Event::Apply(cr) => {
                    if let Some(key) = key_of(&cr) {
                        if let Some(relist) = state.relist.as_mut() {
                            relist.insert(key.clone(), cr.clone());
                        }
                        state.live.insert(key, cr);
                    }
                }
                Event::Delete(cr) => {
                    if let Some(key) = key_of(&cr) {
                        if let Some(relist) = state.relist.as_mut() {
                            relist.remove(&key);
                        }
                        state.live.remove(&key);
                        state.bury(key, change, &cr);
                    }
                }
            }
        }
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
        if recovered {
            self.recoveries.send_modify(|n| *n = n.wrapping_add(1));
        }
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

    /// Waits up to `timeout` for `check` to return a final result for `key`, looking at the cache
    /// first (the result may already be there) and then after every change. `subscription` must
    /// be taken before the request is created; `uid` is the created object's, if known.
    pub async fn wait<F>(
        &self,
        key: &Key,
        subscription: Subscription,
        uid: Option<String>,
        timeout: Duration,
        check: F,
    ) -> Waited<R>
    where
        F: Fn(&R) -> Option<Result<Issued, IssueError>>,
    {
        let Subscription { mut changes, since } = subscription;
        let mut uid = uid;
        let mut last: Option<R> = None;
        let waiting = async {
            loop {
                changes.borrow_and_update();
                match self.get(key) {
                    Some(cr) => {
                        if let Some(result) = check(&cr) {
                            return Waited::Done(result);
                        }
                        if uid.is_none() {
                            uid = cr.meta().uid.clone();
                        }
                        last = Some(cr);
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
                synced: self.lock().synced,
            },
        }
    }
}

/// Runs the node's watch until the process ends: lists and watches every request of `R`
/// matching `selector` cluster-wide, relisting after 410 Gone.
///
/// After an error the watch starts over with a fresh list once a backoff has passed, instead of
/// letting the watcher resume its watch: a resumed watch yields nothing until a request changes,
/// so only a completed relist proves the API server answers again (readiness depends on it).
pub async fn run<R>(api: Api<R>, selector: String, cache: Arc<RequestCache<R>>)
where
    R: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    R::DynamicType: Default,
{
    let kind = R::kind(&R::DynamicType::default()).into_owned();
    info!(%selector, %kind, "watching requests");
    let mut failures: u32 = 0;
    loop {
        let config = watcher::Config::default().labels(&selector);
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
                    cache.apply(event);
                }
                Err(error) => {
                    // Waiters keep waiting: results that arrive meanwhile show up in the relist.
                    cache.watch_failed();
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

/// Backoff before relisting after `failures` consecutive failed attempts (at least 1): 1 s
/// doubling to 30 s, shortened by up to a fifth at random (`jitter` in [0, 1)) so that the nodes
/// of a cluster do not relist in lockstep after an API server outage.
pub fn retry_delay(failures: u32, jitter: f64) -> Duration {
    let exp = failures.saturating_sub(1).min(5);
    let base = Duration::from_secs(1u64 << exp).min(Duration::from_secs(30));
    base.mul_f64(1.0 - 0.2 * jitter.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::issuer::certmanager::resource::{
        self, CertificateRequest, CertificateRequestStatus, Condition,
    };
    use k8s_openapi::ByteString;

    fn cr(name: &str, ready: Option<(&str, &str)>) -> CertificateRequest {
        let mut cr = resource::build(
            &resource::tests::issue_request(resource::tests::cert_request()),
            "node-1",
        );
        cr.metadata.name = Some(name.into());
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
    ) -> tokio::task::JoinHandle<Waited<CertificateRequest>> {
        let cache = cache.clone();
        tokio::spawn(async move {
            cache
                .wait(
                    &key("a"),
                    rx,
                    None,
                    Duration::from_secs(5),
                    resource::outcome,
                )
                .await
        })
    }

    fn key(name: &str) -> Key {
        ("shop".into(), name.into())
    }

    #[tokio::test]
    async fn a_result_already_in_the_cache_is_returned_at_once() {
        let cache = RequestCache::new();
        cache.apply(Event::Apply(cr("a", Some(("True", "Issued")))));
        let waited = cache
            .wait(
                &key("a"),
                cache.subscribe(),
                None,
                Duration::from_secs(5),
                resource::outcome,
            )
            .await;
        assert!(
            matches!(waited, Waited::Done(Ok(ref i)) if i.chain_pem == "LEAF"),
            "{waited:?}"
        );
    }

    #[tokio::test]
    async fn waiters_wake_on_later_changes() {
        let cache = RequestCache::new();
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
        let cache = RequestCache::new();
        cache.apply(Event::Apply(cr("a", None)));
        let rx = cache.subscribe();
        let waiter = spawn_wait_for_a(&cache, rx);
        tokio::task::yield_now().await;
        cache.apply(Event::Delete(cr("a", None)));
        assert!(matches!(waiter.await.unwrap(), Waited::Deleted));
    }

    #[tokio::test]
    async fn a_deletion_coalesced_with_the_creation_is_still_seen() {
        let cache = RequestCache::new();
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
                resource::outcome,
            )
            .await;
        assert!(matches!(waited, Waited::Deleted), "{waited:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn an_older_deletion_of_the_same_name_is_not_ours() {
        let cache = RequestCache::new();
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
                resource::outcome,
            )
            .await;
        assert!(matches!(waited, Waited::TimedOut { .. }), "{waited:?}");
        let waited = cache
            .wait(
                &key("a"),
                cache.subscribe(),
                None,
                Duration::from_secs(5),
                resource::outcome,
            )
            .await;
        assert!(matches!(waited, Waited::TimedOut { .. }), "{waited:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn timeout_reports_the_last_status_seen() {
        let cache = RequestCache::new();
        cache.apply(Event::Apply(cr("a", Some(("False", "Pending")))));
        let waited = cache
            .wait(
                &key("a"),
                cache.subscribe(),
                None,
                Duration::from_secs(30),
                resource::outcome,
            )
            .await;
        match waited {
            Waited::TimedOut {
                last: Some(last),
                synced,
            } => {
                assert!(!synced);
                assert_eq!(last.metadata.name.as_deref(), Some("a"));
            }
            other => panic!("{other:?}"),
        }
        let waited = cache
            .wait(
                &key("never"),
                cache.subscribe(),
                None,
                Duration::from_secs(30),
                resource::outcome,
            )
            .await;
        assert!(matches!(waited, Waited::TimedOut { last: None, .. }));
    }

    #[test]
    fn retry_delay_doubles_to_thirty_seconds_and_jitter_only_shortens() {
        let table = [
            (1, 0.0, 1_000),
            (2, 0.0, 2_000),
            (3, 0.0, 4_000),
            (5, 0.0, 16_000),
            (6, 0.0, 30_000),
            (40, 0.0, 30_000),
            (1, 0.5, 900),
            (6, 0.999_999, 24_000),
        ];
        for (failures, jitter, millis) in table {
            assert_eq!(
                retry_delay(failures, jitter).as_millis(),
                millis,
                "failures={failures} jitter={jitter}"
            );
        }
    }

    #[test]
    fn healthy_after_the_first_list_and_again_once_a_failed_watch_answers() {
        let cache = RequestCache::<CertificateRequest>::new();
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
        let cache = RequestCache::<CertificateRequest>::new();
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
        let cache = RequestCache::new();
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
        let cache = RequestCache::new();
        cache.apply(Event::Apply(cr("a", None)));
        let rx = cache.subscribe();
        let waiter = spawn_wait_for_a(&cache, rx);
        tokio::task::yield_now().await;
        cache.apply(Event::Init);
        cache.apply(Event::InitApply(cr("b", None)));
        cache.apply(Event::InitDone);
        assert!(matches!(waiter.await.unwrap(), Waited::Deleted));
    }
}
