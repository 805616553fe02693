use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rand::Rng;
use tokio::sync::Semaphore;

use crate::client::{Chain, Client, OidcChains, OidcClient, Status};
use crate::dpop::DeviceKey;
use crate::procstat::{peak_rss_mib, CpuMeter, NamedMeter, ServerCpu};
use crate::report::{Report, Tally};
use crate::{Mode, RunArgs, Target};

/// Subjects are numbered across the whole run, so every session is distinct.
static SUBJECTS: AtomicU64 = AtomicU64::new(0);

fn next_subject() -> u64 {
    SUBJECTS.fetch_add(1, Ordering::Relaxed)
}

/// What the load talks to.
#[derive(Debug, Clone)]
enum Driver {
    Keygate(Client),
    Oidc(OidcClient),
}

/// A chain the load drives, and every refresh token it has sent: a refresh token is
/// single-use, so sending one twice is a bug of the run (or of the server, if it handed the
/// same token out again).
#[derive(Debug)]
struct Driven {
    chain: Chain,
    sent: HashSet<String>,
}

impl Driven {
    fn new(chain: Chain) -> Self {
        Self { chain, sent: HashSet::new() }
    }
}

/// The outcome of one request; `renew` is `Some(resent)` for a renew.
struct Outcome {
    status: Status,
    renew: Option<bool>,
}

impl Outcome {
    /// Counts it: the correctness counters always, the latency and status when measured.
    fn count(&self, tally: &mut Tally, measured: bool, micros: u64) {
        if let Some(resent) = self.renew {
            tally.renewed(self.status == 200, resent);
        }
        if measured {
            tally.record(self.status, micros);
        }
    }
}

/// One request of the run's mode on `driven`, which a renew advances.
async fn one(driver: &Driver, mode: Mode, driven: &mut Driven) -> Outcome {
    let mode = match mode {
        Mode::Mixed => match rand::thread_rng().gen_range(0..10) {
            0..=4 => Mode::Renew,
            5..=8 => Mode::Verify,
            _ => Mode::Sign,
        },
        // The driver is the token endpoint's client, or binds its sessions, already.
        Mode::OauthRefresh | Mode::DpopRenew => Mode::Renew,
        other => other,
    };
    if mode == Mode::Renew {
        let resent = !driven.sent.insert(driven.chain.refresh_token.clone());
        let result = match driver {
            Driver::Keygate(client) => client.renew(&driven.chain).await,
            Driver::Oidc(client) => client.renew(&driven.chain).await,
        };
        let status = match result {
            Ok(next) => {
                driven.chain = next;
                200
            }
            Err(status) => status,
        };
        return Outcome { status, renew: Some(resent) };
    }
    // `run` lets only renew through for the oidc target.
    let Driver::Keygate(client) = driver else { return Outcome { status: 0, renew: None } };
    let status = match mode {
        Mode::Verify => client.verify(&driven.chain).await,
        _ => match client.sign(next_subject()).await {
            Ok(_) => 200,
            Err(status) => status,
        },
    };
    Outcome { status, renew: None }
}

/// Opens one session per connection before the clock starts.
async fn open_chains(client: &Client, n: usize) -> anyhow::Result<Vec<Chain>> {
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n {
        let client = client.clone();
        tasks.spawn(async move { client.sign(next_subject()).await });
    }
    let mut chains = Vec::with_capacity(n);
    while let Some(result) = tasks.join_next().await {
        match result.context("a sign task failed")? {
            Ok(chain) => chains.push(chain),
            Err(status) => bail!("could not open a session to drive (HTTP {status}): check --url, --app and the app key"),
        }
    }
    Ok(chains)
}

/// The client and one chain per connection, for the target.
async fn connect(args: &RunArgs) -> anyhow::Result<(Driver, Vec<Chain>)> {
    match args.target {
        Target::Keygate => {
            let (Some(app), Some(app_key)) = (&args.app, &args.app_key) else {
                bail!("the keygate target needs --app and --app-key");
            };
            let mut client = Client::new(&args.url, app, app_key, args.connections)?;
            if args.mode == Mode::DpopRenew {
                client = client.with_device(&args.url, app, DeviceKey::generate()?);
            }
            let chains = open_chains(&client, args.connections).await?;
            if args.mode == Mode::OauthRefresh {
                let oauth = OidcClient::keygate(&args.url, app, app_key, args.connections)?;
                return Ok((Driver::Oidc(oauth), chains));
            }
            Ok((Driver::Keygate(client), chains))
        }
        Target::Oidc => {
            if args.mode != Mode::Renew {
                bail!("the oidc target drives --mode renew only");
            }
            let Some(path) = &args.chains else { bail!("the oidc target needs --chains FILE") };
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading the chains file {}", path.display()))?;
            let file = OidcChains::parse(&text)
                .with_context(|| format!("the chains file {}", path.display()))?;
            if file.refresh_tokens.len() < args.connections {
                bail!(
                    "the chains file {} holds {} refresh tokens; {} connections need one each",
                    path.display(),
                    file.refresh_tokens.len(),
                    args.connections
                );
            }
            let client = OidcClient::new(&args.url, &file, args.connections)?;
            let chains = file.refresh_tokens[..args.connections]
                .iter()
                .map(|token| OidcClient::chain(token))
                .collect();
            Ok((Driver::Oidc(client), chains))
        }
    }
}

