//! `keygate-bench tenants`: many apps on one gateway. Creates N apps through the root API,
//! opens one session in each, restarts the gateway, then measures:
//!
//! 1. the cold round: one renew per app at c = 64, right after the restart (every app's
//!    record, key check and signing key read afresh): the time until every app was served,
//!    and the latency meanwhile, while the JWKS of one app is fetched every 50 ms;
//! 2. renews round-robin across every app at saturation, against renews of a single app,
//!    in the same run: req/s and the gateway's CPU per renew;
//! 3. the gateway's RSS;
//! 4. wrong app keys: the gateway's CPU per refused request, and that they meet the
//!    per-address failure limit (403, then 429); and, in this process, the CPU of one
//!    wrong-key check in the tenants crate (keyed hash) against one argon2id check.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures::stream::{self, StreamExt};
use serde_json::{json, Value};

use crate::harness::{start_gateway, ROOT_KEY};
use crate::procstat::{peak_rss_mib, CpuMeter};
use crate::report::histogram;

#[derive(Debug, Clone, clap::Args)]
pub struct TenantsArgs {
    /// The keygate binary to run.
    #[arg(long, default_value = "target/release/keygate")]
    keygate: PathBuf,
    /// How many apps.
    #[arg(long, default_value_t = 10_000)]
    apps: usize,
    /// A Postgres URL (a fresh database or schema) instead of the embedded SQLite.
    #[arg(long, env = "KEYGATE_TENANTS_DATABASE_URL")]
    database_url: Option<String>,
    /// How long each saturation run measures.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    duration: Duration,
    /// Connections of the cold round and the saturation runs.
    #[arg(long, short = 'c', default_value_t = 64)]
    connections: usize,
    /// Keep the gateway's directory (its logs) instead of removing it.
    #[arg(long)]
    keep: bool,
}

/// One app of the run: its id and key, and the refresh token its session holds now.
struct Tenant {
    app_id: String,
    app_key: String,
    refresh_token: Mutex<String>,
}

