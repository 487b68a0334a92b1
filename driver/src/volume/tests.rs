//! What the volume layer's tests share: a scriptable issuer, a wall clock that runs ahead, and
//! a manager on directory mounts (no root, no socket). Each file's tests sit at its end.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;

use crate::base::clock::{Clock, SystemClock};
use crate::base::random::{Fixed, Random};
use crate::files::mount::DirMounter;
use crate::files::store::Store;
use crate::issuer::Issued;
use crate::issuer::local::{LocalCa, LocalCaConfig};
use crate::issuer::{IssueError, IssueRequest, Issuer};
use crate::kube::discovery::Apis;
use crate::runtime::scheduler::RenewOutcome;
use crate::spec::attrs;
use crate::spec::volume::{TargetPath, VolumeId};
use crate::x509::keys::{self, PrivateKey};
use crate::x509::pki;

use super::*;

/// How the scripted issuer answers (see [`set`]).
pub(super) const OK: u8 = 0;
pub(super) const UNAVAILABLE: u8 = 1;
pub(super) const DENIED: u8 = 2;
pub(super) const WRONG_KEY: u8 = 3;

/// The local CA behind a switch that makes it fail the way remote issuers do.
#[derive(Debug)]
pub(super) struct Scripted {
    pub(super) ca: LocalCa,
    pub(super) mode: AtomicU8,
    pub(super) calls: StdMutex<Vec<String>>,
    /// A directory created right after signing: blocks the next state save (see
    /// `block_saves`), as a data root filling up during the issuance would.
    pub(super) after_issue: StdMutex<Option<PathBuf>>,
}

impl Issuer for Scripted {
    fn kind(&self) -> &'static str {
        "scripted"
    }
    fn issue<'a>(&'a self, req: &'a IssueRequest) -> BoxFuture<'a, Result<Issued, IssueError>> {
        Box::pin(async move {
            self.calls.lock().unwrap().push(req.name.clone());
            match self.mode.load(Ordering::SeqCst) {
                UNAVAILABLE => Err(IssueError::Unavailable {
                    message: "connection refused".into(),
                }),
                DENIED => Err(IssueError::Denied {
                    request: req.name.clone(),
                    message: "policy says no".into(),
                }),
                WRONG_KEY => {
                    let other = PrivateKey::generate(req.cert.key_algorithm).unwrap();
                    let csr = keys::build_csr(&req.cert, &other).unwrap();
                    let mut swapped = req.clone();
                    swapped.name = format!("{}-other", req.name);
                    swapped.csr_der = csr.der;
                    swapped.csr_pem = csr.pem;
                    self.ca.issue(&swapped).await
                }
                _ => {
                    let issued = self.ca.issue(req).await;
                    if let Some(dir) = self.after_issue.lock().unwrap().take() {
                        fs::create_dir(dir).unwrap();
                    }
                    issued
                }
            }
        })
    }
    fn forget<'a>(
        &'a self,
        namespace: &'a str,
        names: &'a [String],
    ) -> BoxFuture<'a, Result<(), IssueError>> {
        self.ca.forget(namespace, names)
    }
}

/// The manager's wall clock: the system's, moved ahead by `ahead_secs` (the CA keeps the
/// system's), to make what the CA signs look old to the node.
#[derive(Debug, Default)]
pub(super) struct Ahead {
    pub(super) ahead_secs: std::sync::atomic::AtomicU64,
}

impl Clock for Ahead {
    fn now(&self) -> SystemTime {
        SystemTime::now() + Duration::from_secs(self.ahead_secs.load(Ordering::SeqCst))
    }
}

pub(super) struct Fixture {
    pub(super) _dir: tempfile::TempDir,
    pub(super) mgr: Arc<VolumeManager>,
    pub(super) issuer: Arc<Scripted>,
    pub(super) pods: PathBuf,
    pub(super) ahead: Arc<Ahead>,
    pub(super) _scheduler: crate::runtime::scheduler::Scheduler,
}

