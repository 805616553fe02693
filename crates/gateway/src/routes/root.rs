use actix_web::{web, HttpResponse};
use keygate_keyring::KeyId;
use keygate_tenants::{AppId, SettingsPatch};
use serde_json::json;

use super::resource;
use crate::admin::{self, RotateAppKeyRequest};
use crate::clock;
use crate::error::ApiError;
use crate::extract::{JsonBody, OptionalJsonBody, RootAuth};
use crate::Services;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        resource("/root/apps").route(web::get().to(list_apps)).route(web::post().to(create_app)),
    )
    .service(
        resource("/root/apps/{app_id}")
            .route(web::get().to(get_app))
            .route(web::patch().to(update_app))
            .route(web::delete().to(delete_app)),
    )
    .service(resource("/root/apps/{app_id}/sessions").route(web::delete().to(revoke_sessions)))
    .service(resource("/root/apps/{app_id}/rotate-app-key").route(web::post().to(rotate_app_key)))
    .service(resource("/root/apps/{app_id}/keys").route(web::get().to(list_keys)))
    .service(resource("/root/apps/{app_id}/keys/rotate").route(web::post().to(rotate_keys)))
    .service(
        resource("/root/apps/{app_id}/keys/{key_id}/revoke").route(web::post().to(revoke_key)),
    );
}

fn app_id(raw: &str) -> Result<AppId, ApiError> {
    raw.parse().map_err(|_| ApiError::NotFound(format!("app {raw:?} not found")))
}

async fn list_apps(_: RootAuth, services: web::Data<Services>) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(json!({"apps": admin::list_apps(&services).await?})))
}

async fn create_app(
    _: RootAuth,
    services: web::Data<Services>,
    body: JsonBody<SettingsPatch>,
) -> Result<HttpResponse, ApiError> {
    let created = admin::create_app(&services, &body.0, clock::now()).await?;
    Ok(HttpResponse::Created().json(created))
}

async fn get_app(
    _: RootAuth,
    services: web::Data<Services>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let record = admin::get_app(&services, app_id(&path)?).await?;
    Ok(HttpResponse::Ok().json(record.app))
}

async fn update_app(
    _: RootAuth,
    services: web::Data<Services>,
    path: web::Path<String>,
    body: JsonBody<SettingsPatch>,
) -> Result<HttpResponse, ApiError> {
    let app = admin::update_app(&services, app_id(&path)?, &body.0, clock::now()).await?;
    Ok(HttpResponse::Ok().json(app))
}

async fn delete_app(
    _: RootAuth,
    services: web::Data<Services>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let app_id = app_id(&path)?;
    admin::delete_app(&services, app_id).await?;
    Ok(HttpResponse::Ok().json(json!({"deleted": app_id})))
}

async fn rotate_app_key(
    _: RootAuth,
    services: web::Data<Services>,
    path: web::Path<String>,
    body: OptionalJsonBody<RotateAppKeyRequest>,
) -> Result<HttpResponse, ApiError> {
    let grace = body.0.unwrap_or_default().grace;
    let rotated = admin::rotate_app_key(&services, app_id(&path)?, grace, clock::now()).await?;
    Ok(HttpResponse::Ok().json(rotated))
}

async fn list_keys(
    _: RootAuth,
    services: web::Data<Services>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let keys = admin::list_keys(&services, app_id(&path)?).await?;
    Ok(HttpResponse::Ok().json(json!({"keys": keys})))
}

async fn rotate_keys(
    _: RootAuth,
    services: web::Data<Services>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let rotation = admin::rotate_keys(&services, app_id(&path)?, clock::now()).await?;
    Ok(HttpResponse::Ok().json(rotation))
}

async fn revoke_key(
    _: RootAuth,
    services: web::Data<Services>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (raw_app, raw_key) = path.into_inner();
    let key_id: KeyId =
        raw_key.parse().map_err(|_| ApiError::NotFound(format!("key {raw_key:?} not found")))?;
    let revocation = admin::revoke_key(&services, app_id(&raw_app)?, key_id, clock::now()).await?;
    Ok(HttpResponse::Ok().json(revocation))
}

async fn revoke_sessions(
    _: RootAuth,
    services: web::Data<Services>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let revoked = admin::revoke_sessions(&services, app_id(&path)?, None, clock::now()).await?;
    Ok(HttpResponse::Ok().json(json!({"revoked": revoked})))
}
