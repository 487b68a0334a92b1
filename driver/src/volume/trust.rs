//! Trust bundles: subscribing to a volume's sources, and rewriting its bundle when they change.

use std::fs;
use std::sync::Arc;
use std::time::SystemTime;

use futures::future::BoxFuture;
use tracing::{Instrument, info, info_span, warn};
use zeroize::Zeroizing;

use crate::base::crashpoint::{self, Point};
use crate::files::layout::{self, Material};
use crate::files::store::{Phase, VolumeState};
use crate::files::writer;
use crate::kube::events::{self, EventSink};
use crate::runtime::refresh::{Message, RefreshHandle, Refreshed, TrustRefresher};
use crate::spec::attrs;
use crate::spec::request::CertRequest;
use crate::trust::bundle::{self as trust_bundle, Bundle, Rejected, SourcePem};
use crate::trust::rotation;
use crate::trust::{SourceError, TrustCache, TrustSpec, VolumeTrust};
use crate::x509::keys::PrivateKey;

use super::{VolumeManager, error::VolumeError};

/// How volumes get their trust bundles on this node.
#[derive(Clone, Default)]
pub(crate) struct TrustWiring {
    /// The watch-driven cache of ConfigMaps, Secrets and ClusterTrustBundles; `None` without
    /// Kubernetes API access (`--issuer local`), where only the issuing CA and the public roots
    /// can go into a bundle.
    pub cache: Option<TrustCache>,
    /// Warning events on pods whose trust sources are missing or hold bad entries.
    pub events: Option<Arc<EventSink>>,
    /// The refresher that keeps published bundles current (see `refresh`).
    pub refresher: Option<RefreshHandle>,
}

impl std::fmt::Debug for TrustWiring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustWiring")
            .field("cache", &self.cache.as_ref().map(|c| c.watched()))
            .field("events", &self.events.is_some())
            .field("refresher", &self.refresher.is_some())
            .finish()
    }
}

/// The refresher's calls run in a span naming the volume (and, once its request is known, the
/// pod), which the log lines inside carry.
impl TrustRefresher for VolumeManager {
    fn now(&self) -> SystemTime {
        self.clock.now()
    }

    fn refresh<'a>(
        &'a self,
        volume_id: &'a str,
        trust: Option<&'a mut VolumeTrust>,
    ) -> BoxFuture<'a, Refreshed> {
        Box::pin(self.refresh_trust(volume_id, trust).instrument(info_span!(
            "refresh",
            volume_id,
            pod = tracing::field::Empty
        )))
    }

    fn resume<'a>(&'a self, volume_id: &'a str) -> BoxFuture<'a, (Option<VolumeTrust>, Refreshed)> {
        Box::pin(
            self.resume_trust(volume_id)
                .instrument(info_span!("resume", volume_id)),
        )
    }
}

impl VolumeManager {
    /// Rebuilds a published volume's trust bundle from `trust` (waiting until its sources are
    /// listed, bounded by the issue timeout) and the recorded issuing CAs, and rewrites its
    /// files atomically with the same key and certificates. On a source error the old files
    /// stay. Never talks to the issuer.
    pub(crate) async fn refresh_trust(
        &self,
        volume_id: &str,
        trust: Option<&mut VolumeTrust>,
    ) -> Refreshed {
        let ready = match trust {
            Some(trust) => trust
                .ready(self.cfg.issue_timeout)
                .await
                .map(|()| Some(&*trust)),
            None => Ok(None),
        };
        let (slot, mut guard) = match self.lock(volume_id).await {
            Ok(locked) => locked,
            Err(e) => {
                warn!(error = %e, "trust refresh could not load the volume");
                self.metrics
                    .trust_refresh(crate::obs::metrics::RefreshOutcome::Failed);
                return Refreshed::Kept { next_change: None };
            }
        };
        let result = match guard.as_mut() {
            Some(state) if state.phase == Phase::Published && state.current.is_some() => {
                match self.request(&slot, state) {
                    Ok(req) if req.trust.is_some() => {
                        super::record_pod(&req);
                        let outcome = match ready {
                            Ok(trust) => self.rewrite_bundle(state, &req, trust).await,
                            Err(e) => Err(VolumeError::Trust(e)),
                        };
                        Some((req, outcome, state.issuing_cas.clone()))
                    }
                    _ => None,
                }
            }
            _ => None,
        };
        self.release(volume_id, &slot, &guard);
        drop(guard);
        let Some((req, outcome, cas)) = result else {
            return Refreshed::Gone;
        };
        let metric = match &outcome {
            Ok(None) => crate::obs::metrics::RefreshOutcome::Unchanged,
            Ok(Some(rejected)) => {
                info!("trust bundle rewritten");
                self.report_rejected(&req, rejected).await;
                crate::obs::metrics::RefreshOutcome::Updated
            }
            Err(VolumeError::Trust(e)) => {
                warn!(error = %e, "trust bundle not refreshed; the volume keeps its current files");
                self.report_source_error(&req, e).await;
                crate::obs::metrics::RefreshOutcome::SourceError
            }
            Err(e) => {
                warn!(error = %e, "trust bundle not refreshed; the volume keeps its current files");
                crate::obs::metrics::RefreshOutcome::Failed
            }
        };
        self.metrics.trust_refresh(metric);
        let mut next_change = rotation::next_change(&cas, self.clock.now());
        // Nothing else would bring the rewrite back (its sources did not change again): try
        // again once other volumes may have gone.
        if matches!(outcome, Err(VolumeError::TmpfsBudget(_))) {
            let retry = self.clock.now() + crate::files::budget::RETRY;
            next_change = Some(next_change.map_or(retry, |at| at.min(retry)));
        }
        Refreshed::Kept { next_change }
    }

