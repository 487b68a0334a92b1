//! Fault campaigns of issue 7, against the real `certvol node --issuer cert-manager` binary over
//! its CSI socket, with the API stand-in and the cert-manager stand-in:
//!
//! - API faults during issuance and renewal (5xx bursts, latency, dropped watches, expired watch
//!   history, conflicts, then a full outage): afterwards every volume is correct, every issuance
//!   filed exactly one CertificateRequest, and during the outage the driver's API requests and
//!   CPU time stay within what its backoffs allow (no busy loop).
//! - Disk faults on the data root (a real, small tmpfs made full, then remounted read-only): a
//!   new publish fails with a clear, final error and leaves nothing behind; published volumes keep
//!   serving a matching pair; renewals that cannot record their state file nothing and are
//!   retried; a restart during the fault recovers every volume; when the fault clears, kubelet's
//!   retry succeeds and renewals resume.
//!
//! Short by default (CI); `CERTVOL_CAMPAIGN=long` runs more volumes, rounds and a longer outage.
//! Both scenarios print their counts for the closing note of the issue.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use certvol_driver::demo::kubelet::{InlineVolume, Kubelet, Pod, volume_id};
use certvol_driver::files::store::Phase;
use certvol_driver::issuer::request_name;
use certvol_driver::x509::pki;
use certvol_e2e::apiserver::{ApiServer, Kind, RequestRecord};
use certvol_e2e::cluster::{Cluster, DRIVER_TOKEN, NODE_ID, StandIn, cm_volume};
use certvol_e2e::{Env, read_volume, until};
use certvol_e2e::{require_root, require_standin};
use tonic::Code;

/// How big a campaign is.
#[derive(Clone, Copy, Debug)]
struct Scale {
    /// Volumes published under faults at the start.
    volumes: usize,
    /// Rounds of mixed faults while the volumes renew.
    rounds: usize,
    /// Length of the full API outage.
    outage: Duration,
}

impl Scale {
    fn get() -> Scale {
        if std::env::var("CERTVOL_CAMPAIGN").is_ok_and(|v| v == "long") {
            Scale {
                volumes: 16,
                rounds: 12,
                outage: Duration::from_secs(20),
            }
        } else {
            Scale {
                volumes: 4,
                rounds: 4,
                outage: Duration::from_secs(12),
            }
        }
    }
}

/// What kubelet's retries of one publish saw.
#[derive(Debug, Default)]
struct Retried {
    target: Option<PathBuf>,
    attempts: usize,
    codes: Vec<Code>,
    /// The last error's message.
    last: String,
}

/// Publishes as kubelet does: on any error, retry after a backoff starting at 0.5 s and doubling
/// (capped at 4 s here, kubelet goes to ~2 min) until `within` has passed.
async fn publish_retrying(
    kubelet: &Kubelet,
    pod: &Pod,
    vol: &InlineVolume,
    within: Duration,
) -> Retried {
    let deadline = Instant::now() + within;
    let mut delay = Duration::from_millis(500);
    let mut out = Retried::default();
    loop {
        out.attempts += 1;
        match kubelet.publish(pod, vol).await {
            Ok(target) => {
                out.target = Some(target);
                return out;
            }
            Err(status) => {
                out.codes.push(status.code());
                out.last = status.message().to_string();
            }
        }
        if Instant::now() + delay > deadline {
            return out;
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(4));
    }
}

