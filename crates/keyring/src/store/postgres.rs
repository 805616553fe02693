use async_trait::async_trait;
use keygate_store::announce;
use sqlx::PgPool;

use super::*;

#[derive(Debug, Clone)]
pub struct PgKeyStore {
    pool: PgPool,
}

impl PgKeyStore {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

#[async_trait]
impl KeyStore for PgKeyStore {
    async fn list_keys(&self, app_id: AppId) -> Result<Vec<KeyRecord>, StoreError> {
        let rows = sqlx::query_as::<_, KeyRow>(SELECT_KEYS)
            .bind(app_id.to_string())
            .fetch_all(&self.pool)
            .await?;
        into_records(rows)
    }

    async fn apply(&self, app_id: AppId, changes: &[KeyChange]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        for change in changes {
            apply_change!(tx, app_id, change);
        }
        tx.commit().await?;
        announce(&self.pool, &format!("keys {app_id}")).await;
        Ok(())
    }

    async fn delete_retired(&self, app_id: AppId, retired_before: i64) -> Result<u64, StoreError> {
        let done = sqlx::query(DELETE_RETIRED)
            .bind(app_id.to_string())
            .bind(retired_before)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    async fn reseal(
        &self,
        key_id: KeyId,
        sealed_with: &str,
        sealed_private: &[u8],
        master_key_id: &str,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(RESEAL)
            .bind(sealed_private)
            .bind(master_key_id)
            .bind(key_id.to_string())
            .bind(sealed_with)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn owner_of(&self, key_id: KeyId) -> Result<Option<AppId>, StoreError> {
        let app_id: Option<String> = sqlx::query_scalar(SELECT_OWNER)
            .bind(key_id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        owner(app_id)
    }
}
