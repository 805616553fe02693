//! The store suite of the tenants crate: every case runs against SQLite, and against
//! Postgres when `TEST_DATABASE_URL` is set, each in a fresh database (or schema).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use keygate_store::testing::{execute, fetch_all};
use keygate_store::{Backend, Sql};
use keygate_tenants::{
    app_store, hash_secret, AccessTokenProfile, App, AppId, AppKey, AppKeyHashes, AppRecord,
    AppSettings, AppStore, AuthError, DpopMode, KeyHashKey, OnReuse, SettingsPatch, StoreError,
    TenantError, Tenants, TenantsConfig,
};

/// A fixed "now" (Unix seconds): time is a parameter, never read by the code under test.
const NOW: i64 = 1_700_000_000;

keygate_store::store_cases!(
    apps_round_trip_through_the_store,
    unknown_apps_are_absent,
    a_taken_name_is_a_validation_error_naming_name,
    changing_a_missing_app_is_not_found,
    deleting_an_app_deletes_its_signing_keys,
    insert_setting_only_once_and_put_setting_overwrites,
    create_app_applies_defaults_and_stores_only_a_hash,
    create_app_names_every_bad_field,
    update_app_validates_and_persists,
    the_app_key_authenticates_and_nothing_else_does,
    keyed_checks_run_no_argon2_and_need_the_key_hash_key,
    a_legacy_argon2_key_is_checked_once_then_upgraded,
    a_rotated_app_key_keeps_the_old_one_only_during_the_grace,
    a_rotation_without_grace_stops_the_old_key_at_once,
    a_legacy_previous_key_is_upgraded_within_its_grace,
    app_key_rotation_validates_the_grace,
    another_process_sees_a_rotated_app_key,
    a_deleted_app_no_longer_authenticates,
    a_generated_root_key_is_returned_once,
    a_supplied_root_key_is_used_and_not_returned,
    a_malformed_supplied_root_key_is_refused,
    rotating_the_root_key_voids_the_old_one,
    a_legacy_root_key_is_upgraded_on_its_first_check,
    warm_fills_the_cache_with_every_app_in_one_read,
);

// ---------------------------------------------------------------- helpers

fn tenants(db: &Backend) -> Tenants {
    Tenants::new(app_store(db), TenantsConfig::new(KeyHashKey::from_bytes(&[7; 32]).unwrap()))
}

/// A record with a distinct, valid value in every column, so a swapped column shows.
fn record(name: &str) -> AppRecord {
    AppRecord {
        app: App {
            app_id: AppId::new(),
            name: name.to_owned(),
            settings: AppSettings {
                issuer: format!("https://{name}.example/iss"),
                audience: format!("{name}-aud"),
                token_expire: 901,
                token_notbefore: 2,
                refresh_expire: 3603,
                refresh_notbefore: 4,
                session_max_age: 7205,
                reuse_grace: 6,
                rotation_period: 3607,
                max_sessions_per_sub: 8,
                refresh_rotation: false,
                on_reuse: OnReuse::RevokeSubject,
                access_token_profile: AccessTokenProfile::Rfc9068,
                requests_per_second: 9,
                requests_burst: 10,
                dpop: DpopMode::Required,
                dpop_nonce: true,
                oauth_public_clients: true,
            },
            created_at: NOW,
            updated_at: NOW + 1,
        },
        key: AppKeyHashes {
            current: format!("$argon2id$current-of-{name}"),
            previous: Some(format!("$argon2id$previous-of-{name}")),
            previous_expires_at: Some(NOW + 600),
        },
    }
}

fn fields(err: &TenantError) -> Vec<&str> {
    match err {
        TenantError::Invalid(errors) => errors.iter().map(|e| e.field.as_str()).collect(),
        other => panic!("expected a validation error, got {other:?}"),
    }
}

async fn create(tenants: &Tenants, name: &str) -> (AppRecord, AppKey) {
    tenants
        .create_app(name, &SettingsPatch::default(), NOW)
        .await
        .unwrap_or_else(|e| panic!("create {name}: {e:?}"))
}

/// Stores the app's key as an argon2id hash, as keygate did before the keyed form.
async fn make_legacy(tenants: &Tenants, app_id: AppId, key: &AppKey) -> String {
    let hash = hash_secret(key.expose()).unwrap();
    let hashes = AppKeyHashes { current: hash.clone(), previous: None, previous_expires_at: None };
    tenants.store().set_app_key(app_id, &hashes, NOW).await.unwrap();
    tenants.forget(app_id);
    hash
}

