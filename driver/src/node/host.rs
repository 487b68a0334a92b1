//! The node's host resources: the CSI socket, kubelet's directory and how volumes are mounted.

use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::UnixListener;
use tracing::warn;

use super::NodeError;
use crate::files::mount::{DirMounter, KernelMounter, Mounter, Probed};

/// Parses `unix:///path` (also `unix:/path`) into a socket path.
pub fn socket_path(endpoint: &str) -> Result<PathBuf, NodeError> {
    let path = endpoint
        .strip_prefix("unix://")
        .or_else(|| endpoint.strip_prefix("unix:"))
        .filter(|p| p.starts_with('/'))
        .ok_or_else(|| NodeError::Endpoint(endpoint.to_string()))?;
    Ok(PathBuf::from(path))
}

/// The kubelet directory bounds every target path lexically, so it must be absolute and free of
/// `..` (which would make "inside" meaningless).
pub fn check_kubelet_dir(dir: &Path) -> Result<(), NodeError> {
    let lexical = dir.is_absolute()
        && !dir
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir));
    if lexical {
        Ok(())
    } else {
        Err(NodeError::KubeletDir(dir.to_path_buf()))
    }
}

/// Binds the CSI socket with mode 0600 from its first moment: bind under a temporary name, set the
/// mode, then rename into place, so no other user can ever connect. A stale socket from an earlier
/// run is replaced; anything else at the path is an error.
pub fn bind_socket(path: &Path) -> Result<UnixListener, NodeError> {
    let err = |source| NodeError::Socket {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path).map_err(err)?,
        Ok(_) => {
            return Err(err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "exists and is not a socket; not replacing it",
            )));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let dir = path.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(dir).map_err(err)?;
    let tmp = dir.join(format!(".certvol-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let listener = UnixListener::bind(&tmp).map_err(err)?;
    let placed = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&tmp);
        return Err(err(e));
    }
    Ok(listener)
}

/// The environment variable `--allow-no-tmpfs` also needs (set to `1`).
pub const ALLOW_NO_TMPFS_ENV: &str = "CERTVOL_TESTS_ONLY_ALLOW_NO_TMPFS";

/// Whether the directory fallback may be used: the flag alone is refused, so that a flag copied
/// into a production DaemonSet cannot put keys on disk and give pods a writable link into the
/// data root. `env` is the value of [`ALLOW_NO_TMPFS_ENV`].
pub fn no_tmpfs_allowed(flag: bool, env: Option<&std::ffi::OsStr>) -> Result<bool, NodeError> {
    match (flag, env) {
        (false, _) => Ok(false),
        (true, Some(v)) if v == "1" => Ok(true),
        (true, _) => Err(NodeError::NoTmpfsNotEnabled),
    }
}

/// Chooses how volumes are mounted: tmpfs when a probe below `data_root` (where the volumes'
/// tmpfs go) can mount one; plain directories only when allowed (`--allow-no-tmpfs` and
/// [`ALLOW_NO_TMPFS_ENV`]) and the data root is writable.
pub fn choose_mounter(
    data_root: &Path,
    allow_no_tmpfs: bool,
) -> Result<Arc<dyn Mounter>, NodeError> {
    // Checked before the probe, so the refusal does not depend on whether tmpfs works here.
    let allowed = no_tmpfs_allowed(
        allow_no_tmpfs,
        std::env::var_os(ALLOW_NO_TMPFS_ENV).as_deref(),
    )?;
    probe_and_choose(data_root, allowed)
}

