//! The `certvol` binary: `node` serves CSI on a node, `demo` shows it all on one machine.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use tokio::signal::unix::{SignalKind, signal};

use certvol_driver::issuer::filing::RequestWatch;
use certvol_driver::issuer::policy::{self, DnsPattern, IpCidr, LocalPolicy, UriPattern};
use certvol_driver::issuer::watch::CacheLimits;
use certvol_driver::node::{self, DEFAULT_DATA_ROOT, DEFAULT_DRIVER_NAME, IssuerKind, NodeOptions};

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
    Node(Box<NodeArgs>),
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

#[derive(Debug, clap::Args)]
struct NodeArgs {
    /// CSI endpoint to serve.
    #[arg(long, env = "CSI_ENDPOINT", default_value = "unix:///csi/csi.sock")]
    endpoint: String,
    /// This node's name (spec.nodeName); names requests and NodeGetInfo.
    #[arg(long, env = "NODE_NAME")]
    node_id: String,
    /// CSI driver name reported by GetPluginInfo; must match the CSIDriver object.
    #[arg(long, default_value = DEFAULT_DRIVER_NAME)]
    driver_name: String,
    /// Persistent directory for volume state and tmpfs mounts (never under /tmp).
    #[arg(long, default_value = DEFAULT_DATA_ROOT)]
    data_root: PathBuf,
    /// kubelet's root directory (its --root-dir). NodePublishVolume and NodeUnpublishVolume
    /// refuse target paths outside its pods/ subdirectory.
    #[arg(long, env = "KUBELET_ROOT_DIR", default_value = certvol_driver::volume::DEFAULT_KUBELET_DIR)]
    kubelet_dir: PathBuf,
    /// Issuer backend: cert-manager CertificateRequests (needs the Kubernetes API: in-cluster
    /// service account or KUBECONFIG) or the embedded local CA.
    #[arg(long, value_enum, default_value_t = IssuerKind::CertManager)]
    issuer: IssuerKind,
    /// cert-manager mode: file each request with the pod's own service-account token, which
    /// kubelet passes when the CSIDriver sets tokenRequests and requiresRepublish.
    #[arg(long)]
    use_token_request: bool,
    /// Kubernetes API requests per second (client-side limit, like client-go's --kube-api-qps)
    /// of the node's general client: trust-source watches, Events and discovery. Issuance has
    /// its own budget (--issuance-api-qps).
    #[arg(long, default_value_t = 10.0)]
    kube_api_qps: f64,
    /// Kubernetes API burst above the QPS limit.
    #[arg(long, default_value_t = 20)]
    kube_api_burst: u32,
    /// Requests per second of the issuer's own API client (filing, reading and deleting
    /// CertificateRequests / CertificateSigningRequests and their watch), kept apart from
    /// --kube-api-qps (trust sources, Events, discovery) so those cannot delay issuance.
    #[arg(long, default_value_t = 10.0)]
    issuance_api_qps: f64,
    /// Burst above --issuance-api-qps.
    #[arg(long, default_value_t = 20)]
    issuance_api_burst: u32,
    /// Namespaces in which the node files and watches cert-manager CertificateRequests
    /// (comma-separated, one watch each, needing only namespaced RBAC); publishes for pods in
    /// other namespaces fail with InvalidArgument. Unset: all namespaces, with one cluster-wide
    /// watch. --issuer cert-manager only.
    #[arg(long, value_delimiter = ',', value_name = "NAMESPACE", value_parser = parse_namespace)]
    request_namespaces: Vec<String>,
    /// Most of the node's labelled request objects cached per namespace (per requesting pod's
    /// namespace for CertificateSigningRequests); more are ignored and counted in
    /// certvol_request_watch_dropped_total. Bounds what one tenant can make the node hold.
    #[arg(long, default_value_t = CacheLimits::default().per_namespace, value_parser = parse_count)]
    max_requests_per_namespace: usize,
    /// Most labelled request objects cached in all.
    #[arg(long, default_value_t = CacheLimits::default().total, value_parser = parse_count)]
    max_requests: usize,
    /// Local CA certificate (PEM). Without it, a CA is generated once and kept in the data root.
    #[arg(long, requires = "local_ca_key")]
    local_ca_cert: Option<PathBuf>,
    /// Local CA private key (PEM).
    #[arg(long, requires = "local_ca_cert")]
    local_ca_key: Option<PathBuf>,
    /// Longest validity the local CA signs (Go duration); longer requests are capped.
    #[arg(long, default_value = "8760h", value_parser = parse_duration)]
    local_ca_max_duration: Duration,
    /// Local CA policy: issue CA certificates (is-ca, with pathLenConstraint 0) and the cert sign
    /// / crl sign usages. Off: such volumes are refused with PermissionDenied.
    #[arg(long)]
    local_allow_ca: bool,
    /// Local CA policy: DNS names allowed besides the pod's own namespace's service and pod
    /// names (repeatable): "api.example.com" exactly, "*.example.com" one label below,
    /// "**.example.com" any depth below, "**" any name.
    #[arg(long = "local-allow-dns", value_name = "PATTERN", value_parser = parse_dns_pattern)]
    local_allow_dns: Vec<DnsPattern>,
    /// Local CA policy: URI SANs allowed besides the pod's own SPIFFE ID (repeatable): a URI
    /// exactly, or a prefix ending in "*".
    #[arg(long = "local-allow-uri", value_name = "PATTERN", value_parser = parse_uri_pattern)]
    local_allow_uri: Vec<UriPattern>,
    /// Local CA policy: IP ranges whose addresses volumes may have as IP SANs (repeatable, e.g.
    /// 10.0.0.0/8); none by default.
    #[arg(long = "local-allow-ip-cidr", value_name = "CIDR", value_parser = parse_cidr)]
    local_allow_ip_cidr: Vec<IpCidr>,
    /// The cluster's DNS domain: the local CA policy allows <svc>.<namespace>.svc.<domain> and
    /// <pod>.<namespace>.pod.<domain> names.
    #[arg(long, default_value = policy::DEFAULT_CLUSTER_DOMAIN, value_parser = policy::parse_domain)]
    cluster_domain: String,
    /// SPIFFE trust domain of the pods' own IDs (spiffe://<domain>/ns/<namespace>/sa/<sa>),
    /// which the local CA policy allows as URI SANs.
    #[arg(long, default_value = policy::DEFAULT_TRUST_DOMAIN, value_parser = policy::parse_domain)]
    trust_domain: String,
    /// Size limit of each volume's tmpfs (bytes, or with a K/M/Ki/Mi suffix).
    #[arg(long, default_value = "4Mi", value_parser = parse_size)]
    tmpfs_size: u64,
    /// Tests only: use plain directories when tmpfs cannot be mounted (keys on disk, and the pod's
    /// volume is a writable link into the data root). Refused unless
    /// CERTVOL_TESTS_ONLY_ALLOW_NO_TMPFS=1 is set too; `certvol demo` needs neither.
    #[arg(long)]
    allow_no_tmpfs: bool,
    /// How long a publish waits for its certificate before answering DeadlineExceeded (kubelet's
    /// retry then resumes the same request).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    issue_timeout: Duration,
    /// A namespace whose ConfigMaps and Secrets every volume may name as trust sources
    /// (NAMESPACE/NAME/KEY in trust-configmaps / trust-secrets); unset: only the pod's own
    /// namespace. Needs Kubernetes API access (not --issuer local).
    #[arg(long)]
    trust_namespace: Option<String>,
    /// Largest trust source the node keeps (one ConfigMap or Secret key, one ClusterTrustBundle;
    /// bytes, or with a K/M/Ki/Mi suffix). A volume naming a larger one fails with an error
    /// naming the source and this cap. Every source is held once, however many volumes name it.
    #[arg(long, default_value = "1Mi", value_parser = parse_source_size)]
    max_trust_source_bytes: u64,
    /// Most bytes of trust source text the node holds in all, each source counted once however
    /// many volumes name it (bytes, or with a K/M/Ki/Mi suffix). A source that would take it past
    /// this fails its volumes with FailedPrecondition naming the source and this budget. Keep it
    /// well under the container's memory limit.
    #[arg(long, default_value = "32Mi", value_parser = parse_source_size)]
    max_trust_bytes: u64,
    /// Most Kubernetes trust sources one volume may name (entries of trust-configmaps,
    /// trust-secrets and trust-cluster-bundles, plus trust-signer-name); a publish naming more
    /// is refused with InvalidArgument.
    #[arg(long, default_value_t = certvol_driver::spec::attrs::DEFAULT_MAX_TRUST_SOURCES, value_parser = parse_count)]
    max_trust_sources_per_volume: usize,
    /// Bytes (whole 4 KiB pages) the driver may keep in all volumes' tmpfs together: their files
    /// and private keys. The kernel charges tmpfs pages to the driver's memory cgroup, so this
    /// must stay well under the container's memory limit. A publish that would pass it fails
    /// with FailedPrecondition; a renewal or trust-bundle rewrite that would keeps the volume's
    /// current files and is retried later.
    #[arg(long, default_value = "32Mi", value_parser = parse_source_size)]
    max_volume_bytes: u64,
    /// Most distinct trust sources (each one list and watch on the API server) the volumes of
    /// one namespace may have watched at once; a publish that would exceed it fails with
    /// FailedPrecondition naming the namespace and this cap, and kubelet retries it.
    #[arg(long, default_value_t = certvol_driver::trust::watch::DEFAULT_MAX_WATCHES_PER_NAMESPACE, value_parser = parse_count)]
    max_trust_watches_per_namespace: usize,
    /// How many issued requests per volume the issuer keeps.
    #[arg(long, default_value_t = 1)]
    request_history: usize,
    /// How many renewals may work at once, shared round-robin between namespaces. A renewal
    /// waiting for its signer's answer (cert-manager, kubernetes-csr) does not count.
    #[arg(long, default_value_t = 4)]
    renew_concurrency: usize,
    /// Shortest certificate duration a volume may ask for (Go duration); shorter volumes are
    /// refused with InvalidArgument. cert-manager's floor is 1h too.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    min_duration: Duration,
    /// Longest certificate duration a volume may ask for (Go duration); longer volumes are
    /// refused with InvalidArgument.
    #[arg(long, default_value = "8760h", value_parser = parse_duration)]
    max_duration: Duration,
    /// How many certvol volumes one pod may have on this node; more are refused with
    /// InvalidArgument.
    #[arg(long, default_value_t = certvol_driver::spec::limits::DEFAULT_MAX_VOLUMES_PER_POD, value_parser = parse_count)]
    max_volumes_per_pod: usize,
    /// Refuse volumes asking for RSA 4096 keys (key-size "4096") with PermissionDenied: each
    /// takes seconds of CPU to generate. Already published volumes keep renewing.
    #[arg(long)]
    forbid_rsa_4096: bool,
    /// After SIGTERM, how long in-flight calls and renewals may take to finish.
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    grace_period: Duration,
    /// Where to serve Prometheus /metrics and the /healthz and /readyz probes (IP:PORT); "off"
    /// or an empty value disables the endpoint.
    #[arg(long, env = "METRICS_ADDRESS", default_value = certvol_driver::obs::ops::DEFAULT_ADDRESS, value_parser = certvol_driver::obs::ops::parse_address)]
    metrics_address: ::std::option::Option<std::net::SocketAddr>,
}

