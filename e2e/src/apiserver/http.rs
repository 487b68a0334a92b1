//! The REST surface: URL routing as kube-apiserver lays it out (only what the configured version
//! serves: see `versions`), discovery, verbs, lists with pagination, PATCH flavours, and
//! newline-delimited JSON watch streams.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};

use super::discovery::{self, Negotiated};
use super::versions::ServedApis;
use super::{
    ApiError, FieldSelector, Kind, LabelSelector, RequestRecord, Shared, WatchEvent,
    resource_version_of, trust,
};

/// Fields a CertificateRequest field selector may use: metadata plus the CRD's selectableFields.
const CR_SELECTABLE: &[&str] = &[
    "metadata.name",
    "metadata.namespace",
    "spec.issuerRef.group",
    "spec.issuerRef.kind",
    "spec.issuerRef.name",
];

/// Fields a CertificateSigningRequest field selector may use.
const CSR_SELECTABLE: &[&str] = &["metadata.name", "spec.signerName"];

/// Watches end after this long when the client gives no timeoutSeconds (apiserver picks 30-60 min).
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(1800);

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

/// The discovery paths.
#[derive(Debug)]
enum DiscoveryPath {
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

fn parse_discovery(path: &str) -> Option<DiscoveryPath> {
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

/// A discovery request: faults, latency and the request log apply as to any other.
async fn handle_discovery(
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

/// Field names that differ between events.k8s.io/v1 and core/v1 Events (the apiserver's
/// conversion); everything else (reason, action, type, eventTime, series, related,
/// reportingInstance) has the same name in both.
const EVENT_RENAMES: &[(&str, &str)] = &[
    ("regarding", "involvedObject"),
    ("note", "message"),
    ("deprecatedCount", "count"),
    ("deprecatedFirstTimestamp", "firstTimestamp"),
    ("deprecatedLastTimestamp", "lastTimestamp"),
    ("deprecatedSource", "source"),
    ("reportingController", "reportingComponent"),
];

/// Serves an object in the API version the client asked for: both Event APIs are views of one
/// resource, so an event written through one is readable through the other.
fn as_version(group_version: &str, mut obj: Value) -> Value {
    let from = obj.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    // ClusterTrustBundle's versions share one schema: only the apiVersion differs.
    if obj.get("kind").and_then(Value::as_str) == Some("ClusterTrustBundle") {
        obj["apiVersion"] = json!(group_version);
        return obj;
    }
    if obj.get("kind").and_then(Value::as_str) != Some("Event") || from == group_version {
        return obj;
    }
    let Some(map) = obj.as_object_mut() else {
        return obj;
    };
    for (v1, core) in EVENT_RENAMES {
        let (old, new) = if group_version == "v1" {
            (v1, core)
        } else {
            (core, v1)
        };
        if let Some(v) = map.remove(*old) {
            map.insert((*new).to_string(), v);
        }
    }
    map.insert("apiVersion".into(), json!(group_version));
    obj
}

fn selectors(
    r: &Route,
    q: &HashMap<String, String>,
) -> Result<(LabelSelector, FieldSelector), ApiError> {
    let labels = LabelSelector::parse(q.get("labelSelector").map_or("", String::as_str))
        .map_err(|e| ApiError::BadRequest(format!("unable to parse requirement: {e}")))?;
    let allowed = match r.kind {
        Kind::CertificateRequest => Some(CR_SELECTABLE),
        Kind::ConfigMap => Some(trust::CONFIGMAP_SELECTABLE),
        Kind::Secret => Some(trust::SECRET_SELECTABLE),
        Kind::ClusterTrustBundle => Some(trust::CTB_SELECTABLE),
        Kind::CertificateSigningRequest => Some(CSR_SELECTABLE),
        Kind::CsiDriver => Some(super::storage::CSIDRIVER_SELECTABLE),
        Kind::Pod | Kind::Event => None,
    };
    let fields = FieldSelector::parse(q.get("fieldSelector").map_or("", String::as_str), allowed)
        .map_err(ApiError::BadRequest)?;
    Ok((labels, fields))
}

fn list(s: &Arc<Shared>, r: &Route, q: &HashMap<String, String>) -> Result<Response, ApiError> {
    let (labels, fields) = selectors(r, q)?;
    let (rv, items) = s
        .store
        .list_matching(r.kind, r.namespace.as_deref(), &labels, &fields);
    let mut items: Vec<Value> = items
        .into_iter()
        .map(|o| as_version(&r.group_version, o))
        .collect();
    let key = |o: &Value| {
        format!(
            "{}/{}",
            o["metadata"]["namespace"].as_str().unwrap_or(""),
            o["metadata"]["name"].as_str().unwrap_or("")
        )
    };
    if let Some(token) = q.get("continue").filter(|t| !t.is_empty()) {
        let after = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| ApiError::BadRequest("continue key is not valid".into()))?;
        items.retain(|o| key(o) > after);
    }
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if let Some(limit) = q
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|l| *l > 0)
        && items.len() > limit
    {
        let remaining = items.len() - limit;
        items.truncate(limit);
        if let Some(last) = items.last() {
            meta["continue"] =
                json!(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key(last)));
            meta["remainingItemCount"] = json!(remaining);
        }
    }
    let list_kind = format!("{}List", r.kind.kind_name());
    Ok(json_response(
        200,
        &json!({"apiVersion": r.group_version, "kind": list_kind, "metadata": meta, "items": items}),
    ))
}

