//! The request side of the OAuth 2.0 face: form bodies (RFC 6749 §3.2 and appendix B),
//! client authentication (§2.3.1) and the error answers of §5.2.

use std::collections::HashSet;
use std::sync::Arc;

use actix_web::dev::Payload;
use actix_web::http::{header, StatusCode};
use actix_web::{web, FromRequest, HttpRequest, HttpResponse, HttpResponseBuilder, ResponseError};
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use keygate_sessions::SessionError;
use keygate_tenants::{AppRecord, AuthError};
use serde::de::DeserializeOwned;
use serde::Serialize;
use utoipa::ToSchema;

use crate::admission::Permit;
use crate::bootstrap::Services;
use crate::http::error::{internal, rate_limited, unavailable, ApiError, RETRY_AFTER};
use crate::http::extract::{read_body, FORM};
use crate::http::rate_limit::Attempt;
use crate::usecases::Cause;

/// The realm of the `WWW-Authenticate` challenge of a failed Basic authentication.
const CHALLENGE: &str = "Basic realm=\"keygate\"";
/// The longest `Authorization: Basic` value looked at; an app id and key take 120 bytes.
const MAX_BASIC: usize = 4096;

/// base64 as RFC 7617 sends it, with or without its padding.
const BASIC_BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// An error of the OAuth endpoints, answered as RFC 6749 §5.2 says.
#[derive(Debug, thiserror::Error)]
pub enum OAuthError {
    #[error("{0}")]
    InvalidRequest(String),
    /// `challenge`: the client tried the `Authorization` header, or sent no credentials,
    /// and is told how to authenticate (`WWW-Authenticate`).
    #[error("client authentication failed")]
    InvalidClient { challenge: bool },
    #[error("invalid refresh token")]
    InvalidGrant,
    /// A missing or bad DPoP proof (RFC 9449 §5); why.
    #[error("{0}")]
    InvalidDpopProof(String),
    /// A DPoP proof without the app's nonce; the nonce to use (RFC 9449 §8).
    #[error("the DPoP proof must carry the nonce of the DPoP-Nonce header")]
    UseDpopNonce(String),
    #[error("only grant_type=refresh_token is supported")]
    UnsupportedGrantType,
    #[error("keygate has no scopes: a refresh keeps the session's grant, so scope must be absent")]
    InvalidScope,
    #[error("request body exceeds {0} bytes")]
    PayloadTooLarge(usize),
    #[error("too many failed authentication attempts from this address; retry in {0} s")]
    RateLimited(u64),
    /// The app is over its request quota.
    #[error("this client is over its request quota; retry in {0} s")]
    QuotaExceeded(u64),
    /// The gateway is saturated (fair admission shed the request).
    #[error("the gateway is saturated; retry later")]
    Overloaded,
    #[error("service unavailable, retry later")]
    Unavailable(#[source] Cause),
    #[error("internal error")]
    Internal(#[source] Cause),
}

/// The body of every error answer of the OAuth endpoints (RFC 6749 §5.2).
#[derive(Debug, Serialize, ToSchema)]
pub struct OAuthErrorBody {
    /// `invalid_request`, `invalid_client`, `invalid_grant`, `unsupported_grant_type`,
    /// `invalid_scope`, `invalid_dpop_proof`, `use_dpop_nonce`, `rate_limited`,
    /// `temporarily_unavailable` or `server_error`.
    #[schema(example = "invalid_grant")]
    error: &'static str,
    /// For people, not for programs: match on `error`.
    error_description: String,
}

impl OAuthError {
    fn invalid(message: impl Into<String>) -> Self {
        Self::InvalidRequest(message.into())
    }

    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidRequest(_) | Self::PayloadTooLarge(_) => "invalid_request",
            Self::InvalidClient { .. } => "invalid_client",
            Self::InvalidGrant => "invalid_grant",
            Self::InvalidDpopProof(_) => "invalid_dpop_proof",
            Self::UseDpopNonce(_) => "use_dpop_nonce",
            Self::UnsupportedGrantType => "unsupported_grant_type",
            Self::InvalidScope => "invalid_scope",
            Self::RateLimited(_) | Self::QuotaExceeded(_) => "rate_limited",
            Self::Unavailable(_) | Self::Overloaded => "temporarily_unavailable",
            Self::Internal(_) => "server_error",
        }
    }
}

