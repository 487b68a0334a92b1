//! Runs the `certvol-bench` binary end to end with tiny sizes so CI exercises it. No timing
//! assertions: only that it completes, cleans up, and reports every section.

use std::process::Command;

use certvol_e2e::require_root;
use serde_json::Value;

#[test]
fn quick_bench_completes_and_reports_every_section() {
    require_root!();
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("bench.json");
    let before = certvol_e2e::read_mounts().len();
    let run = Command::new(env!("CARGO_BIN_EXE_certvol-bench"))
        .args([
            "--quick",
            "--volumes",
            "12",
            "--idle-seconds",
            "1",
            "--requests",
            "4",
            "--concurrency",
            "1,2",
            // RSA key generation in a debug build takes seconds; the code path is the same.
            "--algorithms",
            "P-256,Ed25519",
            "--out",
        ])
        .arg(&out)
        .output()
        .expect("run certvol-bench");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "certvol-bench failed:\n{stdout}\n{stderr}"
    );
    assert_eq!(
        certvol_e2e::read_mounts().len(),
        before,
        "the benchmark left mounts behind"
    );

    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(&out).expect("JSON report written"))
            .expect("JSON report parses");
    for section in [
        "machine",
        "publish",
        "api_requests",
        "scale",
        "recovery",
        "renewal_wave",
        "targets",
    ] {
        assert!(
            report.get(section).is_some(),
            "report lacks {section}: {report}"
        );
    }
    // 2 backends x 2 algorithms x 2 concurrency levels, 4 publishes each.
    let publish = report["publish"].as_array().expect("publish runs");
    assert_eq!(publish.len(), 8, "{publish:?}");
    for run in publish {
        assert_eq!(run["latency"]["samples"], 4, "{run}");
        assert!(run["latency"]["p50_ms"].as_f64().unwrap() > 0.0, "{run}");
    }
    let backends: Vec<&str> = publish
        .iter()
        .filter_map(|r| r["backend"].as_str())
        .collect();
    assert!(backends.contains(&"local") && backends.contains(&"cert-manager"));
    // 2 algorithms x 2 levels x 4 = 16 measured issuances through the stand-in, each one create.
    let api = &report["api_requests"];
    assert_eq!(api["issuances"], 16, "{api}");
    assert_eq!(
        api["per_issuance"]["create CertificateRequest"], 1.0,
        "{api}"
    );
    assert_eq!(report["scale"]["volumes"], 12);
    assert!(report["scale"]["loaded"]["rss_kib"].as_u64().unwrap() > 0);
    assert_eq!(report["recovery"]["volumes"], 12);
    assert!(report["recovery"]["verified"].as_u64().unwrap() > 0);
    assert_eq!(report["renewal_wave"]["certificates"], 12);
    let buckets: u64 = report["renewal_wave"]["histogram"]
        .as_array()
        .expect("histogram")
        .iter()
        .map(|b| b["count"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(buckets, 12, "every certificate lands in one bucket");
    let targets = report["targets"].as_array().expect("targets");
    assert_eq!(targets.len(), 11, "{targets:?}");
    assert!(stdout.contains("targets"), "table printed: {stdout}");
}