#[cfg(feature = "demo")]
#[derive(Debug, clap::Args)]
struct DemoArgs {
    /// Keep the temporary data root and print its path instead of deleting it.
    #[arg(long)]
    keep: bool,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    certvol_driver::spec::attrs::parse_duration(s)
}

/// A positive count.
fn parse_count(s: &str) -> Result<usize, String> {
    s.parse::<usize>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("{s:?} is not a count; accepted: a whole number of 1 or more"))
}

/// A namespace name: a DNS-1123 label (lower-case alphanumerics and '-', at most 63).
fn parse_namespace(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "{s:?} is not a namespace name; accepted: lower-case letters, digits and '-', at most 63 characters, starting and ending with a letter or digit"
        ))
    }
}

fn parse_dns_pattern(s: &str) -> Result<DnsPattern, String> {
    s.parse()
}

fn parse_uri_pattern(s: &str) -> Result<UriPattern, String> {
    s.parse()
}

fn parse_cidr(s: &str) -> Result<IpCidr, String> {
    s.parse()
}

fn parse_size(s: &str) -> Result<u64, String> {
    parse_bytes(s)?
        .filter(|&n| n >= 64 * 1024)
        .ok_or_else(|| format!("{s:?} is out of range; accepted: 64Ki or more"))
}

