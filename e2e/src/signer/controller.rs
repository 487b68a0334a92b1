//! The controller loop: watches CertificateRequests and drives each through approval and
//! signing, writing through the status subresource.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::Value;
use time::OffsetDateTime;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};

use super::ca::{Ca, sign_step};
use super::plan::{Plan, plan};
use super::status::{Step, apply_step, rfc3339, step_allowed};
use super::{Approval, PENDING_MESSAGE, Policy, SignerConfig, SignerError};
use crate::apiserver::{ApiError, EventType, Kind, Store};

/// The running approver + CA issuer. Stops (with any delayed signings) when dropped.
pub struct Signer {
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Signer {
    /// Spawns the controller loop on `store` (call it inside a tokio runtime). Requests already
    /// in the store are processed too. Panics if the CA cannot be generated (a harness cannot
    /// run without one); see [`Signer::try_start`].
    pub fn start(store: Store, cfg: SignerConfig) -> Signer {
        match Signer::try_start(store, cfg) {
            Ok(s) => s,
            Err(e) => panic!("cannot start the cert-manager stand-in: {e}"),
        }
    }

    pub fn try_start(store: Store, cfg: SignerConfig) -> Result<Signer, SignerError> {
        let shared = Arc::new(Shared {
            ca: Mutex::new(Arc::new(Ca::generate(1)?)),
            generation: AtomicUsize::new(1),
            delay: Mutex::new(cfg.delay),
            fail_signing: AtomicBool::new(cfg.fail_signing),
            policy: Mutex::new(cfg.policy),
            issuers: cfg.issuers,
            omit_ca: cfg.omit_ca,
            signed: AtomicUsize::new(0),
            in_flight: Mutex::new(HashSet::new()),
            silent: Mutex::new(HashSet::new()),
        });
        let task = tokio::spawn(run(store, shared.clone()));
        Ok(Signer { shared, task })
    }

    /// The current CA certificate (PEM).
    pub fn ca_pem(&self) -> String {
        lock(&self.shared.ca).pem().to_owned()
    }

    /// Replaces the CA with a fresh key and certificate; later signings use it.
    pub fn rotate_ca(&self) {
        if let Err(e) = self.try_rotate_ca() {
            panic!("cannot rotate the CA: {e}");
        }
    }

    pub fn try_rotate_ca(&self) -> Result<(), SignerError> {
        let generation = self.shared.generation.fetch_add(1, Ordering::SeqCst) + 1;
        let ca = Ca::generate(generation)?;
        *lock(&self.shared.ca) = Arc::new(ca);
        Ok(())
    }

    pub fn set_delay(&self, d: Duration) {
        *lock(&self.shared.delay) = d;
    }

    pub fn set_fail_signing(&self, on: bool) {
        self.shared.fail_signing.store(on, Ordering::SeqCst);
    }

    /// Replaces the approval policy; it decides requests not yet approved or denied.
    pub fn set_policy(&self, p: impl Fn(&Value) -> Approval + Send + Sync + 'static) {
        *lock(&self.shared.policy) = Arc::new(p);
    }

    /// Leaves `namespace`'s requests (from now on) untouched when `silent`: no approval, no
    /// status, as an issuer that never answers. Turned off, they are picked up at the next
    /// change to them.
    pub fn set_silent(&self, namespace: &str, silent: bool) {
        let mut set = lock(&self.shared.silent);
        if silent {
            set.insert(namespace.to_owned());
        } else {
            set.remove(namespace);
        }
    }

    /// How many certificates it has signed (and written).
    pub fn signed(&self) -> usize {
        self.shared.signed.load(Ordering::SeqCst)
    }
}

impl Drop for Signer {
    fn drop(&mut self) {
        // Aborting the loop drops its JoinSet, which aborts the delayed signings too.
        self.task.abort();
    }
}

struct Shared {
    ca: Mutex<Arc<Ca>>,
    generation: AtomicUsize,
    delay: Mutex<Duration>,
    fail_signing: AtomicBool,
    policy: Mutex<Policy>,
    issuers: Vec<String>,
    omit_ca: bool,
    signed: AtomicUsize,
    /// uids of requests a delayed signing holds, so their Pending writes do not start another.
    in_flight: Mutex<HashSet<String>>,
    /// Namespaces whose requests are left alone (never approved, never signed), as with an
    /// issuer that never answers.
    silent: Mutex<HashSet<String>>,
}

/// Poisoning only means a panic elsewhere; the data (a CA handle, a duration) is still sound.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// How long a failed status write waits before the request is reconciled again (cert-manager's
/// workqueue requeues with backoff; a short fixed delay keeps tests fast).
const REQUEUE_AFTER: Duration = Duration::from_millis(100);
/// Attempts a delayed signing makes to write its result before giving the request back.
const WRITE_ATTEMPTS: usize = 10;

/// The controller's context: the store, the shared settings, and the queue of requests to look at
/// again (requeued after a failed write or a delayed signing that could not write).
struct Ctx {
    store: Store,
    shared: Arc<Shared>,
    requeue: mpsc::UnboundedSender<(String, String)>,
}

async fn run(store: Store, shared: Arc<Shared>) {
    // Subscribe before listing: an object created between the two is then seen at least once.
    let mut events = store.subscribe();
    let (requeue, mut requeued) = mpsc::unbounded_channel();
    let ctx = Arc::new(Ctx {
        store,
        shared,
        requeue,
    });
    // Delayed signings and requeue timers; dropped (so aborted) with this task.
    let mut delayed: JoinSet<()> = JoinSet::new();
    resync(&ctx, &mut delayed);
    loop {
        tokio::select! {
            ev = events.recv() => match ev {
                Ok(ev) => {
                    if matches!(ev.kind, Kind::CertificateRequest)
                        && !matches!(ev.event_type, EventType::Deleted)
                        && let Some((ns, name)) = namespaced_name(&ev.object)
                    {
                        reconcile(&ctx, &ns, &name, &mut delayed);
                    }
                }
                Err(RecvError::Lagged(missed)) => {
                    tracing::debug!(missed, "signer lagged behind the watch; relisting");
                    resync(&ctx, &mut delayed);
                }
                Err(RecvError::Closed) => break,
            },
            Some((ns, name)) = requeued.recv() => reconcile(&ctx, &ns, &name, &mut delayed),
            Some(_) = delayed.join_next(), if !delayed.is_empty() => {}
        }
    }
}

fn namespaced_name(obj: &Value) -> Option<(String, String)> {
    let meta = obj.get("metadata")?;
    let name = meta.get("name")?.as_str()?.to_string();
    let ns = meta
        .get("namespace")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    Some((ns, name))
}

fn uid(obj: &Value) -> String {
    obj.pointer("/metadata/uid")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string()
}

fn resync(ctx: &Arc<Ctx>, delayed: &mut JoinSet<()>) {
    for obj in ctx.store.list(Kind::CertificateRequest, None, None) {
        if let Some((ns, name)) = namespaced_name(&obj) {
            reconcile(ctx, &ns, &name, delayed);
        }
    }
}

fn requeue_later(ctx: &Arc<Ctx>, ns: &str, name: &str, delayed: &mut JoinSet<()>) {
    let tx = ctx.requeue.clone();
    let key = (ns.to_string(), name.to_string());
    delayed.spawn(async move {
        tokio::time::sleep(REQUEUE_AFTER).await;
        let _ = tx.send(key);
    });
}

/// Drives one request as far as it can go now. Each write is followed by a fresh decision on
/// the written object, so progress does not depend on seeing our own watch events.
fn reconcile(ctx: &Arc<Ctx>, ns: &str, name: &str, delayed: &mut JoinSet<()>) {
    let shared = &ctx.shared;
    if lock(&shared.silent).contains(ns) {
        return;
    }
    let Some(mut obj) = ctx.store.get(Kind::CertificateRequest, ns, name) else {
        return;
    };
    // Approve, mark denied, pending, sign: at most a handful of writes per request.
    for _ in 0..4 {
        let id = uid(&obj);
        let policy = lock(&shared.policy).clone();
        let step = match plan(&obj, &shared.issuers, &policy) {
            Plan::Nothing => return,
            Plan::Write(step) => step,
            Plan::Sign => {
                if lock(&shared.in_flight).contains(&id) {
                    return;
                }
                let delay = *lock(&shared.delay);
                if delay.is_zero() {
                    let ca = lock(&shared.ca).clone();
                    let fail = shared.fail_signing.load(Ordering::SeqCst);
                    sign_step(&ca, &obj, fail, shared.omit_ca)
                } else {
                    lock(&shared.in_flight).insert(id.clone());
                    delayed.spawn(delayed_sign(
                        ctx.clone(),
                        ns.to_string(),
                        name.to_string(),
                        id.clone(),
                        delay,
                    ));
                    let pending = Step::Pending {
                        message: PENDING_MESSAGE.to_string(),
                    };
                    // A lost Pending write is harmless: the signing lands after the delay anyway.
                    let _ = write(ctx, ns, name, &id, &pending);
                    return;
                }
            }
        };
        match write(ctx, ns, name, &id, &step) {
            Ok(Some(updated)) => obj = updated,
            Ok(None) => return,
            Err(_) => {
                requeue_later(ctx, ns, name, delayed);
                return;
            }
        }
    }
}

async fn delayed_sign(ctx: Arc<Ctx>, ns: String, name: String, id: String, delay: Duration) {
    tokio::time::sleep(delay).await;
    for _ in 0..WRITE_ATTEMPTS {
        let Some(obj) = ctx.store.get(Kind::CertificateRequest, &ns, &name) else {
            break;
        };
        if uid(&obj) != id {
            break;
        }
        // Settings are read now, not when the request was approved: a test flipping
        // fail_signing or rotating the CA during the delay affects this signing.
        let ca = lock(&ctx.shared.ca).clone();
        let fail = ctx.shared.fail_signing.load(Ordering::SeqCst);
        let step = sign_step(&ca, &obj, fail, ctx.shared.omit_ca);
        if write(&ctx, &ns, &name, &id, &step).is_ok() {
            break;
        }
        tokio::time::sleep(REQUEUE_AFTER).await;
    }
    lock(&ctx.shared.in_flight).remove(&id);
    // Whatever happened, let the loop look again: if the write never landed it starts over.
    let _ = ctx.requeue.send((ns, name));
}

/// Writes `step` through the status subresource if it still applies to the stored object (same
/// uid, state not moved on) and changes it. Returns the object as stored afterwards, `None` when
/// there was nothing to write.
fn write(
    ctx: &Ctx,
    ns: &str,
    name: &str,
    expect_uid: &str,
    step: &Step,
) -> Result<Option<Value>, ApiError> {
    let now = rfc3339(OffsetDateTime::now_utc());
    let Some(current) = ctx.store.get(Kind::CertificateRequest, ns, name) else {
        return Ok(None);
    };
    if uid(&current) != expect_uid || !step_allowed(&current, step) {
        return Ok(None);
    }
    let mut preview = current.clone();
    apply_step(&mut preview, step, &now);
    if preview == current {
        return Ok(None);
    }
    let mut applied = false;
    let result = ctx
        .store
        .update_status(Kind::CertificateRequest, ns, name, |obj: &mut Value| {
            // Re-checked on the object the store holds at write time.
            if uid(obj) == expect_uid && step_allowed(obj, step) {
                apply_step(obj, step, &now);
                applied = true;
            }
        });
    match result {
        Ok(updated) => {
            if applied && matches!(step, Step::Issue { .. }) {
                ctx.shared.signed.fetch_add(1, Ordering::SeqCst);
            }
            tracing::debug!(
                namespace = ns,
                name,
                step = step_kind(step),
                applied,
                "signer wrote status"
            );
            Ok(applied.then_some(updated))
        }
        Err(ApiError::NotFound { .. }) => Ok(None),
        Err(e) => {
            tracing::warn!(namespace = ns, name, step = step_kind(step), error = %e, "signer status write failed; will retry");
            Err(e)
        }
    }
}

fn step_kind(step: &Step) -> &'static str {
    match step {
        Step::Approve => "Approved",
        Step::Deny { .. } => "Denied",
        Step::MarkDenied => "Ready=Denied",
        Step::Pending { .. } => "Ready=Pending",
        Step::Fail { .. } => "Ready=Failed",
        Step::Issue { .. } => "Ready=Issued",
    }
}
