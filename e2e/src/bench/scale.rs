//! Many volumes: memory, idle CPU, the renewal wave, restart recovery.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};
use certvol_driver::demo::kubelet::{InlineVolume, Pod, volume_id};

use super::driver::{BenchDriver, start, wait_ready};
use super::publish::{Backend, publish_all, unpublish_all};
use super::report::{Recovery, RenewalWave, Report, Scale};
use super::{Algorithm, Options, procfs, stats};
use crate::{Env, read_volume};

/// Many volumes: memory, idle CPU, the renewal wave, restart recovery.
pub(super) async fn scale_benchmarks(
    opts: &Options,
    bin: &Path,
    report: &mut Report,
) -> Result<()> {
    let n = opts.volumes;
    eprintln!("scale: {n} volumes (local CA, P-256)");
    let env = Env::new();
    let (mut driver, kubelet) = start(bin, &env, 1, &[], &[]).await?;
    let mut scale = Scale {
        volumes: n,
        idle_seconds: opts.idle_seconds,
        baseline: procfs::memory(driver.pid())?,
        ..Scale::default()
    };
    let pods = Arc::new(
        Backend::Local
            .pods("scale", n, Algorithm::P256)
            .await
            .into_iter()
            .map(|(p, mut v)| {
                // The default 90-day lifetime, stated so the wave's fractions are exact.
                v.attributes
                    .insert("csi.certvol.io/duration".into(), "2160h".into());
                (p, v)
            })
            .collect::<Vec<_>>(),
    );
    let (_, wall) = publish_all(&kubelet, pods.clone(), 16).await?;
    scale.publish_seconds = wall.as_secs_f64();
    let mounted = env.mounts().len();
    if mounted < n {
        bail!("{n} volumes published but only {mounted} mounts under the node's directory");
    }
    // Let anything the publishes left in flight settle before the idle window.
    tokio::time::sleep(Duration::from_secs(1)).await;
    scale.loaded = procfs::memory(driver.pid())?;
    scale.per_volume_kib =
        (scale.loaded.rss_kib as f64 - scale.baseline.rss_kib as f64) / n.max(1) as f64;
    let hz = procfs::ticks_per_second();
    let t0 = procfs::cpu_ticks(driver.pid())?;
    let idle_start = Instant::now();
    tokio::time::sleep(Duration::from_secs(opts.idle_seconds)).await;
    let t1 = procfs::cpu_ticks(driver.pid())?;
    let idle = idle_start.elapsed().as_secs_f64();
    scale.idle_cpu_percent = (t1.saturating_sub(t0)) as f64 / hz as f64 / idle * 100.0;
    eprintln!(
        "  RSS {} KiB, idle CPU {:.3}%",
        scale.loaded.rss_kib, scale.idle_cpu_percent
    );

    report.renewal_wave = renewal_wave(&env, &pods)?;

    eprintln!("recovery: restart with {n} volumes");
    let serials_before = serials(&env, &pods)?;
    let signed_before = env.issued().len();
    driver.stop(Duration::from_secs(30))?;
    drop(driver);
    let spawned = Instant::now();
    let mut driver = BenchDriver::spawn(bin, &env, 2, &[], &[])?;
    let ready = wait_ready(&kubelet, &mut driver, spawned, Duration::from_secs(120)).await?;
    // Give a recovery that re-issues in the background the time to show itself.
    tokio::time::sleep(Duration::from_secs(if opts.quick { 1 } else { 3 })).await;
    let serials_after = serials(&env, &pods)?;
    let reissued = serials_before
        .iter()
        .zip(&serials_after)
        .filter(|(a, b)| a != b)
        .count();
    let mut verified = 0;
    for (pod, vol) in pods.iter().step_by((n / 50).max(1)) {
        let target = kubelet.target_path(pod, vol);
        read_volume(&target).map_err(|e| anyhow!("{}: {e}", target.display()))?;
        verified += 1;
    }
    report.recovery = Recovery {
        volumes: n,
        ready_ms: ready.as_secs_f64() * 1000.0,
        reissued,
        ca_signatures: env.issued().len().saturating_sub(signed_before),
        verified,
    };
    scale.after_restart = procfs::memory(driver.pid())?;

    let unpublished = unpublish_all(&kubelet, pods, 16).await?;
    scale.unpublish_seconds = unpublished.as_secs_f64();
    report.scale = scale;
    let left = env.mounts().len();
    driver.stop(Duration::from_secs(10))?;
    if left > 0 {
        bail!("{left} mounts left after unpublishing every volume");
    }
    Ok(())
}

/// Serial of each volume's current certificate, in `pods` order.
fn serials(env: &Env, pods: &[(Pod, InlineVolume)]) -> Result<Vec<String>> {
    let store = env.store();
    pods.iter()
        .map(|(p, v)| {
            let id = volume_id(&p.uid, &v.name);
            let state = store.load(&id)?.ok_or_else(|| anyhow!("{id}: no state"))?;
            let current = state
                .current
                .ok_or_else(|| anyhow!("{id}: no current certificate"))?;
            Ok(current.serial)
        })
        .collect()
}

/// Scheduled renewals (state.json `renew_at`) of the volumes just published together.
fn renewal_wave(env: &Env, pods: &[(Pod, InlineVolume)]) -> Result<RenewalWave> {
    let store = env.store();
    let mut issued = Vec::new();
    let mut renew = Vec::new();
    let mut fractions = Vec::new();
    let mut lifetime = 0.0;
    for (p, v) in pods {
        let id = volume_id(&p.uid, &v.name);
        let state = store.load(&id)?.ok_or_else(|| anyhow!("{id}: no state"))?;
        let c = state
            .current
            .ok_or_else(|| anyhow!("{id}: no current certificate"))?;
        let nb = c.not_before.unix_timestamp_nanos() as f64 / 1e9;
        let na = c.not_after.unix_timestamp_nanos() as f64 / 1e9;
        let at = c.renew_at.unix_timestamp_nanos() as f64 / 1e9;
        lifetime = na - nb;
        issued.push(nb);
        renew.push(at);
        fractions.push((at - nb) / (na - nb).max(1.0));
    }
    let spread = |v: &[f64]| {
        let min = v.iter().copied().fold(f64::INFINITY, f64::min);
        let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        if v.is_empty() { 0.0 } else { max - min }
    };
    let first = renew.iter().copied().fold(f64::INFINITY, f64::min);
    let offsets: Vec<f64> = renew.iter().map(|r| r - first).collect();
    let mean = offsets.iter().sum::<f64>() / offsets.len().max(1) as f64;
    let var = offsets.iter().map(|o| (o - mean).powi(2)).sum::<f64>() / offsets.len().max(1) as f64;
    Ok(RenewalWave {
        certificates: pods.len(),
        lifetime_hours: lifetime / 3600.0,
        issued_spread_s: spread(&issued),
        renew_spread_s: spread(&renew),
        renew_stddev_s: var.sqrt(),
        earliest_fraction: fractions.iter().copied().fold(f64::INFINITY, f64::min),
        latest_fraction: fractions.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        histogram: stats::histogram(&offsets, 12),
    })
}
