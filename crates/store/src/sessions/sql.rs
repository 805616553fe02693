//! The statements of the sessions table: its columns, the statements derived from them,
//! and the fixed ones.

use std::sync::OnceLock;

use crate::Kind;

/// A session's columns, in the order every statement writes or returns them, each with its
/// Postgres type (for the arrays of a batch).
pub(super) const COLUMNS: [(&str, &str); 18] = [
    ("session_id", "text"),
    ("app_id", "text"),
    ("sub", "text"),
    ("claims", "text"),
    ("created_at", "int8"),
    ("expires_at", "int8"),
    ("current_jid", "text"),
    ("current_iat", "int8"),
    ("current_exp", "int8"),
    ("key_id", "text"),
    ("prev_jid", "text"),
    ("rotated_at", "int8"),
    ("ip", "text"),
    ("useragent", "text"),
    ("last_renewed_at", "int8"),
    ("revoked_at", "int8"),
    ("revoked_reason", "text"),
    ("current_digest", "bytea"),
];

/// The values of a rotation, in the order they are bound (see [`super::RotationRow::bind`]).
pub(super) const ROTATION: [(&str, &str); 11] = [
    ("session_id", "text"),
    ("app_id", "text"),
    ("new_jid", "text"),
    ("refresh_expire", "int8"),
    ("key_id", "text"),
    ("ip", "text"),
    ("useragent", "text"),
    ("now", "int8"),
    ("expected", "text"),
    ("presented", "bytea"),
    ("digest", "bytea"),
];

/// The live sessions of a subject, oldest first: the ones a session limit evicts first.
pub(super) const LIVE_OF_SUBJECT: &str =
    "SELECT session_id FROM sessions WHERE app_id = $1 AND sub = $2 \
    AND revoked_at IS NULL AND expires_at > $3 ORDER BY created_at, session_id";

pub(super) const UNROTATE: &str = "UPDATE sessions SET current_jid = $4, current_iat = $5, \
    current_exp = $6, prev_jid = NULL, rotated_at = NULL, current_digest = NULL \
    WHERE session_id = $1 AND app_id = $2 AND current_jid = $3";

pub(super) const TOUCH: &str = "UPDATE sessions SET ip = $3, useragent = $4, last_renewed_at = $5 \
    WHERE session_id = $1 AND app_id = $2 AND revoked_at IS NULL AND expires_at > $5";

pub(super) const REVOKE_ONE: &str = "UPDATE sessions SET revoked_at = $3, revoked_reason = $4 \
    WHERE app_id = $1 AND session_id = $2 AND revoked_at IS NULL AND expires_at > $3";
pub(super) const REVOKE_SUBJECT: &str = "UPDATE sessions SET revoked_at = $3, revoked_reason = $4 \
    WHERE app_id = $1 AND sub = $2 AND revoked_at IS NULL AND expires_at > $3";
pub(super) const REVOKE_APP: &str = "UPDATE sessions SET revoked_at = $2, revoked_reason = $3 \
    WHERE app_id = $1 AND revoked_at IS NULL AND expires_at > $2";

// The sessions a revocation of each scope revoked (bound as the revocation is), to resolve
// one in doubt; `FOR UPDATE` is added on Postgres.
pub(super) const REVOKED_ONE: &str = "SELECT session_id FROM sessions WHERE app_id = $1 \
    AND session_id = $2 AND revoked_at = $3 AND revoked_reason = $4";
pub(super) const REVOKED_SUBJECT: &str = "SELECT session_id FROM sessions WHERE app_id = $1 \
    AND sub = $2 AND revoked_at = $3 AND revoked_reason = $4";
pub(super) const REVOKED_APP: &str = "SELECT session_id FROM sessions WHERE app_id = $1 \
    AND revoked_at = $2 AND revoked_reason = $3";

/// A session's current token, to resolve an unrotate in doubt.
pub(super) const CURRENT_JID: &str =
    "SELECT current_jid FROM sessions WHERE session_id = $1 AND app_id = $2";

