//! The error answers that many operations share, for their `#[utoipa::path]` attributes:
//! each set lists statuses, with the [`ErrorBody`] every error answers.

use utoipa::IntoResponses;

use crate::http::error::ErrorBody;
use crate::http::oauth::OAuthErrorBody;

/// The failures of an endpoint that takes an app key.
#[derive(Debug, IntoResponses)]
pub enum AppKeyErrors {
    /// `invalid_client`, "invalid app key or id": a missing or wrong app key, an unknown app
    /// or a malformed app id, all alike.
    #[response(status = 403)]
    Forbidden(ErrorBody<'static>),
    /// `rate_limited`: too many failed authentications from this address, or the app is
    /// over its request quota (`requests_per_second`); nothing was changed.
    #[response(status = 429, headers(("Retry-After" = u64, description = "Seconds to wait.")))]
    TooManyRequests(ErrorBody<'static>),
    /// `internal`: an opaque failure; the cause is in the gateway's log.
    #[response(status = 500)]
    Internal(ErrorBody<'static>),
    /// `unavailable`: the database is down or overloaded, or the gateway is saturated and
    /// the request's turn did not come; nothing was changed.
    #[response(status = 503, headers(("Retry-After" = u64, description = "Seconds to wait.")))]
    Unavailable(ErrorBody<'static>),
}

/// The failures of an endpoint that takes the root key.
#[derive(Debug, IntoResponses)]
pub enum RootKeyErrors {
    /// `invalid_client`, "invalid root key": a missing or wrong root key.
    #[response(status = 403)]
    Forbidden(ErrorBody<'static>),
    /// `rate_limited`: too many failed authentications from this address.
    #[response(status = 429, headers(("Retry-After" = u64, description = "Seconds to wait.")))]
    TooManyRequests(ErrorBody<'static>),
    /// `internal`: an opaque failure; the cause is in the gateway's log.
    #[response(status = 500)]
    Internal(ErrorBody<'static>),
    /// `unavailable`: the database is down or overloaded; nothing was changed.
    #[response(status = 503, headers(("Retry-After" = u64, description = "Seconds to wait.")))]
    Unavailable(ErrorBody<'static>),
}

/// The failures of an endpoint that reads the database without a key.
#[derive(Debug, IntoResponses)]
pub enum ServerErrors {
    /// `internal`: an opaque failure; the cause is in the gateway's log.
    #[response(status = 500)]
    Internal(ErrorBody<'static>),
    /// `unavailable`: the database is down or overloaded.
    #[response(status = 503, headers(("Retry-After" = u64, description = "Seconds to wait.")))]
    Unavailable(ErrorBody<'static>),
}

/// The failures of reading a JSON body.
#[derive(Debug, IntoResponses)]
pub enum BodyErrors {
    /// `invalid_request`: the body is not one JSON object of the documented shape, or a
    /// field is invalid; `errors[]` names each bad field.
    #[response(status = 400)]
    Invalid(ErrorBody<'static>),
    /// `payload_too_large`: a body over 16 KiB.
    #[response(status = 413)]
    TooLarge(ErrorBody<'static>),
    /// `unsupported_media_type`: a body without `Content-Type: application/json`.
    #[response(status = 415)]
    UnsupportedMediaType(ErrorBody<'static>),
}

/// How many sessions were revoked.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct RevokedCount {
    pub revoked: u64,
}

/// `not_found`: no such app (or a malformed id).
#[derive(Debug, IntoResponses)]
#[response(status = 404)]
pub struct AppNotFound(pub ErrorBody<'static>);

/// `not_found`: no such app (or a malformed id), or the app has no webhook.
#[derive(Debug, IntoResponses)]
#[response(status = 404)]
pub struct NoWebhook(pub ErrorBody<'static>);

/// The failures of the OAuth endpoints (RFC 6749 §5.2), each answered with
/// `Cache-Control: no-store`.
#[derive(Debug, IntoResponses)]
pub enum OAuthErrors {
    /// `invalid_request` (a body that is not a form, a parameter given twice or missing,
    /// two client authentication methods), `invalid_grant` (a refresh token that is not
    /// accepted), `unsupported_grant_type`, `invalid_scope`, `invalid_dpop_proof` (a
    /// DPoP-bound session's refresh without a valid proof by its key) or `use_dpop_nonce`
    /// (the proof lacks the app's nonce, given in `DPoP-Nonce`).
    #[response(status = 400, headers(("DPoP-Nonce" = String, description = "With \
        `use_dpop_nonce`: the nonce the next proof must carry.")))]
    BadRequest(OAuthErrorBody),
    /// `invalid_client`: missing, malformed or wrong client credentials. With
    /// `WWW-Authenticate: Basic` when the `Authorization` header was used or no
    /// credentials came.
    #[response(status = 401, headers(("WWW-Authenticate" = String, description = "`Basic realm=\"keygate\"`")))]
    Unauthorized(OAuthErrorBody),
    /// `invalid_request`: a body over 16 KiB.
    #[response(status = 413)]
    TooLarge(OAuthErrorBody),
    /// `rate_limited`: too many failed authentications from this address, or the app is
    /// over its request quota; no token was spent.
    #[response(status = 429, headers(("Retry-After" = u64, description = "Seconds to wait.")))]
    TooManyRequests(OAuthErrorBody),
    /// `server_error`: an opaque failure; the cause is in the gateway's log.
    #[response(status = 500)]
    Internal(OAuthErrorBody),
    /// `temporarily_unavailable`: the database is down or overloaded, or the gateway is
    /// saturated; nothing was changed.
    #[response(status = 503, headers(("Retry-After" = u64, description = "Seconds to wait.")))]
    Unavailable(OAuthErrorBody),
}
