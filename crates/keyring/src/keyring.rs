use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, TokenData, Validation};
use keygate_kernel::AppId;
use keygate_store::StoreError;
use moka::future::Cache;
use serde::de::DeserializeOwned;
use serde::Serialize;
use utoipa::ToSchema;
use zeroize::Zeroizing;

use crate::material::{self, jwk, public_key_b64};
use crate::{
    plan, verify, Jwk, Jwks, KeyId, KeyRecord, KeyState, KeyStore, KeyringError, MasterKey,
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

/// The active key of an app, parsed once and ready to sign.
///
/// It signs with aws-lc directly: `jsonwebtoken`'s `EncodingKey` keeps the PKCS#8 bytes
/// and parses (and checks) the key again on every signature, which costs as much as the
/// signature itself.
pub struct Signer {
    pub key_id: KeyId,
    /// base64 of the SubjectPublicKeyInfo PEM, as token responses carry it.
    pub public_key: String,
    /// base64url of `{"alg":"ES256","typ":…,"kid":…}` for each [`Typ`], in its order.
    headers: [String; 3],
    key_pair: EcdsaKeyPair,
}

/// The JOSE `typ` of a signed token (RFC 7515 §4.1.9, RFC 8725 §3.11).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Typ {
    /// `JWT`: every token of keygate's own profile.
    Jwt,
    /// `at+jwt`: an RFC 9068 access token.
    AccessToken,
    /// `refresh+jwt`: a refresh token that must never pass for an access token.
    RefreshToken,
}

impl Typ {
    const ALL: [Typ; 3] = [Typ::Jwt, Typ::AccessToken, Typ::RefreshToken];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Jwt => "JWT",
            Self::AccessToken => "at+jwt",
            Self::RefreshToken => "refresh+jwt",
        }
    }
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer").field("key_id", &self.key_id).finish_non_exhaustive()
    }
}

impl Signer {
    /// An ES256 JWS (RFC 7515 compact form) with header
    /// `{"alg":"ES256","typ":"JWT","kid":…}`.
    pub fn sign<T: Serialize>(&self, claims: &T) -> Result<String, KeyringError> {
        self.sign_typed(Typ::Jwt, claims)
    }

    /// Like [`Self::sign`], with `typ` as the header's `typ`.
    pub fn sign_typed<T: Serialize>(&self, typ: Typ, claims: &T) -> Result<String, KeyringError> {
        let payload = serde_json::to_vec(claims)
            .map_err(|e| KeyringError::Material(format!("claims: {e}")))?;
        let header = &self.headers[typ as usize];
        let mut token = String::with_capacity(header.len() + payload.len() * 4 / 3 + 92);
        token.push_str(header);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(&payload, &mut token);
        let signature = self
            .key_pair
            .sign(&SystemRandom::new(), token.as_bytes())
            .map_err(|_| KeyringError::Material("signing failed".into()))?;
        // Only the low-S form is issued, and only it is accepted (see verify::check_signature).
        let signature = verify::low_s(signature.as_ref())
            .ok_or_else(|| KeyringError::Material("signing gave no P-256 signature".into()))?;
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(signature, &mut token);
        Ok(token)
    }
}

/// A key as published to app owners.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PublishedKey {
    pub key_id: KeyId,
    /// base64 of the SubjectPublicKeyInfo PEM.
    pub public_key: String,
    #[schema(example = "ES256")]
    pub alg: &'static str,
    pub status: KeyState,
    pub created_at: i64,
    #[schema(required)]
    pub activated_at: Option<i64>,
    #[schema(required)]
    pub retired_at: Option<i64>,
}

/// Everything parsed from one app's keys.
pub struct AppKeys {
    loaded_at: Instant,
    signer: Option<Arc<Signer>>,
    verifiers: HashMap<KeyId, DecodingKey>,
    published: Vec<PublishedKey>,
    jwks: Jwks,
}

impl std::fmt::Debug for AppKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppKeys")
            .field("signer", &self.signer)
            .field("published", &self.published)
            .finish_non_exhaustive()
    }
}

impl AppKeys {
    pub fn signer(&self) -> Result<&Arc<Signer>, KeyringError> {
        self.signer.as_ref().ok_or(KeyringError::Missing(KeyState::Active))
    }

    /// The keys that verify tokens (next, active, retired), oldest first.
    pub fn published(&self) -> &[PublishedKey] {
        &self.published
    }

    pub fn jwks(&self) -> &Jwks {
        &self.jwks
    }

