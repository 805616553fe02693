//! Prometheus metrics, served at `GET /metrics` in the text exposition format.
//!
//! Each [`crate::Services`] owns its registry (no process-global state), so several gateways in
//! one process, as in the tests, count apart. Route labels are the route patterns
//! (`/app/{app_id}/renew`), never the raw path, so the number of series stays bounded.

use keygate_sessions::{Rejection, RenewOutcome, Renewed, SessionError};
use keygate_store::Backend;
use keygate_tenants::{AppId, Tenants};

use crate::activity::Activity;
use crate::admission::Admission;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// Latency buckets, in seconds: a renew is about a millisecond, an argon2 check about 15.
const LATENCY_BUCKETS: &[f64] =
    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

/// What a renew came to, as `keygate_renew_total{outcome}` counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RenewCount {
    /// A new pair; the refresh token rotated (or, on an app that does not rotate, a new
    /// auth token).
    Rotated,
    /// The previous token came back within the grace and got the current one again.
    GraceRetry,
    /// A refresh token that was already used: its session (or subject) was revoked.
    ReuseDetected,
    /// A bad, expired, revoked or foreign token, or a bad request.
    Invalid,
    /// A failure on our side (database unavailable, a key that could not be read).
    Unavailable,
}

impl RenewCount {
    pub fn of(result: &Result<Renewed, SessionError>) -> Self {
        match result {
            Ok(renewed) => match renewed.outcome {
                RenewOutcome::Rotated | RenewOutcome::NotRotating => Self::Rotated,
                RenewOutcome::GraceRetry => Self::GraceRetry,
            },
            Err(err) => Self::of_error(err),
        }
    }

    pub fn of_error(err: &SessionError) -> Self {
        match err {
            SessionError::Rejected(Rejection::ReuseDetected) => Self::ReuseDetected,
            SessionError::Rejected(_) | SessionError::Dpop(_) | SessionError::Invalid(_) => {
                Self::Invalid
            }
            SessionError::Store(_) | SessionError::Keyring(_) | SessionError::Corrupt(_) => {
                Self::Unavailable
            }
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rotated => "rotated",
            Self::GraceRetry => "grace_retry",
            Self::ReuseDetected => "reuse_detected",
            Self::Invalid => "invalid",
            Self::Unavailable => "unavailable",
        }
    }
}

/// Why sessions were revoked, as `keygate_sessions_revoked_total{reason}` counts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevokeReason {
    /// `/logout`.
    Logout,
    /// `/revoke`, by the app.
    App,
    /// The root API or the CLI.
    Admin,
    /// A refresh token was reused.
    Reuse,
}

impl RevokeReason {
    fn as_str(self) -> &'static str {
        match self {
            Self::Logout => "logout",
            Self::App => "app",
            Self::Admin => "admin",
            Self::Reuse => "reuse",
        }
    }
}

/// Every metric of one gateway.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    http_requests: IntCounterVec,
    http_duration: HistogramVec,
    renews: IntCounterVec,
    sessions_opened: IntCounter,
    sessions_revoked: IntCounterVec,
    key_rotations: IntCounterVec,
    key_revocations: IntCounter,
    key_checks: IntCounterVec,
    key_hashes: IntGaugeVec,
    db_pool: IntGaugeVec,
    db_in_doubt: IntCounterVec,
    events: IntCounterVec,
    webhook_deliveries: IntCounterVec,
    app_requests: IntCounterVec,
    app_waiting: IntGaugeVec,
    admission: IntGaugeVec,
    activity: Activity,
}

/// Registers `metric` in `registry`; the names are constants, so this cannot clash.
fn register<M: prometheus::core::Collector + Clone + 'static>(registry: &Registry, metric: M) -> M {
    if let Err(err) = registry.register(Box::new(metric.clone())) {
        tracing::error!(error = %err, "could not register a metric");
    }
    metric
}

