//! Checks made on a presented token before any signature work: size, shape, a header
//! that names ES256 and nothing that could redirect key lookup, and a signature in the one
//! encoding keygate issues (64 bytes of r || s, low S).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use p256::ecdsa::Signature;
use p256::elliptic_curve::scalar::IsHigh;
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

/// The length of an ES256 signature: r and s, 32 bytes each, big-endian (RFC 7518 3.4).
pub const SIGNATURE_LEN: usize = 64;

/// The base64url length of a [`SIGNATURE_LEN`]-byte signature, without padding.
const SIGNATURE_B64_LEN: usize = 86;

/// Refuses a signature that is not the canonical form of an ES256 signature: exactly
/// [`SIGNATURE_LEN`] bytes (no DER, nothing truncated), `r` and `s` in `1..n`, and `s` at
/// most `n / 2` (`n` the order of P-256). ECDSA is malleable: when `(r, s)` is valid, so is
/// `(r, n - s)`. keygate signs only low-S signatures, so the high-S twin of a token is
/// refused and every token has exactly one accepted encoding.
///
/// Call it after [`inspect`], which has checked that the token has three segments.
pub fn check_signature(token: &str) -> Result<(), VerifyError> {
    let refused = || VerifyError::Invalid(ErrorKind::InvalidSignature.into());
    let encoded = token.rsplit('.').next().unwrap_or_default();
    if encoded.len() != SIGNATURE_B64_LEN {
        return Err(refused());
    }
    // Room for the decoder's estimate of 86 characters; exactly 64 bytes must come out.
    // mutants: `* 2` for `+ 2` is equivalent: a larger buffer changes nothing, since only
    // a decode of exactly SIGNATURE_LEN bytes is accepted.
    let mut raw = [0u8; SIGNATURE_LEN + 2];
    match URL_SAFE_NO_PAD.decode_slice(encoded, &mut raw) {
        Ok(SIGNATURE_LEN) => {}
        _ => return Err(refused()),
    }
    match Signature::from_slice(&raw[..SIGNATURE_LEN]) {
        Ok(signature) if !bool::from(signature.s().is_high()) => Ok(()),
        _ => Err(refused()),
    }
}

