//! Volumes: publish, unpublish and renew, each step recorded in `state.json` before it is taken.
//!
//! One [`VolumeManager`] owns every volume on the node. Operations on one volume are serialised by
//! a per-volume async lock (its "slot", which also caches the volume's state); operations on
//! different volumes run in parallel.

pub mod recovery;

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use tokio::sync::Mutex;
use tracing::{debug, info, warn};
use zeroize::Zeroizing;

use crate::base::clock::Clock;
use crate::base::crashpoint;
use crate::base::fair::{FairPool, Lease};
use crate::files::fsutil;
use crate::files::layout::{self, LayoutError, Material, Password};
use crate::files::mount::{MountInfo, Mounter};
use crate::files::store::{
    self, CertRecord, DiskFault, PendingRecord, Phase, RenewalRecord, STATE_VERSION, Store,
    StoreError, VolumePaths, VolumeState,
};
use crate::files::writer::{self, WriteError};
use crate::issuer::token::{BearerToken, token_from_context};
use crate::issuer::{self, IssueError, IssueRequest, Issuer};
use crate::kube::discovery::{ApiError, Apis};
use crate::kube::events::{self, EventSink};
use crate::obs::metrics::IssueOutcome;
use crate::runtime::refresh::{Message, RefreshHandle};
use crate::runtime::scheduler::{RenewOutcome, Renewer, SchedulerHandle};
use crate::spec::attrs::{self, AttrError};
use crate::spec::request::{CertRequest, KeyAlgorithm};
use crate::trust::bundle::{self as trust_bundle, Bundle, Rejected, SourcePem};
use crate::trust::rotation::{self, OverlapPolicy};
use crate::trust::{SourceError, TrustCache, TrustSpec, VolumeTrust};
use crate::x509::keys::{self, KeyError, PrivateKey};
use crate::x509::pki;

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

impl Config {
    pub fn new(node_id: impl Into<String>) -> Self {
        Config {
            node_id: node_id.into(),
            tmpfs_size: 4 << 20,
            issue_timeout: Duration::from_secs(60),
            request_history: 1,
            policy: certvol_renewer::Policy::default(),
            kubelet_dir: PathBuf::from(DEFAULT_KUBELET_DIR),
            limits: crate::spec::limits::Limits::default(),
            forbid_rsa_4096: false,
            keygen_concurrency: std::thread::available_parallelism().map_or(1, |n| n.get()),
            max_trust_sources: attrs::DEFAULT_MAX_TRUST_SOURCES,
            max_volume_bytes: crate::files::budget::DEFAULT_MAX_VOLUME_BYTES,
        }
    }
}

/// kubelet's default `--root-dir`; pods' volumes live in its `pods/` subdirectory.
pub const DEFAULT_KUBELET_DIR: &str = "/var/lib/kubelet";

/// Longest volume id accepted. kubelet's ids for inline volumes are 68 bytes (`csi-` and a
/// SHA-256 in hex); the bound keeps ids usable in file names, labels and log lines.
pub const MAX_VOLUME_ID_BYTES: usize = 128;

/// A NodePublishVolume request after the CSI layer checked its fields.
#[derive(Clone)]
pub struct PublishParams {
    pub volume_id: String,
    pub target_path: PathBuf,
    pub context: HashMap<String, String>,
    /// kubelet's `volume_mount_group`: the pod's fsGroup.
    pub mount_group: Option<u32>,
    /// The data of the Secret named by the volume's `nodePublishSecretRef`, which kubelet sends
    /// with every publish. Secret values: never logged, never recorded in `state.json`.
    pub secrets: HashMap<String, String>,
}

/// What kubelet sent that is a secret (the pod's token, Secret data, a literal keystore password)
/// is wiped when the request is done with, rather than left in freed heap memory.
impl Drop for PublishParams {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        for (key, value) in self.context.iter_mut() {
            if key == attrs::TOKENS_KEY || attrs::is_literal_password_key(key) {
                value.zeroize();
            }
        }
        for value in self.secrets.values_mut() {
            value.zeroize();
        }
    }
}

impl std::fmt::Debug for PublishParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let context: std::collections::BTreeMap<&str, &str> = self
            .context
            .iter()
            .map(|(k, v)| {
                let shown = if attrs::is_literal_password_key(k) || k == attrs::TOKENS_KEY {
                    "<redacted>"
                } else {
                    v.as_str()
                };
                (k.as_str(), shown)
            })
            .collect();
        let mut secret_keys: Vec<&str> = self.secrets.keys().map(String::as_str).collect();
        secret_keys.sort_unstable();
        f.debug_struct("PublishParams")
            .field("volume_id", &self.volume_id)
            .field("target_path", &self.target_path)
            .field("context", &context)
            .field("mount_group", &self.mount_group)
            .field("secret_keys", &secret_keys)
            .finish()
    }
}

/// What a successful publish did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Published {
    /// A certificate was issued and bound at the target.
    Issued { revision: u64 },
    /// The volume was already published there; nothing changed.
    Unchanged,
}

