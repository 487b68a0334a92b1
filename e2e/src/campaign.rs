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

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use certvol_driver::base::crashpoint;
use certvol_driver::demo::kubelet::{InlineVolume, Pod, volume_id};
use certvol_driver::files::store::{Phase as StatePhase, VolumeState};
use certvol_driver::issuer::request_name;
use certvol_driver::x509::pki;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

use crate::apiserver::Kind;
use crate::cluster::{Cluster, NODE_ID, cm_volume};
use crate::{Driver, Env, read_volume};

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

/// The campaign's counts, printed at the end and quoted in the issue notes.
#[derive(Debug, Default)]
pub struct Report {
    pub seed: u64,
    pub trials: usize,
    /// Kills by operation: (at a named point, at a random moment).
    pub kills: BTreeMap<Operation, (usize, usize)>,
    /// Kills by named point.
    pub points: BTreeMap<&'static str, usize>,
    /// Random kills that came after the operation had already answered (harmless, counted).
    pub kills_after_completion: usize,
    /// Operations kubelet retried after the restart because it saw them fail.
    pub publish_retries: usize,
    pub unpublish_retries: usize,
    /// Volume checks passed (one per volume per trial).
    pub volume_checks: usize,
    /// Volumes published / removed over the campaign.
    pub published: usize,
    pub removed: usize,
    /// Issuances (sum of revisions) of the volumes still published at the end, and of all.
    pub issuances: u64,
    /// CertificateRequest creates the API answered 201 / 409.
    pub creates: usize,
    pub conflicting_creates: usize,
    /// Renewals observed after the last restart (proves renewal still runs).
    pub final_renewals: usize,
    pub elapsed: Duration,
    pub violations: Vec<String>,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "crash campaign: {} trials in {:.1} s (seed {})",
            self.trials,
            self.elapsed.as_secs_f64(),
            self.seed
        )?;
        for (op, (point, random)) in &self.kills {
            writeln!(
                f,
                "  kill -9 during {op:?}: {} ({point} at named points, {random} at random moments)",
                point + random
            )?;
        }
        let points: Vec<String> = self
            .points
            .iter()
            .map(|(p, n)| format!("{p} {n}"))
            .collect();
        writeln!(f, "  named points: {}", points.join(", "))?;
        writeln!(
            f,
            "  random kills that landed after the call had answered: {}",
            self.kills_after_completion
        )?;
        writeln!(
            f,
            "  kubelet retries after restart: {} publishes, {} unpublishes",
            self.publish_retries, self.unpublish_retries
        )?;
        writeln!(
            f,
            "  volumes: {} published, {} removed; {} volume checks passed",
            self.published, self.removed, self.volume_checks
        )?;
        writeln!(
            f,
            "  issuances of live volumes: {}; CertificateRequest creates: {} answered 201, {} answered 409",
            self.issuances, self.creates, self.conflicting_creates
        )?;
        writeln!(
            f,
            "  renewals after the last restart: {}",
            self.final_renewals
        )?;
        write!(f, "  invariant violations: {}", self.violations.len())?;
        for v in self.violations.iter().take(20) {
            write!(f, "\n    - {v}")?;
        }
        Ok(())
    }
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

    /// Stops the driver as the trial's moment says: waits for the armed point, or SIGKILLs after
    /// a random delay up to `upper`.
    async fn stop_at(&mut self, moment: &Moment, context: &str, upper: Duration) {
        match moment {
            Moment::Point(_) => self.await_crash(context, Duration::from_secs(20)).await,
            Moment::Random => {
                let delay = self.random_delay(upper);
                tokio::time::sleep(delay).await;
                self.driver().kill9();
            }
        }
    }

    async fn interrupt_publish(&mut self, moment: &Moment, context: &str) {
        let (pod, vol) = self.new_volume().await;
        let kubelet = self.env.kubelet();
        let target = kubelet.target_path(&pod, &vol);
        let call = {
            let (pod, vol) = (pod.clone(), vol.clone());
            tokio::spawn(async move { kubelet.publish(&pod, &vol).await })
        };
        self.stop_at(moment, context, self.publish_latency * 3 / 2)
            .await;
        let answered = matches!(call.await, Ok(Ok(_)));
        if answered && matches!(moment, Moment::Random) {
            self.report.kills_after_completion += 1;
        }
        self.track(pod, vol, target, !answered);
    }

    /// Kills the driver while some volume renews: at a renew point, or a random moment just after
    /// the earliest recorded renewal time.
    async fn interrupt_renewal(&mut self, moment: &Moment, context: &str) {
        match moment {
            // Every volume renews about every 4 s.
            Moment::Point(_) => self.await_crash(context, Duration::from_secs(20)).await,
            Moment::Random => {
                let store = self.env.store();
                let due = self
                    .live()
                    .filter_map(|t| store.load(&t.id()).ok().flatten())
                    .filter_map(|s| certvol_driver::volume::next_renewal(&s))
                    .min();
                let wait = due
                    .and_then(|d| d.duration_since(SystemTime::now()).ok())
                    .unwrap_or_default()
                    .min(Duration::from_secs(8));
                let delay = self.random_delay(Duration::from_millis(80));
                tokio::time::sleep(wait + delay).await;
                self.driver().kill9();
            }
        }
    }

    /// Changes the trust source and kills the driver while it rewrites the bundles.
    async fn interrupt_refresh(&mut self, moment: &Moment, context: &str) {
        self.root_index = (self.root_index + 1) % self.roots.len();
        let patch = json!({"data": {TRUST_KEY: self.roots[self.root_index]}});
        Api::<ConfigMap>::namespaced(self.cluster.client.clone(), &self.cluster.namespace())
            .patch(
                TRUST_CONFIGMAP,
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
            .expect("patch the trust ConfigMap");
        self.stop_at(moment, context, Duration::from_millis(120))
            .await;
    }

    async fn interrupt_unpublish(&mut self, moment: &Moment, context: &str) {
        let live: Vec<usize> = (0..self.volumes.len())
            .filter(|&i| self.volumes[i].want == Want::Published && !self.volumes[i].retry)
            .collect();
        let Some(&index) = live.get(self.rng.random_range(0..live.len().max(1))) else {
            return;
        };
        let kubelet = self.env.kubelet();
        let call = {
            let t = &self.volumes[index];
            let (pod, vol) = (t.pod.clone(), t.vol.clone());
            tokio::spawn(async move {
                let started = Instant::now();
                kubelet
                    .unpublish(&pod, &vol)
                    .await
                    .map(|()| started.elapsed())
            })
        };
        self.stop_at(moment, context, self.unpublish_latency * 3 / 2)
            .await;
        let answered = match call.await {
            Ok(Ok(took)) => {
                self.unpublish_latency = (self.unpublish_latency + took) / 2;
                true
            }
            _ => false,
        };
        if answered && matches!(moment, Moment::Random) {
            self.report.kills_after_completion += 1;
        }
        self.report.removed += 1;
        let t = &mut self.volumes[index];
        t.want = Want::Removed;
        t.retry = !answered;
    }

    /// kubelet repeats every call it saw fail; after the restart each must succeed.
    async fn kubelet_retries(&mut self, context: &str) {
        let kubelet = self.env.kubelet();
        for t in self.volumes.iter_mut().filter(|t| t.retry) {
            let result = match t.want {
                Want::Published => {
                    self.report.publish_retries += 1;
                    kubelet.publish(&t.pod, &t.vol).await.map(|_| ())
                }
                Want::Removed => {
                    self.report.unpublish_retries += 1;
                    kubelet.unpublish(&t.pod, &t.vol).await
                }
            };
            match result {
                Ok(()) => t.retry = false,
                Err(e) => self.report.violations.push(format!(
                    "{context}: kubelet's retry of {:?} for {} failed: {e}",
                    t.want, t.pod.name
                )),
            }
        }
    }

    /// Checks every volume, giving each up to [`SETTLE`] to reach a consistent state (a renewal
    /// may be in flight at any moment).
    pub async fn check(&mut self, context: &str) {
        let deadline = Instant::now() + SETTLE;
        let mut pending: Vec<usize> = (0..self.volumes.len())
            .filter(|&i| !self.volumes[i].retry)
            .collect();
        let mut last: BTreeMap<usize, String> = BTreeMap::new();
        loop {
            let mut still = Vec::new();
            for i in pending {
                match self.check_volume(&self.volumes[i]).await {
                    Ok(revision) => {
                        let t = &mut self.volumes[i];
                        if revision < t.revision {
                            self.report.violations.push(format!(
                                "{context}: {} went back from revision {} to {revision}",
                                t.pod.name, t.revision
                            ));
                        }
                        t.revision = revision;
                        self.report.volume_checks += 1;
                    }
                    Err(e) => {
                        last.insert(i, e);
                        still.push(i);
                    }
                }
            }
            let node = self.check_node();
            if still.is_empty() && node.is_ok() {
                return;
            }
            if Instant::now() > deadline {
                for i in still {
                    self.report.violations.push(format!(
                        "{context}: {}: {}",
                        self.volumes[i].pod.name,
                        last.get(&i).map(String::as_str).unwrap_or("?")
                    ));
                }
                if let Err(e) = node {
                    self.report.violations.push(format!("{context}: {e}"));
                }
                return;
            }
            pending = still;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// One volume against every invariant; returns its issuance count.
    async fn check_volume(&self, t: &Tracked) -> Result<u64, String> {
        let id = t.id();
        let state = self
            .env
            .store()
            .load(&id)
            .map_err(|e| format!("state.json unreadable: {e}"))?;
        let creates = self.creates_of(&id);
        match t.want {
            Want::Removed => {
                if let Some(s) = state {
                    return Err(format!("removed volume still has state ({:?})", s.phase));
                }
                if std::fs::symlink_metadata(&t.target).is_ok() {
                    return Err(format!(
                        "removed volume's target {} exists",
                        t.target.display()
                    ));
                }
                let left = self.requests_in_api(&id).await;
                if !left.is_empty() {
                    return Err(format!(
                        "removed volume's requests still in the API: {left:?}"
                    ));
                }
                Ok(t.revision)
            }
            Want::Published => {
                let state = state.ok_or("volume lost: no state")?;
                self.check_published(t, &state, &creates).await?;
                Ok(state.last_revision)
            }
        }
    }

    async fn check_published(
        &self,
        t: &Tracked,
        state: &VolumeState,
        creates: &[(String, u16)],
    ) -> Result<(), String> {
        if state.phase != StatePhase::Published {
            return Err(format!("phase {:?}", state.phase));
        }
        if state.pending.is_some() {
            return Err("a renewal is in flight".into());
        }
        let files = read_volume(&t.target)?;
        let current = state.current.as_ref().ok_or("no current certificate")?;
        if current.serial != files.leaf.serial_hex {
            return Err(format!(
                "state.json names serial {} but tls.crt holds {}",
                current.serial, files.leaf.serial_hex
            ));
        }
        // The volume holds exactly the key state names, and it is the certificate's.
        let keys_dir = self.env.store().paths(&t.id()).keys;
        let keys: Vec<String> = std::fs::read_dir(&keys_dir)
            .map_err(|e| format!("list {}: {e}", keys_dir.display()))?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".pk8"))
            .collect();
        let named = format!("key-{}.pk8", current.revision);
        if keys != [named.clone()] {
            return Err(format!("key files {keys:?}, state names {named}"));
        }
        let kept = std::fs::read(keys_dir.join(&named)).map_err(|e| e.to_string())?;
        let kept = certvol_driver::x509::keys::PrivateKey::from_pkcs8_der(&kept)
            .map_err(|e| format!("{named}: {e}"))?;
        if !pki::key_matches(&files.leaf, &kept).map_err(|e| e.to_string())? {
            return Err(format!("{named} is not the key of tls.crt"));
        }
        if let Some(s) = &self.cluster.standin {
            let ca = pki::parse_pem_chain(&s.signer.ca_pem()).map_err(|e| e.to_string())?;
            if files.ca.first().map(|c| &c.der) != ca.first().map(|c| &c.der) {
                return Err("ca.crt is not the issuer's CA".into());
            }
        }
        let bundle = certvol_driver::files::writer::read_all(&t.target, &[BUNDLE])
            .map_err(|e| format!("read {BUNDLE}: {e}"))?
            .pop()
            .unwrap_or_default();
        let expected =
            pki::parse_pem_chain(&self.roots[self.root_index]).map_err(|e| e.to_string())?;
        let in_bundle = pki::parse_pem_chain(&String::from_utf8_lossy(&bundle))
            .map_err(|e| format!("{BUNDLE}: {e}"))?;
        if !in_bundle.iter().any(|c| c.der == expected[0].der) {
            return Err(format!(
                "{BUNDLE} does not hold the current trust source (root {})",
                self.root_index
            ));
        }
        let generations: Vec<String> = std::fs::read_dir(&t.target)
            .map_err(|e| format!("list {}: {e}", t.target.display()))?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("..") && n != "..data")
            .collect();
        if generations.len() != 1 {
            return Err(format!(
                "{} ..data generations: {generations:?}",
                generations.len()
            ));
        }
        if self.cluster.standin.is_some() {
            let filed: Vec<&(String, u16)> = creates.iter().filter(|(_, s)| *s == 201).collect();
            let names: BTreeSet<&String> = filed.iter().map(|(n, _)| n).collect();
            if filed.len() as u64 != state.last_revision || names.len() != filed.len() {
                return Err(format!(
                    "{} issuances but {} requests created: {filed:?}",
                    state.last_revision,
                    filed.len()
                ));
            }
        }
        Ok(())
    }

    /// Mounts and state directories of the whole node against kubelet's view.
    fn check_node(&self) -> Result<(), String> {
        let live: Vec<&Tracked> = self.live().filter(|t| !t.retry).collect();
        let mounts = self.env.mounts();
        if mounts.len() != 2 * live.len() {
            return Err(format!(
                "{} mounts for {} published volumes (want a tmpfs and a bind each): {:?}",
                mounts.len(),
                live.len(),
                mounts.iter().map(|m| &m.mount_point).collect::<Vec<_>>()
            ));
        }
        for t in &live {
            let target = std::fs::canonicalize(&t.target).unwrap_or_else(|_| t.target.clone());
            if !mounts.iter().any(|m| m.mount_point == target) {
                return Err(format!("{} is not mounted", t.target.display()));
            }
        }
        let dirs = count_entries(&self.env.data_root.join("volumes"));
        if dirs != live.len() {
            return Err(format!(
                "{dirs} volume directories in the data root for {} published volumes",
                live.len()
            ));
        }
        Ok(())
    }

    /// CertificateRequest creates for a volume, as (name, HTTP status), from the stand-in's log.
    fn creates_of(&self, volume_id: &str) -> Vec<(String, u16)> {
        let Some(s) = &self.cluster.standin else {
            return Vec::new();
        };
        let first = request_name(NODE_ID, volume_id, 1);
        let prefix = first.trim_end_matches('1');
        s.api
            .requests()
            .into_iter()
            .filter(|r| r.verb == "create" && r.kind == Some(Kind::CertificateRequest))
            .filter_map(|r| {
                let name = r.name?;
                name.strip_prefix(prefix)
                    .is_some_and(|rev| rev.chars().all(|c| c.is_ascii_digit()))
                    .then_some((name, r.status))
            })
            .collect()
    }

    async fn requests_in_api(&self, volume_id: &str) -> Vec<String> {
        let first = request_name(NODE_ID, volume_id, 1);
        let prefix = first.trim_end_matches('1');
        self.cluster
            .requests(&self.cluster.namespace())
            .await
            .into_iter()
            .filter_map(|cr| cr.metadata.name)
            .filter(|n| n.starts_with(prefix))
            .collect()
    }

    /// After the last trial: every live volume renews at least once more.
    async fn final_renewals(&mut self) {
        let store = self.env.store();
        let before: Vec<(String, u64)> = self
            .live()
            .map(|t| {
                let rev = store
                    .load(&t.id())
                    .ok()
                    .flatten()
                    .map(|s| s.last_revision)
                    .unwrap_or(0);
                (t.pod.name.clone(), rev)
            })
            .collect();
        let ids: Vec<String> = self.live().map(Tracked::id).collect();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let renewed = ids
                .iter()
                .zip(&before)
                .filter(|(id, (_, rev))| {
                    store
                        .load(id)
                        .ok()
                        .flatten()
                        .is_some_and(|s| s.last_revision > *rev)
                })
                .count();
            if renewed == ids.len() || Instant::now() > deadline {
                self.report.final_renewals = renewed;
                if renewed < ids.len() {
                    self.report.violations.push(format!(
                        "after the campaign only {renewed} of {} volumes renewed within 15 s",
                        ids.len()
                    ));
                }
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let context = "after the campaign".to_string();
        self.check(&context).await;
    }

    fn tally_requests(&mut self) {
        let store = self.env.store();
        self.report.issuances = self
            .live()
            .filter_map(|t| store.load(&t.id()).ok().flatten())
            .map(|s| s.last_revision)
            .sum();
        if let Some(s) = &self.cluster.standin {
            let creates: Vec<u16> = s
                .api
                .requests()
                .into_iter()
                .filter(|r| r.verb == "create" && r.kind == Some(Kind::CertificateRequest))
                .map(|r| r.status)
                .collect();
            self.report.creates = creates.iter().filter(|&&c| c == 201).count();
            self.report.conflicting_creates = creates.iter().filter(|&&c| c == 409).count();
        }
    }

    /// The driver's log of every run, for a failure message.
    pub fn logs(&self) -> String {
        self.env.logs()
    }
}

fn count_entries(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
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
