//! The Kubernetes side of the cert-manager scenarios: by default the in-process API stand-in with
//! the cert-manager stand-in signing for issuer `ca-issuer`; on request a real cluster with
//! cert-manager and a CA issuer installed.
//!
//! Real-cluster mode is opt-in twice (`CERTVOL_E2E_REAL_CLUSTER=1` *and* `KUBECONFIG`), so a
//! developer's KUBECONFIG never makes the suite create objects in whatever cluster it points at.
//!
//! On the stand-in every helper reads the stand-in's store directly rather than going through
//! HTTP: the scenarios count the API requests the driver makes, and the harness's own reads must
//! not show up in those counts.

use std::path::{Path, PathBuf};
use std::sync::Once;

use certvol_driver::demo::kubelet::{InlineVolume, Pod};
use certvol_driver::issuer::certmanager::CertificateRequest;
use certvol_driver::issuer::certmanager::resource::{LABEL_NODE, label_value};
use k8s_openapi::api::core::v1::{Event, Pod as KubePod};
use kube::Api;
use kube::api::{DeleteParams, ListParams, PostParams};
use serde_json::{Value, json};

use crate::apiserver::{ApiServer, Kind};
use crate::signer::{Signer, SignerConfig};

/// The node id [`crate::Env`] gives the driver; its requests carry this node label.
pub const NODE_ID: &str = "e2e-node";

/// The issuer the stand-in signs for (and the default issuer name on a real cluster).
pub const STANDIN_ISSUER: &str = "ca-issuer";

/// The bearer token in the driver's kubeconfig on the stand-in (the driver's identity).
pub const DRIVER_TOKEN: &str = "e2e-driver-token";

/// The bearer token of the harness's own client on the stand-in.
const TEST_TOKEN: &str = "e2e-test-token";

/// Opt-in switch for running the scenarios against a real cluster.
pub const REAL_CLUSTER_ENV: &str = "CERTVOL_E2E_REAL_CLUSTER";

/// The stand-in API server and the cert-manager stand-in, with all their test controls.
pub struct StandIn {
    pub api: ApiServer,
    pub signer: Signer,
}

/// Where the scenarios' Kubernetes API lives.
pub struct Cluster {
    /// The harness's client, for assertions; never the driver's identity.
    pub client: kube::Client,
    /// The kubeconfig the driver is started with (`KUBECONFIG`).
    pub kubeconfig: PathBuf,
    /// `None` on a real cluster.
    pub standin: Option<StandIn>,
    issuer: String,
    namespace: String,
}

impl Cluster {
    /// The API stand-in + signer; or a real cluster when CERTVOL_E2E_REAL_CLUSTER=1 and KUBECONFIG
    /// are set (then issuer name from CERTVOL_E2E_ISSUER, default "ca-issuer"; namespace from
    /// CERTVOL_E2E_NAMESPACE, default "default"). `dir` holds the stand-in's kubeconfig.
    pub async fn start(dir: &Path) -> Cluster {
        let kubeconfig_env = std::env::var_os("KUBECONFIG").filter(|v| !v.is_empty());
        let opted_in = std::env::var(REAL_CLUSTER_ENV).is_ok_and(|v| v == "1");
        match (opted_in, kubeconfig_env) {
            (true, Some(kubeconfig)) => Cluster::real(kubeconfig.into()).await,
            (true, None) => panic!("{REAL_CLUSTER_ENV}=1 needs KUBECONFIG pointing at the cluster"),
            (false, kubeconfig) => {
                if kubeconfig.is_some() {
                    static HINT: Once = Once::new();
                    HINT.call_once(|| {
                        eprintln!(
                            "note: KUBECONFIG is set but the cert-manager scenarios run against the in-process API stand-in; \
                             to run them against that cluster instead, install cert-manager and a CA Issuer \
                             (CERTVOL_E2E_ISSUER, default \"{STANDIN_ISSUER}\", in CERTVOL_E2E_NAMESPACE, default \"default\") \
                             and set {REAL_CLUSTER_ENV}=1"
                        );
                    });
                }
                Cluster::standin(dir).await
            }
        }
    }