/// CPU time (user + system) the process has used, from /proc/<pid>/stat.
fn cpu_time(pid: i32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc stat");
    // The command name is in parentheses and may contain spaces: count fields after it.
    let rest = &stat[stat.rfind(')').expect("stat has a command name") + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    // Fields 14 and 15 of proc(5) (utime, stime), counted from field 3 (state) here.
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    let hz = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(100);
    Duration::from_millis(ticks * 1000 / hz)
}

/// The driver's own requests (the harness reads the stand-in's store directly).
fn driver_requests(api: &ApiServer) -> Vec<RequestRecord> {
    api.requests()
        .into_iter()
        .filter(|r| r.token.as_deref() == Some(DRIVER_TOKEN))
        .collect()
}

/// Requests by verb and kind, e.g. "create certificaterequests".
fn by_verb(requests: &[RequestRecord]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for r in requests {
        let kind = r.kind.map_or("-", Kind::plural);
        *out.entry(format!("{} {kind}", r.verb)).or_default() += 1;
    }
    out
}

/// Checks one volume as a user would and returns its serial: key matches certificate, chain
/// verifies against the signer's CA (and ca.crt is that CA), state.json names the certificate the
/// files hold, nothing pending.
fn try_check_volume(
    env: &Env,
    s: &StandIn,
    pod: &Pod,
    vol: &InlineVolume,
    target: &Path,
) -> Result<String, String> {
    let files = read_volume(target)?;
    let ca = pki::parse_pem_chain(&s.signer.ca_pem()).map_err(|e| e.to_string())?;
    pki::verify_chain(&files.chain, &ca, SystemTime::now())
        .map_err(|e| format!("does not chain to the signer's CA: {e}"))?;
    if files.ca.first().map(|c| &c.der) != Some(&ca[0].der) {
        return Err("ca.crt is not the signer's CA".into());
    }
    let state = env.state(pod, vol).ok_or("no state.json")?;
    if state.phase != Phase::Published || state.pending.is_some() {
        return Err(format!(
            "state: phase {:?}, pending {:?}",
            state.phase, state.pending
        ));
    }
    let current = state.current.as_ref().ok_or("no current certificate")?;
    if current.serial != files.leaf.serial_hex
        || certvol_driver::files::store::to_system(current.not_after) != files.leaf.not_after
    {
        return Err(format!(
            "state.json names serial {} but the files hold {}",
            current.serial, files.leaf.serial_hex
        ));
    }
    Ok(files.leaf.serial_hex)
}

/// [`try_check_volume`], allowing a renewal that is swapping files and state right now to
/// finish (files are written before state is recorded).
async fn check_volume(
    env: &Env,
    s: &StandIn,
    pod: &Pod,
    vol: &InlineVolume,
    target: &Path,
) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match try_check_volume(env, s, pod, vol, target) {
            Ok(serial) => return serial,
            Err(e) if Instant::now() > deadline => panic!(
                "volume of {} is not correct: {e}\n--- log ---\n{}",
                pod.name,
                env.logs()
            ),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Whether the key and certificate a pod reads belong together (validity is not checked: a
/// certificate may expire while faults keep it from being renewed).
fn pair_matches(target: &Path) -> Result<String, String> {
    let files = certvol_driver::files::writer::read_all(target, &["tls.key", "tls.crt"])
        .map_err(|e| e.to_string())?;
    let key = certvol_driver::x509::keys::PrivateKey::from_pem(&String::from_utf8_lossy(&files[0]))
        .map_err(|e| e.to_string())?;
    let chain =
        pki::parse_pem_chain(&String::from_utf8_lossy(&files[1])).map_err(|e| e.to_string())?;
    let leaf = chain.first().ok_or("empty chain")?;
    match pki::key_matches(leaf, &key) {
        Ok(true) => Ok(leaf.serial_hex.clone()),
        Ok(false) => Err(format!(
            "key does not match certificate {}",
            leaf.serial_hex
        )),
        Err(e) => Err(e.to_string()),
    }
}

/// Successful creates of CertificateRequests (a create names its object only in the body, which
/// the stand-in does not record; names are unique anyway: a second create of one name is 409).
fn created(api: &ApiServer) -> usize {
    api.requests()
        .iter()
        .filter(|r| {
            r.verb == "create" && r.kind == Some(Kind::CertificateRequest) && r.status == 201
        })
        .count()
}

/// How many calls [`publish_retrying`] can start within `window` (its delays: 0.5 s doubling,
/// capped at 4 s; the calls themselves take time too, so this is an upper bound).
fn kubelet_calls_within(window: Duration) -> usize {
    let (mut at, mut delay, mut calls) = (0.0, 0.5, 0);
    while at <= window.as_secs_f64() {
        calls += 1;
        at += delay;
        delay = f64::min(delay * 2.0, 4.0);
    }
    calls
}

/// Upper bound on the request watch's relists during `outage`: after a failure the watch
/// relists after `kube::client::retry_delay`, at least 0.8 s doubling (jitter shortens it by up
/// to a fifth), so within `outage` at most k+1 relists start where 0.8 * (2^k - 1) <= outage.
fn relist_bound(outage: Duration) -> usize {
    let mut k = 0u32;
    while 0.8 * f64::from((1u32 << (k + 1)) - 1) <= outage.as_secs_f64() {
        k += 1;
    }
    k as usize + 1
}

#[tokio::test]
async fn api_faults_during_issuance_and_renewal_end_correct_without_duplicates_or_busy_loops() {
    require_root!();
    let scale = Scale::get();
    let mut env = Env::new();
    let cluster = Cluster::start(env.path()).await;
    let s = require_standin!(cluster, "faults need the stand-in's fault injection");
    let faults = s.api.faults();
    let mut driver = env
        .start_cert_manager(&cluster, &["--issue-timeout", "5s"], &[])
        .await;
    let kubelet = env.kubelet();
    let ns = cluster.namespace();
    let issuer = cluster.issuer_name();
    let vol = cm_volume(&issuer, [("csi.certvol.io/duration", "6s")]);
    let mut pods = Vec::new();
    for i in 0..scale.volumes {
        pods.push(cluster.create_pod(&ns, &format!("api-fault-{i}")).await);
    }

    // Issuance under faults: a 5xx burst, latency, conflicts on the signer's status updates, and
    // the node's watch dropped and then expired (410 -> relist) while requests are in flight.
    faults.set_latency(Duration::from_millis(150));
    faults.fail_next(3, 500);
    faults.conflict_next(3);
    let publishes: Vec<_> = pods
        .iter()
        .map(|pod| {
            let (k, p, v) = (kubelet.clone(), pod.clone(), vol.clone());
            tokio::spawn(async move { publish_retrying(&k, &p, &v, Duration::from_secs(60)).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    faults.drop_watches();
    tokio::time::sleep(Duration::from_millis(300)).await;
    faults.expire_history();
    faults.drop_watches();
    faults.fail_next(2, 504);
    let mut targets = Vec::new();
    let mut publish_attempts = 0;
    for (pod, task) in pods.iter().zip(publishes) {
        let r = task.await.expect("publish task");
        publish_attempts += r.attempts;
        let target = r.target.unwrap_or_else(|| {
            panic!(
                "{} never published (codes {:?})\n--- log ---\n{}",
                pod.name,
                r.codes,
                env.logs()
            )
        });
        targets.push(target);
    }
    faults.set_latency(Duration::ZERO);
    for (pod, target) in pods.iter().zip(&targets) {
        check_volume(&env, s, pod, &vol, target).await;
    }

    // Renewal under faults: the 6 s certificates renew every ~4 s while each round injects a
    // 5xx burst, conflicts, a dropped or expired watch and some latency.
    let codes = [500u16, 503, 504, 500];
    for round in 0..scale.rounds {
        faults.fail_next(2 + round % 3, codes[round % codes.len()]);
        faults.conflict_next(2);
        if round % 2 == 0 {
            faults.drop_watches();
        } else {
            faults.expire_history();
            faults.drop_watches();
        }
        faults.set_latency(Duration::from_millis(if round % 2 == 0 { 250 } else { 0 }));
        tokio::time::sleep(Duration::from_secs(2)).await;
        for (pod, target) in pods.iter().zip(&targets) {
            if let Err(e) = pair_matches(target) {
                panic!("{} mid-faults: {e}\n--- log ---\n{}", pod.name, env.logs());
            }
        }
    }
    faults.set_latency(Duration::ZERO);
    faults.fail_next(0, 500);

    // A full outage: every request fails (500: kube-rs does not retry it, so each attempt is one
    // request) and the open watch is cut. It begins while requests are being signed (the signer
    // takes 3 s): a new volume's and at least one renewal's. Their 6 s certificates are signed
    // during the outage and have expired before the node can see them again.
    let newcomer = cluster.create_pod(&ns, "api-fault-during-outage").await;
    let signing = Duration::from_secs(3);
    s.signer.set_delay(signing);
    let creates_before = created(&s.api);
    let outage_publish = {
        let (k, p, v) = (kubelet.clone(), newcomer.clone(), vol.clone());
        tokio::spawn(async move { publish_retrying(&k, &p, &v, Duration::from_secs(120)).await })
    };
    let filed = until(Duration::from_secs(10), || async {
        (created(&s.api) >= creates_before + 2).then_some(())
    })
    .await;
    assert!(filed.is_some(), "no requests filed before the outage");
    let before = driver_requests(&s.api).len();
    let cpu_before = cpu_time(driver.pid());
    let started = Instant::now();
    faults.fail_next(usize::MAX, 500);
    faults.drop_watches();
    let unsigned = created(&s.api) - s.signer.signed();
    assert!(
        unsigned > 0,
        "the outage must begin before requests are signed"
    );
    tokio::time::sleep(scale.outage).await;
    let during: Vec<RequestRecord> = driver_requests(&s.api)[before..].to_vec();
    let cpu = cpu_time(driver.pid()).saturating_sub(cpu_before);
    let outage = started.elapsed();
    for (pod, target) in pods.iter().zip(&targets) {
        if let Err(e) = pair_matches(target) {
            panic!("{} during the outage: {e}", pod.name);
        }
    }
    faults.fail_next(0, 500);
    let cleared = Instant::now();
    s.signer.set_delay(Duration::ZERO);

    // Bounds from the driver's own pacing: relists back off (watch::retry_delay); each volume's
    // renewal retries at least MIN_RETRY_SPACING (1 s) apart, one create each; a publish files at
    // most one create per kubelet call (0.5 s doubling: at most log2(outage/0.5 s) + 2 calls);
    // an attempt that instead waits out --issue-timeout (5 s) posts at most one Event. And the
    // client's limiter caps everything at burst + qps * outage (20 + 10/s).
    let secs = outage.as_secs_f64();
    let kubelet_calls = kubelet_calls_within(outage);
    let backoff_bound =
        relist_bound(outage) + scale.volumes * (secs.floor() as usize + 1) + kubelet_calls + 2;
    let qps_bound = 20 + (10.0 * secs).ceil() as usize;
    let cpu_share = cpu.as_secs_f64() / secs;
    println!(
        "API outage of {:.1} s with {} volumes renewing and one publishing: {} requests (bound {} from backoff, {} from QPS) {:?}; driver CPU {} ms ({:.1} % of one core)",
        secs,
        scale.volumes,
        during.len(),
        backoff_bound,
        qps_bound,
        by_verb(&during),
        cpu.as_millis(),
        cpu_share * 100.0
    );
    assert!(
        during.len() <= backoff_bound && during.len() <= qps_bound,
        "busy loop? {} requests in a {secs:.1} s outage: {:?}",
        during.len(),
        by_verb(&during)
    );
    assert!(
        cpu_share < 0.25,
        "busy loop? the driver used {} ms of CPU in a {secs:.1} s outage",
        cpu.as_millis()
    );

    // Recovery: the publish that began in the outage completes; every volume renews again.
    let r = tokio::time::timeout(Duration::from_secs(120), outage_publish)
        .await
        .expect("the outage publish finishes")
        .expect("publish task");
    let newcomer_target = r.target.unwrap_or_else(|| {
        panic!(
            "publish during the outage never succeeded (codes {:?})\n--- log ---\n{}",
            r.codes,
            env.logs()
        )
    });
    println!(
        "publish during the outage: {} kubelet calls, codes {:?}",
        r.attempts, r.codes
    );
    assert!(
        r.codes.iter().all(|c| matches!(
            c,
            Code::Unavailable | Code::DeadlineExceeded | Code::Aborted
        )),
        "API trouble must be non-final for kubelet: {:?}, last: {}",
        r.codes,
        r.last
    );
    pods.push(newcomer);
    targets.push(newcomer_target);
    let after_outage: Vec<Option<String>> = targets.iter().map(|t| pair_matches(t).ok()).collect();
    // Renewals backed off during the outage (their backoff grows towards minutes), but the
    // watch listing again wakes them: so everything renews within the watch's next relist (its
    // backoff, at most twice the outage and 30 s) plus a renewal or two.
    let settle = (outage * 2).min(Duration::from_secs(30)) + Duration::from_secs(20);
    let renewed = until(settle, || async {
        pods.iter()
            .zip(&targets)
            .zip(&after_outage)
            .all(|((pod, target), seen)| {
                let fresh =
                    read_volume(target).is_ok_and(|f| Some(&f.leaf.serial_hex) != seen.as_ref());
                let recorded = env
                    .state(pod, &vol)
                    .is_some_and(|st| st.renewal.failures == 0 && st.current.is_some());
                fresh && recorded
            })
            .then_some(())
    })
    .await;
    if renewed.is_none() {
        let states: Vec<_> = pods
            .iter()
            .map(|p| (p.name.clone(), env.state(p, &vol).map(|st| st.renewal)))
            .collect();
        panic!(
            "not every volume renewed within {settle:?} after the outage: {states:?}\n--- log ---\n{}",
            env.logs()
        );
    }
    println!(
        "every volume renewed {:.1} s after the outage ended; {unsigned} requests were signed during the outage, {} log lines report a certificate that arrived expired (requested anew)",
        cleared.elapsed().as_secs_f64(),
        env.logs()
            .matches("had already expired when this node received it")
            .count()
    );

    // Stop the driver so nothing moves, then compare what the API saw with what was recorded:
    // one successful create per issued revision, never two for one name, none unaccounted for.
    driver
        .terminate(Duration::from_secs(15))
        .expect("driver stops on SIGTERM");
    // Request names are deterministic per revision and unique on the server, so one create per
    // issued revision means: as many successful creates as revisions recorded, plus at most the
    // renewals the stop interrupted (recorded before they file: they may or may not have).
    let creates = created(&s.api);
    let mut issuances = BTreeMap::new();
    let (mut issued, mut in_flight) = (0, 0);
    let (mut required, mut maybe) = (BTreeSet::new(), BTreeSet::new());
    for pod in &pods {
        let id = volume_id(&pod.uid, &vol.name);
        let st = env.state(pod, &vol).expect("state");
        let current = st.current.as_ref().expect("current").revision;
        issued += current as usize;
        in_flight += usize::from(st.pending.is_some());
        issuances.insert(pod.name.clone(), current);
        required.extend((1..=current).map(|rev| request_name(NODE_ID, &id, rev)));
        maybe.extend(st.pending.map(|p| request_name(NODE_ID, &id, p.revision)));
    }
    // By name: what the driver pruned (DELETE names its object) plus what is still there.
    let mut seen: BTreeSet<String> = cluster
        .requests(&ns)
        .await
        .into_iter()
        .filter_map(|cr| cr.metadata.name)
        .collect();
    seen.extend(driver_requests(&s.api).into_iter().filter_map(|r| {
        (r.verb == "delete" && r.kind == Some(Kind::CertificateRequest)).then_some(r.name?)
    }));
    let missing: Vec<_> = required.difference(&seen).collect();
    let extra: Vec<_> = seen
        .iter()
        .filter(|n| !required.contains(*n) && !maybe.contains(*n))
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "requests by name: missing {missing:?}, not from any recorded revision {extra:?}"
    );
    assert!(
        (issued..=issued + in_flight).contains(&creates),
        "{creates} CertificateRequests created for {issued} issued revisions ({in_flight} in flight): {issuances:?}"
    );
    let signed = s.signer.signed();
    assert!(
        (issued..=creates).contains(&signed),
        "the signer signed {signed} requests for {issued} issued revisions ({creates} created)"
    );
    let all = driver_requests(&s.api);
    let adopted = all
        .iter()
        .filter(|r| {
            r.verb == "create" && r.kind == Some(Kind::CertificateRequest) && r.status == 409
        })
        .count();
    println!(
        "API faults: {} volumes, {} publish calls under faults, issuances per volume {:?}, {} CertificateRequests created ({} adopted after 409), signer signed {}; all driver requests {:?}",
        pods.len(),
        publish_attempts,
        issuances,
        creates,
        adopted,
        s.signer.signed(),
        by_verb(&all)
    );

    // A restart after the faults recovers every volume without re-issuing anything valid.
    let _driver = env.start_cert_manager(&cluster, &[], &[]).await;
    for (pod, target) in pods.iter().zip(&targets) {
        let st = env.state(pod, &vol).expect("state");
        // Still valid: served unchanged. Expired while the driver was down: renewed at once.
        let valid = st.current.as_ref().is_some_and(|c| {
            certvol_driver::files::store::to_system(c.not_after)
                > SystemTime::now() + Duration::from_secs(1)
        });
        if !valid {
            let renewed = until(Duration::from_secs(20), || async {
                try_check_volume(&env, s, pod, &vol, target).ok()
            })
            .await;
            assert!(
                renewed.is_some(),
                "{} not renewed after the restart",
                pod.name
            );
        }
        check_volume(&env, s, pod, &vol, target).await;
    }
    for pod in &pods {
        kubelet.unpublish(pod, &vol).await.expect("unpublish");
    }
    assert!(env.mounts().is_empty(), "mounts left: {:?}", env.mounts());
}

/// A tmpfs mounted as the driver's data root, lazily unmounted (with everything below it) when
/// dropped, also when the test panics.
struct DataRoot {
    path: PathBuf,
}

impl DataRoot {
    fn mount(path: &Path, size: &str) -> DataRoot {
        std::fs::create_dir_all(path).expect("create the data root");
        nix::mount::mount(
            Some("tmpfs"),
            path,
            Some("tmpfs"),
            nix::mount::MsFlags::MS_NODEV | nix::mount::MsFlags::MS_NOSUID,
            Some(format!("size={size},mode=0700").as_str()),
        )
        .expect("mount the data root tmpfs");
        DataRoot {
            path: path.to_path_buf(),
        }
    }

    fn filler(&self) -> PathBuf {
        self.path.join("filler")
    }

    /// Writes a file until the filesystem reports it is full.
    fn fill(&self) {
        use std::io::Write;
        let mut f = std::fs::File::create(self.filler()).expect("create the filler");
        let chunk = vec![0u8; 64 * 1024];
        loop {
            match f.write_all(&chunk) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(nix::libc::ENOSPC) => break,
                Err(e) => panic!("filling the data root: {e}"),
            }
        }
        // Small writes may still fit in the last page; take that too.
        while f.write_all(&[0u8; 512]).is_ok() {}
    }

    fn drain(&self) {
        std::fs::remove_file(self.filler()).expect("remove the filler");
    }

    fn remount(&self, read_only: bool) {
        let mut flags = nix::mount::MsFlags::MS_REMOUNT
            | nix::mount::MsFlags::MS_NODEV
            | nix::mount::MsFlags::MS_NOSUID;
        if read_only {
            flags |= nix::mount::MsFlags::MS_RDONLY;
        }
        nix::mount::mount(None::<&str>, &self.path, None::<&str>, flags, None::<&str>)
            .expect("remount the data root");
    }
}

impl Drop for DataRoot {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.path, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Lines of the driver's logs (all runs) that report a failed renewal mentioning `cause`.
fn renewal_failures(env: &Env, cause: &str) -> usize {
    env.logs()
        .lines()
        .filter(|l| l.contains("renewal failed") && l.contains(cause))
        .count()
}

/// Checks a failed publish: a final code naming the data root and the fault, and nothing left:
/// no state, no volume directory, no mount, no target directory.
fn assert_refused_cleanly(
    env: &Env,
    kubelet: &Kubelet,
    root: &Path,
    pod: &Pod,
    vol: &InlineVolume,
    status: &tonic::Status,
    fault: &str,
) {
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    let message = status.message();
    for part in [root.display().to_string(), fault.to_string()] {
        assert!(
            message.contains(&part),
            "the error must name {part:?}: {message}"
        );
    }
    println!(
        "publish on a data root that {fault}: {:?}: {message}",
        status.code()
    );
    assert!(env.state(pod, vol).is_none(), "no state for {}", pod.name);
    let dir = env.store().paths(&volume_id(&pod.uid, &vol.name)).dir;
    assert!(!dir.exists(), "{} was left behind", dir.display());
    let target = kubelet.target_path(pod, vol);
    assert!(!target.exists(), "{} was left behind", target.display());
    let ours: Vec<_> = env
        .mounts()
        .into_iter()
        .filter(|m| m.mount_point.starts_with(&dir) || m.mount_point == target)
        .collect();
    assert!(ours.is_empty(), "mounts left: {ours:?}");
}

#[tokio::test]
async fn disk_faults_on_the_data_root_fail_cleanly_keep_serving_and_recover() {
    require_root!();
    let mut env = Env::new();
    let data_root = DataRoot::mount(&env.data_root, "8m");
    let root = std::fs::canonicalize(&env.data_root).expect("data root path");
    let cluster = Cluster::start(env.path()).await;
    let s = require_standin!(cluster, "faults need the stand-in's fault injection");
    let mut driver = env.start_cert_manager(&cluster, &[], &[]).await;
    let kubelet = env.kubelet();
    let ns = cluster.namespace();
    // 15 s certificates renew after ~10 s: long enough to read a valid pair during a fault that
    // outlasts one renewal attempt.
    let vol = cm_volume(&cluster.issuer_name(), [("csi.certvol.io/duration", "15s")]);
    let mut pods = Vec::new();
    let mut targets = Vec::new();
    for name in ["disk-a", "disk-b"] {
        let pod = cluster.create_pod(&ns, name).await;
        targets.push(kubelet.publish(&pod, &vol).await.expect("publish"));
        pods.push(pod);
    }
    let mut serials = Vec::new();
    for (p, t) in pods.iter().zip(&targets) {
        serials.push(check_volume(&env, s, p, &vol, t).await);
    }

    for (fault, cause) in [("full", "is full"), ("read-only", "is read-only")] {
        let creates_before = created(&s.api);
        let failures_before = renewal_failures(&env, cause);
        match fault {
            "full" => data_root.fill(),
            _ => data_root.remount(true),
        }

        // A new publish is refused with a final error and leaves nothing behind.
        let pod = cluster.create_pod(&ns, &format!("disk-new-{fault}")).await;
        let status = kubelet
            .publish(&pod, &vol)
            .await
            .expect_err("publish on a faulty data root");
        assert_refused_cleanly(&env, &kubelet, &root, &pod, &vol, &status, cause);

        // The next renewal cannot record its request, so it files none and is retried.
        let failed = until(Duration::from_secs(20), || async {
            (renewal_failures(&env, cause) > failures_before).then_some(())
        })
        .await;
        assert!(
            failed.is_some(),
            "no renewal failed on the {fault} data root\n--- log ---\n{}",
            env.logs()
        );
        assert_eq!(
            created(&s.api),
            creates_before,
            "no CertificateRequest filed while its record cannot be written"
        );
        for (p, t) in pods.iter().zip(&targets) {
            let files = read_volume(t)
                .unwrap_or_else(|e| panic!("{} stops serving on a {fault} data root: {e}", p.name));
            let st = env.state(p, &vol).expect("state");
            assert_eq!(
                st.current.map(|c| c.serial),
                Some(files.leaf.serial_hex),
                "state.json still names the certificate served"
            );
        }

        // A restart during the fault (a crash on the full disk, a clean stop on the read-only
        // one) recovers every volume.
        if fault == "full" {
            driver.kill9();
        } else {
            driver
                .terminate(Duration::from_secs(15))
                .expect("driver stops on SIGTERM");
        }
        driver = env.start_cert_manager(&cluster, &[], &[]).await;
        for (p, t) in pods.iter().zip(&targets) {
            if let Err(e) = pair_matches(t) {
                panic!("{} after a restart on a {fault} data root: {e}", p.name);
            }
        }

        // Unpublish cannot record its first step either: it fails the same way and touches
        // nothing (kubelet retries it): the volume keeps serving and, once the fault clears,
        // renewing.
        let status = kubelet
            .unpublish(&pods[0], &vol)
            .await
            .expect_err("unpublish on a faulty data root");
        assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
        assert!(status.message().contains(cause), "{}", status.message());
        pair_matches(&targets[0]).expect("still served after the refused unpublish");

        // The fault clears: kubelet's retry publishes the volume, renewals resume.
        match fault {
            "full" => data_root.drain(),
            _ => data_root.remount(false),
        }
        let r = publish_retrying(&kubelet, &pod, &vol, Duration::from_secs(30)).await;
        let target = r
            .target
            .unwrap_or_else(|| panic!("no publish after the fault cleared: {:?}", r.codes));
        let renewed = until(Duration::from_secs(40), || async {
            pods.iter()
                .zip(&targets)
                .zip(&serials)
                .all(|((p, t), old)| {
                    read_volume(t).is_ok_and(|f| &f.leaf.serial_hex != old)
                        && env
                            .state(p, &vol)
                            .is_some_and(|st| st.renewal.failures == 0 && st.pending.is_none())
                })
                .then_some(())
        })
        .await;
        assert!(
            renewed.is_some(),
            "renewals did not resume after the {fault} data root cleared\n--- log ---\n{}",
            env.logs()
        );
        pods.push(pod);
        targets.push(target);
        serials.clear();
        for (p, t) in pods.iter().zip(&targets) {
            serials.push(check_volume(&env, s, p, &vol, t).await);
        }
        println!(
            "{fault} data root: {} renewal failures logged, {} kubelet calls until the new volume published",
            renewal_failures(&env, cause) - failures_before,
            r.attempts
        );
    }

    for pod in &pods {
        kubelet.unpublish(pod, &vol).await.expect("unpublish");
    }
    let left: Vec<_> = std::fs::read_dir(root.join("volumes"))
        .expect("volumes dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "volume state left: {left:?}");
    let mounts: Vec<_> = env
        .mounts()
        .into_iter()
        .filter(|m| m.mount_point != root)
        .collect();
    assert!(mounts.is_empty(), "mounts left: {mounts:?}");
    drop(driver);
}
