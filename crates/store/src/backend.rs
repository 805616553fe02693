//! Opening the database named by a URL, applying migrations, and running statements.
//!
//! The backend is chosen once, here, from the URL scheme. SQLite runs in WAL mode with
//! `synchronous=FULL` and exactly one writer connection, so writes never contend inside the
//! process; Postgres has one pool for both. Every statement of the aggregate modules is
//! written once, with `$N` placeholders that both backends accept, and runs through
//! [`Backend::read`], [`Backend::write`] or a [`WriteTx`]: the only places that know which
//! backend is open.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{Postgres, Sqlite, Transaction};

use keygate_kernel::Change;

use crate::database_url::DatabaseUrl;
use crate::hosts::{Follower, Targets};
use crate::{in_doubt, StoreError};

mod sql;

use sql::arguments;
pub use sql::{Arg, Row, Sql};

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("../../migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("../../migrations/postgres");

/// How long a query waits for a connection (or SQLite for its lock) before the request is
/// answered 503.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a write whose outcome is in doubt (its answer lost while it committed) keeps
/// trying to learn that outcome before the request is answered 503.
pub const IN_DOUBT_TIMEOUT: Duration = Duration::from_secs(5);

/// The Postgres channel on which a change to an app, its signing keys or the root key is
/// announced (`NOTIFY`), so that every gateway on the database drops what it cached about
/// it at once instead of at the end of its cache TTL. Payloads: `app APP_ID`,
/// `keys APP_ID`, `root`.
pub const CHANGES_CHANNEL: &str = "keygate_changes";

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("unsupported database URL {0:?}: expected sqlite://PATH or postgres://…")]
    Scheme(String),
    #[error("could not open the database: {0}")]
    Connect(#[source] sqlx::Error),
    #[error("could not apply migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("invalid database URL: {0}")]
    Url(String),
    #[error("no database host qualifies: {0}")]
    NoHost(String),
}

/// Which database a [`Backend`] is open on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Sqlite,
    Postgres,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgres",
        }
    }
}

/// An open database of either backend: reader and writer pools (one pool on Postgres).
#[derive(Clone)]
pub struct Backend {
    pub(crate) pools: Pools,
    /// Chooses the host of a multi-host Postgres URL; `None` for one host.
    follower: Option<Arc<Follower>>,
    pub(crate) busy_timeout: Duration,
    pub(crate) in_doubt_timeout: Duration,
    /// How the writes found in doubt ended, for metrics.
    pub(crate) in_doubt: Arc<in_doubt::Counts>,
}

#[derive(Clone)]
pub(crate) enum Pools {
    /// One connection that writes, several that read.
    Sqlite {
        writer: SqlitePool,
        reader: SqlitePool,
    },
    Postgres(PgPool),
}

impl fmt::Debug for Backend {
    // The pools' own Debug would print connect options, and so a password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Backend({})", self.kind().as_str())
    }
}

/// Tuning that callers may override; the defaults suit a 2-core machine.
#[derive(Debug, Clone)]
pub struct PoolOptions {
    pub sqlite_readers: u32,
    pub postgres_connections: u32,
    /// How long a statement waits for a lock (SQLite's busy timeout, Postgres'
    /// `lock_timeout`) or a write for a connection to a writable host, before failing as
    /// unavailable (nothing was sent).
    pub busy_timeout: Duration,
    /// How long a write whose outcome is in doubt keeps trying to learn it.
    pub in_doubt_timeout: Duration,
}

impl Default for PoolOptions {
    fn default() -> Self {
        Self {
            sqlite_readers: 4,
            postgres_connections: 16,
            busy_timeout: BUSY_TIMEOUT,
            in_doubt_timeout: IN_DOUBT_TIMEOUT,
        }
    }
}

/// The occupancy of one connection pool, for metrics.
#[derive(Debug, Clone, Copy)]
pub struct PoolStats {
    pub name: &'static str,
    pub size: u32,
    pub idle: usize,
    pub max: u32,
}

impl Backend {
    pub async fn connect(url: &DatabaseUrl, options: &PoolOptions) -> Result<Self, DbError> {
        let (pools, follower) = Self::open(url, options).await?;
        Ok(Self {
            pools,
            follower,
            busy_timeout: options.busy_timeout,
            in_doubt_timeout: options.in_doubt_timeout,
            in_doubt: Arc::default(),
        })
    }

