//! A watch-driven cache of exactly the objects volumes name for their trust bundles.
//!
//! Least privilege: every ConfigMap, Secret and ClusterTrustBundle a volume names gets a watch
//! of its own, scoped to its namespace and selected by `fieldSelector=metadata.name=NAME`, which
//! RBAC can authorize with `resourceNames` (list/watch with a name field selector), so the
//! driver needs no right to read other objects. ClusterTrustBundles chosen by signer use
//! `fieldSelector=spec.signerName=...` plus the label selector. Volumes naming the same object
//! share one watch (reference-counted); the watch stops when the last subscriber is dropped.
//!
//! ClusterTrustBundles are read in the version API discovery found (v1, v1beta1 or v1alpha1, as
//! `DynamicObject`s: one schema, only `apiVersion` differs); a watch started before discovery
//! answered waits for it. On a cluster that serves none, the source reports
//! [`SourceError::NoApi`] instead of watching.
//!
//! The cache never spawns: [`TrustCache::new`] returns the future that runs every watch, and
//! the node runs it with its other background work (see `node.rs`).
//!
//! Subscribers get a [`tokio::sync::watch`] view of each object; [`VolumeTrust::changed`]
//! resolves when the content a volume reads changed, not on every resourceVersion bump.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::DynamicObject;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{Instrument, debug, info, info_span, warn};

use super::bundle::{self, Bundle, SourcePem};
use super::source::{self, ObjectRef, PolicyError, ResolvedSource, TrustSpec};
use crate::discovery::{Apis, NoClusterTrustBundles};

/// Data of one object: key → bytes (ConfigMap `data` and `binaryData`, Secret `data`,
/// ClusterTrustBundle `spec.trustBundle` under the key `trustBundle`).
type ObjectData = BTreeMap<String, Vec<u8>>;

const CTB_KEY: &str = "trustBundle";

/// What one watch currently knows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Snapshot {
    /// `None` until the first list completed; then object name → data.
    objects: Option<BTreeMap<String, ObjectData>>,
    /// The last watch error (e.g. 403 from RBAC), cleared when the watch recovers.
    error: Option<String>,
    /// The cluster serves no ClusterTrustBundle API, so this (ClusterTrustBundle) source is never
    /// listed.
    no_api: bool,
}

/// Why a source's content is not available.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SourceError {
    #[error(
        "volume attribute {attribute:?}: {object} does not exist; create it or change the attribute"
    )]
    NotFound { attribute: String, object: String },
    #[error("volume attribute {attribute:?}: {object} has no key {key:?}; its keys: {available}")]
    MissingKey {
        attribute: String,
        object: String,
        key: String,
        available: String,
    },
    #[error(
        "volume attribute {attribute:?}: {object} key {key:?} is not UTF-8 text; accepted: PEM certificates"
    )]
    NotText {
        attribute: String,
        object: String,
        key: String,
    },
    #[error(
        "volume attribute {attribute:?}: there are no {object}; create one or change the attribute"
    )]
    NoneSelected { attribute: String, object: String },
    #[error(
        "volume attribute {attribute:?}: {object} could not be read within {waited:?}: {reason}"
    )]
    Unavailable {
        attribute: String,
        object: String,
        waited: Duration,
        reason: String,
    },
    /// The source is a ClusterTrustBundle and the cluster serves no version of that API.
    #[error(transparent)]
    NoApi(NoClusterTrustBundles),
    #[error(transparent)]
    Policy(#[from] PolicyError),
}

impl SourceError {
    /// The attribute that named the source.
    pub fn attribute(&self) -> &str {
        match self {
            SourceError::NotFound { attribute, .. }
            | SourceError::MissingKey { attribute, .. }
            | SourceError::NotText { attribute, .. }
            | SourceError::NoneSelected { attribute, .. }
            | SourceError::Unavailable { attribute, .. } => attribute,
            SourceError::NoApi(e) => &e.attribute,
            SourceError::Policy(p) => p.attribute(),
        }
    }
}

