//! What a volume's trust bundle is built from ([`TrustSpec`], parsed from the `trust-*`
//! attributes by `attrs`) and the namespace policy that turns it into concrete objects
//! (`resolve`). Pure: no I/O.
//!
//! Sources are assembled in this fixed order, each in the order the attribute lists it: the
//! issuing CA, `trust-configmaps`, `trust-secrets`, `trust-cluster-bundles`, the ClusterTrustBundles
//! selected by `trust-signer-name` (by object name), the public roots.
//!
//! Namespace policy: ConfigMaps and Secrets are read from the pod's namespace. A
//! `NAMESPACE/NAME/KEY` entry may name one other namespace only: the node's shared trust
//! namespace (`--trust-namespace`), which is off unless the cluster operator sets it. This keeps
//! a pod from reading another tenant's objects through the driver's permissions.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Default file name of the bundle.
pub(crate) const DEFAULT_BUNDLE_FILE: &str = "ca-bundle.crt";

/// `NAME/KEY` or `NAMESPACE/NAME/KEY` of a ConfigMap or Secret, as written.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRef {
    /// Set only for the three-part form.
    pub namespace: Option<String>,
    pub name: String,
    pub key: String,
}

impl KeyRef {
    /// Parses one list entry; the error says what is wrong with it.
    pub fn parse(entry: &str) -> Result<KeyRef, &'static str> {
        let parts: Vec<&str> = entry.split('/').collect();
        let (namespace, name, key) = match parts.as_slice() {
            [name, key] => (None, *name, *key),
            [ns, name, key] => (Some(*ns), *name, *key),
            _ => return Err("is not NAME/KEY or NAMESPACE/NAME/KEY"),
        };
        if let Some(ns) = namespace
            && !is_dns_label(ns)
        {
            return Err(
                "has a namespace that is not a DNS label (lowercase letters, digits and '-', at most 63)",
            );
        }
        if !is_dns_subdomain(name) {
            return Err(
                "has an object name that is not a DNS subdomain (lowercase letters, digits, '-' and '.', at most 253)",
            );
        }
        if !is_data_key(key) {
            return Err(
                "has a key that is not a valid data key (letters, digits, '-', '_' and '.', not starting with \"..\", at most 253)",
            );
        }
        Ok(KeyRef {
            namespace: namespace.map(str::to_owned),
            name: name.to_owned(),
            key: key.to_owned(),
        })
    }
}

/// ClusterTrustBundles selected by signer name and labels.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignerSelector {
    pub signer_name: String,
    /// Equality requirements; empty selects every bundle of the signer.
    pub labels: BTreeMap<String, String>,
}

impl SignerSelector {
    /// The label selector as the API takes it (`k=v,k2=v2`), empty when there are no labels.
    pub fn label_selector(&self) -> String {
        self.labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Everything a volume's trust bundle comes from. `*_attribute` fields hold the attribute keys
/// as written, so errors found later (missing objects, namespace policy) can name them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustSpec {
    pub issuer_ca: bool,
    pub config_maps: Vec<KeyRef>,
    pub config_maps_attribute: String,
    pub secrets: Vec<KeyRef>,
    pub secrets_attribute: String,
    pub cluster_bundles: Vec<String>,
    pub cluster_bundles_attribute: String,
    pub signer: Option<SignerSelector>,
    pub signer_attribute: String,
    pub public_roots: bool,
}

/// One object a volume's bundle reads, after the namespace policy.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ObjectRef {
    ConfigMap {
        namespace: String,
        name: String,
    },
    Secret {
        namespace: String,
        name: String,
    },
    ClusterTrustBundle {
        name: String,
    },
    /// Every ClusterTrustBundle with this signer name and these labels (`k=v,...`).
    Signer {
        signer_name: String,
        labels: String,
    },
}

impl std::fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ObjectRef::ConfigMap { namespace, name } => write!(f, "ConfigMap {namespace}/{name}"),
            ObjectRef::Secret { namespace, name } => write!(f, "Secret {namespace}/{name}"),
            ObjectRef::ClusterTrustBundle { name } => write!(f, "ClusterTrustBundle {name}"),
            ObjectRef::Signer {
                signer_name,
                labels,
            } if labels.is_empty() => {
                write!(f, "ClusterTrustBundles with signerName {signer_name}")
            }
            ObjectRef::Signer {
                signer_name,
                labels,
            } => write!(
                f,
                "ClusterTrustBundles with signerName {signer_name} and labels {labels}"
            ),
        }
    }
}

/// One Kubernetes source of a bundle: the object, the key within it (ConfigMaps and Secrets)
/// and the attribute that asked for it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ResolvedSource {
    pub object: ObjectRef,
    pub key: Option<String>,
    pub attribute: String,
}