pub async fn run(args: &TenantsArgs) -> anyhow::Result<Value> {
    let dir = std::env::temp_dir().join(format!("keygate-tenants-{}", ulid::Ulid::new()));
    std::fs::create_dir_all(&dir)?;
    let result = measure(args, &dir).await;
    if args.keep {
        eprintln!("tenants: kept {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

fn http(connections: usize) -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .pool_max_idle_per_host(connections)
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(30))
        .build()
        .context("building the HTTP client")
}

async fn measure(args: &TenantsArgs, dir: &std::path::Path) -> anyhow::Result<Value> {
    let keygate = std::fs::canonicalize(&args.keygate).with_context(|| {
        format!("{} (build it with cargo build --release)", args.keygate.display())
    })?;
    let client = http(args.connections)?;
    let db = args.database_url.as_deref();
    let gateway = start_gateway(&keygate, dir, db, 0, &[])?;

    // ---- setup: N apps through the root API, one session each
    let started = Instant::now();
    let created = AtomicUsize::new(0);
    let tenants: Vec<anyhow::Result<(String, String)>> = stream::iter(0..args.apps)
        .map(|n| {
            let (client, url, created) = (&client, &gateway.url, &created);
            async move {
                let body = json!({"name": format!("tenant-{n:05}")});
                let answer =
                    post_json(client, &format!("{url}/root/apps"), ROOT_KEY, &body).await?;
                let done = created.fetch_add(1, Ordering::Relaxed) + 1;
                if done % 1000 == 0 {
                    eprintln!("tenants: created {done}/{} apps", args.apps);
                }
                Ok((text(&answer, "app_id")?, text(&answer, "app_key")?))
            }
        })
        .buffered(16)
        .collect()
        .await;
    let create_seconds = started.elapsed().as_secs_f64();
    let tenants: Vec<(String, String)> = tenants.into_iter().collect::<anyhow::Result<_>>()?;
    eprintln!("tenants: {} apps in {create_seconds:.1} s; opening one session in each", args.apps);
    let started = Instant::now();
    let signed: Vec<anyhow::Result<Tenant>> = stream::iter(tenants)
        .map(|(app_id, app_key)| {
            let (client, url) = (&client, &gateway.url);
            async move {
                let body = json!({"sub": "tenant-user", "ip": "198.51.100.7", "useragent": "keygate-bench"});
                let answer =
                    post_json(client, &format!("{url}/app/{app_id}/sign"), &app_key, &body).await?;
                let refresh_token = Mutex::new(text(&answer, "refresh_token")?);
                Ok(Tenant { app_id, app_key, refresh_token })
            }
        })
        .buffered(args.connections)
        .collect()
        .await;
    let tenants: Arc<Vec<Tenant>> = Arc::new(signed.into_iter().collect::<anyhow::Result<_>>()?);
    let sign_seconds = started.elapsed().as_secs_f64();
    eprintln!("tenants: {} sessions in {sign_seconds:.1} s; restarting the gateway", tenants.len());

    // ---- restart, then one renew per app at once: the cold round
    gateway.kill();
    let gateway = start_gateway(&keygate, dir, db, 1, &[])?;
    let ready = Instant::now();
    let pid = gateway.pid();
    let client = http(args.connections)?;
    let jwks = JwksProbe::start(&client, &gateway.url, &tenants[0].app_id);
    let cpu = CpuMeter::start(pid);
    let mut latency = histogram();
    let mut failed = 0u64;
    let results: Vec<(bool, u64)> = stream::iter(tenants.iter())
        .map(|tenant| renew_timed(&client, &gateway.url, tenant))
        .buffer_unordered(args.connections)
        .collect()
        .await;
    let all_served = ready.elapsed().as_secs_f64();
    let cold_cpu = cpu.as_ref().and_then(CpuMeter::seconds);
    for (ok, micros) in results {
        latency.record(micros.max(1)).ok();
        failed += u64::from(!ok);
    }
    let jwks = jwks.stop().await;
    eprintln!(
        "tenants: after the restart every app was served in {all_served:.2} s (p99 {:.1} ms)",
        latency.value_at_quantile(0.99) as f64 / 1000.0
    );

    // ---- saturation: round-robin across every app, then one app, in this run
    let round_robin = saturate(&client, &gateway.url, &tenants, pid, args, Spread::AllApps).await;
    let single = saturate(&client, &gateway.url, &tenants, pid, args, Spread::OneApp).await?;
    let round_robin = round_robin?;
    let rss_now = current_rss_mib(pid);
    let rss_peak = peak_rss_mib(pid);

    // ---- wrong app keys through HTTP
    let wrong = wrong_keys(&client, &gateway.url, &tenants[0].app_id, pid).await;
    gateway.kill();
    let check = wrong_key_check_cost(dir).await?;

    let ratio = round_robin.rps / single.rps.max(f64::MIN_POSITIVE);
    let report = json!({
        "apps": tenants.len(),
        "backend": if db.is_some() { "postgres" } else { "sqlite" },
        "setup": {"create_seconds": round2(create_seconds), "apps_per_second": round2(tenants.len() as f64 / create_seconds),
                  "sign_seconds": round2(sign_seconds)},
        "cold": {"all_served_seconds": round2(all_served), "connections": args.connections,
                 "p50_ms": ms(latency.value_at_quantile(0.5)), "p99_ms": ms(latency.value_at_quantile(0.99)),
                 "max_ms": ms(latency.max()), "failed": failed,
                 "gateway_cpu_seconds": cold_cpu.map(round2)},
        "jwks_during_cold": jwks,
        "round_robin": round_robin.json(),
        "single_app": single.json(),
        "round_robin_vs_single": round2(ratio),
        "rss_mib": {"now": rss_now.map(round2), "peak": rss_peak.map(round2)},
        "wrong_key_http": wrong,
        "wrong_key_check": check,
    });
    if failed > 0 || round_robin.failed > 0 || single.failed > 0 {
        bail!("renews failed: {report}");
    }
    Ok(report)
}

async fn post_json(
    client: &reqwest::Client,
    url: &str,
    authorization: &str,
    body: &Value,
) -> anyhow::Result<Value> {
    let response =
        client.post(url).header("Authorization", authorization).json(body).send().await?;
    let status = response.status();
    let answer: Value = response.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        bail!("POST {url}: {status} {answer}");
    }
    Ok(answer)
}

