//! `certvol demo`: the real node plugin with the embedded local CA on a temporary socket and data
//! root, driven over gRPC exactly as kubelet drives it. Shows issuance for several key types,
//! a live renewal under a reader that checks every key/certificate pair it sees, a rejected
//! request, and clean-up. Returns whether every check passed.

mod checks;
pub mod kubelet;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::demo::kubelet::{InlineVolume, Kubelet, Pod, volume_id};
use crate::files::mount::{self, DirMounter, KernelMounter, Mounter};
use crate::files::store::Store;
use crate::node::{self, NodeOptions};
use checks::{demo_cases, print_table, read_leaf, rfc3339, shorten, verify_volume, watch_renewal};

/// Why the demo could not run at all (failed checks are reported, not errors).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DemoError {
    #[error("{0}")]
    Setup(String),
}

fn setup<E: std::fmt::Display>(what: &'static str) -> impl FnOnce(E) -> DemoError {
    move |e| DemoError::Setup(format!("{what}: {e}"))
}

/// Tally of checks, printed as they happen.
#[derive(Default)]
struct Checks {
    passed: usize,
    failed: usize,
}

impl Checks {
    fn check(&mut self, ok: bool, what: impl std::fmt::Display) {
        if ok {
            self.passed += 1;
            println!("  ✓ {what}");
        } else {
            self.failed += 1;
            println!("  ✗ {what}");
        }
    }
}

struct Case {
    pod: Pod,
    volume: InlineVolume,
    expect_key: &'static str,
    expect_dns: String,
}

/// Runs the demo. `keep` leaves the temporary directory behind for inspection.
pub async fn run(keep: bool) -> Result<bool, DemoError> {
    let started = Instant::now();
    let tmp = tempfile::Builder::new()
        .prefix("certvol-demo-")
        .tempdir()
        .map_err(setup("create a temporary directory"))?;
    let (mut demo, stop_tx, server) = Demo::start(tmp.path().to_path_buf()).await?;
    demo.publish_all().await;
    demo.show_table();
    demo.verify_all();
    demo.bad_attribute().await;
    demo.live_renewal().await;
    demo.unpublish_all().await;
    let mut checks = demo.checks;
    let _ = stop_tx.send(());
    match server.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => checks.check(false, format!("node plugin stopped with an error: {e}")),
        Err(e) => checks.check(false, format!("node plugin task failed: {e}")),
    }
    println!();
    println!(
        "{} checks passed, {} failed ({:.1} s)",
        checks.passed,
        checks.failed,
        started.elapsed().as_secs_f64()
    );
    if keep {
        let kept = tmp.keep();
        println!("kept {}", kept.display());
    }
    let _ = std::io::stdout().flush();
    Ok(checks.failed == 0)
}

type Server = tokio::task::JoinHandle<Result<(), node::NodeError>>;

/// One demo run: the node plugin it started, the kubelet driving it, and what it has seen.
struct Demo {
    base: PathBuf,
    data_root: PathBuf,
    mounter: Arc<dyn Mounter>,
    memory: bool,
    fs_group: Option<u32>,
    kubelet: Kubelet,
    store: Store,
    cases: Vec<Case>,
    targets: Vec<Option<PathBuf>>,
    checks: Checks,
}

