//! The certificate a volume asks for, as plain data.
//!
//! `attrs` turns a CSI volume context into a [`CertRequest`]; `keys` turns one into a key and a CSR;
//! issuers read the issuance parameters from it. Nothing here does I/O, so every layer above can
//! depend on it.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::spec::subject::LiteralSubject;

/// Who the volume belongs to, from the `csi.storage.k8s.io/*` keys kubelet adds when the CSIDriver
/// object sets `podInfoOnMount: true`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodInfo {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub service_account: String,
}

/// Which issuer signs the request (cert-manager's `issuerRef`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuerRef {
    pub name: String,
    pub kind: String,
    pub group: String,
}

/// Key algorithm and size. Sizes are validated by `attrs`, so every value here can be generated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyAlgorithm {
    EcdsaP256,
    EcdsaP384,
    Ed25519,
    Rsa2048,
    Rsa3072,
    Rsa4096,
}

impl KeyAlgorithm {
    /// Short human name used in tables and logs, e.g. `ECDSA P-256`.
    pub fn label(self) -> &'static str {
        match self {
            KeyAlgorithm::EcdsaP256 => "ECDSA P-256",
            KeyAlgorithm::EcdsaP384 => "ECDSA P-384",
            KeyAlgorithm::Ed25519 => "Ed25519",
            KeyAlgorithm::Rsa2048 => "RSA 2048",
            KeyAlgorithm::Rsa3072 => "RSA 3072",
            KeyAlgorithm::Rsa4096 => "RSA 4096",
        }
    }

    pub fn is_rsa(self) -> bool {
        matches!(
            self,
            KeyAlgorithm::Rsa2048 | KeyAlgorithm::Rsa3072 | KeyAlgorithm::Rsa4096
        )
    }
}

/// How the private key file is encoded (cert-manager's `key-encoding`).
///
/// `Pkcs1` means the algorithm's traditional format: `RSA PRIVATE KEY` for RSA, SEC1
/// `EC PRIVATE KEY` for ECDSA. Ed25519 has no such format and is written as PKCS#8, as
/// cert-manager does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyEncoding {
    Pkcs1,
    Pkcs8,
}

/// Key usages with cert-manager's names (`spec.usages` of a CertificateRequest).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum KeyUsage {
    Signing,
    DigitalSignature,
    ContentCommitment,
    KeyEncipherment,
    KeyAgreement,
    DataEncipherment,
    CertSign,
    CrlSign,
    EncipherOnly,
    DecipherOnly,
    Any,
    ServerAuth,
    ClientAuth,
    CodeSigning,
    EmailProtection,
    SMime,
    IpsecEndSystem,
    IpsecTunnel,
    IpsecUser,
    Timestamping,
    OcspSigning,
    MicrosoftSgc,
    NetscapeSgc,
}

impl KeyUsage {
    /// Every usage with its cert-manager spelling, in the CRD's enum order.
    pub const ALL: [(KeyUsage, &'static str); 23] = [
        (KeyUsage::Signing, "signing"),
        (KeyUsage::DigitalSignature, "digital signature"),
        (KeyUsage::ContentCommitment, "content commitment"),
        (KeyUsage::KeyEncipherment, "key encipherment"),
        (KeyUsage::KeyAgreement, "key agreement"),
        (KeyUsage::DataEncipherment, "data encipherment"),
        (KeyUsage::CertSign, "cert sign"),
        (KeyUsage::CrlSign, "crl sign"),
        (KeyUsage::EncipherOnly, "encipher only"),
        (KeyUsage::DecipherOnly, "decipher only"),
        (KeyUsage::Any, "any"),
        (KeyUsage::ServerAuth, "server auth"),
        (KeyUsage::ClientAuth, "client auth"),
        (KeyUsage::CodeSigning, "code signing"),
        (KeyUsage::EmailProtection, "email protection"),
        (KeyUsage::SMime, "s/mime"),
        (KeyUsage::IpsecEndSystem, "ipsec end system"),
        (KeyUsage::IpsecTunnel, "ipsec tunnel"),
        (KeyUsage::IpsecUser, "ipsec user"),
        (KeyUsage::Timestamping, "timestamping"),
        (KeyUsage::OcspSigning, "ocsp signing"),
        (KeyUsage::MicrosoftSgc, "microsoft sgc"),
        (KeyUsage::NetscapeSgc, "netscape sgc"),
    ];

    /// cert-manager's spelling of this usage.
    pub fn name(self) -> &'static str {
        KeyUsage::ALL
            .iter()
            .find(|(u, _)| *u == self)
            .map(|(_, n)| *n)
            .unwrap_or("unknown")
    }

