//! Group commit for SQLite: concurrent renews and signs share one statement, and so one
//! commit (one WAL fsync with `synchronous=FULL`), instead of paying one each.
//!
//! A single task owns the batching. It takes every job that is waiting, writes all inserts
//! as one multi-row INSERT and all rotations as one `UPDATE … FROM (VALUES …) RETURNING`,
//! each a statement of its own in autocommit: the write lock is held only while SQLite runs
//! that statement, never across other work. Each rotation keeps compare-and-swap semantics:
//! a row updates only if its `current_jid` is still the expected one, and when several
//! renews of one token share a batch, exactly one of them wins.

use std::collections::HashMap;
use std::sync::OnceLock;

use sqlx::{QueryBuilder, Sqlite, SqlitePool};
use tokio::sync::{mpsc, oneshot};

use super::*;

/// The most jobs one statement carries (11 bound values per rotation).
const MAX_BATCH: usize = 256;
/// Jobs waiting for the batcher before senders wait too.
const QUEUE: usize = 4096;

pub(super) struct RotateJob {
    pub app_id: AppId,
    pub session_id: SessionId,
    pub expected: Jid,
    pub new_jid: Jid,
    pub refresh_expire: i64,
    pub key_id: String,
    pub ip: String,
    pub useragent: String,
    pub presented: Option<TokenDigest>,
    pub digest: Option<TokenDigest>,
    pub now: i64,
    pub reply: oneshot::Sender<Result<Option<Session>, StoreError>>,
}

impl RotateJob {
    pub fn new(
        app_id: AppId,
        session_id: SessionId,
        expected: Jid,
        rotation: &Rotation<'_>,
        now: i64,
        reply: oneshot::Sender<Result<Option<Session>, StoreError>>,
    ) -> Self {
        Self {
            app_id,
            session_id,
            expected,
            new_jid: rotation.new_jid,
            refresh_expire: rotation.refresh_expire,
            key_id: rotation.key_id.to_owned(),
            ip: rotation.ip.to_owned(),
            useragent: rotation.useragent.to_owned(),
            presented: rotation.presented,
            digest: rotation.digest,
            now,
            reply,
        }
    }

    pub fn rotation(&self) -> Rotation<'_> {
        Rotation {
            new_jid: self.new_jid,
            refresh_expire: self.refresh_expire,
            key_id: &self.key_id,
            ip: &self.ip,
            useragent: &self.useragent,
            presented: self.presented,
            digest: self.digest,
        }
    }
}

/// Answers the jobs of a batch whose statement returned `rows`: each updated row carries
/// the new jid of the job that won it, and every other job did not swap.
pub(super) fn answer_batch(jobs: Vec<RotateJob>, rows: Vec<SessionRow>) {
    let mut won: HashMap<String, SessionRow> =
        rows.into_iter().map(|row| (row.current_jid.clone(), row)).collect();
    for job in jobs {
        let result = won.remove(&job.new_jid.to_string()).map(Session::try_from).transpose();
        let _ = job.reply.send(result);
    }
}

pub(super) struct InsertJob {
    pub session: Session,
    pub claims: String,
    pub reply: oneshot::Sender<Result<(), StoreError>>,
}

pub(super) enum Job {
    Rotate(RotateJob),
    Insert(InsertJob),
}

/// The sending side; cloning it is cheap.
#[derive(Debug, Clone)]
pub(super) struct GroupCommit {
    jobs: mpsc::Sender<Job>,
}

impl GroupCommit {
    /// Starts the batcher on the current Tokio runtime; `None` outside one.
    pub(super) fn start(writer: SqlitePool) -> Option<Self> {
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let (jobs, queue) = mpsc::channel(QUEUE);
        runtime.spawn(run(writer, queue));
        Some(Self { jobs })
    }

    pub(super) async fn submit(&self, job: Job) -> Result<(), StoreError> {
        self.jobs.send(job).await.map_err(|_| StoreError::Unavailable(sqlx::Error::PoolClosed))
    }
}

/// A reply channel that closed without an answer: the batcher is gone.
pub(super) fn lost(_: oneshot::error::RecvError) -> StoreError {
    StoreError::Unavailable(sqlx::Error::PoolClosed)
}

async fn run(writer: SqlitePool, mut queue: mpsc::Receiver<Job>) {
    while let Some(first) = queue.recv().await {
        let mut rotations = Vec::new();
        let mut inserts = Vec::new();
        let mut next = Some(first);
        while let Some(job) = next.take() {
            match job {
                Job::Rotate(job) => rotations.push(job),
                Job::Insert(job) => inserts.push(job),
            }
            if rotations.len() + inserts.len() < MAX_BATCH {
                next = queue.try_recv().ok();
            }
        }
        if !inserts.is_empty() {
            insert_batch(&writer, inserts).await;
        }
        if !rotations.is_empty() {
            rotate_batch(&writer, rotations).await;
        }
    }
}

