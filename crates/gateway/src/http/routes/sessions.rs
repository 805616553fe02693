//! The token API of an app: sign, renew, verify, logout, revoke, and session listing.

use actix_web::{web, HttpRequest, HttpResponse};
use keygate_sessions::{token_field, RenewInput, RevokeScope, SessionError, SessionId, SignInput};
use keygate_sessions::{Issued, SessionView, Verified};
use keygate_tenants::{AppId, FieldError};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};

use crate::bootstrap::Services;
use crate::http::dpop;
use crate::http::error::{ApiError, ErrorBody};
use crate::http::extract::{AppAuth, JsonBody, JsonObject};
use crate::http::resource::{app_resource, Answer};
use crate::http::schema::{AppKeyErrors, BodyErrors, RevokedCount};
use crate::metrics::{RenewCount, RevokeReason};
use crate::usecases::admin::{self, Actor, SessionTarget};

// The paths of the routes, each named once: in `configure` and in the OpenAPI document.
const SIGN: &str = "/app/{app_id}/sign";
const RENEW: &str = "/app/{app_id}/renew";
const VERIFY: &str = "/app/{app_id}/verify";
const LOGOUT: &str = "/app/{app_id}/logout";
const REVOKE: &str = "/app/{app_id}/revoke";
const GET_SESSION: &str = "/app/{app_id}/get-session";
const SESSIONS: &str = "/app/{app_id}/sessions";

/// The routes, inside the app scope ([`crate::http::resource::APP_SCOPE`]).
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(app_resource(RENEW).route(web::post().to(renew)))
        .service(app_resource(SIGN).route(web::post().to(sign)))
        .service(app_resource(VERIFY).route(web::post().to(verify)))
        .service(app_resource(LOGOUT).route(web::post().to(logout)))
        .service(app_resource(REVOKE).route(web::post().to(revoke)))
        .service(app_resource(GET_SESSION).route(web::post().to(get_session)))
        .service(app_resource(SESSIONS).route(web::get().to(list_sessions)));
}

type Body = JsonObject;

/// The body of `/verify` and `/logout`.
#[derive(ToSchema)]
#[serde(deny_unknown_fields)]
struct TokenRequest {
    /// A token of this app (at most 8 KiB).
    #[schema(min_length = 1, max_length = 8192)]
    token: String,
}

impl TokenRequest {
    fn parse(body: &Map<String, Value>) -> Result<Self, ApiError> {
        Ok(Self { token: token_field(body, "token").map_err(ApiError::Invalid)? })
    }
}

/// The answer of `/logout`.
#[derive(Serialize, ToSchema)]
struct LogoutAnswer {
    /// 1 if the token's session was revoked now, 0 if it already was.
    #[schema(minimum = 0, maximum = 1)]
    revoked: u64,
    #[schema(example = "ok")]
    status: &'static str,
}

/// Live sessions, oldest first.
#[derive(Serialize, ToSchema)]
pub(super) struct SessionList {
    pub(super) sessions: Vec<SessionView>,
}

/// Opens a session: answers an auth token and a refresh token.
///
/// With `max_sessions_per_sub` > 0, opening one session too many revokes the subject's
/// oldest.
#[utoipa::path(post, path = SIGN, tag = "tokens",
    params(("app_id" = AppId, Path, description = "The app's id.")),
    security(("app_key" = [])),
    request_body = SignInput,
    responses(
        (status = 200, description = "The token response.", body = Issued),
        BodyErrors,
        AppKeyErrors,
    ))]
async fn sign(services: web::Data<Services>, auth: AppAuth, body: Body) -> Answer {
    let app = auth.admit(&services).await?;
    let input = SignInput::parse(body.0).map_err(ApiError::Invalid)?;
    let issued = services.sessions.sign(&app.app, input, services.clock.now()).await?;
    services.metrics.session_opened();
    Ok(HttpResponse::Ok().json(issued))
}

