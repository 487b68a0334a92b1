//! Lists, and what lists and watches share: selectors and the conversion to the requested
//! version.

use std::collections::HashMap;
use std::sync::Arc;

use axum::response::Response;
use base64::Engine as _;
use serde_json::{Value, json};

use super::{Route, json_response};
use crate::apiserver::{ApiError, FieldSelector, Kind, LabelSelector, Shared, trust};

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
pub(super) fn as_version(group_version: &str, mut obj: Value) -> Value {
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

pub(super) fn selectors(
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
        Kind::CsiDriver => Some(crate::apiserver::storage::CSIDRIVER_SELECTABLE),
        Kind::Pod | Kind::Event => None,
    };
    let fields = FieldSelector::parse(q.get("fieldSelector").map_or("", String::as_str), allowed)
        .map_err(ApiError::BadRequest)?;
    Ok((labels, fields))
}

pub(super) fn list(
    s: &Arc<Shared>,
    r: &Route,
    q: &HashMap<String, String>,
) -> Result<Response, ApiError> {
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
    // As the API server does, every page of one list reports the resourceVersion of its first
    // page (the token carries it): a watch started from the list's version then delivers what
    // changed while the pages were read, including objects that sort before the token's key.
    let mut list_rv = rv.to_string();
    if let Some(token) = q.get("continue").filter(|t| !t.is_empty()) {
        let (token_rv, after) = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|t| t.split_once(':').map(|(v, k)| (v.to_owned(), k.to_owned())))
            .filter(|(v, _)| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
            .ok_or_else(|| ApiError::BadRequest("continue key is not valid".into()))?;
        items.retain(|o| key(o) > after);
        list_rv = token_rv;
    }
    let mut meta = json!({"resourceVersion": list_rv});
    if let Some(limit) = q
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|l| *l > 0)
        && items.len() > limit
    {
        let remaining = items.len() - limit;
        items.truncate(limit);
        if let Some(last) = items.last() {
            let token = format!("{list_rv}:{}", key(last));
            meta["continue"] =
                json!(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token));
            meta["remainingItemCount"] = json!(remaining);
        }
    }
    let list_kind = format!("{}List", r.kind.kind_name());
    Ok(json_response(
        200,
        &json!({"apiVersion": r.group_version, "kind": list_kind, "metadata": meta, "items": items}),
    ))
}
