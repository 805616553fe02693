//! The OAuth 2.0 face of an app: the token endpoint for the refresh-token grant (RFC 6749
//! §6), revocation (RFC 7009), introspection (RFC 7662) and the authorization server
//! metadata (RFC 8414). An app is a confidential client: its id is the client id, its app
//! key the client secret. The sessions, rotation, grace, reuse detection and keys are the
//! ones of `/renew`.

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use keygate_sessions::dpop::PROOF_ALGS;
use keygate_sessions::Introspected;
use keygate_tenants::{AppId, DpopMode};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::bootstrap::Services;
use crate::http::dpop;
use crate::http::error::{ApiError, ErrorBody};
use crate::http::extract::{direct_renew_input, PathOf};
use crate::http::oauth::{authenticate, authenticate_token_client, no_store, present, required};
use crate::http::oauth::{Client, ClientForm, Form, OAuthError};
use crate::http::resource::{app_resource, resource, Answer};
use crate::http::schema::{OAuthErrors, ServerErrors};
use crate::metrics::{RenewCount, RevokeReason};

// The paths of the routes, each named once: in `configure` and in the OpenAPI document.
const TOKEN: &str = "/app/{app_id}/oauth/token";
const REVOKE: &str = "/app/{app_id}/oauth/revoke";
const INTROSPECT: &str = "/app/{app_id}/oauth/introspect";
const METADATA: &str = "/app/{app_id}/.well-known/oauth-authorization-server";
const METADATA_BY_ISSUER: &str = "/.well-known/oauth-authorization-server/app/{app_id}";

/// `Cache-Control` of the metadata document.
const METADATA_MAX_AGE: &str = "public, max-age=300";
/// The client authentication methods of every endpoint.
const AUTH_METHODS: [&str; 2] = ["client_secret_basic", "client_secret_post"];
/// The token endpoint's methods of an app with `oauth_public_clients`.
const TOKEN_AUTH_METHODS_WITH_PUBLIC: [&str; 3] =
    ["client_secret_basic", "client_secret_post", "none"];

/// The routes inside the app scope ([`crate::http::resource::APP_SCOPE`]).
pub fn configure_app(cfg: &mut web::ServiceConfig) {
    cfg.service(app_resource(TOKEN).route(web::post().to(token)))
        .service(app_resource(REVOKE).route(web::post().to(revoke)))
        .service(app_resource(INTROSPECT).route(web::post().to(introspect)))
        .service(app_resource(METADATA).route(web::get().to(metadata)));
}

/// The route outside it: the metadata at its RFC 8414 well-known path.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource(METADATA_BY_ISSUER).route(web::get().to(metadata)));
}

type OAuthAnswer = Result<HttpResponse, OAuthError>;

// A required parameter that is absent reads as empty (`serde(default)`), and the handler
// refuses it as missing once the client is authenticated.

/// The form of the token endpoint.
#[derive(Deserialize, ToSchema)]
struct TokenForm {
    /// Only `refresh_token`.
    #[serde(default)]
    #[schema(required = true, example = "refresh_token")]
    grant_type: String,
    /// The refresh token.
    #[serde(default)]
    #[schema(required = true)]
    refresh_token: String,
    /// Refused when not empty: keygate has no scopes.
    scope: Option<String>,
    /// The app id: with `client_secret` (`client_secret_post`), or alone for a public client
    /// (`none`) of an app with `oauth_public_clients`.
    client_id: Option<String>,
    /// The app key (`client_secret_post`).
    client_secret: Option<String>,
}

/// The form of the revocation and introspection endpoints.
#[derive(Deserialize, ToSchema)]
struct TokenHintForm {
    /// An auth (access) or refresh token of this app.
    #[serde(default)]
    #[schema(required = true)]
    token: String,
    /// `access_token` or `refresh_token`; both kinds are looked for whatever it says.
    #[expect(dead_code, reason = "a hint the server may ignore (RFC 7009 §2.1)")]
    token_type_hint: Option<String>,
    /// The app id, with `client_secret` (`client_secret_post`).
    client_id: Option<String>,
    /// The app key (`client_secret_post`).
    client_secret: Option<String>,
}

impl ClientForm for TokenForm {
    fn client_id(&self) -> Option<&str> {
        present(&self.client_id)
    }

    fn client_secret(&self) -> Option<&str> {
        present(&self.client_secret)
    }
}

