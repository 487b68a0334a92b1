//! End-to-end harness: runs the real `certvol` binary on a private socket and data root and drives
//! it as kubelet does (through `certvol_driver::demo::kubelet`). Each [`Env`] lives in its own temporary
//! directory and unmounts everything below it when dropped, so tests leave no mounts behind even
//! when they fail.

pub mod apiserver;
pub mod bench;
pub mod campaign;
pub mod chart;
pub mod cluster;
pub mod container;
pub mod hostile;
pub mod kubesigner;
pub mod python;
pub mod signer;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use certvol_driver::demo::kubelet::{InlineVolume, Kubelet, Pod};
use certvol_driver::files::mount::{self, MountInfo};
use certvol_driver::files::store::{Store, VolumeState};
use certvol_driver::x509::pki::{self, CertInfo};

pub use certvol_driver::demo::kubelet;

/// Finds the `certvol` binary: `$CERTVOL_BIN`, else next to the test executable's directory
/// (`target/<profile>/certvol`), which `cargo test --workspace` builds before running tests.
pub fn certvol_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("CERTVOL_BIN") {
        return PathBuf::from(bin);
    }
    bin_path("certvol")
}

/// A binary of the workspace next to the test executable's directory (`target/<profile>/`),
/// which `cargo test --workspace` builds before running tests.
pub fn bin_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let bin = dir.join(name);
    assert!(
        bin.exists(),
        "{name} binary not found at {}: run the tests with `cargo test --workspace` (which builds it)",
        bin.display()
    );
    bin
}

/// Whether this process can make real mounts; the harness needs it (CI runs as root).
pub fn can_mount() -> bool {
    mount::can_mount_tmpfs()
}

/// Ends the calling test early, saying why, where it cannot make real mounts.
#[macro_export]
macro_rules! require_root {
    () => {
        if !$crate::can_mount() {
            eprintln!("skipped: needs root to mount tmpfs (CI runs as root)");
            return;
        }
    };
}

/// The cluster's API stand-in, or ends the calling test early on a real cluster, saying what
/// of the stand-in's it needs (its faults, counts, logs or signer controls).
#[macro_export]
macro_rules! require_standin {
    ($cluster:expr, $why:literal) => {
        match $cluster.standin.as_ref() {
            Some(s) => s,
            None => {
                eprintln!(concat!("skipped on a real cluster: ", $why));
                return;
            }
        }
    };
}

/// One isolated node: data root, kubelet pods dir, socket, logs.
pub struct Env {
    dir: tempfile::TempDir,
    pub data_root: PathBuf,
    pub pods_dir: PathBuf,
    pub socket: PathBuf,
    runs: usize,
}

