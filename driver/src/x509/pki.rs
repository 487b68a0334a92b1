//! Certificate parsing and checks on PEM bytes: what the volume's files contain, whether the chain
//! leads to the CA, whether the key belongs to the certificate.

use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;
use x509_parser::x509::{SubjectPublicKeyInfo, X509Name};

use crate::x509::keys::{KeyError, PrivateKey};

/// Largest PEM input accepted: certificate chains are a few KiB, so anything this big is not one.
pub const MAX_PEM_BYTES: usize = 1024 * 1024;
/// Most certificates accepted in one PEM input. A chain is a leaf and a few intermediates and a
/// CA field holds one or a few roots; even the public root store has under 200. The bound keeps
/// parsing and chain checks of hostile input (1 MiB holds thousands of small certificates) short.
pub const MAX_CERTS: usize = 256;

/// Why certificates could not be parsed or did not check out.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PkiError {
    #[error("PEM input is {size} bytes, more than the {max} bytes accepted")]
    TooLarge { size: usize, max: usize },
    #[error("the PEM input holds more than {max} certificates, more than certvol accepts")]
    TooMany { max: usize },
    #[error("malformed PEM: {message}")]
    Pem { message: String },
    #[error("no CERTIFICATE block found in the PEM input")]
    NoCertificates,
    #[error("certificate #{index} in the PEM input cannot be parsed: {message}")]
    Parse { index: usize, message: String },
    #[error("the certificate chain is empty")]
    EmptyChain,
    #[error("no CA certificates to verify against")]
    NoTrustAnchors,
    #[error("certificate {subject:?} is not valid before {not_before} (checked at {now})")]
    NotYetValid {
        subject: String,
        not_before: String,
        now: String,
    },
    #[error("certificate {subject:?} expired at {not_after} (checked at {now})")]
    Expired {
        subject: String,
        not_after: String,
        now: String,
    },
    #[error("certificate {subject:?} is not signed by {issuer:?}: {message}")]
    BadSignature {
        subject: String,
        issuer: String,
        message: String,
    },
    #[error("certificate {subject:?} is used as an issuer but is not a CA")]
    NotCa { subject: String },
    #[error(
        "certificate {subject:?} (issuer {issuer:?}) is not signed by any of the {count} given CA \
         certificate(s)"
    )]
    Untrusted {
        subject: String,
        issuer: String,
        count: usize,
    },
    #[error(transparent)]
    Key(#[from] KeyError),
}

/// What a certificate says, in plain types.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    /// RFC 4514 string, most specific RDN first, e.g. `CN=web,O=Acme`.
    pub subject: String,
    pub issuer: String,
    /// Lower-case hex of the serial number's big-endian bytes.
    pub serial_hex: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    pub dns_names: Vec<String>,
    pub ip_addresses: Vec<IpAddr>,
    pub uris: Vec<String>,
    pub is_ca: bool,
    /// SubjectPublicKeyInfo DER.
    pub spki_der: Vec<u8>,
    /// e.g. `ECDSA P-256`, `RSA 2048`, `Ed25519` (the names `KeyAlgorithm::label` uses).
    pub key_algorithm: String,
    pub der: Vec<u8>,
}

/// Parses every CERTIFICATE block in `pem`, in order. Other PEM blocks are skipped; a malformed
/// block, an unparseable certificate or no certificate at all is an error.
pub fn parse_pem_chain(pem: &str) -> Result<Vec<CertInfo>, PkiError> {
    if pem.len() > MAX_PEM_BYTES {
        return Err(PkiError::TooLarge {
            size: pem.len(),
            max: MAX_PEM_BYTES,
        });
    }
    let mut out = Vec::new();
    for block in x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes()) {
        let block = block.map_err(|e| PkiError::Pem {
            message: e.to_string(),
        })?;
        if block.label != "CERTIFICATE" {
            continue;
        }
        if out.len() == MAX_CERTS {
            return Err(PkiError::TooMany { max: MAX_CERTS });
        }
        out.push(
            parse_der(&block.contents).map_err(|message| PkiError::Parse {
                index: out.len(),
                message,
            })?,
        );
    }
    if out.is_empty() {
        return Err(PkiError::NoCertificates);
    }
    Ok(out)
}

