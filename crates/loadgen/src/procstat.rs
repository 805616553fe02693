//! The server's CPU time and peak RSS, read from /proc.

use std::time::Instant;

/// CPU seconds (user + system) used so far by `pid`.
fn cpu_seconds(pid: u32, ticks_per_second: f64) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; fields after it start past the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / ticks_per_second)
}

/// Peak resident set size in MiB (VmHWM).
pub fn peak_rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// CPU use of a process over an interval.
#[derive(Debug)]
pub struct CpuMeter {
    pid: u32,
    ticks: f64,
    start_cpu: f64,
    start: Instant,
}

impl CpuMeter {
    pub fn start(pid: u32) -> Option<Self> {
        let ticks = clock_ticks();
        Some(Self { pid, ticks, start_cpu: cpu_seconds(pid, ticks)?, start: Instant::now() })
    }

    /// Percent of one core used since `start` (200% = both cores of a 2-core machine).
    pub fn percent(&self) -> Option<f64> {
        Some(100.0 * self.seconds()? / self.start.elapsed().as_secs_f64())
    }

    /// CPU seconds (user + system) used since `start`.
    pub fn seconds(&self) -> Option<f64> {
        Some(cpu_seconds(self.pid, self.ticks)? - self.start_cpu)
    }
}

/// What the server's process used over a measured run.
#[derive(Debug, Clone, Copy, Default)]
pub struct ServerCpu {
    /// Percent of one core over the measured interval.
    pub percent: Option<f64>,
    /// CPU seconds from the start of the measured interval until its last request was
    /// answered: the cost of the requests it counts, give or take one per connection.
    pub seconds: Option<f64>,
}
