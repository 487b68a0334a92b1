//! What the kernel reports about the driver process: resident memory and CPU time. Parsing is
//! pure; only [`memory`] and [`cpu_ticks`] read `/proc`.

use std::path::Path;

use serde::Serialize;

/// Resident memory from `/proc/PID/status`, in KiB.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Memory {
    /// VmRSS: resident now.
    pub rss_kib: u64,
    /// VmHWM: the resident peak over the process's life.
    pub hwm_kib: u64,
}

/// VmRSS and VmHWM from the text of `/proc/PID/status`.
pub fn parse_status(text: &str) -> Option<Memory> {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
    };
    Some(Memory {
        rss_kib: field("VmRSS:")?,
        hwm_kib: field("VmHWM:")?,
    })
}

/// utime + stime (clock ticks) from the text of `/proc/PID/stat`.
pub fn parse_stat_ticks(text: &str) -> Option<u64> {
    // The command name (field 2) is in parentheses and may hold spaces or ')': fields are
    // counted from after the last ')'. There, index 0 is field 3 (state), so utime (field 14)
    // is index 11 and stime (field 15) index 12.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

pub fn memory(pid: i32) -> std::io::Result<Memory> {
    let text = std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("status"))?;
    parse_status(&text).ok_or_else(|| std::io::Error::other("no VmRSS/VmHWM in status"))
}

pub fn cpu_ticks(pid: i32) -> std::io::Result<u64> {
    let text = std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("stat"))?;
    parse_stat_ticks(&text).ok_or_else(|| std::io::Error::other("unparsable stat"))
}

/// Clock ticks per second (`getconf CLK_TCK`); 100, the Linux USER_HZ on every common
/// architecture, when getconf is unavailable.
pub fn ticks_per_second() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|t| *t > 0)
        .unwrap_or(100)
}

/// The machine the figures came from.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Machine {
    pub nproc: usize,
    pub cpu_model: String,
    pub kernel: String,
    pub memory_total_kib: u64,
    /// 1-, 5- and 15-minute load averages when the run started and ended (the machine is shared).
    pub loadavg_start: String,
    pub loadavg_end: String,
}

pub fn cpu_model(cpuinfo: &str) -> Option<String> {
    cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
}

pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|t| t.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

pub fn machine() -> Machine {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let mem_total = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    Machine {
        nproc: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        cpu_model: cpu_model(&read("/proc/cpuinfo")).unwrap_or_else(|| "unknown".into()),
        kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
        memory_total_kib: mem_total,
        loadavg_start: loadavg(),
        loadavg_end: String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_fields() {
        let text = "Name:\tcertvol\nVmHWM:\t   20480 kB\nVmRSS:\t   10240 kB\nThreads:\t4\n";
        assert_eq!(
            parse_status(text),
            Some(Memory {
                rss_kib: 10240,
                hwm_kib: 20480
            })
        );
        assert_eq!(parse_status("Name:\tx\n"), None);
    }

    #[test]
    fn stat_ticks_survive_odd_command_names() {
        let text =
            "4242 (cert vol) x) S 1 4242 4242 0 -1 4194560 100 0 0 0 17 5 0 0 20 0 4 0 1 2 3";
        assert_eq!(parse_stat_ticks(text), Some(22));
        assert_eq!(parse_stat_ticks("4242 (x) S 1"), None);
    }

    #[test]
    fn cpu_model_line() {
        let text = "processor\t: 0\nmodel name\t: Example CPU @ 2.0GHz\nflags\t: fpu\n";
        assert_eq!(cpu_model(text).as_deref(), Some("Example CPU @ 2.0GHz"));
    }
}
