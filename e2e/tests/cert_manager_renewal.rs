//! The real `certvol node --issuer cert-manager` binary through renewal and API trouble: renewal
//! files a new CertificateRequest, swaps the files atomically and prunes the old request; a CA
//! rotation reaches ca.crt; an API outage keeps the old certificate and recovers; a dropped or
//! expired watch still delivers the result; 100 concurrent publishes stay one request each.
//!
//! By default against the in-process API stand-in and cert-manager stand-in; the scenarios that
//! need the stand-in's controls (CA rotation, fault injection) skip themselves on a real cluster.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};

use certvol_driver::demo::kubelet::{InlineVolume, Pod, volume_id};
use certvol_driver::issuer::certmanager::CertificateRequest;
use certvol_driver::issuer::request_name;
use certvol_driver::x509::pki;
use certvol_e2e::apiserver::{ApiServer, Kind};
use certvol_e2e::cluster::{Cluster, NODE_ID, cm_volume};
use certvol_e2e::{Env, PairReader, ReaderReport, RenewalLog, eventually, read_volume, until};
use certvol_e2e::{require_root, require_standin};

/// A pod name that cannot collide with one left behind by an earlier run on a real cluster.
fn unique(base: &str) -> String {
    format!("{base}-{:06x}", rand::random::<u32>() & 0xff_ffff)
}

/// The CertificateRequests the node filed for `pod` (owned by it).
async fn requests_of(cluster: &Cluster, pod: &Pod) -> Vec<CertificateRequest> {
    cluster
        .requests(&pod.namespace)
        .await
        .into_iter()
        .filter(|cr| owned_by(cr, pod))
        .collect()
}

fn owned_by(cr: &CertificateRequest, pod: &Pod) -> bool {
    cr.metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.kind == "Pod" && o.uid == pod.uid)
}

fn name_of(cr: &CertificateRequest) -> String {
    cr.metadata.name.clone().unwrap_or_default()
}

/// How many creates of CertificateRequests the API server answered with `status`.
fn creates_with(api: &ApiServer, status: u16) -> usize {
    api.requests()
        .iter()
        .filter(|r| {
            r.verb == "create" && r.kind == Some(Kind::CertificateRequest) && r.status == status
        })
        .count()
}

/// Requests on CertificateRequests by verb, for the closing notes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Counts {
    creates: usize,
    gets: usize,
    lists: usize,
    watches: usize,
    deletes: usize,
    total: usize,
}

impl Counts {
    fn of(api: &ApiServer) -> Counts {
        let cr = |verb| api.count(verb, Kind::CertificateRequest);
        Counts {
            creates: cr("create"),
            gets: cr("get"),
            lists: cr("list"),
            watches: cr("watch"),
            deletes: cr("delete"),
            total: api.requests().len(),
        }
    }

    fn since(self, before: Counts) -> Counts {
        Counts {
            creates: self.creates - before.creates,
            gets: self.gets - before.gets,
            lists: self.lists - before.lists,
            watches: self.watches - before.watches,
            deletes: self.deletes - before.deletes,
            total: self.total - before.total,
        }
    }
}

fn serial(target: &std::path::Path) -> String {
    read_volume(target)
        .unwrap_or_else(|e| panic!("volume at {}: {e}", target.display()))
        .leaf
        .serial_hex
}

