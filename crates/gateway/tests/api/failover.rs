//! A Postgres failover, end to end. The test starts its own primary and synchronous
//! standby (`bench/pgpair.sh`, from the installed PostgreSQL server binaries) and two
//! gateways on the multi-host URL of both (`postgres://…@a,b/…?target_session_attrs=read-write`).
//! While renews run through both gateways, the primary is stopped at once and the standby
//! promoted. Every answer meanwhile is a 200 or a 503 with `Retry-After`, never a 401 or
//! another 5xx; both gateways move to the new primary and every chain goes on; and a change
//! made through one gateway reaches the other's cache at once, so its `LISTEN` is back.
//!
//! Skipped, with a message, where the server binaries are absent; on CI that fails instead.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::{assert_error, parts, payload, spawn_app_with, Backend, CreatedApp, TestApp};

/// A primary and a synchronous standby in a temp dir, stopped and removed on drop.
struct Pair {
    dir: PathBuf,
    url: String,
    _root: tempfile::TempDir,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench/pgpair.sh")
}

/// Whether `initdb` and friends are installed (where `bench/pgpair.sh` looks for them).
fn server_binaries() -> bool {
    if let Ok(bin) = std::env::var("PG_BIN") {
        return Path::new(&bin).join("initdb").exists();
    }
    std::fs::read_dir("/usr/lib/postgresql")
        .map(|versions| versions.flatten().any(|v| v.path().join("bin/initdb").exists()))
        .unwrap_or(false)
}

fn pgpair(args: &[&str]) -> String {
    let out = Command::new("bash").arg(script()).args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench/pgpair.sh {args:?} failed: {stderr}");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

impl Pair {
    fn start() -> Option<Self> {
        if !server_binaries() {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI=true but the PostgreSQL server binaries (initdb) are not installed: the failover test must run on CI"
            );
            eprintln!("no PostgreSQL server binaries (initdb) under /usr/lib/postgresql or PG_BIN: skipping the failover test");
            return None;
        }
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("pair");
        let url = pgpair(&["start", dir.to_str().unwrap()]);
        Some(Self { dir, url, _root: root })
    }

    /// Stops the primary at once, promotes the standby, and makes the old primary its
    /// standby; returns the script's line (`primary=b writable_after=0.31`).
    fn failover(&self) -> String {
        pgpair(&["failover", self.dir.to_str().unwrap()])
    }

    /// The first half of a failover: the primary stopped at once, no node takes writes.
    fn crash(&self) {
        pgpair(&["crash", self.dir.to_str().unwrap()]);
    }

    /// The second half: the standby promoted, the old primary its standby.
    fn promote(&self) -> String {
        pgpair(&["promote", self.dir.to_str().unwrap()])
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        let _ = Command::new("bash").arg(script()).arg("stop").arg(&self.dir).status();
    }
}

/// The settings of a gateway on the pair's URL.
fn on_pair(s: &mut keygate_gateway::Settings, url: &str) {
    s.database_url = Some(url.to_owned());
    // A request that finds no writable host is answered within a second.
    s.database_busy_timeout_ms = 1000;
    // Only an announcement can refresh the caches within the test.
    s.cache_ttl = 600;
}

/// Two gateways on the pair's URL with the same master and root keys.
async fn gateways(url: &str) -> (TestApp, TestApp) {
    let adjust = on_pair;
    let first = spawn_app_with(Backend::Sqlite, |s| adjust(s, url)).await.unwrap();
    let master = std::fs::read_to_string(first.data_dir().join("master.key")).unwrap();
    let root_key = first.root_key.clone();
    let mut second = spawn_app_with(Backend::Sqlite, |s| {
        adjust(s, url);
        s.master_key = Some(master.trim().into());
        s.root_key = Some(root_key.into());
    })
    .await
    .unwrap();
    second.root_key = first.root_key.clone();
    (first, second)
}

/// What one chain saw: every status, and its last refresh token.
struct Chain {
    statuses: Vec<u16>,
    last: Value,
    after_failover: usize,
}

