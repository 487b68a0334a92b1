//! Real mounts through mount(2), umount(2), open_tree(2) and move_mount(2).

use std::fs;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};

use super::Mounter;
use super::beneath::open_beneath;
use super::errors::{context, errno_error, invalid_input, rustix_error};
use super::mountinfo::{MountInfo, parse_mountinfo};

/// Real mounts through mount(2) and umount(2). Needs CAP_SYS_ADMIN.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct KernelMounter;

impl Mounter for KernelMounter {
    fn mount_tmpfs(&self, path: &Path, source: &str, size_bytes: u64, mode: u32) -> io::Result<()> {
        check_tmpfs_args(path, source, size_bytes, mode)?;
        mount_tmpfs_raw(path, source, size_bytes, mode)
            .map_err(|e| errno_error(e, format!("mounting tmpfs at {}", path.display())))
    }

    fn bind_read_only(&self, src: &Path, target: &Path) -> io::Result<()> {
        with_staged_bind(src, |staging| attach_clone(staging, target))
    }

    fn bind_read_only_beneath(&self, src: &Path, root: &Path, target: &Path) -> io::Result<()> {
        let dir = open_beneath(root, target)?;
        with_staged_bind(src, |staging| attach_clone_at(staging, &dir, target))
    }

    fn unmount_beneath(&self, root: &Path, target: &Path) -> io::Result<()> {
        let dir = match open_beneath(root, target) {
            Ok(dir) => dir,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        // The descriptor's magic link in /proc names exactly the mount it was opened on, so the
        // unmount cannot be taken elsewhere by a path changed since. The descriptor itself keeps
        // that mount busy, so it is detached; it is gone once the descriptor closes, on return.
        // Without /proc (ENOENT), by path with UMOUNT_NOFOLLOW as in `unmount`.
        let by_fd = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
        let result = nix::mount::umount2(&by_fd, MntFlags::MNT_DETACH);
        drop(dir);
        match result {
            Ok(()) | Err(Errno::EINVAL) => Ok(()),
            Err(Errno::ENOENT) => self.unmount(target),
            Err(e) => Err(errno_error(
                e,
                format!("unmounting {} (by descriptor)", target.display()),
            )),
        }
    }

    fn unmount(&self, path: &Path) -> io::Result<()> {
        // A kill between the two binds of `bind_read_only` leaves its staging bind inside the
        // volume's tmpfs, which would keep the tmpfs busy.
        let _ = nix::mount::umount2(
            &path.join(BIND_STAGING),
            MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW,
        );
        // UMOUNT_NOFOLLOW: a symbolic link at `path` (planted after the callers' checks) must
        // not take the unmount to wherever it leads; the link itself is no mount point (EINVAL).
        match nix::mount::umount2(path, MntFlags::UMOUNT_NOFOLLOW) {
            Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(errno_error(e, format!("unmounting {}", path.display()))),
        }
    }

    fn mounts(&self) -> io::Result<Vec<MountInfo>> {
        let raw = fs::read("/proc/self/mountinfo")
            .map_err(|e| io::Error::new(e.kind(), format!("reading /proc/self/mountinfo: {e}")))?;
        Ok(parse_mountinfo(&String::from_utf8_lossy(&raw)))
    }

    fn is_mounted(&self, path: &Path) -> io::Result<bool> {
        let canonical = match fs::canonicalize(path) {
            Ok(p) => p,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("resolving {}: {e}", path.display()),
                ));
            }
        };
        Ok(self.mounts()?.iter().any(|m| m.mount_point == canonical))
    }

    fn mount_at(&self, path: &Path) -> io::Result<Option<MountInfo>> {
        match fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_symlink() => return Ok(None),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(context(e, format!("inspecting {}", path.display()))),
        }
        // Not a link itself, so resolving only normalises the components above (which the
        // callers have checked) to the form mountinfo uses.
        let canonical = fs::canonicalize(path)
            .map_err(|e| context(e, format!("resolving {}", path.display())))?;
        // mountinfo lists mounts in the order they were made; at one point the last is on top.
        Ok(self
            .mounts()?
            .into_iter()
            .rfind(|m| m.mount_point == canonical))
    }

    fn memory_backed(&self) -> bool {
        true
    }
}

const PROTECTIVE_FLAGS: MsFlags = MsFlags::MS_NODEV
    .union(MsFlags::MS_NOSUID)
    .union(MsFlags::MS_NOEXEC);

pub(super) fn check_tmpfs_args(
    path: &Path,
    source: &str,
    size_bytes: u64,
    mode: u32,
) -> io::Result<()> {
    if size_bytes == 0 {
        // tmpfs treats size=0 as "no limit", which would let a volume fill the node's memory.
        return Err(invalid_input(format!(
            "tmpfs size for {} must be at least 1 byte (0 would mean unlimited)",
            path.display()
        )));
    }
    if mode & !0o7777 != 0 {
        return Err(invalid_input(format!(
            "tmpfs mode {mode:o} for {} is not a permission mode (accepted: 0 to 7777 octal)",
            path.display()
        )));
    }
    if source.is_empty() || source.contains(['\0', ' ', '\t', '\n', '\\']) {
        return Err(invalid_input(format!(
            "tmpfs source {source:?} for {} must be non-empty without whitespace, NUL or backslash",
            path.display()
        )));
    }
    Ok(())
}

