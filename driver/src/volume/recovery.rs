//! Start-up reconcile: make disk, mounts and the renewal queue agree again after a restart or a
//! crash at any point. The CSI Probe reports ready only after this pass.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use tracing::{Instrument, info, info_span, warn};

use std::sync::Arc;

use crate::files::store::{Phase, ScannedVolume, VolumePaths, VolumeState};
use crate::spec::attrs;
use crate::volume::{VolumeError, VolumeManager};

/// What the pass found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Report {
    /// Volumes kept, published or with a request pending.
    pub kept: usize,
    /// Of those, renewals that were in flight and resume now.
    pub resumed: usize,
    /// Target binds that had disappeared and were made again.
    pub rebound: usize,
    /// Volumes removed: interrupted publishes, unfinished unpublishes, volumes whose tmpfs is
    /// gone (a reboot), unreadable state.
    pub removed: usize,
    /// Mounts of ours that no volume claims, unmounted.
    pub orphan_mounts: usize,
}

/// Runs the pass. Errors on single volumes are logged and leave that volume for the next start;
/// only a failure to read the mount table or the data root stops the pass.
pub(crate) async fn recover(mgr: &VolumeManager) -> Result<Report, VolumeError> {
    let store = mgr.store();
    let mounts = mgr
        .mounter()
        .mounts()
        .map_err(VolumeError::io_at("read the mount table for", store.root()))?;
    let mounted: HashSet<PathBuf> = mounts.iter().map(|m| m.mount_point.clone()).collect();
    let mut report = Report::default();
    // Volume key -> mount points that state accounts for.
    let mut claimed: HashMap<String, Vec<PathBuf>> = HashMap::new();
    for scanned in store.scan()? {
        if let Some((key, points)) = recover_volume(mgr, scanned, &mounted, &mut report).await {
            claimed.insert(key, points);
        }
    }
    sweep_orphans(mgr, &claimed, &mut report)?;
    info!(
        kept = report.kept,
        resumed = report.resumed,
        rebound = report.rebound,
        removed = report.removed,
        orphan_mounts = report.orphan_mounts,
        "state recovered"
    );
    Ok(report)
}

/// Keeps one volume found on disk (answering the mount points it accounts for), or removes it.
async fn recover_volume(
    mgr: &VolumeManager,
    (paths, loaded): ScannedVolume,
    mounted: &HashSet<PathBuf>,
    report: &mut Report,
) -> Option<(String, Vec<PathBuf>)> {
    let state = match loaded {
        Ok(Some(state)) => state,
        Ok(None) => {
            // A crash before the first state write: only an empty or mounted directory exists.
            discard(mgr, &paths, None, report).await;
            return None;
        }
        Err(e) => {
            warn!(volume_key = %paths.key, error = %e, "unreadable volume state; removing the volume");
            discard(mgr, &paths, None, report).await;
            return None;
        }
    };
    let volume_id = state.volume_id.clone();
    let keep = match state.phase {
        Phase::Mounting | Phase::Unpublishing => false,
        Phase::Issuing | Phase::Published => mounted.contains(&paths.mem),
    };
    if !keep {
        discard(mgr, &paths, Some(state), report).await;
        return None;
    }
    let mut state = state;
    adopt_legacy_keys(&paths, &state);
    if state.phase == Phase::Published && !mounted.contains(&state.target_path) {
        match rebind(mgr, &state) {
            Ok(()) => report.rebound += 1,
            Err(e) => {
                warn!(volume_id, error = %e, "the target bind is gone and cannot be made again; removing the volume");
                discard(mgr, &paths, Some(state), report).await;
                return None;
            }
        }
    }
    if state.phase == Phase::Published && state.pending.is_some() {
        report.resumed += 1;
    }
    // mountinfo names mount points resolved; a relocated kubelet directory must not make a
    // kept volume's bind look unclaimed.
    let target =
        std::fs::canonicalize(&state.target_path).unwrap_or_else(|_| state.target_path.clone());
    report.kept += 1;
    normalise(&mut state);
    adopt(mgr, state);
    Some((paths.key, vec![paths.mem, target]))
}

/// Hands a kept volume to the manager: its renewal queued, its tmpfs measured, its request
/// parsed once from the saved context, its trust watch resumed.
fn adopt(mgr: &VolumeManager, state: VolumeState) {
    let request = attrs::parse(&state.context.clone().into_iter().collect())
        .ok()
        .map(Arc::new);
    // Attributes that no longer parse still get their renewal, which reports them.
    mgr.schedule(&state, request.as_ref().is_none_or(|r| r.renew));
    let volume_id = state.volume_id.clone();
    let published = state.phase == Phase::Published;
    mgr.measure_tmpfs(&volume_id);
    mgr.adopt(state, request);
    // After adopt: the refresher locks the volume through the slot adopt just made.
    if published {
        mgr.resume_trust_watch(&volume_id);
    }
}

