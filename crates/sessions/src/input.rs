//! Validation of `/sign` and `/renew` input. Every bad field is reported, by name.

use std::net::IpAddr;

use keygate_kernel::FieldError;
use keygate_keyring::MAX_TOKEN_LEN;
use serde_json::{Map, Value};
use utoipa::openapi::{ArrayBuilder, KnownFormat, ObjectBuilder, OneOfBuilder, Schema};
use utoipa::openapi::{SchemaFormat, Type};
use utoipa::ToSchema;

use crate::dpop::{is_thumbprint, Proof, ProofError, MAX_PROOF_LEN};
use crate::RESERVED_CLAIMS;

pub const MAX_SUB: usize = 255;
pub const MAX_USERAGENT: usize = 512;
/// The largest serialized size of a session's custom claims.
pub const MAX_CUSTOM_CLAIMS: usize = 4096;
const MAX_AUDIENCES: usize = 16;

/// A validated `/sign` request.
#[derive(Debug, Clone, PartialEq, ToSchema)]
#[schema(as = SignRequest, description = "The body of `/sign`. Every member other than `sub`, \
    `ip`, `useragent`, `aud` and `dpop_jkt` is a custom claim of the auth tokens (at most 4 KiB \
    in all): `personal`, `roles`, … The reserved names `iss sub aud exp nbf iat jid jti sid \
    type kid typ alg ip useragent cnf` are refused. No string may contain NUL.",
    example = json!({"sub": "user-1", "ip": "203.0.113.7", "useragent": "Mozilla/5.0",
        "roles": ["admin"]}))]
pub struct SignInput {
    /// The subject: the user's id in the app.
    #[schema(min_length = 1, max_length = 255)]
    pub sub: String,
    /// Canonical form of the client's address.
    #[schema(schema_with = ip_schema)]
    pub ip: String,
    /// The client's user agent (at most 512 bytes).
    #[schema(max_length = 512)]
    pub useragent: String,
    /// A string or an array of strings; `None` for the app's default audience.
    #[schema(schema_with = audience_schema)]
    pub aud: Option<Value>,
    /// Binds the session to a key of the user's device (DPoP, RFC 9449 §10): the key's RFC
    /// 7638 SHA-256 thumbprint, base64url. Refused when the app's `dpop` is `off`, required
    /// when it is `required`.
    #[schema(min_length = 43, max_length = 43, pattern = "^[A-Za-z0-9_-]{43}$")]
    pub dpop_jkt: Option<String>,
    #[schema(ignore)]
    pub custom: Map<String, Value>,
}

/// A validated `/renew` request.
#[derive(Debug, Clone, PartialEq, Eq, ToSchema)]
#[schema(as = RenewRequest, description = "The body of `/renew`.")]
#[serde(deny_unknown_fields)]
pub struct RenewInput {
    /// The refresh token (at most 8 KiB).
    #[schema(min_length = 1, max_length = 8192)]
    pub refresh_token: String,
    #[schema(schema_with = ip_schema)]
    pub ip: String,
    /// The client's user agent (at most 512 bytes).
    #[schema(max_length = 512)]
    pub useragent: String,
    /// For a DPoP-bound session: a DPoP proof (RFC 9449) that the user's device made for
    /// the app's token endpoint, `<public_url>/app/<app_id>/oauth/token`, forwarded as is.
    #[schema(min_length = 1, max_length = 4096)]
    pub dpop: Option<String>,
    /// The proof of `dpop` (or of the token endpoint's `DPoP` header) as checked; an
    /// invalid one refuses the renew of a bound session, and nothing else.
    #[schema(ignore)]
    pub proof: Option<Result<Proof, ProofError>>,
    /// A public client of the token endpoint (no secret): it renews bound sessions only.
    #[schema(ignore)]
    pub public_client: bool,
}

