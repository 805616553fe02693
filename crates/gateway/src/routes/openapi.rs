//! `GET /openapi.json`: the OpenAPI description of every route of [`super`], built from the
//! `#[utoipa::path]` annotations of the handlers and the `ToSchema` types they read and
//! answer. A handler added to a route module is listed in `paths(...)` below.
//!
//! The compatibility routes of `[[compat.routes]]` are configured at run time and are not
//! described. `tests/api/openapi.rs` keeps the document and the routes in step.

use std::sync::LazyLock;

use actix_web::http::header;
use actix_web::{web, HttpResponse};
use keygate_keyring::{KeyId, PublishedKey};
use keygate_sessions::{SessionId, SessionView};
use keygate_tenants::{App, AppId, AppSettings, OnReuse, SettingsPatch};
use serde::Deserialize;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityScheme};
use utoipa::openapi::{HeaderBuilder, ObjectBuilder, OneOfBuilder, RefOr, Schema, Type};
use utoipa::{IntoResponses, Modify, OpenApi, PartialSchema, ToSchema};

use super::resource;
use crate::admin::KeyView;
use crate::error::{ApiError, Body as ErrorBody, ErrorCode, FieldEntry};

/// The security scheme of the tenant endpoints (`security(("app_key" = []))`).
const APP_KEY: &str = "app_key";
/// The security scheme of the root endpoints (`security(("root_key" = []))`).
const ROOT_KEY: &str = "root_key";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "keygate",
        description = "keygate, a multi-tenant auth gateway: ES256 tokens, rotating refresh \
            tokens with reuse detection, per-app signing keys.\n\n\
            Every request body is one JSON object sent with `Content-Type: application/json` \
            (else 415), of at most 16 KiB (else 413). Every error answers the `ErrorBody`; \
            a method that a documented path does not serve answers 405 `method_not_allowed`, \
            and an undocumented path 404 `not_found`. Every answer carries an \
            `X-Request-Id`. Compatibility routes (`[[compat.routes]]` in the configuration) \
            are set up at run time and are not described here.",
    ),
    paths(
        super::sessions::sign,
        super::sessions::renew,
        super::sessions::verify,
        super::sessions::logout,
        super::sessions::revoke,
        super::sessions::get_session,
        super::sessions::list_sessions,
        super::tenant::jwks,
        super::tenant::pub_keys,
        super::tenant::app_settings,
        super::root::list_apps,
        super::root::create_app,
        super::root::get_app,
        super::root::update_app,
        super::root::delete_app,
        super::root::rotate_app_key,
        super::root::list_keys,
        super::root::rotate_keys,
        super::root::revoke_key,
        super::root::revoke_sessions,
        super::health::alive,
        super::health::ready,
        super::metrics::metrics,
        super::events::list_events,
        super::events::get_webhook,
        super::events::set_webhook,
        super::events::remove_webhook,
        serve,
    ),
    components(schemas(
        ErrorBody, FieldEntry, ErrorCode, App, AppSettings, OnReuse, SettingsPatch, AppId, KeyId,
        SessionId,
    )),
    modifiers(&SecuritySchemes, &Aliases, &RequestIdHeader),
    tags(
        (name = "tokens", description = "An app's tokens and sessions; `Authorization: <app_key>`."),
        (name = "app", description = "An app's keys and settings."),
        (name = "root", description = "Platform administration; `Authorization: <root_key>`."),
        (name = "operations", description = "Liveness, readiness, metrics, this document."),
    )
)]
struct ApiDoc;

/// The two keys, both sent as `Authorization: KEY` or `Authorization: Bearer KEY`.
struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        for (name, description) in [
            (
                APP_KEY,
                "The app's key (`kg_…`), as `Authorization: <app_key>` or \
                 `Authorization: Bearer <app_key>`.",
            ),
            (
                ROOT_KEY,
                "The root key, as `Authorization: <root_key>` or \
                 `Authorization: Bearer <root_key>`.",
            ),
        ] {
            components.add_security_scheme(
                name,
                SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                    "Authorization",
                    description,
                ))),
            );
        }
    }
}

