use super::*;
use std::fs;
use std::path::PathBuf;

use nix::errno::Errno;
use nix::mount::MntFlags;

use super::dir::record_key;
use super::kernel::BIND_STAGING;
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