fn parse_source_size(s: &str) -> Result<u64, String> {
    parse_bytes(s)?
        .filter(|&n| n >= 1024)
        .ok_or_else(|| format!("{s:?} is out of range; accepted: 1Ki or more"))
}

/// Bytes with an optional K/Ki/M/Mi unit; `None` when the product overflows.
fn parse_bytes(s: &str) -> Result<Option<u64>, String> {
    let (digits, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a size; accepted: e.g. 4194304, 4Mi, 512Ki, 4M"))?;
    let mult: u64 = match unit {
        "" => 1,
        "K" | "k" => 1000,
        "Ki" => 1024,
        "M" => 1000 * 1000,
        "Mi" => 1024 * 1024,
        _ => {
            return Err(format!(
                "{s:?}: unknown unit {unit:?}; accepted: K, Ki, M, Mi"
            ));
        }
    };
    Ok(n.checked_mul(mult))
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
            let args = *args;
            if args.min_duration > args.max_duration {
                anyhow::bail!(
                    "certvol node: --min-duration ({:?}) is longer than --max-duration ({:?}); accepted: a minimum no longer than the maximum",
                    args.min_duration,
                    args.max_duration
                );
            }
            let mounter = node::choose_mounter(&args.data_root, args.allow_no_tmpfs)
                .context("certvol node")?;
            let opts = NodeOptions {
                endpoint: args.endpoint,
                node_id: args.node_id,
                driver_name: args.driver_name,
                data_root: args.data_root,
                kubelet_dir: args.kubelet_dir,
                issuer: args.issuer,
                local_ca_cert: args.local_ca_cert,
                local_ca_key: args.local_ca_key,
                local_ca_max_duration: args.local_ca_max_duration,
                local_policy: LocalPolicy {
                    allow_ca: args.local_allow_ca,
                    cluster_domain: args.cluster_domain,
                    trust_domain: args.trust_domain,
                    allow_dns: args.local_allow_dns,
                    allow_uris: args.local_allow_uri,
                    allow_ips: args.local_allow_ip_cidr,
                },
                tmpfs_size: args.tmpfs_size,
                issue_timeout: args.issue_timeout,
                use_token_request: args.use_token_request,
                api_rate_limit: certvol_driver::kube::client::RateLimit {
                    qps: args.kube_api_qps,
                    burst: args.kube_api_burst,
                },
                issuance_rate_limit: certvol_driver::kube::client::RateLimit {
                    qps: args.issuance_api_qps,
                    burst: args.issuance_api_burst,
                },
                request_history: args.request_history,
                request_watch: RequestWatch {
                    namespaces: args.request_namespaces,
                    limits: CacheLimits {
                        per_namespace: args.max_requests_per_namespace,
                        total: args.max_requests,
                        ..CacheLimits::default()
                    },
                },
                trust_namespace: args.trust_namespace,
                trust_limits: certvol_driver::trust::TrustLimits {
                    max_source_bytes: usize::try_from(args.max_trust_source_bytes)
                        .unwrap_or(usize::MAX),
                    max_watches_per_namespace: args.max_trust_watches_per_namespace,
                    max_total_bytes: usize::try_from(args.max_trust_bytes).unwrap_or(usize::MAX),
                },
                max_trust_sources: args.max_trust_sources_per_volume,
                max_volume_bytes: args.max_volume_bytes,
                renew_concurrency: args.renew_concurrency,
                limits: certvol_driver::spec::limits::Limits {
                    min_duration: args.min_duration,
                    max_duration: args.max_duration,
                    max_volumes_per_pod: args.max_volumes_per_pod,
                },
                forbid_rsa_4096: args.forbid_rsa_4096,
                grace_period: args.grace_period,
                metrics_address: args.metrics_address,
            };
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

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4Mi").unwrap(), 4 << 20);
        assert_eq!(parse_size("512Ki").unwrap(), 512 << 10);
        assert_eq!(parse_size("1M").unwrap(), 1_000_000);
        assert!(parse_size("1Gi").is_err());
        assert!(parse_size("10").is_err());
        assert!(parse_size("abc").is_err());
    }
}
