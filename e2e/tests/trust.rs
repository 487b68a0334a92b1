//! Trust sources end to end: the API stand-in's ConfigMaps, Secrets and ClusterTrustBundles
//! (REST, validation, watches) driven by a real kube-rs client, and the driver's watch-driven
//! trust cache (`certvol_driver::trust`) reading them through that client.

use std::collections::BTreeMap;
use std::time::Duration;

use certvol_driver::kube::discovery::{self, Apis};
use certvol_driver::trust::source::{KeyRef, SignerSelector};
use certvol_driver::trust::{ObjectRef, SourceError, TrustCache, TrustSpec};
use certvol_e2e::apiserver::{ApiServer, Kind};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch,
    PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::core::ObjectMeta;
use kube::{Client, Config};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use serde_json::json;

const NS: &str = "shop";

async fn start() -> (ApiServer, Client) {
    let server = ApiServer::start().await.expect("start API server");
    let config = Config::new(server.url().parse().expect("url"));
    let client = Client::try_from(config).expect("client");
    (server, client)
}

fn cert(cn: &str, ca: bool) -> String {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.distinguished_name.push(DnType::CommonName, cn);
    params.is_ca = if ca {
        IsCa::Ca(BasicConstraints::Unconstrained)
    } else {
        IsCa::ExplicitNoCa
    };
    params
        .self_signed(&KeyPair::generate().expect("key"))
        .expect("cert")
        .pem()
}

fn meta(name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        ..ObjectMeta::default()
    }
}

fn configmap(name: &str, data: &[(&str, &str)]) -> ConfigMap {
    ConfigMap {
        metadata: meta(name),
        data: Some(
            data.iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
        ),
        ..ConfigMap::default()
    }
}

/// The ClusterTrustBundle API of the version the server serves (v1 at the default 1.37; v1beta1
/// or v1alpha1 where only those are enabled), or `None` when it serves none: CTBs are written
/// through that version, as a client of a real cluster must.
fn ctb_resource(server: &ApiServer) -> Option<ApiResource> {
    let gv = server.preferred_api_version(Kind::ClusterTrustBundle)?;
    let (group, version) = gv.split_once('/')?;
    Some(ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(group, version, "ClusterTrustBundle"),
        "clustertrustbundles",
    ))
}

/// The CTB API, or `None` (after checking the server answers 404 for it) when the configured
/// version serves no ClusterTrustBundles, so the scenario has nothing to exercise.
async fn ctb_api(server: &ApiServer, client: &Client) -> Option<(ApiResource, Api<DynamicObject>)> {
    let Some(ar) = ctb_resource(server) else {
        let (status, _) = raw_get(&format!(
            "{}/apis/certificates.k8s.io/v1/clustertrustbundles",
            server.url()
        ))
        .await;
        assert_eq!(status, 404);
        eprintln!(
            "Kubernetes {} as configured serves no ClusterTrustBundles: skipping them",
            server.version()
        );
        return None;
    };
    let api = Api::all_with(client.clone(), &ar);
    Some((ar, api))
}

fn ctb(ar: &ApiResource, name: &str, signer: Option<&str>, pem: &str) -> DynamicObject {
    let mut spec = json!({"trustBundle": pem});
    if let Some(signer) = signer {
        spec["signerName"] = json!(signer);
    }
    DynamicObject::new(name, ar).data(json!({ "spec": spec }))
}

