//! Sessions (refresh-token families). Every statement is written once over [`Backend`];
//! renews, and signs without a session limit, go through the group-commit batcher of the
//! open backend ([`sqlite_batch`] or [`pg_batch`]), where concurrent writes share one
//! statement and one commit. Every session statement derives its columns from
//! [`sql::COLUMNS`].

mod batch;
mod pg_batch;
mod sql;
mod sqlite_batch;
mod sqlite_conn;

use keygate_kernel::{AppId, Jid, KeyId, SessionId};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::backend::WriteTx;
use crate::in_doubt::{self, Found, Outcome, Write};
use crate::proofs::{spend_statement, ProofLedger};
use crate::{Backend, Kind, Sql, StoreError};
use batch::{closed, InsertJob, RotateJob, SpendJob, Ticket};
use sql::{
    for_update, numbered, statements, COLUMNS, CURRENT_JID, LIVE_BY_APP, LIVE_OF_SUBJECT, PURGE,
    REVOKED_APP, REVOKED_ONE, REVOKED_SUBJECT, REVOKE_APP, REVOKE_ONE, REVOKE_SUBJECT, TOUCH,
    UNROTATE,
};

/// Rows per multi-row INSERT of a bulk insert, well under SQLite's bound-parameter limit.
const BULK_ROWS: usize = 500;

/// A session as stored.
#[derive(Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct SessionRow {
    pub session_id: SessionId,
    pub app_id: AppId,
    pub sub: String,
    /// JSON.
    pub claims: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub current_jid: Jid,
    pub current_iat: i64,
    pub current_exp: i64,
    pub key_id: KeyId,
    pub prev_jid: Option<Jid>,
    pub rotated_at: Option<i64>,
    pub ip: String,
    pub useragent: String,
    pub last_renewed_at: i64,
    pub revoked_at: Option<i64>,
    pub revoked_reason: Option<String>,
    /// SHA-256 of the current refresh token.
    pub current_digest: Option<Vec<u8>>,
}

impl std::fmt::Debug for SessionRow {
    // The digest stays out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionRow").field("session_id", &self.session_id).finish_non_exhaustive()
    }
}

impl SessionRow {
    /// Binds the row's values in the order of [`COLUMNS`].
    fn bind(self, sql: Sql) -> Sql {
        sql.bind(self.session_id)
            .bind(self.app_id)
            .bind(self.sub)
            .bind(self.claims)
            .bind(self.created_at)
            .bind(self.expires_at)
            .bind(self.current_jid)
            .bind(self.current_iat)
            .bind(self.current_exp)
            .bind(self.key_id)
            .bind(self.prev_jid)
            .bind(self.rotated_at)
            .bind(self.ip)
            .bind(self.useragent)
            .bind(self.last_renewed_at)
            .bind(self.revoked_at)
            .bind(self.revoked_reason)
            .bind(self.current_digest)
    }
}

/// The compare-and-swap of one renew: session `session_id` of `app_id` gets `new_jid` as
/// its current token if `expected` still is.
#[derive(Clone)]
pub struct RotationRow {
    pub session_id: SessionId,
    pub app_id: AppId,
    pub new_jid: Jid,
    /// The app's refresh lifetime.
    pub refresh_expire: i64,
    pub key_id: KeyId,
    pub ip: String,
    pub useragent: String,
    pub now: i64,
    pub expected: Jid,
    /// The digest the current token must have; `None`: not compared.
    pub presented: Option<[u8; 32]>,
    /// The digest of the new token.
    pub digest: Option<[u8; 32]>,
    /// A DPoP proof the swap spends: the SHA-256 of its `jti`, and until when it is
    /// remembered. The swap happens only if the proof is new, and the proof is remembered
    /// exactly when the swap happens (see [`SessionTable::rotate`]).
    pub proof: Option<([u8; 32], i64)>,
}

impl std::fmt::Debug for RotationRow {
    // The digests stay out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RotationRow").field("session_id", &self.session_id).finish_non_exhaustive()
    }
}

