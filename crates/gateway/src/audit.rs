//! The audit trail of the gateway: every security event is recorded in the event store
//! (and so queued for the app's webhook), counted in the metrics, and logged.

use std::sync::Arc;

use async_trait::async_trait;
use keygate_tenants::events::{AuditSink, Event, EventKind, EventStore, NewEvent};
use keygate_tenants::AppId;
use tokio::sync::Notify;

use crate::clock::Clock;
use crate::metrics::{Metrics, RevokeReason};

#[derive(Debug)]
pub struct Audit {
    store: Arc<EventStore>,
    metrics: Arc<Metrics>,
    clock: Clock,
    /// Wakes the webhook deliverer when an event may be due.
    recorded: Notify,
}

impl Audit {
    pub fn new(store: Arc<EventStore>, metrics: Arc<Metrics>, clock: Clock) -> Self {
        Self { store, metrics, clock, recorded: Notify::new() }
    }

    pub fn store(&self) -> &Arc<EventStore> {
        &self.store
    }

    /// Resolves after the next event is recorded (or at once if one was recorded since the
    /// last call).
    pub async fn recorded(&self) {
        self.recorded.notified().await;
    }

    /// Records `kind` about `app_id`, done by `actor`, with `detail` (a JSON object).
    pub async fn event(
        &self,
        app_id: AppId,
        kind: EventKind,
        actor: keygate_tenants::events::Actor,
        detail: serde_json::Value,
    ) {
        self.write(NewEvent { app_id, kind, actor, detail }).await;
    }

    async fn write(&self, new: NewEvent) {
        let event = Event {
            event_id: keygate_kernel::EventId::new_monotonic().to_string(),
            app_id: new.app_id.to_string(),
            kind: new.kind.as_str().to_owned(),
            actor: new.actor.as_str().to_owned(),
            detail: new.detail,
            created_at: self.clock.now(),
        };
        self.metrics.event_recorded(new.kind.as_str());
        if new.kind == EventKind::ReuseDetected {
            let revoked = event.detail.get("revoked").and_then(serde_json::Value::as_u64);
            self.metrics.sessions_revoked(RevokeReason::Reuse, revoked.unwrap_or(0));
        }
        match self.store.record(&event).await {
            Ok(()) => self.recorded.notify_one(),
            // The action itself is done and committed; losing its audit line must not turn
            // it into a failure for the client. The log keeps what the table could not.
            Err(err) => tracing::error!(
                app_id = %event.app_id,
                kind = %event.kind,
                actor = %event.actor,
                detail = %event.detail,
                error = %err,
                "could not record an audit event"
            ),
        }
    }
}

#[async_trait]
impl AuditSink for Audit {
    async fn record(&self, event: NewEvent) {
        self.write(event).await;
    }
}
