//! The atomic `..data` layout kubelet uses for projected volumes, so that a pod never sees a
//! private key next to a certificate it does not belong to.
//!
//! ```text
//! dir/
//!   ..2026_11_23_10_00_00.123456789.1a2b3c4d/   one complete generation, never modified
//!     tls.key  tls.crt  ca.crt
//!   ..data -> ..2026_11_23_10_00_00.123456789.1a2b3c4d
//!   tls.key -> ..data/tls.key
//!   tls.crt -> ..data/tls.crt
//!   ca.crt  -> ..data/ca.crt
//! ```
//!
//! A new generation is written into a fresh directory, and a single rename() of a symlink over
//! `..data` switches every file at once. A reader that resolves `..data` once (or checks it did
//! not change around its reads, see [`read_all`]) always gets files of one generation.

use std::collections::BTreeSet;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use zeroize::Zeroizing;

/// The symlink that names the current generation.
const DATA: &str = "..data";
/// Where the next `..data` symlink is built before it is renamed into place.
const DATA_TMP: &str = "..data_tmp";
/// How often a read retries when publishes keep removing the generation it resolved.
const READ_ATTEMPTS: u32 = 100;

/// One file to publish. Its contents (possibly a private key) are wiped from memory on drop and
/// never printed by `Debug`.
#[derive(Clone)]
pub struct FileSpec {
    pub name: String,
    pub contents: Zeroizing<Vec<u8>>,
}

impl FileSpec {
    pub fn new(name: impl Into<String>, contents: impl Into<Vec<u8>>) -> Self {
        FileSpec {
            name: name.into(),
            contents: Zeroizing::new(contents.into()),
        }
    }
}

impl std::fmt::Debug for FileSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileSpec")
            .field("name", &self.name)
            .field("len", &self.contents.len())
            .finish_non_exhaustive()
    }
}

