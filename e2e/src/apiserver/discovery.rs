//! The discovery documents, as kube-apiserver serves them, built from what the configured version
//! serves ([`ServedApis`]): `/api` (APIVersions), `/api/v1` and `/apis/{group}/{version}`
//! (APIResourceList), `/apis` (APIGroupList), `/apis/{group}` (APIGroup), aggregated discovery
//! (apidiscovery.k8s.io APIGroupDiscoveryList) on `/api` and `/apis` when the client's Accept
//! header asks for it, and `/version`.
//!
//! Clients decide what to call from these (kube-rs `Discovery`, `kubectl api-resources`, a
//! driver choosing the ClusterTrustBundle version), so they list exactly the routed resources.

use std::net::SocketAddr;

use serde_json::{Value, json};

use super::versions::{
    ApiRow, Availability, KubeVersion, ServedApis, aggregated_discovery_versions,
};
use super::{ApiError, Kind};

/// The verbs of a resource collection built into kube-apiserver (sorted, as it lists them).
const BUILT_IN_VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];
/// The verbs of a custom resource, in the order the apiextensions server lists them.
const CRD_VERBS: &[&str] = &[
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "create",
    "update",
    "watch",
];
/// The verbs of the subresources the stand-in serves (status, approval).
const SUBRESOURCE_VERBS: &[&str] = &["get", "patch", "update"];

fn verbs(row: &ApiRow) -> &'static [&'static str] {
    if row.is_subresource() {
        SUBRESOURCE_VERBS
    } else if row.availability == Availability::Crd {
        CRD_VERBS
    } else {
        BUILT_IN_VERBS
    }
}

/// `GET /version`.
pub(crate) fn version_info(version: KubeVersion) -> Value {
    json!({
        "major": "1",
        "minor": version.minor().to_string(),
        "emulationMajor": "1",
        "emulationMinor": version.minor().to_string(),
        "minCompatibilityMajor": "1",
        "minCompatibilityMinor": version.minor().saturating_sub(1).to_string(),
        "gitVersion": version.git_version(),
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "go1.24.0",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}

/// `GET /api`: the legacy core group's versions.
pub(crate) fn api_versions(addr: SocketAddr) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": addr.to_string()}],
    })
}

fn group_version_for_discovery(group: &str, version: &str) -> Value {
    json!({"groupVersion": format!("{group}/{version}"), "version": version})
}

fn group_entry(group: &str, versions: &[&str]) -> Value {
    let listed: Vec<Value> = versions
        .iter()
        .map(|v| group_version_for_discovery(group, v))
        .collect();
    let mut g = json!({"name": group, "versions": listed});
    if let Some(preferred) = versions.first() {
        g["preferredVersion"] = group_version_for_discovery(group, preferred);
    }
    g
}

