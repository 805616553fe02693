use std::sync::Arc;

use async_trait::async_trait;

use crate::db::Database;
use crate::{App, AppId, AppKeyHashes, AppRecord, AppSettings, OnReuse, StoreError};

mod postgres;
mod sqlite;

pub use postgres::PgAppStore;
pub use sqlite::SqliteAppStore;

/// Persistence of apps and instance-wide settings.
#[async_trait]
pub trait AppStore: Send + Sync + std::fmt::Debug {
    /// Fails with `Conflict` when the name is taken.
    async fn insert_app(&self, record: &AppRecord) -> Result<(), StoreError>;
    async fn get_app(&self, app_id: AppId) -> Result<Option<AppRecord>, StoreError>;
    async fn find_app_by_name(&self, name: &str) -> Result<Option<AppRecord>, StoreError>;
    async fn list_apps(&self) -> Result<Vec<AppRecord>, StoreError>;
    /// Writes the name and settings. `NotFound` if the app is gone, `Conflict` when the new
    /// name is taken.
    async fn update_app(&self, app: &App) -> Result<(), StoreError>;
    async fn set_app_key(
        &self,
        app_id: AppId,
        hashes: &AppKeyHashes,
        now: i64,
    ) -> Result<(), StoreError>;
    /// Deletes the app and, by cascade, everything it owns. False if there was no such app.
    async fn delete_app(&self, app_id: AppId) -> Result<bool, StoreError>;
    async fn get_setting(&self, name: &str) -> Result<Option<String>, StoreError>;
    /// Inserts a setting unless it exists; true when this call inserted it.
    async fn insert_setting(&self, name: &str, value: &str) -> Result<bool, StoreError>;
    async fn put_setting(&self, name: &str, value: &str) -> Result<(), StoreError>;
}

/// The store of the backend `db` was opened with.
pub fn app_store(db: &Database) -> Arc<dyn AppStore> {
    match db {
        Database::Sqlite(pools) => Arc::new(SqliteAppStore::new(pools.clone())),
        Database::Postgres(pool) => Arc::new(PgAppStore::new(pool.clone())),
    }
}

// Both backends accept `$N` placeholders, so the statements are shared.
const SELECT_APP: &str = "SELECT app_id, name, issuer, audience, token_expire, token_notbefore, \
    refresh_expire, refresh_notbefore, session_max_age, reuse_grace, rotation_period, \
    max_sessions_per_sub, refresh_rotation, on_reuse, app_key_hash, prev_app_key_hash, \
    prev_app_key_expires_at, created_at, updated_at FROM apps";

const INSERT_APP: &str = "INSERT INTO apps (app_id, name, issuer, audience, token_expire, \
    token_notbefore, refresh_expire, refresh_notbefore, session_max_age, reuse_grace, \
    rotation_period, max_sessions_per_sub, refresh_rotation, on_reuse, app_key_hash, \
    prev_app_key_hash, prev_app_key_expires_at, created_at, updated_at) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19)";

const UPDATE_APP: &str = "UPDATE apps SET name = $2, issuer = $3, audience = $4, \
    token_expire = $5, token_notbefore = $6, refresh_expire = $7, refresh_notbefore = $8, \
    session_max_age = $9, reuse_grace = $10, rotation_period = $11, \
    max_sessions_per_sub = $12, refresh_rotation = $13, on_reuse = $14, updated_at = $15 \
    WHERE app_id = $1";

const SET_APP_KEY: &str = "UPDATE apps SET app_key_hash = $2, prev_app_key_hash = $3, \
    prev_app_key_expires_at = $4, updated_at = $5 WHERE app_id = $1";

const DELETE_APP: &str = "DELETE FROM apps WHERE app_id = $1";
const GET_SETTING: &str = "SELECT value FROM settings WHERE name = $1";
const INSERT_SETTING: &str =
    "INSERT INTO settings (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING";
const PUT_SETTING: &str = "INSERT INTO settings (name, value) VALUES ($1, $2) \
    ON CONFLICT (name) DO UPDATE SET value = excluded.value";

/// Binds an app's columns in the order of `INSERT_APP` ($1..$14) or `UPDATE_APP`.
macro_rules! bind_app {
    ($query:expr, $app:expr) => {{
        let app: &$crate::App = $app;
        let s = &app.settings;
        $query
            .bind(app.app_id.to_string())
            .bind(&app.name)
            .bind(&s.issuer)
            .bind(&s.audience)
            .bind(s.token_expire)
            .bind(s.token_notbefore)
            .bind(s.refresh_expire)
            .bind(s.refresh_notbefore)
            .bind(s.session_max_age)
            .bind(s.reuse_grace)
            .bind(s.rotation_period)
            .bind(s.max_sessions_per_sub)
            .bind(s.refresh_rotation)
            .bind(s.on_reuse.as_str())
    }};
}
pub(crate) use bind_app;

#[derive(sqlx::FromRow)]
struct AppRow {
    app_id: String,
    name: String,
    issuer: String,
    audience: String,
    token_expire: i64,
    token_notbefore: i64,
    refresh_expire: i64,
    refresh_notbefore: i64,
    session_max_age: i64,
    reuse_grace: i64,
    rotation_period: i64,
    max_sessions_per_sub: i64,
    refresh_rotation: bool,
    on_reuse: String,
    app_key_hash: String,
    prev_app_key_hash: Option<String>,
    prev_app_key_expires_at: Option<i64>,
    created_at: i64,
    updated_at: i64,
}

impl TryFrom<AppRow> for AppRecord {
    type Error = StoreError;

    fn try_from(row: AppRow) -> Result<Self, StoreError> {
        let app_id = row
            .app_id
            .parse()
            .map_err(|_| StoreError::Corrupt(format!("app id {:?} is not a ULID", row.app_id)))?;
        let on_reuse: OnReuse = row.on_reuse.parse().map_err(StoreError::Corrupt)?;
        Ok(AppRecord {
            app: App {
                app_id,
                name: row.name,
                settings: AppSettings {
                    issuer: row.issuer,
                    audience: row.audience,
                    token_expire: row.token_expire,
                    token_notbefore: row.token_notbefore,
                    refresh_expire: row.refresh_expire,
                    refresh_notbefore: row.refresh_notbefore,
                    session_max_age: row.session_max_age,
                    reuse_grace: row.reuse_grace,
                    rotation_period: row.rotation_period,
                    max_sessions_per_sub: row.max_sessions_per_sub,
                    refresh_rotation: row.refresh_rotation,
                    on_reuse,
                },
                created_at: row.created_at,
                updated_at: row.updated_at,
            },
            key: AppKeyHashes {
                current: row.app_key_hash,
                previous: row.prev_app_key_hash,
                previous_expires_at: row.prev_app_key_expires_at,
            },
        })
    }
}

fn into_records(rows: Vec<AppRow>) -> Result<Vec<AppRecord>, StoreError> {
    rows.into_iter().map(AppRecord::try_from).collect()
}
