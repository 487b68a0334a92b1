//! Issuers sign a CSR for a volume. Backends (the embedded local CA here; cert-manager and the
//! Kubernetes CSR API later) plug in behind [`Issuer`].

pub(crate) mod cached;
pub mod certmanager;
pub(crate) mod filing;
pub mod kubecsr;
pub(crate) mod labels;
pub(crate) mod local;
pub(crate) mod policy;
pub(crate) mod token;
pub(crate) mod watch;

use std::sync::Arc;

use futures::future::BoxFuture;
use sha2::{Digest, Sha256};

use crate::obs::metrics::IssueOutcome;
use crate::spec::request::CertRequest;

/// One issuance: a CSR plus what the issuer needs to know about it.
#[derive(Clone, Debug)]
pub struct IssueRequest {
    /// Stable name for this issuance, derived from node, volume and revision (see
    /// [`request_name`]). Issuers use it to recognise a request they have seen before a crash and
    /// adopt it instead of filing a second one.
    pub name: String,
    pub volume_id: String,
    pub node_id: String,
    /// PKCS#10 CSR, PEM.
    pub csr_pem: String,
    /// The same CSR, DER.
    pub csr_der: Vec<u8>,
    /// Issuance parameters (issuer ref, duration, usages, is-ca, pod, annotations).
    pub cert: Arc<CertRequest>,
    /// The pod's service-account token from kubelet's `tokenRequests`, for issuers that file
    /// requests as the pod (cert-manager's token-request mode). Redacted from `Debug`.
    pub token: Option<token::BearerToken>,
    /// The renewal worker this issuance runs on (see [`crate::runtime::scheduler`]); none for a publish.
    /// Issuers that wait for an answer from outside the node put it down once the request is
    /// filed, so waiting renewals do not keep others from working.
    pub worker: crate::base::fair::Lease,
}

/// What an issuer returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Issued {
    /// PEM: the leaf first, then any intermediates.
    pub chain_pem: String,
    /// PEM of the issuing CA. May be empty: some issuers do not know their root.
    pub ca_pem: String,
}

/// Why an issuance did not produce a certificate. Every variant says what a retry would do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IssueError {
    /// Transient: the issuer could not be reached or is overloaded; retry with the same request.
    #[error("issuer unavailable: {message}")]
    Unavailable { message: String },
    /// Waiting for the request took longer than allowed; a retry resumes waiting for it.
    #[error("timed out waiting for request {request} to be signed")]
    Timeout { request: String },
    /// An approver denied the request. Final for this request.
    #[error("request {request} was denied: {message}")]
    Denied { request: String, message: String },
    /// The issuer tried and failed. Final for this request.
    #[error("request {request} failed: {message}")]
    Failed { request: String, message: String },
    /// The issuer cannot serve this request as asked (bad issuer ref, unsupported parameters).
    #[error("request {request} is invalid: {message}")]
    Invalid { request: String, message: String },
}

impl IssueError {
    /// The `outcome` label of `certvol_issuance_total` for this error.
    pub fn outcome(&self) -> IssueOutcome {
        match self {
            IssueError::Denied { .. } => IssueOutcome::Denied,
            IssueError::Failed { .. } => IssueOutcome::Failed,
            IssueError::Invalid { .. } => IssueOutcome::Invalid,
            IssueError::Timeout { .. } => IssueOutcome::Timeout,
            IssueError::Unavailable { .. } => IssueOutcome::Unavailable,
        }
    }

    /// Whether retrying the same request may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            IssueError::Unavailable { .. } | IssueError::Timeout { .. }
        )
    }
}

/// The `outcome` label of `certvol_issuance_total` for an issuer's answer.
pub fn outcome_of<T>(result: &Result<T, IssueError>) -> IssueOutcome {
    match result {
        Ok(_) => IssueOutcome::Issued,
        Err(e) => e.outcome(),
    }
}

