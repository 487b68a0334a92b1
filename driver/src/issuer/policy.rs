//! The local CA's issuance policy: which certificates a volume may get from `--issuer local`.
//!
//! The local CA signs on the node, often with a CA shared by every node, so without a policy any
//! pod could mint an intermediate CA or a certificate for another namespace's service. The
//! policy is set by the operator (flags of `certvol node`), never by volume attributes, and is
//! pure: it sees the parsed request and the pod it is for, nothing else.
//!
//! Defaults, with `NS` the pod's namespace and `D` the cluster domain (see docs/security.md,
//! "Local CA issuance policy"):
//! - DNS names (and a common name that looks like one): `L.NS`, `L.NS.svc`, `L.NS.svc.D`,
//!   `L.L.NS.svc`, `L.L.NS.svc.D` (a headless service's pod) and `L.NS.pod.D`, where `L` is one
//!   label (a leftmost `*` counts as one), plus the operator's `--local-allow-dns` patterns;
//! - URI SANs: the pod's own SPIFFE ID `spiffe://TD/ns/NS/sa/SA`, plus `--local-allow-uri`;
//! - IP SANs: only addresses inside a `--local-allow-ip-cidr` range;
//! - CA certificates and the `cert sign` / `crl sign` usages: only with `--local-allow-ca`.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use crate::spec::attrs::CERTVOL_PREFIX;
use crate::spec::request::{CertRequest, KeyUsage};

/// A request the policy refuses: the attribute, the offending value and the rule it breaks.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{CERTVOL_PREFIX}{attribute}: {value:?} is not allowed: {rule}")]
pub struct PolicyViolation {
    /// The attribute without its prefix, e.g. `dns-names`.
    pub attribute: &'static str,
    pub value: String,
    pub rule: String,
}

/// An operator's DNS name pattern (`--local-allow-dns`), compared case-insensitively:
/// `example.com` is that name only, `*.example.com` is exactly one label below it and
/// `**.example.com` is one or more labels below it; `**` alone is any name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsPattern {
    kind: DnsPatternKind,
    /// Lowercase labels after the wildcard (all of them for an exact name).
    suffix: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DnsPatternKind {
    Exact,
    OneLabel,
    AnyLabels,
}

impl FromStr for DnsPattern {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let lower = s.to_ascii_lowercase();
        let (kind, rest) = if lower == "**" {
            (DnsPatternKind::AnyLabels, "")
        } else if let Some(rest) = lower.strip_prefix("**.") {
            (DnsPatternKind::AnyLabels, rest)
        } else if let Some(rest) = lower.strip_prefix("*.") {
            (DnsPatternKind::OneLabel, rest)
        } else {
            (DnsPatternKind::Exact, lower.as_str())
        };
        let suffix: Vec<String> = if rest.is_empty() {
            Vec::new()
        } else {
            rest.split('.').map(str::to_owned).collect()
        };
        if lower != "**" && suffix.is_empty() {
            return Err(format!("{s:?} is not a DNS name pattern: it has no name"));
        }
        if suffix.iter().any(|l| !is_label(l)) {
            return Err(format!(
                "{s:?} is not a DNS name pattern; accepted: a name (\"api.example.com\"), \
                 \"*.\" and a name (one label below it), \"**.\" and a name (any depth below \
                 it), or \"**\" (any name); labels of letters, digits and '-', no trailing '.'"
            ));
        }
        Ok(DnsPattern { kind, suffix })
    }
}

impl fmt::Display for DnsPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let prefix = match self.kind {
            DnsPatternKind::Exact => "",
            DnsPatternKind::OneLabel => "*.",
            DnsPatternKind::AnyLabels if self.suffix.is_empty() => return f.write_str("**"),
            DnsPatternKind::AnyLabels => "**.",
        };
        write!(f, "{prefix}{}", self.suffix.join("."))
    }
}

