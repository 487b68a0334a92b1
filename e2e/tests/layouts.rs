//! File layouts applications expect, through the real `certvol node` binary and the kubelet
//! emulator: PKCS#12 keystore and truststore (checked with the `openssl` CLI, an independent
//! parser), the legacy profile, the key-chain and chain files, passwords from the Secret of
//! `nodePublishSecretRef`, and keystores rewritten by renewals, also after a driver restart.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use certvol_driver::demo::kubelet::Pod;
use certvol_driver::x509::keys::PrivateKey;
use certvol_driver::x509::pki::{self, CertInfo};
use certvol_e2e::require_root;
use certvol_e2e::{Env, eventually, read_volume, volume};
use tonic::Code;

const PASSWORD: &str = "e2e-keystore-pass";

/// `openssl pkcs12 -in FILE -passin pass:PASSWORD ARGS…`: stdout on success, else the error.
fn openssl_pkcs12(file: &Path, password: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new("openssl")
        .arg("pkcs12")
        .arg("-in")
        .arg(file)
        .arg("-passin")
        .arg(format!("pass:{password}"))
        .args(args)
        .output()
        .map_err(|e| format!("run openssl: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if out.status.success() {
        Ok(format!("{stdout}{stderr}"))
    } else {
        Err(format!("openssl failed: {stderr}{stdout}"))
    }
}

/// The PEM blocks labelled `label` in openssl's output, which interleaves bag attributes.
fn pem_blocks(text: &str, label: &str) -> Vec<String> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(&begin) {
        let Some(len) = rest[start..].find(&end) else {
            break;
        };
        out.push(format!("{}\n", &rest[start..start + len + end.len()]));
        rest = &rest[start + len + end.len()..];
    }
    out
}

fn certs_in(text: &str) -> Vec<CertInfo> {
    pem_blocks(text, "CERTIFICATE")
        .iter()
        .map(|b| pki::parse_pem_chain(b).expect("certificate from openssl")[0].clone())
        .collect()
}

