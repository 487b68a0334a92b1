//! One issuance, shared by publish and renewal, as named steps: the key (new, reused or the
//! pending one of an interrupted attempt), filing the request, verifying what the issuer
//! returned, writing the new generation of files, and recording it.

use std::fs;
use std::io;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tracing::{debug, warn};
use zeroize::Zeroizing;

use crate::base::crashpoint::{self, Point};
use crate::base::fair::{FairPool, Lease};
use crate::files::fsutil;
use crate::files::layout::{self, Material};
use crate::files::store::{
    self, CertRecord, PendingRecord, Phase, RenewalRecord, VolumePaths, VolumeState,
};
use crate::files::writer;
use crate::issuer::{self, IssueError, IssueRequest, Issued};
use crate::obs::metrics::IssueOutcome;
use crate::spec::request::{CertRequest, KeyAlgorithm};
use crate::trust::bundle::{self as trust_bundle, Bundle, SourcePem};
use crate::trust::rotation::{self, OverlapPolicy};
use crate::trust::{IssuingCa, TrustSpec, VolumeTrust};
use crate::x509::keys::{self, PrivateKey};
use crate::x509::pki;

use super::{VolumeManager, error::VolumeError, trust::build_bundle};

/// Which operation an issuance is part of; it names the issuance's crash points.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Op {
    Publish,
    Renew,
}

/// A step of an issuance, named by its crash point.
#[derive(Clone, Copy, Debug)]
enum Step {
    KeySaved,
    Signed,
    FilesWritten,
    Recorded,
}

impl Op {
    fn hit(self, step: Step) {
        crashpoint::hit(match (self, step) {
            (Op::Publish, Step::KeySaved) => Point::PublishKeySaved,
            (Op::Publish, Step::Signed) => Point::PublishSigned,
            (Op::Publish, Step::FilesWritten) => Point::PublishFilesWritten,
            (Op::Publish, Step::Recorded) => Point::PublishRecorded,
            (Op::Renew, Step::KeySaved) => Point::RenewKeySaved,
            (Op::Renew, Step::Signed) => Point::RenewSigned,
            (Op::Renew, Step::FilesWritten) => Point::RenewFilesWritten,
            (Op::Renew, Step::Recorded) => Point::RenewRecorded,
        });
    }
}

/// What one issuance needs besides the volume's state.
pub(super) struct Issuance<'a> {
    pub(super) op: Op,
    pub(super) paths: &'a VolumePaths,
    pub(super) req: &'a Arc<CertRequest>,
    pub(super) revision: u64,
    /// A key to reuse (renewal with `reuse-private-key`).
    pub(super) reuse: Option<PrivateKey>,
    /// Where the volume's trust bundle comes from.
    pub(super) trust: BundleFrom<'a>,
    /// The renewal worker the issuance runs on (none for a publish); put down while the
    /// issuer waits for its answer.
    pub(super) worker: &'a Lease,
}

/// Where an issuance takes the trust bundle's sources from.
#[derive(Clone, Copy)]
pub(super) enum BundleFrom<'a> {
    /// The volume's subscriptions, listed (`None`: the spec names no Kubernetes objects).
    Sources(Option<&'a VolumeTrust>),
    /// A renewal whose sources cannot be read right now: the new issuing CA(s) followed by the
    /// bundle last written, so that a deleted ConfigMap never lets the certificate expire. The
    /// refresher rewrites the bundle once the sources are readable again.
    LastWritten,
}

/// What the node checked of an issued certificate.
struct Verified {
    request: String,
    not_before: SystemTime,
    not_after: SystemTime,
    serial: String,
    /// When it was checked: the bundle's overlaps are measured from here.
    now: SystemTime,
}