/// Which changes one watch stream delivers.
struct WatchFilter {
    kind: Kind,
    namespace: Option<String>,
    labels: LabelSelector,
    fields: FieldSelector,
    group_version: String,
}

impl WatchFilter {
    fn matches(&self, ev: &WatchEvent) -> bool {
        let o = &ev.object;
        ev.kind == self.kind
            && self
                .namespace
                .as_deref()
                .is_none_or(|ns| o["metadata"]["namespace"].as_str() == Some(ns))
            && (self.kind != Kind::Event
                || o["apiVersion"].as_str() == Some(self.group_version.as_str()))
            && self.labels.matches(o)
            && self.fields.matches(o)
    }
}

fn line(ev_type: &str, object: &Value) -> Bytes {
    let mut text = json!({"type": ev_type, "object": object}).to_string();
    text.push('\n');
    Bytes::from(text)
}

fn watch(s: &Arc<Shared>, r: &Route, q: &HashMap<String, String>) -> Result<Response, ApiError> {
    let (labels, fields) = selectors(r, q)?;
    let filter = WatchFilter {
        kind: r.kind,
        namespace: r.namespace.clone(),
        labels,
        fields,
        group_version: r.group_version.clone(),
    };
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map_or(DEFAULT_WATCH_TIMEOUT, Duration::from_secs);
    let bookmarks = is_true(q, "allowWatchBookmarks");
    let initial_events = is_true(q, "sendInitialEvents");
    let rv_param = q.get("resourceVersion").map(String::as_str).unwrap_or("");
    let (tx, rx) = mpsc::channel::<Result<Bytes, Infallible>>(64);
    let bookmark = |rv: u64| json!({"kind": r.kind.kind_name(), "apiVersion": r.group_version, "metadata": {"resourceVersion": rv.to_string()}});

    let mut first: Vec<Bytes> = Vec::new();
    let (since, live) = if initial_events || rv_param.is_empty() || rv_param == "0" {
        let (rv, current, live) = s.store.watch_current(r.kind);
        first.extend(
            current
                .iter()
                .filter(|e| filter.matches(e))
                .map(|e| line("ADDED", &as_version(&r.group_version, e.object.clone()))),
        );
        if initial_events {
            // The end of the initial state, marked as kube-apiserver's streaming lists do.
            let mut bm = bookmark(rv);
            bm["metadata"]["annotations"] = json!({"k8s.io/initial-events-end": "true"});
            first.push(line("BOOKMARK", &bm));
        }
        (rv, Some(live))
    } else {
        let since: u64 = rv_param
            .parse()
            .map_err(|_| ApiError::BadRequest(format!("invalid resource version: {rv_param:?}")))?;
        match s.store.watch_from(since) {
            Ok((backlog, live)) => {
                first.extend(backlog.iter().filter(|e| filter.matches(e)).map(|e| {
                    let obj = as_version(&r.group_version, e.object.clone());
                    line(e.event_type.wire_name(), &obj)
                }));
                let last = backlog.last().map_or(since, WatchEvent::resource_version);
                (last, Some(live))
            }
            Err(e) => {
                // As the watch cache does: the stream opens with 200 and carries one ERROR event.
                first.push(line("ERROR", &e.status()));
                (since, None)
            }
        }
    };

    let mut closer = s.faults.watch_closer();
    closer.mark_unchanged();
    let bm_template = bookmark(0);
    tokio::spawn(async move {
        for l in first {
            if tx.send(Ok(l)).await.is_err() {
                return;
            }
        }
        let Some(mut live) = live else { return };
        let mut last = since;
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                ev = live.recv() => match ev {
                    Ok(ev) => {
                        let rv = ev.resource_version();
                        if rv <= last {
                            continue;
                        }
                        last = rv;
                        if filter.matches(&ev) {
                            let obj = as_version(&filter.group_version, ev.object);
                            if tx.send(Ok(line(ev.event_type.wire_name(), &obj))).await.is_err() {
                                return;
                            }
                        }
                    }
                    // Fell behind or the store is gone: end the stream; the client resumes from
                    // the last resourceVersion it saw, as after any dropped watch.
                    Err(broadcast::error::RecvError::Lagged(_) | broadcast::error::RecvError::Closed) => return,
                },
                _ = &mut deadline => {
                    if bookmarks {
                        let mut bm = bm_template.clone();
                        bm["metadata"]["resourceVersion"] = json!(last.to_string());
                        let _ = tx.send(Ok(line("BOOKMARK", &bm))).await;
                    }
                    return;
                }
                _ = closer.changed() => return,
                _ = tx.closed() => return,
            }
        }
    });
    let mut resp =
        Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx)).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

