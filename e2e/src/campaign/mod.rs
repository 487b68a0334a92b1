//! The crash campaign: SIGKILL the real driver at random moments of a publish, a renewal, a
//! trust-bundle refresh and an unpublish, restart it, let kubelet retry what it saw fail, and check
//! every volume on the node after each trial.
//!
//! A trial either arms one of the driver's named crash points (`CERTVOL_CRASH_AT`, so every step
//! boundary is hit for sure) or kills the process after a random delay inside the operation (so
//! the moments between the named points are hit too: mid-write, mid-rename, mid-request). The
//! delays are drawn from a seeded generator; the seed is printed, and `CERTVOL_CAMPAIGN_SEED`
//! replays a run.
//!
//! Checked after every trial, for every volume (see [`Campaign::check`]): the key matches the
//! certificate and the chain verifies against `ca.crt`, which is the issuer's CA; `state.json`
//! agrees with the files; the trust bundle holds the current trust source; exactly one
//! `..data` generation; exactly one CertificateRequest create per issuance (from the API
//! stand-in's request log), none left behind for removed volumes; exactly one tmpfs and one bind
//! mount per published volume and one state directory, nothing for removed ones; no volume lost.
//!
//! Short by default (CI); `CERTVOL_CAMPAIGN=long` runs the long mode, `CERTVOL_CAMPAIGN_TRIALS`
//! sets the count outright.

mod check;
mod interrupt;
mod report;

pub use report::Report;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use certvol_driver::base::crashpoint;
use certvol_driver::demo::kubelet::{InlineVolume, Pod, volume_id};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::PostParams;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

use crate::cluster::{Cluster, cm_volume};
use crate::{Driver, Env};

/// `long` selects the long mode of every campaign.
pub const MODE_ENV: &str = "CERTVOL_CAMPAIGN";
/// Overrides the number of trials.
pub const TRIALS_ENV: &str = "CERTVOL_CAMPAIGN_TRIALS";
/// Replays a run.
pub const SEED_ENV: &str = "CERTVOL_CAMPAIGN_SEED";
/// Narrows a run to some operations.
pub const OPS_ENV: &str = "CERTVOL_CAMPAIGN_OPS";

/// Whether the long mode was asked for.
pub fn long_mode() -> bool {
    std::env::var(MODE_ENV).is_ok_and(|v| v == "long")
}

/// The trial count: `CERTVOL_CAMPAIGN_TRIALS`, else `long` in the long mode, else `short`.
pub fn trials(short: usize, long: usize) -> usize {
    std::env::var(TRIALS_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if long_mode() { long } else { short })
}

/// The seed: `CERTVOL_CAMPAIGN_SEED`, else a fixed one so CI runs are reproducible.
pub fn seed() -> u64 {
    std::env::var(SEED_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x00C3_27F0_1D0C)
}

/// The operation a trial interrupts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Operation {
    Publish,
    Renewal,
    Refresh,
    Unpublish,
}

impl Operation {
    const ALL: [Operation; 4] = [
        Operation::Publish,
        Operation::Renewal,
        Operation::Refresh,
        Operation::Unpublish,
    ];

    /// The named crash points this operation passes (`certmanager:created` is also passed by
    /// renewals, which file a request the same way).
    fn points(self) -> Vec<&'static str> {
        let prefix = match self {
            Operation::Publish => "publish:",
            Operation::Renewal => "renew:",
            Operation::Refresh => "refresh:",
            Operation::Unpublish => "unpublish:",
        };
        let mut points: Vec<&'static str> = crashpoint::Point::ALL
            .iter()
            .map(|p| p.name())
            .filter(|p| p.starts_with(prefix))
            .collect();
        if self == Operation::Publish {
            points.push("certmanager:created");
        }
        points
    }
}

/// How a trial stops the driver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Moment {
    /// At a named crash point.
    Point(&'static str),
    /// SIGKILL at a random moment inside the operation: a delay drawn up to 1.5 times the call's
    /// typical latency (for a renewal: up to 80 ms after it was due; for a refresh: up to 120 ms
    /// after the source changed).
    Random,
}

/// What one trial does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Trial {
    pub operation: Operation,
    pub moment: Moment,
}

/// What kubelet believes about one volume.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Want {
    Published,
    Removed,
}

#[derive(Clone, Debug)]
struct Tracked {
    pod: Pod,
    vol: InlineVolume,
    target: PathBuf,
    want: Want,
    /// kubelet saw the last call fail and will repeat it.
    retry: bool,
    /// Issuances when the volume was last checked: it must never go down.
    revision: u64,
}

impl Tracked {
    fn id(&self) -> String {
        volume_id(&self.pod.uid, &self.vol.name)
    }
}

