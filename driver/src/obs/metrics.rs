//! Prometheus metrics: the `certvol_*` families, registered into a registry the caller owns
//! (the node's, which [`crate::obs::ops`] serves) and recorded through a [`Metrics`] handle that
//! the node hands to the CSI, volume, scheduler, issuer and Kubernetes-client layers. No registry
//! is process-wide: tests register into their own.
//!
//! Labels are deliberately low-cardinality (RPC name, gRPC code, issuer kind, outcome, HTTP verb and
//! status): never a pod, volume or request name, which would grow the series count with the
//! workload.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder, text};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tonic::Code;

use crate::base::clock::{Clock, SystemClock};

type Labels = Vec<(&'static str, String)>;

/// The prefix of every family's name: the registry [`Metrics::register`] is given carries it
/// (`Registry::with_prefix(PREFIX)`), so the names are `certvol_*`.
pub const PREFIX: &str = "certvol";

/// The content type of [`encode`]'s output (OpenMetrics text, which Prometheus scrapes).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// How one issuance ended, as the `outcome` label of `certvol_issuance_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IssueOutcome {
    Issued,
    Denied,
    Failed,
    Invalid,
    Timeout,
    Unavailable,
}

impl IssueOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            IssueOutcome::Issued => "issued",
            IssueOutcome::Denied => "denied",
            IssueOutcome::Failed => "failed",
            IssueOutcome::Invalid => "invalid",
            IssueOutcome::Timeout => "timeout",
            IssueOutcome::Unavailable => "unavailable",
        }
    }
}

/// The gRPC code's canonical name as gRPC's own Go implementation spells it (the convention of
/// go-grpc-prometheus' `grpc_code` label, so dashboards carry over).
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Canceled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

/// How a trust bundle rebuild outside issuance ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefreshOutcome {
    /// A new generation of the volume's files was written.
    Updated,
    /// The rebuilt bundle equals the one in place; nothing was written.
    Unchanged,
    /// A source is missing or unreadable; the old files stay.
    SourceError,
    /// Anything else (I/O, state); the old files stay.
    Failed,
}

impl RefreshOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            RefreshOutcome::Updated => "updated",
            RefreshOutcome::Unchanged => "unchanged",
            RefreshOutcome::SourceError => "source_error",
            RefreshOutcome::Failed => "failed",
        }
    }
}

/// The handle the driver records into: cheap to clone (one `Arc`), shared by every layer that
/// records. The families live in the registry it was registered into, which whoever serves
/// `/metrics` owns.
#[derive(Clone, Debug)]
pub struct Metrics(Arc<Families>);

/// What a handle records into: each field shares its values with the copy registered in the
/// registry (prometheus-client's metrics are handles themselves).
#[derive(Debug)]
struct Families {
    publish_duration: Histogram,
    unpublish_duration: Histogram,
    rpcs: Family<Labels, Counter>,
    issuances: Family<Labels, Counter>,
    renewals: Family<Labels, Counter>,
    renewal_panics: Counter,
    trust_refreshes: Family<Labels, Counter>,
    kube_requests: Family<Labels, Counter>,
    requests_dropped: Family<Labels, Counter>,
    volume_tmpfs_bytes: Gauge,
    volume_tmpfs_budget_bytes: Gauge,
    expiries: Arc<Expiries>,
}

/// Expiry (notAfter) of every published volume's current certificate, keyed by volume id.
/// Kept here (not as labels) so `certvol_volumes` and `certvol_next_expiry_seconds` are computed
/// at scrape time.
#[derive(Debug, Default)]
struct Expiries(Mutex<HashMap<String, SystemTime>>);

impl Metrics {
    /// Registers the families into `registry` and returns the handle that records into them.
    /// The expiry gauge is computed against the system clock whenever the registry is encoded.
    pub fn register(registry: &mut Registry) -> Metrics {
        Self::register_with_clock(registry, Arc::new(SystemClock))
    }

