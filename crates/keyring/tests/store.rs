//! The store suite of the keyring crate: every case runs against SQLite, and against
//! Postgres when `TEST_DATABASE_URL` is set, each in a fresh database (or schema).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use keygate_keyring::jsonwebtoken::jwk::JwkSet;
use keygate_keyring::jsonwebtoken::{
    self, Algorithm, DecodingKey, EncodingKey, Header, Validation,
};
use keygate_keyring::{
    key_store, plan, seal_new, strict_validation, KeyChange, KeyId, KeyRecord, KeyState, KeyStore,
    Keyring, KeyringConfig, KeyringError, MasterKey, VerifyError,
};
use keygate_store::testing::{execute, fetch_all};
use keygate_store::{Backend, Sql};
use keygate_tenants::{
    app_store, AppId, KeyHashKey, SettingsPatch, StoreError, Tenants, TenantsConfig,
};
use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey, LineEnding};
use serde::{Deserialize, Serialize};

/// The `now` of key-state changes (Unix seconds). Token claims use the real clock instead,
/// because `jsonwebtoken` checks `exp` and `nbf` against it.
const NOW: i64 = 1_700_000_000;

keygate_store::store_cases!(
    warm_fills_the_cache_with_every_app_s_keys_in_one_read,
    a_failed_reload_keeps_the_keys_that_verify,
    a_new_app_has_one_active_and_one_next_key,
    rotation_promotes_next_retires_active_and_publishes_a_new_next,
    revoking_the_active_key_promotes_next_at_once,
    revoking_the_next_key_replaces_it,
    revoking_twice_is_already_revoked,
    a_stale_plan_changes_nothing,
    concurrent_rotations_retry_and_all_apply,
    purging_retired_keys_stops_them_verifying_at_once,
    forget_all_drops_every_cached_key,
    scheduled_rotation_waits_for_the_period_and_the_publication,
    the_database_holds_no_plaintext_private_key,
    sealed_keys_need_their_master_key_and_their_own_row,
    a_token_verifies_through_the_jwks_and_through_the_pem,
    a_revoked_key_verifies_nothing_and_leaves_the_jwks,
    a_retired_key_still_verifies,
    verify_refuses_another_apps_key,
    verify_checks_time_claims_and_pins_es256,
    another_process_sees_new_keys,
    a_tokens_kid_names_its_app,
    a_master_key_rotation_reseals_every_key,
    concurrent_loads_of_an_app_share_one_read_and_its_failure,
);

// ---------------------------------------------------------------- helpers

struct Env {
    db: Backend,
    tenants: Tenants,
    store: Arc<KeyStore>,
    keyring: Keyring,
}

fn env(db: Backend) -> Env {
    let store = key_store(&db);
    Env {
        tenants: Tenants::new(
            app_store(&db),
            TenantsConfig::new(KeyHashKey::from_bytes(&[7; 32]).unwrap()),
        ),
        keyring: Keyring::new(store.clone(), MasterKey::generate(), KeyringConfig::default()),
        store,
        db,
    }
}

impl Env {
    /// An app row (the keys' foreign key needs it) without any signing key.
    async fn bare_app(&self, name: &str) -> AppId {
        let (record, _) =
            self.tenants.create_app(name, &SettingsPatch::default(), NOW).await.unwrap();
        record.app.app_id
    }

    /// An app with its first active and next keys.
    async fn app(&self, name: &str) -> AppId {
        let app_id = self.bare_app(name).await;
        self.keyring.create_app_keys(app_id, NOW).await.unwrap();
        app_id
    }

    /// Another keyring over the same database and master key: another process.
    fn other_process(&self, config: KeyringConfig) -> Keyring {
        let master = MasterKey::from_base64(&self.keyring.master().to_base64()).unwrap();
        Keyring::new(key_store(&self.db), master, config)
    }

    async fn keys(&self, app_id: AppId) -> Vec<KeyRecord> {
        self.keyring.list(app_id).await.unwrap()
    }

    async fn the(&self, app_id: AppId, state: KeyState) -> KeyId {
        the(&self.keys(app_id).await, state)
    }

    async fn sign(&self, app_id: AppId, sub: &str) -> (KeyId, String) {
        sign(&self.keyring, app_id, sub).await
    }
}

/// The one key in `state`; panics unless there is exactly one.
fn the(keys: &[KeyRecord], state: KeyState) -> KeyId {
    let matching: Vec<_> = keys.iter().filter(|k| k.state == state).collect();
    assert_eq!(matching.len(), 1, "expected exactly one {state} key in {keys:?}");
    matching[0].key_id
}

fn state_of(keys: &[KeyRecord], key_id: KeyId) -> KeyState {
    keys.iter().find(|k| k.key_id == key_id).unwrap_or_else(|| panic!("{key_id} missing")).state
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Claims {
    sub: String,
    iat: i64,
    nbf: i64,
    exp: i64,
}

#[allow(clippy::disallowed_methods)] // jsonwebtoken checks `exp` against the real clock
fn real_now() -> i64 {
    i64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()).unwrap()
}

fn claims(sub: &str) -> Claims {
    let now = real_now();
    Claims { sub: sub.to_owned(), iat: now, nbf: now, exp: now + 3600 }
}

/// A token signed by the app's active key, and that key's id.
async fn sign(keyring: &Keyring, app_id: AppId, sub: &str) -> (KeyId, String) {
    let keys = keyring.keys(app_id).await.unwrap();
    let signer = keys.signer().unwrap();
    (signer.key_id, signer.sign(&claims(sub)).unwrap())
}

async fn verify(keyring: &Keyring, app_id: AppId, token: &str) -> Result<Claims, VerifyError> {
    keyring.verify::<Claims>(app_id, token, &strict_validation()).await.map(|data| data.claims)
}

async fn jwks_kids(keyring: &Keyring, app_id: AppId) -> BTreeSet<KeyId> {
    keyring.keys(app_id).await.unwrap().jwks().keys.iter().map(|k| k.kid).collect()
}

fn published_ids(keys: &[KeyRecord]) -> BTreeSet<KeyId> {
    keys.iter().filter(|k| k.state != KeyState::Revoked).map(|k| k.key_id).collect()
}