async fn auth(tenants: &Tenants, app_id: AppId, key: &str, now: i64) -> Result<(), AuthError> {
    tenants.authenticate_app(&app_id.to_string(), Some(key), now).await.map(|record| {
        assert_eq!(record.app.app_id, app_id, "authenticated as another app");
    })
}

fn assert_denied(result: Result<(), AuthError>, what: &str) {
    assert!(matches!(result, Err(AuthError::Denied)), "{what}: expected Denied, got {result:?}");
}

/// Raw SQL on either backend: a signing-key row for `app_id`, inserted behind the store.
async fn insert_raw_key(db: &Backend, app_id: AppId, state: &str) {
    let sql = "INSERT INTO app_keys (key_id, app_id, state, public_pem, sealed_private, \
        master_key_id, created_at) VALUES ($1, $2, $3, 'pem', $4, 'mk', 0)";
    let key_id = AppId::new().to_string(); // any ULID will do
    let sealed = vec![1u8, 2, 3];
    execute(db, Sql::new(sql).bind(key_id).bind(app_id.to_string()).bind(state).bind(sealed)).await;
}

async fn count_raw_keys(db: &Backend, app_id: AppId) -> i64 {
    let sql = Sql::new("SELECT COUNT(*) FROM app_keys WHERE app_id = $1").bind(app_id.to_string());
    let rows: Vec<(i64,)> = fetch_all(db, sql).await;
    rows[0].0
}

/// Every `(name, value)` of the settings table, read behind the store.
async fn raw_settings(db: &Backend) -> Vec<(String, String)> {
    fetch_all(db, Sql::new("SELECT name, value FROM settings")).await
}

// ---------------------------------------------------------------- the app store

async fn apps_round_trip_through_the_store(db: Backend) {
    let store: Arc<AppStore> = app_store(&db);
    let first = record("first");
    let second = record("second");
    store.insert_app(&first).await.unwrap();
    store.insert_app(&second).await.unwrap();

    assert_eq!(store.get_app(first.app.app_id).await.unwrap(), Some(first.clone()));
    assert_eq!(store.find_app_by_name("second").await.unwrap(), Some(second.clone()));

    let mut expected = vec![first.clone(), second.clone()];
    for name in ["e", "d", "c", "b", "a"] {
        let extra = record(name);
        store.insert_app(&extra).await.unwrap();
        expected.push(extra);
    }
    expected.sort_by_key(|r| r.app.app_id);
    assert_eq!(store.list_apps().await.unwrap(), expected, "list is every app, by id");

    let mut changed = first.app.clone();
    changed.name = "first-renamed".into();
    changed.settings = AppSettings::defaults_for("other");
    changed.updated_at = NOW + 50;
    store.update_app(&changed).await.unwrap();
    let stored = store.get_app(first.app.app_id).await.unwrap().unwrap();
    assert_eq!(stored.app, changed, "name, settings and updated_at are written");
    assert_eq!(stored.key, first.key, "an update leaves the app key hashes alone");
    assert_eq!(stored.app.created_at, NOW);
    assert_eq!(store.find_app_by_name("first").await.unwrap(), None, "the old name is free");

    let hashes =
        AppKeyHashes { current: "$argon2id$new".into(), previous: None, previous_expires_at: None };
    store.set_app_key(first.app.app_id, &hashes, NOW + 60).await.unwrap();
    let stored = store.get_app(first.app.app_id).await.unwrap().unwrap();
    assert_eq!(stored.key, hashes);
    assert_eq!(stored.app.updated_at, NOW + 60, "a key change stamps updated_at");

    assert!(store.delete_app(first.app.app_id).await.unwrap());
    assert_eq!(store.get_app(first.app.app_id).await.unwrap(), None);
    assert!(!store.delete_app(first.app.app_id).await.unwrap(), "a second delete finds nothing");
    expected.retain(|r| r.app.app_id != first.app.app_id);
    assert_eq!(store.list_apps().await.unwrap(), expected);

    // The service reads through the same store.
    let tenants =
        Tenants::new(store, TenantsConfig::new(KeyHashKey::from_bytes(&[7; 32]).unwrap()));
    let apps: Vec<App> = expected.iter().map(|r| r.app.clone()).collect();
    assert_eq!(tenants.list_apps().await.unwrap(), apps);
    assert_eq!(tenants.find(&second.app.app_id.to_string()).await.unwrap(), second);
    assert_eq!(tenants.find("second").await.unwrap(), second);
    assert!(matches!(tenants.find("first").await, Err(TenantError::NotFound)));
}