    /// After a restart: subscribe a recovered volume to its sources and refresh its bundle.
    pub(crate) async fn resume_trust(&self, volume_id: &str) -> (Option<VolumeTrust>, Refreshed) {
        let req = self.published_request(volume_id).await;
        let Some(req) = req.filter(|r| r.trust.is_some()) else {
            return (None, Refreshed::Gone);
        };
        let mut trust = match self.open_trust(&req, true) {
            Ok(trust) => trust,
            Err(e) => {
                warn!(error = %e, "cannot watch the volume's trust sources; its bundle stays as it is");
                return (None, Refreshed::Gone);
            }
        };
        let outcome = self.refresh_trust(volume_id, trust.as_mut()).await;
        (trust, outcome)
    }

    /// The request of a published volume; `None` if it is not published (or its recorded
    /// attributes no longer parse).
    async fn published_request(&self, volume_id: &str) -> Option<Arc<CertRequest>> {
        let (slot, guard) = self.lock(volume_id).await.ok()?;
        let req = match guard.as_ref() {
            Some(state) if state.phase == Phase::Published => self.request(&slot, state).ok(),
            _ => None,
        };
        self.release(volume_id, &slot, &guard);
        req
    }

    /// Writes a new generation of the volume's files with a freshly built bundle, unless the
    /// bundle is what the volume already has (`Ok(None)`); returns the rejected entries.
    async fn rewrite_bundle(
        &self,
        state: &mut VolumeState,
        req: &CertRequest,
        trust: Option<&VolumeTrust>,
    ) -> Result<Option<Vec<Rejected>>, VolumeError> {
        // attrs sets the file name whenever it sets the trust spec.
        let (Some(spec), Some(bundle_file)) = (&req.trust, req.files.trust_bundle.as_deref())
        else {
            return Ok(None);
        };
        let now = self.clock.now();
        let paths = self.store.paths(&state.volume_id);
        let before = state.issuing_cas.len();
        state
            .issuing_cas
            .retain(|c| c.keep_until.is_none_or(|t| t > now));
        if state.issuing_cas.len() != before {
            self.save(state).await?;
        }
        let bundle = build_bundle(spec, trust, &rotation::in_bundle(&state.issuing_cas, now))?;
        let pem = bundle.pem();
        let names = &req.files;
        let mut current =
            writer::read_all(&paths.files, &[bundle_file, &names.certificate, &names.ca])?;
        // read_all returns one entry per name, in order.
        let (ca_pem, chain_pem, old_bundle) = match (current.pop(), current.pop(), current.pop()) {
            (Some(ca), Some(chain), Some(old)) => (ca, chain, old),
            _ => {
                return Err(VolumeError::Internal(
                    "the volume's files are incomplete".into(),
                ));
            }
        };
        if old_bundle == pem.as_bytes() {
            return Ok(None);
        }
        let text = |bytes: Vec<u8>, what: &str| {
            String::from_utf8(bytes)
                .map_err(|_| VolumeError::Internal(format!("the volume's {what} is not UTF-8")))
        };
        let key_path = paths.key(
            state
                .current
                .as_ref()
                .ok_or_else(|| VolumeError::Internal("the volume has no certificate yet".into()))?
                .revision,
        );
        let der =
            Zeroizing::new(fs::read(&key_path).map_err(VolumeError::io_at("read", &key_path))?);
        let password = match &req.files.pkcs12 {
            Some(_) => Some(self.kept_password(&paths, &state.volume_id)?),
            None => None,
        };
        let files = layout::render(
            req,
            &Material {
                key: PrivateKey::from_pkcs8_der(&der)?,
                chain_pem: text(chain_pem, "certificate chain")?,
                ca_pem: text(ca_pem, "CA file")?,
                trust_bundle_pem: Some(pem),
                pkcs12_password: password,
            },
        )?;
        self.write_files(
            &state.volume_id,
            &paths,
            &files,
            req.fs_group.or(state.mount_group),
        )?;
        crashpoint::hit(Point::RefreshFilesWritten);
        Ok(Some(bundle.rejected))
    }

