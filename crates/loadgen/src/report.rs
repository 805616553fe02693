use std::collections::BTreeMap;
use std::fmt::Write;

use hdrhistogram::Histogram;
use serde_json::json;

use crate::procstat::ServerCpu;
use crate::{Mode, Target};

/// Latencies in microseconds, from 1 µs to 60 s, with 3 significant digits.
#[allow(clippy::expect_used)] // constant bounds, valid for hdrhistogram
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")
}

/// What one task observed.
#[derive(Debug, Clone)]
pub struct Tally {
    pub latency: Histogram<u64>,
    /// Responses by status; 0 = no answer (connection error or timeout), 298 = an
    /// unparseable token response, 299 = a 200 from /verify that did not verify.
    pub statuses: BTreeMap<u16, u64>,
    /// Renews sent over the whole run, warmup included.
    pub renews: u64,
    /// Renews that did not return a new token (any status but 200, or no answer), over the
    /// whole run.
    pub failed_renews: u64,
    /// Refresh tokens a chain sent a second time (it must never happen), over the whole run.
    pub resent: u64,
}

impl Default for Tally {
    fn default() -> Self {
        Self {
            latency: histogram(),
            statuses: BTreeMap::new(),
            renews: 0,
            failed_renews: 0,
            resent: 0,
        }
    }
}

impl Tally {
    pub fn record(&mut self, status: u16, micros: u64) {
        let _ = self.latency.record(micros.max(1));
        *self.statuses.entry(status).or_default() += 1;
    }

    /// A renew, measured or not: whether it failed, and whether its token had been sent before.
    pub fn renewed(&mut self, ok: bool, resent: bool) {
        self.renews += 1;
        self.failed_renews += u64::from(!ok);
        self.resent += u64::from(resent);
    }

    pub fn merge(&mut self, other: &Tally) {
        let _ = self.latency.add(&other.latency);
        for (status, n) in &other.statuses {
            *self.statuses.entry(*status).or_default() += n;
        }
        self.renews += other.renews;
        self.failed_renews += other.failed_renews;
        self.resent += other.resent;
    }
}

/// The result of a run.
#[derive(Debug)]
pub struct Report {
    pub target: Target,
    pub label: String,
    pub mode: Mode,
    pub connections: usize,
    pub rate: Option<u64>,
    pub seconds: f64,
    pub tally: Tally,
    pub server_cpu: ServerCpu,
    pub server_peak_rss_mib: Option<f64>,
}