impl Demo {
    /// Starts the node plugin below `base` and waits until it is ready.
    async fn start(
        base: PathBuf,
    ) -> Result<(Demo, tokio::sync::oneshot::Sender<()>, Server), DemoError> {
        let data_root = base.join("data-root");
        let pods_dir = base.join("kubelet/pods");
        let socket = base.join("csi/csi.sock");
        let memory = mount::can_mount_tmpfs();
        let mounter: Arc<dyn Mounter> = if memory {
            Arc::new(KernelMounter)
        } else {
            Arc::new(DirMounter::default())
        };
        let is_root = introduce(&socket, &data_root, memory);
        let opts = demo_options(&socket, &data_root, &base);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(node::run(opts, mounter.clone(), async {
            let _ = stop_rx.await;
        }));
        let kubelet =
            Kubelet::connect(&socket, &pods_dir).map_err(setup("connect to the socket"))?;
        if let Err(status) = kubelet.wait_ready(Duration::from_secs(20)).await {
            let _ = stop_tx.send(());
            let detail = match server.await {
                Ok(Err(e)) => e.to_string(),
                _ => status.message().to_string(),
            };
            return Err(DemoError::Setup(format!(
                "the node plugin did not become ready: {detail}"
            )));
        }
        // Opened once the plugin has created the data root.
        let store = Store::open(&data_root).map_err(setup("open the data root"))?;
        let fs_group = is_root.then_some(2000);
        let demo = Demo {
            cases: demo_cases(fs_group),
            base,
            data_root,
            mounter,
            memory,
            fs_group,
            kubelet,
            store,
            targets: Vec::new(),
            checks: Checks::default(),
        };
        Ok((demo, stop_tx, server))
    }

    async fn publish_all(&mut self) {
        println!("1. kubelet publishes {} inline volumes", self.cases.len());
        for case in &self.cases {
            let t = Instant::now();
            match self.kubelet.publish(&case.pod, &case.volume).await {
                Ok(target) => {
                    println!(
                        "  published {}/{} volume {:?} in {} ms",
                        case.pod.namespace,
                        case.pod.name,
                        case.volume.name,
                        t.elapsed().as_millis()
                    );
                    self.targets.push(Some(target));
                }
                Err(status) => {
                    self.checks.check(
                        false,
                        format!("publish {}: {}", case.pod.name, status.message()),
                    );
                    self.targets.push(None);
                }
            }
        }
        println!();
    }

    fn show_table(&mut self) {
        println!("2. what each pod sees");
        let mut rows = vec![[
            "POD/VOLUME".to_string(),
            "SUBJECT".into(),
            "SANS".into(),
            "KEY".into(),
            "NOT AFTER".into(),
            "NEXT RENEWAL".into(),
            "PATH".into(),
        ]];
        for (case, target) in self.cases.iter().zip(&self.targets) {
            let Some(target) = target else { continue };
            let Ok(Some(cert)) = read_leaf(target, "tls.crt") else {
                self.checks
                    .check(false, format!("{}: read tls.crt", case.pod.name));
                continue;
            };
            let id = volume_id(&case.pod.uid, &case.volume.name);
            let next = self
                .store
                .load(&id)
                .ok()
                .flatten()
                .and_then(|s| s.next_renewal());
            let mut sans: Vec<String> = cert.dns_names.clone();
            sans.extend(cert.ip_addresses.iter().map(|ip| ip.to_string()));
            sans.extend(cert.uris.iter().cloned());
            rows.push([
                format!("{}/{}", case.pod.name, case.volume.name),
                cert.subject.clone(),
                sans.join(", "),
                cert.key_algorithm.clone(),
                rfc3339(cert.not_after),
                next.map(rfc3339).unwrap_or_else(|| "-".into()),
                shorten(target, &self.base),
            ]);
        }
        print_table(&rows);
        println!();
    }

    fn verify_all(&mut self) {
        println!("3. checks a pod would make");
        for (case, target) in self.cases.iter().zip(&self.targets) {
            let Some(target) = target else { continue };
            verify_volume(&mut self.checks, case, target, self.fs_group, self.memory);
        }
        println!();
    }

