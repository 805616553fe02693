//! Tenant isolation: each app's request quota, and fair admission of app requests when the
//! gateway is saturated.
//!
//! Every request that an app key or an app's client credentials authenticate passes here
//! once authenticated, before it reads or changes anything:
//!
//! 1. **Quota.** An app with `requests_per_second` > 0 has a GCRA limiter (`governor`):
//!    `requests_burst` at once, then one more every `1 / requests_per_second` seconds. Over
//!    it the request is refused 429 with `Retry-After`. The count is this gateway's own:
//!    with several gateways, each allows the app its quota (docs/operations.md says why).
//! 2. **Admission.** At most `admission_in_flight` app requests are worked on at once. When
//!    all slots are taken, a request waits in its app's queue; each slot that frees goes to
//!    the next app in turn (round-robin between the apps that wait, first come first served
//!    within one), so an app that floods the gateway holds one turn in each round, not the
//!    whole queue. A request that finds its app's queue full (`admission_queue`), or that
//!    waits longer than `admission_wait_ms`, is shed: 503 with `Retry-After`.
//!
//! A refusal that would be answered at once (over the quota, or a full queue) is held for
//! half to all of `refusal_delay_ms` first (at random, so that the clients it slows come back
//! spread out), holding nothing but a timer: a client in a retry loop that
//! ignores `Retry-After` is slowed to one attempt per pause and connection, instead of
//! making the gateway spend its CPU on refusals.
//!
//! A refused or shed request has changed nothing: the quota and the queue come before any
//! session is read or written, so the client's refresh token is still good.
//!
//! The counts per app (admitted, refused by quota, shed) are kept here, with atomics, and
//! read by `/metrics` ([`crate::metrics`]).

use std::collections::{HashMap, VecDeque};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use keygate_tenants::{App, AppId};
use tokio::sync::oneshot;

/// Seconds between two log lines about one app's quota, or about shedding.
const LOG_EVERY: i64 = 60;

/// How the gateway admits app requests: from `admission_in_flight`, `admission_queue` and
/// `admission_wait_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// App requests worked on at once; 0 turns fair admission off (quotas still apply).
    pub in_flight: usize,
    /// Requests one app may have waiting for a slot; a request beyond them is shed.
    pub queue: usize,
    /// The longest a request waits for a slot before it is shed.
    pub max_wait: Duration,
    /// How long a refusal that would otherwise be answered at once (over the quota, or a
    /// full queue) is held first: a client that retries at once, whatever `Retry-After`
    /// says, then makes one attempt per pause and connection instead of as many as the
    /// gateway can refuse.
    pub refusal_delay: Duration,
}

/// Why a request was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The app is over its quota; it may try again after this many seconds (at least 1).
    RateLimited(u64),
    /// The gateway is saturated and this request's turn did not come: its app's queue was
    /// full, or it waited `max_wait`.
    Shed,
}

/// What one app has been answered here, since this gateway started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AppCounts {
    pub admitted: u64,
    pub rate_limited: u64,
    pub shed: u64,
    /// Requests waiting for a slot now.
    pub waiting: usize,
}

/// Quotas and fair admission for every app; see the module's description.
#[derive(Debug)]
pub struct Admission {
    limits: Limits,
    apps: RwLock<HashMap<AppId, Arc<AppLoad>>>,
    queue: Mutex<Queue>,
    /// When shedding was last logged ([`Self::seconds`]).
    shed_logged: AtomicI64,
    /// The start of [`Self::seconds`].
    started: Instant,
}

/// A quota, `(per second, burst)`, and the limiter made for it.
type Allowance = ((u32, u32), Arc<DefaultDirectRateLimiter>);

/// One app's quota and counts.
#[derive(Debug)]
struct AppLoad {
    /// The limiter of the app's current quota.
    quota: Mutex<Option<Allowance>>,
    admitted: AtomicU64,
    rate_limited: AtomicU64,
    shed: AtomicU64,
    /// When its being over quota was last logged ([`Admission::seconds`]).
    limited_logged: AtomicI64,
}

impl Default for AppLoad {
    fn default() -> Self {
        Self {
            quota: Mutex::new(None),
            admitted: AtomicU64::new(0),
            rate_limited: AtomicU64::new(0),
            shed: AtomicU64::new(0),
            limited_logged: AtomicI64::new(-LOG_EVERY),
        }
    }
}

/// The slots and the waiting requests.
#[derive(Debug, Default)]
struct Queue {
    in_flight: usize,
    /// Each app's waiting requests, oldest first. While a slot is free nobody waits: a slot
    /// is freed only when no live request waits for it.
    waiting: HashMap<AppId, VecDeque<oneshot::Sender<Permit>>>,
    /// The apps that have requests waiting, in the order their turns come.
    turns: VecDeque<AppId>,
}

