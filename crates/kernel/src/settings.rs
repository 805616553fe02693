//! An app's settings: their model, defaults and limits, and the patch that changes them.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// One rejected input field, named as in the JSON body (`token_expire`) or the CLI.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field: field.into(), message: message.into() }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// What `/renew` does when it detects a reused refresh token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnReuse {
    /// Revoke the session (refresh-token family) the reused token belongs to.
    RevokeSession,
    /// Revoke every session of the token's subject in this app.
    RevokeSubject,
}

impl OnReuse {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RevokeSession => "revoke_session",
            Self::RevokeSubject => "revoke_subject",
        }
    }
}

impl FromStr for OnReuse {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "revoke_session" => Ok(Self::RevokeSession),
            "revoke_subject" => Ok(Self::RevokeSubject),
            other => {
                Err(format!("must be \"revoke_session\" or \"revoke_subject\", not {other:?}"))
            }
        }
    }
}

/// Which profile an app's tokens follow.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AccessTokenProfile {
    /// keygate's own tokens: JOSE `typ` `JWT` for both tokens.
    #[default]
    Keygate,
    /// RFC 9068: auth tokens typed `at+jwt`, with `client_id` (the app id) and `jti`;
    /// refresh tokens typed `refresh+jwt`, so that a verifier checking `typ` never takes
    /// one for an access token.
    Rfc9068,
}

impl AccessTokenProfile {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Keygate => "keygate",
            Self::Rfc9068 => "rfc9068",
        }
    }
}

impl FromStr for AccessTokenProfile {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "keygate" => Ok(Self::Keygate),
            "rfc9068" => Ok(Self::Rfc9068),
            other => Err(format!("must be \"keygate\" or \"rfc9068\", not {other:?}")),
        }
    }
}

/// Whether an app's sessions may be, or must be, bound to a key of the user's device with
/// DPoP (RFC 9449; docs/api.md "DPoP").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DpopMode {
    /// `/sign` refuses `dpop_jkt`: no session is bound.
    #[default]
    Off,
    /// A session is bound when `/sign` names a key (`dpop_jkt`).
    Allowed,
    /// Every new session must be bound: `/sign` refuses a request without `dpop_jkt`.
    Required,
}

impl DpopMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::Allowed => "allowed",
            Self::Required => "required",
        }
    }
}

impl FromStr for DpopMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "off" => Ok(Self::Off),
            "allowed" => Ok(Self::Allowed),
            "required" => Ok(Self::Required),
            other => Err(format!("must be \"off\", \"allowed\" or \"required\", not {other:?}")),
        }
    }
}

/// The settings of one app. Durations are whole seconds, as in the API. The store reads
/// them from the apps table's columns of the same names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[cfg_attr(feature = "sqlx", derive(sqlx::FromRow))]
pub struct AppSettings {
    pub issuer: String,
    pub audience: String,
    pub token_expire: i64,
    pub token_notbefore: i64,
    pub refresh_expire: i64,
    pub refresh_notbefore: i64,
    pub session_max_age: i64,
    pub reuse_grace: i64,
    pub rotation_period: i64,
    pub max_sessions_per_sub: i64,
    pub refresh_rotation: bool,
    pub on_reuse: OnReuse,
    pub access_token_profile: AccessTokenProfile,
    /// Requests a second the app may make, on average, on the endpoints its app key or
    /// client credentials authenticate; 0: no limit. Counted per gateway.
    pub requests_per_second: i64,
    /// Requests the app may make at once before `requests_per_second` applies; 0: one
    /// second's worth (`requests_per_second`).
    pub requests_burst: i64,
    /// Whether sessions may or must be bound to a device key with DPoP.
    pub dpop: DpopMode,
    /// Whether DPoP proofs must carry a nonce the gateway gave (RFC 9449 §8).
    pub dpop_nonce: bool,
    /// Whether the token endpoint takes `client_id` without a secret (auth method `none`),
    /// to renew DPoP-bound sessions only.
    pub oauth_public_clients: bool,
}

/// The most `requests_per_second` and `requests_burst` accept.
pub const MAX_REQUEST_RATE: i64 = 1_000_000;

