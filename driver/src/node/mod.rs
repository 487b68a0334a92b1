//! `certvol node`: wires the layers together, serves CSI on a unix socket, runs start-up recovery
//! and the renewal loop, and drains on shutdown. This is the one place background work is spawned.

mod host;
mod options;
mod wiring;

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use certvol_proto::csi::v1::identity_server::IdentityServer;
use certvol_proto::csi::v1::node_server::NodeServer;
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::UnixListenerStream;
use tracing::{Instrument, error, info, info_span, warn};

pub use host::{
    ALLOW_NO_TMPFS_ENV, bind_socket, check_kubelet_dir, choose_mounter, no_tmpfs_allowed,
    socket_path,
};
pub use options::{DEFAULT_DATA_ROOT, DEFAULT_DRIVER_NAME, NodeOptions};

use crate::base::clock::{Clock, SystemClock};
use crate::csi::{IdentityService, NodeService, Readiness};
use crate::files::mount::Mounter;
use crate::files::store::Store;
use crate::kube::discovery::Apis;
use crate::kube::pods::PodIdentity;
use crate::obs::metrics::{self, Metrics};
use crate::runtime::refresh;
use crate::runtime::scheduler;
use crate::volume::recovery;
use crate::volume::{Services, VolumeManager};
use wiring::Wiring;

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
    // The node owns the registry /metrics serves; every layer records through the handle.
    let mut registry = Registry::with_prefix(metrics::PREFIX);
    let metrics = Metrics::register(&mut registry);
    let (refresh_handle, refresher) = refresh::channel();
    let wiring = Wiring::build(&opts, &store, &clock, refresh_handle, &metrics).await?;
    let (sched_handle, sched) = scheduler::channel();
    let services = Services {
        mounter: mounter.clone(),
        issuer: wiring.issuer.clone(),
        clock: clock.clone(),
        scheduler: sched_handle,
        metrics: metrics.clone(),
    };
    let cfg = opts.volume_config();
    let sched = sched.with_policy(cfg.policy.clone()).with_metrics(metrics);
    let manager = VolumeManager::new(cfg, store, services);
    let volumes = Arc::new(wiring.manager(manager));
    let ready = Readiness::default();
    let (stop_tx, stop_rx) = watch::channel(false);

    // Bound before the CSI socket: a taken port fails start-up with a clear error instead of
    // leaving a node plugin that looks healthy but cannot be scraped or probed.
    let ops_listener = match opts.metrics_address {
        Some(address) => Some(crate::obs::ops::bind(address).await?),
        None => None,
    };
    let mut server = serve_csi(&opts, &socket, &volumes, &ready, stop_rx.clone())?;
    let mut background = Vec::new();
    if let Some(listener) = ops_listener {
        background.push(serve_ops(listener, registry, &wiring, &ready, &stop_rx));
    }
    for (span, task) in wiring.tasks {
        background.push(tokio::spawn(task.instrument(span)));
    }
    background.extend(retry_on_api_recovery(&volumes));
    let (refreshing, renewals) = spawn_loops(
        &volumes,
        refresher,
        sched,
        opts.renew_concurrency,
        stop_rx.clone(),
    );
    background.push(refreshing);

    // Serve Identity while recovering, so kubelet's registration and liveness see the process;
    // Probe and Node calls answer "not ready" until the pass is done.
    let report = recovery::recover(&volumes)
        .instrument(info_span!("recovery"))
        .await
        // Stop what was started (the metrics port, the watch): a caller that retries `run`
        // in-process must find the port free.
        .inspect_err(|_| stop_all(&stop_tx, &background))?;
    ready.set_ready();
    info!(kept = report.kept, "ready");

    tokio::select! {
        () = shutdown => info!("shutting down: no new CSI calls; in-flight calls finish within the grace period"),
        joined = &mut server => {
            stop_all(&stop_tx, &background);
            return match joined {
                Ok(result) => result.map_err(NodeError::from),
                Err(e) => { error!(error = %e, "CSI server task failed"); Ok(()) }
            };
        }
    }
    let _ = stop_tx.send(true);
    drain(&opts, server, renewals).await;
    stop_all(&stop_tx, &background);
    let _ = std::fs::remove_file(&socket);
    Ok(())
}

