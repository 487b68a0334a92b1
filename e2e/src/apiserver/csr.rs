//! certificates.k8s.io/v1 CertificateSigningRequests (cluster-scoped), with
//! kube-apiserver's registry strategy and validation:
//!
//! * create: the requester's identity (`spec.username`, `uid`, `groups`, `extra`) is set from the
//!   authenticated user, whatever the client sent; `status` is dropped;
//! * update of the main resource: `spec` and `status` are kept from the stored object (the spec is
//!   immutable, status has its own endpoints);
//! * `/status`: only `status` changes, and Approved/Denied conditions are kept as stored (they are
//!   written through `/approval` only);
//! * `/approval`: only `status.conditions` changes;
//! * validation: `signerName` required and of the form `example.com/path`, `request` a PEM
//!   `CERTIFICATE REQUEST` with a valid signature, `usages` from the known set without
//!   duplicates, `expirationSeconds` >= 600, at most one Approved/Denied/Failed condition each,
//!   Approved and Denied mutually exclusive, such conditions never removed,
//!   `status.certificate` PEM CERTIFICATE blocks only and never changed once set.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::prelude::FromDer;

use super::{FieldCause, Identity, meta};

/// `spec.usages` values kube-apiserver accepts.
pub const KNOWN_USAGES: &[&str] = &[
    "signing",
    "digital signature",
    "content commitment",
    "key encipherment",
    "key agreement",
    "data encipherment",
    "cert sign",
    "crl sign",
    "encipher only",
    "decipher only",
    "any",
    "server auth",
    "client auth",
    "code signing",
    "email protection",
    "s/mime",
    "ipsec end system",
    "ipsec tunnel",
    "ipsec user",
    "timestamping",
    "ocsp signing",
    "microsoft sgc",
    "netscape sgc",
];

/// The shortest `expirationSeconds` the API accepts (10 minutes).
pub const MIN_EXPIRATION_SECONDS: i64 = 600;

const SIGNER_NAME_MAX: usize = 571;
const SIGNER_PATH_MAX: usize = 317;

/// Which endpoint an update came through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Subresource {
    Main,
    Status,
    Approval,
}

impl Subresource {
    pub fn from_path(s: Option<&str>) -> Subresource {
        match s {
            Some("status") => Subresource::Status,
            Some("approval") => Subresource::Approval,
            _ => Subresource::Main,
        }
    }
}

fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap_or_else(|_| time::OffsetDateTime::now_utc());
    now.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// The CSR create strategy: identity from the authenticated user, no status.
pub fn prepare_create(obj: &mut Value, who: &Identity) {
    if let Some(map) = obj.as_object_mut() {
        map.remove("status");
    }
    if !obj.get("spec").is_some_and(Value::is_object) {
        obj["spec"] = json!({});
    }
    let spec = &mut obj["spec"];
    spec["username"] = json!(who.username);
    spec["groups"] = json!(who.groups);
    if who.uid.is_empty() {
        if let Some(m) = spec.as_object_mut() {
            m.remove("uid");
        }
    } else {
        spec["uid"] = json!(who.uid);
    }
    if let Some(m) = spec.as_object_mut() {
        m.remove("extra");
    }
}

