//! The REST surface: URL routing as kube-apiserver lays it out (only what the configured version
//! serves: see `versions`), discovery, verbs, lists with pagination, PATCH flavours, and
//! newline-delimited JSON watch streams.

mod discover;
mod list;
mod patch;
mod watch;

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::Response;
use serde_json::{Value, json};

use super::versions::ServedApis;
use super::{ApiError, Kind, RequestRecord, Shared};
use discover::{handle_discovery, parse_discovery};
use list::{as_version, list, selectors};
use patch::{apply_patch, parse_patch};
use watch::watch;

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new().fallback(handle).with_state(shared)
}

/// A parsed resource URL.
#[derive(Debug)]
struct Route {
    kind: Kind,
    /// `v1`, `events.k8s.io/v1`, `cert-manager.io/v1`: the API the client used.
    group_version: String,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

/// A resource URL, if the configured version serves it: anything else is the unknown-path 404,
/// as from kube-apiserver.
fn parse_route(path: &str, apis: &ServedApis) -> Option<Route> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (gv, rest) = match segs.as_slice() {
        ["api", "v1", rest @ ..] => ("v1".to_string(), rest),
        ["apis", group, version, rest @ ..] => (format!("{group}/{version}"), rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some(ns.to_string()), rest),
        rest => (None, rest),
    };
    let (plural, name, sub) = match rest {
        [p] => (*p, None, None),
        [p, n] => (*p, Some(n.to_string()), None),
        [p, n, s] => (*p, Some(n.to_string()), Some(s.to_string())),
        _ => return None,
    };
    let kind = apis.served_row(&gv, plural)?.kind?;
    if kind.namespaced() && name.is_some() && namespace.is_none() {
        // Single namespaced objects only exist under /namespaces/{ns}.
        return None;
    }
    if !kind.namespaced() && namespace.is_some() {
        // Cluster-scoped kinds have no namespaced URLs.
        return None;
    }
    if let Some(s) = &sub
        && !apis.serves(&gv, &format!("{plural}/{s}"))
    {
        return None;
    }
    Some(Route {
        kind,
        group_version: gv,
        namespace,
        name,
        subresource: sub,
    })
}

fn json_response(code: u16, body: &Value) -> Response {
    let mut resp = Response::new(Body::from(body.to_string()));
    *resp.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

fn error_response(e: &ApiError) -> Response {
    json_response(e.status_code(), &e.status())
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(|t| t.trim().to_string())
}

fn is_true(q: &HashMap<String, String>, k: &str) -> bool {
    q.get(k).is_some_and(|v| v == "true" || v == "1")
}

async fn handle(
    State(s): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let token = bearer(&headers);
    let query: HashMap<String, String> = Query::try_from_uri(&uri).map(|q| q.0).unwrap_or_default();
    if let Some(d) = parse_discovery(uri.path()) {
        return handle_discovery(&s, &method, &uri, &headers, token, &d).await;
    }
    let route = parse_route(uri.path(), &s.apis);
    let verb = match (&method, &route) {
        (&Method::GET, Some(r)) if r.name.is_some() => "get",
        (&Method::GET, Some(_)) if is_true(&query, "watch") => "watch",
        (&Method::GET, Some(_)) => "list",
        (&Method::POST, _) => "create",
        (&Method::PUT, _) => "update",
        (&Method::PATCH, _) => "patch",
        (&Method::DELETE, Some(r)) if r.name.is_some() => "delete",
        (&Method::DELETE, _) => "deletecollection",
        (m, _) => m.as_str(),
    }
    .to_string();
    let mut record = RequestRecord {
        verb: verb.clone(),
        kind: route.as_ref().map(|r| r.kind),
        namespace: route.as_ref().and_then(|r| r.namespace.clone()),
        name: route.as_ref().and_then(|r| r.name.clone()),
        subresource: route.as_ref().and_then(|r| r.subresource.clone()),
        status: 0,
        token: token.clone(),
        path: uri.path().to_string(),
        query: uri.query().unwrap_or_default().to_string(),
    };
    if verb == "create" {
        // A create's path has no name; the posted object carries it (absent with generateName).
        record.name = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.pointer("/metadata/name")?.as_str().map(str::to_string));
    }
    let latency = s.faults.latency();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let result = match (route, s.faults.take_failure()) {
        (_, Some(code)) => Err(ApiError::Injected { code }),
        (None, None) => Err(ApiError::NoRoute),
        (Some(route), None) => {
            dispatch(&s, &verb, &route, &query, &headers, &body, token.as_deref())
        }
    };
    let resp = match result {
        Ok(r) => r,
        Err(e) => error_response(&e),
    };
    record.status = resp.status().as_u16();
    s.record(record);
    resp
}

fn parse_body(body: &Bytes) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::BadRequest(format!(
            "the body of the request was in an unknown format: {e}"
        ))
    })
}