#[tokio::test]
async fn renewal_files_a_new_request_swaps_files_atomically_and_prunes_the_old_request() {
    require_root!();
    let mut env = Env::new();
    let cluster = Cluster::start(env.path()).await;
    let _driver = env.start_cert_manager(&cluster, &[], &[]).await;
    let kubelet = env.kubelet();
    let pod = cluster
        .create_pod(&cluster.namespace(), &unique("renewing"))
        .await;
    let vol = cm_volume(&cluster.issuer_name(), [("csi.certvol.io/duration", "6s")]);
    let started = Instant::now();
    let target = kubelet.publish(&pod, &vol).await.expect("publish");
    let first = serial(&target);

    // One `..data` generation per read: key, chain and CA must always belong together.
    let reader = PairReader::start(&target);
    // Two renewals: at about 4 s and 8 s (two thirds of 6 s each).
    let renewed = eventually(Duration::from_secs(25), || {
        let s = env.state(&pod, &vol)?;
        (s.current.as_ref()?.revision >= 3).then_some(s)
    })
    .await;
    let ReaderReport {
        reads,
        serials,
        errors: bad,
    } = reader.stop();
    let renewed = renewed.unwrap_or_else(|| {
        panic!(
            "two renewals within 25 s; state {:?}\n--- log ---\n{}",
            env.state(&pod, &vol),
            env.logs()
        )
    });
    assert!(
        bad.is_empty(),
        "a reader saw {} inconsistent reads, e.g. {:?}",
        bad.len(),
        bad.first()
    );
    assert!(reads > 50, "reader made only {reads} reads");
    assert!(
        serials.len() >= 3,
        "reader saw {serials:?}, expected the first certificate and two renewals"
    );
    assert_ne!(serial(&target), first);
    assert_eq!(renewed.renewal.failures, 0, "{:?}", renewed.renewal);

    // --request-history defaults to 1: once a renewal settles, the node keeps exactly the newest
    // request, both in its state and in the API. Checked together at one settled moment, since
    // the next renewal follows about 4 s later.
    let vid = volume_id(&pod.uid, &vol.name);
    let settled = until(Duration::from_secs(10), || async {
        let state = env.state(&pod, &vol)?;
        let current = state.current.as_ref()?;
        let in_api: Vec<String> = requests_of(&cluster, &pod)
            .await
            .iter()
            .map(name_of)
            .collect();
        let newest = request_name(NODE_ID, &vid, current.revision);
        (state.pending.is_none() && state.requests == [newest.clone()] && in_api == [newest])
            .then_some(state)
    })
    .await;
    let Some(settled) = settled else {
        let in_api: Vec<String> = requests_of(&cluster, &pod)
            .await
            .iter()
            .map(name_of)
            .collect();
        panic!(
            "old requests not pruned: state {:?}, in the API {in_api:?}",
            env.state(&pod, &vol).map(|s| s.requests)
        );
    };

    // Each issuance is exactly one create: every revision was filed once, none twice.
    if let Some(s) = &cluster.standin {
        assert_eq!(
            creates_with(&s.api, 201) as u64,
            settled.last_revision,
            "one create per issuance"
        );
        assert_eq!(creates_with(&s.api, 409), 0, "no request filed twice");
        assert_eq!(
            s.api.count("delete", Kind::CertificateRequest) as u64,
            settled.last_revision - 1,
            "each superseded request deleted once"
        );
        println!(
            "renewal: {} issuances in {:?}, {reads} consistent reads; CertificateRequest API calls: {:?}",
            settled.last_revision,
            started.elapsed(),
            Counts::of(&s.api)
        );
    }
    cluster.delete_pod(&pod).await;
}

