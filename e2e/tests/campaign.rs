//! Campaigns that prove crash safety over many trials rather than one scenario each: kill -9 at
//! random moments (e2e/src/campaign.rs) and a reader that never sees a torn pair over 1,000
//! renewals. Short by default; `CERTVOL_CAMPAIGN=long` runs the long mode:
//!
//! ```text
//! CERTVOL_CAMPAIGN=long cargo test --release -p certvol-e2e --test campaign -- --nocapture
//! ```

use std::time::{Duration, Instant};

use certvol_driver::demo::kubelet::{InlineVolume, Pod};
use certvol_e2e::campaign::{self, Campaign, Operation};
use certvol_e2e::require_root;
use certvol_e2e::{Env, PairReader, ReaderReport, volume};

/// The last `n` lines of the driver's own logs (not its HTTP/2 and client libraries'), for a
/// failure message.
fn tail(logs: &str, n: usize) -> String {
    let noise = ["h2::", "hyper", "tower", "kube_client", "rustls"];
    let lines: Vec<&str> = logs
        .lines()
        .filter(|l| !noise.iter().any(|n| l.contains(n)))
        .collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

// Multi-threaded: the campaign's kubelet calls run as tasks while the test waits for the driver
// to die.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_at_random_moments_of_publish_renewal_refresh_and_unpublish() {
    require_root!();
    let trials = campaign::trials(56, 240);
    let mut run = Campaign::start(campaign::seed()).await;
    let report = run.run(trials).await;
    println!("{report}");
    if !report.violations.is_empty() {
        // The environment is removed on drop; keep the whole log for the post-mortem.
        let saved = std::env::temp_dir().join(format!("certvol-campaign-{}.log", report.seed));
        let _ = std::fs::write(&saved, run.logs());
        panic!(
            "{report}\n--- end of the driver's log (all of it: {}) ---\n{}",
            saved.display(),
            tail(&run.logs(), 150)
        );
    }
    assert_eq!(report.trials, trials);
    for op in [
        Operation::Publish,
        Operation::Renewal,
        Operation::Refresh,
        Operation::Unpublish,
    ] {
        let (point, random) = report.kills.get(&op).copied().unwrap_or_default();
        assert!(
            point > 0 && random > 0,
            "{op:?} killed at points and at random: {report}"
        );
    }
    assert!(report.volume_checks >= trials * 4, "{report}");
    assert!(report.final_renewals > 0, "{report}");
}

/// Volumes that renew every fraction of a second: 3 s certificates renewed 2.5 s before expiry.
fn fast_renewing(i: usize) -> (Pod, InlineVolume) {
    let pod = Pod::new("default", &format!("reader-{i}"));
    let vol = volume([
        ("csi.certvol.io/duration", "3s"),
        ("csi.certvol.io/renew-before", "2500ms"),
    ]);
    (pod, vol)
}

#[tokio::test]
async fn a_reader_never_sees_a_torn_pair_during_1000_renewals() {
    require_root!();
    const RENEWALS: u64 = 1_000;
    const VOLUMES: usize = 12;
    let mut env = Env::new();
    let _driver = env.start_with(&["--renew-concurrency", "8"], &[]).await;
    let kubelet = env.kubelet();
    let mut volumes = Vec::new();
    let mut targets = Vec::new();
    for i in 0..VOLUMES {
        let (pod, vol) = fast_renewing(i);
        targets.push(kubelet.publish(&pod, &vol).await.expect("publish"));
        volumes.push((pod, vol));
    }
    let renewals = |env: &Env| -> u64 {
        volumes
            .iter()
            .filter_map(|(pod, vol)| env.state(pod, vol))
            .map(|s| s.last_revision.saturating_sub(1))
            .sum()
    };

    let started = Instant::now();
    let before = renewals(&env);
    let reader = PairReader::over(targets.clone());
    let deadline = started + Duration::from_secs(240);
    while renewals(&env) - before < RENEWALS && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let ReaderReport {
        reads,
        serials,
        errors,
    } = reader.stop();
    let done = renewals(&env) - before;
    println!(
        "reader: {reads} reads of {VOLUMES} volumes through ..data during {done} renewals in {:.1} s; \
         {} distinct certificates seen; {} mismatched or failed reads",
        started.elapsed().as_secs_f64(),
        serials.len(),
        errors.len()
    );
    assert!(
        done >= RENEWALS,
        "only {done} renewals in 240 s\n{}",
        env.logs()
    );
    assert!(
        errors.is_empty(),
        "{} bad reads, e.g. {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
    // The reader kept up: it saw most certificates, so it really read across the swaps.
    assert!(
        serials.len() as u64 >= done / 2,
        "the reader saw only {} of {done} certificates",
        serials.len()
    );
    for (pod, vol) in &volumes {
        kubelet.unpublish(pod, vol).await.expect("unpublish");
    }
    assert!(env.mounts().is_empty(), "{:?}", env.mounts());
}
