//! A running driver process: signals, exit and its log.

use std::fs;
use std::io;
use std::path::PathBuf;
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

use crate::bench;

/// A running driver process. Killed (SIGKILL) when dropped.
pub struct Driver {
    child: Child,
    pub log: PathBuf,
}

impl Driver {
    /// A driver started some other way (the container tier's runtime), logging to `log`.
    pub fn from_child(child: Child, log: PathBuf) -> Driver {
        Driver { child, log }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// The process's `VmRSS` and `VmHWM` (peak resident set) from `/proc/<pid>/status`, in KiB.
    pub fn memory_kib(&self) -> io::Result<(u64, u64)> {
        let m = bench::procfs::memory(self.pid())?;
        Ok((m.rss_kib, m.hwm_kib))
    }

    /// SIGKILL, as a crash or an OOM kill would stop it.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits up to `timeout` for the exit.
    pub fn terminate(&mut self, timeout: Duration) -> io::Result<ExitStatus> {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid()),
            nix::sys::signal::Signal::SIGTERM,
        )
        .map_err(io::Error::from)?;
        self.wait_exit(timeout)
    }

    /// Waits for the process to exit by itself (e.g. at a crash point).
    pub fn wait_exit(&mut self, timeout: Duration) -> io::Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exit_by(deadline)? {
                return Ok(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The exit status once exited; TimedOut once `deadline` has passed; else `None`.
    fn exit_by(&mut self, deadline: Instant) -> io::Result<Option<ExitStatus>> {
        match self.child.try_wait()? {
            Some(status) => Ok(Some(status)),
            None if Instant::now() > deadline => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "driver did not exit",
            )),
            None => Ok(None),
        }
    }

    /// The exit status if the process has exited, without waiting.
    pub fn try_exit(&mut self) -> io::Result<Option<ExitStatus>> {
        self.child.try_wait()
    }

    /// Like [`Driver::wait_exit`] but yields to the runtime while waiting, so that tasks talking
    /// to the driver (an in-flight publish) keep running on a single-threaded test runtime.
    pub async fn exited(&mut self, timeout: Duration) -> io::Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exit_by(deadline)? {
                return Ok(status);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
