//! Which API group/versions the stand-in serves, per Kubernetes minor: ONE table ([`TABLE`]) for
//! every resource it stores, with the minors in which kube-apiserver serves each group/version,
//! whether it is on by default, and where that fact comes from.
//!
//! A real API server serves only what its version serves, and of that only what is on by
//! default or switched on with `--runtime-config`. A stand-in that serves every version of every
//! resource hides exactly the bug a cluster then shows (a client reading ClusterTrustBundles
//! through a version the cluster does not serve), so routing and discovery both come from here.
//!
//! The rules behind the `on_by_default` column:
//! - alpha APIs are never on by default;
//! - beta APIs introduced after Kubernetes 1.24 are off by default (KEP-3136, "Beta APIs Are Off
//!   by Default": <https://github.com/kubernetes/enhancements/issues/3136>);
//! - GA APIs are on.
//!
//! Enabling an API here stands for what an operator does on a real cluster: the
//! `--runtime-config` entry plus the feature gate the API's storage also needs
//! (`ClusterTrustBundle`, `PodCertificateRequest`).

mod table;

use std::fmt;
use std::str::FromStr;

use super::Kind;

pub use table::{
    ApiRow, Availability, Stability, TABLE, aggregated_discovery_versions, version_priority,
};

/// The environment variable naming the Kubernetes version `ApiServer::start()` acts as: `1.30`
/// through `1.37` (a `v` prefix and a patch number are accepted and ignored); unset or empty
/// means the newest.
pub const ENV_VERSION: &str = "CERTVOL_E2E_KUBE_VERSION";
/// The environment variable with extra group/versions `ApiServer::start()` switches on, comma
/// separated, as an operator's `--runtime-config`: `certificates.k8s.io/v1beta1`,
/// `certificates.k8s.io/v1beta1/clustertrustbundles=true`, `api/beta`, `...=false`.
pub const ENV_ENABLE: &str = "CERTVOL_E2E_KUBE_ENABLE";

/// The oldest and newest minors the stand-in can act as.
const OLDEST_MINOR: u8 = 30;
const NEWEST_MINOR: u8 = 37;

/// A Kubernetes minor version the stand-in acts as (1.30 through 1.37).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KubeVersion {
    minor: u8,
}

impl KubeVersion {
    pub const OLDEST: KubeVersion = KubeVersion {
        minor: OLDEST_MINOR,
    };
    pub const NEWEST: KubeVersion = KubeVersion {
        minor: NEWEST_MINOR,
    };

    /// 1.`minor`, if the stand-in knows it.
    pub fn new(minor: u8) -> Result<KubeVersion, ConfigError> {
        if (OLDEST_MINOR..=NEWEST_MINOR).contains(&minor) {
            Ok(KubeVersion { minor })
        } else {
            Err(ConfigError::UnknownVersion(format!("1.{minor}")))
        }
    }

    pub fn minor(self) -> u8 {
        self.minor
    }

    /// Every version the stand-in knows, oldest first.
    pub fn all() -> impl Iterator<Item = KubeVersion> {
        (OLDEST_MINOR..=NEWEST_MINOR).map(|minor| KubeVersion { minor })
    }

    /// `v1.37.0`, as `/version` reports `gitVersion`.
    pub fn git_version(self) -> String {
        format!("v1.{}.0", self.minor)
    }
}

impl fmt::Display for KubeVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "1.{}", self.minor)
    }
}

impl FromStr for KubeVersion {
    type Err = ConfigError;

    /// `1.30`, `v1.30` or `1.30.2` (the patch does not change what is served).
    fn from_str(s: &str) -> Result<KubeVersion, ConfigError> {
        let bad = || ConfigError::UnknownVersion(s.to_string());
        let t = s.trim();
        let t = t.strip_prefix('v').unwrap_or(t);
        let mut parts = t.split('.');
        let (Some("1"), Some(minor)) = (parts.next(), parts.next()) else {
            return Err(bad());
        };
        if let Some(patch) = parts.next()
            && (patch.is_empty() || !patch.bytes().all(|b| b.is_ascii_digit()))
        {
            return Err(bad());
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        let minor: u8 = minor.parse().map_err(|_| bad())?;
        KubeVersion::new(minor).map_err(|_| bad())
    }
}

/// Why a server configuration is refused (kube-apiserver refuses to start on the same).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error(
        "unknown Kubernetes version {0:?}: the stand-in acts as 1.{OLDEST_MINOR} through 1.{NEWEST_MINOR}"
    )]
    UnknownVersion(String),
    #[error("invalid runtime-config entry {0:?}: expected group/version[/resource][=true|false]")]
    BadEntry(String),
    #[error(
        "runtime-config entry {entry:?}: Kubernetes {version} does not serve {group_version} (kube-apiserver refuses to start)"
    )]
    NotServed {
        entry: String,
        group_version: String,
        version: KubeVersion,
    },
    #[error(
        "runtime-config entry {entry:?}: Kubernetes {version} serves no resource {resource:?} in {group_version}"
    )]
    NoSuchResource {
        entry: String,
        group_version: String,
        resource: String,
        version: KubeVersion,
    },
    #[error(
        "runtime-config entry {0:?}: cert-manager.io is a CustomResourceDefinition group, not switched by --runtime-config (see ApiConfig::cert_manager_crd)"
    )]
    CrdGroup(String),
    #[error("{ENV_VERSION}: {0}")]
    Env(Box<ConfigError>),
}

