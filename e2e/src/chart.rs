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

/// The plain manifest, `manifests/certvol.yaml`: the chart rendered with its default values
/// (`check_chart.py --write-plain` writes it, and its check fails when it is stale).
pub fn plain_manifest() -> PathBuf {
    repo_root().join("manifests").join("certvol.yaml")
}

/// The CSIDriver object as the chart renders it with default values (from
/// [`plain_manifest`]), for harnesses that stand in for an installed chart without running Helm.
pub fn plain_csidriver() -> Value {
    let path = plain_manifest();
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_yaml::Deserializer::from_str(&text)
        .filter_map(|doc| serde::Deserialize::deserialize(doc).ok())
        .find(|v: &Value| v["kind"] == "CSIDriver")
        .unwrap_or_else(|| panic!("{} holds no CSIDriver", path.display()))
}
