//! keygate's persistence. This crate owns the connection, the migrations, [`StoreError`]
//! and every SQL statement, one module per aggregate; the domain crates (`tenants`,
//! `keyring`, `sessions`) keep their rules and call it. Each statement is written once over
//! [`Backend`]; only what truly differs stays per backend: the group-commit batchers,
//! NOTIFY/LISTEN, advisory locks and `BEGIN IMMEDIATE`.

pub mod apps;
mod backend;
mod error;
pub mod jobs;
#[cfg(feature = "test-support")]
pub mod testing;

pub use backend::{
    announce, redact_url, Arg, Backend, DbError, Kind, Legacy, PoolOptions, PoolStats, Row, Sql,
    SqlitePools, BUSY_TIMEOUT, CHANGES_CHANNEL,
};
pub use error::StoreError;
