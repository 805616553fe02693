//! The use cases of keygate's administration, shared by the root API and the CLI so that
//! both behave the same: apps, app keys, signing keys, sessions, audit events, webhooks,
//! and the background jobs. They answer a [`UseCaseError`], which the HTTP layer maps to its
//! status codes and the CLI prints.

pub mod admin;
mod error;
pub mod maintenance;
pub mod master_key;
pub mod webhooks;

pub use error::{chain, Cause, UseCaseError};

/// Serializes the one-time secret of an answer as its text (`serialize_with`): an answer
/// shows it once, while its `Debug` never does.
fn expose_secret<S: serde::Serializer>(
    secret: &keygate_tenants::Secret,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(secret.expose())
}
