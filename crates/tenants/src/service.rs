use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use moka::future::Cache;

use crate::secret::verify_secret;
use crate::settings::{check_text, MAX_NAME_LEN};
use crate::verified::{Subject, VerifiedCache};
use crate::{
    hash_secret, App, AppId, AppKey, AppKeyHashes, AppRecord, AppSettings, AppStore, FieldError,
    RootKey, SettingsPatch, StoreError, TenantError,
};

const ROOT_KEY_SETTING: &str = "root_key_hash";

/// The longest grace during which a rotated-away app key keeps working.
pub const MAX_APP_KEY_GRACE: i64 = 7 * 24 * 3600;

#[derive(Debug, Clone)]
pub struct TenantsConfig {
    /// How long an app read from the store is trusted before it is read again, so changes
    /// made by another process (the CLI, another gateway) are seen within this time.
    pub cache_ttl: Duration,
}

impl Default for TenantsConfig {
    fn default() -> Self {
        Self { cache_ttl: Duration::from_secs(5) }
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
    argon2_runs: AtomicU64,
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
            argon2_runs: AtomicU64::new(0),
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

    /// App-key and root-key checks answered from the verified cache (hits), and those that
    /// ran argon2 (misses), since this process started.
    pub fn key_cache_counts(&self) -> (u64, u64) {
        (self.key_cache_hits.load(Ordering::Relaxed), self.argon2_runs())
    }

    /// The app, from the cache when it is fresh enough.
    pub async fn app(&self, app_id: AppId) -> Result<Option<Arc<AppRecord>>, StoreError> {
        // An unknown app is an error to the cache, which keeps none.
        let record = self.store.get_app(app_id);
        let read = async { record.await?.map(Arc::new).ok_or(StoreError::NotFound) };
        absent_as_none(self.apps.try_get_with(app_id, read).await)
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
        self.check(Subject::App(app_id), presented, &accepted, admit).await.map(|()| record)
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
        self.check(Subject::Root, presented, &[&hash], admit).await
    }

    async fn root_hash(&self) -> Result<Option<Arc<str>>, StoreError> {
        let hash = self.store.get_setting(ROOT_KEY_SETTING);
        let read = async { hash.await?.map(Arc::from).ok_or(StoreError::NotFound) };
        absent_as_none(self.root_hash.try_get_with((), read).await)
    }

    /// The verified cache first; on a miss, argon2 off the async threads, if `admit` still
    /// agrees once a slot is free.
    async fn check(
        &self,
        subject: Subject,
        presented: &str,
        accepted: &[&str],
        admit: &(dyn Fn() -> bool + Send + Sync),
    ) -> Result<(), AuthError> {
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
        if self.verified.check(subject, presented, accepted, verify).await? {
            self.key_cache_hits.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
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
                current: hash(app_key.expose()).await?,
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
            current: hash(app_key.expose()).await?,
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
                let supplied = zeroize::Zeroizing::new(supplied.to_owned());
                let existing_matches =
                    tokio::task::spawn_blocking(move || verify_secret(&supplied, &existing))
                        .await
                        .unwrap_or(false);
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
        let inserted =
            self.store.insert_setting(ROOT_KEY_SETTING, &hash(key.expose()).await?).await?;
        // Another process may have bootstrapped first; then its key stands and ours is void.
        Ok((inserted && supplied.is_none()).then_some(key))
    }

    /// Replaces the root key; the old one stops working at once in this process and within
    /// the cache TTL elsewhere.
    pub async fn rotate_root_key(&self) -> Result<RootKey, TenantError> {
        let key = RootKey::generate();
        self.store.put_setting(ROOT_KEY_SETTING, &hash(key.expose()).await?).await?;
        self.forget_root();
        Ok(key)
    }
}

async fn hash(secret: &str) -> Result<String, TenantError> {
    let secret = zeroize::Zeroizing::new(secret.to_owned());
    tokio::task::spawn_blocking(move || hash_secret(&secret))
        .await
        .map_err(|e| TenantError::Hash(e.to_string()))?
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
