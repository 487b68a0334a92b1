//! The cert-manager `CertificateRequest` (cert-manager.io/v1) as the driver writes and reads it,
//! and the pure functions around it: building one from an [`IssueRequest`], naming labels, and
//! reading the outcome from the conditions cert-manager's controllers set.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use kube::CustomResource;
use serde::{Deserialize, Serialize};

use crate::issuer::cached::{
    ApiCondition, Cached, CachedCondition, Pem, Watched, request_key_of_pem,
};
use crate::issuer::filing::{Reasons, RequestObject};
use crate::issuer::{IssueError, IssueRequest, Issued};
use crate::kube::events;

use crate::issuer::labels::request_labels;
/// The label helpers began here; e2e and older callers name them by this path.
pub use crate::issuer::labels::{
    ANNOTATION_NODE_NAME, LABEL_NODE, LABEL_POD, LABEL_VOLUME, annotations, hashed_label,
    is_valid_label_value, label_value,
};

/// `spec` of a cert-manager `CertificateRequest`.
///
/// Only the driver's side of the contract is modelled; `username`, `groups`, `uid` and `extra`
/// are filled in by cert-manager's webhook from the creating identity and are never sent.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "cert-manager.io",
    version = "v1",
    kind = "CertificateRequest",
    plural = "certificaterequests",
    namespaced,
    status = "CertificateRequestStatus",
    schema = "disabled"
)]
#[serde(rename_all = "camelCase")]
pub struct CertificateRequestSpec {
    /// PEM-encoded PKCS#10 CSR; JSON carries it base64-encoded (a `format: byte` field).
    pub request: ByteString,
    pub issuer_ref: ObjectReference,
    /// Go duration string, e.g. `2160h0m0s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<String>,
    /// cert-manager spells it `isCA`, which camelCase would turn into `isCa`.
    #[serde(rename = "isCA", default, skip_serializing_if = "std::ops::Not::not")]
    pub is_ca: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub usages: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra: Option<BTreeMap<String, Vec<String>>>,
}

/// cert-manager's `issuerRef` (cmmeta.ObjectReference).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectReference {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub group: String,
}

/// `status` of a `CertificateRequest`, written by cert-manager's approver and issuer controllers.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CertificateRequestStatus {
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// PEM chain, leaf first; base64 in JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<ByteString>,
    /// PEM of the issuing CA; base64 in JSON. Often absent (ACME and many external issuers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<ByteString>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_time: Option<Time>,
}

/// One entry of `status.conditions`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,
}

impl ApiCondition for Condition {
    fn fields(&self) -> (&str, &str, Option<&str>, Option<&str>) {
        let (reason, message) = (self.reason.as_deref(), self.message.as_deref());
        (&self.type_, &self.status, reason, message)
    }
}

/// Formats `d` the way Go's `time.Duration.String()` does (`2160h0m0s`, `1m30s`, `1.5s`, `500ms`),
/// which is how cert-manager writes and expects `spec.duration`.
pub fn go_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".into();
    }
    if nanos < 1_000_000_000 {
        // Sub-second values use the largest unit that keeps an integer part, as Go does.
        let (unit, scale) = if nanos < 1_000 {
            ("ns", 1)
        } else if nanos < 1_000_000 {
            ("µs", 1_000)
        } else {
            ("ms", 1_000_000)
        };
        return format!("{}{unit}", fraction(nanos, scale));
    }
    let secs_total = d.as_secs();
    let hours = secs_total / 3600;
    let minutes = (secs_total % 3600) / 60;
    let seconds = fraction(
        u128::from(secs_total % 60) * 1_000_000_000 + u128::from(d.subsec_nanos()),
        1_000_000_000,
    );
    if hours > 0 {
        format!("{hours}h{minutes}m{seconds}s")
    } else if minutes > 0 {
        format!("{minutes}m{seconds}s")
    } else {
        format!("{seconds}s")
    }
}

