//! Private keys: generation, reading and the PEM encodings, and the signed PKCS#10 request.
//!
//! Everything here is blocking CPU work (RSA generation takes seconds); callers run it on a
//! blocking thread. The CSR is encoded by hand rather than with rcgen's builder because rcgen keeps
//! one value per attribute type in a subject (so `O=a`, `O=b` would lose one) and cannot take a
//! literal RFC 4514 subject; signing still goes through rcgen/ring. What is signed is built by
//! [`csr`](crate::x509::csr), which needs no key; the DER writer is [`der`](crate::x509::der).

use std::fmt;

use rsa::pkcs1::{DecodeRsaPrivateKey, DecodeRsaPublicKey, EncodeRsaPrivateKey};
use rsa::pkcs8::{DecodePrivateKey as _, EncodePrivateKey as _};
use rsa::traits::PublicKeyParts;
use zeroize::Zeroizing;

use crate::spec::request::{CertRequest, KeyAlgorithm, KeyEncoding};
pub use crate::x509::csr::Csr;
// The request's parts, under the paths the issuers and the local CA use.
pub(crate) use crate::x509::csr::{
    EMPTY_NAME, basic_constraints_extension, basic_constraints_extension_with_path_len,
    effective_usages, ext_key_usage_extension, key_usage_extension, key_usage_extension_bits,
};
pub(crate) use crate::x509::der::{self, oid};

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

/// Builds a PKCS#10 CSR signed by `key` for `req`; see [`csr`](crate::x509::csr) for what the
/// request holds.
pub fn build_csr(req: &CertRequest, key: &PrivateKey) -> Result<Csr, KeyError> {
    let spki = key.public_key_der()?;
    let info =
        crate::x509::csr::request_info(req, &spki).map_err(|message| KeyError::Csr { message })?;
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

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [KeyAlgorithm; 6] = [
        KeyAlgorithm::EcdsaP256,
        KeyAlgorithm::EcdsaP384,
        KeyAlgorithm::Ed25519,
        KeyAlgorithm::Rsa2048,
        KeyAlgorithm::Rsa3072,
        KeyAlgorithm::Rsa4096,
    ];

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
}
