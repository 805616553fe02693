//! DPoP (RFC 9449): the proofs a device signs with its key, the thumbprint that binds a
//! session to that key (RFC 7638), and the nonces a gateway hands out (§8).
//!
//! A proof is checked as §4.3 says, here for what it says of itself (type, algorithm, key,
//! signature, method, URI, time, nonce); whether its key is the session's, and whether its
//! `jti` was seen before, are the renew's to check ([`crate::Sessions::renew`]).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use keygate_kernel::{hmac_sha256, AppId};
use keygate_keyring::jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, ThumbprintHash};
use keygate_keyring::jsonwebtoken::{crypto, Algorithm, DecodingKey};
use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The JOSE `typ` of a proof.
pub const PROOF_TYP: &str = "dpop+jwt";
/// The `alg` values a proof may have, as the metadata lists them: ES256, and Ed25519 under
/// its JOSE name (`EdDSA`) and its fully specified one (`Ed25519`).
pub const PROOF_ALGS: [&str; 3] = ["ES256", "EdDSA", "Ed25519"];
/// How far a proof's `iat` may be from the gateway's clock, either way, in seconds.
pub const PROOF_WINDOW: i64 = 60;
/// The longest proof looked at.
pub const MAX_PROOF_LEN: usize = 4096;
/// The longest `jti` accepted.
const MAX_JTI_LEN: usize = 256;
/// How long a nonce is accepted after the gateway made it, in seconds.
pub const NONCE_LIFETIME: i64 = 300;
/// How far ahead of this gateway's clock another gateway's nonce may be, in seconds.
const NONCE_SKEW: i64 = 5;
/// The length of an RFC 7638 SHA-256 thumbprint in base64url.
const JKT_LEN: usize = 43;
/// JWK members that only a private key has (RFC 7518 §6).
const PRIVATE_MEMBERS: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

/// A proof that passed every check of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proof {
    /// The RFC 7638 SHA-256 thumbprint of the proof's key, base64url.
    pub jkt: String,
    /// SHA-256 of the proof's `jti`: what the replay check remembers.
    pub jti_digest: [u8; 32],
    pub iat: i64,
    /// The nonce the proof carries, if any.
    pub nonce: Option<String>,
}

impl Proof {
    /// Until when the proof's `jti` must be remembered: past it, its `iat` is out of the
    /// window anyway.
    pub fn remember_until(&self) -> i64 {
        self.iat.saturating_add(PROOF_WINDOW + 1)
    }
}

/// Why a proof was refused, for the `error_description`; never quotes the proof.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ProofError(pub String);

fn refuse<T>(message: impl Into<String>) -> Result<T, ProofError> {
    Err(ProofError(message.into()))
}

/// The claims of a proof that the gateway reads; others are allowed (`ath`, for one).
#[derive(Deserialize)]
struct ProofClaims {
    jti: Value,
    htm: Value,
    htu: Value,
    iat: Value,
    #[serde(default)]
    nonce: Option<Value>,
}