/// How a stand-in server is set up: the Kubernetes version it acts as and what is switched on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiConfig {
    pub version: KubeVersion,
    /// `--runtime-config` entries on top of the version's defaults:
    /// `certificates.k8s.io/v1beta1` (every resource of the group/version),
    /// `certificates.k8s.io/v1beta1/clustertrustbundles` (one resource), `api/alpha`,
    /// `api/beta`, `api/ga`, `api/all`; each optionally `=true` (the default) or `=false`.
    /// Later entries override earlier ones, and resource entries override group/version ones.
    pub enable: Vec<String>,
    /// Whether cert-manager's CertificateRequest CRD is installed (cert-manager.io/v1 served).
    pub cert_manager_crd: bool,
    /// Serve HTTPS with a fresh CA instead of plain HTTP.
    pub tls: bool,
}

impl Default for ApiConfig {
    /// The newest version with its defaults, the CRD installed, plain HTTP.
    fn default() -> ApiConfig {
        ApiConfig::new(KubeVersion::NEWEST)
    }
}

impl ApiConfig {
    /// `version` with its defaults, the CRD installed, plain HTTP.
    pub fn new(version: KubeVersion) -> ApiConfig {
        ApiConfig {
            version,
            enable: Vec::new(),
            cert_manager_crd: true,
            tls: false,
        }
    }

    /// The configuration from [`ENV_VERSION`] and [`ENV_ENABLE`] (unset: newest, defaults), the
    /// CRD installed, plain HTTP.
    pub fn from_env() -> Result<ApiConfig, ConfigError> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        let version = match var(ENV_VERSION) {
            Some(v) => v.parse().map_err(|e| ConfigError::Env(Box::new(e)))?,
            None => KubeVersion::NEWEST,
        };
        let enable = var(ENV_ENABLE)
            .map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|e| !e.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        Ok(ApiConfig {
            enable,
            ..ApiConfig::new(version)
        })
    }

    /// Adds a `--runtime-config` entry.
    pub fn enable(mut self, entry: &str) -> ApiConfig {
        self.enable.push(entry.to_string());
        self
    }

    pub fn tls(mut self, tls: bool) -> ApiConfig {
        self.tls = tls;
        self
    }

    pub fn cert_manager_crd(mut self, installed: bool) -> ApiConfig {
        self.cert_manager_crd = installed;
        self
    }
}

/// One parsed runtime-config key.
enum Selector {
    Stability(Option<Stability>),
    GroupVersion(String, String),
    Resource(String, String, String),
}

fn parse_entry(entry: &str) -> Result<(Selector, bool), ConfigError> {
    let bad = || ConfigError::BadEntry(entry.to_string());
    let (key, value) = match entry.split_once('=') {
        Some((k, v)) => (k.trim(), v.trim()),
        None => (entry.trim(), "true"),
    };
    let on = match value {
        "true" => true,
        "false" => false,
        _ => return Err(bad()),
    };
    let parts: Vec<&str> = key.split('/').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(bad());
    }
    let selector = match parts.as_slice() {
        ["api", "all"] => Selector::Stability(None),
        ["api", "ga"] => Selector::Stability(Some(Stability::Ga)),
        ["api", "beta"] => Selector::Stability(Some(Stability::Beta)),
        ["api", "alpha"] => Selector::Stability(Some(Stability::Alpha)),
        // The core group: `api/v1` as kube-apiserver spells it, or bare `v1`.
        ["api", v] | [v] if v.starts_with('v') => {
            Selector::GroupVersion(String::new(), v.to_string())
        }
        [g, v] => Selector::GroupVersion(g.to_string(), v.to_string()),
        [g, v, r] => Selector::Resource(g.to_string(), v.to_string(), r.to_string()),
        _ => return Err(bad()),
    };
    Ok((selector, on))
}

