//! The real `certvol node` binary driven over its CSI socket as kubelet drives it: publish,
//! idempotency, concurrency, argument checks, fsGroup, renewal atomicity, clean-up, SIGKILL at
//! every crash point, SIGTERM.

use std::collections::HashMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use certvol_driver::base::crashpoint;
use certvol_driver::demo::kubelet::{InlineVolume, Pod, volume_id};
use certvol_driver::files::store::Phase;
use certvol_e2e::require_root;
use certvol_e2e::{Env, PairReader, ReaderReport, eventually, read_volume, volume};
use certvol_proto::csi::v1 as csi;
use tonic::Code;

fn ours(env: &Env) -> Vec<String> {
    env.mounts()
        .into_iter()
        .filter(|m| m.source.starts_with("certvol:"))
        .map(|m| m.mount_point.display().to_string())
        .collect()
}

#[tokio::test]
async fn publish_writes_a_matching_key_certificate_and_ca_on_a_private_tmpfs() {
    require_root!();
    let mut env = Env::new();
    // The local CA's policy allows IP SANs only in ranges the operator names.
    let _driver = env
        .start_with(&["--local-allow-ip-cidr", "10.0.0.0/24"], &[])
        .await;
    let kubelet = env.kubelet();
    let pod = Pod::new("shop", "web-0");
    let vol = volume([
        ("csi.certvol.io/common-name", "${POD_NAME}"),
        ("csi.certvol.io/ip-sans", "10.0.0.7"),
        (
            "csi.certvol.io/uri-sans",
            "spiffe://cluster.local/ns/${POD_NAMESPACE}/sa/${SERVICE_ACCOUNT_NAME}",
        ),
        ("csi.certvol.io/duration", "2h"),
    ]);
    let target = kubelet.publish(&pod, &vol).await.expect("publish");

    let files = read_volume(&target).expect("consistent volume");
    assert_eq!(files.leaf.dns_names, vec!["web-0.shop.svc".to_string()]);
    assert!(
        files.leaf.subject.contains("CN=web-0"),
        "{}",
        files.leaf.subject
    );
    assert_eq!(
        files.leaf.ip_addresses,
        vec!["10.0.0.7".parse::<std::net::IpAddr>().unwrap()]
    );
    assert_eq!(
        files.leaf.uris,
        vec!["spiffe://cluster.local/ns/shop/sa/default".to_string()]
    );
    assert_eq!(files.leaf.key_algorithm, "ECDSA P-256");
    let lifetime = files
        .leaf
        .not_after
        .duration_since(files.leaf.not_before)
        .unwrap();
    assert!(
        lifetime <= Duration::from_secs(7200) && lifetime >= Duration::from_secs(7100),
        "{lifetime:?}"
    );
    assert!(
        files.key_pem.starts_with("-----BEGIN PRIVATE KEY-----"),
        "PKCS#8 is the default encoding for ECDSA, as in cert-manager"
    );

    // Without fsGroup the key is the owner's alone.
    let meta = std::fs::metadata(target.join("tls.key")).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o400);
    assert_eq!(
        std::fs::metadata(target.join("tls.crt"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o400
    );
    // The ..data layout: visible names are symlinks into the current timestamped directory.
    assert_eq!(
        std::fs::read_link(target.join("tls.key")).unwrap(),
        Path::new("..data/tls.key")
    );

    // The target is a read-only bind of a size-limited nodev,nosuid,noexec tmpfs.
    let mounts = env.mounts();
    let bind = mounts
        .iter()
        .find(|m| m.mount_point == target)
        .expect("target mounted");
    assert_eq!(bind.fs_type, "tmpfs");
    for opt in ["ro", "nodev", "nosuid", "noexec"] {
        assert!(bind.has_option(opt), "target lacks {opt}: {bind:?}");
    }
    assert!(bind.super_options.contains("size=4096k"), "{bind:?}");
    let err = std::fs::write(target.join("evil"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc_erofs()));

    // State records the certificate and never the key.
    let state = env.state(&pod, &vol).expect("state");
    assert_eq!(state.phase, Phase::Published);
    assert_eq!(
        state.current.as_ref().unwrap().serial,
        files.leaf.serial_hex
    );
    let raw = std::fs::read_to_string(env.store().paths(&state.volume_id).state).unwrap();
    assert!(!raw.contains("PRIVATE KEY"));
    let key_b64: String = files
        .key_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    assert!(!raw.contains(&key_b64[..40]));
}

fn libc_erofs() -> i32 {
    nix::errno::Errno::EROFS as i32
}

#[tokio::test]
async fn cert_manager_keys_work_verbatim_and_key_types_follow_attributes() {
    require_root!();
    let mut env = Env::new();
    // Names outside the pods' namespaces: the operator allows them to the local CA.
    let _driver = env
        .start_with(&["--local-allow-dns", "*.example"], &[])
        .await;
    let kubelet = env.kubelet();
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str, &'a str);
    let cases: &[Case] = &[
        (
            "cm-rsa",
            &[
                ("csi.cert-manager.io/issuer-name", "ca"),
                ("csi.cert-manager.io/dns-names", "a.example"),
            ],
            "RSA 2048",
            "-----BEGIN RSA PRIVATE KEY-----",
        ),
        (
            "ed",
            &[
                ("csi.certvol.io/issuer-name", "local"),
                ("csi.certvol.io/dns-names", "b.example"),
                ("csi.certvol.io/key-algorithm", "Ed25519"),
            ],
            "Ed25519",
            "-----BEGIN PRIVATE KEY-----",
        ),
        (
            "p384",
            &[
                ("csi.certvol.io/issuer-name", "local"),
                ("csi.certvol.io/dns-names", "c.example"),
                ("csi.certvol.io/key-size", "384"),
                ("csi.certvol.io/key-encoding", "PKCS8"),
                ("csi.certvol.io/certificate-file", "cert.pem"),
                ("csi.certvol.io/privatekey-file", "key.pem"),
                ("csi.certvol.io/ca-file", "root.pem"),
            ],
            "ECDSA P-384",
            "-----BEGIN PRIVATE KEY-----",
        ),
    ];
    for (name, attrs, alg, pem_header) in cases {
        let pod = Pod::new("default", name);
        let vol = InlineVolume::new("tls", attrs.iter().copied());
        let target = kubelet
            .publish(&pod, &vol)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let files = if *name == "p384" {
            certvol_e2e::read_volume_named(&target, "cert.pem", "key.pem", "root.pem")
        } else {
            read_volume(&target)
        }
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(files.leaf.key_algorithm, *alg, "{name}");
        assert!(
            files.key_pem.starts_with(pem_header),
            "{name}: {}",
            &files.key_pem[..40]
        );
        let names: Vec<String> = std::fs::read_dir(&target)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with(".."))
            .collect();
        assert_eq!(names.len(), 3, "{name}: {names:?}");
    }
}

