//! One app's keys, parsed: its signer, the keys it publishes, and their JWKS.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use aws_lc_rs::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::DecodingKey;
use serde::Serialize;
use utoipa::ToSchema;

use crate::material::{jwk, public_key_b64};
use crate::{Jwk, Jwks, KeyId, KeyRecord, KeyState, KeyringError, MasterKey};
use crate::{Signer, Typ};

/// A key as published to app owners.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PublishedKey {
    pub key_id: KeyId,
    /// base64 of the SubjectPublicKeyInfo PEM.
    pub public_key: String,
    #[schema(example = "ES256")]
    pub alg: &'static str,
    pub status: KeyState,
    pub created_at: i64,
    #[schema(required)]
    pub activated_at: Option<i64>,
    #[schema(required)]
    pub retired_at: Option<i64>,
}

/// Everything parsed from one app's keys.
pub struct AppKeys {
    pub(crate) loaded_at: Instant,
    signer: Option<Arc<Signer>>,
    pub(crate) verifiers: HashMap<KeyId, DecodingKey>,
    published: Vec<PublishedKey>,
    jwks: Jwks,
}

impl std::fmt::Debug for AppKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppKeys")
            .field("signer", &self.signer)
            .field("published", &self.published)
            .finish_non_exhaustive()
    }
}

impl AppKeys {
    pub fn signer(&self) -> Result<&Arc<Signer>, KeyringError> {
        self.signer.as_ref().ok_or(KeyringError::Missing(KeyState::Active))
    }

    /// The keys that verify tokens (next, active, retired), oldest first.
    pub fn published(&self) -> &[PublishedKey] {
        &self.published
    }

    pub fn jwks(&self) -> &Jwks {
        &self.jwks
    }

    pub(crate) fn load(
        keys: &[KeyRecord],
        master: &MasterKey,
        previous: &[MasterKey],
    ) -> Result<Self, KeyringError> {
        let mut signer = None;
        let mut verifiers = HashMap::new();
        let mut published = Vec::new();
        let mut jwks = Vec::new();
        for key in keys.iter().filter(|k| k.state.is_published()) {
            let jwk: Jwk = jwk(key.key_id, &key.public_pem)?;
            let decoding = DecodingKey::from_ec_components(&jwk.x, &jwk.y).map_err(|e| {
                KeyringError::Material(format!("public key of {}: {e}", key.key_id))
            })?;
            verifiers.insert(key.key_id, decoding);
            let public_key = public_key_b64(&key.public_pem);
            if key.state == KeyState::Active {
                let header = |typ: Typ| {
                    let header =
                        serde_json::json!({"alg": "ES256", "typ": typ.as_str(), "kid": key.key_id});
                    URL_SAFE_NO_PAD.encode(header.to_string())
                };
                signer = Some(Arc::new(Signer {
                    key_id: key.key_id,
                    public_key: public_key.clone(),
                    headers: Typ::ALL.map(header),
                    key_pair: unseal(key, master, previous)?,
                }));
            }
            published.push(PublishedKey {
                key_id: key.key_id,
                public_key,
                alg: "ES256",
                status: key.state,
                created_at: key.created_at,
                activated_at: key.activated_at,
                retired_at: key.retired_at,
            });
            jwks.push(jwk);
        }
        Ok(Self {
            loaded_at: Instant::now(),
            signer,
            verifiers,
            published,
            jwks: Jwks { keys: jwks },
        })
    }
}

/// The master key that sealed `key`: the current one, or one of the previous keys still
/// accepted during a master-key rotation.
pub(crate) fn sealer<'a>(
    key: &KeyRecord,
    master: &'a MasterKey,
    previous: &'a [MasterKey],
) -> Result<&'a MasterKey, KeyringError> {
    std::iter::once(master).chain(previous).find(|m| m.id() == key.master_key_id).ok_or_else(|| {
        KeyringError::WrongMasterKey {
            key_id: key.key_id,
            sealed_with: key.master_key_id.clone(),
            current: master.id().to_owned(),
        }
    })
}

fn unseal(
    key: &KeyRecord,
    master: &MasterKey,
    previous: &[MasterKey],
) -> Result<EcdsaKeyPair, KeyringError> {
    let pkcs8 = sealer(key, master, previous)?.open(key.key_id, &key.sealed_private)?;
    EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &pkcs8)
        .map_err(|e| KeyringError::Material(format!("private key of {}: {e}", key.key_id)))
}
