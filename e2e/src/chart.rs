//! The Helm chart as a real Helm engine renders it (`manifests/tests/render.py`, Helm from the
//! shared venv of [`crate::python`]): the chart test checks the objects; the container tier runs
//! the DaemonSet's pod exactly as rendered.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::python::repo_root;

/// `manifests/tests`, where the chart's Python checks live.
pub fn tests_dir() -> PathBuf {
    repo_root().join("manifests").join("tests")
}

/// Every object the chart renders with `values` (dotted paths, values parsed as YAML:
/// `("certManager.tokenRequest", "true")`), release `certvol` in namespace `certvol`.
pub fn render(python: &Path, values: &[(&str, &str)]) -> Result<Vec<Value>, String> {
    let mut cmd = Command::new(python);
    cmd.arg(tests_dir().join("render.py"));
    for (k, v) in values {
        cmd.arg(format!("{k}={v}"));
    }
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run render.py: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "render.py {values:?} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("render.py printed no JSON list: {e}"))
}
