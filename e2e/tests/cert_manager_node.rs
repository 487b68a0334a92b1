//! The real `certvol node --issuer cert-manager` binary driven over its CSI socket as kubelet
//! drives it, against the Kubernetes API stand-in with the cert-manager stand-in signing (or a real
//! cluster, see `certvol_e2e::cluster`): what lands in the volume and in the API, denials and
//! failures as the user sees them, a slow signer, a crash right after the request was filed,
//! clean-up, and token-request mode.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use certvol_driver::demo::kubelet::{InlineVolume, Pod, volume_id};
use certvol_driver::issuer::certmanager::resource::{
    LABEL_NODE, LABEL_POD, LABEL_VOLUME, hashed_label,
};
use certvol_driver::issuer::certmanager::{CertificateRequest, events};
use certvol_driver::issuer::request_name;
use certvol_driver::x509::pki;
use certvol_e2e::apiserver::Kind;
use certvol_e2e::cluster::{Cluster, DRIVER_TOKEN, NODE_ID, StandIn, cm_volume};
use certvol_e2e::signer::Approval;
use certvol_e2e::{Driver, Env, files_below, read_volume};
use certvol_e2e::{require_root, require_standin};
use tonic::Code;

/// A fresh node (data root, socket) and cluster, and the driver running against it.
async fn start(extra: &[&str]) -> (Env, Cluster, Driver) {
    let mut env = Env::new();
    let cluster = Cluster::start(env.path()).await;
    let driver = env.start_cert_manager(&cluster, extra, &[]).await;
    (env, cluster, driver)
}

/// A pod name that cannot collide with leftovers of earlier runs on a real cluster.
fn pod_name(cluster: &Cluster, base: &str) -> String {
    if cluster.is_real() {
        format!("{base}-{:08x}", rand::random::<u32>())
    } else {
        base.to_owned()
    }
}

fn ours(env: &Env) -> Vec<String> {
    env.mounts()
        .into_iter()
        .filter(|m| m.source.starts_with("certvol:"))
        .map(|m| m.mount_point.display().to_string())
        .collect()
}

fn vid(pod: &Pod, vol: &InlineVolume) -> String {
    volume_id(&pod.uid, &vol.name)
}

/// The requests filed for one volume (selected by their volume label).
async fn volume_requests(
    cluster: &Cluster,
    pod: &Pod,
    vol: &InlineVolume,
) -> Vec<CertificateRequest> {
    let label = hashed_label(&vid(pod, vol));
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
        .collect()
}

/// DER of every certificate in `pem`, for comparing PEM texts by content.
fn ders(pem: &str) -> Vec<Vec<u8>> {
    pki::parse_pem_chain(pem)
        .unwrap()
        .into_iter()
        .map(|c| c.der)
        .collect()
}

fn events_with_reason(events: &[serde_json::Value], reason: &str) -> Vec<serde_json::Value> {
    events
        .iter()
        .filter(|e| e["reason"] == reason)
        .cloned()
        .collect()
}

/// Nothing of the volume remains on the node: no target dir, no state, no mounts.
fn assert_nothing_left(env: &Env, pod: &Pod, vol: &InlineVolume) {
    let target = env.kubelet().target_path(pod, vol);
    assert!(!target.exists(), "target {} left behind", target.display());
    assert!(env.state(pod, vol).is_none(), "state left behind");
    assert!(ours(env).is_empty(), "mounts left behind: {:?}", ours(env));
}

