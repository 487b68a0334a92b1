//! Volumes: publish, unpublish and renew, each step recorded in `state.json` before it is taken.
//!
//! One [`VolumeManager`] owns every volume on the node. Operations on one volume are serialised by
//! a per-volume async lock (its "slot", which also caches the volume's state); operations on
//! different volumes run in parallel.
//!
//! The folder reads top to bottom: this file holds the manager (its slots, the per-volume
//! locks, saving state, the getters); `publish`, `issue`, `renew` and `unpublish` are the
//! operations; `trust` keeps trust bundles current; `target` checks target paths; `recovery`
//! reconciles after a restart.

mod error;
mod issue;
mod publish;
pub(crate) mod recovery;
mod renew;
mod target;
mod trust;
mod unpublish;

pub(crate) use error::VolumeError;
pub(crate) use publish::PublishParams;
pub(crate) use trust::TrustWiring;

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use zeroize::Zeroizing;

use crate::base::clock::Clock;
use crate::base::fair::FairPool;
use crate::base::random::{Random, ThreadRng};
use crate::files::fsutil;
use crate::files::layout::Password;
use crate::files::mount::Mounter;
use crate::files::store::{self, Phase, Store, StoreError, VolumePaths, VolumeState};
use crate::issuer::Issuer;
use crate::issuer::token::BearerToken;
use crate::kube::discovery::Apis;
use crate::obs::metrics::Metrics;
use crate::runtime::scheduler::SchedulerHandle;
use crate::spec::attrs::{self, AttrError};
use crate::spec::request::CertRequest;
use crate::spec::volume::VolumeId;

/// Tunables of the volume layer.
#[derive(Clone, Debug)]
pub struct Config {
    pub node_id: String,
    /// Size limit of each volume's tmpfs.
    pub tmpfs_size: u64,
    /// How long one publish or renewal waits for its issuer before answering DeadlineExceeded;
    /// the next attempt resumes the same request.
    pub issue_timeout: Duration,
    /// How many of a volume's issued requests the issuer keeps (the current one included).
    pub request_history: usize,
    pub policy: certvol_renewer::Policy,
    /// kubelet's root directory (`--kubelet-dir`): every target path must lie in its `pods/`.
    pub kubelet_dir: PathBuf,
    /// What one volume or pod may ask of the node.
    pub limits: crate::spec::limits::Limits,
    /// Refuse volumes asking for RSA 4096 keys (`--forbid-rsa-4096`): each takes seconds of
    /// CPU to generate.
    pub forbid_rsa_4096: bool,
    /// How many keys may be generated at once (one per CPU).
    pub keygen_concurrency: usize,
    /// Most Kubernetes trust sources one volume may name (`--max-trust-sources-per-volume`).
    pub max_trust_sources: usize,
    /// What all volumes' tmpfs may hold together (`--max-volume-bytes`).
    pub max_volume_bytes: u64,
}

#[cfg(test)]
impl Config {
    /// What `certvol node` runs with for `node_id`: the defaults are written once, on its
    /// command line (`node::NodeOptions`).
    pub(crate) fn new(node_id: &str) -> Self {
        crate::node::NodeOptions::new("unix:///csi/csi.sock", node_id, "/var/lib/certvol".into())
            .volume_config()
    }
}

/// kubelet's default `--root-dir`; pods' volumes live in its `pods/` subdirectory.
pub(crate) const DEFAULT_KUBELET_DIR: &str = "/var/lib/kubelet";

/// One volume's place in the manager: its state behind the per-volume async lock, and the
/// request its attributes describe, parsed once (at publish, at recovery, or from the saved
/// context when the state is first loaded) rather than at every renewal and refresh.
#[derive(Debug, Default)]
pub(crate) struct VolumeSlot {
    state: Arc<tokio::sync::Mutex<Option<VolumeState>>>,
    request: Mutex<Option<Arc<CertRequest>>>,
}

type Slot = Arc<VolumeSlot>;

/// A volume's state, locked: what [`VolumeManager::lock`] hands out.
pub(crate) type Locked = tokio::sync::OwnedMutexGuard<Option<VolumeState>>;

/// What a manager works with besides its configuration and store: the node's mounts, the
/// issuer, the wall clock, the renewal queue and the metrics it records into.
pub(crate) struct Services {
    pub mounter: Arc<dyn Mounter>,
    pub issuer: Arc<dyn Issuer>,
    pub clock: Arc<dyn Clock>,
    pub scheduler: SchedulerHandle,
    pub metrics: Metrics,
}