/// A slot: held while the request is worked on, handed to the next waiting request (or
/// freed) when dropped.
#[derive(Debug)]
pub struct Permit {
    owner: Option<Arc<Admission>>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(owner) = self.owner.take() {
            owner.hand_over();
        }
    }
}

/// Whether a line logged at `last` may be logged again at `now`; claims the turn if so.
fn due(last: &AtomicI64, now: i64) -> bool {
    let seen = last.load(Ordering::Relaxed);
    now - seen >= LOG_EVERY
        && last.compare_exchange(seen, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
}

impl Admission {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            apps: RwLock::new(HashMap::new()),
            queue: Mutex::new(Queue::default()),
            shed_logged: AtomicI64::new(-LOG_EVERY),
            started: Instant::now(),
        }
    }

    /// Whole seconds since this was made: when lines were logged.
    fn seconds(&self) -> i64 {
        i64::try_from(self.started.elapsed().as_secs()).unwrap_or(i64::MAX)
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Admits one request of `app`: checks its quota, then waits for a slot (when fair
    /// admission is on). Holding the permit holds the slot.
    pub async fn admit(self: &Arc<Self>, app: &App) -> Result<Permit, Refusal> {
        let load = self.load_of(app.app_id);
        if let Some(quota) = app.settings.request_quota() {
            if let Err(wait) = load.spend(quota) {
                load.rate_limited.fetch_add(1, Ordering::Relaxed);
                if due(&load.limited_logged, self.seconds()) {
                    tracing::warn!(
                        app = %app.app_id,
                        requests_per_second = quota.0,
                        requests_burst = quota.1,
                        "app over its request quota: answering 429 (logged at most once a minute)"
                    );
                }
                self.hold_refusal().await;
                return Err(Refusal::RateLimited(wait));
            }
        }
        let permit = self.slot(app.app_id).await;
        match &permit {
            Ok(_) => load.admitted.fetch_add(1, Ordering::Relaxed),
            Err(_) => {
                if due(&self.shed_logged, self.seconds()) {
                    let waiting = self.lock_queue().waiting.values().map(live).sum::<usize>();
                    tracing::warn!(
                        in_flight = self.limits.in_flight,
                        waiting,
                        "gateway saturated: shedding app requests with 503 (logged at most once a minute)"
                    );
                }
                load.shed.fetch_add(1, Ordering::Relaxed)
            }
        };
        permit
    }

    /// Holds a refusal for half to all of `refusal_delay`, at random: the clients it slows
    /// come back spread out, not all at once.
    async fn hold_refusal(&self) {
        let delay = self.limits.refusal_delay;
        if !delay.is_zero() {
            tokio::time::sleep(delay.mul_f64(0.5 + rand::random::<f64>() / 2.0)).await;
        }
    }

    fn load_of(&self, app_id: AppId) -> Arc<AppLoad> {
        if let Some(load) = self.apps.read().unwrap_or_else(PoisonError::into_inner).get(&app_id) {
            return load.clone();
        }
        let mut apps = self.apps.write().unwrap_or_else(PoisonError::into_inner);
        apps.entry(app_id).or_default().clone()
    }

    fn lock_queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A slot for a request of `app_id`: at once when one is free, otherwise in its app's
    /// turn, within `max_wait`.
    async fn slot(self: &Arc<Self>, app_id: AppId) -> Result<Permit, Refusal> {
        if self.limits.in_flight == 0 {
            return Ok(Permit { owner: None });
        }
        let mut turn = match self.enqueue(app_id) {
            Ok(Some(turn)) => turn,
            Ok(None) => return Ok(Permit { owner: Some(self.clone()) }),
            Err(full) => {
                self.hold_refusal().await;
                return Err(full);
            }
        };
        match tokio::time::timeout(self.limits.max_wait, &mut turn).await {
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(_)) => Err(Refusal::Shed),
            Err(_) => {
                // The turn may have come just now: then the slot is this request's.
                turn.close();
                turn.try_recv().map_err(|_| Refusal::Shed)
            }
        }
    }

    /// Takes a free slot (`None`: the caller holds it now), or a place in the app's queue
    /// (the receiver of its turn); `Shed` when the app's queue is full.
    fn enqueue(&self, app_id: AppId) -> Result<Option<oneshot::Receiver<Permit>>, Refusal> {
        let mut queue = self.lock_queue();
        if queue.in_flight < self.limits.in_flight {
            queue.in_flight += 1;
            return Ok(None);
        }
        let Queue { waiting, turns, .. } = &mut *queue;
        let mine = waiting.entry(app_id).or_default();
        let listed = !mine.is_empty();
        if mine.len() >= self.limits.queue {
            // Requests that gave up leave their place behind; a full queue is full of live
            // ones.
            mine.retain(|waiter| !waiter.is_closed());
            if mine.len() >= self.limits.queue {
                return Err(Refusal::Shed);
            }
        }
        let (tx, rx) = oneshot::channel();
        if !listed {
            turns.push_back(app_id);
        }
        mine.push_back(tx);
        Ok(Some(rx))
    }

    /// Gives a freed slot to the next live waiting request, in the next app's turn; frees
    /// it when nobody waits.
    fn hand_over(self: &Arc<Self>) {
        let mut permit = Permit { owner: Some(self.clone()) };
        loop {
            // Sent outside the lock; the slot stays taken while it is handed over.
            let next = {
                let mut queue = self.lock_queue();
                match queue.next_waiter() {
                    Some(next) => next,
                    None => {
                        // Nobody waits: the slot is free. Disarmed, so that dropping it
                        // frees nothing more.
                        queue.in_flight -= 1;
                        permit.owner = None;
                        return;
                    }
                }
            };
            match next.send(permit) {
                Ok(()) => return,
                // That request gave up just now (timed out, or its client went away).
                Err(returned) => permit = returned,
            }
        }
    }

    /// Each app's counts, for `/metrics`.
    pub fn counts(&self) -> Vec<(AppId, AppCounts)> {
        let waiting: HashMap<AppId, usize> =
            self.lock_queue().waiting.iter().map(|(id, q)| (*id, live(q))).collect();
        let apps = self.apps.read().unwrap_or_else(PoisonError::into_inner);
        apps.iter()
            .map(|(id, load)| {
                let counts = AppCounts {
                    admitted: load.admitted.load(Ordering::Relaxed),
                    rate_limited: load.rate_limited.load(Ordering::Relaxed),
                    shed: load.shed.load(Ordering::Relaxed),
                    waiting: waiting.get(id).copied().unwrap_or(0),
                };
                (*id, counts)
            })
            .collect()
    }

    /// Requests being worked on, and requests waiting for a slot.
    pub fn occupancy(&self) -> (usize, usize) {
        let queue = self.lock_queue();
        (queue.in_flight, queue.waiting.values().map(live).sum())
    }
}

