//! Compatibility routes: extra refresh endpoints declared in the configuration, each
//! speaking another system's refresh contract (its path, where the token comes from, its
//! response and its error envelope). See `docs/compatibility.md`.
//!
//! A route is a front for the same renew as `/app/{id}/renew`: it inherits the app's
//! rotation, grace and reuse rules, so a token rotated through one route and replayed on
//! another is reuse.

use std::sync::Arc;

use actix_web::dev::ResourceDef;
use actix_web::http::header::HeaderName;
use actix_web::http::{Method, StatusCode};
use keygate_sessions::RenewMode;
use keygate_tenants::AppId;
use serde::Deserialize;

mod handler;
mod template;
mod value;

pub use handler::configure;
pub use template::Template;
pub use value::ConfigValue;

/// The `[compat]` section: `[[compat.routes]]` tables, checked by [`compile`].
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct CompatSettings {
    pub routes: Vec<ConfigValue>,
}

/// A mistake in the route configuration, with the key it is about.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(key: &str, message: impl Into<String>) -> Self {
        Self { key: key.to_owned(), message: message.into() }
    }
}

/// Where a route finds the refresh token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// A string member of a JSON object body.
    Body(String),
    /// A request header.
    Header(HeaderName),
}

impl TokenSource {
    /// The field or header name, as `$target` in error bodies.
    pub fn name(&self) -> &str {
        match self {
            Self::Body(field) => field,
            Self::Header(name) => name.as_str(),
        }
    }
}

/// How a route finds the app of a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppSource {
    /// Always this app.
    Fixed(AppId),
    /// The app owning the key named by the refresh token's `kid` (key ids are unique
    /// across apps).
    FromKid,
}

/// The errors a route can answer, each with its status and body in the route's envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    MissingToken,
    InvalidToken,
    ReuseDetected,
    MissingBearer,
    InvalidBearer,
    BadRequest,
    Unavailable,
    Internal,
}

impl ErrorKind {
    pub const ALL: [Self; 8] = [
        Self::MissingToken,
        Self::InvalidToken,
        Self::ReuseDetected,
        Self::MissingBearer,
        Self::InvalidBearer,
        Self::BadRequest,
        Self::Unavailable,
        Self::Internal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::MissingToken => "missing_token",
            Self::InvalidToken => "invalid_token",
            Self::ReuseDetected => "reuse_detected",
            Self::MissingBearer => "missing_bearer",
            Self::InvalidBearer => "invalid_bearer",
            Self::BadRequest => "bad_request",
            Self::Unavailable => "unavailable",
            Self::Internal => "internal",
        }
    }

    fn default_status(self) -> u16 {
        match self {
            Self::MissingToken | Self::BadRequest => 400,
            Self::InvalidToken | Self::ReuseDetected | Self::MissingBearer => 401,
            Self::InvalidBearer => 401,
            Self::Unavailable => 503,
            Self::Internal => 500,
        }
    }

    fn default_message(self) -> &'static str {
        match self {
            Self::MissingToken => "the refresh token is missing",
            Self::InvalidToken => "invalid or expired refresh token",
            Self::ReuseDetected => "refresh token reuse detected",
            Self::MissingBearer => "a bearer auth token is required",
            Self::InvalidBearer => "the bearer token does not belong to this session",
            Self::BadRequest => "the request could not be read",
            Self::Unavailable => "service unavailable, retry later",
            Self::Internal => "internal error",
        }
    }

    fn index(self) -> usize {
        Self::ALL.iter().position(|k| *k == self).unwrap_or(0)
    }
}

/// One error answer of a route.
#[derive(Debug, Clone, PartialEq)]
pub struct ErrorSpec {
    pub status: StatusCode,
    pub code: String,
    pub message: String,
    pub body: Template,
}

/// A checked compatibility route.
#[derive(Debug, Clone, PartialEq)]
pub struct CompatRoute {
    /// For logs: the `name` given, or the route's key.
    pub name: String,
    pub method: Method,
    pub path: String,
    pub token: TokenSource,
    pub require_bearer: bool,
    pub app: AppSource,
    pub mode: RenewMode,
    pub response: Template,
    errors: Vec<ErrorSpec>,
}

