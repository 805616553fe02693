//! A statement and the values bound to it, which both backends take alike, and the rows
//! both decode.

use std::fmt;

use keygate_kernel::{
    AccessTokenProfile, AppId, DpopMode, EventId, Jid, KeyId, KeyState, OnReuse, SessionId,
};
use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;
use sqlx::{Arguments, Encode, FromRow, Type};

/// A value bound to a statement placeholder. Both backends encode each of these the same
/// way as they did when bound directly.
#[derive(Clone)]
pub enum Arg {
    Text(Option<String>),
    Int(Option<i64>),
    Bool(bool),
    Bytes(Option<Vec<u8>>),
}

/// `From` for each Rust type a statement binds, into the [`Arg`] that carries it.
macro_rules! args_from {
    ($($from:ty => |$v:ident| $arg:expr;)*) => {
        $(impl From<$from> for Arg {
            fn from($v: $from) -> Self {
                $arg
            }
        })*
    };
}

args_from! {
    String => |v| Self::Text(Some(v));
    &str => |v| Self::Text(Some(v.to_owned()));
    &String => |v| Self::Text(Some(v.clone()));
    Option<String> => |v| Self::Text(v);
    Option<&str> => |v| Self::Text(v.map(str::to_owned));
    &Option<String> => |v| Self::Text(v.clone());
    i64 => |v| Self::Int(Some(v));
    Option<i64> => |v| Self::Int(v);
    bool => |v| Self::Bool(v);
    Vec<u8> => |v| Self::Bytes(Some(v));
    &[u8] => |v| Self::Bytes(Some(v.to_vec()));
    Option<Vec<u8>> => |v| Self::Bytes(v);
}

/// The kernel's ids and states bind as their text form, as they are stored.
macro_rules! text_args {
    ($($ty:ty),* $(,)?) => {
        $(args_from! {
            $ty => |v| Self::Text(Some(v.to_string()));
            &$ty => |v| Self::Text(Some(v.to_string()));
            Option<$ty> => |v| Self::Text(v.map(|v| v.to_string()));
        })*
    };
}

text_args!(AppId, KeyId, SessionId, Jid, EventId);

args_from! {
    KeyState => |v| Self::Text(Some(v.as_str().to_owned()));
    OnReuse => |v| Self::Text(Some(v.as_str().to_owned()));
    AccessTokenProfile => |v| Self::Text(Some(v.as_str().to_owned()));
    DpopMode => |v| Self::Text(Some(v.as_str().to_owned()));
}

/// A statement and its arguments, in placeholder order. `Debug` shows the statement only:
/// the arguments may be hashes, sealed keys or token digests.
#[derive(Clone)]
pub struct Sql {
    pub(super) text: std::borrow::Cow<'static, str>,
    pub(super) args: Vec<Arg>,
}

impl Sql {
    pub fn new(text: impl Into<std::borrow::Cow<'static, str>>) -> Self {
        Self { text: text.into(), args: Vec::new() }
    }

    /// Binds the next placeholder.
    #[must_use]
    pub fn bind(mut self, value: impl Into<Arg>) -> Self {
        self.args.push(value.into());
        self
    }
    /// The statement's text and its arguments, for a connection outside the pools.
    pub(crate) fn into_parts(self) -> (std::borrow::Cow<'static, str>, Vec<Arg>) {
        (self.text, self.args)
    }
}

/// The same values on the SQLite group commit's own connection (rusqlite), encoded as sqlx
/// encodes them for SQLite (a bool as 0 or 1).
impl rusqlite::ToSql for Arg {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        match self {
            Self::Text(v) => v.to_sql(),
            Self::Int(v) => v.to_sql(),
            Self::Bool(v) => v.to_sql(),
            Self::Bytes(v) => v.to_sql(),
        }
    }
}

impl fmt::Debug for Arg {
    // The value may be a secret's hash, a sealed key or a token digest.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Arg(<redacted>)")
    }
}

impl fmt::Debug for Sql {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sql").field("text", &self.text).field("args", &self.args.len()).finish()
    }
}

/// Builds the arguments of either backend from [`Arg`]s: the one function that encodes.
pub(super) fn arguments<'q, DB: sqlx::Database>(
    args: Vec<Arg>,
) -> Result<DB::Arguments<'q>, sqlx::Error>
where
    Option<String>: Encode<'q, DB> + Type<DB>,
    Option<i64>: Encode<'q, DB> + Type<DB>,
    bool: Encode<'q, DB> + Type<DB>,
    Option<Vec<u8>>: Encode<'q, DB> + Type<DB>,
{
    let mut out = DB::Arguments::default();
    out.reserve(args.len(), 0);
    for arg in args {
        let added = match arg {
            Arg::Text(v) => out.add(v),
            Arg::Int(v) => out.add(v),
            Arg::Bool(v) => out.add(v),
            Arg::Bytes(v) => out.add(v),
        };
        added.map_err(sqlx::Error::Encode)?;
    }
    Ok(out)
}

/// A row type that both backends decode: derive `sqlx::FromRow` on a struct of plain
/// fields, or use a tuple.
pub trait Row: for<'r> FromRow<'r, SqliteRow> + for<'r> FromRow<'r, PgRow> + Send + Unpin {}
impl<T> Row for T where T: for<'r> FromRow<'r, SqliteRow> + for<'r> FromRow<'r, PgRow> + Send + Unpin
{}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bound_values_never_reach_debug() {
        let sql = Sql::new("SELECT $1, $2").bind("hunter2").bind(vec![0x42u8; 32]);
        let shown = format!("{sql:?} {:?}", Arg::from("hunter2"));
        assert!(shown.contains("SELECT $1, $2") && shown.contains("args: 2"), "{shown}");
        assert!(!shown.contains("hunter2") && !shown.contains("66"), "{shown}");
    }
}
