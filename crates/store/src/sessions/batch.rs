//! What the group-commit batchers of both backends share: their jobs, how a batch is
//! gathered, and how the answers of its statement reach the jobs.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::sql::statements;
use super::{rotate_one, RotationRow, SessionRow};
use crate::{Backend, Sql, StoreError};

/// The most jobs one statement carries (11 bound values per rotation).
pub(super) const MAX_BATCH: usize = 256;
/// Jobs waiting for a batcher before senders wait too.
pub(super) const QUEUE: usize = 4096;

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

pub(super) struct RotateJob {
    pub(super) rotation: RotationRow,
    pub(super) reply: Reply<Option<SessionRow>>,
    pub(super) ticket: Ticket,
}

pub(super) struct InsertJob {
    pub(super) row: SessionRow,
    pub(super) reply: Reply<()>,
    pub(super) ticket: Ticket,
}

/// A DPoP proof to remember (Postgres): `reply` says whether it was new.
pub(super) struct SpendJob {
    pub(super) app_id: keygate_kernel::AppId,
    pub(super) jti_digest: [u8; 32],
    pub(super) until: i64,
    pub(super) reply: Reply<bool>,
    pub(super) ticket: Ticket,
}

/// A job's deadline for being sent, and who decided its fate: the batcher, which sends it
/// to the database, or its caller, which gives up on it at the deadline and answers 503.
/// Whichever comes first wins, so a job that was given up on is never sent, and the caller
/// of one that was sent always waits for its answer (and resolves it if it is in doubt).
#[derive(Debug, Clone)]
pub(super) struct Ticket {
    deadline: Instant,
    state: Arc<AtomicU8>,
}

const WAITING: u8 = 0;
const SENT: u8 = 1;
const ABANDONED: u8 = 2;

impl Ticket {
    /// A ticket for a job that must be sent before `deadline`.
    pub(super) fn new(deadline: Instant) -> Self {
        Self { deadline, state: Arc::new(AtomicU8::new(WAITING)) }
    }

    /// The batcher's claim, just before the statement goes out: false if the caller gave up.
    fn send(&self) -> bool {
        self.state.compare_exchange(WAITING, SENT, Ordering::AcqRel, Ordering::Acquire).is_ok()
    }

    /// The caller's claim at the deadline: false if the job was already sent.
    fn abandon(&self) -> bool {
        self.state.compare_exchange(WAITING, ABANDONED, Ordering::AcqRel, Ordering::Acquire).is_ok()
    }

    fn sent(&self) -> bool {
        self.state.load(Ordering::Acquire) == SENT
    }
}

/// A job of either kind, as the batcher handles it before its statement.
pub(super) trait Job {
    fn ticket(&self) -> &Ticket;
    /// Answers the job with an error.
    fn fail(self, err: StoreError);
}

impl Job for RotateJob {
    fn ticket(&self) -> &Ticket {
        &self.ticket
    }

    fn fail(self, err: StoreError) {
        let _ = self.reply.send(Err(err));
    }
}

impl Job for SpendJob {
    fn ticket(&self) -> &Ticket {
        &self.ticket
    }

    fn fail(self, err: StoreError) {
        let _ = self.reply.send(Err(err));
    }
}

impl Job for InsertJob {
    fn ticket(&self) -> &Ticket {
        &self.ticket
    }

    fn fail(self, err: StoreError) {
        let _ = self.reply.send(Err(err));
    }
}

/// A batcher that is gone, or a reply channel that closed without an answer.
pub(super) fn closed() -> StoreError {
    StoreError::Unavailable(sqlx::Error::PoolClosed)
}

/// No connection to a writable host came before the deadline: nothing was sent.
fn timed_out() -> StoreError {
    StoreError::Unavailable(sqlx::Error::PoolTimedOut)
}

