//! The node-wide budget of bytes the driver keeps in volume tmpfs.
//!
//! Every volume's files live on a tmpfs the driver mounts and writes, and the kernel charges
//! shmem pages to the memory cgroup of the task that allocates them: the driver's container.
//! Its memory limit therefore has to cover every volume's files, whatever tenants ask for (large
//! trust bundles, many volumes). This budget keeps the total under `--max-volume-bytes` so a
//! tenant gets a clear FailedPrecondition instead of the driver an OOM kill.

use std::collections::HashMap;
use std::fs;
use std::path::Path;

use parking_lot::Mutex;

use crate::files::writer::FileSpec;
use crate::obs::metrics::Metrics;

/// tmpfs allocates whole pages; the memory cgroup is charged per page.
pub(crate) const PAGE: u64 = 4096;

/// The least a volume keeps: a key, its certificate, the CA file and the key's copy in
/// `mem/keys`, a page each.
pub(crate) const MIN_VOLUME_BYTES: u64 = 4 * PAGE;

/// How soon a trust-bundle rewrite refused by the budget is tried again.
pub(crate) const RETRY: std::time::Duration = std::time::Duration::from_secs(60);

/// `n` bytes rounded up to whole pages.
pub(crate) fn pages(n: u64) -> u64 {
    n.div_ceil(PAGE) * PAGE
}

/// What a generation of `files` costs once written, in page-rounded bytes.
pub(crate) fn files_cost(files: &[FileSpec]) -> u64 {
    files.iter().map(|f| pages(f.contents.len() as u64)).sum()
}

/// The page-rounded bytes of every regular file below `dir` (a volume's tmpfs: its files'
/// generations and its keys). Unreadable entries count nothing: a best-effort measure.
pub(crate) fn measure(dir: &Path) -> u64 {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => measure(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map_or(0, |m| pages(m.len())),
            _ => 0,
        })
        .sum()
}

#[derive(Debug, thiserror::Error)]
#[error(
    "writing this volume's files would keep {total} bytes in the node's volume tmpfs (this volume: {volume} bytes, the node's other volumes: {others} bytes), over the node's budget of {budget} bytes (--max-volume-bytes, chart value maxVolumeBytes); the driver's memory cgroup is charged for every volume's files. Use fewer or smaller trust sources, or raise --max-volume-bytes together with the chart's resources.limits.memory"
)]
pub struct OverBudget {
    pub volume: u64,
    pub others: u64,
    pub total: u64,
    pub budget: u64,
}

/// The bytes each volume keeps in its tmpfs, and the node-wide bound on their sum.
#[derive(Debug)]
pub(crate) struct TmpfsBudget {
    max: u64,
    used: Mutex<HashMap<String, u64>>,
    metrics: Metrics,
}

impl TmpfsBudget {
    /// A budget of `max` bytes, whose use is recorded in `metrics`.
    pub(crate) fn new(max: u64, metrics: Metrics) -> Self {
        TmpfsBudget {
            max,
            used: Mutex::new(HashMap::new()),
            metrics,
        }
    }

    #[cfg(test)]
    pub(crate) fn max(&self) -> u64 {
        self.max
    }

    /// The bytes every volume keeps, summed.
    pub(crate) fn total(&self) -> u64 {
        self.used.lock().values().sum()
    }

    /// Charges `volume_id` with `bytes` (replacing what it was charged before) if the node stays
    /// within the budget; returns the previous charge, for [`TmpfsBudget::set`] to restore
    /// should the write then fail. Over budget nothing changes.
    pub(crate) fn charge(&self, volume_id: &str, bytes: u64) -> Result<u64, OverBudget> {
        let mut used = self.used.lock();
        let previous = used.get(volume_id).copied().unwrap_or(0);
        let others = used.values().sum::<u64>() - previous;
        let total = others.saturating_add(bytes);
        // A volume that shrinks is never refused: refusing would only keep the larger files.
        if total > self.max && bytes > previous {
            return Err(OverBudget {
                volume: bytes,
                others,
                total,
                budget: self.max,
            });
        }
        used.insert(volume_id.to_string(), bytes);
        drop(used);
        self.publish_metric();
        Ok(previous)
    }

    /// Whether a new volume of at least `bytes` fits: checked before a publish is issued, so a
    /// node whose budget is full does not sign a certificate at every kubelet retry only to
    /// refuse writing it. The write itself is charged exactly by [`TmpfsBudget::charge`].
    pub(crate) fn has_room(&self, bytes: u64) -> Result<(), OverBudget> {
        let others = self.total();
        let total = others.saturating_add(bytes);
        if total > self.max {
            return Err(OverBudget {
                volume: bytes,
                others,
                total,
                budget: self.max,
            });
        }
        Ok(())
    }

