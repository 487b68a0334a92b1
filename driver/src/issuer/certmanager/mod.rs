//! Issuance through cert-manager: one `CertificateRequest` (cert-manager.io/v1) per issuance, in
//! the pod's namespace, owned by the pod, and a single node-scoped watch that every issuance waits
//! on.
//!
//! API traffic per issuance is one CREATE (plus one DELETE when the volume layer forgets it); the
//! result arrives on the shared watch, so waiting costs no GETs or LISTs. After a crash the same
//! deterministic request name meets 409 AlreadyExists and the existing request is adopted; a retry
//! of a request the watch already shows files nothing at all.

pub use crate::kube::events;
pub mod resource;

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use kube::Api;
use tracing::info;

/// The pod's token, which began here (the token-request mode is cert-manager's).
pub use super::token::{BearerToken, token_from_context};
pub use resource::{CertificateRequest, outcome};

use self::events::EventSink;
use super::cached::{Cached, request_key_of_der};
use super::filing::{self, Filing};
use super::watch::RequestCache;
use super::{IssueError, IssueRequest, Issued, Issuer};
use crate::obs::metrics::Metrics;

/// Configuration of the cert-manager backend.
#[derive(Clone)]
pub struct CertManagerConfig {
    /// This node's id (`--node-id`); requests are labelled with it and the watch selects on it.
    pub node_id: String,
    /// How long one `issue()` waits for cert-manager's answer before returning
    /// [`IssueError::Timeout`] (a retry resumes waiting for the same request).
    pub wait_timeout: Duration,
    /// Create requests with the pod's service-account token (from kubelet's `tokenRequests`)
    /// instead of the driver's identity, so approver policies see the pod as the requester.
    pub use_token_request: bool,
    /// The driver's own client configuration, the base of the per-pod clients in token-request
    /// mode (same server, CA and timeouts; only the credentials are replaced). Required when
    /// `use_token_request` is set.
    pub kube_config: Option<kube::Config>,
    /// Which namespaces the node watches for its requests and how much it caches.
    pub requests: filing::RequestWatch,
    /// Where the request watch counts what it drops.
    pub metrics: Metrics,
}

impl fmt::Debug for CertManagerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertManagerConfig")
            .field("node_id", &self.node_id)
            .field("wait_timeout", &self.wait_timeout)
            .field("use_token_request", &self.use_token_request)
            .field("requests", &self.requests)
            .field(
                "kube_config",
                &self.kube_config.as_ref().map(|c| c.cluster_url.to_string()),
            )
            .finish()
    }
}

/// The cert-manager issuer backend ([`Issuer::kind`] `cert-manager`).
pub struct CertManagerIssuer {
    client: kube::Client,
    cfg: CertManagerConfig,
    cache: Arc<RequestCache<CertificateRequest>>,
    events: EventSink,
}

impl fmt::Debug for CertManagerIssuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertManagerIssuer")
            .field("cfg", &self.cfg)
            .field("cached_requests", &self.cache.len())
            .finish_non_exhaustive()
    }
}

impl CertManagerIssuer {
    /// Returns the issuer and the watch loop future; the caller (node::run) spawns the future with
    /// a tracing span. Until the future runs, issuances create their requests but time out waiting.
    pub fn new(
        client: kube::Client,
        cfg: CertManagerConfig,
    ) -> (Self, impl Future<Output = ()> + Send + 'static) {
        let (cache, events, watch) =
            filing::node_requests(&client, &cfg.node_id, &cfg.requests, true, &cfg.metrics);
        let issuer = CertManagerIssuer {
            client,
            cfg,
            cache,
            events,
        };
        (issuer, watch)
    }

    /// Posts the Events on pods through `client` instead of the issuance client (whose rate limit
    /// is kept for filing requests).
    pub fn with_event_client(mut self, client: kube::Client) -> Self {
        self.events = EventSink::new(client, self.cfg.node_id.clone());
        self
    }

    /// Whether the node's CertificateRequest watch has listed at least once and is not failing
    /// now, i.e. the API server answers and the driver may watch requests (part of `/readyz`).
    pub fn reachable(&self) -> bool {
        self.cache.healthy()
    }

