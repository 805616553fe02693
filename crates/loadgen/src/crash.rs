//! `keygate-bench crash`: kill a gateway under renew load, restart it on the same database,
//! and check that nothing it answered was lost and nothing it refused came back.
//!
//! Each cycle starts the gateway binary on a fresh database (a SQLite file with
//! `synchronous=FULL`, or a new Postgres schema), creates an app with `reuse_grace` 0, opens
//! sessions and renews them from several connections. The load side keeps a journal: every
//! renew sent (its parent token) and, for each 200, the child token; some sessions are
//! revoked through `/revoke`, recorded only when the revoke got its 200. After a random delay
//! the gateway gets SIGKILL. It is started again on the same database and the journal is
//! reconciled:
//!
//! - every child answered with a 200 and never sent renews exactly once: the first renew
//!   answers 200, the second is refused (401);
//! - every consumed parent is refused (401);
//! - no parent jid has two different children;
//! - every revoked session stays revoked: its refresh token is refused and its auth token
//!   no longer verifies;
//! - on SQLite, `PRAGMA integrity_check` answers `ok`.
//!
//! A request whose answer was lost in the kill is "unknown": its token may or may not have
//! been consumed, so it is left out of the exactly-once checks. It is still presented at
//! the end, where it must get 200 or 401 and nothing else.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use base64::Engine;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use sqlx::Connection;

/// The root key the harness installs through `KEYGATE_ROOT_KEY`.
pub(crate) const ROOT_KEY: &str = "kgr_crash_harness_root_key_not_for_production";
const USERAGENT: &str = "keygate-crash";

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// A SQLite file in the cycle's data directory (WAL, synchronous=FULL).
    Sqlite,
    /// A fresh schema in the Postgres server of `--postgres-url`.
    Postgres,
}

#[derive(Debug, Clone, clap::Args)]
pub struct CrashArgs {
    /// The gateway binary to start and kill (a release build).
    #[arg(long, default_value = "target/release/keygate")]
    keygate: PathBuf,
    #[arg(long, value_enum, default_value = "sqlite")]
    backend: Backend,
    /// The Postgres server; each cycle creates (and afterwards drops) its own schema.
    #[arg(
        long,
        env = "KEYGATE_CRASH_DATABASE_URL",
        hide_env_values = true,
        default_value = "postgres://postgres@127.0.0.1:5432/test"
    )]
    postgres_url: String,
    /// How many kill-and-restart cycles to run.
    #[arg(long, default_value_t = 20)]
    cycles: u32,
    /// Sessions opened per cycle.
    #[arg(long, default_value_t = 64)]
    sessions: usize,
    /// Concurrent connections sending renews.
    #[arg(long, short = 'c', default_value_t = 8)]
    connections: usize,
    /// The kill comes after a random delay between this…
    #[arg(long, value_parser = humantime::parse_duration, default_value = "200ms")]
    kill_after_min: Duration,
    /// …and this.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "2s")]
    kill_after_max: Duration,
    /// The chance that a request is a revoke of its session rather than a renew.
    #[arg(long, default_value_t = 0.002)]
    revoke_probability: f64,
    /// Seed of the random choices (delays, revokes); by default a random one, printed.
    #[arg(long)]
    seed: Option<u64>,
    /// Where cycles keep their data; a failed cycle's directory is kept.
    #[arg(long)]
    work_dir: Option<PathBuf>,
}

/// A token pair the gateway answered.
#[derive(Debug, Clone)]
pub(crate) struct Pair {
    pub(crate) refresh: String,
    pub(crate) auth: String,
}

/// Where a session's chain stands on the load side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChainState {
    /// Its latest refresh token was answered with a 200 and never sent.
    Unused,
    /// A renew was sent and its answer was lost: the token may or may not be consumed.
    Unknown,
    /// `/revoke` answered 200 for it.
    Revoked,
    /// A revoke was sent and its answer was lost.
    RevokeUnknown,
}

#[derive(Debug, Clone)]
struct Chain {
    session_id: String,
    latest: Pair,
    state: ChainState,
}

