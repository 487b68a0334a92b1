//! Named points at which the process can be made to die on purpose, so the crash-recovery tests
//! can stop the driver exactly between two steps of a publish, renewal or unpublish (as SIGKILL,
//! an OOM kill or a node problem would) and check that the next start makes everything
//! consistent.
//!
//! Set `CERTVOL_CRASH_AT=<point>` (e.g. `publish:signed`) to SIGKILL the process the first time it
//! reaches that point. Only a build with the `crashpoints` feature (on by default, for the test
//! suites) reads the variable; without it [`hit`] is empty. Unset, a point costs one comparison
//! against a cached `None`.

/// The environment variable that arms a crash point.
pub const ENV: &str = "CERTVOL_CRASH_AT";

/// Every point the driver passes, in the order a publish / renewal / unpublish reaches them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Point {
    PublishMounted,
    PublishKeySaved,
    CertManagerCreated,
    KubeCsrCreated,
    PublishSigned,
    PublishFilesWritten,
    PublishRecorded,
    PublishBound,
    RenewKeySaved,
    RenewSigned,
    RenewFilesWritten,
    RenewRecorded,
    RefreshFilesWritten,
    UnpublishMarked,
    UnpublishUnbound,
}

impl Point {
    /// All points, in the order a publish, a renewal, a refresh and an unpublish reach them.
    pub const ALL: [Point; 15] = [
        Point::PublishMounted,
        Point::PublishKeySaved,
        Point::CertManagerCreated,
        Point::KubeCsrCreated,
        Point::PublishSigned,
        Point::PublishFilesWritten,
        Point::PublishRecorded,
        Point::PublishBound,
        Point::RenewKeySaved,
        Point::RenewSigned,
        Point::RenewFilesWritten,
        Point::RenewRecorded,
        Point::RefreshFilesWritten,
        Point::UnpublishMarked,
        Point::UnpublishUnbound,
    ];

    /// The name [`ENV`] takes for this point.
    pub fn name(self) -> &'static str {
        match self {
            Point::PublishMounted => "publish:mounted",
            Point::PublishKeySaved => "publish:key-saved",
            Point::CertManagerCreated => "certmanager:created",
            Point::KubeCsrCreated => "kubecsr:created",
            Point::PublishSigned => "publish:signed",
            Point::PublishFilesWritten => "publish:files-written",
            Point::PublishRecorded => "publish:recorded",
            Point::PublishBound => "publish:bound",
            Point::RenewKeySaved => "renew:key-saved",
            Point::RenewSigned => "renew:signed",
            Point::RenewFilesWritten => "renew:files-written",
            Point::RenewRecorded => "renew:recorded",
            Point::RefreshFilesWritten => "refresh:files-written",
            Point::UnpublishMarked => "unpublish:marked",
            Point::UnpublishUnbound => "unpublish:unbound",
        }
    }
}

/// Dies here with SIGKILL if this point is armed.
#[cfg(feature = "crashpoints")]
pub fn hit(point: Point) {
    use std::sync::OnceLock;
    static ARMED: OnceLock<Option<String>> = OnceLock::new();
    let armed = ARMED.get_or_init(|| std::env::var(ENV).ok().filter(|p| !p.is_empty()));
    if armed.as_deref() == Some(point.name()) {
        eprintln!(
            "certvol: crash point {} reached; killing the process",
            point.name()
        );
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
        std::process::abort();
    }
}

/// Without the `crashpoints` feature no point is ever armed.
#[cfg(not(feature = "crashpoints"))]
pub fn hit(_point: Point) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_follow_the_operation() {
        let names: std::collections::HashSet<_> = Point::ALL.iter().map(|p| p.name()).collect();
        assert_eq!(names.len(), Point::ALL.len());
        assert!(Point::ALL.iter().all(|p| p.name().contains(':')));
    }
}
