//! An emulated Kubernetes node: the node's own mount namespace (so nothing reaches the machine
//! the tests run on), a kubelet root directory, and containers started from a [`PodPlan`] as
//! kubelet and a CRI runtime start them. The test process itself plays kubelet: it lives in the
//! node's namespace, creates pod directories under the node's kubelet root, dials the socket at
//! the path the registrar registered, and reads targets as an application container would.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, unshare};

use super::pod::{HttpProbe, PodPlan, image_entrypoint};
use super::runtime::{BindMount, ImageEntry, Propagation, RuntimeSpec};
use crate::apiserver::InClusterEnv;
use crate::{Driver, bin_path, certvol_bin, python};

/// Where the node's persistent directories live. Everything the chart mounts from the node
/// (kubelet's root, the data root) must be below it; it is a tmpfs private to the test process.
pub const NODE_VAR_LIB: &str = "/var/lib";

/// Turns this process into the node: a mount namespace of its own whose mounts receive the
/// machine's but never send back. Must run before any thread exists (unshare(CLONE_NEWNS)
/// refuses a process that shares its filesystem context with other threads).
pub fn become_node() -> io::Result<()> {
    unshare(CloneFlags::CLONE_NEWNS).map_err(io::Error::from)?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None::<&str>,
    )
    .map_err(io::Error::from)
}

/// One booted node.
pub struct Node {
    pub name: String,
    /// kubelet's `--root-dir` on this node.
    pub kubelet_root: PathBuf,
    work: tempfile::TempDir,
    starts: usize,
    cgroups: Vec<PathBuf>,
}

fn mkdirs(path: &Path, mode: u32) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
}

impl Node {
    /// Boots a node whose kubelet runs with `--root-dir kubelet_root` (below [`NODE_VAR_LIB`]):
    /// a fresh, shared tmpfs at /var/lib (shared, as systemd makes every mount on a real node,
    /// which Bidirectional propagation needs) holding kubelet's directories.
    pub fn boot(name: &str, kubelet_root: &Path) -> io::Result<Node> {
        if !kubelet_root.starts_with(NODE_VAR_LIB) {
            return Err(io::Error::other(format!(
                "the emulated node keeps kubelet's root below {NODE_VAR_LIB}, not {}",
                kubelet_root.display()
            )));
        }
        let work = tempfile::Builder::new()
            .prefix("certvol-node-")
            .tempdir_in(std::env::temp_dir())?;
        mount(
            Some("node-var-lib"),
            NODE_VAR_LIB,
            Some("tmpfs"),
            MsFlags::empty(),
            Some("mode=0755,size=512m"),
        )
        .map_err(io::Error::from)?;
        mount(
            None::<&str>,
            NODE_VAR_LIB,
            None::<&str>,
            MsFlags::MS_SHARED,
            None::<&str>,
        )
        .map_err(io::Error::from)?;
        for dir in ["pods", "plugins", "plugins_registry"] {
            mkdirs(&kubelet_root.join(dir), 0o750)?;
        }
        Ok(Node {
            name: name.into(),
            kubelet_root: kubelet_root.to_path_buf(),
            work,
            starts: 0,
            cgroups: Vec::new(),
        })
    }

    pub fn pods_dir(&self) -> PathBuf {
        self.kubelet_root.join("pods")
    }

    /// The node loses every mount below /var/lib (each volume's tmpfs and bind mount), as a
    /// reboot does; files on the node's disk stay.
    pub fn lose_mounts(&self) {
        let mut points: Vec<PathBuf> = crate::read_mounts()
            .into_iter()
            .map(|m| m.mount_point)
            .filter(|p| p.starts_with(NODE_VAR_LIB) && p != Path::new(NODE_VAR_LIB))
            .collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for p in points {
            let _ = umount2(&p, MntFlags::MNT_DETACH);
        }
    }

    /// kubelet's view of the plugin: the socket the registrar registered.
    pub fn kubelet(&self, plan: &PodPlan) -> crate::kubelet::Kubelet {
        crate::kubelet::Kubelet::connect(&plan.registration_path, &self.pods_dir())
            .expect("a lazy channel never fails to build")
    }

