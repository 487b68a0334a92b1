//! A faithful in-process stand-in for the parts of kube-apiserver (plus cert-manager's webhook and
//! the garbage collector) that certvol talks to: CertificateRequests validated against the real
//! CRD, Pods, Events, the trust sources (ConfigMaps, Secrets and cluster-scoped
//! ClusterTrustBundles, validated as the apiserver's built-in rules do: see `trust`),
//! CertificateSigningRequests with their `/status` and `/approval` subresources (see `csr`),
//! watches with a retained event log, and fault injection.
//!
//! There is no cluster in CI, so everything the driver relies on must behave here as it does on a
//! real cluster: server-set metadata, 409/404/422/410 with Status bodies, pruning, label selectors,
//! resumable watches that expire, owner-reference garbage collection.
//!
//! It acts as one Kubernetes version (`KubeVersion`, 1.30 through 1.37; see `versions` for the
//! table of what each serves and why) and serves only what that version serves: other
//! group/versions are 404 and absent from discovery, exactly as on a cluster of that version.

mod csr;
mod discovery;
mod error;
mod faults;
mod http;
mod kind;
mod meta;
mod schema;
mod selector;
mod storage;
mod store;
mod tls;
mod trust;
pub mod versions;
mod webhook;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use serde_json::{Value, json};