#[tokio::test]
async fn ca_rotation_reaches_ca_crt_at_the_next_renewal() {
    require_root!();
    let mut env = Env::new();
    let cluster = Cluster::start(env.path()).await;
    let s = require_standin!(cluster, "rotating the CA needs the cert-manager stand-in");
    let _driver = env.start_cert_manager(&cluster, &[], &[]).await;
    let kubelet = env.kubelet();
    let pod = cluster
        .create_pod(&cluster.namespace(), &unique("rotating"))
        .await;
    let vol = cm_volume(&cluster.issuer_name(), [("csi.certvol.io/duration", "6s")]);
    let target = kubelet.publish(&pod, &vol).await.expect("publish");

    let old_ca = pki::parse_pem_chain(&s.signer.ca_pem()).unwrap();
    let before = read_volume(&target).unwrap();
    assert_eq!(
        before.ca.first().map(|c| &c.der),
        Some(&old_ca[0].der),
        "ca.crt is the issuing CA"
    );

    s.signer.rotate_ca();
    let new_ca = pki::parse_pem_chain(&s.signer.ca_pem()).unwrap();
    assert_ne!(new_ca[0].der, old_ca[0].der);

    let after = eventually(Duration::from_secs(15), || {
        read_volume(&target)
            .ok()
            .filter(|f| f.ca.iter().any(|c| c.der == new_ca[0].der))
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "ca.crt never carried the new CA\n--- log ---\n{}",
            env.logs()
        )
    });
    assert_ne!(after.leaf.serial_hex, before.leaf.serial_hex);
    assert_eq!(after.leaf.issuer, new_ca[0].subject);
    // The leaf chains to the new CA alone, and no longer to the old one.
    pki::verify_chain(&after.chain, &new_ca, SystemTime::now()).expect("leaf chains to the new CA");
    assert!(
        pki::verify_chain(&after.chain, &old_ca, SystemTime::now()).is_err(),
        "the renewed leaf must not verify against the rotated-out CA"
    );
}

#[tokio::test]
async fn api_outage_during_renewal_keeps_the_old_certificate_and_recovers() {
    require_root!();
    let mut env = Env::new();
    let cluster = Cluster::start(env.path()).await;
    let s = require_standin!(
        cluster,
        "an API outage needs the stand-in's fault injection"
    );
    let _driver = env.start_cert_manager(&cluster, &[], &[]).await;
    let kubelet = env.kubelet();
    let pod = cluster
        .create_pod(&cluster.namespace(), &unique("outage"))
        .await;
    let vol = cm_volume(&cluster.issuer_name(), [("csi.certvol.io/duration", "6s")]);
    let target = kubelet.publish(&pod, &vol).await.expect("publish");
    let first = read_volume(&target).unwrap();

    // 500, not 503: kube-rs retries 429/503/504 internally, which would hide the outage.
    s.api.faults().fail_next(usize::MAX, 500);
    let failed = eventually(Duration::from_secs(10), || {
        let st = env.state(&pod, &vol)?;
        (st.renewal.failures >= 1).then_some(st)
    })
    .await;
    // Read before anything else: the 6 s certificate is valid for about 2 s more.
    let during = read_volume(&target);
    let failed = failed.unwrap_or_else(|| {
        s.api.faults().fail_next(0, 500);
        panic!("no failed renewal recorded\n--- log ---\n{}", env.logs())
    });
    let during = during.expect("the old pair stays in place and valid");
    assert_eq!(during.leaf.serial_hex, first.leaf.serial_hex);
    assert!(
        failed.renewal.last_error.is_some(),
        "the failure is recorded: {:?}",
        failed.renewal
    );
    // The failure is saved to state.json before it is logged.
    let logged = eventually(Duration::from_secs(5), || {
        env.logs().contains("renewal failed").then_some(())
    })
    .await;
    assert!(
        logged.is_some(),
        "the driver logs the failed renewal\n--- log ---\n{}",
        env.logs()
    );

    s.api.faults().fail_next(0, 500);
    let restored = Instant::now();
    let renewed = eventually(Duration::from_secs(20), || {
        read_volume(&target)
            .ok()
            .filter(|f| f.leaf.serial_hex != first.leaf.serial_hex)
    })
    .await;
    assert!(
        renewed.is_some(),
        "no renewal within 20 s of the API coming back\n--- log ---\n{}",
        env.logs()
    );
    println!(
        "outage: renewed {:?} after the API came back",
        restored.elapsed()
    );
    // The files are swapped just before state.json records the renewal.
    let serial = renewed.map(|f| f.leaf.serial_hex).unwrap_or_default();
    let state = eventually(Duration::from_secs(5), || {
        env.state(&pod, &vol)
            .filter(|st| st.current.as_ref().is_some_and(|c| c.serial == serial))
    })
    .await
    .expect("state.json records the renewed certificate");
    assert_eq!(state.renewal.failures, 0, "{:?}", state.renewal);
    // Retries reuse the pending request's name: each revision was created once, none twice.
    assert_eq!(
        creates_with(&s.api, 201) as u64,
        state.last_revision,
        "one successful create per revision"
    );
    assert_eq!(creates_with(&s.api, 409), 0, "no request filed twice");
}

