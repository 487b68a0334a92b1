//! Where a Kubernetes-CSR volume's `ca.crt` comes from. The CSR API answers with the certificate
//! only, so the CA is read from the source the volume's `ca-source` names: ClusterTrustBundles of
//! the signer (the default), one named ClusterTrustBundle, or a ConfigMap or Secret key in the
//! pod's namespace.
//!
//! Resolution sits behind [`CaResolver`] so that a watch-driven trust-source cache can replace the
//! direct API reads of [`KubeCaResolver`] without touching the issuer.
//!
//! ClusterTrustBundles are read in the version API discovery found (see [`crate::kube::discovery`]),
//! as `DynamicObject`s: every version has the same `spec.signerName` and `spec.trustBundle`.

use std::fmt;
use std::time::Duration;

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{DynamicObject, ListParams};
use kube::{Api, ResourceExt};
use serde::de::DeserializeOwned;

use crate::kube::discovery::{Apis, NoClusterTrustBundles};
use crate::spec::request::CaSource;

/// Why a CA could not be resolved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaError {
    /// The named source does not exist, or holds no such key, or (by signer) no bundle matches.
    #[error("{source_name}: {what}")]
    Missing { source_name: String, what: String },
    /// The source exists but holds no usable PEM certificate.
    #[error("{source_name}: {what}")]
    Unusable { source_name: String, what: String },
    /// The API server could not be asked (transient).
    #[error("{source_name}: {message}")]
    Unavailable {
        source_name: String,
        message: String,
    },
    /// The source is a ClusterTrustBundle and the cluster serves no version of that API.
    #[error(transparent)]
    NoApi(NoClusterTrustBundles),
}

impl CaError {
    pub fn is_transient(&self) -> bool {
        matches!(self, CaError::Unavailable { .. })
    }
}

/// Resolves a volume's CA source to PEM text (one or more CERTIFICATE blocks).
pub trait CaResolver: Send + Sync + fmt::Debug + 'static {
    /// `namespace` is the pod's (ConfigMap and Secret sources live there); `signer_name` is the
    /// volume's `signer-name`.
    fn resolve<'a>(
        &'a self,
        namespace: &'a str,
        signer_name: &'a str,
        source: &'a CaSource,
    ) -> BoxFuture<'a, Result<String, CaError>>;
}

/// Reads the source from the API server on every call.
pub(crate) struct KubeCaResolver {
    client: kube::Client,
    apis: Apis,
    /// How long a ClusterTrustBundle read waits for API discovery to answer.
    discovery_wait: Duration,
}

impl fmt::Debug for KubeCaResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KubeCaResolver").finish_non_exhaustive()
    }
}

impl KubeCaResolver {
    /// `apis` tells which ClusterTrustBundle version to read; a read waits for it at most
    /// `discovery_wait` (then answers Unavailable).
    pub(crate) fn new(client: kube::Client, apis: Apis, discovery_wait: Duration) -> Self {
        KubeCaResolver {
            client,
            apis,
            discovery_wait,
        }
    }

    /// The ClusterTrustBundle API in the served version, or why there is none to read.
    async fn bundles(&self, source: &CaSource) -> Result<Api<DynamicObject>, CaError> {
        let served = self
            .apis
            .served_within(self.discovery_wait)
            .await
            .map_err(|e| CaError::Unavailable {
                source_name: source.to_string(),
                message: e.to_string(),
            })?;
        match served.cluster_trust_bundles {
            Some(version) => Ok(Api::all_with(self.client.clone(), &version.api_resource())),
            None => Err(CaError::NoApi(NoClusterTrustBundles::ca_source(source))),
        }
    }
}

/// `spec.trustBundle` of a ClusterTrustBundle of any version (empty when absent, which
/// [`certificates_only`] then reports).
fn trust_bundle(b: &DynamicObject) -> &str {
    b.data
        .get("spec")
        .and_then(|spec| spec.get("trustBundle"))
        .and_then(serde_json::Value::as_str)
        .unwrap_or_default()
}

