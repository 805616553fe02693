//! The one place that reads the wall clock. Domain functions take `now` as a parameter.

use std::time::{SystemTime, UNIX_EPOCH};

/// Unix time in whole seconds.
#[allow(clippy::disallowed_methods)] // the one allowed read (clippy.toml)
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
