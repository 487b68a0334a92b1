//! `certvol node`: wires the layers together, serves CSI on a unix socket, runs start-up recovery
//! and the renewal loop, and drains on shutdown. This is the one place background work is spawned.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use certvol_proto::csi::v1::identity_server::IdentityServer;
use certvol_proto::csi::v1::node_server::NodeServer;
use tokio::net::UnixListener;
use tokio::sync::watch;
use tokio_stream::wrappers::UnixListenerStream;
use tracing::{Instrument, error, info, info_span, warn};

use crate::base::clock::{Clock, SystemClock};
use crate::csi::{IdentityService, NodeService, Readiness};
use crate::files::mount::{DirMounter, KernelMounter, Mounter, Probed};
use crate::files::store::Store;
use crate::issuer::Issuer;
use crate::issuer::certmanager::{CertManagerConfig, CertManagerIssuer};
use crate::issuer::kubecsr::{KubeCsrConfig, KubeCsrIssuer};
use crate::issuer::local::{LocalCa, LocalCaConfig};
use crate::kube::client::ApiClients;
use crate::kube::discovery::{self, Apis};
use crate::kube::events::EventSink;
use crate::kube::pods::PodIdentity;
use crate::runtime::refresh;
use crate::runtime::scheduler;
use crate::trust::TrustCache;
use crate::volume::recovery;
use crate::volume::{Config, TrustWiring, VolumeManager};
use futures::future::BoxFuture;

/// The default CSI driver name.
pub const DEFAULT_DRIVER_NAME: &str = "csi.certvol.io";
/// The default data root: persistent (state must survive restarts) and never under /tmp, which
/// systemd-tmpfiles cleans.
pub const DEFAULT_DATA_ROOT: &str = "/var/lib/certvol";

/// Which issuer backend signs certificates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum IssuerKind {
    /// cert-manager CertificateRequests, through the Kubernetes API (in-cluster config or
    /// KUBECONFIG).
    CertManager,
    /// Kubernetes CertificateSigningRequests (certificates.k8s.io/v1) for the volume's
    /// `signer-name`, through the Kubernetes API (in-cluster config or KUBECONFIG).
    KubernetesCsr,
    /// The embedded local CA (no cluster needed).
    Local,
}

/// Everything `certvol node` needs.
#[derive(Clone, Debug)]
pub struct NodeOptions {
    pub endpoint: String,
    pub node_id: String,
    pub driver_name: String,
    pub data_root: PathBuf,
    /// kubelet's root directory (`--kubelet-dir`); target paths must be in its `pods/`.
    pub kubelet_dir: PathBuf,
    pub issuer: IssuerKind,
    pub local_ca_cert: Option<PathBuf>,
    pub local_ca_key: Option<PathBuf>,
    pub local_ca_max_duration: Duration,
    /// What the local CA agrees to sign (`--local-allow-*`, `--cluster-domain`,
    /// `--trust-domain`).
    pub local_policy: crate::issuer::policy::LocalPolicy,
    pub tmpfs_size: u64,
    pub issue_timeout: Duration,
    /// cert-manager mode: create requests with the pod's own token (kubelet `tokenRequests`).
    pub use_token_request: bool,
    /// Client-side rate limit of the Kubernetes API client.
    pub api_rate_limit: crate::kube::client::RateLimit,
    /// Client-side rate limit of the issuer's own client (`--issuance-api-qps/-burst`): request
    /// create/get/delete and their watch, apart from trust sources, Events and discovery.
    pub issuance_rate_limit: crate::kube::client::RateLimit,
    pub request_history: usize,
    /// `--request-namespaces`, `--max-requests-per-namespace`, `--max-requests`: where the
    /// issuer's request watch looks and how much it caches.
    pub request_watch: crate::issuer::filing::RequestWatch,
    /// `--trust-namespace`: the namespace whose ConfigMaps and Secrets any volume may name as
    /// trust sources, besides the pod's own.
    pub trust_namespace: Option<String>,
    /// `--max-trust-source-bytes`, `--max-trust-bytes` and `--max-trust-watches-per-namespace`.
    pub trust_limits: crate::trust::TrustLimits,
    /// `--max-trust-sources-per-volume`.
    pub max_trust_sources: usize,
    /// `--max-volume-bytes`: what all volumes' tmpfs may hold together.
    pub max_volume_bytes: u64,
    /// How many renewals work at once (waiting for a signer's answer does not count).
    pub renew_concurrency: usize,
    /// `--min-duration`, `--max-duration`, `--max-volumes-per-pod`.
    pub limits: crate::spec::limits::Limits,
    /// `--forbid-rsa-4096`: refuse volumes asking for RSA 4096 keys.
    pub forbid_rsa_4096: bool,
    pub grace_period: Duration,
    /// Where to serve `/metrics`, `/healthz` and `/readyz`; `None` serves nothing.
    pub metrics_address: Option<SocketAddr>,
}

