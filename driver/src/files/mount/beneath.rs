//! Paths below a root reached by descriptor, refusing a symbolic link in any component, so a
//! link planted after the callers' checks cannot take an operation elsewhere.

use std::fs;
use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;

use super::errors::{invalid_input, rustix_error};

/// Opens the directory `path`, at or below `root`, as an `O_PATH` descriptor, refusing a
/// symbolic link in any component below `root` (the last one included) and any way out of it
/// (`..`, absolute names): `openat2` with RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
/// RESOLVE_NO_MAGICLINKS, or on kernels before 5.6 a walk one component at a time with
/// O_NOFOLLOW. Links at or above `root` itself (a relocated kubelet directory) are the
/// operator's and are followed.
pub fn open_beneath(root: &Path, path: &Path) -> io::Result<OwnedFd> {
    use rustix::fs::{Mode, OFlags, ResolveFlags};
    let rel = path.strip_prefix(root).map_err(|_| {
        invalid_input(format!(
            "{} is not below {}",
            path.display(),
            root.display()
        ))
    })?;
    let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let base = rustix::fs::open(
        root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| rustix_error(e, format!("opening {}", root.display())))?;
    if rel.as_os_str().is_empty() {
        return Ok(base);
    }
    let refused = |e: rustix::io::Errno| {
        // With O_NOFOLLOW a link as the last component is opened as the link, which is then
        // not a directory.
        let link_at_end = e == rustix::io::Errno::NOTDIR
            && fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
        let what = if e == rustix::io::Errno::LOOP || e == rustix::io::Errno::XDEV || link_at_end {
            format!(
                "{}: a component below {} is a symbolic link or leaves it; refusing to follow it",
                path.display(),
                root.display()
            )
        } else {
            format!("opening {} below {}", path.display(), root.display())
        };
        rustix_error(e, what)
    };
    match rustix::fs::openat2(
        &base,
        rel,
        flags,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
    ) {
        Ok(fd) => Ok(fd),
        Err(rustix::io::Errno::NOSYS) => {
            let mut dir = base;
            for component in rel.components() {
                let std::path::Component::Normal(name) = component else {
                    return Err(invalid_input(format!(
                        "{} has a component that leaves {}",
                        path.display(),
                        root.display()
                    )));
                };
                // A link, with O_NOFOLLOW and O_DIRECTORY, fails (ENOTDIR or ELOOP).
                dir = rustix::fs::openat(&dir, name, flags, Mode::empty()).map_err(refused)?;
            }
            Ok(dir)
        }
        Err(e) => Err(refused(e)),
    }
}

/// The parent directory of `target`, opened by [`open_beneath`].
pub(super) fn open_parent_beneath(root: &Path, target: &Path) -> io::Result<OwnedFd> {
    let parent = target
        .parent()
        .ok_or_else(|| invalid_input(format!("{} has no parent", target.display())))?;
    open_beneath(root, parent)
}

/// Creates the directory `target` (mode `mode`) in its parent opened by [`open_beneath`], so
/// it is made exactly where the checks looked, never through a link planted since.
pub(crate) fn create_dir_beneath(root: &Path, target: &Path, mode: u32) -> io::Result<()> {
    let parent = open_parent_beneath(root, target)?;
    let name = target
        .file_name()
        .ok_or_else(|| invalid_input(format!("{} has no file name", target.display())))?;
    rustix::fs::mkdirat(&parent, name, rustix::fs::Mode::from_raw_mode(mode))
        .map_err(|e| rustix_error(e, format!("creating {}", target.display())))
}
