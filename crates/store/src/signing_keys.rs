//! The signing keys of apps (`app_keys`): their states, and their private halves sealed
//! under the master key.

use keygate_kernel::{AppId, Change, KeyId, KeyState};

use crate::{Backend, Sql, StoreError};

/// A signing key as stored: the public half in the clear, the private half sealed.
#[derive(Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct KeyRecord {
    pub key_id: KeyId,
    pub app_id: AppId,
    pub state: KeyState,
    /// SubjectPublicKeyInfo PEM.
    pub public_pem: String,
    /// AES-256-GCM nonce followed by the sealed PKCS#8 document.
    pub sealed_private: Vec<u8>,
    pub master_key_id: String,
    pub created_at: i64,
    pub activated_at: Option<i64>,
    pub retired_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

impl std::fmt::Debug for KeyRecord {
    // The sealed private key stays out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRecord")
            .field("key_id", &self.key_id)
            .field("app_id", &self.app_id)
            .field("state", &self.state)
            .field("created_at", &self.created_at)
            .field("activated_at", &self.activated_at)
            .field("retired_at", &self.retired_at)
            .field("revoked_at", &self.revoked_at)
            .finish_non_exhaustive()
    }
}

/// One step of [`SigningKeys::apply`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyChange {
    /// A new key of the app.
    Insert(KeyRecord),
    /// The key moves from state `from` to `to` (`Active`, `Retired` or `Revoked`), and the
    /// time column of `to` is set to `at`; only if the key is still `from`.
    Transition { key_id: KeyId, from: KeyState, to: KeyState, at: i64 },
}

const SELECT_KEYS: &str = "SELECT key_id, app_id, state, public_pem, sealed_private, \
    master_key_id, created_at, activated_at, retired_at, revoked_at FROM app_keys \
    WHERE app_id = $1 ORDER BY key_id";

/// The keys of the `$2` apps after app id `$1`, by app, each app's oldest first.
const SELECT_KEYS_OF_APPS: &str = "SELECT key_id, app_id, state, public_pem, sealed_private, \
    master_key_id, created_at, activated_at, retired_at, revoked_at FROM app_keys \
    WHERE app_id IN (SELECT app_id FROM apps WHERE app_id > $1 ORDER BY app_id LIMIT $2) \
    ORDER BY app_id, key_id";

const SELECT_OWNER: &str = "SELECT app_id FROM app_keys WHERE key_id = $1";

const DELETE_RETIRED: &str = "DELETE FROM app_keys WHERE app_id = $1 AND state = 'retired' \
    AND retired_at < $2";

const INSERT_KEY: &str = "INSERT INTO app_keys (key_id, app_id, state, public_pem, \
    sealed_private, master_key_id, created_at, activated_at, retired_at, revoked_at) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)";

const RESEAL: &str = "UPDATE app_keys SET sealed_private = $1, master_key_id = $2 \
    WHERE key_id = $3 AND master_key_id = $4";

/// The statement for a transition into `to`, which also stamps the matching time column.
/// No key ever goes back to `next`: a next key is always a new one.
fn transition_sql(to: KeyState) -> Result<String, StoreError> {
    let column = match to {
        KeyState::Active => "activated_at",
        KeyState::Retired => "retired_at",
        KeyState::Revoked => "revoked_at",
        KeyState::Next => {
            return Err(StoreError::Conflict("a key cannot become next again".into()))
        }
    };
    Ok(format!(
        "UPDATE app_keys SET state = $1, {column} = $2 \
        WHERE key_id = $3 AND app_id = $4 AND state = $5"
    ))
}

/// The `app_keys` table. A plan applied is announced to the other gateways.
#[derive(Debug, Clone, Copy)]
pub struct SigningKeys<'a> {
    db: &'a Backend,
}

impl Backend {
    pub fn signing_keys(&self) -> SigningKeys<'_> {
        SigningKeys { db: self }
    }
}

impl SigningKeys<'_> {
    /// Every key of the app, revoked ones included, oldest first.
    pub async fn list(&self, app_id: AppId) -> Result<Vec<KeyRecord>, StoreError> {
        self.db.read(Sql::new(SELECT_KEYS).bind(app_id)).fetch_all().await
    }

    /// The keys of the `apps` apps whose ids follow `after` (`None` for the first ones), by
    /// app, each app's oldest first: a page of every app's keys (to fill a cache at start).
    pub async fn list_page(
        &self,
        after: Option<AppId>,
        apps: i64,
    ) -> Result<Vec<KeyRecord>, StoreError> {
        let after = after.map_or_else(String::new, |app_id| app_id.to_string());
        self.db.read(Sql::new(SELECT_KEYS_OF_APPS).bind(after).bind(apps)).fetch_all().await
    }

    /// Applies the writes in one transaction. A transition whose key is no longer in its
    /// `from` state, or an insert of another app's key, fails the whole plan with
    /// `Conflict`, and nothing changes.
    pub async fn apply(&self, app_id: AppId, writes: &[KeyChange]) -> Result<(), StoreError> {
        let mut tx = self.db.begin_write().await?;
        for write in writes {
            match write {
                KeyChange::Transition { key_id, from, to, at } => {
                    let sql = Sql::new(transition_sql(*to)?)
                        .bind(*to)
                        .bind(*at)
                        .bind(key_id)
                        .bind(app_id)
                        .bind(*from);
                    if tx.execute(sql).await? != 1 {
                        return Err(StoreError::Conflict(format!(
                            "key {key_id} is no longer {from}"
                        )));
                    }
                }
                KeyChange::Insert(key) => {
                    if key.app_id != app_id {
                        return Err(StoreError::Conflict(format!(
                            "key {} belongs to another app",
                            key.key_id
                        )));
                    }
                    let sql = Sql::new(INSERT_KEY)
                        .bind(key.key_id)
                        .bind(key.app_id)
                        .bind(key.state)
                        .bind(&key.public_pem)
                        .bind(key.sealed_private.as_slice())
                        .bind(&key.master_key_id)
                        .bind(key.created_at)
                        .bind(key.activated_at)
                        .bind(key.retired_at)
                        .bind(key.revoked_at);
                    tx.execute(sql).await?;
                }
            }
        }
        tx.after_commit(Change::Keys(app_id));
        tx.commit().await
    }

    /// Deletes the app's keys retired before `retired_before`; returns how many.
    pub async fn delete_retired(
        &self,
        app_id: AppId,
        retired_before: i64,
    ) -> Result<u64, StoreError> {
        let sql = Sql::new(DELETE_RETIRED).bind(app_id).bind(retired_before);
        self.db.write(sql).execute().await
    }

    /// The app a key belongs to, whatever the key's state.
    pub async fn owner_of(&self, key_id: KeyId) -> Result<Option<AppId>, StoreError> {
        let row: Option<(AppId,)> =
            self.db.read(Sql::new(SELECT_OWNER).bind(key_id)).fetch_optional().await?;
        Ok(row.map(|(app_id,)| app_id))
    }

    /// Replaces a key's sealed private key, if it is still sealed with `sealed_with`;
    /// false if it is not (another run re-sealed it first) or the key is gone.
    pub async fn reseal(
        &self,
        key_id: KeyId,
        sealed_with: &str,
        sealed_private: &[u8],
        master_key_id: &str,
    ) -> Result<bool, StoreError> {
        let sql = Sql::new(RESEAL)
            .bind(sealed_private)
            .bind(master_key_id)
            .bind(key_id)
            .bind(sealed_with);
        Ok(self.db.write(sql).execute().await? == 1)
    }
}
