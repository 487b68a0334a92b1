//! NodePublishVolume: check the request, record the volume, mount its tmpfs, issue, bind.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tracing::{debug, info, warn};

use crate::base::crashpoint;
use crate::base::fair::Lease;
use crate::files::layout::Password;
use crate::files::store::{self, Phase, RenewalRecord, STATE_VERSION, VolumePaths, VolumeState};
use crate::issuer::certmanager::{BearerToken, token_from_context};
use crate::spec::attrs;
use crate::spec::request::{CertRequest, KeyAlgorithm};
use crate::trust::VolumeTrust;

use super::{
    VolumeManager,
    error::VolumeError,
    issue::{BundleFrom, Issuance, Op},
    target::{check_in_pods_dir, check_target, check_volume_id},
};

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

/// A publish request checked and resolved before the volume's lock is taken.
struct Checked {
    req: Arc<CertRequest>,
    /// The context as recorded in `state.json`: without the pod's token or a literal password.
    context: BTreeMap<String, String>,
    password: Option<Password>,
    token: Option<BearerToken>,
}

impl VolumeManager {
    /// NodePublishVolume: make the volume's certificate available read-only at the target.
    pub async fn publish(&self, params: PublishParams) -> Result<Published, VolumeError> {
        let Checked {
            req,
            context,
            password,
            token,
        } = self.check_publish(&params)?;
        let (slot, mut guard) = self.lock(&params.volume_id).await?;
        self.admit(&params, &context, guard.as_ref(), token)?;
        let outcome = self
            .publish_locked(&params, &req, context, password, &mut guard)
            .await
            .map_err(|e| e.on_data_root(self.store.root()));
        let (result, trust) = match outcome {
            Ok((published, trust)) => (Ok(published), trust),
            Err(e) => (Err(e), None),
        };
        self.settle_publish(&params, &req, &result, &mut guard, trust)
            .await;
        if guard.is_some() {
            // The volume's renewals and refreshes use this parse from here on.
            *slot.request.lock() = Some(req.clone());
        }
        self.release(&params.volume_id, &slot, &guard);
        drop(guard);
        if let Err(VolumeError::Trust(e)) = &result {
            self.report_source_error(&req, e).await;
        }
        result
    }

    /// What can be checked of a publish without its volume's lock: the id, the target, the
    /// attributes against the issuer, the limits and the key policy; and the keystore password
    /// and the pod's token, resolved before anything is created so that a missing password
    /// leaves nothing behind.
    fn check_publish(&self, params: &PublishParams) -> Result<Checked, VolumeError> {
        check_volume_id(&params.volume_id)?;
        check_in_pods_dir(&self.cfg.kubelet_dir, &params.target_path)?;
        let req = Arc::new(attrs::parse(&params.context)?);
        self.issuer.check_request(&req)?;
        self.issuer.check_policy(&req)?;
        self.cfg.limits.check_duration(&req, &params.context)?;
        self.check_key(&req, &params.context)?;
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
        Ok(Checked {
            req,
            context,
            password,
            token,
        })
    }

    /// Under the volume's lock: a volume already there must be this one (same target, same
    /// attributes); a new one needs room (the tmpfs budget, its pod's share of volumes). Then
    /// the pod's token is recorded for it.
    fn admit(
        &self,
        params: &PublishParams,
        context: &BTreeMap<String, String>,
        existing: Option<&VolumeState>,
        token: Option<BearerToken>,
    ) -> Result<(), VolumeError> {
        match existing {
            Some(state) if state.target_path != params.target_path => {
                return Err(VolumeError::OtherTarget {
                    volume_id: params.volume_id.clone(),
                    existing: state.target_path.clone(),
                    requested: params.target_path.clone(),
                });
            }
            Some(state) if state.context != *context || state.mount_group != params.mount_group => {
                return Err(VolumeError::Incompatible {
                    volume_id: params.volume_id.clone(),
                    target: params.target_path.clone(),
                });
            }
            Some(_) => {}
            None => {
                // Before anything is issued: a full node refuses here rather than after signing.
                self.tmpfs
                    .has_room(crate::files::budget::MIN_VOLUME_BYTES)?;
                self.reserve_pod_volume(params)?;
            }
        }
        // Only now, under the volume's lock and for the volume this call publishes: a publish
        // refused above (another target, other attributes) must not replace a live volume's
        // token, and one that fails below takes its token with it.
        if let Some(token) = token {
            self.set_token(&params.volume_id, Some(token));
        }
        Ok(())
    }

    /// What a publish leaves behind: after a final failure nothing (kubelet retries from
    /// scratch); after an issuance the volume's renewal and trust watch; after a success its
    /// expiry metric.
    async fn settle_publish(
        &self,
        params: &PublishParams,
        req: &CertRequest,
        result: &Result<Published, VolumeError>,
        guard: &mut Option<VolumeState>,
        trust: Option<VolumeTrust>,
    ) {
        if let Err(err) = result
            && !err.keeps_pending()
            && let Some(state) = guard.take()
            && let Err(cleanup) = self.remove_volume(&state).await
        {
            warn!(volume_id = %params.volume_id, error = %cleanup, "clean-up after a failed publish did not finish; it is retried at the next start");
            *guard = Some(state);
        }
        if result.is_err() && guard.is_none() {
            self.set_token(&params.volume_id, None);
            self.count_pod_volume(&params.target_path, &params.volume_id, false);
        }
        if let Ok(Published::Issued { .. }) = result
            && let Some(state) = guard.as_ref()
        {
            self.schedule(state, req.renew);
            self.watch_trust(state, req, trust);
        }
        if result.is_ok()
            && let Some(current) = guard.as_ref().and_then(|s| s.current.as_ref())
        {
            crate::obs::metrics::global()
                .track_volume(&params.volume_id, store::to_system(current.not_after));
        }
    }

