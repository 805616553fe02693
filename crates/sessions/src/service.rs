//! The session operations: sign, renew, verify, logout, introspect, revoke, list, purge.

use std::sync::Arc;

use keygate_kernel::{
    Actor, App, AppId, AuditSink, DpopMode, EventKind, FieldError, NewEvent, OnReuse,
};
use keygate_keyring::{jsonwebtoken, Keyring, Signer, VerifyError};
use keygate_store::StoreError;
use serde_json::Value;

use crate::claims::{lenient_validation, outside_lifetime, validation, AnyTokenClaims, Cnf};
use crate::issue::{issue, issue_auth, refresh_claims, typs};
use crate::verdict::{judge, reason, Verdict};
use crate::{
    AuthClaims, Introspected, Issued, Jid, RefreshClaims, Rejection, RenewInput, RenewMode,
    RenewOutcome, Renewed, Restore, RevokeScope, Rotation, Session, SessionError, SessionId,
    SessionStore, SessionView, SignInput, TokenDigest, Verified,
};

/// Sessions stay in the database this long after they ended (expired or revoked), so that
/// no auth token of theirs (at most a day long) is still valid when they are deleted.
pub const JANITOR_REVOKED_RETENTION: i64 = 24 * 3600;

/// Which part of a token's lifetime [`Sessions::verify_any`] accepts.
#[derive(Debug, Clone, Copy)]
enum Lifetime {
    /// From `nbf` until `exp`.
    Strict,
    /// Until `exp`, a token not valid yet included.
    NotExpired,
}

/// A verified token of either kind.
enum AnyToken {
    Auth(AuthClaims),
    Refresh(RefreshClaims),
}

impl AnyToken {
    fn sid(&self) -> SessionId {
        match self {
            Self::Auth(claims) => claims.sid,
            Self::Refresh(claims) => claims.sid,
        }
    }
}

/// What a renew of a token whose signature was not verified brings to its swap: the
/// token's digest, which the session's current one must match, and the token's DPoP proof
/// when the session is bound, which the swap spends.
#[derive(Debug, Clone, Copy)]
struct Unverified {
    digest: TokenDigest,
    proof: Option<([u8; 32], i64)>,
}

/// Sessions over a store, signing with the keyring.
#[derive(Debug)]
pub struct Sessions {
    store: Arc<SessionStore>,
    keyring: Arc<Keyring>,
    audit: Option<Arc<dyn AuditSink>>,
}

impl Sessions {
    pub fn new(store: Arc<SessionStore>, keyring: Arc<Keyring>) -> Self {
        Self { store, keyring, audit: None }
    }

    /// Reports reuse detection to `audit`.
    pub fn with_audit(mut self, audit: Arc<dyn AuditSink>) -> Self {
        self.audit = Some(audit);
        self
    }

    pub fn store(&self) -> &Arc<SessionStore> {
        &self.store
    }

    async fn signer(&self, app_id: AppId) -> Result<Arc<Signer>, SessionError> {
        Ok(self.keyring.keys(app_id).await?.signer()?.clone())
    }

