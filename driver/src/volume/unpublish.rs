//! NodeUnpublishVolume: take a volume down, bind, tmpfs, requests and state.

use std::fs;
use std::io;
use std::path::Path;

use tracing::{info, warn};

use crate::base::crashpoint::{self, Point};
use crate::files::store::{Phase, VolumeState};
use crate::runtime::refresh::Message;
use crate::spec::volume::{TargetPath, VolumeId};

use super::{VolumeManager, error::VolumeError, namespace_of, target::check_no_link_below_pods};

impl VolumeManager {
    /// NodeUnpublishVolume. Unknown volumes are fine (kubelet repeats unpublish after restarts).
    /// The target is inside kubelet's pods directory (its type says so); one reached through a
    /// symbolic link below it is refused before anything is unmounted or removed. Its log lines
    /// carry the volume id from the operation's span.
    #[tracing::instrument(name = "unpublish", skip_all, fields(volume_id = %volume_id))]
    pub(crate) async fn unpublish(
        &self,
        volume_id: &VolumeId,
        target_path: &TargetPath,
    ) -> Result<(), VolumeError> {
        check_no_link_below_pods(&self.cfg.kubelet_dir, target_path, false)?;
        self.refuse_link_at_target(target_path)?;
        let (slot, mut guard) = self.lock(volume_id).await?;
        let result = match guard.take() {
            Some(state) => {
                if state.target_path != *target_path {
                    warn!(recorded = %state.target_path.display(), requested = %target_path.display(), "unpublish names another target than the one published; removing the published one");
                }
                match self.remove_volume(&state).await {
                    Ok(()) => Ok(()),
                    Err(e) => {
                        *guard = Some(state);
                        Err(e)
                    }
                }
            }
            None => self.unbind_target(target_path, None),
        };
        self.release(volume_id, &slot, &guard);
        result.map_err(|e| e.on_data_root(self.store.root()))
    }

    /// Removes everything a volume has: renewal, target bind, target dir, tmpfs, issuer requests,
    /// and state last, recording `Unpublishing` first so that a crash part-way is finished later.
    /// Runs inside the span of the operation that removes the volume, which names it.
    pub(crate) async fn remove_volume(&self, state: &VolumeState) -> Result<(), VolumeError> {
        let paths = self.store.paths(&state.volume_id);
        if state.phase != Phase::Unpublishing && paths.state.exists() {
            let mut marked = state.clone();
            marked.phase = Phase::Unpublishing;
            // First: if the data root refuses the record (full, read-only), the volume stays as
            // it was, still renewed and refreshed, and kubelet's retry of the unpublish finds it.
            self.save(&marked).await?;
            crashpoint::hit(Point::UnpublishMarked);
        }
        self.scheduler.cancel(&state.volume_id);
        self.set_token(&state.volume_id, None);
        self.passwords.lock().remove(&state.volume_id);
        if let Some(refresher) = &self.trust.refresher {
            refresher.send(Message::Forget {
                volume_id: state.volume_id.clone(),
            });
        }
        self.unbind_target(&state.target_path, Some(&paths.key))?;
        crashpoint::hit(Point::UnpublishUnbound);
        self.mounter
            .unmount(&paths.mem)
            .map_err(VolumeError::io_at("unmount", &paths.mem))?;
        if !state.requests.is_empty()
            && let Err(e) = self
                .issuer
                .forget(namespace_of(state), &state.requests)
                .await
        {
            // The issuer keeps the requests (e.g. garbage collection removes them with the pod);
            // the volume itself is gone either way.
            warn!(error = %e, "could not delete the volume's issuer requests");
        }
        self.store.remove(&paths)?;
        self.tmpfs.release(&state.volume_id);
        self.count_pod_volume(&state.target_path, &state.volume_id, false);
        self.metrics.untrack_volume(&state.volume_id);
        info!("volume removed");
        Ok(())
    }

    /// A symbolic link at the target is refused: unmounting or removing through it would act
    /// on whatever it leads to. The directory mounter's fake bind is such a link, made by
    /// certvol and recorded as its mount, so that one is allowed.
    fn refuse_link_at_target(&self, target: &Path) -> Result<(), VolumeError> {
        match fs::symlink_metadata(target) {
            Ok(meta) if meta.file_type().is_symlink() => {
                let fake_bind = self
                    .mounter
                    .mount_at(target)
                    .map_err(VolumeError::io_at("inspect mounts for", target))?
                    .is_some_and(|m| self.is_our_bind(&m, None));
                if fake_bind {
                    return Ok(());
                }
                Err(VolumeError::InvalidArgument(format!(
                    "target_path {} is a symbolic link; refusing to unmount or remove through it",
                    target.display()
                )))
            }
            _ => Ok(()),
        }
    }

