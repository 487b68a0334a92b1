//! tmpfs and read-only bind mounts, plus a reader for the kernel's mount table.
//!
//! Key material lives on a per-volume tmpfs so it never touches a disk; the pod sees that tmpfs
//! through a read-only bind mount so it cannot tamper with what the driver renews. [`DirMounter`]
//! imitates both with plain directories and symlinks for demos that cannot run as root.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt::Debug;
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};

/// One line of `/proc/self/mountinfo`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountInfo {
    pub mount_id: u32,
    pub parent_id: u32,
    /// The directory of the file system that is mounted here ("/" unless a bind of a subtree).
    pub root: String,
    pub mount_point: PathBuf,
    /// Per-mount options, e.g. "ro,nosuid,nodev,noexec,relatime".
    pub options: String,
    pub fs_type: String,
    pub source: String,
    /// Per-superblock options, e.g. "rw,size=1024k,mode=750".
    pub super_options: String,
}

impl MountInfo {
    /// Whether `opt` (a whole option such as "nodev" or "mode=750") appears in the per-mount or the
    /// per-superblock options.
    pub fn has_option(&self, opt: &str) -> bool {
        self.options
            .split(',')
            .chain(self.super_options.split(','))
            .any(|o| o == opt)
    }
}

/// Parses `/proc/self/mountinfo` text (see proc(5)).
///
/// Octal escapes such as `\040` (space) are decoded; the optional fields between the mount options
/// and the " - " separator are skipped. Lines that do not have the expected shape are skipped too,
/// so one odd entry cannot hide the rest of the table.
pub fn parse_mountinfo(text: &str) -> Vec<MountInfo> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<MountInfo> {
    // Fields are separated by single spaces; the kernel escapes spaces inside fields, so an empty
    // field (e.g. an empty source) must be kept rather than collapsed.
    let fields: Vec<&str> = line.split(' ').collect();
    if fields.len() < 8 {
        return None;
    }
    let sep = 6 + fields[6..].iter().position(|f| *f == "-")?;
    let after = &fields[sep + 1..];
    if after.len() < 2 {
        return None;
    }
    Some(MountInfo {
        mount_id: fields[0].parse().ok()?,
        parent_id: fields[1].parse().ok()?,
        root: unescape_lossy(fields[3]),
        mount_point: PathBuf::from(OsString::from_vec(unescape(fields[4]))),
        options: fields[5].to_owned(),
        fs_type: unescape_lossy(after[0]),
        source: unescape_lossy(after[1]),
        super_options: after.get(2).map(|s| unescape_lossy(s)).unwrap_or_default(),
    })
}

