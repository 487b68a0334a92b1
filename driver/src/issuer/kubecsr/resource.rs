//! The `CertificateSigningRequest` (certificates.k8s.io/v1) as the driver writes and reads it: pure
//! functions to build one from an [`IssueRequest`] and to read the outcome from the conditions
//! the approver and the signer set.

use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestCondition, CertificateSigningRequestSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::issuer::cached::{
    ApiCondition, Cached, CachedCondition, Pem, Watched, request_key_of_pem,
};
use crate::issuer::labels::{annotations, label_value, request_labels};
use crate::issuer::{IssueError, IssueRequest, Issued};
use crate::spec::request::KubeCsrRef;

/// Label holding the pod's namespace: requests are cluster-scoped, so the name alone does not say
/// whose they are.
pub const LABEL_NAMESPACE: &str = "certvol.io/namespace";

/// The shortest `expirationSeconds` the API accepts (10 minutes).
pub(crate) const MIN_EXPIRATION: Duration = Duration::from_secs(600);

/// `spec.expirationSeconds` for a requested duration: whole seconds, at most `i32::MAX`.
pub(crate) fn expiration_seconds(duration: Duration) -> i32 {
    i32::try_from(duration.as_secs()).unwrap_or(i32::MAX)
}

/// Builds the request for `req` and its signer, labelled for `node_label`'s watch. No owner
/// reference: a cluster-scoped object cannot be owned by a namespaced pod, so `forget` (and the
/// cluster's CSR cleaner for requests of vanished nodes) removes it.
pub(crate) fn build(
    req: &IssueRequest,
    signer: &KubeCsrRef,
    node_id: &str,
) -> CertificateSigningRequest {
    let cert = &req.cert;
    let pod = &cert.pod;
    let mut labels = request_labels(node_id, &req.volume_id, pod);
    labels.insert(LABEL_NAMESPACE.to_owned(), label_value(&pod.namespace));
    CertificateSigningRequest {
        metadata: ObjectMeta {
            name: Some(req.name.clone()),
            labels: Some(labels),
            annotations: Some(annotations(cert, node_id)),
            ..ObjectMeta::default()
        },
        spec: CertificateSigningRequestSpec {
            request: ByteString(req.csr_pem.as_bytes().to_vec()),
            signer_name: signer.signer_name.clone(),
            expiration_seconds: Some(expiration_seconds(cert.duration)),
            usages: Some(cert.usages.iter().map(|u| u.name().to_owned()).collect()),
            ..CertificateSigningRequestSpec::default()
        },
        status: None,
    }
}

/// A condition of `type_` with status True.
fn condition<'a>(csr: &'a Cached, type_: &str) -> Option<&'a CachedCondition> {
    csr.conditions
        .iter()
        .find(|c| c.type_ == type_ && c.status == "True")
}

/// `reason: message`, or whichever of the two is set.
fn message_of(c: &CachedCondition) -> String {
    let reason = c.reason.as_deref().filter(|r| !r.is_empty());
    let message = c.message.as_deref().filter(|m| !m.is_empty());
    match (reason, message) {
        (Some(r), Some(m)) => format!("{r}: {m}"),
        (Some(r), None) => format!("{r} (no message)"),
        (None, Some(m)) => m.to_owned(),
        (None, None) => "no reason given".to_owned(),
    }
}

/// [`outcome_of`] of a whole request.
#[cfg(test)]
pub(crate) fn outcome(csr: &CertificateSigningRequest) -> Option<Result<Issued, IssueError>> {
    outcome_of(&csr.cached())
}

