//! Postgres URLs that name several hosts, as libpq reads them
//! (`postgres://u@h1:5432,h2:5433/db?target_session_attrs=read-write`), and following the
//! host that takes writes through a failover.
//!
//! sqlx connects to one host and knows neither host lists nor `target_session_attrs`, so
//! the [`Follower`] chooses the host: it tries the current one first, then the others in
//! the order of the URL, and points the pool at the first that meets
//! `target_session_attrs` (`read-write`: `transaction_read_only` is off; `primary`: not in
//! recovery; `any`: it accepts a connection). It searches again
//!
//! - when a statement fails because the database is unavailable ([`Follower::suspect`]),
//! - when a new pooled connection lands on a host that does not qualify (the pool's
//!   `after_connect` check refuses it, and the pool tries again), and
//! - when its heartbeat fails: a query every [`HEARTBEAT`] on a connection of its own.
//!
//! Until some host qualifies, the pool cannot hand out a connection: requests wait at most
//! the busy timeout and are answered 503, and nothing changes.

use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool};
use sqlx::{ConnectOptions, Connection};
use tokio::sync::Notify;

use crate::database_url::split;
use crate::DbError;

/// How often the follower checks, on a connection of its own, that the current host still
/// qualifies.
pub const HEARTBEAT: Duration = Duration::from_millis(500);

/// The pause between two searches that found no host.
const SEARCH_PAUSE: Duration = Duration::from_millis(200);

/// The longest a probe of one host may take (connecting, then the check), so that a host
/// that does not answer cannot hold the search up.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// libpq's `target_session_attrs`, the values of it that suit a gateway, which writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionAttrs {
    /// The first host that accepts a connection (libpq's default).
    Any,
    /// A host whose sessions are read-write by default.
    ReadWrite,
    /// A host that is not in recovery.
    Primary,
}

impl SessionAttrs {
    fn parse(value: &str) -> Result<Self, String> {
        match value {
            "any" => Ok(Self::Any),
            "read-write" => Ok(Self::ReadWrite),
            "primary" => Ok(Self::Primary),
            "read-only" | "standby" | "prefer-standby" => Err(format!(
                "target_session_attrs={value} would send keygate's writes to a standby; use read-write (or primary)"
            )),
            other => Err(format!(
                "unknown target_session_attrs {other:?}; expected any, read-write or primary"
            )),
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Any => "any",
            Self::ReadWrite => "read-write",
            Self::Primary => "primary",
        }
    }

    /// Whether the server on the other end of `conn` qualifies.
    async fn check(self, conn: &mut PgConnection) -> Result<bool, sqlx::Error> {
        Ok(match self {
            Self::Any => true,
            Self::ReadWrite => {
                let read_only: String =
                    sqlx::query_scalar("SHOW transaction_read_only").fetch_one(conn).await?;
                read_only == "off"
            }
            Self::Primary => {
                let recovering: bool =
                    sqlx::query_scalar("SELECT pg_is_in_recovery()").fetch_one(conn).await?;
                !recovering
            }
        })
    }

    /// Why a server that failed [`SessionAttrs::check`] does not qualify.
    fn refusal(self) -> &'static str {
        match self {
            Self::Any => "refused",
            Self::ReadWrite => "read-only (a standby)",
            Self::Primary => "in recovery (a standby)",
        }
    }
}

/// One host of a host list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    pub name: String,
    pub port: u16,
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.name.contains(':') {
            write!(f, "[{}]:{}", self.name, self.port)
        } else {
            write!(f, "{}:{}", self.name, self.port)
        }
    }
}

/// What a multi-host URL names: the options it shares (user, password, database, query
/// parameters), its hosts in order, and what a host must be.
#[derive(Debug, Clone)]
pub struct Targets {
    base: PgConnectOptions,
    pub hosts: Vec<Host>,
    pub attrs: SessionAttrs,
}

/// `host[:port]` or `[v6]:port`; a missing port is `default_port`.
fn parse_host(raw: &str, default_port: u16) -> Result<Host, String> {
    let (name, port) = if let Some(v6) = raw.strip_prefix('[') {
        let (name, after) =
            v6.split_once(']').ok_or_else(|| format!("host {raw:?} lacks its closing ]"))?;
        (name, after.strip_prefix(':'))
    } else {
        match raw.rsplit_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (raw, None),
        }
    };
    if name.is_empty() {
        return Err("the host list has an empty host".to_owned());
    }
    if name.starts_with('%') || name.starts_with('/') {
        return Err(format!("host {name:?} is a socket path; a host list takes TCP hosts only"));
    }
    let port = match port {
        None | Some("") => default_port,
        Some(port) => port.parse().map_err(|_| format!("host {raw:?} has an invalid port"))?,
    };
    Ok(Host { name: name.to_owned(), port })
}

