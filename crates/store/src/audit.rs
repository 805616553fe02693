//! The audit trail: each app's security events, the outbox their webhook deliveries are
//! drawn from, and each app's webhook.

use keygate_kernel::AppId;

use crate::{Backend, Sql, StoreError};

type Result<T, E = StoreError> = std::result::Result<T, E>;

/// An event as stored.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct EventRow {
    pub event_id: String,
    pub app_id: String,
    pub kind: String,
    pub actor: String,
    /// A JSON object, as text.
    pub detail: String,
    pub created_at: i64,
}

/// An event claimed for delivery, with the attempts made so far (this one included).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ClaimedRow {
    #[sqlx(flatten)]
    pub event: EventRow,
    pub attempts: i64,
}

/// An app's webhook as stored.
#[derive(Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct WebhookRow {
    pub app_id: AppId,
    pub url: String,
    /// The signing secret, sealed under the master key `master_key_id`.
    pub sealed_secret: Vec<u8>,
    pub master_key_id: String,
    pub created_at: i64,
}

impl std::fmt::Debug for WebhookRow {
    // The sealed secret stays out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookRow")
            .field("app_id", &self.app_id)
            .field("url", &self.url)
            .field("master_key_id", &self.master_key_id)
            .finish_non_exhaustive()
    }
}

/// An event's delivery is `pending` when its app had a webhook as it was recorded.
const INSERT_EVENT: &str = "INSERT INTO audit_events (event_id, app_id, kind, actor, detail, \
    created_at, delivery, attempts, next_attempt_at) \
    SELECT $1, $2, $3, $4, $5, $6, \
    CASE WHEN EXISTS (SELECT 1 FROM app_webhooks WHERE app_id = $2) THEN 'pending' ELSE 'none' END, \
    0, $6";

const LIST_EVENTS: &str = "SELECT event_id, app_id, kind, actor, detail, created_at \
    FROM audit_events WHERE app_id = $1 AND ($2 IS NULL OR event_id < $2) \
    AND ($4 IS NULL OR kind = $4) ORDER BY event_id DESC LIMIT $3";

/// The outer conditions are checked again on the row a concurrent claim may have just
/// updated (Postgres), so an event is never claimed twice within a lease.
const CLAIM_EVENTS: &str = "UPDATE audit_events SET next_attempt_at = $2, attempts = attempts + 1 \
    WHERE delivery = 'pending' AND next_attempt_at <= $1 AND event_id IN \
    (SELECT event_id FROM audit_events WHERE delivery = 'pending' AND next_attempt_at <= $1 \
    ORDER BY next_attempt_at, event_id LIMIT $3) \
    RETURNING event_id, app_id, kind, actor, detail, created_at, attempts";

const SET_WEBHOOK: &str = "INSERT INTO app_webhooks (app_id, url, sealed_secret, \
    master_key_id, created_at) \
    SELECT $1, $2, $3, $4, $5 WHERE EXISTS (SELECT 1 FROM apps WHERE app_id = $1) \
    ON CONFLICT (app_id) DO UPDATE SET url = excluded.url, \
    sealed_secret = excluded.sealed_secret, master_key_id = excluded.master_key_id, \
    created_at = excluded.created_at";

const SELECT_WEBHOOK: &str =
    "SELECT app_id, url, sealed_secret, master_key_id, created_at FROM app_webhooks";

/// The audit_events and app_webhooks tables. Events are kept after their app is deleted;
/// its webhook goes with it.
#[derive(Debug, Clone, Copy)]
pub struct Audit<'a> {
    db: &'a Backend,
}

impl Backend {
    pub fn audit(&self) -> Audit<'_> {
        Audit { db: self }
    }
}

