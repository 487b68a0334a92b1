//! Issuance through the Kubernetes CSR API: one `CertificateSigningRequest`
//! (certificates.k8s.io/v1, cluster-scoped) per issuance for the volume's `signer-name`, and a
//! single node-scoped watch that every issuance waits on (the same [`RequestCache`] the
//! cert-manager backend uses).
//!
//! API traffic per issuance is the CA lookup (see [`ca`]), one CREATE, and one DELETE when the
//! volume layer forgets the request. After a crash the deterministic request name meets 409
//! AlreadyExists and the existing request is adopted once its `spec.request` is shown to carry
//! our key; a retry of a request the watch already shows files nothing.
//!
//! The driver never approves its own requests: an approver (a controller, or an administrator
//! with `kubectl certificate approve`) must, and the signer for `signer-name` then issues.

pub(crate) mod ca;
pub(crate) mod resource;

/// The label naming the pod's namespace on a CertificateSigningRequest (cluster-scoped).
pub use resource::LABEL_NAMESPACE;

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use kube::Api;
use tracing::info;

use self::ca::{CaError, CaResolver, KubeCaResolver};
use super::cached::{Cached, request_key_of_der};
use super::filing::{self, Filing, Reasons, RequestObject};
use super::watch::RequestCache;
use super::{IssueError, IssueRequest, Issued, Issuer};
use crate::kube::discovery::Apis;
use crate::kube::events::EventSink;
use crate::obs::metrics::Metrics;
use crate::spec::attrs::{AttrError, CERTVOL_PREFIX};
use crate::spec::request::{CaSource, CertRequest, KubeCsrRef};

pub const REASON_DENIED: &str = "CertificateSigningRequestDenied";
pub const REASON_FAILED: &str = "CertificateSigningRequestFailed";
pub const REASON_INVALID: &str = "CertificateSigningRequestInvalid";
pub const REASON_TIMEOUT: &str = "CertificateSigningRequestTimeout";
/// The volume's `ca-source` could not be read.
pub const REASON_CA: &str = "CASourceUnavailable";

/// Configuration of the Kubernetes CSR backend.
#[derive(Clone, Debug)]
pub struct KubeCsrConfig {
    /// This node's id (`--node-id`); requests are labelled with it and the watch selects on it.
    pub node_id: String,
    /// How long one `issue()` waits for the signer before returning [`IssueError::Timeout`].
    pub wait_timeout: Duration,
    /// How much the node caches of its requests (requests are cluster-scoped: the watch's
    /// namespaces do not apply).
    pub requests: filing::RequestWatch,
    /// Where the request watch counts what it drops.
    pub metrics: Metrics,
}

/// The Kubernetes CSR API issuer backend ([`Issuer::kind`] `kubernetes-csr`).
pub struct KubeCsrIssuer {
    client: kube::Client,
    cfg: KubeCsrConfig,
    cache: Arc<RequestCache<CertificateSigningRequest>>,
    events: EventSink,
    ca: Arc<dyn CaResolver>,
}

impl fmt::Debug for KubeCsrIssuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KubeCsrIssuer")
            .field("cfg", &self.cfg)
            .field("cached_requests", &self.cache.len())
            .field("ca", &self.ca)
            .finish_non_exhaustive()
    }
}

/// `csi.certvol.io/ca-source`, as messages name it.
fn ca_source_attribute() -> String {
    format!("{CERTVOL_PREFIX}ca-source")
}

