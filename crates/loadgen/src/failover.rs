//! `keygate-bench failover`: fail the Postgres primary over, again and again, under renew
//! load on two gateways, and check that no refresh token was lost, revived or doubled.
//!
//! The run starts a primary and a synchronous standby with `bench/pgpair.sh start`, runs
//! `keygate migrate`, then starts the gateways (the release `keygate serve`, default two),
//! each on its own port, all on the pair's multi-host URL
//! (`...?target_session_attrs=read-write`) with one master key and one root key. It creates
//! an app with `reuse_grace` (default 30 s), opens sessions and renews them from several
//! connections split across the gateways, each connection renewing its sessions
//! round-robin. On a 503 (which must carry `Retry-After`) or a lost answer the connection
//! waits a little and sends the same parent again, with the same user agent: a rotation
//! that committed but whose answer was lost in the failover is then answered, within the
//! grace, with the same child. The journal keeps every renew sent (its parent), every
//! answer (time, gateway, status) and every 200's child.
//!
//! After a warm-up, `bench/pgpair.sh failover` stops the primary at once, promotes the
//! standby and rebuilds the old primary as its synchronous standby (commits wait while it
//! is rebuilt: that is part of the window); the load goes on for a while, and the next
//! failover comes, alternating the primary. After the last one the load stops (a chain
//! whose renew is being retried is first seen through), the run waits until the grace has
//! passed since the last 200, and the journal is reconciled:
//!
//! - nothing lost: every acknowledged token was the parent of an acknowledged renew, or is
//!   the head of its chain and renews now (200);
//! - nothing revived: every consumed parent is then refused (401), newest first, after its
//!   chain's head renewed; the first one is reuse, which revokes the session, so the head's
//!   new child is refused too;
//! - nothing doubled: no parent jid got two different children;
//! - during the load, no 401 (a token lost or a session revoked by our own failure), no
//!   answer other than 200 and 503, and every 503 with `Retry-After`.
//!
//! The script can be another with the same moves: `bench/patroni.sh` runs a Patroni cluster
//! (etcd, two nodes in `synchronous_mode`, HAProxy), whose `failover` kills the leader's
//! Patroni and PostgreSQL with SIGKILL and waits for Patroni to promote the replica and the
//! old node to rejoin, and whose `switchover` runs `patronictl switchover`. With
//! `--switchovers N` the run takes failovers and switchovers in turn, and reports the
//! windows of each kind apart (`just failover-patroni`).
//!
//! For each failover it reports pgpair's `writable_after` and the window during which
//! renews did not succeed, overall and per gateway: from the first answer other than 200
//! (or the start of the first stall, more than 0.5 s without a 200) after the failover
//! command started, to the first 200 after the last such answer and the last stall; the
//! 503s in it, and the longest time without any 200. Exit 1 on any violation, or when
//! renews did not flow again before the next failover; the work directory (gateway logs,
//! pgpair logs) is then kept.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::harness::{self, Api, Checks, Gateway, JidTree, ROOT_KEY};

const USERAGENT: &str = "keygate-failover";

#[derive(Debug, Clone, clap::Args)]
#[command(args_override_self = true)]
pub struct FailoverArgs {
    /// The gateway binary (a release build).
    #[arg(long, default_value = "target/release/keygate")]
    keygate: PathBuf,
    /// The replicated Postgres script (start, failover, stop; and switchover with
    /// --switchovers): bench/pgpair.sh, or bench/patroni.sh for a Patroni cluster.
    #[arg(long, default_value = "bench/pgpair.sh")]
    pgpair: PathBuf,
    /// How many failovers.
    #[arg(long, default_value_t = 10)]
    failovers: u32,
    /// How many planned switchovers (the script's `switchover` move), taken in turn with
    /// the failovers: failover, switchover, failover, ...
    #[arg(long, default_value_t = 0)]
    switchovers: u32,
    /// Sessions opened, and renewed all along.
    #[arg(long, default_value_t = 128)]
    sessions: usize,
    /// Concurrent connections sending renews, split across the gateways.
    #[arg(long, short = 'c', default_value_t = 32)]
    connections: usize,
    /// Gateway processes on the one database.
    #[arg(long, default_value_t = 2)]
    gateways: usize,
    /// The app's `reuse_grace`, in seconds. With 0, a renew answered 503 whose rotation had
    /// committed would lose its session when retried: the run checks that none does.
    #[arg(long, default_value_t = 0)]
    grace: u64,
    /// How each failover stops the primary: `immediate` (as a crash would) or `fast` (as a
    /// planned switchover does; it cuts short the commits waiting for the standby).
    #[arg(long, value_enum, default_value_t = StopMode::Immediate)]
    stop_mode: StopMode,
    /// Steady load before the first failover.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "3s")]
    warmup: Duration,
    /// Load after each failover command returned, before the next one (or the end).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "4s")]
    settle: Duration,
    /// Up to this much more, at random, before each failover, so that they land at
    /// different moments of the requests.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "500ms")]
    jitter: Duration,
    /// The pause before sending a parent again after a 503 or a lost answer.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "100ms")]
    retry_delay: Duration,
    /// The gateways' `database_in_doubt_timeout_ms`: how long a write whose answer was lost
    /// keeps trying to learn its outcome. It must outlast the time the cluster takes to
    /// elect a new leader (Patroni: about its ttl); by default the gateway's own default.
    #[arg(long, value_parser = humantime::parse_duration)]
    in_doubt_timeout: Option<Duration>,
    /// A request without an answer after this long counts as lost (and is sent again).
    /// Above the gateway's longest hold (busy timeout plus in-doubt timeout: 10 s).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "15s")]
    request_timeout: Duration,
    /// Seed of the random choices (the jitter); by default a random one, printed.
    #[arg(long)]
    seed: Option<u64>,
    /// Where the run keeps the pair, the logs and the gateways' data; kept on failure.
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Give the gateways the primary's single-host URL rather than the multi-host one
    /// (to try the harness on gateways that cannot follow a failover; use --failovers 0).
    #[arg(long)]
    single_host: bool,
}

/// How a failover stops the primary (`PAIR_STOP_MODE` of bench/pgpair.sh).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StopMode {
    Immediate,
    Fast,
}