    /// Opens a session. The tokens are signed before the session commits, and returned
    /// only after it has.
    pub async fn sign(
        &self,
        app: &App,
        input: SignInput,
        now: i64,
    ) -> Result<Issued, SessionError> {
        let s = &app.settings;
        let cnf = match (s.dpop, input.dpop_jkt) {
            (DpopMode::Off, Some(_)) => {
                return Err(SessionError::Invalid(vec![FieldError::new(
                    "dpop_jkt",
                    "the app's dpop setting is off: its sessions are not bound to keys",
                )]))
            }
            (DpopMode::Required, None) => {
                return Err(SessionError::Invalid(vec![FieldError::new(
                    "dpop_jkt",
                    "is required: the app's dpop setting is required",
                )]))
            }
            (_, jkt) => jkt.map(|jkt| Cnf { jkt }),
        };
        let signer = self.signer(app.app_id).await?;
        let mut claims = input.custom;
        claims.insert("aud".into(), input.aud.unwrap_or_else(|| Value::String(s.audience.clone())));
        if let Some(cnf) = &cnf {
            claims.insert("cnf".into(), serde_json::json!({ "jkt": cnf.jkt }));
        }
        let expires_at = now.saturating_add(s.session_max_age);
        let mut session = Session {
            // Sessions of one second are listed, and evicted by a session limit, in the
            // order of their ids: they must follow the order of creation.
            session_id: SessionId::new_monotonic(),
            app_id: app.app_id,
            sub: input.sub,
            claims,
            created_at: now,
            expires_at,
            current_jid: Jid::new(),
            current_iat: now,
            current_exp: now.saturating_add(s.refresh_expire).min(expires_at),
            current_digest: None,
            key_id: signer.key_id,
            prev_jid: None,
            rotated_at: None,
            ip: input.ip,
            useragent: input.useragent,
            last_renewed_at: now,
            revoked_at: None,
            revoked_reason: None,
        };
        let refresh = refresh_claims(
            app,
            session.session_id,
            session.current_jid,
            now,
            session.current_exp,
            cnf,
        );
        let issued = issue(app, &signer, &session, &session.ip, &session.useragent, &refresh, now)?;
        session.current_digest = Some(TokenDigest::of(&issued.refresh_token));
        let evicted = self.store.create(&session, s.max_sessions_per_sub).await?;
        // mutants: the comparison only decides whether to log; `evicted` is a count, so `>`
        // mutated to `>=`, `==` or `<` changes a log line and nothing else.
        if evicted > 0 {
            tracing::info!(app_id = %app.app_id, evicted, "session limit reached: oldest sessions revoked");
        }
        Ok(issued)
    }

    /// Trades a refresh token for a new pair (see "Session states" in docs/architecture.md).
    ///
    /// The common case costs one statement and no signature verification: the session's
    /// current refresh token, presented exactly as it was issued, is authenticated by its
    /// digest inside the compare-and-swap that rotates and returns the session (see
    /// [`TokenDigest`]). Any other token is verified by signature first; only then is the
    /// session read, to tell a retry within the grace from reuse.
    ///
    /// A token of a DPoP-bound session (`cnf`) renews only with `input.proof`, a checked
    /// proof by the session's key whose `jti` was not seen before. That costs one signature
    /// verification more (the proof's) and no other: on the common path the token's `cnf`
    /// is authenticated by the digest match of the swap, like the rest of the token.
    pub async fn renew(
        &self,
        app: &App,
        input: RenewInput,
        now: i64,
    ) -> Result<Renewed, SessionError> {
        if let Some(renewed) = self.renew_current(app, &input, now).await? {
            return Ok(renewed);
        }
        let presented = self.verify_refresh(app, &input.refresh_token, now).await?;
        self.renew_presented(app, &presented, &input, RenewMode::FollowApp, now).await
    }

    /// The renew of a session's current refresh token, matched by its digest: every check
    /// of [`Self::verify_refresh`] but the signature runs on the token, and the swap
    /// happens only if the token's bytes are the ones keygate issued as current. `None`
    /// when it did not rotate, for whatever reason: the caller then verifies the token and
    /// judges it in full, so this path never rejects, revokes or answers on its own.
    // mutants: replacing the body with `Ok(None)` is equivalent in every answer: the
    // caller then verifies the same token by signature and rotates it the same way (a
    // verified swap on the jid alone); only the cost of the renew changes (the benchmarks
    // see it, tests do not).
    async fn renew_current(
        &self,
        app: &App,
        input: &RenewInput,
        now: i64,
    ) -> Result<Option<Renewed>, SessionError> {
        if !app.settings.refresh_rotation {
            return Ok(None);
        }
        let decoded =
            self.keyring.decode_unverified::<RefreshClaims>(app.app_id, &input.refresh_token);
        let Ok(claims) = decoded.await else {
            return Ok(None);
        };
        if claims.iss != app.settings.issuer
            || outside_lifetime(claims.iat, claims.nbf, claims.exp, now).is_some()
        {
            return Ok(None);
        }
        // The token's `cnf` is not authenticated yet (the swap's digest match will): a
        // binding that does not hold here is judged on the verified path. A proof by the
        // key it names is spent by the swap, exactly when the swap happens.
        let proof = match (&claims.cnf, &input.proof) {
            (None, _) if !input.public_client => None,
            (Some(cnf), Some(Ok(proof))) if proof.jkt == cnf.jkt => {
                Some((proof.jti_digest, proof.remember_until()))
            }
            _ => return Ok(None),
        };
        let signer = self.signer(app.app_id).await?;
        let digest = TokenDigest::of(&input.refresh_token);
        let unverified = Unverified { digest, proof };
        self.rotate_and_issue(app, &signer, &claims, Some(unverified), input, now).await
    }