impl NodeOptions {
    pub fn new(
        endpoint: impl Into<String>,
        node_id: impl Into<String>,
        data_root: PathBuf,
    ) -> Self {
        NodeOptions {
            endpoint: endpoint.into(),
            node_id: node_id.into(),
            driver_name: DEFAULT_DRIVER_NAME.into(),
            data_root,
            kubelet_dir: PathBuf::from(crate::volume::DEFAULT_KUBELET_DIR),
            issuer: IssuerKind::Local,
            local_ca_cert: None,
            local_ca_key: None,
            local_ca_max_duration: Duration::from_secs(365 * 24 * 3600),
            local_policy: crate::issuer::policy::LocalPolicy::default(),
            tmpfs_size: 4 << 20,
            issue_timeout: Duration::from_secs(60),
            use_token_request: false,
            api_rate_limit: crate::kube::client::RateLimit::default(),
            issuance_rate_limit: crate::kube::client::RateLimit::default(),
            request_history: 1,
            request_watch: crate::issuer::filing::RequestWatch::default(),
            trust_namespace: None,
            trust_limits: crate::trust::TrustLimits::default(),
            max_trust_sources: crate::spec::attrs::DEFAULT_MAX_TRUST_SOURCES,
            max_volume_bytes: crate::files::budget::DEFAULT_MAX_VOLUME_BYTES,
            renew_concurrency: 4,
            limits: crate::spec::limits::Limits::default(),
            forbid_rsa_4096: false,
            grace_period: Duration::from_secs(20),
            metrics_address: None,
        }
    }
}

/// Why the node plugin could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    #[error("--endpoint {0:?} is not supported; accepted: unix:///absolute/path/to/csi.sock")]
    Endpoint(String),
    #[error(
        "--kubelet-dir {0:?} is not accepted; accepted: an absolute path without \"..\" (kubelet's --root-dir, /var/lib/kubelet by default)"
    )]
    KubeletDir(PathBuf),
    /// The tmpfs probe below the data root failed; with `--allow-no-tmpfs` only a failed mount
    /// is tolerated (plain directories need a writable data root too).
    #[error(
        "cannot mount the volumes' tmpfs below the data root: {0}; refusing to start{hint}",
        hint = if .0.directories_would_work() {
            ". For tests only, --allow-no-tmpfs with CERTVOL_TESTS_ONLY_ALLOW_NO_TMPFS=1 uses plain directories instead (keys then live on disk)"
        } else {
            ""
        }
    )]
    NoTmpfs(crate::files::mount::ProbeError),
    /// `--allow-no-tmpfs` without its environment variable: the fallback is for tests only.
    #[error(
        "--allow-no-tmpfs is for tests only and needs {ALLOW_NO_TMPFS_ENV}=1 in the environment too: with plain directories private keys live on disk and the pod's volume is a writable link into the driver's data root (a pod could point its files anywhere); refusing to start"
    )]
    NoTmpfsNotEnabled,
    #[error("data root: {0}")]
    Store(#[from] crate::files::store::StoreError),
    #[error("local CA: {0}")]
    LocalCa(#[from] crate::issuer::local::LocalCaError),
    #[error("socket {path}: {source}")]
    Socket {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("recovery: {0}")]
    Recovery(#[from] crate::volume::VolumeError),
    #[error(
        "Kubernetes API configuration (in-cluster service account or KUBECONFIG) for --issuer cert-manager or kubernetes-csr: {0}"
    )]
    Kube(String),
    #[error("gRPC server: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error(transparent)]
    Ops(#[from] crate::obs::ops::OpsError),
}

/// Parses `unix:///path` (also `unix:/path`) into a socket path.
pub fn socket_path(endpoint: &str) -> Result<PathBuf, NodeError> {
    let path = endpoint
        .strip_prefix("unix://")
        .or_else(|| endpoint.strip_prefix("unix:"))
        .filter(|p| p.starts_with('/'))
        .ok_or_else(|| NodeError::Endpoint(endpoint.to_string()))?;
    Ok(PathBuf::from(path))
}

/// The kubelet directory bounds every target path lexically, so it must be absolute and free of
/// `..` (which would make "inside" meaningless).
pub fn check_kubelet_dir(dir: &Path) -> Result<(), NodeError> {
    let lexical = dir.is_absolute()
        && !dir
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir));
    if lexical {
        Ok(())
    } else {
        Err(NodeError::KubeletDir(dir.to_path_buf()))
    }
}