    /// A handle whose registry is thrown away: for tests, and for parts built without a node
    /// (nothing serves what they record).
    pub fn detached() -> Metrics {
        Self::register(&mut Registry::with_prefix(PREFIX))
    }

    fn register_with_clock(registry: &mut Registry, clock: Arc<dyn Clock>) -> Metrics {
        // 5 ms .. ~82 s: a local-CA publish takes milliseconds, a cert-manager one seconds, and
        // the default issue timeout is 60 s.
        let latency = || Histogram::new(exponential_buckets(0.005, 2.0, 15));
        let families = Families {
            publish_duration: latency(),
            unpublish_duration: latency(),
            rpcs: Family::default(),
            issuances: Family::default(),
            renewals: Family::default(),
            renewal_panics: Counter::default(),
            trust_refreshes: Family::default(),
            kube_requests: Family::default(),
            requests_dropped: Family::default(),
            volume_tmpfs_bytes: Gauge::default(),
            volume_tmpfs_budget_bytes: Gauge::default(),
            expiries: Arc::new(Expiries::default()),
        };
        // Registered in this order, which is the order of the encoded text.
        families.register_rpcs(registry);
        families.register_outcomes(registry);
        families.register_kube(registry);
        families.register_volumes(registry, clock);
        Metrics(Arc::new(families))
    }

    /// Records one answered NodePublishVolume / NodeUnpublishVolume (other RPCs only count).
    pub fn rpc(&self, rpc: &'static str, code: Code, elapsed: Duration) {
        match rpc {
            "NodePublishVolume" => self.0.publish_duration.observe(elapsed.as_secs_f64()),
            "NodeUnpublishVolume" => self.0.unpublish_duration.observe(elapsed.as_secs_f64()),
            _ => {}
        }
        self.0
            .rpcs
            .get_or_create(&vec![
                ("rpc", rpc.to_string()),
                ("code", code_name(code).to_string()),
            ])
            .inc();
    }

    pub fn issuance(&self, issuer: &'static str, outcome: IssueOutcome) {
        self.0
            .issuances
            .get_or_create(&vec![
                ("issuer", issuer.to_string()),
                ("outcome", outcome.as_str().to_string()),
            ])
            .inc();
    }

    pub fn renewal(&self, renewed: bool) {
        let outcome = if renewed { "renewed" } else { "failed" };
        self.0
            .renewals
            .get_or_create(&vec![("outcome", outcome.to_string())])
            .inc();
    }

    /// A renewal task panicked (a bug: the volume is retried, the panic is in the log).
    pub fn renewal_panic(&self) {
        self.0.renewal_panics.inc();
    }

    pub fn trust_refresh(&self, outcome: RefreshOutcome) {
        self.0
            .trust_refreshes
            .get_or_create(&vec![("outcome", outcome.as_str().to_string())])
            .inc();
    }

    /// `code` is the HTTP status, or `None` when the request failed without a response.
    pub fn kube_request(&self, verb: &'static str, code: Option<u16>) {
        let code = code.map_or_else(|| "error".to_string(), |c| c.to_string());
        self.0
            .kube_requests
            .get_or_create(&vec![("verb", verb.to_string()), ("code", code)])
            .inc();
    }

    /// The request watch ignored an object (`reason`: foreign, over_limit).
    pub fn request_dropped(&self, reason: &'static str) {
        self.0
            .requests_dropped
            .get_or_create(&vec![("reason", reason.to_string())])
            .inc();
    }

    /// A volume is published (or renewed) with a certificate valid until `not_after`.
    pub fn track_volume(&self, volume_id: &str, not_after: SystemTime) {
        self.0
            .expiries
            .0
            .lock()
            .insert(volume_id.to_string(), not_after);
    }