/// Checks `proof` for a request with method `htm` to `htu` at `now`: a JWS of three
/// base64url parts, `typ` `dpop+jwt`, an `alg` of [`PROOF_ALGS`], a public `jwk` of that
/// algorithm's kind (no private member), a valid signature by it, no `crit`, and claims
/// `jti`, `htm` (equal), `htu` (the same URI, query and fragment ignored) and `iat` (within
/// [`PROOF_WINDOW`] of `now`).
pub fn check_proof(proof: &str, htm: &str, htu: &str, now: i64) -> Result<Proof, ProofError> {
    if proof.len() > MAX_PROOF_LEN {
        return refuse(format!("the proof is longer than {MAX_PROOF_LEN} bytes"));
    }
    let mut parts = proof.split('.');
    let (Some(header_b64), Some(claims_b64), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return refuse("the proof is not a JWS in compact form");
    };
    let header: Map<String, Value> = decode_part(header_b64, "header")?;
    match header.get("typ").and_then(Value::as_str) {
        Some(typ) if typ.eq_ignore_ascii_case(PROOF_TYP) => {}
        _ => return refuse("the proof's typ must be dpop+jwt"),
    }
    if header.contains_key("crit") {
        return refuse("the proof has crit header parameters, which keygate does not understand");
    }
    let algorithm = match header.get("alg").and_then(Value::as_str) {
        Some("ES256") => Algorithm::ES256,
        Some("EdDSA" | "Ed25519") => Algorithm::EdDSA,
        _ => return refuse("the proof's alg must be ES256, EdDSA or Ed25519"),
    };
    let Some(Value::Object(jwk)) = header.get("jwk") else {
        return refuse("the proof's header has no jwk");
    };
    if PRIVATE_MEMBERS.iter().any(|member| jwk.contains_key(*member)) {
        return refuse("the proof's jwk holds a private key");
    }
    let jwk: Jwk = serde_json::from_value(Value::Object(jwk.clone()))
        .map_err(|_| ProofError("the proof's jwk is not a valid public key".into()))?;
    let fits = match (&jwk.algorithm, algorithm) {
        (AlgorithmParameters::EllipticCurve(ec), Algorithm::ES256) => {
            ec.curve == EllipticCurve::P256
        }
        (AlgorithmParameters::OctetKeyPair(okp), Algorithm::EdDSA) => {
            okp.curve == EllipticCurve::Ed25519
        }
        _ => false,
    };
    if !fits {
        return refuse(
            "the proof's jwk is not a key of its alg (P-256 for ES256, Ed25519 for EdDSA)",
        );
    }
    let key = DecodingKey::from_jwk(&jwk)
        .map_err(|_| ProofError("the proof's jwk is not a valid public key".into()))?;
    let message = &proof[..header_b64.len() + 1 + claims_b64.len()];
    if !crypto::verify(signature, message.as_bytes(), &key, algorithm).unwrap_or(false) {
        return refuse("the proof's signature does not verify with its jwk");
    }
    let claims: ProofClaims = decode_part(claims_b64, "claims")?;
    let jti = match claims.jti {
        Value::String(jti) if !jti.is_empty() && jti.len() <= MAX_JTI_LEN => jti,
        _ => {
            return refuse(format!("the proof's jti must be a string of 1 to {MAX_JTI_LEN} bytes"))
        }
    };
    if claims.htm.as_str() != Some(htm) {
        return refuse(format!("the proof's htm must be {htm}"));
    }
    match claims.htu.as_str() {
        Some(claimed) if same_uri(claimed, htu) => {}
        _ => return refuse(format!("the proof's htu must be {htu}")),
    }
    let Some(iat) = claims.iat.as_i64() else {
        return refuse("the proof's iat must be a whole number of seconds");
    };
    if iat.abs_diff(now) > PROOF_WINDOW.unsigned_abs() {
        return refuse(format!(
            "the proof's iat is more than {PROOF_WINDOW} s from the gateway's clock"
        ));
    }
    let nonce = match claims.nonce {
        None => None,
        Some(Value::String(nonce)) => Some(nonce),
        Some(_) => return refuse("the proof's nonce must be a string"),
    };
    Ok(Proof {
        jkt: jwk.thumbprint(ThumbprintHash::SHA256),
        jti_digest: Sha256::digest(jti.as_bytes()).into(),
        iat,
        nonce,
    })
}

fn decode_part<T: serde::de::DeserializeOwned>(part: &str, what: &str) -> Result<T, ProofError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| ProofError(format!("the proof's {what} is not base64url")))?;
    serde_json::from_slice(&bytes)
        .map_err(|_| ProofError(format!("the proof's {what} is not the JSON object it must be")))
}

/// Whether two URIs are the same but for their query and fragment, after the syntax-based
/// normalization of RFC 3986 §6.2.2 (case of scheme and host, default port, dot segments).
fn same_uri(claimed: &str, expected: &str) -> bool {
    let base = |uri: &str| {
        let mut url = url::Url::parse(uri).ok()?;
        url.set_query(None);
        url.set_fragment(None);
        Some(url)
    };
    matches!((base(claimed), base(expected)), (Some(a), Some(b)) if a == b)
}

/// Whether `jkt` has the form of an RFC 7638 SHA-256 thumbprint: 43 base64url characters.
pub fn is_thumbprint(jkt: &str) -> bool {
    jkt.len() == JKT_LEN && URL_SAFE_NO_PAD.decode(jkt).is_ok_and(|bytes| bytes.len() == 32)
}

/// The nonces of RFC 9449 §8, without state: the time a nonce was made and a MAC over it and
/// the app, under a key that every gateway of one database shares. A nonce is accepted for
/// [`NONCE_LIFETIME`] seconds, by every gateway.
#[derive(Clone)]
pub struct NonceKey([u8; 32]);