/// A certificate issuer.
pub trait Issuer: Send + Sync + std::fmt::Debug + 'static {
    /// Short name of the backend for logs and tables, e.g. `local`.
    fn kind(&self) -> &'static str;

    /// Whether this issuer can serve a volume asking for `req`, checked before anything is
    /// written, so a volume that names the wrong kind of issuer fails with InvalidArgument.
    fn check_request(&self, _req: &CertRequest) -> Result<(), crate::spec::attrs::AttrError> {
        Ok(())
    }

    /// Whether the operator's issuance policy lets this volume have the certificate it asks
    /// for, checked before anything is written. Only the local CA has one: the other backends
    /// leave the decision to their signer (cert-manager's approvers, the CSR signer).
    fn check_policy(&self, _req: &CertRequest) -> Result<(), policy::PolicyViolation> {
        Ok(())
    }

    /// Signs `req`. Calling it again with the same `req.name` after a crash must not file a second
    /// request: the issuer adopts the one it already has.
    fn issue<'a>(&'a self, req: &'a IssueRequest) -> BoxFuture<'a, Result<Issued, IssueError>>;

    /// Forgets requests that are no longer needed (pruned history, unpublished volumes). They were
    /// filed in `namespace` (the pod's). Names the issuer never saw are ignored.
    fn forget<'a>(
        &'a self,
        namespace: &'a str,
        names: &'a [String],
    ) -> BoxFuture<'a, Result<(), IssueError>>;

    /// For issuers behind an API server: changes whenever the server answers again after an
    /// outage (see `watch::RequestCache::recoveries`). `None`: the issuer cannot become
    /// unreachable (the local CA).
    fn recoveries(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }
}

/// A PEM field of an issuer's answer (`field`, e.g. `status.certificate`) as text, refused when
/// larger than [`crate::x509::pki::MAX_PEM_BYTES`] (a certificate chain is a few KiB; anything that big
/// is not one) or not UTF-8. The answer is untrusted input: the error is final for the request.
pub fn pem_text(request: &str, field: &str, bytes: &[u8]) -> Result<String, IssueError> {
    if bytes.len() > crate::x509::pki::MAX_PEM_BYTES {
        return Err(pem_too_large(request, field, bytes.len()));
    }
    String::from_utf8(bytes.to_vec()).map_err(|_| IssueError::Failed {
        request: request.to_owned(),
        message: format!("{field} is not PEM text"),
    })
}

/// The error of [`pem_text`] for a field of `len` bytes, more than certvol accepts.
pub fn pem_too_large(request: &str, field: &str, len: usize) -> IssueError {
    let max = crate::x509::pki::MAX_PEM_BYTES;
    IssueError::Failed {
        request: request.to_owned(),
        message: format!(
            "{field} is {len} bytes, more than the {max} bytes certvol accepts (a certificate chain is a few KiB)"
        ),
    }
}

/// The deterministic name of a volume's `revision`-th issuance on `node_id`.
///
/// A valid Kubernetes object name (RFC 1123 subdomain, well under 253 characters), stable across
/// restarts so a retried issuance finds the request filed before a crash.
pub fn request_name(node_id: &str, volume_id: &str, revision: u64) -> String {
    let mut hasher = Sha256::new();
    hasher.update(node_id.as_bytes());
    hasher.update([0u8]);
    hasher.update(volume_id.as_bytes());
    let digest = hasher.finalize();
    format!("certvol-{}-{revision}", hex::encode(&digest[..10]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_fields_are_bounded_text() {
        let pem = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert_eq!(pem_text("ns/r", "status.ca", pem.as_bytes()).unwrap(), pem);
        let huge = vec![b'A'; crate::x509::pki::MAX_PEM_BYTES + 1];
        match pem_text("ns/r", "status.certificate", &huge) {
            Err(IssueError::Failed { request, message }) => {
                assert_eq!(request, "ns/r");
                assert!(
                    message.contains("status.certificate is 1048577 bytes")
                        && message.contains("1048576 bytes certvol accepts"),
                    "{message}"
                );
            }
            other => panic!("{other:?}"),
        }
        let err = pem_text("ns/r", "status.ca", &[0xff]).unwrap_err();
        assert!(
            err.to_string().contains("status.ca is not PEM text"),
            "{err}"
        );
    }

    #[test]
    fn request_names_are_stable_distinct_and_valid() {
        let a = request_name("node-1", "csi-abc", 1);
        assert_eq!(a, request_name("node-1", "csi-abc", 1));
        assert_ne!(a, request_name("node-1", "csi-abc", 2));
        assert_ne!(a, request_name("node-2", "csi-abc", 1));
        assert!(a.len() <= 63);
        assert!(
            a.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        );
    }

    #[test]
    fn issue_outcomes_cover_every_error() {
        let r = |e| outcome_of::<()>(&Err(e));
        let s = String::new;
        assert_eq!(
            r(IssueError::Timeout { request: s() }),
            IssueOutcome::Timeout
        );
        assert_eq!(
            r(IssueError::Unavailable { message: s() }),
            IssueOutcome::Unavailable
        );
        assert_eq!(
            r(IssueError::Failed {
                request: s(),
                message: s()
            }),
            IssueOutcome::Failed
        );
        assert_eq!(
            r(IssueError::Invalid {
                request: s(),
                message: s()
            }),
            IssueOutcome::Invalid
        );
    }
}