impl VolumeManager {
    /// Issues revision `job.revision` of the volume: key, request, verification, atomic file
    /// swap, state update. Each step that changes the state saves it before the next is taken.
    pub(super) async fn issue_revision(
        &self,
        state: &mut VolumeState,
        mut job: Issuance<'_>,
    ) -> Result<(), VolumeError> {
        // Before anything is issued: a renewal that could not write the keystore must not
        // consume a request.
        let password = match &job.req.files.pkcs12 {
            Some(_) => Some(self.kept_password(job.paths, &state.volume_id)?),
            None => None,
        };
        let request = issuer::request_name(&self.cfg.node_id, &state.volume_id, job.revision);
        let key = self.issuance_key(state, &mut job, &request).await?;
        let issued = self.file_request(state, &job, &request, &key).await?;
        let checked = self.verify_issued(state, request, &issued, &key).await?;
        let (issuing_cas, bundle) = self.issuance_bundle(state, &job, &issued.ca_pem, &checked)?;
        let material = Material {
            key,
            chain_pem: issued.chain_pem,
            ca_pem: issued.ca_pem,
            trust_bundle_pem: bundle.as_ref().map(Bundle::pem),
            pkcs12_password: password,
        };
        self.write_generation(state, &job, material)?;
        self.record_issuance(state, &job, checked, issuing_cas)
            .await?;
        if let Some(bundle) = &bundle {
            self.report_rejected(job.req, &bundle.rejected).await;
        }
        Ok(())
    }

    /// Step 1, the key: the pending one of an interrupted attempt at this revision, else the
    /// reused or a new one, recorded as pending before any request is filed with it.
    async fn issuance_key(
        &self,
        state: &mut VolumeState,
        job: &mut Issuance<'_>,
        request: &str,
    ) -> Result<PrivateKey, VolumeError> {
        if let Some(key) = self.pending_key(state, job)? {
            debug!(request = %request, "resuming pending request");
            return Ok(key);
        }
        let key = match job.reuse.take() {
            Some(key) => key,
            None => {
                let pools = KeyPools {
                    all: &self.keygen,
                    slow: &self.slow_keygen,
                };
                generate_key(pools, &job.req.pod.namespace, job.req.key_algorithm).await?
            }
        };
        let pending_key = job.paths.key(job.revision);
        fsutil::replace(&pending_key, key.pkcs8_der(), 0o600)
            .map_err(VolumeError::io_at("write", &pending_key))?;
        // Changed on a copy and adopted only once it is on disk: a request must never be
        // filed on the strength of a record the data root refused (full, read-only).
        let mut next = state.clone();
        next.last_revision = next.last_revision.max(job.revision);
        next.pending = Some(PendingRecord {
            revision: job.revision,
            request_name: request.to_owned(),
            key_algorithm: key.algorithm(),
            started_at: store::to_offset(self.clock.now()),
        });
        if !next.requests.iter().any(|r| r == request) {
            next.requests.push(request.to_owned());
        }
        if next.current.is_none() {
            next.phase = Phase::Issuing;
        }
        self.save(&next).await?;
        *state = next;
        job.op.hit(Step::KeySaved);
        Ok(key)
    }

    /// The key an interrupted attempt at this revision recorded as pending, if it is still there.
    fn pending_key(
        &self,
        state: &VolumeState,
        job: &Issuance<'_>,
    ) -> Result<Option<PrivateKey>, VolumeError> {
        let pending_key = job.paths.key(job.revision);
        match &state.pending {
            Some(p) if p.revision == job.revision => match fs::read(&pending_key) {
                Ok(der) => Ok(Some(PrivateKey::from_pkcs8_der(&Zeroizing::new(der))?)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    debug!(
                        revision = job.revision,
                        "the pending key is gone; filing with a new key"
                    );
                    Ok(None)
                }
                Err(e) => Err(VolumeError::io_at("read", &pending_key)(e)),
            },
            _ => Ok(None),
        }
    }

