//! Assembling a trust bundle from PEM text: pure, no I/O.
//!
//! Sources come in the order the volume lists them; each is PEM text that may hold several
//! certificates. The bundle holds every certificate once (by DER), in source order and then in
//! order within the source, re-encoded as plain `CERTIFICATE` blocks, so text between blocks and
//! block headers never reach the pod. Entries that are not certificates (a `PRIVATE KEY` block
//! pasted by mistake, bad base64, DER that does not parse) are reported with the source, the
//! entry's index in it and the reason, and left out of the bundle.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

/// One source's PEM text with a label naming it for users, e.g. `ConfigMap shop/ca key ca.crt`.
/// The text is shared: a source read from the trust cache is the cache's one copy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourcePem {
    pub label: String,
    pub pem: Arc<str>,
}

impl SourcePem {
    pub fn new(label: impl Into<String>, pem: impl Into<Arc<str>>) -> SourcePem {
        SourcePem {
            label: label.into(),
            pem: pem.into(),
        }
    }
}

/// Why an entry was left out of the bundle.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RejectReason {
    /// A PEM block of another type. The type is named only when it is one of the standard
    /// labels (RFC 7468 and OpenSSL's); the content never is.
    #[error("{}, not a CERTIFICATE", pem_block_text(.0))]
    NotACertificate(String),
    #[error("has a BEGIN line without a matching END line")]
    Unterminated,
    #[error("is not valid base64")]
    Base64,
    #[error("is not an X.509 certificate: {0}")]
    Der(String),
}

/// PEM labels certvol names in messages (events reach whoever can see the pod's events):
/// anything else in a source is shown as "another type", never echoed.
const KNOWN_PEM_LABELS: &[&str] = &[
    "X509 CRL",
    "CERTIFICATE REQUEST",
    "NEW CERTIFICATE REQUEST",
    "PKCS7",
    "CMS",
    "PRIVATE KEY",
    "ENCRYPTED PRIVATE KEY",
    "RSA PRIVATE KEY",
    "EC PRIVATE KEY",
    "PUBLIC KEY",
    "RSA PUBLIC KEY",
    "TRUSTED CERTIFICATE",
    "ATTRIBUTE CERTIFICATE",
    "EC PARAMETERS",
    "DH PARAMETERS",
];

fn pem_block_text(label: &str) -> String {
    if KNOWN_PEM_LABELS.contains(&label) {
        format!("is a {label:?} PEM block")
    } else {
        "is a PEM block of another type".to_owned()
    }
}

/// An entry left out, with where it was.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejected {
    /// The source's label.
    pub source: String,
    /// Index of the PEM block within the source, from 0.
    pub index: usize,
    pub reason: RejectReason,
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} entry {} {}", self.source, self.index, self.reason)
    }
}

/// One certificate in the bundle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BundleCert {
    pub der: Vec<u8>,
    /// Label of the first source that held it.
    pub source: String,
    /// Its index within that source.
    pub index: usize,
    /// The subject, RFC 4514 style, for logs.
    pub subject: String,
}

/// The assembled bundle.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Bundle {
    pub certificates: Vec<BundleCert>,
    pub rejected: Vec<Rejected>,
}

impl Bundle {
    /// The bundle as PEM: one `CERTIFICATE` block per certificate, 64-column base64, each block
    /// ending in a newline. Empty when there are no certificates.
    pub fn pem(&self) -> String {
        let mut out = String::new();
        for cert in &self.certificates {
            out.push_str(&der_to_pem(&cert.der));
        }
        out
    }

    /// The DER of every certificate, in bundle order.
    pub fn ders(&self) -> impl Iterator<Item = &[u8]> {
        self.certificates.iter().map(|c| c.der.as_slice())
    }
}

