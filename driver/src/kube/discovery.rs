//! Which Kubernetes APIs the cluster serves, asked at `certvol node` start-up (cert-manager and
//! kubernetes-csr modes; local mode has no API).
//!
//! certvol uses one optional API whose version depends on the cluster: ClusterTrustBundles
//! (`certificates.k8s.io`) are v1alpha1 on 1.27-1.36 (off by default), v1beta1 on 1.33+ (off by
//! default on 1.33-1.36) and v1 from 1.37 (on). Hard-coding one version makes every read 404 on
//! the others, so the version is discovered (`GET /apis/certificates.k8s.io/{version}`, v1 first,
//! then v1beta1, then v1alpha1: one schema, only `apiVersion` differs) and every ClusterTrustBundle
//! reader (the kube-csr `ca-source`, the trust-bundle watches) reads through the discovered one.
//! The issuer's own API is checked too (cert-manager.io/v1 `certificaterequests`,
//! certificates.k8s.io/v1 `certificatesigningrequests`), so a missing one is named at start-up
//! instead of surfacing as a 404 on the first publish.
//!
//! Decisions:
//! - Discovery runs in the background ([`Apis::discover`] returns the future; `node` spawns it).
//!   While the API server cannot be asked it retries with backoff (1 s doubling to 30 s), logs each
//!   failure, `/readyz` says why it is not ready, and publishes wait for it up to
//!   `--issue-timeout`, then answer Unavailable (kubelet retries). The CSI Probe is not held back:
//!   the liveness sidecar would restart the plugin in a loop during an API outage.
//! - A missing required API keeps `/readyz` at 503 naming the API, and publishes answer
//!   FailedPrecondition with the same text. Discovery asks again every 30 s, so installing
//!   cert-manager after certvol needs no restart.
//! - The ClusterTrustBundle version is settled by the first answer and kept for the life of the
//!   process (enabling the API means restarting kube-apiserver; restart certvol's pods after it).
//!   With no version served, certvol warns once and a volume that asks for a ClusterTrustBundle
//!   fails with FailedPrecondition naming its attribute ([`NoClusterTrustBundles`]).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use kube::api::ApiResource;
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::spec::request::{CaSource, CertRequest};

/// The API group of ClusterTrustBundles and CertificateSigningRequests.
pub const CERTIFICATES_GROUP: &str = "certificates.k8s.io";

/// How often a missing required API is looked for again.
pub const RECHECK: Duration = Duration::from_secs(30);

/// The longest wait between attempts while the API server does not answer discovery.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// How kube-apiserver enables ClusterTrustBundles, for messages and docs.
pub const CTB_ENABLEMENT: &str = "certificates.k8s.io/v1 (Kubernetes 1.37 and later), or \
     certificates.k8s.io/v1beta1 on 1.33-1.36 once kube-apiserver runs with \
     --feature-gates=ClusterTrustBundle=true and \
     --runtime-config=certificates.k8s.io/v1beta1/clustertrustbundles=true";

/// A ClusterTrustBundle API version, in order of preference.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CtbVersion {
    V1,
    V1beta1,
    V1alpha1,
}

impl CtbVersion {
    /// Preferred first: the stable version, then beta, then alpha.
    pub const PREFERENCE: [CtbVersion; 3] =
        [CtbVersion::V1, CtbVersion::V1beta1, CtbVersion::V1alpha1];

    pub fn as_str(self) -> &'static str {
        match self {
            CtbVersion::V1 => "v1",
            CtbVersion::V1beta1 => "v1beta1",
            CtbVersion::V1alpha1 => "v1alpha1",
        }
    }

    /// `certificates.k8s.io/v1beta1`.
    pub fn group_version(self) -> String {
        format!("{CERTIFICATES_GROUP}/{}", self.as_str())
    }

    /// What `Api::all_with` needs to read ClusterTrustBundles in this version as
    /// `DynamicObject`s.
    pub fn api_resource(self) -> ApiResource {
        ApiResource {
            group: CERTIFICATES_GROUP.into(),
            version: self.as_str().into(),
            api_version: self.group_version(),
            kind: "ClusterTrustBundle".into(),
            plural: "clustertrustbundles".into(),
        }
    }
}

