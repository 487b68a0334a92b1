//! The cert-manager issuer backend against the API stand-in and the cert-manager stand-in: real
//! HTTP, the real CRD schema and webhook, a real watch. Checks what an operator would check: the
//! certificate matches the node's key, one CREATE per issuance and no polling, adoption after a
//! restart, denials surfacing as pod events, the pod's token as the requester.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use certvol_driver::issuer::certmanager::{BearerToken, CertManagerConfig, CertManagerIssuer};
use certvol_driver::issuer::{IssueError, IssueRequest, Issuer, request_name};
use certvol_driver::obs::metrics::Metrics;
use certvol_driver::spec::request::{
    CertRequest, FileNames, IssuerRef, KeyAlgorithm, KeyEncoding, KeyUsage, PodInfo, Sans, Subject,
};
use certvol_driver::x509::keys::{self, PrivateKey};
use certvol_driver::x509::pki;
use certvol_e2e::apiserver::{ApiServer, Kind};
use certvol_e2e::signer::{Approval, Signer, SignerConfig};
use serde_json::{Value, json};

const NS: &str = "team-a";
const NODE: &str = "node-1";

fn cert_request(pod: &str, uid: &str) -> CertRequest {
    CertRequest {
        pod: PodInfo {
            name: pod.into(),
            namespace: NS.into(),
            uid: uid.into(),
            service_account: "web".into(),
        },
        issuer: IssuerRef {
            name: "ca-issuer".into(),
            kind: "Issuer".into(),
            group: "cert-manager.io".into(),
        },
        kube_csr: None,
        subject: Subject {
            common_name: Some(format!("{pod}.example.com")),
            ..Subject::default()
        },
        sans: Sans {
            dns_names: vec![format!("{pod}.example.com")],
            ..Sans::default()
        },
        duration: Duration::from_secs(24 * 3600),
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
        annotations: BTreeMap::from([("team.example.com/owner".into(), "payments".into())]),
        trust: None,
    }
}

/// A request with a fresh key, as the volume layer builds it.
fn issue_request(cert: CertRequest, revision: u64) -> (IssueRequest, PrivateKey) {
    let key = PrivateKey::generate(cert.key_algorithm).unwrap();
    let csr = keys::build_csr(&cert, &key).unwrap();
    let volume_id = format!("csi-{}", hex::encode(cert.pod.uid.as_bytes()));
    let req = IssueRequest {
        name: request_name(NODE, &volume_id, revision),
        volume_id,
        node_id: NODE.into(),
        csr_pem: csr.pem,
        csr_der: csr.der,
        cert: Arc::new(cert),
        token: None,
        worker: Default::default(),
    };
    (req, key)
}

/// The pod, in the store, so ownerReferences point at a real object.
fn create_pod(api: &ApiServer, name: &str) -> String {
    let pod = api
        .store()
        .create(
            Kind::Pod,
            NS,
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": NS},
                   "spec": {"containers": [{"name": "app", "image": "app"}]}}),
        )
        .unwrap();
    pod["metadata"]["uid"].as_str().unwrap().to_owned()
}

fn config(wait: Duration) -> CertManagerConfig {
    CertManagerConfig {
        node_id: NODE.into(),
        wait_timeout: wait,
        use_token_request: false,
        kube_config: None,
        requests: Default::default(),
        metrics: Metrics::detached(),
    }
}

fn kube_config(api: &ApiServer, token: &str) -> kube::Config {
    let mut cfg = kube::Config::new(api.url().parse().unwrap());
    cfg.auth_info.token = Some(token.into());
    cfg
}

/// Starts the issuer with its watch running, as node::run does.
fn start(api: &ApiServer, cfg: CertManagerConfig) -> CertManagerIssuer {
    let client = kube::Client::try_from(kube_config(api, "driver-token")).unwrap();
    let (issuer, watch) = CertManagerIssuer::new(client, cfg);
    tokio::spawn(watch);
    issuer
}