/// `Cache-Control: no-store` and `Pragma: no-cache`, as every answer of the token,
/// revocation and introspection endpoints carries (RFC 6749 §5.1).
pub fn no_store(mut response: HttpResponseBuilder) -> HttpResponseBuilder {
    response
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((header::PRAGMA, "no-cache"));
    response
}

impl ResponseError for OAuthError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::InvalidClient { .. } => StatusCode::UNAUTHORIZED,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::RateLimited(_) | Self::QuotaExceeded(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable(_) | Self::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = no_store(HttpResponse::build(self.status_code()));
        match self {
            Self::InvalidClient { challenge: true } => {
                response.insert_header((header::WWW_AUTHENTICATE, CHALLENGE));
            }
            Self::RateLimited(secs) | Self::QuotaExceeded(secs) => {
                rate_limited(&mut response, *secs)
            }
            Self::Unavailable(cause) => unavailable(&mut response, cause),
            Self::Overloaded => {
                response.insert_header((header::RETRY_AFTER, RETRY_AFTER));
            }
            Self::Internal(cause) => internal(cause),
            Self::UseDpopNonce(nonce) => {
                response.insert_header((crate::http::dpop::NONCE_HEADER, nonce.as_str()));
            }
            _ => {}
        }
        response.json(OAuthErrorBody { error: self.code(), error_description: self.to_string() })
    }
}

impl From<ApiError> for OAuthError {
    fn from(err: ApiError) -> Self {
        match err {
            ApiError::Invalid(fields) => {
                let fields: Vec<String> = fields.iter().map(ToString::to_string).collect();
                Self::InvalidRequest(fields.join("; "))
            }
            ApiError::InvalidGrant | ApiError::InvalidToken => Self::InvalidGrant,
            ApiError::InvalidDpopProof(why) => Self::InvalidDpopProof(why),
            ApiError::UseDpopNonce(nonce) => Self::UseDpopNonce(nonce),
            ApiError::InvalidClient
            | ApiError::InvalidRootKey
            | ApiError::ConsoleSignIn
            | ApiError::Csrf
            | ApiError::NotFound(_) => Self::InvalidClient { challenge: false },
            ApiError::MethodNotAllowed => Self::invalid("method not allowed"),
            ApiError::PayloadTooLarge(limit) => Self::PayloadTooLarge(limit),
            ApiError::UnsupportedMediaType => {
                Self::invalid(format!("the body must be {FORM} (RFC 6749, section 3.2)"))
            }
            ApiError::TooManyRequests(secs) => Self::RateLimited(secs),
            ApiError::QuotaExceeded(secs) => Self::QuotaExceeded(secs),
            ApiError::Overloaded => Self::Overloaded,
            ApiError::Unavailable(cause) => Self::Unavailable(cause),
            ApiError::Internal(cause) => Self::Internal(cause),
        }
    }
}

impl From<SessionError> for OAuthError {
    fn from(err: SessionError) -> Self {
        ApiError::from(err).into()
    }
}

/// A form body (`application/x-www-form-urlencoded`, at most 16 KiB) decoded into `T`:
/// each parameter at most once (RFC 6749 §3.1), strictly percent-encoded UTF-8. A parameter
/// without a value is as good as absent (§3.1): `T` reads it as empty, and [`present`] and
/// [`required`] treat empty as absent. Unknown parameters are ignored.
#[derive(Debug)]
pub struct Form<T>(pub T);

impl<T: DeserializeOwned> Form<T> {
    fn parse(body: &[u8]) -> Result<Self, OAuthError> {
        check_form(body)?;
        serde_urlencoded::from_bytes(body)
            .map(Self)
            .map_err(|_| OAuthError::invalid("the body is not valid form encoding"))
    }
}

/// What a lenient form decoder lets through and RFC 6749 refuses: a `%` not followed by two
/// hex digits, bytes that are not UTF-8, and a parameter given more than once.
fn check_form(body: &[u8]) -> Result<(), OAuthError> {
    let mut names = HashSet::new();
    for pair in body.split(|&b| b == b'&').filter(|pair| !pair.is_empty()) {
        let (name, value) = match pair.iter().position(|&b| b == b'=') {
            Some(i) => (&pair[..i], &pair[i + 1..]),
            None => (pair, &b""[..]),
        };
        let name = decode(name)
            .ok_or_else(|| OAuthError::invalid("the body is not valid form encoding"))?;
        if decode(value).is_none() {
            let name = shown(&name);
            return Err(OAuthError::invalid(format!("{name}: not valid form encoding of UTF-8")));
        }
        if names.contains(&name) {
            let name = shown(&name);
            return Err(OAuthError::invalid(format!("{name} is given more than once")));
        }
        names.insert(name);
    }
    Ok(())
}

