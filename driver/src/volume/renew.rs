//! Renewals: the scheduler's queue entries and one renewal of a published volume.

use crate::base::fair::Lease;
use crate::files::store::{self, Phase, RenewalRecord, VolumeState};
use crate::runtime::scheduler::{RenewOutcome, Renewer};
use crate::spec::attrs::{self};
use crate::x509::keys::PrivateKey;
use futures::future::BoxFuture;
use std::fs;
use std::sync::Arc;
use tracing::{info, warn};
use zeroize::Zeroizing;

use super::{
    Slot, VolumeManager,
    error::VolumeError,
    issue::{BundleFrom, With, prune_keys},
    namespace_of,
};

impl VolumeManager {
    /// Puts a published volume on the renewal queue at its recorded time.
    pub(crate) fn schedule(&self, state: &VolumeState) {
        if state.phase != Phase::Published {
            return;
        }
        let renew = attrs::parse(&state.context.clone().into_iter().collect())
            .map(|r| r.renew)
            .unwrap_or(true);
        if !renew {
            return;
        }
        let at = if state.pending.is_some() {
            // A renewal was in flight when the driver stopped: resume it now.
            self.clock.now()
        } else if let Some(next) = state.renewal.next_attempt {
            store::to_system(next)
        } else if let Some(current) = &state.current {
            store::to_system(current.renew_at)
        } else {
            return;
        };
        self.scheduler
            .schedule(&state.volume_id, namespace_of(state), at);
    }

    /// Moves every renewal that failed and waits out its backoff to now: called when the API
    /// server answers again after an outage, so that certificates that expired (or came close)
    /// during it are renewed at once rather than after a backoff grown during the outage (up to
    /// the policy's cap, minutes). A volume busy with another operation is skipped: that
    /// operation reschedules it. Returns how many renewals were moved.
    pub fn retry_failed_renewals(&self) -> usize {
        let slots: Vec<(String, Slot)> = match self.slots.lock() {
            Ok(slots) => slots
                .iter()
                .map(|(id, s)| (id.clone(), s.clone()))
                .collect(),
            Err(_) => return 0,
        };
        let now = self.clock.now();
        let mut moved = 0;
        for (volume_id, slot) in slots {
            let Ok(mut guard) = slot.try_lock() else {
                continue;
            };
            if let Some(state) = guard.as_mut()
                && state.phase == Phase::Published
                && state.renewal.failures > 0
            {
                // The backoff starts over: the outage it grew during has ended. (In memory only;
                // the attempt's outcome is saved either way.)
                state.renewal.failures = 0;
                self.scheduler
                    .schedule(&volume_id, namespace_of(state), now);
                moved += 1;
            }
        }
        moved
    }

    /// One renewal of a published volume, outside the scheduler's workers (tests, tools).
    pub async fn renew_volume(&self, volume_id: &str) -> RenewOutcome {
        self.renew_on(volume_id, &Lease::default()).await
    }

    /// One renewal of a published volume on the scheduler's `worker`. Failures keep the old,
    /// still-valid files in place.
    async fn renew_on(&self, volume_id: &str, worker: &Lease) -> RenewOutcome {
        let (slot, mut guard) = match self.lock(volume_id).await {
            Ok(locked) => locked,
            Err(e) => {
                warn!(volume_id, error = %e, "renewal could not load the volume");
                return RenewOutcome::Done;
            }
        };
        let outcome = match guard.as_mut() {
            Some(state) if state.phase == Phase::Published => {
                self.renew_locked(state, worker).await
            }
            _ => RenewOutcome::Done,
        };
        self.release(volume_id, &slot, &guard);
        outcome
    }