/// What one configured server serves: the table's rows its version has, each on or off.
#[derive(Clone, Debug)]
pub struct ServedApis {
    version: KubeVersion,
    /// The rows served (on), stored or not, in table order.
    on: Vec<&'static ApiRow>,
}

impl ServedApis {
    /// `version` with its defaults only (cannot fail: there are no entries to refuse).
    pub fn defaults(version: KubeVersion, cert_manager_crd: bool) -> ServedApis {
        ServedApis {
            version,
            on: TABLE
                .iter()
                .filter(|r| r.exists_in(version, cert_manager_crd) && r.on_by_default())
                .collect(),
        }
    }

    /// Resolves a configuration as kube-apiserver resolves its flags; entries naming what the
    /// version does not have are refused as kube-apiserver refuses to start on them.
    pub fn resolve(config: &ApiConfig) -> Result<ServedApis, ConfigError> {
        let version = config.version;
        let rows: Vec<&'static ApiRow> = TABLE
            .iter()
            .filter(|r| r.exists_in(version, config.cert_manager_crd))
            .collect();
        let mut on: Vec<bool> = rows.iter().map(|r| r.on_by_default()).collect();
        let mut resource_overrides: Vec<Option<bool>> = vec![None; rows.len()];
        for entry in &config.enable {
            let (selector, value) = parse_entry(entry)?;
            match selector {
                Selector::Stability(level) => {
                    for (i, r) in rows.iter().enumerate() {
                        if r.availability != Availability::Crd
                            && level.is_none_or(|l| r.stability() == l)
                        {
                            on[i] = value;
                        }
                    }
                }
                Selector::GroupVersion(g, v) => {
                    check_group(entry, &g, &v, version)?;
                    for (i, r) in rows.iter().enumerate() {
                        if r.group == g && r.version == v {
                            on[i] = value;
                        }
                    }
                }
                Selector::Resource(g, v, res) => {
                    check_group(entry, &g, &v, version)?;
                    let mut found = false;
                    for (i, r) in rows.iter().enumerate() {
                        // A resource entry switches its subresources with it.
                        if r.group == g && r.version == v && r.parent() == res {
                            resource_overrides[i] = Some(value);
                            found = true;
                        }
                    }
                    if !found {
                        return Err(ConfigError::NoSuchResource {
                            entry: entry.clone(),
                            group_version: format!("{g}/{v}"),
                            resource: res,
                            version,
                        });
                    }
                }
            }
        }
        let on = rows
            .into_iter()
            .zip(on.into_iter().zip(resource_overrides))
            .filter(|(_, (gv_on, res_on))| res_on.unwrap_or(*gv_on))
            .map(|(r, _)| r)
            .collect();
        Ok(ServedApis { version, on })
    }

    pub fn version(&self) -> KubeVersion {
        self.version
    }

    /// Whether this stand-in serves `resource` (`pods`, `pods/status`) in `group_version`
    /// (`v1`, `certificates.k8s.io/v1beta1`). For every kind the stand-in stores, that is exactly
    /// whether the real kube-apiserver of the configured version (and runtime-config) would.
    pub fn serves(&self, group_version: &str, resource: &str) -> bool {
        self.served_row(group_version, resource).is_some()
    }

    /// Whether the real kube-apiserver would serve it, including resources the stand-in does
    /// not store (PodCertificateRequest): for scenarios that branch on the cluster's APIs.
    pub fn kubernetes_serves(&self, group_version: &str, resource: &str) -> bool {
        self.on
            .iter()
            .any(|r| r.group_version() == group_version && r.resource == resource)
    }