/// The requests of a queue that still wait (not those that gave up).
fn live(queue: &VecDeque<oneshot::Sender<Permit>>) -> usize {
    queue.iter().filter(|waiter| !waiter.is_closed()).count()
}

impl Queue {
    /// The first live waiting request of the next app in turn, which then goes to the back
    /// of the round if more of its requests wait; requests that gave up are dropped on the
    /// way, and do not cost their app its turn.
    fn next_waiter(&mut self) -> Option<oneshot::Sender<Permit>> {
        while let Some(app_id) = self.turns.pop_front() {
            let Some(mine) = self.waiting.get_mut(&app_id) else { continue };
            let mut next = None;
            while let Some(waiter) = mine.pop_front() {
                if !waiter.is_closed() {
                    next = Some(waiter);
                    break;
                }
            }
            if mine.is_empty() {
                self.waiting.remove(&app_id);
            } else {
                self.turns.push_back(app_id);
            }
            if next.is_some() {
                return next;
            }
        }
        None
    }
}

impl AppLoad {
    /// Spends one request of `quota`, or says in how many whole seconds one may be spent.
    fn spend(&self, quota: (u32, u32)) -> Result<(), u64> {
        let limiter = {
            let mut current = self.quota.lock().unwrap_or_else(PoisonError::into_inner);
            match &*current {
                Some((made_for, limiter)) if *made_for == quota => limiter.clone(),
                // New, or the app's settings changed: a fresh allowance.
                _ => {
                    let (rate, burst) = quota;
                    let rate = NonZeroU32::new(rate).unwrap_or(NonZeroU32::MIN);
                    let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
                    let limiter =
                        Arc::new(RateLimiter::direct(Quota::per_second(rate).allow_burst(burst)));
                    *current = Some((quota, limiter.clone()));
                    limiter
                }
            }
        };
        limiter.check().map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
        })
    }
}

#[cfg(test)]
mod tests {
    use keygate_tenants::AppSettings;

    use super::*;

    fn app(rate: i64, burst: i64) -> App {
        let mut settings = AppSettings::defaults_for("demo");
        settings.requests_per_second = rate;
        settings.requests_burst = burst;
        App { app_id: AppId::new(), name: "demo".into(), settings, created_at: 0, updated_at: 0 }
    }

    fn admission(in_flight: usize, queue: usize, max_wait: Duration) -> Arc<Admission> {
        let refusal_delay = Duration::ZERO;
        Arc::new(Admission::new(Limits { in_flight, queue, max_wait, refusal_delay }))
    }

