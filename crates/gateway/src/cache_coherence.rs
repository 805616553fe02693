//! Cache coherence: every gateway caches apps, their app-key hashes and parsed signing keys,
//! and drops an entry when another process (a gateway, the CLI) changes it.
//!
//! - **The change log** (both databases): triggers record every such change in the table
//!   `changes`, in the change's own transaction, whoever makes it. Each gateway reads the
//!   new rows every [`POLL_INTERVAL`] and drops what they name ([`poll`]).
//! - **NOTIFY** (Postgres): a change is also announced on `keygate_store::CHANGES_CHANNEL` when
//!   it commits (`keygate_store::Backend::after_commit`); this listener drops the entries at
//!   once ([`listen_for_changes`]).
//!
//! Every entry also expires after `cache_ttl` seconds (60 by default), the backstop for a
//! change the log could not show in order (on Postgres, a transaction that took its log
//! position before another but committed after it) while the listener was down too.

use std::sync::Arc;
use std::time::Duration;

use keygate_kernel::Change;
use keygate_store::jobs::Heard;
use keygate_store::{Kind, StoreError};

use crate::bootstrap::Services;

/// How often a gateway reads the change log.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// The most changes applied one by one per read; past it, every cached entry is dropped.
const POLL_LIMIT: i64 = 1000;

/// Reads the change log every [`POLL_INTERVAL`] from now on, and drops what each new
/// change names. A failed read is retried at the next tick from the same place (the
/// maintenance pass keeps an hour of changes). Runs until the gateway stops.
pub async fn poll(services: Arc<Services>) {
    let mut last = services.db.last_change().await.ok();
    let mut failing = false;
    loop {
        tokio::time::sleep(POLL_INTERVAL).await;
        let read = match last {
            Some(seq) => read_changes(&services, seq).await,
            None => services.db.last_change().await.inspect(|_| forget_everything(&services)),
        };
        match read {
            Ok(seq) => {
                if failing {
                    tracing::info!("the change log is read again");
                }
                (last, failing) = (Some(seq), false);
            }
            Err(error) if !failing => {
                failing = true;
                tracing::warn!(%error, "cannot read the change log; retrying every second");
            }
            Err(_) => {}
        }
    }
}

/// Fills the caches with every app and its signing keys, in two queries, beside serving,
/// then applies the changes recorded while it read: so the first request of each app after
/// a start needs no read of its own (with 10,000 apps, every app is served within a few
/// seconds of a restart). A request that comes first loads what it needs itself.
pub async fn warm_up(services: Arc<Services>) {
    let started = std::time::Instant::now();
    let warmed = async {
        let from = services.db.last_change().await?;
        let apps = services.tenants.warm().await?;
        let (keys, failed) = services.keyring.warm(keygate_keyring::WARM_PAGE).await?;
        read_changes(&services, from).await?;
        anyhow::Ok((apps, keys, failed))
    };
    match warmed.await {
        Ok((apps, keys, failed)) => {
            let ms = started.elapsed().as_millis();
            tracing::info!(apps, keys, failed, ms, "caches filled at start");
        }
        Err(error) => tracing::warn!(error = %format!("{error:#}"),
            "caches not filled at start; each app is read at its first request"),
    }
}

/// Applies the changes after `seq`; returns the position reached.
async fn read_changes(services: &Services, seq: i64) -> Result<i64, StoreError> {
    let changes = services.db.changes_after(seq, POLL_LIMIT).await?;
    if i64::try_from(changes.len()).unwrap_or(i64::MAX) >= POLL_LIMIT {
        forget_everything(services);
        return services.db.last_change().await;
    }
    for change in &changes {
        apply(services, &change.subject);
    }
    Ok(changes.last().map_or(seq, |change| change.seq))
}

/// How long to wait before connecting again after the listener failed.
const RECONNECT_DELAY: Duration = Duration::from_secs(1);

/// Listens when the database is Postgres, until the pool closes; ends at once on SQLite.
pub async fn listen_for_changes(services: Arc<Services>) {
    if services.db.kind() != Kind::Postgres {
        return;
    }
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
    match payload.parse::<Change>() {
        Ok(Change::App(app_id)) => {
            services.tenants.forget(app_id);
            services.keyring.forget(app_id);
        }
        Ok(Change::Keys(app_id)) => services.keyring.forget(app_id),
        Ok(Change::Root) => services.tenants.forget_root(),
        Err(_) => forget_everything(services),
    }
}

fn forget_everything(services: &Services) {
    services.tenants.forget_all();
    services.keyring.forget_all();
}
