//! `certvol node`'s options: the command line is the one place their defaults are written
//! ([`NodeOptions::new`] parses an empty command line), and the grouped values each layer takes
//! are derived from them here.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use super::IssuerKind;
use crate::issuer::filing::RequestWatch;
use crate::issuer::policy::{self, DnsPattern, IpCidr, LocalPolicy, UriPattern};
use crate::issuer::watch::CacheLimits;
use crate::kube::client::RateLimit;
use crate::spec::limits::Limits;
use crate::trust::TrustLimits;

/// The default CSI driver name.
pub const DEFAULT_DRIVER_NAME: &str = "csi.certvol.io";
/// The default data root: persistent (state must survive restarts) and never under /tmp, which
/// systemd-tmpfiles cleans.
pub const DEFAULT_DATA_ROOT: &str = "/var/lib/certvol";

#[derive(Clone, Debug, clap::Args)]
pub struct NodeOptions {
    /// CSI endpoint to serve.
    #[arg(long, env = "CSI_ENDPOINT", default_value = "unix:///csi/csi.sock")]
    pub endpoint: String,
    /// This node's name (spec.nodeName); names requests and NodeGetInfo.
    #[arg(long, env = "NODE_NAME")]
    pub node_id: String,
    /// CSI driver name reported by GetPluginInfo; must match the CSIDriver object.
    #[arg(long, default_value = DEFAULT_DRIVER_NAME)]
    pub driver_name: String,
    /// Persistent directory for volume state and tmpfs mounts (never under /tmp).
    #[arg(long, default_value = DEFAULT_DATA_ROOT)]
    pub data_root: PathBuf,
    /// kubelet's root directory (its --root-dir). NodePublishVolume and NodeUnpublishVolume
    /// refuse target paths outside its pods/ subdirectory.
    #[arg(long, env = "KUBELET_ROOT_DIR", default_value = crate::volume::DEFAULT_KUBELET_DIR)]
    pub kubelet_dir: PathBuf,
    /// Issuer backend: cert-manager CertificateRequests (needs the Kubernetes API: in-cluster
    /// service account or KUBECONFIG) or the embedded local CA.
    #[arg(long, value_enum, default_value_t = IssuerKind::CertManager)]
    pub issuer: IssuerKind,
    /// cert-manager mode: file each request with the pod's own service-account token, which
    /// kubelet passes when the CSIDriver sets tokenRequests and requiresRepublish.
    #[arg(long)]
    pub use_token_request: bool,
    /// Kubernetes API requests per second (client-side limit, like client-go's --kube-api-qps)
    /// of the node's general client: trust-source watches, Events and discovery. Issuance has
    /// its own budget (--issuance-api-qps).
    #[arg(long, default_value_t = RateLimit::default().qps)]
    pub kube_api_qps: f64,
    /// Kubernetes API burst above the QPS limit.
    #[arg(long, default_value_t = RateLimit::default().burst)]
    pub kube_api_burst: u32,
    /// Requests per second of the issuer's own API client (filing, reading and deleting
    /// CertificateRequests / CertificateSigningRequests and their watch), kept apart from
    /// --kube-api-qps (trust sources, Events, discovery) so those cannot delay issuance.
    #[arg(long, default_value_t = RateLimit::default().qps)]
    pub issuance_api_qps: f64,
    /// Burst above --issuance-api-qps.
    #[arg(long, default_value_t = RateLimit::default().burst)]
    pub issuance_api_burst: u32,
    /// Namespaces in which the node files and watches cert-manager CertificateRequests
    /// (comma-separated, one watch each, needing only namespaced RBAC); publishes for pods in
    /// other namespaces fail with InvalidArgument. Unset: all namespaces, with one cluster-wide
    /// watch. --issuer cert-manager only.
    #[arg(long, value_delimiter = ',', value_name = "NAMESPACE", value_parser = parse_namespace)]
    pub request_namespaces: Vec<String>,
    /// Most of the node's labelled request objects cached per namespace (per requesting pod's
    /// namespace for CertificateSigningRequests); more are ignored and counted in
    /// certvol_request_watch_dropped_total. Bounds what one tenant can make the node hold.
    #[arg(long, default_value_t = CacheLimits::default().per_namespace, value_parser = parse_count)]
    pub max_requests_per_namespace: usize,
    /// Most labelled request objects cached in all.
    #[arg(long, default_value_t = CacheLimits::default().total, value_parser = parse_count)]
    pub max_requests: usize,
    /// Local CA certificate (PEM). Without it, a CA is generated once and kept in the data root.
    #[arg(long, requires = "local_ca_key")]
    pub local_ca_cert: Option<PathBuf>,
    /// Local CA private key (PEM).
    #[arg(long, requires = "local_ca_cert")]
    pub local_ca_key: Option<PathBuf>,
    /// Longest validity the local CA signs (Go duration); longer requests are capped.
    #[arg(long, default_value = "8760h", value_parser = parse_duration)]
    pub local_ca_max_duration: Duration,
    /// Local CA policy: issue CA certificates (is-ca, with pathLenConstraint 0) and the cert sign
    /// / crl sign usages. Off: such volumes are refused with PermissionDenied.
    #[arg(long)]
    pub local_allow_ca: bool,
    /// Local CA policy: DNS names allowed besides the pod's own namespace's service and pod
    /// names (repeatable): "api.example.com" exactly, "*.example.com" one label below,
    /// "**.example.com" any depth below, "**" any name.
    #[arg(long = "local-allow-dns", value_name = "PATTERN", value_parser = parse_dns_pattern)]
    pub local_allow_dns: Vec<DnsPattern>,
    /// Local CA policy: URI SANs allowed besides the pod's own SPIFFE ID (repeatable): a URI
    /// exactly, or a prefix ending in "*".
    #[arg(long = "local-allow-uri", value_name = "PATTERN", value_parser = parse_uri_pattern)]
    pub local_allow_uri: Vec<UriPattern>,
    /// Local CA policy: IP ranges whose addresses volumes may have as IP SANs (repeatable, e.g.
    /// 10.0.0.0/8); none by default.
    #[arg(long = "local-allow-ip-cidr", value_name = "CIDR", value_parser = parse_cidr)]
    pub local_allow_ip_cidr: Vec<IpCidr>,
    /// The cluster's DNS domain: the local CA policy allows <svc>.<namespace>.svc.<domain> and
    /// <pod>.<namespace>.pod.<domain> names.
    #[arg(long, default_value = policy::DEFAULT_CLUSTER_DOMAIN, value_parser = policy::parse_domain)]
    pub cluster_domain: String,
    /// SPIFFE trust domain of the pods' own IDs (spiffe://<domain>/ns/<namespace>/sa/<sa>),
    /// which the local CA policy allows as URI SANs.
    #[arg(long, default_value = policy::DEFAULT_TRUST_DOMAIN, value_parser = policy::parse_domain)]
    pub trust_domain: String,
    /// Size limit of each volume's tmpfs (bytes, or with a K/M/Ki/Mi suffix).
    #[arg(long, default_value = "4Mi", value_parser = parse_size)]
    pub tmpfs_size: u64,
    /// Tests only: use plain directories when tmpfs cannot be mounted (keys on disk, and the pod's
    /// volume is a writable link into the data root). Refused unless
    /// CERTVOL_TESTS_ONLY_ALLOW_NO_TMPFS=1 is set too; `certvol demo` needs neither.
    #[arg(long)]
    pub allow_no_tmpfs: bool,
    /// How long a publish waits for its certificate before answering DeadlineExceeded (kubelet's
    /// retry then resumes the same request).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub issue_timeout: Duration,
    /// A namespace whose ConfigMaps and Secrets every volume may name as trust sources
    /// (NAMESPACE/NAME/KEY in trust-configmaps / trust-secrets); unset: only the pod's own
    /// namespace. Needs Kubernetes API access (not --issuer local).
    #[arg(long)]
    pub trust_namespace: Option<String>,
    /// Largest trust source the node keeps (one ConfigMap or Secret key, one ClusterTrustBundle;
    /// bytes, or with a K/M/Ki/Mi suffix). A volume naming a larger one fails with an error
    /// naming the source and this cap. Every source is held once, however many volumes name it.
    #[arg(long, default_value = "1Mi", value_parser = parse_source_size)]
    pub max_trust_source_bytes: u64,
    /// Most bytes of trust source text the node holds in all, each source counted once however
    /// many volumes name it (bytes, or with a K/M/Ki/Mi suffix). A source that would take it past
    /// this fails its volumes with FailedPrecondition naming the source and this budget. Keep it
    /// well under the container's memory limit.
    #[arg(long, default_value = "32Mi", value_parser = parse_source_size)]
    pub max_trust_bytes: u64,
    /// Most Kubernetes trust sources one volume may name (entries of trust-configmaps,
    /// trust-secrets and trust-cluster-bundles, plus trust-signer-name); a publish naming more
    /// is refused with InvalidArgument.
    #[arg(long, default_value_t = crate::spec::attrs::DEFAULT_MAX_TRUST_SOURCES, value_parser = parse_count)]
    pub max_trust_sources_per_volume: usize,
    /// Bytes (whole 4 KiB pages) the driver may keep in all volumes' tmpfs together: their files
    /// and private keys. The kernel charges tmpfs pages to the driver's memory cgroup, so this
    /// must stay well under the container's memory limit. A publish that would pass it fails
    /// with FailedPrecondition; a renewal or trust-bundle rewrite that would keeps the volume's
    /// current files and is retried later.
    // A quarter of the chart's 128Mi memory limit, as the trust text budget (--max-trust-bytes,
    // 32Mi, which peaks at about 75 MiB resident when full); the rest is the driver's own working
    // set and the kernel's per-volume objects (inodes, mounts: tens of KiB each), not counted here.
    #[arg(long, default_value = "32Mi", value_parser = parse_source_size)]
    pub max_volume_bytes: u64,
    /// Most distinct trust sources (each one list and watch on the API server) the volumes of
    /// one namespace may have watched at once; a publish that would exceed it fails with
    /// FailedPrecondition naming the namespace and this cap, and kubelet retries it.
    #[arg(long, default_value_t = crate::trust::watch::DEFAULT_MAX_WATCHES_PER_NAMESPACE, value_parser = parse_count)]
    pub max_trust_watches_per_namespace: usize,
    /// How many issued requests per volume the issuer keeps.
    #[arg(long, default_value_t = 1)]
    pub request_history: usize,
    /// How many renewals may work at once, shared round-robin between namespaces. A renewal
    /// waiting for its signer's answer (cert-manager, kubernetes-csr) does not count.
    #[arg(long, default_value_t = 4)]
    pub renew_concurrency: usize,
    /// Shortest certificate duration a volume may ask for (Go duration); shorter volumes are
    /// refused with InvalidArgument. cert-manager's floor is 1h too.
    // A very short duration would keep renewal slots and the API busy.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub min_duration: Duration,
    /// Longest certificate duration a volume may ask for (Go duration); longer volumes are
    /// refused with InvalidArgument.
    // A year: the longest a leaf certificate is commonly trusted (the local CA's default cap too).
    #[arg(long, default_value = "8760h", value_parser = parse_duration)]
    pub max_duration: Duration,
    /// How many certvol volumes one pod may have on this node; more are refused with
    /// InvalidArgument.
    // More than any real pod needs (an SNI server with a few domains, a client certificate, a
    // keystore), few enough that one pod cannot hold a noticeable share of the node.
    #[arg(long, default_value_t = 32, value_parser = parse_count)]
    pub max_volumes_per_pod: usize,
    /// Refuse volumes asking for RSA 4096 keys (key-size "4096") with PermissionDenied: each
    /// takes seconds of CPU to generate. Already published volumes keep renewing.
    #[arg(long)]
    pub forbid_rsa_4096: bool,
    /// After SIGTERM, how long in-flight calls and renewals may take to finish.
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    pub grace_period: Duration,
    /// Where to serve Prometheus /metrics and the /healthz and /readyz probes (IP:PORT); "off"
    /// or an empty value disables the endpoint.
    #[arg(long, env = "METRICS_ADDRESS", default_value = crate::obs::ops::DEFAULT_ADDRESS, value_parser = crate::obs::ops::parse_address)]
    // Spelled out so clap keeps the parser's own Option (None for "off") instead of making the
    // flag optional.
    pub metrics_address: ::std::option::Option<SocketAddr>,
}