/// Renews a session with its refresh token, which rotates (unless the app's
/// `refresh_rotation` is false).
///
/// The previous refresh token, again within `reuse_grace` seconds and from the same
/// `useragent`, is answered as a retry with the session's current tokens; any other
/// earlier token of the session is reuse, and revokes it.
///
/// A DPoP-bound session renews only with `dpop`: a proof its device made for the app's
/// token endpoint, by the session's key, not used before.
#[utoipa::path(post, path = RENEW, tag = "tokens",
    params(("app_id" = AppId, Path, description = "The app's id.")),
    security(("app_key" = [])),
    request_body = RenewInput,
    responses(
        (status = 200, description = "The token response.", body = Issued,
            headers(("DPoP-Nonce" = String, description = "On an app with `dpop_nonce`: \
                the nonce for the next proof."))),
        (status = 401, description = "`invalid_grant`, \"invalid refresh token\": any refresh \
            token that is not accepted (expired, not yet valid, revoked, reused, not this \
            app's); for a DPoP-bound session, also a missing or bad `dpop` proof (\"invalid \
            DPoP proof: …\"), or one without the app's nonce, which `DPoP-Nonce` then holds.",
            body = ErrorBody,
            headers(("DPoP-Nonce" = String, description = "The nonce the proof must carry."))),
        BodyErrors,
        AppKeyErrors,
    ))]
async fn renew(
    services: web::Data<Services>,
    request: HttpRequest,
    auth: AppAuth,
    body: Body,
) -> Answer {
    let app = auth.admit(&services).await?;
    let mut input = RenewInput::parse(&body.0).map_err(ApiError::Invalid)?;
    let now = services.clock.now();
    let proof = input.dpop.take();
    dpop::attach(&services, &request, &app.app, proof.as_deref(), &mut input, now)
        .map_err(ApiError::UseDpopNonce)?;
    let renewed = services.sessions.renew(&app.app, input, now).await;
    services.metrics.renew(app.app.app_id, RenewCount::of(&renewed), now);
    let mut response = HttpResponse::Ok();
    dpop::offer_nonce(&services, &app.app, now, &mut response);
    Ok(response.json(renewed?.issued))
}

/// Verifies an auth token of this app, and that its session is live.
#[utoipa::path(post, path = VERIFY, tag = "tokens",
    params(("app_id" = AppId, Path, description = "The app's id.")),
    security(("app_key" = [])),
    request_body = TokenRequest,
    responses(
        (status = 200, description = "`verified` with the claims, or not with a `reason`.",
            body = Verified),
        BodyErrors,
        AppKeyErrors,
    ))]
async fn verify(services: web::Data<Services>, auth: AppAuth, body: Body) -> Answer {
    let app = auth.admit(&services).await?;
    let TokenRequest { token } = TokenRequest::parse(&body.0)?;
    let verified = services.sessions.verify(&app.app, &token, services.clock.now()).await?;
    Ok(HttpResponse::Ok().json(verified))
}

/// Revokes the session of a token (an auth or a refresh token of this app, even expired).
#[utoipa::path(post, path = LOGOUT, tag = "tokens",
    params(("app_id" = AppId, Path, description = "The app's id.")),
    security(("app_key" = [])),
    request_body = TokenRequest,
    responses(
        (status = 200, description = "The session is revoked.", body = LogoutAnswer),
        (status = 401, description = "`invalid_grant`, \"invalid token\": not a token of \
            this app.", body = ErrorBody),
        BodyErrors,
        AppKeyErrors,
    ))]
async fn logout(services: web::Data<Services>, auth: AppAuth, body: Body) -> Answer {
    let app = auth.admit(&services).await?;
    let TokenRequest { token } = TokenRequest::parse(&body.0)?;
    let revoked = services.sessions.logout(&app.app, &token, services.clock.now()).await.map_err(
        |e| match e {
            SessionError::Rejected(_) => ApiError::InvalidToken,
            other => other.into(),
        },
    )?;
    services.metrics.sessions_revoked(RevokeReason::Logout, revoked);
    Ok(HttpResponse::Ok().json(LogoutAnswer { revoked, status: "ok" }))
}

/// The body of `/revoke`: exactly one of `session_id` (one session) and `sub` (every
/// session of a subject).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RevokeRequest {
    #[schema(value_type = Option<SessionId>)]
    session_id: Option<String>,
    #[schema(min_length = 1, max_length = 255)]
    sub: Option<String>,
}