    async fn open(
        url: &DatabaseUrl,
        options: &PoolOptions,
    ) -> Result<(Pools, Option<Arc<Follower>>), DbError> {
        let raw = url.expose();
        if raw.starts_with("sqlite:") {
            let connect = SqliteConnectOptions::from_str(raw)
                .map_err(DbError::Connect)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Full)
                .foreign_keys(true)
                // A page cache of up to 16 MiB per connection (SQLite's default is 2 MiB),
                // taken only as pages are read: with thousands of apps renewing, the
                // sessions' pages stay in memory instead of being read again.
                .pragma("cache_size", "-16384")
                .busy_timeout(options.busy_timeout);
            // An idle SQLite connection is not pinged before it is lent out (sqlx pings by
            // default): it lives in this process and cannot have been hung up, and each ping
            // is a round trip to the connection's worker thread, a wake-up per statement.
            let pool = |max_connections| {
                SqlitePoolOptions::new()
                    .max_connections(max_connections)
                    .acquire_timeout(options.busy_timeout)
                    .test_before_acquire(false)
            };
            let writer = pool(1).connect_with(connect.clone()).await.map_err(DbError::Connect)?;
            let reader = pool(options.sqlite_readers.max(1))
                .connect_with(connect.create_if_missing(false))
                .await
                .map_err(DbError::Connect)?;
            Ok((Pools::Sqlite { writer, reader }, None))
        } else if raw.starts_with("postgres:") || raw.starts_with("postgresql:") {
            let lock_timeout = format!("{}ms", options.busy_timeout.as_millis());
            // Every statement is planned for the values it runs with, never from a generic
            // plan cached when a table was small: a batched rotation prepared while
            // `sessions` held a few rows kept scanning the whole table once it held many
            // (docs/benchmarks.md, "A plan cached on a small table").
            let session = |connect: PgConnectOptions| {
                connect.options([
                    ("lock_timeout", lock_timeout.as_str()),
                    ("plan_cache_mode", "force_custom_plan"),
                ])
            };
            let pool = PgPoolOptions::new()
                .max_connections(options.postgres_connections.max(1))
                .acquire_timeout(options.busy_timeout);
            let Some(targets) = Targets::parse(raw)? else {
                let connect = session(PgConnectOptions::from_str(raw).map_err(DbError::Connect)?);
                let pool = pool.connect_with(connect).await.map_err(DbError::Connect)?;
                return Ok((Pools::Postgres(pool), None));
            };
            // Several hosts (or a target_session_attrs): find the one that qualifies, open
            // the pool on it, and follow it from then on.
            let follower = Arc::new(Follower::new(targets.map_options(session)));
            let (_, watch) =
                follower.search().await.map_err(|reasons| DbError::NoHost(reasons.join("; ")))?;
            let admit = follower.clone();
            let pool = pool
                .after_connect(move |conn, _| {
                    let admit = admit.clone();
                    Box::pin(async move { admit.admit(conn).await })
                })
                .connect_with(follower.current_options())
                .await
                .map_err(DbError::Connect)?;
            tracing::info!(host = %follower.current_host(), "database host chosen");
            tokio::spawn(follower.clone().follow(pool.clone(), watch));
            Ok((Pools::Postgres(pool), Some(follower)))
        } else {
            Err(DbError::Scheme(url.to_string()))
        }
    }

    pub async fn migrate(&self) -> Result<(), DbError> {
        match &self.pools {
            Pools::Sqlite { writer, .. } => SQLITE_MIGRATIONS.run(writer).await?,
            Pools::Postgres(pool) => POSTGRES_MIGRATIONS.run(pool).await?,
        }
        Ok(())
    }

    /// Whether the database answers a trivial query.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.read(Sql::new("SELECT 1")).execute().await.map(drop)
    }

    pub fn kind(&self) -> Kind {
        match self.pools {
            Pools::Sqlite { .. } => Kind::Sqlite,
            Pools::Postgres(_) => Kind::Postgres,
        }
    }

    /// The backend's name: `sqlite` or `postgres`.
    pub fn backend(&self) -> &'static str {
        self.kind().as_str()
    }

    pub async fn close(&self) {
        match &self.pools {
            Pools::Sqlite { writer, reader } => {
                reader.close().await;
                writer.close().await;
            }
            Pools::Postgres(pool) => pool.close().await,
        }
    }

    pub fn pool_stats(&self) -> Vec<PoolStats> {
        fn stats<DB: sqlx::Database>(name: &'static str, pool: &sqlx::Pool<DB>) -> PoolStats {
            let max = pool.options().get_max_connections();
            PoolStats { name, size: pool.size(), idle: pool.num_idle(), max }
        }
        match &self.pools {
            Pools::Sqlite { writer, reader } => {
                vec![stats("sqlite_writer", writer), stats("sqlite_reader", reader)]
            }
            Pools::Postgres(pool) => vec![stats("postgres", pool)],
        }
    }

    /// A statement for the reader pool.
    pub(crate) fn read(&self, sql: Sql) -> Bound<'_> {
        match &self.pools {
            Pools::Sqlite { reader, .. } => Bound { on: On::Sqlite(reader), sql, db: self },
            Pools::Postgres(pool) => Bound { on: On::Postgres(pool), sql, db: self },
        }
    }

    /// A statement for the writer (on SQLite, its single writer connection), in autocommit.
    /// Its connection is acquired first, so that a failure to reach the database (nothing
    /// sent) is told apart from a failure after the statement was sent, which leaves the
    /// write in doubt ([`StoreError::InDoubt`]).
    pub(crate) fn write(&self, sql: Sql) -> Written<'_> {
        Written { sql, db: self }
    }

    /// How long a write waits for a connection to a writable host (and a statement for a
    /// lock) before it fails as unavailable, with nothing sent.
    pub fn busy_timeout(&self) -> Duration {
        self.busy_timeout
    }

    /// How long a write in doubt keeps trying to learn its outcome.
    pub fn in_doubt_timeout(&self) -> Duration {
        self.in_doubt_timeout
    }

    /// How the writes found in doubt so far ended, by write and outcome.
    pub fn in_doubt_counts(&self) -> Vec<in_doubt::Count> {
        self.in_doubt.snapshot()
    }

    /// A write transaction: `BEGIN IMMEDIATE` on SQLite, so that it holds the write lock
    /// from its first statement.
    pub(crate) async fn begin_write(&self) -> Result<WriteTx, StoreError> {
        let tx = match &self.pools {
            Pools::Sqlite { writer, .. } => {
                writer.begin_with("BEGIN IMMEDIATE").await.map(On::Sqlite)
            }
            // What `pool.begin()` does, with the wait for a connection that starts again
            // when the host is back: only that wait may be cut short, never a `BEGIN` in
            // flight (a connection given back mid-`BEGIN` would hold an open transaction).
            Pools::Postgres(pool) => match self.acquire(|| pool.acquire()).await {
                Ok(conn) => Transaction::begin(conn, None).await.map(On::Postgres),
                Err(error) => Err(error),
            },
        };
        let tx = self.noticed(tx.map_err(StoreError::from))?;
        Ok(WriteTx { tx, backend: self.clone(), announcements: Vec::new() })
    }

    /// Takes a connection with `acquire` (the pool's `acquire` or `begin`), within the busy
    /// timeout. sqlx's pool waits between two failed connects up to a fifth of that timeout
    /// (1 s by default), doubling from 10 ms, so after a failover or switchover a request
    /// could wait up to that long after the new primary took writes. With a host list or
    /// `target_session_attrs`, the follower notices the new primary (it searches every
    /// 0.2 s while none qualifies), and the wait starts again at once, on that host.
    pub(crate) async fn acquire<T, F, Fut>(&self, mut acquire: F) -> Result<T, sqlx::Error>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, sqlx::Error>>,
    {
        let Some(follower) = &self.follower else { return acquire().await };
        let deadline = tokio::time::Instant::now() + self.busy_timeout;
        loop {
            let found = follower.found();
            let attempt = tokio::time::timeout_at(deadline, acquire());
            tokio::select! {
                biased;
                result = attempt => return result.unwrap_or(Err(sqlx::Error::PoolTimedOut)),
                () = found => {}
            }
        }
    }

    /// Passes a statement's result on; a failure that looks like a lost host (unavailable)
    /// first asks the follower of a multi-host URL to look for the one that qualifies now.
    pub(crate) fn noticed<T>(&self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        if let (Err(error), Some(follower)) = (&result, &self.follower) {
            if error.is_unavailable() {
                follower.suspect();
            }
        }
        result
    }

    /// Announces a committed change on [`CHANGES_CHANNEL`] (Postgres; SQLite has one
    /// process, which drops its own caches). Best effort: an announcement that is lost (the
    /// database went away just after the commit) is covered by the cache TTL.
    pub async fn after_commit(&self, change: Change) {
        let Pools::Postgres(pool) = &self.pools else { return };
        let sent = sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANGES_CHANNEL)
            .bind(change.to_string())
            .execute(pool)
            .await;
        if let Err(error) = sent {
            tracing::warn!(%error, "could not announce a change to the other gateways; they see it when their caches expire");
        }
    }

    pub(crate) fn sqlite_writer(&self) -> Option<&SqlitePool> {
        match &self.pools {
            Pools::Sqlite { writer, .. } => Some(writer),
            Pools::Postgres(_) => None,
        }
    }

    /// Which of the URL's hosts the gateway writes to now (0 with a single host): a
    /// connection taken on another one is no longer used.
    pub(crate) fn host(&self) -> usize {
        self.follower.as_ref().map_or(0, |follower| follower.current())
    }

    pub(crate) fn postgres(&self) -> Option<&PgPool> {
        match &self.pools {
            Pools::Postgres(pool) => Some(pool),
            Pools::Sqlite { .. } => None,
        }
    }
}