    async fn standin(dir: &Path) -> Cluster {
        let api = ApiServer::start().await.expect("start the API stand-in");
        install_csidriver(&api);
        let signer = Signer::start(api.store(), SignerConfig::default());
        let kubeconfig = dir.join("kubeconfig");
        api.write_kubeconfig(&kubeconfig, DRIVER_TOKEN)
            .expect("write the driver's kubeconfig");
        let mut cfg = kube::Config::new(api.url().parse().expect("stand-in URL"));
        cfg.auth_info.token = Some(TEST_TOKEN.to_owned().into());
        let client = kube::Client::try_from(cfg).expect("client for the stand-in");
        Cluster {
            client,
            kubeconfig,
            standin: Some(StandIn { api, signer }),
            issuer: STANDIN_ISSUER.into(),
            namespace: "default".into(),
        }
    }

    async fn real(kubeconfig: PathBuf) -> Cluster {
        // KUBECONFIG may be a list; the driver gets the same variable, so the first entry is
        // what both of us read for the current context.
        let first = std::env::split_paths(&kubeconfig)
            .next()
            .unwrap_or(kubeconfig);
        let client = kube::Client::try_default()
            .await
            .expect("client from KUBECONFIG");
        let var = |name: &str, default: &str| {
            std::env::var(name)
                .ok()
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| default.to_owned())
        };
        Cluster {
            client,
            kubeconfig: first,
            standin: None,
            issuer: var("CERTVOL_E2E_ISSUER", STANDIN_ISSUER),
            namespace: var("CERTVOL_E2E_NAMESPACE", "default"),
        }
    }

    pub fn is_real(&self) -> bool {
        self.standin.is_none()
    }

    pub fn issuer_name(&self) -> String {
        self.issuer.clone()
    }

    /// The namespace scenarios should put their pods in: "default" on the stand-in,
    /// CERTVOL_E2E_NAMESPACE on a real cluster (where the Issuer lives).
    pub fn namespace(&self) -> String {
        self.namespace.clone()
    }

    /// Creates the Pod object (the owner of its requests and the target of events), bound to the
    /// driver's node ([`NODE_ID`]) as the scheduler would bind it, and returns the
    /// kubelet-emulator Pod with the server-assigned uid. API-mode drivers publish only for pods
    /// their node's pod watch confirms (see `certvol_driver::kube::pods`), so every API-mode publish
    /// goes through here.
    pub async fn create_pod(&self, namespace: &str, name: &str) -> Pod {
        let object = pod_object(namespace, name, NODE_ID);
        let uid = match &self.standin {
            Some(s) => return standin_pod(&s.api, namespace, name),
            None => {
                let pod: KubePod = serde_json::from_value(object).expect("pod object");
                let created = Api::<KubePod>::namespaced(self.client.clone(), namespace)
                    .create(&PostParams::default(), &pod)
                    .await
                    .unwrap_or_else(|e| panic!("create pod {namespace}/{name}: {e}"));
                created.metadata.uid.unwrap_or_default()
            }
        };
        assert!(!uid.is_empty(), "the server assigned no uid to {name}");
        Pod {
            name: name.into(),
            namespace: namespace.into(),
            uid,
            service_account: "default".into(),
            fs_group: None,
            token: None,
        }
    }

    /// Deletes the Pod object; its requests are garbage-collected through their ownerReference.
    pub async fn delete_pod(&self, pod: &Pod) {
        match &self.standin {
            Some(s) => {
                s.api
                    .store()
                    .delete(Kind::Pod, &pod.namespace, &pod.name)
                    .unwrap_or_else(|e| panic!("delete pod {}: {e:?}", pod.name));
            }
            None => {
                Api::<KubePod>::namespaced(self.client.clone(), &pod.namespace)
                    .delete(&pod.name, &DeleteParams::background())
                    .await
                    .unwrap_or_else(|e| panic!("delete pod {}: {e}", pod.name));
            }
        }
    }

    /// CertificateRequests of this node (label certvol.io/node=<node label of "e2e-node">) in a
    /// namespace.
    pub async fn requests(&self, namespace: &str) -> Vec<CertificateRequest> {
        let selector = format!("{LABEL_NODE}={}", label_value(NODE_ID));
        match &self.standin {
            Some(s) => s
                .api
                .store()
                .list(Kind::CertificateRequest, Some(namespace), Some(&selector))
                .into_iter()
                .map(|v| serde_json::from_value(v).expect("stored CertificateRequest parses"))
                .collect(),
            None => {
                Api::<CertificateRequest>::namespaced(self.client.clone(), namespace)
                    .list(&ListParams::default().labels(&selector))
                    .await
                    .unwrap_or_else(|e| panic!("list CertificateRequests: {e}"))
                    .items
            }
        }
    }

    /// Events whose involvedObject/regarding is the pod.
    pub async fn pod_events(&self, pod: &Pod) -> Vec<Value> {
        let about_pod = |e: &Value| {
            ["involvedObject", "regarding"]
                .iter()
                .any(|k| e[k]["uid"].as_str() == Some(pod.uid.as_str()))
        };
        match &self.standin {
            Some(s) => s
                .api
                .store()
                .list(Kind::Event, Some(&pod.namespace), None)
                .into_iter()
                .filter(about_pod)
                .collect(),
            None => Api::<Event>::namespaced(self.client.clone(), &pod.namespace)
                .list(&ListParams::default().fields(&format!("involvedObject.uid={}", pod.uid)))
                .await
                .unwrap_or_else(|e| panic!("list events: {e}"))
                .items
                .into_iter()
                .map(|e| serde_json::to_value(e).expect("event serializes"))
                .filter(about_pod)
                .collect(),
        }
    }
}