impl ClientForm for TokenHintForm {
    fn client_id(&self) -> Option<&str> {
        present(&self.client_id)
    }

    fn client_secret(&self) -> Option<&str> {
        present(&self.client_secret)
    }
}

/// An RFC 6749 §5.1 token response.
#[derive(Serialize, ToSchema)]
struct TokenResponse {
    /// keygate's auth token.
    access_token: String,
    /// `DPoP` for a DPoP-bound session's tokens (RFC 9449 §5), else `Bearer`.
    #[schema(example = "Bearer")]
    token_type: &'static str,
    /// Seconds until the access token expires.
    expires_in: i64,
    /// The new refresh token; the presented one is spent.
    refresh_token: String,
}

/// Trades a refresh token for a new pair: the refresh-token grant of RFC 6749 §6.
///
/// The renew of `/renew`: the refresh token rotates, the previous one is a retry within
/// `reuse_grace` from the same `User-Agent`, and any other spent one is reuse, which
/// revokes the session. The renew's `ip` is the caller's address, its `useragent` the
/// request's `User-Agent`.
///
/// A DPoP-bound session renews only with a `DPoP` header: a proof (RFC 9449) by the
/// session's key, for this URL, not used before; its tokens stay bound (`token_type`
/// `DPoP`). On an app with `oauth_public_clients`, a client may send `client_id` without a
/// secret (auth method `none`) to renew bound sessions.
#[utoipa::path(post, path = TOKEN, tag = "oauth",
    params(("app_id" = AppId, Path, description = "The app's id: the client id."),
        ("DPoP" = Option<String>, Header, description = "A DPoP proof (RFC 9449 §4) for \
            `POST` to this URL; required for a DPoP-bound session.")),
    security(("client_secret_basic" = []), ()),
    request_body(content = TokenForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "The token response.", body = TokenResponse,
            headers(("Cache-Control" = String, description = "`no-store`"),
                ("DPoP-Nonce" = String, description = "On an app with `dpop_nonce`: the \
                    nonce for the next proof."))),
        OAuthErrors,
    ))]
async fn token(
    services: web::Data<Services>,
    request: HttpRequest,
    Form(form): Form<TokenForm>,
) -> OAuthAnswer {
    let (app, _permit, client) =
        authenticate_token_client(&request, &services, &form, &form.refresh_token).await?;
    if required("grant_type", &form.grant_type)? != "refresh_token" {
        return Err(OAuthError::UnsupportedGrantType);
    }
    let refresh_token = required("refresh_token", &form.refresh_token)?.to_owned();
    if present(&form.scope).is_some() {
        return Err(OAuthError::InvalidScope);
    }
    // Only the refresh token comes from the client; the address and user agent are ours.
    let input = direct_renew_input(&request, refresh_token).map_err(|errors| {
        if errors.iter().any(|e| e.field == "refresh_token") {
            OAuthError::InvalidGrant
        } else {
            let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
            OAuthError::Internal(format!("the renew input: {}", errors.join("; ")).into())
        }
    })?;
    let mut input = input;
    input.public_client = client == Client::Public;
    let now = services.clock.now();
    let proof = dpop_header(&request)?;
    dpop::attach(&services, &request, &app.app, proof, &mut input, now)
        .map_err(OAuthError::UseDpopNonce)?;
    let renewed = services.sessions.renew(&app.app, input, now).await;
    services.metrics.renew(app.app.app_id, RenewCount::of(&renewed), now);
    let issued = renewed?.issued;
    let mut response = no_store(HttpResponse::Ok());
    dpop::offer_nonce(&services, &app.app, now, &mut response);
    Ok(response.json(TokenResponse {
        access_token: issued.auth_token,
        token_type: issued.token_type,
        expires_in: issued.expires_in,
        refresh_token: issued.refresh_token,
    }))
}

/// The request's `DPoP` header: at most one, of visible ASCII (RFC 9449 §4.3).
fn dpop_header(request: &HttpRequest) -> Result<Option<&str>, OAuthError> {
    let mut values = request.headers().get_all(dpop::PROOF_HEADER);
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(OAuthError::InvalidDpopProof("send one DPoP header, not several".into()));
    }
    value
        .to_str()
        .map(Some)
        .map_err(|_| OAuthError::InvalidDpopProof("the DPoP header is not a JWS".into()))
}

