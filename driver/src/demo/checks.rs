//! What the demo publishes and the checks a pod would make on what it gets.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use super::{Case, Checks};
use crate::demo::kubelet::{InlineVolume, Pod};
use crate::x509::keys::PrivateKey;
use crate::x509::pki::{self, CertInfo};

pub(super) fn demo_cases(fs_group: Option<u32>) -> Vec<Case> {
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

pub(super) fn read_leaf(target: &Path, name: &str) -> Result<Option<CertInfo>, String> {
    let pem = std::fs::read_to_string(target.join(name)).map_err(|e| e.to_string())?;
    let chain = pki::parse_pem_chain(&pem).map_err(|e| e.to_string())?;
    Ok(chain.into_iter().next())
}

/// Reads key and certificate as a pod does and checks they belong together and chain to the CA.
pub(super) fn pair_ok(target: &Path) -> Result<String, String> {
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

pub(super) fn verify_volume(
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

pub(super) fn err_suffix<T>(r: &Result<T, impl std::fmt::Display>) -> String {
    match r {
        Ok(_) => String::new(),
        Err(e) => format!(" ({e})"),
    }
}

pub(super) async fn watch_renewal(checks: &mut Checks, case: &Case, target: &Path) {
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

pub(super) fn rfc3339(t: SystemTime) -> String {
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

pub(super) fn shorten(path: &Path, base: &Path) -> String {
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

pub(super) fn print_table(rows: &[[String; 7]]) {
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
