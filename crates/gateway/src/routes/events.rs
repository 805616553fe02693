//! The audit trail over HTTP (root key): an app's events, and its webhook.

use actix_web::{web, HttpRequest, HttpResponse};
use keygate_tenants::AppId;
use serde::Deserialize;
use serde_json::json;

use super::resource;
use crate::admin::{self, Actor};
use crate::error::ApiError;
use crate::extract::{JsonBody, RootAuth};
use crate::{webhooks, Services};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/root/apps/{app_id}/events").route(web::get().to(list_events))).service(
        resource("/root/apps/{app_id}/webhook")
            .route(web::get().to(get_webhook))
            .route(web::put().to(set_webhook))
            .route(web::delete().to(remove_webhook)),
    );
}

fn app_id(raw: &str) -> Result<AppId, ApiError> {
    raw.parse().map_err(|_| ApiError::NotFound(format!("app {raw:?} not found")))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    limit: Option<i64>,
    before: Option<String>,
}

/// The app's events, newest first: `?limit=` (1 to 500, default 50) and `?before=` (the
/// `next` of the previous page).
async fn list_events(
    _: RootAuth,
    services: web::Data<Services>,
    path: web::Path<String>,
    request: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let app_id = app_id(&path)?;
    let query = web::Query::<EventsQuery>::from_query(request.query_string()).map_err(|e| {
        ApiError::invalid("query", format!("takes only limit (1 to 500) and before: {e}"))
    })?;
    let page = admin::list_events(&services, app_id, query.before.as_deref(), query.limit).await?;
    Ok(HttpResponse::Ok().json(page))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WebhookRequest {
    url: String,
}

/// Sets the webhook with a new signing secret, shown only in this answer.
async fn set_webhook(
    _: RootAuth,
    services: web::Data<Services>,
    path: web::Path<String>,
    body: JsonBody<WebhookRequest>,
) -> Result<HttpResponse, ApiError> {
    let set = webhooks::set(&services, app_id(&path)?, &body.0.url, Actor::Root).await?;
    Ok(HttpResponse::Ok().json(set))
}

async fn get_webhook(
    _: RootAuth,
    services: web::Data<Services>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(webhooks::get(&services, app_id(&path)?).await?))
}

async fn remove_webhook(
    _: RootAuth,
    services: web::Data<Services>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let app_id = app_id(&path)?;
    webhooks::remove(&services, app_id).await?;
    Ok(HttpResponse::Ok().json(json!({"removed": app_id})))
}