/// Revokes a token (RFC 7009): an auth or refresh token of this app, within its lifetime,
/// ends its session.
///
/// An unknown, malformed, expired or other app's token is answered 200 too, and changes
/// nothing (§2.2).
#[utoipa::path(post, path = REVOKE, tag = "oauth",
    params(("app_id" = AppId, Path, description = "The app's id: the client id.")),
    security(("client_secret_basic" = []), ()),
    request_body(content = TokenHintForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "Done; the body is empty."),
        OAuthErrors,
    ))]
async fn revoke(
    services: web::Data<Services>,
    request: HttpRequest,
    Form(form): Form<TokenHintForm>,
) -> OAuthAnswer {
    let (app, _permit) = authenticate(&request, &services, &form).await?;
    let token = required("token", &form.token)?;
    let revoked = services.sessions.revoke_token(&app.app, token, services.clock.now()).await?;
    services.metrics.sessions_revoked(RevokeReason::Logout, revoked);
    Ok(no_store(HttpResponse::Ok()).finish())
}

/// An RFC 7662 introspection response. Only `active` when the token is not active.
#[derive(Default, Serialize, ToSchema)]
struct Introspection {
    active: bool,
    /// `Bearer` for an auth (access) token, `DPoP` for one of a DPoP-bound session (RFC 9449
    /// §6.2), `N_A` for a refresh token (RFC 8693 §2.2.1).
    #[serde(skip_serializing_if = "Option::is_none")]
    token_type: Option<&'static str>,
    /// `access_token` or `refresh_token`.
    #[serde(skip_serializing_if = "Option::is_none")]
    token_use: Option<&'static str>,
    /// The app id.
    #[serde(skip_serializing_if = "Option::is_none")]
    client_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sub: Option<String>,
    /// Auth tokens only.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    aud: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    exp: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    iat: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    nbf: Option<i64>,
    /// The token's `jid`.
    #[serde(skip_serializing_if = "Option::is_none")]
    jti: Option<String>,
    /// The session id.
    #[serde(skip_serializing_if = "Option::is_none")]
    sid: Option<String>,
    /// A DPoP-bound session's key: `{"jkt": thumbprint}` (RFC 9449 §6.2).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    cnf: Option<Value>,
}

/// Tells whether a token is active (RFC 7662), and what it says.
///
/// Active: an auth token of this app within its lifetime whose session is live, or the
/// current refresh token of a live session. Anything else, including a token of another
/// app, is `{"active": false}`. Nothing changes: no rotation, no reuse detection.
#[utoipa::path(post, path = INTROSPECT, tag = "oauth",
    params(("app_id" = AppId, Path, description = "The app's id: the client id.")),
    security(("client_secret_basic" = []), ()),
    request_body(content = TokenHintForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "The introspection response.", body = Introspection),
        OAuthErrors,
    ))]
async fn introspect(
    services: web::Data<Services>,
    request: HttpRequest,
    Form(form): Form<TokenHintForm>,
) -> OAuthAnswer {
    let (app, _permit) = authenticate(&request, &services, &form).await?;
    let token = required("token", &form.token)?;
    let client_id = Some(app.app.app_id.to_string());
    let answer = match services.sessions.introspect(&app.app, token, services.clock.now()).await? {
        None => Introspection::default(),
        Some(Introspected::Auth(claims)) => Introspection {
            active: true,
            token_type: Some(if claims.cnf.is_some() { "DPoP" } else { "Bearer" }),
            token_use: Some("access_token"),
            client_id,
            sub: Some(claims.sub),
            aud: Some(claims.aud),
            iss: Some(claims.iss),
            exp: Some(claims.exp),
            iat: Some(claims.iat),
            nbf: Some(claims.nbf),
            jti: Some(claims.jid.to_string()),
            sid: Some(claims.sid.to_string()),
            cnf: claims.cnf,
        },
        Some(Introspected::Refresh { claims, sub }) => Introspection {
            active: true,
            token_type: Some("N_A"),
            token_use: Some("refresh_token"),
            client_id,
            sub: Some(sub),
            aud: None,
            iss: Some(claims.iss),
            exp: Some(claims.exp),
            iat: Some(claims.iat),
            nbf: Some(claims.nbf),
            jti: Some(claims.jid.to_string()),
            sid: Some(claims.sid.to_string()),
            cnf: claims.cnf.map(|cnf| serde_json::json!({ "jkt": cnf.jkt })),
        },
    };
    Ok(no_store(HttpResponse::Ok()).json(answer))
}

