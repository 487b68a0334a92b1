//! `certvol inspect`: a read-only view of a node's data root for operators.
//!
//! Reads `state.json` of every volume and, when readable, the certificate the pod currently sees
//! (`mem/files/..data/<certificate file>`), so the view shows what is really served rather than
//! what was asked for. Never reads or prints a private key, never writes.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::Serialize;

use crate::files::store::{self, Store, StoreError, VolumePaths, VolumeState};
use crate::spec::attrs;
use crate::spec::request::CertRequest;
use crate::x509::pki;

const POD_NAMESPACE_KEY: &str = "csi.storage.k8s.io/pod.namespace";
const POD_NAME_KEY: &str = "csi.storage.k8s.io/pod.name";
/// Characters of the volume id shown in the table (`csi-` + 12 hex digits): unique in practice
/// and accepted back as a prefix by `certvol inspect VOLUME`.
const SHORT_ID_LEN: usize = 16;

/// Why the data root could not be inspected.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InspectError {
    #[error(
        "data root {0} does not exist or has no volumes directory (is --data-root the one `certvol node` uses?)"
    )]
    NoDataRoot(PathBuf),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "no volume matches {0:?}; accepted: a volume id, a unique prefix of one, or a pod as namespace/name (run `certvol inspect` to list volumes)"
    )]
    UnknownVolume(String),
    #[error("{query:?} matches {} volumes: {}; give more of the volume id", .matches.len(), .matches.join(", "))]
    Ambiguous { query: String, matches: Vec<String> },
    #[error("encode JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// Names of the files in the volume.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FileNamesView {
    pub certificate: String,
    pub private_key: String,
    pub ca: String,
    /// The optional files the volume asks for (key-chain, chain, trust bundle, PKCS#12), in
    /// publish order; absent from JSON when there are none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub other: Vec<String>,
}

/// One volume as `inspect` shows it. Field names are the JSON output's stable contract; times are
/// RFC 3339 in UTC.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VolumeView {
    pub volume_id: String,
    /// Directory name under `<data-root>/volumes`.
    pub key: String,
    pub pod_namespace: Option<String>,
    pub pod_name: Option<String>,
    /// Issuer backend (`local`, `cert-manager`).
    pub issuer: Option<String>,
    /// The issuer-name attribute (cert-manager's issuerRef name), or signer-name for a
    /// Kubernetes CSR volume that names no issuer.
    pub issuer_name: Option<String>,
    pub issuer_kind: Option<String>,
    pub common_name: Option<String>,
    pub subject: Option<String>,
    pub dns_names: Vec<String>,
    pub serial: Option<String>,
    pub not_after: Option<String>,
    pub next_renewal: Option<String>,
    pub phase: Option<String>,
    pub failures: u32,
    pub last_error: Option<String>,
    pub target_path: Option<PathBuf>,
    pub revision: Option<u64>,
    pub requests: Vec<String>,
    pub key_algorithm: Option<String>,
    pub files: Option<FileNamesView>,
    /// Where subject, SANs and not-after came from: `certificate` (the served file), `state`
    /// (state.json and the volume attributes; the file could not be read) or `none`.
    pub source: &'static str,
    /// Why the volume's state or certificate could not be read, if so.
    pub problem: Option<String>,
}

/// Output format of `certvol inspect`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
}

/// Opens an existing data root without creating anything: inspecting a mistyped path must fail,
/// not leave an empty data root behind.
pub fn open_existing(root: &Path) -> Result<Store, InspectError> {
    if !root.join("volumes").is_dir() {
        return Err(InspectError::NoDataRoot(root.to_path_buf()));
    }
    Ok(Store::open(root)?)
}

/// Every volume under the data root, sorted by pod then volume id.
pub fn collect(store: &Store) -> Result<Vec<VolumeView>, InspectError> {
    let mut out: Vec<VolumeView> = store
        .scan()?
        .into_iter()
        .map(|(paths, state)| match state {
            Ok(Some(state)) => view(&paths, &state),
            Ok(None) => unreadable(
                &paths,
                "no state.json (a publish stopped before its first step)",
            ),
            Err(e) => unreadable(&paths, &e.to_string()),
        })
        .collect();
    out.sort_by(|a, b| {
        (&a.pod_namespace, &a.pod_name, &a.volume_id).cmp(&(
            &b.pod_namespace,
            &b.pod_name,
            &b.volume_id,
        ))
    });
    Ok(out)
}