    /// Subscribes to the Kubernetes objects the volume's trust spec names. Bad input (a source
    /// in a namespace the policy forbids, or Kubernetes sources on a node without API access)
    /// is InvalidArgument. A new volume is refused past its namespace's watch budget; an
    /// `admitted` one (published already: renewals, recovery) is not.
    pub(super) fn open_trust(
        &self,
        req: &CertRequest,
        admitted: bool,
    ) -> Result<Option<VolumeTrust>, VolumeError> {
        let Some(spec) = &req.trust else {
            return Ok(None);
        };
        let Some(attribute) = api_attribute(spec) else {
            return Ok(None);
        };
        let Some(cache) = &self.trust.cache else {
            return Err(VolumeError::InvalidArgument(format!(
                "volume attribute {attribute:?} names Kubernetes objects, but this node has no \
                 Kubernetes API access (--issuer local); accepted here: \
                 {p}trust-issuer-ca and {p}trust-public-roots",
                p = attrs::CERTVOL_PREFIX
            )));
        };
        let subscribed = if admitted {
            cache.resubscribe(spec, &req.pod.namespace)
        } else {
            cache.subscribe(spec, &req.pod.namespace)
        };
        subscribed.map(Some).map_err(VolumeError::Trust)
    }

    /// Hands a volume whose bundle was just written to the refresher.
    pub(super) fn watch_trust(
        &self,
        state: &VolumeState,
        req: &CertRequest,
        trust: Option<VolumeTrust>,
    ) {
        if req.trust.is_none() {
            return;
        }
        if let Some(refresher) = &self.trust.refresher {
            refresher.send(Message::Watch {
                volume_id: state.volume_id.clone(),
                trust,
                next_change: rotation::next_change(&state.issuing_cas, self.clock.now()),
            });
        }
    }

    /// Start-up: asks the refresher to re-subscribe a recovered volume with a trust bundle.
    /// `resume_trust` then checks that the volume is published and has a trust bundle.
    pub(crate) fn resume_trust_watch(&self, volume_id: &str) {
        if let Some(refresher) = &self.trust.refresher {
            refresher.send(Message::Resume {
                volume_id: volume_id.to_owned(),
            });
        }
    }

    /// A missing or unreadable source: a Warning event on the pod (the log has the error from
    /// the caller). Policy errors are the caller's bad input and answered InvalidArgument only.
    pub(super) async fn report_source_error(&self, req: &CertRequest, error: &SourceError) {
        if matches!(error, SourceError::Policy(_)) {
            return;
        }
        if let Some(events) = &self.trust.events {
            let message = error.to_string();
            events
                .report(&req.pod, events::REASON_TRUST_SOURCE, &message, &message)
                .await;
        }
    }

    /// Entries of trust sources that are not certificates are left out: log and event. The log
    /// line names the pod through the operation's span (publish, renewal, refresh).
    pub(super) async fn report_rejected(&self, req: &CertRequest, rejected: &[Rejected]) {
        for r in rejected {
            let message = format!("trust bundle: left out {r}");
            warn!("{message}");
            if let Some(events) = &self.trust.events {
                events
                    .report(&req.pod, events::REASON_TRUST_REJECTED, &message, &message)
                    .await;
            }
        }
    }
}

