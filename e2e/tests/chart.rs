//! The Helm chart renders with a real Helm engine and yields valid Kubernetes objects for the
//! default values and every issuer mode (see manifests/tests/check_chart.py for the checks).
//!
//! Helm comes from PyPI (`helm-python-sdk` bundles Helm as a shared library), installed into a
//! venv under cargo's target directory on first use, so a fresh machine needs only python3 and
//! access to the package registry.

use std::path::Path;
use std::process::Command;

use certvol_e2e::python::{repo_root, run, venv_python};

#[test]
fn chart_renders_valid_objects_for_every_issuer_mode() {
    let root = repo_root();
    let tests = root.join("manifests").join("tests");
    let python = venv_python(
        Path::new(env!("CARGO_TARGET_TMPDIR")),
        &tests.join("requirements.txt"),
    )
    .unwrap_or_else(|e| panic!("creating the chart-test venv (python3 -m venv): {e}"));
    let out = run(
        Command::new(python).arg(tests.join("check_chart.py")),
        "manifests/tests/check_chart.py",
    );
    println!("{out}");
    assert!(out.contains("chart OK"), "unexpected output:\n{out}");
}

/// The chart's ValidatingAdmissionPolicy, evaluated with an independent CEL implementation
/// (cel-python) against the admission requests the API server would send: the driver on its own
/// node allowed, other nodes' objects and unbound tokens refused, other users not matched (see
/// manifests/tests/check_policy.py).
#[test]
fn admission_policy_confines_the_driver_to_its_node() {
    let tests = repo_root().join("manifests").join("tests");
    let python = venv_python(
        Path::new(env!("CARGO_TARGET_TMPDIR")),
        &tests.join("requirements.txt"),
    )
    .unwrap_or_else(|e| panic!("creating the chart-test venv (python3 -m venv): {e}"));
    let out = run(
        Command::new(python).arg(tests.join("check_policy.py")),
        "manifests/tests/check_policy.py",
    );
    println!("{out}");
    assert!(out.contains("policy OK"), "unexpected output:\n{out}");
}