/// Why a volume operation failed. The CSI layer maps each variant to a gRPC code once.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VolumeError {
    #[error(transparent)]
    Attributes(#[from] AttrError),
    #[error("{0}")]
    InvalidArgument(String),
    /// Outside the operator's limits on durations or volumes per pod.
    #[error(transparent)]
    Limit(#[from] crate::spec::limits::LimitError),
    #[error(
        "volume {volume_id} is already published at {existing}; an inline ephemeral volume has exactly one target, so it cannot also be published at {requested}"
    )]
    OtherTarget {
        volume_id: String,
        existing: PathBuf,
        requested: PathBuf,
    },
    #[error(
        "volume {volume_id} is already published at {target} with different volume attributes; the attributes of a published volume cannot change"
    )]
    Incompatible { volume_id: String, target: PathBuf },
    /// The issuer's policy (the local CA's, set by the operator) refuses what the volume asks.
    #[error(transparent)]
    Policy(#[from] crate::issuer::policy::PolicyViolation),
    /// The operator forbids the key the volume asks for (`--forbid-rsa-4096`).
    #[error(
        "{attribute}: \"4096\" is not allowed: this node refuses RSA 4096 keys (--forbid-rsa-4096), which take seconds of CPU each to generate; accepted: RSA key-size 2048 or 3072, or key-algorithm ECDSA or Ed25519"
    )]
    ForbiddenKey { attribute: String },
    #[error("issuing the certificate: {0}")]
    Issue(#[from] IssueError),
    #[error("the issuer returned an unusable certificate for request {request}: {message}")]
    BadCertificate { request: String, message: String },
    /// The request's certificate had already expired when the node got it; the next attempt
    /// files a new request.
    #[error(
        "the certificate issued for request {request} had already expired when this node received it (not after {}); the next attempt files a new request",
        humantime_utc(*not_after)
    )]
    Expired {
        request: String,
        not_after: SystemTime,
    },
    #[error("private key: {0}")]
    Key(#[from] KeyError),
    #[error("building the volume's files: {0}")]
    Layout(#[from] LayoutError),
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Write(#[from] WriteError),
    /// A trust source could not be read, or the namespace policy forbids it.
    #[error(transparent)]
    Trust(#[from] SourceError),
    /// The cluster does not serve an API the volume needs (or discovery has not answered yet).
    #[error(transparent)]
    Api(#[from] ApiError),
    /// The volume context's pod identity cannot be believed (API modes; see `pods`).
    #[error(transparent)]
    Identity(#[from] crate::kube::pods::IdentityError),
    /// The node's volumes already keep close to `--max-volume-bytes` in tmpfs.
    #[error(transparent)]
    TmpfsBudget(#[from] crate::files::budget::OverBudget),
    /// The data root refused a write (full or read-only): an operator has to act, and until then
    /// no volume can be published there and no renewal can be recorded.
    #[error(
        "the data root {root} {fault}: cannot {action} {path} ({source}); {remedy}, then the call is retried",
        remedy = fault.remedy()
    )]
    DataRoot {
        root: PathBuf,
        fault: DiskFault,
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Something certvol did not mount (another tmpfs, another volume's bind, a kubelet bind) is
    /// mounted at the target. certvol leaves it alone rather than publish over or take it down.
    #[error(
        "target_path {} already holds a mount that is not this volume's certvol bind (fs type {fs_type}, source {mount_source}, root {root}); certvol leaves it alone and does not publish over it: unmount it and kubelet's retry publishes the volume",
        target.display()
    )]
    ForeignMount {
        target: PathBuf,
        fs_type: String,
        mount_source: String,
        root: String,
    },
    #[error("internal error: {0}")]
    Internal(String),
}

impl VolumeError {
    pub(crate) fn io_at(
        action: &'static str,
        path: &Path,
    ) -> impl FnOnce(io::Error) -> VolumeError + use<> {
        let path = path.to_path_buf();
        move |source| VolumeError::Io {
            action,
            path,
            source,
        }
    }

    /// Names the data root when an I/O error is one of its [`DiskFault`]s. Only paths on the
    /// data root's own filesystem count: a volume's tmpfs (`volumes/<key>/mem/...`) has its own
    /// size limit, and running out of it is not the data root's fault.
    pub(crate) fn on_data_root(self, root: &Path) -> VolumeError {
        let on_root = |path: &Path| {
            path.strip_prefix(root).is_ok_and(|rel| {
                let parts: Vec<_> = rel.components().collect();
                // volumes/<key>/mem itself lives on the data root; what is below it does not.
                !(parts.len() > 3
                    && parts[0].as_os_str() == "volumes"
                    && parts[2].as_os_str() == "mem")
            })
        };
        let fault = match &self {
            VolumeError::Store(StoreError::Io { path, source, .. })
            | VolumeError::Io { path, source, .. } => {
                DiskFault::of(source).filter(|_| on_root(path))
            }
            _ => None,
        };
        match (fault, self) {
            (
                Some(fault),
                VolumeError::Store(StoreError::Io {
                    action,
                    path,
                    source,
                })
                | VolumeError::Io {
                    action,
                    path,
                    source,
                },
            ) => VolumeError::DataRoot {
                root: root.to_path_buf(),
                fault,
                action,
                path,
                source,
            },
            (_, other) => other,
        }
    }

    /// Whether a publish that failed this way should keep its state so that kubelet's retry
    /// resumes it (the issuer may still sign the pending request).
    fn keeps_pending(&self) -> bool {
        matches!(self, VolumeError::Issue(e) if e.is_transient())
            || matches!(self, VolumeError::Api(e) if e.is_transient())
            || matches!(self, VolumeError::Identity(e) if e.is_transient())
            || matches!(self, VolumeError::Expired { .. })
    }
}

/// RFC 3339 (UTC) for messages.
fn humantime_utc(t: SystemTime) -> String {
    let t = store::to_offset(t);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

type Slot = Arc<Mutex<Option<VolumeState>>>;

/// What an issuance starts from besides the request: a key to reuse (renewal with
/// `reuse-private-key`) and where the volume's trust bundle comes from.
struct With<'a> {
    reuse: Option<PrivateKey>,
    trust: BundleFrom<'a>,
    /// The renewal worker the issuance runs on (none for a publish); put down while the
    /// issuer waits for its answer.
    worker: &'a Lease,
}

/// Where an issuance takes the trust bundle's sources from.
#[derive(Clone, Copy)]
enum BundleFrom<'a> {
    /// The volume's subscriptions, listed (`None`: the spec names no Kubernetes objects).
    Sources(Option<&'a VolumeTrust>),
    /// A renewal whose sources cannot be read right now: the new issuing CA(s) followed by the
    /// bundle last written, so that a deleted ConfigMap never lets the certificate expire. The
    /// refresher rewrites the bundle once the sources are readable again.
    LastWritten,
}

/// How volumes get their trust bundles on this node.
#[derive(Clone, Default)]
pub struct TrustWiring {
    /// The watch-driven cache of ConfigMaps, Secrets and ClusterTrustBundles; `None` without
    /// Kubernetes API access (`--issuer local`), where only the issuing CA and the public roots
    /// can go into a bundle.
    pub cache: Option<TrustCache>,
    /// Warning events on pods whose trust sources are missing or hold bad entries.
    pub events: Option<Arc<EventSink>>,
    /// The refresher that keeps published bundles current (see `refresh`).
    pub refresher: Option<RefreshHandle>,
}

impl std::fmt::Debug for TrustWiring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustWiring")
            .field("cache", &self.cache.as_ref().map(|c| c.watched()))
            .field("events", &self.events.is_some())
            .field("refresher", &self.refresher.is_some())
            .finish()
    }
}

/// What a trust refresh left behind, for the refresher.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refreshed {
    /// The volume is no longer published (or has no trust bundle): stop watching it.
    Gone,
    /// The volume stays; rebuild again at `next_change` (a retired CA's overlap end) or when a
    /// source changes.
    Kept { next_change: Option<SystemTime> },
}

/// The first attribute of `spec` that names Kubernetes objects, if any.
fn api_attribute(spec: &TrustSpec) -> Option<&str> {
    if !spec.config_maps.is_empty() {
        Some(&spec.config_maps_attribute)
    } else if !spec.secrets.is_empty() {
        Some(&spec.secrets_attribute)
    } else if !spec.cluster_bundles.is_empty() {
        Some(&spec.cluster_bundles_attribute)
    } else if spec.signer.is_some() {
        Some(&spec.signer_attribute)
    } else {
        None
    }
}

/// The bundle of `spec` with `issuing_ca_pem` as the issuing CA: from the volume's
/// subscriptions when it names Kubernetes objects, else from the issuing CA and public roots.
fn build_bundle(
    spec: &TrustSpec,
    trust: Option<&VolumeTrust>,
    issuing_ca_pem: &str,
) -> Result<Bundle, SourceError> {
    match trust {
        Some(trust) => trust.bundle(issuing_ca_pem),
        None => {
            let mut sources = Vec::new();
            if spec.issuer_ca {
                sources.push(SourcePem::new("issuing CA", issuing_ca_pem));
            }
            if spec.public_roots {
                sources.push(trust_bundle::public_roots());
            }
            Ok(trust_bundle::assemble(&sources))
        }
    }
}

/// Owns every volume on this node.
#[derive(Debug)]
pub struct VolumeManager {
    cfg: Config,
    store: Store,
    mounter: Arc<dyn Mounter>,
    issuer: Arc<dyn Issuer>,
    clock: Arc<dyn Clock>,
    scheduler: SchedulerHandle,
    slots: StdMutex<HashMap<String, Slot>>,
    /// The newest service-account token kubelet passed for each volume (token-request mode).
    /// Memory only: never written to state, never logged; refreshed by every republish.
    tokens: StdMutex<HashMap<String, BearerToken>>,
    /// PKCS#12 passwords by volume id, for renewals; also kept in the volume's private tmpfs
    /// (`mem/keys/pkcs12-password`) so that renewals after a driver restart can still write the
    /// keystore. Never on persistent disk.
    passwords: StdMutex<HashMap<String, Password>>,
    /// The volume ids of each pod's volumes (keyed by the pod's directory under kubelet's
    /// `pods/`, which kubelet names and the pod cannot), for the volumes-per-pod limit.
    pod_volumes: StdMutex<HashMap<String, std::collections::BTreeSet<String>>>,
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
    pub fn new(
        cfg: Config,
        store: Store,
        mounter: Arc<dyn Mounter>,
        issuer: Arc<dyn Issuer>,
        clock: Arc<dyn Clock>,
        scheduler: SchedulerHandle,
    ) -> Self {
        VolumeManager {
            keygen: FairPool::new(cfg.keygen_concurrency),
            slow_keygen: FairPool::new(cfg.keygen_concurrency.saturating_sub(1)),
            tmpfs: crate::files::budget::TmpfsBudget::new(cfg.max_volume_bytes),
            cfg,
            store,
            mounter,
            issuer,
            clock,
            scheduler,
            slots: StdMutex::new(HashMap::new()),
            tokens: StdMutex::new(HashMap::new()),
            passwords: StdMutex::new(HashMap::new()),
            pod_volumes: StdMutex::new(HashMap::new()),
            trust: TrustWiring::default(),
            apis: None,
            identity: None,
        }
    }

    /// Gives the manager its trust-bundle wiring (before it is shared).
    pub fn with_trust(mut self, trust: TrustWiring) -> Self {
        self.trust = trust;
        self
    }

    /// Gives the manager the API discovery of a node with Kubernetes API access: publishes then
    /// check the APIs they need first (see [`crate::kube::discovery::Apis::check`]).
    pub fn with_apis(mut self, apis: Apis) -> Self {
        self.apis = Some(apis);
        self
    }

    /// Gives the manager the pod-identity checks of a node with Kubernetes API access:
    /// publishes then check the claimed pod first (see [`crate::kube::pods::PodIdentity::verify`]).
    pub fn with_identity(mut self, identity: crate::kube::pods::PodIdentity) -> Self {
        self.identity = Some(identity);
        self
    }

    pub fn store(&self) -> &Store {
        &self.store
    }
    pub fn mounter(&self) -> &Arc<dyn Mounter> {
        &self.mounter
    }
    pub fn issuer(&self) -> &Arc<dyn Issuer> {
        &self.issuer
    }
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }
    pub fn scheduler(&self) -> &SchedulerHandle {
        &self.scheduler
    }
    pub fn config(&self) -> &Config {
        &self.cfg
    }
    /// The key generation pool (tests fill it to hold key generation back).
    #[cfg(test)]
    pub(crate) fn keygen_pool(&self) -> &FairPool {
        &self.keygen
    }

    /// Number of volumes with state in memory.
    pub fn volume_count(&self) -> usize {
        self.slots.lock().map(|s| s.len()).unwrap_or(0)
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
    pub(crate) async fn lock(
        &self,
        volume_id: &str,
    ) -> Result<(Slot, tokio::sync::OwnedMutexGuard<Option<VolumeState>>), VolumeError> {
        loop {
            let (slot, fresh) = {
                let mut slots = self
                    .slots
                    .lock()
                    .map_err(|_| VolumeError::Internal("volume table lock poisoned".into()))?;
                match slots.get(volume_id) {
                    Some(slot) => (slot.clone(), false),
                    None => {
                        let slot: Slot = Arc::new(Mutex::new(None));
                        slots.insert(volume_id.to_string(), slot.clone());
                        (slot, true)
                    }
                }
            };
            let mut guard = slot.clone().lock_owned().await;
            let current = self
                .slots
                .lock()
                .map_err(|_| VolumeError::Internal("volume table lock poisoned".into()))?
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

    /// A copy of a volume's current state (`None` if certvol has none), for read-only views such
    /// as NodeGetVolumeStats. Taken under the volume's lock so it is never a half-done step.
    pub async fn status(&self, volume_id: &str) -> Result<Option<VolumeState>, VolumeError> {
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
        if let Ok(mut slots) = self.slots.lock()
            && slots.get(volume_id).is_some_and(|s| Arc::ptr_eq(s, slot))
        {
            slots.remove(volume_id);
        }
    }

    /// Inserts state found on disk at start-up (recovery) without touching the disk again.
    pub(crate) fn adopt(&self, state: VolumeState) {
        if state.phase == Phase::Published
            && let Some(current) = &state.current
        {
            crate::obs::metrics::global()
                .track_volume(&state.volume_id, store::to_system(current.not_after));
        }
        self.count_pod_volume(&state.target_path, &state.volume_id, true);
        if let Ok(mut slots) = self.slots.lock() {
            slots.insert(state.volume_id.clone(), Arc::new(Mutex::new(Some(state))));
        }
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
        let (Some(pod), Ok(mut pods)) = (self.pod_of(target), self.pod_volumes.lock()) else {
            return 0;
        };
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
        let mut pods = self
            .pod_volumes
            .lock()
            .map_err(|_| VolumeError::Internal("pod volume table lock poisoned".into()))?;
        let volumes = pods.entry(pod).or_default();
        if !volumes.contains(&params.volume_id) {
            let shown = match (
                params.context.get("csi.storage.k8s.io/pod.namespace"),
                params.context.get("csi.storage.k8s.io/pod.name"),
            ) {
                (Some(ns), Some(name)) => format!("{ns}/{name}"),
                _ => params
                    .target_path
                    .strip_prefix(&self.cfg.kubelet_dir)
                    .unwrap_or(&params.target_path)
                    .display()
                    .to_string(),
            };
            self.cfg.limits.check_volume_count(&shown, volumes.len())?;
            volumes.insert(params.volume_id.clone());
        }
        Ok(())
    }

    /// NodePublishVolume: make the volume's certificate available read-only at the target.
    pub async fn publish(&self, params: PublishParams) -> Result<Published, VolumeError> {
        check_volume_id(&params.volume_id)?;
        check_in_pods_dir(&self.cfg.kubelet_dir, &params.target_path)?;
        let req = Arc::new(attrs::parse(&params.context)?);
        self.issuer.check_request(&req)?;
        self.issuer.check_policy(&req)?;
        self.cfg.limits.check_duration(&req, &params.context)?;
        self.check_key(&req, &params.context)?;
        // Resolved before anything is created, so a missing password leaves nothing behind.
        let password = req
            .files
            .pkcs12
            .as_ref()
            .map(|p| attrs::pkcs12_password(&p.password, &params.context, &params.secrets))
            .transpose()?;
        let context = attrs::stable_context(&params.context);
        let token = token_from_context(&params.context).map_err(|e| {
            VolumeError::InvalidArgument(format!("volume context {}: {e}", attrs::TOKENS_KEY))
        })?;
        let (slot, mut guard) = self.lock(&params.volume_id).await?;

        if let Some(state) = guard.as_ref() {
            if state.target_path != params.target_path {
                return Err(VolumeError::OtherTarget {
                    volume_id: params.volume_id.clone(),
                    existing: state.target_path.clone(),
                    requested: params.target_path.clone(),
                });
            }
            if state.context != context || state.mount_group != params.mount_group {
                return Err(VolumeError::Incompatible {
                    volume_id: params.volume_id.clone(),
                    target: params.target_path.clone(),
                });
            }
        }
        if guard.is_none() {
            // Before anything is issued: a full node refuses here rather than after signing.
            self.tmpfs
                .has_room(crate::files::budget::MIN_VOLUME_BYTES)?;
            self.reserve_pod_volume(&params)?;
        }
        // Only now, under the volume's lock and for the volume this call publishes: a publish
        // refused above (another target, other attributes) must not replace a live volume's
        // token, and one that fails below takes its token with it.
        if let Some(token) = token {
            self.set_token(&params.volume_id, Some(token));
        }

        let mut trust = None;
        let result = self
            .publish_locked(&params, &req, context, password, &mut guard, &mut trust)
            .await
            .map_err(|e| e.on_data_root(self.store.root()));
        if let Err(err) = &result
            && !err.keeps_pending()
            && let Some(state) = guard.take()
        {
            // A final failure leaves nothing behind: kubelet will retry from scratch.
            if let Err(cleanup) = self.remove_volume(&state).await {
                warn!(volume_id = %params.volume_id, error = %cleanup, "clean-up after a failed publish did not finish; it is retried at the next start");
                *guard = Some(state);
            }
        }
        if result.is_err() && guard.is_none() {
            self.set_token(&params.volume_id, None);
            self.count_pod_volume(&params.target_path, &params.volume_id, false);
        }
        if let Ok(Published::Issued { .. }) = &result
            && let Some(state) = guard.as_ref()
        {
            self.schedule(state);
            self.watch_trust(state, &req, trust.take());
        }
        if result.is_ok()
            && let Some(current) = guard.as_ref().and_then(|s| s.current.as_ref())
        {
            crate::obs::metrics::global()
                .track_volume(&params.volume_id, store::to_system(current.not_after));
        }
        self.release(&params.volume_id, &slot, &guard);
        drop(guard);
        if let Err(VolumeError::Trust(e)) = &result {
            self.report_source_error(&req, e).await;
        }
        result
    }

    /// Records (or with `None` forgets) the pod token the volume's requests are filed with.
    fn set_token(&self, volume_id: &str, token: Option<BearerToken>) {
        if let Ok(mut tokens) = self.tokens.lock() {
            match token {
                Some(token) => tokens.insert(volume_id.to_owned(), token),
                None => tokens.remove(volume_id),
            };
        }
    }

    /// Whether the operator lets a volume have the key it asks for; checked before anything is
    /// created. Renewals of volumes published before the operator forbade a key keep their key
    /// algorithm: refusing them would let a running pod's certificate expire.
    fn check_key(
        &self,
        req: &CertRequest,
        context: &HashMap<String, String>,
    ) -> Result<(), VolumeError> {
        if self.cfg.forbid_rsa_4096 && req.key_algorithm == KeyAlgorithm::Rsa4096 {
            // RSA 4096 is only ever chosen by key-size; name it as the pod spec spells it (ours
            // wins when both prefixes set it).
            let attribute = attrs::set_key(context, "key-size").map_or_else(
                || format!("{}key-size", attrs::CERTVOL_PREFIX),
                str::to_owned,
            );
            return Err(VolumeError::ForbiddenKey { attribute });
        }
        Ok(())
    }

    async fn publish_locked(
        &self,
        params: &PublishParams,
        req: &Arc<CertRequest>,
        context: std::collections::BTreeMap<String, String>,
        password: Option<Password>,
        guard: &mut Option<VolumeState>,
        trust_out: &mut Option<VolumeTrust>,
    ) -> Result<Published, VolumeError> {
        let paths = self.store.paths(&params.volume_id);
        if let Some(state) = guard.as_ref() {
            match state.phase {
                Phase::Published => return Ok(Published::Unchanged),
                // An earlier attempt was interrupted before its tmpfs was ready: start over.
                Phase::Mounting | Phase::Unpublishing => {
                    if let Some(state) = guard.take() {
                        self.remove_volume(&state).await?;
                    }
                }
                Phase::Issuing => debug!(
                    volume_id = %params.volume_id,
                    pending = ?state.pending.as_ref().map(|p| p.revision),
                    last_revision = state.last_revision,
                    "resuming an interrupted publish"
                ),
            }
        }

        // New volumes only (a republish returned above): one published under a higher cap keeps
        // working, through republishes, renewals and restarts.
        attrs::check_trust_sources(req, self.cfg.max_trust_sources)?;
        // Before anything is created: an API the volume needs that the cluster does not serve
        // (the issuer's, or ClusterTrustBundles for its ca-source or trust sources) is named
        // here rather than surfacing as a 404 later, and leaves nothing behind.
        if let Some(apis) = &self.apis {
            apis.check(req, self.cfg.issue_timeout).await?;
        }
        // The pod the context names must be the one kubelet publishes for: nothing is filed in
        // another pod's name.
        if let Some(identity) = &self.identity {
            identity.verify(&req.pod, self.cfg.issue_timeout).await?;
        }
        // Likewise a source that is missing or not allowed; kubelet's retry finds it once it
        // exists.
        let mut trust = self.open_trust(req, false)?;
        if let Some(trust) = trust.as_mut() {
            trust.ready(self.cfg.issue_timeout).await?;
        }

        if guard.is_none() {
            check_target(&self.cfg.kubelet_dir, &params.target_path)?;
            // Before anything is created or issued; `bind_target` checks again for retries.
            self.refuse_foreign_mount(&params.target_path, &paths.key)?;
            let state = VolumeState {
                version: STATE_VERSION,
                volume_id: params.volume_id.clone(),
                target_path: params.target_path.clone(),
                node_id: self.cfg.node_id.clone(),
                issuer: self.issuer.kind().to_string(),
                context,
                mount_group: params.mount_group,
                phase: Phase::Mounting,
                current: None,
                pending: None,
                last_revision: 0,
                requests: Vec::new(),
                renewal: RenewalRecord::default(),
                issuing_cas: Vec::new(),
            };
            self.save(&state).await?;
            *guard = Some(state);
            self.mount_memory(&paths)?;
            crashpoint::hit("publish:mounted");
        }
        let state = guard
            .as_mut()
            .ok_or_else(|| VolumeError::Internal("volume state vanished".into()))?;

        let mut issued = None;
        if state.current.is_none() {
            if let Some(password) = &password {
                self.keep_password(&paths, &state.volume_id, password)?;
            }
            let revision = state
                .pending
                .as_ref()
                .map_or(state.last_revision + 1, |p| p.revision);
            self.issue_revision(
                "publish",
                &paths,
                state,
                req,
                revision,
                With {
                    reuse: None,
                    trust: BundleFrom::Sources(trust.as_ref()),
                    worker: &Lease::default(),
                },
            )
            .await?;
            issued = Some(revision);
        }

        // Files are in place (recorded with `current`); a crash from here on is finished by the
        // retried publish, which finds the files and only binds the target.
        self.bind_target(&paths, &params.target_path)?;
        crashpoint::hit("publish:bound");
        let mut next = state.clone();
        next.phase = Phase::Published;
        self.save(&next).await?;
        *state = next;
        *trust_out = trust;
        info!(
            volume_id = %params.volume_id,
            pod = %format_args!("{}/{}", req.pod.namespace, req.pod.name),
            target = %params.target_path.display(),
            "volume published"
        );
        Ok(match issued {
            Some(revision) => Published::Issued { revision },
            None => Published::Issued {
                revision: state.current.as_ref().map_or(0, |c| c.revision),
            },
        })
    }

    fn mount_memory(&self, paths: &VolumePaths) -> Result<(), VolumeError> {
        let mkdir = |dir: &Path, mode| {
            fs::DirBuilder::new()
                .mode(mode)
                .create(dir)
                .or_else(|e| {
                    if e.kind() == io::ErrorKind::AlreadyExists {
                        Ok(())
                    } else {
                        Err(e)
                    }
                })
                .map_err(VolumeError::io_at("create", dir))
        };
        mkdir(&paths.mem, 0o700)?;
        if !self
            .mounter
            .is_mounted(&paths.mem)
            .map_err(VolumeError::io_at("inspect mounts for", &paths.mem))?
        {
            self.mounter
                .mount_tmpfs(
                    &paths.mem,
                    &self.store.mount_source(paths),
                    self.cfg.tmpfs_size,
                    0o755,
                )
                .map_err(VolumeError::io_at("mount tmpfs at", &paths.mem))?;
        }
        mkdir(&paths.files, 0o755)?;
        mkdir(&paths.keys, 0o700)?;
        Ok(())
    }

    pub(crate) fn bind_target(
        &self,
        paths: &VolumePaths,
        target: &Path,
    ) -> Result<(), VolumeError> {
        // Checked again here, not only at the first publish: a retried publish and recovery's
        // re-bind come back to the target later.
        check_no_link_below_pods(&self.cfg.kubelet_dir, target, true)?;
        // Anything but our own bind would be taken for it, and the pod would see its contents.
        self.refuse_foreign_mount(target, &paths.key)?;
        if self
            .mounter
            .mount_at(target)
            .map_err(VolumeError::io_at("inspect mounts for", target))?
            .is_some()
        {
            return Ok(());
        }
        match fs::symlink_metadata(target) {
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(VolumeError::InvalidArgument(format!(
                    "target_path {} is a symbolic link; refusing to mount through it",
                    target.display()
                )));
            }
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(VolumeError::InvalidArgument(format!(
                    "target_path {} exists and is not a directory",
                    target.display()
                )));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                crate::files::mount::create_dir_beneath(&self.pods_dir(), target, 0o750)
                    .map_err(VolumeError::io_at("create target directory", target))?;
            }
            Err(e) => return Err(VolumeError::io_at("inspect", target)(e)),
        }
        self.mounter
            .bind_read_only_beneath(&paths.files, &self.pods_dir(), target)
            .map_err(VolumeError::io_at("bind-mount read-only at", target))
    }

    /// kubelet's pods directory: every target is reached from here without following links.
    fn pods_dir(&self) -> PathBuf {
        self.cfg.kubelet_dir.join("pods")
    }

    /// A mount at the target that is not volume `key`'s bind: [`VolumeError::ForeignMount`].
    fn refuse_foreign_mount(&self, target: &Path, key: &str) -> Result<(), VolumeError> {
        match self
            .mounter
            .mount_at(target)
            .map_err(VolumeError::io_at("inspect mounts for", target))?
        {
            Some(m) if !self.is_our_bind(&m, Some(key)) => Err(VolumeError::ForeignMount {
                target: target.to_path_buf(),
                fs_type: m.fs_type,
                mount_source: m.source,
                root: m.root,
            }),
            _ => Ok(()),
        }
    }

    /// Whether `m` is a bind certvol made: a mount of one of this data root's tmpfs (the source
    /// names the store and the volume) whose root is the tmpfs's `files` directory. With `key`,
    /// only that volume's. A subPath bind kubelet makes of a file or directory inside the volume
    /// carries the same source but a deeper root, and is not ours.
    pub(crate) fn is_our_bind(&self, m: &MountInfo, key: Option<&str>) -> bool {
        m.fs_type == "tmpfs"
            && m.root == FILES_ROOT
            && self
                .store
                .key_from_mount_source(&m.source)
                .is_some_and(|k| key.is_none_or(|want| want == k))
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
        if let Ok(mut passwords) = self.passwords.lock() {
            passwords.insert(volume_id.to_owned(), password.clone());
        }
        Ok(())
    }

    /// The PKCS#12 password kept at publish: from memory, or after a driver restart from the
    /// volume's tmpfs.
    fn kept_password(&self, paths: &VolumePaths, volume_id: &str) -> Result<Password, VolumeError> {
        if let Some(password) = self
            .passwords
            .lock()
            .ok()
            .and_then(|p| p.get(volume_id).cloned())
        {
            return Ok(password);
        }
        let path = paths.pkcs12_password();
        let bytes = Zeroizing::new(fs::read(&path).map_err(VolumeError::io_at("read", &path))?);
        let text = std::str::from_utf8(&bytes)
            .map_err(|_| VolumeError::Internal(format!("{} is not UTF-8", path.display())))?;
        let password = Password::new(text);
        if let Ok(mut passwords) = self.passwords.lock() {
            passwords.insert(volume_id.to_owned(), password.clone());
        }
        Ok(password)
    }

    /// Steps 4-6 of a publish, shared with renewal: key (new, reused or the pending one from an
    /// interrupted attempt), request, verification, atomic file swap, state update.
    async fn issue_revision(
        &self,
        op: &str,
        paths: &VolumePaths,
        state: &mut VolumeState,
        req: &Arc<CertRequest>,
        revision: u64,
        with: With<'_>,
    ) -> Result<(), VolumeError> {
        let With {
            reuse,
            trust,
            worker,
        } = with;
        // Before anything is issued: a renewal that could not write the keystore must not
        // consume a request.
        let password = match &req.files.pkcs12 {
            Some(_) => Some(self.kept_password(paths, &state.volume_id)?),
            None => None,
        };
        let pending_key = paths.key(revision);
        let resumed = match &state.pending {
            Some(p) if p.revision == revision => match fs::read(&pending_key) {
                Ok(der) => Some(PrivateKey::from_pkcs8_der(&Zeroizing::new(der))?),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    debug!(volume_id = %state.volume_id, revision, "the pending key is gone; filing with a new key");
                    None
                }
                Err(e) => return Err(VolumeError::io_at("read", &pending_key)(e)),
            },
            _ => None,
        };
        let request_name = issuer::request_name(&self.cfg.node_id, &state.volume_id, revision);
        let key = match resumed {
            Some(key) => {
                debug!(volume_id = %state.volume_id, request = %request_name, "resuming pending request");
                key
            }
            None => {
                let key = match reuse {
                    Some(key) => key,
                    None => {
                        let pools = KeyPools {
                            all: &self.keygen,
                            slow: &self.slow_keygen,
                        };
                        generate_key(pools, &req.pod.namespace, req.key_algorithm).await?
                    }
                };
                fsutil::replace(&pending_key, key.pkcs8_der(), 0o600)
                    .map_err(VolumeError::io_at("write", &pending_key))?;
                // Changed on a copy and adopted only once it is on disk: a request must never be
                // filed on the strength of a record the data root refused (full, read-only).
                let mut next = state.clone();
                next.last_revision = next.last_revision.max(revision);
                next.pending = Some(PendingRecord {
                    revision,
                    request_name: request_name.clone(),
                    key_algorithm: key.algorithm(),
                    started_at: store::to_offset(self.clock.now()),
                });
                if !next.requests.contains(&request_name) {
                    next.requests.push(request_name.clone());
                }
                if next.current.is_none() {
                    next.phase = Phase::Issuing;
                }
                self.save(&next).await?;
                *state = next;
                crashpoint::hit(&format!("{op}:key-saved"));
                key
            }
        };

        let csr = keys::build_csr(req, &key)?;
        let ireq = IssueRequest {
            name: request_name.clone(),
            volume_id: state.volume_id.clone(),
            node_id: self.cfg.node_id.clone(),
            csr_pem: csr.pem,
            csr_der: csr.der,
            cert: req.clone(),
            token: self
                .tokens
                .lock()
                .ok()
                .and_then(|t| t.get(&state.volume_id).cloned()),
            worker: worker.clone(),
        };
        let answer = tokio::time::timeout(
            self.cfg.issue_timeout + Duration::from_secs(5),
            self.issuer.issue(&ireq),
        )
        .await;
        // The issuer may have put the worker down to wait; what follows is work again.
        worker.resume().await;
        let issued =
            // Issuers answer Timeout themselves at `issue_timeout`; this outer limit only guards
            // against one that does not.
            match answer {
                Ok(result) => {
                    crate::obs::metrics::global().issuance(self.issuer.kind(), crate::issuer::outcome_of(&result));
                    let issued = result?;
                    crashpoint::hit(&format!("{op}:signed"));
                    issued
                }
                Err(_) => {
                    crate::obs::metrics::global().issuance(self.issuer.kind(), IssueOutcome::Timeout);
                    return Err(IssueError::Timeout {
                        request: request_name,
                    }
                    .into());
                }
            };

        let bad = |message: String| VolumeError::BadCertificate {
            request: request_name.clone(),
            message,
        };
        let chain = pki::parse_pem_chain(&issued.chain_pem).map_err(|e| bad(e.to_string()))?;
        let leaf = chain
            .first()
            .ok_or_else(|| bad("the chain holds no certificate".into()))?;
        if !pki::key_matches(leaf, &key).map_err(|e| bad(e.to_string()))? {
            return Err(bad(
                "its public key does not match the private key this node generated".into(),
            ));
        }
        let now = self.clock.now();
        if leaf.not_after <= now {
            // Signed in time but seen too late (the node could not watch its request, e.g.
            // during an API outage, while a short certificate ran out). Asking the same request
            // again only returns the same certificate: forget it so the retry files the next
            // revision. Saved best effort: if the save fails, the retry sees the same expired
            // certificate and gets here again.
            let mut next = state.clone();
            next.pending = None;
            if self.save(&next).await.is_ok() {
                *state = next;
            }
            return Err(VolumeError::Expired {
                request: request_name,
                not_after: leaf.not_after,
            });
        }
        if !issued.ca_pem.trim().is_empty() {
            let ca = pki::parse_pem_chain(&issued.ca_pem).map_err(|e| bad(e.to_string()))?;
            pki::verify_chain(&chain, &ca, now).map_err(|e| bad(e.to_string()))?;
        }
        let (not_before, not_after, serial) =
            (leaf.not_before, leaf.not_after, leaf.serial_hex.clone());

        // The bundle is built with the new CA (and any retired one still in its overlap) and
        // written in the same generation as the key and certificate.
        let (issuing_cas, bundle) = match &req.trust {
            Some(spec) => {
                let cas = rotation::rotate(
                    &state.issuing_cas,
                    &issued.ca_pem,
                    now,
                    OverlapPolicy {
                        requested_duration: req.duration,
                        // The certificate being replaced was signed by the CA that may retire.
                        latest_known_leaf: state
                            .current
                            .as_ref()
                            .map(|c| store::to_system(c.not_after)),
                    },
                )
                .map_err(|e| bad(e.to_string()))?;
                let issuing = rotation::in_bundle(&cas, now);
                let bundle = match trust {
                    BundleFrom::Sources(trust) => build_bundle(spec, trust, &issuing)?,
                    BundleFrom::LastWritten => {
                        // attrs sets the file name whenever it sets the trust spec.
                        let name = req.files.trust_bundle.as_deref().ok_or_else(|| {
                            VolumeError::Internal("a trust bundle without a file name".into())
                        })?;
                        let old = writer::read(&paths.files, name)?;
                        let mut sources = Vec::new();
                        if spec.issuer_ca {
                            sources.push(SourcePem::new("issuing CA", issuing));
                        }
                        sources.push(SourcePem::new(
                            "the bundle last written",
                            String::from_utf8_lossy(&old).into_owned(),
                        ));
                        trust_bundle::assemble(&sources)
                    }
                };
                (cas, Some(bundle))
            }
            None => (Vec::new(), None),
        };
        let gid = req.fs_group.or(state.mount_group);
        let files = layout::render(
            req,
            &Material {
                key,
                chain_pem: issued.chain_pem,
                ca_pem: issued.ca_pem,
                trust_bundle_pem: bundle.as_ref().map(Bundle::pem),
                pkcs12_password: password,
            },
        )?;
        self.write_files(&state.volume_id, paths, &files, gid)?;
        crashpoint::hit(&format!("{op}:files-written"));

        let renew_at = certvol_renewer::renew_at(
            not_before,
            not_after,
            req.renew_before,
            &self.cfg.policy,
            rand::random::<f64>(),
        );
        // As above, adopted only once on disk: if the data root refuses the record, memory keeps
        // the pending record, and the retry resumes it with the same key (keys never move).
        let mut next = state.clone();
        next.current = Some(CertRecord {
            revision,
            request_name,
            serial,
            not_before: store::to_offset(not_before),
            not_after: store::to_offset(not_after),
            renew_at: store::to_offset(renew_at),
        });
        next.pending = None;
        next.renewal = RenewalRecord::default();
        next.issuing_cas = issuing_cas;
        self.save(&next).await?;
        *state = next;
        crashpoint::hit(&format!("{op}:recorded"));
        prune_keys(paths, revision);
        // The charge counted the key this revision replaced, now pruned.
        self.tmpfs
            .set(&state.volume_id, crate::files::budget::measure(&paths.mem));
        if let Some(bundle) = &bundle {
            self.report_rejected(req, &bundle.rejected).await;
        }
        Ok(())
    }

    /// Subscribes to the Kubernetes objects the volume's trust spec names. Bad input (a source
    /// in a namespace the policy forbids, or Kubernetes sources on a node without API access)
    /// is InvalidArgument. A new volume is refused past its namespace's watch budget; an
    /// `admitted` one (published already: renewals, recovery) is not.
    fn open_trust(
        &self,
        req: &CertRequest,
        admitted: bool,
    ) -> Result<Option<VolumeTrust>, VolumeError> {
        let Some(spec) = &req.trust else {
            return Ok(None);
        };
        let Some(attribute) = api_attribute(spec) else {
            return Ok(None);
        };
        let Some(cache) = &self.trust.cache else {
            return Err(VolumeError::InvalidArgument(format!(
                "volume attribute {attribute:?} names Kubernetes objects, but this node has no \
                 Kubernetes API access (--issuer local); accepted here: \
                 {p}trust-issuer-ca and {p}trust-public-roots",
                p = attrs::CERTVOL_PREFIX
            )));
        };
        let subscribed = if admitted {
            cache.resubscribe(spec, &req.pod.namespace)
        } else {
            cache.subscribe(spec, &req.pod.namespace)
        };
        subscribed.map(Some).map_err(VolumeError::Trust)
    }

    /// Hands a volume whose bundle was just written to the refresher.
    fn watch_trust(&self, state: &VolumeState, req: &CertRequest, trust: Option<VolumeTrust>) {
        if req.trust.is_none() {
            return;
        }
        if let Some(refresher) = &self.trust.refresher {
            refresher.send(Message::Watch {
                volume_id: state.volume_id.clone(),
                trust,
                next_change: rotation::next_change(&state.issuing_cas, self.clock.now()),
            });
        }
    }

    /// Start-up: asks the refresher to re-subscribe a recovered volume with a trust bundle.
    /// `resume_trust` then checks that the volume is published and has a trust bundle.
    pub(crate) fn resume_trust_watch(&self, volume_id: &str) {
        if let Some(refresher) = &self.trust.refresher {
            refresher.send(Message::Resume {
                volume_id: volume_id.to_owned(),
            });
        }
    }

    /// A missing or unreadable source: a Warning event on the pod (the log has the error from
    /// the caller). Policy errors are the caller's bad input and answered InvalidArgument only.
    async fn report_source_error(&self, req: &CertRequest, error: &SourceError) {
        if matches!(error, SourceError::Policy(_)) {
            return;
        }
        if let Some(events) = &self.trust.events {
            let message = error.to_string();
            events
                .report(&req.pod, events::REASON_TRUST_SOURCE, &message, &message)
                .await;
        }
    }

    /// Entries of trust sources that are not certificates are left out: log and event.
    async fn report_rejected(&self, req: &CertRequest, rejected: &[Rejected]) {
        for r in rejected {
            let message = format!("trust bundle: left out {r}");
            warn!(pod = %format_args!("{}/{}", req.pod.namespace, req.pod.name), "{message}");
            if let Some(events) = &self.trust.events {
                events
                    .report(&req.pod, events::REASON_TRUST_REJECTED, &message, &message)
                    .await;
            }
        }
    }

    /// Rebuilds a published volume's trust bundle from `trust` (waiting until its sources are
    /// listed, bounded by the issue timeout) and the recorded issuing CAs, and rewrites its
    /// files atomically with the same key and certificates. On a source error the old files
    /// stay. Never talks to the issuer.
    pub(crate) async fn refresh_trust(
        &self,
        volume_id: &str,
        trust: Option<&mut VolumeTrust>,
    ) -> Refreshed {
        let ready = match trust {
            Some(trust) => trust
                .ready(self.cfg.issue_timeout)
                .await
                .map(|()| Some(&*trust)),
            None => Ok(None),
        };
        let (slot, mut guard) = match self.lock(volume_id).await {
            Ok(locked) => locked,
            Err(e) => {
                warn!(volume_id, error = %e, "trust refresh could not load the volume");
                crate::obs::metrics::global()
                    .trust_refresh(crate::obs::metrics::RefreshOutcome::Failed);
                return Refreshed::Kept { next_change: None };
            }
        };
        let result = match guard.as_mut() {
            Some(state) if state.phase == Phase::Published && state.current.is_some() => {
                match attrs::parse(&state.context.clone().into_iter().collect()) {
                    Ok(req) if req.trust.is_some() => {
                        let outcome = match ready {
                            Ok(trust) => self.rewrite_bundle(state, &req, trust).await,
                            Err(e) => Err(VolumeError::Trust(e)),
                        };
                        Some((req, outcome, state.issuing_cas.clone()))
                    }
                    _ => None,
                }
            }
            _ => None,
        };
        self.release(volume_id, &slot, &guard);
        drop(guard);
        let Some((req, outcome, cas)) = result else {
            return Refreshed::Gone;
        };
        let metric = match &outcome {
            Ok(None) => crate::obs::metrics::RefreshOutcome::Unchanged,
            Ok(Some(rejected)) => {
                info!(volume_id, "trust bundle rewritten");
                self.report_rejected(&req, rejected).await;
                crate::obs::metrics::RefreshOutcome::Updated
            }
            Err(VolumeError::Trust(e)) => {
                warn!(volume_id, error = %e, "trust bundle not refreshed; the volume keeps its current files");
                self.report_source_error(&req, e).await;
                crate::obs::metrics::RefreshOutcome::SourceError
            }
            Err(e) => {
                warn!(volume_id, error = %e, "trust bundle not refreshed; the volume keeps its current files");
                crate::obs::metrics::RefreshOutcome::Failed
            }
        };
        crate::obs::metrics::global().trust_refresh(metric);
        let mut next_change = rotation::next_change(&cas, self.clock.now());
        // Nothing else would bring the rewrite back (its sources did not change again): try
        // again once other volumes may have gone.
        if matches!(outcome, Err(VolumeError::TmpfsBudget(_))) {
            let retry = self.clock.now() + crate::files::budget::RETRY;
            next_change = Some(next_change.map_or(retry, |at| at.min(retry)));
        }
        Refreshed::Kept { next_change }
    }

    /// Writes a new generation of the volume's files with a freshly built bundle, unless the
    /// bundle is what the volume already has (`Ok(None)`); returns the rejected entries.
    async fn rewrite_bundle(
        &self,
        state: &mut VolumeState,
        req: &CertRequest,
        trust: Option<&VolumeTrust>,
    ) -> Result<Option<Vec<Rejected>>, VolumeError> {
        // attrs sets the file name whenever it sets the trust spec.
        let (Some(spec), Some(bundle_file)) = (&req.trust, req.files.trust_bundle.as_deref())
        else {
            return Ok(None);
        };
        let now = self.clock.now();
        let paths = self.store.paths(&state.volume_id);
        let before = state.issuing_cas.len();
        state
            .issuing_cas
            .retain(|c| c.keep_until.is_none_or(|t| t > now));
        if state.issuing_cas.len() != before {
            self.save(state).await?;
        }
        let bundle = build_bundle(spec, trust, &rotation::in_bundle(&state.issuing_cas, now))?;
        let pem = bundle.pem();
        let names = &req.files;
        let mut current =
            writer::read_all(&paths.files, &[bundle_file, &names.certificate, &names.ca])?;
        // read_all returns one entry per name, in order.
        let (ca_pem, chain_pem, old_bundle) = match (current.pop(), current.pop(), current.pop()) {
            (Some(ca), Some(chain), Some(old)) => (ca, chain, old),
            _ => {
                return Err(VolumeError::Internal(
                    "the volume's files are incomplete".into(),
                ));
            }
        };
        if old_bundle == pem.as_bytes() {
            return Ok(None);
        }
        let text = |bytes: Vec<u8>, what: &str| {
            String::from_utf8(bytes)
                .map_err(|_| VolumeError::Internal(format!("the volume's {what} is not UTF-8")))
        };
        let key_path = paths.key(
            state
                .current
                .as_ref()
                .ok_or_else(|| VolumeError::Internal("the volume has no certificate yet".into()))?
                .revision,
        );
        let der =
            Zeroizing::new(fs::read(&key_path).map_err(VolumeError::io_at("read", &key_path))?);
        let password = match &req.files.pkcs12 {
            Some(_) => Some(self.kept_password(&paths, &state.volume_id)?),
            None => None,
        };
        let files = layout::render(
            req,
            &Material {
                key: PrivateKey::from_pkcs8_der(&der)?,
                chain_pem: text(chain_pem, "certificate chain")?,
                ca_pem: text(ca_pem, "CA file")?,
                trust_bundle_pem: Some(pem),
                pkcs12_password: password,
            },
        )?;
        self.write_files(
            &state.volume_id,
            &paths,
            &files,
            req.fs_group.or(state.mount_group),
        )?;
        crashpoint::hit("refresh:files-written");
        Ok(Some(bundle.rejected))
    }

    /// After a restart: subscribe a recovered volume to its sources and refresh its bundle.
    pub(crate) async fn resume_trust(&self, volume_id: &str) -> (Option<VolumeTrust>, Refreshed) {
        let req = match self.status(volume_id).await {
            Ok(Some(state)) if state.phase == Phase::Published => {
                attrs::parse(&state.context.into_iter().collect()).ok()
            }
            _ => None,
        };
        let Some(req) = req.filter(|r| r.trust.is_some()) else {
            return (None, Refreshed::Gone);
        };
        let mut trust = match self.open_trust(&req, true) {
            Ok(trust) => trust,
            Err(e) => {
                warn!(volume_id, error = %e, "cannot watch the volume's trust sources; its bundle stays as it is");
                return (None, Refreshed::Gone);
            }
        };
        let outcome = self.refresh_trust(volume_id, trust.as_mut()).await;
        (trust, outcome)
    }

    /// NodeUnpublishVolume. Unknown volumes are fine (kubelet repeats unpublish after restarts).
    /// A target outside kubelet's pods directory, or reached through a symbolic link below it,
    /// is refused before anything is unmounted or removed.
    pub async fn unpublish(&self, volume_id: &str, target_path: &Path) -> Result<(), VolumeError> {
        check_volume_id(volume_id)?;
        check_in_pods_dir(&self.cfg.kubelet_dir, target_path)?;
        check_no_link_below_pods(&self.cfg.kubelet_dir, target_path, false)?;
        self.refuse_link_at_target(target_path)?;
        let (slot, mut guard) = self.lock(volume_id).await?;
        let result = match guard.take() {
            Some(state) => {
                if state.target_path != target_path {
                    warn!(volume_id, recorded = %state.target_path.display(), requested = %target_path.display(), "unpublish names another target than the one published; removing the published one");
                }
                match self.remove_volume(&state).await {
                    Ok(()) => Ok(()),
                    Err(e) => {
                        *guard = Some(state);
                        Err(e)
                    }
                }
            }
            None => self.unbind_target(target_path, None),
        };
        self.release(volume_id, &slot, &guard);
        result.map_err(|e| e.on_data_root(self.store.root()))
    }

    /// Removes everything a volume has: renewal, target bind, target dir, tmpfs, issuer requests,
    /// and state last, recording `Unpublishing` first so that a crash part-way is finished later.
    /// Writes a new generation of the volume's files if the node's volumes stay within
    /// `--max-volume-bytes` once it replaces the current one; over budget nothing is written
    /// and the current files stay.
    fn write_files(
        &self,
        volume_id: &str,
        paths: &VolumePaths,
        files: &[writer::FileSpec],
        gid: Option<u32>,
    ) -> Result<(), VolumeError> {
        let cost =
            crate::files::budget::files_cost(files) + crate::files::budget::measure(&paths.keys);
        let previous = self.tmpfs.charge(volume_id, cost)?;
        match writer::publish(&paths.files, files, gid, self.clock.now()) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.tmpfs.set(volume_id, previous);
                Err(e.into())
            }
        }
    }

    /// Records what a volume kept across a restart keeps in its tmpfs.
    pub(crate) fn measure_tmpfs(&self, volume_id: &str) {
        let paths = self.store.paths(volume_id);
        self.tmpfs
            .set(volume_id, crate::files::budget::measure(&paths.mem));
    }

    /// The bytes all volumes keep in tmpfs, and the budget (`--max-volume-bytes`).
    pub fn tmpfs_usage(&self) -> (u64, u64) {
        (self.tmpfs.total(), self.tmpfs.max())
    }

    pub(crate) async fn remove_volume(&self, state: &VolumeState) -> Result<(), VolumeError> {
        let paths = self.store.paths(&state.volume_id);
        if state.phase != Phase::Unpublishing && paths.state.exists() {
            let mut marked = state.clone();
            marked.phase = Phase::Unpublishing;
            // First: if the data root refuses the record (full, read-only), the volume stays as
            // it was, still renewed and refreshed, and kubelet's retry of the unpublish finds it.
            self.save(&marked).await?;
            crashpoint::hit("unpublish:marked");
        }
        self.scheduler.cancel(&state.volume_id);
        self.set_token(&state.volume_id, None);
        if let Ok(mut passwords) = self.passwords.lock() {
            passwords.remove(&state.volume_id);
        }
        if let Some(refresher) = &self.trust.refresher {
            refresher.send(Message::Forget {
                volume_id: state.volume_id.clone(),
            });
        }
        self.unbind_target(&state.target_path, Some(&paths.key))?;
        crashpoint::hit("unpublish:unbound");
        self.mounter
            .unmount(&paths.mem)
            .map_err(VolumeError::io_at("unmount", &paths.mem))?;
        if !state.requests.is_empty()
            && let Err(e) = self
                .issuer
                .forget(namespace_of(state), &state.requests)
                .await
        {
            // The issuer keeps the requests (e.g. garbage collection removes them with the pod);
            // the volume itself is gone either way.
            warn!(volume_id = %state.volume_id, error = %e, "could not delete the volume's issuer requests");
        }
        self.store.remove(&paths)?;
        self.tmpfs.release(&state.volume_id);
        self.count_pod_volume(&state.target_path, &state.volume_id, false);
        crate::obs::metrics::global().untrack_volume(&state.volume_id);
        info!(volume_id = %state.volume_id, "volume removed");
        Ok(())
    }

    /// A symbolic link at the target is refused: unmounting or removing through it would act
    /// on whatever it leads to. The directory mounter's fake bind is such a link, made by
    /// certvol and recorded as its mount, so that one is allowed.
    fn refuse_link_at_target(&self, target: &Path) -> Result<(), VolumeError> {
        match fs::symlink_metadata(target) {
            Ok(meta) if meta.file_type().is_symlink() => {
                let fake_bind = self
                    .mounter
                    .mount_at(target)
                    .map_err(VolumeError::io_at("inspect mounts for", target))?
                    .is_some_and(|m| self.is_our_bind(&m, None));
                if fake_bind {
                    return Ok(());
                }
                Err(VolumeError::InvalidArgument(format!(
                    "target_path {} is a symbolic link; refusing to unmount or remove through it",
                    target.display()
                )))
            }
            _ => Ok(()),
        }
    }

    /// Unmounts certvol's bind at the target (the volume `key`'s, or with `None` any of this
    /// data root's) and removes the directory if it is empty. Never follows a symlink, never
    /// unmounts a mount certvol did not make and never removes anything else.
    pub(crate) fn unbind_target(
        &self,
        target: &Path,
        key: Option<&str>,
    ) -> Result<(), VolumeError> {
        if let Err(e) = check_no_link_below_pods(&self.cfg.kubelet_dir, target, false) {
            // What the link leads to is not ours to unmount or remove; the volume's own tmpfs
            // and state still go.
            warn!(target = %target.display(), error = %e, "leaving the target alone");
            return Ok(());
        }
        match self
            .mounter
            .mount_at(target)
            .map_err(VolumeError::io_at("inspect mounts for", target))?
        {
            Some(m) if self.is_our_bind(&m, key) => self
                .mounter
                .unmount_beneath(&self.pods_dir(), target)
                .map_err(VolumeError::io_at("unmount", target))?,
            Some(m) => {
                // Not an error: kubelet repeats a failed unpublish forever and the pod stays
                // Terminating, yet no retry could ever succeed. kubelet itself does not remove a
                // target that is still a mount point, so answering OK leaves the mount in place.
                warn!(
                    target = %target.display(),
                    fs_type = %m.fs_type,
                    source = %m.source,
                    root = %m.root,
                    "the target holds a mount certvol did not make; leaving it alone"
                );
                return Ok(());
            }
            None => {}
        }
        match fs::symlink_metadata(target) {
            Ok(meta) if meta.is_dir() => match fs::remove_dir(target) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(VolumeError::io_at("remove target directory", target)(e)),
            },
            Ok(meta) if meta.file_type().is_symlink() => {
                warn!(target = %target.display(), "the target is a symbolic link; leaving it alone");
                Ok(())
            }
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(VolumeError::io_at("inspect", target)(e)),
        }
    }

    /// Puts a published volume on the renewal queue at its recorded time.
    pub(crate) fn schedule(&self, state: &VolumeState) {
        if state.phase != Phase::Published {
            return;
        }
        let renew = attrs::parse(&state.context.clone().into_iter().collect())
            .map(|r| r.renew)
            .unwrap_or(true);
        if !renew {
            return;
        }
        let at = if state.pending.is_some() {
            // A renewal was in flight when the driver stopped: resume it now.
            self.clock.now()
        } else if let Some(next) = state.renewal.next_attempt {
            store::to_system(next)
        } else if let Some(current) = &state.current {
            store::to_system(current.renew_at)
        } else {
            return;
        };
        self.scheduler
            .schedule(&state.volume_id, namespace_of(state), at);
    }

    /// Moves every renewal that failed and waits out its backoff to now: called when the API
    /// server answers again after an outage, so that certificates that expired (or came close)
    /// during it are renewed at once rather than after a backoff grown during the outage (up to
    /// the policy's cap, minutes). A volume busy with another operation is skipped: that
    /// operation reschedules it. Returns how many renewals were moved.
    pub fn retry_failed_renewals(&self) -> usize {
        let slots: Vec<(String, Slot)> = match self.slots.lock() {
            Ok(slots) => slots
                .iter()
                .map(|(id, s)| (id.clone(), s.clone()))
                .collect(),
            Err(_) => return 0,
        };
        let now = self.clock.now();
        let mut moved = 0;
        for (volume_id, slot) in slots {
            let Ok(mut guard) = slot.try_lock() else {
                continue;
            };
            if let Some(state) = guard.as_mut()
                && state.phase == Phase::Published
                && state.renewal.failures > 0
            {
                // The backoff starts over: the outage it grew during has ended. (In memory only;
                // the attempt's outcome is saved either way.)
                state.renewal.failures = 0;
                self.scheduler
                    .schedule(&volume_id, namespace_of(state), now);
                moved += 1;
            }
        }
        moved
    }

    /// One renewal of a published volume, outside the scheduler's workers (tests, tools).
    pub async fn renew_volume(&self, volume_id: &str) -> RenewOutcome {
        self.renew_on(volume_id, &Lease::default()).await
    }

    /// One renewal of a published volume on the scheduler's `worker`. Failures keep the old,
    /// still-valid files in place.
    async fn renew_on(&self, volume_id: &str, worker: &Lease) -> RenewOutcome {
        let (slot, mut guard) = match self.lock(volume_id).await {
            Ok(locked) => locked,
            Err(e) => {
                warn!(volume_id, error = %e, "renewal could not load the volume");
                return RenewOutcome::Done;
            }
        };
        let outcome = match guard.as_mut() {
            Some(state) if state.phase == Phase::Published => {
                self.renew_locked(state, worker).await
            }
            _ => RenewOutcome::Done,
        };
        self.release(volume_id, &slot, &guard);
        outcome
    }

    async fn renew_locked(&self, state: &mut VolumeState, worker: &Lease) -> RenewOutcome {
        let req = match attrs::parse(&state.context.clone().into_iter().collect()) {
            Ok(req) => Arc::new(req),
            Err(e) => {
                warn!(volume_id = %state.volume_id, error = %e, "recorded attributes no longer parse; renewal stopped");
                return RenewOutcome::Done;
            }
        };
        if !req.renew {
            return RenewOutcome::Done;
        }
        let Some(current) = state.current.clone() else {
            return RenewOutcome::Done;
        };
        let paths = self.store.paths(&state.volume_id);
        let revision = state
            .pending
            .as_ref()
            .map_or(state.last_revision.max(current.revision) + 1, |p| {
                p.revision
            });
        let mut trust = None;
        let mut stale = false;
        let result = async {
            trust = self.open_trust(&req, true)?;
            // Waiting for the trust sources' watches is not work: the worker is put down.
            let ready = match trust.as_mut() {
                Some(t) => {
                    worker.pause();
                    let ready = t.ready(self.cfg.issue_timeout).await;
                    worker.resume().await;
                    ready
                }
                None => Ok(()),
            };
            if let Err(e) = ready {
                warn!(volume_id = %state.volume_id, error = %e, "renewing with the trust bundle as last written");
                self.report_source_error(&req, &e).await;
                stale = true;
            }
            let bundle_from = if stale {
                BundleFrom::LastWritten
            } else {
                BundleFrom::Sources(trust.as_ref())
            };
            let reuse = if req.reuse_private_key && state.pending.is_none() {
                let path = paths.key(current.revision);
                let der = fs::read(&path)
                    .map(Zeroizing::new)
                    .map_err(VolumeError::io_at("read", &path))?;
                Some(PrivateKey::from_pkcs8_der(&der)?)
            } else {
                None
            };
            self.issue_revision(
                "renew",
                &paths,
                state,
                &req,
                revision,
                With {
                    reuse,
                    trust: bundle_from,
                    worker,
                },
            )
            .await
        }
        .await;
        match result {
            Ok(()) => {
                crate::obs::metrics::global().renewal(true);
                if let Some(c) = &state.current {
                    crate::obs::metrics::global()
                        .track_volume(&state.volume_id, store::to_system(c.not_after));
                }
                self.prune_requests(state).await;
                self.watch_trust(state, &req, trust.take());
                info!(volume_id = %state.volume_id, revision, "certificate renewed");
                match &state.current {
                    Some(c) => RenewOutcome::Renewed {
                        next: store::to_system(c.renew_at),
                    },
                    None => RenewOutcome::Done,
                }
            }
            Err(err) => {
                let err = err.on_data_root(self.store.root());
                crate::obs::metrics::global().renewal(false);
                if let VolumeError::Issue(e) = &err
                    && !e.is_transient()
                {
                    // cert-manager never retries a denied or failed request: the next attempt
                    // must file a new one (with a new key; this one is of no further use).
                    state.pending = None;
                    prune_keys(&paths, current.revision);
                }
                let failures = state.renewal.failures.saturating_add(1);
                let retry = certvol_renewer::retry_at(
                    self.clock.now(),
                    store::to_system(current.not_after),
                    failures,
                    &self.cfg.policy,
                    rand::random::<f64>(),
                );
                state.renewal = RenewalRecord {
                    failures,
                    last_error: Some(err.to_string()),
                    next_attempt: Some(store::to_offset(retry)),
                };
                if let Err(e) = self.save(state).await {
                    warn!(volume_id = %state.volume_id, error = %e, "could not record the renewal failure");
                }
                warn!(volume_id = %state.volume_id, error = %err, failures, "renewal failed; the current certificate stays in place");
                RenewOutcome::Failed { retry_at: retry }
            }
        }
    }

    /// Keeps the newest `request_history` requests and asks the issuer to forget the rest.
    async fn prune_requests(&self, state: &mut VolumeState) {
        let keep = self.cfg.request_history.max(1);
        if state.requests.len() <= keep {
            return;
        }
        let old: Vec<String> = state.requests[..state.requests.len() - keep].to_vec();
        match self.issuer.forget(namespace_of(state), &old).await {
            Ok(()) => {
                state.requests.drain(..old.len());
                if let Err(e) = self.save(state).await {
                    warn!(volume_id = %state.volume_id, error = %e, "could not record pruned requests");
                }
            }
            Err(e) => {
                warn!(volume_id = %state.volume_id, error = %e, "could not delete old issuer requests")
            }
        }
    }
}

