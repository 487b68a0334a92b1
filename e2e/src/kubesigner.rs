//! An in-process stand-in for Kubernetes' CertificateSigningRequest approver and signer
//! controllers (kube-controller-manager's `csrapproving` and `csrsigning`), running against the API
//! stand-in's [`Store`].
//!
//! Two separate controllers, as on a cluster, both driven by the store's change feed:
//!
//! * the approver decides requests for its signer name that carry neither Approved nor Denied,
//!   through the `/approval` subresource: `Approved` True (reason `AutoApproved`, as the built-in
//!   approver writes it) or `Denied` True with the configured reason and message; or it leaves
//!   them alone (an approver that never answers);
//! * the signer takes approved, not denied, not failed requests for its signer name without a
//!   certificate, and writes `status.certificate` through `/status`, or a `Failed` condition
//!   (reason `SignerValidationFailure` by default, as csrsigning reports a request it refuses).
//!   The certificate's lifetime is `min(spec.expirationSeconds, max_duration)`, the signer's
//!   maximum when the request names none; key usages come from `spec.usages`, subject, SANs and
//!   key from the CSR. The certificate holds the leaf only; the CA is published separately (a
//!   ClusterTrustBundle the test creates), since the CSR API carries no CA.
//!
//! Requests for other signer names are never touched, by either controller.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};
use time::OffsetDateTime;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::apiserver::{EventType, Kind, Store, Subresource};
use crate::signer::{Ca, SignerError, rfc3339};

/// The reason kube-controller-manager's approver puts on `Approved`.
pub const APPROVED_REASON: &str = "AutoApproved";
pub const APPROVED_MESSAGE: &str = "Auto approving the request (e2e approver)";
/// The reason csrsigning puts on `Failed` for a request it will not sign.
pub const FAILED_REASON: &str = "SignerValidationFailure";
/// How long a write that failed (a conflict) waits before the request is looked at again.
const REQUEUE_AFTER: Duration = Duration::from_millis(100);

/// What the approver does with a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Approve,
    Deny {
        reason: String,
        message: String,
    },
    /// No answer at all: the request stays pending.
    Ignore,
}

impl Decision {
    pub fn deny(reason: impl Into<String>, message: impl Into<String>) -> Decision {
        Decision::Deny {
            reason: reason.into(),
            message: message.into(),
        }
    }
}

/// The approver's policy, deciding on the whole CertificateSigningRequest.
pub type Policy = Arc<dyn Fn(&Value) -> Decision + Send + Sync>;

#[derive(Clone)]
pub struct KubeSignerConfig {
    /// The `spec.signerName` both controllers serve.
    pub signer_name: String,
    /// The signer's longest certificate lifetime (`--cluster-signing-duration`), also the
    /// lifetime when a request sets no `expirationSeconds`.
    pub max_duration: Duration,
    pub policy: Policy,
    /// `Some((reason, message))`: the signer writes a `Failed` condition instead of signing.
    pub fail: Option<(String, String)>,
}

impl KubeSignerConfig {
    pub fn new(signer_name: impl Into<String>) -> KubeSignerConfig {
        KubeSignerConfig {
            signer_name: signer_name.into(),
            max_duration: Duration::from_secs(365 * 24 * 3600),
            policy: Arc::new(|_: &Value| Decision::Approve),
            fail: None,
        }
    }
}

