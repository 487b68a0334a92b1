//! Per-volume metadata on persistent disk and the data root's layout.
//!
//! ```text
//! <data-root>/volumes/<volume-key>/state.json   VolumeState, written atomically; no key, no token
//! <data-root>/volumes/<volume-key>/mem/         tmpfs: files/ (what the pod sees), keys/ (never bound)
//! ```
//! `state.json` records intent before each step of a publish, so a process killed at any moment
//! leaves a record that says what exists and what to do next (see `recovery`).

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::files::fsutil;
use crate::spec::request::KeyAlgorithm;

/// Format version of `state.json`; bumped on incompatible changes.
pub const STATE_VERSION: u32 = 1;
/// Largest `state.json` we read; anything bigger is corrupt, not state.
const MAX_STATE_BYTES: u64 = 1 << 20;

/// Where a volume stands. Each phase is recorded before the work it names starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// The tmpfs is being mounted. Recovery undoes it.
    Mounting,
    /// A key is pending and its request is with the issuer (`pending`), or the files are written
    /// (`current`) and the target is being bound. Recovery keeps it; the retried publish resumes
    /// with the same key and request name, or just binds the target.
    Issuing,
    /// Bound at the target path and renewed in the background.
    Published,
    /// Being removed. Recovery finishes the removal.
    Unpublishing,
}

/// The certificate currently in the volume.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertRecord {
    pub revision: u64,
    pub request_name: String,
    pub serial: String,
    #[serde(with = "time::serde::rfc3339")]
    pub not_before: time::OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: time::OffsetDateTime,
    /// When renewal is due (the renewer's answer for this certificate).
    #[serde(with = "time::serde::rfc3339")]
    pub renew_at: time::OffsetDateTime,
}

/// An issuance in flight: its key is in `mem/keys/key-<revision>.pk8`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingRecord {
    pub revision: u64,
    pub request_name: String,
    pub key_algorithm: KeyAlgorithm,
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: time::OffsetDateTime,
}

/// Renewal health, kept so that a restart does not forget a failing renewal.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenewalRecord {
    pub failures: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub next_attempt: Option<time::OffsetDateTime>,
}

/// Everything certvol knows about one volume, as written to `state.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeState {
    pub version: u32,
    pub volume_id: String,
    pub target_path: PathBuf,
    pub node_id: String,
    /// Issuer backend kind that issued the certificate.
    pub issuer: String,
    /// The volume context without the service account tokens (see `attrs::stable_context`).
    pub context: BTreeMap<String, String>,
    /// kubelet's `volume_mount_group` (the pod's fsGroup), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount_group: Option<u32>,
    pub phase: Phase,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<CertRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<PendingRecord>,
    /// Highest revision ever filed for this volume. A request that ended in a final state
    /// (denied, failed) keeps its name, so the next attempt must use a higher revision.
    #[serde(default)]
    pub last_revision: u64,
    /// Names of requests this volume filed that the issuer may still hold, oldest first.
    #[serde(default)]
    pub requests: Vec<String>,
    #[serde(default)]
    pub renewal: RenewalRecord,
    /// The issuing CAs the volume's trust bundle carries, current first, then retired ones until
    /// their overlap ends (see `trust::rotation`). Certificates only (public); empty for volumes
    /// without a trust bundle and in state written before trust bundles existed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub issuing_cas: Vec<crate::trust::IssuingCa>,
}

impl VolumeState {
    /// When the volume renews next, as recorded (the retry of a failed renewal, else the current
    /// certificate's renewal time), for display.
    pub fn next_renewal(&self) -> Option<SystemTime> {
        self.renewal
            .next_attempt
            .or(self.current.as_ref().map(|c| c.renew_at))
            .map(to_system)
    }
}

/// Why state could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is not valid volume state: {message}")]
    Corrupt { path: PathBuf, message: String },
}

