//! The raw volume context sorted into certvol's attributes (by name without prefix), the pod's
//! identity and pass-through annotations, and the error constructors every step shares.

use std::collections::{BTreeMap, HashMap};

use super::{
    AttrError, CERT_MANAGER_KEY_COUNT, CERT_MANAGER_PREFIX, CERTVOL_PREFIX, KEYS,
    MAX_ANNOTATION_BYTES, MAX_ANNOTATIONS, POD_INFO_PREFIX, POD_NAME_KEY, POD_NAMESPACE_KEY,
    POD_UID_KEY, SERVICE_ACCOUNT_KEY, UNSUPPORTED_KEYS,
};
use crate::spec::request::PodInfo;

/// One set attribute: the key as written and its (non-empty) value.
#[derive(Clone, Copy, Debug)]
pub(super) struct Attr<'a> {
    pub(super) key: &'a str,
    pub(super) value: &'a str,
}

/// The context sorted into our attributes (by name without prefix), pod info and annotations.
pub(super) struct Attrs<'a> {
    ours: BTreeMap<&'static str, Attr<'a>>,
    pub(super) pod: PodInfo,
    pub(super) annotations: BTreeMap<String, String>,
}

/// Request-object annotations under this prefix are certvol's own.
const RESERVED_ANNOTATION_PREFIX: &str = "certvol.io/";

impl<'a> Attrs<'a> {
    pub(super) fn collect(ctx: &'a HashMap<String, String>) -> Result<Self, AttrError> {
        // Sorted, so that with several bad keys the same one is reported every time.
        let sorted: BTreeMap<&str, &str> =
            ctx.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let mut attrs = Attrs {
            ours: BTreeMap::new(),
            pod: PodInfo::default(),
            annotations: BTreeMap::new(),
        };
        for (key, value) in sorted {
            let attr = Attr { key, value };
            if let Some(name) = key.strip_prefix(CERTVOL_PREFIX) {
                let name = known_name(attr, name, CERTVOL_PREFIX, &KEYS)?;
                if let Some(name) = name.filter(|_| !value.is_empty()) {
                    attrs.ours.insert(name, attr);
                }
            } else if let Some(name) = key.strip_prefix(CERT_MANAGER_PREFIX) {
                if KEYS[CERT_MANAGER_KEY_COUNT..].contains(&name) {
                    return Err(AttrError::WrongPrefix {
                        attribute: key.to_owned(),
                        expected: format!("{CERTVOL_PREFIX}{name}"),
                    });
                }
                let name = known_name(
                    attr,
                    name,
                    CERT_MANAGER_PREFIX,
                    &KEYS[..CERT_MANAGER_KEY_COUNT],
                )?;
                if let Some(name) = name.filter(|_| !value.is_empty()) {
                    // Ours wins whichever order the keys come in.
                    attrs.ours.entry(name).or_insert(attr);
                }
            } else if key.starts_with(POD_INFO_PREFIX) {
                let field = match key {
                    POD_NAME_KEY => &mut attrs.pod.name,
                    POD_NAMESPACE_KEY => &mut attrs.pod.namespace,
                    POD_UID_KEY => &mut attrs.pod.uid,
                    SERVICE_ACCOUNT_KEY => &mut attrs.pod.service_account,
                    _ => continue,
                };
                value.clone_into(field);
            } else if key.starts_with(RESERVED_ANNOTATION_PREFIX) {
                // certvol's own labels and annotations on request objects (the node name the
                // chart's admission policy checks) must not be settable by a pod.
                return Err(invalid(
                    attr,
                    "would become an annotation under certvol.io/, which certvol reserves for its own",
                    "annotations under any other prefix (e.g. team.example.com/owner)",
                ));
            } else if key.contains('/') {
                attrs.annotations.insert(key.to_owned(), value.to_owned());
                let bytes: usize = attrs
                    .annotations
                    .iter()
                    .map(|(k, v)| k.len() + v.len())
                    .sum();
                if attrs.annotations.len() > MAX_ANNOTATIONS || bytes > MAX_ANNOTATION_BYTES {
                    return Err(AttrError::TooLarge {
                        attribute: key.to_owned(),
                        what: "the pass-through annotations up to this one",
                        got: format!("{} annotations, {bytes} bytes", attrs.annotations.len()),
                        max: format!("{MAX_ANNOTATIONS} annotations, {MAX_ANNOTATION_BYTES} bytes"),
                    });
                }
            }
        }
        Ok(attrs)
    }

    pub(super) fn get(&self, name: &str) -> Option<Attr<'a>> {
        self.ours.get(name).copied()
    }

    pub(super) fn value_or(&self, name: &str, default: &str) -> String {
        self.get(name).map_or(default, |a| a.value).to_owned()
    }
}

/// The key under which `name` (without prefix) is set to a non-empty value in `ctx`, certvol's
/// spelling winning as in [`parse`]; `None` when it is not set.
pub fn set_key<'a>(ctx: &'a HashMap<String, String>, name: &str) -> Option<&'a str> {
    [CERTVOL_PREFIX, CERT_MANAGER_PREFIX]
        .iter()
        .find_map(|prefix| {
            ctx.get_key_value(&format!("{prefix}{name}"))
                .filter(|(_, v)| !v.is_empty())
                .map(|(k, _)| k.as_str())
        })
}

/// Maps an attribute name to its `'static` spelling, or explains why it is not accepted.
/// `Ok(None)` means "accepted, carries nothing" (an explicit `pkcs12-enable: "false"`).
fn known_name(
    attr: Attr<'_>,
    name: &str,
    prefix: &'static str,
    accepted: &[&'static str],
) -> Result<Option<&'static str>, AttrError> {
    if let Some(known) = accepted.iter().find(|k| **k == name) {
        return Ok(Some(known));
    }
    if let Some((_, hint)) = UNSUPPORTED_KEYS.iter().find(|(k, _)| *k == name) {
        // Turning a feature off that we lack anyway asks for nothing we cannot do.
        if name == "keystore-pkcs12-enable" && attr.value == "false" {
            return Ok(None);
        }
        return Err(AttrError::NotSupported {
            attribute: attr.key.to_owned(),
            hint,
        });
    }
    let suggestion = accepted
        .iter()
        .map(|k| (edit_distance(name, k), *k))
        .filter(|(d, _)| *d <= 2)
        .min()
        .map(|(_, k)| format!(" (did you mean {:?}?)", format!("{prefix}{k}")))
        .unwrap_or_default();
    Err(AttrError::UnknownKey {
        attribute: attr.key.to_owned(),
        prefix,
        suggestion,
        accepted: accepted.join(", "),
    })
}

/// Levenshtein distance, for "did you mean" on short attribute names.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let replace = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = replace.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

pub(super) fn invalid(
    attr: Attr<'_>,
    problem: impl Into<String>,
    accepted: impl Into<String>,
) -> AttrError {
    AttrError::Invalid {
        attribute: attr.key.to_owned(),
        value: attr.value.to_owned(),
        problem: problem.into(),
        accepted: accepted.into(),
    }
}

pub(super) fn invalid_entry(
    attr: Attr<'_>,
    entry: &str,
    problem: &str,
    accepted: &str,
) -> AttrError {
    AttrError::InvalidEntry {
        attribute: attr.key.to_owned(),
        entry: entry.to_owned(),
        problem: problem.to_owned(),
        accepted: accepted.to_owned(),
    }
}
