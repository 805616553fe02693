//! Administrative operations, shared by the root HTTP API and the CLI so both behave the
//! same.

use keygate_keyring::{KeyId, KeyRecord, KeyState, Revocation, Rotation};
use keygate_sessions::{RevokeScope, SessionId, SessionView};
use keygate_tenants::{App, AppId, AppRecord, FieldError, SettingsPatch, TenantError};
use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::Services;

/// The answer to creating an app. The app key is shown only here.
#[derive(Debug, Serialize)]
pub struct CreatedApp {
    pub app_id: AppId,
    pub app_key: String,
    pub key_id: KeyId,
    pub public_key: String,
}

/// The answer to rotating an app key.
#[derive(Debug, Serialize)]
pub struct RotatedAppKey {
    pub app_id: AppId,
    pub app_key: String,
    pub previous_key_valid_until: Option<i64>,
}

/// A signing key as admins see it (no private material).
#[derive(Debug, Serialize)]
pub struct KeyView {
    pub key_id: KeyId,
    pub status: KeyState,
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

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotateAppKeyRequest {
    /// Seconds during which the previous key keeps working.
    #[serde(default)]
    pub grace: i64,
}

/// Creates an app with its first two signing keys.
pub async fn create_app(
    services: &Services,
    patch: &SettingsPatch,
    now: i64,
) -> Result<CreatedApp, ApiError> {
    let Some(name) = patch.name.as_deref() else {
        return Err(ApiError::fields(vec![FieldError::new("name", "is required")]));
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
    Ok(CreatedApp {
        app_id,
        app_key: app_key.expose().to_owned(),
        key_id: signer.key_id,
        public_key: signer.public_key.clone(),
    })
}

/// The app with this id, or 404.
pub async fn get_app(services: &Services, app_id: AppId) -> Result<AppRecord, ApiError> {
    services
        .tenants
        .store()
        .get_app(app_id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("app {app_id} not found")))
}

/// An app by id or by name (the CLI accepts either).
pub async fn find_app(services: &Services, id_or_name: &str) -> Result<AppRecord, ApiError> {
    services.tenants.find(id_or_name).await.map_err(|e| match e {
        TenantError::NotFound => {
            ApiError::NotFound(format!("no app with id or name {id_or_name:?}"))
        }
        other => other.into(),
    })
}

pub async fn list_apps(services: &Services) -> Result<Vec<App>, ApiError> {
    Ok(services.tenants.list_apps().await?)
}

pub async fn update_app(
    services: &Services,
    app_id: AppId,
    patch: &SettingsPatch,
    now: i64,
) -> Result<App, ApiError> {
    let record = services.tenants.update_app(app_id, patch, now).await?;
    tracing::info!(%app_id, "app updated");
    Ok(record.app)
}

pub async fn delete_app(services: &Services, app_id: AppId) -> Result<(), ApiError> {
    services.tenants.delete_app(app_id).await?;
    services.keyring.forget(app_id);
    tracing::info!(%app_id, "app deleted");
    Ok(())
}

pub async fn rotate_app_key(
    services: &Services,
    app_id: AppId,
    grace: i64,
    now: i64,
) -> Result<RotatedAppKey, ApiError> {
    let rotated = services.tenants.rotate_app_key(app_id, grace, now).await?;
    tracing::info!(%app_id, grace, "app key rotated");
    Ok(RotatedAppKey {
        app_id,
        app_key: rotated.app_key.expose().to_owned(),
        previous_key_valid_until: rotated.previous_valid_until,
    })
}

pub async fn list_keys(services: &Services, app_id: AppId) -> Result<Vec<KeyView>, ApiError> {
    get_app(services, app_id).await?;
    Ok(services.keyring.list(app_id).await?.iter().map(KeyView::from).collect())
}

pub async fn rotate_keys(
    services: &Services,
    app_id: AppId,
    now: i64,
) -> Result<Rotation, ApiError> {
    get_app(services, app_id).await?;
    let rotation = services.keyring.rotate(app_id, now).await?;
    tracing::info!(%app_id, active = %rotation.active_key_id, "signing key rotated");
    Ok(rotation)
}

pub async fn revoke_key(
    services: &Services,
    app_id: AppId,
    key_id: KeyId,
    now: i64,
) -> Result<Revocation, ApiError> {
    get_app(services, app_id).await?;
    let revocation = services.keyring.revoke(app_id, key_id, now).await?;
    tracing::warn!(%app_id, %key_id, "signing key revoked");
    Ok(revocation)
}

/// Revokes one session, a subject's sessions, or (with neither) every session of the app.
pub async fn revoke_sessions(
    services: &Services,
    app_id: AppId,
    target: Option<SessionTarget<'_>>,
    now: i64,
) -> Result<u64, ApiError> {
    get_app(services, app_id).await?;
    let scope = match target {
        Some(SessionTarget::Session(id)) => RevokeScope::Session(id),
        Some(SessionTarget::Subject(sub)) => RevokeScope::Subject(sub),
        None => RevokeScope::App,
    };
    Ok(services.sessions.revoke(app_id, scope, "revoked by an admin", now).await?)
}

/// The sessions an admin revokes.
#[derive(Debug, Clone, Copy)]
pub enum SessionTarget<'a> {
    Session(SessionId),
    Subject(&'a str),
}

pub async fn list_sessions(
    services: &Services,
    app_id: AppId,
    sub: &str,
    now: i64,
) -> Result<Vec<SessionView>, ApiError> {
    get_app(services, app_id).await?;
    Ok(services.sessions.list(app_id, Some(sub), now).await?)
}
