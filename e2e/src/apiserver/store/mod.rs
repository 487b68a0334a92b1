//! The in-memory object store: one global resourceVersion counter, a retained event log for
//! resumable watches, admission (metadata rules, CRD schema, cert-manager webhook), finalizers
//! and owner-reference garbage collection.

mod create;
mod modify;

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{Value, json};
use tokio::sync::broadcast;

use super::schema::{Schema, SchemaError};
use super::selector::{FieldSelector, LabelSelector};
use super::versions::{KubeVersion, ServedApis};
use super::{ApiError, EventType, Kind, WatchEvent};

/// The parts of `DeleteOptions` this server honours.
#[derive(Clone, Debug, Default)]
pub struct DeleteOptions {
    /// `preconditions.uid`
    pub uid: Option<String>,
    /// `preconditions.resourceVersion`
    pub resource_version: Option<String>,
    /// `propagationPolicy: Orphan`: dependents are not garbage-collected.
    pub orphan: bool,
}

/// How many events the log keeps before compacting, like etcd's compaction window.
const EVENT_LOG_CAPACITY: usize = 10_000;

struct Inner {
    rv: u64,
    objects: BTreeMap<(Kind, String, String), Value>,
    log: VecDeque<WatchEvent>,
    /// Watches may resume from this resourceVersion or later; earlier ones get 410 Gone.
    oldest_resumable: u64,
    conflicts_pending: usize,
    uid_counter: u64,
}

/// The in-memory object store with one global resourceVersion counter.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Mutex<Inner>>,
    tx: broadcast::Sender<WatchEvent>,
    schema: Arc<Schema>,
    /// What the server serves: in-process writes obey it as API writes do.
    apis: Arc<ServedApis>,
}

/// Where the real CertificateRequest CRD lives (beside the repository, in CI and here).
pub fn crd_path() -> PathBuf {
    Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/reference/cert-manager.io_certificaterequests.yaml"
    ))
    .to_path_buf()
}

static UID_SEED: AtomicU64 = AtomicU64::new(1);

fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap_or_else(|_| time::OffsetDateTime::now_utc());
    now.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

impl Store {
    /// A store validating CertificateRequests against the CRD at [`crd_path`], serving what the
    /// newest Kubernetes serves by default.
    pub fn new() -> Result<Store, SchemaError> {
        Ok(Store::with_schema(Schema::from_crd_file(
            &crd_path(),
            "v1",
        )?))
    }

    pub fn with_schema(schema: Schema) -> Store {
        Store::with_apis(schema, ServedApis::defaults(KubeVersion::NEWEST, true))
    }