/// Publishes with a 2 s signing delay and, once the request is filed and still unsigned, closes
/// every watch (after compacting the history when `expire`, so resuming gets 410 Gone). The
/// publish must still end with the right certificate, from a single request.
async fn publish_through_watch_fault(expire: bool) {
    let mut env = Env::new();
    let cluster = Cluster::start(env.path()).await;
    let s = require_standin!(
        cluster,
        "dropping watches needs the stand-in's fault injection"
    );
    let _driver = env.start_cert_manager(&cluster, &[], &[]).await;
    let kubelet = env.kubelet();
    s.signer.set_delay(Duration::from_secs(2));
    let pod = cluster
        .create_pod(&cluster.namespace(), &unique("watch"))
        .await;
    let vol = cm_volume(&cluster.issuer_name(), []);
    let publish = {
        let (k, p, v) = (kubelet.clone(), pod.clone(), vol.clone());
        tokio::spawn(async move { k.publish(&p, &v).await })
    };
    let filed = until(Duration::from_secs(10), || async {
        (!requests_of(&cluster, &pod).await.is_empty()).then_some(())
    })
    .await;
    assert!(filed.is_some(), "no request filed\n{}", env.logs());
    assert_eq!(s.signer.signed(), 0, "the fault must hit mid-issuance");
    let lists_before = s.api.count("list", Kind::CertificateRequest);
    let watches_before = s.api.count("watch", Kind::CertificateRequest);
    if expire {
        // Compact first, so the watch's resume point is gone when it reconnects.
        s.api.faults().expire_history();
    }
    s.api.faults().drop_watches();

    let target = tokio::time::timeout(Duration::from_secs(20), publish)
        .await
        .unwrap_or_else(|_| panic!("publish hung after the watch fault\n{}", env.logs()))
        .unwrap()
        .unwrap_or_else(|e| panic!("publish failed after the watch fault: {e}\n{}", env.logs()));
    let files = read_volume(&target).expect("correct files");
    assert_eq!(
        files.leaf.dns_names,
        vec![format!("{}.{}.svc", pod.name, pod.namespace)]
    );
    assert_eq!(
        files.ca.first().map(|c| &c.der),
        Some(&pki::parse_pem_chain(&s.signer.ca_pem()).unwrap()[0].der)
    );
    assert_eq!(s.api.count("create", Kind::CertificateRequest), 1);
    assert!(
        s.api.count("watch", Kind::CertificateRequest) > watches_before,
        "the node re-established its watch"
    );
    let lists = s.api.count("list", Kind::CertificateRequest);
    if expire {
        assert!(lists > lists_before, "the watch relisted after 410 Gone");
    } else {
        assert_eq!(
            lists, lists_before,
            "a dropped watch resumes from its resourceVersion without a relist"
        );
    }
}

#[tokio::test]
async fn dropped_watch_mid_issuance_still_delivers_the_result() {
    require_root!();
    publish_through_watch_fault(false).await;
}

#[tokio::test]
async fn expired_watch_history_mid_issuance_still_delivers_the_result() {
    require_root!();
    publish_through_watch_fault(true).await;
}

