//! Hostile input against the real `certvol node` binary over its CSI socket: file-name attributes
//! that are paths, symbolic links planted at and above the target, targets outside kubelet's pods
//! directory and odd volume ids, a rogue cert-manager answering with a certificate for another
//! key or an 8 MiB one, the socket/mount/file modes, and a scan of a whole trace-level run for
//! keys, tokens and passwords. Each test checks what an operator would: the error the pod's
//! events would show, and that nothing was created, mounted or changed.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use certvol_driver::demo::kubelet::{InlineVolume, Kubelet, Pod};
use certvol_driver::spec::attrs::{CERT_MANAGER_PREFIX, CERTVOL_PREFIX, KEYS};
use certvol_e2e::apiserver::{ApiServer, EventType, Kind, Store};
use certvol_e2e::cluster::{Cluster, DRIVER_TOKEN, cm_volume};
use certvol_e2e::signer::{Ca, Step, apply_step, rfc3339};
use certvol_e2e::{Env, eventually, files_below, read_volume, read_volume_named, volume};
use certvol_e2e::{require_root, require_standin};
use certvol_proto::csi::v1 as csi;
use serde_json::Value;
use tonic::Code;

/// What a directory tree holds: every entry's relative path with its type and content (a file's
/// bytes, a link's target), to show that nothing in it changed.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for entry in std::fs::read_dir(&dir).expect("read dir").flatten() {
            let path = entry.path();
            let meta = std::fs::symlink_metadata(&path).expect("stat");
            let what = if meta.file_type().is_symlink() {
                format!("link -> {}", std::fs::read_link(&path).unwrap().display())
            } else if meta.is_dir() {
                todo.push(path.clone());
                format!("dir {:o}", meta.mode() & 0o7777)
            } else {
                let bytes = std::fs::read(&path).unwrap_or_default();
                format!("file {:o} {}", meta.mode() & 0o7777, hex::encode(bytes))
            };
            out.insert(path.strip_prefix(root).unwrap().to_path_buf(), what);
        }
    }
    out
}

fn is_mount_point(path: &Path) -> bool {
    let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    certvol_e2e::read_mounts()
        .iter()
        .any(|m| m.mount_point == path)
}

fn mount_tmpfs(at: &Path) {
    std::fs::create_dir_all(at).unwrap();
    nix::mount::mount(
        Some("e2e-outside"),
        at,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=64k"),
    )
    .unwrap();
    std::fs::write(at.join("data"), b"outside").unwrap();
}

/// Attributes that make a file-name attribute meaningful (its feature switched on), so that the
/// refusal is about the name and not about the feature being off.
fn enabling(prefix: &str, key: &str) -> Vec<(String, String)> {
    let on = |k: &str, v: &str| (format!("{prefix}{k}"), v.to_owned());
    match key {
        "pkcs12-filename" => vec![on("pkcs12-enable", "true")],
        "truststore-pkcs12-file" => vec![on("pkcs12-enable", "true")],
        "trust-bundle-file" => vec![on("trust-issuer-ca", "true")],
        _ => Vec::new(),
    }
}