#[tokio::test]
async fn issued_files_and_the_request_match_the_volume() {
    require_root!();
    let (env, cluster, _driver) = start(&[]).await;
    let kubelet = env.kubelet();
    let ns = cluster.namespace();
    let pod = cluster.create_pod(&ns, &pod_name(&cluster, "web-0")).await;
    let vol = cm_volume(
        &cluster.issuer_name(),
        [
            ("csi.certvol.io/common-name", "${POD_NAME}"),
            (
                "csi.certvol.io/uri-sans",
                "spiffe://cluster.local/ns/${POD_NAMESPACE}/sa/${SERVICE_ACCOUNT_NAME}",
            ),
            ("csi.certvol.io/duration", "2h"),
            (
                "csi.certvol.io/key-usages",
                "digital signature, key encipherment, server auth, client auth",
            ),
            ("csi.certvol.io/key-algorithm", "ECDSA"),
            ("csi.certvol.io/key-size", "384"),
            ("example.com/team", "payments"),
        ],
    );
    let target = kubelet.publish(&pod, &vol).await.expect("publish");

    // What the pod reads.
    let files = read_volume(&target).expect("consistent volume, chain verifies against ca.crt");
    assert_eq!(files.leaf.dns_names, vec![format!("{}.{ns}.svc", pod.name)]);
    assert!(
        files.leaf.subject.contains(&format!("CN={}", pod.name)),
        "{}",
        files.leaf.subject
    );
    assert_eq!(
        files.leaf.uris,
        vec![format!("spiffe://cluster.local/ns/{ns}/sa/default")]
    );
    assert_eq!(files.leaf.key_algorithm, "ECDSA P-384");
    assert!(!files.leaf.is_ca);
    let lifetime = files
        .leaf
        .not_after
        .duration_since(files.leaf.not_before)
        .unwrap();
    // Signers may backdate notBefore a little; the lifetime is still the 2h asked for.
    assert!(
        lifetime >= Duration::from_secs(7200 - 120) && lifetime <= Duration::from_secs(7200 + 600),
        "{lifetime:?}"
    );
    let (_, leaf) = x509_parser::parse_x509_certificate(&files.leaf.der).unwrap();
    let eku = leaf
        .extended_key_usage()
        .unwrap()
        .expect("leaf has extended key usage")
        .value;
    assert!(
        eku.server_auth && eku.client_auth,
        "EKU lacks server/client auth: {eku:?}"
    );
    let ku = leaf.key_usage().unwrap().expect("leaf has key usage").value;
    assert!(ku.digital_signature(), "{ku:?}");

    // What the API shows.
    let crs = volume_requests(&cluster, &pod, &vol).await;
    assert_eq!(crs.len(), 1, "{crs:?}");
    let cr = &crs[0];
    assert_eq!(
        cr.metadata.name.as_deref(),
        Some(request_name(NODE_ID, &vid(&pod, &vol), 1).as_str())
    );
    let labels = cr.metadata.labels.clone().unwrap_or_default();
    assert_eq!(labels.get(LABEL_NODE).map(String::as_str), Some(NODE_ID));
    assert_eq!(labels.get(LABEL_POD), Some(&pod.name));
    assert_eq!(
        labels.get(LABEL_VOLUME),
        Some(&hashed_label(&vid(&pod, &vol)))
    );
    let owners = cr.metadata.owner_references.clone().unwrap_or_default();
    assert_eq!(owners.len(), 1, "{owners:?}");
    assert_eq!(
        (owners[0].kind.as_str(), owners[0].uid.as_str()),
        ("Pod", pod.uid.as_str())
    );
    assert_eq!(
        cr.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("example.com/team"))
            .map(String::as_str),
        Some("payments")
    );
    // The node's name verbatim, which the chart's admission policy checks against the
    // driver's pod-bound token.
    assert_eq!(
        cr.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("certvol.io/node-name"))
            .map(String::as_str),
        Some(NODE_ID)
    );
    assert!(!cr.spec.is_ca);
    let usages: BTreeSet<&str> = cr.spec.usages.iter().map(String::as_str).collect();
    for u in [
        "digital signature",
        "key encipherment",
        "server auth",
        "client auth",
    ] {
        assert!(usages.contains(u), "spec.usages lacks {u}: {usages:?}");
    }
    assert_eq!(cr.spec.issuer_ref.name, cluster.issuer_name());
    let status = cr.status.as_ref().expect("status");
    let status_ca = String::from_utf8(status.ca.as_ref().expect("status.ca").0.clone()).unwrap();
    let ca_file = std::fs::read_to_string(target.join("ca.crt")).unwrap();
    assert_eq!(ders(&ca_file), ders(&status_ca), "ca.crt is status.ca");
    let status_chain = String::from_utf8(
        status
            .certificate
            .as_ref()
            .expect("status.certificate")
            .0
            .clone(),
    )
    .unwrap();
    assert_eq!(
        ders(&status_chain)[0],
        files.leaf.der,
        "tls.crt is status.certificate"
    );

    if cluster.is_real() {
        kubelet.unpublish(&pod, &vol).await.expect("unpublish");
        cluster.delete_pod(&pod).await;
    }
    // API traffic: one CREATE per issuance, no GETs, and list/watch traffic independent of the
    // number of volumes (one shared watch).
    let standin = require_standin!(cluster, "needs the stand-in's request log");
    let api = &standin.api;
    let list_watch = || {
        api.count("list", Kind::CertificateRequest) + api.count("watch", Kind::CertificateRequest)
    };
    let before = list_watch();
    for name in ["web-1", "web-2"] {
        let pod = cluster.create_pod(&ns, name).await;
        let vol = cm_volume(&cluster.issuer_name(), []);
        let target = kubelet.publish(&pod, &vol).await.expect("publish");
        read_volume(&target).expect("consistent volume");
    }
    assert_eq!(api.count("create", Kind::CertificateRequest), 3);
    assert_eq!(
        api.count("get", Kind::CertificateRequest),
        0,
        "{:?}",
        api.requests()
    );
    assert_eq!(
        list_watch(),
        before,
        "list/watch grew per volume: {:?}",
        api.requests()
    );
    assert_eq!(standin.signer.signed(), 3);
    assert_eq!(
        files.ca.iter().map(|c| c.der.clone()).collect::<Vec<_>>(),
        ders(&standin.signer.ca_pem())
    );
}

