//! Trust bundles end to end: the real `certvol node` binary over its CSI socket, against the
//! Kubernetes API stand-in with the cert-manager stand-in signing. What lands in the bundle file
//! and whether it verifies real chains (checked with openssl), that a ConfigMap change reaches
//! every volume using it without a renewal, CA rotation overlap, missing sources, and the local
//! issuer's limits.
//!
//! Object names (pods, the `partner-ca` ConfigMap/Secret) are fixed: each test has its own API
//! stand-in. On a real cluster run them one at a time in a fresh namespace.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use certvol_driver::demo::kubelet::{InlineVolume, Pod, volume_id};
use certvol_driver::issuer::certmanager::resource::{LABEL_VOLUME, hashed_label};
use certvol_driver::kube::events;
use certvol_driver::trust::public_roots;
use certvol_driver::x509::pki;
use certvol_e2e::cluster::{Cluster, cm_volume};
use certvol_e2e::{Env, PairReader, eventually, read_volume, volume};
use certvol_e2e::{require_root, require_standin};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use kube::core::ObjectMeta;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use serde_json::json;
use tonic::Code;

/// A leaf (crates.io, expired) and its intermediate "Amazon RSA 2048 M02", issued by the public
/// root "Amazon Root CA 1". Public certificates, taken from the x509-cert crate's test vectors.
const PUBLIC_CHAIN: &str = include_str!("fixtures/crates-io-leaf-and-intermediate.pem");
/// A moment inside the leaf's validity (2023-06-01T00:00:00Z) for `openssl verify -attime`.
const PUBLIC_LEAF_VALID_AT: u64 = 1_685_577_600;

const BUNDLE: &str = "ca-bundle.crt";

/// A private CA of the kind teams keep in a ConfigMap, and a server certificate it signed.
struct PrivateCa {
    pem: String,
    server_pem: String,
}

fn private_ca(cn: &str) -> PrivateCa {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = params.self_signed(&key).unwrap();
    let issuer = Issuer::from_params(&params, &key);
    let server_key = KeyPair::generate().unwrap();
    let mut server = CertificateParams::new(vec!["payments.internal".to_string()]).unwrap();
    server
        .distinguished_name
        .push(DnType::CommonName, "payments.internal");
    let server = server.signed_by(&server_key, &issuer).unwrap();
    PrivateCa {
        pem: ca.pem(),
        server_pem: server.pem(),
    }
}

fn ders(pem: &str) -> Vec<Vec<u8>> {
    pki::parse_pem_chain(pem)
        .unwrap_or_else(|e| panic!("{e}: {pem}"))
        .into_iter()
        .map(|c| c.der)
        .collect()
}

/// `openssl verify -CAfile BUNDLE [-untrusted CHAIN] [ARGS…] CERT`: Ok on "OK", else its output.
fn openssl_verify(
    bundle: &Path,
    cert_pem: &str,
    untrusted_pem: Option<&str>,
    args: &[&str],
) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("cert.pem");
    std::fs::write(&cert, cert_pem).unwrap();
    let mut cmd = Command::new("openssl");
    cmd.arg("verify").arg("-CAfile").arg(bundle).args(args);
    if let Some(untrusted) = untrusted_pem {
        let path = dir.path().join("untrusted.pem");
        std::fs::write(&path, untrusted).unwrap();
        cmd.arg("-untrusted").arg(path);
    }
    let out = cmd
        .arg(&cert)
        .output()
        .map_err(|e| format!("run openssl: {e}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() && text.contains(": OK") {
        Ok(())
    } else {
        Err(text)
    }
}

/// Creates the ConfigMap every scenario here names as its trust source: `partner-ca`, key
/// `ca.crt`, holding `pem`.
async fn create_partner_configmap(cluster: &Cluster, ns: &str, pem: &str) {
    let cm = ConfigMap {
        metadata: ObjectMeta {
            name: Some("partner-ca".into()),
            ..ObjectMeta::default()
        },
        data: Some([("ca.crt".to_owned(), pem.to_owned())].into()),
        ..ConfigMap::default()
    };
    Api::<ConfigMap>::namespaced(cluster.client.clone(), ns)
        .create(&PostParams::default(), &cm)
        .await
        .expect("create ConfigMap");
}

/// The bundle and the certificate chain, read from one `..data` generation.
fn bundle_and_cert(target: &Path) -> (String, String) {
    let mut both = certvol_driver::files::writer::read_all(target, &[BUNDLE, "tls.crt"])
        .unwrap_or_else(|e| panic!("read {}: {e}", target.display()));
    let cert = String::from_utf8(both.pop().unwrap()).unwrap();
    let bundle = String::from_utf8(both.pop().unwrap()).unwrap();
    (bundle, cert)
}

async fn requests_of(cluster: &Cluster, pod: &Pod, vol: &InlineVolume) -> usize {
    let label = hashed_label(&volume_id(&pod.uid, &vol.name));
    cluster
        .requests(&pod.namespace)
        .await
        .into_iter()
        .filter(|cr| {
            cr.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(LABEL_VOLUME))
                == Some(&label)
        })
        .count()
}

