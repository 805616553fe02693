//! Signing with an app's active key.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::EcdsaKeyPair;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::Serialize;

use crate::{verify, KeyId, KeyringError};

/// The active key of an app, parsed once and ready to sign.
///
/// It signs with aws-lc directly: `jsonwebtoken`'s `EncodingKey` keeps the PKCS#8 bytes
/// and parses (and checks) the key again on every signature, which costs as much as the
/// signature itself.
pub struct Signer {
    pub key_id: KeyId,
    /// base64 of the SubjectPublicKeyInfo PEM, as token responses carry it.
    pub public_key: String,
    /// base64url of `{"alg":"ES256","typ":…,"kid":…}` for each [`Typ`], in its order.
    pub(crate) headers: [String; 3],
    pub(crate) key_pair: EcdsaKeyPair,
}

/// The JOSE `typ` of a signed token (RFC 7515 §4.1.9, RFC 8725 §3.11).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Typ {
    /// `JWT`: every token of keygate's own profile.
    Jwt,
    /// `at+jwt`: an RFC 9068 access token.
    AccessToken,
    /// `refresh+jwt`: a refresh token that must never pass for an access token.
    RefreshToken,
}

impl Typ {
    pub(crate) const ALL: [Typ; 3] = [Typ::Jwt, Typ::AccessToken, Typ::RefreshToken];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Jwt => "JWT",
            Self::AccessToken => "at+jwt",
            Self::RefreshToken => "refresh+jwt",
        }
    }
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer").field("key_id", &self.key_id).finish_non_exhaustive()
    }
}

impl Signer {
    /// An ES256 JWS (RFC 7515 compact form) with header
    /// `{"alg":"ES256","typ":"JWT","kid":…}`.
    pub fn sign<T: Serialize>(&self, claims: &T) -> Result<String, KeyringError> {
        self.sign_typed(Typ::Jwt, claims)
    }

    /// Like [`Self::sign`], with `typ` as the header's `typ`.
    pub fn sign_typed<T: Serialize>(&self, typ: Typ, claims: &T) -> Result<String, KeyringError> {
        let payload = serde_json::to_vec(claims)
            .map_err(|e| KeyringError::Material(format!("claims: {e}")))?;
        let header = &self.headers[typ as usize];
        let mut token = String::with_capacity(header.len() + payload.len() * 4 / 3 + 92);
        token.push_str(header);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(&payload, &mut token);
        let signature = self
            .key_pair
            .sign(&SystemRandom::new(), token.as_bytes())
            .map_err(|_| KeyringError::Material("signing failed".into()))?;
        // Only the low-S form is issued, and only it is accepted (see verify::check_signature).
        let signature = verify::low_s(signature.as_ref())
            .ok_or_else(|| KeyringError::Material("signing gave no P-256 signature".into()))?;
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(signature, &mut token);
        Ok(token)
    }
}

#[cfg(test)]
mod tests {
    use p256::ecdsa::Signature;
    use p256::elliptic_curve::scalar::IsHigh;
    use rand::rngs::OsRng;

    use super::*;
    use crate::{material, strict_validation, AppKeys, KeyState, MasterKey, VerifyError};
    use keygate_kernel::AppId;

    fn app_keys() -> AppKeys {
        let master = MasterKey::generate();
        let secret = p256::SecretKey::random(&mut OsRng);
        let record =
            material::seal_new(AppId::new(), KeyState::Active, &secret, &master, 1).unwrap();
        AppKeys::load(&[record], &master, &[]).unwrap()
    }

    /// Checks the signature and the header only: the test tokens carry no time claims.
    fn signature_only() -> jsonwebtoken::Validation {
        let mut validation = strict_validation();
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation
    }

    fn split(token: &str) -> (&str, Signature) {
        let (message, signature) = token.rsplit_once('.').unwrap();
        let raw = URL_SAFE_NO_PAD.decode(signature).unwrap();
        (message, Signature::from_slice(&raw).unwrap())
    }

    /// Without the low-S rule, half of all signatures would be high: 64 in a row are low
    /// only by chance once in 2^64.
    #[test]
    fn the_signer_issues_only_low_s_signatures_that_verify() {
        let keys = app_keys();
        let signer = keys.signer().unwrap();
        let key = &keys.verifiers[&signer.key_id];
        let validation = signature_only();
        for i in 0..64 {
            let token = signer.sign(&serde_json::json!({"n": i})).unwrap();
            let (_, signature) = split(&token);
            assert!(!bool::from(signature.s().is_high()), "token {i}: {token}");
            verify::check_signature(&token).unwrap();
            let data = jsonwebtoken::decode::<serde_json::Value>(&token, key, &validation).unwrap();
            assert_eq!(data.claims["n"], i);
        }
    }

    /// The high-S twin is a valid ECDSA signature (the library alone accepts it); keygate
    /// refuses it before the library is asked.
    #[test]
    fn the_high_s_twin_of_an_issued_token_is_refused() {
        let keys = app_keys();
        let signer = keys.signer().unwrap();
        let key = &keys.verifiers[&signer.key_id];
        let validation = signature_only();
        let token = signer.sign(&serde_json::json!({"sub": "x"})).unwrap();
        let (message, signature) = split(&token);
        let (r, s) = signature.split_scalars();
        let twin = Signature::from_scalars(r, -*s).unwrap();
        assert!(bool::from(twin.s().is_high()));
        let twin = format!("{message}.{}", URL_SAFE_NO_PAD.encode(twin.to_bytes()));
        assert!(jsonwebtoken::decode::<serde_json::Value>(&twin, key, &validation).is_ok());
        assert!(matches!(
            verify::check_signature(&twin),
            Err(VerifyError::Invalid(e)) if *e.kind() == jsonwebtoken::errors::ErrorKind::InvalidSignature
        ));
        verify::check_signature(&token).unwrap();
    }
}
