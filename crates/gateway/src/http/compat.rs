//! Serving a compatibility route: find the token, the app and the bearer, renew, and answer
//! in the route's shapes.

use std::sync::Arc;

use actix_web::dev::Payload;
use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use keygate_keyring::{VerifyError, MAX_TOKEN_LEN};
use keygate_sessions::{Issued, Rejection, RenewInput, SessionError};
use keygate_tenants::{App, StoreError};
use serde_json::{Map, Value};

use crate::admission::Refusal;
use crate::compat::{AppSource, CompatRoute, ErrorKind, TokenSource};
use crate::http::error::{chain, ApiError};
use crate::http::extract::{direct_renew_input, parse, read_body, JSON};
use crate::http::routes;
use crate::metrics::RenewCount;
use crate::Services;

/// Registers every route, each answering 405 to other methods.
pub fn configure(cfg: &mut web::ServiceConfig, routes: &[Arc<CompatRoute>]) {
    for route in routes {
        cfg.service(
            web::resource(route.path.as_str())
                .app_data(web::Data::from(route.clone()))
                .route(web::method(route.method.clone()).to(handle))
                .default_service(web::to(routes::method_not_allowed)),
        );
    }
}

/// Why a request failed, for the log the cause when it is ours, and the seconds to say in
/// `Retry-After` when not the default.
struct Failure {
    kind: ErrorKind,
    cause: Option<String>,
    retry_after: Option<u64>,
}

impl From<ErrorKind> for Failure {
    fn from(kind: ErrorKind) -> Self {
        Self { kind, cause: None, retry_after: None }
    }
}

impl From<Refusal> for Failure {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::RateLimited(secs) => {
                Self { kind: ErrorKind::RateLimited, cause: None, retry_after: Some(secs) }
            }
            // Logged by the admission, at most once a minute.
            Refusal::Shed => ErrorKind::Unavailable.into(),
        }
    }
}

impl From<SessionError> for Failure {
    fn from(err: SessionError) -> Self {
        match err {
            SessionError::Rejected(Rejection::ReuseDetected) => ErrorKind::ReuseDetected.into(),
            SessionError::Rejected(_) | SessionError::Dpop(_) => ErrorKind::InvalidToken.into(),
            SessionError::Invalid(_) => ErrorKind::BadRequest.into(),
            other => server_side(ApiError::from(other)),
        }
    }
}

impl From<StoreError> for Failure {
    fn from(err: StoreError) -> Self {
        server_side(ApiError::from(err))
    }
}

/// A failure of ours: 503 when a retry may succeed, 500 otherwise.
fn server_side(err: ApiError) -> Failure {
    let kind = match err {
        ApiError::Unavailable(_) => ErrorKind::Unavailable,
        _ => ErrorKind::Internal,
    };
    Failure { kind, cause: Some(chain(&err)), retry_after: None }
}

async fn handle(
    request: HttpRequest,
    payload: web::Payload,
    services: web::Data<Services>,
    route: web::Data<CompatRoute>,
) -> HttpResponse {
    let mut payload = payload.into_inner();
    match renew(&request, &mut payload, &services, &route).await {
        Ok(issued) => respond(&route, &issued),
        Err(failure) => fail(&route, failure),
    }
}

async fn renew(
    request: &HttpRequest,
    payload: &mut Payload,
    services: &Services,
    route: &CompatRoute,
) -> Result<Issued, Failure> {
    let refresh_token = match &route.token {
        TokenSource::Body(field) => body_token(request, payload, field).await?,
        TokenSource::Header(name) => header_token(request, name)?,
    };
    let bearer = if route.require_bearer {
        Some(bearer_token(request).ok_or(ErrorKind::MissingBearer)?)
    } else {
        None
    };
    if refresh_token.len() > MAX_TOKEN_LEN {
        return Err(ErrorKind::InvalidToken.into());
    }
    let app = find_app(services, route, &refresh_token).await?;
    let now = services.clock.now();
    let presented =
        services.sessions.verify_refresh(&app, &refresh_token, now).await.inspect_err(|err| {
            services.metrics.renew(app.app_id, RenewCount::of_error(err), now);
        })?;
    // A token of the app, signed by its key, is what authenticates a compatibility route's
    // caller: the app's quota and turn count from here, before anything is read or changed.
    let _permit = services.admission.admit(&app).await?;
    if let Some(bearer) = bearer {
        if bearer.len() > MAX_TOKEN_LEN
            || !services.sessions.is_auth_token_of(&app, bearer, presented.sid).await?
        {
            return Err(ErrorKind::InvalidBearer.into());
        }
    }
    let input = renew_input(request, refresh_token)?;
    let renewed =
        services.sessions.renew_presented(&app, &presented, &input, route.mode, now).await;
    services.metrics.renew(app.app_id, RenewCount::of(&renewed), now);
    Ok(renewed?.issued)
}

