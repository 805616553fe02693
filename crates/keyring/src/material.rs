//! Generating keys and exporting their public halves.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use keygate_kernel::AppId;
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::pkcs8::{DecodePublicKey, EncodePrivateKey, EncodePublicKey, LineEnding};
use rand::rngs::OsRng;
use serde::Serialize;
use utoipa::ToSchema;

use crate::{KeyId, KeyRecord, KeyState, KeyringError, MasterKey};

/// One public key in RFC 7517 form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Jwk {
    #[schema(example = "EC")]
    pub kty: &'static str,
    #[schema(example = "P-256")]
    pub crv: &'static str,
    /// base64url of the point's x coordinate.
    pub x: String,
    /// base64url of the point's y coordinate.
    pub y: String,
    pub kid: KeyId,
    #[schema(example = "ES256")]
    pub alg: &'static str,
    #[serde(rename = "use")]
    #[schema(example = "sig")]
    pub use_: &'static str,
}

/// An RFC 7517 key set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Jwks {
    pub keys: Vec<Jwk>,
}

/// Key ids increase in creation order within this process, even within one millisecond,
/// so listing keys by id lists them oldest first.
fn next_key_id() -> KeyId {
    static GENERATOR: std::sync::Mutex<ulid::Generator> =
        std::sync::Mutex::new(ulid::Generator::new());
    let mut generator = GENERATOR.lock().unwrap_or_else(|p| p.into_inner());
    generator.generate().map(KeyId::from).unwrap_or_else(|_| KeyId::new())
}

/// A new P-256 key pair for `app_id`, the private half sealed under `master`.
pub(crate) fn generate(
    app_id: AppId,
    state: KeyState,
    master: &MasterKey,
    now: i64,
) -> Result<KeyRecord, KeyringError> {
    seal_new(app_id, state, &p256::SecretKey::random(&mut OsRng), master, now)
}

/// A key record for an existing private key (imported from another system, or a test
/// that needs to know the private bytes), sealed under `master`, with a new key id.
pub fn seal_new(
    app_id: AppId,
    state: KeyState,
    secret: &p256::SecretKey,
    master: &MasterKey,
    now: i64,
) -> Result<KeyRecord, KeyringError> {
    let key_id = next_key_id();
    let pkcs8 = secret.to_pkcs8_der().map_err(|e| KeyringError::Material(e.to_string()))?;
    let public_pem = secret
        .public_key()
        .to_public_key_pem(LineEnding::LF)
        .map_err(|e| KeyringError::Material(e.to_string()))?;
    Ok(KeyRecord {
        key_id,
        app_id,
        state,
        public_pem,
        sealed_private: master.seal(key_id, pkcs8.as_bytes())?,
        master_key_id: master.id().to_owned(),
        created_at: now,
        activated_at: (state == KeyState::Active).then_some(now),
        retired_at: None,
        revoked_at: None,
    })
}

/// The affine coordinates of a PEM public key, base64url, as a JWK carries them.
pub(crate) fn jwk(key_id: KeyId, public_pem: &str) -> Result<Jwk, KeyringError> {
    let public = p256::PublicKey::from_public_key_pem(public_pem)
        .map_err(|e| KeyringError::Material(format!("public key of {key_id}: {e}")))?;
    let point = public.to_encoded_point(false);
    let (Some(x), Some(y)) = (point.x(), point.y()) else {
        return Err(KeyringError::Material(format!("public key of {key_id} is the identity")));
    };
    Ok(Jwk {
        kty: "EC",
        crv: "P-256",
        x: URL_SAFE_NO_PAD.encode(x),
        y: URL_SAFE_NO_PAD.encode(y),
        kid: key_id,
        alg: "ES256",
        use_: "sig",
    })
}

/// The public key as the API publishes it: base64 of the PEM text.
pub(crate) fn public_key_b64(public_pem: &str) -> String {
    STANDARD.encode(public_pem)
}