/// Owns every volume on this node.
#[derive(Debug)]
pub(crate) struct VolumeManager {
    cfg: Config,
    store: Store,
    mounter: Arc<dyn Mounter>,
    issuer: Arc<dyn Issuer>,
    clock: Arc<dyn Clock>,
    /// The samples renewal times are jittered with (see `certvol_renewer`).
    random: Arc<dyn Random>,
    scheduler: SchedulerHandle,
    metrics: Metrics,
    slots: Mutex<HashMap<String, Slot>>,
    /// The newest service-account token kubelet passed for each volume (token-request mode).
    /// Memory only: never written to state, never logged; refreshed by every republish.
    tokens: Mutex<HashMap<String, BearerToken>>,
    /// PKCS#12 passwords by volume id, for renewals; also kept in the volume's private tmpfs
    /// (`mem/keys/pkcs12-password`) so that renewals after a driver restart can still write the
    /// keystore. Never on persistent disk.
    passwords: Mutex<HashMap<String, Password>>,
    /// The volume ids of each pod's volumes (keyed by the pod's directory under kubelet's
    /// `pods/`, which kubelet names and the pod cannot), for the volumes-per-pod limit.
    pod_volumes: Mutex<HashMap<String, std::collections::BTreeSet<String>>>,
    trust: TrustWiring,
    /// What the cluster serves (API modes); `None` without an API (local mode).
    apis: Option<Apis>,
    /// The pod-identity checks (API modes); `None` in local mode, which trusts the chart's
    /// CSIDriver (`podInfoOnMount: true`).
    identity: Option<crate::kube::pods::PodIdentity>,
    /// Key generation: one permit per CPU, shared round-robin between namespaces, so a pod
    /// asking for many slow keys (RSA 4096) cannot keep the CPUs from everyone else's.
    keygen: FairPool,
    /// RSA keys (hundreds of milliseconds to seconds each) also take a permit of this pool, one
    /// smaller than `keygen` (but at least one): however many slow keys are queued, a CPU stays
    /// free for the fast ones (ECDSA, Ed25519: microseconds), whose publishes then never wait
    /// seconds behind someone else's RSA.
    slow_keygen: FairPool,
    /// What each volume keeps in its tmpfs (charged to this process's memory cgroup).
    tmpfs: crate::files::budget::TmpfsBudget,
}

impl VolumeManager {
    pub(crate) fn new(cfg: Config, store: Store, services: Services) -> Self {
        let Services {
            mounter,
            issuer,
            clock,
            scheduler,
            metrics,
        } = services;
        VolumeManager {
            keygen: FairPool::new(cfg.keygen_concurrency),
            slow_keygen: FairPool::new(cfg.keygen_concurrency.saturating_sub(1)),
            tmpfs: crate::files::budget::TmpfsBudget::new(cfg.max_volume_bytes, metrics.clone()),
            cfg,
            store,
            mounter,
            issuer,
            clock,
            random: Arc::new(ThreadRng),
            scheduler,
            metrics,
            slots: Mutex::new(HashMap::new()),
            tokens: Mutex::new(HashMap::new()),
            passwords: Mutex::new(HashMap::new()),
            pod_volumes: Mutex::new(HashMap::new()),
            trust: TrustWiring::default(),
            apis: None,
            identity: None,
        }
    }

    /// Gives the manager the source of its renewal jitter (tests fix it; the default is the
    /// thread's random number generator).
    #[cfg(test)]
    pub(crate) fn with_random(mut self, random: Arc<dyn Random>) -> Self {
        self.random = random;
        self
    }

    /// Gives the manager its trust-bundle wiring (before it is shared).
    pub(crate) fn with_trust(mut self, trust: TrustWiring) -> Self {
        self.trust = trust;
        self
    }

    /// Gives the manager the API discovery of a node with Kubernetes API access: publishes then
    /// check the APIs they need first (see [`crate::kube::discovery::Apis::check`]).
    pub(crate) fn with_apis(mut self, apis: Apis) -> Self {
        self.apis = Some(apis);
        self
    }

    /// Gives the manager the pod-identity checks of a node with Kubernetes API access:
    /// publishes then check the claimed pod first (see [`crate::kube::pods::PodIdentity::verify`]).
    pub(crate) fn with_identity(mut self, identity: crate::kube::pods::PodIdentity) -> Self {
        self.identity = Some(identity);
        self
    }