impl DnsPattern {
    /// Whether `labels` (a lowercase name split at dots) matches. A requested wildcard label
    /// `*` is matched like any other label: `*.example.com` allows the wildcard certificate
    /// `*.example.com`, which covers exactly the names the pattern allows.
    fn matches(&self, labels: &[&str]) -> bool {
        if labels.len() < self.suffix.len() {
            return false;
        }
        let (head, tail) = labels.split_at(labels.len() - self.suffix.len());
        if !tail.iter().zip(&self.suffix).all(|(a, b)| *a == b.as_str()) {
            return false;
        }
        match self.kind {
            DnsPatternKind::Exact => head.is_empty(),
            DnsPatternKind::OneLabel => head.len() == 1,
            DnsPatternKind::AnyLabels => !head.is_empty(),
        }
    }
}

/// An operator's URI pattern (`--local-allow-uri`): the exact URI, or, ending in `*`, every URI
/// starting with what precedes the `*` (compared byte for byte).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UriPattern {
    text: String,
}

impl FromStr for UriPattern {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let body = s.strip_suffix('*').unwrap_or(s);
        if body.contains('*') {
            return Err(format!(
                "{s:?} is not a URI pattern; accepted: a URI, or a prefix ending in a single \
                 trailing '*'"
            ));
        }
        if s.is_empty() {
            return Err("an empty URI pattern".into());
        }
        Ok(UriPattern { text: s.to_owned() })
    }
}

impl fmt::Display for UriPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl UriPattern {
    fn matches(&self, uri: &str) -> bool {
        match self.text.strip_suffix('*') {
            Some(prefix) => uri.starts_with(prefix),
            None => uri == self.text,
        }
    }
}

/// An IP range (`--local-allow-ip-cidr`), e.g. `10.0.0.0/8` or `fd00::/8`. IPv4 ranges match
/// IPv4 addresses only (not IPv4-mapped IPv6 ones), and the other way round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpCidr {
    network: IpAddr,
    prefix: u8,
}

impl FromStr for IpCidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "{s:?} is not a CIDR range; accepted: ADDRESS/PREFIX such as \"10.0.0.0/8\" or \
                 \"fd00::/8\", with no bits set after the prefix"
            )
        };
        let (addr, prefix) = s.split_once('/').ok_or_else(bad)?;
        let network: IpAddr = addr.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(bad());
        }
        let cidr = IpCidr { network, prefix };
        // A range written with host bits set is most likely a typo for another range.
        if !cidr.contains(network) || bits(network) & !cidr.mask() != 0 {
            return Err(bad());
        }
        Ok(cidr)
    }
}

impl fmt::Display for IpCidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

fn bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

impl IpCidr {
    fn mask(&self) -> u128 {
        let width: u32 = if self.network.is_ipv4() { 32 } else { 128 };
        let host_bits = width - u32::from(self.prefix);
        let all = if width == 32 {
            u128::from(u32::MAX)
        } else {
            u128::MAX
        };
        if host_bits >= 128 {
            0
        } else {
            all & !((1u128 << host_bits) - 1)
        }
    }

    fn contains(&self, ip: IpAddr) -> bool {
        self.network.is_ipv4() == ip.is_ipv4() && bits(ip) & self.mask() == bits(self.network)
    }
}

/// The operator's policy for the local CA.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalPolicy {
    /// `--local-allow-ca`: CA certificates and the cert sign / crl sign usages may be issued
    /// (with pathLenConstraint 0).
    pub allow_ca: bool,
    /// `--cluster-domain`, lowercase, without a trailing dot.
    pub cluster_domain: String,
    /// `--trust-domain`: the SPIFFE trust domain of the pods' own IDs.
    pub trust_domain: String,
    pub allow_dns: Vec<DnsPattern>,
    pub allow_uris: Vec<UriPattern>,
    pub allow_ips: Vec<IpCidr>,
}