impl KubeCsrIssuer {
    /// Returns the issuer (reading CAs straight from the API, ClusterTrustBundles in the version
    /// `apis` discovered) and the watch loop future, which the caller spawns.
    pub fn new(
        client: kube::Client,
        cfg: KubeCsrConfig,
        apis: Apis,
    ) -> (Self, impl Future<Output = ()> + Send + 'static) {
        let (cache, events, watch) =
            filing::node_requests(&client, &cfg.node_id, &cfg.requests, false, &cfg.metrics);
        let issuer = KubeCsrIssuer {
            ca: Arc::new(KubeCaResolver::new(client.clone(), apis, cfg.wait_timeout)),
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

    /// Replaces how CA sources are read (e.g. with a watch-driven trust cache).
    pub fn with_ca_resolver(mut self, resolver: Arc<dyn CaResolver>) -> Self {
        self.ca = resolver;
        self
    }

    /// Whether the node's request watch is serving: listed once and not failing since (part of
    /// `/readyz`).
    pub fn reachable(&self) -> bool {
        self.cache.healthy()
    }

    /// Creates the request; on 409 AlreadyExists adopts the existing one. Returns whether it was
    /// adopted and the created object's uid.
    async fn file(
        &self,
        req: &IssueRequest,
        csr: &CertificateSigningRequest,
    ) -> Result<(bool, Option<String>), IssueError> {
        let api: Api<CertificateSigningRequest> = Api::all(self.client.clone());
        filing::create_or_adopt(&api, csr, &req.name, || {
            info!(request = %req.name, signer = %csr.spec.signer_name, "created CertificateSigningRequest");
            crate::base::crashpoint::hit(crate::base::crashpoint::Point::KubeCsrCreated);
        })
        .await
    }

    async fn issue_inner(
        &self,
        req: &IssueRequest,
    ) -> Result<Issued, (IssueError, Option<String>)> {
        let request = req.name.clone();
        let signer = signer_of(req).map_err(|message| {
            let request = request.clone();
            (IssueError::Invalid { request, message }, None)
        })?;
        // The CA first: without one the volume cannot be completed, and failing before the
        // request is filed leaves nothing to clean up.
        let ca_pem = self
            .ca
            .resolve(
                &req.cert.pod.namespace,
                &signer.signer_name,
                &signer.ca_source,
            )
            .await
            .map_err(|e| (ca_error(&request, e), None))?;

        let key = (String::new(), req.name.clone());
        let our_key = request_key_of_der(&req.csr_der);
        let check = |adopted: bool, csr: &Cached| {
            if adopted && let Some(refused) = not_ours(&request, our_key, signer, csr) {
                return Some(Err(refused));
            }
            resource::outcome_of(csr)
        };
        let file = || async {
            let csr = resource::build(req, signer, &self.cfg.node_id);
            self.file(req, &csr).await
        };
        let filing = Filing {
            cache: &self.cache,
            key: &key,
            request: &request,
            wait_timeout: self.cfg.wait_timeout,
            worker: &req.worker,
        };
        let issued = filing::file_and_wait(filing, file, check).await?;
        Ok(Issued {
            chain_pem: issued.chain_pem,
            ca_pem,
        })
    }
}

/// The volume's signer, or why this backend cannot serve the volume as it is.
fn signer_of(req: &IssueRequest) -> Result<&KubeCsrRef, String> {
    let Some(signer) = req.cert.kube_csr.as_ref() else {
        return Err(format!(
            "this node issues through the Kubernetes CSR API (--issuer kubernetes-csr): set \"{CERTVOL_PREFIX}signer-name\""
        ));
    };
    if req.cert.pod.namespace.is_empty()
        && matches!(
            signer.ca_source,
            CaSource::ConfigMap { .. } | CaSource::Secret { .. }
        )
    {
        return Err(format!(
            "{}: {} is read from the pod's namespace, which is unknown: the CSIDriver object must set podInfoOnMount: true",
            ca_source_attribute(),
            signer.ca_source
        ));
    }
    Ok(signer)
}

/// Why an existing request of this name cannot be adopted (it is for another key, an unreadable
/// one, or another signer), or `None` when it is ours.
fn not_ours(
    request: &str,
    our_key: Option<[u8; 32]>,
    signer: &KubeCsrRef,
    csr: &Cached,
) -> Option<IssueError> {
    let same_key = match (our_key, csr.request_key) {
        (Some(ours), Some(theirs)) => ours == theirs,
        _ => false,
    };
    if !same_key {
        return Some(IssueError::Failed {
            request: request.to_owned(),
            message: "a CertificateSigningRequest with this name already exists for a different private key (or with an unreadable spec.request); delete it to issue again".into(),
        });
    }
    if csr.signer_name != signer.signer_name {
        return Some(IssueError::Failed {
            request: request.to_owned(),
            message: format!(
                "a CertificateSigningRequest with this name already exists for signer {:?}, not {:?}",
                csr.signer_name, signer.signer_name
            ),
        });
    }
    None
}

/// A CA source that cannot be read: missing or unusable ones are final for this publish (named
/// by the attribute, so the pod's owner knows what to fix); API trouble is transient.
fn ca_error(request: &str, error: CaError) -> IssueError {
    if error.is_transient() {
        return IssueError::Unavailable {
            message: format!("{}: {error}", ca_source_attribute()),
        };
    }
    if let CaError::NoApi(e) = &error {
        // Already names the attribute and says what to do.
        return IssueError::Invalid {
            request: request.to_owned(),
            message: e.to_string(),
        };
    }
    IssueError::Invalid {
        request: request.to_owned(),
        message: format!(
            "{}: {error} (the CSR API returns no CA, so ca.crt must come from this source)",
            ca_source_attribute()
        ),
    }
}

impl RequestObject for CertificateSigningRequest {
    const REASONS: Reasons = Reasons {
        denied: REASON_DENIED,
        failed: REASON_FAILED,
        invalid: REASON_INVALID,
        timeout: REASON_TIMEOUT,
    };
    const DELETED_HINT: &'static str = "";
    // The CSR API is built in: a 404 is ordinary (transient) trouble, not a missing CRD.
    const CREATE_NOT_FOUND_HINT: Option<&'static str> = None;

    fn describe_status(cached: &Cached) -> String {
        resource::describe_cached(cached)
    }

    fn event<'e>(
        error: &'e IssueError,
        wait_timeout: Duration,
        timeout_state: Option<&str>,
    ) -> Option<(&'static str, &'e str, String)> {
        // An unreadable CA source is named by its attribute, which the message already leads with.
        if let IssueError::Invalid { request, message } = error
            && (message.starts_with(&ca_source_attribute())
                || message.starts_with(&format!("volume attribute {:?}", ca_source_attribute())))
        {
            return Some((REASON_CA, request, message.clone()));
        }
        filing::standard_event::<Self>(error, wait_timeout, timeout_state)
    }
}

impl Issuer for KubeCsrIssuer {
    fn kind(&self) -> &'static str {
        "kubernetes-csr"
    }

