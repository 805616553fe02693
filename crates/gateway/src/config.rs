//! Settings: defaults, then an optional TOML file, then `KEYGATE_*` environment variables,
//! then command-line flags.

use std::fmt;
use std::path::{Path, PathBuf};

use keygate_store::DatabaseUrl;
use secrecy::SecretString;
use serde::{Deserialize, Deserializer};

use crate::compat::CompatSettings;

mod duration;

/// Each duration setting takes a bare number in its own unit (seconds; milliseconds for a
/// `*_ms` key; minutes or days where the name says so) or a duration such as `"15m"`.
#[derive(Clone, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// `sqlite://PATH` or `postgres://…`; by default a SQLite file in `data_dir`.
    pub database_url: Option<String>,
    /// The address `serve` binds.
    pub listen: String,
    /// Where the embedded defaults live: the SQLite database and a generated master key.
    pub data_dir: PathBuf,
    /// base64 of the 32-byte master key that seals private signing keys.
    pub master_key: Option<SecretString>,
    /// A file holding the master key in base64.
    pub master_key_file: Option<PathBuf>,
    /// Earlier master keys (base64), still accepted for opening private keys sealed with
    /// them while a master-key rotation is under way. A list in TOML; a comma-separated
    /// list in `KEYGATE_PREVIOUS_MASTER_KEYS`.
    #[serde(deserialize_with = "string_or_list")]
    pub previous_master_keys: Vec<SecretString>,
    /// The root key to install when the database has none yet.
    pub root_key: Option<SecretString>,
    /// HTTP worker threads; by default one per CPU.
    pub workers: Option<usize>,
    /// `Cache-Control: max-age` of the JWKS, in seconds. A next key is published at least
    /// this long before a scheduled rotation makes it active.
    #[serde(deserialize_with = "duration::seconds")]
    pub jwks_max_age: u64,
    /// The longest cached apps and keys are trusted before they are read again, in seconds;
    /// changes made elsewhere are seen sooner, through the change log and `NOTIFY`.
    #[serde(deserialize_with = "duration::seconds")]
    pub cache_ttl: u64,
    /// The most connections a gateway opens to Postgres.
    pub postgres_max_connections: u32,
    /// Milliseconds a write waits for a connection to a writable database host, and a
    /// statement for a lock, before the request is answered 503 (nothing is changed, and
    /// the client's token is not consumed).
    #[serde(deserialize_with = "duration::milliseconds")]
    pub database_busy_timeout_ms: u64,
    /// Milliseconds a write whose answer was lost while it committed (in doubt) keeps trying
    /// to learn whether it committed, before the request is answered 503.
    #[serde(deserialize_with = "duration::milliseconds")]
    pub database_in_doubt_timeout_ms: u64,
    /// Seconds between maintenance passes (scheduled key rotation, then deleting ended sessions,
    /// expired retired keys and old events); 0 turns them off.
    #[serde(deserialize_with = "duration::seconds")]
    pub janitor_interval: u64,
    /// Extra refresh routes that speak other systems' contracts (`[[compat.routes]]`).
    pub compat: CompatSettings,
    /// Failed app-key and root-key attempts one client address may make per minute, on
    /// average, before it is answered 429; 0 turns the limit off.
    pub auth_failures_per_minute: u32,
    /// Failed attempts one client address may make at once before the per-minute rate
    /// applies.
    pub auth_failure_burst: u32,
    /// App requests (those an app key or an app's client credentials authenticate) worked
    /// on at once; beyond them a request waits in its app's queue, and the apps that wait
    /// take turns. 0 turns fair admission off. By default [`ADMISSION_IN_FLIGHT_SQLITE`]
    /// on SQLite and [`ADMISSION_IN_FLIGHT_POSTGRES`] on Postgres, where more requests in
    /// flight overlap the database's round trips.
    pub admission_in_flight: Option<usize>,
    /// Requests one app may have waiting for their turn; a request beyond them is
    /// answered 503 with `Retry-After` (nothing changed).
    pub admission_queue: usize,
    /// Milliseconds a request waits for its turn at most before it is answered 503 with
    /// `Retry-After` (nothing changed).
    #[serde(deserialize_with = "duration::milliseconds")]
    pub admission_wait_ms: u64,
    /// Milliseconds a refusal that would be answered at once (429 for an app over its
    /// quota, 503 for an app whose queue is full) is held before it is answered, so that a
    /// client retrying at once cannot turn refusals into load; 0 answers at once.
    #[serde(deserialize_with = "duration::milliseconds")]
    pub refusal_delay_ms: u64,
    /// Proxies (IP addresses or CIDR networks) whose `X-Forwarded-For` names the client.
    /// A list in TOML; a comma-separated list in `KEYGATE_TRUSTED_PROXIES`.
    #[serde(deserialize_with = "string_or_list")]
    pub trusted_proxies: Vec<String>,
    /// Milliseconds a client has to send a request's head (line and headers) before it is
    /// answered 408 and disconnected; 0 means no limit.
    #[serde(deserialize_with = "duration::milliseconds")]
    pub client_request_timeout_ms: u64,
    /// Milliseconds a closing connection waits for the client to disconnect; 0 means no
    /// limit.
    #[serde(deserialize_with = "duration::milliseconds")]
    pub client_disconnect_timeout_ms: u64,
    /// Connections each worker serves at once; further ones wait to be accepted.
    pub max_connections: usize,
    /// Milliseconds between looks for webhook deliveries that are due (a new event is
    /// delivered at once); 0 turns delivery off in this process.
    #[serde(deserialize_with = "duration::milliseconds")]
    pub webhook_poll_ms: u64,
    /// Milliseconds a webhook receiver has to answer one delivery.
    #[serde(deserialize_with = "duration::milliseconds")]
    pub webhook_timeout_ms: u64,
    /// Attempts at delivering one event before it is marked failed.
    pub webhook_max_attempts: u32,
    /// Milliseconds before the first retry of a failed delivery; each further retry waits
    /// twice as long, up to an hour.
    #[serde(deserialize_with = "duration::milliseconds")]
    pub webhook_retry_ms: u64,
    /// Days audit events are kept (the maintenance pass deletes older ones); 0 keeps them forever.
    #[serde(deserialize_with = "duration::days")]
    pub audit_retention_days: u64,
    /// The gateway's own address as clients reach it (`https://auth.example.com`, maybe with
    /// a path prefix): the base of the absolute URLs in the OAuth metadata, which is not
    /// served without it.
    pub public_url: Option<String>,
    /// Serves the admin console in the browser at `/console/` (off: `/console/` is 404).
    pub console: bool,
    /// Minutes a console sign-in lasts, at most 720 (12 hours).
    #[serde(deserialize_with = "duration::minutes")]
    pub console_session_minutes: u64,
}

