//! The HTTP layer: the routes and their extractors, the error contract of the API
//! ([`error::ApiError`], from the use cases' [`crate::usecases::UseCaseError`]), the per-address
//! limits, request ids, the metrics middleware and the OpenAPI document.

pub mod client_ip;
pub mod compat;
pub mod console;
pub mod dpop;
pub mod error;
pub mod extract;
pub mod metrics;
pub mod oauth;
pub mod rate_limit;
pub mod request_id;
pub mod resource;
pub mod routes;
pub mod schema;
