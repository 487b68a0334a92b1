//! Admission for storage.k8s.io/v1 CSIDrivers (cluster-scoped): the apiserver's defaulting
//! (pkg/apis/storage/v1/defaults.go) and validation (pkg/apis/storage/validation,
//! `ValidateCSIDriver`): the driver name rule, the enumerated `volumeLifecycleModes` and
//! `fsGroupPolicy`, and `tokenRequests` audiences and lifetimes. A field of the wrong JSON type
//! fails decoding (400) before validation, as on a real apiserver.

use serde_json::{Value, json};

use super::{ApiError, FieldCause};

/// Field selector paths the apiserver supports for CSIDrivers (cluster-scoped: name only).
pub const CSIDRIVER_SELECTABLE: &[&str] = &["metadata.name"];

const MODES: &[&str] = &["Persistent", "Ephemeral"];
const FS_GROUP_POLICIES: &[&str] = &["ReadWriteOnceWithFSType", "File", "None"];
const BOOLS: &[&str] = &[
    "attachRequired",
    "podInfoOnMount",
    "storageCapacity",
    "requiresRepublish",
    "seLinuxMount",
];
/// `tokenRequests[].expirationSeconds` bounds (10 minutes to 2^32 seconds).
const MIN_EXPIRATION: i64 = 600;
const MAX_EXPIRATION: i64 = 1 << 32;

/// `ValidateCSIDriverName`: at most 63 characters, alphanumerics, '-', '_' and '.', starting and
/// ending with an alphanumeric.
fn check_name(name: &str) -> Result<(), String> {
    if name.len() > 63 {
        return Err("must be no more than 63 characters".into());
    }
    let ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err("a CSI driver name must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')".into())
    }
}