impl Env {
    pub fn new() -> Env {
        let dir = tempfile::Builder::new()
            .prefix("certvol-e2e-")
            .tempdir_in(std::env::temp_dir())
            .expect("create temp dir");
        let base = dir.path().to_path_buf();
        let env = Env {
            data_root: base.join("data-root"),
            pods_dir: base.join("kubelet/pods"),
            socket: base.join("plugins/csi.sock"),
            dir,
            runs: 0,
        };
        fs::create_dir_all(&env.pods_dir).expect("create pods dir");
        env
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// This node's kubelet root directory (the parent of [`Env::pods_dir`]), which the driver
    /// is started with as `--kubelet-dir`.
    pub fn kubelet_dir(&self) -> PathBuf {
        self.pods_dir
            .parent()
            .map_or_else(|| self.pods_dir.clone(), Path::to_path_buf)
    }

    /// Starts `certvol node` with `extra` arguments and environment, waiting until Probe is ready.
    pub async fn start_with(&mut self, extra: &[&str], envs: &[(&str, &str)]) -> Driver {
        let driver = self.spawn(extra, envs);
        let kubelet = self.kubelet();
        if let Err(e) = kubelet.wait_ready(Duration::from_secs(30)).await {
            panic!(
                "driver did not become ready: {e}\n--- log ---\n{}",
                fs::read_to_string(&driver.log).unwrap_or_default()
            );
        }
        driver
    }

    pub async fn start(&mut self) -> Driver {
        self.start_with(&[], &[]).await
    }

    /// Starts `certvol node --issuer cert-manager` with `cluster`'s kubeconfig as its identity
    /// (KUBECONFIG), plus `extra` arguments and environment, waiting until Probe is ready.
    pub async fn start_cert_manager(
        &mut self,
        cluster: &cluster::Cluster,
        extra: &[&str],
        envs: &[(&str, &str)],
    ) -> Driver {
        let mut args = vec!["--issuer", "cert-manager"];
        args.extend_from_slice(extra);
        let kubeconfig = cluster.kubeconfig.display().to_string();
        let mut env: Vec<(&str, &str)> = vec![("KUBECONFIG", &kubeconfig)];
        env.extend_from_slice(envs);
        self.start_with(&args, &env).await
    }

    /// Spawns without waiting for readiness.
    pub fn spawn(&mut self, extra: &[&str], envs: &[(&str, &str)]) -> Driver {
        self.runs += 1;
        let log = self.dir.path().join(format!("driver-{}.log", self.runs));
        let out = fs::File::create(&log).expect("create log");
        let mut cmd = Command::new(certvol_bin());
        cmd.arg("--log-level")
            .arg("debug")
            .arg("node")
            .arg("--endpoint")
            .arg(format!("unix://{}", self.socket.display()))
            .arg("--node-id")
            .arg("e2e-node")
            .arg("--data-root")
            .arg(&self.data_root)
            .args(extra)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(out);
        if !extra.contains(&"--grace-period") {
            cmd.args(["--grace-period", "5s"]);
        }
        // The driver refuses targets outside kubelet's pods directory: this node's is here.
        if !extra.contains(&"--kubelet-dir") {
            cmd.arg("--kubelet-dir").arg(self.kubelet_dir());
        }
        if !extra.contains(&"--issuer") {
            cmd.args(["--issuer", "local"]);
        }
        // Renewal scenarios compress a certificate's life into seconds; the node's default floor
        // (an hour, like cert-manager's) would refuse them. Tests of the floor pass their own.
        if !extra.contains(&"--min-duration") {
            cmd.args(["--min-duration", "1s"]);
        }
        // The default metrics port is fixed; parallel tests would collide on it.
        if !extra.contains(&"--metrics-address") {
            cmd.args(["--metrics-address", "off"]);
        }
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn certvol");
        Driver { child, log }
    }

    pub fn kubelet(&self) -> Kubelet {
        Kubelet::connect(&self.socket, &self.pods_dir).expect("kubelet client")
    }

    pub fn store(&self) -> Store {
        Store::open(&self.data_root).expect("open store")
    }

    /// State of a volume as the driver recorded it.
    pub fn state(&self, pod: &Pod, volume: &InlineVolume) -> Option<VolumeState> {
        let id = kubelet::volume_id(&pod.uid, &volume.name);
        self.store().load(&id).expect("read state")
    }

    /// Mounts under this environment's directory.
    pub fn mounts(&self) -> Vec<MountInfo> {
        let base = fs::canonicalize(self.dir.path()).unwrap_or_else(|_| self.dir.path().into());
        read_mounts()
            .into_iter()
            .filter(|m| m.mount_point.starts_with(&base))
            .collect()
    }

    /// certvol's own mounts (tmpfs and binds, by their `certvol:` source) under this environment.
    pub fn certvol_mounts(&self) -> Vec<PathBuf> {
        self.mounts()
            .into_iter()
            .filter(|m| m.source.starts_with("certvol:"))
            .map(|m| m.mount_point)
            .collect()
    }

    /// The volumes with state in the data root.
    pub fn volume_dirs(&self) -> Vec<PathBuf> {
        fs::read_dir(self.data_root.join("volumes"))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    }

    /// Panics unless nothing of any volume is left: no certvol mount, no volume state.
    pub fn assert_no_volume_left(&self) {
        assert!(
            self.certvol_mounts().is_empty(),
            "mounts left: {:?}",
            self.certvol_mounts()
        );
        assert!(
            self.volume_dirs().is_empty(),
            "volume state left: {:?}",
            self.volume_dirs()
        );
    }

    /// Names of the requests the local CA has signed and still remembers.
    pub fn issued(&self) -> Vec<String> {
        let dir = self.data_root.join("local-ca/issued");
        let mut names: Vec<String> = fs::read_dir(dir)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter_map(|e| e.file_name().to_str().map(str::to_string))
                    .filter(|n| !n.starts_with('.'))
                    .map(|n| n.strip_suffix(".crt").map(str::to_string).unwrap_or(n))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    /// Everything the driver logged in every run so far.
    pub fn logs(&self) -> String {
        (1..=self.runs)
            .map(|i| {
                fs::read_to_string(self.dir.path().join(format!("driver-{i}.log")))
                    .unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Default for Env {
    fn default() -> Self {
        Env::new()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        // Deepest first so binds inside tmpfs mounts come off before their parents. Lazy unmount:
        // a failing test may still hold a file open.
        let mut points: Vec<PathBuf> = self.mounts().into_iter().map(|m| m.mount_point).collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for p in points {
            let _ = nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

pub fn read_mounts() -> Vec<MountInfo> {
    fs::read_to_string("/proc/self/mountinfo")
        .map(|t| mount::parse_mountinfo(&t))
        .unwrap_or_default()
}

/// A running driver process. Killed (SIGKILL) when dropped.
pub struct Driver {
    child: Child,
    pub log: PathBuf,
}

impl Driver {
    /// A driver started some other way (the container tier's runtime), logging to `log`.
    pub fn from_child(child: Child, log: PathBuf) -> Driver {
        Driver { child, log }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// The process's `VmRSS` and `VmHWM` (peak resident set) from `/proc/<pid>/status`, in KiB.
    pub fn memory_kib(&self) -> io::Result<(u64, u64)> {
        let m = bench::procfs::memory(self.pid())?;
        Ok((m.rss_kib, m.hwm_kib))
    }

    /// SIGKILL, as a crash or an OOM kill would stop it.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits up to `timeout` for the exit.
    pub fn terminate(&mut self, timeout: Duration) -> io::Result<ExitStatus> {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid()),
            nix::sys::signal::Signal::SIGTERM,
        )
        .map_err(io::Error::from)?;
        self.wait_exit(timeout)
    }

    /// Waits for the process to exit by itself (e.g. at a crash point).
    pub fn wait_exit(&mut self, timeout: Duration) -> io::Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exit_by(deadline)? {
                return Ok(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The exit status once exited; TimedOut once `deadline` has passed; else `None`.
    fn exit_by(&mut self, deadline: Instant) -> io::Result<Option<ExitStatus>> {
        match self.child.try_wait()? {
            Some(status) => Ok(Some(status)),
            None if Instant::now() > deadline => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "driver did not exit",
            )),
            None => Ok(None),
        }
    }

    /// The exit status if the process has exited, without waiting.
    pub fn try_exit(&mut self) -> io::Result<Option<ExitStatus>> {
        self.child.try_wait()
    }

    /// Like [`Driver::wait_exit`] but yields to the runtime while waiting, so that tasks talking
    /// to the driver (an in-flight publish) keep running on a single-threaded test runtime.
    pub async fn exited(&mut self, timeout: Duration) -> io::Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exit_by(deadline)? {
                return Ok(status);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// What a pod reads from its volume, parsed and checked.
#[derive(Debug)]
pub struct VolumeFiles {
    pub leaf: CertInfo,
    pub chain: Vec<CertInfo>,
    pub ca: Vec<CertInfo>,
    pub key_pem: String,
}

/// What a watcher of one volume's renewals saw: each certificate serial once, in order, and how
/// close to expiry the volume's certificate ever came.
#[derive(Debug)]
pub struct RenewalLog {
    pub serials: Vec<String>,
    pub closest: Duration,
}

impl RenewalLog {
    /// Starts with the certificate `target` holds now.
    pub fn start(target: &Path) -> RenewalLog {
        let first = read_volume(target).unwrap_or_else(|e| panic!("{}: {e}", target.display()));
        RenewalLog {
            serials: vec![first.leaf.serial_hex],
            closest: Duration::MAX,
        }
    }

    /// How many times the certificate changed.
    pub fn renewals(&self) -> usize {
        self.serials.len() - 1
    }

    /// Reads `target` once more; panics, naming `who` and the driver's log, if it holds no valid
    /// pair ([`read_volume`] refuses an expired certificate).
    pub fn observe(&mut self, target: &Path, who: &str, env: &Env) {
        let files = read_volume(target).unwrap_or_else(|e| {
            panic!(
                "{who}, {} renewals in: {e}\n--- log ---\n{}",
                self.renewals(),
                env.logs()
            )
        });
        let left = files
            .leaf
            .not_after
            .duration_since(std::time::SystemTime::now())
            .unwrap_or_default();
        self.closest = self.closest.min(left);
        if self.serials.last() != Some(&files.leaf.serial_hex) {
            self.serials.push(files.leaf.serial_hex);
        }
    }
}

/// `GET path` over HTTP/1.1 (the ops endpoint): (status, body), or `None` if nothing answers.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(addr).await.ok()?;
    conn.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .ok()?;
    let mut raw = String::new();
    conn.read_to_string(&mut raw).await.ok()?;
    let (head, body) = raw.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

/// Reads key, chain and CA through the target path (as a pod would) and checks the key matches
/// the certificate and the chain verifies against the CA.
pub fn read_volume(target: &Path) -> Result<VolumeFiles, String> {
    read_volume_named(target, "tls.crt", "tls.key", "ca.crt")
}

pub fn read_volume_named(
    target: &Path,
    cert: &str,
    key: &str,
    ca: &str,
) -> Result<VolumeFiles, String> {
    // Read all three from one resolved `..data` generation, as an application that reloads its
    // pair should: separate opens of the visible names may straddle a renewal.
    let mut files = certvol_driver::files::writer::read_all(target, &[key, cert, ca])
        .map_err(|e| format!("read {}: {e}", target.display()))?
        .into_iter()
        .map(|b| String::from_utf8(b).map_err(|e| e.to_string()));
    let mut next = || files.next().unwrap_or_else(|| Err("missing file".into()));
    let (key_pem, chain_pem, ca_pem) = (next()?, next()?, next()?);
    let chain = pki::parse_pem_chain(&chain_pem).map_err(|e| format!("{cert}: {e}"))?;
    let ca = pki::parse_pem_chain(&ca_pem).map_err(|e| format!("{ca}: {e}"))?;
    let key = certvol_driver::x509::keys::PrivateKey::from_pem(&key_pem)
        .map_err(|e| format!("{key}: {e}"))?;
    let leaf = chain.first().cloned().ok_or("empty chain")?;
    if !pki::key_matches(&leaf, &key).map_err(|e| e.to_string())? {
        return Err(format!(
            "key does not match certificate {}",
            leaf.serial_hex
        ));
    }
    pki::verify_chain(&chain, &ca, std::time::SystemTime::now()).map_err(|e| e.to_string())?;
    Ok(VolumeFiles {
        leaf,
        chain,
        ca,
        key_pem,
    })
}

/// A pod with a certvol volume asking the local CA for `dns` names, plus extra attributes.
pub fn volume<'a>(extra: impl IntoIterator<Item = (&'a str, &'a str)>) -> InlineVolume {
    let mut v = InlineVolume::new(
        "tls",
        [
            ("csi.certvol.io/issuer-name", "local"),
            (
                "csi.certvol.io/dns-names",
                "${POD_NAME}.${POD_NAMESPACE}.svc",
            ),
        ],
    );
    for (k, val) in extra {
        v.attributes.insert(k.to_string(), val.to_string());
    }
    v
}

/// Polls `f` until it returns `Some` or `timeout` passes. For tests observing the driver from the
/// outside, as a pod would.
pub async fn eventually<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls the async `f` every 100 ms until it returns `Some` or `timeout` passes (for checks that
/// ask the API, where [`eventually`]'s synchronous closure cannot).
pub async fn until<T, Fut>(timeout: Duration, mut f: impl FnMut() -> Fut) -> Option<T>
where
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every regular file below `dir` (not following symlinks), for scanning what the driver wrote.
pub fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            match entry.file_type() {
                Ok(t) if t.is_dir() => dirs.push(entry.path()),
                Ok(t) if t.is_file() => out.push(entry.path()),
                _ => {}
            }
        }
    }
    out.sort();
    out
}

/// A thread that keeps reading a volume as an application reloading its pair would (one `..data`
/// generation per read, checking key, chain and CA belong together) until stopped.
pub struct PairReader {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<ReaderReport>,
}

/// What a [`PairReader`] saw.
#[derive(Debug, Default)]
pub struct ReaderReport {
    /// Consistent reads.
    pub reads: u64,
    /// Distinct certificate serials seen.
    pub serials: std::collections::BTreeSet<String>,
    /// Inconsistent or failed reads.
    pub errors: Vec<String>,
}

impl PairReader {
    pub fn start(target: &Path) -> PairReader {
        PairReader::over(vec![target.to_path_buf()])
    }

    /// One thread reading each of `targets` in turn (one reader per volume would starve the
    /// driver of CPU on a small machine).
    pub fn over(targets: Vec<PathBuf>) -> PairReader {
        use std::sync::atomic::{AtomicBool, Ordering};
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut report = ReaderReport::default();
            while !flag.load(Ordering::Relaxed) {
                for target in &targets {
                    match read_volume(target) {
                        Ok(f) => {
                            report.serials.insert(f.leaf.serial_hex);
                            report.reads += 1;
                        }
                        Err(e) => report.errors.push(format!("{}: {e}", target.display())),
                    }
                }
            }
            report
        });
        PairReader { stop, thread }
    }

    pub fn stop(self) -> ReaderReport {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}
