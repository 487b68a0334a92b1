//! Reading volumes as a pod does: the files parsed and checked, renewals observed, and a reader
//! thread that keeps reloading the pair.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use certvol_driver::x509::pki::{self, CertInfo};

use crate::Env;

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
