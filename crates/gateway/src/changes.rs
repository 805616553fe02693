//! Cache coherence between gateways that share one Postgres.
//!
//! Every gateway caches apps, app-key checks and parsed signing keys. A change made by
//! another gateway or by the CLI is announced on [`CHANGES_CHANNEL`] when it commits
//! (see [`keygate_tenants::db::announce`]); this listener drops the cached entries at once.
//! Polling stays the fallback: every cache entry expires after `cache_ttl` seconds (5 by
//! default), so a lost announcement, or one sent while the listener was reconnecting, is
//! seen within that time anyway. SQLite has one process and needs neither.

use std::time::Duration;

use actix_web::web;
use keygate_tenants::db::{Database, CHANGES_CHANNEL};
use keygate_tenants::AppId;
use sqlx::postgres::PgListener;

use crate::Services;

/// How long to wait before connecting again after the listener failed.
const RECONNECT_DELAY: Duration = Duration::from_secs(1);

/// Starts listening when the database is Postgres; does nothing on SQLite.
pub fn spawn_listener(services: web::Data<Services>) {
    let Database::Postgres(pool) = &services.db else {
        return;
    };
    let pool = pool.clone();
    tokio::spawn(async move {
        loop {
            match listen(&pool, &services).await {
                Ok(()) => return,
                Err(error) => {
                    tracing::warn!(%error, "change listener failed; caches fall back to their TTL until it reconnects");
                    tokio::time::sleep(RECONNECT_DELAY).await;
                }
            }
        }
    });
}

/// Receives announcements until the pool closes (`Ok`) or the connection fails (`Err`).
async fn listen(pool: &sqlx::PgPool, services: &Services) -> Result<(), sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(CHANGES_CHANNEL).await?;
    loop {
        // `None`: the connection was lost and is re-established on the next call; what was
        // announced meanwhile is lost, so every cached entry is dropped.
        match listener.try_recv().await {
            Ok(Some(notification)) => apply(services, notification.payload()),
            Ok(None) => forget_everything(services),
            Err(sqlx::Error::PoolClosed) => return Ok(()),
            Err(error) => return Err(error),
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
