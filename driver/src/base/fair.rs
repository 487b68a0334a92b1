//! A fixed number of permits shared fairly between tenants.
//!
//! A plain semaphore serves waiters in arrival order, so a tenant that queues a thousand waiters
//! makes everyone else wait behind all of them. Here every tenant has its own FIFO queue and
//! freed permits go round-robin to the tenants that are waiting: a tenant with one waiter gets
//! the next-but-N permit, N being the number of other tenants waiting, however many waiters
//! those have. Used for key generation (CPU) and renewal workers.
//!
//! Waiting is a future woken by the releasing side: no polling. A waiter dropped before its turn
//! leaves its queue; one dropped after it was granted a permit but before it saw it passes the
//! permit on, so no permit is ever lost.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

/// A pool of `size` permits, shared round-robin between tenants. Cheap to clone.
#[derive(Clone)]
pub struct FairPool {
    shared: Arc<Mutex<State>>,
}

impl std::fmt::Debug for FairPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.state();
        f.debug_struct("FairPool")
            .field("size", &state.size)
            .field("free", &state.free)
            .field("waiting", &state.waiters.len())
            .finish()
    }
}

#[derive(Debug)]
struct State {
    size: usize,
    /// Permits nobody holds. Non-zero only while nobody waits: a released permit goes straight
    /// to the next waiter.
    free: usize,
    next_id: u64,
    /// Each waiting tenant's waiters, oldest first. Tenants without waiters have no entry.
    queues: HashMap<String, VecDeque<u64>>,
    /// The waiting tenants in the order they are served next.
    turns: VecDeque<String>,
    waiters: HashMap<u64, Waiter>,
}

#[derive(Debug)]
struct Waiter {
    waker: Option<Waker>,
    /// A permit was handed to this waiter; it owns it from then on.
    granted: bool,
}

impl State {
    /// A permit came back: hands it to the next tenant in turn, or keeps it free. Returns the
    /// waker to call once the lock is released.
    fn release(&mut self) -> Option<Waker> {
        while let Some(tenant) = self.turns.pop_front() {
            let Some(queue) = self.queues.get_mut(&tenant) else {
                continue;
            };
            let Some(id) = queue.pop_front() else {
                self.queues.remove(&tenant);
                continue;
            };
            if queue.is_empty() {
                self.queues.remove(&tenant);
            } else {
                self.turns.push_back(tenant);
            }
            if let Some(waiter) = self.waiters.get_mut(&id) {
                waiter.granted = true;
                return waiter.waker.take();
            }
        }
        self.free = (self.free + 1).min(self.size);
        None
    }

    /// Removes a waiter that has not been granted a permit from its tenant's queue.
    fn leave(&mut self, tenant: &str, id: u64) {
        if let Some(queue) = self.queues.get_mut(tenant) {
            queue.retain(|w| *w != id);
            if queue.is_empty() {
                self.queues.remove(tenant);
                self.turns.retain(|t| t != tenant);
            }
        }
    }
}

impl FairPool {
    /// A pool of `size` permits (at least one).
    pub fn new(size: usize) -> Self {
        let size = size.max(1);
        FairPool {
            shared: Arc::new(Mutex::new(State {
                size,
                free: size,
                next_id: 0,
                queues: HashMap::new(),
                turns: VecDeque::new(),
                waiters: HashMap::new(),
            })),
        }
    }

    /// A lock that cannot poison: every update above leaves the state consistent before it
    /// can panic.
    fn state(&self) -> MutexGuard<'_, State> {
        self.shared.lock()
    }

    pub fn size(&self) -> usize {
        self.state().size
    }

    /// Permits nobody holds right now.
    pub fn available(&self) -> usize {
        self.state().free
    }

    /// Waiters not yet granted a permit.
    pub fn waiting(&self) -> usize {
        self.state().waiters.values().filter(|w| !w.granted).count()
    }

    /// Waits for a permit on behalf of `tenant`. Dropping the future gives up the place in the
    /// queue (or the permit, if one was granted in the meantime).
    pub fn acquire(&self, tenant: &str) -> Acquire {
        Acquire {
            pool: self.clone(),
            tenant: tenant.to_owned(),
            id: None,
        }
    }

    fn release(&self) {
        let waker = self.state().release();
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// The future of [`FairPool::acquire`].
#[must_use = "a permit is only granted while the future is awaited"]
pub struct Acquire {
    pool: FairPool,
    tenant: String,
    /// Set once queued; cleared once the permit is taken.
    id: Option<u64>,
}

impl std::fmt::Debug for Acquire {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acquire")
            .field("tenant", &self.tenant)
            .field("queued", &self.id.is_some())
            .finish()
    }
}

