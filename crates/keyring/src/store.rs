//! The signing keys of [`keygate_store`], in the keyring's types.

use std::sync::Arc;

use keygate_kernel::AppId;
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
        self.db.signing_keys().list(app_id).await
    }

    /// The keys of the `apps` apps whose ids follow `after` (all from the first with
    /// `None`), by app, each app's oldest first.
    pub async fn list_keys_page(
        &self,
        after: Option<AppId>,
        apps: i64,
    ) -> Result<Vec<KeyRecord>, StoreError> {
        self.db.signing_keys().list_page(after, apps).await
    }

    /// Applies a plan in one transaction. A transition whose key is no longer in its `from`
    /// state fails the whole plan with `Conflict`, and nothing changes.
    pub async fn apply(&self, app_id: AppId, changes: &[KeyChange]) -> Result<(), StoreError> {
        self.db.signing_keys().apply(app_id, changes).await
    }

    /// Deletes the app's keys retired before `retired_before`; returns how many.
    pub async fn delete_retired(
        &self,
        app_id: AppId,
        retired_before: i64,
    ) -> Result<u64, StoreError> {
        self.db.signing_keys().delete_retired(app_id, retired_before).await
    }

    /// The app a key belongs to, whatever the key's state. Key ids are unique across apps.
    pub async fn owner_of(&self, key_id: KeyId) -> Result<Option<AppId>, StoreError> {
        self.db.signing_keys().owner_of(key_id).await
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
        self.db.signing_keys().reseal(key_id, sealed_with, sealed_private, master_key_id).await
    }
}
