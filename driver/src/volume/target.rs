//! Target paths: the checks on the filesystem that keep certvol inside kubelet's pods directory
//! (the lexical ones are [`TargetPath::parse`]'s), and the bind there.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::files::mount::MountInfo;
use crate::files::store::VolumePaths;

use crate::spec::volume::TargetPath;

use super::{VolumeManager, error::VolumeError};

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

/// The target (inside kubelet's pods directory, as its type says) must not be a symlink, and its
/// parent (created by kubelet) must exist as a real directory reached without symbolic links
/// below the pods directory: certvol creates only the last component.
pub(super) fn check_target(kubelet_dir: &Path, target: &TargetPath) -> Result<(), VolumeError> {
    let target = target.as_path();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::tests::*;

    use std::fs;

    #[tokio::test]
    async fn targets_that_are_symlinks_or_relative_are_refused() {
        let f = fixture();
        let p = params(&f, "sym");
        let elsewhere = f.pods.join("elsewhere");
        fs::create_dir_all(&elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &p.target_path).unwrap();
        let err = f.mgr.publish(p.clone()).await.unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert_eq!(
            fs::read_dir(&elsewhere).unwrap().count(),
            0,
            "nothing written through it"
        );
        // A relative target never reaches the volume layer: it does not parse.
        let err = TargetPath::parse(&f.mgr.config().kubelet_dir, "relative/mount").unwrap_err();
        assert!(err.to_string().contains("target_path"), "{err}");
        assert!(calls(&f).is_empty());
    }

    #[tokio::test]
    async fn a_symlink_above_the_target_is_refused_and_nothing_is_created_through_it() {
        let f = fixture();
        let outside = f._dir.path().join("outside");
        fs::create_dir_all(outside.join("kubernetes.io~csi/tls")).unwrap();
        fs::write(outside.join("keep"), b"x").unwrap();
        let before = tree(&outside);
        // The pod's volumes directory replaced by a link to a directory outside kubelet's tree.
        let pod = f.pods.join("linked");
        fs::create_dir_all(&pod).unwrap();
        std::os::unix::fs::symlink(&outside, pod.join("volumes")).unwrap();
        let mut p = params(&f, "ok");
        p.volume_id = id("csi-linked");
        p.target_path = target_path(&f, pod.join("volumes/kubernetes.io~csi/tls/mount"));
        let err = f.mgr.publish(p.clone()).await.unwrap_err();
        assert!(matches!(err, VolumeError::InvalidArgument(_)), "{err}");
        let text = err.to_string();
        assert!(
            text.contains("symbolic link") && text.contains(&outside.display().to_string()),
            "{text}"
        );
        assert_eq!(tree(&outside), before, "nothing created outside");
        assert!(calls(&f).is_empty(), "nothing issued");
        assert!(f.mgr.store().load("csi-linked").unwrap().is_none());

        // Unpublish through the link touches nothing either.
        fs::create_dir(outside.join("kubernetes.io~csi/tls/mount")).unwrap();
        let before = tree(&outside);
        let err = f
            .mgr
            .unpublish(&id("csi-linked"), &p.target_path)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert_eq!(tree(&outside), before);
    }

    #[tokio::test]
    async fn a_link_planted_above_a_published_target_is_not_followed_on_removal() {
        let f = fixture();
        let p = params(&f, "later");
        f.mgr.publish(p.clone()).await.unwrap();
        // The pod's volumes directory swapped for a link to a look-alike tree outside.
        let outside = f._dir.path().join("outside");
        let look_alike = outside.join("kubernetes.io~csi/tls/mount");
        fs::create_dir_all(&look_alike).unwrap();
        let volumes = f.pods.join("later/volumes");
        fs::rename(&volumes, f._dir.path().join("moved-away")).unwrap();
        std::os::unix::fs::symlink(&outside, &volumes).unwrap();
        let before = tree(&outside);
        f.mgr.unbind_target(&p.target_path, None).unwrap();
        assert_eq!(
            tree(&outside),
            before,
            "the empty look-alike is not removed"
        );
        let paths = f.mgr.store().paths("csi-later");
        let err = f.mgr.bind_target(&paths, &p.target_path).unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert_eq!(tree(&outside), before, "nothing bound through the link");
    }

    #[tokio::test]
    async fn targets_outside_the_kubelet_pods_dir_do_not_parse() {
        let f = fixture();
        let outside = f._dir.path().join("etc-like");
        fs::create_dir_all(outside.join("mount")).unwrap();
        fs::write(outside.join("passwd"), b"root:x:0:0").unwrap();
        let before = tree(&outside);
        let pods = f.pods.display().to_string();
        let dotdot = f.pods.join("u/../../etc-like/mount");
        // Such targets do not parse, so neither publish nor unpublish can be handed one.
        for target in [outside.join("mount"), dotdot, f.pods.clone()] {
            let err = TargetPath::parse(&f.mgr.config().kubelet_dir, target.clone()).unwrap_err();
            let text = err.to_string();
            assert!(text.contains("target_path"), "{text}");
            if !target.to_string_lossy().contains("..") {
                assert!(
                    text.contains(&pods) && text.contains("--kubelet-dir"),
                    "{text}"
                );
            }
        }
        assert_eq!(tree(&outside), before, "nothing created or removed");
        assert!(calls(&f).is_empty());
        assert_eq!(f.mgr.volume_count(), 0);
    }
}