/// The first attribute of `spec` that names Kubernetes objects, if any.
pub(super) fn api_attribute(spec: &TrustSpec) -> Option<&str> {
    if !spec.config_maps.is_empty() {
        Some(&spec.config_maps_attribute)
    } else if !spec.secrets.is_empty() {
        Some(&spec.secrets_attribute)
    } else if !spec.cluster_bundles.is_empty() {
        Some(&spec.cluster_bundles_attribute)
    } else if spec.signer.is_some() {
        Some(&spec.signer_attribute)
    } else {
        None
    }
}

/// The bundle of `spec` with `issuing_ca_pem` as the issuing CA: from the volume's
/// subscriptions when it names Kubernetes objects, else from the issuing CA and public roots.
pub(super) fn build_bundle(
    spec: &TrustSpec,
    trust: Option<&VolumeTrust>,
    issuing_ca_pem: &str,
) -> Result<Bundle, SourceError> {
    match trust {
        Some(trust) => trust.bundle(issuing_ca_pem),
        None => {
            let mut sources = Vec::new();
            if spec.issuer_ca {
                sources.push(SourcePem::new("issuing CA", issuing_ca_pem));
            }
            if spec.public_roots {
                sources.push(trust_bundle::public_roots());
            }
            Ok(trust_bundle::assemble(&sources))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::volume::TargetPath;
    use crate::volume::tests::*;
    use crate::volume::*;

    use std::collections::HashMap;
    use std::fs;
    use std::sync::Arc;
    use std::time::{Duration, SystemTime};

    use crate::base::clock::Clock;
    use crate::files::mount::DirMounter;
    use crate::files::store::Store;
    use crate::runtime::refresh::Message;
    use crate::x509::pki;

    #[tokio::test]
    async fn kubernetes_sources_without_api_access_are_invalid_and_leave_nothing() {
        let f = fixture();
        for attr in [
            "csi.certvol.io/trust-configmaps",
            "csi.certvol.io/trust-secrets",
        ] {
            let p = with_attrs(params(&f, "nokube"), &[(attr, "ca/ca.crt")]);
            let err = f.mgr.publish(p.clone()).await.unwrap_err();
            assert!(matches!(err, VolumeError::InvalidArgument(_)), "{err}");
            let msg = err.to_string();
            assert!(msg.contains(&format!("{attr:?}")), "{msg}");
            assert!(msg.contains("trust-public-roots"), "{msg}");
            assert!(f.mgr.store().load("csi-nokube").unwrap().is_none());
            assert!(fs::symlink_metadata(&p.target_path).is_err());
        }
        assert!(calls(&f).is_empty(), "nothing filed with the issuer");
    }

    #[tokio::test]
    async fn issuing_ca_and_public_roots_bundle_and_a_retired_ca_leaves_on_refresh() {
        let f = fixture();
        let p = with_attrs(
            params(&f, "roots"),
            &[("csi.certvol.io/trust-public-roots", "true")],
        );
        f.mgr.publish(p.clone()).await.unwrap();
        let ca = fs::read_to_string(p.target_path.join("ca.crt")).unwrap();
        let ca_der = pki::parse_pem_chain(&ca).unwrap()[0].der.clone();
        let roots = webpki_root_certs::TLS_SERVER_ROOT_CERTS.len();
        let got = bundle_ders(&p.target_path);
        assert_eq!(got[0], ca_der, "issuing CA first");
        assert_eq!(got.len(), 1 + roots);
        let state = f.mgr.store().load("csi-roots").unwrap().unwrap();
        assert_eq!(state.issuing_cas.len(), 1);
        assert_eq!(state.issuing_cas[0].keep_until, None);

        // A retired CA still in its overlap is in the bundle; once its keep-until has passed a
        // refresh drops it without touching key, certificate or issuer.
        let retired = crate::trust::bundle::tests::ca_pem("retired");
        let retired_der = pki::parse_pem_chain(&retired).unwrap()[0].der.clone();
        let now = SystemTime::now();
        {
            let (_slot, mut guard) = f.mgr.lock("csi-roots").await.unwrap();
            let state = guard.as_mut().unwrap();
            state.issuing_cas.push(crate::trust::IssuingCa {
                der: retired_der.clone(),
                not_after: now + Duration::from_secs(3600),
                keep_until: Some(now + Duration::from_secs(600)),
            });
            f.mgr.store().save(state).unwrap();
        }
        let (key, cert) = (
            fs::read(p.target_path.join("tls.key")).unwrap(),
            cert_of(&p.target_path),
        );
        let outcome = f.mgr.refresh_trust("csi-roots", None).await;
        assert_eq!(
            outcome,
            Refreshed::Kept {
                next_change: Some(now + Duration::from_secs(600))
            }
        );
        let got = bundle_ders(&p.target_path);
        assert_eq!(got[..2], [ca_der.clone(), retired_der.clone()]);
        assert_eq!(fs::read(p.target_path.join("tls.key")).unwrap(), key);
        assert_eq!(cert_of(&p.target_path), cert);

        {
            let (_slot, mut guard) = f.mgr.lock("csi-roots").await.unwrap();
            let state = guard.as_mut().unwrap();
            state.issuing_cas[1].keep_until = Some(now - Duration::from_secs(1));
            f.mgr.store().save(state).unwrap();
        }
        let outcome = f.mgr.refresh_trust("csi-roots", None).await;
        assert_eq!(outcome, Refreshed::Kept { next_change: None });
        let got = bundle_ders(&p.target_path);
        assert!(!got.contains(&retired_der), "the retired CA left");
        assert_eq!(got.len(), 1 + roots);
        let state = f.mgr.store().load("csi-roots").unwrap().unwrap();
        assert_eq!(
            state.issuing_cas.len(),
            1,
            "expired overlap pruned from state"
        );
        assert_eq!(fs::read(p.target_path.join("tls.key")).unwrap(), key);
        assert_eq!(calls(&f).len(), 1, "no issuance");

        // Unpublished: the refresher is told to stop.
        f.mgr
            .unpublish(&id("csi-roots"), &p.target_path)
            .await
            .unwrap();
        assert_eq!(
            f.mgr.refresh_trust("csi-roots", None).await,
            Refreshed::Gone
        );
    }

    /// A bundle rewrite that would take the node past `--max-volume-bytes` keeps the volume's
    /// files and asks the refresher to try again soon; with room made it is written.
    #[tokio::test]
    async fn a_bundle_rewrite_past_the_tmpfs_budget_keeps_the_files_and_retries() {
        let budget = 8 << 20;
        let f = fixture_configured(None, |c| c.max_volume_bytes = budget);
        let p = with_attrs(
            params(&f, "roots"),
            &[("csi.certvol.io/trust-public-roots", "true")],
        );
        f.mgr.publish(p.clone()).await.unwrap();
        let (used, _) = f.mgr.tmpfs_usage();
        f.mgr.tmpfs.set("others", budget - used);
        let before = fs::read(p.target_path.join("ca-bundle.crt")).unwrap();
        let now = SystemTime::now();
        {
            let (_slot, mut guard) = f.mgr.lock("csi-roots").await.unwrap();
            let state = guard.as_mut().unwrap();
            // Several retired CAs: the bundle grows by more than a page.
            for i in 0..8 {
                let pem = crate::trust::bundle::tests::ca_pem(&format!("retired-{i}"));
                state.issuing_cas.push(crate::trust::IssuingCa {
                    der: pki::parse_pem_chain(&pem).unwrap()[0].der.clone(),
                    not_after: now + Duration::from_secs(3600),
                    keep_until: Some(now + Duration::from_secs(600)),
                });
            }
            f.mgr.store().save(state).unwrap();
        }
        let outcome = f.mgr.refresh_trust("csi-roots", None).await;
        let Refreshed::Kept {
            next_change: Some(at),
        } = outcome
        else {
            panic!("{outcome:?}")
        };
        assert!(
            at <= SystemTime::now() + crate::files::budget::RETRY,
            "retried soon, not at the overlap's end"
        );
        assert_eq!(
            fs::read(p.target_path.join("ca-bundle.crt")).unwrap(),
            before,
            "the bundle stays"
        );
        assert_eq!(f.mgr.tmpfs_usage().0, budget);

        f.mgr.tmpfs.release("others");
        f.mgr.refresh_trust("csi-roots", None).await;
        assert!(fs::read(p.target_path.join("ca-bundle.crt")).unwrap().len() > before.len());
    }

    /// The refresher drops a retired CA from the bundle when its keep-until passes, by itself
    /// (a `tokio::time` sleep; paused time here), and stops caring once the volume is gone.
    #[tokio::test]
    async fn the_refresher_rewrites_the_bundle_when_an_overlap_ends() {
        let dir = tempfile::tempdir().unwrap();
        let clock: Arc<dyn Clock> = Arc::new(crate::base::clock::TokioClock::starting_at(
            SystemTime::now(),
        ));
        let store = Store::open(&dir.path().join("root")).unwrap();
        let ca = test_ca(&store, clock.clone());
        let (handle, _scheduler) = crate::runtime::scheduler::channel();
        let (refresh, refresher) = crate::runtime::refresh::channel();
        let mut cfg = Config::new("node-a");
        cfg.kubelet_dir = dir.path().to_path_buf();
        let mgr = Arc::new(
            VolumeManager::new(
                cfg,
                store,
                Services {
                    mounter: Arc::new(DirMounter::default()),
                    issuer: Arc::new(ca),
                    clock: clock.clone(),
                    scheduler: handle,
                    metrics: crate::obs::metrics::Metrics::detached(),
                },
            )
            .with_trust(TrustWiring {
                refresher: Some(refresh.clone()),
                ..TrustWiring::default()
            }),
        );
        let running = tokio::spawn(refresher.run(mgr.clone()));
        let target = dir
            .path()
            .join("pods/p/volumes/kubernetes.io~csi/tls/mount");
        fs::create_dir_all(target.parent().unwrap()).unwrap();
        let context = [
            ("csi.certvol.io/issuer-name", "ca"),
            ("csi.certvol.io/dns-names", "p.svc"),
            ("csi.certvol.io/trust-issuer-ca", "true"),
            ("csi.storage.k8s.io/pod.name", "p"),
            ("csi.storage.k8s.io/pod.namespace", "default"),
            ("csi.storage.k8s.io/ephemeral", "true"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let p = PublishParams {
            volume_id: id("csi-p"),
            target_path: TargetPath::parse(&mgr.config().kubelet_dir, target.clone()).unwrap(),
            context,
            mount_group: None,
            secrets: HashMap::new(),
        };
        // Real time for the issuance (key generation runs on a blocking thread, which paused
        // time would skip past), paused from here on.
        mgr.publish(p.clone()).await.unwrap();
        tokio::time::pause();
        let retired = crate::trust::bundle::tests::ca_pem("retired");
        let retired_der = pki::parse_pem_chain(&retired).unwrap()[0].der.clone();
        let keep_until = clock.now() + Duration::from_secs(600);
        {
            let (_slot, mut guard) = mgr.lock("csi-p").await.unwrap();
            let state = guard.as_mut().unwrap();
            state.issuing_cas.push(crate::trust::IssuingCa {
                der: retired_der.clone(),
                not_after: keep_until + Duration::from_secs(3600),
                keep_until: Some(keep_until),
            });
            mgr.store().save(state).unwrap();
        }
        // What a renewal that retired the CA tells the refresher.
        refresh.send(Message::Watch {
            volume_id: "csi-p".into(),
            trust: None,
            next_change: Some(keep_until),
        });
        tokio::time::sleep(Duration::from_secs(300)).await;
        assert_eq!(bundle_ders(&target).len(), 1, "nothing rewritten early");
        let cert = cert_of(&target);
        // Rebuilt at the keep-until (plus a margin), dropping the retired CA.
        tokio::time::sleep(Duration::from_secs(302)).await;
        for _ in 0..100 {
            if mgr
                .store()
                .load("csi-p")
                .unwrap()
                .unwrap()
                .issuing_cas
                .len()
                == 1
            {
                break;
            }
            tokio::task::yield_now().await;
        }
        let state = mgr.store().load("csi-p").unwrap().unwrap();
        assert_eq!(state.issuing_cas.len(), 1, "the overlap ended");
        let got = bundle_ders(&target);
        assert_eq!(got.len(), 1);
        assert!(!got.contains(&retired_der));
        assert_eq!(cert_of(&target), cert, "same certificate");
        mgr.unpublish(&p.volume_id, &p.target_path).await.unwrap();
        running.abort();
    }
}