#[tokio::test]
async fn republish_is_idempotent_and_another_target_is_refused() {
    require_root!();
    let mut env = Env::new();
    let _driver = env.start().await;
    let kubelet = env.kubelet();
    let pod = Pod::new("default", "idem");
    let vol = volume([]);
    let target = kubelet.publish(&pod, &vol).await.unwrap();
    let first = read_volume(&target).unwrap().leaf.serial_hex;
    for _ in 0..3 {
        kubelet
            .publish(&pod, &vol)
            .await
            .expect("repeated publish is OK");
    }
    assert_eq!(
        read_volume(&target).unwrap().leaf.serial_hex,
        first,
        "no new issuance"
    );
    assert_eq!(env.issued().len(), 1);

    // Same volume id, other target.
    let mut req = kubelet.publish_request(&pod, &vol);
    let other = target
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("other/mount");
    std::fs::create_dir_all(other.parent().unwrap()).unwrap();
    req.target_path = other.display().to_string();
    let err = kubelet.node().node_publish_volume(req).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
    assert!(
        err.message().contains("already published at"),
        "{}",
        err.message()
    );
    assert!(!other.exists());

    // Same volume, changed attributes.
    let changed = volume([("csi.certvol.io/duration", "3h")]);
    let err = kubelet.publish(&pod, &changed).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err}");
    assert_eq!(read_volume(&target).unwrap().leaf.serial_hex, first);
}

