use jsonwebtoken::Validation;
use keygate_kernel::App;
use keygate_keyring::{jsonwebtoken, strict_validation};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::{Jid, SessionId};

/// Claim names `/sign` does not accept as custom claims.
pub const RESERVED_CLAIMS: &[&str] = &[
    "iss",
    "sub",
    "aud",
    "exp",
    "nbf",
    "iat",
    "jid",
    "jti",
    "sid",
    "type",
    "kid",
    "typ",
    "alg",
    "ip",
    "useragent",
    "cnf",
];

/// The confirmation claim of a session bound to a device key (RFC 7800 §3.1, RFC 9449
/// §6.1): the key's RFC 7638 SHA-256 thumbprint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cnf {
    pub jkt: String,
}

/// The only value of a refresh token's `type` claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenType {
    Refresh,
}

/// The claims of a refresh token. It has no `sub` and no `aud`, so a verifier that checks
/// `aud` cannot take it for an auth token; unknown claims make it invalid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefreshClaims {
    pub iss: String,
    pub jid: Jid,
    pub sid: SessionId,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
    #[serde(rename = "type")]
    pub token_type: TokenType,
    /// The key a DPoP-bound session's tokens are bound to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cnf: Option<Cnf>,
}

/// The claims of an auth token: the reserved ones typed, the custom ones as given.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuthClaims {
    pub iss: String,
    pub sub: String,
    pub aud: Value,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
    pub jid: Jid,
    pub sid: SessionId,
    pub ip: String,
    pub useragent: String,
    /// The app id, in the tokens of an app with `access_token_profile = rfc9068` (RFC 9068
    /// §2.2); in keygate's profile a custom claim of that name, if there is one.
    #[serde(default, deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    pub client_id: Option<Value>,
    /// `jid` again, under RFC 9068's name; like `client_id`.
    #[serde(default, deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    pub jti: Option<Value>,
    /// `{"jkt": …}` in the tokens of a DPoP-bound session.
    #[serde(default, deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    pub cnf: Option<Value>,
    #[serde(flatten)]
    pub custom: Map<String, Value>,
}

/// A claim that is there, `null` included (serde would read `null` as absent).
fn present<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(deserializer).map(Some)
}

impl AuthClaims {
    /// Whether decoded claims really are an auth token's: a custom claim may never carry a
    /// reserved name (a refresh token's `type`, for one).
    pub fn is_auth_token(&self) -> bool {
        !self.custom.keys().any(|k| RESERVED_CLAIMS.contains(&k.as_str()))
    }
}

/// The minimum needed to find a token's session, for logout.
#[derive(Debug, Deserialize)]
pub(crate) struct AnyTokenClaims {
    pub sid: SessionId,
}

/// ES256, `exp`/`nbf`/`iat` required, and the app's issuer.
///
/// `exp` and `nbf` must be present, but are compared with the caller's `now` by
/// [`within_lifetime`], not with the wall clock inside `jsonwebtoken`: time is a parameter.
pub(crate) fn validation(app: &App) -> Validation {
    let mut validation = strict_validation();
    validation.set_issuer(&[&app.settings.issuer]);
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation
}

/// Why a token is outside its lifetime at `now`, if it is: valid from `nbf` (inclusive)
/// until `exp` (exclusive). A token that says it was issued before 1970 (a negative `iat`)
/// was never issued by keygate, and is refused too.
pub(crate) fn outside_lifetime(iat: i64, nbf: i64, exp: i64, now: i64) -> Option<&'static str> {
    if iat < 0 || nbf < 0 {
        Some("invalid token")
    } else if now >= exp {
        Some("token expired")
    } else if now < nbf {
        Some("token not yet valid")
    } else {
        None
    }
}

/// For logout: the signature and issuer must hold, but an expired or not-yet-valid token
/// may still end its session.
pub(crate) fn lenient_validation(app: &App) -> Validation {
    let mut validation = validation(app);
    validation.set_required_spec_claims(&["iss"]);
    validation
}

#[cfg(test)]
mod tests {
    use super::{outside_lifetime, AuthClaims};

    #[test]
    fn custom_claims_named_like_the_rfc_9068_ones_survive_a_round_trip() {
        let token = serde_json::json!({
            "iss": "i", "sub": "s", "aud": "a", "iat": 1, "nbf": 1, "exp": 2,
            "jid": "01J00000000000000000000000", "sid": "01J00000000000000000000001",
            "ip": "192.0.2.1", "useragent": "u", "client_id": null, "tenant": "t",
        });
        let claims: AuthClaims = serde_json::from_value(token.clone()).unwrap();
        assert_eq!(serde_json::to_value(&claims).unwrap(), token);
        let mut without = token.clone();
        without.as_object_mut().unwrap().remove("client_id");
        let claims: AuthClaims = serde_json::from_value(without.clone()).unwrap();
        assert_eq!(serde_json::to_value(&claims).unwrap(), without, "absent stays absent");
        let mut named = token.clone();
        named["client_id"] = serde_json::json!("app-7");
        let claims: AuthClaims = serde_json::from_value(named.clone()).unwrap();
        assert_eq!(claims.client_id, Some(serde_json::json!("app-7")));
        assert_eq!(serde_json::to_value(&claims).unwrap(), named, "a value stays that value");
    }

    #[test]
    fn lifetime_is_nbf_inclusive_to_exp_exclusive_and_times_are_not_negative() {
        assert_eq!(outside_lifetime(100, 100, 200, 100), None);
        assert_eq!(outside_lifetime(100, 100, 200, 199), None);
        assert_eq!(outside_lifetime(100, 100, 200, 200), Some("token expired"));
        assert_eq!(outside_lifetime(100, 150, 200, 149), Some("token not yet valid"));
        assert_eq!(outside_lifetime(-1, 100, 200, 150), Some("invalid token"));
        assert_eq!(outside_lifetime(i64::MIN, 100, 200, 150), Some("invalid token"));
        assert_eq!(outside_lifetime(100, -1, 200, 150), Some("invalid token"));
        assert_eq!(outside_lifetime(0, 0, 200, 150), None);
    }
}