/// A PATCH body in one of the flavours the apiserver accepts.
enum PatchBody {
    Merge(Value),
    Json(Vec<Value>),
}

fn parse_patch(
    r: &Route,
    ctype: &str,
    q: &HashMap<String, String>,
    body: &Bytes,
) -> Result<PatchBody, ApiError> {
    match ctype {
        "application/merge-patch+json" => Ok(PatchBody::Merge(parse_body(body)?)),
        // Custom resources have no strategic-merge metadata, so the apiserver refuses it there.
        "application/strategic-merge-patch+json" if r.kind != Kind::CertificateRequest => {
            Ok(PatchBody::Merge(parse_body(body)?))
        }
        "application/json-patch+json" => match parse_body(body)? {
            Value::Array(ops) => Ok(PatchBody::Json(ops)),
            _ => Err(ApiError::BadRequest(
                "a JSON patch must be an array of operations".into(),
            )),
        },
        "application/apply-patch+yaml" => {
            if q.get("fieldManager").is_none_or(String::is_empty) {
                return Err(ApiError::invalid_options(
                    "fieldManager: Required value: is required for apply patch",
                ));
            }
            // Server-side apply approximated as a merge of the applied configuration: field
            // ownership is not tracked here.
            let text = std::str::from_utf8(body)
                .map_err(|e| ApiError::BadRequest(format!("apply patch is not UTF-8: {e}")))?;
            let v: Value = serde_yaml::from_str(text)
                .map_err(|e| ApiError::BadRequest(format!("apply patch is not valid YAML: {e}")))?;
            Ok(PatchBody::Merge(v))
        }
        other => Err(ApiError::UnsupportedMediaType(format!(
            "the body of the request was in an unknown format ({other}) - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml"
        ))),
    }
}

