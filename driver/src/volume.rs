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
use crate::issuer::certmanager::{BearerToken, token_from_context};
use crate::issuer::{self, IssueError, IssueRequest, Issuer};
use crate::keys::{self, KeyError, PrivateKey};
use crate::layout::{self, LayoutError, Material, Password};
use crate::metrics::IssueOutcome;
use crate::mount::Mounter;
use crate::pki;
use crate::request::CertRequest;
use crate::scheduler::{RenewOutcome, Renewer, SchedulerHandle};
use crate::store::{
    self, CertRecord, PendingRecord, Phase, RenewalRecord, STATE_VERSION, Store, StoreError,
    VolumePaths, VolumeState,
};
use crate::writer::{self, WriteError};

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
    /// The newest service-account token kubelet passed for each volume (token-request mode).
    /// Memory only: never written to state, never logged; refreshed by every republish.
    tokens: StdMutex<HashMap<String, BearerToken>>,
    /// PKCS#12 passwords by volume id, for renewals; also kept in the volume's private tmpfs
    /// (`mem/keys/pkcs12-password`) so that renewals after a driver restart can still write the
    /// keystore. Never on persistent disk.
    passwords: StdMutex<HashMap<String, Password>>,
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
            tokens: StdMutex::new(HashMap::new()),
            passwords: StdMutex::new(HashMap::new()),
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
            crate::metrics::global()
                .track_volume(&state.volume_id, store::to_system(current.not_after));
        }
        if let Ok(mut slots) = self.slots.lock() {
            slots.insert(state.volume_id.clone(), Arc::new(Mutex::new(Some(state))));
        }
    }

    /// NodePublishVolume: make the volume's certificate available read-only at the target.
    pub async fn publish(&self, params: PublishParams) -> Result<Published, VolumeError> {
        let req = Arc::new(attrs::parse(&params.context)?);
        self.issuer.check_request(&req)?;
        // Resolved before anything is created, so a missing password leaves nothing behind.
        let password = req
            .files
            .pkcs12
            .as_ref()
            .map(|p| attrs::pkcs12_password(&p.password, &params.context, &params.secrets))
            .transpose()?;
        let context = attrs::stable_context(&params.context);
        if let Some(token) = token_from_context(&params.context).map_err(|e| {
            VolumeError::InvalidArgument(format!("volume context {}: {e}", attrs::TOKENS_KEY))
        })? && let Ok(mut tokens) = self.tokens.lock()
        {
            tokens.insert(params.volume_id.clone(), token);
        }
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
            .publish_locked(&params, &req, context, password, &mut guard)
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
        if result.is_ok()
            && let Some(current) = guard.as_ref().and_then(|s| s.current.as_ref())
        {
            crate::metrics::global()
                .track_volume(&params.volume_id, store::to_system(current.not_after));
        }
        self.release(&params.volume_id, &slot, &guard);
        result
    }

    async fn publish_locked(
        &self,
        params: &PublishParams,
        req: &Arc<CertRequest>,
        context: std::collections::BTreeMap<String, String>,
        password: Option<Password>,
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
                last_revision: 0,
                requests: Vec::new(),
                renewal: RenewalRecord::default(),
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
            self.issue_revision("publish", &paths, state, req, revision, None)
                .await?;
            issued = Some(revision);
        }

        // Files are in place (recorded with `current`); a crash from here on is finished by the
        // retried publish, which finds the files and only binds the target.
        self.bind_target(&paths, &params.target_path)?;
        crashpoint::hit("publish:bound");
        state.phase = Phase::Published;
        self.save(state).await?;
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

    /// Keeps a volume's PKCS#12 password for its renewals: in memory and in the volume's private
    /// tmpfs key directory (0600, never bound into the pod, gone with the tmpfs).
    fn keep_password(
        &self,
        paths: &VolumePaths,
        volume_id: &str,
        password: &Password,
    ) -> Result<(), VolumeError> {
        let path = paths.pkcs12_password();
        fsutil::atomic_write(&path, password.expose().as_bytes(), 0o600)
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
        reuse: Option<PrivateKey>,
    ) -> Result<(), VolumeError> {
        // Before anything is issued: a renewal that could not write the keystore must not
        // consume a request.
        let password = match &req.files.pkcs12 {
            Some(_) => Some(self.kept_password(paths, &state.volume_id)?),
            None => None,
        };
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
                state.last_revision = state.last_revision.max(revision);
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
                self.save(state).await?;
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
        };
        let issued =
            // Issuers answer Timeout themselves at `issue_timeout`; this outer limit only guards
            // against one that does not.
            match tokio::time::timeout(self.cfg.issue_timeout + Duration::from_secs(5), self.issuer.issue(&ireq)).await {
                Ok(result) => {
                    crate::metrics::global().issuance(self.issuer.kind(), IssueOutcome::of(&result));
                    let issued = result?;
                    crashpoint::hit(&format!("{op}:signed"));
                    issued
                }
                Err(_) => {
                    crate::metrics::global().issuance(self.issuer.kind(), IssueOutcome::Timeout);
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
        let files = layout::render(
            req,
            &Material {
                key,
                chain_pem: issued.chain_pem,
                ca_pem: issued.ca_pem,
                // No trust sources are resolved yet: the bundle is the issuing CA. Trust
                // sources fill this with the volume's current bundle, so that a renewal keeps it.
                trust_bundle_pem: None,
                pkcs12_password: password,
            },
        )?;
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
        self.save(state).await?;
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
        if let Ok(mut tokens) = self.tokens.lock() {
            tokens.remove(&state.volume_id);
        }
        if let Ok(mut passwords) = self.passwords.lock() {
            passwords.remove(&state.volume_id);
        }
        let paths = self.store.paths(&state.volume_id);
        if state.phase != Phase::Unpublishing && paths.state.exists() {
            let mut marked = state.clone();
            marked.phase = Phase::Unpublishing;
            self.save(&marked).await?;
            crashpoint::hit("unpublish:marked");
        }
        self.unbind_target(&state.target_path)?;
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
        crate::metrics::global().untrack_volume(&state.volume_id);
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
    pub async fn renew_volume(&self, volume_id: &str) -> RenewOutcome {
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
            .map_or(state.last_revision.max(current.revision) + 1, |p| {
                p.revision
            });
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
                crate::metrics::global().renewal(true);
                if let Some(c) = &state.current {
                    crate::metrics::global()
                        .track_volume(&state.volume_id, store::to_system(c.not_after));
                }
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
                crate::metrics::global().renewal(false);
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
    fn renew(self: Arc<Self>, volume_id: String) -> BoxFuture<'static, RenewOutcome> {
        Box::pin(async move { self.renew_volume(&volume_id).await })
    }
}

/// The pod's namespace, where the volume's requests were filed.
fn namespace_of(state: &VolumeState) -> &str {
    state
        .context
        .get("csi.storage.k8s.io/pod.namespace")
        .map_or("", String::as_str)
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

#[cfg(test)]
mod tests {
    //! The volume layer against a scriptable issuer and directory mounts: no root, no socket.
    use super::*;
    use crate::clock::SystemClock;
    use crate::issuer::Issued;
    use crate::issuer::local::{LocalCa, LocalCaConfig};
    use crate::mount::DirMounter;
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
                    _ => self.ca.issue(req).await,
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

    struct Fixture {
        _dir: tempfile::TempDir,
        mgr: Arc<VolumeManager>,
        issuer: Arc<Scripted>,
        pods: PathBuf,
        _scheduler: crate::scheduler::Scheduler,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let store = Store::open(&dir.path().join("root")).unwrap();
        let ca = LocalCa::open(
            LocalCaConfig {
                dir: store.root().join("local-ca"),
                cert_file: None,
                key_file: None,
                max_duration: Duration::from_secs(86400),
            },
            clock.clone(),
        )
        .unwrap();
        let issuer = Arc::new(Scripted {
            ca,
            mode: AtomicU8::new(OK),
            calls: StdMutex::new(Vec::new()),
        });
        let (handle, scheduler) = crate::scheduler::channel();
        let mgr = Arc::new(VolumeManager::new(
            Config::new("node-a"),
            store,
            Arc::new(DirMounter::default()),
            issuer.clone(),
            clock,
            handle,
        ));
        let pods = dir.path().join("pods");
        Fixture {
            _dir: dir,
            mgr,
            issuer,
            pods,
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
        assert!(f.mgr.store().paths("csi-slow").pending_key().exists());

        set(&f, OK);
        f.mgr.publish(p.clone()).await.unwrap();
        // Same request name both times: the retry resumed, it did not file a second request.
        assert_eq!(
            calls(&f),
            vec![pending.request_name.clone(), pending.request_name]
        );
        assert!(!f.mgr.store().paths("csi-slow").pending_key().exists());
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
}
