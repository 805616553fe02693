//! Per-app ES256 signing keys.
//!
//! Keys are generated with `p256`, sealed at rest with AES-256-GCM under the master key,
//! and move through the states of [`KeyState`]. Every state change is first planned as a
//! list of [`KeyChange`]s by a pure function ([`plan`]), then applied by the store in one
//! transaction with compare-and-set on the old state. The [`Keyring`] caches parsed keys,
//! signs with `jsonwebtoken` (aws-lc backend) and verifies with the algorithm pinned.

mod app_keys;
mod error;
mod ids;
mod keyring;
mod master;
mod material;
pub mod plan;
mod record;
mod signer;
mod store;
mod verify;

pub use app_keys::{AppKeys, PublishedKey};
pub use error::{KeyringError, VerifyError};
pub use ids::KeyId;
pub use keyring::{
    strict_validation, Keyring, KeyringConfig, Reseal, Revocation, Rotation, WARM_PAGE,
};
pub use master::MasterKey;
pub use material::{seal_new, Jwk, Jwks};
pub use plan::KeyChange;
pub use record::{KeyRecord, KeyState};
pub use signer::{Signer, Typ};
pub use store::{key_store, KeyStore};
pub use verify::{check_signature, inspect, FORBIDDEN_HEADERS, MAX_TOKEN_LEN, SIGNATURE_LEN};

/// Re-exported so callers build validations and decode claims with the same version.
pub use jsonwebtoken;