/// `GET /apis`: every named group served, in kube-apiserver's group order.
pub(crate) fn api_group_list(apis: &ServedApis) -> Value {
    let groups: Vec<Value> = apis
        .groups()
        .iter()
        .filter(|(g, _)| !g.is_empty())
        .map(|(g, v)| group_entry(g, v))
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `GET /apis/{group}`, or `None` (404) when the group is not served.
pub(crate) fn api_group(apis: &ServedApis, group: &str) -> Option<Value> {
    let versions = apis.versions(group);
    if group.is_empty() || versions.is_empty() {
        return None;
    }
    let mut g = group_entry(group, &versions);
    g["kind"] = json!("APIGroup");
    g["apiVersion"] = json!("v1");
    Some(g)
}

fn resource_entry(row: &ApiRow, kind: Kind) -> Value {
    let mut r = json!({
        "name": row.resource,
        // Subresources have no singular name in discovery.
        "singularName": if row.is_subresource() { "" } else { kind.singular() },
        "namespaced": kind.namespaced(),
        "kind": kind.kind_name(),
        "verbs": verbs(row),
    });
    if !row.is_subresource() {
        if !kind.short_names().is_empty() {
            r["shortNames"] = json!(kind.short_names());
        }
        if !kind.categories().is_empty() {
            r["categories"] = json!(kind.categories());
        }
    }
    r
}

/// `GET /api/v1` or `GET /apis/{group}/{version}`, or `None` (404) when not served. The core
/// group's list carries no apiVersion, as kube-apiserver's legacy handler writes it.
pub(crate) fn resource_list(apis: &ServedApis, group_version: &str) -> Option<Value> {
    let rows = apis.resources(group_version);
    if rows.is_empty() {
        return None;
    }
    let resources: Vec<Value> = rows
        .iter()
        .filter_map(|r| r.kind.map(|k| resource_entry(r, k)))
        .collect();
    let mut list =
        json!({"kind": "APIResourceList", "groupVersion": group_version, "resources": resources});
    if group_version.contains('/') {
        list["apiVersion"] = json!("v1");
    }
    Some(list)
}

fn response_kind(kind: Kind) -> Value {
    json!({"group": "", "version": "", "kind": kind.kind_name()})
}

/// One group of an aggregated discovery document: its versions (preferred first), each with its
/// resources and their subresources.
fn aggregated_group(apis: &ServedApis, group: &str, versions: &[&str]) -> Value {
    let versions: Vec<Value> = versions
        .iter()
        .map(|v| {
            let gv = if group.is_empty() {
                v.to_string()
            } else {
                format!("{group}/{v}")
            };
            let rows = apis.resources(&gv);
            let resources: Vec<Value> = rows
                .iter()
                .filter(|r| !r.is_subresource())
                .filter_map(|r| {
                    let kind = r.kind?;
                    let subresources: Vec<Value> = rows
                        .iter()
                        .filter(|s| s.is_subresource() && s.parent() == r.resource)
                        .map(|s| {
                            json!({
                                "subresource": s.resource.rsplit('/').next().unwrap_or(""),
                                "responseKind": response_kind(kind),
                                "verbs": verbs(s),
                            })
                        })
                        .collect();
                    let mut d = json!({
                        "resource": r.resource,
                        "responseKind": response_kind(kind),
                        "scope": if kind.namespaced() { "Namespaced" } else { "Cluster" },
                        "singularResource": kind.singular(),
                        "verbs": verbs(r),
                    });
                    if !kind.short_names().is_empty() {
                        d["shortNames"] = json!(kind.short_names());
                    }
                    if !kind.categories().is_empty() {
                        d["categories"] = json!(kind.categories());
                    }
                    if !subresources.is_empty() {
                        d["subresources"] = json!(subresources);
                    }
                    Some(d)
                })
                .collect();
            json!({"version": v, "resources": resources, "freshness": "Current"})
        })
        .collect();
    let mut metadata = json!({"creationTimestamp": null});
    if !group.is_empty() {
        metadata["name"] = json!(group);
    }
    json!({"metadata": metadata, "versions": versions})
}

/// The aggregated document for `/api` (`core`) or `/apis`, in apidiscovery.k8s.io/`version`.
pub(crate) fn aggregated(apis: &ServedApis, core: bool, version: &str) -> Value {
    let items: Vec<Value> = apis
        .groups()
        .iter()
        .filter(|(g, _)| g.is_empty() == core)
        .map(|(g, v)| aggregated_group(apis, g, v))
        .collect();
    json!({
        "kind": "APIGroupDiscoveryList",
        "apiVersion": format!("apidiscovery.k8s.io/{version}"),
        "metadata": {},
        "items": items,
    })
}

/// What a discovery request's Accept header settled on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Negotiated {
    /// The legacy documents (APIVersions, APIGroupList).
    Legacy,
    /// The aggregated document in this apidiscovery.k8s.io version.
    Aggregated(&'static str),
}

impl Negotiated {
    /// The response's Content-Type: the aggregated one carries the negotiated parameters.
    pub(crate) fn content_type(self) -> String {
        match self {
            Negotiated::Legacy => "application/json".to_string(),
            Negotiated::Aggregated(v) => {
                format!("application/json;g=apidiscovery.k8s.io;v={v};as=APIGroupDiscoveryList")
            }
        }
    }
}

/// Picks the first media range of the Accept header (in the client's order, as kube-apiserver's
/// negotiation does) that the server can answer: the aggregated list in a version served by
/// `version`, or plain JSON. Protobuf and YAML are not produced here, so ranges naming only them
/// are skipped; nothing acceptable at all is 406, as from kube-apiserver.
pub(crate) fn negotiate(
    accept: Option<&str>,
    version: KubeVersion,
) -> Result<Negotiated, ApiError> {
    let Some(accept) = accept.map(str::trim).filter(|a| !a.is_empty()) else {
        return Ok(Negotiated::Legacy);
    };
    for range in accept.split(',') {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or("").to_ascii_lowercase();
        let (mut g, mut v, mut as_kind) = (None, None, None);
        for p in parts {
            if let Some((k, val)) = p.split_once('=') {
                let val = val.trim().trim_matches('"');
                match k.trim().to_ascii_lowercase().as_str() {
                    "g" => g = Some(val),
                    "v" => v = Some(val),
                    "as" => as_kind = Some(val),
                    _ => {}
                }
            }
        }
        if !matches!(media.as_str(), "application/json" | "application/*" | "*/*") {
            continue;
        }
        match (g, v, as_kind) {
            (None, None, None) => return Ok(Negotiated::Legacy),
            (Some("apidiscovery.k8s.io"), Some(v), Some("APIGroupDiscoveryList")) => {
                if let Some(served) = aggregated_discovery_versions(version)
                    .iter()
                    .find(|s| **s == v)
                {
                    return Ok(Negotiated::Aggregated(served));
                }
            }
            _ => {}
        }
    }
    let mut accepted = vec!["application/json".to_string()];
    accepted.extend(
        aggregated_discovery_versions(version)
            .iter()
            .map(|v| Negotiated::Aggregated(v).content_type()),
    );
    Err(ApiError::NotAcceptable(format!(
        "only the following media types are accepted: {}",
        accepted.join(", ")
    )))
}

#[cfg(test)]
mod tests {
    use super::super::versions::ApiConfig;
    use super::*;

    const KUBE_RS: &str = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json";

    #[test]
    fn accept_headers_pick_the_first_servable_range() {
        let v30 = KubeVersion::new(30).unwrap();
        let v37 = KubeVersion::NEWEST;
        assert_eq!(negotiate(None, v37).unwrap(), Negotiated::Legacy);
        assert_eq!(
            negotiate(Some("application/json, */*"), v37).unwrap(),
            Negotiated::Legacy
        );
        assert_eq!(
            negotiate(Some(KUBE_RS), v37).unwrap(),
            Negotiated::Aggregated("v2")
        );
        let beta_first = "application/json;as=APIGroupDiscoveryList;v=v2beta1;g=apidiscovery.k8s.io,application/json";
        assert_eq!(
            negotiate(Some(beta_first), v30).unwrap(),
            Negotiated::Aggregated("v2beta1")
        );
        // v2beta1 is gone in 1.33: the client's fallback answers.
        assert_eq!(
            negotiate(Some(beta_first), v37).unwrap(),
            Negotiated::Legacy
        );
        let err = negotiate(
            Some("application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList"),
            v37,
        )
        .unwrap_err();
        assert_eq!(err.status_code(), 406);
    }

    #[test]
    fn documents_list_only_what_is_served() {
        let apis = ServedApis::resolve(&ApiConfig::new(KubeVersion::new(33).unwrap())).unwrap();
        let groups = api_group_list(&apis);
        let names: Vec<&str> = groups["groups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "events.k8s.io",
                "certificates.k8s.io",
                "storage.k8s.io",
                "cert-manager.io"
            ]
        );
        assert!(resource_list(&apis, "certificates.k8s.io/v1beta1").is_none());
        let csr = resource_list(&apis, "certificates.k8s.io/v1").unwrap();
        let listed: Vec<&str> = csr["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            listed,
            [
                "certificatesigningrequests",
                "certificatesigningrequests/approval",
                "certificatesigningrequests/status"
            ]
        );
        let core = aggregated(&apis, true, "v2");
        assert_eq!(core["items"].as_array().unwrap().len(), 1);
        assert!(core["items"][0]["metadata"].get("name").is_none());
    }
}