    /// Step 2, the request: filed with the issuer, whose answer is awaited with the worker put
    /// down.
    async fn file_request(
        &self,
        state: &VolumeState,
        job: &Issuance<'_>,
        request: &str,
        key: &PrivateKey,
    ) -> Result<Issued, VolumeError> {
        let csr = keys::build_csr(job.req, key)?;
        let token = self.tokens.lock().get(&state.volume_id).cloned();
        let ireq = IssueRequest {
            name: request.to_owned(),
            volume_id: state.volume_id.clone(),
            node_id: self.cfg.node_id.clone(),
            csr_pem: csr.pem,
            csr_der: csr.der,
            cert: job.req.clone(),
            token,
            worker: job.worker.clone(),
        };
        let answer = tokio::time::timeout(
            self.cfg.issue_timeout + Duration::from_secs(5),
            self.issuer.issue(&ireq),
        )
        .await;
        // The issuer may have put the worker down to wait; what follows is work again.
        job.worker.resume().await;
        // Issuers answer Timeout themselves at `issue_timeout`; this outer limit only guards
        // against one that does not.
        let metrics = &self.metrics;
        match answer {
            Ok(result) => {
                metrics.issuance(self.issuer.kind(), crate::issuer::outcome_of(&result));
                let issued = result?;
                job.op.hit(Step::Signed);
                Ok(issued)
            }
            Err(_) => {
                metrics.issuance(self.issuer.kind(), IssueOutcome::Timeout);
                Err(IssueError::Timeout {
                    request: request.to_owned(),
                }
                .into())
            }
        }
    }

    /// Step 3, verification: the chain parses, its leaf holds the node's key, it has not
    /// expired, and it chains to the CA the issuer named (when it named one).
    async fn verify_issued(
        &self,
        state: &mut VolumeState,
        request: String,
        issued: &Issued,
        key: &PrivateKey,
    ) -> Result<Verified, VolumeError> {
        let bad = |message: String| bad_certificate(&request, message);
        let chain = pki::parse_pem_chain(&issued.chain_pem).map_err(|e| bad(e.to_string()))?;
        let leaf = chain
            .first()
            .ok_or_else(|| bad("the chain holds no certificate".into()))?;
        if !pki::key_matches(leaf, key).map_err(|e| bad(e.to_string()))? {
            return Err(bad(
                "its public key does not match the private key this node generated".into(),
            ));
        }
        let now = self.clock.now();
        if leaf.not_after <= now {
            // Signed in time but seen too late (the node could not watch its request, e.g.
            // during an API outage, while a short certificate ran out). Asking the same request
            // again only returns the same certificate: forget it so the retry files the next
            // revision. Saved best effort: if the save fails, the retry sees the same expired
            // certificate and gets here again.
            let mut next = state.clone();
            next.pending = None;
            if self.save(&next).await.is_ok() {
                *state = next;
            }
            return Err(VolumeError::Expired {
                request,
                not_after: leaf.not_after,
            });
        }
        if !issued.ca_pem.trim().is_empty() {
            let ca = pki::parse_pem_chain(&issued.ca_pem).map_err(|e| bad(e.to_string()))?;
            pki::verify_chain(&chain, &ca, now).map_err(|e| bad(e.to_string()))?;
        }
        Ok(Verified {
            not_before: leaf.not_before,
            not_after: leaf.not_after,
            serial: leaf.serial_hex.clone(),
            now,
            request,
        })
    }

    /// The issuing CAs to record (the new one, and any retired one still in its overlap) and
    /// the bundle built with them, to be written in the same generation as the key and
    /// certificate; none without a trust spec.
    fn issuance_bundle(
        &self,
        state: &VolumeState,
        job: &Issuance<'_>,
        ca_pem: &str,
        checked: &Verified,
    ) -> Result<(Vec<IssuingCa>, Option<Bundle>), VolumeError> {
        let Some(spec) = &job.req.trust else {
            return Ok((Vec::new(), None));
        };
        let cas = rotation::rotate(
            &state.issuing_cas,
            ca_pem,
            checked.now,
            OverlapPolicy {
                requested_duration: job.req.duration,
                // The certificate being replaced was signed by the CA that may retire.
                latest_known_leaf: state
                    .current
                    .as_ref()
                    .map(|c| store::to_system(c.not_after)),
            },
        )
        .map_err(|e| bad_certificate(&checked.request, e.to_string()))?;
        let issuing = rotation::in_bundle(&cas, checked.now);
        let bundle = match job.trust {
            BundleFrom::Sources(trust) => build_bundle(spec, trust, &issuing)?,
            BundleFrom::LastWritten => last_written_bundle(spec, job, issuing)?,
        };
        Ok((cas, Some(bundle)))
    }

