//! The one keyed digest of keygate.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// HMAC-SHA-256 of the concatenated `parts` under `key`: the one HMAC of keygate (cache
/// digests of verified keys, master-key ids, webhook signatures, stored key hashes).
pub fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    // HMAC takes keys of any length: `new_from_slice` cannot fail for it.
    #[allow(clippy::expect_used)]
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC accepts any key length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}
