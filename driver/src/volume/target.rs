//! Target paths: checks that keep certvol inside kubelet's pods directory, and the bind there.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::files::mount::MountInfo;
use crate::files::store::VolumePaths;

use super::{MAX_VOLUME_ID_BYTES, VolumeManager, error::VolumeError};

impl VolumeManager {
    pub(crate) fn bind_target(
        &self,
        paths: &VolumePaths,
        target: &Path,
    ) -> Result<(), VolumeError> {
        // Checked again here, not only at the first publish: a retried publish and recovery's
        // re-bind come back to the target later.
        check_no_link_below_pods(&self.cfg.kubelet_dir, target, true)?;
        // Anything but our own bind would be taken for it, and the pod would see its contents.
        self.refuse_foreign_mount(target, &paths.key)?;
        if self
            .mounter
            .mount_at(target)
            .map_err(VolumeError::io_at("inspect mounts for", target))?
            .is_some()
        {
            return Ok(());
        }
        match fs::symlink_metadata(target) {
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(VolumeError::InvalidArgument(format!(
                    "target_path {} is a symbolic link; refusing to mount through it",
                    target.display()
                )));
            }
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(VolumeError::InvalidArgument(format!(
                    "target_path {} exists and is not a directory",
                    target.display()
                )));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                crate::files::mount::create_dir_beneath(&self.pods_dir(), target, 0o750)
                    .map_err(VolumeError::io_at("create target directory", target))?;
            }
            Err(e) => return Err(VolumeError::io_at("inspect", target)(e)),
        }
        self.mounter
            .bind_read_only_beneath(&paths.files, &self.pods_dir(), target)
            .map_err(VolumeError::io_at("bind-mount read-only at", target))
    }

    /// kubelet's pods directory: every target is reached from here without following links.
    pub(super) fn pods_dir(&self) -> PathBuf {
        self.cfg.kubelet_dir.join("pods")
    }

    /// A mount at the target that is not volume `key`'s bind: [`VolumeError::ForeignMount`].
    pub(super) fn refuse_foreign_mount(&self, target: &Path, key: &str) -> Result<(), VolumeError> {
        match self
            .mounter
            .mount_at(target)
            .map_err(VolumeError::io_at("inspect mounts for", target))?
        {
            Some(m) if !self.is_our_bind(&m, Some(key)) => Err(VolumeError::ForeignMount {
                target: target.to_path_buf(),
                fs_type: m.fs_type,
                mount_source: m.source,
                root: m.root,
            }),
            _ => Ok(()),
        }
    }

    /// Whether `m` is a bind certvol made: a mount of one of this data root's tmpfs (the source
    /// names the store and the volume) whose root is the tmpfs's `files` directory. With `key`,
    /// only that volume's. A subPath bind kubelet makes of a file or directory inside the volume
    /// carries the same source but a deeper root, and is not ours.
    pub(crate) fn is_our_bind(&self, m: &MountInfo, key: Option<&str>) -> bool {
        m.fs_type == "tmpfs"
            && m.root == FILES_ROOT
            && self
                .store
                .key_from_mount_source(&m.source)
                .is_some_and(|k| key.is_none_or(|want| want == k))
    }
}

/// Refuses volume ids kubelet would never send: empty, longer than [`MAX_VOLUME_ID_BYTES`], or
/// with characters outside ASCII letters, digits, `-`, `_` and `.` (starting with a letter or
/// digit). Ids end up in request names, labels and log lines, so they must stay plain.
pub fn check_volume_id(volume_id: &str) -> Result<(), VolumeError> {
    let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    let ok = volume_id.len() <= MAX_VOLUME_ID_BYTES
        && volume_id.starts_with(|c: char| c.is_ascii_alphanumeric())
        && volume_id.chars().all(plain);
    if ok {
        return Ok(());
    }
    // A hostile id may be megabytes long: show only its start.
    let shown: String = volume_id.chars().take(80).collect();
    let cut = if shown.len() < volume_id.len() {
        format!(" (first 80 of {} bytes)", volume_id.len())
    } else {
        String::new()
    };
    Err(VolumeError::InvalidArgument(format!(
        "volume_id {shown:?}{cut} is not accepted; accepted: 1 to {MAX_VOLUME_ID_BYTES} ASCII letters, digits, '-', '_' or '.', starting with a letter or digit (kubelet sends \"csi-\" and 64 hex digits)"
    )))
}

