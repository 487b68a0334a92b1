//! The e2e Kubernetes API stand-in, driven by a real kube-rs client the way certvol drives a
//! cluster: through a kubeconfig with a bearer token, typed APIs, watches and the watcher.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use certvol_e2e::apiserver::{
    ApiConfig, ApiServer, ConfigError, EventType, InClusterEnv, Kind, KubeVersion,
};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch,
    PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::watcher;
use kube::{Client, Config, Discovery};
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

/// A kube client configured from the kubeconfig `server` writes into `dir` (token [`TOKEN`]).
async fn kubeconfig_client(server: &ApiServer, dir: &std::path::Path) -> Client {
    let path = dir.join("kubeconfig");
    server
        .write_kubeconfig(&path, TOKEN)
        .expect("write kubeconfig");
    let kc = Kubeconfig::read_from(&path).expect("read kubeconfig");
    let cfg = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("config");
    Client::try_from(cfg).expect("client")
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
    let client = kubeconfig_client(&server, dir.path()).await;
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

// ---- Version faithfulness: what each Kubernetes version serves, and nothing else ----

/// kube-apiserver's answer for a path nothing is served at (an unknown group/version or
/// resource), byte for byte once parsed (kubernetes/kubernetes#13902 shows it on the wire).
fn unknown_resource_status() -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": "the server could not find the requested resource",
        "reason": "NotFound",
        "details": {},
        "code": 404,
    })
}

/// A server acting as 1.`minor` with `enable` as its runtime-config, and a kube client for it.
async fn versioned(minor: u8, enable: &[&str]) -> (ApiServer, Client) {
    let mut config = ApiConfig::new(KubeVersion::new(minor).expect("known version"));
    for e in enable {
        config = config.enable(e);
    }
    let server = ApiServer::start_with(config).await.expect("start");
    let client = Client::try_from(Config::new(server.url().parse().expect("url"))).expect("client");
    (server, client)
}

fn ctb_resource(version: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("certificates.k8s.io", version, "ClusterTrustBundle"),
        "clustertrustbundles",
    )
}

fn ca_pem(cn: &str) -> String {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .self_signed(&KeyPair::generate().expect("key"))
        .expect("cert")
        .pem()
}

/// A GET with extra header lines; returns the status, the header block and the body.
fn raw_get(url: &str, path: &str, headers: &str) -> (u16, String, String) {
    use std::io::{Read, Write};
    let addr = url.trim_start_matches("http://");
    let mut sock = std::net::TcpStream::connect(addr).expect("connect");
    sock.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    write!(
        sock,
        "GET {path} HTTP/1.1\r\nHost: x\r\n{headers}Connection: close\r\n\r\n"
    )
    .expect("write");
    let mut text = String::new();
    sock.read_to_string(&mut text).expect("read");
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status line");
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (code, head.to_string(), body.to_string())
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

const CTB_VERSIONS: [&str; 3] = ["v1alpha1", "v1beta1", "v1"];

/// Per version and runtime-config: the ClusterTrustBundle versions a real cluster serves and
/// certificates.k8s.io's versions (preferred first), restated from the sources the table cites
/// (k8s-openapi's per-version modules, KEP-3257, KEP-3136) so a wrong table edit fails here.
struct Case {
    minor: u8,
    enable: &'static [&'static str],
    /// The ClusterTrustBundle versions served.
    ctb: &'static [&'static str],
    /// certificates.k8s.io's versions, preferred first.
    certificates: &'static [&'static str],
}

const fn case(
    minor: u8,
    enable: &'static [&'static str],
    ctb: &'static [&'static str],
    certificates: &'static [&'static str],
) -> Case {
    Case {
        minor,
        enable,
        ctb,
        certificates,
    }
}

const V1BETA1: &[&str] = &["certificates.k8s.io/v1beta1"];
const CASES: &[Case] = &[
    case(30, &[], &[], &["v1"]),
    case(
        30,
        &["certificates.k8s.io/v1alpha1"],
        &["v1alpha1"],
        &["v1", "v1alpha1"],
    ),
    case(33, &[], &[], &["v1"]),
    case(36, &[], &[], &["v1"]),
    case(36, V1BETA1, &["v1beta1"], &["v1", "v1beta1"]),
    case(37, &[], &["v1"], &["v1"]),
    case(37, V1BETA1, &["v1beta1", "v1"], &["v1", "v1beta1"]),
];