impl StopMode {
    fn as_str(self) -> &'static str {
        match self {
            Self::Immediate => "immediate",
            Self::Fast => "fast",
        }
    }
}

/// One renew answer of the journal.
#[derive(Debug, Clone)]
struct Sent {
    /// The chain (session) it belongs to, and the gateway it went to.
    chain: usize,
    gateway: usize,
    parent: Arc<str>,
    answered: Duration,
    /// 0: no answer (connection error or timeout).
    status: u16,
    retry_after: bool,
    /// The refresh token of a 200.
    child: Option<Arc<str>>,
    latency: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChainState {
    /// Its latest token was answered with a 200 and not sent since.
    Live,
    /// A renew answered 401 during the load.
    Dead,
    /// The load stopped while its latest token's renew had no definite answer.
    Unresolved,
}

#[derive(Debug, Clone)]
struct Chain {
    index: usize,
    gateway: usize,
    session_id: String,
    latest: Arc<str>,
    state: ChainState,
}

type Journal = Arc<Mutex<Vec<Sent>>>;

fn lock(journal: &Journal) -> std::sync::MutexGuard<'_, Vec<Sent>> {
    journal.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A time without any 200 longer than this is a stall, even without an error: at the
/// load's rate (thousands of renews a second) the gaps between 200s are well under 10 ms.
const STALL: Duration = Duration::from_millis(500);

/// What happened around one failover.
#[derive(Debug, Clone, Default, PartialEq)]
struct Window {
    /// Offsets from the failover command's start: the first answer other than 200, and the
    /// first 200 after the last such answer (`None`: renews did not flow again).
    first_failure: Option<Duration>,
    recovered: Option<Duration>,
    /// The first and the last stall (more than [`STALL`] without a 200): from the last 200
    /// before it to the first 200 after it; `trailing`: the period ended in one.
    stalls: Option<(Duration, Duration)>,
    trailing_stall: bool,
    /// Answers other than 200, of which 503s and lost answers.
    failures: u64,
    unavailable: u64,
    lost: u64,
    ok: u64,
    /// The longest time without any 200, from the failover command's start on.
    longest_gap: Duration,
}

impl Window {
    /// When renews stopped succeeding: the first failure or the start of the first stall.
    fn start(&self) -> Option<Duration> {
        match (self.first_failure, self.stalls) {
            (Some(f), Some((s, _))) => Some(f.min(s)),
            (f, s) => f.or(s.map(|s| s.0)),
        }
    }

    /// When they flowed again: after the last failure and the last stall.
    fn end(&self) -> Option<Duration> {
        let failed_unrecovered = self.first_failure.is_some() && self.recovered.is_none();
        if failed_unrecovered || self.trailing_stall {
            return None;
        }
        match (self.recovered, self.stalls) {
            (Some(r), Some((_, e))) => Some(r.max(e)),
            (r, s) => r.or(s.map(|s| s.1)),
        }
    }

    /// How long renews did not succeed: 0 when they always did, `None` when they did not
    /// flow again.
    fn span(&self) -> Option<Duration> {
        match self.start() {
            None if !self.trailing_stall => Some(Duration::ZERO),
            None => None,
            Some(start) => self.end().map(|end| end.saturating_sub(start)),
        }
    }
}

/// The window of the answers `(answered, status)` (sorted by time) in `from..until`.
fn window(answers: &[(Duration, u16)], from: Duration, until: Duration) -> Window {
    let mut w = Window::default();
    let mut last_ok = from;
    let mut recovering = false;
    for &(at, status) in answers.iter().filter(|(at, _)| *at >= from && *at < until) {
        if status == 200 {
            w.ok += 1;
            let gap = at - last_ok;
            w.longest_gap = w.longest_gap.max(gap);
            if gap > STALL {
                let first = w.stalls.map_or(last_ok - from, |s| s.0);
                w.stalls = Some((first, at - from));
            }
            last_ok = at;
            if recovering {
                w.recovered = Some(at - from);
                recovering = false;
            }
        } else {
            w.failures += 1;
            match status {
                503 => w.unavailable += 1,
                0 => w.lost += 1,
                _ => {}
            }
            w.first_failure.get_or_insert(at - from);
            w.recovered = None;
            recovering = true;
        }
    }
    let tail = until.saturating_sub(last_ok);
    w.longest_gap = w.longest_gap.max(tail);
    w.trailing_stall = tail > STALL;
    w
}

/// Acknowledged tokens (jids) that neither were the parent of an acknowledged renew nor
/// renewed at the end as the head of their chain.
fn lost(
    acknowledged: impl IntoIterator<Item = String>,
    renewed_parents: &HashSet<String>,
    heads_renewed: &HashSet<String>,
) -> Vec<String> {
    let mut seen = HashSet::new();
    acknowledged
        .into_iter()
        .filter(|j| seen.insert(j.clone()))
        .filter(|j| !renewed_parents.contains(j) && !heads_renewed.contains(j))
        .collect()
}

/// The load-time rules: only 200 and 503, every 503 with `Retry-After`, every 200 with
/// tokens. One line per kind of breach, with its count and the first time it happened.
fn load_breaches(journal: &[Sent]) -> Vec<String> {
    let mut kinds: Vec<(String, u64, Duration)> = Vec::new();
    let mut note = |kind: String, at: Duration| match kinds.iter_mut().find(|k| k.0 == kind) {
        Some(k) => k.1 += 1,
        None => kinds.push((kind, 1, at)),
    };
    for s in journal {
        let gw = s.gateway + 1;
        match s.status {
            0 => {}
            200 if s.child.is_none() => {
                note(format!("gateway-{gw}: a 200 without tokens"), s.answered)
            }
            200 => {}
            503 if !s.retry_after => {
                note(format!("gateway-{gw}: a 503 without Retry-After"), s.answered)
            }
            503 => {}
            401 => note(
                format!("gateway-{gw}: a 401 during the load (a token lost or a session revoked)"),
                s.answered,
            ),
            other => note(format!("gateway-{gw}: a {other} during the load"), s.answered),
        }
    }
    kinds
        .into_iter()
        .map(|(kind, n, at)| format!("{kind}: {n} times, first at {:.3} s", at.as_secs_f64()))
        .collect()
}

/// The lines of a gateway's log, counted by message (the timestamp left out, and the
/// message cut at 160 characters), most frequent first.
fn log_digest(path: &Path) -> Vec<(u64, String)> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut counts: HashMap<String, u64> = HashMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        // `2026-12-03T17:28:54.328431Z ERROR target: message`: drop the timestamp.
        let message = match line.split_once(' ') {
            Some((stamp, rest)) if stamp.contains('T') && stamp.ends_with('Z') => rest,
            _ => line,
        };
        let message: String = mask_ids(message).chars().take(160).collect();
        *counts.entry(message).or_default() += 1;
    }
    let mut digest: Vec<(u64, String)> = counts.into_iter().map(|(m, n)| (n, m)).collect();
    digest.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    digest
}

