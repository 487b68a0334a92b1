//! The publish sections: batches of publishes and unpublishes through each backend, and the API
//! requests each issuance costs.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use certvol_driver::demo::kubelet::{InlineVolume, Kubelet, Pod};

use super::driver::start;
use super::report::{PublishRun, Report};
use super::stats::Latency;
use super::{Algorithm, Options};
use crate::apiserver::{ApiServer, Kind, RequestRecord};
use crate::cluster::{Cluster, cm_volume};
use crate::{Env, volume};

/// Runs `op` on every item with `concurrency` in flight; returns each call's latency and the wall
/// time of the whole batch. The first error stops the batch.
async fn batch<T, F, Fut>(
    items: Arc<Vec<T>>,
    concurrency: usize,
    op: F,
) -> Result<(Vec<Duration>, Duration)>
where
    T: Send + Sync + 'static,
    F: Fn(Arc<Vec<T>>, usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<()>> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let (next, items, op) = (next.clone(), items.clone(), op.clone());
        workers.spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= items.len() {
                    return Ok::<_, anyhow::Error>(latencies);
                }
                let t = Instant::now();
                op(items.clone(), i).await?;
                latencies.push(t.elapsed());
            }
        });
    }
    let mut all = Vec::with_capacity(items.len());
    while let Some(joined) = workers.join_next().await {
        all.extend(joined.context("publish worker panicked")??);
    }
    Ok((all, started.elapsed()))
}

pub(super) async fn publish_all(
    kubelet: &Kubelet,
    pods: Arc<Vec<(Pod, InlineVolume)>>,
    concurrency: usize,
) -> Result<(Vec<Duration>, Duration)> {
    let kubelet = kubelet.clone();
    batch(pods, concurrency, move |pods, i| {
        let kubelet = kubelet.clone();
        async move {
            let (pod, vol) = &pods[i];
            kubelet
                .publish(pod, vol)
                .await
                .map_err(|s| anyhow!("publish {}: {s}", pod.name))?;
            Ok(())
        }
    })
    .await
}

pub(super) async fn unpublish_all(
    kubelet: &Kubelet,
    pods: Arc<Vec<(Pod, InlineVolume)>>,
    concurrency: usize,
) -> Result<Duration> {
    let kubelet = kubelet.clone();
    let (_, wall) = batch(pods, concurrency, move |pods, i| {
        let kubelet = kubelet.clone();
        async move {
            let (pod, vol) = &pods[i];
            kubelet
                .unpublish(pod, vol)
                .await
                .map_err(|s| anyhow!("unpublish {}: {s}", pod.name))?;
            Ok(())
        }
    })
    .await?;
    Ok(wall)
}

/// The API requests recorded since index `from`, by `"<verb> <Kind>"`.
fn tally(records: &[RequestRecord]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for r in records {
        let kind = r.kind.map(|k| k.kind_name()).unwrap_or("other");
        *out.entry(format!("{} {kind}", r.verb)).or_insert(0) += 1;
    }
    out
}

/// One backend under test: where publishes go and how pods come to exist.
pub(super) enum Backend<'a> {
    Local,
    CertManager(&'a Cluster),
}

impl Backend<'_> {
    pub(super) fn name(&self) -> &'static str {
        match self {
            Backend::Local => "local",
            Backend::CertManager(_) => "cert-manager",
        }
    }

    pub(super) async fn pods(
        &self,
        prefix: &str,
        n: usize,
        alg: Algorithm,
    ) -> Vec<(Pod, InlineVolume)> {
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            let name = format!("{prefix}-{i}");
            let (pod, vol) = match self {
                Backend::Local => (Pod::new("bench", &name), volume(alg.attributes())),
                Backend::CertManager(c) => (
                    c.create_pod("default", &name).await,
                    cm_volume(&c.issuer_name(), alg.attributes()),
                ),
            };
            out.push((pod, vol));
        }
        out
    }
}