/// The schema of `ip`: the forms that [`ip`] accepts.
fn ip_schema() -> Schema {
    let format = |f| {
        ObjectBuilder::new().schema_type(Type::String).format(Some(SchemaFormat::KnownFormat(f)))
    };
    OneOfBuilder::new()
        .item(format(KnownFormat::Ipv4))
        .item(format(KnownFormat::Ipv6))
        .description(Some(
            "An IPv4 or IPv6 address (`010.1.1.1`, `127.1`, `0x7f.0.0.1` and zone ids are \
             refused).",
        ))
        .examples(["203.0.113.7"])
        .into()
}

/// The schema of `aud`: the values that [`check_audience`] accepts.
fn audience_schema() -> Schema {
    let one =
        || ObjectBuilder::new().schema_type(Type::String).min_length(Some(1)).max_length(Some(255));
    OneOfBuilder::new()
        .item(one())
        .item(ArrayBuilder::new().items(one()).min_items(Some(1)).max_items(Some(MAX_AUDIENCES)))
        .description(Some("The `aud` of the auth tokens; the app's audience by default."))
        .into()
}

impl SignInput {
    /// Every top-level member other than `sub`, `ip`, `useragent` and `aud` is a custom claim.
    pub fn parse(mut body: Map<String, Value>) -> Result<Self, Vec<FieldError>> {
        let mut errors = Vec::new();
        let sub = text(&mut errors, &body, "sub", 1, MAX_SUB);
        let ip = ip(&mut errors, &body);
        let useragent = text(&mut errors, &body, "useragent", 0, MAX_USERAGENT);
        let aud = body.get("aud").cloned();
        if let Some(aud) = &aud {
            check_audience(&mut errors, aud);
        }
        let dpop_jkt = match body.get("dpop_jkt") {
            None | Some(Value::Null) => None,
            Some(Value::String(jkt)) if is_thumbprint(jkt) => Some(jkt.clone()),
            Some(_) => {
                errors.push(FieldError::new(
                    "dpop_jkt",
                    "must be an RFC 7638 SHA-256 JWK thumbprint: 43 base64url characters",
                ));
                None
            }
        };
        for name in ["sub", "ip", "useragent", "aud", "dpop_jkt"] {
            body.remove(name);
        }
        for (name, value) in &body {
            if RESERVED_CLAIMS.contains(&name.as_str()) {
                errors.push(FieldError::new(name, "is a reserved claim name"));
            } else if name.contains('\0') || has_nul(value) {
                errors.push(FieldError::new(name, "must not contain NUL characters"));
            }
        }
        let size = serde_json::to_string(&body).map(|s| s.len()).unwrap_or(usize::MAX);
        if size > MAX_CUSTOM_CLAIMS {
            let largest = body
                .iter()
                .max_by_key(|(_, v)| v.to_string().len())
                .map_or("body", |(k, _)| k.as_str());
            errors.push(FieldError::new(
                largest,
                format!("custom claims take {size} bytes; at most {MAX_CUSTOM_CLAIMS} are allowed"),
            ));
        }
        match (sub, ip, useragent) {
            (Some(sub), Some(ip), Some(useragent)) if errors.is_empty() => {
                Ok(Self { sub, ip, useragent, aud, dpop_jkt, custom: body })
            }
            _ => Err(errors),
        }
    }
}

