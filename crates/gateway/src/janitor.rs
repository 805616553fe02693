//! Periodic clean-up: sessions that ended long ago, and retired keys whose tokens can no
//! longer be valid.

use std::time::Duration;

use actix_web::web;

use crate::clock;
use crate::error::ApiError;
use crate::Services;

/// What one pass deleted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    pub sessions: u64,
    pub keys: u64,
}

/// One pass at `now`.
pub async fn run_once(services: &Services, now: i64) -> Result<Report, ApiError> {
    let sessions = services.sessions.purge(now).await?;
    let mut keys = 0;
    for app in services.tenants.list_apps().await? {
        // A retired key signed nothing after it retired, so its last token expires at most
        // this long after that.
        let longest = app.settings.token_expire.max(app.settings.refresh_expire);
        keys += services.keyring.purge_retired(app.app_id, now - longest).await?;
    }
    Ok(Report { sessions, keys })
}

/// Runs a pass every `interval` for as long as the process lives.
pub fn spawn(services: web::Data<Services>, interval: Duration) {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            match run_once(&services, clock::now()).await {
                Ok(report) if report != Report::default() => {
                    tracing::info!(
                        sessions = report.sessions,
                        keys = report.keys,
                        "janitor deleted ended sessions and retired keys"
                    );
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %crate::error::chain(&e), "janitor pass failed"),
            }
        }
    });
}
