//! What the audit trail records: the kinds of event, who acts, and where domain code
//! reports an event.

use std::fmt;

use async_trait::async_trait;
use serde::Serialize;
use serde_json::Value;

use crate::AppId;

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
    /// A renew of a DPoP-bound session was refused for its proof (missing, by another key,
    /// or used before): nothing rotated.
    DpopRejected,
}

impl EventKind {
    pub const ALL: [Self; 12] = [
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
        Self::DpopRejected,
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
            Self::DpopRejected => "dpop_rejected",
        }
    }
}

impl std::str::FromStr for EventKind {
    type Err = UnknownEventKind;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == s).ok_or(UnknownEventKind)
    }
}

/// A name that is not one of [`EventKind::ALL`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnknownEventKind;

impl fmt::Display for UnknownEventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
        write!(f, "must be one of {}", names.join(", "))
    }
}

impl std::error::Error for UnknownEventKind {}

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

/// Where domain code reports events. Recording never fails for the caller: a sink logs what
/// it could not keep, so that an audit failure never undoes or fails the action itself.
#[async_trait]
pub trait AuditSink: Send + Sync + fmt::Debug {
    async fn record(&self, event: NewEvent);
}
