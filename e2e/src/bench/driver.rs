//! The driver under test: finding (or building) the binary, spawning `certvol node` and waiting
//! until it answers.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use certvol_driver::demo::kubelet::Kubelet;
use certvol_proto::csi::v1 as csi;

use crate::Env;

/// Finds the certvol binary: `$CERTVOL_BIN`, else `certvol` next to this executable
/// (`target/<profile>/`); when that is missing, builds it with cargo in the same profile.
pub fn locate_certvol() -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os("CERTVOL_BIN") {
        return Ok(PathBuf::from(bin));
    }
    let exe = std::env::current_exe().context("where am I")?;
    let mut dir = exe
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| anyhow!("{} has no parent directory", exe.display()))?;
    if dir.ends_with("deps") {
        dir.pop();
    }
    let bin = dir.join("certvol");
    if bin.exists() {
        return Ok(bin);
    }
    let release = dir.file_name().is_some_and(|n| n == "release");
    eprintln!(
        "{} is missing: building it (cargo build{} -p certvol-driver --bin certvol)",
        bin.display(),
        if release { " --release" } else { "" }
    );
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or_else(|| anyhow!("the e2e crate has no parent directory"))?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace)
        .args(["build", "-p", "certvol-driver", "--bin", "certvol"]);
    if release {
        cmd.arg("--release");
    }
    let status = cmd.status().context("run cargo build")?;
    if !status.success() || !bin.exists() {
        bail!(
            "could not build {}: set CERTVOL_BIN to a certvol binary",
            bin.display()
        );
    }
    Ok(bin)
}

/// A running `certvol node`, SIGKILLed when dropped.
pub struct BenchDriver {
    child: Child,
    pub log: PathBuf,
}

impl BenchDriver {
    /// Spawns `certvol node` for `env` at log level info (the production default: debug logging
    /// would measure the logger), with `extra` arguments and environment.
    pub fn spawn(
        bin: &Path,
        env: &Env,
        run: usize,
        extra: &[&str],
        envs: &[(&str, &str)],
    ) -> Result<BenchDriver> {
        let log = env.path().join(format!("bench-driver-{run}.log"));
        let out = fs::File::create(&log).with_context(|| format!("create {}", log.display()))?;
        let mut cmd = Command::new(bin);
        cmd.args(["--log-level", "info", "node", "--endpoint"])
            .arg(format!("unix://{}", env.socket.display()))
            .args(["--node-id", crate::cluster::NODE_ID, "--data-root"])
            .arg(&env.data_root)
            .args(["--grace-period", "5s", "--metrics-address", "off"])
            .arg("--kubelet-dir")
            .arg(env.kubelet_dir())
            .args(extra)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(out);
        if !extra.contains(&"--issuer") {
            cmd.args(["--issuer", "local"]);
        }
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("spawn {}", bin.display()))?;
        Ok(BenchDriver { child, log })
    }

    pub fn pid(&self) -> i32 {
        // Linux pids fit in i32 (pid_max is at most 2^22).
        self.child.id() as i32
    }

    /// SIGTERM and wait for the exit (SIGKILL after `timeout`), as a rolling update stops it.
    pub fn stop(&mut self, timeout: Duration) -> Result<()> {
        let pid = nix::unistd::Pid::from_raw(self.pid());
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        eprintln!("warning: the driver ignored SIGTERM for {timeout:?}; killing it");
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// Fails with the log's tail if the process has exited.
    fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            let log = fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!("driver exited ({status}):\n{}", tail.join("\n"));
        }
        Ok(())
    }
}

impl Drop for BenchDriver {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Polls Probe every 2 ms until ready: the recovery figure needs a finer clock than
/// `Kubelet::wait_ready`'s 50 ms. Returns the time it took from `since`.
pub(super) async fn wait_ready(
    kubelet: &Kubelet,
    driver: &mut BenchDriver,
    since: Instant,
    timeout: Duration,
) -> Result<Duration> {
    loop {
        if let Ok(resp) = kubelet.identity().probe(csi::ProbeRequest {}).await
            && resp.get_ref().ready == Some(true)
        {
            return Ok(since.elapsed());
        }
        driver.check_alive()?;
        if since.elapsed() > timeout {
            bail!("driver not ready after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

pub(super) async fn start(
    bin: &Path,
    env: &Env,
    run: usize,
    extra: &[&str],
    envs: &[(&str, &str)],
) -> Result<(BenchDriver, Kubelet)> {
    let mut driver = BenchDriver::spawn(bin, env, run, extra, envs)?;
    let kubelet = env.kubelet();
    wait_ready(
        &kubelet,
        &mut driver,
        Instant::now(),
        Duration::from_secs(60),
    )
    .await?;
    Ok((driver, kubelet))
}
