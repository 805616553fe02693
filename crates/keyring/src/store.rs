//! The signing keys of [`keygate_store`], in the keyring's types.

use std::sync::Arc;

use keygate_kernel::AppId;
use keygate_store::signing_keys::{KeyRow, KeyWrite};
use keygate_store::Backend;
use keygate_store::StoreError;

use crate::{KeyChange, KeyId, KeyRecord};

/// Persistence of signing keys.
#[derive(Debug, Clone)]
pub struct KeyStore {
    db: Backend,
}

/// The key store of `db`.
pub fn key_store(db: &Backend) -> Arc<KeyStore> {
    Arc::new(KeyStore { db: db.clone() })
}

impl KeyStore {
    /// Every key of the app, revoked ones included, oldest first.
    pub async fn list_keys(&self, app_id: AppId) -> Result<Vec<KeyRecord>, StoreError> {
        let rows = self.db.signing_keys().list(&app_id.to_string()).await?;
        rows.into_iter().map(KeyRecord::try_from).collect()
    }

    /// The keys of the `apps` apps whose ids follow `after` (all from the first with
    /// `None`), by app, each app's oldest first.
    pub async fn list_keys_page(
        &self,
        after: Option<AppId>,
        apps: i64,
    ) -> Result<Vec<KeyRecord>, StoreError> {
        let after = after.map(|id| id.to_string()).unwrap_or_default();
        let rows = self.db.signing_keys().list_page(&after, apps).await?;
        rows.into_iter().map(KeyRecord::try_from).collect()
    }

    /// Applies a plan in one transaction. A transition whose key is no longer in its `from`
    /// state fails the whole plan with `Conflict`, and nothing changes.
    pub async fn apply(&self, app_id: AppId, changes: &[KeyChange]) -> Result<(), StoreError> {
        let writes: Vec<KeyWrite> = changes.iter().map(write_of).collect();
        self.db.signing_keys().apply(&app_id.to_string(), &writes).await
    }

    /// Deletes the app's keys retired before `retired_before`; returns how many.
    pub async fn delete_retired(
        &self,
        app_id: AppId,
        retired_before: i64,
    ) -> Result<u64, StoreError> {
        self.db.signing_keys().delete_retired(&app_id.to_string(), retired_before).await
    }

    /// The app a key belongs to, whatever the key's state. Key ids are unique across apps.
    pub async fn owner_of(&self, key_id: KeyId) -> Result<Option<AppId>, StoreError> {
        let app_id = self.db.signing_keys().owner_of(&key_id.to_string()).await?;
        let corrupt = || StoreError::Corrupt("app_keys.app_id is not a ULID".into());
        app_id.map(|id| id.parse().map_err(|_| corrupt())).transpose()
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
        let key_id = key_id.to_string();
        self.db.signing_keys().reseal(&key_id, sealed_with, sealed_private, master_key_id).await
    }
}

fn write_of(change: &KeyChange) -> KeyWrite {
    match change {
        KeyChange::Transition { key_id, from, to, at } => KeyWrite::Transition {
            key_id: key_id.to_string(),
            from: from.as_str().to_owned(),
            to: to.as_str().to_owned(),
            at: *at,
        },
        KeyChange::Insert(key) => KeyWrite::Insert(KeyRow {
            key_id: key.key_id.to_string(),
            app_id: key.app_id.to_string(),
            state: key.state.as_str().to_owned(),
            public_pem: key.public_pem.clone(),
            sealed_private: key.sealed_private.clone(),
            master_key_id: key.master_key_id.clone(),
            created_at: key.created_at,
            activated_at: key.activated_at,
            retired_at: key.retired_at,
            revoked_at: key.revoked_at,
        }),
    }
}

impl TryFrom<KeyRow> for KeyRecord {
    type Error = StoreError;

    fn try_from(row: KeyRow) -> Result<Self, StoreError> {
        let corrupt = |what: &str| StoreError::Corrupt(format!("app_keys.{what} is not a ULID"));
        Ok(KeyRecord {
            key_id: row.key_id.parse().map_err(|_| corrupt("key_id"))?,
            app_id: row.app_id.parse().map_err(|_| corrupt("app_id"))?,
            state: row
                .state
                .parse()
                .map_err(|e: keygate_kernel::UnknownState| StoreError::Corrupt(e.0))?,
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
