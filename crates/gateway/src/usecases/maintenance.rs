//! The background jobs, run periodically: scheduled key rotation (docs/architecture.md), then
//! clean-up of sessions that ended long ago and of retired keys whose tokens can no longer
//! be valid.
//!
//! With several gateways on one Postgres, each pass runs on one of them only: the one that
//! takes a Postgres advisory lock for the pass (`pg_try_advisory_xact_lock`). The others
//! skip that pass. On SQLite there is one process, and it runs every pass.

use std::sync::Arc;
use std::time::Duration;

use super::admin::{self, Actor};
use super::{chain, UseCaseError};
use crate::bootstrap::Services;

/// What one pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    /// Apps whose signing keys rotated on schedule.
    pub rotated: u64,
    /// Sessions deleted.
    pub sessions: u64,
    /// Retired keys deleted.
    pub keys: u64,
}

/// Seconds a change-log row is kept (see `crate::changes`).
pub const CHANGE_LOG_KEPT: i64 = 3600;

/// One pass at `now`, on this gateway, whatever the others do.
pub async fn run_once(services: &Services, now: i64) -> Result<Report, UseCaseError> {
    let rotated = rotate_due(services, now).await?;
    let sessions = services.sessions.purge(now).await?;
    if services.audit_retention > 0 {
        let cutoff = now.saturating_sub(services.audit_retention);
        let events = services.audit.store().purge(cutoff).await?;
        if events > 0 {
            tracing::info!(events, "maintenance deleted audit events past their retention");
        }
    }
    // The change log is read every second; an hour is plenty for any gateway to catch up.
    let changes = services.db.purge_changes(now.saturating_sub(CHANGE_LOG_KEPT)).await?;
    tracing::debug!(changes, "maintenance deleted old change-log rows");
    let mut keys = 0;
    for app in services.tenants.list_apps().await? {
        // A retired key signed nothing after it retired, so its last token expires at most
        // this long after that.
        let longest = app.settings.token_expire.max(app.settings.refresh_expire);
        keys += services.keyring.purge_retired(app.app_id, now - longest).await?;
    }
    Ok(Report { rotated, sessions, keys })
}

/// Scheduled rotation: every app whose active key has signed for its `rotation_period`
/// promotes its next key, provided that key has been published for at least the JWKS
/// `max-age`, so that no verifier caching the JWKS meets an unknown kid. Returns how many
/// apps rotated. One app's failure is logged and does not hold up the others.
pub async fn rotate_due(services: &Services, now: i64) -> Result<u64, UseCaseError> {
    let min_published = i64::try_from(services.jwks_max_age).unwrap_or(i64::MAX);
    let mut rotated = 0;
    for app in services.tenants.list_apps().await? {
        let period = app.settings.rotation_period;
        match services.keyring.rotate_if_due(app.app_id, period, min_published, now).await {
            Ok(Some(rotation)) => {
                rotated += 1;
                admin::key_rotated(services, app.app_id, &rotation, Actor::Scheduler).await;
                tracing::info!(
                    app_id = %app.app_id,
                    active = %rotation.active_key_id,
                    retired = %rotation.retired_key_id,
                    next = %rotation.next_key_id,
                    "signing keys rotated on schedule"
                );
            }
            Ok(None) => {}
            Err(e) => {
                let e = UseCaseError::from(e);
                tracing::warn!(app_id = %app.app_id, error = %chain(&e), "scheduled key rotation failed");
            }
        }
    }
    Ok(rotated)
}

/// One pass at `now` if this gateway is elected for it (always on SQLite); `None` when
/// another gateway holds the jobs lock.
pub async fn run_elected(services: &Services, now: i64) -> Result<Option<Report>, UseCaseError> {
    let Some(lease) = services.db.try_jobs_lease().await? else {
        return Ok(None);
    };
    let report = run_once(services, now).await;
    lease.release().await?;
    report.map(Some)
}

/// Runs a pass every `interval` until the gateway stops.
pub async fn run_every(services: Arc<Services>, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        match run_elected(&services, services.clock.now()).await {
            Ok(Some(report)) if report.sessions + report.keys > 0 => {
                tracing::info!(
                    sessions = report.sessions,
                    keys = report.keys,
                    "maintenance deleted ended sessions and retired keys"
                );
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %chain(&e), "maintenance pass failed"),
        }
    }
}
