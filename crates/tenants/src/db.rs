//! Opening the database named by a URL, and applying migrations.
//!
//! The backend is chosen once, here, from the URL scheme; every store then gets the pool of
//! its backend. SQLite runs in WAL mode with `synchronous=FULL` and exactly one writer
//! connection, so writes never contend inside the process.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use crate::StoreError;

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("../../migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("../../migrations/postgres");

/// How long a query waits for a connection (or SQLite for its lock) before the request is
/// answered 503.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The Postgres channel on which a change to an app, its signing keys or the root key is
/// announced (`NOTIFY`), so that every gateway on the database drops what it cached about
/// it at once instead of at the end of its cache TTL. Payloads: `app APP_ID`,
/// `keys APP_ID`, `root`.
pub const CHANGES_CHANNEL: &str = "keygate_changes";

/// Announces a committed change on [`CHANGES_CHANNEL`]. Best effort: an announcement that
/// is lost (the database went away just after the commit) is covered by the cache TTL.
pub async fn announce(pool: &PgPool, payload: &str) {
    let sent = sqlx::query("SELECT pg_notify($1, $2)")
        .bind(CHANGES_CHANNEL)
        .bind(payload)
        .execute(pool)
        .await;
    if let Err(error) = sent {
        tracing::warn!(%error, "could not announce a change to the other gateways; they see it when their caches expire");
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("unsupported database URL {0:?}: expected sqlite://PATH or postgres://…")]
    Scheme(String),
    #[error("could not open the database: {0}")]
    Connect(#[source] sqlx::Error),
    #[error("could not apply migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// The SQLite pools: one connection that writes, several that read.
#[derive(Clone)]
pub struct SqlitePools {
    pub writer: SqlitePool,
    pub reader: SqlitePool,
}

/// An open database of either backend.
#[derive(Clone)]
pub enum Database {
    Sqlite(SqlitePools),
    Postgres(PgPool),
}

impl fmt::Debug for Database {
    // The pools' own Debug would print connect options, and so a password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Sqlite(_) => f.write_str("Database::Sqlite"),
            Self::Postgres(_) => f.write_str("Database::Postgres"),
        }
    }
}

/// Tuning that callers may override; the defaults suit a 2-core machine.
#[derive(Debug, Clone)]
pub struct PoolOptions {
    pub sqlite_readers: u32,
    pub postgres_connections: u32,
    /// How long a statement waits for a lock (SQLite's busy timeout, Postgres'
    /// `lock_timeout`) or a request for a pooled connection, before failing as unavailable.
    pub busy_timeout: Duration,
}

impl Default for PoolOptions {
    fn default() -> Self {
        Self { sqlite_readers: 4, postgres_connections: 16, busy_timeout: BUSY_TIMEOUT }
    }
}

impl Database {
    pub async fn connect(url: &str, options: &PoolOptions) -> Result<Self, DbError> {
        if url.starts_with("sqlite:") {
            let connect = SqliteConnectOptions::from_str(url)
                .map_err(DbError::Connect)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Full)
                .foreign_keys(true)
                .busy_timeout(options.busy_timeout);
            let writer = SqlitePoolOptions::new()
                .max_connections(1)
                .acquire_timeout(options.busy_timeout)
                .connect_with(connect.clone())
                .await
                .map_err(DbError::Connect)?;
            let reader = SqlitePoolOptions::new()
                .max_connections(options.sqlite_readers.max(1))
                .acquire_timeout(options.busy_timeout)
                .connect_with(connect.create_if_missing(false))
                .await
                .map_err(DbError::Connect)?;
            Ok(Self::Sqlite(SqlitePools { writer, reader }))
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            let lock_timeout = format!("{}ms", options.busy_timeout.as_millis());
            let connect = PgConnectOptions::from_str(url)
                .map_err(DbError::Connect)?
                .options([("lock_timeout", lock_timeout.as_str())]);
            let pool = PgPoolOptions::new()
                .max_connections(options.postgres_connections.max(1))
                .acquire_timeout(options.busy_timeout)
                .connect_with(connect)
                .await
                .map_err(DbError::Connect)?;
            Ok(Self::Postgres(pool))
        } else {
            Err(DbError::Scheme(redact_url(url)))
        }
    }

    pub async fn migrate(&self) -> Result<(), DbError> {
        match self {
            Self::Sqlite(pools) => SQLITE_MIGRATIONS.run(&pools.writer).await?,
            Self::Postgres(pool) => POSTGRES_MIGRATIONS.run(pool).await?,
        }
        Ok(())
    }

    /// Whether the database answers a trivial query.
    pub async fn ping(&self) -> Result<(), StoreError> {
        match self {
            Self::Sqlite(pools) => {
                sqlx::query("SELECT 1").execute(&pools.reader).await?;
            }
            Self::Postgres(pool) => {
                sqlx::query("SELECT 1").execute(pool).await?;
            }
        }
        Ok(())
    }

    pub fn backend(&self) -> &'static str {
        match self {
            Self::Sqlite(_) => "sqlite",
            Self::Postgres(_) => "postgres",
        }
    }

    pub async fn close(&self) {
        match self {
            Self::Sqlite(pools) => {
                pools.reader.close().await;
                pools.writer.close().await;
            }
            Self::Postgres(pool) => pool.close().await,
        }
    }
}

/// The URL with any password replaced, fit for messages and logs.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    let Some((userinfo, host)) = rest.split_once('@') else { return url.to_owned() };
    match userinfo.split_once(':') {
        Some((user, _password)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}

/// Fresh, isolated databases for tests: a SQLite file in a temporary directory, or a new
/// schema in the Postgres of `TEST_DATABASE_URL`.
#[cfg(feature = "test-support")]
pub mod testing {
    use super::*;

    #[derive(Debug)]
    pub struct TestDb {
        pub db: Database,
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

    async fn open(url: &str) -> Database {
        let db = Database::connect(url, &PoolOptions::default())
            .await
            .unwrap_or_else(|e| panic!("connect {}: {e}", redact_url(url)));
        db.migrate().await.unwrap_or_else(|e| panic!("migrate: {e}"));
        db
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(redact_url("postgres://u:hunter2@db:5432/x"), "postgres://u:***@db:5432/x");
        assert_eq!(redact_url("sqlite://./a.db"), "sqlite://./a.db");
        let err = DbError::Scheme(redact_url("mysql://u:hunter2@db/x"));
        assert!(!err.to_string().contains("hunter2"));
    }
}
