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

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use sqlx::Connection;

use crate::harness::{create_app, each, start_gateway, Api, Checks, Gateway, JidTree, Pair};

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