/// What a request's status says: `None` while pending, otherwise the final result. Denied and
/// Failed are final (the signer never signs such a request); a certificate ends the wait. The CA
/// is not part of the answer (the CSR API has none), so `ca_pem` is empty here.
pub(crate) fn outcome_of(csr: &Cached) -> Option<Result<Issued, IssueError>> {
    let request = csr.name.clone();
    if let Some(c) = condition(csr, "Denied") {
        return Some(Err(IssueError::Denied {
            request,
            message: message_of(c),
        }));
    }
    if let Some(c) = condition(csr, "Failed") {
        return Some(Err(IssueError::Failed {
            request,
            message: message_of(c),
        }));
    }
    let cert = csr.certificate.as_ref()?;
    if cert.is_empty() {
        return None;
    }
    Some(
        cert.text(&request, "status.certificate")
            .map(|chain_pem| Issued {
                chain_pem,
                ca_pem: String::new(),
            }),
    )
}

/// [`describe_cached`] of a whole request.
#[cfg(test)]
pub(crate) fn describe_status(csr: &CertificateSigningRequest) -> String {
    describe_cached(&csr.cached())
}

/// A one-line summary of the status, for timeout messages.
pub(crate) fn describe_cached(csr: &Cached) -> String {
    if csr.conditions.is_empty() {
        return "no conditions yet (not approved or denied by any approver)".into();
    }
    let mut parts: Vec<String> = csr
        .conditions
        .iter()
        .map(CachedCondition::describe)
        .collect();
    if condition(csr, "Approved").is_some() {
        parts.push(format!(
            "waiting for the signer {:?} to issue the certificate",
            csr.signer_name
        ));
    }
    parts.join(", ")
}

impl Watched for CertificateSigningRequest {
    fn api(client: kube::Client, _namespace: Option<&str>) -> kube::Api<Self> {
        kube::Api::all(client)
    }

    fn cached(&self) -> Cached {
        let mut cached = Cached::from_meta(&self.metadata);
        cached.request_key = request_key_of_pem(&self.spec.request.0);
        cached.signer_name = truncated_signer(&self.spec.signer_name);
        if let Some(status) = &self.status {
            cached.conditions = CachedCondition::all(status.conditions.iter().flatten());
            cached.certificate = status.certificate.as_ref().map(|c| Pem::new(&c.0));
        }
        cached
    }

    /// Cluster-scoped: the pod namespace certvol recorded in the `certvol.io/namespace` label
    /// (whoever creates the object writes it, so [`CacheLimits::total`] bounds the node too).
    ///
    /// [`CacheLimits::total`]: crate::issuer::watch::CacheLimits::total
    fn scope(&self) -> String {
        self.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(LABEL_NAMESPACE))
            .cloned()
            .unwrap_or_default()
    }
}

impl ApiCondition for CertificateSigningRequestCondition {
    fn fields(&self) -> (&str, &str, Option<&str>, Option<&str>) {
        let (reason, message) = (self.reason.as_deref(), self.message.as_deref());
        (&self.type_, &self.status, reason, message)
    }
}

/// Signer names are at most 571 characters (the API validates them); a longer one is kept only
/// as far as a comparison with ours needs.
fn truncated_signer(name: &str) -> String {
    const MAX: usize = 600;
    if name.len() <= MAX {
        return name.to_owned();
    }
    let mut end = MAX;
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name[..end].to_owned()
}

#[cfg(test)]
pub(crate) mod tests {
    use k8s_openapi::api::certificates::v1::{
        CertificateSigningRequestCondition, CertificateSigningRequestStatus,
    };

    use super::*;
    use crate::issuer::certmanager::resource::tests::{cert_request, issue_request};
    use crate::issuer::labels::{LABEL_NODE, LABEL_POD};
    use crate::spec::request::CaSource;

    pub(crate) fn signer() -> KubeCsrRef {
        KubeCsrRef {
            signer_name: "example.com/workloads".into(),
            ca_source: CaSource::ClusterTrustBundleSigner,
        }
    }

    /// The request `req` files, with (type, reason, message) conditions (status True).
    pub(crate) fn with_status(
        req: &IssueRequest,
        conditions: &[(&str, &str, &str)],
        cert: Option<&str>,
    ) -> CertificateSigningRequest {
        let mut csr = build(req, &signer(), "node-1");
        csr.status = Some(CertificateSigningRequestStatus {
            conditions: Some(
                conditions
                    .iter()
                    .map(|(t, r, m)| CertificateSigningRequestCondition {
                        type_: (*t).into(),
                        status: "True".into(),
                        reason: Some((*r).into()),
                        message: Some((*m).into()),
                        ..Default::default()
                    })
                    .collect(),
            ),
            certificate: cert.map(|c| ByteString(c.as_bytes().to_vec())),
        });
        csr
    }