/// The mount(2) call behind every tmpfs certvol makes (volumes and the probe), so the probe
/// tests exactly what a publish will do. Arguments are checked by the callers.
pub(super) fn mount_tmpfs_raw(
    path: &Path,
    source: &str,
    size_bytes: u64,
    mode: u32,
) -> nix::Result<()> {
    let data = format!("size={size_bytes},mode={mode:o}");
    nix::mount::mount(
        Some(source),
        path,
        Some("tmpfs"),
        PROTECTIVE_FLAGS,
        Some(data.as_str()),
    )
}

/// Where [`KernelMounter::bind_read_only`] makes its read-only bind before the target's: a
/// sibling of the source, so on the same (memory-backed) filesystem and never in the pod's view.
pub(super) const BIND_STAGING: &str = ".bind-staging";

/// A bind of `src` at `target`, then remounted read-only with the protective flags; nothing is
/// left mounted at `target` if the remount fails.
fn bind_protected(src: &Path, target: &Path) -> io::Result<()> {
    nix::mount::mount(
        Some(src),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| {
        errno_error(
            e,
            format!("bind-mounting {} at {}", src.display(), target.display()),
        )
    })?;
    let remount = nix::mount::mount(
        None::<&str>,
        target,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | PROTECTIVE_FLAGS,
        None::<&str>,
    );
    if let Err(e) = remount {
        // A writable bind left behind would let the pod modify its key material.
        let _ = nix::mount::umount2(target, MntFlags::empty());
        return Err(errno_error(
            e,
            format!("making the bind mount at {} read-only", target.display()),
        ));
    }
    Ok(())
}

/// Binds the (read-only) mount at `from` onto `target` by file descriptor: the target is opened
/// once, refusing a symbolic link there (O_PATH | O_NOFOLLOW | O_DIRECTORY), and a clone of
/// `from` is attached to exactly the directory opened, so the target is not resolved again
/// between the callers' checks and the mount. A clone keeps the per-mount flags of `from`
/// (read-only, nodev, nosuid, noexec), as a bind does, and so do the copies propagation makes.
/// Kernels without open_tree/move_mount (before 5.2) get [`bind_protected`] by path instead.
fn attach_clone(from: &Path, target: &Path) -> io::Result<()> {
    use rustix::fs::{Mode, OFlags};
    let dir = rustix::fs::open(
        target,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| rustix_error(e, format!("opening bind target {}", target.display())))?;
    attach_clone_at(from, &dir, target)
}

/// [`attach_clone`] onto the directory `dir` already opened (`target` names it in messages and
/// for the fallback by path).
fn attach_clone_at(from: &Path, dir: &OwnedFd, target: &Path) -> io::Result<()> {
    use rustix::fs::CWD;
    use rustix::mount::{MoveMountFlags, OpenTreeFlags};
    let tree = match rustix::mount::open_tree(
        CWD,
        from,
        OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC,
    ) {
        Ok(tree) => tree,
        Err(rustix::io::Errno::NOSYS) => return bind_protected(from, target),
        Err(e) => {
            return Err(rustix_error(
                e,
                format!("cloning the mount at {}", from.display()),
            ));
        }
    };
    rustix::mount::move_mount(
        &tree,
        "",
        dir,
        "",
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH,
    )
    .map_err(|e| {
        rustix_error(
            e,
            format!("bind-mounting {} at {}", from.display(), target.display()),
        )
    })
}

/// The read-only bind at a staging point next to `src`, handed to `attach` (which binds the
/// target from it), and the staging point removed again whatever `attach` did.
fn with_staged_bind(src: &Path, attach: impl FnOnce(&Path) -> io::Result<()>) -> io::Result<()> {
    // A bind mount ignores MS_RDONLY and friends on creation; only a remount applies them,
    // and a remount does not propagate. Under the chart's Bidirectional pods directory a
    // bind straight to the target would reach the node (where kubelet and the runtime see
    // it) writable. So the read-only bind is made first at a staging point next to the
    // source, and the target is bound from it: a bind copies the flags of the mount it is
    // made from, and so does every copy propagation makes of it.
    let staging = src.with_file_name(BIND_STAGING);
    let _ = nix::mount::umount2(&staging, MntFlags::MNT_DETACH);
    match fs::create_dir(&staging) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => {
            return Err(io::Error::new(
                e.kind(),
                format!("creating {}: {e}", staging.display()),
            ));
        }
    }
    let bound = bind_protected(src, &staging).and_then(|()| attach(&staging));
    let _ = nix::mount::umount2(&staging, MntFlags::MNT_DETACH);
    let _ = fs::remove_dir(&staging);
    bound
}
