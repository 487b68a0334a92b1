//! The checks after every trial: each volume's files, state, trust bundle and requests, and the
//! node's mounts and state directories.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use certvol_driver::files::store::{Phase as StatePhase, VolumeState};
use certvol_driver::issuer::request_name;
use certvol_driver::x509::pki;

use super::{BUNDLE, Campaign, SETTLE, Tracked, Want};
use crate::apiserver::Kind;
use crate::cluster::NODE_ID;
use crate::read_volume;

impl Campaign {
    /// Checks every volume, giving each up to [`SETTLE`] to reach a consistent state (a renewal
    /// may be in flight at any moment).
    pub async fn check(&mut self, context: &str) {
        let deadline = Instant::now() + SETTLE;
        let mut pending: Vec<usize> = (0..self.volumes.len())
            .filter(|&i| !self.volumes[i].retry)
            .collect();
        let mut last: BTreeMap<usize, String> = BTreeMap::new();
        loop {
            let mut still = Vec::new();
            for i in pending {
                match self.check_volume(&self.volumes[i]).await {
                    Ok(revision) => {
                        let t = &mut self.volumes[i];
                        if revision < t.revision {
                            self.report.violations.push(format!(
                                "{context}: {} went back from revision {} to {revision}",
                                t.pod.name, t.revision
                            ));
                        }
                        t.revision = revision;
                        self.report.volume_checks += 1;
                    }
                    Err(e) => {
                        last.insert(i, e);
                        still.push(i);
                    }
                }
            }
            let node = self.check_node();
            if still.is_empty() && node.is_ok() {
                return;
            }
            if Instant::now() > deadline {
                for i in still {
                    self.report.violations.push(format!(
                        "{context}: {}: {}",
                        self.volumes[i].pod.name,
                        last.get(&i).map(String::as_str).unwrap_or("?")
                    ));
                }
                if let Err(e) = node {
                    self.report.violations.push(format!("{context}: {e}"));
                }
                return;
            }
            pending = still;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// One volume against every invariant; returns its issuance count.
    pub(super) async fn check_volume(&self, t: &Tracked) -> Result<u64, String> {
        let id = t.id();
        let state = self
            .env
            .store()
            .load(&id)
            .map_err(|e| format!("state.json unreadable: {e}"))?;
        let creates = self.creates_of(&id);
        match t.want {
            Want::Removed => {
                if let Some(s) = state {
                    return Err(format!("removed volume still has state ({:?})", s.phase));
                }
                if std::fs::symlink_metadata(&t.target).is_ok() {
                    return Err(format!(
                        "removed volume's target {} exists",
                        t.target.display()
                    ));
                }
                let left = self.requests_in_api(&id).await;
                if !left.is_empty() {
                    return Err(format!(
                        "removed volume's requests still in the API: {left:?}"
                    ));
                }
                Ok(t.revision)
            }
            Want::Published => {
                let state = state.ok_or("volume lost: no state")?;
                self.check_published(t, &state, &creates).await?;
                Ok(state.last_revision)
            }
        }
    }

    pub(super) async fn check_published(
        &self,
        t: &Tracked,
        state: &VolumeState,
        creates: &[(String, u16)],
    ) -> Result<(), String> {
        if state.phase != StatePhase::Published {
            return Err(format!("phase {:?}", state.phase));
        }
        if state.pending.is_some() {
            return Err("a renewal is in flight".into());
        }
        let files = read_volume(&t.target)?;
        let current = state.current.as_ref().ok_or("no current certificate")?;
        if current.serial != files.leaf.serial_hex {
            return Err(format!(
                "state.json names serial {} but tls.crt holds {}",
                current.serial, files.leaf.serial_hex
            ));
        }
        // The volume holds exactly the key state names, and it is the certificate's.
        let keys_dir = self.env.store().paths(&t.id()).keys;
        let keys: Vec<String> = std::fs::read_dir(&keys_dir)
            .map_err(|e| format!("list {}: {e}", keys_dir.display()))?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".pk8"))
            .collect();
        let named = format!("key-{}.pk8", current.revision);
        if keys != [named.clone()] {
            return Err(format!("key files {keys:?}, state names {named}"));
        }
        let kept = std::fs::read(keys_dir.join(&named)).map_err(|e| e.to_string())?;
        let kept = certvol_driver::x509::keys::PrivateKey::from_pkcs8_der(&kept)
            .map_err(|e| format!("{named}: {e}"))?;
        if !pki::key_matches(&files.leaf, &kept).map_err(|e| e.to_string())? {
            return Err(format!("{named} is not the key of tls.crt"));
        }
        if let Some(s) = &self.cluster.standin {
            let ca = pki::parse_pem_chain(&s.signer.ca_pem()).map_err(|e| e.to_string())?;
            if files.ca.first().map(|c| &c.der) != ca.first().map(|c| &c.der) {
                return Err("ca.crt is not the issuer's CA".into());
            }
        }
        let bundle = certvol_driver::files::writer::read_all(&t.target, &[BUNDLE])
            .map_err(|e| format!("read {BUNDLE}: {e}"))?
            .pop()
            .unwrap_or_default();
        let expected =
            pki::parse_pem_chain(&self.roots[self.root_index]).map_err(|e| e.to_string())?;
        let in_bundle = pki::parse_pem_chain(&String::from_utf8_lossy(&bundle))
            .map_err(|e| format!("{BUNDLE}: {e}"))?;
        if !in_bundle.iter().any(|c| c.der == expected[0].der) {
            return Err(format!(
                "{BUNDLE} does not hold the current trust source (root {})",
                self.root_index
            ));
        }
        let generations: Vec<String> = std::fs::read_dir(&t.target)
            .map_err(|e| format!("list {}: {e}", t.target.display()))?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("..") && n != "..data")
            .collect();
        if generations.len() != 1 {
            return Err(format!(
                "{} ..data generations: {generations:?}",
                generations.len()
            ));
        }
        if self.cluster.standin.is_some() {
            let filed: Vec<&(String, u16)> = creates.iter().filter(|(_, s)| *s == 201).collect();
            let names: BTreeSet<&String> = filed.iter().map(|(n, _)| n).collect();
            if filed.len() as u64 != state.last_revision || names.len() != filed.len() {
                return Err(format!(
                    "{} issuances but {} requests created: {filed:?}",
                    state.last_revision,
                    filed.len()
                ));
            }
        }
        Ok(())
    }

    /// Mounts and state directories of the whole node against kubelet's view.
    pub(super) fn check_node(&self) -> Result<(), String> {
        let live: Vec<&Tracked> = self.live().filter(|t| !t.retry).collect();
        let mounts = self.env.mounts();
        if mounts.len() != 2 * live.len() {
            return Err(format!(
                "{} mounts for {} published volumes (want a tmpfs and a bind each): {:?}",
                mounts.len(),
                live.len(),
                mounts.iter().map(|m| &m.mount_point).collect::<Vec<_>>()
            ));
        }
        for t in &live {
            let target = std::fs::canonicalize(&t.target).unwrap_or_else(|_| t.target.clone());
            if !mounts.iter().any(|m| m.mount_point == target) {
                return Err(format!("{} is not mounted", t.target.display()));
            }
        }
        let dirs = count_entries(&self.env.data_root.join("volumes"));
        if dirs != live.len() {
            return Err(format!(
                "{dirs} volume directories in the data root for {} published volumes",
                live.len()
            ));
        }
        Ok(())
    }

    /// CertificateRequest creates for a volume, as (name, HTTP status), from the stand-in's log.
    pub(super) fn creates_of(&self, volume_id: &str) -> Vec<(String, u16)> {
        let Some(s) = &self.cluster.standin else {
            return Vec::new();
        };
        let first = request_name(NODE_ID, volume_id, 1);
        let prefix = first.trim_end_matches('1');
        s.api
            .requests()
            .into_iter()
            .filter(|r| r.verb == "create" && r.kind == Some(Kind::CertificateRequest))
            .filter_map(|r| {
                let name = r.name?;
                name.strip_prefix(prefix)
                    .is_some_and(|rev| rev.chars().all(|c| c.is_ascii_digit()))
                    .then_some((name, r.status))
            })
            .collect()
    }

    pub(super) async fn requests_in_api(&self, volume_id: &str) -> Vec<String> {
        let first = request_name(NODE_ID, volume_id, 1);
        let prefix = first.trim_end_matches('1');
        self.cluster
            .requests(&self.cluster.namespace())
            .await
            .into_iter()
            .filter_map(|cr| cr.metadata.name)
            .filter(|n| n.starts_with(prefix))
            .collect()
    }

    /// After the last trial: every live volume renews at least once more.
    pub(super) async fn final_renewals(&mut self) {
        let store = self.env.store();
        let before: Vec<(String, u64)> = self
            .live()
            .map(|t| {
                let rev = store
                    .load(&t.id())
                    .ok()
                    .flatten()
                    .map(|s| s.last_revision)
                    .unwrap_or(0);
                (t.pod.name.clone(), rev)
            })
            .collect();
        let ids: Vec<String> = self.live().map(Tracked::id).collect();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let renewed = ids
                .iter()
                .zip(&before)
                .filter(|(id, (_, rev))| {
                    store
                        .load(id)
                        .ok()
                        .flatten()
                        .is_some_and(|s| s.last_revision > *rev)
                })
                .count();
            if renewed == ids.len() || Instant::now() > deadline {
                self.report.final_renewals = renewed;
                if renewed < ids.len() {
                    self.report.violations.push(format!(
                        "after the campaign only {renewed} of {} volumes renewed within 15 s",
                        ids.len()
                    ));
                }
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let context = "after the campaign".to_string();
        self.check(&context).await;
    }

    pub(super) fn tally_requests(&mut self) {
        let store = self.env.store();
        self.report.issuances = self
            .live()
            .filter_map(|t| store.load(&t.id()).ok().flatten())
            .map(|s| s.last_revision)
            .sum();
        if let Some(s) = &self.cluster.standin {
            let creates: Vec<u16> = s
                .api
                .requests()
                .into_iter()
                .filter(|r| r.verb == "create" && r.kind == Some(Kind::CertificateRequest))
                .map(|r| r.status)
                .collect();
            self.report.creates = creates.iter().filter(|&&c| c == 201).count();
            self.report.conflicting_creates = creates.iter().filter(|&&c| c == 409).count();
        }
    }
}

fn count_entries(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}