impl RotationRow {
    /// Binds the rotation's values in the order of [`ROTATION`].
    fn bind(self, sql: Sql) -> Sql {
        sql.bind(self.session_id)
            .bind(self.app_id)
            .bind(self.new_jid)
            .bind(self.refresh_expire)
            .bind(self.key_id)
            .bind(self.ip)
            .bind(self.useragent)
            .bind(self.now)
            .bind(self.expected)
            .bind(self.presented.map(Vec::from))
            .bind(self.digest.map(Vec::from))
    }
}

/// Which live sessions of an app a revocation covers.
#[derive(Debug, Clone, Copy)]
pub enum Scope<'a> {
    Session(SessionId),
    Subject(&'a str),
    App,
}

/// The sessions table, with the group-commit batcher of its backend. Cloning it is cheap;
/// the batcher runs until the last clone is dropped.
#[derive(Debug, Clone)]
pub struct SessionTable {
    db: Backend,
    batcher: Option<Batcher>,
    proofs: std::sync::Arc<ProofLedger>,
}

#[derive(Debug, Clone)]
enum Batcher {
    Sqlite(sqlite_batch::GroupCommit),
    Postgres(pg_batch::PgBatch),
}

impl Batcher {
    async fn rotate(&self, job: RotateJob) -> Result<(), StoreError> {
        match self {
            Self::Sqlite(group) => group.submit(sqlite_batch::Job::Rotate(job)).await,
            Self::Postgres(batch) => batch.rotations.send(job).await.map_err(|_| closed()),
        }
    }

    async fn insert(&self, job: InsertJob) -> Result<(), StoreError> {
        match self {
            Self::Sqlite(group) => group.submit(sqlite_batch::Job::Insert(job)).await,
            Self::Postgres(batch) => batch.inserts.send(job).await.map_err(|_| closed()),
        }
    }
}

impl SessionTable {
    /// Inside a Tokio runtime this starts the group-commit tasks; outside one, every write
    /// commits on its own.
    pub fn open(db: &Backend) -> Self {
        let batcher = match db.kind() {
            Kind::Sqlite => sqlite_batch::GroupCommit::start(db).map(Batcher::Sqlite),
            Kind::Postgres => pg_batch::PgBatch::start(db).map(Batcher::Postgres),
        };
        let proofs = std::sync::Arc::new(ProofLedger::open(db));
        Self { db: db.clone(), batcher, proofs }
    }

    /// Records an accepted DPoP proof of `app_id`, by the SHA-256 of its `jti`, until
    /// `until`: false when it was recorded before (a replay). On SQLite the gateway's memory
    /// holds them; on Postgres the table `dpop_proofs`, through the batcher.
    pub async fn spend_proof(
        &self,
        app_id: AppId,
        jti_digest: [u8; 32],
        until: i64,
        now: i64,
    ) -> Result<bool, StoreError> {
        match &self.batcher {
            Some(Batcher::Postgres(batch)) => {
                let ticket = self.ticket();
                let (reply, answer) = oneshot::channel();
                let job = SpendJob { app_id, jti_digest, until, reply, ticket: ticket.clone() };
                let submit = async { batch.spends.send(job).await.map_err(|_| closed()) };
                batch::submit_and_wait(ticket, answer, submit).await
            }
            _ => self.proofs.spend(app_id, jti_digest, until, now).await,
        }
    }

    /// Forgets the DPoP proofs that expired at `now`.
    pub async fn purge_proofs(&self, now: i64) -> Result<u64, StoreError> {
        self.proofs.purge(now).await
    }

    /// A ticket for a write sent through a batcher: it must be sent within the busy timeout.
    fn ticket(&self) -> Ticket {
        Ticket::new(Instant::now() + self.db.busy_timeout())
    }