    /// Step 4, the files: the new generation, swapped in atomically.
    fn write_generation(
        &self,
        state: &VolumeState,
        job: &Issuance<'_>,
        material: Material,
    ) -> Result<(), VolumeError> {
        let gid = job.req.fs_group.or(state.mount_group);
        let files = layout::render(job.req, &material)?;
        drop(material);
        self.write_files(&state.volume_id, job.paths, &files, gid)?;
        job.op.hit(Step::FilesWritten);
        Ok(())
    }

    /// Step 5, the record: the new certificate becomes the volume's current one, with its
    /// renewal time; the superseded key goes.
    async fn record_issuance(
        &self,
        state: &mut VolumeState,
        job: &Issuance<'_>,
        checked: Verified,
        issuing_cas: Vec<IssuingCa>,
    ) -> Result<(), VolumeError> {
        let renew_at = certvol_renewer::renew_at(
            checked.not_before,
            checked.not_after,
            job.req.renew_before,
            &self.cfg.policy,
            self.random.sample(),
        );
        // As with the key, adopted only once on disk: if the data root refuses the record,
        // memory keeps the pending record, and the retry resumes it with the same key (keys
        // never move).
        let mut next = state.clone();
        next.current = Some(CertRecord {
            revision: job.revision,
            request_name: checked.request,
            serial: checked.serial,
            not_before: store::to_offset(checked.not_before),
            not_after: store::to_offset(checked.not_after),
            renew_at: store::to_offset(renew_at),
        });
        next.pending = None;
        next.renewal = RenewalRecord::default();
        next.issuing_cas = issuing_cas;
        self.save(&next).await?;
        *state = next;
        job.op.hit(Step::Recorded);
        prune_keys(job.paths, job.revision);
        // The charge counted the key this revision replaced, now pruned.
        self.tmpfs.set(
            &state.volume_id,
            crate::files::budget::measure(&job.paths.mem),
        );
        Ok(())
    }

    /// Writes a new generation of the volume's files if the node's volumes stay within
    /// `--max-volume-bytes` once it replaces the current one; over budget nothing is written
    /// and the current files stay.
    pub(super) fn write_files(
        &self,
        volume_id: &str,
        paths: &VolumePaths,
        files: &[writer::FileSpec],
        gid: Option<u32>,
    ) -> Result<(), VolumeError> {
        let cost =
            crate::files::budget::files_cost(files) + crate::files::budget::measure(&paths.keys);
        let previous = self.tmpfs.charge(volume_id, cost)?;
        match writer::publish(&paths.files, files, gid, self.clock.now()) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.tmpfs.set(volume_id, previous);
                Err(e.into())
            }
        }
    }
}

/// The issuer returned something the node cannot use for `request`.
fn bad_certificate(request: &str, message: String) -> VolumeError {
    VolumeError::BadCertificate {
        request: request.to_owned(),
        message,
    }
}

/// A renewal's bundle while its sources cannot be read: the new issuing CA(s), then the bundle
/// last written.
fn last_written_bundle(
    spec: &TrustSpec,
    job: &Issuance<'_>,
    issuing: String,
) -> Result<Bundle, VolumeError> {
    // attrs sets the file name whenever it sets the trust spec.
    let name = job
        .req
        .files
        .trust_bundle
        .as_deref()
        .ok_or_else(|| VolumeError::Internal("a trust bundle without a file name".into()))?;
    let old = writer::read(&job.paths.files, name)?;
    let mut sources = Vec::new();
    if spec.issuer_ca {
        sources.push(SourcePem::new("issuing CA", issuing));
    }
    sources.push(SourcePem::new(
        "the bundle last written",
        String::from_utf8_lossy(&old).into_owned(),
    ));
    Ok(trust_bundle::assemble(&sources))
}

