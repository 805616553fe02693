//! What every route shares: a resource that answers 405 to the methods it does not serve,
//! and the two fallbacks of the router.

use std::borrow::Cow;

use actix_web::{web, HttpResponse};

use crate::http::error::ApiError;
use crate::http::metrics::RouteLabel;

/// What a handler answers: a response, or an error of the API's contract.
pub type Answer = Result<HttpResponse, ApiError>;

pub async fn not_found() -> Answer {
    Err(ApiError::NotFound("no such endpoint".into()))
}

pub async fn method_not_allowed() -> Answer {
    Err(ApiError::MethodNotAllowed)
}

/// A resource whose unserved methods answer 405.
/// The resource carries its pattern as the route label of the metrics, which the metrics
/// middleware reads without matching the path again.
pub fn resource(path: &'static str) -> actix_web::Resource {
    resource_as(path, path)
}

/// The scope of an app's routes: every path of the token API, the OAuth face and the
/// published keys starts with it. The router matches this pattern (the one with a variable
/// segment) once per request, and then the path inside it against plain strings, instead of
/// a pattern per resource until one matches.
pub const APP_SCOPE: &str = "/app/{app_id}";

/// A resource of the app scope ([`APP_SCOPE`]): `path` is the whole pattern, as the OpenAPI
/// document and the metrics name it, registered within the scope.
pub fn app_resource(path: &'static str) -> actix_web::Resource {
    resource_as(path.strip_prefix(APP_SCOPE).unwrap_or(path), path)
}

/// Like [`resource`], for a resource inside a scope: `path` within the scope, `label` the
/// whole pattern.
pub fn resource_as(
    path: impl Into<String>,
    label: impl Into<Cow<'static, str>>,
) -> actix_web::Resource {
    web::resource(path.into())
        .app_data(RouteLabel(label.into()))
        .default_service(web::to(method_not_allowed))
}
