//! Admission for the kinds trust bundles are read from: ConfigMaps and Secrets (core/v1) and
//! ClusterTrustBundles (certificates.k8s.io). These are built-in kinds, so the rules are the
//! apiserver's own validation (pkg/apis/core/validation, pkg/apis/certificates/validation) rather
//! than a CRD schema: key names, sizes, `immutable`, Secret `stringData` folding and `type`, and
//! ClusterTrustBundle's PEM and signer-name rules.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Map, Value, json};

use super::{ApiError, FieldCause, Kind, meta};

/// Total size limit of a ConfigMap's or Secret's data (`core.MaxSecretSize`).
pub const MAX_DATA_BYTES: usize = 1024 * 1024;
/// Size limit of `spec.trustBundle` (`certificates.MaxTrustBundleSize`).
pub const MAX_TRUST_BUNDLE_BYTES: usize = 1024 * 1024;

/// Field selector paths the apiserver supports for these kinds.
pub const CONFIGMAP_SELECTABLE: &[&str] = &["metadata.name", "metadata.namespace"];
pub const SECRET_SELECTABLE: &[&str] = &["metadata.name", "metadata.namespace", "type"];
pub const CTB_SELECTABLE: &[&str] = &["metadata.name", "spec.signerName"];

/// Whether `kind` is one of this module's.
pub fn handles(kind: Kind) -> bool {
    matches!(
        kind,
        Kind::ConfigMap | Kind::Secret | Kind::ClusterTrustBundle
    )
}

/// `IsConfigMapKey`: the rule for ConfigMap and Secret data keys.
fn check_data_key(k: &str) -> Result<(), String> {
    if k.is_empty() || k.len() > 253 {
        return Err("must be no more than 253 characters and not empty".into());
    }
    if !k
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err("a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')".into());
    }
    if k == "." {
        return Err("must not be '.'".into());
    }
    if k == ".." {
        return Err("must not be '..'".into());
    }
    if k.starts_with("..") {
        return Err("must not start with '..'".into());
    }
    Ok(())
}

/// A map of strings at `obj[field]`, or the violations that make it not one.
fn string_map<'a>(
    obj: &'a Value,
    field: &str,
    causes: &mut Vec<FieldCause>,
) -> BTreeMap<&'a str, &'a str> {
    let mut out = BTreeMap::new();
    match obj.get(field) {
        None | Some(Value::Null) => {}
        Some(Value::Object(m)) => {
            for (k, v) in m {
                match v.as_str() {
                    Some(s) => {
                        out.insert(k.as_str(), s);
                    }
                    None => causes.push(FieldCause::invalid(
                        &format!("{field}[{k}]"),
                        &v.to_string(),
                        "must be a string",
                    )),
                }
            }
        }
        Some(other) => causes.push(FieldCause::invalid(
            field,
            &other.to_string(),
            "must be a map of strings",
        )),
    }
    out
}

/// Decodes the base64 values of a `[]byte` map; JSON decoding fails before validation on a real
/// apiserver, hence 400 rather than 422.
fn decode_bytes(map: &BTreeMap<&str, &str>, field: &str) -> Result<usize, ApiError> {
    let mut total = 0;
    for (k, v) in map {
        let bytes = B64.decode(v).map_err(|e| {
            ApiError::BadRequest(format!(
                "{field}[{k}]: illegal base64 data in the request body: {e}"
            ))
        })?;
        total += bytes.len();
    }
    Ok(total)
}

/// Mutates and validates an object on create (`old` is `None`) or update. Runs after the
/// generic ObjectMeta checks; returns the field violations (422) or a decode error (400).
pub fn admit(
    kind: Kind,
    old: Option<&Value>,
    obj: &mut Value,
) -> Result<Vec<FieldCause>, ApiError> {
    match kind {
        Kind::ConfigMap => Ok(admit_configmap(old, obj)),
        Kind::Secret => admit_secret(old, obj),
        Kind::ClusterTrustBundle => Ok(admit_ctb(old, obj)),
        _ => Ok(Vec::new()),
    }
}

