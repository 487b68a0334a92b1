//! Pod identity in API modes, through the real `certvol node` binary against the API stand-in:
//! a node whose CSIDriver lacks `podInfoOnMount: true` (or has none) never becomes ready and says
//! why; a publish whose volume context claims a pod that is not bound to this node as claimed is
//! refused with PermissionDenied, files nothing and leaves nothing; the honest publish works.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use certvol_driver::demo::kubelet::Pod;
use certvol_e2e::apiserver::Kind;
use certvol_e2e::cluster::{Cluster, NODE_ID, STANDIN_ISSUER, cm_volume, pod_object};
use certvol_e2e::require_root;
use certvol_e2e::{Env, http_get, read_volume};
use tonic::Code;

fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
}

/// Every CertificateRequest in the stand-in, in any namespace.
fn all_requests(cluster: &Cluster) -> Vec<serde_json::Value> {
    let standin = cluster.standin.as_ref().expect("stand-in");
    standin
        .api
        .store()
        .list(Kind::CertificateRequest, None, None)
}

/// The chart's CSIDriver replaced by `edit` of it (`None`: deleted).
fn edit_csidriver(cluster: &Cluster, edit: Option<fn(&mut serde_json::Value)>) {
    let store = cluster.standin.as_ref().expect("stand-in").api.store();
    let mut object = store
        .delete(Kind::CsiDriver, "", "csi.certvol.io")
        .expect("the harness installed the chart's CSIDriver");
    if let Some(edit) = edit {
        for field in ["uid", "resourceVersion", "creationTimestamp", "generation"] {
            if let Some(meta) = object["metadata"].as_object_mut() {
                meta.remove(field);
            }
        }
        edit(&mut object);
        store
            .create(Kind::CsiDriver, "", object)
            .expect("re-create the CSIDriver");
    }
}

/// (a) The driver starts, but `/readyz` stays 503 naming the CSIDriver and the field (or the
/// missing object), the log says so, and a publish is refused with the same text, filing nothing.
#[tokio::test]
async fn a_node_whose_csidriver_lacks_pod_info_on_mount_never_becomes_ready() {
    require_root!();
    type Edit = Option<fn(&mut serde_json::Value)>;
    let cases: [(&str, Edit, &[&str]); 3] = [
        (
            "podInfoOnMount unset",
            Some(|o| {
                o["spec"].as_object_mut().unwrap().remove("podInfoOnMount");
            }),
            &["\"csi.certvol.io\"", "spec.podInfoOnMount: true", "not set"],
        ),
        (
            "podInfoOnMount false",
            Some(|o| o["spec"]["podInfoOnMount"] = serde_json::json!(false)),
            &[
                "\"csi.certvol.io\"",
                "spec.podInfoOnMount: true",
                "it is false",
            ],
        ),
        (
            "no CSIDriver",
            None,
            &[
                "\"csi.certvol.io\"",
                "does not exist",
                "podInfoOnMount: true",
            ],
        ),
    ];
    for (case, edit, expected) in cases {
        let mut env = Env::new();
        let cluster = Cluster::start(env.path()).await;
        edit_csidriver(&cluster, edit);
        let addr = free_port();
        let address = addr.to_string();
        let _driver = env
            .start_cert_manager(&cluster, &["--metrics-address", &address], &[])
            .await;
        // Everything else comes up (discovery, the request watch) within a second or two here;
        // the node must stay not ready all the same, for the right reason.
        let deadline = Instant::now() + Duration::from_secs(6);
        let mut last = None;
        while Instant::now() < deadline {
            let (status, body) = http_get(addr, "/readyz").await.expect("/readyz answers");
            assert_eq!(status, 503, "{case}: ready although {body}\n{}", env.logs());
            last = Some(body);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let body = last.unwrap();
        for e in expected {
            assert!(body.contains(e), "{case}: /readyz says {body:?}, not {e:?}");
        }
        assert!(
            env.logs().contains("CSIDriver object \"csi.certvol.io\""),
            "{case}: the log does not name the CSIDriver:\n{}",
            env.logs()
        );

        let pod = cluster.create_pod("default", "web-0").await;
        let vol = cm_volume(STANDIN_ISSUER, []);
        let kubelet = env.kubelet();
        let err = kubelet.publish(&pod, &vol).await.unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition, "{case}: {err}");
        for e in expected {
            assert!(err.message().contains(e), "{case}: {}", err.message());
        }
        assert!(
            all_requests(&cluster).is_empty(),
            "{case}: a request was filed"
        );
        assert!(!kubelet.target_path(&pod, &vol).exists());
        env.assert_no_volume_left();
    }
}