/// One renew of the journal.
#[derive(Debug, Clone)]
struct Renewal {
    parent: String,
    /// The status (0: no answer), and the child on a 200.
    status: u16,
    child: Option<Pair>,
}

/// What one connection did.
#[derive(Debug, Default)]
struct Driven {
    chains: Vec<Chain>,
    journal: Vec<Renewal>,
    revokes: u64,
    busy: u64,
    violations: Vec<String>,
}

/// The outcome of the reconciliation.
#[derive(Debug, Default)]
pub(crate) struct Checks {
    pub(crate) passed: u64,
    pub(crate) violations: Vec<String>,
}

impl Checks {
    pub(crate) fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if ok {
            self.passed += 1;
        } else {
            self.violations.push(what());
        }
    }
}

/// Totals over the run.
#[derive(Debug, Default)]
struct Totals {
    cycles: u32,
    renews_journaled: u64,
    renews_ok: u64,
    unknown: u64,
    revokes: u64,
    busy: u64,
    checks: u64,
    violations: u64,
}

pub async fn run(args: &CrashArgs) -> anyhow::Result<bool> {
    if !args.keygate.is_file() {
        bail!(
            "{} is not a file: build it with `cargo build --release -p keygate-gateway`",
            args.keygate.display()
        );
    }
    if args.kill_after_max < args.kill_after_min || args.sessions == 0 || args.connections == 0 {
        bail!("need --kill-after-min <= --kill-after-max, --sessions >= 1, --connections >= 1");
    }
    // The gateway runs in each cycle's directory: a relative path would no longer name it.
    let args = &CrashArgs { keygate: std::fs::canonicalize(&args.keygate)?, ..args.clone() };
    let seed = args.seed.unwrap_or_else(|| rand::thread_rng().gen());
    let mut rng = StdRng::seed_from_u64(seed);
    let work = match &args.work_dir {
        Some(dir) => dir.clone(),
        None => std::env::temp_dir().join(format!("keygate-crash-{}", ulid::Ulid::new())),
    };
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    println!(
        "crash harness: {:?}, {} cycles, {} sessions, {} connections, kill after {:?}..{:?}, seed {seed}, work dir {}",
        args.backend,
        args.cycles,
        args.sessions,
        args.connections,
        args.kill_after_min,
        args.kill_after_max,
        work.display()
    );
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.connections * 2)
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(30))
        .build()?;
    let mut totals = Totals::default();
    for cycle in 1..=args.cycles {
        let dir = work.join(format!("cycle-{cycle:03}"));
        let cycle_seed = rng.gen();
        let outcome = one_cycle(args, &http, &dir, cycle, cycle_seed).await;
        let (report, checks) = match outcome {
            Ok(done) => done,
            Err(e) => (
                CycleReport::default(),
                Checks { passed: 0, violations: vec![format!("the cycle could not run: {e:#}")] },
            ),
        };
        totals.cycles += 1;
        totals.renews_journaled += report.journaled;
        totals.renews_ok += report.ok;
        totals.unknown += report.unknown;
        totals.revokes += report.revokes;
        totals.busy += report.busy;
        totals.checks += checks.passed;
        totals.violations += checks.violations.len() as u64;
        println!(
            "cycle {cycle:3}: killed after {:>5} ms; renews journaled {:5} (200: {}, unknown: {}, 503: {}), revoked {}, checks passed {}, violations {}",
            report.killed_after_ms,
            report.journaled,
            report.ok,
            report.unknown,
            report.busy,
            report.revokes,
            checks.passed,
            checks.violations.len()
        );
        for v in checks.violations.iter().take(20) {
            println!("  VIOLATION: {v}");
        }
        if checks.violations.is_empty() {
            let _ = std::fs::remove_dir_all(&dir);
            if let Some(schema) = &report.schema {
                drop_schema(&args.postgres_url, schema).await;
            }
        } else {
            println!("  kept {} (seed {cycle_seed}) for inspection", dir.display());
        }
    }
    if totals.violations == 0 && args.work_dir.is_none() {
        let _ = std::fs::remove_dir_all(&work);
    }
    println!(
        "summary: backend {:?}, cycles {}, renews journaled {} (200: {}, unknown: {}, 503: {}), sessions revoked {}, checks passed {}, violations {}",
        args.backend,
        totals.cycles,
        totals.renews_journaled,
        totals.renews_ok,
        totals.unknown,
        totals.busy,
        totals.revokes,
        totals.checks,
        totals.violations
    );
    Ok(totals.violations == 0)
}

