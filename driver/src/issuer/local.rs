//! The embedded local CA: signs CSRs on the node itself, for demos, tests and clusters without
//! cert-manager.
//!
//! Like cert-manager's CA issuer it takes the public key, subject and SANs from the CSR and the
//! usages, `is_ca` and duration from the request spec. Every signed leaf is recorded as
//! `<dir>/issued/<request-name>.crt`; a repeated request with the same name and key gets the
//! recorded certificate back, which makes "one issuance per request name" hold across crashes.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;
use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::cri_attributes::ParsedCriAttribute;
use x509_parser::extensions::ParsedExtension;
use x509_parser::prelude::FromDer;

use crate::base::clock::Clock;
use crate::files::fsutil;
use crate::issuer::policy::{LocalPolicy, PolicyViolation};
use crate::issuer::{IssueError, IssueRequest, Issued, Issuer};
use crate::spec::request::KeyAlgorithm;
use crate::x509::keys::{self, PrivateKey, der, oid};
use crate::x509::pki::{self, CertInfo};

/// Lifetime of a CA this issuer generates itself.
const GENERATED_CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
const GENERATED_CA_NAME: &str = "certvol local CA";

/// Where the CA lives and how long the certificates it signs may be.
#[derive(Clone, Debug)]
pub(crate) struct LocalCaConfig {
    /// `<data-root>/local-ca`: the generated CA (when no files are given) and the issued records.
    pub dir: PathBuf,
    /// PEM certificate of an existing CA; needs `key_file` too.
    pub cert_file: Option<PathBuf>,
    /// PEM private key of that CA: PKCS#8, SEC1 or PKCS#1.
    pub key_file: Option<PathBuf>,
    /// Longest validity handed out; longer requests are cut to this.
    pub max_duration: Duration,
    /// What the CA agrees to sign (names, CA certificates), set by the operator.
    pub policy: LocalPolicy,
}

/// Why the local CA could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LocalCaError {
    #[error("local CA: cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("local CA: {message}")]
    Config { message: String },
    #[error("local CA certificate {path}: {message}")]
    InvalidCa { path: PathBuf, message: String },
    #[error("local CA: {0}")]
    Key(#[from] keys::KeyError),
}

/// The embedded CA. Cheap to share behind an `Arc`.
pub(crate) struct LocalCa {
    issued_dir: PathBuf,
    max_duration: Duration,
    policy: LocalPolicy,
    clock: Arc<dyn Clock>,
    key: PrivateKey,
    cert: CertInfo,
    /// Raw DER of the CA's subject: the issuer name of every leaf, byte for byte.
    subject_der: Vec<u8>,
    /// Key identifier for the leaves' AuthorityKeyIdentifier, when the CA has one.
    key_id: Option<Vec<u8>>,
    pem: String,
    /// Serializes check-record-then-sign per CA so two concurrent calls for one name sign once.
    lock: Mutex<()>,
}

impl std::fmt::Debug for LocalCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalCa")
            .field("subject", &self.cert.subject)
            .field("issued_dir", &self.issued_dir)
            .field("max_duration", &self.max_duration)
            .finish_non_exhaustive()
    }
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> LocalCaError + 'a {
    move |source| LocalCaError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

