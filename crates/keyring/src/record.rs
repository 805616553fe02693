use std::fmt;
use std::str::FromStr;

use keygate_tenants::{AppId, StoreError};
use serde::Serialize;
use utoipa::ToSchema;

use crate::KeyId;

/// The life of a signing key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum KeyState {
    /// Published in the JWKS so verifiers learn it before it signs anything.
    Next,
    /// Signs new tokens; exactly one per app.
    Active,
    /// Signs nothing, still verifies and stays published until its tokens have expired.
    Retired,
    /// Verifies nothing and is gone from the JWKS.
    Revoked,
}

impl KeyState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Next => "next",
            Self::Active => "active",
            Self::Retired => "retired",
            Self::Revoked => "revoked",
        }
    }

    /// Whether tokens signed by a key in this state are accepted and the key published.
    pub fn is_published(self) -> bool {
        !matches!(self, Self::Revoked)
    }
}

impl fmt::Display for KeyState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for KeyState {
    type Err = StoreError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let states = [Self::Next, Self::Active, Self::Retired, Self::Revoked];
        let state = states.into_iter().find(|state| state.as_str() == s);
        state.ok_or_else(|| StoreError::Corrupt(format!("unknown key state {s:?}")))
    }
}

/// A signing key as stored: the public half in the clear, the private half sealed.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyRecord {
    pub key_id: KeyId,
    pub app_id: AppId,
    pub state: KeyState,
    /// SubjectPublicKeyInfo PEM.
    pub public_pem: String,
    /// AES-256-GCM nonce followed by the sealed PKCS#8 document.
    pub sealed_private: Vec<u8>,
    pub master_key_id: String,
    pub created_at: i64,
    pub activated_at: Option<i64>,
    pub retired_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

impl fmt::Debug for KeyRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRecord")
            .field("key_id", &self.key_id)
            .field("app_id", &self.app_id)
            .field("state", &self.state)
            .field("created_at", &self.created_at)
            .field("activated_at", &self.activated_at)
            .field("retired_at", &self.retired_at)
            .field("revoked_at", &self.revoked_at)
            .finish_non_exhaustive()
    }
}
