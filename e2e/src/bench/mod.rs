//! `certvol-bench`: drives the real `certvol node` binary over its CSI socket as kubelet does and
//! measures publish latency and throughput, API requests per issuance, memory and idle CPU with
//! many volumes, restart recovery and the spread of a renewal wave. See the README's
//! "Benchmarks" section for the command and the latest figures.
//!
//! Every driver process is a [`BenchDriver`] (killed when dropped) and every node lives in an
//! [`Env`] (its mounts are detached when dropped), declared so that the driver goes first: an
//! error, a panic or Ctrl-C leaves no process and no mount behind.

pub mod procfs;
pub mod report;
pub mod stats;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use certvol_driver::demo::kubelet::{InlineVolume, Kubelet, Pod, volume_id};
use certvol_proto::csi::v1 as csi;

use crate::apiserver::{ApiServer, Kind, RequestRecord};
use crate::cluster::{Cluster, cm_volume};
use crate::{Env, read_volume, volume};
use report::{PublishRun, Recovery, RenewalWave, Report, Scale};
use stats::Latency;

/// Key algorithms measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    P256,
    Ed25519,
    Rsa2048,
}

impl Algorithm {
    pub const ALL: [Algorithm; 3] = [Algorithm::P256, Algorithm::Ed25519, Algorithm::Rsa2048];

    pub fn name(self) -> &'static str {
        match self {
            Algorithm::P256 => "P-256",
            Algorithm::Ed25519 => "Ed25519",
            Algorithm::Rsa2048 => "RSA-2048",
        }
    }

    pub fn parse(s: &str) -> Option<Algorithm> {
        Algorithm::ALL
            .into_iter()
            .find(|a| a.name().eq_ignore_ascii_case(s))
    }

    fn attributes(self) -> Vec<(&'static str, &'static str)> {
        match self {
            Algorithm::P256 => vec![
                ("csi.certvol.io/key-algorithm", "ECDSA"),
                ("csi.certvol.io/key-size", "256"),
            ],
            Algorithm::Ed25519 => vec![("csi.certvol.io/key-algorithm", "Ed25519")],
            Algorithm::Rsa2048 => vec![
                ("csi.certvol.io/key-algorithm", "RSA"),
                ("csi.certvol.io/key-size", "2048"),
            ],
        }
    }

    /// Publishes per run when none is given: RSA key generation is two orders of magnitude
    /// slower than the others, so it gets fewer.
    fn default_requests(self, quick: bool, concurrency: usize) -> usize {
        let base = match (self, quick) {
            (Algorithm::Rsa2048, false) => 64,
            (Algorithm::Rsa2048, true) => 16,
            (_, false) => 400,
            (_, true) => 64,
        };
        base.max(2 * concurrency)
    }
}

/// What to run. Built by the binary from its flags.
#[derive(Clone, Debug)]
pub struct Options {
    pub quick: bool,
    pub out: PathBuf,
    /// Volumes for the memory, idle CPU, recovery and renewal-wave sections.
    pub volumes: usize,
    pub idle_seconds: u64,
    /// Publishes per run; `None` picks per algorithm.
    pub requests: Option<usize>,
    pub concurrency: Vec<usize>,
    pub algorithms: Vec<Algorithm>,
    /// The certvol binary; `None` finds or builds it.
    pub certvol: Option<PathBuf>,
    /// The command line, recorded in the report.
    pub command: String,
    /// `--kube-api-qps` / `--kube-api-burst` for the cert-manager driver, and the same values as
    /// its `--issuance-api-qps` / `--issuance-api-burst`. The driver's defaults
    /// (10 QPS, burst 20) cap sustained issuance at 10 per second by design, which would measure
    /// the limiter rather than the driver; the benchmark raises them unless told otherwise.
    pub kube_api_qps: f64,
    pub kube_api_burst: u32,
}

