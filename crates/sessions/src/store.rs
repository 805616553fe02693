use std::sync::Arc;

use async_trait::async_trait;
use keygate_store::Backend;
use keygate_store::Legacy;
use keygate_tenants::{AppId, StoreError};
use serde_json::{Map, Value};

use crate::{Jid, Session, SessionId, TokenDigest};

mod group_commit;
mod pg_batch;
mod postgres;
mod sqlite;

pub use postgres::PgSessionStore;
pub use sqlite::SqliteSessionStore;

/// Which sessions a revocation covers.
#[derive(Debug, Clone, Copy)]
pub enum RevokeScope<'a> {
    Session(SessionId),
    Subject(&'a str),
    App,
}

/// What a rotation writes, besides the new jid.
#[derive(Debug, Clone, Copy)]
pub struct Rotation<'a> {
    pub new_jid: Jid,
    /// The app's refresh lifetime: the new token expires at
    /// min(now + refresh_expire, the session's absolute expiry).
    pub refresh_expire: i64,
    pub key_id: &'a str,
    pub ip: &'a str,
    pub useragent: &'a str,
    /// The digest the current refresh token must have, for a presented token whose
    /// signature was not verified (its exact bytes authenticate it); `None` for one whose
    /// signature was.
    pub presented: Option<TokenDigest>,
    /// The digest of the new refresh token, when it was signed before the swap.
    pub digest: Option<TokenDigest>,
}

/// The token a failed rotation gives back to the client.
#[derive(Debug, Clone, Copy)]
pub struct Restore {
    pub jid: Jid,
    pub iat: i64,
    pub exp: i64,
}

/// Persistence of sessions.
#[async_trait]
pub trait SessionStore: Send + Sync + std::fmt::Debug {
    /// Inserts a session. With `max_per_sub` > 0, first revokes the subject's oldest live
    /// sessions so that at most that many remain; returns how many were revoked.
    async fn create(&self, session: &Session, max_per_sub: i64) -> Result<u64, StoreError>;
    /// Inserts many sessions in one transaction, without session limits: for loading
    /// (benchmarks, imports), not for serving.
    async fn bulk_insert(&self, sessions: &[Session]) -> Result<u64, StoreError>;
    async fn get(
        &self,
        app_id: AppId,
        session_id: SessionId,
    ) -> Result<Option<Session>, StoreError>;
    /// The compare-and-swap of a renew, as one statement: rotates only if `current_jid` is
    /// still `expected` (and, with `rotation.presented`, the current token's digest is that
    /// one) and the session is live at `now`, and returns the session as rotated. `None` when another renew (or a revoke, or expiry) came first.
    async fn rotate(
        &self,
        app_id: AppId,
        session_id: SessionId,
        expected: Jid,
        rotation: &Rotation<'_>,
        now: i64,
    ) -> Result<Option<Session>, StoreError>;
    /// Undoes a rotation whose tokens could not be issued: the session's current token is
    /// `restore` again, so our failure does not consume the client's token. False if the
    /// session moved on meanwhile.
    async fn unrotate(
        &self,
        app_id: AppId,
        session_id: SessionId,
        new_jid: Jid,
        restore: &Restore,
    ) -> Result<bool, StoreError>;
    /// Records a renew of a non-rotating session. False if it is no longer live.
    async fn touch(
        &self,
        app_id: AppId,
        session_id: SessionId,
        ip: &str,
        useragent: &str,
        now: i64,
    ) -> Result<bool, StoreError>;
    /// Revokes the live sessions in `scope`; returns how many.
    async fn revoke(
        &self,
        app_id: AppId,
        scope: RevokeScope<'_>,
        reason: &str,
        now: i64,
    ) -> Result<u64, StoreError>;
    /// Live sessions (not revoked, not past their absolute expiry), oldest first.
    async fn list_live(
        &self,
        app_id: AppId,
        sub: Option<&str>,
        now: i64,
    ) -> Result<Vec<Session>, StoreError>;
    /// Deletes sessions that ended before `ended_before` (expired, or revoked). Returns how
    /// many.
    async fn purge(&self, ended_before: i64) -> Result<u64, StoreError>;
}

pub fn session_store(db: &Backend) -> Arc<dyn SessionStore> {
    match db.legacy() {
        Legacy::Sqlite(pools) => Arc::new(SqliteSessionStore::new(pools.clone())),
        Legacy::Postgres(pool) => Arc::new(PgSessionStore::new(pool.clone())),
    }
}

const COLUMNS: &str = "session_id, app_id, sub, claims, created_at, expires_at, current_jid, \
    current_iat, current_exp, key_id, prev_jid, rotated_at, ip, useragent, last_renewed_at, \
    revoked_at, revoked_reason, current_digest";

const INSERT: &str = "INSERT INTO sessions (session_id, app_id, sub, claims, created_at, \
    expires_at, current_jid, current_iat, current_exp, key_id, prev_jid, rotated_at, ip, \
    useragent, last_renewed_at, revoked_at, revoked_reason, current_digest) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)";

