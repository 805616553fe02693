//! Per-address limits on failed app-key and root-key checks.
//!
//! Failures are counted per client address ([`crate::http::client_ip`]) with a keyed GCRA limiter
//! from `governor`: `auth_failure_burst` failures at once, then one more every
//! `60 / auth_failures_per_minute` seconds. Once an address has spent its budget it is put
//! on a small "spent" table, and every authentication attempt from it is answered 429 with
//! `Retry-After` before any key is hashed or any row is read, until the limiter would
//! accept another failure. A correct key from a limited address is refused too: the
//! address is guessing keys, and answering it would tell it which guess was right.
//!
//! Successes are not counted and cost one atomic load while no address is limited, or one
//! read-locked hash lookup while some are.
//!
//! IPv6 clients are counted per /64, the usual smallest allocation to one subscriber: a
//! single host can pick any of the 2^64 addresses of its network.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use actix_web::{web, HttpRequest};
use governor::clock::{Clock, DefaultClock, Reference};
use governor::middleware::StateInformationMiddleware;
use governor::nanos::Nanos;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};
use keygate_tenants::AuthError;

use crate::http::client_ip::client_ip;
use crate::http::error::ApiError;

/// Above this many tracked addresses a failure also sweeps stale ones, without waiting
/// for the periodic sweep.
const SOFT_CAP: usize = 100_000;
/// The least time between two sweeps made on the request path.
const CROWDED_SWEEP_GAP: Duration = Duration::from_secs(1);

type FailureLimiter<C> =
    RateLimiter<IpAddr, DashMapStateStore<IpAddr>, C, StateInformationMiddleware>;

/// Counts failed authentication attempts per client address.
pub struct AuthLimiter<C: Clock = DefaultClock> {
    failures: FailureLimiter<C>,
    /// Addresses that spent their budget, and until when.
    spent: RwLock<HashMap<IpAddr, C::Instant>>,
    /// `spent.len()`, readable without the lock: the fast path of [`Self::check`].
    spent_len: AtomicUsize,
    sweeping: AtomicBool,
    /// When stale entries were last forgotten.
    last_crowded_sweep: Mutex<Option<C::Instant>>,
    clock: C,
}

