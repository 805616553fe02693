use actix_web::{web, HttpResponse};
use serde_json::json;

use super::resource;
use crate::error::ApiError;
use crate::Services;

pub fn configure(cfg: &mut web::ServiceConfig) {
    for path in ["/healthz", "/ping", "/health"] {
        cfg.service(resource(path).route(web::get().to(alive)));
    }
    cfg.service(resource("/readyz").route(web::get().to(ready)));
}

/// The process runs.
async fn alive() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// The database answers.
async fn ready(services: web::Data<Services>) -> Result<HttpResponse, ApiError> {
    services.db.ping().await.map_err(|e| ApiError::Unavailable(Box::new(e)))?;
    Ok(HttpResponse::Ok().json(json!({"status": "ok", "database": services.db.backend()})))
}