async fn unknown_apps_are_absent(db: Backend) {
    let store = app_store(&db);
    assert_eq!(store.get_app(AppId::new()).await.unwrap(), None);
    assert_eq!(store.find_app_by_name("nobody").await.unwrap(), None);
    assert_eq!(store.list_apps().await.unwrap(), vec![]);
    assert!(matches!(
        tenants(&db).find(&AppId::new().to_string()).await,
        Err(TenantError::NotFound)
    ));
}

async fn a_taken_name_is_a_validation_error_naming_name(db: Backend) {
    let tenants = tenants(&db);
    let (shop, _) = create(&tenants, "shop").await;

    let err = tenants.create_app("shop", &SettingsPatch::default(), NOW).await.unwrap_err();
    assert_eq!(fields(&err), ["name"]);

    // The store itself reports the clash as a conflict, not as a database failure.
    let mut clash = record("shop");
    clash.app.app_id = AppId::new();
    assert!(matches!(tenants.store().insert_app(&clash).await, Err(StoreError::Conflict(_))));

    // Renaming another app onto the taken name is refused the same way.
    let (blog, _) = create(&tenants, "blog").await;
    let rename = SettingsPatch { name: Some("shop".into()), ..Default::default() };
    let err = tenants.update_app(blog.app.app_id, &rename, NOW + 1).await.unwrap_err();
    assert_eq!(fields(&err), ["name"]);

    let names: Vec<String> =
        tenants.list_apps().await.unwrap().into_iter().map(|a| a.name).collect();
    assert_eq!(names.iter().filter(|n| *n == "shop").count(), 1);
    assert!(names.contains(&"blog".to_owned()), "the failed rename left blog as it was");
    assert_eq!(tenants.find("shop").await.unwrap().app.app_id, shop.app.app_id);
}

async fn changing_a_missing_app_is_not_found(db: Backend) {
    let tenants = tenants(&db);
    let ghost = record("ghost");
    let store = tenants.store();
    assert!(matches!(store.update_app(&ghost.app).await, Err(StoreError::NotFound)));
    assert!(matches!(
        store.set_app_key(ghost.app.app_id, &ghost.key, NOW).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        tenants.update_app(ghost.app.app_id, &SettingsPatch::default(), NOW).await,
        Err(TenantError::NotFound)
    ));
    assert!(matches!(tenants.delete_app(ghost.app.app_id).await, Err(TenantError::NotFound)));
    assert!(matches!(
        tenants.rotate_app_key(ghost.app.app_id, 0, NOW).await,
        Err(TenantError::NotFound)
    ));
    assert_eq!(store.list_apps().await.unwrap(), vec![], "nothing was created on the way");
}

async fn deleting_an_app_deletes_its_signing_keys(db: Backend) {
    let tenants = tenants(&db);
    let (doomed, _) = create(&tenants, "doomed").await;
    let (kept, _) = create(&tenants, "kept").await;
    insert_raw_key(&db, doomed.app.app_id, "active").await;
    insert_raw_key(&db, doomed.app.app_id, "next").await;
    insert_raw_key(&db, doomed.app.app_id, "retired").await;
    insert_raw_key(&db, kept.app.app_id, "active").await;
    assert_eq!(count_raw_keys(&db, doomed.app.app_id).await, 3);

    tenants.delete_app(doomed.app.app_id).await.unwrap();

    assert_eq!(count_raw_keys(&db, doomed.app.app_id).await, 0, "keys go with their app");
    assert_eq!(count_raw_keys(&db, kept.app.app_id).await, 1, "other apps keep theirs");
    assert_eq!(tenants.store().get_app(doomed.app.app_id).await.unwrap(), None);
}

async fn insert_setting_only_once_and_put_setting_overwrites(db: Backend) {
    let store = app_store(&db);
    assert_eq!(store.get_setting("color").await.unwrap(), None);
    assert!(store.insert_setting("color", "red").await.unwrap(), "the first insert wins");
    assert!(!store.insert_setting("color", "blue").await.unwrap(), "a second insert is a no-op");
    assert_eq!(store.get_setting("color").await.unwrap().as_deref(), Some("red"));

    store.put_setting("color", "green").await.unwrap();
    assert_eq!(store.get_setting("color").await.unwrap().as_deref(), Some("green"));

    store.put_setting("shape", "round").await.unwrap();
    assert_eq!(store.get_setting("shape").await.unwrap().as_deref(), Some("round"), "put inserts");
    assert!(!store.insert_setting("shape", "square").await.unwrap());
    assert_eq!(store.get_setting("shape").await.unwrap().as_deref(), Some("round"));
    assert_eq!(store.get_setting("color").await.unwrap().as_deref(), Some("green"), "untouched");
}

// ---------------------------------------------------------------- the Tenants service

