//! Compatibility routes: extra refresh endpoints declared in the configuration, each
//! speaking another system's refresh contract (its path, where the token comes from, its
//! response and its error envelope). See `docs/compatibility.md`.
//!
//! A route is a front for the same renew as `/app/{id}/renew`: it inherits the app's
//! rotation, grace and reuse rules, so a token rotated through one route and replayed on
//! another is reuse. The routes are served by `crate::http::compat`; this module only reads
//! and checks their configuration, and imports nothing from the layers above it.

use std::sync::Arc;

use actix_web::dev::ResourceDef;
use actix_web::http::header::HeaderName;
use actix_web::http::{Method, StatusCode};
use keygate_sessions::RenewMode;
use keygate_tenants::AppId;
use serde::Deserialize;

mod template;
mod value;

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
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self { key: key.into(), message: message.into() }
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
    RateLimited,
    Unavailable,
    Internal,
}

impl ErrorKind {
    /// In declaration order, so that `kind as usize` is the place of `kind`.
    pub const ALL: [Self; 9] = [
        Self::MissingToken,
        Self::InvalidToken,
        Self::ReuseDetected,
        Self::MissingBearer,
        Self::InvalidBearer,
        Self::BadRequest,
        Self::RateLimited,
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
            Self::RateLimited => "rate_limited",
            Self::Unavailable => "unavailable",
            Self::Internal => "internal",
        }
    }

    fn default_status(self) -> StatusCode {
        match self {
            Self::MissingToken | Self::BadRequest => StatusCode::BAD_REQUEST,
            Self::InvalidToken | Self::ReuseDetected => StatusCode::UNAUTHORIZED,
            Self::MissingBearer | Self::InvalidBearer => StatusCode::UNAUTHORIZED,
            Self::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
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
            Self::RateLimited => "too many requests for this app, retry later",
            Self::Unavailable => "service unavailable, retry later",
            Self::Internal => "internal error",
        }
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
        &self.errors[kind as usize]
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

const METHODS: [Method; 5] =
    [Method::GET, Method::POST, Method::PUT, Method::PATCH, Method::DELETE];

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
                format!("{key}.path"),
                format!("\"{}\" is already the path of compat.routes[{j}]", route.path),
            ));
        }
        routes.push(Arc::new(route));
    }
    Ok(routes)
}

/// A `[[compat.routes]]` table as written; [`compile_route`] checks what it means.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RouteConfig {
    name: Option<String>,
    method: Option<String>,
    path: String,
    token: String,
    #[serde(default)]
    require_bearer: bool,
    app: String,
    rotate: Option<bool>,
    response: ConfigValue,
    #[serde(default)]
    errors: ErrorsConfig,
}

/// `[compat.routes.errors]`: the envelope of every error, and each kind's answer.
#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "a table")]
struct ErrorsConfig {
    body: Option<ConfigValue>,
    missing_token: ErrorConfig,
    invalid_token: ErrorConfig,
    reuse_detected: ErrorConfig,
    missing_bearer: ErrorConfig,
    invalid_bearer: ErrorConfig,
    bad_request: ErrorConfig,
    rate_limited: ErrorConfig,
    unavailable: ErrorConfig,
    internal: ErrorConfig,
}

