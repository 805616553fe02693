//! Administrative operations on apps, their keys, sessions and events, shared by the root
//! HTTP API and the CLI so both behave the same.

use keygate_keyring::{KeyId, KeyRecord, KeyState, Revocation, Rotation};
use keygate_sessions::{RevokeScope, SessionId, SessionView};
pub use keygate_tenants::events::Actor;
use keygate_tenants::events::EventKind;
use keygate_tenants::{App, AppId, AppRecord, Secret, SettingsPatch, TenantError};
use serde::Serialize;
use serde_json::json;
use utoipa::ToSchema;

use super::{expose_secret, UseCaseError};
use crate::bootstrap::Services;
use crate::metrics::RevokeReason;

/// The answer to creating an app. The app key is shown only here.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedApp {
    pub app_id: AppId,
    #[serde(serialize_with = "expose_secret")]
    #[schema(value_type = String)]
    pub app_key: Secret,
    pub key_id: KeyId,
    pub public_key: String,
}

/// The answer to rotating an app key.
#[derive(Debug, Serialize, ToSchema)]
pub struct RotatedAppKey {
    pub app_id: AppId,
    #[serde(serialize_with = "expose_secret")]
    #[schema(value_type = String)]
    pub app_key: Secret,
    /// Until when (Unix seconds) the previous app key keeps working; null without a grace.
    #[schema(required)]
    pub previous_key_valid_until: Option<i64>,
}

