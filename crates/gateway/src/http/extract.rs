//! Request extractors that answer in the API's error contract: JSON bodies with named
//! field errors, app-key and root-key authentication, and the ids of a path.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use actix_web::dev::Payload;
use actix_web::http::header;
use actix_web::{web, FromRequest, HttpRequest};
use keygate_keyring::KeyId;
use keygate_sessions::{RenewInput, MAX_USERAGENT};
use keygate_tenants::{AppId, AppRecord, FieldError};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::admission::Permit;
use crate::bootstrap::Services;
use crate::http::error::ApiError;
use crate::http::rate_limit::Attempt;

/// The largest request body accepted.
pub const MAX_BODY: usize = 16 * 1024;

type Fut<T> = Pin<Box<dyn Future<Output = Result<T, ApiError>>>>;

/// A JSON body: `Content-Type: application/json` (415 otherwise), at most [`MAX_BODY`]
/// bytes (413), and every field that fails to parse named in `errors[]` (400).
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned + 'static> FromRequest for JsonBody<T> {
    type Error = ApiError;
    type Future = Fut<Self>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let bytes = read_body(req, payload, JSON, true);
        Box::pin(async move { parse(&bytes.await?).map(JsonBody) })
    }
}

/// Like [`JsonBody`], but an empty body (with or without a content type) is `None`.
#[derive(Debug)]
pub struct OptionalJsonBody<T>(pub Option<T>);

impl<T: DeserializeOwned + 'static> FromRequest for OptionalJsonBody<T> {
    type Error = ApiError;
    type Future = Fut<Self>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let bytes = read_body(req, payload, JSON, false);
        Box::pin(async move {
            let bytes = bytes.await?;
            let value = if bytes.is_empty() { None } else { Some(parse(&bytes)?) };
            Ok(OptionalJsonBody(value))
        })
    }
}

/// The media type of JSON bodies.
pub(crate) const JSON: &str = "application/json";
/// The media type of OAuth 2.0 form bodies (RFC 6749 appendix B).
pub(crate) const FORM: &str = "application/x-www-form-urlencoded";

/// Whether the request's `Content-Type` is `media_type` (parameters such as `charset` aside).
fn has_media_type(req: &HttpRequest, media_type: &str) -> bool {
    let Some(value) = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or("").trim();
    essence.eq_ignore_ascii_case(media_type)
}

/// The body, of at most [`MAX_BODY`] bytes (413) and of `media_type` (415 otherwise; an
/// empty body may come without it unless `required`).
pub(crate) fn read_body(
    req: &HttpRequest,
    payload: &mut Payload,
    media_type: &'static str,
    required: bool,
) -> Fut<web::Bytes> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let typed = has_media_type(req, media_type);
    let payload = web::Payload::from_request(req, payload);
    Box::pin(async move {
        let payload = payload
            .await
            .map_err(|e| ApiError::invalid("body", format!("could not read the body: {e}")))?;
        if declared.is_some_and(|len| len > MAX_BODY as u64) {
            return Err(ApiError::PayloadTooLarge(MAX_BODY));
        }
        // The outer error is the limit (a body without Content-Length, such as a chunked
        // one, that grows past it); the inner one a body that could not be read.
        let bytes = match payload.to_bytes_limited(MAX_BODY).await {
            Ok(Ok(bytes)) => bytes,
            Ok(Err(e)) => {
                return Err(ApiError::invalid("body", format!("could not read the body: {e}")))
            }
            Err(_) => return Err(ApiError::PayloadTooLarge(MAX_BODY)),
        };
        if !typed && (required || !bytes.is_empty()) {
            return Err(ApiError::UnsupportedMediaType);
        }
        Ok(bytes)
    })
}

pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

    /// Any JSON value, refused when one of its objects names a member twice: serde would
    /// keep the last of them without a word, where another reader of the same body may
    /// keep the first.
    struct Unique;

    impl<'de> Deserialize<'de> for Unique {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            deserializer.deserialize_any(Unique)
        }
    }

    impl<'de> Visitor<'de> for Unique {
        type Value = Unique;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a JSON value")
        }
        fn visit_bool<E>(self, _: bool) -> Result<Unique, E> {
            Ok(Unique)
        }
        fn visit_i64<E>(self, _: i64) -> Result<Unique, E> {
            Ok(Unique)
        }
        fn visit_u64<E>(self, _: u64) -> Result<Unique, E> {
            Ok(Unique)
        }
        fn visit_f64<E>(self, _: f64) -> Result<Unique, E> {
            Ok(Unique)
        }
        fn visit_str<E>(self, _: &str) -> Result<Unique, E> {
            Ok(Unique)
        }
        fn visit_unit<E>(self) -> Result<Unique, E> {
            Ok(Unique)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Unique, A::Error> {
            while seq.next_element::<Unique>()?.is_some() {}
            Ok(Unique)
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Unique, A::Error> {
            let mut seen = std::collections::HashSet::new();
            while let Some(key) = map.next_key::<String>()? {
                if seen.contains(&key) {
                    return Err(de::Error::custom(format_args!("duplicate field `{key}`")));
                }
                map.next_value::<Unique>()?;
                seen.insert(key);
            }
            Ok(Unique)
        }
    }

    let named = |e: serde_path_to_error::Error<serde_json::Error>| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        ApiError::Invalid(vec![FieldError::new(field_name(&path, &inner), clean_message(&inner))])
    };
    // serde would read a struct from an array by position; every body here is an object.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::invalid("body", "must be a JSON object"));
    }
    // First the syntax, once, with every object's member names checked; then the shape.
    let mut de = serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize::<_, Unique>(&mut de).map_err(named)?;
    de.end().map_err(|_| ApiError::invalid("body", "unexpected data after the JSON value"))?;
    serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_slice(bytes))
        .map_err(named)
}

/// The field a serde error is about: its path, or for a missing or unknown field at the top
/// level, the name serde quotes in its message.
fn field_name(path: &str, err: &serde_json::Error) -> String {
    let top = path == "." || path == "?";
    let message = err.to_string();
    // A member named twice is named itself, inside the object that holds it; the name may
    // hold a backtick, so it runs to the last one.
    if let Some((name, _)) =
        message.strip_prefix("duplicate field `").and_then(|rest| rest.rsplit_once('`'))
    {
        return if top { name.to_owned() } else { format!("{path}.{name}") };
    }
    if !top {
        return path.to_owned();
    }
    for prefix in ["missing field `", "unknown field `"] {
        if let Some(rest) = message.strip_prefix(prefix) {
            if let Some(name) = rest.split('`').next() {
                return name.to_owned();
            }
        }
    }
    "body".to_owned()
}

fn clean_message(err: &serde_json::Error) -> String {
    let message = err.to_string();
    // serde_json appends the position last; the message before it may quote the input.
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message,
    }
}

/// The renew input of a client calling us directly (a compatibility route, the OAuth
/// token endpoint): its address, and its `User-Agent` (cut to the longest accepted, at a
/// character boundary).
pub(crate) fn direct_renew_input(
    request: &HttpRequest,
    refresh_token: String,
) -> Result<RenewInput, Vec<FieldError>> {
    // The client's address: the peer, or what trusted proxies say it is.
    let ip =
        crate::http::client_ip::client_ip(request).map(|ip| ip.to_string()).unwrap_or_default();
    let mut useragent = request
        .headers()
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    if useragent.len() > MAX_USERAGENT {
        let mut end = MAX_USERAGENT;
        while !useragent.is_char_boundary(end) {
            end -= 1;
        }
        useragent.truncate(end);
    }
    let mut body = Map::new();
    body.insert("refresh_token".into(), Value::String(refresh_token));
    body.insert("ip".into(), Value::String(ip));
    body.insert("useragent".into(), Value::String(useragent));
    RenewInput::parse(&body)
}

/// The presented secret: `Authorization: KEY` or `Authorization: Bearer KEY`.
fn presented_key(req: &HttpRequest) -> Option<String> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let key = match value.split_once(' ') {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
        _ => value,
    };
    Some(key.to_owned())
}

/// What an authentication starts from: the attempt, once admitted (429 for an address that
/// has failed too often), the services, and the presented key.
fn begin(req: &HttpRequest) -> Result<(Attempt, web::Data<Services>, Option<String>), ApiError> {
    let attempt = Attempt::of(req);
    attempt.admit()?;
    let services = req.app_data::<web::Data<Services>>().cloned();
    let services =
        services.ok_or_else(|| ApiError::Internal("services are not registered".into()))?;
    Ok((attempt, services, presented_key(req)))
}

/// An app authenticated by its app key. Wrong key, unknown app and malformed id are all
/// the same 403. Each failure counts against the client address; an address that has
/// failed too often gets 429 before its key is looked at ([`crate::http::rate_limit`]).
///
/// The app is reached through [`AppAuth::admit`] only, which the handler calls once the
/// request has been read: over the app's quota it is refused 429 `rate_limited`, on a
/// saturated gateway it may be shed with 503 ([`crate::admission`]). A client sending its
/// body slowly therefore holds no slot while it does.
#[derive(Debug)]
pub struct AppAuth(Arc<AppRecord>);

