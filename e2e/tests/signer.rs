//! The cert-manager stand-in against the API stand-in's store: conditions, fields and the
//! certificates it signs, checked as the driver (or `kubectl describe`) would see them.

use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use certvol_e2e::apiserver::{Kind, Store};
use certvol_e2e::signer::{
    APPROVED_MESSAGE, Approval, DENIED_MESSAGE, ISSUED_MESSAGE, PENDING_MESSAGE, Signer,
    SignerConfig,
};
use rcgen::{CertificateParams, DnType, KeyPair};
use serde_json::{Value, json};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::pem::Pem;

const NS: &str = "team-a";

fn store() -> Store {
    Store::new().expect("load the CertificateRequest CRD")
}

/// A CSR for `dns` (plus 10.0.0.7), without usage extensions: the issuer takes those from the spec.
fn csr_pem(dns: &str) -> String {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(vec![dns.to_string(), "10.0.0.7".to_string()]).unwrap();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, dns);
    p.serialize_request(&key).unwrap().pem().unwrap()
}

fn request(name: &str, issuer: &str, spec_extra: Value) -> Value {
    let mut spec = json!({
        "request": B64.encode(csr_pem(&format!("{name}.example.com"))),
        "issuerRef": {"name": issuer, "kind": "Issuer", "group": "cert-manager.io"},
    });
    if let (Some(s), Some(extra)) = (spec.as_object_mut(), spec_extra.as_object()) {
        for (k, v) in extra {
            s.insert(k.clone(), v.clone());
        }
    }
    json!({
        "apiVersion": "cert-manager.io/v1",
        "kind": "CertificateRequest",
        "metadata": {"name": name, "namespace": NS},
        "spec": spec,
    })
}

fn create(store: &Store, name: &str, issuer: &str, spec_extra: Value) -> Value {
    store
        .create(
            Kind::CertificateRequest,
            NS,
            request(name, issuer, spec_extra),
        )
        .expect("create CertificateRequest")
}

fn get(store: &Store, name: &str) -> Value {
    store
        .get(Kind::CertificateRequest, NS, name)
        .expect("request exists")
}

fn condition(obj: &Value, ty: &str) -> Option<Value> {
    obj.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c["type"] == ty)
        .cloned()
}

fn ready_reason(obj: &Value) -> Option<String> {
    condition(obj, "Ready").and_then(|c| c["reason"].as_str().map(str::to_string))
}

/// Waits until the request's Ready condition has `reason`.
async fn wait_ready_reason(store: &Store, name: &str, reason: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let obj = get(store, name);
        if ready_reason(&obj).as_deref() == Some(reason) {
            return obj;
        }
        assert!(
            Instant::now() < deadline,
            "{name} never reached Ready reason {reason}: {obj:#}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn field_pem(obj: &Value, field: &str) -> Option<String> {
    let b64 = obj.pointer(&format!("/status/{field}"))?.as_str()?;
    Some(String::from_utf8(B64.decode(b64).expect("base64 on the wire")).expect("PEM text"))
}

fn pems(text: &str) -> Vec<Pem> {
    Pem::iter_from_buffer(text.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("PEM blocks")
}

fn x509(pem: &Pem) -> X509Certificate<'_> {
    pem.parse_x509().expect("X.509 certificate")
}

fn assert_rfc3339(t: &Value) {
    let s = t
        .as_str()
        .unwrap_or_else(|| panic!("timestamp missing: {t}"));
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("{s} is not RFC 3339: {e}"));
    assert!(
        s.ends_with('Z') && !s.contains('.'),
        "{s}: metav1.Time format"
    );
}

/// Asserts the leaf in `obj` was signed by `ca_pem` (and not by `not_ca`, if given).
fn assert_signed_by(obj: &Value, ca_pem: &str, not_ca: Option<&str>) {
    let cert = field_pem(obj, "certificate").expect("status.certificate");
    let chain = pems(&cert);
    assert_eq!(chain.len(), 1, "a root CA issuer returns the leaf only");
    let leaf = x509(&chain[0]);
    let ca = pems(ca_pem);
    let ca = x509(&ca[0]);
    assert_eq!(leaf.issuer(), ca.subject());
    leaf.verify_signature(Some(ca.public_key()))
        .expect("leaf chains to the CA");
    if let Some(other) = not_ca {
        let other = pems(other);
        let other = x509(&other[0]);
        assert!(leaf.verify_signature(Some(other.public_key())).is_err());
    }
}

