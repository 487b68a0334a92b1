//! The container-faithful tier: the chart's DaemonSet pod, as Helm renders it, run by an
//! emulated kubelet and container runtime (see `certvol_e2e::container`). Every scenario boots a
//! fresh node in this process's own mount namespace, starts the certvol container from the
//! rendered pod (read-only root, hostPath volumes with their propagation, downward-API env),
//! waits for the chart's readiness probe, and acts as kubelet through the socket the registrar
//! registered.
//!
//! A custom harness (no libtest): the node's mount namespace must be entered while the process
//! is still single-threaded. `cargo test` runs it like any test; arguments filter scenarios by
//! name, `--list` lists them. Without root it skips with a message.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::Duration;

use certvol_driver::issuer::certmanager::resource::{LABEL_NODE, label_value};
use certvol_e2e::apiserver::{ApiConfig, ApiServer, InClusterEnv, Kind};
use certvol_e2e::cluster::{STANDIN_ISSUER, cm_volume};
use certvol_e2e::container::node::{self, Node};
use certvol_e2e::container::pod::{PodPlan, SERVICE_ACCOUNT_DIR};
use certvol_e2e::kubelet::{InlineVolume, Kubelet, Pod};
use certvol_e2e::kubesigner::{KubeSigner, KubeSignerConfig};
use certvol_e2e::signer::{Signer, SignerConfig};
use certvol_e2e::{Driver, PairReader, chart, eventually, python, read_volume, volume};
use serde_json::json;

type Outcome = Result<(), String>;
type Scenario = fn(Ctx) -> Pin<Box<dyn Future<Output = Outcome>>>;

/// What every scenario gets: the venv's python to render the chart with.
#[derive(Clone)]
struct Ctx {
    python: PathBuf,
}

const READY: Duration = Duration::from_secs(30);

fn scenarios() -> Vec<(&'static str, Scenario)> {
    vec![
        ("local_install_and_first_publish", |c| {
            Box::pin(local_install_and_first_publish(c))
        }),
        ("custom_driver_name_and_kubelet_root", |c| {
            Box::pin(custom_driver_name_and_kubelet_root(c))
        }),
        ("kubelet_root_elsewhere_names_the_flag", |c| {
            Box::pin(kubelet_root_elsewhere_names_the_flag(c))
        }),
        ("restart_with_50_volumes_mid_renewal", |c| {
            Box::pin(restart_with_50_volumes_mid_renewal(c))
        }),
        ("tmpfs_budget_bounds_the_memory_volumes_cost", |c| {
            Box::pin(tmpfs_budget_bounds_the_memory_volumes_cost(c))
        }),
        ("node_reboot_then_republish", |c| {
            Box::pin(node_reboot_then_republish(c))
        }),
        ("upgrade_on_the_same_data_root", |c| {
            Box::pin(upgrade_on_the_same_data_root(c))
        }),
        ("cert_manager_install_and_first_publish", |c| {
            Box::pin(cert_manager_install_and_first_publish(c))
        }),
        ("cert_manager_token_request", |c| {
            Box::pin(cert_manager_token_request(c))
        }),
        ("kube_csr_install_and_first_publish", |c| {
            Box::pin(kube_csr_install_and_first_publish(c))
        }),
    ]
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let all = scenarios();
    if args.iter().any(|a| a == "--list") {
        for (name, _) in &all {
            println!("{name}: test");
        }
        return;
    }
    let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    let selected: Vec<_> = all
        .into_iter()
        .filter(|(name, _)| filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str())))
        .collect();
    if !nix::unistd::geteuid().is_root() {
        println!(
            "skipping the container tier: it needs root (mount namespaces, tmpfs, bind mounts)"
        );
        return;
    }
    if let Err(e) = node::become_node() {
        eprintln!("cannot enter a private mount namespace for the emulated node: {e}");
        std::process::exit(1);
    }
    let python = python::venv_python(
        Path::new(env!("CARGO_TARGET_TMPDIR")),
        &python::requirements(),
    )
    .unwrap_or_else(|e| panic!("the container tier renders the chart with Helm from PyPI: {e}"));
    let ctx = Ctx { python };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut failed = Vec::new();
    println!("running {} container-tier scenarios", selected.len());
    for (name, scenario) in selected {
        let started = std::time::Instant::now();
        let outcome = runtime.block_on(scenario(ctx.clone()));
        let took = started.elapsed();
        match outcome {
            Ok(()) => println!("scenario {name} ... ok ({took:.1?})"),
            Err(e) => {
                println!("scenario {name} ... FAILED ({took:.1?})\n{e}\n");
                failed.push(name);
            }
        }
    }
    if !failed.is_empty() {
        println!("failed scenarios: {failed:?}");
        std::process::exit(1);
    }
}