impl AppAuth {
    /// The app, admitted: the slot is held as long as the answer is.
    pub async fn admit(self, services: &Services) -> Result<Admitted, ApiError> {
        let slot = services.admission.admit(&self.0.app).await?;
        Ok(Admitted { record: self.0, _slot: slot })
    }
}

/// An authenticated app whose request was admitted; see [`AppAuth::admit`].
#[derive(Debug)]
pub struct Admitted {
    pub record: Arc<AppRecord>,
    _slot: Permit,
}

impl std::ops::Deref for Admitted {
    type Target = AppRecord;

    fn deref(&self) -> &AppRecord {
        &self.record
    }
}

impl FromRequest for AppAuth {
    type Error = ApiError;
    type Future = Fut<Self>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let begun = begin(req);
        let app_id = req.match_info().get("app_id").unwrap_or_default().to_owned();
        Box::pin(async move {
            let (attempt, services, key) = begun?;
            let admit = || attempt.admitted();
            let outcome = services
                .tenants
                .authenticate_app_admitted(&app_id, key.as_deref(), services.clock.now(), &admit)
                .await;
            Ok(AppAuth(attempt.settle(outcome, ApiError::InvalidClient)?))
        })
    }
}

/// A request authenticated by the root key; failures count against the client address as
/// for [`AppAuth`].
#[derive(Debug)]
pub struct RootAuth;

impl FromRequest for RootAuth {
    type Error = ApiError;
    type Future = Fut<Self>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        // The root API mounted under /console/api: a console session instead of the key.
        if let Some(console) = req.app_data::<web::Data<crate::http::console::Console>>() {
            let authorized = console.authorize(req).map(|()| RootAuth);
            return Box::pin(async move { authorized });
        }
        let begun = begin(req);
        Box::pin(async move {
            let (attempt, services, key) = begun?;
            let admit = || attempt.admitted();
            let outcome = services.tenants.authenticate_root_admitted(key.as_deref(), &admit).await;
            attempt.settle(outcome, ApiError::InvalidRootKey)?;
            Ok(RootAuth)
        })
    }
}

/// The ids a route's path names, parsed here for every route. A malformed id is an unknown
/// one: 404 `not_found`, naming it.
pub trait PathIds: Sized {
    fn of(req: &HttpRequest) -> Result<Self, ApiError>;
}

/// The raw `name` segment of the path, decoded.
fn segment<'r>(req: &'r HttpRequest, name: &str) -> &'r str {
    req.match_info().get(name).unwrap_or_default()
}

impl PathIds for AppId {
    fn of(req: &HttpRequest) -> Result<Self, ApiError> {
        let raw = segment(req, "app_id");
        raw.parse().map_err(|_| ApiError::NotFound(format!("app {raw:?} not found")))
    }
}

/// `{app_id}` on a public route, where a malformed id and an unknown app are both "no such
/// app": `None` for a malformed one, which the handler answers as it answers an unknown app.
impl PathIds for Option<AppId> {
    fn of(req: &HttpRequest) -> Result<Self, ApiError> {
        Ok(segment(req, "app_id").parse().ok())
    }
}

/// `{app_id}` and `{key_id}`; the key is looked at first.
impl PathIds for (AppId, KeyId) {
    fn of(req: &HttpRequest) -> Result<Self, ApiError> {
        let raw_key = segment(req, "key_id");
        let key_id: KeyId = raw_key
            .parse()
            .map_err(|_| ApiError::NotFound(format!("key {raw_key:?} not found")))?;
        Ok((AppId::of(req)?, key_id))
    }
}

/// The ids of the path of a public route.
#[derive(Debug)]
pub struct PathOf<T>(pub T);

impl<T: PathIds> FromRequest for PathOf<T> {
    type Error = ApiError;
    type Future = std::future::Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        std::future::ready(T::of(req).map(PathOf))
    }
}

/// A request authenticated by the root key ([`RootAuth`]), and the ids of its path. The
/// key is checked before the path: without it the answer is 401 whatever the path names.
/// (Extractors listed side by side run together, and the first error ready wins, so a
/// separate path extractor could answer before the key is checked.)
#[derive(Debug)]
pub struct RootPath<T>(pub T);

impl<T: PathIds + 'static> FromRequest for RootPath<T> {
    type Error = ApiError;
    type Future = Fut<Self>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let authorized = RootAuth::from_request(req, payload);
        let ids = T::of(req);
        Box::pin(async move {
            authorized.await?;
            ids.map(RootPath)
        })
    }
}
