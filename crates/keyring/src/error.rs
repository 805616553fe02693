use keygate_store::StoreError;

use crate::{KeyId, KeyState};

/// `Clone` gives each caller that waited for one load (a cache's single flight) the same
/// variant: a store failure keeps its kind, so `Unavailable` stays a 503.
#[derive(Debug, Clone, thiserror::Error)]
pub enum KeyringError {
    #[error("key {0} not found")]
    KeyNotFound(KeyId),
    #[error("key {0} is already revoked")]
    AlreadyRevoked(KeyId),
    #[error("the app has no {0} key")]
    Missing(KeyState),
    #[error("invalid master key: {0}")]
    MasterKey(String),
    #[error("key {key_id} is sealed under master key {sealed_with}, not {current}")]
    WrongMasterKey { key_id: KeyId, sealed_with: String, current: String },
    #[error("key {0} could not be unsealed: wrong master key or tampered data")]
    Unseal(KeyId),
    #[error("key material: {0}")]
    Material(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why a presented token was not accepted. Only `Store` and `Keyring` are our failures;
/// every other variant means the token is bad.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("token exceeds the size limit")]
    TooLarge,
    #[error("token is malformed")]
    Malformed,
    #[error("token header is not acceptable: {0}")]
    Header(&'static str),
    #[error("token is signed by a key this app does not publish")]
    UnknownKey,
    #[error("token is invalid: {0}")]
    Invalid(#[from] jsonwebtoken::errors::Error),
    #[error(transparent)]
    Keyring(#[from] KeyringError),
}

impl VerifyError {
    /// Whether the failure is ours (the database or the key store), so the client should
    /// retry rather than discard its token.
    pub fn is_server_side(&self) -> bool {
        matches!(self, Self::Keyring(_))
    }
}