/// `value / scale` as a decimal without trailing zeros (`1500, 1000` → `1.5`).
fn fraction(value: u128, scale: u128) -> String {
    let whole = value / scale;
    let rest = value % scale;
    if rest == 0 {
        return whole.to_string();
    }
    let digits = scale.ilog10() as usize;
    let frac = format!("{rest:0digits$}");
    format!("{whole}.{}", frac.trim_end_matches('0'))
}

/// Builds the `CertificateRequest` for `req`, labelled for `node_label`'s watch and owned by the pod
/// so that deleting the pod garbage-collects it.
pub fn build(req: &IssueRequest, node_id: &str) -> CertificateRequest {
    let cert = &req.cert;
    let pod = &cert.pod;
    let labels = request_labels(node_id, &req.volume_id, pod);
    // Without a uid the reference would be rejected (and could name a different pod with the same
    // name); the request then simply outlives the pod until `forget` deletes it.
    let owner_references = (!pod.uid.is_empty()).then(|| {
        vec![OwnerReference {
            api_version: "v1".into(),
            kind: "Pod".into(),
            name: pod.name.clone(),
            uid: pod.uid.clone(),
            controller: None,
            block_owner_deletion: None,
        }]
    });
    let metadata = ObjectMeta {
        name: Some(req.name.clone()),
        namespace: Some(pod.namespace.clone()),
        labels: Some(labels),
        annotations: Some(annotations(cert, node_id)),
        owner_references,
        ..ObjectMeta::default()
    };
    let spec = CertificateRequestSpec {
        request: ByteString(req.csr_pem.as_bytes().to_vec()),
        issuer_ref: ObjectReference {
            name: cert.issuer.name.clone(),
            kind: cert.issuer.kind.clone(),
            group: cert.issuer.group.clone(),
        },
        duration: Some(go_duration(cert.duration)),
        is_ca: cert.is_ca,
        usages: cert.usages.iter().map(|u| u.name().to_owned()).collect(),
        ..CertificateRequestSpec::default()
    };
    CertificateRequest {
        metadata,
        spec,
        status: None,
    }
}

/// `namespace/name` of a request, for messages.
pub fn display_name(cr: &Cached) -> String {
    format!("{}/{}", cr.namespace, cr.name)
}

fn condition<'a>(cr: &'a Cached, type_: &str) -> Option<&'a CachedCondition> {
    cr.condition(type_)
}

fn message_of(c: &CachedCondition) -> String {
    match (c.reason.as_deref(), c.message.as_deref()) {
        (_, Some(m)) if !m.is_empty() => m.to_owned(),
        (Some(r), _) if !r.is_empty() => format!("{} (no message)", r),
        _ => "no message".to_owned(),
    }
}

/// [`outcome_of`] of a whole request.
pub fn outcome(cr: &CertificateRequest) -> Option<Result<Issued, IssueError>> {
    outcome_of(&cr.cached())
}

/// What a request's status says, as cert-manager's controllers write it: `None` while pending,
/// otherwise the final result. Denied and InvalidRequest win over Ready, since cert-manager sets
/// them first and never retries a request in a final state.
pub fn outcome_of(cr: &Cached) -> Option<Result<Issued, IssueError>> {
    let request = display_name(cr);
    if let Some(c) = condition(cr, "Denied").filter(|c| c.status == "True") {
        return Some(Err(IssueError::Denied {
            request,
            message: message_of(c),
        }));
    }
    if let Some(c) = condition(cr, "InvalidRequest").filter(|c| c.status == "True") {
        return Some(Err(IssueError::Invalid {
            request,
            message: message_of(c),
        }));
    }
    let ready = condition(cr, "Ready")?;
    match (ready.status.as_str(), ready.reason.as_deref()) {
        ("False", Some("Failed")) => Some(Err(IssueError::Failed {
            request,
            message: message_of(ready),
        })),
        ("False", Some("Denied")) => Some(Err(IssueError::Denied {
            request,
            message: message_of(ready),
        })),
        ("True", _) => {
            let chain = cr.certificate.as_ref().filter(|c| !c.is_empty())?;
            let chain_pem = match chain.text(&request, "status.certificate") {
                Ok(pem) => pem,
                Err(e) => return Some(Err(e)),
            };
            let ca_pem = match cr.ca.as_ref() {
                None => String::new(),
                Some(ca) => match ca.text(&request, "status.ca") {
                    Ok(pem) => pem,
                    Err(e) => return Some(Err(e)),
                },
            };
            Some(Ok(Issued { chain_pem, ca_pem }))
        }
        _ => None,
    }
}