/// The gateways' `keygate_db_in_doubt_writes_total`, summed: `rotate committed 3, …`, the
/// samples that are not 0, or `none`.
async fn in_doubt_summary(http: &reqwest::Client, apis: &[Api]) -> String {
    let mut totals: Vec<(String, f64)> = Vec::new();
    for api in apis {
        let text = match http.get(format!("{}/metrics", api.base)).send().await {
            Ok(response) => response.text().await.unwrap_or_default(),
            Err(e) => return format!("unknown (/metrics of {}: {e})", api.base),
        };
        for (labels, value) in in_doubt_samples(&text) {
            match totals.iter_mut().find(|(l, _)| *l == labels) {
                Some((_, total)) => *total += value,
                None => totals.push((labels, value)),
            }
        }
    }
    let shown: Vec<String> =
        totals.iter().filter(|(_, v)| *v > 0.0).map(|(l, v)| format!("{l} {v}")).collect();
    if shown.is_empty() {
        "none".to_owned()
    } else {
        shown.join(", ")
    }
}

/// `("rotate committed", 3.0)` for each sample of `keygate_db_in_doubt_writes_total`.
fn in_doubt_samples(metrics: &str) -> Vec<(String, f64)> {
    let label = |labels: &str, name: &str| {
        let start = labels.find(&format!("{name}=\""))? + name.len() + 2;
        labels[start..].split('"').next().map(str::to_owned)
    };
    metrics
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("keygate_db_in_doubt_writes_total{")?;
            let (labels, value) = rest.split_once("} ")?;
            let name = format!("{} {}", label(labels, "write")?, label(labels, "outcome")?);
            Some((name, value.trim().parse().ok()?))
        })
        .collect()
}