/// A next key for `app_id` whose private half the test never needs.
fn fresh_next(app_id: AppId, master: &MasterKey, now: i64) -> KeyRecord {
    seal_new(app_id, KeyState::Next, &p256::SecretKey::random(&mut rand::rngs::OsRng), master, now)
        .unwrap()
}

/// Every cell of `app_keys` (`SELECT *`), as (column, bytes): text and blobs as they are,
/// integers in decimal, NULL as nothing. Panics on a column type it cannot read, so that no
/// column escapes the scan.
async fn every_cell_of_app_keys(db: &Backend) -> Vec<(String, Vec<u8>)> {
    let rows: Vec<Cells> = fetch_all(db, Sql::new("SELECT * FROM app_keys")).await;
    rows.into_iter().flat_map(|row| row.0).collect()
}

/// The cells of one row of any table, as [`every_cell_of_app_keys`] reads them.
struct Cells(Vec<(String, Vec<u8>)>);

impl<'r, R> sqlx::FromRow<'r, R> for Cells
where
    R: sqlx::Row,
    usize: sqlx::ColumnIndex<R>,
    for<'a> Vec<u8>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    fn from_row(row: &'r R) -> Result<Self, sqlx::Error> {
        use sqlx::Column;
        let cells = row
            .columns()
            .iter()
            .enumerate()
            .map(|(i, column)| {
                let bytes = if let Ok(blob) = row.try_get::<Option<Vec<u8>>, _>(i) {
                    blob.unwrap_or_default()
                } else if let Ok(text) = row.try_get::<Option<String>, _>(i) {
                    text.unwrap_or_default().into_bytes()
                } else if let Ok(int) = row.try_get::<Option<i64>, _>(i) {
                    int.map(|n| n.to_string().into_bytes()).unwrap_or_default()
                } else {
                    panic!("column {} has a type the scan cannot read", column.name())
                };
                (column.name().to_owned(), bytes)
            })
            .collect();
        Ok(Self(cells))
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Whether any contiguous part of `bytes` parses as a P-256 private key document.
fn holds_a_private_key_document(bytes: &[u8]) -> bool {
    (0..bytes.len()).any(|start| {
        (start + 1..=bytes.len()).any(|end| {
            let part = &bytes[start..end];
            p256::SecretKey::from_pkcs8_der(part).is_ok()
                || p256::SecretKey::from_sec1_der(part).is_ok()
        })
    })
}

/// Every encoding of `secret` that would give it away.
fn encodings_of(secret: &p256::SecretKey) -> Vec<(&'static str, Vec<u8>)> {
    let scalar = secret.to_bytes().to_vec();
    let pkcs8 = secret.to_pkcs8_der().unwrap().as_bytes().to_vec();
    let hex: String = scalar.iter().map(|b| format!("{b:02x}")).collect();
    vec![
        ("raw scalar", scalar.clone()),
        ("scalar, hex", hex.into_bytes()),
        ("scalar, base64", STANDARD.encode(&scalar).into_bytes()),
        ("scalar, base64url", URL_SAFE_NO_PAD.encode(&scalar).into_bytes()),
        ("PKCS#8 DER", pkcs8.clone()),
        ("PKCS#8 DER, base64", STANDARD.encode(&pkcs8).into_bytes()),
        ("PKCS#8 PEM", secret.to_pkcs8_pem(LineEnding::LF).unwrap().as_bytes().to_vec()),
        ("SEC1 DER", secret.to_sec1_der().unwrap().to_vec()),
    ]
}

fn public_pem(secret: &p256::SecretKey) -> String {
    secret.public_key().to_public_key_pem(LineEnding::LF).unwrap()
}

/// Verification with only the signature and `exp` checked, as an app owner would do.
fn owner_validation() -> Validation {
    let mut validation = Validation::new(Algorithm::ES256);
    validation.validate_aud = false;
    validation
}

// ---------------------------------------------------------------- states and plans

async fn a_new_app_has_one_active_and_one_next_key(db: Backend) {
    let env = env(db);
    let app_id = env.bare_app("fresh").await;
    let loaded = env.keyring.create_app_keys(app_id, NOW).await.unwrap();

    let keys = env.keys(app_id).await;
    assert_eq!(keys.len(), 2);
    let (active, next) = (the(&keys, KeyState::Active), the(&keys, KeyState::Next));
    assert_ne!(active, next);
    for key in &keys {
        let id = key.key_id.to_string();
        assert_eq!(id.len(), 26, "a ULID key id");
        assert_eq!(id.parse::<KeyId>().unwrap(), key.key_id);
        assert_eq!(key.app_id, app_id);
        assert_eq!(key.created_at, NOW);
        assert_eq!(key.master_key_id, env.keyring.master().id());
        assert!(key.public_pem.starts_with("-----BEGIN PUBLIC KEY-----"), "{}", key.public_pem);
        assert_eq!((key.retired_at, key.revoked_at), (None, None));
    }
    assert_eq!(keys.iter().find(|k| k.key_id == active).unwrap().activated_at, Some(NOW));
    assert_eq!(keys.iter().find(|k| k.key_id == next).unwrap().activated_at, None);

    assert_eq!(loaded.signer().unwrap().key_id, active, "the active key signs");
    let jwks: BTreeSet<KeyId> = loaded.jwks().keys.iter().map(|k| k.kid).collect();
    assert_eq!(jwks, BTreeSet::from([active, next]), "both are published");
    let statuses: BTreeSet<(KeyId, &str)> =
        loaded.published().iter().map(|k| (k.key_id, k.status.as_str())).collect();
    assert_eq!(statuses, BTreeSet::from([(active, "active"), (next, "next")]));

    // A second set of first keys is refused, and the first set stands.
    assert!(env.keyring.create_app_keys(app_id, NOW + 1).await.is_err());
    assert_eq!(env.keys(app_id).await, keys);
}

async fn rotation_promotes_next_retires_active_and_publishes_a_new_next(db: Backend) {
    let env = env(db);
    let app_id = env.app("rotating").await;
    let (active, next) =
        (env.the(app_id, KeyState::Active).await, env.the(app_id, KeyState::Next).await);

    let rotation = env.keyring.rotate(app_id, NOW + 10).await.unwrap();
    assert_eq!((rotation.retired_key_id, rotation.active_key_id), (active, next));
    let new_next = rotation.next_key_id;
    assert!(new_next != active && new_next != next);

    let keys = env.keys(app_id).await;
    assert_eq!(keys.len(), 3);
    assert_eq!(the(&keys, KeyState::Retired), active);
    assert_eq!(the(&keys, KeyState::Active), next);
    assert_eq!(the(&keys, KeyState::Next), new_next);
    let key = |id| keys.iter().find(|k| k.key_id == id).unwrap();
    assert_eq!(key(active).retired_at, Some(NOW + 10));
    assert_eq!(key(next).activated_at, Some(NOW + 10));
    assert_eq!(key(new_next).created_at, NOW + 10);

    let (signed_by, _) = env.sign(app_id, "alice").await;
    assert_eq!(signed_by, next, "new tokens are signed by the promoted key");
    assert_eq!(jwks_kids(&env.keyring, app_id).await, BTreeSet::from([active, next, new_next]));
}

async fn revoking_the_active_key_promotes_next_at_once(db: Backend) {
    let env = env(db);
    let app_id = env.app("compromised").await;
    let (active, next) =
        (env.the(app_id, KeyState::Active).await, env.the(app_id, KeyState::Next).await);

    let revocation = env.keyring.revoke(app_id, active, NOW + 5).await.unwrap();
    assert_eq!(revocation.revoked_key_id, active);
    assert_eq!(revocation.previous_status, KeyState::Active);
    assert_eq!(revocation.active_key_id, next);
    let new_next = revocation.next_key_id;

    let keys = env.keys(app_id).await;
    assert_eq!(state_of(&keys, active), KeyState::Revoked);
    assert_eq!(keys.iter().find(|k| k.key_id == active).unwrap().revoked_at, Some(NOW + 5));
    assert_eq!(the(&keys, KeyState::Active), next);
    assert_eq!(the(&keys, KeyState::Next), new_next);
    assert_eq!(env.sign(app_id, "bob").await.0, next, "the promoted key signs at once");
    assert_eq!(jwks_kids(&env.keyring, app_id).await, BTreeSet::from([next, new_next]));
}

async fn revoking_the_next_key_replaces_it(db: Backend) {
    let env = env(db);
    let app_id = env.app("leaky-next").await;
    let (active, next) =
        (env.the(app_id, KeyState::Active).await, env.the(app_id, KeyState::Next).await);

    let revocation = env.keyring.revoke(app_id, next, NOW + 5).await.unwrap();
    assert_eq!(revocation.previous_status, KeyState::Next);
    assert_eq!(revocation.active_key_id, active, "the active key is untouched");
    let replacement = revocation.next_key_id;
    assert!(replacement != next && replacement != active);

    let keys = env.keys(app_id).await;
    assert_eq!(state_of(&keys, next), KeyState::Revoked);
    assert_eq!(the(&keys, KeyState::Active), active);
    assert_eq!(the(&keys, KeyState::Next), replacement);
    assert_eq!(jwks_kids(&env.keyring, app_id).await, BTreeSet::from([active, replacement]));
}

async fn revoking_twice_is_already_revoked(db: Backend) {
    let env = env(db);
    let app_id = env.app("twice").await;
    let other_app = env.app("elsewhere").await;
    let active = env.the(app_id, KeyState::Active).await;
    env.keyring.revoke(app_id, active, NOW).await.unwrap();
    let after_first = env.keys(app_id).await;

    let again = env.keyring.revoke(app_id, active, NOW + 1).await;
    assert!(matches!(again, Err(KeyringError::AlreadyRevoked(id)) if id == active), "{again:?}");
    assert_eq!(env.keys(app_id).await, after_first, "a refused revoke changes nothing");

    let unknown = KeyId::new();
    assert!(matches!(
        env.keyring.revoke(app_id, unknown, NOW).await,
        Err(KeyringError::KeyNotFound(id)) if id == unknown
    ));
    // An admin cannot reach another app's key through this app.
    let foreign = env.the(other_app, KeyState::Active).await;
    assert!(matches!(
        env.keyring.revoke(app_id, foreign, NOW).await,
        Err(KeyringError::KeyNotFound(_))
    ));
    assert_eq!(env.the(other_app, KeyState::Active).await, foreign);
    assert_eq!(env.keys(app_id).await, after_first);
}

async fn a_stale_plan_changes_nothing(db: Backend) {
    let env = env(db);
    let app_id = env.app("racy").await;
    let master = env.keyring.master();

    // A rotation planned on what was read before someone else revoked the next key: its
    // first step (active → retired) still matches, its second (next → active) does not.
    let read_earlier = env.keys(app_id).await;
    let stale =
        plan::rotation(&read_earlier, fresh_next(app_id, master, NOW + 1), NOW + 1).unwrap();
    let old_next = env.the(app_id, KeyState::Next).await;
    env.keyring.revoke(app_id, old_next, NOW).await.unwrap();
    let before = env.keys(app_id).await;

    let result = env.store.apply(app_id, &stale).await;
    assert!(matches!(result, Err(StoreError::Conflict(_))), "{result:?}");
    assert_eq!(env.keys(app_id).await, before, "the first step was rolled back too");

    // The same without the insert: only the compare-and-set on `from` can stop it, and
    // it must, or a revoked key would sign again.
    let transitions_only = &stale[..2];
    assert!(
        matches!(transitions_only[1], KeyChange::Transition { key_id, .. } if key_id == old_next)
    );
    let result = env.store.apply(app_id, transitions_only).await;
    assert!(matches!(result, Err(StoreError::Conflict(_))), "{result:?}");
    assert_eq!(env.keys(app_id).await, before);
    assert_eq!(state_of(&env.keys(app_id).await, old_next), KeyState::Revoked);

    // A plan that inserts a key of another app is refused as a whole.
    let other_app = env.bare_app("other").await;
    let before = env.keys(app_id).await;
    let active = the(&before, KeyState::Active);
    let mixed = [
        KeyChange::Transition {
            key_id: active,
            from: KeyState::Active,
            to: KeyState::Retired,
            at: NOW + 2,
        },
        KeyChange::Insert(fresh_next(other_app, master, NOW + 2)),
    ];
    assert!(matches!(env.store.apply(app_id, &mixed).await, Err(StoreError::Conflict(_))));
    assert_eq!(env.keys(app_id).await, before);
    assert_eq!(env.keys(other_app).await, vec![]);

    // A second next key would break "exactly one next": refused, nothing changes.
    let extra_next = [KeyChange::Insert(fresh_next(app_id, master, NOW + 3))];
    assert!(env.store.apply(app_id, &extra_next).await.is_err());
    assert_eq!(env.keys(app_id).await, before);

    // A transition of this app's key id under another app's name matches nothing.
    let hijack = [KeyChange::Transition {
        key_id: active,
        from: KeyState::Active,
        to: KeyState::Revoked,
        at: NOW,
    }];
    assert!(matches!(env.store.apply(other_app, &hijack).await, Err(StoreError::Conflict(_))));
    assert_eq!(env.keys(app_id).await, before);
}

/// Two processes rotate at once: both read the same keys, one plan applies, the other
/// conflicts and is planned again on the new keys, so both rotations happen.
async fn concurrent_rotations_retry_and_all_apply(db: Backend) {
    let env = env(db);
    let app_id = env.app("contended").await;
    let other = env.other_process(KeyringConfig::default());
    for round in 0..5 {
        let now = NOW + 10 * round;
        let (a, b) = tokio::join!(env.keyring.rotate(app_id, now), other.rotate(app_id, now));
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_ne!(a.active_key_id, b.active_key_id, "round {round}: two rotations");
    }
    let keys = env.keys(app_id).await;
    assert_eq!(keys.len(), 12, "two first keys and ten new next keys");
    assert_eq!(keys.iter().filter(|k| k.state == KeyState::Retired).count(), 10);
    the(&keys, KeyState::Active);
    the(&keys, KeyState::Next);
}

/// Keys retired before the cutoff are deleted, and the keyring stops trusting them at once
/// (its cache is dropped), not when the cache expires.
async fn purging_retired_keys_stops_them_verifying_at_once(db: Backend) {
    let env = env(db);
    let app_id = env.app("purged").await;
    let (old_active, token) = env.sign(app_id, "alice").await;
    env.keyring.rotate(app_id, NOW + 10).await.unwrap();
    assert_eq!(state_of(&env.keys(app_id).await, old_active), KeyState::Retired);
    verify(&env.keyring, app_id, &token).await.expect("a retired key verifies (and is cached)");
    assert_eq!(env.keyring.purge_retired(app_id, NOW + 10).await.unwrap(), 0, "retired at it");
    verify(&env.keyring, app_id, &token).await.expect("still there");
    assert_eq!(env.keyring.purge_retired(app_id, NOW + 11).await.unwrap(), 1);
    assert!(env.keys(app_id).await.iter().all(|k| k.key_id != old_active));
    let refused = verify(&env.keyring, app_id, &token).await;
    assert!(matches!(refused, Err(VerifyError::UnknownKey)), "{refused:?}");
}

/// After another process revoked a key, `forget_all` makes this one read the keys again.
async fn forget_all_drops_every_cached_key(db: Backend) {
    let env = env(db);
    let app_id = env.app("forgetful").await;
    let (key_id, token) = env.sign(app_id, "alice").await;
    verify(&env.keyring, app_id, &token).await.expect("cached");
    let other = env.other_process(KeyringConfig::default());
    other.revoke(app_id, key_id, NOW + 1).await.unwrap();
    verify(&env.keyring, app_id, &token).await.expect("the cache does not know yet");
    env.keyring.forget_all();
    let refused = verify(&env.keyring, app_id, &token).await;
    assert!(matches!(refused, Err(VerifyError::UnknownKey)), "{refused:?}");
}

async fn scheduled_rotation_waits_for_the_period_and_the_publication(db: Backend) {
    let env = env(db);
    let app_id = env.app("scheduled").await;
    let (period, min_published) = (1000, 300);
    let before = env.keys(app_id).await;

    assert_eq!(
        env.keyring.rotate_if_due(app_id, period, min_published, NOW + 999).await.unwrap(),
        None
    );
    assert_eq!(env.keys(app_id).await, before, "not due: nothing changes");

    let rotation =
        env.keyring.rotate_if_due(app_id, period, min_published, NOW + 1000).await.unwrap();
    let rotation = rotation.expect("due after a whole period");
    assert_eq!(rotation.active_key_id, the(&before, KeyState::Next));
    assert_eq!(
        env.keyring.rotate_if_due(app_id, period, min_published, NOW + 1000).await.unwrap(),
        None
    );

    // A next key published only 100 s ago is not promoted, even when the period is over.
    let next = env.the(app_id, KeyState::Next).await;
    env.keyring.revoke(app_id, next, NOW + 1900).await.unwrap();
    assert_eq!(
        env.keyring.rotate_if_due(app_id, period, min_published, NOW + 2000).await.unwrap(),
        None
    );
    assert!(env
        .keyring
        .rotate_if_due(app_id, period, min_published, NOW + 2200)
        .await
        .unwrap()
        .is_some());
}

// ---------------------------------------------------------------- sealing at rest

async fn the_database_holds_no_plaintext_private_key(db: Backend) {
    let env = env(db);
    let master = env.keyring.master();

    // Keys made by the keyring, in every state.
    let made = env.app("made").await;
    env.keyring.rotate(made, NOW + 1).await.unwrap();
    let active = env.the(made, KeyState::Active).await;
    env.keyring.revoke(made, active, NOW + 2).await.unwrap();
    let states: BTreeSet<&str> = env.keys(made).await.iter().map(|k| k.state.as_str()).collect();
    assert_eq!(states.len(), 4, "every state is present: {states:?}");
    let (_, token) = env.sign(made, "made").await;
    assert!(verify(&env.keyring, made, &token).await.is_ok());

    // Keys whose private bytes the test knows, sealed through the public path and used by
    // the keyring to sign: so the database certainly holds them, in some form.
    let known_app = env.bare_app("known").await;
    let secrets = [
        p256::SecretKey::random(&mut rand::rngs::OsRng),
        p256::SecretKey::random(&mut rand::rngs::OsRng),
    ];
    let plan = [
        KeyChange::Insert(seal_new(known_app, KeyState::Active, &secrets[0], master, NOW).unwrap()),
        KeyChange::Insert(seal_new(known_app, KeyState::Next, &secrets[1], master, NOW).unwrap()),
    ];
    env.store.apply(known_app, &plan).await.unwrap();
    for secret in &secrets {
        let (_, token) = env.sign(known_app, "known").await;
        let key = DecodingKey::from_ec_pem(public_pem(secret).as_bytes()).unwrap();
        jsonwebtoken::decode::<Claims>(&token, &key, &owner_validation())
            .expect("signed with the known key");
        env.keyring.rotate(known_app, NOW + 3).await.unwrap();
    }

    // The detectors do detect: a PKCS#8 document holds the scalar and parses, even inside
    // other bytes.
    let pkcs8 = secrets[0].to_pkcs8_der().unwrap().as_bytes().to_vec();
    assert!(contains(&pkcs8, &secrets[0].to_bytes()));
    assert!(holds_a_private_key_document(&[b"junk".as_slice(), &pkcs8, b"more junk"].concat()));

    let cells = every_cell_of_app_keys(&env.db).await;
    let rows = env.keys(made).await.len() + env.keys(known_app).await.len();
    let columns: BTreeSet<&str> = cells.iter().map(|(name, _)| name.as_str()).collect();
    assert!(columns.contains("sealed_private") && columns.contains("public_pem"), "{columns:?}");
    assert_eq!(cells.len(), rows * columns.len(), "every column of every row was read");

    for (column, bytes) in &cells {
        assert!(!contains(bytes, b"PRIVATE KEY"), "{column} holds a PEM private key");
        for secret in &secrets {
            for (encoding, encoded) in encodings_of(secret) {
                assert!(
                    !contains(bytes, &encoded),
                    "{column} holds the {encoding} of a private key"
                );
            }
        }
        if column == "sealed_private" {
            assert!(bytes.len() > 32, "a sealed key is nonce, ciphertext and tag");
            assert!(!holds_a_private_key_document(bytes), "a sealed blob parses as a private key");
        }
    }
}

async fn sealed_keys_need_their_master_key_and_their_own_row(db: Backend) {
    let env = env(db);
    let app_id = env.app("sealed").await;
    let (active, next) =
        (env.the(app_id, KeyState::Active).await, env.the(app_id, KeyState::Next).await);

    // A gateway started with another master key cannot sign with these keys.
    let stranger =
        Keyring::new(key_store(&env.db), MasterKey::generate(), KeyringConfig::default());
    let err = stranger.keys(app_id).await.unwrap_err();
    assert!(
        matches!(err, KeyringError::WrongMasterKey { key_id, .. } if key_id == active),
        "{err:?}"
    );

    // Relabelled as its own, the ciphertext still does not open under the wrong key.
    let relabel = |master_key_id: &str| {
        Sql::new("UPDATE app_keys SET master_key_id = $1 WHERE app_id = $2")
            .bind(master_key_id)
            .bind(app_id.to_string())
    };
    execute(&env.db, relabel(stranger.master().id())).await;
    let err = stranger.keys(app_id).await.unwrap_err();
    assert!(matches!(err, KeyringError::Unseal(id) if id == active), "{err:?}");
    execute(&env.db, relabel(env.keyring.master().id())).await;
    env.keyring.forget(app_id);
    env.sign(app_id, "restored").await;

    // A sealed key moved to another key's row does not open there (bound to its key id).
    let swap = "UPDATE app_keys SET sealed_private = \
        (SELECT sealed_private FROM app_keys WHERE key_id = $1) WHERE key_id = $2";
    execute(&env.db, Sql::new(swap).bind(next.to_string()).bind(active.to_string())).await;
    env.keyring.forget(app_id);
    let err = env.keyring.keys(app_id).await.unwrap_err();
    assert!(matches!(err, KeyringError::Unseal(id) if id == active), "{err:?}");
}

// ---------------------------------------------------------------- signing and verifying

async fn a_token_verifies_through_the_jwks_and_through_the_pem(db: Backend) {
    let env = env(db);
    let app_id = env.app("verifiable").await;
    let keys = env.keyring.keys(app_id).await.unwrap();
    let signer = keys.signer().unwrap();
    let sent = claims("carol");
    let token = signer.sign(&sent).unwrap();

    let header = jsonwebtoken::decode_header(&token).unwrap();
    assert_eq!(header.alg, Algorithm::ES256);
    assert_eq!(header.typ.as_deref(), Some("JWT"));
    assert_eq!(header.kid, Some(signer.key_id.to_string()));

    // 1. The JWKS as served: JSON, parsed by a third party.
    let json = serde_json::to_string(keys.jwks()).unwrap();
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    for jwk in value["keys"].as_array().unwrap() {
        let members: BTreeSet<&str> = jwk.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(members, BTreeSet::from(["alg", "crv", "kid", "kty", "use", "x", "y"]), "{jwk}");
        assert_eq!((jwk["kty"].as_str(), jwk["crv"].as_str()), (Some("EC"), Some("P-256")));
        assert_eq!((jwk["alg"].as_str(), jwk["use"].as_str()), (Some("ES256"), Some("sig")));
    }
    let set: JwkSet = serde_json::from_str(&json).unwrap();
    assert_eq!(set.keys.len(), 2);
    let jwk = set.find(&signer.key_id.to_string()).expect("the signing key is in the JWKS");
    let from_jwks = DecodingKey::from_jwk(jwk).unwrap();
    let got = jsonwebtoken::decode::<Claims>(&token, &from_jwks, &owner_validation()).unwrap();
    assert_eq!(got.claims, sent);

    // 2. The base64 PEM as `pub-keys` and token responses carry it.
    let published = keys.published().iter().find(|k| k.key_id == signer.key_id).unwrap();
    assert_eq!(published.public_key, signer.public_key);
    let pem = STANDARD.decode(&published.public_key).unwrap();
    assert!(pem.starts_with(b"-----BEGIN PUBLIC KEY-----"));
    let from_pem = DecodingKey::from_ec_pem(&pem).unwrap();
    let got = jsonwebtoken::decode::<Claims>(&token, &from_pem, &owner_validation()).unwrap();
    assert_eq!(got.claims, sent);

    // 3. keygate's own verifier.
    assert_eq!(verify(&env.keyring, app_id, &token).await.unwrap(), sent);

    // The other published key (next) does not verify it: the checks above can fail.
    let next = env.the(app_id, KeyState::Next).await;
    let next_jwk = DecodingKey::from_jwk(set.find(&next.to_string()).unwrap()).unwrap();
    assert!(jsonwebtoken::decode::<Claims>(&token, &next_jwk, &owner_validation()).is_err());
    let mut tampered = token.clone();
    tampered.replace_range(tampered.len() - 4.., "AAAA");
    assert!(jsonwebtoken::decode::<Claims>(&tampered, &from_pem, &owner_validation()).is_err());
    assert!(verify(&env.keyring, app_id, &tampered).await.is_err());
}

async fn a_revoked_key_verifies_nothing_and_leaves_the_jwks(db: Backend) {
    let env = env(db);
    let app_id = env.app("revocable").await;
    let elsewhere =
        env.other_process(KeyringConfig { cache_ttl: Duration::ZERO, ..KeyringConfig::default() });
    let (kid, token) = env.sign(app_id, "dave").await;
    assert!(verify(&env.keyring, app_id, &token).await.is_ok());
    assert!(verify(&elsewhere, app_id, &token).await.is_ok()); // now cached there too

    env.keyring.revoke(app_id, kid, NOW).await.unwrap();

    let here = verify(&env.keyring, app_id, &token).await;
    assert!(matches!(here, Err(VerifyError::UnknownKey)), "{here:?}");
    let there = verify(&elsewhere, app_id, &token).await;
    assert!(matches!(there, Err(VerifyError::UnknownKey)), "{there:?}");
    let keys = env.keyring.keys(app_id).await.unwrap();
    assert!(!keys.jwks().keys.iter().any(|k| k.kid == kid), "gone from the JWKS");
    assert!(!keys.published().iter().any(|k| k.key_id == kid), "gone from pub-keys");
    assert_eq!(keys.jwks().keys.len(), 2);

    // Tokens of the promoted key verify.
    let (new_kid, new_token) = env.sign(app_id, "dave").await;
    assert_ne!(new_kid, kid);
    assert!(verify(&env.keyring, app_id, &new_token).await.is_ok());
}

/// A token with an unknown `kid` makes the keyring read the app's keys again; when that read
/// fails (the database is down), the cached keys must stay and still verify.
async fn a_failed_reload_keeps_the_keys_that_verify(db: Backend) {
    let env = env(db.clone());
    let app_id = env.app("outage").await;
    let keyring = env.other_process(KeyringConfig {
        reload_interval: Duration::ZERO,
        ..KeyringConfig::default()
    });
    let (_, token) = env.sign(app_id, "frank").await;
    assert!(verify(&keyring, app_id, &token).await.is_ok(), "cached now");
    let (header, rest) = token.split_once('.').unwrap();
    let mut header: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).unwrap()).unwrap();
    header["kid"] = serde_json::json!(ulid::Ulid::new().to_string());
    let unknown_kid = format!("{}.{rest}", URL_SAFE_NO_PAD.encode(header.to_string()));

    db.close().await;
    let reload = verify(&keyring, app_id, &unknown_kid).await;
    assert!(matches!(reload, Err(VerifyError::Keyring(_))), "{reload:?}");
    let known = verify(&keyring, app_id, &token).await;
    assert!(known.is_ok(), "the cached keys were evicted by a failed reload: {known:?}");
}