/// A fault of the filesystem holding the data root that only an operator can clear. Writes of
/// state (and of the volume directories) fail with it until then; nothing else does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DiskFault {
    /// No space (ENOSPC) or the quota is used up (EDQUOT).
    Full,
    /// Mounted read-only (EROFS), e.g. remounted after filesystem errors.
    ReadOnly,
}

impl DiskFault {
    /// The fault an I/O error reports, if it is one of these.
    pub fn of(error: &io::Error) -> Option<DiskFault> {
        match error.raw_os_error()? {
            libc::ENOSPC | libc::EDQUOT => Some(DiskFault::Full),
            libc::EROFS => Some(DiskFault::ReadOnly),
            _ => None,
        }
    }

    /// What the operator has to do about it.
    pub fn remedy(self) -> &'static str {
        match self {
            DiskFault::Full => "free space on that filesystem (or raise its quota)",
            DiskFault::ReadOnly => "make that filesystem writable again (remount it read-write)",
        }
    }
}

impl std::fmt::Display for DiskFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DiskFault::Full => "is full",
            DiskFault::ReadOnly => "is read-only",
        })
    }
}

/// A volume directory found by [`Store::scan`], with its state if it could be read.
pub(crate) type ScannedVolume = (VolumePaths, Result<Option<VolumeState>, StoreError>);

/// Paths of one volume under the data root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumePaths {
    pub key: String,
    pub dir: PathBuf,
    pub state: PathBuf,
    /// The tmpfs mount point.
    pub mem: PathBuf,
    /// Bound read-only at the target path.
    pub files: PathBuf,
    /// Private keys (current and pending); never visible to the pod.
    pub keys: PathBuf,
}

impl VolumePaths {
    /// The private key (PKCS#8) of one revision. State names revisions (`current`, `pending`),
    /// and a key never moves once written, so whatever step a crash interrupts, state names a
    /// key that is there: renaming a pending key to a fixed "current" name would open a window
    /// in which the recorded pending key is gone but the record not yet updated.
    pub fn key(&self, revision: u64) -> PathBuf {
        self.keys.join(format!("key-{revision}.pk8"))
    }

    /// The revision a file in `keys` holds the key of, if it is a key file.
    pub fn key_revision(name: &str) -> Option<u64> {
        name.strip_prefix("key-")?
            .strip_suffix(".pk8")?
            .parse()
            .ok()
    }
    /// The password of the volume's PKCS#12 files, kept for renewals (tmpfs, 0600).
    pub fn pkcs12_password(&self) -> PathBuf {
        self.keys.join("pkcs12-password")
    }
}

/// The data root: where state lives and tmpfs mounts are made.
#[derive(Clone, Debug)]
pub struct Store {
    root: PathBuf,
    volumes: PathBuf,
    mount_tag: String,
}

