//! HTTP integration tests: the real server on port 0, over SQLite and (when
//! `TEST_DATABASE_URL` is set) Postgres. One test binary for the whole API: add modules
//! here rather than new files under `tests/`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod helpers;

mod abuse;
mod attacks;
mod auth;
mod cli;
mod compat;
mod console;
mod dpop;
mod errors;
mod events;
mod failover;
mod fuzz;
mod in_doubt;
mod inputs;
mod isolation;
mod keys;
mod logs;
mod maintenance;
mod memory;
mod oauth;
mod openapi;
mod outage;
mod races;
mod replicas;
mod root;
mod sessions;
mod shutdown;