/// A signing key as admins see it (no private material).
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyView {
    pub key_id: KeyId,
    pub status: KeyState,
    #[schema(example = "ES256")]
    pub alg: &'static str,
    pub created_at: i64,
    pub activated_at: Option<i64>,
    pub retired_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

impl From<&KeyRecord> for KeyView {
    fn from(key: &KeyRecord) -> Self {
        Self {
            key_id: key.key_id,
            status: key.state,
            alg: "ES256",
            created_at: key.created_at,
            activated_at: key.activated_at,
            retired_at: key.retired_at,
            revoked_at: key.revoked_at,
        }
    }
}

/// Creates an app with its first two signing keys.
pub async fn create_app(
    services: &Services,
    patch: &SettingsPatch,
    actor: Actor,
    now: i64,
) -> Result<CreatedApp, UseCaseError> {
    let Some(name) = patch.name.as_deref() else {
        return Err(UseCaseError::invalid("name", "is required"));
    };
    let (record, app_key) = services.tenants.create_app(name, patch, now).await?;
    let app_id = record.app.app_id;
    let keys = match services.keyring.create_app_keys(app_id, now).await {
        Ok(keys) => keys,
        Err(err) => {
            // An app without keys could not sign; take it back rather than leave it half made.
            if let Err(cleanup) = services.tenants.delete_app(app_id).await {
                tracing::error!(%app_id, error = %cleanup, "could not remove a half-created app");
            }
            return Err(err.into());
        }
    };
    let signer = keys.signer()?;
    tracing::info!(%app_id, name = %record.app.name, "app created");
    let detail = json!({"name": record.app.name, "key_id": signer.key_id});
    services.audit.event(app_id, EventKind::AppCreated, actor, detail).await;
    Ok(CreatedApp {
        app_id,
        app_key: Secret::new(app_key.expose().to_owned()),
        key_id: signer.key_id,
        public_key: signer.public_key.clone(),
    })
}

/// The app with this id, or 404.
pub async fn get_app(services: &Services, app_id: AppId) -> Result<AppRecord, UseCaseError> {
    services
        .tenants
        .store()
        .get_app(app_id)
        .await?
        .ok_or_else(|| UseCaseError::NotFound(format!("app {app_id} not found")))
}

/// An app by id or by name (the CLI accepts either).
pub async fn find_app(services: &Services, id_or_name: &str) -> Result<AppRecord, UseCaseError> {
    services.tenants.find(id_or_name).await.map_err(|e| match e {
        TenantError::NotFound => {
            UseCaseError::NotFound(format!("no app with id or name {id_or_name:?}"))
        }
        other => other.into(),
    })
}

pub async fn list_apps(services: &Services) -> Result<Vec<App>, UseCaseError> {
    Ok(services.tenants.list_apps().await?)
}

pub async fn update_app(
    services: &Services,
    app_id: AppId,
    patch: &SettingsPatch,
    actor: Actor,
    now: i64,
) -> Result<App, UseCaseError> {
    let record = services.tenants.update_app(app_id, patch, now).await?;
    tracing::info!(%app_id, "app updated");
    let detail = json!({"name": record.app.name, "settings": record.app.settings});
    services.audit.event(app_id, EventKind::AppUpdated, actor, detail).await;
    Ok(record.app)
}

pub async fn delete_app(
    services: &Services,
    app_id: AppId,
    actor: Actor,
) -> Result<(), UseCaseError> {
    services.tenants.delete_app(app_id).await?;
    services.keyring.forget(app_id);
    tracing::info!(%app_id, "app deleted");
    services.audit.event(app_id, EventKind::AppDeleted, actor, json!({})).await;
    Ok(())
}

pub async fn rotate_app_key(
    services: &Services,
    app_id: AppId,
    grace: i64,
    actor: Actor,
    now: i64,
) -> Result<RotatedAppKey, UseCaseError> {
    let rotated = services.tenants.rotate_app_key(app_id, grace, now).await?;
    tracing::info!(%app_id, grace, "app key rotated");
    let detail = json!({"grace": grace, "previous_key_valid_until": rotated.previous_valid_until});
    services.audit.event(app_id, EventKind::AppKeyRotated, actor, detail).await;
    Ok(RotatedAppKey {
        app_id,
        app_key: Secret::new(rotated.app_key.expose().to_owned()),
        previous_key_valid_until: rotated.previous_valid_until,
    })
}

pub async fn list_keys(services: &Services, app_id: AppId) -> Result<Vec<KeyView>, UseCaseError> {
    get_app(services, app_id).await?;
    Ok(services.keyring.list(app_id).await?.iter().map(KeyView::from).collect())
}

pub async fn rotate_keys(
    services: &Services,
    app_id: AppId,
    actor: Actor,
    now: i64,
) -> Result<Rotation, UseCaseError> {
    get_app(services, app_id).await?;
    let rotation = services.keyring.rotate(app_id, now).await?;
    tracing::info!(%app_id, active = %rotation.active_key_id, "signing key rotated");
    key_rotated(services, app_id, &rotation, actor).await;
    Ok(rotation)
}

pub async fn revoke_key(
    services: &Services,
    app_id: AppId,
    key_id: KeyId,
    actor: Actor,
    now: i64,
) -> Result<Revocation, UseCaseError> {
    get_app(services, app_id).await?;
    let revocation = services.keyring.revoke(app_id, key_id, now).await?;
    tracing::warn!(%app_id, %key_id, "signing key revoked");
    services.metrics.key_revoked();
    let detail = serde_json::to_value(revocation).unwrap_or_else(|_| json!({"key_id": key_id}));
    services.audit.event(app_id, EventKind::KeyRevoked, actor, detail).await;
    Ok(revocation)
}

/// Revokes one session, a subject's sessions, or (with neither) every session of the app.
pub async fn revoke_sessions(
    services: &Services,
    app_id: AppId,
    target: Option<SessionTarget<'_>>,
    actor: Actor,
    now: i64,
) -> Result<u64, UseCaseError> {
    get_app(services, app_id).await?;
    let scope = target.map_or(RevokeScope::App, RevokeScope::from);
    let revoked = services.sessions.revoke(app_id, scope, "revoked by an admin", now).await?;
    services.metrics.sessions_revoked(RevokeReason::Admin, revoked);
    sessions_revoked(services, app_id, scope, revoked, actor).await;
    Ok(revoked)
}

/// Records a revocation of sessions in the audit trail.
pub async fn sessions_revoked(
    services: &Services,
    app_id: AppId,
    scope: RevokeScope<'_>,
    revoked: u64,
    actor: Actor,
) {
    let (kind, detail) = match scope {
        RevokeScope::Session(id) => {
            (EventKind::SessionRevoked, json!({"session_id": id, "revoked": revoked}))
        }
        RevokeScope::Subject(sub) => {
            (EventKind::SubjectRevoked, json!({"sub": sub, "revoked": revoked}))
        }
        RevokeScope::App => (EventKind::SessionsRevoked, json!({"revoked": revoked})),
    };
    services.audit.event(app_id, kind, actor, detail).await;
}

/// Records a signing-key rotation in the metrics and the audit trail.
pub async fn key_rotated(services: &Services, app_id: AppId, rotation: &Rotation, actor: Actor) {
    services.metrics.key_rotated(actor == Actor::Scheduler);
    let detail = serde_json::to_value(rotation).unwrap_or_else(|_| json!({}));
    services.audit.event(app_id, EventKind::KeyRotated, actor, detail).await;
}

/// The sessions an admin revokes.
#[derive(Debug, Clone, Copy)]
pub enum SessionTarget<'a> {
    Session(SessionId),
    Subject(&'a str),
}

impl<'a> From<SessionTarget<'a>> for RevokeScope<'a> {
    fn from(target: SessionTarget<'a>) -> Self {
        match target {
            SessionTarget::Session(id) => RevokeScope::Session(id),
            SessionTarget::Subject(sub) => RevokeScope::Subject(sub),
        }
    }
}

