//! Warning events on the pod when its certificate cannot be issued or its trust bundle cannot be
//! built, so `kubectl describe pod` says why the volume is stuck or stale (kubelet's FailedMount
//! event only carries the CSI error text, and a background refresh has no caller at all). Used by
//! the cert-manager backend and by the volume layer.

use std::collections::{HashSet, VecDeque};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::PostParams;
use parking_lot::{Mutex, MutexGuard};
use sha2::{Digest, Sha256};
use tracing::{debug, warn};

use crate::spec::request::PodInfo;

/// `source.component` / `reportingComponent` of the events.
pub const COMPONENT: &str = "certvol";

/// How many (pod, reason, request) triples are remembered for deduplication. Each one is a few
/// hundred bytes; the oldest are forgotten first. Event names are deterministic too, so a
/// forgotten triple reported again meets 409 AlreadyExists instead of a duplicate event.
const DEDUP_CAPACITY: usize = 4096;

/// An API call for an event must not hold up the issuance result for long.
const EVENT_TIMEOUT: Duration = Duration::from_secs(5);

/// Event messages are capped like events.k8s.io's `note` (1 KiB).
const MAX_MESSAGE: usize = 1024;

pub const REASON_DENIED: &str = "CertificateRequestDenied";
pub const REASON_FAILED: &str = "CertificateRequestFailed";
pub const REASON_INVALID: &str = "CertificateRequestInvalid";
pub const REASON_TIMEOUT: &str = "CertificateRequestTimeout";
/// A trust source a volume names is missing or unreadable (the `request` is the object).
pub const REASON_TRUST_SOURCE: &str = "TrustSourceUnavailable";
/// A trust source holds entries that are not certificates; they were left out of the bundle.
pub const REASON_TRUST_REJECTED: &str = "TrustBundleEntryRejected";

type DedupKey = (String, String, String);

#[derive(Default)]
struct Dedup {
    seen: HashSet<DedupKey>,
    order: VecDeque<DedupKey>,
}

impl Dedup {
    /// Records `key`; false when it was already recorded.
    fn insert(&mut self, key: DedupKey) -> bool {
        if self.seen.contains(&key) {
            return false;
        }
        if self.order.len() >= DEDUP_CAPACITY
            && let Some(old) = self.order.pop_front()
        {
            self.seen.remove(&old);
        }
        self.seen.insert(key.clone());
        self.order.push_back(key);
        true
    }

    fn remove(&mut self, key: &DedupKey) {
        if self.seen.remove(key) {
            self.order.retain(|k| k != key);
        }
    }
}

/// Publishes deduplicated warning events on pods.
pub struct EventSink {
    client: kube::Client,
    node_id: String,
    dedup: Mutex<Dedup>,
}

impl EventSink {
    pub fn new(client: kube::Client, node_id: String) -> Self {
        EventSink {
            client,
            node_id,
            dedup: Mutex::new(Dedup::default()),
        }
    }