#[tokio::test]
async fn bundle_from_configmap_issuing_ca_and_public_roots_verifies_private_and_public_chains() {
    require_root!();
    let mut env = Env::new();
    let cluster = Cluster::start(env.path()).await;
    if cluster.is_real() {
        eprintln!("skipped on a real cluster: compares with the stand-in signer's CA");
        return;
    }
    let signer_ca = cluster.standin.as_ref().unwrap().signer.ca_pem();
    let _driver = env.start_cert_manager(&cluster, &[], &[]).await;
    let ns = cluster.namespace();
    let private = private_ca("payments private CA");
    // The ConfigMap carries the private CA twice and the issuing CA once (both deduplicated),
    // and a private key pasted by mistake (reported, never written).
    let cm_text = format!(
        "{}{}{}{}",
        private.pem,
        signer_ca,
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        private.pem
    );
    create_partner_configmap(&cluster, &ns, &cm_text).await;
    let pod = cluster.create_pod(&ns, "client-0").await;
    let vol = cm_volume(
        &cluster.issuer_name(),
        [
            ("csi.certvol.io/trust-configmaps", "partner-ca/ca.crt"),
            ("csi.certvol.io/trust-public-roots", "true"),
        ],
    );
    let target = env.kubelet().publish(&pod, &vol).await.expect("publish");
    read_volume(&target).expect("consistent volume");

    let (bundle, _) = bundle_and_cert(&target);
    let got = ders(&bundle);
    // Order: issuing CA, then the ConfigMap's entries not already present, then the public roots
    // not already present; each certificate once.
    let roots = ders(&public_roots().pem);
    let mut want = ders(&signer_ca);
    want.extend(ders(&private.pem));
    for r in roots {
        if !want.contains(&r) {
            want.push(r);
        }
    }
    assert_eq!(got.len(), want.len(), "bundle size");
    assert_eq!(got, want, "bundle content and order");
    let mut unique = got.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), got.len(), "no duplicates");

    assert!(
        !bundle.contains("PRIVATE KEY"),
        "the pasted key is not written"
    );
    let rejected: Vec<_> = cluster
        .pod_events(&pod)
        .await
        .into_iter()
        .filter(|e| e["reason"] == events::REASON_TRUST_REJECTED)
        .collect();
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    let message = rejected[0]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(&format!("ConfigMap {ns}/partner-ca key ca.crt entry 2"))
            && message.contains("PRIVATE KEY"),
        "names the source, the entry and why: {message}"
    );

    let bundle_path = target.join(BUNDLE);
    // A server certificate signed by the ConfigMap's private CA verifies.
    openssl_verify(&bundle_path, &private.server_pem, None, &[]).expect("private chain");
    // A public chain: the intermediate verifies now, the leaf within its validity period.
    let mut public = PUBLIC_CHAIN.split_inclusive("-----END CERTIFICATE-----\n");
    let (leaf, intermediate) = (public.next().unwrap(), public.next().unwrap());
    openssl_verify(&bundle_path, intermediate, None, &[]).expect("public intermediate");
    openssl_verify(
        &bundle_path,
        leaf,
        Some(intermediate),
        &["-attime", &PUBLIC_LEAF_VALID_AT.to_string()],
    )
    .expect("public leaf through its intermediate");
    // And a server certificate from an unrelated CA does not.
    let stranger = private_ca("nobody trusts me");
    assert!(openssl_verify(&bundle_path, &stranger.server_pem, None, &[]).is_err());
}

#[tokio::test]
async fn changing_the_configmap_rewrites_every_using_volume_atomically_without_renewing() {
    require_root!();
    let mut env = Env::new();
    let cluster = Cluster::start(env.path()).await;
    let _driver = env.start_cert_manager(&cluster, &[], &[]).await;
    let ns = cluster.namespace();
    let first = private_ca("partner CA 1");
    create_partner_configmap(&cluster, &ns, &first.pem).await;
    let vol = cm_volume(
        &cluster.issuer_name(),
        [("csi.certvol.io/trust-configmaps", "partner-ca/ca.crt")],
    );
    let kubelet = env.kubelet();
    let mut volumes = Vec::new();
    for name in ["shop-0", "shop-1"] {
        let pod = cluster.create_pod(&ns, name).await;
        let target = kubelet.publish(&pod, &vol).await.expect("publish");
        let (bundle, cert) = bundle_and_cert(&target);
        assert!(ders(&bundle).contains(&ders(&first.pem)[0]));
        let key = std::fs::read(target.join("tls.key")).unwrap();
        volumes.push((pod, target, cert, key));
    }
    let readers: Vec<PairReader> = volumes
        .iter()
        .map(|(_, target, ..)| PairReader::start(target))
        .collect();

    let second = private_ca("partner CA 2");
    let changed = std::time::Instant::now();
    Api::<ConfigMap>::namespaced(cluster.client.clone(), &ns)
        .patch(
            "partner-ca",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"ca.crt": second.pem}})),
        )
        .await
        .expect("update ConfigMap");
    let new_ca = ders(&second.pem).remove(0);
    let old_ca = ders(&first.pem).remove(0);
    for (pod, target, cert, key) in &volumes {
        let (bundle, cert_now) = eventually(Duration::from_secs(10), || {
            let (bundle, cert) = bundle_and_cert(target);
            ders(&bundle).contains(&new_ca).then_some((bundle, cert))
        })
        .await
        .unwrap_or_else(|| {
            panic!(
                "{} never got the new CA\n--- log ---\n{}",
                pod.name,
                env.logs()
            )
        });
        println!(
            "{}: bundle rewritten {:?} after the ConfigMap update",
            pod.name,
            changed.elapsed()
        );
        assert!(
            !ders(&bundle).contains(&old_ca),
            "old CA gone: {}",
            pod.name
        );
        assert_eq!(&cert_now, cert, "same certificate chain");
        assert_eq!(
            &std::fs::read(target.join("tls.key")).unwrap(),
            key,
            "same key"
        );
        openssl_verify(&target.join(BUNDLE), &second.server_pem, None, &[])
            .expect("the new partner CA verifies");
        assert_eq!(
            requests_of(&cluster, pod, &vol).await,
            1,
            "no new issuer request"
        );
    }
    for reader in readers {
        let report = reader.stop();
        assert!(report.errors.is_empty(), "torn reads: {:?}", report.errors);
        assert!(report.reads > 0);
        assert_eq!(report.serials.len(), 1, "no renewal: {:?}", report.serials);
    }
}