#[tokio::test]
async fn hundred_concurrent_publishes_file_one_request_each_and_clean_up() {
    require_root!();
    const PODS: usize = 100;
    // The driver's client-side limit (client-go style) is what bounds a mass publish: `BURST`
    // creates go at once, the rest at `QPS`. Above the default 10/s to keep the test short.
    const QPS: u32 = 25;
    const BURST: u32 = 20;
    let mut env = Env::new();
    let cluster = Cluster::start(env.path()).await;
    let (qps, burst) = (QPS.to_string(), BURST.to_string());
    let _driver = env
        .start_cert_manager(
            &cluster,
            &["--kube-api-qps", &qps, "--kube-api-burst", &burst],
            &[],
        )
        .await;
    let kubelet = env.kubelet();
    let ns = cluster.namespace();
    let run = unique("bulk");
    let mut pods = Vec::with_capacity(PODS);
    for i in 0..PODS {
        pods.push(cluster.create_pod(&ns, &format!("{run}-{i}")).await);
    }
    let vol: InlineVolume = cm_volume(&cluster.issuer_name(), []);
    let before = cluster.standin.as_ref().map(|s| Counts::of(&s.api));

    let started = Instant::now();
    let mut calls = Vec::with_capacity(PODS);
    for pod in &pods {
        let (k, p, v) = (kubelet.clone(), pod.clone(), vol.clone());
        calls.push(tokio::spawn(async move { k.publish(&p, &v).await }));
    }
    let mut targets = Vec::with_capacity(PODS);
    for (pod, call) in pods.iter().zip(calls) {
        let target = call
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("publish {}: {e}\n{}", pod.name, env.logs()));
        targets.push(target);
    }
    let wall = started.elapsed();

    for (pod, target) in pods.iter().zip(&targets) {
        let files = read_volume(target).unwrap_or_else(|e| panic!("{}: {e}", pod.name));
        assert_eq!(
            files.leaf.dns_names,
            vec![format!("{}.{}.svc", pod.name, pod.namespace)]
        );
    }
    // Exactly one request per pod.
    let all = cluster.requests(&ns).await;
    let mut per_pod: BTreeMap<&str, usize> = BTreeMap::new();
    for cr in &all {
        if let Some(p) = pods.iter().find(|p| owned_by(cr, p)) {
            *per_pod.entry(p.name.as_str()).or_default() += 1;
        }
    }
    assert_eq!(per_pod.len(), PODS, "every pod has a request");
    assert!(
        per_pod.values().all(|&n| n == 1),
        "one request per pod: {per_pod:?}"
    );
    match (&cluster.standin, before) {
        (Some(s), Some(before)) => {
            let c = Counts::of(&s.api).since(before);
            println!(
                "{PODS} concurrent publishes: {wall:?}; CertificateRequest API calls: {} creates, \
                 {} gets, {} lists, {} watches; {} requests in all",
                c.creates, c.gets, c.lists, c.watches, c.total
            );
            assert_eq!(c.creates, PODS, "{c:?}");
        }
        _ => println!("{PODS} concurrent publishes: {wall:?}"),
    }
    assert!(wall < Duration::from_secs(60), "took {wall:?}");
    // One create per pod through the limiter: the API server never saw them all at once.
    let throttled = Duration::from_secs_f64((PODS as u32 - BURST) as f64 / QPS as f64);
    assert!(
        wall >= throttled.mul_f64(0.9),
        "{PODS} creates in {wall:?}: faster than --kube-api-qps {QPS} allows ({throttled:?})"
    );

    let before = cluster.standin.as_ref().map(|s| Counts::of(&s.api));
    let started = Instant::now();
    let mut calls = Vec::with_capacity(PODS);
    for pod in &pods {
        let (k, p, v) = (kubelet.clone(), pod.clone(), vol.clone());
        calls.push(tokio::spawn(async move { k.unpublish(&p, &v).await }));
    }
    for (pod, call) in pods.iter().zip(calls) {
        call.await
            .unwrap()
            .unwrap_or_else(|e| panic!("unpublish {}: {e}", pod.name));
    }
    let wall = started.elapsed();
    match (&cluster.standin, before) {
        (Some(s), Some(before)) => {
            let c = Counts::of(&s.api).since(before);
            println!(
                "{PODS} concurrent unpublishes: {wall:?}; {} CertificateRequest deletes, {} requests in all",
                c.deletes, c.total
            );
        }
        _ => println!("{PODS} concurrent unpublishes: {wall:?}"),
    }
    let leftover = cluster
        .requests(&ns)
        .await
        .into_iter()
        .filter(|cr| pods.iter().any(|p| owned_by(cr, p)))
        .map(|cr| name_of(&cr))
        .collect::<Vec<_>>();
    assert!(leftover.is_empty(), "requests left: {leftover:?}");
    let mounts: Vec<_> = env
        .mounts()
        .into_iter()
        .filter(|m| m.source.starts_with("certvol:"))
        .collect();
    assert!(mounts.is_empty(), "mounts left: {mounts:?}");
    assert!(targets.iter().all(|t| !t.exists()), "targets removed");
    for pod in &pods {
        cluster.delete_pod(pod).await;
    }
}