/// App requests worked on at once by default on SQLite: as many as saturate two cores
/// with group commit (docs/operations.md, "Tenant isolation").
pub const ADMISSION_IN_FLIGHT_SQLITE: usize = 16;
/// The same on Postgres, where a renew also waits for a round trip to the database.
pub const ADMISSION_IN_FLIGHT_POSTGRES: usize = 24;

/// The longest a console sign-in may last, in minutes.
pub const CONSOLE_SESSION_MAX_MINUTES: u64 = 12 * 60;

impl Default for Settings {
    fn default() -> Self {
        Self {
            database_url: None,
            listen: "127.0.0.1:8080".into(),
            data_dir: PathBuf::from("./keygate-data"),
            master_key: None,
            master_key_file: None,
            root_key: None,
            workers: None,
            jwks_max_age: 300,
            cache_ttl: 60,
            postgres_max_connections: 16,
            janitor_interval: 300,
            database_busy_timeout_ms: 5000,
            database_in_doubt_timeout_ms: 5000,
            compat: CompatSettings::default(),
            auth_failures_per_minute: 10,
            auth_failure_burst: 10,
            admission_in_flight: None,
            admission_queue: 256,
            admission_wait_ms: 1000,
            refusal_delay_ms: 250,
            trusted_proxies: Vec::new(),
            previous_master_keys: Vec::new(),
            client_request_timeout_ms: 5000,
            client_disconnect_timeout_ms: 1000,
            max_connections: 25_000,
            webhook_poll_ms: 1000,
            webhook_timeout_ms: 5000,
            webhook_max_attempts: 8,
            webhook_retry_ms: 1000,
            audit_retention_days: 90,
            public_url: None,
            console: false,
            console_session_minutes: CONSOLE_SESSION_MAX_MINUTES,
        }
    }
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("database_url", &self.database_url.as_deref().map(DatabaseUrl::from))
            .field("listen", &self.listen)
            .field("data_dir", &self.data_dir)
            .field("master_key", &self.master_key)
            .field("master_key_file", &self.master_key_file)
            .field("previous_master_keys", &self.previous_master_keys)
            .field("root_key", &self.root_key)
            .field("workers", &self.workers)
            .field("jwks_max_age", &self.jwks_max_age)
            .field("cache_ttl", &self.cache_ttl)
            .field("postgres_max_connections", &self.postgres_max_connections)
            .field("janitor_interval", &self.janitor_interval)
            .field("database_busy_timeout_ms", &self.database_busy_timeout_ms)
            .field("database_in_doubt_timeout_ms", &self.database_in_doubt_timeout_ms)
            .field("compat_routes", &self.compat.routes.len())
            .field("auth_failures_per_minute", &self.auth_failures_per_minute)
            .field("auth_failure_burst", &self.auth_failure_burst)
            .field("admission_in_flight", &self.admission_in_flight)
            .field("admission_queue", &self.admission_queue)
            .field("admission_wait_ms", &self.admission_wait_ms)
            .field("refusal_delay_ms", &self.refusal_delay_ms)
            .field("trusted_proxies", &self.trusted_proxies)
            .field("client_request_timeout_ms", &self.client_request_timeout_ms)
            .field("client_disconnect_timeout_ms", &self.client_disconnect_timeout_ms)
            .field("max_connections", &self.max_connections)
            .field("webhook_poll_ms", &self.webhook_poll_ms)
            .field("webhook_timeout_ms", &self.webhook_timeout_ms)
            .field("webhook_max_attempts", &self.webhook_max_attempts)
            .field("webhook_retry_ms", &self.webhook_retry_ms)
            .field("audit_retention_days", &self.audit_retention_days)
            .field("public_url", &self.public_url)
            .field("console", &self.console)
            .field("console_session_minutes", &self.console_session_minutes)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Load(#[from] config::ConfigError),
    #[error("configuration file {0} does not exist")]
    MissingFile(PathBuf),
    #[error("public_url: {0}")]
    PublicUrl(String),
    #[error("console_session_minutes must be 1 to {CONSOLE_SESSION_MAX_MINUTES}, not {0}")]
    ConsoleSession(u64),
}

impl Settings {
    /// Loads settings from `file` (if any) and the environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_from(file, None)
    }