    fn load(
        keys: &[KeyRecord],
        master: &MasterKey,
        previous: &[MasterKey],
    ) -> Result<Self, KeyringError> {
        let mut signer = None;
        let mut verifiers = HashMap::new();
        let mut published = Vec::new();
        let mut jwks = Vec::new();
        for key in keys.iter().filter(|k| k.state.is_published()) {
            let jwk: Jwk = jwk(key.key_id, &key.public_pem)?;
            let decoding = DecodingKey::from_ec_components(&jwk.x, &jwk.y).map_err(|e| {
                KeyringError::Material(format!("public key of {}: {e}", key.key_id))
            })?;
            verifiers.insert(key.key_id, decoding);
            let public_key = public_key_b64(&key.public_pem);
            if key.state == KeyState::Active {
                let header = |typ: Typ| {
                    let header =
                        serde_json::json!({"alg": "ES256", "typ": typ.as_str(), "kid": key.key_id});
                    URL_SAFE_NO_PAD.encode(header.to_string())
                };
                signer = Some(Arc::new(Signer {
                    key_id: key.key_id,
                    public_key: public_key.clone(),
                    headers: Typ::ALL.map(header),
                    key_pair: unseal(key, master, previous)?,
                }));
            }
            published.push(PublishedKey {
                key_id: key.key_id,
                public_key,
                alg: "ES256",
                status: key.state,
                created_at: key.created_at,
                activated_at: key.activated_at,
                retired_at: key.retired_at,
            });
            jwks.push(jwk);
        }
        Ok(Self {
            loaded_at: Instant::now(),
            signer,
            verifiers,
            published,
            jwks: Jwks { keys: jwks },
        })
    }
}

/// The master key that sealed `key`: the current one, or one of the previous keys still
/// accepted during a master-key rotation.
fn sealer<'a>(
    key: &KeyRecord,
    master: &'a MasterKey,
    previous: &'a [MasterKey],
) -> Result<&'a MasterKey, KeyringError> {
    std::iter::once(master).chain(previous).find(|m| m.id() == key.master_key_id).ok_or_else(|| {
        KeyringError::WrongMasterKey {
            key_id: key.key_id,
            sealed_with: key.master_key_id.clone(),
            current: master.id().to_owned(),
        }
    })
}

fn unseal(
    key: &KeyRecord,
    master: &MasterKey,
    previous: &[MasterKey],
) -> Result<EcdsaKeyPair, KeyringError> {
    let pkcs8 = sealer(key, master, previous)?.open(key.key_id, &key.sealed_private)?;
    EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &pkcs8)
        .map_err(|e| KeyringError::Material(format!("private key of {}: {e}", key.key_id)))
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

#[cfg(test)]
mod tests {
    use p256::ecdsa::Signature;
    use p256::elliptic_curve::scalar::IsHigh;
    use rand::rngs::OsRng;

    use super::*;

    fn app_keys() -> AppKeys {
        let master = MasterKey::generate();
        let secret = p256::SecretKey::random(&mut OsRng);
        let record =
            material::seal_new(AppId::new(), KeyState::Active, &secret, &master, 1).unwrap();
        AppKeys::load(&[record], &master, &[]).unwrap()
    }

    fn split(token: &str) -> (&str, Signature) {
        let (message, signature) = token.rsplit_once('.').unwrap();
        let raw = URL_SAFE_NO_PAD.decode(signature).unwrap();
        (message, Signature::from_slice(&raw).unwrap())
    }

    /// Without the low-S rule, half of all signatures would be high: 64 in a row are low
    /// only by chance once in 2^64.
    #[test]
    fn the_signer_issues_only_low_s_signatures_that_verify() {
        let keys = app_keys();
        let signer = keys.signer().unwrap();
        let key = &keys.verifiers[&signer.key_id];
        let mut validation = strict_validation();
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        for i in 0..64 {
            let token = signer.sign(&serde_json::json!({"n": i})).unwrap();
            let (_, signature) = split(&token);
            assert!(!bool::from(signature.s().is_high()), "token {i}: {token}");
            verify::check_signature(&token).unwrap();
            let data = jsonwebtoken::decode::<serde_json::Value>(&token, key, &validation).unwrap();
            assert_eq!(data.claims["n"], i);
        }
    }

    /// The high-S twin is a valid ECDSA signature (the library alone accepts it); keygate
    /// refuses it before the library is asked.
    #[test]
    fn the_high_s_twin_of_an_issued_token_is_refused() {
        let keys = app_keys();
        let signer = keys.signer().unwrap();
        let key = &keys.verifiers[&signer.key_id];
        let mut validation = strict_validation();
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        let token = signer.sign(&serde_json::json!({"sub": "x"})).unwrap();
        let (message, signature) = split(&token);
        let (r, s) = signature.split_scalars();
        let twin = Signature::from_scalars(r, -*s).unwrap();
        assert!(bool::from(twin.s().is_high()));
        let twin = format!("{message}.{}", URL_SAFE_NO_PAD.encode(twin.to_bytes()));
        assert!(jsonwebtoken::decode::<serde_json::Value>(&twin, key, &validation).is_ok());
        assert!(matches!(
            verify::check_signature(&twin),
            Err(VerifyError::Invalid(e)) if *e.kind() == jsonwebtoken::errors::ErrorKind::InvalidSignature
        ));
        verify::check_signature(&token).unwrap();
    }
}