impl CompatRoute {
    pub fn error(&self, kind: ErrorKind) -> &ErrorSpec {
        &self.errors[kind.index()]
    }
}

/// Placeholders of a success response.
pub const RESPONSE_VARS: &[&str] = &[
    "auth_token",
    "refresh_token",
    "token_type",
    "expires_in",
    "refresh_expires_in",
    "session_id",
    "key_id",
];

/// Placeholders of an error body.
pub const ERROR_VARS: &[&str] = &["status", "code", "message", "target"];

const ROUTE_KEYS: &[&str] =
    &["name", "method", "path", "token", "require_bearer", "app", "rotate", "response", "errors"];
const METHODS: &[&str] = &["GET", "POST", "PUT", "PATCH", "DELETE"];
const ERROR_SPEC_KEYS: &[&str] = &["status", "code", "message", "body"];

/// Paths of the built-in API outside the reserved `/app/` and `/root/` namespaces.
const BUILTIN_PATHS: &[&str] = &["/healthz", "/ping", "/health", "/readyz"];
/// Namespaces that belong to the built-in API, now and later.
const RESERVED_NAMESPACES: &[&str] = &["app", "root", "metrics", "openapi.json", ".well-known"];

/// Checks every `[[compat.routes]]` table. The first mistake is returned, naming its key.
pub fn compile(settings: &CompatSettings) -> Result<Vec<Arc<CompatRoute>>, ConfigError> {
    let mut routes: Vec<Arc<CompatRoute>> = Vec::new();
    for (i, value) in settings.routes.iter().enumerate() {
        let key = format!("compat.routes[{i}]");
        let route = compile_route(&key, value)?;
        if let Some(j) = routes.iter().position(|r| r.path == route.path) {
            return Err(ConfigError::new(
                &format!("{key}.path"),
                format!("\"{}\" is already the path of compat.routes[{j}]", route.path),
            ));
        }
        routes.push(Arc::new(route));
    }
    Ok(routes)
}

/// A route table's entries, by name.
struct Table<'a> {
    key: &'a str,
    entries: &'a [(String, ConfigValue)],
}

impl<'a> Table<'a> {
    fn new(key: &'a str, value: &'a ConfigValue, allowed: &[&str]) -> Result<Self, ConfigError> {
        let ConfigValue::Table(entries) = value else {
            return Err(ConfigError::new(key, format!("must be a table, not {}", value.kind())));
        };
        if let Some((name, _)) = entries.iter().find(|(name, _)| !allowed.contains(&name.as_str()))
        {
            return Err(ConfigError::new(
                &format!("{key}.{name}"),
                format!("unknown key; the keys are {}", allowed.join(", ")),
            ));
        }
        Ok(Self { key, entries })
    }

    fn key_of(&self, name: &str) -> String {
        format!("{}.{name}", self.key)
    }

    fn get(&self, name: &str) -> Option<&'a ConfigValue> {
        self.entries.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }

    fn string(&self, name: &str) -> Result<Option<&'a str>, ConfigError> {
        match self.get(name) {
            None => Ok(None),
            Some(ConfigValue::String(s)) => Ok(Some(s)),
            Some(other) => Err(ConfigError::new(
                &self.key_of(name),
                format!("must be a string, not {}", other.kind()),
            )),
        }
    }

    fn required_string(&self, name: &str) -> Result<&'a str, ConfigError> {
        self.string(name)?.ok_or_else(|| ConfigError::new(&self.key_of(name), "is required"))
    }

    fn boolean(&self, name: &str, default: bool) -> Result<bool, ConfigError> {
        match self.get(name) {
            None => Ok(default),
            Some(ConfigValue::Bool(b)) => Ok(*b),
            Some(other) => Err(ConfigError::new(
                &self.key_of(name),
                format!("must be true or false, not {}", other.kind()),
            )),
        }
    }
}

