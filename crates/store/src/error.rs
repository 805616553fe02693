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
                if is_transient(db.code().as_deref()) {
                    Self::Unavailable(err)
                } else {
                    Self::Other(err)
                }
            }
            _ => Self::Other(err),
        }
    }
}

/// SQLite's BUSY and LOCKED (with their extended codes), and Postgres' connection
/// exceptions (class 08), shutdown, "cannot connect now", too many connections,
/// serialization, deadlock, lock timeout, statement timeout and a write on a read-only
/// server (a standby, after a failover): all mean "try again", never "your input is bad".
fn is_transient(code: Option<&str>) -> bool {
    let Some(code) = code else { return false };
    if let Ok(sqlite) = code.parse::<i32>() {
        return matches!(sqlite & 0xff, 5 | 6);
    }
    code.starts_with("08")
        || matches!(
            code,
            "57P01" | "57P02" | "57P03" | "53300" | "40001" | "40P01" | "55P03" | "57014" | "25006"
        )
}

impl StoreError {
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

/// A copy of the same kind (`Unavailable` stays a 503), for each of the callers that waited
/// for one read (a cache's single flight). The database's own error cannot be cloned: its
/// message is kept.
impl Clone for StoreError {
    fn clone(&self) -> Self {
        let copy = |e: &sqlx::Error| sqlx::Error::Io(std::io::Error::other(e.to_string()));
        match self {
            Self::NotFound => Self::NotFound,
            Self::Conflict(message) => Self::Conflict(message.clone()),
            Self::Unavailable(e) => Self::Unavailable(copy(e)),
            Self::Other(e) => Self::Other(copy(e)),
            Self::Corrupt(message) => Self::Corrupt(message.clone()),
        }
    }
}
