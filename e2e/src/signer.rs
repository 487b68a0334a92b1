//! An in-process stand-in for cert-manager's approver and CA issuer controllers, running against
//! the API stand-in's [`Store`].
//!
//! It writes CertificateRequest status exactly as cert-manager v1.16+ does, so the driver under
//! test sees the same conditions, reasons, messages and byte fields as on a real cluster:
//!
//! * approver: `Approved` True reason `cert-manager.io` (or `Denied` True with the policy's
//!   reason and message), only for requests whose issuerRef is a cert-manager.io Issuer or
//!   ClusterIssuer, as cert-manager's own approver only holds approve rights for those signers;
//! * issuer: on a denial `Ready` False reason `Denied` plus `failureTime`; for an unknown issuer
//!   `Ready` False reason `Pending` (not final: cert-manager keeps waiting for the issuer); while a
//!   slow signer works `Ready` False reason `Pending`; then `status.certificate` (leaf PEM, base64
//!   on the wire), `status.ca` (unless configured to omit it, as ACME does) and `Ready` True reason
//!   `Issued`; or `Ready` False reason `Failed` plus `failureTime`.
//!
//! Requests in a final state (Ready True, Failed, Denied, InvalidRequest) are never touched again.
//!
//! Not modelled: Issuer objects (the issuers served are a list of names), intermediate CAs (the
//! CA is a root, so `status.certificate` holds the leaf only), Kubernetes Events.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType,
    SerialNumber,
};
use serde_json::{Map, Value};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};

use crate::apiserver::{ApiError, EventType, Kind, Store};

/// API group of cert-manager's own issuers.
pub const GROUP: &str = "cert-manager.io";
/// Reason cert-manager's internal approver puts on `Approved`.
pub const APPROVED_REASON: &str = "cert-manager.io";
pub const APPROVED_MESSAGE: &str = "Certificate request has been approved by cert-manager.io";
pub const REASON_PENDING: &str = "Pending";
pub const REASON_ISSUED: &str = "Issued";
pub const REASON_FAILED: &str = "Failed";
pub const REASON_DENIED: &str = "Denied";
pub const ISSUED_MESSAGE: &str = "Certificate fetched from issuer successfully";
pub const DENIED_MESSAGE: &str = "The CertificateRequest was denied by an approval controller";
/// Message while the (slow) signer has the request in hand.
pub const PENDING_MESSAGE: &str = "Certificate issuance pending";
/// What `fail_signing` reports, prefixed like cert-manager's CA issuer signing errors.
pub const SIMULATED_FAILURE: &str = "simulated signing failure (fail_signing is set)";
/// cert-manager's default certificate duration when `spec.duration` is unset: 90 days.
pub const DEFAULT_DURATION: Duration = Duration::from_secs(90 * 24 * 3600);

/// What the approver-policy stand-in decides for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Approval {
    Approve,
    Deny { reason: String, message: String },
}

impl Approval {
    pub fn deny(reason: impl Into<String>, message: impl Into<String>) -> Approval {
        Approval::Deny {
            reason: reason.into(),
            message: message.into(),
        }
    }
}

/// Policy deciding on a CertificateRequest (the whole object, as approver-policy sees it).
pub type Policy = Arc<dyn Fn(&Value) -> Approval + Send + Sync>;

/// The default policy: approve everything, as cert-manager's internal approver does.
pub fn approve_all() -> Policy {
    Arc::new(|_: &Value| Approval::Approve)
}

#[derive(Clone)]
pub struct SignerConfig {
    /// issuerRef names this CA issuer serves (kind Issuer or ClusterIssuer, group
    /// cert-manager.io). Requests naming another issuer stay Pending, as cert-manager leaves a
    /// request whose issuer does not exist.
    pub issuers: Vec<String>,
    /// Signing delay after approval (a slow signer); the request shows Ready False Pending.
    pub delay: Duration,
    /// approver-policy stand-in; default approves everything.
    pub policy: Policy,
    /// Sets Ready False reason Failed plus failureTime instead of signing.
    pub fail_signing: bool,
    /// Leaves `status.ca` unset, as ACME-like issuers do.
    pub omit_ca: bool,
}

impl SignerConfig {
    /// Serves `issuers` with no delay, approving everything.
    pub fn new<S: Into<String>>(issuers: impl IntoIterator<Item = S>) -> SignerConfig {
        SignerConfig {
            issuers: issuers.into_iter().map(Into::into).collect(),
            ..SignerConfig::default()
        }
    }
}

impl Default for SignerConfig {
    /// Serves the issuer named `ca-issuer`.
    fn default() -> Self {
        SignerConfig {
            issuers: vec!["ca-issuer".to_string()],
            delay: Duration::ZERO,
            policy: approve_all(),
            fail_signing: false,
            omit_ca: false,
        }
    }
}