impl Renewer for VolumeManager {
    fn renew(
        self: Arc<Self>,
        volume_id: String,
        worker: Lease,
    ) -> BoxFuture<'static, RenewOutcome> {
        Box::pin(async move { self.renew_on(&volume_id, &worker).await })
    }
}

/// The pod's namespace, where the volume's requests were filed.
fn namespace_of(state: &VolumeState) -> &str {
    state
        .context
        .get("csi.storage.k8s.io/pod.namespace")
        .map_or("", String::as_str)
}

/// Key generation is CPU-bound (seconds for RSA 4096), so it runs off the async worker threads,
/// on a permit of `pool` taken for `namespace`. Fairness is per namespace, not per pod: pods are
/// as cheap to create as volumes, so a per-pod share would give one tenant as many shares as it
/// cares to create pods, while a namespace is what a tenant is given.
async fn generate_key(
    pools: KeyPools<'_>,
    namespace: &str,
    alg: KeyAlgorithm,
) -> Result<PrivateKey, VolumeError> {
    let slow = match alg {
        KeyAlgorithm::Rsa2048 | KeyAlgorithm::Rsa3072 | KeyAlgorithm::Rsa4096 => {
            Some(pools.slow.acquire(namespace).await)
        }
        KeyAlgorithm::EcdsaP256 | KeyAlgorithm::EcdsaP384 | KeyAlgorithm::Ed25519 => None,
    };
    let permit = pools.all.acquire(namespace).await;
    // The permits move into the blocking task: a publish cancelled meanwhile does not stop the
    // generation, so the CPU stays taken until it ends.
    tokio::task::spawn_blocking(move || {
        let _permits = (permit, slow);
        PrivateKey::generate(alg)
    })
    .await
    .map_err(|e| VolumeError::Internal(format!("key generation task failed: {e}")))?
    .map_err(VolumeError::from)
}