/// A form parameter's value, unless it is absent or empty.
pub fn present(value: &Option<String>) -> Option<&str> {
    value.as_deref().filter(|v| !v.is_empty())
}

/// The value of the parameter `name`, which the request must carry (empty is absent).
pub fn required<'a>(name: &str, value: &'a str) -> Result<&'a str, OAuthError> {
    Some(value)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| OAuthError::invalid(format!("{name} is required")))
}

/// A form that may carry client credentials (`client_secret_post`, RFC 6749 §2.3.1).
pub trait ClientForm {
    fn client_id(&self) -> Option<&str>;
    fn client_secret(&self) -> Option<&str>;
}

/// A parameter name as an error description may quote it: the characters RFC 6749 §5.2
/// allows there (printable ASCII but `"` and `\`), at most 40 of them.
fn shown(name: &str) -> String {
    let allowed = |c: &char| c.is_ascii_graphic() && *c != '"' && *c != '\\' || *c == ' ';
    let mut shown: String = name.chars().filter(allowed).take(40).collect();
    if shown.len() < name.len() {
        shown.push_str("...");
    }
    shown
}

/// One form-encoded name or value: `+` is a space, `%XX` a byte, and the bytes UTF-8.
/// `None` for a `%` not followed by two hex digits, or bytes that are not UTF-8.
fn decode(raw: &[u8]) -> Option<String> {
    let mut rest = raw;
    while let Some(i) = rest.iter().position(|&b| b == b'%') {
        let hex = rest.get(i + 1..i + 3)?;
        if !hex.iter().all(u8::is_ascii_hexdigit) {
            return None;
        }
        rest = &rest[i + 3..];
    }
    let spaced: Vec<u8> = raw.iter().map(|&b| if b == b'+' { b' ' } else { b }).collect();
    let decoded = percent_encoding::percent_decode(&spaced).decode_utf8().ok()?;
    Some(decoded.into_owned())
}

impl<T: DeserializeOwned + 'static> FromRequest for Form<T> {
    type Error = OAuthError;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Self, OAuthError>>>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let bytes = read_body(req, payload, FORM, true);
        Box::pin(async move { Self::parse(&bytes.await?) })
    }
}

/// The client credentials a request presents (RFC 6749 §2.3.1).
#[derive(Debug, PartialEq, Eq)]
enum Credentials {
    /// `Authorization: Basic`, decoded.
    Basic { id: String, secret: String },
    /// `client_id` and `client_secret` in the body.
    Post { id: String, secret: String },
}

/// The credentials of `req` with body `form`: exactly one method, well formed.
fn credentials(req: &HttpRequest, form: &impl ClientForm) -> Result<Credentials, OAuthError> {
    let challenge = OAuthError::InvalidClient { challenge: true };
    let Some(authorization) = req.headers().get(header::AUTHORIZATION) else {
        return match (form.client_id(), form.client_secret()) {
            (Some(id), Some(secret)) => {
                Ok(Credentials::Post { id: id.to_owned(), secret: secret.to_owned() })
            }
            _ => Err(challenge),
        };
    };
    if form.client_secret().is_some() {
        return Err(OAuthError::invalid(
            "use one client authentication method: the Authorization header or client_secret \
             in the body, not both",
        ));
    }
    let (id, secret) = basic(authorization.as_bytes()).ok_or(challenge)?;
    if form.client_id().is_some_and(|body_id| body_id != id) {
        return Err(OAuthError::invalid("client_id differs from the authenticated client"));
    }
    Ok(Credentials::Basic { id, secret })
}

/// The client id and secret of an `Authorization: Basic` value: base64 of the
/// form-encoded id, `:`, and the form-encoded secret (RFC 6749 §2.3.1).
fn basic(value: &[u8]) -> Option<(String, String)> {
    if value.len() > MAX_BASIC {
        return None;
    }
    let value = std::str::from_utf8(value).ok()?.trim();
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = BASIC_BASE64.decode(encoded.trim()).ok()?;
    let colon = decoded.iter().position(|&b| b == b':')?;
    Some((decode(&decoded[..colon])?, decode(&decoded[colon + 1..])?))
}