/// Rounded to tenths, for the JSON line.
fn tenths(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

fn ms(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

impl Report {
    pub fn requests(&self) -> u64 {
        self.tally.statuses.values().sum()
    }

    pub fn failures(&self) -> u64 {
        self.tally
            .statuses
            .iter()
            .filter(|(s, _)| !(200..300).contains(*s) || **s >= 298)
            .map(|(_, n)| n)
            .sum()
    }

    pub fn rps(&self) -> f64 {
        let ok = self.requests() - self.failures();
        ok as f64 / self.seconds.max(f64::EPSILON)
    }

    /// `seconds` of CPU per request answered (any status), in microseconds; `None`
    /// without a request.
    fn us_per_request(&self, seconds: f64) -> Option<f64> {
        let requests = self.requests();
        (requests > 0).then(|| seconds * 1e6 / requests as f64)
    }

    /// The server's CPU time per request answered (any status), in microseconds.
    pub fn cpu_us_per_request(&self) -> Option<f64> {
        self.us_per_request(self.server_cpu.seconds?)
    }

    /// The server's CPU time per request by thread name, in microseconds.
    pub fn cpu_us_per_request_by_thread(&self) -> BTreeMap<String, f64> {
        let threads = self.server_cpu.threads.iter();
        threads.filter_map(|(name, s)| Some((name.clone(), self.us_per_request(*s)?))).collect()
    }

    /// The database's CPU time per request answered, in microseconds.
    pub fn db_cpu_us_per_request(&self) -> Option<f64> {
        self.us_per_request(self.server_cpu.database?)
    }

    fn quantile(&self, q: f64) -> f64 {
        ms(self.tally.latency.value_at_quantile(q))
    }

    fn mode_name(&self) -> &'static str {
        match self.mode {
            Mode::Renew => "renew",
            Mode::Sign => "sign",
            Mode::Verify => "verify",
            Mode::Mixed => "mixed",
            Mode::OauthRefresh => "oauth-refresh",
            Mode::DpopRenew => "dpop-renew",
        }
    }

    pub fn json_line(&self) -> String {
        let statuses: BTreeMap<String, u64> =
            self.tally.statuses.iter().map(|(s, n)| (s.to_string(), *n)).collect();
        json!({
            "label": self.label,
            "mode": self.mode_name(),
            "connections": self.connections,
            "rate": self.rate,
            "seconds": (self.seconds * 100.0).round() / 100.0,
            "requests": self.requests(),
            "failures": self.failures(),
            "rps": self.rps().round(),
            "p50_ms": self.quantile(0.50),
            "p90_ms": self.quantile(0.90),
            "p99_ms": self.quantile(0.99),
            "p999_ms": self.quantile(0.999),
            "max_ms": ms(self.tally.latency.max()),
            "statuses": statuses,
            "server_cpu_pct": self.server_cpu.percent.map(|v| v.round()),
            "server_cpu_us_per_req": self.cpu_us_per_request().map(tenths),
            "server_cpu_us_per_req_by_thread": self.cpu_us_per_request_by_thread()
                .into_iter()
                .map(|(name, us)| (name, tenths(us)))
                .collect::<BTreeMap<_, _>>(),
            "db_cpu_us_per_req": self.db_cpu_us_per_request().map(tenths),
            "server_peak_rss_mib": self.server_peak_rss_mib.map(tenths),
            "target": match self.target {
                Target::Keygate => "keygate",
                Target::Oidc => "oidc",
            },
            "renews": self.tally.renews,
            "failed_renews": self.tally.failed_renews,
            "resent": self.tally.resent,
        })
        .to_string()
    }

    pub fn table(&self) -> String {
        let mut out = String::new();
        let opt =
            |v: Option<f64>, unit: &str| v.map_or("-".to_owned(), |v| format!("{v:.0}{unit}"));
        let _ = writeln!(
            out,
            "{:<10} {:<7} {:>5} {:>7} {:>9} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>6} {:>8} {:>8}",
            "label",
            "mode",
            "conns",
            "rate",
            "requests",
            "req/s",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "p99.9",
            "max ms",
            "errors",
            "cpu",
            "µs/req",
            "rss MiB"
        );
        let _ = writeln!(
            out,
            "{:<10} {:<7} {:>5} {:>7} {:>9} {:>9.0} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8} {:>6} {:>8} {:>8}",
            self.label,
            self.mode_name(),
            self.connections,
            self.rate.map_or("closed".to_owned(), |r| r.to_string()),
            self.requests(),
            self.rps(),
            self.quantile(0.50),
            self.quantile(0.90),
            self.quantile(0.99),
            self.quantile(0.999),
            ms(self.tally.latency.max()),
            self.failures(),
            opt(self.server_cpu.percent, "%"),
            self.cpu_us_per_request().map_or("-".to_owned(), |v| format!("{v:.1}")),
            self.server_peak_rss_mib.map_or("-".to_owned(), |v| format!("{v:.1}")),
        );
        out
    }

    pub fn failure_banner(&self) -> String {
        let failed: Vec<String> = self
            .tally
            .statuses
            .iter()
            .filter(|(s, _)| !(200..300).contains(*s) || **s >= 298)
            .map(|(s, n)| match s {
                0 => format!("{n} without an answer"),
                298 => format!("{n} unreadable token responses"),
                299 => format!("{n} tokens that did not verify"),
                s => format!("{n} × HTTP {s}"),
            })
            .collect();
        let mut lines = Vec::new();
        if self.failures() > 0 {
            lines.push(format!(
                "!!! THIS RUN HAD {} FAILED REQUESTS: {} !!!",
                self.failures(),
                failed.join(", ")
            ));
        }
        if self.tally.failed_renews > 0 || self.tally.resent > 0 {
            lines.push(format!(
                "!!! OVER THE WHOLE RUN (WARMUP INCLUDED): {} FAILED RENEWS, {} REFRESH TOKENS SENT TWICE !!!",
                self.tally.failed_renews, self.tally.resent
            ));
        }
        lines.join("\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(statuses: &[(u16, u64)], seconds: Option<f64>) -> Report {
        let mut tally = Tally::default();
        for &(status, n) in statuses {
            for _ in 0..n {
                tally.record(status, 1_000);
            }
        }
        Report {
            target: Target::Keygate,
            label: "t".into(),
            mode: Mode::Renew,
            connections: 1,
            rate: None,
            seconds: 10.0,
            tally,
            server_cpu: ServerCpu {
                percent: Some(50.0),
                seconds,
                threads: [("worker".to_owned(), 0.3)].into(),
                database: seconds.map(|s| s / 2.0),
            },
            server_peak_rss_mib: None,
        }
    }

    #[test]
    fn cpu_per_request_divides_the_servers_cpu_by_every_answered_request() {
        let r = report(&[(200, 300), (401, 100)], Some(0.02));
        assert_eq!(r.cpu_us_per_request(), Some(50.0));
        let line: serde_json::Value = serde_json::from_str(&r.json_line()).unwrap();
        assert_eq!(line["server_cpu_us_per_req"], 50.0);
        // 0.3 s over 400 requests.
        assert_eq!(line["server_cpu_us_per_req_by_thread"]["worker"], 750.0);
        assert_eq!(line["db_cpu_us_per_req"], 25.0);
        assert!(r.table().contains("µs/req"));
        assert_eq!(report(&[], Some(1.0)).cpu_us_per_request(), None, "no request, no figure");
        assert_eq!(report(&[(200, 5)], None).cpu_us_per_request(), None, "no pid, no figure");
    }
}
