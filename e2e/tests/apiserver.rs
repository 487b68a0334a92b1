//! The e2e Kubernetes API stand-in, driven by a real kube-rs client the way certvol drives a
//! cluster: through a kubeconfig with a bearer token, typed APIs, watches and the watcher.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use certvol_e2e::apiserver::{ApiServer, EventType, Kind};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch,
    PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::watcher;
use kube::{Client, Config};
use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose};
use serde_json::{Value, json};

const NS: &str = "team-a";
const TOKEN: &str = "pod-token-1";

fn ar() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("cert-manager.io", "v1", "CertificateRequest"),
        "certificaterequests",
    )
}

struct Harness {
    server: ApiServer,
    client: Client,
    _dir: tempfile::TempDir,
}

impl Harness {
    fn crs(&self) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), NS, &ar())
    }
    fn all_crs(&self) -> Api<DynamicObject> {
        Api::all_with(self.client.clone(), &ar())
    }
}

/// A server plus a kube client configured from the kubeconfig the server writes.
async fn harness() -> Harness {
    let server = ApiServer::start().await.expect("start API server");
    server.add_token(
        TOKEN,
        "system:serviceaccount:team-a:web",
        &["system:serviceaccounts", "system:authenticated"],
        "sa-uid-web",
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("kubeconfig");
    server
        .write_kubeconfig(&path, TOKEN)
        .expect("write kubeconfig");
    let kc = Kubeconfig::read_from(&path).expect("read kubeconfig");
    let cfg = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("config");
    let client = Client::try_from(cfg).expect("client");
    Harness {
        server,
        client,
        _dir: dir,
    }
}

fn csr_pem(params: &CertificateParams) -> String {
    let key = KeyPair::generate().expect("key");
    params
        .serialize_request(&key)
        .expect("csr")
        .pem()
        .expect("pem")
}

fn plain_csr() -> String {
    // SANs only: no KeyUsage/EKU/BasicConstraints extensions.
    let params = CertificateParams::new(vec!["web.team-a.svc".to_string()]).expect("params");
    B64.encode(csr_pem(&params))
}

fn cr(name: &str, spec: Value) -> DynamicObject {
    DynamicObject::new(name, &ar()).data(json!({ "spec": spec }))
}

fn basic_spec() -> Value {
    json!({"request": plain_csr(), "issuerRef": {"name": "ca-issuer", "kind": "ClusterIssuer", "group": "cert-manager.io"}})
}

/// The Status a failed call carried.
fn status_of(e: kube::Error) -> kube::core::Status {
    match e {
        kube::Error::Api(s) => *s,
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn fields(s: &kube::core::Status) -> Vec<String> {
    s.details
        .as_ref()
        .map(|d| d.causes.iter().map(|c| c.field.clone()).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn create_get_list_delete_with_server_metadata_and_errors() {
    let h = harness().await;
    let api = h.crs();
    let created = api
        .create(&PostParams::default(), &cr("web-1", basic_spec()))
        .await
        .expect("create");
    let meta = &created.metadata;
    assert!(meta.uid.as_deref().is_some_and(|u| u.len() == 36));
    assert!(meta.creation_timestamp.is_some());
    assert!(meta.resource_version.is_some());
    assert_eq!(meta.generation, Some(1));
    assert_eq!(meta.namespace.as_deref(), Some(NS));
    // The webhook records who asked, from the bearer token, not from the body.
    assert_eq!(
        created.data["spec"]["username"],
        "system:serviceaccount:team-a:web"
    );
    assert_eq!(created.data["spec"]["uid"], "sa-uid-web");
    assert_eq!(
        created.data["spec"]["groups"],
        json!(["system:serviceaccounts", "system:authenticated"])
    );

    let got = api.get("web-1").await.expect("get");
    assert_eq!(got.metadata.uid, meta.uid);

    let dup = api
        .create(&PostParams::default(), &cr("web-1", basic_spec()))
        .await
        .expect_err("duplicate");
    let st = status_of(dup);
    assert_eq!((st.code, st.reason.as_str()), (409, "AlreadyExists"));

    let missing = status_of(api.get("nope").await.expect_err("missing"));
    assert_eq!((missing.code, missing.reason.as_str()), (404, "NotFound"));

    let list = api.list(&ListParams::default()).await.expect("list");
    assert_eq!(list.items.len(), 1);
    let list_rv: u64 = list
        .metadata
        .resource_version
        .as_deref()
        .and_then(|v| v.parse().ok())
        .expect("list resourceVersion");
    assert!(
        list_rv
            >= meta
                .resource_version
                .as_deref()
                .unwrap_or("0")
                .parse()
                .unwrap_or(0)
    );
    // Namespaces are separate; the cluster-wide list sees everything.
    let other: Api<DynamicObject> = Api::namespaced_with(h.client.clone(), "other", &ar());
    assert!(
        other
            .list(&ListParams::default())
            .await
            .expect("list")
            .items
            .is_empty()
    );
    other
        .create(&PostParams::default(), &cr("web-1", basic_spec()))
        .await
        .expect("same name in another namespace");
    assert_eq!(
        h.all_crs()
            .list(&ListParams::default())
            .await
            .expect("all")
            .items
            .len(),
        2
    );

    let mut generated = cr("", basic_spec());
    generated.metadata.name = None;
    generated.metadata.generate_name = Some("web-".into());
    let generated = api
        .create(&PostParams::default(), &generated)
        .await
        .expect("generateName");
    let gen_name = generated.metadata.name.clone().unwrap_or_default();
    assert!(
        gen_name.starts_with("web-") && gen_name.len() == 9,
        "{gen_name}"
    );
    api.delete(&gen_name, &DeleteParams::default())
        .await
        .expect("delete generated");

    api.delete("web-1", &DeleteParams::default())
        .await
        .expect("delete");
    let gone = status_of(api.get("web-1").await.expect_err("deleted"));
    assert_eq!(gone.code, 404);
    let again = status_of(
        api.delete("web-1", &DeleteParams::default())
            .await
            .expect_err("again"),
    );
    assert_eq!(again.code, 404);

    assert_eq!(h.server.count("create", Kind::CertificateRequest), 4);
    assert_eq!(h.server.count("get", Kind::CertificateRequest), 3);
    assert_eq!(h.server.count("delete", Kind::CertificateRequest), 3);
    assert!(
        h.server
            .requests()
            .iter()
            .all(|r| r.token.as_deref() == Some(TOKEN))
    );
}

#[tokio::test]
async fn label_and_field_selectors_and_pagination() {
    let h = harness().await;
    let api = h.crs();
    for (name, app, tier) in [
        ("a", "web", "fe"),
        ("b", "web", "be"),
        ("c", "db", "be"),
        ("d", "", ""),
    ] {
        let mut obj = cr(name, basic_spec());
        if !app.is_empty() {
            obj.metadata.labels = Some(
                [
                    ("app".to_string(), app.to_string()),
                    ("tier".to_string(), tier.to_string()),
                ]
                .into(),
            );
        }
        api.create(&PostParams::default(), &obj)
            .await
            .expect("create");
    }
    let names = |sel: &'static str| {
        let api = api.clone();
        async move {
            let mut n: Vec<String> = api
                .list(&ListParams::default().labels(sel))
                .await
                .expect("list")
                .items
                .into_iter()
                .filter_map(|o| o.metadata.name)
                .collect();
            n.sort();
            n.join(",")
        }
    };
    assert_eq!(names("app=web").await, "a,b");
    assert_eq!(names("app==web,tier=be").await, "b");
    assert_eq!(names("app!=web").await, "c,d");
    assert_eq!(names("tier in (fe, be)").await, "a,b,c");
    assert_eq!(names("app notin (web)").await, "c,d");
    assert_eq!(names("app").await, "a,b,c");
    assert_eq!(names("!app").await, "d");
    let bad = status_of(
        api.list(&ListParams::default().labels("app in (web"))
            .await
            .expect_err("bad selector"),
    );
    assert_eq!(bad.code, 400);

    let by_name = api
        .list(&ListParams::default().fields("metadata.name=c"))
        .await
        .expect("field selector");
    assert_eq!(by_name.items.len(), 1);
    assert_eq!(
        api.list(&ListParams::default().fields("spec.issuerRef.name=ca-issuer"))
            .await
            .expect("selectable field")
            .items
            .len(),
        4
    );
    let unsupported = status_of(
        api.list(&ListParams::default().fields("spec.duration=1h"))
            .await
            .expect_err("not selectable"),
    );
    assert_eq!(unsupported.code, 400);

    let page = api
        .list(&ListParams::default().limit(3))
        .await
        .expect("page 1");
    assert_eq!(page.items.len(), 3);
    let token = page.metadata.continue_.clone().expect("continue token");
    let rest = api
        .list(&ListParams::default().limit(3).continue_token(&token))
        .await
        .expect("page 2");
    assert_eq!(rest.items.len(), 1);
    assert!(rest.metadata.continue_.unwrap_or_default().is_empty());
}

#[tokio::test]
async fn schema_validation_rejects_with_field_paths_and_prunes_unknown_fields() {
    let h = harness().await;
    let api = h.crs();

    let mut spec = basic_spec();
    spec["notAField"] = json!("dropped");
    spec["issuerRef"]["extra"] = json!(1);
    let mut obj = cr("pruned", spec);
    obj.data["status"] = json!({"conditions": [{"type": "Ready", "status": "True"}]});
    obj.data["topLevelJunk"] = json!({"x": 1});
    let created = api
        .create(&PostParams::default(), &obj)
        .await
        .expect("create");
    assert!(created.data["spec"].get("notAField").is_none());
    assert!(created.data["spec"]["issuerRef"].get("extra").is_none());
    assert!(created.data.get("topLevelJunk").is_none());
    // The status subresource makes create ignore the status a client sends.
    assert!(created.data.get("status").is_none());
    assert!(
        h.server
            .store()
            .get(Kind::CertificateRequest, NS, "pruned")
            .is_some_and(|o| o["spec"].get("notAField").is_none())
    );

    let mut spec = basic_spec();
    spec["isCA"] = json!("yes");
    spec["usages"] = json!(["digital signature", "flying"]);
    spec["duration"] = json!(5);
    let st = status_of(
        api.create(&PostParams::default(), &cr("bad-types", spec))
            .await
            .expect_err("types"),
    );
    assert_eq!((st.code, st.reason.as_str()), (422, "Invalid"));
    let f = fields(&st);
    for want in ["spec.isCA", "spec.usages[1]", "spec.duration"] {
        assert!(
            f.contains(&want.to_string()),
            "{want} missing from {f:?}: {}",
            st.message
        );
    }
    assert!(
        st.message.contains("Unsupported value: \"flying\""),
        "{}",
        st.message
    );

    let st = status_of(
        api.create(
            &PostParams::default(),
            &cr("no-issuer", json!({"request": plain_csr()})),
        )
        .await
        .expect_err("required"),
    );
    assert_eq!(st.code, 422);
    assert_eq!(fields(&st), vec!["spec.issuerRef"]);

    let st = status_of(
        api.create(
            &PostParams::default(),
            &cr(
                "not-b64",
                json!({"request": "%%%", "issuerRef": {"name": "x"}}),
            ),
        )
        .await
        .expect_err("byte format"),
    );
    assert_eq!(fields(&st), vec!["spec.request"]);

    let st = status_of(
        api.create(&PostParams::default(), &cr("Bad_Name", basic_spec()))
            .await
            .expect_err("name"),
    );
    assert_eq!(fields(&st), vec!["metadata.name"]);
    let mut long_label = cr("long-label", basic_spec());
    long_label.metadata.labels = Some([("pod-uid".to_string(), "x".repeat(64))].into());
    let st = status_of(
        api.create(&PostParams::default(), &long_label)
            .await
            .expect_err("label"),
    );
    assert_eq!(fields(&st), vec!["metadata.labels[pod-uid]"]);
    assert!(api.get_opt("long-label").await.expect("get").is_none());
}

#[tokio::test]
async fn webhook_checks_the_csr_and_its_usages() {
    let h = harness().await;
    let api = h.crs();
    let reject = |name: &'static str, spec: Value| {
        let api = api.clone();
        async move {
            let st = status_of(
                api.create(&PostParams::default(), &cr(name, spec))
                    .await
                    .expect_err(name),
            );
            assert_eq!(st.code, 422, "{name}: {}", st.message);
            st.message
        }
    };

    let not_a_csr = B64
        .encode("-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n");
    let msg = reject(
        "garbage",
        json!({"request": not_a_csr, "issuerRef": {"name": "ca"}}),
    )
    .await;
    assert!(msg.contains("spec.request"), "{msg}");
    let msg = reject(
        "empty-issuer",
        json!({"request": plain_csr(), "issuerRef": {"name": ""}}),
    )
    .await;
    assert!(msg.contains("spec.issuerRef.name: Required value"), "{msg}");

    // A CSR whose signature does not verify: flip a byte inside the signature.
    let params = CertificateParams::new(vec!["x.example".to_string()]).expect("params");
    let key = KeyPair::generate().expect("key");
    let mut der = params.serialize_request(&key).expect("csr").der().to_vec();
    let last = der.len() - 3;
    der[last] ^= 0x55;
    let pem = format!(
        "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
        B64.encode(&der)
    );
    let msg = reject(
        "bad-sig",
        json!({"request": B64.encode(pem), "issuerRef": {"name": "ca"}}),
    )
    .await;
    assert!(msg.contains("signature"), "{msg}");

    // KeyUsage in the CSR must equal spec.usages (default: digital signature + key encipherment).
    let mut params = CertificateParams::new(vec!["x.example".to_string()]).expect("params");
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let ds_only = B64.encode(csr_pem(&params));
    let msg = reject(
        "ku-default",
        json!({"request": ds_only, "issuerRef": {"name": "ca"}}),
    )
    .await;
    assert!(msg.contains("key usages do not match"), "{msg}");
    api.create(
        &PostParams::default(),
        &cr("ku-match", json!({"request": ds_only, "issuerRef": {"name": "ca"}, "usages": ["digital signature"]})),
    )
    .await
    .expect("matching key usage");

    let mut params = CertificateParams::new(vec!["x.example".to_string()]).expect("params");
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let with_eku = B64.encode(csr_pem(&params));
    let msg = reject(
        "eku-mismatch",
        json!({"request": with_eku, "issuerRef": {"name": "ca"}, "usages": ["digital signature", "key encipherment", "client auth"]}),
    )
    .await;
    assert!(msg.contains("extended key usages do not match"), "{msg}");
    api.create(
        &PostParams::default(),
        &cr("eku-match", json!({"request": with_eku, "issuerRef": {"name": "ca"}, "usages": ["key encipherment", "digital signature", "server auth"]})),
    )
    .await
    .expect("matching usages in any order");

    let mut params = CertificateParams::new(vec!["x.example".to_string()]).expect("params");
    params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_csr = B64.encode(csr_pem(&params));
    let msg = reject(
        "ca-mismatch",
        json!({"request": ca_csr, "issuerRef": {"name": "ca"}}),
    )
    .await;
    assert!(msg.contains("isCA"), "{msg}");
}

#[tokio::test]
async fn status_updates_follow_subresource_and_immutability_rules() {
    let h = harness().await;
    let api = h.crs();
    let store = h.server.store();
    let created = api
        .create(&PostParams::default(), &cr("s", basic_spec()))
        .await
        .expect("create");
    let mut events = store.subscribe();

    // An approver (in-process, as the signer runs) approves.
    let approved = store
        .update_status(Kind::CertificateRequest, NS, "s", |o| {
            o["status"] = json!({"conditions": [{"type": "Approved", "status": "True", "reason": "cert-manager.io", "message": "ok", "lastTransitionTime": "2026-11-23T10:00:00Z"}]});
            o["spec"]["duration"] = json!("1h"); // ignored: only status is taken
        })
        .expect("approve");
    assert!(approved["spec"].get("duration").is_none());
    let ev = events.recv().await.expect("event");
    assert_eq!(
        (ev.kind, ev.event_type),
        (Kind::CertificateRequest, EventType::Modified)
    );
    assert_ne!(
        approved["metadata"]["resourceVersion"].as_str(),
        created.metadata.resource_version.as_deref()
    );

    // The condition cannot be flipped afterwards, in-process or over HTTP.
    let err = store
        .update_status(Kind::CertificateRequest, NS, "s", |o| {
            o["status"]["conditions"][0]["type"] = json!("Denied");
        })
        .expect_err("flip");
    assert_eq!(err.status_code(), 422);
    let patch =
        json!({"status": {"conditions": [{"type": "Approved", "status": "False", "reason": "x"}]}});
    let st = status_of(
        api.patch_status("s", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect_err("flip over HTTP"),
    );
    assert_eq!(st.code, 422);

    // Schema applies to status: bad enum and bad date-time.
    let err = store
        .update_status(Kind::CertificateRequest, NS, "s", |o| {
            o["status"]["failureTime"] = json!("yesterday");
        })
        .expect_err("date-time");
    assert!(err.to_string().contains("status.failureTime"), "{err}");
    let dup = store
        .update_status(Kind::CertificateRequest, NS, "s", |o| {
            let c = o["status"]["conditions"][0].clone();
            o["status"]["conditions"]
                .as_array_mut()
                .expect("array")
                .push(c);
        })
        .expect_err("duplicate map key");
    assert!(dup.to_string().contains("Duplicate value"), "{dup}");

    // Issued, through the status subresource over HTTP (merge patch keeps Approved? no: a merge
    // patch replaces lists, so the controller sends the whole list).
    let cert = B64.encode("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n");
    let patch = json!({"status": {"certificate": cert, "conditions": [
        approved["status"]["conditions"][0],
        {"type": "Ready", "status": "True", "reason": "Issued", "lastTransitionTime": "2026-11-23T10:00:01Z"}
    ]}});
    let issued = api
        .patch_status("s", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("issue");
    assert_eq!(issued.data["status"]["certificate"], json!(cert));

    // Spec is immutable; a PUT of the main resource cannot change it or the status.
    let mut changed = issued.clone();
    changed.data["spec"]["duration"] = json!("2h");
    let st = status_of(
        api.replace("s", &PostParams::default(), &changed)
            .await
            .expect_err("spec change"),
    );
    assert_eq!(st.code, 422);
    assert_eq!(fields(&st), vec!["spec"]);
    let mut labelled = issued.clone();
    labelled.metadata.labels = Some([("seen".to_string(), "yes".to_string())].into());
    labelled.data["status"] = json!({});
    let updated = api
        .replace("s", &PostParams::default(), &labelled)
        .await
        .expect("metadata change");
    assert_eq!(
        updated.data["status"]["certificate"],
        json!(cert),
        "status survives a main PUT"
    );

    // Optimistic concurrency: the stale object is rejected.
    let st = status_of(
        api.replace("s", &PostParams::default(), &labelled)
            .await
            .expect_err("stale"),
    );
    assert_eq!((st.code, st.reason.as_str()), (409, "Conflict"));

    // Injected conflicts hit both HTTP and in-process updates, then clear.
    h.server.faults().conflict_next(2);
    let st = status_of(
        api.patch_status(
            "s",
            &PatchParams::default(),
            &Patch::Merge(&json!({"status": {}})),
        )
        .await
        .expect_err("injected"),
    );
    assert_eq!(st.code, 409);
    let err = store
        .update_status(Kind::CertificateRequest, NS, "s", |_| {})
        .expect_err("injected in-process");
    assert_eq!(err.status_code(), 409);
    store
        .update_status(Kind::CertificateRequest, NS, "s", |_| {})
        .expect("conflicts used up");
    assert_eq!(h.server.count("patch", Kind::CertificateRequest), 3);
    assert_eq!(h.server.count("update", Kind::CertificateRequest), 3);
}

async fn next_event(
    stream: &mut (impl futures::Stream<Item = kube::Result<WatchEvent<DynamicObject>>> + Unpin),
) -> WatchEvent<DynamicObject> {
    tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("event in time")
        .expect("stream open")
        .expect("event ok")
}

fn describe(ev: &WatchEvent<DynamicObject>) -> String {
    match ev {
        WatchEvent::Added(o) => format!("ADDED {}", o.metadata.name.clone().unwrap_or_default()),
        WatchEvent::Modified(o) => {
            format!("MODIFIED {}", o.metadata.name.clone().unwrap_or_default())
        }
        WatchEvent::Deleted(o) => {
            format!("DELETED {}", o.metadata.name.clone().unwrap_or_default())
        }
        WatchEvent::Bookmark(b) => format!("BOOKMARK {}", b.metadata.resource_version),
        WatchEvent::Error(e) => format!("ERROR {} {}", e.code, e.reason),
    }
}

#[tokio::test]
async fn watches_deliver_resume_and_expire() {
    let h = harness().await;
    let api = h.crs();
    let first = api
        .create(&PostParams::default(), &cr("w1", basic_spec()))
        .await
        .expect("create");
    let rv0 = first.metadata.resource_version.clone().expect("rv");

    let wp = WatchParams::default().timeout(10);
    let mut stream = api.watch(&wp, &rv0).await.expect("watch").boxed();
    api.create(&PostParams::default(), &cr("w2", basic_spec()))
        .await
        .expect("create");
    assert_eq!(describe(&next_event(&mut stream).await), "ADDED w2");
    h.server
        .store()
        .update_status(Kind::CertificateRequest, NS, "w2", |o| {
            o["status"] = json!({"conditions": [{"type": "Approved", "status": "True"}]});
        })
        .expect("status");
    assert_eq!(describe(&next_event(&mut stream).await), "MODIFIED w2");
    api.delete("w1", &DeleteParams::default())
        .await
        .expect("delete");
    let deleted = next_event(&mut stream).await;
    assert_eq!(describe(&deleted), "DELETED w1");

    // Resuming from the first revision replays everything after it.
    let replay: Vec<String> = api
        .watch(&WatchParams::default().timeout(1), &rv0)
        .await
        .expect("resume")
        .map_ok(|e| describe(&e))
        .try_filter(|e| futures::future::ready(!e.starts_with("BOOKMARK")))
        .try_collect()
        .await
        .expect("replay");
    assert_eq!(replay, vec!["ADDED w2", "MODIFIED w2", "DELETED w1"]);

    // A label-selected watch sees only matching objects.
    let mut labelled = cr("w3", basic_spec());
    labelled.metadata.labels = Some([("app".to_string(), "web".to_string())].into());
    let mut selected = api
        .watch(&WatchParams::default().labels("app=web").timeout(10), &rv0)
        .await
        .expect("selected watch")
        .boxed();
    api.create(&PostParams::default(), &labelled)
        .await
        .expect("create");
    assert_eq!(describe(&next_event(&mut selected).await), "ADDED w3");

    // timeoutSeconds ends the stream (with a bookmark, as bookmarks were allowed).
    let short: Vec<String> = tokio::time::timeout(
        Duration::from_secs(10),
        api.watch(&WatchParams::default().timeout(1), &rv0)
            .await
            .expect("watch")
            .map_ok(|e| describe(&e))
            .try_collect::<Vec<_>>(),
    )
    .await
    .expect("stream ends")
    .expect("events");
    assert!(
        short.last().is_some_and(|l| l.starts_with("BOOKMARK")),
        "{short:?}"
    );

    // After compaction the old revision is gone: one ERROR 410 Expired, then the stream ends.
    h.server.faults().expire_history();
    let expired: Vec<WatchEvent<DynamicObject>> = api
        .watch(&WatchParams::default().timeout(5), &rv0)
        .await
        .expect("watch")
        .try_collect()
        .await
        .expect("events");
    assert_eq!(expired.len(), 1);
    match &expired[0] {
        WatchEvent::Error(e) => assert_eq!((e.code, e.reason.as_str()), (410, "Expired")),
        other => panic!("expected 410, got {}", describe(other)),
    }

    // drop_watches closes open streams (after what was already sent: ADDED w3).
    h.server.faults().drop_watches();
    let rest: Vec<String> = tokio::time::timeout(
        Duration::from_secs(5),
        stream.map_ok(|e| describe(&e)).try_collect::<Vec<_>>(),
    )
    .await
    .expect("closed in time")
    .expect("events");
    assert_eq!(rest, vec!["ADDED w3"]);
}

#[tokio::test]
async fn kube_runtime_watcher_relists_after_expiry_and_continues() {
    let h = harness().await;
    let api = h.all_crs();
    let ns_api = h.crs();
    ns_api
        .create(&PostParams::default(), &cr("r1", basic_spec()))
        .await
        .expect("create");
    let mut events = watcher(api, watcher::Config::default()).boxed();
    let mut next = async || {
        let ev = tokio::time::timeout(Duration::from_secs(10), events.next())
            .await
            .expect("watcher event in time")
            .expect("watcher stream open");
        match ev {
            Ok(watcher::Event::Init) => "Init".to_string(),
            Ok(watcher::Event::InitApply(o)) => {
                format!("InitApply {}", o.metadata.name.unwrap_or_default())
            }
            Ok(watcher::Event::InitDone) => "InitDone".to_string(),
            Ok(watcher::Event::Apply(o)) => {
                format!("Apply {}", o.metadata.name.unwrap_or_default())
            }
            Ok(watcher::Event::Delete(o)) => {
                format!("Delete {}", o.metadata.name.unwrap_or_default())
            }
            Err(e) => format!("Err {e}"),
        }
    };
    assert_eq!(next().await, "Init");
    assert_eq!(next().await, "InitApply r1");
    assert_eq!(next().await, "InitDone");
    ns_api
        .create(&PostParams::default(), &cr("r2", basic_spec()))
        .await
        .expect("create");
    assert_eq!(next().await, "Apply r2");

    // Compaction plus a dropped connection: the resumed watch gets 410, the watcher relists.
    h.server.faults().expire_history();
    h.server.faults().drop_watches();
    let err = next().await;
    assert!(err.starts_with("Err") && err.contains("xpired"), "{err}");
    assert_eq!(next().await, "Init");
    let mut relisted = vec![next().await, next().await];
    relisted.sort();
    assert_eq!(relisted, vec!["InitApply r1", "InitApply r2"]);
    assert_eq!(next().await, "InitDone");
    ns_api
        .create(&PostParams::default(), &cr("r3", basic_spec()))
        .await
        .expect("create");
    assert_eq!(next().await, "Apply r3");
    assert_eq!(h.server.count("list", Kind::CertificateRequest), 2);
    assert!(h.server.count("watch", Kind::CertificateRequest) >= 2);
}

#[tokio::test]
async fn deleting_a_pod_collects_its_certificate_requests() {
    let h = harness().await;
    let pods: Api<Pod> = Api::namespaced(h.client.clone(), NS);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "web-0"},
        "spec": {"containers": [{"name": "app", "image": "busybox"}]}
    }))
    .expect("pod");
    let pod = pods
        .create(&PostParams::default(), &pod)
        .await
        .expect("create pod");
    let uid = pod.metadata.uid.clone().expect("pod uid");
    let api = h.crs();
    let mut owned = cr("owned", basic_spec());
    owned.metadata.owner_references = Some(vec![
        k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
            api_version: "v1".into(),
            kind: "Pod".into(),
            name: "web-0".into(),
            uid: uid.clone(),
            ..Default::default()
        },
    ]);
    api.create(&PostParams::default(), &owned)
        .await
        .expect("owned");
    api.create(&PostParams::default(), &cr("unowned", basic_spec()))
        .await
        .expect("unowned");
    let rv = h.server.store().resource_version().to_string();
    let mut stream = api
        .watch(&WatchParams::default().timeout(10), &rv)
        .await
        .expect("watch")
        .boxed();

    assert_eq!(
        pods.get("web-0").await.expect("get pod").metadata.uid,
        Some(uid)
    );
    pods.delete("web-0", &DeleteParams::default())
        .await
        .expect("delete pod");
    assert_eq!(describe(&next_event(&mut stream).await), "DELETED owned");
    assert!(api.get_opt("owned").await.expect("get").is_none());
    assert!(api.get_opt("unowned").await.expect("get").is_some());
    assert_eq!(
        status_of(pods.get("web-0").await.expect_err("pod gone")).code,
        404
    );
}