/// The pools a key generation takes its permits from (see [`VolumeManager`]'s fields).
#[derive(Clone, Copy)]
struct KeyPools<'a> {
    all: &'a FairPool,
    slow: &'a FairPool,
}

/// Removes every key file but `keep`'s: the superseded key after an issuance is recorded, or a
/// pending key whose request failed for good. Best effort: a leftover key stays on the volume's
/// private tmpfs and is removed by the next issuance or with the volume.
fn prune_keys(paths: &VolumePaths, keep: u64) {
    let Ok(entries) = fs::read_dir(&paths.keys) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let revision = name.to_str().and_then(VolumePaths::key_revision);
        if revision.is_some_and(|r| r != keep)
            && let Err(e) = fs::remove_file(entry.path())
        {
            warn!(path = %entry.path().display(), error = %e, "could not remove a superseded key");
        }
    }
}

/// Refuses volume ids kubelet would never send: empty, longer than [`MAX_VOLUME_ID_BYTES`], or
/// with characters outside ASCII letters, digits, `-`, `_` and `.` (starting with a letter or
/// digit). Ids end up in request names, labels and log lines, so they must stay plain.
pub fn check_volume_id(volume_id: &str) -> Result<(), VolumeError> {
    let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    let ok = volume_id.len() <= MAX_VOLUME_ID_BYTES
        && volume_id.starts_with(|c: char| c.is_ascii_alphanumeric())
        && volume_id.chars().all(plain);
    if ok {
        return Ok(());
    }
    // A hostile id may be megabytes long: show only its start.
    let shown: String = volume_id.chars().take(80).collect();
    let cut = if shown.len() < volume_id.len() {
        format!(" (first 80 of {} bytes)", volume_id.len())
    } else {
        String::new()
    };
    Err(VolumeError::InvalidArgument(format!(
        "volume_id {shown:?}{cut} is not accepted; accepted: 1 to {MAX_VOLUME_ID_BYTES} ASCII letters, digits, '-', '_' or '.', starting with a letter or digit (kubelet sends \"csi-\" and 64 hex digits)"
    )))
}