const TRUST_CONFIGMAP: &str = "campaign-roots";
const TRUST_KEY: &str = "ca.crt";
const BUNDLE: &str = "ca-bundle.crt";
/// Short enough that renewals run all the time (every ~4 s per volume), long enough that a
/// certificate read during a check is still valid.
const DURATION: &str = "6s";
const MIN_VOLUMES: usize = 4;
const MAX_VOLUMES: usize = 8;
/// How long the node may take to settle after a restart before a check counts as failed.
const SETTLE: Duration = Duration::from_secs(20);

/// One campaign: a stand-in cluster (or a real one), a driver, and kubelet's view of the volumes.
pub struct Campaign {
    env: Env,
    cluster: Cluster,
    driver: Option<Driver>,
    rng: StdRng,
    volumes: Vec<Tracked>,
    roots: Vec<String>,
    root_index: usize,
    next_pod: usize,
    /// Typical call latencies, so random kills land inside the call.
    publish_latency: Duration,
    unpublish_latency: Duration,
    report: Report,
}

impl Campaign {
    /// Starts the cluster and the driver (cert-manager mode) and publishes the first volumes.
    pub async fn start(seed: u64) -> Campaign {
        let mut env = Env::new();
        let cluster = Cluster::start(env.path()).await;
        let roots: Vec<String> = (0..3)
            .map(|i| root_ca(&format!("campaign root {i}")))
            .collect();
        Api::<ConfigMap>::namespaced(cluster.client.clone(), &cluster.namespace())
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "metadata": {"name": TRUST_CONFIGMAP},
                    "data": {TRUST_KEY: roots[0]},
                }))
                .expect("ConfigMap object"),
            )
            .await
            .expect("create the trust ConfigMap");
        let driver = env.start_cert_manager(&cluster, &[], &[]).await;
        let mut campaign = Campaign {
            env,
            cluster,
            driver: Some(driver),
            rng: StdRng::seed_from_u64(seed),
            volumes: Vec::new(),
            roots,
            root_index: 0,
            next_pod: 0,
            publish_latency: Duration::from_millis(50),
            unpublish_latency: Duration::from_millis(20),
            report: Report {
                seed,
                ..Report::default()
            },
        };
        for _ in 0..MIN_VOLUMES + 1 {
            campaign.publish_fresh().await;
        }
        campaign
    }

    /// Runs `n` trials, cycling through the operations and alternating named points with random
    /// moments, then checks that renewal still runs; returns the counts.
    pub async fn run(&mut self, n: usize) -> Report {
        let started = Instant::now();
        // `CERTVOL_CAMPAIGN_OPS=publish,renewal` narrows a run to some operations (to chase one
        // failure); the default is all four in turn.
        let ops: Vec<Operation> = std::env::var(OPS_ENV)
            .ok()
            .map(|v| {
                Operation::ALL
                    .into_iter()
                    .filter(|op| {
                        v.split(',')
                            .any(|w| w.eq_ignore_ascii_case(&format!("{op:?}")))
                    })
                    .collect::<Vec<_>>()
            })
            .filter(|ops| !ops.is_empty())
            .unwrap_or_else(|| Operation::ALL.to_vec());
        for i in 0..n {
            let operation = ops[i % ops.len()];
            let round = i / ops.len();
            let moment = if round.is_multiple_of(2) {
                // Every named point in turn, so a short run still reaches each of them.
                let points = operation.points();
                Moment::Point(points[(round / 2) % points.len()])
            } else {
                Moment::Random
            };
            let trial = Trial { operation, moment };
            self.trial(i, &trial).await;
            self.report.trials += 1;
            if self.report.violations.len() > 20 {
                break;
            }
        }
        self.final_renewals().await;
        self.tally_requests();
        self.report.elapsed = started.elapsed();
        std::mem::take(&mut self.report)
    }

    async fn trial(&mut self, i: usize, trial: &Trial) {
        let context = format!("trial {i} ({:?} {:?})", trial.operation, trial.moment);
        if let Moment::Point(point) = trial.moment {
            self.restart_armed(point).await;
            *self.report.points.entry(point).or_default() += 1;
            self.report.kills.entry(trial.operation).or_default().0 += 1;
        } else {
            self.report.kills.entry(trial.operation).or_default().1 += 1;
        }
        match trial.operation {
            Operation::Publish => self.interrupt_publish(&trial.moment, &context).await,
            Operation::Renewal => self.interrupt_renewal(&trial.moment, &context).await,
            Operation::Refresh => self.interrupt_refresh(&trial.moment, &context).await,
            Operation::Unpublish => self.interrupt_unpublish(&trial.moment, &context).await,
        }
        self.restart().await;
        self.kubelet_retries(&context).await;
        self.check(&context).await;
        while self.live().count() < MIN_VOLUMES {
            self.publish_fresh().await;
        }
        while self.live().count() > MAX_VOLUMES {
            self.unpublish_oldest().await;
        }
    }

    /// Removes the oldest live volume on a healthy driver.
    async fn unpublish_oldest(&mut self) {
        let kubelet = self.env.kubelet();
        let Some(t) = self.volumes.iter_mut().find(|t| t.want == Want::Published) else {
            return;
        };
        kubelet
            .unpublish(&t.pod, &t.vol)
            .await
            .unwrap_or_else(|e| panic!("unpublish {} on a healthy driver: {e}", t.pod.name));
        t.want = Want::Removed;
        self.report.removed += 1;
    }

    fn live(&self) -> impl Iterator<Item = &Tracked> {
        self.volumes.iter().filter(|t| t.want == Want::Published)
    }

    fn driver(&mut self) -> &mut Driver {
        // Every path that takes the driver out puts a new one back before returning.
        self.driver.as_mut().expect("a driver is running")
    }

    /// Replaces the running driver (stopped with SIGTERM, so this stop is not a crash) with one
    /// that dies at `point`.
    async fn restart_armed(&mut self, point: &'static str) {
        if let Some(mut old) = self.driver.take() {
            let _ = old.terminate(Duration::from_secs(10));
        }
        let driver = self
            .env
            .start_cert_manager(&self.cluster, &[], &[(crashpoint::ENV, point)])
            .await;
        self.driver = Some(driver);
    }

    /// After the kill: reaps the process and starts a clean driver.
    async fn restart(&mut self) {
        if let Some(mut old) = self.driver.take() {
            old.kill9();
        }
        let driver = self.env.start_cert_manager(&self.cluster, &[], &[]).await;
        self.driver = Some(driver);
    }

    /// Waits for the armed driver to die; a point never reached is a failed trial.
    async fn await_crash(&mut self, context: &str, timeout: Duration) {
        if self.driver().exited(timeout).await.is_err() {
            self.report
                .violations
                .push(format!("{context}: the armed crash point was not reached"));
        }
    }

    fn random_delay(&mut self, upper: Duration) -> Duration {
        let upper = upper.as_micros().max(1) as u64;
        Duration::from_micros(self.rng.random_range(0..upper))
    }

    /// Creates the next pod object and its volume.
    async fn new_volume(&mut self) -> (Pod, InlineVolume) {
        self.next_pod += 1;
        let name = format!("crash-{}", self.next_pod);
        let vol = cm_volume(
            &self.cluster.issuer_name(),
            [
                ("csi.certvol.io/duration", DURATION),
                (
                    "csi.certvol.io/trust-configmaps",
                    &format!("{TRUST_CONFIGMAP}/{TRUST_KEY}"),
                ),
            ],
        );
        let pod = self
            .cluster
            .create_pod(&self.cluster.namespace(), &name)
            .await;
        (pod, vol)
    }

    /// Publishes a new volume on a healthy driver (kept between trials to keep the pool filled).
    async fn publish_fresh(&mut self) {
        let (pod, vol) = self.new_volume().await;
        let kubelet = self.env.kubelet();
        let started = Instant::now();
        let target = kubelet
            .publish(&pod, &vol)
            .await
            .unwrap_or_else(|e| panic!("publish {} on a healthy driver: {e}", pod.name));
        // A running average; the first call also pays for connecting.
        self.publish_latency = (self.publish_latency + started.elapsed()) / 2;
        self.track(pod, vol, target, false);
    }

    /// Counts a new volume kubelet now believes published; `retry` when it saw the call fail.
    fn track(&mut self, pod: Pod, vol: InlineVolume, target: PathBuf, retry: bool) {
        self.report.published += 1;
        self.volumes.push(Tracked {
            pod,
            vol,
            target,
            want: Want::Published,
            retry,
            revision: 1,
        });
    }

    /// The driver's log of every run, for a failure message.
    pub fn logs(&self) -> String {
        self.env.logs()
    }
}

/// A self-signed CA certificate (PEM) to serve as a trust source.
fn root_ca(cn: &str) -> String {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let build = || -> Result<String, rcgen::Error> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, cn);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        Ok(params.self_signed(&key)?.pem())
    };
    build().unwrap_or_else(|e| panic!("generate {cn}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_operation_has_a_named_point() {
        for op in Operation::ALL {
            assert!(!op.points().is_empty(), "{op:?}");
        }
        assert!(Operation::Publish.points().contains(&"certmanager:created"));
        assert_eq!(Operation::Refresh.points(), ["refresh:files-written"]);
    }
}