/// Publishes `vol` for `pod` expecting a final failure with `code`; returns the message.
async fn publish_fails(env: &Env, pod: &Pod, vol: &InlineVolume, code: Code) -> String {
    match env.kubelet().publish(pod, vol).await {
        Ok(target) => panic!("publish succeeded: {}", target.display()),
        Err(status) => {
            assert_eq!(status.code(), code, "{status:?}");
            status.message().to_owned()
        }
    }
}

#[tokio::test]
async fn a_denied_request_fails_the_publish_and_leaves_only_one_event() {
    require_root!();
    let (env, cluster, _driver) = start(&[]).await;
    let standin = require_standin!(cluster, "needs the stand-in's signer policy");
    standin.signer.set_policy(|_| {
        Approval::deny("policy.cert-manager.io", "No policy approved this request")
    });
    let ns = cluster.namespace();
    let pod = cluster.create_pod(&ns, "web-0").await;
    let vol = cm_volume(&cluster.issuer_name(), []);
    let name = request_name(NODE_ID, &vid(&pod, &vol), 1);

    let message = publish_fails(&env, &pod, &vol, Code::PermissionDenied).await;
    assert!(message.contains(&name), "names the request: {message}");
    assert!(
        message.contains("No policy approved this request"),
        "carries cert-manager's message: {message}"
    );
    let events = events_with_reason(&cluster.pod_events(&pod).await, events::REASON_DENIED);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["type"], "Warning");
    assert!(
        events[0]["message"].as_str().unwrap_or("").contains(&name),
        "{events:?}"
    );
    assert_nothing_left(&env, &pod, &vol);
    assert!(
        volume_requests(&cluster, &pod, &vol).await.is_empty(),
        "a final failure deletes the volume's requests"
    );

    // kubelet keeps retrying: each attempt fails the same way, without piling up events.
    for _ in 0..2 {
        publish_fails(&env, &pod, &vol, Code::PermissionDenied).await;
    }
    let events = cluster.pod_events(&pod).await;
    let mut per_request = std::collections::BTreeMap::<(String, String), usize>::new();
    for e in &events {
        let msg = e["message"].as_str().unwrap_or_default();
        let request = msg
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
            .find(|w| w.starts_with("certvol-"))
            .unwrap_or_default()
            .to_owned();
        *per_request
            .entry((e["reason"].as_str().unwrap_or_default().to_owned(), request))
            .or_default() += 1;
    }
    assert!(
        per_request.values().all(|n| *n == 1),
        "one event per (reason, request): {per_request:?}"
    );
    assert!(per_request.contains_key(&(events::REASON_DENIED.to_owned(), name.clone())));
    assert_nothing_left(&env, &pod, &vol);
    assert!(volume_requests(&cluster, &pod, &vol).await.is_empty());
}

#[tokio::test]
async fn a_failed_request_fails_the_publish_as_a_precondition() {
    require_root!();
    let (env, cluster, _driver) = start(&[]).await;
    let standin = require_standin!(cluster, "needs the stand-in's signer controls");
    standin.signer.set_fail_signing(true);
    let ns = cluster.namespace();
    let pod = cluster.create_pod(&ns, "web-0").await;
    let vol = cm_volume(&cluster.issuer_name(), []);
    let name = request_name(NODE_ID, &vid(&pod, &vol), 1);

    let message = publish_fails(&env, &pod, &vol, Code::FailedPrecondition).await;
    assert!(message.contains(&name), "names the request: {message}");
    assert!(
        message.contains(certvol_e2e::signer::SIMULATED_FAILURE),
        "carries cert-manager's message: {message}"
    );
    publish_fails(&env, &pod, &vol, Code::FailedPrecondition).await;
    let events = events_with_reason(&cluster.pod_events(&pod).await, events::REASON_FAILED);
    assert_eq!(events.len(), 1, "{events:?}");
    assert!(events[0]["message"].as_str().unwrap_or("").contains(&name));
    assert_nothing_left(&env, &pod, &vol);
    assert!(volume_requests(&cluster, &pod, &vol).await.is_empty());

    // Once the issuer works again, the next retry succeeds.
    standin.signer.set_fail_signing(false);
    let target = env.kubelet().publish(&pod, &vol).await.expect("publish");
    read_volume(&target).expect("consistent volume");
}

