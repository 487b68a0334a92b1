//! Volumes: publish, unpublish and renew, each step recorded in `state.json` before it is taken.
//!
//! One [`VolumeManager`] owns every volume on the node. Operations on one volume are serialised by
//! a per-volume async lock (its "slot", which also caches the volume's state); operations on
//! different volumes run in parallel.

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

use crate::attrs::{self, AttrError};
use crate::clock::Clock;
use crate::crashpoint;
use crate::fsutil;
use crate::issuer::{self, IssueError, IssueRequest, Issuer};
use crate::keys::{self, KeyError, PrivateKey};
use crate::mount::Mounter;
use crate::pki;
use crate::request::CertRequest;
use crate::scheduler::{RenewOutcome, Renewer, SchedulerHandle};
use crate::store::{
    self, CertRecord, PendingRecord, Phase, RenewalRecord, STATE_VERSION, Store, StoreError,
    VolumePaths, VolumeState,
};
use crate::writer::{self, FileSpec, WriteError};

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
}

impl Config {
    pub fn new(node_id: impl Into<String>) -> Self {
        Config {
            node_id: node_id.into(),
            tmpfs_size: 4 << 20,
            issue_timeout: Duration::from_secs(60),
            request_history: 1,
            policy: certvol_renewer::Policy::default(),
        }
    }
}

/// A NodePublishVolume request after the CSI layer checked its fields.
#[derive(Clone, Debug)]
pub struct PublishParams {
    pub volume_id: String,
    pub target_path: PathBuf,
    pub context: HashMap<String, String>,
    /// kubelet's `volume_mount_group`: the pod's fsGroup.
    pub mount_group: Option<u32>,
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
    #[error("issuing the certificate: {0}")]
    Issue(#[from] IssueError),
    #[error("the issuer returned an unusable certificate for request {request}: {message}")]
    BadCertificate { request: String, message: String },
    #[error("private key: {0}")]
    Key(#[from] KeyError),
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

    /// Whether a publish that failed this way should keep its state so that kubelet's retry
    /// resumes it (the issuer may still sign the pending request).
    fn keeps_pending(&self) -> bool {
        matches!(self, VolumeError::Issue(e) if e.is_transient())
    }
}

type Slot = Arc<Mutex<Option<VolumeState>>>;

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
            cfg,
            store,
            mounter,
            issuer,
            clock,
            scheduler,
            slots: StdMutex::new(HashMap::new()),
        }
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

    /// Number of volumes with state in memory.
    pub fn volume_count(&self) -> usize {
        self.slots.lock().map(|s| s.len()).unwrap_or(0)
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
        if let Ok(mut slots) = self.slots.lock() {
            slots.insert(state.volume_id.clone(), Arc::new(Mutex::new(Some(state))));
        }
    }

    /// NodePublishVolume: make the volume's certificate available read-only at the target.
    pub async fn publish(&self, params: PublishParams) -> Result<Published, VolumeError> {
        let req = Arc::new(attrs::parse(&params.context)?);
        let context = attrs::stable_context(&params.context);
        let (slot, mut guard) = self.lock(&params.volume_id).await?;

        if let Some(state) = guard.as_ref() {
            if state.target_path != params.target_path {
                return Err(VolumeError::OtherTarget {
                    volume_id: params.volume_id,
                    existing: state.target_path.clone(),
                    requested: params.target_path,
                });
            }
            if state.context != context || state.mount_group != params.mount_group {
                return Err(VolumeError::Incompatible {
                    volume_id: params.volume_id,
                    target: params.target_path,
                });
            }
        }

        let result = self
            .publish_locked(&params, &req, context, &mut guard)
            .await;
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
        if let Ok(Published::Issued { .. }) = &result
            && let Some(state) = guard.as_ref()
        {
            self.schedule(state);
        }
        self.release(&params.volume_id, &slot, &guard);
        result
    }

