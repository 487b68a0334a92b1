//! `certvol demo`: the real node plugin with the embedded local CA on a temporary socket and data
//! root, driven over gRPC exactly as kubelet drives it. Shows issuance for several key types,
//! a live renewal under a reader that checks every key/certificate pair it sees, a rejected
//! request, and clean-up. Returns whether every check passed.

pub mod kubelet;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use crate::demo::kubelet::{InlineVolume, Kubelet, Pod, volume_id};
use crate::files::mount::{self, DirMounter, KernelMounter, Mounter};
use crate::files::store::Store;
use crate::node::{self, NodeOptions};
use crate::x509::keys::PrivateKey;
use crate::x509::pki::{self, CertInfo};

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
    let base = tmp.path().to_path_buf();
    let data_root = base.join("data-root");
    let pods_dir = base.join("kubelet/pods");
    let socket = base.join("csi/csi.sock");

    let memory = mount::can_mount_tmpfs();
    let mounter: Arc<dyn Mounter> = if memory {
        Arc::new(KernelMounter)
    } else {
        Arc::new(DirMounter::default())
    };
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

    let mut opts = NodeOptions::new(
        format!("unix://{}", socket.display()),
        "demo-node",
        data_root.clone(),
    );
    opts.issuer = node::IssuerKind::Local;
    opts.grace_period = Duration::from_secs(5);
    // The demo shows a renewal within seconds; a real node keeps the one-hour floor.
    opts.min_duration = Duration::from_secs(1);
    // The demo serves no /metrics: a second demo (or a node) on this machine may hold the port.
    opts.metrics_address = None;
    // The demo's kubelet keeps its pods here; the plugin refuses targets anywhere else.
    opts.kubelet_dir = base.join("kubelet");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(node::run(opts, mounter.clone(), async {
        let _ = stop_rx.await;
    }));

    let kubelet = Kubelet::connect(&socket, &pods_dir).map_err(setup("connect to the socket"))?;
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

    let mut checks = Checks::default();
    let fs_group = is_root.then_some(2000);
    let cases = demo_cases(fs_group);

    println!("1. kubelet publishes {} inline volumes", cases.len());
    let mut targets = Vec::new();
    for case in &cases {
        let t = Instant::now();
        match kubelet.publish(&case.pod, &case.volume).await {
            Ok(target) => {
                println!(
                    "  published {}/{} volume {:?} in {} ms",
                    case.pod.namespace,
                    case.pod.name,
                    case.volume.name,
                    t.elapsed().as_millis()
                );
                targets.push(Some(target));
            }
            Err(status) => {
                checks.check(
                    false,
                    format!("publish {}: {}", case.pod.name, status.message()),
                );
                targets.push(None);
            }
        }
    }
    println!();

    let store = Store::open(&data_root).map_err(setup("open the data root"))?;
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
    for (case, target) in cases.iter().zip(&targets) {
        let Some(target) = target else { continue };
        let Ok(Some(cert)) = read_leaf(target, "tls.crt") else {
            checks.check(false, format!("{}: read tls.crt", case.pod.name));
            continue;
        };
        let id = volume_id(&case.pod.uid, &case.volume.name);
        let next = store
            .load(&id)
            .ok()
            .flatten()
            .and_then(|s| crate::volume::next_renewal(&s));
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
            shorten(target, &base),
        ]);
    }
    print_table(&rows);
    println!();

    println!("3. checks a pod would make");
    for (case, target) in cases.iter().zip(&targets) {
        let Some(target) = target else { continue };
        verify_volume(&mut checks, case, target, fs_group, memory);
    }
    println!();

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
    match kubelet.publish(&bad_pod, &bad).await {
        Ok(_) => checks.check(false, "key-size 1024 was accepted"),
        Err(status) => {
            println!("  kubelet got {:?}: {}", status.code(), status.message());
            checks.check(
                status.code() == tonic::Code::InvalidArgument,
                "the error is InvalidArgument naming the attribute",
            );
            let target = kubelet.target_path(&bad_pod, &bad);
            let state = store
                .load(&volume_id(&bad_pod.uid, &bad.name))
                .ok()
                .flatten();
            checks.check(
                !target.exists() && state.is_none(),
                "no target directory, no state",
            );
        }
    }
    println!();

    println!("5. live renewal of a short-lived certificate while a reader keeps reading it");
    if let Some((case, Some(target))) = cases
        .iter()
        .zip(&targets)
        .find(|(c, _)| c.pod.name == "worker-0")
    {
        watch_renewal(&mut checks, case, target).await;
    }
    println!();

    println!("6. kubelet unpublishes every volume");
    for (case, target) in cases.iter().zip(&targets) {
        if target.is_none() {
            continue;
        }
        if let Err(status) = kubelet.unpublish(&case.pod, &case.volume).await {
            checks.check(
                false,
                format!("unpublish {}: {}", case.pod.name, status.message()),
            );
        }
    }
    let leftovers: Vec<_> = targets.iter().flatten().filter(|t| t.exists()).collect();
    checks.check(leftovers.is_empty(), "every target path is gone");
    let volumes_left = std::fs::read_dir(data_root.join("volumes"))
        .map(|d| d.count())
        .unwrap_or(0);
    checks.check(
        volumes_left == 0,
        "no volume state is left in the data root",
    );
    let mounts_left = mounter
        .mounts()
        .map(|m| {
            m.iter()
                .filter(|m| m.mount_point.starts_with(&base))
                .count()
        })
        .unwrap_or(usize::MAX);
    checks.check(mounts_left == 0, "no mount is left behind");

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

