//! Structural openAPIV3Schema handling as kube-apiserver applies it to custom resources: prune
//! unknown fields and non-nullable nulls silently, then validate what is left and report every
//! violation with its field path (the apiserver answers 422 with all of them at once).

use std::path::Path;

use base64::Engine as _;
use serde_json::{Map, Value};

use super::FieldCause;

#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error(
        "cannot read the CertificateRequest CRD at {path}: {source} (the e2e API server validates against the real CRD from ../shared/reference beside the repository)"
    )]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot parse the CRD at {path}: {source}")]
    Parse {
        path: String,
        #[source]
        source: serde_yaml::Error,
    },
    #[error("the CRD at {path} has no served version {version} with an openAPIV3Schema")]
    NoVersion { path: String, version: String },
}

/// The openAPIV3Schema of one CRD version.
#[derive(Clone, Debug)]
pub struct Schema {
    root: Value,
}

impl Schema {
    pub fn from_crd_file(path: &Path, version: &str) -> Result<Schema, SchemaError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| SchemaError::Read {
            path: shown.clone(),
            source,
        })?;
        let crd: Value = serde_yaml::from_str(&text).map_err(|source| SchemaError::Parse {
            path: shown.clone(),
            source,
        })?;
        let root = crd
            .pointer("/spec/versions")
            .and_then(Value::as_array)
            .and_then(|vs| {
                vs.iter()
                    .find(|v| v.get("name").and_then(Value::as_str) == Some(version))
            })
            .and_then(|v| v.pointer("/schema/openAPIV3Schema"))
            .cloned()
            .ok_or_else(|| SchemaError::NoVersion {
                path: shown,
                version: version.to_string(),
            })?;
        Ok(Schema { root })
    }

    /// Prunes `obj` in place and returns the violations of what remains. `apiVersion`, `kind` and
    /// `metadata` are left to the caller, as the apiserver validates them as ObjectMeta.
    pub fn prune_and_validate(&self, obj: &mut Value) -> Vec<FieldCause> {
        let mut causes = Vec::new();
        let Some(map) = obj.as_object_mut() else {
            causes.push(FieldCause::invalid(
                "<root>",
                "",
                "the object must be a JSON object",
            ));
            return causes;
        };
        let props = self.root.get("properties").and_then(Value::as_object);
        map.retain(|k, v| {
            matches!(k.as_str(), "apiVersion" | "kind" | "metadata")
                || (known(props, k) && (!v.is_null() || nullable_in(props, k)))
        });
        if let Some(props) = props {
            for (k, sub) in props {
                if matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
                    continue;
                }
                if let Some(v) = map.get_mut(k) {
                    walk(sub, v, k, &mut causes);
                }
            }
        }
        check_required(&self.root, map, "", &mut causes);
        causes
    }

    /// The schema at a dotted path (`spec.usages`), for callers that want an enum or such.
    pub fn at(&self, path: &str) -> Option<&Value> {
        let mut cur = &self.root;
        for seg in path.split('.') {
            cur = cur.get("properties")?.get(seg)?;
        }
        Some(cur)
    }
}

fn known(props: Option<&Map<String, Value>>, k: &str) -> bool {
    props.is_some_and(|p| p.contains_key(k))
}