impl LocalCa {
    /// Opens the CA: from `cert_file`/`key_file` when given, else from `<dir>/ca.crt` and
    /// `<dir>/ca.key`, else generates an ECDSA P-256 CA valid for 10 years and keeps it there
    /// (directory 0700, key 0600). `ca.crt` is written after `ca.key`, so its presence marks a
    /// complete CA; a lone `ca.key` left by a crash is replaced.
    pub(crate) fn open(cfg: LocalCaConfig, clock: Arc<dyn Clock>) -> Result<Self, LocalCaError> {
        if cfg.max_duration.is_zero() {
            return Err(LocalCaError::Config {
                message: "max_duration must be positive".into(),
            });
        }
        fsutil::create_dir_mode(&cfg.dir, 0o700).map_err(io_err("create", &cfg.dir))?;
        let issued_dir = cfg.dir.join("issued");
        fsutil::create_dir_mode(&issued_dir, 0o700).map_err(io_err("create", &issued_dir))?;

        let (cert_path, key_path) = match (&cfg.cert_file, &cfg.key_file) {
            (Some(c), Some(k)) => (c.clone(), k.clone()),
            (None, None) => {
                let cert_path = cfg.dir.join("ca.crt");
                let key_path = cfg.dir.join("ca.key");
                if !cert_path.exists() {
                    generate_ca(&cert_path, &key_path, clock.now())?;
                }
                (cert_path, key_path)
            }
            _ => {
                return Err(LocalCaError::Config {
                    message: "a CA certificate file and a CA key file must be given together"
                        .into(),
                });
            }
        };

        let cert_pem = fs::read_to_string(&cert_path).map_err(io_err("read", &cert_path))?;
        let key_pem = zeroize::Zeroizing::new(
            fs::read_to_string(&key_path).map_err(io_err("read", &key_path))?,
        );
        let invalid = |message: String| LocalCaError::InvalidCa {
            path: cert_path.clone(),
            message,
        };
        let cert = pki::parse_pem_chain(&cert_pem)
            .map_err(|e| invalid(e.to_string()))?
            .into_iter()
            .next()
            .ok_or_else(|| invalid("no certificate".into()))?;
        let key = PrivateKey::from_pem(&key_pem).map_err(|e| LocalCaError::InvalidCa {
            path: key_path.clone(),
            message: e.to_string(),
        })?;
        if !pki::key_matches(&cert, &key).map_err(|e| invalid(e.to_string()))? {
            return Err(invalid(format!(
                "the key in {} does not belong to this certificate",
                key_path.display()
            )));
        }
        if !cert.is_ca {
            return Err(invalid(
                "not a CA certificate (BasicConstraints cA is not set)".into(),
            ));
        }
        if clock.now() > cert.not_after {
            return Err(invalid(format!(
                "the CA certificate {:?} has expired; replace it (or delete {} to generate a new \
                 one)",
                cert.subject,
                cfg.dir.display()
            )));
        }
        let (subject_der, key_id) = ca_name_and_key_id(&cert.der).map_err(invalid)?;
        Ok(LocalCa {
            issued_dir,
            max_duration: cfg.max_duration,
            policy: cfg.policy,
            clock,
            key,
            subject_der,
            key_id,
            pem: keys::pem_encode("CERTIFICATE", &cert.der).map_err(invalid)?,
            cert,
            lock: Mutex::new(()),
        })
    }

    /// The CA certificate, PEM.
    #[cfg(test)]
    pub(crate) fn ca_pem(&self) -> &str {
        &self.pem
    }

    /// The names of the requests this CA has signed and still remembers, sorted.
    #[cfg(test)]
    pub(crate) fn issued_names(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(&self.issued_dir)? {
            let name = entry?.file_name();
            let Some(name) = name.to_str() else { continue };
            // Skip temporaries of an interrupted atomic write (".name.crt.tmpPID").
            if name.starts_with('.') {
                continue;
            }
            if let Some(stem) = name.strip_suffix(".crt") {
                names.push(stem.to_string());
            }
        }
        names.sort();
        Ok(names)
    }

    fn record_path(&self, name: &str) -> PathBuf {
        self.issued_dir.join(format!("{name}.crt"))
    }