async fn a_retired_key_still_verifies(db: Backend) {
    let env = env(db);
    let app_id = env.app("retiring").await;
    let (kid, token) = env.sign(app_id, "erin").await;

    env.keyring.rotate(app_id, NOW + 1).await.unwrap();
    env.keyring.rotate(app_id, NOW + 2).await.unwrap();

    assert_eq!(state_of(&env.keys(app_id).await, kid), KeyState::Retired);
    assert_eq!(verify(&env.keyring, app_id, &token).await.unwrap().sub, "erin");
    assert!(jwks_kids(&env.keyring, app_id).await.contains(&kid), "still published");
    assert_ne!(env.sign(app_id, "erin").await.0, kid, "but it signs nothing new");
}

async fn verify_refuses_another_apps_key(db: Backend) {
    let env = env(db);
    let mine = env.app("mine").await;
    let theirs = env.app("theirs").await;
    // Reloading on every unknown kid: the refusal is not down to a stale cache.
    let eager = env.other_process(KeyringConfig {
        reload_interval: Duration::ZERO,
        ..KeyringConfig::default()
    });

    let (_, their_token) = env.sign(theirs, "mallory").await;
    for keyring in [&env.keyring, &eager] {
        assert!(verify(keyring, theirs, &their_token).await.is_ok());
        let result = verify(keyring, mine, &their_token).await;
        assert!(matches!(result, Err(VerifyError::UnknownKey)), "{result:?}");
    }

    // A token naming this app's kid but signed by some other key fails the signature.
    let my_kid = env.the(mine, KeyState::Active).await;
    let forger = p256::SecretKey::random(&mut rand::rngs::OsRng);
    let header = Header { kid: Some(my_kid.to_string()), ..Header::new(Algorithm::ES256) };
    let pem = forger.to_pkcs8_pem(LineEnding::LF).unwrap();
    let forged = jsonwebtoken::encode(
        &header,
        &claims("mallory"),
        &EncodingKey::from_ec_pem(pem.as_bytes()).unwrap(),
    )
    .unwrap();
    let result = verify(&env.keyring, mine, &forged).await;
    assert!(matches!(result, Err(VerifyError::Invalid(_))), "{result:?}");
    assert!(!result.unwrap_err().is_server_side());
}

