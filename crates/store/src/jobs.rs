//! What only Postgres needs when several gateways share it: electing one gateway for the
//! background jobs (a transaction-scoped advisory lock), and listening for the changes the
//! others announce on [`CHANGES_CHANNEL`].

use sqlx::postgres::PgListener;
use sqlx::{Postgres, Transaction};

use crate::{Backend, StoreError, CHANGES_CHANNEL};

/// Taken by the one gateway that runs a pass of the background jobs, keyed by the schema
/// so that separate deployments on one server do not exclude each other.
pub const TRY_JOBS_LOCK: &str =
    "SELECT pg_try_advisory_xact_lock(hashtextextended('keygate jobs ' || current_schema(), 0))";

/// Held while this gateway runs the jobs; dropping it (or [`JobsLease::release`]) lets
/// another gateway take the next pass.
#[derive(Debug)]
pub struct JobsLease {
    /// The transaction that holds the lock on Postgres; none on SQLite.
    tx: Option<Transaction<'static, Postgres>>,
}

impl JobsLease {
    pub async fn release(self) -> Result<(), StoreError> {
        if let Some(tx) = self.tx {
            tx.rollback().await?;
        }
        Ok(())
    }
}

impl Backend {
    /// The jobs lease, or `None` when another gateway holds it. Always granted on SQLite,
    /// which has one process.
    pub async fn try_jobs_lease(&self) -> Result<Option<JobsLease>, StoreError> {
        let Some(pool) = self.postgres() else { return Ok(Some(JobsLease { tx: None })) };
        // The lock lives as long as this transaction; the jobs run on other connections.
        let mut tx = pool.begin().await?;
        let elected: bool = sqlx::query_scalar(TRY_JOBS_LOCK).fetch_one(&mut *tx).await?;
        Ok(elected.then_some(JobsLease { tx: Some(tx) }))
    }

    /// Listens for announced changes; `None` on SQLite, where there is nothing to hear.
    pub async fn listen_changes(&self) -> Option<Result<ChangeListener, StoreError>> {
        let pool = self.postgres()?;
        let listener = async {
            let mut listener = PgListener::connect_with(pool).await?;
            listener.listen(CHANGES_CHANNEL).await?;
            Ok(ChangeListener { listener })
        };
        Some(listener.await)
    }
}

/// What a [`ChangeListener`] heard.
#[derive(Debug)]
pub enum Heard {
    /// An announcement's payload.
    Change(String),
    /// The connection was lost and re-established: what was announced meanwhile is lost.
    Lost,
    /// The pool closed: the process is stopping.
    Closed,
}

#[derive(Debug)]
pub struct ChangeListener {
    listener: PgListener,
}

impl ChangeListener {
    /// The next announcement; an error when the connection failed and could not be
    /// re-established.
    pub async fn recv(&mut self) -> Result<Heard, StoreError> {
        match self.listener.try_recv().await {
            Ok(Some(notification)) => Ok(Heard::Change(notification.payload().to_owned())),
            Ok(None) => Ok(Heard::Lost),
            Err(sqlx::Error::PoolClosed) => Ok(Heard::Closed),
            Err(error) => Err(error.into()),
        }
    }
}
