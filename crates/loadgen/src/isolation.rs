//! `keygate-bench isolation`: whether one app flooding the gateway hurts another. Starts a
//! gateway (a temporary SQLite directory, or `--database-url`), creates two apps, A and B
//! (`reuse_grace` 0, so a refresh token sent again after it was spent is always a 401), and
//! runs up to three phases of the same length:
//!
//! 1. `alone`: B alone, renewing rotating chains open loop at `--b-rate`;
//! 2. `quota`: B the same, while A renews as fast as it can (closed loop, `--a-conns`
//!    chains) under a quota of `--a-quota` requests a second (`requests_per_second`, set
//!    through `PATCH /root/apps/{id}`): A's served rate against its quota, its 429s;
//! 3. `no-quota`: the same with A's quota back to 0 (no limit): what fair admission leaves
//!    B, how much A is served, and the 503s it sheds.
//!
//! A refusal (429 over the quota, 503 when the gateway sheds) spends nothing, so A sends
//! the same refresh token again at once (it floods: it does not wait for `Retry-After`).
//! Every renew that then succeeds with that token is counted: the proof that the refusal
//! kept the token. A 401 would mean a refusal spent it; it is an error of the run.
//!
//! B runs on a thread and runtime of its own, so A's client tasks cannot delay B's
//! schedule in this process. B's latency is measured from when each request was actually
//! sent; a request sent more than [`LATE`] after its scheduled time (no free chain, or this
//! process was not scheduled) is counted as late, and the latency from the scheduled time
//! is in the JSON line too (`p99_from_due_ms`).
//!
//! Any answer other than 200 to B, and any answer to A other than 200, 429 (in the quota
//! phase) and 503 (a 401, another 5xx, no answer) is unexpected, as is a 429 without
//! `Retry-After` and `rate_limited`, or A served beyond what its quota allows: the run
//! then exits 2.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::ValueEnum;
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tokio::sync::{oneshot, Semaphore};

use crate::client::{Chain, Client, Renewal};
use crate::harness::{create_app, start_gateway, Api, ROOT_KEY};
use crate::procstat::CpuMeter;
use crate::report::histogram;

/// A B request sent this long after its scheduled time or later is counted as late.
const LATE: Duration = Duration::from_millis(2);

/// How long a request may wait for its answer before it counts as unanswered.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, clap::Args)]
pub struct IsolationArgs {
    /// The keygate binary to run.
    #[arg(long, default_value = "target/release/keygate")]
    keygate: PathBuf,
    /// A Postgres URL (a fresh database or schema) instead of the embedded SQLite.
    #[arg(long, env = "KEYGATE_ISOLATION_DATABASE_URL")]
    database_url: Option<String>,
    /// How long each phase measures.
    #[arg(long, short = 'd', value_parser = humantime::parse_duration, default_value = "10s")]
    duration: Duration,
    /// Unmeasured load at the start of each phase (A's burst is spent in it).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1s")]
    warmup: Duration,
    /// B's renews per second, sent on schedule whatever the gateway does.
    #[arg(long, default_value_t = 200)]
    b_rate: u64,
    /// B's chains: the most B requests in flight.
    #[arg(long, default_value_t = 32)]
    b_chains: usize,
    /// A's chains, each renewing back to back (closed loop).
    #[arg(long, default_value_t = 64)]
    a_conns: usize,
    /// A's `requests_per_second` in the quota phase: well below what the gateway serves.
    #[arg(long, default_value_t = 2000)]
    a_quota: u64,
    /// A's `requests_burst` in the quota phase (0: the gateway's default, one second's worth).
    #[arg(long, default_value_t = 0)]
    a_burst: u64,
    /// The phases to run, in this order (B's p99 is compared with `alone`'s).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "alone,quota,no-quota")]
    phases: Vec<Phase>,
    /// Keep the gateway's directory (its logs) instead of removing it.
    #[arg(long)]
    keep: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Phase {
    /// B alone.
    Alone,
    /// A flooding under its quota, beside B.
    Quota,
    /// A flooding without a quota, beside B.
    NoQuota,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Self::Alone => "alone",
            Self::Quota => "quota",
            Self::NoQuota => "no-quota",
        }
    }
}

/// The phases' JSON lines and table, and whether anything unexpected happened.
#[derive(Debug)]
pub struct Outcome {
    pub lines: Vec<String>,
    pub table: String,
    pub unexpected: Vec<String>,
}