impl std::fmt::Debug for SignerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignerConfig")
            .field("issuers", &self.issuers)
            .field("delay", &self.delay)
            .field("fail_signing", &self.fail_signing)
            .field("omit_ca", &self.omit_ca)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SignerError {
    #[error("invalid duration {input:?}: {reason}")]
    Duration { input: String, reason: &'static str },
    #[error("unknown usage {0:?}")]
    UnknownUsage(String),
    #[error("spec.request is missing")]
    MissingRequest,
    #[error("spec.request is not valid base64: {0}")]
    RequestBase64(#[from] base64::DecodeError),
    #[error("spec.request does not hold PEM text")]
    RequestNotText,
    #[error("failed to decode CSR: {0}")]
    Csr(rcgen::Error),
    #[error("failed to decode CSR: {0}")]
    CsrSyntax(String),
    #[error("duration {0:?} does not fit a certificate validity")]
    DurationOverflow(Duration),
    #[error("signing failed: {0}")]
    Sign(rcgen::Error),
    #[error("failed to generate the CA: {0}")]
    CaGeneration(rcgen::Error),
}

// ---------------------------------------------------------------------------------------------
// Pure helpers: durations, usages, conditions.

/// Parses a Go duration string (`time.ParseDuration`): `2160h0m0s`, `1h`, `90m`, `1.5h`, `0`.
/// Negative durations are refused: no certificate can have one.
pub fn parse_go_duration(input: &str) -> Result<Duration, SignerError> {
    let err = |reason| SignerError::Duration {
        input: input.to_string(),
        reason,
    };
    let mut s = input;
    if let Some(rest) = s.strip_prefix('+') {
        s = rest;
    } else if s.starts_with('-') {
        return Err(err("negative durations are not valid here"));
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() {
        return Err(err("empty"));
    }
    // Nanoseconds, as Go counts them; u128 so overflow is detected rather than wrapped.
    let mut total: u128 = 0;
    while !s.is_empty() {
        let int_len = s.bytes().take_while(u8::is_ascii_digit).count();
        let (int_part, rest) = s.split_at(int_len);
        s = rest;
        let mut frac_part = "";
        if let Some(rest) = s.strip_prefix('.') {
            let frac_len = rest.bytes().take_while(u8::is_ascii_digit).count();
            frac_part = &rest[..frac_len];
            s = &rest[frac_len..];
        }
        if int_part.is_empty() && frac_part.is_empty() {
            return Err(err("expected a number"));
        }
        let unit_len = s
            .char_indices()
            .find(|(_, c)| c.is_ascii_digit() || *c == '.')
            .map_or(s.len(), |(i, _)| i);
        let (unit, rest) = s.split_at(unit_len);
        s = rest;
        let scale: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "" => return Err(err("missing unit")),
            _ => return Err(err("unknown unit")),
        };
        let whole: u128 = if int_part.is_empty() {
            0
        } else {
            int_part.parse().map_err(|_| err("number too large"))?
        };
        let mut value = whole.checked_mul(scale).ok_or(err("overflow"))?;
        // Fractions are exact to the nanosecond, truncated as Go does.
        let mut frac_scale = scale;
        for digit in frac_part.bytes() {
            frac_scale /= 10;
            value += u128::from(digit - b'0') * frac_scale;
        }
        total = total.checked_add(value).ok_or(err("overflow"))?;
        if total > i64::MAX as u128 {
            return Err(err("overflow"));
        }
    }
    Ok(Duration::from_nanos(total as u64))
}

/// Maps `spec.usages` to key usages and extended key usages as cert-manager's
/// `KeyUsagesForCertificateOrCertificateRequest` does: no usages means digital signature + key
/// encipherment, and `isCA` adds cert sign.
pub fn map_usages(
    usages: &[String],
    is_ca: bool,
) -> Result<(Vec<KeyUsagePurpose>, Vec<ExtendedKeyUsagePurpose>), SignerError> {
    let mut ku: Vec<KeyUsagePurpose> = Vec::new();
    let mut eku: Vec<ExtendedKeyUsagePurpose> = Vec::new();
    let default = [
        "digital signature".to_string(),
        "key encipherment".to_string(),
    ];
    let usages = if usages.is_empty() {
        &default[..]
    } else {
        usages
    };
    for usage in usages {
        let k = match usage.as_str() {
            "signing" | "digital signature" => Some(KeyUsagePurpose::DigitalSignature),
            "content commitment" => Some(KeyUsagePurpose::ContentCommitment),
            "key encipherment" => Some(KeyUsagePurpose::KeyEncipherment),
            "key agreement" => Some(KeyUsagePurpose::KeyAgreement),
            "data encipherment" => Some(KeyUsagePurpose::DataEncipherment),
            "cert sign" => Some(KeyUsagePurpose::KeyCertSign),
            "crl sign" => Some(KeyUsagePurpose::CrlSign),
            "encipher only" => Some(KeyUsagePurpose::EncipherOnly),
            "decipher only" => Some(KeyUsagePurpose::DecipherOnly),
            _ => None,
        };
        if let Some(k) = k {
            if !ku.contains(&k) {
                ku.push(k);
            }
            continue;
        }
        let e = match usage.as_str() {
            "any" => ExtendedKeyUsagePurpose::Any,
            "server auth" => ExtendedKeyUsagePurpose::ServerAuth,
            "client auth" => ExtendedKeyUsagePurpose::ClientAuth,
            "code signing" => ExtendedKeyUsagePurpose::CodeSigning,
            "email protection" | "s/mime" => ExtendedKeyUsagePurpose::EmailProtection,
            "ipsec end system" => ExtendedKeyUsagePurpose::Other(vec![1, 3, 6, 1, 5, 5, 7, 3, 5]),
            "ipsec tunnel" => ExtendedKeyUsagePurpose::Other(vec![1, 3, 6, 1, 5, 5, 7, 3, 6]),
            "ipsec user" => ExtendedKeyUsagePurpose::Other(vec![1, 3, 6, 1, 5, 5, 7, 3, 7]),
            "timestamping" => ExtendedKeyUsagePurpose::TimeStamping,
            "ocsp signing" => ExtendedKeyUsagePurpose::OcspSigning,
            "microsoft sgc" => {
                ExtendedKeyUsagePurpose::Other(vec![1, 3, 6, 1, 4, 1, 311, 10, 3, 3])
            }
            "netscape sgc" => ExtendedKeyUsagePurpose::Other(vec![2, 16, 840, 1, 113730, 4, 1]),
            other => return Err(SignerError::UnknownUsage(other.to_string())),
        };
        if !eku.contains(&e) {
            eku.push(e);
        }
    }
    if is_ca && !ku.contains(&KeyUsagePurpose::KeyCertSign) {
        ku.push(KeyUsagePurpose::KeyCertSign);
    }
    Ok((ku, eku))
}

/// RFC 3339 at second precision, as Kubernetes serialises `metav1.Time`.
pub fn rfc3339(t: OffsetDateTime) -> String {
    let t = t.replace_nanosecond(0).unwrap_or(t);
    t.format(&Rfc3339).unwrap_or_default()
}

/// The condition of `type_` in `obj.status.conditions`.
pub fn condition<'a>(obj: &'a Value, type_: &str) -> Option<&'a Value> {
    obj.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some(type_))
}

fn condition_is(obj: &Value, type_: &str, status: &str) -> bool {
    condition(obj, type_).and_then(|c| c.get("status")?.as_str()) == Some(status)
}

fn ready_reason(obj: &Value) -> Option<&str> {
    condition(obj, "Ready")?.get("reason")?.as_str()
}

pub fn is_approved(obj: &Value) -> bool {
    condition_is(obj, "Approved", "True")
}

pub fn is_denied(obj: &Value) -> bool {
    condition_is(obj, "Denied", "True")
}

/// Whether cert-manager considers the request finished: it never acts on it again.
pub fn is_final(obj: &Value) -> bool {
    condition_is(obj, "Ready", "True")
        || condition_is(obj, "InvalidRequest", "True")
        || matches!(
            ready_reason(obj),
            Some(REASON_ISSUED | REASON_FAILED | REASON_DENIED)
        )
}

fn status_mut(obj: &mut Value) -> Option<&mut Map<String, Value>> {
    let root = obj.as_object_mut()?;
    let status = root
        .entry("status")
        .or_insert_with(|| Value::Object(Map::new()));
    if !status.is_object() {
        *status = Value::Object(Map::new());
    }
    status.as_object_mut()
}