fn assert_signed_for(issued: &certvol_driver::issuer::Issued, key: &PrivateKey) {
    let chain = pki::parse_pem_chain(&issued.chain_pem).unwrap();
    assert!(
        pki::key_matches(&chain[0], key).unwrap(),
        "leaf is for the node's key"
    );
    let ca = pki::parse_pem_chain(&issued.ca_pem).unwrap();
    pki::verify_chain(&chain, &ca, SystemTime::now()).unwrap();
}

/// Polls a condition on the test's own stand-in (never the driver's API traffic), up to 10 s.
async fn wait_until(mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not reached in 10 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn pod_events(api: &ApiServer) -> Vec<Value> {
    api.store().list(Kind::Event, Some(NS), None)
}

#[tokio::test]
async fn issues_with_one_create_and_no_polling() {
    let api = ApiServer::start().await.unwrap();
    let signer = Signer::start(api.store(), SignerConfig::default());
    let issuer = start(&api, config(Duration::from_secs(20)));
    let uid = create_pod(&api, "web-0");

    for revision in 1..=3 {
        let (req, key) = issue_request(cert_request("web-0", &uid), revision);
        let issued = issuer.issue(&req).await.unwrap();
        assert_signed_for(&issued, &key);
        assert_eq!(issued.ca_pem, signer.ca_pem());
    }

    assert_eq!(api.count("create", Kind::CertificateRequest), 3);
    assert_eq!(
        api.count("get", Kind::CertificateRequest),
        0,
        "no GET per issuance"
    );
    assert!(
        api.count("list", Kind::CertificateRequest) <= 1,
        "one list for the shared watch: {:?}",
        api.requests()
    );
    let stored = api.store().list(Kind::CertificateRequest, Some(NS), None);
    assert_eq!(stored.len(), 3);
    let cr = &stored[0];
    assert_eq!(cr["metadata"]["labels"]["certvol.io/node"], NODE);
    assert_eq!(cr["metadata"]["labels"]["certvol.io/pod"], "web-0");
    assert_eq!(cr["metadata"]["ownerReferences"][0]["uid"], uid.as_str());
    assert_eq!(
        cr["metadata"]["annotations"]["team.example.com/owner"],
        "payments"
    );
    assert_eq!(cr["spec"]["duration"], "24h0m0s");
    assert_eq!(
        cr["spec"]["username"], "system:serviceaccount:certvol:certvol",
        "filed as the driver"
    );
    assert!(pod_events(&api).is_empty());
}

#[tokio::test]
async fn after_a_restart_the_filed_request_is_adopted() {
    let api = ApiServer::start().await.unwrap();
    let signer = Signer::start(api.store(), SignerConfig::default());
    signer.set_delay(Duration::from_millis(300));
    let uid = create_pod(&api, "web-0");
    let (req, key) = issue_request(cert_request("web-0", &uid), 1);

    // The first driver files the request and dies before the answer.
    let first = start(&api, config(Duration::from_millis(50)));
    assert!(matches!(
        first.issue(&req).await,
        Err(IssueError::Timeout { .. })
    ));
    drop(first);

    // The restarted driver asks again under the same name: adopted, never filed twice.
    let second = start(&api, config(Duration::from_secs(20)));
    let issued = second.issue(&req).await.unwrap();
    assert_signed_for(&issued, &key);
    assert_eq!(
        api.store()
            .list(Kind::CertificateRequest, Some(NS), None)
            .len(),
        1
    );
    let creates: Vec<u16> = api
        .requests()
        .iter()
        .filter(|r| r.verb == "create" && r.kind == Some(Kind::CertificateRequest))
        .map(|r| r.status)
        .collect();
    // The restarted driver either met 409 AlreadyExists or found the request on its fresh watch
    // first (then it files nothing): never a second successful create.
    assert!(
        creates == [201, 409] || creates == [201],
        "creates: {creates:?}"
    );
    assert_eq!(signer.signed(), 1);
}

#[tokio::test]
async fn a_retry_after_a_timeout_files_nothing_new() {
    let api = ApiServer::start().await.unwrap();
    let signer = Signer::start(api.store(), SignerConfig::default());
    signer.set_delay(Duration::from_secs(2));
    let issuer = start(&api, config(Duration::from_millis(700)));
    let uid = create_pod(&api, "web-0");
    let (req, key) = issue_request(cert_request("web-0", &uid), 1);

    assert!(matches!(
        issuer.issue(&req).await,
        Err(IssueError::Timeout { .. })
    ));
    // The timeout is explained on the pod, with the status the watch showed.
    let events = pod_events(&api);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["reason"], "CertificateRequestTimeout");
    let message = events[0]["message"].as_str().unwrap();
    assert!(
        message.contains("Approved=True") && message.contains("Ready=False (Pending"),
        "{message}"
    );

    // kubelet retries: the request is already on the node's watch, so nothing is filed again.
    let mut retries = 0;
    let issued = loop {
        match issuer.issue(&req).await {
            Ok(issued) => break issued,
            Err(IssueError::Timeout { .. }) if retries < 10 => retries += 1,
            Err(e) => panic!("{e:?}"),
        }
    };
    assert_signed_for(&issued, &key);
    assert_eq!(api.count("create", Kind::CertificateRequest), 1);
    assert_eq!(api.count("get", Kind::CertificateRequest), 0);
    assert_eq!(
        pod_events(&api).len(),
        1,
        "the timeout is reported once per request"
    );
}

