//! The audit trail: security events of each app, their listing, and the outbox their
//! webhook deliveries are drawn from.
//!
//! Events are kept after their app is deleted. Delivery is at least once: a receiver
//! tells retries apart by `event_id`.

use keygate_store::Legacy;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use crate::{AppId, StoreError};
use keygate_store::Backend;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A refresh token was presented again after it rotated: its session (or subject) was
    /// revoked.
    ReuseDetected,
    /// One session was revoked (not by logout).
    SessionRevoked,
    /// Every session of one subject was revoked.
    SubjectRevoked,
    /// Every session of the app was revoked.
    SessionsRevoked,
    KeyRotated,
    KeyRevoked,
    AppKeyRotated,
    AppCreated,
    AppUpdated,
    AppDeleted,
    /// The webhook was set, or its secret renewed (delivered to the new URL).
    WebhookSet,
}

impl EventKind {
    pub const ALL: [Self; 11] = [
        Self::ReuseDetected,
        Self::SessionRevoked,
        Self::SubjectRevoked,
        Self::SessionsRevoked,
        Self::KeyRotated,
        Self::KeyRevoked,
        Self::AppKeyRotated,
        Self::AppCreated,
        Self::AppUpdated,
        Self::AppDeleted,
        Self::WebhookSet,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::ReuseDetected => "reuse_detected",
            Self::SessionRevoked => "session_revoked",
            Self::SubjectRevoked => "subject_revoked",
            Self::SessionsRevoked => "sessions_revoked",
            Self::KeyRotated => "key_rotated",
            Self::KeyRevoked => "key_revoked",
            Self::AppKeyRotated => "app_key_rotated",
            Self::AppCreated => "app_created",
            Self::AppUpdated => "app_updated",
            Self::AppDeleted => "app_deleted",
            Self::WebhookSet => "webhook_set",
        }
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who did it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Actor {
    /// The app's backend, with its app key.
    App,
    /// A platform admin, through the root HTTP API.
    Root,
    /// A platform admin, through the `keygate` CLI.
    Cli,
    /// The gateway itself: reuse detection.
    Gateway,
    /// The scheduled background jobs.
    Scheduler,
}

impl Actor {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::App => "app",
            Self::Root => "root",
            Self::Cli => "cli",
            Self::Gateway => "gateway",
            Self::Scheduler => "scheduler",
        }
    }
}

/// An event to record.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub app_id: AppId,
    pub kind: EventKind,
    pub actor: Actor,
    /// A JSON object: what the event is about (session id, key id, …). Never a secret.
    pub detail: Value,
}

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

/// Persistence of events and webhooks.
#[async_trait]
pub trait EventStore: Send + Sync + fmt::Debug {
    /// Records an event; its delivery is pending when the app has a webhook.
    async fn record(&self, event: &Event) -> Result<(), StoreError>;
    /// The app's events, newest first, older than `before` when it is given.
    async fn list(
        &self,
        app_id: AppId,
        before: Option<&str>,
        limit: i64,
    ) -> Result<Vec<Event>, StoreError>;
    /// Claims up to `limit` events due for delivery at `now`, oldest first, each for
    /// `lease` seconds: another claim in that time does not take them.
    async fn claim(&self, now: i64, lease: i64, limit: i64) -> Result<Vec<Claimed>, StoreError>;
    async fn settle(&self, event_id: &str, delivery: Delivery) -> Result<(), StoreError>;
    /// Deletes events recorded before `cutoff`; returns how many.
    async fn purge(&self, cutoff: i64) -> Result<u64, StoreError>;
    /// Sets (or replaces) the app's webhook. `NotFound` if the app is gone.
    async fn set_webhook(&self, webhook: &Webhook) -> Result<(), StoreError>;
    async fn webhook(&self, app_id: AppId) -> Result<Option<Webhook>, StoreError>;
    async fn webhooks(&self) -> Result<Vec<Webhook>, StoreError>;
    /// Replaces a webhook's sealed secret if it is still `old`; false if it changed.
    async fn reseal_webhook(
        &self,
        app_id: AppId,
        old: &[u8],
        sealed_secret: &[u8],
        master_key_id: &str,
    ) -> Result<bool, StoreError>;
    /// False if the app had none.
    async fn delete_webhook(&self, app_id: AppId) -> Result<bool, StoreError>;
}

/// The event store of the backend `db` was opened with.
pub fn event_store(db: &Backend) -> Arc<dyn EventStore> {
    Arc::new(SqlEventStore { db: db.clone() })
}

/// Both backends take the same statements (`$N` placeholders); SQLite writes through its
/// single writer connection.
#[derive(Debug)]
struct SqlEventStore {
    db: Backend,
}