fn plan(ctx: &Ctx, values: &[(&str, &str)]) -> Result<PodPlan, String> {
    PodPlan::from_objects(&chart::render(&ctx.python, values)?)
}

/// Starts the container and waits for the chart's readiness probe, then for Probe over the
/// registered socket (as kubelet's plugin watcher does).
async fn start_ready(node: &mut Node, plan: &PodPlan) -> Result<(Driver, Kubelet), String> {
    start_ready_with(node, plan, None).await
}

async fn start_ready_with(
    node: &mut Node,
    plan: &PodPlan,
    api: Option<&InClusterEnv>,
) -> Result<(Driver, Kubelet), String> {
    let mut driver = node.start(plan, api, None)?;
    let probe = plan
        .readiness
        .as_ref()
        .ok_or("the chart sets no readiness probe")?;
    node.wait_probe(&mut driver, probe, READY).await?;
    let live = plan
        .liveness
        .as_ref()
        .ok_or("the chart sets no liveness probe")?;
    node.wait_probe(&mut driver, live, READY).await?;
    let kubelet = node.kubelet(plan);
    kubelet
        .wait_ready(READY)
        .await
        .map_err(|e| format!("Probe over {}: {e}", plan.registration_path.display()))?;
    Ok((driver, kubelet))
}

fn check(cond: bool, what: impl FnOnce() -> String) -> Outcome {
    if cond { Ok(()) } else { Err(what()) }
}

/// The volume's target as an application container sees it on the node: a read-only mount
/// holding a matching pair.
fn check_served(node: &Node, target: &Path) -> Result<String, String> {
    let files = read_volume(target)?;
    let mounts = certvol_e2e::read_mounts();
    let m = mounts
        .iter()
        .find(|m| m.mount_point == target)
        .ok_or_else(|| format!("{} is not a mount point on the node", target.display()))?;
    check(m.options.split(',').any(|o| o == "ro"), || {
        format!(
            "{} is mounted {:?}, not read-only",
            target.display(),
            m.options
        )
    })?;
    check(target.starts_with(node.pods_dir()), || {
        format!("{} is outside the node's pods dir", target.display())
    })?;
    Ok(files.leaf.serial_hex)
}

fn with_log(driver: &Driver, e: impl std::fmt::Display) -> String {
    format!("{e}\n--- container log ---\n{}", driver.log_text())
}

fn local_volume(name: &str, duration: Option<&str>) -> InlineVolume {
    let mut v = volume(duration.map(|d| ("csi.certvol.io/duration", d)));
    v.name = name.into();
    v
}

async fn local_install_and_first_publish(ctx: Ctx) -> Outcome {
    let plan = plan(&ctx, &[("issuer", "local")])?;
    check(
        plan.token.is_none() && plan.token_containers.is_empty(),
        || {
            format!(
                "local mode has no API access, yet a token: {:?} in {:?}",
                plan.token, plan.token_containers
            )
        },
    )?;
    check(plan.read_only_root, || {
        "the chart no longer sets readOnlyRootFilesystem".into()
    })?;
    let mut node =
        Node::boot("node-a", Path::new("/var/lib/kubelet")).map_err(|e| e.to_string())?;
    let (driver, kubelet) = start_ready(&mut node, &plan).await?;
    let pod = Pod::new("shop", "web-0");
    let vol = local_volume("tls", None);
    let target = kubelet
        .publish(&pod, &vol)
        .await
        .map_err(|e| with_log(&driver, e))?;
    check_served(&node, &target)?;
    kubelet
        .unpublish(&pod, &vol)
        .await
        .map_err(|e| with_log(&driver, e))?;
    check(!target.exists(), || {
        format!("{} left after unpublish", target.display())
    })
}

