use keygate_kernel::{AppId, KeyId};
use serde::Serialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

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
    /// The digest of the current refresh token as issued; `None` when unknown (a session
    /// from before digests were kept, or a rotation that was undone).
    pub current_digest: Option<TokenDigest>,
    /// The key that signed the current refresh token when it was issued.
    pub key_id: KeyId,
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
    /// The thumbprint of the device key a DPoP-bound session is bound to (its `cnf.jkt`).
    pub fn binding(&self) -> Option<&str> {
        self.claims.get("cnf")?.get("jkt")?.as_str()
    }

    /// Whether the session can still renew at `now`.
    pub fn is_live(&self, now: i64) -> bool {
        self.revoked_at.is_none() && now < self.expires_at
    }
}

/// SHA-256 of a refresh token exactly as keygate issued it.
///
/// A session stores the digest of its current refresh token. A presented token with the
/// same digest is, byte for byte, a token keygate signed, so its renew needs no signature
/// verification: the match authenticates it. A token that does not match is verified by
/// signature before it can rotate, revoke or be answered as a retry.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TokenDigest(pub [u8; 32]);

impl TokenDigest {
    pub fn of(token: &str) -> Self {
        Self(Sha256::digest(token.as_bytes()).into())
    }
}

impl std::fmt::Debug for TokenDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenDigest(..)")
    }
}

/// A live session as the API lists it. Times are Unix seconds.
#[derive(Debug, Clone, Serialize, ToSchema)]
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
            key_id: s.key_id.to_string(),
        }
    }
}