    /// The served (and stored) row for a request path's group/version and resource.
    pub fn served_row(&self, group_version: &str, resource: &str) -> Option<&'static ApiRow> {
        self.stored()
            .find(|r| r.group_version() == group_version && r.resource == resource)
    }

    /// The served rows the stand-in stores, in table order.
    pub fn stored(&self) -> impl Iterator<Item = &'static ApiRow> + '_ {
        self.on.iter().copied().filter(|r| r.kind.is_some())
    }

    /// The groups served, in `/apis` order (the core group `""` first), each with its served
    /// versions, preferred first.
    pub fn groups(&self) -> Vec<(&'static str, Vec<&'static str>)> {
        let mut out: Vec<(&'static str, Vec<&'static str>)> = Vec::new();
        for r in self.stored() {
            match out.iter_mut().find(|(g, _)| *g == r.group) {
                Some((_, versions)) => {
                    if !versions.contains(&r.version) {
                        versions.push(r.version);
                    }
                }
                None => out.push((r.group, vec![r.version])),
            }
        }
        for (_, versions) in &mut out {
            versions.sort_by_key(|v| std::cmp::Reverse(version_priority(v)));
        }
        out
    }

    /// The served versions of `group`, preferred first (empty when the group is not served).
    pub fn versions(&self, group: &str) -> Vec<&'static str> {
        self.groups()
            .into_iter()
            .find(|(g, _)| *g == group)
            .map(|(_, v)| v)
            .unwrap_or_default()
    }

    /// The group's preferred version: the newest stable served, else beta, else alpha.
    pub fn preferred_version(&self, group: &str) -> Option<&'static str> {
        self.versions(group).first().copied()
    }

    /// The served rows of one group/version, subresources included.
    pub fn resources(&self, group_version: &str) -> Vec<&'static ApiRow> {
        self.stored()
            .filter(|r| r.group_version() == group_version)
            .collect()
    }

    /// The apiVersion objects of `kind` get when written in-process without one: the
    /// highest-priority version serving it (the core group first for Events, as the table
    /// lists it), or `None` when no served version has the kind.
    pub fn preferred_api_version(&self, kind: Kind) -> Option<String> {
        let mut best: Option<&'static ApiRow> = None;
        for r in self
            .stored()
            .filter(|r| r.kind == Some(kind) && !r.is_subresource())
        {
            if best.is_none_or(|b| version_priority(r.version) > version_priority(b.version)) {
                best = Some(r);
            }
        }
        best.map(ApiRow::group_version)
    }

    /// Whether objects of `kind` may carry `api_version` (some served version has the kind).
    pub fn serves_kind_in(&self, kind: Kind, api_version: &str) -> bool {
        self.stored().any(|r| {
            r.kind == Some(kind) && !r.is_subresource() && r.group_version() == api_version
        })
    }
}