/// Key generation is CPU-bound (seconds for RSA 4096), so it runs off the async worker threads,
/// on a permit of `pool` taken for `namespace`. Fairness is per namespace, not per pod: pods are
/// as cheap to create as volumes, so a per-pod share would give one tenant as many shares as it
/// cares to create pods, while a namespace is what a tenant is given.
pub(super) async fn generate_key(
    pools: KeyPools<'_>,
    namespace: &str,
    alg: KeyAlgorithm,
) -> Result<PrivateKey, VolumeError> {
    let slow = match alg {
        KeyAlgorithm::Rsa2048 | KeyAlgorithm::Rsa3072 | KeyAlgorithm::Rsa4096 => {
            Some(pools.slow.acquire(namespace).await)
        }
        KeyAlgorithm::EcdsaP256 | KeyAlgorithm::EcdsaP384 | KeyAlgorithm::Ed25519 => None,
    };
    let permit = pools.all.acquire(namespace).await;
    // The permits move into the blocking task: a publish cancelled meanwhile does not stop the
    // generation, so the CPU stays taken until it ends.
    tokio::task::spawn_blocking(move || {
        let _permits = (permit, slow);
        PrivateKey::generate(alg)
    })
    .await
    .map_err(|e| VolumeError::Internal(format!("key generation task failed: {e}")))?
    .map_err(VolumeError::from)
}

/// The pools a key generation takes its permits from (see [`VolumeManager`]'s fields).
#[derive(Clone, Copy)]
pub(super) struct KeyPools<'a> {
    all: &'a FairPool,
    slow: &'a FairPool,
}

