//! Writes in doubt: a statement (in autocommit) or a `COMMIT` was sent and its answer was
//! lost, so it may have committed or not ([`StoreError::InDoubt`]). This happens when the
//! connection breaks while the commit is in flight, or when Postgres ends the session after
//! the commit is local but before the synchronous standby confirmed it (a fast or immediate
//! shutdown, a switchover, a failover).
//!
//! A write whose loss matters to a client (a renew's rotation, a sign's insert, a revoke)
//! is not answered until its outcome is known: [`resolve`] runs an attempt that finds out
//! and, where the write did not happen, applies it, until one succeeds or
//! [`Backend::in_doubt_timeout`] passes. Each attempt is one write transaction that locks
//! the rows it reads (`FOR UPDATE` on Postgres; SQLite's `BEGIN IMMEDIATE` holds the write
//! lock), so a lost statement still running on the server finishes first, and whose
//! `COMMIT` waits for the synchronous standby (a transaction that locked a row has a
//! transaction id): what an attempt read is durable on the standby before it answers.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::{Backend, StoreError};

/// The pause between two attempts that found no writable host.
const PAUSE: Duration = Duration::from_millis(100);

/// A write whose outcome can be in doubt and is resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Write {
    /// A renew's compare-and-swap.
    Rotate,
    /// A sign's new session.
    Sign,
    /// A revocation (logout, revoke, reuse detection).
    Revoke,
    /// A renew of a session that does not rotate.
    Touch,
    /// The undoing of a rotation whose tokens could not be issued.
    Unrotate,
}

impl Write {
    const ALL: [Self; 5] = [Self::Rotate, Self::Sign, Self::Revoke, Self::Touch, Self::Unrotate];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rotate => "rotate",
            Self::Sign => "sign",
            Self::Revoke => "revoke",
            Self::Touch => "touch",
            Self::Unrotate => "unrotate",
        }
    }
}

/// How a write in doubt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It had committed: its result is answered.
    Committed,
    /// It had not: it was applied now, and that is answered.
    Applied,
    /// It had not, and no longer applies (the session moved on meanwhile): answered as if
    /// it had lost a race.
    Superseded,
    /// The deadline passed with the outcome unknown: answered 503.
    Unresolved,
}

impl Outcome {
    const ALL: [Self; 4] = [Self::Committed, Self::Applied, Self::Superseded, Self::Unresolved];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Committed => "committed",
            Self::Applied => "applied",
            Self::Superseded => "superseded",
            Self::Unresolved => "unresolved",
        }
    }
}

/// How many writes of one kind ended one way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Count {
    pub write: Write,
    pub outcome: Outcome,
    pub count: u64,
}

/// The counts of one [`Backend`], by write and outcome.
#[derive(Debug, Default)]
pub(crate) struct Counts([[AtomicU64; Outcome::ALL.len()]; Write::ALL.len()]);

impl Counts {
    fn add(&self, write: Write, outcome: Outcome) {
        self.0[write as usize][outcome as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> Vec<Count> {
        Write::ALL
            .iter()
            .flat_map(|&write| Outcome::ALL.iter().map(move |&outcome| (write, outcome)))
            .map(|(write, outcome)| Count {
                write,
                outcome,
                count: self.0[write as usize][outcome as usize].load(Ordering::Relaxed),
            })
            .collect()
    }
}

/// What one attempt at resolving found, and the value to answer.
#[derive(Debug)]
pub(crate) struct Found<T> {
    pub(crate) outcome: Outcome,
    pub(crate) value: T,
}

impl<T> Found<T> {
    pub(crate) fn new(outcome: Outcome, value: T) -> Self {
        Self { outcome, value }
    }
}

/// Resolves a `write` that came back in doubt (`cause`): runs `attempt` until it answers,
/// pausing while no writable host answers, for at most the backend's in-doubt timeout. An
/// attempt must be idempotent, since its own commit can be in doubt too. Past the deadline
/// the write stays unresolved: an error that answers 503, counted as such.
pub(crate) async fn resolve<T, F, Fut>(
    db: &Backend,
    write: Write,
    cause: &StoreError,
    mut attempt: F,
) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Found<T>, StoreError>>,
{
    tracing::warn!(write = write.as_str(), error = %crate::error::chain(cause), "a write is in doubt (its answer was lost while it committed): finding out whether it committed");
    let deadline = Instant::now() + db.in_doubt_timeout();
    let mut attempts = 0u32;
    let mut last = String::new();
    while attempts == 0 || Instant::now() < deadline {
        attempts += 1;
        match tokio::time::timeout_at(deadline, attempt()).await {
            Ok(Ok(found)) => {
                db.in_doubt.add(write, found.outcome);
                tracing::info!(
                    write = write.as_str(),
                    outcome = found.outcome.as_str(),
                    attempts,
                    "a write in doubt was resolved"
                );
                return Ok(found.value);
            }
            // No writable host yet, or this attempt's own commit in doubt: again, shortly.
            Ok(Err(err)) if err.is_unavailable() => {
                last = crate::error::chain(&err);
                tokio::time::sleep_until((Instant::now() + PAUSE).min(deadline)).await;
            }
            Ok(Err(err)) => {
                db.in_doubt.add(write, Outcome::Unresolved);
                tracing::error!(write = write.as_str(), error = %crate::error::chain(&err), "a write in doubt could not be resolved");
                return Err(err);
            }
            Err(_) => "the last attempt did not finish in time".clone_into(&mut last),
        }
    }
    db.in_doubt.add(write, Outcome::Unresolved);
    let timeout = db.in_doubt_timeout().as_millis();
    tracing::error!(write = write.as_str(), attempts, last_error = %last, "a write stayed in doubt for {timeout} ms: answered 503");
    let why = format!("the outcome of a {} stayed unknown for {timeout} ms", write.as_str());
    Err(StoreError::InDoubt(sqlx::Error::Io(std::io::Error::other(why))))
}
