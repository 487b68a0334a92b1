//! What goes into a volume: issued material → the files to publish.
//!
//! Pure: no I/O and no clock. The volume layer calls [`render`] after every issuance; anything
//! that changes only part of the material (a new trust bundle, a new keystore password) calls it
//! again with the same key and certificates and publishes the result, without a renewal.
//!
//! # Files
//!
//! - private key (`tls.key`), chain (`tls.crt`, leaf first), CA (`ca.crt`): always.
//! - key-chain file: the private key, then the chain, in one PEM file.
//! - chain file: the chain without the leaf (intermediates; empty when the issuer signs leaves
//!   directly with its CA).
//! - trust bundle: the material's trust bundle, or the issuing CA when the volume has none.
//! - PKCS#12 keystore: one key entry with friendly name [`KEYSTORE_ALIAS`] holding the key and
//!   the chain followed by the CA certificates not already in it.
//! - PKCS#12 truststore: the trust bundle (or the CA) as trusted certificate entries named
//!   `ca-1`, `ca-2`, … in bundle order.

use p12_keystore::{
    Certificate as P12Certificate, EncryptionAlgorithm, KeyStore, KeyStoreEntry, LocalKeyId,
    MacAlgorithm, PrivateKey as P12PrivateKey, PrivateKeyChain,
};
use zeroize::Zeroizing;

use crate::files::writer::FileSpec;
pub(crate) use crate::spec::request::Password;
use crate::spec::request::{CertRequest, Pkcs12Profile};
use crate::x509::keys::{self, KeyError, PrivateKey};

/// Friendly name (Java alias) of the keystore's key entry; cert-manager uses the same.
pub(crate) const KEYSTORE_ALIAS: &str = "certificate";

/// PBKDF2 iterations of the modern profile (Java's default for PKCS#12 since JDK 12).
const MODERN_ITERATIONS: u32 = 10_000;
/// Iterations of the legacy profile (OpenSSL's traditional PKCS#12 default).
const LEGACY_ITERATIONS: u32 = 2048;

/// Everything a volume's files are made of. Nothing in here is a file name: names come from the
/// request's [`FileNames`](crate::spec::request::FileNames).
#[derive(Clone)]
pub(crate) struct Material {
    pub key: PrivateKey,
    /// The issued chain, leaf first, as the issuer returned it (PEM).
    pub chain_pem: String,
    /// The issuing CA (PEM); may be empty when the issuer does not know its root.
    pub ca_pem: String,
    /// The volume's trust bundle (PEM), once its trust sources produced one; `None` means the
    /// bundle is the issuing CA.
    pub trust_bundle_pem: Option<String>,
    /// Password of the PKCS#12 files; required when the request names one.
    pub pkcs12_password: Option<Password>,
}

impl std::fmt::Debug for Material {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Material")
            .field("key", &self.key.algorithm().label())
            .field("chain_pem_len", &self.chain_pem.len())
            .field("ca_pem_len", &self.ca_pem.len())
            .field(
                "trust_bundle_pem_len",
                &self.trust_bundle_pem.as_ref().map(String::len),
            )
            .field("pkcs12_password", &self.pkcs12_password)
            .finish()
    }
}

impl Material {
    /// The trust bundle the volume serves: its own, or the issuing CA.
    pub(crate) fn trust_bundle(&self) -> &str {
        self.trust_bundle_pem.as_deref().unwrap_or(&self.ca_pem)
    }
}

/// Why the files could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LayoutError {
    #[error("private key: {0}")]
    Key(#[from] KeyError),
    #[error("{what} is not valid PEM: {message}")]
    Pem { what: &'static str, message: String },
    #[error("the issued chain holds no certificate")]
    EmptyChain,
    #[error("{file:?} is a PKCS#12 file but no password was given for it")]
    NoPassword { file: String },
    /// Java refuses a truststore without entries only when it first needs it; fail at publish.
    #[error(
        "the PKCS#12 truststore {file:?} would hold no certificate: the issuer returned no CA and \
         the volume has no trust bundle; add trust sources (the trust-* attributes) or remove \
         the truststore"
    )]
    EmptyTruststore { file: String },
    #[error("building the PKCS#12 file {file:?}: {message}")]
    Pkcs12 { file: String, message: String },
}