#[tokio::test]
async fn a_denial_is_final_and_reported_once_on_the_pod() {
    let api = ApiServer::start().await.unwrap();
    let signer = Signer::start(api.store(), SignerConfig::default());
    signer.set_policy(|_| {
        Approval::deny("policy.cert-manager.io", "No policy approved this request")
    });
    let issuer = start(&api, config(Duration::from_secs(20)));
    let uid = create_pod(&api, "web-0");
    let (req, _key) = issue_request(cert_request("web-0", &uid), 1);

    for _ in 0..2 {
        match issuer.issue(&req).await {
            Err(IssueError::Denied { request, message }) => {
                assert_eq!(request, format!("{NS}/{}", req.name));
                assert!(
                    message.contains("No policy approved this request"),
                    "{message}"
                );
            }
            other => panic!("{other:?}"),
        }
    }
    let events = pod_events(&api);
    assert_eq!(events.len(), 1, "{events:?}");
    let ev = &events[0];
    assert_eq!(ev["reason"], "CertificateRequestDenied");
    assert_eq!(ev["type"], "Warning");
    assert_eq!(ev["involvedObject"]["kind"], "Pod");
    assert_eq!(ev["involvedObject"]["name"], "web-0");
    assert_eq!(ev["involvedObject"]["uid"], uid.as_str());
    assert!(ev["message"].as_str().unwrap().contains(&req.name));
}

