use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use subtle::ConstantTimeEq;

use moka::future::Cache;

use crate::secret::{verify_secret, KeyHashKey, StoredHash};
use crate::verified::{Subject, VerifiedCache};
use crate::{
    App, AppId, AppKey, AppKeyHashes, AppRecord, AppSettings, AppStore, FieldError, RootKey,
    SettingsPatch, StoreError, TenantError,
};
use keygate_kernel::settings::{check_text, MAX_NAME_LEN};

const ROOT_KEY_SETTING: &str = "root_key_hash";
/// The labels of the keyed hash, so an app key's hash never matches as a root key's.
const APP_KEY_LABEL: &str = "app-key";
const ROOT_KEY_LABEL: &str = "root-key";

/// The longest grace during which a rotated-away app key keeps working.
pub const MAX_APP_KEY_GRACE: i64 = 7 * 24 * 3600;

#[derive(Debug, Clone)]
pub struct TenantsConfig {
    /// How long an app read from the store is trusted before it is read again, so changes
    /// made by another process (the CLI, another gateway) are seen within this time.
    pub cache_ttl: Duration,
    /// The key app keys and the root key are hashed under. Every process over one database
    /// must use the same one (the gateway keeps it there, sealed under the master key).
    pub key_hash_key: KeyHashKey,
}

impl TenantsConfig {
    /// A cache TTL of 5 s, and `key_hash_key`.
    pub fn new(key_hash_key: KeyHashKey) -> Self {
        Self { cache_ttl: Duration::from_secs(5), key_hash_key }
    }
}

/// Why a request was not authenticated.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Wrong or missing key, unknown app, malformed id: deliberately indistinguishable.
    #[error("invalid app key or id")]
    Denied,
    /// The caller's admission check refused the attempt before the key was hashed (the
    /// client is over its limit of failed attempts).
    #[error("too many failed attempts")]
    NotAdmitted,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A freshly rotated app key. The secret is shown once and never stored.
#[derive(Debug)]
pub struct RotatedAppKey {
    pub app_id: AppId,
    pub app_key: AppKey,
    /// Until when the previous key is still accepted, if a grace was asked for.
    pub previous_valid_until: Option<i64>,
}

/// Apps and their authentication, with an in-memory cache in front of the store. Requests
/// that miss the cache together wait for one read of the store.
pub struct Tenants {
    store: Arc<AppStore>,
    /// Only apps that exist: anyone can send unknown ids, and the cache must stay bounded
    /// by the number of apps.
    apps: Cache<AppId, Arc<AppRecord>>,
    root_hash: Cache<(), Arc<str>>,
    verified: VerifiedCache,
    key_hash_key: KeyHashKey,
    argon2_runs: AtomicU64,
    keyed_checks: AtomicU64,
    key_cache_hits: AtomicU64,
    /// argon2id takes ~19 MiB and ~12 ms a run: at most one run per core at a time, so a
    /// burst of cold or wrong keys can neither exhaust memory nor starve the workers.
    argon2_slots: tokio::sync::Semaphore,
}

impl std::fmt::Debug for Tenants {
    // The caches hold key hashes.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tenants").finish_non_exhaustive()
    }
}

