//! A device key for DPoP-bound sessions (RFC 9449): the load's sessions are bound to it at
//! `/sign`, and every renew forwards a fresh proof it signed, as an app backend does for its
//! users' devices.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::json;
use sha2::{Digest, Sha256};

/// An ES256 key pair (aws-lc-rs, so that the load's own signing leaves the CPU to the
/// gateway), its proof header and its thumbprint.
#[derive(Debug)]
pub struct DeviceKey {
    key: EcdsaKeyPair,
    rng: SystemRandom,
    /// base64url of the proof's JOSE header, with the public JWK.
    header: String,
    /// The RFC 7638 SHA-256 thumbprint: the session's `dpop_jkt`.
    pub jkt: String,
}

impl DeviceKey {
    pub fn generate() -> anyhow::Result<Self> {
        let rng = SystemRandom::new();
        let failed = |_| anyhow::anyhow!("could not make a P-256 key pair");
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).map_err(failed)?;
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref())
            .map_err(|_| anyhow::anyhow!("could not read the P-256 key pair"))?;
        // The uncompressed point: 0x04, x, y.
        let point = key.public_key().as_ref();
        let (x, y) = point.get(1..).unwrap_or_default().split_at(point.len().saturating_sub(1) / 2);
        // The required members in lexicographic order, without whitespace (RFC 7638 §3).
        let jwk = json!({"crv": "P-256", "kty": "EC", "x": URL_SAFE_NO_PAD.encode(x),
            "y": URL_SAFE_NO_PAD.encode(y)});
        let jkt = URL_SAFE_NO_PAD.encode(Sha256::digest(jwk.to_string().as_bytes()));
        let header = json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": jwk});
        Ok(Self { key, rng, header: URL_SAFE_NO_PAD.encode(header.to_string()), jkt })
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
        // Signing with a valid key only fails if the system's RNG does; the gateway then
        // refuses the empty signature, and the run counts it.
        let signature = self.key.sign(&self.rng, message.as_bytes());
        let signature = signature.as_ref().map(|s| s.as_ref().to_vec()).unwrap_or_default();
        format!("{message}.{}", URL_SAFE_NO_PAD.encode(signature))
    }
}