/// Queues a job with `submit` and waits for its answer. At its deadline a job that the
/// batcher has not sent yet is given up (503, and it will never be sent); one that was
/// sent is waited for: its statement is running.
pub(super) async fn submit_and_wait<T>(
    ticket: Ticket,
    answer: oneshot::Receiver<Result<T, StoreError>>,
    submit: impl Future<Output = Result<(), StoreError>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout_at(ticket.deadline, submit).await {
        Ok(queued) => queued?,
        Err(_) => return Err(timed_out()),
    }
    let mut answer = answer;
    tokio::select! {
        biased;
        result = &mut answer => return received(result, &ticket),
        () = tokio::time::sleep_until(ticket.deadline) => {}
    }
    if ticket.abandon() {
        return Err(timed_out());
    }
    received(answer.await, &ticket)
}

/// An answer, or for a reply dropped unanswered (the batcher stopped), an error: in doubt
/// if the job had been sent.
fn received<T>(
    result: Result<Result<T, StoreError>, oneshot::error::RecvError>,
    ticket: &Ticket,
) -> Result<T, StoreError> {
    result.unwrap_or_else(|_| {
        Err(if ticket.sent() {
            let why = std::io::Error::other("the batcher stopped while the write was in flight");
            StoreError::InDoubt(sqlx::Error::Io(why))
        } else {
            closed()
        })
    })
}

/// Takes the connection a batch's statement runs on, waiting at most until the latest
/// deadline of its jobs, then claims every job whose caller still waits (see [`Ticket`]).
/// `None` when no job is left to send: each one was answered (503 if no connection came:
/// nothing was sent).
pub(super) async fn connect<J: Job, C>(
    jobs: &mut Vec<J>,
    acquire: impl Future<Output = Result<C, sqlx::Error>>,
) -> Option<C> {
    let latest = jobs.iter().map(|job| job.ticket().deadline).max()?;
    let conn = match tokio::time::timeout_at(latest, acquire).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(err)) => {
            let err = StoreError::from(err);
            for job in jobs.drain(..) {
                job.fail(err.clone());
            }
            return None;
        }
        Err(_) => {
            for job in jobs.drain(..) {
                job.fail(timed_out());
            }
            return None;
        }
    };
    jobs.retain(|job| job.ticket().send());
    (!jobs.is_empty()).then_some(conn)
}

/// How a batch's failed statement is settled.
enum Failure {
    /// The answer was lost after the statement was sent: each job resolves its own write.
    InDoubt(StoreError),
    /// Refused as a whole because the database is busy or cannot take the write (another
    /// process holds SQLite's write lock past the busy timeout, the host turned read-only
    /// in a failover): nothing was written, and each job fails at once (503).
    Refused(StoreError),
    /// Anything else (one session's app was just deleted, a deadlock with another
    /// gateway's batch) wrote nothing either: each job gets its own statement.
    OneByOne,
}