/// The one volume `query` names: a full volume id, a unique prefix of one, a directory key, or a
/// pod as `namespace/name` (if the pod has exactly one certvol volume).
pub fn select<'a>(views: &'a [VolumeView], query: &str) -> Result<&'a VolumeView, InspectError> {
    if let Some(v) = views
        .iter()
        .find(|v| v.volume_id == query || v.key == query)
    {
        return Ok(v);
    }
    let by_pod: Vec<&VolumeView> = match query.split_once('/') {
        Some((ns, name)) => views
            .iter()
            .filter(|v| {
                v.pod_namespace.as_deref() == Some(ns) && v.pod_name.as_deref() == Some(name)
            })
            .collect(),
        None => Vec::new(),
    };
    let matches = if by_pod.is_empty() {
        views
            .iter()
            .filter(|v| !query.is_empty() && v.volume_id.starts_with(query))
            .collect()
    } else {
        by_pod
    };
    match matches.as_slice() {
        [one] => Ok(one),
        [] => Err(InspectError::UnknownVolume(query.to_string())),
        many => Err(InspectError::Ambiguous {
            query: query.to_string(),
            matches: many.iter().map(|v| v.volume_id.clone()).collect(),
        }),
    }
}

fn unreadable(paths: &VolumePaths, problem: &str) -> VolumeView {
    VolumeView {
        volume_id: paths.key.clone(),
        key: paths.key.clone(),
        pod_namespace: None,
        pod_name: None,
        issuer: None,
        issuer_name: None,
        issuer_kind: None,
        common_name: None,
        subject: None,
        dns_names: Vec::new(),
        serial: None,
        not_after: None,
        next_renewal: None,
        phase: None,
        failures: 0,
        last_error: None,
        target_path: None,
        revision: None,
        requests: Vec::new(),
        key_algorithm: None,
        files: None,
        source: "none",
        problem: Some(problem.to_string()),
    }
}

/// Builds the view of one volume from its state, its attributes and, when readable, the
/// certificate file the pod sees.
pub fn view(paths: &VolumePaths, state: &VolumeState) -> VolumeView {
    let ctx = &state.context;
    let get = |k: &str| ctx.get(k).filter(|v| !v.is_empty()).cloned();
    // The attributes were valid when published; parse them again for names and file layout. If
    // they no longer parse (an older build's attributes), the view still shows the state.
    let request = attrs::parse(
        &ctx.iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<HashMap<_, _>>(),
    )
    .ok();
    let files = request.as_ref().map(|r| FileNamesView {
        certificate: r.files.certificate.clone(),
        private_key: r.files.private_key.clone(),
        ca: r.files.ca.clone(),
        other: r.files.optional().into_iter().map(str::to_owned).collect(),
    });
    let cert_file = files
        .as_ref()
        .map(|f| f.certificate.clone())
        .unwrap_or_else(|| "tls.crt".to_string());
    let (shown, problem) = Shown::of(read_served(paths, &cert_file), state, request.as_ref());
    VolumeView {
        volume_id: state.volume_id.clone(),
        key: paths.key.clone(),
        pod_namespace: get(POD_NAMESPACE_KEY),
        pod_name: get(POD_NAME_KEY),
        issuer: Some(state.issuer.clone()),
        issuer_name: request
            .as_ref()
            .map(|r| match &r.kube_csr {
                Some(k) if r.issuer.name.is_empty() => k.signer_name.clone(),
                _ => r.issuer.name.clone(),
            })
            .or_else(|| get(&format!("{}issuer-name", attrs::CERTVOL_PREFIX)))
            .or_else(|| get(&format!("{}issuer-name", attrs::CERT_MANAGER_PREFIX))),
        issuer_kind: request.as_ref().map(|r| r.issuer.kind.clone()),
        common_name: shown.common_name,
        subject: shown.subject,
        dns_names: shown.dns_names,
        serial: shown.serial,
        not_after: shown.not_after,
        next_renewal: state.next_renewal().map(rfc3339_system),
        phase: Some(phase_name(state.phase)),
        failures: state.renewal.failures,
        last_error: state.renewal.last_error.clone(),
        target_path: Some(state.target_path.clone()),
        revision: state.current.as_ref().map(|c| c.revision),
        requests: state.requests.clone(),
        key_algorithm: shown.key_algorithm,
        files,
        source: shown.source,
        problem,
    }
}