/// The live sessions of a subject, oldest first: the ones a session limit evicts first.
const LIVE_OF_SUBJECT: &str = "SELECT session_id FROM sessions WHERE app_id = $1 AND sub = $2 \
    AND revoked_at IS NULL AND expires_at > $3 ORDER BY created_at, session_id";

/// The single-statement compare-and-swap of a renew. Parameters: $1 session_id,
/// $2 app_id, $3 new_jid, $4 refresh_expire, $5 key_id, $6 ip, $7 useragent, $8 now,
/// $9 the expected current_jid, $10 the expected digest of the current token (NULL: not
/// compared), $11 the new token's digest.
fn rotate_sql() -> String {
    format!(
        "UPDATE sessions SET prev_jid = current_jid, current_jid = $3, current_iat = $8, \
         current_exp = CASE WHEN $8 + $4 < expires_at THEN $8 + $4 ELSE expires_at END, \
         key_id = $5, rotated_at = $8, ip = $6, useragent = $7, last_renewed_at = $8, \
         current_digest = $11 \
         WHERE session_id = $1 AND app_id = $2 AND current_jid = $9 AND revoked_at IS NULL \
         AND expires_at > $8 AND ($10 IS NULL OR current_digest = $10) RETURNING {COLUMNS}"
    )
}

const UNROTATE: &str = "UPDATE sessions SET current_jid = $4, current_iat = $5, \
    current_exp = $6, prev_jid = NULL, rotated_at = NULL, current_digest = NULL \
    WHERE session_id = $1 AND app_id = $2 AND current_jid = $3";

const TOUCH: &str = "UPDATE sessions SET ip = $3, useragent = $4, last_renewed_at = $5 \
    WHERE session_id = $1 AND app_id = $2 AND revoked_at IS NULL AND expires_at > $5";

const REVOKE_ONE: &str = "UPDATE sessions SET revoked_at = $3, revoked_reason = $4 \
    WHERE app_id = $1 AND session_id = $2 AND revoked_at IS NULL AND expires_at > $3";
const REVOKE_SUBJECT: &str = "UPDATE sessions SET revoked_at = $3, revoked_reason = $4 \
    WHERE app_id = $1 AND sub = $2 AND revoked_at IS NULL AND expires_at > $3";
const REVOKE_APP: &str = "UPDATE sessions SET revoked_at = $2, revoked_reason = $3 \
    WHERE app_id = $1 AND revoked_at IS NULL AND expires_at > $2";

const PURGE: &str = "DELETE FROM sessions WHERE expires_at < $1 OR current_exp < $1 \
    OR revoked_at < $1";

fn select_one() -> String {
    format!("SELECT {COLUMNS} FROM sessions WHERE app_id = $1 AND session_id = $2")
}

fn select_live(by_sub: bool) -> String {
    let sub = if by_sub { " AND sub = $3" } else { "" };
    format!(
        "SELECT {COLUMNS} FROM sessions WHERE app_id = $1 AND revoked_at IS NULL \
         AND expires_at > $2{sub} ORDER BY created_at, session_id"
    )
}

/// Binds a session's columns in the order of `INSERT`.
macro_rules! bind_session {
    ($query:expr, $s:expr, $claims:expr) => {{
        let s: &$crate::Session = $s;
        $query
            .bind(s.session_id.to_string())
            .bind(s.app_id.to_string())
            .bind(&s.sub)
            .bind($claims)
            .bind(s.created_at)
            .bind(s.expires_at)
            .bind(s.current_jid.to_string())
            .bind(s.current_iat)
            .bind(s.current_exp)
            .bind(&s.key_id)
            .bind(s.prev_jid.map(|j| j.to_string()))
            .bind(s.rotated_at)
            .bind(&s.ip)
            .bind(&s.useragent)
            .bind(s.last_renewed_at)
            .bind(s.revoked_at)
            .bind(&s.revoked_reason)
            .bind(s.current_digest.map(|d| d.0.to_vec()))
    }};
}
use bind_session;

/// Rows per multi-row INSERT of `bulk_insert`, well under SQLite's bound-parameter limit.
const BULK_ROWS: usize = 500;

const BULK_INSERT: &str = "INSERT INTO sessions (session_id, app_id, sub, claims, created_at, \
    expires_at, current_jid, current_iat, current_exp, key_id, prev_jid, rotated_at, ip, \
    useragent, last_renewed_at, revoked_at, revoked_reason, current_digest) ";

/// Pushes one session's values onto a `QueryBuilder` in the column order of `BULK_INSERT`.
macro_rules! push_session {
    ($b:expr, $s:expr, $claims:expr) => {{
        let s: &$crate::Session = $s;
        $b.push_bind(s.session_id.to_string())
            .push_bind(s.app_id.to_string())
            .push_bind(s.sub.clone())
            .push_bind($claims)
            .push_bind(s.created_at)
            .push_bind(s.expires_at)
            .push_bind(s.current_jid.to_string())
            .push_bind(s.current_iat)
            .push_bind(s.current_exp)
            .push_bind(s.key_id.clone())
            .push_bind(s.prev_jid.map(|j| j.to_string()))
            .push_bind(s.rotated_at)
            .push_bind(s.ip.clone())
            .push_bind(s.useragent.clone())
            .push_bind(s.last_renewed_at)
            .push_bind(s.revoked_at)
            .push_bind(s.revoked_reason.clone())
            .push_bind(s.current_digest.map(|d| d.0.to_vec()));
    }};
}
use push_session;