pub use csr::{KNOWN_USAGES, MIN_EXPIRATION_SECONDS, Subresource};
pub use error::{ApiError, FieldCause};
pub use faults::Faults;
pub use kind::Kind;
pub use schema::{Schema, SchemaError};
pub use selector::{FieldSelector, LabelSelector};
pub use store::{DeleteOptions, Store, crd_path};
pub use tls::{InClusterEnv, TlsError};
pub use versions::{ApiConfig, ConfigError, ENV_ENABLE, ENV_VERSION, KubeVersion, ServedApis};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn wire_name(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One change, as watches see it. `object.metadata.resourceVersion` is the change's revision
/// (for deletions too, as etcd-backed watches report them).
#[derive(Clone, Debug)]
pub struct WatchEvent {
    pub kind: Kind,
    pub event_type: EventType,
    pub object: Value,
}

impl WatchEvent {
    pub fn resource_version(&self) -> u64 {
        resource_version_of(&self.object)
    }
}

/// The numeric resourceVersion of an object (0 when missing).
pub fn resource_version_of(obj: &Value) -> u64 {
    obj.pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Who made a request, as authentication (TokenReview) reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub username: String,
    pub groups: Vec<String>,
    pub uid: String,
}

impl Identity {
    /// The identity of in-process writes and of bearer tokens nobody registered: the driver's
    /// own service account.
    pub fn default_service_account() -> Identity {
        Identity {
            username: "system:serviceaccount:certvol:certvol".into(),
            groups: vec![
                "system:serviceaccounts".into(),
                "system:serviceaccounts:certvol".into(),
                "system:authenticated".into(),
            ],
            uid: "00000000-0000-4000-8000-00000000ce57".into(),
        }
    }

    pub fn anonymous() -> Identity {
        Identity {
            username: "system:anonymous".into(),
            groups: vec!["system:unauthenticated".into()],
            uid: String::new(),
        }
    }
}

/// One HTTP request as the server saw it.
#[derive(Clone, Debug)]
pub struct RequestRecord {
    /// get, list, watch, create, update, patch, delete (or the HTTP method for unknown paths).
    pub verb: String,
    pub kind: Option<Kind>,
    pub namespace: Option<String>,
    /// The object's name: from the path, or for a create from the posted object (none when it
    /// uses generateName).
    pub name: Option<String>,
    /// `status` for the status subresource.
    pub subresource: Option<String>,
    pub status: u16,
    /// The bearer token presented (tests only: the token-request scenario checks it).
    pub token: Option<String>,
    pub path: String,
    /// The raw query string (selectors, resourceVersion, watch flags), empty when none.
    pub query: String,
}

pub(crate) struct Shared {
    store: Store,
    faults: Faults,
    requests: Mutex<Vec<RequestRecord>>,
    tokens: Mutex<HashMap<String, Identity>>,
    /// What the configured version serves: routing and discovery.
    apis: ServedApis,
    /// Where the server listens (discovery's serverAddressByClientCIDRs).
    addr: std::net::SocketAddr,
}

impl Shared {
    fn identity(&self, token: Option<&str>) -> Identity {
        match token {
            None => Identity::anonymous(),
            Some(t) => self
                .tokens
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(t)
                .cloned()
                .unwrap_or_else(Identity::default_service_account),
        }
    }

    fn record(&self, r: RequestRecord) {
        self.requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(r);
    }
}

/// The HTTP(S) server. Serves until dropped.
pub struct ApiServer {
    shared: Arc<Shared>,
    addr: std::net::SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    /// The CA of the serving certificate, when serving HTTPS.
    ca_pem: Option<String>,
}

fn invalid_input(e: impl std::error::Error + Send + Sync + 'static) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidInput, e)
}

impl ApiServer {
    /// [`ApiServer::start_with`] the configuration the environment names: the version in
    /// `CERTVOL_E2E_KUBE_VERSION` (newest when unset) with the runtime-config entries in
    /// `CERTVOL_E2E_KUBE_ENABLE`, the CRD installed, plain HTTP. A malformed environment is an
    /// `InvalidInput` error wrapping the [`ConfigError`].
    pub async fn start() -> std::io::Result<ApiServer> {
        ApiServer::start_with(ApiConfig::from_env().map_err(invalid_input)?).await
    }

    /// Loads the CRD, binds 127.0.0.1:0 and serves `config` on a thread of its own until
    /// dropped. A configuration kube-apiserver would refuse to start with is an `InvalidInput`
    /// error wrapping the [`ConfigError`]; TLS setup failures wrap a [`TlsError`].
    pub async fn start_with(config: ApiConfig) -> std::io::Result<ApiServer> {
        let apis = ServedApis::resolve(&config).map_err(invalid_input)?;
        let schema = Schema::from_crd_file(&crd_path(), "v1")
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::NotFound, e))?;
        let store = Store::with_apis(schema, apis.clone());
        let tls = if config.tls {
            Some(tls::generate().map_err(std::io::Error::other)?)
        } else {
            None
        };
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            faults: Faults::new(store.clone()),
            store,
            requests: Mutex::new(Vec::new()),
            tokens: Mutex::new(HashMap::new()),
            apis,
            addr,
        });
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let router = http::router(shared.clone());
        let faults = shared.faults.clone();
        let ca_pem = tls.as_ref().map(|t| t.ca_pem.clone());
        let acceptor = tls.map(|t| t.acceptor);
        // The server gets its own thread and runtime: a test that blocks its own (current-thread)
        // runtime, e.g. waiting synchronously for the driver process, must not freeze the API
        // the driver is talking to.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name("e2e-apiserver".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(listener) {
                        Ok(l) => l,
                        Err(e) => {
                            tracing::error!(error = %e, "e2e API server cannot listen");
                            return;
                        }
                    };
                    let shutdown = async move {
                        let _ = rx.await;
                        // Open watches would keep graceful shutdown waiting forever.
                        faults.drop_watches();
                    };
                    match acceptor {
                        Some(acceptor) => tls::serve(listener, acceptor, router, shutdown).await,
                        None => {
                            if let Err(e) = axum::serve(listener, router)
                                .with_graceful_shutdown(shutdown)
                                .await
                            {
                                tracing::warn!(error = %e, "e2e API server stopped");
                            }
                        }
                    }
                });
            })?;
        Ok(ApiServer {
            shared,
            addr,
            shutdown: Some(tx),
            ca_pem,
        })
    }

    /// `http://127.0.0.1:PORT`, or `https://127.0.0.1:PORT` when serving TLS.
    pub fn url(&self) -> String {
        let scheme = if self.ca_pem.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.addr)
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The CA certificate (PEM) the serving certificate chains to; `None` for plain HTTP.
    pub fn ca_pem(&self) -> Option<&str> {
        self.ca_pem.as_deref()
    }

    /// The Kubernetes version the server acts as.
    pub fn version(&self) -> KubeVersion {
        self.shared.apis.version()
    }

    /// What the server serves (the resolved version table).
    pub fn apis(&self) -> &ServedApis {
        &self.shared.apis
    }

    /// Whether `resource` (`clustertrustbundles`, `pods/status`) is served in `group_version`
    /// (`certificates.k8s.io/v1beta1`, `v1`), for scenarios to branch their expectations on.
    pub fn serves(&self, group_version: &str, resource: &str) -> bool {
        self.shared.apis.serves(group_version, resource)
    }

    /// The apiVersion to write objects of `kind` through (the highest-priority served version),
    /// or `None` when the server does not serve the kind at all.
    pub fn preferred_api_version(&self, kind: Kind) -> Option<String> {
        self.shared.apis.preferred_api_version(kind)
    }

    pub fn store(&self) -> Store {
        self.shared.store.clone()
    }

    pub fn faults(&self) -> Faults {
        self.shared.faults.clone()
    }

    pub fn requests(&self) -> Vec<RequestRecord> {
        self.shared
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// How many requests with `verb` on `kind` were served (whatever their status).
    pub fn count(&self, verb: &str, kind: Kind) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.verb == verb && r.kind == Some(kind))
            .count()
    }

    /// A kubeconfig with one cluster (server = url; with TLS, the CA as
    /// certificate-authority-data), a user with `token`, and the current context set.
    pub fn write_kubeconfig(&self, path: &Path, token: &str) -> std::io::Result<()> {
        let mut cluster = json!({"server": self.url()});
        if let Some(ca) = &self.ca_pem {
            cluster["certificate-authority-data"] =
                json!(base64::engine::general_purpose::STANDARD.encode(ca));
        }
        let cfg = json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "e2e", "cluster": cluster}],
            "users": [{"name": "e2e", "user": {"token": token}}],
            "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": "e2e", "namespace": "default"}}],
            "current-context": "e2e",
            "preferences": {},
        });
        let text = serde_yaml::to_string(&cfg).map_err(std::io::Error::other)?;
        std::fs::write(path, text)
    }

    /// Writes what kubelet projects into a pod at
    /// `/var/run/secrets/kubernetes.io/serviceaccount` (`token`, `ca.crt`, `namespace`, in the
    /// atomic writer's `..data` layout) into `dir`, and returns the environment kubelet gives
    /// the pod for this server (`KUBERNETES_SERVICE_HOST=127.0.0.1`,
    /// `KUBERNETES_SERVICE_PORT=<port>`). Writing again rotates the files in place.
    /// In-cluster configuration is https-only, so a plain-HTTP server refuses (`InvalidInput`).
    pub fn write_incluster_files(
        &self,
        dir: &Path,
        token: &str,
        namespace: &str,
    ) -> std::io::Result<InClusterEnv> {
        let Some(ca) = &self.ca_pem else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "in-cluster configuration is https-only: start the server with ApiConfig::tls",
            ));
        };
        tls::write_projected(
            dir,
            &[
                ("ca.crt", ca.as_bytes()),
                ("namespace", namespace.as_bytes()),
                ("token", token.as_bytes()),
            ],
        )?;
        Ok(InClusterEnv {
            host: self.addr.ip().to_string(),
            port: self.addr.port(),
            dir: dir.to_path_buf(),
        })
    }

    /// Registers the identity behind a bearer token (what a TokenReview would answer).
    pub fn add_token(&self, token: &str, username: &str, groups: &[&str], uid: &str) {
        self.shared
            .tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                token.to_string(),
                Identity {
                    username: username.into(),
                    groups: groups.iter().map(|g| g.to_string()).collect(),
                    uid: uid.into(),
                },
            );
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}
