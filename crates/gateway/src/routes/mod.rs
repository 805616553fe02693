use actix_web::{web, HttpResponse};

use crate::error::ApiError;

mod events;
mod health;
mod metrics;
mod openapi;
mod root;
mod sessions;
mod tenant;

/// Every route of the API. Each resource answers 405 to methods it does not serve.
/// The token endpoints come first: the router tries resources in this order.
pub fn configure(cfg: &mut web::ServiceConfig) {
    sessions::configure(cfg);
    tenant::configure(cfg);
    health::configure(cfg);
    metrics::configure(cfg);
    openapi::configure(cfg);
    root::configure(cfg);
    events::configure(cfg);
}

pub async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound("no such endpoint".into()))
}

pub async fn method_not_allowed() -> Result<HttpResponse, ApiError> {
    Err(ApiError::MethodNotAllowed)
}

/// A resource whose unserved methods answer 405.
/// The resource carries its pattern as the route label of the metrics, which the metrics
/// middleware reads without matching the path again.
fn resource(path: &'static str) -> actix_web::Resource {
    web::resource(path)
        .app_data(crate::metrics::RouteLabel(path))
        .default_service(web::to(method_not_allowed))
}
