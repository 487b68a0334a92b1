//! tmpfs and read-only bind mounts, plus a reader for the kernel's mount table.
//!
//! Key material lives on a per-volume tmpfs so it never touches a disk; the pod sees that tmpfs
//! through a read-only bind mount so it cannot tamper with what the driver renews. [`DirMounter`]
//! imitates both with plain directories and symlinks for demos that cannot run as root.
//!
//! `kernel` holds the real mounts, `dir` the stand-in, `mountinfo` the mount-table reader,
//! `beneath` the descriptor-based path walks that refuse symbolic links, `probe` the start-up
//! check that a tmpfs can be mounted at all.

mod beneath;
mod dir;
mod errors;
mod kernel;
mod mountinfo;
mod probe;

use std::fmt::Debug;
use std::io;
use std::path::Path;

pub use beneath::open_beneath;
pub use dir::DirMounter;
pub use mountinfo::{MountInfo, parse_mountinfo};
pub use probe::{PROBE_DIR, ProbeError, ProbeStep, can_mount_tmpfs, probe_advice};

pub(crate) use beneath::create_dir_beneath;
pub(crate) use kernel::KernelMounter;
pub(crate) use probe::{Probed, probe_tmpfs};

/// Mounting, as the volume code needs it. Real mounts in production, fake ones in demos.
pub trait Mounter: Send + Sync + Debug + 'static {
    /// Mounts a tmpfs at `path` (an existing directory) with nodev,nosuid,noexec, a size limit of
    /// `size_bytes` and root directory mode `mode`, with `source` as the mount source so that our
    /// mounts can be recognised in mountinfo.
    fn mount_tmpfs(&self, path: &Path, source: &str, size_bytes: u64, mode: u32) -> io::Result<()>;
    /// Bind-mounts `src` at `target` (an existing directory) read-only with nodev,nosuid,noexec.
    /// On failure nothing stays mounted at `target`.
    fn bind_read_only(&self, src: &Path, target: &Path) -> io::Result<()>;
    /// Unmounts `path` (not lazily); Ok(()) if it is not mounted or does not exist.
    fn unmount(&self, path: &Path) -> io::Result<()>;
    /// [`Mounter::bind_read_only`] at a `target` below `root`, reached from `root` without
    /// following a symbolic link in any component (see [`open_beneath`]), so a link planted
    /// after the callers' checks cannot take the bind elsewhere.
    fn bind_read_only_beneath(&self, src: &Path, root: &Path, target: &Path) -> io::Result<()> {
        beneath::open_parent_beneath(root, target)?;
        self.bind_read_only(src, target)
    }
    /// [`Mounter::unmount`] of a `target` below `root`, resolved like
    /// [`Mounter::bind_read_only_beneath`] (the kernel's is detached by descriptor, and gone
    /// when the call returns); Ok(()) if it does not exist or is not mounted.
    fn unmount_beneath(&self, root: &Path, target: &Path) -> io::Result<()> {
        match beneath::open_parent_beneath(root, target) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
            Ok(_) => self.unmount(target),
        }
    }
    /// The current mount table.
    fn mounts(&self) -> io::Result<Vec<MountInfo>>;
    /// Whether `path` is a mount point.
    fn is_mounted(&self, path: &Path) -> io::Result<bool>;
    /// The topmost mount whose mount point is `path` itself, `None` when nothing is mounted
    /// there. A symbolic link at the last component is not followed: a link is never a mount
    /// point as named, so a link at a target cannot make another mount look like the target's.
    /// Links in the components above are resolved; callers check those first.
    fn mount_at(&self, path: &Path) -> io::Result<Option<MountInfo>>;
    /// Whether key material written under this mounter's tmpfs stays in memory (false for the
    /// directory fallback, which writes to whatever disk backs the directory).
    fn memory_backed(&self) -> bool;
}

#[cfg(test)]
mod tests;
