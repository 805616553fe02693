//! The root API (root key): apps, their app keys, signing keys and sessions.

use actix_web::{web, HttpRequest, HttpResponse, Resource};
use keygate_keyring::{KeyId, Revocation, Rotation};
use keygate_tenants::{App, AppId, SettingsPatch};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::sessions::{RevokeRequest, SessionList, SubjectQuery};
use crate::bootstrap::Services;
use crate::http::error::ErrorBody;
use crate::http::extract::{JsonBody, OptionalJsonBody, RootAuth, RootPath};
use crate::http::resource::{resource, resource_as, Answer};
use crate::http::schema::{AppNotFound, BodyErrors, RevokedCount, RootKeyErrors};
use crate::usecases::admin::{self, Actor, CreatedApp, KeyView, RotatedAppKey};

// The paths of the routes, each named once: in `configure` and in the OpenAPI document.
const APPS: &str = "/root/apps";
const LIVE_SESSIONS: &str = "/root/live-sessions";
const APP: &str = "/root/apps/{app_id}";
const APP_SESSIONS: &str = "/root/apps/{app_id}/sessions";
const REVOKE_SESSIONS: &str = "/root/apps/{app_id}/sessions/revoke";
const ROTATE_APP_KEY: &str = "/root/apps/{app_id}/rotate-app-key";
const KEYS: &str = "/root/apps/{app_id}/keys";
const ROTATE_KEYS: &str = "/root/apps/{app_id}/keys/rotate";
const REVOKE_KEY: &str = "/root/apps/{app_id}/keys/{key_id}/revoke";

/// The root API's resources, each made by `res` from its path.
fn routes(cfg: &mut web::ServiceConfig, res: fn(&'static str) -> Resource) {
    cfg.service(res(APPS).route(web::get().to(list_apps)).route(web::post().to(create_app)))
        .service(res(LIVE_SESSIONS).route(web::get().to(live_sessions)))
        .service(
            res(APP)
                .route(web::get().to(get_app))
                .route(web::patch().to(update_app))
                .route(web::delete().to(delete_app)),
        )
        .service(
            res(APP_SESSIONS)
                .route(web::get().to(list_sessions))
                .route(web::delete().to(revoke_sessions)),
        )
        .service(res(REVOKE_SESSIONS).route(web::post().to(revoke_some)))
        .service(res(ROTATE_APP_KEY).route(web::post().to(rotate_app_key)))
        .service(res(KEYS).route(web::get().to(list_keys)))
        .service(res(ROTATE_KEYS).route(web::post().to(rotate_keys)))
        .service(res(REVOKE_KEY).route(web::post().to(revoke_key)));
}

/// The resource of a root route at its path, `/root/…`.
pub(super) fn under_root(path: &'static str) -> Resource {
    resource(path)
}

/// The resource of a root route inside the `/console` scope, as `/console/api/…`.
pub(super) fn under_console(path: &'static str) -> Resource {
    let within_root = path.strip_prefix("/root").unwrap_or(path);
    resource_as(format!("/api{within_root}"), format!("/console/api{within_root}"))
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    routes(cfg, under_root);
}

/// The same API for the console, inside its scope: the handlers' [`RootAuth`] then takes a
/// console session (see `http::console`).
pub fn configure_console(cfg: &mut web::ServiceConfig) {
    routes(cfg, under_console);
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct RotateAppKeyRequest {
    /// Seconds during which the previous key keeps working (default 0).
    #[serde(default)]
    #[schema(minimum = 0, maximum = 604800)]
    grace: i64,
}

/// Every app.
#[derive(Serialize, ToSchema)]
struct AppList {
    apps: Vec<App>,
}

/// The live sessions of every app.
#[derive(Serialize, ToSchema)]
struct LiveSessions {
    /// Live sessions (not revoked, not past their absolute expiry) by app id; 0 for an app
    /// without any.
    #[schema(value_type = std::collections::BTreeMap<String, u64>)]
    live_sessions: std::collections::BTreeMap<AppId, u64>,
}

/// The app that was deleted.
#[derive(Serialize, ToSchema)]
struct Deleted {
    deleted: AppId,
}

/// Every signing key of an app, in every state.
#[derive(Serialize, ToSchema)]
struct KeyList {
    keys: Vec<KeyView>,
}

/// Every app.
#[utoipa::path(get, path = APPS, tag = "root",
    security(("root_key" = [])),
    responses((status = 200, description = "Every app.", body = AppList), RootKeyErrors))]
async fn list_apps(_: RootAuth, services: web::Data<Services>) -> Answer {
    Ok(HttpResponse::Ok().json(AppList { apps: admin::list_apps(&services).await? }))
}

