//! The token API of an app: sign, renew, verify, logout, revoke, and session listing.

use actix_web::{web, HttpRequest, HttpResponse};
use keygate_sessions::{token_field, RenewInput, RevokeScope, SessionError, SessionId, SignInput};
use keygate_tenants::FieldError;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::resource;
use crate::clock;
use crate::error::ApiError;
use crate::extract::{AppAuth, JsonBody};
use crate::Services;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/app/{app_id}/sign").route(web::post().to(sign)))
        .service(resource("/app/{app_id}/renew").route(web::post().to(renew)))
        .service(resource("/app/{app_id}/verify").route(web::post().to(verify)))
        .service(resource("/app/{app_id}/logout").route(web::post().to(logout)))
        .service(resource("/app/{app_id}/revoke").route(web::post().to(revoke)))
        .service(resource("/app/{app_id}/get-session").route(web::post().to(get_session)))
        .service(resource("/app/{app_id}/sessions").route(web::get().to(list_sessions)));
}

type Body = JsonBody<Map<String, Value>>;

async fn sign(
    services: web::Data<Services>,
    auth: AppAuth,
    body: Body,
) -> Result<HttpResponse, ApiError> {
    let input = SignInput::parse(body.0).map_err(ApiError::fields)?;
    let issued = services.sessions.sign(&auth.0.app, input, clock::now()).await?;
    Ok(HttpResponse::Ok().json(issued))
}

async fn renew(
    services: web::Data<Services>,
    auth: AppAuth,
    body: Body,
) -> Result<HttpResponse, ApiError> {
    let input = RenewInput::parse(&body.0).map_err(ApiError::fields)?;
    let renewed = services.sessions.renew(&auth.0.app, input, clock::now()).await?;
    Ok(HttpResponse::Ok().json(renewed.issued))
}

async fn verify(
    services: web::Data<Services>,
    auth: AppAuth,
    body: Body,
) -> Result<HttpResponse, ApiError> {
    let token = token_field(&body.0, "token").map_err(ApiError::fields)?;
    let verified = services.sessions.verify(&auth.0.app, &token, clock::now()).await?;
    Ok(HttpResponse::Ok().json(verified))
}

async fn logout(
    services: web::Data<Services>,
    auth: AppAuth,
    body: Body,
) -> Result<HttpResponse, ApiError> {
    let token = token_field(&body.0, "token").map_err(ApiError::fields)?;
    let revoked =
        services.sessions.logout(&auth.0.app, &token, clock::now()).await.map_err(|e| match e {
            SessionError::Rejected(_) => ApiError::InvalidToken,
            other => other.into(),
        })?;
    Ok(HttpResponse::Ok().json(json!({"status": "ok", "revoked": revoked})))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeRequest {
    session_id: Option<String>,
    sub: Option<String>,
}

async fn revoke(
    services: web::Data<Services>,
    auth: AppAuth,
    body: JsonBody<RevokeRequest>,
) -> Result<HttpResponse, ApiError> {
    let session_id;
    let scope = match (&body.0.session_id, &body.0.sub) {
        (Some(id), None) => {
            session_id = id.parse::<SessionId>().map_err(|_| {
                ApiError::invalid("session_id", "must be a session id (a 26-character ULID)")
            })?;
            RevokeScope::Session(session_id)
        }
        (None, Some(sub)) => RevokeScope::Subject(checked_sub(sub)?),
        _ => {
            return Err(ApiError::fields(vec![
                FieldError::new("session_id", "give exactly one of session_id and sub"),
                FieldError::new("sub", "give exactly one of session_id and sub"),
            ]))
        }
    };
    let app_id = auth.0.app.app_id;
    let revoked =
        services.sessions.revoke(app_id, scope, "revoked by the app", clock::now()).await?;
    Ok(HttpResponse::Ok().json(json!({"revoked": revoked})))
}

fn checked_sub(sub: &str) -> Result<&str, ApiError> {
    if sub.is_empty() || sub.len() > keygate_sessions::MAX_SUB || sub.contains('\0') {
        return Err(ApiError::invalid(
            "sub",
            format!("must be 1 to {} bytes without NUL", keygate_sessions::MAX_SUB),
        ));
    }
    Ok(sub)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SubjectQuery {
    sub: String,
}

async fn sessions_of(
    services: &Services,
    auth: &AppAuth,
    sub: &str,
) -> Result<HttpResponse, ApiError> {
    let sub = checked_sub(sub)?;
    let sessions = services.sessions.list(auth.0.app.app_id, Some(sub), clock::now()).await?;
    Ok(HttpResponse::Ok().json(json!({"sessions": sessions})))
}

async fn get_session(
    services: web::Data<Services>,
    auth: AppAuth,
    body: JsonBody<SubjectQuery>,
) -> Result<HttpResponse, ApiError> {
    sessions_of(&services, &auth, &body.0.sub).await
}

async fn list_sessions(
    services: web::Data<Services>,
    auth: AppAuth,
    request: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let query = web::Query::<SubjectQuery>::from_query(request.query_string())
        .map_err(|_| ApiError::invalid("sub", "is required, as the only query parameter"))?;
    sessions_of(&services, &auth, &query.sub).await
}