/// The metrics are built from constant names, help texts, labels and buckets: a failure is
/// a bug in this file, caught by every test that starts a gateway.
#[allow(clippy::expect_used)]
fn built<M>(metric: prometheus::Result<M>) -> M {
    metric.expect("metric definitions are constant and valid")
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let metric = built(IntCounterVec::new(Opts::new(name, help), labels));
    register(registry, metric)
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let metric = built(IntCounter::new(name, help));
    register(registry, metric)
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        #[cfg(target_os = "linux")]
        if let Err(err) =
            registry.register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))
        {
            tracing::error!(error = %err, "could not register the process metrics");
        }
        let http_duration = built(HistogramVec::new(
            HistogramOpts::new(
                "keygate_http_request_duration_seconds",
                "Time to answer an HTTP request, by route pattern, method and status.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["route", "method", "status"],
        ));
        let db_pool = built(IntGaugeVec::new(
            Opts::new(
                "keygate_db_pool_connections",
                "Database connections by pool (sqlite_writer, sqlite_reader, postgres) and \
                 state (in_use, idle, max).",
            ),
            &["pool", "state"],
        ));
        Self {
            http_requests: counter_vec(
                &registry,
                "keygate_http_requests_total",
                "HTTP requests answered, by route pattern, method and status.",
                &["route", "method", "status"],
            ),
            http_duration: register(&registry, http_duration),
            renews: counter_vec(
                &registry,
                "keygate_renew_total",
                "Renews by outcome: rotated, grace_retry, reuse_detected, invalid, unavailable.",
                &["outcome"],
            ),
            sessions_opened: counter(
                &registry,
                "keygate_sessions_opened_total",
                "Sessions opened by /sign.",
            ),
            sessions_revoked: counter_vec(
                &registry,
                "keygate_sessions_revoked_total",
                "Sessions revoked, by reason: logout, app, admin, reuse.",
                &["reason"],
            ),
            key_rotations: counter_vec(
                &registry,
                "keygate_key_rotations_total",
                "Signing-key rotations, by trigger: manual (root API or CLI) or scheduled.",
                &["trigger"],
            ),
            key_revocations: counter(
                &registry,
                "keygate_key_revocations_total",
                "Signing keys revoked.",
            ),
            key_checks: counter_vec(
                &registry,
                "keygate_key_checks_total",
                "App-key and root-key checks that passed, by how: keyed (HMAC-SHA-256), cache \
                 (an argon2id hash verified before), argon2 (argon2id ran).",
                &["by"],
            ),
            key_hashes: {
                let opts = Opts::new(
                    "keygate_key_hashes",
                    "Stored app-key and root-key hashes by form: keyed, or argon2id (made \
                     before the keyed form; upgraded when its key is next used).",
                );
                register(&registry, built(IntGaugeVec::new(opts, &["form"])))
            },
            db_pool: register(&registry, db_pool),
            db_in_doubt: counter_vec(
                &registry,
                "keygate_db_in_doubt_writes_total",
                "Writes whose answer was lost while they committed, by write (rotate, sign, \
                 revoke, touch, unrotate) and how they were resolved: committed, applied \
                 (had not committed; written then), superseded (had not committed; no longer \
                 applied), unresolved (answered 503 with the outcome unknown).",
                &["write", "outcome"],
            ),
            events: counter_vec(
                &registry,
                "keygate_audit_events_total",
                "Audit events recorded, by kind.",
                &["kind"],
            ),
            webhook_deliveries: counter_vec(
                &registry,
                "keygate_webhook_deliveries_total",
                "Webhook delivery attempts, by result: delivered, retry, failed.",
                &["result"],
            ),
            app_requests: counter_vec(
                &registry,
                "keygate_app_requests_total",
                "Requests authenticated as an app, by app id and result: admitted, \
                 rate_limited (over the app's quota: 429), shed (the gateway was saturated \
                 and its turn did not come: 503).",
                &["app", "result"],
            ),
            app_waiting: {
                let opts = Opts::new(
                    "keygate_app_requests_waiting",
                    "Requests of an app waiting for their turn, by app id (only apps with \
                     requests waiting).",
                );
                register(&registry, built(IntGaugeVec::new(opts, &["app"])))
            },
            admission: {
                let opts = Opts::new(
                    "keygate_admission_requests",
                    "App requests being worked on (in_flight), waiting for their turn \
                     (waiting), and the most worked on at once (max: admission_in_flight, 0 \
                     when fair admission is off).",
                );
                register(&registry, built(IntGaugeVec::new(opts, &["state"])))
            },
            activity: Activity::default(),
            registry,
        }
    }

    /// Counts one answered request.
    pub fn observe_request(&self, route: &str, method: &str, status: u16, seconds: f64) {
        let status = status_label(status);
        self.http_requests.with_label_values(&[route, method, status]).inc();
        self.http_duration.with_label_values(&[route, method, status]).observe(seconds);
    }

    /// Counts one renew of `app` at `now`, here and in its [`Activity`].
    pub fn renew(&self, app: AppId, count: RenewCount, now: i64) {
        self.renews.with_label_values(&[count.as_str()]).inc();
        self.activity.renew(app, count, now);
    }

    /// Each app's activity over the last hour (the console's overview).
    pub fn activity(&self) -> &Activity {
        &self.activity
    }

    pub fn session_opened(&self) {
        self.sessions_opened.inc();
    }

    pub fn sessions_revoked(&self, reason: RevokeReason, n: u64) {
        self.sessions_revoked.with_label_values(&[reason.as_str()]).inc_by(n);
    }

    pub fn key_rotated(&self, scheduled: bool) {
        self.key_rotations
            .with_label_values(&[if scheduled { "scheduled" } else { "manual" }])
            .inc();
    }

    pub fn key_revoked(&self) {
        self.key_revocations.inc();
    }

    pub fn event_recorded(&self, kind: &str) {
        self.events.with_label_values(&[kind]).inc();
    }

    /// The stored key hashes by form, `(argon2id, keyed)`, as last counted.
    pub fn key_hash_forms(&self, (argon2, keyed): (u64, u64)) {
        let gauge = |form: &str, n: u64| {
            self.key_hashes.with_label_values(&[form]).set(i64::try_from(n).unwrap_or(i64::MAX));
        };
        gauge("argon2id", argon2);
        gauge("keyed", keyed);
    }

    pub fn webhook_delivery(&self, result: &str) {
        self.webhook_deliveries.with_label_values(&[result]).inc();
    }

    /// The text exposition of every metric, after reading the values kept elsewhere (the
    /// app-key cache's counts, the pools).
    pub fn render(&self, tenants: &Tenants, db: &Backend, admission: &Admission) -> String {
        let checks = tenants.key_check_counts();
        catch_up(&self.key_checks.with_label_values(&["keyed"]), checks.keyed);
        catch_up(&self.key_checks.with_label_values(&["cache"]), checks.cached);
        catch_up(&self.key_checks.with_label_values(&["argon2"]), checks.argon2);
        self.record_pools(db);
        self.record_admission(admission);
        for count in db.in_doubt_counts() {
            let labels = [count.write.as_str(), count.outcome.as_str()];
            catch_up(&self.db_in_doubt.with_label_values(&labels), count.count);
        }
        let mut out = Vec::new();
        if let Err(err) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %err, "could not encode the metrics");
        }
        String::from_utf8(out).unwrap_or_default()
    }

    fn record_admission(&self, admission: &Admission) {
        let gauge = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        self.app_waiting.reset();
        for (app, counts) in admission.counts() {
            let app = app.to_string();
            for (result, total) in [
                ("admitted", counts.admitted),
                ("rate_limited", counts.rate_limited),
                ("shed", counts.shed),
            ] {
                if total > 0 {
                    catch_up(&self.app_requests.with_label_values(&[&app, result]), total);
                }
            }
            if counts.waiting > 0 {
                self.app_waiting.with_label_values(&[&app]).set(gauge(counts.waiting));
            }
        }
        let (in_flight, waiting) = admission.occupancy();
        self.admission.with_label_values(&["in_flight"]).set(gauge(in_flight));
        self.admission.with_label_values(&["waiting"]).set(gauge(waiting));
        self.admission.with_label_values(&["max"]).set(gauge(admission.limits().in_flight));
    }

    fn record_pools(&self, db: &Backend) {
        for pool in db.pool_stats() {
            let idle = i64::try_from(pool.idle).unwrap_or(i64::MAX);
            let size = i64::from(pool.size);
            self.db_pool.with_label_values(&[pool.name, "in_use"]).set(size - idle);
            self.db_pool.with_label_values(&[pool.name, "idle"]).set(idle);
            self.db_pool.with_label_values(&[pool.name, "max"]).set(i64::from(pool.max));
        }
    }
}

/// Raises a counter to `total`, a count kept by another crate.
fn catch_up(counter: &IntCounter, total: u64) {
    counter.inc_by(total.saturating_sub(counter.get()));
}

/// Statuses as labels, without allocating for the common ones.
fn status_label(status: u16) -> &'static str {
    match status {
        200 => "200",
        201 => "201",
        204 => "204",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        405 => "405",
        408 => "408",
        413 => "413",
        415 => "415",
        429 => "429",
        500 => "500",
        503 => "503",
        s if s < 300 => "2xx",
        s if s < 400 => "3xx",
        s if s < 500 => "4xx",
        _ => "5xx",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_become_bounded_labels() {
        assert_eq!(status_label(200), "200");
        assert_eq!(status_label(418), "4xx");
        assert_eq!(status_label(302), "3xx");
        assert_eq!(status_label(599), "5xx");
    }

    #[test]
    fn a_counter_catches_up_with_a_total_kept_elsewhere() {
        let metrics = Metrics::new();
        let hits = metrics.key_checks.with_label_values(&["keyed"]);
        catch_up(&hits, 5);
        catch_up(&hits, 7);
        catch_up(&hits, 7);
        assert_eq!(hits.get(), 7);
    }
}
