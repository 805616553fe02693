use keygate_tenants::AppId;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::{Jid, SessionId};

/// A session as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Session {
    pub session_id: SessionId,
    pub app_id: AppId,
    pub sub: String,
    /// `aud` and the custom claims, re-issued in every auth token of the session.
    pub claims: Map<String, Value>,
    pub created_at: i64,
    /// Absolute expiry: no renew after this, whatever the refresh token says.
    pub expires_at: i64,
    pub current_jid: Jid,
    pub current_iat: i64,
    pub current_exp: i64,
    /// The key that signed the current refresh token when it was issued.
    pub key_id: String,
    pub prev_jid: Option<Jid>,
    pub rotated_at: Option<i64>,
    pub ip: String,
    /// The user agent of the sign or of the last rotation.
    pub useragent: String,
    pub last_renewed_at: i64,
    pub revoked_at: Option<i64>,
    pub revoked_reason: Option<String>,
}

impl Session {
    /// Whether the session can still renew at `now`.
    pub fn is_live(&self, now: i64) -> bool {
        self.revoked_at.is_none() && now < self.expires_at
    }
}

/// A live session as the API lists it.
#[derive(Debug, Clone, Serialize)]
pub struct SessionView {
    pub session_id: SessionId,
    pub sub: String,
    pub created_at: i64,
    pub last_renewed_at: i64,
    pub expires_at: i64,
    pub ip: String,
    pub useragent: String,
    pub key_id: String,
}

impl From<&Session> for SessionView {
    fn from(s: &Session) -> Self {
        Self {
            session_id: s.session_id,
            sub: s.sub.clone(),
            created_at: s.created_at,
            last_renewed_at: s.last_renewed_at,
            expires_at: s.expires_at,
            ip: s.ip.clone(),
            useragent: s.useragent.clone(),
            key_id: s.key_id.clone(),
        }
    }
}
