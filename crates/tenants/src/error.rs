use crate::settings::FieldError;

/// A failure of a store (database) operation, classified so that callers can answer a
/// client correctly: `Unavailable` is "try again" (503), never "your input is bad".
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("database unavailable")]
    Unavailable(#[source] sqlx::Error),
    #[error("database error")]
    Other(#[source] sqlx::Error),
    #[error("{0}")]
    Corrupt(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(err: sqlx::Error) -> Self {
        use sqlx::Error as E;
        match &err {
            E::RowNotFound => Self::NotFound,
            E::PoolTimedOut | E::PoolClosed | E::Io(_) | E::Tls(_) | E::WorkerCrashed => {
                Self::Unavailable(err)
            }
            E::Database(db) => {
                if db.is_unique_violation() {
                    return Self::Conflict(db.message().to_owned());
                }
                // SQLITE_BUSY (5) / SQLITE_LOCKED (6), and Postgres admin shutdown,
                // "cannot connect now" and serialization/lock failures: all transient.
                match db.code().as_deref() {
                    Some("5" | "6" | "57P01" | "57P02" | "57P03" | "40001" | "40P01" | "53300") => {
                        Self::Unavailable(err)
                    }
                    _ => Self::Other(err),
                }
            }
            _ => Self::Other(err),
        }
    }
}

impl StoreError {
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

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
