//! One issuance, shared by publish and renewal: key, request, verification, files, record.

use crate::base::crashpoint;
use crate::base::fair::{FairPool, Lease};
use crate::files::fsutil;
use crate::files::layout::{self, Material};
use crate::files::store::{
    self, CertRecord, PendingRecord, Phase, RenewalRecord, VolumePaths, VolumeState,
};
use crate::files::writer::{self};
use crate::issuer::{self, IssueError, IssueRequest};
use crate::obs::metrics::IssueOutcome;
use crate::spec::request::{CertRequest, KeyAlgorithm};
use crate::trust::VolumeTrust;
use crate::trust::bundle::{self as trust_bundle, Bundle, SourcePem};
use crate::trust::rotation::{self, OverlapPolicy};
use crate::x509::keys::{self, PrivateKey};
use crate::x509::pki;
use std::fs;
use std::io;
use std::sync::Arc;
use std::time::Duration;
use tracing::{debug, warn};
use zeroize::Zeroizing;

use super::{VolumeManager, error::VolumeError, trust::build_bundle};

impl VolumeManager {
    /// Steps 4-6 of a publish, shared with renewal: key (new, reused or the pending one from an
    /// interrupted attempt), request, verification, atomic file swap, state update.
    pub(super) async fn issue_revision(
        &self,
        op: &str,
        paths: &VolumePaths,
        state: &mut VolumeState,
        req: &Arc<CertRequest>,
        revision: u64,
        with: With<'_>,
    ) -> Result<(), VolumeError> {
        let With {
            reuse,
            trust,
            worker,
        } = with;
        // Before anything is issued: a renewal that could not write the keystore must not
        // consume a request.
        let password = match &req.files.pkcs12 {
            Some(_) => Some(self.kept_password(paths, &state.volume_id)?),
            None => None,
        };
        let pending_key = paths.key(revision);
        let resumed = match &state.pending {
            Some(p) if p.revision == revision => match fs::read(&pending_key) {
                Ok(der) => Some(PrivateKey::from_pkcs8_der(&Zeroizing::new(der))?),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    debug!(volume_id = %state.volume_id, revision, "the pending key is gone; filing with a new key");
                    None
                }
                Err(e) => return Err(VolumeError::io_at("read", &pending_key)(e)),
            },
            _ => None,
        };
        let request_name = issuer::request_name(&self.cfg.node_id, &state.volume_id, revision);
        let key = match resumed {
            Some(key) => {
                debug!(volume_id = %state.volume_id, request = %request_name, "resuming pending request");
                key
            }
            None => {
                let key = match reuse {
                    Some(key) => key,
                    None => {
                        let pools = KeyPools {
                            all: &self.keygen,
                            slow: &self.slow_keygen,
                        };
                        generate_key(pools, &req.pod.namespace, req.key_algorithm).await?
                    }
                };
                fsutil::replace(&pending_key, key.pkcs8_der(), 0o600)
                    .map_err(VolumeError::io_at("write", &pending_key))?;
                // Changed on a copy and adopted only once it is on disk: a request must never be
                // filed on the strength of a record the data root refused (full, read-only).
                let mut next = state.clone();
                next.last_revision = next.last_revision.max(revision);
                next.pending = Some(PendingRecord {
                    revision,
                    request_name: request_name.clone(),
                    key_algorithm: key.algorithm(),
                    started_at: store::to_offset(self.clock.now()),
                });
                if !next.requests.contains(&request_name) {
                    next.requests.push(request_name.clone());
                }
                if next.current.is_none() {
                    next.phase = Phase::Issuing;
                }
                self.save(&next).await?;
                *state = next;
                crashpoint::hit(&format!("{op}:key-saved"));
                key
            }
        };

        let csr = keys::build_csr(req, &key)?;
        let ireq = IssueRequest {
            name: request_name.clone(),
            volume_id: state.volume_id.clone(),
            node_id: self.cfg.node_id.clone(),
            csr_pem: csr.pem,
            csr_der: csr.der,
            cert: req.clone(),
            token: self
                .tokens
                .lock()
                .ok()
                .and_then(|t| t.get(&state.volume_id).cloned()),
            worker: worker.clone(),
        };
        let answer = tokio::time::timeout(
            self.cfg.issue_timeout + Duration::from_secs(5),
            self.issuer.issue(&ireq),
        )
        .await;
        // The issuer may have put the worker down to wait; what follows is work again.
        worker.resume().await;
        let issued =
            // Issuers answer Timeout themselves at `issue_timeout`; this outer limit only guards
            // against one that does not.
            match answer {
                Ok(result) => {
                    crate::obs::metrics::global().issuance(self.issuer.kind(), IssueOutcome::of(&result));
                    let issued = result?;
                    crashpoint::hit(&format!("{op}:signed"));
                    issued
                }
                Err(_) => {
                    crate::obs::metrics::global().issuance(self.issuer.kind(), IssueOutcome::Timeout);
                    return Err(IssueError::Timeout {
                        request: request_name,
                    }
                    .into());
                }
            };

