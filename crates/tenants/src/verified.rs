//! A cache of secrets that already passed argon2, so each later request costs one HMAC and
//! a constant-time comparison instead of ~12 ms of argon2.

use std::future::Future;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use moka::future::Cache;
use rand::RngCore;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::{hmac_sha256, AppId, AuthError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Subject {
    Root,
    App(AppId),
}

/// The keyed digest of a presented secret, compared in constant time.
#[derive(Clone, Copy)]
struct Digest([u8; 32]);

impl PartialEq for Digest {
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl Eq for Digest {}

impl Hash for Digest {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

pub(crate) struct VerifiedCache {
    /// Random per process, so digests are useless outside it.
    hmac_key: Zeroizing<[u8; 32]>,
    /// Each verified secret, by subject and digest, with the hash it matched: once that
    /// hash is no longer accepted (the key rotated), the entry no longer counts. Checks of
    /// a secret not yet here wait for one verification of it, so a burst of requests with
    /// a new key runs argon2 once and the rest share its result.
    entries: Cache<(Subject, Digest), Arc<str>>,
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
        Self { hmac_key, entries: Cache::builder().support_invalidation_closures().build() }
    }

    /// Whether `secret` matches one of the `accepted` hashes of `subject`, and which:
    /// `Ok((true, hash))` when that was known (or found by a concurrent check this one
    /// waited for), `Ok((false, hash))` when this check ran `verify`, which returns the
    /// accepted hash the secret matched.
    pub(crate) async fn check<F, Fut>(
        &self,
        subject: Subject,
        secret: &str,
        accepted: &[&str],
        verify: F,
    ) -> Result<(bool, Arc<str>), AuthError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<Arc<str>, AuthError>>,
    {
        let key = (subject, Digest(hmac_sha256(self.hmac_key.as_ref(), &[secret.as_bytes()])));
        loop {
            let ran = AtomicBool::new(false);
            let run = async {
                ran.store(true, Ordering::Relaxed);
                verify().await
            };
            let outcome = self.entries.try_get_with(key, run).await;
            // Whether a failure was `NotAdmitted`: `verify` fails with that or `Denied`.
            let outcome = outcome.map_err(|error| matches!(*error, AuthError::NotAdmitted));
            let ran = ran.load(Ordering::Relaxed);
            match outcome {
                Ok(hash) if accepted.contains(&&*hash) => return Ok((!ran, hash)),
                // Verified against a hash that has been rotated away since.
                Ok(_) if !ran => self.entries.invalidate(&key).await,
                // Another request's check of this secret failed: its admission, or the
                // hashes it accepted, may not be ours, so this one runs its own.
                Err(_) if !ran => {}
                Err(true) => return Err(AuthError::NotAdmitted),
                _ => return Err(AuthError::Denied),
            }
        }
    }

    pub(crate) fn forget_all(&self) {
        self.entries.invalidate_all();
    }

    pub(crate) fn forget(&self, subject: Subject) {
        // Fails only when invalidation closures are disabled, and `new` enables them.
        let _ = self.entries.invalidate_entries_if(move |(of, _), _| *of == subject);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    /// A check whose verification matches `kg_secret` to the hash `h1` only, after
    /// `hold` is released, counting its runs in `runs`.
    async fn check(
        cache: &VerifiedCache,
        subject: Subject,
        secret: &str,
        accepted: &[&str],
        runs: &AtomicUsize,
        hold: &tokio::sync::Semaphore,
    ) -> Result<bool, AuthError> {
        let verify = || async {
            runs.fetch_add(1, Ordering::SeqCst);
            drop(hold.acquire().await);
            let matched = secret == "kg_secret" && accepted.contains(&"h1");
            matched.then(|| Arc::from("h1")).ok_or(AuthError::Denied)
        };
        cache.check(subject, secret, accepted, verify).await.map(|(known, _)| known)
    }

    #[tokio::test]
    async fn an_entry_counts_only_while_its_hash_is_accepted() {
        let (cache, runs, open) = (VerifiedCache::new(), AtomicUsize::new(0), open());
        let app = Subject::App(AppId::new());
        let check =
            |subject, secret, accepted| check(&cache, subject, secret, accepted, &runs, &open);
        assert!(matches!(check(app, "kg_secret", &["h1"]).await, Ok(false)), "verified");
        assert!(matches!(check(app, "kg_secret", &["h1"]).await, Ok(true)), "then known");
        assert!(check(app, "kg_other", &["h1"]).await.is_err(), "another secret");
        assert!(check(app, "kg_secret", &["h2"]).await.is_err(), "rotated away");
        assert!(matches!(check(app, "kg_secret", &["h1"]).await, Ok(false)), "verified again");
        assert!(matches!(check(Subject::Root, "kg_secret", &["h1"]).await, Ok(false)), "scoped");
        cache.forget(app);
        assert!(matches!(check(app, "kg_secret", &["h1"]).await, Ok(false)), "forgotten");
        assert!(matches!(check(Subject::Root, "kg_secret", &["h1"]).await, Ok(true)), "kept");
        cache.forget_all();
        assert!(matches!(check(Subject::Root, "kg_secret", &["h1"]).await, Ok(false)), "all");
        assert_eq!(runs.load(Ordering::SeqCst), 7);
    }

    /// A gate that lets every verification through.
    fn open() -> tokio::sync::Semaphore {
        tokio::sync::Semaphore::new(tokio::sync::Semaphore::MAX_PERMITS)
    }

    #[tokio::test]
    async fn checks_of_one_secret_share_a_verification_but_not_a_failure() {
        let (cache, runs, open) = (VerifiedCache::new(), AtomicUsize::new(0), open());
        let app = Subject::App(AppId::new());
        let (other_runs, closed) = (AtomicUsize::new(0), tokio::sync::Semaphore::new(0));
        let first = check(&cache, app, "kg_secret", &["h1"], &runs, &closed);
        tokio::pin!(first);
        let short = Duration::from_millis(50);
        assert!(tokio::time::timeout(short, first.as_mut()).await.is_err(), "held");
        // Another secret is not held up.
        let elsewhere = check(&cache, app, "kg_other", &["h1"], &other_runs, &open);
        assert!(tokio::time::timeout(short, elsewhere).await.is_ok(), "another secret waited");
        // The same secret waits for the first check, and a waiter that gives up is no harm.
        let waited = check(&cache, app, "kg_secret", &["h1"], &runs, &open);
        assert!(
            tokio::time::timeout(short, waited).await.is_err(),
            "a second check ran beside the first"
        );
        let second = check(&cache, app, "kg_secret", &["h1"], &runs, &open);
        closed.add_permits(1);
        let (first, second) = tokio::join!(first, second);
        assert!(matches!((first, second), (Ok(false), Ok(true))));
        assert_eq!(runs.load(Ordering::SeqCst), 1, "one verification for three checks");

        // Checks of a wrong secret each run their own verification, as they take turns.
        let (runs, cache) = (AtomicUsize::new(0), VerifiedCache::new());
        let wrong = || check(&cache, app, "kg_wrong", &["h1"], &runs, &open);
        let (a, b, c) = tokio::join!(wrong(), wrong(), wrong());
        assert!(a.is_err() && b.is_err() && c.is_err());
        assert_eq!(runs.load(Ordering::SeqCst), 3);
    }
}