async fn custom_driver_name_and_kubelet_root(ctx: Ctx) -> Outcome {
    let root = "/var/lib/k0s/kubelet";
    let plan = plan(
        &ctx,
        &[
            ("issuer", "local"),
            ("driverName", "certs.example.com"),
            ("kubeletRootDir", root),
        ],
    )?;
    check(plan.driver.name == "certs.example.com", || {
        format!("{:?}", plan.driver)
    })?;
    check(
        plan.registration_path == Path::new(root).join("plugins/certs.example.com/csi.sock"),
        || format!("registration path {}", plan.registration_path.display()),
    )?;
    let mut node = Node::boot("node-b", Path::new(root)).map_err(|e| e.to_string())?;
    let (driver, kubelet) = start_ready(&mut node, &plan).await?;
    let pod = Pod::new("shop", "web-0");
    let mut vol = local_volume("tls", None);
    vol.attributes
        .insert("driver".into(), plan.driver.name.clone());
    let target = kubelet
        .publish(&pod, &vol)
        .await
        .map_err(|e| with_log(&driver, e))?;
    check(target.starts_with(root), || target.display().to_string())?;
    check_served(&node, &target)?;
    kubelet
        .unpublish(&pod, &vol)
        .await
        .map_err(|e| with_log(&driver, e))
}

/// kubelet's real root is elsewhere and /var/lib/kubelet is only a symbolic link to it (so the
/// chart's hostPaths exist and registration works): kubelet then sends targets under its real
/// root, which the container cannot see. cert-manager csi-driver answers such publishes with
/// an empty volume (its #134); certvol must refuse, naming the flag to fix.
async fn kubelet_root_elsewhere_names_the_flag(ctx: Ctx) -> Outcome {
    let plan = plan(&ctx, &[("issuer", "local")])?;
    let real_root = Path::new("/var/lib/kubelet-data");
    let mut node = Node::boot("node-c", real_root).map_err(|e| e.to_string())?;
    std::os::unix::fs::symlink(real_root, "/var/lib/kubelet").map_err(|e| e.to_string())?;
    let (driver, kubelet) = start_ready(&mut node, &plan).await?;
    let pod = Pod::new("shop", "web-0");
    let vol = local_volume("tls", None);
    let err = match kubelet.publish(&pod, &vol).await {
        Ok(t) => return Err(format!("publish to {} succeeded", t.display())),
        Err(e) => e,
    };
    check(err.code() == tonic::Code::InvalidArgument, || {
        with_log(&driver, format!("expected InvalidArgument, got {err:?}"))
    })?;
    check(
        err.message().contains("--kubelet-dir") && err.message().contains("kubeletRootDir"),
        || {
            format!(
                "the error does not name --kubelet-dir and kubeletRootDir: {}",
                err.message()
            )
        },
    )?;
    let target = kubelet.target_path(&pod, &vol);
    check(!target.exists(), || {
        format!("{} was created", target.display())
    })?;
    let leftovers: Vec<_> = certvol_e2e::read_mounts()
        .into_iter()
        .filter(|m| m.mount_point.starts_with("/var/lib/certvol/volumes"))
        .collect();
    check(leftovers.is_empty(), || {
        format!("mounts left: {leftovers:?}")
    })
}