#[tokio::test]
async fn ca_rotation_keeps_old_and_new_ca_during_the_overlap_then_drops_the_old() {
    require_root!();
    let mut env = Env::new();
    let cluster = Cluster::start(env.path()).await;
    let standin = require_standin!(cluster, "rotating the CA needs the stand-in");
    let _driver = env.start_cert_manager(&cluster, &[], &[]).await;
    let pod = cluster.create_pod(&cluster.namespace(), "rotating").await;
    // 6 s certificates renew every few seconds; a retired CA stays for one certificate lifetime
    // (the overlap rule in docs/attributes.md), so the whole rotation takes ~10 s.
    let vol = cm_volume(
        &cluster.issuer_name(),
        [
            ("csi.certvol.io/duration", "6s"),
            ("csi.certvol.io/trust-issuer-ca", "true"),
        ],
    );
    let target = env.kubelet().publish(&pod, &vol).await.expect("publish");
    let old_ca = ders(&standin.signer.ca_pem()).remove(0);
    assert_eq!(ders(&bundle_and_cert(&target).0), vec![old_ca.clone()]);

    let rotated_at = std::time::Instant::now();
    standin.signer.rotate_ca();
    let new_ca = ders(&standin.signer.ca_pem()).remove(0);
    let overlap = eventually(Duration::from_secs(15), || {
        let (bundle, cert) = bundle_and_cert(&target);
        let leaf_issuer = pki::parse_pem_chain(&cert).ok()?.first()?.issuer.clone();
        let new_subject = pki::parse_pem_chain(&standin.signer.ca_pem())
            .ok()?
            .first()?
            .subject
            .clone();
        (leaf_issuer == new_subject).then(|| ders(&bundle))
    })
    .await
    .unwrap_or_else(|| panic!("never renewed under the new CA\n{}", env.logs()));
    assert_eq!(
        overlap,
        vec![new_ca.clone(), old_ca.clone()],
        "new CA first, old CA kept during the overlap"
    );
    let after = eventually(Duration::from_secs(20), || {
        let bundle = ders(&bundle_and_cert(&target).0);
        (!bundle.contains(&old_ca)).then_some(bundle)
    })
    .await
    .unwrap_or_else(|| panic!("the old CA never left the bundle\n{}", env.logs()));
    assert_eq!(after, vec![new_ca]);
    // The renewal that retired the old CA came after the rotation, so the old CA was kept for
    // at least one 6 s certificate lifetime from then (less a second of timestamp rounding).
    let kept = rotated_at.elapsed();
    assert!(
        kept >= Duration::from_secs(5),
        "the old CA left after {kept:?}, before the overlap ended"
    );
}

