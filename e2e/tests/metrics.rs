//! The real `certvol node` binary's operational endpoint: `/metrics` after two publishes through
//! kubelet's CSI calls, `/healthz` and `/readyz`, scraped with plain HTTP as Prometheus and the
//! kubelet probes do.

use certvol_driver::demo::kubelet::Pod;
use certvol_e2e::cluster::{Cluster, cm_volume};
use certvol_e2e::{Env, http_get, volume};
use certvol_e2e::{require_root, require_standin};

/// The value of the sample line `series` (name plus labels exactly as exposed).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

#[tokio::test]
async fn metrics_and_probes_after_two_publishes() {
    require_root!();
    // A free port: bind, note it, release it for the driver.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap();
    let mut env = Env::new();
    let address = addr.to_string();
    let _driver = env.start_with(&["--metrics-address", &address], &[]).await;

    // Probe answered ready, so recovery is done; the local CA is always reachable.
    let (status, body) = http_get(addr, "/healthz").await.expect("/healthz answers");
    assert_eq!(status, 200, "{body}");
    assert_eq!(http_get(addr, "/readyz").await.map(|r| r.0), Some(200));

    let kubelet = env.kubelet();
    let vol = volume([("csi.certvol.io/duration", "2h")]);
    let pods = [Pod::new("shop", "web-0"), Pod::new("shop", "web-1")];
    for pod in &pods {
        kubelet.publish(pod, &vol).await.expect("publish");
    }

    let (status, text) = http_get(addr, "/metrics").await.expect("/metrics answers");
    assert_eq!(status, 200);
    let v = |series: &str| sample(&text, series);
    assert_eq!(v("certvol_volumes"), Some(2.0), "{text}");
    assert_eq!(
        v("certvol_publish_duration_seconds_count"),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        v(r#"certvol_rpc_total{rpc="NodePublishVolume",code="OK"}"#),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        v(r#"certvol_issuance_total{issuer="local",outcome="issued"}"#),
        Some(2.0),
        "{text}"
    );
    let expiry = v("certvol_next_expiry_seconds").expect("next expiry sample");
    assert!(expiry > 7000.0 && expiry <= 7200.0, "{expiry}");
    // No pod or volume names in any series.
    assert!(!text.contains("web-0") && !text.contains("csi-"), "{text}");

    assert_eq!(http_get(addr, "/readyz").await.map(|r| r.0), Some(200));

    // Unpublishing one volume leaves one, the second unpublish of the same volume is a no-op OK.
    kubelet.unpublish(&pods[0], &vol).await.expect("unpublish");
    kubelet
        .unpublish(&pods[0], &vol)
        .await
        .expect("repeated unpublish");
    let (_, text) = http_get(addr, "/metrics").await.expect("/metrics answers");
    let v = |series: &str| sample(&text, series);
    assert_eq!(v("certvol_volumes"), Some(1.0), "{text}");
    assert_eq!(
        v("certvol_unpublish_duration_seconds_count"),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        v(r#"certvol_rpc_total{rpc="NodeUnpublishVolume",code="OK"}"#),
        Some(2.0),
        "{text}"
    );
    assert!(v("certvol_next_expiry_seconds").is_some(), "{text}");
}

#[tokio::test]
async fn cert_manager_issuance_and_api_requests_are_counted() {
    require_root!();
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap();
    let address = addr.to_string();
    let mut env = Env::new();
    let cluster = Cluster::start(env.path()).await;
    let _driver = env
        .start_cert_manager(&cluster, &["--metrics-address", &address], &[])
        .await;

    // Ready once the node's CertificateRequest watch has listed.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        if http_get(addr, "/readyz").await.map(|r| r.0) == Some(200) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "/readyz never answered 200: {:?}\n{}",
            http_get(addr, "/readyz").await,
            env.logs()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    let ns = cluster.namespace();
    let name = if cluster.is_real() {
        format!("metrics-{:08x}", rand::random::<u32>())
    } else {
        "metrics-0".to_owned()
    };
    let pod = cluster.create_pod(&ns, &name).await;
    let vol = cm_volume(&cluster.issuer_name(), [("csi.certvol.io/duration", "2h")]);
    env.kubelet().publish(&pod, &vol).await.expect("publish");

    let (status, text) = http_get(addr, "/metrics").await.expect("/metrics answers");
    assert_eq!(status, 200);
    let v = |series: &str| sample(&text, series);
    assert_eq!(
        v(r#"certvol_issuance_total{issuer="cert-manager",outcome="issued"}"#),
        Some(1.0),
        "{text}"
    );
    assert_eq!(v("certvol_volumes"), Some(1.0), "{text}");
    // The request was filed, and the node's watch is established.
    assert!(
        v(r#"certvol_kube_requests_total{verb="create",code="201"}"#).is_some_and(|n| n >= 1.0),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with(r#"certvol_kube_requests_total{verb="watch",code="200"}"#)),
        "{text}"
    );
    assert!(!text.contains(&name), "{text}");
}

#[tokio::test]
async fn a_taken_metrics_port_stops_start_up_with_a_clear_error() {
    require_root!();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let mut env = Env::new();
    let mut driver = env.spawn(&["--metrics-address", &address], &[]);
    let status = driver
        .wait_exit(std::time::Duration::from_secs(30))
        .expect("the driver exits");
    assert!(!status.success());
    let log = driver.log_text();
    assert!(
        log.contains("--metrics-address") && log.contains(&address),
        "{log}"
    );
    // It never served CSI.
    assert!(!env.socket.exists());
}

#[tokio::test]
async fn not_ready_until_the_certificate_request_watch_lists_nor_while_it_fails() {
    require_root!();
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap();
    const FAILURES: usize = 3;
    let address = addr.to_string();
    let mut env = Env::new();
    let cluster = Cluster::start(env.path()).await;
    let standin = require_standin!(cluster, "needs the stand-in's fault injection");
    // The API server answers the driver's first lists with 403 (as while its RBAC is not yet in
    // place; the client does not retry that itself); the watch backs off and lists again.
    standin.api.faults().fail_next(FAILURES, 403);
    let _driver = env
        .start_cert_manager(&cluster, &["--metrics-address", &address], &[])
        .await;

    // CSI Probe is ready (recovery done) but the issuer is not reachable yet. The driver's API
    // discovery at start-up, its CSIDriver read or its pod watch may be the requests that met a
    // 403; then that is the reason given.
    let (status, body) = http_get(addr, "/readyz").await.expect("/readyz answers");
    assert_eq!(status, 503, "{body}\n{}", env.logs());
    assert!(
        body.contains("issuer is not reachable")
            || body.contains("API discovery has not been answered yet")
            || body.contains("CSIDriver object \"csi.certvol.io\"")
            || body.contains("watch of pods with spec.nodeName=e2e-node"),
        "{body}"
    );
    assert_eq!(http_get(addr, "/healthz").await.map(|r| r.0), Some(200));

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while http_get(addr, "/readyz").await.map(|r| r.0) != Some(200) {
        assert!(
            std::time::Instant::now() < deadline,
            "never ready\n{}",
            env.logs()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let (_, text) = http_get(addr, "/metrics").await.expect("/metrics answers");
    assert_eq!(
        sample(
            &text,
            r#"certvol_kube_requests_total{verb="get",code="403"}"#
        ),
        Some(FAILURES as f64),
        "{text}"
    );

    // Later the API server stops answering the watch (its RBAC withdrawn, say): the node turns
    // not ready while the watch fails, and ready again once it answers.
    standin.api.faults().fail_next(2, 403);
    standin.api.faults().drop_watches();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (status, body) = http_get(addr, "/readyz").await.expect("/readyz answers");
        if status == 503 {
            // Either dropped watch may be the one that met the 403s: the request watch or the
            // node's pod watch (pod identity).
            assert!(
                body.contains("issuer is not reachable")
                    || body.contains("watch of pods with spec.nodeName=e2e-node is failing"),
                "{body}"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "/readyz stayed 200 while the watch failed\n{}",
            env.logs()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(http_get(addr, "/healthz").await.map(|r| r.0), Some(200));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while http_get(addr, "/readyz").await.map(|r| r.0) != Some(200) {
        assert!(
            std::time::Instant::now() < deadline,
            "never ready again\n{}",
            env.logs()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
