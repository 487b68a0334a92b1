//! HTTPS serving, for in-cluster configuration: kubelet gives a pod `KUBERNETES_SERVICE_HOST`,
//! `KUBERNETES_SERVICE_PORT` and a projected service-account volume (`token`, `ca.crt`,
//! `namespace`), and kube-rs' in-cluster configuration is https-only. Each server gets a fresh
//! CA and a serving certificate for the names kube-apiserver's certificate carries that matter
//! here: IP 127.0.0.1 (the host the environment names) and `kubernetes.default.svc`.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

/// The DNS names in the serving certificate: the in-cluster service names kube-apiserver's own
/// certificate carries.
const SERVING_DNS_NAMES: &[&str] = &[
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
    "localhost",
];

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot generate the serving certificates: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("cannot configure TLS: {0}")]
    Config(#[from] tokio_rustls::rustls::Error),
}

/// A fresh CA and the acceptor serving a certificate it signed.
pub(crate) struct ServingTls {
    pub(crate) ca_pem: String,
    pub(crate) acceptor: TlsAcceptor,
}

pub(crate) fn generate() -> Result<ServingTls, TlsError> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "certvol-e2e-apiserver-ca");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;

    let mut names: Vec<String> = vec!["127.0.0.1".into()];
    names.extend(SERVING_DNS_NAMES.iter().map(|n| n.to_string()));
    let mut params = CertificateParams::new(names)?;
    params
        .distinguished_name
        .push(DnType::CommonName, "kube-apiserver");
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate()?;
    let leaf = params.signed_by(&key, &ca)?;

    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )?;
    // kube-apiserver speaks both; clients pick.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(ServingTls {
        ca_pem: ca.pem(),
        acceptor: TlsAcceptor::from(Arc::new(config)),
    })
}

/// Accepts TLS connections and serves `router` on each until `shutdown` completes; connections
/// still open then end with the server's runtime.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    acceptor: TlsAcceptor,
    router: Router,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => accepted,
        };
        let tcp = match accepted {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                // Out of descriptors and the like: wait instead of spinning.
                tracing::warn!(error = %e, "e2e API server cannot accept");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let service = TowerToHyperService::new(router.clone());
        tokio::spawn(async move {
            let stream = match acceptor.accept(tcp).await {
                Ok(s) => s,
                Err(e) => {
                    // A client that does not trust the CA ends here, as it would on a cluster.
                    tracing::debug!(error = %e, "e2e API server TLS handshake failed");
                    return;
                }
            };
            if let Err(e) = auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(error = %e, "e2e API server connection ended");
            }
        });
    }
}

/// What kubelet puts in a pod's environment for the API server (`KUBERNETES_SERVICE_HOST`,
/// `KUBERNETES_SERVICE_PORT`), pointing at this server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InClusterEnv {
    pub host: String,
    pub port: u16,
    /// The directory holding `token`, `ca.crt` and `namespace`: what a pod sees at
    /// `/var/run/secrets/kubernetes.io/serviceaccount`.
    pub dir: PathBuf,
}

impl InClusterEnv {
    /// The environment variables, as (name, value) pairs for `Command::envs`.
    pub fn vars(&self) -> Vec<(&'static str, String)> {
        vec![
            ("KUBERNETES_SERVICE_HOST", self.host.clone()),
            ("KUBERNETES_SERVICE_PORT", self.port.to_string()),
        ]
    }
}

/// Writes `files` into `dir` as kubelet's atomic writer lays out a projected volume: the files
/// in a fresh `..<timestamp>` directory, `..data` pointing at it (swapped by rename, so readers
/// see the old set or the new, never a mix), and each name a link through `..data`. Writing
/// again replaces the set (a token rotation) and removes the previous directory.
pub(crate) fn write_projected(dir: &Path, files: &[(&str, &[u8])]) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let now = time::OffsetDateTime::now_utc();
    let stamp = format!(
        "..{:04}_{:02}_{:02}_{:02}_{:02}_{:02}.{:09}",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second(),
        now.nanosecond()
    );
    let payload = dir.join(&stamp);
    std::fs::create_dir(&payload)?;
    for (name, content) in files {
        let path = payload.join(name);
        std::fs::write(&path, content)?;
        // The service-account volume's default mode (0644).
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))?;
    }
    let data = dir.join("..data");
    let previous = std::fs::read_link(&data).ok();
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&stamp, &tmp)?;
    std::fs::rename(&tmp, &data)?;
    for (name, _) in files {
        let link = dir.join(name);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(Path::new("..data").join(name), &link)?;
        }
    }
    if let Some(old) = previous.filter(|o| o.as_os_str() != stamp.as_str()) {
        let _ = std::fs::remove_dir_all(dir.join(old));
    }
    Ok(())
}
