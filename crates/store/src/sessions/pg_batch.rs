//! Group commit for Postgres renews and signs: the compare-and-swaps that arrive while one
//! is running go together in the next statement, one `UPDATE … FROM UNNEST(…) RETURNING`
//! with the rotations as arrays, so they share one round trip and one commit (one WAL
//! flush) instead of paying one each. New sessions go the same way, in one
//! `INSERT … SELECT FROM UNNEST(…)` per batch, on a task of their own so that signs and
//! renews do not wait for each other. Each statement is the same text whatever the batch
//! size, so it stays prepared.
//!
//! Each rotation keeps its compare-and-swap semantics, as on SQLite (see
//! [`super::sqlite_batch`]): a row updates only if its `current_jid` (and, for an
//! unverified token, its digest) is still the expected one, and when several renews of one
//! token share a batch, exactly one of them wins.

use std::sync::OnceLock;

use sqlx::{PgPool, Postgres};
use tokio::sync::mpsc;

use super::batch::{self, digest, InsertJob, RotateJob, QUEUE};
use super::sql::{statements, swap, COLUMNS, ROTATION};
use super::SessionRow;
use crate::Backend;

/// The sending side; cloning it is cheap.
#[derive(Debug, Clone)]
pub(super) struct PgBatch {
    pub(super) rotations: mpsc::Sender<RotateJob>,
    pub(super) inserts: mpsc::Sender<InsertJob>,
}

impl PgBatch {
    /// Starts the two batchers on the current Tokio runtime; `None` outside one.
    pub(super) fn start(db: &Backend) -> Option<Self> {
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let pool = db.postgres()?.clone();
        let (rotations, mut rotation_queue) = mpsc::channel(QUEUE);
        let (inserts, mut insert_queue) = mpsc::channel(QUEUE);
        let (db, insert_db, insert_pool) = (db.clone(), db.clone(), pool.clone());
        runtime.spawn(async move {
            while let Some(jobs) = batch::next(&mut rotation_queue).await {
                rotate_batch(&db, &pool, jobs).await;
            }
        });
        runtime.spawn(async move {
            while let Some(jobs) = batch::next(&mut insert_queue).await {
                insert_batch(&insert_db, &insert_pool, jobs).await;
            }
        });
        Some(Self { rotations, inserts })
    }
}

// mutants: a broken batched statement (or no batcher) is equivalent in outcome: a batch
// that fails for another reason than an unreachable database is retried job by job with
// the single-statement compare-and-swap. Only throughput changes.
/// `UNNEST($1::text[], …)` over arrays of the types of `fields`, in order.
fn unnest(fields: &[(&str, &str)]) -> String {
    let arrays: Vec<String> =
        fields.iter().enumerate().map(|(i, (_, ty))| format!("${}::{ty}[]", i + 1)).collect();
    format!("UNNEST({})", arrays.join(", "))
}

/// One column of a batch, as the array that fills it.
fn column<'a, J, T>(jobs: &'a [J], value: impl Fn(&'a J) -> T) -> Vec<T> {
    jobs.iter().map(value).collect()
}

/// The batched insert of new sessions; the arrays are in the order of [`COLUMNS`].
fn insert_sql() -> &'static str {
    static SQL: OnceLock<String> = OnceLock::new();
    SQL.get_or_init(|| {
        format!("INSERT INTO sessions ({}) SELECT * FROM {}", statements().names, unnest(&COLUMNS))
    })
}

async fn insert_batch(db: &Backend, pool: &PgPool, mut jobs: Vec<InsertJob>) {
    let Some(mut conn) = batch::connect(&mut jobs, pool.acquire()).await else { return };
    let query = sqlx::query::<Postgres>(insert_sql())
        .bind(column(&jobs, |j| j.row.session_id.to_string()))
        .bind(column(&jobs, |j| j.row.app_id.to_string()))
        .bind(column(&jobs, |j| j.row.sub.as_str()))
        .bind(column(&jobs, |j| j.row.claims.as_str()))
        .bind(column(&jobs, |j| j.row.created_at))
        .bind(column(&jobs, |j| j.row.expires_at))
        .bind(column(&jobs, |j| j.row.current_jid.to_string()))
        .bind(column(&jobs, |j| j.row.current_iat))
        .bind(column(&jobs, |j| j.row.current_exp))
        .bind(column(&jobs, |j| j.row.key_id.to_string()))
        .bind(column(&jobs, |j| j.row.prev_jid.map(|j| j.to_string())))
        .bind(column(&jobs, |j| j.row.rotated_at))
        .bind(column(&jobs, |j| j.row.ip.as_str()))
        .bind(column(&jobs, |j| j.row.useragent.as_str()))
        .bind(column(&jobs, |j| j.row.last_renewed_at))
        .bind(column(&jobs, |j| j.row.revoked_at))
        .bind(column(&jobs, |j| j.row.revoked_reason.as_deref()))
        .bind(column(&jobs, |j| j.row.current_digest.as_deref()));
    let done = query.execute(&mut *conn).await.map(drop);
    drop(conn);
    batch::settle_inserts(db, jobs, done).await;
}

/// The batched compare-and-swap; the arrays are in the order of [`ROTATION`].
fn rotate_sql() -> &'static str {
    static SQL: OnceLock<String> = OnceLock::new();
    SQL.get_or_init(|| {
        let names = ROTATION.map(|(name, _)| name).join(", ");
        let from = format!(" FROM {} AS b ({names})", unnest(&ROTATION));
        let returning = COLUMNS.map(|(name, _)| format!("sessions.{name}")).join(", ");
        swap(|i| format!("b.{}", ROTATION[i].0), &from, &returning)
    })
}

async fn rotate_batch(db: &Backend, pool: &PgPool, mut jobs: Vec<RotateJob>) {
    let Some(mut conn) = batch::connect(&mut jobs, pool.acquire()).await else { return };
    let query = sqlx::query_as::<Postgres, SessionRow>(rotate_sql())
        .bind(column(&jobs, |j| j.rotation.session_id.to_string()))
        .bind(column(&jobs, |j| j.rotation.app_id.to_string()))
        .bind(column(&jobs, |j| j.rotation.new_jid.to_string()))
        .bind(column(&jobs, |j| j.rotation.refresh_expire))
        .bind(column(&jobs, |j| j.rotation.key_id.to_string()))
        .bind(column(&jobs, |j| j.rotation.ip.as_str()))
        .bind(column(&jobs, |j| j.rotation.useragent.as_str()))
        .bind(column(&jobs, |j| j.rotation.now))
        .bind(column(&jobs, |j| j.rotation.expected.to_string()))
        .bind(column(&jobs, |j| digest(&j.rotation.presented)))
        .bind(column(&jobs, |j| digest(&j.rotation.digest)));
    let rows = query.fetch_all(&mut *conn).await;
    drop(conn);
    batch::settle_rotations(db, jobs, rows).await;
}