    /// Starts the certvol container of `plan` as kubelet and the runtime would, with the
    /// image's entrypoint at `binary` (the certvol under test unless an upgrade says otherwise)
    /// and, when the pod mounts its service-account token, `api`'s in-cluster files and
    /// address. hostPath type checks fail the start with kubelet's message.
    pub fn start(
        &mut self,
        plan: &PodPlan,
        api: Option<&InClusterEnv>,
        binary: Option<&Path>,
    ) -> Result<Driver, String> {
        self.starts += 1;
        let n = self.starts;
        let pod_name = format!("certvol-{:05x}", n);
        let mut mounts = Vec::new();
        for m in &plan.mounts {
            match m.host_path_type.as_str() {
                "DirectoryOrCreate" => mkdirs(&m.host_path, 0o755)
                    .map_err(|e| format!("hostPath {}: {e}", m.host_path.display()))?,
                "Directory" if !m.host_path.is_dir() => {
                    return Err(format!(
                        "hostPath type check failed: {} is not a directory",
                        m.host_path.display()
                    ));
                }
                "" | "Directory" => {}
                other => return Err(format!("hostPath type {other:?} is not emulated")),
            }
            mounts.push(BindMount {
                source: m.host_path.clone(),
                destination: m.mount_path.clone(),
                propagation: m.propagation,
                read_only: m.read_only,
            });
        }
        let run_dir = self.work.path().join(format!("start-{n}"));
        mkdirs(&run_dir, 0o700).map_err(|e| e.to_string())?;
        if let Some(token) = &plan.token {
            // The stand-in's in-cluster files are the volume's three (token, ca.crt, namespace).
            let api =
                api.ok_or("the pod mounts a service-account token but no API server is up")?;
            mounts.push(BindMount {
                source: api.dir.clone(),
                destination: token.mount_path.clone(),
                propagation: Propagation::Private,
                read_only: token.read_only,
            });
        }

        let entrypoint = image_entrypoint(
            &fs::read_to_string(python::repo_root().join("Dockerfile"))
                .map_err(|e| format!("Dockerfile: {e}"))?,
        )?;
        let mut argv = if plan.command.is_empty() {
            entrypoint.clone()
        } else {
            plan.command.clone()
        };
        argv.extend(plan.args.iter().cloned());
        let binary = binary.map_or_else(certvol_bin, Path::to_path_buf);
        let image = image(&binary, &entrypoint)?;

        let fields = BTreeMap::from([
            ("spec.nodeName", self.name.clone()),
            ("metadata.name", pod_name.clone()),
            ("metadata.namespace", plan.namespace.clone()),
            ("spec.serviceAccountName", plan.service_account.clone()),
            ("status.hostIP", "127.0.0.1".to_string()),
            ("status.podIP", "127.0.0.1".to_string()),
        ]);
        let mut env = vec![
            (
                "PATH".to_string(),
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
            ),
            (
                "SSL_CERT_FILE".to_string(),
                "/etc/ssl/certs/ca-certificates.crt".to_string(),
            ),
            ("HOSTNAME".to_string(), pod_name),
        ];
        // kubelet always injects the `kubernetes` Service's variables; without an API server
        // in the scenario they point at a port nobody serves, as an unreachable API would.
        let (host, port) = api.map_or(("127.0.0.1".to_string(), 1), |a| (a.host.clone(), a.port));
        env.extend([
            ("KUBERNETES_SERVICE_HOST".to_string(), host.clone()),
            ("KUBERNETES_SERVICE_PORT".to_string(), port.to_string()),
            (
                "KUBERNETES_SERVICE_PORT_HTTPS".to_string(),
                port.to_string(),
            ),
            (
                "KUBERNETES_PORT".to_string(),
                format!("tcp://{host}:{port}"),
            ),
        ]);
        env.extend(plan.resolve_env(&fields)?);

        let cgroup_procs = match plan.memory_limit.map(|limit| self.memory_cgroup(n, limit)) {
            Some(Ok(procs)) => Some(procs),
            // CI's machines have the controller: there the limit is part of the contract.
            Some(Err(e)) if std::env::var_os("CI").is_some() => return Err(e),
            Some(Err(e)) => {
                eprintln!("warning: running the container without its memory limit: {e}");
                None
            }
            None => None,
        };
        let spec = RuntimeSpec {
            cgroup_procs,
            rootfs: run_dir.join("rootfs"),
            image,
            mounts,
            read_only_root: plan.read_only_root,
            argv,
            env,
        };
        mkdirs(&spec.rootfs, 0o755).map_err(|e| e.to_string())?;
        let spec_path = run_dir.join("runtime.json");
        fs::write(
            &spec_path,
            serde_json::to_vec_pretty(&spec).map_err(|e| e.to_string())?,
        )
        .map_err(|e| e.to_string())?;
        let log = run_dir.join("container.log");
        let out = fs::File::create(&log).map_err(|e| e.to_string())?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let child = Command::new(bin_path("certvol-runtime"))
            .arg(&spec_path)
            .env_clear()
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("start certvol-runtime: {e}"))?;
        Ok(Driver::from_child(child, log))
    }

    /// Probes `probe` as kubelet does (HTTP GET, 200-399 is success) until it succeeds, the
    /// container exits, or `timeout` passes.
    pub async fn wait_probe(
        &self,
        driver: &mut Driver,
        probe: &HttpProbe,
        timeout: Duration,
    ) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let mut last = String::from("not probed yet");
        while Instant::now() < deadline {
            if let Ok(Some(status)) = driver.try_exit() {
                return Err(format!(
                    "the container exited ({status}) before {} answered:\n{}",
                    probe.path,
                    driver.log_text()
                ));
            }
            match http_get(probe.port, &probe.path).await {
                Ok(code) if (200..400).contains(&code) => return Ok(()),
                Ok(code) => last = format!("HTTP {code}"),
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(format!(
            "{} did not succeed within {timeout:?} (last: {last}):\n{}",
            probe.path,
            driver.log_text()
        ))
    }
}

