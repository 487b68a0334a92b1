//! One volume's subscriptions: its bundle now, and a wait for the next change to it.

use std::time::Duration;

use super::content::content;
use super::error::SourceError;
use super::shared::Subscription;
use super::value::Digest;
use crate::trust::bundle::{self, Bundle, SourcePem};
use crate::trust::source::{ObjectRef, ResolvedSource, TrustSpec};

/// One volume's subscriptions. Dropping it releases the watches.
pub struct VolumeTrust {
    issuer_ca: bool,
    public_roots: bool,
    subs: Vec<(ResolvedSource, Subscription)>,
    /// Each source when last observed, for [`VolumeTrust::changed`]: labels and digests (or the
    /// error), never the text, so a volume holds no copy of what it reads.
    seen: Vec<Seen>,
}

/// What [`VolumeTrust::changed`] compares: per source, its pieces' labels and digests.
type Seen = Result<Option<Vec<(String, Digest)>>, SourceError>;

impl VolumeTrust {
    /// A volume's view of `spec` through `subs`, one per source it resolved to, as they read now.
    pub(super) fn new(spec: &TrustSpec, subs: Vec<(ResolvedSource, Subscription)>) -> VolumeTrust {
        let mut trust = VolumeTrust {
            issuer_ca: spec.issuer_ca,
            public_roots: spec.public_roots,
            subs,
            seen: Vec::new(),
        };
        trust.seen = trust.fingerprint();
        trust
    }

    fn fingerprint(&self) -> Vec<Seen> {
        self.subs
            .iter()
            .map(|(s, sub)| {
                content(s, &sub.rx.borrow()).map(|pieces| {
                    pieces.map(|p| p.into_iter().map(|p| (p.label, p.digest)).collect())
                })
            })
            .collect()
    }

    /// The Kubernetes objects this volume reads.
    pub fn objects(&self) -> Vec<ObjectRef> {
        self.subs.iter().map(|(s, _)| s.object.clone()).collect()
    }

    /// Waits until every source has been listed once, up to `timeout`; then the first missing
    /// object, key or selection is the error. On timeout the error names the first source not
    /// yet read and the watch's last error (e.g. RBAC forbids it).
    pub async fn ready(&mut self, timeout: Duration) -> Result<(), SourceError> {
        let deadline = tokio::time::Instant::now() + timeout;
        for (source, sub) in &mut self.subs {
            loop {
                let (listed, error) = {
                    let snap = sub.rx.borrow_and_update();
                    // No API: nothing to wait for; `content` reports it below.
                    (snap.objects.is_some() || snap.no_api, snap.error.clone())
                };
                if listed {
                    break;
                }
                match tokio::time::timeout_at(deadline, sub.rx.changed()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) | Err(_) => {
                        return Err(SourceError::Unavailable {
                            attribute: source.attribute.clone(),
                            object: source.object.to_string(),
                            waited: timeout,
                            reason: error.unwrap_or_else(|| {
                                "the API server has not answered the list yet".into()
                            }),
                        });
                    }
                }
            }
        }
        self.seen = self.fingerprint();
        for c in &self.seen {
            if let Err(e) = c {
                return Err(e.clone());
            }
        }
        Ok(())
    }

    /// The bundle's sources in order: the issuing CA (`issuing_ca_pem`, e.g. from
    /// `trust::rotation::in_bundle`) when the spec includes it, each object's content, the
    /// public roots when asked for. Errors when a source is missing or not listed yet.
    pub fn sources(&self, issuing_ca_pem: &str) -> Result<Vec<SourcePem>, SourceError> {
        let mut out = Vec::new();
        if self.issuer_ca {
            out.push(SourcePem::new("issuing CA", issuing_ca_pem));
        }
        for (source, sub) in &self.subs {
            match content(source, &sub.rx.borrow())? {
                Some(pieces) => out.extend(pieces.into_iter().map(|p| SourcePem {
                    label: p.label,
                    pem: p.text,
                })),
                None => {
                    return Err(SourceError::Unavailable {
                        attribute: source.attribute.clone(),
                        object: source.object.to_string(),
                        waited: Duration::ZERO,
                        reason: "not listed yet (call ready first)".into(),
                    });
                }
            }
        }
        if self.public_roots {
            out.push(bundle::public_roots());
        }
        Ok(out)
    }

    /// The assembled bundle (see [`bundle::assemble`]); write `bundle.pem()`, report
    /// `bundle.rejected`.
    pub fn bundle(&self, issuing_ca_pem: &str) -> Result<Bundle, SourceError> {
        Ok(bundle::assemble(&self.sources(issuing_ca_pem)?))
    }

    /// Resolves when the content of any source differs from when this volume last looked (at
    /// subscription, [`VolumeTrust::ready`] or the previous `changed`): a changed key, a deleted
    /// or recreated object, another set of signer bundles. Returns `false` when the cache has
    /// stopped (shutdown). Never resolves for a spec without Kubernetes sources.
    pub async fn changed(&mut self) -> bool {
        if self.subs.is_empty() {
            std::future::pending::<()>().await;
        }
        loop {
            let now = self.fingerprint();
            if now != self.seen {
                self.seen = now;
                return true;
            }
            let waits = self
                .subs
                .iter_mut()
                .map(|(_, sub)| Box::pin(sub.rx.changed()));
            let (result, _, _) = futures::future::select_all(waits).await;
            if result.is_err() {
                return false;
            }
        }
    }
}