#[tokio::test]
async fn approves_and_issues_as_cert_manager_does() {
    let store = store();
    let signer = Signer::start(store.clone(), SignerConfig::new(["ca-issuer"]));
    create(
        &store,
        "web",
        "ca-issuer",
        json!({"duration": "2h30m", "usages": ["digital signature", "key encipherment", "server auth"]}),
    );
    let obj = wait_ready_reason(&store, "web", "Issued").await;

    let approved = condition(&obj, "Approved").expect("Approved condition");
    assert_eq!(approved["status"], "True");
    assert_eq!(approved["reason"], "cert-manager.io");
    assert_eq!(approved["message"], APPROVED_MESSAGE);
    assert_rfc3339(&approved["lastTransitionTime"]);
    let ready = condition(&obj, "Ready").expect("Ready condition");
    assert_eq!(ready["status"], "True");
    assert_eq!(ready["message"], ISSUED_MESSAGE);
    assert_eq!(
        ready["message"],
        "Certificate fetched from issuer successfully"
    );
    assert_rfc3339(&ready["lastTransitionTime"]);
    assert!(condition(&obj, "Denied").is_none());
    assert!(obj["status"].get("failureTime").is_none());

    assert_eq!(
        field_pem(&obj, "ca").as_deref(),
        Some(signer.ca_pem().as_str())
    );
    assert_signed_by(&obj, &signer.ca_pem(), None);

    let cert = field_pem(&obj, "certificate").unwrap();
    let blocks = pems(&cert);
    let leaf = x509(&blocks[0]);
    // Subject and SANs come from the CSR.
    assert_eq!(
        leaf.subject()
            .iter_common_name()
            .next()
            .unwrap()
            .as_str()
            .unwrap(),
        "web.example.com"
    );
    let sans = &leaf
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names;
    assert!(sans.contains(&GeneralName::DNSName("web.example.com")));
    assert!(sans.contains(&GeneralName::IPAddress(&[10, 0, 0, 7])));
    // Duration and usages come from the spec.
    let v = leaf.validity();
    assert_eq!(v.not_after.timestamp() - v.not_before.timestamp(), 9000);
    let ku = leaf.key_usage().unwrap().unwrap().value;
    assert!(ku.digital_signature() && ku.key_encipherment() && !ku.key_cert_sign());
    let eku = leaf.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && !eku.client_auth);
    assert!(!leaf.basic_constraints().unwrap().unwrap().value.ca);
    assert_eq!(signer.signed(), 1);
}

#[tokio::test]
async fn defaults_are_ninety_days_and_ca_requests_get_cert_sign() {
    let store = store();
    let _signer = Signer::start(store.clone(), SignerConfig::new(["ca-issuer"]));
    create(&store, "plain", "ca-issuer", json!({}));
    create(
        &store,
        "sub-ca",
        "ca-issuer",
        json!({"isCA": true, "duration": "24h"}),
    );

    let obj = wait_ready_reason(&store, "plain", "Issued").await;
    let cert = field_pem(&obj, "certificate").unwrap();
    let blocks = pems(&cert);
    let leaf = x509(&blocks[0]);
    let v = leaf.validity();
    assert_eq!(
        v.not_after.timestamp() - v.not_before.timestamp(),
        90 * 86400
    );
    let ku = leaf.key_usage().unwrap().unwrap().value;
    assert!(ku.digital_signature() && ku.key_encipherment() && !ku.key_cert_sign());
    assert!(leaf.extended_key_usage().unwrap().is_none());

    let obj = wait_ready_reason(&store, "sub-ca", "Issued").await;
    let cert = field_pem(&obj, "certificate").unwrap();
    let blocks = pems(&cert);
    let leaf = x509(&blocks[0]);
    assert!(leaf.basic_constraints().unwrap().unwrap().value.ca);
    assert!(leaf.key_usage().unwrap().unwrap().value.key_cert_sign());
}