struct Shared {
    signer_name: String,
    max_duration: Duration,
    ca: Ca,
    policy: Mutex<Policy>,
    fail: Mutex<Option<(String, String)>>,
    signed: AtomicUsize,
    /// Woken when the policy or the failure mode changes: pending requests are looked at again,
    /// as a controller's resync would.
    resync: tokio::sync::Notify,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The running approver and signer. Both stop when this is dropped.
pub struct KubeSigner {
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl KubeSigner {
    /// Spawns both controllers on `store` (inside a tokio runtime); requests already stored are
    /// processed too.
    pub fn start(store: Store, cfg: KubeSignerConfig) -> Result<KubeSigner, SignerError> {
        let shared = Arc::new(Shared {
            signer_name: cfg.signer_name,
            max_duration: cfg.max_duration,
            ca: Ca::generate(1)?,
            policy: Mutex::new(cfg.policy),
            fail: Mutex::new(cfg.fail),
            signed: AtomicUsize::new(0),
            resync: tokio::sync::Notify::new(),
        });
        let task = tokio::spawn(run(store, shared.clone()));
        Ok(KubeSigner { shared, task })
    }

    /// The signer's CA certificate (PEM), for the ClusterTrustBundle a test publishes.
    pub fn ca_pem(&self) -> String {
        self.shared.ca.pem().to_string()
    }

    pub fn signer_name(&self) -> &str {
        &self.shared.signer_name
    }

    /// Replaces the approver's policy for requests not yet decided.
    pub fn set_policy(&self, p: impl Fn(&Value) -> Decision + Send + Sync + 'static) {
        *lock(&self.shared.policy) = Arc::new(p);
        self.shared.resync.notify_one();
    }

    /// Makes the signer fail (write `Failed`) instead of signing, or sign again with `None`.
    pub fn set_fail(&self, fail: Option<(&str, &str)>) {
        *lock(&self.shared.fail) = fail.map(|(r, m)| (r.to_string(), m.to_string()));
        self.shared.resync.notify_one();
    }

    /// How many certificates the signer has written.
    pub fn signed(&self) -> usize {
        self.shared.signed.load(Ordering::SeqCst)
    }
}

impl Drop for KubeSigner {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run(store: Store, shared: Arc<Shared>) {
    // Subscribe before listing: an object created between the two is seen at least once.
    let mut events = store.subscribe();
    let (requeue, mut requeued) = mpsc::unbounded_channel::<String>();
    let resync = |store: &Store, requeue: &mpsc::UnboundedSender<String>| {
        for obj in store.list(Kind::CertificateSigningRequest, None, None) {
            if let Some(name) = obj.pointer("/metadata/name").and_then(Value::as_str) {
                reconcile(store, &shared, name, requeue);
            }
        }
    };
    resync(&store, &requeue);
    loop {
        tokio::select! {
            ev = events.recv() => match ev {
                Ok(ev) => {
                    if ev.kind == Kind::CertificateSigningRequest
                        && ev.event_type != EventType::Deleted
                        && let Some(name) = ev.object.pointer("/metadata/name").and_then(Value::as_str)
                    {
                        reconcile(&store, &shared, name, &requeue);
                    }
                }
                Err(RecvError::Lagged(_)) => resync(&store, &requeue),
                Err(RecvError::Closed) => break,
            },
            Some(name) = requeued.recv() => reconcile(&store, &shared, &name, &requeue),
            () = shared.resync.notified() => resync(&store, &requeue),
        }
    }
}

fn has_condition(obj: &Value, t: &str) -> bool {
    obj.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c.get("type").and_then(Value::as_str) == Some(t))
        })
}

fn has_certificate(obj: &Value) -> bool {
    obj.pointer("/status/certificate")
        .and_then(Value::as_str)
        .is_some_and(|c| !c.is_empty())
}

fn condition(t: &str, reason: &str, message: &str, now: &str) -> Value {
    json!({"type": t, "status": "True", "reason": reason, "message": message,
           "lastUpdateTime": now, "lastTransitionTime": now})
}

fn requeue_later(tx: &mpsc::UnboundedSender<String>, name: &str) {
    let (tx, name) = (tx.clone(), name.to_string());
    tokio::spawn(async move {
        tokio::time::sleep(REQUEUE_AFTER).await;
        let _ = tx.send(name);
    });
}