    /// Parses cert-manager's spelling (case-sensitive, as the CRD enum is).
    pub fn from_name(name: &str) -> Option<KeyUsage> {
        KeyUsage::ALL
            .iter()
            .find(|(_, n)| *n == name)
            .map(|(u, _)| *u)
    }

    /// Whether this usage lands in the ExtendedKeyUsage extension rather than KeyUsage.
    pub fn is_extended(self) -> bool {
        matches!(
            self,
            KeyUsage::Any
                | KeyUsage::ServerAuth
                | KeyUsage::ClientAuth
                | KeyUsage::CodeSigning
                | KeyUsage::EmailProtection
                | KeyUsage::SMime
                | KeyUsage::IpsecEndSystem
                | KeyUsage::IpsecTunnel
                | KeyUsage::IpsecUser
                | KeyUsage::Timestamping
                | KeyUsage::OcspSigning
                | KeyUsage::MicrosoftSgc
                | KeyUsage::NetscapeSgc
        )
    }
}

/// Subject distinguished name, either from the individual fields or from `literal-subject`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subject {
    pub common_name: Option<String>,
    pub organizations: Vec<String>,
    pub organizational_units: Vec<String>,
    pub countries: Vec<String>,
    pub provinces: Vec<String>,
    pub localities: Vec<String>,
    pub street_addresses: Vec<String>,
    pub postal_codes: Vec<String>,
    pub serial_number: Option<String>,
    /// The parsed RFC 4514 name (`literal-subject`). When set, the fields above are empty:
    /// cert-manager forbids combining them.
    pub literal: Option<LiteralSubject>,
}

/// Subject alternative names, after `${POD_NAME}`-style variables were expanded.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sans {
    pub dns_names: Vec<String>,
    pub ip_addresses: Vec<std::net::IpAddr>,
    pub uris: Vec<String>,
}

impl Sans {
    pub fn is_empty(&self) -> bool {
        self.dns_names.is_empty() && self.ip_addresses.is_empty() && self.uris.is_empty()
    }
}

/// File names inside the volume. Plain names only, all distinct (validated by `attrs`).
///
/// The three PEM files are always written; the others only when named.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileNames {
    pub ca: String,
    pub certificate: String,
    pub private_key: String,
    /// One PEM file: the private key, then the certificate chain (leaf first), for proxies that
    /// load both from a single file (`key-chain-file`).
    #[serde(default)]
    pub key_chain: Option<String>,
    /// The chain without the leaf: intermediates only, possibly empty (`chain-file`).
    #[serde(default)]
    pub chain: Option<String>,
    /// The PEM trust bundle (`trust-bundle-file`).
    #[serde(default)]
    pub trust_bundle: Option<String>,
    /// PKCS#12 keystore and/or truststore, when asked for.
    #[serde(default)]
    pub pkcs12: Option<Pkcs12Files>,
}

impl FileNames {
    /// Every file name the volume publishes, in a fixed order.
    pub fn all(&self) -> Vec<&str> {
        let mut names = vec![
            self.ca.as_str(),
            self.certificate.as_str(),
            self.private_key.as_str(),
        ];
        names.extend(self.optional());
        names
    }

    /// The names of the optional files the volume asks for, in a fixed order.
    pub fn optional(&self) -> Vec<&str> {
        let mut names = Vec::new();
        let optional = [&self.key_chain, &self.chain, &self.trust_bundle];
        names.extend(optional.into_iter().flatten().map(String::as_str));
        if let Some(p) = &self.pkcs12 {
            names.extend(
                [&p.keystore, &p.truststore]
                    .into_iter()
                    .flatten()
                    .map(String::as_str),
            );
        }
        names
    }
}

impl Default for FileNames {
    fn default() -> Self {
        FileNames {
            ca: "ca.crt".into(),
            certificate: "tls.crt".into(),
            private_key: "tls.key".into(),
            key_chain: None,
            chain: None,
            trust_bundle: None,
            pkcs12: None,
        }
    }
}

/// Where a Kubernetes-CSR volume's `ca.crt` comes from (`ca-source`): the CSR API returns only
/// the certificate, never the CA that signed it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CaSource {
    /// Every ClusterTrustBundle whose `spec.signerName` is the request's signer name.
    #[default]
    ClusterTrustBundleSigner,
    /// The ClusterTrustBundle with this name.
    ClusterTrustBundle(String),
    /// A key of a ConfigMap in the pod's namespace.
    ConfigMap { name: String, key: String },
    /// A key of a Secret in the pod's namespace.
    Secret { name: String, key: String },
}

