//! What the session operations answer.

use keygate_kernel::KeyId;
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use crate::{AuthClaims, RefreshClaims, SessionId};

/// The token response of `/sign` and `/renew`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Issued {
    /// An ES256 JWS: the auth token.
    pub auth_token: String,
    /// An ES256 JWS: the refresh token (claim `type: "refresh"`, no `sub`, no `aud`).
    pub refresh_token: String,
    /// The key that signed both tokens.
    pub key_id: KeyId,
    /// base64 of that key's SubjectPublicKeyInfo PEM.
    pub public_key: String,
    /// `Bearer`, or `DPoP` for a session bound to a device key (RFC 9449).
    #[schema(example = "Bearer")]
    pub token_type: &'static str,
    /// Seconds until the auth token expires.
    pub expires_in: i64,
    /// Seconds until the refresh token expires.
    pub refresh_expires_in: i64,
    pub session_id: SessionId,
}

/// Whether a renew rotates the refresh token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RenewMode {
    /// As the app's `refresh_rotation` says.
    FollowApp,
    /// Never: only a new auth token is issued (a non-rotating compatibility route).
    KeepRefreshToken,
}

/// What a successful renew did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RenewOutcome {
    /// The refresh token rotated.
    Rotated,
    /// The previous token came back within the grace: the current one was re-issued.
    GraceRetry,
    /// The app does not rotate: only a new auth token was minted.
    NotRotating,
}

#[derive(Debug, Clone)]
pub struct Renewed {
    pub issued: Issued,
    pub outcome: RenewOutcome,
}

/// The answer of `/verify`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Verified {
    pub verified: bool,
    /// The auth token's claims; only when verified.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Object)]
    pub claims: Option<Value>,
    /// Why the token did not verify; only when not verified.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = String, example = "expired")]
    pub reason: Option<&'static str>,
}

impl Verified {
    pub(crate) fn no(reason: &'static str) -> Self {
        Self { verified: false, claims: None, reason: Some(reason) }
    }
}

/// A live token, as [`Sessions::introspect`] finds it.
#[derive(Debug, Clone)]
pub enum Introspected {
    Auth(AuthClaims),
    /// A session's current refresh token, with the session's subject.
    Refresh {
        claims: RefreshClaims,
        sub: String,
    },
}