#[tokio::test]
async fn concurrent_publishes_of_one_volume_issue_once_and_never_expose_a_partial_mount() {
    require_root!();
    let mut env = Env::new();
    let _driver = env.start().await;
    let kubelet = env.kubelet();
    let pod = Pod::new("default", "racy");
    // RSA 3072 keeps the first publish busy long enough for the others to pile up behind it.
    let vol = volume([
        ("csi.certvol.io/key-algorithm", "RSA"),
        ("csi.certvol.io/key-size", "3072"),
    ]);
    let mut calls = Vec::new();
    for _ in 0..8 {
        let (k, p, v) = (kubelet.clone(), pod.clone(), vol.clone());
        calls.push(tokio::spawn(async move { k.publish(&p, &v).await }));
    }
    let mut targets = Vec::new();
    for c in calls {
        targets.push(c.await.unwrap().expect("every concurrent publish succeeds"));
    }
    let files = read_volume(&targets[0]).unwrap();
    assert_eq!(files.leaf.key_algorithm, "RSA 3072");
    assert_eq!(env.issued().len(), 1, "exactly one issuance");
    assert_eq!(
        ours(&env).len(),
        2,
        "one tmpfs and one bind: {:?}",
        ours(&env)
    );

    // Other volumes proceed in parallel with each other.
    let mut calls = Vec::new();
    for i in 0..6 {
        let (k, p, v) = (
            kubelet.clone(),
            Pod::new("default", &format!("par-{i}")),
            volume([]),
        );
        calls.push(tokio::spawn(async move {
            k.publish(&p, &v).await.map(|t| (p, t))
        }));
    }
    for c in calls {
        let (_, t) = c.await.unwrap().unwrap();
        read_volume(&t).unwrap();
    }
    assert_eq!(env.issued().len(), 7);
}

#[tokio::test]
async fn bad_attributes_are_invalid_argument_naming_the_attribute_and_leave_nothing() {
    require_root!();
    let mut env = Env::new();
    let _driver = env.start().await;
    let kubelet = env.kubelet();
    let cases: &[(&[(&str, &str)], &str)] = &[
        (
            &[("csi.certvol.io/key-size", "1024")],
            "csi.certvol.io/key-size",
        ),
        (
            &[("csi.certvol.io/duration", "-1h")],
            "csi.certvol.io/duration",
        ),
        (
            &[
                ("csi.certvol.io/duration", "1h"),
                ("csi.certvol.io/renew-before", "2h"),
            ],
            "renew-before",
        ),
        (
            &[("csi.certvol.io/dns-namez", "x")],
            "csi.certvol.io/dns-namez",
        ),
        (
            &[("csi.certvol.io/privatekey-file", "../escape")],
            "csi.certvol.io/privatekey-file",
        ),
        (
            &[("csi.certvol.io/ip-sans", "300.1.1.1")],
            "csi.certvol.io/ip-sans",
        ),
        (
            &[("csi.certvol.io/common-name", "${POD_NAMEZ}")],
            "csi.certvol.io/common-name",
        ),
    ];
    for (i, (extra, attribute)) in cases.iter().enumerate() {
        let pod = Pod::new("default", &format!("bad-{i}"));
        let vol = volume(extra.iter().copied());
        let err = kubelet.publish(&pod, &vol).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{attribute}: {err}");
        assert!(
            err.message().contains(attribute),
            "{attribute}: {}",
            err.message()
        );
        assert!(
            !kubelet.target_path(&pod, &vol).exists(),
            "{attribute}: target left behind"
        );
        assert!(
            env.state(&pod, &vol).is_none(),
            "{attribute}: state left behind"
        );
    }
    // A missing issuer name.
    let pod = Pod::new("default", "no-issuer");
    let vol = InlineVolume::new("tls", [("csi.certvol.io/dns-names", "x.example")]);
    let err = kubelet.publish(&pod, &vol).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("issuer-name"), "{}", err.message());

    assert!(ours(&env).is_empty(), "no mounts: {:?}", ours(&env));
    assert_eq!(
        std::fs::read_dir(env.data_root.join("volumes"))
            .unwrap()
            .count(),
        0
    );
    assert!(env.issued().is_empty());
    let log = env.logs();
    assert!(
        log.contains("CSI call failed") && log.contains("NodePublishVolume"),
        "failed RPCs are logged"
    );
}

