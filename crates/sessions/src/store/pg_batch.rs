//! Group commit for Postgres renews and signs: the compare-and-swaps that arrive while one
//! is running go together in the next statement, one `UPDATE … FROM UNNEST(…) RETURNING`
//! with the rotations as arrays, so they share one round trip and one commit (one WAL
//! flush) instead of paying one each. New sessions go the same way, in one
//! `INSERT … SELECT FROM UNNEST(…)` per batch, on a task of their own so that signs and
//! renews do not wait for each other. Each statement is the same text whatever the batch
//! size, so it stays prepared.
//!
//! Each rotation keeps its compare-and-swap semantics, as on SQLite (see
//! [`super::group_commit`]): a row updates only if its `current_jid` (and, for an
//! unverified token, its digest) is still the expected one, and when several renews of one
//! token share a batch, exactly one of them wins.

use std::sync::OnceLock;

use sqlx::PgPool;
use tokio::sync::mpsc;

use super::group_commit::{answer_batch, busy, InsertJob, RotateJob};
use super::*;

/// The most rotations one statement carries.
const MAX_BATCH: usize = 256;
/// Rotations waiting for the batcher before senders wait too.
const QUEUE: usize = 4096;

/// The sending side; cloning it is cheap.
#[derive(Debug, Clone)]
pub(super) struct PgBatch {
    rotations: mpsc::Sender<RotateJob>,
    inserts: mpsc::Sender<InsertJob>,
}

impl PgBatch {
    /// Starts the two batchers on the current Tokio runtime; `None` outside one.
    pub(super) fn start(pool: PgPool) -> Option<Self> {
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let (rotations, rotation_queue) = mpsc::channel(QUEUE);
        let (inserts, insert_queue) = mpsc::channel(QUEUE);
        let insert_pool = pool.clone();
        runtime.spawn(run(rotation_queue, move |jobs| {
            let pool = pool.clone();
            async move { rotate_batch(&pool, jobs).await }
        }));
        runtime.spawn(run(insert_queue, move |jobs| {
            let pool = insert_pool.clone();
            async move { insert_batch(&pool, jobs).await }
        }));
        Some(Self { rotations, inserts })
    }

    pub(super) async fn rotate(&self, job: RotateJob) -> Result<(), StoreError> {
        self.rotations.send(job).await.map_err(|_| closed())
    }

    pub(super) async fn insert(&self, job: InsertJob) -> Result<(), StoreError> {
        self.inserts.send(job).await.map_err(|_| closed())
    }
}

fn closed() -> StoreError {
    StoreError::Unavailable(sqlx::Error::PoolClosed)
}

/// Takes every job waiting (up to [`MAX_BATCH`]) and hands them to `write` as one batch;
/// the next batch forms while it runs.
async fn run<J, F, Fut>(mut queue: mpsc::Receiver<J>, write: F)
where
    F: Fn(Vec<J>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    while let Some(first) = queue.recv().await {
        let mut jobs = vec![first];
        while jobs.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        write(jobs).await;
    }
}

/// The batched insert of new sessions; the arrays are in the column order of `INSERT`.
fn insert_sql() -> &'static str {
    static SQL: OnceLock<String> = OnceLock::new();
    SQL.get_or_init(|| {
        format!(
            "{BULK_INSERT} SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], \
             $4::text[], $5::int8[], $6::int8[], $7::text[], $8::int8[], $9::int8[], \
             $10::text[], $11::text[], $12::int8[], $13::text[], $14::text[], $15::int8[], \
             $16::int8[], $17::text[], $18::bytea[])"
        )
    })
}

/// One column of a batch of new sessions, as the array that fills it.
fn column<T>(jobs: &[InsertJob], value: impl Fn(&Session) -> T) -> Vec<T> {
    jobs.iter().map(|job| value(&job.session)).collect()
}

async fn insert_batch(pool: &PgPool, jobs: Vec<InsertJob>) {
    let query = sqlx::query(insert_sql())
        .bind(column(&jobs, |s| s.session_id.to_string()))
        .bind(column(&jobs, |s| s.app_id.to_string()))
        .bind(column(&jobs, |s| s.sub.clone()))
        .bind(jobs.iter().map(|job| job.claims.clone()).collect::<Vec<_>>())
        .bind(column(&jobs, |s| s.created_at))
        .bind(column(&jobs, |s| s.expires_at))
        .bind(column(&jobs, |s| s.current_jid.to_string()))
        .bind(column(&jobs, |s| s.current_iat))
        .bind(column(&jobs, |s| s.current_exp))
        .bind(column(&jobs, |s| s.key_id.clone()))
        .bind(column(&jobs, |s| s.prev_jid.map(|jid| jid.to_string())))
        .bind(column(&jobs, |s| s.rotated_at))
        .bind(column(&jobs, |s| s.ip.clone()))
        .bind(column(&jobs, |s| s.useragent.clone()))
        .bind(column(&jobs, |s| s.last_renewed_at))
        .bind(column(&jobs, |s| s.revoked_at))
        .bind(column(&jobs, |s| s.revoked_reason.clone()))
        .bind(column(&jobs, |s| s.current_digest.map(|d| d.0.to_vec())));
    match query.execute(pool).await {
        Ok(_) => {
            for job in jobs {
                let _ = job.reply.send(Ok(()));
            }
        }
        Err(err) if is_unreachable(&err) => {
            for job in jobs {
                let _ = job.reply.send(Err(busy(&err)));
            }
        }
        // Nothing of the batch was written (one session's app was just deleted, say): each
        // job gets its own statement and its own answer.
        Err(_) => {
            for job in jobs {
                let result = bind_session!(sqlx::query(INSERT), &job.session, &job.claims)
                    .execute(pool)
                    .await
                    .map(|_| ())
                    .map_err(StoreError::from);
                let _ = job.reply.send(result);
            }
        }
    }
}