/// Renews one chain, alternating between the gateways, until `done` and at least three
/// renews succeeded after the failover. A 503 must carry `Retry-After`; its token is sent
/// again (within the app's grace a commit whose answer was lost is answered again).
async fn renew_chain(
    gateways: Arc<(TestApp, TestApp)>,
    app: CreatedApp,
    failed_over: Arc<AtomicBool>,
    done: Arc<AtomicBool>,
) -> Chain {
    let mut token = gateways.0.sign(&app, "failover").await["refresh_token"].clone();
    let (mut statuses, mut after_failover) = (Vec::new(), 0);
    let deadline = Instant::now() + Duration::from_secs(90);
    for turn in 0.. {
        if done.load(Ordering::SeqCst) && after_failover >= 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the chain never renewed after the failover: {statuses:?}"
        );
        let gateway = if turn % 2 == 0 { &gateways.0 } else { &gateways.1 };
        let was_over = failed_over.load(Ordering::SeqCst);
        let (status, retry_after, body) = renew_once(gateway, &app, &token).await;
        statuses.push(status);
        match status {
            200 => {
                token = body["refresh_token"].clone();
                after_failover += usize::from(was_over);
            }
            503 => {
                assert_eq!(body["error"], "unavailable", "{body}");
                assert!(retry_after.is_some(), "a 503 without Retry-After: {body}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => panic!("renew answered {other} during the failover: {body}"),
        }
    }
    Chain { statuses, last: token, after_failover }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_follow_the_primary_through_a_failover_and_lose_nothing() {
    let Some(pair) = Pair::start() else { return };
    let (a, b) = gateways(&pair.url).await;
    let app = a.create_app(json!({"name": "failover", "reuse_grace": 30})).await;
    let gateways = Arc::new((a, b));
    let (failed_over, done) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
    let chains: Vec<_> = (0..4)
        .map(|_| {
            tokio::spawn(renew_chain(
                gateways.clone(),
                app.clone(),
                failed_over.clone(),
                done.clone(),
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;

    let started = Instant::now();
    let moved = tokio::task::spawn_blocking(move || {
        let line = pair.failover();
        (pair, line)
    });
    let (pair, line) = moved.await.unwrap();
    failed_over.store(true, Ordering::SeqCst);
    eprintln!("failover: {line} (script took {:?})", started.elapsed());
    done.store(true, Ordering::SeqCst);

    let mut unavailable = 0;
    let mut lasts = Vec::new();
    for chain in chains {
        let chain = chain.await.unwrap();
        assert!(chain.after_failover >= 3);
        unavailable += chain.statuses.iter().filter(|&&s| s == 503).count();
        lasts.push(chain.last);
    }
    eprintln!(
        "503s during the failover, over 4 chains: {unavailable}; back after {:?}",
        started.elapsed()
    );
    let (a, b) = (&gateways.0, &gateways.1);

    // Every chain's head renews once more, through the other gateway too: nothing was lost.
    for (i, last) in lasts.iter().enumerate() {
        let gateway = if i % 2 == 0 { b } else { a };
        let (status, body) = gateway.renew(&app, last).await;
        assert_eq!(status, 200, "{body}");
        assert!(a.verified(&app, &body["auth_token"]).await);
        assert_ne!(payload(&body["refresh_token"])["jid"], payload(last)["jid"]);
    }

    // b caches the app key now; a rotates it: b must refuse the old key at once, which it
    // hears only through LISTEN on the new primary (its cache would last 600 s).
    let body = json!({"sub": "frank", "ip": "203.0.113.7", "useragent": "test-agent"});
    assert_eq!(b.app_post(&app, "sign", &body).await.0, 200);
    let response = a
        .root(Method::POST, &format!("/root/apps/{}/rotate-app-key", app.app_id))
        .json(&json!({"grace": 0}))
        .send()
        .await
        .unwrap();
    let (status, rotated) = parts(response).await;
    assert_eq!(status, 200, "{rotated}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while b.app_post(&app, "sign", &body).await.0 != 403 {
        assert!(
            Instant::now() < deadline,
            "b still takes the old app key 5 s after the rotation: its LISTEN is not back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for gateway in [a, b] {
        let ready = gateway.request(Method::GET, "/readyz").send().await.unwrap();
        assert_eq!(ready.status(), 200);
    }
    drop(pair);
}

/// A renew through `gateway`: its status, `Retry-After` and body.
async fn renew_once(
    gateway: &TestApp,
    app: &CreatedApp,
    token: &Value,
) -> (u16, Option<String>, Value) {
    let response = gateway
        .request(Method::POST, &format!("/app/{}/renew", app.app_id))
        .header("Authorization", &app.app_key)
        .json(&json!({"refresh_token": token, "ip": "203.0.113.7", "useragent": "test-agent"}))
        .send()
        .await
        .unwrap();
    let retry_after = response.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
    let (status, body) = parts(response).await;
    (status, retry_after, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_no_host_takes_writes_requests_get_503_and_consume_nothing() {
    let Some(pair) = Pair::start() else { return };
    let gateway = spawn_app_with(Backend::Sqlite, |s| on_pair(s, &pair.url)).await.unwrap();
    // With no grace, a token consumed by a failed renew could never renew again.
    let app = gateway.create_app(json!({"name": "no-primary", "reuse_grace": 0})).await;
    let token = gateway.sign(&app, "ivy").await["refresh_token"].clone();

    let pair = tokio::task::spawn_blocking(move || {
        pair.crash();
        pair
    })
    .await
    .unwrap();
    for _ in 0..3 {
        let (status, retry_after, body) = renew_once(&gateway, &app, &token).await;
        assert_error(status, &body, 503, "unavailable");
        assert_eq!(retry_after.as_deref(), Some("1"), "{body}");
    }
    let body = json!({"sub": "ivy", "ip": "203.0.113.7", "useragent": "test-agent"});
    let (status, answer) = gateway.app_post(&app, "sign", &body).await;
    assert_error(status, &answer, 503, "unavailable");
    let ready = gateway.request(Method::GET, "/readyz").send().await.unwrap();
    assert_eq!(ready.status(), 503);

    let pair = tokio::task::spawn_blocking(move || {
        let line = pair.promote();
        eprintln!("promoted: {line}");
        pair
    })
    .await
    .unwrap();
    // The gateway moves to the promoted node; the token that got the 503s still renews.
    let deadline = Instant::now() + Duration::from_secs(30);
    let renewed = loop {
        let (status, _, body) = renew_once(&gateway, &app, &token).await;
        match status {
            200 => break body,
            503 => assert!(Instant::now() < deadline, "no renew within 30 s of the promotion"),
            other => panic!("renew answered {other} after the promotion: {body}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(gateway.verified(&app, &renewed["auth_token"]).await);
    let (status, body) = gateway.renew(&app, &renewed["refresh_token"]).await;
    assert_eq!(status, 200, "{body}");
    drop(pair);
}
