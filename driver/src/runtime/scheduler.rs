//! The one renewal loop: a single queue of deadlines for every volume on the node.
//!
//! The loop sleeps (with `tokio::time`, so tests can pause it) until the earliest deadline, runs
//! due renewals with bounded concurrency, and puts each volume back on the queue at the time its
//! renewal answered. No per-volume timers, no polling.
//!
//! The concurrency bounds renewals doing work, not renewals waiting: each renewal runs on a
//! [`Lease`] of a worker permit that it puts down while it waits for its signer's answer (see
//! `issuer::filing::file_and_wait`), so renewals whose signer never answers cannot occupy every
//! worker. Permits go round-robin between namespaces ([`FairPool`]): a namespace with a thousand
//! due renewals delays another namespace's one by at most one renewal per worker.
//!
//! A renewal task that panics is a bug, but must not stop that volume's renewals for good: the
//! loop tracks each task's volume by task id, retries it after the renewal backoff, and counts the
//! panic (`certvol_renewal_panics_total`).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use certvol_renewer::{DeadlineQueue, Policy};
use futures::future::BoxFuture;
use tokio::sync::{mpsc, watch};
use tokio::task::{self, JoinError, JoinSet};
use tracing::{Instrument, error};

use crate::base::clock::Clock;
use crate::base::fair::{FairPool, Lease};
use crate::obs::metrics::Metrics;

/// What a renewal attempt says about the next one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum RenewOutcome {
    /// Renewed; renew again at `next`.
    Renewed { next: SystemTime },
    /// Failed; try again at `retry_at`.
    Failed { retry_at: SystemTime },
    /// Nothing to renew any more (volume gone, renewal disabled).
    Done,
}

/// Something that can renew a volume: the volume manager, or a fake in tests.
pub(crate) trait Renewer: Send + Sync + 'static {
    /// Renews `volume_id` holding `worker`, a worker permit of the scheduler's pool. The renewer
    /// puts it down ([`Lease::pause`]) while it waits for something outside the node (the
    /// signer's answer) and picks it up again ([`Lease::resume`]) before it goes on working.
    fn renew(self: Arc<Self>, volume_id: String, worker: Lease)
    -> BoxFuture<'static, RenewOutcome>;
}

#[derive(Debug)]
enum Command {
    Schedule {
        volume_id: String,
        namespace: String,
        at: SystemTime,
    },
    Cancel {
        volume_id: String,
    },
}

/// Cheap handle for scheduling and cancelling renewals.
#[derive(Clone, Debug)]
pub(crate) struct SchedulerHandle {
    tx: mpsc::UnboundedSender<Command>,
}

impl SchedulerHandle {
    /// Renew `volume_id`, a volume of a pod in `namespace` (the tenant whose turn its renewal
    /// takes), at `at` (replacing any earlier deadline for it).
    pub(crate) fn schedule(&self, volume_id: &str, namespace: &str, at: SystemTime) {
        // A send fails only once the loop has stopped (shutdown); there is nothing to renew then.
        let _ = self.tx.send(Command::Schedule {
            volume_id: volume_id.to_string(),
            namespace: namespace.to_string(),
            at,
        });
    }

    pub(crate) fn cancel(&self, volume_id: &str) {
        let _ = self.tx.send(Command::Cancel {
            volume_id: volume_id.to_string(),
        });
    }
}

/// The loop's receiving end; turned into a future by [`Scheduler::run`].
#[derive(Debug)]
pub(crate) struct Scheduler {
    rx: mpsc::UnboundedReceiver<Command>,
    policy: Policy,
    metrics: Metrics,
}

/// A handle and the loop it feeds.
pub(crate) fn channel() -> (SchedulerHandle, Scheduler) {
    let (tx, rx) = mpsc::unbounded_channel();
    let scheduler = Scheduler {
        rx,
        policy: Policy::default(),
        metrics: Metrics::detached(),
    };
    (SchedulerHandle { tx }, scheduler)
}