fn compile_route(key: &str, value: &ConfigValue) -> Result<CompatRoute, ConfigError> {
    let table = Table::new(key, value, ROUTE_KEYS)?;
    let name = match table.string("name")? {
        Some(name) if name.trim().is_empty() || name.len() > 64 => {
            return Err(ConfigError::new(&table.key_of("name"), "must be 1 to 64 characters"))
        }
        Some(name) => name.to_owned(),
        None => key.to_owned(),
    };
    let method = method(&table)?;
    let path = path(&table.key_of("path"), table.required_string("path")?)?;
    let require_bearer = table.boolean("require_bearer", false)?;
    let token = token_source(&table.key_of("token"), table.required_string("token")?)?;
    if matches!(token, TokenSource::Body(_)) && method == Method::GET {
        return Err(ConfigError::new(
            &table.key_of("token"),
            "a GET route has no body: take the token from a header (\"header:NAME\")",
        ));
    }
    if require_bearer
        && matches!(&token, TokenSource::Header(h) if h == actix_web::http::header::AUTHORIZATION)
    {
        return Err(ConfigError::new(
            &table.key_of("token"),
            "the Authorization header carries the bearer token when require_bearer is true",
        ));
    }
    let app = match table.required_string("app")? {
        "kid" => AppSource::FromKid,
        id => AppSource::Fixed(id.parse().map_err(|_| {
            ConfigError::new(
                &table.key_of("app"),
                format!("must be \"kid\" or an app id (a 26-character ULID), not \"{id}\""),
            )
        })?),
    };
    let rotate = table.boolean("rotate", true)?;
    let response_key = table.key_of("response");
    let response = Template::compile(
        &response_key,
        table.get("response").ok_or_else(|| ConfigError::new(&response_key, "is required"))?,
        RESPONSE_VARS,
    )?;
    if !matches!(response, Template::Object(_)) {
        return Err(ConfigError::new(&response_key, "must be a table"));
    }
    if !response.uses("auth_token") {
        return Err(ConfigError::new(&response_key, "must contain \"$auth_token\""));
    }
    if rotate && !response.uses("refresh_token") {
        return Err(ConfigError::new(
            &response_key,
            "must contain \"$refresh_token\": the route rotates the refresh token, and a \
             client that never receives the new one would replay the old one, which is reuse \
             (set rotate = false for a route that keeps the refresh token)",
        ));
    }
    let errors = error_specs(&table.key_of("errors"), table.get("errors"))?;
    Ok(CompatRoute {
        name,
        method,
        path,
        token,
        require_bearer,
        app,
        mode: if rotate { RenewMode::FollowApp } else { RenewMode::KeepRefreshToken },
        response,
        errors,
    })
}

fn method(table: &Table<'_>) -> Result<Method, ConfigError> {
    let raw = table.string("method")?.unwrap_or("POST");
    let upper = raw.to_ascii_uppercase();
    if !METHODS.contains(&upper.as_str()) {
        return Err(ConfigError::new(
            &table.key_of("method"),
            format!("must be one of {}, not \"{raw}\"", METHODS.join(", ")),
        ));
    }
    Method::from_bytes(upper.as_bytes())
        .map_err(|_| ConfigError::new(&table.key_of("method"), "is not an HTTP method"))
}

fn path(key: &str, path: &str) -> Result<String, ConfigError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || "-._~!$&'()*+,;=:@/".contains(c);
    if !path.starts_with('/') || path.len() > 256 {
        return Err(ConfigError::new(key, "must start with / and be at most 256 bytes"));
    }
    if let Some(c) = path.chars().find(|c| !allowed(*c)) {
        return Err(ConfigError::new(
            key,
            format!(
                "must be a literal path; {c:?} is not allowed (no parameters, query or spaces)"
            ),
        ));
    }
    if path.len() > 1 && path[1..].split('/').any(|s| s.is_empty() || s == "." || s == "..") {
        return Err(ConfigError::new(key, "must not contain empty, `.` or `..` segments"));
    }
    let first = path[1..].split('/').next().unwrap_or("");
    if RESERVED_NAMESPACES.contains(&first) || path == "/" {
        return Err(ConfigError::new(
            key,
            format!("\"{path}\" is inside the built-in API (/{first}/…); choose another path"),
        ));
    }
    if BUILTIN_PATHS.iter().any(|builtin| ResourceDef::new(*builtin).is_match(path)) {
        return Err(ConfigError::new(key, format!("\"{path}\" is a built-in endpoint")));
    }
    Ok(path.to_owned())
}