async fn verify_checks_time_claims_and_pins_es256(db: Backend) {
    let env = env(db);
    let app_id = env.app("timely").await;
    let keys = env.keyring.keys(app_id).await.unwrap();
    let signer = keys.signer().unwrap();
    let now = real_now();

    let expired = signer
        .sign(&Claims { sub: "x".into(), iat: now - 100, nbf: now - 100, exp: now - 1 })
        .unwrap();
    assert!(matches!(verify(&env.keyring, app_id, &expired).await, Err(VerifyError::Invalid(_))));
    let early =
        signer.sign(&Claims { sub: "x".into(), iat: now, nbf: now + 60, exp: now + 120 }).unwrap();
    assert!(matches!(verify(&env.keyring, app_id, &early).await, Err(VerifyError::Invalid(_))));
    let fine = signer.sign(&claims("x")).unwrap();
    assert!(verify(&env.keyring, app_id, &fine).await.is_ok());

    let loose = Validation::new(Algorithm::HS256);
    let result = env.keyring.verify::<Claims>(app_id, &fine, &loose).await;
    assert!(matches!(result, Err(VerifyError::Header(_))), "{result:?}");

    let huge = signer.sign(&Claims { sub: "x".repeat(9000), ..claims("x") }).unwrap();
    assert!(matches!(verify(&env.keyring, app_id, &huge).await, Err(VerifyError::TooLarge)));
}