/// Binds the CSI socket with mode 0600 from its first moment: bind under a temporary name, set the
/// mode, then rename into place, so no other user can ever connect. A stale socket from an earlier
/// run is replaced; anything else at the path is an error.
pub fn bind_socket(path: &Path) -> Result<UnixListener, NodeError> {
    let err = |source| NodeError::Socket {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path).map_err(err)?,
        Ok(_) => {
            return Err(err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "exists and is not a socket; not replacing it",
            )));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let dir = path.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(dir).map_err(err)?;
    let tmp = dir.join(format!(".certvol-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let listener = UnixListener::bind(&tmp).map_err(err)?;
    let placed = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&tmp);
        return Err(err(e));
    }
    Ok(listener)
}

/// The environment variable `--allow-no-tmpfs` also needs (set to `1`).
pub const ALLOW_NO_TMPFS_ENV: &str = "CERTVOL_TESTS_ONLY_ALLOW_NO_TMPFS";

/// Whether the directory fallback may be used: the flag alone is refused, so that a flag copied
/// into a production DaemonSet cannot put keys on disk and give pods a writable link into the
/// data root. `env` is the value of [`ALLOW_NO_TMPFS_ENV`].
pub fn no_tmpfs_allowed(flag: bool, env: Option<&std::ffi::OsStr>) -> Result<bool, NodeError> {
    match (flag, env) {
        (false, _) => Ok(false),
        (true, Some(v)) if v == "1" => Ok(true),
        (true, _) => Err(NodeError::NoTmpfsNotEnabled),
    }
}

/// Chooses how volumes are mounted: tmpfs when a probe below `data_root` (where the volumes'
/// tmpfs go) can mount one; plain directories only when allowed (`--allow-no-tmpfs` and
/// [`ALLOW_NO_TMPFS_ENV`]) and the data root is writable.
pub fn choose_mounter(
    data_root: &Path,
    allow_no_tmpfs: bool,
) -> Result<Arc<dyn Mounter>, NodeError> {
    // Checked before the probe, so the refusal does not depend on whether tmpfs works here.
    let allowed = no_tmpfs_allowed(
        allow_no_tmpfs,
        std::env::var_os(ALLOW_NO_TMPFS_ENV).as_deref(),
    )?;
    probe_and_choose(data_root, allowed)
}

/// [`choose_mounter`] once the fallback's permission is settled.
fn probe_and_choose(data_root: &Path, allow_no_tmpfs: bool) -> Result<Arc<dyn Mounter>, NodeError> {
    match crate::files::mount::probe_tmpfs(data_root) {
        Ok(Probed::Mounted) => Ok(Arc::new(KernelMounter)),
        // Real mounts, never the directory fallback: if mounting does not work either, publishes
        // fail with the mount error instead of putting keys on disk.
        Ok(Probed::Skipped(why)) => {
            warn!(
                reason = %why,
                "the data root refuses writes, so the tmpfs probe was skipped; serving the volumes it holds, new publishes fail until it is writable"
            );
            Ok(Arc::new(KernelMounter))
        }
        Err(e) if allow_no_tmpfs && e.directories_would_work() => {
            warn!(
                reason = %e,
                "tmpfs cannot be mounted here; using plain directories (private keys are on disk: demos and tests only)"
            );
            Ok(Arc::new(DirMounter::default()))
        }
        Err(e) => Err(NodeError::NoTmpfs(e)),
    }
}

/// The trust-source cache and the pod event sink of a node with Kubernetes API access, and the
/// future that runs the cache's watches (to be spawned with the node's other background work).
pub fn api_trust(
    client: &kube::Client,
    opts: &NodeOptions,
    apis: &Apis,
) -> (TrustCache, Arc<EventSink>, BoxFuture<'static, ()>) {
    let (cache, watches) = TrustCache::with_limits(
        client.clone(),
        opts.trust_namespace.clone(),
        apis.clone(),
        opts.trust_limits,
    );
    let events = Arc::new(EventSink::new(client.clone(), opts.node_id.clone()));
    (cache, events, Box::pin(watches))
}