impl std::fmt::Debug for NonceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NonceKey(<redacted>)")
    }
}

/// The MAC bytes a nonce keeps.
const NONCE_TAG_LEN: usize = 16;

impl NonceKey {
    pub fn new(key: [u8; 32]) -> Self {
        Self(key)
    }

    fn mac(&self, app_id: AppId, made: i64) -> [u8; 32] {
        let app = app_id.to_string();
        hmac_sha256(&self.0, &[b"keygate dpop nonce v1\0", app.as_bytes(), &made.to_be_bytes()])
    }

    /// A fresh nonce of `app_id` at `now`.
    pub fn issue(&self, app_id: AppId, now: i64) -> String {
        let tag = self.mac(app_id, now);
        let mut bytes = now.to_be_bytes().to_vec();
        bytes.extend_from_slice(&tag[..NONCE_TAG_LEN]);
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Whether `nonce` is one this key made for `app_id` no more than [`NONCE_LIFETIME`]
    /// seconds before `now`. The MAC is compared in constant time.
    pub fn accepts(&self, app_id: AppId, nonce: &str, now: i64) -> bool {
        let Ok(bytes) = URL_SAFE_NO_PAD.decode(nonce) else {
            return false;
        };
        if bytes.len() != 8 + NONCE_TAG_LEN {
            return false;
        }
        let (made, tag) = bytes.split_at(8);
        let made = i64::from_be_bytes(made.try_into().unwrap_or_default());
        if made > now.saturating_add(NONCE_SKEW) || now.saturating_sub(made) > NONCE_LIFETIME {
            return false;
        }
        self.mac(app_id, made)[..NONCE_TAG_LEN].ct_eq(tag).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The proof of RFC 9449 §4.1 (figure 4), made with the key of its jkt example (§6.1).
    const RFC_PROOF: &str = "eyJ0eXAiOiJkcG9wK2p3dCIsImFsZyI6IkVTMjU2IiwiandrIjp7Imt0eSI6IkVDIiwieCI6Imw4dEZyaHgtMzR0VjNoUklDUkRZOXpDa0RscEJoRjQyVVFVZldWQVdCRnMiLCJ5IjoiOVZFNGpmX09rX282NHpiVFRsY3VOSmFqSG10NnY5VERWclUwQ2R2R1JEQSIsImNydiI6IlAtMjU2In19.eyJqdGkiOiItQndDM0VTYzZhY2MybFRjIiwiaHRtIjoiUE9TVCIsImh0dSI6Imh0dHBzOi8vc2VydmVyLmV4YW1wbGUuY29tL3Rva2VuIiwiaWF0IjoxNTYyMjYyNjE2fQ.2-GxA6T8lP4vfrg8v-FdWP0A0zdrj8igiMLvqRMUvwnQg4PtFLbdLXiOSsX0x7NVY-FNyJK70nfbV37xRZT3Lg";
    const RFC_IAT: i64 = 1_562_262_616;
    const RFC_HTU: &str = "https://server.example.com/token";
    const RFC_JKT: &str = "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I";

    #[test]
    fn the_proof_of_rfc_9449_checks_and_its_thumbprint_is_the_rfcs() {
        let proof = check_proof(RFC_PROOF, "POST", RFC_HTU, RFC_IAT + 5).unwrap();
        assert_eq!(proof.jkt, RFC_JKT);
        assert_eq!(proof.iat, RFC_IAT);
        assert_eq!(proof.nonce, None);
        assert_eq!(proof.jti_digest, <[u8; 32]>::from(Sha256::digest(b"-BwC3ESc6acc2lTc")));
        // The same URI in another spelling, with a query and a fragment.
        let spelled = "HTTPS://Server.Example.COM:443/token?x=1#f";
        assert!(check_proof(RFC_PROOF, "POST", spelled, RFC_IAT).is_ok());
    }

    #[test]
    fn a_proof_for_another_request_or_time_is_refused() {
        let refused = |htm, htu, now| check_proof(RFC_PROOF, htm, htu, now).unwrap_err().0;
        assert!(refused("GET", RFC_HTU, RFC_IAT).contains("htm"));
        assert!(refused("POST", "https://server.example.com/other", RFC_IAT).contains("htu"));
        assert!(refused("POST", "https://server.example.org/token", RFC_IAT).contains("htu"));
        assert!(refused("POST", RFC_HTU, RFC_IAT + PROOF_WINDOW + 1).contains("iat"));
        assert!(refused("POST", RFC_HTU, RFC_IAT - PROOF_WINDOW - 1).contains("iat"));
        assert!(check_proof(RFC_PROOF, "POST", RFC_HTU, RFC_IAT + PROOF_WINDOW).is_ok());
        assert!(check_proof(RFC_PROOF, "POST", RFC_HTU, RFC_IAT - PROOF_WINDOW).is_ok());
    }

    #[test]
    fn a_tampered_or_malformed_proof_is_refused() {
        let (head, rest) = RFC_PROOF.split_once('.').unwrap();
        let (claims, signature) = rest.split_once('.').unwrap();
        let encode = |v: Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(&v).unwrap());
        let mut header: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(head).unwrap()).unwrap();
        let with_header = |h: Value| format!("{}.{claims}.{signature}", encode(h));
        let check = |proof: &str| check_proof(proof, "POST", RFC_HTU, RFC_IAT).unwrap_err().0;

        let later = encode(serde_json::json!({"jti": "x", "htm": "POST", "htu": RFC_HTU,
            "iat": RFC_IAT}));
        assert!(check(&format!("{head}.{later}.{signature}")).contains("signature"));
        assert!(check(&format!("{head}.{claims}")).contains("compact"));
        assert!(check(&format!("{RFC_PROOF}.x")).contains("compact"));
        assert!(check(&format!("!.{claims}.{signature}")).contains("base64url"));
        assert!(check(&"a".repeat(MAX_PROOF_LEN + 1)).contains("longer"));

        let mut h = header.clone();
        h["typ"] = "JWT".into();
        assert!(check(&with_header(h)).contains("typ"));
        let mut h = header.clone();
        h["alg"] = "HS256".into();
        assert!(check(&with_header(h)).contains("alg"));
        let mut h = header.clone();
        h["alg"] = "none".into();
        assert!(check(&with_header(h)).contains("alg"));
        let mut h = header.clone();
        h["alg"] = "EdDSA".into();
        assert!(check(&with_header(h)).contains("not a key of its alg"));
        let mut h = header.clone();
        h["crit"] = serde_json::json!(["x"]);
        assert!(check(&with_header(h)).contains("crit"));
        let mut h = header.clone();
        h.as_object_mut().unwrap().remove("jwk");
        assert!(check(&with_header(h)).contains("no jwk"));
        header["jwk"]["d"] = "private".into();
        assert!(check(&with_header(header)).contains("private"));
    }

