//! The CA issuer's root and how it signs a CertificateRequest.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType, IsCa, Issuer,
    KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
};
use serde_json::Value;
use time::OffsetDateTime;

use super::spec::{map_usages, parse_go_duration};
use super::status::Step;
use super::{DEFAULT_DURATION, SIMULATED_FAILURE, SignerError};

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
pub(super) fn sign_step(ca: &Ca, obj: &Value, fail: bool, omit_ca: bool) -> Step {
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

#[cfg(test)]
mod tests {
    use rcgen::ExtendedKeyUsagePurpose;

    use super::*;
    use serde_json::json;

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