#[tokio::test]
async fn each_version_serves_exactly_its_cluster_trust_bundle_versions() {
    for Case {
        minor,
        enable,
        ctb: ctb_served,
        certificates: cert_versions,
    } in CASES
    {
        let label = format!("1.{minor} {enable:?}");
        let (server, client) = versioned(*minor, enable).await;
        assert_eq!(server.version().minor(), *minor);

        // Legacy discovery through kube-client's own calls.
        let groups = client.list_api_groups().await.expect("groups");
        let names: Vec<&str> = groups.groups.iter().map(|g| g.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "events.k8s.io",
                "certificates.k8s.io",
                "storage.k8s.io",
                "cert-manager.io"
            ],
            "{label}"
        );
        let certs = groups
            .groups
            .iter()
            .find(|g| g.name == "certificates.k8s.io")
            .expect("certificates.k8s.io");
        let versions: Vec<&str> = certs.versions.iter().map(|v| v.version.as_str()).collect();
        assert_eq!(versions, *cert_versions, "{label}");
        assert_eq!(
            certs.preferred_version.as_ref().map(|p| p.version.as_str()),
            Some("v1"),
            "{label}"
        );
        let core = client.list_core_api_versions().await.expect("core");
        assert_eq!(core.versions, ["v1"]);

        let pem = ca_pem("bundle");
        for v in CTB_VERSIONS {
            let gv = format!("certificates.k8s.io/{v}");
            let served = ctb_served.contains(&v);
            assert_eq!(
                server.serves(&gv, "clustertrustbundles"),
                served,
                "{label} {gv}"
            );
            match client.list_api_group_resources(&gv).await {
                Ok(list) => {
                    assert!(cert_versions.contains(&v), "{label} {gv} listed");
                    let has = list
                        .resources
                        .iter()
                        .any(|r| r.name == "clustertrustbundles");
                    assert_eq!(has, served, "{label} {gv}");
                }
                Err(e) => {
                    assert!(!cert_versions.contains(&v), "{label} {gv}: {e}");
                    assert_eq!(status_of(e).code, 404, "{label} {gv}");
                }
            }
            let (code, _, body) = raw_get(
                &server.url(),
                &format!("/apis/{gv}/clustertrustbundles"),
                "",
            );
            if served {
                assert_eq!(code, 200, "{label} {gv}");
            } else {
                assert_eq!(code, 404, "{label} {gv}");
                let status: Value = serde_json::from_str(&body).expect("Status");
                assert_eq!(status, unknown_resource_status(), "{label} {gv}");
                // Nor can anything be written through it.
                let api: Api<DynamicObject> = Api::all_with(client.clone(), &ctb_resource(v));
                let obj = DynamicObject::new("refused", &ctb_resource(v))
                    .data(json!({"spec": {"trustBundle": pem}}));
                let e = api
                    .create(&PostParams::default(), &obj)
                    .await
                    .expect_err("not served");
                let s = status_of(e);
                assert_eq!(
                    (s.code, s.message.as_str()),
                    (404, "the server could not find the requested resource")
                );
            }
        }

        // kube::Discovery, legacy and aggregated, sees the same.
        let legacy = Discovery::new(client.clone())
            .run()
            .await
            .expect("discovery");
        let aggregated = Discovery::new(client.clone())
            .run_aggregated()
            .await
            .expect("aggregated discovery");
        for (how, discovery) in [("legacy", &legacy), ("aggregated", &aggregated)] {
            let g = discovery.get("certificates.k8s.io").expect("group");
            assert_eq!(
                g.versions().collect::<Vec<_>>(),
                *cert_versions,
                "{label} {how}"
            );
            assert_eq!(g.preferred_version(), Some("v1"), "{label} {how}");
            for v in CTB_VERSIONS {
                let gvk = GroupVersionKind::gvk("certificates.k8s.io", v, "ClusterTrustBundle");
                let found = discovery.resolve_gvk(&gvk);
                assert_eq!(
                    found.is_some(),
                    ctb_served.contains(&v),
                    "{label} {how} {v}"
                );
                if let Some((ar, caps)) = found {
                    assert_eq!(ar.plural, "clustertrustbundles");
                    assert_eq!(caps.scope, kube::discovery::Scope::Cluster);
                    assert!(caps.supports_operation(kube::discovery::verbs::WATCH));
                }
            }
            let (_, pods) = discovery
                .resolve_gvk(&GroupVersionKind::gvk("", "v1", "Pod"))
                .expect("pods");
            assert_eq!(pods.scope, kube::discovery::Scope::Namespaced);
            assert!(
                pods.subresources
                    .iter()
                    .any(|(ar, _)| ar.plural == "status"),
                "{label} {how}"
            );
            let (_, csr) = discovery
                .resolve_gvk(&GroupVersionKind::gvk(
                    "certificates.k8s.io",
                    "v1",
                    "CertificateSigningRequest",
                ))
                .expect("csr");
            let mut subs: Vec<&str> = csr
                .subresources
                .iter()
                .map(|(ar, _)| ar.plural.as_str())
                .collect();
            subs.sort();
            assert_eq!(subs, ["approval", "status"], "{label} {how}");
            assert!(discovery.has_group("cert-manager.io"));
        }

        // Every served version reads and lists the same objects, in its own apiVersion.
        for v in *ctb_served {
            let api: Api<DynamicObject> = Api::all_with(client.clone(), &ctb_resource(v));
            let obj = DynamicObject::new(&format!("through-{v}"), &ctb_resource(v))
                .data(json!({"spec": {"trustBundle": pem}}));
            api.create(&PostParams::default(), &obj)
                .await
                .expect("create");
        }
        for v in *ctb_served {
            let api: Api<DynamicObject> = Api::all_with(client.clone(), &ctb_resource(v));
            let listed = api.list(&ListParams::default()).await.expect("list");
            assert_eq!(listed.items.len(), ctb_served.len(), "{label} {v}");
            for w in *ctb_served {
                let got = api.get(&format!("through-{w}")).await.expect("get");
                assert_eq!(
                    got.types.expect("types").api_version,
                    format!("certificates.k8s.io/{v}"),
                    "{label}"
                );
            }
        }

        // In-process writes go through the preferred served version, or are refused when the
        // version serves none, as a client would be.
        let created = server.store().create(
            Kind::ClusterTrustBundle,
            "",
            json!({"metadata": {"name": "in-process"}, "spec": {"trustBundle": pem}}),
        );
        match ctb_served
            .iter()
            .max_by_key(|v| ["v1alpha1", "v1beta1", "v1"].iter().position(|w| w == *v))
        {
            Some(best) => assert_eq!(
                created.expect("in-process create")["apiVersion"],
                format!("certificates.k8s.io/{best}"),
                "{label}"
            ),
            None => assert_eq!(
                created.expect_err("not served").status_code(),
                404,
                "{label}"
            ),
        }
        let refused = server.store().create(
            Kind::ClusterTrustBundle,
            "",
            json!({"apiVersion": "certificates.k8s.io/v1alpha2", "metadata": {"name": "x"}, "spec": {"trustBundle": pem}}),
        );
        assert_eq!(refused.expect_err("never served").status_code(), 404);
    }
}

