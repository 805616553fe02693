use actix_web::http::header;
use actix_web::{web, HttpResponse};
use keygate_tenants::AppId;
use serde_json::json;

use super::resource;
use crate::error::ApiError;
use crate::extract::AppAuth;
use crate::Services;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/app/{app_id}/jwks.json").route(web::get().to(jwks)))
        .service(resource("/app/{app_id}/pub-keys").route(web::get().to(pub_keys)))
        .service(resource("/app/{app_id}").route(web::get().to(app_settings)));
}

/// The app's published keys as an RFC 7517 key set; public, and cacheable.
async fn jwks(
    services: web::Data<Services>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let unknown = || ApiError::NotFound("no such app".into());
    let app_id: AppId = path.parse().map_err(|_| unknown())?;
    services.tenants.app(app_id).await?.ok_or_else(unknown)?;
    let keys = services.keyring.keys(app_id).await?;
    Ok(HttpResponse::Ok()
        .insert_header((
            header::CACHE_CONTROL,
            format!("public, max-age={}", services.jwks_max_age),
        ))
        .json(keys.jwks()))
}

async fn pub_keys(services: web::Data<Services>, auth: AppAuth) -> Result<HttpResponse, ApiError> {
    let keys = services.keyring.keys(auth.0.app.app_id).await?;
    Ok(HttpResponse::Ok().json(json!({"keys": keys.published()})))
}

async fn app_settings(auth: AppAuth) -> HttpResponse {
    HttpResponse::Ok().json(&auth.0.app)
}