#[tokio::test]
async fn missing_configmap_or_secret_fails_clearly_with_an_event_and_the_retry_succeeds() {
    require_root!();
    let mut env = Env::new();
    let cluster = Cluster::start(env.path()).await;
    let _driver = env
        .start_cert_manager(&cluster, &["--issue-timeout", "5s"], &[])
        .await;
    let ns = cluster.namespace();
    let kubelet = env.kubelet();
    let cases = [
        (
            "cm-user",
            "csi.certvol.io/trust-configmaps",
            format!("ConfigMap {ns}/partner-ca does not exist"),
        ),
        (
            "secret-user",
            "csi.certvol.io/trust-secrets",
            format!("Secret {ns}/partner-ca does not exist"),
        ),
    ];
    for (pod_name, attribute, fragment) in &cases {
        let pod = cluster.create_pod(&ns, pod_name).await;
        let vol = cm_volume(&cluster.issuer_name(), [(*attribute, "partner-ca/ca.crt")]);
        let status = kubelet
            .publish(&pod, &vol)
            .await
            .expect_err("publish must fail");
        assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
        assert!(
            status.message().contains(&format!("{attribute:?}"))
                && status.message().contains(fragment.as_str()),
            "names the attribute and the object: {}",
            status.message()
        );
        // The event is recorded before the publish answers.
        let events: Vec<_> = cluster
            .pod_events(&pod)
            .await
            .into_iter()
            .filter(|e| e["reason"] == events::REASON_TRUST_SOURCE)
            .collect();
        assert_eq!(events.len(), 1, "one Warning event on the pod: {events:?}");
        assert_eq!(events[0]["type"], "Warning");
        assert!(
            events[0]["message"]
                .as_str()
                .unwrap_or_default()
                .contains(fragment.as_str()),
            "{events:?}"
        );
        // Nothing left behind, and nothing was filed with the issuer.
        assert!(!kubelet.target_path(&pod, &vol).exists());
        assert!(env.state(&pod, &vol).is_none());
        assert_eq!(requests_of(&cluster, &pod, &vol).await, 0);
    }

    // Creating the objects lets kubelet's retry succeed.
    let ca = private_ca("partner CA");
    create_partner_configmap(&cluster, &ns, &ca.pem).await;
    Api::<Secret>::namespaced(cluster.client.clone(), &ns)
        .create(
            &PostParams::default(),
            &Secret {
                metadata: ObjectMeta {
                    name: Some("partner-ca".into()),
                    ..ObjectMeta::default()
                },
                data: Some([("ca.crt".to_owned(), ByteString(ca.pem.clone().into_bytes()))].into()),
                ..Secret::default()
            },
        )
        .await
        .expect("create Secret");
    for (pod_name, attribute, _) in &cases {
        let pod = cluster.create_pod(&ns, &format!("{pod_name}-retry")).await;
        let vol = cm_volume(&cluster.issuer_name(), [(*attribute, "partner-ca/ca.crt")]);
        let target = kubelet.publish(&pod, &vol).await.expect("retry succeeds");
        let (bundle, _) = bundle_and_cert(&target);
        assert!(ders(&bundle).contains(&ders(&ca.pem)[0]), "{attribute}");
    }
}

#[tokio::test]
async fn local_issuer_refuses_kubernetes_sources_but_serves_public_roots() {
    require_root!();
    let mut env = Env::new();
    let _driver = env.start().await;
    let kubelet = env.kubelet();
    let pod = Pod::new("default", "local-0");
    let vol = volume([("csi.certvol.io/trust-configmaps", "partner-ca/ca.crt")]);
    let status = kubelet.publish(&pod, &vol).await.expect_err("refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status
            .message()
            .contains("\"csi.certvol.io/trust-configmaps\"")
            && status.message().contains("--issuer local")
            && status.message().contains("trust-public-roots"),
        "{}",
        status.message()
    );
    assert!(!kubelet.target_path(&pod, &vol).exists());

    let pod = Pod::new("default", "local-1");
    let vol = volume([("csi.certvol.io/trust-public-roots", "true")]);
    let target = kubelet.publish(&pod, &vol).await.expect("publish");
    let files = read_volume(&target).expect("consistent volume");
    let (bundle, _) = bundle_and_cert(&target);
    let got = ders(&bundle);
    assert_eq!(got[0], files.ca[0].der, "the issuing CA comes first");
    assert_eq!(got.len(), 1 + ders(&public_roots().pem).len());
    let mut public = PUBLIC_CHAIN.split_inclusive("-----END CERTIFICATE-----\n");
    let intermediate = public.nth(1).unwrap();
    openssl_verify(&target.join(BUNDLE), intermediate, None, &[]).expect("public intermediate");
}

#[tokio::test]
async fn after_a_restart_changes_made_while_the_driver_was_down_reach_the_bundle() {
    require_root!();
    let mut env = Env::new();
    let cluster = Cluster::start(env.path()).await;
    let mut driver = env.start_cert_manager(&cluster, &[], &[]).await;
    let ns = cluster.namespace();
    let first = private_ca("partner CA 1");
    create_partner_configmap(&cluster, &ns, &first.pem).await;
    let pod = cluster.create_pod(&ns, "restarted-0").await;
    let vol = cm_volume(
        &cluster.issuer_name(),
        [("csi.certvol.io/trust-configmaps", "partner-ca/ca.crt")],
    );
    let target = env.kubelet().publish(&pod, &vol).await.expect("publish");
    let (_, cert) = bundle_and_cert(&target);

    driver.kill9();
    let second = private_ca("partner CA 2");
    Api::<ConfigMap>::namespaced(cluster.client.clone(), &ns)
        .patch(
            "partner-ca",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"ca.crt": second.pem}})),
        )
        .await
        .expect("update ConfigMap");
    let _driver = env.start_cert_manager(&cluster, &[], &[]).await;
    let new_ca = ders(&second.pem).remove(0);
    let bundle = eventually(Duration::from_secs(10), || {
        let (bundle, cert_now) = bundle_and_cert(&target);
        (ders(&bundle).contains(&new_ca) && cert_now == cert).then_some(bundle)
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "the bundle was not refreshed after the restart\n{}",
            env.logs()
        )
    });
    assert!(!ders(&bundle).contains(&ders(&first.pem)[0]));
    assert_eq!(
        requests_of(&cluster, &pod, &vol).await,
        1,
        "no new issuer request"
    );
    // And it is watched again: a later change arrives too.
    let third = private_ca("partner CA 3");
    Api::<ConfigMap>::namespaced(cluster.client.clone(), &ns)
        .patch(
            "partner-ca",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"ca.crt": third.pem}})),
        )
        .await
        .expect("update ConfigMap");
    let newest = ders(&third.pem).remove(0);
    eventually(Duration::from_secs(10), || {
        ders(&bundle_and_cert(&target).0)
            .contains(&newest)
            .then_some(())
    })
    .await
    .unwrap_or_else(|| panic!("later changes are not watched\n{}", env.logs()));
}

