//! Group commit for SQLite: concurrent renews and signs share one statement, and so one
//! commit (one WAL fsync with `synchronous=FULL`), instead of paying one each.
//!
//! A single task owns the batching, on a thread of its own (`keygate-commit`) with a
//! single-threaded runtime: a job wakes that one thread, instead of a worker of the shared
//! multi-threaded runtime that may wake a second one to look for work (the CPU per renew
//! it saves is in docs/benchmarks.md). It takes every job that is waiting, writes all inserts
//! as one multi-row INSERT and all rotations as one `UPDATE … FROM (VALUES …) RETURNING`,
//! each a statement of its own in autocommit: the write lock is held only while SQLite runs
//! that statement, never across other work. Each rotation keeps compare-and-swap semantics:
//! a row updates only if its `current_jid` is still the expected one, and when several
//! renews of one token share a batch, exactly one of them wins.

use std::sync::OnceLock;

use sqlx::{Sqlite, SqlitePool};
use tokio::sync::mpsc;

use super::batch::{self, closed, digest, InsertJob, RotateJob, MAX_BATCH, QUEUE};
use super::sql::{statements, swap, COLUMNS, ROTATION};
use super::SessionRow;
use crate::{Backend, StoreError};

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
    /// Starts the batcher on a thread of its own; `None` outside a Tokio runtime (as for
    /// Postgres, whose batchers are tasks on it) or if the thread cannot start.
    pub(super) fn start(db: &Backend) -> Option<Self> {
        tokio::runtime::Handle::try_current().ok()?;
        let writer = db.sqlite_writer()?.clone();
        let (jobs, queue) = mpsc::channel(QUEUE);
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
        let db = db.clone();
        std::thread::Builder::new()
            .name("keygate-commit".into())
            .spawn(move || runtime.block_on(run(db, writer, queue)))
            .ok()?;
        Some(Self { jobs })
    }

    pub(super) async fn submit(&self, job: Job) -> Result<(), StoreError> {
        self.jobs.send(job).await.map_err(|_| closed())
    }
}

async fn run(db: Backend, writer: SqlitePool, mut queue: mpsc::Receiver<Job>) {
    while let Some(jobs) = batch::next(&mut queue).await {
        let (mut rotations, mut inserts) = (Vec::new(), Vec::new());
        for job in jobs {
            match job {
                Job::Rotate(job) => rotations.push(job),
                Job::Insert(job) => inserts.push(job),
            }
        }
        if !inserts.is_empty() {
            insert_batch(&db, &writer, inserts).await;
        }
        if !rotations.is_empty() {
            rotate_batch(&db, &writer, rotations).await;
        }
    }
}

// mutants: as in pg_batch.rs, a broken statement here (or no group commit) only costs
// throughput: the failed batch is retried job by job.
/// `rows` tuples of `width` positional placeholders: `(?, ?), (?, ?)`.
fn positional(rows: usize, width: usize) -> String {
    let tuple = format!("({})", vec!["?"; width].join(", "));
    vec![tuple.as_str(); rows].join(", ")
}

async fn insert_batch(db: &Backend, writer: &SqlitePool, mut jobs: Vec<InsertJob>) {
    let Some(mut conn) = batch::connect(&mut jobs, writer.acquire()).await else { return };
    let sql = format!("{}{}", statements().insert_into, positional(jobs.len(), COLUMNS.len()));
    let mut query = sqlx::query::<Sqlite>(&sql);
    for job in &jobs {
        let r = &job.row;
        query = query
            .bind(r.session_id.to_string())
            .bind(r.app_id.to_string())
            .bind(r.sub.as_str())
            .bind(r.claims.as_str())
            .bind(r.created_at)
            .bind(r.expires_at)
            .bind(r.current_jid.to_string())
            .bind(r.current_iat)
            .bind(r.current_exp)
            .bind(r.key_id.to_string())
            .bind(r.prev_jid.map(|j| j.to_string()))
            .bind(r.rotated_at)
            .bind(r.ip.as_str())
            .bind(r.useragent.as_str())
            .bind(r.last_renewed_at)
            .bind(r.revoked_at)
            .bind(r.revoked_reason.as_deref())
            .bind(r.current_digest.as_deref());
    }
    // Batches differ in size, so their statements are not worth keeping prepared.
    let done = query.persistent(false).execute(&mut *conn).await.map(drop);
    // The job-by-job retry takes the writer's one connection.
    drop(conn);
    batch::settle_inserts(db, jobs, done).await;
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
        let names = ROTATION.map(|(name, _)| name).join(", ");
        let values = positional(size, ROTATION.len());
        let column = |i: usize| format!("batch.{}", ROTATION[i].0);
        let update = swap(column, " FROM batch", &statements().names);
        format!("WITH batch ({names}) AS (VALUES {values}) {update}")
    })
}

async fn rotate_batch(db: &Backend, writer: &SqlitePool, mut jobs: Vec<RotateJob>) {
    let Some(mut conn) = batch::connect(&mut jobs, writer.acquire()).await else { return };
    let mut query = sqlx::query_as::<Sqlite, SessionRow>(rotate_batch_sql(jobs.len()));
    for job in &jobs {
        let r = &job.rotation;
        query = query
            .bind(r.session_id.to_string())
            .bind(r.app_id.to_string())
            .bind(r.new_jid.to_string())
            .bind(r.refresh_expire)
            .bind(r.key_id.to_string())
            .bind(r.ip.as_str())
            .bind(r.useragent.as_str())
            .bind(r.now)
            .bind(r.expected.to_string())
            .bind(digest(&r.presented))
            .bind(digest(&r.digest));
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
            .bind(None::<&[u8]>)
            .bind(None::<&[u8]>);
    }
    let rows = query.fetch_all(&mut *conn).await;
    drop(conn);
    batch::settle_rotations(db, jobs, rows).await;
}
