//! An app's public keys and settings.

use actix_web::http::header;
use actix_web::{web, HttpResponse};
use keygate_keyring::{Jwks, PublishedKey};
use keygate_tenants::{App, AppId};
use serde::Serialize;
use utoipa::ToSchema;

use crate::bootstrap::Services;
use crate::http::error::{ApiError, ErrorBody};
use crate::http::extract::{AppAuth, PathOf};
use crate::http::resource::{app_resource, Answer};
use crate::http::schema::{AppKeyErrors, ServerErrors};
use crate::usecases::UseCaseError;

// The paths of the routes, each named once: in `configure` and in the OpenAPI document.
const JWKS: &str = "/app/{app_id}/jwks.json";
const PUB_KEYS: &str = "/app/{app_id}/pub-keys";
const APP: &str = "/app/{app_id}";

/// The routes, inside the app scope ([`crate::http::resource::APP_SCOPE`]).
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(app_resource(JWKS).route(web::get().to(jwks)))
        .service(app_resource(PUB_KEYS).route(web::get().to(pub_keys)))
        .service(app_resource(APP).route(web::get().to(app_settings)));
}

/// The app's published keys (`next`, `active`, `retired`).
#[derive(Serialize, ToSchema)]
struct PublishedKeys<'a> {
    keys: &'a [PublishedKey],
}

/// The app's published keys as an RFC 7517 key set; public, and cacheable.
///
/// The keys in states `next`, `active` and `retired`; never `revoked` ones.
#[utoipa::path(get, path = JWKS, tag = "app",
    params(("app_id" = AppId, Path, description = "The app's id.")),
    responses(
        (status = 200, description = "An RFC 7517 JWKS.", body = Jwks,
            headers(("Cache-Control" = String, description = "`public, max-age=<jwks_max_age>`"))),
        (status = 404, description = "`not_found`: no such app (or a malformed id).",
            body = ErrorBody),
        ServerErrors,
    ))]
async fn jwks(services: web::Data<Services>, PathOf(app_id): PathOf<Option<AppId>>) -> Answer {
    let unknown = || ApiError::NotFound("no such app".into());
    let app_id = app_id.ok_or_else(unknown)?;
    services.tenants.app(app_id).await?.ok_or_else(unknown)?;
    let keys = services.keyring.keys(app_id).await.map_err(UseCaseError::from)?;
    Ok(HttpResponse::Ok()
        .insert_header((
            header::CACHE_CONTROL,
            format!("public, max-age={}", services.jwks_max_age),
        ))
        .json(keys.jwks()))
}

/// The app's published keys, as base64 of their SubjectPublicKeyInfo PEM.
#[utoipa::path(get, path = PUB_KEYS, tag = "app",
    params(("app_id" = AppId, Path, description = "The app's id.")),
    security(("app_key" = [])),
    responses(
        (status = 200, description = "The published keys.", body = PublishedKeys),
        AppKeyErrors,
    ))]
async fn pub_keys(services: web::Data<Services>, auth: AppAuth) -> Answer {
    let app = auth.admit(&services).await?;
    let keys = services.keyring.keys(app.app.app_id).await.map_err(UseCaseError::from)?;
    Ok(HttpResponse::Ok().json(PublishedKeys { keys: keys.published() }))
}

/// The app's settings, without secrets.
#[utoipa::path(get, path = APP, tag = "app",
    params(("app_id" = AppId, Path, description = "The app's id.")),
    security(("app_key" = [])),
    responses(
        (status = 200, description = "The app's settings.", body = App),
        AppKeyErrors,
    ))]
async fn app_settings(services: web::Data<Services>, auth: AppAuth) -> Answer {
    let app = auth.admit(&services).await?;
    Ok(HttpResponse::Ok().json(&app.app))
}
