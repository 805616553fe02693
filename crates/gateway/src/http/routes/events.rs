//! The audit trail over HTTP (root key): an app's events, and its webhook.

use actix_web::{web, HttpRequest, HttpResponse, Resource};
use keygate_tenants::AppId;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::root::{under_console, under_root};
use crate::bootstrap::Services;
use crate::http::error::{ApiError, ErrorBody};
use crate::http::extract::{JsonBody, RootPath};
use crate::http::resource::Answer;
use crate::http::schema::{AppNotFound, BodyErrors, NoWebhook, RootKeyErrors};
use crate::usecases::admin::{self, Actor, EventPage};
use crate::usecases::webhooks::{self, WebhookSet, WebhookView};

// The paths of the routes, each named once: in `configure` and in the OpenAPI document.
const EVENTS: &str = "/root/apps/{app_id}/events";
const WEBHOOK: &str = "/root/apps/{app_id}/webhook";

/// The audit routes, each made by `res` from its path (see `routes::root`: the console
/// mounts them a second time).
fn routes(cfg: &mut web::ServiceConfig, res: fn(&'static str) -> Resource) {
    cfg.service(res(EVENTS).route(web::get().to(list_events))).service(
        res(WEBHOOK)
            .route(web::get().to(get_webhook))
            .route(web::put().to(set_webhook))
            .route(web::delete().to(remove_webhook)),
    );
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    routes(cfg, under_root);
}

/// The same routes inside the console's scope, as `/console/api/…`.
pub fn configure_console(cfg: &mut web::ServiceConfig) {
    routes(cfg, under_console);
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct EventsQuery {
    /// Events per page (default 50).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<i64>,
    /// The `next` of the previous page: only events older than this one.
    #[param(min_length = 26, max_length = 26)]
    before: Option<String>,
    /// Only events of this kind (`reuse_detected`, `session_revoked`, …).
    kind: Option<String>,
}

/// The app's events, newest first: `?limit=` (1 to 500, default 50), `?before=` (the
/// `next` of the previous page) and `?kind=` (one kind only).
#[utoipa::path(get, path = EVENTS, tag = "root",
    params(("app_id" = AppId, Path, description = "The app's id."), EventsQuery),
    security(("root_key" = [])),
    responses(
        (status = 200, description = "A page of events, newest first.", body = EventPage),
        (status = 400, description = "`invalid_request`: a bad `limit`, `before` or `kind`, or \
            another query parameter.", body = ErrorBody),
        (status = 404, description = "`not_found`: no such app, and no events of one (or a \
            malformed id).", body = ErrorBody),
        RootKeyErrors,
    ))]
async fn list_events(
    RootPath(app_id): RootPath<AppId>,
    services: web::Data<Services>,
    request: HttpRequest,
) -> Answer {
    let query = web::Query::<EventsQuery>::from_query(request.query_string()).map_err(|e| {
        ApiError::invalid("query", format!("takes only limit (1 to 500), before and kind: {e}"))
    })?;
    let (before, kind) = (query.before.as_deref(), query.kind.as_deref());
    let page = admin::list_events(&services, app_id, before, kind, query.limit).await?;
    Ok(HttpResponse::Ok().json(page))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct WebhookRequest {
    /// `https`, or `http` to a loopback host; with a host and no credentials.
    #[schema(example = "https://hooks.example/keygate-events")]
    url: String,
}

/// The app whose webhook was removed.
#[derive(Serialize, ToSchema)]
struct Removed {
    removed: AppId,
}

/// Sets the webhook with a new signing secret, shown only in this answer.
#[utoipa::path(put, path = WEBHOOK, tag = "root",
    params(("app_id" = AppId, Path, description = "The app's id.")),
    security(("root_key" = [])),
    request_body = WebhookRequest,
    responses(
        (status = 200, description = "The webhook, with its signing secret.", body = WebhookSet),
        AppNotFound,
        BodyErrors,
        RootKeyErrors,
    ))]
async fn set_webhook(
    RootPath(app_id): RootPath<AppId>,
    services: web::Data<Services>,
    body: JsonBody<WebhookRequest>,
) -> Answer {
    let set = webhooks::set(&services, app_id, &body.0.url, Actor::Root).await?;
    Ok(HttpResponse::Ok().json(set))
}

/// The app's webhook, without its secret.
#[utoipa::path(get, path = WEBHOOK, tag = "root",
    params(("app_id" = AppId, Path, description = "The app's id.")),
    security(("root_key" = [])),
    responses(
        (status = 200, description = "The webhook.", body = WebhookView),
        NoWebhook,
        RootKeyErrors,
    ))]
async fn get_webhook(RootPath(app_id): RootPath<AppId>, services: web::Data<Services>) -> Answer {
    Ok(HttpResponse::Ok().json(webhooks::get(&services, app_id).await?))
}

/// Removes the app's webhook; undelivered events are no longer sent.
#[utoipa::path(delete, path = WEBHOOK, tag = "root",
    params(("app_id" = AppId, Path, description = "The app's id.")),
    security(("root_key" = [])),
    responses(
        (status = 200, description = "The webhook is gone.", body = Removed),
        NoWebhook,
        RootKeyErrors,
    ))]
async fn remove_webhook(
    RootPath(app_id): RootPath<AppId>,
    services: web::Data<Services>,
) -> Answer {
    webhooks::remove(&services, app_id).await?;
    Ok(HttpResponse::Ok().json(Removed { removed: app_id }))
}
