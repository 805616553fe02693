//! The apps and settings of [`keygate_store`], in the domain's types.

use std::sync::Arc;

use keygate_store::apps::AppRow;
use keygate_store::Backend;

use crate::{App, AppId, AppKeyHashes, AppRecord, StoreError};

/// Persistence of apps and instance-wide settings.
#[derive(Debug, Clone)]
pub struct AppStore {
    db: Backend,
}

/// The app store of `db`.
pub fn app_store(db: &Backend) -> Arc<AppStore> {
    Arc::new(AppStore { db: db.clone() })
}

impl AppStore {
    /// Fails with `Conflict` when the name is taken.
    pub async fn insert_app(&self, record: &AppRecord) -> Result<(), StoreError> {
        self.db.apps().insert(&row_of(&record.app, &record.key)).await
    }

    pub async fn get_app(&self, app_id: AppId) -> Result<Option<AppRecord>, StoreError> {
        Ok(self.db.apps().get(app_id).await?.map(AppRecord::from))
    }

    pub async fn find_app_by_name(&self, name: &str) -> Result<Option<AppRecord>, StoreError> {
        Ok(self.db.apps().find_by_name(name).await?.map(AppRecord::from))
    }

    pub async fn list_apps(&self) -> Result<Vec<AppRecord>, StoreError> {
        Ok(self.db.apps().list().await?.into_iter().map(AppRecord::from).collect())
    }

    /// Writes the name and settings. `NotFound` if the app is gone, `Conflict` when the new
    /// name is taken.
    pub async fn update_app(&self, app: &App) -> Result<(), StoreError> {
        // An update writes no key column.
        self.db.apps().update(&row_of(app, &AppKeyHashes::default())).await
    }

    pub async fn set_app_key(
        &self,
        app_id: AppId,
        hashes: &AppKeyHashes,
        now: i64,
    ) -> Result<(), StoreError> {
        let (previous, until) = (hashes.previous.as_deref(), hashes.previous_expires_at);
        self.db.apps().set_key(app_id, &hashes.current, previous, until, now).await
    }

    /// Deletes the app and, by cascade, everything it owns. False if there was no such app.
    pub async fn delete_app(&self, app_id: AppId) -> Result<bool, StoreError> {
        self.db.apps().delete(app_id).await
    }

    /// Replaces the app-key hash `old` (current or previous) with `new`: the same key in
    /// another form. False when the app no longer has that hash (it was rotated meanwhile).
    pub async fn replace_key_hash(
        &self,
        app_id: AppId,
        old: &str,
        new: &str,
    ) -> Result<bool, StoreError> {
        self.db.apps().replace_key_hash(app_id, old, new).await
    }

    /// How many app-key hashes accepted at `now` are `(argon2id, keyed)`.
    pub async fn key_hash_forms(&self, now: i64) -> Result<(i64, i64), StoreError> {
        self.db.apps().key_hash_forms(now).await
    }

    /// Replaces a setting's value if it is still `old`; true when it was.
    pub async fn replace_setting(
        &self,
        name: &str,
        old: &str,
        new: &str,
    ) -> Result<bool, StoreError> {
        self.db.settings().replace(name, old, new).await
    }

    pub async fn get_setting(&self, name: &str) -> Result<Option<String>, StoreError> {
        self.db.settings().get(name).await
    }

    /// Inserts a setting unless it exists; true when this call inserted it.
    pub async fn insert_setting(&self, name: &str, value: &str) -> Result<bool, StoreError> {
        self.db.settings().insert(name, value).await
    }

    pub async fn put_setting(&self, name: &str, value: &str) -> Result<(), StoreError> {
        self.db.settings().put(name, value).await
    }
}

fn row_of(app: &App, key: &AppKeyHashes) -> AppRow {
    AppRow {
        app_id: app.app_id,
        name: app.name.clone(),
        settings: app.settings.clone(),
        app_key_hash: key.current.clone(),
        prev_app_key_hash: key.previous.clone(),
        prev_app_key_expires_at: key.previous_expires_at,
        created_at: app.created_at,
        updated_at: app.updated_at,
    }
}

impl From<AppRow> for AppRecord {
    fn from(row: AppRow) -> Self {
        AppRecord {
            app: App {
                app_id: row.app_id,
                name: row.name,
                settings: row.settings,
                created_at: row.created_at,
                updated_at: row.updated_at,
            },
            key: AppKeyHashes {
                current: row.app_key_hash,
                previous: row.prev_app_key_hash,
                previous_expires_at: row.prev_app_key_expires_at,
            },
        }
    }
}