/// What one app's requests of a phase came to.
#[derive(Debug, Clone)]
struct Side {
    /// Latency of the measured requests, µs, from when each was actually sent.
    latency: Histogram<u64>,
    /// B: latency of the measured requests, µs, from when each was due.
    from_due: Histogram<u64>,
    /// Answers to the measured requests (sent after the warm-up), by status.
    measured: BTreeMap<u16, u64>,
    /// Answers over the whole phase, warm-up included, by status: what the checks read.
    all: BTreeMap<u16, u64>,
    /// The `error` codes of 429 and 503 answers, over the whole phase.
    refusal_codes: BTreeMap<String, u64>,
    /// 429 and 503 answers without `Retry-After`.
    no_retry_after: u64,
    /// 429 answers whose `error` is not `rate_limited`.
    not_rate_limited: u64,
    /// Renews that succeeded with a refresh token refused (429 or 503) before.
    refused_then_renewed: u64,
    /// 401s to a refresh token refused before: a refusal that spent the token.
    spent_by_refusal: u64,
    /// B: requests sent [`LATE`] or more after their scheduled time.
    late: u64,
    /// Sessions opened again after a chain broke (any answer but 200, 429, 503).
    reopened: u64,
}

impl Default for Side {
    fn default() -> Self {
        Self {
            latency: histogram(),
            from_due: histogram(),
            measured: BTreeMap::new(),
            all: BTreeMap::new(),
            refusal_codes: BTreeMap::new(),
            no_retry_after: 0,
            not_rate_limited: 0,
            refused_then_renewed: 0,
            spent_by_refusal: 0,
            late: 0,
            reopened: 0,
        }
    }
}

impl Side {
    /// Counts one answer; its latency and status too when `measured`.
    fn answer(&mut self, renewal: &Renewal, measured: bool, micros: u64) {
        let status = renewal.status;
        *self.all.entry(status).or_default() += 1;
        if matches!(status, 429 | 503) {
            let code = renewal.error.clone().unwrap_or_else(|| "(none)".into());
            self.not_rate_limited += u64::from(status == 429 && code != "rate_limited");
            *self.refusal_codes.entry(code).or_default() += 1;
            self.no_retry_after += u64::from(!renewal.retry_after);
        }
        if measured {
            let _ = self.latency.record(micros.max(1));
            *self.measured.entry(status).or_default() += 1;
        }
    }

    fn merge(&mut self, other: &Side) {
        let _ = self.latency.add(&other.latency);
        let _ = self.from_due.add(&other.from_due);
        for (status, n) in &other.measured {
            *self.measured.entry(*status).or_default() += n;
        }
        for (status, n) in &other.all {
            *self.all.entry(*status).or_default() += n;
        }
        for (code, n) in &other.refusal_codes {
            *self.refusal_codes.entry(code.clone()).or_default() += n;
        }
        self.no_retry_after += other.no_retry_after;
        self.not_rate_limited += other.not_rate_limited;
        self.refused_then_renewed += other.refused_then_renewed;
        self.spent_by_refusal += other.spent_by_refusal;
        self.late += other.late;
        self.reopened += other.reopened;
    }

    fn requests(&self) -> u64 {
        self.measured.values().sum()
    }

    fn measured_with(&self, status: u16) -> u64 {
        self.measured.get(&status).copied().unwrap_or(0)
    }

    fn all_with(&self, status: u16) -> u64 {
        self.all.get(&status).copied().unwrap_or(0)
    }

    /// Answers over the whole phase whose status is not in `allowed`, by status.
    fn others(&self, allowed: &[u16]) -> BTreeMap<u16, u64> {
        self.all.iter().filter(|(s, _)| !allowed.contains(s)).map(|(s, n)| (*s, *n)).collect()
    }
}

/// One phase's result.
#[derive(Debug)]
struct PhaseResult {
    phase: Phase,
    seconds: f64,
    /// A's `(requests_per_second, effective burst)` in this phase, if it has a quota.
    quota: Option<(u64, u64)>,
    a: Option<Side>,
    b: Side,
    /// From the start of the phase's load until its last answer.
    elapsed: f64,
    gateway_cpu_percent: Option<f64>,
    gateway_cpu_seconds: Option<f64>,
    unexpected: Vec<String>,
}

/// The statuses that are not errors for A in a phase.
fn a_allowed(phase: Phase) -> &'static [u16] {
    match phase {
        Phase::Quota => &[200, 429, 503],
        _ => &[200, 503],
    }
}

fn describe(statuses: &BTreeMap<u16, u64>) -> String {
    let parts: Vec<String> = statuses
        .iter()
        .map(|(s, n)| match s {
            0 => format!("{n} without an answer"),
            298 => format!("{n} unreadable token responses"),
            s => format!("{n} × HTTP {s}"),
        })
        .collect();
    parts.join(", ")
}