async fn create_app_applies_defaults_and_stores_only_a_hash(db: Backend) {
    let tenants = tenants(&db);
    let (created, key) = create(&tenants, "demo").await;
    let stored = tenants.store().get_app(created.app.app_id).await.unwrap().unwrap();
    assert_eq!(stored, created, "what create returns is what is stored");

    let s = &stored.app.settings;
    assert_eq!((s.issuer.as_str(), s.audience.as_str()), ("demo", "demo"));
    assert_eq!(
        (s.token_expire, s.token_notbefore, s.refresh_expire, s.refresh_notbefore),
        (900, 0, 2_592_000, 0)
    );
    assert_eq!((s.session_max_age, s.reuse_grace, s.rotation_period), (7_776_000, 10, 2_592_000));
    assert_eq!(
        (s.max_sessions_per_sub, s.refresh_rotation, s.on_reuse),
        (0, true, OnReuse::RevokeSession)
    );
    assert_eq!((stored.app.created_at, stored.app.updated_at), (NOW, NOW));

    assert!(key.expose().starts_with("kg_"));
    assert!(AppKey::well_formed(key.expose()));
    assert!(stored.key.current.starts_with("hmac-sha256$"), "the app key is stored keyed");
    assert!(!stored.key.current.contains(&key.expose()[3..]), "and never in the clear");
    assert_eq!(stored.key.previous, None);

    let patch = SettingsPatch {
        issuer: Some("https://issuer.example".into()),
        token_expire: Some(60),
        on_reuse: Some(OnReuse::RevokeSubject),
        ..Default::default()
    };
    let (custom, other_key) = tenants.create_app("custom", &patch, NOW).await.unwrap();
    assert_eq!(custom.app.settings.issuer, "https://issuer.example");
    assert_eq!(custom.app.settings.audience, "custom");
    assert_eq!(custom.app.settings.token_expire, 60);
    assert_eq!(custom.app.settings.on_reuse, OnReuse::RevokeSubject);
    assert_ne!(other_key.expose(), key.expose(), "every app gets its own key");
}

async fn create_app_names_every_bad_field(db: Backend) {
    let tenants = tenants(&db);
    let bad_ttls = SettingsPatch {
        token_expire: Some(-5),
        refresh_expire: Some(i64::MAX),
        ..Default::default()
    };
    let err = tenants.create_app("ttl", &bad_ttls, NOW).await.unwrap_err();
    assert_eq!(fields(&err), ["token_expire", "refresh_expire"]);

    // A bad name is named first. (Issuer and audience default to the name, so a blank or
    // control-character name currently also yields `issuer` and `audience` entries.)
    for bad in ["", "   ", "evil\u{1b}[31m", &"n".repeat(101)] {
        let err = tenants.create_app(bad, &SettingsPatch::default(), NOW).await.unwrap_err();
        assert_eq!(fields(&err).first(), Some(&"name"), "{bad:?}");
    }
    let explicit = SettingsPatch {
        issuer: Some("iss".into()),
        audience: Some("aud".into()),
        reuse_grace: Some(-1),
        ..Default::default()
    };
    let err = tenants.create_app("", &explicit, NOW).await.unwrap_err();
    let mut got = fields(&err);
    got.sort_unstable();
    assert_eq!(got, ["name", "reuse_grace"], "one entry per bad field, all at once");

    let inverted =
        SettingsPatch { token_expire: Some(60), token_notbefore: Some(120), ..Default::default() };
    let err = tenants.create_app("inverted", &inverted, NOW).await.unwrap_err();
    assert_eq!(fields(&err), ["token_notbefore"]);
    match &err {
        TenantError::Invalid(errors) => {
            assert!(!errors[0].message.is_empty(), "a message says why")
        }
        other => panic!("{other:?}"),
    }

    assert_eq!(tenants.list_apps().await.unwrap(), vec![], "no invalid app was stored");
}

async fn update_app_validates_and_persists(db: Backend) {
    let tenants = tenants(&db);
    let (app, key) = create(&tenants, "mutable").await;
    let app_id = app.app.app_id;

    let bad = SettingsPatch { session_max_age: Some(0), ..Default::default() };
    assert_eq!(
        fields(&tenants.update_app(app_id, &bad, NOW + 5).await.unwrap_err()),
        ["session_max_age"]
    );
    assert_eq!(
        tenants.store().get_app(app_id).await.unwrap().unwrap(),
        app,
        "a refused update changes nothing"
    );

    let patch = SettingsPatch {
        name: Some("renamed".into()),
        token_expire: Some(120),
        refresh_rotation: Some(false),
        ..Default::default()
    };
    let updated = tenants.update_app(app_id, &patch, NOW + 10).await.unwrap();
    let stored = tenants.store().get_app(app_id).await.unwrap().unwrap();
    assert_eq!(stored, updated);
    assert_eq!(stored.app.name, "renamed");
    assert_eq!(stored.app.settings.token_expire, 120);
    assert!(!stored.app.settings.refresh_rotation);
    assert_eq!(stored.app.settings.reuse_grace, 10, "fields not in the patch keep their value");
    assert_eq!((stored.app.created_at, stored.app.updated_at), (NOW, NOW + 10));
    assert_eq!(stored.key, app.key, "an update keeps the app key");
    auth(&tenants, app_id, key.expose(), NOW + 10).await.unwrap();
}

