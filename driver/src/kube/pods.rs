//! Pod identity in API modes (`--issuer cert-manager`, `--issuer kubernetes-csr`): whether the
//! `csi.storage.k8s.io/pod.*` and `serviceAccount.name` keys of a volume context can be believed.
//!
//! kubelet adds those keys, overwriting any the pod set, only when the CSIDriver object sets
//! `podInfoOnMount: true`; without it the pod's own volumeAttributes arrive verbatim, and a pod
//! could claim to be any pod in any namespace and have certvol file requests in its name. So:
//!
//! - At start-up certvol reads its CSIDriver (`GET storage.k8s.io/v1 csidrivers/<driver name>`)
//!   and serves no publish (FailedPrecondition; `/readyz` 503 with the same text) unless it sets
//!   `podInfoOnMount: true`. A missing object or one certvol may not read is refused alike: kubelet
//!   sends no pod information without the object, and a driver that cannot read it cannot tell.
//!   Transport errors and 5xx are retried with backoff (publishes meanwhile answer Unavailable),
//!   and so is a 403 (RBAC not in place yet), which meanwhile refuses publishes naming the rule;
//!   the object is read again every [`CSIDRIVER_RECHECK`] while refused (fixing it needs no
//!   restart) and every [`CSIDRIVER_REVALIDATE`] once accepted (the field is mutable since
//!   Kubernetes 1.29).
//! - Every publish's claimed pod is checked against the API through ONE watch of the pods bound
//!   to this node (`fieldSelector=spec.nodeName=<node id>`) shared by all volumes: the pod
//!   named by `pod.namespace`/`pod.name` must be in it, with that `pod.uid` and
//!   `serviceAccount.name`. A pod not (yet) in the cache is waited for, woken by the watch's
//!   events, up to [`POD_WAIT`] (or the publish's `--issue-timeout`, if shorter); then the
//!   publish fails with PermissionDenied naming the mismatch. kubelet only publishes for pods
//!   the API server has bound to its node, so an honest publish is in the cache within the
//!   watch's latency; a forged one never is.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::storage::v1::CSIDriver;
use kube::runtime::watcher::{self, Event};
use kube::{Api, ResourceExt};
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::kube::client::retry_delay;
use crate::spec::request::PodInfo;

/// How long a publish waits for its pod to appear in the node's pod watch.
pub const POD_WAIT: Duration = Duration::from_secs(10);
/// How often a refused CSIDriver is read again.
pub const CSIDRIVER_RECHECK: Duration = Duration::from_secs(30);
/// How often an accepted CSIDriver is read again.
pub const CSIDRIVER_REVALIDATE: Duration = Duration::from_secs(300);
/// The longest wait between attempts while the API server does not answer.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// What certvol keeps of a pod bound to this node. `pod_ips` is kept for features that will put
/// the pod's addresses in its certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodRecord {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub service_account: String,
    pub pod_ips: Vec<String>,
}

impl PodRecord {
    fn from_pod(pod: &Pod) -> PodRecord {
        let spec = pod.spec.as_ref();
        PodRecord {
            namespace: pod.namespace().unwrap_or_default(),
            name: pod.name_any(),
            uid: pod.uid().unwrap_or_default(),
            // The API server defaults an unset service account to "default".
            service_account: spec
                .and_then(|s| s.service_account_name.clone())
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "default".into()),
            pod_ips: pod
                .status
                .as_ref()
                .and_then(|s| s.pod_ips.as_ref())
                .map(|ips| ips.iter().map(|ip| ip.ip.clone()).collect())
                .unwrap_or_default(),
        }
    }
}