/// 50 volumes whose 8 s certificates renew constantly; the container is killed (a crash or an
/// OOM kill: its mount namespace goes with it) and a new one started. Every volume stays
/// served throughout and renews again under the new container.
async fn restart_with_50_volumes_mid_renewal(ctx: Ctx) -> Outcome {
    // Seconds-long certificates, which the chart's default floor (an hour) refuses.
    let plan = plan(&ctx, &[("issuer", "local"), ("limits.minDuration", "1s")])?;
    let mut node =
        Node::boot("node-d", Path::new("/var/lib/kubelet")).map_err(|e| e.to_string())?;
    let (mut driver, kubelet) = start_ready(&mut node, &plan).await?;
    let mut published = Vec::new();
    for i in 0..50 {
        let pod = Pod::new("shop", &format!("web-{i}"));
        let mut vol = local_volume("tls", Some("8s"));
        vol.attributes
            .insert("csi.certvol.io/renew-before".into(), "6s".into());
        let target = kubelet
            .publish(&pod, &vol)
            .await
            .map_err(|e| with_log(&driver, e))?;
        published.push((pod, vol, target));
    }
    let targets: Vec<PathBuf> = published.iter().map(|(_, _, t)| t.clone()).collect();
    for t in &targets {
        check_served(&node, t)?;
    }
    let reader = PairReader::over(targets.clone());
    // Renewals are under way (every 2 s per volume): kill mid-flight.
    tokio::time::sleep(Duration::from_millis(2300)).await;
    driver.kill9();
    let (driver, _kubelet) = start_ready(&mut node, &plan).await?;
    let at_restart: Vec<String> = targets
        .iter()
        .map(|t| check_served(&node, t))
        .collect::<Result<_, _>>()?;
    // Every volume renews under the new container: a serial not served when it started.
    let renewed = eventually(Duration::from_secs(30), || {
        let now: Vec<String> = targets
            .iter()
            .filter_map(|t| check_served(&node, t).ok())
            .collect();
        (now.len() == targets.len() && now.iter().zip(&at_restart).all(|(a, b)| a != b))
            .then_some(())
    })
    .await;
    let report = reader.stop();
    check(report.errors.is_empty(), || {
        format!(
            "{} bad reads, first: {:?}",
            report.errors.len(),
            report.errors.first()
        )
    })?;
    check(renewed.is_some(), || {
        with_log(&driver, "not every volume renewed after the restart")
    })?;
    let limit = plan.memory_limit.unwrap_or_default();
    let peak = node.memory_peak().unwrap_or_default();
    println!(
        "  50 volumes, {} consistent reads, {} certificates seen across the restart; new container's peak memory {} KiB of its {} KiB limit",
        report.reads,
        report.serials.len(),
        peak >> 10,
        limit >> 10
    );
    Ok(())
}

/// Volume tmpfs is charged to the driver's memory cgroup: a tenant publishing volume after
/// volume grows the container's memory by each volume's files, until the chart's
/// `maxVolumeBytes` refuses the next publish (FailedPrecondition naming the flag, nothing left
/// behind) while the container is still well under its memory limit. Removing a volume frees
/// both its budget and its memory.
async fn tmpfs_budget_bounds_the_memory_volumes_cost(ctx: Ctx) -> Outcome {
    const BUDGET: u64 = 256 << 10;
    let plan = plan(&ctx, &[("issuer", "local"), ("maxVolumeBytes", "256Ki")])?;
    let limit = plan.memory_limit.ok_or("the chart sets no memory limit")?;
    let mut node =
        Node::boot("node-m", Path::new("/var/lib/kubelet")).map_err(|e| e.to_string())?;
    let (mut driver, kubelet) = start_ready(&mut node, &plan).await?;
    let usage = |node: &Node| {
        node.memory_current()
            .ok_or("no memory cgroup for the container")
    };
    let vol = local_volume("tls", None);
    // Warm up the driver's own allocations (first issuance, gRPC) before measuring tmpfs.
    let first = Pod::new("shop", "web-0");
    kubelet
        .publish(&first, &vol)
        .await
        .map_err(|e| with_log(&driver, e))?;
    let before = usage(&node)?;
    let shmem_before = node.memory_stat("shmem").unwrap_or_default();
    let rss_before = node
        .memory_stat("rss")
        .or_else(|| node.memory_stat("anon"))
        .unwrap_or_default();
    let mut published = 1;
    let refused = loop {
        if published > 64 {
            return Err(with_log(
                &driver,
                format!("{published} volumes published under a {BUDGET}-byte budget"),
            ));
        }
        let pod = Pod::new("shop", &format!("web-{published}"));
        match kubelet.publish(&pod, &vol).await {
            Ok(_) => published += 1,
            Err(e) => break (pod, e),
        }
    };
    let after = usage(&node)?;
    let shmem = node
        .memory_stat("shmem")
        .unwrap_or_default()
        .saturating_sub(shmem_before);
    let rss = node
        .memory_stat("rss")
        .or_else(|| node.memory_stat("anon"))
        .unwrap_or_default()
        .saturating_sub(rss_before);
    let (pod, err) = refused;
    check(err.code() == tonic::Code::FailedPrecondition, || {
        with_log(&driver, format!("expected FailedPrecondition, got {err:?}"))
    })?;
    check(
        err.message().contains("--max-volume-bytes")
            && err.message().contains(&format!("budget of {BUDGET} bytes"))
            && err.message().contains("this volume: "),
        || {
            format!(
                "the error does not name the flag, budget and volume size: {}",
                err.message()
            )
        },
    )?;
    let target = kubelet.target_path(&pod, &vol);
    check(!target.exists(), || {
        format!("{} was created", target.display())
    })?;
    // Every published volume costs whole pages; at least 4 (key, certificate, CA, private key).
    check(
        (4..=BUDGET / 4096 / 4).contains(&(BUDGET / 4096 / published)),
        || format!("{published} volumes fit a {BUDGET}-byte budget"),
    )?;
    let grown = after.saturating_sub(before);
    let per_volume = grown / (published - 1).max(1);
    check(grown >= (published - 1) * 4 * 4096, || {
        format!(
            "memory grew by {grown} bytes over {} volumes: tmpfs is not charged to the container",
            published - 1
        )
    })?;
    check(after < limit, || {
        format!("memory {after} past the limit {limit}")
    })?;
    // A new container counts the volumes it keeps: the node is still full.
    driver.kill9();
    let (driver, kubelet) = start_ready(&mut node, &plan).await?;
    match kubelet.publish(&pod, &vol).await {
        Ok(_) => {
            return Err(with_log(
                &driver,
                "after a restart the driver forgot the volumes' tmpfs: a publish past the budget succeeded",
            ));
        }
        Err(e) => check(e.code() == tonic::Code::FailedPrecondition, || {
            with_log(&driver, format!("after the restart: {e:?}"))
        })?,
    }
    kubelet
        .unpublish(&first, &vol)
        .await
        .map_err(|e| with_log(&driver, e))?;
    kubelet
        .publish(&pod, &vol)
        .await
        .map_err(|e| with_log(&driver, format!("after freeing a volume: {e}")))?;
    println!(
        "  {published} volumes under a {} KiB budget; container memory {} KiB -> {} KiB (limit {} KiB), {} KiB per volume, of which shmem (tmpfs: volume files, keys, state on the node's tmpfs data root) {} KiB, heap {} KiB, the rest kernel objects (inodes, the mounts)",
        BUDGET >> 10,
        before >> 10,
        after >> 10,
        limit >> 10,
        per_volume >> 10,
        (shmem / (published - 1).max(1)) >> 10,
        (rss / (published - 1).max(1)) >> 10
    );
    Ok(())
}