const INSERT_EVENT: &str = "INSERT INTO audit_events (event_id, app_id, kind, actor, detail, \
    created_at, delivery, attempts, next_attempt_at) \
    SELECT $1, $2, $3, $4, $5, $6, \
    CASE WHEN EXISTS (SELECT 1 FROM app_webhooks WHERE app_id = $2) THEN 'pending' ELSE 'none' END, \
    0, $6";

const LIST_EVENTS: &str = "SELECT event_id, app_id, kind, actor, detail, created_at \
    FROM audit_events WHERE app_id = $1 AND ($2 IS NULL OR event_id < $2) \
    ORDER BY event_id DESC LIMIT $3";

/// The outer conditions are checked again on the row a concurrent claim may have just
/// updated (Postgres), so an event is never claimed twice within a lease.
const CLAIM_EVENTS: &str = "UPDATE audit_events SET next_attempt_at = $2, attempts = attempts + 1 \
    WHERE delivery = 'pending' AND next_attempt_at <= $1 AND event_id IN \
    (SELECT event_id FROM audit_events WHERE delivery = 'pending' AND next_attempt_at <= $1 \
    ORDER BY next_attempt_at, event_id LIMIT $3) \
    RETURNING event_id, app_id, kind, actor, detail, created_at, attempts";

const WEBHOOK_COLUMNS: &str = "app_id, url, sealed_secret, master_key_id, created_at";

type EventRow = (String, String, String, String, String, i64);
type WebhookRow = (String, String, Vec<u8>, String, i64);
type ClaimRow = (String, String, String, String, String, i64, i64);

fn event_of(row: EventRow) -> Result<Event, StoreError> {
    let (event_id, app_id, kind, actor, detail, created_at) = row;
    let detail = serde_json::from_str(&detail)
        .map_err(|e| StoreError::Corrupt(format!("event {event_id}: detail: {e}")))?;
    Ok(Event { event_id, app_id, kind, actor, detail, created_at })
}

fn webhook_of(row: WebhookRow) -> Result<Webhook, StoreError> {
    let (app_id, url, sealed_secret, master_key_id, created_at) = row;
    let app_id = app_id
        .parse()
        .map_err(|_| StoreError::Corrupt(format!("webhook of a bad app id {app_id:?}")))?;
    Ok(Webhook { app_id, url, sealed_secret, master_key_id, created_at })
}

/// Runs `$body` (which awaits) with `$pool` bound to the pool for `$kind` (`write` or
/// `read`) of either backend; the body is compiled once per backend.
macro_rules! on_pool {
    ($db:expr, $kind:ident, |$pool:ident| $body:expr) => {
        match $db.legacy() {
            Legacy::Sqlite(pools) => {
                let $pool = on_pool!(@sqlite pools, $kind);
                $body
            }
            Legacy::Postgres(pool) => {
                let $pool = &pool;
                $body
            }
        }
    };
    (@sqlite $pools:ident, write) => { &$pools.writer };
    (@sqlite $pools:ident, read) => { &$pools.reader };
}

#[async_trait]
impl EventStore for SqlEventStore {
    async fn record(&self, event: &Event) -> Result<(), StoreError> {
        let detail = event.detail.to_string();
        on_pool!(&self.db, write, |pool| sqlx::query(INSERT_EVENT)
            .bind(&event.event_id)
            .bind(&event.app_id)
            .bind(&event.kind)
            .bind(&event.actor)
            .bind(&detail)
            .bind(event.created_at)
            .execute(pool)
            .await
            .map(drop))?;
        Ok(())
    }

    async fn list(
        &self,
        app_id: AppId,
        before: Option<&str>,
        limit: i64,
    ) -> Result<Vec<Event>, StoreError> {
        let app_id = app_id.to_string();
        let rows = on_pool!(&self.db, read, |pool| sqlx::query_as::<_, EventRow>(LIST_EVENTS)
            .bind(&app_id)
            .bind(before)
            .bind(limit)
            .fetch_all(pool)
            .await)?;
        rows.into_iter().map(event_of).collect()
    }