    #[tokio::test]
    async fn the_burst_passes_then_the_quota_refuses_with_a_wait() {
        let gate = admission(0, 0, Duration::ZERO);
        let limited = app(1, 3);
        for _ in 0..3 {
            gate.admit(&limited).await.expect("within the burst");
        }
        assert_eq!(gate.admit(&limited).await.unwrap_err(), Refusal::RateLimited(1));
        let other = app(0, 0);
        for _ in 0..100 {
            gate.admit(&other).await.expect("no quota, no limit");
        }
        let counts: HashMap<_, _> = gate.counts().into_iter().collect();
        assert_eq!(counts[&limited.app_id].admitted, 3);
        assert_eq!(counts[&limited.app_id].rate_limited, 1);
        assert_eq!(counts[&other.app_id].admitted, 100);
    }

    #[tokio::test]
    async fn a_changed_quota_takes_effect_at_once() {
        let gate = admission(0, 0, Duration::ZERO);
        let mut limited = app(1, 1);
        gate.admit(&limited).await.unwrap();
        assert!(gate.admit(&limited).await.is_err());
        limited.settings.requests_per_second = 0;
        gate.admit(&limited).await.expect("the quota was lifted");
        limited.settings.requests_per_second = 100;
        limited.settings.requests_burst = 2;
        gate.admit(&limited).await.unwrap();
        gate.admit(&limited).await.unwrap();
        assert!(gate.admit(&limited).await.is_err(), "a burst of 2");
    }

    #[tokio::test]
    async fn freed_slots_go_to_the_waiting_apps_in_turn() {
        let gate = admission(1, 100, Duration::from_secs(5));
        let (flood, other) = (app(0, 0), app(0, 0));
        let held = gate.admit(&flood).await.unwrap();
        let (tx, mut order) = tokio::sync::mpsc::unbounded_channel();
        let mut tasks = Vec::new();
        // The flooding app queues five requests before the other app queues one.
        for (n, a) in [&flood, &flood, &flood, &flood, &flood, &other].into_iter().enumerate() {
            let (waiter, a, tx) = (gate.clone(), a.clone(), tx.clone());
            tasks.push(tokio::spawn(async move {
                let permit = waiter.admit(&a).await.unwrap();
                tx.send(n).unwrap();
                tokio::task::yield_now().await;
                drop(permit);
            }));
            while gate.occupancy().1 < n + 1 {
                tokio::task::yield_now().await;
            }
        }
        assert_eq!(gate.occupancy(), (1, 6));
        drop(held);
        for task in tasks {
            task.await.unwrap();
        }
        let mut served = Vec::new();
        while let Ok(n) = order.try_recv() {
            served.push(n);
        }
        assert_eq!(served, [0, 5, 1, 2, 3, 4], "the other app's turn comes second, not last");
        assert_eq!(gate.occupancy(), (0, 0), "every slot is free again");
    }

    #[tokio::test]
    async fn a_full_queue_or_a_long_wait_sheds() {
        let gate = admission(1, 1, Duration::from_millis(50));
        let a = app(0, 0);
        let held = gate.admit(&a).await.unwrap();
        let waiter = {
            let (gate, a) = (gate.clone(), a.clone());
            tokio::spawn(async move { gate.admit(&a).await.map(drop) })
        };
        while gate.occupancy().1 < 1 {
            tokio::task::yield_now().await;
        }
        assert_eq!(gate.admit(&a).await.unwrap_err(), Refusal::Shed, "the queue of 1 is full");
        assert_eq!(waiter.await.unwrap().unwrap_err(), Refusal::Shed, "waited 50 ms");
        assert_eq!(gate.occupancy(), (1, 0), "a request that gave up no longer waits");
        drop(held);
        assert_eq!(gate.occupancy(), (0, 0), "the slot is free, once");
        let counts: HashMap<_, _> = gate.counts().into_iter().collect();
        assert_eq!((counts[&a.app_id].admitted, counts[&a.app_id].shed), (1, 2));
    }

    #[tokio::test]
    async fn a_freed_slot_skips_requests_that_gave_up() {
        let gate = admission(1, 2, Duration::from_secs(10));
        let a = app(0, 0);
        let held = gate.admit(&a).await.unwrap();
        let spawn = || {
            let (gate, a) = (gate.clone(), a.clone());
            tokio::spawn(async move { gate.admit(&a).await.map(drop) })
        };
        let gave_up = spawn();
        while gate.occupancy().1 < 1 {
            tokio::task::yield_now().await;
        }
        gave_up.abort();
        while gate.occupancy().1 > 0 {
            tokio::task::yield_now().await;
        }
        let next = spawn();
        while gate.occupancy().1 < 1 {
            tokio::task::yield_now().await;
        }
        assert_eq!(gate.lock_queue().waiting[&a.app_id].len(), 2, "behind the one that gave up");
        drop(held);
        next.await.unwrap().expect("the freed slot went to the live request");
        assert_eq!(gate.occupancy(), (0, 0));
    }
}
