//! What a PKCS#10 certificate signing request holds: the subject name and the requested
//! extensions, as DER. Signing it is the key's part ([`build_csr`](crate::x509::keys::build_csr)).
//!
//! The extension request matches what cert-manager's webhook compares against the
//! CertificateRequest spec: KeyUsage bits are exactly the non-extended usages (plus `cert sign`
//! when `is_ca`), ExtendedKeyUsage exactly the extended ones (omitted when there are none), and
//! BasicConstraints states `is_ca`. An empty usage list means cert-manager's default,
//! `digital signature` + `key encipherment`.

use crate::spec::request::{CertRequest, KeyUsage, Sans, Subject};
use crate::spec::subject::LiteralSubject;
use crate::x509::der::{self, oid};

/// A PKCS#10 certificate signing request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Csr {
    pub der: Vec<u8>,
    pub pem: String,
}

/// The CertificationRequestInfo for `req` with the key's SubjectPublicKeyInfo `spki`: the part
/// of the request the key signs. The error is a one-line message.
pub(crate) fn request_info(req: &CertRequest, spki: &[u8]) -> Result<Vec<u8>, String> {
    let subject = subject_der(&req.subject);

    let mut extensions = Vec::new();
    if let Some(san) = san_extension(&req.sans, subject == EMPTY_NAME)? {
        extensions.push(san);
    }
    let usages = effective_usages(&req.usages);
    if let Some(ku) = key_usage_extension(usages, req.is_ca) {
        extensions.push(ku);
    }
    if let Some(eku) = ext_key_usage_extension(usages) {
        extensions.push(eku);
    }
    extensions.push(basic_constraints_extension(req.is_ca));

    // extensionRequest (PKCS#9): SEQUENCE { OID, SET { Extensions } }
    let ext_request = der::seq(&[
        &der::oid(oid::EXTENSION_REQUEST),
        &der::set_of(vec![der::tlv(der::SEQUENCE, &extensions.concat())]),
    ]);
    Ok(der::seq(&[
        &der::uint(&[0]),
        &subject,
        spki,
        &der::tlv(0xa0, &ext_request),
    ]))
}

/// cert-manager's default when `usages` is unset.
const DEFAULT_USAGES: [KeyUsage; 2] = [KeyUsage::DigitalSignature, KeyUsage::KeyEncipherment];

pub(crate) fn effective_usages(usages: &[KeyUsage]) -> &[KeyUsage] {
    if usages.is_empty() {
        &DEFAULT_USAGES
    } else {
        usages
    }
}

/// The DER of an empty Name (`SEQUENCE {}`).
pub(crate) const EMPTY_NAME: [u8; 2] = [0x30, 0x00];

/// Bit number in the KeyUsage BIT STRING (RFC 5280 4.2.1.3); cert-manager maps both `signing`
/// and `digital signature` to digitalSignature.
fn key_usage_bit(usage: KeyUsage) -> Option<u8> {
    Some(match usage {
        KeyUsage::Signing | KeyUsage::DigitalSignature => 0,
        KeyUsage::ContentCommitment => 1,
        KeyUsage::KeyEncipherment => 2,
        KeyUsage::DataEncipherment => 3,
        KeyUsage::KeyAgreement => 4,
        KeyUsage::CertSign => 5,
        KeyUsage::CrlSign => 6,
        KeyUsage::EncipherOnly => 7,
        KeyUsage::DecipherOnly => 8,
        _ => return None,
    })
}