    fn issue_sync(&self, req: &IssueRequest) -> Result<Issued, IssueError> {
        let request = req.name.clone();
        let invalid = |message: String| IssueError::Invalid {
            request: request.clone(),
            message,
        };
        check_request_name(&req.name).map_err(&invalid)?;
        // Checked again here, not only at publish: renewals come this way, and an operator who
        // tightened the policy and restarted must not see the old rules applied. Also before
        // the record lookup, so a certificate recorded under looser rules is not handed out.
        self.policy
            .check(&req.cert)
            .map_err(|violation| IssueError::Denied {
                request: request.clone(),
                message: violation.to_string(),
            })?;
        let csr = CsrParts::parse(&req.csr_der).map_err(&invalid)?;

        // A lock that cannot poison: an issuance that panicked leaves the files consistent,
        // because every write is atomic.
        let _guard = self.lock.lock();
        let record = self.record_path(&req.name);
        match fs::read_to_string(&record) {
            Ok(pem) => {
                let recorded = pki::parse_pem_chain(&pem).map_err(|e| IssueError::Failed {
                    request: request.clone(),
                    message: format!("the record {} is unreadable: {e}", record.display()),
                })?;
                let Some(leaf) = recorded.first() else {
                    return Err(IssueError::Failed {
                        request: request.clone(),
                        message: format!("the record {} is empty", record.display()),
                    });
                };
                if leaf.spki_der != csr.spki {
                    return Err(invalid(format!(
                        "request name {} was already signed for a different public key; a new \
                         key needs a new request name",
                        req.name
                    )));
                }
                return Ok(Issued {
                    chain_pem: pem,
                    ca_pem: self.pem.clone(),
                });
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(IssueError::Unavailable {
                    message: format!("cannot read {}: {e}", record.display()),
                });
            }
        }

        let leaf_der = self
            .sign_leaf(req, &csr)
            .map_err(|message| IssueError::Failed {
                request: request.clone(),
                message,
            })?;
        let leaf_pem =
            keys::pem_encode("CERTIFICATE", &leaf_der).map_err(|message| IssueError::Failed {
                request: request.clone(),
                message,
            })?;
        // The record lets a retry after a driver crash adopt this certificate; after a power
        // loss the volume is published afresh anyway, so it is not fsynced.
        fsutil::replace(&record, leaf_pem.as_bytes(), 0o644).map_err(|e| {
            IssueError::Unavailable {
                message: format!("cannot record {}: {e}", record.display()),
            }
        })?;
        Ok(Issued {
            chain_pem: leaf_pem,
            ca_pem: self.pem.clone(),
        })
    }

    /// Builds and signs the leaf. Validity starts at the clock's current second (no backdating:
    /// the node that checks the certificate is the node that issued it) and lasts the requested
    /// duration, capped at `max_duration` and at the CA's own expiry, as cert-manager's CA
    /// issuer caps it.
    fn sign_leaf(&self, req: &IssueRequest, csr: &CsrParts) -> Result<Vec<u8>, String> {
        let now = self.clock.now();
        let not_before = UNIX_EPOCH
            + Duration::from_secs(
                now.duration_since(UNIX_EPOCH)
                    .map_err(|_| "the clock is before 1970")?
                    .as_secs(),
            );
        let duration = req.cert.duration.min(self.max_duration);
        if duration.is_zero() {
            return Err("the requested duration is zero".into());
        }
        let not_after = (not_before + duration).min(self.cert.not_after);

        let mut extensions = Vec::new();
        if let Some(san) = &csr.san_value {
            // RFC 5280 4.2.1.6: critical when the subject is empty.
            let critical = csr.subject == keys::EMPTY_NAME;
            extensions.push(der::extension(oid::SUBJECT_ALT_NAME, critical, san));
        }
        let usages = keys::effective_usages(&req.cert.usages);
        extensions.extend(keys::key_usage_extension(usages, req.cert.is_ca));
        extensions.extend(keys::ext_key_usage_extension(usages));
        // pathLenConstraint 0: a CA the policy lets a volume have may sign leaves, never
        // another CA below it.
        extensions.push(keys::basic_constraints_extension_with_path_len(
            req.cert.is_ca,
            Some(0),
        ));
        extensions.push(subject_key_id_extension(&csr.spki));
        if let Some(id) = &self.key_id {
            extensions.push(authority_key_id_extension(id));
        }
        sign_certificate(
            &self.key,
            &TbsFields {
                issuer: &self.subject_der,
                subject: &csr.subject,
                spki: &csr.spki,
                not_before,
                not_after,
                extensions,
            },
        )
    }
}

impl Issuer for LocalCa {
    fn kind(&self) -> &'static str {
        "local"
    }

    fn check_policy(&self, req: &crate::spec::request::CertRequest) -> Result<(), PolicyViolation> {
        self.policy.check(req)
    }

    fn issue<'a>(&'a self, req: &'a IssueRequest) -> BoxFuture<'a, Result<Issued, IssueError>> {
        // ECDSA signing and two small file operations: quick enough to run inline.
        Box::pin(async move { self.issue_sync(req) })
    }

    fn forget<'a>(
        &'a self,
        _namespace: &'a str,
        names: &'a [String],
    ) -> BoxFuture<'a, Result<(), IssueError>> {
        Box::pin(async move {
            let _guard = self.lock.lock();
            for name in names {
                // A name that is not a plain file name was never recorded.
                if check_request_name(name).is_err() {
                    continue;
                }
                let path = self.record_path(name);
                match fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(IssueError::Unavailable {
                            message: format!("cannot remove {}: {e}", path.display()),
                        });
                    }
                }
            }
            Ok(())
        })
    }
}