/// (b) and (c): a context claiming another namespace's pod (bound to another node), this node's
/// pod with another uid, or its service account under another name, is refused with
/// PermissionDenied naming the mismatch; nothing is filed, nothing left on disk. The honest
/// publish of the pod the harness bound to this node is served.
#[tokio::test]
async fn a_publish_claiming_another_pods_identity_is_refused_and_files_nothing() {
    require_root!();
    let mut env = Env::new();
    let cluster = Cluster::start(env.path()).await;
    let standin = cluster.standin.as_ref().expect("stand-in");
    let _driver = env.start_cert_manager(&cluster, &[], &[]).await;
    let kubelet = env.kubelet();
    let vol = cm_volume(STANDIN_ISSUER, []);

    let honest = cluster.create_pod("default", "web-0").await;
    // A pod of another namespace on another node: its uid is real, it is just not ours.
    let victim = standin
        .api
        .store()
        .create(
            Kind::Pod,
            "bank",
            pod_object("bank", "vault-0", "other-node"),
        )
        .unwrap();
    let victim_uid = victim["metadata"]["uid"].as_str().unwrap().to_owned();

    let forged = |namespace: &str, name: &str, uid: &str, sa: &str| Pod {
        namespace: namespace.into(),
        name: name.into(),
        uid: uid.into(),
        service_account: sa.into(),
        ..honest.clone()
    };
    let other_uid = format!("has uid {:?}", honest.uid);
    let cases = [
        (
            forged("bank", "vault-0", &victim_uid, "default"),
            vec!["bank/vault-0", "no such pod is bound to this node", NODE_ID],
        ),
        (
            forged("bank", "web-0", &honest.uid, "default"),
            vec!["bank/web-0", "no such pod is bound to this node"],
        ),
        (
            forged("default", "web-0", &victim_uid, "default"),
            vec!["default/web-0", other_uid.as_str()],
        ),
        (
            forged("default", "web-0", &honest.uid, "cluster-admin"),
            vec!["runs as service account \"default\""],
        ),
    ];
    for (pod, expected) in &cases {
        let started = Instant::now();
        let err = kubelet.publish(pod, &vol).await.unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{pod:?}: {err}");
        for e in expected {
            assert!(err.message().contains(e), "{pod:?}: {}", err.message());
        }
        assert!(
            err.message().contains("csi.storage.k8s.io/pod.uid"),
            "{}",
            err.message()
        );
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "waited {:?}",
            started.elapsed()
        );
        assert!(!kubelet.target_path(pod, &vol).exists());
        env.assert_no_volume_left();
    }
    assert!(
        all_requests(&cluster).is_empty(),
        "requests were filed: {:?}",
        all_requests(&cluster)
    );

    // (c) The pod as kubelet would describe it.
    let target = kubelet.publish(&honest, &vol).await.unwrap();
    let files = read_volume(&target).unwrap();
    assert!(
        files
            .leaf
            .dns_names
            .contains(&"web-0.default.svc".to_string()),
        "{:?}",
        files.leaf.dns_names
    );
    let filed = all_requests(&cluster);
    assert_eq!(filed.len(), 1, "{filed:?}");
    assert_eq!(filed[0]["metadata"]["namespace"], "default");
    assert_eq!(
        filed[0]["metadata"]["ownerReferences"][0]["uid"],
        honest.uid.as_str()
    );
    kubelet.unpublish(&honest, &vol).await.unwrap();
}