const MINUTE: i64 = 60;
const HOUR: i64 = 60 * MINUTE;
const DAY: i64 = 24 * HOUR;

/// Inclusive ranges of every numeric setting: (name, min, max).
const RANGES: &[(&str, i64, i64)] = &[
    ("token_expire", 10, DAY),
    ("token_notbefore", 0, HOUR),
    ("refresh_expire", MINUTE, 400 * DAY),
    ("refresh_notbefore", 0, DAY),
    ("session_max_age", MINUTE, 5 * 365 * DAY),
    ("reuse_grace", 0, 5 * MINUTE),
    ("rotation_period", HOUR, 2 * 365 * DAY),
    ("max_sessions_per_sub", 0, 100_000),
    ("requests_per_second", 0, MAX_REQUEST_RATE),
    ("requests_burst", 0, MAX_REQUEST_RATE),
];

pub const MAX_NAME_LEN: usize = 100;
pub const MAX_ISSUER_LEN: usize = 255;

/// A partial set of settings, as sent to create or update an app. Absent fields keep
/// their current value (or the default, on create).
// The limits in the `schema` attributes document `RANGES` and the length checks, for the
// OpenAPI document; a test keeps them equal.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SettingsPatch {
    /// Unique; required when creating an app. No control characters.
    #[schema(min_length = 1, max_length = 100)]
    pub name: Option<String>,
    /// The `iss` of the app's tokens; the app's name at creation by default.
    #[schema(min_length = 1, max_length = 255)]
    pub issuer: Option<String>,
    /// The default `aud` of the app's auth tokens; the app's name at creation by default.
    #[schema(min_length = 1, max_length = 255)]
    pub audience: Option<String>,
    /// Auth token lifetime, seconds (default 900).
    #[schema(minimum = 10, maximum = 86400)]
    pub token_expire: Option<i64>,
    /// Seconds from issue until an auth token is valid (default 0); less than `token_expire`.
    #[schema(minimum = 0, maximum = 3600)]
    pub token_notbefore: Option<i64>,
    /// Refresh token lifetime, seconds (default 2592000).
    #[schema(minimum = 60, maximum = 34560000)]
    pub refresh_expire: Option<i64>,
    /// Seconds from issue until a refresh token is valid (default 0); less than
    /// `refresh_expire`.
    #[schema(minimum = 0, maximum = 86400)]
    pub refresh_notbefore: Option<i64>,
    /// Absolute lifetime of a session, seconds (default 7776000).
    #[schema(minimum = 60, maximum = 157680000)]
    pub session_max_age: Option<i64>,
    /// Seconds during which the previous refresh token of a session is answered as a retry
    /// (default 10).
    #[schema(minimum = 0, maximum = 300)]
    pub reuse_grace: Option<i64>,
    /// Scheduled signing-key rotation period, seconds (default 2592000).
    #[schema(minimum = 3600, maximum = 63072000)]
    pub rotation_period: Option<i64>,
    /// Live sessions a subject may have; the oldest is revoked past it. 0: no limit.
    #[schema(minimum = 0, maximum = 100000)]
    pub max_sessions_per_sub: Option<i64>,
    /// Whether `/renew` rotates the refresh token (default true).
    pub refresh_rotation: Option<bool>,
    /// What a reused refresh token revokes (default `revoke_session`).
    pub on_reuse: Option<OnReuse>,
    /// The profile of the app's tokens (default `keygate`); `rfc9068` types them for
    /// OAuth resource servers (docs/api.md).
    pub access_token_profile: Option<AccessTokenProfile>,
    /// Requests a second the app may make on average (default 0: no limit); over it, 429
    /// `rate_limited` with `Retry-After`. Counted per gateway (docs/operations.md).
    #[schema(minimum = 0, maximum = 1000000)]
    pub requests_per_second: Option<i64>,
    /// Requests the app may make at once before `requests_per_second` applies (default 0:
    /// one second's worth).
    #[schema(minimum = 0, maximum = 1000000)]
    pub requests_burst: Option<i64>,
    /// Whether sessions may (`allowed`) or must (`required`) be bound to a key of the
    /// user's device with DPoP, RFC 9449 (default `off`): `/sign` takes `dpop_jkt`, and a
    /// bound session renews only with a proof by that key.
    pub dpop: Option<DpopMode>,
    /// Whether DPoP proofs must carry a nonce from the gateway's `DPoP-Nonce` header
    /// (default false).
    pub dpop_nonce: Option<bool>,
    /// Whether the token endpoint accepts `client_id` without a secret (auth method
    /// `none`), for DPoP-bound sessions only (default false).
    pub oauth_public_clients: Option<bool>,
}

