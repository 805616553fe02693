use std::fmt;

use aes_gcm::aead::{Aead, AeadCore, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use rand::rngs::OsRng;
use rand::RngCore;
use zeroize::Zeroizing;

use crate::{KeyId, KeyringError};

const NONCE_LEN: usize = 12;

/// The 256-bit key that seals every private signing key at rest.
pub struct MasterKey {
    key: Zeroizing<[u8; 32]>,
    id: String,
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MasterKey").field("id", &self.id).finish_non_exhaustive()
    }
}

impl MasterKey {
    pub fn generate() -> Self {
        let mut key = Zeroizing::new([0u8; 32]);
        OsRng.fill_bytes(key.as_mut());
        Self::from_bytes(key)
    }

    /// Standard base64 of exactly 32 bytes; surrounding whitespace is ignored.
    pub fn from_base64(encoded: &str) -> Result<Self, KeyringError> {
        let bytes = Zeroizing::new(
            STANDARD
                .decode(encoded.trim())
                .map_err(|_| KeyringError::MasterKey("not valid base64".into()))?,
        );
        let key: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
            KeyringError::MasterKey(format!("must decode to 32 bytes, got {}", bytes.len()))
        })?;
        Ok(Self::from_bytes(Zeroizing::new(key)))
    }

    fn from_bytes(key: Zeroizing<[u8; 32]>) -> Self {
        let tag = keygate_kernel::hmac_sha256(key.as_ref(), &[b"keygate master key id v1"]);
        Self { id: hex::encode(&tag[..8]), key }
    }

    pub fn to_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(STANDARD.encode(self.key.as_ref()))
    }

    /// A public fingerprint that names this key without revealing it.
    pub fn id(&self) -> &str {
        &self.id
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new(&Key::<Aes256Gcm>::from(*self.key))
    }

    /// Seals `plaintext`, bound to `key_id` (as associated data) so a sealed blob cannot be
    /// moved to another key's row.
    pub(crate) fn seal(&self, key_id: KeyId, plaintext: &[u8]) -> Result<Vec<u8>, KeyringError> {
        self.seal_with(&associated_data(key_id), plaintext)
    }

    /// Seals a secret other than a signing key, bound to `context` (for instance
    /// `webhook APP_ID`), which opening must name again.
    pub fn seal_secret(&self, context: &str, plaintext: &[u8]) -> Result<Vec<u8>, KeyringError> {
        self.seal_with(&secret_associated_data(context), plaintext)
    }

    /// The secret this master key sealed for `context`.
    pub fn open_secret(
        &self,
        context: &str,
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, KeyringError> {
        let fail =
            || KeyringError::Material(format!("the sealed secret of {context} does not open"));
        self.open_with(&secret_associated_data(context), sealed).ok_or_else(fail)
    }

    fn seal_with(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, KeyringError> {
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let sealed = self
            .cipher()
            .encrypt(&nonce, Payload { msg: plaintext, aad })
            .map_err(|_| KeyringError::Material("sealing failed".into()))?;
        let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// The plaintext this master key sealed for `key_id` (for a signing key, its PKCS#8
    /// document). Fails when the blob was sealed under another master key or key id, or was
    /// altered.
    pub fn open(&self, key_id: KeyId, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyringError> {
        self.open_with(&associated_data(key_id), sealed).ok_or(KeyringError::Unseal(key_id))
    }

    fn open_with(&self, aad: &[u8], sealed: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
        if sealed.len() <= NONCE_LEN {
            return None;
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().ok()?;
        self.cipher()
            .decrypt(&Nonce::from(nonce), Payload { msg: ciphertext, aad })
            .map(Zeroizing::new)
            .ok()
    }
}

fn associated_data(key_id: KeyId) -> Vec<u8> {
    format!("keygate signing key {key_id}").into_bytes()
}

fn secret_associated_data(context: &str) -> Vec<u8> {
    format!("keygate secret {context}").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_data_opens_only_with_the_same_key_and_key_id() {
        let master = MasterKey::generate();
        let kid = KeyId::new();
        let sealed = master.seal(kid, b"secret scalar").unwrap();
        assert!(!sealed.windows(13).any(|w| w == b"secret scalar"));
        assert_eq!(&*master.open(kid, &sealed).unwrap(), b"secret scalar");
        assert!(master.open(KeyId::new(), &sealed).is_err(), "bound to its key id");
        assert!(MasterKey::generate().open(kid, &sealed).is_err(), "bound to its master key");
        let mut tampered = sealed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(master.open(kid, &tampered).is_err());
    }

    #[test]
    fn a_sealed_secret_opens_only_in_its_context() {
        let master = MasterKey::generate();
        let sealed = master.seal_secret("webhook A", b"whsec").unwrap();
        assert_eq!(&*master.open_secret("webhook A", &sealed).unwrap(), b"whsec");
        assert!(master.open_secret("webhook B", &sealed).is_err());
        assert!(MasterKey::generate().open_secret("webhook A", &sealed).is_err());
        let kid = KeyId::new();
        assert!(master.open(kid, &master.seal_secret(&kid.to_string(), b"x").unwrap()).is_err());
    }

    #[test]
    fn base64_round_trip_and_clear_errors() {
        let master = MasterKey::generate();
        let again = MasterKey::from_base64(&master.to_base64()).unwrap();
        assert_eq!(again.id(), master.id());
        assert!(MasterKey::from_base64("c2hvcnQ=").unwrap_err().to_string().contains("32 bytes"));
        assert!(MasterKey::from_base64("***").is_err());
        assert!(!format!("{master:?}").contains(master.to_base64().as_str()));
    }
}
