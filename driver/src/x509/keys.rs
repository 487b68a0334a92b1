//! Private keys and PKCS#10 certificate signing requests.
//!
//! Everything here is blocking CPU work (RSA generation takes seconds); callers run it on a
//! blocking thread. The CSR is encoded by hand rather than with rcgen's builder because rcgen keeps
//! one value per attribute type in a subject (so `O=a`, `O=b` would lose one) and cannot take a
//! literal RFC 4514 subject; signing still goes through rcgen/ring.

use std::fmt;

use rsa::pkcs1::{DecodeRsaPrivateKey, DecodeRsaPublicKey, EncodeRsaPrivateKey};
use rsa::pkcs8::{DecodePrivateKey as _, EncodePrivateKey as _};
use rsa::traits::PublicKeyParts;
use zeroize::Zeroizing;

use crate::spec::request::{CertRequest, KeyAlgorithm, KeyEncoding, KeyUsage, Sans, Subject};
use crate::spec::subject::LiteralSubject;

/// Why a key or CSR could not be produced. Messages never contain key material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    #[error("cannot generate a {algorithm} key: {message}")]
    Generate {
        algorithm: &'static str,
        message: String,
    },
    #[error("the private key cannot be read: {message}")]
    InvalidKey { message: String },
    #[error(
        "unsupported private key ({found}); supported are ECDSA P-256 and P-384, Ed25519 and RSA \
         2048, 3072 or 4096"
    )]
    Unsupported { found: String },
    #[error("cannot encode the {algorithm} private key as {encoding}: {message}")]
    Encode {
        algorithm: &'static str,
        encoding: &'static str,
        message: String,
    },
    #[error("cannot build the certificate request: {message}")]
    Csr { message: String },
    #[error("signing with the {algorithm} key failed: {message}")]
    Sign {
        algorithm: &'static str,
        message: String,
    },
}

/// A private key: its algorithm and PKCS#8 DER, wiped from memory when dropped.
#[derive(Clone)]
pub struct PrivateKey {
    algorithm: KeyAlgorithm,
    pkcs8: Zeroizing<Vec<u8>>,
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrivateKey")
            .field("algorithm", &self.algorithm.label())
            .finish_non_exhaustive()
    }
}

/// rsa 0.9 takes a rand_core 0.6 RNG while the workspace uses rand 0.9; this bridges the two.
/// `ThreadRng` is a CSPRNG seeded from the OS, so the `CryptoRng` marker is truthful.
struct RsaRng(rand::rngs::ThreadRng);