/// The certificate fields a view shows, and where they came from ([`VolumeView::source`]).
struct Shown {
    source: &'static str,
    subject: Option<String>,
    common_name: Option<String>,
    dns_names: Vec<String>,
    not_after: Option<String>,
    key_algorithm: Option<String>,
    serial: Option<String>,
}

impl Shown {
    /// From the certificate the pod reads when there is one; otherwise from the state and the
    /// attributes, with the reason the certificate could not be read (if it could not).
    fn of(
        served: Result<Option<pki::CertInfo>, String>,
        state: &VolumeState,
        request: Option<&CertRequest>,
    ) -> (Shown, Option<String>) {
        let problem = match served {
            Ok(Some(cert)) => return (Shown::from_cert(&cert), None),
            Ok(None) => None,
            Err(e) => Some(e),
        };
        let has_cert = state.current.is_some();
        let shown = Shown {
            source: if has_cert || request.is_some() {
                "state"
            } else {
                "none"
            },
            subject: request.and_then(|r| r.subject.literal.as_ref().map(ToString::to_string)),
            common_name: request.and_then(|r| r.subject.common_name.clone()),
            dns_names: request
                .map(|r| r.sans.dns_names.clone())
                .unwrap_or_default(),
            not_after: state.current.as_ref().map(|c| rfc3339(c.not_after)),
            key_algorithm: request.map(|r| r.key_algorithm.label().to_string()),
            serial: state.current.as_ref().map(|c| c.serial.clone()),
        };
        (shown, problem)
    }

    fn from_cert(cert: &pki::CertInfo) -> Shown {
        Shown {
            source: "certificate",
            subject: Some(cert.subject.clone()),
            common_name: common_name_of(&cert.subject),
            dns_names: cert.dns_names.clone(),
            not_after: Some(rfc3339_system(cert.not_after)),
            key_algorithm: Some(cert.key_algorithm.clone()),
            serial: Some(cert.serial_hex.clone()),
        }
    }
}

/// The certificate the pod currently reads, `None` if the volume has none yet. Only the
/// certificate file is opened: keys live elsewhere (`mem/keys`) and under another name.
fn read_served(paths: &VolumePaths, cert_file: &str) -> Result<Option<pki::CertInfo>, String> {
    let path = paths.files.join("..data").join(cert_file);
    let pem = match std::fs::read_to_string(&path) {
        Ok(pem) => pem,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("read {}: {e}", path.display())),
    };
    let chain = pki::parse_pem_chain(&pem).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(chain.into_iter().next())
}

fn common_name_of(subject: &str) -> Option<String> {
    subject
        .split(',')
        .find_map(|rdn| rdn.trim().strip_prefix("CN="))
        .map(str::to_string)
}

fn phase_name(phase: store::Phase) -> String {
    serde_json::to_value(phase)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| format!("{phase:?}"))
}

