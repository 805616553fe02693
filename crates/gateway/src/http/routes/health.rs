//! Liveness and readiness.

use actix_web::{web, HttpResponse};
use serde::Serialize;
use utoipa::ToSchema;

use crate::bootstrap::Services;
use crate::http::error::{ApiError, ErrorBody};
use crate::http::resource::{resource, Answer};

// The paths of the routes, each named once: in `configure` and in the OpenAPI document.
const HEALTHZ: &str = "/healthz";
const PING: &str = "/ping";
const HEALTH: &str = "/health";
const READYZ: &str = "/readyz";

pub fn configure(cfg: &mut web::ServiceConfig) {
    for path in [HEALTHZ, PING, HEALTH] {
        cfg.service(resource(path).route(web::get().to(alive)));
    }
    cfg.service(resource(READYZ).route(web::get().to(ready)));
}

/// The process runs.
#[derive(Serialize, ToSchema)]
struct Alive {
    #[schema(example = "ok")]
    status: &'static str,
}

/// The database answers.
#[derive(Serialize, ToSchema)]
struct Ready {
    /// `sqlite` or `postgres`.
    #[schema(example = "sqlite")]
    database: &'static str,
    #[schema(example = "ok")]
    status: &'static str,
}

/// The process runs.
#[utoipa::path(get, path = HEALTHZ, operation_id = "healthz", tag = "operations",
    responses((status = 200, description = "The process runs.", body = Alive)))]
#[utoipa::path(get, path = PING, operation_id = "ping", tag = "operations", impl_for = Ping,
    description = "An alias of `/healthz`, kept for JWTPlus clients.",
    responses((status = 200, description = "The process runs.", body = Alive)))]
#[utoipa::path(get, path = HEALTH, operation_id = "health", tag = "operations", impl_for = Health,
    description = "An alias of `/healthz`, kept for JWTPlus clients.",
    responses((status = 200, description = "The process runs.", body = Alive)))]
async fn alive() -> HttpResponse {
    HttpResponse::Ok().json(Alive { status: "ok" })
}

/// The aliases of `/healthz`, for the OpenAPI document.
pub(super) struct Ping;
pub(super) struct Health;

/// The database answers.
#[utoipa::path(get, path = READYZ, tag = "operations",
    responses(
        (status = 200, description = "The database answers.", body = Ready),
        (status = 503, description = "`unavailable`: the database does not answer.",
            body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait."))),
    ))]
async fn ready(services: web::Data<Services>) -> Answer {
    services.db.ping().await.map_err(|e| ApiError::Unavailable(Box::new(e)))?;
    Ok(HttpResponse::Ok().json(Ready { database: services.db.backend(), status: "ok" }))
}
