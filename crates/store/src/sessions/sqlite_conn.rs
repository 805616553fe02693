//! The group-commit batcher's own SQLite connection, driven directly on its thread
//! (rusqlite over the same libsqlite3 as sqlx), and its errors in sqlx's terms, so that a
//! failed batch is classified exactly as a statement on the pool's connections.

use std::borrow::Cow;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use rusqlite::types::Type;
use rusqlite::{Connection, OpenFlags, Row};
use sqlx::error::{DatabaseError, ErrorKind};

use super::SessionRow;

/// Opens the database at `path` as the pool's connections are: WAL (the file already is),
/// `synchronous=FULL`, foreign keys, a 16 MiB page cache and the busy timeout.
pub(super) fn open(path: &Path, busy_timeout: Duration) -> Result<Connection, sqlx::Error> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(|err| {
        sqlx::Error::Io(std::io::Error::other(format!("cannot open {}: {err}", path.display())))
    })?;
    conn.busy_timeout(busy_timeout).map_err(error)?;
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON; \
         PRAGMA cache_size = -16384;",
    )
    .map_err(error)?;
    Ok(conn)
}

/// A rusqlite error as sqlx reports the same failure: SQLite's own errors keep their
/// extended code (busy, locked, I/O, constraint), so that [`crate::StoreError`] tells a
/// refused batch from one in doubt; a value that does not decode is a column decode error.
pub(super) fn error(err: rusqlite::Error) -> sqlx::Error {
    match err {
        rusqlite::Error::SqliteFailure(failure, message) => {
            let message = message.unwrap_or_else(|| failure.to_string());
            sqlx::Error::Database(Box::new(Failure { code: failure.extended_code, message }))
        }
        rusqlite::Error::FromSqlConversionFailure(index, _, source) => {
            sqlx::Error::ColumnDecode { index: index.to_string(), source }
        }
        rusqlite::Error::InvalidColumnType(index, name, ty) => sqlx::Error::ColumnDecode {
            index: index.to_string(),
            source: format!("column {name} holds {ty}").into(),
        },
        other => sqlx::Error::Decode(Box::new(other)),
    }
}

/// SQLite's failure of a statement: its extended result code and message.
#[derive(Debug)]
struct Failure {
    code: i32,
    message: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "(code: {}) {}", self.code, self.message)
    }
}

impl std::error::Error for Failure {}

impl DatabaseError for Failure {
    fn message(&self) -> &str {
        &self.message
    }

    /// The extended result code, as sqlx's SQLite driver gives it.
    fn code(&self) -> Option<Cow<'_, str>> {
        Some(self.code.to_string().into())
    }

    fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
        self
    }

    fn kind(&self) -> ErrorKind {
        use rusqlite::ffi;
        match self.code {
            ffi::SQLITE_CONSTRAINT_UNIQUE | ffi::SQLITE_CONSTRAINT_PRIMARYKEY => {
                ErrorKind::UniqueViolation
            }
            ffi::SQLITE_CONSTRAINT_FOREIGNKEY => ErrorKind::ForeignKeyViolation,
            ffi::SQLITE_CONSTRAINT_NOTNULL => ErrorKind::NotNullViolation,
            ffi::SQLITE_CONSTRAINT_CHECK => ErrorKind::CheckViolation,
            _ => ErrorKind::Other,
        }
    }
}

/// A session as a statement returns it, its columns in the order of
/// [`super::sql::COLUMNS`].
pub(super) fn session(row: &Row<'_>) -> rusqlite::Result<SessionRow> {
    Ok(SessionRow {
        session_id: parsed(row, 0)?,
        app_id: parsed(row, 1)?,
        sub: row.get(2)?,
        claims: row.get(3)?,
        created_at: row.get(4)?,
        expires_at: row.get(5)?,
        current_jid: parsed(row, 6)?,
        current_iat: row.get(7)?,
        current_exp: row.get(8)?,
        key_id: parsed(row, 9)?,
        prev_jid: row.get::<_, Option<String>>(10)?.map(|text| parse(10, &text)).transpose()?,
        rotated_at: row.get(11)?,
        ip: row.get(12)?,
        useragent: row.get(13)?,
        last_renewed_at: row.get(14)?,
        revoked_at: row.get(15)?,
        revoked_reason: row.get(16)?,
        current_digest: row.get(17)?,
    })
}

/// An id stored as text.
fn parsed<T>(row: &Row<'_>, index: usize) -> rusqlite::Result<T>
where
    T: FromStr,
    T::Err: std::error::Error + Send + Sync + 'static,
{
    parse(index, &row.get::<_, String>(index)?)
}

fn parse<T>(index: usize, text: &str) -> rusqlite::Result<T>
where
    T: FromStr,
    T::Err: std::error::Error + Send + Sync + 'static,
{
    text.parse()
        .map_err(|err| rusqlite::Error::FromSqlConversionFailure(index, Type::Text, Box::new(err)))
}