/// A command line holding only [`NodeOptions`], to take their defaults from clap.
#[derive(Debug, Parser)]
struct OnlyNodeOptions {
    #[command(flatten)]
    options: NodeOptions,
}

impl NodeOptions {
    /// The defaults `certvol node` runs with, for the given endpoint, node and data root (the
    /// demo and tests start from these). Environment variables the flags read (`KUBELET_ROOT_DIR`,
    /// `METRICS_ADDRESS`) apply as they do on the command line.
    pub fn new(
        endpoint: impl Into<String>,
        node_id: impl Into<String>,
        data_root: PathBuf,
    ) -> Self {
        let args = [
            "certvol-node".into(),
            "--endpoint".into(),
            endpoint.into(),
            "--node-id".into(),
            node_id.into(),
            "--data-root".into(),
            data_root.into_os_string().to_string_lossy().into_owned(),
        ];
        match OnlyNodeOptions::try_parse_from(args) {
            Ok(parsed) => parsed.options,
            // Only these three flags are given and each takes any string: clap cannot refuse them.
            Err(e) => unreachable!("the default node options do not parse: {e}"),
        }
    }

    /// Refuses combinations no single flag can check.
    pub fn check(&self) -> Result<(), String> {
        if self.min_duration > self.max_duration {
            return Err(format!(
                "--min-duration ({:?}) is longer than --max-duration ({:?}); accepted: a minimum no longer than the maximum",
                self.min_duration, self.max_duration
            ));
        }
        Ok(())
    }