impl ResolvedSource {
    /// How bundles and reports name this source, e.g. `ConfigMap shop/ca key ca.crt`.
    pub(crate) fn label(&self) -> String {
        match &self.key {
            Some(k) => format!("{} key {k}", self.object),
            None => self.object.to_string(),
        }
    }
}

/// A source the namespace policy does not allow.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    #[error(
        "volume attribute {attribute:?}: entry {entry:?} names namespace {namespace:?}; accepted: NAME/KEY in the pod's namespace{allowed}"
    )]
    Namespace {
        attribute: String,
        entry: String,
        namespace: String,
        /// `", or NAMESPACE/NAME/KEY with NAMESPACE \"x\" (the node's --trust-namespace)"` or
        /// a note that the node allows no shared namespace.
        allowed: String,
    },
}

impl PolicyError {
    pub fn attribute(&self) -> &str {
        match self {
            PolicyError::Namespace { attribute, .. } => attribute,
        }
    }
}

/// Applies the namespace policy: the Kubernetes objects `spec` reads, in bundle order (the
/// issuing CA and public roots are not objects and are not listed).
pub(crate) fn resolve(
    spec: &TrustSpec,
    pod_namespace: &str,
    trust_namespace: Option<&str>,
) -> Result<Vec<ResolvedSource>, PolicyError> {
    let mut out = Vec::new();
    let place = |r: &KeyRef, attribute: &str| -> Result<String, PolicyError> {
        match r.namespace.as_deref() {
            None => Ok(pod_namespace.to_owned()),
            Some(ns) if ns == pod_namespace || Some(ns) == trust_namespace => Ok(ns.to_owned()),
            Some(ns) => Err(PolicyError::Namespace {
                attribute: attribute.to_owned(),
                entry: format!("{ns}/{}/{}", r.name, r.key),
                namespace: ns.to_owned(),
                allowed: match trust_namespace {
                    Some(t) => format!(
                        ", or NAMESPACE/NAME/KEY with NAMESPACE {t:?} (the node's --trust-namespace)"
                    ),
                    None => {
                        " (this node sets no --trust-namespace, so no other namespace may be named)"
                            .into()
                    }
                },
            }),
        }
    };
    for r in &spec.config_maps {
        out.push(ResolvedSource {
            object: ObjectRef::ConfigMap {
                namespace: place(r, &spec.config_maps_attribute)?,
                name: r.name.clone(),
            },
            key: Some(r.key.clone()),
            attribute: spec.config_maps_attribute.clone(),
        });
    }
    for r in &spec.secrets {
        out.push(ResolvedSource {
            object: ObjectRef::Secret {
                namespace: place(r, &spec.secrets_attribute)?,
                name: r.name.clone(),
            },
            key: Some(r.key.clone()),
            attribute: spec.secrets_attribute.clone(),
        });
    }
    for name in &spec.cluster_bundles {
        out.push(ResolvedSource {
            object: ObjectRef::ClusterTrustBundle { name: name.clone() },
            key: None,
            attribute: spec.cluster_bundles_attribute.clone(),
        });
    }
    if let Some(sel) = &spec.signer {
        out.push(ResolvedSource {
            object: ObjectRef::Signer {
                signer_name: sel.signer_name.clone(),
                labels: sel.label_selector(),
            },
            key: None,
            attribute: spec.signer_attribute.clone(),
        });
    }
    Ok(out)
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && s.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// RFC 1123 subdomain, the rule for ConfigMap and Secret names.
pub(crate) fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// ConfigMap/Secret data keys (`IsConfigMapKey`).
pub(crate) fn is_data_key(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && !s.starts_with("..")
        && s != "."
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// ClusterTrustBundle names: a DNS subdomain, where signer bundles add `domain:path:` prefixes.
pub(crate) fn is_cluster_bundle_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split(':')
            .all(|part| part.is_empty() || is_dns_subdomain(part))
        && !s.starts_with(':')
        && !s.ends_with(':')
}

/// `<fully qualified domain>/<path>`, as the certificates API requires of signer names.
pub(crate) fn check_signer_name(s: &str) -> Result<(), &'static str> {
    let Some((domain, path)) = s.split_once('/') else {
        return Err("is not of the form DOMAIN/PATH");
    };
    if !is_dns_subdomain(domain) || !domain.contains('.') {
        return Err("has a domain part that is not a fully qualified DNS name");
    }
    let edge = |c: char| c.is_ascii_alphanumeric();
    let ok = !path.is_empty()
        && path.len() <= 253
        && path.starts_with(edge)
        && path.ends_with(edge)
        && path
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !ok {
        return Err("has a path part that is not letters, digits, '-', '_' and '.'");
    }
    Ok(())
}

/// Label key rule (optional DNS-subdomain prefix, name of at most 63).
pub(crate) fn is_label_key(k: &str) -> bool {
    let (prefix, name) = match k.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    prefix.is_none_or(is_dns_subdomain) && is_label_value(name) && !name.is_empty()
}