/// [`describe_cached`] of a whole request.
pub fn describe_status(cr: &CertificateRequest) -> String {
    describe_cached(&cr.cached())
}

/// A one-line summary of the conditions, for timeout messages (`Approved=True, Ready=False
/// (Pending: Waiting on certificate issuance...)`), or `no conditions yet`.
pub fn describe_cached(cr: &Cached) -> String {
    if cr.conditions.is_empty() {
        return "no conditions yet (not approved by any approver)".into();
    }
    cr.conditions
        .iter()
        .map(CachedCondition::describe)
        .collect::<Vec<_>>()
        .join(", ")
}

impl Watched for CertificateRequest {
    fn api(client: kube::Client, namespace: Option<&str>) -> kube::Api<Self> {
        match namespace {
            Some(namespace) => kube::Api::namespaced(client, namespace),
            None => kube::Api::all(client),
        }
    }

    fn cached(&self) -> Cached {
        let mut cached = Cached::from_meta(&self.metadata);
        cached.request_key = request_key_of_pem(&self.spec.request.0);
        if let Some(status) = &self.status {
            cached.conditions = CachedCondition::all(&status.conditions);
            cached.certificate = status.certificate.as_ref().map(|c| Pem::new(&c.0));
            cached.ca = status.ca.as_ref().map(|c| Pem::new(&c.0));
        }
        cached
    }
}

impl RequestObject for CertificateRequest {
    const REASONS: Reasons = Reasons {
        denied: events::REASON_DENIED,
        failed: events::REASON_FAILED,
        invalid: events::REASON_INVALID,
        timeout: events::REASON_TIMEOUT,
    };
    // Requests are owned by their pod, so deleting the pod garbage-collects them.
    const DELETED_HINT: &'static str = " (was its pod deleted?)";
    const CREATE_NOT_FOUND_HINT: Option<&'static str> = Some("is cert-manager's CRD installed?");

