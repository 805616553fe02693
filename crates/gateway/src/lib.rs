//! keygate's gateway: configuration, startup, the HTTP API and the `keygate` CLI.

pub mod admin;
pub mod audit;
pub mod bootstrap;
pub mod changes;
pub mod cli;
pub mod client_ip;
pub mod clock;
pub mod compat;
pub mod config;
pub mod error;
pub mod extract;
pub mod janitor;
pub mod metrics;
pub mod rate_limit;
pub mod request_id;
mod routes;
pub mod startup;
pub mod webhooks;

pub use bootstrap::Services;
pub use config::Settings;
pub use startup::Application;