    /// Rotates the session of `presented` and issues the new pair; `None` when the swap did
    /// not happen. The new refresh token is signed before the swap, so that the swap stores
    /// its digest; a token whose signature was not verified must bring its [`Unverified`]
    /// digest, which the session's current token must match (and its DPoP proof, which the
    /// swap spends).
    async fn rotate_and_issue(
        &self,
        app: &App,
        signer: &Signer,
        presented: &RefreshClaims,
        unverified: Option<Unverified>,
        input: &RenewInput,
        now: i64,
    ) -> Result<Option<Renewed>, SessionError> {
        let s = &app.settings;
        let new_jid = Jid::new();
        // The store caps the new token's expiry at the session's absolute expiry, which only
        // the swap reads; near that end the token is signed again with the capped expiry,
        // and its digest (of the uncapped one) then makes its next renew a verified one.
        let uncapped = now.saturating_add(s.refresh_expire);
        let cnf = presented.cnf.clone();
        let claims = refresh_claims(app, presented.sid, new_jid, now, uncapped, cnf.clone());
        let refresh_token = signer.sign_typed(typs(app).1, &claims)?;
        let key_id = signer.key_id;
        let rotation = Rotation {
            new_jid,
            refresh_expire: s.refresh_expire,
            key_id,
            ip: &input.ip,
            useragent: &input.useragent,
            presented: unverified.map(|u| u.digest),
            digest: Some(TokenDigest::of(&refresh_token)),
            proof: unverified.and_then(|u| u.proof),
        };
        let Some(session) =
            self.store.rotate(app.app_id, presented.sid, presented.jid, &rotation, now).await?
        else {
            return Ok(None);
        };
        let refresh =
            refresh_claims(app, session.session_id, new_jid, now, session.current_exp, cnf);
        let issued = if session.current_exp == uncapped {
            issue_auth(app, signer, &session, &input.ip, &input.useragent, now).map(|mut issued| {
                issued.refresh_token = refresh_token;
                issued.refresh_expires_in = refresh.exp - now;
                issued
            })
        } else {
            issue(app, signer, &session, &input.ip, &input.useragent, &refresh, now)
        };
        match issued {
            Ok(issued) => Ok(Some(Renewed { issued, outcome: RenewOutcome::Rotated })),
            Err(err) => {
                // Our failure must not consume the client's token: the presented token is
                // made current again (its predecessor's grace is cleared).
                let restore =
                    Restore { jid: presented.jid, iat: presented.iat, exp: presented.exp };
                if let Err(undo) =
                    self.store.unrotate(app.app_id, session.session_id, new_jid, &restore).await
                {
                    tracing::error!(session_id = %session.session_id, error = %undo, "could not undo a rotation");
                }
                Err(err)
            }
        }
    }

    /// Checks a refresh token of `app`: signature by a key of the app that is not revoked,
    /// issuer, claims, and lifetime at `now`. Nothing is read from or written to the
    /// sessions.
    pub async fn verify_refresh(
        &self,
        app: &App,
        token: &str,
        now: i64,
    ) -> Result<RefreshClaims, SessionError> {
        let presented: RefreshClaims =
            self.verify_token(app.app_id, token, &validation(app)).await?;
        if outside_lifetime(presented.iat, presented.nbf, presented.exp, now).is_some() {
            return Err(SessionError::Rejected(Rejection::InvalidToken));
        }
        Ok(presented)
    }

    /// Whether `token` is an auth token of `app`'s session `sid`, signed by a key of the app
    /// that is not revoked. Its lifetime is not checked: a client renews because its auth
    /// token expired.
    pub async fn is_auth_token_of(
        &self,
        app: &App,
        token: &str,
        sid: SessionId,
    ) -> Result<bool, SessionError> {
        match self.keyring.verify::<AuthClaims>(app.app_id, token, &lenient_validation(app)).await {
            Ok(data) => Ok(data.claims.is_auth_token() && data.claims.sid == sid),
            Err(VerifyError::Keyring(e)) => Err(SessionError::Keyring(e)),
            Err(_) => Ok(false),
        }
    }

