//! Every route of the API, one module per group; [`openapi`] describes them all.

use actix_web::web;

pub use crate::http::resource::{method_not_allowed, not_found};

mod events;
mod health;
mod metrics;
mod oauth;
mod openapi;
mod published;
mod root;
mod sessions;

/// Every route of the API. Each resource answers 405 to methods it does not serve.
/// The token endpoints come first: the router tries resources in this order.
pub fn configure(cfg: &mut web::ServiceConfig) {
    sessions::configure(cfg);
    oauth::configure(cfg);
    published::configure(cfg);
    health::configure(cfg);
    metrics::configure(cfg);
    openapi::configure(cfg);
    root::configure(cfg);
    events::configure(cfg);
}

/// The root API as the console uses it, under `/console/api` (inside the console's scope).
pub fn console_api(cfg: &mut web::ServiceConfig) {
    root::configure_console(cfg);
    events::configure_console(cfg);
}