fn owned_by(name: &str, pod: &Pod) -> DynamicObject {
    let mut obj = cr(name, basic_spec());
    obj.metadata.owner_references = Some(vec![
        k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
            api_version: "v1".into(),
            kind: "Pod".into(),
            name: pod.metadata.name.clone().unwrap_or_default(),
            uid: pod.metadata.uid.clone().unwrap_or_default(),
            ..Default::default()
        },
    ]);
    obj
}

#[tokio::test]
async fn finalizers_orphaning_and_delete_preconditions() {
    let h = harness().await;
    let pods: Api<Pod> = Api::namespaced(h.client.clone(), NS);
    let api = h.crs();
    let new_pod = |name: &str| {
        serde_json::from_value::<Pod>(json!({
            "metadata": {"name": name},
            "spec": {"containers": [{"name": "app", "image": "busybox"}]}
        }))
        .expect("pod")
    };

    // A finalizer holds a collected dependent in "being deleted" until it is removed.
    let pod = pods
        .create(&PostParams::default(), &new_pod("p1"))
        .await
        .expect("pod");
    let mut held = owned_by("held", &pod);
    held.metadata.finalizers = Some(vec!["example.com/hold".into()]);
    api.create(&PostParams::default(), &held)
        .await
        .expect("create");
    pods.delete("p1", &DeleteParams::default())
        .await
        .expect("delete pod");
    let marked = api.get("held").await.expect("still there");
    assert!(marked.metadata.deletion_timestamp.is_some());
    let st = status_of(
        api.patch(
            "held",
            &PatchParams::default(),
            &Patch::Merge(
                &json!({"metadata": {"finalizers": ["example.com/hold", "example.com/more"]}}),
            ),
        )
        .await
        .expect_err("no new finalizers"),
    );
    assert_eq!(st.code, 422);
    api.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(&json!({"metadata": {"finalizers": null}})),
    )
    .await
    .expect("remove finalizer");
    assert!(api.get_opt("held").await.expect("get").is_none());

    // Orphan propagation leaves dependents alone.
    let pod = pods
        .create(&PostParams::default(), &new_pod("p2"))
        .await
        .expect("pod");
    api.create(&PostParams::default(), &owned_by("orphan", &pod))
        .await
        .expect("create");
    pods.delete("p2", &DeleteParams::orphan())
        .await
        .expect("delete pod");
    assert!(api.get_opt("orphan").await.expect("get").is_some());

    // Preconditions: a stale uid is a conflict and nothing is deleted.
    let wrong = DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            uid: Some("not-the-uid".into()),
            resource_version: None,
        }),
        ..Default::default()
    };
    let st = status_of(
        api.delete("orphan", &wrong)
            .await
            .expect_err("precondition"),
    );
    assert_eq!(st.code, 409);
    assert!(api.get_opt("orphan").await.expect("get").is_some());
}