/// `immutable: true` freezes the data and itself, as `ValidateConfigMapUpdate` does.
fn check_immutable(
    old: Option<&Value>,
    new: &Value,
    fields: &[&str],
    causes: &mut Vec<FieldCause>,
) {
    let Some(old) = old else { return };
    if old.get("immutable").and_then(Value::as_bool) != Some(true) {
        return;
    }
    if new.get("immutable").and_then(Value::as_bool) != Some(true) {
        causes.push(FieldCause::forbidden(
            "immutable",
            "field is immutable when `immutable` is set",
        ));
    }
    for f in fields {
        let empty = json!({});
        let norm = |v: Option<&Value>| match v {
            None | Some(Value::Null) => empty.clone(),
            Some(v) => v.clone(),
        };
        if norm(old.get(*f)) != norm(new.get(*f)) {
            causes.push(FieldCause::forbidden(
                f,
                "field is immutable when `immutable` is set",
            ));
        }
    }
}

fn check_keys(map: &BTreeMap<&str, &str>, field: &str, causes: &mut Vec<FieldCause>) {
    for k in map.keys() {
        if let Err(e) = check_data_key(k) {
            causes.push(FieldCause::invalid(&format!("{field}[{k}]"), k, &e));
        }
    }
}

fn admit_configmap(old: Option<&Value>, obj: &mut Value) -> Vec<FieldCause> {
    let mut causes = Vec::new();
    let data = string_map(obj, "data", &mut causes);
    let binary = string_map(obj, "binaryData", &mut causes);
    check_keys(&data, "data", &mut causes);
    check_keys(&binary, "binaryData", &mut causes);
    let mut total = 0;
    for (k, v) in &data {
        total += k.len() + v.len();
        if binary.contains_key(k) {
            causes.push(FieldCause::invalid(
                &format!("data[{k}]"),
                k,
                "duplicate of key present in binaryData",
            ));
        }
    }
    for (k, v) in &binary {
        match B64.decode(v) {
            Ok(b) => total += k.len() + b.len(),
            Err(_) => causes.push(FieldCause::invalid(
                &format!("binaryData[{k}]"),
                "<value omitted>",
                "must be base64-encoded bytes",
            )),
        }
    }
    if total > MAX_DATA_BYTES {
        causes.push(FieldCause::too_long(
            "data",
            &format!("may not be more than {MAX_DATA_BYTES} bytes"),
        ));
    }
    check_immutable(old, obj, &["data", "binaryData"], &mut causes);
    causes
}

fn admit_secret(old: Option<&Value>, obj: &mut Value) -> Result<Vec<FieldCause>, ApiError> {
    let mut causes = Vec::new();
    // stringData is write-only: folded into data (winning over it) and never stored, as the
    // apiserver's conversion does.
    let string_data: Vec<(String, String)> = {
        let sd = string_map(obj, "stringData", &mut causes);
        check_keys(&sd, "stringData", &mut causes);
        sd.iter()
            .map(|(k, v)| ((*k).to_string(), B64.encode(v)))
            .collect()
    };
    if let Some(map) = obj.as_object_mut() {
        map.remove("stringData");
        if !string_data.is_empty() {
            let data = map.entry("data").or_insert_with(|| json!({}));
            if !data.is_object() {
                *data = json!({});
            }
            if let Some(d) = data.as_object_mut() {
                for (k, v) in string_data {
                    d.insert(k, json!(v));
                }
            }
        }
        match map.get("type").and_then(Value::as_str) {
            None | Some("") => {
                map.insert("type".into(), json!("Opaque"));
            }
            Some(_) => {}
        }
    }
    let data = string_map(obj, "data", &mut causes);
    check_keys(&data, "data", &mut causes);
    let size = decode_bytes(&data, "data")? + data.keys().map(|k| k.len()).sum::<usize>();
    if size > MAX_DATA_BYTES {
        causes.push(FieldCause::too_long(
            "data",
            &format!("may not be more than {MAX_DATA_BYTES} bytes"),
        ));
    }
    let ty = obj.get("type").and_then(Value::as_str).unwrap_or("Opaque");
    let required: &[&str] = if ty == "kubernetes.io/tls" {
        &["tls.crt", "tls.key"]
    } else {
        &[]
    };
    for k in required {
        if !data.contains_key(k) {
            causes.push(FieldCause::required(&format!("data[{k}]")));
        }
    }
    if let Some(old) = old {
        let old_ty = old.get("type").and_then(Value::as_str).unwrap_or("Opaque");
        if old_ty != ty {
            causes.push(FieldCause::invalid("type", ty, "field is immutable"));
        }
    }
    check_immutable(old, obj, &["data"], &mut causes);
    Ok(causes)
}

