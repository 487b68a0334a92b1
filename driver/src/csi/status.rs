//! The one mapping from certvol's errors to gRPC status codes: each error type says its code
//! here, every match exhaustive, so a new variant cannot reach kubelet as a code nobody chose.
//!
//! kubelet treats Canceled, DeadlineExceeded, Unavailable, ResourceExhausted and Aborted as "not
//! final" and retries keeping the mount uncertain, so those codes are reserved for conditions a
//! retry resumes.

use tonic::{Code, Status};

use crate::files::layout::LayoutError;
use crate::issuer::IssueError;
use crate::kube::discovery::ApiError;
use crate::kube::pods::IdentityError;
use crate::trust::SourceError;
use crate::volume::VolumeError;

/// Why an RPC failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum RpcError {
    /// A request field is missing or not acceptable (CSI argument checks).
    #[error("{0}")]
    Invalid(String),
    /// A volume id or target path that does not parse.
    #[error(transparent)]
    Field(#[from] crate::spec::volume::FieldError),
    /// Start-up recovery has not finished; kubelet retries.
    #[error("certvol is recovering its state after a restart; retry shortly")]
    Recovering,
    #[error("{0} is not supported by certvol (node plugin for inline ephemeral volumes only)")]
    Unsupported(&'static str),
    /// The volume does not exist (at the given path).
    #[error("{0}")]
    NotFound(String),
    #[error(transparent)]
    Volume(#[from] VolumeError),
}

impl RpcError {
    /// The gRPC status kubelet gets for this error.
    pub(crate) fn status(&self) -> Status {
        Status::new(self.code(), self.to_string())
    }
}

/// The gRPC code an error means to kubelet.
pub(crate) trait GrpcCode {
    fn code(&self) -> Code;
}

impl GrpcCode for RpcError {
    fn code(&self) -> Code {
        match self {
            RpcError::Invalid(_) | RpcError::Field(_) => Code::InvalidArgument,
            RpcError::Recovering => Code::Unavailable,
            RpcError::Unsupported(_) => Code::Unimplemented,
            RpcError::NotFound(_) => Code::NotFound,
            RpcError::Volume(e) => e.code(),
        }
    }
}

impl GrpcCode for VolumeError {
    fn code(&self) -> Code {
        match self {
            VolumeError::Attributes(_)
            | VolumeError::InvalidArgument(_)
            | VolumeError::Limit(_) => Code::InvalidArgument,
            VolumeError::OtherTarget { .. } => Code::FailedPrecondition,
            // The request is valid; the node's state at the target is not. Final, so kubelet
            // backs off, and it leaves a target that is a mount point in place.
            VolumeError::ForeignMount { .. } => Code::FailedPrecondition,
            VolumeError::Incompatible { .. } => Code::AlreadyExists,
            // The request is well-formed; the operator's policy forbids it.
            VolumeError::Policy(_) | VolumeError::ForbiddenKey { .. } => Code::PermissionDenied,
            VolumeError::Issue(issue) => issue.code(),
            VolumeError::BadCertificate { .. } => Code::FailedPrecondition,
            VolumeError::Layout(layout) => layout.code(),
            // Final, not ResourceExhausted: kubelet reads that as "maybe mounted" and would keep
            // an uncertain mount of a publish that left nothing behind. Its retries (with
            // backoff) succeed once an operator has cleared the fault.
            VolumeError::DataRoot { .. } => Code::FailedPrecondition,
            // The node's volumes hold the tmpfs budget: final for the same reason, and the
            // publish left nothing behind; kubelet's retries succeed once volumes are gone.
            VolumeError::TmpfsBudget(_) => Code::FailedPrecondition,
            // Non-final: the volume keeps its state and kubelet's retry files a new request.
            VolumeError::Expired { .. } => Code::Aborted,
            VolumeError::Trust(source) => source.code(),
            VolumeError::Api(api) => api.code(),
            VolumeError::Identity(identity) => identity.code(),
            // certvol's own failures on the node: nothing the request or the cluster can fix.
            VolumeError::Key(_)
            | VolumeError::Io { .. }
            | VolumeError::Store(_)
            | VolumeError::Write(_)
            | VolumeError::Internal(_) => Code::Internal,
        }
    }
}

impl GrpcCode for IssueError {
    fn code(&self) -> Code {
        match self {
            IssueError::Unavailable { .. } => Code::Unavailable,
            IssueError::Timeout { .. } => Code::DeadlineExceeded,
            IssueError::Denied { .. } => Code::PermissionDenied,
            IssueError::Failed { .. } | IssueError::Invalid { .. } => Code::FailedPrecondition,
        }
    }
}

impl GrpcCode for LayoutError {
    fn code(&self) -> Code {
        match self {
            // The volume asks for a truststore while no CA is there to put in it.
            LayoutError::EmptyTruststore { .. } => Code::FailedPrecondition,
            // What the issuer returned or certvol made cannot be written out.
            LayoutError::Key(_)
            | LayoutError::Pem { .. }
            | LayoutError::EmptyChain
            | LayoutError::NoPassword { .. }
            | LayoutError::Pkcs12 { .. } => Code::Internal,
        }
    }
}

impl GrpcCode for SourceError {
    fn code(&self) -> Code {
        match self {
            SourceError::Policy(_) => Code::InvalidArgument,
            SourceError::NotFound { .. }
            | SourceError::MissingKey { .. }
            | SourceError::NotText { .. }
            | SourceError::TooLarge { .. }
            | SourceError::NoneSelected { .. }
            // The attribute is valid; the cluster lacks the API it needs.
            | SourceError::NoApi(_) => Code::FailedPrecondition,
            SourceError::Unavailable { .. } => Code::Unavailable,
            // The volume is valid; its namespace's other volumes hold the watch budget, or the
            // node's sources hold its byte budget. Final, not ResourceExhausted: kubelet reads
            // that as "maybe mounted" and this publish left nothing behind; its retries (with
            // backoff) succeed once under the budget again.
            SourceError::TooManyWatches { .. } | SourceError::OverBudget { .. } => {
                Code::FailedPrecondition
            }
        }
    }
}

impl GrpcCode for ApiError {
    fn code(&self) -> Code {
        match self {
            ApiError::NotDiscovered { .. } => Code::Unavailable,
            ApiError::Missing(_) | ApiError::NoClusterTrustBundles(_) => Code::FailedPrecondition,
        }
    }
}

impl GrpcCode for IdentityError {
    fn code(&self) -> Code {
        match self {
            IdentityError::NotReady(_) => Code::Unavailable,
            // The cluster's CSIDriver is wrong; an operator has to act.
            IdentityError::DriverObject(_) => Code::FailedPrecondition,
            // Well-formed, but it claims a pod the API does not confirm.
            IdentityError::Mismatch { .. } => Code::PermissionDenied,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::SystemTime;

    use super::*;
    use crate::files::store;
    use crate::spec::attrs;

    #[test]
    fn status_codes_are_chosen_in_one_place() {
        let attr_err = attrs::parse(&HashMap::new()).unwrap_err();
        let cases: Vec<(RpcError, Code)> = vec![
            (RpcError::Invalid("x".into()), Code::InvalidArgument),
            (
                crate::spec::volume::VolumeId::parse("a/b")
                    .unwrap_err()
                    .into(),
                Code::InvalidArgument,
            ),
            (RpcError::Recovering, Code::Unavailable),
            (RpcError::NotFound("gone".into()), Code::NotFound),
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
                VolumeError::Policy(crate::issuer::policy::PolicyViolation {
                    attribute: "is-ca",
                    value: "true".into(),
                    rule: "no CAs".into(),
                })
                .into(),
                Code::PermissionDenied,
            ),
            (
                VolumeError::ForbiddenKey {
                    attribute: "csi.cert-manager.io/key-size".into(),
                }
                .into(),
                Code::PermissionDenied,
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
            (
                VolumeError::Layout(LayoutError::EmptyTruststore {
                    file: "trust.p12".into(),
                })
                .into(),
                Code::FailedPrecondition,
            ),
            (
                VolumeError::Layout(LayoutError::NoPassword {
                    file: "ks.p12".into(),
                })
                .into(),
                Code::Internal,
            ),
            (
                VolumeError::Trust(SourceError::NotFound {
                    attribute: "csi.certvol.io/trust-configmaps".into(),
                    object: "ConfigMap shop/ca".into(),
                })
                .into(),
                Code::FailedPrecondition,
            ),
            (
                VolumeError::Trust(SourceError::TooLarge {
                    attribute: "csi.certvol.io/trust-configmaps".into(),
                    object: "ConfigMap shop/ca".into(),
                    key: "ca.crt".into(),
                    bytes: 2 << 20,
                    max: 1 << 20,
                })
                .into(),
                Code::FailedPrecondition,
            ),
            (
                VolumeError::Trust(SourceError::OverBudget {
                    attribute: "csi.certvol.io/trust-configmaps".into(),
                    object: "ConfigMap shop/ca".into(),
                    key: "ca.crt".into(),
                    bytes: 1 << 20,
                    max: 32 << 20,
                })
                .into(),
                Code::FailedPrecondition,
            ),
            (
                VolumeError::Trust(SourceError::TooManyWatches {
                    attribute: "csi.certvol.io/trust-configmaps".into(),
                    object: "ConfigMap shop/ca".into(),
                    namespace: "shop".into(),
                    count: 65,
                    max: 64,
                })
                .into(),
                Code::FailedPrecondition,
            ),
            (
                VolumeError::Trust(SourceError::Unavailable {
                    attribute: "csi.certvol.io/trust-secrets".into(),
                    object: "Secret shop/ca".into(),
                    waited: std::time::Duration::from_secs(1),
                    reason: "forbidden".into(),
                })
                .into(),
                Code::Unavailable,
            ),
            (
                VolumeError::DataRoot {
                    root: "/var/lib/certvol".into(),
                    fault: store::DiskFault::Full,
                    action: "write",
                    path: "/var/lib/certvol/volumes/v-0/state.json".into(),
                    source: std::io::Error::from_raw_os_error(libc::ENOSPC),
                }
                .into(),
                Code::FailedPrecondition,
            ),
            (
                VolumeError::Expired {
                    request: "r".into(),
                    not_after: SystemTime::UNIX_EPOCH,
                }
                .into(),
                Code::Aborted,
            ),
            (
                VolumeError::Trust(SourceError::NoApi(
                    crate::kube::discovery::NoClusterTrustBundles::trust(
                        "csi.certvol.io/trust-cluster-bundles",
                        "example.com:s:a",
                    ),
                ))
                .into(),
                Code::FailedPrecondition,
            ),
            (
                VolumeError::Api(ApiError::NotDiscovered {
                    reason: "connection refused".into(),
                })
                .into(),
                Code::Unavailable,
            ),
            (
                VolumeError::Api(ApiError::Missing(crate::kube::discovery::CERT_MANAGER_API))
                    .into(),
                Code::FailedPrecondition,
            ),
            (
                VolumeError::Api(ApiError::NoClusterTrustBundles(
                    crate::kube::discovery::NoClusterTrustBundles::ca_source(
                        &crate::spec::request::CaSource::ClusterTrustBundleSigner,
                    ),
                ))
                .into(),
                Code::FailedPrecondition,
            ),
            (
                VolumeError::Identity(IdentityError::NotReady("pod watch".into())).into(),
                Code::Unavailable,
            ),
            (
                VolumeError::Identity(IdentityError::DriverObject(
                    crate::kube::pods::DriverObjectError::Missing {
                        name: "csi.certvol.io".into(),
                    },
                ))
                .into(),
                Code::FailedPrecondition,
            ),
            (
                VolumeError::Identity(IdentityError::Mismatch {
                    namespace: "other".into(),
                    name: "victim".into(),
                    uid: "u".into(),
                    service_account: "default".into(),
                    mismatch: "no such pod is bound to this node".into(),
                })
                .into(),
                Code::PermissionDenied,
            ),
            (VolumeError::Internal("bug".into()).into(), Code::Internal),
        ];
        for (err, code) in cases {
            let status = err.status();
            assert_eq!(status.code(), code, "{err}");
            assert_eq!(status.message(), err.to_string());
        }
    }
}