impl Options {
    /// The full benchmark (`--quick`: fewer iterations, 100 volumes, 5 idle seconds).
    pub fn new(quick: bool) -> Options {
        Options {
            quick,
            out: PathBuf::from("bench.json"),
            volumes: if quick { 100 } else { 1000 },
            idle_seconds: if quick { 5 } else { 60 },
            requests: None,
            concurrency: vec![1, 16, 64],
            algorithms: Algorithm::ALL.to_vec(),
            certvol: None,
            command: String::new(),
            kube_api_qps: 1000.0,
            kube_api_burst: 1000,
        }
    }
}

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
async fn wait_ready(
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

async fn start(
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

/// Runs `op` on every item with `concurrency` in flight; returns each call's latency and the wall
/// time of the whole batch. The first error stops the batch.
async fn batch<T, F, Fut>(
    items: Arc<Vec<T>>,
    concurrency: usize,
    op: F,
) -> Result<(Vec<Duration>, Duration)>
where
    T: Send + Sync + 'static,
    F: Fn(Arc<Vec<T>>, usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<()>> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let (next, items, op) = (next.clone(), items.clone(), op.clone());
        workers.spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= items.len() {
                    return Ok::<_, anyhow::Error>(latencies);
                }
                let t = Instant::now();
                op(items.clone(), i).await?;
                latencies.push(t.elapsed());
            }
        });
    }
    let mut all = Vec::with_capacity(items.len());
    while let Some(joined) = workers.join_next().await {
        all.extend(joined.context("publish worker panicked")??);
    }
    Ok((all, started.elapsed()))
}

async fn publish_all(
    kubelet: &Kubelet,
    pods: Arc<Vec<(Pod, InlineVolume)>>,
    concurrency: usize,
) -> Result<(Vec<Duration>, Duration)> {
    let kubelet = kubelet.clone();
    batch(pods, concurrency, move |pods, i| {
        let kubelet = kubelet.clone();
        async move {
            let (pod, vol) = &pods[i];
            kubelet
                .publish(pod, vol)
                .await
                .map_err(|s| anyhow!("publish {}: {s}", pod.name))?;
            Ok(())
        }
    })
    .await
}

async fn unpublish_all(
    kubelet: &Kubelet,
    pods: Arc<Vec<(Pod, InlineVolume)>>,
    concurrency: usize,
) -> Result<Duration> {
    let kubelet = kubelet.clone();
    let (_, wall) = batch(pods, concurrency, move |pods, i| {
        let kubelet = kubelet.clone();
        async move {
            let (pod, vol) = &pods[i];
            kubelet
                .unpublish(pod, vol)
                .await
                .map_err(|s| anyhow!("unpublish {}: {s}", pod.name))?;
            Ok(())
        }
    })
    .await?;
    Ok(wall)
}

/// The API requests recorded since index `from`, by `"<verb> <Kind>"`.
fn tally(records: &[RequestRecord]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for r in records {
        let kind = r.kind.map(|k| k.kind_name()).unwrap_or("other");
        *out.entry(format!("{} {kind}", r.verb)).or_insert(0) += 1;
    }
    out
}

/// One backend under test: where publishes go and how pods come to exist.
enum Backend<'a> {
    Local,
    CertManager(&'a Cluster),
}

impl Backend<'_> {
    fn name(&self) -> &'static str {
        match self {
            Backend::Local => "local",
            Backend::CertManager(_) => "cert-manager",
        }
    }

    async fn pods(&self, prefix: &str, n: usize, alg: Algorithm) -> Vec<(Pod, InlineVolume)> {
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            let name = format!("{prefix}-{i}");
            let (pod, vol) = match self {
                Backend::Local => (Pod::new("bench", &name), volume(alg.attributes())),
                Backend::CertManager(c) => (
                    c.create_pod("default", &name).await,
                    cm_volume(&c.issuer_name(), alg.attributes()),
                ),
            };
            out.push((pod, vol));
        }
        out
    }
}

