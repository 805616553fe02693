//! keygate's persistence. This crate owns the connection, the migrations, [`StoreError`]
//! and every SQL statement, one module per aggregate; the domain crates (`tenants`,
//! `keyring`, `sessions`) keep their rules and call it. Each statement is written once over
//! [`Backend`]; only what truly differs stays per backend: the group-commit batchers,
//! NOTIFY/LISTEN, advisory locks and `BEGIN IMMEDIATE`.

pub mod apps;
pub mod audit;
mod backend;
pub mod changes;
mod database_url;
mod error;
mod hosts;
pub mod in_doubt;
pub mod jobs;
mod proofs;
pub mod sessions;
pub mod signing_keys;
#[cfg(feature = "test-support")]
pub mod testing;

pub use backend::{
    Arg, Backend, DbError, Kind, PoolOptions, PoolStats, Row, Sql, BUSY_TIMEOUT, CHANGES_CHANNEL,
    IN_DOUBT_TIMEOUT,
};
pub use database_url::DatabaseUrl;
pub use error::{chain, StoreError};