impl Targets {
    /// The targets of a Postgres URL that names several hosts or sets
    /// `target_session_attrs`; `None` for any other URL, which sqlx reads as it is.
    pub fn parse(url: &str) -> Result<Option<Self>, DbError> {
        let invalid = |why: String| DbError::Url(why);
        let Some(parts) = split(url) else { return Ok(None) };
        let mut attrs = None;
        let mut kept = Vec::new();
        for pair in parts.query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("target_session_attrs", value)) => {
                    attrs = Some(SessionAttrs::parse(value).map_err(invalid)?);
                }
                _ => kept.push(pair),
            }
        }
        if !parts.hosts.contains(',') && attrs.is_none() {
            return Ok(None);
        }
        // The shared options, read by sqlx from the URL with a placeholder host, so that
        // its port is the default one (a `port=` parameter, else 5432).
        let first = "localhost";
        let mut single = format!("{}://", parts.scheme);
        if let Some(userinfo) = parts.userinfo {
            single.push_str(userinfo);
            single.push('@');
        }
        single.push_str(first);
        single.push_str(parts.path);
        if !kept.is_empty() {
            single.push('?');
            single.push_str(&kept.join("&"));
        }
        let base = PgConnectOptions::from_str(&single).map_err(DbError::Connect)?;
        let default_port = base.get_port();
        let hosts = parts
            .hosts
            .split(',')
            .map(|raw| parse_host(raw, default_port))
            .collect::<Result<Vec<_>, _>>()
            .map_err(invalid)?;
        Ok(Some(Self { base, hosts, attrs: attrs.unwrap_or(SessionAttrs::Any) }))
    }

    /// The options for connecting to host `index`.
    fn options(&self, index: usize) -> PgConnectOptions {
        let host = &self.hosts[index];
        self.base.clone().host(&host.name).port(host.port)
    }

    /// Applies `f` to the shared options (for example the session settings every
    /// connection sets).
    pub fn map_options(mut self, f: impl FnOnce(PgConnectOptions) -> PgConnectOptions) -> Self {
        self.base = f(self.base);
        self
    }
}

/// Chooses the host the pool connects to, and follows a failover.
pub struct Follower {
    targets: Targets,
    /// The index, in `targets.hosts`, of the host the pool connects to.
    current: Mutex<usize>,
    wake: Notify,
    /// Told when a search finds a host after none qualified, or another host than before.
    found: Notify,
}

impl fmt::Debug for Follower {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Follower({})", self.current_host())
    }
}

impl Follower {
    pub fn new(targets: Targets) -> Self {
        Self { targets, current: Mutex::new(0), wake: Notify::new(), found: Notify::new() }
    }

    /// The index, in the URL's hosts, of the host the pool connects to now.
    pub(crate) fn current(&self) -> usize {
        *self.current.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The host the pool connects to now.
    pub fn current_host(&self) -> &Host {
        &self.targets.hosts[self.current()]
    }

    /// The options for the pool: those of the current host.
    pub fn current_options(&self) -> PgConnectOptions {
        self.targets.options(self.current())
    }

    /// Asks for a search: a statement failed as if the host were gone.
    pub fn suspect(&self) {
        self.wake.notify_one();
    }

    /// Completes when a search next finds a writable host after none qualified, or moves
    /// the pool to another host. Created before the wait it may cut short, it misses no such
    /// moment.
    pub(crate) fn found(&self) -> tokio::sync::futures::Notified<'_> {
        self.found.notified()
    }

    /// The pool's check of each new connection: an error (the pool tries again, until its
    /// acquire timeout) when the host no longer qualifies.
    pub async fn admit(&self, conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        if self.targets.attrs.check(conn).await? {
            return Ok(());
        }
        self.suspect();
        Err(sqlx::Error::Protocol(format!(
            "the database host is {}: target_session_attrs={}",
            self.targets.attrs.refusal(),
            self.targets.attrs.as_str()
        )))
    }

    /// Connects to host `index` and checks it; the connection when it qualifies, else why not.
    async fn probe(&self, index: usize) -> Result<PgConnection, String> {
        let attrs = self.targets.attrs;
        let probe = async {
            let mut conn =
                self.targets.options(index).connect().await.map_err(|e| e.to_string())?;
            match attrs.check(&mut conn).await {
                Ok(true) => Ok(conn),
                Ok(false) => Err(attrs.refusal().to_owned()),
                Err(error) => Err(error.to_string()),
            }
        };
        tokio::time::timeout(PROBE_TIMEOUT, probe)
            .await
            .unwrap_or_else(|_| Err(format!("no answer in {} s", PROBE_TIMEOUT.as_secs())))
    }

    /// Tries the current host, then the others in the order of the URL; the first that
    /// qualifies becomes the current one. On failure, why each host was passed over.
    pub async fn search(&self) -> Result<(usize, PgConnection), Vec<String>> {
        let current = self.current();
        let count = self.targets.hosts.len();
        let mut reasons = Vec::new();
        for index in std::iter::once(current).chain((0..count).filter(|&i| i != current)) {
            match self.probe(index).await {
                Ok(conn) => {
                    *self.current.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = index;
                    return Ok((index, conn));
                }
                Err(why) => reasons.push(format!("{}: {why}", self.targets.hosts[index])),
            }
        }
        Err(reasons)
    }

