//! The trust refresher: one loop that owns every published volume's trust-source subscriptions
//! and rewrites a volume's files when a source changes or a retired issuing CA's overlap ends,
//! without renewing and without the issuer.
//!
//! The volume layer sends it messages (a volume's bundle was written, a volume is gone, a volume
//! was recovered after a restart); the loop keeps one future per volume in a single
//! [`FuturesUnordered`], so nothing is spawned per volume. `node.rs` spawns [`Refresher::run`].
//!
//! Each message that (re)places a volume's watch gets a new generation; results of older
//! generations (a refresh that raced a renewal or an unpublish) are dropped.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use tokio::sync::{mpsc, oneshot};
use tracing::debug;

use crate::trust::VolumeTrust;

/// Waking this much after a retired CA's keep-until makes sure the wall clock has passed it
/// when the bundle is rebuilt (monotonic and wall clock may drift apart slightly).
const WAKE_MARGIN: Duration = Duration::from_secs(1);

/// What the loop asks of the volume layer, which sits above it (the volume manager implements
/// it): the wall clock, and one rebuild of a volume's bundle.
pub(crate) trait TrustRefresher: Send + Sync + 'static {
    /// The wall clock overlap ends are measured on.
    fn now(&self) -> SystemTime;

    /// Rebuilds a published volume's bundle from `trust` and its recorded issuing CAs.
    fn refresh<'a>(
        &'a self,
        volume_id: &'a str,
        trust: Option<&'a mut VolumeTrust>,
    ) -> BoxFuture<'a, Refreshed>;

    /// After a restart: subscribes a recovered volume to its sources and rebuilds its bundle.
    fn resume<'a>(&'a self, volume_id: &'a str) -> BoxFuture<'a, (Option<VolumeTrust>, Refreshed)>;
}

/// What a trust refresh left behind, for the refresher.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refreshed {
    /// The volume is no longer published (or has no trust bundle): stop watching it.
    Gone,
    /// The volume stays; rebuild again at `next_change` (a retired CA's overlap end) or when a
    /// source changes.
    Kept { next_change: Option<SystemTime> },
}

/// What the volume layer tells the refresher.
pub(crate) enum Message {
    /// A publish or renewal just wrote the volume's bundle from `trust` (`None`: the bundle has
    /// no Kubernetes sources); watch it from here, and rebuild at `next_change`.
    Watch {
        volume_id: String,
        trust: Option<VolumeTrust>,
        next_change: Option<SystemTime>,
    },
    /// A published volume found at start-up: subscribe to its sources and refresh its bundle
    /// once they are listed (they may have changed while the driver was down).
    Resume { volume_id: String },
    /// The volume was unpublished: drop its subscriptions.
    Forget { volume_id: String },
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Message::Watch {
                volume_id,
                next_change,
                ..
            } => f
                .debug_struct("Watch")
                .field("volume_id", volume_id)
                .field("next_change", next_change)
                .finish(),
            Message::Resume { volume_id } => f
                .debug_struct("Resume")
                .field("volume_id", volume_id)
                .finish(),
            Message::Forget { volume_id } => f
                .debug_struct("Forget")
                .field("volume_id", volume_id)
                .finish(),
        }
    }
}

/// The sending side, held by the volume layer. Cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct RefreshHandle(mpsc::UnboundedSender<Message>);

impl RefreshHandle {
    pub(crate) fn send(&self, message: Message) {
        // The receiver lives in the refresher; once it is gone the node is shutting down and
        // nothing needs refreshing.
        let _ = self.0.send(message);
    }
}

/// The receiving side; run it once with [`Refresher::run`].
pub(crate) struct Refresher {
    rx: mpsc::UnboundedReceiver<Message>,
}

/// A handle for the volume layer and the loop that serves it.
pub(crate) fn channel() -> (RefreshHandle, Refresher) {
    let (tx, rx) = mpsc::unbounded_channel();
    (RefreshHandle(tx), Refresher { rx })
}

enum Done {
    /// A source changed or an overlap ended: rebuild.
    Fired {
        volume_id: String,
        generation: u64,
        trust: Option<VolumeTrust>,
    },
    /// A rebuild finished; wait for the next change.
    Rebuilt {
        volume_id: String,
        generation: u64,
        trust: Option<VolumeTrust>,
        outcome: Refreshed,
    },
    /// Replaced, forgotten, or the cache stopped.
    Ended,
}

struct Entry {
    generation: u64,
    /// Dropping it ends the volume's wait.
    _cancel: Option<oneshot::Sender<()>>,
}

