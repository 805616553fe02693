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
//!
//! A rotation of a DPoP-bound session carries its proof's `jti`: the same statement swaps
//! only rotations whose proof is new, and records the proofs of the rows it swapped in the
//! unlogged table `dpop_proofs`. The proofs that renews on the verified path spend go
//! through a third task: one `INSERT … SELECT FROM UNNEST(…) ON CONFLICT DO NOTHING
//! RETURNING` per batch.
//!
//! Each batcher keeps the pooled connection it writes on from one batch to the next
//! ([`Held`]) instead of borrowing one for each batch: sqlx pings a connection when it
//! returns to the pool and again when it is lent out, two more round trips to the server
//! per batch, which at low load is per renew. A held connection goes back after any failed
//! statement (a connection that broke while idle fails its next batch, which is then in
//! doubt and resolved like any other), when the gateway has moved to another host, and
//! when the pool closes.

use std::sync::OnceLock;

use sqlx::pool::PoolConnection;
use sqlx::postgres::PgConnection;
use sqlx::{PgPool, Postgres};
use tokio::sync::mpsc;

use super::batch::{self, digest, InsertJob, Job, RotateJob, SpendJob, QUEUE};
use super::sql::{statements, swap, COLUMNS, ROTATION};
use super::SessionRow;
use crate::Backend;

/// The sending side; cloning it is cheap.
#[derive(Debug, Clone)]
pub(super) struct PgBatch {
    pub(super) rotations: mpsc::Sender<RotateJob>,
    pub(super) inserts: mpsc::Sender<InsertJob>,
    pub(super) spends: mpsc::Sender<SpendJob>,
}

impl PgBatch {
    /// Starts the two batchers on the current Tokio runtime; `None` outside one.
    pub(super) fn start(db: &Backend) -> Option<Self> {
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let pool = db.postgres()?.clone();
        let (rotations, mut rotation_queue) = mpsc::channel(QUEUE);
        let (inserts, mut insert_queue) = mpsc::channel(QUEUE);
        let (spends, mut spend_queue) = mpsc::channel(QUEUE);
        let mut spender = Held::new(db, pool.clone());
        let (mut rotator, mut inserter) = (Held::new(db, pool.clone()), Held::new(db, pool));
        runtime.spawn(async move {
            while let Some(jobs) = rotator.next(&mut rotation_queue).await {
                rotate_batch(&mut rotator, jobs).await;
            }
        });
        runtime.spawn(async move {
            while let Some(jobs) = inserter.next(&mut insert_queue).await {
                insert_batch(&mut inserter, jobs).await;
            }
        });
        runtime.spawn(async move {
            while let Some(jobs) = spender.next(&mut spend_queue).await {
                spend_batch(&mut spender, jobs).await;
            }
        });
        Some(Self { rotations, inserts, spends })
    }
}

/// A batcher's connection, taken from the pool at its first batch and kept while its
/// statements succeed on the host the gateway is on.
struct Held {
    db: Backend,
    pool: PgPool,
    /// The connection, and the host it was taken on (see [`Backend::host`]).
    conn: Option<(PoolConnection<Postgres>, usize)>,
}

impl Held {
    fn new(db: &Backend, pool: PgPool) -> Self {
        Self { db: db.clone(), pool, conn: None }
    }

    /// The next batch. While waiting for it, a held connection goes back to a pool that
    /// closes: closing a pool waits for every connection it lent.
    async fn next<J>(&mut self, queue: &mut mpsc::Receiver<J>) -> Option<Vec<J>> {
        if self.conn.is_some() {
            tokio::select! {
                jobs = batch::next(queue) => return jobs,
                () = self.pool.close_event() => self.conn = None,
            }
        }
        batch::next(queue).await
    }

    /// The held connection, or a new one from the pool if there is none or the gateway
    /// has moved to another host since it was taken.
    async fn connection(&mut self) -> Result<&mut PgConnection, sqlx::Error> {
        let host = self.db.host();
        if let Some((conn, on)) = self.conn.take() {
            if on == host {
                return Ok(&mut *self.conn.insert((conn, on)).0);
            }
            conn.close().await.ok();
        }
        let conn = self.db.acquire(|| self.pool.acquire()).await?;
        let host = self.db.host();
        Ok(&mut *self.conn.insert((conn, host)).0)
    }