fn status_of(e: kube::Error) -> kube::core::Status {
    match e {
        kube::Error::Api(s) => *s,
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// `(code, fields of the causes, message)` of a failed call.
fn failure<T: std::fmt::Debug>(r: kube::Result<T>) -> (u16, Vec<String>, String) {
    let s = status_of(r.expect_err("the call should fail"));
    let fields = s
        .details
        .as_ref()
        .map(|d| d.causes.iter().map(|c| c.field.clone()).collect())
        .unwrap_or_default();
    (s.code, fields, s.message)
}

#[tokio::test]
async fn configmaps_crud_validation_and_immutability() {
    let (server, client) = start().await;
    let api: Api<ConfigMap> = Api::namespaced(client, NS);
    let created = api
        .create(&PostParams::default(), &configmap("ca", &[("ca.crt", "A")]))
        .await
        .expect("create");
    let rv1: u64 = created
        .metadata
        .resource_version
        .clone()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(created.metadata.namespace.as_deref(), Some(NS));
    assert!(created.metadata.uid.is_some());
    let got = api.get("ca").await.expect("get");
    assert_eq!(got.data.unwrap()["ca.crt"], "A");

    // Update with a stale resourceVersion conflicts; with the current one it bumps the version.
    let mut stale = created.clone();
    let patched = api
        .patch(
            "ca",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"ca.crt": "B"}})),
        )
        .await
        .expect("patch");
    let rv2: u64 = patched
        .metadata
        .resource_version
        .clone()
        .unwrap()
        .parse()
        .unwrap();
    assert!(rv2 > rv1);
    stale.data = Some(BTreeMap::from([("ca.crt".into(), "C".into())]));
    let (code, _, _) = failure(api.replace("ca", &PostParams::default(), &stale).await);
    assert_eq!(code, 409);

    // Validation as the apiserver does it: key syntax, data/binaryData overlap.
    let (code, fields, msg) = failure(
        api.create(
            &PostParams::default(),
            &configmap("bad", &[("..x", "v"), ("a/b", "v")]),
        )
        .await,
    );
    assert_eq!(code, 422, "{msg}");
    assert_eq!(fields, vec!["data[..x]", "data[a/b]"], "{msg}");
    let mut dup = configmap("dup", &[("k", "v")]);
    dup.binary_data = Some(BTreeMap::from([("k".into(), ByteString(b"v".to_vec()))]));
    let (code, fields, msg) = failure(api.create(&PostParams::default(), &dup).await);
    assert_eq!((code, fields), (422, vec!["data[k]".to_string()]));
    assert!(
        msg.contains("duplicate of key present in binaryData"),
        "{msg}"
    );
    let mut big = configmap("big", &[]);
    big.data = Some(BTreeMap::from([("k".into(), "x".repeat(1024 * 1024 + 1))]));
    let (code, fields, _) = failure(api.create(&PostParams::default(), &big).await);
    assert_eq!((code, fields), (422, vec!["data".to_string()]));

    // immutable: true freezes data and itself.
    let mut frozen = configmap("frozen", &[("k", "v")]);
    frozen.immutable = Some(true);
    api.create(&PostParams::default(), &frozen)
        .await
        .expect("create");
    let (code, fields, _) = failure(
        api.patch(
            "frozen",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"k": "w"}})),
        )
        .await,
    );
    assert_eq!((code, fields), (422, vec!["data".to_string()]));
    let (code, fields, _) = failure(
        api.patch(
            "frozen",
            &PatchParams::default(),
            &Patch::Merge(json!({"immutable": false})),
        )
        .await,
    );
    assert_eq!((code, fields), (422, vec!["immutable".to_string()]));

    // Field selectors: metadata.name works, arbitrary fields do not (as for built-in kinds).
    let listed = api
        .list(&ListParams::default().fields("metadata.name=ca"))
        .await
        .expect("list");
    let names: Vec<String> = listed
        .items
        .iter()
        .map(|c| c.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(names, vec!["ca"]);
    let (code, _, msg) = failure(api.list(&ListParams::default().fields("data.k=v")).await);
    assert_eq!(code, 400, "{msg}");

    api.delete("ca", &DeleteParams::default())
        .await
        .expect("delete");
    let (code, _, msg) = failure(api.get("ca").await);
    assert_eq!(code, 404);
    assert_eq!(msg, "configmaps \"ca\" not found");
    assert!(server.store().get(Kind::ConfigMap, NS, "ca").is_none());
}