#[tokio::test]
async fn faults_fail_delay_and_are_recorded() {
    let h = harness().await;
    let api = h.crs();
    let faults = h.server.faults();
    faults.fail_next(2, 500);
    for _ in 0..2 {
        let st = status_of(
            api.list(&ListParams::default())
                .await
                .expect_err("injected"),
        );
        assert_eq!((st.code, st.reason.as_str()), (500, "InternalError"));
    }
    api.list(&ListParams::default()).await.expect("recovered");
    // kube-rs retries 429/503/504 by itself: one call, three requests.
    faults.fail_next(2, 503);
    api.list(&ListParams::default())
        .await
        .expect("retried transparently");
    let statuses: Vec<u16> = h.server.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![500, 500, 200, 503, 503, 200]);

    faults.set_latency(Duration::from_millis(300));
    let start = std::time::Instant::now();
    api.list(&ListParams::default()).await.expect("slow list");
    assert!(start.elapsed() >= Duration::from_millis(300));
    faults.set_latency(Duration::ZERO);

    // Other tokens and identities: an unknown token gets the default service account.
    let rec = h.server.requests().pop().expect("record");
    assert_eq!(
        (rec.verb.as_str(), rec.kind, rec.namespace.as_deref()),
        ("list", Some(Kind::CertificateRequest), Some(NS))
    );
    assert_eq!(rec.token.as_deref(), Some(TOKEN));
}