fn decode_error(field: &str, want: &str, got: &Value) -> ApiError {
    ApiError::BadRequest(format!(
        "CSIDriver in version \"v1\" cannot be handled as a CSIDriver: json: cannot unmarshal {} into Go struct field CSIDriverSpec.spec.{field} of type {want}",
        json_type(got)
    ))
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Defaults and validates a CSIDriver on create or update; the field violations (422) or a
/// decode error (400).
pub fn admit_csidriver(obj: &mut Value) -> Result<Vec<FieldCause>, ApiError> {
    let mut causes = Vec::new();
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    if let Err(e) = check_name(&name) {
        causes.push(FieldCause::invalid("metadata.name", &name, &e));
    }
    if obj.get("spec").is_none_or(Value::is_null) {
        obj["spec"] = json!({});
    }
    let spec = &mut obj["spec"];
    if !spec.is_object() {
        return Err(decode_error("spec", "v1.CSIDriverSpec", spec));
    }
    for field in BOOLS {
        match spec.get(*field) {
            None | Some(Value::Null) | Some(Value::Bool(_)) => {}
            Some(other) => return Err(decode_error(field, "bool", other)),
        }
    }
    // SetDefaults_CSIDriver.
    let defaults = [
        ("attachRequired", json!(true)),
        ("podInfoOnMount", json!(false)),
        ("storageCapacity", json!(false)),
        ("requiresRepublish", json!(false)),
        ("fsGroupPolicy", json!("ReadWriteOnceWithFSType")),
        ("volumeLifecycleModes", json!(["Persistent"])),
    ];
    for (field, value) in defaults {
        if spec.get(field).is_none_or(Value::is_null) {
            spec[field] = value;
        }
    }
    match &spec["fsGroupPolicy"] {
        Value::String(p) if FS_GROUP_POLICIES.contains(&p.as_str()) => {}
        Value::String(p) => causes.push(FieldCause::not_supported(
            "spec.fsGroupPolicy",
            p,
            "supported values: \"File\", \"None\", \"ReadWriteOnceWithFSType\"",
        )),
        other => return Err(decode_error("fsGroupPolicy", "v1.FSGroupPolicy", other)),
    }
    let Some(modes) = spec["volumeLifecycleModes"].as_array() else {
        return Err(decode_error(
            "volumeLifecycleModes",
            "[]v1.VolumeLifecycleMode",
            &spec["volumeLifecycleModes"],
        ));
    };
    for (i, mode) in modes.iter().enumerate() {
        let field = format!("spec.volumeLifecycleModes[{i}]");
        match mode.as_str() {
            Some(m) if MODES.contains(&m) => {}
            Some(m) => causes.push(FieldCause::not_supported(
                &field,
                m,
                "supported values: \"Ephemeral\", \"Persistent\"",
            )),
            None => {
                return Err(decode_error(
                    "volumeLifecycleModes",
                    "v1.VolumeLifecycleMode",
                    mode,
                ));
            }
        }
    }
    match spec.get("tokenRequests") {
        None | Some(Value::Null) => {}
        Some(Value::Array(requests)) => {
            let mut audiences: Vec<&str> = Vec::new();
            for (i, r) in requests.iter().enumerate() {
                let audience = match r.get("audience") {
                    Some(Value::String(a)) => a.as_str(),
                    None | Some(Value::Null) => "",
                    Some(other) => {
                        return Err(decode_error("tokenRequests.audience", "string", other));
                    }
                };
                if audiences.contains(&audience) {
                    causes.push(FieldCause::duplicate(
                        &format!("spec.tokenRequests[{i}].audience"),
                        &format!("{audience:?}"),
                    ));
                }
                audiences.push(audience);
                match r.get("expirationSeconds") {
                    None | Some(Value::Null) => {}
                    Some(Value::Number(n)) => {
                        let secs = n.as_i64().unwrap_or(i64::MAX);
                        let field = format!("spec.tokenRequests[{i}].expirationSeconds");
                        if secs < MIN_EXPIRATION {
                            causes.push(FieldCause::invalid(
                                &field,
                                &secs.to_string(),
                                "may not specify a duration less than 10 minutes",
                            ));
                        } else if secs > MAX_EXPIRATION {
                            causes.push(FieldCause::invalid(
                                &field,
                                &secs.to_string(),
                                "may not specify a duration larger than 2^32 seconds",
                            ));
                        }
                    }
                    Some(other) => {
                        return Err(decode_error(
                            "tokenRequests.expirationSeconds",
                            "int64",
                            other,
                        ));
                    }
                }
            }
        }
        Some(other) => {
            return Err(decode_error("tokenRequests", "[]v1.TokenRequest", other));
        }
    }
    Ok(causes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fill_what_the_object_leaves_out() {
        let mut obj = json!({"metadata": {"name": "csi.certvol.io"}});
        assert!(admit_csidriver(&mut obj).unwrap().is_empty());
        assert_eq!(
            obj["spec"],
            json!({"attachRequired": true, "podInfoOnMount": false, "storageCapacity": false,
                   "requiresRepublish": false, "fsGroupPolicy": "ReadWriteOnceWithFSType",
                   "volumeLifecycleModes": ["Persistent"]})
        );
        let mut set = json!({"metadata": {"name": "csi.certvol.io"},
                             "spec": {"podInfoOnMount": true, "volumeLifecycleModes": ["Ephemeral"]}});
        assert!(admit_csidriver(&mut set).unwrap().is_empty());
        assert_eq!(set["spec"]["podInfoOnMount"], json!(true));
        assert_eq!(set["spec"]["volumeLifecycleModes"], json!(["Ephemeral"]));
    }

    #[test]
    fn shape_is_validated() {
        let causes = |spec: Value, name: &str| {
            let mut obj = json!({"metadata": {"name": name}, "spec": spec});
            admit_csidriver(&mut obj).map(|c| c.into_iter().map(|c| c.field).collect::<Vec<_>>())
        };
        assert_eq!(
            causes(
                json!({"volumeLifecycleModes": ["Ephemeral", "Inline"]}),
                "a.b"
            )
            .unwrap(),
            ["spec.volumeLifecycleModes[1]"]
        );
        assert_eq!(
            causes(json!({"fsGroupPolicy": "Any"}), "a.b").unwrap(),
            ["spec.fsGroupPolicy"]
        );
        assert_eq!(
            causes(
                json!({"tokenRequests": [{"audience": ""}, {"audience": "", "expirationSeconds": 60}]}),
                "a.b"
            )
            .unwrap(),
            ["spec.tokenRequests[1].audience", "spec.tokenRequests[1].expirationSeconds"]
        );
        assert_eq!(causes(json!({}), "-bad").unwrap(), ["metadata.name"]);
        assert!(matches!(
            causes(json!({"podInfoOnMount": "true"}), "a.b"),
            Err(ApiError::BadRequest(m)) if m.contains("spec.podInfoOnMount of type bool")
        ));
    }
}
