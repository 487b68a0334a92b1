//! One hostile tenant does at once everything issue 13 names, against the real `certvol node
//! --issuer cert-manager` binary and the API stand-in, while an honest tenant's volumes publish
//! and renew: the honest certificates never expire, and the driver's memory stays under the
//! chart's 128 MiB limit. Each bound has its own focused test elsewhere (hostile_requests,
//! trust_bundles, cert_manager_renewal, security, local_policy); this one shows them together.

use std::time::{Duration, Instant};

use certvol_driver::demo::kubelet::{InlineVolume, Pod};
use certvol_e2e::cluster::{Cluster, cm_volume};
use certvol_e2e::{Env, RenewalLog, hostile};
use certvol_e2e::{require_root, require_standin};
use tonic::Code;

const HOSTILE: &str = "hostile";
/// The chart's `resources.limits.memory`.
const CHART_MEMORY_LIMIT_KIB: u64 = 128 * 1024;

fn hostile_volume(cluster: &Cluster, extra: &[(&str, &str)]) -> InlineVolume {
    let mut attrs = vec![("csi.certvol.io/duration", "6s")];
    attrs.extend_from_slice(extra);
    cm_volume(&cluster.issuer_name(), attrs)
}

#[tokio::test]
async fn a_hostile_tenant_doing_everything_at_once_leaves_the_honest_tenant_renewing_on_time() {
    require_root!();
    let mut env = Env::new();
    let cluster = Cluster::start(env.path()).await;
    let standin = require_standin!(cluster, "floods the API and silences the signer");

    // 1. Big request objects shaped like the node's own, there before the driver starts (as at
    //    every restart).
    hostile::flood_requests(&cluster, HOSTILE, 40);
    let driver = env
        .start_cert_manager(
            &cluster,
            &["--renew-concurrency", "2", "--issue-timeout", "20s"],
            &[],
        )
        .await;
    let kubelet = env.kubelet();
    let (_, after_start) = driver.memory_kib().expect("memory");

    // The honest tenant: three pods whose certificates live 9 s (renewed every 6 s).
    let ns = cluster.namespace();
    let mut honest = Vec::new();
    for i in 0..3 {
        let pod = cluster.create_pod(&ns, &format!("honest-{i}")).await;
        let vol = cm_volume(&cluster.issuer_name(), [("csi.certvol.io/duration", "9s")]);
        // As kubelet does, a DeadlineExceeded is retried (resuming the same request): the
        // stand-in's signer works through the flood's big objects too, on the same CPUs.
        let mut attempt = 0;
        let target = loop {
            attempt += 1;
            match kubelet.publish(&pod, &vol).await {
                Ok(target) => break target,
                Err(e) if e.code() == Code::DeadlineExceeded && attempt < 3 => continue,
                Err(e) => panic!("honest publish: {e}\n--- log ---\n{}", env.logs()),
            }
        };
        honest.push((pod, vol, target));
    }

    // 2. A ConfigMap as big as the API allows, named by many volumes of many pods.
    let big = hostile::padded(&hostile::ca_pem("hostile CA"), 900 * 1024);
    hostile::create_configmap(&cluster, HOSTILE, "big", "ca.crt", &big).await;
    let mut pods: Vec<Pod> = Vec::new();
    for i in 0..6 {
        pods.push(cluster.create_pod(HOSTILE, &format!("hog-{i}")).await);
    }
    let big_trust = [("csi.certvol.io/trust-configmaps", "big/ca.crt")];
    let mut hostile_published = 0;
    for (i, pod) in pods.iter().enumerate() {
        for v in 0..5 {
            let mut vol = hostile_volume(&cluster, &big_trust);
            vol.name = format!("tls-{v}");
            // 3. Slow keys: a few RSA 4096 volumes among them.
            if i == 0 && v < 3 {
                vol.attributes
                    .insert("csi.certvol.io/key-algorithm".into(), "RSA".into());
                vol.attributes
                    .insert("csi.certvol.io/key-size".into(), "4096".into());
            }
            kubelet
                .publish(pod, &vol)
                .await
                .unwrap_or_else(|e| panic!("hostile publish {}/{}: {e}", pod.name, vol.name));
            hostile_published += 1;
        }
    }
    // 4. Too many sources in one volume: refused up front.
    let many: Vec<String> = (0..20).map(|i| format!("cm-{i}/ca.crt")).collect();
    let many = many.join(",");
    let err = kubelet
        .publish(
            &pods[1],
            &hostile_volume(&cluster, &[("csi.certvol.io/trust-configmaps", &many)]),
        )
        .await
        .expect_err("twenty trust sources in one volume");
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    // 5. From now on the hostile tenant's issuer never answers: every one of its volumes renews
    //    every few seconds into the void.
    standin.signer.set_silent(HOSTILE, true);

    // 6. Meanwhile a hostile pod claims to be in the honest namespace: the node's pod watch
    //    knows better (it waits a moment for the claimed pod, then refuses).
    let mut forged = pods[2].clone();
    forged.namespace = ns.clone();
    let forged_volume = hostile_volume(&cluster, &[]);
    let forged_publish = kubelet.publish(&forged, &forged_volume);

    // For 24 s the honest volumes always hold a valid certificate and keep renewing.
    let window = async {
        let started = Instant::now();
        let mut seen: Vec<RenewalLog> = honest
            .iter()
            .map(|(_, _, t)| RenewalLog::start(t))
            .collect();
        let mut peak = after_start;
        while started.elapsed() < Duration::from_secs(24) {
            for ((pod, _, target), log) in honest.iter().zip(seen.iter_mut()) {
                let who = format!("honest {} after {:?}", pod.name, started.elapsed());
                log.observe(target, &who, &env);
            }
            peak = peak.max(driver.memory_kib().expect("memory").1);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let closest = seen
            .iter()
            .map(|l| l.closest)
            .min()
            .unwrap_or(Duration::MAX);
        let serials: Vec<Vec<String>> = seen.into_iter().map(|l| l.serials).collect();
        (serials, closest, peak)
    };
    let (forged_result, (serials, closest, mut peak)) = tokio::join!(forged_publish, window);
    let err = forged_result.expect_err("a hostile pod claiming the honest namespace");
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");
    for ((pod, vol, _), seen) in honest.iter().zip(&serials) {
        assert!(
            seen.len() > 3,
            "{}: only {} renewals in 24 s\n--- log ---\n{}",
            pod.name,
            seen.len() - 1,
            env.logs()
        );
        let state = env.state(pod, vol).expect("honest state");
        assert_eq!(
            state.renewal.failures, 0,
            "{}: {:?}",
            pod.name, state.renewal
        );
    }
    let (rss, hwm) = driver.memory_kib().expect("memory");
    peak = peak.max(hwm);
    println!(
        "hostile tenant: 40 big requests, {hostile_published} volumes on a 900 KiB source (3 RSA 4096), a volume with 20 sources and a forged pod identity refused, a silent issuer; \
         honest renewals {:?}, closest to expiry {closest:?}; driver VmHWM {peak} KiB (after start {after_start} KiB, VmRSS now {rss} KiB)",
        serials.iter().map(|s| s.len() - 1).collect::<Vec<_>>()
    );
    assert!(
        peak < CHART_MEMORY_LIMIT_KIB * 3 / 4,
        "peak RSS {peak} KiB: too close to the chart's {CHART_MEMORY_LIMIT_KIB} KiB limit"
    );
}