impl std::fmt::Display for CaSource {
    /// The attribute spelling, so messages name the source as the user wrote it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CaSource::ClusterTrustBundleSigner => f.write_str("clustertrustbundle-signer"),
            CaSource::ClusterTrustBundle(name) => write!(f, "clustertrustbundle:{name}"),
            CaSource::ConfigMap { name, key } => write!(f, "configmap:{name}/{key}"),
            CaSource::Secret { name, key } => write!(f, "secret:{name}/{key}"),
        }
    }
}

/// How PKCS#12 files are encrypted (`pkcs12-profile`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Pkcs12Profile {
    /// PBES2 with AES-256-CBC and PBKDF2-HMAC-SHA256, SHA-256 MAC: what OpenSSL 3 and Java 12+
    /// write by default.
    #[default]
    Modern,
    /// PKCS#12 PBE with SHA-1 and 3DES, SHA-1 MAC: readable by Java 8 before 8u301 and other old
    /// runtimes that do not know PBES2.
    Legacy,
}

impl Pkcs12Profile {
    pub fn name(self) -> &'static str {
        match self {
            Pkcs12Profile::Modern => "modern",
            Pkcs12Profile::Legacy => "legacy",
        }
    }
}

/// A volume's Kubernetes CSR API parameters (`signer-name`, `ca-source`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubeCsrRef {
    /// `spec.signerName` of the CertificateSigningRequest, e.g. `example.com/workloads`.
    pub signer_name: String,
    pub ca_source: CaSource,
}

/// Where the password of the PKCS#12 files comes from. Holds no secret: the literal password
/// stays in the volume context and the Secret's value in the publish request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PasswordSource {
    /// Key of the Secret named by the volume's `nodePublishSecretRef` (kubelet sends its data
    /// with NodePublishVolume).
    pub secret_key: String,
    /// The attribute that set `secret_key`, when set explicitly; `None` means the default key.
    pub secret_key_attribute: Option<String>,
    /// The `pkcs12-password` attribute as written, when set (cert-manager parity only).
    pub literal_attribute: Option<String>,
}

/// A keystore password. Never printed, wiped from memory on drop.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(Zeroizing<String>);

impl Password {
    pub fn new(password: impl Into<String>) -> Self {
        Password(Zeroizing::new(password.into()))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

/// The PKCS#12 files a volume asks for. Both share one password and one profile.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pkcs12Files {
    /// Keystore with the private key, the chain and the CA (`pkcs12-enable` +
    /// `pkcs12-filename`).
    pub keystore: Option<String>,
    /// Truststore with the trust bundle's certificates (`truststore-pkcs12-file`).
    pub truststore: Option<String>,
    pub profile: Pkcs12Profile,
    pub password: PasswordSource,
}

/// Everything a volume asks for: what to put in the certificate, how to issue and store it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertRequest {
    pub pod: PodInfo,
    /// cert-manager's issuer; its name is empty when only `signer-name` was given.
    pub issuer: IssuerRef,
    /// Set when the volume names a Kubernetes CSR signer (`signer-name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kube_csr: Option<KubeCsrRef>,
    pub subject: Subject,
    pub sans: Sans,
    /// Requested validity. Issuers may cap it.
    pub duration: Duration,
    /// Renew this long before expiry; `None` means the renewer's default (2/3 of the lifetime).
    pub renew_before: Option<Duration>,
    pub is_ca: bool,
    /// Key usages and extended key usages, sorted and deduplicated.
    pub usages: Vec<KeyUsage>,
    pub key_algorithm: KeyAlgorithm,
    pub key_encoding: KeyEncoding,
    pub reuse_private_key: bool,
    /// `renew: "false"` turns background renewal off.
    pub renew: bool,
    pub files: FileNames,
    /// Group for the files from the `fs-group` attribute; kubelet's `volume_mount_group` is used
    /// when this is unset.
    pub fs_group: Option<u32>,
    /// Attributes under other prefixes, passed to issuers as request annotations.
    pub annotations: BTreeMap<String, String>,
    /// The trust bundle the volume asks for (`trust-*` attributes), if any. Absent in state
    /// written before trust bundles existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust: Option<crate::trust::TrustSpec>,
}