    fn check_request(&self, req: &CertRequest) -> Result<(), AttrError> {
        if req.kube_csr.is_none() {
            return Err(AttrError::Missing {
                attribute: format!("{CERTVOL_PREFIX}signer-name"),
                why: "this node issues through the Kubernetes CSR API (--issuer kubernetes-csr), which needs the signer's name, e.g. \"example.com/workloads\"".into(),
            });
        }
        if req.duration < resource::MIN_EXPIRATION {
            return Err(AttrError::Invalid {
                attribute: format!("{CERTVOL_PREFIX}duration"),
                value: format!("{:?}", req.duration),
                problem: "is shorter than the Kubernetes CSR API allows (expirationSeconds >= 600)"
                    .into(),
                accepted: "a Go duration of at least \"10m\"".into(),
            });
        }
        Ok(())
    }

    fn issue<'a>(&'a self, req: &'a IssueRequest) -> BoxFuture<'a, Result<Issued, IssueError>> {
        Box::pin(async move {
            let result = self.issue_inner(req).await;
            filing::reported::<CertificateSigningRequest>(
                &self.events,
                req,
                self.cfg.wait_timeout,
                result,
            )
            .await
        })
    }

    fn forget<'a>(
        &'a self,
        _namespace: &'a str,
        names: &'a [String],
    ) -> BoxFuture<'a, Result<(), IssueError>> {
        // Requests are cluster-scoped and their names unique per node and volume, so the pod's
        // namespace plays no part.
        Box::pin(async move {
            let api: Api<CertificateSigningRequest> = Api::all(self.client.clone());
            filing::delete_all(&api, None, names).await
        })
    }

    fn recoveries(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        Some(self.cache.recoveries())
    }
}

#[cfg(test)]
mod tests {
    use parking_lot::Mutex;

    use kube::runtime::watcher::Event;

    use super::*;
    use crate::issuer::certmanager::resource::tests::{cert_request, issue_request};
    use crate::issuer::certmanager::tests::{Fake, client, issue_until_filed};
    use resource::tests::{signer, with_status};

    /// A CA resolver answering from a fixed result, recording what it was asked.
    #[derive(Debug)]
    struct FixedCa {
        answer: Result<String, &'static str>,
        asked: Mutex<Vec<(String, String, CaSource)>>,
    }