#[tokio::test]
async fn a_webhook_rejection_is_invalid_with_the_servers_message() {
    let api = ApiServer::start().await.unwrap();
    let _signer = Signer::start(api.store(), SignerConfig::default());
    let issuer = start(&api, config(Duration::from_secs(5)));
    let uid = create_pod(&api, "web-0");
    let (mut req, _key) = issue_request(cert_request("web-0", &uid), 1);
    // The CSR says server auth; the spec now says client auth: cert-manager's webhook refuses.
    let mut cert = (*req.cert).clone();
    cert.usages = vec![
        KeyUsage::DigitalSignature,
        KeyUsage::KeyEncipherment,
        KeyUsage::ClientAuth,
    ];
    req.cert = Arc::new(cert);
    match issuer.issue(&req).await {
        Err(IssueError::Invalid { message, .. }) => {
            assert!(message.contains("usages"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    assert!(
        api.store()
            .list(Kind::CertificateRequest, Some(NS), None)
            .is_empty()
    );
    let events = pod_events(&api);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["reason"], "CertificateRequestInvalid");
}

#[tokio::test]
async fn a_result_written_while_the_watch_relists_is_not_missed() {
    let api = ApiServer::start().await.unwrap();
    let signer = Signer::start(api.store(), SignerConfig::default());
    signer.set_delay(Duration::from_millis(400));
    let issuer = Arc::new(start(&api, config(Duration::from_secs(20))));
    let uid = create_pod(&api, "web-0");
    let (req, key) = issue_request(cert_request("web-0", &uid), 1);

    let task = {
        let issuer = issuer.clone();
        let req = req.clone();
        tokio::spawn(async move { issuer.issue(&req).await })
    };
    // Break the watch and compact history while the request is pending: the watcher must relist
    // (410 Gone) and still deliver the signed result.
    wait_until(|| {
        api.count("watch", Kind::CertificateRequest) >= 1
            && api
                .store()
                .get(Kind::CertificateRequest, NS, &req.name)
                .is_some()
    })
    .await;
    api.faults().expire_history();
    api.faults().drop_watches();
    let issued = task.await.unwrap().unwrap();
    assert_signed_for(&issued, &key);
    assert!(
        api.count("list", Kind::CertificateRequest) >= 2,
        "the watcher relisted: {:?}",
        api.requests()
    );
    assert_eq!(api.count("get", Kind::CertificateRequest), 0);
}

#[tokio::test]
async fn token_mode_files_the_request_as_the_pod() {
    let api = ApiServer::start().await.unwrap();
    let _signer = Signer::start(api.store(), SignerConfig::default());
    api.add_token(
        "pod-token",
        "system:serviceaccount:team-a:web",
        &[
            "system:serviceaccounts",
            "system:serviceaccounts:team-a",
            "system:authenticated",
        ],
        "sa-uid-web",
    );
    let mut cfg = config(Duration::from_secs(20));
    cfg.use_token_request = true;
    cfg.kube_config = Some(kube_config(&api, "driver-token"));
    let issuer = start(&api, cfg);
    let uid = create_pod(&api, "web-0");
    let (mut req, key) = issue_request(cert_request("web-0", &uid), 1);

    req.token = None;
    match issuer.issue(&req).await {
        Err(IssueError::Invalid { message, .. }) => assert!(message.contains("tokenRequests")),
        other => panic!("{other:?}"),
    }
    assert_eq!(api.count("create", Kind::CertificateRequest), 0);

    req.token = Some(BearerToken::new("pod-token".to_owned().into()));
    assert_signed_for(&issuer.issue(&req).await.unwrap(), &key);
    let creates: Vec<_> = api
        .requests()
        .into_iter()
        .filter(|r| r.verb == "create" && r.kind == Some(Kind::CertificateRequest))
        .collect();
    assert_eq!(creates.len(), 1);
    assert_eq!(creates[0].token.as_deref(), Some("pod-token"));
    let cr = api
        .store()
        .get(Kind::CertificateRequest, NS, &req.name)
        .unwrap();
    assert_eq!(cr["spec"]["username"], "system:serviceaccount:team-a:web");
    // The watch and the events still use the driver's identity.
    assert!(
        api.requests()
            .iter()
            .filter(|r| r.verb == "watch" || r.verb == "list")
            .all(|r| r.token.as_deref() == Some("driver-token"))
    );
}

#[tokio::test]
async fn forget_deletes_and_a_deleted_pod_fails_the_wait() {
    let api = ApiServer::start().await.unwrap();
    let signer = Signer::start(api.store(), SignerConfig::default());
    let issuer = Arc::new(start(&api, config(Duration::from_secs(20))));
    let uid = create_pod(&api, "web-0");
    let (req, _key) = issue_request(cert_request("web-0", &uid), 1);
    issuer.issue(&req).await.unwrap();
    issuer
        .forget(NS, &[req.name.clone(), "never-filed".to_owned()])
        .await
        .unwrap();
    assert!(
        api.store()
            .get(Kind::CertificateRequest, NS, &req.name)
            .is_none()
    );

    // A slow signer, and the pod goes away meanwhile: the garbage collector deletes the request.
    signer.set_delay(Duration::from_secs(5));
    let (req2, _key) = issue_request(cert_request("web-0", &uid), 2);
    let name2 = req2.name.clone();
    let task = {
        let issuer = issuer.clone();
        tokio::spawn(async move { issuer.issue(&req2).await })
    };
    wait_until(|| {
        api.store()
            .get(Kind::CertificateRequest, NS, &name2)
            .is_some()
    })
    .await;
    api.store().delete(Kind::Pod, NS, "web-0").unwrap();
    match task.await.unwrap() {
        Err(IssueError::Failed { message, .. }) => {
            assert!(message.contains("deleted"), "{message}")
        }
        other => panic!("{other:?}"),
    }
}
