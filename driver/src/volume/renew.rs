//! Renewals: the scheduler's queue entries and one renewal of a published volume.

use std::fs;
use std::sync::Arc;

use futures::future::BoxFuture;
use tracing::{debug, info, warn};
use zeroize::Zeroizing;

use crate::base::fair::Lease;
use crate::files::store::{self, CertRecord, Phase, RenewalRecord, VolumePaths, VolumeState};
use crate::runtime::scheduler::{RenewOutcome, Renewer};
use crate::spec::request::CertRequest;
use crate::trust::VolumeTrust;
use crate::x509::keys::PrivateKey;

use super::{
    Slot, VolumeManager,
    error::VolumeError,
    issue::{BundleFrom, Issuance, Op, prune_keys},
    namespace_of,
};

impl VolumeManager {
    /// Puts a published volume on the renewal queue at its recorded time, unless its attributes
    /// turn renewal off (`renew`).
    pub(crate) fn schedule(&self, state: &VolumeState, renew: bool) {
        if state.phase != Phase::Published || !renew {
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
    pub(crate) fn retry_failed_renewals(&self) -> usize {
        let slots: Vec<(String, Slot)> = self
            .slots
            .lock()
            .iter()
            .map(|(id, s)| (id.clone(), s.clone()))
            .collect();
        let now = self.clock.now();
        let mut moved = 0;
        for (volume_id, slot) in slots {
            let Ok(mut guard) = slot.state.try_lock() else {
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
    #[cfg(test)]
    pub(crate) async fn renew_volume(&self, volume_id: &str) -> RenewOutcome {
        self.renew_on(volume_id, &Lease::default()).await
    }

    /// One renewal of a published volume on the scheduler's `worker`. Failures keep the old,
    /// still-valid files in place. Its log lines carry the volume id and (once the state is
    /// loaded) the pod's namespace and name from the operation's span.
    #[tracing::instrument(
        name = "renew",
        skip_all,
        fields(
            volume_id = %volume_id,
            namespace = tracing::field::Empty,
            pod = tracing::field::Empty
        )
    )]
    async fn renew_on(&self, volume_id: &str, worker: &Lease) -> RenewOutcome {
        debug!("renewal due");
        let (slot, mut guard) = match self.lock(volume_id).await {
            Ok(locked) => locked,
            Err(e) => {
                warn!(error = %e, "renewal could not load the volume");
                return RenewOutcome::Done;
            }
        };
        if let Some(state) = guard.as_ref() {
            tracing::Span::current().record("namespace", namespace_of(state));
        }
        let outcome = match guard.as_mut() {
            Some(state) if state.phase == Phase::Published => match self.request(&slot, state) {
                Ok(req) => {
                    super::record_pod(&req);
                    self.renew_locked(state, req, worker).await
                }
                Err(e) => {
                    warn!(error = %e, "recorded attributes no longer parse; renewal stopped");
                    RenewOutcome::Done
                }
            },
            _ => RenewOutcome::Done,
        };
        self.release(volume_id, &slot, &guard);
        outcome
    }

    async fn renew_locked(
        &self,
        state: &mut VolumeState,
        req: Arc<CertRequest>,
        worker: &Lease,
    ) -> RenewOutcome {
        if !req.renew {
            return RenewOutcome::Done;
        }
        let Some(current) = state.current.clone() else {
            return RenewOutcome::Done;
        };
        let revision = state
            .pending
            .as_ref()
            .map_or(state.last_revision.max(current.revision) + 1, |p| {
                p.revision
            });
        let mut trust = None;
        match self
            .issue_renewal(state, &req, revision, worker, &mut trust)
            .await
        {
            Ok(()) => self.renewed(state, &req, revision, trust).await,
            Err(err) => self.renewal_failed(state, err, &current).await,
        }
    }

    /// Issues the next revision with the volume's trust sources, or with the bundle as last
    /// written when they cannot be read right now; `trust` gets the subscriptions opened.
    async fn issue_renewal(
        &self,
        state: &mut VolumeState,
        req: &Arc<CertRequest>,
        revision: u64,
        worker: &Lease,
        trust: &mut Option<VolumeTrust>,
    ) -> Result<(), VolumeError> {
        *trust = self.open_trust(req, true)?;
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
        let bundle_from = match ready {
            Ok(()) => BundleFrom::Sources(trust.as_ref()),
            Err(e) => {
                warn!(error = %e, "renewing with the trust bundle as last written");
                self.report_source_error(req, &e).await;
                BundleFrom::LastWritten
            }
        };
        let paths = self.store.paths(&state.volume_id);
        let job = Issuance {
            op: Op::Renew,
            paths: &paths,
            req,
            revision,
            reuse: reused_key(state, req, &paths)?,
            trust: bundle_from,
            worker,
        };
        self.issue_revision(state, job).await
    }

    /// After a renewal: metrics, old requests pruned, the trust watch handed over; answers when
    /// the next renewal is due.
    async fn renewed(
        &self,
        state: &mut VolumeState,
        req: &CertRequest,
        revision: u64,
        trust: Option<VolumeTrust>,
    ) -> RenewOutcome {
        self.metrics.renewal(true);
        if let Some(c) = &state.current {
            self.metrics
                .track_volume(&state.volume_id, store::to_system(c.not_after));
        }
        self.prune_requests(state).await;
        self.watch_trust(state, req, trust);
        info!(revision, "certificate renewed");
        match &state.current {
            Some(c) => RenewOutcome::Renewed {
                next: store::to_system(c.renew_at),
            },
            None => RenewOutcome::Done,
        }
    }

    /// After a failed renewal: the failure recorded with the time of the next attempt (backing
    /// off, but before `current` expires). The current files stay.
    async fn renewal_failed(
        &self,
        state: &mut VolumeState,
        err: VolumeError,
        current: &CertRecord,
    ) -> RenewOutcome {
        let err = err.on_data_root(self.store.root());
        self.metrics.renewal(false);
        if let VolumeError::Issue(e) = &err
            && !e.is_transient()
        {
            // cert-manager never retries a denied or failed request: the next attempt
            // must file a new one (with a new key; this one is of no further use).
            state.pending = None;
            prune_keys(&self.store.paths(&state.volume_id), current.revision);
        }
        let failures = state.renewal.failures.saturating_add(1);
        let retry = certvol_renewer::retry_at(
            self.clock.now(),
            store::to_system(current.not_after),
            failures,
            &self.cfg.policy,
            self.random.sample(),
        );
        state.renewal = RenewalRecord {
            failures,
            last_error: Some(err.to_string()),
            next_attempt: Some(store::to_offset(retry)),
        };
        if let Err(e) = self.save(state).await {
            warn!(error = %e, "could not record the renewal failure");
        }
        warn!(error = %err, failures, "renewal failed; the current certificate stays in place");
        RenewOutcome::Failed { retry_at: retry }
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
                    warn!(error = %e, "could not record pruned requests");
                }
            }
            Err(e) => {
                warn!(error = %e, "could not delete old issuer requests")
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

/// The current key, for a renewal that keeps it (`reuse-private-key`) and is not resuming a
/// pending request (which has its own key).
fn reused_key(
    state: &VolumeState,
    req: &CertRequest,
    paths: &VolumePaths,
) -> Result<Option<PrivateKey>, VolumeError> {
    let Some(current) = state.current.as_ref() else {
        return Ok(None);
    };
    if !req.reuse_private_key || state.pending.is_some() {
        return Ok(None);
    }
    let path = paths.key(current.revision);
    let der = fs::read(&path)
        .map(Zeroizing::new)
        .map_err(VolumeError::io_at("read", &path))?;
    Ok(Some(PrivateKey::from_pkcs8_der(&der)?))
}

#[cfg(test)]
mod tests {
    use crate::volume::tests::*;

    use std::fs;
    use std::time::SystemTime;

    use crate::files::store::RenewalRecord;
    use crate::issuer::{self};
    use crate::runtime::scheduler::RenewOutcome;
    use crate::x509::keys::PrivateKey;
    use crate::x509::pki;

    #[tokio::test]
    async fn failed_renewals_keep_the_old_files_back_off_and_recover() {
        let f = fixture();
        let p = params(&f, "renew");
        f.mgr.publish(p.clone()).await.unwrap();
        let before = cert_of(&p.target_path);

        set(&f, UNAVAILABLE);
        let outcome = f.mgr.renew_volume("csi-renew").await;
        let RenewOutcome::Failed { retry_at } = outcome else {
            panic!("{outcome:?}")
        };
        assert!(retry_at > SystemTime::now());
        assert_eq!(cert_of(&p.target_path), before, "old files stay in place");
        let state = f.mgr.store().load("csi-renew").unwrap().unwrap();
        assert_eq!(state.renewal.failures, 1);
        assert!(
            state
                .renewal
                .last_error
                .as_deref()
                .unwrap()
                .contains("connection refused")
        );
        let rev2 = issuer::request_name("node-a", "csi-renew", 2);
        assert_eq!(state.pending.as_ref().unwrap().request_name, rev2);

        // Denied is final for that request: the next attempt files revision 3.
        set(&f, DENIED);
        assert!(matches!(
            f.mgr.renew_volume("csi-renew").await,
            RenewOutcome::Failed { .. }
        ));
        let state = f.mgr.store().load("csi-renew").unwrap().unwrap();
        assert_eq!(state.renewal.failures, 2);
        assert!(state.pending.is_none());

        set(&f, OK);
        let outcome = f.mgr.renew_volume("csi-renew").await;
        assert!(
            matches!(outcome, RenewOutcome::Renewed { .. }),
            "{outcome:?}"
        );
        assert_ne!(cert_of(&p.target_path), before);
        let state = f.mgr.store().load("csi-renew").unwrap().unwrap();
        assert_eq!(state.renewal, RenewalRecord::default());
        let rev3 = issuer::request_name("node-a", "csi-renew", 3);
        assert_eq!(state.current.as_ref().unwrap().request_name, rev3);
        assert_eq!(
            state.requests,
            vec![rev3],
            "older requests pruned (history 1)"
        );
        let names = calls(&f);
        assert_eq!(
            names[1..],
            [
                rev2.clone(),
                rev2,
                issuer::request_name("node-a", "csi-renew", 3)
            ]
        );
    }

    #[tokio::test]
    async fn a_renewal_whose_pending_record_is_refused_files_nothing() {
        let f = fixture();
        let p = params(&f, "nosave");
        f.mgr.publish(p.clone()).await.unwrap();
        let before = cert_of(&p.target_path);
        let on_disk = f.mgr.store().load("csi-nosave").unwrap().unwrap();
        let blocker = block_saves(&f, "csi-nosave");
        fs::create_dir(&blocker).unwrap();

        let outcome = f.mgr.renew_volume("csi-nosave").await;
        assert!(
            matches!(outcome, RenewOutcome::Failed { .. }),
            "{outcome:?}"
        );
        assert_eq!(calls(&f).len(), 1, "no request filed without its record");
        assert_eq!(cert_of(&p.target_path), before);
        assert_eq!(f.mgr.store().load("csi-nosave").unwrap().unwrap(), on_disk);
        // Nothing was recorded, so memory must not claim a pending request either.
        let in_memory = f.mgr.status(&id("csi-nosave")).await.unwrap().unwrap();
        assert_eq!(in_memory.pending, None);
        assert_eq!(in_memory.last_revision, on_disk.last_revision);

        fs::remove_dir(&blocker).unwrap();
        let outcome = f.mgr.renew_volume("csi-nosave").await;
        assert!(
            matches!(outcome, RenewOutcome::Renewed { .. }),
            "{outcome:?}"
        );
        assert_eq!(
            calls(&f)[1..],
            [issuer::request_name("node-a", "csi-nosave", 2)]
        );
        assert_ne!(cert_of(&p.target_path), before);
    }

    #[tokio::test]
    async fn a_renewal_whose_result_cannot_be_recorded_is_finished_without_a_new_request() {
        let f = fixture();
        let p = params(&f, "unrec");
        f.mgr.publish(p.clone()).await.unwrap();
        let before = cert_of(&p.target_path);
        let blocker = block_saves(&f, "csi-unrec");
        *f.issuer.after_issue.lock().unwrap() = Some(blocker.clone());

        let outcome = f.mgr.renew_volume("csi-unrec").await;
        assert!(
            matches!(outcome, RenewOutcome::Failed { .. }),
            "{outcome:?}"
        );
        let rev2 = issuer::request_name("node-a", "csi-unrec", 2);
        assert_eq!(&calls(&f)[1..], std::slice::from_ref(&rev2));
        // The new pair is in place and matches; only its record is missing.
        let written = cert_of(&p.target_path);
        assert_ne!(written, before);
        let leaf = pki::parse_pem_chain(&String::from_utf8(written.clone()).unwrap()).unwrap();
        let key = PrivateKey::from_pem(&fs::read_to_string(p.target_path.join("tls.key")).unwrap())
            .unwrap();
        assert!(pki::key_matches(&leaf[0], &key).unwrap());
        let on_disk = f.mgr.store().load("csi-unrec").unwrap().unwrap();
        assert_eq!(on_disk.current.as_ref().unwrap().revision, 1);
        assert_eq!(on_disk.pending.as_ref().unwrap().request_name, rev2);

        // The retry resumes the same request with the key already in place: the issuer is
        // asked for revision 2 again (and answers with what it signed), never for a third.
        fs::remove_dir(&blocker).unwrap();
        let outcome = f.mgr.renew_volume("csi-unrec").await;
        assert!(
            matches!(outcome, RenewOutcome::Renewed { .. }),
            "{outcome:?}"
        );
        assert_eq!(calls(&f)[1..], [rev2.clone(), rev2.clone()]);
        assert_eq!(cert_of(&p.target_path), written, "the same certificate");
        let state = f.mgr.store().load("csi-unrec").unwrap().unwrap();
        let current = state.current.unwrap();
        assert_eq!((current.revision, current.request_name), (2, rev2));
        assert_eq!(current.serial, leaf[0].serial_hex);
        assert_eq!(state.pending, None);
        assert_eq!(state.renewal, RenewalRecord::default());
    }

    #[tokio::test]
    async fn only_failed_renewals_are_moved_when_the_api_answers_again() {
        let f = fixture();
        let (ok, failing) = (params(&f, "fine"), params(&f, "failing"));
        f.mgr.publish(ok.clone()).await.unwrap();
        f.mgr.publish(failing.clone()).await.unwrap();
        assert_eq!(f.mgr.retry_failed_renewals(), 0);
        set(&f, UNAVAILABLE);
        let outcome = f.mgr.renew_volume("csi-failing").await;
        assert!(
            matches!(outcome, RenewOutcome::Failed { .. }),
            "{outcome:?}"
        );
        let outcome = f.mgr.renew_volume("csi-failing").await;
        assert!(
            matches!(outcome, RenewOutcome::Failed { .. }),
            "{outcome:?}"
        );
        assert_eq!(f.mgr.retry_failed_renewals(), 1);
        // The backoff starts over: the next failure is the first again.
        let outcome = f.mgr.renew_volume("csi-failing").await;
        assert!(
            matches!(outcome, RenewOutcome::Failed { .. }),
            "{outcome:?}"
        );
        let state = f.mgr.store().load("csi-failing").unwrap().unwrap();
        assert_eq!(state.renewal.failures, 1);
        set(&f, OK);
        let outcome = f.mgr.renew_volume("csi-failing").await;
        assert!(
            matches!(outcome, RenewOutcome::Renewed { .. }),
            "{outcome:?}"
        );
        assert_eq!(
            f.mgr.retry_failed_renewals(),
            0,
            "a success clears the failure"
        );
    }
}