    /// Inserts a session. With `max_per_sub` > 0, first revokes the subject's oldest live
    /// sessions so that at most that many remain; returns how many were revoked. An insert
    /// in doubt is resolved before this returns.
    pub async fn create(&self, row: SessionRow, max_per_sub: i64) -> Result<u64, StoreError> {
        let created = match (&self.batcher, max_per_sub) {
            (Some(batcher), 0) => {
                let ticket = self.ticket();
                let (reply, answer) = oneshot::channel();
                let job = InsertJob { row: row.clone(), reply, ticket: ticket.clone() };
                batch::submit_and_wait(ticket, answer, batcher.insert(job)).await.map(|()| 0)
            }
            _ => self.create_in_tx(row.clone(), max_per_sub).await,
        };
        match created {
            Err(err) if err.is_in_doubt() => {
                let attempt = || self.resolve_create(&row, max_per_sub);
                in_doubt::resolve(&self.db, Write::Sign, &err, attempt).await
            }
            other => other,
        }
    }

    /// An insert in doubt: inserted again if it is not there (a lost insert still running
    /// makes this wait for it, on the session id's unique index), else found committed.
    async fn resolve_create(
        &self,
        row: &SessionRow,
        max_per_sub: i64,
    ) -> Result<Found<u64>, StoreError> {
        match self.create_in_tx(row.clone(), max_per_sub).await {
            Ok(evicted) => Ok(Found::new(Outcome::Applied, evicted)),
            Err(StoreError::Conflict(_)) => {
                // Session ids are unique: the lost insert had committed. Read it under a lock,
                // so that this transaction's commit waits for the synchronous standby too.
                let mut tx = self.db.begin_write().await?;
                let sql = Sql::new(for_update(CURRENT_JID, tx.kind()))
                    .bind(row.session_id)
                    .bind(row.app_id);
                let jid: Option<(Jid,)> = tx.fetch_optional(sql).await?;
                tx.commit().await?;
                match jid {
                    Some((jid,)) if jid == row.current_jid => Ok(Found::new(Outcome::Committed, 0)),
                    _ => Err(StoreError::Conflict("another session has this id".into())),
                }
            }
            Err(err) => Err(err),
        }
    }

    /// The insert in a transaction of its own, after the evictions of a session limit.
    async fn create_in_tx(&self, row: SessionRow, max_per_sub: i64) -> Result<u64, StoreError> {
        let mut tx = self.db.begin_write().await?;
        let mut evicted = 0;
        // mutants: `>=` is equivalent: a limit of 0 took the batcher above (every backend
        // has one), and without one `evictions` evicts nothing for 0.
        if max_per_sub > 0 {
            // Serialise session creation per subject, so concurrent signs cannot both see
            // room under the limit.
            tx.lock(&format!("{}/{}", row.app_id, row.sub)).await?;
            evicted = evict_oldest(&mut tx, &row, max_per_sub).await?;
        }
        tx.execute(row.bind(Sql::new(statements().insert.as_str()))).await?;
        tx.commit().await?;
        Ok(evicted)
    }

    /// Inserts many sessions in one transaction, without session limits.
    pub async fn bulk_insert(&self, rows: Vec<SessionRow>) -> Result<u64, StoreError> {
        let mut tx = self.db.begin_write().await?;
        let mut inserted = 0;
        let mut rows = rows.into_iter();
        loop {
            let chunk: Vec<SessionRow> = rows.by_ref().take(BULK_ROWS).collect();
            if chunk.is_empty() {
                break;
            }
            let values = numbered(chunk.len(), COLUMNS.len());
            let sql = Sql::new(format!("{}{values}", statements().insert_into));
            inserted += tx.execute(chunk.into_iter().fold(sql, |sql, row| row.bind(sql))).await?;
        }
        tx.commit().await?;
        Ok(inserted)
    }

    pub async fn get(
        &self,
        app_id: AppId,
        session_id: SessionId,
    ) -> Result<Option<SessionRow>, StoreError> {
        let sql = Sql::new(statements().get.as_str()).bind(app_id).bind(session_id);
        self.db.read(sql).fetch_optional().await
    }