/// Label value rule (empty, or at most 63 of letters, digits, '-', '_', '.', alphanumeric ends).
pub(crate) fn is_label_value(v: &str) -> bool {
    v.is_empty()
        || (v.len() <= 63
            && v.starts_with(|c: char| c.is_ascii_alphanumeric())
            && v.ends_with(|c: char| c.is_ascii_alphanumeric())
            && v.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> TrustSpec {
        TrustSpec {
            issuer_ca: true,
            config_maps: vec![
                KeyRef::parse("ca/ca.crt").unwrap(),
                KeyRef::parse("certvol/shared/roots.pem").unwrap(),
            ],
            config_maps_attribute: "csi.certvol.io/trust-configmaps".into(),
            secrets: vec![KeyRef::parse("shop/s/ca.crt").unwrap()],
            secrets_attribute: "csi.certvol.io/trust-secrets".into(),
            cluster_bundles: vec!["example.com:foo:v1".into()],
            cluster_bundles_attribute: "csi.certvol.io/trust-cluster-bundles".into(),
            signer: Some(SignerSelector {
                signer_name: "example.com/foo".into(),
                labels: BTreeMap::from([("a".into(), "1".into()), ("b".into(), "2".into())]),
            }),
            signer_attribute: "csi.certvol.io/trust-signer-name".into(),
            public_roots: false,
        }
    }

    #[test]
    fn key_refs() {
        type Row<'a> = (
            &'a str,
            Result<(Option<&'a str>, &'a str, &'a str), &'a str>,
        );
        let rows: [Row; 7] = [
            ("ca/ca.crt", Ok((None, "ca", "ca.crt"))),
            ("ns/ca/ca.crt", Ok((Some("ns"), "ca", "ca.crt"))),
            ("ca", Err("is not NAME/KEY")),
            ("a/b/c/d", Err("is not NAME/KEY")),
            ("Ca/ca.crt", Err("object name")),
            ("ca/..x", Err("valid data key")),
            ("N_S/ca/k", Err("namespace")),
        ];
        for (entry, want) in rows {
            match (KeyRef::parse(entry), want) {
                (Ok(r), Ok((ns, name, key))) => {
                    assert_eq!(
                        (r.namespace.as_deref(), r.name.as_str(), r.key.as_str()),
                        (ns, name, key)
                    );
                }
                (Err(e), Err(fragment)) => assert!(e.contains(fragment), "{entry}: {e}"),
                (got, want) => panic!("{entry}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn namespace_policy_table() {
        // trust namespace, expected result (labels in order, or the error's namespace + fragment)
        type Row<'a> = (Option<&'a str>, Result<Vec<&'a str>, (&'a str, &'a str)>);
        let rows: [Row; 3] = [
            (
                Some("certvol"),
                Ok(vec![
                    "ConfigMap shop/ca key ca.crt",
                    "ConfigMap certvol/shared key roots.pem",
                    "Secret shop/s key ca.crt",
                    "ClusterTrustBundle example.com:foo:v1",
                    "ClusterTrustBundles with signerName example.com/foo and labels a=1,b=2",
                ]),
            ),
            (
                None,
                Err(("certvol", "this node sets no --trust-namespace")),
            ),
            (Some("other"), Err(("certvol", "with NAMESPACE \"other\""))),
        ];
        for (trust_ns, want) in rows {
            match (resolve(&spec(), "shop", trust_ns), want) {
                (Ok(sources), Ok(labels)) => {
                    let got: Vec<String> = sources.iter().map(ResolvedSource::label).collect();
                    assert_eq!(got, labels);
                }
                (Err(e), Err((ns, fragment))) => {
                    let msg = e.to_string();
                    assert_eq!(e.attribute(), "csi.certvol.io/trust-configmaps");
                    assert!(msg.contains(&format!("names namespace {ns:?}")), "{msg}");
                    assert!(msg.contains(fragment), "{msg}");
                    assert!(msg.contains("\"certvol/shared/roots.pem\""), "{msg}");
                }
                (got, want) => panic!("{trust_ns:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn name_rules() {
        assert!(is_cluster_bundle_name("example.com:foo:v1"));
        assert!(is_cluster_bundle_name("plain"));
        assert!(!is_cluster_bundle_name("Bad"));
        assert!(!is_cluster_bundle_name(":x"));
        assert!(check_signer_name("example.com/foo").is_ok());
        assert!(check_signer_name("kubernetes.io/kube-apiserver-client").is_ok());
        assert!(check_signer_name("example/foo").is_err());
        assert!(check_signer_name("example.com/").is_err());
        assert!(is_label_key("app.kubernetes.io/name"));
        assert!(!is_label_key("bad key"));
        assert!(is_label_value(""));
        assert!(!is_label_value("-x"));
    }
}