#[tokio::test]
async fn discovery_documents_are_kube_apiservers() {
    let (server, client) = versioned(37, &[]).await;
    let url = server.url();
    let get = |path: &str| {
        let (code, head, body) = raw_get(&url, path, "");
        let doc: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        (code, head, doc)
    };
    let all_verbs = json!([
        "create",
        "delete",
        "deletecollection",
        "get",
        "list",
        "patch",
        "update",
        "watch"
    ]);
    let sub_verbs = json!(["get", "patch", "update"]);

    let (code, _, apis) = get("/apis");
    assert_eq!(code, 200);
    let gv = |g: &str, v: &str| json!({"groupVersion": format!("{g}/{v}"), "version": v});
    assert_eq!(
        apis,
        json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": [
            {"name": "events.k8s.io", "versions": [gv("events.k8s.io", "v1")], "preferredVersion": gv("events.k8s.io", "v1")},
            {"name": "certificates.k8s.io", "versions": [gv("certificates.k8s.io", "v1")], "preferredVersion": gv("certificates.k8s.io", "v1")},
            {"name": "storage.k8s.io", "versions": [gv("storage.k8s.io", "v1")], "preferredVersion": gv("storage.k8s.io", "v1")},
            {"name": "cert-manager.io", "versions": [gv("cert-manager.io", "v1")], "preferredVersion": gv("cert-manager.io", "v1")},
        ]})
    );
    let (_, _, storage) = get("/apis/storage.k8s.io/v1");
    assert_eq!(
        storage,
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "storage.k8s.io/v1", "resources": [
            {"name": "csidrivers", "singularName": "csidriver", "namespaced": false,
             "kind": "CSIDriver", "verbs": all_verbs},
        ]})
    );
    let (_, _, group) = get("/apis/certificates.k8s.io");
    assert_eq!(
        group,
        json!({"kind": "APIGroup", "apiVersion": "v1", "name": "certificates.k8s.io",
            "versions": [gv("certificates.k8s.io", "v1")], "preferredVersion": gv("certificates.k8s.io", "v1")})
    );
    let (_, _, certs) = get("/apis/certificates.k8s.io/v1");
    assert_eq!(
        certs,
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "certificates.k8s.io/v1", "resources": [
            {"name": "certificatesigningrequests", "singularName": "certificatesigningrequest", "namespaced": false,
             "kind": "CertificateSigningRequest", "verbs": all_verbs, "shortNames": ["csr"]},
            {"name": "certificatesigningrequests/approval", "singularName": "", "namespaced": false,
             "kind": "CertificateSigningRequest", "verbs": sub_verbs},
            {"name": "certificatesigningrequests/status", "singularName": "", "namespaced": false,
             "kind": "CertificateSigningRequest", "verbs": sub_verbs},
            {"name": "clustertrustbundles", "singularName": "clustertrustbundle", "namespaced": false,
             "kind": "ClusterTrustBundle", "verbs": all_verbs},
        ]})
    );
    let (_, _, crs) = get("/apis/cert-manager.io/v1");
    assert_eq!(
        crs["resources"],
        json!([
            {"name": "certificaterequests", "singularName": "certificaterequest", "namespaced": true,
             "kind": "CertificateRequest",
             "verbs": ["delete", "deletecollection", "get", "list", "patch", "create", "update", "watch"],
             "shortNames": ["cr", "crs"], "categories": ["cert-manager"]},
            {"name": "certificaterequests/status", "singularName": "", "namespaced": true,
             "kind": "CertificateRequest", "verbs": sub_verbs},
        ])
    );
    let (_, _, core) = get("/api");
    assert_eq!(
        core,
        json!({"kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": format!("127.0.0.1:{}", server.port())}]})
    );
    let (_, _, core_v1) = get("/api/v1");
    assert_eq!(core_v1["kind"], "APIResourceList");
    assert_eq!(core_v1["groupVersion"], "v1");
    assert!(
        core_v1.get("apiVersion").is_none(),
        "the legacy list has none"
    );
    let names: Vec<&str> = core_v1["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .map(|r| r["name"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        names,
        ["configmaps", "events", "pods", "pods/status", "secrets"]
    );
    assert_eq!(
        core_v1["resources"][2],
        json!({"name": "pods", "singularName": "pod", "namespaced": true, "kind": "Pod",
            "verbs": all_verbs, "shortNames": ["po"], "categories": ["all"]})
    );
    for absent in [
        "/apis/certificates.k8s.io/v1beta1",
        "/apis/certificates.k8s.io/v1alpha1",
        "/apis/example.com",
        "/apis/example.com/v1",
        "/api/v2",
    ] {
        let (code, _, doc) = get(absent);
        assert_eq!((code, doc), (404, unknown_resource_status()), "{absent}");
    }

    // Aggregated discovery when asked for, with the negotiated type in Content-Type.
    let kube_accept = "Accept: application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json\r\n";
    let (code, head, body) = raw_get(&url, "/apis", kube_accept);
    assert_eq!(code, 200);
    assert_eq!(
        header(&head, "content-type"),
        Some("application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList")
    );
    assert_eq!(header(&head, "vary"), Some("Accept"));
    let agg: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(agg["kind"], "APIGroupDiscoveryList");
    assert_eq!(agg["apiVersion"], "apidiscovery.k8s.io/v2");
    assert_eq!(
        agg["items"][1]["versions"][0]["resources"][0],
        json!({"resource": "certificatesigningrequests",
        "responseKind": {"group": "", "version": "", "kind": "CertificateSigningRequest"},
        "scope": "Cluster", "singularResource": "certificatesigningrequest", "verbs": all_verbs,
        "shortNames": ["csr"],
        "subresources": [
            {"subresource": "approval", "responseKind": {"group": "", "version": "", "kind": "CertificateSigningRequest"}, "verbs": sub_verbs},
            {"subresource": "status", "responseKind": {"group": "", "version": "", "kind": "CertificateSigningRequest"}, "verbs": sub_verbs},
        ]})
    );
    assert_eq!(agg["items"][1]["versions"][0]["freshness"], "Current");
    // Without the aggregated type the legacy documents answer; with only an unserved one, 406.
    let (_, head, _) = raw_get(&url, "/apis", "Accept: application/json, */*\r\n");
    assert_eq!(header(&head, "content-type"), Some("application/json"));
    let (code, _, body) = raw_get(
        &url,
        "/api",
        "Accept: application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList\r\n",
    );
    assert_eq!(code, 406, "{body}");
    let status: Value = serde_json::from_str(&body).expect("Status");
    assert_eq!(status["reason"], "NotAcceptable");

    // kube-client's typed calls parse them.
    let typed = client
        .list_api_groups_aggregated()
        .await
        .expect("aggregated /apis");
    let names: Vec<String> = typed
        .items
        .iter()
        .filter_map(|g| g.metadata.as_ref()?.name.clone())
        .collect();
    assert_eq!(
        names,
        [
            "events.k8s.io",
            "certificates.k8s.io",
            "storage.k8s.io",
            "cert-manager.io"
        ]
    );
    let core = client
        .list_core_api_versions_aggregated()
        .await
        .expect("aggregated /api");
    assert_eq!(core.items.len(), 1);
    let pods = core.items[0].versions[0]
        .resources
        .iter()
        .find(|r| r.resource.as_deref() == Some("pods"))
        .expect("pods");
    assert_eq!(pods.subresources.len(), 1);
    assert_eq!(pods.subresources[0].subresource.as_deref(), Some("status"));
    let info = client.apiserver_version().await.expect("/version");
    assert_eq!((info.major.as_str(), info.minor.as_str()), ("1", "37"));
    assert_eq!(info.git_version, "v1.37.0");

    // Discovery is read-only.
    let (code, _) = raw_request(
        &url,
        "POST /apis HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(code, 405);
}

