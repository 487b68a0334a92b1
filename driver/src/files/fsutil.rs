//! Crash-safe file writes on persistent disk.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Replaces `path` with `contents` so that a crash at any moment leaves either the old or the new
/// file, never a torn one: write a temporary sibling, fsync it, rename it over `path`, fsync the
/// directory so the rename itself is durable.
pub(crate) fn atomic_write(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    write_then_rename(path, contents, mode, true)
}

/// Like [`atomic_write`] (readers see the old or the new contents, never a mix, also after the
/// process is killed), but without the two fsyncs that make it survive a power loss too.
///
/// For what only matters while the node keeps running: a volume's `state.json` describes files
/// in a tmpfs, and after a power loss that tmpfs is gone, so recovery removes the volume (kubelet
/// publishes it again) whatever the state says; a torn or empty `state.json` is read as
/// unreadable and removed the same way. A SIGKILL, an OOM kill or a crash of the driver leave the
/// page cache intact, so the campaign's kill -9 trials see every write. Each fsync is a device
/// flush on most disks; a publish used to make eight of them.
pub(crate) fn replace(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    write_then_rename(path, contents, mode, false)
}

fn write_then_rename(path: &Path, contents: &[u8], mode: u32, durable: bool) -> io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no parent"))?;
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        file.write_all(contents)?;
        if durable {
            file.sync_all()?;
        }
        fs::rename(&tmp, path)?;
        if durable {
            sync_dir(dir)?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Makes renames and removals inside `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates `dir` (and missing parents) with `mode` on the last component.
pub(crate) fn create_dir_mode(dir: &Path, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)?;
    use std::os::unix::fs::PermissionsExt;
    // chmod fails with EROFS on a read-only filesystem even when nothing would change, and a
    // driver restarting while its data root is read-only must still come up and serve.
    if fs::metadata(dir)?.permissions().mode() & 0o7777 == mode {
        return Ok(());
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(mode))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn both_writes_replace_contents_and_set_mode() {
        for write in [atomic_write, replace] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("state.json");
            write(&path, b"one", 0o600).unwrap();
            write(&path, b"two", 0o600).unwrap();
            assert_eq!(fs::read(&path).unwrap(), b"two");
            let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
            let leftovers: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
            assert_eq!(leftovers.len(), 1, "no temporary file may remain");
        }
    }
}
