use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::{Algorithm, TokenData, Validation};
use keygate_kernel::AppId;
use keygate_store::StoreError;
use moka::future::Cache;
use serde::de::DeserializeOwned;
use serde::Serialize;
use utoipa::ToSchema;
use zeroize::Zeroizing;

use crate::app_keys::sealer;
use crate::material::{self};
use crate::{
    plan, verify, AppKeys, KeyId, KeyRecord, KeyState, KeyStore, KeyringError, MasterKey,
    VerifyError,
};

#[derive(Debug, Clone)]
pub struct KeyringConfig {
    /// How long parsed keys are trusted before they are read again, so a rotation or
    /// revocation made by another process is seen within this time.
    pub cache_ttl: Duration,
    /// The least time between two reloads caused by an unknown `kid`, so random kids
    /// cannot turn every request into a database read.
    pub reload_interval: Duration,
}

impl Default for KeyringConfig {
    fn default() -> Self {
        Self { cache_ttl: Duration::from_secs(5), reload_interval: Duration::from_secs(1) }
    }
}

/// The outcome of [`Keyring::reseal`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reseal {
    /// Keys re-sealed by this run.
    pub resealed: usize,
    /// Keys that were already sealed with the current master key.
    pub already_current: usize,
    /// The id of the master key that seals every key now.
    pub master_key_id: String,
}

/// The outcome of a planned rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
pub struct Rotation {
    pub retired_key_id: KeyId,
    pub active_key_id: KeyId,
    pub next_key_id: KeyId,
}

/// The outcome of a revocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
pub struct Revocation {
    pub revoked_key_id: KeyId,
    pub previous_status: KeyState,
    pub active_key_id: KeyId,
    pub next_key_id: KeyId,
}

/// How often a plan is retried when another writer changed the keys in between.
const PLAN_ATTEMPTS: usize = 3;

/// The signing keys of every app, with a cache of parsed keys in front of the store.
#[derive(Debug)]
pub struct Keyring {
    store: Arc<KeyStore>,
    master: MasterKey,
    /// Master keys still accepted for opening, during a master-key rotation.
    previous: Vec<MasterKey>,
    config: KeyringConfig,
    /// Parsed keys, each for `cache_ttl`; concurrent misses of one app wait for one load.
    cache: Cache<AppId, Arc<AppKeys>>,
    /// The app of each key id looked up so far. A key never changes app.
    owners: Cache<KeyId, AppId>,
}

/// Apps whose keys [`Keyring::warm`] reads in one query.
pub const WARM_PAGE: i64 = 500;

/// The most key owners remembered.
const MAX_OWNERS: u64 = 100_000;

/// A cache TTL this long keeps keys until they change (the cache refuses longer ones).
// mutants: `*` mutated to `+` or `/` gives a shorter bound (days or minutes instead of a
// century), which only caps a cache_ttl configured longer than that: keys are then read
// again sooner, and every answer stays the same. No test waits that long.
const LONGEST_TTL: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

impl Keyring {
    pub fn new(store: Arc<KeyStore>, master: MasterKey, config: KeyringConfig) -> Self {
        let cache = Cache::builder()
            .time_to_live(config.cache_ttl.min(LONGEST_TTL))
            .support_invalidation_closures()
            .build();
        Self { store, master, previous: Vec::new(), config, cache, owners: Cache::new(MAX_OWNERS) }
    }

    /// Also accepts `previous` master keys for opening private keys sealed with them,
    /// during a master-key rotation. New keys are always sealed with the current one.
    pub fn with_previous_master_keys(mut self, previous: Vec<MasterKey>) -> Self {
        self.previous = previous;
        self
    }

    /// Re-seals, under the current master key, every private key of `apps` that a previous
    /// master key sealed; `progress` hears (done, to do) after each. Each key changes in
    /// one compare-and-swap on the id of the key that sealed it, so concurrent runs are
    /// harmless. A key sealed with a master key that is neither current nor previous is an
    /// error, and nothing after it is touched.
    pub async fn reseal(
        &self,
        apps: &[AppId],
        progress: &dyn Fn(usize, usize),
    ) -> Result<Reseal, KeyringError> {
        let mut stale = Vec::new();
        let mut current = 0;
        for app_id in apps {
            for key in self.store.list_keys(*app_id).await? {
                if key.master_key_id == self.master.id() {
                    current += 1;
                } else {
                    stale.push(key);
                }
            }
        }
        let mut resealed = 0;
        for (done, key) in stale.iter().enumerate() {
            let pkcs8 =
                sealer(key, &self.master, &self.previous)?.open(key.key_id, &key.sealed_private)?;
            let sealed = self.master.seal(key.key_id, &pkcs8)?;
            if self.store.reseal(key.key_id, &key.master_key_id, &sealed, self.master.id()).await? {
                resealed += 1;
            }
            progress(done + 1, stale.len());
        }
        Ok(Reseal {
            resealed,
            already_current: current,
            master_key_id: self.master.id().to_owned(),
        })
    }

