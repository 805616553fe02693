use std::sync::Arc;

use async_trait::async_trait;
use keygate_store::Backend;
use keygate_store::Legacy;
use keygate_tenants::{AppId, StoreError};

use crate::{KeyChange, KeyId, KeyRecord, KeyState};

mod postgres;
mod sqlite;

pub use postgres::PgKeyStore;
pub use sqlite::SqliteKeyStore;

/// Persistence of signing keys.
#[async_trait]
pub trait KeyStore: Send + Sync + std::fmt::Debug {
    /// Every key of the app, revoked ones included, oldest first.
    async fn list_keys(&self, app_id: AppId) -> Result<Vec<KeyRecord>, StoreError>;
    /// Applies a plan in one transaction. A transition whose key is no longer in its `from`
    /// state fails the whole plan with `Conflict`, and nothing changes.
    async fn apply(&self, app_id: AppId, changes: &[KeyChange]) -> Result<(), StoreError>;
    /// Deletes the app's keys retired before `retired_before`; returns how many.
    async fn delete_retired(&self, app_id: AppId, retired_before: i64) -> Result<u64, StoreError>;
    /// The app a key belongs to, whatever the key's state. Key ids are unique across apps.
    async fn owner_of(&self, key_id: KeyId) -> Result<Option<AppId>, StoreError>;
    /// Replaces a key's sealed private key, if it is still sealed with `sealed_with`;
    /// false if it is not (another run re-sealed it first) or the key is gone.
    async fn reseal(
        &self,
        key_id: KeyId,
        sealed_with: &str,
        sealed_private: &[u8],
        master_key_id: &str,
    ) -> Result<bool, StoreError>;
}

const RESEAL: &str = "UPDATE app_keys SET sealed_private = $1, master_key_id = $2 \
    WHERE key_id = $3 AND master_key_id = $4";

pub fn key_store(db: &Backend) -> Arc<dyn KeyStore> {
    match db.legacy() {
        Legacy::Sqlite(pools) => Arc::new(SqliteKeyStore::new(pools.clone())),
        Legacy::Postgres(pool) => Arc::new(PgKeyStore::new(pool.clone())),
    }
}

const SELECT_KEYS: &str = "SELECT key_id, app_id, state, public_pem, sealed_private, \
    master_key_id, created_at, activated_at, retired_at, revoked_at FROM app_keys \
    WHERE app_id = $1 ORDER BY key_id";

const SELECT_OWNER: &str = "SELECT app_id FROM app_keys WHERE key_id = $1";

/// The app id read by [`SELECT_OWNER`], checked.
fn owner(app_id: Option<String>) -> Result<Option<AppId>, StoreError> {
    app_id
        .map(|id| {
            id.parse().map_err(|_| StoreError::Corrupt("app_keys.app_id is not a ULID".into()))
        })
        .transpose()
}

const DELETE_RETIRED: &str = "DELETE FROM app_keys WHERE app_id = $1 AND state = 'retired' \
    AND retired_at < $2";

const INSERT_KEY: &str = "INSERT INTO app_keys (key_id, app_id, state, public_pem, \
    sealed_private, master_key_id, created_at, activated_at, retired_at, revoked_at) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)";

/// The statement for a transition into `to`, which also stamps the matching time column.
/// No key ever goes back to `next`: a next key is always a new one.
fn transition_sql(to: KeyState) -> Result<&'static str, StoreError> {
    match to {
        KeyState::Next => Err(StoreError::Conflict("a key cannot become next again".into())),
        KeyState::Active => Ok("UPDATE app_keys SET state = $1, activated_at = $2 \
            WHERE key_id = $3 AND app_id = $4 AND state = $5"),
        KeyState::Retired => Ok("UPDATE app_keys SET state = $1, retired_at = $2 \
            WHERE key_id = $3 AND app_id = $4 AND state = $5"),
        KeyState::Revoked => Ok("UPDATE app_keys SET state = $1, revoked_at = $2 \
            WHERE key_id = $3 AND app_id = $4 AND state = $5"),
    }
}

/// Runs one change on a transaction of either backend.
macro_rules! apply_change {
    ($tx:expr, $app_id:expr, $change:expr) => {{
        match $change {
            KeyChange::Transition { key_id, from, to, at } => {
                let done = sqlx::query(transition_sql(*to)?)
                    .bind(to.as_str())
                    .bind(*at)
                    .bind(key_id.to_string())
                    .bind($app_id.to_string())
                    .bind(from.as_str())
                    .execute(&mut *$tx)
                    .await?;
                if done.rows_affected() != 1 {
                    return Err(StoreError::Conflict(format!("key {key_id} is no longer {from}")));
                }
            }
            KeyChange::Insert(key) => {
                if key.app_id != $app_id {
                    return Err(StoreError::Conflict(format!(
                        "key {} belongs to another app",
                        key.key_id
                    )));
                }
                sqlx::query(INSERT_KEY)
                    .bind(key.key_id.to_string())
                    .bind(key.app_id.to_string())
                    .bind(key.state.as_str())
                    .bind(&key.public_pem)
                    .bind(&key.sealed_private)
                    .bind(&key.master_key_id)
                    .bind(key.created_at)
                    .bind(key.activated_at)
                    .bind(key.retired_at)
                    .bind(key.revoked_at)
                    .execute(&mut *$tx)
                    .await?;
            }
        }
    }};
}
use apply_change;

#[derive(sqlx::FromRow)]
struct KeyRow {
    key_id: String,
    app_id: String,
    state: String,
    public_pem: String,
    sealed_private: Vec<u8>,
    master_key_id: String,
    created_at: i64,
    activated_at: Option<i64>,
    retired_at: Option<i64>,
    revoked_at: Option<i64>,
}

impl TryFrom<KeyRow> for KeyRecord {
    type Error = StoreError;

    fn try_from(row: KeyRow) -> Result<Self, StoreError> {
        let corrupt = |what: &str| StoreError::Corrupt(format!("app_keys.{what} is not a ULID"));
        Ok(KeyRecord {
            key_id: row.key_id.parse().map_err(|_| corrupt("key_id"))?,
            app_id: row.app_id.parse().map_err(|_| corrupt("app_id"))?,
            state: row.state.parse()?,
            public_pem: row.public_pem,
            sealed_private: row.sealed_private,
            master_key_id: row.master_key_id,
            created_at: row.created_at,
            activated_at: row.activated_at,
            retired_at: row.retired_at,
            revoked_at: row.revoked_at,
        })
    }
}

fn into_records(rows: Vec<KeyRow>) -> Result<Vec<KeyRecord>, StoreError> {
    rows.into_iter().map(KeyRecord::try_from).collect()
}