/// ExtendedKeyUsage OID, as cert-manager maps it (`s/mime` and `email protection` are the same
/// OID).
fn ext_key_usage_oid(usage: KeyUsage) -> Option<&'static [u64]> {
    Some(match usage {
        KeyUsage::Any => &[2, 5, 29, 37, 0],
        KeyUsage::ServerAuth => &[1, 3, 6, 1, 5, 5, 7, 3, 1],
        KeyUsage::ClientAuth => &[1, 3, 6, 1, 5, 5, 7, 3, 2],
        KeyUsage::CodeSigning => &[1, 3, 6, 1, 5, 5, 7, 3, 3],
        KeyUsage::EmailProtection | KeyUsage::SMime => &[1, 3, 6, 1, 5, 5, 7, 3, 4],
        KeyUsage::IpsecEndSystem => &[1, 3, 6, 1, 5, 5, 7, 3, 5],
        KeyUsage::IpsecTunnel => &[1, 3, 6, 1, 5, 5, 7, 3, 6],
        KeyUsage::IpsecUser => &[1, 3, 6, 1, 5, 5, 7, 3, 7],
        KeyUsage::Timestamping => &[1, 3, 6, 1, 5, 5, 7, 3, 8],
        KeyUsage::OcspSigning => &[1, 3, 6, 1, 5, 5, 7, 3, 9],
        KeyUsage::MicrosoftSgc => &[1, 3, 6, 1, 4, 1, 311, 10, 3, 3],
        KeyUsage::NetscapeSgc => &[2, 16, 840, 1, 113730, 4, 1],
        _ => return None,
    })
}

/// Critical KeyUsage extension for the non-extended usages (plus keyCertSign when `is_ca`), or
/// `None` when there are none.
pub(crate) fn key_usage_extension(usages: &[KeyUsage], is_ca: bool) -> Option<Vec<u8>> {
    let mut bits: u16 = 0;
    for bit in usages.iter().filter_map(|u| key_usage_bit(*u)) {
        bits |= 1 << bit;
    }
    if is_ca {
        bits |= 1 << 5;
    }
    key_usage_extension_bits(bits)
}

/// KeyUsage from a mask where bit `n` is RFC 5280's bit `n`.
pub(crate) fn key_usage_extension_bits(bits: u16) -> Option<Vec<u8>> {
    if bits == 0 {
        return None;
    }
    // Named-bit BIT STRINGs drop trailing zero bits in DER; bit 0 is the most significant bit of
    // the first byte.
    let nbits = 16 - bits.leading_zeros() as usize; // highest named bit in use + 1
    let nbytes = nbits.div_ceil(8);
    let mut bytes = vec![0u8; nbytes];
    for i in 0..nbits {
        if bits & (1 << i) != 0 {
            bytes[i / 8] |= 0x80 >> (i % 8);
        }
    }
    let unused = (nbytes * 8 - nbits) as u8;
    let mut content = vec![unused];
    content.extend_from_slice(&bytes);
    Some(der::extension(
        oid::KEY_USAGE,
        true,
        &der::tlv(der::BIT_STRING, &content),
    ))
}

/// ExtendedKeyUsage extension for the extended usages (deduplicated by OID), or `None`.
pub(crate) fn ext_key_usage_extension(usages: &[KeyUsage]) -> Option<Vec<u8>> {
    let mut oids: Vec<&[u64]> = Vec::new();
    for oid in usages.iter().filter_map(|u| ext_key_usage_oid(*u)) {
        if !oids.contains(&oid) {
            oids.push(oid);
        }
    }
    if oids.is_empty() {
        return None;
    }
    let body: Vec<u8> = oids.iter().flat_map(|o| der::oid(o)).collect();
    Some(der::extension(
        oid::EXT_KEY_USAGE,
        false,
        &der::tlv(der::SEQUENCE, &body),
    ))
}

/// Critical BasicConstraints: `cA TRUE` for a CA, the empty sequence (cA defaults to FALSE)
/// otherwise.
pub(crate) fn basic_constraints_extension(is_ca: bool) -> Vec<u8> {
    basic_constraints_extension_with_path_len(is_ca, None)
}

/// BasicConstraints with a pathLenConstraint for a CA (ignored for a leaf, where RFC 5280
/// forbids it).
pub(crate) fn basic_constraints_extension_with_path_len(
    is_ca: bool,
    path_len: Option<u8>,
) -> Vec<u8> {
    let body = match (is_ca, path_len) {
        (true, None) => der::seq(&[&der::tlv(der::BOOLEAN, &[0xff])]),
        (true, Some(n)) => der::seq(&[&der::tlv(der::BOOLEAN, &[0xff]), &der::uint(&[n])]),
        (false, _) => der::seq(&[]),
    };
    der::extension(oid::BASIC_CONSTRAINTS, true, &body)
}

