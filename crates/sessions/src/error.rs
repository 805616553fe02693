use keygate_kernel::FieldError;
use keygate_keyring::KeyringError;
use keygate_store::StoreError;

/// Why a presented token was refused. Every variant answers 401 to the client; the
/// distinction is for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// Bad signature, unknown key, wrong app, wrong type, expired, not yet valid, malformed.
    InvalidToken,
    /// The session is unknown, revoked, or past its absolute expiry.
    SessionGone,
    /// A refresh token that was already used: the session is now revoked.
    ReuseDetected,
    /// An unbound session's token from a public client, which renews bound sessions only.
    NotBound,
}

impl Rejection {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidToken => "invalid token",
            Self::SessionGone => "session revoked or expired",
            Self::ReuseDetected => "refresh token reuse detected",
            Self::NotBound => "a public client renews only sessions bound to a DPoP key",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("invalid input")]
    Invalid(Vec<FieldError>),
    #[error("{}", .0.as_str())]
    Rejected(Rejection),
    /// A token of a DPoP-bound session without a valid proof by its key (missing, invalid,
    /// by another key, or used before); why, for the client. Nothing was written.
    #[error("invalid DPoP proof: {0}")]
    Dpop(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Keyring(#[from] KeyringError),
    #[error("session data is corrupt: {0}")]
    Corrupt(String),
}