    /// Follows the writable host for `pool` until the pool closes. `watch` is a connection
    /// to the current host, from the search that opened the pool.
    pub async fn follow(self: Arc<Self>, pool: PgPool, watch: PgConnection) {
        let mut watch = Some(watch);
        let mut lost = false;
        loop {
            if !lost {
                tokio::select! {
                    () = pool.close_event() => break,
                    () = self.wake.notified() => {}
                    () = tokio::time::sleep(HEARTBEAT) => {}
                }
                // The host this gateway is on still qualifies: nothing to do.
                if let Some(conn) = watch.as_mut() {
                    let check = tokio::time::timeout(PROBE_TIMEOUT, self.targets.attrs.check(conn));
                    if matches!(check.await, Ok(Ok(true))) {
                        continue;
                    }
                }
            }
            if let Some(conn) = watch.take() {
                conn.close_hard().await.ok();
            }
            let before = self.current();
            match self.search().await {
                Ok((index, conn)) => {
                    watch = Some(conn);
                    if index != before {
                        pool.set_connect_options(self.targets.options(index));
                        tracing::warn!(host = %self.targets.hosts[index], previous = %self.targets.hosts[before], "the database moved: connecting to the new host");
                    } else if lost {
                        tracing::warn!(host = %self.targets.hosts[index], "the database is back");
                    }
                    if index != before || lost {
                        self.found.notify_waiters();
                    }
                    lost = false;
                }
                Err(reasons) => {
                    if !lost {
                        tracing::error!(hosts = %reasons.join("; "), target_session_attrs = self.targets.attrs.as_str(), "no database host qualifies: requests get 503 until one does");
                    }
                    lost = true;
                    tokio::select! {
                        () = pool.close_event() => break,
                        () = tokio::time::sleep(SEARCH_PAUSE) => {}
                    }
                }
            }
        }
        if let Some(conn) = watch {
            conn.close().await.ok();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn targets(url: &str) -> Targets {
        Targets::parse(url).unwrap().unwrap()
    }

    #[test]
    fn a_host_list_is_read_as_libpq_reads_it() {
        let t = targets("postgres://u:pw@db1:5433,db2,[::1]:5434/keygate?target_session_attrs=read-write&sslmode=disable&options=-c%20search_path%3Dx");
        let shown: Vec<_> = t.hosts.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["db1:5433", "db2:5432", "[::1]:5434"]);
        assert_eq!(t.attrs, SessionAttrs::ReadWrite);
        let second = t.options(1);
        assert_eq!((second.get_host(), second.get_port()), ("db2", 5432));
        assert_eq!(second.get_username(), "u");
        assert_eq!(second.get_database(), Some("keygate"));
        assert_eq!(second.get_options(), Some("-c search_path=x"));
    }

    #[test]
    fn a_missing_port_is_the_urls_port_parameter() {
        let t = targets("postgresql://u@a,b:6000/d?port=7000");
        assert_eq!(
            t.hosts,
            [Host { name: "a".into(), port: 7000 }, Host { name: "b".into(), port: 6000 }]
        );
        assert_eq!(t.attrs, SessionAttrs::Any, "libpq's default");
    }

    #[test]
    fn a_single_host_without_attrs_is_left_to_sqlx() {
        assert!(Targets::parse("postgres://u@db:5432/x?sslmode=disable").unwrap().is_none());
        let one = targets("postgres://u@db/x?target_session_attrs=primary");
        assert_eq!((one.hosts.len(), one.attrs), (1, SessionAttrs::Primary));
    }

    #[test]
    fn attrs_that_would_write_to_a_standby_or_unknown_ones_are_refused() {
        for (attrs, expected) in [
            ("read-only", "would send keygate's writes to a standby"),
            ("standby", "would send keygate's writes to a standby"),
            ("prefer-standby", "would send keygate's writes to a standby"),
            ("master", "unknown target_session_attrs \"master\""),
        ] {
            let url = format!("postgres://u:secret@a,b/x?target_session_attrs={attrs}");
            let error = Targets::parse(&url).unwrap_err().to_string();
            assert!(error.contains(expected), "{attrs}: {error}");
            assert!(!error.contains("secret"), "{error}");
        }
    }

    #[test]
    fn bad_host_lists_are_refused_with_the_reason() {
        for (hosts, expected) in [
            ("a,,b", "empty host"),
            ("a,b:port", "invalid port"),
            ("a,b:70000", "invalid port"),
            ("a,[::1", "closing ]"),
            ("a,%2Frun%2Fpg", "socket path"),
        ] {
            let url = format!("postgres://u:secret@{hosts}/x");
            let error = Targets::parse(&url).unwrap_err().to_string();
            assert!(error.contains(expected), "{hosts}: {error}");
            assert!(!error.contains("secret"), "{error}");
        }
    }
}
