//! Fresh, isolated databases for tests: a SQLite file in a temporary directory, or a new
//! schema in the Postgres of `TEST_DATABASE_URL`. Also raw statements, for tests that
//! check or damage what lies behind the store.

use sqlx::postgres::PgPoolOptions;

use crate::{redact_url, Backend, PoolOptions, Row, Sql};

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

async fn open(url: &str) -> Backend {
    let db = Backend::connect(url, &PoolOptions::default())
        .await
        .unwrap_or_else(|e| panic!("connect {}: {e}", redact_url(url)));
    db.migrate().await.unwrap_or_else(|e| panic!("migrate: {e}"));
    db
}

/// Runs a raw statement on the writer; returns how many rows it changed.
pub async fn execute(db: &Backend, sql: Sql) -> u64 {
    db.write(sql).execute().await.unwrap_or_else(|e| panic!("raw statement: {e}"))
}

/// Every row a raw query returns, read on the writer (so it sees every commit).
pub async fn fetch_all<R: Row>(db: &Backend, sql: Sql) -> Vec<R> {
    db.write(sql).fetch_all().await.unwrap_or_else(|e| panic!("raw query: {e}"))
}
