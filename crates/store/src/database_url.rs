//! Database URLs: split into their parts by hand, because the `url` crate refuses the host
//! list of a Postgres multi-host URL (`postgres://u:p@a:1,b:2/x?target_session_attrs=…`),
//! and held in a [`DatabaseUrl`], which shows itself with any password replaced.

use std::fmt;

/// A database URL that cannot leak its password: `Debug` and `Display` show it with any
/// password replaced by `***` (in the user part and in a `password=` parameter), so it can
/// go into messages, logs and settings dumps as it is. Only [`DatabaseUrl::expose`] gives
/// the URL whole, for making the connection.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    /// The URL as written, password included: for connecting, never for showing.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for DatabaseUrl {
    fn from(url: String) -> Self {
        Self(url)
    }
}

impl From<&str> for DatabaseUrl {
    fn from(url: &str) -> Self {
        Self(url.to_owned())
    }
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_redacted(&self.0, f)
    }
}

impl fmt::Debug for DatabaseUrl {
    // Quoted like a string, as settings printed it before it had a type of its own.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&redact_url(&self.0), f)
    }
}

/// The parts of `scheme://userinfo@hosts/path?query#fragment`. No `Debug`: the user part
/// may hold a password.
#[derive(Clone, Copy)]
pub(crate) struct Parts<'a> {
    pub(crate) scheme: &'a str,
    /// `user` or `user:password`, as written (percent-encoded).
    pub(crate) userinfo: Option<&'a str>,
    /// One host or a comma-separated list, each with its port if it names one.
    pub(crate) hosts: &'a str,
    /// Empty, or from its `/` on.
    pub(crate) path: &'a str,
    pub(crate) query: Option<&'a str>,
    pub(crate) fragment: Option<&'a str>,
}

/// Splits a URL; `None` when it has no `://` (as in `sqlite:PATH`).
pub(crate) fn split(url: &str) -> Option<Parts<'_>> {
    let (scheme, rest) = url.split_once("://")?;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => (Some(userinfo), hosts),
        None => (None, authority),
    };
    let (tail, fragment) = match tail.split_once('#') {
        Some((before, fragment)) => (before, Some(fragment)),
        None => (tail, None),
    };
    let (path, query) = match tail.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (tail, None),
    };
    Some(Parts { scheme, userinfo, hosts, path, query, fragment })
}

/// Writes `url` with any password replaced by `***`: in the user part
/// (`scheme://user:password@hosts…`) and in a `password=` parameter.
fn write_redacted(url: &str, out: &mut impl fmt::Write) -> fmt::Result {
    let Some(parts) = split(url) else { return out.write_str(url) };
    write!(out, "{}://", parts.scheme)?;
    if let Some(userinfo) = parts.userinfo {
        match userinfo.split_once(':') {
            Some((user, _)) => write!(out, "{user}:***@")?,
            None => write!(out, "{userinfo}@")?,
        }
    }
    out.write_str(parts.hosts)?;
    out.write_str(parts.path)?;
    for (mark, pairs) in [('?', parts.query), ('#', parts.fragment)] {
        let Some(pairs) = pairs else { continue };
        out.write_char(mark)?;
        for (i, pair) in pairs.split('&').enumerate() {
            if i > 0 {
                out.write_char('&')?;
            }
            match pair.split_once('=') {
                Some(("password", _)) => out.write_str("password=***")?,
                _ => out.write_str(pair)?,
            }
        }
    }
    Ok(())
}

/// The URL with any password replaced, as [`DatabaseUrl`] shows it.
fn redact_url(url: &str) -> String {
    let mut shown = String::with_capacity(url.len());
    // Writing to a String cannot fail.
    let _ = write_redacted(url, &mut shown);
    shown
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DbError;

    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(redact_url("postgres://u:hunter2@db:5432/x"), "postgres://u:***@db:5432/x");
        assert_eq!(redact_url("sqlite://./a.db"), "sqlite://./a.db");
        assert_eq!(
            redact_url("postgres://u:hunter2@a:1,b:2/x?target_session_attrs=read-write"),
            "postgres://u:***@a:1,b:2/x?target_session_attrs=read-write"
        );
        assert_eq!(
            redact_url("postgres://u@a/x?sslmode=disable&password=hunter2"),
            "postgres://u@a/x?sslmode=disable&password=***"
        );
        assert_eq!(redact_url("postgres://p%40ss:h%3Aunter2@db/x"), "postgres://p%40ss:***@db/x");
        let err = DbError::Scheme(redact_url("mysql://u:hunter2@db/x"));
        assert!(!err.to_string().contains("hunter2"));
    }

    #[test]
    fn a_database_url_shows_no_password_but_gives_it_to_the_connection() {
        let raw = "postgres://u:hunter2@a:1,b:2/x?sslmode=disable&password=hunter3";
        let url = DatabaseUrl::from(raw);
        let redacted = "postgres://u:***@a:1,b:2/x?sslmode=disable&password=***";
        assert_eq!(url.to_string(), redacted);
        assert_eq!(format!("{url:?}"), format!("{redacted:?}"));
        assert_eq!(format!("{:?}", Some(&url)), format!("Some({redacted:?})"));
        assert_eq!(url.expose(), raw);
        assert_eq!(DatabaseUrl::from(raw.to_owned()), url);
        let sqlite = DatabaseUrl::from("sqlite://./keygate-data/keygate.db");
        assert_eq!(sqlite.to_string(), sqlite.expose());
    }

    #[test]
    fn what_has_no_password_is_shown_as_written() {
        for url in [
            "sqlite:keygate.db",
            "sqlite://./a.db?mode=rwc",
            "postgres://u@[::1]:5432,db2/x?sslmode=disable&options=-c%20search_path%3Dx",
            "postgres:///x?host=/run/postgresql",
            "postgres://u@db/x?a=1#f",
        ] {
            assert_eq!(redact_url(url), url);
        }
        assert_eq!(
            redact_url("postgres://u:@db/x#password=p"),
            "postgres://u:***@db/x#password=***"
        );
    }

    #[test]
    fn a_url_is_split_into_its_parts() {
        let parts =
            split("postgres://u:p@a:1,[::1]:2/x?target_session_attrs=read-write#f").unwrap();
        assert_eq!(
            (parts.scheme, parts.userinfo, parts.hosts, parts.path),
            ("postgres", Some("u:p"), "a:1,[::1]:2", "/x")
        );
        assert_eq!(
            (parts.query, parts.fragment),
            (Some("target_session_attrs=read-write"), Some("f"))
        );
        let bare = split("postgres://db").unwrap();
        assert_eq!((bare.userinfo, bare.hosts, bare.path, bare.query), (None, "db", "", None));
        let at_in_password = split("postgres://u:p@ss@db?x=1").unwrap();
        assert_eq!((at_in_password.userinfo, at_in_password.hosts), (Some("u:p@ss"), "db"));
        assert_eq!(at_in_password.path, "");
        assert!(split("sqlite:keygate.db").is_none());
    }
}