async fn another_process_sees_new_keys(db: Backend) {
    let env = env(db);
    // Parsed keys are trusted for an hour here: only the unknown-kid reload can explain
    // seeing a newer key.
    let patient = env.other_process(KeyringConfig {
        cache_ttl: Duration::from_secs(3600),
        reload_interval: Duration::ZERO,
    });
    let stubborn = env.other_process(KeyringConfig {
        cache_ttl: Duration::from_secs(3600),
        reload_interval: Duration::from_secs(3600),
    });

    let app_id = env.app("shared").await;
    let (_, first) = env.sign(app_id, "frank").await;
    assert!(
        verify(&patient, app_id, &first).await.is_ok(),
        "a new app's keys are loaded on demand"
    );
    assert!(verify(&stubborn, app_id, &first).await.is_ok());

    // Two rotations: the active key is one neither process has seen.
    env.keyring.rotate(app_id, NOW + 1).await.unwrap();
    env.keyring.rotate(app_id, NOW + 2).await.unwrap();
    let (kid, second) = env.sign(app_id, "frank").await;
    assert_eq!(verify(&patient, app_id, &second).await.unwrap().sub, "frank");
    assert!(patient.keys(app_id).await.unwrap().jwks().keys.iter().any(|k| k.kid == kid));
    let result = verify(&stubborn, app_id, &second).await;
    assert!(matches!(result, Err(VerifyError::UnknownKey)), "without a reload: {result:?}");

    // An app created after the other process started.
    let later = env.app("later").await;
    let (_, token) = env.sign(later, "grace").await;
    assert!(verify(&patient, later, &token).await.is_ok());
    assert!(verify(&stubborn, later, &token).await.is_ok());
}