impl AppSettings {
    /// The defaults (docs/api.md); issuer and audience default to the app's name.
    pub fn defaults_for(name: &str) -> Self {
        Self {
            issuer: name.to_owned(),
            audience: name.to_owned(),
            token_expire: 900,
            token_notbefore: 0,
            refresh_expire: 30 * DAY,
            refresh_notbefore: 0,
            session_max_age: 90 * DAY,
            reuse_grace: 10,
            rotation_period: 30 * DAY,
            max_sessions_per_sub: 0,
            refresh_rotation: true,
            on_reuse: OnReuse::RevokeSession,
            access_token_profile: AccessTokenProfile::Keygate,
            requests_per_second: 0,
            requests_burst: 0,
            dpop: DpopMode::Off,
            dpop_nonce: false,
            oauth_public_clients: false,
        }
    }

    /// The app's request quota: `(per second, burst)`, or `None` without a limit.
    pub fn request_quota(&self) -> Option<(u32, u32)> {
        let rate = u32::try_from(self.requests_per_second).ok().filter(|&r| r > 0)?;
        let burst = u32::try_from(self.requests_burst).unwrap_or(0);
        Some((rate, if burst == 0 { rate } else { burst }))
    }

    fn duration(&self, name: &str) -> i64 {
        match name {
            "token_expire" => self.token_expire,
            "token_notbefore" => self.token_notbefore,
            "refresh_expire" => self.refresh_expire,
            "refresh_notbefore" => self.refresh_notbefore,
            "session_max_age" => self.session_max_age,
            "reuse_grace" => self.reuse_grace,
            "rotation_period" => self.rotation_period,
            "max_sessions_per_sub" => self.max_sessions_per_sub,
            "requests_per_second" => self.requests_per_second,
            "requests_burst" => self.requests_burst,
            _ => 0,
        }
    }

    /// Every problem with these settings, one entry per field.
    pub fn validate(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        for &(name, min, max) in RANGES {
            let value = self.duration(name);
            if !(min..=max).contains(&value) {
                errors.push(FieldError::new(
                    name,
                    format!("must be between {min} and {max}, got {value}"),
                ));
            }
        }
        if errors.iter().all(|e| e.field != "token_notbefore" && e.field != "token_expire")
            && self.token_notbefore >= self.token_expire
        {
            errors.push(FieldError::new("token_notbefore", "must be less than token_expire"));
        }
        if errors.iter().all(|e| e.field != "refresh_notbefore" && e.field != "refresh_expire")
            && self.refresh_notbefore >= self.refresh_expire
        {
            errors.push(FieldError::new("refresh_notbefore", "must be less than refresh_expire"));
        }
        check_text(&mut errors, "issuer", &self.issuer, MAX_ISSUER_LEN);
        check_text(&mut errors, "audience", &self.audience, MAX_ISSUER_LEN);
        errors
    }
}

/// Checks a name-like field: 1..=max bytes, no control characters, not blank.
pub fn check_text(errors: &mut Vec<FieldError>, field: &str, value: &str, max: usize) {
    if value.trim().is_empty() {
        errors.push(FieldError::new(field, "must not be empty"));
    } else if value.len() > max {
        errors.push(FieldError::new(field, format!("must be at most {max} bytes")));
    } else if value.chars().any(char::is_control) {
        errors.push(FieldError::new(field, "must not contain control characters"));
    }
}