/// The target must be absolute, without `.` or `..` components, and strictly inside
/// `<kubelet_dir>/pods/`, so that a caller on the CSI socket cannot make certvol mount over, or
/// unmount and remove, anything else on the node.
pub fn check_in_pods_dir(kubelet_dir: &Path, target: &Path) -> Result<(), VolumeError> {
    use std::path::Component;
    if !target.is_absolute()
        || target
            .components()
            .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
    {
        return Err(VolumeError::InvalidArgument(format!(
            "target_path {:?} must be an absolute path without \".\" or \"..\" components",
            target.display().to_string()
        )));
    }
    let pods = kubelet_dir.join("pods");
    if target.starts_with(&pods) && target != pods {
        return Ok(());
    }
    Err(VolumeError::InvalidArgument(format!(
        "target_path {:?} is not inside the kubelet pods directory {}/; certvol only mounts and unmounts volumes there (set --kubelet-dir, the Helm chart's kubeletRootDir, to kubelet's --root-dir to change it; configured: {})",
        target.display().to_string(),
        pods.display(),
        kubelet_dir.display()
    )))
}

/// The root (in mountinfo) of certvol's bind at a target: the `files` directory of the
/// volume's tmpfs.
pub(crate) const FILES_ROOT: &str = "/files";

/// Refuses a symbolic link at any directory between `<kubelet_dir>/pods` and the target
/// (exclusive), checked with lstat component by component: a directory replaced by a link would
/// make certvol mount, unmount or remove outside kubelet's tree. Links at or above the kubelet
/// directory itself (a relocated `/var/lib/kubelet`) are fine. `must_exist`: a missing directory
/// is an error (publish) or the end of what there is to check (unpublish).
fn check_no_link_below_pods(
    kubelet_dir: &Path,
    target: &Path,
    must_exist: bool,
) -> Result<(), VolumeError> {
    let pods = kubelet_dir.join("pods");
    let Some(parent) = target.parent() else {
        return Ok(());
    };
    let Ok(below) = parent.strip_prefix(&pods) else {
        // The target is directly in the pods directory: nothing below it to check.
        return Ok(());
    };
    let mut dir = pods.clone();
    for component in below.components() {
        dir.push(component);
        match fs::symlink_metadata(&dir) {
            Ok(meta) if meta.file_type().is_symlink() => {
                let leads_to = fs::canonicalize(&dir).map_or_else(
                    |e| format!("unresolvable: {e}"),
                    |p| p.display().to_string(),
                );
                return Err(VolumeError::InvalidArgument(format!(
                    "target_path {}: a directory between {} and the target is a symbolic link ({} resolves to {leads_to}); refusing to act through it",
                    target.display(),
                    pods.display(),
                    dir.display(),
                )));
            }
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(VolumeError::InvalidArgument(format!(
                    "target_path {}: {} is not a directory",
                    target.display(),
                    dir.display()
                )));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound && !must_exist => return Ok(()),
            Err(e) => {
                return Err(VolumeError::InvalidArgument(format!(
                    "cannot inspect {} for target_path {}: {e}",
                    dir.display(),
                    target.display()
                )));
            }
        }
    }
    Ok(())
}

/// The target must be inside kubelet's pods directory (see [`check_in_pods_dir`]) and not a
/// symlink, and its parent (created by kubelet) must exist as a real directory reached without
/// symbolic links below the pods directory: certvol creates only the last component.
fn check_target(kubelet_dir: &Path, target: &Path) -> Result<(), VolumeError> {
    check_in_pods_dir(kubelet_dir, target)?;
    let parent = target.parent().ok_or_else(|| {
        VolumeError::InvalidArgument("target_path must not be the root directory".into())
    })?;
    match fs::symlink_metadata(parent) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => {
            return Err(VolumeError::InvalidArgument(format!(
                "the parent of target_path {} is not a directory",
                target.display()
            )));
        }
        Err(_) => {
            return Err(VolumeError::InvalidArgument(format!(
                "the parent directory of target_path {} does not exist (kubelet creates it before publishing)",
                target.display()
            )));
        }
    }
    check_no_link_below_pods(kubelet_dir, target, true)?;
    match fs::symlink_metadata(target) {
        Ok(meta) if meta.file_type().is_symlink() => Err(VolumeError::InvalidArgument(format!(
            "target_path {} is a symbolic link; refusing to mount through it",
            target.display()
        ))),
        Ok(meta) if !meta.is_dir() => Err(VolumeError::InvalidArgument(format!(
            "target_path {} exists and is not a directory",
            target.display()
        ))),
        _ => Ok(()),
    }
}

/// Renewal time as recorded, for display.
pub fn next_renewal(state: &VolumeState) -> Option<SystemTime> {
    state
        .renewal
        .next_attempt
        .or(state.current.as_ref().map(|c| c.renew_at))
        .map(store::to_system)
}

#[cfg(test)]
mod tests {
    //! The volume layer against a scriptable issuer and directory mounts: no root, no socket.
    use super::*;
    use crate::base::clock::SystemClock;
    use crate::files::mount::DirMounter;
    use crate::issuer::Issued;
    use crate::issuer::local::{LocalCa, LocalCaConfig};
    use std::sync::atomic::{AtomicU8, Ordering};

    const OK: u8 = 0;
    const UNAVAILABLE: u8 = 1;
    const DENIED: u8 = 2;
    const WRONG_KEY: u8 = 3;

    /// The local CA behind a switch that makes it fail the way remote issuers do.
    #[derive(Debug)]
    struct Scripted {
        ca: LocalCa,
        mode: AtomicU8,
        calls: StdMutex<Vec<String>>,
        /// A directory created right after signing: blocks the next state save (see
        /// `block_saves`), as a data root filling up during the issuance would.
        after_issue: StdMutex<Option<PathBuf>>,
    }