// ---------------------------------------------------------------- the state machine, end to end

mod sequences {
    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone)]
    enum Op {
        Rotate,
        /// Revokes the key at this index (modulo the number of keys, revoked ones included).
        Revoke(usize),
    }

    fn ops() -> impl Strategy<Value = Vec<Op>> {
        prop::collection::vec(
            prop_oneof![Just(Op::Rotate), any::<usize>().prop_map(Op::Revoke)],
            1..12,
        )
    }

    async fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
        let test_db = keygate_store::testing::sqlite().await;
        let env = env(test_db.db.clone());
        let app_id = env.app("sequence").await;
        let mut tokens = vec![env.sign(app_id, "initial").await];

        for (step, op) in (1..).zip(ops) {
            let now = NOW + step;
            let before = env.keys(app_id).await;
            let (active, next) = (the(&before, KeyState::Active), the(&before, KeyState::Next));
            match op {
                Op::Rotate => {
                    let rotation = env.keyring.rotate(app_id, now).await.unwrap();
                    prop_assert_eq!(
                        (rotation.retired_key_id, rotation.active_key_id),
                        (active, next)
                    );
                }
                Op::Revoke(i) => {
                    let target = before[i % before.len()].clone();
                    match env.keyring.revoke(app_id, target.key_id, now).await {
                        Ok(revocation) => {
                            prop_assert_ne!(target.state, KeyState::Revoked);
                            let expected_active =
                                if target.key_id == active { next } else { active };
                            prop_assert_eq!(revocation.active_key_id, expected_active);
                        }
                        Err(KeyringError::AlreadyRevoked(_)) => {
                            prop_assert_eq!(target.state, KeyState::Revoked);
                            prop_assert_eq!(&env.keys(app_id).await, &before);
                        }
                        Err(other) => panic!("revoke failed: {other:?}"),
                    }
                }
            }

            let keys = env.keys(app_id).await;
            for state in [KeyState::Active, KeyState::Next] {
                let count = keys.iter().filter(|k| k.state == state).count();
                prop_assert_eq!(count, 1, "{} {} keys after step {}", count, state, step);
            }
            for old in &before {
                if old.state == KeyState::Revoked {
                    prop_assert_eq!(
                        state_of(&keys, old.key_id),
                        KeyState::Revoked,
                        "revoked stays revoked"
                    );
                }
            }
            let jwks = jwks_kids(&env.keyring, app_id).await;
            prop_assert!(jwks.contains(&the(&keys, KeyState::Next)), "the next key is published");
            prop_assert_eq!(&jwks, &published_ids(&keys), "the JWKS is exactly the unrevoked keys");

            tokens.push(env.sign(app_id, "step").await);
            for (kid, token) in &tokens {
                let result = verify(&env.keyring, app_id, token).await;
                if state_of(&keys, *kid) == KeyState::Revoked {
                    prop_assert!(
                        matches!(result, Err(VerifyError::UnknownKey)),
                        "a token of revoked key {} verified: {:?}",
                        kid,
                        result
                    );
                } else {
                    prop_assert!(
                        result.is_ok(),
                        "a token of unrevoked key {} failed: {:?}",
                        kid,
                        result
                    );
                }
            }
        }
        test_db.db.close().await;
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]

        /// Over any sequence of rotations and revocations through the real keyring and
        /// SQLite store: one active and one next key, the next key published, and no token
        /// of a revoked key verifying.
        #[test]
        fn key_invariants_hold_over_any_sequence(ops in ops()) {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(run(ops))?;
        }
    }
}