impl RenewInput {
    pub fn parse(body: &Map<String, Value>) -> Result<Self, Vec<FieldError>> {
        let mut errors = Vec::new();
        // Checked before anything else looks at the token.
        let refresh_token = match body.get("refresh_token") {
            Some(Value::String(t)) if t.len() > MAX_TOKEN_LEN => {
                errors.push(FieldError::new(
                    "refresh_token",
                    format!("must be at most {MAX_TOKEN_LEN} bytes"),
                ));
                None
            }
            _ => text(&mut errors, body, "refresh_token", 1, MAX_TOKEN_LEN),
        };
        let ip = ip(&mut errors, body);
        let useragent = text(&mut errors, body, "useragent", 0, MAX_USERAGENT);
        let dpop = match body.get("dpop") {
            None | Some(Value::Null) => None,
            Some(_) => text(&mut errors, body, "dpop", 1, MAX_PROOF_LEN),
        };
        unknown_fields(&mut errors, body, &["refresh_token", "ip", "useragent", "dpop"]);
        match (refresh_token, ip, useragent) {
            (Some(refresh_token), Some(ip), Some(useragent)) if errors.is_empty() => {
                Ok(Self { refresh_token, ip, useragent, dpop, proof: None, public_client: false })
            }
            _ => Err(errors),
        }
    }
}

/// A required token field (`/verify`, `/logout`), capped before any parsing.
pub fn token_field(body: &Map<String, Value>, name: &str) -> Result<String, Vec<FieldError>> {
    let mut errors = Vec::new();
    let token = text(&mut errors, body, name, 1, MAX_TOKEN_LEN);
    unknown_fields(&mut errors, body, &[name]);
    match token {
        Some(token) if errors.is_empty() => Ok(token),
        _ => Err(errors),
    }
}

pub(crate) fn unknown_fields(
    errors: &mut Vec<FieldError>,
    body: &Map<String, Value>,
    known: &[&str],
) {
    for name in body.keys().filter(|k| !known.contains(&k.as_str())) {
        errors.push(FieldError::new(name, "is not a known field"));
    }
}

/// A required string of `min..=max` bytes without NUL.
pub(crate) fn text(
    errors: &mut Vec<FieldError>,
    body: &Map<String, Value>,
    name: &str,
    min: usize,
    max: usize,
) -> Option<String> {
    let problem = match body.get(name) {
        None | Some(Value::Null) => "is required".to_owned(),
        Some(Value::String(s)) if s.contains('\0') => "must not contain NUL characters".to_owned(),
        Some(Value::String(s)) if s.len() < min => "must not be empty".to_owned(),
        Some(Value::String(s)) if s.len() > max => format!("must be at most {max} bytes"),
        Some(Value::String(s)) => return Some(s.clone()),
        Some(_) => "must be a string".to_owned(),
    };
    errors.push(FieldError::new(name, problem));
    None
}

/// `ip` as a strict IPv4 or IPv6 address, returned in canonical form. Forms that other
/// parsers read differently (`010.1.1.1`, `127.1`, `0x7f.0.0.1`) and zone ids are refused.
fn ip(errors: &mut Vec<FieldError>, body: &Map<String, Value>) -> Option<String> {
    let raw = text(errors, body, "ip", 1, 64)?;
    match raw.parse::<IpAddr>() {
        Ok(addr) => Some(addr.to_string()),
        Err(_) => {
            errors.push(FieldError::new("ip", "must be an IPv4 or IPv6 address"));
            None
        }
    }
}

fn check_audience(errors: &mut Vec<FieldError>, aud: &Value) {
    let ok = |s: &str| !s.is_empty() && s.len() <= 255 && !s.contains('\0');
    let valid = match aud {
        Value::String(s) => ok(s),
        Value::Array(items) => {
            !items.is_empty()
                && items.len() <= MAX_AUDIENCES
                && items.iter().all(|v| v.as_str().is_some_and(ok))
        }
        _ => false,
    };
    if !valid {
        errors.push(FieldError::new(
            "aud",
            format!(
                "must be a string or an array of 1 to {MAX_AUDIENCES} strings, each 1-255 bytes \
                 without NUL"
            ),
        ));
    }
}