#[tokio::test]
async fn events_from_the_kube_recorder_and_core_v1() {
    use kube::runtime::events::{Event, EventType as EvType, Recorder, Reporter};
    let h = harness().await;
    let recorder = Recorder::new(
        h.client.clone(),
        Reporter {
            controller: "certvol".into(),
            instance: Some("node-1".into()),
        },
    );
    let reference = k8s_openapi::api::core::v1::ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        name: Some("web-0".into()),
        namespace: Some(NS.into()),
        uid: Some("pod-uid".into()),
        ..Default::default()
    };
    let ev = Event {
        type_: EvType::Warning,
        reason: "IssuanceFailed".into(),
        note: Some("request denied".into()),
        action: "Issue".into(),
        secondary: None,
    };
    recorder.publish(&ev, &reference).await.expect("publish");
    recorder
        .publish(&ev, &reference)
        .await
        .expect("publish again (series patch)");
    let events = h.server.store().list(Kind::Event, Some(NS), None);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["reason"], "IssuanceFailed");
    assert_eq!(events[0]["series"]["count"], 2);
    assert_eq!(h.server.count("create", Kind::Event), 1);
    assert_eq!(h.server.count("patch", Kind::Event), 1);

    let core: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(h.client.clone(), NS);
    let core_ev: k8s_openapi::api::core::v1::Event = serde_json::from_value(json!({
        "metadata": {"name": "web-0.1"},
        "involvedObject": {"kind": "Pod", "name": "web-0", "namespace": NS},
        "reason": "Issued", "message": "certificate issued", "type": "Normal"
    }))
    .expect("event");
    core.create(&PostParams::default(), &core_ev)
        .await
        .expect("core create");
    // Both Event APIs are views of one resource: each lists both events, converted.
    let listed = core.list(&ListParams::default()).await.expect("core list");
    let mut seen: Vec<(String, String, String)> = listed
        .items
        .iter()
        .map(|e| {
            (
                e.reason.clone().unwrap_or_default(),
                e.message.clone().unwrap_or_default(),
                e.involved_object.name.clone().unwrap_or_default(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        vec![
            (
                "IssuanceFailed".into(),
                "request denied".into(),
                "web-0".into()
            ),
            ("Issued".into(), "certificate issued".into(), "web-0".into()),
        ]
    );
    let v1: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(h.client.clone(), NS);
    let mut notes: Vec<String> = v1
        .list(&ListParams::default())
        .await
        .expect("events.k8s.io list")
        .items
        .into_iter()
        .filter_map(|e| e.note)
        .collect();
    notes.sort();
    assert_eq!(notes, vec!["certificate issued", "request denied"]);
    assert_eq!(h.server.store().list(Kind::Event, Some(NS), None).len(), 2);
}

/// Raw HTTP/1.1 request over a blocking socket: returns status code and body.
fn raw_request(url: &str, request: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let addr = url.trim_start_matches("http://");
    let mut sock = std::net::TcpStream::connect(addr).expect("connect");
    sock.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    sock.write_all(request.as_bytes()).expect("write");
    let mut text = String::new();
    sock.read_to_string(&mut text).expect("read");
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status line");
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (code, body)
}

#[tokio::test]
async fn serves_while_the_test_runtime_is_blocked_and_sends_status_bodies() {
    let h = harness().await;
    // Everything below blocks this (current-thread) runtime; the server runs on its own.
    let get = format!(
        "GET /apis/cert-manager.io/v1/namespaces/{NS}/certificaterequests/absent HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n"
    );
    let (code, body) = raw_request(&h.server.url(), &get);
    assert_eq!(code, 404);
    let status: Value = serde_json::from_str(&body).expect("Status JSON");
    assert_eq!(status["kind"], "Status");
    assert_eq!(status["reason"], "NotFound");
    assert_eq!(
        status["message"],
        "certificaterequests.cert-manager.io \"absent\" not found"
    );
    assert_eq!(status["details"]["group"], "cert-manager.io");

    let (code, _) = raw_request(
        &h.server.url(),
        "GET /apis/example.com/v1/widgets HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(code, 404);
    // Strategic merge patch does not exist for custom resources.
    let patch = "{}";
    let req = format!(
        "PATCH /apis/cert-manager.io/v1/namespaces/{NS}/certificaterequests/absent HTTP/1.1\r\nHost: x\r\nContent-Type: application/strategic-merge-patch+json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{patch}",
        patch.len()
    );
    assert_eq!(raw_request(&h.server.url(), &req).0, 415);
    let recs = h.server.requests();
    assert_eq!(recs[0].verb, "get");
    assert_eq!(recs[0].name.as_deref(), Some("absent"));
    assert_eq!(recs[1].kind, None);
    assert_eq!(recs[2].verb, "patch");
}

#[tokio::test]
async fn streaming_list_watcher_gets_initial_events_and_the_end_bookmark() {
    let h = harness().await;
    let api = h.crs();
    api.create(&PostParams::default(), &cr("s1", basic_spec()))
        .await
        .expect("create");
    let mut events = watcher(api.clone(), watcher::Config::default().streaming_lists()).boxed();
    let mut seen = Vec::new();
    while seen.len() < 4 {
        let ev = tokio::time::timeout(Duration::from_secs(10), events.next())
            .await
            .expect("event in time")
            .expect("stream open")
            .expect("event ok");
        let desc = match ev {
            watcher::Event::Init => "Init".to_string(),
            watcher::Event::InitApply(o) => {
                format!("InitApply {}", o.metadata.name.unwrap_or_default())
            }
            watcher::Event::InitDone => {
                // Only now is the state complete; a change made now arrives as Apply.
                api.create(&PostParams::default(), &cr("s2", basic_spec()))
                    .await
                    .expect("create");
                "InitDone".to_string()
            }
            watcher::Event::Apply(o) => format!("Apply {}", o.metadata.name.unwrap_or_default()),
            watcher::Event::Delete(o) => format!("Delete {}", o.metadata.name.unwrap_or_default()),
        };
        seen.push(desc);
    }
    assert_eq!(seen, vec!["Init", "InitApply s1", "InitDone", "Apply s2"]);
    // No list at all: the initial state came over the watch.
    assert_eq!(h.server.count("list", Kind::CertificateRequest), 0);
}