async fn a_tokens_kid_names_its_app(db: Backend) {
    let env = env(db);
    let mine = env.app("owner-mine").await;
    let theirs = env.app("owner-theirs").await;
    let (_, my_token) = env.sign(mine, "alice").await;
    let (_, their_token) = env.sign(theirs, "bob").await;
    assert_eq!(env.keyring.owner_of_token(&my_token).await.unwrap(), Some(mine));
    assert_eq!(env.keyring.owner_of_token(&their_token).await.unwrap(), Some(theirs));
    // Every key of the app is found, whatever its state: the next one too.
    let next = env.the(mine, KeyState::Next).await;
    assert_eq!(env.store.owner_of(next).await.unwrap(), Some(mine));
    // A key id nobody has, and a header that is not acceptable.
    assert_eq!(env.store.owner_of(KeyId::new()).await.unwrap(), None);
    // A well-formed signature, so that only the kid is unknown.
    let signature = my_token.rsplit('.').next().unwrap();
    let unknown = format!(
        "{}.e30.{signature}",
        URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"ES256","kid":"{}"}}"#, KeyId::new()))
    );
    assert_eq!(env.keyring.owner_of_token(&unknown).await.unwrap(), None);
    let hs256 = format!(
        "{}.e30.c2ln",
        URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"HS256","kid":"{}"}}"#, next))
    );
    assert!(matches!(env.keyring.owner_of_token(&hs256).await, Err(VerifyError::Header(_))));
    // A signature that cannot be valid is refused before any lookup.
    let bad_signature = format!("{}.e30.c2ln", my_token.split('.').next().unwrap());
    assert!(env.keyring.owner_of_token(&bad_signature).await.is_err());
}