async fn body_token(
    request: &HttpRequest,
    payload: &mut Payload,
    field: &str,
) -> Result<String, Failure> {
    let bytes = read_body(request, payload, JSON, true).await.map_err(|_| ErrorKind::BadRequest)?;
    // The body decoder of every endpoint: a JSON object, no duplicate members.
    let body: Map<String, Value> = parse(&bytes).map_err(|_| ErrorKind::BadRequest)?;
    match body.get(field) {
        None | Some(Value::Null) => Err(ErrorKind::MissingToken.into()),
        Some(Value::String(token)) if token.trim().is_empty() => {
            Err(ErrorKind::MissingToken.into())
        }
        Some(Value::String(token)) => Ok(token.clone()),
        Some(_) => Err(ErrorKind::BadRequest.into()),
    }
}

fn header_token(request: &HttpRequest, name: &header::HeaderName) -> Result<String, Failure> {
    let Some(value) = request.headers().get(name) else {
        return Err(ErrorKind::MissingToken.into());
    };
    let token = value.to_str().map_err(|_| ErrorKind::BadRequest)?.trim();
    if token.is_empty() {
        return Err(ErrorKind::MissingToken.into());
    }
    Ok(token.to_owned())
}

/// The token of `Authorization: Bearer TOKEN` (the scheme in any case).
fn bearer_token(request: &HttpRequest) -> Option<&str> {
    let value = request.headers().get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

async fn find_app(
    services: &Services,
    route: &CompatRoute,
    refresh_token: &str,
) -> Result<App, Failure> {
    let app_id = match route.app {
        AppSource::Fixed(app_id) => app_id,
        AppSource::FromKid => match services.keyring.owner_of_token(refresh_token).await {
            Ok(Some(app_id)) => app_id,
            Ok(None) => return Err(ErrorKind::InvalidToken.into()),
            Err(VerifyError::Keyring(e)) => return Err(SessionError::Keyring(e).into()),
            Err(_) => return Err(ErrorKind::InvalidToken.into()),
        },
    };
    match services.tenants.app(app_id).await? {
        Some(record) => Ok(record.app.clone()),
        None => Err(ErrorKind::InvalidToken.into()),
    }
}

fn renew_input(request: &HttpRequest, refresh_token: String) -> Result<RenewInput, Failure> {
    direct_renew_input(request, refresh_token).map_err(|_| ErrorKind::BadRequest.into())
}

fn respond(route: &CompatRoute, issued: &Issued) -> HttpResponse {
    let body = route.response.render(&|name| match name {
        "auth_token" => Value::String(issued.auth_token.clone()),
        "refresh_token" => Value::String(issued.refresh_token.clone()),
        "token_type" => Value::String(issued.token_type.into()),
        "expires_in" => Value::from(issued.expires_in),
        "refresh_expires_in" => Value::from(issued.refresh_expires_in),
        "session_id" => Value::String(issued.session_id.to_string()),
        "key_id" => Value::String(issued.key_id.to_string()),
        _ => Value::Null,
    });
    HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .content_type("application/json")
        .body(body)
}

fn fail(route: &CompatRoute, failure: Failure) -> HttpResponse {
    let spec = route.error(failure.kind);
    match (&failure.cause, failure.kind) {
        (Some(cause), ErrorKind::Unavailable) => {
            tracing::warn!(route = %route.name, error = %cause, "answering 503")
        }
        (Some(cause), _) => tracing::error!(route = %route.name, error = %cause, "internal error"),
        (None, kind) => tracing::debug!(route = %route.name, error = kind.as_str(), "refused"),
    }
    let body = spec.body.render(&|name| match name {
        "status" => Value::from(spec.status.as_u16()),
        "code" => Value::String(spec.code.clone()),
        "message" => Value::String(spec.message.clone()),
        "target" => Value::String(route.token.name().to_owned()),
        _ => Value::Null,
    });
    let mut response = HttpResponse::build(spec.status);
    if let Some(secs) = failure.retry_after {
        crate::http::error::rate_limited(&mut response, secs);
    } else if failure.kind == ErrorKind::Unavailable {
        response.insert_header((header::RETRY_AFTER, crate::http::error::RETRY_AFTER));
    }
    response.content_type("application/json").body(body)
}
