//! Why a volume operation failed: one error type, which the CSI layer maps to gRPC codes.

use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::files::layout::LayoutError;
use crate::files::store::{self, DiskFault, StoreError};
use crate::files::writer::WriteError;
use crate::issuer::IssueError;
use crate::kube::discovery::ApiError;
use crate::spec::attrs::AttrError;
use crate::trust::SourceError;
use crate::x509::keys::KeyError;

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
    pub(super) fn keeps_pending(&self) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;

    use std::io;
    use std::path::Path;

    use crate::files::store::{DiskFault, StoreError};

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
}