fn conditions(obj: &Value) -> &[Value] {
    obj.pointer("/status/conditions")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

fn cond_type(c: &Value) -> &str {
    c.get("type").and_then(Value::as_str).unwrap_or("")
}

fn is_approval(c: &Value) -> bool {
    matches!(cond_type(c), "Approved" | "Denied")
}

/// The update strategies: what of `sent` reaches the stored object through `sub`.
pub fn prepare_update(old: &Value, sent: &Value, sub: Subresource) -> Value {
    let mut new = old.clone();
    match sub {
        Subresource::Main => {
            // Metadata only: spec and status stay as stored.
            new["metadata"] = sent.get("metadata").cloned().unwrap_or_else(|| json!({}));
        }
        Subresource::Status => {
            let mut status = sent.get("status").cloned().unwrap_or_else(|| json!({}));
            if !status.is_object() {
                status = json!({});
            }
            let mut conds: Vec<Value> = conditions(old)
                .iter()
                .filter(|c| is_approval(c))
                .cloned()
                .collect();
            conds.extend(conditions(sent).iter().filter(|c| !is_approval(c)).cloned());
            status["conditions"] = json!(conds);
            new["status"] = status;
        }
        Subresource::Approval => {
            if !new.get("status").is_some_and(Value::is_object) {
                new["status"] = json!({});
            }
            new["status"]["conditions"] = json!(conditions(sent));
        }
    }
    if sub != Subresource::Main {
        stamp_conditions(old, &mut new);
    }
    if let Some(st) = new.get_mut("status").and_then(Value::as_object_mut) {
        if st
            .get("conditions")
            .and_then(Value::as_array)
            .is_some_and(Vec::is_empty)
        {
            st.remove("conditions");
        }
        if st.is_empty()
            && let Some(m) = new.as_object_mut()
        {
            m.remove("status");
        }
    }
    new
}

/// Fills `lastUpdateTime` and `lastTransitionTime` as the strategy does: a new condition or a
/// changed status gets the current time, an unchanged one keeps its old transition time.
fn stamp_conditions(old: &Value, new: &mut Value) {
    let now = now_rfc3339();
    let old_conds = conditions(old).to_vec();
    let Some(conds) = new
        .pointer_mut("/status/conditions")
        .and_then(Value::as_array_mut)
    else {
        return;
    };
    for c in conds.iter_mut() {
        if !c.is_object() {
            continue;
        }
        if c.get("lastUpdateTime").is_none_or(Value::is_null) {
            c["lastUpdateTime"] = json!(now);
        }
        if c.get("lastTransitionTime").is_none_or(Value::is_null) {
            let before = old_conds
                .iter()
                .find(|o| cond_type(o) == cond_type(c) && o.get("status") == c.get("status"))
                .and_then(|o| o.get("lastTransitionTime"))
                .filter(|t| !t.is_null())
                .cloned();
            c["lastTransitionTime"] = before.unwrap_or_else(|| json!(now));
        }
    }
}

/// `example.com/signer-name`: a DNS subdomain with at least one dot, then a path.
pub fn validate_signer_name(name: &str) -> Result<(), String> {
    const FORM: &str =
        "must be a fully qualified domain and path of the form 'example.com/signer-name'";
    let Some((domain, path)) = name.split_once('/') else {
        return Err(FORM.into());
    };
    if name.len() > SIGNER_NAME_MAX {
        return Err(format!("must be no more than {SIGNER_NAME_MAX} characters"));
    }
    if !domain.contains('.') {
        return Err(format!("{FORM}: the domain must be fully qualified"));
    }
    meta::validate_subdomain(domain).map_err(|e| format!("{FORM}: domain {e}"))?;
    if path.is_empty() {
        return Err(format!("{FORM}: the path must not be empty"));
    }
    if path.len() > SIGNER_PATH_MAX {
        return Err(format!(
            "{FORM}: the path must be no more than {SIGNER_PATH_MAX} characters"
        ));
    }
    let path_ok = path.split('/').all(|seg| {
        !seg.is_empty()
            && seg
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    });
    if !path_ok {
        return Err(format!(
            "{FORM}: path segments must be non-empty and consist of alphanumeric characters, '-', '_' or '.'"
        ));
    }
    Ok(())
}

fn decode_bytes(v: &Value) -> Option<Vec<u8>> {
    B64.decode(v.as_str()?).ok()
}

/// `spec.request`: exactly one PEM `CERTIFICATE REQUEST` whose signature verifies.
fn check_request(der_b64: &Value) -> Result<(), String> {
    let bytes = decode_bytes(der_b64).ok_or("must be base64-encoded bytes")?;
    let (rest, pem) = x509_parser::pem::parse_x509_pem(&bytes)
        .map_err(|_| "PEM block type must be CERTIFICATE REQUEST")?;
    if pem.label != "CERTIFICATE REQUEST" && pem.label != "NEW CERTIFICATE REQUEST" {
        return Err("PEM block type must be CERTIFICATE REQUEST".into());
    }
    if !rest.iter().all(u8::is_ascii_whitespace) {
        return Err("must contain exactly one PEM block".into());
    }
    let (_, csr) = X509CertificationRequest::from_der(&pem.contents)
        .map_err(|e| format!("cannot parse the certificate request: {e}"))?;
    csr.verify_signature()
        .map_err(|_| "the certificate request's signature is invalid".to_string())?;
    Ok(())
}

/// PEM text holding one or more `CERTIFICATE` blocks and nothing else.
pub fn check_certificates(bytes: &[u8]) -> Result<usize, String> {
    let mut rest = bytes;
    let mut n = 0;
    loop {
        if rest.iter().all(u8::is_ascii_whitespace) {
            break;
        }
        let (after, pem) = x509_parser::pem::parse_x509_pem(rest)
            .map_err(|_| "must contain only PEM CERTIFICATE blocks".to_string())?;
        if pem.label != "CERTIFICATE" {
            return Err(format!(
                "only CERTIFICATE PEM blocks are allowed, found {:?}",
                pem.label
            ));
        }
        pem.parse_x509()
            .map_err(|e| format!("cannot parse a certificate: {e}"))?;
        n += 1;
        rest = after;
    }
    if n == 0 {
        return Err("must contain at least one CERTIFICATE PEM block".into());
    }
    Ok(n)
}

/// Validation of a whole CertificateSigningRequest (create and every update).
pub fn validate(obj: &Value) -> Vec<FieldCause> {
    let mut causes = Vec::new();
    let spec = obj.get("spec").cloned().unwrap_or(Value::Null);
    match spec.get("request") {
        None | Some(Value::Null) => causes.push(FieldCause::required("spec.request")),
        Some(v) => {
            if let Err(e) = check_request(v) {
                causes.push(FieldCause::invalid("spec.request", "<request data>", &e));
            }
        }
    }
    match spec.get("signerName").and_then(Value::as_str) {
        None | Some("") => causes.push(FieldCause::required("spec.signerName")),
        Some(s) => {
            if let Err(e) = validate_signer_name(s) {
                causes.push(FieldCause::invalid("spec.signerName", s, &e));
            }
        }
    }
    match spec.get("usages") {
        None | Some(Value::Null) => causes.push(FieldCause::required("spec.usages")),
        Some(Value::Array(us)) if us.is_empty() => causes.push(FieldCause::required("spec.usages")),
        Some(Value::Array(us)) => {
            let mut seen = std::collections::BTreeSet::new();
            for (i, u) in us.iter().enumerate() {
                let field = format!("spec.usages[{i}]");
                let s = u.as_str().unwrap_or("");
                if !KNOWN_USAGES.contains(&s) {
                    causes.push(FieldCause::not_supported(
                        &field,
                        s,
                        &format!("supported values: \"{}\"", KNOWN_USAGES.join("\", \"")),
                    ));
                } else if !seen.insert(s) {
                    causes.push(FieldCause::duplicate(&field, &format!("\"{s}\"")));
                }
            }
        }
        Some(other) => causes.push(FieldCause::invalid(
            "spec.usages",
            &other.to_string(),
            "must be a list of strings",
        )),
    }
    if let Some(exp) = spec.get("expirationSeconds").filter(|v| !v.is_null()) {
        match exp.as_i64() {
            Some(n) if n >= MIN_EXPIRATION_SECONDS && n <= i64::from(i32::MAX) => {}
            Some(n) if n < MIN_EXPIRATION_SECONDS => causes.push(FieldCause::invalid(
                "spec.expirationSeconds",
                &n.to_string(),
                "may not specify a duration less than 600 seconds (10 minutes)",
            )),
            _ => causes.push(FieldCause::invalid(
                "spec.expirationSeconds",
                &exp.to_string(),
                "must be a 32-bit integer",
            )),
        }
    }
    causes.extend(validate_conditions(obj));
    if let Some(cert) = obj.pointer("/status/certificate").filter(|v| !v.is_null()) {
        match decode_bytes(cert) {
            None => causes.push(FieldCause::invalid(
                "status.certificate",
                "<certificate data>",
                "must be base64-encoded bytes",
            )),
            Some(b) if b.is_empty() => {}
            Some(b) => {
                if let Err(e) = check_certificates(&b) {
                    causes.push(FieldCause::invalid(
                        "status.certificate",
                        "<certificate data>",
                        &e,
                    ));
                }
            }
        }
    }
    causes
}

fn validate_conditions(obj: &Value) -> Vec<FieldCause> {
    let mut causes = Vec::new();
    let conds = conditions(obj);
    let mut counts = std::collections::BTreeMap::<&str, usize>::new();
    for (i, c) in conds.iter().enumerate() {
        let field = format!("status.conditions[{i}]");
        let t = cond_type(c);
        if t.is_empty() {
            causes.push(FieldCause::required(&format!("{field}.type")));
            continue;
        }
        let status = c.get("status").and_then(Value::as_str).unwrap_or("");
        match t {
            "Approved" | "Denied" | "Failed" => {
                let n = counts.entry(t).or_default();
                *n += 1;
                if *n > 1 {
                    causes.push(FieldCause::duplicate(&format!("{field}.type"), t));
                }
            }
            _ => {}
        }
        if status.is_empty() {
            causes.push(FieldCause::required(&format!("{field}.status")));
        } else if matches!(t, "Approved" | "Denied") && status != "True" {
            causes.push(FieldCause::not_supported(
                &format!("{field}.status"),
                status,
                "supported values: \"True\"",
            ));
        } else if !matches!(status, "True" | "False" | "Unknown") {
            causes.push(FieldCause::not_supported(
                &format!("{field}.status"),
                status,
                "supported values: \"False\", \"True\", \"Unknown\"",
            ));
        }
    }
    if counts.contains_key("Approved") && counts.contains_key("Denied") {
        causes.push(FieldCause::forbidden(
            "status.conditions",
            "Approved and Denied conditions are mutually exclusive",
        ));
    }
    causes
}

/// Rules between the stored and the new object: conditions of the final types are never
/// removed, and a certificate once issued never changes.
pub fn validate_update(old: &Value, new: &Value) -> Vec<FieldCause> {
    let mut causes = validate(new);
    for t in ["Approved", "Denied", "Failed"] {
        let count = |o: &Value| conditions(o).iter().filter(|c| cond_type(c) == t).count();
        if count(new) < count(old) {
            causes.push(FieldCause::forbidden(
                "status.conditions",
                &format!("updates may not remove a condition of type \"{t}\""),
            ));
        }
    }
    let cert = |o: &Value| {
        o.pointer("/status/certificate")
            .and_then(decode_bytes)
            .unwrap_or_default()
    };
    let (was, is) = (cert(old), cert(new));
    if !was.is_empty() && was != is {
        causes.push(FieldCause::forbidden(
            "status.certificate",
            "updates may not modify existing certificate content",
        ));
    }
    causes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signer_names() {
        assert!(validate_signer_name("example.com/my-signer").is_ok());
        assert!(validate_signer_name("kubernetes.io/kube-apiserver-client").is_ok());
        assert!(validate_signer_name("example.com/a/b").is_ok());
        for bad in [
            "example.com",
            "example/signer",
            "example.com/",
            "Example.com/x",
            "a.b/c d",
        ] {
            assert!(validate_signer_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn status_endpoint_keeps_approval_conditions() {
        let old = json!({"spec": {"signerName": "a.b/c"}, "status": {"conditions": [
            {"type": "Approved", "status": "True", "lastTransitionTime": "t0"}]}});
        let sent = json!({"spec": {"signerName": "x.y/z"}, "status": {"conditions": [
            {"type": "Denied", "status": "True"}, {"type": "Failed", "status": "True"}]}});
        let new = prepare_update(&old, &sent, Subresource::Status);
        assert_eq!(new["spec"]["signerName"], "a.b/c");
        let types: Vec<&str> = conditions(&new).iter().map(cond_type).collect();
        assert_eq!(types, ["Approved", "Failed"]);
        assert_eq!(new["status"]["conditions"][0]["lastTransitionTime"], "t0");
    }

    #[test]
    fn approval_endpoint_changes_conditions_only() {
        let old = json!({"spec": {"signerName": "a.b/c"}, "status": {"certificate": "Y2VydA=="}});
        let sent = json!({"spec": {}, "status": {"certificate": "", "conditions": [
            {"type": "Approved", "status": "True"}]}});
        let new = prepare_update(&old, &sent, Subresource::Approval);
        assert_eq!(new["status"]["certificate"], "Y2VydA==");
        assert_eq!(new["status"]["conditions"][0]["type"], "Approved");
        assert!(new["status"]["conditions"][0]["lastUpdateTime"].is_string());
    }

    #[test]
    fn approved_and_denied_are_exclusive() {
        let obj = json!({"status": {"conditions": [
            {"type": "Approved", "status": "True"}, {"type": "Denied", "status": "True"}]}});
        let causes = validate_conditions(&obj);
        assert!(
            causes
                .iter()
                .any(|c| c.message.contains("mutually exclusive")),
            "{causes:?}"
        );
    }
}