/// The files of a volume for `req` made from `material`, in a fixed order: key, certificate, CA,
/// then the optional files the request names.
pub(crate) fn render(req: &CertRequest, material: &Material) -> Result<Vec<FileSpec>, LayoutError> {
    let names = &req.files;
    let key_pem = material.key.to_pem(req.key_encoding)?;
    let chain = pem_certificates(&material.chain_pem, "the issued chain")?;
    if chain.is_empty() {
        return Err(LayoutError::EmptyChain);
    }

    let mut files = vec![
        FileSpec {
            name: names.private_key.clone(),
            contents: Zeroizing::new(key_pem.as_bytes().to_vec()),
        },
        FileSpec::new(names.certificate.clone(), material.chain_pem.clone()),
        FileSpec::new(names.ca.clone(), material.ca_pem.clone()),
    ];
    if let Some(name) = &names.key_chain {
        let mut both = Zeroizing::new(String::with_capacity(
            key_pem.len() + material.chain_pem.len() + 1,
        ));
        both.push_str(&key_pem);
        if !both.ends_with('\n') {
            both.push('\n');
        }
        both.push_str(&material.chain_pem);
        files.push(FileSpec {
            name: name.clone(),
            contents: Zeroizing::new(both.as_bytes().to_vec()),
        });
    }
    if let Some(name) = &names.chain {
        let mut pem = String::new();
        for der in &chain[1..] {
            pem.push_str(&certificate_pem(der)?);
        }
        files.push(FileSpec::new(name.clone(), pem));
    }
    if let Some(name) = &names.trust_bundle {
        files.push(FileSpec::new(name.clone(), material.trust_bundle()));
    }
    if let Some(p12) = &names.pkcs12 {
        if let Some(name) = &p12.keystore {
            let password = password_for(material, name)?;
            let ca = pem_certificates(&material.ca_pem, "the CA")?;
            let der = keystore(&material.key, &chain, &ca, password, p12.profile)
                .map_err(|message| pkcs12_error(name, message))?;
            files.push(FileSpec::new(name.clone(), der));
        }
        if let Some(name) = &p12.truststore {
            let password = password_for(material, name)?;
            let trusted = pem_certificates(material.trust_bundle(), "the trust bundle")?;
            if trusted.is_empty() {
                return Err(LayoutError::EmptyTruststore { file: name.clone() });
            }
            let der = truststore(&trusted, password, p12.profile)
                .map_err(|message| pkcs12_error(name, message))?;
            files.push(FileSpec::new(name.clone(), der));
        }
    }
    Ok(files)
}

fn password_for<'a>(material: &'a Material, file: &str) -> Result<&'a Password, LayoutError> {
    material
        .pkcs12_password
        .as_ref()
        .ok_or_else(|| LayoutError::NoPassword {
            file: file.to_owned(),
        })
}

fn pkcs12_error(file: &str, message: String) -> LayoutError {
    LayoutError::Pkcs12 {
        file: file.to_owned(),
        message,
    }
}

/// The DER of every CERTIFICATE block in `pem`, in order; other blocks are skipped.
fn pem_certificates(pem: &str, what: &'static str) -> Result<Vec<Vec<u8>>, LayoutError> {
    let mut out = Vec::new();
    for block in x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes()) {
        let block = block.map_err(|e| LayoutError::Pem {
            what,
            message: e.to_string(),
        })?;
        if block.label == "CERTIFICATE" {
            out.push(block.contents);
        }
    }
    Ok(out)
}

fn certificate_pem(der: &[u8]) -> Result<String, LayoutError> {
    keys::pem_encode("CERTIFICATE", der).map_err(|message| LayoutError::Pem {
        what: "the issued chain",
        message,
    })
}

fn p12_cert(der: &[u8]) -> Result<P12Certificate, String> {
    P12Certificate::from_der(der).map_err(|e| format!("certificate: {e}"))
}

fn write(store: &KeyStore, password: &Password, profile: Pkcs12Profile) -> Result<Vec<u8>, String> {
    let writer = store.writer(password.expose());
    let writer = match profile {
        Pkcs12Profile::Modern => writer
            .encryption_algorithm(EncryptionAlgorithm::PbeWithHmacSha256AndAes256)
            .encryption_iterations(MODERN_ITERATIONS)
            .mac_algorithm(MacAlgorithm::HmacSha256)
            .mac_iterations(MODERN_ITERATIONS),
        Pkcs12Profile::Legacy => writer
            .encryption_algorithm(EncryptionAlgorithm::PbeWithShaAnd3KeyTripleDesCbc)
            .encryption_iterations(LEGACY_ITERATIONS)
            .mac_algorithm(MacAlgorithm::HmacSha1)
            .mac_iterations(LEGACY_ITERATIONS),
    };
    writer.write().map_err(|e| e.to_string())
}