    /// What the local CA agrees to sign.
    pub fn local_policy(&self) -> LocalPolicy {
        LocalPolicy {
            allow_ca: self.local_allow_ca,
            cluster_domain: self.cluster_domain.clone(),
            trust_domain: self.trust_domain.clone(),
            allow_dns: self.local_allow_dns.clone(),
            allow_uris: self.local_allow_uri.clone(),
            allow_ips: self.local_allow_ip_cidr.clone(),
        }
    }

    /// The general API client's token bucket.
    pub fn api_rate_limit(&self) -> RateLimit {
        RateLimit {
            qps: self.kube_api_qps,
            burst: self.kube_api_burst,
        }
    }

    /// The issuance client's own token bucket.
    pub fn issuance_rate_limit(&self) -> RateLimit {
        RateLimit {
            qps: self.issuance_api_qps,
            burst: self.issuance_api_burst,
        }
    }

    /// Where the issuer's request watch looks and how much it caches.
    pub fn request_watch(&self) -> RequestWatch {
        RequestWatch {
            namespaces: self.request_namespaces.clone(),
            limits: CacheLimits {
                per_namespace: self.max_requests_per_namespace,
                total: self.max_requests,
                ..CacheLimits::default()
            },
        }
    }

    /// The trust sources' byte and watch budgets.
    pub fn trust_limits(&self) -> TrustLimits {
        TrustLimits {
            max_source_bytes: usize::try_from(self.max_trust_source_bytes).unwrap_or(usize::MAX),
            max_watches_per_namespace: self.max_trust_watches_per_namespace,
            max_total_bytes: usize::try_from(self.max_trust_bytes).unwrap_or(usize::MAX),
        }
    }

