//! `certvol-bench`: the benchmark of the real `certvol node` (see `certvol_e2e::bench`).
//!
//! ```text
//! cargo run --release -p certvol-e2e --bin certvol-bench -- [--quick] [--out bench.json]
//! ```
//! Needs root (real tmpfs mounts). Prints a table and writes the JSON report.

use std::path::PathBuf;

use anyhow::{Result, anyhow};
use certvol_e2e::bench::{self, Algorithm, Options};
use clap::Parser;

/// Benchmarks the real certvol node driver over its CSI socket, as kubelet drives it.
#[derive(Parser, Debug)]
#[command(name = "certvol-bench")]
struct Args {
    /// Smoke run: fewer publishes, 100 volumes, 5 idle seconds.
    #[arg(long)]
    quick: bool,
    /// Where to write the JSON report.
    #[arg(long, default_value = "bench.json")]
    out: PathBuf,
    /// Volumes for the memory, idle-CPU, recovery and renewal-wave sections (default 1000, quick 100).
    #[arg(long)]
    volumes: Option<usize>,
    /// Idle window for the CPU figure, in seconds (default 60, quick 5).
    #[arg(long)]
    idle_seconds: Option<u64>,
    /// Publishes per run (default: 400 per run, 64 for RSA-2048; at least twice the concurrency).
    #[arg(long)]
    requests: Option<usize>,
    /// Concurrency levels, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    concurrency: Vec<usize>,
    /// Key algorithms, comma-separated: P-256, Ed25519, RSA-2048.
    #[arg(long, value_delimiter = ',', default_value = "P-256,Ed25519,RSA-2048")]
    algorithms: Vec<String>,
    /// The certvol binary (default: $CERTVOL_BIN, else target/<profile>/certvol, built if missing).
    #[arg(long)]
    certvol: Option<PathBuf>,
    /// The cert-manager driver's --kube-api-qps and --issuance-api-qps. Their default (10) caps
    /// sustained issuance at 10/s by design; the benchmark raises it to measure the driver, not
    /// the limiter.
    #[arg(long, default_value_t = 1000.0)]
    kube_api_qps: f64,
    /// The cert-manager driver's --kube-api-burst and --issuance-api-burst (driver default 20).
    #[arg(long, default_value_t = 1000)]
    kube_api_burst: u32,
}

fn options(args: Args) -> Result<Options> {
    let mut opts = Options::new(args.quick);
    opts.command = std::env::args().collect::<Vec<_>>().join(" ");
    opts.out = args.out;
    if let Some(v) = args.volumes {
        opts.volumes = v;
    }
    if let Some(s) = args.idle_seconds {
        opts.idle_seconds = s;
    }
    opts.requests = args.requests;
    if args.concurrency.contains(&0) {
        return Err(anyhow!("--concurrency: levels must be at least 1"));
    }
    opts.concurrency = args.concurrency;
    opts.algorithms = args
        .algorithms
        .iter()
        .map(|a| {
            Algorithm::parse(a).ok_or_else(|| {
                anyhow!("--algorithms: {a:?} is not one of P-256, Ed25519, RSA-2048")
            })
        })
        .collect::<Result<_>>()?;
    opts.certvol = args.certvol;
    opts.kube_api_qps = args.kube_api_qps;
    opts.kube_api_burst = args.kube_api_burst;
    Ok(opts)
}

#[tokio::main]
async fn main() -> Result<()> {
    let opts = options(Args::parse())?;
    // Ctrl-C drops the run's future, and with it every driver (killed) and node (unmounted).
    let report = tokio::select! {
        r = bench::run(&opts) => r?,
        _ = tokio::signal::ctrl_c() => return Err(anyhow!("interrupted; drivers stopped and mounts removed")),
    };
    println!("{}", report.table());
    println!("JSON report: {}", opts.out.display());
    Ok(())
}
