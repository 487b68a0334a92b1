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

mod poll;
mod process;
mod reader;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use certvol_driver::demo::kubelet::{InlineVolume, Kubelet, Pod};
use certvol_driver::files::mount::{self, MountInfo};
use certvol_driver::files::store::{Store, VolumeState};

pub use certvol_driver::demo::kubelet;

pub use poll::{eventually, http_get, until};
pub use process::Driver;
pub use reader::{
    PairReader, ReaderReport, RenewalLog, VolumeFiles, files_below, read_volume, read_volume_named,
};

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
        Driver::from_child(child, log)
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
