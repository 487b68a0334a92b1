//! The table itself: every stored resource's group/versions, the minors that serve them, and the
//! sources for each fact; plus how versions of one group rank.

use super::KubeVersion;
use crate::apiserver::Kind;

/// When kube-apiserver serves a row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Availability {
    /// Built into kube-apiserver: served from minor `since` through minor `until` (`None`: still
    /// served in the newest minor the stand-in knows), on by default or only when enabled.
    BuiltIn {
        since: u8,
        until: Option<u8>,
        on_by_default: bool,
    },
    /// Served because a CustomResourceDefinition is installed (cert-manager's), whatever the
    /// Kubernetes version; `ApiConfig::cert_manager_crd` says whether it is.
    Crd,
}

/// One resource (or subresource) in one group/version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ApiRow {
    /// `""` for the core group.
    pub group: &'static str,
    pub version: &'static str,
    /// The plural resource name; `pods/status` for a subresource.
    pub resource: &'static str,
    /// The kind the stand-in stores it as. `None`: recorded so scenarios can ask whether a
    /// real server would serve it, but not stored here, so neither routed nor discovered (a
    /// client that found it in discovery would get 404s a real server does not give).
    pub kind: Option<Kind>,
    pub availability: Availability,
    /// Where the served minors and the default come from.
    pub source: &'static str,
}

impl ApiRow {
    /// `v1`, `certificates.k8s.io/v1beta1`: the apiVersion of objects served through the row.
    pub fn group_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// Whether kube-apiserver of `version` has the row at all (on or off).
    pub fn exists_in(&self, version: KubeVersion, cert_manager_crd: bool) -> bool {
        match self.availability {
            Availability::BuiltIn { since, until, .. } => {
                since <= version.minor && until.is_none_or(|u| version.minor <= u)
            }
            Availability::Crd => cert_manager_crd,
        }
    }

    pub(super) fn on_by_default(&self) -> bool {
        match self.availability {
            Availability::BuiltIn { on_by_default, .. } => on_by_default,
            Availability::Crd => true,
        }
    }

    /// The resource without a subresource: `pods` for `pods/status`.
    pub fn parent(&self) -> &'static str {
        self.resource.split('/').next().unwrap_or(self.resource)
    }

    pub fn is_subresource(&self) -> bool {
        self.resource.contains('/')
    }

    pub(super) fn stability(&self) -> Stability {
        Stability::of(self.version)
    }
}

const K8S_OPENAPI_CORE: &str = "k8s-openapi 0.29 src/v1_33..v1_37/api/core/v1 (generated from \
     upstream OpenAPI); GA since v1.0, in every API reference \
     (https://kubernetes.io/docs/reference/kubernetes-api/)";
const EVENTS_V1: &str = "k8s-openapi 0.29 src/v1_33..v1_37/api/events/v1; GA since v1.19 \
     (https://kubernetes.io/docs/reference/using-api/deprecation-guide/: \"events.k8s.io/v1 \
     API version, available since v1.19\")";
const CSR_V1: &str = "k8s-openapi 0.29 src/v1_33..v1_37/api/certificates/v1/\
     certificate_signing_request.rs; GA since v1.19 \
     (https://kubernetes.io/docs/reference/using-api/deprecation-guide/ (v1beta1 removed in v1.22), \
     https://kubernetes.io/docs/reference/access-authn-authz/certificate-signing-requests/)";
const CTB_V1ALPHA1: &str = "alpha since v1.27, off by default (feature gate ClusterTrustBundle: \
     alpha 1.27-1.32, https://kubernetes.io/docs/reference/command-line-tools-reference/feature-gates/; \
     KEP-3257 https://www.kubernetes.dev/resources/keps/3257/; kubernetes/website#40065: \
     --runtime-config=certificates.k8s.io/v1alpha1/clustertrustbundles=true); \
     k8s-openapi 0.29 has it in src/v1_33..v1_36/api/certificates/v1alpha1 and not in v1_37";
