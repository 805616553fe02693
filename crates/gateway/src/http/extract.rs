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

/// A JSON object body, as [`JsonBody`] reads a `Map<String, Value>` (the same checks, the
/// same errors), in one pass over the bytes instead of two: the object is built while its
/// syntax and member names are checked.
#[derive(Debug)]
pub struct JsonObject(pub Map<String, Value>);

impl FromRequest for JsonObject {
    type Error = ApiError;
    type Future = Fut<Self>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let bytes = read_body(req, payload, JSON, true);
        Box::pin(async move { parse_object(&bytes.await?).map(JsonObject) })
    }
}

/// Any JSON value, refused when one of its objects names a member twice: serde would keep
/// the last of them without a word, where another reader of the same body may keep the
/// first.
struct Checked(Value);

impl<'de> serde::Deserialize<'de> for Checked {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(CheckedVisitor)
    }
}

struct CheckedVisitor;

impl<'de> serde::de::Visitor<'de> for CheckedVisitor {
    type Value = Checked;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, value: bool) -> Result<Checked, E> {
        Ok(Checked(Value::Bool(value)))
    }
    fn visit_i64<E>(self, value: i64) -> Result<Checked, E> {
        Ok(Checked(Value::from(value)))
    }
    fn visit_u64<E>(self, value: u64) -> Result<Checked, E> {
        Ok(Checked(Value::from(value)))
    }
    fn visit_f64<E>(self, value: f64) -> Result<Checked, E> {
        Ok(Checked(serde_json::Number::from_f64(value).map_or(Value::Null, Value::Number)))
    }
    fn visit_str<E>(self, value: &str) -> Result<Checked, E> {
        Ok(Checked(Value::String(value.to_owned())))
    }
    fn visit_string<E>(self, value: String) -> Result<Checked, E> {
        Ok(Checked(Value::String(value)))
    }
    fn visit_unit<E>(self) -> Result<Checked, E> {
        Ok(Checked(Value::Null))
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Checked, A::Error> {
        let mut items = Vec::new();
        while let Some(Checked(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Checked(Value::Array(items)))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Checked, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if object.contains_key(&key) {
                return Err(serde::de::Error::custom(format_args!("duplicate field `{key}`")));
            }
            let Checked(value) = map.next_value()?;
            object.insert(key, value);
        }
        Ok(Checked(Value::Object(object)))
    }
}

/// A field error named after the path a serde error is at.
fn named(e: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let path = e.path().to_string();
    let inner = e.into_inner();
    ApiError::Invalid(vec![FieldError::new(field_name(&path, &inner), clean_message(&inner))])
}

/// The body's syntax, with every object's member names checked: its value.
fn checked(bytes: &[u8]) -> Result<Value, ApiError> {
    // serde would read a struct from an array by position; every body here is an object.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::invalid("body", "must be a JSON object"));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let Checked(value) = serde_path_to_error::deserialize(&mut de).map_err(named)?;
    de.end().map_err(|_| ApiError::invalid("body", "unexpected data after the JSON value"))?;
    Ok(value)
}

/// A JSON object body, read once ([`JsonObject`]).
pub fn parse_object(bytes: &[u8]) -> Result<Map<String, Value>, ApiError> {
    match checked(bytes)? {
        Value::Object(object) => Ok(object),
        _ => Err(ApiError::invalid("body", "must be a JSON object")),
    }
}

pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    // First the syntax, once, with every object's member names checked; then the shape.
    checked(bytes)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(err: ApiError) -> String {
        match err {
            ApiError::Invalid(errors) => errors[0].field.clone(),
            other => panic!("not a field error: {other:?}"),
        }
    }

    /// The object read in one pass is the object serde_json reads, and every body that
    /// the two-pass reader refuses is refused naming the same field.
    #[test]
    fn an_object_read_once_is_the_object_read_twice() {
        let valid = [
            r#"{}"#,
            r#"{"refresh_token": "a.b.c", "ip": "203.0.113.1", "useragent": "ua"}"#,
            r#" {"n": -1, "u": 18446744073709551615, "f": 1.5e3, "t": true, "z": null}"#,
            r#"{"nested": {"a": [1, {"b": "\u00e9\n"}], "a2": []}, "a": {"nested": 1}}"#,
        ];
        for body in valid {
            let once = parse_object(body.as_bytes()).unwrap();
            let serde: Map<String, Value> = serde_json::from_str(body).unwrap();
            assert_eq!(once, serde, "{body}");
            assert_eq!(once, parse::<Map<String, Value>>(body.as_bytes()).unwrap(), "{body}");
        }
        let refused = [
            (r#"{"a": 1, "a": 2}"#, "a"),
            (r#"{"o": {"b": 1, "b": 1}}"#, "o.b"),
            (r#"{"o": [{"c": 1, "c": 1}]}"#, "o[0].c"),
            (r#"[1, 2]"#, "body"),
            (r#""text""#, "body"),
            (r#"{"a": 1} {"b": 2}"#, "body"),
            (r#"{"a": }"#, "a"),
            (r#"{"a": 1"#, "body"),
        ];
        for (body, field) in refused {
            let once = field_of(parse_object(body.as_bytes()).unwrap_err());
            let twice = field_of(parse::<Map<String, Value>>(body.as_bytes()).unwrap_err());
            assert_eq!((once.as_str(), twice.as_str()), (field, field), "{body}");
        }
    }
}