/// The target must be absolute, without `.` or `..` components, and strictly inside
/// `<kubelet_dir>/pods/`, so that a caller on the CSI socket cannot make certvol mount over, or
/// unmount and remove, anything else on the node.
pub fn check_in_pods_dir(kubelet_dir: &Path, target: &Path) -> Result<(), VolumeError> {
    use std::path::Component;
    if !target.is_absolute()
        || target
            .components()
            .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
    {
        return Err(VolumeError::InvalidArgument(format!(
            "target_path {:?} must be an absolute path without \".\" or \"..\" components",
            target.display().to_string()
        )));
    }
    let pods = kubelet_dir.join("pods");
    if target.starts_with(&pods) && target != pods {
        return Ok(());
    }
    Err(VolumeError::InvalidArgument(format!(
        "target_path {:?} is not inside the kubelet pods directory {}/; certvol only mounts and unmounts volumes there (set --kubelet-dir, the Helm chart's kubeletRootDir, to kubelet's --root-dir to change it; configured: {})",
        target.display().to_string(),
        pods.display(),
        kubelet_dir.display()
    )))
}

/// The root (in mountinfo) of certvol's bind at a target: the `files` directory of the
/// volume's tmpfs.
pub(crate) const FILES_ROOT: &str = "/files";

/// Refuses a symbolic link at any directory between `<kubelet_dir>/pods` and the target
/// (exclusive), checked with lstat component by component: a directory replaced by a link would
/// make certvol mount, unmount or remove outside kubelet's tree. Links at or above the kubelet
/// directory itself (a relocated `/var/lib/kubelet`) are fine. `must_exist`: a missing directory
/// is an error (publish) or the end of what there is to check (unpublish).
pub(super) fn check_no_link_below_pods(
    kubelet_dir: &Path,
    target: &Path,
    must_exist: bool,
) -> Result<(), VolumeError> {
    let pods = kubelet_dir.join("pods");
    let Some(parent) = target.parent() else {
        return Ok(());
    };
    let Ok(below) = parent.strip_prefix(&pods) else {
        // The target is directly in the pods directory: nothing below it to check.
        return Ok(());
    };
    let mut dir = pods.clone();
    for component in below.components() {
        dir.push(component);
        match fs::symlink_metadata(&dir) {
            Ok(meta) if meta.file_type().is_symlink() => {
                let leads_to = fs::canonicalize(&dir).map_or_else(
                    |e| format!("unresolvable: {e}"),
                    |p| p.display().to_string(),
                );
                return Err(VolumeError::InvalidArgument(format!(
                    "target_path {}: a directory between {} and the target is a symbolic link ({} resolves to {leads_to}); refusing to act through it",
                    target.display(),
                    pods.display(),
                    dir.display(),
                )));
            }
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(VolumeError::InvalidArgument(format!(
                    "target_path {}: {} is not a directory",
                    target.display(),
                    dir.display()
                )));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound && !must_exist => return Ok(()),
            Err(e) => {
                return Err(VolumeError::InvalidArgument(format!(
                    "cannot inspect {} for target_path {}: {e}",
                    dir.display(),
                    target.display()
                )));
            }
        }
    }
    Ok(())
}

/// The target must be inside kubelet's pods directory (see [`check_in_pods_dir`]) and not a
/// symlink, and its parent (created by kubelet) must exist as a real directory reached without
/// symbolic links below the pods directory: certvol creates only the last component.
pub(super) fn check_target(kubelet_dir: &Path, target: &Path) -> Result<(), VolumeError> {
    check_in_pods_dir(kubelet_dir, target)?;
    let parent = target.parent().ok_or_else(|| {
        VolumeError::InvalidArgument("target_path must not be the root directory".into())
    })?;
    match fs::symlink_metadata(parent) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => {
            return Err(VolumeError::InvalidArgument(format!(
                "the parent of target_path {} is not a directory",
                target.display()
            )));
        }
        Err(_) => {
            return Err(VolumeError::InvalidArgument(format!(
                "the parent directory of target_path {} does not exist (kubelet creates it before publishing)",
                target.display()
            )));
        }
    }
    check_no_link_below_pods(kubelet_dir, target, true)?;
    match fs::symlink_metadata(target) {
        Ok(meta) if meta.file_type().is_symlink() => Err(VolumeError::InvalidArgument(format!(
            "target_path {} is a symbolic link; refusing to mount through it",
            target.display()
        ))),
        Ok(meta) if !meta.is_dir() => Err(VolumeError::InvalidArgument(format!(
            "target_path {} exists and is not a directory",
            target.display()
        ))),
        _ => Ok(()),
    }
}