const CTB_V1BETA1: &str = "beta since v1.33, off by default (KEP-3257 \
     https://www.kubernetes.dev/resources/keps/3257/ \"Beta v1.33\"; KEP-3136 for new betas); \
     k8s-openapi 0.29 has it in src/v1_33..v1_37/api/certificates/v1beta1";
const CTB_V1: &str = "GA in v1.37 (kubernetes/kubernetes#139437 \"ClusterTrustBundles - GA\", \
     kubernetes/enhancements#6101); k8s-openapi 0.29 has it only in \
     src/v1_37/api/certificates/v1/cluster_trust_bundle.rs";
const PCR_V1ALPHA1: &str = "alpha in v1.34 only (KEP-4317 Pod Certificates, \
     kubernetes/kubernetes#128010); k8s-openapi 0.29 has it only in \
     src/v1_34/api/certificates/v1alpha1/pod_certificate_request.rs";
const PCR_V1BETA1: &str = "beta since v1.35, off by default (KEP-4317; runtime-config \
     certificates.k8s.io/v1beta1/podcertificaterequests=true); k8s-openapi 0.29 has it in \
     src/v1_35..v1_37/api/certificates/v1beta1/pod_certificate_request.rs";
const PCR_V1: &str = "GA in v1.37 (\"Kubernetes v1.37: Pod Certificates and Cluster Trust \
     Bundles\", kubernetes/website#57194); k8s-openapi 0.29 has it only in \
     src/v1_37/api/certificates/v1/pod_certificate_request.rs";
const CSIDRIVER_V1: &str = "k8s-openapi 0.29 src/v1_33..v1_37/api/storage/v1/csi_driver.rs; GA \
     since v1.18 (https://kubernetes.io/docs/reference/kubernetes-api/config-and-storage-resources/csi-driver-v1/, \
     kubernetes/kubernetes#84814 \"Promote CSIDriver to GA\")";
const CERT_MANAGER_CRD: &str = "the cert-manager CRD (shared/reference/\
     cert-manager.io_certificaterequests.yaml): version v1 served, status subresource";

const fn built_in(since: u8, until: Option<u8>, on_by_default: bool) -> Availability {
    Availability::BuiltIn {
        since,
        until,
        on_by_default,
    }
}

const fn row(
    group: &'static str,
    version: &'static str,
    resource: &'static str,
    kind: Option<Kind>,
    availability: Availability,
    source: &'static str,
) -> ApiRow {
    ApiRow {
        group,
        version,
        resource,
        kind,
        availability,
        source,
    }
}