impl Future for Acquire {
    type Output = Permit;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Permit> {
        let this = &mut *self;
        let mut state = this.pool.state();
        match this.id {
            None => {
                if state.free > 0 {
                    state.free -= 1;
                    drop(state);
                    return Poll::Ready(Permit {
                        pool: this.pool.clone(),
                    });
                }
                let id = state.next_id;
                state.next_id += 1;
                state.waiters.insert(
                    id,
                    Waiter {
                        waker: Some(cx.waker().clone()),
                        granted: false,
                    },
                );
                let queue = state.queues.entry(this.tenant.clone()).or_default();
                let first = queue.is_empty();
                queue.push_back(id);
                if first {
                    state.turns.push_back(this.tenant.clone());
                }
                this.id = Some(id);
                Poll::Pending
            }
            Some(id) => match state.waiters.get_mut(&id) {
                Some(waiter) if waiter.granted => {
                    state.waiters.remove(&id);
                    this.id = None;
                    drop(state);
                    Poll::Ready(Permit {
                        pool: this.pool.clone(),
                    })
                }
                Some(waiter) => {
                    match &waiter.waker {
                        Some(w) if w.will_wake(cx.waker()) => {}
                        _ => waiter.waker = Some(cx.waker().clone()),
                    }
                    Poll::Pending
                }
                // Not reachable: only this future removes its waiter. Queue again rather than
                // hang.
                None => {
                    this.id = None;
                    drop(state);
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }
            },
        }
    }
}

impl Drop for Acquire {
    fn drop(&mut self) {
        let Some(id) = self.id.take() else {
            return;
        };
        let mut state = self.pool.state();
        let granted = state.waiters.remove(&id).is_some_and(|w| w.granted);
        let waker = if granted {
            // The permit was ours but never seen: the next waiter gets it.
            state.release()
        } else {
            state.leave(&self.tenant, id);
            None
        };
        drop(state);
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// One permit of a [`FairPool`], given back when dropped.
pub struct Permit {
    pool: FairPool,
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Permit")
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.pool.release();
    }
}

/// A permit its holder can put down while it waits on something else (a signer's answer) and
/// pick up again, queueing fairly as its tenant. Clones share the one permit. The default lease
/// belongs to no pool: putting it down and picking it up do nothing.
#[derive(Clone, Default)]
pub struct Lease {
    inner: Option<Arc<LeaseInner>>,
}

struct LeaseInner {
    pool: FairPool,
    tenant: String,
    permit: Mutex<Option<Permit>>,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.inner {
            None => f.write_str("Lease(none)"),
            Some(inner) => f
                .debug_struct("Lease")
                .field("tenant", &inner.tenant)
                .field("held", &self.held())
                .finish(),
        }
    }
}

impl Lease {
    /// A lease on `permit`, taken from `pool` for `tenant`.
    pub fn new(pool: &FairPool, tenant: &str, permit: Permit) -> Self {
        Lease {
            inner: Some(Arc::new(LeaseInner {
                pool: pool.clone(),
                tenant: tenant.to_owned(),
                permit: Mutex::new(Some(permit)),
            })),
        }
    }