/// The low-S form of a fixed-size (r || s) P-256 signature: `s` is replaced by `n - s` when
/// it is above `n / 2`. Both forms verify; keygate issues and accepts only the low one.
pub(crate) fn low_s(signature: &[u8]) -> Option<[u8; SIGNATURE_LEN]> {
    let signature = Signature::from_slice(signature).ok()?;
    let low = signature.normalize_s().unwrap_or(signature);
    Some(low.to_bytes().into())
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
        // 8 KiB is still read (and found malformed); a byte more is not.
        let at_limit = format!("a.b.{}", "c".repeat(8 * 1024 - 4));
        assert_eq!(at_limit.len(), 8192);
        assert!(matches!(inspect(&at_limit), Err(VerifyError::Malformed)));
        assert!(matches!(inspect(&format!("{at_limit}c")), Err(VerifyError::TooLarge)));
        assert!(matches!(inspect("eyJ=.e30.c2ln"), Err(VerifyError::Malformed)));
    }

    /// The order of P-256, big-endian.
    const ORDER: [u8; 32] = [
        0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63,
        0x25, 0x51,
    ];

    /// `n / 2` rounded down: the largest low `s`.
    const HALF_ORDER: [u8; 32] = [
        0x7f, 0xff, 0xff, 0xff, 0x80, 0x00, 0x00, 0x00, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xde, 0x73, 0x7d, 0x56, 0xd3, 0x8b, 0xcf, 0x42, 0x79, 0xdc, 0xe5, 0x61, 0x7e, 0x31,
        0x92, 0xa8,
    ];

    /// A token whose signature segment encodes `r || s`.
    fn with_signature(r: &[u8; 32], s: &[u8; 32]) -> String {
        let mut raw = r.to_vec();
        raw.extend_from_slice(s);
        format!("e30.e30.{}", URL_SAFE_NO_PAD.encode(raw))
    }

    /// `a - b` for 256-bit big-endian numbers with `a >= b`.
    fn sub(a: &[u8; 32], b: &[u8; 32]) -> [u8; 32] {
        let mut out = [0u8; 32];
        let mut borrow = 0i16;
        for i in (0..32).rev() {
            let mut d = i16::from(a[i]) - i16::from(b[i]) - borrow;
            borrow = i16::from(d < 0);
            if d < 0 {
                d += 256;
            }
            out[i] = d as u8;
        }
        out
    }

    fn one() -> [u8; 32] {
        let mut one = [0u8; 32];
        one[31] = 1;
        one
    }

    fn refused(token: &str) -> bool {
        matches!(check_signature(token), Err(VerifyError::Invalid(e))
            if *e.kind() == ErrorKind::InvalidSignature)
    }

    #[test]
    fn the_boundaries_of_s_and_r() {
        let r = [0x42u8; 32];
        assert!(check_signature(&with_signature(&r, &one())).is_ok());
        assert!(check_signature(&with_signature(&r, &HALF_ORDER)).is_ok(), "n/2 is still low");
        let above_half = sub(&ORDER, &HALF_ORDER);
        assert!(refused(&with_signature(&r, &above_half)), "n/2 + 1 is high");
        assert!(refused(&with_signature(&r, &sub(&ORDER, &one()))), "n - 1 is high");
        assert!(refused(&with_signature(&r, &ORDER)), "s = n");
        assert!(refused(&with_signature(&r, &[0xff; 32])), "s above n");
        assert!(refused(&with_signature(&r, &[0; 32])), "s = 0");
        assert!(refused(&with_signature(&[0; 32], &one())), "r = 0");
        assert!(refused(&with_signature(&ORDER, &one())), "r = n");
        assert!(check_signature(&with_signature(&sub(&ORDER, &one()), &one())).is_ok());
        assert!(refused(&with_signature(&[0; 32], &[0; 32])), "r = s = 0");
    }

    #[test]
    fn only_64_bytes_in_canonical_base64url() {
        let good = with_signature(&[0x42; 32], &one());
        assert!(check_signature(&good).is_ok());
        let (message, signature) = good.rsplit_once('.').unwrap();
        let raw = URL_SAFE_NO_PAD.decode(signature).unwrap();
        for cut in [0, 1, 32, 63] {
            let short = format!("{message}.{}", URL_SAFE_NO_PAD.encode(&raw[..cut]));
            assert!(refused(&short), "{cut} bytes");
        }
        let mut long = raw.clone();
        long.push(0);
        assert!(refused(&format!("{message}.{}", URL_SAFE_NO_PAD.encode(&long))), "65 bytes");
        assert!(refused(&format!("{good}=")), "padding");
        assert!(refused(&format!("{good}==")), "padding");
        assert!(refused(&format!("{message}.{}", &signature[..85])), "85 characters");
        // The last of 86 characters carries 2 bits; setting one of its 4 unused bits is refused.
        let last = signature.as_bytes()[85];
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let index = alphabet.iter().position(|c| *c == last).unwrap();
        let trailing = alphabet[index | 1] as char;
        let noncanonical = format!("{message}.{}{trailing}", &signature[..85]);
        assert!(refused(&noncanonical), "trailing bits");
        assert!(refused(&format!("{message}.{}+", &signature[..85])), "standard alphabet");
        let der = Signature::from_slice(&raw).unwrap().to_der();
        let der = format!("{message}.{}", URL_SAFE_NO_PAD.encode(der.as_bytes()));
        assert!(refused(&der), "DER");
    }

    #[test]
    fn low_s_is_the_twin_below_half_the_order() {
        let r = [0x42u8; 32];
        let high = sub(&ORDER, &one());
        let mut raw = r.to_vec();
        raw.extend_from_slice(&high);
        let low = low_s(&raw).unwrap();
        assert_eq!(&low[..32], &r);
        assert_eq!(&low[32..], &one(), "n - (n - 1) = 1");
        let mut already_low = r.to_vec();
        already_low.extend_from_slice(&HALF_ORDER);
        assert_eq!(low_s(&already_low).unwrap().as_slice(), already_low.as_slice());
        assert!(low_s(&raw[..63]).is_none());
        assert!(low_s(&[0u8; 64]).is_none());
    }
}