#[tokio::test]
async fn secrets_fold_string_data_default_type_and_check_tls() {
    let (_server, client) = start().await;
    let api: Api<Secret> = Api::namespaced(client.clone(), NS);
    let mut s = Secret {
        metadata: meta("ca"),
        data: Some(BTreeMap::from([
            ("a".into(), ByteString(b"from-data".to_vec())),
            ("b".into(), ByteString(b"old".to_vec())),
        ])),
        string_data: Some(BTreeMap::from([("b".into(), "from-string-data".into())])),
        ..Secret::default()
    };
    let created = api
        .create(&PostParams::default(), &s)
        .await
        .expect("create");
    assert_eq!(created.type_.as_deref(), Some("Opaque"));
    assert_eq!(created.string_data, None, "stringData is write-only");
    let data = created.data.expect("data");
    assert_eq!(data["a"].0, b"from-data");
    assert_eq!(data["b"].0, b"from-string-data");

    // type is immutable; kubernetes.io/tls needs tls.crt and tls.key.
    let (code, fields, _) = failure(
        api.patch(
            "ca",
            &PatchParams::default(),
            &Patch::Merge(json!({"type": "kubernetes.io/tls"})),
        )
        .await,
    );
    assert_eq!(code, 422);
    assert!(fields.contains(&"type".to_string()), "{fields:?}");
    s.metadata = meta("tls");
    s.type_ = Some("kubernetes.io/tls".into());
    s.string_data = None;
    let (code, fields, _) = failure(api.create(&PostParams::default(), &s).await);
    assert_eq!(
        (code, fields),
        (
            422,
            vec!["data[tls.crt]".to_string(), "data[tls.key]".to_string()]
        )
    );

    // Data that is not base64 fails to decode: 400, as JSON decoding fails on a real apiserver.
    let raw: Api<DynamicObject> = Api::namespaced_with(
        client,
        NS,
        &ApiResource::from_gvk(&GroupVersionKind::gvk("", "v1", "Secret")),
    );
    let bad = DynamicObject::new(
        "raw",
        &ApiResource::from_gvk(&GroupVersionKind::gvk("", "v1", "Secret")),
    )
    .data(json!({"data": {"k": "!!not base64!!"}}));
    let (code, _, msg) = failure(raw.create(&PostParams::default(), &bad).await);
    assert_eq!(code, 400, "{msg}");
}

#[tokio::test]
async fn cluster_trust_bundles_are_cluster_scoped_and_validated_like_the_apiserver() {
    let (server, client) = start().await;
    let Some((ar, api)) = ctb_api(&server, &client).await else {
        return;
    };
    let a = cert("A", true);
    let b = cert("B", true);
    let created = api
        .create(
            &PostParams::default(),
            &ctb(
                &ar,
                "example.com:signer:one",
                Some("example.com/signer"),
                &format!("{a}{b}"),
            ),
        )
        .await
        .expect("create");
    assert_eq!(created.metadata.namespace, None);
    assert!(
        server
            .store()
            .get(Kind::ClusterTrustBundle, "", "example.com:signer:one")
            .is_some()
    );
    api.create(&PostParams::default(), &ctb(&ar, "plain", None, &a))
        .await
        .expect("create without signer");

    // Versions the server does not serve (beta and alpha are off by default) have no URLs:
    // conversion between served versions is covered in tests/apiserver.rs.
    for v in ["v1alpha1", "v1beta1", "v1"] {
        let gv = format!("certificates.k8s.io/{v}");
        let (status, _) = raw_get(&format!(
            "{}/apis/{gv}/clustertrustbundles/plain",
            server.url()
        ))
        .await;
        let served = server.serves(&gv, "clustertrustbundles");
        assert_eq!(status, if served { 200 } else { 404 }, "{gv}");
    }

    let key_pem = KeyPair::generate().unwrap().serialize_pem();
    let leaf = cert("leaf", false);
    // name, object, expected message fragment (all on field metadata.name or spec.*)
    let rows: Vec<(&str, DynamicObject, &str, &str)> = vec![
        (
            "signer bundles carry the signer prefix",
            ctb(&ar, "wrong-name", Some("example.com/signer"), &a),
            "metadata.name",
            "ClusterTrustBundle for signerName example.com/signer must be named with prefix example.com:signer:",
        ),
        (
            "bundles without signer have no ':'",
            ctb(&ar, "a:b", None, &a),
            "metadata.name",
            "must not have \":\" in its name",
        ),
        (
            "signer name syntax",
            ctb(&ar, "nodots:x:y", Some("nodots/x"), &a),
            "spec.signerName",
            "at least two segments",
        ),
        (
            "a private key is not a trust anchor",
            ctb(&ar, "k", None, &format!("{a}{key_pem}")),
            "spec.trustBundle",
            "entry 1 has bad block type: PRIVATE KEY",
        ),
        (
            "leaves are not trust anchors",
            ctb(&ar, "l", None, &leaf),
            "spec.trustBundle",
            "entry 0 does not have the CA bit set",
        ),
        (
            "duplicates",
            ctb(&ar, "d", None, &format!("{a}{b}{a}")),
            "spec.trustBundle",
            "duplicate trust anchor (indices [0, 2])",
        ),
        (
            "empty",
            ctb(&ar, "e", None, "no pem here"),
            "spec.trustBundle",
            "at least one trust anchor must be provided",
        ),
        (
            "PEM headers",
            ctb(
                &ar,
                "h",
                None,
                &a.replacen("-----\n", "-----\nProc-Type: 4,ENCRYPTED\n\n", 1),
            ),
            "spec.trustBundle",
            "entry 0 has PEM block headers",
        ),
    ];
    for (name, obj, field, fragment) in rows {
        let (code, fields, msg) = failure(api.create(&PostParams::default(), &obj).await);
        assert_eq!(code, 422, "{name}: {msg}");
        assert!(
            fields.iter().any(|f| f == field),
            "{name}: {fields:?} {msg}"
        );
        assert!(msg.contains(fragment), "{name}: {msg}");
    }

    // signerName is immutable; the bundle may change.
    let (code, fields, _) = failure(
        api.patch(
            "example.com:signer:one",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"signerName": "example.com/other"}})),
        )
        .await,
    );
    assert_eq!(code, 422);
    assert!(
        fields.contains(&"spec.signerName".to_string()),
        "{fields:?}"
    );
    api.patch(
        "example.com:signer:one",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"trustBundle": b}})),
    )
    .await
    .expect("bundle update");

    // Field selector on spec.signerName, as the real API offers.
    let listed = api
        .list(&ListParams::default().fields("spec.signerName=example.com/signer"))
        .await
        .expect("list");
    let names: Vec<String> = listed
        .items
        .iter()
        .map(|c| c.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(names, vec!["example.com:signer:one"]);

    // No namespaced form exists for a cluster-scoped kind.
    let ns_path = format!(
        "{}/apis/{}/namespaces/{NS}/clustertrustbundles",
        server.url(),
        ar.api_version
    );
    let (status, _) = raw_get(&ns_path).await;
    assert_eq!(status, 404);
}