async fn the_app_key_authenticates_and_nothing_else_does(db: Backend) {
    let tenants = tenants(&db);
    let (app, key) = create(&tenants, "guarded").await;
    let (other, other_key) = create(&tenants, "neighbour").await;
    let app_id = app.app.app_id;

    let record =
        tenants.authenticate_app(&app_id.to_string(), Some(key.expose()), NOW).await.unwrap();
    assert_eq!(*record, app);

    assert_denied(auth(&tenants, app_id, AppKey::generate().expose(), NOW).await, "a wrong key");
    assert_denied(auth(&tenants, app_id, other_key.expose(), NOW).await, "another app's key");
    assert_denied(
        auth(&tenants, other.app.app_id, key.expose(), NOW).await,
        "this key for another app",
    );
    assert_denied(auth(&tenants, AppId::new(), key.expose(), NOW).await, "an unknown app");

    let runs = tenants.argon2_runs();
    let id = app_id.to_string();
    for (what, app_id, presented) in [
        ("a malformed id", "not-an-id".to_owned(), Some(key.expose().to_owned())),
        ("a lower-case id", id.to_lowercase(), Some(key.expose().to_owned())),
        ("an empty id", String::new(), Some(key.expose().to_owned())),
        ("a missing key", id.clone(), None),
        ("an empty key", id.clone(), Some(String::new())),
        ("a 10 KB key", id.clone(), Some(format!("kg_{}", "A".repeat(10 * 1024)))),
        ("a Bearer-prefixed key", id.clone(), Some(format!("Bearer {}", key.expose()))),
        ("a truncated key", id.clone(), Some(key.expose()[..key.expose().len() - 1].to_owned())),
    ] {
        let result = tenants.authenticate_app(&app_id, presented.as_deref(), NOW).await.map(|_| ());
        assert_denied(result, what);
    }
    assert_eq!(tenants.argon2_runs(), runs, "malformed input is refused without running argon2");

    // The right key still works after all that.
    auth(&tenants, app_id, key.expose(), NOW).await.unwrap();
}

async fn keyed_checks_run_no_argon2_and_need_the_key_hash_key(db: Backend) {
    let tenants = tenants(&db);
    let (app, key) = create(&tenants, "hot").await;
    let app_id = app.app.app_id;
    for i in 0..50 {
        auth(&tenants, app_id, key.expose(), NOW + i).await.unwrap();
    }
    assert_denied(auth(&tenants, app_id, AppKey::generate().expose(), NOW).await, "a wrong key");
    let checks = tenants.key_check_counts();
    assert_eq!((checks.keyed, checks.cached, checks.argon2), (50, 0, 0), "{checks:?}");

    // Another process over the same database needs the same key-hash key.
    let other =
        Tenants::new(app_store(&db), TenantsConfig::new(KeyHashKey::from_bytes(&[8; 32]).unwrap()));
    assert_denied(auth(&other, app_id, key.expose(), NOW).await, "another key-hash key");
    auth(&self::tenants(&db), app_id, key.expose(), NOW).await.unwrap();
    assert_eq!(tenants.key_hash_forms(NOW).await.unwrap(), (0, 1));
}