/// `ValidateSignerName`: `<fully qualified domain>/<path>`.
fn check_signer_name(s: &str) -> Result<(), String> {
    let shape = "must be a fully qualified domain and path of the form 'example.com/signer-name'";
    let Some((domain, path)) = s.split_once('/') else {
        return Err(shape.into());
    };
    if path.contains('/') || domain.is_empty() || path.is_empty() {
        return Err(shape.into());
    }
    meta::validate_subdomain(domain).map_err(|e| format!("the domain part {e}"))?;
    if domain.split('.').count() < 2 {
        return Err(
            "the domain part should be a domain with at least two segments separated by dots"
                .into(),
        );
    }
    if path.len() > 253 {
        return Err("the path part must be no more than 253 characters".into());
    }
    let edge = |c: char| c.is_ascii_alphanumeric();
    if !(path.starts_with(edge)
        && path.ends_with(edge)
        && path
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err("the path part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character".into());
    }
    Ok(())
}

/// `ValidateClusterTrustBundleName`: bundles of a signer carry its name (slashes as colons) as a
/// prefix; other bundles must not contain ':' at all.
pub fn check_ctb_name(name: &str, signer: &str) -> Result<(), String> {
    if signer.is_empty() {
        if name.contains(':') {
            return Err(
                "ClusterTrustBundle without signer name must not have \":\" in its name".into(),
            );
        }
        return meta::validate_subdomain(name);
    }
    let prefix = format!("{}:", signer.replace('/', ":"));
    match name.strip_prefix(&prefix) {
        Some(rest) => meta::validate_subdomain(rest),
        None => Err(format!(
            "ClusterTrustBundle for signerName {signer} must be named with prefix {prefix}"
        )),
    }
}

/// One PEM block: its label, headers present, the base64 body.
struct PemBlock<'a> {
    label: &'a str,
    has_headers: bool,
    body: String,
}

/// Splits PEM text into blocks as Go's `pem.Decode` loop sees them (text between blocks skipped).
fn pem_blocks(text: &str) -> Vec<PemBlock<'_>> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("-----BEGIN ") {
        let after = &rest[start + 11..];
        let Some(label_end) = after.find("-----") else {
            break;
        };
        let label = &after[..label_end];
        let body_start = &after[label_end + 5..];
        let end_marker = format!("-----END {label}-----");
        let Some(end) = body_start.find(&end_marker) else {
            break;
        };
        let inner = &body_start[..end];
        let has_headers = inner.lines().any(|l| l.contains(':'));
        let body = inner
            .lines()
            .filter(|l| !l.contains(':'))
            .flat_map(|l| l.chars())
            .filter(|c| !c.is_whitespace())
            .collect();
        out.push(PemBlock {
            label,
            has_headers,
            body,
        });
        rest = &body_start[end + end_marker.len()..];
    }
    out
}