/// How many live sessions each app has. One scan of the live sessions: for a console or a
/// dashboard, not for every request.
#[utoipa::path(get, path = LIVE_SESSIONS, tag = "root",
    security(("root_key" = [])),
    responses((status = 200, description = "Live sessions by app.", body = LiveSessions),
        RootKeyErrors))]
async fn live_sessions(_: RootAuth, services: web::Data<Services>) -> Answer {
    let live_sessions = admin::live_session_counts(&services, services.clock.now()).await?;
    Ok(HttpResponse::Ok().json(LiveSessions { live_sessions }))
}

/// Creates an app with its active and next signing keys. The app key is shown only here.
#[utoipa::path(post, path = APPS, tag = "root",
    security(("root_key" = [])),
    request_body(content = SettingsPatch, description = "A name, which is required here, and \
        any other settings (absent ones take their default)."),
    responses(
        (status = 201, description = "The app, its app key and its active signing key.",
            body = CreatedApp),
        BodyErrors,
        RootKeyErrors,
    ))]
async fn create_app(
    _: RootAuth,
    services: web::Data<Services>,
    body: JsonBody<SettingsPatch>,
) -> Answer {
    let created = admin::create_app(&services, &body.0, Actor::Root, services.clock.now()).await?;
    Ok(HttpResponse::Created().json(created))
}

/// An app's settings.
#[utoipa::path(get, path = APP, tag = "root",
    params(("app_id" = AppId, Path, description = "The app's id.")),
    security(("root_key" = [])),
    responses(
        (status = 200, description = "The app's settings.", body = App),
        AppNotFound,
        RootKeyErrors,
    ))]
async fn get_app(RootPath(app_id): RootPath<AppId>, services: web::Data<Services>) -> Answer {
    let record = admin::get_app(&services, app_id).await?;
    Ok(HttpResponse::Ok().json(record.app))
}

/// Changes an app's settings; absent fields keep their value.
#[utoipa::path(patch, path = APP, tag = "root",
    params(("app_id" = AppId, Path, description = "The app's id.")),
    security(("root_key" = [])),
    request_body = SettingsPatch,
    responses(
        (status = 200, description = "The new settings.", body = App),
        AppNotFound,
        BodyErrors,
        RootKeyErrors,
    ))]
async fn update_app(
    RootPath(app_id): RootPath<AppId>,
    services: web::Data<Services>,
    body: JsonBody<SettingsPatch>,
) -> Answer {
    let app =
        admin::update_app(&services, app_id, &body.0, Actor::Root, services.clock.now()).await?;
    Ok(HttpResponse::Ok().json(app))
}

/// Deletes an app, with its keys and sessions.
#[utoipa::path(delete, path = APP, tag = "root",
    params(("app_id" = AppId, Path, description = "The app's id.")),
    security(("root_key" = [])),
    responses(
        (status = 200, description = "The app is gone.", body = Deleted),
        AppNotFound,
        RootKeyErrors,
    ))]
async fn delete_app(RootPath(app_id): RootPath<AppId>, services: web::Data<Services>) -> Answer {
    admin::delete_app(&services, app_id, Actor::Root).await?;
    Ok(HttpResponse::Ok().json(Deleted { deleted: app_id }))
}

/// Replaces an app's app key; with a `grace`, the previous one keeps working that long.
#[utoipa::path(post, path = ROTATE_APP_KEY, tag = "root",
    params(("app_id" = AppId, Path, description = "The app's id.")),
    security(("root_key" = [])),
    request_body(content = Option<RotateAppKeyRequest>, description = "Optional: an empty \
        body is a grace of 0."),
    responses(
        (status = 200, description = "The new app key.", body = RotatedAppKey),
        AppNotFound,
        BodyErrors,
        RootKeyErrors,
    ))]
async fn rotate_app_key(
    RootPath(app_id): RootPath<AppId>,
    services: web::Data<Services>,
    body: OptionalJsonBody<RotateAppKeyRequest>,
) -> Answer {
    let grace = body.0.unwrap_or_default().grace;
    let rotated =
        admin::rotate_app_key(&services, app_id, grace, Actor::Root, services.clock.now()).await?;
    Ok(HttpResponse::Ok().json(rotated))
}

/// Every signing key of an app, in every state.
#[utoipa::path(get, path = KEYS, tag = "root",
    params(("app_id" = AppId, Path, description = "The app's id.")),
    security(("root_key" = [])),
    responses(
        (status = 200, description = "The keys.", body = KeyList),
        AppNotFound,
        RootKeyErrors,
    ))]