    impl Issuer for Scripted {
        fn kind(&self) -> &'static str {
            "scripted"
        }
        fn issue<'a>(&'a self, req: &'a IssueRequest) -> BoxFuture<'a, Result<Issued, IssueError>> {
            Box::pin(async move {
                self.calls.lock().unwrap().push(req.name.clone());
                match self.mode.load(Ordering::SeqCst) {
                    UNAVAILABLE => Err(IssueError::Unavailable {
                        message: "connection refused".into(),
                    }),
                    DENIED => Err(IssueError::Denied {
                        request: req.name.clone(),
                        message: "policy says no".into(),
                    }),
                    WRONG_KEY => {
                        let other = PrivateKey::generate(req.cert.key_algorithm).unwrap();
                        let csr = keys::build_csr(&req.cert, &other).unwrap();
                        let mut swapped = req.clone();
                        swapped.name = format!("{}-other", req.name);
                        swapped.csr_der = csr.der;
                        swapped.csr_pem = csr.pem;
                        self.ca.issue(&swapped).await
                    }
                    _ => {
                        let issued = self.ca.issue(req).await;
                        if let Some(dir) = self.after_issue.lock().unwrap().take() {
                            fs::create_dir(dir).unwrap();
                        }
                        issued
                    }
                }
            })
        }
        fn forget<'a>(
            &'a self,
            namespace: &'a str,
            names: &'a [String],
        ) -> BoxFuture<'a, Result<(), IssueError>> {
            self.ca.forget(namespace, names)
        }
    }

    /// The manager's wall clock: the system's, moved ahead by `ahead_secs` (the CA keeps the
    /// system's), to make what the CA signs look old to the node.
    #[derive(Debug, Default)]
    struct Ahead {
        ahead_secs: std::sync::atomic::AtomicU64,
    }

    impl Clock for Ahead {
        fn now(&self) -> SystemTime {
            SystemTime::now() + Duration::from_secs(self.ahead_secs.load(Ordering::SeqCst))
        }
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        mgr: Arc<VolumeManager>,
        issuer: Arc<Scripted>,
        pods: PathBuf,
        ahead: Arc<Ahead>,
        _scheduler: crate::runtime::scheduler::Scheduler,
    }

    /// The embedded CA in the store's data root, signing for at most a day.
    fn test_ca(store: &Store, clock: Arc<dyn Clock>) -> LocalCa {
        LocalCa::open(
            LocalCaConfig {
                dir: store.root().join("local-ca"),
                cert_file: None,
                key_file: None,
                max_duration: Duration::from_secs(86400),
                // These tests are about the volume lifecycle, not the names a volume may have.
                policy: crate::issuer::policy::LocalPolicy {
                    allow_dns: vec!["**".parse().unwrap()],
                    ..Default::default()
                },
            },
            clock,
        )
        .unwrap()
    }

    fn fixture() -> Fixture {
        fixture_with(None)
    }

    /// A fixture whose manager knows what the cluster serves (a node with API access).
    fn fixture_with(apis: Option<Apis>) -> Fixture {
        fixture_configured(apis, |_| {})
    }

    /// A fixture whose volume layer's [`Config`] `edit` changes first.
    fn fixture_configured(apis: Option<Apis>, edit: impl FnOnce(&mut Config)) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let ahead = Arc::new(Ahead::default());
        let store = Store::open(&dir.path().join("root")).unwrap();
        let ca = test_ca(&store, clock.clone());
        let issuer = Arc::new(Scripted {
            ca,
            mode: AtomicU8::new(OK),
            calls: StdMutex::new(Vec::new()),
            after_issue: StdMutex::new(None),
        });
        let (handle, scheduler) = crate::runtime::scheduler::channel();
        let mut cfg = Config::new("node-a");
        cfg.kubelet_dir = dir.path().to_path_buf();
        edit(&mut cfg);
        let mut mgr = VolumeManager::new(
            cfg,
            store,
            Arc::new(DirMounter::default()),
            issuer.clone(),
            ahead.clone(),
            handle,
        );
        if let Some(apis) = apis {
            mgr = mgr.with_apis(apis);
        }
        let mgr = Arc::new(mgr);
        let pods = dir.path().join("pods");
        Fixture {
            _dir: dir,
            mgr,
            issuer,
            pods,
            ahead,
            _scheduler: scheduler,
        }
    }

    fn params(f: &Fixture, name: &str) -> PublishParams {
        let target = f
            .pods
            .join(name)
            .join("volumes/kubernetes.io~csi/tls/mount");
        fs::create_dir_all(target.parent().unwrap()).unwrap();
        let context = [
            ("csi.certvol.io/issuer-name", "ca"),
            ("csi.certvol.io/dns-names", "${POD_NAME}.svc"),
            ("csi.storage.k8s.io/pod.name", name),
            ("csi.storage.k8s.io/pod.namespace", "default"),
            ("csi.storage.k8s.io/pod.uid", "uid"),
            ("csi.storage.k8s.io/serviceAccount.name", "default"),
            ("csi.storage.k8s.io/ephemeral", "true"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        PublishParams {
            volume_id: format!("csi-{name}"),
            target_path: target,
            context,
            mount_group: None,
            secrets: HashMap::new(),
        }
    }

    fn cert_of(target: &Path) -> Vec<u8> {
        fs::read(target.join("tls.crt")).unwrap()
    }

    fn set(f: &Fixture, mode: u8) {
        f.issuer.mode.store(mode, Ordering::SeqCst);
    }

    fn calls(f: &Fixture) -> Vec<String> {
        f.issuer.calls.lock().unwrap().clone()
    }

    /// No ClusterTrustBundle API (a 1.30 cluster, or 1.33-1.36 without the beta enabled): a
    /// volume whose default ca-source or trust attributes need one fails before anything is
    /// created, FailedPrecondition naming the attribute; one that needs none is published.
    #[tokio::test]
    async fn without_the_clustertrustbundle_api_volumes_that_need_it_fail_cleanly() {
        use crate::kube::discovery::{ApiError, Served};
        use tonic::Code;
        let f = fixture_with(Some(Apis::fixed(Served {
            cluster_trust_bundles: None,
            missing: None,
        })));
        let with = |name: &str, set: &[(&str, &str)], unset: &[&str]| {
            let mut p = params(&f, name);
            for key in unset {
                p.context.remove(*key);
            }
            for (k, v) in set {
                p.context.insert((*k).to_owned(), (*v).to_owned());
            }
            p
        };
        let cases = [
            (
                with(
                    "csr-default",
                    &[("csi.certvol.io/signer-name", "example.com/w")],
                    &["csi.certvol.io/issuer-name"],
                ),
                "csi.certvol.io/ca-source",
            ),
            (
                with(
                    "trust-named",
                    &[("csi.certvol.io/trust-cluster-bundles", "example.com:s:a")],
                    &[],
                ),
                "csi.certvol.io/trust-cluster-bundles",
            ),
            (
                with(
                    "trust-signer",
                    &[("csi.certvol.io/trust-signer-name", "example.com/s")],
                    &[],
                ),
                "csi.certvol.io/trust-signer-name",
            ),
        ];
        for (p, attribute) in cases {
            let err = f.mgr.publish(p.clone()).await.unwrap_err();
            assert!(
                matches!(&err, VolumeError::Api(ApiError::NoClusterTrustBundles(e)) if e.attribute == attribute),
                "{err:?}"
            );
            let status = crate::csi::RpcError::Volume(err).status();
            assert_eq!(status.code(), Code::FailedPrecondition);
            let msg = status.message();
            assert!(
                msg.starts_with(&format!("volume attribute {attribute:?} (")),
                "{msg}"
            );
            assert!(
                msg.contains("needs the ClusterTrustBundle API, which this cluster does not serve in any version: certificates.k8s.io/v1 (Kubernetes 1.37 and later), or certificates.k8s.io/v1beta1 on 1.33-1.36"),
                "{msg}"
            );
            // Nothing left behind, nothing filed.
            assert!(f.mgr.store().load(&p.volume_id).unwrap().is_none());
            assert!(!p.target_path.exists());
        }
        assert!(calls(&f).is_empty());
        assert_eq!(
            fs::read_dir(f.mgr.store().root().join("volumes"))
                .unwrap()
                .count(),
            0
        );

        // A ConfigMap ca-source needs no ClusterTrustBundle API.
        let p = with(
            "csr-configmap",
            &[
                ("csi.certvol.io/signer-name", "example.com/w"),
                ("csi.certvol.io/ca-source", "configmap:corp-ca/ca.crt"),
            ],
            &["csi.certvol.io/issuer-name"],
        );
        f.mgr.publish(p).await.unwrap();
    }

    /// The issuer's API is missing (cert-manager not installed): FailedPrecondition naming it,
    /// nothing created.
    #[tokio::test]
    async fn a_missing_issuer_api_fails_publish_naming_it() {
        use crate::kube::discovery::{CERT_MANAGER_API, CtbVersion, Served};
        let f = fixture_with(Some(Apis::fixed(Served {
            cluster_trust_bundles: Some(CtbVersion::V1),
            missing: Some(CERT_MANAGER_API),
        })));
        let p = params(&f, "web");
        let status =
            crate::csi::RpcError::Volume(f.mgr.publish(p.clone()).await.unwrap_err()).status();
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
        assert!(
            status
                .message()
                .starts_with("this cluster does not serve cert-manager.io/v1 certificaterequests, which --issuer cert-manager needs"),
            "{}",
            status.message()
        );
        assert!(calls(&f).is_empty());
        assert!(f.mgr.store().load(&p.volume_id).unwrap().is_none());
    }

    #[tokio::test]
    async fn publish_then_republish_issues_once() {
        let f = fixture();
        let p = params(&f, "web");
        assert_eq!(
            f.mgr.publish(p.clone()).await.unwrap(),
            Published::Issued { revision: 1 }
        );
        assert_eq!(
            f.mgr.publish(p.clone()).await.unwrap(),
            Published::Unchanged
        );
        assert_eq!(calls(&f).len(), 1);
        let state = f.mgr.store().load("csi-web").unwrap().unwrap();
        assert_eq!(state.phase, Phase::Published);
        assert_eq!(
            state.requests,
            vec![issuer::request_name("node-a", "csi-web", 1)]
        );
        let cert =
            pki::parse_pem_chain(&String::from_utf8(cert_of(&p.target_path)).unwrap()).unwrap();
        assert_eq!(cert[0].dns_names, vec!["web.svc".to_string()]);
    }

    #[tokio::test]
    async fn transient_failure_keeps_the_pending_request_and_the_retry_resumes_it() {
        let f = fixture();
        let p = params(&f, "slow");
        set(&f, UNAVAILABLE);
        let err = f.mgr.publish(p.clone()).await.unwrap_err();
        assert!(
            matches!(err, VolumeError::Issue(IssueError::Unavailable { .. })),
            "{err}"
        );
        let state = f.mgr.store().load("csi-slow").unwrap().unwrap();
        assert_eq!(state.phase, Phase::Issuing);
        let pending = state.pending.clone().unwrap();
        assert!(f.mgr.store().paths("csi-slow").key(1).exists());

        set(&f, OK);
        f.mgr.publish(p.clone()).await.unwrap();
        // Same request name both times: the retry resumed, it did not file a second request.
        assert_eq!(
            calls(&f),
            vec![pending.request_name.clone(), pending.request_name]
        );
        // The pending key became the current one where it was: state names revision 1, and its
        // key is the only one in the volume.
        let state = f.mgr.store().load("csi-slow").unwrap().unwrap();
        assert_eq!(state.current.map(|c| c.revision), Some(1));
        let keys: Vec<String> = fs::read_dir(&f.mgr.store().paths("csi-slow").keys)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".pk8"))
            .collect();
        assert_eq!(keys, ["key-1.pk8"]);
    }

    #[tokio::test]
    async fn final_failures_leave_nothing_behind() {
        for mode in [DENIED, WRONG_KEY] {
            let f = fixture();
            let p = params(&f, "nope");
            set(&f, mode);
            let err = f.mgr.publish(p.clone()).await.unwrap_err();
            match mode {
                DENIED => assert!(err.to_string().contains("denied: policy says no"), "{err}"),
                _ => assert!(
                    matches!(err, VolumeError::BadCertificate { .. })
                        && err.to_string().contains("does not match"),
                    "{err}"
                ),
            }
            assert!(f.mgr.store().load("csi-nope").unwrap().is_none());
            assert!(!f.mgr.store().paths("csi-nope").dir.exists());
            assert!(fs::symlink_metadata(&p.target_path).is_err(), "no target");
            assert_eq!(f.mgr.volume_count(), 0);
        }
    }

    fn token_of(f: &Fixture, volume_id: &str) -> Option<String> {
        let tokens = f.mgr.tokens.lock().unwrap();
        tokens.get(volume_id).map(|t| t.expose().to_owned())
    }

    fn with_token(p: PublishParams, token: &str) -> PublishParams {
        let json = format!(
            r#"{{"": {{"token": "{token}", "expirationTimestamp": "2030-01-01T00:00:00Z"}}}}"#
        );
        with_attrs(p, &[(attrs::TOKENS_KEY, json.as_str())])
    }

    #[tokio::test]
    async fn a_pod_token_is_kept_only_for_the_volume_it_published() {
        let f = fixture();
        let p = params(&f, "tok");
        f.mgr.publish(with_token(p.clone(), "t1")).await.unwrap();
        assert_eq!(token_of(&f, "csi-tok").as_deref(), Some("t1"));

        // The same volume id at another target is refused and must not replace the live token.
        let mut elsewhere = with_token(p.clone(), "t2");
        elsewhere.target_path = f.pods.join("other/volumes/kubernetes.io~csi/tls/mount");
        let err = f.mgr.publish(elsewhere).await.unwrap_err();
        assert!(matches!(err, VolumeError::OtherTarget { .. }), "{err}");
        assert_eq!(token_of(&f, "csi-tok").as_deref(), Some("t1"));

        // kubelet's republish (requiresRepublish) brings a fresh token: that one is kept.
        let again = f.mgr.publish(with_token(p.clone(), "t3")).await.unwrap();
        assert_eq!(again, Published::Unchanged);
        assert_eq!(token_of(&f, "csi-tok").as_deref(), Some("t3"));

        // A publish that fails for good leaves no token behind.
        set(&f, DENIED);
        let failed = params(&f, "nope");
        f.mgr.publish(with_token(failed, "t4")).await.unwrap_err();
        assert_eq!(token_of(&f, "csi-nope"), None);

        set(&f, OK);
        f.mgr.unpublish("csi-tok", &p.target_path).await.unwrap();
        assert_eq!(token_of(&f, "csi-tok"), None);
    }

    /// The `n`th certvol volume of pod `pod`: same pod directory, its own volume name and id.
    fn pod_volume(f: &Fixture, pod: &str, n: usize) -> PublishParams {
        let mut p = params(f, pod);
        p.volume_id = format!("csi-{pod}-{n}");
        p.target_path = f
            .pods
            .join(pod)
            .join(format!("volumes/kubernetes.io~csi/tls-{n}/mount"));
        fs::create_dir_all(p.target_path.parent().unwrap()).unwrap();
        p
    }

    #[tokio::test]
    async fn a_pod_gets_at_most_its_share_of_volumes_and_a_refusal_leaves_nothing() {
        let f = fixture_configured(None, |cfg| cfg.limits.max_volumes_per_pod = 2);
        for n in 0..2 {
            f.mgr.publish(pod_volume(&f, "greedy", n)).await.unwrap();
        }
        let third = pod_volume(&f, "greedy", 2);
        let err = f.mgr.publish(third.clone()).await.unwrap_err();
        assert!(matches!(err, VolumeError::Limit(_)), "{err}");
        assert!(
            err.to_string()
                .contains("pod default/greedy already has 2 certvol volumes on this node"),
            "{err}"
        );
        assert!(f.mgr.store().load(&third.volume_id).unwrap().is_none());
        assert!(
            fs::symlink_metadata(&third.target_path).is_err(),
            "no target"
        );
        assert_eq!(calls(&f).len(), 2, "nothing filed for the refused volume");

        // Another pod is not affected, and a republish of a counted volume is not a new one.
        f.mgr.publish(pod_volume(&f, "other", 0)).await.unwrap();
        let again = f.mgr.publish(pod_volume(&f, "greedy", 1)).await.unwrap();
        assert_eq!(again, Published::Unchanged);

        // An unpublish gives the place back.
        let first = pod_volume(&f, "greedy", 0);
        f.mgr
            .unpublish(&first.volume_id, &first.target_path)
            .await
            .unwrap();
        f.mgr.publish(third).await.unwrap();
    }

    #[tokio::test]
    async fn a_duration_outside_the_node_limits_is_refused_before_anything_is_made() {
        let f = fixture();
        let p = with_attrs(
            params(&f, "short"),
            &[("csi.cert-manager.io/duration", "10m")],
        );
        let err = f.mgr.publish(p.clone()).await.unwrap_err();
        assert!(matches!(err, VolumeError::Limit(_)), "{err}");
        assert!(err.to_string().contains("--min-duration"), "{err}");
        assert!(f.mgr.store().load("csi-short").unwrap().is_none());
        assert!(!f.mgr.store().paths("csi-short").dir.exists());
        assert!(calls(&f).is_empty());
    }

    /// The node's volumes fill `--max-volume-bytes`: a new publish fails with FailedPrecondition
    /// naming the flag and leaves nothing behind; a renewal keeps the volume's current files and
    /// is retried; once room is made both succeed.
    #[tokio::test]
    async fn the_tmpfs_budget_refuses_publishes_and_renewals_past_it() {
        use crate::files::budget::PAGE;
        let budget = 1 << 20;
        let f = fixture_configured(None, |c| c.max_volume_bytes = budget);
        let a = params(&f, "a");
        f.mgr.publish(a.clone()).await.unwrap();
        let (used, max) = f.mgr.tmpfs_usage();
        assert_eq!(max, budget);
        let paths = f.mgr.store().paths("csi-a");
        // Key, certificate and CA file, each a page, and the private key under keys/.
        assert_eq!(used, crate::files::budget::measure(&paths.mem));
        assert!(used >= 4 * PAGE, "{used}");
        // Other volumes hold the rest of the budget.
        f.mgr.tmpfs.set("others", budget - used);

        let b = params(&f, "b");
        let err = f.mgr.publish(b.clone()).await.unwrap_err();
        let status = crate::csi::RpcError::Volume(err).status();
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
        let msg = status.message();
        assert!(msg.contains("--max-volume-bytes"), "{msg}");
        assert!(msg.contains(&format!("budget of {budget} bytes")), "{msg}");
        assert!(msg.contains("this volume: "), "{msg}");
        assert!(f.mgr.store().load("csi-b").unwrap().is_none());
        assert!(!f.mgr.store().paths("csi-b").dir.exists());
        assert_eq!(
            calls(&f).len(),
            1,
            "nothing is signed for a volume that cannot fit"
        );
        assert_eq!(
            f.mgr.tmpfs_usage().0,
            budget,
            "the refused volume is not charged"
        );

        let before = cert_of(&a.target_path);
        let outcome = f.mgr.renew_volume("csi-a").await;
        assert!(
            matches!(outcome, RenewOutcome::Failed { .. }),
            "{outcome:?}"
        );
        assert_eq!(cert_of(&a.target_path), before, "old files stay in place");
        let state = f.mgr.store().load("csi-a").unwrap().unwrap();
        let last = state.renewal.last_error.unwrap_or_default();
        assert!(last.contains("--max-volume-bytes"), "{last}");

        f.mgr.tmpfs.release("others");
        let outcome = f.mgr.renew_volume("csi-a").await;
        assert!(
            matches!(outcome, RenewOutcome::Renewed { .. }),
            "{outcome:?}"
        );
        assert_ne!(cert_of(&a.target_path), before);
        f.mgr.publish(b.clone()).await.unwrap();
        let both = crate::files::budget::measure(&paths.mem)
            + crate::files::budget::measure(&f.mgr.store().paths("csi-b").mem);
        assert_eq!(f.mgr.tmpfs_usage().0, both);
        f.mgr.unpublish("csi-b", &b.target_path).await.unwrap();
        assert_eq!(
            f.mgr.tmpfs_usage().0,
            crate::files::budget::measure(&paths.mem)
        );
    }

    #[tokio::test]
    async fn failed_renewals_keep_the_old_files_back_off_and_recover() {
        let f = fixture();
        let p = params(&f, "renew");
        f.mgr.publish(p.clone()).await.unwrap();
        let before = cert_of(&p.target_path);

        set(&f, UNAVAILABLE);
        let outcome = f.mgr.renew_volume("csi-renew").await;
        let RenewOutcome::Failed { retry_at } = outcome else {
            panic!("{outcome:?}")
        };
        assert!(retry_at > SystemTime::now());
        assert_eq!(cert_of(&p.target_path), before, "old files stay in place");
        let state = f.mgr.store().load("csi-renew").unwrap().unwrap();
        assert_eq!(state.renewal.failures, 1);
        assert!(
            state
                .renewal
                .last_error
                .as_deref()
                .unwrap()
                .contains("connection refused")
        );
        let rev2 = issuer::request_name("node-a", "csi-renew", 2);
        assert_eq!(state.pending.as_ref().unwrap().request_name, rev2);

        // Denied is final for that request: the next attempt files revision 3.
        set(&f, DENIED);
        assert!(matches!(
            f.mgr.renew_volume("csi-renew").await,
            RenewOutcome::Failed { .. }
        ));
        let state = f.mgr.store().load("csi-renew").unwrap().unwrap();
        assert_eq!(state.renewal.failures, 2);
        assert!(state.pending.is_none());

        set(&f, OK);
        let outcome = f.mgr.renew_volume("csi-renew").await;
        assert!(
            matches!(outcome, RenewOutcome::Renewed { .. }),
            "{outcome:?}"
        );
        assert_ne!(cert_of(&p.target_path), before);
        let state = f.mgr.store().load("csi-renew").unwrap().unwrap();
        assert_eq!(state.renewal, RenewalRecord::default());
        let rev3 = issuer::request_name("node-a", "csi-renew", 3);
        assert_eq!(state.current.as_ref().unwrap().request_name, rev3);
        assert_eq!(
            state.requests,
            vec![rev3],
            "older requests pruned (history 1)"
        );
        let names = calls(&f);
        assert_eq!(
            names[1..],
            [
                rev2.clone(),
                rev2,
                issuer::request_name("node-a", "csi-renew", 3)
            ]
        );
    }

    /// Where a directory makes the next save of `volume_id`'s state fail: the temporary file
    /// `fsutil::atomic_write` opens. Unit tests cannot fill or remount the disk; the save
    /// failing is what matters here (the e2e fault campaign uses a real full/read-only tmpfs).
    fn block_saves(f: &Fixture, volume_id: &str) -> PathBuf {
        f.mgr
            .store()
            .paths(volume_id)
            .dir
            .join(format!(".state.json.tmp{}", std::process::id()))
    }

    #[tokio::test]
    async fn a_renewal_whose_pending_record_is_refused_files_nothing() {
        let f = fixture();
        let p = params(&f, "nosave");
        f.mgr.publish(p.clone()).await.unwrap();
        let before = cert_of(&p.target_path);
        let on_disk = f.mgr.store().load("csi-nosave").unwrap().unwrap();
        let blocker = block_saves(&f, "csi-nosave");
        fs::create_dir(&blocker).unwrap();

        let outcome = f.mgr.renew_volume("csi-nosave").await;
        assert!(
            matches!(outcome, RenewOutcome::Failed { .. }),
            "{outcome:?}"
        );
        assert_eq!(calls(&f).len(), 1, "no request filed without its record");
        assert_eq!(cert_of(&p.target_path), before);
        assert_eq!(f.mgr.store().load("csi-nosave").unwrap().unwrap(), on_disk);
        // Nothing was recorded, so memory must not claim a pending request either.
        let in_memory = f.mgr.status("csi-nosave").await.unwrap().unwrap();
        assert_eq!(in_memory.pending, None);
        assert_eq!(in_memory.last_revision, on_disk.last_revision);

        fs::remove_dir(&blocker).unwrap();
        let outcome = f.mgr.renew_volume("csi-nosave").await;
        assert!(
            matches!(outcome, RenewOutcome::Renewed { .. }),
            "{outcome:?}"
        );
        assert_eq!(
            calls(&f)[1..],
            [issuer::request_name("node-a", "csi-nosave", 2)]
        );
        assert_ne!(cert_of(&p.target_path), before);
    }

    #[tokio::test]
    async fn a_renewal_whose_result_cannot_be_recorded_is_finished_without_a_new_request() {
        let f = fixture();
        let p = params(&f, "unrec");
        f.mgr.publish(p.clone()).await.unwrap();
        let before = cert_of(&p.target_path);
        let blocker = block_saves(&f, "csi-unrec");
        *f.issuer.after_issue.lock().unwrap() = Some(blocker.clone());

        let outcome = f.mgr.renew_volume("csi-unrec").await;
        assert!(
            matches!(outcome, RenewOutcome::Failed { .. }),
            "{outcome:?}"
        );
        let rev2 = issuer::request_name("node-a", "csi-unrec", 2);
        assert_eq!(&calls(&f)[1..], std::slice::from_ref(&rev2));
        // The new pair is in place and matches; only its record is missing.
        let written = cert_of(&p.target_path);
        assert_ne!(written, before);
        let leaf = pki::parse_pem_chain(&String::from_utf8(written.clone()).unwrap()).unwrap();
        let key = PrivateKey::from_pem(&fs::read_to_string(p.target_path.join("tls.key")).unwrap())
            .unwrap();
        assert!(pki::key_matches(&leaf[0], &key).unwrap());
        let on_disk = f.mgr.store().load("csi-unrec").unwrap().unwrap();
        assert_eq!(on_disk.current.as_ref().unwrap().revision, 1);
        assert_eq!(on_disk.pending.as_ref().unwrap().request_name, rev2);

        // The retry resumes the same request with the key already in place: the issuer is
        // asked for revision 2 again (and answers with what it signed), never for a third.
        fs::remove_dir(&blocker).unwrap();
        let outcome = f.mgr.renew_volume("csi-unrec").await;
        assert!(
            matches!(outcome, RenewOutcome::Renewed { .. }),
            "{outcome:?}"
        );
        assert_eq!(calls(&f)[1..], [rev2.clone(), rev2.clone()]);
        assert_eq!(cert_of(&p.target_path), written, "the same certificate");
        let state = f.mgr.store().load("csi-unrec").unwrap().unwrap();
        let current = state.current.unwrap();
        assert_eq!((current.revision, current.request_name), (2, rev2));
        assert_eq!(current.serial, leaf[0].serial_hex);
        assert_eq!(state.pending, None);
        assert_eq!(state.renewal, RenewalRecord::default());
    }

    #[test]
    fn disk_faults_name_the_data_root_only_for_its_own_filesystem() {
        let root = Path::new("/var/lib/certvol");
        let io = |path: &str, code| VolumeError::Io {
            action: "write",
            path: path.into(),
            source: io::Error::from_raw_os_error(code),
        };
        let state = "/var/lib/certvol/volumes/v-01/state.json";
        let err = VolumeError::Store(StoreError::Io {
            action: "write",
            path: state.into(),
            source: io::Error::from_raw_os_error(libc::ENOSPC),
        })
        .on_data_root(root);
        assert!(
            matches!(
                err,
                VolumeError::DataRoot {
                    fault: DiskFault::Full,
                    ..
                }
            ),
            "{err:?}"
        );
        let message = err.to_string();
        for part in ["/var/lib/certvol", "is full", state, "free space"] {
            assert!(message.contains(part), "{part:?} missing from {message}");
        }
        let err = io("/var/lib/certvol/volumes/v-01/mem", libc::EROFS).on_data_root(root);
        assert!(err.to_string().contains("is read-only"), "{err}");
        assert!(err.to_string().contains("remount it read-write"), "{err}");
        // Inside a volume's own tmpfs, elsewhere, or another error: left as it was.
        for err in [
            io(
                "/var/lib/certvol/volumes/v-01/mem/files/tls.crt",
                libc::ENOSPC,
            ),
            io("/elsewhere/state.json", libc::ENOSPC),
            io(state, libc::EACCES),
        ] {
            assert!(matches!(err.on_data_root(root), VolumeError::Io { .. }));
        }
    }

    #[tokio::test]
    async fn a_certificate_that_expired_before_it_arrived_is_never_asked_for_again() {
        let f = fixture();
        let p = params(&f, "late");
        let two_days = 2 * 86_400;
        // The CA signs at most a day: two days on, whatever it signs has expired.
        f.ahead.ahead_secs.store(two_days, Ordering::SeqCst);
        let err = f.mgr.publish(p.clone()).await.unwrap_err();
        assert!(matches!(err, VolumeError::Expired { .. }), "{err:?}");
        let rev = |n| issuer::request_name("node-a", "csi-late", n);
        assert!(err.to_string().contains(&rev(1)), "{err}");
        // Kept for kubelet's retry, which files the next revision instead of resuming this one.
        let state = f.mgr.store().load("csi-late").unwrap().unwrap();
        assert_eq!(
            (state.phase, state.pending, state.last_revision),
            (Phase::Issuing, None, 1)
        );
        assert!(!p.target_path.exists());
        f.ahead.ahead_secs.store(0, Ordering::SeqCst);
        f.mgr.publish(p.clone()).await.unwrap();
        assert_eq!(calls(&f), [rev(1), rev(2)]);

        f.ahead.ahead_secs.store(two_days, Ordering::SeqCst);
        let outcome = f.mgr.renew_volume("csi-late").await;
        assert!(
            matches!(outcome, RenewOutcome::Failed { .. }),
            "{outcome:?}"
        );
        let state = f.mgr.store().load("csi-late").unwrap().unwrap();
        assert_eq!(state.pending, None);
        assert!(
            state
                .renewal
                .last_error
                .unwrap()
                .contains("already expired")
        );
        f.ahead.ahead_secs.store(0, Ordering::SeqCst);
        let outcome = f.mgr.renew_volume("csi-late").await;
        assert!(
            matches!(outcome, RenewOutcome::Renewed { .. }),
            "{outcome:?}"
        );
        assert_eq!(calls(&f), [rev(1), rev(2), rev(3), rev(4)]);
    }

    #[tokio::test]
    async fn an_unpublish_whose_first_record_is_refused_touches_nothing() {
        let f = fixture();
        let p = params(&f, "stay");
        f.mgr.publish(p.clone()).await.unwrap();
        let before = cert_of(&p.target_path);
        let blocker = block_saves(&f, "csi-stay");
        fs::create_dir(&blocker).unwrap();
        f.mgr
            .unpublish("csi-stay", &p.target_path)
            .await
            .unwrap_err();
        assert_eq!(cert_of(&p.target_path), before, "still bound and serving");
        let state = f.mgr.status("csi-stay").await.unwrap().unwrap();
        assert_eq!(state.phase, Phase::Published);
        // Still renewable, as it was.
        fs::remove_dir(&blocker).unwrap();
        let outcome = f.mgr.renew_volume("csi-stay").await;
        assert!(
            matches!(outcome, RenewOutcome::Renewed { .. }),
            "{outcome:?}"
        );
        f.mgr.unpublish("csi-stay", &p.target_path).await.unwrap();
        assert!(!p.target_path.exists());
        assert_eq!(f.mgr.store().load("csi-stay").unwrap(), None);
    }

    #[tokio::test]
    async fn only_failed_renewals_are_moved_when_the_api_answers_again() {
        let f = fixture();
        let (ok, failing) = (params(&f, "fine"), params(&f, "failing"));
        f.mgr.publish(ok.clone()).await.unwrap();
        f.mgr.publish(failing.clone()).await.unwrap();
        assert_eq!(f.mgr.retry_failed_renewals(), 0);
        set(&f, UNAVAILABLE);
        let outcome = f.mgr.renew_volume("csi-failing").await;
        assert!(
            matches!(outcome, RenewOutcome::Failed { .. }),
            "{outcome:?}"
        );
        let outcome = f.mgr.renew_volume("csi-failing").await;
        assert!(
            matches!(outcome, RenewOutcome::Failed { .. }),
            "{outcome:?}"
        );
        assert_eq!(f.mgr.retry_failed_renewals(), 1);
        // The backoff starts over: the next failure is the first again.
        let outcome = f.mgr.renew_volume("csi-failing").await;
        assert!(
            matches!(outcome, RenewOutcome::Failed { .. }),
            "{outcome:?}"
        );
        let state = f.mgr.store().load("csi-failing").unwrap().unwrap();
        assert_eq!(state.renewal.failures, 1);
        set(&f, OK);
        let outcome = f.mgr.renew_volume("csi-failing").await;
        assert!(
            matches!(outcome, RenewOutcome::Renewed { .. }),
            "{outcome:?}"
        );
        assert_eq!(
            f.mgr.retry_failed_renewals(),
            0,
            "a success clears the failure"
        );
    }

    #[tokio::test]
    async fn unpublish_removes_everything_and_tolerates_unknown_volumes() {
        let f = fixture();
        let p = params(&f, "gone");
        f.mgr.publish(p.clone()).await.unwrap();
        f.mgr.unpublish("csi-gone", &p.target_path).await.unwrap();
        assert!(fs::symlink_metadata(&p.target_path).is_err());
        assert!(!f.mgr.store().paths("csi-gone").dir.exists());
        assert!(f.issuer.ca.issued_names().unwrap().is_empty());
        f.mgr.unpublish("csi-gone", &p.target_path).await.unwrap();
        f.mgr
            .unpublish("csi-never", &f.pods.join("never/mount"))
            .await
            .unwrap();
        assert!(matches!(
            f.mgr.renew_volume("csi-gone").await,
            RenewOutcome::Done
        ));
    }

    fn with_attrs(mut p: PublishParams, attrs: &[(&str, &str)]) -> PublishParams {
        for (k, v) in attrs {
            p.context.insert((*k).to_string(), (*v).to_string());
        }
        p
    }

    fn bundle_ders(target: &Path) -> Vec<Vec<u8>> {
        let pem = String::from_utf8(fs::read(target.join("ca-bundle.crt")).unwrap()).unwrap();
        pki::parse_pem_chain(&pem)
            .unwrap()
            .into_iter()
            .map(|c| c.der)
            .collect()
    }

    #[tokio::test]
    async fn kubernetes_sources_without_api_access_are_invalid_and_leave_nothing() {
        let f = fixture();
        for attr in [
            "csi.certvol.io/trust-configmaps",
            "csi.certvol.io/trust-secrets",
        ] {
            let p = with_attrs(params(&f, "nokube"), &[(attr, "ca/ca.crt")]);
            let err = f.mgr.publish(p.clone()).await.unwrap_err();
            assert!(matches!(err, VolumeError::InvalidArgument(_)), "{err}");
            let msg = err.to_string();
            assert!(msg.contains(&format!("{attr:?}")), "{msg}");
            assert!(msg.contains("trust-public-roots"), "{msg}");
            assert!(f.mgr.store().load("csi-nokube").unwrap().is_none());
            assert!(fs::symlink_metadata(&p.target_path).is_err());
        }
        assert!(calls(&f).is_empty(), "nothing filed with the issuer");
    }

    #[tokio::test]
    async fn issuing_ca_and_public_roots_bundle_and_a_retired_ca_leaves_on_refresh() {
        let f = fixture();
        let p = with_attrs(
            params(&f, "roots"),
            &[("csi.certvol.io/trust-public-roots", "true")],
        );
        f.mgr.publish(p.clone()).await.unwrap();
        let ca = fs::read_to_string(p.target_path.join("ca.crt")).unwrap();
        let ca_der = pki::parse_pem_chain(&ca).unwrap()[0].der.clone();
        let roots = webpki_root_certs::TLS_SERVER_ROOT_CERTS.len();
        let got = bundle_ders(&p.target_path);
        assert_eq!(got[0], ca_der, "issuing CA first");
        assert_eq!(got.len(), 1 + roots);
        let state = f.mgr.store().load("csi-roots").unwrap().unwrap();
        assert_eq!(state.issuing_cas.len(), 1);
        assert_eq!(state.issuing_cas[0].keep_until, None);

        // A retired CA still in its overlap is in the bundle; once its keep-until has passed a
        // refresh drops it without touching key, certificate or issuer.
        let retired = crate::trust::bundle::tests::ca_pem("retired");
        let retired_der = pki::parse_pem_chain(&retired).unwrap()[0].der.clone();
        let now = SystemTime::now();
        {
            let (_slot, mut guard) = f.mgr.lock("csi-roots").await.unwrap();
            let state = guard.as_mut().unwrap();
            state.issuing_cas.push(crate::trust::IssuingCa {
                der: retired_der.clone(),
                not_after: now + Duration::from_secs(3600),
                keep_until: Some(now + Duration::from_secs(600)),
            });
            f.mgr.store().save(state).unwrap();
        }
        let (key, cert) = (
            fs::read(p.target_path.join("tls.key")).unwrap(),
            cert_of(&p.target_path),
        );
        let outcome = f.mgr.refresh_trust("csi-roots", None).await;
        assert_eq!(
            outcome,
            Refreshed::Kept {
                next_change: Some(now + Duration::from_secs(600))
            }
        );
        let got = bundle_ders(&p.target_path);
        assert_eq!(got[..2], [ca_der.clone(), retired_der.clone()]);
        assert_eq!(fs::read(p.target_path.join("tls.key")).unwrap(), key);
        assert_eq!(cert_of(&p.target_path), cert);

        {
            let (_slot, mut guard) = f.mgr.lock("csi-roots").await.unwrap();
            let state = guard.as_mut().unwrap();
            state.issuing_cas[1].keep_until = Some(now - Duration::from_secs(1));
            f.mgr.store().save(state).unwrap();
        }
        let outcome = f.mgr.refresh_trust("csi-roots", None).await;
        assert_eq!(outcome, Refreshed::Kept { next_change: None });
        let got = bundle_ders(&p.target_path);
        assert!(!got.contains(&retired_der), "the retired CA left");
        assert_eq!(got.len(), 1 + roots);
        let state = f.mgr.store().load("csi-roots").unwrap().unwrap();
        assert_eq!(
            state.issuing_cas.len(),
            1,
            "expired overlap pruned from state"
        );
        assert_eq!(fs::read(p.target_path.join("tls.key")).unwrap(), key);
        assert_eq!(calls(&f).len(), 1, "no issuance");

        // Unpublished: the refresher is told to stop.
        f.mgr.unpublish("csi-roots", &p.target_path).await.unwrap();
        assert_eq!(
            f.mgr.refresh_trust("csi-roots", None).await,
            Refreshed::Gone
        );
    }

    /// A bundle rewrite that would take the node past `--max-volume-bytes` keeps the volume's
    /// files and asks the refresher to try again soon; with room made it is written.
    #[tokio::test]
    async fn a_bundle_rewrite_past_the_tmpfs_budget_keeps_the_files_and_retries() {
        let budget = 8 << 20;
        let f = fixture_configured(None, |c| c.max_volume_bytes = budget);
        let p = with_attrs(
            params(&f, "roots"),
            &[("csi.certvol.io/trust-public-roots", "true")],
        );
        f.mgr.publish(p.clone()).await.unwrap();
        let (used, _) = f.mgr.tmpfs_usage();
        f.mgr.tmpfs.set("others", budget - used);
        let before = fs::read(p.target_path.join("ca-bundle.crt")).unwrap();
        let now = SystemTime::now();
        {
            let (_slot, mut guard) = f.mgr.lock("csi-roots").await.unwrap();
            let state = guard.as_mut().unwrap();
            // Several retired CAs: the bundle grows by more than a page.
            for i in 0..8 {
                let pem = crate::trust::bundle::tests::ca_pem(&format!("retired-{i}"));
                state.issuing_cas.push(crate::trust::IssuingCa {
                    der: pki::parse_pem_chain(&pem).unwrap()[0].der.clone(),
                    not_after: now + Duration::from_secs(3600),
                    keep_until: Some(now + Duration::from_secs(600)),
                });
            }
            f.mgr.store().save(state).unwrap();
        }
        let outcome = f.mgr.refresh_trust("csi-roots", None).await;
        let Refreshed::Kept {
            next_change: Some(at),
        } = outcome
        else {
            panic!("{outcome:?}")
        };
        assert!(
            at <= SystemTime::now() + crate::files::budget::RETRY,
            "retried soon, not at the overlap's end"
        );
        assert_eq!(
            fs::read(p.target_path.join("ca-bundle.crt")).unwrap(),
            before,
            "the bundle stays"
        );
        assert_eq!(f.mgr.tmpfs_usage().0, budget);

        f.mgr.tmpfs.release("others");
        f.mgr.refresh_trust("csi-roots", None).await;
        assert!(fs::read(p.target_path.join("ca-bundle.crt")).unwrap().len() > before.len());
    }

    /// The refresher drops a retired CA from the bundle when its keep-until passes, by itself
    /// (a `tokio::time` sleep; paused time here), and stops caring once the volume is gone.
    #[tokio::test]
    async fn the_refresher_rewrites_the_bundle_when_an_overlap_ends() {
        let dir = tempfile::tempdir().unwrap();
        let clock: Arc<dyn Clock> = Arc::new(crate::base::clock::TokioClock::starting_at(
            SystemTime::now(),
        ));
        let store = Store::open(&dir.path().join("root")).unwrap();
        let ca = test_ca(&store, clock.clone());
        let (handle, _scheduler) = crate::runtime::scheduler::channel();
        let (refresh, refresher) = crate::runtime::refresh::channel();
        let mut cfg = Config::new("node-a");
        cfg.kubelet_dir = dir.path().to_path_buf();
        let mgr = Arc::new(
            VolumeManager::new(
                cfg,
                store,
                Arc::new(DirMounter::default()),
                Arc::new(ca),
                clock.clone(),
                handle,
            )
            .with_trust(TrustWiring {
                refresher: Some(refresh.clone()),
                ..TrustWiring::default()
            }),
        );
        let running = tokio::spawn(refresher.run(mgr.clone()));
        let target = dir
            .path()
            .join("pods/p/volumes/kubernetes.io~csi/tls/mount");
        fs::create_dir_all(target.parent().unwrap()).unwrap();
        let context = [
            ("csi.certvol.io/issuer-name", "ca"),
            ("csi.certvol.io/dns-names", "p.svc"),
            ("csi.certvol.io/trust-issuer-ca", "true"),
            ("csi.storage.k8s.io/pod.name", "p"),
            ("csi.storage.k8s.io/pod.namespace", "default"),
            ("csi.storage.k8s.io/ephemeral", "true"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let p = PublishParams {
            volume_id: "csi-p".into(),
            target_path: target.clone(),
            context,
            mount_group: None,
            secrets: HashMap::new(),
        };
        // Real time for the issuance (key generation runs on a blocking thread, which paused
        // time would skip past), paused from here on.
        mgr.publish(p.clone()).await.unwrap();
        tokio::time::pause();
        let retired = crate::trust::bundle::tests::ca_pem("retired");
        let retired_der = pki::parse_pem_chain(&retired).unwrap()[0].der.clone();
        let keep_until = clock.now() + Duration::from_secs(600);
        {
            let (_slot, mut guard) = mgr.lock("csi-p").await.unwrap();
            let state = guard.as_mut().unwrap();
            state.issuing_cas.push(crate::trust::IssuingCa {
                der: retired_der.clone(),
                not_after: keep_until + Duration::from_secs(3600),
                keep_until: Some(keep_until),
            });
            mgr.store().save(state).unwrap();
        }
        // What a renewal that retired the CA tells the refresher.
        refresh.send(Message::Watch {
            volume_id: "csi-p".into(),
            trust: None,
            next_change: Some(keep_until),
        });
        tokio::time::sleep(Duration::from_secs(300)).await;
        assert_eq!(bundle_ders(&target).len(), 1, "nothing rewritten early");
        let cert = cert_of(&target);
        // Rebuilt at the keep-until (plus a margin), dropping the retired CA.
        tokio::time::sleep(Duration::from_secs(302)).await;
        for _ in 0..100 {
            if mgr
                .store()
                .load("csi-p")
                .unwrap()
                .unwrap()
                .issuing_cas
                .len()
                == 1
            {
                break;
            }
            tokio::task::yield_now().await;
        }
        let state = mgr.store().load("csi-p").unwrap().unwrap();
        assert_eq!(state.issuing_cas.len(), 1, "the overlap ended");
        let got = bundle_ders(&target);
        assert_eq!(got.len(), 1);
        assert!(!got.contains(&retired_der));
        assert_eq!(cert_of(&target), cert, "same certificate");
        mgr.unpublish("csi-p", &target).await.unwrap();
        running.abort();
    }

    #[tokio::test]
    async fn targets_that_are_symlinks_or_relative_are_refused() {
        let f = fixture();
        let mut p = params(&f, "sym");
        let elsewhere = f.pods.join("elsewhere");
        fs::create_dir_all(&elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &p.target_path).unwrap();
        let err = f.mgr.publish(p.clone()).await.unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert_eq!(
            fs::read_dir(&elsewhere).unwrap().count(),
            0,
            "nothing written through it"
        );
        p.target_path = PathBuf::from("relative/mount");
        p.volume_id = "csi-rel".into();
        let err = f.mgr.publish(p).await.unwrap_err();
        assert!(matches!(err, VolumeError::InvalidArgument(_)), "{err}");
        assert!(calls(&f).is_empty());
    }

    /// Lists a directory tree (paths relative to `root`), to show nothing changed in it.
    fn tree(root: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let mut todo = vec![root.to_path_buf()];
        while let Some(dir) = todo.pop() {
            for entry in fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if fs::symlink_metadata(&path).unwrap().is_dir() {
                    todo.push(path.clone());
                }
                out.push(path.strip_prefix(root).unwrap().to_path_buf());
            }
        }
        out.sort();
        out
    }

    #[tokio::test]
    async fn a_symlink_above_the_target_is_refused_and_nothing_is_created_through_it() {
        let f = fixture();
        let outside = f._dir.path().join("outside");
        fs::create_dir_all(outside.join("kubernetes.io~csi/tls")).unwrap();
        fs::write(outside.join("keep"), b"x").unwrap();
        let before = tree(&outside);
        // The pod's volumes directory replaced by a link to a directory outside kubelet's tree.
        let pod = f.pods.join("linked");
        fs::create_dir_all(&pod).unwrap();
        std::os::unix::fs::symlink(&outside, pod.join("volumes")).unwrap();
        let mut p = params(&f, "ok");
        p.volume_id = "csi-linked".into();
        p.target_path = pod.join("volumes/kubernetes.io~csi/tls/mount");
        let err = f.mgr.publish(p.clone()).await.unwrap_err();
        assert!(matches!(err, VolumeError::InvalidArgument(_)), "{err}");
        let text = err.to_string();
        assert!(
            text.contains("symbolic link") && text.contains(&outside.display().to_string()),
            "{text}"
        );
        assert_eq!(tree(&outside), before, "nothing created outside");
        assert!(calls(&f).is_empty(), "nothing issued");
        assert!(f.mgr.store().load("csi-linked").unwrap().is_none());

        // Unpublish through the link touches nothing either.
        fs::create_dir(outside.join("kubernetes.io~csi/tls/mount")).unwrap();
        let before = tree(&outside);
        let err = f
            .mgr
            .unpublish("csi-linked", &p.target_path)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert_eq!(tree(&outside), before);
    }

    #[tokio::test]
    async fn a_link_planted_above_a_published_target_is_not_followed_on_removal() {
        let f = fixture();
        let p = params(&f, "later");
        f.mgr.publish(p.clone()).await.unwrap();
        // The pod's volumes directory swapped for a link to a look-alike tree outside.
        let outside = f._dir.path().join("outside");
        let look_alike = outside.join("kubernetes.io~csi/tls/mount");
        fs::create_dir_all(&look_alike).unwrap();
        let volumes = f.pods.join("later/volumes");
        fs::rename(&volumes, f._dir.path().join("moved-away")).unwrap();
        std::os::unix::fs::symlink(&outside, &volumes).unwrap();
        let before = tree(&outside);
        f.mgr.unbind_target(&p.target_path, None).unwrap();
        assert_eq!(
            tree(&outside),
            before,
            "the empty look-alike is not removed"
        );
        let paths = f.mgr.store().paths("csi-later");
        let err = f.mgr.bind_target(&paths, &p.target_path).unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert_eq!(tree(&outside), before, "nothing bound through the link");
    }

    #[tokio::test]
    async fn targets_outside_the_kubelet_pods_dir_are_refused_both_ways() {
        let f = fixture();
        let outside = f._dir.path().join("etc-like");
        fs::create_dir_all(outside.join("mount")).unwrap();
        fs::write(outside.join("passwd"), b"root:x:0:0").unwrap();
        let before = tree(&outside);
        let pods = f.pods.display().to_string();
        let dotdot = f.pods.join("u/../../etc-like/mount");
        for target in [outside.join("mount"), dotdot, f.pods.clone()] {
            let mut p = params(&f, "out");
            p.target_path = target.clone();
            let err = f.mgr.publish(p).await.unwrap_err();
            assert!(matches!(err, VolumeError::InvalidArgument(_)), "{err}");
            let text = err.to_string();
            assert!(text.contains("target_path"), "{text}");
            if !target.to_string_lossy().contains("..") {
                assert!(
                    text.contains(&pods) && text.contains("--kubelet-dir"),
                    "{text}"
                );
            }
            let err = f.mgr.unpublish("csi-out", &target).await.unwrap_err();
            assert!(matches!(err, VolumeError::InvalidArgument(_)), "{err}");
        }
        assert_eq!(tree(&outside), before, "nothing created or removed");
        assert!(calls(&f).is_empty());
        assert_eq!(f.mgr.volume_count(), 0);
    }

    #[test]
    fn volume_ids_are_plain_and_bounded() {
        for good in [
            "csi-5f2c0e6d4b1a9c8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e",
            "a",
            "vol_1.x-2",
            &"a".repeat(MAX_VOLUME_ID_BYTES),
        ] {
            assert!(check_volume_id(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "..",
            "-x",
            "a/b",
            "../etc",
            "a\0b",
            "a b",
            "é",
            &"a".repeat(MAX_VOLUME_ID_BYTES + 1),
        ] {
            let err = check_volume_id(bad).unwrap_err();
            assert!(matches!(err, VolumeError::InvalidArgument(_)), "{bad:?}");
            let text = err.to_string();
            assert!(
                text.contains("volume_id") && text.contains("accepted: 1 to 128"),
                "{text}"
            );
        }
        let huge = "x/".repeat(1 << 20);
        let text = check_volume_id(&huge).unwrap_err().to_string();
        assert!(text.len() < 600, "the message stays short: {}", text.len());
        assert!(text.contains("first 80 of 2097152 bytes"), "{text}");
    }

    /// `--forbid-rsa-4096`: an RSA 4096 volume is refused with PermissionDenied naming the
    /// attribute as the pod spec spells it and the flag, before any key, file, request or state
    /// exists; smaller keys are still published.
    #[tokio::test]
    async fn rsa_4096_is_refused_when_the_operator_forbids_it_and_nothing_is_left() {
        for prefix in [attrs::CERT_MANAGER_PREFIX, attrs::CERTVOL_PREFIX] {
            let f = fixture_configured(None, |cfg| cfg.forbid_rsa_4096 = true);
            let mut p = params(&f, "big");
            p.context
                .insert(format!("{prefix}key-algorithm"), "RSA".into());
            p.context.insert(format!("{prefix}key-size"), "4096".into());
            let err = f.mgr.publish(p.clone()).await.unwrap_err();
            let status = crate::csi::RpcError::from(err).status();
            assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
            assert_eq!(
                status.message(),
                format!(
                    "{prefix}key-size: \"4096\" is not allowed: this node refuses RSA 4096 keys (--forbid-rsa-4096), which take seconds of CPU each to generate; accepted: RSA key-size 2048 or 3072, or key-algorithm ECDSA or Ed25519"
                )
            );
            assert!(calls(&f).is_empty(), "nothing was issued");
            assert!(f.mgr.store().load("csi-big").unwrap().is_none());
            assert!(!f.mgr.store().paths("csi-big").dir.exists());
            assert!(fs::symlink_metadata(&p.target_path).is_err(), "no target");
            assert_eq!(f.mgr.volume_count(), 0);

            p.context.insert(format!("{prefix}key-size"), "2048".into());
            f.mgr.publish(p).await.expect("RSA 2048 is still allowed");
        }
        // Without the flag the same request passes the check.
        let f = fixture();
        let mut p = params(&f, "big");
        p.context
            .insert("csi.certvol.io/key-algorithm".into(), "RSA".into());
        p.context
            .insert("csi.certvol.io/key-size".into(), "4096".into());
        let req = attrs::parse(&p.context).unwrap();
        assert_eq!(req.key_algorithm, KeyAlgorithm::Rsa4096);
        f.mgr.check_key(&req, &p.context).unwrap();
    }

    /// Two CPUs, and a hostile namespace generating two RSA 4096 keys: an ECDSA key of another
    /// namespace does not wait for either, because RSA keys never take the last CPU.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn slow_keys_never_take_every_cpu_from_fast_ones() {
        let f = fixture_configured(None, |cfg| cfg.keygen_concurrency = 2);
        let rsa = |name: &str, n: usize| {
            let mut p = with_attrs(
                pod_volume(&f, name, n),
                &[
                    ("csi.certvol.io/key-algorithm", "RSA"),
                    ("csi.certvol.io/key-size", "4096"),
                ],
            );
            p.context
                .insert("csi.storage.k8s.io/pod.namespace".into(), "hostile".into());
            p
        };
        let slow: Vec<_> = [rsa("hog", 0), rsa("hog", 1)]
            .into_iter()
            .map(|p| {
                let mgr = f.mgr.clone();
                tokio::spawn(async move { mgr.publish(p).await })
            })
            .collect();
        // Both RSA publishes reach key generation within moments; each generation takes
        // seconds. One of them generates, the other waits for the slow pool: a CPU stays free.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            f.mgr.keygen_pool().available(),
            1,
            "the RSA 4096 generations took every CPU"
        );
        f.mgr
            .publish(params(&f, "honest"))
            .await
            .expect("honest publish");
        assert!(
            slow.iter().all(|t| !t.is_finished()),
            "the ECDSA publish waited for an RSA 4096 generation"
        );
        for task in slow {
            task.await.unwrap().expect("RSA publish");
        }
    }

    /// Key generation is bounded and fair: while a hostile namespace holds the only key
    /// generation permit and has three more generations queued, a publish in another
    /// namespace waits, then gets the permit after one of them, not after all three.
    #[tokio::test]
    async fn key_generation_waits_for_a_permit_and_takes_its_turn_before_a_busy_namespace() {
        let f = fixture_configured(None, |cfg| cfg.keygen_concurrency = 1);
        let pool = f.mgr.keygen_pool().clone();
        let held = pool.acquire("hostile").await;
        let granted = Arc::new(StdMutex::new(Vec::new()));
        let mut hostile = Vec::new();
        for i in 0..3 {
            let (theirs, granted) = (pool.clone(), granted.clone());
            hostile.push(tokio::spawn(async move {
                let _permit = theirs.acquire("hostile").await;
                granted.lock().unwrap().push(i);
                // A slow key.
                tokio::time::sleep(Duration::from_millis(300)).await;
            }));
            while pool.waiting() <= i {
                tokio::task::yield_now().await;
            }
        }
        let publish = {
            let (mgr, p) = (f.mgr.clone(), params(&f, "honest"));
            tokio::spawn(async move { mgr.publish(p).await })
        };
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(
            !publish.is_finished(),
            "the publish generated its key while every permit was taken"
        );
        assert_eq!(pool.waiting(), 4, "the publish waits in the pool");
        drop(held);
        publish.await.unwrap().expect("publish");
        let granted_before = granted.lock().unwrap().clone();
        assert!(
            granted_before == [0] || granted_before == [0, 1],
            "the publish's key came right after the hostile namespace's first, not after all three: {granted_before:?}"
        );
        for task in hostile {
            task.await.unwrap();
        }
        assert_eq!(pool.available(), 1, "every permit came back");
    }
}
