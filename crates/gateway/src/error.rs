//! The error contract of the HTTP API: `{"error": CODE, "message": TEXT}`, with `errors[]`
//! naming each bad field on a validation failure.

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use keygate_keyring::{KeyringError, VerifyError};
use keygate_sessions::SessionError;
use keygate_tenants::{AuthError, FieldError, StoreError, TenantError};
use serde::Serialize;
use utoipa::ToSchema;

/// Seconds a client should wait before retrying a 503.
pub(crate) const RETRY_AFTER: &str = "1";

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    Invalid { message: String, errors: Vec<FieldError> },
    #[error("invalid refresh token")]
    InvalidGrant,
    #[error("invalid token")]
    InvalidToken,
    #[error("invalid app key or id")]
    InvalidClient,
    #[error("invalid root key")]
    InvalidRootKey,
    #[error("{0}")]
    NotFound(String),
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("request body exceeds {0} bytes")]
    PayloadTooLarge(usize),
    #[error("Content-Type must be application/json")]
    UnsupportedMediaType,
    /// Too many failed authentication attempts from this client address; retry after this
    /// many seconds.
    #[error("too many failed authentication attempts from this address; retry in {0} s")]
    TooManyRequests(u64),
    #[error("service unavailable, retry later")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// The body of every error answer.
#[derive(Serialize, ToSchema)]
#[schema(as = ErrorBody)]
pub(crate) struct Body<'a> {
    #[schema(value_type = ErrorCode)]
    error: &'static str,
    /// For people, not for programs: match on `error`.
    message: String,
    /// One entry per bad field; only on a validation failure (400 `invalid_request`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Vec<FieldEntry>, min_items = 1)]
    errors: Option<Vec<FieldEntry<'a>>>,
}

/// One bad field of a request.
#[derive(Serialize, ToSchema)]
#[schema(as = FieldErrorEntry)]
pub(crate) struct FieldEntry<'a> {
    /// The field, named as in the JSON body (`token_expire`), or `body` for the body as a
    /// whole.
    error_field: &'a str,
    error_message: &'a str,
}

/// The code of an error, for programs to match on.
#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
#[allow(dead_code)] // documentation only
pub(crate) enum ErrorCode {
    /// 400: validation, malformed JSON.
    InvalidRequest,
    /// 401: a refresh token (`/renew`) or token (`/logout`) that is not accepted.
    InvalidGrant,
    /// 403: bad app key, unknown app, malformed app id; bad root key.
    InvalidClient,
    /// 404: unknown endpoint; unknown app or key.
    NotFound,
    /// 405: the path exists, the method does not.
    MethodNotAllowed,
    /// 413: a body over 16 KiB.
    PayloadTooLarge,
    /// 415: a body without `Content-Type: application/json`.
    UnsupportedMediaType,
    /// 429: too many failed authentications from this address; see `Retry-After`.
    RateLimited,
    /// 503: the database is down or overloaded; see `Retry-After`. Nothing was changed.
    Unavailable,
    /// 500: an opaque failure; the cause is in the gateway's log.
    Internal,
}

impl ApiError {
    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        Self::Invalid {
            message: "invalid request".into(),
            errors: vec![FieldError::new(field, message)],
        }
    }

    pub fn fields(errors: Vec<FieldError>) -> Self {
        Self::Invalid { message: "invalid request".into(), errors }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Self::Invalid { .. } => "invalid_request",
            Self::InvalidGrant | Self::InvalidToken => "invalid_grant",
            Self::InvalidClient | Self::InvalidRootKey => "invalid_client",
            Self::NotFound(_) => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::PayloadTooLarge(_) => "payload_too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::TooManyRequests(_) => "rate_limited",
            Self::Unavailable(_) => "unavailable",
            Self::Internal(_) => "internal",
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::Invalid { .. } => StatusCode::BAD_REQUEST,
            Self::InvalidGrant | Self::InvalidToken => StatusCode::UNAUTHORIZED,
            Self::InvalidClient | Self::InvalidRootKey => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        match self {
            Self::Internal(cause) => {
                tracing::error!(error = %chain(cause.as_ref()), "internal error")
            }
            Self::Unavailable(cause) => {
                tracing::warn!(error = %chain(cause.as_ref()), "answering 503")
            }
            _ => {}
        }
        let errors = match self {
            Self::Invalid { errors, .. } => Some(
                errors
                    .iter()
                    .map(|e| FieldEntry { error_field: &e.field, error_message: &e.message })
                    .collect(),
            ),
            _ => None,
        };
        let mut response = HttpResponse::build(self.status_code());
        match self {
            Self::Unavailable(_) => {
                response.insert_header((header::RETRY_AFTER, RETRY_AFTER));
            }
            Self::TooManyRequests(secs) => {
                response.insert_header((header::RETRY_AFTER, (*secs).max(1).to_string()));
            }
            _ => {}
        }
        response.json(Body { error: self.code(), message: self.to_string(), errors })
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

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::NotFound => Self::NotFound("not found".into()),
            // A conflict that survived its retries: concurrent writers, so try again.
            StoreError::Unavailable(_) | StoreError::Conflict(_) => {
                Self::Unavailable(Box::new(err))
            }
            other => Self::Internal(Box::new(other)),
        }
    }
}