async fn raw_get(url: &str) -> (u16, String) {
    let url = url.to_string();
    tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let rest = url.strip_prefix("http://").expect("http url");
        let (host, path) = rest.split_once('/').expect("path");
        let mut s = std::net::TcpStream::connect(host).expect("connect");
        write!(
            s,
            "GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        )
        .expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("read");
        let code = out
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        (code, out)
    })
    .await
    .expect("join")
}

fn describe<K: kube::Resource>(ev: &WatchEvent<K>) -> String {
    let name = |o: &K| o.meta().name.clone().unwrap_or_default();
    match ev {
        WatchEvent::Added(o) => format!("ADDED {}", name(o)),
        WatchEvent::Modified(o) => format!("MODIFIED {}", name(o)),
        WatchEvent::Deleted(o) => format!("DELETED {}", name(o)),
        WatchEvent::Bookmark(b) => format!("BOOKMARK {}", b.metadata.resource_version),
        WatchEvent::Error(e) => format!("ERROR {} {}", e.code, e.reason),
    }
}

#[tokio::test]
async fn watches_select_by_name_and_labels_resume_and_expire() {
    let (server, client) = start().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), NS);
    let first = cms
        .create(&PostParams::default(), &configmap("ca", &[("k", "1")]))
        .await
        .expect("create");
    let rv0 = first.metadata.resource_version.clone().unwrap();
    let mut by_name = cms
        .watch(
            &WatchParams::default()
                .fields("metadata.name=ca")
                .timeout(10),
            &rv0,
        )
        .await
        .expect("watch")
        .boxed();
    cms.create(&PostParams::default(), &configmap("other", &[("k", "1")]))
        .await
        .expect("create");
    // Another namespace's object of the same name is not in a namespaced watch.
    Api::<ConfigMap>::namespaced(client.clone(), "elsewhere")
        .create(&PostParams::default(), &configmap("ca", &[("k", "1")]))
        .await
        .expect("create");
    cms.patch(
        "ca",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"k": "2"}})),
    )
    .await
    .expect("patch");
    cms.delete("ca", &DeleteParams::default())
        .await
        .expect("delete");
    let mut seen = Vec::new();
    for _ in 0..2 {
        let ev = tokio::time::timeout(Duration::from_secs(10), by_name.next())
            .await
            .expect("event in time")
            .expect("open")
            .expect("ok");
        seen.push(describe(&ev));
    }
    assert_eq!(seen, vec!["MODIFIED ca", "DELETED ca"]);

    // ClusterTrustBundles by label selector.
    if let Some((ar, ctbs)) = ctb_api(&server, &client).await {
        let rv = server.store().resource_version().to_string();
        let mut labelled = ctbs
            .watch(
                &WatchParams::default()
                    .labels("env=prod")
                    .fields("spec.signerName=example.com/s")
                    .timeout(10),
                &rv,
            )
            .await
            .expect("watch")
            .boxed();
        let mut dev = ctb(
            &ar,
            "example.com:s:dev",
            Some("example.com/s"),
            &cert("dev", true),
        );
        dev.metadata.labels = Some(BTreeMap::from([("env".into(), "dev".into())]));
        let mut prod = ctb(
            &ar,
            "example.com:s:prod",
            Some("example.com/s"),
            &cert("prod", true),
        );
        prod.metadata.labels = Some(BTreeMap::from([("env".into(), "prod".into())]));
        ctbs.create(&PostParams::default(), &dev)
            .await
            .expect("dev");
        ctbs.create(&PostParams::default(), &prod)
            .await
            .expect("prod");
        let ev = tokio::time::timeout(Duration::from_secs(10), labelled.next())
            .await
            .expect("in time")
            .expect("open")
            .expect("ok");
        assert_eq!(describe(&ev), "ADDED example.com:s:prod");
    }

    // Resuming replays; after compaction the old revision gives 410.
    let replay: Vec<String> = cms
        .watch(&WatchParams::default().timeout(1), &rv0)
        .await
        .expect("resume")
        .map_ok(|e| describe(&e))
        .try_filter(|e| futures::future::ready(!e.starts_with("BOOKMARK")))
        .try_collect()
        .await
        .expect("replay");
    assert_eq!(replay, vec!["ADDED other", "MODIFIED ca", "DELETED ca"]);
    server.faults().expire_history();
    let expired: Vec<String> = cms
        .watch(&WatchParams::default().timeout(5), &rv0)
        .await
        .expect("watch")
        .map_ok(|e| describe(&e))
        .try_collect()
        .await
        .expect("events");
    assert_eq!(expired, vec!["ERROR 410 Expired"]);
}

