//! The middleware that counts and times every request in [`crate::metrics::Metrics`], by
//! the route pattern of the resource that answered.

use std::borrow::Cow;
use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::web;

use crate::bootstrap::Services;

/// The label of requests that matched no route.
const UNMATCHED: &str = "unmatched";

/// The route pattern of a resource, as its requests are labelled.
#[derive(Debug, Clone)]
pub struct RouteLabel(pub Cow<'static, str>);

/// The middleware that counts and times every request
/// (`actix_web::middleware::from_fn(metrics::middleware)`).
pub async fn middleware(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let services = req.app_data::<web::Data<Services>>().cloned();
    let method = req.method().clone();
    let response = next.call(req).await;
    if let Some(services) = services {
        let seconds = started.elapsed().as_secs_f64();
        let (route, status) = match &response {
            Ok(response) => {
                let request = response.request();
                // Routes of the API carry their label; others (the compatibility routes)
                // are matched again.
                let route = match request.app_data::<RouteLabel>() {
                    Some(label) => Cow::Borrowed(&*label.0),
                    None => request.match_pattern().map_or(Cow::Borrowed(UNMATCHED), Cow::Owned),
                };
                (route, response.status().as_u16())
            }
            Err(err) => (Cow::Borrowed(UNMATCHED), err.as_response_error().status_code().as_u16()),
        };
        services.metrics.observe_request(&route, method.as_str(), status, seconds);
    }
    response
}
