//! The background jobs: scheduled key rotation, one gateway at a time on Postgres, and the
//! janitor, which deletes sessions that ended long ago and retired keys whose tokens have
//! all expired, and nothing else.

use keygate_gateway::usecases::{admin, maintenance};
use keygate_gateway::{Services, Settings};
use keygate_keyring::KeyState;
use keygate_sessions::SignInput;
use keygate_tenants::SettingsPatch;
use serde_json::json;

async fn services(backend_url: Option<String>) -> (Services, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let settings = Settings {
        database_url: backend_url,
        data_dir: dir.path().to_owned(),
        root_key: Some("kgr_janitor_test_root_key_0000000000000".into()),
        ..Settings::default()
    };
    (Services::open(&settings).await.unwrap().0, dir)
}

fn sign_input(sub: &str) -> SignInput {
    let body = json!({"sub": sub, "ip": "1.1.1.1", "useragent": "ua"});
    SignInput::parse(body.as_object().unwrap().clone()).unwrap()
}

async fn the_janitor_deletes_only_what_has_ended(services: Services) {
    let now = 1_800_000_000;
    let patch = SettingsPatch {
        name: Some("janitor".into()),
        token_expire: Some(600),
        refresh_expire: Some(3600),
        session_max_age: Some(7200),
        ..SettingsPatch::default()
    };
    let created = admin::create_app(&services, &patch, admin::Actor::Cli, now).await.unwrap();
    let app = admin::get_app(&services, created.app_id).await.unwrap().app;
    let ended = services.sessions.sign(&app, sign_input("old"), now).await.unwrap();
    let rotation =
        admin::rotate_keys(&services, app.app_id, admin::Actor::Cli, now + 10).await.unwrap();
    let live = services.sessions.sign(&app, sign_input("new"), now + 7000).await.unwrap();

    // Nothing has ended long enough yet.
    let report = maintenance::run_once(&services, now + 7100).await.unwrap();
    assert_eq!(
        report,
        maintenance::Report { rotated: 0, sessions: 0, keys: 1 },
        "the retired key's tokens expired after 3600 s"
    );
    let keys = services.keyring.list(app.app_id).await.unwrap();
    assert!(keys.iter().all(|k| k.key_id != rotation.retired_key_id));

    // A day after the first session's absolute expiry it goes; the live one stays.
    let report = maintenance::run_once(&services, now + 7200 + 86_400 + 1).await.unwrap();
    assert_eq!(report.sessions, 1);
    let store = services.sessions.store();
    assert!(store.get(app.app_id, ended.session_id).await.unwrap().is_none());
    assert!(store.get(app.app_id, live.session_id).await.unwrap().is_some());

    // Audit events go after `audit_retention_days` (90 by default), and no sooner.
    let events = services.audit.store();
    let at = |created_at: i64, kind: &str| keygate_tenants::events::Event {
        event_id: ulid::Ulid::new().to_string(),
        app_id: app.app_id.to_string(),
        kind: kind.into(),
        actor: "cli".into(),
        detail: json!({}),
        created_at,
    };
    let later = now + 200 * 86_400;
    events.record(&at(later - 91 * 86_400, "old")).await.unwrap();
    events.record(&at(later - 89 * 86_400, "recent")).await.unwrap();
    maintenance::run_once(&services, later).await.unwrap();
    let kept: Vec<_> = events.list(app.app_id, None, None, 500).await.unwrap();
    assert!(kept.iter().any(|e| e.kind == "recent"));
    assert!(!kept.iter().any(|e| e.kind == "old"));
}

#[tokio::test]
async fn sqlite() {
    let (services, _dir) = services(None).await;
    the_janitor_deletes_only_what_has_ended(services).await;
}

#[cfg_attr(
    not(postgres_tests),
    ignore = "Postgres: needs TEST_DATABASE_URL when built (just test-pg)"
)]
#[tokio::test]
async fn postgres() {
    let Some(url) = keygate_store::testing::postgres_url().await else { return };
    let (services, _dir) = services(Some(url)).await;
    the_janitor_deletes_only_what_has_ended(services).await;
}

/// Scheduled rotation, with time as a parameter: due after `rotation_period`, and only
/// once the next key has been published for the JWKS max-age (300 s by default).
async fn scheduled_rotation_promotes_the_published_next_key(services: Services) {
    let now = 1_800_000_000;
    let patch = SettingsPatch {
        name: Some("scheduled".into()),
        rotation_period: Some(3600),
        ..SettingsPatch::default()
    };
    let created = admin::create_app(&services, &patch, admin::Actor::Cli, now).await.unwrap();
    let keys = services.keyring.list(created.app_id).await.unwrap();
    let next = keys.iter().find(|k| k.state == KeyState::Next).unwrap().key_id;
    assert_eq!(maintenance::rotate_due(&services, now + 3599).await.unwrap(), 0, "not yet due");
    let report = maintenance::run_once(&services, now + 3600).await.unwrap();
    assert_eq!(report.rotated, 1, "due: {report:?}");
    let keys = services.keyring.list(created.app_id).await.unwrap();
    let state = |id| keys.iter().find(|k| k.key_id == id).unwrap().state;
    assert_eq!(state(next), KeyState::Active, "the published next key signs now");
    assert_eq!(state(created.key_id), KeyState::Retired);
    // The new next key was published just now: the next rotation waits for the period.
    assert_eq!(maintenance::rotate_due(&services, now + 3700).await.unwrap(), 0);
    assert_eq!(maintenance::rotate_due(&services, now + 7200).await.unwrap(), 1);
}

#[tokio::test]
async fn scheduled_rotation_sqlite() {
    let (services, _dir) = services(None).await;
    scheduled_rotation_promotes_the_published_next_key(services).await;
}

#[cfg_attr(
    not(postgres_tests),
    ignore = "Postgres: needs TEST_DATABASE_URL when built (just test-pg)"
)]
#[tokio::test]
async fn scheduled_rotation_postgres() {
    let Some(url) = keygate_store::testing::postgres_url().await else { return };
    let (services, _dir) = services(Some(url)).await;
    scheduled_rotation_promotes_the_published_next_key(services).await;
}

/// Of the gateways on one Postgres schema, only the one holding the jobs lock runs a
/// pass; on SQLite every pass runs.
#[tokio::test]
async fn one_gateway_at_a_time_runs_the_jobs() {
    let (embedded, _dir) = services(None).await;
    assert!(maintenance::run_elected(&embedded, 1_800_000_000).await.unwrap().is_some());

    let Some(url) = keygate_store::testing::postgres_url().await else { return };
    let (gateway, _dir) = services(Some(url.clone())).await;
    // Another gateway of the same schema is running a pass: it holds the lock.
    let other = sqlx::PgPool::connect(&url).await.unwrap();
    let mut tx = other.begin().await.unwrap();
    let held: bool =
        sqlx::query_scalar(keygate_store::jobs::TRY_JOBS_LOCK).fetch_one(&mut *tx).await.unwrap();
    assert!(held);
    assert_eq!(maintenance::run_elected(&gateway, 1_800_000_000).await.unwrap(), None);
    // A gateway on another schema of the same database elects on its own.
    let Some(elsewhere) = keygate_store::testing::postgres_url().await else { return };
    let (separate, _dir2) = services(Some(elsewhere)).await;
    assert!(maintenance::run_elected(&separate, 1_800_000_000).await.unwrap().is_some());
    // Once that pass ends, the lock is free again.
    tx.rollback().await.unwrap();
    assert!(maintenance::run_elected(&gateway, 1_800_000_000).await.unwrap().is_some());
}