#[tokio::test]
async fn csi_argument_checks_and_identity() {
    require_root!();
    let mut env = Env::new();
    let _driver = env.start().await;
    let kubelet = env.kubelet();
    let pod = Pod::new("default", "args");
    let vol = volume([]);
    let good = kubelet.publish_request(&pod, &vol);
    std::fs::create_dir_all(Path::new(&good.target_path).parent().unwrap()).unwrap();
    use csi::volume_capability::{AccessType, BlockVolume, access_mode::Mode};
    type Mutation = Box<dyn Fn(&mut csi::NodePublishVolumeRequest)>;
    let mutations: Vec<(&str, Mutation)> = vec![
        ("volume_id", Box::new(|r| r.volume_id.clear())),
        ("target_path", Box::new(|r| r.target_path.clear())),
        (
            "volume_capability",
            Box::new(|r| r.volume_capability = None),
        ),
        (
            "block",
            Box::new(|r| {
                r.volume_capability.as_mut().unwrap().access_type =
                    Some(AccessType::Block(BlockVolume {}))
            }),
        ),
        (
            "access_mode",
            Box::new(|r| {
                r.volume_capability
                    .as_mut()
                    .unwrap()
                    .access_mode
                    .as_mut()
                    .unwrap()
                    .mode = Mode::MultiNodeMultiWriter as i32
            }),
        ),
        ("read-only", Box::new(|r| r.readonly = false)),
        (
            "ephemeral",
            Box::new(|r| {
                r.volume_context.remove("csi.storage.k8s.io/ephemeral");
            }),
        ),
        (
            "volume_mount_group",
            Box::new(|r| {
                if let Some(AccessType::Mount(m)) =
                    r.volume_capability.as_mut().unwrap().access_type.as_mut()
                {
                    m.volume_mount_group = "staff".into();
                }
            }),
        ),
    ];
    for (field, mutate) in mutations {
        let mut req = good.clone();
        mutate(&mut req);
        let err = kubelet.node().node_publish_volume(req).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{field}: {err}");
        assert!(err.message().contains(field), "{field}: {}", err.message());
    }
    assert!(!Path::new(&good.target_path).exists());

    let err = kubelet
        .node()
        .node_unpublish_volume(csi::NodeUnpublishVolumeRequest {
            volume_id: String::new(),
            target_path: "/x".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = kubelet
        .node()
        .node_stage_volume(csi::NodeStageVolumeRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented);

    let info = kubelet
        .identity()
        .get_plugin_info(csi::GetPluginInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.name, "csi.certvol.io");
    assert_eq!(info.vendor_version, env!("CARGO_PKG_VERSION"));
    let caps = kubelet
        .node()
        .node_get_capabilities(csi::NodeGetCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner();
    let types: Vec<i32> = caps
        .capabilities
        .iter()
        .filter_map(|c| match &c.r#type {
            Some(csi::node_service_capability::Type::Rpc(rpc)) => Some(rpc.r#type),
            _ => None,
        })
        .collect();
    assert_eq!(
        types,
        vec![
            csi::node_service_capability::rpc::Type::VolumeMountGroup as i32,
            csi::node_service_capability::rpc::Type::GetVolumeStats as i32,
            csi::node_service_capability::rpc::Type::VolumeCondition as i32,
        ]
    );
    let node = kubelet
        .node()
        .node_get_info(csi::NodeGetInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(node.node_id, "e2e-node");
    let sock = std::fs::metadata(&env.socket).unwrap();
    assert_eq!(
        sock.permissions().mode() & 0o777,
        0o600,
        "socket is private"
    );
}

#[tokio::test]
async fn fs_group_makes_files_group_readable() {
    require_root!();
    let mut env = Env::new();
    let _driver = env.start().await;
    let kubelet = env.kubelet();
    let mut pod = Pod::new("default", "grouped");
    pod.fs_group = Some(2000);
    let target = kubelet.publish(&pod, &volume([])).await.unwrap();
    for name in ["tls.key", "tls.crt", "ca.crt"] {
        let meta = std::fs::metadata(target.join(name)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o440, "{name}");
        assert_eq!(meta.gid(), 2000, "{name}");
    }
    // The fs-group attribute wins over kubelet's volume_mount_group.
    let mut pod2 = Pod::new("default", "attr-group");
    pod2.fs_group = Some(2000);
    let target2 = kubelet
        .publish(&pod2, &volume([("csi.certvol.io/fs-group", "3000")]))
        .await
        .unwrap();
    let meta = std::fs::metadata(target2.join("tls.key")).unwrap();
    assert_eq!(
        (meta.permissions().mode() & 0o777, meta.gid()),
        (0o440, 3000)
    );
    // A non-root process in group 3000 could traverse to the key.
    let dir = std::fs::metadata(&target2).unwrap();
    assert_eq!(dir.gid(), 3000);
    assert_eq!(dir.permissions().mode() & 0o050, 0o050);
}

#[tokio::test]
async fn renewal_swaps_files_atomically_under_a_concurrent_reader_and_prunes_requests() {
    require_root!();
    let mut env = Env::new();
    let _driver = env.start().await;
    let kubelet = env.kubelet();
    let pod = Pod::new("default", "renewing");
    let vol = volume([("csi.certvol.io/duration", "6s")]);
    let target = kubelet.publish(&pod, &vol).await.unwrap();
    let first = read_volume(&target).unwrap().leaf.serial_hex;

    let reader = PairReader::start(&target);
    // Two renewals: at about 4 s and 8 s.
    let renewed = eventually(Duration::from_secs(20), || {
        let s = env.state(&pod, &vol)?;
        (s.current.as_ref()?.revision >= 3).then_some(s)
    })
    .await;
    let ReaderReport {
        reads,
        serials,
        errors: bad,
    } = reader.stop();
    let renewed = renewed.expect("two renewals within 20 s");
    assert!(
        bad.is_empty(),
        "a reader saw {} inconsistent reads, e.g. {:?}",
        bad.len(),
        bad.first()
    );
    assert!(reads > 50, "reader made {reads} reads");
    assert!(serials.len() >= 3, "reader saw {serials:?}");
    let now = read_volume(&target).unwrap();
    assert_ne!(now.leaf.serial_hex, first);
    // Request history 1: only the current request is kept.
    assert_eq!(renewed.requests.len(), 1, "{:?}", renewed.requests);
    // Pruning follows the state save.
    let pruned = eventually(Duration::from_secs(5), || {
        (env.issued().len() <= 2).then_some(())
    })
    .await;
    assert!(pruned.is_some(), "old requests pruned: {:?}", env.issued());
    // Only the current timestamped directory remains.
    let data_dirs: Vec<_> = std::fs::read_dir(&target)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("..") && n != "..data")
        .collect();
    assert_eq!(data_dirs.len(), 1, "{data_dirs:?}");
}

#[tokio::test]
async fn renew_false_disables_renewal_and_reuse_private_key_keeps_the_key() {
    require_root!();
    let mut env = Env::new();
    let _driver = env.start().await;
    let kubelet = env.kubelet();
    let fixed = Pod::new("default", "no-renew");
    let vol_fixed = volume([
        ("csi.certvol.io/duration", "3s"),
        ("csi.certvol.io/renew", "false"),
    ]);
    let t_fixed = kubelet.publish(&fixed, &vol_fixed).await.unwrap();
    let reuse = Pod::new("default", "reuse");
    let vol_reuse = volume([
        ("csi.certvol.io/duration", "3s"),
        ("csi.certvol.io/reuse-private-key", "true"),
    ]);
    let t_reuse = kubelet.publish(&reuse, &vol_reuse).await.unwrap();
    let fixed_serial = std::fs::read(t_fixed.join("tls.crt")).unwrap();
    let key_before = std::fs::read(t_reuse.join("tls.key")).unwrap();
    let cert_before = std::fs::read(t_reuse.join("tls.crt")).unwrap();
    let renewed = eventually(Duration::from_secs(10), || {
        let s = env.state(&reuse, &vol_reuse)?;
        (s.current.as_ref()?.revision >= 2).then_some(())
    })
    .await;
    assert!(renewed.is_some(), "reuse volume renewed");
    assert_eq!(
        std::fs::read(t_reuse.join("tls.key")).unwrap(),
        key_before,
        "same key"
    );
    assert_ne!(
        std::fs::read(t_reuse.join("tls.crt")).unwrap(),
        cert_before,
        "new certificate"
    );
    assert_eq!(
        std::fs::read(t_fixed.join("tls.crt")).unwrap(),
        fixed_serial,
        "renew=false: untouched"
    );
    assert_eq!(
        env.state(&fixed, &vol_fixed)
            .unwrap()
            .current
            .unwrap()
            .revision,
        1
    );
}

#[tokio::test]
async fn unpublish_removes_mounts_target_and_state_and_is_idempotent() {
    require_root!();
    let mut env = Env::new();
    let _driver = env.start().await;
    let kubelet = env.kubelet();
    let pod = Pod::new("default", "bye");
    let vol = volume([]);
    let target = kubelet.publish(&pod, &vol).await.unwrap();
    assert_eq!(ours(&env).len(), 2);
    kubelet.unpublish(&pod, &vol).await.unwrap();
    assert!(!target.exists());
    assert!(ours(&env).is_empty(), "{:?}", ours(&env));
    assert!(env.state(&pod, &vol).is_none());
    assert_eq!(
        std::fs::read_dir(env.data_root.join("volumes"))
            .unwrap()
            .count(),
        0
    );
    assert!(env.issued().is_empty(), "issuer requests deleted");
    // Again, and for a volume never seen.
    kubelet
        .unpublish(&pod, &vol)
        .await
        .expect("repeat unpublish is OK");
    kubelet
        .unpublish(&Pod::new("x", "never"), &vol)
        .await
        .expect("unknown volume is OK");
    // The same pod can publish again afterwards.
    let target = kubelet.publish(&pod, &vol).await.unwrap();
    read_volume(&target).unwrap();
}

/// Kills the driver at `point` during a publish, restarts it, lets kubelet retry, and checks the
/// volume is consistent, issued once, and leaks nothing.
async fn crash_during_publish(point: &str) {
    let mut env = Env::new();
    let mut driver = env.start_with(&[], &[(crashpoint::ENV, point)]).await;
    let kubelet = env.kubelet();
    let pod = Pod::new("default", "crashy");
    let vol = volume([]);
    let err = kubelet
        .publish(&pod, &vol)
        .await
        .expect_err("the driver dies mid-publish");
    assert!(
        matches!(
            err.code(),
            Code::Unavailable | Code::Unknown | Code::Internal | Code::Cancelled
        ),
        "{point}: {err}"
    );
    driver
        .wait_exit(Duration::from_secs(10))
        .expect("driver died");
    assert!(
        driver.log_text().contains(point),
        "{point}: crash point reached"
    );

    let _driver = env.start().await;
    let target = kubelet
        .publish(&pod, &vol)
        .await
        .unwrap_or_else(|e| panic!("{point}: retry: {e}"));
    let files = read_volume(&target).unwrap_or_else(|e| panic!("{point}: {e}"));
    let state = env.state(&pod, &vol).unwrap();
    assert_eq!(state.phase, Phase::Published, "{point}");
    let current = state.current.unwrap();
    assert_eq!(
        current.serial, files.leaf.serial_hex,
        "{point}: state agrees with files"
    );
    assert_eq!(
        env.issued(),
        vec![current.request_name.clone()],
        "{point}: one request, adopted not refiled"
    );
    assert_eq!(
        ours(&env).len(),
        2,
        "{point}: exactly tmpfs + bind: {:?}",
        ours(&env)
    );

    kubelet.unpublish(&pod, &vol).await.unwrap();
    assert!(ours(&env).is_empty(), "{point}: {:?}", ours(&env));
}

#[tokio::test]
async fn sigkill_at_every_publish_step_then_restart_recovers() {
    require_root!();
    for point in crashpoint::Point::ALL
        .iter()
        .map(|p| p.name())
        .filter(|p| p.starts_with("publish:"))
    {
        crash_during_publish(point).await;
    }
}

#[tokio::test]
async fn sigkill_during_unpublish_is_finished_by_the_next_start() {
    require_root!();
    for point in ["unpublish:marked", "unpublish:unbound"] {
        let mut env = Env::new();
        let mut driver = env.start_with(&[], &[(crashpoint::ENV, point)]).await;
        let kubelet = env.kubelet();
        let pod = Pod::new("default", "leaving");
        let vol = volume([]);
        let target = kubelet.publish(&pod, &vol).await.unwrap();
        assert!(kubelet.unpublish(&pod, &vol).await.is_err(), "{point}");
        driver.wait_exit(Duration::from_secs(10)).unwrap();
        let _driver = env.start().await;
        // Recovery finishes the removal even before kubelet retries.
        assert!(ours(&env).is_empty(), "{point}: {:?}", ours(&env));
        assert!(env.state(&pod, &vol).is_none(), "{point}");
        assert!(!target.exists(), "{point}");
        kubelet
            .unpublish(&pod, &vol)
            .await
            .expect("kubelet's retry succeeds");
    }
}

#[tokio::test]
async fn sigkill_at_every_renewal_step_then_restart_resumes_without_duplicates() {
    require_root!();
    for point in crashpoint::Point::ALL
        .iter()
        .map(|p| p.name())
        .filter(|p| p.starts_with("renew:"))
    {
        let mut env = Env::new();
        let mut driver = env.start_with(&[], &[(crashpoint::ENV, point)]).await;
        let kubelet = env.kubelet();
        let pod = Pod::new("default", "renew-crash");
        let vol = volume([("csi.certvol.io/duration", "4s")]);
        let target = kubelet.publish(&pod, &vol).await.unwrap();
        let first = read_volume(&target).unwrap().leaf.serial_hex;
        driver
            .wait_exit(Duration::from_secs(15))
            .unwrap_or_else(|_| panic!("{point}: renewal crash"));
        // Files stay readable and consistent while the driver is down.
        read_volume(&target).unwrap_or_else(|e| panic!("{point}: during outage: {e}"));

        let _driver = env.start().await;
        let state = eventually(Duration::from_secs(15), || {
            let s = env.state(&pod, &vol)?;
            (s.current.as_ref()?.revision >= 2 && s.pending.is_none()).then_some(s)
        })
        .await
        .unwrap_or_else(|| panic!("{point}: renewal finished after restart"));
        let files = read_volume(&target).unwrap_or_else(|e| panic!("{point}: {e}"));
        assert_ne!(files.leaf.serial_hex, first, "{point}");
        let current = state.current.unwrap();
        assert_eq!(
            current.serial, files.leaf.serial_hex,
            "{point}: state agrees with files"
        );
        assert_eq!(
            ours(&env).len(),
            2,
            "{point}: no leaked mounts: {:?}",
            ours(&env)
        );
        // Revision 2 was issued once (adopted after the crash), revision 1 pruned.
        let issued = env.issued();
        assert!(
            issued.iter().all(|n| state.requests.contains(n)
                || n.ends_with(&format!("-{}", current.revision + 1))),
            "{point}: {issued:?} vs {:?}",
            state.requests
        );
        kubelet.unpublish(&pod, &vol).await.unwrap();
    }
}

#[tokio::test]
async fn restart_recovers_volumes_without_reissuing_and_removes_orphans() {
    require_root!();
    let mut env = Env::new();
    let mut driver = env.start().await;
    let kubelet = env.kubelet();
    let mut serials = HashMap::new();
    let pods: Vec<Pod> = (0..3)
        .map(|i| Pod::new("default", &format!("keep-{i}")))
        .collect();
    let vol = volume([]);
    for pod in &pods {
        let t = kubelet.publish(pod, &vol).await.unwrap();
        serials.insert(
            pod.name.clone(),
            (t.clone(), read_volume(&t).unwrap().leaf.serial_hex),
        );
    }
    driver.kill9();

    // A tmpfs left under the data root by a crash before any state was written.
    let store = env.store();
    let orphan = store.paths("csi-orphan");
    std::fs::create_dir_all(&orphan.mem).unwrap();
    nix::mount::mount(
        Some(store.mount_source(&orphan).as_str()),
        &orphan.mem,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=64k"),
    )
    .unwrap();
    // One target bind that went missing (e.g. unmounted by hand).
    let (lost_target, _) = &serials["keep-0"];
    nix::mount::umount(lost_target).unwrap();

    let _driver = env.start().await;
    assert!(!orphan.dir.exists(), "orphan tmpfs removed");
    assert_eq!(ours(&env).len(), 6, "3 tmpfs + 3 binds: {:?}", ours(&env));
    for pod in &pods {
        let (t, serial) = &serials[&pod.name];
        let files = read_volume(t).unwrap();
        assert_eq!(
            &files.leaf.serial_hex, serial,
            "{}: not re-issued",
            pod.name
        );
        kubelet
            .publish(pod, &vol)
            .await
            .expect("republish after restart is OK");
    }
    assert_eq!(env.issued().len(), 3, "no re-issuance");
}

/// kubelet bind-mounts a volume's subPaths into `<pods>/<uid>/volume-subpaths/...`; those binds
/// carry the volume's tmpfs source too. Recovery used to take every mount with its source for
/// its own and unmounted them (the container's subPath went empty); it now sweeps only its own
/// mounts below the data root and its binds at kubelet's target paths.
#[tokio::test]
async fn restart_leaves_kubelets_subpath_binds_alone_and_sweeps_orphan_target_binds() {
    require_root!();
    let mut env = Env::new();
    let mut driver = env.start().await;
    let kubelet = env.kubelet();
    let vol = volume([]);
    let pod = Pod::new("default", "subpath");
    let target = kubelet.target_path(&pod, &vol);
    kubelet.publish(&pod, &vol).await.unwrap();
    let cert = std::fs::read(target.join("tls.crt")).unwrap();

    // What kubelet does for `subPath: tls.crt`: a bind of the file (its link resolved).
    let subpath = env
        .pods_dir
        .join(&pod.uid)
        .join("volume-subpaths")
        .join(&vol.name)
        .join("app/0");
    std::fs::create_dir_all(subpath.parent().unwrap()).unwrap();
    std::fs::write(&subpath, b"").unwrap();
    let bind = |src: &Path, at: &Path| {
        nix::mount::mount(
            Some(src),
            at,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .unwrap();
    };
    bind(&target.join("tls.crt"), &subpath);
    // And a bind of certvol's at a target path that no volume claims (its state was lost):
    // certvol's to sweep.
    let stray = Pod::new("default", "stray");
    let stray_target = kubelet.target_path(&stray, &vol);
    std::fs::create_dir_all(&stray_target).unwrap();
    bind(&target, &stray_target);
    assert_eq!(ours(&env).len(), 4, "{:?}", ours(&env));

    driver.kill9();
    let _driver = env.start().await;
    let left = ours(&env);
    assert!(
        left.contains(&subpath.display().to_string()),
        "the subPath bind stays: {left:?}"
    );
    assert_eq!(
        std::fs::read(&subpath).unwrap(),
        cert,
        "and still shows the file"
    );
    assert!(
        !left.contains(&stray_target.display().to_string()),
        "the orphan target bind is swept: {left:?}"
    );
    assert_eq!(left.len(), 3, "tmpfs, target bind, subPath bind: {left:?}");
    nix::mount::umount(&subpath).unwrap();
    kubelet.unpublish(&pod, &vol).await.unwrap();
    assert!(ours(&env).is_empty(), "{:?}", ours(&env));
}

#[tokio::test]
async fn sigterm_drains_and_leaves_mounts_for_the_next_start() {
    require_root!();
    let mut env = Env::new();
    let mut driver = env.start().await;
    let kubelet = env.kubelet();
    let pod = Pod::new("default", "term");
    let vol = volume([]);
    let target = kubelet.publish(&pod, &vol).await.unwrap();
    let serial = read_volume(&target).unwrap().leaf.serial_hex;
    let status = driver
        .terminate(Duration::from_secs(10))
        .expect("exits on SIGTERM");
    assert!(status.success(), "{status:?}");
    assert!(!env.socket.exists(), "socket removed");
    assert_eq!(
        read_volume(&target).unwrap().leaf.serial_hex,
        serial,
        "files stay for the pod"
    );
    assert_eq!(ours(&env).len(), 2);
    let _driver = env.start().await;
    kubelet.publish(&pod, &vol).await.unwrap();
    assert_eq!(read_volume(&target).unwrap().leaf.serial_hex, serial);
    let id = volume_id(&pod.uid, &vol.name);
    assert!(env.store().load(&id).unwrap().is_some());
}

#[tokio::test]
async fn sigterm_lets_an_in_flight_publish_finish() {
    require_root!();
    let mut env = Env::new();
    let mut driver = env.start_with(&["--grace-period", "60s"], &[]).await;
    let kubelet = env.kubelet();
    let pod = Pod::new("default", "in-flight");
    // RSA 4096 generation keeps the publish busy for a while.
    let vol = volume([
        ("csi.certvol.io/key-algorithm", "RSA"),
        ("csi.certvol.io/key-size", "4096"),
    ]);
    let call = {
        let (k, p, v) = (kubelet.clone(), pod.clone(), vol.clone());
        tokio::spawn(async move { k.publish(&p, &v).await })
    };
    // SIGTERM once the publish has started (its state exists).
    eventually(Duration::from_secs(10), || {
        env.state(&pod, &vol).map(|_| ())
    })
    .await
    .expect("publish started");
    let status = tokio::task::spawn_blocking(move || {
        let status = driver.terminate(Duration::from_secs(60));
        (driver, status)
    });
    let target = call
        .await
        .unwrap()
        .expect("the in-flight publish completes");
    let (_driver, status) = status.await.unwrap();
    assert!(status.expect("driver exits").success());
    let files = read_volume(&target).unwrap();
    assert_eq!(files.leaf.key_algorithm, "RSA 4096");
    assert_eq!(env.state(&pod, &vol).unwrap().phase, Phase::Published);
}
