//! Label and field selectors as kube-apiserver parses them (`k8s.io/apimachinery/pkg/labels` and
//! `pkg/fields`). Only the grammar clients really send is accepted; anything else is a 400, as on a
//! real server, so a client bug surfaces here instead of silently matching everything.

use serde_json::Value;

/// One requirement of a label selector.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Requirement {
    Exists(String),
    NotExists(String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
}

/// A parsed label selector; the empty selector matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSelector {
    reqs: Vec<Requirement>,
}

/// Splits on commas that are not inside `( … )`.
fn split_top_level(s: &str) -> Result<Vec<&str>, String> {
    let mut parts = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth < 0 {
                    return Err(format!("unbalanced ')' in {s:?}"));
                }
            }
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(format!("unbalanced '(' in {s:?}"));
    }
    parts.push(&s[start..]);
    Ok(parts)
}

fn valid_key(k: &str) -> bool {
    crate::apiserver::meta::validate_qualified_name(k).is_ok()
}

fn valid_value(v: &str) -> bool {
    crate::apiserver::meta::validate_label_value(v).is_ok()
}

fn parse_set(rest: &str, whole: &str) -> Result<Vec<String>, String> {
    let rest = rest.trim();
    let inner = rest
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| format!("unable to parse requirement: {whole:?}: expected ( values )"))?;
    let values: Vec<String> = inner.split(',').map(|v| v.trim().to_string()).collect();
    if let Some(bad) = values.iter().find(|v| !valid_value(v)) {
        return Err(format!("invalid label value: {bad:?}"));
    }
    Ok(values)
}

impl LabelSelector {
    pub fn parse(s: &str) -> Result<LabelSelector, String> {
        let mut reqs = Vec::new();
        if s.trim().is_empty() {
            return Ok(LabelSelector { reqs });
        }
        for part in split_top_level(s)? {
            let p = part.trim();
            if p.is_empty() {
                return Err(format!("unable to parse requirement: empty term in {s:?}"));
            }
            let req = if let Some(key) = p.strip_prefix('!') {
                Requirement::NotExists(key.trim().to_string())
            } else if let Some((k, v)) = p.split_once("!=") {
                Requirement::NotIn(k.trim().to_string(), vec![v.trim().to_string()])
            } else if let Some((k, v)) = p.split_once("==").or_else(|| p.split_once('=')) {
                Requirement::In(k.trim().to_string(), vec![v.trim().to_string()])
            } else if let Some((k, rest)) = split_word(p, "notin") {
                Requirement::NotIn(k, parse_set(rest, p)?)
            } else if let Some((k, rest)) = split_word(p, "in") {
                Requirement::In(k, parse_set(rest, p)?)
            } else {
                Requirement::Exists(p.to_string())
            };
            let (key, values) = match &req {
                Requirement::Exists(k) | Requirement::NotExists(k) => (k, None),
                Requirement::In(k, v) | Requirement::NotIn(k, v) => (k, Some(v)),
            };
            if !valid_key(key) {
                return Err(format!(
                    "unable to parse requirement: invalid label key {key:?}"
                ));
            }
            if let Some(bad) = values.into_iter().flatten().find(|v| !valid_value(v)) {
                return Err(format!(
                    "unable to parse requirement: invalid label value {bad:?}"
                ));
            }
            reqs.push(req);
        }
        Ok(LabelSelector { reqs })
    }

    pub fn matches(&self, obj: &Value) -> bool {
        let labels = obj.pointer("/metadata/labels").and_then(Value::as_object);
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.reqs.iter().all(|r| match r {
            Requirement::Exists(k) => get(k).is_some(),
            Requirement::NotExists(k) => get(k).is_none(),
            Requirement::In(k, vs) => get(k).is_some_and(|v| vs.iter().any(|x| x == v)),
            // As in apimachinery: `a!=b` and `a notin (b)` also match objects without label `a`.
            Requirement::NotIn(k, vs) => get(k).is_none_or(|v| !vs.iter().any(|x| x == v)),
        })
    }
}

/// `key in (…)` / `key notin (…)`: the operator must be a separate word.
fn split_word<'a>(p: &'a str, op: &str) -> Option<(String, &'a str)> {
    let mut it = p.splitn(2, char::is_whitespace);
    let key = it.next()?.trim();
    let rest = it.next()?.trim_start();
    let after = rest.strip_prefix(op)?;
    if after.trim_start().starts_with('(') {
        Some((key.to_string(), after))
    } else {
        None
    }
}

/// A field selector: `path=value`, `path==value`, `path!=value`, comma separated.
#[derive(Clone, Debug, Default)]
pub struct FieldSelector {
    reqs: Vec<(String, bool, String)>,
}

impl FieldSelector {
    /// `allowed` restricts the paths, as CRDs do (`metadata.name`, `metadata.namespace` and the
    /// CRD's `selectableFields`); `None` allows any path (built-in kinds here).
    pub fn parse(s: &str, allowed: Option<&[&str]>) -> Result<FieldSelector, String> {
        let mut reqs = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (path, eq, value) = if let Some((k, v)) = part.split_once("!=") {
                (k, false, v)
            } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                (k, true, v)
            } else {
                return Err(format!("invalid selector: {part:?}; can't understand"));
            };
            let path = path.trim();
            if let Some(allowed) = allowed
                && !allowed.contains(&path)
            {
                return Err(format!("field label not supported: {path}"));
            }
            reqs.push((path.to_string(), eq, value.trim().to_string()));
        }
        Ok(FieldSelector { reqs })
    }

    pub fn matches(&self, obj: &Value) -> bool {
        self.reqs.iter().all(|(path, eq, want)| {
            let mut cur = Some(obj);
            for seg in path.split('.') {
                cur = cur.and_then(|c| c.get(seg));
            }
            let have = match cur {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Null) | None => String::new(),
                Some(v) => v.to_string(),
            };
            (have == *want) == *eq
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn label_selector_forms() {
        let obj = json!({"metadata": {"labels": {"app": "web", "tier": "fe"}}});
        let m = |s: &str| LabelSelector::parse(s).unwrap().matches(&obj);
        assert!(m(""));
        assert!(m("app=web"));
        assert!(m("app==web,tier"));
        assert!(!m("app!=web"));
        assert!(m("app in (db, web)"));
        assert!(!m("app notin (web)"));
        assert!(m("!missing"));
        assert!(!m("missing"));
        assert!(m("missing!=x"));
        assert!(m("app in (web),tier notin (be)"));
        assert!(LabelSelector::parse("app in (web").is_err());
        assert!(LabelSelector::parse("bad key=x").is_err());
    }

    #[test]
    fn field_selector() {
        let obj = json!({"metadata": {"name": "a"}, "spec": {"issuerRef": {"name": "ca"}}});
        let f = FieldSelector::parse("spec.issuerRef.name=ca,metadata.name!=b", None).unwrap();
        assert!(f.matches(&obj));
        assert!(FieldSelector::parse("spec.x=1", Some(&["metadata.name"])).is_err());
    }
}