// ---- the driver's trust cache against the stand-in ----

fn spec_with(configmaps: &[&str], secrets: &[&str]) -> TrustSpec {
    TrustSpec {
        issuer_ca: true,
        config_maps: configmaps
            .iter()
            .map(|e| KeyRef::parse(e).unwrap())
            .collect(),
        config_maps_attribute: "csi.certvol.io/trust-configmaps".into(),
        secrets: secrets.iter().map(|e| KeyRef::parse(e).unwrap()).collect(),
        secrets_attribute: "csi.certvol.io/trust-secrets".into(),
        cluster_bundles: Vec::new(),
        cluster_bundles_attribute: "csi.certvol.io/trust-cluster-bundles".into(),
        signer: None,
        signer_attribute: "csi.certvol.io/trust-signer-name".into(),
        public_roots: false,
    }
}

fn subjects(pem: &str) -> Vec<String> {
    x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes())
        .map(|p| {
            let p = p.expect("pem");
            let c = p.parse_x509().expect("x509");
            c.subject().to_string()
        })
        .collect()
}

const WITHIN: Duration = Duration::from_secs(5);

/// What the stand-in serves, discovered as `certvol node` discovers it (the cache reads
/// ClusterTrustBundles in the version found).
fn discovered(client: &Client) -> Apis {
    let (apis, discovering) = Apis::discover(client.clone(), discovery::CSR_API);
    tokio::spawn(discovering);
    apis
}