impl RevokeRequest {
    /// The one session, or the one subject, named: exactly one of the two.
    pub(super) fn target(&self) -> Result<SessionTarget<'_>, ApiError> {
        match (&self.session_id, &self.sub) {
            (Some(id), None) => Ok(SessionTarget::Session(id.parse().map_err(|_| {
                ApiError::invalid("session_id", "must be a session id (a 26-character ULID)")
            })?)),
            (None, Some(sub)) => Ok(SessionTarget::Subject(checked_sub(sub)?)),
            _ => Err(ApiError::Invalid(vec![
                FieldError::new("session_id", "give exactly one of session_id and sub"),
                FieldError::new("sub", "give exactly one of session_id and sub"),
            ])),
        }
    }
}

/// Revokes one session, or every session of a subject.
#[utoipa::path(post, path = REVOKE, tag = "tokens",
    params(("app_id" = AppId, Path, description = "The app's id.")),
    security(("app_key" = [])),
    request_body = RevokeRequest,
    responses(
        (status = 200, description = "How many sessions were revoked.", body = RevokedCount),
        BodyErrors,
        AppKeyErrors,
    ))]
async fn revoke(
    services: web::Data<Services>,
    auth: AppAuth,
    body: JsonBody<RevokeRequest>,
) -> Answer {
    let app = auth.admit(&services).await?;
    let scope = RevokeScope::from(body.0.target()?);
    let app_id = app.app.app_id;
    let revoked =
        services.sessions.revoke(app_id, scope, "revoked by the app", services.clock.now()).await?;
    services.metrics.sessions_revoked(RevokeReason::App, revoked);
    admin::sessions_revoked(&services, app_id, scope, revoked, Actor::App).await;
    Ok(HttpResponse::Ok().json(RevokedCount { revoked }))
}

pub(super) fn checked_sub(sub: &str) -> Result<&str, ApiError> {
    if sub.is_empty() || sub.len() > keygate_sessions::MAX_SUB || sub.contains('\0') {
        return Err(ApiError::invalid(
            "sub",
            format!("must be 1 to {} bytes without NUL", keygate_sessions::MAX_SUB),
        ));
    }
    Ok(sub)
}

/// A subject whose sessions are listed.
#[derive(Debug, Deserialize, IntoParams, ToSchema)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct SubjectQuery {
    /// The subject.
    #[param(min_length = 1, max_length = 255)]
    #[schema(min_length = 1, max_length = 255)]
    pub(super) sub: String,
}

impl SubjectQuery {
    /// The subject of `?sub=` (required, the only parameter), checked.
    pub(super) fn of(request: &HttpRequest) -> Result<String, ApiError> {
        let query = web::Query::<Self>::from_query(request.query_string())
            .map_err(|_| ApiError::invalid("sub", "is required, as the only query parameter"))?;
        checked_sub(&query.sub)?;
        Ok(query.into_inner().sub)
    }
}

/// The live sessions of `sub`, a checked subject.
async fn sessions_of(services: &Services, auth: AppAuth, sub: &str) -> Answer {
    let app = auth.admit(services).await?;
    let sessions = services.sessions.list(app.app.app_id, Some(sub), services.clock.now()).await?;
    Ok(HttpResponse::Ok().json(SessionList { sessions }))
}

/// The subject's live sessions, oldest first.
#[utoipa::path(post, path = GET_SESSION, tag = "tokens",
    params(("app_id" = AppId, Path, description = "The app's id.")),
    security(("app_key" = [])),
    request_body = SubjectQuery,
    responses(
        (status = 200, description = "The live sessions.", body = SessionList),
        BodyErrors,
        AppKeyErrors,
    ))]
async fn get_session(
    services: web::Data<Services>,
    auth: AppAuth,
    body: JsonBody<SubjectQuery>,
) -> Answer {
    sessions_of(&services, auth, checked_sub(&body.0.sub)?).await
}

/// The subject's live sessions, oldest first.
#[utoipa::path(get, path = SESSIONS, tag = "tokens",
    params(("app_id" = AppId, Path, description = "The app's id."), SubjectQuery),
    security(("app_key" = [])),
    responses(
        (status = 200, description = "The live sessions.", body = SessionList),
        (status = 400, description = "`invalid_request`: `sub` is missing, invalid, or not \
            the only query parameter.", body = ErrorBody),
        AppKeyErrors,
    ))]
async fn list_sessions(
    services: web::Data<Services>,
    auth: AppAuth,
    request: HttpRequest,
) -> Answer {
    sessions_of(&services, auth, &SubjectQuery::of(&request)?).await
}