impl<C: Clock> std::fmt::Debug for AuthLimiter<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthLimiter")
            .field("tracked", &self.failures.len())
            .field("limited", &self.spent_len.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl AuthLimiter {
    /// `per_minute` failures a minute on average, `burst` at once; `None` when `per_minute`
    /// is 0 (limiting off).
    pub fn from_settings(per_minute: u32, burst: u32) -> Option<Self> {
        let per_minute = NonZeroU32::new(per_minute)?;
        let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
        Some(Self::with_clock(
            Quota::per_minute(per_minute).allow_burst(burst),
            DefaultClock::default(),
        ))
    }
}

impl<C: Clock + Clone> AuthLimiter<C> {
    pub fn with_clock(quota: Quota, clock: C) -> Self {
        let failures = RateLimiter::dashmap_with_clock(quota, clock.clone())
            .with_middleware::<StateInformationMiddleware>();
        Self {
            failures,
            spent: RwLock::new(HashMap::new()),
            spent_len: AtomicUsize::new(0),
            sweeping: AtomicBool::new(false),
            last_crowded_sweep: Mutex::new(None),
            clock,
        }
    }

    /// Whether `ip` may attempt to authenticate; otherwise the whole seconds to wait (at
    /// least 1).
    pub fn check(&self, ip: IpAddr) -> Result<(), u64> {
        if self.spent_len.load(Ordering::Acquire) == 0 {
            return Ok(());
        }
        let key = limit_key(ip);
        let Some(until) =
            self.spent.read().unwrap_or_else(PoisonError::into_inner).get(&key).copied()
        else {
            return Ok(());
        };
        let now = self.clock.now();
        if until <= now {
            return Ok(());
        }
        Err(whole_seconds(until.duration_since(now).into()))
    }

    /// Counts a failed attempt from `ip`. Returns the seconds `ip` must now wait, when this
    /// failure spent its budget.
    pub fn record_failure(&self, ip: IpAddr) -> Option<u64> {
        let key = limit_key(ip);
        let now = self.clock.now();
        let until = match self.failures.check_key(&key) {
            // This failure took the last cell: the next one is allowed once a cell has
            // been replenished, which is at most one interval away.
            Ok(snapshot) if snapshot.remaining_burst_capacity() == 0 => {
                now + Nanos::from(snapshot.quota().replenish_interval())
            }
            Ok(_) => {
                self.sweep_if_crowded();
                return None;
            }
            // Attempts that were already under way when the budget ran out.
            Err(not_until) => not_until.earliest_possible(),
        };
        {
            let mut spent = self.spent.write().unwrap_or_else(PoisonError::into_inner);
            spent.insert(key, until);
            self.spent_len.store(spent.len(), Ordering::Release);
        }
        self.sweep_if_crowded();
        Some(whole_seconds(until.duration_since(now).into()))
    }

    /// Forgets addresses whose state is back to fresh, and spent entries that ran out, and
    /// gives the memory back.
    pub fn sweep(&self) {
        self.forget_stale(true);
    }

    fn forget_stale(&self, shrink: bool) {
        self.failures.retain_recent();
        if shrink {
            self.failures.shrink_to_fit();
        }
        let now = self.clock.now();
        let mut spent = self.spent.write().unwrap_or_else(PoisonError::into_inner);
        spent.retain(|_, until| *until > now);
        if shrink {
            spent.shrink_to_fit();
        }
        self.spent_len.store(spent.len(), Ordering::Release);
        *self.last_crowded_sweep.lock().unwrap_or_else(PoisonError::into_inner) = Some(now);
    }

    /// Addresses with failures on record.
    pub fn tracked(&self) -> usize {
        self.failures.len()
    }

    /// Addresses currently refused.
    pub fn limited(&self) -> usize {
        let now = self.clock.now();
        let spent = self.spent.read().unwrap_or_else(PoisonError::into_inner);
        spent.values().filter(|until| **until > now).count()
    }

    /// A sweep on the request path, when crowded: at most one a second, so that a flood of
    /// cheap failures from many addresses cannot make every failure a full sweep.
    fn sweep_if_crowded(&self) {
        if self.failures.len() <= SOFT_CAP || self.sweeping.swap(true, Ordering::AcqRel) {
            return;
        }
        let now = self.clock.now();
        let last = *self.last_crowded_sweep.lock().unwrap_or_else(PoisonError::into_inner);
        let due = last.is_none_or(|at| now.duration_since(at) >= Nanos::from(CROWDED_SWEEP_GAP));
        if due {
            self.forget_stale(false);
        }
        self.sweeping.store(false, Ordering::Release);
    }
}

/// Sweeps `limiter` every `every` for as long as it is in use.
pub fn sweeper(
    limiter: &web::Data<AuthLimiter>,
    every: Duration,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let limiter = Arc::downgrade(&limiter.clone().into_inner());
    async move {
        let mut ticker = tokio::time::interval(every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        loop {
            ticker.tick().await;
            let Some(limiter) = limiter.upgrade() else { return };
            limiter.sweep();
        }
    }
}

/// The bucket an address is counted in: IPv4 addresses one by one, IPv6 by /64.
fn limit_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(prefix))
        }
        v4 => v4,
    }
}