/// How many live sessions each app has at `now`, every app listed (0 for none). One scan
/// of the live sessions.
pub async fn live_session_counts(
    services: &Services,
    now: i64,
) -> Result<std::collections::BTreeMap<AppId, u64>, UseCaseError> {
    live_session_counts_of(services, &list_apps(services).await?, now).await
}

/// Like [`live_session_counts`], for `apps` already listed.
pub async fn live_session_counts_of(
    services: &Services,
    apps: &[App],
    now: i64,
) -> Result<std::collections::BTreeMap<AppId, u64>, UseCaseError> {
    let mut counts: std::collections::BTreeMap<AppId, u64> =
        apps.iter().map(|app| (app.app_id, 0)).collect();
    for (app_id, live) in services.sessions.live_counts(now).await? {
        if let Some(count) = counts.get_mut(&app_id) {
            *count = live;
        }
    }
    Ok(counts)
}

pub async fn list_sessions(
    services: &Services,
    app_id: AppId,
    sub: &str,
    now: i64,
) -> Result<Vec<SessionView>, UseCaseError> {
    get_app(services, app_id).await?;
    Ok(services.sessions.list(app_id, Some(sub), now).await?)
}

/// Events per page when the caller does not say.
pub const DEFAULT_EVENT_PAGE: i64 = 50;
/// The most events one page holds.
pub const MAX_EVENT_PAGE: i64 = 500;

/// A page of an app's audit events, newest first. `next` is the `before` of the following
/// page, when there may be one.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventPage {
    pub events: Vec<keygate_tenants::events::Event>,
    #[schema(required)]
    pub next: Option<String>,
}

/// The app's events older than `before` (an event id), of one `kind` when it is given (an
/// [`EventKind`] name), newest first. The events of a deleted app are still listed; an id
/// that never had an app (nor events) is 404.
pub async fn list_events(
    services: &Services,
    app_id: AppId,
    before: Option<&str>,
    kind: Option<&str>,
    limit: Option<i64>,
) -> Result<EventPage, UseCaseError> {
    let limit = limit.unwrap_or(DEFAULT_EVENT_PAGE);
    if !(1..=MAX_EVENT_PAGE).contains(&limit) {
        return Err(UseCaseError::invalid("limit", format!("must be 1 to {MAX_EVENT_PAGE}")));
    }
    if let Some(before) = before {
        if before.parse::<ulid::Ulid>().map(|u| u.to_string()).as_deref() != Ok(before) {
            return Err(UseCaseError::invalid(
                "before",
                "must be an event id (a 26-character ULID)",
            ));
        }
    }
    let kind = match kind {
        Some(kind) => Some(
            kind.parse::<EventKind>().map_err(|e| UseCaseError::invalid("kind", e.to_string()))?,
        ),
        None => None,
    };
    let events = services.audit.store().list(app_id, before, kind, limit).await?;
    if events.is_empty() && before.is_none() {
        // Tell an app without events from an app that does not exist.
        get_app(services, app_id).await?;
    }
    let next =
        if events.len() as i64 == limit { events.last().map(|e| e.event_id.clone()) } else { None };
    Ok(EventPage { events, next })
}