impl Refresher {
    /// Serves messages for the life of the node: the volume manager holds a handle, so the
    /// channel stays open and `node.rs` aborts this with the rest of the background work. (Should
    /// every handle go away, it finishes the work in flight and returns.)
    pub(crate) async fn run(mut self, mgr: Arc<dyn TrustRefresher>) {
        let mut entries: HashMap<String, Entry> = HashMap::new();
        let mut tasks: FuturesUnordered<BoxFuture<'static, Done>> = FuturesUnordered::new();
        let mut generation = 0u64;
        let mut open = true;
        loop {
            let done = tokio::select! {
                message = self.rx.recv(), if open => match message {
                    Some(message) => {
                        generation += 1;
                        handle(&mgr, message, generation, &mut entries, &mut tasks);
                        continue;
                    }
                    None => {
                        open = false;
                        continue;
                    }
                },
                Some(done) = tasks.next(), if !tasks.is_empty() => done,
                else => return,
            };
            let current = |id: &str, g: u64| entries.get(id).is_some_and(|e| e.generation == g);
            match done {
                Done::Ended => {}
                Done::Fired {
                    volume_id,
                    generation,
                    trust,
                } if current(&volume_id, generation) => {
                    tasks.push(rebuild(mgr.clone(), volume_id, generation, trust));
                }
                Done::Rebuilt {
                    volume_id,
                    generation,
                    trust,
                    outcome,
                } if current(&volume_id, generation) => match outcome {
                    Refreshed::Gone => {
                        entries.remove(&volume_id);
                    }
                    Refreshed::Kept { next_change } => {
                        let (task, entry) =
                            wait(&mgr, volume_id.clone(), generation, trust, next_change);
                        entries.insert(volume_id, entry);
                        tasks.push(task);
                    }
                },
                Done::Fired { volume_id, .. } | Done::Rebuilt { volume_id, .. } => {
                    debug!(volume_id, "dropping a superseded trust refresh");
                }
            }
        }
    }
}

fn handle(
    mgr: &Arc<dyn TrustRefresher>,
    message: Message,
    generation: u64,
    entries: &mut HashMap<String, Entry>,
    tasks: &mut FuturesUnordered<BoxFuture<'static, Done>>,
) {
    match message {
        Message::Watch {
            volume_id,
            trust,
            next_change,
        } => {
            let (task, entry) = wait(mgr, volume_id.clone(), generation, trust, next_change);
            // Replacing the entry drops the previous wait's cancel sender, which ends it.
            entries.insert(volume_id, entry);
            tasks.push(task);
        }
        Message::Resume { volume_id } => {
            entries.insert(
                volume_id.clone(),
                Entry {
                    generation,
                    _cancel: None,
                },
            );
            let mgr = mgr.clone();
            tasks.push(Box::pin(async move {
                let (trust, outcome) = mgr.resume(&volume_id).await;
                Done::Rebuilt {
                    volume_id,
                    generation,
                    trust,
                    outcome,
                }
            }));
        }
        Message::Forget { volume_id } => {
            entries.remove(&volume_id);
        }
    }
}

/// Waits for a change of the volume's sources or its next overlap end, whichever comes first;
/// the entry to keep for the volume holds the wait's cancel sender.
fn wait(
    mgr: &Arc<dyn TrustRefresher>,
    volume_id: String,
    generation: u64,
    mut trust: Option<VolumeTrust>,
    next_change: Option<SystemTime>,
) -> (BoxFuture<'static, Done>, Entry) {
    let (cancel_tx, cancel_rx) = oneshot::channel::<()>();
    let sleep_for =
        next_change.map(|at| at.duration_since(mgr.now()).unwrap_or(Duration::ZERO) + WAKE_MARGIN);
    let task = async move {
        let fired = {
            let changed = async {
                match trust.as_mut() {
                    Some(t) => t.changed().await,
                    None => std::future::pending().await,
                }
            };
            let overlap_end = async {
                match sleep_for {
                    Some(d) => tokio::time::sleep(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                // Fires when the sender is dropped: the entry was replaced or forgotten.
                _ = cancel_rx => false,
                still_running = changed => still_running,
                () = overlap_end => true,
            }
        };
        if fired {
            Done::Fired {
                volume_id,
                generation,
                trust,
            }
        } else {
            Done::Ended
        }
    };
    let entry = Entry {
        generation,
        _cancel: Some(cancel_tx),
    };
    (Box::pin(task), entry)
}

fn rebuild(
    mgr: Arc<dyn TrustRefresher>,
    volume_id: String,
    generation: u64,
    mut trust: Option<VolumeTrust>,
) -> BoxFuture<'static, Done> {
    Box::pin(async move {
        let outcome = mgr.refresh(&volume_id, trust.as_mut()).await;
        Done::Rebuilt {
            volume_id,
            generation,
            trust,
            outcome,
        }
    })
}