/// Parses one DER certificate.
pub fn parse_der_cert(der: &[u8]) -> Result<CertInfo, PkiError> {
    parse_der(der).map_err(|message| PkiError::Parse { index: 0, message })
}

fn parse_der(der: &[u8]) -> Result<CertInfo, String> {
    let (rest, cert) = X509Certificate::from_der(der).map_err(|e| e.to_string())?;
    if !rest.is_empty() {
        return Err(format!(
            "{} trailing bytes after the certificate",
            rest.len()
        ));
    }
    let validity = cert.validity();
    let mut info = CertInfo {
        subject: name_to_string(cert.subject()),
        issuer: name_to_string(cert.issuer()),
        serial_hex: hex::encode(cert.raw_serial()),
        not_before: to_system_time(validity.not_before.timestamp()),
        not_after: to_system_time(validity.not_after.timestamp()),
        dns_names: Vec::new(),
        ip_addresses: Vec::new(),
        uris: Vec::new(),
        is_ca: false,
        spki_der: cert.public_key().raw.to_vec(),
        key_algorithm: key_algorithm_name(cert.public_key()),
        der: der[..der.len() - rest.len()].to_vec(),
    };
    if let Some(bc) = cert.basic_constraints().map_err(|e| e.to_string())? {
        info.is_ca = bc.value.ca;
    }
    if let Some(san) = cert.subject_alternative_name().map_err(|e| e.to_string())? {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(d) => info.dns_names.push(d.to_string()),
                GeneralName::URI(u) => info.uris.push(u.to_string()),
                GeneralName::IPAddress(bytes) => {
                    if let Ok(v4) = <[u8; 4]>::try_from(*bytes) {
                        info.ip_addresses.push(IpAddr::from(v4));
                    } else if let Ok(v6) = <[u8; 16]>::try_from(*bytes) {
                        info.ip_addresses.push(IpAddr::from(v6));
                    } else {
                        return Err(format!("IP address SAN of {} bytes", bytes.len()));
                    }
                }
                _ => {}
            }
        }
    }
    Ok(info)
}

fn to_system_time(unix: i64) -> SystemTime {
    if unix >= 0 {
        UNIX_EPOCH + Duration::from_secs(unix.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_secs(unix.unsigned_abs())
    }
}

fn fmt_time(t: SystemTime) -> String {
    let secs = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    };
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|dt| {
            dt.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("{secs}s since the epoch"))
}

/// RFC 4514: RDNs in reverse DER order, `+` inside multi-valued RDNs, special characters escaped.
fn name_to_string(name: &X509Name<'_>) -> String {
    let mut rdns: Vec<String> = name
        .iter_rdn()
        .map(|rdn| {
            rdn.iter()
                .map(|atv| {
                    let arcs: Option<Vec<u64>> = atv.attr_type().iter().map(|i| i.collect());
                    let ty = arcs
                        .as_deref()
                        .and_then(crate::spec::subject::attribute_type_name)
                        .map(str::to_string)
                        .unwrap_or_else(|| atv.attr_type().to_id_string());
                    let value = match atv.as_str() {
                        Ok(s) => escape_value(s),
                        Err(_) => format!("#{}", hex::encode(atv.attr_value().data)),
                    };
                    format!("{ty}={value}")
                })
                .collect::<Vec<_>>()
                .join("+")
        })
        .collect();
    rdns.reverse();
    rdns.join(",")
}

