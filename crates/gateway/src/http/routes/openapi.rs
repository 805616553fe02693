//! `GET /openapi.json`: the OpenAPI description of every route of [`super`], built from the
//! `#[utoipa::path]` annotations of the handlers and the `ToSchema` types they read and
//! answer. A handler added to a route module is listed in `paths(...)` below.
//!
//! The compatibility routes of `[[compat.routes]]` are configured at run time and are not
//! described. `tests/api/openapi.rs` keeps the document and the routes in step.

use std::sync::LazyLock;

use actix_web::http::header;
use actix_web::{web, HttpResponse};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{HeaderBuilder, ObjectBuilder, RefOr, Type};
use utoipa::{Modify, OpenApi};

use super::{events, health, metrics, oauth, published, root, sessions};
use crate::http::error::{ApiError, ErrorBody};
use crate::http::resource::{resource, Answer};

// The path of the route, named once: in `configure` and in the OpenAPI document.
const OPENAPI: &str = "/openapi.json";

/// The security scheme of the tenant endpoints (`security(("app_key" = []))`).
const APP_KEY: &str = "app_key";
/// The security scheme of the root endpoints (`security(("root_key" = []))`).
const ROOT_KEY: &str = "root_key";
/// HTTP Basic client authentication of the OAuth endpoints.
const CLIENT_SECRET_BASIC: &str = "client_secret_basic";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "keygate",
        description = "keygate, a multi-tenant auth gateway: ES256 tokens, rotating refresh \
            tokens with reuse detection, per-app signing keys.\n\n\
            Every request body is one JSON object sent with `Content-Type: application/json` \
            (else 415), of at most 16 KiB (else 413), except on the OAuth endpoints, which \
            read forms. Every error answers the `ErrorBody`; \
            a method that a documented path does not serve answers 405 `method_not_allowed`, \
            and an undocumented path 404 `not_found`. Every answer carries an \
            `X-Request-Id`. Compatibility routes (`[[compat.routes]]` in the configuration) \
            are set up at run time and are not described here.",
    ),
    paths(
        sessions::sign,
        sessions::renew,
        sessions::verify,
        sessions::logout,
        sessions::revoke,
        sessions::get_session,
        sessions::list_sessions,
        oauth::token,
        oauth::revoke,
        oauth::introspect,
        oauth::metadata,
        published::jwks,
        published::pub_keys,
        published::app_settings,
        root::list_apps,
        root::live_sessions,
        root::create_app,
        root::get_app,
        root::update_app,
        root::delete_app,
        root::rotate_app_key,
        root::list_keys,
        root::rotate_keys,
        root::revoke_key,
        root::revoke_sessions,
        root::list_sessions,
        root::revoke_some,
        health::alive,
        health::ready,
        metrics::metrics,
        events::list_events,
        events::get_webhook,
        events::set_webhook,
        events::remove_webhook,
        serve,
    ),
    modifiers(&SecuritySchemes, &Aliases, &RequestIdHeader),
    tags(
        (name = "tokens", description = "An app's tokens and sessions; `Authorization: <app_key>`."),
        (name = "oauth", description = "The OAuth 2.0 face of an app (RFC 6749, 7009, 7662, \
            8414): the app is a confidential client, its id the `client_id`, its app key the \
            `client_secret`, sent with HTTP Basic (`client_secret_basic`) or in the form \
            (`client_secret_post`). Bodies are `application/x-www-form-urlencoded`; errors \
            answer the `OAuthErrorBody` of RFC 6749 §5.2."),
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
        components.add_security_scheme(
            CLIENT_SECRET_BASIC,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Basic)
                    .description(Some(
                        "RFC 6749 §2.3.1: the app id as the user, the app key as the password, \
                         each form-urlencoded before base64.",
                    ))
                    .build(),
            ),
        );
    }
}

/// The paths that one handler serves under several names: `#[utoipa::path(impl_for = …)]`
/// describes each further name, and this adds them.
struct Aliases;

impl Modify for Aliases {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        fn add<P: utoipa::Path>(openapi: &mut utoipa::openapi::OpenApi, tag: &str) {
            let mut operation = P::operation();
            operation.tags = Some(vec![tag.to_owned()]);
            openapi.paths.add_path_operation(P::path(), P::methods(), operation);
        }
        add::<health::Ping>(openapi, "operations");
        add::<health::Health>(openapi, "operations");
        add::<oauth::MetadataByIssuer>(openapi, "oauth");
    }
}

/// Every answer carries the request's id ([`crate::http::request_id`]).
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
    cfg.service(resource(OPENAPI).route(web::get().to(serve)));
}

/// This document.
#[utoipa::path(
    get,
    path = OPENAPI,
    tag = "operations",
    responses(
        (status = 200, description = "The OpenAPI 3.1 description of this API.",
            content_type = "application/json", body = Object),
        (status = 500, description = "The document could not be built.", body = ErrorBody),
    )
)]
async fn serve() -> Answer {
    match &*DOCUMENT {
        Ok(json) => Ok(HttpResponse::Ok()
            .insert_header((header::CONTENT_TYPE, "application/json"))
            .body(json.clone())),
        Err(e) => Err(ApiError::Internal(e.clone().into())),
    }
}
