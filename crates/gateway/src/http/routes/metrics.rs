//! `GET /metrics`: Prometheus' text exposition format.

use actix_web::http::header;
use actix_web::{web, HttpResponse};

use crate::bootstrap::Services;
use crate::http::resource::resource;

// The path of the route, named once: in `configure` and in the OpenAPI document.
const METRICS: &str = "/metrics";

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource(METRICS).route(web::get().to(metrics)));
}

/// Every metric of this gateway (see `docs/operations.md`, "Metrics and alerts").
#[utoipa::path(get, path = METRICS, tag = "operations",
    responses((status = 200, description = "Prometheus' text exposition format (0.0.4).",
        content_type = "text/plain", body = String)))]
async fn metrics(services: web::Data<Services>) -> HttpResponse {
    // One count over the apps table; a failure leaves the last count.
    match services.tenants.key_hash_forms(services.clock.now()).await {
        Ok(forms) => services.metrics.key_hash_forms(forms),
        Err(err) => tracing::warn!(error = %err, "metrics: the key hashes could not be counted"),
    }
    HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, prometheus::TEXT_FORMAT))
        .body(services.metrics.render(&services.tenants, &services.db, &services.admission))
}