/// A node reboot takes every tmpfs (and bind mount); kubelet then publishes each volume again
/// into the same target, and the new container must serve them.
async fn node_reboot_then_republish(ctx: Ctx) -> Outcome {
    let plan = plan(&ctx, &[("issuer", "local")])?;
    let mut node =
        Node::boot("node-e", Path::new("/var/lib/kubelet")).map_err(|e| e.to_string())?;
    let (mut driver, kubelet) = start_ready(&mut node, &plan).await?;
    let mut published = Vec::new();
    for i in 0..3 {
        let pod = Pod::new("shop", &format!("web-{i}"));
        let vol = local_volume("tls", None);
        let target = kubelet
            .publish(&pod, &vol)
            .await
            .map_err(|e| with_log(&driver, e))?;
        published.push((pod, vol, target));
    }
    driver.kill9();
    node.lose_mounts();
    let (driver, kubelet) = start_ready(&mut node, &plan).await?;
    for (pod, vol, target) in &published {
        kubelet
            .publish(pod, vol)
            .await
            .map_err(|e| with_log(&driver, e))?;
        check_served(&node, target)?;
    }
    for (pod, vol, target) in &published {
        kubelet
            .unpublish(pod, vol)
            .await
            .map_err(|e| with_log(&driver, e))?;
        check(!target.exists(), || format!("{} left", target.display()))?;
    }
    Ok(())
}

