//! Cache coherence between gateways that share one Postgres.
//!
//! Every gateway caches apps, app-key checks and parsed signing keys. A change made by
//! another gateway or by the CLI is announced on `keygate_store::CHANGES_CHANNEL` when it commits
//! (see `keygate_store::Backend::after_commit`); this listener drops the cached entries at once.
//! Polling stays the fallback: every cache entry expires after `cache_ttl` seconds (5 by
//! default), so a lost announcement, or one sent while the listener was reconnecting, is
//! seen within that time anyway. SQLite has one process and needs neither.

use std::sync::Arc;
use std::time::Duration;

use keygate_store::jobs::Heard;
use keygate_store::{Kind, StoreError};
use keygate_tenants::AppId;

use crate::bootstrap::Services;

/// How long to wait before connecting again after the listener failed.
const RECONNECT_DELAY: Duration = Duration::from_secs(1);

/// Starts listening when the database is Postgres; does nothing on SQLite.
pub fn spawn_listener(services: Arc<Services>) {
    if services.db.kind() != Kind::Postgres {
        return;
    }
    tokio::spawn(async move {
        let mut again = false;
        loop {
            match listen(&services, again).await {
                Ok(()) => return,
                Err(error) => {
                    tracing::warn!(%error, "change listener failed; caches fall back to their TTL until it reconnects");
                    again = true;
                    tokio::time::sleep(RECONNECT_DELAY).await;
                }
            }
        }
    });
}

/// Receives announcements until the pool closes (`Ok`) or the connection fails (`Err`).
/// `again`: the listener failed before, so what was announced meanwhile is lost (after a
/// failover, on the old primary) and every cached entry is dropped once it listens again.
async fn listen(services: &Services, again: bool) -> Result<(), StoreError> {
    let Some(listener) = services.db.listen_changes().await else { return Ok(()) };
    let mut listener = listener?;
    if again {
        tracing::info!("change listener reconnected");
        forget_everything(services);
    }
    loop {
        match listener.recv().await? {
            Heard::Change(payload) => apply(services, &payload),
            // What was announced while the connection was down is lost.
            Heard::Lost => forget_everything(services),
            Heard::Closed => return Ok(()),
        }
    }
}

/// Drops what an announcement names; an unknown payload drops everything.
pub fn apply(services: &Services, payload: &str) {
    match payload.split_once(' ').map(|(kind, id)| (kind, id.parse::<AppId>())) {
        Some(("app", Ok(app_id))) => {
            services.tenants.forget(app_id);
            services.keyring.forget(app_id);
        }
        Some(("keys", Ok(app_id))) => services.keyring.forget(app_id),
        None if payload == "root" => services.tenants.forget_root(),
        _ => forget_everything(services),
    }
}

fn forget_everything(services: &Services) {
    services.tenants.forget_all();
    services.keyring.forget_all();
}
