//! cert-manager's admission webhook for CertificateRequests, as far as a CSI driver meets it:
//! the mutating part records the requester's identity in the spec, the validating part checks the
//! CSR and its agreement with `spec.usages` / `spec.isCA`, and on update keeps the spec, the
//! `cert-manager.io/` annotations and the Approved/Denied conditions immutable.

use std::collections::BTreeSet;

use base64::Engine as _;
use serde_json::{Value, json};
use x509_parser::extensions::ParsedExtension;
use x509_parser::prelude::{FromDer, X509CertificationRequest};

use super::{FieldCause, Identity};

/// Key usages by their cert-manager names; "signing" is cert-manager's alias of digital signature.
const KEY_USAGES: &[(&str, &str)] = &[
    ("signing", "digital signature"),
    ("digital signature", "digital signature"),
    ("content commitment", "content commitment"),
    ("key encipherment", "key encipherment"),
    ("key agreement", "key agreement"),
    ("data encipherment", "data encipherment"),
    ("cert sign", "cert sign"),
    ("crl sign", "crl sign"),
    ("encipher only", "encipher only"),
    ("decipher only", "decipher only"),
];

/// Extended key usages; "s/mime" is cert-manager's alias of email protection.
const EXT_USAGES: &[(&str, &str)] = &[
    ("any", "any"),
    ("server auth", "server auth"),
    ("client auth", "client auth"),
    ("code signing", "code signing"),
    ("email protection", "email protection"),
    ("s/mime", "email protection"),
    ("ipsec end system", "ipsec end system"),
    ("ipsec tunnel", "ipsec tunnel"),
    ("ipsec user", "ipsec user"),
    ("timestamping", "timestamping"),
    ("ocsp signing", "ocsp signing"),
    ("microsoft sgc", "microsoft sgc"),
    ("netscape sgc", "netscape sgc"),
];

/// The mutating webhook: the requester's identity, never what the client claimed.
pub fn mutate_create(obj: &mut Value, who: &Identity) {
    if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
        spec.insert("username".into(), json!(who.username));
        spec.insert("groups".into(), json!(who.groups));
        spec.insert("uid".into(), json!(who.uid));
        spec.remove("extra");
    }
}

/// The parts of a CSR that the usage rules compare.
struct CsrFacts {
    key_usages: Option<BTreeSet<&'static str>>,
    ext_usages: Option<BTreeSet<String>>,
    is_ca: Option<bool>,
}

fn decode_csr(request_b64: &str) -> Result<CsrFacts, String> {
    let pem_bytes = base64::engine::general_purpose::STANDARD
        .decode(request_b64)
        .map_err(|e| format!("spec.request is not base64: {e}"))?;
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem_bytes)
        .map_err(|e| format!("error decoding certificate request PEM block: {e}"))?;
    if pem.label != "CERTIFICATE REQUEST" && pem.label != "NEW CERTIFICATE REQUEST" {
        return Err(format!(
            "error decoding certificate request PEM block: unexpected PEM type {:?}",
            pem.label
        ));
    }
    let (_, csr) = X509CertificationRequest::from_der(&pem.contents)
        .map_err(|e| format!("failed to parse certificate request: {e}"))?;
    csr.verify_signature()
        .map_err(|e| format!("certificate request has an invalid signature: {e}"))?;
    let mut facts = CsrFacts {
        key_usages: None,
        ext_usages: None,
        is_ca: None,
    };
    for ext in csr.requested_extensions().into_iter().flatten() {
        match ext {
            ParsedExtension::KeyUsage(ku) => {
                let bits = [
                    (ku.digital_signature(), "digital signature"),
                    (ku.non_repudiation(), "content commitment"),
                    (ku.key_encipherment(), "key encipherment"),
                    (ku.data_encipherment(), "data encipherment"),
                    (ku.key_agreement(), "key agreement"),
                    (ku.key_cert_sign(), "cert sign"),
                    (ku.crl_sign(), "crl sign"),
                    (ku.encipher_only(), "encipher only"),
                    (ku.decipher_only(), "decipher only"),
                ];
                facts.key_usages =
                    Some(bits.iter().filter(|(on, _)| *on).map(|(_, n)| *n).collect());
            }
            ParsedExtension::ExtendedKeyUsage(eku) => {
                let mut set = BTreeSet::new();
                for (on, n) in [
                    (eku.any, "any"),
                    (eku.server_auth, "server auth"),
                    (eku.client_auth, "client auth"),
                    (eku.code_signing, "code signing"),
                    (eku.email_protection, "email protection"),
                    (eku.time_stamping, "timestamping"),
                    (eku.ocsp_signing, "ocsp signing"),
                ] {
                    if on {
                        set.insert(n.to_string());
                    }
                }
                for oid in &eku.other {
                    let name = match oid.to_id_string().as_str() {
                        "1.3.6.1.5.5.7.3.5" => "ipsec end system".to_string(),
                        "1.3.6.1.5.5.7.3.6" => "ipsec tunnel".to_string(),
                        "1.3.6.1.5.5.7.3.7" => "ipsec user".to_string(),
                        "1.3.6.1.4.1.311.10.3.3" => "microsoft sgc".to_string(),
                        "2.16.840.1.113730.4.1" => "netscape sgc".to_string(),
                        other => format!("unknown ({other})"),
                    };
                    set.insert(name);
                }
                facts.ext_usages = Some(set);
            }
            ParsedExtension::BasicConstraints(bc) => facts.is_ca = Some(bc.ca),
            _ => {}
        }
    }
    Ok(facts)
}

