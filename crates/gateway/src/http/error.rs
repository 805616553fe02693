//! The error contract of the HTTP API: `{"error": CODE, "message": TEXT}`, with `errors[]`
//! naming each bad field on a validation failure.

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, HttpResponseBuilder, ResponseError};
use keygate_sessions::SessionError;
use keygate_tenants::{AuthError, FieldError, StoreError};
use serde::Serialize;
use utoipa::ToSchema;

use crate::admission::Refusal;
pub use crate::usecases::chain;
use crate::usecases::{Cause, UseCaseError};

/// Seconds a client should wait before retrying a 503.
pub(crate) const RETRY_AFTER: &str = "1";

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("invalid request")]
    Invalid(Vec<FieldError>),
    #[error("invalid refresh token")]
    InvalidGrant,
    #[error("invalid token")]
    InvalidToken,
    /// `/renew` of a DPoP-bound session without a valid proof by its key; why.
    #[error("invalid DPoP proof: {0}")]
    InvalidDpopProof(String),
    /// `/renew` with a DPoP proof that lacks the app's nonce; the nonce to use, sent in
    /// `DPoP-Nonce`.
    #[error("use_dpop_nonce: the DPoP proof must carry the nonce of the DPoP-Nonce header")]
    UseDpopNonce(String),
    #[error("invalid app key or id")]
    InvalidClient,
    #[error("invalid root key")]
    InvalidRootKey,
    /// A console request without a live console session.
    #[error("not signed in to the console, or the console session ended: sign in again")]
    ConsoleSignIn,
    /// A console request that changes something, without its session's CSRF token.
    #[error("missing or wrong X-CSRF-Token for this console session")]
    Csrf,
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
    /// The app is over its request quota (`requests_per_second`); retry after this many
    /// seconds. Nothing was changed.
    #[error("this app is over its request quota; retry in {0} s")]
    QuotaExceeded(u64),
    /// The gateway is saturated and the request's turn did not come in time (fair
    /// admission shed it). Nothing was changed.
    #[error("the gateway is saturated; retry later")]
    Overloaded,
    #[error("service unavailable, retry later")]
    Unavailable(#[source] Cause),
    #[error("internal error")]
    Internal(#[source] Cause),
}

/// The body of every error answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody<'a> {
    error: ErrorCode,
    /// For people, not for programs: match on `error`.
    message: String,
    /// One entry per bad field; only on a validation failure (400 `invalid_request`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Vec<FieldEntry>, min_items = 1)]
    errors: Option<Vec<FieldEntry<'a>>>,
}

/// One bad field of a request.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = FieldErrorEntry)]
pub struct FieldEntry<'a> {
    /// The field, named as in the JSON body (`token_expire`), or `body` for the body as a
    /// whole.
    error_field: &'a str,
    error_message: &'a str,
}

impl<'a> From<&'a FieldError> for FieldEntry<'a> {
    fn from(e: &'a FieldError) -> Self {
        Self { error_field: &e.field, error_message: &e.message }
    }
}

/// The code of an error, for programs to match on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
// Each code has an HTTP status of its own, which is its discriminant.
#[repr(u16)]
pub enum ErrorCode {
    /// 400: validation, malformed JSON.
    InvalidRequest = 400,
    /// 401: a refresh token (`/renew`) or token (`/logout`) that is not accepted; at
    /// `/renew`, also a missing or bad DPoP proof for a bound session (with `DPoP-Nonce` when
    /// the proof must carry that nonce).
    InvalidGrant = 401,
    /// 403: bad app key, unknown app, malformed app id; bad root key; (console) no console
    /// session, or a change without its CSRF token.
    InvalidClient = 403,
    /// 404: unknown endpoint; unknown app or key.
    NotFound = 404,
    /// 405: the path exists, the method does not.
    MethodNotAllowed = 405,
    /// 413: a body over 16 KiB.
    PayloadTooLarge = 413,
    /// 415: a body without `Content-Type: application/json`.
    UnsupportedMediaType = 415,
    /// 429: too many failed authentications from this address, or the app is over its
    /// request quota; see `Retry-After`. Nothing was changed.
    RateLimited = 429,
    /// 503: the database is down or overloaded, or the gateway is saturated; see
    /// `Retry-After`. Nothing was changed.
    Unavailable = 503,
    /// 500: an opaque failure; the cause is in the gateway's log.
    Internal = 500,
}

