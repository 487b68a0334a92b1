//! Choosing and building the issuer backend, and with it whatever needs Kubernetes API access:
//! discovery, trust-source watches, Events and pod identity.

use std::sync::Arc;

use futures::future::BoxFuture;
use tracing::{info, info_span, warn};

use super::{IssuerKind, NodeError, NodeOptions};
use crate::base::clock::Clock;
use crate::files::store::Store;
use crate::issuer::Issuer;
use crate::issuer::certmanager::{CertManagerConfig, CertManagerIssuer};
use crate::issuer::kubecsr::{KubeCsrConfig, KubeCsrIssuer};
use crate::issuer::local::{LocalCa, LocalCaConfig};
use crate::kube::client::ApiClients;
use crate::kube::discovery::{self, Apis};
use crate::kube::events::EventSink;
use crate::kube::pods::PodIdentity;
use crate::obs::metrics::Metrics;
use crate::runtime::refresh::RefreshHandle;
use crate::trust::TrustCache;
use crate::volume::{TrustWiring, VolumeManager};

/// Background work to spawn, each future with its span.
pub(crate) type Tasks = Vec<(tracing::Span, BoxFuture<'static, ()>)>;

/// What `certvol node` assembles around its issuer.
pub(crate) struct Wiring {
    pub(crate) issuer: Arc<dyn Issuer>,
    /// Background futures of the issuer and the API watches, spawned by `run` with the rest.
    pub(crate) tasks: Tasks,
    /// Whether the issuer can be reached, for /readyz: the local CA always; an API backend once
    /// its watch has listed the node's requests and is not failing now.
    pub(crate) reachable: Arc<dyn Fn() -> bool + Send + Sync>,
    /// What the cluster serves (API modes), discovered in the background.
    pub(crate) apis: Option<Apis>,
    /// Whether pod information in volume contexts can be believed (API modes).
    pub(crate) identity: Option<PodIdentity>,
    pub(crate) trust: TrustWiring,
}

impl Wiring {
    /// Builds the issuer `opts.issuer` names and what it needs, recording into `metrics`.
    pub(crate) async fn build(
        opts: &NodeOptions,
        store: &Store,
        clock: &Arc<dyn Clock>,
        refresher: RefreshHandle,
        metrics: &Metrics,
    ) -> Result<Wiring, NodeError> {
        let trust = TrustWiring {
            refresher: Some(refresher),
            ..TrustWiring::default()
        };
        match opts.issuer {
            IssuerKind::CertManager => cert_manager(opts, trust, metrics).await,
            IssuerKind::KubernetesCsr => kubernetes_csr(opts, trust, metrics).await,
            IssuerKind::Local => local(opts, store, clock, trust),
        }
    }

    /// The volume manager over this issuer and its API wiring.
    pub(crate) fn manager(&self, volumes: VolumeManager) -> VolumeManager {
        let mut manager = volumes.with_trust(self.trust.clone());
        if let Some(apis) = &self.apis {
            manager = manager.with_apis(apis.clone());
        }
        if let Some(identity) = &self.identity {
            manager = manager.with_identity(identity.clone());
        }
        manager
    }
}

/// The API clients, discovery of `api` and the trust, Event and identity wiring every API mode
/// shares.
struct ApiWiring {
    config: kube::Config,
    clients: ApiClients,
    parts: ApiParts,
}

/// What an API backend's [`Wiring`] takes from [`api_wiring`].
struct ApiParts {
    apis: Apis,
    identity: PodIdentity,
    tasks: Tasks,
    trust: TrustWiring,
}

impl ApiParts {
    /// The wiring around `issuer`, whose `watch` runs with the other background work.
    fn finish<I: Issuer + 'static>(
        mut self,
        issuer: Arc<I>,
        reachable: fn(&I) -> bool,
        watch: (tracing::Span, BoxFuture<'static, ()>),
    ) -> Wiring {
        self.tasks.push(watch);
        let probe = issuer.clone();
        Wiring {
            issuer,
            tasks: self.tasks,
            reachable: Arc::new(move || reachable(&probe)),
            apis: Some(self.apis),
            identity: Some(self.identity),
            trust: self.trust,
        }
    }
}

async fn api_wiring(
    opts: &NodeOptions,
    api: discovery::RequiredApi,
    mut trust: TrustWiring,
    metrics: &Metrics,
) -> Result<ApiWiring, NodeError> {
    let config = kube::Config::infer()
        .await
        .map_err(|e| NodeError::Kube(e.to_string()))?;
    let clients = api_clients(&config, opts, metrics)?;
    let client = &clients.general;
    let mut tasks: Tasks = Vec::new();
    let (apis, discovering) = Apis::discover(client.clone(), api);
    tasks.push((info_span!("api-discovery"), Box::pin(discovering)));
    let (cache, events, trust_watch) = api_trust(client, opts, &apis);
    let identity = api_identity(client, opts, &mut tasks);
    trust.cache = Some(cache);
    trust.events = Some(events);
    tasks.push((info_span!("trust-watch"), trust_watch));
    let parts = ApiParts {
        apis,
        identity,
        tasks,
        trust,
    };
    Ok(ApiWiring {
        config,
        clients,
        parts,
    })
}

async fn cert_manager(
    opts: &NodeOptions,
    trust: TrustWiring,
    metrics: &Metrics,
) -> Result<Wiring, NodeError> {
    let api = api_wiring(opts, discovery::CERT_MANAGER_API, trust, metrics).await?;
    let (issuer, watch) = CertManagerIssuer::new(
        api.clients.issuance,
        CertManagerConfig {
            node_id: opts.node_id.clone(),
            wait_timeout: opts.issue_timeout,
            use_token_request: opts.use_token_request,
            kube_config: Some(api.config),
            requests: opts.request_watch(),
            metrics: metrics.clone(),
        },
    );
    let issuer = Arc::new(issuer.with_event_client(api.clients.general));
    let watch = (
        info_span!("cert-manager-watch"),
        Box::pin(watch) as BoxFuture<'static, ()>,
    );
    Ok(api
        .parts
        .finish(issuer, CertManagerIssuer::reachable, watch))
}

async fn kubernetes_csr(
    opts: &NodeOptions,
    trust: TrustWiring,
    metrics: &Metrics,
) -> Result<Wiring, NodeError> {
    if !opts.request_namespaces.is_empty() {
        warn!(
            "--request-namespaces has no effect with --issuer kubernetes-csr: CertificateSigningRequests are cluster-scoped"
        );
    }
    let api = api_wiring(opts, discovery::CSR_API, trust, metrics).await?;
    let (issuer, watch) = KubeCsrIssuer::new(
        api.clients.issuance,
        KubeCsrConfig {
            node_id: opts.node_id.clone(),
            wait_timeout: opts.issue_timeout,
            requests: opts.request_watch(),
            metrics: metrics.clone(),
        },
        api.parts.apis.clone(),
    );
    let issuer = Arc::new(issuer.with_event_client(api.clients.general));
    let watch = (
        info_span!("kubernetes-csr-watch"),
        Box::pin(watch) as BoxFuture<'static, ()>,
    );
    Ok(api.parts.finish(issuer, KubeCsrIssuer::reachable, watch))
}

fn local(
    opts: &NodeOptions,
    store: &Store,
    clock: &Arc<dyn Clock>,
    trust: TrustWiring,
) -> Result<Wiring, NodeError> {
    let policy = opts.local_policy();
    // The operator's flags are the whole policy; say at start-up what they amount to.
    info!(policy = ?policy, "local CA issuance policy");
    if opts.trust_namespace.is_some() {
        warn!(
            "--trust-namespace has no effect with --issuer local: without Kubernetes API access no ConfigMap or Secret can be read"
        );
    }
    let ca = LocalCa::open(
        LocalCaConfig {
            dir: store.root().join("local-ca"),
            cert_file: opts.local_ca_cert.clone(),
            key_file: opts.local_ca_key.clone(),
            max_duration: opts.local_ca_max_duration,
            policy,
        },
        clock.clone(),
    )?;
    Ok(Wiring {
        issuer: Arc::new(ca),
        tasks: Vec::new(),
        reachable: Arc::new(|| true),
        apis: None,
        identity: None,
        trust,
    })
}

/// The trust-source cache and the pod event sink of a node with Kubernetes API access, and the
/// future that runs the cache's watches (to be spawned with the node's other background work).
pub(crate) fn api_trust(
    client: &kube::Client,
    opts: &NodeOptions,
    apis: &Apis,
) -> (TrustCache, Arc<EventSink>, BoxFuture<'static, ()>) {
    let (cache, watches) = TrustCache::with_limits(
        client.clone(),
        opts.trust_namespace.clone(),
        apis.clone(),
        opts.trust_limits(),
    );
    let events = Arc::new(EventSink::new(client.clone(), opts.node_id.clone()));
    (cache, events, Box::pin(watches))
}

/// The pod-identity checks of a node with Kubernetes API access; their background work (the
/// CSIDriver read and the node's pod watch) joins `tasks`.
pub(crate) fn api_identity(
    client: &kube::Client,
    opts: &NodeOptions,
    tasks: &mut Vec<(tracing::Span, BoxFuture<'static, ()>)>,
) -> PodIdentity {
    let (identity, work) = PodIdentity::start(client.clone(), &opts.driver_name, &opts.node_id);
    tasks.push((info_span!("pod-identity"), Box::pin(work)));
    identity
}

/// The node's API clients: issuance gets its own token bucket, apart from trust sources, Events
/// and discovery; both count their requests in `metrics`.
fn api_clients(
    config: &kube::Config,
    opts: &NodeOptions,
    metrics: &Metrics,
) -> Result<ApiClients, NodeError> {
    ApiClients::new(
        config,
        opts.api_rate_limit(),
        opts.issuance_rate_limit(),
        metrics,
    )
    .map_err(|e| NodeError::Kube(e.to_string()))
}