/// The pod-identity checks of a node with Kubernetes API access; their background work (the
/// CSIDriver read and the node's pod watch) joins `tasks`.
pub fn api_identity(
    client: &kube::Client,
    opts: &NodeOptions,
    tasks: &mut Vec<(tracing::Span, BoxFuture<'static, ()>)>,
) -> PodIdentity {
    let (identity, work) = PodIdentity::start(client.clone(), &opts.driver_name, &opts.node_id);
    tasks.push((info_span!("pod-identity"), Box::pin(work)));
    identity
}

/// The node's API clients: issuance gets its own token bucket, apart from trust sources, Events
/// and discovery.
fn api_clients(config: &kube::Config, opts: &NodeOptions) -> Result<ApiClients, NodeError> {
    ApiClients::new(config, opts.api_rate_limit, opts.issuance_rate_limit)
        .map_err(|e| NodeError::Kube(e.to_string()))
}

/// Runs the node plugin until `shutdown` resolves, then drains within the grace period. Mounts are
/// left in place: pods keep their files and the next start recovers them.
pub async fn run(
    opts: NodeOptions,
    mounter: Arc<dyn Mounter>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), NodeError> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let socket = socket_path(&opts.endpoint)?;
    check_kubelet_dir(&opts.kubelet_dir)?;
    let store = Store::open(&opts.data_root)?;
    // Background futures of the issuer (the cert-manager watch), spawned below with the rest.
    let mut issuer_tasks: Vec<(tracing::Span, BoxFuture<'static, ()>)> = Vec::new();
    // Whether the issuer can be reached, for /readyz: the local CA always; cert-manager once its
    // watch has listed the node's requests and is not failing now (the API server answers and
    // RBAC allows the watch).
    let mut issuer_reachable: Arc<dyn Fn() -> bool + Send + Sync> = Arc::new(|| true);
    // What the cluster serves (API modes): the ClusterTrustBundle version every CTB reader uses,
    // and whether the issuer's API exists. Discovered in the background (see `discovery`).
    let mut apis: Option<Apis> = None;
    // Whether pod information in volume contexts can be believed (API modes; see `pods`).
    let mut pod_identity: Option<PodIdentity> = None;
    let (refresh_handle, refresher) = refresh::channel();
    let mut trust = TrustWiring {
        refresher: Some(refresh_handle),
        ..TrustWiring::default()
    };
    let issuer: Arc<dyn Issuer> = match opts.issuer {
        IssuerKind::CertManager => {
            let config = kube::Config::infer()
                .await
                .map_err(|e| NodeError::Kube(e.to_string()))?;
            let ApiClients {
                general: client,
                issuance,
            } = api_clients(&config, &opts)?;
            let (found, discovering) = Apis::discover(client.clone(), discovery::CERT_MANAGER_API);
            issuer_tasks.push((info_span!("api-discovery"), Box::pin(discovering)));
            let (cache, events, trust_watch) = api_trust(&client, &opts, &found);
            apis = Some(found);
            pod_identity = Some(api_identity(&client, &opts, &mut issuer_tasks));
            trust.cache = Some(cache);
            trust.events = Some(events);
            issuer_tasks.push((info_span!("trust-watch"), trust_watch));
            let (issuer, watch) = CertManagerIssuer::new(
                issuance,
                CertManagerConfig {
                    node_id: opts.node_id.clone(),
                    wait_timeout: opts.issue_timeout,
                    use_token_request: opts.use_token_request,
                    kube_config: Some(config),
                    requests: opts.request_watch.clone(),
                },
            );
            let issuer = issuer.with_event_client(client);
            issuer_tasks.push((info_span!("cert-manager-watch"), Box::pin(watch)));
            let issuer = Arc::new(issuer);
            let probe = issuer.clone();
            issuer_reachable = Arc::new(move || probe.reachable());
            issuer as Arc<dyn Issuer>
        }
        IssuerKind::KubernetesCsr => {
            let config = kube::Config::infer()
                .await
                .map_err(|e| NodeError::Kube(e.to_string()))?;
            if !opts.request_watch.namespaces.is_empty() {
                warn!(
                    "--request-namespaces has no effect with --issuer kubernetes-csr: CertificateSigningRequests are cluster-scoped"
                );
            }
            let ApiClients {
                general: client,
                issuance,
            } = api_clients(&config, &opts)?;
            let (found, discovering) = Apis::discover(client.clone(), discovery::CSR_API);
            issuer_tasks.push((info_span!("api-discovery"), Box::pin(discovering)));
            let (cache, events, trust_watch) = api_trust(&client, &opts, &found);
            pod_identity = Some(api_identity(&client, &opts, &mut issuer_tasks));
            trust.cache = Some(cache);
            trust.events = Some(events);
            issuer_tasks.push((info_span!("trust-watch"), trust_watch));
            let (issuer, watch) = KubeCsrIssuer::new(
                issuance,
                KubeCsrConfig {
                    node_id: opts.node_id.clone(),
                    wait_timeout: opts.issue_timeout,
                    requests: opts.request_watch.clone(),
                },
                found.clone(),
            );
            let issuer = issuer.with_event_client(client);
            apis = Some(found);
            issuer_tasks.push((info_span!("kubernetes-csr-watch"), Box::pin(watch)));
            let issuer = Arc::new(issuer);
            let probe = issuer.clone();
            issuer_reachable = Arc::new(move || probe.reachable());
            issuer as Arc<dyn Issuer>
        }
        IssuerKind::Local => {
            // The operator's flags are the whole policy; say at start-up what they amount to.
            info!(policy = ?opts.local_policy, "local CA issuance policy");
            Arc::new(LocalCa::open(
                LocalCaConfig {
                    dir: store.root().join("local-ca"),
                    cert_file: opts.local_ca_cert.clone(),
                    key_file: opts.local_ca_key.clone(),
                    max_duration: opts.local_ca_max_duration,
                    policy: opts.local_policy.clone(),
                },
                clock.clone(),
            )?)
        }
    };
    let mut cfg = Config::new(opts.node_id.clone());
    cfg.kubelet_dir = opts.kubelet_dir.clone();
    cfg.tmpfs_size = opts.tmpfs_size;
    cfg.issue_timeout = opts.issue_timeout;
    cfg.request_history = opts.request_history;
    cfg.limits = opts.limits.clone();
    cfg.forbid_rsa_4096 = opts.forbid_rsa_4096;
    cfg.max_trust_sources = opts.max_trust_sources;
    cfg.max_volume_bytes = opts.max_volume_bytes;

    let (sched_handle, sched) = scheduler::channel();
    let sched = sched.with_policy(cfg.policy.clone());
    if opts.issuer == IssuerKind::Local && opts.trust_namespace.is_some() {
        warn!(
            "--trust-namespace has no effect with --issuer local: without Kubernetes API access no ConfigMap or Secret can be read"
        );
    }
    let mut manager = VolumeManager::new(
        cfg,
        store,
        mounter.clone(),
        issuer,
        clock.clone(),
        sched_handle,
    )
    .with_trust(trust);
    if let Some(apis) = &apis {
        manager = manager.with_apis(apis.clone());
    }
    if let Some(pod_identity) = &pod_identity {
        manager = manager.with_identity(pod_identity.clone());
    }
    let volumes = Arc::new(manager);
    let ready = Readiness::default();
    let (stop_tx, stop_rx) = watch::channel(false);

    // Bound before the CSI socket: a taken port fails start-up with a clear error instead of
    // leaving a node plugin that looks healthy but cannot be scraped or probed.
    let ops_listener = match opts.metrics_address {
        Some(address) => Some(crate::obs::ops::bind(address).await?),
        None => None,
    };
    let listener = bind_socket(&socket)?;
    info!(
        socket = %socket.display(),
        driver = %opts.driver_name,
        node_id = %opts.node_id,
        data_root = %opts.data_root.display(),
        kubelet_dir = %opts.kubelet_dir.display(),
        memory_backed = mounter.memory_backed(),
        "serving CSI"
    );
    let identity = IdentityService {
        driver_name: opts.driver_name.clone(),
        ready: ready.clone(),
    };
    let node = NodeService {
        node_id: opts.node_id.clone(),
        volumes: volumes.clone(),
        ready: ready.clone(),
    };
    let mut server_stop = stop_rx.clone();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(IdentityServer::new(identity))
            .add_service(NodeServer::new(node))
            .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async move {
                let _ = server_stop.wait_for(|stop| *stop).await;
            })
            .instrument(info_span!("csi")),
    );
    let mut background = Vec::new();
    if let Some(ops_listener) = ops_listener {
        info!(address = %ops_listener.local_addr().map_or_else(|e| e.to_string(), |a| a.to_string()), "serving /metrics, /healthz, /readyz");
        let (recovered, stopping) = (ready.clone(), stop_rx.clone());
        let apis = apis.clone();
        let pod_identity = pod_identity.clone();
        let check: crate::obs::ops::ReadyCheck = Arc::new(move || {
            if *stopping.borrow() {
                Err("shutting down".into())
            } else if !recovered.is_ready() {
                Err("recovering volume state after a restart".into())
            } else if let Some(Err(why)) = apis.as_ref().map(Apis::readiness) {
                Err(why)
            } else if !issuer_reachable() {
                Err("the issuer is not reachable (the request watch has not listed yet, or its last attempt failed; see the log)".into())
            } else if let Some(Err(why)) = pod_identity.as_ref().map(PodIdentity::readiness) {
                Err(why)
            } else {
                Ok(())
            }
        });
        // Serves through the drain (readiness then answers "shutting down") until the task is
        // aborted with the rest of the background work when `run` returns.
        background.push(tokio::spawn(
            async move {
                let stopped = std::future::pending();
                if let Err(e) = crate::obs::ops::serve(
                    ops_listener,
                    crate::obs::metrics::global(),
                    check,
                    stopped,
                )
                .await
                {
                    error!(error = %e, "metrics endpoint stopped");
                }
            }
            .instrument(info_span!("ops")),
        ));
    }
    for (span, task) in issuer_tasks {
        background.push(tokio::spawn(task.instrument(span)));
    }
    if let Some(mut recoveries) = volumes.issuer().recoveries() {
        // Watch-driven: the request watch listing again after failures is the sign that the API
        // server is back, so renewals that backed off during the outage go now.
        let volumes = volumes.clone();
        background.push(tokio::spawn(
            async move {
                while recoveries.changed().await.is_ok() {
                    let moved = volumes.retry_failed_renewals();
                    if moved > 0 {
                        info!(
                            renewals = moved,
                            "the API server answers again; retrying failed renewals now"
                        );
                    }
                }
            }
            .instrument(info_span!("api-recovery")),
        ));
    }
    // Started before recovery, which hands it the recovered volumes with trust bundles.
    background.push(tokio::spawn(
        refresher
            .run(volumes.clone())
            .instrument(info_span!("trust-refresh")),
    ));
    let renewals = tokio::spawn(
        sched
            .run(
                volumes.clone(),
                clock.clone(),
                opts.renew_concurrency,
                stop_rx.clone(),
            )
            .instrument(info_span!("scheduler")),
    );

    // Serve Identity while recovering, so kubelet's registration and liveness see the process;
    // Probe and Node calls answer "not ready" until the pass is done.
    let report = match recovery::recover(&volumes)
        .instrument(info_span!("recovery"))
        .await
    {
        Ok(report) => report,
        Err(e) => {
            // Stop what was started (the metrics port, the watch): a caller that retries `run`
            // in-process must find the port free.
            let _ = stop_tx.send(true);
            for task in &background {
                task.abort();
            }
            return Err(e.into());
        }
    };
    ready.set_ready();
    info!(kept = report.kept, "ready");

    let mut server = server;
    tokio::select! {
        () = shutdown => info!("shutting down: no new CSI calls; in-flight calls finish within the grace period"),
        joined = &mut server => {
            let _ = stop_tx.send(true);
            for task in &background {
                task.abort();
            }
            return match joined {
                Ok(result) => result.map_err(NodeError::from),
                Err(e) => { error!(error = %e, "CSI server task failed"); Ok(()) }
            };
        }
    }
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(opts.grace_period, async {
        let _ = (&mut server).await;
        let _ = renewals.await;
    })
    .await;
    if drained.is_err() {
        warn!(grace = ?opts.grace_period, "grace period over; stopping with work in flight (recovered at next start)");
        server.abort();
    }
    for task in background {
        task.abort();
    }
    let _ = std::fs::remove_file(&socket);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!(
            socket_path("unix:///csi/csi.sock").unwrap(),
            PathBuf::from("/csi/csi.sock")
        );
        assert_eq!(
            socket_path("unix:/a.sock").unwrap(),
            PathBuf::from("/a.sock")
        );
        for bad in ["tcp://1.2.3.4:5", "/csi.sock", "unix://relative.sock", ""] {
            let err = socket_path(bad).unwrap_err().to_string();
            assert!(err.contains("unix:///"), "{bad}: {err}");
        }
    }

    #[test]
    fn kubelet_dir_must_be_absolute_without_parent_components() {
        assert!(check_kubelet_dir(Path::new("/var/lib/kubelet")).is_ok());
        assert!(check_kubelet_dir(Path::new("/data/kubelet/")).is_ok());
        for bad in ["var/lib/kubelet", "/var/lib/../kubelet", ""] {
            let err = check_kubelet_dir(Path::new(bad)).unwrap_err().to_string();
            assert!(
                err.contains("--kubelet-dir") && err.contains("absolute"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn no_tmpfs_suggests_directories_only_when_they_would_work() {
        use crate::files::mount::{ProbeError, ProbeStep};
        use nix::errno::Errno;
        let mount = NodeError::NoTmpfs(ProbeError {
            step: ProbeStep::Mount,
            path: PathBuf::from("/var/lib/certvol/volumes/.tmpfs-probe"),
            errno: Errno::EPERM,
        })
        .to_string();
        assert!(
            mount.starts_with("cannot mount the volumes' tmpfs below the data root: mounting a tmpfs at /var/lib/certvol/volumes/.tmpfs-probe failed with EPERM"),
            "{mount}"
        );
        assert!(
            mount.contains("CAP_SYS_ADMIN") && mount.contains("--allow-no-tmpfs"),
            "{mount}"
        );
        let read_only = NodeError::NoTmpfs(ProbeError {
            step: ProbeStep::CreateDir,
            path: PathBuf::from("/var/lib/certvol/volumes"),
            errno: Errno::EROFS,
        })
        .to_string();
        assert!(
            read_only.contains("creating /var/lib/certvol/volumes failed with EROFS"),
            "{read_only}"
        );
        assert!(!read_only.contains("--allow-no-tmpfs"), "{read_only}");
    }

    #[test]
    fn allow_no_tmpfs_alone_is_refused() {
        use std::ffi::OsStr;
        assert!(!no_tmpfs_allowed(false, None).unwrap());
        assert!(!no_tmpfs_allowed(false, Some(OsStr::new("1"))).unwrap());
        assert!(no_tmpfs_allowed(true, Some(OsStr::new("1"))).unwrap());
        for env in [None, Some(OsStr::new("")), Some(OsStr::new("yes"))] {
            let err = no_tmpfs_allowed(true, env).unwrap_err();
            let msg = err.to_string();
            assert!(
                msg.contains(ALLOW_NO_TMPFS_ENV) && msg.contains("tests only"),
                "{msg}"
            );
        }
        // Refused before the probe: even where tmpfs works, the flag alone stops the start.
        let dir = tempfile::tempdir().unwrap();
        if std::env::var_os(ALLOW_NO_TMPFS_ENV).is_none() {
            assert!(matches!(
                choose_mounter(dir.path(), true),
                Err(NodeError::NoTmpfsNotEnabled)
            ));
        }
    }

    #[test]
    fn a_read_only_data_root_is_refused_even_with_allow_no_tmpfs() {
        if !nix::unistd::geteuid().is_root() {
            println!("skipping: needs root to make a read-only bind mount");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let ro = dir.path().join("ro");
        std::fs::create_dir(&ro).unwrap();
        KernelMounter.bind_read_only(&ro, &ro).unwrap();
        let result = probe_and_choose(&ro.join("data"), true);
        let _ = KernelMounter.unmount(&ro);
        match result {
            Err(NodeError::NoTmpfs(e)) => assert_eq!(e.errno, nix::errno::Errno::EROFS),
            Err(other) => panic!("{other}"),
            Ok(m) => panic!("{m:?}"),
        }
    }

    #[tokio::test]
    async fn socket_is_private_and_stale_socket_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("csi.sock");
        let first = bind_socket(&path).unwrap();
        drop(first);
        // The file of the dropped listener is still there: a stale socket.
        assert!(path.exists());
        let _second = bind_socket(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let leftovers = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(leftovers, 1);
        let file = dir.path().join("not-a-socket");
        std::fs::write(&file, b"x").unwrap();
        assert!(bind_socket(&file).is_err());
        assert_eq!(std::fs::read(&file).unwrap(), b"x");
    }
}