impl PhaseResult {
    /// Finds what should not have happened; fills `unexpected`.
    fn check(&mut self) {
        let name = self.phase.name();
        let mut found = Vec::new();
        let b_errors = self.b.others(&[200]);
        if !b_errors.is_empty() {
            found.push(format!("{name}: B had errors: {}", describe(&b_errors)));
        }
        if let Some(a) = &self.a {
            let others = a.others(a_allowed(self.phase));
            if !others.is_empty() {
                found.push(format!("{name}: A had errors: {}", describe(&others)));
            }
            if a.spent_by_refusal > 0 {
                found.push(format!(
                    "{name}: {} refresh tokens refused (429/503) were then rejected (401): the refusal spent them",
                    a.spent_by_refusal
                ));
            }
            if a.no_retry_after > 0 {
                found.push(format!("{name}: {} × 429/503 without Retry-After", a.no_retry_after));
            }
            if a.not_rate_limited > 0 {
                found.push(format!(
                    "{name}: {} × 429 whose error is not rate_limited",
                    a.not_rate_limited
                ));
            }
            if let Some((rate, burst)) = self.quota {
                // A token bucket serves at most its burst plus the rate over the time.
                let served = a.all_with(200);
                let bound = (rate as f64 * self.elapsed + burst as f64) * 1.02 + 5.0;
                if served as f64 > bound {
                    found.push(format!(
                        "{name}: A was served {served} renews in {:.2} s, over its quota of {rate}/s (burst {burst}): at most {bound:.0}",
                        self.elapsed
                    ));
                }
            }
        }
        if self.b.no_retry_after > 0 {
            found.push(format!(
                "{name}: {} × 429/503 to B without Retry-After",
                self.b.no_retry_after
            ));
        }
        self.unexpected = found;
    }

    fn json(&self, backend: &str, args: &IsolationArgs, alone_p99: Option<u64>) -> Value {
        let statuses = |m: &BTreeMap<u16, u64>| -> BTreeMap<String, u64> {
            m.iter().map(|(s, n)| (s.to_string(), *n)).collect()
        };
        let b = &self.b;
        let b_json = json!({
            "rate": args.b_rate,
            "requests": b.requests(),
            "errors": b.others(&[200]).values().sum::<u64>(),
            "late": b.late,
            "late_after_ms": ms(LATE.as_micros() as u64),
            "p50_ms": ms(b.latency.value_at_quantile(0.5)),
            "p99_ms": ms(b.latency.value_at_quantile(0.99)),
            "max_ms": ms(b.latency.max()),
            "p99_from_due_ms": ms(b.from_due.value_at_quantile(0.99)),
            "max_from_due_ms": ms(b.from_due.max()),
            "p99_vs_alone": self.b_p99_ratio(alone_p99).map(round2),
            "statuses_with_warmup": statuses(&b.all),
        });
        let a_json = self.a.as_ref().map(|a| {
            json!({
                "connections": args.a_conns,
                "requests": a.requests(),
                "served": a.measured_with(200),
                "served_per_s": (a.measured_with(200) as f64 / self.seconds).round(),
                "served_per_quota": self.served_per_quota().map(round2),
                "rate_limited_429": a.measured_with(429),
                "shed_503": a.measured_with(503),
                "other_errors": a.others(a_allowed(self.phase)).values().sum::<u64>(),
                "refused_then_renewed": a.refused_then_renewed,
                "spent_by_refusal": a.spent_by_refusal,
                "reopened": a.reopened,
                "refusal_codes": a.refusal_codes,
                "p50_ms": ms(a.latency.value_at_quantile(0.5)),
                "p99_ms": ms(a.latency.value_at_quantile(0.99)),
                "max_ms": ms(a.latency.max()),
                "statuses_with_warmup": statuses(&a.all),
            })
        });
        let all = self.everything();
        let requests = all.requests();
        json!({
            "bench": "isolation",
            "backend": backend,
            "phase": self.phase.name(),
            "seconds": round2(self.seconds),
            "warmup_seconds": round2(args.warmup.as_secs_f64()),
            "a_quota": self.quota.map(|(rate, _)| rate),
            "a_burst": self.quota.map(|(_, burst)| burst),
            "a": a_json,
            "b": b_json,
            "all": {"requests": requests, "p99_ms": ms(all.latency.value_at_quantile(0.99)),
                    "max_ms": ms(all.latency.max())},
            "gateway_cpu_pct": self.gateway_cpu_percent.map(f64::round),
            "gateway_cpu_us_per_req": self.gateway_cpu_seconds
                .filter(|_| requests > 0)
                .map(|s| (s * 1e6 / requests as f64).round()),
            "unexpected": self.unexpected,
        })
    }