struct Entry {
    refs: usize,
    tx: Arc<watch::Sender<Snapshot>>,
    /// Dropping it ends the watch.
    _stop: oneshot::Sender<()>,
}

struct Shared {
    client: kube::Client,
    /// Which ClusterTrustBundle version to read.
    apis: Apis,
    trust_namespace: Option<String>,
    entries: Mutex<HashMap<ObjectRef, Entry>>,
    start: mpsc::UnboundedSender<BoxFuture<'static, ()>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, HashMap<ObjectRef, Entry>> {
        // Every mutation is a single insert/remove/counter change, so a poisoned map is intact.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The cache. Cheap to clone; all clones share the watches.
#[derive(Clone)]
pub struct TrustCache {
    shared: Arc<Shared>,
}

/// One subscriber's view of one watched object; dropping it releases the watch.
struct Subscription {
    object: ObjectRef,
    rx: watch::Receiver<Snapshot>,
    shared: Arc<Shared>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut entries = self.shared.lock();
        if let Some(e) = entries.get_mut(&self.object) {
            e.refs -= 1;
            if e.refs == 0 {
                entries.remove(&self.object);
                debug!(object = %self.object, "trust source no longer used; stopping its watch");
            }
        }
    }
}

impl TrustCache {
    /// A cache reading through `client`; `trust_namespace` is the node's `--trust-namespace`;
    /// `apis` tells which ClusterTrustBundle version the cluster serves.
    /// The returned future runs every watch the cache starts and must be driven for subscribers
    /// to see anything; it ends when the cache and all subscriptions are dropped.
    pub fn new(
        client: kube::Client,
        trust_namespace: Option<String>,
        apis: Apis,
    ) -> (TrustCache, impl Future<Output = ()> + Send + 'static) {
        let (start, rx) = mpsc::unbounded_channel();
        let cache = TrustCache {
            shared: Arc::new(Shared {
                client,
                apis,
                trust_namespace,
                entries: Mutex::new(HashMap::new()),
                start,
            }),
        };
        (cache, drive(rx))
    }

    /// The objects watched right now (for diagnostics and tests).
    pub fn watched(&self) -> Vec<ObjectRef> {
        let mut v: Vec<ObjectRef> = self.shared.lock().keys().cloned().collect();
        v.sort();
        v
    }

    /// Subscribes to one object, starting its watch if nobody watches it yet.
    fn subscribe_object(&self, object: &ObjectRef) -> Subscription {
        let mut entries = self.shared.lock();
        let rx = match entries.get_mut(object) {
            Some(e) => {
                e.refs += 1;
                e.tx.subscribe()
            }
            None => {
                let tx = Arc::new(watch::Sender::new(Snapshot::default()));
                let (stop_tx, stop_rx) = oneshot::channel();
                let task = watch_object(
                    &self.shared.client,
                    &self.shared.apis,
                    object,
                    tx.clone(),
                    stop_rx,
                );
                let span = info_span!("trust-watch", object = %object);
                // The receiver lives in the drive future; if that is gone the node is shutting
                // down and the subscription simply never fills.
                let _ = self.shared.start.send(Box::pin(task.instrument(span)));
                let rx = tx.subscribe();
                entries.insert(
                    object.clone(),
                    Entry {
                        refs: 1,
                        tx,
                        _stop: stop_tx,
                    },
                );
                rx
            }
        };
        Subscription {
            object: object.clone(),
            rx,
            shared: self.shared.clone(),
        }
    }

    /// Subscribes a volume to every object its trust spec names, after the namespace policy
    /// (the pod's namespace, or the node's trust namespace).
    pub fn subscribe(
        &self,
        spec: &TrustSpec,
        pod_namespace: &str,
    ) -> Result<VolumeTrust, PolicyError> {
        let sources = source::resolve(spec, pod_namespace, self.shared.trust_namespace.as_deref())?;
        let subs = sources
            .into_iter()
            .map(|s| {
                let sub = self.subscribe_object(&s.object);
                (s, sub)
            })
            .collect();
        let mut trust = VolumeTrust {
            issuer_ca: spec.issuer_ca,
            public_roots: spec.public_roots,
            subs,
            seen: Vec::new(),
        };
        trust.seen = trust.fingerprint();
        Ok(trust)
    }
}

