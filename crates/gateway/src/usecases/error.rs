//! The error of the use cases, with no notion of HTTP.

use keygate_keyring::KeyringError;
use keygate_sessions::SessionError;
use keygate_tenants::{FieldError, StoreError, TenantError};

/// What lies under an `Unavailable` or an `Internal` error.
pub type Cause = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum UseCaseError {
    /// One entry per bad field.
    #[error("invalid request")]
    Invalid(Vec<FieldError>),
    #[error("{0}")]
    NotFound(String),
    /// The database is down or overloaded; nothing was changed, a retry may succeed.
    #[error("service unavailable, retry later")]
    Unavailable(#[source] Cause),
    #[error("internal error")]
    Internal(#[source] Cause),
}

impl UseCaseError {
    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        Self::Invalid(vec![FieldError::new(field, message)])
    }

    /// The code of the error, as the API names it.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Invalid(_) => "invalid_request",
            Self::NotFound(_) => "not_found",
            Self::Unavailable(_) => "unavailable",
            Self::Internal(_) => "internal",
        }
    }
}

/// An error and its sources on one line, for the log.
pub use keygate_store::chain;

impl From<StoreError> for UseCaseError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::NotFound => Self::NotFound("not found".into()),
            // A conflict that survived its retries: concurrent writers, so try again.
            StoreError::Unavailable(_) | StoreError::InDoubt(_) | StoreError::Conflict(_) => {
                Self::Unavailable(Box::new(err))
            }
            other => Self::Internal(Box::new(other)),
        }
    }
}

impl From<TenantError> for UseCaseError {
    fn from(err: TenantError) -> Self {
        match err {
            TenantError::Invalid(errors) => Self::Invalid(errors),
            TenantError::NotFound => Self::NotFound("app not found".into()),
            TenantError::Store(e) => e.into(),
            other @ TenantError::Hash(_) => Self::Internal(Box::new(other)),
        }
    }
}

impl From<KeyringError> for UseCaseError {
    fn from(err: KeyringError) -> Self {
        match err {
            KeyringError::KeyNotFound(id) => Self::NotFound(format!("key {id} not found")),
            KeyringError::AlreadyRevoked(id) => {
                Self::invalid("key_id", format!("key {id} is already revoked"))
            }
            KeyringError::Store(e) => e.into(),
            other => Self::Internal(Box::new(other)),
        }
    }
}

impl From<SessionError> for UseCaseError {
    /// The use cases present no token, so a rejected one is a failure of ours.
    fn from(err: SessionError) -> Self {
        match err {
            SessionError::Invalid(errors) => Self::Invalid(errors),
            SessionError::Store(e) => e.into(),
            SessionError::Keyring(e) => e.into(),
            other @ (SessionError::Rejected(_)
            | SessionError::Dpop(_)
            | SessionError::Corrupt(_)) => Self::Internal(Box::new(other)),
        }
    }
}
