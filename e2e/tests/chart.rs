//! The Helm chart renders with a real Helm engine and yields valid Kubernetes objects for the
//! default values and every issuer mode (see manifests/tests/check_chart.py for the checks).
//!
//! Helm comes from PyPI (`helm-python-sdk` bundles Helm as a shared library), installed into a
//! venv under cargo's target directory on first use, so a fresh machine needs only python3 and
//! access to the package registry.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("e2e/ has a parent: the workspace root")
        .to_path_buf()
}

fn run(cmd: &mut Command, what: &str) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot start {cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{text}",
        out.status
    );
    text
}

/// A venv holding exactly `requirements.txt`; rebuilt when that file changes.
fn venv_python(requirements: &Path) -> PathBuf {
    let wanted = std::fs::read_to_string(requirements).expect("read requirements.txt");
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("chart-venv");
    let stamp = venv.join("requirements.installed");
    let python = venv.join("bin").join("python3");
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(wanted.as_str()) && python.exists() {
        return python;
    }
    let _ = std::fs::remove_dir_all(&venv);
    run(
        Command::new("python3").args(["-m", "venv"]).arg(&venv),
        "creating the chart-test venv (python3 -m venv)",
    );
    run(
        Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "-r",
            ])
            .arg(requirements),
        "pip install -r manifests/tests/requirements.txt",
    );
    std::fs::write(&stamp, wanted).expect("write venv stamp");
    python
}

#[test]
fn chart_renders_valid_objects_for_every_issuer_mode() {
    let root = repo_root();
    let tests = root.join("manifests").join("tests");
    let python = venv_python(&tests.join("requirements.txt"));
    let out = run(
        Command::new(python).arg(tests.join("check_chart.py")),
        "manifests/tests/check_chart.py",
    );
    println!("{out}");
    assert!(out.contains("chart OK"), "unexpected output:\n{out}");
}
