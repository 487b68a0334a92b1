use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

use super::content::content;
use super::limits::Bounds;
use super::task::Snapshot;
use super::value::{CTB_KEY, Value};
use super::*;
use crate::kube::discovery::Apis;
use crate::trust::bundle::SourcePem;
use crate::trust::source::{ObjectRef, ResolvedSource, TrustSpec};

fn source(object: ObjectRef, key: Option<&str>) -> ResolvedSource {
    ResolvedSource {
        object,
        key: key.map(str::to_owned),
        attribute: "csi.certvol.io/trust-configmaps".into(),
    }
}

type Entries<'a> = &'a [(&'a str, &'a [u8])];

fn bounds(max_source_bytes: usize, max_total_bytes: usize) -> Arc<Bounds> {
    Arc::new(Bounds {
        max_source_bytes,
        max_total_bytes,
        held: AtomicUsize::new(0),
    })
}

/// The node's byte budget: a value that does not fit is not kept, and what a value held is
/// released when it is dropped.
#[test]
fn values_reserve_and_release_the_byte_budget() {
    let b = bounds(100, 150);
    let first = Value::new(&[b'a'; 100], &b, None);
    assert!(matches!(first, Value::Text { .. }), "{first:?}");
    assert!(matches!(
        Value::new(&[b'a'; 101], &b, None),
        Value::TooLarge {
            bytes: 101,
            max: 100
        }
    ));
    let second = Value::new(&[b'b'; 60], &b, None);
    assert!(
        matches!(
            second,
            Value::OverBudget {
                bytes: 60,
                max: 150
            }
        ),
        "{second:?}"
    );
    assert!(matches!(Value::new(&[0xff; 60], &b, None), Value::NotText));
    assert_eq!(b.held.load(Ordering::Acquire), 100);
    // The same text again (a relist, an update of another key) reuses the reservation,
    // although a second 100 bytes would not fit.
    let again = Value::new(&[b'a'; 100], &b, Some(&first));
    assert!(matches!(again, Value::Text { .. }), "{again:?}");
    assert_eq!(b.held.load(Ordering::Acquire), 100);
    drop(again);
    drop(first);
    assert_eq!(b.held.load(Ordering::Acquire), 0);
    let third = Value::new(&[b'c'; 60], &b, None);
    assert!(matches!(third, Value::Text { .. }), "{third:?}");
    assert_eq!(b.held.load(Ordering::Acquire), 60);
}

fn snap(objects: &[(&str, Entries)]) -> Snapshot {
    Snapshot {
        objects: Some(
            objects
                .iter()
                .map(|(n, d)| {
                    (
                        (*n).to_owned(),
                        Arc::new(
                            d.iter()
                                .map(|(k, v)| {
                                    ((*k).to_owned(), Value::new(v, &bounds(64, 1 << 20), None))
                                })
                                .collect(),
                        ),
                    )
                })
                .collect(),
        ),
        error: None,
        no_api: false,
    }
}

#[test]
fn cache_and_subscriptions_can_move_between_tasks() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<TrustCache>();
    send::<VolumeTrust>();
}