    /// The compare-and-swap of a renew, as one statement (batched with concurrent ones):
    /// the session as rotated, or `None` when another renew (or a revoke, or expiry) came
    /// first. A rotation in doubt is resolved before this returns.
    ///
    /// With a DPoP proof, the Postgres batcher's statement checks and records it in the
    /// swap itself (one statement, one round trip); every other way records it first and
    /// forgets it again if the swap does not happen.
    pub async fn rotate(&self, rotation: RotationRow) -> Result<Option<SessionRow>, StoreError> {
        let in_statement = matches!(self.batcher, Some(Batcher::Postgres(_)));
        let first = rotation.proof.filter(|_| !in_statement);
        if let Some((jti, until)) = first {
            if !self.proofs.spend(rotation.app_id, jti, until, rotation.now).await? {
                return Ok(None);
            }
        }
        let mut rotation = rotation;
        if first.is_some() {
            rotation.proof = None;
        }
        let rotated = self.rotate_spending(rotation.clone()).await;
        if let (Some((jti, _)), true) = (first, did_not_swap(&rotated)) {
            self.proofs.forget(rotation.app_id, jti).await?;
        }
        rotated
    }

    /// [`Self::rotate`] once a proof not left to the statement is spent.
    async fn rotate_spending(
        &self,
        rotation: RotationRow,
    ) -> Result<Option<SessionRow>, StoreError> {
        let rotated = match &self.batcher {
            None => rotate_one(&self.db, rotation.clone()).await,
            Some(batcher) => {
                let ticket = self.ticket();
                let (reply, answer) = oneshot::channel();
                let job = RotateJob { rotation: rotation.clone(), reply, ticket: ticket.clone() };
                batch::submit_and_wait(ticket, answer, batcher.rotate(job)).await
            }
        };
        match rotated {
            Err(err) if err.is_in_doubt() => {
                let attempt = || resolve_rotation(&self.db, &rotation);
                in_doubt::resolve(&self.db, Write::Rotate, &err, attempt).await
            }
            other => other,
        }
    }

    /// Makes `restore_jid` (issued at `restore_iat`, expiring at `restore_exp`) the current
    /// token again if `new_jid` still is; false if the session moved on.
    pub async fn unrotate(
        &self,
        app_id: AppId,
        session_id: SessionId,
        new_jid: Jid,
        restore_jid: Jid,
        restore_iat: i64,
        restore_exp: i64,
    ) -> Result<bool, StoreError> {
        let sql = Sql::new(UNROTATE)
            .bind(session_id)
            .bind(app_id)
            .bind(new_jid)
            .bind(restore_jid)
            .bind(restore_iat)
            .bind(restore_exp);
        match self.db.write(sql.clone()).execute().await {
            Ok(changed) => Ok(changed == 1),
            Err(err) if err.is_in_doubt() => {
                let attempt = || async {
                    let mut tx = self.db.begin_write().await?;
                    if tx.execute(sql.clone()).await? == 1 {
                        tx.commit().await?;
                        return Ok(Found::new(Outcome::Applied, true));
                    }
                    let current =
                        Sql::new(for_update(CURRENT_JID, tx.kind())).bind(session_id).bind(app_id);
                    let jid: Option<(Jid,)> = tx.fetch_optional(current).await?;
                    tx.commit().await?;
                    Ok(match jid {
                        Some((jid,)) if jid == restore_jid => Found::new(Outcome::Committed, true),
                        _ => Found::new(Outcome::Superseded, false),
                    })
                };
                in_doubt::resolve(&self.db, Write::Unrotate, &err, attempt).await
            }
            Err(err) => Err(err),
        }
    }

    /// Records a renew without rotation; false if the session is no longer live.
    pub async fn touch(
        &self,
        app_id: AppId,
        session_id: SessionId,
        ip: &str,
        useragent: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        let sql = Sql::new(TOUCH).bind(session_id).bind(app_id).bind(ip).bind(useragent).bind(now);
        match self.db.write(sql.clone()).execute().await {
            Ok(changed) => Ok(changed == 1),
            // Idempotent: run again, it answers the same.
            Err(err) if err.is_in_doubt() => {
                let attempt = || async {
                    let changed = self.db.write(sql.clone()).execute().await?;
                    Ok(Found::new(Outcome::Applied, changed == 1))
                };
                in_doubt::resolve(&self.db, Write::Touch, &err, attempt).await
            }
            Err(err) => Err(err),
        }
    }