impl From<TenantError> for ApiError {
    fn from(err: TenantError) -> Self {
        match err {
            TenantError::Invalid(errors) => Self::fields(errors),
            TenantError::NotFound => Self::NotFound("app not found".into()),
            TenantError::Store(e) => e.into(),
            other @ TenantError::Hash(_) => Self::Internal(Box::new(other)),
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(err: AuthError) -> Self {
        match err {
            AuthError::Denied => Self::InvalidClient,
            AuthError::NotAdmitted => Self::TooManyRequests(1),
            AuthError::Store(e) => e.into(),
        }
    }
}

impl From<KeyringError> for ApiError {
    fn from(err: KeyringError) -> Self {
        match err {
            KeyringError::KeyNotFound(id) => Self::NotFound(format!("key {id} not found")),
            KeyringError::AlreadyRevoked(id) => {
                Self::invalid("key_id", format!("key {id} is already revoked"))
            }
            KeyringError::Store(e) => e.into(),
            other => Self::Internal(Box::new(other)),
        }
    }
}

impl From<VerifyError> for ApiError {
    fn from(err: VerifyError) -> Self {
        match err {
            VerifyError::Keyring(e) => e.into(),
            _ => Self::InvalidGrant,
        }
    }
}

impl From<SessionError> for ApiError {
    /// A rejected token is `invalid_grant`; callers other than `/renew` turn it into
    /// [`ApiError::InvalidToken`] for a fitting message.
    fn from(err: SessionError) -> Self {
        match err {
            SessionError::Invalid(errors) => Self::fields(errors),
            SessionError::Rejected(_) => Self::InvalidGrant,
            SessionError::Store(e) => e.into(),
            SessionError::Keyring(e) => e.into(),
            other @ SessionError::Corrupt(_) => Self::Internal(Box::new(other)),
        }
    }
}

/// A tenant error as one line for the CLI.
pub fn describe_tenant_error(err: &TenantError) -> String {
    match err {
        TenantError::Invalid(errors) => {
            errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
        }
        other => chain(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One error of each kind; the match fails to compile when a kind is added, so that it is
    /// added here too.
    fn one_of_each() -> Vec<ApiError> {
        let all = vec![
            ApiError::invalid("field", "is wrong"),
            ApiError::InvalidGrant,
            ApiError::InvalidToken,
            ApiError::InvalidClient,
            ApiError::InvalidRootKey,
            ApiError::NotFound("gone".into()),
            ApiError::MethodNotAllowed,
            ApiError::PayloadTooLarge(1),
            ApiError::UnsupportedMediaType,
            ApiError::TooManyRequests(1),
            ApiError::Unavailable("down".into()),
            ApiError::Internal("broken".into()),
        ];
        for e in &all {
            match e {
                ApiError::Invalid { .. }
                | ApiError::InvalidGrant
                | ApiError::InvalidToken
                | ApiError::InvalidClient
                | ApiError::InvalidRootKey
                | ApiError::NotFound(_)
                | ApiError::MethodNotAllowed
                | ApiError::PayloadTooLarge(_)
                | ApiError::UnsupportedMediaType
                | ApiError::TooManyRequests(_)
                | ApiError::Unavailable(_)
                | ApiError::Internal(_) => {}
            }
        }
        all
    }

    #[test]
    fn every_error_code_is_in_the_openapi_schema() {
        let schema = serde_json::to_value(<ErrorCode as utoipa::PartialSchema>::schema()).unwrap();
        let documented: Vec<&str> =
            schema["enum"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        let mut used: Vec<&str> = one_of_each().iter().map(ApiError::code).collect();
        used.sort_unstable();
        used.dedup();
        let mut sorted = documented.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, used, "ErrorCode lists exactly the codes ApiError answers");
    }
}