impl Node {
    /// A memory cgroup limited to `limit` bytes (cgroup v1's memory controller or v2's), as the
    /// runtime makes for a container with `resources.limits.memory`; returns its `cgroup.procs`.
    fn memory_cgroup(&mut self, n: usize, limit: u64) -> Result<PathBuf, String> {
        let name = format!("certvol-e2e-{}-{n}", std::process::id());
        let (dir, limit_file) = if Path::new("/sys/fs/cgroup/memory/memory.limit_in_bytes").exists()
        {
            (
                Path::new("/sys/fs/cgroup/memory").join(name),
                "memory.limit_in_bytes",
            )
        } else if fs::read_to_string("/sys/fs/cgroup/cgroup.controllers")
            .is_ok_and(|c| c.split_whitespace().any(|c| c == "memory"))
        {
            (Path::new("/sys/fs/cgroup").join(name), "memory.max")
        } else {
            return Err(
                "no memory cgroup controller: cannot apply the chart's memory limit".into(),
            );
        };
        fs::create_dir(&dir).map_err(|e| format!("create cgroup {}: {e}", dir.display()))?;
        self.cgroups.push(dir.clone());
        fs::write(dir.join(limit_file), limit.to_string())
            .map_err(|e| format!("{}/{limit_file}: {e}", dir.display()))?;
        Ok(dir.join("cgroup.procs"))
    }
}

impl Node {
    /// The peak memory use of the container started last (its memory cgroup's high-water
    /// mark, which counts the tmpfs pages it wrote), if it had a limit.
    pub fn memory_peak(&self) -> Option<u64> {
        let dir = self.cgroups.last()?;
        ["memory.max_usage_in_bytes", "memory.peak"]
            .iter()
            .find_map(|f| fs::read_to_string(dir.join(f)).ok())
            .and_then(|t| t.trim().parse().ok())
    }

    /// One counter of the `memory.stat` of the container started last (e.g. `shmem`: its tmpfs
    /// pages, `rss` or `anon`: its heap), if it had a limit.
    pub fn memory_stat(&self, key: &str) -> Option<u64> {
        let dir = self.cgroups.last()?;
        let text = fs::read_to_string(dir.join("memory.stat")).ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
    }

    /// The current memory use of the container started last (cgroup v1's
    /// `memory.usage_in_bytes`, v2's `memory.current`: tmpfs pages it wrote included), if it
    /// had a limit.
    pub fn memory_current(&self) -> Option<u64> {
        let dir = self.cgroups.last()?;
        ["memory.usage_in_bytes", "memory.current"]
            .iter()
            .find_map(|f| fs::read_to_string(dir.join(f)).ok())
            .and_then(|t| t.trim().parse().ok())
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // The containers are gone by now (each Driver kills its process when dropped, before
        // the node it runs on), so their cgroups are empty.
        for dir in &self.cgroups {
            let _ = fs::remove_dir(dir);
        }
        // The whole node goes at once: its tmpfs and every volume mount below it.
        let _ = umount2(NODE_VAR_LIB, MntFlags::MNT_DETACH);
    }
}

/// The image: the distroless/cc-debian12 layout reduced to what a glibc binary needs (the
/// host's libraries and /etc, read-only), an empty /tmp, and the binary at the entrypoint.
fn image(binary: &Path, entrypoint: &[String]) -> Result<Vec<ImageEntry>, String> {
    let target = entrypoint.first().ok_or("empty ENTRYPOINT")?;
    let mut entries = Vec::new();
    for dir in ["/lib", "/lib64", "/usr/lib", "/usr/lib64", "/etc"] {
        let host = Path::new(dir);
        match fs::symlink_metadata(host) {
            Ok(m) if m.file_type().is_symlink() => entries.push(ImageEntry::Symlink {
                target: fs::read_link(host).map_err(|e| e.to_string())?,
                path: host.into(),
            }),
            Ok(_) => entries.push(ImageEntry::Bind {
                host: host.into(),
                path: host.into(),
            }),
            Err(_) => {}
        }
    }
    entries.push(ImageEntry::Dir {
        path: "/tmp".into(),
        mode: 0o1777,
    });
    entries.push(ImageEntry::Bind {
        host: binary.to_path_buf(),
        path: PathBuf::from(target),
    });
    Ok(entries)
}

async fn http_get(port: u16, path: &str) -> io::Result<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    conn.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await?;
    let mut head = [0u8; 12];
    conn.read_exact(&mut head).await?;
    std::str::from_utf8(&head[9..12])
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::other("not an HTTP response"))
}
