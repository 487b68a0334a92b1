//! The real `certvol node --issuer local` socket served to a gRPC client that is not tonic:
//! Python grpcio (C-core's HTTP/2), with the `:authority` values real clients send.
//!
//! - kubelet 1.26+ dials with `grpc.WithAuthority("localhost")` (kubernetes/kubernetes#112597);
//!   the client calls registration's Identity and Node RPCs and publishes and unpublishes an
//!   inline ephemeral volume exactly as kubelet does, then checks the files from Python.
//! - node-driver-registrar and livenessprobe dial `unix:///csi/csi.sock` through csi-lib-utils'
//!   `connection.Connect`; grpc-go sends "localhost" for `unix:` and `unix://` targets alike (its
//!   unix resolver's `OverrideAuthority`, grpc/grpc-go#3730, test/authority_test.go).
//! - grpcio's own default for a unix target, the socket path (as old clients sent it) and an
//!   empty authority (grpc-go before 1.31) are refused by h2 with RST_STREAM(PROTOCOL_ERROR);
//!   the test pins what the client sees and what the plugin logs, as docs/troubleshooting.md
//!   states them.
//!
//! The stubs come from proto/csi.proto at test time (grpc_tools.protoc, which bundles protoc)
//! into cargo's target tmp dir; the client is e2e/tests/fixtures/csi_clients.py, run in the venv
//! of manifests/tests/requirements.txt.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use certvol_e2e::Env;
use certvol_e2e::python::{repo_root, requirements, run, venv_python};
use certvol_e2e::require_root;
use serde_json::Value;

/// The :authority of a client that sends the socket path (the chart's path).
const SOCKET_PATH: &str = "/var/lib/kubelet/plugins/csi.certvol.io/csi.sock";

/// What grpcio 1.85 reports for a stream h2 reset with PROTOCOL_ERROR (code 1).
const RESET_DETAILS: &str = "Stream removed (RST_STREAM (Received RST_STREAM with error code 1))";

/// The venv's python3, or `None` (after saying why) when this machine cannot make a venv. In CI
/// a missing Python is a failure, never a skip.
fn python_or_skip() -> Option<PathBuf> {
    match venv_python(Path::new(env!("CARGO_TARGET_TMPDIR")), &requirements()) {
        Ok(python) => Some(python),
        Err(e) if std::env::var_os("CI").is_some() => {
            panic!("CI must run the gRPC client test, but no Python venv can be made: {e}")
        }
        Err(e) => {
            eprintln!("skipped: needs python3 with the venv module (CI has it): {e}");
            None
        }
    }
}

/// Generates csi_pb2.py and csi_pb2_grpc.py from the project's proto into a fresh directory
/// under cargo's target tmp dir.
fn generate_stubs(python: &Path) -> tempfile::TempDir {
    let base = Path::new(env!("CARGO_TARGET_TMPDIR")).join("grpc-stubs");
    std::fs::create_dir_all(&base).expect("create stubs base dir");
    let out = tempfile::tempdir_in(&base).expect("create stubs dir");
    let proto = repo_root().join("proto");
    run(
        Command::new(python)
            .args(["-m", "grpc_tools.protoc"])
            .arg(format!("-I{}", proto.display()))
            .arg(format!("--python_out={}", out.path().display()))
            .arg(format!("--grpc_python_out={}", out.path().display()))
            .arg(proto.join("csi.proto")),
        "python -m grpc_tools.protoc proto/csi.proto",
    );
    for stub in ["csi_pb2.py", "csi_pb2_grpc.py"] {
        assert!(out.path().join(stub).is_file(), "protoc wrote no {stub}");
    }
    out
}

/// The log without ANSI colour sequences.
fn plain(log: &str) -> String {
    let mut out = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn call<'a>(report: &'a Value, client: &str) -> &'a Value {
    report["calls"]
        .as_array()
        .expect("calls")
        .iter()
        .find(|c| c["client"] == client)
        .unwrap_or_else(|| panic!("no call {client:?} in {report:#}"))
}