impl Audit<'_> {
    pub async fn record(&self, event: &EventRow) -> Result<()> {
        let sql = Sql::new(INSERT_EVENT)
            .bind(&event.event_id)
            .bind(&event.app_id)
            .bind(&event.kind)
            .bind(&event.actor)
            .bind(&event.detail)
            .bind(event.created_at);
        self.db.write(sql).execute().await.map(drop)
    }

    /// Newest first, older than `before` when it is given, of one `kind` when it is given.
    pub async fn list(
        &self,
        app: AppId,
        before: Option<&str>,
        kind: Option<&str>,
        limit: i64,
    ) -> Result<Vec<EventRow>> {
        let sql = Sql::new(LIST_EVENTS).bind(app).bind(before).bind(limit).bind(kind);
        self.db.read(sql).fetch_all().await
    }

    /// Claims up to `limit` events due at `now`, oldest first, until `until`.
    pub async fn claim(&self, now: i64, until: i64, limit: i64) -> Result<Vec<ClaimedRow>> {
        let sql = Sql::new(CLAIM_EVENTS).bind(now).bind(until).bind(limit);
        let mut claimed: Vec<ClaimedRow> = self.db.write(sql).fetch_all().await?;
        claimed.sort_by(|a, b| a.event.event_id.cmp(&b.event.event_id));
        Ok(claimed)
    }

    /// Sets the `delivery` (`pending`, `delivered`, `failed` or `none`) and, if given, the
    /// time of the next attempt.
    pub async fn settle(&self, event_id: &str, delivery: &str, next: Option<i64>) -> Result<()> {
        let sql = Sql::new(
            "UPDATE audit_events SET delivery = $2, \
             next_attempt_at = COALESCE($3, next_attempt_at) WHERE event_id = $1",
        );
        self.db.write(sql.bind(event_id).bind(delivery).bind(next)).execute().await.map(drop)
    }

    /// Deletes events recorded before `cutoff`; returns how many.
    pub async fn purge(&self, cutoff: i64) -> Result<u64> {
        let sql = Sql::new("DELETE FROM audit_events WHERE created_at < $1").bind(cutoff);
        self.db.write(sql).execute().await
    }

    /// `NotFound` if the app is gone.
    pub async fn set_webhook(&self, webhook: &WebhookRow) -> Result<()> {
        let sql = Sql::new(SET_WEBHOOK)
            .bind(webhook.app_id)
            .bind(&webhook.url)
            .bind(webhook.sealed_secret.as_slice())
            .bind(&webhook.master_key_id)
            .bind(webhook.created_at);
        (self.db.write(sql).execute().await? > 0).then_some(()).ok_or(StoreError::NotFound)
    }

    pub async fn webhook(&self, app_id: AppId) -> Result<Option<WebhookRow>> {
        let sql = Sql::new(format!("{SELECT_WEBHOOK} WHERE app_id = $1")).bind(app_id);
        self.db.read(sql).fetch_optional().await
    }

    pub async fn webhooks(&self) -> Result<Vec<WebhookRow>> {
        self.db.read(Sql::new(format!("{SELECT_WEBHOOK} ORDER BY app_id"))).fetch_all().await
    }

    /// Replaces the sealed secret if it is still `old`; false if it changed.
    pub async fn reseal_webhook(
        &self,
        app_id: AppId,
        old: &[u8],
        sealed_secret: &[u8],
        master_key_id: &str,
    ) -> Result<bool> {
        let sql = Sql::new(
            "UPDATE app_webhooks SET sealed_secret = $3, master_key_id = $4 \
            WHERE app_id = $1 AND sealed_secret = $2",
        );
        let sql = sql.bind(app_id).bind(old).bind(sealed_secret).bind(master_key_id);
        Ok(self.db.write(sql).execute().await? == 1)
    }

    /// False if the app had none.
    pub async fn delete_webhook(&self, app_id: AppId) -> Result<bool> {
        let sql = Sql::new("DELETE FROM app_webhooks WHERE app_id = $1").bind(app_id);
        Ok(self.db.write(sql).execute().await? == 1)
    }
}