    /// A store holding only what `apis` serves: an object of a kind or apiVersion not served
    /// cannot be written, in-process or over HTTP.
    pub fn with_apis(schema: Schema, apis: ServedApis) -> Store {
        let (tx, _) = broadcast::channel(4096);
        Store {
            inner: Arc::new(Mutex::new(Inner {
                rv: 1,
                objects: BTreeMap::new(),
                log: VecDeque::new(),
                oldest_resumable: 0,
                conflicts_pending: 0,
                uid_counter: UID_SEED.fetch_add(1 << 32, Ordering::Relaxed),
            })),
            tx,
            schema: Arc::new(schema),
            apis: Arc::new(apis),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent data (every mutation is applied at
        // once at the end), so a poisoned lock is safe to keep using.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current global resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.lock().rv
    }

    pub fn get(&self, kind: Kind, namespace: &str, name: &str) -> Option<Value> {
        self.lock()
            .objects
            .get(&(kind, namespace.to_string(), name.to_string()))
            .cloned()
    }

    /// Objects of `kind` (in `namespace`, or all), optionally filtered by a label selector. An
    /// unparsable selector matches nothing (the HTTP layer rejects it with 400 first).
    pub fn list(
        &self,
        kind: Kind,
        namespace: Option<&str>,
        label_selector: Option<&str>,
    ) -> Vec<Value> {
        let sel = match label_selector.map(LabelSelector::parse).transpose() {
            Ok(s) => s.unwrap_or_default(),
            Err(_) => return Vec::new(),
        };
        self.list_matching(kind, namespace, &sel, &FieldSelector::default())
            .1
    }

    /// Matching objects and the resourceVersion the list is consistent with.
    pub fn list_matching(
        &self,
        kind: Kind,
        namespace: Option<&str>,
        labels: &LabelSelector,
        fields: &FieldSelector,
    ) -> (u64, Vec<Value>) {
        let inner = self.lock();
        let items = inner
            .objects
            .iter()
            .filter(|((k, ns, _), _)| *k == kind && namespace.is_none_or(|n| n == ns))
            .map(|(_, v)| v)
            .filter(|v| labels.matches(v) && fields.matches(v))
            .cloned()
            .collect();
        (inner.rv, items)
    }

    /// Deletes an object (or, while it has finalizers, marks it with a deletionTimestamp), then
    /// garbage-collects its dependents. Returns the object as last stored.
    pub fn delete(&self, kind: Kind, namespace: &str, name: &str) -> Result<Value, ApiError> {
        self.delete_with(kind, namespace, name, &DeleteOptions::default())
    }

    /// DELETE with `DeleteOptions`: preconditions (uid and/or resourceVersion must still match)
    /// and `propagationPolicy: Orphan` (dependents survive).
    pub fn delete_with(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
        opts: &DeleteOptions,
    ) -> Result<Value, ApiError> {
        let mut inner = self.lock();
        let key = (kind, namespace.to_string(), name.to_string());
        let current = inner
            .objects
            .get(&key)
            .ok_or_else(|| ApiError::not_found(kind, name))?;
        for (field, want) in [
            ("uid", &opts.uid),
            ("resourceVersion", &opts.resource_version),
        ] {
            let have = current["metadata"][field].as_str().unwrap_or("");
            if let Some(want) = want
                && want != have
            {
                return Err(ApiError::Conflict {
                    resource: kind.qualified_resource(),
                    name: name.into(),
                    message: format!(
                        "Precondition failed: {field} in precondition: {want}, {field} in object meta: {have}"
                    ),
                });
            }
        }
        self.delete_locked(&mut inner, key, opts.orphan)
            .ok_or_else(|| ApiError::not_found(kind, name))
    }

    /// Removes the object now, or only marks it when finalizers remain (the finalizers' owners
    /// remove them; the last removal deletes the object, see [`Store::modify`]).
    fn delete_locked(
        &self,
        inner: &mut Inner,
        key: (Kind, String, String),
        orphan: bool,
    ) -> Option<Value> {
        let mut obj = inner.objects.get(&key)?.clone();
        let finalizers = obj
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_some_and(|f| !f.is_empty());
        if finalizers {
            if obj.pointer("/metadata/deletionTimestamp").is_some() {
                return Some(obj);
            }
            inner.rv += 1;
            obj["metadata"]["deletionTimestamp"] = json!(now_rfc3339());
            obj["metadata"]["deletionGracePeriodSeconds"] = json!(0);
            obj["metadata"]["resourceVersion"] = json!(inner.rv.to_string());
            inner.objects.insert(key.clone(), obj.clone());
            self.emit(inner, key.0, EventType::Modified, obj.clone());
            return Some(obj);
        }
        inner.objects.remove(&key);
        inner.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(inner.rv.to_string());
        self.emit(inner, key.0, EventType::Deleted, obj.clone());
        if !orphan && let Some(uid) = obj.pointer("/metadata/uid").and_then(Value::as_str) {
            self.collect_garbage(inner, uid);
        }
        Some(obj)
    }

    /// The garbage collector: dependents whose ownerReferences name a deleted owner go too (and
    /// theirs in turn). A real cluster does this asynchronously shortly after; doing it at once
    /// keeps tests deterministic, and watchers still see the owner's deletion first.
    fn collect_garbage(&self, inner: &mut Inner, owner_uid: &str) {
        let owned: Vec<_> = inner
            .objects
            .iter()
            .filter(|(_, v)| {
                v.pointer("/metadata/ownerReferences")
                    .and_then(Value::as_array)
                    .is_some_and(|refs| {
                        refs.iter()
                            .any(|r| r.get("uid").and_then(Value::as_str) == Some(owner_uid))
                    })
            })
            .map(|(k, _)| k.clone())
            .collect();
        for key in owned {
            self.delete_locked(inner, key, false);
        }
    }

    fn emit(&self, inner: &mut Inner, kind: Kind, event_type: EventType, object: Value) {
        let ev = WatchEvent {
            kind,
            event_type,
            object,
        };
        inner.log.push_back(ev.clone());
        while inner.log.len() > EVENT_LOG_CAPACITY {
            if let Some(old) = inner.log.pop_front() {
                inner.oldest_resumable = old.resource_version();
            }
        }
        // No receivers is fine: nobody is watching.
        let _ = self.tx.send(ev);
    }

    /// In-process controllers (the signer) subscribe to every change.
    pub fn subscribe(&self) -> broadcast::Receiver<WatchEvent> {
        self.tx.subscribe()
    }

    /// Where a watch from `since` (non-zero) starts: the retained events newer than it plus a receiver for
    /// what follows, taken under one lock so nothing falls between them. `Err` when `since` has
    /// been compacted away (the 410 case).
    pub fn watch_from(
        &self,
        since: u64,
    ) -> Result<(Vec<WatchEvent>, broadcast::Receiver<WatchEvent>), ApiError> {
        let inner = self.lock();
        if since < inner.oldest_resumable {
            return Err(ApiError::Gone(format!(
                "too old resource version: {since} ({})",
                inner.oldest_resumable
            )));
        }
        let backlog = inner
            .log
            .iter()
            .filter(|e| e.resource_version() > since)
            .cloned()
            .collect();
        Ok((backlog, self.tx.subscribe()))
    }

    /// Current objects as synthetic ADDED events plus a receiver for later changes (watches
    /// without a resourceVersion, or with "0", start with the current state).
    pub fn watch_current(
        &self,
        kind: Kind,
    ) -> (u64, Vec<WatchEvent>, broadcast::Receiver<WatchEvent>) {
        let inner = self.lock();
        let events = inner
            .objects
            .iter()
            .filter(|((k, _, _), _)| *k == kind)
            .map(|((k, _, _), v)| WatchEvent {
                kind: *k,
                event_type: EventType::Added,
                object: v.clone(),
            })
            .collect();
        (inner.rv, events, self.tx.subscribe())
    }

    /// Forgets the event history: every resourceVersion issued so far becomes too old to resume
    /// from. The revision advances, as etcd's does past a compaction, so a list made afterwards
    /// returns a resourceVersion that a new watch can start from.
    pub fn expire_history(&self) {
        let mut inner = self.lock();
        inner.log.clear();
        inner.rv += 1;
        inner.oldest_resumable = inner.rv;
    }

    pub(super) fn add_conflicts(&self, n: usize) {
        self.lock().conflicts_pending += n;
    }
}