    async fn publish_locked(
        &self,
        params: &PublishParams,
        req: &Arc<CertRequest>,
        context: std::collections::BTreeMap<String, String>,
        guard: &mut Option<VolumeState>,
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
                Phase::Issuing => {}
            }
        }

        if guard.is_none() {
            check_target(&params.target_path)?;
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
                requests: Vec::new(),
                renewal: RenewalRecord::default(),
            };
            self.store.save(&state)?;
            *guard = Some(state);
            self.mount_memory(&paths)?;
            crashpoint::hit("publish:mounted");
        }
        let state = guard
            .as_mut()
            .ok_or_else(|| VolumeError::Internal("volume state vanished".into()))?;

        let mut issued = None;
        if state.current.is_none() {
            let revision = state.pending.as_ref().map_or(1, |p| p.revision);
            self.issue_revision("publish", &paths, state, req, revision, None)
                .await?;
            issued = Some(revision);
        }

        // Files are in place (recorded with `current`); a crash from here on is finished by the
        // retried publish, which finds the files and only binds the target.
        self.bind_target(&paths, &params.target_path)?;
        crashpoint::hit("publish:bound");
        state.phase = Phase::Published;
        self.store.save(state)?;
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
        if self
            .mounter
            .is_mounted(target)
            .map_err(VolumeError::io_at("inspect mounts for", target))?
        {
            return Ok(());
        }
        match fs::symlink_metadata(target) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(VolumeError::InvalidArgument(format!(
                    "target_path {} exists and is not a directory",
                    target.display()
                )));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::DirBuilder::new()
                    .mode(0o750)
                    .create(target)
                    .map_err(VolumeError::io_at("create target directory", target))?;
            }
            Err(e) => return Err(VolumeError::io_at("inspect", target)(e)),
        }
        self.mounter
            .bind_read_only(&paths.files, target)
            .map_err(VolumeError::io_at("bind-mount read-only at", target))
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
        reuse: Option<PrivateKey>,
    ) -> Result<(), VolumeError> {
        let pending_key = paths.pending_key();
        let resumed = match &state.pending {
            Some(p) if p.revision == revision => match fs::read(&pending_key) {
                Ok(der) => Some(PrivateKey::from_pkcs8_der(&Zeroizing::new(der))?),
                Err(e) if e.kind() == io::ErrorKind::NotFound => None,
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
                    None => generate_key(req.key_algorithm).await?,
                };
                fsutil::atomic_write(&pending_key, key.pkcs8_der(), 0o600)
                    .map_err(VolumeError::io_at("write", &pending_key))?;
                state.pending = Some(PendingRecord {
                    revision,
                    request_name: request_name.clone(),
                    key_algorithm: key.algorithm(),
                    started_at: store::to_offset(self.clock.now()),
                });
                if !state.requests.contains(&request_name) {
                    state.requests.push(request_name.clone());
                }
                state.phase = if state.current.is_some() {
                    state.phase
                } else {
                    Phase::Issuing
                };
                self.store.save(state)?;
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
        };
        let issued =
            match tokio::time::timeout(self.cfg.issue_timeout, self.issuer.issue(&ireq)).await {
                Ok(result) => {
                    let issued = result?;
                    crashpoint::hit(&format!("{op}:signed"));
                    issued
                }
                Err(_) => {
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
        if !issued.ca_pem.trim().is_empty() {
            let ca = pki::parse_pem_chain(&issued.ca_pem).map_err(|e| bad(e.to_string()))?;
            pki::verify_chain(&chain, &ca, now).map_err(|e| bad(e.to_string()))?;
        }
        let (not_before, not_after, serial) =
            (leaf.not_before, leaf.not_after, leaf.serial_hex.clone());

        let gid = req.fs_group.or(state.mount_group);
        let files = vec![
            FileSpec {
                name: req.files.private_key.clone(),
                contents: Zeroizing::new(key.to_pem(req.key_encoding)?.as_bytes().to_vec()),
            },
            FileSpec {
                name: req.files.certificate.clone(),
                contents: Zeroizing::new(issued.chain_pem.into_bytes()),
            },
            FileSpec {
                name: req.files.ca.clone(),
                contents: Zeroizing::new(issued.ca_pem.into_bytes()),
            },
        ];
        writer::publish(&paths.files, &files, gid, now)?;
        crashpoint::hit(&format!("{op}:files-written"));
        let current_key = paths.current_key();
        fs::rename(&pending_key, &current_key)
            .map_err(VolumeError::io_at("rename", &pending_key))?;

        let renew_at = certvol_renewer::renew_at(
            not_before,
            not_after,
            req.renew_before,
            &self.cfg.policy,
            rand::random::<f64>(),
        );
        state.current = Some(CertRecord {
            revision,
            request_name,
            serial,
            not_before: store::to_offset(not_before),
            not_after: store::to_offset(not_after),
            renew_at: store::to_offset(renew_at),
        });
        state.pending = None;
        state.renewal = RenewalRecord::default();
        self.store.save(state)?;
        crashpoint::hit(&format!("{op}:recorded"));
        Ok(())
    }

    /// NodeUnpublishVolume. Unknown volumes are fine (kubelet repeats unpublish after restarts).
    pub async fn unpublish(&self, volume_id: &str, target_path: &Path) -> Result<(), VolumeError> {
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
            None => self.unbind_target(target_path),
        };
        self.release(volume_id, &slot, &guard);
        result
    }

    /// Removes everything a volume has: renewal, target bind, target dir, tmpfs, issuer requests,
    /// and state last, recording `Unpublishing` first so that a crash part-way is finished later.
    pub(crate) async fn remove_volume(&self, state: &VolumeState) -> Result<(), VolumeError> {
        self.scheduler.cancel(&state.volume_id);
        let paths = self.store.paths(&state.volume_id);
        if state.phase != Phase::Unpublishing && paths.state.exists() {
            let mut marked = state.clone();
            marked.phase = Phase::Unpublishing;
            self.store.save(&marked)?;
            crashpoint::hit("unpublish:marked");
        }
        self.unbind_target(&state.target_path)?;
        crashpoint::hit("unpublish:unbound");
        self.mounter
            .unmount(&paths.mem)
            .map_err(VolumeError::io_at("unmount", &paths.mem))?;
        if !state.requests.is_empty()
            && let Err(e) = self.issuer.forget(&state.requests).await
        {
            // The issuer keeps the requests (e.g. garbage collection removes them with the pod);
            // the volume itself is gone either way.
            warn!(volume_id = %state.volume_id, error = %e, "could not delete the volume's issuer requests");
        }
        self.store.remove(&paths)?;
        info!(volume_id = %state.volume_id, "volume removed");
        Ok(())
    }

    /// Unmounts the target path if something is mounted there and removes the directory if it is
    /// empty. Never follows a symlink and never removes anything else.
    pub(crate) fn unbind_target(&self, target: &Path) -> Result<(), VolumeError> {
        if self
            .mounter
            .is_mounted(target)
            .map_err(VolumeError::io_at("inspect mounts for", target))?
        {
            self.mounter
                .unmount(target)
                .map_err(VolumeError::io_at("unmount", target))?;
        }
        match fs::symlink_metadata(target) {
            Ok(meta) if meta.is_dir() => match fs::remove_dir(target) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(VolumeError::io_at("remove target directory", target)(e)),
            },
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
        self.scheduler.schedule(&state.volume_id, at);
    }

    /// One renewal of a published volume. Failures keep the old, still-valid files in place.
    pub async fn renew(&self, volume_id: &str) -> RenewOutcome {
        let (slot, mut guard) = match self.lock(volume_id).await {
            Ok(locked) => locked,
            Err(e) => {
                warn!(volume_id, error = %e, "renewal could not load the volume");
                return RenewOutcome::Done;
            }
        };
        let outcome = match guard.as_mut() {
            Some(state) if state.phase == Phase::Published => self.renew_locked(state).await,
            _ => RenewOutcome::Done,
        };
        self.release(volume_id, &slot, &guard);
        outcome
    }

    async fn renew_locked(&self, state: &mut VolumeState) -> RenewOutcome {
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
            .map_or(current.revision + 1, |p| p.revision);
        let result = async {
            let reuse = if req.reuse_private_key && state.pending.is_none() {
                let der = fs::read(paths.current_key())
                    .map(Zeroizing::new)
                    .map_err(VolumeError::io_at("read", &paths.current_key()))?;
                Some(PrivateKey::from_pkcs8_der(&der)?)
            } else {
                None
            };
            self.issue_revision("renew", &paths, state, &req, revision, reuse)
                .await
        }
        .await;
        match result {
            Ok(()) => {
                self.prune_requests(state).await;
                info!(volume_id = %state.volume_id, revision, "certificate renewed");
                match &state.current {
                    Some(c) => RenewOutcome::Renewed {
                        next: store::to_system(c.renew_at),
                    },
                    None => RenewOutcome::Done,
                }
            }
            Err(err) => {
                if let VolumeError::Issue(e) = &err
                    && !e.is_transient()
                {
                    // cert-manager never retries a denied or failed request: the next attempt
                    // must file a new one.
                    state.pending = None;
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
                if let Err(e) = self.store.save(state) {
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
        match self.issuer.forget(&old).await {
            Ok(()) => {
                state.requests.drain(..old.len());
                if let Err(e) = self.store.save(state) {
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
    fn renew(self: Arc<Self>, volume_id: String) -> BoxFuture<'static, RenewOutcome> {
        Box::pin(async move { VolumeManager::renew(&self, &volume_id).await })
    }
}

/// Key generation is CPU-bound (seconds for RSA 4096), so it runs off the async worker threads.
async fn generate_key(alg: crate::request::KeyAlgorithm) -> Result<PrivateKey, VolumeError> {
    tokio::task::spawn_blocking(move || PrivateKey::generate(alg))
        .await
        .map_err(|e| VolumeError::Internal(format!("key generation task failed: {e}")))?
        .map_err(VolumeError::from)
}

/// The target must be absolute, normalised, not a symlink, and its parent (created by kubelet)
/// must exist as a real directory: certvol creates only the last component.
fn check_target(target: &Path) -> Result<(), VolumeError> {
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