pub async fn run(args: &RunArgs) -> anyhow::Result<Report> {
    if args.connections == 0 {
        bail!("--connections must be at least 1");
    }
    let (driver, chains) = connect(args).await?;
    let chains: Vec<Driven> = chains.into_iter().map(Driven::new).collect();
    let (tally, seconds, cpu) = match args.rate {
        None => closed_loop(args, &driver, chains).await?,
        Some(rate) => open_loop(args, &driver, chains, rate).await?,
    };
    Ok(Report {
        target: args.target,
        label: args.label.clone(),
        mode: args.mode,
        connections: args.connections,
        rate: args.rate,
        seconds,
        tally,
        server_cpu: cpu,
        server_peak_rss_mib: args.pid.and_then(peak_rss_mib),
    })
}

type Measured = (Tally, f64, ServerCpu);

/// C connections, each sending its next request as soon as the last one is answered.
async fn closed_loop(
    args: &RunArgs,
    driver: &Driver,
    chains: Vec<Driven>,
) -> anyhow::Result<Measured> {
    let start = Instant::now();
    let measure_from = start + args.warmup;
    let end = measure_from + args.duration;
    let mut tasks = tokio::task::JoinSet::new();
    for mut driven in chains {
        let driver = driver.clone();
        let mode = args.mode;
        tasks.spawn(async move {
            let mut tally = Tally::default();
            loop {
                let sent = Instant::now();
                if sent >= end {
                    break;
                }
                let outcome = one(&driver, mode, &mut driven).await;
                outcome.count(&mut tally, sent >= measure_from, sent.elapsed().as_micros() as u64);
                if outcome.status == 0 {
                    // No answer: don't spin on a dead server.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            tally
        });
    }
    tokio::time::sleep_until(measure_from.into()).await;
    let cpu = args.pid.and_then(CpuMeter::start);
    let database = args.db_process.as_deref().map(NamedMeter::start);
    tokio::time::sleep_until(end.into()).await;
    let percent = cpu.as_ref().and_then(CpuMeter::percent);
    let mut tally = Tally::default();
    while let Some(result) = tasks.join_next().await {
        tally.merge(&result.context("a load task failed")?);
    }
    Ok((
        tally,
        args.duration.as_secs_f64(),
        ServerCpu::read(cpu.as_ref(), database.as_ref(), percent),
    ))
}

/// Requests at a fixed rate; each one's latency counts from when it was due, so time spent
/// waiting for a free chain or connection is part of it.
async fn open_loop(
    args: &RunArgs,
    driver: &Driver,
    chains: Vec<Driven>,
    rate: u64,
) -> anyhow::Result<Measured> {
    if rate == 0 {
        bail!("--rate must be at least 1");
    }
    let pool = Arc::new(Mutex::new(chains));
    let slots = Arc::new(Semaphore::new(args.connections));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let start = Instant::now();
    let measure_from = start + args.warmup;
    let end = measure_from + args.duration;
    let mut cpu = None;
    let mut database = None;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0u32.. {
        let due = start + interval * i;
        if due >= end {
            break;
        }
        if cpu.is_none() && due >= measure_from {
            cpu = Some(args.pid.and_then(CpuMeter::start));
            database = args.db_process.as_deref().map(NamedMeter::start);
        }
        tokio::time::sleep_until(due.into()).await;
        let (driver, pool, slots, tally, mode) =
            (driver.clone(), pool.clone(), slots.clone(), tally.clone(), args.mode);
        tasks.spawn(async move {
            let Ok(_permit) = slots.acquire_owned().await else { return };
            let taken = pool.lock().unwrap_or_else(|p| p.into_inner()).pop();
            let Some(mut driven) = taken else { return };
            let outcome = one(&driver, mode, &mut driven).await;
            let micros = due.elapsed().as_micros() as u64;
            pool.lock().unwrap_or_else(|p| p.into_inner()).push(driven);
            let mut tally = tally.lock().unwrap_or_else(|p| p.into_inner());
            outcome.count(&mut tally, due >= measure_from, micros);
        });
        // Reap finished tasks as we go so the set stays small.
        while tasks.try_join_next().is_some() {}
    }
    let cpu = cpu.flatten();
    let percent = cpu.as_ref().and_then(CpuMeter::percent);
    while tasks.join_next().await.is_some() {}
    let server_cpu = ServerCpu::read(cpu.as_ref(), database.as_ref(), percent);
    let tally = tally.lock().unwrap_or_else(|p| p.into_inner()).clone();
    Ok((tally, args.duration.as_secs_f64(), server_cpu))
}
