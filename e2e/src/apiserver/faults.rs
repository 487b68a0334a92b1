//! Fault injection: failed and conflicting requests, latency, dropped watches, expired
//! history.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::Store;

/// Fault injection, shared by every clone.
#[derive(Clone)]
pub struct Faults {
    state: Arc<FaultState>,
    store: Store,
}

struct FaultState {
    fail: Mutex<(usize, u16)>,
    latency: Mutex<Duration>,
    /// Bumped to close every open watch stream.
    drop_watches: tokio::sync::watch::Sender<u64>,
}

impl Faults {
    pub(super) fn new(store: Store) -> Faults {
        let (drop_watches, _) = tokio::sync::watch::channel(0);
        Faults {
            state: Arc::new(FaultState {
                fail: Mutex::new((0, 500)),
                latency: Mutex::new(Duration::ZERO),
                drop_watches,
            }),
            store,
        }
    }

    /// The next `n` HTTP requests fail with `status` (and a Status body).
    pub fn fail_next(&self, n: usize, status: u16) {
        *self.state.fail.lock().unwrap_or_else(|p| p.into_inner()) = (n, status);
    }

    /// Every HTTP request waits this long before it is handled.
    pub fn set_latency(&self, latency: Duration) {
        *self.state.latency.lock().unwrap_or_else(|p| p.into_inner()) = latency;
    }

    /// Closes every open watch stream now, as an apiserver restart or a load balancer would.
    pub fn drop_watches(&self) {
        self.state.drop_watches.send_modify(|g| *g += 1);
    }

    /// Compacts the event log: watches resuming from any earlier resourceVersion get 410 Gone.
    pub fn expire_history(&self) {
        self.store.expire_history();
    }

    /// The next `n` updates (PUT/PATCH over HTTP and `Store::update_status`) get 409 Conflict.
    pub fn conflict_next(&self, n: usize) {
        self.store.add_conflicts(n);
    }

    pub(super) fn latency(&self) -> Duration {
        *self.state.latency.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes one injected failure, if any is pending.
    pub(super) fn take_failure(&self) -> Option<u16> {
        let mut f = self.state.fail.lock().unwrap_or_else(|p| p.into_inner());
        if f.0 > 0 {
            f.0 -= 1;
            Some(f.1)
        } else {
            None
        }
    }

    pub(super) fn watch_closer(&self) -> tokio::sync::watch::Receiver<u64> {
        self.state.drop_watches.subscribe()
    }
}