/// Request names become file names: allow only `[A-Za-z0-9._-]`, no leading dot, at most 250
/// bytes, so a name can never be a path or a hidden temporary.
fn check_request_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 250
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "request name {name:?} is not a plain name (letters, digits, '-', '_', '.'; no \
             leading '.'; at most 250 bytes)"
        ))
    }
}

/// What the CA copies from a CSR, after checking its signature.
struct CsrParts {
    subject: Vec<u8>,
    spki: Vec<u8>,
    /// Raw SubjectAltName extension value, if requested.
    san_value: Option<Vec<u8>>,
}

impl CsrParts {
    fn parse(csr_der: &[u8]) -> Result<Self, String> {
        let (rest, csr) = X509CertificationRequest::from_der(csr_der)
            .map_err(|e| format!("the CSR cannot be parsed: {e}"))?;
        if !rest.is_empty() {
            return Err("the CSR has trailing bytes".into());
        }
        csr.verify_signature().map_err(|e| {
            format!("the CSR signature does not verify with its own public key: {e}")
        })?;
        let info = &csr.certification_request_info;
        let mut san_value = None;
        for attr in info.iter_attributes() {
            if let ParsedCriAttribute::ExtensionRequest(ext_req) = attr.parsed_attribute() {
                for ext in &ext_req.extensions {
                    if let ParsedExtension::SubjectAlternativeName(_) = ext.parsed_extension() {
                        san_value = Some(ext.value.to_vec());
                    }
                }
            }
        }
        let subject = info.subject.as_raw().to_vec();
        if subject == keys::EMPTY_NAME && san_value.is_none() {
            return Err("the CSR has neither a subject nor subject alternative names".into());
        }
        Ok(CsrParts {
            subject,
            spki: info.subject_pki.raw.to_vec(),
            san_value,
        })
    }
}

/// The CA's subject DER and its key identifier (from its SubjectKeyIdentifier extension, or
/// derived like ours when it has none).
fn ca_name_and_key_id(cert_der: &[u8]) -> Result<(Vec<u8>, Option<Vec<u8>>), String> {
    let (_, cert) =
        x509_parser::certificate::X509Certificate::from_der(cert_der).map_err(|e| e.to_string())?;
    let mut key_id = None;
    for ext in cert.extensions() {
        if let ParsedExtension::SubjectKeyIdentifier(id) = ext.parsed_extension() {
            key_id = Some(id.0.to_vec());
        }
    }
    Ok((cert.subject().as_raw().to_vec(), key_id))
}

/// RFC 7093 method 1: the leftmost 160 bits of the SHA-256 of the SPKI.
fn key_id(spki: &[u8]) -> Vec<u8> {
    Sha256::digest(spki)[..20].to_vec()
}

fn subject_key_id_extension(spki: &[u8]) -> Vec<u8> {
    der::extension(
        oid::SUBJECT_KEY_IDENTIFIER,
        false,
        &der::tlv(der::OCTET_STRING, &key_id(spki)),
    )
}

fn authority_key_id_extension(id: &[u8]) -> Vec<u8> {
    // AuthorityKeyIdentifier ::= SEQUENCE { keyIdentifier [0] IMPLICIT OCTET STRING }
    der::extension(
        oid::AUTHORITY_KEY_IDENTIFIER,
        false,
        &der::seq(&[&der::tlv(0x80, id)]),
    )
}

struct TbsFields<'a> {
    issuer: &'a [u8],
    subject: &'a [u8],
    spki: &'a [u8],
    not_before: SystemTime,
    not_after: SystemTime,
    extensions: Vec<Vec<u8>>,
}

/// Encodes a v3 TBSCertificate with a random positive 128-bit serial and signs it.
fn sign_certificate(signer: &PrivateKey, f: &TbsFields<'_>) -> Result<Vec<u8>, String> {
    let mut serial: [u8; 16] = rand::random();
    // Positive and exactly 16 bytes long: clear the sign bit, set the next one.
    serial[0] = (serial[0] & 0x7f) | 0x40;
    let alg = signer.signature_algorithm_der();
    let validity = der::seq(&[&der::time(f.not_before)?, &der::time(f.not_after)?]);
    let extensions = der::tlv(0xa3, &der::tlv(der::SEQUENCE, &f.extensions.concat()));
    let tbs = der::seq(&[
        &der::tlv(0xa0, &der::uint(&[2])),
        &der::uint(&serial),
        &alg,
        f.issuer,
        &validity,
        f.subject,
        f.spki,
        &extensions,
    ]);
    let signature = signer.sign(&tbs).map_err(|e| e.to_string())?;
    Ok(der::seq(&[&tbs, &alg, &der::bit_string(&signature)]))
}