/// SubjectAltName for `sans`, critical when the subject is empty (RFC 5280 4.2.1.6).
fn san_extension(sans: &Sans, subject_empty: bool) -> Result<Option<Vec<u8>>, String> {
    if sans.is_empty() {
        return Ok(None);
    }
    let mut names = Vec::new();
    for dns in &sans.dns_names {
        if dns.is_empty() || !dns.is_ascii() {
            return Err(format!(
                "DNS name {dns:?} must be non-empty ASCII (use the punycode form for IDNs)"
            ));
        }
        names.push(der::tlv(0x82, dns.as_bytes()));
    }
    for ip in &sans.ip_addresses {
        let octets = match ip {
            std::net::IpAddr::V4(v4) => v4.octets().to_vec(),
            std::net::IpAddr::V6(v6) => v6.octets().to_vec(),
        };
        names.push(der::tlv(0x87, &octets));
    }
    for uri in &sans.uris {
        if uri.is_empty() || !uri.is_ascii() {
            return Err(format!(
                "URI {uri:?} must be non-empty ASCII (percent-encode the rest)"
            ));
        }
        names.push(der::tlv(0x86, uri.as_bytes()));
    }
    Ok(Some(der::extension(
        oid::SUBJECT_ALT_NAME,
        subject_empty,
        &der::tlv(der::SEQUENCE, &names.concat()),
    )))
}

/// DER Name for a subject: the literal RFC 4514 string when set, else the fields in the order Go's
/// `pkix.Name` (and so cert-manager) writes them, each repeated field as one multi-valued RDN.
pub(crate) fn subject_der(subject: &Subject) -> Vec<u8> {
    if let Some(literal) = &subject.literal {
        return literal_subject_der(literal);
    }
    let groups: [(&[u64], Vec<&String>); 9] = [
        (&[2, 5, 4, 6], subject.countries.iter().collect()),
        (&[2, 5, 4, 8], subject.provinces.iter().collect()),
        (&[2, 5, 4, 7], subject.localities.iter().collect()),
        (&[2, 5, 4, 9], subject.street_addresses.iter().collect()),
        (&[2, 5, 4, 17], subject.postal_codes.iter().collect()),
        (&[2, 5, 4, 10], subject.organizations.iter().collect()),
        (
            &[2, 5, 4, 11],
            subject.organizational_units.iter().collect(),
        ),
        (&[2, 5, 4, 3], subject.common_name.iter().collect()),
        (&[2, 5, 4, 5], subject.serial_number.iter().collect()),
    ];
    let mut rdns = Vec::new();
    for (oid, values) in groups {
        if values.is_empty() {
            continue;
        }
        let atvs = values.iter().map(|v| atv(oid, v)).collect();
        rdns.push(der::set_of(atvs));
    }
    der::tlv(der::SEQUENCE, &rdns.concat())
}

fn atv(oid: &[u64], value: &str) -> Vec<u8> {
    der::seq(&[&der::oid(oid), &directory_string(oid, value)])
}

/// PrintableString when every character allows it (required for countries), IA5String for
/// domain components, UTF8String otherwise — Go's choice, so names compare equal byte for byte.
fn directory_string(oid: &[u64], value: &str) -> Vec<u8> {
    let printable = value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || " '()+,-./:=?".contains(c));
    if printable {
        der::tlv(der::PRINTABLE_STRING, value.as_bytes())
    } else if oid == [0, 9, 2342, 19200300, 100, 1, 25] && value.is_ascii() {
        der::tlv(der::IA5_STRING, value.as_bytes())
    } else {
        der::tlv(der::UTF8_STRING, value.as_bytes())
    }
}

