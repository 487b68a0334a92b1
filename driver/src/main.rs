//! The `certvol` binary: `node` serves CSI on a node, `demo` shows it all on one machine.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use tokio::signal::unix::{SignalKind, signal};

use certvol_driver::node::{self, DEFAULT_DATA_ROOT, NodeOptions};

/// certvol: a CSI node plugin that gives every pod its own X.509 certificate through an inline
/// ephemeral volume.
#[derive(Debug, Parser)]
#[command(name = "certvol", version, about, long_about = None)]
struct Cli {
    /// Log level (error, warn, info, debug, trace) or a tracing filter; RUST_LOG overrides it.
    #[arg(long, global = true, default_value = "info")]
    log_level: String,
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the CSI node plugin (Identity and Node services) on a unix socket.
    Node(Box<NodeOptions>),
    /// Run the node plugin with the embedded local CA on a temporary socket and data root, act as
    /// kubelet against it, and show issuance, renewal and clean-up. Needs no cluster.
    #[cfg(feature = "demo")]
    Demo(DemoArgs),
    /// Show the volumes in a node's data root: pod, issuer, certificate, renewal health.
    /// Read-only; never prints keys.
    Inspect(InspectArgs),
}

#[derive(Debug, clap::Args)]
struct InspectArgs {
    /// The data root `certvol node` uses.
    #[arg(long, default_value = DEFAULT_DATA_ROOT)]
    data_root: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value_t = InspectFormat::Table)]
    output: InspectFormat,
    /// Show one volume in detail: a volume id, a unique prefix of one, or a pod as namespace/name.
    volume: Option<String>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum InspectFormat {
    Table,
    Json,
}

#[cfg(feature = "demo")]
#[derive(Debug, clap::Args)]
struct DemoArgs {
    /// Keep the temporary data root and print its path instead of deleting it.
    #[arg(long)]
    keep: bool,
}

fn init_logging(level: &str, format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    // kube-rs logs a whole response body at warn level when it cannot decode it; for the trust
    // watches that body can be a Secret's data. certvol reports those failures itself (without
    // the body), so that module is held to errors whatever the level or RUST_LOG asks for.
    let filter = match "kube_client::client=error".parse() {
        Ok(directive) => filter.add_directive(directive),
        Err(_) => filter,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

async fn terminated() {
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = tokio::signal::ctrl_c() => {},
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => code,
        Err(err) => {
            // One line with the whole cause chain: what an operator reads in `kubectl logs`.
            eprintln!("certvol: error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<std::process::ExitCode> {
    match cli.command {
        Command::Node(args) => {
            init_logging(&cli.log_level, cli.log_format);
            let opts = *args;
            opts.check()
                .map_err(|why| anyhow::anyhow!("certvol node: {why}"))?;
            let mounter = node::choose_mounter(&opts.data_root, opts.allow_no_tmpfs)
                .context("certvol node")?;
            node::run(opts, mounter, terminated())
                .await
                .context("certvol node")?;
            Ok(std::process::ExitCode::SUCCESS)
        }
        Command::Inspect(args) => {
            init_logging(&cli.log_level, cli.log_format);
            let format = match args.output {
                InspectFormat::Table => certvol_driver::obs::inspect::Format::Table,
                InspectFormat::Json => certvol_driver::obs::inspect::Format::Json,
            };
            let out =
                certvol_driver::obs::inspect::run(&args.data_root, format, args.volume.as_deref())
                    .context("certvol inspect")?;
            print!("{out}");
            Ok(std::process::ExitCode::SUCCESS)
        }
        #[cfg(feature = "demo")]
        Command::Demo(args) => {
            // The demo prints its own narrative; the plugin's logs would interleave with it.
            let level = if cli.log_level == "info" {
                "error"
            } else {
                cli.log_level.as_str()
            };
            init_logging(level, cli.log_format);
            let ok = certvol_driver::demo::run(args.keep)
                .await
                .context("certvol demo")?;
            Ok(if ok {
                std::process::ExitCode::SUCCESS
            } else {
                std::process::ExitCode::FAILURE
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