/// Sets a condition as cert-manager's `SetCertificateRequestCondition` does: updates the one of
/// the same type in place (lastTransitionTime changes only when the status changes) or appends.
pub fn set_condition(
    obj: &mut Value,
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
    now: &str,
) {
    let Some(st) = status_mut(obj) else { return };
    let conditions = st
        .entry("conditions")
        .or_insert_with(|| Value::Array(Vec::new()));
    if !conditions.is_array() {
        *conditions = Value::Array(Vec::new());
    }
    let Some(list) = conditions.as_array_mut() else {
        return;
    };
    let mut new = serde_json::json!({
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": now,
    });
    if let Some(existing) = list
        .iter_mut()
        .find(|c| c.get("type").and_then(Value::as_str) == Some(type_))
    {
        if existing.get("status").and_then(Value::as_str) == Some(status)
            && let Some(t) = existing.get("lastTransitionTime")
        {
            new["lastTransitionTime"] = t.clone();
        }
        *existing = new;
    } else {
        list.push(new);
    }
}

fn set_failure_time(obj: &mut Value, now: &str) {
    if let Some(st) = status_mut(obj) {
        st.entry("failureTime")
            .or_insert_with(|| Value::String(now.to_string()));
    }
}

/// One status write the controllers make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Approve,
    Deny {
        reason: String,
        message: String,
    },
    /// The issuer's reaction to a denial.
    MarkDenied,
    Pending {
        message: String,
    },
    Fail {
        message: String,
    },
    /// `certificate` and `ca` are PEM text; the write base64-encodes them.
    Issue {
        certificate: String,
        ca: Option<String>,
    },
}

/// Whether `step` may still be written to `obj`: re-checked against the stored object at write
/// time, because another writer (or a slow signing) may have moved it on since we looked.
pub fn step_allowed(obj: &Value, step: &Step) -> bool {
    match step {
        // cert-manager's approver skips Issued and Failed requests; InvalidRequest ones are
        // skipped too because the issuer would never act on them (they are final).
        Step::Approve | Step::Deny { .. } => !is_approved(obj) && !is_denied(obj) && !is_final(obj),
        Step::MarkDenied => is_denied(obj) && ready_reason(obj) != Some(REASON_DENIED),
        Step::Pending { .. } | Step::Fail { .. } | Step::Issue { .. } => {
            is_approved(obj)
                && !is_denied(obj)
                && !is_final(obj)
                && obj
                    .pointer("/status/certificate")
                    .and_then(Value::as_str)
                    .is_none_or(str::is_empty)
        }
    }
}

/// Applies `step` to the object.
pub fn apply_step(obj: &mut Value, step: &Step, now: &str) {
    match step {
        Step::Approve => set_condition(
            obj,
            "Approved",
            "True",
            APPROVED_REASON,
            APPROVED_MESSAGE,
            now,
        ),
        Step::Deny { reason, message } => {
            set_condition(obj, "Denied", "True", reason, message, now)
        }
        Step::MarkDenied => {
            set_failure_time(obj, now);
            set_condition(obj, "Ready", "False", REASON_DENIED, DENIED_MESSAGE, now);
        }
        Step::Pending { message } => {
            set_condition(obj, "Ready", "False", REASON_PENDING, message, now)
        }
        Step::Fail { message } => {
            set_failure_time(obj, now);
            set_condition(obj, "Ready", "False", REASON_FAILED, message, now);
        }
        Step::Issue { certificate, ca } => {
            if let Some(st) = status_mut(obj) {
                st.insert(
                    "certificate".into(),
                    Value::String(B64.encode(certificate.as_bytes())),
                );
                match ca {
                    Some(ca) => {
                        st.insert("ca".into(), Value::String(B64.encode(ca.as_bytes())));
                    }
                    None => {
                        st.remove("ca");
                    }
                }
            }
            set_condition(obj, "Ready", "True", REASON_ISSUED, ISSUED_MESSAGE, now);
        }
    }
}

/// What the controllers want to do next with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    Nothing,
    Write(Step),
    /// Approved and served by us: sign it (after the configured delay).
    Sign,
}

fn issuer_ref(obj: &Value) -> (&str, &str, &str) {
    let field = |f: &str| {
        obj.pointer(&format!("/spec/issuerRef/{f}"))
            .and_then(Value::as_str)
            .unwrap_or("")
    };
    (field("name"), field("kind"), field("group"))
}

/// The message cert-manager reports when the referenced issuer does not exist: the reporter's
/// "Referenced %q not found" followed by the API server's NotFound error.
pub fn issuer_not_found_message(kind: &str, name: &str) -> String {
    let (kind, resource) = if kind == "ClusterIssuer" {
        ("ClusterIssuer", "clusterissuers")
    } else {
        ("Issuer", "issuers")
    };
    format!("Referenced \"{kind}\" not found: {resource}.{GROUP} \"{name}\" not found")
}

/// Decides the next step for `obj`, in the order cert-manager's approver and
/// certificaterequests controllers check things.
pub fn plan(obj: &Value, issuers: &[String], policy: &Policy) -> Plan {
    let (name, kind, group) = issuer_ref(obj);
    // Neither cert-manager's approver nor its issuer controllers act on external issuers.
    if !(group.is_empty() || group == GROUP) || !matches!(kind, "" | "Issuer" | "ClusterIssuer") {
        return Plan::Nothing;
    }
    if !is_approved(obj) && !is_denied(obj) {
        let step = match policy(obj) {
            Approval::Approve => Step::Approve,
            Approval::Deny { reason, message } => Step::Deny { reason, message },
        };
        if step_allowed(obj, &step) {
            return Plan::Write(step);
        }
        return Plan::Nothing;
    }
    if is_denied(obj) {
        return if step_allowed(obj, &Step::MarkDenied) {
            Plan::Write(Step::MarkDenied)
        } else {
            Plan::Nothing
        };
    }
    if is_final(obj) {
        return Plan::Nothing;
    }
    if !issuers.iter().any(|i| i == name) {
        let message = issuer_not_found_message(kind, name);
        if ready_reason(obj) == Some(REASON_PENDING)
            && condition(obj, "Ready")
                .and_then(|c| c.get("message"))
                .and_then(Value::as_str)
                == Some(message.as_str())
        {
            return Plan::Nothing;
        }
        return Plan::Write(Step::Pending { message });
    }
    if obj
        .pointer("/status/certificate")
        .and_then(Value::as_str)
        .is_some_and(|c| !c.is_empty())
    {
        return Plan::Nothing;
    }
    Plan::Sign
}

// ---------------------------------------------------------------------------------------------
// The CA.

/// A self-signed root CA.
pub struct Ca {
    params: CertificateParams,
    key: KeyPair,
    pem: String,
    not_after: OffsetDateTime,
}