/// A Pod object bound to `node` with service account "default", as the harness creates it for
/// the kubelet emulator's pods. On a real cluster nothing runs it: `node` is no real node (the
/// pod-garbage collector may remove it after its grace period).
pub fn pod_object(namespace: &str, name: &str, node: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "nodeName": node,
            "serviceAccountName": "default",
            "containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10"}],
        },
    })
}

/// Creates the Pod object in the stand-in `api`, bound to [`NODE_ID`] (see
/// [`Cluster::create_pod`]), and returns the kubelet-emulator Pod with the uid the stand-in gave
/// it.
pub fn standin_pod(api: &ApiServer, namespace: &str, name: &str) -> Pod {
    let created = api
        .store()
        .create(Kind::Pod, namespace, pod_object(namespace, name, NODE_ID))
        .unwrap_or_else(|e| panic!("create pod {namespace}/{name}: {e:?}"));
    let uid = created["metadata"]["uid"].as_str().unwrap_or_default();
    assert!(!uid.is_empty(), "the stand-in assigned no uid to {name}");
    Pod {
        name: name.into(),
        namespace: namespace.into(),
        uid: uid.into(),
        service_account: "default".into(),
        fs_group: None,
        token: None,
    }
}

/// Creates the chart's CSIDriver object ([`crate::chart::plain_csidriver`]) in the stand-in,
/// as installing the chart does: API-mode drivers refuse to serve without it.
pub fn install_csidriver(api: &ApiServer) {
    api.store()
        .create(Kind::CsiDriver, "", crate::chart::plain_csidriver())
        .unwrap_or_else(|e| panic!("create the chart's CSIDriver: {e:?}"));
}

/// A cert-manager volume for `issuer` with dns name ${POD_NAME}.${POD_NAMESPACE}.svc plus extra
/// attributes.
pub fn cm_volume<'a>(
    issuer: &str,
    extra: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> InlineVolume {
    let mut v = InlineVolume::new(
        "tls",
        [
            ("csi.certvol.io/issuer-name", issuer),
            (
                "csi.certvol.io/dns-names",
                "${POD_NAME}.${POD_NAMESPACE}.svc",
            ),
        ],
    );
    for (k, val) in extra {
        v.attributes.insert(k.to_string(), val.to_string());
    }
    v
}
