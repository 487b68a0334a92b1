//! The one renewal loop: a single queue of deadlines for every volume on the node.
//!
//! The loop sleeps (with `tokio::time`, so tests can pause it) until the earliest deadline, runs
//! due renewals with bounded concurrency, and puts each volume back on the queue at the time its
//! renewal answered. No per-volume timers, no polling.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use certvol_renewer::DeadlineQueue;
use futures::future::BoxFuture;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tracing::{Instrument, debug, info_span};

use crate::clock::Clock;

/// What a renewal attempt says about the next one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RenewOutcome {
    /// Renewed; renew again at `next`.
    Renewed { next: SystemTime },
    /// Failed; try again at `retry_at`.
    Failed { retry_at: SystemTime },
    /// Nothing to renew any more (volume gone, renewal disabled).
    Done,
}

/// Something that can renew a volume: the volume manager, or a fake in tests.
pub trait Renewer: Send + Sync + 'static {
    fn renew(self: Arc<Self>, volume_id: String) -> BoxFuture<'static, RenewOutcome>;
}

#[derive(Debug)]
enum Command {
    Schedule { volume_id: String, at: SystemTime },
    Cancel { volume_id: String },
}

/// Cheap handle for scheduling and cancelling renewals.
#[derive(Clone, Debug)]
pub struct SchedulerHandle {
    tx: mpsc::UnboundedSender<Command>,
}

impl SchedulerHandle {
    /// Renew `volume_id` at `at` (replacing any earlier deadline for it).
    pub fn schedule(&self, volume_id: &str, at: SystemTime) {
        // A send fails only once the loop has stopped (shutdown); there is nothing to renew then.
        let _ = self.tx.send(Command::Schedule {
            volume_id: volume_id.to_string(),
            at,
        });
    }

    pub fn cancel(&self, volume_id: &str) {
        let _ = self.tx.send(Command::Cancel {
            volume_id: volume_id.to_string(),
        });
    }
}

/// The loop's receiving end; turned into a future by [`Scheduler::run`].
#[derive(Debug)]
pub struct Scheduler {
    rx: mpsc::UnboundedReceiver<Command>,
}

/// A handle and the loop it feeds.
pub fn channel() -> (SchedulerHandle, Scheduler) {
    let (tx, rx) = mpsc::unbounded_channel();
    (SchedulerHandle { tx }, Scheduler { rx })
}

impl Scheduler {
    /// Runs until `shutdown` turns true or every handle is dropped. In-flight renewals are
    /// awaited before returning so that none is cut off half-way.
    pub async fn run(
        mut self,
        renewer: Arc<dyn Renewer>,
        clock: Arc<dyn Clock>,
        concurrency: usize,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut queue: DeadlineQueue<String> = DeadlineQueue::new();
        let mut running: HashSet<String> = HashSet::new();
        // Cancelled while their renewal was running: their outcome must not re-queue them.
        let mut cancelled: HashSet<String> = HashSet::new();
        let mut tasks: JoinSet<(String, RenewOutcome)> = JoinSet::new();
        let permits = Arc::new(Semaphore::new(concurrency.max(1)));

        loop {
            let sleep = queue
                .next_deadline()
                .map(|at| at.duration_since(clock.now()).unwrap_or(Duration::ZERO));
            tokio::select! {
                biased;
                _ = shutdown.changed() => {
                    if *shutdown.borrow() { break; }
                }
                cmd = self.rx.recv() => match cmd {
                    Some(Command::Schedule { volume_id, at }) => {
                        cancelled.remove(&volume_id);
                        if !running.contains(&volume_id) {
                            queue.schedule(volume_id, at);
                        }
                    }
                    Some(Command::Cancel { volume_id }) => {
                        queue.cancel(&volume_id);
                        if running.contains(&volume_id) {
                            cancelled.insert(volume_id);
                        }
                    }
                    None => break,
                },
                Some(joined) = tasks.join_next(), if !tasks.is_empty() => {
                    let Ok((volume_id, outcome)) = joined else { continue };
                    running.remove(&volume_id);
                    if cancelled.remove(&volume_id) { continue; }
                    match outcome {
                        RenewOutcome::Renewed { next } => queue.schedule(volume_id, next),
                        RenewOutcome::Failed { retry_at } => queue.schedule(volume_id, retry_at),
                        RenewOutcome::Done => {}
                    }
                }
                _ = sleep_for(sleep) => {
                    for volume_id in queue.pop_due(clock.now()) {
                        running.insert(volume_id.clone());
                        let renewer = renewer.clone();
                        let permits = permits.clone();
                        let span = info_span!("renew", volume_id = %volume_id);
                        tasks.spawn(async move {
                            let _permit = permits.acquire_owned().await;
                            debug!("renewal due");
                            let outcome = renewer.renew(volume_id.clone()).await;
                            (volume_id, outcome)
                        }.instrument(span));
                    }
                }
            }
        }
        while tasks.join_next().await.is_some() {}
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
    use crate::clock::TokioClock;
    use std::sync::Mutex;

    type Answer = Box<dyn Fn(&str, SystemTime, usize) -> RenewOutcome + Send + Sync>;

    /// Records when each renewal happened and answers from a script.
    struct Fake {
        clock: TokioClock,
        calls: Mutex<Vec<(String, SystemTime)>>,
        answer: Answer,
    }

    impl Renewer for Fake {
        fn renew(self: Arc<Self>, volume_id: String) -> BoxFuture<'static, RenewOutcome> {
            Box::pin(async move {
                let now = self.clock.now();
                let n = {
                    let mut calls = self.calls.lock().unwrap();
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
        let clock = TokioClock::starting_at(t0());
        let fake = Arc::new(Fake {
            clock,
            calls: Mutex::new(Vec::new()),
            answer: Box::new(answer),
        });
        let (handle, scheduler) = channel();
        let (stop_tx, stop_rx) = watch::channel(false);
        let task = tokio::spawn(scheduler.run(fake.clone(), Arc::new(clock), 4, stop_rx));
        (handle, fake, stop_tx, task)
    }

    fn calls(fake: &Fake) -> Vec<(String, u64)> {
        fake.calls
            .lock()
            .unwrap()
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
        handle.schedule("b", t0() + Duration::from_secs(20));
        handle.schedule("a", t0() + Duration::from_secs(10));
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
        handle.schedule("v", t0() + Duration::from_secs(60));
        tokio::time::sleep(Duration::from_secs(600)).await;
        assert_eq!(
            calls(&fake),
            vec![("v".into(), 60), ("v".into(), 65), ("v".into(), 75)]
        );
        stop.send(true).unwrap();
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn cancel_and_reschedule_replace_deadlines() {
        let (handle, fake, stop, task) = start(|_, _, _| RenewOutcome::Done);
        handle.schedule("gone", t0() + Duration::from_secs(10));
        handle.schedule("moved", t0() + Duration::from_secs(10));
        handle.schedule("moved", t0() + Duration::from_secs(30));
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
        handle.schedule("late", t0());
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(calls(&fake), vec![("late".into(), 3600)]);
        stop.send(true).unwrap();
        task.await.unwrap();
    }
}
