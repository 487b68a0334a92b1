//! The `certvol` binary's command line as a user meets it. (Being an integration test of this
//! package also makes `cargo test --workspace` build the binary the e2e harness runs.)

use std::process::Command;

fn certvol(args: &[&str]) -> std::process::Output {
    certvol_with(args, &[])
}

fn certvol_with(args: &[&str], envs: &[(&str, &str)]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_certvol"))
        .args(args)
        .env_remove("NODE_NAME")
        .env_remove("CSI_ENDPOINT")
        .env_remove("CERTVOL_TESTS_ONLY_ALLOW_NO_TMPFS")
        .envs(envs.iter().copied())
        .output()
        .expect("run certvol")
}

#[test]
fn help_lists_the_subcommands_and_node_flags() {
    let out = certvol(&["--help"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for word in ["node", "demo"] {
        assert!(text.contains(word), "{text}");
    }
    let out = certvol(&["node", "--help"]);
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--endpoint",
        "--node-id",
        "--driver-name",
        "--data-root",
        "--issuer",
        "--local-ca-cert",
        "--tmpfs-size",
        "--allow-no-tmpfs",
        "--use-token-request",
        "--kube-api-qps",
        "[default: cert-manager]",
        "[default: /var/lib/certvol]",
        "--kubelet-dir",
        "[default: /var/lib/kubelet]",
        "KUBELET_ROOT_DIR",
        "[default: csi.certvol.io]",
    ] {
        assert!(text.contains(flag), "missing {flag} in:\n{text}");
    }
}

#[test]
fn version_is_the_crate_version() {
    let out = certvol(&["--version"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("certvol {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn bad_flags_are_explained() {
    let out = certvol(&["node"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--node-id"));

    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let args = [
        "node",
        "--node-id",
        "n1",
        "--allow-no-tmpfs",
        "--endpoint",
        "tcp://127.0.0.1:1",
        "--data-root",
        root.to_str().unwrap(),
    ];
    let out = certvol_with(&args, &[("CERTVOL_TESTS_ONLY_ALLOW_NO_TMPFS", "1")]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unix:///"), "{err}");

    // The directory fallback is for tests only: the flag alone does not start a node.
    let out = certvol(&args);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("CERTVOL_TESTS_ONLY_ALLOW_NO_TMPFS=1") && err.contains("tests only"),
        "{err}"
    );

    let out = certvol(&["node", "--node-id", "n1", "--tmpfs-size", "lots"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--tmpfs-size"));
}

/// In the Helm chart's pod the root file system is read-only and nothing is mounted at /tmp:
/// `certvol node` must probe tmpfs where it mounts volumes (below the data root), never in the
/// temporary directory. With TMPDIR unusable, start-up must get past the probe (to the endpoint
/// check, which fails here on purpose) and leave nothing in the data root.
#[test]
fn the_tmpfs_probe_does_not_need_the_temporary_directory() {
    if !nix::unistd::geteuid().is_root() {
        println!("skipping: needs root to mount tmpfs");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let out = Command::new(env!("CARGO_BIN_EXE_certvol"))
        .args([
            "node",
            "--node-id",
            "n1",
            "--issuer",
            "local",
            "--metrics-address",
            "off",
            "--endpoint",
            "tcp://127.0.0.1:1",
            "--data-root",
            root.to_str().unwrap(),
        ])
        .env("TMPDIR", dir.path().join("no-such-dir"))
        .env_remove("NODE_NAME")
        .env_remove("CSI_ENDPOINT")
        .output()
        .expect("run certvol");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(!err.contains("tmpfs"), "the probe failed: {err}");
    assert!(err.contains("unix:///"), "{err}");
    let left: Vec<_> = std::fs::read_dir(root.join("volumes"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