fn failure(err: sqlx::Error) -> Failure {
    let conflict = matches!(&err, sqlx::Error::Database(db)
        if matches!(db.code().as_deref(), Some("40P01" | "40001")));
    match StoreError::after_sent(err) {
        err if err.is_in_doubt() => Failure::InDoubt(err),
        err if err.is_unavailable() && !conflict => Failure::Refused(err),
        _ => Failure::OneByOne,
    }
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

// mutants: the failure arms here and `fail` are reached only when a batch fails (a held
// lock, a lost database): the gateway's outage and in-doubt tests cover them, the sessions
// suite does not (docs/reliability.md, "The store code of sessions").
/// Answers a batch of inserts whose statement ended in `done`; see [`settle_rotations`].
pub(super) async fn settle_inserts(
    db: &Backend,
    jobs: Vec<InsertJob>,
    done: Result<(), sqlx::Error>,
) {
    match done.map_err(failure) {
        Ok(()) => {
            for job in jobs {
                let _ = job.reply.send(Ok(()));
            }
        }
        Err(Failure::InDoubt(err) | Failure::Refused(err)) => fail(jobs, &err),
        Err(Failure::OneByOne) => {
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
/// A batch refused as a whole ([`Failure::Refused`]) fails each job at once (503):
/// retrying them one by one would make each wait the timeout again, the last one
/// (jobs + 1) times over, and would stall every write queued behind the batch. A batch in
/// doubt answers each job in doubt, and each caller resolves its own rotation. Any other
/// failure gives each job its own statement and its own answer.
pub(super) async fn settle_rotations(
    db: &Backend,
    jobs: Vec<RotateJob>,
    rows: Result<Vec<SessionRow>, sqlx::Error>,
) {
    match rows.map_err(failure) {
        Ok(rows) => {
            let mut won: HashMap<keygate_kernel::Jid, SessionRow> =
                rows.into_iter().map(|row| (row.current_jid, row)).collect();
            for job in jobs {
                let _ = job.reply.send(Ok(won.remove(&job.rotation.new_jid)));
            }
        }
        Err(Failure::InDoubt(err) | Failure::Refused(err)) => fail(jobs, &err),
        Err(Failure::OneByOne) => {
            for job in jobs {
                let _ = job.reply.send(rotate_one(db, job.rotation).await);
            }
        }
    }
}

/// Fails every job of a batch with the batch's error, of the same kind (unavailable, or in
/// doubt), saying that a batch failed.
fn fail<J: Job>(jobs: Vec<J>, err: &StoreError) {
    let cause = || {
        let source = std::error::Error::source(err).map_or(String::new(), |e| format!(": {e}"));
        sqlx::Error::Io(std::io::Error::other(format!("a batch of writes failed{source}")))
    };
    for job in jobs {
        job.fail(if err.is_in_doubt() {
            StoreError::InDoubt(cause())
        } else {
            StoreError::Unavailable(cause())
        });
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// A job whose batcher is busy past the job's deadline is withdrawn by its caller (503)
    /// and the batcher can no longer send it; one the batcher claimed first is waited for.
    #[tokio::test]
    async fn a_job_not_sent_by_its_deadline_is_withdrawn_and_never_sent() {
        let ticket = Ticket::new(Instant::now() + Duration::from_millis(100));
        let (_reply, answer) = oneshot::channel::<Result<(), StoreError>>();
        let started = Instant::now();
        let waited = submit_and_wait(ticket.clone(), answer, async { Ok(()) }).await;
        assert!(matches!(waited, Err(StoreError::Unavailable(sqlx::Error::PoolTimedOut))));
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(100) && took < Duration::from_secs(5), "{took:?}");
        assert!(!ticket.send(), "the batcher may not send a withdrawn job");

        let ticket = Ticket::new(Instant::now() + Duration::from_millis(100));
        let (reply, answer) = oneshot::channel::<Result<(), StoreError>>();
        assert!(ticket.send(), "the batcher claims it before the deadline");
        let batcher = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let _ = reply.send(Ok(()));
        });
        let waited = submit_and_wait(ticket.clone(), answer, async { Ok(()) }).await;
        assert!(waited.is_ok(), "a sent job is waited for past its deadline: {waited:?}");
        assert!(!ticket.abandon());
        batcher.await.unwrap();
    }

    /// A reply dropped unanswered is in doubt once the job was sent, a known failure before.
    #[tokio::test]
    async fn a_lost_reply_is_in_doubt_only_after_the_job_was_sent() {
        for sent in [false, true] {
            let ticket = Ticket::new(Instant::now() + Duration::from_secs(5));
            if sent {
                assert!(ticket.send());
            }
            let (reply, answer) = oneshot::channel::<Result<(), StoreError>>();
            drop(reply);
            let waited = submit_and_wait(ticket, answer, async { Ok(()) }).await.unwrap_err();
            assert_eq!(waited.is_in_doubt(), sent, "{waited:?}");
            assert!(waited.is_unavailable());
        }
    }
}
