//! Discovery documents: the paths, content negotiation and the served groups.

use std::sync::Arc;

use axum::http::{HeaderMap, HeaderValue, Method, Uri, header};
use axum::response::Response;

use super::{error_response, json_response};
use crate::apiserver::discovery::{self, Negotiated};
use crate::apiserver::{ApiError, RequestRecord, Shared};

/// The discovery paths.
#[derive(Debug)]
pub(super) enum DiscoveryPath {
    Version,
    /// `/api`
    Core,
    /// `/apis`
    Groups,
    /// `/apis/{group}`
    Group(String),
    /// `/api/v1`, `/apis/{group}/{version}`
    Resources(String),
}

pub(super) fn parse_discovery(path: &str) -> Option<DiscoveryPath> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    Some(match segs.as_slice() {
        ["version"] => DiscoveryPath::Version,
        ["api"] => DiscoveryPath::Core,
        ["api", v] => DiscoveryPath::Resources(v.to_string()),
        ["apis"] => DiscoveryPath::Groups,
        ["apis", g] => DiscoveryPath::Group(g.to_string()),
        ["apis", g, v] => DiscoveryPath::Resources(format!("{g}/{v}")),
        _ => return None,
    })
}

fn discover(
    s: &Shared,
    method: &Method,
    d: &DiscoveryPath,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    if method != Method::GET {
        return Err(ApiError::MethodNotAllowed(
            "the server does not allow this method on the requested resource".into(),
        ));
    }
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let version = s.apis.version();
    let negotiated = |core: bool| -> Result<Response, ApiError> {
        Ok(match discovery::negotiate(accept, version)? {
            Negotiated::Legacy if core => json_response(200, &discovery::api_versions(s.addr)),
            Negotiated::Legacy => json_response(200, &discovery::api_group_list(&s.apis)),
            n @ Negotiated::Aggregated(v) => {
                let mut resp = json_response(200, &discovery::aggregated(&s.apis, core, v));
                if let Ok(ct) = HeaderValue::from_str(&n.content_type()) {
                    resp.headers_mut().insert(header::CONTENT_TYPE, ct);
                }
                // The answer depends on Accept: caches must key on it.
                resp.headers_mut()
                    .insert(header::VARY, HeaderValue::from_static("Accept"));
                resp
            }
        })
    };
    match d {
        DiscoveryPath::Version => Ok(json_response(200, &discovery::version_info(version))),
        DiscoveryPath::Core => negotiated(true),
        DiscoveryPath::Groups => negotiated(false),
        DiscoveryPath::Group(g) => discovery::api_group(&s.apis, g)
            .map(|doc| json_response(200, &doc))
            .ok_or(ApiError::NoRoute),
        DiscoveryPath::Resources(gv) => discovery::resource_list(&s.apis, gv)
            .map(|doc| json_response(200, &doc))
            .ok_or(ApiError::NoRoute),
    }
}

/// A discovery request: faults, latency and the request log apply as to any other.
pub(super) async fn handle_discovery(
    s: &Arc<Shared>,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    token: Option<String>,
    d: &DiscoveryPath,
) -> Response {
    let latency = s.faults.latency();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let result = match s.faults.take_failure() {
        Some(code) => Err(ApiError::Injected { code }),
        None => discover(s, method, d, headers),
    };
    let resp = result.unwrap_or_else(|e| error_response(&e));
    s.record(RequestRecord {
        verb: if method == Method::GET {
            "get".into()
        } else {
            method.as_str().to_string()
        },
        kind: None,
        namespace: None,
        name: None,
        subresource: None,
        status: resp.status().as_u16(),
        token,
        path: uri.path().to_string(),
        query: uri.query().unwrap_or_default().to_string(),
    });
    resp
}