fn dispatch(
    s: &Arc<Shared>,
    verb: &str,
    r: &Route,
    q: &HashMap<String, String>,
    headers: &HeaderMap,
    body: &Bytes,
    token: Option<&str>,
) -> Result<Response, ApiError> {
    let ns = r.namespace.as_deref().unwrap_or("");
    let name = r.name.as_deref().unwrap_or("");
    let sub = super::Subresource::from_path(r.subresource.as_deref());
    let store = &s.store;
    match verb {
        "get" => {
            let obj = store
                .get(r.kind, ns, name)
                .map(|o| as_version(&r.group_version, o))
                .ok_or_else(|| ApiError::not_found(r.kind, name))?;
            Ok(json_response(200, &obj))
        }
        "list" => list(s, r, q),
        "watch" => watch(s, r, q),
        "create" => {
            if r.name.is_some() || (r.kind.namespaced() && r.namespace.is_none()) {
                return Err(ApiError::MethodNotAllowed(
                    "create is only allowed on the namespaced collection".into(),
                ));
            }
            let mut obj = parse_body(body)?;
            check_api_version(r, &mut obj)?;
            let who = s.identity(token);
            let created = store.create_as(r.kind, ns, obj, &who)?;
            Ok(json_response(201, &created))
        }
        "update" => {
            require_name(r)?;
            let mut obj = parse_body(body)?;
            check_api_version(r, &mut obj)?;
            let updated = store.modify_sub(r.kind, ns, name, sub, |_| Ok(obj))?;
            let updated = as_version(&r.group_version, updated);
            Ok(json_response(200, &updated))
        }
        "patch" => {
            require_name(r)?;
            let ctype = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_string();
            let patch = parse_patch(r, &ctype, q, body)?;
            let updated = store.modify_sub(r.kind, ns, name, sub, |current| {
                apply_patch(&as_version(&r.group_version, current.clone()), &patch)
            })?;
            let updated = as_version(&r.group_version, updated);
            Ok(json_response(200, &updated))
        }
        "delete" => {
            let opts: Value = if body.is_empty() {
                Value::Null
            } else {
                parse_body(body)?
            };
            let pre = |f: &str| {
                opts.pointer(&format!("/preconditions/{f}"))
                    .and_then(Value::as_str)
                    .map(str::to_string)
            };
            let delete_opts = super::DeleteOptions {
                uid: pre("uid"),
                resource_version: pre("resourceVersion"),
                orphan: opts.get("propagationPolicy").and_then(Value::as_str) == Some("Orphan")
                    || opts.get("orphanDependents").and_then(Value::as_bool) == Some(true),
            };
            let deleted = store.delete_with(r.kind, ns, name, &delete_opts)?;
            let deleted = as_version(&r.group_version, deleted);
            Ok(json_response(200, &deleted))
        }
        "deletecollection" => delete_collection(s, r, q),
        other => Err(ApiError::MethodNotAllowed(format!(
            "the server does not allow this method on the requested resource ({other})"
        ))),
    }
}

/// DELETE on a collection: every object the selectors match, each deleted as by a single
/// DELETE (finalizers and garbage collection included); the answer lists what was deleted.
fn delete_collection(
    s: &Arc<Shared>,
    r: &Route,
    q: &HashMap<String, String>,
) -> Result<Response, ApiError> {
    if r.kind.namespaced() && r.namespace.is_none() {
        // kube-apiserver registers deletecollection only on namespaced collections.
        return Err(ApiError::MethodNotAllowed(
            "the server does not allow this method on the requested resource".into(),
        ));
    }
    let (labels, fields) = selectors(r, q)?;
    let (_, items) = s
        .store
        .list_matching(r.kind, r.namespace.as_deref(), &labels, &fields);
    let mut deleted = Vec::new();
    for item in items {
        let ns = item["metadata"]["namespace"].as_str().unwrap_or("");
        let name = item["metadata"]["name"].as_str().unwrap_or("");
        match s
            .store
            .delete_with(r.kind, ns, name, &super::DeleteOptions::default())
        {
            Ok(o) => deleted.push(as_version(&r.group_version, o)),
            // Deleted meanwhile: nothing left to do for it.
            Err(ApiError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    let rv = s.store.resource_version();
    let list_kind = format!("{}List", r.kind.kind_name());
    Ok(json_response(
        200,
        &json!({"apiVersion": r.group_version, "kind": list_kind, "metadata": {"resourceVersion": rv.to_string()}, "items": deleted}),
    ))
}

fn require_name(r: &Route) -> Result<(), ApiError> {
    if r.name.is_none() {
        return Err(ApiError::MethodNotAllowed(
            "updates need an object name in the URL".into(),
        ));
    }
    Ok(())
}

/// The object must be written through the API it claims (events exist in two API groups).
fn check_api_version(r: &Route, obj: &mut Value) -> Result<(), ApiError> {
    let Some(map) = obj.as_object_mut() else {
        return Err(ApiError::BadRequest(
            "the body must be a JSON object".into(),
        ));
    };
    match map.get("apiVersion").and_then(Value::as_str) {
        None => {
            map.insert("apiVersion".into(), json!(r.group_version));
            Ok(())
        }
        Some(v) if v == r.group_version => Ok(()),
        Some(v) => Err(ApiError::BadRequest(format!(
            "the API version in the data ({v}) does not match the expected API version ({})",
            r.group_version
        ))),
    }
}