impl rsa::rand_core::RngCore for RsaRng {
    fn next_u32(&mut self) -> u32 {
        rand::RngCore::next_u32(&mut self.0)
    }
    fn next_u64(&mut self) -> u64 {
        rand::RngCore::next_u64(&mut self.0)
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        rand::RngCore::fill_bytes(&mut self.0, dest)
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rsa::rand_core::Error> {
        rand::RngCore::fill_bytes(&mut self.0, dest);
        Ok(())
    }
}

impl rsa::rand_core::CryptoRng for RsaRng {}

impl PrivateKey {
    /// Generates a fresh key. RSA takes seconds; run on a blocking thread.
    pub fn generate(alg: KeyAlgorithm) -> Result<Self, KeyError> {
        let gen_err = |message: String| KeyError::Generate {
            algorithm: alg.label(),
            message,
        };
        let pkcs8 = match alg {
            KeyAlgorithm::Ed25519 => {
                // ring would write PKCS#8 v2 (with the public key), which OpenSSL 3.0 cannot
                // read; Go and cert-manager write v1, so build that from a random 32-byte seed
                // (RFC 8410: the seed is the whole private key).
                let mut seed = Zeroizing::new([0u8; 32]);
                rand::RngCore::fill_bytes(&mut rand::rng(), &mut seed[..]);
                let inner = Zeroizing::new(der::tlv(der::OCTET_STRING, &seed[..]));
                let outer = Zeroizing::new(der::tlv(der::OCTET_STRING, &inner));
                let body = Zeroizing::new(
                    [
                        der::uint(&[0]).as_slice(),
                        &der::seq(&[&der::oid(oid::ED25519)]),
                        &outer,
                    ]
                    .concat(),
                );
                let pkcs8 = Zeroizing::new(der::tlv(der::SEQUENCE, &body));
                // Proves ring accepts it before anyone relies on it.
                rcgen::KeyPair::try_from(pkcs8.as_slice()).map_err(|e| gen_err(e.to_string()))?;
                pkcs8
            }
            KeyAlgorithm::EcdsaP256 | KeyAlgorithm::EcdsaP384 => {
                let sig_alg = if alg == KeyAlgorithm::EcdsaP256 {
                    &rcgen::PKCS_ECDSA_P256_SHA256
                } else {
                    &rcgen::PKCS_ECDSA_P384_SHA384
                };
                let pair =
                    rcgen::KeyPair::generate_for(sig_alg).map_err(|e| gen_err(e.to_string()))?;
                Zeroizing::new(pair.serialize_der())
            }
            KeyAlgorithm::Rsa2048 | KeyAlgorithm::Rsa3072 | KeyAlgorithm::Rsa4096 => {
                let bits = rsa_bits(alg);
                let key = rsa::RsaPrivateKey::new(&mut RsaRng(rand::rng()), bits)
                    .map_err(|e| gen_err(e.to_string()))?;
                let doc = key.to_pkcs8_der().map_err(|e| gen_err(e.to_string()))?;
                Zeroizing::new(doc.as_bytes().to_vec())
            }
        };
        Ok(PrivateKey {
            algorithm: alg,
            pkcs8,
        })
    }

    /// Reads a PKCS#8 DER key and works out its algorithm (and RSA size).
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self, KeyError> {
        let pair = rcgen::KeyPair::try_from(der).map_err(|e| KeyError::InvalidKey {
            message: format!("not a supported PKCS#8 key ({e})"),
        })?;
        let sig_alg = pair.algorithm();
        let algorithm = if sig_alg == &rcgen::PKCS_ECDSA_P256_SHA256 {
            KeyAlgorithm::EcdsaP256
        } else if sig_alg == &rcgen::PKCS_ECDSA_P384_SHA384 {
            KeyAlgorithm::EcdsaP384
        } else if sig_alg == &rcgen::PKCS_ED25519 {
            KeyAlgorithm::Ed25519
        } else if sig_alg == &rcgen::PKCS_RSA_SHA256 {
            let public = rsa::RsaPublicKey::from_pkcs1_der(pair.public_key_raw()).map_err(|e| {
                KeyError::InvalidKey {
                    message: format!("RSA public key cannot be read ({e})"),
                }
            })?;
            match public.size() * 8 {
                2048 => KeyAlgorithm::Rsa2048,
                3072 => KeyAlgorithm::Rsa3072,
                4096 => KeyAlgorithm::Rsa4096,
                bits => {
                    return Err(KeyError::Unsupported {
                        found: format!("RSA {bits}"),
                    });
                }
            }
        } else {
            return Err(KeyError::Unsupported {
                found: format!("{sig_alg:?}"),
            });
        };
        Ok(PrivateKey {
            algorithm,
            pkcs8: Zeroizing::new(der.to_vec()),
        })
    }