/// A rolling update: the old pod gets SIGTERM and its grace period, the new pod (another image
/// holding its own copy of the binary, different values) starts on the same data root and
/// takes over every volume: served, renewed, removable.
async fn upgrade_on_the_same_data_root(ctx: Ctx) -> Outcome {
    let old = plan(&ctx, &[("issuer", "local"), ("limits.minDuration", "1s")])?;
    let new = plan(
        &ctx,
        &[
            ("issuer", "local"),
            ("limits.minDuration", "1s"),
            ("logFormat", "json"),
            ("tmpfsSize", "2Mi"),
        ],
    )?;
    let mut node =
        Node::boot("node-f", Path::new("/var/lib/kubelet")).map_err(|e| e.to_string())?;
    let (mut driver, kubelet) = start_ready(&mut node, &old).await?;
    let pod = Pod::new("shop", "web-0");
    let mut vol = local_volume("tls", Some("10s"));
    vol.attributes
        .insert("csi.certvol.io/renew-before".into(), "7s".into());
    let target = kubelet
        .publish(&pod, &vol)
        .await
        .map_err(|e| with_log(&driver, e))?;
    let first = check_served(&node, &target)?;
    let grace = Duration::from_secs(u64::try_from(old.termination_grace_seconds).unwrap_or(30));
    let status = driver.terminate(grace).map_err(|e| with_log(&driver, e))?;
    check(status.success(), || {
        with_log(&driver, format!("SIGTERM exit: {status}"))
    })?;
    // The new image: its own file, not the old process's binary.
    let image = tempfile::tempdir().map_err(|e| e.to_string())?;
    let binary = image.path().join("certvol");
    std::fs::copy(certvol_e2e::certvol_bin(), &binary).map_err(|e| e.to_string())?;
    let mut driver = node.start(&new, None, Some(&binary))?;
    let probe = new.readiness.clone().ok_or("no readiness probe")?;
    node.wait_probe(&mut driver, &probe, READY).await?;
    check(driver.log_text().contains("{\""), || {
        with_log(
            &driver,
            "the new pod's --log-format=json did not take effect",
        )
    })?;
    let renewed = eventually(Duration::from_secs(20), || {
        check_served(&node, &target).ok().filter(|s| *s != first)
    })
    .await;
    check(renewed.is_some(), || {
        with_log(&driver, "no renewal after the upgrade")
    })?;
    kubelet
        .unpublish(&pod, &vol)
        .await
        .map_err(|e| with_log(&driver, e))?;
    check(!target.exists(), || format!("{} left", target.display()))
}

/// The cluster side of a scenario: the API stand-in at the Kubernetes version CI selects
/// (`CERTVOL_E2E_KUBE_VERSION`, `CERTVOL_E2E_KUBE_ENABLE`), over TLS because in-cluster
/// configuration is https-only, and the files kubelet projects for the DaemonSet's service
/// account.
struct Cluster {
    server: ApiServer,
    incluster: InClusterEnv,
    _dir: tempfile::TempDir,
}

impl Cluster {
    async fn start(plan: &PodPlan) -> Result<Cluster, String> {
        let mut config = ApiConfig::from_env().map_err(|e| e.to_string())?;
        config.tls = true;
        let server = ApiServer::start_with(config)
            .await
            .map_err(|e| format!("API stand-in: {e}"))?;
        let token = "container-tier-driver-token";
        let user = format!(
            "system:serviceaccount:{}:{}",
            plan.namespace, plan.service_account
        );
        server.add_token(
            token,
            &user,
            &["system:serviceaccounts", "system:authenticated"],
            "e2e-driver-uid",
        );
        // The chart's CSIDriver, as rendered: API-mode drivers refuse to serve without
        // podInfoOnMount: true.
        server
            .store()
            .create(Kind::CsiDriver, "", plan.driver.object.clone())
            .map_err(|e| format!("create the rendered CSIDriver: {e:?}"))?;
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let incluster = server
            .write_incluster_files(dir.path(), token, &plan.namespace)
            .map_err(|e| e.to_string())?;
        Ok(Cluster {
            server,
            incluster,
            _dir: dir,
        })
    }