/// Publish latency and throughput for one backend over every algorithm and concurrency.
async fn publish_section(
    opts: &Options,
    backend: &Backend<'_>,
    kubelet: &Kubelet,
    api: Option<&ApiServer>,
    report: &mut Report,
) -> Result<()> {
    // One untimed publish first: connection set-up and lazy initialisation are not what the
    // figures are about.
    let warm = Arc::new(backend.pods("warm", 1, Algorithm::P256).await);
    publish_all(kubelet, warm.clone(), 1).await?;
    unpublish_all(kubelet, warm, 1).await?;
    let mut windows: Vec<RequestRecord> = Vec::new();
    let mut issuances = 0;
    for &alg in &opts.algorithms {
        for &c in &opts.concurrency {
            let n = opts
                .requests
                .unwrap_or_else(|| alg.default_requests(opts.quick, c));
            let prefix = format!(
                "{}-{}-c{c}",
                backend.name(),
                alg.name().to_ascii_lowercase()
            );
            let pods = Arc::new(backend.pods(&prefix, n, alg).await);
            let before = api.map(|a| a.requests().len()).unwrap_or(0);
            let (latencies, wall) = publish_all(kubelet, pods.clone(), c).await?;
            if let Some(a) = api {
                windows.extend(a.requests().into_iter().skip(before));
                issuances += n;
            }
            let run = PublishRun {
                backend: backend.name().into(),
                algorithm: alg.name().into(),
                concurrency: c,
                requests: n,
                latency: Latency::of(&latencies),
                throughput_per_s: n as f64 / wall.as_secs_f64().max(1e-9),
            };
            eprintln!(
                "  {:<12} {:<8} c={:<3} n={:<4} p50 {:>8.2} ms  p99 {:>8.2} ms  {:>6.0}/s",
                run.backend,
                run.algorithm,
                c,
                n,
                run.latency.p50_ms,
                run.latency.p99_ms,
                run.throughput_per_s
            );
            report.publish.push(run);
            unpublish_all(kubelet, pods, c).await?;
        }
    }
    if let Some(a) = api {
        let api_report = &mut report.api_requests;
        api_report.issuances = issuances;
        let per = tally(&windows);
        api_report.per_issuance = per
            .iter()
            .map(|(k, v)| (k.clone(), *v as f64 / issuances.max(1) as f64))
            .collect();
        let reads = windows
            .iter()
            .filter(|r| {
                r.kind == Some(Kind::CertificateRequest) && (r.verb == "get" || r.verb == "list")
            })
            .count();
        api_report.reads_per_issuance = reads as f64 / issuances.max(1) as f64;
        api_report.watches_total = a.requests().iter().filter(|r| r.verb == "watch").count();
    }
    Ok(())
}

/// Local CA and cert-manager publish runs.
async fn publish_benchmarks(opts: &Options, bin: &Path, report: &mut Report) -> Result<()> {
    {
        eprintln!("publish: local CA");
        let env = Env::new();
        let (mut driver, kubelet) = start(bin, &env, 1, &[], &[]).await?;
        publish_section(opts, &Backend::Local, &kubelet, None, report).await?;
        driver.stop(Duration::from_secs(10))?;
    }
    {
        eprintln!("publish: cert-manager backend against the API stand-in (instant signer)");
        let env = Env::new();
        let cluster = Cluster::start(env.path()).await;
        let standin = cluster
            .standin
            .as_ref()
            .ok_or_else(|| anyhow!("the benchmark needs the API stand-in, not a real cluster"))?;
        let kubeconfig = cluster.kubeconfig.display().to_string();
        let (qps, burst) = (
            opts.kube_api_qps.to_string(),
            opts.kube_api_burst.to_string(),
        );
        report.api_requests.kube_api_qps = opts.kube_api_qps;
        report.api_requests.kube_api_burst = opts.kube_api_burst;
        let (mut driver, kubelet) = start(
            bin,
            &env,
            1,
            &[
                "--issuer",
                "cert-manager",
                "--kube-api-qps",
                &qps,
                "--kube-api-burst",
                &burst,
                // Issuance has its own bucket; the knob sets both.
                "--issuance-api-qps",
                &qps,
                "--issuance-api-burst",
                &burst,
            ],
            &[("KUBECONFIG", &kubeconfig)],
        )
        .await?;
        report.api_requests.startup = tally(&standin.api.requests());
        publish_section(
            opts,
            &Backend::CertManager(&cluster),
            &kubelet,
            Some(&standin.api),
            report,
        )
        .await?;
        driver.stop(Duration::from_secs(10))?;
    }
    Ok(())
}