#[tokio::test]
async fn a_deleted_source_neither_blocks_renewal_nor_empties_the_bundle() {
    require_root!();
    let mut env = Env::new();
    let cluster = Cluster::start(env.path()).await;
    let _driver = env
        .start_cert_manager(&cluster, &["--issue-timeout", "3s"], &[])
        .await;
    let ns = cluster.namespace();
    let partner = private_ca("partner CA");
    create_partner_configmap(&cluster, &ns, &partner.pem).await;
    let pod = cluster.create_pod(&ns, "renewing-0").await;
    let vol = cm_volume(
        &cluster.issuer_name(),
        [
            ("csi.certvol.io/duration", "6s"),
            ("csi.certvol.io/trust-configmaps", "partner-ca/ca.crt"),
        ],
    );
    let target = env.kubelet().publish(&pod, &vol).await.expect("publish");
    let (_, first_cert) = bundle_and_cert(&target);
    let partner_ca = ders(&partner.pem).remove(0);

    Api::<ConfigMap>::namespaced(cluster.client.clone(), &ns)
        .delete("partner-ca", &Default::default())
        .await
        .expect("delete ConfigMap");
    // Renewals go on (a new certificate) and the bundle keeps what it had.
    let bundle = eventually(Duration::from_secs(20), || {
        let (bundle, cert) = bundle_and_cert(&target);
        (cert != first_cert).then_some(bundle)
    })
    .await
    .unwrap_or_else(|| panic!("no renewal while the ConfigMap is gone\n{}", env.logs()));
    assert!(ders(&bundle).contains(&partner_ca), "the partner CA stays");
    let reported = cluster.pod_events(&pod).await.into_iter().any(|e| {
        e["reason"] == events::REASON_TRUST_SOURCE
            && e["message"]
                .as_str()
                .unwrap_or_default()
                .contains(&format!("ConfigMap {ns}/partner-ca does not exist"))
    });
    assert!(reported, "the missing ConfigMap is reported on the pod");

    // Recreated with another CA: the bundle follows.
    let replacement = private_ca("partner CA 2");
    create_partner_configmap(&cluster, &ns, &replacement.pem).await;
    let new_ca = ders(&replacement.pem).remove(0);
    let bundle = eventually(Duration::from_secs(10), || {
        let bundle = ders(&bundle_and_cert(&target).0);
        bundle.contains(&new_ca).then_some(bundle)
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "the recreated ConfigMap never reached the bundle\n{}",
            env.logs()
        )
    });
    assert!(
        !bundle.contains(&partner_ca),
        "the deleted CA left: {}",
        bundle.len()
    );
}