    /// Unmounts certvol's bind at the target (the volume `key`'s, or with `None` any of this
    /// data root's) and removes the directory if it is empty. Never follows a symlink, never
    /// unmounts a mount certvol did not make and never removes anything else.
    pub(crate) fn unbind_target(
        &self,
        target: &Path,
        key: Option<&str>,
    ) -> Result<(), VolumeError> {
        if let Err(e) = check_no_link_below_pods(&self.cfg.kubelet_dir, target, false) {
            // What the link leads to is not ours to unmount or remove; the volume's own tmpfs
            // and state still go.
            warn!(target = %target.display(), error = %e, "leaving the target alone");
            return Ok(());
        }
        match self
            .mounter
            .mount_at(target)
            .map_err(VolumeError::io_at("inspect mounts for", target))?
        {
            Some(m) if self.is_our_bind(&m, key) => self
                .mounter
                .unmount_beneath(&self.pods_dir(), target)
                .map_err(VolumeError::io_at("unmount", target))?,
            Some(m) => {
                // Not an error: kubelet repeats a failed unpublish forever and the pod stays
                // Terminating, yet no retry could ever succeed. kubelet itself does not remove a
                // target that is still a mount point, so answering OK leaves the mount in place.
                warn!(
                    target = %target.display(),
                    fs_type = %m.fs_type,
                    source = %m.source,
                    root = %m.root,
                    "the target holds a mount certvol did not make; leaving it alone"
                );
                return Ok(());
            }
            None => {}
        }
        match fs::symlink_metadata(target) {
            Ok(meta) if meta.is_dir() => match fs::remove_dir(target) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(VolumeError::io_at("remove target directory", target)(e)),
            },
            Ok(meta) if meta.file_type().is_symlink() => {
                warn!(target = %target.display(), "the target is a symbolic link; leaving it alone");
                Ok(())
            }
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(VolumeError::io_at("inspect", target)(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::volume::tests::*;

    use std::fs;

    use crate::files::store::Phase;
    use crate::runtime::scheduler::RenewOutcome;

    #[tokio::test]
    async fn an_unpublish_whose_first_record_is_refused_touches_nothing() {
        let f = fixture();
        let p = params(&f, "stay");
        f.mgr.publish(p.clone()).await.unwrap();
        let before = cert_of(&p.target_path);
        let blocker = block_saves(&f, "csi-stay");
        fs::create_dir(&blocker).unwrap();
        f.mgr
            .unpublish(&id("csi-stay"), &p.target_path)
            .await
            .unwrap_err();
        assert_eq!(cert_of(&p.target_path), before, "still bound and serving");
        let state = f.mgr.status(&id("csi-stay")).await.unwrap().unwrap();
        assert_eq!(state.phase, Phase::Published);
        // Still renewable, as it was.
        fs::remove_dir(&blocker).unwrap();
        let outcome = f.mgr.renew_volume("csi-stay").await;
        assert!(
            matches!(outcome, RenewOutcome::Renewed { .. }),
            "{outcome:?}"
        );
        f.mgr
            .unpublish(&id("csi-stay"), &p.target_path)
            .await
            .unwrap();
        assert!(!p.target_path.exists());
        assert_eq!(f.mgr.store().load("csi-stay").unwrap(), None);
    }

    #[tokio::test]
    async fn unpublish_removes_everything_and_tolerates_unknown_volumes() {
        let f = fixture();
        let p = params(&f, "gone");
        f.mgr.publish(p.clone()).await.unwrap();
        f.mgr
            .unpublish(&id("csi-gone"), &p.target_path)
            .await
            .unwrap();
        assert!(fs::symlink_metadata(&p.target_path).is_err());
        assert!(!f.mgr.store().paths("csi-gone").dir.exists());
        assert!(f.issuer.ca.issued_names().unwrap().is_empty());
        f.mgr
            .unpublish(&id("csi-gone"), &p.target_path)
            .await
            .unwrap();
        f.mgr
            .unpublish(
                &id("csi-never"),
                &target_path(&f, f.pods.join("never/mount")),
            )
            .await
            .unwrap();
        assert!(matches!(
            f.mgr.renew_volume("csi-gone").await,
            RenewOutcome::Done
        ));
    }
}
