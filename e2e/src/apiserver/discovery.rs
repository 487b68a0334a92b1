//! Discovery (`GET /apis/{group}/{version}`, `GET /api/v1`): the APIResourceList of every kind
//! this server serves in that group/version, and 404 for one it does not serve, as kube-apiserver
//! answers. certvol asks at start-up which ClusterTrustBundle version exists and whether its
//! issuer's API does, so without this every API-mode node would find nothing served.

use serde_json::{Value, json};

use super::{Kind, trust};

const KINDS: [Kind; 7] = [
    Kind::CertificateRequest,
    Kind::Pod,
    Kind::Event,
    Kind::ConfigMap,
    Kind::Secret,
    Kind::ClusterTrustBundle,
    Kind::CertificateSigningRequest,
];

/// The group/versions each kind is served in.
fn group_versions(kind: Kind) -> &'static [&'static str] {
    match kind {
        Kind::CertificateRequest => &["cert-manager.io/v1"],
        Kind::Event => &["v1", "events.k8s.io/v1"],
        Kind::Pod | Kind::ConfigMap | Kind::Secret => &["v1"],
        Kind::ClusterTrustBundle => trust::CTB_VERSIONS,
        Kind::CertificateSigningRequest => &["certificates.k8s.io/v1"],
    }
}

/// The group/version a discovery path asks about, or `None` for any other path.
fn asked(path: &str) -> Option<String> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    match segs.as_slice() {
        ["api", "v1"] => Some("v1".into()),
        ["apis", group, version] => Some(format!("{group}/{version}")),
        _ => None,
    }
}

/// `Some(Some(list))` for a served group/version, `Some(None)` for a discovery path of one that
/// is not served (404), `None` for a path that is not discovery.
pub(crate) fn resource_list(path: &str) -> Option<Option<Value>> {
    let gv = asked(path)?;
    let resources: Vec<Value> = KINDS
        .iter()
        .filter(|k| group_versions(**k).contains(&gv.as_str()))
        .flat_map(|k| {
            let mut rows = vec![json!({
                "name": k.plural(), "singularName": k.kind_name().to_lowercase(),
                "namespaced": k.namespaced(), "kind": k.kind_name(),
                "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"],
            })];
            if k.has_status() {
                rows.push(json!({"name": format!("{}/status", k.plural()), "singularName": "",
                    "namespaced": k.namespaced(), "kind": k.kind_name(),
                    "verbs": ["get", "patch", "update"]}));
            }
            rows
        })
        .collect();
    if resources.is_empty() {
        return Some(None);
    }
    Some(Some(json!({
        "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources,
    })))
}