#[tokio::test]
async fn file_name_attributes_that_are_paths_are_refused_and_leave_nothing() {
    require_root!();
    let mut env = Env::new();
    let _driver = env.start().await;
    let kubelet = env.kubelet();
    let keys: Vec<&str> = KEYS
        .iter()
        .copied()
        .filter(|k| k.ends_with("-file") || k.ends_with("-filename"))
        .collect();
    assert!(keys.len() >= 8, "file-name keys found: {keys:?}");
    let outside = env.path().join("outside-probe");
    std::fs::create_dir_all(&outside).unwrap();
    let before = snapshot(&outside);
    let bad = [
        "a/b",
        "..",
        "../x",
        "/etc/passwd",
        "tls\0.crt",
        "../outside-probe/x",
    ];
    let (mut refused, mut as_extension) = (0, 0);
    for prefix in [CERTVOL_PREFIX, CERT_MANAGER_PREFIX] {
        for key in &keys {
            let attribute = format!("{prefix}{key}");
            for value in bad {
                let pod = Pod::new("default", &format!("names-{refused}"));
                let mut vol = volume([]).with_secret([("pkcs12-password", "not-a-secret")]);
                for (k, v) in enabling(prefix, key) {
                    vol.attributes.insert(k, v);
                }
                vol.attributes.insert(attribute.clone(), value.to_owned());
                let err = kubelet.publish(&pod, &vol).await.unwrap_err();
                let message = err.message();
                assert_eq!(
                    err.code(),
                    Code::InvalidArgument,
                    "{attribute}={value:?}: {err}"
                );
                assert!(
                    message.contains(&attribute),
                    "{attribute}={value:?}: {message}"
                );
                if message.contains("certvol extension") {
                    // A certvol-only key under cert-manager's prefix is refused as such.
                    assert_eq!(prefix, CERT_MANAGER_PREFIX, "{message}");
                    as_extension += 1;
                } else {
                    assert!(
                        message.contains("plain file name"),
                        "{attribute}={value:?}: says what is accepted: {message}"
                    );
                }
                assert!(!kubelet.target_path(&pod, &vol).exists());
                refused += 1;
            }
        }
    }
    assert_eq!(refused, 2 * keys.len() * bad.len());
    env.assert_no_volume_left();
    assert!(env.issued().is_empty(), "nothing was signed");
    assert_eq!(snapshot(&outside), before, "nothing written outside");
    println!(
        "refused {refused} publishes ({as_extension} as certvol extensions under {CERT_MANAGER_PREFIX})"
    );

    // An empty value counts as unset, as in cert-manager: the default name, inside the volume.
    let pod = Pod::new("default", "empty-name");
    let vol = volume([("csi.cert-manager.io/certificate-file", "")]);
    let target = kubelet.publish(&pod, &vol).await.expect("publish");
    read_volume(&target).expect("default names tls.crt, tls.key, ca.crt");
    kubelet.unpublish(&pod, &vol).await.unwrap();
    env.assert_no_volume_left();
}

/// Oversized input (issue 13): a huge volume context, too many SANs, too many pass-through
/// annotations, and certvol's own annotation prefix are each refused with InvalidArgument naming
/// the attribute and the limit, and leave nothing behind.
#[tokio::test]
async fn oversized_or_reserved_input_is_refused_and_leaves_nothing() {
    require_root!();
    let mut env = Env::new();
    let _driver = env.start().await;
    let kubelet = env.kubelet();
    let blob = "x".repeat(80 * 1024);
    let names = (0..101)
        .map(|i| format!("n{i}.default.svc"))
        .collect::<Vec<_>>()
        .join(",");
    let many: Vec<(String, String)> = (0..40)
        .map(|i| (format!("example.com/a{i:02}"), "v".to_owned()))
        .collect();
    // (case, extra attributes, the attribute the error names, the limit it states)
    type Case<'a> = (&'a str, Vec<(String, String)>, &'a str, &'a str);
    let cases: Vec<Case> = vec![
        (
            "context",
            vec![("example.com/blob".into(), blob.clone())],
            "\"example.com/blob\"",
            "at most 65536 bytes",
        ),
        (
            "sans",
            vec![("csi.certvol.io/dns-names".into(), names)],
            "\"csi.certvol.io/dns-names\"",
            "at most 100 is accepted",
        ),
        (
            "annotations",
            many,
            "\"example.com/a32\"",
            "32 annotations, 8192 bytes",
        ),
        (
            "reserved",
            vec![("certvol.io/node-name".into(), "elsewhere".into())],
            "\"certvol.io/node-name\"",
            "reserves",
        ),
    ];
    for (name, extra, attribute, limit) in cases {
        let pod = Pod::new("default", &format!("big-{name}"));
        let mut vol = volume([]);
        vol.attributes.extend(extra);
        let err = kubelet.publish(&pod, &vol).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{name}: {err}");
        let message = err.message();
        assert!(
            message.contains(attribute) && message.contains(limit),
            "{name}: {message}"
        );
        assert!(!message.contains(&blob[..1024]), "{name}: echoes the value");
        assert!(!kubelet.target_path(&pod, &vol).exists(), "{name}");
    }
    env.assert_no_volume_left();
    assert!(env.issued().is_empty(), "nothing was signed");
}

