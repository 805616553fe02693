pub use keygate_store::StoreError;

use keygate_kernel::FieldError;

/// A failure of a tenant operation.
#[derive(Debug, thiserror::Error)]
pub enum TenantError {
    #[error("invalid input")]
    Invalid(Vec<FieldError>),
    #[error("app not found")]
    NotFound,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("hashing failed: {0}")]
    Hash(String),
}