/// Keeps the CERTIFICATE blocks of `pem` (re-encoded, in order); errors when there are none or
/// the text is not PEM.
pub(crate) fn certificates_only(pem: &[u8]) -> Result<String, String> {
    let mut out = String::new();
    for block in x509_parser::pem::Pem::iter_from_buffer(pem) {
        let block = block.map_err(|e| format!("is not PEM text ({e})"))?;
        if block.label != "CERTIFICATE" {
            continue;
        }
        block
            .parse_x509()
            .map_err(|e| format!("holds a certificate that does not parse ({e})"))?;
        out.push_str(&crate::x509::keys::pem_encode(
            "CERTIFICATE",
            &block.contents,
        )?);
    }
    if out.is_empty() {
        return Err("holds no PEM CERTIFICATE block".into());
    }
    Ok(out)
}

fn api_error(source_name: &str, what: &str, error: kube::Error) -> CaError {
    match error {
        kube::Error::Api(status) if status.is_not_found() => CaError::Missing {
            source_name: source_name.to_owned(),
            what: format!("{what} not found"),
        },
        other => CaError::Unavailable {
            source_name: source_name.to_owned(),
            message: format!("reading {what}: {other}"),
        },
    }
}

fn usable(source_name: &str, what: &str, bytes: &[u8]) -> Result<String, CaError> {
    certificates_only(bytes).map_err(|problem| CaError::Unusable {
        source_name: source_name.to_owned(),
        what: format!("{what} {problem}"),
    })
}

/// Reads the one object a CA source names; `what` names it in the error.
async fn get_source<K>(
    api: &Api<K>,
    name: &str,
    source_name: &str,
    what: &str,
) -> Result<K, CaError>
where
    K: Clone + DeserializeOwned + fmt::Debug,
{
    api.get(name)
        .await
        .map_err(|e| api_error(source_name, what, e))
}