/// Authenticates the client of an OAuth request to the app of its path: the client id is
/// the app id, the secret its app key. Failures count against the client address as on
/// the app-key routes; an address that failed too often is refused before its credentials
/// are looked at. An authenticated client is then admitted ([`crate::admission`]): over its
/// app's quota it is refused 429 `rate_limited`, on a saturated gateway maybe 503; the
/// permit holds its slot while the request is worked on.
pub async fn authenticate(
    req: &HttpRequest,
    services: &web::Data<Services>,
    form: &impl ClientForm,
) -> Result<(Arc<AppRecord>, Permit), OAuthError> {
    let attempt = Attempt::of(req);
    attempt.admit()?;
    let credentials = match credentials(req, form) {
        Ok(credentials) => credentials,
        Err(err @ OAuthError::InvalidClient { .. }) => {
            // Counts against the address; the answer stays the challenge.
            let _ = attempt.settle::<()>(Err(AuthError::Denied), ApiError::InvalidClient);
            return Err(err);
        }
        Err(err) => return Err(err),
    };
    let (id, secret, challenge) = match &credentials {
        Credentials::Basic { id, secret } => (id, secret, true),
        Credentials::Post { id, secret } => (id, secret, false),
    };
    let path_id = req.match_info().get("app_id").unwrap_or_default();
    let admit = || attempt.admitted();
    let outcome = if id == path_id {
        services
            .tenants
            .authenticate_app_admitted(path_id, Some(secret), services.clock.now(), &admit)
            .await
    } else {
        Err(AuthError::Denied)
    };
    let app = attempt.settle(outcome, ApiError::InvalidClient).map_err(|err| match err {
        ApiError::InvalidClient => OAuthError::InvalidClient { challenge },
        other => other.into(),
    })?;
    let permit = services.admission.admit(&app.app).await.map_err(ApiError::from)?;
    Ok((app, permit))
}

/// Who asks the token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Client {
    /// Authenticated by its secret, the app key.
    Confidential,
    /// `client_id` alone (auth method `none`), on an app with `oauth_public_clients`: it
    /// renews DPoP-bound sessions only.
    Public,
}