/// Unmounts mounts certvol made that no kept volume accounts for: tmpfs (and staging binds)
/// left by a crash between mount and state write, or binds of state that was just discarded.
/// Only what certvol makes is swept: its mounts below its own volume directories and its binds
/// at kubelet's target paths. Others carry the same source (kubelet's subPath binds of a
/// volume's files under `volume-subpaths/`) and are kubelet's to remove.
fn sweep_orphans(
    mgr: &VolumeManager,
    claimed: &HashMap<String, Vec<PathBuf>>,
    report: &mut Report,
) -> Result<(), VolumeError> {
    let store = mgr.store();
    let mounter = mgr.mounter();
    let mounts = mounter
        .mounts()
        .map_err(VolumeError::io_at("read the mount table for", store.root()))?;
    let resolved = |p: PathBuf| std::fs::canonicalize(&p).unwrap_or(p);
    let volumes_dir = resolved(store.root().join("volumes"));
    let pods_dir = resolved(mgr.config().kubelet_dir.join("pods"));
    let mut orphans: Vec<PathBuf> = mounts
        .iter()
        .filter_map(|m| {
            let key = store.key_from_mount_source(&m.source)?;
            let made_by_us = m.mount_point.starts_with(volumes_dir.join(key))
                || (mgr.is_our_bind(m, Some(key)) && is_target_path(&pods_dir, &m.mount_point));
            if !made_by_us {
                return None;
            }
            let ours = claimed
                .get(key)
                .is_some_and(|points| points.contains(&m.mount_point));
            (!ours).then(|| m.mount_point.clone())
        })
        .collect();
    // Deepest first, so nested mounts come off before their parents.
    orphans.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    orphans.dedup();
    for point in orphans {
        // A target is reached from the pods directory without following links, as at unpublish.
        let unmounted = if point.starts_with(&pods_dir) {
            mounter.unmount_beneath(&pods_dir, &point)
        } else {
            mounter.unmount(&point)
        };
        match unmounted {
            Ok(()) => {
                report.orphan_mounts += 1;
                info!(mount_point = %point.display(), "unmounted an orphan mount");
            }
            Err(e) => {
                warn!(mount_point = %point.display(), error = %e, "could not unmount an orphan mount")
            }
        }
    }
    Ok(())
}

/// Whether `point` has the shape of a target path kubelet gives an inline CSI volume:
/// `<pods>/<pod uid>/volumes/kubernetes.io~csi/<volume name>/mount`.
fn is_target_path(pods_dir: &Path, point: &Path) -> bool {
    let Ok(rest) = point.strip_prefix(pods_dir) else {
        return false;
    };
    let parts: Vec<_> = rest.components().map(|c| c.as_os_str()).collect();
    matches!(
        parts.as_slice(),
        [_, volumes, csi, _, mount]
            if *volumes == "volumes" && *csi == "kubernetes.io~csi" && *mount == "mount"
    )
}

/// Volumes published by certvol 0.1.0 before keys were named by revision kept them as
/// `current.pk8` and `pending.pk8`; give them the names their state now looks for.
fn adopt_legacy_keys(paths: &VolumePaths, state: &VolumeState) {
    let legacy = [
        ("current.pk8", state.current.as_ref().map(|c| c.revision)),
        ("pending.pk8", state.pending.as_ref().map(|p| p.revision)),
    ];
    for (name, revision) in legacy {
        let old = paths.keys.join(name);
        if let Some(revision) = revision
            && old.exists()
            && !paths.key(revision).exists()
            && let Err(e) = std::fs::rename(&old, paths.key(revision))
        {
            warn!(volume_id = %state.volume_id, error = %e, "could not rename {name}");
        }
    }
}

/// A published volume whose pending record names a revision it already has is finished work.
fn normalise(state: &mut VolumeState) {
    if let (Some(p), Some(c)) = (&state.pending, &state.current)
        && p.revision <= c.revision
    {
        state.pending = None;
    }
}

fn rebind(mgr: &VolumeManager, state: &VolumeState) -> Result<(), VolumeError> {
    let paths = mgr.store().paths(&state.volume_id);
    mgr.bind_target(&paths, &state.target_path)
}

async fn discard(
    mgr: &VolumeManager,
    paths: &crate::files::store::VolumePaths,
    state: Option<VolumeState>,
    report: &mut Report,
) {
    let result = match &state {
        // The removal's log lines name the volume through this span, as unpublish's do.
        Some(state) => {
            mgr.remove_volume(state)
                .instrument(info_span!("discard", volume_id = %state.volume_id))
                .await
        }
        None => mgr
            .mounter()
            .unmount(&paths.mem)
            .map_err(VolumeError::io_at("unmount", &paths.mem))
            .and_then(|()| mgr.store().remove(paths).map_err(VolumeError::from)),
    };
    match result {
        Ok(()) => report.removed += 1,
        Err(e) => {
            warn!(volume_key = %paths.key, error = %e, "could not remove the volume; retried at the next start")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_kubelets_target_path_shape_counts_as_a_target() {
        let pods = Path::new("/var/lib/kubelet/pods");
        assert!(is_target_path(
            pods,
            Path::new("/var/lib/kubelet/pods/uid/volumes/kubernetes.io~csi/tls/mount")
        ));
        for other in [
            "/var/lib/kubelet/pods/uid/volume-subpaths/tls/app/0",
            "/var/lib/kubelet/pods/uid/volumes/kubernetes.io~csi/tls/mount/sub",
            "/var/lib/kubelet/pods/uid/volumes/kubernetes.io~empty-dir/tls/mount",
            "/var/lib/kubelet/pods/uid/volumes/kubernetes.io~csi/tls",
            "/elsewhere/uid/volumes/kubernetes.io~csi/tls/mount",
        ] {
            assert!(!is_target_path(pods, Path::new(other)), "{other}");
        }
    }
}