fn apply_patch(current: &Value, patch: &PatchBody) -> Result<Value, ApiError> {
    let mut out = current.clone();
    match patch {
        PatchBody::Merge(p) => merge(&mut out, p),
        PatchBody::Json(ops) => {
            for op in ops {
                json_patch_op(&mut out, op)?;
            }
        }
    }
    // The patched object keeps the stored resourceVersion unless the patch set one: only then
    // is the update conditional.
    let patch_rv = match patch {
        PatchBody::Merge(p) => p.pointer("/metadata/resourceVersion").cloned(),
        PatchBody::Json(_) => out.pointer("/metadata/resourceVersion").cloned(),
    };
    if patch_rv.is_none()
        && let Some(m) = out.get_mut("metadata").and_then(Value::as_object_mut)
    {
        m.insert(
            "resourceVersion".into(),
            json!(resource_version_of(current).to_string()),
        );
    }
    Ok(out)
}

/// RFC 7386 JSON merge patch.
fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    if let Value::Object(t) = target {
        for (k, v) in p {
            if v.is_null() {
                t.remove(k);
            } else {
                merge(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

fn unescape(token: &str) -> String {
    token.replace("~1", "/").replace("~0", "~")
}

/// One RFC 6902 operation (add, remove, replace, test; enough for what clients send).
fn json_patch_op(doc: &mut Value, op: &Value) -> Result<(), ApiError> {
    let bad = |m: String| ApiError::BadRequest(format!("invalid JSON patch: {m}"));
    let kind = op
        .get("op")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("missing op".into()))?;
    let path = op
        .get("path")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("missing path".into()))?;
    let value = op.get("value").cloned();
    if kind == "test" {
        return if doc.pointer(path) == value.as_ref() {
            Ok(())
        } else {
            Err(ApiError::Invalid {
                kind: String::new(),
                name: String::new(),
                causes: vec![super::FieldCause::invalid(path, "", "testing value failed")],
            })
        };
    }
    let (parent_path, last) = path
        .rsplit_once('/')
        .ok_or_else(|| bad(format!("bad path {path:?}")))?;
    let last = unescape(last);
    let parent = doc
        .pointer_mut(parent_path)
        .ok_or_else(|| bad(format!("path {parent_path:?} does not exist")))?;
    match (kind, parent) {
        ("add" | "replace", Value::Object(m)) => {
            if kind == "replace" && !m.contains_key(&last) {
                return Err(bad(format!("replace of missing {path:?}")));
            }
            m.insert(last, value.ok_or_else(|| bad("missing value".into()))?);
        }
        ("remove", Value::Object(m)) => {
            m.remove(&last)
                .ok_or_else(|| bad(format!("remove of missing {path:?}")))?;
        }
        ("add", Value::Array(a)) => {
            let v = value.ok_or_else(|| bad("missing value".into()))?;
            if last == "-" {
                a.push(v);
            } else {
                let i: usize = last
                    .parse()
                    .map_err(|_| bad(format!("bad index {last:?}")))?;
                if i > a.len() {
                    return Err(bad(format!("index {i} out of range")));
                }
                a.insert(i, v);
            }
        }
        ("replace" | "remove", Value::Array(a)) => {
            let i: usize = last
                .parse()
                .map_err(|_| bad(format!("bad index {last:?}")))?;
            if i >= a.len() {
                return Err(bad(format!("index {i} out of range")));
            }
            if kind == "remove" {
                a.remove(i);
            } else {
                a[i] = value.ok_or_else(|| bad("missing value".into()))?;
            }
        }
        (other, _) => return Err(bad(format!("unsupported op {other:?} at {path:?}"))),
    }
    Ok(())
}