async fn a_legacy_argon2_key_is_checked_once_then_upgraded(db: Backend) {
    let tenants = tenants(&db);
    let (app, key) = create(&tenants, "old").await;
    let app_id = app.app.app_id;
    let legacy = make_legacy(&tenants, app_id, &key).await;
    assert_eq!(tenants.key_hash_forms(NOW).await.unwrap(), (1, 0));
    // A wrong key against an argon2id hash runs argon2, and changes nothing.
    assert_denied(auth(&tenants, app_id, AppKey::generate().expose(), NOW).await, "a wrong key");
    assert_eq!(tenants.argon2_runs(), 1);
    let stored = tenants.store().get_app(app_id).await.unwrap().unwrap();
    assert_eq!(stored.key.current, legacy, "a refused key upgrades nothing");

    auth(&tenants, app_id, key.expose(), NOW).await.unwrap();
    assert_eq!(tenants.argon2_runs(), 2, "the right key: argon2 once more");
    let stored = tenants.store().get_app(app_id).await.unwrap().unwrap();
    assert!(stored.key.current.starts_with("hmac-sha256$"), "upgraded: {:?}", stored.key);
    assert_eq!(tenants.key_hash_forms(NOW).await.unwrap(), (0, 1));
    for i in 0..20 {
        auth(&tenants, app_id, key.expose(), NOW + i).await.unwrap();
    }
    assert_eq!(tenants.argon2_runs(), 2, "later checks are keyed");
    assert_eq!(tenants.key_check_counts().keyed, 20);
    // A fresh process checks the upgraded key without argon2 too.
    let fresh = self::tenants(&db);
    auth(&fresh, app_id, key.expose(), NOW).await.unwrap();
    assert_eq!(fresh.argon2_runs(), 0);
}

async fn a_rotated_app_key_keeps_the_old_one_only_during_the_grace(db: Backend) {
    let tenants = tenants(&db);
    let (app, old) = create(&tenants, "rotating").await;
    let app_id = app.app.app_id;
    auth(&tenants, app_id, old.expose(), NOW).await.unwrap();

    let rotated = tenants.rotate_app_key(app_id, 600, NOW).await.unwrap();
    assert_eq!(rotated.app_id, app_id);
    assert_eq!(rotated.previous_valid_until, Some(NOW + 600));
    assert_ne!(rotated.app_key.expose(), old.expose());
    let new = rotated.app_key;

    auth(&tenants, app_id, new.expose(), NOW).await.unwrap();
    auth(&tenants, app_id, old.expose(), NOW).await.unwrap();
    auth(&tenants, app_id, old.expose(), NOW + 599).await.unwrap();
    assert_denied(
        auth(&tenants, app_id, old.expose(), NOW + 600).await,
        "the old key at the end of the grace",
    );
    assert_denied(
        auth(&tenants, app_id, old.expose(), NOW + 601).await,
        "the old key after the grace",
    );
    auth(&tenants, app_id, new.expose(), NOW + 100_000).await.unwrap();

    let stored = tenants.store().get_app(app_id).await.unwrap().unwrap();
    assert_eq!(stored.key.previous.as_deref(), Some(app.key.current.as_str()));
    assert_eq!(stored.key.previous_expires_at, Some(NOW + 600));
    assert_eq!(stored.app.updated_at, NOW);

    // A fresh process (empty caches) agrees.
    let fresh = self::tenants(&db);
    auth(&fresh, app_id, old.expose(), NOW + 10).await.unwrap();
    assert_denied(
        auth(&fresh, app_id, old.expose(), NOW + 600).await,
        "the old key, fresh process",
    );
}

async fn a_rotation_without_grace_stops_the_old_key_at_once(db: Backend) {
    let tenants = tenants(&db);
    let (app, old) = create(&tenants, "strict").await;
    let app_id = app.app.app_id;
    auth(&tenants, app_id, old.expose(), NOW).await.unwrap(); // now cached

    let rotated = tenants.rotate_app_key(app_id, 0, NOW).await.unwrap();
    assert_eq!(rotated.previous_valid_until, None);
    assert_denied(auth(&tenants, app_id, old.expose(), NOW).await, "the old key, same second");
    auth(&tenants, app_id, rotated.app_key.expose(), NOW).await.unwrap();
    let stored = tenants.store().get_app(app_id).await.unwrap().unwrap();
    assert_eq!((stored.key.previous, stored.key.previous_expires_at), (None, None));
}

async fn a_legacy_previous_key_is_upgraded_within_its_grace(db: Backend) {
    let tenants = tenants(&db);
    let (app, old) = create(&tenants, "cached").await;
    let app_id = app.app.app_id;
    let legacy = make_legacy(&tenants, app_id, &old).await;
    // A rotation with a grace keeps the old argon2id hash as the previous one.
    let rotated = tenants.rotate_app_key(app_id, 600, NOW).await.unwrap();
    let stored = tenants.store().get_app(app_id).await.unwrap().unwrap();
    assert_eq!(stored.key.previous.as_deref(), Some(legacy.as_str()));
    assert_eq!(tenants.key_hash_forms(NOW).await.unwrap(), (1, 1));
    assert_eq!(tenants.key_hash_forms(NOW + 600).await.unwrap(), (0, 1), "past its grace");

    auth(&tenants, app_id, old.expose(), NOW + 1).await.unwrap();
    assert_eq!(tenants.argon2_runs(), 1);
    let stored = tenants.store().get_app(app_id).await.unwrap().unwrap();
    let previous = stored.key.previous.clone().unwrap();
    assert!(previous.starts_with("hmac-sha256$"), "the previous hash upgraded: {previous}");
    assert_ne!(stored.key.current, previous);
    assert_eq!(stored.key.previous_expires_at, Some(NOW + 600), "the grace is unchanged");
    auth(&tenants, app_id, old.expose(), NOW + 2).await.unwrap();
    auth(&tenants, app_id, rotated.app_key.expose(), NOW + 2).await.unwrap();
    assert_eq!(tenants.argon2_runs(), 1, "both keys now keyed");
    assert_denied(auth(&tenants, app_id, old.expose(), NOW + 600).await, "after the grace");
}