    impl CaResolver for FixedCa {
        fn resolve<'a>(
            &'a self,
            namespace: &'a str,
            signer_name: &'a str,
            source: &'a CaSource,
        ) -> BoxFuture<'a, Result<String, CaError>> {
            self.asked
                .lock()
                .push((namespace.to_owned(), signer_name.to_owned(), source.clone()));
            let result = match &self.answer {
                Ok(pem) => Ok(pem.clone()),
                Err(what) => Err(CaError::Missing {
                    source_name: source.to_string(),
                    what: (*what).to_owned(),
                }),
            };
            Box::pin(async move { result })
        }
    }

    const CA: &str = "-----BEGIN CERTIFICATE-----\nca\n-----END CERTIFICATE-----\n";
    const LEAF: &str = "-----BEGIN CERTIFICATE-----\nleaf\n-----END CERTIFICATE-----\n";

    fn issuer(fake: &Arc<Fake>, ca: Result<String, &'static str>) -> (KubeCsrIssuer, Arc<FixedCa>) {
        let cfg = KubeCsrConfig {
            node_id: "node-1".into(),
            wait_timeout: Duration::from_secs(10),
            requests: filing::RequestWatch::default(),
            metrics: Metrics::detached(),
        };
        let resolver = Arc::new(FixedCa {
            answer: ca,
            asked: Mutex::new(Vec::new()),
        });
        // The watch future is not run: tests feed the cache directly, as the watch would.
        let apis = crate::kube::discovery::Apis::fixed(crate::kube::discovery::Served {
            cluster_trust_bundles: Some(crate::kube::discovery::CtbVersion::V1),
            missing: None,
        });
        let (issuer, _watch) = KubeCsrIssuer::new(client(fake.clone()), cfg, apis);
        (issuer.with_ca_resolver(resolver.clone()), resolver)
    }

    #[test]
    fn no_clustertrustbundle_api_is_invalid_with_the_ca_source_event() {
        let err = ca_error(
            "certvol-x-1",
            CaError::NoApi(crate::kube::discovery::NoClusterTrustBundles::ca_source(
                &CaSource::ClusterTrustBundleSigner,
            )),
        );
        match &err {
            IssueError::Invalid { request, message } => {
                assert_eq!(request, "certvol-x-1");
                assert!(
                    message.starts_with("volume attribute \"csi.certvol.io/ca-source\""),
                    "{message}"
                );
            }
            other => panic!("{other:?}"),
        }
        let (reason, _, _) =
            <CertificateSigningRequest as RequestObject>::event(&err, Duration::from_secs(1), None)
                .unwrap();
        assert_eq!(reason, REASON_CA);
    }

    /// An issuance with a real CSR (adoption compares its public key).
    fn csr_request() -> IssueRequest {
        let mut cert = cert_request();
        cert.kube_csr = Some(signer());
        let key = crate::x509::keys::PrivateKey::generate(cert.key_algorithm).unwrap();
        let csr = crate::x509::keys::build_csr(&cert, &key).unwrap();
        let mut req = issue_request(cert);
        (req.csr_pem, req.csr_der) = (csr.pem, csr.der);
        req
    }

    #[tokio::test]
    async fn one_create_then_the_result_from_the_watch_with_the_resolved_ca() {
        let fake = Arc::new(Fake::default());
        let (issuer, resolver) = issuer(&fake, Ok(CA.into()));
        let issuer = Arc::new(issuer);
        let req = csr_request();
        let task = issue_until_filed(&issuer, &req, &fake, "certificatesigningrequests").await;
        issuer
            .cache
            .apply(Event::Apply(with_status(&req, &[], None)));
        issuer.cache.apply(Event::Apply(with_status(
            &req,
            &[("Approved", "AutoApproved", "ok")],
            Some(LEAF),
        )));
        let issued = task.await.unwrap().unwrap();
        assert_eq!(issued.chain_pem, LEAF);
        assert_eq!(issued.ca_pem, CA);
        assert_eq!(
            resolver.asked.lock().as_slice(),
            [(
                "shop".to_owned(),
                "example.com/workloads".to_owned(),
                CaSource::ClusterTrustBundleSigner
            )]
        );
        let calls = fake.calls();
        assert_eq!(calls.len(), 1, "exactly one API call: {calls:?}");
        assert!(
            calls[0]
                .path
                .starts_with("/apis/certificates.k8s.io/v1/certificatesigningrequests?"),
            "{}",
            calls[0].path
        );
        assert_eq!(calls[0].body["spec"]["signerName"], "example.com/workloads");
        assert_eq!(calls[0].body["metadata"]["name"], req.name);
    }

    #[tokio::test]
    async fn an_adopted_request_for_another_key_or_signer_fails() {
        let fake = Arc::new(Fake::default());
        let (issuer, _) = issuer(&fake, Ok(CA.into()));
        let cert = {
            let mut c = cert_request();
            c.kube_csr = Some(signer());
            c
        };
        let csr_for = |cert: &CertRequest| {
            let key = crate::x509::keys::PrivateKey::generate(cert.key_algorithm).unwrap();
            crate::x509::keys::build_csr(cert, &key).unwrap()
        };
        let (ours, theirs) = (csr_for(&cert), csr_for(&cert));
        let mut req = issue_request(cert);
        (req.csr_pem, req.csr_der) = (theirs.pem, theirs.der);
        issuer
            .cache
            .apply(Event::Apply(with_status(&req, &[], None)));
        (req.csr_pem, req.csr_der) = (ours.pem.clone(), ours.der.clone());
        match issuer.issue(&req).await {
            Err(IssueError::Failed { message, .. }) => {
                assert!(message.contains("different private key"), "{message}")
            }
            other => panic!("{other:?}"),
        }

        // Same key, other signer.
        let mut existing = with_status(&req, &[], None);
        existing.spec.signer_name = "other.example/x".into();
        issuer.cache.apply(Event::Apply(existing));
        match issuer.issue(&req).await {
            Err(IssueError::Failed { message, .. }) => {
                assert!(message.contains("other.example/x"), "{message}")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            fake.count("POST", "certificatesigningrequests"),
            0,
            "adopted, never filed"
        );
    }

    #[tokio::test]
    async fn an_existing_request_is_adopted_after_409() {
        let fake = Arc::new(Fake::default());
        fake.script(409, "AlreadyExists");
        let (issuer, _) = issuer(&fake, Ok(CA.into()));
        let issuer = Arc::new(issuer);
        let req = csr_request();
        let task = issue_until_filed(&issuer, &req, &fake, "certificatesigningrequests").await;
        issuer.cache.apply(Event::Apply(with_status(
            &req,
            &[("Approved", "AutoApproved", "ok")],
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
    async fn denial_and_failure_carry_reason_and_message_and_an_event() {
        let fake = Arc::new(Fake::default());
        let (issuer, _) = issuer(&fake, Ok(CA.into()));
        let req = csr_request();
        issuer.cache.apply(Event::Apply(with_status(
            &req,
            &[("Denied", "PolicyDenied", "not for you")],
            None,
        )));
        match issuer.issue(&req).await {
            Err(IssueError::Denied { message, .. }) => {
                assert_eq!(message, "PolicyDenied: not for you")
            }
            other => panic!("{other:?}"),
        }
        let events: Vec<_> = fake.events();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].body["reason"], REASON_DENIED);

        issuer.cache.apply(Event::Apply(with_status(
            &req,
            &[
                ("Approved", "A", "ok"),
                ("Failed", "SignerValidationFailure", "bad"),
            ],
            None,
        )));
        match issuer.issue(&req).await {
            Err(IssueError::Failed { message, .. }) => {
                assert_eq!(message, "SignerValidationFailure: bad")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(fake.count("POST", "/events"), 2);
    }

    #[tokio::test]
    async fn a_missing_ca_source_files_nothing_and_names_the_attribute() {
        let fake = Arc::new(Fake::default());
        let (issuer, _) = issuer(&fake, Err("ConfigMap shop/corp-ca not found"));
        match issuer.issue(&csr_request()).await {
            Err(IssueError::Invalid { message, .. }) => {
                assert!(
                    message.starts_with("csi.certvol.io/ca-source: clustertrustbundle-signer: ConfigMap shop/corp-ca not found"),
                    "{message}"
                )
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(fake.count("POST", "certificatesigningrequests"), 0);
        let events: Vec<_> = fake.events();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].body["reason"], REASON_CA);
    }

    #[tokio::test]
    async fn requests_the_backend_cannot_serve_are_refused_before_anything_is_written() {
        let fake = Arc::new(Fake::default());
        let (issuer, _) = issuer(&fake, Ok(CA.into()));
        let err = issuer.check_request(&cert_request()).unwrap_err();
        assert_eq!(err.attribute(), "csi.certvol.io/signer-name");
        let mut short = cert_request();
        short.kube_csr = Some(signer());
        short.duration = Duration::from_secs(300);
        let err = issuer.check_request(&short).unwrap_err();
        assert_eq!(err.attribute(), "csi.certvol.io/duration");
        assert!(err.to_string().contains("10m"), "{err}");
        short.duration = Duration::from_secs(600);
        issuer.check_request(&short).unwrap();
        assert!(fake.calls().is_empty());
    }

    #[tokio::test]
    async fn forget_deletes_cluster_scoped_requests_by_name() {
        let fake = Arc::new(Fake::default());
        let (issuer, _) = issuer(&fake, Ok(CA.into()));
        fake.script(404, "NotFound");
        issuer
            .forget("shop", &["a".to_owned(), "b".to_owned()])
            .await
            .unwrap();
        let deletes: Vec<String> = fake
            .calls()
            .into_iter()
            .filter(|c| c.method == "DELETE")
            .map(|c| c.path)
            .collect();
        assert_eq!(deletes.len(), 2);
        assert!(
            deletes[1].starts_with("/apis/certificates.k8s.io/v1/certificatesigningrequests/b"),
            "{deletes:?}"
        );
        fake.script(503, "ServiceUnavailable");
        let err = issuer.forget("", &["c".to_owned()]).await.unwrap_err();
        assert!(err.is_transient(), "{err:?}");
    }
}