fn read(target: &Path, name: &str) -> String {
    std::fs::read_to_string(target.join(name)).unwrap_or_else(|e| panic!("read {name}: {e}"))
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// The keystore's certificates and key, read with openssl (modern profile, no -legacy).
fn open_keystore(path: &Path, password: &str) -> (String, Vec<CertInfo>, PrivateKey) {
    let info = openssl_pkcs12(path, password, &["-info", "-nokeys"]).expect("keystore opens");
    let keys = openssl_pkcs12(path, password, &["-nocerts", "-nodes"]).expect("keystore key opens");
    let key_pem = pem_blocks(&keys, "PRIVATE KEY");
    assert_eq!(key_pem.len(), 1, "one private key in the keystore: {keys}");
    assert!(
        keys.contains("friendlyName: certificate"),
        "the key entry's alias: {keys}"
    );
    let key = PrivateKey::from_pem(&key_pem[0]).expect("keystore key parses");
    (info.clone(), certs_in(&info), key)
}

#[tokio::test]
async fn keystore_truststore_and_pem_layouts_with_the_secrets_password() {
    require_root!();
    let mut env = Env::new();
    let _driver = env.start().await;
    let kubelet = env.kubelet();
    let pod = Pod::new("shop", "java-0");
    let vol = volume([
        ("csi.certvol.io/common-name", "${POD_NAME}.${POD_NAMESPACE}"),
        ("csi.cert-manager.io/pkcs12-enable", "true"),
        ("csi.certvol.io/truststore-pkcs12-file", "truststore.p12"),
        ("csi.certvol.io/key-chain-file", "tls-combined.pem"),
        ("csi.certvol.io/chain-file", "chain.pem"),
    ])
    .with_secret([("pkcs12-password", PASSWORD), ("unrelated", "x")]);
    let target = kubelet.publish(&pod, &vol).await.expect("publish");
    let files = read_volume(&target).expect("consistent PEM files");

    // Keystore: cert-manager's default name, the Secret's password, modern encryption.
    let keystore = target.join("keystore.p12");
    let (info, certs, key) = open_keystore(&keystore, PASSWORD);
    assert!(info.contains("MAC: sha256"), "{info}");
    assert!(info.contains("PBES2, PBKDF2, AES-256-CBC"), "{info}");
    assert_eq!(certs.len(), files.chain.len() + files.ca.len(), "{info}");
    assert_eq!(certs[0].der, files.leaf.der, "the leaf comes first");
    assert!(
        certs[0].subject.contains("CN=java-0.shop"),
        "{}",
        certs[0].subject
    );
    assert_eq!(
        certs.last().unwrap().der,
        files.ca[0].der,
        "the CA comes last"
    );
    assert!(
        pki::key_matches(&certs[0], &key).unwrap(),
        "the keystore's key matches its certificate"
    );
    assert_eq!(
        key.pkcs8_der(),
        PrivateKey::from_pem(&files.key_pem).unwrap().pkcs8_der(),
        "the keystore holds the key of tls.key"
    );
    assert!(
        openssl_pkcs12(&keystore, "wrong", &["-info", "-nokeys"]).is_err(),
        "a wrong password does not open the keystore"
    );

    // Truststore: the issuing CA as a trusted certificate.
    let trust = openssl_pkcs12(
        &target.join("truststore.p12"),
        PASSWORD,
        &["-info", "-nokeys"],
    )
    .expect("truststore opens");
    let trusted = certs_in(&trust);
    assert_eq!(
        trusted.iter().map(|c| &c.der).collect::<Vec<_>>(),
        files.ca.iter().map(|c| &c.der).collect::<Vec<_>>()
    );
    assert!(!trust.contains("Shrouded Keybag"), "no key in a truststore");

    // PEM layouts: key then chain in one file; the chain without the leaf (the local CA signs
    // leaves directly, so there is no intermediate).
    let key_pem = read(&target, "tls.key");
    let chain_pem = read(&target, "tls.crt");
    assert_eq!(
        read(&target, "tls-combined.pem"),
        format!("{key_pem}{chain_pem}")
    );
    assert_eq!(files.chain.len(), 1);
    assert_eq!(read(&target, "chain.pem"), "");

    // Every file has the key's mode; the password stays out of the pod's view, state and log.
    for name in [
        "tls.key",
        "tls.crt",
        "ca.crt",
        "keystore.p12",
        "truststore.p12",
        "tls-combined.pem",
        "chain.pem",
    ] {
        assert_eq!(mode(&target.join(name)), 0o400, "{name}");
    }
    let mut visible: Vec<String> = std::fs::read_dir(&target)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with(".."))
        .collect();
    visible.sort();
    assert_eq!(
        visible,
        [
            "ca.crt",
            "chain.pem",
            "keystore.p12",
            "tls-combined.pem",
            "tls.crt",
            "tls.key",
            "truststore.p12"
        ]
    );
    let state = env.state(&pod, &vol).expect("state");
    let paths = env.store().paths(&state.volume_id);
    let raw = std::fs::read_to_string(&paths.state).unwrap();
    assert!(!raw.contains(PASSWORD), "state.json holds no password");
    let kept = paths.pkcs12_password();
    assert_eq!(std::fs::read_to_string(&kept).unwrap(), PASSWORD);
    assert_eq!(mode(&kept), 0o600);
    assert!(
        kept.starts_with(&paths.mem),
        "the kept password lives on the volume's tmpfs"
    );
    assert!(!env.logs().contains(PASSWORD), "the log holds no password");

    kubelet.unpublish(&pod, &vol).await.expect("unpublish");
    assert!(!kept.exists(), "the password is gone with the volume");
}

#[tokio::test]
async fn legacy_profile_and_the_cert_manager_literal_password_open_with_openssl_legacy() {
    require_root!();
    let mut env = Env::new();
    let _driver = env.start().await;
    let kubelet = env.kubelet();
    let pod = Pod::new("legacy", "tomcat-0");
    let literal = "literal-parity-pass";
    let vol = volume([
        ("csi.cert-manager.io/pkcs12-enable", "true"),
        ("csi.cert-manager.io/pkcs12-filename", "tomcat.p12"),
        ("csi.cert-manager.io/pkcs12-password", literal),
        ("csi.certvol.io/pkcs12-profile", "legacy"),
        ("csi.certvol.io/fs-group", "2000"),
    ]);
    let target = kubelet.publish(&pod, &vol).await.expect("publish");
    let files = read_volume(&target).expect("consistent PEM files");
    let store = target.join("tomcat.p12");

    let info = openssl_pkcs12(&store, literal, &["-legacy", "-info", "-nodes"])
        .expect("legacy keystore opens with -legacy");
    assert!(info.contains("MAC: sha1"), "{info}");
    assert!(info.contains("pbeWithSHA1And3-KeyTripleDES-CBC"), "{info}");
    assert!(!info.contains("PBES2"), "{info}");
    let certs = certs_in(&info);
    assert_eq!(certs[0].der, files.leaf.der);
    let key = PrivateKey::from_pem(&pem_blocks(&info, "PRIVATE KEY")[0]).unwrap();
    assert!(pki::key_matches(&certs[0], &key).unwrap());
    assert_eq!(mode(&store), 0o440, "group-readable like the other files");

    let state = env.state(&pod, &vol).expect("state");
    let raw = std::fs::read_to_string(env.store().paths(&state.volume_id).state).unwrap();
    assert!(
        !raw.contains(literal),
        "the literal password is not recorded"
    );
    assert!(!env.logs().contains(literal), "the log holds no password");
}

