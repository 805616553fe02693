//! A database that cannot take the write answers 503 with Retry-After, changes nothing,
//! and the client's token still works once the database is back: one renew against a held
//! lock, and renews under load while the database goes away (SQLite: the write lock is
//! taken; Postgres: the network to it is cut) and comes back.

use std::str::FromStr;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sqlx::Connection;

use crate::helpers::{assert_error, parts, spawn_app_with, Backend, CreatedApp, TestApp};

pub(crate) async fn with_lock_held(app: &TestApp, backend: Backend) -> Locked {
    match backend {
        Backend::Sqlite => lock_sqlite(&app.database_url).await,
        Backend::Postgres => {
            let mut conn = sqlx::PgConnection::connect(&app.database_url).await.unwrap();
            sqlx::query("BEGIN").execute(&mut conn).await.unwrap();
            sqlx::query("LOCK TABLE sessions IN ACCESS EXCLUSIVE MODE")
                .execute(&mut conn)
                .await
                .unwrap();
            Locked::Postgres(conn)
        }
    }
}

pub(crate) enum Locked {
    Sqlite(sqlx::SqliteConnection),
    Postgres(sqlx::PgConnection),
}

impl Locked {
    pub(crate) async fn release(self) {
        match self {
            Locked::Sqlite(mut conn) => {
                sqlx::query("ROLLBACK").execute(&mut conn).await.unwrap();
            }
            Locked::Postgres(mut conn) => {
                sqlx::query("ROLLBACK").execute(&mut conn).await.unwrap();
            }
        }
    }
}