    /// One line for the progress log.
    fn summary(&self, alone_p99: Option<u64>) -> String {
        let b = &self.b;
        let mut line = format!(
            "{}: B p50 {:.2} ms, p99 {:.2} ms ({} alone), max {:.2} ms, {} errors, {} late",
            self.phase.name(),
            ms(b.latency.value_at_quantile(0.5)),
            ms(b.latency.value_at_quantile(0.99)),
            self.b_p99_ratio(alone_p99).map_or_else(|| "-".to_owned(), |v| format!("{v:.2}×")),
            ms(b.latency.max()),
            b.others(&[200]).values().sum::<u64>(),
            b.late,
        );
        if let Some(a) = &self.a {
            let _ = write!(
                line,
                "; A {:.0} served/s, {} × 429, {} × 503, {} other errors, {} refused then renewed",
                a.measured_with(200) as f64 / self.seconds,
                a.measured_with(429),
                a.measured_with(503),
                a.others(a_allowed(self.phase)).values().sum::<u64>(),
                a.refused_then_renewed,
            );
        }
        line
    }

    /// A's and B's measured requests together.
    fn everything(&self) -> Side {
        let mut all = self.b.clone();
        if let Some(a) = &self.a {
            all.merge(a);
        }
        all
    }

    fn served_per_quota(&self) -> Option<f64> {
        let (rate, _) = self.quota?;
        let served = self.a.as_ref()?.measured_with(200) as f64 / self.seconds;
        Some(served / rate as f64)
    }

    fn b_p99_ratio(&self, alone_p99: Option<u64>) -> Option<f64> {
        let alone = alone_p99.filter(|&p| p > 0)?;
        Some(self.b.latency.value_at_quantile(0.99) as f64 / alone as f64)
    }
}