    /// What the volumes keep in tmpfs now, and the node's budget for it.
    pub fn volume_tmpfs_bytes(&self, total: u64, budget: u64) {
        self.0
            .volume_tmpfs_bytes
            .set(i64::try_from(total).unwrap_or(i64::MAX));
        self.0
            .volume_tmpfs_budget_bytes
            .set(i64::try_from(budget).unwrap_or(i64::MAX));
    }

    /// A volume is gone.
    pub fn untrack_volume(&self, volume_id: &str) {
        self.0.expiries.0.lock().remove(volume_id);
    }
}

/// The OpenMetrics text exposition of every family in `registry`, the scrape-time gauges
/// computed now.
pub fn encode(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut out = String::new();
    text::encode(&mut out, registry)?;
    Ok(out)
}

/// Registration of the families, by group; [`Metrics::register`] calls them in order.
impl Families {
    fn register_rpcs(&self, registry: &mut Registry) {
        registry.register(
            "publish_duration_seconds",
            "Duration of NodePublishVolume calls, issuance included",
            self.publish_duration.clone(),
        );
        registry.register(
            "unpublish_duration_seconds",
            "Duration of NodeUnpublishVolume calls",
            self.unpublish_duration.clone(),
        );
        // The text encoder appends `_total` to counters.
        registry.register(
            "rpc",
            "CSI Node RPCs answered, by RPC and gRPC code",
            self.rpcs.clone(),
        );
    }

    fn register_outcomes(&self, registry: &mut Registry) {
        registry.register(
            "issuance",
            "Issuer answers, by issuer kind and outcome (issued, denied, failed, invalid, timeout, unavailable)",
            self.issuances.clone(),
        );
        registry.register(
            "renewals",
            "Certificate renewals attempted, by outcome (renewed, failed)",
            self.renewals.clone(),
        );
        registry.register(
            "renewal_panics",
            "Renewal tasks that panicked instead of answering; the scheduler retries their volume after a backoff",
            self.renewal_panics.clone(),
        );
        registry.register(
            "trust_bundle_refreshes",
            "Trust bundle rebuilds outside issuance (a source changed, a retired CA's overlap ended, a restart), by outcome (updated, unchanged, source_error, failed)",
            self.trust_refreshes.clone(),
        );
    }

    fn register_kube(&self, registry: &mut Registry) {
        registry.register(
            "kube_requests",
            "Kubernetes API requests, by verb and HTTP status code (\"error\" when no response arrived)",
            self.kube_requests.clone(),
        );
        registry.register(
            "request_watch_dropped",
            "Labelled request objects the node's request watch delivered but did not cache, by reason (foreign: not shaped like this node's own; over_limit: its namespace or the node is at --max-requests-per-namespace / --max-requests)",
            self.requests_dropped.clone(),
        );
    }

    fn register_volumes(&self, registry: &mut Registry, clock: Arc<dyn Clock>) {
        registry.register(
            "volumes",
            "Published volumes this node manages",
            VolumeCount(self.expiries.clone()),
        );
        registry.register(
            "volume_tmpfs_bytes",
            "Bytes (whole pages) the volumes' files and keys keep in their tmpfs, charged to the driver's memory cgroup",
            self.volume_tmpfs_bytes.clone(),
        );
        registry.register(
            "volume_tmpfs_budget_bytes",
            "The node's budget for volume_tmpfs_bytes (--max-volume-bytes)",
            self.volume_tmpfs_budget_bytes.clone(),
        );
        registry.register_collector(Box::new(NextExpiry {
            expiries: self.expiries.clone(),
            clock,
        }));
    }
}

/// `certvol_volumes`: the tracked volumes, counted when the registry is encoded.
#[derive(Debug)]
struct VolumeCount(Arc<Expiries>);

impl EncodeMetric for VolumeCount {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let count = self.0.0.lock().len();
        encoder.encode_gauge(&i64::try_from(count).unwrap_or(i64::MAX))
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Gauge
    }
}