    /// Like [`Self::load`], with `environment` in place of the process environment.
    fn load_from(
        file: Option<&Path>,
        environment: Option<config::Map<String, String>>,
    ) -> Result<Self, ConfigError> {
        let mut builder = config::Config::builder();
        if let Some(file) = file {
            if !file.exists() {
                return Err(ConfigError::MissingFile(file.to_owned()));
            }
            builder = builder.add_source(config::File::from(file).format(config::FileFormat::Toml));
        }
        let environment = config::Environment::with_prefix("KEYGATE")
            .prefix_separator("_")
            .ignore_empty(true)
            .source(environment);
        let mut settings: Settings = builder.add_source(environment).build()?.try_deserialize()?;
        settings.database_url = settings.database_url.filter(|url| !url.trim().is_empty());
        settings.public_url()?;
        settings.console_session()?;
        Ok(settings)
    }

    /// How app requests are admitted: `admission_in_flight`, `admission_queue`,
    /// `admission_wait_ms`.
    pub fn admission_limits(&self) -> crate::admission::Limits {
        let postgres = self.database_url().starts_with("postgres");
        crate::admission::Limits {
            in_flight: self.admission_in_flight.unwrap_or(if postgres {
                ADMISSION_IN_FLIGHT_POSTGRES
            } else {
                ADMISSION_IN_FLIGHT_SQLITE
            }),
            queue: self.admission_queue,
            max_wait: std::time::Duration::from_millis(self.admission_wait_ms),
            refusal_delay: std::time::Duration::from_millis(self.refusal_delay_ms),
        }
    }

    /// How long a console sign-in lasts, checked: 1 minute to 12 hours.
    pub fn console_session(&self) -> Result<std::time::Duration, ConfigError> {
        match self.console_session_minutes {
            0 => Err(ConfigError::ConsoleSession(0)),
            m if m > CONSOLE_SESSION_MAX_MINUTES => Err(ConfigError::ConsoleSession(m)),
            m => Ok(std::time::Duration::from_secs(m * 60)),
        }
    }

    /// Whether `listen` is a loopback address (a console cookie without `Secure` is then
    /// acceptable: nothing leaves the machine).
    pub fn listens_on_loopback(&self) -> bool {
        let host = match self.listen.rsplit_once(':') {
            Some((host, _)) => host.trim_start_matches('[').trim_end_matches(']'),
            None => self.listen.as_str(),
        };
        host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
    }

    /// The database URL in force: the configured one, or the embedded SQLite default.
    pub fn database_url(&self) -> String {
        match &self.database_url {
            Some(url) => url.clone(),
            None => format!("sqlite://{}", self.data_dir.join("keygate.db").display()),
        }
    }