    /// Reads the first private key in a PEM text: PKCS#8 `PRIVATE KEY`, SEC1 `EC PRIVATE KEY`
    /// (P-256 or P-384) or PKCS#1 `RSA PRIVATE KEY`. Other blocks (e.g. `EC PARAMETERS`, which
    /// `openssl ecparam -genkey` writes first) are skipped.
    pub fn from_pem(pem: &str) -> Result<Self, KeyError> {
        for block in x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes()) {
            let block = block.map_err(|e| KeyError::InvalidKey {
                message: format!("malformed PEM ({e})"),
            })?;
            let label = block.label;
            let der = Zeroizing::new(block.contents);
            match label.as_str() {
                "PRIVATE KEY" => return Self::from_pkcs8_der(&der),
                "EC PRIVATE KEY" => {
                    let pkcs8 = if let Ok(k) = p256::SecretKey::from_sec1_der(&der) {
                        p256::pkcs8::EncodePrivateKey::to_pkcs8_der(&k)
                    } else if let Ok(k) = p384::SecretKey::from_sec1_der(&der) {
                        p384::pkcs8::EncodePrivateKey::to_pkcs8_der(&k)
                    } else {
                        return Err(KeyError::Unsupported {
                            found: "EC PRIVATE KEY that is neither P-256 nor P-384".into(),
                        });
                    };
                    let pkcs8 = pkcs8.map_err(|e| KeyError::InvalidKey {
                        message: format!("cannot convert SEC1 key to PKCS#8 ({e})"),
                    })?;
                    return Self::from_pkcs8_der(pkcs8.as_bytes());
                }
                "RSA PRIVATE KEY" => {
                    let key = rsa::RsaPrivateKey::from_pkcs1_der(&der).map_err(|e| {
                        KeyError::InvalidKey {
                            message: format!("malformed RSA PRIVATE KEY ({e})"),
                        }
                    })?;
                    let pkcs8 = key.to_pkcs8_der().map_err(|e| KeyError::InvalidKey {
                        message: format!("cannot convert PKCS#1 key to PKCS#8 ({e})"),
                    })?;
                    return Self::from_pkcs8_der(pkcs8.as_bytes());
                }
                "ENCRYPTED PRIVATE KEY" => {
                    return Err(KeyError::Unsupported {
                        found: "encrypted private key".into(),
                    });
                }
                _ => continue,
            }
        }
        Err(KeyError::InvalidKey {
            message: "no PRIVATE KEY, EC PRIVATE KEY or RSA PRIVATE KEY block found".into(),
        })
    }

    pub fn algorithm(&self) -> KeyAlgorithm {
        self.algorithm
    }

    pub fn pkcs8_der(&self) -> &[u8] {
        &self.pkcs8
    }