/// Issue 13, renewals: with a single renewal worker (`--renew-concurrency 1`), a namespace
/// whose signer never answers its renewals must not keep another namespace's renewals from
/// finishing before its certificates expire. Each hostile renewal waits `--issue-timeout`
/// (20 s) for an answer, more than three times the honest certificate's whole 6 s life, so a
/// worker held while waiting lets the honest certificate expire.
#[tokio::test]
async fn a_namespace_whose_signer_never_answers_does_not_starve_another_namespaces_renewals() {
    require_root!();
    const HOSTILE: &str = "hostile";
    let mut env = Env::new();
    let cluster = Cluster::start(env.path()).await;
    let s = require_standin!(
        cluster,
        "silencing the signer for one namespace needs the cert-manager stand-in"
    );
    let _driver = env
        .start_cert_manager(
            &cluster,
            &["--renew-concurrency", "1", "--issue-timeout", "20s"],
            &[],
        )
        .await;
    let kubelet = env.kubelet();
    let short = [("csi.certvol.io/duration", "6s")];
    let mut hostile = Vec::new();
    for i in 0..3 {
        let pod = cluster.create_pod(HOSTILE, &unique(&format!("h{i}"))).await;
        let vol = cm_volume(&cluster.issuer_name(), short);
        kubelet.publish(&pod, &vol).await.expect("hostile publish");
        hostile.push((pod, vol));
    }
    // From now on the hostile namespace's renewals are filed and never answered.
    s.signer.set_silent(HOSTILE, true);
    let honest_pod = cluster
        .create_pod(&cluster.namespace(), &unique("honest"))
        .await;
    let honest_vol = cm_volume(&cluster.issuer_name(), short);
    let target = kubelet
        .publish(&honest_pod, &honest_vol)
        .await
        .expect("honest publish");

    // For 18 s (three lives of the honest certificate) the honest volume always holds a valid
    // certificate, and renews again and again.
    let started = Instant::now();
    let mut seen = RenewalLog::start(&target);
    while started.elapsed() < Duration::from_secs(18) {
        let who = format!("honest volume after {:?}", started.elapsed());
        seen.observe(&target, &who, &env);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (renewals, closest) = (seen.renewals(), seen.closest);
    assert!(
        renewals >= 3,
        "only {renewals} honest renewals in 18 s\n--- log ---\n{}",
        env.logs()
    );
    let state = env.state(&honest_pod, &honest_vol).expect("honest state");
    assert_eq!(state.renewal.failures, 0, "{:?}", state.renewal);

    // Meanwhile every hostile volume filed its renewal, and none was answered.
    for (pod, vol) in &hostile {
        let st = env.state(pod, vol).expect("hostile state");
        let current = st.current.as_ref().expect("hostile current");
        assert_eq!(current.revision, 1, "a silent signer renews nothing");
        let filed = requests_of(&cluster, pod).await;
        assert!(
            filed.len() >= 2,
            "hostile {} filed its renewal: {:?}",
            pod.name,
            filed.iter().map(name_of).collect::<Vec<_>>()
        );
    }
    println!(
        "hostile namespace silent, --renew-concurrency 1: {renewals} honest renewals in 18 s, \
         the honest certificate never closer than {closest:?} to expiry"
    );
}