/// Runs the watch futures the cache starts.
async fn drive(mut start: mpsc::UnboundedReceiver<BoxFuture<'static, ()>>) {
    let mut running = FuturesUnordered::new();
    loop {
        tokio::select! {
            next = start.recv() => match next {
                Some(task) => running.push(task),
                None => {
                    while running.next().await.is_some() {}
                    return;
                }
            },
            Some(()) = running.next(), if !running.is_empty() => {}
        }
    }
}

fn watch_object(
    client: &kube::Client,
    apis: &Apis,
    object: &ObjectRef,
    tx: Arc<watch::Sender<Snapshot>>,
    stop: oneshot::Receiver<()>,
) -> BoxFuture<'static, ()> {
    let by_name = |name: &str| watcher::Config::default().fields(&format!("metadata.name={name}"));
    match object {
        ObjectRef::ConfigMap { namespace, name } => Box::pin(run_watch(
            Api::<ConfigMap>::namespaced(client.clone(), namespace),
            by_name(name),
            configmap_data,
            tx,
            stop,
        )),
        ObjectRef::Secret { namespace, name } => Box::pin(run_watch(
            Api::<Secret>::namespaced(client.clone(), namespace),
            by_name(name),
            secret_data,
            tx,
            stop,
        )),
        ObjectRef::ClusterTrustBundle { name } => Box::pin(watch_ctb(
            client.clone(),
            apis.clone(),
            by_name(name),
            tx,
            stop,
        )),
        ObjectRef::Signer {
            signer_name,
            labels,
        } => {
            let mut config =
                watcher::Config::default().fields(&format!("spec.signerName={signer_name}"));
            if !labels.is_empty() {
                config = config.labels(labels);
            }
            Box::pin(watch_ctb(client.clone(), apis.clone(), config, tx, stop))
        }
    }
}

fn configmap_data(cm: &ConfigMap) -> ObjectData {
    let mut out = ObjectData::new();
    for (k, v) in cm.binary_data.iter().flatten() {
        out.insert(k.clone(), v.0.clone());
    }
    for (k, v) in cm.data.iter().flatten() {
        out.insert(k.clone(), v.clone().into_bytes());
    }
    out
}

fn secret_data(s: &Secret) -> ObjectData {
    s.data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .collect()
}

/// `spec.trustBundle`, the same field in every ClusterTrustBundle version. A bundle without it
/// (the API requires it) reads as one without the key, which `content` reports.
fn ctb_data(b: &DynamicObject) -> ObjectData {
    b.data
        .get("spec")
        .and_then(|spec| spec.get(CTB_KEY))
        .and_then(serde_json::Value::as_str)
        .map(|pem| ObjectData::from([(CTB_KEY.to_owned(), pem.as_bytes().to_vec())]))
        .unwrap_or_default()
}

/// Watches ClusterTrustBundles with `config` in the version discovery found, once it has
/// answered; with no version served, marks the source as such and idles until stopped.
async fn watch_ctb(
    client: kube::Client,
    apis: Apis,
    config: watcher::Config,
    tx: Arc<watch::Sender<Snapshot>>,
    mut stop: oneshot::Receiver<()>,
) {
    tx.send_if_modified(|s| {
        let waiting = Some(
            "waiting for API discovery to tell which ClusterTrustBundle version the cluster serves"
                .to_owned(),
        );
        let changed = s.objects.is_none() && s.error != waiting;
        if changed {
            s.error = waiting;
        }
        changed
    });
    let version = tokio::select! {
        _ = &mut stop => return,
        version = apis.cluster_trust_bundles() => version,
    };
    match version {
        Some(version) => {
            let api = Api::<DynamicObject>::all_with(client, &version.api_resource());
            run_watch(api, config, ctb_data, tx, stop).await;
        }
        None => {
            tx.send_replace(Snapshot {
                objects: None,
                error: None,
                no_api: true,
            });
            let _ = stop.await;
        }
    }
}