    async fn claim(&self, now: i64, lease: i64, limit: i64) -> Result<Vec<Claimed>, StoreError> {
        let until = now.saturating_add(lease);
        let rows = on_pool!(&self.db, write, |pool| sqlx::query_as::<_, ClaimRow>(CLAIM_EVENTS)
            .bind(now)
            .bind(until)
            .bind(limit)
            .fetch_all(pool)
            .await)?;
        let mut claimed = rows
            .into_iter()
            .map(|(id, app, kind, actor, detail, at, attempts)| {
                Ok(Claimed { event: event_of((id, app, kind, actor, detail, at))?, attempts })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        claimed.sort_by(|a, b| a.event.event_id.cmp(&b.event.event_id));
        Ok(claimed)
    }

    async fn settle(&self, event_id: &str, delivery: Delivery) -> Result<(), StoreError> {
        let (state, next) = match delivery {
            Delivery::Delivered => ("delivered", None),
            Delivery::RetryAt(at) => ("pending", Some(at)),
            Delivery::Failed => ("failed", None),
            Delivery::Dropped => ("none", None),
        };
        on_pool!(&self.db, write, |pool| sqlx::query(
            "UPDATE audit_events SET delivery = $2, \
             next_attempt_at = COALESCE($3, next_attempt_at) WHERE event_id = $1",
        )
        .bind(event_id)
        .bind(state)
        .bind(next)
        .execute(pool)
        .await
        .map(drop))?;
        Ok(())
    }

    async fn purge(&self, cutoff: i64) -> Result<u64, StoreError> {
        Ok(on_pool!(&self.db, write, |pool| sqlx::query(
            "DELETE FROM audit_events WHERE created_at < $1"
        )
        .bind(cutoff)
        .execute(pool)
        .await
        .map(|done| done.rows_affected()))?)
    }

    async fn set_webhook(&self, webhook: &Webhook) -> Result<(), StoreError> {
        let app_id = webhook.app_id.to_string();
        let inserted = on_pool!(&self.db, write, |pool| sqlx::query(
            "INSERT INTO app_webhooks (app_id, url, sealed_secret, master_key_id, created_at) \
             SELECT $1, $2, $3, $4, $5 WHERE EXISTS (SELECT 1 FROM apps WHERE app_id = $1) \
             ON CONFLICT (app_id) DO UPDATE SET url = excluded.url, \
             sealed_secret = excluded.sealed_secret, master_key_id = excluded.master_key_id, \
             created_at = excluded.created_at",
        )
        .bind(&app_id)
        .bind(&webhook.url)
        .bind(&webhook.sealed_secret)
        .bind(&webhook.master_key_id)
        .bind(webhook.created_at)
        .execute(pool)
        .await
        .map(|done| done.rows_affected()))?;
        if inserted == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    async fn webhook(&self, app_id: AppId) -> Result<Option<Webhook>, StoreError> {
        let sql = format!("SELECT {WEBHOOK_COLUMNS} FROM app_webhooks WHERE app_id = $1");
        let app_id = app_id.to_string();
        let row = on_pool!(&self.db, read, |pool| sqlx::query_as::<_, WebhookRow>(&sql)
            .bind(&app_id)
            .fetch_optional(pool)
            .await)?;
        row.map(webhook_of).transpose()
    }

    async fn webhooks(&self) -> Result<Vec<Webhook>, StoreError> {
        let sql = format!("SELECT {WEBHOOK_COLUMNS} FROM app_webhooks ORDER BY app_id");
        let rows = on_pool!(&self.db, read, |pool| sqlx::query_as::<_, WebhookRow>(&sql)
            .fetch_all(pool)
            .await)?;
        rows.into_iter().map(webhook_of).collect()
    }

    async fn reseal_webhook(
        &self,
        app_id: AppId,
        old: &[u8],
        sealed_secret: &[u8],
        master_key_id: &str,
    ) -> Result<bool, StoreError> {
        let app_id = app_id.to_string();
        let updated = on_pool!(&self.db, write, |pool| sqlx::query(
            "UPDATE app_webhooks SET sealed_secret = $3, master_key_id = $4 \
             WHERE app_id = $1 AND sealed_secret = $2",
        )
        .bind(&app_id)
        .bind(old)
        .bind(sealed_secret)
        .bind(master_key_id)
        .execute(pool)
        .await
        .map(|done| done.rows_affected()))?;
        Ok(updated == 1)
    }

    async fn delete_webhook(&self, app_id: AppId) -> Result<bool, StoreError> {
        let app_id = app_id.to_string();
        let deleted = on_pool!(&self.db, write, |pool| sqlx::query(
            "DELETE FROM app_webhooks WHERE app_id = $1"
        )
        .bind(&app_id)
        .execute(pool)
        .await
        .map(|done| done.rows_affected()))?;
        Ok(deleted == 1)
    }
}

/// Where domain code reports events. Recording never fails for the caller: a sink logs what
/// it could not keep, so that an audit failure never undoes or fails the action itself.
#[async_trait]
pub trait AuditSink: Send + Sync + fmt::Debug {
    async fn record(&self, event: NewEvent);
}