    /// Revokes the live sessions in `scope`; returns how many.
    pub async fn revoke(
        &self,
        app_id: AppId,
        scope: Scope<'_>,
        reason: &str,
        now: i64,
    ) -> Result<u64, StoreError> {
        let bound = |text: std::borrow::Cow<'static, str>| {
            let sql = match scope {
                Scope::Session(id) => Sql::new(text).bind(app_id).bind(id),
                Scope::Subject(sub) => Sql::new(text).bind(app_id).bind(sub),
                Scope::App => Sql::new(text).bind(app_id),
            };
            sql.bind(now).bind(reason)
        };
        let (revoke, revoked) = match scope {
            Scope::Session(_) => (REVOKE_ONE, REVOKED_ONE),
            Scope::Subject(_) => (REVOKE_SUBJECT, REVOKED_SUBJECT),
            Scope::App => (REVOKE_APP, REVOKED_APP),
        };
        match self.db.write(bound(revoke.into())).execute().await {
            // A revocation in doubt runs again (it is idempotent), then counts what it
            // revoked with the lost one: the sessions of the scope revoked at `now` for
            // `reason`.
            Err(err) if err.is_in_doubt() => {
                let attempt = || async {
                    let mut tx = self.db.begin_write().await?;
                    let now_revoked = tx.execute(bound(revoke.into())).await?;
                    let sql = bound(for_update(revoked, tx.kind()));
                    let all: Vec<(SessionId,)> = tx.fetch_all(sql).await?;
                    tx.commit().await?;
                    let outcome = match (now_revoked, all.len()) {
                        (0, 0) => Outcome::Superseded,
                        (0, _) => Outcome::Committed,
                        _ => Outcome::Applied,
                    };
                    Ok(Found::new(outcome, all.len() as u64))
                };
                in_doubt::resolve(&self.db, Write::Revoke, &err, attempt).await
            }
            other => other,
        }
    }

    /// Live sessions (not revoked, not past their absolute expiry), oldest first.
    pub async fn list_live(
        &self,
        app_id: AppId,
        sub: Option<&str>,
        now: i64,
    ) -> Result<Vec<SessionRow>, StoreError> {
        let sql = match sub {
            Some(sub) => {
                Sql::new(statements().live_of_sub.as_str()).bind(app_id).bind(now).bind(sub)
            }
            None => Sql::new(statements().live.as_str()).bind(app_id).bind(now),
        };
        self.db.read(sql).fetch_all().await
    }

    /// How many live sessions each app has, at `now`: one scan of the live sessions (apps
    /// without any are absent).
    pub async fn count_live_by_app(&self, now: i64) -> Result<Vec<(AppId, i64)>, StoreError> {
        self.db.read(Sql::new(LIVE_BY_APP).bind(now)).fetch_all().await
    }

    /// Deletes sessions that ended before `ended_before`; returns how many.
    pub async fn purge(&self, ended_before: i64) -> Result<u64, StoreError> {
        self.db.write(Sql::new(PURGE).bind(ended_before)).execute().await
    }
}