    /// The renew of a refresh token already checked by [`Self::verify_refresh`].
    ///
    /// With [`RenewMode::KeepRefreshToken`] the refresh token is not rotated even when the
    /// app rotates: the current token gets a new auth token and stays current. Any other
    /// token of the session is judged as in a rotating renew (a retry within the grace, or
    /// reuse), so a token that a rotation replaced is still reuse on every route.
    pub async fn renew_presented(
        &self,
        app: &App,
        presented: &RefreshClaims,
        input: &RenewInput,
        mode: RenewMode,
        now: i64,
    ) -> Result<Renewed, SessionError> {
        self.check_binding(app, presented, input, now).await?;
        let signer = self.signer(app.app_id).await?;
        let rotating = app.settings.refresh_rotation && mode == RenewMode::FollowApp;
        if rotating {
            let rotated = self.rotate_and_issue(app, &signer, presented, None, input, now).await?;
            if let Some(renewed) = rotated {
                return Ok(renewed);
            }
        }
        let session = match self.store.get(app.app_id, presented.sid).await? {
            Some(session) if session.is_live(now) => session,
            _ => return Err(SessionError::Rejected(Rejection::SessionGone)),
        };
        match judge(&app.settings, rotating, presented, &session, &input.useragent, now) {
            Verdict::KeepCurrent => {
                self.keep_current(app, &signer, presented, &session, input, now).await
            }
            Verdict::Retry => {
                let current = refresh_claims(
                    app,
                    session.session_id,
                    session.current_jid,
                    session.current_iat,
                    session.current_exp,
                    presented.cnf.clone(),
                );
                let issued =
                    issue(app, &signer, &session, &input.ip, &input.useragent, &current, now)?;
                Ok(Renewed { issued, outcome: RenewOutcome::GraceRetry })
            }
            Verdict::Reuse => Err(self.reuse_detected(app, &session, now).await?),
            Verdict::NotOfSession => Err(SessionError::Rejected(Rejection::InvalidToken)),
            Verdict::Undone => Err(SessionError::Store(StoreError::Conflict(
                "the session changed during the renew".into(),
            ))),
        }
    }

    /// The DPoP binding of a verified token: a token of a bound session needs a proof by the
    /// session's key, whose `jti` is spent here; a public client renews bound sessions only. A refused proof is reported to the audit
    /// trail, with the app and the session; nothing is written to the session.
    async fn check_binding(
        &self,
        app: &App,
        presented: &RefreshClaims,
        input: &RenewInput,
        now: i64,
    ) -> Result<(), SessionError> {
        let Some(cnf) = &presented.cnf else {
            return match input.public_client {
                true => Err(SessionError::Rejected(Rejection::NotBound)),
                false => Ok(()),
            };
        };
        let refused = match &input.proof {
            None => "the session is bound to a DPoP key: a DPoP proof is required".to_owned(),
            Some(Err(invalid)) => invalid.0.clone(),
            Some(Ok(proof)) if proof.jkt != cnf.jkt => {
                "the DPoP proof is signed by another key than the session's".to_owned()
            }
            Some(Ok(proof)) => {
                let until = proof.remember_until();
                if self.store.spend_proof(app.app_id, proof.jti_digest, until, now).await? {
                    return Ok(());
                }
                "the DPoP proof was used before (its jti)".to_owned()
            }
        };
        tracing::info!(app_id = %app.app_id, session_id = %presented.sid, reason = %refused, "DPoP proof refused");
        let detail = || serde_json::json!({ "session_id": presented.sid, "reason": refused });
        self.report(app.app_id, EventKind::DpopRejected, detail).await;
        Err(SessionError::Dpop(refused))
    }

    /// A new auth token for the session's current refresh token, which stays current.
    async fn keep_current(
        &self,
        app: &App,
        signer: &Signer,
        presented: &RefreshClaims,
        session: &Session,
        input: &RenewInput,
        now: i64,
    ) -> Result<Renewed, SessionError> {
        let mut issued = issue_auth(app, signer, session, &input.ip, &input.useragent, now)?;
        issued.refresh_token = input.refresh_token.clone();
        issued.refresh_expires_in = presented.exp - now;
        // On an app that rotates elsewhere, the session's user agent is the one of its last
        // rotation, which the grace check compares retries with: a renew that does not
        // rotate leaves the session as it is.
        if !app.settings.refresh_rotation
            && !self
                .store
                .touch(app.app_id, session.session_id, &input.ip, &input.useragent, now)
                .await?
        {
            return Err(SessionError::Rejected(Rejection::SessionGone));
        }
        Ok(Renewed { issued, outcome: RenewOutcome::NotRotating })
    }