    fn slot(inner: &LeaseInner) -> MutexGuard<'_, Option<Permit>> {
        inner.permit.lock()
    }

    /// Whether the permit is held now (`false` for the default lease).
    pub fn held(&self) -> bool {
        self.inner
            .as_ref()
            .is_some_and(|inner| Lease::slot(inner).is_some())
    }

    /// Gives the permit back to the pool until [`Lease::resume`].
    pub fn pause(&self) {
        if let Some(inner) = &self.inner {
            let permit = Lease::slot(inner).take();
            drop(permit);
        }
    }

    /// Takes a permit again (if put down), waiting in the tenant's queue.
    pub async fn resume(&self) {
        let Some(inner) = &self.inner else {
            return;
        };
        if Lease::slot(inner).is_some() {
            return;
        }
        let permit = inner.pool.acquire(&inner.tenant).await;
        let mut slot = Lease::slot(inner);
        if slot.is_none() {
            *slot = Some(permit);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::sync::mpsc;

    /// Starts one waiter per (tenant, label) in order; each records its label when granted and
    /// holds the permit for `hold`.
    fn waiters(
        pool: &FairPool,
        order: &[(&str, &str)],
        hold: Duration,
    ) -> (
        mpsc::UnboundedReceiver<String>,
        Vec<tokio::task::JoinHandle<()>>,
    ) {
        let (tx, rx) = mpsc::unbounded_channel();
        let tasks = order
            .iter()
            .map(|(tenant, label)| {
                let (pool, tx) = (pool.clone(), tx.clone());
                let (tenant, label) = (tenant.to_string(), label.to_string());
                tokio::spawn(async move {
                    let _permit = pool.acquire(&tenant).await;
                    tx.send(label).unwrap();
                    tokio::time::sleep(hold).await;
                })
            })
            .collect();
        (rx, tasks)
    }

    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    fn drain(rx: &mut mpsc::UnboundedReceiver<String>) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(label) = rx.try_recv() {
            out.push(label);
        }
        out
    }

    #[tokio::test(start_paused = true)]
    async fn grants_round_robin_across_tenants_fifo_within_one() {
        // Each case: pool size, waiters in arrival order (the pool is full when they arrive),
        // the order they are granted.
        type Case<'a> = (&'a str, usize, &'a [(&'a str, &'a str)], &'a [&'a str]);
        let cases: &[Case] = &[
            (
                "one busy tenant does not delay the others",
                1,
                &[
                    ("a", "a1"),
                    ("a", "a2"),
                    ("a", "a3"),
                    ("a", "a4"),
                    ("b", "b1"),
                    ("c", "c1"),
                    ("b", "b2"),
                ],
                &["a1", "b1", "c1", "a2", "b2", "a3", "a4"],
            ),
            (
                "a single tenant is plain FIFO",
                1,
                &[("a", "1"), ("a", "2"), ("a", "3")],
                &["1", "2", "3"],
            ),
            (
                "two permits: two at a time, still in turn",
                2,
                &[
                    ("a", "a1"),
                    ("a", "a2"),
                    ("a", "a3"),
                    ("b", "b1"),
                    ("b", "b2"),
                ],
                &["a1", "b1", "a2", "b2", "a3"],
            ),
        ];
        for (name, size, order, expected) in cases {
            let pool = FairPool::new(*size);
            // Fill the pool first so every waiter below queues.
            let mut blockers = Vec::new();
            for _ in 0..*size {
                blockers.push(pool.acquire("blocker").await);
            }
            let (mut rx, tasks) = waiters(&pool, order, Duration::from_secs(1));
            settle().await;
            assert_eq!(pool.waiting(), order.len(), "{name}");
            drop(blockers);
            tokio::time::sleep(Duration::from_secs(100)).await;
            assert_eq!(drain(&mut rx), *expected, "{name}");
            for t in tasks {
                t.await.unwrap();
            }
            assert_eq!(pool.available(), *size, "{name}: every permit came back");
            assert_eq!(pool.waiting(), 0, "{name}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_tenant_arriving_late_is_served_next_not_last() {
        let pool = FairPool::new(1);
        let blocker = pool.acquire("x").await;
        let many: Vec<(&str, &str)> = vec![("noisy", "n"); 50];
        let (mut rx, _tasks) = waiters(&pool, &many, Duration::from_secs(1));
        settle().await;
        drop(blocker);
        // Three of noisy's have run when the quiet tenant arrives.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let (mut quiet_rx, _quiet) = waiters(&pool, &[("quiet", "q")], Duration::from_secs(1));
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(
            drain(&mut rx).len(),
            4,
            "noisy: three turns before quiet arrived, then the one it was already due"
        );
        assert_eq!(
            drain(&mut quiet_rx),
            ["q"],
            "quiet waits for one permit, not for noisy's 47 queued waiters"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn dropped_waiters_give_their_place_back() {
        let pool = FairPool::new(1);
        let held = pool.acquire("a").await;
        // Queued, then abandoned (a publish whose gRPC call was cancelled).
        let gone = tokio::spawn({
            let pool = pool.clone();
            async move {
                let _p = pool.acquire("gone").await;
                unreachable!("never granted");
            }
        });
        let (mut rx, _tasks) = waiters(&pool, &[("b", "b1")], Duration::from_secs(1));
        settle().await;
        assert_eq!(pool.waiting(), 2);
        gone.abort();
        settle().await;
        assert_eq!(pool.waiting(), 1, "the abandoned waiter left its queue");
        drop(held);
        settle().await;
        assert_eq!(
            drain(&mut rx),
            ["b1"],
            "the permit skips the abandoned waiter"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_permit_granted_to_a_waiter_that_is_dropped_passes_on() {
        let pool = FairPool::new(1);
        let held = pool.acquire("a").await;
        let mut first = Box::pin(pool.acquire("b"));
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(first.as_mut().poll(&mut cx).is_pending());
        let (mut rx, _tasks) = waiters(&pool, &[("c", "c1")], Duration::from_secs(1));
        settle().await;
        // Granted to `first`, which is dropped before it looks again.
        drop(held);
        drop(first);
        settle().await;
        assert_eq!(drain(&mut rx), ["c1"]);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(pool.available(), 1, "no permit lost");
    }

    #[tokio::test(start_paused = true)]
    async fn a_paused_lease_frees_its_permit_and_resumes_in_turn() {
        let pool = FairPool::new(1);
        let lease = Lease::new(&pool, "a", pool.acquire("a").await);
        assert!(lease.held());
        let (mut rx, _tasks) = waiters(&pool, &[("b", "b1")], Duration::from_secs(1));
        settle().await;
        assert!(drain(&mut rx).is_empty(), "the lease holds the only permit");
        lease.pause();
        assert!(!lease.held());
        settle().await;
        assert_eq!(drain(&mut rx), ["b1"], "pausing let the next tenant in");
        let started = tokio::time::Instant::now();
        lease.resume().await;
        assert!(lease.held());
        assert_eq!(
            started.elapsed(),
            Duration::from_secs(1),
            "resumed after b1"
        );
        drop(lease);
        assert_eq!(pool.available(), 1);
        // The default lease belongs to no pool.
        let none = Lease::default();
        none.pause();
        none.resume().await;
        assert!(!none.held());
    }
}
