use std::fmt;

use argon2::password_hash::{
    rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString,
};
use argon2::Argon2;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;
use zeroize::Zeroizing;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::TenantError;

/// HMAC-SHA-256 of the concatenated `parts` under `key`: the one HMAC of keygate (cache
/// digests of verified keys, master-key ids, webhook signatures).
pub fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    // HMAC takes keys of any length: `new_from_slice` cannot fail for it.
    #[allow(clippy::expect_used)]
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC accepts any key length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// A secret string. `Debug` never prints it, and its memory is wiped on drop.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Zeroizing<String>);

impl Secret {
    pub fn new(value: String) -> Self {
        Self(Zeroizing::new(value))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// `prefix` followed by 256 random bits in base64url.
    fn generate(prefix: &str) -> Self {
        let mut bytes = Zeroizing::new([0u8; 32]);
        OsRng.fill_bytes(bytes.as_mut());
        Self::new(format!("{prefix}{}", URL_SAFE_NO_PAD.encode(bytes.as_ref())))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

const APP_KEY_PREFIX: &str = "kg_";
const ROOT_KEY_PREFIX: &str = "kgr_";
/// base64url of 32 bytes, without padding.
const RANDOM_PART_LEN: usize = 43;

/// The secret an app's backend sends in `Authorization`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppKey(Secret);

impl AppKey {
    pub fn generate() -> Self {
        Self(Secret::generate(APP_KEY_PREFIX))
    }

    pub fn expose(&self) -> &str {
        self.0.expose()
    }

    /// Whether `presented` has the shape of an app key. Anything else is refused without
    /// running argon2.
    pub fn well_formed(presented: &str) -> bool {
        presented.len() == APP_KEY_PREFIX.len() + RANDOM_PART_LEN
            && presented.starts_with(APP_KEY_PREFIX)
            && presented[APP_KEY_PREFIX.len()..]
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    }
}

/// The platform admin's secret for the `/root` API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootKey(Secret);

pub const MIN_ROOT_KEY_LEN: usize = 32;
pub const MAX_ROOT_KEY_LEN: usize = 256;

impl RootKey {
    pub fn generate() -> Self {
        Self(Secret::generate(ROOT_KEY_PREFIX))
    }

    /// A root key chosen by the operator (`KEYGATE_ROOT_KEY`).
    pub fn from_operator(value: &str) -> Result<Self, String> {
        if !Self::well_formed(value) || value.len() < MIN_ROOT_KEY_LEN {
            return Err(format!(
                "the root key must be {MIN_ROOT_KEY_LEN} to {MAX_ROOT_KEY_LEN} printable ASCII characters without spaces"
            ));
        }
        Ok(Self(Secret::new(value.to_owned())))
    }

    pub fn expose(&self) -> &str {
        self.0.expose()
    }

    pub fn well_formed(presented: &str) -> bool {
        (1..=MAX_ROOT_KEY_LEN).contains(&presented.len())
            && presented.bytes().all(|b| b.is_ascii_graphic())
    }
}

/// Hashes a secret with argon2id (default parameters, random salt) into a PHC string.
pub fn hash_secret(secret: &str) -> Result<String, TenantError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(secret.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| TenantError::Hash(e.to_string()))
}

/// Whether `secret` matches the PHC string `hash`.
pub(crate) fn verify_secret(secret: &str, hash: &str) -> bool {
    match PasswordHash::new(hash) {
        Ok(parsed) => Argon2::default().verify_password(secret.as_bytes(), &parsed).is_ok(),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_keys_are_prefixed_and_carry_256_bits() {
        let key = AppKey::generate();
        assert!(key.expose().starts_with("kg_"));
        assert!(AppKey::well_formed(key.expose()));
        let raw = URL_SAFE_NO_PAD.decode(&key.expose()[3..]).unwrap();
        assert_eq!(raw.len(), 32);
        assert_ne!(AppKey::generate(), key);
    }

    #[test]
    fn debug_never_prints_the_secret() {
        let key = AppKey::generate();
        assert!(!format!("{key:?}").contains(&key.expose()[3..]));
    }

    #[test]
    fn hashes_are_argon2id_and_verify() {
        let key = AppKey::generate();
        let hash = hash_secret(key.expose()).unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(verify_secret(key.expose(), &hash));
        assert!(!verify_secret(AppKey::generate().expose(), &hash));
        assert!(!verify_secret(key.expose(), "not a hash"));
    }

    #[test]
    fn malformed_keys_are_spotted_without_hashing() {
        assert!(!AppKey::well_formed(""));
        assert!(!AppKey::well_formed(&"kg_".repeat(3000)));
        assert!(!AppKey::well_formed("kg_0123456789012345678901234567890123456789!!!"));
        assert!(!RootKey::well_formed(&"x".repeat(10_000)));
        assert!(RootKey::from_operator("short").is_err());
        assert!(RootKey::from_operator(&"r".repeat(40)).is_ok());
    }
}
