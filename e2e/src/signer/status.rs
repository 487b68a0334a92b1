//! CertificateRequest status as cert-manager writes it: conditions, timestamps and the steps
//! the controllers take.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Map, Value};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::{
    APPROVED_MESSAGE, APPROVED_REASON, DENIED_MESSAGE, ISSUED_MESSAGE, REASON_DENIED,
    REASON_FAILED, REASON_ISSUED, REASON_PENDING,
};

/// RFC 3339 at second precision, as Kubernetes serialises `metav1.Time`.
pub fn rfc3339(t: OffsetDateTime) -> String {
    let t = t.replace_nanosecond(0).unwrap_or(t);
    t.format(&Rfc3339).unwrap_or_default()
}

/// The condition of `type_` in `obj.status.conditions`.
pub fn condition<'a>(obj: &'a Value, type_: &str) -> Option<&'a Value> {
    obj.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some(type_))
}

pub(super) fn condition_is(obj: &Value, type_: &str, status: &str) -> bool {
    condition(obj, type_).and_then(|c| c.get("status")?.as_str()) == Some(status)
}

pub(super) fn ready_reason(obj: &Value) -> Option<&str> {
    condition(obj, "Ready")?.get("reason")?.as_str()
}

pub fn is_approved(obj: &Value) -> bool {
    condition_is(obj, "Approved", "True")
}

pub fn is_denied(obj: &Value) -> bool {
    condition_is(obj, "Denied", "True")
}

/// Whether cert-manager considers the request finished: it never acts on it again.
pub fn is_final(obj: &Value) -> bool {
    condition_is(obj, "Ready", "True")
        || condition_is(obj, "InvalidRequest", "True")
        || matches!(
            ready_reason(obj),
            Some(REASON_ISSUED | REASON_FAILED | REASON_DENIED)
        )
}

fn status_mut(obj: &mut Value) -> Option<&mut Map<String, Value>> {
    let root = obj.as_object_mut()?;
    let status = root
        .entry("status")
        .or_insert_with(|| Value::Object(Map::new()));
    if !status.is_object() {
        *status = Value::Object(Map::new());
    }
    status.as_object_mut()
}

/// Sets a condition as cert-manager's `SetCertificateRequestCondition` does: updates the one of
/// the same type in place (lastTransitionTime changes only when the status changes) or appends.
pub fn set_condition(
    obj: &mut Value,
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
    now: &str,
) {
    let Some(st) = status_mut(obj) else { return };
    let conditions = st
        .entry("conditions")
        .or_insert_with(|| Value::Array(Vec::new()));
    if !conditions.is_array() {
        *conditions = Value::Array(Vec::new());
    }
    let Some(list) = conditions.as_array_mut() else {
        return;
    };
    let mut new = serde_json::json!({
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": now,
    });
    if let Some(existing) = list
        .iter_mut()
        .find(|c| c.get("type").and_then(Value::as_str) == Some(type_))
    {
        if existing.get("status").and_then(Value::as_str) == Some(status)
            && let Some(t) = existing.get("lastTransitionTime")
        {
            new["lastTransitionTime"] = t.clone();
        }
        *existing = new;
    } else {
        list.push(new);
    }
}

fn set_failure_time(obj: &mut Value, now: &str) {
    if let Some(st) = status_mut(obj) {
        st.entry("failureTime")
            .or_insert_with(|| Value::String(now.to_string()));
    }
}

/// One status write the controllers make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Approve,
    Deny {
        reason: String,
        message: String,
    },
    /// The issuer's reaction to a denial.
    MarkDenied,
    Pending {
        message: String,
    },
    Fail {
        message: String,
    },
    /// `certificate` and `ca` are PEM text; the write base64-encodes them.
    Issue {
        certificate: String,
        ca: Option<String>,
    },
}