impl Ca {
    /// A fresh ECDSA P-256 root valid for ten years; `generation` names it so rotated CAs are
    /// told apart in a certificate dump.
    pub fn generate(generation: usize) -> Result<Ca, SignerError> {
        let key = KeyPair::generate().map_err(SignerError::CaGeneration)?;
        let now = OffsetDateTime::now_utc();
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("certvol e2e CA {generation}"));
        params
            .distinguished_name
            .push(DnType::OrganizationName, "certvol e2e");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        // Back-dated a little so a leaf issued in the same second is inside the CA's validity
        // even for verifiers with second-granular clocks.
        params.not_before = now - time::Duration::minutes(1);
        params.not_after = now + time::Duration::days(3650);
        params.serial_number = Some(random_serial());
        let not_after = params.not_after;
        let cert = params
            .self_signed(&key)
            .map_err(SignerError::CaGeneration)?;
        Ok(Ca {
            pem: cert.pem(),
            params,
            key,
            not_after,
        })
    }

    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// Signs the CSR of a CertificateRequest `spec` as cert-manager's CA issuer does: subject,
    /// SANs and public key from the CSR; validity `now` .. `now + spec.duration` (90 days when
    /// unset), cut at the CA's own expiry; usages and isCA from the spec. Returns the leaf PEM.
    pub fn sign(&self, spec: &Value, now: OffsetDateTime) -> Result<String, SignerError> {
        let request = spec
            .get("request")
            .and_then(Value::as_str)
            .ok_or(SignerError::MissingRequest)?;
        let pem =
            String::from_utf8(B64.decode(request)?).map_err(|_| SignerError::RequestNotText)?;
        let (mut params, public_key): (CertificateParams, Box<dyn PublicKeyData>) =
            match CertificateSigningRequestParams::from_pem(&pem) {
                Ok(csr) => (csr.params, Box::new(csr.public_key)),
                Err(rcgen::Error::UnsupportedExtension) => csr_subject_and_sans(&pem)?,
                Err(e) => return Err(SignerError::Csr(e)),
            };
        let duration = match spec.get("duration").and_then(Value::as_str) {
            Some(d) => parse_go_duration(d)?,
            None => DEFAULT_DURATION,
        };
        let is_ca = spec.get("isCA").and_then(Value::as_bool).unwrap_or(false);
        let usages: Vec<String> = spec
            .get("usages")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        let (key_usages, extended_key_usages) = map_usages(&usages, is_ca)?;

        params.key_usages = key_usages;
        params.extended_key_usages = extended_key_usages;
        // cert-manager always writes BasicConstraints, CA:FALSE for leaves.
        params.is_ca = if is_ca {
            IsCa::Ca(BasicConstraints::Unconstrained)
        } else {
            IsCa::ExplicitNoCa
        };
        let validity = time::Duration::try_from(duration)
            .map_err(|_| SignerError::DurationOverflow(duration))?;
        let not_after = now
            .checked_add(validity)
            .ok_or(SignerError::DurationOverflow(duration))?;
        params.not_before = now;
        params.not_after = not_after.min(self.not_after);
        params.serial_number = Some(random_serial());
        params.use_authority_key_identifier_extension = true;
        let issuer = Issuer::from_params(&self.params, &self.key);
        let leaf = params
            .signed_by(&public_key.as_ref(), &issuer)
            .map_err(SignerError::Sign)?;
        Ok(leaf.pem())
    }
}

/// Subject, SANs and public key of a CSR whose extension request rcgen's parser refuses (it
/// knows SAN, KeyUsage, registered ExtendedKeyUsage purposes and BasicConstraints only; e.g. an
/// `ipsec tunnel` usage stops it). cert-manager takes nothing else from the CSR either: usages and
/// isCA come from the spec, which its webhook already checked against the CSR.
fn csr_subject_and_sans(
    pem_text: &str,
) -> Result<(CertificateParams, Box<dyn PublicKeyData>), SignerError> {
    use x509_parser::certification_request::X509CertificationRequest;
    use x509_parser::extensions::{GeneralName, ParsedExtension};
    use x509_parser::prelude::FromDer;

    let syntax = |e: String| SignerError::CsrSyntax(e);
    let (_, pem) =
        x509_parser::pem::parse_x509_pem(pem_text.as_bytes()).map_err(|e| syntax(e.to_string()))?;
    let (_, csr) =
        X509CertificationRequest::from_der(&pem.contents).map_err(|e| syntax(e.to_string()))?;
    csr.verify_signature()
        .map_err(|_| SignerError::Csr(rcgen::Error::InvalidCertificationRequestSignature))?;
    let info = &csr.certification_request_info;
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    for attr in info.subject.iter_attributes() {
        let oid: Vec<u64> = attr
            .attr_type()
            .iter()
            .map(|arcs| arcs.collect())
            .unwrap_or_default();
        let value = attr.as_str().map_err(|e| syntax(e.to_string()))?;
        params
            .distinguished_name
            .push(DnType::from_oid(&oid), value);
    }
    for ext in csr.requested_extensions().into_iter().flatten() {
        let ParsedExtension::SubjectAlternativeName(san) = ext else {
            continue;
        };
        for name in &san.general_names {
            let san = match name {
                GeneralName::DNSName(d) => {
                    SanType::DnsName((*d).try_into().map_err(SignerError::Csr)?)
                }
                GeneralName::RFC822Name(e) => {
                    SanType::Rfc822Name((*e).try_into().map_err(SignerError::Csr)?)
                }
                GeneralName::URI(u) => SanType::URI((*u).try_into().map_err(SignerError::Csr)?),
                GeneralName::IPAddress(b) => match b.len() {
                    4 => SanType::IpAddress(std::net::IpAddr::from(
                        <[u8; 4]>::try_from(*b).map_err(|_| syntax("bad IP SAN".into()))?,
                    )),
                    16 => SanType::IpAddress(std::net::IpAddr::from(
                        <[u8; 16]>::try_from(*b).map_err(|_| syntax("bad IP SAN".into()))?,
                    )),
                    n => return Err(syntax(format!("IP SAN of {n} bytes"))),
                },
                // Other name forms are not used for workload certificates.
                _ => continue,
            };
            params.subject_alt_names.push(san);
        }
    }
    let spki =
        rcgen::SubjectPublicKeyInfo::from_der(info.subject_pki.raw).map_err(SignerError::Csr)?;
    Ok((params, Box::new(spki)))
}

/// 16 random bytes, top bit clear so the DER INTEGER stays positive and within 20 octets.
fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01; // no leading zero byte to strip: keeps the serial 16 octets long
    SerialNumber::from_slice(&bytes)
}