    /// Seals a secret under the current master key; returns it with that key's id.
    pub fn seal_secret(
        &self,
        context: &str,
        plaintext: &[u8],
    ) -> Result<(Vec<u8>, String), KeyringError> {
        Ok((self.master.seal_secret(context, plaintext)?, self.master.id().to_owned()))
    }

    /// Opens a secret sealed by [`Self::seal_secret`] under the master key `master_key_id`,
    /// the current one or a previous one still accepted.
    pub fn open_secret(
        &self,
        context: &str,
        master_key_id: &str,
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, KeyringError> {
        let master = std::iter::once(&self.master)
            .chain(&self.previous)
            .find(|m| m.id() == master_key_id)
            .ok_or_else(|| {
                KeyringError::Material(format!(
                    "the secret of {context} is sealed with master key {master_key_id}, \
                     which is neither the current one ({}) nor a previous one",
                    self.master.id()
                ))
            })?;
        master.open_secret(context, sealed)
    }

    pub fn master(&self) -> &MasterKey {
        &self.master
    }

    /// The first two keys of a new app: an active one and a published next one.
    pub async fn create_app_keys(
        &self,
        app_id: AppId,
        now: i64,
    ) -> Result<Arc<AppKeys>, KeyringError> {
        let active = material::generate(app_id, KeyState::Active, &self.master, now)?;
        let next = material::generate(app_id, KeyState::Next, &self.master, now)?;
        self.store
            .apply(app_id, &[plan::KeyChange::Insert(active), plan::KeyChange::Insert(next)])
            .await?;
        self.reload(app_id).await
    }

    /// Planned rotation: next becomes active, active retires, a new next is published.
    pub async fn rotate(&self, app_id: AppId, now: i64) -> Result<Rotation, KeyringError> {
        self.with_plan(app_id, now, |keys, fresh| {
            let changes = plan::rotation(keys, fresh, now)?;
            let ids = |i: usize| match &changes[i] {
                plan::KeyChange::Transition { key_id, .. } => *key_id,
                plan::KeyChange::Insert(key) => key.key_id,
            };
            let outcome =
                Rotation { retired_key_id: ids(0), active_key_id: ids(1), next_key_id: ids(2) };
            Ok((changes, outcome))
        })
        .await
    }

    /// Rotates only when [`plan::rotation_due`] says so.
    pub async fn rotate_if_due(
        &self,
        app_id: AppId,
        rotation_period: i64,
        min_published: i64,
        now: i64,
    ) -> Result<Option<Rotation>, KeyringError> {
        let keys = self.store.list_keys(app_id).await?;
        if !plan::rotation_due(&keys, rotation_period, min_published, now) {
            return Ok(None);
        }
        match self.rotate(app_id, now).await {
            Ok(rotation) => Ok(Some(rotation)),
            // Someone else rotated in between: that rotation counts.
            Err(KeyringError::Store(StoreError::Conflict(_))) => Ok(None),
            Err(other) => Err(other),
        }
    }

    /// Revokes a key at once. Revoking the active key promotes the published next key.
    pub async fn revoke(
        &self,
        app_id: AppId,
        key_id: KeyId,
        now: i64,
    ) -> Result<Revocation, KeyringError> {
        self.with_plan(app_id, now, |keys, fresh| {
            let previous_status = keys
                .iter()
                .find(|k| k.key_id == key_id)
                .map(|k| k.state)
                .ok_or(KeyringError::KeyNotFound(key_id))?;
            let changes = plan::revocation(keys, key_id, fresh, now)?;
            let mut after = keys.to_vec();
            plan::apply(&mut after, &changes)?;
            let find = |state| {
                after
                    .iter()
                    .find(|k| k.state == state)
                    .map(|k| k.key_id)
                    .ok_or(KeyringError::Missing(state))
            };
            let outcome = Revocation {
                revoked_key_id: key_id,
                previous_status,
                active_key_id: find(KeyState::Active)?,
                next_key_id: find(KeyState::Next)?,
            };
            Ok((changes, outcome))
        })
        .await
    }

    /// Reads the keys, plans with a freshly generated next key, and applies; retried when
    /// a concurrent writer changed the keys first.
    async fn with_plan<T>(
        &self,
        app_id: AppId,
        now: i64,
        make: impl Fn(&[KeyRecord], KeyRecord) -> Result<(Vec<plan::KeyChange>, T), KeyringError>,
    ) -> Result<T, KeyringError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let keys = self.store.list_keys(app_id).await?;
            let fresh = material::generate(app_id, KeyState::Next, &self.master, now)?;
            let (changes, outcome) = make(&keys, fresh)?;
            match self.store.apply(app_id, &changes).await {
                Ok(()) => {
                    self.cache.invalidate(&app_id).await;
                    return Ok(outcome);
                }
                // mutants: a guard of `true`, `<=` for `<`, or `*=` for `+=` above (the count
                // stays 0) only allow more attempts: a plan conflicts only when another
                // writer's plan applied, so the retries still end, with the same keys; the
                // bound only stops a writer starved by endless contention, which no test
                // can produce. Too few attempts are caught (a concurrent rotation fails).
                Err(StoreError::Conflict(_)) if attempt < PLAN_ATTEMPTS => continue,
                Err(other) => return Err(other.into()),
            }
        }
    }

    /// Deletes keys retired before `retired_before`, once no token they signed can still be
    /// valid. Returns how many.
    pub async fn purge_retired(
        &self,
        app_id: AppId,
        retired_before: i64,
    ) -> Result<u64, KeyringError> {
        let deleted = self.store.delete_retired(app_id, retired_before).await?;
        // mutants: `>=` for `>` only drops the cache also when nothing was deleted: the
        // keys are read again, the same.
        if deleted > 0 {
            self.cache.invalidate(&app_id).await;
        }
        Ok(deleted)
    }

    /// Every key of the app as stored, revoked ones included.
    pub async fn list(&self, app_id: AppId) -> Result<Vec<KeyRecord>, KeyringError> {
        Ok(self.store.list_keys(app_id).await?)
    }

    /// The app's parsed keys, from the cache when fresh enough. Concurrent calls for an app
    /// that is not cached share one read of the store; an app without keys is not cached.
    pub async fn keys(&self, app_id: AppId) -> Result<Arc<AppKeys>, KeyringError> {
        let load = async {
            let records = self.store.list_keys(app_id).await?;
            Ok::<_, KeyringError>(Arc::new(AppKeys::load(&records, &self.master, &self.previous)?))
        };
        let keys = self.cache.try_get_with(app_id, load).await.map_err(Arc::unwrap_or_clone)?;
        if keys.verifiers.is_empty() {
            self.cache.invalidate(&app_id).await;
        }
        Ok(keys)
    }

    /// The app's keys read again from the store, whatever the cache holds. A failed read
    /// leaves the cached keys in place: a token with an unknown `kid`, sent while the
    /// database is down, must not evict the keys that still verify.
    async fn reload(&self, app_id: AppId) -> Result<Arc<AppKeys>, KeyringError> {
        let records = self.store.list_keys(app_id).await?;
        let keys = Arc::new(AppKeys::load(&records, &self.master, &self.previous)?);
        if keys.verifiers.is_empty() {
            self.cache.invalidate(&app_id).await;
        } else {
            self.cache.insert(app_id, keys.clone()).await;
        }
        Ok(keys)
    }

    /// Drops the cached keys of every app.
    pub fn forget_all(&self) {
        self.cache.invalidate_all();
    }

    /// Reads every app's keys, `apps_per_query` apps a query ([`WARM_PAGE`] at start), and
    /// caches them, so the first request of each app after a start finds them parsed;
    /// returns how many apps. An app whose keys do not load is left out (its first request
    /// reports why): the second number counts them.
    pub async fn warm(&self, apps_per_query: i64) -> Result<(usize, usize), KeyringError> {
        let (mut warmed, mut failed, mut after) = (0, 0, None);
        loop {
            let records = self.store.list_keys_page(after, apps_per_query.max(1)).await?;
            let Some(last) = records.last() else { return Ok((warmed, failed)) };
            after = Some(last.app_id);
            for app_keys in records.chunk_by(|a, b| a.app_id == b.app_id) {
                let app_id = app_keys[0].app_id;
                match AppKeys::load(app_keys, &self.master, &self.previous) {
                    Ok(keys) if !keys.verifiers.is_empty() => {
                        self.cache.insert(app_id, Arc::new(keys)).await;
                        warmed += 1;
                    }
                    Ok(_) => {}
                    Err(_) => failed += 1,
                }
            }
        }
    }

    /// Drops the cached keys of an app, after a change.
    pub fn forget(&self, app_id: AppId) {
        // Fails only if the cache was built without invalidation closures: then forget all.
        if self.cache.invalidate_entries_if(move |id, _| *id == app_id).is_err() {
            self.cache.invalidate_all();
        }
    }

    /// The app whose key the token names in its `kid`, if the key exists. The header is
    /// checked as by [`Self::verify`], and nothing is verified yet: the caller then
    /// verifies the token as that app's. An unknown `kid` costs one indexed read.
    pub async fn owner_of_token(&self, token: &str) -> Result<Option<AppId>, VerifyError> {
        let kid = verify::inspect(token)?;
        // Cheap, and no database read for a token that cannot verify anyway.
        verify::check_signature(token)?;
        if let Some(app_id) = self.owners.get(&kid).await {
            return Ok(Some(app_id));
        }
        let owner = self.store.owner_of(kid).await.map_err(KeyringError::Store)?;
        if let Some(app_id) = owner {
            self.owners.insert(kid, app_id).await;
        }
        Ok(owner)
    }

    /// Verifies a token of `app_id`: ES256 only, a `kid` of this app that is not revoked,
    /// no key-bearing headers, a canonical low-S signature, and the claims checks of
    /// `validation`. A `kid` not in the cache reloads the app's keys once before the token
    /// is refused.
    pub async fn verify<T: DeserializeOwned>(
        &self,
        app_id: AppId,
        token: &str,
        validation: &Validation,
    ) -> Result<TokenData<T>, VerifyError> {
        let kid = verify::inspect(token)?;
        verify::check_signature(token)?;
        let mut keys = self.keys(app_id).await?;
        if !keys.verifiers.contains_key(&kid)
            && keys.loaded_at.elapsed() >= self.config.reload_interval
        {
            keys = self.reload(app_id).await?;
        }
        let key = keys.verifiers.get(&kid).ok_or(VerifyError::UnknownKey)?;
        if validation.algorithms != [Algorithm::ES256] {
            return Err(VerifyError::Header("validation must pin ES256"));
        }
        Ok(jsonwebtoken::decode::<T>(token, key, validation)?)
    }

    /// The header checks of [`Self::verify`], on the cached keys only (ES256, a `kid` of
    /// this app that is not revoked, no key-bearing headers, a signature in canonical
    /// form), then the claims decoded into `T`, with no signature verification and no
    /// claims validation: the caller checks issuer and lifetime.
    ///
    /// Such claims are not authenticated. The one use is a caller that then matches the
    /// token's exact bytes against a digest of a token keygate issued and stored (the renew
    /// of a session's current refresh token): a match proves the token is one keygate
    /// signed, so the ECDSA verification would add nothing. Anything that does not match
    /// must go through [`Self::verify`].
    pub async fn decode_unverified<T: DeserializeOwned>(
        &self,
        app_id: AppId,
        token: &str,
    ) -> Result<T, VerifyError> {
        let kid = verify::inspect(token)?;
        verify::check_signature(token)?;
        let cached = self.cache.get(&app_id).await;
        cached.filter(|keys| keys.verifiers.contains_key(&kid)).ok_or(VerifyError::UnknownKey)?;
        Ok(jsonwebtoken::dangerous::insecure_decode::<T>(token)?.claims)
    }
}

/// The validation keygate applies to its own tokens: ES256, no leeway, `exp` and `nbf`
/// required and checked. Callers add audience and issuer checks as they need.
pub fn strict_validation() -> Validation {
    let mut validation = Validation::new(Algorithm::ES256);
    validation.leeway = 0;
    validation.validate_nbf = true;
    validation.set_required_spec_claims(&["exp", "nbf", "iat"]);
    validation.validate_aud = false;
    validation
}