#[tokio::test]
async fn cache_follows_configmap_updates_and_shares_watches() {
    let (server, client) = start().await;
    let (cache, driver) = TrustCache::new(client.clone(), None, discovered(&client));
    let driver = tokio::spawn(driver);
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), NS);
    let (corp1, corp2, issuing) = (
        cert("corp-1", true),
        cert("corp-2", true),
        cert("issuing", true),
    );
    cms.create(
        &PostParams::default(),
        &configmap("corp", &[("ca.crt", corp1.as_str()), ("other", "x")]),
    )
    .await
    .expect("create");
    let spec = spec_with(&["corp/ca.crt"], &[]);
    let mut v1 = cache.subscribe(&spec, NS).expect("policy");
    let mut v2 = cache.subscribe(&spec, NS).expect("policy");
    assert_eq!(
        cache.watched(),
        vec![ObjectRef::ConfigMap {
            namespace: NS.into(),
            name: "corp".into()
        }],
        "two volumes naming one ConfigMap share one watch"
    );
    v1.ready(WITHIN).await.expect("ready");
    v2.ready(WITHIN).await.expect("ready");
    let bundle = v1.bundle(&issuing).expect("bundle");
    assert_eq!(subjects(&bundle.pem()), vec!["CN=issuing", "CN=corp-1"]);
    assert!(bundle.rejected.is_empty());

    // A change to another key of the same object is not a change of this source.
    cms.patch(
        "corp",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"other": "y"}})),
    )
    .await
    .expect("patch other");
    // Then the key the volumes read changes: both are told, within seconds.
    cms.patch(
        "corp",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"ca.crt": format!("{corp1}{corp2}")}})),
    )
    .await
    .expect("patch");
    for v in [&mut v1, &mut v2] {
        assert!(
            tokio::time::timeout(WITHIN, v.changed())
                .await
                .expect("notified in time")
        );
        let pem = v.bundle(&issuing).expect("bundle").pem();
        assert_eq!(subjects(&pem), vec!["CN=issuing", "CN=corp-1", "CN=corp-2"]);
    }
    // No spurious second notification: nothing changed since.
    assert!(
        tokio::time::timeout(Duration::from_millis(500), v1.changed())
            .await
            .is_err()
    );

    // Least privilege: every ConfigMap request was for the named object's namespace, and the
    // watch was name-selected (no unselected list or watch of the namespace).
    let cm_requests: Vec<_> = server
        .requests()
        .into_iter()
        .filter(|r| r.kind == Some(Kind::ConfigMap) && matches!(r.verb.as_str(), "list" | "watch"))
        .collect();
    assert!(!cm_requests.is_empty());
    assert!(
        cm_requests
            .iter()
            .all(|r| r.namespace.as_deref() == Some(NS)),
        "{cm_requests:?}"
    );
    assert!(
        cm_requests
            .iter()
            .all(|r| r.query.contains("fieldSelector=metadata.name%3Dcorp")),
        "{cm_requests:?}"
    );

    // Dropping the last subscriber stops the watch.
    drop(v1);
    assert_eq!(cache.watched().len(), 1);
    drop(v2);
    assert!(cache.watched().is_empty());
    drop(cache);
    tokio::time::timeout(WITHIN, driver)
        .await
        .expect("the cache's future ends once everything is dropped")
        .expect("join");
}