async fn insert_batch(writer: &SqlitePool, jobs: Vec<InsertJob>) {
    let mut builder = QueryBuilder::<Sqlite>::new(BULK_INSERT);
    builder.push_values(&jobs, |mut b, job| push_session!(b, &job.session, job.claims.clone()));
    // Batches differ in size, so their statements are not worth keeping prepared.
    match builder.build().persistent(false).execute(writer).await {
        Ok(_) => {
            for job in jobs {
                let _ = job.reply.send(Ok(()));
            }
        }
        Err(err) if is_busy(&err) => {
            for job in jobs {
                let _ = job.reply.send(Err(busy(&err)));
            }
        }
        // Nothing of the batch was written: give each job its own attempt and error.
        Err(_) => {
            for job in jobs {
                let result = bind_session!(sqlx::query(INSERT), &job.session, &job.claims)
                    .execute(writer)
                    .await
                    .map(|_| ())
                    .map_err(StoreError::from);
                let _ = job.reply.send(result);
            }
        }
    }
}

/// The batched compare-and-swap for `rows` rotations (a power of two up to [`MAX_BATCH`]).
/// A batch is padded to the next power of two with rows that match no session, so that
/// only a handful of statements exist and each stays prepared on the writer connection:
/// parsing and planning a new statement for every batch cost more than the padding.
fn rotate_batch_sql(rows: usize) -> &'static str {
    const SIZES: usize = MAX_BATCH.trailing_zeros() as usize + 1;
    static SQL: [OnceLock<String>; SIZES] = [const { OnceLock::new() }; SIZES];
    let size = rows.next_power_of_two().min(MAX_BATCH);
    SQL[size.trailing_zeros() as usize].get_or_init(|| {
        let row = format!("({})", ["?"; 11].join(", "));
        format!(
            "WITH batch (session_id, app_id, new_jid, refresh_expire, key_id, ip, useragent, \
             now, expected, presented, digest) AS (VALUES {}) \
             UPDATE sessions SET prev_jid = sessions.current_jid, current_jid = batch.new_jid, \
             current_iat = batch.now, \
             current_exp = CASE WHEN batch.now + batch.refresh_expire < sessions.expires_at \
             THEN batch.now + batch.refresh_expire ELSE sessions.expires_at END, \
             key_id = batch.key_id, rotated_at = batch.now, ip = batch.ip, \
             useragent = batch.useragent, last_renewed_at = batch.now, \
             current_digest = batch.digest \
             FROM batch WHERE sessions.session_id = batch.session_id \
             AND sessions.app_id = batch.app_id AND sessions.current_jid = batch.expected \
             AND sessions.revoked_at IS NULL AND sessions.expires_at > batch.now \
             AND (batch.presented IS NULL OR sessions.current_digest = batch.presented) \
             RETURNING {COLUMNS}",
            vec![row; size].join(", ")
        )
    })
}

async fn rotate_batch(writer: &SqlitePool, jobs: Vec<RotateJob>) {
    let digest = |d: Option<TokenDigest>| d.map(|d| d.0.to_vec());
    let mut query = sqlx::query_as::<_, SessionRow>(rotate_batch_sql(jobs.len()));
    for job in &jobs {
        query = query
            .bind(job.session_id.to_string())
            .bind(job.app_id.to_string())
            .bind(job.new_jid.to_string())
            .bind(job.refresh_expire)
            .bind(job.key_id.clone())
            .bind(job.ip.clone())
            .bind(job.useragent.clone())
            .bind(job.now)
            .bind(job.expected.to_string())
            .bind(digest(job.presented))
            .bind(digest(job.digest));
    }
    // Padding: an empty session id matches no session.
    for _ in jobs.len()..jobs.len().next_power_of_two() {
        query = query
            .bind("")
            .bind("")
            .bind("")
            .bind(0i64)
            .bind("")
            .bind("")
            .bind("")
            .bind(0i64)
            .bind("")
            .bind(None::<Vec<u8>>)
            .bind(None::<Vec<u8>>);
    }
    match query.fetch_all(writer).await {
        Ok(rows) => answer_batch(jobs, rows),
        Err(err) if is_busy(&err) => {
            for job in jobs {
                let _ = job.reply.send(Err(busy(&err)));
            }
        }
        Err(_) => {
            for job in jobs {
                let result = rotate_one(writer, &job).await;
                let _ = job.reply.send(result);
            }
        }
    }
}

/// Whether a batch failed because the database is busy or gone (for example another
/// process holds the write lock past the busy timeout), rather than because of its data.
/// Then each job fails at once as unavailable (503, nothing written): retrying the jobs one
/// by one would make each wait the busy timeout again, the last one (jobs + 1) times over,
/// and would stall every write queued behind the batch.
fn is_busy(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => true,
        sqlx::Error::Database(db) => {
            db.code().and_then(|c| c.parse::<i32>().ok()).is_some_and(|c| matches!(c & 0xff, 5 | 6))
        }
        _ => false,
    }
}

/// The error each job of a batch gets when the batch failed as [`is_busy`].
pub(super) fn busy(err: &sqlx::Error) -> StoreError {
    let cause = std::io::Error::other(format!("a batch of writes failed: {err}"));
    StoreError::Unavailable(sqlx::Error::Io(cause))
}

/// One rotation on its own, as the unbatched path does it.
pub(super) async fn rotate_one(
    writer: &SqlitePool,
    job: &RotateJob,
) -> Result<Option<Session>, StoreError> {
    let rotation = job.rotation();
    let sql = rotate_sql();
    let row = bind_rotation!(
        sqlx::query_as::<_, SessionRow>(&sql),
        job.app_id,
        job.session_id,
        job.expected,
        &rotation,
        job.now
    )
    .fetch_optional(writer)
    .await?;
    row.map(Session::try_from).transpose()
}