impl CaResolver for KubeCaResolver {
    fn resolve<'a>(
        &'a self,
        namespace: &'a str,
        signer_name: &'a str,
        source: &'a CaSource,
    ) -> BoxFuture<'a, Result<String, CaError>> {
        Box::pin(async move {
            let source_name = source.to_string();
            let missing = |what: String| CaError::Missing {
                source_name: source_name.clone(),
                what,
            };
            match source {
                CaSource::ClusterTrustBundleSigner => {
                    let api = self.bundles(source).await?;
                    let params =
                        ListParams::default().fields(&format!("spec.signerName={signer_name}"));
                    let what = format!("ClusterTrustBundles with spec.signerName {signer_name:?}");
                    let list = api
                        .list(&params)
                        .await
                        .map_err(|e| api_error(&source_name, &what, e))?;
                    let mut bundles: Vec<DynamicObject> = list.items;
                    // Several bundles (a CA rotation in progress) all count, in a stable order.
                    bundles.sort_by_key(|b| b.name_any());
                    if bundles.is_empty() {
                        return Err(missing(format!(
                            "no ClusterTrustBundle has spec.signerName {signer_name:?}"
                        )));
                    }
                    let mut pem = String::new();
                    for b in &bundles {
                        pem.push_str(&usable(
                            &source_name,
                            &format!("ClusterTrustBundle {}", b.name_any()),
                            trust_bundle(b).as_bytes(),
                        )?);
                    }
                    Ok(pem)
                }
                CaSource::ClusterTrustBundle(name) => {
                    let api = self.bundles(source).await?;
                    let what = format!("ClusterTrustBundle {name}");
                    let b = get_source(&api, name, &source_name, &what).await?;
                    usable(&source_name, &what, trust_bundle(&b).as_bytes())
                }
                CaSource::ConfigMap { name, key } => {
                    let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), namespace);
                    let what = format!("ConfigMap {namespace}/{name}");
                    let cm = get_source(&api, name, &source_name, &what).await?;
                    let value = cm
                        .data
                        .as_ref()
                        .and_then(|d| d.get(key))
                        .map(|v| v.as_bytes().to_vec())
                        .or_else(|| {
                            cm.binary_data
                                .as_ref()
                                .and_then(|d| d.get(key))
                                .map(|v| v.0.clone())
                        })
                        .ok_or_else(|| missing(format!("{what} has no key {key:?}")))?;
                    usable(&source_name, &format!("{what} key {key:?}"), &value)
                }
                CaSource::Secret { name, key } => {
                    let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
                    let what = format!("Secret {namespace}/{name}");
                    let secret = get_source(&api, name, &source_name, &what).await?;
                    let value = secret
                        .data
                        .as_ref()
                        .and_then(|d| d.get(key))
                        .map(|v| v.0.clone())
                        .ok_or_else(|| missing(format!("{what} has no key {key:?}")))?;
                    usable(&source_name, &format!("{what} key {key:?}"), &value)
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use serde_json::{Value, json};

    use super::*;
    use crate::kube::discovery::{CtbVersion, Served};

    /// An API server answering GET/LIST from a map of path → (code, body), recording the paths.
    fn client(
        answers: Vec<(&'static str, u16, Value)>,
        seen: Arc<Mutex<Vec<String>>>,
    ) -> kube::Client {
        crate::kube::fakeapi::client(move |req| {
            let path = req.path_and_query();
            seen.lock().unwrap().push(path.clone());
            let answer = answers
                .iter()
                .find(|(p, _, _)| path.starts_with(p))
                .map(|(_, c, b)| (*c, b.clone()))
                .unwrap_or((404, crate::kube::fakeapi::not_found()));
            async move { answer }
        })
    }

    const WAIT: std::time::Duration = std::time::Duration::from_secs(1);

    fn served(version: Option<CtbVersion>) -> Apis {
        Apis::fixed(Served {
            cluster_trust_bundles: version,
            missing: None,
        })
    }

    fn v1() -> Apis {
        served(Some(CtbVersion::V1))
    }

    fn ctb(name: &str, pem: &str) -> Value {
        json!({"apiVersion": "certificates.k8s.io/v1", "kind": "ClusterTrustBundle",
               "metadata": {"name": name},
               "spec": {"signerName": "example.com/w", "trustBundle": pem}})
    }

    #[tokio::test]
    async fn every_source_kind_is_read_from_its_object() {
        let (ca1, ca2) = (ca_pem(), ca_pem());
        let seen = Arc::new(Mutex::new(Vec::new()));
        use base64::Engine as _;
        let answers = vec![
            (
                "/apis/certificates.k8s.io/v1/clustertrustbundles?",
                200,
                json!({"apiVersion": "certificates.k8s.io/v1", "kind": "ClusterTrustBundleList",
                       "metadata": {"resourceVersion": "1"},
                       "items": [ctb("example.com:w:b", &ca2), ctb("example.com:w:a", &ca1)]}),
            ),
            (
                "/apis/certificates.k8s.io/v1/clustertrustbundles/example.com:w:a",
                200,
                ctb("example.com:w:a", &ca1),
            ),
            (
                "/api/v1/namespaces/shop/configmaps/corp-ca",
                200,
                json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "corp-ca"},
                       "data": {"ca.crt": ca1}}),
            ),
            (
                "/api/v1/namespaces/shop/secrets/corp-ca",
                200,
                json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "corp-ca"},
                       "data": {"ca.pem": base64::engine::general_purpose::STANDARD.encode(&ca2),
                                "junk": base64::engine::general_purpose::STANDARD.encode("not pem")}}),
            ),
        ];
        let resolver = KubeCaResolver::new(client(answers, seen.clone()), v1(), WAIT);
        let resolve = |source: CaSource| {
            let resolver = &resolver;
            async move { resolver.resolve("shop", "example.com/w", &source).await }
        };

        // By signer: every bundle, ordered by name.
        let both = resolve(CaSource::ClusterTrustBundleSigner).await.unwrap();
        assert_eq!(both, format!("{ca1}{ca2}").replace("\r\n", "\n"));
        assert!(
            seen.lock().unwrap()[0].contains("fieldSelector=spec.signerName%3Dexample.com%2Fw"),
            "{:?}",
            seen.lock().unwrap()
        );
        assert_eq!(
            resolve(CaSource::ClusterTrustBundle("example.com:w:a".into()))
                .await
                .unwrap(),
            ca1
        );
        let cm = CaSource::ConfigMap {
            name: "corp-ca".into(),
            key: "ca.crt".into(),
        };
        assert_eq!(resolve(cm).await.unwrap(), ca1);
        let secret = |key: &str| CaSource::Secret {
            name: "corp-ca".into(),
            key: key.into(),
        };
        assert_eq!(resolve(secret("ca.pem")).await.unwrap(), ca2);

        // What goes wrong, named.
        match resolve(secret("missing")).await {
            Err(CaError::Missing { source_name, what }) => {
                assert_eq!(source_name, "secret:corp-ca/missing");
                assert_eq!(what, "Secret shop/corp-ca has no key \"missing\"");
            }
            other => panic!("{other:?}"),
        }
        match resolve(secret("junk")).await {
            Err(CaError::Unusable { what, .. }) => {
                assert!(what.contains("no PEM CERTIFICATE"), "{what}")
            }
            other => panic!("{other:?}"),
        }
        let gone = CaSource::ConfigMap {
            name: "gone".into(),
            key: "ca.crt".into(),
        };
        match resolve(gone).await {
            Err(e @ CaError::Missing { .. }) => {
                assert_eq!(
                    e.to_string(),
                    "configmap:gone/ca.crt: ConfigMap shop/gone not found"
                )
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn no_bundle_for_the_signer_and_api_trouble_are_told_apart() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let answers = vec![
            (
                "/apis/certificates.k8s.io/v1/clustertrustbundles?",
                200,
                json!({"apiVersion": "certificates.k8s.io/v1", "kind": "ClusterTrustBundleList",
                       "metadata": {"resourceVersion": "1"}, "items": []}),
            ),
            (
                "/apis/certificates.k8s.io/v1/clustertrustbundles/broken",
                503,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                       "message": "etcd unavailable", "reason": "ServiceUnavailable", "code": 503}),
            ),
        ];
        let resolver = KubeCaResolver::new(client(answers, seen), v1(), WAIT);
        match resolver
            .resolve("shop", "example.com/w", &CaSource::ClusterTrustBundleSigner)
            .await
        {
            Err(e @ CaError::Missing { .. }) => {
                assert!(!e.is_transient());
                assert!(
                    e.to_string()
                        .contains("no ClusterTrustBundle has spec.signerName \"example.com/w\""),
                    "{e}"
                );
            }
            other => panic!("{other:?}"),
        }
        let err = resolver
            .resolve(
                "shop",
                "example.com/w",
                &CaSource::ClusterTrustBundle("broken".into()),
            )
            .await
            .unwrap_err();
        assert!(err.is_transient(), "{err:?}");
    }

    /// The same object in another version: only `apiVersion` differs.
    fn ctb_in(version: &str, name: &str, pem: &str) -> Value {
        let mut b = ctb(name, pem);
        b["apiVersion"] = json!(format!("certificates.k8s.io/{version}"));
        b
    }

    #[tokio::test]
    async fn bundles_are_read_in_the_discovered_version() {
        let ca = ca_pem();
        // 1.36 with the beta enabled: only v1beta1 answers.
        let answers = vec![
            (
                "/apis/certificates.k8s.io/v1beta1/clustertrustbundles?",
                200,
                json!({"apiVersion": "certificates.k8s.io/v1beta1", "kind": "ClusterTrustBundleList",
                       "metadata": {"resourceVersion": "1"},
                       "items": [ctb_in("v1beta1", "example.com:w:a", &ca)]}),
            ),
            (
                "/apis/certificates.k8s.io/v1beta1/clustertrustbundles/example.com:w:a",
                200,
                ctb_in("v1beta1", "example.com:w:a", &ca),
            ),
        ];
        let seen = Arc::new(Mutex::new(Vec::new()));
        let beta = KubeCaResolver::new(
            client(answers.clone(), seen.clone()),
            served(Some(CtbVersion::V1beta1)),
            WAIT,
        );
        for source in [
            CaSource::ClusterTrustBundleSigner,
            CaSource::ClusterTrustBundle("example.com:w:a".into()),
        ] {
            assert_eq!(
                beta.resolve("shop", "example.com/w", &source)
                    .await
                    .unwrap(),
                ca
            );
        }
        assert!(
            seen.lock()
                .unwrap()
                .iter()
                .all(|p| p.starts_with("/apis/certificates.k8s.io/v1beta1/")),
            "{:?}",
            seen.lock().unwrap()
        );

        // What the old hard-coded v1 read gets from that server: 404, read as "not found".
        let v1_reader = KubeCaResolver::new(client(answers, seen.clone()), v1(), WAIT);
        let err = v1_reader
            .resolve(
                "shop",
                "example.com/w",
                &CaSource::ClusterTrustBundle("example.com:w:a".into()),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, CaError::Missing { .. }), "{err:?}");

        // 1.30 as installed: no version at all. Nothing is asked; the error names the attribute.
        let seen = Arc::new(Mutex::new(Vec::new()));
        let none = KubeCaResolver::new(client(Vec::new(), seen.clone()), served(None), WAIT);
        match none
            .resolve("shop", "example.com/w", &CaSource::ClusterTrustBundleSigner)
            .await
        {
            Err(e @ CaError::NoApi(_)) => {
                assert!(!e.is_transient());
                let msg = e.to_string();
                assert!(
                    msg.starts_with("volume attribute \"csi.certvol.io/ca-source\" (\"clustertrustbundle-signer\", the default when it is not set) needs the ClusterTrustBundle API"),
                    "{msg}"
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(seen.lock().unwrap().is_empty());
        // ConfigMap and Secret sources do not need it.
        let cm = CaSource::ConfigMap {
            name: "corp-ca".into(),
            key: "ca.crt".into(),
        };
        assert!(matches!(
            none.resolve("shop", "example.com/w", &cm).await,
            Err(CaError::Missing { .. })
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_read_before_discovery_answered_is_transient() {
        let (pending, _discovery) = Apis::discover(
            client(
                vec![(
                    "/apis",
                    503,
                    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                           "message": "etcd unavailable", "reason": "ServiceUnavailable", "code": 503}),
                )],
                Arc::new(Mutex::new(Vec::new())),
            ),
            crate::kube::discovery::CSR_API,
        );
        // The discovery future is not run: discovery never answers.
        let resolver = KubeCaResolver::new(
            client(Vec::new(), Arc::new(Mutex::new(Vec::new()))),
            pending,
            WAIT,
        );
        let err = resolver
            .resolve("shop", "example.com/w", &CaSource::ClusterTrustBundleSigner)
            .await
            .unwrap_err();
        assert!(err.is_transient(), "{err:?}");
        assert!(err.to_string().contains("API discovery"), "{err}");
    }

    fn ca_pem() -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.self_signed(&key).unwrap().pem()
    }

    #[test]
    fn only_certificates_are_kept() {
        let ca = ca_pem();
        let mixed =
            format!("{ca}-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n{ca}");
        let kept = certificates_only(mixed.as_bytes()).unwrap();
        assert_eq!(kept.matches("BEGIN CERTIFICATE").count(), 2);
        assert!(!kept.contains("PRIVATE KEY"));
        assert!(
            certificates_only(b"")
                .unwrap_err()
                .contains("no PEM CERTIFICATE")
        );
        assert!(
            certificates_only(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
                .is_err()
        );
    }
}