#[tokio::test]
async fn missing_objects_keys_and_deletions_are_typed_errors() {
    let (_server, client) = start().await;
    let (cache, driver) =
        TrustCache::new(client.clone(), Some("certvol".into()), discovered(&client));
    tokio::spawn(driver);
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), NS);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "certvol");

    // Missing ConfigMap: the error names the attribute and the object.
    let spec = spec_with(&["corp/ca.crt"], &["certvol/shared/roots.pem"]);
    let mut v = cache.subscribe(&spec, NS).expect("policy");
    let err = v.ready(WITHIN).await.expect_err("missing");
    assert!(matches!(err, SourceError::NotFound { .. }), "{err:?}");
    assert_eq!(err.attribute(), "csi.certvol.io/trust-configmaps");
    assert_eq!(
        err.to_string(),
        "volume attribute \"csi.certvol.io/trust-configmaps\": ConfigMap shop/corp does not exist; create it or change the attribute"
    );

    // Creating it without the key: a missing-key error listing the keys there are.
    cms.create(
        &PostParams::default(),
        &configmap("corp", &[("tls.crt", "x")]),
    )
    .await
    .expect("create");
    assert!(
        tokio::time::timeout(WITHIN, v.changed())
            .await
            .expect("notified")
    );
    let err = v.bundle("").expect_err("missing key");
    assert!(
        err.to_string()
            .contains("has no key \"ca.crt\"; its keys: tls.crt"),
        "{err}"
    );

    // Then the key, and the shared-namespace Secret: the bundle is whole.
    let corp = cert("corp", true);
    cms.patch(
        "corp",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"ca.crt": corp}})),
    )
    .await
    .expect("patch");
    let roots = cert("shared-root", true);
    secrets
        .create(
            &PostParams::default(),
            &Secret {
                metadata: meta("shared"),
                string_data: Some(BTreeMap::from([("roots.pem".into(), roots.clone())])),
                ..Secret::default()
            },
        )
        .await
        .expect("secret");
    let deadline = tokio::time::Instant::now() + WITHIN;
    let pem = loop {
        if let Ok(b) = v.bundle("") {
            break b.pem();
        }
        assert!(
            tokio::time::timeout_at(deadline, v.changed())
                .await
                .expect("in time"),
            "cache stopped"
        );
    };
    assert_eq!(subjects(&pem), vec!["CN=corp", "CN=shared-root"]);

    // Deleting the ConfigMap: notified, and the bundle is an error again (the caller keeps the
    // last good file and reports it).
    cms.delete("corp", &DeleteParams::default())
        .await
        .expect("delete");
    assert!(
        tokio::time::timeout(WITHIN, v.changed())
            .await
            .expect("notified")
    );
    let err = v.bundle("").expect_err("deleted");
    assert!(matches!(err, SourceError::NotFound { .. }), "{err:?}");

    // Namespace policy: another namespace than the pod's or the trust namespace is refused
    // before any watch starts.
    let before = cache.watched();
    let err = cache
        .subscribe(&spec_with(&["kube-system/x/ca.crt"], &[]), NS)
        .err()
        .expect("policy error");
    assert!(
        err.to_string().contains("names namespace \"kube-system\""),
        "{err}"
    );
    assert_eq!(cache.watched(), before);
}

#[tokio::test]
async fn cluster_trust_bundles_by_name_and_by_signer_and_labels() {
    let (server, client) = start().await;
    let Some((ar, ctbs)) = ctb_api(&server, &client).await else {
        return;
    };
    let (cache, driver) = TrustCache::new(client.clone(), None, discovered(&client));
    tokio::spawn(driver);
    let (n, p1, p2, d) = (
        cert("named", true),
        cert("prod-1", true),
        cert("prod-2", true),
        cert("dev", true),
    );
    ctbs.create(&PostParams::default(), &ctb(&ar, "named", None, &n))
        .await
        .expect("named");
    for (name, env, pem) in [
        ("example.com:s:b", "prod", &p1),
        ("example.com:s:dev", "dev", &d),
    ] {
        let mut o = ctb(&ar, name, Some("example.com/s"), pem);
        o.metadata.labels = Some(BTreeMap::from([("env".into(), env.into())]));
        ctbs.create(&PostParams::default(), &o)
            .await
            .expect("create");
    }
    let mut spec = spec_with(&[], &[]);
    spec.issuer_ca = false;
    spec.cluster_bundles = vec!["named".into()];
    spec.signer = Some(SignerSelector {
        signer_name: "example.com/s".into(),
        labels: BTreeMap::from([("env".into(), "prod".into())]),
    });
    let mut v = cache.subscribe(&spec, NS).expect("policy");
    v.ready(WITHIN).await.expect("ready");
    assert_eq!(
        subjects(&v.bundle("").unwrap().pem()),
        vec!["CN=named", "CN=prod-1"]
    );

    // A second prod bundle of the signer joins (ordered by object name), dev stays out.
    let mut o = ctb(
        &ar,
        "example.com:s:a",
        Some("example.com/s"),
        &format!("{p2}{p1}"),
    );
    o.metadata.labels = Some(BTreeMap::from([("env".into(), "prod".into())]));
    ctbs.create(&PostParams::default(), &o)
        .await
        .expect("create");
    assert!(
        tokio::time::timeout(WITHIN, v.changed())
            .await
            .expect("notified")
    );
    let bundle = v.bundle("").unwrap();
    assert_eq!(
        subjects(&bundle.pem()),
        vec!["CN=named", "CN=prod-2", "CN=prod-1"]
    );
    let where_from: Vec<&str> = bundle
        .certificates
        .iter()
        .map(|c| c.source.as_str())
        .collect();
    assert_eq!(
        where_from,
        vec![
            "ClusterTrustBundle named",
            "ClusterTrustBundle example.com:s:a",
            "ClusterTrustBundle example.com:s:a"
        ]
    );

    // Deleting every selected bundle is an error naming the selection.
    ctbs.delete("example.com:s:a", &DeleteParams::default())
        .await
        .expect("delete");
    ctbs.delete("example.com:s:b", &DeleteParams::default())
        .await
        .expect("delete");
    let deadline = tokio::time::Instant::now() + WITHIN;
    let err = loop {
        match v.bundle("") {
            Err(e) => break e,
            Ok(_) => assert!(
                tokio::time::timeout_at(deadline, v.changed())
                    .await
                    .expect("in time")
            ),
        }
    };
    assert_eq!(err.attribute(), "csi.certvol.io/trust-signer-name");
    assert!(
        err.to_string().contains(
            "there are no ClusterTrustBundles with signerName example.com/s and labels env=prod"
        ),
        "{err}"
    );
}