fn demo_cases(fs_group: Option<u32>) -> Vec<Case> {
    let mut web = Pod::new("shop", "web-0");
    web.fs_group = fs_group;
    let mut api = Pod::new("shop", "api-0");
    api.service_account = "api".into();
    let worker = Pod::new("jobs", "worker-0");
    vec![
        Case {
            expect_dns: "web-0.shop.svc".into(),
            expect_key: "ECDSA P-256",
            pod: web,
            volume: InlineVolume::new(
                "tls",
                [
                    ("csi.certvol.io/issuer-name", "local"),
                    ("csi.certvol.io/common-name", "${POD_NAME}"),
                    (
                        "csi.certvol.io/dns-names",
                        "${POD_NAME}.${POD_NAMESPACE}.svc",
                    ),
                ],
            ),
        },
        Case {
            expect_dns: "api-0.shop.svc.cluster.local".into(),
            expect_key: "RSA 2048",
            pod: api,
            // cert-manager csi-driver's keys verbatim: only the driver name changes.
            volume: InlineVolume::new(
                "tls",
                [
                    ("csi.cert-manager.io/issuer-name", "ca-issuer"),
                    (
                        "csi.cert-manager.io/dns-names",
                        "${POD_NAME}.${POD_NAMESPACE}.svc.cluster.local",
                    ),
                    (
                        "csi.cert-manager.io/uri-sans",
                        "spiffe://cluster.local/ns/${POD_NAMESPACE}/sa/${SERVICE_ACCOUNT_NAME}",
                    ),
                    (
                        "csi.cert-manager.io/key-usages",
                        "digital signature,key encipherment,server auth,client auth",
                    ),
                ],
            ),
        },
        Case {
            expect_dns: "worker-0.jobs".into(),
            expect_key: "Ed25519",
            pod: worker,
            volume: InlineVolume::new(
                "tls",
                [
                    ("csi.certvol.io/issuer-name", "local"),
                    ("csi.certvol.io/dns-names", "${POD_NAME}.${POD_NAMESPACE}"),
                    ("csi.certvol.io/key-algorithm", "Ed25519"),
                    ("csi.certvol.io/duration", "24s"),
                ],
            ),
        },
    ]
}

fn read_leaf(target: &Path, name: &str) -> Result<Option<CertInfo>, String> {
    let pem = std::fs::read_to_string(target.join(name)).map_err(|e| e.to_string())?;
    let chain = pki::parse_pem_chain(&pem).map_err(|e| e.to_string())?;
    Ok(chain.into_iter().next())
}

/// Reads key and certificate as a pod does and checks they belong together and chain to the CA.
fn pair_ok(target: &Path) -> Result<String, String> {
    // One resolved `..data` generation, as an application reloading its pair should read it.
    let files = crate::files::writer::read_all(target, &["tls.key", "tls.crt"])
        .map_err(|e| e.to_string())?;
    let key_pem = String::from_utf8_lossy(&files[0]).into_owned();
    let cert_pem = String::from_utf8_lossy(&files[1]).into_owned();
    let key = PrivateKey::from_pem(&key_pem).map_err(|e| e.to_string())?;
    let chain = pki::parse_pem_chain(&cert_pem).map_err(|e| e.to_string())?;
    let leaf = chain.first().ok_or("empty chain")?;
    if !pki::key_matches(leaf, &key).map_err(|e| e.to_string())? {
        return Err(format!(
            "key does not match certificate {}",
            leaf.serial_hex
        ));
    }
    Ok(leaf.serial_hex.clone())
}