#[test]
fn content_table() {
    let cm = ObjectRef::ConfigMap {
        namespace: "shop".into(),
        name: "ca".into(),
    };
    let secret = ObjectRef::Secret {
        namespace: "shop".into(),
        name: "ca".into(),
    };
    let signer = ObjectRef::Signer {
        signer_name: "example.com/s".into(),
        labels: String::new(),
    };
    let pending = Snapshot::default();
    assert_eq!(
        content(&source(cm.clone(), Some("ca.crt")), &pending),
        Ok(None)
    );
    type Row<'a> = (ResolvedSource, Snapshot, Result<Vec<&'a str>, &'a str>);
    let rows: Vec<Row> = vec![
        (
            source(cm.clone(), Some("ca.crt")),
            snap(&[("ca", &[("ca.crt", b"PEM")])]),
            Ok(vec!["ConfigMap shop/ca key ca.crt"]),
        ),
        (
            source(cm.clone(), Some("ca.crt")),
            snap(&[]),
            Err("ConfigMap shop/ca does not exist"),
        ),
        (
            source(cm.clone(), Some("ca.crt")),
            snap(&[("ca", &[("other", b"x"), ("z", b"y")])]),
            Err("ConfigMap shop/ca has no key \"ca.crt\"; its keys: other, z"),
        ),
        (
            source(cm.clone(), Some("ca.crt")),
            snap(&[("ca", &[("ca.crt", &[0xff, 0xfe])])]),
            Err("is not UTF-8 text"),
        ),
        (
            // A Secret's other keys are not named (whoever sees the pod's events may not
            // read the Secret).
            source(secret.clone(), Some("ca.crt")),
            snap(&[("ca", &[("tls.key", b"x")])]),
            Err("Secret shop/ca has no key \"ca.crt\"; its keys: not listed for a Secret"),
        ),
        (
            // Over the cap (64 bytes here): named with its size and the cap, and for a
            // Secret without its other keys or any content.
            source(secret.clone(), Some("ca.crt")),
            snap(&[("ca", &[("ca.crt", &[b'A'; 65]), ("tls.key", b"KEY")])]),
            Err(
                "Secret shop/ca key \"ca.crt\" is 65 bytes; a trust source may hold at most 64 bytes (the node's --max-trust-source-bytes)",
            ),
        ),
        (
            source(signer.clone(), None),
            snap(&[("a", &[(CTB_KEY, &[b'B'; 100])])]),
            Err(
                "ClusterTrustBundle a key \"trustBundle\" is 100 bytes; a trust source may hold at most 64",
            ),
        ),
        (
            source(signer.clone(), None),
            snap(&[]),
            Err("there are no ClusterTrustBundles with signerName example.com/s"),
        ),
        (
            source(signer.clone(), None),
            snap(&[("b", &[(CTB_KEY, b"2")]), ("a", &[(CTB_KEY, b"1")])]),
            Ok(vec!["ClusterTrustBundle a", "ClusterTrustBundle b"]),
        ),
    ];
    for (src, snap, want) in rows {
        match (content(&src, &snap), want) {
            (Ok(Some(pems)), Ok(labels)) => {
                let got: Vec<&str> = pems.iter().map(|p| p.label.as_str()).collect();
                assert_eq!(got, labels);
            }
            (Err(e), Err(fragment)) => {
                let msg = e.to_string();
                assert!(msg.contains(fragment), "{msg}");
                assert!(
                    !msg.contains("tls.key") && !msg.contains("AAA") && !msg.contains("BBB"),
                    "{msg}"
                );
                assert!(
                    msg.starts_with("volume attribute \"csi.certvol.io/trust-configmaps\""),
                    "{msg}"
                );
                assert_eq!(e.attribute(), "csi.certvol.io/trust-configmaps");
            }
            (got, want) => panic!("got {got:?}, want {want:?}"),
        }
    }
}

/// An API server of a given Kubernetes version as far as ClusterTrustBundles go: discovery
/// answers for `certificates.k8s.io/v1` (CSRs, plus ClusterTrustBundles if `ctb` is v1) and
/// for `ctb`; bundles are listed only in `ctb`; watches stay open without events. Everything
/// else is 404, as kube-apiserver answers for versions it does not serve.
fn apiserver(ctb: Option<&'static str>, seen: Arc<Mutex<Vec<String>>>) -> kube::Client {
    use crate::kube::fakeapi;
    use serde_json::json;
    fakeapi::client(move |req| {
        let seen = seen.clone();
        async move {
            seen.lock().push(format!("{}?{}", req.path, req.query));
            let path = req.path;
            let gv = |v: &str| format!("/apis/certificates.k8s.io/{v}");
            let mut resources = Vec::new();
            if path == gv("v1") {
                resources.push("certificatesigningrequests");
            }
            if ctb.is_some_and(|v| path == gv(v)) {
                resources.push("clustertrustbundles");
            }
            let listing = ctb.is_some_and(|v| path == format!("{}/clustertrustbundles", gv(v)));
            if listing && req.query.contains("watch=true") {
                // An open watch with nothing to report.
                std::future::pending::<()>().await;
            }
            if !resources.is_empty() {
                (
                    200,
                    fakeapi::resource_list(path.trim_start_matches("/apis/"), &resources),
                )
            } else if listing {
                let api_version = format!("certificates.k8s.io/{}", ctb.unwrap_or_default());
                (
                    200,
                    json!({"apiVersion": api_version, "kind": "ClusterTrustBundleList",
                           "metadata": {"resourceVersion": "7"},
                           "items": [{"apiVersion": api_version, "kind": "ClusterTrustBundle",
                                      "metadata": {"name": "example.com:s:a", "resourceVersion": "7"},
                                      "spec": {"signerName": "example.com/s", "trustBundle": "PEM-A"}}]}),
                )
            } else {
                (404, fakeapi::not_found())
            }
        }
    })
}