    pub(crate) fn store(&self) -> &Store {
        &self.store
    }
    pub(crate) fn mounter(&self) -> &Arc<dyn Mounter> {
        &self.mounter
    }
    pub(crate) fn issuer(&self) -> &Arc<dyn Issuer> {
        &self.issuer
    }
    pub(crate) fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }
    pub(crate) fn metrics(&self) -> &Metrics {
        &self.metrics
    }
    pub(crate) fn config(&self) -> &Config {
        &self.cfg
    }
    /// The key generation pool (tests fill it to hold key generation back).
    #[cfg(test)]
    pub(crate) fn keygen_pool(&self) -> &FairPool {
        &self.keygen
    }

    /// Number of volumes with state in memory.
    #[cfg(test)]
    pub(crate) fn volume_count(&self) -> usize {
        self.slots.lock().len()
    }

    /// Saves `state` durably on the blocking pool. A save waits for two fsyncs (file and
    /// directory), milliseconds each on a real disk; run inline it would hold one of the
    /// runtime's worker threads (one per core) for that long, so concurrent publishes queued
    /// behind the disk: on 2 cores, ~47 publishes/s whatever the concurrency (certvol-bench).
    async fn save(&self, state: &VolumeState) -> Result<(), StoreError> {
        let (store, owned) = (self.store.clone(), state.clone());
        match tokio::task::spawn_blocking(move || store.save(&owned)).await {
            Ok(result) => result,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            // Cancelled: only when the runtime shuts down before the task ran, so the state
            // was not written.
            Err(e) => Err(StoreError::Io {
                action: "write",
                path: self.store.paths(&state.volume_id).state,
                source: std::io::Error::other(e.to_string()),
            }),
        }
    }

    /// Locks a volume's slot, loading its state from disk on first use. The slot map may have
    /// dropped the slot (an unpublish finished) while we waited, so re-check after locking.
    pub(crate) async fn lock(&self, volume_id: &str) -> Result<(Slot, Locked), VolumeError> {
        loop {
            let (slot, fresh) = {
                let mut slots = self.slots.lock();
                match slots.get(volume_id) {
                    Some(slot) => (slot.clone(), false),
                    None => {
                        let slot = Slot::default();
                        slots.insert(volume_id.to_string(), slot.clone());
                        (slot, true)
                    }
                }
            };
            let mut guard = slot.state.clone().lock_owned().await;
            let current = self
                .slots
                .lock()
                .get(volume_id)
                .is_some_and(|s| Arc::ptr_eq(s, &slot));
            if !current {
                continue;
            }
            if fresh {
                *guard = self.store.load(volume_id)?;
            }
            return Ok((slot, guard));
        }
    }

    /// The request of the volume in `slot`, whose state is `state`: the one kept with the slot,
    /// else parsed from the saved context and kept from then on.
    fn request(&self, slot: &Slot, state: &VolumeState) -> Result<Arc<CertRequest>, AttrError> {
        let mut kept = slot.request.lock();
        if let Some(req) = kept.as_ref() {
            return Ok(req.clone());
        }
        let req = Arc::new(attrs::parse(&state.context.clone().into_iter().collect())?);
        *kept = Some(req.clone());
        Ok(req)
    }

    /// A copy of a volume's current state (`None` if certvol has none), for read-only views such
    /// as NodeGetVolumeStats. Taken under the volume's lock so it is never a half-done step.
    pub(crate) async fn status(
        &self,
        volume_id: &VolumeId,
    ) -> Result<Option<VolumeState>, VolumeError> {
        let (slot, guard) = self.lock(volume_id).await?;
        let state = guard.clone();
        // An unknown id must not leave an empty slot behind.
        self.release(volume_id, &slot, &guard);
        Ok(state)
    }

    /// Drops a volume's slot once it has no state (after unpublish or a failed first publish).
    fn release(&self, volume_id: &str, slot: &Slot, guard: &Option<VolumeState>) {
        if guard.is_some() {
            return;
        }
        let mut slots = self.slots.lock();
        if slots.get(volume_id).is_some_and(|s| Arc::ptr_eq(s, slot)) {
            slots.remove(volume_id);
        }
    }

    /// Inserts state found on disk at start-up (recovery) without touching the disk again, with
    /// the request recovery parsed from its context (`None` if it no longer parses).
    pub(crate) fn adopt(&self, state: VolumeState, request: Option<Arc<CertRequest>>) {
        if state.phase == Phase::Published
            && let Some(current) = &state.current
        {
            self.metrics
                .track_volume(&state.volume_id, store::to_system(current.not_after));
        }
        self.count_pod_volume(&state.target_path, &state.volume_id, true);
        let volume_id = state.volume_id.clone();
        let slot = VolumeSlot {
            state: Arc::new(tokio::sync::Mutex::new(Some(state))),
            request: Mutex::new(request),
        };
        self.slots.lock().insert(volume_id, Arc::new(slot));
    }

    /// The pod a target belongs to: its directory under kubelet's `pods/`.
    fn pod_of(&self, target: &Path) -> Option<String> {
        let rest = target
            .strip_prefix(self.cfg.kubelet_dir.join("pods"))
            .ok()?;
        let first = rest.components().next()?;
        Some(first.as_os_str().to_string_lossy().into_owned())
    }

    /// Adds (or removes) a volume to its pod's count; answers how many the pod had before.
    fn count_pod_volume(&self, target: &Path, volume_id: &str, add: bool) -> usize {
        let Some(pod) = self.pod_of(target) else {
            return 0;
        };
        let mut pods = self.pod_volumes.lock();
        let volumes = pods.entry(pod.clone()).or_default();
        let before = volumes.len();
        if add {
            volumes.insert(volume_id.to_owned());
        } else {
            volumes.remove(volume_id);
            if volumes.is_empty() {
                pods.remove(&pod);
            }
        }
        before
    }

    /// Reserves a place for a new volume among its pod's, within `--max-volumes-per-pod`.
    fn reserve_pod_volume(&self, params: &PublishParams) -> Result<(), VolumeError> {
        let Some(pod) = self.pod_of(&params.target_path) else {
            return Ok(());
        };
        let mut pods = self.pod_volumes.lock();
        let volumes = pods.entry(pod).or_default();
        if !volumes.contains(params.volume_id.as_str()) {
            let shown = match (
                params.context.get("csi.storage.k8s.io/pod.namespace"),
                params.context.get("csi.storage.k8s.io/pod.name"),
            ) {
                (Some(ns), Some(name)) => format!("{ns}/{name}"),
                _ => params
                    .target_path
                    .strip_prefix(&self.cfg.kubelet_dir)
                    .unwrap_or(params.target_path.as_path())
                    .display()
                    .to_string(),
            };
            self.cfg.limits.check_volume_count(&shown, volumes.len())?;
            volumes.insert(params.volume_id.to_string());
        }
        Ok(())
    }

    /// Records (or with `None` forgets) the pod token the volume's requests are filed with.
    fn set_token(&self, volume_id: &str, token: Option<BearerToken>) {
        let mut tokens = self.tokens.lock();
        match token {
            Some(token) => tokens.insert(volume_id.to_owned(), token),
            None => tokens.remove(volume_id),
        };
    }

    /// Keeps a volume's PKCS#12 password for its renewals: in memory and in the volume's private
    /// tmpfs key directory (0600, never bound into the pod, gone with the tmpfs).
    fn keep_password(
        &self,
        paths: &VolumePaths,
        volume_id: &str,
        password: &Password,
    ) -> Result<(), VolumeError> {
        let path = paths.pkcs12_password();
        fsutil::replace(&path, password.expose().as_bytes(), 0o600)
            .map_err(VolumeError::io_at("write", &path))?;
        self.passwords
            .lock()
            .insert(volume_id.to_owned(), password.clone());
        Ok(())
    }

    /// The PKCS#12 password kept at publish: from memory, or after a driver restart from the
    /// volume's tmpfs.
    fn kept_password(&self, paths: &VolumePaths, volume_id: &str) -> Result<Password, VolumeError> {
        if let Some(password) = self.passwords.lock().get(volume_id).cloned() {
            return Ok(password);
        }
        let path = paths.pkcs12_password();
        let bytes = Zeroizing::new(fs::read(&path).map_err(VolumeError::io_at("read", &path))?);
        let text = std::str::from_utf8(&bytes)
            .map_err(|_| VolumeError::Internal(format!("{} is not UTF-8", path.display())))?;
        let password = Password::new(text);
        self.passwords
            .lock()
            .insert(volume_id.to_owned(), password.clone());
        Ok(password)
    }

    /// Records what a volume kept across a restart keeps in its tmpfs.
    pub(crate) fn measure_tmpfs(&self, volume_id: &str) {
        let paths = self.store.paths(volume_id);
        self.tmpfs
            .set(volume_id, crate::files::budget::measure(&paths.mem));
    }

    /// The bytes all volumes keep in tmpfs, and the budget (`--max-volume-bytes`).
    #[cfg(test)]
    pub(crate) fn tmpfs_usage(&self) -> (u64, u64) {
        (self.tmpfs.total(), self.tmpfs.max())
    }
}

/// Names the request's pod (`namespace/name`) on the current span, one opened with an empty
/// `pod` field (renewal, trust refresh): its log lines then carry it.
fn record_pod(req: &CertRequest) {
    tracing::Span::current().record(
        "pod",
        tracing::field::display(format!("{}/{}", req.pod.namespace, req.pod.name)),
    );
}

/// The pod's namespace, where the volume's requests were filed.
fn namespace_of(state: &VolumeState) -> &str {
    state
        .context
        .get("csi.storage.k8s.io/pod.namespace")
        .map_or("", String::as_str)
}

#[cfg(test)]
mod tests;