/// The node's floor and ceiling on durations and its share of volumes per pod are the
/// operator's: flags, which the attributes cannot lift.
#[tokio::test]
async fn durations_and_volumes_per_pod_outside_the_node_limits_are_refused() {
    require_root!();
    let mut env = Env::new();
    let _driver = env
        .start_with(
            &[
                "--min-duration",
                "1h",
                "--max-duration",
                "720h",
                "--max-volumes-per-pod",
                "2",
            ],
            &[],
        )
        .await;
    let kubelet = env.kubelet();
    // (duration, the words the error must say)
    for (duration, words) in [
        (
            "10m",
            "is shorter than the minimum 1h this node allows (--min-duration)",
        ),
        (
            "721h",
            "is longer than the maximum 720h this node allows (--max-duration)",
        ),
    ] {
        let pod = Pod::new("default", &format!("d-{}", duration.replace('h', "x")));
        let vol = volume([("csi.cert-manager.io/duration", duration)]);
        let err = kubelet.publish(&pod, &vol).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{duration}: {err}");
        assert!(
            err.message().contains(&format!(
                "csi.cert-manager.io/duration \"{duration}\" {words}"
            )),
            "{duration}: {}",
            err.message()
        );
        assert!(!kubelet.target_path(&pod, &vol).exists());
    }
    // Unset, the default 2160h is over this node's 720h: the message says so.
    let pod = Pod::new("default", "d-default");
    let err = kubelet.publish(&pod, &volume([])).await.unwrap_err();
    assert!(
        err.message().contains("(not set, so the default 2160h)"),
        "{}",
        err.message()
    );
    env.assert_no_volume_left();
    assert!(env.issued().is_empty(), "nothing was signed");

    let pod = Pod::new("default", "greedy");
    let vols: Vec<_> = (0..3)
        .map(|i| {
            let mut v = volume([("csi.cert-manager.io/duration", "24h")]);
            v.name = format!("tls-{i}");
            v
        })
        .collect();
    kubelet.publish(&pod, &vols[0]).await.unwrap();
    kubelet.publish(&pod, &vols[1]).await.unwrap();
    let err = kubelet.publish(&pod, &vols[2]).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    assert!(
        err.message()
            .contains("pod default/greedy already has 2 certvol volumes on this node"),
        "{}",
        err.message()
    );
    assert!(!kubelet.target_path(&pod, &vols[2]).exists());
    assert_eq!(env.issued().len(), 2);
    kubelet.unpublish(&pod, &vols[0]).await.unwrap();
    kubelet.publish(&pod, &vols[2]).await.unwrap();
}

