//! What the node's request watch keeps of one request object ([`Cached`]): the few fields
//! issuance reads, bounded in size whatever a tenant put into the object, and the request kinds
//! it is read from ([`Watched`]).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{Api, Resource};
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::prelude::FromDer;

use crate::issuer::IssueError;

/// Longest condition reason / message kept: what a timeout message or an Event shows, not a
/// place to store megabytes.
const MAX_REASON: usize = 256;
pub(crate) const MAX_MESSAGE: usize = 1024;

/// One status condition as the cache keeps it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CachedCondition {
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    pub reason: Option<String>,
    pub message: Option<String>,
}

impl CachedCondition {
    /// Keeps a condition's fields, truncating reason and message.
    pub fn new(type_: &str, status: &str, reason: Option<&str>, message: Option<&str>) -> Self {
        CachedCondition {
            type_: truncated(type_, MAX_REASON),
            status: truncated(status, MAX_REASON),
            reason: reason.map(|r| truncated(r, MAX_REASON)),
            message: message.map(|m| truncated(m, MAX_MESSAGE)),
        }
    }
}

impl CachedCondition {
    /// What the cache keeps of each of an object's `conditions`.
    pub(crate) fn all<'a, C: ApiCondition + 'a>(
        conditions: impl IntoIterator<Item = &'a C>,
    ) -> Vec<Self> {
        conditions
            .into_iter()
            .map(|c| {
                let (type_, status, reason, message) = c.fields();
                CachedCondition::new(type_, status, reason, message)
            })
            .collect()
    }

    /// The condition as timeout messages show it: `Type=Status (Reason: message)`.
    pub(crate) fn describe(&self) -> String {
        let (type_, status) = (&self.type_, &self.status);
        match (self.reason.as_deref(), self.message.as_deref()) {
            (Some(r), Some(m)) if !m.is_empty() => format!("{type_}={status} ({r}: {m})"),
            (Some(r), _) => format!("{type_}={status} ({r})"),
            _ => format!("{type_}={status}"),
        }
    }
}

/// A status condition as an API object carries it: cert-manager's and the CSR API's have the
/// same four fields, which the cache keeps ([`CachedCondition::all`]).
pub(crate) trait ApiCondition {
    /// `(type, status, reason, message)`.
    fn fields(&self) -> (&str, &str, Option<&str>, Option<&str>);
}

fn truncated(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// A PEM field of a request's status as the cache keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pem {
    Text(Vec<u8>),
    /// Larger than [`crate::x509::pki::MAX_PEM_BYTES`]: only its size is kept, for the error.
    TooLarge(usize),
}

impl Pem {
    pub fn new(bytes: &[u8]) -> Self {
        if bytes.len() > crate::x509::pki::MAX_PEM_BYTES {
            Pem::TooLarge(bytes.len())
        } else {
            Pem::Text(bytes.to_vec())
        }
    }

    pub fn is_empty(&self) -> bool {
        matches!(self, Pem::Text(t) if t.is_empty())
    }

    /// The bytes this copy holds.
    fn weight(&self) -> usize {
        match self {
            Pem::Text(t) => t.len(),
            Pem::TooLarge(_) => 0,
        }
    }

    /// The field as text (see [`crate::issuer::pem_text`]).
    pub fn text(&self, request: &str, field: &str) -> Result<String, IssueError> {
        match self {
            Pem::Text(bytes) => crate::issuer::pem_text(request, field, bytes),
            Pem::TooLarge(len) => Err(crate::issuer::pem_too_large(request, field, *len)),
        }
    }
}

/// What the node keeps of one of its request objects: what waiting and adoption read, nothing
/// else (no annotations, labels, managedFields or the CSR itself), so that a cached object costs
/// a few KiB whatever a tenant put into it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cached {
    pub name: String,
    /// Empty for cluster-scoped kinds.
    pub namespace: String,
    pub uid: Option<String>,
    pub resource_version: Option<String>,
    pub conditions: Vec<CachedCondition>,
    /// `status.certificate`.
    pub certificate: Option<Pem>,
    /// `status.ca` (cert-manager only).
    pub ca: Option<Pem>,
    /// SHA-256 of the SubjectPublicKeyInfo in `spec.request`, `None` when it does not parse: an
    /// adopted request must be for our key.
    pub request_key: Option<[u8; 32]>,
    /// `spec.signerName` (CertificateSigningRequests only).
    pub signer_name: String,
}

impl Cached {
    /// The bytes a cached copy holds beyond its fixed size: what the byte budgets count.
    pub(crate) fn weight(&self) -> usize {
        let pem = |p: &Option<Pem>| p.as_ref().map_or(0, Pem::weight);
        let conditions: usize = self
            .conditions
            .iter()
            .map(|c| {
                c.type_.len()
                    + c.status.len()
                    + c.reason.as_ref().map_or(0, String::len)
                    + c.message.as_ref().map_or(0, String::len)
            })
            .sum();
        pem(&self.certificate)
            + pem(&self.ca)
            + conditions
            + self.name.len()
            + self.signer_name.len()
    }

    /// The fields of `meta` the cache keeps.
    pub fn from_meta(meta: &ObjectMeta) -> Self {
        Cached {
            name: meta.name.clone().unwrap_or_default(),
            namespace: meta.namespace.clone().unwrap_or_default(),
            uid: meta.uid.clone(),
            resource_version: meta.resource_version.clone(),
            ..Cached::default()
        }
    }

    pub fn condition(&self, type_: &str) -> Option<&CachedCondition> {
        self.conditions.iter().find(|c| c.type_ == type_)
    }
}

/// SHA-256 of the SubjectPublicKeyInfo of a PEM CSR, as [`Cached::request_key`] keeps it.
pub(crate) fn request_key_of_pem(pem: &[u8]) -> Option<[u8; 32]> {
    spki_of_pem(pem).map(|spki| Sha256::digest(spki).into())
}

/// SHA-256 of the SubjectPublicKeyInfo of a DER CSR (ours, to compare with
/// [`Cached::request_key`]).
pub(crate) fn request_key_of_der(der: &[u8]) -> Option<[u8; 32]> {
    spki_of_der(der).map(|spki| Sha256::digest(spki).into())
}

/// A request object kind the node watches.
pub(crate) trait Watched:
    Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static
{
    /// What the cache keeps of the object.
    fn cached(&self) -> Cached;

    /// The API of the objects in `namespace`, or of all of them. Cluster-scoped kinds ignore
    /// `namespace`.
    fn api(client: kube::Client, namespace: Option<&str>) -> Api<Self>;

    /// The tenant the object counts against in [`CacheLimits::per_namespace`](crate::issuer::watch::CacheLimits::per_namespace): its namespace,
    /// or for cluster-scoped kinds the pod namespace certvol recorded on it.
    fn scope(&self) -> String {
        self.meta().namespace.clone().unwrap_or_default()
    }
}

/// The raw SubjectPublicKeyInfo of a DER CSR, or `None` when it does not parse.
fn spki_of_der(der: &[u8]) -> Option<Vec<u8>> {
    let (_, csr) = X509CertificationRequest::from_der(der).ok()?;
    Some(csr.certification_request_info.subject_pki.raw.to_vec())
}

/// The raw SubjectPublicKeyInfo of a PEM CSR (`spec.request`), or `None` when it does not parse.
fn spki_of_pem(pem: &[u8]) -> Option<Vec<u8>> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem).ok()?;
    spki_of_der(&pem.contents)
}