async fn app_key_rotation_validates_the_grace(db: Backend) {
    let tenants = tenants(&db);
    let (app, key) = create(&tenants, "graceful").await;
    let app_id = app.app.app_id;
    for grace in [-1, 7 * 24 * 3600 + 1, i64::MAX] {
        let err = tenants.rotate_app_key(app_id, grace, NOW).await.unwrap_err();
        assert_eq!(fields(&err), ["grace"], "grace {grace}");
    }
    assert_eq!(
        tenants.store().get_app(app_id).await.unwrap().unwrap().key,
        app.key,
        "no rotation happened"
    );
    auth(&tenants, app_id, key.expose(), NOW).await.unwrap();
    let longest = tenants.rotate_app_key(app_id, 7 * 24 * 3600, NOW).await.unwrap();
    assert_eq!(longest.previous_valid_until, Some(NOW + 7 * 24 * 3600));
}

async fn another_process_sees_a_rotated_app_key(db: Backend) {
    let admin = tenants(&db);
    let gateway = Tenants::new(
        app_store(&db),
        TenantsConfig {
            cache_ttl: Duration::ZERO,
            ..TenantsConfig::new(KeyHashKey::from_bytes(&[7; 32]).unwrap())
        },
    );
    let (app, old) = create(&admin, "shared").await;
    let app_id = app.app.app_id;
    auth(&gateway, app_id, old.expose(), NOW).await.unwrap();

    let rotated = admin.rotate_app_key(app_id, 0, NOW).await.unwrap();
    assert_denied(
        auth(&gateway, app_id, old.expose(), NOW).await,
        "the old key in the other process",
    );
    auth(&gateway, app_id, rotated.app_key.expose(), NOW).await.unwrap();
}

async fn a_deleted_app_no_longer_authenticates(db: Backend) {
    let tenants = tenants(&db);
    let (app, key) = create(&tenants, "short-lived").await;
    let app_id = app.app.app_id;
    auth(&tenants, app_id, key.expose(), NOW).await.unwrap(); // cached
    tenants.delete_app(app_id).await.unwrap();
    assert_denied(auth(&tenants, app_id, key.expose(), NOW).await, "a deleted app");
}

// ---------------------------------------------------------------- the root key

async fn a_generated_root_key_is_returned_once(db: Backend) {
    let tenants = tenants(&db);
    assert_denied(tenants.authenticate_root(Some("kgr_anything-at-all")).await, "no root key yet");

    let key = tenants.ensure_root_key(None).await.unwrap().expect("a new root key is returned");
    assert!(key.expose().starts_with("kgr_"));
    assert!(key.expose().len() >= 32);
    tenants.authenticate_root(Some(key.expose())).await.unwrap();

    assert!(tenants.ensure_root_key(None).await.unwrap().is_none(), "never shown twice");
    let supplied = "operator-chosen-root-key-0123456789";
    assert!(tenants.ensure_root_key(Some(supplied)).await.unwrap().is_none());
    assert_denied(
        tenants.authenticate_root(Some(supplied)).await,
        "a late KEYGATE_ROOT_KEY is ignored",
    );
    tenants.authenticate_root(Some(key.expose())).await.unwrap();

    assert_denied(tenants.authenticate_root(None).await, "no root key presented");
    assert_denied(tenants.authenticate_root(Some("kgr_wrong")).await, "a wrong root key");
    assert_denied(
        tenants.authenticate_root(Some(&"k".repeat(10 * 1024))).await,
        "a 10 KB root key",
    );

    // Stored only hashed.
    let settings = raw_settings(&db).await;
    assert_eq!(settings.len(), 1, "{settings:?}");
    assert!(settings.iter().all(|(_, value)| value.starts_with("hmac-sha256$")));
    assert!(settings.iter().all(|(_, value)| !value.contains(&key.expose()[4..])));

    // Another process authenticates the same key.
    let fresh = self::tenants(&db);
    fresh.authenticate_root(Some(key.expose())).await.unwrap();
}

