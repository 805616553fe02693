//! Fresh, isolated databases for tests: a SQLite file in a temporary directory, or a new
//! schema in the Postgres of `TEST_DATABASE_URL`. Also raw statements, for tests that
//! check or damage what lies behind the store.

use sqlx::postgres::PgPoolOptions;

use crate::{Backend, DatabaseUrl, PoolOptions, Row, Sql};

#[derive(Debug)]
pub struct TestDb {
    pub db: Backend,
    pub url: String,
    _dir: Option<tempfile::TempDir>,
}

pub async fn sqlite() -> TestDb {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
    let url = format!("sqlite://{}", dir.path().join("keygate.db").display());
    let db = open(&url).await;
    TestDb { db, url, _dir: Some(dir) }
}

/// A URL for a new, empty schema, or `None` when `TEST_DATABASE_URL` is unset. On CI
/// (`CI=true`) an unset URL fails the test instead of skipping it.
pub async fn postgres_url() -> Option<String> {
    let Ok(base) = std::env::var("TEST_DATABASE_URL") else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but TEST_DATABASE_URL is not set: the Postgres tests must run on CI"
        );
        eprintln!("TEST_DATABASE_URL is not set: skipping the Postgres variant");
        return None;
    };
    let schema = format!("kgt_{}", ulid::Ulid::new().to_string().to_lowercase());
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect(&base)
        .await
        .unwrap_or_else(|e| panic!("TEST_DATABASE_URL is set but unreachable: {e}"));
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&pool)
        .await
        .unwrap_or_else(|e| panic!("create schema: {e}"));
    pool.close().await;
    let sep = if base.contains('?') { '&' } else { '?' };
    Some(format!("{base}{sep}options=-c%20search_path%3D{schema}"))
}

pub async fn postgres() -> Option<TestDb> {
    let url = postgres_url().await?;
    let db = open(&url).await;
    Some(TestDb { db, url, _dir: None })
}

/// Like [`postgres`], with every connection through `proxy`.
pub async fn postgres_through(proxy: &FaultProxy) -> Option<TestDb> {
    let url = proxy.url(&postgres_url().await?);
    let db = open(&url).await;
    Some(TestDb { db, url, _dir: None })
}

async fn open(url: &str) -> Backend {
    let url = DatabaseUrl::from(url);
    let db = Backend::connect(&url, &PoolOptions::default())
        .await
        .unwrap_or_else(|e| panic!("connect {url}: {e}"));
    db.migrate().await.unwrap_or_else(|e| panic!("migrate: {e}"));
    db
}

/// Generates, for every case `name` (an `async fn name(db: Backend)` where the macro is
/// called), a module `name` with a `sqlite` and a `postgres` test, each on a fresh
/// database. The Postgres test is ignored unless the calling crate is built with
/// `cfg(postgres_tests)` (its build.rs sets it when `TEST_DATABASE_URL` is set then), and
/// returns early when `TEST_DATABASE_URL` is not set when it runs. With `multi_thread;`
/// first, each test runs on four worker threads, so that concurrent cases really run in
/// parallel.
#[macro_export]
macro_rules! store_cases {
    (multi_thread; $($case:ident),* $(,)?) => {
        $crate::store_cases!(@runtime (flavor = "multi_thread", worker_threads = 4) $($case),*);
    };
    (@runtime $runtime:tt $($case:ident),*) => {$(
        mod $case {
            #[tokio::test $runtime]
            async fn sqlite() {
                let test_db = $crate::testing::sqlite().await;
                super::$case(test_db.db.clone()).await;
                test_db.db.close().await;
            }

            #[cfg_attr(not(postgres_tests), ignore = "Postgres: needs TEST_DATABASE_URL when built (just test-pg)")]
            #[tokio::test $runtime]
            async fn postgres() {
                let Some(test_db) = $crate::testing::postgres().await else { return };
                super::$case(test_db.db.clone()).await;
                test_db.db.close().await;
            }
        }
    )*};
    ($($case:ident),* $(,)?) => {
        $crate::store_cases!(@runtime () $($case),*);
    };
}