#[tokio::test]
async fn symlinks_at_or_above_the_target_are_refused_and_the_outside_is_untouched() {
    require_root!();
    let mut env = Env::new();
    let _driver = env.start().await;
    let kubelet = env.kubelet();
    let outside = env.path().join("outside");
    std::fs::create_dir_all(outside.join("kubernetes.io~csi/tls")).unwrap();
    std::fs::write(outside.join("passwd"), b"root:x:0:0::/root:/bin/sh\n").unwrap();
    // A mount where the link above the target leads: an unpublish through the link would take
    // it down.
    let outside_mount = outside.join("kubernetes.io~csi/tls/mount");
    mount_tmpfs(&outside_mount);
    let before = snapshot(&outside);
    let vol = volume([]);

    // At the target: the mount directory itself is a link.
    let at = Pod::new("default", "link-at");
    let target = kubelet.target_path(&at, &vol);
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(&outside, &target).unwrap();
    let err = kubelet
        .node()
        .node_publish_volume(kubelet.publish_request(&at, &vol))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    assert!(err.message().contains("symbolic link"), "{}", err.message());

    // Above it: the pod's volumes directory is a link to a directory outside kubelet's tree.
    let above = Pod::new("default", "link-above");
    let pod_dir = env.pods_dir.join(&above.uid);
    std::fs::create_dir_all(&pod_dir).unwrap();
    std::os::unix::fs::symlink(&outside, pod_dir.join("volumes")).unwrap();
    let err = kubelet
        .node()
        .node_publish_volume(kubelet.publish_request(&above, &vol))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    let real = std::fs::canonicalize(&outside).unwrap();
    assert!(
        err.message().contains("symbolic link")
            && err.message().contains(&real.display().to_string()),
        "names the link and where it leads: {}",
        err.message()
    );
    let err = kubelet.unpublish(&above, &vol).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");

    // Unpublish at the link: refused, and nothing behind the link is unmounted or removed.
    let err = kubelet
        .node()
        .node_unpublish_volume(csi::NodeUnpublishVolumeRequest {
            volume_id: certvol_driver::demo::kubelet::volume_id(&at.uid, &vol.name),
            target_path: target.display().to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    assert!(
        std::fs::symlink_metadata(&target)
            .unwrap()
            .file_type()
            .is_symlink()
    );

    assert_eq!(
        snapshot(&outside),
        before,
        "the outside directory is untouched"
    );
    assert!(is_mount_point(&outside_mount), "the outside mount stays");
    env.assert_no_volume_left();
    assert!(env.issued().is_empty());
}

/// Unpublish of a volume certvol does not know (kubelet repeats unpublish after restarts) used to
/// unmount whatever was at the target: a link at the last component led it to any mount on the
/// node, and any mount at a target under the pods directory was taken for certvol's.
#[tokio::test]
async fn unpublish_of_an_unknown_volume_unmounts_nothing_certvol_did_not_mount() {
    require_root!();
    let mut env = Env::new();
    let _driver = env.start().await;
    let kubelet = env.kubelet();
    let vol = volume([]);
    let unpublish = |pod: &Pod| csi::NodeUnpublishVolumeRequest {
        volume_id: certvol_driver::demo::kubelet::volume_id(&pod.uid, &vol.name),
        target_path: kubelet.target_path(pod, &vol).display().to_string(),
    };

    // A link at the target to a mount elsewhere on the node.
    let outside_mount = env.path().join("outside/mnt");
    mount_tmpfs(&outside_mount);
    let linked = Pod::new("default", "link-to-mount");
    let target = kubelet.target_path(&linked, &vol);
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(&outside_mount, &target).unwrap();
    let err = kubelet
        .node()
        .node_unpublish_volume(unpublish(&linked))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    assert!(
        err.message().contains("target_path")
            && err.message().contains(&target.display().to_string())
            && err.message().contains("symbolic link"),
        "{}",
        err.message()
    );
    assert!(
        is_mount_point(&outside_mount),
        "the mount behind the link stays"
    );
    assert_eq!(
        std::fs::read(outside_mount.join("data")).unwrap(),
        b"outside"
    );

    // A mount at the target that certvol did not make: answered (kubelet must be able to
    // finish), and left mounted with its contents.
    let foreign = Pod::new("default", "foreign-at-target");
    let target = kubelet.target_path(&foreign, &vol);
    mount_tmpfs(&target);
    kubelet
        .node()
        .node_unpublish_volume(unpublish(&foreign))
        .await
        .unwrap();
    assert!(is_mount_point(&target), "the foreign mount stays");
    assert_eq!(std::fs::read(target.join("data")).unwrap(), b"outside");
    assert!(
        env.logs()
            .contains("the target holds a mount certvol did not make"),
        "the refusal is logged"
    );
    env.assert_no_volume_left();
}

/// Publish used to take any mount at the target for its own bind and answer OK, so the pod got
/// whatever was mounted there instead of its certificate.
#[tokio::test]
async fn publish_over_a_foreign_mount_is_refused_and_leaves_it_alone() {
    require_root!();
    let mut env = Env::new();
    let _driver = env.start().await;
    let kubelet = env.kubelet();
    let vol = volume([]);
    let pod = Pod::new("default", "foreign-publish");
    let target = kubelet.target_path(&pod, &vol);
    mount_tmpfs(&target);
    let before = snapshot(&target);

    let err = kubelet.publish(&pod, &vol).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
    assert!(
        err.message().contains(&target.display().to_string())
            && err.message().contains("not this volume's certvol bind")
            && err.message().contains("e2e-outside"),
        "names the target and the mount: {}",
        err.message()
    );
    assert!(is_mount_point(&target), "the foreign mount stays");
    assert_eq!(snapshot(&target), before, "and is unchanged");
    env.assert_no_volume_left();
    assert!(env.issued().is_empty(), "nothing issued");

    // Once the mount is gone, kubelet's retry publishes the volume.
    nix::mount::umount(&target).unwrap();
    let published = kubelet.publish(&pod, &vol).await.unwrap();
    read_volume(&published).unwrap();
    kubelet.unpublish(&pod, &vol).await.unwrap();
    env.assert_no_volume_left();
}

#[tokio::test]
async fn targets_outside_the_pods_dir_and_odd_volume_ids_are_refused_unless_configured() {
    require_root!();
    let mut env = Env::new();
    let driver = env.start().await;
    let kubelet = env.kubelet();
    let vol = volume([]);
    let pod = Pod::new("default", "outside");
    let good = kubelet.publish_request(&pod, &vol);
    std::fs::create_dir_all(Path::new(&good.target_path).parent().unwrap()).unwrap();

    // An /etc-like directory: a file, an empty directory (unpublish removes empty target
    // directories) and a mount (unpublish unmounts targets).
    let etc = env.path().join("etc");
    std::fs::create_dir_all(etc.join("ssl")).unwrap();
    std::fs::write(etc.join("passwd"), b"root:x:0:0::/root:/bin/sh\n").unwrap();
    mount_tmpfs(&etc.join("mnt"));
    let before = snapshot(&etc);
    let pods = env.pods_dir.display().to_string();
    let targets = [
        etc.join("ssl"),
        etc.join("mnt"),
        env.pods_dir.join("../../etc/ssl"),
        env.pods_dir.clone(),
        PathBuf::from("/etc"),
        PathBuf::from("relative/mount"),
    ];
    for target in &targets {
        let mut req = good.clone();
        req.target_path = target.display().to_string();
        let err = kubelet.node().node_publish_volume(req).await.unwrap_err();
        assert_eq!(
            err.code(),
            Code::InvalidArgument,
            "{}: {err}",
            target.display()
        );
        let message = err.message().to_owned();
        assert!(message.contains("target_path"), "{message}");
        let lexical = !target.to_string_lossy().contains("..") && target.is_absolute();
        if lexical {
            assert!(
                message.contains(&target.display().to_string())
                    && message.contains(&pods)
                    && message.contains("--kubelet-dir"),
                "names the value, the pods directory and the flag: {message}"
            );
        }
        let err = kubelet
            .node()
            .node_unpublish_volume(csi::NodeUnpublishVolumeRequest {
                volume_id: good.volume_id.clone(),
                target_path: target.display().to_string(),
            })
            .await
            .unwrap_err();
        assert_eq!(
            err.code(),
            Code::InvalidArgument,
            "{}: {err}",
            target.display()
        );
    }
    assert_eq!(
        snapshot(&etc),
        before,
        "nothing created, unmounted or removed"
    );
    assert!(is_mount_point(&etc.join("mnt")));
    assert!(Path::new("/etc/passwd").exists());

    let long = "a".repeat(129);
    let ids = ["../../etc", "a/b", "csi-\0", "-x", "csi-é", long.as_str()];
    for id in ids {
        let mut req = good.clone();
        req.volume_id = id.to_owned();
        let err = kubelet.node().node_publish_volume(req).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{id:?}: {err}");
        assert!(
            err.message().contains("volume_id") && err.message().contains("accepted"),
            "{}",
            err.message()
        );
        let err = kubelet
            .node()
            .node_unpublish_volume(csi::NodeUnpublishVolumeRequest {
                volume_id: id.to_owned(),
                target_path: good.target_path.clone(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{id:?}: {err}");
    }
    assert!(!Path::new(&good.target_path).exists());
    env.assert_no_volume_left();
    assert!(env.issued().is_empty());

    // A node whose kubelet keeps pods elsewhere says so with --kubelet-dir; then that directory
    // is accepted and the default one is not.
    drop(driver);
    let moved = env.path().join("var/lib/k0s/kubelet");
    std::fs::create_dir_all(moved.join("pods")).unwrap();
    let moved_arg = moved.display().to_string();
    let _driver = env.start_with(&["--kubelet-dir", &moved_arg], &[]).await;
    let k0s = Kubelet::connect(&env.socket, &moved.join("pods")).unwrap();
    let target = k0s
        .publish(&pod, &vol)
        .await
        .expect("publish under --kubelet-dir");
    assert!(target.starts_with(&moved));
    read_volume(&target).expect("a consistent volume");
    let other = Pod::new("default", "default-dir");
    let err = kubelet.publish(&other, &vol).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    assert!(err.message().contains(&moved_arg), "{}", err.message());
    k0s.unpublish(&pod, &vol).await.unwrap();
    env.assert_no_volume_left();
}

/// A CertificateRequest as a rogue (or broken) cert-manager answers it: approved and Ready with
/// `certificate` and `ca` as given.
fn rogue_answer(store: &Store, namespace: &str, name: &str, certificate: &str, ca: &str) {
    let now = rfc3339(time::OffsetDateTime::now_utc());
    store
        .update_status(Kind::CertificateRequest, namespace, name, |obj| {
            apply_step(obj, &Step::Approve, &now);
            apply_step(
                obj,
                &Step::Issue {
                    certificate: certificate.to_owned(),
                    ca: Some(ca.to_owned()),
                },
                &now,
            );
        })
        .expect("write the rogue status");
}

/// A leaf signed by `ca` for a key that is not the node's: the CSR of the request with its public
/// key swapped for a fresh one.
fn leaf_for_another_key(ca: &Ca, spec: &Value) -> String {
    let other = rcgen::KeyPair::generate().unwrap();
    let csr = rcgen::CertificateParams::new(vec!["rogue.default.svc".to_owned()])
        .unwrap()
        .serialize_request(&other)
        .unwrap()
        .pem()
        .unwrap();
    let mut spec = spec.clone();
    spec["request"] = Value::String(B64.encode(csr));
    ca.sign(&spec, time::OffsetDateTime::now_utc()).unwrap()
}

#[tokio::test]
async fn a_rogue_signer_cannot_plant_a_foreign_or_oversized_certificate() {
    require_root!();
    let mut env = Env::new();
    let api = ApiServer::start().await.expect("API stand-in");
    certvol_e2e::cluster::install_csidriver(&api);
    let kubeconfig = env.path().join("kubeconfig");
    api.write_kubeconfig(&kubeconfig, DRIVER_TOKEN).unwrap();
    let kubeconfig = kubeconfig.display().to_string();
    let _driver = env
        .start_with(
            &["--issuer", "cert-manager", "--issue-timeout", "20s"],
            &[("KUBECONFIG", kubeconfig.as_str())],
        )
        .await;
    let kubelet = env.kubelet();
    let ca = Ca::generate(0).unwrap();
    let mut events = api.store().subscribe();

    // No Signer: this loop answers every new request the way the test says.
    let huge = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let rogue = {
        let (store, huge, ca_pem) = (api.store(), huge.clone(), ca.pem().to_owned());
        tokio::spawn(async move {
            while let Ok(ev) = events.recv().await {
                if ev.kind != Kind::CertificateRequest || ev.event_type != EventType::Added {
                    continue;
                }
                let meta = &ev.object["metadata"];
                let ns = meta["namespace"].as_str().unwrap_or_default();
                let name = meta["name"].as_str().unwrap_or_default();
                let leaf = leaf_for_another_key(&ca, &ev.object["spec"]);
                let certificate = if huge.load(std::sync::atomic::Ordering::SeqCst) {
                    // 8 MiB of certificate-looking PEM.
                    leaf.repeat((8 << 20) / leaf.len() + 1)
                } else {
                    leaf
                };
                rogue_answer(&store, ns, name, &certificate, &ca_pem);
            }
        })
    };

    // A certificate for another key: refused, nothing written.
    let vol = cm_volume("ca-issuer", []);
    let pod = certvol_e2e::cluster::standin_pod(&api, "default", "foreign");
    let started = Instant::now();
    let err = kubelet.publish(&pod, &vol).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
    assert!(
        err.message().contains("unusable certificate")
            && err
                .message()
                .contains("does not match the private key this node generated"),
        "{}",
        err.message()
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "no waiting it out"
    );
    assert!(!kubelet.target_path(&pod, &vol).exists());
    env.assert_no_volume_left();

    // An 8 MiB certificate: the watch event is over the client's limit, the relist brings the
    // request, and the issuance fails naming the field and the limit.
    huge.store(true, std::sync::atomic::Ordering::SeqCst);
    let before = api.requests().len();
    let pod = certvol_e2e::cluster::standin_pod(&api, "default", "oversized");
    let started = Instant::now();
    let err = kubelet.publish(&pod, &vol).await.unwrap_err();
    let took = started.elapsed();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
    assert!(
        err.message().contains("status.certificate is")
            && err
                .message()
                .contains("more than the 1048576 bytes certvol accepts"),
        "{}",
        err.message()
    );
    assert!(err.message().len() < 1024, "the message stays short");
    assert!(!kubelet.target_path(&pod, &vol).exists());
    env.assert_no_volume_left();
    let logs = env.logs();
    assert!(
        logs.contains("larger than 4194304 bytes"),
        "the dropped watch names the limit"
    );

    // No busy loop: a handful of list/watch rounds, then quiet.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let requests = api.requests();
    let during = &requests[before..];
    let reads = during
        .iter()
        .filter(|r| r.verb == "list" || r.verb == "watch")
        .count();
    println!(
        "oversized: failed after {took:?}; {} API requests since ({reads} list/watch)",
        during.len()
    );
    assert!(reads <= 12, "list/watch requests: {reads}: {during:?}");
    let quiet = requests.len();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        api.requests().len() <= quiet + 2,
        "requests keep coming: {} more",
        api.requests().len() - quiet
    );
    rogue.abort();
}

#[tokio::test]
async fn socket_mounts_and_file_modes_are_locked_down() {
    require_root!();
    let mut env = Env::new();
    let _driver = env.start_with(&["--tmpfs-size", "256Ki"], &[]).await;
    let kubelet = env.kubelet();
    let socket = std::fs::metadata(&env.socket).unwrap();
    assert_eq!(socket.permissions().mode() & 0o777, 0o600, "CSI socket");
    assert_eq!(socket.uid(), 0);

    let vol = volume([]);
    let plain = Pod::new("default", "no-group");
    let mut grouped = Pod::new("default", "grouped");
    grouped.fs_group = Some(2000);
    for (pod, mode, gid) in [(&plain, 0o400, 0), (&grouped, 0o440, 2000)] {
        let target = kubelet.publish(pod, &vol).await.unwrap();
        for name in ["tls.key", "tls.crt", "ca.crt"] {
            let meta = std::fs::metadata(target.join(name)).unwrap();
            assert_eq!(
                (meta.permissions().mode() & 0o777, meta.gid()),
                (mode, gid),
                "{}/{name}",
                pod.name
            );
        }
        let mounts = env.mounts();
        let bind = mounts.iter().find(|m| m.mount_point == target).unwrap();
        let state = env.state(pod, &vol).unwrap();
        let mem = env.store().paths(&state.volume_id).mem;
        let tmpfs = mounts.iter().find(|m| m.mount_point == mem).unwrap();
        for m in [bind, tmpfs] {
            assert_eq!(m.fs_type, "tmpfs", "{m:?}");
            for opt in ["nodev", "nosuid", "noexec", "size=256k"] {
                assert!(
                    m.has_option(opt),
                    "{} lacks {opt}: {m:?}",
                    m.mount_point.display()
                );
            }
        }
        assert!(bind.has_option("ro"), "{bind:?}");
    }
    for pod in [&plain, &grouped] {
        kubelet.unpublish(pod, &vol).await.unwrap();
    }
    env.assert_no_volume_left();
}

/// The forms a private key could leak in: each 64-character line of its PEM body, its DER in
/// base64 without line breaks, and its DER in hex.
fn key_needles(key_pem: &str) -> Vec<(String, String)> {
    let key = certvol_driver::x509::keys::PrivateKey::from_pem(key_pem).expect("key parses");
    let der = key.pkcs8_der();
    let mut needles = vec![
        ("key DER (base64)".to_owned(), B64.encode(der)),
        ("key DER (hex)".to_owned(), hex::encode(der)),
    ];
    for (i, line) in key_pem
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() >= 32)
        .enumerate()
    {
        needles.push((format!("key PEM line {i}"), line.to_owned()));
    }
    needles
}

#[tokio::test]
async fn no_key_token_or_password_in_a_whole_trace_run() {
    require_root!();
    let mut env = Env::new();
    let cluster = Cluster::start(env.path()).await;
    let standin = require_standin!(cluster, "needs the stand-in's token registry");
    let _driver = env
        .start_cert_manager(
            &cluster,
            &["--use-token-request", "--log-level", "trace"],
            &[],
        )
        .await;
    let ns = cluster.namespace();
    let mut pod = cluster.create_pod(&ns, "scan-0").await;
    let token = format!("e2e-pod-token-{:032x}", rand::random::<u128>());
    standin.api.add_token(
        &token,
        &format!("system:serviceaccount:{ns}:{}", pod.service_account),
        &["system:serviceaccounts", "system:authenticated"],
        "sa-uid-scan",
    );
    pod.token = Some(token.clone());
    let password = format!("pw-{:032x}", rand::random::<u128>());
    let vol: InlineVolume = cm_volume(
        &cluster.issuer_name(),
        [
            ("csi.certvol.io/duration", "6s"),
            ("csi.cert-manager.io/pkcs12-enable", "true"),
        ],
    )
    .with_secret([("pkcs12-password", password.as_str())]);
    let kubelet = env.kubelet();
    let target = kubelet.publish(&pod, &vol).await.expect("publish");
    let first = read_volume_named(&target, "tls.crt", "tls.key", "ca.crt").unwrap();
    assert!(target.join("keystore.p12").exists());

    // A renewal (6 s certificate), with the pod's token again from kubelet's republish.
    kubelet.publish(&pod, &vol).await.expect("republish");
    let renewed = eventually(Duration::from_secs(20), || {
        read_volume(&target)
            .ok()
            .filter(|f| f.leaf.serial_hex != first.leaf.serial_hex)
    })
    .await
    .expect("renewed within 20 s");
    assert_ne!(renewed.key_pem, first.key_pem, "a fresh key at renewal");

    let mut needles = vec![
        ("token".to_owned(), token.clone()),
        ("PKCS#12 password".to_owned(), password.clone()),
    ];
    needles.extend(key_needles(&first.key_pem));
    needles.extend(key_needles(&renewed.key_pem));

    // Scanned while the volume is there (the tmpfs holds state the driver wrote) and again after
    // unpublish (the log of the whole run).
    let scan = |env: &Env| -> (Vec<String>, Vec<String>, Vec<String>) {
        let files = files_below(&env.data_root);
        let (mut scanned, mut skipped, mut hits) = (Vec::new(), Vec::new(), Vec::new());
        for f in files {
            let rel = f
                .strip_prefix(&env.data_root)
                .unwrap()
                .display()
                .to_string();
            // The key material itself, which the pod must get: in the volume's tmpfs only.
            let in_tmpfs = rel.contains("/mem/");
            let key_material = rel.contains("/mem/keys/")
                || f.file_name()
                    .is_some_and(|n| n == "tls.key" || n == "keystore.p12");
            if in_tmpfs && key_material {
                skipped.push(rel);
                continue;
            }
            let bytes = std::fs::read(&f).unwrap_or_default();
            for (what, needle) in &needles {
                if bytes.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                    hits.push(format!("{what} in {rel}"));
                }
            }
            scanned.push(rel);
        }
        let logs = env.logs();
        for (what, needle) in &needles {
            if logs.contains(needle.as_str()) {
                hits.push(format!("{what} in the driver log"));
            }
        }
        (scanned, skipped, hits)
    };
    let (scanned, skipped, hits) = scan(&env);
    println!(
        "while published: scanned {scanned:#?}\nskipped (key material in the volume tmpfs) {skipped:#?}"
    );
    assert!(
        scanned.iter().any(|f| f.ends_with("state.json"))
            && scanned.iter().any(|f| f.ends_with("tls.crt"))
            && skipped.iter().any(|f| f.ends_with("tls.key")),
        "the scan reaches state and the volume's files"
    );
    assert!(hits.is_empty(), "secrets found: {hits:#?}");
    // The scan finds what it looks for: a token and a key line planted in the data root.
    let planted = env.data_root.join("planted.txt");
    let key_line = &needles.last().expect("key needles").1;
    std::fs::write(&planted, format!("x{token}x\n{key_line}\n")).unwrap();
    let (_, _, found) = scan(&env);
    std::fs::remove_file(&planted).unwrap();
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(
        found.iter().all(|h| h.ends_with("in planted.txt")),
        "{found:?}"
    );

    kubelet.unpublish(&pod, &vol).await.unwrap();
    env.assert_no_volume_left();
    let (scanned, _, hits) = scan(&env);
    let log_bytes = env.logs().len();
    println!(
        "after unpublish: {} files, {log_bytes} bytes of trace log, {} needles: {} hits",
        scanned.len(),
        needles.len(),
        hits.len()
    );
    assert!(
        env.logs().contains("TRACE"),
        "the run logged at trace level"
    );
    assert!(hits.is_empty(), "secrets found: {hits:#?}");
}