/// Generates the self-signed CA and stores it: key first, certificate last.
fn generate_ca(cert_path: &Path, key_path: &Path, now: SystemTime) -> Result<(), LocalCaError> {
    let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256)?;
    let spki = key.public_key_der()?;
    let name = der::tlv(
        der::SEQUENCE,
        &der::set_of(vec![der::seq(&[
            &der::oid(oid::COMMON_NAME),
            &der::tlv(der::UTF8_STRING, GENERATED_CA_NAME.as_bytes()),
        ])]),
    );
    let not_before = UNIX_EPOCH
        + Duration::from_secs(now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs());
    // keyCertSign (bit 5) and cRLSign (bit 6).
    let key_usage = keys::key_usage_extension_bits((1 << 5) | (1 << 6));
    let mut extensions = vec![keys::basic_constraints_extension(true)];
    extensions.extend(key_usage);
    extensions.push(subject_key_id_extension(&spki));
    extensions.push(authority_key_id_extension(&key_id(&spki)));
    let der_cert = sign_certificate(
        &key,
        &TbsFields {
            issuer: &name,
            subject: &name,
            spki: &spki,
            not_before,
            not_after: not_before + GENERATED_CA_VALIDITY,
            extensions,
        },
    )
    .map_err(|message| LocalCaError::InvalidCa {
        path: cert_path.to_path_buf(),
        message: format!("cannot create the CA certificate: {message}"),
    })?;
    let key_pem = key.to_pem(crate::spec::request::KeyEncoding::Pkcs8)?;
    fsutil::atomic_write(key_path, key_pem.as_bytes(), 0o600).map_err(io_err("write", key_path))?;
    let cert_pem =
        keys::pem_encode("CERTIFICATE", &der_cert).map_err(|message| LocalCaError::InvalidCa {
            path: cert_path.to_path_buf(),
            message,
        })?;
    fsutil::atomic_write(cert_path, cert_pem.as_bytes(), 0o644)
        .map_err(io_err("write", cert_path))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::request::{
        CertRequest, FileNames, IssuerRef, KeyEncoding, KeyUsage, PodInfo, Sans, Subject,
    };
    use crate::x509::keys::build_csr;
    use std::collections::BTreeMap;
    use std::os::unix::fs::PermissionsExt;
    use x509_parser::certificate::X509Certificate;

    #[derive(Debug)]
    struct FixedClock(SystemTime);
    impl Clock for FixedClock {
        fn now(&self) -> SystemTime {
            self.0
        }
    }

    const NOW: u64 = 1_800_000_000;

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(NOW)
    }

    fn config(dir: &Path) -> LocalCaConfig {
        LocalCaConfig {
            dir: dir.join("local-ca"),
            cert_file: None,
            key_file: None,
            max_duration: Duration::from_secs(24 * 3600),
            policy: LocalPolicy {
                allow_ca: true,
                allow_ips: vec!["10.0.0.0/8".parse().unwrap()],
                allow_uris: vec!["spiffe://c/*".parse().unwrap()],
                ..LocalPolicy::default()
            },
        }
    }

    fn open(cfg: LocalCaConfig) -> LocalCa {
        LocalCa::open(cfg, Arc::new(FixedClock(now()))).unwrap()
    }

    fn cert_request(duration: Duration) -> CertRequest {
        CertRequest {
            pod: PodInfo {
                namespace: "default".into(),
                ..PodInfo::default()
            },
            issuer: IssuerRef {
                name: "local".into(),
                kind: "Issuer".into(),
                group: "certvol".into(),
            },
            kube_csr: None,
            subject: Subject {
                common_name: Some("web".into()),
                ..Subject::default()
            },
            sans: Sans {
                dns_names: vec!["web.default.svc".into()],
                ip_addresses: vec!["10.0.0.9".parse().unwrap()],
                uris: vec!["spiffe://c/ns/default/sa/web".into()],
            },
            duration,
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
            annotations: BTreeMap::new(),
            trust: None,
        }
    }

    fn issue_request(name: &str, cert: CertRequest, key: &PrivateKey) -> IssueRequest {
        let csr = build_csr(&cert, key).unwrap();
        IssueRequest {
            name: name.into(),
            volume_id: "vol".into(),
            node_id: "node".into(),
            csr_pem: csr.pem,
            csr_der: csr.der,
            cert: Arc::new(cert),
            token: None,
            worker: Default::default(),
        }
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        futures::executor::block_on(f)
    }

    #[test]
    fn issues_for_every_key_algorithm_with_spec_usages() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = open(config(tmp.path()));
        for (i, alg) in [
            KeyAlgorithm::EcdsaP256,
            KeyAlgorithm::EcdsaP384,
            KeyAlgorithm::Ed25519,
            KeyAlgorithm::Rsa2048,
        ]
        .into_iter()
        .enumerate()
        {
            let key = PrivateKey::generate(alg).unwrap();
            let req = issue_request(
                &format!("req-{i}"),
                cert_request(Duration::from_secs(3600)),
                &key,
            );
            let issued = block_on(ca.issue(&req)).unwrap();
            assert_eq!(issued.ca_pem, ca.ca_pem());
            let chain = pki::parse_pem_chain(&issued.chain_pem).unwrap();
            let anchors = pki::parse_pem_chain(&issued.ca_pem).unwrap();
            assert_eq!(chain.len(), 1);
            pki::verify_chain(&chain, &anchors, now()).unwrap();
            let leaf = &chain[0];
            assert!(pki::key_matches(leaf, &key).unwrap(), "{alg:?}");
            assert_eq!(leaf.key_algorithm, alg.label());
            assert_eq!(leaf.subject, "CN=web");
            assert_eq!(leaf.issuer, "CN=certvol local CA");
            assert_eq!(leaf.dns_names, ["web.default.svc"]);
            assert_eq!(
                leaf.ip_addresses,
                ["10.0.0.9".parse::<std::net::IpAddr>().unwrap()]
            );
            assert_eq!(leaf.uris, ["spiffe://c/ns/default/sa/web"]);
            assert!(!leaf.is_ca);
            assert_eq!(leaf.not_before, now());
            assert_eq!(leaf.not_after, now() + Duration::from_secs(3600));

            let (_, x) = X509Certificate::from_der(&leaf.der).unwrap();
            let ku = x.key_usage().unwrap().unwrap();
            assert!(ku.critical);
            assert!(ku.value.digital_signature() && ku.value.key_encipherment());
            assert!(!ku.value.key_cert_sign());
            let eku = x.extended_key_usage().unwrap().unwrap().value;
            assert!(eku.server_auth && !eku.client_auth);
            let aki = x
                .extensions()
                .iter()
                .find_map(|e| match e.parsed_extension() {
                    ParsedExtension::AuthorityKeyIdentifier(a) => a.key_identifier.clone(),
                    _ => None,
                });
            let ca_x = pki::parse_pem_chain(ca.ca_pem()).unwrap().remove(0);
            let (_, ca_x) = X509Certificate::from_der(&ca_x.der).unwrap();
            let ski = ca_x
                .extensions()
                .iter()
                .find_map(|e| match e.parsed_extension() {
                    ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0.to_vec()),
                    _ => None,
                });
            assert_eq!(aki.map(|k| k.0.to_vec()), ski, "leaf AKI names the CA key");
        }
        assert_eq!(
            ca.issued_names().unwrap(),
            ["req-0", "req-1", "req-2", "req-3"]
        );
    }

    #[test]
    fn duration_is_capped_and_is_ca_comes_from_the_spec() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = open(config(tmp.path()));
        let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
        let mut cert = cert_request(Duration::from_secs(90 * 24 * 3600));
        cert.is_ca = true;
        cert.usages = vec![KeyUsage::CertSign, KeyUsage::CrlSign];
        let issued = block_on(ca.issue(&issue_request("ca-req", cert, &key))).unwrap();
        let leaf = &pki::parse_pem_chain(&issued.chain_pem).unwrap()[0];
        assert!(leaf.is_ca);
        assert_eq!(leaf.not_after, now() + Duration::from_secs(24 * 3600));
        let (_, x) = X509Certificate::from_der(&leaf.der).unwrap();
        let ku = x.key_usage().unwrap().unwrap().value;
        assert!(ku.key_cert_sign() && ku.crl_sign() && !ku.digital_signature());
        assert!(x.extended_key_usage().unwrap().is_none());
        let bc = x.basic_constraints().unwrap().unwrap();
        assert!(bc.critical && bc.value.ca);
        assert_eq!(
            bc.value.path_len_constraint,
            Some(0),
            "no CA below this one"
        );
    }

    #[test]
    fn policy_refusals_are_denied_and_sign_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let mut cfg = config(tmp.path());
        cfg.policy = LocalPolicy::default();
        let ca = open(cfg.clone());
        let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
        let mut cert = cert_request(Duration::from_secs(3600));
        cert.sans.ip_addresses.clear();
        cert.sans.uris.clear();
        cert.is_ca = true;
        let err = block_on(ca.issue(&issue_request("ca-req", cert.clone(), &key))).unwrap_err();
        assert!(matches!(err, IssueError::Denied { .. }), "{err}");
        assert!(
            err.to_string().contains("csi.certvol.io/is-ca")
                && err.to_string().contains("--local-allow-ca"),
            "{err}"
        );
        cert.is_ca = false;
        cert.sans.dns_names = vec!["web.other.svc".into()];
        let err = block_on(ca.issue(&issue_request("dns-req", cert.clone(), &key))).unwrap_err();
        assert!(
            err.to_string().contains("\"web.other.svc\" is not allowed"),
            "{err}"
        );
        assert!(ca.issued_names().unwrap().is_empty());

        // A certificate recorded under looser rules is not handed out once they are tightened.
        let mut loose = cfg.clone();
        loose.policy.allow_dns = vec!["**".parse().unwrap()];
        block_on(open(loose).issue(&issue_request("dns-req", cert.clone(), &key))).unwrap();
        let err = block_on(ca.issue(&issue_request("dns-req", cert, &key))).unwrap_err();
        assert!(matches!(err, IssueError::Denied { .. }), "{err}");
    }

    #[test]
    fn ca_is_persisted_with_private_modes_and_reloaded() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = config(tmp.path());
        let first = open(cfg.clone());
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&cfg.dir), 0o700);
        assert_eq!(mode(&cfg.dir.join("ca.key")), 0o600);
        let ca_info = &pki::parse_pem_chain(first.ca_pem()).unwrap()[0];
        assert!(ca_info.is_ca);
        assert_eq!(ca_info.subject, "CN=certvol local CA");
        assert_eq!(ca_info.key_algorithm, "ECDSA P-256");
        assert_eq!(ca_info.not_after, now() + GENERATED_CA_VALIDITY);
        let (_, x) = X509Certificate::from_der(&ca_info.der).unwrap();
        let ku = x.key_usage().unwrap().unwrap().value;
        assert!(ku.key_cert_sign() && ku.crl_sign());
        pki::verify_chain(
            std::slice::from_ref(ca_info),
            std::slice::from_ref(ca_info),
            now(),
        )
        .unwrap();

        let second = open(cfg);
        assert_eq!(first.ca_pem(), second.ca_pem());
    }

    #[test]
    fn ca_from_given_files_signs_leaves() {
        let tmp = tempfile::tempdir().unwrap();
        // Make a CA elsewhere, then point a fresh instance at its files (SEC1 key).
        let origin = open(config(&tmp.path().join("origin")));
        let key_pem = PrivateKey::from_pem(
            &fs::read_to_string(tmp.path().join("origin/local-ca/ca.key")).unwrap(),
        )
        .unwrap()
        .to_pem(KeyEncoding::Pkcs1)
        .unwrap();
        let cert_file = tmp.path().join("given.crt");
        let key_file = tmp.path().join("given.key");
        fs::write(&cert_file, origin.ca_pem()).unwrap();
        fs::write(&key_file, key_pem.as_bytes()).unwrap();
        let mut cfg = config(tmp.path());
        cfg.cert_file = Some(cert_file.clone());
        cfg.key_file = Some(key_file);
        let ca = open(cfg.clone());
        assert_eq!(ca.ca_pem(), origin.ca_pem());
        assert!(
            !cfg.dir.join("ca.crt").exists(),
            "given files are not copied"
        );
        let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
        let issued = block_on(ca.issue(&issue_request(
            "r",
            cert_request(Duration::from_secs(60)),
            &key,
        )))
        .unwrap();
        pki::verify_chain(
            &pki::parse_pem_chain(&issued.chain_pem).unwrap(),
            &pki::parse_pem_chain(origin.ca_pem()).unwrap(),
            now(),
        )
        .unwrap();

        // Only one of the two files, or a key for another certificate, is refused.
        let mut half = cfg.clone();
        half.key_file = None;
        assert!(matches!(
            LocalCa::open(half, Arc::new(FixedClock(now()))).unwrap_err(),
            LocalCaError::Config { .. }
        ));
        let other_key = tmp.path().join("other.key");
        fs::write(
            &other_key,
            PrivateKey::generate(KeyAlgorithm::EcdsaP256)
                .unwrap()
                .to_pem(KeyEncoding::Pkcs8)
                .unwrap()
                .as_bytes(),
        )
        .unwrap();
        let mut wrong = cfg;
        wrong.key_file = Some(other_key);
        let err = LocalCa::open(wrong, Arc::new(FixedClock(now()))).unwrap_err();
        assert!(err.to_string().contains("does not belong"), "{err}");
    }

    #[test]
    fn repeated_request_adopts_the_recorded_certificate() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = config(tmp.path());
        let ca = open(cfg.clone());
        let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
        let first = block_on(ca.issue(&issue_request(
            "certvol-abc-1",
            cert_request(Duration::from_secs(3600)),
            &key,
        )))
        .unwrap();
        // A new CSR (fresh signature) for the same key after a "restart": same certificate.
        let reopened = open(cfg);
        let again = block_on(reopened.issue(&issue_request(
            "certvol-abc-1",
            cert_request(Duration::from_secs(3600)),
            &key,
        )))
        .unwrap();
        assert_eq!(first, again);
        assert_eq!(reopened.issued_names().unwrap(), ["certvol-abc-1"]);

        // Same name, another key: refused, naming the request.
        let other = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
        let err = block_on(reopened.issue(&issue_request(
            "certvol-abc-1",
            cert_request(Duration::from_secs(3600)),
            &other,
        )))
        .unwrap_err();
        assert!(matches!(err, IssueError::Invalid { .. }), "{err}");
        assert!(err.to_string().contains("certvol-abc-1"), "{err}");
        assert!(!err.is_transient());
    }

    #[test]
    fn bad_csr_and_bad_names_are_invalid() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = open(config(tmp.path()));
        let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
        let mut req = issue_request("r1", cert_request(Duration::from_secs(60)), &key);
        // Flip a byte of the signature.
        let last = req.csr_der.len() - 1;
        req.csr_der[last] ^= 0x01;
        let err = block_on(ca.issue(&req)).unwrap_err();
        assert!(matches!(err, IssueError::Invalid { .. }), "{err}");
        assert!(err.to_string().contains("signature"), "{err}");
        req.csr_der = b"not a csr".to_vec();
        assert!(matches!(
            block_on(ca.issue(&req)).unwrap_err(),
            IssueError::Invalid { .. }
        ));
        for name in ["../escape", "a/b", ".hidden", ""] {
            let req = issue_request(name, cert_request(Duration::from_secs(60)), &key);
            let err = block_on(ca.issue(&req)).unwrap_err();
            assert!(matches!(err, IssueError::Invalid { .. }), "{name:?}: {err}");
        }
        assert!(ca.issued_names().unwrap().is_empty());
    }

    #[test]
    fn forget_removes_records_and_ignores_unknown_names() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = open(config(tmp.path()));
        let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
        for name in ["a", "b"] {
            block_on(ca.issue(&issue_request(
                name,
                cert_request(Duration::from_secs(60)),
                &key,
            )))
            .unwrap();
        }
        block_on(ca.forget("default", &["a".into(), "never-seen".into(), "../x".into()])).unwrap();
        assert_eq!(ca.issued_names().unwrap(), ["b"]);
        // After forgetting, the name can be signed again (for any key).
        let other = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
        block_on(ca.issue(&issue_request(
            "a",
            cert_request(Duration::from_secs(60)),
            &other,
        )))
        .unwrap();
        assert_eq!(ca.issued_names().unwrap(), ["a", "b"]);
    }
}