/// Many volumes: memory, idle CPU, the renewal wave, restart recovery.
async fn scale_benchmarks(opts: &Options, bin: &Path, report: &mut Report) -> Result<()> {
    let n = opts.volumes;
    eprintln!("scale: {n} volumes (local CA, P-256)");
    let env = Env::new();
    let (mut driver, kubelet) = start(bin, &env, 1, &[], &[]).await?;
    let mut scale = Scale {
        volumes: n,
        idle_seconds: opts.idle_seconds,
        baseline: procfs::memory(driver.pid())?,
        ..Scale::default()
    };
    let pods = Arc::new(
        Backend::Local
            .pods("scale", n, Algorithm::P256)
            .await
            .into_iter()
            .map(|(p, mut v)| {
                // The default 90-day lifetime, stated so the wave's fractions are exact.
                v.attributes
                    .insert("csi.certvol.io/duration".into(), "2160h".into());
                (p, v)
            })
            .collect::<Vec<_>>(),
    );
    let (_, wall) = publish_all(&kubelet, pods.clone(), 16).await?;
    scale.publish_seconds = wall.as_secs_f64();
    let mounted = env.mounts().len();
    if mounted < n {
        bail!("{n} volumes published but only {mounted} mounts under the node's directory");
    }
    // Let anything the publishes left in flight settle before the idle window.
    tokio::time::sleep(Duration::from_secs(1)).await;
    scale.loaded = procfs::memory(driver.pid())?;
    scale.per_volume_kib =
        (scale.loaded.rss_kib as f64 - scale.baseline.rss_kib as f64) / n.max(1) as f64;
    let hz = procfs::ticks_per_second();
    let t0 = procfs::cpu_ticks(driver.pid())?;
    let idle_start = Instant::now();
    tokio::time::sleep(Duration::from_secs(opts.idle_seconds)).await;
    let t1 = procfs::cpu_ticks(driver.pid())?;
    let idle = idle_start.elapsed().as_secs_f64();
    scale.idle_cpu_percent = (t1.saturating_sub(t0)) as f64 / hz as f64 / idle * 100.0;
    eprintln!(
        "  RSS {} KiB, idle CPU {:.3}%",
        scale.loaded.rss_kib, scale.idle_cpu_percent
    );

    report.renewal_wave = renewal_wave(&env, &pods)?;

    eprintln!("recovery: restart with {n} volumes");
    let serials_before = serials(&env, &pods)?;
    let signed_before = env.issued().len();
    driver.stop(Duration::from_secs(30))?;
    drop(driver);
    let spawned = Instant::now();
    let mut driver = BenchDriver::spawn(bin, &env, 2, &[], &[])?;
    let ready = wait_ready(&kubelet, &mut driver, spawned, Duration::from_secs(120)).await?;
    // Give a recovery that re-issues in the background the time to show itself.
    tokio::time::sleep(Duration::from_secs(if opts.quick { 1 } else { 3 })).await;
    let serials_after = serials(&env, &pods)?;
    let reissued = serials_before
        .iter()
        .zip(&serials_after)
        .filter(|(a, b)| a != b)
        .count();
    let mut verified = 0;
    for (pod, vol) in pods.iter().step_by((n / 50).max(1)) {
        let target = kubelet.target_path(pod, vol);
        read_volume(&target).map_err(|e| anyhow!("{}: {e}", target.display()))?;
        verified += 1;
    }
    report.recovery = Recovery {
        volumes: n,
        ready_ms: ready.as_secs_f64() * 1000.0,
        reissued,
        ca_signatures: env.issued().len().saturating_sub(signed_before),
        verified,
    };
    scale.after_restart = procfs::memory(driver.pid())?;

    let unpublished = unpublish_all(&kubelet, pods, 16).await?;
    scale.unpublish_seconds = unpublished.as_secs_f64();
    report.scale = scale;
    let left = env.mounts().len();
    driver.stop(Duration::from_secs(10))?;
    if left > 0 {
        bail!("{left} mounts left after unpublishing every volume");
    }
    Ok(())
}