fn nullable_in(props: Option<&Map<String, Value>>, k: &str) -> bool {
    props
        .and_then(|p| p.get(k))
        .and_then(|s| s.get("nullable"))
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

fn join(path: &str, k: &str) -> String {
    if path.is_empty() {
        k.to_string()
    } else {
        format!("{path}.{k}")
    }
}

fn shown(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn check_required(schema: &Value, map: &Map<String, Value>, path: &str, out: &mut Vec<FieldCause>) {
    for req in schema
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        if map.get(req).is_none_or(Value::is_null) {
            out.push(FieldCause::required(&join(path, req)));
        }
    }
}

/// Prunes then validates `v` against `schema` at `path`.
fn walk(schema: &Value, v: &mut Value, path: &str, out: &mut Vec<FieldCause>) {
    let nullable = schema
        .get("nullable")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    if v.is_null() {
        if !nullable {
            out.push(FieldCause::invalid(
                path,
                "null",
                &format!(
                    "{path} in body must be of type {}: \"null\"",
                    schema
                        .get("type")
                        .and_then(Value::as_str)
                        .unwrap_or("object")
                ),
            ));
        }
        return;
    }
    let int_or_string = schema
        .get("x-kubernetes-int-or-string")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let preserve = schema
        .get("x-kubernetes-preserve-unknown-fields")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let actual = type_name(v);
    if int_or_string {
        if !matches!(actual, "integer" | "string") {
            out.push(FieldCause::invalid(
                path,
                &shown(v),
                &format!("{path} in body must be of type integer or string: \"{actual}\""),
            ));
            return;
        }
    } else if let Some(want) = schema.get("type").and_then(Value::as_str) {
        let ok = want == actual || (want == "number" && actual == "integer");
        if !ok {
            out.push(FieldCause::invalid(
                path,
                actual,
                &format!("{path} in body must be of type {want}: \"{actual}\""),
            ));
            return;
        }
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(v)
    {
        let list = allowed
            .iter()
            .map(|a| format!("\"{}\"", shown(a)))
            .collect::<Vec<_>>()
            .join(", ");
        out.push(FieldCause::not_supported(
            path,
            &shown(v),
            &format!("supported values: {list}"),
        ));
    }
    match v {
        Value::String(s) => check_string(schema, s, path, out),
        Value::Number(n) => {
            let x = n.as_f64().unwrap_or(0.0);
            if let Some(min) = schema.get("minimum").and_then(Value::as_f64)
                && x < min
            {
                out.push(FieldCause::invalid(
                    path,
                    &n.to_string(),
                    &format!("{path} in body should be greater than or equal to {min}"),
                ));
            }
            if let Some(max) = schema.get("maximum").and_then(Value::as_f64)
                && x > max
            {
                out.push(FieldCause::invalid(
                    path,
                    &n.to_string(),
                    &format!("{path} in body should be less than or equal to {max}"),
                ));
            }
        }
        Value::Array(items) => {
            check_len(schema, items.len(), "Items", "items", path, out);
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter_mut().enumerate() {
                    walk(item_schema, item, &format!("{path}[{i}]"), out);
                }
            }
            check_list_type(schema, items, path, out);
        }
        Value::Object(map) => {
            let props = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties");
            if !preserve && additional.is_none() {
                // Pruning: fields the schema does not know are dropped silently, as are nulls in
                // fields that are not nullable.
                map.retain(|k, val| known(props, k) && (!val.is_null() || nullable_in(props, k)));
            } else if let Some(props) = props {
                map.retain(|k, val| {
                    !(val.is_null() && props.contains_key(k) && !nullable_in(Some(props), k))
                });
            }
            check_len(schema, map.len(), "Properties", "properties", path, out);
            for (k, val) in map.iter_mut() {
                let sub = props.and_then(|p| p.get(k));
                let child = join(path, k);
                match (sub, additional) {
                    (Some(sub), _) => walk(sub, val, &child, out),
                    (None, Some(Value::Object(add))) => {
                        walk(&Value::Object(add.clone()), val, &child, out)
                    }
                    (None, Some(Value::Bool(false))) => out.push(FieldCause::forbidden(
                        &child,
                        "additional properties are not allowed",
                    )),
                    _ => {}
                }
            }
            check_required(schema, map, path, out);
        }
        Value::Bool(_) | Value::Null => {}
    }
}

fn check_len(
    schema: &Value,
    n: usize,
    suffix: &str,
    noun: &str,
    path: &str,
    out: &mut Vec<FieldCause>,
) {
    let n = n as u64;
    if let Some(min) = schema.get(format!("min{suffix}")).and_then(Value::as_u64)
        && n < min
    {
        out.push(FieldCause::invalid(
            path,
            &n.to_string(),
            &format!("{path} in body should have at least {min} {noun}"),
        ));
    }
    if let Some(max) = schema.get(format!("max{suffix}")).and_then(Value::as_u64)
        && n > max
    {
        out.push(FieldCause::too_many(path, n, max));
    }
}

fn check_string(schema: &Value, s: &str, path: &str, out: &mut Vec<FieldCause>) {
    let chars = s.chars().count() as u64;
    if let Some(min) = schema.get("minLength").and_then(Value::as_u64)
        && chars < min
    {
        out.push(FieldCause::invalid(
            path,
            s,
            &format!("{path} in body should be at least {min} chars long"),
        ));
    }
    if let Some(max) = schema.get("maxLength").and_then(Value::as_u64)
        && chars > max
    {
        out.push(FieldCause::too_long(
            path,
            &format!("may not be more than {max} bytes"),
        ));
    }
    match schema.get("format").and_then(Value::as_str) {
        Some(format @ "date-time")
            if time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                .is_err() =>
        {
            out.push(bad_format(path, s, format))
        }
        Some(format @ "byte") if base64::engine::general_purpose::STANDARD.decode(s).is_err() => {
            out.push(bad_format(path, s, format))
        }
        _ => {}
    }
}

fn bad_format(path: &str, s: &str, format: &str) -> FieldCause {
    FieldCause::invalid(
        path,
        s,
        &format!("{path} in body must be of type {format}: \"{s}\""),
    )
}

/// `x-kubernetes-list-type`: `set` items are unique, `map` items are unique by their keys.
fn check_list_type(schema: &Value, items: &[Value], path: &str, out: &mut Vec<FieldCause>) {
    match schema.get("x-kubernetes-list-type").and_then(Value::as_str) {
        Some("set") => {
            for (i, item) in items.iter().enumerate() {
                if items[..i].contains(item) {
                    out.push(FieldCause::duplicate(&format!("{path}[{i}]"), &shown(item)));
                }
            }
        }
        Some("map") => {
            let keys: Vec<&str> = schema
                .get("x-kubernetes-list-map-keys")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            let key_of = |item: &Value| -> Vec<Value> {
                keys.iter()
                    .map(|k| item.get(*k).cloned().unwrap_or(Value::Null))
                    .collect()
            };
            for (i, item) in items.iter().enumerate() {
                let key = key_of(item);
                if items[..i].iter().any(|prev| key_of(prev) == key) {
                    let shown_key = keys
                        .iter()
                        .zip(&key)
                        .map(|(k, v)| format!("\"{k}\":{v}"))
                        .collect::<Vec<_>>()
                        .join(",");
                    out.push(FieldCause::duplicate(
                        &format!("{path}[{i}]"),
                        &format!("map[{shown_key}]"),
                    ));
                }
            }
        }
        _ => {}
    }
}