/// Why the CSIDriver object does not let certvol trust pod information.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DriverObjectError {
    #[error(
        "the CSIDriver object {name:?} (storage.k8s.io/v1) does not set spec.podInfoOnMount: true ({found}); without it kubelet passes a pod's volumeAttributes verbatim, so a pod could claim another pod's csi.storage.k8s.io/pod.name, pod.namespace, pod.uid and serviceAccount.name. certvol serves no volume until it does: set podInfoOnMount: true (the chart's CSIDriver does); certvol reads it again every {}s",
        CSIDRIVER_RECHECK.as_secs()
    )]
    NoPodInfo { name: String, found: String },
    #[error(
        "the CSIDriver object {name:?} (storage.k8s.io/v1) does not exist; without it kubelet sends no pod information and certvol cannot tell whose volume it publishes: install the chart's CSIDriver (spec.podInfoOnMount: true); certvol reads it again every {}s",
        CSIDRIVER_RECHECK.as_secs()
    )]
    Missing { name: String },
    #[error(
        "certvol may not read the CSIDriver object {name:?} (storage.k8s.io/v1): {message}; its ClusterRole needs get on csidrivers.storage.k8s.io with resourceNames [{name:?}] (the chart's has it) to check spec.podInfoOnMount: true; certvol tries again with backoff (at most {}s apart)",
        MAX_BACKOFF.as_secs()
    )]
    Forbidden { name: String, message: String },
}

/// Why a publish's pod identity is not accepted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// Final until the CSIDriver object is fixed.
    #[error(transparent)]
    DriverObject(#[from] DriverObjectError),
    /// Transient: the CSIDriver has not been read, or the pod watch has not listed, yet.
    #[error("{0}; retry shortly")]
    NotReady(String),
    /// The volume context names a pod the API does not know on this node, or not as claimed.
    #[error(
        "volume context names pod {namespace}/{name} (csi.storage.k8s.io/pod.namespace, pod.name) with csi.storage.k8s.io/pod.uid {uid:?} and serviceAccount.name {service_account:?}, but {mismatch}; certvol publishes only for a pod the API server has bound to this node, under its own identity as kubelet sends it (CSIDriver podInfoOnMount: true)"
    )]
    Mismatch {
        namespace: String,
        name: String,
        uid: String,
        service_account: String,
        mismatch: String,
    },
}

impl IdentityError {
    /// Whether a retry may succeed without anyone changing the cluster.
    pub fn is_transient(&self) -> bool {
        matches!(self, IdentityError::NotReady(_))
    }
}

/// Where the CSIDriver check stands.
#[derive(Clone, Debug, PartialEq, Eq)]
enum DriverState {
    Pending { last_error: Option<String> },
    Accepted,
    Refused(DriverObjectError),
}

/// The node's pods as the watch last reported them.
#[derive(Clone, Debug, Default)]
struct Snapshot {
    /// By (namespace, name).
    pods: HashMap<(String, String), PodRecord>,
    /// Listed at least once.
    synced: bool,
    /// The watch's last error, until it works again.
    error: Option<String>,
}

/// A publish's claimed pod against the cache.
enum Verdict {
    Match(PodRecord),
    /// Not going to change by waiting (a pod's uid and service account are immutable).
    Final(String),
    /// May still change (the pod not seen yet, or an older pod of the same name).
    NotYet(String),
}

impl Snapshot {
    fn judge(&self, claim: &PodInfo) -> Verdict {
        match self
            .pods
            .get(&(claim.namespace.clone(), claim.name.clone()))
        {
            None => Verdict::NotYet("no such pod is bound to this node".into()),
            Some(pod) if pod.uid != claim.uid => Verdict::NotYet(format!(
                "the pod of that name on this node has uid {:?}",
                pod.uid
            )),
            Some(pod) if pod.service_account != claim.service_account => Verdict::Final(format!(
                "that pod runs as service account {:?}",
                pod.service_account
            )),
            Some(pod) => Verdict::Match(pod.clone()),
        }
    }
}

/// The pod-identity checks of one node. Cheap to clone.
#[derive(Clone, Debug)]
pub struct PodIdentity {
    driver_name: String,
    node_id: String,
    driver: Arc<watch::Sender<DriverState>>,
    pods: Arc<watch::Sender<Snapshot>>,
}

impl PodIdentity {
    /// The checks for `node_id`, and the future that reads the CSIDriver `driver_name` and runs
    /// the pod watch (to be spawned).
    pub fn start(
        client: kube::Client,
        driver_name: &str,
        node_id: &str,
    ) -> (PodIdentity, impl Future<Output = ()> + Send + 'static) {
        let identity = PodIdentity {
            driver_name: driver_name.to_owned(),
            node_id: node_id.to_owned(),
            driver: Arc::new(watch::Sender::new(DriverState::Pending {
                last_error: None,
            })),
            pods: Arc::new(watch::Sender::new(Snapshot::default())),
        };
        let driver_check = check_driver_loop(
            Api::<CSIDriver>::all(client.clone()),
            driver_name.to_owned(),
            identity.driver.clone(),
        );
        let pod_watch = watch_pods(
            Api::<Pod>::all(client),
            node_id.to_owned(),
            identity.pods.clone(),
        );
        (identity, async move {
            tokio::join!(driver_check, pod_watch);
        })
    }