#[tokio::test]
async fn python_grpcio_is_served_with_the_authorities_kubelet_and_the_sidecars_send() {
    require_root!();
    let Some(python) = python_or_skip() else {
        return;
    };
    let started = Instant::now();
    let stubs = generate_stubs(&python);
    let mut env = Env::new();
    let _driver = env.start().await;
    let socket = std::path::absolute(&env.socket).expect("absolute socket path");

    let script = repo_root().join("e2e/tests/fixtures/csi_clients.py");
    let out = Command::new(&python)
        .arg(&script)
        .arg("--socket")
        .arg(&socket)
        .arg("--pods-dir")
        .arg(&env.pods_dir)
        .arg("--stubs")
        .arg(stubs.path())
        .output()
        .expect("run csi_clients.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "csi_clients.py failed ({}):\n{stdout}{stderr}\n--- driver log ---\n{}",
        out.status,
        plain(&env.logs())
    );
    let report: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("csi_clients.py printed no JSON report ({e}):\n{stdout}"));
    println!(
        "grpcio {} / protobuf {}: {report:#}",
        report["grpcio"].as_str().unwrap_or("?"),
        report["protobuf"].as_str().unwrap_or("?")
    );

    // kubelet: every call answered over unix:///abs with :authority "localhost".
    let kubelet = &report["kubelet"];
    assert_eq!(kubelet["target"], format!("unix://{}", socket.display()));
    assert_eq!(kubelet["plugin"]["name"], "csi.certvol.io");
    assert_eq!(
        kubelet["plugin"]["vendor_version"],
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(kubelet["plugin_capabilities"], serde_json::json!([]));
    assert_eq!(kubelet["probe_ready"], true);
    assert_eq!(kubelet["node_id"], "e2e-node");
    assert_eq!(
        kubelet["node_capabilities"],
        serde_json::json!(["VOLUME_MOUNT_GROUP", "GET_VOLUME_STATS", "VOLUME_CONDITION"])
    );
    let volume_id = kubelet["volume_id"].as_str().expect("volume_id");
    assert!(
        volume_id.len() == 68 && volume_id.starts_with("csi-"),
        "{volume_id}"
    );
    let target = Path::new(kubelet["target_path"].as_str().expect("target_path"));
    assert!(target.starts_with(&env.pods_dir), "{}", target.display());
    let volume = &kubelet["volume"];
    assert_eq!(
        volume["files"],
        serde_json::json!(["ca.crt", "tls.crt", "tls.key"])
    );
    assert_eq!(volume["dns_names"], serde_json::json!(["web-0.shop.svc"]));
    assert_eq!(volume["key_matches"], true);
    assert_eq!(volume["chain_verified"], true);
    assert_eq!(kubelet["target_gone_after_unpublish"], true);
    assert!(!target.exists(), "{} left behind", target.display());
    assert!(
        env.mounts().is_empty(),
        "mounts left after unpublish: {:?}",
        env.mounts()
    );
    assert!(
        env.store().load(volume_id).expect("read state").is_none(),
        "state of {volume_id} left after unpublish"
    );

    // grpc-go sidecars: "localhost" over unix:// and unix: targets.
    for client in [
        "grpc-go sidecar, unix://",
        "grpc-go sidecar, unix:",
        "kubelet, afterwards",
    ] {
        let c = call(&report, client);
        assert_eq!(c["code"], "OK", "{client}: {c}");
        assert_eq!(c["plugin_name"], "csi.certvol.io", "{client}: {c}");
        assert_eq!(c["probe_ready"], true, "{client}: {c}");
    }

    // Everything else is refused by h2 before certvol sees the request: the client gets
    // INTERNAL with grpcio's message for RST_STREAM(PROTOCOL_ERROR), and the plugin's debug log
    // names the authority and why h2 refused it.
    let log = plain(&env.logs());
    // grpcio's default authority for unix:/abs and unix:///abs: the path without its leading
    // slash, the other slashes percent-encoded; the http crate refuses '%' in an authority.
    let grpcio_default = socket
        .display()
        .to_string()
        .trim_start_matches('/')
        .replace('/', "%2F");
    for (client, authority, why) in [
        (
            "grpcio default, unix://",
            grpcio_default.as_str(),
            "invalid authority",
        ),
        (
            "grpcio default, unix:",
            grpcio_default.as_str(),
            "invalid authority",
        ),
        ("socket path", SOCKET_PATH, "invalid uri character"),
        ("empty", "", "empty string"),
    ] {
        let c = call(&report, client);
        assert_eq!(c["code"], "INTERNAL", "{client}: {c}");
        assert_eq!(c["details"], RESET_DETAILS, "{client}: {c}");
        let line = format!("malformed headers: malformed authority (b\"{authority}\"): {why}");
        assert!(
            log.contains(&line),
            "{client}: the plugin log lacks {line:?}:\n{log}"
        );
    }
    println!(
        "gRPC clients checked in {:.1}s",
        started.elapsed().as_secs_f64()
    );
}