        let bad = |message: String| VolumeError::BadCertificate {
            request: request_name.clone(),
            message,
        };
        let chain = pki::parse_pem_chain(&issued.chain_pem).map_err(|e| bad(e.to_string()))?;
        let leaf = chain
            .first()
            .ok_or_else(|| bad("the chain holds no certificate".into()))?;
        if !pki::key_matches(leaf, &key).map_err(|e| bad(e.to_string()))? {
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
                request: request_name,
                not_after: leaf.not_after,
            });
        }
        if !issued.ca_pem.trim().is_empty() {
            let ca = pki::parse_pem_chain(&issued.ca_pem).map_err(|e| bad(e.to_string()))?;
            pki::verify_chain(&chain, &ca, now).map_err(|e| bad(e.to_string()))?;
        }
        let (not_before, not_after, serial) =
            (leaf.not_before, leaf.not_after, leaf.serial_hex.clone());

        // The bundle is built with the new CA (and any retired one still in its overlap) and
        // written in the same generation as the key and certificate.
        let (issuing_cas, bundle) = match &req.trust {
            Some(spec) => {
                let cas = rotation::rotate(
                    &state.issuing_cas,
                    &issued.ca_pem,
                    now,
                    OverlapPolicy {
                        requested_duration: req.duration,
                        // The certificate being replaced was signed by the CA that may retire.
                        latest_known_leaf: state
                            .current
                            .as_ref()
                            .map(|c| store::to_system(c.not_after)),
                    },
                )
                .map_err(|e| bad(e.to_string()))?;
                let issuing = rotation::in_bundle(&cas, now);
                let bundle = match trust {
                    BundleFrom::Sources(trust) => build_bundle(spec, trust, &issuing)?,
                    BundleFrom::LastWritten => {
                        // attrs sets the file name whenever it sets the trust spec.
                        let name = req.files.trust_bundle.as_deref().ok_or_else(|| {
                            VolumeError::Internal("a trust bundle without a file name".into())
                        })?;
                        let old = writer::read(&paths.files, name)?;
                        let mut sources = Vec::new();
                        if spec.issuer_ca {
                            sources.push(SourcePem::new("issuing CA", issuing));
                        }
                        sources.push(SourcePem::new(
                            "the bundle last written",
                            String::from_utf8_lossy(&old).into_owned(),
                        ));
                        trust_bundle::assemble(&sources)
                    }
                };
                (cas, Some(bundle))
            }
            None => (Vec::new(), None),
        };
        let gid = req.fs_group.or(state.mount_group);
        let files = layout::render(
            req,
            &Material {
                key,
                chain_pem: issued.chain_pem,
                ca_pem: issued.ca_pem,
                trust_bundle_pem: bundle.as_ref().map(Bundle::pem),
                pkcs12_password: password,
            },
        )?;
        self.write_files(&state.volume_id, paths, &files, gid)?;
        crashpoint::hit(&format!("{op}:files-written"));

        let renew_at = certvol_renewer::renew_at(
            not_before,
            not_after,
            req.renew_before,
            &self.cfg.policy,
            rand::random::<f64>(),
        );
        // As above, adopted only once on disk: if the data root refuses the record, memory keeps
        // the pending record, and the retry resumes it with the same key (keys never move).
        let mut next = state.clone();
        next.current = Some(CertRecord {
            revision,
            request_name,
            serial,
            not_before: store::to_offset(not_before),
            not_after: store::to_offset(not_after),
            renew_at: store::to_offset(renew_at),
        });
        next.pending = None;
        next.renewal = RenewalRecord::default();
        next.issuing_cas = issuing_cas;
        self.save(&next).await?;
        *state = next;
        crashpoint::hit(&format!("{op}:recorded"));
        prune_keys(paths, revision);
        // The charge counted the key this revision replaced, now pruned.
        self.tmpfs
            .set(&state.volume_id, crate::files::budget::measure(&paths.mem));
        if let Some(bundle) = &bundle {
            self.report_rejected(req, &bundle.rejected).await;
        }
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

/// What an issuance starts from besides the request: a key to reuse (renewal with
/// `reuse-private-key`) and where the volume's trust bundle comes from.
pub(super) struct With<'a> {
    pub(super) reuse: Option<PrivateKey>,
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
