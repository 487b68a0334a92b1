//! `certvol-bench`: drives the real `certvol node` binary over its CSI socket as kubelet does and
//! measures publish latency and throughput, API requests per issuance, memory and idle CPU with
//! many volumes, restart recovery and the spread of a renewal wave. See the README's
//! "Benchmarks" section for the command and the latest figures.
//!
//! Every driver process is a [`BenchDriver`] (killed when dropped) and every node lives in an
//! [`Env`](crate::Env) (its mounts are detached when dropped), declared so that the driver goes
//! first: an error, a panic or Ctrl-C leaves no process and no mount behind.

mod driver;
pub mod procfs;
mod publish;
pub mod report;
mod scale;
pub mod stats;

use std::fs;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};

pub use driver::{BenchDriver, locate_certvol};
use publish::publish_benchmarks;
use report::Report;
use scale::scale_benchmarks;

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

    pub(super) fn attributes(self) -> Vec<(&'static str, &'static str)> {
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
    pub(super) fn default_requests(self, quick: bool, concurrency: usize) -> usize {
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
