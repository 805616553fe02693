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
    /// One gate per presented secret (by digest) that is being checked right now: checks
    /// of the same secret take turns, so a burst of requests with a new key runs argon2
    /// once and the rest find the result in the cache.
    in_flight: Mutex<HashMap<[u8; 32], Arc<tokio::sync::Mutex<()>>>>,
}

/// The turn of one check of a presented secret; the next check of it starts when this
/// drops. Its gate leaves the map with the last check that holds or awaits it.
pub(crate) struct Turn<'a> {
    cache: &'a VerifiedCache,
    digest: [u8; 32],
    gate: Option<Arc<tokio::sync::Mutex<()>>>,
    held: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        // Under the map's lock, where every clone of a gate is made: a count of one left
        // means no other check holds or awaits this gate.
        let mut in_flight = lock(&self.cache.in_flight);
        self.held.take();
        self.gate.take();
        if in_flight.get(&self.digest).is_some_and(|gate| Arc::strong_count(gate) == 1) {
            in_flight.remove(&self.digest);
        }
    }
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
        Self { hmac_key, entries: Mutex::default(), in_flight: Mutex::default() }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Subject, Vec<Entry>>> {
        lock(&self.entries)
    }

    /// Waits until no other check of the secret of `digest` is running; the turn lasts
    /// until the returned value drops (also if the waiting request is cancelled).
    pub(crate) async fn turn(&self, digest: &[u8; 32]) -> Turn<'_> {
        let gate = lock(&self.in_flight).entry(*digest).or_default().clone();
        let mut turn = Turn { cache: self, digest: *digest, gate: Some(gate.clone()), held: None };
        turn.held = Some(gate.lock_owned().await);
        turn
    }

    #[cfg(test)]
    fn checks_in_flight(&self) -> usize {
        lock(&self.in_flight).len()
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

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
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

    use std::future::Future;

    #[tokio::test]
    async fn checks_of_one_secret_take_turns_and_leave_no_gate_behind() {
        use std::time::Duration;
        let cache = VerifiedCache::new();
        let (one, other) = (cache.digest("kg_one"), cache.digest("kg_other"));
        let first = cache.turn(&one).await;
        // Another secret is not held up.
        let elsewhere = tokio::time::timeout(Duration::from_millis(50), cache.turn(&other)).await;
        assert!(elsewhere.is_ok(), "a check of another secret waited");
        drop(elsewhere);
        // The same secret waits for the first turn; a waiter that gives up leaves no trace.
        let waited = tokio::time::timeout(Duration::from_millis(50), cache.turn(&one)).await;
        assert!(waited.is_err(), "a second check of one secret ran beside the first");
        assert_eq!(cache.checks_in_flight(), 1);
        let second = {
            let cache = &cache;
            let next = async move { cache.turn(&one).await };
            tokio::pin!(next);
            assert!(futures_poll_once(next.as_mut()).await.is_none(), "no turn while one is held");
            drop(first);
            next.await
        };
        assert_eq!(cache.checks_in_flight(), 1);
        drop(second);
        assert_eq!(cache.checks_in_flight(), 0, "the gate leaves with the last check");
    }

    /// Polls a future once: its output if it was ready.
    async fn futures_poll_once<F: Future + Unpin>(future: F) -> Option<F::Output> {
        let mut future = future;
        std::future::poll_fn(|cx| {
            std::task::Poll::Ready(match Future::poll(std::pin::Pin::new(&mut future), cx) {
                std::task::Poll::Ready(output) => Some(output),
                std::task::Poll::Pending => None,
            })
        })
        .await
    }
}