fn list(set: &BTreeSet<impl AsRef<str>>) -> String {
    let items: Vec<&str> = set.iter().map(AsRef::as_ref).collect();
    format!("[{}]", items.join(", "))
}

/// The validating webhook on create.
pub fn validate_create(obj: &Value) -> Vec<FieldCause> {
    let mut causes = Vec::new();
    let spec = obj.get("spec").cloned().unwrap_or(Value::Null);
    let issuer = spec
        .pointer("/issuerRef/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    if issuer.is_empty() {
        causes.push(FieldCause::required("spec.issuerRef.name"));
    }
    let usages: Vec<&str> = spec
        .get("usages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let mut spec_ku = BTreeSet::new();
    let mut spec_eku = BTreeSet::new();
    for (i, u) in usages.iter().enumerate() {
        if let Some((_, canon)) = KEY_USAGES.iter().find(|(n, _)| n == u) {
            spec_ku.insert(*canon);
        } else if let Some((_, canon)) = EXT_USAGES.iter().find(|(n, _)| n == u) {
            spec_eku.insert(canon.to_string());
        } else {
            causes.push(FieldCause::invalid(
                &format!("spec.usages[{i}]"),
                u,
                "unknown keyusage",
            ));
        }
    }
    if usages.is_empty() {
        spec_ku.extend(["digital signature", "key encipherment"]);
    }
    let is_ca = spec.get("isCA").and_then(Value::as_bool).unwrap_or(false);
    if is_ca {
        spec_ku.insert("cert sign");
    }
    let request = spec.get("request").and_then(Value::as_str).unwrap_or("");
    if request.is_empty() {
        causes.push(FieldCause::required("spec.request"));
        return causes;
    }
    match decode_csr(request) {
        Err(e) => causes.push(FieldCause::invalid("spec.request", "<csr>", &e)),
        Ok(csr) => {
            if let Some(ku) = &csr.key_usages
                && *ku != spec_ku
            {
                causes.push(FieldCause::invalid(
                    "spec.request",
                    "<csr>",
                    &format!(
                        "csr key usages do not match specified usages, these should match if both are set: csr {} vs spec {}",
                        list(ku),
                        list(&spec_ku)
                    ),
                ));
            }
            if let Some(eku) = &csr.ext_usages
                && *eku != spec_eku
            {
                causes.push(FieldCause::invalid(
                    "spec.request",
                    "<csr>",
                    &format!(
                        "csr extended key usages do not match specified usages, these should match if both are set: csr {} vs spec {}",
                        list(eku),
                        list(&spec_eku)
                    ),
                ));
            }
            if let Some(ca) = csr.is_ca
                && ca != is_ca
            {
                causes.push(FieldCause::invalid(
                    "spec.request",
                    "<csr>",
                    &format!("csr isCA ({ca}) does not match spec.isCA ({is_ca})"),
                ));
            }
        }
    }
    causes
}

fn cm_annotations(obj: &Value) -> Vec<(String, Value)> {
    obj.pointer("/metadata/annotations")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter(|(k, _)| k.starts_with("cert-manager.io/"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn condition<'a>(obj: &'a Value, ty: &str) -> Option<&'a Value> {
    obj.pointer("/status/conditions")
        .and_then(Value::as_array)?
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some(ty))
}

/// The validating webhook on update (main resource and status subresource alike).
pub fn validate_update(old: &Value, new: &Value) -> Vec<FieldCause> {
    let mut causes = Vec::new();
    if old.get("spec") != new.get("spec") {
        causes.push(FieldCause::forbidden("spec", "field is immutable"));
    }
    if cm_annotations(old) != cm_annotations(new) {
        causes.push(FieldCause::forbidden(
            "metadata.annotations",
            "cert-manager.io/ annotations are immutable once set",
        ));
    }
    for ty in ["Approved", "Denied"] {
        if let Some(was) = condition(old, ty) {
            let now = condition(new, ty);
            let same = now.is_some_and(|n| {
                ["status", "reason", "message"]
                    .iter()
                    .all(|f| n.get(*f) == was.get(*f))
            });
            if !same {
                causes.push(FieldCause::forbidden(
                    "status.conditions",
                    &format!("'{ty}' condition may not be modified once set"),
                ));
            }
        }
    }
    let true_cond = |ty| {
        condition(new, ty)
            .and_then(|c| c.get("status"))
            .and_then(Value::as_str)
            == Some("True")
    };
    if true_cond("Approved") && true_cond("Denied") {
        causes.push(FieldCause::forbidden(
            "status.conditions",
            "both 'Denied' and 'Approved' conditions cannot coexist",
        ));
    }
    causes
}
