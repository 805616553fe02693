//! Every route of the API, one module per group; [`openapi`] describes them all.

use actix_web::web;

use crate::http::resource::APP_SCOPE;
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
/// The app scope comes first, with the token endpoints first in it: the router tries
/// services in this order. A path inside the scope that names no route of it is answered
/// by the app's default service (404), as any other unknown path.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope(APP_SCOPE)
            .configure(sessions::configure)
            .configure(oauth::configure_app)
            .configure(published::configure),
    );
    oauth::configure(cfg);
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