/// How many live sessions each app has (apps without any are absent).
pub(super) const LIVE_BY_APP: &str = "SELECT app_id, COUNT(*) FROM sessions \
    WHERE revoked_at IS NULL AND expires_at > $1 GROUP BY app_id";

pub(super) const PURGE: &str = "DELETE FROM sessions WHERE expires_at < $1 OR current_exp < $1 \
    OR revoked_at < $1";

/// The statements derived from [`COLUMNS`] and [`ROTATION`], built on first use.
pub(super) struct Statements {
    /// `session_id, app_id, …`
    pub(super) names: String,
    /// `INSERT INTO sessions (…) VALUES `, before the rows.
    pub(super) insert_into: String,
    pub(super) insert: String,
    pub(super) get: String,
    pub(super) live: String,
    pub(super) live_of_sub: String,
    pub(super) rotate: String,
}

pub(super) fn statements() -> &'static Statements {
    static STATEMENTS: OnceLock<Statements> = OnceLock::new();
    STATEMENTS.get_or_init(|| {
        let names = COLUMNS.map(|(name, _)| name).join(", ");
        let insert_into = format!("INSERT INTO sessions ({names}) VALUES ");
        let live = format!(
            "SELECT {names} FROM sessions WHERE app_id = $1 AND revoked_at IS NULL \
             AND expires_at > $2"
        );
        Statements {
            insert: format!("{insert_into}{}", numbered(1, COLUMNS.len())),
            get: format!("SELECT {names} FROM sessions WHERE app_id = $1 AND session_id = $2"),
            live_of_sub: format!("{live} AND sub = $3 ORDER BY created_at, session_id"),
            live: format!("{live} ORDER BY created_at, session_id"),
            rotate: swap(|i| format!("${}", i + 1), "", &names),
            insert_into,
            names,
        }
    })
}

/// `rows` tuples of `width` numbered placeholders: `($1, $2), ($3, $4)`.
pub(super) fn numbered(rows: usize, width: usize) -> String {
    let tuple = |row: usize| {
        let marks: Vec<String> = (1..=width).map(|i| format!("${}", row * width + i)).collect();
        format!("({})", marks.join(", "))
    };
    (0..rows).map(tuple).collect::<Vec<_>>().join(", ")
}

/// The compare-and-swap of a renew, where `value(i)` is the `i`-th value of [`ROTATION`]
/// (a placeholder, or a column of the batch named in `from`): rotates only if the
/// session's `current_jid` is still the expected one (and, with `presented`, its current
/// token's digest is that one) and the session is live at `now`. The new token expires at
/// min(now + refresh_expire, the session's absolute expiry).
pub(super) fn swap(value: impl Fn(usize) -> String, from: &str, returning: &str) -> String {
    let [session, app_id, new_jid, lifetime, key_id, ip, agent, now, expected, presented, digest] =
        std::array::from_fn(value);
    format!(
        "UPDATE sessions SET prev_jid = sessions.current_jid, current_jid = {new_jid}, \
         current_iat = {now}, current_exp = CASE WHEN {now} + {lifetime} < \
         sessions.expires_at THEN {now} + {lifetime} ELSE sessions.expires_at END, \
         key_id = {key_id}, rotated_at = {now}, ip = {ip}, useragent = {agent}, \
         last_renewed_at = {now}, current_digest = {digest}{from} \
         WHERE sessions.session_id = {session} AND sessions.app_id = {app_id} \
         AND sessions.current_jid = {expected} AND sessions.revoked_at IS NULL \
         AND sessions.expires_at > {now} \
         AND ({presented} IS NULL OR sessions.current_digest = {presented}) \
         RETURNING {returning}"
    )
}

/// `text` with `FOR UPDATE` on Postgres; SQLite's write transactions (`BEGIN IMMEDIATE`)
/// already hold the write lock.
pub(super) fn for_update(text: &'static str, kind: Kind) -> std::borrow::Cow<'static, str> {
    match kind {
        Kind::Postgres => format!("{text} FOR UPDATE").into(),
        Kind::Sqlite => text.into(),
    }
}