/// Publish latency and throughput for one backend over every algorithm and concurrency.
async fn publish_section(
    opts: &Options,
    backend: &Backend<'_>,
    kubelet: &Kubelet,
    api: Option<&ApiServer>,
    report: &mut Report,
) -> Result<()> {
    // One untimed publish first: connection set-up and lazy initialisation are not what the
    // figures are about.
    let warm = Arc::new(backend.pods("warm", 1, Algorithm::P256).await);
    publish_all(kubelet, warm.clone(), 1).await?;
    unpublish_all(kubelet, warm, 1).await?;
    let mut windows: Vec<RequestRecord> = Vec::new();
    let mut issuances = 0;
    for &alg in &opts.algorithms {
        for &c in &opts.concurrency {
            let n = opts
                .requests
                .unwrap_or_else(|| alg.default_requests(opts.quick, c));
            let prefix = format!(
                "{}-{}-c{c}",
                backend.name(),
                alg.name().to_ascii_lowercase()
            );
            let pods = Arc::new(backend.pods(&prefix, n, alg).await);
            let before = api.map(|a| a.requests().len()).unwrap_or(0);
            let (latencies, wall) = publish_all(kubelet, pods.clone(), c).await?;
            if let Some(a) = api {
                windows.extend(a.requests().into_iter().skip(before));
                issuances += n;
            }
            let run = PublishRun {
                backend: backend.name().into(),
                algorithm: alg.name().into(),
                concurrency: c,
                requests: n,
                latency: Latency::of(&latencies),
                throughput_per_s: n as f64 / wall.as_secs_f64().max(1e-9),
            };
            eprintln!(
                "  {:<12} {:<8} c={:<3} n={:<4} p50 {:>8.2} ms  p99 {:>8.2} ms  {:>6.0}/s",
                run.backend,
                run.algorithm,
                c,
                n,
                run.latency.p50_ms,
                run.latency.p99_ms,
                run.throughput_per_s
            );
            report.publish.push(run);
            unpublish_all(kubelet, pods, c).await?;
        }
    }
    if let Some(a) = api {
        let api_report = &mut report.api_requests;
        api_report.issuances = issuances;
        let per = tally(&windows);
        api_report.per_issuance = per
            .iter()
            .map(|(k, v)| (k.clone(), *v as f64 / issuances.max(1) as f64))
            .collect();
        let reads = windows
            .iter()
            .filter(|r| {
                r.kind == Some(Kind::CertificateRequest) && (r.verb == "get" || r.verb == "list")
            })
            .count();
        api_report.reads_per_issuance = reads as f64 / issuances.max(1) as f64;
        api_report.watches_total = a.requests().iter().filter(|r| r.verb == "watch").count();
    }
    Ok(())
}

/// Local CA and cert-manager publish runs.
pub(super) async fn publish_benchmarks(
    opts: &Options,
    bin: &Path,
    report: &mut Report,
) -> Result<()> {
    {
        eprintln!("publish: local CA");
        let env = Env::new();
        let (mut driver, kubelet) = start(bin, &env, 1, &[], &[]).await?;
        publish_section(opts, &Backend::Local, &kubelet, None, report).await?;
        driver.stop(Duration::from_secs(10))?;
    }
    {
        eprintln!("publish: cert-manager backend against the API stand-in (instant signer)");
        let env = Env::new();
        let cluster = Cluster::start(env.path()).await;
        let standin = cluster
            .standin
            .as_ref()
            .ok_or_else(|| anyhow!("the benchmark needs the API stand-in, not a real cluster"))?;
        let kubeconfig = cluster.kubeconfig.display().to_string();
        let (qps, burst) = (
            opts.kube_api_qps.to_string(),
            opts.kube_api_burst.to_string(),
        );
        report.api_requests.kube_api_qps = opts.kube_api_qps;
        report.api_requests.kube_api_burst = opts.kube_api_burst;
        let (mut driver, kubelet) = start(
            bin,
            &env,
            1,
            &[
                "--issuer",
                "cert-manager",
                "--kube-api-qps",
                &qps,
                "--kube-api-burst",
                &burst,
                // Issuance has its own bucket; the knob sets both.
                "--issuance-api-qps",
                &qps,
                "--issuance-api-burst",
                &burst,
            ],
            &[("KUBECONFIG", &kubeconfig)],
        )
        .await?;
        report.api_requests.startup = tally(&standin.api.requests());
        publish_section(
            opts,
            &Backend::CertManager(&cluster),
            &kubelet,
            Some(&standin.api),
            report,
        )
        .await?;
        driver.stop(Duration::from_secs(10))?;
    }
    Ok(())
}
