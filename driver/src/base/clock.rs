//! Wall-clock time, injected.
//!
//! Certificate validity is wall-clock time, but waiting is done with `tokio::time` so that tests can
//! pause it. [`TokioClock`] ties the two together for such tests: its wall clock advances exactly as
//! tokio's (possibly paused) clock does.

use std::fmt::Debug;
use std::time::SystemTime;

/// A source of wall-clock time.
pub(crate) trait Clock: Send + Sync + Debug + 'static {
    fn now(&self) -> SystemTime;
}

/// The operating system's clock.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A wall clock that starts at a chosen time and then follows `tokio::time::Instant`, so it
/// advances when a test calls `tokio::time::advance` or auto-advances paused time.
#[derive(Clone, Copy, Debug)]
#[cfg(test)]
pub(crate) struct TokioClock {
    wall_start: SystemTime,
    instant_start: tokio::time::Instant,
}

#[cfg(test)]
impl TokioClock {
    pub(crate) fn starting_at(wall_start: SystemTime) -> Self {
        TokioClock {
            wall_start,
            instant_start: tokio::time::Instant::now(),
        }
    }
}

#[cfg(test)]
impl Clock for TokioClock {
    fn now(&self) -> SystemTime {
        self.wall_start + self.instant_start.elapsed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn tokio_clock_follows_paused_time() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let clock = TokioClock::starting_at(start);
        assert_eq!(clock.now(), start);
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert_eq!(clock.now(), start + Duration::from_secs(3600));
    }
}
