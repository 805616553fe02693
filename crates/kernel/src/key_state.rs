//! The states of a signing key.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;
use utoipa::ToSchema;

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
    type Err = UnknownState;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let states = [Self::Next, Self::Active, Self::Retired, Self::Revoked];
        let state = states.into_iter().find(|state| state.as_str() == s);
        state.ok_or_else(|| UnknownState(format!("unknown key state {s:?}")))
    }
}

/// A state name that is not one of the states.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UnknownState(pub String);