    #[test]
    fn thumbprints_have_their_form() {
        assert!(is_thumbprint(RFC_JKT));
        assert!(!is_thumbprint(&RFC_JKT[1..]));
        assert!(!is_thumbprint(&format!("{}=", &RFC_JKT[1..])));
        assert!(!is_thumbprint(&RFC_JKT.replace('0', "+")));
    }

    #[test]
    fn a_nonce_is_accepted_for_its_app_within_its_lifetime() {
        let key = NonceKey::new([7; 32]);
        let app = AppId::new();
        let nonce = key.issue(app, 1000);
        assert!(key.accepts(app, &nonce, 1000));
        assert!(key.accepts(app, &nonce, 1000 + NONCE_LIFETIME));
        assert!(key.accepts(app, &nonce, 1000 - NONCE_SKEW), "another gateway's clock");
        assert!(!key.accepts(app, &nonce, 1000 + NONCE_LIFETIME + 1));
        assert!(!key.accepts(app, &nonce, 1000 - NONCE_SKEW - 1));
        assert!(!key.accepts(AppId::new(), &nonce, 1000), "another app's");
        assert!(!NonceKey::new([8; 32]).accepts(app, &nonce, 1000), "another database's");
        let mut forged = URL_SAFE_NO_PAD.decode(&nonce).unwrap();
        forged[..8].copy_from_slice(&2000_i64.to_be_bytes());
        assert!(!key.accepts(app, &URL_SAFE_NO_PAD.encode(forged), 2000), "a moved time");
        assert!(!key.accepts(app, "", 1000));
        assert!(!key.accepts(app, "not a nonce", 1000));
    }
}
