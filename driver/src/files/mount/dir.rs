//! A stand-in for the kernel's mounts: plain directories and symlinks, for demos without root.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use parking_lot::Mutex;

use super::Mounter;
use super::errors::context;
use super::kernel::check_tmpfs_args;
use super::mountinfo::MountInfo;

/// A stand-in for `KernelMounter` for demos without root. It gives none of the protection of
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
}

impl Mounter for DirMounter {
    fn mount_tmpfs(&self, path: &Path, source: &str, size_bytes: u64, mode: u32) -> io::Result<()> {
        check_tmpfs_args(path, source, size_bytes, mode)?;
        let key = record_key(path)?;
        let mut state = self.state.lock();
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
        let mut state = self.state.lock();
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
        let mut state = self.state.lock();
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
        let state = self.state.lock();
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
        Ok(self.state.lock().mounts.contains_key(&key))
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

/// The identity of a fake mount point: absolute, with the parent resolved but the last component
/// kept as is, because a fake bind turns that last component into a symlink to somewhere else.
pub(super) fn record_key(path: &Path) -> io::Result<PathBuf> {
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
