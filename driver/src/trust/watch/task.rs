//! The watch tasks: one per watched object, publishing its data as [`Snapshot`]s.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::Arc;

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
use tracing::{info, warn};

use super::limits::Bounds;
use super::value::{CTB_KEY, ObjectData, Value};
use crate::kube::discovery::Apis;
use crate::trust::source::ObjectRef;

/// What one watch currently knows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Snapshot {
    /// `None` until the first list completed; then object name → data (shared with the watch's
    /// own state, so publishing a snapshot copies no text).
    pub(super) objects: Option<BTreeMap<String, Arc<ObjectData>>>,
    /// The last watch error (e.g. 403 from RBAC), cleared when the watch recovers.
    pub(super) error: Option<String>,
    /// The cluster serves no ClusterTrustBundle API, so this (ClusterTrustBundle) source is never
    /// listed.
    pub(super) no_api: bool,
}

/// What every watch task is handed: the byte budget its values reserve from, where it publishes
/// its snapshots, and the signal to stop (fired, or its sender dropped, by the last subscriber).
pub(super) struct WatchArgs {
    pub(super) bounds: Arc<Bounds>,
    pub(super) tx: Arc<watch::Sender<Snapshot>>,
    pub(super) stop: oneshot::Receiver<()>,
}

/// Runs the watch futures the cache starts.
pub(super) async fn drive(mut start: mpsc::UnboundedReceiver<BoxFuture<'static, ()>>) {
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

/// The watch of one object the cache was asked for, to be run by [`drive`].
pub(super) fn watch_object(
    client: &kube::Client,
    apis: &Apis,
    object: &ObjectRef,
    args: WatchArgs,
) -> BoxFuture<'static, ()> {
    let by_name = |name: &str| watcher::Config::default().fields(&format!("metadata.name={name}"));
    match object {
        ObjectRef::ConfigMap { namespace, name } => Box::pin(run_watch(
            Api::<ConfigMap>::namespaced(client.clone(), namespace),
            by_name(name),
            configmap_data,
            args,
        )),
        ObjectRef::Secret { namespace, name } => Box::pin(run_watch(
            Api::<Secret>::namespaced(client.clone(), namespace),
            by_name(name),
            secret_data,
            args,
        )),
        ObjectRef::ClusterTrustBundle { name } => {
            Box::pin(watch_ctb(client.clone(), apis.clone(), by_name(name), args))
        }
        ObjectRef::Signer {
            signer_name,
            labels,
        } => {
            let mut config =
                watcher::Config::default().fields(&format!("spec.signerName={signer_name}"));
            if !labels.is_empty() {
                config = config.labels(labels);
            }
            Box::pin(watch_ctb(client.clone(), apis.clone(), config, args))
        }
    }
}

fn configmap_data(cm: &ConfigMap, bounds: &Arc<Bounds>, prev: Option<&ObjectData>) -> ObjectData {
    let before = |k: &String| prev.and_then(|p| p.get(k));
    let mut out = ObjectData::new();
    for (k, v) in cm.binary_data.iter().flatten() {
        out.insert(k.clone(), Value::new(&v.0, bounds, before(k)));
    }
    for (k, v) in cm.data.iter().flatten() {
        out.insert(k.clone(), Value::new(v.as_bytes(), bounds, before(k)));
    }
    out
}

fn secret_data(s: &Secret, bounds: &Arc<Bounds>, prev: Option<&ObjectData>) -> ObjectData {
    s.data
        .iter()
        .flatten()
        .map(|(k, v)| {
            let before = prev.and_then(|p| p.get(k));
            (k.clone(), Value::new(&v.0, bounds, before))
        })
        .collect()
}

/// `spec.trustBundle`, the same field in every ClusterTrustBundle version. A bundle without it
/// (the API requires it) reads as one without the key, which `content` reports.
fn ctb_data(b: &DynamicObject, bounds: &Arc<Bounds>, prev: Option<&ObjectData>) -> ObjectData {
    let before = prev.and_then(|p| p.get(CTB_KEY));
    b.data
        .get("spec")
        .and_then(|spec| spec.get(CTB_KEY))
        .and_then(serde_json::Value::as_str)
        .map(|pem| {
            ObjectData::from([(
                CTB_KEY.to_owned(),
                Value::new(pem.as_bytes(), bounds, before),
            )])
        })
        .unwrap_or_default()
}

/// Watches ClusterTrustBundles with `config` in the version discovery found, once it has
/// answered; with no version served, marks the source as such and idles until stopped.
async fn watch_ctb(client: kube::Client, apis: Apis, config: watcher::Config, mut args: WatchArgs) {
    args.tx.send_if_modified(|s| {
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
        _ = &mut args.stop => return,
        version = apis.cluster_trust_bundles() => version,
    };
    match version {
        Some(version) => {
            let api = Api::<DynamicObject>::all_with(client, &version.api_resource());
            run_watch(api, config, ctb_data, args).await;
        }
        None => {
            args.tx.send_replace(Snapshot {
                objects: None,
                error: None,
                no_api: true,
            });
            let _ = args.stop.await;
        }
    }
}

/// Lists and watches with `config` until `stop` fires (or its sender is dropped), publishing the
/// matching objects' data whenever it changes. Relists after 410 Gone; backs off on errors.
async fn run_watch<K>(
    api: Api<K>,
    config: watcher::Config,
    extract: fn(&K, &Arc<Bounds>, Option<&ObjectData>) -> ObjectData,
    args: WatchArgs,
) where
    K: kube::Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    let WatchArgs {
        bounds,
        tx,
        mut stop,
    } = args;
    info!("watching trust source");
    let mut stream = watcher::watcher(api, config).default_backoff().boxed();
    let mut live: BTreeMap<String, Arc<ObjectData>> = BTreeMap::new();
    let mut relist: Option<BTreeMap<String, Arc<ObjectData>>> = None;
    let mut synced = false;
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
                    let name = obj.name_any();
                    let data = extract(&obj, &bounds, live.get(&name).map(|d| &**d));
                    r.insert(name, Arc::new(data));
                }
            }
            Ok(Event::InitDone) => {
                // The relist is the whole truth: what it lacks was deleted meanwhile.
                if let Some(r) = relist.take() {
                    live = r;
                }
                synced = true;
                publish(&tx, &live);
            }
            Ok(Event::Apply(obj)) => {
                let name = obj.name_any();
                let data = extract(&obj, &bounds, live.get(&name).map(|d| &**d));
                live.insert(name, Arc::new(data));
                if synced {
                    publish(&tx, &live);
                }
            }
            Ok(Event::Delete(obj)) => {
                live.remove(&obj.name_any());
                if synced {
                    publish(&tx, &live);
                }
            }
            Err(error) => {
                warn!(%error, "trust source watch failed; retrying with backoff");
                report_error(&tx, error.to_string());
            }
        }
    }
}

/// Publishes the objects listed and watched now, if they differ from the last snapshot.
fn publish(tx: &watch::Sender<Snapshot>, live: &BTreeMap<String, Arc<ObjectData>>) {
    // Cloning `live` clones names and `Arc`s, never text; the comparison is by digest.
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
}

/// Records the watch's latest error in the snapshot, keeping the data last listed.
fn report_error(tx: &watch::Sender<Snapshot>, message: String) {
    tx.send_if_modified(|s| {
        let changed = s.error.as_deref() != Some(message.as_str());
        s.error = Some(message);
        changed
    });
}