    /// PEM in the requested encoding. `Pkcs1` means the algorithm's traditional format; Ed25519
    /// has none and is always PKCS#8, as cert-manager writes it.
    pub fn to_pem(&self, enc: KeyEncoding) -> Result<Zeroizing<String>, KeyError> {
        let alg = self.algorithm;
        let enc_err = |encoding: &'static str, message: String| KeyError::Encode {
            algorithm: alg.label(),
            encoding,
            message,
        };
        match (enc, alg) {
            (KeyEncoding::Pkcs8, _) | (KeyEncoding::Pkcs1, KeyAlgorithm::Ed25519) => {
                rsa::pkcs8::der::pem::encode_string(
                    "PRIVATE KEY",
                    rsa::pkcs8::LineEnding::LF,
                    &self.pkcs8,
                )
                .map(Zeroizing::new)
                .map_err(|e| enc_err("PKCS#8", e.to_string()))
            }
            (KeyEncoding::Pkcs1, KeyAlgorithm::EcdsaP256) => {
                let key =
                    <p256::SecretKey as p256::pkcs8::DecodePrivateKey>::from_pkcs8_der(&self.pkcs8)
                        .map_err(|e| enc_err("SEC1", e.to_string()))?;
                key.to_sec1_pem(p256::pkcs8::LineEnding::LF)
                    .map_err(|e| enc_err("SEC1", e.to_string()))
            }
            (KeyEncoding::Pkcs1, KeyAlgorithm::EcdsaP384) => {
                let key =
                    <p384::SecretKey as p384::pkcs8::DecodePrivateKey>::from_pkcs8_der(&self.pkcs8)
                        .map_err(|e| enc_err("SEC1", e.to_string()))?;
                key.to_sec1_pem(p384::pkcs8::LineEnding::LF)
                    .map_err(|e| enc_err("SEC1", e.to_string()))
            }
            (
                KeyEncoding::Pkcs1,
                KeyAlgorithm::Rsa2048 | KeyAlgorithm::Rsa3072 | KeyAlgorithm::Rsa4096,
            ) => {
                let key = rsa::RsaPrivateKey::from_pkcs8_der(&self.pkcs8)
                    .map_err(|e| enc_err("PKCS#1", e.to_string()))?;
                key.to_pkcs1_pem(rsa::pkcs1::LineEnding::LF)
                    .map_err(|e| enc_err("PKCS#1", e.to_string()))
            }
        }
    }

    /// The SubjectPublicKeyInfo DER, as it appears in CSRs and certificates.
    pub fn public_key_der(&self) -> Result<Vec<u8>, KeyError> {
        Ok(rcgen::PublicKeyData::subject_public_key_info(
            &self.key_pair()?,
        ))
    }

    /// Signs `msg` with the algorithm [`Self::signature_algorithm_der`] names.
    pub(crate) fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, KeyError> {
        rcgen::SigningKey::sign(&self.key_pair()?, msg).map_err(|e| KeyError::Sign {
            algorithm: self.algorithm.label(),
            message: e.to_string(),
        })
    }

    /// DER AlgorithmIdentifier of the signatures [`Self::sign`] makes: SHA-256 for RSA and P-256,
    /// SHA-384 for P-384 (what rcgen/ring sign with).
    pub(crate) fn signature_algorithm_der(&self) -> Vec<u8> {
        match self.algorithm {
            KeyAlgorithm::EcdsaP256 => der::seq(&[&der::oid(oid::ECDSA_WITH_SHA256)]),
            KeyAlgorithm::EcdsaP384 => der::seq(&[&der::oid(oid::ECDSA_WITH_SHA384)]),
            KeyAlgorithm::Ed25519 => der::seq(&[&der::oid(oid::ED25519)]),
            KeyAlgorithm::Rsa2048 | KeyAlgorithm::Rsa3072 | KeyAlgorithm::Rsa4096 => {
                der::seq(&[&der::oid(oid::SHA256_WITH_RSA), &der::tlv(der::NULL, &[])])
            }
        }
    }

    /// The ring-backed key pair; built on demand so that only the zeroized PKCS#8 copy lives long.
    fn key_pair(&self) -> Result<rcgen::KeyPair, KeyError> {
        rcgen::KeyPair::try_from(self.pkcs8.as_slice()).map_err(|e| KeyError::InvalidKey {
            message: e.to_string(),
        })
    }
}

fn rsa_bits(alg: KeyAlgorithm) -> usize {
    match alg {
        KeyAlgorithm::Rsa3072 => 3072,
        KeyAlgorithm::Rsa4096 => 4096,
        _ => 2048,
    }
}

/// A PKCS#10 certificate signing request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Csr {
    pub der: Vec<u8>,
    pub pem: String,
}

/// Builds a PKCS#10 CSR signed by `key` for `req`.
///
/// The extension request matches what cert-manager's webhook compares against the
/// CertificateRequest spec: KeyUsage bits are exactly the non-extended usages (plus `cert sign`
/// when `is_ca`), ExtendedKeyUsage exactly the extended ones (omitted when there are none), and
/// BasicConstraints states `is_ca`. An empty usage list means cert-manager's default,
/// `digital signature` + `key encipherment`.
pub fn build_csr(req: &CertRequest, key: &PrivateKey) -> Result<Csr, KeyError> {
    let subject = subject_der(&req.subject);
    let spki = key.public_key_der()?;

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
    let info = der::seq(&[
        &der::uint(&[0]),
        &subject,
        &spki,
        &der::tlv(0xa0, &ext_request),
    ]);
    let signature = key.sign(&info)?;
    let der_bytes = der::seq(&[
        &info,
        &key.signature_algorithm_der(),
        &der::bit_string(&signature),
    ]);
    let pem = pem_encode("CERTIFICATE REQUEST", &der_bytes)
        .map_err(|message| KeyError::Csr { message })?;
    Ok(Csr {
        der: der_bytes,
        pem,
    })
}