/// Issue 13, bounded memory: 100 volumes naming one ~900 KiB ConfigMap key (a hostile tenant's
/// cheapest way to make the node hold source text) cost the driver one copy of that text, not
/// one per volume: its resident peak (VmHWM of the spawned `certvol node`) stays far below the
/// chart's 128 MiB memory limit while every volume is published and again after the ConfigMap
/// changes and every bundle is rewritten. The padding is text between PEM blocks, so the bundle
/// files stay small and what is measured is the driver holding the source.
#[tokio::test]
async fn a_hundred_volumes_sharing_a_900_kib_source_hold_one_copy() {
    require_root!();
    const VOLUMES: usize = 100;
    const SOURCE_BYTES: usize = 900 * 1024;
    let mut env = Env::new();
    let cluster = Cluster::start(env.path()).await;
    let driver = env.start_cert_manager(&cluster, &[], &[]).await;
    let ns = cluster.namespace();
    let padded = |pem: &str| {
        let mut text = pem.to_owned();
        let line = format!("# {}\n", "x".repeat(76));
        while text.len() + line.len() <= SOURCE_BYTES {
            text.push_str(&line);
        }
        text
    };
    let first = private_ca("partner CA 1");
    let first_text = padded(&first.pem);
    assert!(first_text.len() > SOURCE_BYTES - 100);
    create_partner_configmap(&cluster, &ns, &first_text).await;
    let before = certvol_e2e::bench::procfs::memory(driver.pid()).expect("read /proc");
    let vol = cm_volume(
        &cluster.issuer_name(),
        [("csi.certvol.io/trust-configmaps", "partner-ca/ca.crt")],
    );
    let kubelet = env.kubelet();
    let mut targets = Vec::new();
    for batch in 0..VOLUMES / 10 {
        let mut pods = Vec::new();
        for i in 0..10 {
            pods.push(
                cluster
                    .create_pod(&ns, &format!("shop-{}", batch * 10 + i))
                    .await,
            );
        }
        let published =
            futures::future::join_all(pods.iter().map(|pod| kubelet.publish(pod, &vol))).await;
        for (pod, result) in pods.iter().zip(published) {
            targets.push(result.unwrap_or_else(|e| {
                panic!("publish {}: {e}\n--- log ---\n{}", pod.name, env.logs())
            }));
        }
    }
    let first_ca = ders(&first.pem).remove(0);
    for target in &targets {
        assert!(ders(&bundle_and_cert(target).0).contains(&first_ca));
    }
    let published = certvol_e2e::bench::procfs::memory(driver.pid()).expect("read /proc");

    let second = private_ca("partner CA 2");
    Api::<ConfigMap>::namespaced(cluster.client.clone(), &ns)
        .patch(
            "partner-ca",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"ca.crt": padded(&second.pem)}})),
        )
        .await
        .expect("update ConfigMap");
    let second_ca = ders(&second.pem).remove(0);
    for target in &targets {
        eventually(Duration::from_secs(60), || {
            ders(&bundle_and_cert(target).0)
                .contains(&second_ca)
                .then_some(())
        })
        .await
        .unwrap_or_else(|| panic!("{} never got the new CA\n{}", target.display(), env.logs()));
    }
    let changed = certvol_e2e::bench::procfs::memory(driver.pid()).expect("read /proc");
    println!(
        "driver memory with {VOLUMES} volumes sharing one {} KiB source: before the volumes \
         VmRSS {} KiB; all published VmRSS {} KiB; after the change reached every volume VmRSS \
         {} KiB, peak VmHWM {} KiB",
        first_text.len() / 1024,
        before.rss_kib,
        published.rss_kib,
        changed.rss_kib,
        changed.hwm_kib
    );
    // One copy of the text (plus the watch's transient decoding of the object) is a few MiB;
    // a copy per volume is over 88 MiB on its own.
    let limit_kib = 64 * 1024;
    assert!(
        changed.hwm_kib < limit_kib,
        "the driver's resident peak is {} KiB, over {limit_kib} KiB (half the chart's limit)",
        changed.hwm_kib
    );
}