    /// `public_url`, checked: an absolute `http` or `https` URL without user, query or
    /// fragment, and without its trailing `/`. `None` when it is not set.
    pub fn public_url(&self) -> Result<Option<String>, ConfigError> {
        let Some(raw) = self.public_url.as_deref().map(str::trim).filter(|u| !u.is_empty()) else {
            return Ok(None);
        };
        // A password in it stays out of the message.
        let shown = DatabaseUrl::from(raw);
        let invalid = |why: &str| ConfigError::PublicUrl(format!("{shown:?} {why}"));
        let url = url::Url::parse(raw).map_err(|e| invalid(&format!("is not a URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") || !url.has_host() {
            return Err(invalid("must be an absolute http:// or https:// URL"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(invalid("must not carry a user or a password"));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(invalid("must not have a query or a fragment"));
        }
        Ok(Some(url.as_str().trim_end_matches('/').to_owned()))
    }

    /// Whether the database is the embedded default inside `data_dir`.
    pub fn uses_embedded_database(&self) -> bool {
        self.database_url.is_none()
    }
}

/// A list from TOML, or a comma-separated string from the environment. The `config` crate
/// only splits environment values into lists with `try_parsing`, which would also turn
/// every other value that looks like a number or a boolean into one.
fn string_or_list<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: From<String>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum StringOrList {
        String(String),
        List(Vec<String>),
    }
    let items = match StringOrList::deserialize(deserializer)? {
        StringOrList::String(text) => text.split(',').map(str::to_owned).collect(),
        StringOrList::List(items) => items,
    };
    Ok(items
        .into_iter()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .map(T::from)
        .collect())
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;

    #[test]
    fn debug_hides_secrets() {
        let settings = Settings {
            database_url: Some("postgres://u:hunter2@db/x".into()),
            master_key: Some("bWFzdGVy".into()),
            previous_master_keys: vec!["b2xkIGtleQ".into()],
            root_key: Some("kgr_secret_root".into()),
            ..Settings::default()
        };
        let shown = format!("{settings:?}");
        for secret in ["hunter2", "bWFzdGVy", "b2xkIGtleQ", "kgr_secret_root"] {
            assert!(!shown.contains(secret), "{shown}");
        }
    }

    #[test]
    fn trusted_proxies_come_as_a_list_from_toml_or_comma_separated_from_the_environment() {
        let env = |value: &str| {
            let vars =
                config::Map::from([("KEYGATE_TRUSTED_PROXIES".to_owned(), value.to_owned())]);
            Settings::load_from(None, Some(vars)).unwrap().trusted_proxies
        };
        assert_eq!(env("10.0.0.0/8, 127.0.0.1,,fd00::/8"), ["10.0.0.0/8", "127.0.0.1", "fd00::/8"]);
        assert_eq!(env("192.0.2.1"), ["192.0.2.1"]);
        assert!(Settings::load_from(None, Some(config::Map::new()))
            .unwrap()
            .trusted_proxies
            .is_empty());

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("keygate.toml");
        std::fs::write(&file, "trusted_proxies = [\"10.0.0.0/8\", \"::1\"]\n").unwrap();
        let settings = Settings::load_from(Some(&file), Some(config::Map::new())).unwrap();
        assert_eq!(settings.trusted_proxies, ["10.0.0.0/8", "::1"]);

        // Numbers from the environment still reach numeric settings, and a root key made
        // of digits stays a string.
        let vars = config::Map::from([
            ("KEYGATE_AUTH_FAILURES_PER_MINUTE".to_owned(), "30".to_owned()),
            ("KEYGATE_CLIENT_REQUEST_TIMEOUT_MS".to_owned(), "2500".to_owned()),
            ("KEYGATE_ROOT_KEY".to_owned(), "1".repeat(40)),
        ]);
        let settings = Settings::load_from(None, Some(vars)).unwrap();
        assert_eq!(settings.auth_failures_per_minute, 30);
        assert_eq!(settings.client_request_timeout_ms, 2500);
        let root_key = settings.root_key.as_ref().map(|key| key.expose_secret());
        assert_eq!(root_key, Some("1".repeat(40).as_str()));
    }

    #[test]
    fn durations_are_numbers_in_their_unit_or_durations_with_a_unit() {
        let vars = config::Map::from([
            ("KEYGATE_JANITOR_INTERVAL".to_owned(), "15m".to_owned()),
            ("KEYGATE_CACHE_TTL".to_owned(), "90".to_owned()),
            ("KEYGATE_WEBHOOK_POLL_MS".to_owned(), "250ms".to_owned()),
            ("KEYGATE_WEBHOOK_TIMEOUT_MS".to_owned(), "3000".to_owned()),
            ("KEYGATE_CONSOLE_SESSION_MINUTES".to_owned(), "2h".to_owned()),
        ]);
        let settings = Settings::load_from(None, Some(vars)).unwrap();
        assert_eq!(settings.janitor_interval, 900);
        assert_eq!(settings.cache_ttl, 90);
        assert_eq!(settings.webhook_poll_ms, 250);
        assert_eq!(settings.webhook_timeout_ms, 3000);
        assert_eq!(settings.console_session_minutes, 120);

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("keygate.toml");
        std::fs::write(
            &file,
            "jwks_max_age = \"5m\"\nclient_request_timeout_ms = \"2s\"\n\
             database_busy_timeout_ms = 750\naudit_retention_days = \"30d\"\n",
        )
        .unwrap();
        let settings = Settings::load_from(Some(&file), Some(config::Map::new())).unwrap();
        assert_eq!(settings.jwks_max_age, 300);
        assert_eq!(settings.client_request_timeout_ms, 2000);
        assert_eq!(settings.database_busy_timeout_ms, 750);
        assert_eq!(settings.audit_retention_days, 30);
        // The defaults are unchanged.
        assert_eq!(settings.janitor_interval, 300);
        assert_eq!(settings.webhook_retry_ms, 1000);

        let bad = |key: &str, value: &str| {
            let vars = config::Map::from([(key.to_owned(), value.to_owned())]);
            Settings::load_from(None, Some(vars)).unwrap_err().to_string()
        };
        let err = bad("KEYGATE_JANITOR_INTERVAL", "15 parsecs");
        assert!(err.contains("\"15 parsecs\" is neither a number of seconds"), "{err}");
        assert!(err.contains("janitor_interval"), "the message names the setting: {err}");
        let err = bad("KEYGATE_CACHE_TTL", "1500ms");
        assert!(err.contains("not a whole number of seconds"), "{err}");
    }

    #[test]
    fn the_default_database_is_sqlite_in_the_data_dir() {
        let settings = Settings::default();
        assert_eq!(settings.database_url(), "sqlite://./keygate-data/keygate.db");
        assert_eq!(settings.listen, "127.0.0.1:8080");
    }

    #[test]
    fn the_console_cookie_is_secure_unless_the_gateway_listens_on_loopback() {
        let on = |listen: &str| Settings { listen: listen.into(), ..Settings::default() };
        for loopback in ["127.0.0.1:8080", "[::1]:8080", "localhost:8080", "127.0.0.2:1"] {
            assert!(on(loopback).listens_on_loopback(), "{loopback}");
        }
        for exposed in ["0.0.0.0:8080", "[::]:8080", "10.1.2.3:443", "auth.example.com:443"] {
            assert!(!on(exposed).listens_on_loopback(), "{exposed}");
        }
    }

    #[test]
    fn public_url_is_an_absolute_http_url_without_its_trailing_slash() {
        let check = |value: &str| {
            Settings { public_url: Some(value.into()), ..Settings::default() }.public_url()
        };
        assert_eq!(
            check("https://auth.example.com/").unwrap().as_deref(),
            Some("https://auth.example.com")
        );
        assert_eq!(
            check("https://example.com/keygate/").unwrap().as_deref(),
            Some("https://example.com/keygate")
        );
        assert_eq!(
            check("http://127.0.0.1:8080").unwrap().as_deref(),
            Some("http://127.0.0.1:8080")
        );
        assert_eq!(check("  ").unwrap(), None);
        assert_eq!(Settings::default().public_url().unwrap(), None);
        for bad in [
            "auth.example.com",
            "ftp://example.com",
            "https://u:p@example.com",
            "https://example.com/?a=1",
            "https://example.com/#x",
            "file:///tmp",
        ] {
            let err = check(bad).unwrap_err().to_string();
            assert!(err.starts_with("public_url: "), "{bad}: {err}");
        }
        let err = check("https://user:hunter2@example.com").unwrap_err().to_string();
        assert!(!err.contains("hunter2"), "the password stays out of the message: {err}");
        let vars = config::Map::from([(
            "KEYGATE_PUBLIC_URL".to_owned(),
            "mailto:x@example.com".to_owned(),
        )]);
        assert!(
            Settings::load_from(None, Some(vars)).is_err(),
            "an invalid public_url refuses to load"
        );
    }
}