/// The embedded CA in the store's data root, signing for at most a day.
pub(super) fn test_ca(store: &Store, clock: Arc<dyn Clock>) -> LocalCa {
    LocalCa::open(
        LocalCaConfig {
            dir: store.root().join("local-ca"),
            cert_file: None,
            key_file: None,
            max_duration: Duration::from_secs(86400),
            // These tests are about the volume lifecycle, not the names a volume may have.
            policy: crate::issuer::policy::LocalPolicy {
                allow_dns: vec!["**".parse().unwrap()],
                ..Default::default()
            },
        },
        clock,
    )
    .unwrap()
}

pub(super) fn fixture() -> Fixture {
    fixture_with(None)
}

/// A fixture whose manager knows what the cluster serves (a node with API access).
pub(super) fn fixture_with(apis: Option<Apis>) -> Fixture {
    fixture_configured(apis, |_| {})
}

/// A fixture whose volume layer's [`Config`] `edit` changes first.
pub(super) fn fixture_configured(apis: Option<Apis>, edit: impl FnOnce(&mut Config)) -> Fixture {
    fixture_built(apis, edit, None)
}

/// A fixture whose renewal jitter always draws `sample`.
pub(super) fn fixture_sampled(sample: f64) -> Fixture {
    fixture_built(None, |_| {}, Some(Arc::new(Fixed(sample))))
}

pub(super) fn fixture_built(
    apis: Option<Apis>,
    edit: impl FnOnce(&mut Config),
    random: Option<Arc<dyn Random>>,
) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let ahead = Arc::new(Ahead::default());
    let store = Store::open(&dir.path().join("root")).unwrap();
    let ca = test_ca(&store, clock.clone());
    let issuer = Arc::new(Scripted {
        ca,
        mode: AtomicU8::new(OK),
        calls: StdMutex::new(Vec::new()),
        after_issue: StdMutex::new(None),
    });
    let (handle, scheduler) = crate::runtime::scheduler::channel();
    let mut cfg = Config::new("node-a");
    cfg.kubelet_dir = dir.path().to_path_buf();
    edit(&mut cfg);
    let services = Services {
        mounter: Arc::new(DirMounter::default()),
        issuer: issuer.clone(),
        clock: ahead.clone(),
        scheduler: handle,
        metrics: crate::obs::metrics::Metrics::detached(),
    };
    let mut mgr = VolumeManager::new(cfg, store, services);
    if let Some(apis) = apis {
        mgr = mgr.with_apis(apis);
    }
    if let Some(random) = random {
        mgr = mgr.with_random(random);
    }
    let mgr = Arc::new(mgr);
    let pods = dir.path().join("pods");
    Fixture {
        _dir: dir,
        mgr,
        issuer,
        pods,
        ahead,
        _scheduler: scheduler,
    }
}