/// A statement bound to the pool it runs on.
pub(crate) struct Bound<'a> {
    on: On<&'a SqlitePool, &'a PgPool>,
    sql: Sql,
    db: &'a Backend,
}

impl Bound<'_> {
    /// The connection the statement runs on, taken here rather than by the pool's
    /// executor: on Postgres its wait starts again when the follower finds the host (reads
    /// come first in most requests, and after a failover every cache is cold).
    async fn conn(&self) -> Result<Conn, sqlx::Error> {
        match self.on {
            On::Sqlite(pool) => pool.acquire().await.map(Conn::Sqlite),
            On::Postgres(pool) => self.db.acquire(|| pool.acquire()).await.map(Conn::Postgres),
        }
    }

    /// Runs the statement; returns how many rows it changed.
    pub(crate) async fn execute(self) -> Result<u64, StoreError> {
        let result = match self.conn().await {
            Ok(mut conn) => conn.on().execute(self.sql).await,
            Err(error) => Err(error),
        };
        self.db.noticed(result.map_err(StoreError::from))
    }

    pub(crate) async fn fetch_optional<R: Row>(self) -> Result<Option<R>, StoreError> {
        let result = match self.conn().await {
            Ok(mut conn) => conn.on().fetch_optional(self.sql).await,
            Err(error) => Err(error),
        };
        self.db.noticed(result.map_err(StoreError::from))
    }

    pub(crate) async fn fetch_all<R: Row>(self) -> Result<Vec<R>, StoreError> {
        let result = match self.conn().await {
            Ok(mut conn) => conn.on().fetch_all(self.sql).await,
            Err(error) => Err(error),
        };
        self.db.noticed(result.map_err(StoreError::from))
    }
}

