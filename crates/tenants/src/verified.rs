//! A cache of secrets that already passed argon2, so each later request costs one HMAC and
//! a constant-time comparison instead of ~12 ms of argon2.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::AppId;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Subject {
    Root,
    App(AppId),
}

/// A verified secret, remembered only as a keyed digest, tied to the hash it matched: once
/// that hash is no longer accepted (the key rotated), the entry no longer counts.
struct Entry {
    hash: Arc<str>,
    digest: [u8; 32],
}

/// Room for a key and its predecessor during a rotation grace, with slack for a rotation
/// that happens while the old entries are still here.
const ENTRIES_PER_SUBJECT: usize = 4;

pub(crate) struct VerifiedCache {
    /// Random per process, so digests are useless outside it.
    hmac_key: Zeroizing<[u8; 32]>,
    entries: Mutex<HashMap<Subject, Vec<Entry>>>,
}

impl std::fmt::Debug for VerifiedCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifiedCache").finish_non_exhaustive()
    }
}

impl VerifiedCache {
    pub(crate) fn new() -> Self {
        let mut hmac_key = Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng.fill_bytes(hmac_key.as_mut());
        Self { hmac_key, entries: Mutex::new(HashMap::new()) }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Subject, Vec<Entry>>> {
        self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn digest(&self, secret: &str) -> [u8; 32] {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(self.hmac_key.as_ref())
            .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
        mac.update(secret.as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// Whether `digest` was verified against one of the `accepted` hashes.
    pub(crate) fn contains(&self, subject: Subject, digest: &[u8; 32], accepted: &[&str]) -> bool {
        let entries = self.lock();
        let Some(list) = entries.get(&subject) else { return false };
        let mut found = subtle::Choice::from(0);
        for entry in list.iter().filter(|e| accepted.contains(&&*e.hash)) {
            found |= entry.digest.ct_eq(digest);
        }
        found.into()
    }

    pub(crate) fn insert(&self, subject: Subject, hash: &str, digest: [u8; 32]) {
        let mut entries = self.lock();
        let list = entries.entry(subject).or_default();
        list.retain(|e| *e.hash != *hash);
        if list.len() >= ENTRIES_PER_SUBJECT {
            list.remove(0);
        }
        list.push(Entry { hash: Arc::from(hash), digest });
    }

    pub(crate) fn forget_all(&self) {
        self.lock().clear();
    }

    pub(crate) fn forget(&self, subject: Subject) {
        self.lock().remove(&subject);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_counts_only_while_its_hash_is_accepted() {
        let cache = VerifiedCache::new();
        let app = Subject::App(AppId::new());
        let digest = cache.digest("kg_secret");
        assert!(!cache.contains(app, &digest, &["h1"]));
        cache.insert(app, "h1", digest);
        assert!(cache.contains(app, &digest, &["h1"]));
        assert!(!cache.contains(app, &cache.digest("kg_other"), &["h1"]));
        assert!(!cache.contains(app, &digest, &["h2"]), "rotated away");
        assert!(!cache.contains(Subject::Root, &digest, &["h1"]), "scoped to its subject");
        cache.forget(app);
        assert!(!cache.contains(app, &digest, &["h1"]));
    }
}