fn verify_volume(
    checks: &mut Checks,
    case: &Case,
    target: &Path,
    fs_group: Option<u32>,
    memory: bool,
) {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let who = format!("{}/{}", case.pod.namespace, case.pod.name);
    let chain = std::fs::read_to_string(target.join("tls.crt"))
        .map_err(|e| e.to_string())
        .and_then(|p| pki::parse_pem_chain(&p).map_err(|e| e.to_string()));
    let ca = std::fs::read_to_string(target.join("ca.crt"))
        .map_err(|e| e.to_string())
        .and_then(|p| pki::parse_pem_chain(&p).map_err(|e| e.to_string()));
    match (&chain, &ca) {
        (Ok(chain), Ok(ca)) => {
            let verified = pki::verify_chain(chain, ca, SystemTime::now());
            checks.check(
                verified.is_ok(),
                format!("{who}: tls.crt chains to ca.crt{}", err_suffix(&verified)),
            );
            let leaf = &chain[0];
            checks.check(
                leaf.key_algorithm == case.expect_key,
                format!(
                    "{who}: key is {} (asked for {})",
                    leaf.key_algorithm, case.expect_key
                ),
            );
            checks.check(
                leaf.dns_names.contains(&case.expect_dns),
                format!(
                    "{who}: DNS SAN {} expanded from ${{POD_NAME}}",
                    case.expect_dns
                ),
            );
        }
        _ => checks.check(false, format!("{who}: read tls.crt and ca.crt")),
    }
    let pair = pair_ok(target);
    checks.check(
        pair.is_ok(),
        format!("{who}: tls.key matches tls.crt{}", err_suffix(&pair)),
    );
    if let Ok(meta) = std::fs::metadata(target.join("tls.key")) {
        let mode = meta.permissions().mode() & 0o777;
        match fs_group.filter(|_| case.pod.fs_group.is_some()) {
            Some(gid) => checks.check(
                mode == 0o440 && meta.gid() == gid,
                format!(
                    "{who}: tls.key mode {mode:04o} group {} (fsGroup {gid} may read it)",
                    meta.gid()
                ),
            ),
            None => checks.check(
                mode == 0o400,
                format!("{who}: tls.key mode {mode:04o} (owner only)"),
            ),
        }
    }
    if memory {
        let write = std::fs::write(target.join("planted"), b"x");
        checks.check(
            write.is_err(),
            format!("{who}: the volume is read-only for the pod"),
        );
    }
}

fn err_suffix<T>(r: &Result<T, impl std::fmt::Display>) -> String {
    match r {
        Ok(_) => String::new(),
        Err(e) => format!(" ({e})"),
    }
}

async fn watch_renewal(checks: &mut Checks, case: &Case, target: &Path) {
    let before = match pair_ok(target) {
        Ok(serial) => serial,
        Err(e) => return checks.check(false, format!("read the current pair: {e}")),
    };
    println!(
        "  {} holds a 24 s certificate (serial {before}); renewal is due after about 2/3 of it",
        case.pod.name
    );
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let mismatches = Arc::new(AtomicU64::new(0));
    let reader = {
        let (stop, reads, mismatches, target) = (
            stop.clone(),
            reads.clone(),
            mismatches.clone(),
            target.to_path_buf(),
        );
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match pair_ok(&target) {
                    Ok(_) => reads.fetch_add(1, Ordering::Relaxed),
                    Err(_) => mismatches.fetch_add(1, Ordering::Relaxed),
                };
            }
        })
    };
    let t = Instant::now();
    let mut after = before.clone();
    // The demo is a viewer standing in for a pod, so it looks at the files periodically;
    // the driver itself renews from its deadline queue.
    while t.elapsed() < Duration::from_secs(40) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if let Ok(serial) = pair_ok(target)
            && serial != before
        {
            after = serial;
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let _ = reader.join();
    let renewed = after != before;
    checks.check(
        renewed,
        format!(
            "renewed after {:.1} s: serial {before} -> {after}",
            t.elapsed().as_secs_f64()
        ),
    );
    let (n, bad) = (
        reads.load(Ordering::Relaxed),
        mismatches.load(Ordering::Relaxed),
    );
    checks.check(
        bad == 0 && n > 0,
        format!("a reader made {n} key+certificate reads during the swap: {bad} mismatched pairs"),
    );
}

fn rfc3339(t: SystemTime) -> String {
    let t = time::OffsetDateTime::from(t);
    t.format(&time::format_description::well_known::Rfc3339)
        .map(|s| {
            s.split('.')
                .next()
                .unwrap_or_default()
                .trim_end_matches('Z')
                .to_string()
                + "Z"
        })
        .unwrap_or_else(|_| "?".into())
}

fn shorten(path: &Path, base: &Path) -> String {
    match path.strip_prefix(base) {
        Ok(rest) => {
            let parts: Vec<_> = rest
                .iter()
                .map(|p| p.to_string_lossy().into_owned())
                .collect();
            // kubelet/pods/<uid>/volumes/kubernetes.io~csi/<vol>/mount: the uid is noise here.
            if parts.len() > 3 {
                let uid: String = parts[2].chars().take(8).collect();
                format!(".../pods/{uid}…/{}", parts[3..].join("/"))
            } else {
                PathBuf::from(rest).display().to_string()
            }
        }
        Err(_) => path.display().to_string(),
    }
}

fn print_table(rows: &[[String; 7]]) {
    let mut widths = [0usize; 7];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        println!("  {}", line.join("  ").trim_end());
    }
}