/// The batched compare-and-swap; the arrays are in the order of `rotate_sql`'s parameters.
fn batch_sql() -> &'static str {
    static SQL: OnceLock<String> = OnceLock::new();
    SQL.get_or_init(|| {
        let returning: Vec<String> =
            COLUMNS.split(", ").map(|column| format!("sessions.{column}")).collect();
        format!(
            "UPDATE sessions SET prev_jid = sessions.current_jid, current_jid = b.new_jid, \
             current_iat = b.now, \
             current_exp = CASE WHEN b.now + b.refresh_expire < sessions.expires_at \
             THEN b.now + b.refresh_expire ELSE sessions.expires_at END, \
             key_id = b.key_id, rotated_at = b.now, ip = b.ip, useragent = b.useragent, \
             last_renewed_at = b.now, current_digest = b.digest \
             FROM UNNEST($1::text[], $2::text[], $3::text[], $4::int8[], $5::text[], \
             $6::text[], $7::text[], $8::int8[], $9::text[], $10::bytea[], $11::bytea[]) \
             AS b (session_id, app_id, new_jid, refresh_expire, key_id, ip, useragent, now, \
             expected, presented, digest) \
             WHERE sessions.session_id = b.session_id AND sessions.app_id = b.app_id \
             AND sessions.current_jid = b.expected AND sessions.revoked_at IS NULL \
             AND sessions.expires_at > b.now \
             AND (b.presented IS NULL OR sessions.current_digest = b.presented) \
             RETURNING {}",
            returning.join(", ")
        )
    })
}

async fn rotate_batch(pool: &PgPool, jobs: Vec<RotateJob>) {
    let digest = |d: Option<TokenDigest>| d.map(|d| d.0.to_vec());
    let query = sqlx::query_as::<_, SessionRow>(batch_sql())
        .bind(jobs.iter().map(|j| j.session_id.to_string()).collect::<Vec<_>>())
        .bind(jobs.iter().map(|j| j.app_id.to_string()).collect::<Vec<_>>())
        .bind(jobs.iter().map(|j| j.new_jid.to_string()).collect::<Vec<_>>())
        .bind(jobs.iter().map(|j| j.refresh_expire).collect::<Vec<_>>())
        .bind(jobs.iter().map(|j| j.key_id.clone()).collect::<Vec<_>>())
        .bind(jobs.iter().map(|j| j.ip.clone()).collect::<Vec<_>>())
        .bind(jobs.iter().map(|j| j.useragent.clone()).collect::<Vec<_>>())
        .bind(jobs.iter().map(|j| j.now).collect::<Vec<_>>())
        .bind(jobs.iter().map(|j| j.expected.to_string()).collect::<Vec<_>>())
        .bind(jobs.iter().map(|j| digest(j.presented)).collect::<Vec<_>>())
        .bind(jobs.iter().map(|j| digest(j.digest)).collect::<Vec<_>>());
    match query.fetch_all(pool).await {
        Ok(rows) => answer_batch(jobs, rows),
        // The database is unreachable or the pool exhausted: nothing was written, and each
        // job fails at once as unavailable rather than waiting for the pool again.
        Err(err) if is_unreachable(&err) => {
            for job in jobs {
                let _ = job.reply.send(Err(busy(&err)));
            }
        }
        // Nothing of the batch was written (a deadlock with another gateway's batch, say):
        // each job gets its own statement and its own answer.
        Err(_) => {
            for job in jobs {
                let result = rotate_one(pool, &job).await;
                let _ = job.reply.send(result);
            }
        }
    }
}

fn is_unreachable(err: &sqlx::Error) -> bool {
    matches!(
        err,
        sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed
    )
}

/// One rotation on its own: the single-statement compare-and-swap.
pub(super) async fn rotate_one(
    pool: &PgPool,
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
    .fetch_optional(pool)
    .await?;
    row.map(Session::try_from).transpose()
}