    /// For `/readyz`: `Err` with the reason while the CSIDriver is refused or not read yet, or
    /// the pod watch has not listed or is failing.
    pub fn readiness(&self) -> Result<(), String> {
        match &*self.driver.borrow() {
            DriverState::Accepted => {}
            DriverState::Refused(e) => return Err(e.to_string()),
            DriverState::Pending { last_error } => {
                return Err(format!(
                    "the CSIDriver object {:?} has not been read yet{}",
                    self.driver_name,
                    last_error
                        .as_ref()
                        .map(|e| format!(" (last attempt: {e})"))
                        .unwrap_or_default()
                ));
            }
        }
        let pods = self.pods.borrow();
        match (&pods.error, pods.synced) {
            (None, true) => Ok(()),
            (error, _) => Err(format!(
                "the watch of pods with spec.nodeName={} {}",
                self.node_id,
                match error {
                    Some(e) => format!("is failing: {e}"),
                    None => "has not listed yet".into(),
                }
            )),
        }
    }

    /// The pod `claim` names, if the CSIDriver lets certvol trust pod information and the pod
    /// is bound to this node as claimed; waits up to `wait` (and at most [`POD_WAIT`] for the
    /// pod) for the CSIDriver to be read and the pod to appear.
    pub async fn verify(
        &self,
        claim: &PodInfo,
        wait: Duration,
    ) -> Result<PodRecord, IdentityError> {
        let started = tokio::time::Instant::now();
        let mut driver = self.driver.subscribe();
        let _ = tokio::time::timeout(
            wait,
            driver.wait_for(|s| !matches!(s, DriverState::Pending { .. })),
        )
        .await;
        let state = self.driver.borrow().clone();
        match state {
            DriverState::Accepted => {}
            DriverState::Refused(e) => return Err(e.into()),
            DriverState::Pending { last_error } => {
                return Err(IdentityError::NotReady(format!(
                    "certvol has not been able to read the CSIDriver object {:?} within {wait:?}{}",
                    self.driver_name,
                    last_error
                        .map(|e| format!(" (last attempt: {e})"))
                        .unwrap_or_default()
                )));
            }
        }
        let left = wait.saturating_sub(started.elapsed()).min(POD_WAIT);
        let mut pods = self.pods.subscribe();
        // Woken by the watch's events only: each one replaces the snapshot.
        let _ = tokio::time::timeout(
            left,
            pods.wait_for(|s| s.synced && !matches!(s.judge(claim), Verdict::NotYet(_))),
        )
        .await;
        let snapshot = self.pods.borrow();
        if !snapshot.synced {
            return Err(IdentityError::NotReady(format!(
                "the watch of pods with spec.nodeName={} has not listed within {left:?}{}",
                self.node_id,
                snapshot
                    .error
                    .as_ref()
                    .map(|e| format!(" (last error: {e})"))
                    .unwrap_or_default()
            )));
        }
        let mismatch = |why: String| IdentityError::Mismatch {
            namespace: claim.namespace.clone(),
            name: claim.name.clone(),
            uid: claim.uid.clone(),
            service_account: claim.service_account.clone(),
            mismatch: why,
        };
        match snapshot.judge(claim) {
            Verdict::Match(pod) => Ok(pod),
            Verdict::Final(why) => Err(mismatch(why)),
            Verdict::NotYet(why) => Err(mismatch(format!(
                "{why} (node {}, waited {left:?} for certvol's watch of the node's pods)",
                self.node_id
            ))),
        }
    }
}

/// Whether `driver` lets certvol trust pod information.
fn judge_driver(name: &str, driver: &CSIDriver) -> Result<(), DriverObjectError> {
    match driver.spec.pod_info_on_mount {
        Some(true) => Ok(()),
        other => Err(DriverObjectError::NoPodInfo {
            name: name.to_owned(),
            found: match other {
                Some(_) => "it is false".into(),
                None => "it is not set, and defaults to false".into(),
            },
        }),
    }
}