/// `validateTrustBundle`: CA certificates in PEM, nothing else, no duplicates, at least one.
fn check_trust_bundle(text: &str) -> Vec<String> {
    if text.len() > MAX_TRUST_BUNDLE_BYTES {
        return vec![format!("must have at most {MAX_TRUST_BUNDLE_BYTES} bytes")];
    }
    let mut problems = Vec::new();
    let mut seen: BTreeMap<Vec<u8>, Vec<usize>> = BTreeMap::new();
    for (i, block) in pem_blocks(text).into_iter().enumerate() {
        if block.label != "CERTIFICATE" {
            problems.push(format!("entry {i} has bad block type: {}", block.label));
            continue;
        }
        if block.has_headers {
            problems.push(format!("entry {i} has PEM block headers"));
            continue;
        }
        let Ok(der) = B64.decode(&block.body) else {
            problems.push(format!("entry {i} does not parse as X.509"));
            continue;
        };
        let ca = match x509_parser::parse_x509_certificate(&der) {
            Ok(([], cert)) => cert
                .basic_constraints()
                .ok()
                .flatten()
                .map(|bc| bc.value.ca),
            _ => {
                problems.push(format!("entry {i} does not parse as X.509"));
                continue;
            }
        };
        match ca {
            Some(true) => seen.entry(der).or_default().push(i),
            Some(false) => problems.push(format!("entry {i} does not have the CA bit set")),
            None => problems.push(format!("entry {i} has invalid basic constraints")),
        }
    }
    if problems.is_empty() && seen.is_empty() {
        problems.push("at least one trust anchor must be provided".into());
    }
    for indices in seen.values().filter(|v| v.len() > 1) {
        problems.push(format!("duplicate trust anchor (indices {indices:?})"));
    }
    problems
}

fn admit_ctb(old: Option<&Value>, obj: &mut Value) -> Vec<FieldCause> {
    let mut causes = Vec::new();
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let spec = match obj.get("spec") {
        Some(Value::Object(m)) => m.clone(),
        None | Some(Value::Null) => Map::new(),
        Some(other) => {
            causes.push(FieldCause::invalid(
                "spec",
                &other.to_string(),
                "must be an object",
            ));
            return causes;
        }
    };
    let signer = match spec.get("signerName") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => {
            causes.push(FieldCause::invalid(
                "spec.signerName",
                &other.to_string(),
                "must be a string",
            ));
            String::new()
        }
    };
    if let Err(e) = check_ctb_name(&name, &signer) {
        causes.push(FieldCause::invalid("metadata.name", &name, &e));
    }
    if !signer.is_empty()
        && let Err(e) = check_signer_name(&signer)
    {
        causes.push(FieldCause::invalid("spec.signerName", &signer, &e));
    }
    match spec.get("trustBundle") {
        Some(Value::String(text)) => {
            for p in check_trust_bundle(text) {
                causes.push(FieldCause::invalid(
                    "spec.trustBundle",
                    "<value omitted>",
                    &p,
                ));
            }
        }
        None | Some(Value::Null) => causes.push(FieldCause::required("spec.trustBundle")),
        Some(other) => causes.push(FieldCause::invalid(
            "spec.trustBundle",
            &other.to_string(),
            "must be a string",
        )),
    }
    if let Some(old) = old {
        let old_signer = old
            .pointer("/spec/signerName")
            .and_then(Value::as_str)
            .unwrap_or("");
        if old_signer != signer {
            causes.push(FieldCause::invalid(
                "spec.signerName",
                &signer,
                "field is immutable",
            ));
        }
    }
    causes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_of_signer_bundles() {
        assert!(check_ctb_name("example.com:foo:v1", "example.com/foo").is_ok());
        let e = check_ctb_name("foo-v1", "example.com/foo").unwrap_err();
        assert!(
            e.contains("must be named with prefix example.com:foo:"),
            "{e}"
        );
        assert!(check_ctb_name("a:b", "").is_err());
        assert!(check_ctb_name("plain", "").is_ok());
        assert!(check_signer_name("example.com/foo").is_ok());
        assert!(check_signer_name("example/foo").is_err());
        assert!(check_signer_name("example.com").is_err());
        assert!(check_signer_name("example.com/a/b").is_err());
    }

    #[test]
    fn data_keys() {
        assert!(check_data_key("ca.crt").is_ok());
        assert!(check_data_key("..x").is_err());
        assert!(check_data_key("a/b").is_err());
        assert!(check_data_key("").is_err());
    }
}