fn escape_value(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let last = s.chars().count().saturating_sub(1);
    for (i, c) in s.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';' | '=')
            || (i == 0 && (c == '#' || c == ' '))
            || (i == last && c == ' ');
        if special {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn key_algorithm_name(spki: &SubjectPublicKeyInfo<'_>) -> String {
    let alg = &spki.algorithm.algorithm;
    if *alg == x509_parser::oid_registry::OID_PKCS1_RSAENCRYPTION {
        if let Ok(PublicKey::RSA(rsa)) = spki.parsed() {
            let modulus = rsa.modulus;
            let skip = modulus.iter().take_while(|b| **b == 0).count();
            let m = &modulus[skip..];
            let bits = m
                .first()
                .map(|b| m.len() * 8 - b.leading_zeros() as usize)
                .unwrap_or(0);
            return format!("RSA {bits}");
        }
        return "RSA".into();
    }
    if *alg == x509_parser::oid_registry::OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok());
        return match curve {
            Some(c) if c == x509_parser::oid_registry::OID_EC_P256 => "ECDSA P-256".into(),
            Some(c) if c == x509_parser::oid_registry::OID_NIST_EC_P384 => "ECDSA P-384".into(),
            Some(c) => format!("ECDSA {}", c.to_id_string()),
            None => "ECDSA".into(),
        };
    }
    if *alg == x509_parser::oid_registry::OID_SIG_ED25519 {
        return "Ed25519".into();
    }
    alg.to_id_string()
}

fn parse_cert(info: &CertInfo) -> Result<X509Certificate<'_>, PkiError> {
    X509Certificate::from_der(&info.der)
        .map(|(_, c)| c)
        .map_err(|e| PkiError::Parse {
            index: 0,
            message: e.to_string(),
        })
}

fn check_window(cert: &CertInfo, now: SystemTime) -> Result<(), PkiError> {
    if now < cert.not_before {
        return Err(PkiError::NotYetValid {
            subject: cert.subject.clone(),
            not_before: fmt_time(cert.not_before),
            now: fmt_time(now),
        });
    }
    if now > cert.not_after {
        return Err(PkiError::Expired {
            subject: cert.subject.clone(),
            not_after: fmt_time(cert.not_after),
            now: fmt_time(now),
        });
    }
    Ok(())
}

fn signed_by(cert: &CertInfo, issuer: &CertInfo) -> Result<(), String> {
    let parsed = parse_cert(cert).map_err(|e| e.to_string())?;
    let issuer_parsed = parse_cert(issuer).map_err(|e| e.to_string())?;
    parsed
        .verify_signature(Some(issuer_parsed.public_key()))
        .map_err(|e| e.to_string())
}

/// Checks that `chain` (leaf first) is valid at `now`: each certificate is signed by the next,
/// the last one is signed by (or is) one of `ca`, every issuer is a CA, and every certificate on
/// the path, the anchor included, is within its validity window.
pub fn verify_chain(chain: &[CertInfo], ca: &[CertInfo], now: SystemTime) -> Result<(), PkiError> {
    let Some(last) = chain.last() else {
        return Err(PkiError::EmptyChain);
    };
    if ca.is_empty() {
        return Err(PkiError::NoTrustAnchors);
    }
    for cert in chain {
        check_window(cert, now)?;
    }
    for pair in chain.windows(2) {
        let (cert, issuer) = (&pair[0], &pair[1]);
        if !issuer.is_ca {
            return Err(PkiError::NotCa {
                subject: issuer.subject.clone(),
            });
        }
        signed_by(cert, issuer).map_err(|message| PkiError::BadSignature {
            subject: cert.subject.clone(),
            issuer: issuer.subject.clone(),
            message,
        })?;
    }
    // The chain may end with the root itself.
    if let Some(anchor) = ca.iter().find(|a| a.der == last.der) {
        return check_window(anchor, now);
    }
    let mut not_ca = None;
    for anchor in ca {
        if signed_by(last, anchor).is_ok() {
            if !anchor.is_ca {
                not_ca = Some(anchor);
                continue;
            }
            return check_window(anchor, now);
        }
    }
    if let Some(anchor) = not_ca {
        return Err(PkiError::NotCa {
            subject: anchor.subject.clone(),
        });
    }
    Err(PkiError::Untrusted {
        subject: last.subject.clone(),
        issuer: last.issuer.clone(),
        count: ca.len(),
    })
}