impl Store {
    /// Opens (creating if needed) the data root. `root` should be absolute and persistent.
    pub fn open(root: &Path) -> Result<Store, StoreError> {
        let volumes = root.join("volumes");
        fsutil::create_dir_mode(&volumes, 0o700).map_err(|source| StoreError::Io {
            action: "create",
            path: volumes.clone(),
            source,
        })?;
        let root = fs::canonicalize(root).map_err(|source| StoreError::Io {
            action: "resolve",
            path: root.to_path_buf(),
            source,
        })?;
        // Mount sources carry a tag of the data root so that orphan clean-up only ever touches
        // mounts made for this data root, even with several drivers (or tests) on one machine.
        let digest = Sha256::digest(root.as_os_str().as_encoded_bytes());
        let mount_tag = format!("certvol:{}", hex::encode(&digest[..6]));
        Ok(Store {
            volumes: root.join("volumes"),
            root,
            mount_tag,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Prefix of the mount source of every tmpfs this store's volumes use.
    pub fn mount_tag(&self) -> &str {
        &self.mount_tag
    }

    /// Mount source for one volume's tmpfs: `<tag>:<volume-key>`.
    pub fn mount_source(&self, paths: &VolumePaths) -> String {
        format!("{}:{}", self.mount_tag, paths.key)
    }

    /// The volume key a mount source names, if it is one of ours.
    pub fn key_from_mount_source<'a>(&self, source: &'a str) -> Option<&'a str> {
        source
            .strip_prefix(self.mount_tag.as_str())
            .and_then(|rest| rest.strip_prefix(':'))
    }

    /// Paths for a CSI volume id. Volume ids are arbitrary strings, so they are hashed into a
    /// fixed-length, filesystem-safe key.
    pub fn paths(&self, volume_id: &str) -> VolumePaths {
        let digest = Sha256::digest(volume_id.as_bytes());
        self.paths_for_key(&format!("v-{}", hex::encode(&digest[..16])))
    }

    fn paths_for_key(&self, key: &str) -> VolumePaths {
        let dir = self.volumes.join(key);
        let mem = dir.join("mem");
        VolumePaths {
            key: key.to_string(),
            state: dir.join("state.json"),
            files: mem.join("files"),
            keys: mem.join("keys"),
            mem,
            dir,
        }
    }

    /// Writes `state` atomically.
    pub fn save(&self, state: &VolumeState) -> Result<(), StoreError> {
        let paths = self.paths(&state.volume_id);
        let json = serde_json::to_vec_pretty(state).map_err(|e| StoreError::Corrupt {
            path: paths.state.clone(),
            message: e.to_string(),
        })?;
        let created = !paths.dir.exists();
        fsutil::create_dir_mode(&paths.dir, 0o700).map_err(|source| StoreError::Io {
            action: "create",
            path: paths.dir.clone(),
            source,
        })?;
        // Not fsynced: state only describes the volume's tmpfs, which a power loss takes too
        // (see `fsutil::replace`).
        fsutil::replace(&paths.state, &json, 0o600).map_err(|source| {
            if created {
                // The first save of a volume failed (a full data root): its directory would be
                // the only trace of a publish that otherwise left nothing behind. Only an empty
                // directory is removed, so a racing writer's files are never touched.
                let _ = fs::remove_dir(&paths.dir);
            }
            StoreError::Io {
                action: "write",
                path: paths.state.clone(),
                source,
            }
        })
    }

    /// Reads a volume's state; `None` if it has none.
    pub fn load(&self, volume_id: &str) -> Result<Option<VolumeState>, StoreError> {
        let paths = self.paths(volume_id);
        match read_state(&paths.state)? {
            Some(state) if state.volume_id == volume_id => Ok(Some(state)),
            Some(state) => Err(StoreError::Corrupt {
                path: paths.state,
                message: format!(
                    "it belongs to volume {:?}, not {volume_id:?}",
                    state.volume_id
                ),
            }),
            None => Ok(None),
        }
    }

    /// Every volume directory: its key, and its state if readable. Directories without state
    /// (a crash before the first save) come back with `Ok(None)`.
    pub fn scan(&self) -> Result<Vec<ScannedVolume>, StoreError> {
        let entries = fs::read_dir(&self.volumes).map_err(|source| StoreError::Io {
            action: "list",
            path: self.volumes.clone(),
            source,
        })?;
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| StoreError::Io {
                action: "list",
                path: self.volumes.clone(),
                source,
            })?;
            let Some(key) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if !key.starts_with("v-") {
                continue;
            }
            let paths = self.paths_for_key(&key);
            let state = read_state(&paths.state);
            out.push((paths, state));
        }
        out.sort_by(|a, b| a.0.key.cmp(&b.0.key));
        Ok(out)
    }

    /// Paths of the volume directory named `key` (from a mount source or a scan).
    pub fn paths_by_key(&self, key: &str) -> Option<VolumePaths> {
        let valid = key.starts_with("v-")
            && key.len() <= 64
            && key[2..].chars().all(|c| c.is_ascii_hexdigit());
        valid.then(|| self.paths_for_key(key))
    }

    /// Removes a volume's directory, `state.json` last, so that a crash part-way leaves state
    /// that still names what is left. The tmpfs must already be unmounted.
    pub fn remove(&self, paths: &VolumePaths) -> Result<(), StoreError> {
        let io_err = |action, path: &Path| {
            let path = path.to_path_buf();
            move |source| StoreError::Io {
                action,
                path,
                source,
            }
        };
        match fs::remove_dir_all(&paths.mem) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("remove", &paths.mem)(e)),
        }
        match fs::remove_file(&paths.state) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("remove", &paths.state)(e)),
        }
        match fs::remove_dir_all(&paths.dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("remove", &paths.dir)(e)),
        }
        Ok(())
    }
}

