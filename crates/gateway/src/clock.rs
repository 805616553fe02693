//! The one place that reads the wall clock. Domain functions take `now` as a parameter; the
//! gateway's handlers and jobs read it from the [`Clock`] of their `Services`, which a test
//! can move ahead instead of sleeping.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Unix time in whole seconds, from the wall clock.
#[allow(clippy::disallowed_methods)] // the one allowed read (clippy.toml)
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The time of one gateway: the wall clock, or for tests the wall clock moved ahead by an
/// offset that only grows ([`Clock::advance`]).
#[derive(Debug, Clone, Default)]
pub struct Clock {
    ahead: Option<Arc<AtomicI64>>,
}

impl Clock {
    /// The wall clock.
    pub fn system() -> Self {
        Self::default()
    }

    /// The wall clock, which [`Clock::advance`] moves ahead; for tests.
    pub fn adjustable() -> Self {
        Self { ahead: Some(Arc::new(AtomicI64::new(0))) }
    }

    /// Unix time in whole seconds.
    pub fn now(&self) -> i64 {
        let ahead = self.ahead.as_ref().map_or(0, |ahead| ahead.load(Ordering::Relaxed));
        now().saturating_add(ahead)
    }

    /// Moves an adjustable clock `seconds` ahead (every clone of it); the wall clock does
    /// not move, and answers false.
    pub fn advance(&self, seconds: u32) -> bool {
        match &self.ahead {
            Some(ahead) => {
                ahead.fetch_add(i64::from(seconds), Ordering::Relaxed);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_adjustable_clock_moves_ahead_with_its_clones_and_the_wall_clock_does_not() {
        let wall = Clock::system();
        assert!(!wall.advance(60));
        assert!((wall.now() - now()).abs() <= 1);

        let clock = Clock::adjustable();
        let clone = clock.clone();
        assert!(clock.advance(3600));
        assert!((clone.now() - now() - 3600).abs() <= 1, "a clone sees the advance");
    }
}