#[tokio::test]
async fn an_unreachable_api_times_out_with_the_watch_error() {
    let (server, client) = start().await;
    server.faults().fail_next(1000, 403);
    let (cache, driver) = TrustCache::new(client.clone(), None, discovered(&client));
    tokio::spawn(driver);
    let mut v = cache
        .subscribe(&spec_with(&["corp/ca.crt"], &[]), NS)
        .expect("policy");
    let err = v
        .ready(Duration::from_secs(2))
        .await
        .expect_err("times out");
    assert!(matches!(err, SourceError::Unavailable { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("ConfigMap shop/corp could not be read within 2s"),
        "{msg}"
    );
    assert!(
        msg.contains("403"),
        "the watch's last error explains why: {msg}"
    );
}

#[tokio::test]
async fn cache_recovers_from_dropped_and_expired_watches() {
    let (server, client) = start().await;
    let (cache, driver) = TrustCache::new(client.clone(), None, discovered(&client));
    tokio::spawn(driver);
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), NS);
    let (one, two) = (cert("one", true), cert("two", true));
    cms.create(
        &PostParams::default(),
        &configmap("corp", &[("ca.crt", one.as_str())]),
    )
    .await
    .expect("create");
    let mut spec = spec_with(&["corp/ca.crt"], &[]);
    spec.issuer_ca = false;
    let mut v = cache.subscribe(&spec, NS).expect("policy");
    v.ready(WITHIN).await.expect("ready");
    // The watch is cut and its history compacted: the watcher's resume gets 410 Gone, so it
    // must relist, and still deliver content changed after that. The cut reaches the server's
    // watch task asynchronously; an object changed before it does would still travel on the
    // old watch, so the change waits for the relist.
    let lists = || {
        server
            .requests()
            .iter()
            .filter(|r| r.kind == Some(Kind::ConfigMap) && r.verb == "list")
            .count()
    };
    server.faults().expire_history();
    server.faults().drop_watches();
    let relisted =
        certvol_e2e::eventually(Duration::from_secs(10), || (lists() >= 2).then_some(())).await;
    assert!(relisted.is_some(), "a relist happened: {} lists", lists());
    cms.patch(
        "corp",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"ca.crt": two}})),
    )
    .await
    .expect("patch");
    assert!(
        tokio::time::timeout(Duration::from_secs(10), v.changed())
            .await
            .expect("notified after the relist")
    );
    assert_eq!(subjects(&v.bundle("").unwrap().pem()), vec!["CN=two"]);
}