/// An API the issuer backend cannot work without.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequiredApi {
    /// `cert-manager.io/v1`.
    pub group_version: &'static str,
    /// The resource's plural name, as discovery lists it.
    pub resource: &'static str,
    /// Who needs it, e.g. `--issuer cert-manager`.
    pub needed_by: &'static str,
    /// What makes the cluster serve it.
    pub remedy: &'static str,
}

/// `--issuer cert-manager` files cert-manager CertificateRequests.
pub const CERT_MANAGER_API: RequiredApi = RequiredApi {
    group_version: "cert-manager.io/v1",
    resource: "certificaterequests",
    needed_by: "--issuer cert-manager",
    remedy: "install cert-manager (its CustomResourceDefinitions)",
};

/// `--issuer kubernetes-csr` files Kubernetes CertificateSigningRequests.
pub const CSR_API: RequiredApi = RequiredApi {
    group_version: "certificates.k8s.io/v1",
    resource: "certificatesigningrequests",
    needed_by: "--issuer kubernetes-csr",
    remedy: "it is built into every supported Kubernetes version (1.30-1.37): check that kube-apiserver does not disable it with --runtime-config",
};

/// What discovery found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Served {
    /// The ClusterTrustBundle version to read; `None`: the cluster serves none.
    pub cluster_trust_bundles: Option<CtbVersion>,
    /// The issuer's API when the cluster does not serve it.
    pub missing: Option<RequiredApi>,
}

/// Where discovery stands.
#[derive(Clone, Debug, PartialEq, Eq)]
enum State {
    /// Not answered yet; the last attempt's error, if one failed.
    Pending {
        last_error: Option<String>,
    },
    Known(Served),
}

/// Discovery could not ask the API server (transport error, 5xx, 401/403, ...); retried.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("GET /apis/{group_version}: {message}")]
pub struct DiscoveryError {
    pub group_version: String,
    pub message: String,
}

/// A volume names a ClusterTrustBundle (by attribute) on a cluster that serves no
/// ClusterTrustBundle API. The attribute is valid; the cluster lacks the API.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "volume attribute {attribute:?} ({value}) needs the ClusterTrustBundle API, which this cluster does not serve in any version: {CTB_ENABLEMENT}; {instead}"
)]
pub struct NoClusterTrustBundles {
    pub attribute: String,
    /// The attribute's value as the message shows it, e.g. `"clustertrustbundle-signer", the
    /// default`.
    pub value: String,
    /// What the volume can use instead.
    pub instead: String,
}

impl NoClusterTrustBundles {
    /// For the kube-csr `ca-source` (the default one included).
    pub fn ca_source(source: &CaSource) -> Self {
        let attribute = format!("{}ca-source", crate::spec::attrs::CERTVOL_PREFIX);
        let value = if *source == CaSource::default() {
            format!("{:?}, the default when it is not set", source.to_string())
        } else {
            format!("{:?}", source.to_string())
        };
        NoClusterTrustBundles {
            instead: format!(
                "set {attribute:?} to \"configmap:NAME/KEY\" or \"secret:NAME/KEY\" (a key in the pod's namespace holding the signer's CA) instead"
            ),
            attribute,
            value,
        }
    }

    /// For a `trust-*` attribute naming ClusterTrustBundles (`what`, e.g. the bundle names).
    pub fn trust(attribute: &str, what: &str) -> Self {
        let p = crate::spec::attrs::CERTVOL_PREFIX;
        NoClusterTrustBundles {
            attribute: attribute.to_owned(),
            value: format!("{what:?}"),
            instead: format!(
                "remove it, or put the CA certificates in a ConfigMap or Secret and name them with \"{p}trust-configmaps\" or \"{p}trust-secrets\""
            ),
        }
    }
}

/// Why a publish cannot go ahead on what the cluster serves.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// Transient: discovery has not been answered (within the wait); kubelet retries.
    #[error(
        "the Kubernetes API server has not answered certvol's API discovery yet ({reason}); retry shortly"
    )]
    NotDiscovered { reason: String },
    /// The issuer's API is not served.
    #[error(
        "this cluster does not serve {} {}, which {} needs: {}; certvol looks again every {}s",
        .0.group_version, .0.resource, .0.needed_by, .0.remedy, RECHECK.as_secs()
    )]
    Missing(RequiredApi),
    #[error(transparent)]
    NoClusterTrustBundles(#[from] NoClusterTrustBundles),
}

