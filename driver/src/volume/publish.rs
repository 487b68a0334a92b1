//! NodePublishVolume: check the request, record the volume, mount its tmpfs, issue, bind.

use crate::base::crashpoint;
use crate::base::fair::Lease;
use crate::files::layout::Password;
use crate::files::store::{self, Phase, RenewalRecord, STATE_VERSION, VolumePaths, VolumeState};
use crate::issuer::certmanager::token_from_context;
use crate::spec::attrs::{self};
use crate::spec::request::{CertRequest, KeyAlgorithm};
use crate::trust::VolumeTrust;
use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;
use std::sync::Arc;
use tracing::{debug, info, warn};

use super::{
    PublishParams, Published, VolumeManager,
    error::VolumeError,
    issue::{BundleFrom, With},
    target::{check_in_pods_dir, check_target, check_volume_id},
};

impl VolumeManager {
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
}