    /// Reports `reason` for `request` on `pod`, once per (pod uid, reason, request). Failures are
    /// logged and otherwise ignored: an event is a courtesy, never a reason to fail an issuance.
    pub async fn report(&self, pod: &PodInfo, reason: &str, request: &str, message: &str) {
        if pod.name.is_empty() || pod.namespace.is_empty() {
            return;
        }
        let pod_id = if pod.uid.is_empty() {
            format!("{}/{}", pod.namespace, pod.name)
        } else {
            pod.uid.clone()
        };
        let key = (pod_id, reason.to_owned(), request.to_owned());
        if !self.lock().insert(key.clone()) {
            debug!(request, reason, "event already reported");
            return;
        }
        let report = Report {
            reason,
            request,
            message,
        };
        let event = build_event(pod, report, &self.node_id, Timestamp::now());
        let api: Api<Event> = Api::namespaced(self.client.clone(), &pod.namespace);
        match tokio::time::timeout(EVENT_TIMEOUT, api.create(&PostParams::default(), &event)).await
        {
            Ok(Ok(_)) => debug!(request, reason, pod = %pod.name, "event recorded on the pod"),
            Ok(Err(kube::Error::Api(status))) if status.is_already_exists() => {}
            Ok(Err(error)) => {
                // Forget it so that the next failure of the same kind tries again.
                self.lock().remove(&key);
                warn!(request, reason, pod = %pod.name, %error, "could not record an event on the pod");
            }
            Err(_) => {
                self.lock().remove(&key);
                warn!(request, reason, pod = %pod.name, "recording an event on the pod timed out");
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, Dedup> {
        self.dedup.lock()
    }
}

/// What one report on a pod says.
#[derive(Clone, Copy, Debug)]
pub struct Report<'a> {
    pub reason: &'a str,
    /// The request it is about; with the pod and the reason, what makes it one event.
    pub request: &'a str,
    pub message: &'a str,
}

/// The core/v1 Event for one report. Its name is derived from (pod uid, reason, request), so the
/// same report after a driver restart collides instead of duplicating.
pub fn build_event(pod: &PodInfo, report: Report<'_>, node_id: &str, now: Timestamp) -> Event {
    let Report {
        reason,
        request,
        message,
    } = report;
    let mut hasher = Sha256::new();
    for part in [pod.uid.as_str(), pod.name.as_str(), reason, request] {
        hasher.update(part.as_bytes());
        hasher.update([0u8]);
    }
    let suffix = hex::encode(&hasher.finalize()[..8]);
    // Object names are at most 253 characters; the pod name is a valid prefix (a DNS subdomain).
    let prefix: String = pod.name.chars().take(253 - 1 - suffix.len()).collect();
    let prefix = prefix.trim_end_matches(['.', '-']);
    Event {
        metadata: ObjectMeta {
            name: Some(format!("{prefix}.{suffix}")),
            namespace: Some(pod.namespace.clone()),
            ..ObjectMeta::default()
        },
        involved_object: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: Some(pod.name.clone()),
            namespace: Some(pod.namespace.clone()),
            uid: (!pod.uid.is_empty()).then(|| pod.uid.clone()),
            ..ObjectReference::default()
        },
        reason: Some(reason.to_owned()),
        message: Some(truncate(message, MAX_MESSAGE)),
        type_: Some("Warning".into()),
        source: Some(EventSource {
            component: Some(COMPONENT.into()),
            host: Some(node_id.to_owned()),
        }),
        reporting_component: Some(COMPONENT.into()),
        reporting_instance: Some(node_id.to_owned()),
        first_timestamp: Some(Time(now)),
        last_timestamp: Some(Time(now)),
        count: Some(1),
        ..Event::default()
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max - '…'.len_utf8();
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod() -> PodInfo {
        PodInfo {
            name: "web-0".into(),
            namespace: "shop".into(),
            uid: "uid-1".into(),
            service_account: "web".into(),
        }
    }

    #[test]
    fn event_names_the_pod_reason_and_message() {
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let ev = build_event(
            &pod(),
            Report {
                reason: REASON_DENIED,
                request: "shop/certvol-x-1",
                message: "request shop/certvol-x-1 was denied: nope",
            },
            "node-1",
            now,
        );
        let obj = &ev.involved_object;
        assert_eq!(
            (
                obj.kind.as_deref(),
                obj.name.as_deref(),
                obj.namespace.as_deref(),
                obj.uid.as_deref(),
                obj.api_version.as_deref()
            ),
            (
                Some("Pod"),
                Some("web-0"),
                Some("shop"),
                Some("uid-1"),
                Some("v1")
            )
        );
        assert_eq!(ev.metadata.namespace.as_deref(), Some("shop"));
        assert_eq!(ev.reason.as_deref(), Some(REASON_DENIED));
        assert_eq!(ev.type_.as_deref(), Some("Warning"));
        assert_eq!(
            ev.message.as_deref(),
            Some("request shop/certvol-x-1 was denied: nope")
        );
        assert_eq!(
            ev.source.as_ref().and_then(|s| s.host.as_deref()),
            Some("node-1")
        );
        assert_eq!(ev.count, Some(1));
        let name = ev.metadata.name.clone().unwrap();
        assert!(name.starts_with("web-0."), "{name}");
        // Same triple, same name (restart-safe dedup); another reason, another name.
        let again = build_event(
            &pod(),
            Report {
                reason: REASON_DENIED,
                request: "shop/certvol-x-1",
                message: "other text",
            },
            "node-1",
            now,
        );
        assert_eq!(again.metadata.name.unwrap(), name);
        let other = build_event(
            &pod(),
            Report {
                reason: REASON_TIMEOUT,
                request: "shop/certvol-x-1",
                message: "m",
            },
            "node-1",
            now,
        );
        assert_ne!(other.metadata.name.unwrap(), name);
    }

    #[test]
    fn long_names_and_messages_are_capped() {
        let mut p = pod();
        p.name = "p".repeat(253);
        let ev = build_event(
            &p,
            Report {
                reason: REASON_FAILED,
                request: "r",
                message: &"é".repeat(2000),
            },
            "n",
            Timestamp::UNIX_EPOCH,
        );
        assert!(ev.metadata.name.unwrap().len() <= 253);
        let msg = ev.message.unwrap();
        assert!(msg.len() <= MAX_MESSAGE && msg.ends_with('…'));
    }

    #[test]
    fn dedup_is_bounded_and_forgets_the_oldest() {
        let mut d = Dedup::default();
        let k = |i: usize| (format!("uid-{i}"), REASON_FAILED.to_owned(), "r".to_owned());
        assert!(d.insert(k(0)));
        assert!(!d.insert(k(0)));
        for i in 1..=DEDUP_CAPACITY {
            assert!(d.insert(k(i)));
        }
        assert_eq!(d.seen.len(), DEDUP_CAPACITY);
        assert_eq!(d.order.len(), DEDUP_CAPACITY);
        assert!(d.insert(k(0)), "the oldest entry was forgotten");
        d.remove(&k(0));
        assert!(d.insert(k(0)));
    }
}