/// Removes every key file but `keep`'s: the superseded key after an issuance is recorded, or a
/// pending key whose request failed for good. Best effort: a leftover key stays on the volume's
/// private tmpfs and is removed by the next issuance or with the volume.
pub(super) fn prune_keys(paths: &VolumePaths, keep: u64) {
    let Ok(entries) = fs::read_dir(&paths.keys) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let revision = name.to_str().and_then(VolumePaths::key_revision);
        if revision.is_some_and(|r| r != keep)
            && let Err(e) = fs::remove_file(entry.path())
        {
            warn!(path = %entry.path().display(), error = %e, "could not remove a superseded key");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::tests::*;
    use crate::volume::*;

    use std::sync::atomic::Ordering;
    use std::sync::{Arc, Mutex as StdMutex};
    use std::time::Duration;

    use crate::files::store::Phase;
    use crate::issuer::{self};
    use crate::runtime::scheduler::RenewOutcome;
    use crate::spec::attrs;

    /// Renewal times are jittered with the injected samples only: with a fixed sample, the time
    /// recorded at publish and after a renewal is exactly the renewer policy's for the certificate.
    #[tokio::test]
    async fn with_a_fixed_sample_the_renewal_time_is_the_policys() {
        // The recorded renewal time, the policy's, and how long after not-before it falls.
        let check = |f: &Fixture, p: &PublishParams, sample: f64, when: &str| {
            let current = f
                .mgr
                .store()
                .load(&p.volume_id)
                .unwrap()
                .unwrap()
                .current
                .unwrap();
            let req = attrs::parse(&p.context).unwrap();
            let want = certvol_renewer::renew_at(
                store::to_system(current.not_before),
                store::to_system(current.not_after),
                req.renew_before,
                &f.mgr.config().policy,
                sample,
            );
            assert_eq!(
                current.renew_at,
                store::to_offset(want),
                "{when}, sample {sample}"
            );
            current.renew_at - current.not_before
        };
        let mut after_not_before = Vec::new();
        for sample in [0.0, 0.75] {
            let f = fixture_sampled(sample);
            let p = params(&f, "jitter");
            f.mgr.publish(p.clone()).await.unwrap();
            check(&f, &p, sample, "at publish");
            assert!(matches!(
                f.mgr.renew_volume(&p.volume_id).await,
                RenewOutcome::Renewed { .. }
            ));
            after_not_before.push(check(&f, &p, sample, "after a renewal"));
        }
        assert_ne!(
            after_not_before[0], after_not_before[1],
            "the sample moves the renewal time"
        );
    }

    /// The node's volumes fill `--max-volume-bytes`: a new publish fails with FailedPrecondition
    /// naming the flag and leaves nothing behind; a renewal keeps the volume's current files and
    /// is retried; once room is made both succeed.
    #[tokio::test]
    async fn the_tmpfs_budget_refuses_publishes_and_renewals_past_it() {
        use crate::files::budget::PAGE;
        let budget = 1 << 20;
        let f = fixture_configured(None, |c| c.max_volume_bytes = budget);
        let a = params(&f, "a");
        f.mgr.publish(a.clone()).await.unwrap();
        let (used, max) = f.mgr.tmpfs_usage();
        assert_eq!(max, budget);
        let paths = f.mgr.store().paths("csi-a");
        // Key, certificate and CA file, each a page, and the private key under keys/.
        assert_eq!(used, crate::files::budget::measure(&paths.mem));
        assert!(used >= 4 * PAGE, "{used}");
        // Other volumes hold the rest of the budget.
        f.mgr.tmpfs.set("others", budget - used);

        let b = params(&f, "b");
        let err = f.mgr.publish(b.clone()).await.unwrap_err();
        let status = crate::csi::RpcError::Volume(err).status();
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
        let msg = status.message();
        assert!(msg.contains("--max-volume-bytes"), "{msg}");
        assert!(msg.contains(&format!("budget of {budget} bytes")), "{msg}");
        assert!(msg.contains("this volume: "), "{msg}");
        assert!(f.mgr.store().load("csi-b").unwrap().is_none());
        assert!(!f.mgr.store().paths("csi-b").dir.exists());
        assert_eq!(
            calls(&f).len(),
            1,
            "nothing is signed for a volume that cannot fit"
        );
        assert_eq!(
            f.mgr.tmpfs_usage().0,
            budget,
            "the refused volume is not charged"
        );

        let before = cert_of(&a.target_path);
        let outcome = f.mgr.renew_volume("csi-a").await;
        assert!(
            matches!(outcome, RenewOutcome::Failed { .. }),
            "{outcome:?}"
        );
        assert_eq!(cert_of(&a.target_path), before, "old files stay in place");
        let state = f.mgr.store().load("csi-a").unwrap().unwrap();
        let last = state.renewal.last_error.unwrap_or_default();
        assert!(last.contains("--max-volume-bytes"), "{last}");

        f.mgr.tmpfs.release("others");
        let outcome = f.mgr.renew_volume("csi-a").await;
        assert!(
            matches!(outcome, RenewOutcome::Renewed { .. }),
            "{outcome:?}"
        );
        assert_ne!(cert_of(&a.target_path), before);
        f.mgr.publish(b.clone()).await.unwrap();
        let both = crate::files::budget::measure(&paths.mem)
            + crate::files::budget::measure(&f.mgr.store().paths("csi-b").mem);
        assert_eq!(f.mgr.tmpfs_usage().0, both);
        f.mgr.unpublish(&id("csi-b"), &b.target_path).await.unwrap();
        assert_eq!(
            f.mgr.tmpfs_usage().0,
            crate::files::budget::measure(&paths.mem)
        );
    }

    #[tokio::test]
    async fn a_certificate_that_expired_before_it_arrived_is_never_asked_for_again() {
        let f = fixture();
        let p = params(&f, "late");
        let two_days = 2 * 86_400;
        // The CA signs at most a day: two days on, whatever it signs has expired.
        f.ahead.ahead_secs.store(two_days, Ordering::SeqCst);
        let err = f.mgr.publish(p.clone()).await.unwrap_err();
        assert!(matches!(err, VolumeError::Expired { .. }), "{err:?}");
        let rev = |n| issuer::request_name("node-a", "csi-late", n);
        assert!(err.to_string().contains(&rev(1)), "{err}");
        // Kept for kubelet's retry, which files the next revision instead of resuming this one.
        let state = f.mgr.store().load("csi-late").unwrap().unwrap();
        assert_eq!(
            (state.phase, state.pending, state.last_revision),
            (Phase::Issuing, None, 1)
        );
        assert!(!p.target_path.exists());
        f.ahead.ahead_secs.store(0, Ordering::SeqCst);
        f.mgr.publish(p.clone()).await.unwrap();
        assert_eq!(calls(&f), [rev(1), rev(2)]);

        f.ahead.ahead_secs.store(two_days, Ordering::SeqCst);
        let outcome = f.mgr.renew_volume("csi-late").await;
        assert!(
            matches!(outcome, RenewOutcome::Failed { .. }),
            "{outcome:?}"
        );
        let state = f.mgr.store().load("csi-late").unwrap().unwrap();
        assert_eq!(state.pending, None);
        assert!(
            state
                .renewal
                .last_error
                .unwrap()
                .contains("already expired")
        );
        f.ahead.ahead_secs.store(0, Ordering::SeqCst);
        let outcome = f.mgr.renew_volume("csi-late").await;
        assert!(
            matches!(outcome, RenewOutcome::Renewed { .. }),
            "{outcome:?}"
        );
        assert_eq!(calls(&f), [rev(1), rev(2), rev(3), rev(4)]);
    }

    /// Two CPUs, and a hostile namespace generating two RSA 4096 keys: an ECDSA key of another
    /// namespace does not wait for either, because RSA keys never take the last CPU.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn slow_keys_never_take_every_cpu_from_fast_ones() {
        let f = fixture_configured(None, |cfg| cfg.keygen_concurrency = 2);
        let rsa = |name: &str, n: usize| {
            let mut p = with_attrs(
                pod_volume(&f, name, n),
                &[
                    ("csi.certvol.io/key-algorithm", "RSA"),
                    ("csi.certvol.io/key-size", "4096"),
                ],
            );
            p.context
                .insert("csi.storage.k8s.io/pod.namespace".into(), "hostile".into());
            p
        };
        let slow: Vec<_> = [rsa("hog", 0), rsa("hog", 1)]
            .into_iter()
            .map(|p| {
                let mgr = f.mgr.clone();
                tokio::spawn(async move { mgr.publish(p).await })
            })
            .collect();
        // Both RSA publishes reach key generation within moments; each generation takes
        // seconds. One of them generates, the other waits for the slow pool: a CPU stays free.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            f.mgr.keygen_pool().available(),
            1,
            "the RSA 4096 generations took every CPU"
        );
        f.mgr
            .publish(params(&f, "honest"))
            .await
            .expect("honest publish");
        assert!(
            slow.iter().all(|t| !t.is_finished()),
            "the ECDSA publish waited for an RSA 4096 generation"
        );
        for task in slow {
            task.await.unwrap().expect("RSA publish");
        }
    }

    /// Key generation is bounded and fair: while a hostile namespace holds the only key
    /// generation permit and has three more generations queued, a publish in another
    /// namespace waits, then gets the permit after one of them, not after all three.
    #[tokio::test]
    async fn key_generation_waits_for_a_permit_and_takes_its_turn_before_a_busy_namespace() {
        let f = fixture_configured(None, |cfg| cfg.keygen_concurrency = 1);
        let pool = f.mgr.keygen_pool().clone();
        let held = pool.acquire("hostile").await;
        let granted = Arc::new(StdMutex::new(Vec::new()));
        let mut hostile = Vec::new();
        for i in 0..3 {
            let (theirs, granted) = (pool.clone(), granted.clone());
            hostile.push(tokio::spawn(async move {
                let _permit = theirs.acquire("hostile").await;
                granted.lock().unwrap().push(i);
                // A slow key.
                tokio::time::sleep(Duration::from_millis(300)).await;
            }));
            while pool.waiting() <= i {
                tokio::task::yield_now().await;
            }
        }
        let publish = {
            let (mgr, p) = (f.mgr.clone(), params(&f, "honest"));
            tokio::spawn(async move { mgr.publish(p).await })
        };
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(
            !publish.is_finished(),
            "the publish generated its key while every permit was taken"
        );
        assert_eq!(pool.waiting(), 4, "the publish waits in the pool");
        drop(held);
        publish.await.unwrap().expect("publish");
        let granted_before = granted.lock().unwrap().clone();
        assert!(
            granted_before == [0] || granted_before == [0, 1],
            "the publish's key came right after the hostile namespace's first, not after all three: {granted_before:?}"
        );
        for task in hostile {
            task.await.unwrap();
        }
        assert_eq!(pool.available(), 1, "every permit came back");
    }
}