async fn list_keys(RootPath(app_id): RootPath<AppId>, services: web::Data<Services>) -> Answer {
    let keys = admin::list_keys(&services, app_id).await?;
    Ok(HttpResponse::Ok().json(KeyList { keys }))
}

/// A planned rotation: promotes the next key, retires the active one, publishes a new next
/// key.
#[utoipa::path(post, path = ROTATE_KEYS, tag = "root",
    params(("app_id" = AppId, Path, description = "The app's id.")),
    security(("root_key" = [])),
    responses(
        (status = 200, description = "The keys after the rotation.", body = Rotation),
        AppNotFound,
        RootKeyErrors,
    ))]
async fn rotate_keys(RootPath(app_id): RootPath<AppId>, services: web::Data<Services>) -> Answer {
    let rotation = admin::rotate_keys(&services, app_id, Actor::Root, services.clock.now()).await?;
    Ok(HttpResponse::Ok().json(rotation))
}

/// Revokes a signing key at once; revoking the active key promotes the published next key.
#[utoipa::path(post, path = REVOKE_KEY, tag = "root",
    params(
        ("app_id" = AppId, Path, description = "The app's id."),
        ("key_id" = KeyId, Path, description = "The signing key's id."),
    ),
    security(("root_key" = [])),
    responses(
        (status = 200, description = "The key is revoked.", body = Revocation),
        (status = 400, description = "`invalid_request`: the key is already revoked.",
            body = ErrorBody),
        (status = 404, description = "`not_found`: no such app or key (or a malformed id).",
            body = ErrorBody),
        RootKeyErrors,
    ))]
async fn revoke_key(
    RootPath((app_id, key_id)): RootPath<(AppId, KeyId)>,
    services: web::Data<Services>,
) -> Answer {
    let revocation =
        admin::revoke_key(&services, app_id, key_id, Actor::Root, services.clock.now()).await?;
    Ok(HttpResponse::Ok().json(revocation))
}

/// Revokes every live session of an app.
#[utoipa::path(delete, path = APP_SESSIONS, tag = "root",
    params(("app_id" = AppId, Path, description = "The app's id.")),
    security(("root_key" = [])),
    responses(
        (status = 200, description = "How many sessions were revoked.", body = RevokedCount),
        AppNotFound,
        RootKeyErrors,
    ))]
async fn revoke_sessions(
    RootPath(app_id): RootPath<AppId>,
    services: web::Data<Services>,
) -> Answer {
    let revoked =
        admin::revoke_sessions(&services, app_id, None, Actor::Root, services.clock.now()).await?;
    Ok(HttpResponse::Ok().json(RevokedCount { revoked }))
}

/// A subject's live sessions in an app, oldest first: `?sub=` (required, the only
/// parameter).
#[utoipa::path(get, path = APP_SESSIONS, tag = "root",
    params(("app_id" = AppId, Path, description = "The app's id."), SubjectQuery),
    security(("root_key" = [])),
    responses(
        (status = 200, description = "The subject's live sessions.", body = SessionList),
        (status = 400, description = "`invalid_request`: `sub` is missing, invalid, or not \
            the only query parameter.", body = ErrorBody),
        AppNotFound,
        RootKeyErrors,
    ))]
async fn list_sessions(
    RootPath(app_id): RootPath<AppId>,
    services: web::Data<Services>,
    request: HttpRequest,
) -> Answer {
    let sub = SubjectQuery::of(&request)?;
    let sessions = admin::list_sessions(&services, app_id, &sub, services.clock.now()).await?;
    Ok(HttpResponse::Ok().json(SessionList { sessions }))
}

/// Revokes one session of an app (`session_id`), or every session of one of its subjects
/// (`sub`): exactly one of the two.
#[utoipa::path(post, path = REVOKE_SESSIONS, tag = "root",
    params(("app_id" = AppId, Path, description = "The app's id.")),
    security(("root_key" = [])),
    request_body = RevokeRequest,
    responses(
        (status = 200, description = "How many sessions were revoked.", body = RevokedCount),
        AppNotFound,
        BodyErrors,
        RootKeyErrors,
    ))]
async fn revoke_some(
    RootPath(app_id): RootPath<AppId>,
    services: web::Data<Services>,
    body: JsonBody<RevokeRequest>,
) -> Answer {
    let target = body.0.target()?;
    let revoked =
        admin::revoke_sessions(&services, app_id, Some(target), Actor::Root, services.clock.now())
            .await?;
    Ok(HttpResponse::Ok().json(RevokedCount { revoked }))
}