/// One read of the CSIDriver: `Ok(verdict)` when the API server answered, `Err` to retry.
async fn check_driver(
    api: &Api<CSIDriver>,
    name: &str,
) -> Result<Result<(), DriverObjectError>, String> {
    match api.get(name).await {
        Ok(driver) => Ok(judge_driver(name, &driver)),
        Err(kube::Error::Api(status)) if status.code == 404 => {
            Ok(Err(DriverObjectError::Missing {
                name: name.to_owned(),
            }))
        }
        Err(kube::Error::Api(status)) if status.code == 403 || status.code == 401 => {
            Ok(Err(DriverObjectError::Forbidden {
                name: name.to_owned(),
                message: format!("HTTP {}: {}", status.code, status.message),
            }))
        }
        Err(e) => Err(e.to_string()),
    }
}

fn backoff(failures: u32) -> Duration {
    Duration::from_secs(1u64 << failures.min(5)).min(MAX_BACKOFF)
}

async fn check_driver_loop(
    api: Api<CSIDriver>,
    name: String,
    state: Arc<watch::Sender<DriverState>>,
) {
    let mut failures = 0u32;
    loop {
        let next = match check_driver(&api, &name).await {
            Ok(verdict) => {
                // RBAC that is not in place yet (a fresh install) is retried like an outage.
                let forbidden = matches!(verdict, Err(DriverObjectError::Forbidden { .. }));
                let delay = backoff(failures);
                failures = if forbidden {
                    failures.saturating_add(1)
                } else {
                    0
                };
                let next = match verdict {
                    Ok(()) => DriverState::Accepted,
                    Err(e) => DriverState::Refused(e),
                };
                if *state.borrow() != next {
                    match &next {
                        DriverState::Accepted => info!(
                            csidriver = %name,
                            "the CSIDriver sets podInfoOnMount: true; pod information in volume contexts comes from kubelet"
                        ),
                        DriverState::Refused(e) => {
                            error!("{e}; /readyz stays 503 and publishes fail until it is fixed")
                        }
                        DriverState::Pending { .. } => {}
                    }
                }
                let wait = match &next {
                    DriverState::Accepted => CSIDRIVER_REVALIDATE,
                    _ if forbidden => delay,
                    _ => CSIDRIVER_RECHECK,
                };
                state.send_replace(next);
                wait
            }
            Err(e) => {
                let delay = backoff(failures);
                failures = failures.saturating_add(1);
                warn!(csidriver = %name, error = %e, retry_in = ?delay, "reading the CSIDriver object failed; retrying");
                // A verdict already reached stands through an outage.
                state.send_if_modified(|s| match s {
                    DriverState::Pending { last_error } => {
                        *last_error = Some(e.clone());
                        true
                    }
                    _ => false,
                });
                delay
            }
        };
        tokio::time::sleep(next).await;
    }
}