/// DER Name for a parsed literal subject. The string lists RDNs most-specific first, DER stores
/// them the other way round.
pub(crate) fn literal_subject_der(literal: &LiteralSubject) -> Vec<u8> {
    let mut rdns: Vec<Vec<u8>> = literal
        .rdns()
        .iter()
        .map(|rdn| der::set_of(rdn.iter().map(|a| atv(&a.oid, &a.value)).collect()))
        .collect();
    rdns.reverse();
    der::tlv(der::SEQUENCE, &rdns.concat())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::request::{FileNames, IssuerRef, KeyAlgorithm, KeyEncoding, PodInfo};
    use crate::x509::keys::{PrivateKey, build_csr};
    use std::collections::BTreeMap;
    use std::net::IpAddr;
    use std::time::Duration;
    use x509_parser::extensions::{GeneralName, ParsedExtension};
    use x509_parser::prelude::FromDer;

    pub(crate) fn request() -> CertRequest {
        CertRequest {
            pod: PodInfo::default(),
            issuer: IssuerRef {
                name: "ca".into(),
                kind: "Issuer".into(),
                group: "cert-manager.io".into(),
            },
            kube_csr: None,
            subject: Subject {
                common_name: Some("web.default.svc".into()),
                organizations: vec!["Acme".into(), "Acme Ümlaut".into()],
                ..Subject::default()
            },
            sans: Sans {
                dns_names: vec!["web.default.svc".into(), "web".into()],
                ip_addresses: vec!["10.0.0.7".parse().unwrap(), "fd00::7".parse().unwrap()],
                uris: vec!["spiffe://cluster.local/ns/default/sa/web".into()],
            },
            duration: Duration::from_secs(3600),
            renew_before: None,
            is_ca: false,
            usages: vec![
                KeyUsage::DigitalSignature,
                KeyUsage::KeyEncipherment,
                KeyUsage::ServerAuth,
                KeyUsage::ClientAuth,
            ],
            key_algorithm: KeyAlgorithm::EcdsaP256,
            key_encoding: KeyEncoding::Pkcs1,
            reuse_private_key: false,
            renew: true,
            files: FileNames::default(),
            fs_group: None,
            annotations: BTreeMap::new(),
            trust: None,
        }
    }

    #[test]
    fn csr_carries_subject_sans_usages_and_verifies() {
        let req = request();
        for alg in [
            KeyAlgorithm::EcdsaP256,
            KeyAlgorithm::EcdsaP384,
            KeyAlgorithm::Ed25519,
            KeyAlgorithm::Rsa2048,
        ] {
            let key = PrivateKey::generate(alg).unwrap();
            let csr = build_csr(&req, &key).unwrap();
            assert!(csr.pem.starts_with("-----BEGIN CERTIFICATE REQUEST-----\n"));
            let (rest, parsed) =
                x509_parser::certification_request::X509CertificationRequest::from_der(&csr.der)
                    .unwrap();
            assert!(rest.is_empty());
            parsed.verify_signature().unwrap();
            let info = &parsed.certification_request_info;
            assert_eq!(
                info.subject_pki.raw,
                key.public_key_der().unwrap().as_slice()
            );
            let cns: Vec<_> = info
                .subject
                .iter_common_name()
                .map(|a| a.as_str().unwrap())
                .collect();
            assert_eq!(cns, ["web.default.svc"]);
            let mut orgs: Vec<_> = info
                .subject
                .iter_organization()
                .map(|a| a.as_str().unwrap())
                .collect();
            orgs.sort();
            assert_eq!(orgs, ["Acme", "Acme Ümlaut"]);

            let exts: Vec<_> = parsed.requested_extensions().unwrap().collect();
            let mut saw = (false, false, false, false);
            for ext in exts {
                match ext {
                    ParsedExtension::SubjectAlternativeName(san) => {
                        saw.0 = true;
                        let mut dns = vec![];
                        let mut ips = vec![];
                        let mut uris = vec![];
                        for n in &san.general_names {
                            match n {
                                GeneralName::DNSName(d) => dns.push(d.to_string()),
                                GeneralName::IPAddress(b) => ips.push(match b.len() {
                                    4 => IpAddr::from(<[u8; 4]>::try_from(*b).unwrap()),
                                    _ => IpAddr::from(<[u8; 16]>::try_from(*b).unwrap()),
                                }),
                                GeneralName::URI(u) => uris.push(u.to_string()),
                                other => panic!("unexpected {other:?}"),
                            }
                        }
                        assert_eq!(dns, req.sans.dns_names);
                        assert_eq!(ips, req.sans.ip_addresses);
                        assert_eq!(uris, req.sans.uris);
                    }
                    ParsedExtension::KeyUsage(ku) => {
                        saw.1 = true;
                        assert!(ku.digital_signature() && ku.key_encipherment());
                        assert!(!ku.key_cert_sign() && !ku.non_repudiation());
                    }
                    ParsedExtension::ExtendedKeyUsage(eku) => {
                        saw.2 = true;
                        assert!(eku.server_auth && eku.client_auth);
                        assert!(!eku.any && !eku.code_signing);
                    }
                    ParsedExtension::BasicConstraints(bc) => {
                        saw.3 = true;
                        assert!(!bc.ca);
                    }
                    other => panic!("unexpected extension {other:?}"),
                }
            }
            assert_eq!(saw, (true, true, true, true), "{alg:?}");
        }
    }

    #[test]
    fn ca_csr_adds_cert_sign_and_omits_empty_eku() {
        let mut req = request();
        req.is_ca = true;
        req.usages = vec![KeyUsage::Signing, KeyUsage::CrlSign];
        req.sans = Sans::default();
        let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
        let csr = build_csr(&req, &key).unwrap();
        let (_, parsed) =
            x509_parser::certification_request::X509CertificationRequest::from_der(&csr.der)
                .unwrap();
        let exts: Vec<_> = parsed.requested_extensions().unwrap().collect();
        assert_eq!(exts.len(), 2, "{exts:?}");
        for ext in exts {
            match ext {
                ParsedExtension::KeyUsage(ku) => {
                    assert!(ku.digital_signature() && ku.key_cert_sign() && ku.crl_sign());
                    assert!(!ku.key_encipherment());
                }
                ParsedExtension::BasicConstraints(bc) => assert!(bc.ca),
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    #[test]
    fn key_usage_bits_encode_like_rfc5280() {
        // digitalSignature + keyEncipherment: 0xa0 with 5 unused bits.
        let ext = key_usage_extension(
            &[KeyUsage::DigitalSignature, KeyUsage::KeyEncipherment],
            false,
        )
        .unwrap();
        assert!(ext.ends_with(&[0x03, 0x02, 0x05, 0xa0]), "{ext:02x?}");
        // decipherOnly is bit 8: two bytes, 7 unused bits.
        let ext = key_usage_extension(&[KeyUsage::DecipherOnly], false).unwrap();
        assert!(ext.ends_with(&[0x03, 0x03, 0x07, 0x00, 0x80]), "{ext:02x?}");
        assert!(key_usage_extension(&[KeyUsage::ServerAuth], false).is_none());
    }

    #[test]
    fn literal_subject_is_encoded_in_reverse_order() {
        let mut req = request();
        req.subject = Subject {
            literal: Some(
                LiteralSubject::parse("CN=web\\, primary,OU=Platform+OU=Infra,O=Acme,C=DE")
                    .unwrap(),
            ),
            ..Subject::default()
        };
        let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
        let csr = build_csr(&req, &key).unwrap();
        let (_, parsed) =
            x509_parser::certification_request::X509CertificationRequest::from_der(&csr.der)
                .unwrap();
        let rdns: Vec<Vec<String>> = parsed
            .certification_request_info
            .subject
            .iter_rdn()
            .map(|rdn| {
                rdn.iter()
                    .map(|a| a.as_str().unwrap().to_string())
                    .collect()
            })
            .collect();
        assert_eq!(
            rdns,
            vec![
                vec!["DE".to_string()],
                vec!["Acme".to_string()],
                vec!["Infra".to_string(), "Platform".to_string()],
                vec!["web, primary".to_string()],
            ]
        );
    }

    #[test]
    fn literal_subject_dotted_oids_and_hex_escapes_are_encoded() {
        // Its errors are the parser's: spec::subject's tests.
        let literal = LiteralSubject::parse("1.2.3.4=x\\41,cn=y ").unwrap();
        let der_name = literal_subject_der(&literal);
        let (_, name) = x509_parser::x509::X509Name::from_der(&der_name).unwrap();
        let values: Vec<_> = name
            .iter_attributes()
            .map(|a| a.as_str().unwrap().to_string())
            .collect();
        assert_eq!(values, ["y", "xA"]);
    }
}