/// `key=ID` with ID a ULID (app, session, request ids) becomes `key=*`, so that the
/// digest counts one message for every session.
fn mask_ids(message: &str) -> String {
    let ulid =
        |v: &str| v.len() == 26 && v.bytes().all(|b| b.is_ascii_digit() || b.is_ascii_uppercase());
    message
        .split(' ')
        .map(|word| match word.split_once('=') {
            Some((key, value)) if ulid(value) => format!("{key}=*"),
            _ => word.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The nearest-rank percentile `p` (0..=1) of `values`.
fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// `key=value` out of pgpair's `primary=b writable_after=0.26`.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace().find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

/// The URL of the first host of a multi-host URL, without `target_session_attrs`.
fn first_host(url: &str) -> anyhow::Result<String> {
    let (scheme_user, rest) = url.split_once('@').context("no @ in the pair's URL")?;
    let (hosts, path) = rest.split_once('/').context("no database in the pair's URL")?;
    let host = hosts.split(',').next().unwrap_or(hosts);
    let db = path.split('?').next().unwrap_or(path);
    Ok(format!("{scheme_user}@{host}/{db}"))
}

/// How to run the moves of `bench/pgpair.sh` on one pair.
#[derive(Debug)]
struct Moves {
    script: PathBuf,
    /// How the primary is stopped (`PAIR_STOP_MODE`).
    stop_mode: StopMode,
    /// The pair's directory (removed by `stop`).
    dir: PathBuf,
    /// Where the scripts' stderr goes.
    logs: PathBuf,
}

impl Moves {
    /// `bash pgpair.sh MOVE DIR`: its stdout; its stderr goes to `pgpair-NAME.log`.
    fn command(&self, args: &[&str], name: &str) -> anyhow::Result<String> {
        let log_path = self.logs.join(format!("pgpair-{name}.log"));
        let log = File::create(&log_path)?;
        let out = Command::new("bash")
            .env("PAIR_STOP_MODE", self.stop_mode.as_str())
            .arg(&self.script)
            .args(args)
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stderr(log)
            .output()
            .with_context(|| format!("running bash {}", self.script.display()))?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            let err = std::fs::read_to_string(&log_path).unwrap_or_default();
            bail!(
                "bash {} {} failed ({}): {stdout}{err}",
                self.script.display(),
                args.join(" "),
                out.status
            );
        }
        Ok(stdout)
    }
}

/// The replicated pair, stopped (and removed) when dropped, on every path; the servers'
/// logs are copied out first unless the run passed.
#[derive(Debug)]
struct Pair {
    moves: Arc<Moves>,
    keep_logs: bool,
}

impl Pair {
    /// Starts it: the pair and its multi-host URL.
    fn start(
        script: &Path,
        dir: &Path,
        logs: &Path,
        stop_mode: StopMode,
    ) -> anyhow::Result<(Pair, String)> {
        let moves = Moves {
            script: script.to_owned(),
            stop_mode,
            dir: dir.to_owned(),
            logs: logs.to_owned(),
        };
        let pair = Pair { moves: Arc::new(moves), keep_logs: true };
        let out = pair.moves.command(&["start"], "start")?;
        let url = out.lines().last().unwrap_or_default().trim().to_owned();
        if !url.starts_with("postgres://") {
            bail!("bench/pgpair.sh start printed no URL: {out}");
        }
        Ok((pair, url))
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        let moves = &self.moves;
        if self.keep_logs {
            if let Ok(entries) = std::fs::read_dir(&moves.dir) {
                for entry in entries.flatten() {
                    let name = entry.file_name();
                    if name.to_string_lossy().ends_with(".log") {
                        let _ = std::fs::copy(entry.path(), moves.logs.join(name));
                    }
                }
            }
        }
        if let Err(e) = moves.command(&["stop"], "stop") {
            eprintln!("failover: could not stop the pair in {}: {e:#}", moves.dir.display());
        }
    }
}

/// The gateways, killed when dropped.
#[derive(Debug, Default)]
struct Fleet(Vec<Gateway>);

impl Drop for Fleet {
    fn drop(&mut self) {
        for gateway in self.0.drain(..) {
            gateway.kill();
        }
    }
}

pub async fn run(args: &FailoverArgs) -> anyhow::Result<bool> {
    tokio::select! {
        passed = run_inner(args) => passed,
        _ = tokio::signal::ctrl_c() => {
            eprintln!("failover: interrupted; the gateways and the pair were stopped");
            Ok(false)
        }
    }
}

async fn run_inner(args: &FailoverArgs) -> anyhow::Result<bool> {
    for (path, what) in [(&args.keygate, "the gateway binary"), (&args.pgpair, "bench/pgpair.sh")] {
        if !path.is_file() {
            bail!("{} is not a file ({what})", path.display());
        }
    }
    if args.sessions == 0 || args.connections == 0 || args.gateways == 0 {
        bail!("need --sessions, --connections and --gateways >= 1");
    }
    let keygate = std::fs::canonicalize(&args.keygate)?;
    let script = std::fs::canonicalize(&args.pgpair)?;
    let seed = args.seed.unwrap_or_else(|| rand::thread_rng().gen());
    let mut rng = StdRng::seed_from_u64(seed);
    let work = match &args.work_dir {
        Some(dir) => dir.clone(),
        None => std::env::temp_dir().join(format!("keygate-failover-{}", ulid::Ulid::new())),
    };
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let work = std::fs::canonicalize(&work)?;
    println!(
        "failover: {} failovers (primary stopped in {} mode), {} switchovers, {} gateways (in-doubt timeout {}), {} sessions, {} connections, reuse_grace {} s, warm-up {:?}, settle {:?}, seed {seed}, work dir {}",
        args.failovers,
        args.stop_mode.as_str(),
        args.switchovers,
        args.gateways,
        args.in_doubt_timeout.map_or("the gateway's default".to_owned(), |d| format!("{d:?}")),
        args.sessions,
        args.connections,
        args.grace,
        args.warmup,
        args.settle,
        work.display()
    );
    let outcome = drive_run(args, &keygate, &script, &work, &mut rng).await;
    let passed = match outcome {
        Ok(passed) => passed,
        Err(e) => {
            println!("failover: the run could not go on: {e:#}");
            false
        }
    };
    if passed && args.work_dir.is_none() {
        let _ = std::fs::remove_dir_all(&work);
    } else if !passed {
        println!("failover: kept {} (gateway and pgpair logs; seed {seed})", work.display());
    }
    Ok(passed)
}

/// Runs `keygate migrate` with the gateways' environment.
fn migrate(keygate: &Path, work: &Path, env: &[(&str, &str)]) -> anyhow::Result<()> {
    let log = work.join("migrate.log");
    let status = Command::new(keygate)
        .arg("migrate")
        .current_dir(work)
        .env_remove("KEYGATE_CONFIG")
        .env_remove("KEYGATE_MASTER_KEY_FILE")
        .env("KEYGATE_DATA_DIR", work.join("migrate-data"))
        .env("KEYGATE_LOG", "warn")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(File::create(&log)?)
        .stderr(File::create(work.join("migrate.err"))?)
        .status()?;
    if !status.success() {
        let err = std::fs::read_to_string(work.join("migrate.err")).unwrap_or_default();
        bail!("keygate migrate failed ({status}): {err}");
    }
    Ok(())
}

/// A master key from `keygate master-key generate`, for every gateway (never printed).
fn master_key(keygate: &Path) -> anyhow::Result<String> {
    let out = Command::new(keygate).args(["master-key", "generate"]).output()?;
    if !out.status.success() {
        bail!("keygate master-key generate failed ({})", out.status);
    }
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

/// What one move of the script did: a failover or a planned switchover.
#[derive(Debug, Clone)]
struct Failover {
    kind: &'static str,
    started: Duration,
    took: Duration,
    primary: String,
    writable_after: Option<f64>,
}

/// The moves of a run in order: failovers and switchovers taken in turn, the rest of the
/// more numerous kind at the end.
fn schedule(failovers: u32, switchovers: u32) -> Vec<&'static str> {
    let mut moves = Vec::new();
    for i in 0..failovers.max(switchovers) {
        if i < failovers {
            moves.push("failover");
        }
        if i < switchovers {
            moves.push("switchover");
        }
    }
    moves
}

async fn drive_run(
    args: &FailoverArgs,
    keygate: &Path,
    script: &Path,
    work: &Path,
    rng: &mut StdRng,
) -> anyhow::Result<bool> {
    let (mut pair, multi_host) = Pair::start(script, &work.join("pair"), work, args.stop_mode)?;
    let url = if args.single_host { first_host(&multi_host)? } else { multi_host };
    println!("failover: pair started; the gateways use {url}");
    let master = master_key(keygate)?;
    let in_doubt_ms = args.in_doubt_timeout.map(|d| d.as_millis().to_string());
    let mut env = vec![("KEYGATE_MASTER_KEY", master.as_str()), ("KEYGATE_ROOT_KEY", ROOT_KEY)];
    if let Some(ms) = &in_doubt_ms {
        env.push(("KEYGATE_DATABASE_IN_DOUBT_TIMEOUT_MS", ms.as_str()));
    }
    let db_env = [env[0], env[1], ("KEYGATE_DATABASE_URL", url.as_str())];
    migrate(keygate, work, &db_env)?;
    let mut fleet = Fleet::default();
    for n in 0..args.gateways {
        let dir = work.join(format!("gateway-{}", n + 1));
        std::fs::create_dir_all(dir.join("data"))?;
        fleet.0.push(harness::start_gateway(keygate, &dir, Some(&url), 1, &env)?);
    }
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.connections * 2)
        .tcp_nodelay(true)
        .timeout(args.request_timeout)
        .build()?;
    let first = &fleet.0[0].url;
    let app = harness::create_app(&http, first, "failover", args.grace, USERAGENT).await?;
    let apis: Vec<Api> =
        fleet.0.iter().map(|g| Api { base: g.url.clone(), ..app.clone() }).collect();

    // Sessions, dealt out to the connections; connection k goes to gateway k % gateways.
    let mut per_connection: Vec<Vec<Chain>> = (0..args.connections).map(|_| Vec::new()).collect();
    let mut signed = Vec::new();
    for n in 0..args.sessions {
        let k = n % args.connections;
        let gateway = k % args.gateways;
        let (session_id, first) = apis[gateway].sign(&format!("failover-{n}")).await?;
        let latest: Arc<str> = first.refresh.into();
        signed.push(latest.clone());
        per_connection[k].push(Chain {
            index: n,
            gateway,
            session_id,
            latest,
            state: ChainState::Live,
        });
    }

    let clock = Instant::now();
    let journal: Journal = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for (k, chains) in per_connection.into_iter().enumerate() {
        let load = Load {
            api: apis[k % args.gateways].clone(),
            gateway: k % args.gateways,
            journal: journal.clone(),
            clock,
            stop: stop.clone(),
            retry_delay: args.retry_delay,
            drain: args.request_timeout * 3,
        };
        tasks.push(tokio::spawn(load.drive(chains)));
    }

    tokio::time::sleep(args.warmup).await;
    let mut failovers: Vec<Failover> = Vec::new();
    let mut windows: Vec<Window> = Vec::new();
    let mut violations: Vec<String> = Vec::new();
    let plan = schedule(args.failovers, args.switchovers);
    let total = plan.len() as u32;
    for (i, kind) in (1..).zip(plan) {
        let jitter = rng.gen_range(0..=args.jitter.as_millis() as u64);
        tokio::time::sleep(Duration::from_millis(jitter)).await;
        let started = clock.elapsed();
        let moves = pair.moves.clone();
        let name = format!("{kind}-{i:02}");
        let out = tokio::task::spawn_blocking(move || moves.command(&[kind], &name)).await??;
        let took = clock.elapsed() - started;
        let line = out.lines().last().unwrap_or_default();
        let failover = Failover {
            kind,
            started,
            took,
            primary: field(line, "primary").unwrap_or("?").to_owned(),
            writable_after: field(line, "writable_after").and_then(|v| v.parse().ok()),
        };
        tokio::time::sleep(args.settle).await;
        let until = clock.elapsed();
        let (w, per_gateway) = windows_of(&lock(&journal), started, until, args.gateways);
        println!("{}", progress(i, total, &failover, &w, &per_gateway));
        if w.span().is_none() {
            violations.push(format!(
                "renews did not flow again within {:.1} s after {kind} {i}",
                (until - started).as_secs_f64()
            ));
        }
        failovers.push(failover);
        windows.push(w);
    }
    if total == 0 {
        tokio::time::sleep(args.settle).await;
    }

    // Stop the load; a chain whose renew is being retried is seen through first.
    stop.store(true, Ordering::Relaxed);
    let mut chains: Vec<Chain> = Vec::new();
    for task in tasks {
        chains.extend(task.await.context("a load task failed")?);
    }
    chains.sort_by_key(|c| c.index);
    let journal: Vec<Sent> = std::mem::take(&mut *lock(&journal));
    let last_ok = journal.iter().filter(|s| s.status == 200).map(|s| s.answered).max();
    let wait = (last_ok.unwrap_or_default() + Duration::from_secs(args.grace + 1))
        .saturating_sub(clock.elapsed());
    println!(
        "failover: load stopped after {:.1} s; waiting {:.1} s for the grace ({} s) to pass since the last 200",
        clock.elapsed().as_secs_f64(),
        wait.as_secs_f64(),
        args.grace
    );
    tokio::time::sleep(wait).await;

    let mut checks = Checks::default();
    violations.extend(load_breaches(&journal));
    let outcome = reconcile(&apis, &chains, &signed, &journal, args.connections, &mut checks).await;
    violations.extend(checks.violations.iter().cloned());

    // The summary.
    let ok = journal.iter().filter(|s| s.status == 200).count();
    let unavailable = journal.iter().filter(|s| s.status == 503).count();
    let unknown = journal.iter().filter(|s| s.status == 0).count();
    let other = journal.len() - ok - unavailable - unknown;
    let unrecovered = windows.iter().filter(|w| w.span().is_none()).count();
    let spans: Vec<f64> =
        windows.iter().filter_map(Window::span).map(|d| d.as_secs_f64()).collect();
    let slowest = journal.iter().map(|s| s.latency).max().unwrap_or_default();
    for kind in ["failover", "switchover"] {
        let of_kind: Vec<(&Failover, &Window)> =
            failovers.iter().zip(&windows).filter(|(f, _)| f.kind == kind).collect();
        if of_kind.is_empty() {
            continue;
        }
        println!("{}", kind_summary(kind, &of_kind));
    }
    println!(
        "failover: slowest answer {:.2} s; checks passed {}",
        slowest.as_secs_f64(),
        checks.passed
    );
    println!("failover: writes in doubt, resolved: {}", in_doubt_summary(&http, &apis).await);
    for n in 1..=args.gateways {
        let log = work.join(format!("gateway-{n}")).join("stderr.1");
        for (count, line) in log_digest(&log).iter().take(6) {
            println!("failover: gateway-{n} log: {count} x {line}");
        }
    }
    for v in violations.iter().take(40) {
        println!("  VIOLATION: {v}");
    }
    if violations.len() > 40 {
        println!("  ... and {} more", violations.len() - 40);
    }
    let errors = journal.iter().filter(|s| !matches!(s.status, 0 | 200 | 503)).count()
        + journal.iter().filter(|s| s.status == 503 && !s.retry_after).count();
    let switchovers = failovers.iter().filter(|f| f.kind == "switchover").count();
    println!(
        "failover: {} failovers, {switchovers} switchovers, {} renews journaled ({ok} 200, {unavailable} 503, {unknown} unknown, {other} other), {} lost, {} revived, {} doubled, {errors} other errors; 503 window p50 {:.2} s, max {}",
        failovers.len() - switchovers,
        journal.len(),
        outcome.lost,
        outcome.revived,
        outcome.doubled,
        percentile(&spans, 0.5),
        if unrecovered > 0 {
            format!("never ended ({unrecovered} moves)")
        } else {
            format!("{:.2} s", percentile(&spans, 1.0))
        },
    );
    let passed = violations.is_empty();
    drop(fleet);
    pair.keep_logs = !passed;
    drop(pair);
    Ok(passed)
}

/// One line on the moves of one kind: per move and p50/max of the window of renews that
/// did not succeed, of `writable_after`, of the longest time without a 200 and of the
/// script's command.
fn kind_summary(kind: &str, moves: &[(&Failover, &Window)]) -> String {
    let spans: Vec<f64> =
        moves.iter().filter_map(|(_, w)| w.span()).map(|d| d.as_secs_f64()).collect();
    let writable: Vec<f64> = moves.iter().filter_map(|(f, _)| f.writable_after).collect();
    let gaps: Vec<f64> = moves.iter().map(|(_, w)| w.longest_gap.as_secs_f64()).collect();
    let commands: Vec<f64> = moves.iter().map(|(f, _)| f.took.as_secs_f64()).collect();
    let list = |values: &[f64]| values.iter().map(|v| format!("{v:.2}")).collect::<Vec<_>>();
    format!(
        "failover: {} {kind}s: renews did not succeed p50 {:.2} s, max {:.2} s ({}); writable_after p50 {:.2} s, max {:.2} s ({}); longest without a 200 p50 {:.2} s, max {:.2} s; command p50 {:.2} s, max {:.2} s",
        moves.len(),
        percentile(&spans, 0.5),
        percentile(&spans, 1.0),
        list(&spans).join(" "),
        percentile(&writable, 0.5),
        percentile(&writable, 1.0),
        list(&writable).join(" "),
        percentile(&gaps, 0.5),
        percentile(&gaps, 1.0),
        percentile(&commands, 0.5),
        percentile(&commands, 1.0),
    )
}

/// The window of one failover, overall and per gateway.
fn windows_of(
    journal: &[Sent],
    from: Duration,
    until: Duration,
    gateways: usize,
) -> (Window, Vec<Window>) {
    let mut all: Vec<(Duration, u16)> = Vec::new();
    let mut each: Vec<Vec<(Duration, u16)>> = vec![Vec::new(); gateways];
    for s in journal.iter().filter(|s| s.answered >= from && s.answered < until) {
        all.push((s.answered, s.status));
        each[s.gateway].push((s.answered, s.status));
    }
    all.sort_by_key(|a| a.0);
    let per_gateway = each
        .iter_mut()
        .map(|answers| {
            answers.sort_by_key(|a| a.0);
            window(answers, from, until)
        })
        .collect();
    (window(&all, from, until), per_gateway)
}

fn secs(d: Option<Duration>) -> String {
    match d {
        Some(d) => format!("{:.2}", d.as_secs_f64()),
        None => "never".into(),
    }
}

fn progress(i: u32, n: u32, f: &Failover, w: &Window, per_gateway: &[Window]) -> String {
    let failed = match w.start() {
        None if !w.trailing_stall => "renews never stopped".to_owned(),
        None => "renews stopped at the end".to_owned(),
        Some(start) => format!(
            "renews did not succeed from +{:.2} s to +{} s ({} s; {})",
            start.as_secs_f64(),
            secs(w.end()),
            secs(w.span()),
            per_gateway
                .iter()
                .enumerate()
                .map(|(g, pw)| format!("gw{} {}", g + 1, secs(pw.span())))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    format!(
        "{} {i:2}/{n} at {:.1} s: primary={} writable_after {} s, command {:.2} s; {failed}; {} x 503, {} no answer, {} other; longest without a 200 {:.2} s; {} x 200",
        f.kind,
        f.started.as_secs_f64(),
        f.primary,
        f.writable_after.map_or("?".into(), |v| format!("{v:.2}")),
        f.took.as_secs_f64(),
        w.unavailable,
        w.lost,
        w.failures - w.unavailable - w.lost,
        w.longest_gap.as_secs_f64(),
        w.ok
    )
}

/// One connection's load.
struct Load {
    api: Api,
    gateway: usize,
    journal: Journal,
    clock: Instant,
    stop: Arc<AtomicBool>,
    retry_delay: Duration,
    /// After the stop, how long a renew is still retried.
    drain: Duration,
}

impl Load {
    /// Renews the chains round-robin until the stop; a renew is retried (same parent) after
    /// a 503 or a lost answer, until it is answered 200 or 401.
    async fn drive(self, mut chains: Vec<Chain>) -> Vec<Chain> {
        let mut next = 0usize;
        let mut drain_until: Option<Instant> = None;
        while !self.stop.load(Ordering::Relaxed) {
            let live: Vec<usize> =
                (0..chains.len()).filter(|&i| chains[i].state == ChainState::Live).collect();
            if live.is_empty() {
                break;
            }
            let chain = &mut chains[live[next % live.len()]];
            next = next.wrapping_add(1);
            let parent = chain.latest.clone();
            loop {
                let sent = Instant::now();
                let (answer, child) = self.api.renew_answer(&parent).await;
                let child: Option<Arc<str>> =
                    child.filter(|_| answer.status == 200).map(|c| c.refresh.into());
                lock(&self.journal).push(Sent {
                    chain: chain.index,
                    gateway: self.gateway,
                    parent: parent.clone(),
                    answered: self.clock.elapsed(),
                    status: answer.status,
                    retry_after: answer.retry_after,
                    child: child.clone(),
                    latency: sent.elapsed(),
                });
                match (answer.status, child) {
                    (200, Some(child)) => {
                        chain.latest = child;
                        break;
                    }
                    (401, _) => {
                        chain.state = ChainState::Dead;
                        break;
                    }
                    _ => {}
                }
                if self.stop.load(Ordering::Relaxed) {
                    let until = *drain_until.get_or_insert_with(|| Instant::now() + self.drain);
                    if Instant::now() > until {
                        chain.state = ChainState::Unresolved;
                        break;
                    }
                }
                tokio::time::sleep(self.retry_delay).await;
            }
        }
        chains
    }
}

#[derive(Debug, Default)]
struct Outcome {
    lost: usize,
    revived: usize,
    doubled: usize,
}

async fn reconcile(
    apis: &[Api],
    chains: &[Chain],
    signed: &[Arc<str>],
    journal: &[Sent],
    concurrency: usize,
    checks: &mut Checks,
) -> Outcome {
    let mut outcome = Outcome::default();
    let mut tree = JidTree::default();
    let mut renewed_parents = HashSet::new();
    let mut acknowledged: Vec<String> = signed.iter().filter_map(|t| harness::jid(t)).collect();
    // Consumed parents per chain, newest first, each once.
    let mut parents: HashMap<usize, Vec<Arc<str>>> = HashMap::new();
    for s in journal {
        if let Some(child) = &s.child {
            tree.add(&s.parent, child, checks);
            if let (Some(p), Some(c)) = (harness::jid(&s.parent), harness::jid(child)) {
                renewed_parents.insert(p);
                acknowledged.push(c);
            }
            let list = parents.entry(s.chain).or_default();
            if list.last() != Some(&s.parent) {
                list.push(s.parent.clone());
            }
        }
    }
    for list in parents.values_mut() {
        list.reverse();
    }

    // 1. Every head renews now, once (200).
    let live: Vec<Chain> = chains.iter().filter(|c| c.state == ChainState::Live).cloned().collect();
    let apis2 = apis.to_vec();
    let heads = harness::each(live.clone(), concurrency, move |c| {
        let api = apis2[c.gateway].clone();
        async move { api.renew(&c.latest).await }
    })
    .await;
    let mut heads_renewed = HashSet::new();
    let mut grandchildren: HashMap<usize, String> = HashMap::new();
    for (chain, (status, grandchild)) in live.iter().zip(heads) {
        checks.check(status == 200, || {
            format!("the head of session {} does not renew: {status}", chain.session_id)
        });
        if let (200, Some(g)) = (status, grandchild) {
            tree.add(&chain.latest, &g.refresh, checks);
            if let Some(j) = harness::jid(&chain.latest) {
                heads_renewed.insert(j);
            }
            grandchildren.insert(chain.index, g.refresh);
        }
    }
    // 2. Then every consumed parent of the chain is refused, newest first; the first one is
    // reuse and revokes the session, so the head's new child is refused too.
    let work: Vec<(Chain, Vec<Arc<str>>, Option<String>)> = live
        .iter()
        .filter(|c| grandchildren.contains_key(&c.index))
        .map(|c| {
            let list = parents.remove(&c.index).unwrap_or_default();
            (c.clone(), list, grandchildren.get(&c.index).cloned())
        })
        .collect();
    let apis2 = apis.to_vec();
    let answers = harness::each(work.clone(), concurrency, move |(c, list, grandchild)| {
        let api = apis2[c.gateway].clone();
        async move {
            let mut statuses = Vec::with_capacity(list.len());
            for parent in &list {
                statuses.push(api.renew(parent).await.0);
            }
            let after = match (&grandchild, list.is_empty()) {
                (Some(g), false) => Some(api.renew(g).await.0),
                _ => None,
            };
            (statuses, after)
        }
    })
    .await;
    for ((chain, _, _), (statuses, after)) in work.iter().zip(answers) {
        for status in statuses {
            checks.check(status == 401, || {
                format!("a consumed parent of session {} answered {status}", chain.session_id)
            });
            if status == 200 {
                outcome.revived += 1;
            }
        }
        if let Some(status) = after {
            checks.check(status == 401, || {
                format!(
                    "session {} still renews after its consumed parents were presented: {status}",
                    chain.session_id
                )
            });
        }
    }

    // 3. A chain the load left unresolved: either way, a clean answer.
    let unresolved: Vec<Chain> =
        chains.iter().filter(|c| c.state == ChainState::Unresolved).cloned().collect();
    for chain in &unresolved {
        let (status, child) = apis[chain.gateway].renew(&chain.latest).await;
        checks.check(status == 200 || status == 401, || {
            format!("an unresolved renew of session {} answered {status}", chain.session_id)
        });
        if let Some(child) = child {
            tree.add(&chain.latest, &child.refresh, checks);
        }
        // Its outcome is unknown either way: not counted as lost.
        heads_renewed.extend(harness::jid(&chain.latest));
    }

    let lost = lost(acknowledged, &renewed_parents, &heads_renewed);
    outcome.lost = lost.len();
    for j in lost.iter().take(20) {
        checks.violations.push(format!("an acknowledged token was lost (jid {j})"));
    }
    if lost.len() > 20 {
        checks.violations.push(format!("... {} lost tokens in all", lost.len()));
    }
    outcome.doubled = tree.doubled;
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_window_runs_from_the_first_failure_to_the_first_200_after_the_last_one() {
        let answers = [
            (ms(900), 200), // before the failover: not counted
            (ms(1010), 200),
            (ms(1100), 0),
            (ms(1200), 503),
            (ms(1300), 200), // a 200 between failures does not end the window
            (ms(1400), 503),
            (ms(1550), 200),
            (ms(1600), 200),
            (ms(1700), 200),
            (ms(1800), 200),
            (ms(1900), 200),
            (ms(2000), 200),
            (ms(2300), 200),
            (ms(5000), 503), // after the period
        ];
        let w = window(&answers, ms(1000), ms(2400));
        assert_eq!(w.first_failure, Some(ms(100)));
        assert_eq!(w.recovered, Some(ms(550)));
        assert_eq!((w.stalls, w.trailing_stall), (None, false));
        assert_eq!(w.span(), Some(ms(450)));
        assert_eq!((w.failures, w.unavailable, w.lost, w.ok), (3, 2, 1, 9));
        assert_eq!(w.longest_gap, ms(300));
    }

    #[test]
    fn a_stall_without_errors_is_part_of_the_window() {
        // Errors at once, a stray 200 (committed before the stop), then 3 s of nothing.
        let answers =
            [(ms(50), 200), (ms(60), 503), (ms(80), 200), (ms(3080), 200), (ms(3090), 200)];
        let w = window(&answers, ms(0), ms(3100));
        assert_eq!((w.first_failure, w.recovered), (Some(ms(60)), Some(ms(80))));
        assert_eq!(w.stalls, Some((ms(80), ms(3080))));
        assert_eq!((w.start(), w.end(), w.span()), (Some(ms(60)), Some(ms(3080)), Some(ms(3020))));
        assert_eq!(w.longest_gap, ms(3000));
        // A hang right after the stop, no error at all.
        let hang = window(&[(ms(10), 200), (ms(2010), 200), (ms(2020), 200)], ms(0), ms(2030));
        assert_eq!(hang.first_failure, None);
        assert_eq!(hang.span(), Some(ms(2000)));
    }

    #[test]
    fn a_window_without_failures_is_empty_and_one_that_never_recovers_has_no_span() {
        let clean = window(&[(ms(10), 200), (ms(20), 200)], ms(0), ms(30));
        assert_eq!(clean.span(), Some(Duration::ZERO));
        assert_eq!(clean.longest_gap, ms(10));
        let stuck = window(&[(ms(10), 200), (ms(20), 503)], ms(0), ms(30));
        assert_eq!(stuck.first_failure, Some(ms(20)));
        assert_eq!(stuck.span(), None);
        // Answers that stop coming: a stall until the end of the period.
        let silent = window(&[(ms(10), 200)], ms(0), ms(2000));
        assert_eq!((silent.trailing_stall, silent.span()), (true, None));
    }

    #[test]
    fn lost_tokens_are_the_acknowledged_ones_neither_renewed_nor_a_head_that_renews() {
        let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<HashSet<_>>();
        let acknowledged = ["a0", "a1", "a1", "a2", "b0", "c0", "c1"].map(String::from);
        // a: a0 -> a1 -> a2 (head, renews). b: b0 head, does not renew. c: c1 acked, but the
        // chain went on from c0 again (c0 -> c1 never used).
        let parents = set(&["a0", "a1", "c0"]);
        let heads = set(&["a2"]);
        assert_eq!(lost(acknowledged, &parents, &heads), vec!["b0".to_string(), "c1".into()]);
    }

    fn sent(gateway: usize, status: u16, retry_after: bool, child: bool) -> Sent {
        Sent {
            chain: 0,
            gateway,
            parent: "p".into(),
            answered: ms(1500),
            status,
            retry_after,
            child: child.then(|| "c".into()),
            latency: ms(1),
        }
    }

    #[test]
    fn load_breaches_are_401s_other_errors_and_503s_without_retry_after() {
        let journal = [
            sent(0, 200, false, true),
            sent(0, 503, true, false),
            sent(0, 0, false, false),
            sent(1, 503, false, false),
            sent(1, 503, false, false),
            sent(0, 401, false, false),
            sent(1, 500, false, false),
            sent(0, 200, false, false),
        ];
        let breaches = load_breaches(&journal);
        assert_eq!(
            breaches,
            vec![
                "gateway-2: a 503 without Retry-After: 2 times, first at 1.500 s".to_string(),
                "gateway-1: a 401 during the load (a token lost or a session revoked): 1 times, first at 1.500 s".into(),
                "gateway-2: a 500 during the load: 1 times, first at 1.500 s".into(),
                "gateway-1: a 200 without tokens: 1 times, first at 1.500 s".into(),
            ]
        );
        assert!(load_breaches(&journal[..3]).is_empty());
    }

    #[test]
    fn a_parent_jid_with_two_children_is_doubled() {
        let token = |jid: &str| {
            use base64::Engine;
            let claims = serde_json::json!({ "jid": jid }).to_string();
            let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(claims);
            format!("e30.{b64}.sig")
        };
        let mut checks = Checks::default();
        let mut tree = JidTree::default();
        tree.add(&token("p"), &token("c"), &mut checks);
        // A grace retry: the same child jid, signed again.
        tree.add(&token("p"), &token("c"), &mut checks);
        assert_eq!((tree.doubled, checks.violations.len()), (0, 0));
        tree.add(&token("p"), &token("d"), &mut checks);
        assert_eq!((tree.doubled, checks.violations.len()), (1, 1));
    }

    #[test]
    fn in_doubt_samples_are_read_by_write_and_outcome() {
        let text = "# HELP keygate_db_in_doubt_writes_total x\n\
            keygate_db_in_doubt_writes_total{outcome=\"committed\",write=\"rotate\"} 3\n\
            keygate_db_in_doubt_writes_total{outcome=\"unresolved\",write=\"sign\"} 0\n\
            keygate_renew_total{outcome=\"rotated\"} 9\n";
        assert_eq!(
            in_doubt_samples(text),
            vec![("rotate committed".to_owned(), 3.0), ("sign unresolved".to_owned(), 0.0)]
        );
    }

    #[test]
    fn a_log_digest_counts_messages_without_their_timestamps() {
        let dir = std::env::temp_dir().join(format!("keygate-digest-{}", ulid::Ulid::new()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("stderr.1");
        std::fs::write(
            &log,
            "2026-12-03T17:28:54.1Z WARN a: x id=01M8YFZ96M3RMA11FD426R3F3H\n2026-12-03T17:28:55.2Z WARN a: x id=01M8YFZ8XR5AEYE1BM1F7NJT78\n\nplain\n",
        )
        .unwrap();
        let digest = log_digest(&log);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(digest, vec![(2, "WARN a: x id=*".to_string()), (1, "plain".into())]);
        assert!(log_digest(&dir.join("none")).is_empty());
    }

    #[test]
    fn failovers_and_switchovers_are_taken_in_turn() {
        assert_eq!(schedule(2, 2), ["failover", "switchover", "failover", "switchover"]);
        assert_eq!(schedule(3, 1), ["failover", "switchover", "failover", "failover"]);
        assert_eq!(schedule(0, 2), ["switchover", "switchover"]);
        assert!(schedule(0, 0).is_empty());
    }

    #[test]
    fn percentiles_fields_and_hosts() {
        let v = [0.5, 0.1, 0.9, 0.3];
        assert_eq!(percentile(&v, 0.5), 0.3);
        assert_eq!(percentile(&v, 1.0), 0.9);
        assert_eq!(percentile(&[], 0.5), 0.0);
        let line = "primary=b writable_after=0.35";
        assert_eq!(field(line, "primary"), Some("b"));
        assert_eq!(field(line, "writable_after"), Some("0.35"));
        assert_eq!(field(line, "primary_x"), None);
        let url = "postgres://postgres@127.0.0.1:5001,127.0.0.1:5002/postgres?target_session_attrs=read-write";
        assert_eq!(first_host(url).unwrap(), "postgres://postgres@127.0.0.1:5001/postgres");
    }
}