/// `certvol_next_expiry_seconds`, exposed only while there is a certificate: a registered gauge
/// would always show a sample, and 0 would read as "a certificate expires now". Computed against
/// `clock` when the registry is encoded.
#[derive(Debug)]
struct NextExpiry {
    expiries: Arc<Expiries>,
    clock: Arc<dyn Clock>,
}

impl NextExpiry {
    /// Seconds until the nearest expiry, negative once expired (so an alert on "< 0" still
    /// fires); `None` without volumes.
    fn seconds(&self) -> Option<f64> {
        let nearest = self.expiries.0.lock().values().min().copied()?;
        Some(match nearest.duration_since(self.clock.now()) {
            Ok(d) => d.as_secs_f64(),
            Err(e) => -e.duration().as_secs_f64(),
        })
    }
}

impl Collector for NextExpiry {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(secs) = self.seconds() else {
            return Ok(());
        };
        let gauge = ConstGauge::new(secs);
        let metric = encoder.encode_descriptor(
            "next_expiry_seconds",
            "Seconds until the nearest notAfter among the published certificates (negative once expired)",
            None,
            gauge.metric_type(),
        )?;
        gauge.encode(metric)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::issuer::IssueError;

    fn line_value(text: &str, prefix: &str) -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(prefix) && l[prefix.len()..].starts_with(' '))
            .and_then(|l| l[prefix.len()..].trim().parse().ok())
    }

    /// A wall clock the test sets.
    #[derive(Debug)]
    struct Fixed(Mutex<SystemTime>);

    impl Clock for Fixed {
        fn now(&self) -> SystemTime {
            *self.0.lock()
        }
    }

    /// A handle over its own registry, encoded at times the test chooses.
    struct Registered {
        registry: Registry,
        clock: Arc<Fixed>,
        metrics: Metrics,
    }

    impl Registered {
        fn new() -> Self {
            let clock = Arc::new(Fixed(Mutex::new(SystemTime::UNIX_EPOCH)));
            let mut registry = Registry::with_prefix(PREFIX);
            let metrics = Metrics::register_with_clock(&mut registry, clock.clone());
            Registered {
                registry,
                clock,
                metrics,
            }
        }

        fn encode(&self, now: SystemTime) -> Result<String, std::fmt::Error> {
            *self.clock.0.lock() = now;
            encode(&self.registry)
        }
    }

    #[test]
    fn families_encode_with_names_and_labels() {
        let r = Registered::new();
        let m = &r.metrics;
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let empty = r.encode(now).unwrap();
        // Plain metrics are exposed from the start; labelled families once they have a series,
        // and the expiry gauge has no sample without volumes.
        assert!(empty.contains("# TYPE certvol_publish_duration_seconds histogram"));
        assert!(!empty.contains("certvol_rpc"), "{empty}");
        assert_eq!(line_value(&empty, "certvol_volumes"), Some(0.0));
        assert_eq!(line_value(&empty, "certvol_next_expiry_seconds"), None);
        assert!(empty.ends_with("# EOF\n"));

        m.rpc("NodePublishVolume", Code::Ok, Duration::from_millis(30));
        m.rpc("NodePublishVolume", Code::Ok, Duration::from_millis(10));
        m.rpc(
            "NodePublishVolume",
            Code::DeadlineExceeded,
            Duration::from_secs(60),
        );
        m.rpc("NodeUnpublishVolume", Code::Ok, Duration::from_millis(1));
        m.issuance(
            "local",
            crate::issuer::outcome_of(&Ok::<(), IssueError>(())),
        );
        m.issuance(
            "cert-manager",
            crate::issuer::outcome_of::<()>(&Err(IssueError::Denied {
                request: "r".into(),
                message: "no".into(),
            })),
        );
        m.renewal(true);
        m.renewal(false);
        m.renewal(false);
        m.renewal_panic();
        m.trust_refresh(RefreshOutcome::Updated);
        m.trust_refresh(RefreshOutcome::SourceError);
        m.kube_request("create", Some(201));
        m.kube_request("get", None);
        m.track_volume("a", now + Duration::from_secs(3600));
        m.track_volume("b", now + Duration::from_secs(600));
        m.track_volume("c", now + Duration::from_secs(7200));
        m.untrack_volume("c");

        let text = r.encode(now).unwrap();
        assert!(text.contains("# TYPE certvol_rpc counter"), "{text}");
        assert!(
            text.contains("# TYPE certvol_next_expiry_seconds gauge"),
            "{text}"
        );
        let v = |prefix: &str| line_value(&text, prefix);
        assert_eq!(
            v(r#"certvol_rpc_total{rpc="NodePublishVolume",code="OK"}"#),
            Some(2.0)
        );
        assert_eq!(
            v(r#"certvol_rpc_total{rpc="NodePublishVolume",code="DeadlineExceeded"}"#),
            Some(1.0)
        );
        assert_eq!(
            v(r#"certvol_rpc_total{rpc="NodeUnpublishVolume",code="OK"}"#),
            Some(1.0)
        );
        assert_eq!(v("certvol_publish_duration_seconds_count"), Some(3.0));
        assert_eq!(v("certvol_unpublish_duration_seconds_count"), Some(1.0));
        let sum = v("certvol_publish_duration_seconds_sum").unwrap();
        assert!((sum - 60.04).abs() < 1e-9, "{sum}");
        assert_eq!(
            v(r#"certvol_publish_duration_seconds_bucket{le="0.01"}"#),
            Some(1.0)
        );
        assert_eq!(
            v(r#"certvol_issuance_total{issuer="local",outcome="issued"}"#),
            Some(1.0)
        );
        assert_eq!(
            v(r#"certvol_issuance_total{issuer="cert-manager",outcome="denied"}"#),
            Some(1.0)
        );
        assert_eq!(v(r#"certvol_renewals_total{outcome="renewed"}"#), Some(1.0));
        assert_eq!(v(r#"certvol_renewals_total{outcome="failed"}"#), Some(2.0));
        assert_eq!(v("certvol_renewal_panics_total"), Some(1.0));
        assert_eq!(
            v(r#"certvol_trust_bundle_refreshes_total{outcome="updated"}"#),
            Some(1.0)
        );
        assert_eq!(
            v(r#"certvol_trust_bundle_refreshes_total{outcome="source_error"}"#),
            Some(1.0)
        );
        assert_eq!(
            v(r#"certvol_kube_requests_total{verb="create",code="201"}"#),
            Some(1.0)
        );
        assert_eq!(
            v(r#"certvol_kube_requests_total{verb="get",code="error"}"#),
            Some(1.0)
        );
        assert_eq!(v("certvol_volumes"), Some(2.0));
        assert_eq!(v("certvol_next_expiry_seconds"), Some(600.0), "{text}");

        // An expired certificate reads negative; the last volume gone removes the sample.
        let later = now + Duration::from_secs(700);
        assert_eq!(
            line_value(&r.encode(later).unwrap(), "certvol_next_expiry_seconds"),
            Some(-100.0)
        );
        m.untrack_volume("a");
        m.untrack_volume("b");
        let gone = r.encode(later).unwrap();
        assert_eq!(line_value(&gone, "certvol_volumes"), Some(0.0));
        assert_eq!(line_value(&gone, "certvol_next_expiry_seconds"), None);
    }

    #[test]
    fn clones_record_into_one_registry_and_registries_stay_apart() {
        let r = Registered::new();
        let clone = r.metrics.clone();
        clone.renewal_panic();
        r.metrics.renewal_panic();
        Metrics::detached().renewal_panic();
        let text = r.encode(SystemTime::UNIX_EPOCH).unwrap();
        assert_eq!(line_value(&text, "certvol_renewal_panics_total"), Some(2.0));
    }
}
