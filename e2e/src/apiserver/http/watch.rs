//! Newline-delimited JSON watch streams: initial events, bookmarks, timeouts.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};

use super::list::{as_version, selectors};
use super::{Route, is_true};
use crate::apiserver::{ApiError, FieldSelector, Kind, LabelSelector, Shared, WatchEvent};

/// Watches end after this long when the client gives no timeoutSeconds (apiserver picks 30-60 min).
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(1800);

/// Which changes one watch stream delivers.
struct WatchFilter {
    kind: Kind,
    namespace: Option<String>,
    labels: LabelSelector,
    fields: FieldSelector,
    group_version: String,
}

impl WatchFilter {
    fn matches(&self, ev: &WatchEvent) -> bool {
        let o = &ev.object;
        ev.kind == self.kind
            && self
                .namespace
                .as_deref()
                .is_none_or(|ns| o["metadata"]["namespace"].as_str() == Some(ns))
            && (self.kind != Kind::Event
                || o["apiVersion"].as_str() == Some(self.group_version.as_str()))
            && self.labels.matches(o)
            && self.fields.matches(o)
    }
}

fn line(ev_type: &str, object: &Value) -> Bytes {
    let mut text = json!({"type": ev_type, "object": object}).to_string();
    text.push('\n');
    Bytes::from(text)
}

pub(super) fn watch(
    s: &Arc<Shared>,
    r: &Route,
    q: &HashMap<String, String>,
) -> Result<Response, ApiError> {
    let (labels, fields) = selectors(r, q)?;
    let filter = WatchFilter {
        kind: r.kind,
        namespace: r.namespace.clone(),
        labels,
        fields,
        group_version: r.group_version.clone(),
    };
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map_or(DEFAULT_WATCH_TIMEOUT, Duration::from_secs);
    let bookmarks = is_true(q, "allowWatchBookmarks");
    let initial_events = is_true(q, "sendInitialEvents");
    let rv_param = q.get("resourceVersion").map(String::as_str).unwrap_or("");
    let (tx, rx) = mpsc::channel::<Result<Bytes, Infallible>>(64);
    let bookmark = |rv: u64| json!({"kind": r.kind.kind_name(), "apiVersion": r.group_version, "metadata": {"resourceVersion": rv.to_string()}});

    let mut first: Vec<Bytes> = Vec::new();
    let (since, live) = if initial_events || rv_param.is_empty() || rv_param == "0" {
        let (rv, current, live) = s.store.watch_current(r.kind);
        first.extend(
            current
                .iter()
                .filter(|e| filter.matches(e))
                .map(|e| line("ADDED", &as_version(&r.group_version, e.object.clone()))),
        );
        if initial_events {
            // The end of the initial state, marked as kube-apiserver's streaming lists do.
            let mut bm = bookmark(rv);
            bm["metadata"]["annotations"] = json!({"k8s.io/initial-events-end": "true"});
            first.push(line("BOOKMARK", &bm));
        }
        (rv, Some(live))
    } else {
        let since: u64 = rv_param
            .parse()
            .map_err(|_| ApiError::BadRequest(format!("invalid resource version: {rv_param:?}")))?;
        match s.store.watch_from(since) {
            Ok((backlog, live)) => {
                first.extend(backlog.iter().filter(|e| filter.matches(e)).map(|e| {
                    let obj = as_version(&r.group_version, e.object.clone());
                    line(e.event_type.wire_name(), &obj)
                }));
                let last = backlog.last().map_or(since, WatchEvent::resource_version);
                (last, Some(live))
            }
            Err(e) => {
                // As the watch cache does: the stream opens with 200 and carries one ERROR event.
                first.push(line("ERROR", &e.status()));
                (since, None)
            }
        }
    };

    let mut closer = s.faults.watch_closer();
    closer.mark_unchanged();
    let bm_template = bookmark(0);
    tokio::spawn(async move {
        for l in first {
            if tx.send(Ok(l)).await.is_err() {
                return;
            }
        }
        let Some(mut live) = live else { return };
        let mut last = since;
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                ev = live.recv() => match ev {
                    Ok(ev) => {
                        let rv = ev.resource_version();
                        if rv <= last {
                            continue;
                        }
                        last = rv;
                        if filter.matches(&ev) {
                            let obj = as_version(&filter.group_version, ev.object);
                            if tx.send(Ok(line(ev.event_type.wire_name(), &obj))).await.is_err() {
                                return;
                            }
                        }
                    }
                    // Fell behind or the store is gone: end the stream; the client resumes from
                    // the last resourceVersion it saw, as after any dropped watch.
                    Err(broadcast::error::RecvError::Lagged(_) | broadcast::error::RecvError::Closed) => return,
                },
                _ = &mut deadline => {
                    if bookmarks {
                        let mut bm = bm_template.clone();
                        bm["metadata"]["resourceVersion"] = json!(last.to_string());
                        let _ = tx.send(Ok(line("BOOKMARK", &bm))).await;
                    }
                    return;
                }
                _ = closer.changed() => return,
                _ = tx.closed() => return,
            }
        }
    });
    let mut resp =
        Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx)).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}
