//! The CSI gRPC services (Identity and Node): request validation as the CSI spec asks, and the
//! one mapping from certvol's errors to gRPC status codes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

use certvol_proto::csi::v1 as csi;
use csi::identity_server::Identity;
use csi::node_server::Node;
use csi::volume_capability::AccessType;
use csi::volume_capability::access_mode::Mode;
use tonic::{Code, Request, Response, Status};
use tracing::{Instrument, warn};

use crate::files::store::{self, Phase, VolumeState};
use crate::spec::volume::{TargetPath, VolumeId};
use crate::volume::{PublishParams, VolumeError, VolumeManager};

mod status;

pub(crate) use status::RpcError;

/// The volume context key kubelet sets to "true" for inline ephemeral volumes.
pub(crate) const EPHEMERAL_KEY: &str = "csi.storage.k8s.io/ephemeral";

/// Probe readiness, shared by the server and the recovery pass.
#[derive(Clone, Debug, Default)]
pub(crate) struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub(crate) fn set_ready(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    pub(crate) fn is_ready(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// CSI Identity service.
#[derive(Clone, Debug)]
pub(crate) struct IdentityService {
    pub driver_name: String,
    pub ready: Readiness,
}

#[tonic::async_trait]
impl Identity for IdentityService {
    async fn get_plugin_info(
        &self,
        _: Request<csi::GetPluginInfoRequest>,
    ) -> Result<Response<csi::GetPluginInfoResponse>, Status> {
        Ok(Response::new(csi::GetPluginInfoResponse {
            name: self.driver_name.clone(),
            vendor_version: env!("CARGO_PKG_VERSION").to_string(),
            manifest: HashMap::new(),
        }))
    }

    async fn get_plugin_capabilities(
        &self,
        _: Request<csi::GetPluginCapabilitiesRequest>,
    ) -> Result<Response<csi::GetPluginCapabilitiesResponse>, Status> {
        // A node-only plugin: no controller service, no topology.
        Ok(Response::new(csi::GetPluginCapabilitiesResponse {
            capabilities: Vec::new(),
        }))
    }

    async fn probe(
        &self,
        _: Request<csi::ProbeRequest>,
    ) -> Result<Response<csi::ProbeResponse>, Status> {
        Ok(Response::new(csi::ProbeResponse {
            ready: Some(self.ready.is_ready()),
        }))
    }
}

/// CSI Node service.
#[derive(Clone, Debug)]
pub(crate) struct NodeService {
    pub node_id: String,
    pub volumes: Arc<VolumeManager>,
    pub ready: Readiness,
    /// Where answered publish and unpublish calls are counted.
    pub metrics: crate::obs::metrics::Metrics,
}

impl NodeService {
    fn check_ready(&self) -> Result<(), RpcError> {
        if self.ready.is_ready() {
            Ok(())
        } else {
            Err(RpcError::Recovering)
        }
    }
}

/// Checks a NodePublishVolume request as the CSI spec and certvol's volume model require, and
/// parses its volume id and target path (which must lie in `<kubelet_dir>/pods/`).
pub(crate) fn validate_publish(
    req: csi::NodePublishVolumeRequest,
    kubelet_dir: &Path,
) -> Result<PublishParams, RpcError> {
    if req.volume_id.is_empty() {
        return Err(RpcError::Invalid("volume_id is required".into()));
    }
    let volume_id = VolumeId::parse(&req.volume_id)?;
    if req.target_path.is_empty() {
        return Err(RpcError::Invalid("target_path is required".into()));
    }
    let cap = req
        .volume_capability
        .ok_or_else(|| RpcError::Invalid("volume_capability is required".into()))?;
    let mount = match cap.access_type {
        Some(AccessType::Mount(mount)) => mount,
        Some(AccessType::Block(_)) => {
            return Err(RpcError::Invalid(
                "volume_capability: block access is not supported; certvol volumes are mounted filesystems".into(),
            ));
        }
        None => {
            return Err(RpcError::Invalid(
                "volume_capability.access_type is required (mount)".into(),
            ));
        }
    };
    let mode = cap
        .access_mode
        .map(|m| m.mode())
        .ok_or_else(|| RpcError::Invalid("volume_capability.access_mode is required".into()))?;
    match mode {
        Mode::SingleNodeWriter
        | Mode::SingleNodeReaderOnly
        | Mode::SingleNodeSingleWriter
        | Mode::SingleNodeMultiWriter => {}
        other => {
            return Err(RpcError::Invalid(format!(
                "volume_capability.access_mode {} is not supported; accepted: single-node modes (SINGLE_NODE_WRITER as kubelet sends for inline volumes)",
                other.as_str_name()
            )));
        }
    }
    if req.volume_context.get(EPHEMERAL_KEY).map(String::as_str) != Some("true") {
        return Err(RpcError::Invalid(format!(
            "only inline ephemeral volumes are supported: volume_context {EPHEMERAL_KEY} must be \"true\" (declare the volume inline in the pod spec; the CSIDriver needs volumeLifecycleModes [Ephemeral] and podInfoOnMount: true)"
        )));
    }
    if !req.readonly {
        return Err(RpcError::Invalid(
            "the volume must be read-only: set readOnly: true on the pod's csi volume".into(),
        ));
    }
    let mount_group = match mount.volume_mount_group.as_str() {
        "" => None,
        gid => Some(gid.parse::<u32>().map_err(|_| {
            RpcError::Invalid(format!(
                "volume_capability.mount.volume_mount_group {gid:?} is not a group id; accepted: a decimal number from 0 to 4294967295"
            ))
        })?),
    };
    // Last, as when the volume layer checked it: a request wrong in several ways is told the
    // same thing first.
    let target_path = TargetPath::parse(kubelet_dir, req.target_path)?;
    Ok(PublishParams {
        volume_id,
        target_path,
        context: req.volume_context,
        mount_group,
        secrets: req.secrets,
    })
}

/// How long NodeGetVolumeStats waits for a volume busy with a renewal before reading its
/// recorded state instead.
const STATS_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Consecutive failed renewals after which a volume is reported abnormal. One or two failures
/// are routine (an issuer restart); three in a row usually need a human.
pub(crate) const ABNORMAL_RENEWAL_FAILURES: u32 = 3;

/// The health kubelet shows for a volume (VolumeCondition): abnormal when the certificate the pod
/// reads has expired or renewal keeps failing, since either will soon break the pod's TLS.
pub(crate) fn volume_condition(state: &VolumeState, now: SystemTime) -> csi::VolumeCondition {
    let abnormal = |message: String| csi::VolumeCondition {
        abnormal: true,
        message,
    };
    let Some(current) = state.current.as_ref() else {
        return abnormal("no certificate has been issued for this volume yet".into());
    };
    let not_after = rfc3339(current.not_after);
    if now > store::to_system(current.not_after) {
        let mut message = format!("certificate expired at {not_after}");
        if let Some(err) = &state.renewal.last_error {
            message.push_str(&format!("; last renewal error: {err}"));
        }
        return abnormal(message);
    }
    let failures = state.renewal.failures;
    if failures >= ABNORMAL_RENEWAL_FAILURES {
        let last = state
            .renewal
            .last_error
            .as_deref()
            .unwrap_or("unknown error");
        return abnormal(format!(
            "renewal failed {failures} times in a row (last error: {last}); certificate valid until {not_after}"
        ));
    }
    csi::VolumeCondition {
        abnormal: false,
        message: format!("certificate valid until {not_after}"),
    }
}

fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

/// Byte and inode usage of the filesystem at `path` (the volume's tmpfs, seen through its bind).
pub(crate) fn filesystem_usage(path: &Path) -> Result<Vec<csi::VolumeUsage>, VolumeError> {
    use csi::volume_usage::Unit;
    let st = nix::sys::statvfs::statvfs(path)
        .map_err(|e| VolumeError::Internal(format!("statvfs {}: {e}", path.display())))?;
    let to_i64 = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    let frag = st.fragment_size() as u64;
    let blocks = st.blocks() as u64;
    let bfree = st.blocks_free() as u64;
    let bavail = st.blocks_available() as u64;
    let files = st.files() as u64;
    let ffree = st.files_free() as u64;
    let favail = st.files_available() as u64;
    Ok(vec![
        csi::VolumeUsage {
            total: to_i64(blocks.saturating_mul(frag)),
            used: to_i64(blocks.saturating_sub(bfree).saturating_mul(frag)),
            available: to_i64(bavail.saturating_mul(frag)),
            unit: Unit::Bytes as i32,
        },
        csi::VolumeUsage {
            total: to_i64(files),
            used: to_i64(files.saturating_sub(ffree)),
            available: to_i64(favail),
            unit: Unit::Inodes as i32,
        },
    ])
}

fn pod_of(context: &HashMap<String, String>) -> String {
    let get = |k: &str| context.get(k).map(String::as_str).unwrap_or("").to_string();
    format!(
        "{}/{}",
        get("csi.storage.k8s.io/pod.namespace"),
        get("csi.storage.k8s.io/pod.name")
    )
}

/// Logs a failed RPC once, with the fields an operator searches by, and turns it into a status.
fn fail(rpc: &'static str, volume_id: &str, pod: &str, err: RpcError) -> Status {
    let status = err.status();
    warn!(
        rpc,
        volume_id,
        pod,
        code = ?status.code(),
        error = %err,
        "CSI call failed"
    );
    status
}

#[tonic::async_trait]
impl Node for NodeService {
    async fn node_stage_volume(
        &self,
        _: Request<csi::NodeStageVolumeRequest>,
    ) -> Result<Response<csi::NodeStageVolumeResponse>, Status> {
        Err(fail(
            "NodeStageVolume",
            "",
            "",
            RpcError::Unsupported("NodeStageVolume"),
        ))
    }

    async fn node_unstage_volume(
        &self,
        _: Request<csi::NodeUnstageVolumeRequest>,
    ) -> Result<Response<csi::NodeUnstageVolumeResponse>, Status> {
        Err(fail(
            "NodeUnstageVolume",
            "",
            "",
            RpcError::Unsupported("NodeUnstageVolume"),
        ))
    }

    async fn node_publish_volume(
        &self,
        request: Request<csi::NodePublishVolumeRequest>,
    ) -> Result<Response<csi::NodePublishVolumeResponse>, Status> {
        let started = std::time::Instant::now();
        let req = request.into_inner();
        let volume_id = req.volume_id.clone();
        let pod = pod_of(&req.volume_context);
        let result = async {
            self.check_ready()?;
            let params = validate_publish(req, &self.volumes.config().kubelet_dir)?;
            let volumes = self.volumes.clone();
            // Run the publish as its own task: if kubelet gives up on the call, the task still
            // finishes the step it is in and records it, instead of being dropped half-way.
            // The publish opens its own span (volume id, pod), a child of the handler's.
            tokio::spawn(async move { volumes.publish(params).await }.in_current_span())
                .await
                .map_err(|e| VolumeError::Internal(format!("publish task failed: {e}")))??;
            Ok::<_, RpcError>(())
        }
        .await;
        let answer = match result {
            Ok(()) => Ok(Response::new(csi::NodePublishVolumeResponse {})),
            Err(e) => Err(fail("NodePublishVolume", &volume_id, &pod, e)),
        };
        let code = answer.as_ref().map_or_else(Status::code, |_| Code::Ok);
        self.metrics
            .rpc("NodePublishVolume", code, started.elapsed());
        answer
    }

    async fn node_unpublish_volume(
        &self,
        request: Request<csi::NodeUnpublishVolumeRequest>,
    ) -> Result<Response<csi::NodeUnpublishVolumeResponse>, Status> {
        let started = std::time::Instant::now();
        let req = request.into_inner();
        let volume_id = req.volume_id.clone();
        let result = async {
            if req.volume_id.is_empty() {
                return Err(RpcError::Invalid("volume_id is required".into()));
            }
            let volume_id = VolumeId::parse(&req.volume_id)?;
            if req.target_path.is_empty() {
                return Err(RpcError::Invalid("target_path is required".into()));
            }
            self.check_ready()?;
            let target_path =
                TargetPath::parse(&self.volumes.config().kubelet_dir, req.target_path)?;
            let volumes = self.volumes.clone();
            tokio::spawn(
                async move { volumes.unpublish(&volume_id, &target_path).await }.in_current_span(),
            )
            .await
            .map_err(|e| VolumeError::Internal(format!("unpublish task failed: {e}")))??;
            Ok(())
        }
        .await;
        let answer = match result {
            Ok(()) => Ok(Response::new(csi::NodeUnpublishVolumeResponse {})),
            Err(e) => Err(fail("NodeUnpublishVolume", &volume_id, "", e)),
        };
        let code = answer.as_ref().map_or_else(Status::code, |_| Code::Ok);
        self.metrics
            .rpc("NodeUnpublishVolume", code, started.elapsed());
        answer
    }

    async fn node_get_volume_stats(
        &self,
        request: Request<csi::NodeGetVolumeStatsRequest>,
    ) -> Result<Response<csi::NodeGetVolumeStatsResponse>, Status> {
        let req = request.into_inner();
        let result = async {
            if req.volume_id.is_empty() {
                return Err(RpcError::Invalid("volume_id is required".into()));
            }
            let volume_id = VolumeId::parse(&req.volume_id)?;
            if req.volume_path.is_empty() {
                return Err(RpcError::Invalid("volume_path is required".into()));
            }
            self.check_ready()?;
            // A renewal holds the volume's lock while the issuer works (possibly minutes with
            // cert-manager). kubelet polls stats on a short deadline, so after a brief wait fall
            // back to state.json, which is written atomically before every step and so is always
            // a consistent (if slightly older) record.
            let state = match tokio::time::timeout(STATS_LOCK_WAIT, self.volumes.status(&volume_id))
                .await
            {
                Ok(state) => state?,
                Err(_) => {
                    let volumes = self.volumes.clone();
                    let id = volume_id.clone();
                    tokio::task::spawn_blocking(move || volumes.store().load(&id))
                        .await
                        .map_err(|e| VolumeError::Internal(format!("state read failed: {e}")))?
                        .map_err(VolumeError::from)?
                }
            };
            let path = PathBuf::from(&req.volume_path);
            let state = match state {
                Some(s) if s.phase == Phase::Published && s.target_path == path => s,
                Some(s) if s.target_path != path => {
                    return Err(RpcError::NotFound(format!(
                        "volume {} is published at {}, not at {}",
                        req.volume_id,
                        s.target_path.display(),
                        path.display()
                    )));
                }
                Some(s) => {
                    return Err(RpcError::NotFound(format!(
                        "volume {} is not published (phase {:?})",
                        req.volume_id, s.phase
                    )));
                }
                None => {
                    return Err(RpcError::NotFound(format!(
                        "volume {} is not known to certvol on this node",
                        req.volume_id
                    )));
                }
            };
            let condition = volume_condition(&state, self.volumes.clock().now());
            let usage = tokio::task::spawn_blocking(move || filesystem_usage(&path))
                .await
                .map_err(|e| VolumeError::Internal(format!("statvfs task failed: {e}")))??;
            Ok(csi::NodeGetVolumeStatsResponse {
                usage,
                volume_condition: Some(condition),
            })
        }
        .await;
        result
            .map(Response::new)
            .map_err(|e| fail("NodeGetVolumeStats", &req.volume_id, "", e))
    }

    async fn node_expand_volume(
        &self,
        request: Request<csi::NodeExpandVolumeRequest>,
    ) -> Result<Response<csi::NodeExpandVolumeResponse>, Status> {
        let volume_id = request.into_inner().volume_id;
        Err(fail(
            "NodeExpandVolume",
            &volume_id,
            "",
            RpcError::Unsupported("NodeExpandVolume"),
        ))
    }

    async fn node_get_capabilities(
        &self,
        _: Request<csi::NodeGetCapabilitiesRequest>,
    ) -> Result<Response<csi::NodeGetCapabilitiesResponse>, Status> {
        use csi::node_service_capability::{Rpc, Type, rpc};
        let cap = |t: rpc::Type| csi::NodeServiceCapability {
            r#type: Some(Type::Rpc(Rpc { r#type: t as i32 })),
        };
        // VOLUME_MOUNT_GROUP: kubelet passes the pod's fsGroup and leaves ownership to us, so
        // non-root pods can read their key without an attribute. GET_VOLUME_STATS and
        // VOLUME_CONDITION: kubelet polls NodeGetVolumeStats and surfaces an abnormal condition
        // (expired certificate, failing renewal) as an event on the pod.
        Ok(Response::new(csi::NodeGetCapabilitiesResponse {
            capabilities: vec![
                cap(rpc::Type::VolumeMountGroup),
                cap(rpc::Type::GetVolumeStats),
                cap(rpc::Type::VolumeCondition),
            ],
        }))
    }

    async fn node_get_info(
        &self,
        _: Request<csi::NodeGetInfoRequest>,
    ) -> Result<Response<csi::NodeGetInfoResponse>, Status> {
        Ok(Response::new(csi::NodeGetInfoResponse {
            node_id: self.node_id.clone(),
            max_volumes_per_node: 0,
            accessible_topology: None,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use csi::volume_capability::{AccessMode, MountVolume};

    fn request() -> csi::NodePublishVolumeRequest {
        csi::NodePublishVolumeRequest {
            volume_id: "csi-1".into(),
            target_path: "/var/lib/kubelet/pods/u/volumes/kubernetes.io~csi/tls/mount".into(),
            volume_capability: Some(csi::VolumeCapability {
                access_mode: Some(AccessMode {
                    mode: Mode::SingleNodeWriter as i32,
                }),
                access_type: Some(AccessType::Mount(MountVolume {
                    volume_mount_group: "2000".into(),
                    ..Default::default()
                })),
            }),
            readonly: true,
            volume_context: HashMap::from([(EPHEMERAL_KEY.to_string(), "true".to_string())]),
            ..Default::default()
        }
    }

    #[test]
    fn a_kubelet_request_passes_with_its_mount_group() {
        let params = validate_publish(request(), Path::new("/var/lib/kubelet")).unwrap();
        assert_eq!(params.volume_id, "csi-1");
        assert_eq!(params.mount_group, Some(2000));
    }

    #[test]
    fn publish_secrets_are_carried_but_never_printed() {
        let mut req = request();
        req.secrets = HashMap::from([("pkcs12-password".to_string(), "s3cret-1".to_string())]);
        req.volume_context.insert(
            "csi.cert-manager.io/pkcs12-password".into(),
            "literal-2".into(),
        );
        let params = validate_publish(req, Path::new("/var/lib/kubelet")).unwrap();
        assert_eq!(params.secrets["pkcs12-password"], "s3cret-1");
        let shown = format!("{params:?}");
        assert!(
            !shown.contains("s3cret-1") && !shown.contains("literal-2"),
            "{shown}"
        );
        assert!(shown.contains("pkcs12-password"), "{shown}");
    }

    #[tokio::test]
    async fn probe_reports_ready_only_after_recovery() {
        let ready = Readiness::default();
        let identity = IdentityService {
            driver_name: "csi.certvol.io".into(),
            ready: ready.clone(),
        };
        let probe = identity
            .probe(Request::new(csi::ProbeRequest {}))
            .await
            .unwrap();
        assert_eq!(probe.get_ref().ready, Some(false));
        ready.set_ready();
        let probe = identity
            .probe(Request::new(csi::ProbeRequest {}))
            .await
            .unwrap();
        assert_eq!(probe.get_ref().ready, Some(true));
        let info = identity
            .get_plugin_info(Request::new(csi::GetPluginInfoRequest {}))
            .await
            .unwrap();
        assert_eq!(info.get_ref().vendor_version, env!("CARGO_PKG_VERSION"));
    }

    fn sample_state(not_after: SystemTime) -> VolumeState {
        let t = store::to_offset(not_after);
        VolumeState {
            version: store::STATE_VERSION,
            volume_id: "csi-1".into(),
            target_path: "/pods/u/volumes/kubernetes.io~csi/tls/mount".into(),
            node_id: "node-1".into(),
            issuer: "local".into(),
            context: Default::default(),
            mount_group: None,
            phase: Phase::Published,
            current: Some(store::CertRecord {
                revision: 1,
                request_name: "certvol-1".into(),
                serial: "01".into(),
                not_before: t - std::time::Duration::from_secs(3600),
                not_after: t,
                renew_at: t - std::time::Duration::from_secs(1200),
            }),
            pending: None,
            last_revision: 1,
            requests: vec!["certvol-1".into()],
            renewal: Default::default(),
            issuing_cas: Vec::new(),
        }
    }

    #[test]
    fn condition_is_normal_while_the_certificate_is_valid() {
        let not_after = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000);
        let mut state = sample_state(not_after);
        state.renewal.failures = ABNORMAL_RENEWAL_FAILURES - 1;
        state.renewal.last_error = Some("issuer unavailable".into());
        let now = not_after - std::time::Duration::from_secs(60);
        let c = volume_condition(&state, now);
        assert!(!c.abnormal);
        assert_eq!(c.message, "certificate valid until 2027-01-15T08:00:00Z");
    }

    #[test]
    fn condition_is_abnormal_when_expired_or_renewal_keeps_failing() {
        let not_after = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000);
        let mut state = sample_state(not_after);
        let expired = volume_condition(&state, not_after + std::time::Duration::from_secs(1));
        assert!(expired.abnormal);
        assert_eq!(
            expired.message,
            "certificate expired at 2027-01-15T08:00:00Z"
        );

        state.renewal.failures = ABNORMAL_RENEWAL_FAILURES;
        state.renewal.last_error = Some("request certvol-2 was denied: policy".into());
        let failing = volume_condition(&state, not_after - std::time::Duration::from_secs(600));
        assert!(failing.abnormal);
        assert!(
            failing.message.contains("renewal failed 3 times in a row")
                && failing
                    .message
                    .contains("request certvol-2 was denied: policy")
                && failing.message.contains("valid until 2027-01-15T08:00:00Z"),
            "{}",
            failing.message
        );

        state.current = None;
        assert!(volume_condition(&state, not_after).abnormal);
    }

    struct NodeFixture {
        _dir: tempfile::TempDir,
        node: NodeService,
        pods: PathBuf,
        _scheduler: crate::runtime::scheduler::Scheduler,
    }

    fn node_fixture() -> NodeFixture {
        use crate::base::clock::{Clock, SystemClock};
        use crate::issuer::local::{LocalCa, LocalCaConfig};
        let dir = tempfile::tempdir().unwrap();
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let store = store::Store::open(&dir.path().join("root")).unwrap();
        let ca = LocalCa::open(
            LocalCaConfig {
                dir: store.root().join("local-ca"),
                cert_file: None,
                key_file: None,
                max_duration: std::time::Duration::from_secs(86400),
                // These tests are about the CSI edge, not the names a volume may have.
                policy: crate::issuer::policy::LocalPolicy {
                    allow_dns: vec!["**".parse().unwrap()],
                    ..Default::default()
                },
            },
            clock.clone(),
        )
        .unwrap();
        let (handle, scheduler) = crate::runtime::scheduler::channel();
        let mut cfg = crate::volume::Config::new("node-a");
        cfg.kubelet_dir = dir.path().to_path_buf();
        let services = crate::volume::Services {
            mounter: Arc::new(crate::files::mount::DirMounter::default()),
            issuer: Arc::new(ca),
            clock,
            scheduler: handle,
            metrics: crate::obs::metrics::Metrics::detached(),
        };
        let volumes = Arc::new(VolumeManager::new(cfg, store, services));
        let ready = Readiness::default();
        ready.set_ready();
        NodeFixture {
            pods: dir.path().join("pods"),
            _dir: dir,
            node: NodeService {
                node_id: "node-a".into(),
                metrics: volumes.metrics().clone(),
                volumes,
                ready,
            },
            _scheduler: scheduler,
        }
    }

    async fn stats(
        node: &NodeService,
        volume_id: &str,
        path: &str,
    ) -> Result<csi::NodeGetVolumeStatsResponse, Status> {
        node.node_get_volume_stats(Request::new(csi::NodeGetVolumeStatsRequest {
            volume_id: volume_id.into(),
            volume_path: path.into(),
            staging_target_path: String::new(),
        }))
        .await
        .map(Response::into_inner)
    }

    #[tokio::test]
    async fn capabilities_advertise_stats_and_condition() {
        use csi::node_service_capability::{Type, rpc};
        let f = node_fixture();
        let caps = f
            .node
            .node_get_capabilities(Request::new(csi::NodeGetCapabilitiesRequest {}))
            .await
            .unwrap()
            .into_inner();
        let types: Vec<i32> = caps
            .capabilities
            .iter()
            .filter_map(|c| match c.r#type {
                Some(Type::Rpc(ref r)) => Some(r.r#type),
                None => None,
            })
            .collect();
        for want in [
            rpc::Type::VolumeMountGroup,
            rpc::Type::GetVolumeStats,
            rpc::Type::VolumeCondition,
        ] {
            assert!(types.contains(&(want as i32)), "{want:?} in {types:?}");
        }
    }

    #[tokio::test]
    async fn volume_stats_check_arguments_and_report_a_published_volume() {
        let f = node_fixture();
        let err = stats(&f.node, "", "/x").await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().contains("volume_id"), "{}", err.message());
        let err = stats(&f.node, "csi-1", "").await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().contains("volume_path"), "{}", err.message());
        let err = stats(&f.node, "csi-unknown", "/x").await.unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
        assert_eq!(f.node.volumes.volume_count(), 0, "no slot left behind");

        let mut req = request();
        req.target_path = f
            .pods
            .join("u/volumes/kubernetes.io~csi/tls/mount")
            .display()
            .to_string();
        std::fs::create_dir_all(std::path::Path::new(&req.target_path).parent().unwrap()).unwrap();
        req.volume_context.extend(
            [
                ("csi.certvol.io/issuer-name", "ca"),
                ("csi.certvol.io/dns-names", "web.svc"),
                ("csi.storage.k8s.io/pod.name", "web"),
                ("csi.storage.k8s.io/pod.namespace", "default"),
                ("csi.storage.k8s.io/pod.uid", "u"),
                ("csi.storage.k8s.io/serviceAccount.name", "default"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        let target = req.target_path.clone();
        f.node.node_publish_volume(Request::new(req)).await.unwrap();

        let resp = stats(&f.node, "csi-1", &target).await.unwrap();
        let cond = resp.volume_condition.unwrap();
        assert!(!cond.abnormal, "{}", cond.message);
        assert!(
            cond.message.starts_with("certificate valid until "),
            "{}",
            cond.message
        );
        let bytes = resp
            .usage
            .iter()
            .find(|u| u.unit == csi::volume_usage::Unit::Bytes as i32)
            .unwrap();
        assert!(
            bytes.total > 0 && bytes.used > 0 && bytes.available > 0,
            "{bytes:?}"
        );
        assert!(bytes.used <= bytes.total);
        let inodes = resp
            .usage
            .iter()
            .find(|u| u.unit == csi::volume_usage::Unit::Inodes as i32)
            .unwrap();
        assert!(inodes.used <= inodes.total, "{inodes:?}");

        // While a renewal holds the volume's lock, stats still answer, from state.json.
        {
            let (_slot, _busy) = f.node.volumes.lock("csi-1").await.unwrap();
            let resp = stats(&f.node, "csi-1", &target).await.unwrap();
            assert!(!resp.volume_condition.unwrap().abnormal);
        }

        let err = stats(&f.node, "csi-1", "/elsewhere").await.unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
        assert!(err.message().contains(&target), "{}", err.message());
    }

    #[test]
    fn rejections_name_the_field() {
        type Mutation = fn(&mut csi::NodePublishVolumeRequest);
        let cases: [(&str, Mutation); 6] = [
            ("volume_id", |r| r.volume_id.clear()),
            ("target_path", |r| r.target_path.clear()),
            ("volume_capability is required", |r| {
                r.volume_capability = None
            }),
            ("read-only", |r| r.readonly = false),
            (EPHEMERAL_KEY, |r| {
                r.volume_context.clear();
            }),
            ("access_mode", |r| {
                if let Some(cap) = r.volume_capability.as_mut() {
                    cap.access_mode = None;
                }
            }),
        ];
        for (field, mutate) in cases {
            let mut req = request();
            mutate(&mut req);
            let err = validate_publish(req, Path::new("/var/lib/kubelet")).unwrap_err();
            assert!(matches!(err, RpcError::Invalid(_)), "{field}");
            assert!(err.to_string().contains(field), "{field}: {err}");
        }
    }

    /// The volume layer takes only parsed targets: one outside the pods directory, or with
    /// `..`, is refused here for unpublish as for publish, naming the field.
    #[tokio::test]
    async fn unpublish_refuses_targets_outside_the_pods_dir() {
        let f = node_fixture();
        let dotdot = f.pods.join("u/../../etc-like/mount").display().to_string();
        for target in ["/etc-like/mount".to_string(), dotdot] {
            let err = f
                .node
                .node_unpublish_volume(Request::new(csi::NodeUnpublishVolumeRequest {
                    volume_id: "csi-1".into(),
                    target_path: target.clone(),
                }))
                .await
                .unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument, "{target}");
            assert!(err.message().contains("target_path"), "{}", err.message());
        }
        let err = f
            .node
            .node_unpublish_volume(Request::new(csi::NodeUnpublishVolumeRequest {
                volume_id: "a/b".into(),
                target_path: f.pods.join("u/mount").display().to_string(),
            }))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(
            err.message().contains("accepted: 1 to 128"),
            "{}",
            err.message()
        );
    }
}