pub(crate) const DEFAULT_CLUSTER_DOMAIN: &str = "cluster.local";
pub(crate) const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";

impl Default for LocalPolicy {
    fn default() -> Self {
        LocalPolicy {
            allow_ca: false,
            cluster_domain: DEFAULT_CLUSTER_DOMAIN.into(),
            trust_domain: DEFAULT_TRUST_DOMAIN.into(),
            allow_dns: Vec::new(),
            allow_uris: Vec::new(),
            allow_ips: Vec::new(),
        }
    }
}

/// Normalises a `--cluster-domain` / `--trust-domain` value: lowercase, no trailing dot, labels
/// of letters, digits and '-'.
pub(crate) fn parse_domain(s: &str) -> Result<String, String> {
    let lower = s.to_ascii_lowercase();
    let name = lower.strip_suffix('.').unwrap_or(&lower);
    if name.is_empty() || !name.split('.').all(is_label) {
        return Err(format!(
            "{s:?} is not a domain; accepted: dot-separated labels of letters, digits and '-', \
             such as \"cluster.local\""
        ));
    }
    Ok(name.to_owned())
}

fn is_label(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= 63
        && label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !label.starts_with('-')
        && !label.ends_with('-')
}

/// Whether a common name is read as a DNS name: at least one dot and nothing but letters,
/// digits, '-', '.' and '*'. TLS clients that still fall back to the common name compare it as
/// a host name, so such a name must pass the DNS rule; anything else ("web-0", "My Service") is
/// free text.
fn looks_like_dns(name: &str) -> bool {
    name.contains('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'*'))
}

impl LocalPolicy {
    /// Checks `req` against the policy; the first violation is returned.
    pub fn check(&self, req: &CertRequest) -> Result<(), PolicyViolation> {
        self.check_ca(req)?;
        for name in &req.sans.dns_names {
            self.check_dns("dns-names", name, &req.pod.namespace)?;
        }
        if let Some(cn) = &req.subject.common_name
            && looks_like_dns(cn)
        {
            self.check_dns("common-name", cn, &req.pod.namespace)?;
        }
        for uri in &req.sans.uris {
            self.check_uri(uri, req)?;
        }
        for ip in &req.sans.ip_addresses {
            if !self.allow_ips.iter().any(|c| c.contains(*ip)) {
                return Err(PolicyViolation {
                    attribute: "ip-sans",
                    value: ip.to_string(),
                    rule: format!(
                        "local CA policy allows IP addresses only inside --local-allow-ip-cidr \
                         ranges [{}]",
                        join(&self.allow_ips)
                    ),
                });
            }
        }
        Ok(())
    }

    fn check_ca(&self, req: &CertRequest) -> Result<(), PolicyViolation> {
        if self.allow_ca {
            return Ok(());
        }
        let rule = || {
            "local CA policy issues no CA certificates and no cert sign / crl sign usages unless \
             the operator starts certvol node with --local-allow-ca"
                .to_owned()
        };
        if req.is_ca {
            return Err(PolicyViolation {
                attribute: "is-ca",
                value: "true".into(),
                rule: rule(),
            });
        }
        for (usage, spelling) in [
            (KeyUsage::CertSign, "cert sign"),
            (KeyUsage::CrlSign, "crl sign"),
        ] {
            if req.usages.contains(&usage) {
                return Err(PolicyViolation {
                    attribute: "key-usages",
                    value: spelling.into(),
                    rule: rule(),
                });
            }
        }
        Ok(())
    }

    /// The names a pod of `namespace` gets without any operator pattern.
    fn namespace_allows(&self, labels: &[&str], namespace: &str) -> bool {
        let ns = namespace.to_ascii_lowercase();
        if !is_label(&ns) {
            return false;
        }
        let domain: Vec<&str> = self.cluster_domain.split('.').collect();
        let forms: [(&[&str], &[&str], &[usize]); 4] = [
            (&[], &[], &[1]),
            (&["svc"], &[], &[1, 2]),
            (&["svc"], &domain, &[1, 2]),
            (&["pod"], &domain, &[1]),
        ];
        forms.iter().any(|(kind, domain, depths)| {
            let tail_len = 1 + kind.len() + domain.len();
            labels.len() > tail_len
                && depths.contains(&(labels.len() - tail_len))
                && {
                    let tail = &labels[labels.len() - tail_len..];
                    tail[0] == ns
                        && tail[1..1 + kind.len()] == **kind
                        && tail[1 + kind.len()..] == **domain
                }
                // Only the leftmost label may be a wildcard.
                && labels[1..].iter().all(|l| *l != "*")
        })
    }

    fn check_dns(
        &self,
        attribute: &'static str,
        name: &str,
        namespace: &str,
    ) -> Result<(), PolicyViolation> {
        let lower = name.to_ascii_lowercase();
        let labels: Vec<&str> = lower.split('.').collect();
        // The attribute parser already refuses these; the policy does not rely on it.
        let well_formed = labels
            .iter()
            .enumerate()
            .all(|(i, l)| is_label(l) || (i == 0 && *l == "*"));
        let allowed = well_formed
            && (self.namespace_allows(&labels, namespace)
                || self.allow_dns.iter().any(|p| p.matches(&labels)));
        if allowed {
            return Ok(());
        }
        let d = &self.cluster_domain;
        let ns = namespace;
        Err(PolicyViolation {
            attribute,
            value: name.to_owned(),
            rule: format!(
                "local CA policy allows DNS names of namespace {ns:?} (*.{ns}, *.{ns}.svc, \
                 *.{ns}.svc.{d}, *.*.{ns}.svc, *.*.{ns}.svc.{d}, *.{ns}.pod.{d}) and \
                 --local-allow-dns patterns [{}]",
                join(&self.allow_dns)
            ),
        })
    }

    fn check_uri(&self, uri: &str, req: &CertRequest) -> Result<(), PolicyViolation> {
        let own = self.spiffe_id(req);
        if own.as_deref() == Some(uri) || self.allow_uris.iter().any(|p| p.matches(uri)) {
            return Ok(());
        }
        let own = own.unwrap_or_else(|| {
            "none: the pod's namespace or service account is unknown".to_owned()
        });
        Err(PolicyViolation {
            attribute: "uri-sans",
            value: uri.to_owned(),
            rule: format!(
                "local CA policy allows the pod's own SPIFFE ID ({own}) and --local-allow-uri \
                 patterns [{}]",
                join(&self.allow_uris)
            ),
        })
    }

    /// `spiffe://TD/ns/NS/sa/SA` of the pod, when kubelet told us both names.
    fn spiffe_id(&self, req: &CertRequest) -> Option<String> {
        let (ns, sa) = (&req.pod.namespace, &req.pod.service_account);
        if ns.is_empty() || sa.is_empty() {
            return None;
        }
        Some(format!("spiffe://{}/ns/{ns}/sa/{sa}", self.trust_domain))
    }
}

fn join<T: fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(|i| format!("{:?}", i.to_string()))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::request::{PodInfo, Sans, Subject};

    fn request(ns: &str, sa: &str) -> CertRequest {
        let ctx = [
            ("csi.certvol.io/issuer-name", "local"),
            ("csi.certvol.io/common-name", "x"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let mut req = crate::spec::attrs::parse(&ctx).unwrap();
        req.pod = PodInfo {
            name: "web-0".into(),
            namespace: ns.into(),
            uid: "uid".into(),
            service_account: sa.into(),
        };
        req.sans = Sans::default();
        req.subject = Subject::default();
        req
    }

    fn policy() -> LocalPolicy {
        LocalPolicy::default()
    }

    fn dns(p: &LocalPolicy, ns: &str, name: &str) -> Result<(), PolicyViolation> {
        let mut req = request(ns, "default");
        req.sans.dns_names = vec![name.into()];
        p.check(&req)
    }

    #[test]
    fn default_dns_names_are_the_pods_namespace() {
        let p = policy();
        let allowed = [
            "api.shop",
            "api.shop.svc",
            "api.shop.svc.cluster.local",
            "web-0.nginx.shop.svc",
            "web-0.nginx.shop.svc.cluster.local",
            "10-0-0-7.shop.pod.cluster.local",
            "*.shop.svc",
            "*.shop.svc.cluster.local",
            "*.nginx.shop.svc.cluster.local",
            // Case-insensitive, like DNS.
            "API.Shop.SVC.Cluster.Local",
        ];
        for name in allowed {
            assert_eq!(dns(&p, "shop", name), Ok(()), "{name}");
        }
        let refused = [
            // Other namespaces, in every form.
            "api.other-ns",
            "api.other-ns.svc",
            "api.other-ns.svc.cluster.local",
            "10-0-0-7.other-ns.pod.cluster.local",
            // The namespace as a suffix of a foreign name.
            "shop.svc.evil.com",
            "api.shop.svc.evil.com",
            "api.shop.evil",
            "api.myshop.svc",
            // No label, too deep, or a wildcard not in the leftmost label.
            "shop",
            "shop.svc",
            "shop.svc.cluster.local",
            "a.b.shop",
            "a.b.c.shop.svc",
            "a.b.shop.pod.cluster.local",
            "api.*.shop.svc",
            "*.*.shop.svc",
            // Another cluster domain, and trailing dots (not valid in a certificate).
            "api.shop.svc.other.local",
            "api.shop.svc.",
            "api.shop.svc.cluster.local.",
            // Not ASCII (IDNs must come as A-labels), and empty labels.
            "bücher.shop.svc",
            "api..shop.svc",
            "",
            "*",
            "example.com",
        ];
        for name in refused {
            let err = dns(&p, "shop", name).expect_err(name);
            assert_eq!(err.attribute, "dns-names", "{name}");
            assert_eq!(err.value, name);
        }
        // An IDN in A-label form is an ordinary label.
        assert_eq!(dns(&p, "shop", "xn--bcher-kva.shop.svc"), Ok(()));
    }

    #[test]
    fn dns_refusal_names_attribute_value_and_rule() {
        let mut p = policy();
        p.allow_dns = vec!["*.example.com".parse().unwrap()];
        let err = dns(&p, "shop", "api.other-ns.svc").unwrap_err();
        assert_eq!(
            err.to_string(),
            "csi.certvol.io/dns-names: \"api.other-ns.svc\" is not allowed: local CA policy \
             allows DNS names of namespace \"shop\" (*.shop, *.shop.svc, \
             *.shop.svc.cluster.local, *.*.shop.svc, *.*.shop.svc.cluster.local, \
             *.shop.pod.cluster.local) and --local-allow-dns patterns [\"*.example.com\"]"
        );
    }

    #[test]
    fn cluster_domain_is_configurable() {
        let mut p = policy();
        p.cluster_domain = parse_domain("Corp.Internal.").unwrap();
        assert_eq!(p.cluster_domain, "corp.internal");
        assert_eq!(dns(&p, "shop", "api.shop.svc.corp.internal"), Ok(()));
        assert!(dns(&p, "shop", "api.shop.svc.cluster.local").is_err());
        assert!(parse_domain("").is_err());
        assert!(parse_domain("a..b").is_err());
        assert!(parse_domain("*.x").is_err());
    }

    #[test]
    fn operator_dns_patterns_have_label_and_suffix_semantics() {
        let mut p = policy();
        p.allow_dns = ["*.example.com", "**.corp.example", "exact.example.org"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        for name in [
            "api.example.com",
            "API.EXAMPLE.COM",
            "*.example.com",
            "a.corp.example",
            "a.b.c.corp.example",
            "*.b.corp.example",
            "exact.example.org",
        ] {
            assert_eq!(dns(&p, "shop", name), Ok(()), "{name}");
        }
        for name in [
            // One label means one.
            "a.b.example.com",
            "example.com",
            // A suffix is label-aligned, not a string suffix.
            "evilexample.com",
            "api.example.com.evil.net",
            "corp.example",
            "xcorp.example",
            "sub.exact.example.org",
            "exact.example.org.",
        ] {
            assert!(dns(&p, "shop", name).is_err(), "{name}");
        }
        p.allow_dns = vec!["**".parse().unwrap()];
        assert_eq!(dns(&p, "shop", "anything.at.all"), Ok(()));
        assert_eq!(p.allow_dns[0].to_string(), "**");
    }

    #[test]
    fn dns_patterns_parse_strictly() {
        for ok in [
            "example.com",
            "*.example.com",
            "**.example.com",
            "**",
            "X.Example",
        ] {
            let p: DnsPattern = ok.parse().unwrap();
            assert_eq!(p.to_string(), ok.to_ascii_lowercase());
        }
        for bad in [
            "",
            "*",
            "*.",
            "a.*.com",
            "*a.com",
            "example.com.",
            "a..b",
            "-a.com",
            "**.",
            "ex ample",
        ] {
            assert!(bad.parse::<DnsPattern>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn common_names_that_look_like_dns_names_pass_the_dns_rule() {
        let p = policy();
        let cn = |cn: &str| {
            let mut req = request("shop", "default");
            req.subject.common_name = Some(cn.into());
            p.check(&req)
        };
        assert_eq!(cn("web-0"), Ok(()));
        assert_eq!(cn("My Service"), Ok(()));
        assert_eq!(cn("web-0.shop"), Ok(()));
        assert_eq!(cn("web-0.shop.svc.cluster.local"), Ok(()));
        let err = cn("api.other-ns.svc").unwrap_err();
        assert_eq!(err.attribute, "common-name");
        assert!(cn("www.example.com").is_err());
    }

    #[test]
    fn uri_sans_are_the_pods_own_spiffe_id() {
        let mut p = policy();
        let uri = |p: &LocalPolicy, ns: &str, sa: &str, uri: &str| {
            let mut req = request(ns, sa);
            req.sans.uris = vec![uri.into()];
            p.check(&req)
        };
        assert_eq!(
            uri(&p, "shop", "web", "spiffe://cluster.local/ns/shop/sa/web"),
            Ok(())
        );
        for other in [
            "spiffe://cluster.local/ns/other/sa/web",
            "spiffe://cluster.local/ns/shop/sa/admin",
            "spiffe://cluster.local/ns/shop/sa/web/extra",
            "spiffe://evil.local/ns/shop/sa/web",
            "spiffe://cluster.local/ns/shop/sa/we",
            "https://example.com/",
        ] {
            let err = uri(&p, "shop", "web", other).unwrap_err();
            assert_eq!(err.attribute, "uri-sans", "{other}");
            assert!(
                err.rule.contains("spiffe://cluster.local/ns/shop/sa/web"),
                "{}",
                err.rule
            );
        }
        // Without a service account there is no own ID.
        assert!(uri(&p, "shop", "", "spiffe://cluster.local/ns/shop/sa/").is_err());

        p.trust_domain = "prod.example".into();
        assert_eq!(
            uri(&p, "shop", "web", "spiffe://prod.example/ns/shop/sa/web"),
            Ok(())
        );
        assert!(uri(&p, "shop", "web", "spiffe://cluster.local/ns/shop/sa/web").is_err());

        p.allow_uris = vec![
            "https://id.example/svc/*".parse().unwrap(),
            "urn:x:exact".parse().unwrap(),
        ];
        assert_eq!(uri(&p, "shop", "web", "https://id.example/svc/a"), Ok(()));
        assert_eq!(uri(&p, "shop", "web", "urn:x:exact"), Ok(()));
        assert!(uri(&p, "shop", "web", "urn:x:exact2").is_err());
        assert!(uri(&p, "shop", "web", "https://id.example/other").is_err());
        assert!("a*b".parse::<UriPattern>().is_err());
        assert!("".parse::<UriPattern>().is_err());
    }

    #[test]
    fn ip_sans_need_an_operator_range() {
        let mut p = policy();
        let ip = |p: &LocalPolicy, ip: &str| {
            let mut req = request("shop", "default");
            req.sans.ip_addresses = vec![ip.parse().unwrap()];
            p.check(&req)
        };
        let err = ip(&p, "10.0.0.7").unwrap_err();
        assert_eq!(err.attribute, "ip-sans");
        assert_eq!(
            err.to_string(),
            "csi.certvol.io/ip-sans: \"10.0.0.7\" is not allowed: local CA policy allows IP \
             addresses only inside --local-allow-ip-cidr ranges []"
        );
        p.allow_ips = vec!["10.0.0.0/24".parse().unwrap(), "fd00::/8".parse().unwrap()];
        assert_eq!(ip(&p, "10.0.0.7"), Ok(()));
        assert_eq!(ip(&p, "10.0.0.255"), Ok(()));
        assert_eq!(ip(&p, "fd12::1"), Ok(()));
        for out in ["10.0.1.0", "9.255.255.255", "fe80::1", "::ffff:10.0.0.7"] {
            assert!(ip(&p, out).is_err(), "{out}");
        }
        p.allow_ips = vec!["0.0.0.0/0".parse().unwrap(), "::/0".parse().unwrap()];
        assert_eq!(ip(&p, "192.0.2.1"), Ok(()));
        assert_eq!(ip(&p, "2001:db8::1"), Ok(()));
        p.allow_ips = vec!["10.0.0.7/32".parse().unwrap()];
        assert_eq!(ip(&p, "10.0.0.7"), Ok(()));
        assert!(ip(&p, "10.0.0.8").is_err());
        for bad in [
            "10.0.0.1/24",
            "10.0.0.0/33",
            "10.0.0.0",
            "x/8",
            "fd00::/129",
            "::1/",
        ] {
            assert!(bad.parse::<IpCidr>().is_err(), "{bad}");
        }
        assert_eq!(
            "fd00::/8".parse::<IpCidr>().unwrap().to_string(),
            "fd00::/8"
        );
    }

    #[test]
    fn ca_certificates_and_signing_usages_need_the_operator_flag() {
        let mut p = policy();
        let mut ca = request("shop", "default");
        ca.is_ca = true;
        let err = p.check(&ca).unwrap_err();
        assert_eq!((err.attribute, err.value.as_str()), ("is-ca", "true"));
        assert!(err.rule.contains("--local-allow-ca"), "{}", err.rule);
        for (usage, spelling) in [
            (KeyUsage::CertSign, "cert sign"),
            (KeyUsage::CrlSign, "crl sign"),
        ] {
            let mut req = request("shop", "default");
            req.usages = vec![KeyUsage::DigitalSignature, usage];
            let err = p.check(&req).unwrap_err();
            assert_eq!(
                (err.attribute, err.value.as_str()),
                ("key-usages", spelling)
            );
        }
        let mut leaf = request("shop", "default");
        leaf.usages = vec![KeyUsage::DigitalSignature, KeyUsage::ServerAuth];
        assert_eq!(p.check(&leaf), Ok(()));

        p.allow_ca = true;
        assert_eq!(p.check(&ca), Ok(()));
        // Allowing CAs does not widen the name rules.
        ca.sans.dns_names = vec!["api.other-ns.svc".into()];
        assert_eq!(p.check(&ca).unwrap_err().attribute, "dns-names");
    }
}