/// Lists and watches the pods bound to `node`, keeping [`PodRecord`]s.
///
/// After an error the watch starts over with a fresh list once a backoff has passed (as the
/// request watch does): a resumed watch yields nothing until a pod changes, so only a completed
/// relist proves the API server answers again (readiness depends on it). The cache keeps serving
/// the last list meanwhile.
async fn watch_pods(api: Api<Pod>, node: String, tx: Arc<watch::Sender<Snapshot>>) {
    let key = |p: &PodRecord| (p.namespace.clone(), p.name.clone());
    let mut failures: u32 = 0;
    loop {
        let config = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
        let mut stream = watcher::watcher(api.clone(), config).boxed();
        let mut relist: Option<HashMap<(String, String), PodRecord>> = None;
        // The watcher's stream does not end on its own; if it ever does, start over.
        let mut delay = retry_delay(failures.saturating_add(1), rand::random::<f64>());
        while let Some(item) = stream.next().await {
            match item {
                Ok(Event::Init) => relist = Some(HashMap::new()),
                Ok(Event::InitApply(pod)) => {
                    if let Some(r) = relist.as_mut() {
                        let record = PodRecord::from_pod(&pod);
                        r.insert(key(&record), record);
                    }
                }
                Ok(Event::InitDone) => {
                    // The relist is the whole truth: what it lacks was deleted meanwhile.
                    let listed = relist.take().unwrap_or_default();
                    let count = listed.len();
                    tx.send_modify(|s| {
                        if !s.synced || failures > 0 {
                            info!(pods = count, node = %node, "listed the pods bound to this node");
                        }
                        s.pods = listed;
                        s.synced = true;
                        s.error = None;
                    });
                    failures = 0;
                }
                Ok(Event::Apply(pod)) => {
                    let record = PodRecord::from_pod(&pod);
                    tx.send_modify(|s| {
                        s.pods.insert(key(&record), record);
                    });
                }
                Ok(Event::Delete(pod)) => {
                    let record = PodRecord::from_pod(&pod);
                    tx.send_modify(|s| {
                        s.pods.remove(&key(&record));
                    });
                }
                Err(error) => {
                    failures = failures.saturating_add(1);
                    delay = retry_delay(failures, rand::random::<f64>());
                    warn!(%error, node = %node, retry_in = ?delay, "the watch of this node's pods failed; relisting after a backoff");
                    let message = error.to_string();
                    tx.send_if_modified(|s| {
                        let changed = s.error.as_deref() != Some(message.as_str());
                        s.error = Some(message);
                        changed
                    });
                    break;
                }
            }
        }
        tokio::time::sleep(delay).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use serde_json::{Value, json};

    use super::*;

    fn pod(namespace: &str, name: &str, uid: &str, sa: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": name, "namespace": namespace, "uid": uid, "resourceVersion": "5"},
               "spec": {"nodeName": "node-a", "serviceAccountName": sa,
                        "containers": [{"name": "app", "image": "pause"}]},
               "status": {"podIPs": [{"ip": "10.0.0.7"}, {"ip": "fd00::7"}]}})
    }

    fn status(code: u16, reason: &str) -> Value {
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
               "message": format!("{reason} for the test"), "reason": reason, "code": code})
    }

    /// An API server answering the CSIDriver GET with `driver` and the pod list with `pods`;
    /// the pod watch stays open without events. Records `path?query` of every request.
    fn apiserver(
        driver: (u16, Value),
        pods: Vec<Value>,
        seen: Arc<Mutex<Vec<String>>>,
    ) -> kube::Client {
        crate::kube::fakeapi::client(move |req| {
            let (driver, pods, seen) = (driver.clone(), pods.clone(), seen.clone());
            async move {
                seen.lock().unwrap().push(req.path_and_query());
                if req.path == "/apis/storage.k8s.io/v1/csidrivers/csi.certvol.io" {
                    return driver;
                }
                if req.path == "/api/v1/pods" {
                    if req.query.contains("watch=true") {
                        std::future::pending::<()>().await;
                    }
                    return (
                        200,
                        json!({"apiVersion": "v1", "kind": "PodList",
                                        "metadata": {"resourceVersion": "9"}, "items": pods}),
                    );
                }
                (404, crate::kube::fakeapi::not_found())
            }
        })
    }

    fn csidriver(pod_info: Option<bool>) -> (u16, Value) {
        let mut spec = json!({"attachRequired": false});
        if let Some(p) = pod_info {
            spec["podInfoOnMount"] = json!(p);
        }
        (
            200,
            json!({"apiVersion": "storage.k8s.io/v1", "kind": "CSIDriver",
                     "metadata": {"name": "csi.certvol.io"}, "spec": spec}),
        )
    }

    fn claim(namespace: &str, name: &str, uid: &str, sa: &str) -> PodInfo {
        PodInfo {
            name: name.into(),
            namespace: namespace.into(),
            uid: uid.into(),
            service_account: sa.into(),
        }
    }

    fn started(driver: (u16, Value), pods: Vec<Value>) -> (PodIdentity, Arc<Mutex<Vec<String>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (identity, work) = PodIdentity::start(
            apiserver(driver, pods, seen.clone()),
            "csi.certvol.io",
            "node-a",
        );
        tokio::spawn(work);
        (identity, seen)
    }

    #[tokio::test(start_paused = true)]
    async fn the_claimed_pod_must_be_bound_to_this_node_with_its_uid_and_service_account() {
        let (identity, seen) = started(
            csidriver(Some(true)),
            vec![pod("shop", "web-0", "uid-1", "web")],
        );
        let wait = Duration::from_secs(60);
        let found = identity
            .verify(&claim("shop", "web-0", "uid-1", "web"), wait)
            .await
            .unwrap();
        assert_eq!(found.pod_ips, ["10.0.0.7", "fd00::7"]);
        assert_eq!(identity.readiness(), Ok(()));
        // One node-scoped watch, whatever the number of publishes.
        for _ in 0..3 {
            identity
                .verify(&claim("shop", "web-0", "uid-1", "web"), wait)
                .await
                .unwrap();
        }
        let seen = seen.lock().unwrap().clone();
        let pod_requests: Vec<&String> = seen.iter().filter(|p| p.contains("/pods")).collect();
        assert_eq!(pod_requests.len(), 2, "one list, one watch: {seen:?}");
        assert!(
            pod_requests
                .iter()
                .all(|p| p.contains("fieldSelector=spec.nodeName%3Dnode-a")),
            "{pod_requests:?}"
        );

        // Another namespace's pod (not on this node): waited for up to POD_WAIT, then refused.
        let before = tokio::time::Instant::now();
        let err = identity
            .verify(&claim("bank", "vault-0", "uid-9", "vault"), wait)
            .await
            .unwrap_err();
        assert_eq!(before.elapsed(), POD_WAIT);
        let msg = err.to_string();
        assert!(matches!(err, IdentityError::Mismatch { .. }), "{msg}");
        assert!(
            msg.contains("bank/vault-0")
                && msg.contains("\"uid-9\"")
                && msg.contains("no such pod is bound to this node")
                && msg.contains("node node-a"),
            "{msg}"
        );
        // The right name with another uid.
        let msg = identity
            .verify(&claim("shop", "web-0", "uid-2", "web"), wait)
            .await
            .unwrap_err()
            .to_string();
        assert!(msg.contains("has uid \"uid-1\""), "{msg}");
        // The right pod under another service account: final at once.
        let before = tokio::time::Instant::now();
        let msg = identity
            .verify(&claim("shop", "web-0", "uid-1", "admin"), wait)
            .await
            .unwrap_err()
            .to_string();
        assert_eq!(before.elapsed(), Duration::ZERO);
        assert!(msg.contains("runs as service account \"web\""), "{msg}");
        // The wait never outlasts the publish's own deadline.
        let before = tokio::time::Instant::now();
        identity
            .verify(
                &claim("bank", "vault-0", "uid-9", "vault"),
                Duration::from_secs(2),
            )
            .await
            .unwrap_err();
        assert_eq!(before.elapsed(), Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_csidriver_without_pod_info_on_mount_refuses_every_publish() {
        let cases = [
            (csidriver(None), "not set"),
            (csidriver(Some(false)), "it is false"),
        ];
        for (driver, found) in cases {
            let (identity, _) = started(driver, vec![pod("shop", "web-0", "uid-1", "web")]);
            let err = identity
                .verify(
                    &claim("shop", "web-0", "uid-1", "web"),
                    Duration::from_secs(60),
                )
                .await
                .unwrap_err();
            assert!(matches!(err, IdentityError::DriverObject(_)), "{err}");
            let msg = err.to_string();
            assert!(
                msg.contains("CSIDriver object \"csi.certvol.io\"")
                    && msg.contains("spec.podInfoOnMount: true")
                    && msg.contains(found),
                "{msg}"
            );
            assert_eq!(identity.readiness(), Err(msg));
        }
        let (identity, _) = started((404, crate::kube::fakeapi::not_found()), vec![]);
        let msg = identity
            .verify(
                &claim("shop", "web-0", "uid-1", "web"),
                Duration::from_secs(60),
            )
            .await
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("does not exist") && msg.contains("podInfoOnMount"),
            "{msg}"
        );
        let (identity, _) = started((403, status(403, "Forbidden")), vec![]);
        let msg = identity
            .verify(
                &claim("shop", "web-0", "uid-1", "web"),
                Duration::from_secs(60),
            )
            .await
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("may not read") && msg.contains("resourceNames [\"csi.certvol.io\"]"),
            "{msg}"
        );
    }

    /// A publish whose pod is not in the cache yet waits for the watch, and is woken by the
    /// event that brings it (not by polling): it returns the moment the pod arrives.
    #[tokio::test(start_paused = true)]
    async fn a_publish_waits_for_its_pod_and_is_woken_by_the_watch() {
        let (identity, _) = started(csidriver(Some(true)), vec![]);
        let wait = Duration::from_secs(60);
        let claimed = claim("shop", "web-1", "uid-2", "web");
        let verifying = {
            let (identity, claimed) = (identity.clone(), claimed.clone());
            tokio::spawn(async move {
                let started = tokio::time::Instant::now();
                let found = identity.verify(&claimed, wait).await;
                (found, started.elapsed())
            })
        };
        tokio::time::sleep(Duration::from_secs(3)).await;
        let record = PodRecord {
            namespace: "shop".into(),
            name: "web-1".into(),
            uid: "uid-2".into(),
            service_account: "web".into(),
            pod_ips: vec![],
        };
        // What the watch loop does on an Apply event.
        identity.pods.send_modify(|s| {
            s.pods
                .insert(("shop".into(), "web-1".into()), record.clone());
        });
        let (found, took) = verifying.await.unwrap();
        assert_eq!(found.unwrap(), record);
        assert_eq!(took, Duration::from_secs(3));
    }

    /// A watch that fails turns the node not ready until a relist answers: a resumed watch
    /// would say nothing until a pod changed, and readiness would never come back.
    #[tokio::test(start_paused = true)]
    async fn a_failed_pod_watch_relists_and_readiness_comes_back() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let watches = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let client = {
            let (watches, seen) = (watches.clone(), seen.clone());
            crate::kube::fakeapi::client(move |req| {
                let (watches, seen) = (watches.clone(), seen.clone());
                async move {
                    seen.lock().unwrap().push(req.path_and_query());
                    if req.path.starts_with("/apis/storage.k8s.io/") {
                        return csidriver(Some(true));
                    }
                    if req.query.contains("watch=true") {
                        if watches.fetch_add(1, Ordering::SeqCst) == 0 {
                            return (403, status(403, "Forbidden"));
                        }
                        std::future::pending::<()>().await;
                    }
                    (
                        200,
                        json!({"apiVersion": "v1", "kind": "PodList",
                                 "metadata": {"resourceVersion": "9"},
                                 "items": [pod("shop", "web-0", "uid-1", "web")]}),
                    )
                }
            })
        };
        let (identity, work) = PodIdentity::start(client, "csi.certvol.io", "node-a");
        tokio::spawn(work);
        let mut ready = identity.pods.subscribe();
        ready.wait_for(|s| s.error.is_some()).await.unwrap();
        let why = identity.readiness().unwrap_err();
        assert!(
            why.contains("watch of pods with spec.nodeName=node-a is failing"),
            "{why}"
        );
        // The cache still serves the first list meanwhile.
        identity
            .verify(&claim("shop", "web-0", "uid-1", "web"), Duration::ZERO)
            .await
            .unwrap();
        tokio::time::timeout(
            Duration::from_secs(120),
            ready.wait_for(|s| s.error.is_none()),
        )
        .await
        .expect("ready again once a relist answers")
        .unwrap();
        assert_eq!(identity.readiness(), Ok(()));
        let lists = seen
            .lock()
            .unwrap()
            .iter()
            .filter(|p| p.starts_with("/api/v1/pods") && !p.contains("watch=true"))
            .count();
        assert_eq!(lists, 2, "relisted after the failure");
    }

    #[tokio::test(start_paused = true)]
    async fn an_unreadable_csidriver_is_retried_and_publishes_answer_not_ready() {
        let (identity, _) = started((503, status(503, "ServiceUnavailable")), vec![]);
        let err = identity
            .verify(
                &claim("shop", "web-0", "uid-1", "web"),
                Duration::from_secs(5),
            )
            .await
            .unwrap_err();
        assert!(err.is_transient(), "{err}");
        assert!(
            err.to_string().contains("ServiceUnavailable for the test"),
            "{err}"
        );
        let ready = identity.readiness().unwrap_err();
        assert!(ready.contains("has not been read yet"), "{ready}");
    }
}
