//! What a hostile tenant makes in its own namespace to exhaust a node's driver, shared by the
//! scenarios that show the driver's bounds (issue 13): request objects as big as the API allows
//! that pass every check their own fields allow, and trust sources as big as a ConfigMap allows.

use base64::Engine as _;
use certvol_driver::issuer::certmanager::resource::{LABEL_NODE, LABEL_VOLUME, hashed_label};
use serde_json::json;

use crate::apiserver::Kind;
use crate::cluster::{Cluster, NODE_ID};

/// Just under the API server's 256 KiB limit on all annotations of an object.
pub const ANNOTATION_BYTES: usize = 250 * 1024;
/// Size of a private extension in the CSR of `spec.request` (cert-manager's webhook accepts only a
/// CSR there): as PEM and then base64 (`format: byte`) about 1.1 MiB, so that the object stays
/// under etcd's 1.5 MiB.
pub const EXTENSION_BYTES: usize = 600 * 1024;

/// A validly signed CSR carrying an [`EXTENSION_BYTES`] extension, as `spec.request` (base64).
pub fn big_csr() -> String {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(vec!["hog.example".to_owned()]).expect("params");
    params.custom_extensions = vec![rcgen::CustomExtension::from_oid_content(
        &[1, 3, 6, 1, 4, 1, 55555, 1],
        vec![b'A'; EXTENSION_BYTES],
    )];
    let csr = params.serialize_request(&key).expect("CSR");
    base64::engine::general_purpose::STANDARD.encode(csr.pem().expect("PEM"))
}

/// Creates `count` big CertificateRequests in namespace `tenant` on the stand-in: half named and
/// annotated like certvol's own requests for this node (they pass every check an object's own
/// fields allow), half with other names.
pub fn flood_requests(cluster: &Cluster, tenant: &str, count: usize) {
    let store = cluster.standin.as_ref().expect("stand-in").api.store();
    let request = big_csr();
    let padding = "x".repeat(ANNOTATION_BYTES);
    for i in 0..count {
        let name = if i % 2 == 0 {
            format!("certvol-{:020x}-1", i)
        } else {
            format!("hog-{i}")
        };
        let object = json!({
            "apiVersion": "cert-manager.io/v1",
            "kind": "CertificateRequest",
            "metadata": {
                "name": name,
                "namespace": tenant,
                "labels": {LABEL_NODE: NODE_ID, LABEL_VOLUME: hashed_label(&name)},
                "annotations": {"certvol.io/node-name": NODE_ID, "example.com/padding": padding},
            },
            "spec": {
                "request": request,
                "issuerRef": {"name": "no-such-issuer", "kind": "Issuer"},
            },
        });
        store
            .create(Kind::CertificateRequest, tenant, object)
            .unwrap_or_else(|e| panic!("create hostile request {name}: {e:?}"));
    }
}

/// `pem` followed by comment lines up to `bytes` in all: a trust source that parses (the
/// comments are text between PEM blocks) and weighs what a full ConfigMap may.
pub fn padded(pem: &str, bytes: usize) -> String {
    let mut text = pem.to_owned();
    let line = format!("# {}\n", "x".repeat(76));
    while text.len() + line.len() <= bytes {
        text.push_str(&line);
    }
    text
}

/// A self-signed CA certificate (PEM) named `name`.
pub fn ca_pem(name: &str) -> String {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.self_signed(&key).expect("self-signed CA").pem()
}

/// Creates ConfigMap `namespace/name` holding `text` under `key`, through the API.
pub async fn create_configmap(
    cluster: &Cluster,
    namespace: &str,
    name: &str,
    key: &str,
    text: &str,
) {
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::{Api, PostParams};
    let cm: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": namespace},
        "data": {key: text},
    }))
    .expect("ConfigMap object");
    Api::<ConfigMap>::namespaced(cluster.client.clone(), namespace)
        .create(&PostParams::default(), &cm)
        .await
        .unwrap_or_else(|e| panic!("create ConfigMap {namespace}/{name}: {e}"));
}