    /// The client that files the request: the driver's own, or one authenticated as the pod.
    fn creating_client(
        &self,
        req: &IssueRequest,
        request: &str,
    ) -> Result<kube::Client, IssueError> {
        if !self.cfg.use_token_request {
            return Ok(self.client.clone());
        }
        let invalid = |message: &str| IssueError::Invalid {
            request: request.to_owned(),
            message: message.to_owned(),
        };
        let Some(token) = req.token.as_ref() else {
            return Err(invalid(
                "the driver files CertificateRequests with the pod's service-account token, but kubelet passed none: the CSIDriver object must set tokenRequests (with audience \"\") and requiresRepublish: true",
            ));
        };
        let Some(base) = self.cfg.kube_config.as_ref() else {
            return Err(invalid(
                "token-request mode is on but the driver was started without its API client configuration",
            ));
        };
        let mut config = base.clone();
        // Everything that identified the driver goes (token file, client certificate, exec
        // plugin); the pod's token is the only credential.
        config.auth_info = kube::config::AuthInfo {
            token: Some(token.expose().into()),
            ..kube::config::AuthInfo::default()
        };
        crate::kube::client::bounded_client(config).map_err(|e| IssueError::Unavailable {
            message: format!("cannot build an API client with the pod's token: {e}"),
        })
    }

    /// Creates the request; on 409 AlreadyExists adopts the existing one. Returns whether it was
    /// adopted and the created object's uid.
    async fn file(
        &self,
        req: &IssueRequest,
        request: &str,
    ) -> Result<(bool, Option<String>), IssueError> {
        let client = self.creating_client(req, request)?;
        let cr = resource::build(req, &self.cfg.node_id);
        let api: Api<CertificateRequest> = Api::namespaced(client, &req.cert.pod.namespace);
        filing::create_or_adopt(&api, &cr, request, || {
            info!(%request, issuer = %req.cert.issuer.name, "created CertificateRequest");
            crate::base::crashpoint::hit(crate::base::crashpoint::Point::CertManagerCreated);
        })
        .await
    }

    /// Files (or adopts) the request and waits for its result. A timeout also returns what the
    /// request looked like, for the event on the pod.
    async fn issue_inner(
        &self,
        req: &IssueRequest,
    ) -> Result<Issued, (IssueError, Option<String>)> {
        let namespace = req.cert.pod.namespace.as_str();
        let request = format!("{namespace}/{}", req.name);
        if namespace.is_empty() {
            return Err((
                IssueError::Invalid {
                    request: req.name.clone(),
                    message: "the pod's namespace is unknown: the CSIDriver object must set podInfoOnMount: true".into(),
                },
                None,
            ));
        }
        if !self.cfg.requests.covers(namespace) {
            return Err((
                IssueError::Invalid {
                    request: request.clone(),
                    message: format!(
                        "this node files CertificateRequests only in the namespaces of --request-namespaces ({}), not in the pod's namespace {namespace:?}: add it there (chart value certManager.namespaces) or run the pod in one of them",
                        self.cfg.requests.namespaces.join(",")
                    ),
                },
                None,
            ));
        }
        let key = (namespace.to_owned(), req.name.clone());
        let our_key = request_key_of_der(&req.csr_der);
        let check = |adopted: bool, cr: &Cached| {
            if adopted
                && let (Some(ours), Some(theirs)) = (our_key, cr.request_key)
                && ours != theirs
            {
                return Some(Err(IssueError::Failed {
                    request: request.clone(),
                    message: "a CertificateRequest with this name already exists for a different private key".into(),
                }));
            }
            resource::outcome_of(cr)
        };
        let filing = Filing {
            cache: &self.cache,
            key: &key,
            request: &request,
            wait_timeout: self.cfg.wait_timeout,
            worker: &req.worker,
        };
        filing::file_and_wait(filing, || self.file(req, &request), check).await
    }
}