async fn a_locked_database_answers_503_and_loses_nothing(backend: Backend) {
    let Some(app) = spawn_app_with(backend, |s| s.database_busy_timeout_ms = 300).await else {
        return;
    };
    let tenant = app.create_app(json!({"name": "outage", "reuse_grace": 0})).await;
    let signed = app.sign(&tenant, "pat").await;

    let lock = with_lock_held(&app, backend).await;
    let response = app
        .request(reqwest::Method::POST, &format!("/app/{}/renew", tenant.app_id))
        .header("Authorization", &tenant.app_key)
        .json(&json!({"refresh_token": signed["refresh_token"], "ip": "1.1.1.1", "useragent": "test-agent"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers().get("retry-after").map(|v| v.to_str().unwrap()), Some("1"));
    let (status, body) = crate::helpers::parts(response).await;
    assert_error(status, &body, 503, "unavailable");
    let body = json!({"sub": "quinn", "ip": "1.1.1.1", "useragent": "ua"});
    let (status, answer) = app.app_post(&tenant, "sign", &body).await;
    assert_error(status, &answer, 503, "unavailable");
    lock.release().await;

    // With reuse_grace 0 a consumed token would now be reuse: it was not consumed.
    let (status, renewed) = app.renew(&tenant, &signed["refresh_token"]).await;
    assert_eq!(status, 200, "{renewed}");
    assert!(app.verified(&tenant, &renewed["auth_token"]).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite() {
    a_locked_database_answers_503_and_loses_nothing(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres() {
    a_locked_database_answers_503_and_loses_nothing(Backend::Postgres).await;
}

// Under load: a database that goes away while renews are in flight.

/// Where the outage stands; each answer is filed by the phase at its send and at its answer.
const UP: u8 = 0;
const CUTTING: u8 = 1;
const DOWN: u8 = 2;
const RESTORING: u8 = 3;
const BACK: u8 = 4;
const DONE: u8 = 5;

/// One renew of the load.
#[derive(Debug)]
struct Answer {
    sent: u8,
    answered: u8,
    status: u16,
    retry_after: Option<String>,
    body: Value,
}

/// What one loader did: its answers, and its last refresh token (renewed with a 200).
#[derive(Debug)]
struct Loader {
    answers: Vec<Answer>,
    last: Value,
    /// Tokens that got a 503 and were then renewed with a 200.
    recovered: usize,
}

async fn renew_raw(
    app: &TestApp,
    tenant: &CreatedApp,
    token: &Value,
) -> (u16, Option<String>, Value) {
    let response = app
        .request(reqwest::Method::POST, &format!("/app/{}/renew", tenant.app_id))
        .header("Authorization", &tenant.app_key)
        .json(&json!({"refresh_token": token, "ip": "203.0.113.7", "useragent": "test-agent"}))
        .send()
        .await
        .unwrap_or_else(|e| panic!("the gateway itself must always answer: {e}"));
    let retry_after = response.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
    let (status, body) = crate::helpers::parts(response).await;
    (status, retry_after, body)
}

/// Renews one chain in a loop until the phase is `DONE` and its last token renewed. A 503
/// keeps the token, which is sent again.
async fn load(
    app: Arc<TestApp>,
    tenant: CreatedApp,
    phase: Arc<AtomicU8>,
    down_answers: Arc<AtomicUsize>,
) -> Loader {
    let mut token = app.sign(&tenant, "outage").await["refresh_token"].clone();
    let mut answers = Vec::new();
    let mut pending = false;
    let mut recovered = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let sent = phase.load(Ordering::SeqCst);
        if sent == DONE && !pending {
            break;
        }
        assert!(Instant::now() < deadline, "a token that got a 503 never renewed again");
        let (status, retry_after, body) = renew_raw(&app, &tenant, &token).await;
        let answered = phase.load(Ordering::SeqCst);
        if sent == DOWN && answered == DOWN {
            down_answers.fetch_add(1, Ordering::SeqCst);
        }
        if status == 200 {
            if pending {
                recovered += 1;
            }
            pending = false;
            token = body["refresh_token"].clone();
        } else {
            pending = true;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        answers.push(Answer { sent, answered, status, retry_after, body });
        if status != 200 && status != 503 {
            // Stop at once: the assertions report it.
            break;
        }
    }
    Loader { answers, last: token, recovered }
}

/// Runs `LOADERS` chains, calls `cut` once they all renewed, waits until enough answers came
/// back during the outage, calls `restore`, and checks every answer. `ready_while_down` is
/// what `/readyz` answers meanwhile: 503 when the database is gone, 200 when only its write
/// lock is taken (SQLite readers go on).
async fn outage_under_load<C, R>(
    app: TestApp,
    tenant: CreatedApp,
    cut: C,
    restore: R,
    ready_while_down: u16,
) where
    C: std::future::Future<Output = ()>,
    R: FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>,
{
    const LOADERS: usize = 6;
    let app = Arc::new(app);
    let phase = Arc::new(AtomicU8::new(UP));
    let down_answers = Arc::new(AtomicUsize::new(0));
    let loaders: Vec<_> = (0..LOADERS)
        .map(|_| {
            tokio::spawn(load(app.clone(), tenant.clone(), phase.clone(), down_answers.clone()))
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;

    phase.store(CUTTING, Ordering::SeqCst);
    cut.await;
    phase.store(DOWN, Ordering::SeqCst);
    // Not a timing assertion: the outage lasts until it has been observed enough.
    let until = Instant::now() + Duration::from_secs(20);
    while down_answers.load(Ordering::SeqCst) < 3 * LOADERS && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, _) =
        parts(app.request(reqwest::Method::GET, "/readyz").send().await.unwrap()).await;
    assert_eq!(status, ready_while_down, "/readyz during the outage");
    phase.store(RESTORING, Ordering::SeqCst);
    restore().await;
    phase.store(BACK, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(500)).await;
    phase.store(DONE, Ordering::SeqCst);

    let mut tally = std::collections::BTreeMap::<(u8, u8, u16), usize>::new();
    let mut recovered = 0;
    let mut lasts = Vec::new();
    for loader in loaders {
        let loader = loader.await.unwrap();
        for a in &loader.answers {
            *tally.entry((a.sent, a.answered, a.status)).or_default() += 1;
            assert!(
                a.status == 200 || a.status == 503,
                "(sent in phase {}, answered in {}) {} {}: only 200 or 503, never 401",
                a.sent,
                a.answered,
                a.status,
                a.body
            );
            if a.status == 503 {
                assert_error(a.status, &a.body, 503, "unavailable");
                assert_eq!(a.retry_after.as_deref(), Some("1"), "a 503 carries Retry-After");
            }
            if a.sent == DOWN && a.answered == DOWN {
                assert_eq!(a.status, 503, "sent and answered while the database was down");
            }
        }
        recovered += loader.recovered;
        lasts.push(loader.last);
    }
    eprintln!("answers by (sent phase, answered phase, status): {tally:?}");
    assert!(down_answers.load(Ordering::SeqCst) >= 3 * LOADERS, "the outage was observed");
    // Each loader ends only once its last token renewed: every token refused with a 503
    // renewed afterwards (with grace 0 on SQLite: the 503 did not consume it).
    assert!(recovered > 0, "tokens refused during the outage renewed afterwards");
    let (status, _) =
        parts(app.request(reqwest::Method::GET, "/readyz").send().await.unwrap()).await;
    assert_eq!(status, 200);
    // Every chain goes on: its last token is current, and nothing was revoked.
    for token in &lasts {
        let (status, body) = app.renew(&tenant, token).await;
        assert_eq!(status, 200, "{body}");
        assert!(app.verified(&tenant, &body["auth_token"]).await);
    }
}

/// SQLite: the write lock is taken by another connection while renews run. With grace 0,
/// a token answered 503 and then renewed with a 200 was not consumed by the failed renew.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_locked_under_load() {
    let app = spawn_app_with(Backend::Sqlite, |s| s.database_busy_timeout_ms = 200).await.unwrap();
    let tenant = app.create_app(json!({"name": "outage-load", "reuse_grace": 0})).await;
    let lock = Arc::new(tokio::sync::Mutex::new(None));
    let url = app.database_url.clone();
    let (taking, releasing) = (lock.clone(), lock.clone());
    let cut = async move {
        *taking.lock().await = Some(lock_sqlite(&url).await);
    };
    let restore = move || -> std::pin::Pin<Box<dyn std::future::Future<Output = ()>>> {
        Box::pin(async move {
            if let Some(held) = releasing.lock().await.take() {
                held.release().await;
            }
        })
    };
    outage_under_load(app, tenant, cut, restore, 200).await;
}

async fn lock_sqlite(url: &str) -> Locked {
    let options = sqlx::sqlite::SqliteConnectOptions::from_str(url).unwrap();
    let mut conn = sqlx::SqliteConnection::connect_with(&options).await.unwrap();
    // In WAL mode this takes the write lock: readers go on, writers wait.
    sqlx::query("BEGIN EXCLUSIVE").execute(&mut conn).await.unwrap();
    Locked::Sqlite(conn)
}

/// Postgres: a TCP proxy between the gateway and Postgres is cut (every connection dropped,
/// no new one accepted) while renews run, then started again. A rotation whose answer was
/// lost in the cut is in doubt, and is answered (200) only once the gateway has found out,
/// after the restore; the in-doubt timeout outlasts the outage. So the app runs without a
/// grace: a 503 for a rotation that had happened would make the retry reuse (401).
#[cfg_attr(
    not(postgres_tests),
    ignore = "Postgres: needs TEST_DATABASE_URL when built (just test-pg)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_cut_under_load() {
    let Ok(base) = std::env::var("TEST_DATABASE_URL") else { return };
    let upstream = authority(&base);
    let proxy = Proxy::start(upstream).await;
    let proxy_addr = proxy.addr.to_string();
    let Some(app) = spawn_app_with(Backend::Postgres, |s| {
        s.database_busy_timeout_ms = 300;
        s.database_in_doubt_timeout_ms = 30_000;
        s.postgres_max_connections = 8;
        let real = s.database_url.take().unwrap();
        s.database_url = Some(real.replacen(&authority(&real), &proxy_addr, 1));
    })
    .await
    else {
        return;
    };
    assert!(app.database_url.contains(&proxy_addr), "the gateway goes through the proxy");
    let tenant = app.create_app(json!({"name": "outage-cut", "reuse_grace": 0})).await;
    let proxy = Arc::new(proxy);
    let (cutting, restoring) = (proxy.clone(), proxy.clone());
    let cut = async move { cutting.cut().await };
    let restore = move || -> std::pin::Pin<Box<dyn std::future::Future<Output = ()>>> {
        Box::pin(async move { restoring.restore().await })
    };
    outage_under_load(app, tenant, cut, restore, 503).await;
}

/// Postgres: a renew that waits for a connection while the database cannot be reached is
/// answered as soon as the database is back. sqlx's pool waits between failed connects
/// twice as long each time, up to a fifth of the busy timeout (4 s here), so left to the pool
/// the renew would wait until its next connect, up to 4 s after the restore; the gateway's
/// follower (the URL has `target_session_attrs`) notices the host is back within 0.2 s and the
/// wait starts again at once. The restore comes 5.3 s into the outage, when the pool's next
/// connect is nearly 4 s away: a bound of 2 s tells the two apart with room to spare.
#[cfg_attr(
    not(postgres_tests),
    ignore = "Postgres: needs TEST_DATABASE_URL when built (just test-pg)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renew_waiting_for_the_database_goes_through_once_it_is_back() {
    let Ok(base) = std::env::var("TEST_DATABASE_URL") else { return };
    let proxy = Proxy::start(authority(&base)).await;
    let proxy_addr = proxy.addr.to_string();
    let Some(app) = spawn_app_with(Backend::Postgres, |s| {
        s.database_busy_timeout_ms = 20_000;
        s.database_in_doubt_timeout_ms = 30_000;
        let real = s.database_url.take().unwrap();
        let through = real.replacen(&authority(&real), &proxy_addr, 1);
        let joint = if through.contains('?') { '&' } else { '?' };
        s.database_url = Some(format!("{through}{joint}target_session_attrs=read-write"));
    })
    .await
    else {
        return;
    };
    let tenant = app.create_app(json!({"name": "outage-back", "reuse_grace": 0})).await;
    let token = app.sign(&tenant, "back").await["refresh_token"].clone();

    proxy.cut().await;
    let restore = async {
        tokio::time::sleep(Duration::from_millis(5_300)).await;
        proxy.restore().await;
        Instant::now()
    };
    let renew = async {
        let answer = app.renew(&tenant, &token).await;
        (answer, Instant::now())
    };
    let (restored_at, ((status, body), answered_at)) = tokio::join!(restore, renew);
    assert_eq!(status, 200, "the renew waited for the database: {body}");
    assert!(answered_at > restored_at, "answered only once the database was back");
    let after = answered_at - restored_at;
    eprintln!("answered {after:?} after the database was back");
    assert!(after < Duration::from_secs(2), "answered {after:?} after the database was back");
    let (status, body) = app.renew(&tenant, &body["refresh_token"]).await;
    assert_eq!(status, 200, "{body}");
}

/// `host:port` of a database URL.
fn authority(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    let host = rest.split(['/', '?']).next().unwrap();
    if host.contains(':') {
        host.to_owned()
    } else {
        format!("{host}:5432")
    }
}

/// A TCP proxy that can be cut: every connection dropped and the port closed, so that new
/// connections are refused, until it is restored on the same port.
#[derive(Debug)]
struct Proxy {
    addr: std::net::SocketAddr,
    upstream: String,
    accept: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    connections: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Proxy {
    async fn start(upstream: String) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let proxy = Self {
            addr,
            upstream,
            accept: std::sync::Mutex::new(None),
            connections: Arc::default(),
        };
        proxy.serve(listener);
        proxy
    }

    fn serve(&self, listener: tokio::net::TcpListener) {
        let (upstream, connections) = (self.upstream.clone(), self.connections.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let upstream = upstream.clone();
                let handle = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                connections.lock().unwrap().push(handle.abort_handle());
            }
        });
        *self.accept.lock().unwrap() = Some(task);
    }

    /// Stops accepting (the port is closed) and drops every connection.
    async fn cut(&self) {
        let accept = self.accept.lock().unwrap().take();
        if let Some(task) = accept {
            task.abort();
            let _ = task.await;
        }
        let connections = std::mem::take(&mut *self.connections.lock().unwrap());
        for connection in connections {
            connection.abort();
        }
    }

    /// Accepts again, on the same port.
    async fn restore(&self) {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_reuseaddr(true).unwrap();
        socket.bind(self.addr).unwrap();
        self.serve(socket.listen(128).unwrap());
    }
}

/// SQLite: renews that share a group-commit batch while another connection holds the write
/// lock all get their 503 after about one busy timeout. (A batch that failed on the lock used
/// to be retried job by job, each waiting the busy timeout again: 32 renews took 6.9 s to be
/// refused with a 200 ms timeout, and every write queued behind them waited as long.) The
/// bound is 20 busy timeouts, far above the ~2 that the answers take and far below the 33 of
/// a job-by-job retry, which busy timeouts, being minimum waits, cannot undercut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_write_lock_refuses_a_batch_at_once() {
    const BUSY_MS: u64 = 200;
    let app =
        spawn_app_with(Backend::Sqlite, |s| s.database_busy_timeout_ms = BUSY_MS).await.unwrap();
    let tenant = app.create_app(json!({"name": "batch-busy", "reuse_grace": 0})).await;
    let mut tokens = Vec::new();
    for _ in 0..32 {
        tokens.push(app.sign(&tenant, "busy").await["refresh_token"].clone());
    }
    let lock = with_lock_held(&app, Backend::Sqlite).await;
    let started = Instant::now();
    let answers =
        futures::future::join_all(tokens.iter().map(|token| app.renew(&tenant, token))).await;
    let took = started.elapsed();
    lock.release().await;
    for (status, body) in &answers {
        assert_error(*status, body, 503, "unavailable");
    }
    assert!(took < Duration::from_millis(20 * BUSY_MS), "32 renews refused in {took:?}");
    for token in &tokens {
        let (status, body) = app.renew(&tenant, token).await;
        assert_eq!(status, 200, "a 503 consumed nothing: {body}");
    }
}