    /// Revokes what the app revokes on reuse of a token of `session`, and reports it; the
    /// error to answer.
    async fn reuse_detected(
        &self,
        app: &App,
        session: &Session,
        now: i64,
    ) -> Result<SessionError, SessionError> {
        let (scope, scope_name) = match app.settings.on_reuse {
            OnReuse::RevokeSession => (RevokeScope::Session(session.session_id), "session"),
            OnReuse::RevokeSubject => (RevokeScope::Subject(&session.sub), "subject"),
        };
        let revoked = self.store.revoke(app.app_id, scope, "refresh token reuse", now).await?;
        tracing::warn!(
            app_id = %app.app_id,
            session_id = %session.session_id,
            scope = scope_name,
            revoked,
            "refresh token reuse detected"
        );
        let detail = || {
            serde_json::json!({
                "session_id": session.session_id,
                "sub": session.sub,
                "scope": scope_name,
                "revoked": revoked,
            })
        };
        self.report(app.app_id, EventKind::ReuseDetected, detail).await;
        Ok(SessionError::Rejected(Rejection::ReuseDetected))
    }

    /// Reports an event of the gateway to the audit trail, if there is one; `detail` is
    /// made only then.
    async fn report(&self, app_id: AppId, kind: EventKind, detail: impl FnOnce() -> Value) {
        if let Some(audit) = &self.audit {
            let event = NewEvent { app_id, kind, actor: Actor::Gateway, detail: detail() };
            audit.record(event).await;
        }
    }

    async fn verify_token<T: serde::de::DeserializeOwned>(
        &self,
        app_id: AppId,
        token: &str,
        validation: &jsonwebtoken::Validation,
    ) -> Result<T, SessionError> {
        match self.keyring.verify::<T>(app_id, token, validation).await {
            Ok(data) => Ok(data.claims),
            Err(VerifyError::Keyring(e)) => Err(SessionError::Keyring(e)),
            Err(_) => Err(SessionError::Rejected(Rejection::InvalidToken)),
        }
    }

    /// Checks an auth token: signature, key, issuer, times, and that its session is still
    /// live (a revoked session's tokens no longer verify, even before they expire).
    pub async fn verify(&self, app: &App, token: &str, now: i64) -> Result<Verified, SessionError> {
        let claims =
            match self.keyring.verify::<AuthClaims>(app.app_id, token, &validation(app)).await {
                Ok(data) => data.claims,
                Err(VerifyError::Keyring(e)) => return Err(SessionError::Keyring(e)),
                Err(e) => return Ok(Verified::no(reason(&e))),
            };
        if !claims.is_auth_token() {
            return Ok(Verified::no("not an auth token"));
        }
        if let Some(reason) = outside_lifetime(claims.iat, claims.nbf, claims.exp, now) {
            return Ok(Verified::no(reason));
        }
        match self.store.get(app.app_id, claims.sid).await? {
            Some(session) if session.revoked_at.is_none() && now < session.expires_at => {}
            Some(session) if session.revoked_at.is_some() => {
                return Ok(Verified::no("session revoked"))
            }
            _ => return Ok(Verified::no("session expired or unknown")),
        }
        let claims =
            serde_json::to_value(&claims).map_err(|e| SessionError::Corrupt(e.to_string()))?;
        Ok(Verified { verified: true, claims: Some(claims), reason: None })
    }

    /// Ends the session of an auth or refresh token of this app, even an expired one.
    /// Returns how many sessions were revoked (0 when it already was).
    pub async fn logout(&self, app: &App, token: &str, now: i64) -> Result<u64, SessionError> {
        let claims: AnyTokenClaims =
            self.verify_token(app.app_id, token, &lenient_validation(app)).await?;
        Ok(self.store.revoke(app.app_id, RevokeScope::Session(claims.sid), "logout", now).await?)
    }