async fn a_supplied_root_key_is_used_and_not_returned(db: Backend) {
    let tenants = tenants(&db);
    let supplied = "operator-chosen-root-key-0123456789";
    assert!(
        tenants.ensure_root_key(Some(supplied)).await.unwrap().is_none(),
        "the operator knows it"
    );
    tenants.authenticate_root(Some(supplied)).await.unwrap();
    assert!(tenants.ensure_root_key(None).await.unwrap().is_none(), "a root key exists");
    tenants.authenticate_root(Some(supplied)).await.unwrap();
    let settings = raw_settings(&db).await;
    assert!(
        settings.iter().all(|(_, value)| !value.contains(supplied)),
        "never stored in the clear"
    );
}

async fn a_malformed_supplied_root_key_is_refused(db: Backend) {
    let tenants = tenants(&db);
    for bad in ["short", "has spaces in it but is long enough to pass", &"x".repeat(257)] {
        let err = tenants.ensure_root_key(Some(bad)).await.unwrap_err();
        assert_eq!(fields(&err), ["KEYGATE_ROOT_KEY"], "{bad:?}");
    }
    assert_eq!(raw_settings(&db).await, vec![], "no root key was stored");
    assert!(tenants.ensure_root_key(None).await.unwrap().is_some(), "bootstrap is still possible");
}

async fn rotating_the_root_key_voids_the_old_one(db: Backend) {
    let tenants = tenants(&db);
    let old = tenants.ensure_root_key(None).await.unwrap().unwrap();
    tenants.authenticate_root(Some(old.expose())).await.unwrap(); // cached

    let new = tenants.rotate_root_key().await.unwrap();
    assert_ne!(new.expose(), old.expose());
    assert_denied(tenants.authenticate_root(Some(old.expose())).await, "the old root key");
    tenants.authenticate_root(Some(new.expose())).await.unwrap();
    assert!(tenants.ensure_root_key(None).await.unwrap().is_none());

    let fresh = self::tenants(&db);
    assert_denied(
        fresh.authenticate_root(Some(old.expose())).await,
        "the old root key, fresh process",
    );
    fresh.authenticate_root(Some(new.expose())).await.unwrap();
}

async fn a_legacy_root_key_is_upgraded_on_its_first_check(db: Backend) {
    let tenants = tenants(&db);
    let key = tenants.ensure_root_key(None).await.unwrap().unwrap();
    let legacy = hash_secret(key.expose()).unwrap();
    tenants.store().put_setting("root_key_hash", &legacy).await.unwrap();
    tenants.forget_root();
    assert_eq!(tenants.key_hash_forms(NOW).await.unwrap(), (1, 0));
    // A supplied KEYGATE_ROOT_KEY is compared with the argon2id hash too.
    assert!(tenants.ensure_root_key(Some(key.expose())).await.unwrap().is_none());
    assert_denied(
        tenants.authenticate_root(Some("kgr_not_the_root_key_0123456789")).await,
        "wrong",
    );
    tenants.authenticate_root(Some(key.expose())).await.unwrap();
    assert_eq!(tenants.argon2_runs(), 2);
    let settings = raw_settings(&db).await;
    assert!(settings[0].1.starts_with("hmac-sha256$"), "upgraded: {settings:?}");
    tenants.authenticate_root(Some(key.expose())).await.unwrap();
    self::tenants(&db).authenticate_root(Some(key.expose())).await.unwrap();
    assert_eq!(tenants.argon2_runs(), 2);
    assert_eq!(tenants.key_hash_forms(NOW).await.unwrap(), (0, 1));
}

async fn warm_fills_the_cache_with_every_app_in_one_read(db: Backend) {
    let tenants = tenants(&db);
    let (one, key) = create(&tenants, "one").await;
    create(&tenants, "two").await;
    let other = Tenants::new(
        app_store(&db),
        TenantsConfig {
            cache_ttl: Duration::from_secs(3600),
            ..TenantsConfig::new(KeyHashKey::from_bytes(&[7; 32]).unwrap())
        },
    );
    assert_eq!(other.warm().await.unwrap(), 2);
    // Renamed behind its back (no change announced): the warmed process still has the app
    // as it read it, and checks its key without reading.
    execute(&db, Sql::new("UPDATE apps SET name = 'renamed' WHERE name = 'one'")).await;
    let cached = other.app(one.app.app_id).await.unwrap().unwrap();
    assert_eq!(cached.app.name, "one");
    auth(&other, one.app.app_id, key.expose(), NOW).await.unwrap();
    assert_eq!(tenants.store().get_app(one.app.app_id).await.unwrap().unwrap().app.name, "renamed");
}