/// RFC 8414 authorization server metadata.
#[derive(Serialize, ToSchema)]
struct Metadata {
    /// `<public_url>/app/<app_id>`.
    issuer: String,
    token_endpoint: String,
    revocation_endpoint: String,
    introspection_endpoint: String,
    jwks_uri: String,
    /// `["refresh_token"]`.
    grant_types_supported: [&'static str; 1],
    /// Empty: keygate has no authorization endpoint.
    response_types_supported: [&'static str; 0],
    /// With `none` on an app with `oauth_public_clients`.
    token_endpoint_auth_methods_supported: &'static [&'static str],
    revocation_endpoint_auth_methods_supported: [&'static str; 2],
    introspection_endpoint_auth_methods_supported: [&'static str; 2],
    /// The `alg` values of the DPoP proofs the token endpoint accepts (RFC 9449 §5.1); only
    /// on an app whose `dpop` setting is not `off`.
    #[serde(skip_serializing_if = "Option::is_none")]
    dpop_signing_alg_values_supported: Option<[&'static str; 3]>,
}

/// The app's OAuth 2.0 authorization server metadata (RFC 8414); public, and cacheable.
///
/// Served at `/app/{app_id}/.well-known/oauth-authorization-server` and at
/// `/.well-known/oauth-authorization-server/app/{app_id}`, the URL that RFC 8414 §3.1
/// derives from the issuer. The URLs are built on the gateway's `public_url` setting,
/// without which there is no metadata (404).
#[utoipa::path(get, path = METADATA,
    operation_id = "metadata", tag = "oauth",
    params(("app_id" = AppId, Path, description = "The app's id.")),
    responses(
        (status = 200, description = "The metadata.", body = Metadata,
            headers(("Cache-Control" = String, description = "`public, max-age=300`"))),
        (status = 404, description = "`not_found`: no such app (or a malformed id), or the \
            gateway has no `public_url`.", body = ErrorBody),
        ServerErrors,
    ))]
#[utoipa::path(get, path = METADATA_BY_ISSUER,
    operation_id = "metadata_by_issuer", tag = "oauth", impl_for = MetadataByIssuer,
    description = "The same document, at the URL that RFC 8414 §3.1 derives from the issuer.",
    params(("app_id" = AppId, Path, description = "The app's id.")),
    responses(
        (status = 200, description = "The metadata.", body = Metadata,
            headers(("Cache-Control" = String, description = "`public, max-age=300`"))),
        (status = 404, description = "`not_found`: no such app (or a malformed id), or the \
            gateway has no `public_url`.", body = ErrorBody),
        ServerErrors,
    ))]
async fn metadata(services: web::Data<Services>, PathOf(app_id): PathOf<Option<AppId>>) -> Answer {
    let Some(public_url) = &services.public_url else {
        return Err(ApiError::NotFound(
            "no OAuth metadata: the gateway's public_url is not set".into(),
        ));
    };
    let unknown = || ApiError::NotFound("no such app".into());
    let app_id = app_id.ok_or_else(unknown)?;
    let app = services.tenants.app(app_id).await?.ok_or_else(unknown)?;
    let base = format!("{public_url}/app/{app_id}");
    let document = Metadata {
        token_endpoint: format!("{base}/oauth/token"),
        revocation_endpoint: format!("{base}/oauth/revoke"),
        introspection_endpoint: format!("{base}/oauth/introspect"),
        jwks_uri: format!("{base}/jwks.json"),
        issuer: base,
        grant_types_supported: ["refresh_token"],
        response_types_supported: [],
        token_endpoint_auth_methods_supported: match app.app.settings.oauth_public_clients {
            true => &TOKEN_AUTH_METHODS_WITH_PUBLIC,
            false => &AUTH_METHODS,
        },
        revocation_endpoint_auth_methods_supported: AUTH_METHODS,
        introspection_endpoint_auth_methods_supported: AUTH_METHODS,
        dpop_signing_alg_values_supported: (app.app.settings.dpop != DpopMode::Off)
            .then_some(PROOF_ALGS),
    };
    Ok(HttpResponse::Ok().insert_header((header::CACHE_CONTROL, METADATA_MAX_AGE)).json(document))
}

/// The second path of [`metadata`], for the OpenAPI document.
pub(super) struct MetadataByIssuer;