impl Tenants {
    pub fn new(store: Arc<AppStore>, config: TenantsConfig) -> Self {
        let ttl = config.cache_ttl;
        Self {
            store,
            apps: Cache::builder().time_to_live(ttl).support_invalidation_closures().build(),
            root_hash: Cache::builder().time_to_live(ttl).build(),
            verified: VerifiedCache::new(),
            key_hash_key: config.key_hash_key,
            argon2_runs: AtomicU64::new(0),
            keyed_checks: AtomicU64::new(0),
            key_cache_hits: AtomicU64::new(0),
            argon2_slots: tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(2, usize::from),
            ),
        }
    }

    pub fn store(&self) -> &Arc<AppStore> {
        &self.store
    }

    /// How many argon2 verifications this process has run: a cache hit runs none.
    pub fn argon2_runs(&self) -> u64 {
        self.argon2_runs.load(Ordering::Relaxed)
    }

    /// App-key and root-key checks since this process started, by how they were answered:
    /// by the keyed hash, from the verified cache of argon2id hashes, by running argon2id.
    pub fn key_check_counts(&self) -> KeyChecks {
        KeyChecks {
            keyed: self.keyed_checks.load(Ordering::Relaxed),
            cached: self.key_cache_hits.load(Ordering::Relaxed),
            argon2: self.argon2_runs(),
        }
    }

    /// How many stored key hashes (apps' current ones, their previous ones still accepted
    /// at `now`, and the root key's) are in each form: `(argon2id, keyed)`. Argon2id ones
    /// are upgraded as their keys are next used.
    pub async fn key_hash_forms(&self, now: i64) -> Result<(u64, u64), StoreError> {
        let (argon2, keyed) = self.store.key_hash_forms(now).await?;
        let mut forms = (u64::try_from(argon2).unwrap_or(0), u64::try_from(keyed).unwrap_or(0));
        match self.store.get_setting(ROOT_KEY_SETTING).await?.as_deref().map(StoredHash::of) {
            Some(StoredHash::Argon2(_)) => forms.0 += 1,
            Some(StoredHash::Keyed(_)) => forms.1 += 1,
            _ => {}
        }
        Ok(forms)
    }

    /// The app, from the cache when it is fresh enough.
    pub async fn app(&self, app_id: AppId) -> Result<Option<Arc<AppRecord>>, StoreError> {
        // An unknown app is an error to the cache, which keeps none.
        let record = self.store.get_app(app_id);
        let read = async { record.await?.map(Arc::new).ok_or(StoreError::NotFound) };
        absent_as_none(self.apps.try_get_with(app_id, read).await)
    }

    /// Reads every app in one query and caches them, so the first request of each app
    /// after a start finds it; returns how many.
    pub async fn warm(&self) -> Result<usize, StoreError> {
        let records = self.store.list_apps().await?;
        let count = records.len();
        for record in records {
            self.apps.insert(record.app.app_id, Arc::new(record)).await;
        }
        Ok(count)
    }

    /// Drops every cached app and every remembered key check.
    pub fn forget_all(&self) {
        self.apps.invalidate_all();
        self.root_hash.invalidate_all();
        self.verified.forget_all();
    }

    /// Drops what this process knows of the root key, after it changed.
    pub fn forget_root(&self) {
        self.root_hash.invalidate_all();
        self.verified.forget(Subject::Root);
    }

    /// Drops what this process knows of an app, after it changed.
    pub fn forget(&self, app_id: AppId) {
        // Fails only when invalidation closures are disabled, and `new` enables them.
        let _ = self.apps.invalidate_entries_if(move |id, _| *id == app_id);
        self.verified.forget(Subject::App(app_id));
    }

    /// Checks an app key for the app named in the path. Every failure is the same `Denied`.
    pub async fn authenticate_app(
        &self,
        app_id: &str,
        presented: Option<&str>,
        now: i64,
    ) -> Result<Arc<AppRecord>, AuthError> {
        self.authenticate_app_admitted(app_id, presented, now, &|| true).await
    }

    /// Like [`Self::authenticate_app`], asking `admit` once more just before a key would be
    /// hashed (after waiting for an argon2 slot): a `false` answer is `NotAdmitted`, and
    /// nothing is hashed. A key found in the verified cache is never hashed, nor asked about.
    pub async fn authenticate_app_admitted(
        &self,
        app_id: &str,
        presented: Option<&str>,
        now: i64,
        admit: &(dyn Fn() -> bool + Send + Sync),
    ) -> Result<Arc<AppRecord>, AuthError> {
        let Ok(app_id) = app_id.parse::<AppId>() else { return Err(AuthError::Denied) };
        let Some(presented) = presented.filter(|k| AppKey::well_formed(k)) else {
            return Err(AuthError::Denied);
        };
        let Some(record) = self.app(app_id).await? else { return Err(AuthError::Denied) };
        let accepted = record.key.accepted(now);
        match self.check(Subject::App(app_id), presented, &accepted, admit).await? {
            Checked::Keyed | Checked::Cached => {}
            Checked::Argon2(old) => {
                // Upgrade the stored hash to the keyed form; the check stands either way.
                let new = self.key_hash_key.hash(APP_KEY_LABEL, presented);
                match self.store.replace_key_hash(app_id, &old, &new).await {
                    Ok(_) => self.forget(app_id),
                    Err(err) => tracing::warn!(%app_id, error = %err,
                        "the app key's hash could not be upgraded to the keyed form; it will \
                         be on a later check"),
                }
            }
        }
        Ok(record)
    }

    /// Checks the root key.
    pub async fn authenticate_root(&self, presented: Option<&str>) -> Result<(), AuthError> {
        self.authenticate_root_admitted(presented, &|| true).await
    }

    /// Like [`Self::authenticate_root`], with an admission check as for
    /// [`Self::authenticate_app_admitted`].
    pub async fn authenticate_root_admitted(
        &self,
        presented: Option<&str>,
        admit: &(dyn Fn() -> bool + Send + Sync),
    ) -> Result<(), AuthError> {
        let Some(presented) = presented.filter(|k| RootKey::well_formed(k)) else {
            return Err(AuthError::Denied);
        };
        let Some(hash) = self.root_hash().await? else { return Err(AuthError::Denied) };
        if let Checked::Argon2(old) = self.check(Subject::Root, presented, &[&hash], admit).await? {
            let new = self.key_hash_key.hash(ROOT_KEY_LABEL, presented);
            match self.store.replace_setting(ROOT_KEY_SETTING, &old, &new).await {
                Ok(_) => self.forget_root(),
                Err(err) => tracing::warn!(error = %err,
                    "the root key's hash could not be upgraded to the keyed form; it will be \
                     on a later check"),
            }
        }
        Ok(())
    }

    async fn root_hash(&self) -> Result<Option<Arc<str>>, StoreError> {
        let hash = self.store.get_setting(ROOT_KEY_SETTING);
        let read = async { hash.await?.map(Arc::from).ok_or(StoreError::NotFound) };
        absent_as_none(self.root_hash.try_get_with((), read).await)
    }

    /// Whether `presented` matches one of the `accepted` hashes of `subject`. Keyed hashes
    /// are compared first, in constant time (about a microsecond, no cache needed). Only an
    /// argon2id hash (stored before the keyed form) goes to the verified cache and, on a
    /// miss, to argon2 off the async threads, if `admit` still agrees once a slot is free;
    /// a match there is `Argon2` with that hash, for the caller to upgrade.
    async fn check(
        &self,
        subject: Subject,
        presented: &str,
        accepted: &[&str],
        admit: &(dyn Fn() -> bool + Send + Sync),
    ) -> Result<Checked, AuthError> {
        let digest = self.keyed_digest(subject, presented);
        let mut matched = subtle::Choice::from(0);
        let mut legacy = Vec::new();
        for hash in accepted {
            match StoredHash::of(hash) {
                StoredHash::Keyed(stored) => matched |= stored.ct_eq(&digest),
                StoredHash::Argon2(hash) => legacy.push(hash),
                StoredHash::Unknown => {}
            }
        }
        if bool::from(matched) {
            self.keyed_checks.fetch_add(1, Ordering::Relaxed);
            return Ok(Checked::Keyed);
        }
        if legacy.is_empty() {
            return Err(AuthError::Denied);
        }
        self.check_argon2(subject, presented, &legacy, admit).await
    }

    /// The keyed hash's digest of `presented` as a key of `subject` (an app key or the
    /// root key), to compare in constant time with stored digests.
    fn keyed_digest(&self, subject: Subject, presented: &str) -> [u8; 32] {
        let label = match subject {
            Subject::App(_) => APP_KEY_LABEL,
            Subject::Root => ROOT_KEY_LABEL,
        };
        self.key_hash_key.digest(label, presented)
    }

    async fn check_argon2(
        &self,
        subject: Subject,
        presented: &str,
        accepted: &[&str],
        admit: &(dyn Fn() -> bool + Send + Sync),
    ) -> Result<Checked, AuthError> {
        let verify = move || async move {
            let _slot = self.argon2_slots.acquire().await.map_err(|_| AuthError::Denied)?;
            // Guesses queued behind a slot are asked again: the client may have used up its
            // limit while they waited.
            if !admit() {
                return Err(AuthError::NotAdmitted);
            }
            self.argon2_runs.fetch_add(1, Ordering::Relaxed);
            let secret = zeroize::Zeroizing::new(presented.to_owned());
            let hashes: Vec<String> = accepted.iter().map(|h| (*h).to_owned()).collect();
            let matched = tokio::task::spawn_blocking(move || {
                hashes.into_iter().find(|hash| verify_secret(&secret, hash))
            });
            matched.await.ok().flatten().map(Arc::from).ok_or(AuthError::Denied)
        };
        let (known, hash) = self.verified.check(subject, presented, accepted, verify).await?;
        if known {
            self.key_cache_hits.fetch_add(1, Ordering::Relaxed);
            Ok(Checked::Cached)
        } else {
            Ok(Checked::Argon2(hash))
        }
    }

    /// Creates an app with a new app key. The key is returned once and stored only hashed.
    pub async fn create_app(
        &self,
        name: &str,
        patch: &SettingsPatch,
        now: i64,
    ) -> Result<(AppRecord, AppKey), TenantError> {
        let name = name.trim();
        let mut errors = Vec::new();
        check_text(&mut errors, "name", name, MAX_NAME_LEN);
        // Issuer and audience default to the name; a bad name must not also be reported
        // as a bad issuer or audience the caller never sent.
        let base = AppSettings::defaults_for(if errors.is_empty() { name } else { "app" });
        let settings = match patch.apply(&base) {
            Ok(settings) if errors.is_empty() => settings,
            Ok(_) => return Err(TenantError::Invalid(errors)),
            Err(more) => {
                errors.extend(more.into_iter().filter(|e| e.field != "name"));
                return Err(TenantError::Invalid(errors));
            }
        };
        let app_key = AppKey::generate();
        let record = AppRecord {
            app: App {
                app_id: AppId::new(),
                name: name.to_owned(),
                settings,
                created_at: now,
                updated_at: now,
            },
            key: AppKeyHashes {
                current: self.key_hash_key.hash(APP_KEY_LABEL, app_key.expose()),
                previous: None,
                previous_expires_at: None,
            },
        };
        self.store.insert_app(&record).await.map_err(|e| name_taken(e, name))?;
        Ok((record, app_key))
    }

    pub async fn update_app(
        &self,
        app_id: AppId,
        patch: &SettingsPatch,
        now: i64,
    ) -> Result<AppRecord, TenantError> {
        let mut record = self.store.get_app(app_id).await?.ok_or(TenantError::NotFound)?;
        record.app.settings = patch.apply(&record.app.settings).map_err(TenantError::Invalid)?;
        if let Some(name) = &patch.name {
            record.app.name = name.trim().to_owned();
        }
        record.app.updated_at = now;
        self.store.update_app(&record.app).await.map_err(|e| match e {
            StoreError::NotFound => TenantError::NotFound,
            other => name_taken(other, &record.app.name),
        })?;
        self.forget(app_id);
        Ok(record)
    }

    pub async fn delete_app(&self, app_id: AppId) -> Result<(), TenantError> {
        let deleted = self.store.delete_app(app_id).await?;
        self.forget(app_id);
        deleted.then_some(()).ok_or(TenantError::NotFound)
    }

    pub async fn list_apps(&self) -> Result<Vec<App>, StoreError> {
        Ok(self.store.list_apps().await?.into_iter().map(|r| r.app).collect())
    }

    /// An app by id, or by its unique name (for the CLI).
    pub async fn find(&self, id_or_name: &str) -> Result<AppRecord, TenantError> {
        let by_id = match id_or_name.parse::<AppId>() {
            Ok(id) => self.store.get_app(id).await?,
            Err(_) => None,
        };
        match by_id {
            Some(record) => Ok(record),
            None => self.store.find_app_by_name(id_or_name).await?.ok_or(TenantError::NotFound),
        }
    }

    /// Replaces the app key. With `grace` > 0 the old key keeps working that many seconds.
    pub async fn rotate_app_key(
        &self,
        app_id: AppId,
        grace: i64,
        now: i64,
    ) -> Result<RotatedAppKey, TenantError> {
        if !(0..=MAX_APP_KEY_GRACE).contains(&grace) {
            return Err(TenantError::Invalid(vec![FieldError::new(
                "grace",
                format!("must be between 0 and {MAX_APP_KEY_GRACE} seconds, got {grace}"),
            )]));
        }
        let record = self.store.get_app(app_id).await?.ok_or(TenantError::NotFound)?;
        let app_key = AppKey::generate();
        let previous_valid_until = (grace > 0).then_some(now + grace);
        let hashes = AppKeyHashes {
            current: self.key_hash_key.hash(APP_KEY_LABEL, app_key.expose()),
            previous: previous_valid_until.map(|_| record.key.current.clone()),
            previous_expires_at: previous_valid_until,
        };
        self.store.set_app_key(app_id, &hashes, now).await.map_err(|e| match e {
            StoreError::NotFound => TenantError::NotFound,
            other => TenantError::Store(other),
        })?;
        self.forget(app_id);
        Ok(RotatedAppKey { app_id, app_key, previous_valid_until })
    }

    /// Makes sure a root key exists. Returns the key when this call created it, so that
    /// the caller can show it once. `supplied` (the operator's `KEYGATE_ROOT_KEY`) is used
    /// instead of a random key; it is ignored, with a warning, once a root key exists.
    pub async fn ensure_root_key(
        &self,
        supplied: Option<&str>,
    ) -> Result<Option<RootKey>, TenantError> {
        if let Some(existing) = self.store.get_setting(ROOT_KEY_SETTING).await? {
            if let Some(supplied) = supplied {
                let existing_matches = match StoredHash::of(&existing) {
                    StoredHash::Keyed(stored) => {
                        stored.ct_eq(&self.keyed_digest(Subject::Root, supplied)).into()
                    }
                    StoredHash::Argon2(_) => {
                        let supplied = zeroize::Zeroizing::new(supplied.to_owned());
                        tokio::task::spawn_blocking(move || verify_secret(&supplied, &existing))
                            .await
                            .unwrap_or(false)
                    }
                    StoredHash::Unknown => false,
                };
                if !existing_matches {
                    tracing::warn!(
                        "KEYGATE_ROOT_KEY differs from the root key in the database and is \
                         ignored; use `keygate root-key rotate` to change the root key"
                    );
                }
            }
            return Ok(None);
        }
        let key = match supplied {
            Some(value) => RootKey::from_operator(value)
                .map_err(|m| TenantError::Invalid(vec![FieldError::new("KEYGATE_ROOT_KEY", m)]))?,
            None => RootKey::generate(),
        };
        let hash = self.key_hash_key.hash(ROOT_KEY_LABEL, key.expose());
        let inserted = self.store.insert_setting(ROOT_KEY_SETTING, &hash).await?;
        // Another process may have bootstrapped first; then its key stands and ours is void.
        Ok((inserted && supplied.is_none()).then_some(key))
    }

    /// Replaces the root key; the old one stops working at once in this process and within
    /// the cache TTL elsewhere.
    pub async fn rotate_root_key(&self) -> Result<RootKey, TenantError> {
        let key = RootKey::generate();
        let hash = self.key_hash_key.hash(ROOT_KEY_LABEL, key.expose());
        self.store.put_setting(ROOT_KEY_SETTING, &hash).await?;
        self.forget_root();
        Ok(key)
    }
}

/// How a key check passed.
enum Checked {
    /// By its keyed hash.
    Keyed,
    /// By an argon2id hash this process had verified it against before.
    Cached,
    /// By running argon2id against this stored hash, which the caller upgrades.
    Argon2(Arc<str>),
}

/// App-key and root-key checks, by how they were answered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyChecks {
    /// By the keyed hash (HMAC-SHA-256).
    pub keyed: u64,
    /// From the verified cache of argon2id hashes.
    pub cached: u64,
    /// By running argon2id.
    pub argon2: u64,
}

fn name_taken(err: StoreError, name: &str) -> TenantError {
    match err {
        StoreError::Conflict(_) => TenantError::Invalid(vec![FieldError::new(
            "name",
            format!("an app named {name:?} already exists"),
        )]),
        other => TenantError::Store(other),
    }
}

/// A cached read whose `NotFound` means "absent" (and so was not cached).
fn absent_as_none<T>(read: Result<T, Arc<StoreError>>) -> Result<Option<T>, StoreError> {
    match read.map_err(Arc::unwrap_or_clone) {
        Err(StoreError::NotFound) => Ok(None),
        other => other.map(Some),
    }
}