    #[test]
    fn built_request_carries_signer_expiration_usages_and_labels() {
        let req = issue_request(cert_request());
        let csr = build(&req, &signer(), "node-1");
        assert_eq!(csr.metadata.name.as_deref(), Some(req.name.as_str()));
        assert_eq!(
            csr.metadata.annotations.clone().unwrap()
                [crate::issuer::certmanager::resource::ANNOTATION_NODE_NAME],
            "node-1"
        );
        assert_eq!(csr.metadata.namespace, None);
        assert_eq!(csr.metadata.owner_references, None);
        let labels = csr.metadata.labels.unwrap();
        assert_eq!(labels[LABEL_NODE], "node-1");
        assert_eq!(labels[LABEL_NAMESPACE], "shop");
        assert_eq!(labels[LABEL_POD], "web-0");
        assert_eq!(csr.spec.signer_name, "example.com/workloads");
        assert_eq!(csr.spec.expiration_seconds, Some(90 * 24 * 3600));
        assert_eq!(
            csr.spec.usages.unwrap(),
            ["digital signature", "key encipherment", "server auth"]
        );
        assert_eq!(csr.spec.request.0, req.csr_pem.as_bytes());
        assert_eq!(csr.spec.username, None, "set by the API server, never sent");
    }

    #[test]
    fn outcome_follows_the_conditions() {
        let req = issue_request(cert_request());
        assert!(outcome(&with_status(&req, &[], None)).is_none());
        assert!(
            outcome(&with_status(
                &req,
                &[("Approved", "AutoApproved", "ok")],
                None
            ))
            .is_none()
        );
        match outcome(&with_status(
            &req,
            &[("Denied", "PolicyDenied", "not allowed")],
            None,
        )) {
            Some(Err(IssueError::Denied { request, message })) => {
                assert_eq!(request, req.name);
                assert_eq!(message, "PolicyDenied: not allowed");
            }
            other => panic!("{other:?}"),
        }
        let failed = with_status(
            &req,
            &[
                ("Approved", "A", "ok"),
                ("Failed", "SignerValidationFailure", "bad usages"),
            ],
            None,
        );
        match outcome(&failed) {
            Some(Err(IssueError::Failed { message, .. })) => {
                assert_eq!(message, "SignerValidationFailure: bad usages")
            }
            other => panic!("{other:?}"),
        }
        let issued = with_status(&req, &[("Approved", "A", "ok")], Some("PEM"));
        assert_eq!(
            outcome(&issued).unwrap().unwrap(),
            Issued {
                chain_pem: "PEM".into(),
                ca_pem: String::new()
            }
        );
        // A False condition is no verdict.
        let mut not_denied = with_status(&req, &[("Denied", "x", "y")], None);
        not_denied
            .status
            .as_mut()
            .unwrap()
            .conditions
            .as_mut()
            .unwrap()[0]
            .status = "False".into();
        assert!(outcome(&not_denied).is_none());
    }

    #[test]
    fn status_summary_says_who_is_waited_for() {
        let req = issue_request(cert_request());
        assert!(describe_status(&with_status(&req, &[], None)).contains("not approved"));
        let s = describe_status(&with_status(
            &req,
            &[("Approved", "AutoApproved", "ok")],
            None,
        ));
        assert!(s.contains("Approved=True (AutoApproved: ok)"), "{s}");
        assert!(s.contains("example.com/workloads"), "{s}");
    }

    #[test]
    fn expiration_is_clamped_to_i32() {
        assert_eq!(expiration_seconds(Duration::from_secs(600)), 600);
        assert_eq!(expiration_seconds(Duration::from_secs(u64::MAX)), i32::MAX);
    }
}