/// The status write for a request we sign now: the certificate, or the failure cert-manager's CA
/// issuer reports (template errors and signing errors carry different prefixes).
fn sign_step(ca: &Ca, obj: &Value, fail: bool, omit_ca: bool) -> Step {
    if fail {
        return Step::Fail {
            message: format!("Error signing certificate: {SIMULATED_FAILURE}"),
        };
    }
    let spec = obj.get("spec").cloned().unwrap_or(Value::Null);
    match ca.sign(&spec, OffsetDateTime::now_utc()) {
        Ok(certificate) => Step::Issue {
            certificate,
            ca: (!omit_ca).then(|| ca.pem.clone()),
        },
        Err(e @ SignerError::Sign(_)) => Step::Fail {
            message: format!("Error signing certificate: {e}"),
        },
        Err(e) => Step::Fail {
            message: format!("Error generating certificate template: {e}"),
        },
    }
}

// ---------------------------------------------------------------------------------------------
// The controller.

struct Shared {
    ca: Mutex<Arc<Ca>>,
    generation: AtomicUsize,
    delay: Mutex<Duration>,
    fail_signing: AtomicBool,
    policy: Mutex<Policy>,
    issuers: Vec<String>,
    omit_ca: bool,
    signed: AtomicUsize,
    /// uids of requests a delayed signing holds, so their Pending writes do not start another.
    in_flight: Mutex<HashSet<String>>,
    /// Namespaces whose requests are left alone (never approved, never signed), as with an
    /// issuer that never answers.
    silent: Mutex<HashSet<String>>,
}