/// Lists and watches with `config` until `stop` fires (or its sender is dropped), publishing the
/// matching objects' data whenever it changes. Relists after 410 Gone; backs off on errors.
async fn run_watch<K>(
    api: Api<K>,
    config: watcher::Config,
    extract: fn(&K) -> ObjectData,
    tx: Arc<watch::Sender<Snapshot>>,
    mut stop: oneshot::Receiver<()>,
) where
    K: kube::Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    info!("watching trust source");
    let mut stream = watcher::watcher(api, config).default_backoff().boxed();
    let mut live: BTreeMap<String, ObjectData> = BTreeMap::new();
    let mut relist: Option<BTreeMap<String, ObjectData>> = None;
    let mut synced = false;
    let publish = |live: &BTreeMap<String, ObjectData>| {
        tx.send_if_modified(|s| {
            let next = Snapshot {
                objects: Some(live.clone()),
                error: None,
                no_api: false,
            };
            let changed = *s != next;
            *s = next;
            changed
        });
    };
    loop {
        let item = tokio::select! {
            _ = &mut stop => return,
            item = stream.next() => item,
        };
        let Some(item) = item else {
            warn!("trust source watch ended");
            return;
        };
        match item {
            Ok(Event::Init) => relist = Some(BTreeMap::new()),
            Ok(Event::InitApply(obj)) => {
                if let Some(r) = relist.as_mut() {
                    r.insert(obj.name_any(), extract(&obj));
                }
            }
            Ok(Event::InitDone) => {
                // The relist is the whole truth: what it lacks was deleted meanwhile.
                if let Some(r) = relist.take() {
                    live = r;
                }
                synced = true;
                publish(&live);
            }
            Ok(Event::Apply(obj)) => {
                live.insert(obj.name_any(), extract(&obj));
                if synced {
                    publish(&live);
                }
            }
            Ok(Event::Delete(obj)) => {
                live.remove(&obj.name_any());
                if synced {
                    publish(&live);
                }
            }
            Err(error) => {
                warn!(%error, "trust source watch failed; retrying with backoff");
                let message = error.to_string();
                tx.send_if_modified(|s| {
                    let changed = s.error.as_deref() != Some(message.as_str());
                    s.error = Some(message);
                    changed
                });
            }
        }
    }
}

