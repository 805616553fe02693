//! Apps (tenants) and the secrets that authenticate them.
//!
//! This is the base domain crate of keygate: the app model with its validated settings, and
//! the app-key and root-key checks (a keyed hash, HMAC-SHA-256 under a key the gateway keeps
//! sealed; argon2id hashes of older keys are still accepted and upgraded on use). It stores through `keygate_store`. The other domain
//! crates (`keyring`, `sessions`) build on it.

mod error;
pub mod events;
mod model;
mod secret;
mod service;
mod store;
mod verified;

pub use error::{StoreError, TenantError};
pub use keygate_kernel::{
    hmac_sha256, AccessTokenProfile, App, AppId, AppSettings, DpopMode, FieldError, OnReuse,
    ParseIdError, SettingsPatch,
};
pub use model::{AppKeyHashes, AppRecord};
pub use secret::{hash_secret, is_argon2_hash, AppKey, KeyHashKey, RootKey, Secret};
pub use service::{AuthError, KeyChecks, RotatedAppKey, Tenants, TenantsConfig};
pub use store::{app_store, AppStore};