/// The trust refresher (started before recovery, which hands it the recovered volumes with
/// trust bundles) and the renewal scheduler.
fn spawn_loops(
    volumes: &Arc<VolumeManager>,
    refresher: refresh::Refresher,
    sched: scheduler::Scheduler,
    renew_concurrency: usize,
    stop: watch::Receiver<bool>,
) -> (JoinHandle<()>, JoinHandle<()>) {
    let refreshing = tokio::spawn(
        refresher
            .run(volumes.clone())
            .instrument(info_span!("trust-refresh")),
    );
    let renewals = tokio::spawn(
        sched
            .run(
                volumes.clone(),
                volumes.clock().clone(),
                renew_concurrency,
                stop,
            )
            .instrument(info_span!("scheduler")),
    );
    (refreshing, renewals)
}

type Server = JoinHandle<Result<(), tonic::transport::Error>>;

/// Binds the CSI socket and serves Identity and Node on it until `stop` turns true.
fn serve_csi(
    opts: &NodeOptions,
    socket: &Path,
    volumes: &Arc<VolumeManager>,
    ready: &Readiness,
    mut stop: watch::Receiver<bool>,
) -> Result<Server, NodeError> {
    let listener = bind_socket(socket)?;
    info!(
        socket = %socket.display(),
        driver = %opts.driver_name,
        node_id = %opts.node_id,
        data_root = %opts.data_root.display(),
        kubelet_dir = %opts.kubelet_dir.display(),
        memory_backed = volumes.mounter().memory_backed(),
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
        metrics: volumes.metrics().clone(),
    };
    Ok(tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(IdentityServer::new(identity))
            .add_service(NodeServer::new(node))
            .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async move {
                let _ = stop.wait_for(|stop| *stop).await;
            })
            .instrument(info_span!("csi")),
    ))
}

/// Serves /metrics (the families in `registry`), /healthz and /readyz through the drain
/// (readiness then answers "shutting down") until the task is aborted with the rest of the
/// background work.
fn serve_ops(
    listener: tokio::net::TcpListener,
    registry: Registry,
    wiring: &Wiring,
    ready: &Readiness,
    stopping: &watch::Receiver<bool>,
) -> JoinHandle<()> {
    info!(address = %listener.local_addr().map_or_else(|e| e.to_string(), |a| a.to_string()), "serving /metrics, /healthz, /readyz");
    let recovered = ready.clone();
    let stopping = stopping.clone();
    let apis = wiring.apis.clone();
    let pod_identity = wiring.identity.clone();
    let issuer_reachable = wiring.reachable.clone();
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
    tokio::spawn(
        async move {
            let stopped = std::future::pending();
            if let Err(e) = crate::obs::ops::serve(listener, registry, check, stopped).await {
                error!(error = %e, "metrics endpoint stopped");
            }
        }
        .instrument(info_span!("ops")),
    )
}

/// Watch-driven: the request watch listing again after failures is the sign that the API server
/// is back, so renewals that backed off during the outage go now.
fn retry_on_api_recovery(volumes: &Arc<VolumeManager>) -> Option<JoinHandle<()>> {
    let mut recoveries = volumes.issuer().recoveries()?;
    let volumes = volumes.clone();
    Some(tokio::spawn(
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
    ))
}

/// Waits for in-flight CSI calls and renewals within the grace period, then gives up on them
/// (whatever they left is recovered at the next start).
async fn drain(opts: &NodeOptions, mut server: Server, renewals: JoinHandle<()>) {
    let drained = tokio::time::timeout(opts.grace_period, async {
        let _ = (&mut server).await;
        let _ = renewals.await;
    })
    .await;
    if drained.is_err() {
        warn!(grace = ?opts.grace_period, "grace period over; stopping with work in flight (recovered at next start)");
        server.abort();
    }
}

fn stop_all(stop: &watch::Sender<bool>, background: &[JoinHandle<()>]) {
    let _ = stop.send(true);
    for task in background {
        task.abort();
    }
}