/// Issue 13, bounded work: the node's trust caps through the real binary. A volume naming more
/// sources than `--max-trust-sources-per-volume` is InvalidArgument naming the attribute, the
/// count and the cap; a source over `--max-trust-source-bytes` fails naming the object, the key
/// and the cap (never its content or its Secret's other keys); a publish taking its namespace
/// past `--max-trust-watches-per-namespace` distinct watched sources fails FailedPrecondition
/// naming the namespace and the cap, without any list or watch for the objects over the budget.
/// Each failure leaves nothing behind and files nothing with the issuer.
#[tokio::test]
async fn trust_caps_refuse_clearly_and_leave_nothing_behind() {
    require_root!();
    let mut env = Env::new();
    let cluster = Cluster::start(env.path()).await;
    let _driver = env
        .start_cert_manager(
            &cluster,
            &[
                "--issue-timeout",
                "5s",
                "--max-trust-sources-per-volume",
                "3",
                "--max-trust-source-bytes",
                "4Ki",
                "--max-trust-watches-per-namespace",
                "2",
            ],
            &[],
        )
        .await;
    let ns = cluster.namespace();
    let kubelet = env.kubelet();
    let ca = private_ca("partner CA");
    create_partner_configmap(&cluster, &ns, &ca.pem).await;
    Api::<Secret>::namespaced(cluster.client.clone(), &ns)
        .create(
            &PostParams::default(),
            &Secret {
                metadata: ObjectMeta {
                    name: Some("big".into()),
                    ..ObjectMeta::default()
                },
                data: Some(
                    [
                        ("ca.crt".to_owned(), ByteString(vec![b'A'; 5000])),
                        ("tls.key".to_owned(), ByteString(b"PRIVATE".to_vec())),
                    ]
                    .into(),
                ),
                ..Secret::default()
            },
        )
        .await
        .expect("create Secret");
    let refused = async |name: &str, vol: &InlineVolume, code: Code, fragments: &[&str]| {
        let pod = cluster.create_pod(&ns, name).await;
        let status = kubelet
            .publish(&pod, vol)
            .await
            .expect_err("publish must fail");
        assert_eq!(status.code(), code, "{name}: {status:?}");
        for fragment in fragments {
            assert!(
                status.message().contains(fragment),
                "{name}: {}",
                status.message()
            );
        }
        assert!(!kubelet.target_path(&pod, vol).exists());
        assert!(env.state(&pod, vol).is_none());
        assert_eq!(requests_of(&cluster, &pod, vol).await, 0);
        (pod, status.message().to_owned())
    };

    let four = cm_volume(
        &cluster.issuer_name(),
        [("csi.certvol.io/trust-configmaps", "a/k,b/k,c/k,d/k")],
    );
    refused(
        "too-many-sources",
        &four,
        Code::InvalidArgument,
        &[
            "volume attribute \"csi.certvol.io/trust-configmaps\"",
            "is 4; at most 3 (the node's --max-trust-sources-per-volume) is accepted",
        ],
    )
    .await;

    let big = cm_volume(
        &cluster.issuer_name(),
        [("csi.certvol.io/trust-secrets", "big/ca.crt")],
    );
    let (pod, message) = refused(
        "too-large",
        &big,
        Code::FailedPrecondition,
        &[&format!(
            "Secret {ns}/big key \"ca.crt\" is 5000 bytes; a trust source may hold at most 4096 \
             bytes (the node's --max-trust-source-bytes)"
        )],
    )
    .await;
    assert!(
        !message.contains("tls.key") && !message.contains("AAAA"),
        "{message}"
    );
    // The Warning Event on the pod says the same, and no more.
    let events: Vec<String> = cluster
        .pod_events(&pod)
        .await
        .into_iter()
        .filter(|e| e["reason"] == events::REASON_TRUST_SOURCE)
        .map(|e| e["message"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(events, [message], "one Warning event on the pod");

    // One watch held by a published volume; a second volume may add one more distinct source,
    // not two: the error names the first one over the budget.
    let partner = cm_volume(
        &cluster.issuer_name(),
        [("csi.certvol.io/trust-configmaps", "partner-ca/ca.crt")],
    );
    let pod = cluster.create_pod(&ns, "holder").await;
    kubelet.publish(&pod, &partner).await.expect("publish");
    let lists = || {
        cluster
            .standin
            .as_ref()
            .map(|s| s.api.count("list", certvol_e2e::apiserver::Kind::ConfigMap))
    };
    let lists_before = lists();
    let two_more = cm_volume(
        &cluster.issuer_name(),
        [(
            "csi.certvol.io/trust-configmaps",
            "partner-ca/ca.crt,other-a/ca.crt,other-b/ca.crt",
        )],
    );
    refused(
        "over-budget",
        &two_more,
        Code::FailedPrecondition,
        &[&format!(
            "ConfigMap {ns}/other-b would make 3 distinct trust sources watched for the volumes \
             of namespace \"{ns}\"; this node watches at most 2 per namespace \
             (--max-trust-watches-per-namespace)"
        )],
    )
    .await;
    assert_eq!(
        lists(),
        lists_before,
        "no list for the sources over the budget"
    );
}

/// Issue 13, the worst one namespace can do with the default caps: as many distinct ~1 MiB
/// ConfigMap keys as `--max-trust-watches-per-namespace` allows (64), named 16 per volume (the
/// per-volume cap) by 4 volumes published at once. Without a node-wide byte budget the driver
/// held all 64 MiB (104 MiB resident); `--max-trust-bytes` (32 MiB by default) refuses what does
/// not fit, naming the budget, so the resident peak stays well under the chart's 128 MiB limit,
/// and once the greedy volumes are refused another namespace's volume with a small source
/// publishes.
#[tokio::test]
async fn a_namespace_with_megabyte_sources_cannot_take_the_driver_past_its_limit() {
    require_root!();
    const SOURCES: usize = 64;
    const PER_VOLUME: usize = 16;
    let mut env = Env::new();
    let cluster = Cluster::start(env.path()).await;
    let driver = env
        .start_cert_manager(&cluster, &["--issue-timeout", "20s"], &[])
        .await;
    let ns = cluster.namespace();
    let ca = private_ca("partner CA");
    let mut text = ca.pem.clone();
    let line = format!("# {}\n", "x".repeat(76));
    while text.len() + line.len() <= 1000 * 1024 {
        text.push_str(&line);
    }
    let api = Api::<ConfigMap>::namespaced(cluster.client.clone(), &ns);
    for i in 0..SOURCES {
        let cm = ConfigMap {
            metadata: ObjectMeta {
                name: Some(format!("big-{i}")),
                ..ObjectMeta::default()
            },
            data: Some([("ca.crt".to_owned(), text.clone())].into()),
            ..ConfigMap::default()
        };
        api.create(&PostParams::default(), &cm)
            .await
            .expect("create ConfigMap");
    }
    let before = certvol_e2e::bench::procfs::memory(driver.pid()).expect("read /proc");
    let kubelet = env.kubelet();
    let mut pods = Vec::new();
    let mut vols = Vec::new();
    for v in 0..SOURCES / PER_VOLUME {
        pods.push(cluster.create_pod(&ns, &format!("greedy-{v}")).await);
        let names: Vec<String> = (0..PER_VOLUME)
            .map(|i| format!("big-{}/ca.crt", v * PER_VOLUME + i))
            .collect();
        vols.push(cm_volume(
            &cluster.issuer_name(),
            [("csi.certvol.io/trust-configmaps", names.join(",").as_str())],
        ));
    }
    let published = futures::future::join_all(
        pods.iter()
            .zip(&vols)
            .map(|(pod, vol)| kubelet.publish(pod, vol)),
    )
    .await;
    let mut refused = 0;
    for (pod, result) in pods.iter().zip(published) {
        if let Err(status) = result {
            refused += 1;
            assert_eq!(
                status.code(),
                Code::FailedPrecondition,
                "{}: {status:?}",
                pod.name
            );
            assert!(
                status.message().contains(
                    "bytes) is not kept: this node's trust sources would hold more than 33554432 \
                     bytes in all (--max-trust-bytes)"
                ),
                "{}: {}",
                pod.name,
                status.message()
            );
        }
    }
    assert!(refused >= 2, "64 MiB of sources do not fit a 32 MiB budget");
    let after = certvol_e2e::bench::procfs::memory(driver.pid()).expect("read /proc");

    // Another namespace's small source still fits.
    create_partner_configmap(&cluster, "honest", &ca.pem).await;
    let pod = cluster.create_pod("honest", "web-0").await;
    let target = kubelet
        .publish(
            &pod,
            &cm_volume(
                &cluster.issuer_name(),
                [("csi.certvol.io/trust-configmaps", "partner-ca/ca.crt")],
            ),
        )
        .await
        .unwrap_or_else(|e| panic!("honest publish: {e}\n{}", env.logs()));
    assert!(ders(&bundle_and_cert(&target).0).contains(&ders(&ca.pem)[0]));
    println!(
        "driver memory with {SOURCES} distinct {} KiB sources in one namespace ({refused} of {} \
         volumes refused over the byte budget): before VmRSS {} KiB; after VmRSS {} KiB, peak \
         VmHWM {} KiB",
        text.len() / 1024,
        pods.len(),
        before.rss_kib,
        after.rss_kib,
        after.hwm_kib
    );
    let limit_kib = 96 * 1024;
    assert!(
        after.hwm_kib < limit_kib,
        "the driver's resident peak is {} KiB, over {limit_kib} KiB (3/4 of the chart's limit)",
        after.hwm_kib
    );
}

/// Lowering the trust caps never breaks a published volume: one naming three sources, published
/// under `--max-trust-sources-per-volume 3` and `--max-trust-watches-per-namespace 3`, is
/// republished (kubelet does so with requiresRepublish) and has its bundle refreshed after the
/// driver restarts with both caps at 1, while a new volume with the same attributes is refused.
#[tokio::test]
async fn a_volume_published_under_higher_caps_keeps_working_after_they_are_lowered() {
    require_root!();
    let mut env = Env::new();
    let cluster = Cluster::start(env.path()).await;
    let caps = |n: &'static str| {
        [
            "--max-trust-sources-per-volume",
            n,
            "--max-trust-watches-per-namespace",
            n,
        ]
    };
    let mut driver = env.start_cert_manager(&cluster, &caps("3"), &[]).await;
    let ns = cluster.namespace();
    let first = private_ca("partner CA 1");
    let api = Api::<ConfigMap>::namespaced(cluster.client.clone(), &ns);
    for name in ["partner-ca", "second", "third"] {
        let cm = ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            data: Some([("ca.crt".to_owned(), first.pem.clone())].into()),
            ..ConfigMap::default()
        };
        api.create(&PostParams::default(), &cm)
            .await
            .expect("create ConfigMap");
    }
    let vol = cm_volume(
        &cluster.issuer_name(),
        [(
            "csi.certvol.io/trust-configmaps",
            "partner-ca/ca.crt,second/ca.crt,third/ca.crt",
        )],
    );
    let pod = cluster.create_pod(&ns, "early").await;
    let kubelet = env.kubelet();
    let target = kubelet.publish(&pod, &vol).await.expect("publish");

    driver.terminate(Duration::from_secs(10)).expect("stop");
    let _driver = env.start_cert_manager(&cluster, &caps("1"), &[]).await;
    let kubelet = env.kubelet();
    let again = kubelet
        .publish(&pod, &vol)
        .await
        .unwrap_or_else(|e| panic!("republish under lower caps: {e}\n{}", env.logs()));
    assert_eq!(again, target);
    let second = private_ca("partner CA 2");
    api.patch(
        "third",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"ca.crt": second.pem}})),
    )
    .await
    .expect("update ConfigMap");
    let new_ca = ders(&second.pem).remove(0);
    eventually(Duration::from_secs(10), || {
        ders(&bundle_and_cert(&target).0)
            .contains(&new_ca)
            .then_some(())
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "the recovered volume's bundle was not refreshed\n{}",
            env.logs()
        )
    });

    let late = cluster.create_pod(&ns, "late").await;
    let status = kubelet
        .publish(&late, &vol)
        .await
        .expect_err("a new volume is held to the new cap");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status
            .message()
            .contains("is 3; at most 1 (the node's --max-trust-sources-per-volume)"),
        "{}",
        status.message()
    );
}