impl ApiError {
    /// Whether a retry may succeed without anyone changing the cluster.
    pub fn is_transient(&self) -> bool {
        matches!(self, ApiError::NotDiscovered { .. })
    }
}

/// The first ClusterTrustBundle a volume asks for: the kube-csr `ca-source`, then the `trust-*`
/// attributes.
pub fn cluster_trust_bundle_need(req: &CertRequest) -> Option<NoClusterTrustBundles> {
    if let Some(csr) = &req.kube_csr
        && matches!(
            csr.ca_source,
            CaSource::ClusterTrustBundleSigner | CaSource::ClusterTrustBundle(_)
        )
    {
        return Some(NoClusterTrustBundles::ca_source(&csr.ca_source));
    }
    let spec = req.trust.as_ref()?;
    if !spec.cluster_bundles.is_empty() {
        return Some(NoClusterTrustBundles::trust(
            &spec.cluster_bundles_attribute,
            &spec.cluster_bundles.join(","),
        ));
    }
    spec.signer
        .as_ref()
        .map(|s| NoClusterTrustBundles::trust(&spec.signer_attribute, &s.signer_name))
}

/// A shared view of what discovery found. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Apis {
    state: Arc<watch::Sender<State>>,
}

impl Apis {
    /// Already known (tests, and callers that discovered by other means).
    pub fn fixed(served: Served) -> Apis {
        Apis {
            state: Arc::new(watch::Sender::new(State::Known(served))),
        }
    }

    /// Asks `client`'s API server what it serves; the returned future keeps asking until it has
    /// an answer (and, while `required` is missing, every [`RECHECK`]) and must be spawned.
    pub fn discover(
        client: kube::Client,
        required: RequiredApi,
    ) -> (Apis, impl Future<Output = ()> + Send + 'static) {
        let apis = Apis {
            state: Arc::new(watch::Sender::new(State::Pending { last_error: None })),
        };
        let state = apis.state.clone();
        (apis, run(client, required, state))
    }

    fn current(&self) -> State {
        self.state.borrow().clone()
    }

    /// What discovery found, waiting for it up to `wait`; `Err` says why it is not known.
    pub async fn served_within(&self, wait: Duration) -> Result<Served, ApiError> {
        let mut rx = self.state.subscribe();
        let known = tokio::time::timeout(wait, rx.wait_for(|s| matches!(s, State::Known(_)))).await;
        match (known, self.current()) {
            (Ok(Ok(_)), State::Known(served)) => Ok(served),
            (_, State::Pending { last_error }) => Err(ApiError::NotDiscovered {
                reason: match last_error {
                    Some(e) => format!("last attempt: {e}"),
                    None => format!("no answer within {wait:?}"),
                },
            }),
            // The sender lives as long as `self`, so the wait cannot end otherwise.
            (_, State::Known(served)) => Ok(served),
        }
    }

    /// Waits (without bound) until discovery has answered, then the ClusterTrustBundle version
    /// to read (`None`: the cluster serves none).
    pub async fn cluster_trust_bundles(&self) -> Option<CtbVersion> {
        let mut rx = self.state.subscribe();
        let known = rx
            .wait_for(|s| matches!(s, State::Known(_)))
            .await
            .map(|s| s.clone());
        match known {
            Ok(State::Known(served)) => served.cluster_trust_bundles,
            _ => None,
        }
    }

    /// Whether a publish of `req` can go ahead on what the cluster serves, waiting for discovery
    /// up to `wait`.
    pub async fn check(&self, req: &CertRequest, wait: Duration) -> Result<(), ApiError> {
        let served = self.served_within(wait).await?;
        if let Some(missing) = served.missing {
            return Err(ApiError::Missing(missing));
        }
        match (served.cluster_trust_bundles, cluster_trust_bundle_need(req)) {
            (None, Some(need)) => Err(need.into()),
            _ => Ok(()),
        }
    }

    /// For `/readyz`: `Err` with the reason while discovery is pending or a required API is
    /// missing.
    pub fn readiness(&self) -> Result<(), String> {
        match self.current() {
            State::Pending { last_error } => Err(format!(
                "API discovery has not been answered yet{}",
                last_error
                    .map(|e| format!(" (last attempt: {e})"))
                    .unwrap_or_default()
            )),
            State::Known(Served {
                missing: Some(m), ..
            }) => Err(ApiError::Missing(m).to_string()),
            State::Known(_) => Ok(()),
        }
    }
}

