//! `GET /metrics`: Prometheus' text exposition format.

use actix_web::http::header;
use actix_web::{web, HttpResponse};

use super::resource;
use crate::Services;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/metrics").route(web::get().to(metrics)));
}

/// Every metric of this gateway (see `docs/operations.md`, "Metrics and alerts").
async fn metrics(services: web::Data<Services>) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, prometheus::TEXT_FORMAT))
        .body(services.metrics.render(&services))
}
