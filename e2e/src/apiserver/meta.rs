//! ObjectMeta rules kube-apiserver enforces for every kind (apimachinery `validation`): object
//! names, label keys and values, annotation keys and total size.

use serde_json::Value;

use super::FieldCause;

const DNS1123_SUBDOMAIN_MAX: usize = 253;
const QUALIFIED_NAME_MAX: usize = 63;
const LABEL_VALUE_MAX: usize = 63;
const ANNOTATIONS_MAX_BYTES: usize = 256 * 1024;

fn alnum(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

/// RFC 1123 subdomain: lowercase alphanumerics, '-' and '.', starting and ending alphanumeric.
pub fn validate_subdomain(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if s.len() > DNS1123_SUBDOMAIN_MAX {
        return Err(format!(
            "must be no more than {DNS1123_SUBDOMAIN_MAX} characters"
        ));
    }
    let ok = s.split('.').all(|label| {
        !label.is_empty()
            && label.starts_with(alnum)
            && label.ends_with(alnum)
            && label.chars().all(|c| alnum(c) || c == '-')
    });
    if ok {
        Ok(())
    } else {
        Err("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')".into())
    }
}

/// `[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?`, the name part of label keys and the label value.
fn qualified_part(s: &str) -> bool {
    let edge = |c: char| c.is_ascii_alphanumeric();
    s.starts_with(edge)
        && s.ends_with(edge)
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Label and annotation keys: optional `prefix/` (a DNS subdomain) and a name of at most 63.
pub fn validate_qualified_name(k: &str) -> Result<(), String> {
    let (prefix, name) = match k.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    if let Some(p) = prefix {
        validate_subdomain(p).map_err(|e| format!("prefix part {e}"))?;
    }
    if name.is_empty() || name.len() > QUALIFIED_NAME_MAX || !qualified_part(name) {
        return Err(format!(
            "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character, at most {QUALIFIED_NAME_MAX} characters"
        ));
    }
    Ok(())
}

pub fn validate_label_value(v: &str) -> Result<(), String> {
    if v.is_empty() {
        return Ok(());
    }
    if v.len() > LABEL_VALUE_MAX {
        return Err(format!("must be no more than {LABEL_VALUE_MAX} characters"));
    }
    if !qualified_part(v) {
        return Err("a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character".into());
    }
    Ok(())
}

/// Validates `metadata` of an object about to be stored; returns every violation.
pub fn validate(meta: &Value) -> Vec<FieldCause> {
    let mut causes = Vec::new();
    let name = meta.get("name").and_then(Value::as_str).unwrap_or("");
    if let Err(e) = validate_subdomain(name) {
        causes.push(FieldCause::invalid("metadata.name", name, &e));
    }
    if let Some(labels) = meta.get("labels") {
        match labels.as_object() {
            Some(map) => {
                for (k, v) in map {
                    if let Err(e) = validate_qualified_name(k) {
                        causes.push(FieldCause::invalid("metadata.labels", k, &e));
                    }
                    match v.as_str() {
                        Some(s) => {
                            if let Err(e) = validate_label_value(s) {
                                causes.push(FieldCause::invalid(
                                    &format!("metadata.labels[{k}]"),
                                    s,
                                    &e,
                                ));
                            }
                        }
                        None => causes.push(FieldCause::invalid(
                            &format!("metadata.labels[{k}]"),
                            &v.to_string(),
                            "must be a string",
                        )),
                    }
                }
            }
            None if labels.is_null() => {}
            None => causes.push(FieldCause::invalid(
                "metadata.labels",
                &labels.to_string(),
                "must be a map of strings",
            )),
        }
    }
    if let Some(ann) = meta.get("annotations").and_then(Value::as_object) {
        let mut total = 0;
        for (k, v) in ann {
            total += k.len() + v.as_str().map_or(0, str::len);
            if let Err(e) = validate_qualified_name(&k.to_ascii_lowercase()) {
                causes.push(FieldCause::invalid("metadata.annotations", k, &e));
            }
            if !v.is_string() {
                causes.push(FieldCause::invalid(
                    &format!("metadata.annotations[{k}]"),
                    &v.to_string(),
                    "must be a string",
                ));
            }
        }
        if total > ANNOTATIONS_MAX_BYTES {
            causes.push(FieldCause::too_long(
                "metadata.annotations",
                &format!("may not be more than {ANNOTATIONS_MAX_BYTES} bytes"),
            ));
        }
    }
    causes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_labels() {
        assert!(validate_subdomain("a.b-c").is_ok());
        assert!(validate_subdomain("A").is_err());
        assert!(validate_subdomain("-a").is_err());
        assert!(validate_subdomain(&"a".repeat(254)).is_err());
        assert!(validate_qualified_name("csi.certvol.io/pod-uid").is_ok());
        assert!(validate_qualified_name("bad key").is_err());
        assert!(validate_label_value(&"a".repeat(64)).is_err());
        assert!(validate_label_value("").is_ok());
    }
}