impl ApiError {
    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        Self::Invalid(vec![FieldError::new(field, message)])
    }

    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Invalid(_) => ErrorCode::InvalidRequest,
            Self::InvalidGrant
            | Self::InvalidToken
            | Self::InvalidDpopProof(_)
            | Self::UseDpopNonce(_) => ErrorCode::InvalidGrant,
            Self::InvalidClient | Self::InvalidRootKey | Self::ConsoleSignIn | Self::Csrf => {
                ErrorCode::InvalidClient
            }
            Self::NotFound(_) => ErrorCode::NotFound,
            Self::MethodNotAllowed => ErrorCode::MethodNotAllowed,
            Self::PayloadTooLarge(_) => ErrorCode::PayloadTooLarge,
            Self::UnsupportedMediaType => ErrorCode::UnsupportedMediaType,
            Self::TooManyRequests(_) | Self::QuotaExceeded(_) => ErrorCode::RateLimited,
            Self::Unavailable(_) | Self::Overloaded => ErrorCode::Unavailable,
            Self::Internal(_) => ErrorCode::Internal,
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.code() as u16).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        let mut errors = None;
        match self {
            Self::Invalid(fields) => errors = Some(fields.iter().map(FieldEntry::from).collect()),
            Self::TooManyRequests(secs) | Self::QuotaExceeded(secs) => {
                rate_limited(&mut response, *secs)
            }
            Self::Unavailable(cause) => unavailable(&mut response, cause),
            // Logged by the admission, at most once a minute, not once per request.
            Self::Overloaded => {
                response.insert_header((header::RETRY_AFTER, RETRY_AFTER));
            }
            Self::Internal(cause) => internal(cause),
            Self::UseDpopNonce(nonce) => {
                response.insert_header((crate::http::dpop::NONCE_HEADER, nonce.as_str()));
            }
            _ => {}
        }
        response.json(ErrorBody { error: self.code(), message: self.to_string(), errors })
    }
}

/// What a 429 adds to its answer, in either contract: `Retry-After`, whole seconds.
pub(crate) fn rate_limited(response: &mut HttpResponseBuilder, secs: u64) {
    response.insert_header((header::RETRY_AFTER, secs.max(1).to_string()));
}

/// What a 503 adds, in either contract: its cause in the log, and `Retry-After`.
pub(crate) fn unavailable(response: &mut HttpResponseBuilder, cause: &Cause) {
    tracing::warn!(error = %chain(cause.as_ref()), "answering 503");
    response.insert_header((header::RETRY_AFTER, RETRY_AFTER));
}

/// What a 500 does, in either contract: its cause goes to the log, never to the client.
pub(crate) fn internal(cause: &Cause) {
    tracing::error!(error = %chain(cause.as_ref()), "internal error");
}

impl From<Refusal> for ApiError {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::RateLimited(secs) => Self::QuotaExceeded(secs),
            Refusal::Shed => Self::Overloaded,
        }
    }
}

impl From<UseCaseError> for ApiError {
    fn from(err: UseCaseError) -> Self {
        match err {
            UseCaseError::Invalid(errors) => Self::Invalid(errors),
            UseCaseError::NotFound(message) => Self::NotFound(message),
            UseCaseError::Unavailable(cause) => Self::Unavailable(cause),
            UseCaseError::Internal(cause) => Self::Internal(cause),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        UseCaseError::from(err).into()
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

impl From<SessionError> for ApiError {
    /// A rejected token is `invalid_grant`; callers other than `/renew` turn it into
    /// [`ApiError::InvalidToken`] for a fitting message.
    fn from(err: SessionError) -> Self {
        match err {
            SessionError::Dpop(why) => Self::InvalidDpopProof(why),
            SessionError::Rejected(_) => Self::InvalidGrant,
            other => UseCaseError::from(other).into(),
        }
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
            ApiError::InvalidDpopProof("bad".into()),
            ApiError::UseDpopNonce("nonce".into()),
            ApiError::InvalidClient,
            ApiError::InvalidRootKey,
            ApiError::ConsoleSignIn,
            ApiError::Csrf,
            ApiError::NotFound("gone".into()),
            ApiError::MethodNotAllowed,
            ApiError::PayloadTooLarge(1),
            ApiError::UnsupportedMediaType,
            ApiError::TooManyRequests(1),
            ApiError::QuotaExceeded(1),
            ApiError::Overloaded,
            ApiError::Unavailable("down".into()),
            ApiError::Internal("broken".into()),
        ];
        for e in &all {
            match e {
                ApiError::Invalid { .. }
                | ApiError::InvalidGrant
                | ApiError::InvalidToken
                | ApiError::InvalidDpopProof(_)
                | ApiError::UseDpopNonce(_)
                | ApiError::InvalidClient
                | ApiError::InvalidRootKey
                | ApiError::ConsoleSignIn
                | ApiError::Csrf
                | ApiError::NotFound(_)
                | ApiError::MethodNotAllowed
                | ApiError::PayloadTooLarge(_)
                | ApiError::UnsupportedMediaType
                | ApiError::TooManyRequests(_)
                | ApiError::QuotaExceeded(_)
                | ApiError::Overloaded
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
        let code =
            |e: &ApiError| serde_json::to_value(e.code()).unwrap().as_str().unwrap().to_owned();
        let mut used: Vec<String> = one_of_each().iter().map(code).collect();
        used.sort_unstable();
        used.dedup();
        let mut sorted = documented.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, used, "ErrorCode lists exactly the codes ApiError answers");
    }
}
