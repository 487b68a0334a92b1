//! Named points at which the process can be made to die on purpose, so the crash-recovery tests
//! can stop the driver exactly between two steps of a publish, renewal or unpublish (as SIGKILL,
//! an OOM kill or a node problem would) and check that the next start makes everything
//! consistent.
//!
//! Set `CERTVOL_CRASH_AT=<point>` (e.g. `publish:signed`) to SIGKILL the process the first time it
//! reaches that point. Unset, a point costs one comparison against a cached `None`.

use std::sync::OnceLock;

/// The environment variable that arms a crash point.
pub const ENV: &str = "CERTVOL_CRASH_AT";

/// Every point the driver passes, in the order a publish / renewal / unpublish reaches them.
pub const POINTS: &[&str] = &[
    "publish:mounted",
    "publish:key-saved",
    "certmanager:created",
    "kubecsr:created",
    "publish:signed",
    "publish:files-written",
    "publish:recorded",
    "publish:bound",
    "renew:key-saved",
    "renew:signed",
    "renew:files-written",
    "renew:recorded",
    "refresh:files-written",
    "unpublish:marked",
    "unpublish:unbound",
];

fn armed() -> Option<&'static str> {
    static ARMED: OnceLock<Option<String>> = OnceLock::new();
    ARMED
        .get_or_init(|| std::env::var(ENV).ok().filter(|p| !p.is_empty()))
        .as_deref()
}

/// Dies here with SIGKILL if this point is armed.
pub fn hit(point: &str) {
    if armed() == Some(point) {
        eprintln!("certvol: crash point {point} reached; killing the process");
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
        std::process::abort();
    }
}