/// One rotation on its own: the single-statement compare-and-swap. Reached only without a
/// batcher, or for the jobs of a batch that failed for a reason other than an unreachable
/// database; the sessions suite always has a batcher, so its mutants are caught only by the
/// gateway's API tests (not run per mutant).
async fn rotate_one(db: &Backend, rotation: RotationRow) -> Result<Option<SessionRow>, StoreError> {
    // A proof comes this way only from a Postgres batch that failed (the batch statement
    // spends proofs itself): it is recorded first, and forgotten if the swap does not happen.
    let proof = rotation.proof.map(|(jti, until)| (ProofLedger::open(db), jti, until));
    if let Some((ledger, jti, until)) = &proof {
        if !ledger.spend(rotation.app_id, *jti, *until, rotation.now).await? {
            return Ok(None);
        }
    }
    let app_id = rotation.app_id;
    let swap = rotation.bind(Sql::new(statements().rotate.as_str()));
    let rotated = db.write(swap).fetch_optional().await;
    if let (Some((ledger, jti, _)), true) = (&proof, did_not_swap(&rotated)) {
        ledger.forget(app_id, *jti).await?;
    }
    rotated
}

/// Whether a swap surely did not happen: it answered that it did not, or failed without
/// being in doubt. A swap in doubt may have committed, so its proof stays recorded.
fn did_not_swap(rotated: &Result<Option<SessionRow>, StoreError>) -> bool {
    match rotated {
        Ok(row) => row.is_none(),
        Err(err) => !err.is_in_doubt(),
    }
}

/// A rotation in doubt, in one transaction: the same compare-and-swap again (a lost
/// statement still running holds the row, so this waits for it); if it does not apply, the
/// session read under a lock. It holds the new jid: the lost rotation had committed. It
/// does not: nothing was spent, and the session moved on otherwise (answered as a lost race).
async fn resolve_rotation(
    db: &Backend,
    rotation: &RotationRow,
) -> Result<Found<Option<SessionRow>>, StoreError> {
    let mut tx = db.begin_write().await?;
    let swap = rotation.clone().bind(Sql::new(statements().rotate.as_str()));
    if let Some(row) = tx.fetch_optional::<SessionRow>(swap).await? {
        // The lost statement did not commit, so its proof is not recorded: it is now, with
        // the swap (a proof that some other renew recorded meanwhile stays as it is).
        if let Some((jti, until)) = rotation.proof {
            tx.execute(spend_statement(rotation.app_id, jti, until)).await?;
        }
        tx.commit().await?;
        return Ok(Found::new(Outcome::Applied, Some(row)));
    }
    let get = for_update(statements().get.as_str(), tx.kind());
    let sql = Sql::new(get).bind(rotation.app_id).bind(rotation.session_id);
    let row: Option<SessionRow> = tx.fetch_optional(sql).await?;
    // On Postgres the lock gave this transaction an id, so its commit waits for the
    // synchronous standby: the rotation found is durable there before it is answered.
    tx.commit().await?;
    Ok(match row {
        Some(row) if row.current_jid == rotation.new_jid && row.revoked_at.is_none() => {
            Found::new(Outcome::Committed, Some(row))
        }
        _ => Found::new(Outcome::Superseded, None),
    })
}

/// Inside a session-creating transaction: revokes the subject's oldest live sessions so
/// that the new one fits under `max_per_sub`; returns how many.
async fn evict_oldest(
    tx: &mut WriteTx,
    row: &SessionRow,
    max_per_sub: i64,
) -> Result<u64, StoreError> {
    let sql = Sql::new(LIVE_OF_SUBJECT).bind(row.app_id).bind(&row.sub).bind(row.created_at);
    let live: Vec<(String,)> = tx.fetch_all(sql).await?;
    let mut evicted = 0;
    for (id,) in live.iter().take(evictions(live.len(), max_per_sub)) {
        let sql = Sql::new(REVOKE_ONE).bind(row.app_id).bind(id).bind(row.created_at);
        evicted += tx.execute(sql.bind("session limit")).await?;
    }
    Ok(evicted)
}

/// How many of `live` sessions to evict so that a new one fits under `max_per_sub`.
fn evictions(live: usize, max_per_sub: i64) -> usize {
    // mutants: the guard (`true`, `>=`) is equivalent for the one caller, which evicts only
    // when `max_per_sub > 0`; it keeps 0 meaning "no limit" should another caller appear.
    match usize::try_from(max_per_sub) {
        Ok(max) if max > 0 => (live + 1).saturating_sub(max),
        _ => 0,
    }
}