fn read_state(path: &Path) -> Result<Option<VolumeState>, StoreError> {
    let io_err = |source| StoreError::Io {
        action: "read",
        path: path.to_path_buf(),
        source,
    };
    let meta = match fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(e)),
    };
    if meta.len() > MAX_STATE_BYTES {
        return Err(StoreError::Corrupt {
            path: path.to_path_buf(),
            message: format!("{} bytes is larger than any state", meta.len()),
        });
    }
    let bytes = fs::read(path).map_err(io_err)?;
    decode(&bytes)
        .map(Some)
        .map_err(|message| StoreError::Corrupt {
            path: path.to_path_buf(),
            message,
        })
}

/// Decodes `state.json` bytes, refusing versions this build does not know.
pub fn decode(bytes: &[u8]) -> Result<VolumeState, String> {
    let state: VolumeState = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    if state.version != STATE_VERSION {
        return Err(format!(
            "state version {} is not supported (this build reads version {STATE_VERSION})",
            state.version
        ));
    }
    Ok(state)
}

/// Converts for `state.json`, which stores RFC 3339 times.
pub(crate) fn to_offset(t: SystemTime) -> time::OffsetDateTime {
    time::OffsetDateTime::from(t)
}

pub fn to_system(t: time::OffsetDateTime) -> SystemTime {
    SystemTime::from(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::time::Duration;

    fn sample(volume_id: &str) -> VolumeState {
        let t = to_offset(SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000));
        VolumeState {
            version: STATE_VERSION,
            volume_id: volume_id.into(),
            target_path: "/var/lib/kubelet/pods/u/volumes/kubernetes.io~csi/tls/mount".into(),
            node_id: "node-1".into(),
            issuer: "local".into(),
            context: BTreeMap::from([(
                "csi.cert-manager.io/issuer-name".to_string(),
                "ca".to_string(),
            )]),
            mount_group: Some(2000),
            phase: Phase::Published,
            current: Some(CertRecord {
                revision: 1,
                request_name: "certvol-abc-1".into(),
                serial: "01ab".into(),
                not_before: t,
                not_after: t + Duration::from_secs(3600),
                renew_at: t + Duration::from_secs(2400),
            }),
            pending: None,
            last_revision: 1,
            requests: vec!["certvol-abc-1".into()],
            renewal: RenewalRecord::default(),
            issuing_cas: Vec::new(),
        }
    }

    #[test]
    fn save_load_roundtrip_with_private_mode() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let state = sample("csi-0123");
        store.save(&state).unwrap();
        assert_eq!(store.load("csi-0123").unwrap(), Some(state.clone()));
        assert_eq!(store.load("csi-other").unwrap(), None);
        let paths = store.paths("csi-0123");
        let mode = fs::metadata(&paths.state).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let text = fs::read_to_string(&paths.state).unwrap();
        assert!(
            text.contains("\"not_after\": \"2027-01-15T09:00:00Z\""),
            "{text}"
        );
        let scanned = store.scan().unwrap();
        assert_eq!(scanned.len(), 1);
        assert_eq!(scanned[0].1.as_ref().unwrap().as_ref(), Some(&state));
    }

    #[test]
    fn issuing_cas_round_trip_and_older_state_without_them_still_loads() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut state = sample("csi-trust");
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        state.issuing_cas = vec![
            crate::trust::IssuingCa {
                der: vec![0x30, 0x03, 0x02, 0x01, 0x01],
                not_after: at,
                keep_until: None,
            },
            crate::trust::IssuingCa {
                der: vec![0x30, 0x00],
                not_after: at,
                keep_until: Some(at - Duration::from_secs(60)),
            },
        ];
        store.save(&state).unwrap();
        assert_eq!(store.load("csi-trust").unwrap(), Some(state.clone()));

        // state.json as written before trust bundles existed: no issuing_cas key.
        let mut older: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(store.paths("csi-trust").state).unwrap())
                .unwrap();
        older.as_object_mut().unwrap().remove("issuing_cas");
        fs::write(store.paths("csi-trust").state, older.to_string()).unwrap();
        let loaded = store.load("csi-trust").unwrap().unwrap();
        assert!(loaded.issuing_cas.is_empty());
        // Without CAs nothing new is written either.
        store.save(&sample("csi-plain")).unwrap();
        let text = fs::read_to_string(store.paths("csi-plain").state).unwrap();
        assert!(!text.contains("issuing_cas"), "{text}");
    }

    #[test]
    fn volume_keys_are_safe_for_any_id() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for id in ["csi-abc", "../../etc", "a/b", "", "\0x"] {
            let p = store.paths(id);
            assert!(p.dir.starts_with(store.root().join("volumes")), "{id:?}");
            assert_eq!(p.dir.parent(), Some(store.root().join("volumes").as_path()));
            assert!(store.paths_by_key(&p.key).is_some());
        }
        assert_ne!(store.paths("a").key, store.paths("b").key);
        assert!(store.paths_by_key("../x").is_none());
    }

    #[test]
    fn mount_sources_name_their_volume_and_store() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let sa = Store::open(a.path()).unwrap();
        let sb = Store::open(b.path()).unwrap();
        let p = sa.paths("csi-1");
        let src = sa.mount_source(&p);
        assert_eq!(sa.key_from_mount_source(&src), Some(p.key.as_str()));
        assert_eq!(sb.key_from_mount_source(&src), None);
        assert_eq!(sa.key_from_mount_source("tmpfs"), None);
    }

    #[test]
    fn corrupt_or_future_state_is_reported_not_guessed() {
        assert!(decode(b"{").is_err());
        let mut state = sample("csi-1");
        state.version = 99;
        let err = decode(&serde_json::to_vec(&state).unwrap()).unwrap_err();
        assert!(err.contains("version 99"), "{err}");
    }

    #[test]
    fn remove_deletes_everything() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let state = sample("csi-9");
        store.save(&state).unwrap();
        let paths = store.paths("csi-9");
        fs::create_dir_all(&paths.files).unwrap();
        fs::write(paths.files.join("tls.crt"), b"x").unwrap();
        store.remove(&paths).unwrap();
        assert!(!paths.dir.exists());
        store.remove(&paths).unwrap();
        assert!(store.scan().unwrap().is_empty());
    }

    /// A tmpfs of `size` bytes on a fresh directory, lazily unmounted when dropped (also when a
    /// test panics). `None` when this process may not mount (the tests then skip).
    struct SmallFs {
        dir: tempfile::TempDir,
    }

    impl SmallFs {
        fn new(size: usize) -> Option<SmallFs> {
            if !crate::files::mount::can_mount_tmpfs() {
                eprintln!("skipped: needs root to mount tmpfs");
                return None;
            }
            let dir = tempfile::tempdir().unwrap();
            nix::mount::mount(
                Some("tmpfs"),
                dir.path(),
                Some("tmpfs"),
                nix::mount::MsFlags::empty(),
                Some(format!("size={size},mode=0700").as_str()),
            )
            .unwrap();
            Some(SmallFs { dir })
        }

        fn path(&self) -> &Path {
            self.dir.path()
        }

        /// Writes a file until the filesystem reports ENOSPC.
        fn fill(&self) {
            use std::io::Write;
            let mut f = fs::File::create(self.path().join("filler")).unwrap();
            let chunk = vec![0u8; 4096];
            loop {
                if let Err(e) = f.write_all(&chunk) {
                    assert_eq!(DiskFault::of(&e), Some(DiskFault::Full), "{e}");
                    return;
                }
            }
        }

        fn remount_read_only(&self) {
            nix::mount::mount(
                None::<&str>,
                self.path(),
                None::<&str>,
                nix::mount::MsFlags::MS_REMOUNT | nix::mount::MsFlags::MS_RDONLY,
                None::<&str>,
            )
            .unwrap();
        }
    }

    impl Drop for SmallFs {
        fn drop(&mut self) {
            let _ = nix::mount::umount2(self.dir.path(), nix::mount::MntFlags::MNT_DETACH);
        }
    }

    fn write_error_fault(result: Result<(), StoreError>) -> Option<DiskFault> {
        match result {
            Err(StoreError::Io { source, .. }) => DiskFault::of(&source),
            other => panic!("expected an I/O error, got {other:?}"),
        }
    }

    #[test]
    fn disk_faults_are_told_apart_from_other_io_errors() {
        let of = |code| DiskFault::of(&io::Error::from_raw_os_error(code));
        assert_eq!(of(libc::ENOSPC), Some(DiskFault::Full));
        assert_eq!(of(libc::EDQUOT), Some(DiskFault::Full));
        assert_eq!(of(libc::EROFS), Some(DiskFault::ReadOnly));
        assert_eq!(of(libc::EACCES), None);
        assert_eq!(DiskFault::of(&io::Error::other("x")), None);
    }

    #[test]
    fn a_first_save_on_a_full_data_root_leaves_no_volume_directory() {
        let Some(fs_) = SmallFs::new(256 * 1024) else {
            return;
        };
        let store = Store::open(fs_.path()).unwrap();
        let kept = sample("csi-kept");
        store.save(&kept).unwrap();
        fs_.fill();
        let fault = write_error_fault(store.save(&sample("csi-new")));
        assert_eq!(fault, Some(DiskFault::Full));
        assert!(
            !store.paths("csi-new").dir.exists(),
            "no trace of the new volume"
        );
        // The volume saved before the disk filled up is intact and still readable.
        assert_eq!(store.load("csi-kept").unwrap(), Some(kept.clone()));
        let mut changed = kept.clone();
        changed.last_revision += 1;
        assert_eq!(
            write_error_fault(store.save(&changed)),
            Some(DiskFault::Full)
        );
        assert_eq!(store.load("csi-kept").unwrap(), Some(kept));
        let names: Vec<_> = fs::read_dir(store.paths("csi-kept").dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            names,
            vec![std::ffi::OsString::from("state.json")],
            "no temporary file"
        );
    }

    #[test]
    fn a_read_only_data_root_opens_and_loads_but_refuses_writes() {
        let Some(fs_) = SmallFs::new(256 * 1024) else {
            return;
        };
        let store = Store::open(fs_.path()).unwrap();
        let kept = sample("csi-kept");
        store.save(&kept).unwrap();
        fs_.remount_read_only();
        // A restart while the data root is read-only must still find its volumes.
        let store = Store::open(fs_.path()).unwrap();
        assert_eq!(store.load("csi-kept").unwrap(), Some(kept.clone()));
        assert_eq!(store.scan().unwrap().len(), 1);
        assert_eq!(
            write_error_fault(store.save(&sample("csi-new"))),
            Some(DiskFault::ReadOnly)
        );
        assert!(!store.paths("csi-new").dir.exists());
    }
}
