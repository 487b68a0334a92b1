//! Interrupting each operation: arm a crash point or SIGKILL at a random moment, then record
//! what kubelet saw fail so it retries it.

use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::{Patch, PatchParams};
use rand::Rng;
use serde_json::json;

use super::{Campaign, Moment, TRUST_CONFIGMAP, TRUST_KEY, Want};

impl Campaign {
    /// Stops the driver as the trial's moment says: waits for the armed point, or SIGKILLs after
    /// a random delay up to `upper`.
    pub(super) async fn stop_at(&mut self, moment: &Moment, context: &str, upper: Duration) {
        match moment {
            Moment::Point(_) => self.await_crash(context, Duration::from_secs(20)).await,
            Moment::Random => {
                let delay = self.random_delay(upper);
                tokio::time::sleep(delay).await;
                self.driver().kill9();
            }
        }
    }

    pub(super) async fn interrupt_publish(&mut self, moment: &Moment, context: &str) {
        let (pod, vol) = self.new_volume().await;
        let kubelet = self.env.kubelet();
        let target = kubelet.target_path(&pod, &vol);
        let call = {
            let (pod, vol) = (pod.clone(), vol.clone());
            tokio::spawn(async move { kubelet.publish(&pod, &vol).await })
        };
        self.stop_at(moment, context, self.publish_latency * 3 / 2)
            .await;
        let answered = matches!(call.await, Ok(Ok(_)));
        if answered && matches!(moment, Moment::Random) {
            self.report.kills_after_completion += 1;
        }
        self.track(pod, vol, target, !answered);
    }

    /// Kills the driver while some volume renews: at a renew point, or a random moment just after
    /// the earliest recorded renewal time.
    pub(super) async fn interrupt_renewal(&mut self, moment: &Moment, context: &str) {
        match moment {
            // Every volume renews about every 4 s.
            Moment::Point(_) => self.await_crash(context, Duration::from_secs(20)).await,
            Moment::Random => {
                let store = self.env.store();
                let due = self
                    .live()
                    .filter_map(|t| store.load(&t.id()).ok().flatten())
                    .filter_map(|s| s.next_renewal())
                    .min();
                let wait = due
                    .and_then(|d| d.duration_since(SystemTime::now()).ok())
                    .unwrap_or_default()
                    .min(Duration::from_secs(8));
                let delay = self.random_delay(Duration::from_millis(80));
                tokio::time::sleep(wait + delay).await;
                self.driver().kill9();
            }
        }
    }

    /// Changes the trust source and kills the driver while it rewrites the bundles.
    pub(super) async fn interrupt_refresh(&mut self, moment: &Moment, context: &str) {
        self.root_index = (self.root_index + 1) % self.roots.len();
        let patch = json!({"data": {TRUST_KEY: self.roots[self.root_index]}});
        Api::<ConfigMap>::namespaced(self.cluster.client.clone(), &self.cluster.namespace())
            .patch(
                TRUST_CONFIGMAP,
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
            .expect("patch the trust ConfigMap");
        self.stop_at(moment, context, Duration::from_millis(120))
            .await;
    }

    pub(super) async fn interrupt_unpublish(&mut self, moment: &Moment, context: &str) {
        let live: Vec<usize> = (0..self.volumes.len())
            .filter(|&i| self.volumes[i].want == Want::Published && !self.volumes[i].retry)
            .collect();
        let Some(&index) = live.get(self.rng.random_range(0..live.len().max(1))) else {
            return;
        };
        let kubelet = self.env.kubelet();
        let call = {
            let t = &self.volumes[index];
            let (pod, vol) = (t.pod.clone(), t.vol.clone());
            tokio::spawn(async move {
                let started = Instant::now();
                kubelet
                    .unpublish(&pod, &vol)
                    .await
                    .map(|()| started.elapsed())
            })
        };
        self.stop_at(moment, context, self.unpublish_latency * 3 / 2)
            .await;
        let answered = match call.await {
            Ok(Ok(took)) => {
                self.unpublish_latency = (self.unpublish_latency + took) / 2;
                true
            }
            _ => false,
        };
        if answered && matches!(moment, Moment::Random) {
            self.report.kills_after_completion += 1;
        }
        self.report.removed += 1;
        let t = &mut self.volumes[index];
        t.want = Want::Removed;
        t.retry = !answered;
    }

    /// kubelet repeats every call it saw fail; after the restart each must succeed.
    pub(super) async fn kubelet_retries(&mut self, context: &str) {
        let kubelet = self.env.kubelet();
        for t in self.volumes.iter_mut().filter(|t| t.retry) {
            let result = match t.want {
                Want::Published => {
                    self.report.publish_retries += 1;
                    kubelet.publish(&t.pod, &t.vol).await.map(|_| ())
                }
                Want::Removed => {
                    self.report.unpublish_retries += 1;
                    kubelet.unpublish(&t.pod, &t.vol).await
                }
            };
            match result {
                Ok(()) => t.retry = false,
                Err(e) => self.report.violations.push(format!(
                    "{context}: kubelet's retry of {:?} for {} failed: {e}",
                    t.want, t.pod.name
                )),
            }
        }
    }
}
