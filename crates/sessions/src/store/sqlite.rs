use async_trait::async_trait;
use keygate_store::SqlitePools;

use super::*;

use super::group_commit::{lost, GroupCommit, InsertJob, Job, RotateJob};

/// Reads use the reader pool. Renews and signs go through group commit (see
/// [`super::group_commit`]); other writes use the single writer connection directly.
#[derive(Debug, Clone)]
pub struct SqliteSessionStore {
    pools: SqlitePools,
    group: Option<GroupCommit>,
}

impl SqliteSessionStore {
    /// Inside a Tokio runtime this starts the group-commit task; outside one, every write
    /// commits on its own.
    pub fn new(pools: SqlitePools) -> Self {
        let group = GroupCommit::start(pools.writer.clone());
        Self { pools, group }
    }
}

#[async_trait]
impl SessionStore for SqliteSessionStore {
    async fn create(&self, session: &Session, max_per_sub: i64) -> Result<u64, StoreError> {
        let claims = claims_json(session)?;
        if let (Some(group), 0) = (&self.group, max_per_sub) {
            let (reply, answer) = tokio::sync::oneshot::channel();
            group
                .submit(Job::Insert(InsertJob { session: session.clone(), claims, reply }))
                .await?;
            answer.await.map_err(lost)??;
            return Ok(0);
        }
        let mut tx = self.pools.writer.begin_with("BEGIN IMMEDIATE").await?;
        let mut evicted = 0;
        if max_per_sub > 0 {
            evicted = evict_oldest!(tx, session, max_per_sub);
        }
        bind_session!(sqlx::query(INSERT), session, &claims).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(evicted)
    }

    async fn bulk_insert(&self, sessions: &[Session]) -> Result<u64, StoreError> {
        let mut tx = self.pools.writer.begin_with("BEGIN IMMEDIATE").await?;
        let mut inserted = 0;
        for chunk in sessions.chunks(BULK_ROWS) {
            let claims: Vec<String> = chunk.iter().map(claims_json).collect::<Result<_, _>>()?;
            let mut builder = sqlx::QueryBuilder::<sqlx::Sqlite>::new(BULK_INSERT);
            builder.push_values(chunk.iter().zip(claims), |mut b, (s, claims)| {
                push_session!(b, s, claims)
            });
            inserted += builder.build().execute(&mut *tx).await?.rows_affected();
        }
        tx.commit().await?;
        Ok(inserted)
    }

    async fn get(
        &self,
        app_id: AppId,
        session_id: SessionId,
    ) -> Result<Option<Session>, StoreError> {
        let row = sqlx::query_as::<_, SessionRow>(&select_one())
            .bind(app_id.to_string())
            .bind(session_id.to_string())
            .fetch_optional(&self.pools.reader)
            .await?;
        row.map(Session::try_from).transpose()
    }

    async fn rotate(
        &self,
        app_id: AppId,
        session_id: SessionId,
        expected: Jid,
        rotation: &Rotation<'_>,
        now: i64,
    ) -> Result<Option<Session>, StoreError> {
        let job = RotateJob::new(
            app_id,
            session_id,
            expected,
            rotation,
            now,
            tokio::sync::oneshot::channel().0,
        );
        let Some(group) = &self.group else {
            return super::group_commit::rotate_one(&self.pools.writer, &job).await;
        };
        let (reply, answer) = tokio::sync::oneshot::channel();
        group.submit(Job::Rotate(RotateJob { reply, ..job })).await?;
        answer.await.map_err(lost)?
    }

    async fn unrotate(
        &self,
        app_id: AppId,
        session_id: SessionId,
        new_jid: Jid,
        restore: &Restore,
    ) -> Result<bool, StoreError> {
        let done = bind_unrotate!(sqlx::query(UNROTATE), app_id, session_id, new_jid, restore)
            .execute(&self.pools.writer)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn touch(
        &self,
        app_id: AppId,
        session_id: SessionId,
        ip: &str,
        useragent: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(TOUCH)
            .bind(session_id.to_string())
            .bind(app_id.to_string())
            .bind(ip)
            .bind(useragent)
            .bind(now)
            .execute(&self.pools.writer)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn revoke(
        &self,
        app_id: AppId,
        scope: RevokeScope<'_>,
        reason: &str,
        now: i64,
    ) -> Result<u64, StoreError> {
        let query = match scope {
            RevokeScope::Session(id) => {
                sqlx::query(REVOKE_ONE).bind(app_id.to_string()).bind(id.to_string())
            }
            RevokeScope::Subject(sub) => {
                sqlx::query(REVOKE_SUBJECT).bind(app_id.to_string()).bind(sub)
            }
            RevokeScope::App => sqlx::query(REVOKE_APP).bind(app_id.to_string()),
        };
        Ok(query.bind(now).bind(reason).execute(&self.pools.writer).await?.rows_affected())
    }

    async fn list_live(
        &self,
        app_id: AppId,
        sub: Option<&str>,
        now: i64,
    ) -> Result<Vec<Session>, StoreError> {
        let sql = select_live(sub.is_some());
        let mut query = sqlx::query_as::<_, SessionRow>(&sql).bind(app_id.to_string()).bind(now);
        if let Some(sub) = sub {
            query = query.bind(sub);
        }
        into_sessions(query.fetch_all(&self.pools.reader).await?)
    }

    async fn purge(&self, ended_before: i64) -> Result<u64, StoreError> {
        Ok(sqlx::query(PURGE).bind(ended_before).execute(&self.pools.writer).await?.rows_affected())
    }
}