fn has_nul(value: &Value) -> bool {
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(has_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(value: Value) -> Map<String, Value> {
        value.as_object().cloned().unwrap()
    }

    fn fields(errors: &[FieldError]) -> Vec<&str> {
        errors.iter().map(|e| e.field.as_str()).collect()
    }

    #[test]
    fn sign_takes_custom_claims_and_names_every_bad_field() {
        let ok = SignInput::parse(map(
            json!({"sub": "u1", "ip": "::FFFF:1.2.3.4", "useragent": "ua", "roles": ["a"]}),
        ))
        .unwrap();
        assert_eq!(ok.ip, "::ffff:1.2.3.4");
        assert_eq!(ok.custom, map(json!({"roles": ["a"]})));

        let errors = SignInput::parse(map(json!({
            "sub": "", "ip": "010.1.1.1", "useragent": "x".repeat(513), "aud": 5,
            "exp": 1, "note": "a\u{0}b",
        })))
        .unwrap_err();
        assert_eq!(fields(&errors), ["sub", "ip", "useragent", "aud", "exp", "note"]);
    }

    #[test]
    fn ambiguous_addresses_are_refused() {
        for bad in ["010.1.1.1", "1.2.3.256", "127.1", "0x7f.0.0.1", "fe80::1%eth0", "", " 1.2.3.4"]
        {
            let errors = SignInput::parse(map(json!({"sub": "u", "ip": bad, "useragent": "ua"})))
                .unwrap_err();
            assert_eq!(fields(&errors), ["ip"], "{bad:?}");
        }
    }

    #[test]
    fn custom_claims_are_capped() {
        let errors = SignInput::parse(map(
            json!({"sub": "u", "ip": "1.1.1.1", "useragent": "", "blob": "x".repeat(5000)}),
        ))
        .unwrap_err();
        assert_eq!(fields(&errors), ["blob"]);
    }

    #[test]
    fn renew_caps_the_token_and_refuses_unknown_fields() {
        let errors = RenewInput::parse(&map(json!({"refresh_token": "x".repeat(MAX_TOKEN_LEN + 1), "ip": "1.1.1.1", "useragent": "ua", "extra": 1}))).unwrap_err();
        assert_eq!(fields(&errors), ["refresh_token", "extra"]);
        let errors = RenewInput::parse(&map(json!({}))).unwrap_err();
        assert_eq!(fields(&errors), ["refresh_token", "ip", "useragent"]);
        let errors = RenewInput::parse(&map(
            json!({"refresh_token": "t", "ip": "1.1.1.1", "useragent": "ua", "dpop": 5}),
        ))
        .unwrap_err();
        assert_eq!(fields(&errors), ["dpop"]);
        let ok = RenewInput::parse(&map(
            json!({"refresh_token": "t", "ip": "1.1.1.1", "useragent": "ua", "dpop": "a.b.c"}),
        ))
        .unwrap();
        assert_eq!(ok.dpop.as_deref(), Some("a.b.c"));
    }

    #[test]
    fn sign_takes_a_thumbprint_to_bind_to_and_refuses_a_cnf_of_its_own() {
        let jkt = "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I";
        let ok = SignInput::parse(map(
            json!({"sub": "u", "ip": "1.1.1.1", "useragent": "", "dpop_jkt": jkt}),
        ))
        .unwrap();
        assert_eq!(ok.dpop_jkt.as_deref(), Some(jkt));
        assert!(ok.custom.is_empty(), "dpop_jkt is not a custom claim");
        for bad in
            [json!("short"), json!(5), json!(format!("{jkt}A")), json!(jkt.replace('0', "/"))]
        {
            let errors = SignInput::parse(map(
                json!({"sub": "u", "ip": "1.1.1.1", "useragent": "", "dpop_jkt": bad}),
            ))
            .unwrap_err();
            assert_eq!(fields(&errors), ["dpop_jkt"], "{bad}");
        }
        let errors = SignInput::parse(map(
            json!({"sub": "u", "ip": "1.1.1.1", "useragent": "", "cnf": {"jkt": jkt}}),
        ))
        .unwrap_err();
        assert_eq!(fields(&errors), ["cnf"]);
    }
}