impl Scheduler {
    /// Retries a renewal that panicked with `policy`'s backoff: the volume manager's
    /// (`Config::policy`), so that it backs off like a failed renewal. Default: the default policy.
    pub(crate) fn with_policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }

    /// Counts panicked renewals in `metrics` (the node's). Default: a detached handle, which
    /// nothing serves.
    pub(crate) fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Runs until `shutdown` turns true or every handle is dropped. At most `concurrency`
    /// renewals work at once, shared round-robin between namespaces. In-flight renewals are
    /// awaited before returning so that none is cut off half-way.
    pub(crate) async fn run(
        mut self,
        renewer: Arc<dyn Renewer>,
        clock: Arc<dyn Clock>,
        concurrency: usize,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut state = Loop {
            renewer,
            clock,
            policy: self.policy.clone(),
            metrics: self.metrics.clone(),
            workers: FairPool::new(concurrency),
            queue: DeadlineQueue::new(),
            running: HashSet::new(),
            cancelled: HashSet::new(),
            tasks: JoinSet::new(),
            task_volumes: HashMap::new(),
            panics: HashMap::new(),
            namespaces: HashMap::new(),
        };
        loop {
            let sleep = state.queue.next_deadline().map(|at| {
                at.duration_since(state.clock.now())
                    .unwrap_or(Duration::ZERO)
            });
            tokio::select! {
                biased;
                _ = shutdown.changed() => {
                    if *shutdown.borrow() { break; }
                }
                cmd = self.rx.recv() => match cmd {
                    Some(cmd) => state.command(cmd),
                    None => break,
                },
                Some(joined) = state.tasks.join_next_with_id(), if !state.tasks.is_empty() => {
                    state.joined(joined);
                }
                _ = sleep_for(sleep) => state.start_due(),
            }
        }
        while state.tasks.join_next().await.is_some() {}
    }
}

/// The loop's state between two wake-ups.
struct Loop {
    renewer: Arc<dyn Renewer>,
    clock: Arc<dyn Clock>,
    policy: Policy,
    metrics: Metrics,
    workers: FairPool,
    queue: DeadlineQueue<String>,
    running: HashSet<String>,
    /// Cancelled while their renewal was running: their outcome must not re-queue them.
    cancelled: HashSet<String>,
    tasks: JoinSet<RenewOutcome>,
    /// The volume each running task renews: a task that panicked returns no outcome to say so.
    task_volumes: HashMap<task::Id, String>,
    /// Renewals of a volume that panicked in a row, the attempt number of their backoff.
    panics: HashMap<String, u32>,
    /// Each queued or running volume's namespace; dropped with the volume.
    namespaces: HashMap<String, String>,
}

impl Loop {
    fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Schedule {
                volume_id,
                namespace,
                at,
            } => {
                self.cancelled.remove(&volume_id);
                self.namespaces.insert(volume_id.clone(), namespace);
                if !self.running.contains(&volume_id) {
                    self.queue.schedule(volume_id, at);
                }
            }
            Command::Cancel { volume_id } => {
                self.queue.cancel(&volume_id);
                if self.running.contains(&volume_id) {
                    self.cancelled.insert(volume_id);
                } else {
                    self.forget(&volume_id);
                }
            }
        }
    }

    /// A renewal task ended: with an outcome, or by panicking (which leaves its volume to be
    /// retried like a failed renewal, not stuck as running until the driver restarts).
    fn joined(&mut self, joined: Result<(task::Id, RenewOutcome), JoinError>) {
        let (id, outcome) = match joined {
            Ok((id, outcome)) => (id, Ok(outcome)),
            Err(e) => (e.id(), Err(e)),
        };
        let Some(volume_id) = self.task_volumes.remove(&id) else {
            return;
        };
        self.running.remove(&volume_id);
        if self.cancelled.remove(&volume_id) {
            self.forget(&volume_id);
            return;
        }
        match outcome {
            Ok(outcome) => {
                self.panics.remove(&volume_id);
                match outcome {
                    RenewOutcome::Renewed { next } => self.queue.schedule(volume_id, next),
                    RenewOutcome::Failed { retry_at } => self.queue.schedule(volume_id, retry_at),
                    RenewOutcome::Done => self.forget(&volume_id),
                }
            }
            Err(e) => {
                let failures = self.panics.entry(volume_id.clone()).or_insert(0);
                *failures = failures.saturating_add(1);
                let delay = certvol_renewer::backoff(*failures, &self.policy, rand::random());
                let now = self.clock.now();
                let retry_at = now.checked_add(delay).unwrap_or(now);
                if e.is_panic() {
                    self.metrics.renewal_panic();
                }
                error!(volume_id = %volume_id, error = %e, failures = *failures, retry_in = ?delay, "renewal task ended without an outcome; retrying after a backoff");
                self.queue.schedule(volume_id, retry_at);
            }
        }
    }

    fn start_due(&mut self) {
        for volume_id in self.queue.pop_due(self.clock.now()) {
            self.running.insert(volume_id.clone());
            let renewer = self.renewer.clone();
            let workers = self.workers.clone();
            let namespace = self.namespaces.get(&volume_id).cloned().unwrap_or_default();
            let id = volume_id.clone();
            // The renewer opens the renewal's span (volume id, namespace, pod), a child of the
            // loop's.
            let task = self.tasks.spawn(
                async move {
                    let permit = workers.acquire(&namespace).await;
                    let worker = Lease::new(&workers, &namespace, permit);
                    renewer.renew(id, worker).await
                }
                .in_current_span(),
            );
            self.task_volumes.insert(task.id(), volume_id);
        }
    }

    /// Drops what the loop knows of a volume it no longer renews.
    fn forget(&mut self, volume_id: &str) {
        self.namespaces.remove(volume_id);
        self.panics.remove(volume_id);
    }
}