/// Master-key rotation: the new key with the old one accepted signs with keys sealed
/// under the old one, `reseal` moves every key to the new one (only once, whoever runs
/// it), and then the new key alone opens everything.
async fn a_master_key_rotation_reseals_every_key(db: Backend) {
    let env = env(db);
    let app_id = env.app("resealed").await;
    let (before, _) = env.sign(app_id, "alice").await;
    let old = || MasterKey::from_base64(&env.keyring.master().to_base64()).unwrap();
    let new = MasterKey::generate();
    let new_b64 = new.to_base64();
    let fresh = || MasterKey::from_base64(&new_b64).unwrap();

    let alone = Keyring::new(key_store(&env.db), fresh(), KeyringConfig::default());
    assert!(
        matches!(alone.keys(app_id).await, Err(KeyringError::WrongMasterKey { .. })),
        "the new key alone cannot open the old seals"
    );
    let both = Keyring::new(key_store(&env.db), fresh(), KeyringConfig::default())
        .with_previous_master_keys(vec![old()]);
    let (during, _) = sign(&both, app_id, "bob").await;
    assert_eq!(during, before, "the same signing key, opened with the previous master key");

    let heard = std::sync::Mutex::new(Vec::new());
    let progress = |done, of| heard.lock().unwrap().push((done, of));
    let report = both.reseal(&[app_id], &progress).await.unwrap();
    assert_eq!((report.resealed, report.already_current), (2, 0));
    assert_eq!(*heard.lock().unwrap(), [(1, 2), (2, 2)], "progress after each key");
    assert_eq!(report.master_key_id, fresh().id());
    assert!(env.keys(app_id).await.iter().all(|k| k.master_key_id == fresh().id()));
    // A second run (or a concurrent one that lost) changes nothing.
    let again = both.reseal(&[app_id], &|_, _| {}).await.unwrap();
    assert_eq!((again.resealed, again.already_current), (0, 2));

    // The keyring that failed before opens everything now (a failed load is not cached).
    let (after, _) = sign(&alone, app_id, "carol").await;
    assert_eq!(after, before);

    // Other secrets (webhook secrets): sealed under the current master key, opened by the
    // id they were sealed with and only for their own context, by a keyring that still
    // knows that master key.
    let (sealed, sealed_with) = env.keyring.seal_secret("webhook w1", b"s3cret").unwrap();
    assert_eq!(sealed_with, env.keyring.master().id());
    assert!(!contains(&sealed, b"s3cret"));
    let opened = env.keyring.open_secret("webhook w1", &sealed_with, &sealed).unwrap();
    assert_eq!(opened.as_slice(), b"s3cret");
    assert!(env.keyring.open_secret("webhook w2", &sealed_with, &sealed).is_err());
    assert!(both.open_secret("webhook w1", fresh().id(), &sealed).is_err(), "another key");
    let opened = both.open_secret("webhook w1", &sealed_with, &sealed).unwrap();
    assert_eq!(opened.as_slice(), b"s3cret", "a previous master key still opens it");
    let stale = Keyring::new(key_store(&env.db), old(), KeyringConfig::default());
    assert!(matches!(stale.keys(app_id).await, Err(KeyringError::WrongMasterKey { .. })));
}

/// Concurrent misses of one app wait for a single load: they get the same parsed keys, or
/// each the same kind of failure (a database that is gone stays "unavailable").
async fn concurrent_loads_of_an_app_share_one_read_and_its_failure(db: Backend) {
    let env = env(db);
    let app_id = env.app("popular").await;
    let cold = env.other_process(KeyringConfig::default());
    let (a, b, c) = tokio::join!(cold.keys(app_id), cold.keys(app_id), cold.keys(app_id));
    let (a, b, c) = (a.unwrap(), b.unwrap(), c.unwrap());
    assert!(Arc::ptr_eq(&a, &b) && Arc::ptr_eq(&b, &c), "one load for the three");

    let stranger =
        Keyring::new(key_store(&env.db), MasterKey::generate(), KeyringConfig::default());
    let (a, b) = tokio::join!(stranger.keys(app_id), stranger.keys(app_id));
    for result in [a, b] {
        assert!(matches!(result, Err(KeyringError::WrongMasterKey { .. })), "{result:?}");
    }

    env.db.close().await;
    let gone = env.other_process(KeyringConfig::default());
    let (a, b) = tokio::join!(gone.keys(app_id), gone.keys(app_id));
    for result in [a, b] {
        assert!(matches!(&result, Err(KeyringError::Store(e)) if e.is_unavailable()), "{result:?}");
    }
}

async fn warm_fills_the_cache_with_every_app_s_keys_in_one_read(db: Backend) {
    let env = env(db);
    let apps = [env.app("one").await, env.app("two").await, env.app("three").await];
    let other = env.other_process(KeyringConfig {
        cache_ttl: Duration::from_secs(3600),
        ..KeyringConfig::default()
    });
    // Two apps a query: three apps take two pages.
    assert_eq!(other.warm(2).await.unwrap(), (3, 0));
    // The rows gone behind its back: the warmed process still has every app's keys.
    execute(&env.db, Sql::new("DELETE FROM app_keys")).await;
    for app_id in apps {
        let keys = other.keys(app_id).await.unwrap();
        assert_eq!(keys.published().len(), 2, "active and next of {app_id}");
        assert!(keys.signer().is_ok());
    }
    let cold = env.other_process(KeyringConfig::default());
    let read = cold.keys(apps[0]).await;
    assert!(
        read.as_ref().map_or(true, |keys| keys.published().is_empty()),
        "a cold process reads the (deleted) rows: {read:?}"
    );
}
