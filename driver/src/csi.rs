//! The CSI gRPC services (Identity and Node): request validation as the CSI spec asks, and the
//! one mapping from certvol's errors to gRPC status codes.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use certvol_proto::csi::v1 as csi;
use csi::identity_server::Identity;
use csi::node_server::Node;
use csi::volume_capability::AccessType;
use csi::volume_capability::access_mode::Mode;
use tonic::{Code, Request, Response, Status};
use tracing::{Instrument, info_span, warn};

use crate::issuer::IssueError;
use crate::volume::{PublishParams, VolumeError, VolumeManager};

/// The volume context key kubelet sets to "true" for inline ephemeral volumes.
pub const EPHEMERAL_KEY: &str = "csi.storage.k8s.io/ephemeral";

/// Why an RPC failed. [`RpcError::status`] is the only place certvol chooses gRPC codes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RpcError {
    /// A request field is missing or not acceptable (CSI argument checks).
    #[error("{0}")]
    Invalid(String),
    /// Start-up recovery has not finished; kubelet retries.
    #[error("certvol is recovering its state after a restart; retry shortly")]
    Recovering,
    #[error("{0} is not supported by certvol (node plugin for inline ephemeral volumes only)")]
    Unsupported(&'static str),
    #[error(transparent)]
    Volume(#[from] VolumeError),
}

impl RpcError {
    /// The gRPC status for this error. kubelet treats Canceled, DeadlineExceeded, Unavailable,
    /// ResourceExhausted and Aborted as "not final" and retries keeping the mount uncertain, so
    /// those codes are reserved for conditions a retry resumes.
    pub fn status(&self) -> Status {
        let code = match self {
            RpcError::Invalid(_) => Code::InvalidArgument,
            RpcError::Recovering => Code::Unavailable,
            RpcError::Unsupported(_) => Code::Unimplemented,
            RpcError::Volume(e) => match e {
                VolumeError::Attributes(_) | VolumeError::InvalidArgument(_) => {
                    Code::InvalidArgument
                }
                VolumeError::OtherTarget { .. } => Code::FailedPrecondition,
                VolumeError::Incompatible { .. } => Code::AlreadyExists,
                VolumeError::Issue(issue) => match issue {
                    IssueError::Unavailable { .. } => Code::Unavailable,
                    IssueError::Timeout { .. } => Code::DeadlineExceeded,
                    IssueError::Denied { .. } => Code::PermissionDenied,
                    IssueError::Failed { .. } | IssueError::Invalid { .. } => {
                        Code::FailedPrecondition
                    }
                },
                VolumeError::BadCertificate { .. } => Code::FailedPrecondition,
                _ => Code::Internal,
            },
        };
        Status::new(code, self.to_string())
    }
}

/// Probe readiness, shared by the server and the recovery pass.
#[derive(Clone, Debug, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn set_ready(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// CSI Identity service.
#[derive(Clone, Debug)]
pub struct IdentityService {
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
pub struct NodeService {
    pub node_id: String,
    pub volumes: Arc<VolumeManager>,
    pub ready: Readiness,
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

/// Checks a NodePublishVolume request as the CSI spec and certvol's volume model require.
pub fn validate_publish(req: csi::NodePublishVolumeRequest) -> Result<PublishParams, RpcError> {
    if req.volume_id.is_empty() {
        return Err(RpcError::Invalid("volume_id is required".into()));
    }
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
    Ok(PublishParams {
        volume_id: req.volume_id,
        target_path: PathBuf::from(req.target_path),
        context: req.volume_context,
        mount_group,
    })
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
        let req = request.into_inner();
        let volume_id = req.volume_id.clone();
        let pod = pod_of(&req.volume_context);
        let result = async {
            self.check_ready()?;
            let params = validate_publish(req)?;
            let volumes = self.volumes.clone();
            let span = info_span!("publish", volume_id = %params.volume_id, pod = %pod);
            // Run the publish as its own task: if kubelet gives up on the call, the task still
            // finishes the step it is in and records it, instead of being dropped half-way.
            tokio::spawn(async move { volumes.publish(params).await }.instrument(span))
                .await
                .map_err(|e| VolumeError::Internal(format!("publish task failed: {e}")))??;
            Ok::<_, RpcError>(())
        }
        .await;
        match result {
            Ok(()) => Ok(Response::new(csi::NodePublishVolumeResponse {})),
            Err(e) => Err(fail("NodePublishVolume", &volume_id, &pod, e)),
        }
    }

    async fn node_unpublish_volume(
        &self,
        request: Request<csi::NodeUnpublishVolumeRequest>,
    ) -> Result<Response<csi::NodeUnpublishVolumeResponse>, Status> {
        let req = request.into_inner();
        let volume_id = req.volume_id.clone();
        let result = async {
            if req.volume_id.is_empty() {
                return Err(RpcError::Invalid("volume_id is required".into()));
            }
            if req.target_path.is_empty() {
                return Err(RpcError::Invalid("target_path is required".into()));
            }
            self.check_ready()?;
            let volumes = self.volumes.clone();
            let span = info_span!("unpublish", volume_id = %req.volume_id);
            tokio::spawn(
                async move {
                    volumes
                        .unpublish(&req.volume_id, std::path::Path::new(&req.target_path))
                        .await
                }
                .instrument(span),
            )
            .await
            .map_err(|e| VolumeError::Internal(format!("unpublish task failed: {e}")))??;
            Ok(())
        }
        .await;
        match result {
            Ok(()) => Ok(Response::new(csi::NodeUnpublishVolumeResponse {})),
            Err(e) => Err(fail("NodeUnpublishVolume", &volume_id, "", e)),
        }
    }

    async fn node_get_volume_stats(
        &self,
        request: Request<csi::NodeGetVolumeStatsRequest>,
    ) -> Result<Response<csi::NodeGetVolumeStatsResponse>, Status> {
        let volume_id = request.into_inner().volume_id;
        Err(fail(
            "NodeGetVolumeStats",
            &volume_id,
            "",
            RpcError::Unsupported("NodeGetVolumeStats"),
        ))
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
        // non-root pods can read their key without an attribute.
        Ok(Response::new(csi::NodeGetCapabilitiesResponse {
            capabilities: vec![cap(rpc::Type::VolumeMountGroup)],
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
    use crate::attrs;
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
        let params = validate_publish(request()).unwrap();
        assert_eq!(params.volume_id, "csi-1");
        assert_eq!(params.mount_group, Some(2000));
    }

    #[test]
    fn status_codes_are_chosen_in_one_place() {
        let attr_err = attrs::parse(&HashMap::new()).unwrap_err();
        let cases: Vec<(RpcError, Code)> = vec![
            (RpcError::Invalid("x".into()), Code::InvalidArgument),
            (RpcError::Recovering, Code::Unavailable),
            (
                RpcError::Unsupported("NodeStageVolume"),
                Code::Unimplemented,
            ),
            (VolumeError::from(attr_err).into(), Code::InvalidArgument),
            (
                VolumeError::OtherTarget {
                    volume_id: "v".into(),
                    existing: "/a".into(),
                    requested: "/b".into(),
                }
                .into(),
                Code::FailedPrecondition,
            ),
            (
                VolumeError::Incompatible {
                    volume_id: "v".into(),
                    target: "/a".into(),
                }
                .into(),
                Code::AlreadyExists,
            ),
            (
                VolumeError::Issue(IssueError::Unavailable {
                    message: "down".into(),
                })
                .into(),
                Code::Unavailable,
            ),
            (
                VolumeError::Issue(IssueError::Timeout {
                    request: "r".into(),
                })
                .into(),
                Code::DeadlineExceeded,
            ),
            (
                VolumeError::Issue(IssueError::Denied {
                    request: "r".into(),
                    message: "no".into(),
                })
                .into(),
                Code::PermissionDenied,
            ),
            (
                VolumeError::Issue(IssueError::Failed {
                    request: "r".into(),
                    message: "boom".into(),
                })
                .into(),
                Code::FailedPrecondition,
            ),
            (VolumeError::Internal("bug".into()).into(), Code::Internal),
        ];
        for (err, code) in cases {
            let status = err.status();
            assert_eq!(status.code(), code, "{err}");
            assert_eq!(status.message(), err.to_string());
        }
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
            let err = validate_publish(req).unwrap_err();
            assert!(matches!(err, RpcError::Invalid(_)), "{field}");
            assert!(err.to_string().contains(field), "{field}: {err}");
        }
    }
}