async fn sleep_for(duration: Option<Duration>) {
    match duration {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::clock::TokioClock;
    use parking_lot::Mutex;
    use prometheus_client::registry::Registry;

    type Answer = Box<dyn Fn(&str, SystemTime, usize) -> RenewOutcome + Send + Sync>;

    /// Records when each renewal happened and answers from a script.
    struct Fake {
        clock: TokioClock,
        calls: Mutex<Vec<(String, SystemTime)>>,
        answer: Answer,
    }

    impl Renewer for Fake {
        fn renew(
            self: Arc<Self>,
            volume_id: String,
            _worker: Lease,
        ) -> BoxFuture<'static, RenewOutcome> {
            Box::pin(async move {
                let now = self.clock.now();
                let n = {
                    let mut calls = self.calls.lock();
                    calls.push((volume_id.clone(), now));
                    calls.iter().filter(|(v, _)| *v == volume_id).count()
                };
                (self.answer)(&volume_id, now, n)
            })
        }
    }

    fn t0() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    fn start(
        answer: impl Fn(&str, SystemTime, usize) -> RenewOutcome + Send + Sync + 'static,
    ) -> (
        SchedulerHandle,
        Arc<Fake>,
        watch::Sender<bool>,
        tokio::task::JoinHandle<()>,
    ) {
        start_with(Metrics::detached(), answer)
    }

    /// [`start`], the scheduler counting into `metrics`.
    fn start_with(
        metrics: Metrics,
        answer: impl Fn(&str, SystemTime, usize) -> RenewOutcome + Send + Sync + 'static,
    ) -> (
        SchedulerHandle,
        Arc<Fake>,
        watch::Sender<bool>,
        tokio::task::JoinHandle<()>,
    ) {
        let clock = TokioClock::starting_at(t0());
        let fake = Arc::new(Fake {
            clock,
            calls: Mutex::new(Vec::new()),
            answer: Box::new(answer),
        });
        let (handle, scheduler) = channel();
        let scheduler = scheduler.with_metrics(metrics);
        let (stop_tx, stop_rx) = watch::channel(false);
        let task = tokio::spawn(scheduler.run(fake.clone(), Arc::new(clock), 4, stop_rx));
        (handle, fake, stop_tx, task)
    }

    fn calls(fake: &Fake) -> Vec<(String, u64)> {
        fake.calls
            .lock()
            .iter()
            .map(|(v, t)| (v.clone(), t.duration_since(t0()).unwrap().as_secs()))
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn renews_at_deadlines_in_order_and_reschedules() {
        let (handle, fake, stop, task) = start(|_, now, n| {
            if n < 3 {
                RenewOutcome::Renewed {
                    next: now + Duration::from_secs(100),
                }
            } else {
                RenewOutcome::Done
            }
        });
        handle.schedule("b", "ns", t0() + Duration::from_secs(20));
        handle.schedule("a", "ns", t0() + Duration::from_secs(10));
        tokio::time::sleep(Duration::from_secs(1000)).await;
        assert_eq!(
            calls(&fake),
            vec![
                ("a".into(), 10),
                ("b".into(), 20),
                ("a".into(), 110),
                ("b".into(), 120),
                ("a".into(), 210),
                ("b".into(), 220),
            ]
        );
        stop.send(true).unwrap();
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn failures_retry_at_the_time_they_ask_for() {
        let (handle, fake, stop, task) = start(|_, now, n| {
            if n < 3 {
                RenewOutcome::Failed {
                    retry_at: now + Duration::from_secs(5 * n as u64),
                }
            } else {
                RenewOutcome::Done
            }
        });
        handle.schedule("v", "ns", t0() + Duration::from_secs(60));
        tokio::time::sleep(Duration::from_secs(600)).await;
        assert_eq!(
            calls(&fake),
            vec![("v".into(), 60), ("v".into(), 65), ("v".into(), 75)]
        );
        stop.send(true).unwrap();
        task.await.unwrap();
    }

    /// The value of `certvol_renewal_panics_total` in `registry`.
    fn panics_counted(registry: &Registry) -> f64 {
        let text = crate::obs::metrics::encode(registry).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix("certvol_renewal_panics_total "))
            .map_or(0.0, |v| v.trim().parse().unwrap())
    }

    #[tokio::test(start_paused = true)]
    async fn a_renewal_that_panics_is_retried_after_a_backoff_and_counted() {
        let mut registry = Registry::with_prefix(crate::obs::metrics::PREFIX);
        let metrics = Metrics::register(&mut registry);
        let before = panics_counted(&registry);
        let (handle, fake, stop, task) = start_with(metrics, |_, now, n| match n {
            1 => panic!("a bug in the renewal"),
            2 => RenewOutcome::Renewed {
                next: now + Duration::from_secs(100),
            },
            _ => RenewOutcome::Done,
        });
        handle.schedule("v", "ns", t0() + Duration::from_secs(10));
        tokio::time::sleep(Duration::from_secs(1000)).await;
        let calls = calls(&fake);
        assert_eq!(calls.len(), 3, "{calls:?}");
        assert_eq!(calls[0], ("v".into(), 10));
        // The default policy's first backoff: 2 s, shortened by up to half at random.
        let retried = calls[1].1;
        assert!((11..=12).contains(&retried), "{calls:?}");
        assert_eq!(
            calls[2],
            ("v".into(), retried + 100),
            "renewed as usual after"
        );
        assert!(
            panics_counted(&registry) >= before + 1.0,
            "the panic is counted"
        );
        stop.send(true).unwrap();
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn cancel_and_reschedule_replace_deadlines() {
        let (handle, fake, stop, task) = start(|_, _, _| RenewOutcome::Done);
        handle.schedule("gone", "ns", t0() + Duration::from_secs(10));
        handle.schedule("moved", "ns", t0() + Duration::from_secs(10));
        handle.schedule("moved", "ns", t0() + Duration::from_secs(30));
        handle.cancel("gone");
        tokio::time::sleep(Duration::from_secs(100)).await;
        assert_eq!(calls(&fake), vec![("moved".into(), 30)]);
        stop.send(true).unwrap();
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn past_deadlines_run_immediately_and_idle_loop_sleeps() {
        let (handle, fake, stop, task) = start(|_, _, _| RenewOutcome::Done);
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert!(calls(&fake).is_empty(), "nothing scheduled, nothing run");
        handle.schedule("late", "ns", t0());
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(calls(&fake), vec![("late".into(), 3600)]);
        stop.send(true).unwrap();
        task.await.unwrap();
    }

    /// A renewer whose signer answers some namespaces and never others: every renewal "files"
    /// for one second holding its worker; in a namespace in `silent` it then puts the worker
    /// down and waits forever for an answer; elsewhere it is renewed, next in 30 s.
    struct Signers {
        clock: TokioClock,
        silent: &'static [&'static str],
        /// (volume, namespace, when it started, when it finished filing).
        calls: Mutex<Vec<(String, u64, u64)>>,
    }

    impl Signers {
        fn namespace_of(volume_id: &str) -> &str {
            volume_id.split('/').next().unwrap_or_default()
        }

        fn secs(&self) -> u64 {
            self.clock.now().duration_since(t0()).unwrap().as_secs()
        }

        fn calls(&self, namespace: &str) -> Vec<(String, u64, u64)> {
            self.calls
                .lock()
                .iter()
                .filter(|(v, _, _)| Signers::namespace_of(v) == namespace)
                .cloned()
                .collect()
        }
    }

    impl Renewer for Signers {
        fn renew(
            self: Arc<Self>,
            volume_id: String,
            worker: Lease,
        ) -> BoxFuture<'static, RenewOutcome> {
            Box::pin(async move {
                let started = self.secs();
                tokio::time::sleep(Duration::from_secs(1)).await;
                self.calls
                    .lock()
                    .push((volume_id.clone(), started, self.secs()));
                if self.silent.contains(&Signers::namespace_of(&volume_id)) {
                    worker.pause();
                    std::future::pending::<()>().await;
                }
                RenewOutcome::Renewed {
                    next: self.clock.now() + Duration::from_secs(30),
                }
            })
        }
    }

    fn start_signers(
        silent: &'static [&'static str],
        concurrency: usize,
    ) -> (SchedulerHandle, Arc<Signers>, tokio::task::JoinHandle<()>) {
        let clock = TokioClock::starting_at(t0());
        let signers = Arc::new(Signers {
            clock,
            silent,
            calls: Mutex::new(Vec::new()),
        });
        let (handle, scheduler) = channel();
        let (stop_tx, stop_rx) = watch::channel(false);
        let renewer: Arc<dyn Renewer> = signers.clone();
        let task = tokio::spawn(async move {
            // Kept for the loop's lifetime: the tests end it by aborting the task, since
            // renewals waiting forever would keep a shutdown waiting forever too.
            let _stop_tx = stop_tx;
            scheduler
                .run(renewer, Arc::new(clock), concurrency, stop_rx)
                .await
        });
        (handle, signers, task)
    }

    #[tokio::test(start_paused = true)]
    async fn renewals_waiting_for_a_silent_signer_leave_the_workers_to_others() {
        let (handle, signers, task) = start_signers(&["hostile"], 2);
        for i in 0..5 {
            let volume = format!("hostile/v{i}");
            handle.schedule(&volume, "hostile", t0() + Duration::from_secs(10));
        }
        handle.schedule("honest/v", "honest", t0() + Duration::from_secs(20));
        tokio::time::sleep(Duration::from_secs(100)).await;
        // The honest namespace renews at its deadlines...
        let honest: Vec<u64> = signers.calls("honest").iter().map(|(_, s, _)| *s).collect();
        assert_eq!(honest, [20, 51, 82], "honest renewals start on time");
        // ...while every hostile renewal filed (two at a time) and waits for an answer that never
        // comes.
        let hostile: Vec<(u64, u64)> = signers
            .calls("hostile")
            .iter()
            .map(|(_, s, f)| (*s, *f))
            .collect();
        assert_eq!(hostile, [(10, 11), (10, 11), (11, 12), (11, 12), (12, 13)]);
        task.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn due_renewals_start_round_robin_across_namespaces() {
        let (handle, signers, task) = start_signers(&[], 1);
        for i in 0..20 {
            let volume = format!("big/v{i:02}");
            handle.schedule(&volume, "big", t0() + Duration::from_secs(10));
        }
        handle.schedule("small/v", "small", t0() + Duration::from_secs(10));
        handle.schedule("tiny/v", "tiny", t0() + Duration::from_secs(10));
        // Renewals are recorded when they finish; the one finishing at 25 s is left out.
        tokio::time::sleep(Duration::from_millis(24_500)).await;
        let order: Vec<(String, u64)> = signers
            .calls
            .lock()
            .iter()
            .map(|(v, s, _)| (v.clone(), *s))
            .collect();
        let mut expected: Vec<(String, u64)> = vec![
            ("big/v00".into(), 10),
            ("big/v01".into(), 11),
            ("small/v".into(), 12),
            ("tiny/v".into(), 13),
        ];
        for i in 2..12 {
            expected.push((format!("big/v{i:02}"), 12 + i as u64));
        }
        assert_eq!(
            order, expected,
            "one worker: small and tiny wait for one of big's 20 renewals each, not all of them"
        );
        task.abort();
    }
}
