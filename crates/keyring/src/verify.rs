//! Checks made on a presented token before any signature work: size, shape, and a header
//! that names ES256 and nothing that could redirect key lookup.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::Value;

use crate::{KeyId, VerifyError};

/// Tokens longer than this are refused before anything is parsed.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

/// Header parameters that would let a token choose its own key or demand extensions.
pub const FORBIDDEN_HEADERS: &[&str] = &["crit", "jku", "jwk", "x5u", "x5c"];

/// The `kid` of a token whose header is acceptable.
pub fn inspect(token: &str) -> Result<KeyId, VerifyError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(VerifyError::TooLarge);
    }
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(VerifyError::Malformed);
    };
    let header = URL_SAFE_NO_PAD.decode(header).map_err(|_| VerifyError::Malformed)?;
    let header: serde_json::Map<String, Value> =
        serde_json::from_slice(&header).map_err(|_| VerifyError::Malformed)?;
    if header.get("alg").and_then(Value::as_str) != Some("ES256") {
        return Err(VerifyError::Header("alg must be ES256"));
    }
    if FORBIDDEN_HEADERS.iter().any(|name| header.contains_key(*name)) {
        return Err(VerifyError::Header("crit, jku, jwk, x5u and x5c are not accepted"));
    }
    header
        .get("kid")
        .and_then(Value::as_str)
        .and_then(|kid| kid.parse().ok())
        .ok_or(VerifyError::UnknownKey)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(header: &str) -> String {
        format!("{}.e30.c2ln", URL_SAFE_NO_PAD.encode(header))
    }

    #[test]
    fn headers_are_pinned() {
        let kid = KeyId::new();
        let ok = token(&format!(r#"{{"alg":"ES256","typ":"JWT","kid":"{kid}"}}"#));
        assert_eq!(inspect(&ok).unwrap(), kid);
        for alg in ["none", "HS256", "ES384", "RS256"] {
            let t = token(&format!(r#"{{"alg":"{alg}","kid":"{kid}"}}"#));
            assert!(matches!(inspect(&t), Err(VerifyError::Header(_))), "{alg}");
        }
        for extra in FORBIDDEN_HEADERS {
            let t = token(&format!(r#"{{"alg":"ES256","kid":"{kid}","{extra}":"x"}}"#));
            assert!(matches!(inspect(&t), Err(VerifyError::Header(_))), "{extra}");
        }
        let sqlish = token(r#"{"alg":"ES256","kid":"' OR 1=1 --"}"#);
        assert!(matches!(inspect(&sqlish), Err(VerifyError::UnknownKey)));
    }

    #[test]
    fn shape_and_size_come_first() {
        assert!(matches!(inspect("a.b"), Err(VerifyError::Malformed)));
        assert!(matches!(inspect("a.b.c.d"), Err(VerifyError::Malformed)));
        assert!(matches!(inspect(&"a".repeat(MAX_TOKEN_LEN + 1)), Err(VerifyError::TooLarge)));
        assert!(matches!(inspect("eyJ=.e30.c2ln"), Err(VerifyError::Malformed)));
    }
}
