use async_trait::async_trait;

use super::*;
use crate::db::announce;
use sqlx::PgPool;

/// One pool serves reads and writes.
#[derive(Debug, Clone)]
pub struct PgAppStore {
    pool: PgPool,
}

impl PgAppStore {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

#[async_trait]
impl AppStore for PgAppStore {
    async fn insert_app(&self, record: &AppRecord) -> Result<(), StoreError> {
        bind_app!(sqlx::query(INSERT_APP), &record.app)
            .bind(&record.key.current)
            .bind(&record.key.previous)
            .bind(record.key.previous_expires_at)
            .bind(record.app.created_at)
            .bind(record.app.updated_at)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn get_app(&self, app_id: AppId) -> Result<Option<AppRecord>, StoreError> {
        let row = sqlx::query_as::<_, AppRow>(&format!("{SELECT_APP} WHERE app_id = $1"))
            .bind(app_id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        row.map(AppRecord::try_from).transpose()
    }

    async fn find_app_by_name(&self, name: &str) -> Result<Option<AppRecord>, StoreError> {
        let row = sqlx::query_as::<_, AppRow>(&format!("{SELECT_APP} WHERE name = $1"))
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.map(AppRecord::try_from).transpose()
    }

    async fn list_apps(&self) -> Result<Vec<AppRecord>, StoreError> {
        let rows = sqlx::query_as::<_, AppRow>(&format!("{SELECT_APP} ORDER BY app_id"))
            .fetch_all(&self.pool)
            .await?;
        into_records(rows)
    }

    async fn update_app(&self, app: &App) -> Result<(), StoreError> {
        let done = bind_app!(sqlx::query(UPDATE_APP), app)
            .bind(app.updated_at)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        announce(&self.pool, &format!("app {}", app.app_id)).await;
        Ok(())
    }

    async fn set_app_key(
        &self,
        app_id: AppId,
        hashes: &AppKeyHashes,
        now: i64,
    ) -> Result<(), StoreError> {
        let done = sqlx::query(SET_APP_KEY)
            .bind(app_id.to_string())
            .bind(&hashes.current)
            .bind(&hashes.previous)
            .bind(hashes.previous_expires_at)
            .bind(now)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        announce(&self.pool, &format!("app {app_id}")).await;
        Ok(())
    }

    async fn delete_app(&self, app_id: AppId) -> Result<bool, StoreError> {
        let done = sqlx::query(DELETE_APP).bind(app_id.to_string()).execute(&self.pool).await?;
        announce(&self.pool, &format!("app {app_id}")).await;
        Ok(done.rows_affected() > 0)
    }

    async fn get_setting(&self, name: &str) -> Result<Option<String>, StoreError> {
        Ok(sqlx::query_scalar(GET_SETTING).bind(name).fetch_optional(&self.pool).await?)
    }

    async fn insert_setting(&self, name: &str, value: &str) -> Result<bool, StoreError> {
        let done = sqlx::query(INSERT_SETTING).bind(name).bind(value).execute(&self.pool).await?;
        Ok(done.rows_affected() > 0)
    }

    async fn put_setting(&self, name: &str, value: &str) -> Result<(), StoreError> {
        sqlx::query(PUT_SETTING).bind(name).bind(value).execute(&self.pool).await?;
        announce(&self.pool, "root").await;
        Ok(())
    }
}
