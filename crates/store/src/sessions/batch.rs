//! What the group-commit batchers of both backends share: their jobs, how a batch is
//! gathered, and how the answers of its statement reach the jobs.

use std::collections::HashMap;

use tokio::sync::{mpsc, oneshot};

use super::{rotate_one, statements, RotationRow, SessionRow};
use crate::{Backend, Sql, StoreError};

/// The most jobs one statement carries (11 bound values per rotation).
pub(super) const MAX_BATCH: usize = 256;
/// Jobs waiting for a batcher before senders wait too.
pub(super) const QUEUE: usize = 4096;

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

pub(super) struct RotateJob {
    pub(super) rotation: RotationRow,
    pub(super) reply: Reply<Option<SessionRow>>,
}

pub(super) struct InsertJob {
    pub(super) row: SessionRow,
    pub(super) reply: Reply<()>,
}

/// A batcher that is gone, or a reply channel that closed without an answer.
pub(super) fn closed() -> StoreError {
    StoreError::Unavailable(sqlx::Error::PoolClosed)
}

/// A digest, as bound.
pub(super) fn digest(digest: &Option<[u8; 32]>) -> Option<&[u8]> {
    digest.as_ref().map(<[u8; 32]>::as_slice)
}

// mutants: the batch-size comparison only changes how jobs are grouped; the answers stay
// the same (a throughput mutant, which `just bench` sees).
/// Waits for a job, then takes every other one waiting, up to [`MAX_BATCH`]; the next
/// batch forms while this one is written. `None` once every sender is gone.
pub(super) async fn next<J>(queue: &mut mpsc::Receiver<J>) -> Option<Vec<J>> {
    let mut jobs = vec![queue.recv().await?];
    while jobs.len() < MAX_BATCH {
        match queue.try_recv() {
            Ok(job) => jobs.push(job),
            Err(_) => break,
        }
    }
    Some(jobs)
}

// mutants: the `unreachable(&err)` guards here and `fail` are reached only when a batch
// fails (a held lock, a lost database): the gateway's outage tests cover them, the sessions
// suite does not (docs/reliability.md, "The store code of sessions").
/// Answers a batch of inserts whose statement ended in `done`; see [`settle_rotations`].
pub(super) async fn settle_inserts(
    db: &Backend,
    jobs: Vec<InsertJob>,
    done: Result<(), sqlx::Error>,
    unreachable: fn(&sqlx::Error) -> bool,
) {
    match done {
        Ok(()) => {
            for job in jobs {
                let _ = job.reply.send(Ok(()));
            }
        }
        Err(err) if unreachable(&err) => fail(jobs.into_iter().map(|job| job.reply), &err),
        Err(_) => {
            for job in jobs {
                let sql = job.row.bind(Sql::new(statements().insert.as_str()));
                let _ = job.reply.send(db.write(sql).execute().await.map(drop));
            }
        }
    }
}

/// Answers a batch of rotations whose statement returned `rows`: each updated row carries
/// the new jid of the job that won it, and every other job did not swap.
///
/// A batch that failed because the database is busy or unreachable (`unreachable`: for
/// example another process holds SQLite's write lock past the busy timeout, or the pool is
/// exhausted) wrote nothing, and each job fails at once as unavailable (503): retrying them
/// one by one would make each wait the timeout again, the last one (jobs + 1) times over,
/// and would stall every write queued behind the batch. Any other failure (one session's
/// app was just deleted, a deadlock with another gateway's batch) wrote nothing either:
/// each job gets its own statement and its own answer.
pub(super) async fn settle_rotations(
    db: &Backend,
    jobs: Vec<RotateJob>,
    rows: Result<Vec<SessionRow>, sqlx::Error>,
    unreachable: fn(&sqlx::Error) -> bool,
) {
    match rows {
        Ok(rows) => {
            let mut won: HashMap<String, SessionRow> =
                rows.into_iter().map(|row| (row.current_jid.clone(), row)).collect();
            for job in jobs {
                let _ = job.reply.send(Ok(won.remove(&job.rotation.new_jid)));
            }
        }
        Err(err) if unreachable(&err) => fail(jobs.into_iter().map(|job| job.reply), &err),
        Err(_) => {
            for job in jobs {
                let _ = job.reply.send(rotate_one(db, job.rotation).await);
            }
        }
    }
}

/// Fails every job of a batch as unavailable, with the batch's error as the cause.
fn fail<T>(replies: impl Iterator<Item = Reply<T>>, err: &sqlx::Error) {
    for reply in replies {
        let cause = std::io::Error::other(format!("a batch of writes failed: {err}"));
        let _ = reply.send(Err(StoreError::Unavailable(sqlx::Error::Io(cause))));
    }
}