/// A write statement, in autocommit, on a connection of the writer acquired for it.
pub(crate) struct Written<'a> {
    sql: Sql,
    db: &'a Backend,
}

/// A connection taken from a pool of either backend.
enum Conn {
    Sqlite(PoolConnection<Sqlite>),
    Postgres(PoolConnection<Postgres>),
}

impl Conn {
    fn on(&mut self) -> On<&mut SqliteConnection, &mut PgConnection> {
        match self {
            Self::Sqlite(conn) => On::Sqlite(&mut **conn),
            Self::Postgres(conn) => On::Postgres(&mut **conn),
        }
    }
}

impl Written<'_> {
    /// A connection of the writer: waits at most the busy timeout; a failure here is a
    /// known one (nothing was sent).
    async fn conn(&self) -> Result<Conn, StoreError> {
        let conn = match &self.db.pools {
            Pools::Sqlite { writer, .. } => writer.acquire().await.map(Conn::Sqlite),
            Pools::Postgres(pool) => self.db.acquire(|| pool.acquire()).await.map(Conn::Postgres),
        };
        self.db.noticed(conn.map_err(StoreError::from))
    }

    /// Runs the statement; returns how many rows it changed.
    pub(crate) async fn execute(self) -> Result<u64, StoreError> {
        let mut conn = self.conn().await?;
        let result = conn.on().execute(self.sql).await;
        self.db.noticed(result.map_err(StoreError::after_sent))
    }

    pub(crate) async fn fetch_optional<R: Row>(self) -> Result<Option<R>, StoreError> {
        let mut conn = self.conn().await?;
        let result = conn.on().fetch_optional(self.sql).await;
        self.db.noticed(result.map_err(StoreError::after_sent))
    }

    pub(crate) async fn fetch_all<R: Row>(self) -> Result<Vec<R>, StoreError> {
        let mut conn = self.conn().await?;
        let result = conn.on().fetch_all(self.sql).await;
        self.db.noticed(result.map_err(StoreError::after_sent))
    }
}

