//! The janitor deletes sessions that ended long ago and retired keys whose tokens have all
//! expired, and nothing else.

use keygate_gateway::{admin, janitor, Services, Settings};
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
    let created = admin::create_app(&services, &patch, now).await.unwrap();
    let app = admin::get_app(&services, created.app_id).await.unwrap().app;
    let ended = services.sessions.sign(&app, sign_input("old"), now).await.unwrap();
    let rotation = admin::rotate_keys(&services, app.app_id, now + 10).await.unwrap();
    let live = services.sessions.sign(&app, sign_input("new"), now + 7000).await.unwrap();

    // Nothing has ended long enough yet.
    let report = janitor::run_once(&services, now + 7100).await.unwrap();
    assert_eq!(
        report,
        janitor::Report { sessions: 0, keys: 1 },
        "the retired key's tokens expired after 3600 s"
    );
    let keys = services.keyring.list(app.app_id).await.unwrap();
    assert!(keys.iter().all(|k| k.key_id != rotation.retired_key_id));

    // A day after the first session's absolute expiry it goes; the live one stays.
    let report = janitor::run_once(&services, now + 7200 + 86_400 + 1).await.unwrap();
    assert_eq!(report.sessions, 1);
    let store = services.sessions.store();
    assert!(store.get(app.app_id, ended.session_id).await.unwrap().is_none());
    assert!(store.get(app.app_id, live.session_id).await.unwrap().is_some());
}

#[tokio::test]
async fn sqlite() {
    let (services, _dir) = services(None).await;
    the_janitor_deletes_only_what_has_ended(services).await;
}

#[tokio::test]
async fn postgres() {
    let Some(url) = keygate_tenants::db::testing::postgres_url().await else { return };
    let (services, _dir) = services(Some(url)).await;
    the_janitor_deletes_only_what_has_ended(services).await;
}