#[tokio::test]
async fn denial_marks_ready_false_denied_with_failure_time() {
    let store = store();
    let signer = Signer::start(store.clone(), SignerConfig::new(["ca-issuer"]));
    signer.set_policy(|cr: &Value| {
        if cr["metadata"]["name"] == "bad" {
            Approval::deny("policy.cert-manager.io", "No policy approved this request")
        } else {
            Approval::Approve
        }
    });
    create(&store, "bad", "ca-issuer", json!({}));
    create(&store, "good", "ca-issuer", json!({}));
    let obj = wait_ready_reason(&store, "bad", "Denied").await;
    let denied = condition(&obj, "Denied").expect("Denied condition");
    assert_eq!(denied["status"], "True");
    assert_eq!(denied["reason"], "policy.cert-manager.io");
    assert_eq!(denied["message"], "No policy approved this request");
    assert!(condition(&obj, "Approved").is_none());
    let ready = condition(&obj, "Ready").unwrap();
    assert_eq!(ready["status"], "False");
    assert_eq!(ready["message"], DENIED_MESSAGE);
    assert_rfc3339(&obj["status"]["failureTime"]);
    assert!(obj["status"].get("certificate").is_none());

    wait_ready_reason(&store, "good", "Issued").await;
    assert_eq!(signer.signed(), 1);
}

#[tokio::test]
async fn signing_failure_is_final() {
    let store = store();
    let cfg = SignerConfig {
        fail_signing: true,
        ..SignerConfig::new(["ca-issuer"])
    };
    let signer = Signer::start(store.clone(), cfg);
    create(&store, "doomed", "ca-issuer", json!({}));
    let obj = wait_ready_reason(&store, "doomed", "Failed").await;
    let ready = condition(&obj, "Ready").unwrap();
    assert_eq!(ready["status"], "False");
    assert!(
        ready["message"]
            .as_str()
            .unwrap()
            .starts_with("Error signing certificate: "),
        "{ready}"
    );
    assert_rfc3339(&obj["status"]["failureTime"]);
    assert!(obj["status"].get("certificate").is_none());

    // Healing the signer does not revive a failed request, even when it is touched again.
    signer.set_fail_signing(false);
    store
        .update_status(Kind::CertificateRequest, NS, "doomed", |o| {
            o["status"]["conditions"].as_array_mut().unwrap().push(
                json!({"type": "Touched", "status": "True", "reason": "Test", "message": "poke"}),
            );
        })
        .expect("touch");
    create(&store, "after", "ca-issuer", json!({}));
    wait_ready_reason(&store, "after", "Issued").await;
    let obj = get(&store, "doomed");
    assert_eq!(ready_reason(&obj).as_deref(), Some("Failed"));
    assert!(obj["status"].get("certificate").is_none());
    assert_eq!(signer.signed(), 1);
}

#[tokio::test]
async fn slow_signer_shows_pending_first() {
    let store = store();
    let delay = Duration::from_millis(600);
    let cfg = SignerConfig {
        delay,
        ..SignerConfig::new(["ca-issuer"])
    };
    let signer = Signer::start(store.clone(), cfg);
    let started = Instant::now();
    create(&store, "slow", "ca-issuer", json!({}));
    let obj = wait_ready_reason(&store, "slow", "Pending").await;
    let ready = condition(&obj, "Ready").unwrap();
    assert_eq!(ready["status"], "False");
    assert_eq!(ready["message"], PENDING_MESSAGE);
    assert_eq!(condition(&obj, "Approved").unwrap()["status"], "True");
    assert!(obj["status"].get("certificate").is_none());

    let obj = wait_ready_reason(&store, "slow", "Issued").await;
    assert!(
        started.elapsed() >= delay,
        "issued after {:?}",
        started.elapsed()
    );
    assert!(obj["status"].get("certificate").is_some());
    assert_eq!(signer.signed(), 1);

    // Back to an instant signer.
    signer.set_delay(Duration::ZERO);
    create(&store, "fast", "ca-issuer", json!({}));
    wait_ready_reason(&store, "fast", "Issued").await;
    assert_eq!(signer.signed(), 2);
}

