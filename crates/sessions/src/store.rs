//! The sessions of [`keygate_store`], in the domain's types.

use std::sync::Arc;

use keygate_kernel::{AppId, KeyId};
use keygate_store::sessions::{RotationRow, Scope, SessionRow, SessionTable};
use keygate_store::Backend;
use keygate_store::StoreError;

use crate::{Jid, Session, SessionId, TokenDigest};

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
    pub key_id: KeyId,
    pub ip: &'a str,
    pub useragent: &'a str,
    /// The digest the current refresh token must have, for a presented token whose
    /// signature was not verified (its exact bytes authenticate it); `None` for one whose
    /// signature was.
    pub presented: Option<TokenDigest>,
    /// The digest of the new refresh token, when it was signed before the swap.
    pub digest: Option<TokenDigest>,
    /// A DPoP proof (its `jti`'s digest, and until when it is remembered) that must be new
    /// for the swap to happen, and is spent exactly when it does.
    pub proof: Option<([u8; 32], i64)>,
}

/// The token a failed rotation gives back to the client.
#[derive(Debug, Clone, Copy)]
pub struct Restore {
    pub jid: Jid,
    pub iat: i64,
    pub exp: i64,
}

/// Persistence of sessions. Renews, and signs without a session limit, go through group
/// commit (see [`keygate_store::sessions`]).
#[derive(Debug, Clone)]
pub struct SessionStore {
    table: SessionTable,
}

/// The session store of `db`. Inside a Tokio runtime this starts the group-commit tasks;
/// outside one, every write commits on its own.
pub fn session_store(db: &Backend) -> Arc<SessionStore> {
    Arc::new(SessionStore { table: SessionTable::open(db) })
}

impl SessionStore {
    /// Inserts a session. With `max_per_sub` > 0, first revokes the subject's oldest live
    /// sessions so that at most that many remain; returns how many were revoked.
    pub async fn create(&self, session: &Session, max_per_sub: i64) -> Result<u64, StoreError> {
        self.table.create(row_of(session)?, max_per_sub).await
    }

    /// Inserts many sessions in one transaction, without session limits: for loading
    /// (benchmarks, imports), not for serving.
    pub async fn bulk_insert(&self, sessions: &[Session]) -> Result<u64, StoreError> {
        let rows = sessions.iter().map(row_of).collect::<Result<_, _>>()?;
        self.table.bulk_insert(rows).await
    }

    pub async fn get(
        &self,
        app_id: AppId,
        session_id: SessionId,
    ) -> Result<Option<Session>, StoreError> {
        self.table.get(app_id, session_id).await?.map(Session::try_from).transpose()
    }

    /// The compare-and-swap of a renew, as one statement: rotates only if `current_jid` is
    /// still `expected` (and, with `rotation.presented`, the current token's digest is that
    /// one) and the session is live at `now`, and returns the session as rotated. `None`
    /// when another renew (or a revoke, or expiry) came first.
    pub async fn rotate(
        &self,
        app_id: AppId,
        session_id: SessionId,
        expected: Jid,
        rotation: &Rotation<'_>,
        now: i64,
    ) -> Result<Option<Session>, StoreError> {
        let row = RotationRow {
            session_id,
            app_id,
            new_jid: rotation.new_jid,
            refresh_expire: rotation.refresh_expire,
            key_id: rotation.key_id,
            ip: rotation.ip.to_owned(),
            useragent: rotation.useragent.to_owned(),
            now,
            expected,
            presented: rotation.presented.map(|d| d.0),
            digest: rotation.digest.map(|d| d.0),
            proof: rotation.proof,
        };
        self.table.rotate(row).await?.map(Session::try_from).transpose()
    }

    /// Undoes a rotation whose tokens could not be issued: the session's current token is
    /// `restore` again, so our failure does not consume the client's token. False if the
    /// session moved on meanwhile.
    pub async fn unrotate(
        &self,
        app_id: AppId,
        session_id: SessionId,
        new_jid: Jid,
        restore: &Restore,
    ) -> Result<bool, StoreError> {
        let jid = restore.jid;
        self.table.unrotate(app_id, session_id, new_jid, jid, restore.iat, restore.exp).await
    }