#[tokio::test]
async fn a_slow_signer_is_waited_for_on_the_watch_without_polling() {
    require_root!();
    let (env, cluster, _driver) = start(&[]).await;
    let standin = require_standin!(cluster, "needs the stand-in's signer delay");
    standin.signer.set_delay(Duration::from_secs(3));
    let ns = cluster.namespace();
    let pod = cluster.create_pod(&ns, "web-0").await;
    let vol = cm_volume(&cluster.issuer_name(), []);

    let started = Instant::now();
    let target = env.kubelet().publish(&pod, &vol).await.expect("publish");
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let files = read_volume(&target).expect("consistent volume");
    assert_eq!(
        ders(&standin.signer.ca_pem()),
        files.ca.iter().map(|c| c.der.clone()).collect::<Vec<_>>()
    );
    assert_eq!(standin.api.count("create", Kind::CertificateRequest), 1);
    assert_eq!(
        standin.api.count("get", Kind::CertificateRequest),
        0,
        "{:?}",
        standin.api.requests()
    );
}

#[tokio::test]
async fn a_crash_right_after_filing_the_request_is_resumed_without_a_second_request() {
    require_root!();
    let mut env = Env::new();
    let cluster = Cluster::start(env.path()).await;
    let mut dying = env
        .start_cert_manager(
            &cluster,
            &[],
            &[(certvol_driver::base::crashpoint::ENV, "certmanager:created")],
        )
        .await;
    let ns = cluster.namespace();
    let pod = cluster.create_pod(&ns, &pod_name(&cluster, "web-0")).await;
    let vol = cm_volume(&cluster.issuer_name(), []);

    let err = env
        .kubelet()
        .publish(&pod, &vol)
        .await
        .expect_err("the driver died");
    assert!(!matches!(err.code(), Code::Ok), "{err:?}");
    dying
        .wait_exit(Duration::from_secs(10))
        .expect("driver killed itself");
    assert!(
        dying.log_text().contains("certmanager:created"),
        "{}",
        dying.log_text()
    );
    assert_eq!(
        volume_requests(&cluster, &pod, &vol).await.len(),
        1,
        "filed before the crash"
    );

    let _driver = env.start_cert_manager(&cluster, &[], &[]).await;
    // kubelet retries the publish after the failed attempt.
    let target = env
        .kubelet()
        .publish(&pod, &vol)
        .await
        .expect("retried publish");
    let files = read_volume(&target).expect("consistent volume");
    let crs = volume_requests(&cluster, &pod, &vol).await;
    assert_eq!(crs.len(), 1, "exactly one request for the volume: {crs:?}");
    let chain = crs[0]
        .status
        .as_ref()
        .and_then(|s| s.certificate.as_ref())
        .map(|c| String::from_utf8_lossy(&c.0).into_owned())
        .expect("signed");
    assert_eq!(
        ders(&chain)[0],
        files.leaf.der,
        "the volume holds the adopted request's certificate"
    );
    assert_eq!(
        crs[0].metadata.name.as_deref(),
        Some(request_name(NODE_ID, &vid(&pod, &vol), 1).as_str())
    );
    if let Some(standin) = cluster.standin.as_ref() {
        assert_eq!(standin.signer.signed(), 1);
        let created: Vec<u16> = standin
            .api
            .requests()
            .iter()
            .filter(|r| r.verb == "create" && r.kind == Some(Kind::CertificateRequest))
            .map(|r| r.status)
            .filter(|s| *s == 201)
            .collect();
        assert_eq!(
            created.len(),
            1,
            "one successful create: {:?}",
            standin.api.requests()
        );
    }
    env.kubelet()
        .unpublish(&pod, &vol)
        .await
        .expect("unpublish");
    cluster.delete_pod(&pod).await;
}