impl ErrorsConfig {
    fn of(&self, kind: ErrorKind) -> &ErrorConfig {
        match kind {
            ErrorKind::MissingToken => &self.missing_token,
            ErrorKind::InvalidToken => &self.invalid_token,
            ErrorKind::ReuseDetected => &self.reuse_detected,
            ErrorKind::MissingBearer => &self.missing_bearer,
            ErrorKind::InvalidBearer => &self.invalid_bearer,
            ErrorKind::BadRequest => &self.bad_request,
            ErrorKind::RateLimited => &self.rate_limited,
            ErrorKind::Unavailable => &self.unavailable,
            ErrorKind::Internal => &self.internal,
        }
    }
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct ErrorConfig {
    status: Option<i64>,
    code: Option<String>,
    message: Option<String>,
    body: Option<ConfigValue>,
}

fn compile_route(key: &str, value: &ConfigValue) -> Result<CompatRoute, ConfigError> {
    let route: RouteConfig = value.clone().read(key)?;
    let at = |field: &str| format!("{key}.{field}");
    let name = route.name.unwrap_or_else(|| key.to_owned());
    if name.trim().is_empty() || name.len() > 64 {
        return Err(ConfigError::new(at("name"), "must be 1 to 64 characters"));
    }
    let method = method(&at("method"), route.method.as_deref().unwrap_or("POST"))?;
    let path = path(&at("path"), &route.path)?;
    let token = token_source(&at("token"), &route.token)?;
    if matches!(token, TokenSource::Body(_)) && method == Method::GET {
        return Err(ConfigError::new(
            at("token"),
            "a GET route has no body: take the token from a header (\"header:NAME\")",
        ));
    }
    if route.require_bearer
        && matches!(&token, TokenSource::Header(h) if h == actix_web::http::header::AUTHORIZATION)
    {
        return Err(ConfigError::new(
            at("token"),
            "the Authorization header carries the bearer token when require_bearer is true",
        ));
    }
    let app = match route.app.as_str() {
        "kid" => AppSource::FromKid,
        id => AppSource::Fixed(id.parse().map_err(|_| {
            ConfigError::new(
                at("app"),
                format!("must be \"kid\" or an app id (a 26-character ULID), not \"{id}\""),
            )
        })?),
    };
    let rotate = route.rotate.unwrap_or(true);
    let response_key = at("response");
    let response = object(&response_key, &route.response, RESPONSE_VARS)?;
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
    Ok(CompatRoute {
        name,
        method,
        path,
        token,
        require_bearer: route.require_bearer,
        app,
        mode: if rotate { RenewMode::FollowApp } else { RenewMode::KeepRefreshToken },
        response,
        errors: error_specs(&at("errors"), &route.errors)?,
    })
}

fn method(key: &str, raw: &str) -> Result<Method, ConfigError> {
    METHODS.into_iter().find(|m| m.as_str().eq_ignore_ascii_case(raw)).ok_or_else(|| {
        let names: Vec<&str> = METHODS.iter().map(Method::as_str).collect();
        ConfigError::new(key, format!("must be one of {}, not \"{raw}\"", names.join(", ")))
    })
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
        _ => Err(ConfigError::new(
            key,
            format!("must be \"body:FIELD\" or \"header:NAME\", not \"{raw}\""),
        )),
    }
}

fn error_specs(key: &str, errors: &ErrorsConfig) -> Result<Vec<ErrorSpec>, ConfigError> {
    let body = match &errors.body {
        Some(body) => object(&format!("{key}.body"), body, ERROR_VARS)?,
        None => Template::Object(vec![
            ("error".into(), Template::Var("code")),
            ("message".into(), Template::Var("message")),
        ]),
    };
    ErrorKind::ALL
        .into_iter()
        .map(|kind| {
            let at = |field: &str| format!("{key}.{}.{field}", kind.as_str());
            let spec = errors.of(kind);
            let status = match spec.status {
                None => kind.default_status(),
                Some(n) => {
                    // Never a 4xx for a failure of ours, nor one that a client takes for a
                    // bad token where it should retry: clients would drop their token.
                    let lowest = match kind {
                        ErrorKind::Unavailable | ErrorKind::Internal => 500,
                        ErrorKind::RateLimited => 429,
                        _ => 400,
                    };
                    u16::try_from(n)
                        .ok()
                        .filter(|n| (lowest..=599).contains(n))
                        .and_then(|n| StatusCode::from_u16(n).ok())
                        .ok_or_else(|| {
                            ConfigError::new(at("status"), format!("must be from {lowest} to 599"))
                        })?
                }
            };
            Ok(ErrorSpec {
                status,
                code: spec.code.clone().unwrap_or_else(|| kind.as_str().to_owned()),
                message: spec.message.clone().unwrap_or_else(|| kind.default_message().to_owned()),
                body: match &spec.body {
                    Some(own) => object(&at("body"), own, ERROR_VARS)?,
                    None => body.clone(),
                },
            })
        })
        .collect()
}

/// A template that must be a JSON object.
fn object(key: &str, value: &ConfigValue, vars: &[&'static str]) -> Result<Template, ConfigError> {
    let template = Template::compile(key, value, vars)?;
    if !matches!(template, Template::Object(_)) {
        return Err(ConfigError::new(key, "must be a table"));
    }
    Ok(template)
}

#[cfg(test)]
mod tests;
