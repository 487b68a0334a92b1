//! The in-memory object store: one global resourceVersion counter, a retained event log for
//! resumable watches, admission (metadata rules, CRD schema, cert-manager webhook), finalizers
//! and owner-reference garbage collection.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{Value, json};
use tokio::sync::broadcast;

use super::csr::{self, Subresource};
use super::schema::{Schema, SchemaError};
use super::selector::{FieldSelector, LabelSelector};
use super::storage;
use super::versions::{KubeVersion, ServedApis};
use super::{ApiError, EventType, FieldCause, Identity, Kind, WatchEvent, meta, trust, webhook};

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

    pub fn create(&self, kind: Kind, namespace: &str, obj: Value) -> Result<Value, ApiError> {
        self.create_as(kind, namespace, obj, &Identity::default_service_account())
    }

    /// Create as `who` (the identity the webhook records in a CertificateRequest's spec).
    pub fn create_as(
        &self,
        kind: Kind,
        namespace: &str,
        mut obj: Value,
        who: &Identity,
    ) -> Result<Value, ApiError> {
        // Cluster-scoped objects have no namespace: the apiserver clears one sent in the body.
        let namespace = if kind.namespaced() { namespace } else { "" };
        let Some(map) = obj.as_object_mut() else {
            return Err(ApiError::BadRequest(
                "the body must be a JSON object".into(),
            ));
        };
        // Written in-process without an apiVersion: the version a client would write through.
        // One the server does not serve cannot be written (a client would get the 404).
        if !map.contains_key("apiVersion") {
            let preferred = self
                .apis
                .preferred_api_version(kind)
                .ok_or(ApiError::NoRoute)?;
            map.insert("apiVersion".into(), json!(preferred));
        }
        match map.get("apiVersion").and_then(Value::as_str) {
            Some(v) if self.apis.serves_kind_in(kind, v) => {}
            _ => return Err(ApiError::NoRoute),
        }
        match map.get("kind").and_then(Value::as_str) {
            None => {
                map.insert("kind".into(), json!(kind.kind_name()));
            }
            Some(k) if k == kind.kind_name() => {}
            Some(k) => {
                return Err(ApiError::BadRequest(format!(
                    "the kind of the provided object ({k}) does not match the resource ({})",
                    kind.plural()
                )));
            }
        }
        let meta = map
            .entry("metadata")
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .ok_or_else(|| ApiError::BadRequest("metadata must be an object".into()))?;
        match meta.get("namespace").and_then(Value::as_str) {
            // Cluster-scoped objects have no namespace: the apiserver clears whatever was sent.
            _ if !kind.namespaced() => {
                meta.remove("namespace");
            }
            None | Some("") => {
                meta.insert("namespace".into(), json!(namespace));
            }
            Some(ns) if ns == namespace => {}
            Some(_) => {
                return Err(ApiError::BadRequest(
                    "the namespace of the provided object does not match the namespace sent on the request".into(),
                ));
            }
        }
        if meta
            .get("resourceVersion")
            .and_then(Value::as_str)
            .is_some_and(|s| !s.is_empty())
        {
            return Err(ApiError::Internal(
                "resourceVersion should not be set on objects to be created".into(),
            ));
        }
        for server_set in [
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "generation",
            "managedFields",
            "selfLink",
        ] {
            meta.remove(server_set);
        }
        let generate = meta
            .get("generateName")
            .and_then(Value::as_str)
            .map(str::to_string);
        let name_given = meta
            .get("name")
            .and_then(Value::as_str)
            .is_some_and(|n| !n.is_empty());
        let mut inner = self.lock();
        if !name_given {
            match generate {
                Some(mut prefix) if !prefix.is_empty() => {
                    // As the apiserver does: the prefix is cut so prefix + suffix fit 63.
                    while prefix.len() > 58 {
                        prefix.pop();
                    }
                    let suffix = random_suffix(&mut inner.uid_counter);
                    meta.insert("name".into(), json!(format!("{prefix}{suffix}")));
                }
                _ => {
                    return Err(ApiError::invalid(
                        kind,
                        "",
                        vec![FieldCause::required("metadata.name")],
                    ));
                }
            }
        }
        let name = meta
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let mut causes = meta::validate(&Value::Object(meta.clone()));
        if matches!(kind, Kind::ClusterTrustBundle | Kind::CsiDriver) {
            // Their names follow their own rules (signer prefixes contain ':'; CSI driver names
            // allow '_'), checked by admission.
            causes.retain(|c| c.field != "metadata.name");
        }
        if kind == Kind::CertificateRequest {
            // The status subresource makes create ignore any status the client sent.
            map.remove("status");
            webhook::mutate_create(&mut obj, who);
            causes.extend(self.schema.prune_and_validate(&mut obj));
            if causes.is_empty() {
                causes.extend(webhook::validate_create(&obj));
            }
        }
        if trust::handles(kind) {
            causes.extend(trust::admit(kind, None, &mut obj)?);
        }
        if kind == Kind::CertificateSigningRequest {
            csr::prepare_create(&mut obj, who);
            causes.extend(csr::validate(&obj));
        }
        if kind == Kind::CsiDriver {
            causes.extend(storage::admit_csidriver(&mut obj)?);
        }
        if !causes.is_empty() {
            return Err(ApiError::invalid(kind, &name, causes));
        }
        let namespace = if kind.namespaced() { namespace } else { "" };
        let key = (kind, namespace.to_string(), name.clone());
        if inner.objects.contains_key(&key) {
            return Err(ApiError::AlreadyExists {
                resource: kind.qualified_resource(),
                name,
            });
        }
        inner.uid_counter += 1;
        let uid = uuid_like(inner.uid_counter);
        inner.rv += 1;
        let rv = inner.rv;
        let meta = &mut obj["metadata"];
        meta["uid"] = json!(uid);
        meta["creationTimestamp"] = json!(now_rfc3339());
        meta["resourceVersion"] = json!(rv.to_string());
        meta["generation"] = json!(1);
        inner.objects.insert(key, obj.clone());
        self.emit(&mut inner, kind, EventType::Added, obj.clone());
        Ok(obj)
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

    /// Status subresource update as a controller does it: `f` receives the whole current object
    /// and mutates its `.status` (changes anywhere else are discarded, as the status endpoint
    /// ignores them). Bumps resourceVersion, emits Modified, validates against the schema and the
    /// webhook's immutability rules (an Approved/Denied condition once set cannot change).
    pub fn update_status(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
        f: impl FnOnce(&mut Value),
    ) -> Result<Value, ApiError> {
        self.modify(kind, namespace, name, true, |current| {
            let mut next = current.clone();
            f(&mut next);
            Ok(next)
        })
    }

    /// PUT semantics: `obj` replaces the stored object. With `status_only` only `.status` is
    /// taken from `obj` (the status subresource), otherwise everything but `.status`. A non-empty
    /// `metadata.resourceVersion` in `obj` must match the stored one (optimistic concurrency).
    pub fn replace(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
        obj: Value,
        status_only: bool,
    ) -> Result<Value, ApiError> {
        self.modify(kind, namespace, name, status_only, |_| Ok(obj))
    }

    /// Read-modify-write under one lock, as the apiserver applies a PATCH: `f` turns the current
    /// object into the new one, which then goes through the same rules as [`Store::replace`].
    pub fn modify(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
        status_only: bool,
        f: impl FnOnce(&Value) -> Result<Value, ApiError>,
    ) -> Result<Value, ApiError> {
        let sub = if status_only {
            Subresource::Status
        } else {
            Subresource::Main
        };
        self.modify_sub(kind, namespace, name, sub, f)
    }

    /// [`Store::modify`] through a named endpoint: the main resource, `/status` or (for
    /// CertificateSigningRequests) `/approval`.
    pub fn modify_sub(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
        sub: Subresource,
        f: impl FnOnce(&Value) -> Result<Value, ApiError>,
    ) -> Result<Value, ApiError> {
        let status_only = sub == Subresource::Status;
        let namespace = if kind.namespaced() { namespace } else { "" };
        let mut inner = self.lock();
        if inner.conflicts_pending > 0 {
            inner.conflicts_pending -= 1;
            return Err(ApiError::conflict(kind, name));
        }
        let key = (kind, namespace.to_string(), name.to_string());
        let old = inner
            .objects
            .get(&key)
            .cloned()
            .ok_or_else(|| ApiError::not_found(kind, name))?;
        let mut obj = f(&old)?;
        if !obj.is_object() {
            return Err(ApiError::BadRequest(
                "the body must be a JSON object".into(),
            ));
        }
        if let Some(body_name) = obj.pointer("/metadata/name").and_then(Value::as_str)
            && body_name != name
        {
            return Err(ApiError::BadRequest(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        let sent_rv = obj
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .unwrap_or("");
        if !sent_rv.is_empty()
            && sent_rv != old["metadata"]["resourceVersion"].as_str().unwrap_or("")
        {
            return Err(ApiError::conflict(kind, name));
        }
        let mut new = if kind == Kind::CertificateSigningRequest {
            let mut n = csr::prepare_update(&old, &obj, sub);
            // Server-owned metadata survives any update (the strategy kept the rest as sent).
            if sub == Subresource::Main {
                keep_server_metadata(&old, &mut n);
            }
            n
        } else if sub == Subresource::Approval {
            return Err(ApiError::NotFound {
                resource: kind.qualified_resource(),
                name: format!("{name}/approval"),
            });
        } else if status_only {
            let mut n = old.clone();
            match obj.get_mut("status").map(Value::take) {
                Some(s) => n["status"] = s,
                None => {
                    if let Some(m) = n.as_object_mut() {
                        m.remove("status");
                    }
                }
            }
            n
        } else {
            let mut n = obj.clone();
            // Server-owned metadata survives any PUT; so does status behind a status subresource.
            keep_server_metadata(&old, &mut n);
            if kind == Kind::CertificateRequest {
                match old.get("status") {
                    Some(s) => n["status"] = s.clone(),
                    None => {
                        if let Some(m) = n.as_object_mut() {
                            m.remove("status");
                        }
                    }
                }
            }
            // Events may be rewritten through the other Event API (stored as written); every
            // other kind keeps the version it was created with.
            if kind != Kind::Event || !n["apiVersion"].is_string() {
                n["apiVersion"] = old["apiVersion"].clone();
            }
            n["kind"] = old["kind"].clone();
            n
        };
        let mut causes = match new.get("metadata") {
            Some(m) => meta::validate(m),
            None => Vec::new(),
        };
        if matches!(kind, Kind::ClusterTrustBundle | Kind::CsiDriver) {
            causes.retain(|c| c.field != "metadata.name");
        }
        if trust::handles(kind) {
            causes.extend(trust::admit(kind, Some(&old), &mut new)?);
        }
        if kind == Kind::CertificateRequest {
            causes.extend(self.schema.prune_and_validate(&mut new));
            causes.extend(webhook::validate_update(&old, &new));
        }
        if kind == Kind::CertificateSigningRequest {
            causes.extend(csr::validate_update(&old, &new));
        }
        if kind == Kind::CsiDriver {
            causes.extend(storage::admit_csidriver(&mut new)?);
        }
        if old.pointer("/metadata/deletionTimestamp").is_some() {
            let had = old
                .pointer("/metadata/finalizers")
                .and_then(Value::as_array);
            let added = new
                .pointer("/metadata/finalizers")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .any(|f| !had.is_some_and(|h| h.contains(f)));
            if added {
                causes.push(FieldCause::forbidden(
                    "metadata.finalizers",
                    "no new finalizers can be added if the object is being deleted",
                ));
            }
        }
        if !causes.is_empty() {
            return Err(ApiError::invalid(kind, name, causes));
        }
        if new == old {
            // A no-op update does not bump the resourceVersion or wake watchers.
            return Ok(old);
        }
        let deleting = new.pointer("/metadata/deletionTimestamp").is_some();
        let finalizers_left = new
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_some_and(|f| !f.is_empty());
        if deleting && !finalizers_left {
            // The last finalizer is gone: the pending deletion completes now.
            inner.objects.insert(key.clone(), new);
            return self
                .delete_locked(&mut inner, key, false)
                .ok_or_else(|| ApiError::not_found(kind, name));
        }
        inner.rv += 1;
        new["metadata"]["resourceVersion"] = json!(inner.rv.to_string());
        if old.get("spec") != new.get("spec") {
            let g = old["metadata"]["generation"].as_u64().unwrap_or(1);
            new["metadata"]["generation"] = json!(g + 1);
        }
        inner.objects.insert(key, new.clone());
        self.emit(&mut inner, kind, EventType::Modified, new.clone());
        Ok(new)
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

fn uuid_like(n: u64) -> String {
    let h = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        (h >> 32) as u32,
        (h >> 16) as u16,
        (h & 0xfff) as u16,
        (n & 0xfff) as u16,
        n & 0xffff_ffff_ffff
    )
}

/// The 5-character suffix generateName appends (apiserver's alphabet avoids vowels and lookalikes).
fn random_suffix(counter: &mut u64) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    *counter += 1;
    let mut x = counter.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ rand::random::<u64>();
    (0..5)
        .map(|_| {
            let c = ALPHABET[(x % ALPHABET.len() as u64) as usize] as char;
            x /= ALPHABET.len() as u64;
            c
        })
        .collect()
}

/// Restores the metadata only the server sets on `new` from `old`: identity and bookkeeping
/// fields, and the deletion marks that only a DELETE sets (an update can neither set nor clear
/// them). A field `old` lacks is removed.
fn keep_server_metadata(old: &Value, new: &mut Value) {
    const SERVER_OWNED: [&str; 8] = [
        "uid",
        "creationTimestamp",
        "generation",
        "name",
        "namespace",
        "resourceVersion",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
    ];
    let Some(meta) = new["metadata"].as_object_mut() else {
        return;
    };
    for f in SERVER_OWNED {
        match old["metadata"].get(f) {
            Some(v) => {
                meta.insert(f.into(), v.clone());
            }
            None => {
                meta.remove(f);
            }
        }
    }
}