#[tokio::test]
async fn unpublish_and_pod_deletion_remove_the_requests() {
    require_root!();
    let (env, cluster, _driver) = start(&[]).await;
    let kubelet = env.kubelet();
    let ns = cluster.namespace();
    let pod = cluster.create_pod(&ns, &pod_name(&cluster, "web-0")).await;
    let vol = cm_volume(&cluster.issuer_name(), []);
    kubelet.publish(&pod, &vol).await.expect("publish");
    assert_eq!(volume_requests(&cluster, &pod, &vol).await.len(), 1);
    kubelet.unpublish(&pod, &vol).await.expect("unpublish");
    assert!(
        volume_requests(&cluster, &pod, &vol).await.is_empty(),
        "unpublish deletes the volume's requests"
    );
    assert_nothing_left(&env, &pod, &vol);

    // The pod goes away while its volume is still published (the driver has not been told yet):
    // its requests go with it through the ownerReference.
    let other = cluster.create_pod(&ns, &pod_name(&cluster, "web-1")).await;
    kubelet.publish(&other, &vol).await.expect("publish");
    assert_eq!(volume_requests(&cluster, &other, &vol).await.len(), 1);
    cluster.delete_pod(&other).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !volume_requests(&cluster, &other, &vol).await.is_empty() {
        assert!(Instant::now() < deadline, "requests outlived their pod");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The late unpublish copes with requests already gone.
    kubelet.unpublish(&other, &vol).await.expect("unpublish");
    assert_nothing_left(&env, &other, &vol);
    cluster.delete_pod(&pod).await;
}

#[tokio::test]
async fn token_request_mode_files_as_the_pod_and_never_persists_the_token() {
    require_root!();
    let (env, cluster, _driver) = start(&["--use-token-request"]).await;
    let standin: &StandIn = require_standin!(cluster, "needs the stand-in's token registry");
    let ns = cluster.namespace();
    let pod = cluster.create_pod(&ns, "web-0").await;
    let username = format!("system:serviceaccount:{ns}:{}", pod.service_account);
    let token = format!("e2e-pod-token-{:032x}", rand::random::<u128>());
    standin.api.add_token(
        &token,
        &username,
        &[
            "system:serviceaccounts",
            &format!("system:serviceaccounts:{ns}"),
            "system:authenticated",
        ],
        "sa-uid-default",
    );
    let vol = cm_volume(&cluster.issuer_name(), []);

    // kubelet with tokenRequests in the CSIDriver: the pod's token in the volume context.
    let kubelet = env.kubelet();
    let mut pod = pod;
    pod.token = Some(token.clone());
    let target = kubelet.publish(&pod, &vol).await.expect("publish");
    read_volume(&target).expect("consistent volume");

    let creates: Vec<_> = standin
        .api
        .requests()
        .into_iter()
        .filter(|r| r.verb == "create" && r.kind == Some(Kind::CertificateRequest))
        .collect();
    assert_eq!(creates.len(), 1, "{creates:?}");
    assert_eq!(
        creates[0].token.as_deref(),
        Some(token.as_str()),
        "filed with the pod's token"
    );
    let crs = volume_requests(&cluster, &pod, &vol).await;
    assert_eq!(crs.len(), 1);
    assert_eq!(crs[0].spec.username.as_deref(), Some(username.as_str()));
    // Only the create is the pod's: the shared watch stays the driver's own.
    let watches: Vec<_> = standin
        .api
        .requests()
        .into_iter()
        .filter(|r| r.verb == "watch" || r.verb == "list")
        .collect();
    assert!(!watches.is_empty());
    assert!(
        watches
            .iter()
            .all(|r| r.token.as_deref() == Some(DRIVER_TOKEN)),
        "{watches:?}"
    );

    // requiresRepublish: kubelet calls again with a fresh token; nothing is filed again.
    let fresh = format!("e2e-pod-token-{:032x}", rand::random::<u128>());
    pod.token = Some(fresh.clone());
    kubelet.publish(&pod, &vol).await.expect("republish");
    assert_eq!(standin.api.count("create", Kind::CertificateRequest), 1);

    // Tokens are credentials: nothing the driver writes or logs may contain them.
    let files = files_below(&env.data_root);
    assert!(
        files.iter().any(|f| f.ends_with("tls.key")),
        "the scan reaches the volume's files: {files:?}"
    );
    let logs = env.logs();
    for t in [&token, &fresh] {
        assert!(!logs.contains(t.as_str()), "the driver logged a pod token");
        for f in &files {
            let bytes = std::fs::read(f).unwrap_or_default();
            assert!(
                !bytes.windows(t.len()).any(|w| w == t.as_bytes()),
                "{} contains a pod token",
                f.display()
            );
        }
    }
}