/// [`choose_mounter`] once the fallback's permission is settled.
fn probe_and_choose(data_root: &Path, allow_no_tmpfs: bool) -> Result<Arc<dyn Mounter>, NodeError> {
    match crate::files::mount::probe_tmpfs(data_root) {
        Ok(Probed::Mounted) => Ok(Arc::new(KernelMounter)),
        // Real mounts, never the directory fallback: if mounting does not work either, publishes
        // fail with the mount error instead of putting keys on disk.
        Ok(Probed::Skipped(why)) => {
            warn!(
                reason = %why,
                "the data root refuses writes, so the tmpfs probe was skipped; serving the volumes it holds, new publishes fail until it is writable"
            );
            Ok(Arc::new(KernelMounter))
        }
        Err(e) if allow_no_tmpfs && e.directories_would_work() => {
            warn!(
                reason = %e,
                "tmpfs cannot be mounted here; using plain directories (private keys are on disk: demos and tests only)"
            );
            Ok(Arc::new(DirMounter::default()))
        }
        Err(e) => Err(NodeError::NoTmpfs(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn endpoints() {
        assert_eq!(
            socket_path("unix:///csi/csi.sock").unwrap(),
            PathBuf::from("/csi/csi.sock")
        );
        assert_eq!(
            socket_path("unix:/a.sock").unwrap(),
            PathBuf::from("/a.sock")
        );
        for bad in ["tcp://1.2.3.4:5", "/csi.sock", "unix://relative.sock", ""] {
            let err = socket_path(bad).unwrap_err().to_string();
            assert!(err.contains("unix:///"), "{bad}: {err}");
        }
    }

    #[test]
    fn kubelet_dir_must_be_absolute_without_parent_components() {
        assert!(check_kubelet_dir(Path::new("/var/lib/kubelet")).is_ok());
        assert!(check_kubelet_dir(Path::new("/data/kubelet/")).is_ok());
        for bad in ["var/lib/kubelet", "/var/lib/../kubelet", ""] {
            let err = check_kubelet_dir(Path::new(bad)).unwrap_err().to_string();
            assert!(
                err.contains("--kubelet-dir") && err.contains("absolute"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn no_tmpfs_suggests_directories_only_when_they_would_work() {
        use crate::files::mount::{ProbeError, ProbeStep};
        use nix::errno::Errno;
        let mount = NodeError::NoTmpfs(ProbeError {
            step: ProbeStep::Mount,
            path: PathBuf::from("/var/lib/certvol/volumes/.tmpfs-probe"),
            errno: Errno::EPERM,
        })
        .to_string();
        assert!(
            mount.starts_with("cannot mount the volumes' tmpfs below the data root: mounting a tmpfs at /var/lib/certvol/volumes/.tmpfs-probe failed with EPERM"),
            "{mount}"
        );
        assert!(
            mount.contains("CAP_SYS_ADMIN") && mount.contains("--allow-no-tmpfs"),
            "{mount}"
        );
        let read_only = NodeError::NoTmpfs(ProbeError {
            step: ProbeStep::CreateDir,
            path: PathBuf::from("/var/lib/certvol/volumes"),
            errno: Errno::EROFS,
        })
        .to_string();
        assert!(
            read_only.contains("creating /var/lib/certvol/volumes failed with EROFS"),
            "{read_only}"
        );
        assert!(!read_only.contains("--allow-no-tmpfs"), "{read_only}");
    }

    #[test]
    fn allow_no_tmpfs_alone_is_refused() {
        use std::ffi::OsStr;
        assert!(!no_tmpfs_allowed(false, None).unwrap());
        assert!(!no_tmpfs_allowed(false, Some(OsStr::new("1"))).unwrap());
        assert!(no_tmpfs_allowed(true, Some(OsStr::new("1"))).unwrap());
        for env in [None, Some(OsStr::new("")), Some(OsStr::new("yes"))] {
            let err = no_tmpfs_allowed(true, env).unwrap_err();
            let msg = err.to_string();
            assert!(
                msg.contains(ALLOW_NO_TMPFS_ENV) && msg.contains("tests only"),
                "{msg}"
            );
        }
        // Refused before the probe: even where tmpfs works, the flag alone stops the start.
        let dir = tempfile::tempdir().unwrap();
        if std::env::var_os(ALLOW_NO_TMPFS_ENV).is_none() {
            assert!(matches!(
                choose_mounter(dir.path(), true),
                Err(NodeError::NoTmpfsNotEnabled)
            ));
        }
    }

    #[test]
    fn a_read_only_data_root_is_refused_even_with_allow_no_tmpfs() {
        if !nix::unistd::geteuid().is_root() {
            println!("skipping: needs root to make a read-only bind mount");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let ro = dir.path().join("ro");
        std::fs::create_dir(&ro).unwrap();
        KernelMounter.bind_read_only(&ro, &ro).unwrap();
        let result = probe_and_choose(&ro.join("data"), true);
        let _ = KernelMounter.unmount(&ro);
        match result {
            Err(NodeError::NoTmpfs(e)) => assert_eq!(e.errno, nix::errno::Errno::EROFS),
            Err(other) => panic!("{other}"),
            Ok(m) => panic!("{m:?}"),
        }
    }

    #[tokio::test]
    async fn socket_is_private_and_stale_socket_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("csi.sock");
        let first = bind_socket(&path).unwrap();
        drop(first);
        // The file of the dropped listener is still there: a stale socket.
        assert!(path.exists());
        let _second = bind_socket(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let leftovers = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(leftovers, 1);
        let file = dir.path().join("not-a-socket");
        std::fs::write(&file, b"x").unwrap();
        assert!(bind_socket(&file).is_err());
        assert_eq!(std::fs::read(&file).unwrap(), b"x");
    }
}