/// Whether the API server serves `resource` in `group_version`; a 404 for the group/version means
/// it does not (the way kube-apiserver answers for a disabled or unknown one).
async fn serves(
    client: &kube::Client,
    group_version: &str,
    resource: &str,
) -> Result<bool, DiscoveryError> {
    match client.list_api_group_resources(group_version).await {
        Ok(list) => Ok(list.resources.iter().any(|r| r.name == resource)),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(false),
        Err(e) => Err(DiscoveryError {
            group_version: group_version.to_owned(),
            message: e.to_string(),
        }),
    }
}

/// One round of discovery: the required API, then ClusterTrustBundles in order of preference.
pub async fn discover_once(
    client: &kube::Client,
    required: RequiredApi,
) -> Result<Served, DiscoveryError> {
    let missing =
        (!serves(client, required.group_version, required.resource).await?).then_some(required);
    let mut cluster_trust_bundles = None;
    for version in CtbVersion::PREFERENCE {
        if serves(client, &version.group_version(), "clustertrustbundles").await? {
            cluster_trust_bundles = Some(version);
            break;
        }
    }
    Ok(Served {
        cluster_trust_bundles,
        missing,
    })
}

fn backoff(failures: u32) -> Duration {
    Duration::from_secs(1u64 << failures.min(5)).min(MAX_BACKOFF)
}