/// Inside a session-creating transaction of either backend: revokes the subject's oldest
/// live sessions so that the new one fits under `max_per_sub`; evaluates to how many.
macro_rules! evict_oldest {
    ($tx:expr, $session:expr, $max_per_sub:expr) => {{
        let session: &$crate::Session = $session;
        let live: Vec<String> = sqlx::query_scalar(LIVE_OF_SUBJECT)
            .bind(session.app_id.to_string())
            .bind(&session.sub)
            .bind(session.created_at)
            .fetch_all(&mut *$tx)
            .await?;
        let mut evicted = 0;
        for id in live.iter().take(evictions(live.len(), $max_per_sub)) {
            evicted += sqlx::query(REVOKE_ONE)
                .bind(session.app_id.to_string())
                .bind(id)
                .bind(session.created_at)
                .bind("session limit")
                .execute(&mut *$tx)
                .await?
                .rows_affected();
        }
        evicted
    }};
}
use evict_oldest;

/// Binds a rotation in the order of [`rotate_sql`].
macro_rules! bind_rotation {
    ($query:expr, $app_id:expr, $session_id:expr, $expected:expr, $r:expr, $now:expr) => {{
        let r: &$crate::Rotation<'_> = $r;
        $query
            .bind($session_id.to_string())
            .bind($app_id.to_string())
            .bind(r.new_jid.to_string())
            .bind(r.refresh_expire)
            .bind(r.key_id)
            .bind(r.ip)
            .bind(r.useragent)
            .bind($now)
            .bind($expected.to_string())
            .bind(r.presented.map(|d| d.0.to_vec()))
            .bind(r.digest.map(|d| d.0.to_vec()))
    }};
}
use bind_rotation;

/// Binds an undo in the order of `UNROTATE`.
macro_rules! bind_unrotate {
    ($query:expr, $app_id:expr, $session_id:expr, $new_jid:expr, $restore:expr) => {{
        let restore: &$crate::store::Restore = $restore;
        $query
            .bind($session_id.to_string())
            .bind($app_id.to_string())
            .bind($new_jid.to_string())
            .bind(restore.jid.to_string())
            .bind(restore.iat)
            .bind(restore.exp)
    }};
}
use bind_unrotate;

fn claims_json(session: &Session) -> Result<String, StoreError> {
    serde_json::to_string(&session.claims).map_err(|e| StoreError::Corrupt(e.to_string()))
}

#[derive(sqlx::FromRow)]
struct SessionRow {
    session_id: String,
    app_id: String,
    sub: String,
    claims: String,
    created_at: i64,
    expires_at: i64,
    current_jid: String,
    current_iat: i64,
    current_exp: i64,
    key_id: String,
    prev_jid: Option<String>,
    rotated_at: Option<i64>,
    ip: String,
    useragent: String,
    last_renewed_at: i64,
    revoked_at: Option<i64>,
    revoked_reason: Option<String>,
    current_digest: Option<Vec<u8>>,
}

impl TryFrom<SessionRow> for Session {
    type Error = StoreError;

    fn try_from(row: SessionRow) -> Result<Self, StoreError> {
        let corrupt = |what: &str| StoreError::Corrupt(format!("sessions.{what} is invalid"));
        let claims: Map<String, Value> =
            serde_json::from_str(&row.claims).map_err(|_| corrupt("claims"))?;
        Ok(Session {
            session_id: row.session_id.parse().map_err(|_| corrupt("session_id"))?,
            app_id: row.app_id.parse().map_err(|_| corrupt("app_id"))?,
            sub: row.sub,
            claims,
            created_at: row.created_at,
            expires_at: row.expires_at,
            current_jid: row.current_jid.parse().map_err(|_| corrupt("current_jid"))?,
            current_iat: row.current_iat,
            current_exp: row.current_exp,
            current_digest: row
                .current_digest
                .map(|d| d.try_into().map(TokenDigest))
                .transpose()
                .map_err(|_| corrupt("current_digest"))?,
            key_id: row.key_id,
            prev_jid: row
                .prev_jid
                .map(|j| j.parse())
                .transpose()
                .map_err(|_| corrupt("prev_jid"))?,
            rotated_at: row.rotated_at,
            ip: row.ip,
            useragent: row.useragent,
            last_renewed_at: row.last_renewed_at,
            revoked_at: row.revoked_at,
            revoked_reason: row.revoked_reason,
        })
    }
}

fn into_sessions(rows: Vec<SessionRow>) -> Result<Vec<Session>, StoreError> {
    rows.into_iter().map(Session::try_from).collect()
}

/// How many of `live` sessions to evict so that a new one fits under `max_per_sub`.
fn evictions(live: usize, max_per_sub: i64) -> usize {
    match usize::try_from(max_per_sub) {
        Ok(max) if max > 0 => (live + 1).saturating_sub(max),
        _ => 0,
    }
}