fn rfc3339(t: time::OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

fn rfc3339_system(t: SystemTime) -> String {
    rfc3339(store::to_offset(t))
}

fn short_id(id: &str) -> &str {
    id.get(..SHORT_ID_LEN).unwrap_or(id)
}

fn or_dash(v: &Option<String>) -> &str {
    v.as_deref().unwrap_or("-")
}

fn pod_label(v: &VolumeView) -> String {
    match (&v.pod_namespace, &v.pod_name) {
        (None, None) => "-".to_string(),
        (ns, name) => format!("{}/{}", or_dash(ns), or_dash(name)),
    }
}

fn issuer_label(v: &VolumeView) -> String {
    match (&v.issuer, &v.issuer_name) {
        (Some(kind), Some(name)) => format!("{kind}:{name}"),
        (Some(x), None) | (None, Some(x)) => x.clone(),
        (None, None) => "-".into(),
    }
}

/// The list as an aligned table, one volume per line.
pub fn render_table(views: &[VolumeView]) -> String {
    let header = [
        "VOLUME",
        "POD",
        "ISSUER",
        "SUBJECT",
        "DNS",
        "NOT-AFTER",
        "NEXT-RENEWAL",
        "PHASE",
        "FAILURES",
        "LAST-ERROR",
    ];
    let rows: Vec<[String; 10]> = views
        .iter()
        .map(|v| {
            [
                short_id(&v.volume_id).to_string(),
                pod_label(v),
                issuer_label(v),
                v.common_name
                    .clone()
                    .or_else(|| v.subject.clone())
                    .unwrap_or_else(|| "-".into()),
                if v.dns_names.is_empty() {
                    "-".into()
                } else {
                    v.dns_names.join(",")
                },
                or_dash(&v.not_after).to_string(),
                or_dash(&v.next_renewal).to_string(),
                or_dash(&v.phase).to_string(),
                v.failures.to_string(),
                v.last_error
                    .clone()
                    .or_else(|| v.problem.clone())
                    .unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let last = cells.len() - 1;
        let mut l = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i == last {
                l.push_str(cell);
            } else {
                let _ = write!(l, "{cell:<w$}  ");
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for row in &rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

/// One volume in detail, one field per line.
pub fn render_detail(v: &VolumeView) -> String {
    let mut out = String::new();
    let mut field = |name: &str, value: &str| {
        let _ = writeln!(out, "{:<15} {value}", format!("{name}:"));
    };
    field("Volume", &v.volume_id);
    field("Directory", &v.key);
    field("Pod", &pod_label(v));
    field(
        "Target",
        &v.target_path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "-".into()),
    );
    field("Phase", or_dash(&v.phase));
    field("Issuer", or_dash(&v.issuer));
    field("Issuer name", or_dash(&v.issuer_name));
    field("Issuer kind", or_dash(&v.issuer_kind));
    field("Subject", or_dash(&v.subject));
    field("Common name", or_dash(&v.common_name));
    field(
        "DNS names",
        &if v.dns_names.is_empty() {
            "-".to_string()
        } else {
            v.dns_names.join(", ")
        },
    );
    field("Serial", or_dash(&v.serial));
    field("Not after", or_dash(&v.not_after));
    field("Next renewal", or_dash(&v.next_renewal));
    field(
        "Revision",
        &v.revision
            .map(|r| r.to_string())
            .unwrap_or_else(|| "-".into()),
    );
    field(
        "Requests",
        &if v.requests.is_empty() {
            "-".to_string()
        } else {
            v.requests.join(", ")
        },
    );
    field("Key algorithm", or_dash(&v.key_algorithm));
    field(
        "Files",
        &v.files
            .as_ref()
            .map(|f| {
                let mut text = format!(
                    "{} (certificate), {} (key), {} (CA)",
                    f.certificate, f.private_key, f.ca
                );
                for other in &f.other {
                    text.push_str(", ");
                    text.push_str(other);
                }
                text
            })
            .unwrap_or_else(|| "-".into()),
    );
    field("Failures", &v.failures.to_string());
    field("Last error", or_dash(&v.last_error));
    field("Source", v.source);
    if let Some(p) = &v.problem {
        field("Problem", p);
    }
    out
}

/// Runs `certvol inspect`: the rendered output for stdout.
pub fn run(data_root: &Path, format: Format, volume: Option<&str>) -> Result<String, InspectError> {
    let store = open_existing(data_root)?;
    let views = collect(&store)?;
    Ok(match (volume, format) {
        (Some(q), Format::Json) => serde_json::to_string_pretty(select(&views, q)?)? + "\n",
        (Some(q), Format::Table) => render_detail(select(&views, q)?),
        (None, Format::Json) => serde_json::to_string_pretty(&views)? + "\n",
        (None, Format::Table) if views.is_empty() => "no certvol volumes on this node\n".into(),
        (None, Format::Table) => render_table(&views),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::files::store::{CertRecord, Phase, RenewalRecord, STATE_VERSION};
    use std::collections::BTreeMap;
    use std::time::Duration;

    fn state(volume_id: &str, ns: &str, pod: &str) -> VolumeState {
        let t = store::to_offset(SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000));
        VolumeState {
            version: STATE_VERSION,
            volume_id: volume_id.into(),
            target_path: format!("/var/lib/kubelet/pods/{pod}/volumes/kubernetes.io~csi/tls/mount")
                .into(),
            node_id: "node-1".into(),
            issuer: "local".into(),
            context: BTreeMap::from(
                [
                    ("csi.certvol.io/issuer-name", "ca"),
                    ("csi.certvol.io/common-name", "${POD_NAME}"),
                    (
                        "csi.certvol.io/dns-names",
                        "${POD_NAME}.${POD_NAMESPACE}.svc",
                    ),
                    ("csi.certvol.io/certificate-file", "cert.pem"),
                    ("csi.certvol.io/pkcs12-enable", "true"),
                    ("csi.certvol.io/chain-file", "chain.pem"),
                    (POD_NAME_KEY, pod),
                    (POD_NAMESPACE_KEY, ns),
                    ("csi.storage.k8s.io/pod.uid", "uid-1"),
                    ("csi.storage.k8s.io/serviceAccount.name", "default"),
                    ("csi.storage.k8s.io/ephemeral", "true"),
                ]
                .map(|(k, v)| (k.to_string(), v.to_string())),
            ),
            mount_group: None,
            phase: Phase::Published,
            current: Some(CertRecord {
                revision: 2,
                request_name: "certvol-abc-2".into(),
                serial: "0a0b".into(),
                not_before: t - Duration::from_secs(3600),
                not_after: t,
                renew_at: t - Duration::from_secs(1200),
            }),
            pending: None,
            last_revision: 2,
            requests: vec!["certvol-abc-2".into()],
            renewal: RenewalRecord {
                failures: 1,
                last_error: Some("issuer unavailable: connection refused".into()),
                next_attempt: None,
            },
            issuing_cas: Vec::new(),
        }
    }

    fn store_with(states: &[VolumeState]) -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for s in states {
            store.save(s).unwrap();
        }
        (dir, store)
    }

    #[test]
    fn a_missing_data_root_is_an_error_and_is_not_created() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("nope");
        let err = run(&root, Format::Table, None).unwrap_err();
        assert!(matches!(err, InspectError::NoDataRoot(_)));
        assert!(err.to_string().contains("nope"), "{err}");
        assert!(!root.exists(), "inspect must not create the data root");
    }

    #[test]
    fn views_come_from_state_and_attributes_when_no_certificate_is_readable() {
        let (_dir, store) = store_with(&[state("csi-aaaa1111", "shop", "web-0")]);
        let views = collect(&store).unwrap();
        assert_eq!(views.len(), 1);
        let v = &views[0];
        assert_eq!(v.pod_namespace.as_deref(), Some("shop"));
        assert_eq!(v.pod_name.as_deref(), Some("web-0"));
        assert_eq!(v.issuer.as_deref(), Some("local"));
        assert_eq!(v.issuer_name.as_deref(), Some("ca"));
        assert_eq!(v.common_name.as_deref(), Some("web-0"));
        assert_eq!(v.dns_names, vec!["web-0.shop.svc".to_string()]);
        assert_eq!(v.not_after.as_deref(), Some("2027-01-15T08:00:00Z"));
        assert_eq!(v.next_renewal.as_deref(), Some("2027-01-15T07:40:00Z"));
        assert_eq!(v.phase.as_deref(), Some("published"));
        assert_eq!(v.failures, 1);
        assert_eq!(v.revision, Some(2));
        assert_eq!(v.files.as_ref().unwrap().certificate, "cert.pem");
        assert_eq!(
            v.files.as_ref().unwrap().other,
            ["chain.pem", "keystore.p12"]
        );
        assert_eq!(v.source, "state");
        assert_eq!(v.problem, None);
    }

    #[test]
    fn the_served_certificate_wins_over_recorded_state() {
        let s = state("csi-aaaa1111", "shop", "web-0");
        let (_dir, store) = store_with(std::slice::from_ref(&s));
        let mut params = rcgen::CertificateParams::new(vec!["served.example".to_string()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "served");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let paths = store.paths(&s.volume_id);
        std::fs::create_dir_all(paths.files.join("..data")).unwrap();
        std::fs::write(paths.files.join("..data/cert.pem"), cert.pem()).unwrap();
        // A key next to it must never show up in any output.
        std::fs::write(paths.files.join("..data/tls.key"), key.serialize_pem()).unwrap();

        let v = &collect(&store).unwrap()[0];
        assert_eq!(v.source, "certificate");
        assert_eq!(v.common_name.as_deref(), Some("served"));
        assert_eq!(v.dns_names, vec!["served.example".to_string()]);
        assert_eq!(v.key_algorithm.as_deref(), Some("ECDSA P-256"));
        for out in [
            run(store.root(), Format::Json, None).unwrap(),
            run(store.root(), Format::Table, Some("shop/web-0")).unwrap(),
        ] {
            assert!(!out.contains("PRIVATE KEY"), "{out}");
            assert!(out.contains("served.example"), "{out}");
        }
    }

    #[test]
    fn selection_by_id_prefix_and_pod() {
        let (_dir, store) = store_with(&[
            state("csi-aaaa1111", "shop", "web-0"),
            state("csi-aaaa2222", "shop", "web-1"),
            state("csi-bbbb3333", "shop", "web-1"),
        ]);
        let views = collect(&store).unwrap();
        assert_eq!(
            select(&views, "csi-aaaa1111").unwrap().volume_id,
            "csi-aaaa1111"
        );
        assert_eq!(
            select(&views, "csi-aaaa1").unwrap().volume_id,
            "csi-aaaa1111"
        );
        assert_eq!(
            select(&views, "shop/web-0").unwrap().volume_id,
            "csi-aaaa1111"
        );
        let key = store.paths("csi-bbbb3333").key;
        assert_eq!(select(&views, &key).unwrap().volume_id, "csi-bbbb3333");
        match select(&views, "csi-aaaa").unwrap_err() {
            InspectError::Ambiguous { matches, .. } => {
                assert_eq!(matches, vec!["csi-aaaa1111", "csi-aaaa2222"])
            }
            e => panic!("{e}"),
        }
        assert!(matches!(
            select(&views, "shop/web-1").unwrap_err(),
            InspectError::Ambiguous { .. }
        ));
        let err = select(&views, "csi-zzzz").unwrap_err();
        assert!(matches!(err, InspectError::UnknownVolume(_)));
        assert!(err.to_string().contains("csi-zzzz"), "{err}");
        assert!(matches!(
            select(&views, "").unwrap_err(),
            InspectError::UnknownVolume(_)
        ));
    }

    #[test]
    fn table_and_json_show_the_same_volumes() {
        let (_dir, store) = store_with(&[
            state("csi-bbbb3333cccc4444dddd", "shop", "web-1"),
            state("csi-aaaa1111", "default", "api-0"),
        ]);
        // A directory without state (a crash before the first save) is listed, not hidden.
        std::fs::create_dir_all(store.paths("csi-orphan").dir).unwrap();
        let table = run(store.root(), Format::Table, None).unwrap();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 4, "{table}");
        assert!(
            lines[0].starts_with("VOLUME") && lines[0].contains("NOT-AFTER"),
            "{table}"
        );
        assert!(
            table.contains("csi-bbbb3333cccc "),
            "ids are shortened: {table}"
        );
        assert!(!table.contains("csi-bbbb3333cccc4444"), "{table}");
        assert!(
            table.contains("default/api-0") && table.contains("local:ca"),
            "{table}"
        );
        assert!(
            table.contains("issuer unavailable: connection refused"),
            "{table}"
        );
        assert!(table.contains("no state.json"), "{table}");

        let json: serde_json::Value =
            serde_json::from_str(&run(store.root(), Format::Json, None).unwrap()).unwrap();
        let arr = json.as_array().unwrap();
        assert_eq!(arr.len(), 3);
        let api = arr
            .iter()
            .find(|v| v["volume_id"] == "csi-aaaa1111")
            .unwrap();
        assert_eq!(api["pod_namespace"], "default");
        assert_eq!(api["pod_name"], "api-0");
        assert_eq!(api["issuer"], "local");
        assert_eq!(api["issuer_name"], "ca");
        assert_eq!(api["not_after"], "2027-01-15T08:00:00Z");
        assert_eq!(api["phase"], "published");
        assert_eq!(api["failures"], 1);
        assert_eq!(api["requests"][0], "certvol-abc-2");

        let detail = run(store.root(), Format::Table, Some("default/api-0")).unwrap();
        for want in [
            "Volume:         csi-aaaa1111",
            "Target:         /var/lib/kubelet/pods/api-0/volumes/kubernetes.io~csi/tls/mount",
            "Revision:       2",
            "Requests:       certvol-abc-2",
            "Key algorithm:  ECDSA P-256",
            "Files:          cert.pem (certificate), tls.key (key), ca.crt (CA)",
        ] {
            assert!(detail.contains(want), "{want:?} in\n{detail}");
        }
        let empty = tempfile::tempdir().unwrap();
        Store::open(empty.path()).unwrap();
        assert_eq!(
            run(empty.path(), Format::Table, None).unwrap(),
            "no certvol volumes on this node\n"
        );
        assert_eq!(run(empty.path(), Format::Json, None).unwrap(), "[]\n");
    }
}