pub async fn run(args: &IsolationArgs) -> anyhow::Result<Outcome> {
    if args.phases.is_empty() {
        bail!("--phases names no phase");
    }
    if args.b_rate == 0 || args.b_chains == 0 || args.a_conns == 0 {
        bail!("--b-rate, --b-chains and --a-conns must be at least 1");
    }
    if args.phases.contains(&Phase::Quota) && args.a_quota == 0 {
        bail!("--a-quota must be at least 1 for the quota phase");
    }
    let dir = std::env::temp_dir().join(format!("keygate-isolation-{}", ulid::Ulid::new()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let result = measure(args, &dir).await;
    if args.keep {
        eprintln!("isolation: kept {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

async fn measure(args: &IsolationArgs, dir: &Path) -> anyhow::Result<Outcome> {
    let keygate = std::fs::canonicalize(&args.keygate).with_context(|| {
        format!("{} (build it with cargo build --release)", args.keygate.display())
    })?;
    let backend = if args.database_url.is_some() { "postgres" } else { "sqlite" };
    let gateway = start_gateway(&keygate, dir, args.database_url.as_deref(), 0, &[])?;
    let result = phases(args, &gateway.url, gateway.pid(), backend).await;
    gateway.kill();
    let results = result?;
    let alone_p99 = alone_p99(&results);
    let lines = results.iter().map(|r| r.json(backend, args, alone_p99).to_string()).collect();
    let unexpected = results.iter().flat_map(|r| r.unexpected.clone()).collect();
    Ok(Outcome { lines, table: table(&results, backend, args, alone_p99), unexpected })
}

fn alone_p99(results: &[PhaseResult]) -> Option<u64> {
    let alone = results.iter().find(|r| r.phase == Phase::Alone)?;
    Some(alone.b.latency.value_at_quantile(0.99))
}

async fn phases(
    args: &IsolationArgs,
    url: &str,
    pid: u32,
    backend: &str,
) -> anyhow::Result<Vec<PhaseResult>> {
    let http = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .context("building the HTTP client")?;
    let a =
        create_app(&http, url, "isolation-a", 0, "keygate-bench").await.context("creating A")?;
    let b =
        create_app(&http, url, "isolation-b", 0, "keygate-bench").await.context("creating B")?;
    eprintln!(
        "isolation: {backend}, gateway pid {pid} at {url}; A {} ({} chains), B {} ({}/s)",
        a.app_id, args.a_conns, b.app_id, args.b_rate
    );
    let mut quota_set = false;
    let mut results: Vec<PhaseResult> = Vec::new();
    for &phase in &args.phases {
        let quota = match phase {
            Phase::Alone => None,
            Phase::Quota => {
                let burst = set_quota(&http, &a, args.a_quota, args.a_burst).await?;
                quota_set = true;
                Some((args.a_quota, burst))
            }
            Phase::NoQuota => {
                if quota_set {
                    set_quota(&http, &a, 0, 0).await?;
                    quota_set = false;
                }
                None
            }
        };
        eprintln!("isolation: {backend}: phase {} ({:?})", phase.name(), args.duration);
        let mut result = run_phase(args, phase, quota, &a, &b, pid).await?;
        result.check();
        let alone = alone_p99(&results).or_else(|| alone_p99(std::slice::from_ref(&result)));
        eprintln!("isolation: {backend}: {}", result.summary(alone));
        for line in &result.unexpected {
            eprintln!("isolation: UNEXPECTED: {line}");
        }
        results.push(result);
        // Let the last phase's connections close and the gateway settle.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(results)
}

/// Sets A's quota through `PATCH /root/apps/{id}` and checks that the gateway kept it;
/// returns the effective burst (0 means one second's worth).
async fn set_quota(
    http: &reqwest::Client,
    app: &Api,
    rate: u64,
    burst: u64,
) -> anyhow::Result<u64> {
    let url = format!("{}/root/apps/{}", app.base, app.app_id);
    let body = json!({"requests_per_second": rate, "requests_burst": burst});
    let response = http
        .patch(&url)
        .header("Authorization", ROOT_KEY)
        .json(&body)
        .send()
        .await
        .with_context(|| format!("PATCH {url}"))?;
    let status = response.status();
    let answer: Value = response.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        bail!(
            "setting A's quota ({body}) answered {status}: {answer}. A gateway without per-app \
             quotas rejects requests_per_second: run only --phases alone,no-quota against it"
        );
    }
    let kept = (answer["requests_per_second"].as_u64(), answer["requests_burst"].as_u64());
    if kept != (Some(rate), Some(burst)) {
        bail!("A's settings after the PATCH do not show the quota {body}: {answer}");
    }
    Ok(if burst == 0 { rate } else { burst })
}

/// Subjects are numbered across the run, so every session is distinct.
static SUBJECTS: AtomicU64 = AtomicU64::new(0);

fn next_subject() -> u64 {
    SUBJECTS.fetch_add(1, Ordering::Relaxed)
}

/// Sessions opened at once: as a backend signs its users in, not all in one burst (a
/// gateway with fair admission would shed the burst).
const OPENING_AT_ONCE: usize = 8;

/// Opens `n` sessions of the client's app, [`OPENING_AT_ONCE`] at a time; a sign refused
/// with 429 or 503 (which opened nothing) is sent again after a moment.
async fn open_chains(client: &Client, n: usize, who: &str) -> anyhow::Result<Vec<Chain>> {
    let mut chains = Vec::with_capacity(n);
    let mut tasks = tokio::task::JoinSet::new();
    let at_once = Arc::new(tokio::sync::Semaphore::new(OPENING_AT_ONCE));
    for _ in 0..n {
        let (client, at_once) = (client.clone(), at_once.clone());
        tasks.spawn(async move {
            let _turn = at_once.acquire_owned().await;
            let mut tries = 0;
            loop {
                match client.sign(next_subject()).await {
                    Err(429 | 503) if tries < 50 => {
                        tries += 1;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    other => return other,
                }
            }
        });
    }
    while let Some(result) = tasks.join_next().await {
        match result.context("a sign task failed")? {
            Ok(chain) => chains.push(chain),
            Err(status) => bail!("{who}: could not open a session (HTTP {status})"),
        }
    }
    Ok(chains)
}

/// When a phase's load starts, is measured from, and ends.
#[derive(Debug, Clone, Copy)]
struct Clock {
    start: Instant,
    measure_from: Instant,
    end: Instant,
}

async fn run_phase(
    args: &IsolationArgs,
    phase: Phase,
    quota: Option<(u64, u64)>,
    a: &Api,
    b: &Api,
    pid: u32,
) -> anyhow::Result<PhaseResult> {
    let (ready_tx, ready_rx) = oneshot::channel();
    let (start_tx, start_rx) = oneshot::channel();
    let b_done = spawn_b(args, b, ready_tx, start_rx)?;
    let flood = match phase {
        Phase::Alone => None,
        Phase::Quota | Phase::NoQuota => {
            let client = Client::with_timeout(
                &a.base,
                &a.app_id,
                &a.app_key,
                args.a_conns,
                Some(REQUEST_TIMEOUT),
            )?;
            let chains = open_chains(&client, args.a_conns, "A").await?;
            Some((client, chains))
        }
    };
    ready_rx.await.context("B's thread stopped before it was ready")??;
    let start = Instant::now() + Duration::from_millis(20);
    let measure_from = start + args.warmup;
    let clock = Clock { start, measure_from, end: measure_from + args.duration };
    if start_tx.send(clock).is_err() {
        bail!("B's thread stopped before the start");
    }
    let mut workers = tokio::task::JoinSet::new();
    if let Some((client, chains)) = flood {
        for chain in chains {
            workers.spawn(flood_chain(client.clone(), chain, clock));
        }
    }
    tokio::time::sleep_until(clock.measure_from.into()).await;
    let cpu = CpuMeter::start(pid);
    tokio::time::sleep_until(clock.end.into()).await;
    let gateway_cpu_percent = cpu.as_ref().and_then(CpuMeter::percent);
    let gateway_cpu_seconds = cpu.as_ref().and_then(CpuMeter::seconds);
    let mut a_side = (phase != Phase::Alone).then(Side::default);
    while let Some(side) = workers.join_next().await {
        let side = side.context("an A task failed")?;
        if let Some(a) = a_side.as_mut() {
            a.merge(&side);
        }
    }
    let b_side = b_done.await.context("B's thread stopped without a result")??;
    Ok(PhaseResult {
        phase,
        seconds: args.duration.as_secs_f64(),
        quota,
        a: a_side,
        b: b_side,
        elapsed: clock.start.elapsed().as_secs_f64(),
        gateway_cpu_percent,
        gateway_cpu_seconds,
        unexpected: Vec::new(),
    })
}

/// One of A's chains, renewed back to back from `start` to `end`. A refused renew (429,
/// 503) is sent again at once with the same refresh token; any other failure opens a new
/// session, since the old one's token may be spent.
async fn flood_chain(client: Client, chain: Chain, clock: Clock) -> Side {
    let mut side = Side::default();
    let mut chain = Some(chain);
    // Whether the chain's current refresh token has been refused before.
    let mut refused = false;
    tokio::time::sleep_until(clock.start.into()).await;
    loop {
        let sent = Instant::now();
        if sent >= clock.end {
            break;
        }
        let Some(current) = &chain else {
            // Not counted as a renew; under the quota the sign may be refused too.
            match client.sign(next_subject()).await {
                Ok(fresh) => {
                    chain = Some(fresh);
                    side.reopened += 1;
                    refused = false;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
            continue;
        };
        let renewal = client.renew_answer(current).await;
        let micros = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
        side.answer(&renewal, sent >= clock.measure_from, micros);
        match renewal.status {
            200 => {
                side.refused_then_renewed += u64::from(refused);
                refused = false;
                chain = renewal.next;
            }
            // Nothing was spent: the same token goes again, at once.
            429 | 503 => refused = true,
            status => {
                side.spent_by_refusal += u64::from(status == 401 && refused);
                chain = None;
                if status == 0 {
                    // No answer: don't spin on a dead server.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }
    side
}

/// Starts B on a thread and runtime of its own: it opens its chains, says it is ready,
/// waits for the phase's clock, renews open loop, and sends back what it saw.
fn spawn_b(
    args: &IsolationArgs,
    b: &Api,
    ready: oneshot::Sender<anyhow::Result<()>>,
    start: oneshot::Receiver<Clock>,
) -> anyhow::Result<oneshot::Receiver<anyhow::Result<Side>>> {
    let (done_tx, done_rx) = oneshot::channel();
    let (base, app, key) = (b.base.clone(), b.app_id.clone(), b.app_key.clone());
    let (rate, chains) = (args.b_rate, args.b_chains);
    std::thread::Builder::new()
        .name("isolation-b".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
            let result = match runtime {
                Ok(runtime) => runtime.block_on(async move {
                    let client =
                        Client::with_timeout(&base, &app, &key, chains, Some(REQUEST_TIMEOUT))?;
                    let opened = open_chains(&client, chains, "B").await;
                    let pool = match opened {
                        Ok(pool) => {
                            let _ = ready.send(Ok(()));
                            pool
                        }
                        Err(e) => {
                            let _ = ready.send(Err(anyhow::anyhow!("{e:#}")));
                            return Err(e);
                        }
                    };
                    let clock = start.await.context("the phase was not started")?;
                    open_loop(client, pool, rate, clock).await
                }),
                Err(e) => Err(anyhow::Error::new(e).context("starting B's runtime")),
            };
            let _ = done_tx.send(result);
        })
        .context("starting B's thread")?;
    Ok(done_rx)
}

/// B's renews at `rate` a second from `start` to `end`, whatever the gateway does. Each
/// request takes a free chain; its latency counts from when it is actually sent (the
/// wait for a chain, and any delay of this thread, show as lateness: `late`, `from_due`).
async fn open_loop(
    client: Client,
    pool: Vec<Chain>,
    rate: u64,
    clock: Clock,
) -> anyhow::Result<Side> {
    let slots = Arc::new(Semaphore::new(pool.len()));
    let pool = Arc::new(Mutex::new(pool));
    let side = Arc::new(Mutex::new(Side::default()));
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0u32.. {
        let due = clock.start + interval * i;
        if due >= clock.end {
            break;
        }
        tokio::time::sleep_until(due.into()).await;
        let (client, pool, slots, side) =
            (client.clone(), pool.clone(), slots.clone(), side.clone());
        tasks.spawn(async move {
            let Ok(permit) = slots.acquire_owned().await else { return };
            let taken = pool.lock().unwrap_or_else(|p| p.into_inner()).pop();
            let Some(chain) = taken else { return };
            let sent = Instant::now();
            let renewal = client.renew_answer(&chain).await;
            let micros = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
            let from_due = u64::try_from(due.elapsed().as_micros()).unwrap_or(u64::MAX);
            let next = match renewal.status {
                200 => renewal.next.clone(),
                429 | 503 => Some(chain),
                // The token may be spent: a new session takes the chain's place.
                _ => client.sign(next_subject()).await.ok(),
            };
            {
                let mut side = side.lock().unwrap_or_else(|p| p.into_inner());
                let measured = due >= clock.measure_from;
                side.answer(&renewal, measured, micros);
                if measured {
                    let _ = side.from_due.record(from_due.max(1));
                    side.late += u64::from(sent.duration_since(due) >= LATE);
                }
            }
            match next {
                Some(chain) => pool.lock().unwrap_or_else(|p| p.into_inner()).push(chain),
                // One chain fewer: its slot goes too.
                None => permit.forget(),
            }
        });
        // Reap finished tasks as we go so the set stays small.
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    let side = side.lock().unwrap_or_else(|p| p.into_inner()).clone();
    Ok(side)
}

fn ms(micros: u64) -> f64 {
    (micros as f64 / 10.0).round() / 100.0
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

/// The phases as one Markdown table, with what was unexpected below it.
fn table(
    results: &[PhaseResult],
    backend: &str,
    args: &IsolationArgs,
    alone_p99: Option<u64>,
) -> String {
    let mut out = String::new();
    let burst =
        if args.a_burst == 0 { "one second's worth".to_owned() } else { args.a_burst.to_string() };
    let _ = writeln!(
        out,
        "isolation ({backend}): B renews open loop at {}/s ({} chains); A renews closed loop on {} chains, \
         quota {}/s (burst {burst}) in the quota phase; {:?} measured per phase after {:?} of warm-up",
        args.b_rate, args.b_chains, args.a_conns, args.a_quota, args.duration, args.warmup
    );
    let head = [
        "phase",
        "A served/s",
        "A 429",
        "served ÷ quota",
        "A 503",
        "A other errors",
        "refused → renewed, same token",
        "B requests",
        "B errors",
        "B late",
        "B p50 ms",
        "B p99 ms",
        "B max ms",
        "B p99 ÷ alone",
        "all p99 ms",
        "all max ms",
        "gateway CPU %",
    ];
    let _ = writeln!(out, "| {} |", head.join(" | "));
    let _ = writeln!(out, "|{}", "---|".repeat(head.len()));
    for r in results {
        let dash = || "-".to_owned();
        let a = r.a.as_ref();
        let all = r.everything();
        let b = &r.b;
        let row = [
            r.phase.name().to_owned(),
            a.map_or_else(dash, |a| format!("{:.0}", a.measured_with(200) as f64 / r.seconds)),
            a.map_or_else(dash, |a| a.measured_with(429).to_string()),
            r.served_per_quota().map_or_else(dash, |v| format!("{v:.2}")),
            a.map_or_else(dash, |a| a.measured_with(503).to_string()),
            a.map_or_else(dash, |a| a.others(a_allowed(r.phase)).values().sum::<u64>().to_string()),
            a.map_or_else(dash, |a| a.refused_then_renewed.to_string()),
            b.requests().to_string(),
            b.others(&[200]).values().sum::<u64>().to_string(),
            b.late.to_string(),
            format!("{:.2}", ms(b.latency.value_at_quantile(0.5))),
            format!("{:.2}", ms(b.latency.value_at_quantile(0.99))),
            format!("{:.2}", ms(b.latency.max())),
            r.b_p99_ratio(alone_p99).map_or_else(dash, |v| format!("{v:.2}")),
            format!("{:.2}", ms(all.latency.value_at_quantile(0.99))),
            format!("{:.2}", ms(all.latency.max())),
            r.gateway_cpu_percent.map_or_else(dash, |v| format!("{v:.0}")),
        ];
        let _ = writeln!(out, "| {} |", row.join(" | "));
    }
    let _ = writeln!(
        out,
        "B's latency is from each request's actual send; late: sent {} ms or more after its \
         scheduled time (the JSON lines have B's p99 from the scheduled time). A's errors, \
         refusals and \"refused → renewed\" count the whole phase, warm-up included; the rest \
         counts the measured requests.",
        ms(LATE.as_micros() as u64)
    );
    for r in results {
        for line in &r.unexpected {
            let _ = writeln!(out, "UNEXPECTED: {line}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn renewal(status: u16, retry_after: bool, error: Option<&str>) -> Renewal {
        Renewal { status, retry_after, error: error.map(str::to_owned), next: None }
    }

    fn result(phase: Phase, quota: Option<(u64, u64)>, a: Side, b: Side) -> PhaseResult {
        PhaseResult {
            phase,
            seconds: 10.0,
            quota,
            a: Some(a),
            b,
            elapsed: 11.0,
            gateway_cpu_percent: None,
            gateway_cpu_seconds: None,
            unexpected: Vec::new(),
        }
    }

    #[test]
    fn refusals_are_allowed_only_where_they_belong() {
        let mut a = Side::default();
        a.answer(&renewal(200, false, None), true, 1_000);
        a.answer(&renewal(429, true, Some("rate_limited")), true, 100);
        a.answer(&renewal(503, true, Some("overloaded")), true, 100);
        let mut quota = result(Phase::Quota, Some((2000, 2000)), a.clone(), Side::default());
        quota.check();
        assert!(quota.unexpected.is_empty(), "{:?}", quota.unexpected);
        let mut no_quota = result(Phase::NoQuota, None, a, Side::default());
        no_quota.check();
        assert_eq!(
            no_quota.unexpected.len(),
            1,
            "a 429 without a quota: {:?}",
            no_quota.unexpected
        );
    }

    #[test]
    fn a_401_a_bare_429_b_errors_and_an_exceeded_quota_are_unexpected() {
        let mut a = Side::default();
        a.answer(&renewal(429, false, Some("overloaded")), true, 100);
        a.answer(&renewal(401, false, Some("invalid_grant")), true, 100);
        a.spent_by_refusal = 1;
        for _ in 0..100 {
            a.answer(&renewal(200, false, None), true, 100);
        }
        let mut b = Side::default();
        b.answer(&renewal(503, true, Some("overloaded")), true, 100);
        let mut r = result(Phase::Quota, Some((5, 5)), a, b);
        r.check();
        let text = r.unexpected.join("\n");
        for expected in [
            "B had errors",
            "A had errors",
            "spent them",
            "without Retry-After",
            "not rate_limited",
            "over its quota",
        ] {
            assert!(text.contains(expected), "{expected}: {text}");
        }
    }

    #[test]
    fn the_json_line_and_table_carry_the_ratios() {
        let mut a = Side::default();
        for _ in 0..20_000 {
            a.answer(&renewal(200, false, None), true, 1_000);
        }
        a.answer(&renewal(429, true, Some("rate_limited")), true, 100);
        let mut b = Side::default();
        b.answer(&renewal(200, false, None), true, 4_000);
        let mut r = result(Phase::Quota, Some((2000, 2000)), a, b);
        r.check();
        let args = IsolationArgs {
            keygate: "k".into(),
            database_url: None,
            duration: Duration::from_secs(10),
            warmup: Duration::from_secs(1),
            b_rate: 200,
            b_chains: 32,
            a_conns: 64,
            a_quota: 2000,
            a_burst: 0,
            phases: vec![Phase::Quota],
            keep: false,
        };
        let line = r.json("sqlite", &args, Some(2_000));
        assert_eq!(line["a"]["served_per_s"], 2000.0);
        assert_eq!(line["a"]["served_per_quota"], 1.0);
        assert_eq!(line["b"]["p99_vs_alone"], 2.0);
        assert_eq!(line["a"]["rate_limited_429"], 1);
        assert!(table(&[r], "sqlite", &args, Some(2_000)).contains("| quota | 2000 | 1 | 1.00 |"));
    }
}