/// The paths that one handler serves under several names: `#[utoipa::path(impl_for = …)]`
/// describes each further name, and this adds them.
struct Aliases;

impl Modify for Aliases {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        fn add<P: utoipa::Path>(openapi: &mut utoipa::openapi::OpenApi) {
            let mut operation = P::operation();
            operation.tags = Some(vec!["operations".to_owned()]);
            openapi.paths.add_path_operation(P::path(), P::methods(), operation);
        }
        add::<super::health::Ping>(openapi);
        add::<super::health::Health>(openapi);
    }
}

/// Every answer carries the request's id ([`crate::request_id`]).
struct RequestIdHeader;

impl Modify for RequestIdHeader {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.options,
                &mut item.head,
                &mut item.patch,
                &mut item.trace,
            ];
            for operation in operations.into_iter().flatten() {
                for response in operation.responses.responses.values_mut() {
                    if let RefOr::T(response) = response {
                        let header = HeaderBuilder::new()
                            .schema(ObjectBuilder::new().schema_type(Type::String))
                            .description(Some(
                                "The request's id: the request's own `X-Request-Id` when it \
                                 is well formed, else a new ULID. Every log line of the \
                                 request carries it.",
                            ))
                            .build();
                        response.headers.insert("X-Request-Id".to_owned(), header);
                    }
                }
            }
        }
    }
}

/// The document, serialized once.
static DOCUMENT: LazyLock<Result<web::Bytes, String>> =
    LazyLock::new(|| ApiDoc::openapi().to_json().map(web::Bytes::from).map_err(|e| e.to_string()));

pub fn configure(cfg: &mut web::ServiceConfig) {
    // Built with the app, so that a document that cannot be built shows at once.
    if let Err(e) = &*DOCUMENT {
        tracing::error!(error = %e, "the OpenAPI document could not be built");
    }
    cfg.service(resource("/openapi.json").route(web::get().to(serve)));
}

/// This document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    responses(
        (status = 200, description = "The OpenAPI 3.1 description of this API.",
            content_type = "application/json", body = Object),
        (status = 500, description = "The document could not be built.", body = ErrorBody),
    )
)]
async fn serve() -> Result<HttpResponse, ApiError> {
    match &*DOCUMENT {
        Ok(json) => Ok(HttpResponse::Ok()
            .insert_header((header::CONTENT_TYPE, "application/json"))
            .body(json.clone())),
        Err(e) => Err(ApiError::Internal(e.clone().into())),
    }
}

// ---- responses shared by many operations ----------------------------------------------------

