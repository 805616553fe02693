use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rand::Rng;
use tokio::sync::Semaphore;

use crate::client::{Chain, Client, Status};
use crate::procstat::{peak_rss_mib, CpuMeter};
use crate::report::{Report, Tally};
use crate::{Mode, RunArgs};

/// Subjects are numbered across the whole run, so every session is distinct.
static SUBJECTS: AtomicU64 = AtomicU64::new(0);

fn next_subject() -> u64 {
    SUBJECTS.fetch_add(1, Ordering::Relaxed)
}

/// One request of the run's mode on `chain`, which a renew advances.
async fn one(client: &Client, mode: Mode, chain: &mut Chain) -> Status {
    let mode = match mode {
        Mode::Mixed => match rand::thread_rng().gen_range(0..10) {
            0..=4 => Mode::Renew,
            5..=8 => Mode::Verify,
            _ => Mode::Sign,
        },
        other => other,
    };
    match mode {
        Mode::Renew => match client.renew(chain).await {
            Ok(next) => {
                *chain = next;
                200
            }
            Err(status) => status,
        },
        Mode::Verify => client.verify(chain).await,
        Mode::Sign | Mode::Mixed => match client.sign(next_subject()).await {
            Ok(_) => 200,
            Err(status) => status,
        },
    }
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

pub async fn run(args: &RunArgs) -> anyhow::Result<Report> {
    if args.connections == 0 {
        bail!("--connections must be at least 1");
    }
    let client = Client::new(&args.url, &args.app, &args.app_key, args.connections)?;
    let chains = open_chains(&client, args.connections).await?;
    let (tally, seconds, cpu) = match args.rate {
        None => closed_loop(args, &client, chains).await?,
        Some(rate) => open_loop(args, &client, chains, rate).await?,
    };
    Ok(Report {
        label: args.label.clone(),
        mode: args.mode,
        connections: args.connections,
        rate: args.rate,
        seconds,
        tally,
        server_cpu_pct: cpu,
        server_peak_rss_mib: args.pid.and_then(peak_rss_mib),
    })
}

type Measured = (Tally, f64, Option<f64>);

/// C connections, each sending its next request as soon as the last one is answered.
async fn closed_loop(
    args: &RunArgs,
    client: &Client,
    chains: Vec<Chain>,
) -> anyhow::Result<Measured> {
    let start = Instant::now();
    let measure_from = start + args.warmup;
    let end = measure_from + args.duration;
    let mut tasks = tokio::task::JoinSet::new();
    for mut chain in chains {
        let client = client.clone();
        let mode = args.mode;
        tasks.spawn(async move {
            let mut tally = Tally::default();
            loop {
                let sent = Instant::now();
                if sent >= end {
                    break;
                }
                let status = one(&client, mode, &mut chain).await;
                if sent >= measure_from {
                    tally.record(status, sent.elapsed().as_micros() as u64);
                }
                if status == 0 {
                    // No answer: don't spin on a dead server.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            tally
        });
    }
    tokio::time::sleep_until(measure_from.into()).await;
    let cpu = args.pid.and_then(CpuMeter::start);
    tokio::time::sleep_until(end.into()).await;
    let cpu_pct = cpu.and_then(|m| m.percent());
    let mut tally = Tally::default();
    while let Some(result) = tasks.join_next().await {
        tally.merge(&result.context("a load task failed")?);
    }
    Ok((tally, args.duration.as_secs_f64(), cpu_pct))
}

/// Requests at a fixed rate; each one's latency counts from when it was due, so time spent
/// waiting for a free chain or connection is part of it.
async fn open_loop(
    args: &RunArgs,
    client: &Client,
    chains: Vec<Chain>,
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
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0u32.. {
        let due = start + interval * i;
        if due >= end {
            break;
        }
        if cpu.is_none() && due >= measure_from {
            cpu = Some(args.pid.and_then(CpuMeter::start));
        }
        tokio::time::sleep_until(due.into()).await;
        let (client, pool, slots, tally, mode) =
            (client.clone(), pool.clone(), slots.clone(), tally.clone(), args.mode);
        tasks.spawn(async move {
            let Ok(_permit) = slots.acquire_owned().await else { return };
            let taken = pool.lock().unwrap_or_else(|p| p.into_inner()).pop();
            let Some(mut chain) = taken else { return };
            let status = one(&client, mode, &mut chain).await;
            let micros = due.elapsed().as_micros() as u64;
            pool.lock().unwrap_or_else(|p| p.into_inner()).push(chain);
            if due >= measure_from {
                tally.lock().unwrap_or_else(|p| p.into_inner()).record(status, micros);
            }
        });
        // Reap finished tasks as we go so the set stays small.
        while tasks.try_join_next().is_some() {}
    }
    let cpu_pct = cpu.flatten().and_then(|m| m.percent());
    while tasks.join_next().await.is_some() {}
    let tally = tally.lock().unwrap_or_else(|p| p.into_inner()).clone();
    Ok((tally, args.duration.as_secs_f64(), cpu_pct))
}