#[tokio::test]
async fn aggregated_discovery_v2beta1_is_served_only_before_1_33() {
    let beta = "Accept: application/json;as=APIGroupDiscoveryList;v=v2beta1;g=apidiscovery.k8s.io,application/json\r\n";
    let (old, _) = versioned(32, &[]).await;
    let (_, head, body) = raw_get(&old.url(), "/apis", beta);
    assert_eq!(
        header(&head, "content-type"),
        Some("application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList")
    );
    let doc: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(doc["apiVersion"], "apidiscovery.k8s.io/v2beta1");
    let (new, _) = versioned(33, &[]).await;
    let (_, head, body) = raw_get(&new.url(), "/apis", beta);
    assert_eq!(header(&head, "content-type"), Some("application/json"));
    let doc: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(doc["kind"], "APIGroupList");
}

#[tokio::test]
async fn runtime_config_switches_resources_and_refuses_what_the_version_lacks() {
    // One resource of a group/version, and a default switched off.
    let (server, _) = versioned(
        37,
        &[
            "certificates.k8s.io/v1beta1/clustertrustbundles",
            "certificates.k8s.io/v1/clustertrustbundles=false",
        ],
    )
    .await;
    assert!(server.serves("certificates.k8s.io/v1beta1", "clustertrustbundles"));
    assert!(!server.serves("certificates.k8s.io/v1", "clustertrustbundles"));
    assert!(server.serves("certificates.k8s.io/v1", "certificatesigningrequests"));
    // The stand-in stores no PodCertificateRequests, but knows when a cluster serves them.
    assert!(!server.serves("certificates.k8s.io/v1", "podcertificaterequests"));
    assert!(
        server
            .apis()
            .kubernetes_serves("certificates.k8s.io/v1", "podcertificaterequests")
    );
    assert!(
        !server
            .apis()
            .kubernetes_serves("certificates.k8s.io/v1beta1", "podcertificaterequests")
    );

    // Without the CRD, cert-manager.io is not served at all.
    let bare = ApiServer::start_with(ApiConfig::default().cert_manager_crd(false))
        .await
        .expect("start");
    assert!(!bare.serves("cert-manager.io/v1", "certificaterequests"));
    let (code, _, _) = raw_get(&bare.url(), "/apis/cert-manager.io/v1", "");
    assert_eq!(code, 404);

    // kube-apiserver refuses to start with runtime-config it does not know.
    for (minor, entry) in [
        (30, "certificates.k8s.io/v1beta1"),
        (37, "certificates.k8s.io/v1alpha1"),
        (36, "certificates.k8s.io/v1/clustertrustbundles"),
        (37, "apps/v1"),
    ] {
        let config = ApiConfig::new(KubeVersion::new(minor).expect("version")).enable(entry);
        let err = match ApiServer::start_with(config).await {
            Ok(_) => panic!("1.{minor} started with {entry}"),
            Err(e) => e,
        };
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput, "{err}");
        assert!(
            err.get_ref()
                .and_then(|e| e.downcast_ref::<ConfigError>())
                .is_some(),
            "{err}"
        );
    }
}