/// A keystore with one key entry: the key, the chain, then the CA certificates the chain does
/// not already hold (so that Java sees the full path up to the root).
fn keystore(
    key: &PrivateKey,
    chain: &[Vec<u8>],
    ca: &[Vec<u8>],
    password: &Password,
    profile: Pkcs12Profile,
) -> Result<Vec<u8>, String> {
    let mut certs = Vec::with_capacity(chain.len() + ca.len());
    for der in chain.iter().chain(ca.iter().filter(|c| !chain.contains(c))) {
        certs.push(p12_cert(der)?);
    }
    let p12_key =
        P12PrivateKey::from_der(key.pkcs8_der()).map_err(|e| format!("private key: {e}"))?;
    // The local key id ties the key to its certificate; a digest of the leaf is unique per
    // issuance and stable for the same certificate.
    let key_id = {
        use sha2::Digest;
        sha2::Sha256::digest(&chain[0]).to_vec()
    };
    let entry = PrivateKeyChain::new(LocalKeyId::from(key_id), p12_key, certs);
    let mut store = KeyStore::new();
    store.add_entry(KEYSTORE_ALIAS, KeyStoreEntry::PrivateKeyChain(entry));
    write(&store, password, profile)
}

/// A truststore: every certificate of the bundle as a trusted certificate entry.
fn truststore(
    trusted: &[Vec<u8>],
    password: &Password,
    profile: Pkcs12Profile,
) -> Result<Vec<u8>, String> {
    let mut store = KeyStore::new();
    for (i, der) in trusted.iter().enumerate() {
        store.add_entry(
            &format!("ca-{}", i + 1),
            KeyStoreEntry::Certificate(p12_cert(der)?),
        );
    }
    write(&store, password, profile)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::io::Write;
    use std::process::{Command, Stdio};
    use std::time::Duration;

    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

    use super::*;
    use crate::spec::request::{
        FileNames, IssuerRef, KeyAlgorithm, KeyEncoding, PasswordSource, Pkcs12Files, PodInfo,
        Sans, Subject,
    };

    struct Pki {
        root_pem: String,
        intermediate_pem: String,
        leaf_pem: String,
        key: PrivateKey,
    }

    fn ca_params(cn: &str) -> CertificateParams {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p
    }

    /// Root → intermediate → leaf, the leaf's key generated by certvol's own key code.
    fn pki(alg: KeyAlgorithm) -> Pki {
        let root_key = KeyPair::generate().unwrap();
        let root_params = ca_params("Layout Root");
        let root = root_params.self_signed(&root_key).unwrap();
        let root_issuer = Issuer::new(root_params, root_key);
        let inter_key = KeyPair::generate().unwrap();
        let inter_params = ca_params("Layout Intermediate");
        let inter = inter_params.signed_by(&inter_key, &root_issuer).unwrap();
        let inter_issuer = Issuer::new(inter_params, inter_key);
        let key = PrivateKey::generate(alg).unwrap();
        let leaf_pair = KeyPair::try_from(key.pkcs8_der()).unwrap();
        let mut leaf_params = CertificateParams::new(vec!["web.shop.svc".to_string()]).unwrap();
        leaf_params
            .distinguished_name
            .push(DnType::CommonName, "web");
        let leaf = leaf_params.signed_by(&leaf_pair, &inter_issuer).unwrap();
        Pki {
            root_pem: root.pem(),
            intermediate_pem: inter.pem(),
            leaf_pem: leaf.pem(),
            key,
        }
    }

    fn material(p: &Pki) -> Material {
        Material {
            key: p.key.clone(),
            chain_pem: format!("{}{}", p.leaf_pem, p.intermediate_pem),
            ca_pem: p.root_pem.clone(),
            trust_bundle_pem: None,
            pkcs12_password: Some(Password::new("s3cret pass")),
        }
    }

    fn request(files: FileNames) -> CertRequest {
        CertRequest {
            pod: PodInfo::default(),
            issuer: IssuerRef {
                name: "ca".into(),
                kind: "Issuer".into(),
                group: "cert-manager.io".into(),
            },
            kube_csr: None,
            subject: Subject::default(),
            sans: Sans::default(),
            duration: Duration::from_secs(3600),
            renew_before: None,
            is_ca: false,
            usages: Vec::new(),
            key_algorithm: KeyAlgorithm::EcdsaP256,
            key_encoding: KeyEncoding::Pkcs8,
            reuse_private_key: false,
            renew: true,
            files,
            fs_group: None,
            annotations: BTreeMap::new(),
            trust: None,
        }
    }

    fn pkcs12(
        keystore: Option<&str>,
        truststore: Option<&str>,
        profile: Pkcs12Profile,
    ) -> FileNames {
        FileNames {
            pkcs12: Some(Pkcs12Files {
                keystore: keystore.map(Into::into),
                truststore: truststore.map(Into::into),
                profile,
                password: PasswordSource {
                    secret_key: "pkcs12-password".into(),
                    secret_key_attribute: None,
                    literal_attribute: None,
                },
            }),
            ..FileNames::default()
        }
    }

    fn by_name(files: &[FileSpec]) -> BTreeMap<String, Vec<u8>> {
        files
            .iter()
            .map(|f| (f.name.clone(), f.contents.to_vec()))
            .collect()
    }

    /// Runs `openssl pkcs12` with `args` on `der`; returns (success, stdout + stderr).
    fn openssl_pkcs12(der: &[u8], args: &[&str]) -> (bool, String) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.p12");
        std::fs::write(&path, der).unwrap();
        let mut child = Command::new("openssl")
            .arg("pkcs12")
            .arg("-in")
            .arg(&path)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("openssl on PATH");
        child.stdin.take().unwrap().write_all(b"").unwrap();
        let out = child.wait_with_output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    fn pem_blocks(text: &str, label: &str) -> Vec<String> {
        let begin = format!("-----BEGIN {label}-----");
        let end = format!("-----END {label}-----");
        let mut out = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find(&begin) {
            let Some(stop) = rest[start..].find(&end) else {
                break;
            };
            out.push(rest[start..start + stop + end.len()].to_string() + "\n");
            rest = &rest[start + stop + end.len()..];
        }
        out
    }

    #[test]
    fn pem_files_key_chain_and_chain_without_leaf() {
        let p = pki(KeyAlgorithm::EcdsaP256);
        let files = FileNames {
            key_chain: Some("key-chain.pem".into()),
            chain: Some("chain.pem".into()),
            ..FileNames::default()
        };
        let req = request(files);
        let m = material(&p);
        let out = render(&req, &m).unwrap();
        let names: Vec<&str> = out.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(
            names,
            ["tls.key", "tls.crt", "ca.crt", "key-chain.pem", "chain.pem"]
        );
        let files = by_name(&out);
        let key_pem = String::from_utf8(files["tls.key"].clone()).unwrap();
        assert_eq!(
            PrivateKey::from_pem(&key_pem).unwrap().pkcs8_der(),
            p.key.pkcs8_der()
        );
        assert_eq!(files["tls.crt"], m.chain_pem.as_bytes());
        assert_eq!(files["ca.crt"], p.root_pem.as_bytes());

        let key_chain = String::from_utf8(files["key-chain.pem"].clone()).unwrap();
        assert!(key_chain.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        assert_eq!(key_chain, format!("{key_pem}{}", m.chain_pem));

        let chain = String::from_utf8(files["chain.pem"].clone()).unwrap();
        let leaf = crate::x509::pki::parse_pem_chain(&p.leaf_pem).unwrap();
        let inter = crate::x509::pki::parse_pem_chain(&chain).unwrap();
        assert_eq!(inter.len(), 1);
        assert!(inter[0].subject.contains("Layout Intermediate"));
        assert!(
            !chain.contains(&p.leaf_pem),
            "the leaf is not in the chain file"
        );
        assert_ne!(inter[0].der, leaf[0].der);
    }

    #[test]
    fn chain_file_is_empty_when_the_ca_signs_the_leaf_and_key_chain_follows_encoding() {
        let p = pki(KeyAlgorithm::EcdsaP256);
        let mut req = request(FileNames {
            key_chain: Some("both.pem".into()),
            chain: Some("chain.pem".into()),
            ..FileNames::default()
        });
        req.key_encoding = KeyEncoding::Pkcs1;
        let m = Material {
            chain_pem: p.leaf_pem.clone(),
            ..material(&p)
        };
        let files = by_name(&render(&req, &m).unwrap());
        assert!(files["chain.pem"].is_empty());
        let both = String::from_utf8(files["both.pem"].clone()).unwrap();
        assert!(
            both.starts_with("-----BEGIN EC PRIVATE KEY-----\n"),
            "{both}"
        );
        assert!(both.ends_with(&p.leaf_pem));
    }

    #[test]
    fn trust_bundle_is_the_material_bundle_or_the_ca() {
        let p = pki(KeyAlgorithm::EcdsaP256);
        let req = request(FileNames {
            trust_bundle: Some("ca-certificates.crt".into()),
            ..FileNames::default()
        });
        let mut m = material(&p);
        let files = by_name(&render(&req, &m).unwrap());
        assert_eq!(files["ca-certificates.crt"], p.root_pem.as_bytes());
        // A new bundle is the same call with new material: no renewal needed.
        m.trust_bundle_pem = Some(format!("{}{}", p.root_pem, p.intermediate_pem));
        let files = by_name(&render(&req, &m).unwrap());
        assert_eq!(
            files["ca-certificates.crt"],
            format!("{}{}", p.root_pem, p.intermediate_pem).as_bytes()
        );
        assert_eq!(files["tls.crt"], m.chain_pem.as_bytes());
    }

    #[test]
    fn modern_keystore_opens_with_openssl_and_holds_key_chain_and_ca() {
        let p = pki(KeyAlgorithm::EcdsaP256);
        let req = request(pkcs12(Some("keystore.p12"), None, Pkcs12Profile::Modern));
        let files = by_name(&render(&req, &material(&p)).unwrap());
        let der = &files["keystore.p12"];

        let (ok, info) = openssl_pkcs12(der, &["-info", "-nokeys", "-passin", "pass:s3cret pass"]);
        assert!(ok, "{info}");
        assert!(info.contains("MAC: sha256"), "{info}");
        assert!(info.contains("PBES2, PBKDF2, AES-256-CBC"), "{info}");
        let certs = pem_blocks(&info, "CERTIFICATE");
        assert_eq!(
            certs,
            [
                p.leaf_pem.clone(),
                p.intermediate_pem.clone(),
                p.root_pem.clone()
            ]
        );

        let (ok, keys) =
            openssl_pkcs12(der, &["-nocerts", "-nodes", "-passin", "pass:s3cret pass"]);
        assert!(ok, "{keys}");
        // The key entry's friendly name is what Java shows as its alias.
        assert!(keys.contains("friendlyName: certificate"), "{keys}");
        let key = pem_blocks(&keys, "PRIVATE KEY");
        assert_eq!(key.len(), 1, "{keys}");
        assert_eq!(
            PrivateKey::from_pem(&key[0]).unwrap().pkcs8_der(),
            p.key.pkcs8_der()
        );

        let (ok, wrong) = openssl_pkcs12(der, &["-info", "-nokeys", "-passin", "pass:wrong"]);
        assert!(!ok, "a wrong password must not open the keystore: {wrong}");
    }

    #[test]
    fn legacy_keystore_uses_3des_and_sha1_and_opens_with_openssl_legacy() {
        let p = pki(KeyAlgorithm::Rsa2048);
        let req = request(pkcs12(Some("ks.p12"), None, Pkcs12Profile::Legacy));
        let files = by_name(&render(&req, &material(&p)).unwrap());
        let (ok, info) = openssl_pkcs12(
            &files["ks.p12"],
            &["-legacy", "-info", "-nodes", "-passin", "pass:s3cret pass"],
        );
        assert!(ok, "{info}");
        assert!(info.contains("MAC: sha1"), "{info}");
        assert!(info.contains("pbeWithSHA1And3-KeyTripleDES-CBC"), "{info}");
        assert!(!info.contains("PBES2"), "{info}");
        assert_eq!(pem_blocks(&info, "CERTIFICATE").len(), 3);
        assert_eq!(pem_blocks(&info, "PRIVATE KEY").len(), 1);
    }

    #[test]
    fn truststore_holds_every_bundle_certificate_as_trusted_entries() {
        let p = pki(KeyAlgorithm::EcdsaP256);
        let req = request(pkcs12(None, Some("truststore.p12"), Pkcs12Profile::Modern));
        let mut m = material(&p);
        m.trust_bundle_pem = Some(format!("{}{}", p.root_pem, p.intermediate_pem));
        let out = render(&req, &m).unwrap();
        let names: Vec<&str> = out.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["tls.key", "tls.crt", "ca.crt", "truststore.p12"]);
        let files = by_name(&out);
        let (ok, info) = openssl_pkcs12(
            &files["truststore.p12"],
            &["-info", "-nokeys", "-passin", "pass:s3cret pass"],
        );
        assert!(ok, "{info}");
        assert_eq!(
            pem_blocks(&info, "CERTIFICATE"),
            [p.root_pem.clone(), p.intermediate_pem.clone()]
        );
        assert!(info.contains("friendlyName: ca-1"), "{info}");
        assert!(info.contains("friendlyName: ca-2"), "{info}");
        // Java only treats certificates carrying Oracle's trusted-key-usage attribute as
        // trusted entries of a PKCS#12 truststore.
        assert!(info.contains("2.16.840.1.113894.746875.1.1"), "{info}");
        assert!(!info.contains("Shrouded Keybag"), "{info}");
    }

    #[test]
    fn pkcs12_without_password_and_bad_chains_are_errors() {
        let p = pki(KeyAlgorithm::EcdsaP256);
        let req = request(pkcs12(Some("keystore.p12"), None, Pkcs12Profile::Modern));
        let mut m = material(&p);
        m.pkcs12_password = None;
        let err = render(&req, &m).unwrap_err();
        assert!(
            matches!(&err, LayoutError::NoPassword { file } if file == "keystore.p12"),
            "{err}"
        );

        // A truststore from an issuer without CA and no bundle would be empty.
        let req = request(pkcs12(None, Some("trust.p12"), Pkcs12Profile::Modern));
        let m = Material {
            ca_pem: String::new(),
            ..material(&p)
        };
        let err = render(&req, &m).unwrap_err();
        assert!(
            matches!(&err, LayoutError::EmptyTruststore { file } if file == "trust.p12"),
            "{err}"
        );
        // ...while a keystore then simply holds the chain.
        let req = request(pkcs12(Some("ks.p12"), None, Pkcs12Profile::Modern));
        let files = by_name(&render(&req, &m).unwrap());
        let (ok, info) = openssl_pkcs12(
            &files["ks.p12"],
            &["-info", "-nokeys", "-passin", "pass:s3cret pass"],
        );
        assert!(ok, "{info}");
        assert_eq!(
            pem_blocks(&info, "CERTIFICATE"),
            [p.leaf_pem.clone(), p.intermediate_pem.clone()]
        );

        let m = Material {
            chain_pem: String::new(),
            ..material(&p)
        };
        assert!(matches!(
            render(&request(FileNames::default()), &m),
            Err(LayoutError::EmptyChain)
        ));
    }

    /// `keytool -list -v` on `der`, or `None` when no JDK is installed (CI images may lack one).
    fn keytool_list(der: &[u8], password: &str) -> Option<String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.p12");
        std::fs::write(&path, der).unwrap();
        let out = match Command::new("keytool")
            .args([
                "-list",
                "-v",
                "-storetype",
                "PKCS12",
                "-storepass",
                password,
            ])
            .arg("-keystore")
            .arg(&path)
            .output()
        {
            Ok(out) => out,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                eprintln!("skipped: keytool (a JDK) is not installed");
                return None;
            }
            Err(e) => panic!("run keytool: {e}"),
        };
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "keytool failed: {text}");
        Some(text)
    }

    #[test]
    fn java_reads_the_keystore_and_the_truststore() {
        let p = pki(KeyAlgorithm::EcdsaP256);
        let mut m = material(&p);
        m.trust_bundle_pem = Some(format!("{}{}", p.root_pem, p.intermediate_pem));
        for profile in [Pkcs12Profile::Modern, Pkcs12Profile::Legacy] {
            let req = request(pkcs12(Some("ks.p12"), Some("ts.p12"), profile));
            let files = by_name(&render(&req, &m).unwrap());
            let Some(ks) = keytool_list(&files["ks.p12"], "s3cret pass") else {
                return;
            };
            assert!(ks.contains("Your keystore contains 1 entry"), "{ks}");
            assert!(ks.contains("Alias name: certificate"), "{ks}");
            assert!(ks.contains("Entry type: PrivateKeyEntry"), "{ks}");
            assert!(ks.contains("Certificate chain length: 3"), "{ks}");
            let ts = keytool_list(&files["ts.p12"], "s3cret pass").unwrap_or_default();
            assert!(ts.contains("Your keystore contains 2 entries"), "{ts}");
            assert!(ts.contains("Alias name: ca-1"), "{ts}");
            assert_eq!(
                ts.matches("Entry type: trustedCertEntry").count(),
                2,
                "{ts}"
            );
        }
    }

    #[test]
    fn debug_never_shows_secrets() {
        let p = pki(KeyAlgorithm::EcdsaP256);
        let shown = format!("{:?}", material(&p));
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
        assert!(!shown.contains("BEGIN"), "{shown}");
    }
}
