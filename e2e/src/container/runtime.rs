//! A minimal container runtime: what runc does for a Kubernetes container, reduced to what the
//! certvol DaemonSet's container depends on. It runs as the `certvol-runtime` binary so that the
//! namespace set-up happens in a single-threaded process (unshare(CLONE_NEWNS) and pivot_root
//! are unsafe after fork in a multi-threaded test process), then replaces itself with the
//! container's command: the process the harness signals is the driver itself.
//!
//! The container gets a fresh mount namespace whose root is a tmpfs holding only the image's
//! files (read-only binds of the host's libraries and the binary), `/proc`, `/dev` and `/sys`
//! (the pod is privileged), and the pod's volumes at their `mountPath` with the propagation the
//! pod spec declares. With `readOnlyRootFilesystem` the root is read-only, so `/tmp` is too,
//! exactly as in a cluster. The old root is detached, so nothing else of the node is visible.

use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use nix::fcntl::{OFlag, open};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, unshare};
use nix::sys::stat::Mode;
use serde::{Deserialize, Serialize};

/// How a volume's mounts propagate (a volumeMount's `mountPropagation`), as the CRI maps it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Propagation {
    /// `None` (the default): rprivate.
    Private,
    /// `HostToContainer`: rslave, node mounts appear in the container.
    HostToContainer,
    /// `Bidirectional`: rshared, the container's mounts appear on the node too.
    Bidirectional,
}

impl Propagation {
    pub fn from_pod_spec(value: Option<&str>) -> Result<Propagation, String> {
        match value {
            None | Some("None") => Ok(Propagation::Private),
            Some("HostToContainer") => Ok(Propagation::HostToContainer),
            Some("Bidirectional") => Ok(Propagation::Bidirectional),
            Some(other) => Err(format!("unknown mountPropagation {other:?}")),
        }
    }

    fn flags(self) -> MsFlags {
        MsFlags::MS_REC
            | match self {
                Propagation::Private => MsFlags::MS_PRIVATE,
                Propagation::HostToContainer => MsFlags::MS_SLAVE,
                Propagation::Bidirectional => MsFlags::MS_SHARED,
            }
    }
}

/// One bind mount into the container.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindMount {
    /// The path in the node's mount namespace.
    pub source: PathBuf,
    /// The path inside the container.
    pub destination: PathBuf,
    pub propagation: Propagation,
    pub read_only: bool,
}

/// What the image provides at a path: a host directory or file (bound read-only), or a
/// symbolic link.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ImageEntry {
    Bind { host: PathBuf, path: PathBuf },
    Symlink { target: PathBuf, path: PathBuf },
    Dir { path: PathBuf, mode: u32 },
}

/// Everything the runtime needs to start one container.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeSpec {
    /// An empty directory on the node that becomes the container's root (a tmpfs is mounted
    /// on it inside the container's namespace only).
    pub rootfs: PathBuf,
    pub image: Vec<ImageEntry>,
    pub mounts: Vec<BindMount>,
    pub read_only_root: bool,
    /// The command: entrypoint plus args, the first an absolute path inside the container.
    pub argv: Vec<String>,
    /// The complete environment (the image's, the pod spec's, and what kubelet injects).
    pub env: Vec<(String, String)>,
    /// The `cgroup.procs` file of the container's memory cgroup, joined before anything else.
    pub cgroup_procs: Option<PathBuf>,
}

impl RuntimeSpec {
    /// The root's propagation as containerd picks it: rshared if any volume is Bidirectional,
    /// else rslave (runc's default).
    fn root_propagation(&self) -> MsFlags {
        if self
            .mounts
            .iter()
            .any(|m| m.propagation == Propagation::Bidirectional)
        {
            MsFlags::MS_REC | MsFlags::MS_SHARED
        } else {
            MsFlags::MS_REC | MsFlags::MS_SLAVE
        }
    }
}

fn err(what: impl std::fmt::Display, e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("{what}: {e}"))
}

/// `path` (absolute, inside the container) below `root`, refusing `..`.
fn inside(root: &Path, path: &Path) -> io::Result<PathBuf> {
    let mut out = root.to_path_buf();
    for c in path.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(p) => out.push(p),
            _ => {
                return Err(err(
                    path.display(),
                    "container paths must be absolute, no ..",
                ));
            }
        }
    }
    Ok(out)
}

fn mkdirs(path: &Path, mode: u32) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
        .map_err(|e| err(format!("mkdir {}", path.display()), e))
}

fn bind(source: &Path, target: &Path, read_only: bool) -> io::Result<()> {
    mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| {
        err(
            format!("bind {} on {}", source.display(), target.display()),
            e,
        )
    })?;
    if read_only {
        remount_read_only(target)?;
    }
    Ok(())
}

fn remount_read_only(target: &Path) -> io::Result<()> {
    mount(
        None::<&str>,
        target,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
        None::<&str>,
    )
    .map_err(|e| err(format!("remount {} read-only", target.display()), e))
}

fn propagate(target: &Path, flags: MsFlags) -> io::Result<()> {
    mount(None::<&str>, target, None::<&str>, flags, None::<&str>)
        .map_err(|e| err(format!("set propagation of {}", target.display()), e))
}