    /// The volume layer's tunables.
    pub fn volume_config(&self) -> crate::volume::Config {
        crate::volume::Config {
            node_id: self.node_id.clone(),
            tmpfs_size: self.tmpfs_size,
            issue_timeout: self.issue_timeout,
            request_history: self.request_history,
            policy: certvol_renewer::Policy::default(),
            kubelet_dir: self.kubelet_dir.clone(),
            limits: self.limits(),
            forbid_rsa_4096: self.forbid_rsa_4096,
            // One key generation per CPU: what the machine has, not a setting.
            keygen_concurrency: std::thread::available_parallelism().map_or(1, |n| n.get()),
            max_trust_sources: self.max_trust_sources_per_volume,
            max_volume_bytes: self.max_volume_bytes,
        }
    }

    /// What one volume or pod may ask of the node.
    pub fn limits(&self) -> Limits {
        Limits {
            min_duration: self.min_duration,
            max_duration: self.max_duration,
            max_volumes_per_pod: self.max_volumes_per_pod,
        }
    }
}

pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    crate::spec::attrs::parse_duration(s)
}

/// A positive count.
pub(crate) fn parse_count(s: &str) -> Result<usize, String> {
    s.parse::<usize>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("{s:?} is not a count; accepted: a whole number of 1 or more"))
}

/// A namespace name: a DNS-1123 label (lower-case alphanumerics and '-', at most 63).
pub(crate) fn parse_namespace(s: &str) -> Result<String, String> {
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

pub(crate) fn parse_dns_pattern(s: &str) -> Result<DnsPattern, String> {
    s.parse()
}

pub(crate) fn parse_uri_pattern(s: &str) -> Result<UriPattern, String> {
    s.parse()
}

pub(crate) fn parse_cidr(s: &str) -> Result<IpCidr, String> {
    s.parse()
}

pub(crate) fn parse_size(s: &str) -> Result<u64, String> {
    parse_bytes(s)?
        .filter(|&n| n >= 64 * 1024)
        .ok_or_else(|| format!("{s:?} is out of range; accepted: 64Ki or more"))
}

pub(crate) fn parse_source_size(s: &str) -> Result<u64, String> {
    parse_bytes(s)?
        .filter(|&n| n >= 1024)
        .ok_or_else(|| format!("{s:?} is out of range; accepted: 1Ki or more"))
}

/// Bytes with an optional K/Ki/M/Mi unit; `None` when the product overflows.
pub(crate) fn parse_bytes(s: &str) -> Result<Option<u64>, String> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4Mi").unwrap(), 4 << 20);
        assert_eq!(parse_size("512Ki").unwrap(), 512 << 10);
        assert_eq!(parse_size("1M").unwrap(), 1_000_000);
        assert!(parse_size("1Gi").is_err());
        assert!(parse_size("10").is_err());
        assert!(parse_size("abc").is_err());
    }

    #[test]
    fn defaults_come_from_the_command_line() {
        let o = NodeOptions::new(
            "unix:///csi/csi.sock",
            "n1",
            PathBuf::from("/var/lib/certvol"),
        );
        assert_eq!(o.node_id, "n1");
        assert_eq!(o.issuer, IssuerKind::CertManager);
        assert_eq!(o.tmpfs_size, 4 << 20);
        assert_eq!(o.renew_concurrency, 4);
        assert_eq!(o.limits().min_duration, Duration::from_secs(3600));
        assert!(o.check().is_ok());
    }
}