/// What a statement runs on, of either backend: a pool, a transaction, or its connection.
enum On<S, P> {
    Sqlite(S),
    Postgres(P),
}

impl<'c, S, P> On<S, P>
where
    S: sqlx::Executor<'c, Database = Sqlite>,
    P: sqlx::Executor<'c, Database = Postgres>,
{
    async fn execute(self, Sql { text, args }: Sql) -> Result<u64, sqlx::Error> {
        Ok(match self {
            Self::Sqlite(on) => sqlx::query_with(&text, arguments::<Sqlite>(args)?)
                .execute(on)
                .await?
                .rows_affected(),
            Self::Postgres(on) => sqlx::query_with(&text, arguments::<Postgres>(args)?)
                .execute(on)
                .await?
                .rows_affected(),
        })
    }

    async fn fetch_optional<R: Row>(self, sql: Sql) -> Result<Option<R>, sqlx::Error> {
        let Sql { text, args } = sql;
        Ok(match self {
            Self::Sqlite(on) => {
                sqlx::query_as_with(&text, arguments::<Sqlite>(args)?).fetch_optional(on).await?
            }
            Self::Postgres(on) => {
                sqlx::query_as_with(&text, arguments::<Postgres>(args)?).fetch_optional(on).await?
            }
        })
    }

    async fn fetch_all<R: Row>(self, Sql { text, args }: Sql) -> Result<Vec<R>, sqlx::Error> {
        Ok(match self {
            Self::Sqlite(on) => {
                sqlx::query_as_with(&text, arguments::<Sqlite>(args)?).fetch_all(on).await?
            }
            Self::Postgres(on) => {
                sqlx::query_as_with(&text, arguments::<Postgres>(args)?).fetch_all(on).await?
            }
        })
    }
}

/// A write transaction of either backend. Changes to announce to the other gateways are
/// collected with [`WriteTx::after_commit`] and sent once the transaction has committed.
pub(crate) struct WriteTx {
    tx: On<Transaction<'static, Sqlite>, Transaction<'static, Postgres>>,
    backend: Backend,
    announcements: Vec<Change>,
}

impl fmt::Debug for WriteTx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WriteTx({})", self.backend.kind().as_str())
    }
}

impl WriteTx {
    fn on(&mut self) -> On<&mut SqliteConnection, &mut PgConnection> {
        match &mut self.tx {
            On::Sqlite(tx) => On::Sqlite(&mut **tx),
            On::Postgres(tx) => On::Postgres(&mut **tx),
        }
    }

    pub(crate) async fn execute(&mut self, sql: Sql) -> Result<u64, StoreError> {
        let result = self.on().execute(sql).await;
        self.backend.noticed(result.map_err(StoreError::from))
    }

    pub(crate) async fn fetch_optional<R: Row>(
        &mut self,
        sql: Sql,
    ) -> Result<Option<R>, StoreError> {
        let result = self.on().fetch_optional(sql).await;
        self.backend.noticed(result.map_err(StoreError::from))
    }

    pub(crate) async fn fetch_all<R: Row>(&mut self, sql: Sql) -> Result<Vec<R>, StoreError> {
        let result = self.on().fetch_all(sql).await;
        self.backend.noticed(result.map_err(StoreError::from))
    }

    /// Which backend the transaction runs on.
    pub(crate) fn kind(&self) -> Kind {
        self.backend.kind()
    }

    /// Serialises this transaction with every other that locks the same `key`, until it
    /// ends: a transaction-scoped advisory lock on Postgres. SQLite needs none, since its
    /// write transactions (`BEGIN IMMEDIATE`) already run one at a time.
    pub(crate) async fn lock(&mut self, key: &str) -> Result<(), StoreError> {
        if let On::Postgres(tx) = &mut self.tx {
            sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
                .bind(key)
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }

    /// Announces `payload` on [`CHANGES_CHANNEL`] once the transaction has committed.
    pub(crate) fn after_commit(&mut self, change: Change) {
        self.announcements.push(change);
    }

    pub(crate) async fn commit(self) -> Result<(), StoreError> {
        let committed = match self.tx {
            On::Sqlite(tx) => tx.commit().await,
            On::Postgres(tx) => tx.commit().await,
        };
        // An error answered to COMMIT rolled the transaction back; a lost answer leaves it
        // in doubt.
        self.backend.noticed(committed.map_err(StoreError::after_sent))?;
        for change in &self.announcements {
            self.backend.after_commit(*change).await;
        }
        Ok(())
    }
}
