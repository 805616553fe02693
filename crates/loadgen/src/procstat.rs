//! The server's CPU time (in all, and by thread) and peak RSS, read from /proc.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

/// The name and the CPU seconds (user + system) of a `/proc/…/stat` file's process or
/// thread.
fn stat_seconds(path: &str, ticks_per_second: f64) -> Option<(String, f64)> {
    let stat = std::fs::read_to_string(path).ok()?;
    // The command name may hold spaces and parentheses; it ends at the last ')'.
    let end = stat.rfind(')')?;
    let name = &stat[stat.find('(')? + 1..end];
    let rest = &stat[end + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((name.to_owned(), (utime + stime) / ticks_per_second))
}

/// CPU seconds (user + system) used so far by `pid`.
fn cpu_seconds(pid: u32, ticks_per_second: f64) -> Option<f64> {
    stat_seconds(&format!("/proc/{pid}/stat"), ticks_per_second).map(|(_, seconds)| seconds)
}

/// The name and CPU seconds so far of each live thread of `pid`, by thread id.
fn thread_seconds(pid: u32, ticks_per_second: f64) -> HashMap<u64, (String, f64)> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return HashMap::new();
    };
    tasks
        .flatten()
        .filter_map(|task| {
            let tid: u64 = task.file_name().to_str()?.parse().ok()?;
            let stat = task.path().join("stat");
            Some((tid, stat_seconds(stat.to_str()?, ticks_per_second)?))
        })
        .collect()
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
    start_threads: HashMap<u64, (String, f64)>,
    start: Instant,
}

impl CpuMeter {
    pub fn start(pid: u32) -> Option<Self> {
        let ticks = clock_ticks();
        let start_threads = thread_seconds(pid, ticks);
        let start_cpu = cpu_seconds(pid, ticks)?;
        Some(Self { pid, ticks, start_cpu, start_threads, start: Instant::now() })
    }

    /// Percent of one core used since `start` (200% = both cores of a 2-core machine).
    pub fn percent(&self) -> Option<f64> {
        Some(100.0 * self.seconds()? / self.start.elapsed().as_secs_f64())
    }

    /// CPU seconds (user + system) used since `start`.
    pub fn seconds(&self) -> Option<f64> {
        Some(cpu_seconds(self.pid, self.ticks)? - self.start_cpu)
    }

    /// CPU seconds used since `start` by the threads of each name (a thread pool's threads
    /// share one): which part of the server the time went to. A thread that ended before
    /// this call is not counted.
    pub fn by_thread(&self) -> BTreeMap<String, f64> {
        let mut used = BTreeMap::new();
        for (tid, (name, now)) in thread_seconds(self.pid, self.ticks) {
            let before = self.start_threads.get(&tid).map_or(0.0, |(_, seconds)| *seconds);
            *used.entry(name).or_insert(0.0) += now - before;
        }
        used
    }
}

/// The CPU seconds so far of every process whose command name is `name`, by PID.
fn processes_named(name: &str, ticks_per_second: f64) -> HashMap<u32, f64> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return HashMap::new() };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let (comm, seconds) = stat_seconds(&format!("/proc/{pid}/stat"), ticks_per_second)?;
            (comm == name).then_some((pid, seconds))
        })
        .collect()
}

/// CPU use, over an interval, of every process of one name: a database server's processes
/// (Postgres forks one per connection). A process that started during the interval counts
/// from zero; one that ended before [`NamedMeter::seconds`] is not counted.
#[derive(Debug)]
pub struct NamedMeter {
    name: String,
    ticks: f64,
    start: HashMap<u32, f64>,
}

impl NamedMeter {
    pub fn start(name: &str) -> Self {
        let ticks = clock_ticks();
        Self { name: name.to_owned(), ticks, start: processes_named(name, ticks) }
    }

    /// CPU seconds (user + system) used since `start`.
    pub fn seconds(&self) -> f64 {
        processes_named(&self.name, self.ticks)
            .into_iter()
            .map(|(pid, now)| now - self.start.get(&pid).copied().unwrap_or(0.0))
            .sum()
    }
}

/// What the server's process used over a measured run.
#[derive(Debug, Clone, Default)]
pub struct ServerCpu {
    /// Percent of one core over the measured interval.
    pub percent: Option<f64>,
    /// CPU seconds from the start of the measured interval until its last request was
    /// answered: the cost of the requests it counts, give or take one per connection.
    pub seconds: Option<f64>,
    /// The same interval's CPU seconds by thread name (see [`CpuMeter::by_thread`]).
    pub threads: BTreeMap<String, f64>,
    /// The same interval's CPU seconds of the database's processes (`--db-process`).
    pub database: Option<f64>,
}

impl ServerCpu {
    /// What the meters measured up to now; `percent` was read when the load stopped.
    pub fn read(
        meter: Option<&CpuMeter>,
        database: Option<&NamedMeter>,
        percent: Option<f64>,
    ) -> Self {
        Self {
            percent,
            seconds: meter.and_then(CpuMeter::seconds),
            threads: meter.map(CpuMeter::by_thread).unwrap_or_default(),
            database: database.map(NamedMeter::seconds),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This process's threads are found by name, and a busy one is charged its CPU time.
    #[test]
    fn cpu_is_charged_to_the_thread_that_used_it() {
        let meter = CpuMeter::start(std::process::id()).expect("this process's /proc");
        let busy = std::thread::Builder::new()
            .name("procstat-busy".into())
            .spawn(|| {
                let until = Instant::now() + std::time::Duration::from_millis(300);
                let mut x = 0u64;
                while Instant::now() < until {
                    x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
                }
                // Still alive when it is measured: a thread that ended is not counted.
                std::thread::park();
                x
            })
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(400));
        let threads = meter.by_thread();
        busy.thread().unpark();
        busy.join().unwrap();
        let used = threads.get("procstat-busy").copied().unwrap_or_default();
        // 300 ms of spinning, measured in clock ticks (10 ms each); some of it may have
        // waited for a core.
        assert!(used >= 0.1, "{threads:?}");
        assert!(used <= meter.seconds().unwrap() + 0.02, "{threads:?}");
    }

    /// Processes are found by command name, a busy one is charged, and other names are not.
    #[test]
    fn cpu_of_the_processes_of_one_name_is_summed() {
        use std::io::Write;
        let meter = NamedMeter::start("sh");
        let others = NamedMeter::start("no-such-process-name");
        // A shell that counts (CPU in the shell itself), then waits on its standard input.
        let mut shell = std::process::Command::new("sh")
            .arg("-c")
            .arg("i=0; while [ $i -lt 1000000 ]; do i=$((i+1)); done; read _")
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let until = Instant::now() + std::time::Duration::from_secs(30);
        let mut used = meter.seconds();
        while used < 0.05 && Instant::now() < until {
            std::thread::sleep(std::time::Duration::from_millis(50));
            used = meter.seconds();
        }
        let _ = shell.stdin.take().unwrap().write_all(b"\n");
        shell.wait().unwrap();
        assert!(used >= 0.05, "{used}");
        assert_eq!(others.seconds(), 0.0);
    }
}
