//! keygate's gateway: configuration, startup, the HTTP API and the `keygate` CLI.
//!
//! The layers, each using only those below it (docs/architecture.md):
//! - [`cli`] and [`startup`]: the commands, and the server with its background jobs;
//! - [`http`]: routes, extractors, the HTTP error contract, the OpenAPI document;
//! - [`app`]: the use cases that the root API and the CLI share, with their own error;
//! - [`bootstrap`]: the [`Services`] of one process, over [`audit`] and [`metrics`].

pub mod activity;
pub mod admission;
pub mod audit;
pub mod bootstrap;
pub mod cache_coherence;
pub mod cli;
pub mod clock;
pub mod compat;
pub mod config;
pub mod http;
pub mod jobs;
pub mod metrics;
pub mod startup;
pub mod usecases;

pub use bootstrap::Services;
pub use config::Settings;
pub use startup::Application;