    /// A live token of `app` (RFC 7662's "active"): an auth token within its lifetime whose
    /// session is live, or the current refresh token of a live session. `None` for
    /// anything else: malformed, another app's, expired, not yet valid, a refresh token that
    /// was rotated away, a token of a revoked session. Nothing is written.
    pub async fn introspect(
        &self,
        app: &App,
        token: &str,
        now: i64,
    ) -> Result<Option<Introspected>, SessionError> {
        let Some(token) = self.verify_any(app, token, now, Lifetime::Strict).await? else {
            return Ok(None);
        };
        let session = match self.store.get(app.app_id, token.sid()).await? {
            Some(session) if session.is_live(now) => session,
            _ => return Ok(None),
        };
        Ok(match token {
            AnyToken::Auth(claims) => Some(Introspected::Auth(claims)),
            AnyToken::Refresh(claims) if claims.jid == session.current_jid => {
                Some(Introspected::Refresh { claims, sub: session.sub })
            }
            AnyToken::Refresh(_) => None,
        })
    }

    /// RFC 7009 revocation: ends the session of an auth or refresh token of `app` that has
    /// not expired (one not valid yet, under `token_notbefore` or `refresh_notbefore`,
    /// counts). Anything else (malformed, another app's, expired) changes nothing. Returns
    /// how many sessions were revoked.
    pub async fn revoke_token(
        &self,
        app: &App,
        token: &str,
        now: i64,
    ) -> Result<u64, SessionError> {
        let Some(token) = self.verify_any(app, token, now, Lifetime::NotExpired).await? else {
            return Ok(0);
        };
        let scope = RevokeScope::Session(token.sid());
        Ok(self.store.revoke(app.app_id, scope, "revoked by the client (RFC 7009)", now).await?)
    }

    /// An auth or refresh token of `app`, by signature and claims, within `lifetime` at
    /// `now`; `None` if it is neither. Only a keyring failure is an error.
    async fn verify_any(
        &self,
        app: &App,
        token: &str,
        now: i64,
        lifetime: Lifetime,
    ) -> Result<Option<AnyToken>, SessionError> {
        let claims = match self.keyring.verify::<Value>(app.app_id, token, &validation(app)).await {
            Ok(data) => data.claims,
            Err(VerifyError::Keyring(e)) => return Err(SessionError::Keyring(e)),
            Err(_) => return Ok(None),
        };
        let token = if claims.get("type").is_some() {
            match serde_json::from_value::<RefreshClaims>(claims) {
                Ok(claims) => AnyToken::Refresh(claims),
                Err(_) => return Ok(None),
            }
        } else {
            match serde_json::from_value::<AuthClaims>(claims) {
                Ok(claims) if claims.is_auth_token() => AnyToken::Auth(claims),
                _ => return Ok(None),
            }
        };
        let (iat, nbf, exp) = match &token {
            AnyToken::Auth(c) => (c.iat, c.nbf, c.exp),
            AnyToken::Refresh(c) => (c.iat, c.nbf, c.exp),
        };
        let nbf = match lifetime {
            Lifetime::Strict => nbf,
            Lifetime::NotExpired => nbf.min(now),
        };
        Ok(outside_lifetime(iat, nbf, exp, now).is_none().then_some(token))
    }

    pub async fn revoke(
        &self,
        app_id: AppId,
        scope: RevokeScope<'_>,
        reason: &str,
        now: i64,
    ) -> Result<u64, SessionError> {
        let revoked = self.store.revoke(app_id, scope, reason, now).await?;
        tracing::info!(%app_id, revoked, reason, "sessions revoked");
        Ok(revoked)
    }

    pub async fn list(
        &self,
        app_id: AppId,
        sub: Option<&str>,
        now: i64,
    ) -> Result<Vec<SessionView>, SessionError> {
        Ok(self.store.list_live(app_id, sub, now).await?.iter().map(SessionView::from).collect())
    }

    /// How many live sessions each app has at `now` (apps without any are absent).
    pub async fn live_counts(&self, now: i64) -> Result<Vec<(AppId, u64)>, SessionError> {
        Ok(self.store.count_live_by_app(now).await?)
    }

    /// Deletes sessions that ended more than [`JANITOR_REVOKED_RETENTION`] ago, and forgets
    /// the DPoP proofs past their window.
    pub async fn purge(&self, now: i64) -> Result<u64, SessionError> {
        // The sessions' purge does not wait on the proofs': a failure of this one is
        // logged, and the next pass tries again.
        if let Err(err) = self.store.purge_proofs(now).await {
            tracing::warn!(error = %err, "could not forget the expired DPoP proofs");
        }
        Ok(self.store.purge(now - JANITOR_REVOKED_RETENTION).await?)
    }
}