/// Poisoning only means a panic elsewhere; the data (a CA handle, a duration) is still sound.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The running approver + CA issuer. Stops (with any delayed signings) when dropped.
pub struct Signer {
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Signer {
    /// Spawns the controller loop on `store` (call it inside a tokio runtime). Requests already
    /// in the store are processed too. Panics if the CA cannot be generated (a harness cannot
    /// run without one); see [`Signer::try_start`].
    pub fn start(store: Store, cfg: SignerConfig) -> Signer {
        match Signer::try_start(store, cfg) {
            Ok(s) => s,
            Err(e) => panic!("cannot start the cert-manager stand-in: {e}"),
        }
    }

    pub fn try_start(store: Store, cfg: SignerConfig) -> Result<Signer, SignerError> {
        let shared = Arc::new(Shared {
            ca: Mutex::new(Arc::new(Ca::generate(1)?)),
            generation: AtomicUsize::new(1),
            delay: Mutex::new(cfg.delay),
            fail_signing: AtomicBool::new(cfg.fail_signing),
            policy: Mutex::new(cfg.policy),
            issuers: cfg.issuers,
            omit_ca: cfg.omit_ca,
            signed: AtomicUsize::new(0),
            in_flight: Mutex::new(HashSet::new()),
            silent: Mutex::new(HashSet::new()),
        });
        let task = tokio::spawn(run(store, shared.clone()));
        Ok(Signer { shared, task })
    }

    /// The current CA certificate (PEM).
    pub fn ca_pem(&self) -> String {
        lock(&self.shared.ca).pem.clone()
    }

    /// Replaces the CA with a fresh key and certificate; later signings use it.
    pub fn rotate_ca(&self) {
        if let Err(e) = self.try_rotate_ca() {
            panic!("cannot rotate the CA: {e}");
        }
    }

    pub fn try_rotate_ca(&self) -> Result<(), SignerError> {
        let generation = self.shared.generation.fetch_add(1, Ordering::SeqCst) + 1;
        let ca = Ca::generate(generation)?;
        *lock(&self.shared.ca) = Arc::new(ca);
        Ok(())
    }

    pub fn set_delay(&self, d: Duration) {
        *lock(&self.shared.delay) = d;
    }

    pub fn set_fail_signing(&self, on: bool) {
        self.shared.fail_signing.store(on, Ordering::SeqCst);
    }

    /// Replaces the approval policy; it decides requests not yet approved or denied.
    pub fn set_policy(&self, p: impl Fn(&Value) -> Approval + Send + Sync + 'static) {
        *lock(&self.shared.policy) = Arc::new(p);
    }

    /// Leaves `namespace`'s requests (from now on) untouched when `silent`: no approval, no
    /// status, as an issuer that never answers. Turned off, they are picked up at the next
    /// change to them.
    pub fn set_silent(&self, namespace: &str, silent: bool) {
        let mut set = lock(&self.shared.silent);
        if silent {
            set.insert(namespace.to_owned());
        } else {
            set.remove(namespace);
        }
    }

    /// How many certificates it has signed (and written).
    pub fn signed(&self) -> usize {
        self.shared.signed.load(Ordering::SeqCst)
    }
}

impl Drop for Signer {
    fn drop(&mut self) {
        // Aborting the loop drops its JoinSet, which aborts the delayed signings too.
        self.task.abort();
    }
}

/// How long a failed status write waits before the request is reconciled again (cert-manager's
/// workqueue requeues with backoff; a short fixed delay keeps tests fast).
const REQUEUE_AFTER: Duration = Duration::from_millis(100);
/// Attempts a delayed signing makes to write its result before giving the request back.
const WRITE_ATTEMPTS: usize = 10;

/// The controller's context: the store, the shared settings, and the queue of requests to look at
/// again (requeued after a failed write or a delayed signing that could not write).
struct Ctx {
    store: Store,
    shared: Arc<Shared>,
    requeue: mpsc::UnboundedSender<(String, String)>,
}

async fn run(store: Store, shared: Arc<Shared>) {
    // Subscribe before listing: an object created between the two is then seen at least once.
    let mut events = store.subscribe();
    let (requeue, mut requeued) = mpsc::unbounded_channel();
    let ctx = Arc::new(Ctx {
        store,
        shared,
        requeue,
    });
    // Delayed signings and requeue timers; dropped (so aborted) with this task.
    let mut delayed: JoinSet<()> = JoinSet::new();
    resync(&ctx, &mut delayed);
    loop {
        tokio::select! {
            ev = events.recv() => match ev {
                Ok(ev) => {
                    if matches!(ev.kind, Kind::CertificateRequest)
                        && !matches!(ev.event_type, EventType::Deleted)
                        && let Some((ns, name)) = namespaced_name(&ev.object)
                    {
                        reconcile(&ctx, &ns, &name, &mut delayed);
                    }
                }
                Err(RecvError::Lagged(missed)) => {
                    tracing::debug!(missed, "signer lagged behind the watch; relisting");
                    resync(&ctx, &mut delayed);
                }
                Err(RecvError::Closed) => break,
            },
            Some((ns, name)) = requeued.recv() => reconcile(&ctx, &ns, &name, &mut delayed),
            Some(_) = delayed.join_next(), if !delayed.is_empty() => {}
        }
    }
}

fn namespaced_name(obj: &Value) -> Option<(String, String)> {
    let meta = obj.get("metadata")?;
    let name = meta.get("name")?.as_str()?.to_string();
    let ns = meta
        .get("namespace")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    Some((ns, name))
}

fn uid(obj: &Value) -> String {
    obj.pointer("/metadata/uid")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string()
}

fn resync(ctx: &Arc<Ctx>, delayed: &mut JoinSet<()>) {
    for obj in ctx.store.list(Kind::CertificateRequest, None, None) {
        if let Some((ns, name)) = namespaced_name(&obj) {
            reconcile(ctx, &ns, &name, delayed);
        }
    }
}

fn requeue_later(ctx: &Arc<Ctx>, ns: &str, name: &str, delayed: &mut JoinSet<()>) {
    let tx = ctx.requeue.clone();
    let key = (ns.to_string(), name.to_string());
    delayed.spawn(async move {
        tokio::time::sleep(REQUEUE_AFTER).await;
        let _ = tx.send(key);
    });
}

/// Drives one request as far as it can go now. Each write is followed by a fresh decision on
/// the written object, so progress does not depend on seeing our own watch events.
fn reconcile(ctx: &Arc<Ctx>, ns: &str, name: &str, delayed: &mut JoinSet<()>) {
    let shared = &ctx.shared;
    if lock(&shared.silent).contains(ns) {
        return;
    }
    let Some(mut obj) = ctx.store.get(Kind::CertificateRequest, ns, name) else {
        return;
    };
    // Approve, mark denied, pending, sign: at most a handful of writes per request.
    for _ in 0..4 {
        let id = uid(&obj);
        let policy = lock(&shared.policy).clone();
        let step = match plan(&obj, &shared.issuers, &policy) {
            Plan::Nothing => return,
            Plan::Write(step) => step,
            Plan::Sign => {
                if lock(&shared.in_flight).contains(&id) {
                    return;
                }
                let delay = *lock(&shared.delay);
                if delay.is_zero() {
                    let ca = lock(&shared.ca).clone();
                    let fail = shared.fail_signing.load(Ordering::SeqCst);
                    sign_step(&ca, &obj, fail, shared.omit_ca)
                } else {
                    lock(&shared.in_flight).insert(id.clone());
                    delayed.spawn(delayed_sign(
                        ctx.clone(),
                        ns.to_string(),
                        name.to_string(),
                        id.clone(),
                        delay,
                    ));
                    let pending = Step::Pending {
                        message: PENDING_MESSAGE.to_string(),
                    };
                    // A lost Pending write is harmless: the signing lands after the delay anyway.
                    let _ = write(ctx, ns, name, &id, &pending);
                    return;
                }
            }
        };
        match write(ctx, ns, name, &id, &step) {
            Ok(Some(updated)) => obj = updated,
            Ok(None) => return,
            Err(_) => {
                requeue_later(ctx, ns, name, delayed);
                return;
            }
        }
    }
}

async fn delayed_sign(ctx: Arc<Ctx>, ns: String, name: String, id: String, delay: Duration) {
    tokio::time::sleep(delay).await;
    for _ in 0..WRITE_ATTEMPTS {
        let Some(obj) = ctx.store.get(Kind::CertificateRequest, &ns, &name) else {
            break;
        };
        if uid(&obj) != id {
            break;
        }
        // Settings are read now, not when the request was approved: a test flipping
        // fail_signing or rotating the CA during the delay affects this signing.
        let ca = lock(&ctx.shared.ca).clone();
        let fail = ctx.shared.fail_signing.load(Ordering::SeqCst);
        let step = sign_step(&ca, &obj, fail, ctx.shared.omit_ca);
        if write(&ctx, &ns, &name, &id, &step).is_ok() {
            break;
        }
        tokio::time::sleep(REQUEUE_AFTER).await;
    }
    lock(&ctx.shared.in_flight).remove(&id);
    // Whatever happened, let the loop look again: if the write never landed it starts over.
    let _ = ctx.requeue.send((ns, name));
}

/// Writes `step` through the status subresource if it still applies to the stored object (same
/// uid, state not moved on) and changes it. Returns the object as stored afterwards, `None` when
/// there was nothing to write.
fn write(
    ctx: &Ctx,
    ns: &str,
    name: &str,
    expect_uid: &str,
    step: &Step,
) -> Result<Option<Value>, ApiError> {
    let now = rfc3339(OffsetDateTime::now_utc());
    let Some(current) = ctx.store.get(Kind::CertificateRequest, ns, name) else {
        return Ok(None);
    };
    if uid(&current) != expect_uid || !step_allowed(&current, step) {
        return Ok(None);
    }
    let mut preview = current.clone();
    apply_step(&mut preview, step, &now);
    if preview == current {
        return Ok(None);
    }
    let mut applied = false;
    let result = ctx
        .store
        .update_status(Kind::CertificateRequest, ns, name, |obj: &mut Value| {
            // Re-checked on the object the store holds at write time.
            if uid(obj) == expect_uid && step_allowed(obj, step) {
                apply_step(obj, step, &now);
                applied = true;
            }
        });
    match result {
        Ok(updated) => {
            if applied && matches!(step, Step::Issue { .. }) {
                ctx.shared.signed.fetch_add(1, Ordering::SeqCst);
            }
            tracing::debug!(
                namespace = ns,
                name,
                step = step_kind(step),
                applied,
                "signer wrote status"
            );
            Ok(applied.then_some(updated))
        }
        Err(ApiError::NotFound { .. }) => Ok(None),
        Err(e) => {
            tracing::warn!(namespace = ns, name, step = step_kind(step), error = %e, "signer status write failed; will retry");
            Err(e)
        }
    }
}

fn step_kind(step: &Step) -> &'static str {
    match step {
        Step::Approve => "Approved",
        Step::Deny { .. } => "Denied",
        Step::MarkDenied => "Ready=Denied",
        Step::Pending { .. } => "Ready=Pending",
        Step::Fail { .. } => "Ready=Failed",
        Step::Issue { .. } => "Ready=Issued",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn go_durations_parse_like_time_parse_duration() {
        let h = |n: u64| Duration::from_secs(n * 3600);
        assert_eq!(parse_go_duration("2160h0m0s").unwrap(), h(2160));
        assert_eq!(parse_go_duration("1h").unwrap(), h(1));
        assert_eq!(parse_go_duration("90m").unwrap(), Duration::from_secs(5400));
        assert_eq!(
            parse_go_duration("1.5h").unwrap(),
            Duration::from_secs(5400)
        );
        assert_eq!(
            parse_go_duration("1h30m15s").unwrap(),
            Duration::from_secs(5415)
        );
        assert_eq!(parse_go_duration("+2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_go_duration("0").unwrap(), Duration::ZERO);
        assert_eq!(
            parse_go_duration(".5s").unwrap(),
            Duration::from_millis(500)
        );
        assert_eq!(
            parse_go_duration("300ms").unwrap(),
            Duration::from_millis(300)
        );
        assert_eq!(parse_go_duration("7us").unwrap(), Duration::from_micros(7));
        assert_eq!(parse_go_duration("7µs").unwrap(), Duration::from_micros(7));
        assert_eq!(parse_go_duration("9ns").unwrap(), Duration::from_nanos(9));
        for bad in [
            "",
            "1",
            "h",
            "1d",
            "-1h",
            "1h-2m",
            ".h",
            "1.h2",
            "99999999999999999999h",
        ] {
            let result = parse_go_duration(bad);
            // "1.h2" is "1." hours followed by "2" with no unit.
            assert!(result.is_err(), "{bad:?} parsed as {result:?}");
        }
        let msg = parse_go_duration("5x").unwrap_err().to_string();
        assert!(
            msg.contains("\"5x\"") && msg.contains("unknown unit"),
            "{msg}"
        );
    }

    #[test]
    fn usages_default_and_map_as_cert_manager_does() {
        let (ku, eku) = map_usages(&[], false).unwrap();
        assert_eq!(
            ku,
            [
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyEncipherment
            ]
        );
        assert!(eku.is_empty());

        let (ku, _) = map_usages(&[], true).unwrap();
        assert!(ku.contains(&KeyUsagePurpose::KeyCertSign));

        let us: Vec<String> = [
            "signing",
            "digital signature",
            "server auth",
            "client auth",
            "s/mime",
            "ipsec tunnel",
        ]
        .map(String::from)
        .to_vec();
        let (ku, eku) = map_usages(&us, false).unwrap();
        assert_eq!(ku, [KeyUsagePurpose::DigitalSignature]);
        assert_eq!(
            eku,
            [
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
                ExtendedKeyUsagePurpose::EmailProtection,
                ExtendedKeyUsagePurpose::Other(vec![1, 3, 6, 1, 5, 5, 7, 3, 6]),
            ]
        );
        // Only extended usages given: no KeyUsage bits are added besides cert sign for a CA.
        let (ku, _) = map_usages(&["server auth".to_string()], true).unwrap();
        assert_eq!(ku, [KeyUsagePurpose::KeyCertSign]);

        let err = map_usages(&["telepathy".to_string()], false).unwrap_err();
        assert_eq!(err.to_string(), "unknown usage \"telepathy\"");
    }

    fn cr(issuer: &str) -> Value {
        json!({
            "apiVersion": "cert-manager.io/v1",
            "kind": "CertificateRequest",
            "metadata": {"name": "req", "namespace": "ns", "uid": "u1"},
            "spec": {"issuerRef": {"name": issuer, "kind": "Issuer", "group": "cert-manager.io"}, "request": ""},
        })
    }

    #[test]
    fn conditions_update_in_place_and_keep_transition_time_when_status_is_unchanged() {
        let mut obj = cr("ca");
        set_condition(
            &mut obj,
            "Ready",
            "False",
            "Pending",
            "a",
            "2026-01-01T00:00:00Z",
        );
        set_condition(
            &mut obj,
            "Ready",
            "False",
            "Pending",
            "b",
            "2026-01-01T00:05:00Z",
        );
        let c = condition(&obj, "Ready").unwrap();
        assert_eq!(c["message"], "b");
        assert_eq!(c["lastTransitionTime"], "2026-01-01T00:00:00Z");
        set_condition(
            &mut obj,
            "Ready",
            "True",
            "Issued",
            "ok",
            "2026-01-01T00:09:00Z",
        );
        let list = obj["status"]["conditions"].as_array().unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0]["lastTransitionTime"], "2026-01-01T00:09:00Z");
        assert_eq!(list[0]["status"], "True");
    }

    #[test]
    fn timestamps_are_rfc3339_seconds() {
        let t = OffsetDateTime::from_unix_timestamp_nanos(1_795_000_000_123_456_789).unwrap();
        assert_eq!(rfc3339(t), "2026-11-18T11:06:40Z");
    }

    #[test]
    fn plan_follows_the_controllers_order() {
        let issuers = vec!["ca".to_string()];
        let approve = approve_all();
        let now = "2026-01-01T00:00:00Z";

        let mut obj = cr("ca");
        assert_eq!(plan(&obj, &issuers, &approve), Plan::Write(Step::Approve));
        apply_step(&mut obj, &Step::Approve, now);
        let a = condition(&obj, "Approved").unwrap();
        assert_eq!(
            (
                a["status"].as_str(),
                a["reason"].as_str(),
                a["message"].as_str()
            ),
            (
                Some("True"),
                Some("cert-manager.io"),
                Some(APPROVED_MESSAGE)
            )
        );
        assert_eq!(plan(&obj, &issuers, &approve), Plan::Sign);

        // Unknown issuer: Pending with cert-manager's not-found message, written once.
        let mut other = cr("nope");
        apply_step(&mut other, &Step::Approve, now);
        let step = match plan(&other, &issuers, &approve) {
            Plan::Write(step) => step,
            p => panic!("{p:?}"),
        };
        assert_eq!(
            step,
            Step::Pending {
                message:
                    "Referenced \"Issuer\" not found: issuers.cert-manager.io \"nope\" not found"
                        .into()
            }
        );
        apply_step(&mut other, &step, now);
        assert_eq!(plan(&other, &issuers, &approve), Plan::Nothing);
        assert!(!is_final(&other));

        // External issuers are left to their own controllers.
        let mut ext = cr("ca");
        ext["spec"]["issuerRef"]["group"] = json!("example.com");
        assert_eq!(plan(&ext, &issuers, &approve), Plan::Nothing);

        // Denial, then the issuer marks it Ready=False Denied with a failureTime; then final.
        let deny: Policy = Arc::new(|_: &Value| Approval::deny("policy.example", "no thanks"));
        let mut d = cr("ca");
        let step = match plan(&d, &issuers, &deny) {
            Plan::Write(step) => step,
            p => panic!("{p:?}"),
        };
        apply_step(&mut d, &step, now);
        assert_eq!(condition(&d, "Denied").unwrap()["reason"], "policy.example");
        assert_eq!(plan(&d, &issuers, &deny), Plan::Write(Step::MarkDenied));
        apply_step(&mut d, &Step::MarkDenied, now);
        assert_eq!(d["status"]["failureTime"], now);
        assert_eq!(condition(&d, "Ready").unwrap()["message"], DENIED_MESSAGE);
        assert!(is_final(&d));
        assert_eq!(plan(&d, &issuers, &deny), Plan::Nothing);
    }

    #[test]
    fn final_requests_are_left_alone() {
        let issuers = vec!["ca".to_string()];
        let approve = approve_all();
        let now = "2026-01-01T00:00:00Z";
        for (type_, status, reason) in [
            ("Ready", "True", "Issued"),
            ("Ready", "False", "Failed"),
            ("InvalidRequest", "True", "BadCSR"),
        ] {
            let mut obj = cr("ca");
            apply_step(&mut obj, &Step::Approve, now);
            set_condition(&mut obj, type_, status, reason, "x", now);
            assert!(is_final(&obj), "{type_} {reason}");
            assert_eq!(
                plan(&obj, &issuers, &approve),
                Plan::Nothing,
                "{type_} {reason}"
            );
            for step in [
                Step::Pending {
                    message: "m".into(),
                },
                Step::Fail {
                    message: "m".into(),
                },
            ] {
                assert!(!step_allowed(&obj, &step));
            }
        }
        // Failed before any approval: the approver does not touch it either.
        let mut failed = cr("ca");
        set_condition(&mut failed, "Ready", "False", "Failed", "x", now);
        assert_eq!(plan(&failed, &issuers, &approve), Plan::Nothing);
    }

    #[test]
    fn failure_keeps_the_first_failure_time() {
        let mut obj = cr("ca");
        apply_step(
            &mut obj,
            &Step::Fail {
                message: "one".into(),
            },
            "2026-01-01T00:00:00Z",
        );
        apply_step(
            &mut obj,
            &Step::Fail {
                message: "two".into(),
            },
            "2026-01-02T00:00:00Z",
        );
        assert_eq!(obj["status"]["failureTime"], "2026-01-01T00:00:00Z");
        assert_eq!(condition(&obj, "Ready").unwrap()["reason"], "Failed");
    }

    #[test]
    fn ca_signs_a_csr_with_spec_usages_duration_and_is_ca() {
        let ca = Ca::generate(1).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(vec!["a.example".to_string()]).unwrap();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(DnType::CommonName, "leaf");
        let csr = p.serialize_request(&key).unwrap().pem().unwrap();
        let spec = json!({
            "request": B64.encode(csr),
            "duration": "1h",
            "usages": ["digital signature", "server auth"],
            "issuerRef": {"name": "ca"},
        });
        let now = OffsetDateTime::now_utc();
        let pem_text = ca.sign(&spec, now).unwrap();
        let (_, pem) = x509_parser::pem::parse_x509_pem(pem_text.as_bytes()).unwrap();
        let cert = pem.parse_x509().unwrap();
        let (_, ca_pem) = x509_parser::pem::parse_x509_pem(ca.pem().as_bytes()).unwrap();
        let ca_cert = ca_pem.parse_x509().unwrap();
        cert.verify_signature(Some(ca_cert.public_key())).unwrap();
        assert_eq!(cert.issuer(), ca_cert.subject());
        let v = cert.validity();
        assert_eq!(v.not_after.timestamp() - v.not_before.timestamp(), 3600);
        let ku = cert.key_usage().unwrap().unwrap().value;
        assert!(ku.digital_signature() && !ku.key_encipherment() && !ku.key_cert_sign());
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && !eku.client_auth);
        let bc = cert.basic_constraints().unwrap().unwrap().value;
        assert!(!bc.ca);

        // isCA with no usages: the defaults plus cert sign; 90 days when duration is unset.
        let spec = json!({"request": spec["request"], "isCA": true});
        let pem_text = ca.sign(&spec, now).unwrap();
        let (_, pem) = x509_parser::pem::parse_x509_pem(pem_text.as_bytes()).unwrap();
        let cert = pem.parse_x509().unwrap();
        assert!(cert.basic_constraints().unwrap().unwrap().value.ca);
        let ku = cert.key_usage().unwrap().unwrap().value;
        assert!(ku.digital_signature() && ku.key_encipherment() && ku.key_cert_sign());
        let v = cert.validity();
        assert_eq!(
            v.not_after.timestamp() - v.not_before.timestamp(),
            90 * 86400
        );

        // A garbage request is a template error, reported as cert-manager's CA issuer does.
        let bad = json!({"spec": {"request": B64.encode("not a csr")}});
        match sign_step(&ca, &bad, false, false) {
            Step::Fail { message } => assert!(
                message.starts_with("Error generating certificate template: failed to decode CSR"),
                "{message}"
            ),
            s => panic!("{s:?}"),
        }
    }