    async fn bad_attribute(&mut self) {
        println!("4. a bad volume attribute is rejected and leaves nothing behind");
        let bad_pod = Pod::new("demo", "typo-0");
        let bad = InlineVolume::new(
            "tls",
            [
                ("csi.certvol.io/issuer-name", "local"),
                ("csi.certvol.io/common-name", "typo"),
                ("csi.certvol.io/key-size", "1024"),
            ],
        );
        match self.kubelet.publish(&bad_pod, &bad).await {
            Ok(_) => self.checks.check(false, "key-size 1024 was accepted"),
            Err(status) => {
                println!("  kubelet got {:?}: {}", status.code(), status.message());
                self.checks.check(
                    status.code() == tonic::Code::InvalidArgument,
                    "the error is InvalidArgument naming the attribute",
                );
                let target = self.kubelet.target_path(&bad_pod, &bad);
                let state = self
                    .store
                    .load(&volume_id(&bad_pod.uid, &bad.name))
                    .ok()
                    .flatten();
                self.checks.check(
                    !target.exists() && state.is_none(),
                    "no target directory, no state",
                );
            }
        }
        println!();
    }

    async fn live_renewal(&mut self) {
        println!("5. live renewal of a short-lived certificate while a reader keeps reading it");
        if let Some((case, Some(target))) = self
            .cases
            .iter()
            .zip(&self.targets)
            .find(|(c, _)| c.pod.name == "worker-0")
        {
            watch_renewal(&mut self.checks, case, target).await;
        }
        println!();
    }

    async fn unpublish_all(&mut self) {
        println!("6. kubelet unpublishes every volume");
        for (case, target) in self.cases.iter().zip(&self.targets) {
            if target.is_none() {
                continue;
            }
            if let Err(status) = self.kubelet.unpublish(&case.pod, &case.volume).await {
                self.checks.check(
                    false,
                    format!("unpublish {}: {}", case.pod.name, status.message()),
                );
            }
        }
        let leftovers: Vec<_> = self
            .targets
            .iter()
            .flatten()
            .filter(|t| t.exists())
            .collect();
        self.checks
            .check(leftovers.is_empty(), "every target path is gone");
        let volumes_left = std::fs::read_dir(self.data_root.join("volumes"))
            .map(|d| d.count())
            .unwrap_or(0);
        self.checks.check(
            volumes_left == 0,
            "no volume state is left in the data root",
        );
        let mounts_left = self
            .mounter
            .mounts()
            .map(|m| {
                m.iter()
                    .filter(|m| m.mount_point.starts_with(&self.base))
                    .count()
            })
            .unwrap_or(usize::MAX);
        self.checks
            .check(mounts_left == 0, "no mount is left behind");
    }
}

/// Prints what the demo runs on; says whether it runs as root.
fn introduce(socket: &Path, data_root: &Path, memory: bool) -> bool {
    let is_root = nix::unistd::geteuid().is_root();
    println!(
        "certvol demo: the node plugin with its embedded local CA, driven as kubelet drives it"
    );
    println!("  socket     {}", socket.display());
    println!("  data root  {}", data_root.display());
    if memory {
        println!(
            "  storage    one tmpfs per volume (nodev,nosuid,noexec), bound read-only at the target"
        );
    } else {
        println!(
            "  storage    tmpfs cannot be mounted here (not root): falling back to plain directories.\n             `certvol node` refuses this (--allow-no-tmpfs is for tests only); it is for this demo only."
        );
    }
    println!();

    is_root
}

/// The node's options for the demo.
fn demo_options(socket: &Path, data_root: &Path, base: &Path) -> NodeOptions {
    let mut opts = NodeOptions::new(
        format!("unix://{}", socket.display()),
        "demo-node",
        data_root.to_path_buf(),
    );
    opts.issuer = node::IssuerKind::Local;
    opts.grace_period = Duration::from_secs(5);
    // The demo shows a renewal within seconds; a real node keeps the one-hour floor.
    opts.min_duration = Duration::from_secs(1);
    // The demo serves no /metrics: a second demo (or a node) on this machine may hold the port.
    opts.metrics_address = None;
    // The demo's kubelet keeps its pods here; the plugin refuses targets anywhere else.
    opts.kubelet_dir = base.join("kubelet");
    opts
}
