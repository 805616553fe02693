use std::fmt;

use argon2::password_hash::{
    rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString,
};
use argon2::Argon2;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;
use zeroize::Zeroizing;

use keygate_kernel::hmac_sha256;

use crate::TenantError;

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

/// The key of the keyed hash under which app keys and the root key are stored: 256 random
/// bits, kept in the database only sealed under the master key (the gateway loads it at
/// start). Its `Debug` prints nothing of it, and its memory is wiped on drop.
#[derive(Clone)]
pub struct KeyHashKey(Zeroizing<[u8; 32]>);

impl KeyHashKey {
    pub fn generate() -> Self {
        let mut bytes = Zeroizing::new([0u8; 32]);
        OsRng.fill_bytes(bytes.as_mut());
        Self(bytes)
    }

    /// The key from its 32 bytes; `None` for any other length.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let bytes: [u8; 32] = bytes.try_into().ok()?;
        Some(Self(Zeroizing::new(bytes)))
    }

    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }

    /// The stored form of `secret`, of the kind `label` (`app-key`, `root-key`):
    /// `hmac-sha256$` and the base64url HMAC-SHA-256 of `label`, a NUL and the secret.
    pub fn hash(&self, label: &str, secret: &str) -> String {
        let digest = self.digest(label, secret);
        format!("{KEYED_PREFIX}{}", URL_SAFE_NO_PAD.encode(digest))
    }

    pub(crate) fn digest(&self, label: &str, secret: &str) -> [u8; 32] {
        hmac_sha256(self.0.as_ref(), &[label.as_bytes(), b"\0", secret.as_bytes()])
    }
}

impl fmt::Debug for KeyHashKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyHashKey(<redacted>)")
    }
}

const KEYED_PREFIX: &str = "hmac-sha256$";

/// A stored key hash, by form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StoredHash<'a> {
    /// The keyed form: the 32-byte digest.
    Keyed([u8; 32]),
    /// An argon2id PHC string (apps and root keys made before the keyed form).
    Argon2(&'a str),
    /// Neither: matches nothing.
    Unknown,
}

impl<'a> StoredHash<'a> {
    pub(crate) fn of(stored: &'a str) -> Self {
        if let Some(encoded) = stored.strip_prefix(KEYED_PREFIX) {
            let decoded = URL_SAFE_NO_PAD.decode(encoded).ok();
            return match decoded.and_then(|d| <[u8; 32]>::try_from(d).ok()) {
                Some(digest) => Self::Keyed(digest),
                None => Self::Unknown,
            };
        }
        if stored.starts_with("$argon2") {
            Self::Argon2(stored)
        } else {
            Self::Unknown
        }
    }
}

/// Whether a stored hash is in the argon2id form (made before the keyed form).
pub fn is_argon2_hash(stored: &str) -> bool {
    matches!(StoredHash::of(stored), StoredHash::Argon2(_))
}

/// Hashes a secret with argon2id (default parameters, random salt) into a PHC string: the
/// form keys were stored in before the keyed form, still accepted (and upgraded when one
/// is presented). New keys are stored with [`KeyHashKey::hash`].
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
    fn keyed_hashes_depend_on_the_key_the_label_and_the_secret() {
        let (key, other) = (KeyHashKey::generate(), KeyHashKey::generate());
        let secret = AppKey::generate();
        let stored = key.hash("app-key", secret.expose());
        assert!(stored.starts_with("hmac-sha256$") && stored.len() == 12 + 43, "{stored}");
        assert_eq!(stored, key.hash("app-key", secret.expose()), "deterministic");
        assert_ne!(stored, other.hash("app-key", secret.expose()), "keyed");
        assert_ne!(stored, key.hash("root-key", secret.expose()), "labelled");
        assert_ne!(stored, key.hash("app-key", AppKey::generate().expose()));
        assert_eq!(
            StoredHash::of(&stored),
            StoredHash::Keyed(key.digest("app-key", secret.expose()))
        );
        assert!(!stored.contains(&secret.expose()[3..]));
        let argon2 = hash_secret(secret.expose()).unwrap();
        assert_eq!(StoredHash::of(&argon2), StoredHash::Argon2(&argon2));
        assert!(is_argon2_hash(&argon2) && !is_argon2_hash(&stored));
        for bad in ["", "hmac-sha256$", "hmac-sha256$short", "sha256$abc", "$argon"] {
            assert!(!matches!(StoredHash::of(bad), StoredHash::Keyed(_)), "{bad}");
        }
        assert!(!format!("{key:?}").contains(&format!("{:?}", key.expose())));
        assert!(KeyHashKey::from_bytes(&[1; 31]).is_none());
        assert_eq!(KeyHashKey::from_bytes(&[1; 32]).unwrap().expose(), &[1; 32]);
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