fn trust_spec(key: &str, value: &str) -> TrustSpec {
    let ctx = [
        ("csi.certvol.io/issuer-name", "ca"),
        ("csi.certvol.io/dns-names", "a.example"),
        (key, value),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    crate::spec::attrs::parse(&ctx).unwrap().trust.unwrap()
}

/// The trust watch reads ClusterTrustBundles in the version the server serves: v1 on 1.37
/// (where the old hard-coded v1beta1 404s), v1beta1 on 1.36 with the beta enabled, and on
/// 1.30 (none) the source fails with NoApi naming the attribute instead of waiting out a 404.
#[tokio::test]
async fn cluster_trust_bundles_are_watched_in_the_served_version() {
    for version in ["v1", "v1beta1"] {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let client = apiserver(Some(version), seen.clone());
        let (apis, discovering) = Apis::discover(client.clone(), crate::kube::discovery::CSR_API);
        let discovering = tokio::spawn(discovering);
        let (cache, drive) = TrustCache::new(client, None, apis);
        let drive = tokio::spawn(drive);
        for (key, value) in [
            ("csi.certvol.io/trust-cluster-bundles", "example.com:s:a"),
            ("csi.certvol.io/trust-signer-name", "example.com/s"),
        ] {
            let mut trust = cache.subscribe(&trust_spec(key, value), "shop").unwrap();
            trust
                .ready(Duration::from_secs(5))
                .await
                .unwrap_or_else(|e| panic!("{version} {key}: {e}"));
            let labels: Vec<String> = trust
                .sources("")
                .unwrap()
                .into_iter()
                .map(|s| s.label)
                .filter(|l| l.starts_with("ClusterTrustBundle"))
                .collect();
            assert_eq!(
                labels,
                ["ClusterTrustBundle example.com:s:a"],
                "{version} {key}"
            );
        }
        let lists: Vec<String> = seen
            .lock()
            .iter()
            .filter(|p| p.contains("/clustertrustbundles?"))
            .cloned()
            .collect();
        assert!(!lists.is_empty());
        let prefix = format!("/apis/certificates.k8s.io/{version}/clustertrustbundles?");
        assert!(lists.iter().all(|p| p.starts_with(&prefix)), "{lists:?}");
        drop(cache);
        drive.abort();
        discovering.await.unwrap();
    }

    let seen = Arc::new(Mutex::new(Vec::new()));
    let client = apiserver(None, seen.clone());
    let (apis, discovering) = Apis::discover(client.clone(), crate::kube::discovery::CSR_API);
    tokio::spawn(discovering);
    let (cache, drive) = TrustCache::new(client, None, apis);
    tokio::spawn(drive);
    let key = "csi.certvol.io/trust-cluster-bundles";
    let mut trust = cache
        .subscribe(&trust_spec(key, "example.com:s:a"), "shop")
        .unwrap();
    match trust.ready(Duration::from_secs(5)).await {
        Err(e @ SourceError::NoApi(_)) => {
            assert_eq!(e.attribute(), key);
            let msg = e.to_string();
            assert!(
                msg.starts_with("volume attribute \"csi.certvol.io/trust-cluster-bundles\" (\"example.com:s:a\") needs the ClusterTrustBundle API"),
                "{msg}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(
        !seen
            .lock()
            .iter()
            .any(|p| p.contains("/clustertrustbundles")),
        "no bundle read without the API: {:?}",
        seen.lock()
    );
}

/// An API server holding ConfigMaps (namespace, name) → data: lists by name answer with the
/// object (or none), watches stay open without events. Counts the lists.
type ConfigMaps = Vec<((&'static str, &'static str), Vec<(&'static str, String)>)>;

fn configmap_server(objects: ConfigMaps, lists: Arc<Mutex<usize>>) -> kube::Client {
    use crate::kube::fakeapi;
    use serde_json::json;
    let objects = Arc::new(objects);
    fakeapi::client(move |req| {
        let objects = objects.clone();
        let lists = lists.clone();
        async move {
            if req.query.contains("watch=true") {
                std::future::pending::<()>().await;
            }
            let wanted = req
                .query
                .split('&')
                .find_map(|p| p.strip_prefix("fieldSelector=metadata.name%3D"))
                .unwrap_or_default()
                .to_owned();
            *lists.lock() += 1;
            let items: Vec<_> = objects
                .iter()
                .filter(|((ns, name), _)| {
                    req.path == format!("/api/v1/namespaces/{ns}/configmaps") && *name == wanted
                })
                .map(|((ns, name), data)| {
                    let data: BTreeMap<&str, &str> =
                        data.iter().map(|(k, v)| (*k, v.as_str())).collect();
                    json!({"metadata": {"name": name, "namespace": ns,
                                        "resourceVersion": "5"},
                           "data": data})
                })
                .collect();
            (
                200,
                json!({"apiVersion": "v1", "kind": "ConfigMapList",
                       "metadata": {"resourceVersion": "5"}, "items": items}),
            )
        }
    })
}

fn configmaps_spec(entries: &str) -> TrustSpec {
    trust_spec("csi.certvol.io/trust-configmaps", entries)
}

/// 100 volumes naming one 1 MiB ConfigMap key hold one copy of it: the cache's value is the
/// only owner of the text once every volume has read it (subscribe and ready fingerprint
/// it, bundle sources are built from it), every volume's bundle source is that same
/// allocation, and the cache accounts 1 MiB. Before, each volume kept its own copy of the
/// text for change detection (and every read copied it again).
#[tokio::test]
async fn a_hundred_volumes_on_one_source_share_one_copy() {
    let pem = "x".repeat(1 << 20);
    let lists = Arc::new(Mutex::new(0));
    let client = configmap_server(
        vec![(("shop", "big"), vec![("ca.crt", pem.clone())])],
        lists.clone(),
    );
    let (apis, _) = Apis::discover(client.clone(), crate::kube::discovery::CSR_API);
    let (cache, drive) = TrustCache::new(client, None, apis);
    let drive = tokio::spawn(drive);
    let spec = configmaps_spec("big/ca.crt");
    let mut volumes = Vec::new();
    for _ in 0..100 {
        let mut v = cache.subscribe(&spec, "shop").unwrap();
        v.ready(Duration::from_secs(5)).await.unwrap();
        volumes.push(v);
    }
    let sources: Vec<SourcePem> = volumes
        .iter()
        .map(|v| {
            let mut s = v.sources("").unwrap();
            s.retain(|s| s.label == "ConfigMap shop/big key ca.crt");
            s.remove(0)
        })
        .collect();
    assert!(sources.iter().all(|s| Arc::ptr_eq(&s.pem, &sources[0].pem)));
    assert_eq!(&*sources[0].pem, pem.as_str());
    drop(sources);
    let text = {
        let watches = cache.shared.watches.lock();
        let entry = watches.entries.values().next().unwrap();
        let snap = entry.tx.borrow();
        match snap.objects.as_ref().unwrap()["big"].get("ca.crt") {
            Some(Value::Text { text, .. }) => text.clone(),
            other => panic!("{other:?}"),
        }
    };
    // The clone just taken, and the cache's own: no volume holds one.
    assert_eq!(Arc::strong_count(&text), 2);
    assert_eq!(cache.held_bytes(), 1 << 20);
    assert_eq!(*lists.lock(), 1, "one list for all volumes");
    drop(volumes);
    assert!(cache.watched().is_empty());
    drop(cache);
    drive.abort();
}

/// The volumes of one namespace may have at most `max_watches_per_namespace` distinct
/// objects watched: past it the publish is refused naming the first object over, the
/// namespace and the cap, and nothing is subscribed; objects the namespace already watches
/// are free; other namespaces have their own budget; dropping volumes frees it; a recovered
/// volume is counted but never refused.
#[tokio::test]
async fn distinct_watches_per_namespace_are_capped() {
    let lists = Arc::new(Mutex::new(0));
    let client = configmap_server(Vec::new(), lists);
    let (apis, _) = Apis::discover(client.clone(), crate::kube::discovery::CSR_API);
    let limits = TrustLimits {
        max_watches_per_namespace: 2,
        ..TrustLimits::default()
    };
    let (cache, _drive) = TrustCache::with_limits(client, None, apis, limits);
    let a = cache
        .subscribe(&configmaps_spec("a/k,b/k"), "shop")
        .unwrap();
    let watched = cache.watched();
    let Err(err) = cache.subscribe(&configmaps_spec("a/k,c/k,d/k"), "shop") else {
        panic!("over the budget");
    };
    assert!(matches!(err, SourceError::TooManyWatches { .. }), "{err:?}");
    assert_eq!(err.attribute(), "csi.certvol.io/trust-configmaps");
    assert_eq!(
        err.to_string(),
        "volume attribute \"csi.certvol.io/trust-configmaps\": ConfigMap shop/c would make 4 \
         distinct trust sources watched for the volumes of namespace \"shop\"; this node \
         watches at most 2 per namespace (--max-trust-watches-per-namespace): name fewer \
         distinct ConfigMaps, Secrets and ClusterTrustBundles, share them between volumes, or \
         remove volumes that name others"
    );
    assert_eq!(cache.watched(), watched, "nothing subscribed");
    // Already watched for this namespace (another key of the same object too): free.
    let again = cache
        .subscribe(&configmaps_spec("b/k,a/other"), "shop")
        .unwrap();
    // Another namespace's budget is its own, even for objects "shop" has watched.
    let other = cache.subscribe(&configmaps_spec("a/k,x/k"), "web").unwrap();
    assert!(cache.subscribe(&configmaps_spec("y/k"), "web").is_err());
    // A volume recovered after a restart is never refused, and past the budget a volume
    // naming only what the namespace watches already is still fine.
    let recovered = cache.resubscribe(&configmaps_spec("c/k"), "shop").unwrap();
    let within = cache
        .subscribe(&configmaps_spec("c/k,a/k"), "shop")
        .unwrap();
    assert!(cache.subscribe(&configmaps_spec("d/k"), "shop").is_err());
    drop((recovered, again, within));
    drop(a);
    // "shop" holds nothing now; "web" still holds a and x.
    let c = cache
        .subscribe(&configmaps_spec("c/k,d/k"), "shop")
        .unwrap();
    assert_eq!(cache.watched().len(), 4, "{:?}", cache.watched());
    drop((c, other));
    assert!(cache.watched().is_empty());
}

/// `--max-trust-bytes` through the cache: with room for one 1 MiB source, a second distinct
/// one fails its volume with OverBudget naming the object, the key and the budget; once the
/// first is no longer named, the retried volume (a fresh watch) reads it.
#[tokio::test]
async fn the_node_byte_budget_refuses_a_source_that_does_not_fit() {
    let big = "x".repeat(1 << 20);
    let client = configmap_server(
        vec![
            (("shop", "one"), vec![("ca.crt", big.clone())]),
            (("shop", "two"), vec![("ca.crt", big.clone())]),
        ],
        Arc::new(Mutex::new(0)),
    );
    let (apis, _) = Apis::discover(client.clone(), crate::kube::discovery::CSR_API);
    let limits = TrustLimits {
        max_total_bytes: 3 << 19,
        ..TrustLimits::default()
    };
    let (cache, drive) = TrustCache::with_limits(client, None, apis, limits);
    let drive = tokio::spawn(drive);
    let mut one = cache
        .subscribe(&configmaps_spec("one/ca.crt"), "shop")
        .unwrap();
    one.ready(Duration::from_secs(5)).await.unwrap();
    let mut two = cache
        .subscribe(&configmaps_spec("two/ca.crt"), "shop")
        .unwrap();
    let err = two.ready(Duration::from_secs(5)).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "volume attribute \"csi.certvol.io/trust-configmaps\": ConfigMap shop/two key \
         \"ca.crt\" (1048576 bytes) is not kept: this node's trust sources would hold more \
         than 1572864 bytes in all (--max-trust-bytes); retried when the object changes or \
         once no volume on the node names it"
    );
    assert_eq!(cache.held_bytes(), 1 << 20);
    drop((one, two));
    // The watches stop as their tasks see it; the budget is released with their state.
    let released = async {
        while cache.held_bytes() != 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), released)
        .await
        .expect("released");
    let mut two = cache
        .subscribe(&configmaps_spec("two/ca.crt"), "shop")
        .unwrap();
    two.ready(Duration::from_secs(5)).await.unwrap();
    assert_eq!(cache.held_bytes(), 1 << 20);
    drop(two);
    drop(cache);
    drive.abort();
}
