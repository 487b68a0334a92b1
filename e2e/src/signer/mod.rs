//! An in-process stand-in for cert-manager's approver and CA issuer controllers, running against
//! the API stand-in's [`Store`](crate::apiserver::Store).
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
//!
//! Split by concern: `spec` reads the spec fields cert-manager interprets, `status` writes
//! conditions, `plan` decides the next step, `ca` signs, `controller` runs the loop.

mod ca;
mod controller;
mod plan;
mod spec;
mod status;

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

pub use ca::Ca;
pub use controller::Signer;
pub use plan::{Plan, issuer_not_found_message, plan};
pub use spec::{map_usages, parse_go_duration};
pub use status::{
    Step, apply_step, condition, is_approved, is_denied, is_final, rfc3339, set_condition,
    step_allowed,
};

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

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    /// A CertificateRequest for `issuer`, not yet acted on; the submodules' tests share it.
    pub(super) fn cr(issuer: &str) -> Value {
        json!({
            "apiVersion": "cert-manager.io/v1",
            "kind": "CertificateRequest",
            "metadata": {"name": "req", "namespace": "ns", "uid": "u1"},
            "spec": {"issuerRef": {"name": issuer, "kind": "Issuer", "group": "cert-manager.io"}, "request": ""},
        })
    }
}