/// Runs a raw statement on the writer; returns how many rows it changed.
pub async fn execute(db: &Backend, sql: Sql) -> u64 {
    db.write(sql).execute().await.unwrap_or_else(|e| panic!("raw statement: {e}"))
}

/// Every row a raw query returns, read on the writer (so it sees every commit).
pub async fn fetch_all<R: Row>(db: &Backend, sql: Sql) -> Vec<R> {
    db.write(sql).fetch_all().await.unwrap_or_else(|e| panic!("raw query: {e}"))
}

/// What [`FaultProxy`] does to the first write that carries every marker it was armed with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The write reaches Postgres and commits; its answer is dropped and the connection
    /// closed: committed, acknowledgement lost.
    LoseAnswer,
    /// The write never reaches Postgres and the connection is closed: not committed, but
    /// the client cannot know.
    Swallow,
    /// As `Swallow`, then the proxy is cut (see [`FaultProxy::cut`]) until restored: the
    /// outcome stays unknowable for as long.
    SwallowAndCut,
}

/// A TCP proxy in front of Postgres that reads the protocol's messages, so that a test can
/// make one write's commit go in doubt on purpose, exactly where it wants: the statement
/// whose `Bind` message carries every marker (bound values such as a session id or a
/// subject) is faulted as [`Fault`] says, once. It can also be cut (every connection
/// dropped, the port closed) and restored on the same port.
///
/// It answers an `SSLRequest` itself with "no", so connections through it are in clear.
#[derive(Debug)]
pub struct FaultProxy {
    addr: std::net::SocketAddr,
    upstream: String,
    shared: std::sync::Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    armed: std::sync::Mutex<Option<(Vec<Vec<u8>>, Fault)>>,
    fired: std::sync::atomic::AtomicUsize,
    accept: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    connections: std::sync::Mutex<Vec<tokio::task::AbortHandle>>,
}

impl FaultProxy {
    /// A proxy to the Postgres that `url` names (its first host and port).
    pub async fn start(url: &str) -> Self {
        let upstream = authority(url);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("bind: {e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("local addr: {e}"));
        let proxy = Self { addr, upstream, shared: std::sync::Arc::default() };
        proxy.serve(listener);
        proxy
    }

    /// `url` with its host and port replaced by the proxy's, and TLS off.
    pub fn url(&self, url: &str) -> String {
        let url = url.replacen(&authority(url), &self.addr.to_string(), 1);
        let sep = if url.contains('?') { '&' } else { '?' };
        format!("{url}{sep}sslmode=disable")
    }

    /// Faults the next write whose `Bind` carries every one of `markers`.
    pub fn arm(&self, markers: &[&str], fault: Fault) {
        let markers = markers.iter().map(|m| m.as_bytes().to_vec()).collect();
        *lock(&self.shared.armed) = Some((markers, fault));
    }

    /// How many faults were done so far.
    pub fn fired(&self) -> usize {
        self.shared.fired.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Stops accepting (the port is closed) and drops every connection.
    pub async fn cut(&self) {
        cut(&self.shared).await;
    }

    /// Accepts again, on the same port.
    pub async fn restore(&self) {
        let socket = tokio::net::TcpSocket::new_v4().unwrap_or_else(|e| panic!("socket: {e}"));
        socket.set_reuseaddr(true).unwrap_or_else(|e| panic!("reuseaddr: {e}"));
        socket.bind(self.addr).unwrap_or_else(|e| panic!("bind {}: {e}", self.addr));
        self.serve(socket.listen(128).unwrap_or_else(|e| panic!("listen: {e}")));
    }

    fn serve(&self, listener: tokio::net::TcpListener) {
        let (upstream, shared) = (self.upstream.clone(), self.shared.clone());
        let accepting = shared.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (upstream, shared) = (upstream.clone(), accepting.clone());
                let handle = tokio::spawn(async move {
                    if let Ok(server) = tokio::net::TcpStream::connect(upstream).await {
                        relay(client, server, &shared).await;
                    }
                });
                lock(&accepting.connections).push(handle.abort_handle());
            }
        });
        *lock(&shared.accept) = Some(task);
    }
}

fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn cut(shared: &Shared) {
    let accept = lock(&shared.accept).take();
    if let Some(task) = accept {
        task.abort();
        let _ = task.await;
    }
    for connection in std::mem::take(&mut *lock(&shared.connections)) {
        connection.abort();
    }
}

/// `host:port` of a database URL (5432 when it names no port).
fn authority(url: &str) -> String {
    let host = crate::database_url::split(url).map_or(url, |parts| parts.hosts);
    if host.contains(':') {
        host.to_owned()
    } else {
        format!("{host}:5432")
    }
}

/// The length of the first whole message in `buf` (a type byte and a length that counts
/// itself; `tagged` false for the startup phase, whose messages have no type byte).
fn message_len(buf: &[u8], tagged: bool) -> Option<usize> {
    let at = usize::from(tagged);
    let len = buf.get(at..at + 4)?;
    let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize + at;
    (buf.len() >= len).then_some(len)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

/// Relays one connection, message by message from the client, until either side closes or
/// a fault ends it.
async fn relay(
    mut client: tokio::net::TcpStream,
    mut server: tokio::net::TcpStream,
    shared: &Shared,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const SSL_REQUEST: u32 = 80_877_103;
    let (mut from_client, mut from_server) = (Vec::new(), Vec::new());
    let mut started = false;
    // The messages of a faulted statement, from its Bind up to its Sync.
    let mut held: Option<(Vec<u8>, Fault)> = None;
    // After a LoseAnswer write went out: the server's answers are dropped until it is ready
    // for the next query, then the connection ends.
    let mut losing = false;
    loop {
        let (mut up, mut down) = ([0u8; 16 * 1024], [0u8; 16 * 1024]);
        tokio::select! {
            read = client.read(&mut up) => {
                let n = match read { Ok(0) | Err(_) => return, Ok(n) => n };
                from_client.extend_from_slice(&up[..n]);
                let mut out = Vec::new();
                while let Some(len) = message_len(&from_client, started) {
                    let message: Vec<u8> = from_client.drain(..len).collect();
                    if !started {
                        let code = u32::from_be_bytes([message[4], message[5], message[6], message[7]]);
                        if code == SSL_REQUEST {
                            if client.write_all(b"N").await.is_err() { return }
                            continue;
                        }
                        started = true;
                        out.extend_from_slice(&message);
                        continue;
                    }
                    if let Some((statement, fault)) = held.as_mut() {
                        statement.extend_from_slice(&message);
                        if message[0] != b'S' {
                            continue;
                        }
                        let (statement, fault) = (std::mem::take(statement), *fault);
                        held = None;
                        shared.fired.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        match fault {
                            Fault::LoseAnswer => {
                                out.extend_from_slice(&statement);
                                losing = true;
                            }
                            Fault::Swallow => return,
                            Fault::SwallowAndCut => {
                                cut(shared).await;
                                return;
                            }
                        }
                        continue;
                    }
                    let fault = (message[0] == b'B').then(|| {
                        let mut armed = lock(&shared.armed);
                        let hit = armed.as_ref().is_some_and(|(markers, _)| {
                            markers.iter().all(|m| contains(&message, m))
                        });
                        if hit { armed.take().map(|(_, fault)| fault) } else { None }
                    });
                    match fault.flatten() {
                        Some(fault) => held = Some((message, fault)),
                        None => out.extend_from_slice(&message),
                    }
                }
                if !out.is_empty() && server.write_all(&out).await.is_err() { return }
            }
            read = server.read(&mut down) => {
                let n = match read { Ok(0) | Err(_) => return, Ok(n) => n };
                from_server.extend_from_slice(&down[..n]);
                let mut out = Vec::new();
                while let Some(len) = message_len(&from_server, true) {
                    let message: Vec<u8> = from_server.drain(..len).collect();
                    if !losing {
                        out.extend_from_slice(&message);
                    } else if message[0] == b'Z' {
                        // ReadyForQuery: the lost statement ran and its transaction ended.
                        return;
                    }
                }
                if !out.is_empty() && client.write_all(&out).await.is_err() { return }
            }
        }
    }
}
