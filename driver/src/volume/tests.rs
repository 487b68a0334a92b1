//! The volume layer against a scriptable issuer and directory mounts: no root, no socket.
use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;

use crate::base::clock::Clock;
use crate::base::clock::SystemClock;
use crate::base::random::{Fixed, Random};
use crate::files::mount::DirMounter;
use crate::files::store::{DiskFault, Phase, RenewalRecord, Store, StoreError};
use crate::issuer::Issued;
use crate::issuer::local::{LocalCa, LocalCaConfig};
use crate::issuer::{self, IssueError, IssueRequest, Issuer};
use crate::kube::discovery::Apis;
use crate::runtime::refresh::Message;
use crate::runtime::scheduler::RenewOutcome;
use crate::spec::attrs;
use crate::spec::request::KeyAlgorithm;
use crate::x509::keys::{self, PrivateKey};
use crate::x509::pki;

use super::*;
use super::{error::*, trust::*};

const OK: u8 = 0;
const UNAVAILABLE: u8 = 1;
const DENIED: u8 = 2;
const WRONG_KEY: u8 = 3;

/// The local CA behind a switch that makes it fail the way remote issuers do.
#[derive(Debug)]
struct Scripted {
    ca: LocalCa,
    mode: AtomicU8,
    calls: StdMutex<Vec<String>>,
    /// A directory created right after signing: blocks the next state save (see
    /// `block_saves`), as a data root filling up during the issuance would.
    after_issue: StdMutex<Option<PathBuf>>,
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
struct Ahead {
    ahead_secs: std::sync::atomic::AtomicU64,
}

impl Clock for Ahead {
    fn now(&self) -> SystemTime {
        SystemTime::now() + Duration::from_secs(self.ahead_secs.load(Ordering::SeqCst))
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    mgr: Arc<VolumeManager>,
    issuer: Arc<Scripted>,
    pods: PathBuf,
    ahead: Arc<Ahead>,
    _scheduler: crate::runtime::scheduler::Scheduler,
}

/// The embedded CA in the store's data root, signing for at most a day.
fn test_ca(store: &Store, clock: Arc<dyn Clock>) -> LocalCa {
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

fn fixture() -> Fixture {
    fixture_with(None)
}

/// A fixture whose manager knows what the cluster serves (a node with API access).
fn fixture_with(apis: Option<Apis>) -> Fixture {
    fixture_configured(apis, |_| {})
}

/// A fixture whose volume layer's [`Config`] `edit` changes first.
fn fixture_configured(apis: Option<Apis>, edit: impl FnOnce(&mut Config)) -> Fixture {
    fixture_built(apis, edit, None)
}

/// A fixture whose renewal jitter always draws `sample`.
fn fixture_sampled(sample: f64) -> Fixture {
    fixture_built(None, |_| {}, Some(Arc::new(Fixed(sample))))
}

fn fixture_built(
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

fn params(f: &Fixture, name: &str) -> PublishParams {
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
        volume_id: format!("csi-{name}"),
        target_path: target,
        context,
        mount_group: None,
        secrets: HashMap::new(),
    }
}

fn cert_of(target: &Path) -> Vec<u8> {
    fs::read(target.join("tls.crt")).unwrap()
}

fn set(f: &Fixture, mode: u8) {
    f.issuer.mode.store(mode, Ordering::SeqCst);
}

fn calls(f: &Fixture) -> Vec<String> {
    f.issuer.calls.lock().unwrap().clone()
}

/// No ClusterTrustBundle API (a 1.30 cluster, or 1.33-1.36 without the beta enabled): a
/// volume whose default ca-source or trust attributes need one fails before anything is
/// created, FailedPrecondition naming the attribute; one that needs none is published.
#[tokio::test]
async fn without_the_clustertrustbundle_api_volumes_that_need_it_fail_cleanly() {
    use crate::kube::discovery::{ApiError, Served};
    use tonic::Code;
    let f = fixture_with(Some(Apis::fixed(Served {
        cluster_trust_bundles: None,
        missing: None,
    })));
    let with = |name: &str, set: &[(&str, &str)], unset: &[&str]| {
        let mut p = params(&f, name);
        for key in unset {
            p.context.remove(*key);
        }
        for (k, v) in set {
            p.context.insert((*k).to_owned(), (*v).to_owned());
        }
        p
    };
    let cases = [
        (
            with(
                "csr-default",
                &[("csi.certvol.io/signer-name", "example.com/w")],
                &["csi.certvol.io/issuer-name"],
            ),
            "csi.certvol.io/ca-source",
        ),
        (
            with(
                "trust-named",
                &[("csi.certvol.io/trust-cluster-bundles", "example.com:s:a")],
                &[],
            ),
            "csi.certvol.io/trust-cluster-bundles",
        ),
        (
            with(
                "trust-signer",
                &[("csi.certvol.io/trust-signer-name", "example.com/s")],
                &[],
            ),
            "csi.certvol.io/trust-signer-name",
        ),
    ];
    for (p, attribute) in cases {
        let err = f.mgr.publish(p.clone()).await.unwrap_err();
        assert!(
            matches!(&err, VolumeError::Api(ApiError::NoClusterTrustBundles(e)) if e.attribute == attribute),
            "{err:?}"
        );
        let status = crate::csi::RpcError::Volume(err).status();
        assert_eq!(status.code(), Code::FailedPrecondition);
        let msg = status.message();
        assert!(
            msg.starts_with(&format!("volume attribute {attribute:?} (")),
            "{msg}"
        );
        assert!(
            msg.contains("needs the ClusterTrustBundle API, which this cluster does not serve in any version: certificates.k8s.io/v1 (Kubernetes 1.37 and later), or certificates.k8s.io/v1beta1 on 1.33-1.36"),
            "{msg}"
        );
        // Nothing left behind, nothing filed.
        assert!(f.mgr.store().load(&p.volume_id).unwrap().is_none());
        assert!(!p.target_path.exists());
    }
    assert!(calls(&f).is_empty());
    assert_eq!(
        fs::read_dir(f.mgr.store().root().join("volumes"))
            .unwrap()
            .count(),
        0
    );

    // A ConfigMap ca-source needs no ClusterTrustBundle API.
    let p = with(
        "csr-configmap",
        &[
            ("csi.certvol.io/signer-name", "example.com/w"),
            ("csi.certvol.io/ca-source", "configmap:corp-ca/ca.crt"),
        ],
        &["csi.certvol.io/issuer-name"],
    );
    f.mgr.publish(p).await.unwrap();
}

/// The issuer's API is missing (cert-manager not installed): FailedPrecondition naming it,
/// nothing created.
#[tokio::test]
async fn a_missing_issuer_api_fails_publish_naming_it() {
    use crate::kube::discovery::{CERT_MANAGER_API, CtbVersion, Served};
    let f = fixture_with(Some(Apis::fixed(Served {
        cluster_trust_bundles: Some(CtbVersion::V1),
        missing: Some(CERT_MANAGER_API),
    })));
    let p = params(&f, "web");
    let status = crate::csi::RpcError::Volume(f.mgr.publish(p.clone()).await.unwrap_err()).status();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    assert!(
        status
            .message()
            .starts_with("this cluster does not serve cert-manager.io/v1 certificaterequests, which --issuer cert-manager needs"),
        "{}",
        status.message()
    );
    assert!(calls(&f).is_empty());
    assert!(f.mgr.store().load(&p.volume_id).unwrap().is_none());
}

/// Renewal times are jittered with the injected samples only: with a fixed sample, the time
/// recorded at publish and after a renewal is exactly the renewer policy's for the certificate.
#[tokio::test]
async fn with_a_fixed_sample_the_renewal_time_is_the_policys() {
    // The recorded renewal time, the policy's, and how long after not-before it falls.
    let check = |f: &Fixture, p: &PublishParams, sample: f64, when: &str| {
        let current = f
            .mgr
            .store()
            .load(&p.volume_id)
            .unwrap()
            .unwrap()
            .current
            .unwrap();
        let req = attrs::parse(&p.context).unwrap();
        let want = certvol_renewer::renew_at(
            store::to_system(current.not_before),
            store::to_system(current.not_after),
            req.renew_before,
            &f.mgr.config().policy,
            sample,
        );
        assert_eq!(
            current.renew_at,
            store::to_offset(want),
            "{when}, sample {sample}"
        );
        current.renew_at - current.not_before
    };
    let mut after_not_before = Vec::new();
    for sample in [0.0, 0.75] {
        let f = fixture_sampled(sample);
        let p = params(&f, "jitter");
        f.mgr.publish(p.clone()).await.unwrap();
        check(&f, &p, sample, "at publish");
        assert!(matches!(
            f.mgr.renew_volume(&p.volume_id).await,
            RenewOutcome::Renewed { .. }
        ));
        after_not_before.push(check(&f, &p, sample, "after a renewal"));
    }
    assert_ne!(
        after_not_before[0], after_not_before[1],
        "the sample moves the renewal time"
    );
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
        slots[&p.volume_id].request.lock().clone().unwrap()
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

#[tokio::test]
async fn publish_then_republish_issues_once() {
    let f = fixture();
    let p = params(&f, "web");
    assert_eq!(
        f.mgr.publish(p.clone()).await.unwrap(),
        Published::Issued { revision: 1 }
    );
    assert_eq!(
        f.mgr.publish(p.clone()).await.unwrap(),
        Published::Unchanged
    );
    assert_eq!(calls(&f).len(), 1);
    let state = f.mgr.store().load("csi-web").unwrap().unwrap();
    assert_eq!(state.phase, Phase::Published);
    assert_eq!(
        state.requests,
        vec![issuer::request_name("node-a", "csi-web", 1)]
    );
    let cert = pki::parse_pem_chain(&String::from_utf8(cert_of(&p.target_path)).unwrap()).unwrap();
    assert_eq!(cert[0].dns_names, vec!["web.svc".to_string()]);
}

#[tokio::test]
async fn transient_failure_keeps_the_pending_request_and_the_retry_resumes_it() {
    let f = fixture();
    let p = params(&f, "slow");
    set(&f, UNAVAILABLE);
    let err = f.mgr.publish(p.clone()).await.unwrap_err();
    assert!(
        matches!(err, VolumeError::Issue(IssueError::Unavailable { .. })),
        "{err}"
    );
    let state = f.mgr.store().load("csi-slow").unwrap().unwrap();
    assert_eq!(state.phase, Phase::Issuing);
    let pending = state.pending.clone().unwrap();
    assert!(f.mgr.store().paths("csi-slow").key(1).exists());

    set(&f, OK);
    f.mgr.publish(p.clone()).await.unwrap();
    // Same request name both times: the retry resumed, it did not file a second request.
    assert_eq!(
        calls(&f),
        vec![pending.request_name.clone(), pending.request_name]
    );
    // The pending key became the current one where it was: state names revision 1, and its
    // key is the only one in the volume.
    let state = f.mgr.store().load("csi-slow").unwrap().unwrap();
    assert_eq!(state.current.map(|c| c.revision), Some(1));
    let keys: Vec<String> = fs::read_dir(&f.mgr.store().paths("csi-slow").keys)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".pk8"))
        .collect();
    assert_eq!(keys, ["key-1.pk8"]);
}

#[tokio::test]
async fn final_failures_leave_nothing_behind() {
    for mode in [DENIED, WRONG_KEY] {
        let f = fixture();
        let p = params(&f, "nope");
        set(&f, mode);
        let err = f.mgr.publish(p.clone()).await.unwrap_err();
        match mode {
            DENIED => assert!(err.to_string().contains("denied: policy says no"), "{err}"),
            _ => assert!(
                matches!(err, VolumeError::BadCertificate { .. })
                    && err.to_string().contains("does not match"),
                "{err}"
            ),
        }
        assert!(f.mgr.store().load("csi-nope").unwrap().is_none());
        assert!(!f.mgr.store().paths("csi-nope").dir.exists());
        assert!(fs::symlink_metadata(&p.target_path).is_err(), "no target");
        assert_eq!(f.mgr.volume_count(), 0);
    }
}

fn token_of(f: &Fixture, volume_id: &str) -> Option<String> {
    let tokens = f.mgr.tokens.lock();
    tokens.get(volume_id).map(|t| t.expose().to_owned())
}

fn with_token(p: PublishParams, token: &str) -> PublishParams {
    let json =
        format!(r#"{{"": {{"token": "{token}", "expirationTimestamp": "2030-01-01T00:00:00Z"}}}}"#);
    with_attrs(p, &[(attrs::TOKENS_KEY, json.as_str())])
}

#[tokio::test]
async fn a_pod_token_is_kept_only_for_the_volume_it_published() {
    let f = fixture();
    let p = params(&f, "tok");
    f.mgr.publish(with_token(p.clone(), "t1")).await.unwrap();
    assert_eq!(token_of(&f, "csi-tok").as_deref(), Some("t1"));

    // The same volume id at another target is refused and must not replace the live token.
    let mut elsewhere = with_token(p.clone(), "t2");
    elsewhere.target_path = f.pods.join("other/volumes/kubernetes.io~csi/tls/mount");
    let err = f.mgr.publish(elsewhere).await.unwrap_err();
    assert!(matches!(err, VolumeError::OtherTarget { .. }), "{err}");
    assert_eq!(token_of(&f, "csi-tok").as_deref(), Some("t1"));

    // kubelet's republish (requiresRepublish) brings a fresh token: that one is kept.
    let again = f.mgr.publish(with_token(p.clone(), "t3")).await.unwrap();
    assert_eq!(again, Published::Unchanged);
    assert_eq!(token_of(&f, "csi-tok").as_deref(), Some("t3"));

    // A publish that fails for good leaves no token behind.
    set(&f, DENIED);
    let failed = params(&f, "nope");
    f.mgr.publish(with_token(failed, "t4")).await.unwrap_err();
    assert_eq!(token_of(&f, "csi-nope"), None);

    set(&f, OK);
    f.mgr.unpublish("csi-tok", &p.target_path).await.unwrap();
    assert_eq!(token_of(&f, "csi-tok"), None);
}

/// The `n`th certvol volume of pod `pod`: same pod directory, its own volume name and id.
fn pod_volume(f: &Fixture, pod: &str, n: usize) -> PublishParams {
    let mut p = params(f, pod);
    p.volume_id = format!("csi-{pod}-{n}");
    p.target_path = f
        .pods
        .join(pod)
        .join(format!("volumes/kubernetes.io~csi/tls-{n}/mount"));
    fs::create_dir_all(p.target_path.parent().unwrap()).unwrap();
    p
}

#[tokio::test]
async fn a_pod_gets_at_most_its_share_of_volumes_and_a_refusal_leaves_nothing() {
    let f = fixture_configured(None, |cfg| cfg.limits.max_volumes_per_pod = 2);
    for n in 0..2 {
        f.mgr.publish(pod_volume(&f, "greedy", n)).await.unwrap();
    }
    let third = pod_volume(&f, "greedy", 2);
    let err = f.mgr.publish(third.clone()).await.unwrap_err();
    assert!(matches!(err, VolumeError::Limit(_)), "{err}");
    assert!(
        err.to_string()
            .contains("pod default/greedy already has 2 certvol volumes on this node"),
        "{err}"
    );
    assert!(f.mgr.store().load(&third.volume_id).unwrap().is_none());
    assert!(
        fs::symlink_metadata(&third.target_path).is_err(),
        "no target"
    );
    assert_eq!(calls(&f).len(), 2, "nothing filed for the refused volume");

    // Another pod is not affected, and a republish of a counted volume is not a new one.
    f.mgr.publish(pod_volume(&f, "other", 0)).await.unwrap();
    let again = f.mgr.publish(pod_volume(&f, "greedy", 1)).await.unwrap();
    assert_eq!(again, Published::Unchanged);

    // An unpublish gives the place back.
    let first = pod_volume(&f, "greedy", 0);
    f.mgr
        .unpublish(&first.volume_id, &first.target_path)
        .await
        .unwrap();
    f.mgr.publish(third).await.unwrap();
}

#[tokio::test]
async fn a_duration_outside_the_node_limits_is_refused_before_anything_is_made() {
    let f = fixture();
    let p = with_attrs(
        params(&f, "short"),
        &[("csi.cert-manager.io/duration", "10m")],
    );
    let err = f.mgr.publish(p.clone()).await.unwrap_err();
    assert!(matches!(err, VolumeError::Limit(_)), "{err}");
    assert!(err.to_string().contains("--min-duration"), "{err}");
    assert!(f.mgr.store().load("csi-short").unwrap().is_none());
    assert!(!f.mgr.store().paths("csi-short").dir.exists());
    assert!(calls(&f).is_empty());
}

/// The node's volumes fill `--max-volume-bytes`: a new publish fails with FailedPrecondition
/// naming the flag and leaves nothing behind; a renewal keeps the volume's current files and
/// is retried; once room is made both succeed.
#[tokio::test]
async fn the_tmpfs_budget_refuses_publishes_and_renewals_past_it() {
    use crate::files::budget::PAGE;
    let budget = 1 << 20;
    let f = fixture_configured(None, |c| c.max_volume_bytes = budget);
    let a = params(&f, "a");
    f.mgr.publish(a.clone()).await.unwrap();
    let (used, max) = f.mgr.tmpfs_usage();
    assert_eq!(max, budget);
    let paths = f.mgr.store().paths("csi-a");
    // Key, certificate and CA file, each a page, and the private key under keys/.
    assert_eq!(used, crate::files::budget::measure(&paths.mem));
    assert!(used >= 4 * PAGE, "{used}");
    // Other volumes hold the rest of the budget.
    f.mgr.tmpfs.set("others", budget - used);

    let b = params(&f, "b");
    let err = f.mgr.publish(b.clone()).await.unwrap_err();
    let status = crate::csi::RpcError::Volume(err).status();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    let msg = status.message();
    assert!(msg.contains("--max-volume-bytes"), "{msg}");
    assert!(msg.contains(&format!("budget of {budget} bytes")), "{msg}");
    assert!(msg.contains("this volume: "), "{msg}");
    assert!(f.mgr.store().load("csi-b").unwrap().is_none());
    assert!(!f.mgr.store().paths("csi-b").dir.exists());
    assert_eq!(
        calls(&f).len(),
        1,
        "nothing is signed for a volume that cannot fit"
    );
    assert_eq!(
        f.mgr.tmpfs_usage().0,
        budget,
        "the refused volume is not charged"
    );

    let before = cert_of(&a.target_path);
    let outcome = f.mgr.renew_volume("csi-a").await;
    assert!(
        matches!(outcome, RenewOutcome::Failed { .. }),
        "{outcome:?}"
    );
    assert_eq!(cert_of(&a.target_path), before, "old files stay in place");
    let state = f.mgr.store().load("csi-a").unwrap().unwrap();
    let last = state.renewal.last_error.unwrap_or_default();
    assert!(last.contains("--max-volume-bytes"), "{last}");

    f.mgr.tmpfs.release("others");
    let outcome = f.mgr.renew_volume("csi-a").await;
    assert!(
        matches!(outcome, RenewOutcome::Renewed { .. }),
        "{outcome:?}"
    );
    assert_ne!(cert_of(&a.target_path), before);
    f.mgr.publish(b.clone()).await.unwrap();
    let both = crate::files::budget::measure(&paths.mem)
        + crate::files::budget::measure(&f.mgr.store().paths("csi-b").mem);
    assert_eq!(f.mgr.tmpfs_usage().0, both);
    f.mgr.unpublish("csi-b", &b.target_path).await.unwrap();
    assert_eq!(
        f.mgr.tmpfs_usage().0,
        crate::files::budget::measure(&paths.mem)
    );
}

#[tokio::test]
async fn failed_renewals_keep_the_old_files_back_off_and_recover() {
    let f = fixture();
    let p = params(&f, "renew");
    f.mgr.publish(p.clone()).await.unwrap();
    let before = cert_of(&p.target_path);

    set(&f, UNAVAILABLE);
    let outcome = f.mgr.renew_volume("csi-renew").await;
    let RenewOutcome::Failed { retry_at } = outcome else {
        panic!("{outcome:?}")
    };
    assert!(retry_at > SystemTime::now());
    assert_eq!(cert_of(&p.target_path), before, "old files stay in place");
    let state = f.mgr.store().load("csi-renew").unwrap().unwrap();
    assert_eq!(state.renewal.failures, 1);
    assert!(
        state
            .renewal
            .last_error
            .as_deref()
            .unwrap()
            .contains("connection refused")
    );
    let rev2 = issuer::request_name("node-a", "csi-renew", 2);
    assert_eq!(state.pending.as_ref().unwrap().request_name, rev2);

    // Denied is final for that request: the next attempt files revision 3.
    set(&f, DENIED);
    assert!(matches!(
        f.mgr.renew_volume("csi-renew").await,
        RenewOutcome::Failed { .. }
    ));
    let state = f.mgr.store().load("csi-renew").unwrap().unwrap();
    assert_eq!(state.renewal.failures, 2);
    assert!(state.pending.is_none());

    set(&f, OK);
    let outcome = f.mgr.renew_volume("csi-renew").await;
    assert!(
        matches!(outcome, RenewOutcome::Renewed { .. }),
        "{outcome:?}"
    );
    assert_ne!(cert_of(&p.target_path), before);
    let state = f.mgr.store().load("csi-renew").unwrap().unwrap();
    assert_eq!(state.renewal, RenewalRecord::default());
    let rev3 = issuer::request_name("node-a", "csi-renew", 3);
    assert_eq!(state.current.as_ref().unwrap().request_name, rev3);
    assert_eq!(
        state.requests,
        vec![rev3],
        "older requests pruned (history 1)"
    );
    let names = calls(&f);
    assert_eq!(
        names[1..],
        [
            rev2.clone(),
            rev2,
            issuer::request_name("node-a", "csi-renew", 3)
        ]
    );
}

/// Where a directory makes the next save of `volume_id`'s state fail: the temporary file
/// `fsutil::atomic_write` opens. Unit tests cannot fill or remount the disk; the save
/// failing is what matters here (the e2e fault campaign uses a real full/read-only tmpfs).
fn block_saves(f: &Fixture, volume_id: &str) -> PathBuf {
    f.mgr
        .store()
        .paths(volume_id)
        .dir
        .join(format!(".state.json.tmp{}", std::process::id()))
}

#[tokio::test]
async fn a_renewal_whose_pending_record_is_refused_files_nothing() {
    let f = fixture();
    let p = params(&f, "nosave");
    f.mgr.publish(p.clone()).await.unwrap();
    let before = cert_of(&p.target_path);
    let on_disk = f.mgr.store().load("csi-nosave").unwrap().unwrap();
    let blocker = block_saves(&f, "csi-nosave");
    fs::create_dir(&blocker).unwrap();

    let outcome = f.mgr.renew_volume("csi-nosave").await;
    assert!(
        matches!(outcome, RenewOutcome::Failed { .. }),
        "{outcome:?}"
    );
    assert_eq!(calls(&f).len(), 1, "no request filed without its record");
    assert_eq!(cert_of(&p.target_path), before);
    assert_eq!(f.mgr.store().load("csi-nosave").unwrap().unwrap(), on_disk);
    // Nothing was recorded, so memory must not claim a pending request either.
    let in_memory = f.mgr.status("csi-nosave").await.unwrap().unwrap();
    assert_eq!(in_memory.pending, None);
    assert_eq!(in_memory.last_revision, on_disk.last_revision);

    fs::remove_dir(&blocker).unwrap();
    let outcome = f.mgr.renew_volume("csi-nosave").await;
    assert!(
        matches!(outcome, RenewOutcome::Renewed { .. }),
        "{outcome:?}"
    );
    assert_eq!(
        calls(&f)[1..],
        [issuer::request_name("node-a", "csi-nosave", 2)]
    );
    assert_ne!(cert_of(&p.target_path), before);
}

#[tokio::test]
async fn a_renewal_whose_result_cannot_be_recorded_is_finished_without_a_new_request() {
    let f = fixture();
    let p = params(&f, "unrec");
    f.mgr.publish(p.clone()).await.unwrap();
    let before = cert_of(&p.target_path);
    let blocker = block_saves(&f, "csi-unrec");
    *f.issuer.after_issue.lock().unwrap() = Some(blocker.clone());

    let outcome = f.mgr.renew_volume("csi-unrec").await;
    assert!(
        matches!(outcome, RenewOutcome::Failed { .. }),
        "{outcome:?}"
    );
    let rev2 = issuer::request_name("node-a", "csi-unrec", 2);
    assert_eq!(&calls(&f)[1..], std::slice::from_ref(&rev2));
    // The new pair is in place and matches; only its record is missing.
    let written = cert_of(&p.target_path);
    assert_ne!(written, before);
    let leaf = pki::parse_pem_chain(&String::from_utf8(written.clone()).unwrap()).unwrap();
    let key =
        PrivateKey::from_pem(&fs::read_to_string(p.target_path.join("tls.key")).unwrap()).unwrap();
    assert!(pki::key_matches(&leaf[0], &key).unwrap());
    let on_disk = f.mgr.store().load("csi-unrec").unwrap().unwrap();
    assert_eq!(on_disk.current.as_ref().unwrap().revision, 1);
    assert_eq!(on_disk.pending.as_ref().unwrap().request_name, rev2);

    // The retry resumes the same request with the key already in place: the issuer is
    // asked for revision 2 again (and answers with what it signed), never for a third.
    fs::remove_dir(&blocker).unwrap();
    let outcome = f.mgr.renew_volume("csi-unrec").await;
    assert!(
        matches!(outcome, RenewOutcome::Renewed { .. }),
        "{outcome:?}"
    );
    assert_eq!(calls(&f)[1..], [rev2.clone(), rev2.clone()]);
    assert_eq!(cert_of(&p.target_path), written, "the same certificate");
    let state = f.mgr.store().load("csi-unrec").unwrap().unwrap();
    let current = state.current.unwrap();
    assert_eq!((current.revision, current.request_name), (2, rev2));
    assert_eq!(current.serial, leaf[0].serial_hex);
    assert_eq!(state.pending, None);
    assert_eq!(state.renewal, RenewalRecord::default());
}

#[test]
fn disk_faults_name_the_data_root_only_for_its_own_filesystem() {
    let root = Path::new("/var/lib/certvol");
    let io = |path: &str, code| VolumeError::Io {
        action: "write",
        path: path.into(),
        source: io::Error::from_raw_os_error(code),
    };
    let state = "/var/lib/certvol/volumes/v-01/state.json";
    let err = VolumeError::Store(StoreError::Io {
        action: "write",
        path: state.into(),
        source: io::Error::from_raw_os_error(libc::ENOSPC),
    })
    .on_data_root(root);
    assert!(
        matches!(
            err,
            VolumeError::DataRoot {
                fault: DiskFault::Full,
                ..
            }
        ),
        "{err:?}"
    );
    let message = err.to_string();
    for part in ["/var/lib/certvol", "is full", state, "free space"] {
        assert!(message.contains(part), "{part:?} missing from {message}");
    }
    let err = io("/var/lib/certvol/volumes/v-01/mem", libc::EROFS).on_data_root(root);
    assert!(err.to_string().contains("is read-only"), "{err}");
    assert!(err.to_string().contains("remount it read-write"), "{err}");
    // Inside a volume's own tmpfs, elsewhere, or another error: left as it was.
    for err in [
        io(
            "/var/lib/certvol/volumes/v-01/mem/files/tls.crt",
            libc::ENOSPC,
        ),
        io("/elsewhere/state.json", libc::ENOSPC),
        io(state, libc::EACCES),
    ] {
        assert!(matches!(err.on_data_root(root), VolumeError::Io { .. }));
    }
}

#[tokio::test]
async fn a_certificate_that_expired_before_it_arrived_is_never_asked_for_again() {
    let f = fixture();
    let p = params(&f, "late");
    let two_days = 2 * 86_400;
    // The CA signs at most a day: two days on, whatever it signs has expired.
    f.ahead.ahead_secs.store(two_days, Ordering::SeqCst);
    let err = f.mgr.publish(p.clone()).await.unwrap_err();
    assert!(matches!(err, VolumeError::Expired { .. }), "{err:?}");
    let rev = |n| issuer::request_name("node-a", "csi-late", n);
    assert!(err.to_string().contains(&rev(1)), "{err}");
    // Kept for kubelet's retry, which files the next revision instead of resuming this one.
    let state = f.mgr.store().load("csi-late").unwrap().unwrap();
    assert_eq!(
        (state.phase, state.pending, state.last_revision),
        (Phase::Issuing, None, 1)
    );
    assert!(!p.target_path.exists());
    f.ahead.ahead_secs.store(0, Ordering::SeqCst);
    f.mgr.publish(p.clone()).await.unwrap();
    assert_eq!(calls(&f), [rev(1), rev(2)]);

    f.ahead.ahead_secs.store(two_days, Ordering::SeqCst);
    let outcome = f.mgr.renew_volume("csi-late").await;
    assert!(
        matches!(outcome, RenewOutcome::Failed { .. }),
        "{outcome:?}"
    );
    let state = f.mgr.store().load("csi-late").unwrap().unwrap();
    assert_eq!(state.pending, None);
    assert!(
        state
            .renewal
            .last_error
            .unwrap()
            .contains("already expired")
    );
    f.ahead.ahead_secs.store(0, Ordering::SeqCst);
    let outcome = f.mgr.renew_volume("csi-late").await;
    assert!(
        matches!(outcome, RenewOutcome::Renewed { .. }),
        "{outcome:?}"
    );
    assert_eq!(calls(&f), [rev(1), rev(2), rev(3), rev(4)]);
}

#[tokio::test]
async fn an_unpublish_whose_first_record_is_refused_touches_nothing() {
    let f = fixture();
    let p = params(&f, "stay");
    f.mgr.publish(p.clone()).await.unwrap();
    let before = cert_of(&p.target_path);
    let blocker = block_saves(&f, "csi-stay");
    fs::create_dir(&blocker).unwrap();
    f.mgr
        .unpublish("csi-stay", &p.target_path)
        .await
        .unwrap_err();
    assert_eq!(cert_of(&p.target_path), before, "still bound and serving");
    let state = f.mgr.status("csi-stay").await.unwrap().unwrap();
    assert_eq!(state.phase, Phase::Published);
    // Still renewable, as it was.
    fs::remove_dir(&blocker).unwrap();
    let outcome = f.mgr.renew_volume("csi-stay").await;
    assert!(
        matches!(outcome, RenewOutcome::Renewed { .. }),
        "{outcome:?}"
    );
    f.mgr.unpublish("csi-stay", &p.target_path).await.unwrap();
    assert!(!p.target_path.exists());
    assert_eq!(f.mgr.store().load("csi-stay").unwrap(), None);
}

#[tokio::test]
async fn only_failed_renewals_are_moved_when_the_api_answers_again() {
    let f = fixture();
    let (ok, failing) = (params(&f, "fine"), params(&f, "failing"));
    f.mgr.publish(ok.clone()).await.unwrap();
    f.mgr.publish(failing.clone()).await.unwrap();
    assert_eq!(f.mgr.retry_failed_renewals(), 0);
    set(&f, UNAVAILABLE);
    let outcome = f.mgr.renew_volume("csi-failing").await;
    assert!(
        matches!(outcome, RenewOutcome::Failed { .. }),
        "{outcome:?}"
    );
    let outcome = f.mgr.renew_volume("csi-failing").await;
    assert!(
        matches!(outcome, RenewOutcome::Failed { .. }),
        "{outcome:?}"
    );
    assert_eq!(f.mgr.retry_failed_renewals(), 1);
    // The backoff starts over: the next failure is the first again.
    let outcome = f.mgr.renew_volume("csi-failing").await;
    assert!(
        matches!(outcome, RenewOutcome::Failed { .. }),
        "{outcome:?}"
    );
    let state = f.mgr.store().load("csi-failing").unwrap().unwrap();
    assert_eq!(state.renewal.failures, 1);
    set(&f, OK);
    let outcome = f.mgr.renew_volume("csi-failing").await;
    assert!(
        matches!(outcome, RenewOutcome::Renewed { .. }),
        "{outcome:?}"
    );
    assert_eq!(
        f.mgr.retry_failed_renewals(),
        0,
        "a success clears the failure"
    );
}

#[tokio::test]
async fn unpublish_removes_everything_and_tolerates_unknown_volumes() {
    let f = fixture();
    let p = params(&f, "gone");
    f.mgr.publish(p.clone()).await.unwrap();
    f.mgr.unpublish("csi-gone", &p.target_path).await.unwrap();
    assert!(fs::symlink_metadata(&p.target_path).is_err());
    assert!(!f.mgr.store().paths("csi-gone").dir.exists());
    assert!(f.issuer.ca.issued_names().unwrap().is_empty());
    f.mgr.unpublish("csi-gone", &p.target_path).await.unwrap();
    f.mgr
        .unpublish("csi-never", &f.pods.join("never/mount"))
        .await
        .unwrap();
    assert!(matches!(
        f.mgr.renew_volume("csi-gone").await,
        RenewOutcome::Done
    ));
}

fn with_attrs(mut p: PublishParams, attrs: &[(&str, &str)]) -> PublishParams {
    for (k, v) in attrs {
        p.context.insert((*k).to_string(), (*v).to_string());
    }
    p
}

fn bundle_ders(target: &Path) -> Vec<Vec<u8>> {
    let pem = String::from_utf8(fs::read(target.join("ca-bundle.crt")).unwrap()).unwrap();
    pki::parse_pem_chain(&pem)
        .unwrap()
        .into_iter()
        .map(|c| c.der)
        .collect()
}

#[tokio::test]
async fn kubernetes_sources_without_api_access_are_invalid_and_leave_nothing() {
    let f = fixture();
    for attr in [
        "csi.certvol.io/trust-configmaps",
        "csi.certvol.io/trust-secrets",
    ] {
        let p = with_attrs(params(&f, "nokube"), &[(attr, "ca/ca.crt")]);
        let err = f.mgr.publish(p.clone()).await.unwrap_err();
        assert!(matches!(err, VolumeError::InvalidArgument(_)), "{err}");
        let msg = err.to_string();
        assert!(msg.contains(&format!("{attr:?}")), "{msg}");
        assert!(msg.contains("trust-public-roots"), "{msg}");
        assert!(f.mgr.store().load("csi-nokube").unwrap().is_none());
        assert!(fs::symlink_metadata(&p.target_path).is_err());
    }
    assert!(calls(&f).is_empty(), "nothing filed with the issuer");
}

#[tokio::test]
async fn issuing_ca_and_public_roots_bundle_and_a_retired_ca_leaves_on_refresh() {
    let f = fixture();
    let p = with_attrs(
        params(&f, "roots"),
        &[("csi.certvol.io/trust-public-roots", "true")],
    );
    f.mgr.publish(p.clone()).await.unwrap();
    let ca = fs::read_to_string(p.target_path.join("ca.crt")).unwrap();
    let ca_der = pki::parse_pem_chain(&ca).unwrap()[0].der.clone();
    let roots = webpki_root_certs::TLS_SERVER_ROOT_CERTS.len();
    let got = bundle_ders(&p.target_path);
    assert_eq!(got[0], ca_der, "issuing CA first");
    assert_eq!(got.len(), 1 + roots);
    let state = f.mgr.store().load("csi-roots").unwrap().unwrap();
    assert_eq!(state.issuing_cas.len(), 1);
    assert_eq!(state.issuing_cas[0].keep_until, None);

    // A retired CA still in its overlap is in the bundle; once its keep-until has passed a
    // refresh drops it without touching key, certificate or issuer.
    let retired = crate::trust::bundle::tests::ca_pem("retired");
    let retired_der = pki::parse_pem_chain(&retired).unwrap()[0].der.clone();
    let now = SystemTime::now();
    {
        let (_slot, mut guard) = f.mgr.lock("csi-roots").await.unwrap();
        let state = guard.as_mut().unwrap();
        state.issuing_cas.push(crate::trust::IssuingCa {
            der: retired_der.clone(),
            not_after: now + Duration::from_secs(3600),
            keep_until: Some(now + Duration::from_secs(600)),
        });
        f.mgr.store().save(state).unwrap();
    }
    let (key, cert) = (
        fs::read(p.target_path.join("tls.key")).unwrap(),
        cert_of(&p.target_path),
    );
    let outcome = f.mgr.refresh_trust("csi-roots", None).await;
    assert_eq!(
        outcome,
        Refreshed::Kept {
            next_change: Some(now + Duration::from_secs(600))
        }
    );
    let got = bundle_ders(&p.target_path);
    assert_eq!(got[..2], [ca_der.clone(), retired_der.clone()]);
    assert_eq!(fs::read(p.target_path.join("tls.key")).unwrap(), key);
    assert_eq!(cert_of(&p.target_path), cert);

    {
        let (_slot, mut guard) = f.mgr.lock("csi-roots").await.unwrap();
        let state = guard.as_mut().unwrap();
        state.issuing_cas[1].keep_until = Some(now - Duration::from_secs(1));
        f.mgr.store().save(state).unwrap();
    }
    let outcome = f.mgr.refresh_trust("csi-roots", None).await;
    assert_eq!(outcome, Refreshed::Kept { next_change: None });
    let got = bundle_ders(&p.target_path);
    assert!(!got.contains(&retired_der), "the retired CA left");
    assert_eq!(got.len(), 1 + roots);
    let state = f.mgr.store().load("csi-roots").unwrap().unwrap();
    assert_eq!(
        state.issuing_cas.len(),
        1,
        "expired overlap pruned from state"
    );
    assert_eq!(fs::read(p.target_path.join("tls.key")).unwrap(), key);
    assert_eq!(calls(&f).len(), 1, "no issuance");

    // Unpublished: the refresher is told to stop.
    f.mgr.unpublish("csi-roots", &p.target_path).await.unwrap();
    assert_eq!(
        f.mgr.refresh_trust("csi-roots", None).await,
        Refreshed::Gone
    );
}

/// A bundle rewrite that would take the node past `--max-volume-bytes` keeps the volume's
/// files and asks the refresher to try again soon; with room made it is written.
#[tokio::test]
async fn a_bundle_rewrite_past_the_tmpfs_budget_keeps_the_files_and_retries() {
    let budget = 8 << 20;
    let f = fixture_configured(None, |c| c.max_volume_bytes = budget);
    let p = with_attrs(
        params(&f, "roots"),
        &[("csi.certvol.io/trust-public-roots", "true")],
    );
    f.mgr.publish(p.clone()).await.unwrap();
    let (used, _) = f.mgr.tmpfs_usage();
    f.mgr.tmpfs.set("others", budget - used);
    let before = fs::read(p.target_path.join("ca-bundle.crt")).unwrap();
    let now = SystemTime::now();
    {
        let (_slot, mut guard) = f.mgr.lock("csi-roots").await.unwrap();
        let state = guard.as_mut().unwrap();
        // Several retired CAs: the bundle grows by more than a page.
        for i in 0..8 {
            let pem = crate::trust::bundle::tests::ca_pem(&format!("retired-{i}"));
            state.issuing_cas.push(crate::trust::IssuingCa {
                der: pki::parse_pem_chain(&pem).unwrap()[0].der.clone(),
                not_after: now + Duration::from_secs(3600),
                keep_until: Some(now + Duration::from_secs(600)),
            });
        }
        f.mgr.store().save(state).unwrap();
    }
    let outcome = f.mgr.refresh_trust("csi-roots", None).await;
    let Refreshed::Kept {
        next_change: Some(at),
    } = outcome
    else {
        panic!("{outcome:?}")
    };
    assert!(
        at <= SystemTime::now() + crate::files::budget::RETRY,
        "retried soon, not at the overlap's end"
    );
    assert_eq!(
        fs::read(p.target_path.join("ca-bundle.crt")).unwrap(),
        before,
        "the bundle stays"
    );
    assert_eq!(f.mgr.tmpfs_usage().0, budget);

    f.mgr.tmpfs.release("others");
    f.mgr.refresh_trust("csi-roots", None).await;
    assert!(fs::read(p.target_path.join("ca-bundle.crt")).unwrap().len() > before.len());
}

/// The refresher drops a retired CA from the bundle when its keep-until passes, by itself
/// (a `tokio::time` sleep; paused time here), and stops caring once the volume is gone.
#[tokio::test]
async fn the_refresher_rewrites_the_bundle_when_an_overlap_ends() {
    let dir = tempfile::tempdir().unwrap();
    let clock: Arc<dyn Clock> = Arc::new(crate::base::clock::TokioClock::starting_at(
        SystemTime::now(),
    ));
    let store = Store::open(&dir.path().join("root")).unwrap();
    let ca = test_ca(&store, clock.clone());
    let (handle, _scheduler) = crate::runtime::scheduler::channel();
    let (refresh, refresher) = crate::runtime::refresh::channel();
    let mut cfg = Config::new("node-a");
    cfg.kubelet_dir = dir.path().to_path_buf();
    let mgr = Arc::new(
        VolumeManager::new(
            cfg,
            store,
            Services {
                mounter: Arc::new(DirMounter::default()),
                issuer: Arc::new(ca),
                clock: clock.clone(),
                scheduler: handle,
            },
        )
        .with_trust(TrustWiring {
            refresher: Some(refresh.clone()),
            ..TrustWiring::default()
        }),
    );
    let running = tokio::spawn(refresher.run(mgr.clone()));
    let target = dir
        .path()
        .join("pods/p/volumes/kubernetes.io~csi/tls/mount");
    fs::create_dir_all(target.parent().unwrap()).unwrap();
    let context = [
        ("csi.certvol.io/issuer-name", "ca"),
        ("csi.certvol.io/dns-names", "p.svc"),
        ("csi.certvol.io/trust-issuer-ca", "true"),
        ("csi.storage.k8s.io/pod.name", "p"),
        ("csi.storage.k8s.io/pod.namespace", "default"),
        ("csi.storage.k8s.io/ephemeral", "true"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let p = PublishParams {
        volume_id: "csi-p".into(),
        target_path: target.clone(),
        context,
        mount_group: None,
        secrets: HashMap::new(),
    };
    // Real time for the issuance (key generation runs on a blocking thread, which paused
    // time would skip past), paused from here on.
    mgr.publish(p.clone()).await.unwrap();
    tokio::time::pause();
    let retired = crate::trust::bundle::tests::ca_pem("retired");
    let retired_der = pki::parse_pem_chain(&retired).unwrap()[0].der.clone();
    let keep_until = clock.now() + Duration::from_secs(600);
    {
        let (_slot, mut guard) = mgr.lock("csi-p").await.unwrap();
        let state = guard.as_mut().unwrap();
        state.issuing_cas.push(crate::trust::IssuingCa {
            der: retired_der.clone(),
            not_after: keep_until + Duration::from_secs(3600),
            keep_until: Some(keep_until),
        });
        mgr.store().save(state).unwrap();
    }
    // What a renewal that retired the CA tells the refresher.
    refresh.send(Message::Watch {
        volume_id: "csi-p".into(),
        trust: None,
        next_change: Some(keep_until),
    });
    tokio::time::sleep(Duration::from_secs(300)).await;
    assert_eq!(bundle_ders(&target).len(), 1, "nothing rewritten early");
    let cert = cert_of(&target);
    // Rebuilt at the keep-until (plus a margin), dropping the retired CA.
    tokio::time::sleep(Duration::from_secs(302)).await;
    for _ in 0..100 {
        if mgr
            .store()
            .load("csi-p")
            .unwrap()
            .unwrap()
            .issuing_cas
            .len()
            == 1
        {
            break;
        }
        tokio::task::yield_now().await;
    }
    let state = mgr.store().load("csi-p").unwrap().unwrap();
    assert_eq!(state.issuing_cas.len(), 1, "the overlap ended");
    let got = bundle_ders(&target);
    assert_eq!(got.len(), 1);
    assert!(!got.contains(&retired_der));
    assert_eq!(cert_of(&target), cert, "same certificate");
    mgr.unpublish("csi-p", &target).await.unwrap();
    running.abort();
}

#[tokio::test]
async fn targets_that_are_symlinks_or_relative_are_refused() {
    let f = fixture();
    let mut p = params(&f, "sym");
    let elsewhere = f.pods.join("elsewhere");
    fs::create_dir_all(&elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &p.target_path).unwrap();
    let err = f.mgr.publish(p.clone()).await.unwrap_err();
    assert!(err.to_string().contains("symbolic link"), "{err}");
    assert_eq!(
        fs::read_dir(&elsewhere).unwrap().count(),
        0,
        "nothing written through it"
    );
    p.target_path = PathBuf::from("relative/mount");
    p.volume_id = "csi-rel".into();
    let err = f.mgr.publish(p).await.unwrap_err();
    assert!(matches!(err, VolumeError::InvalidArgument(_)), "{err}");
    assert!(calls(&f).is_empty());
}

/// Lists a directory tree (paths relative to `root`), to show nothing changed in it.
fn tree(root: &Path) -> Vec<PathBuf> {
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

#[tokio::test]
async fn a_symlink_above_the_target_is_refused_and_nothing_is_created_through_it() {
    let f = fixture();
    let outside = f._dir.path().join("outside");
    fs::create_dir_all(outside.join("kubernetes.io~csi/tls")).unwrap();
    fs::write(outside.join("keep"), b"x").unwrap();
    let before = tree(&outside);
    // The pod's volumes directory replaced by a link to a directory outside kubelet's tree.
    let pod = f.pods.join("linked");
    fs::create_dir_all(&pod).unwrap();
    std::os::unix::fs::symlink(&outside, pod.join("volumes")).unwrap();
    let mut p = params(&f, "ok");
    p.volume_id = "csi-linked".into();
    p.target_path = pod.join("volumes/kubernetes.io~csi/tls/mount");
    let err = f.mgr.publish(p.clone()).await.unwrap_err();
    assert!(matches!(err, VolumeError::InvalidArgument(_)), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("symbolic link") && text.contains(&outside.display().to_string()),
        "{text}"
    );
    assert_eq!(tree(&outside), before, "nothing created outside");
    assert!(calls(&f).is_empty(), "nothing issued");
    assert!(f.mgr.store().load("csi-linked").unwrap().is_none());

    // Unpublish through the link touches nothing either.
    fs::create_dir(outside.join("kubernetes.io~csi/tls/mount")).unwrap();
    let before = tree(&outside);
    let err = f
        .mgr
        .unpublish("csi-linked", &p.target_path)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("symbolic link"), "{err}");
    assert_eq!(tree(&outside), before);
}

#[tokio::test]
async fn a_link_planted_above_a_published_target_is_not_followed_on_removal() {
    let f = fixture();
    let p = params(&f, "later");
    f.mgr.publish(p.clone()).await.unwrap();
    // The pod's volumes directory swapped for a link to a look-alike tree outside.
    let outside = f._dir.path().join("outside");
    let look_alike = outside.join("kubernetes.io~csi/tls/mount");
    fs::create_dir_all(&look_alike).unwrap();
    let volumes = f.pods.join("later/volumes");
    fs::rename(&volumes, f._dir.path().join("moved-away")).unwrap();
    std::os::unix::fs::symlink(&outside, &volumes).unwrap();
    let before = tree(&outside);
    f.mgr.unbind_target(&p.target_path, None).unwrap();
    assert_eq!(
        tree(&outside),
        before,
        "the empty look-alike is not removed"
    );
    let paths = f.mgr.store().paths("csi-later");
    let err = f.mgr.bind_target(&paths, &p.target_path).unwrap_err();
    assert!(err.to_string().contains("symbolic link"), "{err}");
    assert_eq!(tree(&outside), before, "nothing bound through the link");
}

#[tokio::test]
async fn targets_outside_the_kubelet_pods_dir_are_refused_both_ways() {
    let f = fixture();
    let outside = f._dir.path().join("etc-like");
    fs::create_dir_all(outside.join("mount")).unwrap();
    fs::write(outside.join("passwd"), b"root:x:0:0").unwrap();
    let before = tree(&outside);
    let pods = f.pods.display().to_string();
    let dotdot = f.pods.join("u/../../etc-like/mount");
    for target in [outside.join("mount"), dotdot, f.pods.clone()] {
        let mut p = params(&f, "out");
        p.target_path = target.clone();
        let err = f.mgr.publish(p).await.unwrap_err();
        assert!(matches!(err, VolumeError::InvalidArgument(_)), "{err}");
        let text = err.to_string();
        assert!(text.contains("target_path"), "{text}");
        if !target.to_string_lossy().contains("..") {
            assert!(
                text.contains(&pods) && text.contains("--kubelet-dir"),
                "{text}"
            );
        }
        let err = f.mgr.unpublish("csi-out", &target).await.unwrap_err();
        assert!(matches!(err, VolumeError::InvalidArgument(_)), "{err}");
    }
    assert_eq!(tree(&outside), before, "nothing created or removed");
    assert!(calls(&f).is_empty());
    assert_eq!(f.mgr.volume_count(), 0);
}

#[test]
fn volume_ids_are_plain_and_bounded() {
    for good in [
        "csi-5f2c0e6d4b1a9c8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e",
        "a",
        "vol_1.x-2",
        &"a".repeat(MAX_VOLUME_ID_BYTES),
    ] {
        assert!(check_volume_id(good).is_ok(), "{good}");
    }
    for bad in [
        "",
        "..",
        "-x",
        "a/b",
        "../etc",
        "a\0b",
        "a b",
        "é",
        &"a".repeat(MAX_VOLUME_ID_BYTES + 1),
    ] {
        let err = check_volume_id(bad).unwrap_err();
        assert!(matches!(err, VolumeError::InvalidArgument(_)), "{bad:?}");
        let text = err.to_string();
        assert!(
            text.contains("volume_id") && text.contains("accepted: 1 to 128"),
            "{text}"
        );
    }
    let huge = "x/".repeat(1 << 20);
    let text = check_volume_id(&huge).unwrap_err().to_string();
    assert!(text.len() < 600, "the message stays short: {}", text.len());
    assert!(text.contains("first 80 of 2097152 bytes"), "{text}");
}

/// `--forbid-rsa-4096`: an RSA 4096 volume is refused with PermissionDenied naming the
/// attribute as the pod spec spells it and the flag, before any key, file, request or state
/// exists; smaller keys are still published.
#[tokio::test]
async fn rsa_4096_is_refused_when_the_operator_forbids_it_and_nothing_is_left() {
    for prefix in [attrs::CERT_MANAGER_PREFIX, attrs::CERTVOL_PREFIX] {
        let f = fixture_configured(None, |cfg| cfg.forbid_rsa_4096 = true);
        let mut p = params(&f, "big");
        p.context
            .insert(format!("{prefix}key-algorithm"), "RSA".into());
        p.context.insert(format!("{prefix}key-size"), "4096".into());
        let err = f.mgr.publish(p.clone()).await.unwrap_err();
        let status = crate::csi::RpcError::from(err).status();
        assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
        assert_eq!(
            status.message(),
            format!(
                "{prefix}key-size: \"4096\" is not allowed: this node refuses RSA 4096 keys (--forbid-rsa-4096), which take seconds of CPU each to generate; accepted: RSA key-size 2048 or 3072, or key-algorithm ECDSA or Ed25519"
            )
        );
        assert!(calls(&f).is_empty(), "nothing was issued");
        assert!(f.mgr.store().load("csi-big").unwrap().is_none());
        assert!(!f.mgr.store().paths("csi-big").dir.exists());
        assert!(fs::symlink_metadata(&p.target_path).is_err(), "no target");
        assert_eq!(f.mgr.volume_count(), 0);

        p.context.insert(format!("{prefix}key-size"), "2048".into());
        f.mgr.publish(p).await.expect("RSA 2048 is still allowed");
    }
    // Without the flag the same request passes the check.
    let f = fixture();
    let mut p = params(&f, "big");
    p.context
        .insert("csi.certvol.io/key-algorithm".into(), "RSA".into());
    p.context
        .insert("csi.certvol.io/key-size".into(), "4096".into());
    let req = attrs::parse(&p.context).unwrap();
    assert_eq!(req.key_algorithm, KeyAlgorithm::Rsa4096);
    f.mgr.check_key(&req, &p.context).unwrap();
}

/// Two CPUs, and a hostile namespace generating two RSA 4096 keys: an ECDSA key of another
/// namespace does not wait for either, because RSA keys never take the last CPU.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_keys_never_take_every_cpu_from_fast_ones() {
    let f = fixture_configured(None, |cfg| cfg.keygen_concurrency = 2);
    let rsa = |name: &str, n: usize| {
        let mut p = with_attrs(
            pod_volume(&f, name, n),
            &[
                ("csi.certvol.io/key-algorithm", "RSA"),
                ("csi.certvol.io/key-size", "4096"),
            ],
        );
        p.context
            .insert("csi.storage.k8s.io/pod.namespace".into(), "hostile".into());
        p
    };
    let slow: Vec<_> = [rsa("hog", 0), rsa("hog", 1)]
        .into_iter()
        .map(|p| {
            let mgr = f.mgr.clone();
            tokio::spawn(async move { mgr.publish(p).await })
        })
        .collect();
    // Both RSA publishes reach key generation within moments; each generation takes
    // seconds. One of them generates, the other waits for the slow pool: a CPU stays free.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        f.mgr.keygen_pool().available(),
        1,
        "the RSA 4096 generations took every CPU"
    );
    f.mgr
        .publish(params(&f, "honest"))
        .await
        .expect("honest publish");
    assert!(
        slow.iter().all(|t| !t.is_finished()),
        "the ECDSA publish waited for an RSA 4096 generation"
    );
    for task in slow {
        task.await.unwrap().expect("RSA publish");
    }
}

/// Key generation is bounded and fair: while a hostile namespace holds the only key
/// generation permit and has three more generations queued, a publish in another
/// namespace waits, then gets the permit after one of them, not after all three.
#[tokio::test]
async fn key_generation_waits_for_a_permit_and_takes_its_turn_before_a_busy_namespace() {
    let f = fixture_configured(None, |cfg| cfg.keygen_concurrency = 1);
    let pool = f.mgr.keygen_pool().clone();
    let held = pool.acquire("hostile").await;
    let granted = Arc::new(StdMutex::new(Vec::new()));
    let mut hostile = Vec::new();
    for i in 0..3 {
        let (theirs, granted) = (pool.clone(), granted.clone());
        hostile.push(tokio::spawn(async move {
            let _permit = theirs.acquire("hostile").await;
            granted.lock().unwrap().push(i);
            // A slow key.
            tokio::time::sleep(Duration::from_millis(300)).await;
        }));
        while pool.waiting() <= i {
            tokio::task::yield_now().await;
        }
    }
    let publish = {
        let (mgr, p) = (f.mgr.clone(), params(&f, "honest"));
        tokio::spawn(async move { mgr.publish(p).await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !publish.is_finished(),
        "the publish generated its key while every permit was taken"
    );
    assert_eq!(pool.waiting(), 4, "the publish waits in the pool");
    drop(held);
    publish.await.unwrap().expect("publish");
    let granted_before = granted.lock().unwrap().clone();
    assert!(
        granted_before == [0] || granted_before == [0, 1],
        "the publish's key came right after the hostile namespace's first, not after all three: {granted_before:?}"
    );
    for task in hostile {
        task.await.unwrap();
    }
    assert_eq!(pool.available(), 1, "every permit came back");
}
