//! The kinds the stand-in stores and how the API names them.

/// The kinds this server stores.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    CertificateRequest,
    Pod,
    /// Events of both APIs: core/v1 and events.k8s.io/v1 are views of one resource, as on a real
    /// cluster. The store keeps each event in the version it was written with; the HTTP API
    /// converts to the version a client reads through.
    Event,
    ConfigMap,
    Secret,
    /// certificates.k8s.io ClusterTrustBundle (cluster-scoped), in whichever of v1alpha1, v1beta1
    /// and v1 the configured version serves (the versions share one schema).
    ClusterTrustBundle,
    /// certificates.k8s.io/v1, cluster-scoped, with `/status` and `/approval` (see `csr`).
    CertificateSigningRequest,
    /// storage.k8s.io/v1 CSIDriver, cluster-scoped, defaulted and validated (see `storage`).
    CsiDriver,
}

impl Kind {
    pub fn kind_name(self) -> &'static str {
        match self {
            Kind::CertificateRequest => "CertificateRequest",
            Kind::Pod => "Pod",
            Kind::Event => "Event",
            Kind::ConfigMap => "ConfigMap",
            Kind::Secret => "Secret",
            Kind::CertificateSigningRequest => "CertificateSigningRequest",
            Kind::ClusterTrustBundle => "ClusterTrustBundle",
            Kind::CsiDriver => "CSIDriver",
        }
    }

    /// The plural resource name used in URLs.
    pub fn plural(self) -> &'static str {
        match self {
            Kind::CertificateRequest => "certificaterequests",
            Kind::Pod => "pods",
            Kind::Event => "events",
            Kind::ConfigMap => "configmaps",
            Kind::Secret => "secrets",
            Kind::CertificateSigningRequest => "certificatesigningrequests",
            Kind::ClusterTrustBundle => "clustertrustbundles",
            Kind::CsiDriver => "csidrivers",
        }
    }

    pub fn group(self) -> &'static str {
        match self {
            Kind::CertificateRequest => "cert-manager.io",
            Kind::ClusterTrustBundle | Kind::CertificateSigningRequest => "certificates.k8s.io",
            Kind::CsiDriver => "storage.k8s.io",
            Kind::Pod | Kind::Event | Kind::ConfigMap | Kind::Secret => "",
        }
    }

    /// The kind's apiVersion in the newest Kubernetes with its defaults. What a given server
    /// serves is `ApiServer::preferred_api_version` (in-process writes get that one).
    pub fn api_version(self) -> &'static str {
        match self {
            Kind::CertificateRequest => "cert-manager.io/v1",
            Kind::ClusterTrustBundle => "certificates.k8s.io/v1",
            Kind::CertificateSigningRequest => "certificates.k8s.io/v1",
            Kind::CsiDriver => "storage.k8s.io/v1",
            Kind::Pod | Kind::Event | Kind::ConfigMap | Kind::Secret => "v1",
        }
    }

    /// The singular resource name discovery reports.
    pub fn singular(self) -> &'static str {
        match self {
            Kind::CertificateRequest => "certificaterequest",
            Kind::Pod => "pod",
            Kind::Event => "event",
            Kind::ConfigMap => "configmap",
            Kind::Secret => "secret",
            Kind::CertificateSigningRequest => "certificatesigningrequest",
            Kind::ClusterTrustBundle => "clustertrustbundle",
            Kind::CsiDriver => "csidriver",
        }
    }

    /// The short names discovery reports (the CRD's `spec.names.shortNames` for
    /// CertificateRequests).
    pub fn short_names(self) -> &'static [&'static str] {
        match self {
            Kind::CertificateRequest => &["cr", "crs"],
            Kind::Pod => &["po"],
            Kind::Event => &["ev"],
            Kind::ConfigMap => &["cm"],
            Kind::CertificateSigningRequest => &["csr"],
            Kind::Secret | Kind::ClusterTrustBundle | Kind::CsiDriver => &[],
        }
    }

    /// The categories discovery reports (`kubectl get all` takes pods; the CRD's
    /// `spec.names.categories`).
    pub fn categories(self) -> &'static [&'static str] {
        match self {
            Kind::CertificateRequest => &["cert-manager"],
            Kind::Pod => &["all"],
            _ => &[],
        }
    }

    /// Whether objects live in a namespace (cluster-scoped ones are stored under namespace "").
    pub fn namespaced(self) -> bool {
        !matches!(
            self,
            Kind::ClusterTrustBundle | Kind::CertificateSigningRequest | Kind::CsiDriver
        )
    }

    /// Whether the kind has a status subresource.
    pub fn has_status(self) -> bool {
        matches!(
            self,
            Kind::CertificateRequest | Kind::Pod | Kind::CertificateSigningRequest
        )
    }

    /// `certificaterequests.cert-manager.io`, as error messages name resources.
    pub fn qualified_resource(self) -> String {
        match self.group() {
            "" => self.plural().to_string(),
            g => format!("{}.{g}", self.plural()),
        }
    }

    pub(super) fn qualified_kind(self) -> String {
        match self.group() {
            "" => self.kind_name().to_string(),
            g => format!("{}.{g}", self.kind_name()),
        }
    }
}