/// A source's content now: `Ok(None)` while its watch has not listed yet.
fn content(
    source: &ResolvedSource,
    snap: &Snapshot,
) -> Result<Option<Vec<SourcePem>>, SourceError> {
    if snap.no_api {
        let what = match &source.object {
            ObjectRef::ClusterTrustBundle { name } => name.clone(),
            ObjectRef::Signer { signer_name, .. } => signer_name.clone(),
            other => other.to_string(),
        };
        return Err(SourceError::NoApi(NoClusterTrustBundles::trust(
            &source.attribute,
            &what,
        )));
    }
    let Some(objects) = &snap.objects else {
        return Ok(None);
    };
    let attribute = || source.attribute.clone();
    let object = || source.object.to_string();
    let one = |name: &str| -> Result<&ObjectData, SourceError> {
        objects.get(name).ok_or_else(|| SourceError::NotFound {
            attribute: attribute(),
            object: object(),
        })
    };
    let text = |data: &ObjectData, key: &str| -> Result<String, SourceError> {
        let bytes = data.get(key).ok_or_else(|| SourceError::MissingKey {
            attribute: attribute(),
            object: object(),
            key: key.to_owned(),
            // A Secret's key names are not for whoever reads the pod's events (who may not
            // be allowed to read the Secret); a ConfigMap's help fix a typo.
            available: if matches!(source.object, ObjectRef::Secret { .. }) {
                "not listed for a Secret".into()
            } else if data.is_empty() {
                "none".into()
            } else {
                data.keys()
                    .map(String::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        })?;
        String::from_utf8(bytes.clone()).map_err(|_| SourceError::NotText {
            attribute: attribute(),
            object: object(),
            key: key.to_owned(),
        })
    };
    let pems = match &source.object {
        ObjectRef::ConfigMap { name, .. } | ObjectRef::Secret { name, .. } => {
            let key = source.key.as_deref().unwrap_or_default();
            vec![SourcePem::new(source.label(), text(one(name)?, key)?)]
        }
        ObjectRef::ClusterTrustBundle { name } => {
            vec![SourcePem::new(source.label(), text(one(name)?, CTB_KEY)?)]
        }
        ObjectRef::Signer { .. } => {
            if objects.is_empty() {
                return Err(SourceError::NoneSelected {
                    attribute: attribute(),
                    object: object(),
                });
            }
            // One source per bundle, by object name, so reports point at the right object.
            objects
                .iter()
                .map(|(name, data)| {
                    Ok(SourcePem::new(
                        format!("ClusterTrustBundle {name}"),
                        text(data, CTB_KEY)?,
                    ))
                })
                .collect::<Result<Vec<_>, SourceError>>()?
        }
    };
    Ok(Some(pems))
}

/// One volume's subscriptions. Dropping it releases the watches.
pub struct VolumeTrust {
    issuer_ca: bool,
    public_roots: bool,
    subs: Vec<(ResolvedSource, Subscription)>,
    /// Content of each source when last observed, for [`VolumeTrust::changed`].
    seen: Vec<Result<Option<Vec<SourcePem>>, SourceError>>,
}

impl VolumeTrust {
    fn fingerprint(&self) -> Vec<Result<Option<Vec<SourcePem>>, SourceError>> {
        self.subs
            .iter()
            .map(|(s, sub)| content(s, &sub.rx.borrow()))
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
            c.clone()?;
        }
        Ok(())
    }

    /// The bundle's sources in order: the issuing CA (`issuing_ca_pem`, e.g. from
    /// [`super::rotation::in_bundle`]) when the spec includes it, each object's content, the
    /// public roots when asked for. Errors when a source is missing or not listed yet.
    pub fn sources(&self, issuing_ca_pem: &str) -> Result<Vec<SourcePem>, SourceError> {
        let mut out = Vec::new();
        if self.issuer_ca {
            out.push(SourcePem::new("issuing CA", issuing_ca_pem));
        }
        for (source, sub) in &self.subs {
            match content(source, &sub.rx.borrow())? {
                Some(pems) => out.extend(pems),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn source(object: ObjectRef, key: Option<&str>) -> ResolvedSource {
        ResolvedSource {
            object,
            key: key.map(str::to_owned),
            attribute: "csi.certvol.io/trust-configmaps".into(),
        }
    }

    type Entries<'a> = &'a [(&'a str, &'a [u8])];

    fn snap(objects: &[(&str, Entries)]) -> Snapshot {
        Snapshot {
            objects: Some(
                objects
                    .iter()
                    .map(|(n, d)| {
                        (
                            (*n).to_owned(),
                            d.iter()
                                .map(|(k, v)| ((*k).to_owned(), v.to_vec()))
                                .collect(),
                        )
                    })
                    .collect(),
            ),
            error: None,
            no_api: false,
        }
    }

    #[test]
    fn cache_and_subscriptions_can_move_between_tasks() {
        fn send_sync<T: Send + Sync>() {}
        fn send<T: Send>() {}
        send_sync::<TrustCache>();
        send::<VolumeTrust>();
    }

    #[test]
    fn content_table() {
        let cm = ObjectRef::ConfigMap {
            namespace: "shop".into(),
            name: "ca".into(),
        };
        let secret = ObjectRef::Secret {
            namespace: "shop".into(),
            name: "ca".into(),
        };
        let signer = ObjectRef::Signer {
            signer_name: "example.com/s".into(),
            labels: String::new(),
        };
        let pending = Snapshot::default();
        assert_eq!(
            content(&source(cm.clone(), Some("ca.crt")), &pending),
            Ok(None)
        );
        type Row<'a> = (ResolvedSource, Snapshot, Result<Vec<&'a str>, &'a str>);
        let rows: Vec<Row> = vec![
            (
                source(cm.clone(), Some("ca.crt")),
                snap(&[("ca", &[("ca.crt", b"PEM")])]),
                Ok(vec!["ConfigMap shop/ca key ca.crt"]),
            ),
            (
                source(cm.clone(), Some("ca.crt")),
                snap(&[]),
                Err("ConfigMap shop/ca does not exist"),
            ),
            (
                source(cm.clone(), Some("ca.crt")),
                snap(&[("ca", &[("other", b"x"), ("z", b"y")])]),
                Err("ConfigMap shop/ca has no key \"ca.crt\"; its keys: other, z"),
            ),
            (
                source(cm.clone(), Some("ca.crt")),
                snap(&[("ca", &[("ca.crt", &[0xff, 0xfe])])]),
                Err("is not UTF-8 text"),
            ),
            (
                // A Secret's other keys are not named (whoever sees the pod's events may not
                // read the Secret).
                source(secret.clone(), Some("ca.crt")),
                snap(&[("ca", &[("tls.key", b"x")])]),
                Err("Secret shop/ca has no key \"ca.crt\"; its keys: not listed for a Secret"),
            ),
            (
                source(signer.clone(), None),
                snap(&[]),
                Err("there are no ClusterTrustBundles with signerName example.com/s"),
            ),
            (
                source(signer.clone(), None),
                snap(&[("b", &[(CTB_KEY, b"2")]), ("a", &[(CTB_KEY, b"1")])]),
                Ok(vec!["ClusterTrustBundle a", "ClusterTrustBundle b"]),
            ),
        ];
        for (src, snap, want) in rows {
            match (content(&src, &snap), want) {
                (Ok(Some(pems)), Ok(labels)) => {
                    let got: Vec<&str> = pems.iter().map(|p| p.label.as_str()).collect();
                    assert_eq!(got, labels);
                }
                (Err(e), Err(fragment)) => {
                    let msg = e.to_string();
                    assert!(msg.contains(fragment), "{msg}");
                    assert!(
                        msg.starts_with("volume attribute \"csi.certvol.io/trust-configmaps\""),
                        "{msg}"
                    );
                    assert_eq!(e.attribute(), "csi.certvol.io/trust-configmaps");
                }
                (got, want) => panic!("got {got:?}, want {want:?}"),
            }
        }
    }

    /// An API server of a given Kubernetes version as far as ClusterTrustBundles go: discovery
    /// answers for `certificates.k8s.io/v1` (CSRs, plus ClusterTrustBundles if `ctb` is v1) and
    /// for `ctb`; bundles are listed only in `ctb`; watches stay open without events. Everything
    /// else is 404, as kube-apiserver answers for versions it does not serve.
    fn apiserver(ctb: Option<&'static str>, seen: Arc<Mutex<Vec<String>>>) -> kube::Client {
        use crate::fakeapi;
        use serde_json::json;
        fakeapi::client(move |req| {
            let seen = seen.clone();
            async move {
                seen.lock()
                    .unwrap()
                    .push(format!("{}?{}", req.path, req.query));
                let path = req.path;
                let gv = |v: &str| format!("/apis/certificates.k8s.io/{v}");
                let mut resources = Vec::new();
                if path == gv("v1") {
                    resources.push("certificatesigningrequests");
                }
                if ctb.is_some_and(|v| path == gv(v)) {
                    resources.push("clustertrustbundles");
                }
                let listing = ctb.is_some_and(|v| path == format!("{}/clustertrustbundles", gv(v)));
                if listing && req.query.contains("watch=true") {
                    // An open watch with nothing to report.
                    std::future::pending::<()>().await;
                }
                if !resources.is_empty() {
                    (
                        200,
                        fakeapi::resource_list(path.trim_start_matches("/apis/"), &resources),
                    )
                } else if listing {
                    let api_version = format!("certificates.k8s.io/{}", ctb.unwrap_or_default());
                    (
                        200,
                        json!({"apiVersion": api_version, "kind": "ClusterTrustBundleList",
                               "metadata": {"resourceVersion": "7"},
                               "items": [{"apiVersion": api_version, "kind": "ClusterTrustBundle",
                                          "metadata": {"name": "example.com:s:a", "resourceVersion": "7"},
                                          "spec": {"signerName": "example.com/s", "trustBundle": "PEM-A"}}]}),
                    )
                } else {
                    (404, fakeapi::not_found())
                }
            }
        })
    }

    fn trust_spec(key: &str, value: &str) -> TrustSpec {
        let ctx = [
            ("csi.certvol.io/issuer-name", "ca"),
            ("csi.certvol.io/dns-names", "a.example"),
            (key, value),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        crate::attrs::parse(&ctx).unwrap().trust.unwrap()
    }

    /// The trust watch reads ClusterTrustBundles in the version the server serves: v1 on 1.37
    /// (where the old hard-coded v1beta1 404s), v1beta1 on 1.36 with the beta enabled, and on
    /// 1.30 (none) the source fails with NoApi naming the attribute instead of waiting out a 404.
    #[tokio::test]
    async fn cluster_trust_bundles_are_watched_in_the_served_version() {
        for version in ["v1", "v1beta1"] {
            let seen = Arc::new(Mutex::new(Vec::new()));
            let client = apiserver(Some(version), seen.clone());
            let (apis, discovering) = Apis::discover(client.clone(), crate::discovery::CSR_API);
            let discovering = tokio::spawn(discovering);
            let (cache, drive) = TrustCache::new(client, None, apis);
            let drive = tokio::spawn(drive);
            for (key, value) in [
                ("csi.certvol.io/trust-cluster-bundles", "example.com:s:a"),
                ("csi.certvol.io/trust-signer-name", "example.com/s"),
            ] {
                let mut trust = cache.subscribe(&trust_spec(key, value), "shop").unwrap();
                trust
                    .ready(Duration::from_secs(5))
                    .await
                    .unwrap_or_else(|e| panic!("{version} {key}: {e}"));
                let labels: Vec<String> = trust
                    .sources("")
                    .unwrap()
                    .into_iter()
                    .map(|s| s.label)
                    .filter(|l| l.starts_with("ClusterTrustBundle"))
                    .collect();
                assert_eq!(
                    labels,
                    ["ClusterTrustBundle example.com:s:a"],
                    "{version} {key}"
                );
            }
            let lists: Vec<String> = seen
                .lock()
                .unwrap()
                .iter()
                .filter(|p| p.contains("/clustertrustbundles?"))
                .cloned()
                .collect();
            assert!(!lists.is_empty());
            let prefix = format!("/apis/certificates.k8s.io/{version}/clustertrustbundles?");
            assert!(lists.iter().all(|p| p.starts_with(&prefix)), "{lists:?}");
            drop(cache);
            drive.abort();
            discovering.await.unwrap();
        }

        let seen = Arc::new(Mutex::new(Vec::new()));
        let client = apiserver(None, seen.clone());
        let (apis, discovering) = Apis::discover(client.clone(), crate::discovery::CSR_API);
        tokio::spawn(discovering);
        let (cache, drive) = TrustCache::new(client, None, apis);
        tokio::spawn(drive);
        let key = "csi.certvol.io/trust-cluster-bundles";
        let mut trust = cache
            .subscribe(&trust_spec(key, "example.com:s:a"), "shop")
            .unwrap();
        match trust.ready(Duration::from_secs(5)).await {
            Err(e @ SourceError::NoApi(_)) => {
                assert_eq!(e.attribute(), key);
                let msg = e.to_string();
                assert!(
                    msg.starts_with("volume attribute \"csi.certvol.io/trust-cluster-bundles\" (\"example.com:s:a\") needs the ClusterTrustBundle API"),
                    "{msg}"
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(
            !seen
                .lock()
                .unwrap()
                .iter()
                .any(|p| p.contains("/clustertrustbundles")),
            "no bundle read without the API: {:?}",
            seen.lock().unwrap()
        );
    }
}