    #[test]
    fn csrs_rcgen_cannot_parse_are_signed_from_subject_sans_and_key() {
        let ca = Ca::generate(1).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(vec![
            "vpn.example".to_string(),
            "192.0.2.1".to_string(),
            "2001:db8::1".to_string(),
        ])
        .unwrap();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(DnType::CommonName, "vpn");
        p.distinguished_name
            .push(DnType::OrganizationName, "certvol");
        let tunnel = vec![1, 3, 6, 1, 5, 5, 7, 3, 6];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::Other(tunnel)];
        let csr = p.serialize_request(&key).unwrap().pem().unwrap();
        assert!(matches!(
            CertificateSigningRequestParams::from_pem(&csr),
            Err(rcgen::Error::UnsupportedExtension)
        ));
        let spec =
            json!({"request": B64.encode(&csr), "usages": ["digital signature", "ipsec tunnel"]});
        let pem_text = ca.sign(&spec, OffsetDateTime::now_utc()).unwrap();
        let (_, pem) = x509_parser::pem::parse_x509_pem(pem_text.as_bytes()).unwrap();
        let cert = pem.parse_x509().unwrap();
        let (_, ca_pem) = x509_parser::pem::parse_x509_pem(ca.pem().as_bytes()).unwrap();
        cert.verify_signature(Some(ca_pem.parse_x509().unwrap().public_key()))
            .unwrap();
        assert_eq!(cert.subject().to_string(), "CN=vpn, O=certvol");
        assert_eq!(
            cert.public_key().raw,
            key.subject_public_key_info().as_slice()
        );
        use x509_parser::extensions::GeneralName;
        let sans = &cert
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names;
        assert!(sans.contains(&GeneralName::DNSName("vpn.example")));
        assert!(sans.contains(&GeneralName::IPAddress(&[192, 0, 2, 1])));
        assert_eq!(sans.len(), 3);
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert_eq!(eku.other.len(), 1);
        assert_eq!(eku.other[0].to_id_string(), "1.3.6.1.5.5.7.3.6");
    }
}