pub(super) fn params(f: &Fixture, name: &str) -> PublishParams {
    let target = f
        .pods
        .join(name)
        .join("volumes/kubernetes.io~csi/tls/mount");
    fs::create_dir_all(target.parent().unwrap()).unwrap();
    let context = [
        ("csi.certvol.io/issuer-name", "ca"),
        ("csi.certvol.io/dns-names", "${POD_NAME}.svc"),
        ("csi.storage.k8s.io/pod.name", name),
        ("csi.storage.k8s.io/pod.namespace", "default"),
        ("csi.storage.k8s.io/pod.uid", "uid"),
        ("csi.storage.k8s.io/serviceAccount.name", "default"),
        ("csi.storage.k8s.io/ephemeral", "true"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    PublishParams {
        volume_id: id(&format!("csi-{name}")),
        target_path: target_path(f, target),
        context,
        mount_group: None,
        secrets: HashMap::new(),
    }
}

/// A volume id as the CSI layer parses it.
pub(super) fn id(volume_id: &str) -> VolumeId {
    VolumeId::parse(volume_id).unwrap()
}

/// A target path as the CSI layer parses it, against the fixture's kubelet directory.
pub(super) fn target_path(f: &Fixture, path: impl Into<PathBuf>) -> TargetPath {
    TargetPath::parse(&f.mgr.config().kubelet_dir, path).unwrap()
}

pub(super) fn cert_of(target: &Path) -> Vec<u8> {
    fs::read(target.join("tls.crt")).unwrap()
}

pub(super) fn set(f: &Fixture, mode: u8) {
    f.issuer.mode.store(mode, Ordering::SeqCst);
}

pub(super) fn calls(f: &Fixture) -> Vec<String> {
    f.issuer.calls.lock().unwrap().clone()
}

/// The request publish parsed is kept with the volume's slot and used by its renewals, which
/// do not parse the recorded context again.
#[tokio::test]
async fn a_volumes_request_is_parsed_at_publish_and_kept_with_its_slot() {
    let f = fixture();
    let p = params(&f, "parsed");
    f.mgr.publish(p.clone()).await.unwrap();
    let kept = || {
        let slots = f.mgr.slots.lock();
        slots[p.volume_id.as_str()].request.lock().clone().unwrap()
    };
    let at_publish = kept();
    assert!(matches!(
        f.mgr.renew_volume(&p.volume_id).await,
        RenewOutcome::Renewed { .. }
    ));
    assert!(
        Arc::ptr_eq(&at_publish, &kept()),
        "the renewal kept the same parse"
    );
}

pub(super) fn token_of(f: &Fixture, volume_id: &str) -> Option<String> {
    let tokens = f.mgr.tokens.lock();
    tokens.get(volume_id).map(|t| t.expose().to_owned())
}

pub(super) fn with_token(p: PublishParams, token: &str) -> PublishParams {
    let json =
        format!(r#"{{"": {{"token": "{token}", "expirationTimestamp": "2030-01-01T00:00:00Z"}}}}"#);
    with_attrs(p, &[(attrs::TOKENS_KEY, json.as_str())])
}

/// The `n`th certvol volume of pod `pod`: same pod directory, its own volume name and id.
pub(super) fn pod_volume(f: &Fixture, pod: &str, n: usize) -> PublishParams {
    let mut p = params(f, pod);
    p.volume_id = id(&format!("csi-{pod}-{n}"));
    p.target_path = target_path(
        f,
        f.pods
            .join(pod)
            .join(format!("volumes/kubernetes.io~csi/tls-{n}/mount")),
    );
    fs::create_dir_all(p.target_path.parent().unwrap()).unwrap();
    p
}

/// Where a directory makes the next save of `volume_id`'s state fail: the temporary file
/// `fsutil::atomic_write` opens. Unit tests cannot fill or remount the disk; the save
/// failing is what matters here (the e2e fault campaign uses a real full/read-only tmpfs).
pub(super) fn block_saves(f: &Fixture, volume_id: &str) -> PathBuf {
    f.mgr
        .store()
        .paths(volume_id)
        .dir
        .join(format!(".state.json.tmp{}", std::process::id()))
}

pub(super) fn with_attrs(mut p: PublishParams, attrs: &[(&str, &str)]) -> PublishParams {
    for (k, v) in attrs {
        p.context.insert((*k).to_string(), (*v).to_string());
    }
    p
}

pub(super) fn bundle_ders(target: &Path) -> Vec<Vec<u8>> {
    let pem = String::from_utf8(fs::read(target.join("ca-bundle.crt")).unwrap()).unwrap();
    pki::parse_pem_chain(&pem)
        .unwrap()
        .into_iter()
        .map(|c| c.der)
        .collect()
}

/// Lists a directory tree (paths relative to `root`), to show nothing changed in it.
pub(super) fn tree(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if fs::symlink_metadata(&path).unwrap().is_dir() {
                todo.push(path.clone());
            }
            out.push(path.strip_prefix(root).unwrap().to_path_buf());
        }
    }
    out.sort();
    out
}