/// Set by [`start_follows_the_environment`] for the child runs of [`environment_child`].
const CHILD_MARK: &str = "CERTVOL_E2E_TEST_CHILD";

/// The same test binary, running one ignored test in a child process with `env` set, so the
/// process-wide environment of the parallel tests here stays untouched.
fn run_child(
    test: &str,
    env: &[(&str, String)],
    wrap: Option<(&str, Vec<String>)>,
) -> std::process::Output {
    let exe = std::env::current_exe().expect("test binary");
    let test_args = [
        "--exact",
        test,
        "--ignored",
        "--nocapture",
        "--test-threads",
        "1",
    ];
    let mut cmd = match &wrap {
        Some((program, args)) => {
            let mut c = std::process::Command::new(program);
            c.args(args).arg(&exe).args(test_args);
            c
        }
        None => {
            let mut c = std::process::Command::new(&exe);
            c.args(test_args);
            c
        }
    };
    cmd.env_remove(certvol_e2e::apiserver::ENV_VERSION)
        .env_remove(certvol_e2e::apiserver::ENV_ENABLE)
        .env(CHILD_MARK, "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run the child")
}

/// What a child printed after `RESULT ` (the harness prints the test name on the same line).
fn child_result(out: &std::process::Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .find_map(|l| l.split_once("RESULT ").map(|(_, r)| r.trim()))
        .map(str::to_string)
        .unwrap_or_else(|| {
            panic!(
                "no result: {stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
}

#[tokio::test]
async fn start_follows_the_environment() {
    let run = |version: &str, enable: &str| {
        let out = run_child(
            "environment_child",
            &[
                (certvol_e2e::apiserver::ENV_VERSION, version.to_string()),
                (certvol_e2e::apiserver::ENV_ENABLE, enable.to_string()),
            ],
            None,
        );
        child_result(&out)
    };
    assert_eq!(run("", ""), "1.37 v1");
    assert_eq!(run("1.36", ""), "1.36 none");
    assert_eq!(
        run("v1.36.1", " certificates.k8s.io/v1beta1 ,"),
        "1.36 v1beta1"
    );
    assert_eq!(run("1.30", "certificates.k8s.io/v1alpha1"), "1.30 v1alpha1");
    assert!(run("1.29", "").starts_with("error InvalidInput"));
    assert!(run("1.30", "certificates.k8s.io/v1beta1").starts_with("error InvalidInput"));
}

#[tokio::test]
#[ignore = "run in a child process by start_follows_the_environment"]
async fn environment_child() {
    if std::env::var_os(CHILD_MARK).is_none() {
        return;
    }
    match ApiServer::start().await {
        Ok(server) => {
            let served: Vec<&str> = CTB_VERSIONS
                .into_iter()
                .filter(|v| {
                    server.serves(&format!("certificates.k8s.io/{v}"), "clustertrustbundles")
                })
                .collect();
            let served = if served.is_empty() {
                "none".to_string()
            } else {
                served.join(",")
            };
            println!("RESULT {} {served}", server.version());
        }
        Err(e) => println!("RESULT error {:?} {e}", e.kind()),
    }
}

// ---- TLS and in-cluster configuration ----

/// The configuration kube's `Config::incluster_env` builds, built the same way from what
/// `write_incluster_files` returned (it reads fixed paths under /var/run/secrets, which
/// [`incluster_env_in_a_child_with_the_files_mounted`] provides for the real thing):
/// `https://HOST:PORT`, the namespace file, ca.crt as the only root, the token file.
fn incluster_config(env: &InClusterEnv) -> Config {
    let url = format!("https://{}:{}", env.host, env.port);
    let mut cfg = Config::new(url.parse().expect("url"));
    cfg.default_namespace = std::fs::read_to_string(env.dir.join("namespace")).expect("namespace");
    let pem = std::fs::read(env.dir.join("ca.crt")).expect("ca.crt");
    let mut roots = Vec::new();
    let mut rest = pem.as_slice();
    while let Ok((after, block)) = x509_parser::pem::parse_x509_pem(rest) {
        roots.push(block.contents);
        rest = after;
    }
    assert!(!roots.is_empty(), "ca.crt holds a certificate");
    cfg.root_cert = Some(roots);
    cfg.root_cert_file = Some(env.dir.join("ca.crt"));
    cfg.auth_info.token_file = Some(env.dir.join("token").to_string_lossy().into_owned());
    cfg
}

#[tokio::test]
async fn tls_serves_in_cluster_clients_from_the_projected_service_account_files() {
    let server = ApiServer::start_with(ApiConfig::default().tls(true))
        .await
        .expect("start");
    assert_eq!(server.url(), format!("https://127.0.0.1:{}", server.port()));
    let ca = server.ca_pem().expect("a CA").to_string();
    let (_, ca_block) = x509_parser::pem::parse_x509_pem(ca.as_bytes()).expect("CA PEM");
    let ca_cert = ca_block.parse_x509().expect("CA certificate");
    assert!(ca_cert.is_ca());
    server.add_token(
        TOKEN,
        "system:serviceaccount:team-a:web",
        &["system:serviceaccounts"],
        "sa-uid-web",
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let sa = dir.path().join("serviceaccount");
    let env = server.write_incluster_files(&sa, TOKEN, NS).expect("files");
    assert_eq!(
        env.vars(),
        [
            ("KUBERNETES_SERVICE_HOST", "127.0.0.1".to_string()),
            ("KUBERNETES_SERVICE_PORT", server.port().to_string()),
        ]
    );
    // kubelet's atomic-writer layout: each name a link through ..data.
    for name in ["ca.crt", "namespace", "token"] {
        assert_eq!(
            std::fs::read_link(sa.join(name)).expect("link"),
            std::path::Path::new("..data").join(name)
        );
    }
    assert_eq!(
        std::fs::read_to_string(sa.join("token")).expect("token"),
        TOKEN
    );
    assert_eq!(std::fs::read_to_string(sa.join("ca.crt")).expect("ca"), ca);

    let client = Client::try_from(incluster_config(&env)).expect("client");
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    pods.list(&ListParams::default())
        .await
        .expect("list over TLS");
    let last = server.requests().pop().expect("recorded");
    assert_eq!(last.path, format!("/api/v1/namespaces/{NS}/pods"));
    assert_eq!(last.token.as_deref(), Some(TOKEN));
    // Discovery works over TLS too.
    let groups = client.list_api_groups().await.expect("groups");
    assert_eq!(groups.groups.len(), 4);

    // The certificate names the in-cluster service too (Config::incluster_dns connects there).
    let mut by_dns = incluster_config(&env);
    by_dns.tls_server_name = Some("kubernetes.default.svc".into());
    let pods: Api<Pod> = Api::default_namespaced(Client::try_from(by_dns).expect("client"));
    pods.list(&ListParams::default())
        .await
        .expect("list as kubernetes.default.svc");

    // A client that does not trust the CA fails the handshake (no API answer at all).
    let mut untrusted = incluster_config(&env);
    untrusted.root_cert = None;
    untrusted.root_cert_file = None;
    let pods: Api<Pod> = Api::default_namespaced(Client::try_from(untrusted).expect("client"));
    let err = pods
        .list(&ListParams::default())
        .await
        .expect_err("untrusted");
    assert!(!matches!(err, kube::Error::Api(_)), "{err:?}");

    // A kubeconfig carries the CA.
    let pods: Api<Pod> = Api::namespaced(kubeconfig_client(&server, dir.path()).await, NS);
    pods.list(&ListParams::default())
        .await
        .expect("list via kubeconfig");

    // Writing again rotates the token in place, leaving one payload directory.
    server
        .write_incluster_files(&sa, "pod-token-2", NS)
        .expect("rotate");
    assert_eq!(
        std::fs::read_to_string(sa.join("token")).expect("token"),
        "pod-token-2"
    );
    let payloads = std::fs::read_dir(&sa)
        .expect("dir")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("..2"))
        .count();
    assert_eq!(payloads, 1);

    // In-cluster configuration is https-only: a plain server has no files to offer.
    let plain = ApiServer::start_with(ApiConfig::default())
        .await
        .expect("plain");
    assert!(plain.ca_pem().is_none());
    let err = plain
        .write_incluster_files(&dir.path().join("plain"), TOKEN, NS)
        .expect_err("https only");
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
}

#[tokio::test]
async fn incluster_env_in_a_child_with_the_files_mounted() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipping: mounting the service-account files needs root");
        return;
    }
    let server = ApiServer::start_with(ApiConfig::default().tls(true))
        .await
        .expect("start");
    let dir = tempfile::tempdir().expect("tempdir");
    let sa = dir.path().join("serviceaccount");
    let env = server.write_incluster_files(&sa, TOKEN, NS).expect("files");
    // A private mount namespace where /run (so /var/run) is a fresh tmpfs with the files bound
    // at the path kubelet mounts them: nothing changes outside the child.
    let script = "mount -t tmpfs tmpfs /run && mkdir -p /run/secrets/kubernetes.io/serviceaccount && mount --bind \"$1\" /run/secrets/kubernetes.io/serviceaccount && shift && exec \"$@\"";
    let wrap = vec![
        "--mount".to_string(),
        "--propagation".to_string(),
        "private".to_string(),
        "sh".to_string(),
        "-c".to_string(),
        script.to_string(),
        "sh".to_string(),
        sa.to_string_lossy().into_owned(),
    ];
    let out = tokio::task::spawn_blocking(move || {
        run_child("incluster_env_child", &env.vars(), Some(("unshare", wrap)))
    })
    .await
    .expect("join");
    assert_eq!(child_result(&out), format!("listed {NS}"));
    let listed = server
        .requests()
        .into_iter()
        .find(|r| r.path == format!("/api/v1/namespaces/{NS}/pods"))
        .expect("the child's request");
    assert_eq!(listed.token.as_deref(), Some(TOKEN));
}

#[tokio::test]
#[ignore = "run in a child process by incluster_env_in_a_child_with_the_files_mounted"]
async fn incluster_env_child() {
    if std::env::var_os(CHILD_MARK).is_none() {
        return;
    }
    let result = async {
        let cfg = Config::incluster_env().map_err(|e| e.to_string())?;
        let ns = cfg.default_namespace.clone();
        let client = Client::try_from(cfg).map_err(|e| e.to_string())?;
        Api::<Pod>::default_namespaced(client)
            .list(&ListParams::default())
            .await
            .map_err(|e| e.to_string())?;
        Ok::<String, String>(ns)
    }
    .await;
    match result {
        Ok(ns) => println!("RESULT listed {ns}"),
        Err(e) => println!("RESULT error {e}"),
    }
}

/// storage.k8s.io/v1 CSIDrivers as kube-apiserver serves them: cluster-scoped (no namespaced
/// URL), defaulted on create (podInfoOnMount false unless set), validated (lifecycle modes,
/// token requests), readable by name as certvol's start-up check reads it.
#[tokio::test]
async fn csidrivers_are_cluster_scoped_defaulted_and_validated() {
    use k8s_openapi::api::storage::v1::CSIDriver;
    let h = harness().await;
    let drivers: Api<CSIDriver> = Api::all(h.client.clone());
    let bare: CSIDriver = serde_json::from_value(json!({
        "apiVersion": "storage.k8s.io/v1", "kind": "CSIDriver",
        "metadata": {"name": "bare.example.com"}, "spec": {}
    }))
    .unwrap();
    let created = drivers.create(&PostParams::default(), &bare).await.unwrap();
    assert_eq!(created.spec.pod_info_on_mount, Some(false));
    assert_eq!(created.spec.attach_required, Some(true));
    assert_eq!(
        created.spec.volume_lifecycle_modes.as_deref(),
        Some(&["Persistent".to_string()][..])
    );
    assert!(created.metadata.namespace.is_none());

    // The chart's object, as the harness installs it.
    certvol_e2e::cluster::install_csidriver(&h.server);
    let chart = drivers.get("csi.certvol.io").await.unwrap();
    assert_eq!(chart.spec.pod_info_on_mount, Some(true));
    assert_eq!(
        chart.spec.volume_lifecycle_modes.as_deref(),
        Some(&["Ephemeral".to_string()][..])
    );
    let (code, _) = raw_request(
        &h.server.url(),
        &format!(
            "GET /apis/storage.k8s.io/v1/namespaces/{NS}/csidrivers/csi.certvol.io HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n"
        ),
    );
    assert_eq!(code, 404, "CSIDrivers have no namespaced URL");

    let bad: CSIDriver = serde_json::from_value(json!({
        "apiVersion": "storage.k8s.io/v1", "kind": "CSIDriver",
        "metadata": {"name": "bad.example.com"},
        "spec": {"volumeLifecycleModes": ["Inline"],
                 "tokenRequests": [{"audience": "a", "expirationSeconds": 60}]}
    }))
    .unwrap();
    match drivers.create(&PostParams::default(), &bad).await {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 422, "{status:?}");
            assert!(
                status.message.contains("spec.volumeLifecycleModes[0]")
                    && status
                        .message
                        .contains("spec.tokenRequests[0].expirationSeconds"),
                "{}",
                status.message
            );
        }
        other => panic!("created an invalid CSIDriver: {other:?}"),
    }
}