/// PEM with LF line endings and 64-column base64.
pub(crate) fn pem_encode(label: &str, der_bytes: &[u8]) -> Result<String, String> {
    rsa::pkcs8::der::pem::encode_string(label, rsa::pkcs8::LineEnding::LF, der_bytes)
        .map_err(|e| format!("cannot PEM-encode {label}: {e}"))
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
fn san_extension(sans: &Sans, subject_empty: bool) -> Result<Option<Vec<u8>>, KeyError> {
    if sans.is_empty() {
        return Ok(None);
    }
    let mut names = Vec::new();
    for dns in &sans.dns_names {
        if dns.is_empty() || !dns.is_ascii() {
            return Err(KeyError::Csr {
                message: format!(
                    "DNS name {dns:?} must be non-empty ASCII (use the punycode form for IDNs)"
                ),
            });
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
            return Err(KeyError::Csr {
                message: format!("URI {uri:?} must be non-empty ASCII (percent-encode the rest)"),
            });
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

/// Object identifiers used by the encoders here and in the local CA.
pub(crate) mod oid {
    pub(crate) const EXTENSION_REQUEST: &[u64] = &[1, 2, 840, 113549, 1, 9, 14];
    pub(crate) const ECDSA_WITH_SHA256: &[u64] = &[1, 2, 840, 10045, 4, 3, 2];
    pub(crate) const ECDSA_WITH_SHA384: &[u64] = &[1, 2, 840, 10045, 4, 3, 3];
    pub(crate) const ED25519: &[u64] = &[1, 3, 101, 112];
    pub(crate) const SHA256_WITH_RSA: &[u64] = &[1, 2, 840, 113549, 1, 1, 11];
    pub(crate) const SUBJECT_KEY_IDENTIFIER: &[u64] = &[2, 5, 29, 14];
    pub(crate) const KEY_USAGE: &[u64] = &[2, 5, 29, 15];
    pub(crate) const SUBJECT_ALT_NAME: &[u64] = &[2, 5, 29, 17];
    pub(crate) const BASIC_CONSTRAINTS: &[u64] = &[2, 5, 29, 19];
    pub(crate) const AUTHORITY_KEY_IDENTIFIER: &[u64] = &[2, 5, 29, 35];
    pub(crate) const EXT_KEY_USAGE: &[u64] = &[2, 5, 29, 37];
    pub(crate) const COMMON_NAME: &[u64] = &[2, 5, 4, 3];
}

/// A minimal DER writer: enough for names, CSRs and certificates.
pub(crate) mod der {
    use std::time::{SystemTime, UNIX_EPOCH};

    pub(crate) const BOOLEAN: u8 = 0x01;
    pub(crate) const INTEGER: u8 = 0x02;
    pub(crate) const BIT_STRING: u8 = 0x03;
    pub(crate) const OCTET_STRING: u8 = 0x04;
    pub(crate) const NULL: u8 = 0x05;
    pub(crate) const OID: u8 = 0x06;
    pub(crate) const UTF8_STRING: u8 = 0x0c;
    pub(crate) const PRINTABLE_STRING: u8 = 0x13;
    pub(crate) const IA5_STRING: u8 = 0x16;
    pub(crate) const UTC_TIME: u8 = 0x17;
    pub(crate) const GENERALIZED_TIME: u8 = 0x18;
    pub(crate) const SEQUENCE: u8 = 0x30;
    pub(crate) const SET: u8 = 0x31;

    pub(crate) fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(content.len() + 6);
        out.push(tag);
        let len = content.len();
        if len < 0x80 {
            out.push(len as u8);
        } else {
            let be = len.to_be_bytes();
            let skip = be.iter().take_while(|b| **b == 0).count();
            out.push(0x80 | (be.len() - skip) as u8);
            out.extend_from_slice(&be[skip..]);
        }
        out.extend_from_slice(content);
        out
    }

    pub(crate) fn seq(parts: &[&[u8]]) -> Vec<u8> {
        tlv(SEQUENCE, &parts.concat())
    }

    /// DER sorts SET OF elements by their encoding.
    pub(crate) fn set_of(mut items: Vec<Vec<u8>>) -> Vec<u8> {
        items.sort();
        tlv(SET, &items.concat())
    }

    pub(crate) fn oid(arcs: &[u64]) -> Vec<u8> {
        let (first, rest) = match arcs {
            [a, b, rest @ ..] => (a * 40 + b, rest),
            [a] => (a * 40, &[][..]),
            [] => (0, &[][..]),
        };
        let mut body = Vec::new();
        for arc in std::iter::once(first).chain(rest.iter().copied()) {
            let mut chunk = vec![(arc & 0x7f) as u8];
            let mut v = arc >> 7;
            while v > 0 {
                chunk.push(0x80 | (v & 0x7f) as u8);
                v >>= 7;
            }
            chunk.reverse();
            body.extend_from_slice(&chunk);
        }
        tlv(OID, &body)
    }

    /// A non-negative INTEGER from big-endian magnitude bytes.
    pub(crate) fn uint(bytes: &[u8]) -> Vec<u8> {
        let skip = bytes
            .iter()
            .take_while(|b| **b == 0)
            .count()
            .min(bytes.len().saturating_sub(1));
        let bytes = &bytes[skip..];
        let mut content = Vec::with_capacity(bytes.len() + 1);
        if bytes.first().is_none_or(|b| b & 0x80 != 0) {
            content.push(0);
        }
        content.extend_from_slice(bytes);
        tlv(INTEGER, &content)
    }

    /// BIT STRING with no unused bits (signatures, keys).
    pub(crate) fn bit_string(bytes: &[u8]) -> Vec<u8> {
        let mut content = Vec::with_capacity(bytes.len() + 1);
        content.push(0);
        content.extend_from_slice(bytes);
        tlv(BIT_STRING, &content)
    }

    /// Extension ::= SEQUENCE { extnID, critical BOOLEAN DEFAULT FALSE, extnValue OCTET STRING }
    pub(crate) fn extension(oid_arcs: &[u64], critical: bool, value: &[u8]) -> Vec<u8> {
        let id = oid(oid_arcs);
        let value = tlv(OCTET_STRING, value);
        if critical {
            seq(&[&id, &tlv(BOOLEAN, &[0xff]), &value])
        } else {
            seq(&[&id, &value])
        }
    }

    /// X.509 Time: UTCTime through 2049, GeneralizedTime after (RFC 5280 4.1.2.5). Sub-second
    /// parts are dropped.
    pub(crate) fn time(t: SystemTime) -> Result<Vec<u8>, String> {
        let secs = match t.duration_since(UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_secs()).map_err(|_| "time too far in the future")?,
            Err(e) => -i64::try_from(e.duration().as_secs()).map_err(|_| "time too far back")?,
        };
        let dt = time::OffsetDateTime::from_unix_timestamp(secs)
            .map_err(|e| format!("time out of range: {e}"))?;
        let year = dt.year();
        let rest = format!(
            "{:02}{:02}{:02}{:02}{:02}Z",
            u8::from(dt.month()),
            dt.day(),
            dt.hour(),
            dt.minute(),
            dt.second()
        );
        match year {
            1950..=2049 => Ok(tlv(UTC_TIME, format!("{:02}{rest}", year % 100).as_bytes())),
            2050..=9999 => Ok(tlv(GENERALIZED_TIME, format!("{year:04}{rest}").as_bytes())),
            _ => Err(format!("year {year} cannot be written in a certificate")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::request::{FileNames, IssuerRef, PodInfo};
    use std::collections::BTreeMap;
    use std::net::IpAddr;
    use std::time::Duration;
    use x509_parser::extensions::{GeneralName, ParsedExtension};
    use x509_parser::prelude::FromDer;

    const ALL: [KeyAlgorithm; 6] = [
        KeyAlgorithm::EcdsaP256,
        KeyAlgorithm::EcdsaP384,
        KeyAlgorithm::Ed25519,
        KeyAlgorithm::Rsa2048,
        KeyAlgorithm::Rsa3072,
        KeyAlgorithm::Rsa4096,
    ];

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
    fn every_algorithm_generates_and_round_trips() {
        for alg in ALL {
            let key = PrivateKey::generate(alg).unwrap();
            assert_eq!(key.algorithm(), alg);
            let back = PrivateKey::from_pkcs8_der(key.pkcs8_der()).unwrap();
            assert_eq!(back.algorithm(), alg, "{alg:?}");
            assert_eq!(
                back.public_key_der().unwrap(),
                key.public_key_der().unwrap()
            );
            // Debug shows the algorithm only.
            let dbg = format!("{key:?}");
            assert!(dbg.contains(alg.label()));
            assert!(!dbg.contains(&format!("{:?}", &key.pkcs8_der()[..8])));
            // PEM in both encodings reads back to the same key.
            for enc in [KeyEncoding::Pkcs1, KeyEncoding::Pkcs8] {
                let pem = key.to_pem(enc).unwrap();
                let again = PrivateKey::from_pem(&pem).unwrap();
                assert_eq!(again.algorithm(), alg);
                assert_eq!(
                    again.public_key_der().unwrap(),
                    key.public_key_der().unwrap()
                );
            }
        }
    }

    #[test]
    fn pem_labels_follow_encoding_and_parse_with_rustcrypto() {
        use p256::pkcs8::DecodePrivateKey as _;
        let p256k = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
        let sec1 = p256k.to_pem(KeyEncoding::Pkcs1).unwrap();
        assert!(
            sec1.starts_with("-----BEGIN EC PRIVATE KEY-----\n"),
            "{}",
            &sec1[..30]
        );
        p256::SecretKey::from_sec1_pem(&sec1).unwrap();
        let pk8 = p256k.to_pem(KeyEncoding::Pkcs8).unwrap();
        assert!(pk8.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        p256::SecretKey::from_pkcs8_pem(&pk8).unwrap();

        let p384k = PrivateKey::generate(KeyAlgorithm::EcdsaP384).unwrap();
        let sec1 = p384k.to_pem(KeyEncoding::Pkcs1).unwrap();
        assert!(sec1.starts_with("-----BEGIN EC PRIVATE KEY-----\n"));
        p384::SecretKey::from_sec1_pem(&sec1).unwrap();
        p384::SecretKey::from_pkcs8_pem(&p384k.to_pem(KeyEncoding::Pkcs8).unwrap()).unwrap();

        let rsak = PrivateKey::generate(KeyAlgorithm::Rsa2048).unwrap();
        let pkcs1 = rsak.to_pem(KeyEncoding::Pkcs1).unwrap();
        assert!(pkcs1.starts_with("-----BEGIN RSA PRIVATE KEY-----\n"));
        let parsed = rsa::RsaPrivateKey::from_pkcs1_pem(&pkcs1).unwrap();
        assert_eq!(parsed.size(), 256);
        let pk8 = rsak.to_pem(KeyEncoding::Pkcs8).unwrap();
        assert!(pk8.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        rsa::RsaPrivateKey::from_pkcs8_pem(&pk8).unwrap();

        let ed = PrivateKey::generate(KeyAlgorithm::Ed25519).unwrap();
        // PKCS#8 v1 (version 0), the form OpenSSL 3.0 and Go read.
        assert_eq!(&ed.pkcs8_der()[2..5], &[0x02, 0x01, 0x00]);
        assert_eq!(ed.pkcs8_der().len(), 48);
        for enc in [KeyEncoding::Pkcs1, KeyEncoding::Pkcs8] {
            assert!(
                ed.to_pem(enc)
                    .unwrap()
                    .starts_with("-----BEGIN PRIVATE KEY-----\n")
            );
        }
    }

    #[test]
    fn garbage_keys_are_rejected_without_echoing_bytes() {
        let err = PrivateKey::from_pkcs8_der(b"\x30\x03\x02\x01\x00").unwrap_err();
        assert!(matches!(err, KeyError::InvalidKey { .. }), "{err}");
        let err = PrivateKey::from_pem("hello").unwrap_err();
        assert!(err.to_string().contains("no PRIVATE KEY"), "{err}");
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