/// Authenticates the client of a token request: as [`authenticate`] does, or, when the
/// request carries `client_id` and no credentials, as a public client of an app that takes
/// them (RFC 6749 §2.1). A public client of an app that does not, or of another app, is
/// refused 401 `invalid_client` with the `Basic` challenge, and counts against the address,
/// as a wrong secret does.
///
/// A public client has no secret to prove who it is, so the app's quota is not spent on its
/// word: its refresh token (`refresh_token`) must be a valid one of the app, by signature,
/// before the request is admitted; one that is not is 400 `invalid_grant` and counts
/// against the address as a failed authentication does.
pub async fn authenticate_token_client(
    req: &HttpRequest,
    services: &web::Data<Services>,
    form: &impl ClientForm,
    refresh_token: &str,
) -> Result<(Arc<AppRecord>, Permit, Client), OAuthError> {
    let public =
        req.headers().get(header::AUTHORIZATION).is_none() && form.client_secret().is_none();
    let Some(id) = form.client_id().filter(|_| public) else {
        let (app, permit) = authenticate(req, services, form).await?;
        return Ok((app, permit, Client::Confidential));
    };
    let attempt = Attempt::of(req);
    attempt.admit()?;
    let path_id = req.match_info().get("app_id").unwrap_or_default();
    let app = match id.parse().ok().filter(|_| id == path_id) {
        Some(app_id) => services.tenants.app(app_id).await.map_err(ApiError::from)?,
        None => None,
    };
    let outcome = app.filter(|app| app.app.settings.oauth_public_clients).ok_or(AuthError::Denied);
    // No credentials came: the refusal says how to authenticate, as for a confidential
    // client that sent none.
    let app = attempt.settle(outcome, ApiError::InvalidClient).map_err(|err| match err {
        ApiError::InvalidClient => OAuthError::InvalidClient { challenge: true },
        other => other.into(),
    })?;
    let now = services.clock.now();
    let verified = match services.sessions.verify_refresh(&app.app, refresh_token, now).await {
        Ok(_) => Ok(()),
        Err(SessionError::Rejected(_)) => Err(AuthError::Denied),
        Err(other) => return Err(other.into()),
    };
    attempt.settle(verified, ApiError::InvalidGrant)?;
    let permit = services.admission.admit(&app.app).await.map_err(ApiError::from)?;
    Ok((app, permit, Client::Public))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_values_are_strictly_decoded() {
        assert_eq!(decode(b"a+b%20c%3A%25").as_deref(), Some("a b c:%"));
        assert_eq!(decode(b"%C3%A9").as_deref(), Some("é"));
        assert_eq!(decode(b""), Some(String::new()));
        for bad in [&b"%"[..], b"%2", b"%zz", b"a%2g", b"%C3", b"%FF"] {
            assert_eq!(decode(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }

    /// A form with a parameter that must be there and some that may.
    #[derive(Debug, serde::Deserialize)]
    struct Probe {
        #[serde(default)]
        grant_type: String,
        refresh_token: Option<String>,
        scope: Option<String>,
        x: Option<String>,
    }

    fn parse(body: &[u8]) -> Result<Probe, OAuthError> {
        Form::<Probe>::parse(body).map(|form| form.0)
    }

    #[test]
    fn a_form_names_each_parameter_once_and_empty_values_are_absent() {
        let form =
            parse(b"grant_type=refresh_token&scope=&x&&refresh_token=a%2Bb&other=1").unwrap();
        assert_eq!(required("grant_type", &form.grant_type).unwrap(), "refresh_token");
        assert_eq!(present(&form.refresh_token), Some("a+b"));
        assert_eq!(present(&form.scope), None);
        assert_eq!(present(&form.x), None);
        let err = required("grant_type", &parse(b"grant_type=").unwrap().grant_type).unwrap_err();
        assert_eq!(err.to_string(), "grant_type is required");
        assert!(required("grant_type", &parse(b"").unwrap().grant_type).is_err());
        for twice in [&b"a=1&a=1"[..], b"a=1&a=", b"a=&a", b"a=1&%61=2", b"scope=1&scope=2"] {
            let err = parse(twice).unwrap_err();
            assert_eq!(err.code(), "invalid_request", "{}", String::from_utf8_lossy(twice));
            assert!(err.to_string().ends_with(" is given more than once"), "{err}");
        }
        assert_eq!(parse(b"a=%ZZ").unwrap_err().to_string(), "a: not valid form encoding of UTF-8");
        assert_eq!(parse(b"%ZZ=1").unwrap_err().to_string(), "the body is not valid form encoding");
        assert!(parse(b"x=%FF").is_err(), "bytes that are not UTF-8 are refused");
    }

    #[test]
    fn error_descriptions_quote_names_in_the_characters_rfc_6749_allows() {
        assert_eq!(shown("grant_type"), "grant_type");
        assert_eq!(shown("a\"b\\c\u{7f}d\u{e9}"), "abcd...");
        assert_eq!(shown(&"x".repeat(100)), format!("{}...", "x".repeat(40)));
        let err = parse(b"%22%C3%A9=1&%22%C3%A9=2").unwrap_err();
        let description = err.to_string();
        assert!(
            description.bytes().all(|b| (0x20..=0x7e).contains(&b) && b != b'"' && b != b'\\'),
            "{description}"
        );
    }

    #[test]
    fn basic_credentials_are_form_decoded_after_base64() {
        let encode =
            |raw: &str| format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(raw));
        let pair = |id: &str, secret: &str| Some((id.to_owned(), secret.to_owned()));
        assert_eq!(basic(encode("app:s%3Acret%25").as_bytes()), pair("app", "s:cret%"));
        assert_eq!(
            basic(encode("app:a:b").as_bytes()),
            pair("app", "a:b"),
            "the first colon splits"
        );
        assert_eq!(basic(encode("app:a+b").as_bytes()), pair("app", "a b"));
        assert_eq!(basic(encode("%61pp:x").as_bytes()), pair("app", "x"));
        // Padding may be left out.
        assert_eq!(basic(b"basic YXBwOng"), pair("app", "x"));
        for bad in [
            encode("no colon"),
            "Basic !!!".to_owned(),
            encode("app:%zz"),
            "Bearer YXBwOng=".to_owned(),
            "Basic".to_owned(),
            format!("Basic {}", "A".repeat(MAX_BASIC)),
        ] {
            assert_eq!(basic(bad.as_bytes()), None, "{bad:.40}");
        }
        let not_utf8 =
            format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(b"app:\xff"));
        assert_eq!(basic(not_utf8.as_bytes()), None);
    }
}