    /// The Pod object (owner of its requests, target of events) bound to `node`, with the
    /// server's uid: the driver publishes only for pods its node's pod watch confirms.
    fn create_pod(&self, node: &Node, namespace: &str, name: &str) -> Result<Pod, String> {
        let created = self
            .server
            .store()
            .create(
                Kind::Pod,
                namespace,
                certvol_e2e::cluster::pod_object(namespace, name, &node.name),
            )
            .map_err(|e| format!("create pod {namespace}/{name}: {e:?}"))?;
        let mut pod = Pod::new(namespace, name);
        pod.uid = created["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .into();
        Ok(pod)
    }

    /// The objects of `kind` in `namespace` filed by `node` (its certvol.io/node label).
    fn filed_by(&self, kind: Kind, namespace: Option<&str>, node: &Node) -> Vec<serde_json::Value> {
        let selector = format!("{LABEL_NODE}={}", label_value(&node.name));
        self.server.store().list(kind, namespace, Some(&selector))
    }
}

/// The API token is the chart's projected volume, mounted read-only where in-cluster clients
/// look, in the certvol container alone: the sidecars never see it.
fn check_token_in_certvol_only(plan: &PodPlan) -> Outcome {
    let token = plan
        .token
        .as_ref()
        .ok_or("no API token for the certvol container")?;
    check(
        token.volume.is_some()
            && token.mount_path == Path::new(SERVICE_ACCOUNT_DIR)
            && token.read_only
            && token.expiration_seconds == 3607,
        || format!("token mount {token:?}"),
    )?;
    check(plan.token_containers == ["certvol"], || {
        format!("the token reaches {:?}", plan.token_containers)
    })
}

/// Default values: cert-manager mode with the DaemonSet's own service account, configured
/// in-cluster (no kubeconfig), against the version-faithful stand-in.
async fn cert_manager_install_and_first_publish(ctx: Ctx) -> Outcome {
    let plan = plan(&ctx, &[])?;
    check(plan.arg("issuer") == Some("cert-manager"), || {
        format!("{:?}", plan.args)
    })?;
    check_token_in_certvol_only(&plan)?;
    let cluster = Cluster::start(&plan).await?;
    let _signer = Signer::start(cluster.server.store(), SignerConfig::default());
    let mut node =
        Node::boot("node-g", Path::new("/var/lib/kubelet")).map_err(|e| e.to_string())?;
    let (driver, kubelet) = start_ready_with(&mut node, &plan, Some(&cluster.incluster)).await?;
    let pod = cluster.create_pod(&node, "shop", "web-0")?;
    let vol = cm_volume(STANDIN_ISSUER, []);
    let target = kubelet
        .publish(&pod, &vol)
        .await
        .map_err(|e| with_log(&driver, e))?;
    check_served(&node, &target)?;
    let filed = cluster.filed_by(Kind::CertificateRequest, Some("shop"), &node);
    check(filed.len() == 1, || {
        format!("{} CertificateRequests", filed.len())
    })?;
    let username = filed[0]["spec"]["username"].as_str().unwrap_or_default();
    check(username == "system:serviceaccount:certvol:certvol", || {
        format!("filed as {username:?}, not the DaemonSet's service account")
    })?;
    kubelet
        .unpublish(&pod, &vol)
        .await
        .map_err(|e| with_log(&driver, e))?;
    check(!target.exists(), || format!("{} left", target.display()))?;
    let left = cluster.filed_by(Kind::CertificateRequest, Some("shop"), &node);
    check(left.is_empty(), || {
        format!("{} CertificateRequests left", left.len())
    })
}

/// `certManager.tokenRequest=true`: the CSIDriver asks kubelet for the pod's own token, the
/// request is filed with it (cert-manager sees the pod's identity), and kubelet's periodic
/// republish (requiresRepublish) files nothing new.
async fn cert_manager_token_request(ctx: Ctx) -> Outcome {
    let plan = plan(&ctx, &[("certManager.tokenRequest", "true")])?;
    check(
        plan.driver.token_audiences == [String::new()] && plan.driver.requires_republish,
        || format!("{:?}", plan.driver),
    )?;
    let cluster = Cluster::start(&plan).await?;
    let _signer = Signer::start(cluster.server.store(), SignerConfig::default());
    let mut node =
        Node::boot("node-h", Path::new("/var/lib/kubelet")).map_err(|e| e.to_string())?;
    let (driver, kubelet) = start_ready_with(&mut node, &plan, Some(&cluster.incluster)).await?;
    let mut pod = cluster.create_pod(&node, "shop", "web-0")?;
    pod.token = Some("pod-token-web-0".into());
    cluster.server.add_token(
        "pod-token-web-0",
        "system:serviceaccount:shop:default",
        &["system:serviceaccounts", "system:authenticated"],
        "pod-sa-uid",
    );
    let vol = cm_volume(STANDIN_ISSUER, []);
    let target = kubelet
        .publish(&pod, &vol)
        .await
        .map_err(|e| with_log(&driver, e))?;
    let serial = check_served(&node, &target)?;
    let filed = cluster.filed_by(Kind::CertificateRequest, Some("shop"), &node);
    check(filed.len() == 1, || {
        format!("{} CertificateRequests", filed.len())
    })?;
    let username = filed[0]["spec"]["username"].as_str().unwrap_or_default();
    check(username == "system:serviceaccount:shop:default", || {
        format!("filed as {username:?}, not with the pod's token")
    })?;
    kubelet
        .publish(&pod, &vol)
        .await
        .map_err(|e| with_log(&driver, e))?;
    check(check_served(&node, &target)? == serial, || {
        "the republish re-issued".into()
    })?;
    let filed = cluster.filed_by(Kind::CertificateRequest, Some("shop"), &node);
    check(filed.len() == 1, || {
        format!("{} CertificateRequests after the republish", filed.len())
    })?;
    kubelet
        .unpublish(&pod, &vol)
        .await
        .map_err(|e| with_log(&driver, e))
}

/// `issuer=kubernetes-csr` with the default `ca-source` (the signer's ClusterTrustBundles):
/// served on versions that serve a ClusterTrustBundle API; elsewhere a clear
/// FailedPrecondition naming the attribute, and nothing left behind.
async fn kube_csr_install_and_first_publish(ctx: Ctx) -> Outcome {
    const SIGNER: &str = "example.com/workloads";
    let plan = plan(&ctx, &[("issuer", "kubernetes-csr")])?;
    check_token_in_certvol_only(&plan)?;
    let cluster = Cluster::start(&plan).await?;
    let signer = KubeSigner::start(cluster.server.store(), KubeSignerConfig::new(SIGNER))
        .map_err(|e| e.to_string())?;
    let ctb_version = cluster
        .server
        .preferred_api_version(Kind::ClusterTrustBundle);
    if ctb_version.is_some() {
        cluster
            .server
            .store()
            .create(
                Kind::ClusterTrustBundle,
                "",
                json!({"metadata": {"name": "example.com:workloads:v1"},
                       "spec": {"signerName": SIGNER, "trustBundle": signer.ca_pem()}}),
            )
            .map_err(|e| format!("create ClusterTrustBundle: {e:?}"))?;
    }
    let mut node =
        Node::boot("node-i", Path::new("/var/lib/kubelet")).map_err(|e| e.to_string())?;
    let (driver, kubelet) = start_ready_with(&mut node, &plan, Some(&cluster.incluster)).await?;
    let pod = cluster.create_pod(&node, "shop", "web-0")?;
    let mut vol = volume([("csi.certvol.io/signer-name", SIGNER)]);
    vol.attributes.remove("csi.certvol.io/issuer-name");
    let published = kubelet.publish(&pod, &vol).await;
    println!(
        "  Kubernetes {}, ClusterTrustBundle served as {}",
        cluster.server.version(),
        ctb_version.as_deref().unwrap_or("nothing")
    );
    match (ctb_version, published) {
        (Some(_), Ok(target)) => {
            check_served(&node, &target)?;
            let signer_ca = certvol_driver::x509::pki::parse_pem_chain(&signer.ca_pem())
                .map_err(|e| e.to_string())?;
            let files = read_volume(&target)?;
            check(
                files
                    .ca
                    .iter()
                    .map(|c| &c.der)
                    .eq(signer_ca.iter().map(|c| &c.der)),
                || "ca.crt is not the signer's CA from its ClusterTrustBundle".into(),
            )?;
            kubelet
                .unpublish(&pod, &vol)
                .await
                .map_err(|e| with_log(&driver, e))
        }
        (Some(v), Err(e)) => Err(with_log(
            &driver,
            format!("publish failed with {v} served: {e:?}"),
        )),
        (None, Ok(_)) => {
            Err("publish succeeded although no ClusterTrustBundle API is served".into())
        }
        (None, Err(e)) => {
            check(e.code() == tonic::Code::FailedPrecondition, || {
                with_log(&driver, format!("expected FailedPrecondition, got {e:?}"))
            })?;
            check(e.message().contains("csi.certvol.io/ca-source"), || {
                format!("the error does not name the attribute: {}", e.message())
            })?;
            let target = kubelet.target_path(&pod, &vol);
            check(!target.exists(), || {
                format!("{} was created", target.display())
            })?;
            let filed = cluster.filed_by(Kind::CertificateSigningRequest, None, &node);
            check(filed.is_empty(), || format!("{} CSRs filed", filed.len()))
        }
    }
}