#[derive(Debug, Default)]
struct CycleReport {
    killed_after_ms: u128,
    journaled: u64,
    ok: u64,
    unknown: u64,
    revokes: u64,
    busy: u64,
    schema: Option<String>,
}

/// A gateway process and its address.
#[derive(Debug)]
pub(crate) struct Gateway {
    child: Child,
    pub(crate) url: String,
}

impl Gateway {
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, then reap it.
    pub(crate) fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the gateway in `dir` and waits for its "listening on" line. `env` is set last
/// (for example a `KEYGATE_MASTER_KEY` that several gateways share).
pub(crate) fn start_gateway(
    keygate: &Path,
    dir: &Path,
    database_url: Option<&str>,
    run: u32,
    env: &[(&str, &str)],
) -> anyhow::Result<Gateway> {
    let stdout_path = dir.join(format!("stdout.{run}"));
    let stdout = File::create(&stdout_path)?;
    let stderr = File::create(dir.join(format!("stderr.{run}")))?;
    let mut command = Command::new(keygate);
    command
        .args(["serve", "--listen", "127.0.0.1:0"])
        .current_dir(dir)
        .env_remove("KEYGATE_DATABASE_URL")
        .env_remove("KEYGATE_CONFIG")
        .env_remove("KEYGATE_MASTER_KEY")
        .env_remove("KEYGATE_MASTER_KEY_FILE")
        .env("KEYGATE_DATA_DIR", dir.join("data"))
        .env("KEYGATE_ROOT_KEY", ROOT_KEY)
        .env("KEYGATE_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr);
    if let Some(url) = database_url {
        command.env("KEYGATE_DATABASE_URL", url);
    }
    command.envs(env.iter().copied());
    let mut child = command.spawn().with_context(|| format!("starting {}", keygate.display()))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(&stdout_path).unwrap_or_default();
        if let Some(rest) = text.lines().find_map(|l| l.strip_prefix("keygate listening on ")) {
            let url = rest.split_whitespace().next().unwrap_or_default().to_owned();
            return Ok(Gateway { child, url });
        }
        if let Some(status) = child.try_wait()? {
            let log =
                std::fs::read_to_string(dir.join(format!("stderr.{run}"))).unwrap_or_default();
            bail!("the gateway exited ({status}) before listening:\n{log}");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the gateway did not start within 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A new schema in the Postgres server; returns the schema and a URL that uses it.
async fn fresh_schema(base: &str) -> anyhow::Result<(String, String)> {
    let schema = format!("kgc_{}", ulid::Ulid::new().to_string().to_lowercase());
    let mut conn = sqlx::PgConnection::connect(base).await.context("connecting to Postgres")?;
    sqlx::query(&format!("CREATE SCHEMA {schema}")).execute(&mut conn).await?;
    conn.close().await?;
    let sep = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{sep}options=-c%20search_path%3D{schema}");
    Ok((schema, url))
}

async fn drop_schema(base: &str, schema: &str) {
    if let Ok(mut conn) = sqlx::PgConnection::connect(base).await {
        let _ = sqlx::query(&format!("DROP SCHEMA {schema} CASCADE")).execute(&mut conn).await;
        let _ = conn.close().await;
    }
}

/// The HTTP calls of the harness.
#[derive(Clone)]
pub(crate) struct Api {
    pub(crate) http: reqwest::Client,
    pub(crate) base: String,
    pub(crate) app_id: String,
    pub(crate) app_key: String,
    /// The `useragent` of every sign and renew (a grace retry must repeat it).
    pub(crate) useragent: String,
}

/// What the gateway answered: the status (0 when no answer came), whether a `Retry-After`
/// header came with it, and the body (`Null` when it is not JSON).
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) retry_after: bool,
    pub(crate) body: Value,
}

impl Api {
    /// POSTs to an app endpoint.
    pub(crate) async fn call(&self, endpoint: &str, body: &Value) -> Answer {
        let url = format!("{}/app/{}/{endpoint}", self.base, self.app_id);
        let sent = self.http.post(url).header("Authorization", &self.app_key).json(body).send();
        let lost = Answer { status: 0, retry_after: false, body: Value::Null };
        let Ok(response) = sent.await else { return lost };
        let status = response.status().as_u16();
        let retry_after = response.headers().contains_key(reqwest::header::RETRY_AFTER);
        match response.bytes().await {
            Ok(bytes) => Answer {
                status,
                retry_after,
                body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            },
            Err(_) => lost,
        }
    }

    /// POSTs to an app endpoint: status and body, or 0 when no answer came.
    async fn post(&self, endpoint: &str, body: &Value) -> (u16, Value) {
        let answer = self.call(endpoint, body).await;
        (answer.status, answer.body)
    }

    /// A renew, with the whole answer and the pair it carried.
    pub(crate) async fn renew_answer(&self, refresh: &str) -> (Answer, Option<Pair>) {
        let body =
            json!({"refresh_token": refresh, "ip": "198.51.100.9", "useragent": self.useragent});
        let answer = self.call("renew", &body).await;
        let child = pair(&answer.body);
        (answer, child)
    }

    pub(crate) async fn renew(&self, refresh: &str) -> (u16, Option<Pair>) {
        let (answer, child) = self.renew_answer(refresh).await;
        (answer.status, child)
    }

    /// Opens a session for `sub`: its id and its first pair.
    pub(crate) async fn sign(&self, sub: &str) -> anyhow::Result<(String, Pair)> {
        let body = json!({"sub": sub, "ip": "198.51.100.9", "useragent": self.useragent});
        let (status, body) = self.post("sign", &body).await;
        let (Some(first), Some(session_id)) = (pair(&body), body["session_id"].as_str()) else {
            bail!("sign answered {status}: {body}");
        };
        Ok((session_id.to_owned(), first))
    }

    async fn verified(&self, auth: &str) -> Option<bool> {
        let (status, body) = self.post("verify", &json!({"token": auth})).await;
        if status != 200 {
            return None;
        }
        body["verified"].as_bool()
    }
}

pub(crate) fn pair(body: &Value) -> Option<Pair> {
    Some(Pair {
        refresh: body["refresh_token"].as_str()?.to_owned(),
        auth: body["auth_token"].as_str()?.to_owned(),
    })
}

/// The `jid` claim of a JWT, read without verifying it.
pub(crate) fn jid(token: &str) -> Option<String> {
    let part = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(part).ok()?;
    let claims: Value = serde_json::from_slice(&bytes).ok()?;
    claims["jid"].as_str().map(str::to_owned)
}

async fn one_cycle(
    args: &CrashArgs,
    http: &reqwest::Client,
    dir: &Path,
    cycle: u32,
    seed: u64,
) -> anyhow::Result<(CycleReport, Checks)> {
    let mut rng = StdRng::seed_from_u64(seed);
    std::fs::create_dir_all(dir.join("data"))?;
    let mut report = CycleReport::default();
    let database_url = match args.backend {
        Backend::Sqlite => None,
        Backend::Postgres => {
            let (schema, url) = fresh_schema(&args.postgres_url).await?;
            report.schema = Some(schema);
            Some(url)
        }
    };
    let gateway = start_gateway(&args.keygate, dir, database_url.as_deref(), 1, &[])?;
    let (api, driven, killed_after) = load_and_kill(args, http, gateway, cycle, &mut rng).await?;
    report.killed_after_ms = killed_after.as_millis();

    let mut chains = Vec::new();
    let mut journal = Vec::new();
    let mut checks = Checks::default();
    for d in driven {
        report.revokes += d.revokes;
        report.busy += d.busy;
        checks.violations.extend(d.violations);
        chains.extend(d.chains);
        journal.extend(d.journal);
    }
    report.journaled = journal.len() as u64;
    report.ok = journal.iter().filter(|r| r.status == 200).count() as u64;
    report.unknown = journal.iter().filter(|r| r.status == 0).count() as u64;

    let gateway = start_gateway(&args.keygate, dir, database_url.as_deref(), 2, &[])?;
    let api = Api { base: gateway.url.clone(), ..api };
    reconcile(&api, &chains, &journal, args.connections, &mut checks).await;
    if args.backend == Backend::Sqlite {
        let db = dir.join("data").join("keygate.db");
        let answer = integrity_check(&db).await;
        checks.check(answer.as_deref().is_ok_and(|a| a == "ok"), || {
            format!("PRAGMA integrity_check on {}: {answer:?}", db.display())
        });
    }
    gateway.kill();
    Ok((report, checks))
}

/// Creates the app, opens the sessions, runs the load and kills the gateway at a random
/// moment. Returns what every connection did and when the kill came. The gateway is killed
/// on every path.
async fn load_and_kill(
    args: &CrashArgs,
    http: &reqwest::Client,
    gateway: Gateway,
    cycle: u32,
    rng: &mut StdRng,
) -> anyhow::Result<(Api, Vec<Driven>, Duration)> {
    let per_connection = match open_sessions(args, http, &gateway.url, cycle).await {
        Ok(opened) => opened,
        Err(e) => {
            gateway.kill();
            return Err(e);
        }
    };
    let (api, per_connection) = per_connection;
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for chains in per_connection {
        let (api, stop) = (api.clone(), stop.clone());
        let task_seed = rng.gen();
        let revoke_probability = args.revoke_probability;
        tasks.push(tokio::spawn(drive(api, chains, stop, task_seed, revoke_probability)));
    }
    let min = args.kill_after_min.as_millis() as u64;
    let max = args.kill_after_max.as_millis() as u64;
    let delay = Duration::from_millis(rng.gen_range(min..=max));
    let started = Instant::now();
    tokio::time::sleep(delay).await;
    // SIGKILL with requests in flight; the load stops only afterwards, so whatever was in
    // flight at the kill stays in flight.
    let killed = tokio::task::spawn_blocking(move || gateway.kill());
    let _ = killed.await;
    let killed_after = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let mut driven = Vec::new();
    for task in tasks {
        driven.push(task.await.context("a load task failed")?);
    }
    Ok((api, driven, killed_after))
}

/// Creates an app through the root API (root key [`ROOT_KEY`]) with this `reuse_grace`.
pub(crate) async fn create_app(
    http: &reqwest::Client,
    base: &str,
    name: &str,
    reuse_grace: u64,
    useragent: &str,
) -> anyhow::Result<Api> {
    let response = http
        .post(format!("{base}/root/apps"))
        .header("Authorization", ROOT_KEY)
        .json(&json!({"name": name, "reuse_grace": reuse_grace}))
        .send()
        .await?;
    let status = response.status();
    let created: Value = response.json().await?;
    if status != 201 {
        bail!("creating the app answered {status}: {created}");
    }
    Ok(Api {
        http: http.clone(),
        base: base.to_owned(),
        app_id: created["app_id"].as_str().context("no app_id")?.to_owned(),
        app_key: created["app_key"].as_str().context("no app_key")?.to_owned(),
        useragent: useragent.to_owned(),
    })
}

/// Creates the app and opens the sessions, dealt out to the connections.
async fn open_sessions(
    args: &CrashArgs,
    http: &reqwest::Client,
    base: &str,
    cycle: u32,
) -> anyhow::Result<(Api, Vec<Vec<Chain>>)> {
    let api = create_app(http, base, &format!("crash-{cycle}"), 0, USERAGENT).await?;
    let mut per_connection: Vec<Vec<Chain>> = (0..args.connections).map(|_| Vec::new()).collect();
    for n in 0..args.sessions {
        let (session_id, latest) = api.sign(&format!("crash-{n}")).await?;
        per_connection[n % args.connections].push(Chain {
            session_id,
            latest,
            state: ChainState::Unused,
        });
    }
    Ok((api, per_connection))
}

/// One connection: renews its chains round-robin, sometimes revokes one, until `stop`.
async fn drive(
    api: Api,
    mut chains: Vec<Chain>,
    stop: Arc<AtomicBool>,
    seed: u64,
    revoke_probability: f64,
) -> Driven {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut driven = Driven::default();
    let mut next = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let live: Vec<usize> =
            (0..chains.len()).filter(|&i| chains[i].state == ChainState::Unused).collect();
        if live.is_empty() {
            break;
        }
        let i = live[next % live.len()];
        next = next.wrapping_add(1);
        let chain = &mut chains[i];
        if rng.gen_bool(revoke_probability.clamp(0.0, 1.0)) {
            let (status, body) = api.post("revoke", &json!({"session_id": chain.session_id})).await;
            match status {
                200 if body["revoked"] == 1 => {
                    chain.state = ChainState::Revoked;
                    driven.revokes += 1;
                }
                0 => {
                    chain.state = ChainState::RevokeUnknown;
                    wait_for(&stop).await;
                }
                other => {
                    driven.violations.push(format!("revoke answered {other}: {body}"));
                    chain.state = ChainState::RevokeUnknown;
                }
            }
            continue;
        }
        let parent = chain.latest.refresh.clone();
        let (status, child) = api.renew(&parent).await;
        match (status, child) {
            (200, Some(child)) => {
                chain.latest = child.clone();
                driven.journal.push(Renewal { parent, status, child: Some(child) });
            }
            (0, _) => {
                chain.state = ChainState::Unknown;
                driven.journal.push(Renewal { parent, status, child: None });
                // The gateway is being killed: nothing more is sent.
                wait_for(&stop).await;
            }
            (503, _) => {
                // Not consumed: the same token is sent again later.
                driven.busy += 1;
                driven.journal.push(Renewal { parent, status, child: None });
            }
            (other, _) => {
                driven.violations.push(format!(
                    "during the load a renew of session {} answered {other}",
                    chain.session_id
                ));
                chain.state = ChainState::Unknown;
                driven.journal.push(Renewal { parent, status, child: None });
            }
        }
    }
    driven.chains = chains;
    driven
}

async fn wait_for(stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Runs `f` over `items` with at most `concurrency` at a time, keeping the order.
pub(crate) async fn each<T, R, F, Fut>(items: Vec<T>, concurrency: usize, f: F) -> Vec<R>
where
    T: Send + 'static,
    R: Send + 'static,
    F: Fn(T) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = R> + Send + 'static,
{
    let f = Arc::new(f);
    let semaphore = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    let handles: Vec<_> = items
        .into_iter()
        .map(|item| {
            let (f, semaphore) = (f.clone(), semaphore.clone());
            tokio::spawn(async move {
                let _permit = semaphore.acquire_owned().await;
                f(item).await
            })
        })
        .collect();
    let mut out = Vec::with_capacity(handles.len());
    for handle in handles {
        match handle.await {
            Ok(r) => out.push(r),
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
    out
}

async fn reconcile(
    api: &Api,
    chains: &[Chain],
    journal: &[Renewal],
    concurrency: usize,
    checks: &mut Checks,
) {
    // The jid tree, from every 200 of the journal.
    let mut tree = JidTree::default();
    for r in journal {
        if let Some(child) = &r.child {
            tree.add(&r.parent, &child.refresh, checks);
        }
    }

    // 1. Every child answered with a 200 and never sent renews: first 200…
    let unused: Vec<Chain> =
        chains.iter().filter(|c| c.state == ChainState::Unused).cloned().collect();
    let api2 = api.clone();
    let first = each(unused.clone(), concurrency, move |c| {
        let api = api2.clone();
        async move { api.renew(&c.latest.refresh).await }
    })
    .await;
    for (chain, (status, grandchild)) in unused.iter().zip(&first) {
        checks.check(*status == 200, || {
            format!(
                "an unused token answered with a 200 before the kill does not renew: {status} (session {})",
                chain.session_id
            )
        });
        if let Some(g) = grandchild {
            tree.add(&chain.latest.refresh, &g.refresh, checks);
        }
    }
    // … then refused: it renews exactly once.
    let api2 = api.clone();
    let second = each(unused.clone(), concurrency, move |c| {
        let api = api2.clone();
        async move { api.renew(&c.latest.refresh).await.0 }
    })
    .await;
    for (chain, status) in unused.iter().zip(&second) {
        checks.check(*status == 401, || {
            format!("a token renewed twice: second answer {status} (session {})", chain.session_id)
        });
    }

    // 2. Every consumed parent is refused.
    let parents: Vec<String> =
        journal.iter().filter(|r| r.status == 200).map(|r| r.parent.clone()).collect();
    let api2 = api.clone();
    let answers = each(parents, concurrency, move |p| {
        let api = api2.clone();
        async move { api.renew(&p).await.0 }
    })
    .await;
    for status in answers {
        checks.check(status == 401, || format!("a consumed parent token answered {status}"));
    }

    // 3. Revoked sessions stay revoked.
    let revoked: Vec<Chain> =
        chains.iter().filter(|c| c.state == ChainState::Revoked).cloned().collect();
    let api2 = api.clone();
    let answers = each(revoked.clone(), concurrency, move |c| {
        let api = api2.clone();
        async move { (api.renew(&c.latest.refresh).await.0, api.verified(&c.latest.auth).await) }
    })
    .await;
    for (chain, (status, verified)) in revoked.iter().zip(answers) {
        checks.check(status == 401, || {
            format!("revoked session {} renewed: {status}", chain.session_id)
        });
        checks.check(verified == Some(false), || {
            format!("an auth token of revoked session {} verifies: {verified:?}", chain.session_id)
        });
    }

    // 4. Unknown outcomes: either way, a clean answer.
    let unknown: Vec<Chain> = chains
        .iter()
        .filter(|c| matches!(c.state, ChainState::Unknown | ChainState::RevokeUnknown))
        .cloned()
        .collect();
    let api2 = api.clone();
    let answers = each(unknown.clone(), concurrency, move |c| {
        let api = api2.clone();
        async move { api.renew(&c.latest.refresh).await }
    })
    .await;
    for (chain, (status, child)) in unknown.iter().zip(answers) {
        checks.check(status == 200 || status == 401, || {
            format!(
                "a token whose renew was in flight answered {status} (session {})",
                chain.session_id
            )
        });
        if let Some(child) = child {
            tree.add(&chain.latest.refresh, &child.refresh, checks);
        }
    }
}

/// The jid tree of the renews: parent jid -> child jid. A parent with two different
/// children is a violation (a grace retry answers the same child jid, signed again).
#[derive(Debug, Default)]
pub(crate) struct JidTree {
    children: HashMap<String, String>,
    /// How many edges gave a parent a second, different child.
    pub(crate) doubled: usize,
}

impl JidTree {
    /// Adds the edge of a 200: `parent` renewed to `child` (tokens, jids read from them).
    pub(crate) fn add(&mut self, parent: &str, child: &str, checks: &mut Checks) {
        let (Some(p), Some(c)) = (jid(parent), jid(child)) else {
            checks.violations.push("a token without a jid".into());
            return;
        };
        match self.children.get(&p) {
            Some(known) => {
                if *known != c {
                    self.doubled += 1;
                }
                checks.check(*known == c, || {
                    format!("parent jid {p} has two children: {known} and {c}")
                })
            }
            None => {
                self.children.insert(p, c);
                checks.passed += 1;
            }
        }
    }
}

/// `PRAGMA integrity_check` on the database file, opened read-only.
async fn integrity_check(path: &Path) -> anyhow::Result<String> {
    let options =
        sqlx::sqlite::SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))?
            .read_only(true);
    let mut conn = sqlx::SqliteConnection::connect_with(&options).await?;
    let rows: Vec<(String,)> =
        sqlx::query_as("PRAGMA integrity_check").fetch_all(&mut conn).await?;
    conn.close().await?;
    Ok(rows.into_iter().map(|r| r.0).collect::<Vec<_>>().join("; "))
}
