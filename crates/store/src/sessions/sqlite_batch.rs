//! Group commit for SQLite: concurrent renews and signs share one statement, and so one
//! commit (one WAL fsync with `synchronous=FULL`), instead of paying one each.
//!
//! A single task owns the batching, on a thread of its own (`keygate-commit`) with a
//! single-threaded runtime: a job wakes that one thread, instead of a worker of the shared
//! multi-threaded runtime that may wake a second one to look for work. It takes every job
//! that is waiting, writes all inserts as one multi-row INSERT and all rotations as one
//! `UPDATE … FROM (VALUES …) RETURNING` (a lone rotation, every renew's at low load, as the
//! one-row `UPDATE … RETURNING`), each a statement of its own in autocommit: the
//! write lock is held only while SQLite runs that statement, never across other work. Each
//! rotation keeps compare-and-swap semantics: a row updates only if its `current_jid` is
//! still the expected one, and when several renews of one token share a batch, exactly one
//! of them wins.
//!
//! The batcher runs its statements itself, on a connection of its own ([`conn`]), instead
//! of handing them to a pooled sqlx connection, whose statements run on a worker thread of
//! their own: each handoff there, and each row and result sent back, was a wake-up of one
//! thread by another (about 13 context switches per renew at 1,000 renews/s; the CPU it
//! saves is in docs/benchmarks.md). The batcher's writes and the pool's (revocations, signs
//! under a session limit, key changes) take turns on SQLite's write lock, within the busy
//! timeout. A statement blocks the batcher's thread while it runs, which is all that thread
//! does; jobs queue meanwhile and form the next batch.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use rusqlite::params_from_iter;
use tokio::sync::mpsc;

use super::batch::{self, closed, InsertJob, RotateJob, MAX_BATCH, QUEUE};
use super::sql::{statements, swap, COLUMNS, ROTATION};
use super::sqlite_conn as conn;
use super::SessionRow;
use crate::{Backend, Sql, StoreError};

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
    /// Postgres, whose batchers are tasks on it), for an in-memory database (which a second
    /// connection cannot open by name), or if the thread cannot start.
    pub(super) fn start(db: &Backend) -> Option<Self> {
        tokio::runtime::Handle::try_current().ok()?;
        let path = db.sqlite_writer()?.connect_options().get_filename().to_path_buf();
        if !path.is_file() {
            return None;
        }
        let writer = Writer { path, busy_timeout: db.busy_timeout(), conn: None };
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

/// The batcher's own connection, opened at its first batch.
struct Writer {
    path: PathBuf,
    busy_timeout: Duration,
    conn: Option<rusqlite::Connection>,
}

impl Writer {
    fn connection(&mut self) -> Result<&mut rusqlite::Connection, sqlx::Error> {
        Ok(match self.conn.take() {
            Some(conn) => self.conn.insert(conn),
            None => self.conn.insert(conn::open(&self.path, self.busy_timeout)?),
        })
    }
}

async fn run(db: Backend, mut writer: Writer, mut queue: mpsc::Receiver<Job>) {
    while let Some(jobs) = batch::next(&mut queue).await {
        let (mut rotations, mut inserts) = (Vec::new(), Vec::new());
        for job in jobs {
            match job {
                Job::Rotate(job) => rotations.push(job),
                Job::Insert(job) => inserts.push(job),
            }
        }
        if !inserts.is_empty() {
            insert_batch(&db, &mut writer, inserts).await;
        }
        if !rotations.is_empty() {
            rotate_batch(&db, &mut writer, rotations).await;
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

async fn insert_batch(db: &Backend, writer: &mut Writer, mut jobs: Vec<InsertJob>) {
    let Some(conn) = batch::connect(&mut jobs, async { writer.connection() }).await else {
        return;
    };
    let insert = format!("{}{}", statements().insert_into, positional(jobs.len(), COLUMNS.len()));
    let sql = jobs.iter().fold(Sql::new(insert), |sql, job| job.row.clone().bind(sql));
    // Batches differ in size, so their statements are not worth keeping prepared, except
    // the one of a lone insert: every sign at low load is one.
    let (text, args) = sql.into_parts();
    let done = if jobs.len() == 1 {
        conn.prepare_cached(&text)
            .and_then(|mut statement| statement.execute(params_from_iter(args)))
    } else {
        conn.execute(&text, params_from_iter(args))
    };
    batch::settle_inserts(db, jobs, done.map(drop).map_err(conn::error)).await;
}

/// The compare-and-swap of a lone rotation, every renew's at low load: the statement
/// `rotate_one` runs, with SQLite's numbered placeholders (`?N`, bound by position), so
/// that SQLite updates the one row by its key without building the batch's table of values
/// first.
fn rotate_one_sql() -> &'static str {
    static SQL: OnceLock<String> = OnceLock::new();
    SQL.get_or_init(|| swap(|i| format!("?{}", i + 1), "", &statements().names))
}

/// The batched compare-and-swap for `rows` rotations (a power of two up to [`MAX_BATCH`]).
/// A batch is padded to the next power of two with rows that match no session, so that
/// only a handful of statements exist and each stays prepared on the batcher's connection:
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

async fn rotate_batch(db: &Backend, writer: &mut Writer, mut jobs: Vec<RotateJob>) {
    let Some(conn) = batch::connect(&mut jobs, async { writer.connection() }).await else {
        return;
    };
    let text = match jobs.len() {
        1 => rotate_one_sql(),
        rows => rotate_batch_sql(rows),
    };
    let mut sql = jobs.iter().fold(Sql::new(text), |sql, job| job.rotation.clone().bind(sql));
    // Padding: an empty session id matches no session.
    for _ in jobs.len()..jobs.len().next_power_of_two() {
        sql = sql.bind("").bind("").bind("").bind(0i64).bind("").bind("").bind("");
        sql = sql.bind(0i64).bind("").bind(None::<Vec<u8>>).bind(None::<Vec<u8>>);
    }
    let rows = rotate(conn, sql).map_err(conn::error);
    batch::settle_rotations(db, jobs, rows).await;
}

/// Runs a batched rotation to its end, which commits it, and returns the rows it updated.
fn rotate(conn: &rusqlite::Connection, sql: Sql) -> rusqlite::Result<Vec<SessionRow>> {
    let (text, args) = sql.into_parts();
    let mut statement = conn.prepare_cached(&text)?;
    let rows = statement.query_map(params_from_iter(args), conn::session)?;
    rows.collect()
}