impl Issuer for CertManagerIssuer {
    fn kind(&self) -> &'static str {
        "cert-manager"
    }

    fn check_request(
        &self,
        req: &crate::spec::request::CertRequest,
    ) -> Result<(), crate::spec::attrs::AttrError> {
        if req.issuer.name.is_empty() {
            return Err(crate::spec::attrs::AttrError::Missing {
                attribute: format!("{}issuer-name", crate::spec::attrs::CERT_MANAGER_PREFIX),
                why: "this node issues through cert-manager (--issuer cert-manager); \"signer-name\" is for --issuer kubernetes-csr".into(),
            });
        }
        let namespace = &req.pod.namespace;
        if !namespace.is_empty() && !self.cfg.requests.covers(namespace) {
            return Err(crate::spec::attrs::AttrError::Invalid {
                attribute: "csi.storage.k8s.io/pod.namespace".into(),
                value: namespace.clone(),
                problem: format!(
                    "is not one of the namespaces this node files and watches CertificateRequests in (--request-namespaces {})",
                    self.cfg.requests.namespaces.join(",")
                ),
                accepted: "a pod in one of those namespaces, or add the namespace to --request-namespaces (chart value certManager.namespaces)".into(),
            });
        }
        Ok(())
    }

    fn issue<'a>(&'a self, req: &'a IssueRequest) -> BoxFuture<'a, Result<Issued, IssueError>> {
        Box::pin(async move {
            let result = self.issue_inner(req).await;
            filing::reported::<CertificateRequest>(&self.events, req, self.cfg.wait_timeout, result)
                .await
        })
    }

    fn forget<'a>(
        &'a self,
        namespace: &'a str,
        names: &'a [String],
    ) -> BoxFuture<'a, Result<(), IssueError>> {
        Box::pin(async move {
            if namespace.is_empty() || names.is_empty() {
                // Without a namespace no request was ever filed (issue() refuses those).
                return Ok(());
            }
            let api: Api<CertificateRequest> = Api::namespaced(self.client.clone(), namespace);
            filing::delete_all(&api, Some(namespace), names).await
        })
    }

    fn recoveries(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        Some(self.cache.recoveries())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use parking_lot::Mutex;
    use std::collections::VecDeque;

    use kube::runtime::watcher::Event;
    use serde_json::{Value, json};
    // kube does not re-export the `http` crate; tonic does (the same http 1.x).

    use super::*;
    use crate::issuer::certmanager::resource::LABEL_NODE;
    use crate::issuer::certmanager::resource::tests::{cert_request, issue_request};

    /// One API call as the fake API server saw it.
    #[derive(Clone, Debug)]
    pub(crate) struct Call {
        pub(crate) method: String,
        pub(crate) path: String,
        pub(crate) body: Value,
    }

    /// A scripted stand-in for the API server behind a `kube::Client`: records every call and
    /// answers CertificateRequest creates/deletes from a script (default: success).
    #[derive(Default)]
    pub(crate) struct Fake {
        calls: Mutex<Vec<Call>>,
        replies: Mutex<VecDeque<(u16, &'static str)>>,
    }

    impl Fake {
        pub(crate) fn calls(&self) -> Vec<Call> {
            self.calls.lock().clone()
        }

        pub(crate) fn count(&self, method: &str, resource: &str) -> usize {
            self.calls()
                .iter()
                .filter(|c| c.method == method && c.path.contains(resource))
                .count()
        }

        pub(crate) fn script(&self, code: u16, reason: &'static str) {
            self.replies.lock().push_back((code, reason));
        }

        /// The Events posted so far.
        pub(crate) fn events(&self) -> Vec<Call> {
            self.calls()
                .into_iter()
                .filter(|c| c.path.contains("/events"))
                .collect()
        }
    }

    /// Starts `issuer.issue(req)` on its own task and returns once the issuer has POSTed a
    /// `resource` (filed its request).
    pub(crate) async fn issue_until_filed<I: Issuer>(
        issuer: &Arc<I>,
        req: &IssueRequest,
        fake: &Fake,
        resource: &str,
    ) -> tokio::task::JoinHandle<Result<Issued, IssueError>> {
        let task = {
            let (issuer, req) = (issuer.clone(), req.clone());
            tokio::spawn(async move { issuer.issue(&req).await })
        };
        while fake.count("POST", resource) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        task
    }

    fn status(code: u16, reason: &str) -> Value {
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
               "message": format!("scripted {reason}"), "reason": reason, "code": code})
    }

    pub(crate) fn client(fake: Arc<Fake>) -> kube::Client {
        crate::kube::fakeapi::client(move |req| {
            let fake = fake.clone();
            async move {
                let path = req.path_and_query();
                fake.calls.lock().push(Call {
                    method: req.method.clone(),
                    path: path.clone(),
                    body: req.body.clone(),
                });
                // Scripted replies answer the issuer's request objects of either backend.
                let scripted = if path.contains("certificaterequests")
                    || path.contains("certificatesigningrequests")
                {
                    fake.replies.lock().pop_front()
                } else {
                    None
                };
                match scripted {
                    Some((code, reason)) => (code, status(code, reason)),
                    None if req.method == "POST" => (201, req.body),
                    None => (
                        200,
                        json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
                    ),
                }
            }
        })
    }

    fn issuer(fake: &Arc<Fake>, wait: Duration) -> CertManagerIssuer {
        let cfg = CertManagerConfig {
            node_id: "node-1".into(),
            wait_timeout: wait,
            use_token_request: false,
            kube_config: None,
            requests: filing::RequestWatch::default(),
            metrics: Metrics::detached(),
        };
        // The watch future is not run: tests feed the cache directly, as the watch would.
        let (issuer, _watch) = CertManagerIssuer::new(client(fake.clone()), cfg);
        issuer
    }

    fn with_conditions(
        req: &IssueRequest,
        conditions: &[(&str, &str, &str, &str)],
        certificate: Option<&str>,
    ) -> CertificateRequest {
        resource::tests::with_status(req, conditions, certificate, None)
    }

    const LEAF: &str = "-----BEGIN CERTIFICATE-----\nleaf\n-----END CERTIFICATE-----\n";

    /// A renewal's worker is put down once its request is filed, while the answer is awaited,
    /// so a signer that never answers holds no worker.
    #[tokio::test]
    async fn the_worker_is_put_down_once_the_request_is_filed() {
        let fake = Arc::new(Fake::default());
        let issuer = Arc::new(issuer(&fake, Duration::from_secs(30)));
        let pool = crate::base::fair::FairPool::new(1);
        let worker = crate::base::fair::Lease::new(&pool, "shop", pool.acquire("shop").await);
        let mut req = issue_request(cert_request());
        req.worker = worker.clone();
        let task = issue_until_filed(&issuer, &req, &fake, "certificaterequests").await;
        let put_down = tokio::time::timeout(Duration::from_secs(5), async {
            while worker.held() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        assert!(
            put_down.is_ok(),
            "the issuer held the renewal's worker while it waited for cert-manager"
        );
        assert_eq!(pool.available(), 1, "another renewal may take the worker");
        assert!(!task.is_finished(), "still waiting for the answer");
        issuer.cache.apply(Event::Apply(with_conditions(
            &req,
            &[
                ("Approved", "True", "cert-manager.io", "ok"),
                ("Ready", "True", "Issued", "ok"),
            ],
            Some(LEAF),
        )));
        assert_eq!(task.await.unwrap().unwrap().chain_pem, LEAF);
    }

    #[tokio::test]
    async fn one_create_then_the_result_from_the_watch() {
        let fake = Arc::new(Fake::default());
        let issuer = Arc::new(issuer(&fake, Duration::from_secs(10)));
        let req = issue_request(cert_request());
        let task = issue_until_filed(&issuer, &req, &fake, "certificaterequests").await;
        issuer
            .cache
            .apply(Event::Apply(with_conditions(&req, &[], None)));
        issuer.cache.apply(Event::Apply(with_conditions(
            &req,
            &[
                ("Approved", "True", "cert-manager.io", "ok"),
                ("Ready", "True", "Issued", "ok"),
            ],
            Some(LEAF),
        )));
        let issued = task.await.unwrap().unwrap();
        assert_eq!(issued.chain_pem, LEAF);
        assert_eq!(issued.ca_pem, "");

        let calls = fake.calls();
        assert_eq!(calls.len(), 1, "exactly one API call: {calls:?}");
        let create = &calls[0];
        assert_eq!(create.method, "POST");
        assert!(
            create
                .path
                .starts_with("/apis/cert-manager.io/v1/namespaces/shop/certificaterequests?"),
            "{}",
            create.path
        );
        assert!(
            create.path.contains("fieldManager=certvol"),
            "{}",
            create.path
        );
        assert_eq!(create.body["metadata"]["name"], req.name);
        assert_eq!(create.body["metadata"]["labels"][LABEL_NODE], "node-1");
        assert_eq!(create.body["metadata"]["ownerReferences"][0]["kind"], "Pod");
        assert_eq!(create.body["spec"]["issuerRef"]["name"], "ca-issuer");
    }

    #[tokio::test]
    async fn an_existing_request_is_adopted_never_created_twice() {
        let fake = Arc::new(Fake::default());
        fake.script(409, "AlreadyExists");
        let issuer = Arc::new(issuer(&fake, Duration::from_secs(10)));
        let req = issue_request(cert_request());
        // Filed before a restart; the new watch has not listed it yet.
        let task = issue_until_filed(&issuer, &req, &fake, "certificaterequests").await;
        issuer.cache.apply(Event::Apply(with_conditions(
            &req,
            &[("Ready", "True", "Issued", "ok")],
            Some(LEAF),
        )));
        assert_eq!(task.await.unwrap().unwrap().chain_pem, LEAF);
        assert_eq!(
            fake.calls().len(),
            1,
            "one create (409), no GET: {:?}",
            fake.calls()
        );
    }

    #[tokio::test]
    async fn a_request_already_on_the_watch_costs_no_api_call() {
        let fake = Arc::new(Fake::default());
        let issuer = issuer(&fake, Duration::from_secs(10));
        let req = issue_request(cert_request());
        // A retry after a timeout: the watch already shows the request, now signed.
        issuer.cache.apply(Event::Apply(with_conditions(
            &req,
            &[("Ready", "True", "Issued", "ok")],
            Some(LEAF),
        )));
        assert_eq!(issuer.issue(&req).await.unwrap().chain_pem, LEAF);
        assert!(fake.calls().is_empty(), "{:?}", fake.calls());
    }

    #[tokio::test]
    async fn an_adopted_request_for_another_key_fails() {
        let fake = Arc::new(Fake::default());
        let issuer = issuer(&fake, Duration::from_secs(10));
        let cert = cert_request();
        let csr_for = |cert: &crate::spec::request::CertRequest| {
            let key = crate::x509::keys::PrivateKey::generate(cert.key_algorithm).unwrap();
            crate::x509::keys::build_csr(cert, &key).unwrap()
        };
        let (ours, theirs) = (csr_for(&cert), csr_for(&cert));
        let mut req = issue_request(cert);
        (req.csr_pem, req.csr_der) = (theirs.pem, theirs.der);
        issuer
            .cache
            .apply(Event::Apply(with_conditions(&req, &[], None)));
        (req.csr_pem, req.csr_der) = (ours.pem, ours.der);
        match issuer.issue(&req).await {
            Err(IssueError::Failed { message, .. }) => {
                assert!(message.contains("different private key"), "{message}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn denial_is_final_and_reported_once_on_the_pod() {
        let fake = Arc::new(Fake::default());
        let issuer = issuer(&fake, Duration::from_secs(10));
        let req = issue_request(cert_request());
        issuer.cache.apply(Event::Apply(with_conditions(
            &req,
            &[(
                "Denied",
                "True",
                "policy.cert-manager.io",
                "no policy allows this request",
            )],
            None,
        )));
        for _ in 0..2 {
            match issuer.issue(&req).await {
                Err(IssueError::Denied { request, message }) => {
                    assert_eq!(request, format!("shop/{}", req.name));
                    assert_eq!(message, "no policy allows this request");
                }
                other => panic!("{other:?}"),
            }
        }
        let events: Vec<Call> = fake.events();
        assert_eq!(events.len(), 1, "deduplicated: {events:?}");
        let ev = &events[0];
        assert_eq!(ev.method, "POST");
        assert!(
            ev.path.starts_with("/api/v1/namespaces/shop/events"),
            "{}",
            ev.path
        );
        assert_eq!(ev.body["reason"], "CertificateRequestDenied");
        assert_eq!(ev.body["type"], "Warning");
        assert_eq!(
            ev.body["involvedObject"],
            json!({"apiVersion": "v1", "kind": "Pod", "name": "web-0", "namespace": "shop",
                   "uid": "6f1c1f8e-1111-2222-3333-444455556666"})
        );
        let message = ev.body["message"].as_str().unwrap();
        assert!(
            message.contains(&req.name) && message.contains("no policy allows this request"),
            "{message}"
        );
    }

    #[tokio::test]
    async fn create_errors_map_to_invalid_or_unavailable() {
        let fake = Arc::new(Fake::default());
        let issuer = issuer(&fake, Duration::from_secs(10));
        let req = issue_request(cert_request());

        fake.script(422, "Invalid");
        match issuer.issue(&req).await {
            Err(IssueError::Invalid { message, .. }) => {
                assert!(message.contains("scripted Invalid"), "{message}")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            fake.count("POST", "/events"),
            1,
            "webhook rejection is reported on the pod"
        );

        for (code, reason) in [
            (503, "ServiceUnavailable"),
            (500, "InternalError"),
            (403, "Forbidden"),
            (429, "TooManyRequests"),
        ] {
            fake.script(code, reason);
            let err = issuer.issue(&req).await.unwrap_err();
            assert!(
                matches!(err, IssueError::Unavailable { .. }),
                "{code}: {err:?}"
            );
            assert!(err.is_transient());
        }
        assert_eq!(
            fake.count("POST", "/events"),
            1,
            "transient errors are not events"
        );
    }

    #[tokio::test]
    async fn connection_refused_is_unavailable() {
        let cfg = CertManagerConfig {
            node_id: "node-1".into(),
            wait_timeout: Duration::from_secs(1),
            use_token_request: false,
            kube_config: None,
            requests: filing::RequestWatch::default(),
            metrics: Metrics::detached(),
        };
        // Bind then drop a listener: nothing accepts on that port any more.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = kube::Config::new(format!("http://127.0.0.1:{port}").parse().unwrap());
        let client = kube::Client::try_from(config).unwrap();
        let (issuer, _watch) = CertManagerIssuer::new(client, cfg);
        let err = issuer
            .issue(&issue_request(cert_request()))
            .await
            .unwrap_err();
        assert!(matches!(err, IssueError::Unavailable { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn timeout_names_the_request_and_reports_its_status() {
        let fake = Arc::new(Fake::default());
        let issuer = issuer(&fake, Duration::from_millis(50));
        let req = issue_request(cert_request());
        issuer.cache.apply(Event::Apply(with_conditions(
            &req,
            &[("Ready", "False", "Pending", "Waiting on approval")],
            None,
        )));
        match issuer.issue(&req).await {
            Err(IssueError::Timeout { request }) => {
                assert_eq!(request, format!("shop/{}", req.name))
            }
            other => panic!("{other:?}"),
        }
        let events: Vec<Call> = fake.events();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].body["reason"], "CertificateRequestTimeout");
        let message = events[0].body["message"].as_str().unwrap();
        assert!(
            message.contains("Ready=False (Pending: Waiting on approval)"),
            "{message}"
        );
    }

    #[tokio::test]
    async fn deletion_while_waiting_fails_clearly() {
        let fake = Arc::new(Fake::default());
        let issuer = Arc::new(issuer(&fake, Duration::from_secs(10)));
        let req = issue_request(cert_request());
        let task = issue_until_filed(&issuer, &req, &fake, "certificaterequests").await;
        issuer
            .cache
            .apply(Event::Apply(with_conditions(&req, &[], None)));
        issuer
            .cache
            .apply(Event::Delete(with_conditions(&req, &[], None)));
        match task.await.unwrap() {
            Err(IssueError::Failed { message, .. }) => {
                assert!(message.contains("deleted"), "{message}")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(fake.count("POST", "/events"), 1);
    }

    #[tokio::test]
    async fn requests_without_pod_info_or_token_are_invalid_without_api_calls() {
        let fake = Arc::new(Fake::default());
        let issuer = issuer(&fake, Duration::from_secs(1));
        let mut cert = cert_request();
        cert.pod.namespace.clear();
        match issuer.issue(&issue_request(cert)).await {
            Err(IssueError::Invalid { message, .. }) => {
                assert!(message.contains("podInfoOnMount"), "{message}")
            }
            other => panic!("{other:?}"),
        }

        let cfg = CertManagerConfig {
            node_id: "node-1".into(),
            wait_timeout: Duration::from_secs(1),
            use_token_request: true,
            kube_config: Some(kube::Config::new("http://127.0.0.1:1".parse().unwrap())),
            requests: filing::RequestWatch::default(),
            metrics: Metrics::detached(),
        };
        let (token_issuer, _watch) = CertManagerIssuer::new(client(fake.clone()), cfg);
        match token_issuer.issue(&issue_request(cert_request())).await {
            Err(IssueError::Invalid { message, .. }) => {
                assert!(
                    message.contains("tokenRequests") && message.contains("requiresRepublish"),
                    "{message}"
                )
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(fake.count("POST", "certificaterequests"), 0);
    }

    #[tokio::test]
    async fn token_mode_creates_with_the_pods_token() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // A one-shot HTTP server that captures the create's headers and answers 409, so the
        // issuer adopts a request whose result is already in the cache.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut seen = Vec::new();
            let mut buf = [0u8; 4096];
            while !String::from_utf8_lossy(&seen).contains("\r\n\r\n") {
                let n = conn.read(&mut buf).await.unwrap();
                assert!(n > 0);
                seen.extend_from_slice(&buf[..n]);
            }
            let body = serde_json::to_string(&status(409, "AlreadyExists")).unwrap();
            let reply = format!(
                "HTTP/1.1 409 Conflict\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            conn.write_all(reply.as_bytes()).await.unwrap();
            String::from_utf8_lossy(&seen).to_string()
        });

        let fake = Arc::new(Fake::default());
        let mut base = kube::Config::new(url.parse().unwrap());
        base.auth_info.token = Some("driver-token".into());
        let cfg = CertManagerConfig {
            node_id: "node-1".into(),
            wait_timeout: Duration::from_secs(5),
            use_token_request: true,
            kube_config: Some(base),
            requests: filing::RequestWatch::default(),
            metrics: Metrics::detached(),
        };
        let (issuer, _watch) = CertManagerIssuer::new(client(fake.clone()), cfg);
        let issuer = Arc::new(issuer);
        let mut req = issue_request(cert_request());
        req.token = Some(BearerToken::new("pod-token-123".to_owned().into()));
        let task = {
            let (issuer, req) = (issuer.clone(), req.clone());
            tokio::spawn(async move { issuer.issue(&req).await })
        };
        // The server has answered the create (409): the result now arrives on the watch.
        let head = server.await.unwrap().to_ascii_lowercase();
        issuer.cache.apply(Event::Apply(with_conditions(
            &req,
            &[("Ready", "True", "Issued", "ok")],
            Some(LEAF),
        )));
        assert_eq!(task.await.unwrap().unwrap().chain_pem, LEAF);

        assert!(
            head.starts_with("post /apis/cert-manager.io/v1/namespaces/shop/certificaterequests"),
            "{head}"
        );
        assert!(
            head.contains("authorization: bearer pod-token-123"),
            "{head}"
        );
        assert!(!head.contains("driver-token"));
        assert_eq!(
            fake.count("POST", "certificaterequests"),
            0,
            "the driver's client did not create"
        );
        assert!(!format!("{issuer:?} {req:?}").contains("pod-token-123"));
    }

    #[tokio::test]
    async fn a_volume_naming_only_a_kubernetes_signer_is_refused_up_front() {
        let fake = Arc::new(Fake::default());
        let issuer = issuer(&fake, Duration::from_secs(1));
        issuer.check_request(&cert_request()).unwrap();
        let mut only_signer = cert_request();
        only_signer.issuer.name.clear();
        only_signer.kube_csr = Some(crate::spec::request::KubeCsrRef {
            signer_name: "example.com/workloads".into(),
            ca_source: crate::spec::request::CaSource::default(),
        });
        let err = issuer.check_request(&only_signer).unwrap_err();
        assert_eq!(err.attribute(), "csi.cert-manager.io/issuer-name");
        assert!(err.to_string().contains("kubernetes-csr"), "{err}");
        assert!(fake.calls().is_empty());
    }

    #[tokio::test]
    async fn a_request_dropped_by_the_namespace_cap_times_out_saying_so() {
        let fake = Arc::new(Fake::default());
        let mut registry = prometheus_client::registry::Registry::with_prefix("certvol");
        let metrics = Metrics::register(&mut registry);
        let cfg = CertManagerConfig {
            node_id: "node-1".into(),
            wait_timeout: Duration::from_millis(50),
            use_token_request: false,
            kube_config: None,
            requests: filing::RequestWatch {
                namespaces: Vec::new(),
                limits: crate::issuer::watch::CacheLimits {
                    per_namespace: 1,
                    total: 10,
                    ..crate::issuer::watch::CacheLimits::default()
                },
            },
            metrics,
        };
        let (issuer, _watch) = CertManagerIssuer::new(client(fake.clone()), cfg);
        issuer.cache.apply(Event::InitDone);
        // Someone else's request, shaped like ours, fills the namespace's share.
        let mut squatter = issue_request(cert_request());
        squatter.name = crate::issuer::request_name("node-1", "other-volume", 1);
        issuer
            .cache
            .apply(Event::Apply(with_conditions(&squatter, &[], None)));
        let req = issue_request(cert_request());
        issuer
            .cache
            .apply(Event::Apply(with_conditions(&req, &[], None)));
        assert!(matches!(
            issuer.issue(&req).await,
            Err(IssueError::Timeout { .. })
        ));
        let events = fake.events();
        let message = events[0].body["message"].as_str().unwrap();
        assert!(
            message.contains("namespace \"shop\" beyond --max-requests-per-namespace"),
            "{message}"
        );
        let text = crate::obs::metrics::encode(&registry).unwrap();
        assert!(
            text.contains(r#"certvol_request_watch_dropped_total{reason="over_limit"} 1"#),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_pod_outside_the_watched_namespaces_is_refused_up_front() {
        let fake = Arc::new(Fake::default());
        let cfg = CertManagerConfig {
            node_id: "node-1".into(),
            wait_timeout: Duration::from_secs(1),
            use_token_request: false,
            kube_config: None,
            requests: filing::RequestWatch {
                namespaces: vec!["bank".into(), "lib".into()],
                ..Default::default()
            },
            metrics: Metrics::detached(),
        };
        let (issuer, _watch) = CertManagerIssuer::new(client(fake.clone()), cfg);
        let err = issuer.check_request(&cert_request()).unwrap_err();
        assert_eq!(err.attribute(), "csi.storage.k8s.io/pod.namespace");
        let message = err.to_string();
        assert!(
            message.contains("\"shop\"") && message.contains("--request-namespaces bank,lib"),
            "{message}"
        );
        // A volume published before the flag changed: its renewal fails the same way.
        match issuer.issue(&issue_request(cert_request())).await {
            Err(IssueError::Invalid { message, .. }) => {
                assert!(message.contains("--request-namespaces"), "{message}")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(fake.count("POST", "certificaterequests"), 0);
        let mut in_bank = cert_request();
        in_bank.pod.namespace = "bank".into();
        issuer.check_request(&in_bank).unwrap();
    }

    #[tokio::test]
    async fn forget_deletes_each_request_and_tolerates_missing_ones() {
        let fake = Arc::new(Fake::default());
        let issuer = issuer(&fake, Duration::from_secs(1));
        fake.script(404, "NotFound");
        let names = vec!["a".to_owned(), "b".to_owned()];
        issuer.forget("shop", &names).await.unwrap();
        let deletes: Vec<String> = fake
            .calls()
            .into_iter()
            .filter(|c| c.method == "DELETE")
            .map(|c| c.path)
            .collect();
        assert_eq!(deletes.len(), 2);
        assert!(
            deletes[0]
                .starts_with("/apis/cert-manager.io/v1/namespaces/shop/certificaterequests/a"),
            "{deletes:?}"
        );
        assert!(
            deletes[1]
                .starts_with("/apis/cert-manager.io/v1/namespaces/shop/certificaterequests/b"),
            "{deletes:?}"
        );

        fake.script(503, "ServiceUnavailable");
        let err = issuer.forget("shop", &names).await.unwrap_err();
        assert!(matches!(err, IssueError::Unavailable { .. }), "{err:?}");
        assert_eq!(
            fake.count("DELETE", "certificaterequests"),
            4,
            "the second name is still tried"
        );

        issuer.forget("", &names).await.unwrap();
        assert_eq!(fake.count("DELETE", "certificaterequests"), 4);
    }
}