impl SettingsPatch {
    /// Applies this patch on top of `base` and validates the result.
    pub fn apply(&self, base: &AppSettings) -> Result<AppSettings, Vec<FieldError>> {
        let mut s = base.clone();
        macro_rules! set {
            ($($f:ident),*) => { $( if let Some(v) = &self.$f { s.$f = v.clone(); } )* };
        }
        set!(
            issuer,
            audience,
            token_expire,
            token_notbefore,
            refresh_expire,
            refresh_notbefore,
            session_max_age,
            reuse_grace,
            rotation_period,
            max_sessions_per_sub,
            refresh_rotation,
            on_reuse,
            access_token_profile,
            requests_per_second,
            requests_burst,
            dpop,
            dpop_nonce,
            oauth_public_clients
        );
        let mut errors = s.validate();
        if let Some(name) = &self.name {
            check_text(&mut errors, "name", name, MAX_NAME_LEN);
        }
        if errors.is_empty() {
            Ok(s)
        } else {
            Err(errors)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The OpenAPI document states the accepted ranges; they must be the ones enforced.
    #[test]
    fn the_documented_limits_are_the_enforced_ones() {
        use utoipa::openapi::schema::Schema;
        use utoipa::openapi::RefOr;
        use utoipa::PartialSchema;

        let RefOr::T(Schema::Object(patch)) = SettingsPatch::schema() else {
            panic!("SettingsPatch is an object schema")
        };
        let field = |name: &str| match patch.properties.get(name) {
            Some(RefOr::T(Schema::Object(o))) => o.clone(),
            _ => panic!("{name} is not an inline object schema"),
        };
        for &(name, min, max) in RANGES {
            let o = field(name);
            let bounds = serde_json::to_value((&o.minimum, &o.maximum)).unwrap();
            assert_eq!(bounds, serde_json::json!([min, max]), "{name}");
        }
        for (name, max) in
            [("name", MAX_NAME_LEN), ("issuer", MAX_ISSUER_LEN), ("audience", MAX_ISSUER_LEN)]
        {
            let o = field(name);
            assert_eq!((o.min_length, o.max_length), (Some(1), Some(max)), "{name}");
        }
        // name, issuer, audience, refresh_rotation, on_reuse, access_token_profile, dpop,
        // dpop_nonce, oauth_public_clients.
        assert_eq!(patch.properties.len(), RANGES.len() + 9, "every field is documented");
    }

    #[test]
    fn a_quota_of_zero_is_no_limit_and_a_burst_of_zero_is_one_seconds_worth() {
        let mut s = AppSettings::defaults_for("demo");
        assert_eq!(s.request_quota(), None);
        s.requests_per_second = 50;
        assert_eq!(s.request_quota(), Some((50, 50)));
        s.requests_burst = 5;
        assert_eq!(s.request_quota(), Some((50, 5)));
        let patch = SettingsPatch { requests_per_second: Some(-1), ..Default::default() };
        assert_eq!(patch.apply(&s).unwrap_err()[0].field, "requests_per_second");
        let patch = SettingsPatch { requests_burst: Some(1_000_001), ..Default::default() };
        assert_eq!(patch.apply(&s).unwrap_err()[0].field, "requests_burst");
    }

    #[test]
    fn defaults_are_valid() {
        assert!(AppSettings::defaults_for("demo").validate().is_empty());
    }

    #[test]
    fn a_negative_or_absurd_ttl_names_the_field() {
        let base = AppSettings::defaults_for("demo");
        let patch = SettingsPatch {
            token_expire: Some(-5),
            refresh_expire: Some(i64::MAX),
            ..Default::default()
        };
        let errors = patch.apply(&base).unwrap_err();
        let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["token_expire", "refresh_expire"]);
    }

    #[test]
    fn notbefore_must_precede_expiry() {
        let base = AppSettings::defaults_for("demo");
        let patch = SettingsPatch {
            token_expire: Some(60),
            token_notbefore: Some(60),
            ..Default::default()
        };
        let errors = patch.apply(&base).unwrap_err();
        assert_eq!(errors, [FieldError::new("token_notbefore", "must be less than token_expire")]);
    }

    #[test]
    fn names_with_control_characters_are_rejected() {
        let base = AppSettings::defaults_for("demo");
        let patch = SettingsPatch { name: Some("a\u{1b}[31m".into()), ..Default::default() };
        assert_eq!(patch.apply(&base).unwrap_err()[0].field, "name");
    }
}
