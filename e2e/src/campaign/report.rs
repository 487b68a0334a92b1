//! The campaign's counts and how they print.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use super::Operation;

/// The campaign's counts, printed at the end and quoted in the issue notes.
#[derive(Debug, Default)]
pub struct Report {
    pub seed: u64,
    pub trials: usize,
    /// Kills by operation: (at a named point, at a random moment).
    pub kills: BTreeMap<Operation, (usize, usize)>,
    /// Kills by named point.
    pub points: BTreeMap<&'static str, usize>,
    /// Random kills that came after the operation had already answered (harmless, counted).
    pub kills_after_completion: usize,
    /// Operations kubelet retried after the restart because it saw them fail.
    pub publish_retries: usize,
    pub unpublish_retries: usize,
    /// Volume checks passed (one per volume per trial).
    pub volume_checks: usize,
    /// Volumes published / removed over the campaign.
    pub published: usize,
    pub removed: usize,
    /// Issuances (sum of revisions) of the volumes still published at the end, and of all.
    pub issuances: u64,
    /// CertificateRequest creates the API answered 201 / 409.
    pub creates: usize,
    pub conflicting_creates: usize,
    /// Renewals observed after the last restart (proves renewal still runs).
    pub final_renewals: usize,
    pub elapsed: Duration,
    pub violations: Vec<String>,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "crash campaign: {} trials in {:.1} s (seed {})",
            self.trials,
            self.elapsed.as_secs_f64(),
            self.seed
        )?;
        for (op, (point, random)) in &self.kills {
            writeln!(
                f,
                "  kill -9 during {op:?}: {} ({point} at named points, {random} at random moments)",
                point + random
            )?;
        }
        let points: Vec<String> = self
            .points
            .iter()
            .map(|(p, n)| format!("{p} {n}"))
            .collect();
        writeln!(f, "  named points: {}", points.join(", "))?;
        writeln!(
            f,
            "  random kills that landed after the call had answered: {}",
            self.kills_after_completion
        )?;
        writeln!(
            f,
            "  kubelet retries after restart: {} publishes, {} unpublishes",
            self.publish_retries, self.unpublish_retries
        )?;
        writeln!(
            f,
            "  volumes: {} published, {} removed; {} volume checks passed",
            self.published, self.removed, self.volume_checks
        )?;
        writeln!(
            f,
            "  issuances of live volumes: {}; CertificateRequest creates: {} answered 201, {} answered 409",
            self.issuances, self.creates, self.conflicting_creates
        )?;
        writeln!(
            f,
            "  renewals after the last restart: {}",
            self.final_renewals
        )?;
        write!(f, "  invariant violations: {}", self.violations.len())?;
        for v in self.violations.iter().take(20) {
            write!(f, "\n    - {v}")?;
        }
        Ok(())
    }
}