/// Whether `key` is the private key of `cert`'s public key.
pub fn key_matches(cert: &CertInfo, key: &PrivateKey) -> Result<bool, PkiError> {
    let key_spki = key.public_key_der()?;
    if key_spki == cert.spki_der {
        return Ok(true);
    }
    // Encodings of the same key can differ (e.g. absent vs NULL parameters); compare the parts.
    let parse = |der: &[u8]| -> Result<(Vec<u8>, Vec<u8>), PkiError> {
        let (_, spki) = SubjectPublicKeyInfo::from_der(der).map_err(|e| PkiError::Parse {
            index: 0,
            message: format!("public key: {e}"),
        })?;
        Ok((
            spki.algorithm.algorithm.as_bytes().to_vec(),
            spki.subject_public_key.data.to_vec(),
        ))
    };
    Ok(parse(&key_spki)? == parse(&cert.spki_der)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::request::KeyAlgorithm;
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

    fn ts(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn dt(t: SystemTime) -> time::OffsetDateTime {
        time::OffsetDateTime::from(t)
    }

    const NOW: u64 = 1_800_000_000;

    struct Ca {
        params: CertificateParams,
        key: KeyPair,
        pem: String,
    }

    fn ca(name: &str) -> Ca {
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.not_before = dt(ts(NOW - 86400));
        params.not_after = dt(ts(NOW + 86400 * 365));
        let key = KeyPair::generate().unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        Ca { params, key, pem }
    }

    fn leaf(ca: &Ca, key: &PrivateKey, not_after: u64) -> String {
        let mut params =
            CertificateParams::new(vec!["web.example".to_string(), "10.1.2.3".to_string()])
                .unwrap();
        params.subject_alt_names.push(rcgen::SanType::URI(
            "spiffe://example/web".try_into().unwrap(),
        ));
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "web, primary");
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Acme");
        params.not_before = dt(ts(NOW - 3600));
        params.not_after = dt(ts(not_after));
        let kp = KeyPair::try_from(key.pkcs8_der()).unwrap();
        let issuer = Issuer::from_params(&ca.params, &ca.key);
        params.signed_by(&kp, &issuer).unwrap().pem()
    }

    #[test]
    fn parses_fields_of_a_chain() {
        let root = ca("Root CA");
        let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
        let pem = format!("junk before\n{}{}", leaf(&root, &key, NOW + 3600), root.pem);
        let chain = parse_pem_chain(&pem).unwrap();
        assert_eq!(chain.len(), 2);
        let l = &chain[0];
        // rcgen writes CN first, so RFC 4514 order puts it last.
        assert_eq!(l.subject, "O=Acme,CN=web\\, primary");
        assert_eq!(l.issuer, "CN=Root CA");
        assert_eq!(l.dns_names, ["web.example"]);
        assert_eq!(l.ip_addresses, ["10.1.2.3".parse::<IpAddr>().unwrap()]);
        assert_eq!(l.uris, ["spiffe://example/web"]);
        assert!(!l.is_ca);
        assert!(chain[1].is_ca);
        assert_eq!(l.not_after, ts(NOW + 3600));
        assert_eq!(l.not_before, ts(NOW - 3600));
        assert_eq!(l.key_algorithm, "ECDSA P-256");
        assert_eq!(l.spki_der, key.public_key_der().unwrap());
        assert!(!l.serial_hex.is_empty());
        assert!(key_matches(l, &key).unwrap());
    }

    #[test]
    fn key_algorithm_names_match_labels() {
        let root = ca("Root CA");
        for alg in [
            KeyAlgorithm::EcdsaP384,
            KeyAlgorithm::Ed25519,
            KeyAlgorithm::Rsa2048,
        ] {
            let key = PrivateKey::generate(alg).unwrap();
            let chain = parse_pem_chain(&leaf(&root, &key, NOW + 60)).unwrap();
            assert_eq!(chain[0].key_algorithm, alg.label());
            assert!(key_matches(&chain[0], &key).unwrap());
        }
    }

    #[test]
    fn good_chain_verifies() {
        let root = ca("Root CA");
        let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
        let chain = parse_pem_chain(&leaf(&root, &key, NOW + 3600)).unwrap();
        let anchors = parse_pem_chain(&root.pem).unwrap();
        verify_chain(&chain, &anchors, ts(NOW)).unwrap();
        // A chain that includes the root itself also verifies.
        let mut with_root = chain.clone();
        with_root.extend(anchors.clone());
        verify_chain(&with_root, &anchors, ts(NOW)).unwrap();
    }

    #[test]
    fn wrong_ca_is_untrusted() {
        let root = ca("Root CA");
        let other = ca("Other CA");
        let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
        let chain = parse_pem_chain(&leaf(&root, &key, NOW + 3600)).unwrap();
        let anchors = parse_pem_chain(&other.pem).unwrap();
        let err = verify_chain(&chain, &anchors, ts(NOW)).unwrap_err();
        assert!(matches!(err, PkiError::Untrusted { .. }), "{err}");
        assert!(err.to_string().contains("Root CA"), "{err}");
        // Wrong intermediate: the root is not signed by the other CA's key.
        let mut bad = chain.clone();
        bad.extend(parse_pem_chain(&other.pem).unwrap());
        let err = verify_chain(&bad, &parse_pem_chain(&root.pem).unwrap(), ts(NOW)).unwrap_err();
        assert!(matches!(err, PkiError::BadSignature { .. }), "{err}");
    }

    #[test]
    fn expired_and_not_yet_valid_are_reported() {
        let root = ca("Root CA");
        let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
        let chain = parse_pem_chain(&leaf(&root, &key, NOW + 3600)).unwrap();
        let anchors = parse_pem_chain(&root.pem).unwrap();
        let err = verify_chain(&chain, &anchors, ts(NOW + 3601)).unwrap_err();
        assert!(matches!(err, PkiError::Expired { .. }), "{err}");
        assert!(err.to_string().contains("expired at"), "{err}");
        let err = verify_chain(&chain, &anchors, ts(NOW - 7200)).unwrap_err();
        assert!(matches!(err, PkiError::NotYetValid { .. }), "{err}");
    }

    #[test]
    fn mismatched_key_is_detected() {
        let root = ca("Root CA");
        let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
        let other = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
        let chain = parse_pem_chain(&leaf(&root, &key, NOW + 3600)).unwrap();
        assert!(!key_matches(&chain[0], &other).unwrap());
    }

    #[test]
    fn bad_input_is_rejected() {
        assert!(matches!(
            parse_pem_chain("no pem here").unwrap_err(),
            PkiError::NoCertificates
        ));
        let garbage = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(matches!(
            parse_pem_chain(garbage).unwrap_err(),
            PkiError::Parse { index: 0, .. }
        ));
        let broken = "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n";
        assert!(parse_pem_chain(broken).is_err());
        let huge = "A".repeat(MAX_PEM_BYTES + 1);
        assert!(matches!(
            parse_pem_chain(&huge).unwrap_err(),
            PkiError::TooLarge { .. }
        ));
        assert!(matches!(
            verify_chain(&[], &[], ts(NOW)).unwrap_err(),
            PkiError::EmptyChain
        ));
    }

    #[test]
    fn thousands_of_certificates_are_refused_before_they_are_parsed() {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["a".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap()
            .pem();
        let at_limit = cert.repeat(MAX_CERTS);
        assert_eq!(parse_pem_chain(&at_limit).unwrap().len(), MAX_CERTS);
        // As many as fit under the size limit: well over a thousand.
        let n = MAX_PEM_BYTES / cert.len();
        assert!(n > 1000, "{n}");
        let thousands = cert.repeat(n);
        let started = std::time::Instant::now();
        let err = parse_pem_chain(&thousands).unwrap_err();
        assert!(matches!(err, PkiError::TooMany { max: MAX_CERTS }), "{err}");
        assert!(
            err.to_string().contains("more than 256 certificates"),
            "{err}"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