    async fn renew_locked(&self, state: &mut VolumeState, worker: &Lease) -> RenewOutcome {
        let req = match attrs::parse(&state.context.clone().into_iter().collect()) {
            Ok(req) => Arc::new(req),
            Err(e) => {
                warn!(volume_id = %state.volume_id, error = %e, "recorded attributes no longer parse; renewal stopped");
                return RenewOutcome::Done;
            }
        };
        if !req.renew {
            return RenewOutcome::Done;
        }
        let Some(current) = state.current.clone() else {
            return RenewOutcome::Done;
        };
        let paths = self.store.paths(&state.volume_id);
        let revision = state
            .pending
            .as_ref()
            .map_or(state.last_revision.max(current.revision) + 1, |p| {
                p.revision
            });
        let mut trust = None;
        let mut stale = false;
        let result = async {
            trust = self.open_trust(&req, true)?;
            // Waiting for the trust sources' watches is not work: the worker is put down.
            let ready = match trust.as_mut() {
                Some(t) => {
                    worker.pause();
                    let ready = t.ready(self.cfg.issue_timeout).await;
                    worker.resume().await;
                    ready
                }
                None => Ok(()),
            };
            if let Err(e) = ready {
                warn!(volume_id = %state.volume_id, error = %e, "renewing with the trust bundle as last written");
                self.report_source_error(&req, &e).await;
                stale = true;
            }
            let bundle_from = if stale {
                BundleFrom::LastWritten
            } else {
                BundleFrom::Sources(trust.as_ref())
            };
            let reuse = if req.reuse_private_key && state.pending.is_none() {
                let path = paths.key(current.revision);
                let der = fs::read(&path)
                    .map(Zeroizing::new)
                    .map_err(VolumeError::io_at("read", &path))?;
                Some(PrivateKey::from_pkcs8_der(&der)?)
            } else {
                None
            };
            self.issue_revision(
                "renew",
                &paths,
                state,
                &req,
                revision,
                With {
                    reuse,
                    trust: bundle_from,
                    worker,
                },
            )
            .await
        }
        .await;
        match result {
            Ok(()) => {
                crate::obs::metrics::global().renewal(true);
                if let Some(c) = &state.current {
                    crate::obs::metrics::global()
                        .track_volume(&state.volume_id, store::to_system(c.not_after));
                }
                self.prune_requests(state).await;
                self.watch_trust(state, &req, trust.take());
                info!(volume_id = %state.volume_id, revision, "certificate renewed");
                match &state.current {
                    Some(c) => RenewOutcome::Renewed {
                        next: store::to_system(c.renew_at),
                    },
                    None => RenewOutcome::Done,
                }
            }
            Err(err) => {
                let err = err.on_data_root(self.store.root());
                crate::obs::metrics::global().renewal(false);
                if let VolumeError::Issue(e) = &err
                    && !e.is_transient()
                {
                    // cert-manager never retries a denied or failed request: the next attempt
                    // must file a new one (with a new key; this one is of no further use).
                    state.pending = None;
                    prune_keys(&paths, current.revision);
                }
                let failures = state.renewal.failures.saturating_add(1);
                let retry = certvol_renewer::retry_at(
                    self.clock.now(),
                    store::to_system(current.not_after),
                    failures,
                    &self.cfg.policy,
                    rand::random::<f64>(),
                );
                state.renewal = RenewalRecord {
                    failures,
                    last_error: Some(err.to_string()),
                    next_attempt: Some(store::to_offset(retry)),
                };
                if let Err(e) = self.save(state).await {
                    warn!(volume_id = %state.volume_id, error = %e, "could not record the renewal failure");
                }
                warn!(volume_id = %state.volume_id, error = %err, failures, "renewal failed; the current certificate stays in place");
                RenewOutcome::Failed { retry_at: retry }
            }
        }
    }

    /// Keeps the newest `request_history` requests and asks the issuer to forget the rest.
    async fn prune_requests(&self, state: &mut VolumeState) {
        let keep = self.cfg.request_history.max(1);
        if state.requests.len() <= keep {
            return;
        }
        let old: Vec<String> = state.requests[..state.requests.len() - keep].to_vec();
        match self.issuer.forget(namespace_of(state), &old).await {
            Ok(()) => {
                state.requests.drain(..old.len());
                if let Err(e) = self.save(state).await {
                    warn!(volume_id = %state.volume_id, error = %e, "could not record pruned requests");
                }
            }
            Err(e) => {
                warn!(volume_id = %state.volume_id, error = %e, "could not delete old issuer requests")
            }
        }
    }
}

impl Renewer for VolumeManager {
    fn renew(
        self: Arc<Self>,
        volume_id: String,
        worker: Lease,
    ) -> BoxFuture<'static, RenewOutcome> {
        Box::pin(async move { self.renew_on(&volume_id, &worker).await })
    }
}