    /// Records a renew of a non-rotating session. False if it is no longer live.
    pub async fn touch(
        &self,
        app_id: AppId,
        session_id: SessionId,
        ip: &str,
        useragent: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        self.table.touch(app_id, session_id, ip, useragent, now).await
    }

    /// Revokes the live sessions in `scope`; returns how many.
    pub async fn revoke(
        &self,
        app_id: AppId,
        scope: RevokeScope<'_>,
        reason: &str,
        now: i64,
    ) -> Result<u64, StoreError> {
        let scope = match scope {
            RevokeScope::Session(id) => Scope::Session(id),
            RevokeScope::Subject(sub) => Scope::Subject(sub),
            RevokeScope::App => Scope::App,
        };
        self.table.revoke(app_id, scope, reason, now).await
    }

    /// Live sessions (not revoked, not past their absolute expiry), oldest first.
    pub async fn list_live(
        &self,
        app_id: AppId,
        sub: Option<&str>,
        now: i64,
    ) -> Result<Vec<Session>, StoreError> {
        let rows = self.table.list_live(app_id, sub, now).await?;
        rows.into_iter().map(Session::try_from).collect()
    }

    /// How many live sessions each app has at `now` (apps without any are absent).
    pub async fn count_live_by_app(&self, now: i64) -> Result<Vec<(AppId, u64)>, StoreError> {
        let rows = self.table.count_live_by_app(now).await?;
        Ok(rows
            .into_iter()
            .map(|(app_id, count)| (app_id, u64::try_from(count).unwrap_or(0)))
            .collect())
    }

    /// Deletes sessions that ended before `ended_before` (expired, or revoked). Returns how
    /// many.
    pub async fn purge(&self, ended_before: i64) -> Result<u64, StoreError> {
        self.table.purge(ended_before).await
    }

    /// Records an accepted DPoP proof of `app_id` by its `jti`'s digest until `expires_at`;
    /// false when it was recorded before (a replay).
    pub async fn spend_proof(
        &self,
        app_id: AppId,
        jti_digest: [u8; 32],
        expires_at: i64,
        now: i64,
    ) -> Result<bool, StoreError> {
        self.table.spend_proof(app_id, jti_digest, expires_at, now).await
    }

    /// Forgets the DPoP proofs that expired at `now`.
    pub async fn purge_proofs(&self, now: i64) -> Result<u64, StoreError> {
        self.table.purge_proofs(now).await
    }
}

fn row_of(s: &Session) -> Result<SessionRow, StoreError> {
    Ok(SessionRow {
        session_id: s.session_id,
        app_id: s.app_id,
        sub: s.sub.clone(),
        claims: serde_json::to_string(&s.claims).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        created_at: s.created_at,
        expires_at: s.expires_at,
        current_jid: s.current_jid,
        current_iat: s.current_iat,
        current_exp: s.current_exp,
        key_id: s.key_id,
        prev_jid: s.prev_jid,
        rotated_at: s.rotated_at,
        ip: s.ip.clone(),
        useragent: s.useragent.clone(),
        last_renewed_at: s.last_renewed_at,
        revoked_at: s.revoked_at,
        revoked_reason: s.revoked_reason.clone(),
        current_digest: s.current_digest.map(|d| d.0.to_vec()),
    })
}

impl TryFrom<SessionRow> for Session {
    type Error = StoreError;

    fn try_from(row: SessionRow) -> Result<Self, StoreError> {
        let corrupt = |what: &str| StoreError::Corrupt(format!("sessions.{what} is invalid"));
        let claims = serde_json::from_str(&row.claims).map_err(|_| corrupt("claims"))?;
        Ok(Session {
            session_id: row.session_id,
            app_id: row.app_id,
            sub: row.sub,
            claims,
            created_at: row.created_at,
            expires_at: row.expires_at,
            current_jid: row.current_jid,
            current_iat: row.current_iat,
            current_exp: row.current_exp,
            current_digest: row
                .current_digest
                .map(|d| d.try_into().map(TokenDigest))
                .transpose()
                .map_err(|_| corrupt("current_digest"))?,
            key_id: row.key_id,
            prev_jid: row.prev_jid,
            rotated_at: row.rotated_at,
            ip: row.ip,
            useragent: row.useragent,
            last_renewed_at: row.last_renewed_at,
            revoked_at: row.revoked_at,
            revoked_reason: row.revoked_reason,
        })
    }
}