fn whole_seconds(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

/// One authentication attempt: where it comes from, and the limiter it answers to.
#[derive(Debug)]
pub struct Attempt {
    limiter: Option<web::Data<AuthLimiter>>,
    ip: IpAddr,
}

impl Attempt {
    /// The attempt `req` makes, by its client address.
    pub fn of(req: &HttpRequest) -> Self {
        Self {
            limiter: req.app_data::<web::Data<AuthLimiter>>().cloned(),
            ip: client_ip(req).unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
        }
    }

    /// 429 when the address has spent its budget of failures.
    pub fn admit(&self) -> Result<(), ApiError> {
        match &self.limiter {
            Some(limiter) => limiter.check(self.ip).map_err(ApiError::TooManyRequests),
            None => Ok(()),
        }
    }

    /// Whether the address may still try a key: asked again just before a key is hashed.
    pub fn admitted(&self) -> bool {
        self.admit().is_ok()
    }

    /// The answer to an authentication attempt: a denial counts against the address and
    /// becomes `denied`; an attempt refused at the last moment becomes 429.
    pub fn settle<T>(
        &self,
        outcome: Result<T, AuthError>,
        denied: ApiError,
    ) -> Result<T, ApiError> {
        match outcome {
            Ok(value) => Ok(value),
            Err(AuthError::Denied) => {
                if let Some(limiter) = &self.limiter {
                    if let Some(wait) = limiter.record_failure(self.ip) {
                        tracing::warn!(
                            client = %self.ip,
                            retry_after = wait,
                            "too many failed authentication attempts; refusing this address for now"
                        );
                    }
                }
                Err(denied)
            }
            Err(AuthError::NotAdmitted) => {
                Err(self.admit().err().unwrap_or(ApiError::TooManyRequests(1)))
            }
            Err(other) => Err(other.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use governor::clock::FakeRelativeClock;

    use super::*;

    fn limiter(per_minute: u32, burst: u32) -> (AuthLimiter<FakeRelativeClock>, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        let quota = Quota::per_minute(NonZeroU32::new(per_minute).unwrap())
            .allow_burst(NonZeroU32::new(burst).unwrap());
        (AuthLimiter::with_clock(quota, clock.clone()), clock)
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn the_burst_is_allowed_then_one_failure_per_interval() {
        let (limiter, clock) = limiter(10, 3);
        let attacker = ip("203.0.113.9");
        assert_eq!(limiter.record_failure(attacker), None);
        assert_eq!(limiter.record_failure(attacker), None);
        assert!(limiter.check(attacker).is_ok());
        assert_eq!(limiter.record_failure(attacker), Some(6), "the third spends the budget");
        assert_eq!(limiter.check(attacker), Err(6));
        assert!(limiter.check(ip("203.0.113.10")).is_ok(), "other addresses are unaffected");

        clock.advance(Duration::from_millis(5_500));
        assert_eq!(limiter.check(attacker), Err(1), "rounded up, never 0");
        clock.advance(Duration::from_millis(500));
        assert!(limiter.check(attacker).is_ok());
        assert_eq!(limiter.record_failure(attacker), Some(6), "one more, then limited again");
        assert!(limiter.check(attacker).is_err());
    }

    #[test]
    fn ipv6_is_counted_per_64() {
        let (limiter, _) = limiter(10, 1);
        assert_eq!(limiter.record_failure(ip("2001:db8:1:2::1")), Some(6));
        assert!(limiter.check(ip("2001:db8:1:2:ffff::9")).is_err());
        assert!(limiter.check(ip("2001:db8:1:3::1")).is_ok());
        assert_eq!(limiter.record_failure(ip("::ffff:192.0.2.1")), Some(6));
        assert!(limiter.check(ip("192.0.2.1")).is_err(), "mapped IPv4 is IPv4");
    }

    #[test]
    fn sweeping_forgets_addresses_that_are_back_to_fresh() {
        let (limiter, clock) = limiter(60, 2);
        for n in 0..1000u32 {
            let address = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n));
            limiter.record_failure(address);
            limiter.record_failure(address);
        }
        assert_eq!(limiter.tracked(), 1000);
        assert_eq!(limiter.limited(), 1000);
        limiter.sweep();
        assert_eq!(limiter.tracked(), 1000, "nothing is stale yet");

        clock.advance(Duration::from_secs(3));
        limiter.sweep();
        assert_eq!(limiter.tracked(), 0);
        assert_eq!(limiter.limited(), 0);
        assert_eq!(limiter.spent_len.load(Ordering::Relaxed), 0);
    }
}