/// The table. Groups appear in the order kube-apiserver lists them in `/apis` (its built-in group
/// priority puts events.k8s.io before certificates.k8s.io; CRD groups come after the built-in
/// ones); within a group, the order here is the order of the group's resource lists.
pub const TABLE: &[ApiRow] = &[
    // core/v1
    row(
        "",
        "v1",
        "configmaps",
        Some(Kind::ConfigMap),
        built_in(0, None, true),
        K8S_OPENAPI_CORE,
    ),
    row(
        "",
        "v1",
        "events",
        Some(Kind::Event),
        built_in(0, None, true),
        K8S_OPENAPI_CORE,
    ),
    row(
        "",
        "v1",
        "pods",
        Some(Kind::Pod),
        built_in(0, None, true),
        K8S_OPENAPI_CORE,
    ),
    row(
        "",
        "v1",
        "pods/status",
        Some(Kind::Pod),
        built_in(0, None, true),
        K8S_OPENAPI_CORE,
    ),
    row(
        "",
        "v1",
        "secrets",
        Some(Kind::Secret),
        built_in(0, None, true),
        K8S_OPENAPI_CORE,
    ),
    // events.k8s.io
    row(
        "events.k8s.io",
        "v1",
        "events",
        Some(Kind::Event),
        built_in(19, None, true),
        EVENTS_V1,
    ),
    // certificates.k8s.io
    row(
        "certificates.k8s.io",
        "v1",
        "certificatesigningrequests",
        Some(Kind::CertificateSigningRequest),
        built_in(19, None, true),
        CSR_V1,
    ),
    row(
        "certificates.k8s.io",
        "v1",
        "certificatesigningrequests/approval",
        Some(Kind::CertificateSigningRequest),
        built_in(19, None, true),
        CSR_V1,
    ),
    row(
        "certificates.k8s.io",
        "v1",
        "certificatesigningrequests/status",
        Some(Kind::CertificateSigningRequest),
        built_in(19, None, true),
        CSR_V1,
    ),
    row(
        "certificates.k8s.io",
        "v1",
        "clustertrustbundles",
        Some(Kind::ClusterTrustBundle),
        built_in(37, None, true),
        CTB_V1,
    ),
    row(
        "certificates.k8s.io",
        "v1",
        "podcertificaterequests",
        None,
        built_in(37, None, true),
        PCR_V1,
    ),
    row(
        "certificates.k8s.io",
        "v1beta1",
        "clustertrustbundles",
        Some(Kind::ClusterTrustBundle),
        built_in(33, None, false),
        CTB_V1BETA1,
    ),
    row(
        "certificates.k8s.io",
        "v1beta1",
        "podcertificaterequests",
        None,
        built_in(35, None, false),
        PCR_V1BETA1,
    ),
    row(
        "certificates.k8s.io",
        "v1alpha1",
        "clustertrustbundles",
        Some(Kind::ClusterTrustBundle),
        built_in(27, Some(36), false),
        CTB_V1ALPHA1,
    ),
    row(
        "certificates.k8s.io",
        "v1alpha1",
        "podcertificaterequests",
        None,
        built_in(34, Some(34), false),
        PCR_V1ALPHA1,
    ),
    // storage.k8s.io
    row(
        "storage.k8s.io",
        "v1",
        "csidrivers",
        Some(Kind::CsiDriver),
        built_in(18, None, true),
        CSIDRIVER_V1,
    ),
    // cert-manager.io (CRD)
    row(
        "cert-manager.io",
        "v1",
        "certificaterequests",
        Some(Kind::CertificateRequest),
        Availability::Crd,
        CERT_MANAGER_CRD,
    ),
    row(
        "cert-manager.io",
        "v1",
        "certificaterequests/status",
        Some(Kind::CertificateRequest),
        Availability::Crd,
        CERT_MANAGER_CRD,
    ),
];

/// The aggregated discovery versions (apidiscovery.k8s.io) kube-apiserver answers `/api` and
/// `/apis` in, when a client asks for them: v2 is GA and on from 1.30; v2beta1 is served through
/// 1.32 and removed in 1.33 (KEP-3352 https://github.com/kubernetes/enhancements/issues/3352,
/// "Version Skew Strategy"; kubernetes/kubernetes#129073).
pub fn aggregated_discovery_versions(version: KubeVersion) -> &'static [&'static str] {
    if version.minor <= 32 {
        &["v2", "v2beta1"]
    } else {
        &["v2"]
    }
}

/// API stability levels, for `api/alpha`, `api/beta` and `api/ga` runtime-config keys and for
/// version priority (declared lowest first).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stability {
    Alpha,
    Beta,
    Ga,
}

impl Stability {
    pub fn of(version: &str) -> Stability {
        if version.contains("alpha") {
            Stability::Alpha
        } else if version.contains("beta") {
            Stability::Beta
        } else {
            Stability::Ga
        }
    }
}

/// The order kube-apiserver ranks versions in (apimachinery's version priority): GA before beta
/// before alpha, higher major first, then higher stage number. Larger sorts first.
pub fn version_priority(version: &str) -> (Stability, u32, u32) {
    let rest = version.strip_prefix('v').unwrap_or(version);
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    let major = digits.parse().unwrap_or(0);
    let tail = &rest[digits.len()..];
    let stage_number = tail
        .trim_start_matches("alpha")
        .trim_start_matches("beta")
        .parse()
        .unwrap_or(0);
    (Stability::of(version), major, stage_number)
}