/// Whether `step` may still be written to `obj`: re-checked against the stored object at write
/// time, because another writer (or a slow signing) may have moved it on since we looked.
pub fn step_allowed(obj: &Value, step: &Step) -> bool {
    match step {
        // cert-manager's approver skips Issued and Failed requests; InvalidRequest ones are
        // skipped too because the issuer would never act on them (they are final).
        Step::Approve | Step::Deny { .. } => !is_approved(obj) && !is_denied(obj) && !is_final(obj),
        Step::MarkDenied => is_denied(obj) && ready_reason(obj) != Some(REASON_DENIED),
        Step::Pending { .. } | Step::Fail { .. } | Step::Issue { .. } => {
            is_approved(obj)
                && !is_denied(obj)
                && !is_final(obj)
                && obj
                    .pointer("/status/certificate")
                    .and_then(Value::as_str)
                    .is_none_or(str::is_empty)
        }
    }
}

/// Applies `step` to the object.
pub fn apply_step(obj: &mut Value, step: &Step, now: &str) {
    match step {
        Step::Approve => set_condition(
            obj,
            "Approved",
            "True",
            APPROVED_REASON,
            APPROVED_MESSAGE,
            now,
        ),
        Step::Deny { reason, message } => {
            set_condition(obj, "Denied", "True", reason, message, now)
        }
        Step::MarkDenied => {
            set_failure_time(obj, now);
            set_condition(obj, "Ready", "False", REASON_DENIED, DENIED_MESSAGE, now);
        }
        Step::Pending { message } => {
            set_condition(obj, "Ready", "False", REASON_PENDING, message, now)
        }
        Step::Fail { message } => {
            set_failure_time(obj, now);
            set_condition(obj, "Ready", "False", REASON_FAILED, message, now);
        }
        Step::Issue { certificate, ca } => {
            if let Some(st) = status_mut(obj) {
                st.insert(
                    "certificate".into(),
                    Value::String(B64.encode(certificate.as_bytes())),
                );
                match ca {
                    Some(ca) => {
                        st.insert("ca".into(), Value::String(B64.encode(ca.as_bytes())));
                    }
                    None => {
                        st.remove("ca");
                    }
                }
            }
            set_condition(obj, "Ready", "True", REASON_ISSUED, ISSUED_MESSAGE, now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signer::tests::cr;

    #[test]
    fn conditions_update_in_place_and_keep_transition_time_when_status_is_unchanged() {
        let mut obj = cr("ca");
        set_condition(
            &mut obj,
            "Ready",
            "False",
            "Pending",
            "a",
            "2026-01-01T00:00:00Z",
        );
        set_condition(
            &mut obj,
            "Ready",
            "False",
            "Pending",
            "b",
            "2026-01-01T00:05:00Z",
        );
        let c = condition(&obj, "Ready").unwrap();
        assert_eq!(c["message"], "b");
        assert_eq!(c["lastTransitionTime"], "2026-01-01T00:00:00Z");
        set_condition(
            &mut obj,
            "Ready",
            "True",
            "Issued",
            "ok",
            "2026-01-01T00:09:00Z",
        );
        let list = obj["status"]["conditions"].as_array().unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0]["lastTransitionTime"], "2026-01-01T00:09:00Z");
        assert_eq!(list[0]["status"], "True");
    }
    #[test]
    fn timestamps_are_rfc3339_seconds() {
        let t = OffsetDateTime::from_unix_timestamp_nanos(1_795_000_000_123_456_789).unwrap();
        assert_eq!(rfc3339(t), "2026-11-18T11:06:40Z");
    }
    #[test]
    fn failure_keeps_the_first_failure_time() {
        let mut obj = cr("ca");
        apply_step(
            &mut obj,
            &Step::Fail {
                message: "one".into(),
            },
            "2026-01-01T00:00:00Z",
        );
        apply_step(
            &mut obj,
            &Step::Fail {
                message: "two".into(),
            },
            "2026-01-02T00:00:00Z",
        );
        assert_eq!(obj["status"]["failureTime"], "2026-01-01T00:00:00Z");
        assert_eq!(condition(&obj, "Ready").unwrap()["reason"], "Failed");
    }
}