async fn run(client: kube::Client, required: RequiredApi, state: Arc<watch::Sender<State>>) {
    let mut failures = 0u32;
    loop {
        let previous = state.borrow().clone();
        match discover_once(&client, required).await {
            Ok(mut served) => {
                failures = 0;
                match &previous {
                    // The version is settled once: watches already run against it.
                    State::Known(before) => {
                        served.cluster_trust_bundles = before.cluster_trust_bundles;
                        if served.missing.is_none() {
                            info!(
                                api = required.group_version,
                                resource = required.resource,
                                "the required API is served now"
                            );
                        }
                    }
                    State::Pending { .. } => announce(&served),
                }
                let missing = served.missing.is_some();
                state.send_replace(State::Known(served));
                if !missing {
                    return;
                }
                tokio::time::sleep(RECHECK).await;
            }
            Err(e) => {
                let delay = backoff(failures);
                failures = failures.saturating_add(1);
                warn!(error = %e, retry_in = ?delay, "API discovery failed; retrying");
                if let State::Pending { .. } = previous {
                    state.send_replace(State::Pending {
                        last_error: Some(e.to_string()),
                    });
                }
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// The one start-up log line per finding.
fn announce(served: &Served) {
    match served.cluster_trust_bundles {
        Some(v) => info!(
            version = %v.group_version(),
            "reading ClusterTrustBundles through the served version"
        ),
        None => warn!(
            "this cluster serves no ClusterTrustBundle API ({CTB_ENABLEMENT}); volumes whose ca-source or trust-cluster-bundles / trust-signer-name name ClusterTrustBundles fail with FailedPrecondition"
        ),
    }
    if let Some(m) = served.missing {
        error!(
            "{}; /readyz stays 503 and publishes fail until it is served",
            ApiError::Missing(m)
        );
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use serde_json::{Value, json};

    use super::*;

    /// A kube-apiserver's discovery answers: the group/versions it serves, each with its
    /// resources; everything else 404 (as kube-apiserver answers for a version it does not
    /// serve). Records the paths asked.
    fn discovery_client(served: &[(&str, &[&str])], seen: Arc<Mutex<Vec<String>>>) -> kube::Client {
        let served: Vec<(String, Vec<String>)> = served
            .iter()
            .map(|(gv, rs)| (gv.to_string(), rs.iter().map(|r| r.to_string()).collect()))
            .collect();
        crate::kube::fakeapi::client(move |req| {
            seen.lock().unwrap().push(req.path.clone());
            let answer = match served
                .iter()
                .find(|(gv, _)| req.path == format!("/apis/{gv}"))
            {
                Some((gv, resources)) => (200, crate::kube::fakeapi::resource_list(gv, resources)),
                None => (404, crate::kube::fakeapi::not_found()),
            };
            async move { answer }
        })
    }

    fn etcd_unavailable() -> Value {
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
               "message": "etcd unavailable", "reason": "ServiceUnavailable", "code": 503})
    }

    const CSR: (&str, &[&str]) = (
        "certificates.k8s.io/v1",
        &[
            "certificatesigningrequests",
            "certificatesigningrequests/status",
        ],
    );

    async fn found(served: &[(&str, &[&str])], required: RequiredApi) -> Served {
        let seen = Arc::new(Mutex::new(Vec::new()));
        discover_once(&discovery_client(served, seen), required)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn the_served_clustertrustbundle_version_is_found_by_preference() {
        // 1.37: v1 (the beta may still be enabled alongside; v1 wins).
        let v1 = [
            (
                "certificates.k8s.io/v1",
                &["certificatesigningrequests", "clustertrustbundles"][..],
            ),
            ("certificates.k8s.io/v1beta1", &["clustertrustbundles"][..]),
        ];
        assert_eq!(
            found(&v1, CSR_API).await,
            Served {
                cluster_trust_bundles: Some(CtbVersion::V1),
                missing: None
            }
        );
        // 1.36 with the beta enabled.
        let beta = [
            CSR,
            ("certificates.k8s.io/v1beta1", &["clustertrustbundles"][..]),
        ];
        assert_eq!(
            found(&beta, CSR_API).await.cluster_trust_bundles,
            Some(CtbVersion::V1beta1)
        );
        // 1.36 where v1beta1 serves only something else (PodCertificateRequests).
        let other_beta = [
            CSR,
            (
                "certificates.k8s.io/v1beta1",
                &["podcertificaterequests"][..],
            ),
        ];
        assert_eq!(
            found(&other_beta, CSR_API).await.cluster_trust_bundles,
            None
        );
        // 1.32 with the alpha enabled.
        let alpha = [
            CSR,
            ("certificates.k8s.io/v1alpha1", &["clustertrustbundles"][..]),
        ];
        assert_eq!(
            found(&alpha, CSR_API).await.cluster_trust_bundles,
            Some(CtbVersion::V1alpha1)
        );
        // 1.30 as installed: none.
        assert_eq!(
            found(&[CSR], CSR_API).await,
            Served {
                cluster_trust_bundles: None,
                missing: None
            }
        );
    }

    #[tokio::test]
    async fn a_missing_required_api_is_named() {
        let served = found(&[CSR], CERT_MANAGER_API).await;
        assert_eq!(served.missing, Some(CERT_MANAGER_API));
        let apis = Apis::fixed(served);
        let why = apis.readiness().unwrap_err();
        assert_eq!(
            why,
            "this cluster does not serve cert-manager.io/v1 certificaterequests, which --issuer cert-manager needs: install cert-manager (its CustomResourceDefinitions); certvol looks again every 30s"
        );
        let with_crds = found(
            &[
                CSR,
                (
                    "cert-manager.io/v1",
                    &["certificaterequests", "issuers"][..],
                ),
            ],
            CERT_MANAGER_API,
        )
        .await;
        assert_eq!(with_crds.missing, None);
    }

    #[tokio::test]
    async fn discovery_errors_other_than_404_are_errors() {
        let client = crate::kube::fakeapi::client(|_| async { (503, etcd_unavailable()) });
        let err = discover_once(&client, CSR_API).await.unwrap_err();
        assert_eq!(err.group_version, "certificates.k8s.io/v1");
        assert!(err.message.contains("etcd unavailable"), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn pending_discovery_is_unavailable_and_ready_once_answered() {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let gate = Arc::new(tokio::sync::Mutex::new(Some(rx)));
        // An API server that fails until `tx` fires, then serves v1 only.
        let client = crate::kube::fakeapi::client(move |req| {
            let gate = gate.clone();
            async move {
                let open = {
                    let mut g = gate.lock().await;
                    match g.as_mut().map(|rx| rx.try_recv()) {
                        Some(Ok(())) => {
                            *g = None;
                            true
                        }
                        Some(Err(_)) => false,
                        None => true,
                    }
                };
                if !open {
                    (503, etcd_unavailable())
                } else if req.path == "/apis/certificates.k8s.io/v1" {
                    (
                        200,
                        crate::kube::fakeapi::resource_list(
                            "certificates.k8s.io/v1",
                            &["certificatesigningrequests", "clustertrustbundles"],
                        ),
                    )
                } else {
                    (404, crate::kube::fakeapi::not_found())
                }
            }
        });
        let (apis, task) = Apis::discover(client, CSR_API);
        let task = tokio::spawn(task);
        let req = crate::spec::attrs::parse(
            &[
                ("csi.certvol.io/signer-name", "example.com/w"),
                ("csi.certvol.io/dns-names", "a.example"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
        )
        .unwrap();
        let err = apis.check(&req, Duration::from_secs(3)).await.unwrap_err();
        assert!(err.is_transient(), "{err:?}");
        assert!(
            err.to_string()
                .contains("has not answered certvol's API discovery yet"),
            "{err}"
        );
        assert!(apis.readiness().unwrap_err().contains("last attempt"));
        tx.send(()).unwrap();
        apis.check(&req, MAX_BACKOFF * 2).await.unwrap();
        assert_eq!(apis.readiness(), Ok(()));
        assert_eq!(apis.cluster_trust_bundles().await, Some(CtbVersion::V1));
        // Nothing missing: discovery is done.
        task.await.unwrap();
    }

    fn parse(pairs: &[(&str, &str)]) -> CertRequest {
        let mut ctx: std::collections::HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        ctx.entry("csi.certvol.io/dns-names".into())
            .or_insert_with(|| "a.example".into());
        crate::spec::attrs::parse(&ctx).unwrap()
    }

    #[tokio::test]
    async fn without_clustertrustbundles_only_volumes_that_name_one_fail() {
        let none = Apis::fixed(Served {
            cluster_trust_bundles: None,
            missing: None,
        });
        let wait = Duration::from_secs(1);
        let default_source = parse(&[("csi.certvol.io/signer-name", "example.com/w")]);
        match none.check(&default_source, wait).await {
            Err(ApiError::NoClusterTrustBundles(e)) => {
                assert_eq!(e.attribute, "csi.certvol.io/ca-source");
                let msg = e.to_string();
                assert_eq!(
                    msg,
                    "volume attribute \"csi.certvol.io/ca-source\" (\"clustertrustbundle-signer\", the default when it is not set) needs the ClusterTrustBundle API, which this cluster does not serve in any version: certificates.k8s.io/v1 (Kubernetes 1.37 and later), or certificates.k8s.io/v1beta1 on 1.33-1.36 once kube-apiserver runs with --feature-gates=ClusterTrustBundle=true and --runtime-config=certificates.k8s.io/v1beta1/clustertrustbundles=true; set \"csi.certvol.io/ca-source\" to \"configmap:NAME/KEY\" or \"secret:NAME/KEY\" (a key in the pod's namespace holding the signer's CA) instead"
                );
            }
            other => panic!("{other:?}"),
        }
        let named = parse(&[
            ("csi.certvol.io/signer-name", "example.com/w"),
            (
                "csi.certvol.io/ca-source",
                "clustertrustbundle:example.com:w:v1",
            ),
        ]);
        let msg = none.check(&named, wait).await.unwrap_err().to_string();
        assert!(
            msg.contains(
                "(\"clustertrustbundle:example.com:w:v1\") needs the ClusterTrustBundle API"
            ),
            "{msg}"
        );
        let configmap = parse(&[
            ("csi.certvol.io/signer-name", "example.com/w"),
            ("csi.certvol.io/ca-source", "configmap:corp-ca/ca.crt"),
        ]);
        none.check(&configmap, wait).await.unwrap();

        for (key, value) in [
            (
                "csi.certvol.io/trust-cluster-bundles",
                "example.com:s:a,other",
            ),
            ("csi.certvol.io/trust-signer-name", "example.com/s"),
        ] {
            let req = parse(&[("csi.certvol.io/issuer-name", "ca"), (key, value)]);
            match none.check(&req, wait).await {
                Err(ApiError::NoClusterTrustBundles(e)) => {
                    assert_eq!(e.attribute, key);
                    let msg = e.to_string();
                    assert!(
                        msg.contains(&format!("({value:?}) needs the ClusterTrustBundle API")),
                        "{msg}"
                    );
                    assert!(msg.contains("trust-configmaps"), "{msg}");
                }
                other => panic!("{key}: {other:?}"),
            }
        }
        let plain = parse(&[("csi.certvol.io/issuer-name", "ca")]);
        none.check(&plain, wait).await.unwrap();

        let beta = Apis::fixed(Served {
            cluster_trust_bundles: Some(CtbVersion::V1beta1),
            missing: None,
        });
        beta.check(&default_source, wait).await.unwrap();
    }
}