    /// After a statement: a failed one gives its connection back, closed.
    async fn check<T>(&mut self, done: &Result<T, sqlx::Error>) {
        if done.is_err() {
            if let Some((conn, _)) = self.conn.take() {
                conn.close().await.ok();
            }
        }
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

/// The DPoP proof of each rotation, after the arrays of [`ROTATION`]: its `jti`'s digest
/// (null without a proof) and until when it is remembered.
const PROOF: [(&str, &str); 2] = [("proof_jti", "bytea"), ("proof_until", "int8")];

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

async fn insert_batch(held: &mut Held, mut jobs: Vec<InsertJob>) {
    let Some(conn) = batch::connect(&mut jobs, held.connection()).await else { return };
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
    held.check(&done).await;
    batch::settle_inserts(&held.db, jobs, done).await;
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

/// The batched compare-and-swap of a batch with DPoP-bound renews; the arrays are in the
/// order of [`ROTATION`], then [`PROOF`]. A rotation with a proof takes part only if the
/// proof is not recorded yet, and its proof is recorded by the same statement exactly when
/// its row swaps: one round trip and one commit for both. (Two rotations of one batch with
/// the same proof would be two renews of one session with one proof: the compare-and-swap
/// lets one win.) A batch without proofs keeps [`rotate_sql`], which reads no proofs.
fn rotate_spending_sql() -> &'static str {
    static SQL: OnceLock<String> = OnceLock::new();
    SQL.get_or_init(|| {
        let fields: Vec<(&str, &str)> = ROTATION.iter().chain(PROOF.iter()).copied().collect();
        let names = fields.iter().map(|(name, _)| *name).collect::<Vec<_>>().join(", ");
        let from = format!(
            " FROM (SELECT * FROM {} AS u ({names}) WHERE u.proof_jti IS NULL OR NOT EXISTS \
             (SELECT 1 FROM dpop_proofs p WHERE p.app_id = u.app_id \
             AND p.jti_digest = u.proof_jti)) AS b",
            unnest(&fields)
        );
        let columns = COLUMNS.map(|(name, _)| name).join(", ");
        let returning = COLUMNS.map(|(name, _)| format!("sessions.{name}")).join(", ");
        let returning = format!("{returning}, b.proof_jti, b.proof_until");
        let swap = swap(|i| format!("b.{}", ROTATION[i].0), &from, &returning);
        format!(
            "WITH rotated AS ({swap}), spent AS (INSERT INTO dpop_proofs \
             (app_id, jti_digest, expires_at) SELECT app_id, proof_jti, proof_until \
             FROM rotated WHERE proof_jti IS NOT NULL \
             ON CONFLICT (app_id, jti_digest) DO NOTHING) SELECT {columns} FROM rotated"
        )
    })
}

async fn rotate_batch(held: &mut Held, mut jobs: Vec<RotateJob>) {
    let Some(conn) = batch::connect(&mut jobs, held.connection()).await else { return };
    let spending = jobs.iter().any(|j| j.rotation.proof.is_some());
    let sql = if spending { rotate_spending_sql() } else { rotate_sql() };
    let mut query = sqlx::query_as::<Postgres, SessionRow>(sql)
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
    if spending {
        query = query
            .bind(column(&jobs, |j| j.rotation.proof.as_ref().map(|(jti, _)| jti.as_slice())))
            .bind(column(&jobs, |j| j.rotation.proof.map(|(_, until)| until)));
    }
    let rows = query.fetch_all(&mut *conn).await;
    held.check(&rows).await;
    batch::settle_rotations(&held.db, jobs, rows).await;
}

const SPEND: &str = "INSERT INTO dpop_proofs (app_id, jti_digest, expires_at) \
    SELECT * FROM UNNEST($1::text[], $2::bytea[], $3::int8[]) \
    ON CONFLICT (app_id, jti_digest) DO NOTHING RETURNING app_id, jti_digest";

/// The batched spend of DPoP proofs: each job learns whether its proof was new. Of jobs of
/// one batch with the same proof (a replay racing itself), only the first can be.
async fn spend_batch(held: &mut Held, mut jobs: Vec<SpendJob>) {
    let Some(conn) = batch::connect(&mut jobs, held.connection()).await else { return };
    let query = sqlx::query_as::<Postgres, (String, Vec<u8>)>(SPEND)
        .bind(column(&jobs, |j| j.app_id.to_string()))
        .bind(column(&jobs, |j| j.jti_digest.to_vec()))
        .bind(column(&jobs, |j| j.until));
    let rows = query.fetch_all(&mut *conn).await;
    held.check(&rows).await;
    match rows {
        Ok(rows) => {
            let mut new: std::collections::HashSet<(String, Vec<u8>)> = rows.into_iter().collect();
            for job in jobs {
                let first = new.remove(&(job.app_id.to_string(), job.jti_digest.to_vec()));
                let _ = job.reply.send(Ok(first));
            }
        }
        Err(err) => {
            // Nothing to resolve: a proof in doubt is refused (503), and the client makes
            // another one.
            let err = crate::StoreError::from(err);
            for job in jobs {
                job.fail(err.clone());
            }
        }
    }
}