/// The failures of an endpoint that takes an app key.
#[derive(IntoResponses)]
#[allow(dead_code)] // documentation only
pub(crate) enum AppKeyErrors {
    /// `invalid_client`, "invalid app key or id": a missing or wrong app key, an unknown app
    /// or a malformed app id, all alike.
    #[response(status = 403)]
    Forbidden(ErrorBody<'static>),
    /// `rate_limited`: too many failed authentications from this address.
    #[response(status = 429, headers(("Retry-After" = u64, description = "Seconds to wait.")))]
    TooManyRequests(ErrorBody<'static>),
    /// `internal`: an opaque failure; the cause is in the gateway's log.
    #[response(status = 500)]
    Internal(ErrorBody<'static>),
    /// `unavailable`: the database is down or overloaded; nothing was changed.
    #[response(status = 503, headers(("Retry-After" = u64, description = "Seconds to wait.")))]
    Unavailable(ErrorBody<'static>),
}

/// The failures of an endpoint that takes the root key.
#[derive(IntoResponses)]
#[allow(dead_code)] // documentation only
pub(crate) enum RootKeyErrors {
    /// `invalid_client`, "invalid root key": a missing or wrong root key.
    #[response(status = 403)]
    Forbidden(ErrorBody<'static>),
    /// `rate_limited`: too many failed authentications from this address.
    #[response(status = 429, headers(("Retry-After" = u64, description = "Seconds to wait.")))]
    TooManyRequests(ErrorBody<'static>),
    /// `internal`: an opaque failure; the cause is in the gateway's log.
    #[response(status = 500)]
    Internal(ErrorBody<'static>),
    /// `unavailable`: the database is down or overloaded; nothing was changed.
    #[response(status = 503, headers(("Retry-After" = u64, description = "Seconds to wait.")))]
    Unavailable(ErrorBody<'static>),
}

/// The failures of an endpoint that reads the database without a key.
#[derive(IntoResponses)]
#[allow(dead_code)] // documentation only
pub(crate) enum ServerErrors {
    /// `internal`: an opaque failure; the cause is in the gateway's log.
    #[response(status = 500)]
    Internal(ErrorBody<'static>),
    /// `unavailable`: the database is down or overloaded.
    #[response(status = 503, headers(("Retry-After" = u64, description = "Seconds to wait.")))]
    Unavailable(ErrorBody<'static>),
}

/// The failures of reading a JSON body.
#[derive(IntoResponses)]
#[allow(dead_code)] // documentation only
pub(crate) enum BodyErrors {
    /// `invalid_request`: the body is not one JSON object of the documented shape, or a
    /// field is invalid; `errors[]` names each bad field.
    #[response(status = 400)]
    Invalid(ErrorBody<'static>),
    /// `payload_too_large`: a body over 16 KiB.
    #[response(status = 413)]
    TooLarge(ErrorBody<'static>),
    /// `unsupported_media_type`: a body without `Content-Type: application/json`.
    #[response(status = 415)]
    UnsupportedMediaType(ErrorBody<'static>),
}

// ---- bodies that the handlers read or write as free JSON ------------------------------------

/// A client's IP address, IPv4 or IPv6, in a form that every parser reads alike
/// (`010.1.1.1`, `127.1`, `0x7f.0.0.1` and zone ids are refused).
pub(crate) struct IpAddress;

impl ToSchema for IpAddress {}

impl PartialSchema for IpAddress {
    fn schema() -> RefOr<Schema> {
        let format = |f| {
            ObjectBuilder::new()
                .schema_type(Type::String)
                .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(f)))
        };
        OneOfBuilder::new()
            .item(format(utoipa::openapi::KnownFormat::Ipv4))
            .item(format(utoipa::openapi::KnownFormat::Ipv6))
            .description(Some(
                "An IPv4 or IPv6 address (`010.1.1.1`, `127.1`, `0x7f.0.0.1` and zone ids are \
                 refused).",
            ))
            .examples(["203.0.113.7"])
            .into()
    }
}

/// An audience: one string, or an array of 1 to 16 of them.
pub(crate) struct Audience;

impl ToSchema for Audience {}

impl PartialSchema for Audience {
    fn schema() -> RefOr<Schema> {
        let one = || {
            ObjectBuilder::new().schema_type(Type::String).min_length(Some(1)).max_length(Some(255))
        };
        OneOfBuilder::new()
            .item(one())
            .item(
                utoipa::openapi::ArrayBuilder::new()
                    .items(one())
                    .min_items(Some(1))
                    .max_items(Some(16)),
            )
            .description(Some("The `aud` of the auth tokens; the app's audience by default."))
            .into()
    }
}

/// The body of `/sign`. Every member other than `sub`, `ip`, `useragent` and `aud` is a
/// custom claim of the auth tokens (at most 4 KiB in all): `personal`, `roles`, … The
/// reserved names `iss sub aud exp nbf iat jid jti sid type kid typ alg ip useragent` are
/// refused. No string may contain NUL.
#[derive(ToSchema)]
#[allow(dead_code)] // documentation only
#[schema(example = json!({"sub": "user-1", "ip": "203.0.113.7", "useragent": "Mozilla/5.0",
    "roles": ["admin"]}))]
pub(crate) struct SignRequest {
    /// The subject: the user's id in the app.
    #[schema(min_length = 1, max_length = 255)]
    sub: String,
    #[schema(value_type = IpAddress)]
    ip: String,
    /// The client's user agent (at most 512 bytes).
    #[schema(max_length = 512)]
    useragent: String,
    #[schema(value_type = Audience, required = false)]
    aud: (),
}

/// The body of `/renew`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // documentation only
pub(crate) struct RenewRequest {
    /// The refresh token (at most 8 KiB).
    #[schema(min_length = 1, max_length = 8192)]
    refresh_token: String,
    #[schema(value_type = IpAddress)]
    ip: String,
    /// The client's user agent (at most 512 bytes).
    #[schema(max_length = 512)]
    useragent: String,
}

/// The body of `/verify` and `/logout`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // documentation only
pub(crate) struct TokenRequest {
    /// A token of this app (at most 8 KiB).
    #[schema(min_length = 1, max_length = 8192)]
    token: String,
}

/// The body of `/revoke`: exactly one of `session_id` and `sub`.
#[derive(Deserialize, ToSchema)]
#[serde(untagged, deny_unknown_fields)]
#[allow(dead_code)] // documentation only
pub(crate) enum RevokeRequest {
    /// One session.
    Session { session_id: SessionId },
    /// Every session of a subject.
    Subject {
        #[schema(min_length = 1, max_length = 255)]
        sub: String,
    },
}

/// The body of `POST /root/apps`: a name, and any other settings (absent ones take their
/// default).
#[derive(Deserialize, ToSchema)]
#[allow(dead_code)] // documentation only
pub(crate) struct CreateAppRequest {
    /// Unique; no control characters.
    #[schema(min_length = 1, max_length = 100)]
    name: String,
    #[serde(flatten)]
    settings: SettingsPatch,
}

/// The answer of `/logout`.
#[derive(ToSchema)]
#[allow(dead_code)] // documentation only
pub(crate) struct LogoutAnswer {
    #[schema(example = "ok")]
    status: String,
    /// 1 if the token's session was revoked now, 0 if it already was.
    #[schema(minimum = 0, maximum = 1)]
    revoked: u64,
}

/// How many sessions were revoked.
#[derive(ToSchema)]
#[allow(dead_code)] // documentation only
pub(crate) struct RevokedCount {
    revoked: u64,
}

/// Live sessions, oldest first.
#[derive(ToSchema)]
#[allow(dead_code)] // documentation only
pub(crate) struct SessionList {
    sessions: Vec<SessionView>,
}

/// The app's published keys (`next`, `active`, `retired`).
#[derive(ToSchema)]
#[allow(dead_code)] // documentation only
pub(crate) struct PublishedKeys {
    keys: Vec<PublishedKey>,
}

/// Every app.
#[derive(ToSchema)]
#[allow(dead_code)] // documentation only
pub(crate) struct AppList {
    apps: Vec<App>,
}

/// The app that was deleted.
#[derive(ToSchema)]
#[allow(dead_code)] // documentation only
pub(crate) struct Deleted {
    deleted: AppId,
}

/// The app whose webhook was removed.
#[derive(ToSchema)]
#[allow(dead_code)] // documentation only
pub(crate) struct Removed {
    removed: AppId,
}

/// Every signing key of an app, in every state.
#[derive(ToSchema)]
#[allow(dead_code)] // documentation only
pub(crate) struct KeyList {
    keys: Vec<KeyView>,
}

/// The process runs.
#[derive(ToSchema)]
#[allow(dead_code)] // documentation only
pub(crate) struct Alive {
    #[schema(example = "ok")]
    status: String,
}

/// The database answers.
#[derive(ToSchema)]
#[allow(dead_code)] // documentation only
pub(crate) struct Ready {
    #[schema(example = "ok")]
    status: String,
    /// `sqlite` or `postgres`.
    #[schema(example = "sqlite")]
    database: String,
}