/// Why publishing or reading volume files failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError {
    #[error(
        "file name {name:?} is not allowed: {reason}; accepted: a plain file name without '/' or NUL, not \".\" or \"..\", not starting with \"..\", at most 255 bytes"
    )]
    InvalidName { name: String, reason: &'static str },
    #[error("file name {name:?} is given more than once; each published file needs its own name")]
    DuplicateName { name: String },
    #[error("{} is not a directory", dir.display())]
    NotADirectory { dir: PathBuf },
    #[error("no files have been published in {} yet (there is no ..data link)", dir.display())]
    NotPublished { dir: PathBuf },
    #[error("{name:?} is not one of the files published in {}", dir.display())]
    NoSuchFile { dir: PathBuf, name: String },
    #[error(
        "{} is in the way: it should be a symlink into ..data but is something else, so it was left alone",
        path.display()
    )]
    Unmanaged { path: PathBuf },
    #[error(
        "the files in {} were republished faster than they could be read ({attempts} attempts)",
        dir.display()
    )]
    Contended { dir: PathBuf, attempts: u32 },
    #[error("{step} {}: {source}", path.display())]
    Io {
        step: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_err<'a>(step: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> WriteError + 'a {
    move |source| WriteError::Io {
        step,
        path: path.to_path_buf(),
        source,
    }
}

/// Checks that `name` is a plain file name that cannot escape `dir` or collide with the layout's
/// own `..` entries.
pub(crate) fn validate_name(name: &str) -> Result<(), WriteError> {
    let reason = if name.is_empty() {
        Some("it is empty")
    } else if name == "." || name == ".." {
        Some("it names a directory")
    } else if name.starts_with("..") {
        Some("names starting with \"..\" are reserved for the ..data layout")
    } else if name.contains('/') {
        Some("it contains '/'")
    } else if name.contains('\0') {
        Some("it contains NUL")
    } else if name.len() > 255 {
        Some("it is longer than 255 bytes")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(WriteError::InvalidName {
            name: name.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

/// `..2026_11_23_10_00_00.123456789.<random>`: sorts by time for a human reading `ls -a`, unique
/// thanks to the random part even when the injected clock stands still.
fn generation_dir_name(now: SystemTime) -> String {
    let nanos: i128 = match now.duration_since(UNIX_EPOCH) {
        Ok(d) => i128::try_from(d.as_nanos()).unwrap_or(i128::MAX),
        Err(e) => -i128::try_from(e.duration().as_nanos()).unwrap_or(i128::MAX),
    };
    let stamp = match time::OffsetDateTime::from_unix_timestamp_nanos(nanos) {
        Ok(t) => format!(
            "{:04}_{:02}_{:02}_{:02}_{:02}_{:02}.{:09}",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            t.nanosecond()
        ),
        // Outside the calendar range `time` supports; the raw count still sorts and is unique.
        Err(_) => nanos.to_string(),
    };
    format!("..{stamp}.{:08x}", rand::random::<u32>())
}

/// Whether `name` is a generation directory this module created (as opposed to `..data`,
/// `..data_tmp`, or a published name).
fn is_generation_dir_name(name: &str) -> bool {
    name.strip_prefix("..")
        .and_then(|rest| rest.chars().next())
        .is_some_and(|c| c.is_ascii_digit() || c == '-')
}

fn symlink_target(name: &str) -> PathBuf {
    Path::new(DATA).join(name)
}

/// Publishes `files` into `dir` (which must exist) as one generation; see the module docs.
///
/// Files get mode 0440 and group `gid` (0400 when `gid` is None), owned by the current effective
/// user; their directory and `dir` get 0750 with group `gid` (0755 when None). Names from the
/// previous generation that are not in `files` disappear. `now` names the generation directory.
///
/// A crash at any point leaves the previous `..data` intact (or the new one complete), plus at
/// most an unreferenced generation directory and a stale `..data_tmp`, which the next publish
/// removes.
pub(crate) fn publish(
    dir: &Path,
    files: &[FileSpec],
    gid: Option<u32>,
    now: SystemTime,
) -> Result<(), WriteError> {
    let names = checked_names(files)?;
    let meta = fs::metadata(dir).map_err(io_err("inspecting volume directory", dir))?;
    if !meta.is_dir() {
        return Err(WriteError::NotADirectory {
            dir: dir.to_path_buf(),
        });
    }
    let access = Access::new(gid);
    access.fix_volume_dir(dir)?;

    let generation_name = generation_dir_name(now);
    let generation = dir.join(&generation_name);
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&generation)
        .map_err(io_err("creating generation directory", &generation))?;
    if let Err(e) = fill_generation(dir, &generation_name, files, &access) {
        // Nothing points at the new generation yet, so it can simply go.
        let _ = fs::remove_dir_all(&generation);
        return Err(e);
    }

    // The one step that switches readers from the old generation to the new one.
    let data = dir.join(DATA);
    fs::rename(dir.join(DATA_TMP), &data).map_err(io_err("switching link", &data))?;
    crate::files::fsutil::sync_dir(dir).map_err(io_err("syncing", dir))?;

    link_names(dir, &names)?;
    remove_old_generations(dir, &generation_name)
}

/// The names of `files`, each valid and none twice.
fn checked_names(files: &[FileSpec]) -> Result<BTreeSet<&str>, WriteError> {
    let mut names = BTreeSet::new();
    for file in files {
        validate_name(&file.name)?;
        if !names.insert(file.name.as_str()) {
            return Err(WriteError::DuplicateName {
                name: file.name.clone(),
            });
        }
    }
    Ok(names)
}

/// Who may read what [`publish`] writes: modes for directories and files, and their group.
struct Access {
    dir_mode: u32,
    file_mode: u32,
    group: Option<nix::unistd::Gid>,
}

impl Access {
    fn new(gid: Option<u32>) -> Access {
        let (dir_mode, file_mode) = if gid.is_some() {
            (0o750, 0o440)
        } else {
            (0o755, 0o400)
        };
        Access {
            dir_mode,
            file_mode,
            group: gid.map(nix::unistd::Gid::from_raw),
        }
    }

    /// The volume's own directory: its group (when one is asked for) and mode.
    fn fix_volume_dir(&self, dir: &Path) -> Result<(), WriteError> {
        // `dir` may be a mount point (a tmpfs root), which is why it is fixed up here rather
        // than created with the right mode.
        if self.group.is_some() {
            nix::unistd::chown(dir, None, self.group).map_err(|e| WriteError::Io {
                step: "setting the group of",
                path: dir.to_path_buf(),
                source: e.into(),
            })?;
        }
        fs::set_permissions(dir, fs::Permissions::from_mode(self.dir_mode))
            .map_err(io_err("setting permissions of", dir))
    }

    /// Owned by the current effective user, with the group asked for.
    fn chown(&self, path: &Path) -> Result<(), WriteError> {
        let owner = Some(nix::unistd::geteuid());
        nix::unistd::chown(path, owner, self.group).map_err(|e| WriteError::Io {
            step: "setting owner and group of",
            path: path.to_path_buf(),
            source: e.into(),
        })
    }
}

/// Writes every file into the (empty) generation directory `generation_name` of `dir`, syncs
/// it, and points a fresh `..data_tmp` at it.
fn fill_generation(
    dir: &Path,
    generation_name: &str,
    files: &[FileSpec],
    access: &Access,
) -> Result<(), WriteError> {
    let generation = dir.join(generation_name);
    for file in files {
        write_file(&generation.join(&file.name), &file.contents, access)?;
    }
    access.chown(&generation)?;
    fs::set_permissions(&generation, fs::Permissions::from_mode(access.dir_mode))
        .map_err(io_err("setting permissions of", &generation))?;
    crate::files::fsutil::sync_dir(&generation).map_err(io_err("syncing", &generation))?;

    let data_tmp = dir.join(DATA_TMP);
    remove_if_present(&data_tmp).map_err(io_err("removing stale link", &data_tmp))?;
    std::os::unix::fs::symlink(generation_name, &data_tmp)
        .map_err(io_err("creating link", &data_tmp))?;
    Ok(())
}

/// One file of a generation, complete and synced before anyone else may read it.
fn write_file(path: &Path, contents: &[u8], access: &Access) -> Result<(), WriteError> {
    // Created owner-only and widened only once complete, so no one else can read a
    // half-written file.
    let mut out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err("creating", path))?;
    out.write_all(contents).map_err(io_err("writing", path))?;
    access.chown(path)?;
    out.set_permissions(fs::Permissions::from_mode(access.file_mode))
        .map_err(io_err("setting permissions of", path))?;
    out.sync_all().map_err(io_err("syncing", path))
}

fn remove_if_present(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Makes the visible names match `names`: each a symlink to `..data/<name>`, nothing else left.
fn link_names(dir: &Path, names: &BTreeSet<&str>) -> Result<(), WriteError> {
    for name in names {
        let path = dir.join(name);
        let wanted = symlink_target(name);
        match fs::read_link(&path) {
            Ok(target) if target == wanted => {}
            Ok(_) => {
                // Swapped in with a rename so the name never disappears for a reader.
                // A short random name: the published name may already use all 255 bytes.
                let tmp = dir.join(format!("..link_tmp.{:08x}", rand::random::<u32>()));
                remove_if_present(&tmp).map_err(io_err("removing stale link", &tmp))?;
                std::os::unix::fs::symlink(&wanted, &tmp).map_err(io_err("creating link", &tmp))?;
                fs::rename(&tmp, &path).map_err(io_err("replacing link", &path))?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                std::os::unix::fs::symlink(&wanted, &path)
                    .map_err(io_err("creating link", &path))?;
            }
            Err(e) if e.kind() == io::ErrorKind::InvalidInput => {
                return Err(WriteError::Unmanaged { path });
            }
            Err(e) => return Err(io_err("inspecting", &path)(e)),
        }
    }
    for (name, _) in managed_links(dir)? {
        if !names.contains(name.as_str()) {
            let path = dir.join(&name);
            remove_if_present(&path).map_err(io_err("removing stale link", &path))?;
        }
    }
    Ok(())
}

/// The visible names: symlinks `name -> ..data/name` in `dir`.
fn managed_links(dir: &Path) -> Result<Vec<(String, PathBuf)>, WriteError> {
    let mut links = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err("listing", dir))? {
        let entry = entry.map_err(io_err("listing", dir))?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if name.starts_with("..") {
            continue;
        }
        let path = entry.path();
        match fs::read_link(&path) {
            Ok(target) if target == symlink_target(&name) => links.push((name, path)),
            _ => {}
        }
    }
    Ok(links)
}

fn remove_old_generations(dir: &Path, current: &str) -> Result<(), WriteError> {
    for entry in fs::read_dir(dir).map_err(io_err("listing", dir))? {
        let entry = entry.map_err(io_err("listing", dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name == current || !is_generation_dir_name(name) {
            continue;
        }
        let is_dir = entry
            .file_type()
            .map_err(io_err("inspecting", &entry.path()))?
            .is_dir();
        if is_dir {
            let path = entry.path();
            fs::remove_dir_all(&path).map_err(io_err("removing old generation", &path))?;
        }
    }
    // A crash while relinking can leave one of these behind.
    for entry in fs::read_dir(dir).map_err(io_err("listing", dir))? {
        let entry = entry.map_err(io_err("listing", dir))?;
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with("..link_tmp.")
        {
            let path = entry.path();
            remove_if_present(&path).map_err(io_err("removing stale link", &path))?;
        }
    }
    Ok(())
}

/// Reads `name` through `..data`, the way a pod does.
pub(crate) fn read(dir: &Path, name: &str) -> Result<Vec<u8>, WriteError> {
    let mut all = read_all(dir, &[name])?;
    Ok(all.pop().unwrap_or_default())
}

/// Reads several files from one generation, so that e.g. a key and its certificate always match
/// even while `publish` runs concurrently.
pub fn read_all(dir: &Path, names: &[&str]) -> Result<Vec<Vec<u8>>, WriteError> {
    for name in names {
        validate_name(name)?;
    }
    let data = dir.join(DATA);
    for _ in 0..READ_ATTEMPTS {
        // A generation directory is complete before `..data` points at it and never changes
        // afterwards, so files read inside one resolved generation belong together. The only
        // race is a concurrent publish deleting that generation; then resolve again.
        let generation = match fs::read_link(&data) {
            Ok(target) => dir.join(target),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(WriteError::NotPublished {
                    dir: dir.to_path_buf(),
                });
            }
            Err(e) => return Err(io_err("reading link", &data)(e)),
        };
        let mut contents = Vec::with_capacity(names.len());
        let mut vanished = false;
        for name in names {
            let path = generation.join(name);
            match fs::read(&path) {
                Ok(bytes) => contents.push(bytes),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    vanished = true;
                    break;
                }
                Err(e) => return Err(io_err("reading", &path)(e)),
            }
        }
        if !vanished {
            return Ok(contents);
        }
        if fs::symlink_metadata(&generation).is_ok() {
            // The generation is still there, so the file is simply not part of it.
            let missing = names.get(contents.len()).copied().unwrap_or_default();
            return Err(WriteError::NoSuchFile {
                dir: dir.to_path_buf(),
                name: missing.to_owned(),
            });
        }
    }
    Err(WriteError::Contended {
        dir: dir.to_path_buf(),
        attempts: READ_ATTEMPTS,
    })
}

/// The names currently published (the visible symlinks), sorted.
pub fn published_names(dir: &Path) -> Result<Vec<String>, WriteError> {
    let mut names: Vec<String> = managed_links(dir)?
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    names.sort();
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    /// Every entry of `dir`, hidden ones included, sorted.
    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    fn generation_dirs(dir: &Path) -> Vec<String> {
        entries(dir)
            .into_iter()
            .filter(|n| is_generation_dir_name(n))
            .collect()
    }

    #[test]
    fn publish_then_republish_replaces_files_and_removes_the_old_generation() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        // 2026-11-23 10:00:00.123456789 UTC
        let first = at(1_795_428_000) + Duration::from_nanos(123_456_789);
        publish(
            dir,
            &[
                FileSpec::new("tls.key", "key-1"),
                FileSpec::new("tls.crt", "cert-1"),
                FileSpec::new("old.txt", "gone soon"),
            ],
            None,
            first,
        )
        .unwrap();
        let gens = generation_dirs(dir);
        assert_eq!(gens.len(), 1);
        assert!(
            gens[0].starts_with("..2026_11_23_10_00_00.123456789."),
            "{}",
            gens[0]
        );
        assert_eq!(
            fs::read_link(dir.join("..data")).unwrap(),
            Path::new(&gens[0])
        );
        assert_eq!(read(dir, "tls.key").unwrap(), b"key-1");
        assert_eq!(fs::read(dir.join("old.txt")).unwrap(), b"gone soon");
        assert_eq!(
            published_names(dir).unwrap(),
            ["old.txt", "tls.crt", "tls.key"]
        );
        assert_eq!(mode(dir), 0o755);
        assert_eq!(mode(&dir.join(&gens[0])), 0o755);
        assert_eq!(
            mode(&dir.join("tls.key")),
            0o400,
            "owner-only without a group"
        );

        publish(
            dir,
            &[
                FileSpec::new("tls.key", "key-2"),
                FileSpec::new("tls.crt", "cert-2"),
                FileSpec::new("ca.crt", "ca-2"),
            ],
            None,
            first + Duration::from_secs(3600),
        )
        .unwrap();
        let new_gens = generation_dirs(dir);
        assert_eq!(new_gens.len(), 1, "old generation removed: {new_gens:?}");
        assert_ne!(new_gens, gens);
        assert_eq!(fs::read(dir.join("tls.key")).unwrap(), b"key-2");
        assert_eq!(fs::read(dir.join("tls.crt")).unwrap(), b"cert-2");
        assert_eq!(fs::read(dir.join("ca.crt")).unwrap(), b"ca-2");
        assert_eq!(
            published_names(dir).unwrap(),
            ["ca.crt", "tls.crt", "tls.key"]
        );
        assert!(
            fs::symlink_metadata(dir.join("old.txt")).is_err(),
            "stale name removed"
        );
        for name in ["ca.crt", "tls.crt", "tls.key"] {
            assert_eq!(
                fs::read_link(dir.join(name)).unwrap(),
                Path::new("..data").join(name)
            );
        }
        let mut expected = vec![
            "..data".to_owned(),
            new_gens[0].clone(),
            "ca.crt".into(),
            "tls.crt".into(),
            "tls.key".into(),
        ];
        expected.sort();
        assert_eq!(entries(dir), expected, "nothing else is left behind");
    }

    #[test]
    fn group_and_modes_follow_the_gid() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        // Our own group is always allowed, root or not.
        let gid = nix::unistd::getegid().as_raw();
        publish(dir, &[FileSpec::new("tls.key", "k")], Some(gid), at(1)).unwrap();
        let generation = dir.join(&generation_dirs(dir)[0]);
        for (path, want) in [
            (dir.to_path_buf(), 0o750),
            (generation.clone(), 0o750),
            (generation.join("tls.key"), 0o440),
        ] {
            let meta = fs::metadata(&path).unwrap();
            assert_eq!(
                meta.permissions().mode() & 0o7777,
                want,
                "{}",
                path.display()
            );
            assert_eq!(meta.gid(), gid, "{}", path.display());
            assert_eq!(meta.uid(), nix::unistd::geteuid().as_raw());
        }
    }

    #[test]
    fn files_get_a_foreign_group_when_root() {
        if !nix::unistd::geteuid().is_root() {
            println!("skipping files_get_a_foreign_group_when_root: needs root to chown");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        publish(dir, &[FileSpec::new("tls.key", "k")], Some(2000), at(1)).unwrap();
        let meta = fs::metadata(dir.join("tls.key")).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (0, 2000));
        assert_eq!(meta.permissions().mode() & 0o7777, 0o440);
        assert_eq!(fs::metadata(dir).unwrap().gid(), 2000);
    }

    #[test]
    fn invalid_names_are_rejected_before_anything_is_written() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        publish(dir, &[FileSpec::new("tls.crt", "v1")], None, at(1)).unwrap();
        let before = entries(dir);
        let long = "x".repeat(256);
        for bad in [
            "",
            ".",
            "..",
            "..data",
            "..hidden",
            "a/b",
            "/etc",
            "nul\0",
            long.as_str(),
        ] {
            let err = publish(
                dir,
                &[FileSpec::new("tls.crt", "v2"), FileSpec::new(bad, "x")],
                None,
                at(2),
            )
            .unwrap_err();
            assert!(
                matches!(err, WriteError::InvalidName { .. }),
                "{bad:?}: {err}"
            );
            assert!(err.to_string().contains("accepted"), "{err}");
        }
        let err = publish(
            dir,
            &[
                FileSpec::new("tls.crt", "v2"),
                FileSpec::new("tls.crt", "v3"),
            ],
            None,
            at(2),
        )
        .unwrap_err();
        assert!(matches!(err, WriteError::DuplicateName { .. }), "{err}");
        assert_eq!(entries(dir), before);
        assert_eq!(read(dir, "tls.crt").unwrap(), b"v1");
        assert!(matches!(
            read(dir, "../x"),
            Err(WriteError::InvalidName { .. })
        ));
        // Single leading dots are ordinary names.
        publish(dir, &[FileSpec::new(".hidden", "h")], None, at(3)).unwrap();
        assert_eq!(published_names(dir).unwrap(), [".hidden"]);
    }

    #[test]
    fn reads_report_what_is_missing() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        assert!(matches!(
            read(dir, "tls.crt"),
            Err(WriteError::NotPublished { .. })
        ));
        publish(dir, &[FileSpec::new("tls.crt", "c")], None, at(1)).unwrap();
        let err = read(dir, "tls.key").unwrap_err();
        assert!(
            matches!(&err, WriteError::NoSuchFile { name, .. } if name == "tls.key"),
            "{err}"
        );
        let file = dir.join("plain");
        fs::write(&file, b"x").unwrap();
        let err = publish(&file, &[FileSpec::new("a", "b")], None, at(1)).unwrap_err();
        assert!(matches!(err, WriteError::NotADirectory { .. }), "{err}");
    }

    #[test]
    fn a_foreign_file_in_the_way_is_left_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        fs::write(dir.join("tls.crt"), b"not ours").unwrap();
        let err = publish(dir, &[FileSpec::new("tls.crt", "c")], None, at(1)).unwrap_err();
        assert!(matches!(err, WriteError::Unmanaged { .. }), "{err}");
        assert_eq!(fs::read(dir.join("tls.crt")).unwrap(), b"not ours");
    }

    #[test]
    fn a_symlink_with_the_wrong_target_is_repointed() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let long = "k".repeat(255);
        publish(dir, &[FileSpec::new(long.as_str(), "v1")], None, at(1)).unwrap();
        fs::remove_file(dir.join(&long)).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", dir.join(&long)).unwrap();
        publish(dir, &[FileSpec::new(long.as_str(), "v2")], None, at(2)).unwrap();
        assert_eq!(
            fs::read_link(dir.join(&long)).unwrap(),
            Path::new("..data").join(&long)
        );
        assert_eq!(fs::read(dir.join(&long)).unwrap(), b"v2");
        assert_eq!(entries(dir).len(), 3, "{:?}", entries(dir));
    }

    #[test]
    fn debug_output_does_not_show_contents() {
        let spec = FileSpec::new("tls.key", "-----BEGIN PRIVATE KEY----- secret");
        let shown = format!("{spec:?}");
        assert!(
            shown.contains("tls.key") && !shown.contains("secret"),
            "{shown}"
        );
    }

    #[test]
    fn crash_leftovers_are_cleaned_by_the_next_publish() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        publish(dir, &[FileSpec::new("tls.crt", "v1")], None, at(1)).unwrap();
        let live = generation_dirs(dir)[0].clone();

        // A publish that died after writing its generation and its ..data_tmp link, but before
        // the rename, plus one that died while relinking a name.
        let orphan = "..1970_01_01_00_00_02.000000000.deadbeef";
        fs::create_dir(dir.join(orphan)).unwrap();
        fs::write(dir.join(orphan).join("tls.crt"), b"v2-partial").unwrap();
        std::os::unix::fs::symlink(orphan, dir.join("..data_tmp")).unwrap();
        std::os::unix::fs::symlink("..data/tls.crt", dir.join("..link_tmp.0badc0de")).unwrap();

        // Readers still see the previous generation.
        assert_eq!(read(dir, "tls.crt").unwrap(), b"v1");
        assert_eq!(fs::read_link(dir.join("..data")).unwrap(), Path::new(&live));

        publish(dir, &[FileSpec::new("tls.crt", "v3")], None, at(3)).unwrap();
        assert_eq!(read(dir, "tls.crt").unwrap(), b"v3");
        let gens = generation_dirs(dir);
        assert_eq!(gens.len(), 1, "{gens:?}");
        assert_ne!(gens[0], orphan);
        assert_ne!(gens[0], live);
        assert_eq!(
            entries(dir),
            [gens[0].clone(), "..data".to_owned(), "tls.crt".into()],
            "orphan generation, ..data_tmp and ..link_tmp.* are gone"
        );
    }

    /// Reads "key" and "cert" through their visible symlinks, as a pod would, and accepts the pair
    /// only if `..data` named the same generation before and after (generation names are never
    /// reused, so the symlinks resolved into that one generation).
    fn read_pair_through_links(dir: &Path) -> Option<(String, String)> {
        let before = fs::read_link(dir.join("..data")).ok()?;
        let key = fs::read_to_string(dir.join("key")).ok()?;
        let cert = fs::read_to_string(dir.join("cert")).ok()?;
        let after = fs::read_link(dir.join("..data")).ok()?;
        (before == after).then_some((key, cert))
    }

    #[test]
    fn concurrent_readers_never_see_a_key_and_cert_of_different_generations() {
        const GENERATIONS: u32 = 500;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let generation = |n: u32| {
            [
                FileSpec::new("key", format!("key generation {n}")),
                FileSpec::new("cert", format!("cert generation {n}")),
            ]
        };
        publish(&dir, &generation(0), None, at(0)).unwrap();

        let done = Arc::new(AtomicBool::new(false));
        let spawn_reader = |through_links: bool| {
            let (dir, done) = (dir.clone(), Arc::clone(&done));
            std::thread::spawn(move || {
                let (mut consistent, mut mismatches, mut last_seen) = (0u32, Vec::new(), 0u32);
                while !done.load(Ordering::Relaxed) {
                    let pair = if through_links {
                        read_pair_through_links(&dir)
                    } else {
                        read_all(&dir, &["key", "cert"]).ok().map(|v| {
                            let text = |b: &Vec<u8>| String::from_utf8(b.clone()).unwrap();
                            (text(&v[0]), text(&v[1]))
                        })
                    };
                    let Some((key, cert)) = pair else { continue };
                    let key_gen = key.strip_prefix("key generation ").unwrap().to_owned();
                    let cert_gen = cert.strip_prefix("cert generation ").unwrap().to_owned();
                    if key_gen == cert_gen {
                        consistent += 1;
                        let n: u32 = key_gen.parse().unwrap();
                        assert!(
                            n >= last_seen,
                            "generations went backwards: {n} after {last_seen}"
                        );
                        last_seen = n;
                    } else {
                        mismatches.push((key_gen, cert_gen));
                    }
                }
                (consistent, mismatches)
            })
        };
        let link_reader = spawn_reader(true);
        let snapshot_reader = spawn_reader(false);

        for n in 1..=GENERATIONS {
            // The same instant every time: uniqueness must not depend on the clock moving.
            publish(&dir, &generation(n), None, at(1)).unwrap();
        }
        done.store(true, Ordering::Relaxed);

        for (what, reader) in [("links", link_reader), ("read_all", snapshot_reader)] {
            let (consistent, mismatches) = reader.join().unwrap();
            assert!(
                mismatches.is_empty(),
                "{what}: mismatched pairs {mismatches:?}"
            );
            assert!(consistent > 0, "{what}: the reader never completed a read");
            println!("{what}: {consistent} consistent reads, 0 mismatches");
        }
        assert_eq!(
            read(&dir, "key").unwrap(),
            format!("key generation {GENERATIONS}").as_bytes()
        );
        assert_eq!(generation_dirs(&dir).len(), 1);
    }
}