/// One look at one request: the approver's step, then the signer's.
fn reconcile(store: &Store, shared: &Shared, name: &str, requeue: &mpsc::UnboundedSender<String>) {
    let Some(obj) = store.get(Kind::CertificateSigningRequest, "", name) else {
        return;
    };
    if obj.pointer("/spec/signerName").and_then(Value::as_str) != Some(&shared.signer_name) {
        return;
    }
    let now = rfc3339(OffsetDateTime::now_utc());
    let approved = has_condition(&obj, "Approved");
    if !approved && !has_condition(&obj, "Denied") {
        let policy = lock(&shared.policy).clone();
        let cond = match policy(&obj) {
            Decision::Ignore => return,
            Decision::Approve => condition("Approved", APPROVED_REASON, APPROVED_MESSAGE, &now),
            Decision::Deny { reason, message } => condition("Denied", &reason, &message, &now),
        };
        let written = store.modify_sub(
            Kind::CertificateSigningRequest,
            "",
            name,
            Subresource::Approval,
            |current| {
                let mut next = current.clone();
                let mut conds = current
                    .pointer("/status/conditions")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                conds.push(cond);
                next["status"]["conditions"] = json!(conds);
                Ok(next)
            },
        );
        if written.is_err() {
            requeue_later(requeue, name);
        }
        // The signer acts on the approval when its change arrives.
        return;
    }
    if !approved
        || has_condition(&obj, "Denied")
        || has_condition(&obj, "Failed")
        || has_certificate(&obj)
    {
        return;
    }
    let fail = lock(&shared.fail).clone();
    let status_write = match fail {
        Some((reason, message)) => Err((reason, message)),
        None => sign(shared, &obj).map_err(|e| (FAILED_REASON.to_string(), e.to_string())),
    };
    let written = store.modify_sub(
        Kind::CertificateSigningRequest,
        "",
        name,
        Subresource::Status,
        |current| {
            let mut next = current.clone();
            match &status_write {
                Ok(pem) => next["status"]["certificate"] = json!(B64.encode(pem)),
                Err((reason, message)) => {
                    let mut conds = current
                        .pointer("/status/conditions")
                        .and_then(Value::as_array)
                        .cloned()
                        .unwrap_or_default();
                    conds.push(condition("Failed", reason, message, &now));
                    next["status"]["conditions"] = json!(conds);
                }
            }
            Ok(next)
        },
    );
    match written {
        Ok(_) if status_write.is_ok() => {
            shared.signed.fetch_add(1, Ordering::SeqCst);
        }
        Ok(_) => {}
        Err(_) => requeue_later(requeue, name),
    }
}

/// The lifetime csrsigning gives: the request's `expirationSeconds` capped at the signer's
/// maximum, the maximum when unset.
pub fn lifetime(spec: &Value, max: Duration) -> Duration {
    match spec.get("expirationSeconds").and_then(Value::as_u64) {
        Some(secs) => Duration::from_secs(secs).min(max),
        None => max,
    }
}

fn sign(shared: &Shared, obj: &Value) -> Result<String, SignerError> {
    let spec = obj.get("spec").cloned().unwrap_or(Value::Null);
    let secs = lifetime(&spec, shared.max_duration).as_secs();
    // Ca::sign reads cert-manager's field names; the CSR API's map onto them one to one.
    let cm_spec = json!({
        "request": spec.get("request").cloned().unwrap_or(Value::Null),
        "duration": format!("{secs}s"),
        "usages": spec.get("usages").cloned().unwrap_or_else(|| json!([])),
    });
    shared.ca.sign(&cm_spec, OffsetDateTime::now_utc())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetime_is_the_shorter_of_request_and_maximum() {
        let max = Duration::from_secs(3600);
        assert_eq!(
            lifetime(&json!({"expirationSeconds": 600}), max),
            Duration::from_secs(600)
        );
        assert_eq!(lifetime(&json!({"expirationSeconds": 7200}), max), max);
        assert_eq!(lifetime(&json!({}), max), max);
    }
}