/// Decodes the kernel's `\ooo` escapes (used for space, tab, newline and backslash).
fn unescape(field: &str) -> Vec<u8> {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && let Some(digits) = bytes.get(i + 1..i + 4)
            && digits.iter().all(|d| (b'0'..=b'7').contains(d))
        {
            let value = digits
                .iter()
                .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
            // "\777" does not fit a byte; the kernel never writes it, so keep it literally.
            if let Ok(byte) = u8::try_from(value) {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

fn unescape_lossy(field: &str) -> String {
    String::from_utf8_lossy(&unescape(field)).into_owned()
}

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
        open_parent_beneath(root, target)?;
        self.bind_read_only(src, target)
    }
    /// [`Mounter::unmount`] of a `target` below `root`, resolved like
    /// [`Mounter::bind_read_only_beneath`] (the kernel's is detached by descriptor, and gone
    /// when the call returns); Ok(()) if it does not exist or is not mounted.
    fn unmount_beneath(&self, root: &Path, target: &Path) -> io::Result<()> {
        match open_parent_beneath(root, target) {
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

/// Real mounts through mount(2) and umount(2). Needs CAP_SYS_ADMIN.
#[derive(Clone, Copy, Debug, Default)]
pub struct KernelMounter;

const PROTECTIVE_FLAGS: MsFlags = MsFlags::MS_NODEV
    .union(MsFlags::MS_NOSUID)
    .union(MsFlags::MS_NOEXEC);

/// Keeps the errno's kind (callers match on it) while saying which operation on which path failed.
fn errno_error(errno: Errno, what: String) -> io::Error {
    io::Error::new(io::Error::from(errno).kind(), format!("{what}: {errno}"))
}

fn invalid_input(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

fn check_tmpfs_args(path: &Path, source: &str, size_bytes: u64, mode: u32) -> io::Result<()> {
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

/// Where [`KernelMounter::bind_read_only`] makes its read-only bind before the target's: a
/// sibling of the source, so on the same (memory-backed) filesystem and never in the pod's view.
const BIND_STAGING: &str = ".bind-staging";

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
fn open_parent_beneath(root: &Path, target: &Path) -> io::Result<OwnedFd> {
    let parent = target
        .parent()
        .ok_or_else(|| invalid_input(format!("{} has no parent", target.display())))?;
    open_beneath(root, parent)
}

/// Creates the directory `target` (mode `mode`) in its parent opened by [`open_beneath`], so
/// it is made exactly where the checks looked, never through a link planted since.
pub fn create_dir_beneath(root: &Path, target: &Path, mode: u32) -> io::Result<()> {
    let parent = open_parent_beneath(root, target)?;
    let name = target
        .file_name()
        .ok_or_else(|| invalid_input(format!("{} has no file name", target.display())))?;
    rustix::fs::mkdirat(&parent, name, rustix::fs::Mode::from_raw_mode(mode))
        .map_err(|e| rustix_error(e, format!("creating {}", target.display())))
}

fn rustix_error(e: rustix::io::Errno, what: String) -> io::Error {
    errno_error(Errno::from_raw(e.raw_os_error()), what)
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

/// A stand-in for [`KernelMounter`] for demos without root. It gives none of the protection of
/// real mounts: a "tmpfs" is a plain directory (so keys land on disk, no size limit), and a
/// "read-only bind" is a symlink from the target to the source (so it is writable). The fake
/// mounts are remembered in memory only, for [`Mounter::mounts`] and [`Mounter::is_mounted`].
#[derive(Debug, Default)]
pub struct DirMounter {
    state: Mutex<DirState>,
}

#[derive(Debug, Default)]
struct DirState {
    next_id: u32,
    mounts: BTreeMap<PathBuf, FakeMount>,
}

#[derive(Debug)]
struct FakeMount {
    id: u32,
    kind: FakeKind,
}

#[derive(Debug)]
enum FakeKind {
    Tmpfs {
        source: String,
        size_bytes: u64,
        mode: u32,
    },
    Bind {
        src: PathBuf,
    },
}

impl DirMounter {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, DirState> {
        // The state is a plain map updated in single statements, so it is consistent even if a
        // panic poisoned the lock.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The identity of a fake mount point: absolute, with the parent resolved but the last component
/// kept as is, because a fake bind turns that last component into a symlink to somewhere else.
fn record_key(path: &Path) -> io::Result<PathBuf> {
    let absolute = std::path::absolute(path)?;
    match (absolute.parent(), absolute.file_name()) {
        (Some(parent), Some(name)) => Ok(fs::canonicalize(parent)
            .unwrap_or_else(|_| parent.to_path_buf())
            .join(name)),
        _ => Ok(absolute),
    }
}

fn already_mounted(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::AlreadyExists,
        format!(
            "{} is already a (fake) mount point; the directory mounter cannot stack mounts",
            path.display()
        ),
    )
}

fn context(e: io::Error, what: String) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// What the kernel does to a tmpfs's files on unmount: they are gone.
fn clear_dir(dir: &Path) -> io::Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            fs::remove_dir_all(entry.path())?;
        } else {
            fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

impl Mounter for DirMounter {
    fn mount_tmpfs(&self, path: &Path, source: &str, size_bytes: u64, mode: u32) -> io::Result<()> {
        check_tmpfs_args(path, source, size_bytes, mode)?;
        let key = record_key(path)?;
        let mut state = self.lock();
        if state.mounts.contains_key(&key) {
            return Err(already_mounted(path));
        }
        crate::files::fsutil::create_dir_mode(path, mode)
            .map_err(|e| context(e, format!("creating directory {}", path.display())))?;
        state.next_id += 1;
        let id = state.next_id;
        state.mounts.insert(
            key,
            FakeMount {
                id,
                kind: FakeKind::Tmpfs {
                    source: source.to_owned(),
                    size_bytes,
                    mode,
                },
            },
        );
        Ok(())
    }

    fn bind_read_only(&self, src: &Path, target: &Path) -> io::Result<()> {
        let src = fs::canonicalize(src)
            .map_err(|e| context(e, format!("resolving bind source {}", src.display())))?;
        if !src.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotADirectory,
                format!("bind source {} is not a directory", src.display()),
            ));
        }
        let key = record_key(target)?;
        let mut state = self.lock();
        if state.mounts.contains_key(&key) {
            return Err(already_mounted(target));
        }
        // remove_dir only removes an empty directory: a kernel bind would merely hide existing
        // contents, and a fake must not destroy them instead.
        match fs::remove_dir(target) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(context(
                    e,
                    format!(
                        "replacing bind target {} with a symlink (it must be an empty directory)",
                        target.display()
                    ),
                ));
            }
        }
        std::os::unix::fs::symlink(&src, target).map_err(|e| {
            context(
                e,
                format!("linking {} to {}", target.display(), src.display()),
            )
        })?;
        state.next_id += 1;
        let id = state.next_id;
        state.mounts.insert(
            key,
            FakeMount {
                id,
                kind: FakeKind::Bind { src },
            },
        );
        Ok(())
    }

    fn unmount(&self, path: &Path) -> io::Result<()> {
        let key = record_key(path)?;
        let mut state = self.lock();
        let Some(mount) = state.mounts.get(&key) else {
            return Ok(());
        };
        match &mount.kind {
            FakeKind::Tmpfs { .. } => clear_dir(path)
                .map_err(|e| context(e, format!("clearing fake tmpfs {}", path.display())))?,
            FakeKind::Bind { .. } => match fs::symlink_metadata(path) {
                Ok(meta) if meta.file_type().is_symlink() => fs::remove_file(path)
                    .map_err(|e| context(e, format!("removing fake bind {}", path.display())))?,
                Ok(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "fake bind mount point {} is no longer a symlink; leaving it alone",
                            path.display()
                        ),
                    ));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(context(e, format!("inspecting {}", path.display()))),
            },
        }
        state.mounts.remove(&key);
        Ok(())
    }

    fn mounts(&self) -> io::Result<Vec<MountInfo>> {
        let state = self.lock();
        let tmpfs_entry = |kind: &FakeKind| match kind {
            FakeKind::Tmpfs {
                source,
                size_bytes,
                mode,
            } => Some((
                "tmpfs".to_owned(),
                source.clone(),
                format!("rw,size={size_bytes},mode={mode:o}"),
            )),
            FakeKind::Bind { .. } => None,
        };
        Ok(state
            .mounts
            .iter()
            .map(|(point, mount)| {
                let (rw, root, (fs_type, source, super_options)) = match &mount.kind {
                    FakeKind::Tmpfs { .. } => (
                        "rw",
                        "/".to_owned(),
                        tmpfs_entry(&mount.kind).unwrap_or_default(),
                    ),
                    // Like the kernel, a bind of (a directory inside) one of our tmpfs mounts
                    // reports that tmpfs's source, with the directory as the root.
                    FakeKind::Bind { src } => state
                        .mounts
                        .iter()
                        .filter(|(tmpfs_point, _)| src.starts_with(tmpfs_point))
                        .max_by_key(|(tmpfs_point, _)| tmpfs_point.components().count())
                        .and_then(|(tmpfs_point, m)| {
                            let rel = src.strip_prefix(tmpfs_point).ok()?;
                            let root = Path::new("/").join(rel).display().to_string();
                            Some(("ro", root, tmpfs_entry(&m.kind)?))
                        })
                        .unwrap_or_else(|| {
                            let outside =
                                ("none".to_owned(), src.display().to_string(), String::new());
                            ("ro", "/".to_owned(), outside)
                        }),
                };
                MountInfo {
                    mount_id: mount.id,
                    parent_id: 0,
                    root,
                    mount_point: point.clone(),
                    options: format!("{rw},nosuid,nodev,noexec"),
                    fs_type,
                    source,
                    super_options,
                }
            })
            .collect())
    }

    fn is_mounted(&self, path: &Path) -> io::Result<bool> {
        let key = record_key(path)?;
        Ok(self.lock().mounts.contains_key(&key))
    }

    fn mount_at(&self, path: &Path) -> io::Result<Option<MountInfo>> {
        // A fake bind is a symlink at the target, recorded under the link's own name.
        let key = record_key(path)?;
        Ok(self.mounts()?.into_iter().find(|m| m.mount_point == key))
    }

    fn memory_backed(&self) -> bool {
        false
    }
}

/// The directory below `<data-root>/volumes` where [`probe_tmpfs`] mounts its throwaway tmpfs.
/// Its name does not start with `v-`, so the store never takes it for a volume; it is fixed (not
/// per process) so that a probe killed half-way is cleaned up by the next one.
pub const PROBE_DIR: &str = ".tmpfs-probe";

/// The step of [`probe_tmpfs`] that failed.
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

/// The mount(2) call behind every tmpfs certvol makes (volumes and the probe), so the probe
/// tests exactly what a publish will do. Arguments are checked by the callers.
fn mount_tmpfs_raw(path: &Path, source: &str, size_bytes: u64, mode: u32) -> nix::Result<()> {
    let data = format!("size={size_bytes},mode={mode:o}");
    nix::mount::mount(
        Some(source),
        path,
        Some("tmpfs"),
        PROTECTIVE_FLAGS,
        Some(data.as_str()),
    )
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
pub enum Probed {
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
pub fn probe_tmpfs(data_root: &Path) -> Result<Probed, ProbeError> {
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
/// `certvol node` probes its data root instead ([`probe_tmpfs`]).
pub fn can_mount_tmpfs() -> bool {
    tempfile::Builder::new()
        .prefix("certvol-probe")
        .tempdir()
        .is_ok_and(|dir| matches!(probe_tmpfs(dir.path()), Ok(Probed::Mounted)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// Mount tests need root; everywhere else they say so and pass vacuously.
    fn root_or_skip(test: &str) -> bool {
        if nix::unistd::geteuid().is_root() {
            true
        } else {
            println!("skipping {test}: needs root to mount");
            false
        }
    }

    /// Unmounts on drop, so a failing assertion cannot leak a mount into the host's table.
    struct Unmount(PathBuf);

    impl Drop for Unmount {
        fn drop(&mut self) {
            if KernelMounter.unmount(&self.0).is_err() {
                let _ = nix::mount::umount2(&self.0, MntFlags::MNT_DETACH);
            }
        }
    }

    fn entry_for(path: &Path) -> MountInfo {
        let canonical = fs::canonicalize(path).unwrap();
        KernelMounter
            .mounts()
            .unwrap()
            .into_iter()
            .rev() // the most recent mount on a point is the visible one
            .find(|m| m.mount_point == canonical)
            .unwrap_or_else(|| panic!("{} not in mountinfo", canonical.display()))
    }

    #[test]
    fn parses_mountinfo_with_escapes_and_optional_fields() {
        let text = "\
22 27 0:21 / /proc rw,relatime - proc proc rw
36 35 98:0 /mnt1 /mnt/my\\040dir rw,noatime master:1 shared:7 - ext3 /dev/root rw,errors=continue
garbage line
40 36 0:50 / /var/lib/kubelet/pods/abc/volumes/x ro,nosuid,nodev,noexec,relatime shared:9 - tmpfs certvol\\134vol rw,size=1024k,mode=750
41 36 0:51 / /no-separator rw shared:9 tmpfs src rw
x 36 0:51 / /bad-id rw - tmpfs src rw
";
        let mounts = parse_mountinfo(text);
        assert_eq!(mounts.len(), 3, "malformed lines are skipped: {mounts:?}");
        assert_eq!(
            mounts[1],
            MountInfo {
                mount_id: 36,
                parent_id: 35,
                root: "/mnt1".into(),
                mount_point: PathBuf::from("/mnt/my dir"),
                options: "rw,noatime".into(),
                fs_type: "ext3".into(),
                source: "/dev/root".into(),
                super_options: "rw,errors=continue".into(),
            }
        );
        let tmpfs = &mounts[2];
        assert_eq!(tmpfs.source, "certvol\\vol");
        assert_eq!(tmpfs.fs_type, "tmpfs");
        for opt in ["ro", "nosuid", "nodev", "noexec", "size=1024k", "mode=750"] {
            assert!(tmpfs.has_option(opt), "missing {opt}");
        }
        assert!(!tmpfs.has_option("rw,size"));
        assert!(
            !tmpfs.has_option("size"),
            "options match whole, not by prefix"
        );
    }

    #[test]
    fn rejects_unlimited_or_odd_tmpfs_arguments() {
        let dir = tempfile::tempdir().unwrap();
        for (source, size, mode) in [
            ("certvol", 0, 0o750),
            ("certvol", 1, 0o10000),
            ("a b", 1, 0o750),
            ("", 1, 0o750),
        ] {
            let err = DirMounter::new()
                .mount_tmpfs(dir.path(), source, size, mode)
                .unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
            let err = KernelMounter
                .mount_tmpfs(dir.path(), source, size, mode)
                .unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        }
    }

    #[test]
    fn tmpfs_has_protective_options_size_and_mode() {
        if !root_or_skip("tmpfs_has_protective_options_size_and_mode") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let point = dir.path().join("vol");
        fs::create_dir(&point).unwrap();
        let source = format!("certvol-test-{}", std::process::id());
        KernelMounter
            .mount_tmpfs(&point, &source, 64 * 1024, 0o750)
            .unwrap();
        let _guard = Unmount(point.clone());

        assert!(KernelMounter.is_mounted(&point).unwrap());
        let entry = entry_for(&point);
        assert_eq!(entry.fs_type, "tmpfs");
        assert_eq!(entry.source, source);
        for opt in ["rw", "nodev", "nosuid", "noexec", "size=64k", "mode=750"] {
            assert!(entry.has_option(opt), "missing {opt} in {entry:?}");
        }
        let mode = fs::metadata(&point).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o750);

        // The size limit is real: writing past it fails with ENOSPC.
        let err = fs::write(point.join("big"), vec![0u8; 128 * 1024]).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOSPC));
    }

    #[test]
    fn unmount_is_idempotent_and_discards_contents() {
        if !root_or_skip("unmount_is_idempotent_and_discards_contents") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let point = dir.path().join("vol");
        fs::create_dir(&point).unwrap();
        KernelMounter
            .mount_tmpfs(&point, "certvol-test", 64 * 1024, 0o700)
            .unwrap();
        let _guard = Unmount(point.clone());
        fs::write(point.join("key.pem"), b"secret").unwrap();

        KernelMounter.unmount(&point).unwrap();
        assert!(!KernelMounter.is_mounted(&point).unwrap());
        assert!(!point.join("key.pem").exists(), "tmpfs contents are gone");
        KernelMounter.unmount(&point).unwrap();
        KernelMounter.unmount(&dir.path().join("missing")).unwrap();
        assert!(
            !KernelMounter
                .is_mounted(&dir.path().join("missing"))
                .unwrap()
        );
    }

    #[test]
    fn read_only_bind_blocks_writes_but_shows_source_changes() {
        if !root_or_skip("read_only_bind_blocks_writes_but_shows_source_changes") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        let target = dir.path().join("target");
        fs::create_dir(&src).unwrap();
        fs::create_dir(&target).unwrap();
        fs::write(src.join("tls.crt"), b"one").unwrap();

        KernelMounter.bind_read_only(&src, &target).unwrap();
        let _guard = Unmount(target.clone());

        assert!(KernelMounter.is_mounted(&target).unwrap());
        let entry = entry_for(&target);
        for opt in ["ro", "nodev", "nosuid", "noexec"] {
            assert!(entry.options.split(',').any(|o| o == opt), "{entry:?}");
        }
        assert_eq!(fs::read(target.join("tls.crt")).unwrap(), b"one");
        let err = fs::write(target.join("tls.crt"), b"tampered").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EROFS));
        let err = fs::write(target.join("new"), b"x").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EROFS));

        fs::write(src.join("tls.crt"), b"two").unwrap();
        fs::write(src.join("ca.crt"), b"ca").unwrap();
        assert_eq!(fs::read(target.join("tls.crt")).unwrap(), b"two");
        assert_eq!(fs::read(target.join("ca.crt")).unwrap(), b"ca");

        KernelMounter.unmount(&target).unwrap();
        assert!(!KernelMounter.is_mounted(&target).unwrap());
        assert_eq!(fs::read_dir(&target).unwrap().count(), 0);
        KernelMounter.unmount(&target).unwrap();
    }

    /// A link planted at a mount point after the callers' checks must not carry an unmount to
    /// the mount it leads to (umount2 without UMOUNT_NOFOLLOW follows it).
    #[test]
    fn unmount_through_a_link_leaves_the_mount_it_leads_to() {
        if !root_or_skip("unmount_through_a_link_leaves_the_mount_it_leads_to") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        fs::create_dir(&real).unwrap();
        KernelMounter
            .mount_tmpfs(&real, "foreign-test", 64 * 1024, 0o755)
            .unwrap();
        let _guard = Unmount(real.clone());
        fs::write(real.join("data"), b"keep").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();

        KernelMounter.unmount(&link).unwrap();
        assert!(KernelMounter.is_mounted(&real).unwrap(), "still mounted");
        assert_eq!(fs::read(real.join("data")).unwrap(), b"keep");
    }

    #[test]
    fn mount_at_names_the_topmost_mount_and_never_follows_a_link() {
        if !root_or_skip("mount_at_names_the_topmost_mount_and_never_follows_a_link") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        fs::create_dir(&real).unwrap();
        assert_eq!(KernelMounter.mount_at(&real).unwrap(), None);
        assert_eq!(
            KernelMounter.mount_at(&dir.path().join("missing")).unwrap(),
            None
        );
        KernelMounter
            .mount_tmpfs(&real, "below-test", 64 * 1024, 0o755)
            .unwrap();
        let _below = Unmount(real.clone());
        KernelMounter
            .mount_tmpfs(&real, "above-test", 64 * 1024, 0o755)
            .unwrap();
        let _above = Unmount(real.clone());
        let top = KernelMounter.mount_at(&real).unwrap().unwrap();
        assert_eq!(
            (top.fs_type.as_str(), top.source.as_str()),
            ("tmpfs", "above-test")
        );
        assert_eq!(top.root, "/");

        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        assert_eq!(KernelMounter.mount_at(&link).unwrap(), None);
    }

    /// The target bind is attached to the directory opened without following a link, so a link
    /// at the target (planted after the callers' checks) cannot move the bind elsewhere; mount(2)
    /// by path followed it.
    #[test]
    fn bind_onto_a_link_mounts_nothing_where_it_leads() {
        if !root_or_skip("bind_onto_a_link_mounts_nothing_where_it_leads") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        let elsewhere = dir.path().join("elsewhere");
        fs::create_dir(&src).unwrap();
        fs::create_dir(&elsewhere).unwrap();
        fs::write(src.join("tls.crt"), b"cert").unwrap();
        let link = dir.path().join("target");
        std::os::unix::fs::symlink(&elsewhere, &link).unwrap();
        let _guard = Unmount(elsewhere.clone());

        assert!(KernelMounter.bind_read_only(&src, &link).is_err());
        assert!(!KernelMounter.is_mounted(&elsewhere).unwrap());
        assert_eq!(fs::read_dir(&elsewhere).unwrap().count(), 0);
        assert!(
            !src.with_file_name(BIND_STAGING).exists(),
            "the staging point is cleaned up"
        );
    }

    #[test]
    fn open_beneath_refuses_links_and_escapes_in_any_component() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("pods");
        let outside = dir.path().join("outside");
        fs::create_dir_all(root.join("uid/volumes/csi/tls")).unwrap();
        fs::create_dir_all(outside.join("tls")).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("uid/volumes/link")).unwrap();
        // A link at or above the root is the operator's: followed.
        let alias = dir.path().join("alias");
        std::os::unix::fs::symlink(&root, &alias).unwrap();

        assert!(open_beneath(&root, &root.join("uid/volumes/csi/tls")).is_ok());
        assert!(open_beneath(&alias, &alias.join("uid/volumes/csi")).is_ok());
        for (path, words) in [
            (root.join("uid/volumes/link/tls"), "symbolic link"),
            (root.join("uid/volumes/link"), "symbolic link"),
            (root.join("uid/../../outside/tls"), "leaves it"),
        ] {
            let err = open_beneath(&root, &path).unwrap_err();
            assert!(err.to_string().contains(words), "{}: {err}", path.display());
        }
        assert_eq!(
            open_beneath(&root, &root.join("uid/missing"))
                .unwrap_err()
                .kind(),
            io::ErrorKind::NotFound
        );
        assert!(open_beneath(&root, &outside).is_err(), "not below the root");

        // The directory is made where the checks looked, never through the link.
        assert!(create_dir_beneath(&root, &root.join("uid/volumes/link/new"), 0o750).is_err());
        assert!(!outside.join("new").exists());
        create_dir_beneath(&root, &root.join("uid/volumes/csi/mount"), 0o750).unwrap();
        assert!(root.join("uid/volumes/csi/mount").is_dir());
    }

    /// A link planted in a directory between the pods directory and the target, after the
    /// callers' checks: the bind and the unmount act below the root or not at all.
    #[test]
    fn bind_and_unmount_beneath_never_pass_a_link_above_the_target() {
        if !root_or_skip("bind_and_unmount_beneath_never_pass_a_link_above_the_target") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("pods");
        let src = dir.path().join("src");
        let outside = dir.path().join("outside");
        fs::create_dir_all(root.join("uid/volumes/csi/mount")).unwrap();
        fs::create_dir_all(outside.join("mount")).unwrap();
        fs::create_dir(&src).unwrap();
        fs::write(src.join("tls.crt"), b"cert").unwrap();
        std::os::unix::fs::symlink(&outside, root.join("uid/link")).unwrap();
        let _outside = Unmount(outside.join("mount"));

        let through = root.join("uid/link/mount");
        assert!(
            KernelMounter
                .bind_read_only_beneath(&src, &root, &through)
                .is_err()
        );
        assert!(!KernelMounter.is_mounted(&outside.join("mount")).unwrap());

        // A mount outside, reached through the link, is not unmounted.
        KernelMounter
            .mount_tmpfs(&outside.join("mount"), "foreign-test", 64 * 1024, 0o755)
            .unwrap();
        assert!(KernelMounter.unmount_beneath(&root, &through).is_err());
        assert!(KernelMounter.is_mounted(&outside.join("mount")).unwrap());

        // The real target: bound read-only, then unmounted by descriptor.
        let target = root.join("uid/volumes/csi/mount");
        let _target = Unmount(target.clone());
        KernelMounter
            .bind_read_only_beneath(&src, &root, &target)
            .unwrap();
        assert_eq!(fs::read(target.join("tls.crt")).unwrap(), b"cert");
        assert!(fs::write(target.join("x"), b"").is_err(), "read-only");
        KernelMounter.unmount_beneath(&root, &target).unwrap();
        assert!(!KernelMounter.is_mounted(&target).unwrap());
        // Not mounted any more, or gone: both fine.
        KernelMounter.unmount_beneath(&root, &target).unwrap();
        KernelMounter
            .unmount_beneath(&root, &root.join("uid/gone"))
            .unwrap();
    }

    #[test]
    fn bind_of_missing_source_fails_and_leaves_nothing_mounted() {
        if !root_or_skip("bind_of_missing_source_fails_and_leaves_nothing_mounted") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        fs::create_dir(&target).unwrap();
        let err = KernelMounter
            .bind_read_only(&dir.path().join("missing"), &target)
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(err.to_string().contains("missing"), "{err}");
        assert!(!KernelMounter.is_mounted(&target).unwrap());
    }

    #[test]
    fn can_mount_tmpfs_leaves_no_mount_behind() {
        let can = can_mount_tmpfs();
        // Other tests mount concurrently, so look for the probe's own source rather than count.
        let leftovers: Vec<_> = KernelMounter
            .mounts()
            .unwrap()
            .into_iter()
            .filter(|m| m.source == "certvol-probe")
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        if nix::unistd::geteuid().is_root() {
            // Every other mount test in this module relies on root being able to mount.
            assert!(can, "root could not mount a tmpfs");
        }
    }

    #[test]
    fn dir_mounter_imitates_tmpfs_and_bind() {
        let dir = tempfile::tempdir().unwrap();
        let vol = dir.path().join("vol");
        let target = dir.path().join("target");
        fs::create_dir(&target).unwrap();
        let m = DirMounter::new();
        assert!(!m.memory_backed());
        assert!(KernelMounter.memory_backed());

        m.mount_tmpfs(&vol, "certvol-demo", 1024, 0o750).unwrap();
        assert_eq!(
            fs::metadata(&vol).unwrap().permissions().mode() & 0o7777,
            0o750
        );
        assert!(m.is_mounted(&vol).unwrap());
        let err = m
            .mount_tmpfs(&vol, "certvol-demo", 1024, 0o750)
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        fs::write(vol.join("tls.crt"), b"cert").unwrap();

        m.bind_read_only(&vol, &target).unwrap();
        assert!(m.is_mounted(&target).unwrap());
        assert!(
            fs::symlink_metadata(&target)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(fs::read(target.join("tls.crt")).unwrap(), b"cert");

        let mounts = m.mounts().unwrap();
        assert_eq!(mounts.len(), 2);
        for entry in &mounts {
            assert_eq!(entry.source, "certvol-demo", "{entry:?}");
            assert!(entry.has_option("size=1024") && entry.has_option("nodev"));
        }
        let bind = mounts.iter().find(|e| e.has_option("ro")).unwrap();
        assert_eq!(bind.mount_point, record_key(&target).unwrap());
        assert_eq!(bind.root, "/");

        // A bind of a directory inside the fake tmpfs still names that tmpfs, as the kernel does.
        let sub_target = dir.path().join("sub-target");
        fs::create_dir(vol.join("files")).unwrap();
        fs::create_dir(&sub_target).unwrap();
        m.bind_read_only(&vol.join("files"), &sub_target).unwrap();
        let sub = m
            .mounts()
            .unwrap()
            .into_iter()
            .find(|e| e.mount_point == record_key(&sub_target).unwrap())
            .unwrap();
        assert_eq!(
            (sub.root.as_str(), sub.source.as_str()),
            ("/files", "certvol-demo")
        );
        m.unmount(&sub_target).unwrap();

        m.unmount(&target).unwrap();
        assert!(!target.exists(), "the fake bind's symlink is removed");
        assert!(!m.is_mounted(&target).unwrap());
        m.unmount(&target).unwrap();

        m.unmount(&vol).unwrap();
        assert!(vol.is_dir());
        assert_eq!(fs::read_dir(&vol).unwrap().count(), 0, "contents discarded");
        assert!(!m.is_mounted(&vol).unwrap());
        assert!(m.mounts().unwrap().is_empty());
    }

    #[test]
    fn dir_mounter_refuses_to_bind_over_a_non_empty_directory() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        let target = dir.path().join("target");
        fs::create_dir(&src).unwrap();
        fs::create_dir(&target).unwrap();
        fs::write(target.join("keep"), b"data").unwrap();
        let m = DirMounter::new();
        assert!(m.bind_read_only(&src, &target).is_err());
        assert_eq!(fs::read(target.join("keep")).unwrap(), b"data");
        assert!(!m.is_mounted(&target).unwrap());
    }

    /// Whether anything is mounted at or below `dir` (canonical), per mountinfo.
    fn mounted_below(dir: &Path) -> Vec<PathBuf> {
        let canonical = fs::canonicalize(dir).unwrap();
        KernelMounter
            .mounts()
            .unwrap()
            .into_iter()
            .map(|m| m.mount_point)
            .filter(|p| p.starts_with(&canonical))
            .collect()
    }

    #[test]
    fn probe_mounts_below_the_data_root_and_leaves_nothing_behind() {
        if !root_or_skip("probe_mounts_below_the_data_root_and_leaves_nothing_behind") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("data");
        assert!(matches!(probe_tmpfs(&root), Ok(Probed::Mounted)));
        let volumes = root.join("volumes");
        let mode = fs::metadata(&volumes).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o700, "created as the store creates it");
        assert_eq!(fs::read_dir(&volumes).unwrap().count(), 0);
        assert!(mounted_below(dir.path()).is_empty());

        // A probe killed while its tmpfs was mounted: the next probe cleans up after it.
        let stale = volumes.join(PROBE_DIR);
        fs::create_dir(&stale).unwrap();
        let _guard = Unmount(stale.clone());
        KernelMounter
            .mount_tmpfs(&stale, "certvol-probe", 4096, 0o700)
            .unwrap();
        assert!(matches!(probe_tmpfs(&root), Ok(Probed::Mounted)));
        assert!(!stale.exists());
        assert!(mounted_below(dir.path()).is_empty());
    }

    /// A data root that cannot hold volumes (a read-only one where `volumes` does not exist:
    /// `readOnlyRootFilesystem` without a hostPath at --data-root) is refused naming EROFS and
    /// the path; one that holds volumes from earlier runs and turned read-only is not (the node
    /// must come up and serve them), and says why the probe was skipped.
    #[test]
    fn probe_of_a_read_only_data_root_names_erofs_and_the_path() {
        if !root_or_skip("probe_of_a_read_only_data_root_names_erofs_and_the_path") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let ro = dir.path().join("ro");
        fs::create_dir(&ro).unwrap();
        fs::create_dir_all(ro.join("existing/volumes")).unwrap();
        fs::set_permissions(
            ro.join("existing/volumes"),
            fs::Permissions::from_mode(0o700),
        )
        .unwrap();
        // A bind of the directory, made read-only: what a read-only hostPath looks like.
        KernelMounter.bind_read_only(&ro, &ro).unwrap();
        let _guard = Unmount(ro.clone());

        // Not there yet: creating it fails.
        let fresh = ro.join("fresh");
        let err = probe_tmpfs(&fresh).unwrap_err();
        assert_eq!((err.step, err.errno), (ProbeStep::CreateDir, Errno::EROFS));
        let msg = err.to_string();
        assert!(
            msg.contains(&fresh.join("volumes").display().to_string()),
            "{msg}"
        );
        assert!(msg.contains("EROFS (Read-only file system)"), "{msg}");
        assert!(msg.contains("mount a writable directory"), "{msg}");
        assert!(msg.contains("--data-root"), "{msg}");
        assert!(!err.directories_would_work());

        // There already (a restart while the data root is read-only): skipped, with the reason.
        let existing = ro.join("existing");
        match probe_tmpfs(&existing) {
            Ok(Probed::Skipped(err)) => {
                assert_eq!(err.errno, Errno::EROFS);
                assert_eq!(err.path, existing.join("volumes").join(PROBE_DIR));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn probe_advice_fits_the_errno() {
        let rows = [
            (ProbeStep::Mount, Errno::EPERM, "CAP_SYS_ADMIN"),
            (ProbeStep::Mount, Errno::EPERM, "privileged"),
            (ProbeStep::Mount, Errno::EROFS, "read-only"),
            (ProbeStep::CreateDir, Errno::EROFS, "hostPath"),
            (
                ProbeStep::CreateDir,
                Errno::EACCES,
                "may not write to the data root",
            ),
            (
                ProbeStep::CreateDir,
                Errno::ENOENT,
                "existing, writable directory",
            ),
            (ProbeStep::CreateDir, Errno::ENOSPC, "full"),
            (ProbeStep::Mount, Errno::ENODEV, "no tmpfs"),
            (ProbeStep::Mount, Errno::EBUSY, "mount(2)"),
            (ProbeStep::CreateDir, Errno::ELOOP, "mkdir(2)"),
        ];
        for (step, errno, fragment) in rows {
            let advice = probe_advice(step, errno);
            assert!(advice.contains(fragment), "{step:?} {errno:?}: {advice}");
        }
        let err = ProbeError {
            step: ProbeStep::Mount,
            path: PathBuf::from("/var/lib/certvol/volumes/.tmpfs-probe"),
            errno: Errno::EPERM,
        };
        assert_eq!(
            err.to_string(),
            "mounting a tmpfs at /var/lib/certvol/volumes/.tmpfs-probe failed with EPERM (Operation not permitted): mounting needs root with CAP_SYS_ADMIN (in a pod: securityContext.privileged: true, as the Helm chart sets; a security module such as AppArmor or SELinux may also forbid mounts)"
        );
    }
}