/// Serial of each volume's current certificate, in `pods` order.
fn serials(env: &Env, pods: &[(Pod, InlineVolume)]) -> Result<Vec<String>> {
    let store = env.store();
    pods.iter()
        .map(|(p, v)| {
            let id = volume_id(&p.uid, &v.name);
            let state = store.load(&id)?.ok_or_else(|| anyhow!("{id}: no state"))?;
            let current = state
                .current
                .ok_or_else(|| anyhow!("{id}: no current certificate"))?;
            Ok(current.serial)
        })
        .collect()
}

/// Scheduled renewals (state.json `renew_at`) of the volumes just published together.
fn renewal_wave(env: &Env, pods: &[(Pod, InlineVolume)]) -> Result<RenewalWave> {
    let store = env.store();
    let mut issued = Vec::new();
    let mut renew = Vec::new();
    let mut fractions = Vec::new();
    let mut lifetime = 0.0;
    for (p, v) in pods {
        let id = volume_id(&p.uid, &v.name);
        let state = store.load(&id)?.ok_or_else(|| anyhow!("{id}: no state"))?;
        let c = state
            .current
            .ok_or_else(|| anyhow!("{id}: no current certificate"))?;
        let nb = c.not_before.unix_timestamp_nanos() as f64 / 1e9;
        let na = c.not_after.unix_timestamp_nanos() as f64 / 1e9;
        let at = c.renew_at.unix_timestamp_nanos() as f64 / 1e9;
        lifetime = na - nb;
        issued.push(nb);
        renew.push(at);
        fractions.push((at - nb) / (na - nb).max(1.0));
    }
    let spread = |v: &[f64]| {
        let min = v.iter().copied().fold(f64::INFINITY, f64::min);
        let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        if v.is_empty() { 0.0 } else { max - min }
    };
    let first = renew.iter().copied().fold(f64::INFINITY, f64::min);
    let offsets: Vec<f64> = renew.iter().map(|r| r - first).collect();
    let mean = offsets.iter().sum::<f64>() / offsets.len().max(1) as f64;
    let var = offsets.iter().map(|o| (o - mean).powi(2)).sum::<f64>() / offsets.len().max(1) as f64;
    Ok(RenewalWave {
        certificates: pods.len(),
        lifetime_hours: lifetime / 3600.0,
        issued_spread_s: spread(&issued),
        renew_spread_s: spread(&renew),
        renew_stddev_s: var.sqrt(),
        earliest_fraction: fractions.iter().copied().fold(f64::INFINITY, f64::min),
        latest_fraction: fractions.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        histogram: stats::histogram(&offsets, 12),
    })
}

/// Runs every section, writes the JSON file and returns the report.
pub async fn run(opts: &Options) -> Result<Report> {
    if !crate::can_mount() {
        bail!("the benchmark mounts tmpfs volumes as kubelet's CSI driver does: run it as root");
    }
    let bin = match &opts.certvol {
        Some(b) => b.clone(),
        None => locate_certvol()?,
    };
    eprintln!("certvol binary: {}", bin.display());
    let started = Instant::now();
    let mut report = Report {
        machine: procfs::machine(),
        command: opts.command.clone(),
        quick: opts.quick,
        ..Report::default()
    };
    publish_benchmarks(opts, &bin, &mut report).await?;
    scale_benchmarks(opts, &bin, &mut report).await?;
    report.machine.loadavg_end = procfs::loadavg();
    report.total_seconds = started.elapsed().as_secs_f64();
    report.judge();
    let json = serde_json::to_string_pretty(&report)?;
    fs::write(&opts.out, json).with_context(|| format!("write {}", opts.out.display()))?;
    Ok(report)
}