/// Encodes one certificate as a PEM block.
pub fn der_to_pem(der: &[u8]) -> String {
    let b64 = B64.encode(der);
    let mut out = String::with_capacity(b64.len() + b64.len() / 64 + 60);
    out.push_str("-----BEGIN CERTIFICATE-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        // base64 output is ASCII, so any byte chunk is valid UTF-8.
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// One PEM entry of a source: a certificate's DER or why it is not one.
pub(crate) fn entries(text: &str) -> Vec<Result<Vec<u8>, RejectReason>> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("-----BEGIN ") {
        let after = &rest[start + "-----BEGIN ".len()..];
        let Some(label_end) = after.find("-----") else {
            out.push(Err(RejectReason::Unterminated));
            break;
        };
        let label = &after[..label_end];
        let body = &after[label_end + 5..];
        let end_marker = format!("-----END {label}-----");
        let Some(end) = body.find(&end_marker) else {
            out.push(Err(RejectReason::Unterminated));
            break;
        };
        rest = &body[end + end_marker.len()..];
        if label != "CERTIFICATE" {
            out.push(Err(RejectReason::NotACertificate(
                label.chars().take(40).collect(),
            )));
            continue;
        }
        // RFC 7468 allows no headers in CERTIFICATE blocks, but OpenSSL-style ones are
        // harmless: skip "Key: value" lines and read the base64 that follows.
        let b64: String = body[..end]
            .lines()
            .filter(|l| !l.contains(':'))
            .flat_map(str::chars)
            .filter(|c| !c.is_ascii_whitespace())
            .collect();
        let Ok(der) = B64.decode(b64.as_bytes()) else {
            out.push(Err(RejectReason::Base64));
            continue;
        };
        match x509_parser::parse_x509_certificate(&der) {
            Ok(([], _)) => out.push(Ok(der)),
            Ok(_) => out.push(Err(RejectReason::Der(
                "trailing bytes after the certificate".into(),
            ))),
            Err(e) => out.push(Err(RejectReason::Der(e.to_string()))),
        }
    }
    out
}

fn subject_of(der: &[u8]) -> String {
    x509_parser::parse_x509_certificate(der)
        .map(|(_, c)| c.subject().to_string())
        .unwrap_or_default()
}

/// Builds the bundle from `sources` in order. See the module docs for the rules.
pub fn assemble(sources: &[SourcePem]) -> Bundle {
    let mut bundle = Bundle::default();
    let mut seen: HashSet<Vec<u8>> = HashSet::new();
    for source in sources {
        for (index, entry) in entries(&source.pem).into_iter().enumerate() {
            match entry {
                Ok(der) => {
                    if seen.insert(der.clone()) {
                        bundle.certificates.push(BundleCert {
                            subject: subject_of(&der),
                            der,
                            source: source.label.clone(),
                            index,
                        });
                    }
                }
                Err(reason) => bundle.rejected.push(Rejected {
                    source: source.label.clone(),
                    index,
                    reason,
                }),
            }
        }
    }
    bundle
}

/// Label of the public root set in bundles and reports.
pub(crate) const PUBLIC_ROOTS_LABEL: &str = "public roots (webpki-root-certs)";

/// The well-known public roots (Mozilla's set as packaged by the webpki-root-certs crate) as a
/// source, so a bundle can replace a distribution's `ca-certificates.crt`.
pub fn public_roots() -> SourcePem {
    let mut pem = String::new();
    for der in webpki_root_certs::TLS_SERVER_ROOT_CERTS {
        pem.push_str(&der_to_pem(der));
    }
    SourcePem::new(PUBLIC_ROOTS_LABEL, pem)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

    /// A self-signed CA certificate named `cn`, as PEM.
    pub(crate) fn ca_pem(cn: &str) -> String {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().pem()
    }

    fn der_of(pem: &str) -> Vec<u8> {
        entries(pem).remove(0).unwrap()
    }

    #[test]
    fn assembly_table() {
        let a = ca_pem("A");
        let b = ca_pem("B");
        let c = ca_pem("C");
        let key =
            "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIA==\n-----END PRIVATE KEY-----\n";
        let garbage_b64 =
            "-----BEGIN CERTIFICATE-----\n!!!not base64!!!\n-----END CERTIFICATE-----\n";
        let not_der = "-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n";
        let unterminated = "-----BEGIN CERTIFICATE-----\nMIIB\n";
        // name, sources, expected subjects in order, expected rejections (source, index, kind)
        type Row<'a> = (
            &'a str,
            Vec<SourcePem>,
            Vec<&'a str>,
            Vec<(&'a str, usize, &'a str)>,
        );
        let rows: Vec<Row> = vec![
            ("empty", vec![], vec![], vec![]),
            (
                "source order then order within a source",
                vec![
                    SourcePem::new("s1", format!("{b}{a}")),
                    SourcePem::new("s2", c.clone()),
                ],
                vec!["CN=B", "CN=A", "CN=C"],
                vec![],
            ),
            (
                "duplicates by DER keep the first place",
                vec![
                    SourcePem::new("s1", a.clone()),
                    SourcePem::new("s2", format!("{b}{a}{b}")),
                ],
                vec!["CN=A", "CN=B"],
                vec![],
            ),
            (
                "comments and blank lines between blocks are dropped",
                vec![SourcePem::new(
                    "s1",
                    format!("# Issuer: A\n\n{a}\n\nsome text\n{b}"),
                )],
                vec!["CN=A", "CN=B"],
                vec![],
            ),
            (
                "a private key is reported, never written",
                vec![SourcePem::new("s1", format!("{a}{key}{b}"))],
                vec!["CN=A", "CN=B"],
                vec![("s1", 1, "PRIVATE KEY")],
            ),
            (
                "a label that is not a standard one is not echoed",
                vec![SourcePem::new(
                    "s1",
                    format!(
                        "{a}-----BEGIN hunter2 TOKEN-----\nAAAA\n-----END hunter2 TOKEN-----\n"
                    ),
                )],
                vec!["CN=A"],
                vec![("s1", 1, "a PEM block of another type")],
            ),
            (
                "bad base64, bad DER and an unterminated block are reported with their index",
                vec![
                    SourcePem::new("s1", format!("{garbage_b64}{a}")),
                    SourcePem::new("s2", format!("{b}{not_der}{unterminated}")),
                ],
                vec!["CN=A", "CN=B"],
                vec![
                    ("s1", 0, "base64"),
                    ("s2", 1, "not an X.509"),
                    ("s2", 2, "without a matching END"),
                ],
            ),
            (
                "text without PEM",
                vec![SourcePem::new("s1", "hello")],
                vec![],
                vec![],
            ),
        ];
        for (name, sources, subjects, rejected) in rows {
            let bundle = assemble(&sources);
            let got: Vec<&str> = bundle
                .certificates
                .iter()
                .map(|c| c.subject.as_str())
                .collect();
            assert_eq!(got, subjects, "{name}");
            assert_eq!(
                bundle.rejected.len(),
                rejected.len(),
                "{name}: {:?}",
                bundle.rejected
            );
            for (r, (src, idx, fragment)) in bundle.rejected.iter().zip(rejected) {
                assert_eq!((r.source.as_str(), r.index), (src, idx), "{name}");
                let msg = r.to_string();
                assert!(msg.contains(fragment), "{name}: {msg}");
                assert!(!msg.contains("hunter2"), "{name}: a label echoed: {msg}");
                assert!(
                    msg.starts_with(&format!("{src} entry {idx} ")),
                    "{name}: {msg}"
                );
            }
            // The written PEM holds exactly the accepted certificates, nothing else.
            let pem = bundle.pem();
            let reparsed: Vec<Vec<u8>> = entries(&pem).into_iter().map(Result::unwrap).collect();
            let ders: Vec<Vec<u8>> = bundle.ders().map(<[u8]>::to_vec).collect();
            assert_eq!(reparsed, ders, "{name}");
            assert!(!pem.contains("PRIVATE KEY"), "{name}");
            assert!(!pem.contains('#'), "{name}");
        }
    }

    #[test]
    fn assembly_is_deterministic_and_pem_is_canonical() {
        let a = ca_pem("A");
        let sources = vec![SourcePem::new("s", a.clone())];
        assert_eq!(assemble(&sources).pem(), assemble(&sources).pem());
        let pem = assemble(&sources).pem();
        assert!(pem.lines().all(|l| l.len() <= 64), "{pem}");
        assert_eq!(der_of(&pem), der_of(&a));
    }

    #[test]
    fn public_roots_are_many_parseable_cas() {
        let roots = public_roots();
        let bundle = assemble(&[roots]);
        assert!(bundle.rejected.is_empty(), "{:?}", bundle.rejected);
        assert!(
            bundle.certificates.len() > 100,
            "{}",
            bundle.certificates.len()
        );
        assert!(
            bundle
                .certificates
                .iter()
                .any(|c| c.subject.contains("ISRG Root X1")),
            "Let's Encrypt's root is in the set"
        );
    }
}