/// A bind mount of a file needs a file to mount on; of a directory, a directory.
fn make_mount_point(source: &Path, target: &Path) -> io::Result<()> {
    let meta = fs::metadata(source).map_err(|e| err(source.display(), e))?;
    if meta.is_dir() {
        mkdirs(target, 0o755)
    } else {
        if let Some(parent) = target.parent() {
            mkdirs(parent, 0o755)?;
        }
        fs::write(target, b"").map_err(|e| err(target.display(), e))
    }
}

/// Sets up the container's namespace and execs its command; returns only on failure.
pub fn run(spec: &RuntimeSpec) -> io::Error {
    match enter(spec) {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

fn enter(spec: &RuntimeSpec) -> io::Result<std::convert::Infallible> {
    let root = &spec.rootfs;
    if let Some(procs) = &spec.cgroup_procs {
        fs::write(procs, std::process::id().to_string())
            .map_err(|e| err(format!("join cgroup {}", procs.display()), e))?;
    }
    unshare(CloneFlags::CLONE_NEWNS).map_err(|e| err("unshare(CLONE_NEWNS)", e))?;
    propagate(Path::new("/"), spec.root_propagation())?;

    // pivot_root refuses a new root whose parent mount is shared; a private self-bind of the
    // parent also keeps the root's tmpfs from propagating anywhere.
    let parent = root
        .parent()
        .ok_or_else(|| err(root.display(), "rootfs has no parent"))?;
    bind(parent, parent, false)?;
    propagate(parent, MsFlags::MS_PRIVATE)?;
    mount(
        Some("rootfs"),
        root,
        Some("tmpfs"),
        MsFlags::MS_NODEV,
        Some("mode=0755,size=16m"),
    )
    .map_err(|e| err(format!("mount tmpfs on {}", root.display()), e))?;

    for entry in &spec.image {
        match entry {
            ImageEntry::Dir { path, mode } => {
                let dir = inside(root, path)?;
                mkdirs(&dir, *mode)?;
                // mkdir applies the umask; the image's mode is exact (1777 for /tmp).
                fs::set_permissions(&dir, fs::Permissions::from_mode(*mode))?;
            }
            ImageEntry::Symlink { target, path } => {
                let link = inside(root, path)?;
                if let Some(p) = link.parent() {
                    mkdirs(p, 0o755)?;
                }
                std::os::unix::fs::symlink(target, &link)
                    .map_err(|e| err(format!("symlink {}", link.display()), e))?;
            }
            ImageEntry::Bind { host, path } => {
                let target = inside(root, path)?;
                make_mount_point(host, &target)?;
                bind(host, &target, true)?;
                propagate(&target, MsFlags::MS_REC | MsFlags::MS_PRIVATE)?;
            }
        }
    }

    // A privileged container sees the node's devices and sysfs; /proc is its own mount.
    for (dir, source) in [("dev", "/dev"), ("sys", "/sys")] {
        let target = root.join(dir);
        mkdirs(&target, 0o755)?;
        bind(Path::new(source), &target, false)?;
        propagate(&target, MsFlags::MS_REC | MsFlags::MS_SLAVE)?;
    }
    let proc_dir = root.join("proc");
    mkdirs(&proc_dir, 0o555)?;
    mount(
        Some("proc"),
        &proc_dir,
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(|e| err("mount proc", e))?;

    for m in &spec.mounts {
        let target = inside(root, &m.destination)?;
        make_mount_point(&m.source, &target)?;
        bind(&m.source, &target, m.read_only)?;
        propagate(&target, m.propagation.flags())?;
    }

    if spec.read_only_root {
        remount_read_only(root)?;
    }

    // runc's pivot: the old root ends up stacked on the new one, is made a slave so that its
    // detach cannot propagate back to the node, and is detached.
    let old_root = open("/", OFlag::O_DIRECTORY | OFlag::O_RDONLY, Mode::empty())
        .map_err(|e| err("open /", e))?;
    let new_root = open(root, OFlag::O_DIRECTORY | OFlag::O_RDONLY, Mode::empty())
        .map_err(|e| err(root.display(), e))?;
    nix::unistd::fchdir(&new_root).map_err(|e| err("fchdir new root", e))?;
    nix::unistd::pivot_root(".", ".").map_err(|e| err("pivot_root", e))?;
    nix::unistd::fchdir(&old_root).map_err(|e| err("fchdir old root", e))?;
    propagate(Path::new("."), MsFlags::MS_REC | MsFlags::MS_SLAVE)?;
    umount2(".", MntFlags::MNT_DETACH).map_err(|e| err("detach old root", e))?;
    std::env::set_current_dir("/")?;
    drop(old_root);
    drop(new_root);

    let (program, args) = spec
        .argv
        .split_first()
        .ok_or_else(|| err("argv", "empty command"))?;
    let e = Command::new(program)
        .args(args)
        .env_clear()
        .envs(
            spec.env
                .iter()
                .map(|(k, v)| (OsString::from(k), OsString::from(v))),
        )
        .exec();
    Err(err(format!("exec {program}"), e))
}