    fn describe_status(cached: &Cached) -> String {
        describe_cached(cached)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::spec::request::{
        CertRequest, FileNames, IssuerRef, KeyAlgorithm, KeyEncoding, KeyUsage, PodInfo, Sans,
        Subject,
    };

    pub(crate) fn cert_request() -> CertRequest {
        CertRequest {
            pod: PodInfo {
                name: "web-0".into(),
                namespace: "shop".into(),
                uid: "6f1c1f8e-1111-2222-3333-444455556666".into(),
                service_account: "web".into(),
            },
            issuer: IssuerRef {
                name: "ca-issuer".into(),
                kind: "ClusterIssuer".into(),
                group: "cert-manager.io".into(),
            },
            kube_csr: None,
            subject: Subject::default(),
            sans: Sans::default(),
            duration: Duration::from_secs(90 * 24 * 3600),
            renew_before: None,
            is_ca: false,
            usages: vec![
                KeyUsage::DigitalSignature,
                KeyUsage::KeyEncipherment,
                KeyUsage::ServerAuth,
            ],
            key_algorithm: KeyAlgorithm::EcdsaP256,
            key_encoding: KeyEncoding::Pkcs8,
            reuse_private_key: false,
            renew: true,
            files: FileNames::default(),
            fs_group: None,
            annotations: BTreeMap::from([("team.example.com/owner".into(), "payments".into())]),
            trust: None,
        }
    }

    pub(crate) fn issue_request(cert: CertRequest) -> IssueRequest {
        IssueRequest {
            name: "certvol-0123456789abcdef0123-1".into(),
            volume_id: format!("csi-{}", "ab".repeat(32)),
            node_id: "node-1".into(),
            csr_pem:
                "-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----\n"
                    .into(),
            csr_der: vec![1, 2, 3],
            cert: Arc::new(cert),
            token: None,
            worker: Default::default(),
        }
    }

    fn cr_with(
        conditions: &[(&str, &str, &str, &str)],
        cert: Option<&str>,
        ca: Option<&str>,
    ) -> CertificateRequest {
        with_status(&issue_request(cert_request()), conditions, cert, ca)
    }

    /// The request `req` files, with a status of (type, status, reason, message) conditions.
    pub(crate) fn with_status(
        req: &IssueRequest,
        conditions: &[(&str, &str, &str, &str)],
        cert: Option<&str>,
        ca: Option<&str>,
    ) -> CertificateRequest {
        let mut cr = build(req, "node-1");
        cr.status = Some(CertificateRequestStatus {
            conditions: conditions
                .iter()
                .map(|(t, s, r, m)| Condition {
                    type_: (*t).into(),
                    status: (*s).into(),
                    reason: Some((*r).into()),
                    message: Some((*m).into()),
                    last_transition_time: None,
                })
                .collect(),
            certificate: cert.map(|c| ByteString(c.as_bytes().to_vec())),
            ca: ca.map(|c| ByteString(c.as_bytes().to_vec())),
            failure_time: None,
        });
        cr
    }

    #[test]
    fn go_durations_match_go_formatting() {
        let cases: &[(Duration, &str)] = &[
            (Duration::ZERO, "0s"),
            (Duration::from_secs(90 * 24 * 3600), "2160h0m0s"),
            (Duration::from_secs(3600), "1h0m0s"),
            (Duration::from_secs(5400), "1h30m0s"),
            (Duration::from_secs(90), "1m30s"),
            (Duration::from_secs(60), "1m0s"),
            (Duration::from_secs(5), "5s"),
            (Duration::from_millis(1500), "1.5s"),
            (Duration::from_millis(3_600_250), "1h0m0.25s"),
            (Duration::from_millis(500), "500ms"),
            (Duration::from_micros(1500), "1.5ms"),
            (Duration::from_nanos(1500), "1.5µs"),
            (Duration::from_nanos(7), "7ns"),
        ];
        for (d, want) in cases {
            assert_eq!(go_duration(*d), *want, "{d:?}");
        }
    }

    #[test]
    fn built_request_carries_labels_owner_annotations_and_spec() {
        let req = issue_request(cert_request());
        let cr = build(&req, "node-1");
        assert_eq!(cr.metadata.name.as_deref(), Some(req.name.as_str()));
        assert_eq!(cr.metadata.namespace.as_deref(), Some("shop"));
        let labels = cr.metadata.labels.clone().unwrap();
        assert_eq!(labels[LABEL_NODE], "node-1");
        assert_eq!(labels[LABEL_POD], "web-0");
        assert_eq!(labels[LABEL_VOLUME], hashed_label(&req.volume_id));
        assert!(labels.values().all(|v| is_valid_label_value(v)));
        let owners = cr.metadata.owner_references.clone().unwrap();
        assert_eq!(owners.len(), 1);
        assert_eq!(
            (
                owners[0].api_version.as_str(),
                owners[0].kind.as_str(),
                owners[0].name.as_str()
            ),
            ("v1", "Pod", "web-0")
        );
        assert_eq!(owners[0].uid, "6f1c1f8e-1111-2222-3333-444455556666");
        assert_eq!(
            cr.metadata.annotations.clone().unwrap()["team.example.com/owner"],
            "payments"
        );
        assert_eq!(
            cr.metadata.annotations.clone().unwrap()[ANNOTATION_NODE_NAME],
            "node-1"
        );
        // A node name too long for a label: the label is its hash, the annotation the name.
        let long = format!("node-{}", "x".repeat(80));
        let cr_long = build(&req, &long);
        assert_eq!(
            cr_long.metadata.labels.unwrap()[LABEL_NODE],
            label_value(&long)
        );
        assert_eq!(
            cr_long.metadata.annotations.unwrap()[ANNOTATION_NODE_NAME],
            long
        );

        let json = serde_json::to_value(&cr).unwrap();
        assert_eq!(json["apiVersion"], "cert-manager.io/v1");
        assert_eq!(json["kind"], "CertificateRequest");
        let spec = &json["spec"];
        use base64::Engine;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(spec["request"].as_str().unwrap())
            .unwrap();
        assert_eq!(decoded, req.csr_pem.as_bytes());
        assert_eq!(spec["duration"], "2160h0m0s");
        assert_eq!(
            spec["issuerRef"],
            serde_json::json!({"name": "ca-issuer", "kind": "ClusterIssuer", "group": "cert-manager.io"})
        );
        assert_eq!(
            spec["usages"],
            serde_json::json!(["digital signature", "key encipherment", "server auth"])
        );
        // Webhook-owned identity fields are never sent.
        for absent in ["username", "groups", "uid", "extra", "isCa"] {
            assert!(spec.get(absent).is_none(), "{absent} sent");
        }
        assert!(json.get("status").is_none_or(|s| s.is_null()));
    }

    #[test]
    fn is_ca_is_spelled_like_cert_manager() {
        let mut cert = cert_request();
        cert.is_ca = true;
        cert.usages = vec![KeyUsage::CertSign, KeyUsage::DigitalSignature];
        let json = serde_json::to_value(build(&issue_request(cert), "n")).unwrap();
        assert_eq!(json["spec"]["isCA"], true);
        assert!(json["spec"].get("isCa").is_none());
        let back: CertificateRequest = serde_json::from_value(json).unwrap();
        assert!(back.spec.is_ca);
    }

    #[test]
    fn long_pod_names_are_hashed_and_missing_uid_skips_the_owner() {
        let mut cert = cert_request();
        cert.pod.name = format!("{}-0", "p".repeat(100));
        cert.pod.uid.clear();
        cert.annotations.clear();
        let cr = build(&issue_request(cert.clone()), "n");
        let labels = cr.metadata.labels.unwrap();
        assert_eq!(labels[LABEL_POD], hashed_label(&cert.pod.name));
        assert!(cr.metadata.owner_references.is_none());
        // Without pass-through annotations only certvol's own remains.
        assert_eq!(
            cr.metadata.annotations.unwrap(),
            BTreeMap::from([(ANNOTATION_NODE_NAME.to_owned(), "n".to_owned())])
        );
    }

    #[test]
    fn status_from_the_api_server_parses() {
        // As the API server returns it: byte fields base64, timestamps RFC 3339.
        let json = serde_json::json!({
            "apiVersion": "cert-manager.io/v1",
            "kind": "CertificateRequest",
            "metadata": {"name": "r", "namespace": "ns", "uid": "u1", "resourceVersion": "7"},
            "spec": {"request": "UEVN", "issuerRef": {"name": "i"}, "isCA": false, "username": "system:serviceaccount:ns:web"},
            "status": {
                "conditions": [
                    {"type": "Approved", "status": "True", "reason": "cert-manager.io", "message": "ok", "lastTransitionTime": "2026-11-23T11:00:00Z"},
                    {"type": "Ready", "status": "True", "reason": "Issued", "message": "Certificate fetched from issuer successfully", "lastTransitionTime": "2026-11-23T11:00:01Z"}
                ],
                "certificate": "TEVBRg==",
                "ca": ""
            }
        });
        let cr: CertificateRequest = serde_json::from_value(json).unwrap();
        assert_eq!(cr.spec.request.0, b"PEM");
        assert_eq!(
            cr.spec.username.as_deref(),
            Some("system:serviceaccount:ns:web")
        );
        let issued = outcome(&cr).unwrap().unwrap();
        assert_eq!(issued.chain_pem, "LEAF");
        assert_eq!(issued.ca_pem, "", "an empty status.ca is not an error");
    }

    #[test]
    fn outcome_follows_cert_manager_conditions() {
        const LEAF: &str = "-----BEGIN CERTIFICATE-----\nleaf\n-----END CERTIFICATE-----\n";
        const CA: &str = "-----BEGIN CERTIFICATE-----\nca\n-----END CERTIFICATE-----\n";
        #[derive(Debug, PartialEq)]
        enum Want {
            Pending,
            /// The expected `ca_pem`.
            Ok(&'static str),
            Denied(&'static str),
            Invalid(&'static str),
            Failed(&'static str),
        }
        let approved = (
            "Approved",
            "True",
            "cert-manager.io",
            "Certificate request has been approved by cert-manager.io",
        );
        let cases: Vec<(&str, CertificateRequest, Want)> = vec![
            (
                "no status",
                {
                    let mut cr = cr_with(&[], None, None);
                    cr.status = None;
                    cr
                },
                Want::Pending,
            ),
            ("no conditions", cr_with(&[], None, None), Want::Pending),
            (
                "approved only",
                cr_with(&[approved], None, None),
                Want::Pending,
            ),
            (
                "ready pending",
                cr_with(
                    &[
                        approved,
                        (
                            "Ready",
                            "False",
                            "Pending",
                            "Waiting on certificate issuance from order",
                        ),
                    ],
                    None,
                    None,
                ),
                Want::Pending,
            ),
            (
                "ready unknown",
                cr_with(&[("Ready", "Unknown", "Pending", "")], None, None),
                Want::Pending,
            ),
            (
                "issued with ca",
                cr_with(
                    &[
                        approved,
                        (
                            "Ready",
                            "True",
                            "Issued",
                            "Certificate fetched from issuer successfully",
                        ),
                    ],
                    Some(LEAF),
                    Some(CA),
                ),
                Want::Ok(CA),
            ),
            (
                "issued without ca",
                cr_with(
                    &[approved, ("Ready", "True", "Issued", "ok")],
                    Some(LEAF),
                    None,
                ),
                Want::Ok(""),
            ),
            (
                "ready true but no certificate yet",
                cr_with(&[("Ready", "True", "Issued", "ok")], None, None),
                Want::Pending,
            ),
            (
                "ready true, empty certificate",
                cr_with(&[("Ready", "True", "Issued", "ok")], Some(""), None),
                Want::Pending,
            ),
            (
                "denied",
                cr_with(
                    &[(
                        "Denied",
                        "True",
                        "policy.cert-manager.io",
                        "No policy approved this request",
                    )],
                    None,
                    None,
                ),
                Want::Denied("No policy approved this request"),
            ),
            (
                "denied then ready denied",
                cr_with(
                    &[
                        ("Denied", "True", "policy", "nope"),
                        (
                            "Ready",
                            "False",
                            "Denied",
                            "The CertificateRequest was denied by an approval controller",
                        ),
                    ],
                    None,
                    None,
                ),
                Want::Denied("nope"),
            ),
            (
                "ready denied alone",
                cr_with(
                    &[(
                        "Ready",
                        "False",
                        "Denied",
                        "The CertificateRequest was denied by an approval controller",
                    )],
                    None,
                    None,
                ),
                Want::Denied("The CertificateRequest was denied by an approval controller"),
            ),
            (
                "denied false is not a denial",
                cr_with(&[("Denied", "False", "x", "y")], None, None),
                Want::Pending,
            ),
            (
                "invalid request",
                cr_with(
                    &[(
                        "InvalidRequest",
                        "True",
                        "SecretMismatch",
                        "issuer does not support isCA",
                    )],
                    None,
                    None,
                ),
                Want::Invalid("issuer does not support isCA"),
            ),
            (
                "failed",
                cr_with(
                    &[
                        approved,
                        (
                            "Ready",
                            "False",
                            "Failed",
                            "Failed to sign certificate: CA expired",
                        ),
                    ],
                    None,
                    None,
                ),
                Want::Failed("Failed to sign certificate: CA expired"),
            ),
            (
                "failed without message names the reason",
                cr_with(&[("Ready", "False", "Failed", "")], None, None),
                Want::Failed("Failed (no message)"),
            ),
            (
                "denied wins over issued",
                cr_with(
                    &[
                        ("Denied", "True", "p", "late denial"),
                        ("Ready", "True", "Issued", "ok"),
                    ],
                    Some(LEAF),
                    None,
                ),
                Want::Denied("late denial"),
            ),
        ];
        for (name, cr, want) in cases {
            match (outcome(&cr), want) {
                (None, Want::Pending) => {}
                (Some(Ok(issued)), Want::Ok(ca)) => {
                    assert_eq!(issued.chain_pem, LEAF, "{name}");
                    assert_eq!(issued.ca_pem, ca, "{name}");
                }
                (Some(Err(IssueError::Denied { request, message })), Want::Denied(m)) => {
                    assert_eq!(request, "shop/certvol-0123456789abcdef0123-1", "{name}");
                    assert_eq!(message, m, "{name}");
                }
                (Some(Err(IssueError::Invalid { message, .. })), Want::Invalid(m))
                | (Some(Err(IssueError::Failed { message, .. })), Want::Failed(m)) => {
                    assert_eq!(message, m, "{name}")
                }
                (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn non_utf8_certificate_is_a_failure_not_a_panic() {
        let mut cr = cr_with(&[("Ready", "True", "Issued", "ok")], Some("x"), None);
        cr.status.as_mut().unwrap().certificate = Some(ByteString(vec![0xff, 0xfe]));
        assert!(matches!(outcome(&cr), Some(Err(IssueError::Failed { .. }))));
    }

    #[test]
    fn oversized_certificate_or_ca_fails_naming_the_field_and_the_limit() {
        let max = crate::x509::pki::MAX_PEM_BYTES;
        let huge = "A".repeat(max + 1);
        for (cert, ca, field) in [
            (huge.as_str(), None, "status.certificate"),
            ("x", Some(huge.as_str()), "status.ca"),
        ] {
            let cr = cr_with(&[("Ready", "True", "Issued", "ok")], Some(cert), ca);
            match outcome(&cr) {
                Some(Err(IssueError::Failed { message, .. })) => assert!(
                    message.starts_with(&format!("{field} is {} bytes", max + 1))
                        && message.contains(&format!("{max} bytes certvol accepts")),
                    "{message}"
                ),
                other => panic!("{field}: {other:?}"),
            }
        }
        // At the limit it is still passed on (the PEM parser then judges the content).
        let at_limit = "A".repeat(max);
        let cr = cr_with(&[("Ready", "True", "Issued", "ok")], Some(&at_limit), None);
        assert!(matches!(outcome(&cr), Some(Ok(_))));
    }

    #[test]
    fn describe_status_summarises_conditions() {
        assert!(describe_status(&cr_with(&[], None, None)).starts_with("no conditions yet"));
        assert_eq!(
            describe_status(&cr_with(
                &[
                    ("Approved", "True", "cert-manager.io", "ok"),
                    ("Ready", "False", "Pending", "")
                ],
                None,
                None
            )),
            "Approved=True (cert-manager.io: ok), Ready=False (Pending)"
        );
    }
}
