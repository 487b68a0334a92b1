//! The start-up check that this process can mount a tmpfs where the volumes' tmpfs go.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::MntFlags;

use super::kernel::mount_tmpfs_raw;

/// The directory below `<data-root>/volumes` where `probe_tmpfs` mounts its throwaway tmpfs.
/// Its name does not start with `v-`, so the store never takes it for a volume; it is fixed (not
/// per process) so that a probe killed half-way is cleaned up by the next one.
pub const PROBE_DIR: &str = ".tmpfs-probe";

/// The step of `probe_tmpfs` that failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeStep {
    /// Creating the data root, its `volumes` directory or the probe directory.
    CreateDir,
    /// Mounting the throwaway tmpfs.
    Mount,
}

/// Why a tmpfs cannot be mounted where certvol mounts the volumes' tmpfs: the failing step, the
/// path and the errno, with advice that fits the errno.
#[derive(Debug, thiserror::Error)]
#[error("{what} {path} failed with {errno}: {advice}", what = step_text(*step), errno = errno_text(*errno), advice = probe_advice(*step, *errno))]
pub struct ProbeError {
    pub step: ProbeStep,
    pub path: PathBuf,
    pub errno: Errno,
}

fn step_text(step: ProbeStep) -> &'static str {
    match step {
        ProbeStep::CreateDir => "creating",
        ProbeStep::Mount => "mounting a tmpfs at",
    }
}

/// `EROFS (Read-only file system)`: the symbolic name operators search for, and its meaning.
fn errno_text(errno: Errno) -> String {
    format!("{errno:?} ({})", errno.desc())
}

/// What to do about `errno` at `step`, phrased for someone deploying the node plugin.
pub fn probe_advice(step: ProbeStep, errno: Errno) -> &'static str {
    match (step, errno) {
        (_, Errno::EROFS) => {
            "the data root is on a read-only file system; mount a writable directory (in a pod: a hostPath volume, as the Helm chart does for /var/lib/certvol) at --data-root"
        }
        (ProbeStep::CreateDir, Errno::EACCES | Errno::EPERM) => {
            "this process may not write to the data root; run certvol as root or give it a data root it owns"
        }
        (ProbeStep::Mount, Errno::EPERM | Errno::EACCES) => {
            "mounting needs root with CAP_SYS_ADMIN (in a pod: securityContext.privileged: true, as the Helm chart sets; a security module such as AppArmor or SELinux may also forbid mounts)"
        }
        (_, Errno::ENOENT) => {
            "a parent directory vanished or the data root is a dangling symbolic link; point --data-root at an existing, writable directory (in a pod: is the hostPath volume mounted there?)"
        }
        (_, Errno::ENOTDIR) => "a component of --data-root is not a directory",
        (_, Errno::ENOSPC | Errno::EDQUOT) => {
            "the file system of the data root is full (or out of inodes); free space there"
        }
        (ProbeStep::Mount, Errno::ENODEV) => "this kernel has no tmpfs support",
        (ProbeStep::Mount, Errno::ENOMEM) => "the node is out of memory",
        (ProbeStep::CreateDir, _) => "see mkdir(2)",
        (ProbeStep::Mount, _) => "see mount(2)",
    }
}

impl ProbeError {
    /// Whether plain directories would still work (`--allow-no-tmpfs`): only when the data root
    /// is writable and the mount itself failed.
    pub fn directories_would_work(&self) -> bool {
        self.step == ProbeStep::Mount
    }
}

fn errno_of(e: &io::Error) -> Errno {
    e.raw_os_error()
        .map_or(Errno::UnknownErrno, Errno::from_raw)
}

/// Unmounts (lazily: nothing uses a probe mount) and removes a probe directory, if there is one.
fn remove_probe_dir(dir: &Path) {
    // EINVAL: not a mount point; ENOENT: not there. Either way nothing is mounted.
    let _ = nix::mount::umount2(dir, MntFlags::MNT_DETACH);
    let _ = fs::remove_dir(dir);
}

/// What [`probe_tmpfs`] found out.
#[derive(Debug)]
pub(crate) enum Probed {
    /// A tmpfs was mounted below the data root (and removed again).
    Mounted,
    /// The data root holds a `volumes` directory from earlier runs but refuses writes now (read-only
    /// or full: the error says which), so the probe directory cannot be made. The node must still
    /// come up and serve the volumes it has (new publishes are refused with the data-root error
    /// until an operator clears the fault), so the probe is skipped rather than fatal.
    Skipped(ProbeError),
}

/// Checks that this process can mount a tmpfs where `certvol node` mounts the volumes' tmpfs:
/// below `<data_root>/volumes` (created 0700, as the store creates it). It mounts a small
/// throwaway tmpfs on [`PROBE_DIR`] and removes it again, also when a step fails; nothing is
/// written outside the data root (in a pod with `readOnlyRootFilesystem`, /tmp is not writable).
pub(crate) fn probe_tmpfs(data_root: &Path) -> Result<Probed, ProbeError> {
    let volumes = data_root.join("volumes");
    let dir = volumes.join(PROBE_DIR);
    let failed = |step, path: &Path, errno| ProbeError {
        step,
        path: path.to_path_buf(),
        errno,
    };
    crate::files::fsutil::create_dir_mode(&volumes, 0o700)
        .map_err(|e| failed(ProbeStep::CreateDir, &volumes, errno_of(&e)))?;
    // Left by a probe that was killed before it cleaned up.
    remove_probe_dir(&dir);
    if let Err(e) = fs::create_dir(&dir) {
        let error = failed(ProbeStep::CreateDir, &dir, errno_of(&e));
        // `volumes` exists (just checked), so this is a data root with a fault, not a wrong one.
        return match error.errno {
            Errno::EROFS | Errno::ENOSPC | Errno::EDQUOT => Ok(Probed::Skipped(error)),
            _ => Err(error),
        };
    }
    let mounted = mount_tmpfs_raw(&dir, "certvol-probe", 64 * 1024, 0o700);
    remove_probe_dir(&dir);
    mounted
        .map(|()| Probed::Mounted)
        .map_err(|errno| failed(ProbeStep::Mount, &dir, errno))
}

/// True if this process can mount a tmpfs in a fresh temporary directory (which it removes).
/// For tests and the demo, which keep everything under the temporary directory anyway;
/// `certvol node` probes its data root instead (`probe_tmpfs`).
pub fn can_mount_tmpfs() -> bool {
    tempfile::Builder::new()
        .prefix("certvol-probe")
        .tempdir()
        .is_ok_and(|dir| matches!(probe_tmpfs(dir.path()), Ok(Probed::Mounted)))
}