/// The group/version of a runtime-config entry must exist in the version (on or off).
fn check_group(
    entry: &str,
    group: &str,
    version_name: &str,
    version: KubeVersion,
) -> Result<(), ConfigError> {
    if group == "cert-manager.io" {
        return Err(ConfigError::CrdGroup(entry.to_string()));
    }
    let exists = TABLE
        .iter()
        .any(|r| r.group == group && r.version == version_name && r.exists_in(version, false));
    if exists {
        Ok(())
    } else {
        Err(ConfigError::NotServed {
            entry: entry.to_string(),
            group_version: if group.is_empty() {
                version_name.to_string()
            } else {
                format!("{group}/{version_name}")
            },
            version,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn served(minor: u8, enable: &[&str]) -> ServedApis {
        let mut c = ApiConfig::new(KubeVersion::new(minor).unwrap());
        for e in enable {
            c = c.enable(e);
        }
        ServedApis::resolve(&c).unwrap()
    }

    #[test]
    fn versions_parse_and_print() {
        assert_eq!("1.30".parse::<KubeVersion>().unwrap().minor(), 30);
        assert_eq!("v1.36.2".parse::<KubeVersion>().unwrap().minor(), 36);
        assert_eq!(KubeVersion::NEWEST.to_string(), "1.37");
        for bad in ["1.29", "1.38", "2.30", "1.3x", "1.30.", "1", ""] {
            assert!(bad.parse::<KubeVersion>().is_err(), "{bad}");
        }
        assert_eq!(KubeVersion::all().count(), 8);
    }

    #[test]
    fn cluster_trust_bundles_follow_the_table() {
        let ctb = |s: &ServedApis| {
            ["v1alpha1", "v1beta1", "v1"]
                .into_iter()
                .filter(|v| s.serves(&format!("certificates.k8s.io/{v}"), "clustertrustbundles"))
                .collect::<Vec<_>>()
        };
        let none: Vec<&str> = Vec::new();
        assert_eq!(ctb(&served(30, &[])), none);
        assert_eq!(
            ctb(&served(30, &["certificates.k8s.io/v1alpha1"])),
            ["v1alpha1"]
        );
        assert_eq!(ctb(&served(33, &[])), none);
        assert_eq!(
            ctb(&served(36, &["certificates.k8s.io/v1beta1"])),
            ["v1beta1"]
        );
        assert_eq!(ctb(&served(37, &[])), ["v1"]);
        assert_eq!(ctb(&served(37, &["api/beta"])), ["v1beta1", "v1"]);
        assert_eq!(
            ctb(&served(
                37,
                &["certificates.k8s.io/v1/clustertrustbundles=false"]
            )),
            none
        );
        assert!(!served(37, &[]).serves("certificates.k8s.io/v1", "podcertificaterequests"));
        assert!(
            served(37, &[]).kubernetes_serves("certificates.k8s.io/v1", "podcertificaterequests")
        );
    }

    #[test]
    fn runtime_config_naming_what_the_version_lacks_is_refused() {
        let c = |minor, e: &str| {
            ServedApis::resolve(&ApiConfig::new(KubeVersion::new(minor).unwrap()).enable(e))
        };
        assert!(matches!(
            c(30, "certificates.k8s.io/v1beta1"),
            Err(ConfigError::NotServed { .. })
        ));
        assert!(matches!(
            c(37, "certificates.k8s.io/v1alpha1"),
            Err(ConfigError::NotServed { .. })
        ));
        assert!(matches!(
            c(33, "certificates.k8s.io/v1beta1/nothing"),
            Err(ConfigError::NoSuchResource { .. })
        ));
        assert!(matches!(
            c(33, "cert-manager.io/v1"),
            Err(ConfigError::CrdGroup(_))
        ));
        assert!(matches!(
            c(33, "certificates.k8s.io/v1beta1=yes"),
            Err(ConfigError::BadEntry(_))
        ));
    }

    #[test]
    fn preferred_versions_rank_stable_then_beta_then_alpha() {
        let s = served(
            34,
            &[
                "certificates.k8s.io/v1alpha1",
                "certificates.k8s.io/v1beta1",
            ],
        );
        assert_eq!(
            s.versions("certificates.k8s.io"),
            ["v1", "v1beta1", "v1alpha1"]
        );
        assert_eq!(
            s.preferred_api_version(Kind::ClusterTrustBundle).as_deref(),
            Some("certificates.k8s.io/v1beta1")
        );
        assert_eq!(s.preferred_api_version(Kind::Event).as_deref(), Some("v1"));
        assert!(version_priority("v2") > version_priority("v1"));
        assert!(version_priority("v1beta2") > version_priority("v1beta1"));
        assert!(version_priority("v1alpha1") < version_priority("v1beta1"));
        let none = served(33, &[]);
        assert_eq!(none.preferred_api_version(Kind::ClusterTrustBundle), None);
    }

    #[test]
    fn cert_manager_rows_and_names_match_the_installed_crd() {
        let text = std::fs::read_to_string(super::super::crd_path()).unwrap();
        let crd: serde_json::Value = serde_yaml::from_str(&text).unwrap();
        let names = &crd["spec"]["names"];
        let kind = Kind::CertificateRequest;
        assert_eq!(names["plural"], kind.plural());
        assert_eq!(names["singular"], kind.singular());
        assert_eq!(names["shortNames"], serde_json::json!(kind.short_names()));
        assert_eq!(names["categories"], serde_json::json!(kind.categories()));
        let served: Vec<&str> = crd["spec"]["versions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|v| v["served"] == true)
            .map(|v| v["name"].as_str().unwrap())
            .collect();
        let rows: Vec<&ApiRow> = TABLE
            .iter()
            .filter(|r| r.group == "cert-manager.io")
            .collect();
        for r in &rows {
            assert!(served.contains(&r.version), "{r:?}");
            assert_eq!(r.availability, Availability::Crd);
        }
        let has_status = crd["spec"]["versions"][0]["subresources"]
            .get("status")
            .is_some();
        assert_eq!(
            rows.iter()
                .any(|r| r.resource == "certificaterequests/status"),
            has_status
        );
    }

    #[test]
    fn every_stored_kind_has_rows() {
        for kind in [
            Kind::CertificateRequest,
            Kind::Pod,
            Kind::Event,
            Kind::ConfigMap,
            Kind::Secret,
            Kind::ClusterTrustBundle,
            Kind::CertificateSigningRequest,
            Kind::CsiDriver,
        ] {
            assert!(
                TABLE
                    .iter()
                    .any(|r| r.kind == Some(kind) && r.resource == kind.plural())
            );
            let status = format!("{}/status", kind.plural());
            assert_eq!(
                TABLE
                    .iter()
                    .any(|r| r.kind == Some(kind) && r.resource == status),
                kind.has_status(),
                "{kind:?}"
            );
        }
    }
}
