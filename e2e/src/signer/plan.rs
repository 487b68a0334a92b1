//! What the controllers do next with a request, in cert-manager's order.

use serde_json::Value;

use super::status::{
    Step, condition, is_approved, is_denied, is_final, ready_reason, step_allowed,
};
use super::{Approval, GROUP, Policy, REASON_PENDING};

/// What the controllers want to do next with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    Nothing,
    Write(Step),
    /// Approved and served by us: sign it (after the configured delay).
    Sign,
}

fn issuer_ref(obj: &Value) -> (&str, &str, &str) {
    let field = |f: &str| {
        obj.pointer(&format!("/spec/issuerRef/{f}"))
            .and_then(Value::as_str)
            .unwrap_or("")
    };
    (field("name"), field("kind"), field("group"))
}

/// The message cert-manager reports when the referenced issuer does not exist: the reporter's
/// "Referenced %q not found" followed by the API server's NotFound error.
pub fn issuer_not_found_message(kind: &str, name: &str) -> String {
    let (kind, resource) = if kind == "ClusterIssuer" {
        ("ClusterIssuer", "clusterissuers")
    } else {
        ("Issuer", "issuers")
    };
    format!("Referenced \"{kind}\" not found: {resource}.{GROUP} \"{name}\" not found")
}

/// Decides the next step for `obj`, in the order cert-manager's approver and
/// certificaterequests controllers check things.
pub fn plan(obj: &Value, issuers: &[String], policy: &Policy) -> Plan {
    let (name, kind, group) = issuer_ref(obj);
    // Neither cert-manager's approver nor its issuer controllers act on external issuers.
    if !(group.is_empty() || group == GROUP) || !matches!(kind, "" | "Issuer" | "ClusterIssuer") {
        return Plan::Nothing;
    }
    if !is_approved(obj) && !is_denied(obj) {
        let step = match policy(obj) {
            Approval::Approve => Step::Approve,
            Approval::Deny { reason, message } => Step::Deny { reason, message },
        };
        if step_allowed(obj, &step) {
            return Plan::Write(step);
        }
        return Plan::Nothing;
    }
    if is_denied(obj) {
        return if step_allowed(obj, &Step::MarkDenied) {
            Plan::Write(Step::MarkDenied)
        } else {
            Plan::Nothing
        };
    }
    if is_final(obj) {
        return Plan::Nothing;
    }
    if !issuers.iter().any(|i| i == name) {
        let message = issuer_not_found_message(kind, name);
        if ready_reason(obj) == Some(REASON_PENDING)
            && condition(obj, "Ready")
                .and_then(|c| c.get("message"))
                .and_then(Value::as_str)
                == Some(message.as_str())
        {
            return Plan::Nothing;
        }
        return Plan::Write(Step::Pending { message });
    }
    if obj
        .pointer("/status/certificate")
        .and_then(Value::as_str)
        .is_some_and(|c| !c.is_empty())
    {
        return Plan::Nothing;
    }
    Plan::Sign
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::signer::tests::cr;
    use crate::signer::{APPROVED_MESSAGE, DENIED_MESSAGE, apply_step, approve_all, set_condition};
    use serde_json::json;

    #[test]
    fn plan_follows_the_controllers_order() {
        let issuers = vec!["ca".to_string()];
        let approve = approve_all();
        let now = "2026-01-01T00:00:00Z";

        let mut obj = cr("ca");
        assert_eq!(plan(&obj, &issuers, &approve), Plan::Write(Step::Approve));
        apply_step(&mut obj, &Step::Approve, now);
        let a = condition(&obj, "Approved").unwrap();
        assert_eq!(
            (
                a["status"].as_str(),
                a["reason"].as_str(),
                a["message"].as_str()
            ),
            (
                Some("True"),
                Some("cert-manager.io"),
                Some(APPROVED_MESSAGE)
            )
        );
        assert_eq!(plan(&obj, &issuers, &approve), Plan::Sign);

        // Unknown issuer: Pending with cert-manager's not-found message, written once.
        let mut other = cr("nope");
        apply_step(&mut other, &Step::Approve, now);
        let step = match plan(&other, &issuers, &approve) {
            Plan::Write(step) => step,
            p => panic!("{p:?}"),
        };
        assert_eq!(
            step,
            Step::Pending {
                message:
                    "Referenced \"Issuer\" not found: issuers.cert-manager.io \"nope\" not found"
                        .into()
            }
        );
        apply_step(&mut other, &step, now);
        assert_eq!(plan(&other, &issuers, &approve), Plan::Nothing);
        assert!(!is_final(&other));

        // External issuers are left to their own controllers.
        let mut ext = cr("ca");
        ext["spec"]["issuerRef"]["group"] = json!("example.com");
        assert_eq!(plan(&ext, &issuers, &approve), Plan::Nothing);

        // Denial, then the issuer marks it Ready=False Denied with a failureTime; then final.
        let deny: Policy = Arc::new(|_: &Value| Approval::deny("policy.example", "no thanks"));
        let mut d = cr("ca");
        let step = match plan(&d, &issuers, &deny) {
            Plan::Write(step) => step,
            p => panic!("{p:?}"),
        };
        apply_step(&mut d, &step, now);
        assert_eq!(condition(&d, "Denied").unwrap()["reason"], "policy.example");
        assert_eq!(plan(&d, &issuers, &deny), Plan::Write(Step::MarkDenied));
        apply_step(&mut d, &Step::MarkDenied, now);
        assert_eq!(d["status"]["failureTime"], now);
        assert_eq!(condition(&d, "Ready").unwrap()["message"], DENIED_MESSAGE);
        assert!(is_final(&d));
        assert_eq!(plan(&d, &issuers, &deny), Plan::Nothing);
    }
    #[test]
    fn final_requests_are_left_alone() {
        let issuers = vec!["ca".to_string()];
        let approve = approve_all();
        let now = "2026-01-01T00:00:00Z";
        for (type_, status, reason) in [
            ("Ready", "True", "Issued"),
            ("Ready", "False", "Failed"),
            ("InvalidRequest", "True", "BadCSR"),
        ] {
            let mut obj = cr("ca");
            apply_step(&mut obj, &Step::Approve, now);
            set_condition(&mut obj, type_, status, reason, "x", now);
            assert!(is_final(&obj), "{type_} {reason}");
            assert_eq!(
                plan(&obj, &issuers, &approve),
                Plan::Nothing,
                "{type_} {reason}"
            );
            for step in [
                Step::Pending {
                    message: "m".into(),
                },
                Step::Fail {
                    message: "m".into(),
                },
            ] {
                assert!(!step_allowed(&obj, &step));
            }
        }
        // Failed before any approval: the approver does not touch it either.
        let mut failed = cr("ca");
        set_condition(&mut failed, "Ready", "False", "Failed", "x", now);
        assert_eq!(plan(&failed, &issuers, &approve), Plan::Nothing);
    }
}