    /// Whether the operator lets a volume have the key it asks for; checked before anything is
    /// created. Renewals of volumes published before the operator forbade a key keep their key
    /// algorithm: refusing them would let a running pod's certificate expire.
    pub(super) fn check_key(
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

    /// The publish itself, under the volume's lock: resumes or restarts an earlier attempt,
    /// creates a new volume, issues its first certificate and binds it at the target. Returns
    /// the trust subscriptions its bundle was built from.
    async fn publish_locked(
        &self,
        params: &PublishParams,
        req: &Arc<CertRequest>,
        context: BTreeMap<String, String>,
        password: Option<Password>,
        guard: &mut Option<VolumeState>,
    ) -> Result<(Published, Option<VolumeTrust>), VolumeError> {
        let paths = self.store.paths(&params.volume_id);
        if self.resume_publish(params, guard).await? {
            return Ok((Published::Unchanged, None));
        }
        let trust = self.check_new_volume(req).await?;
        if guard.is_none() {
            self.create_volume(params, &paths, context, guard).await?;
        }
        let state = guard
            .as_mut()
            .ok_or_else(|| VolumeError::Internal("volume state vanished".into()))?;
        let issued = self
            .issue_first(state, &paths, req, password, trust.as_ref())
            .await?;

        // Files are in place (recorded with `current`); a crash from here on is finished by the
        // retried publish, which finds the files and only binds the target.
        self.bind_target(&paths, &params.target_path)?;
        crashpoint::hit("publish:bound");
        let mut next = state.clone();
        next.phase = Phase::Published;
        self.save(&next).await?;
        *state = next;
        info!(
            volume_id = %params.volume_id,
            pod = %format_args!("{}/{}", req.pod.namespace, req.pod.name),
            target = %params.target_path.display(),
            "volume published"
        );
        let revision = issued.unwrap_or_else(|| state.current.as_ref().map_or(0, |c| c.revision));
        Ok((Published::Issued { revision }, trust))
    }

    /// An earlier attempt's state: published already (`true`: nothing to do), interrupted
    /// before its tmpfs was ready (removed, to start over), or interrupted while issuing
    /// (resumed).
    async fn resume_publish(
        &self,
        params: &PublishParams,
        guard: &mut Option<VolumeState>,
    ) -> Result<bool, VolumeError> {
        let Some(state) = guard.as_ref() else {
            return Ok(false);
        };
        match state.phase {
            Phase::Published => return Ok(true),
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
        Ok(false)
    }

    /// What a volume not yet published needs of the cluster, checked before anything is
    /// created; returns its trust subscriptions, listed.
    async fn check_new_volume(
        &self,
        req: &CertRequest,
    ) -> Result<Option<VolumeTrust>, VolumeError> {
        // New volumes only (a republish returned before): one published under a higher cap
        // keeps working, through republishes, renewals and restarts.
        attrs::check_trust_sources(req, self.cfg.max_trust_sources)?;
        // An API the volume needs that the cluster does not serve (the issuer's, or
        // ClusterTrustBundles for its ca-source or trust sources) is named here rather than
        // surfacing as a 404 later, and leaves nothing behind.
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
        Ok(trust)
    }

    /// Records a new volume (`Mounting`) and mounts its tmpfs. The state is in `guard` before
    /// the mount, so that a failed mount is cleaned up with it.
    async fn create_volume(
        &self,
        params: &PublishParams,
        paths: &VolumePaths,
        context: BTreeMap<String, String>,
        guard: &mut Option<VolumeState>,
    ) -> Result<(), VolumeError> {
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
        self.mount_memory(paths)?;
        crashpoint::hit("publish:mounted");
        Ok(())
    }

    /// A volume without a certificate gets its first (resuming an interrupted attempt's
    /// request); answers the revision issued, `None` if it had one already.
    async fn issue_first(
        &self,
        state: &mut VolumeState,
        paths: &VolumePaths,
        req: &Arc<CertRequest>,
        password: Option<Password>,
        trust: Option<&VolumeTrust>,
    ) -> Result<Option<u64>, VolumeError> {
        if state.current.is_some() {
            return Ok(None);
        }
        if let Some(password) = &password {
            self.keep_password(paths, &state.volume_id, password)?;
        }
        let revision = state
            .pending
            .as_ref()
            .map_or(state.last_revision + 1, |p| p.revision);
        let job = Issuance {
            op: Op::Publish,
            paths,
            req,
            revision,
            reuse: None,
            trust: BundleFrom::Sources(trust),
            worker: &Lease::default(),
        };
        self.issue_revision(state, job).await?;
        Ok(Some(revision))
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
}