    /// Records what a volume keeps without checking (recovery's measure, a failed write's
    /// rollback); zero forgets the volume.
    pub(crate) fn set(&self, volume_id: &str, bytes: u64) {
        let mut used = self.used.lock();
        if bytes == 0 {
            used.remove(volume_id);
        } else {
            used.insert(volume_id.to_string(), bytes);
        }
        drop(used);
        self.publish_metric();
    }

    /// The volume is gone.
    pub(crate) fn release(&self, volume_id: &str) {
        self.set(volume_id, 0);
    }

    fn publish_metric(&self) {
        self.metrics.volume_tmpfs_bytes(self.total(), self.max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_round_up_to_pages() {
        assert_eq!(pages(0), 0);
        assert_eq!(pages(1), 4096);
        assert_eq!(pages(4096), 4096);
        assert_eq!(pages(4097), 8192);
        let files = vec![
            FileSpec::new("tls.key", vec![0u8; 241]),
            FileSpec::new("tls.crt", vec![0u8; 5000]),
            FileSpec::new("empty", Vec::new()),
        ];
        assert_eq!(files_cost(&files), 4096 + 8192);
    }

    #[test]
    fn the_budget_refuses_what_would_pass_it_and_counts_replacements_once() {
        let budget = TmpfsBudget::new(10 * PAGE, Metrics::detached());
        assert_eq!(budget.charge("a", 4 * PAGE).unwrap(), 0);
        assert_eq!(budget.charge("b", 4 * PAGE).unwrap(), 0);
        // A rewrite of "a" replaces its charge: 5 + 4 fits.
        assert_eq!(budget.charge("a", 5 * PAGE).unwrap(), 4 * PAGE);
        assert_eq!(budget.total(), 9 * PAGE);
        let err = budget.charge("c", 2 * PAGE).unwrap_err();
        assert_eq!(
            (err.volume, err.others, err.total, err.budget),
            (2 * PAGE, 9 * PAGE, 11 * PAGE, 10 * PAGE)
        );
        let text = err.to_string();
        assert!(text.contains("--max-volume-bytes"), "{text}");
        assert!(text.contains("this volume: 8192 bytes"), "{text}");
        assert!(text.contains("budget of 40960 bytes"), "{text}");
        // Refused: nothing changed.
        assert_eq!(budget.total(), 9 * PAGE);
        // Growing "b" past the budget is refused and keeps its old charge.
        assert!(budget.charge("b", 6 * PAGE).is_err());
        assert_eq!(budget.total(), 9 * PAGE);
        budget.release("a");
        assert_eq!(budget.total(), 4 * PAGE);
        budget.charge("c", 2 * PAGE).unwrap();
        assert_eq!(budget.total(), 6 * PAGE);
    }

    #[test]
    fn the_budget_records_its_use_in_the_metrics_it_was_given() {
        let mut registry = prometheus_client::registry::Registry::with_prefix("certvol");
        let budget = TmpfsBudget::new(10 * PAGE, Metrics::register(&mut registry));
        budget.charge("a", 4 * PAGE).unwrap();
        budget.set("b", PAGE);
        let text = crate::obs::metrics::encode(&registry).unwrap();
        assert!(
            text.contains("certvol_volume_tmpfs_bytes 20480\n"),
            "{text}"
        );
        assert!(
            text.contains("certvol_volume_tmpfs_budget_bytes 40960\n"),
            "{text}"
        );
    }

    #[test]
    fn a_shrinking_volume_is_never_refused() {
        let budget = TmpfsBudget::new(4 * PAGE, Metrics::detached());
        budget.set("a", 6 * PAGE);
        budget.charge("a", 5 * PAGE).unwrap();
        assert_eq!(budget.total(), 5 * PAGE);
    }

    #[test]
    fn measure_counts_files_below_a_directory_in_pages() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("keys")).unwrap();
        fs::write(dir.path().join("keys/key-1.pk8"), [0u8; 138]).unwrap();
        fs::write(dir.path().join("a"), [0u8; 4097]).unwrap();
        std::os::unix::fs::symlink("a", dir.path().join("link")).unwrap();
        assert_eq!(measure(dir.path()), 3 * PAGE);
    }
}
