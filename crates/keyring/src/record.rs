use std::fmt;

use keygate_kernel::AppId;

pub use keygate_kernel::KeyState;

use crate::KeyId;

/// A signing key as stored: the public half in the clear, the private half sealed.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyRecord {
    pub key_id: KeyId,
    pub app_id: AppId,
    pub state: KeyState,
    /// SubjectPublicKeyInfo PEM.
    pub public_pem: String,
    /// AES-256-GCM nonce followed by the sealed PKCS#8 document.
    pub sealed_private: Vec<u8>,
    pub master_key_id: String,
    pub created_at: i64,
    pub activated_at: Option<i64>,
    pub retired_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

impl fmt::Debug for KeyRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRecord")
            .field("key_id", &self.key_id)
            .field("app_id", &self.app_id)
            .field("state", &self.state)
            .field("created_at", &self.created_at)
            .field("activated_at", &self.activated_at)
            .field("retired_at", &self.retired_at)
            .field("revoked_at", &self.revoked_at)
            .finish_non_exhaustive()
    }
}
