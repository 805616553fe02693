//! A device key for DPoP-bound sessions (RFC 9449): the load's sessions are bound to it at
//! `/sign`, and every renew forwards a fresh proof it signed, as an app backend does for its
//! users' devices.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey};
use serde_json::json;
use sha2::{Digest, Sha256};

/// An ES256 key pair, its proof header and its thumbprint.
#[derive(Debug, Clone)]
pub struct DeviceKey {
    key: SigningKey,
    /// base64url of the proof's JOSE header, with the public JWK.
    header: String,
    /// The RFC 7638 SHA-256 thumbprint: the session's `dpop_jkt`.
    pub jkt: String,
}

impl DeviceKey {
    pub fn generate() -> Self {
        let key = SigningKey::random(&mut rand::rngs::OsRng);
        let point = key.verifying_key().to_encoded_point(false);
        let coordinate = |c: Option<&p256::FieldBytes>| {
            URL_SAFE_NO_PAD.encode(c.map(|c| <[u8; 32]>::from(*c)).unwrap_or_default())
        };
        // The required members in lexicographic order, without whitespace (RFC 7638 §3).
        let jwk = json!({"crv": "P-256", "kty": "EC", "x": coordinate(point.x()), "y": coordinate(point.y())});
        let jkt = URL_SAFE_NO_PAD.encode(Sha256::digest(jwk.to_string().as_bytes()));
        let header = json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": jwk});
        Self { key, header: URL_SAFE_NO_PAD.encode(header.to_string()), jkt }
    }

    /// A proof for a POST to `htu` now, with a fresh `jti`.
    // A load tool, outside the gateway's clock: the proof's `iat` is the device's time.
    #[allow(clippy::disallowed_methods)]
    pub fn proof(&self, htu: &str) -> String {
        let iat = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let claims =
            json!({"jti": ulid::Ulid::new().to_string(), "htm": "POST", "htu": htu, "iat": iat});
        let message = format!("{}.{}", self.header, URL_SAFE_NO_PAD.encode(claims.to_string()));
        let signature: Signature = self.key.sign(message.as_bytes());
        format!("{message}.{}", URL_SAFE_NO_PAD.encode(signature.to_bytes()))
    }
}
