//! NodePublishVolume: check the request, record the volume, mount its tmpfs, issue, bind.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;
use std::sync::Arc;

use tracing::{debug, info, warn};

use crate::base::crashpoint::{self, Point};
use crate::base::fair::Lease;
use crate::files::layout::Password;
use crate::files::store::{self, Phase, RenewalRecord, STATE_VERSION, VolumePaths, VolumeState};
use crate::issuer::token::{BearerToken, token_from_context};
use crate::spec::attrs;
use crate::spec::request::{CertRequest, KeyAlgorithm};
use crate::spec::volume::{TargetPath, VolumeId};
use crate::trust::VolumeTrust;

use super::{
    VolumeManager,
    error::VolumeError,
    issue::{BundleFrom, Issuance, Op},
    target::check_target,
};

/// A NodePublishVolume request after the CSI layer parsed its fields.
#[derive(Clone)]
pub(crate) struct PublishParams {
    pub volume_id: VolumeId,
    pub target_path: TargetPath,
    pub context: HashMap<String, String>,
    /// kubelet's `volume_mount_group`: the pod's fsGroup.
    pub mount_group: Option<u32>,
    /// The data of the Secret named by the volume's `nodePublishSecretRef`, which kubelet sends
    /// with every publish. Secret values: never logged, never recorded in `state.json`.
    pub secrets: HashMap<String, String>,
}

impl PublishParams {
    /// The pod the volume is for, as kubelet names it in the volume context: `namespace/name`.
    pub(crate) fn pod(&self) -> String {
        let get = |k: &str| self.context.get(k).map_or("", String::as_str);
        format!(
            "{}/{}",
            get("csi.storage.k8s.io/pod.namespace"),
            get("csi.storage.k8s.io/pod.name")
        )
    }
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
pub(crate) enum Published {
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
    /// NodePublishVolume: make the volume's certificate available read-only at the target. Its
    /// log lines carry the volume id and the pod from the operation's span.
    #[tracing::instrument(
        name = "publish",
        skip_all,
        fields(volume_id = %params.volume_id, pod = %params.pod())
    )]
    pub(crate) async fn publish(&self, params: PublishParams) -> Result<Published, VolumeError> {
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

    /// What can be checked of a publish without its volume's lock (the id and the target come
    /// parsed): the attributes against the issuer, the limits and the key policy; and the
    /// keystore password and the pod's token, resolved before anything is created so that a
    /// missing password leaves nothing behind.
    fn check_publish(&self, params: &PublishParams) -> Result<Checked, VolumeError> {
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
                    volume_id: params.volume_id.to_string(),
                    existing: state.target_path.clone(),
                    requested: params.target_path.to_path_buf(),
                });
            }
            Some(state) if state.context != *context || state.mount_group != params.mount_group => {
                return Err(VolumeError::Incompatible {
                    volume_id: params.volume_id.to_string(),
                    target: params.target_path.to_path_buf(),
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
            warn!(error = %cleanup, "clean-up after a failed publish did not finish; it is retried at the next start");
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
            self.metrics
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
        if self.resume_publish(guard).await? {
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
        crashpoint::hit(Point::PublishBound);
        let mut next = state.clone();
        next.phase = Phase::Published;
        self.save(&next).await?;
        *state = next;
        info!(target = %params.target_path.display(), "volume published");
        let revision = issued.unwrap_or_else(|| state.current.as_ref().map_or(0, |c| c.revision));
        Ok((Published::Issued { revision }, trust))
    }

    /// An earlier attempt's state: published already (`true`: nothing to do), interrupted
    /// before its tmpfs was ready (removed, to start over), or interrupted while issuing
    /// (resumed).
    async fn resume_publish(&self, guard: &mut Option<VolumeState>) -> Result<bool, VolumeError> {
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
            volume_id: params.volume_id.to_string(),
            target_path: params.target_path.to_path_buf(),
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
        crashpoint::hit(Point::PublishMounted);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::tests::*;

    use std::fs;

    use crate::files::store::Phase;
    use crate::issuer::{self, IssueError};
    use crate::kube::discovery::Apis;
    use crate::spec::attrs;
    use crate::spec::request::KeyAlgorithm;
    use crate::x509::pki;

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

    #[tokio::test]
    async fn a_pod_token_is_kept_only_for_the_volume_it_published() {
        let f = fixture();
        let p = params(&f, "tok");
        f.mgr.publish(with_token(p.clone(), "t1")).await.unwrap();
        assert_eq!(token_of(&f, "csi-tok").as_deref(), Some("t1"));

        // The same volume id at another target is refused and must not replace the live token.
        let mut elsewhere = with_token(p.clone(), "t2");
        elsewhere.target_path =
            target_path(&f, f.pods.join("other/volumes/kubernetes.io~csi/tls/mount"));
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
        f.mgr
            .unpublish(&id("csi-tok"), &p.target_path)
            .await
            .unwrap();
        assert_eq!(token_of(&f, "csi-tok"), None);
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

    #[tokio::test]
    async fn a_literal_subject_certvol_cannot_encode_is_refused_before_anything_is_made() {
        let f = fixture();
        let p = with_attrs(
            params(&f, "literal"),
            &[("csi.cert-manager.io/literal-subject", "FOO=bar")],
        );
        let err = f.mgr.publish(p.clone()).await.unwrap_err();
        assert!(matches!(err, VolumeError::Attributes(_)), "{err}");
        assert!(f.mgr.store().load("csi-literal").unwrap().is_none());
        assert!(!f.mgr.store().paths("csi-literal").dir.exists());
        assert!(calls(&f).is_empty());
        let status = crate::csi::RpcError::Volume(err).status();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        let msg = status.message();
        assert!(msg.contains("csi.cert-manager.io/literal-subject"), "{msg}");
        assert!(msg.contains("unknown attribute type \"FOO\""), "{msg}");
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
}
