//! PATCH flavours: merge patch, JSON patch and server-side apply bodies.

use std::collections::HashMap;

use axum::body::Bytes;
use serde_json::{Value, json};

use super::{Route, parse_body};
use crate::apiserver::{ApiError, Kind, resource_version_of};

/// A PATCH body in one of the flavours the apiserver accepts.
pub(super) enum PatchBody {
    Merge(Value),
    Json(Vec<Value>),
}

pub(super) fn parse_patch(
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

pub(super) fn apply_patch(current: &Value, patch: &PatchBody) -> Result<Value, ApiError> {
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
                causes: vec![crate::apiserver::FieldCause::invalid(
                    path,
                    "",
                    "testing value failed",
                )],
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