#[tokio::test]
async fn rotated_ca_signs_later_requests() {
    let store = store();
    let signer = Signer::start(store.clone(), SignerConfig::new(["ca-issuer"]));
    create(&store, "before", "ca-issuer", json!({}));
    let before = wait_ready_reason(&store, "before", "Issued").await;
    let old_ca = signer.ca_pem();

    signer.rotate_ca();
    let new_ca = signer.ca_pem();
    assert_ne!(old_ca, new_ca);
    create(&store, "after", "ca-issuer", json!({}));
    let after = wait_ready_reason(&store, "after", "Issued").await;

    assert_eq!(field_pem(&after, "ca").as_deref(), Some(new_ca.as_str()));
    assert_signed_by(&after, &new_ca, Some(&old_ca));
    // The earlier request keeps what it was issued.
    assert_eq!(field_pem(&before, "ca").as_deref(), Some(old_ca.as_str()));
    assert_eq!(get(&store, "before"), before);
    assert_signed_by(&before, &old_ca, Some(&new_ca));
}

#[tokio::test]
async fn omit_ca_leaves_status_ca_unset() {
    let store = store();
    let cfg = SignerConfig {
        omit_ca: true,
        ..SignerConfig::new(["ca-issuer"])
    };
    let signer = Signer::start(store.clone(), cfg);
    create(&store, "acme-like", "ca-issuer", json!({}));
    let obj = wait_ready_reason(&store, "acme-like", "Issued").await;
    assert!(obj["status"].get("ca").is_none(), "{obj:#}");
    assert_signed_by(&obj, &signer.ca_pem(), None);
}

#[tokio::test]
async fn unknown_issuer_stays_pending() {
    let store = store();
    let signer = Signer::start(store.clone(), SignerConfig::new(["ca-issuer"]));
    create(&store, "lost", "no-such-issuer", json!({}));
    let obj = wait_ready_reason(&store, "lost", "Pending").await;
    let ready = condition(&obj, "Ready").unwrap();
    assert_eq!(
        ready["message"],
        "Referenced \"Issuer\" not found: issuers.cert-manager.io \"no-such-issuer\" not found"
    );
    assert_eq!(condition(&obj, "Approved").unwrap()["status"], "True");
    assert!(obj["status"].get("failureTime").is_none());
    // And it is not rewritten over and over: the resourceVersion settles.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(get(&store, "lost"), obj);
    assert_eq!(signer.signed(), 0);
}

#[tokio::test]
async fn external_issuers_are_left_to_their_controllers() {
    let store = store();
    let _signer = Signer::start(store.clone(), SignerConfig::new(["ca-issuer"]));
    let mut req = request("ext", "ca-issuer", json!({}));
    req["spec"]["issuerRef"]["group"] = json!("issuer.example.com");
    req["spec"]["issuerRef"]["kind"] = json!("ExampleIssuer");
    store.create(Kind::CertificateRequest, NS, req).unwrap();
    create(&store, "marker", "ca-issuer", json!({}));
    wait_ready_reason(&store, "marker", "Issued").await;
    let obj = get(&store, "ext");
    assert!(obj["status"].get("conditions").is_none(), "{obj:#}");
}

#[tokio::test]
async fn existing_requests_are_processed_at_start_and_final_ones_left_alone() {
    let store = store();
    let now = "2026-01-01T00:00:00Z";
    let set = |name: &str, conds: Value| {
        store
            .update_status(Kind::CertificateRequest, NS, name, |o| {
                o["status"] = json!({"conditions": conds});
            })
            .unwrap()
    };
    create(&store, "waiting", "ca-issuer", json!({}));
    create(&store, "issued", "ca-issuer", json!({}));
    create(&store, "failed", "ca-issuer", json!({}));
    create(&store, "invalid", "ca-issuer", json!({}));
    let approved = json!({"type": "Approved", "status": "True", "reason": "cert-manager.io", "message": APPROVED_MESSAGE, "lastTransitionTime": now});
    let issued = set(
        "issued",
        json!([approved, {"type": "Ready", "status": "True", "reason": "Issued", "message": "elsewhere", "lastTransitionTime": now}]),
    );
    let failed = set(
        "failed",
        json!([approved, {"type": "Ready", "status": "False", "reason": "Failed", "message": "boom", "lastTransitionTime": now}]),
    );
    let invalid = set(
        "invalid",
        json!([{"type": "InvalidRequest", "status": "True", "reason": "BadCSR", "message": "nope", "lastTransitionTime": now}]),
    );

    let signer = Signer::start(store.clone(), SignerConfig::new(["ca-issuer"]));
    wait_ready_reason(&store, "waiting", "Issued").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(get(&store, "issued"), issued);
    assert_eq!(get(&store, "failed"), failed);
    assert_eq!(get(&store, "invalid"), invalid);
    assert_eq!(signer.signed(), 1);
}