#[tokio::test]
async fn a_missing_password_is_invalid_argument_naming_the_key_and_leaves_nothing() {
    require_root!();
    let mut env = Env::new();
    let _driver = env.start().await;
    let kubelet = env.kubelet();
    let cases = [
        (
            "no-secret",
            volume([("csi.certvol.io/pkcs12-enable", "true")]),
            vec![
                "\"csi.certvol.io/pkcs12-password-key\"",
                "key \"pkcs12-password\"",
                "kubelet sent no Secret",
            ],
        ),
        (
            "wrong-key",
            volume([
                ("csi.certvol.io/pkcs12-enable", "true"),
                ("csi.certvol.io/pkcs12-password-key", "keystore-pass"),
            ])
            .with_secret([("pkcs12-password", "x"), ("password", "y")]),
            vec![
                "\"csi.certvol.io/pkcs12-password-key\"",
                "key \"keystore-pass\"",
                "the Secret has no such key",
            ],
        ),
        (
            "truststore-only",
            volume([("csi.certvol.io/truststore-pkcs12-file", "trust.p12")])
                .with_secret([("other", "x")]),
            vec!["key \"pkcs12-password\"", "the Secret has no such key"],
        ),
    ];
    for (name, vol, fragments) in cases {
        let pod = Pod::new("default", name);
        let err = kubelet.publish(&pod, &vol).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{name}: {err:?}");
        for f in fragments {
            assert!(
                err.message().contains(f),
                "{name}: {:?} lacks {f}",
                err.message()
            );
        }
        assert!(env.state(&pod, &vol).is_none(), "{name}: no state left");
        assert!(
            !kubelet.target_path(&pod, &vol).exists(),
            "{name}: no target left"
        );
        assert!(
            !env.mounts()
                .iter()
                .any(|m| m.source.starts_with("certvol:")),
            "{name}: no mount left"
        );
    }
    assert!(env.issued().is_empty(), "nothing was issued");
}

#[tokio::test]
async fn renewals_rewrite_the_keystore_also_after_a_driver_restart() {
    require_root!();
    let mut env = Env::new();
    let mut driver = env.start().await;
    let kubelet = env.kubelet();
    let pod = Pod::new("default", "renewing-keystore");
    let vol = volume([
        ("csi.certvol.io/duration", "6s"),
        ("csi.certvol.io/pkcs12-enable", "true"),
        ("csi.certvol.io/pkcs12-password-key", "ks"),
    ])
    .with_secret([("ks", PASSWORD)]);
    let target = kubelet.publish(&pod, &vol).await.expect("publish");
    let keystore = target.join("keystore.p12");
    let (_, first, _) = open_keystore(&keystore, PASSWORD);

    // First renewal (about 4 s in) with the password in memory.
    let renewed = eventually(Duration::from_secs(15), || {
        let s = env.state(&pod, &vol)?;
        (s.current.as_ref()?.revision >= 2).then_some(())
    })
    .await;
    assert!(renewed.is_some(), "renewed within 15 s");

    // A restart forgets everything in memory; kubelet does not republish, so no Secret comes.
    driver.kill9();
    let _driver = env.start().await;
    let renewed = eventually(Duration::from_secs(15), || {
        let s = env.state(&pod, &vol)?;
        (s.current.as_ref()?.revision >= 3).then_some(())
    })
    .await;
    assert!(
        renewed.is_some(),
        "renewed again after the restart:\n{}",
        env.logs()
    );

    read_volume(&target).expect("consistent PEM files");
    // Keystore and tls.crt from one `..data` generation, as a reloading application reads them.
    let both = certvol_driver::files::writer::read_all(&target, &["keystore.p12", "tls.crt"])
        .expect("read one generation");
    let copy = env.path().join("renewed.p12");
    std::fs::write(&copy, &both[0]).unwrap();
    let (_, now, key) = open_keystore(&copy, PASSWORD);
    let leaf = pki::parse_pem_chain(std::str::from_utf8(&both[1]).unwrap()).unwrap();
    assert_ne!(
        now[0].der, first[0].der,
        "the keystore holds the new certificate"
    );
    assert_eq!(now[0].der, leaf[0].der, "…the same as tls.crt");
    assert!(pki::key_matches(&now[0], &key).unwrap());
    assert_eq!(mode(&keystore), 0o400);
    let state = env.state(&pod, &vol).unwrap();
    assert_eq!(state.renewal.failures, 0, "{:?}", state.renewal);
}
