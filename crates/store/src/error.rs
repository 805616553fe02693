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
    /// A write whose statement (in autocommit) or `COMMIT` was sent, and whose answer was
    /// lost: the connection broke, or the server ended it, while the commit was in flight.
    /// It may have committed or not. Writes whose loss matters to a client resolve this
    /// before they answer (`crate::in_doubt`); any other caller answers 503.
    #[error("database unavailable while a write committed: its outcome is unknown")]
    InDoubt(#[source] sqlx::Error),
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
            // A column that does not hold what its type says: an id that is not a ULID, a
            // state that is not one of the states.
            E::ColumnDecode { index, source } => Self::Corrupt(format!("column {index}: {source}")),
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
    /// "Try again" (503): the database is unavailable, or a write's outcome is unknown.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable(_) | Self::InDoubt(_))
    }

    /// A write that may or may not have committed.
    pub fn is_in_doubt(&self) -> bool {
        matches!(self, Self::InDoubt(_))
    }

    /// The failure of a write after its statement (in autocommit) or its `COMMIT` was sent
    /// on a connection that was already acquired. An answer from the server (an error
    /// response) means the transaction was rolled back: a known failure, classified as any
    /// other. No answer (the connection broke: I/O, TLS, a protocol error, SQLite's worker
    /// gone), or the server ending the session (Postgres' class 08 and 57P: an immediate or
    /// fast shutdown, which may come after the commit is local while it waits for the
    /// synchronous standby), leaves the outcome unknown: in doubt.
    pub(crate) fn after_sent(err: sqlx::Error) -> Self {
        if sent_and_lost(&err) {
            Self::InDoubt(err)
        } else {
            Self::from(err)
        }
    }
}

/// Whether a write that was sent may have committed although it failed; see
/// [`StoreError::after_sent`].
fn sent_and_lost(err: &sqlx::Error) -> bool {
    use sqlx::Error as E;
    match err {
        E::Io(_) | E::Tls(_) | E::Protocol(_) | E::WorkerCrashed => true,
        E::Database(db) => match db.code().as_deref() {
            // SQLite's I/O errors (SQLITE_IOERR and its extended codes): the WAL frames may
            // be on disk although the commit failed.
            Some(code) => match code.parse::<i32>() {
                Ok(sqlite) => sqlite & 0xff == 10,
                Err(_) => code.starts_with("08") || code.starts_with("57P"),
            },
            None => false,
        },
        _ => false,
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
            Self::InDoubt(e) => Self::InDoubt(copy(e)),
            Self::Other(e) => Self::Other(copy(e)),
            Self::Corrupt(message) => Self::Corrupt(message.clone()),
        }
    }
}

/// An error and its sources on one line, for the log.
pub fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