fn token_source(key: &str, raw: &str) -> Result<TokenSource, ConfigError> {
    let expected = || {
        ConfigError::new(key, format!("must be \"body:FIELD\" or \"header:NAME\", not \"{raw}\""))
    };
    match raw.split_once(':') {
        Some(("body", field)) => {
            if field.is_empty() || field.len() > 64 || field.chars().any(char::is_control) {
                return Err(ConfigError::new(key, "the body field must be 1 to 64 characters"));
            }
            Ok(TokenSource::Body(field.to_owned()))
        }
        Some(("header", name)) => HeaderName::from_bytes(name.as_bytes())
            .map(TokenSource::Header)
            .map_err(|_| ConfigError::new(key, format!("\"{name}\" is not a header name"))),
        _ => Err(expected()),
    }
}

fn error_specs(key: &str, value: Option<&ConfigValue>) -> Result<Vec<ErrorSpec>, ConfigError> {
    let default_body = ConfigValue::Table(vec![
        ("error".into(), ConfigValue::String("$code".into())),
        ("message".into(), ConfigValue::String("$message".into())),
    ]);
    let empty = ConfigValue::Table(Vec::new());
    let mut allowed: Vec<&str> = vec!["body"];
    allowed.extend(ErrorKind::ALL.iter().map(|k| k.as_str()));
    let table = Table::new(key, value.unwrap_or(&empty), &allowed)?;
    let body_key = table.key_of("body");
    let body = error_body(&body_key, table.get("body").unwrap_or(&default_body))?;
    ErrorKind::ALL
        .iter()
        .map(|kind| {
            let spec_key = table.key_of(kind.as_str());
            let spec =
                Table::new(&spec_key, table.get(kind.as_str()).unwrap_or(&empty), ERROR_SPEC_KEYS)?;
            let status = match spec.get("status") {
                None => kind.default_status(),
                Some(ConfigValue::Integer(n)) => {
                    let lowest = match kind {
                        // Never a 4xx for a failure of ours: clients would drop their token.
                        ErrorKind::Unavailable | ErrorKind::Internal => 500,
                        _ => 400,
                    };
                    u16::try_from(*n).ok().filter(|n| (lowest..=599).contains(n)).ok_or_else(
                        || {
                            ConfigError::new(
                                &spec.key_of("status"),
                                format!("must be from {lowest} to 599"),
                            )
                        },
                    )?
                }
                Some(other) => {
                    return Err(ConfigError::new(
                        &spec.key_of("status"),
                        format!("must be an integer, not {}", other.kind()),
                    ))
                }
            };
            Ok(ErrorSpec {
                status: StatusCode::from_u16(status)
                    .map_err(|_| ConfigError::new(&spec.key_of("status"), "is not a status"))?,
                code: spec.string("code")?.unwrap_or(kind.as_str()).to_owned(),
                message: spec.string("message")?.unwrap_or(kind.default_message()).to_owned(),
                body: match spec.get("body") {
                    Some(own) => error_body(&spec.key_of("body"), own)?,
                    None => body.clone(),
                },
            })
        })
        .collect()
}

fn error_body(key: &str, value: &ConfigValue) -> Result<Template, ConfigError> {
    let body = Template::compile(key, value, ERROR_VARS)?;
    if !matches!(body, Template::Object(_)) {
        return Err(ConfigError::new(key, "must be a table"));
    }
    Ok(body)
}

#[cfg(test)]
mod tests;