fn text(answer: &Value, field: &str) -> anyhow::Result<String> {
    answer[field].as_str().map(str::to_owned).with_context(|| format!("no {field} in {answer}"))
}

/// Renews the tenant's session once; whether it worked, and its latency in µs.
async fn renew_timed(client: &reqwest::Client, url: &str, tenant: &Tenant) -> (bool, u64) {
    let token = tenant.refresh_token.lock().map(|t| t.clone()).unwrap_or_default();
    let started = Instant::now();
    let body = json!({"refresh_token": token, "ip": "198.51.100.7", "useragent": "keygate-bench"});
    let renewed =
        post_json(client, &format!("{url}/app/{}/renew", tenant.app_id), &tenant.app_key, &body)
            .await;
    let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    match renewed.and_then(|answer| text(&answer, "refresh_token")) {
        Ok(next) => {
            if let Ok(mut token) = tenant.refresh_token.lock() {
                *token = next;
            }
            (true, micros)
        }
        Err(err) => {
            eprintln!("tenants: a renew of {} failed: {err:#}", tenant.app_id);
            (false, micros)
        }
    }
}

/// Fetches one app's JWKS every 50 ms until stopped: latencies and failures.
struct JwksProbe {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Value>,
}

impl JwksProbe {
    fn start(client: &reqwest::Client, url: &str, app_id: &str) -> Self {
        let (client, url) = (client.clone(), format!("{url}/app/{app_id}/jwks.json"));
        let stop = Arc::new(AtomicBool::new(false));
        let done = stop.clone();
        let task = tokio::spawn(async move {
            let (mut latency, mut failed) = (histogram(), 0u64);
            while !done.load(Ordering::Relaxed) {
                let started = Instant::now();
                let ok = match client.get(&url).send().await {
                    Ok(response) => {
                        response.status().is_success() && response.bytes().await.is_ok()
                    }
                    Err(_) => false,
                };
                latency
                    .record(u64::try_from(started.elapsed().as_micros()).unwrap_or(1).max(1))
                    .ok();
                failed += u64::from(!ok);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            json!({"fetches": latency.len(), "failed": failed,
                   "p50_ms": ms(latency.value_at_quantile(0.5)), "max_ms": ms(latency.max())})
        });
        Self { stop, task }
    }

    async fn stop(self) -> Value {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap_or(Value::Null)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Spread {
    /// Each renew takes the next app in turn.
    AllApps,
    /// Every connection renews its own session of the first app.
    OneApp,
}

struct Saturation {
    spread: Spread,
    renews: u64,
    failed: u64,
    seconds: f64,
    rps: f64,
    cpu_us_per_renew: Option<f64>,
    p99_ms: f64,
}

impl Saturation {
    fn json(&self) -> Value {
        json!({"spread": format!("{:?}", self.spread), "renews": self.renews, "failed": self.failed,
               "seconds": round2(self.seconds), "rps": self.rps.round(),
               "cpu_us_per_renew": self.cpu_us_per_renew.map(|v| v.round()), "p99_ms": self.p99_ms})
    }
}

async fn saturate(
    client: &reqwest::Client,
    url: &str,
    tenants: &Arc<Vec<Tenant>>,
    pid: u32,
    args: &TenantsArgs,
    spread: Spread,
) -> anyhow::Result<Saturation> {
    let lanes: Arc<Vec<Tenant>> = match spread {
        Spread::AllApps => tenants.clone(),
        Spread::OneApp => {
            // One session per connection, all of the first app.
            let first = &tenants[0];
            let mut lanes = Vec::with_capacity(args.connections);
            for n in 0..args.connections {
                let body = json!({"sub": format!("single-{n}"), "ip": "198.51.100.7", "useragent": "keygate-bench"});
                let answer = post_json(
                    client,
                    &format!("{url}/app/{}/sign", first.app_id),
                    &first.app_key,
                    &body,
                )
                .await?;
                lanes.push(Tenant {
                    app_id: first.app_id.clone(),
                    app_key: first.app_key.clone(),
                    refresh_token: Mutex::new(text(&answer, "refresh_token")?),
                });
            }
            Arc::new(lanes)
        }
    };
    let next = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let counted = Arc::new(AtomicBool::new(false));
    let (renews, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let latency = Arc::new(Mutex::new(histogram()));
    let mut workers = Vec::new();
    for lane in 0..args.connections {
        let (client, url, lanes, next, stop, counted, renews, failed, latency) = (
            client.clone(),
            url.to_owned(),
            lanes.clone(),
            next.clone(),
            stop.clone(),
            counted.clone(),
            renews.clone(),
            failed.clone(),
            latency.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut local = histogram();
            while !stop.load(Ordering::Relaxed) {
                let index = match spread {
                    Spread::AllApps => next.fetch_add(1, Ordering::Relaxed) % lanes.len(),
                    Spread::OneApp => lane,
                };
                let (ok, micros) = renew_timed(&client, &url, &lanes[index]).await;
                if counted.load(Ordering::Relaxed) {
                    renews.fetch_add(1, Ordering::Relaxed);
                    failed.fetch_add(u64::from(!ok), Ordering::Relaxed);
                    local.record(micros.max(1)).ok();
                }
            }
            if let Ok(mut all) = latency.lock() {
                all.add(&local).ok();
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await; // warm-up
    let cpu = CpuMeter::start(pid);
    counted.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(args.duration).await;
    counted.store(false, Ordering::Relaxed);
    let seconds = started.elapsed().as_secs_f64();
    let cpu_seconds = cpu.as_ref().and_then(CpuMeter::seconds);
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.ok();
    }
    let renews = renews.load(Ordering::Relaxed);
    let p99_ms = latency.lock().map(|h| ms(h.value_at_quantile(0.99))).unwrap_or(0.0);
    let saturation = Saturation {
        spread,
        renews,
        failed: failed.load(Ordering::Relaxed),
        seconds,
        rps: renews as f64 / seconds,
        cpu_us_per_renew: cpu_seconds.map(|s| s * 1e6 / renews.max(1) as f64),
        p99_ms,
    };
    eprintln!(
        "tenants: {spread:?}: {:.0} renews/s, {:.0} µs gateway CPU per renew",
        saturation.rps,
        saturation.cpu_us_per_renew.unwrap_or(f64::NAN)
    );
    Ok(saturation)
}

/// Wrong app keys from one address, 4 at a time for 3 s: the answers (403 until the
/// per-address limit, then 429) and the gateway's CPU per refused request.
async fn wrong_keys(client: &reqwest::Client, url: &str, app_id: &str, pid: u32) -> Value {
    let cpu = CpuMeter::start(pid);
    let started = Instant::now();
    let (mut forbidden, mut limited, mut other) = (0u64, 0u64, 0u64);
    let mut n = 0u64;
    while started.elapsed() < Duration::from_secs(3) {
        let batch = (0..4).map(|i| {
            let key = format!("kg_{:043}", n * 4 + i);
            client
                .post(format!("{url}/app/{app_id}/renew"))
                .header("Authorization", key)
                .json(&json!({"refresh_token": "x", "ip": "198.51.100.7", "useragent": "wrong"}))
                .send()
        });
        for answer in futures::future::join_all(batch).await {
            match answer.map(|r| r.status().as_u16()) {
                Ok(403) => forbidden += 1,
                Ok(429) => limited += 1,
                _ => other += 1,
            }
        }
        n += 1;
    }
    let requests = forbidden + limited + other;
    let cpu_us = cpu
        .as_ref()
        .and_then(CpuMeter::seconds)
        .map(|s| (s * 1e6 / requests.max(1) as f64).round());
    json!({"requests": requests, "forbidden_403": forbidden, "rate_limited_429": limited,
           "other": other, "gateway_cpu_us_per_request": cpu_us})
}

/// One wrong-key check in the tenants crate, in this process: the keyed hash (many checks,
/// timed together) against argon2id (a few).
async fn wrong_key_check_cost(dir: &std::path::Path) -> anyhow::Result<Value> {
    use keygate_tenants::{hash_secret, AppKey, AppKeyHashes, KeyHashKey, Tenants, TenantsConfig};
    let url = format!("sqlite://{}", dir.join("check.db").display());
    let db = keygate_store::Backend::connect(&url.into(), &keygate_store::PoolOptions::default())
        .await?;
    db.migrate().await?;
    let tenants =
        Tenants::new(keygate_tenants::app_store(&db), TenantsConfig::new(KeyHashKey::generate()));
    let (record, key) = tenants
        .create_app("wrong-key-check", &keygate_tenants::SettingsPatch::default(), 1_700_000_000)
        .await
        .context("creating an app")?;
    let app_id = record.app.app_id.to_string();
    let wrong: Vec<String> = (0..1000).map(|_| AppKey::generate().expose().to_owned()).collect();
    tenants.authenticate_app(&app_id, Some(key.expose()), 1_700_000_000).await.ok(); // cached
    let rounds = 200;
    let started = Instant::now();
    for _ in 0..rounds {
        for presented in &wrong {
            let denied = tenants.authenticate_app(&app_id, Some(presented), 1_700_000_000).await;
            if denied.is_ok() {
                bail!("a wrong key was accepted");
            }
        }
    }
    let keyed_us = started.elapsed().as_secs_f64() * 1e6 / (rounds * wrong.len()) as f64;
    // The same app with an argon2id hash, as apps made before the keyed form.
    let hashes = AppKeyHashes {
        current: hash_secret(key.expose())?,
        previous: None,
        previous_expires_at: None,
    };
    tenants.store().set_app_key(record.app.app_id, &hashes, 1_700_000_000).await?;
    tenants.forget(record.app.app_id);
    let started = Instant::now();
    for presented in wrong.iter().take(10) {
        tenants.authenticate_app(&app_id, Some(presented), 1_700_000_000).await.ok();
    }
    let argon2_us = started.elapsed().as_secs_f64() * 1e6 / 10.0;
    db.close().await;
    Ok(json!({"keyed_us": (keyed_us * 100.0).round() / 100.0, "argon2id_us": argon2_us.round(),
              "checks_timed": rounds * wrong.len(),
              "note": "wall time of a check of an app in the cache, one thread: the key check, the app lookup, and the well-formedness test"}))
}

fn current_rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn ms(micros: u64) -> f64 {
    (micros as f64 / 10.0).round() / 100.0
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

/// The report as a few readable lines.
pub fn table(report: &Value) -> String {
    let r = report;
    format!(
        "apps: {apps} ({backend}); created at {aps} apps/s\n\
         after a restart: every app served once in {all} s at c={c} (p50 {p50} ms, p99 {p99} ms, {failed} failed)\n\
         JWKS meanwhile: {jf} fetches, {jfail} failed, max {jmax} ms\n\
         round-robin over all apps: {rr} renews/s, {rrcpu} µs CPU per renew (p99 {rrp99} ms)\n\
         one app: {one} renews/s, {onecpu} µs CPU per renew (p99 {onep99} ms); ratio {ratio}\n\
         RSS: {rss} MiB now, {peak} MiB peak\n\
         wrong app keys: {w403} × 403 then {w429} × 429, {wcpu} µs gateway CPU per request; one check: {keyed} µs keyed, {argon} µs argon2id\n",
        apps = r["apps"], backend = r["backend"].as_str().unwrap_or("?"), aps = r["setup"]["apps_per_second"],
        all = r["cold"]["all_served_seconds"], c = r["cold"]["connections"], p50 = r["cold"]["p50_ms"],
        p99 = r["cold"]["p99_ms"], failed = r["cold"]["failed"],
        jf = r["jwks_during_cold"]["fetches"], jfail = r["jwks_during_cold"]["failed"], jmax = r["jwks_during_cold"]["max_ms"],
        rr = r["round_robin"]["rps"], rrcpu = r["round_robin"]["cpu_us_per_renew"], rrp99 = r["round_robin"]["p99_ms"],
        one = r["single_app"]["rps"], onecpu = r["single_app"]["cpu_us_per_renew"], onep99 = r["single_app"]["p99_ms"],
        ratio = r["round_robin_vs_single"], rss = r["rss_mib"]["now"], peak = r["rss_mib"]["peak"],
        w403 = r["wrong_key_http"]["forbidden_403"], w429 = r["wrong_key_http"]["rate_limited_429"],
        wcpu = r["wrong_key_http"]["gateway_cpu_us_per_request"], keyed = r["wrong_key_check"]["keyed_us"],
        argon = r["wrong_key_check"]["argon2id_us"],
    )
}
