//! The audit trail: security events of each app, their listing, and the outbox their
//! webhook deliveries are drawn from.
//!
//! Events are kept after their app is deleted. Delivery is at least once: a receiver
//! tells retries apart by `event_id`.

use std::fmt;
use std::sync::Arc;

pub use keygate_kernel::audit::{Actor, AuditSink, EventKind, NewEvent, UnknownEventKind};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use keygate_store::audit::{EventRow, WebhookRow};
use keygate_store::Backend;

use crate::{AppId, StoreError};

type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A recorded event, as listed and delivered.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Event {
    /// A ULID: events sort by it in the order they were recorded.
    pub event_id: String,
    pub app_id: String,
    /// What happened: `reuse_detected`, `session_revoked`, `key_rotated`, …
    #[schema(example = "reuse_detected")]
    pub kind: String,
    /// Who did it: `app`, `root`, `cli`, `gateway` or `scheduler`.
    #[schema(example = "gateway")]
    pub actor: String,
    /// A JSON object: what the event is about (session id, key id, …). Never a secret.
    #[schema(value_type = Object)]
    pub detail: Value,
    pub created_at: i64,
}

/// An event claimed for delivery, with the attempts made so far (this one included).
#[derive(Debug, Clone)]
pub struct Claimed {
    pub event: Event,
    pub attempts: i64,
}

/// Where an event's delivery stands after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    Delivered,
    /// Try again at this time.
    RetryAt(i64),
    /// The last attempt failed; no more.
    Failed,
    /// The app has no webhook (any more).
    Dropped,
}

/// An app's webhook.
#[derive(Clone, PartialEq, Eq)]
pub struct Webhook {
    pub app_id: AppId,
    pub url: String,
    /// The signing secret, sealed under the master key `master_key_id`.
    pub sealed_secret: Vec<u8>,
    pub master_key_id: String,
    pub created_at: i64,
}

impl fmt::Debug for Webhook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Webhook")
            .field("app_id", &self.app_id)
            .field("url", &self.url)
            .field("master_key_id", &self.master_key_id)
            .finish_non_exhaustive()
    }
}

/// Persistence of events and webhooks: the audit statements of [`keygate_store`], in the
/// domain's types.
#[derive(Debug, Clone)]
pub struct EventStore {
    db: Backend,
}

/// The event store of `db`.
pub fn event_store(db: &Backend) -> Arc<EventStore> {
    Arc::new(EventStore { db: db.clone() })
}

impl EventStore {
    /// Records an event; its delivery is pending when the app has a webhook.
    pub async fn record(&self, event: &Event) -> Result<()> {
        let Event { event_id, app_id, kind, actor, detail, created_at } = event.clone();
        let row =
            EventRow { event_id, app_id, kind, actor, detail: detail.to_string(), created_at };
        self.db.audit().record(&row).await
    }

    /// The app's events, newest first, older than `before` when it is given.
    /// The app's events older than `before`, of one `kind` when it is given, newest first.
    pub async fn list(
        &self,
        app: AppId,
        before: Option<&str>,
        kind: Option<EventKind>,
        limit: i64,
    ) -> Result<Vec<Event>> {
        let kind = kind.map(EventKind::as_str);
        let rows = self.db.audit().list(app, before, kind, limit).await?;
        rows.into_iter().map(event_of).collect()
    }

    /// Claims up to `limit` events due for delivery at `now`, oldest first, each for
    /// `lease` seconds: another claim in that time does not take them.
    pub async fn claim(&self, now: i64, lease: i64, limit: i64) -> Result<Vec<Claimed>> {
        let rows = self.db.audit().claim(now, now.saturating_add(lease), limit).await?;
        rows.into_iter()
            .map(|row| Ok(Claimed { event: event_of(row.event)?, attempts: row.attempts }))
            .collect()
    }

    pub async fn settle(&self, event_id: &str, delivery: Delivery) -> Result<()> {
        let (state, next) = match delivery {
            Delivery::Delivered => ("delivered", None),
            Delivery::RetryAt(at) => ("pending", Some(at)),
            Delivery::Failed => ("failed", None),
            Delivery::Dropped => ("none", None),
        };
        self.db.audit().settle(event_id, state, next).await
    }

    /// Deletes events recorded before `cutoff`; returns how many.
    pub async fn purge(&self, cutoff: i64) -> Result<u64> {
        self.db.audit().purge(cutoff).await
    }

    /// Sets (or replaces) the app's webhook. `NotFound` if the app is gone.
    pub async fn set_webhook(&self, webhook: &Webhook) -> Result<()> {
        let Webhook { app_id, url, sealed_secret, master_key_id, created_at } = webhook.clone();
        let row = WebhookRow { app_id, url, sealed_secret, master_key_id, created_at };
        self.db.audit().set_webhook(&row).await
    }

    pub async fn webhook(&self, app_id: AppId) -> Result<Option<Webhook>> {
        Ok(self.db.audit().webhook(app_id).await?.map(webhook_of))
    }

    pub async fn webhooks(&self) -> Result<Vec<Webhook>> {
        Ok(self.db.audit().webhooks().await?.into_iter().map(webhook_of).collect())
    }

    /// Replaces a webhook's sealed secret if it is still `old`; false if it changed.
    pub async fn reseal_webhook(
        &self,
        app_id: AppId,
        old: &[u8],
        sealed_secret: &[u8],
        master_key_id: &str,
    ) -> Result<bool> {
        self.db.audit().reseal_webhook(app_id, old, sealed_secret, master_key_id).await
    }

    /// False if the app had none.
    pub async fn delete_webhook(&self, app_id: AppId) -> Result<bool> {
        self.db.audit().delete_webhook(app_id).await
    }
}

fn event_of(row: EventRow) -> Result<Event> {
    let EventRow { event_id, app_id, kind, actor, detail, created_at } = row;
    let detail = serde_json::from_str(&detail)
        .map_err(|e| StoreError::Corrupt(format!("event {event_id}: detail: {e}")))?;
    Ok(Event { event_id, app_id, kind, actor, detail, created_at })
}

fn webhook_of(row: WebhookRow) -> Webhook {
    let WebhookRow { app_id, url, sealed_secret, master_key_id, created_at } = row;
    Webhook { app_id, url, sealed_secret, master_key_id, created_at }
}