#[tokio::test]
async fn many_requests_all_get_issued() {
    let store = store();
    let signer = Signer::start(store.clone(), SignerConfig::new(["ca-issuer"]));
    let names: Vec<String> = (0..40).map(|i| format!("bulk-{i}")).collect();
    for n in &names {
        create(&store, n, "ca-issuer", json!({}));
    }
    for n in &names {
        wait_ready_reason(&store, n, "Issued").await;
    }
    assert_eq!(signer.signed(), names.len());
}

#[tokio::test]
async fn dropping_the_signer_stops_it() {
    let store = store();
    let signer = Signer::start(store.clone(), SignerConfig::new(["ca-issuer"]));
    drop(signer);
    tokio::task::yield_now().await;
    create(&store, "orphan", "ca-issuer", json!({}));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(get(&store, "orphan")["status"].get("conditions").is_none());
}

#[tokio::test]
async fn conflicting_writes_are_retried() {
    let server = certvol_e2e::apiserver::ApiServer::start()
        .await
        .expect("start API server");
    let store = server.store();
    let signer = Signer::start(store.clone(), SignerConfig::new(["ca-issuer"]));
    // The approval write and its first retry get 409 Conflict, as under contention.
    server.faults().conflict_next(2);
    create(&store, "contended", "ca-issuer", json!({}));
    let obj = wait_ready_reason(&store, "contended", "Issued").await;
    assert_eq!(condition(&obj, "Approved").unwrap()["status"], "True");
    assert_eq!(signer.signed(), 1);
}

#[tokio::test]
async fn csr_with_uncommon_extended_usage_is_issued() {
    let store = store();
    let signer = Signer::start(store.clone(), SignerConfig::new(["ca-issuer"]));
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(vec!["vpn.example.com".to_string()]).unwrap();
    p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::Other(vec![
        1, 3, 6, 1, 5, 5, 7, 3, 6,
    ])];
    let csr = p.serialize_request(&key).unwrap().pem().unwrap();
    let mut req = request(
        "vpn",
        "ca-issuer",
        json!({"usages": ["digital signature", "key encipherment", "ipsec tunnel"]}),
    );
    req["spec"]["request"] = json!(B64.encode(csr));
    store.create(Kind::CertificateRequest, NS, req).unwrap();
    let obj = wait_ready_reason(&store, "vpn", "Issued").await;
    assert_signed_by(&obj, &signer.ca_pem(), None);
    let cert = field_pem(&obj, "certificate").unwrap();
    let blocks = pems(&cert);
    let leaf = x509(&blocks[0]);
    let eku = leaf.extended_key_usage().unwrap().unwrap().value;
    assert_eq!(eku.other.len(), 1);
    assert_eq!(eku.other[0].to_id_string(), "1.3.6.1.5.5.7.3.6");
}

/// A burst of unrelated changes overflows the signer's event buffer (the store keeps 4096); the
/// request whose ADDED event was lost is still found by the relist that follows the lag.
#[tokio::test]
async fn lagging_behind_the_watch_relists() {
    let store = store();
    let signer = Signer::start(store.clone(), SignerConfig::new(["ca-issuer"]));
    let mut noise = request("noise", "other", json!({}));
    noise["spec"]["issuerRef"]["group"] = json!("issuer.example.com");
    store.create(Kind::CertificateRequest, NS, noise).unwrap();
    // Let the signer subscribe and list before the burst (the test runtime is single-threaded,
    // so the signer runs only while this test awaits).
    tokio::time::sleep(Duration::from_millis(50)).await;

    create(&store, "buried", "ca-issuer", json!({}));
    for i in 0..4200 {
        store
            .update_status(Kind::CertificateRequest, NS, "noise", |o| {
                o["status"] = json!({"conditions": [
                    {"type": "Noise", "status": "True", "reason": "Burst", "message": i.to_string()}
                ]});
            })
            .unwrap();
    }
    wait_ready_reason(&store, "buried", "Issued").await;
    assert_eq!(signer.signed(), 1);
}
