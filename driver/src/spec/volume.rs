//! The two names a CSI request gives a volume, parsed once at the edge: its id and its target
//! path. The volume layer takes only these types, so it cannot be handed an id or a path nobody
//! checked. Pure: the checks that need the filesystem (symbolic links below the pods directory)
//! run later, on the typed path, in `volume::target`.

use std::fmt;
use std::ops::Deref;
use std::path::{Component, Path, PathBuf};

/// Longest volume id accepted. kubelet's ids for inline volumes are 68 bytes (`csi-` and a
/// SHA-256 in hex); the bound keeps ids usable in file names, labels and log lines.
pub(crate) const MAX_VOLUME_ID_BYTES: usize = 128;

/// Why a volume id or target path is not accepted; the text names the field and what is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FieldError {
    #[error(
        "volume_id {shown:?}{cut} is not accepted; accepted: 1 to {MAX_VOLUME_ID_BYTES} ASCII letters, digits, '-', '_' or '.', starting with a letter or digit (kubelet sends \"csi-\" and 64 hex digits)"
    )]
    VolumeId {
        /// The id's start: a hostile id may be megabytes long.
        shown: String,
        /// How much of it `shown` is, when it is not all of it.
        cut: String,
    },
    #[error("target_path {0:?} must be an absolute path without \".\" or \"..\" components")]
    TargetNotPlain(String),
    #[error(
        "target_path {target:?} is not inside the kubelet pods directory {pods}/; certvol only mounts and unmounts volumes there (set --kubelet-dir, the Helm chart's kubeletRootDir, to kubelet's --root-dir to change it; configured: {kubelet_dir})"
    )]
    TargetOutsidePods {
        target: String,
        pods: String,
        kubelet_dir: String,
    },
}

/// A volume id kubelet could have sent: 1 to [`MAX_VOLUME_ID_BYTES`] ASCII letters, digits,
/// `-`, `_` and `.`, starting with a letter or digit. Ids end up in request names, labels and log
/// lines, so they must stay plain.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct VolumeId(String);

impl VolumeId {
    pub(crate) fn parse(volume_id: &str) -> Result<VolumeId, FieldError> {
        let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
        let ok = volume_id.len() <= MAX_VOLUME_ID_BYTES
            && volume_id.starts_with(|c: char| c.is_ascii_alphanumeric())
            && volume_id.chars().all(plain);
        if ok {
            return Ok(VolumeId(volume_id.to_owned()));
        }
        let shown: String = volume_id.chars().take(80).collect();
        let cut = if shown.len() < volume_id.len() {
            format!(" (first 80 of {} bytes)", volume_id.len())
        } else {
            String::new()
        };
        Err(FieldError::VolumeId { shown, cut })
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

impl Deref for VolumeId {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for VolumeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl PartialEq<&str> for VolumeId {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

/// A target path lexically inside `<kubelet_dir>/pods/`: absolute, without `.` or `..`
/// components and strictly below the pods directory, so that a caller on the CSI socket cannot
/// make certvol mount over, or unmount and remove, anything else on the node.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TargetPath(PathBuf);

impl TargetPath {
    pub fn parse(kubelet_dir: &Path, path: impl Into<PathBuf>) -> Result<TargetPath, FieldError> {
        let target = path.into();
        if !target.is_absolute()
            || target
                .components()
                .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
        {
            return Err(FieldError::TargetNotPlain(target.display().to_string()));
        }
        let pods = kubelet_dir.join("pods");
        if target.starts_with(&pods) && target != pods {
            return Ok(TargetPath(target));
        }
        Err(FieldError::TargetOutsidePods {
            target: target.display().to_string(),
            pods: pods.display().to_string(),
            kubelet_dir: kubelet_dir.display().to_string(),
        })
    }

    pub fn as_path(&self) -> &Path {
        &self.0
    }
}

impl Deref for TargetPath {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for TargetPath {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl PartialEq<PathBuf> for TargetPath {
    fn eq(&self, other: &PathBuf) -> bool {
        self.0 == *other
    }
}

impl PartialEq<TargetPath> for PathBuf {
    fn eq(&self, other: &TargetPath) -> bool {
        *self == other.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_ids_are_plain_and_bounded() {
        for good in [
            "csi-5f2c0e6d4b1a9c8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e",
            "a",
            "vol_1.x-2",
            &"a".repeat(MAX_VOLUME_ID_BYTES),
        ] {
            assert!(VolumeId::parse(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "..",
            "-x",
            "a/b",
            "../etc",
            "a\0b",
            "a b",
            "é",
            &"a".repeat(MAX_VOLUME_ID_BYTES + 1),
        ] {
            let err = VolumeId::parse(bad).unwrap_err();
            assert!(matches!(err, FieldError::VolumeId { .. }), "{bad:?}");
            let text = err.to_string();
            assert!(
                text.contains("volume_id") && text.contains("accepted: 1 to 128"),
                "{text}"
            );
        }
        let huge = "x/".repeat(1 << 20);
        let text = VolumeId::parse(&huge).unwrap_err().to_string();
        assert!(text.len() < 600, "the message stays short: {}", text.len());
        assert!(text.contains("first 80 of 2097152 bytes"), "{text}");
    }

    #[test]
    fn targets_are_absolute_plain_and_strictly_inside_the_pods_dir() {
        let kubelet = Path::new("/var/lib/kubelet");
        let good = "/var/lib/kubelet/pods/u/volumes/kubernetes.io~csi/tls/mount";
        assert_eq!(
            TargetPath::parse(kubelet, good).unwrap().as_path(),
            Path::new(good)
        );
        for bad in [
            "relative/mount",
            "/var/lib/kubelet/pods/u/../../etc-like/mount",
        ] {
            let err = TargetPath::parse(kubelet, bad).unwrap_err();
            assert!(matches!(err, FieldError::TargetNotPlain(_)), "{bad}: {err}");
            assert!(err.to_string().contains("target_path"), "{err}");
        }
        for bad in [
            "/etc-like/mount",
            "/var/lib/kubelet/pods",
            "/var/lib/kubelet",
        ] {
            let text = TargetPath::parse(kubelet, bad).unwrap_err().to_string();
            assert!(
                text.contains("target_path")
                    && text.contains("/var/lib/kubelet/pods/")
                    && text.contains("--kubelet-dir"),
                "{text}"
            );
        }
    }
}
