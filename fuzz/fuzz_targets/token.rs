//! Presented tokens: the header check, the signature, the claims decoders, and the
//! session checks of `/renew` and `/verify`, on a real gateway stack over SQLite.
//!
//! The first input byte chooses how the rest is used: as a whole token, or as edits
//! (position, byte) applied to a genuine refresh or auth token, so the fuzzer reaches the
//! signature and claims checks instead of stopping at the base64.
//! Nothing but the exact issued tokens may verify, and no input may cause a server-side
//! error or a panic.
#![no_main]

use std::sync::OnceLock;

use keygate_gateway::{admin, Services, Settings};
use keygate_sessions::{SessionError, SignInput};
use keygate_tenants::{App, SettingsPatch};
use libfuzzer_sys::fuzz_target;
use serde_json::json;

struct Fixture {
    runtime: tokio::runtime::Runtime,
    services: Services,
    app: App,
    refresh: String,
    auth: String,
    _dir: tempfile::TempDir,
}

fn now() -> i64 {
    let elapsed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    elapsed.map(|d| d.as_secs() as i64).unwrap_or(0)
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        let settings = Settings {
            data_dir: dir.path().to_owned(),
            root_key: Some(format!("kgr_fuzz_{}", "x".repeat(40))),
            janitor_interval: 0,
            ..Settings::default()
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let (services, app, refresh, auth) = runtime.block_on(async {
            let (services, _) = Services::open(&settings).await.expect("services");
            let patch = SettingsPatch { name: Some("fuzz".into()), ..SettingsPatch::default() };
            let created = admin::create_app(&services, &patch, now()).await.expect("app");
            let record = services.tenants.app(created.app_id).await.expect("read").expect("app");
            let app = record.app.clone();
            let body = json!({"sub": "fuzz", "ip": "203.0.113.7", "useragent": "fuzz"});
            let input = SignInput::parse(body.as_object().expect("object").clone()).expect("input");
            let issued = services.sessions.sign(&app, input, now()).await.expect("sign");
            (services, app, issued.refresh_token, issued.auth_token)
        });
        Fixture { runtime, services, app, refresh, auth, _dir: dir }
    })
}

/// Applies (position, byte) edits to `base`.
fn edited(base: &str, edits: &[u8]) -> Vec<u8> {
    let mut bytes = base.as_bytes().to_vec();
    for pair in edits.chunks_exact(2) {
        let at = usize::from(pair[0]) * bytes.len() / 256;
        match pair[1] {
            0 => bytes.truncate(at),
            1 => {
                bytes.remove(at.min(bytes.len().saturating_sub(1)));
            }
            byte => bytes.insert(at, byte),
        }
        if bytes.is_empty() {
            break;
        }
    }
    bytes
}

fuzz_target!(|data: &[u8]| {
    let Some((mode, rest)) = data.split_first() else { return };
    let f = fixture();
    let candidate = match mode % 3 {
        0 => rest.to_vec(),
        1 => edited(&f.refresh, rest),
        _ => edited(&f.auth, rest),
    };
    let Ok(token) = std::str::from_utf8(&candidate) else { return };
    let _ = keygate_keyring::inspect(token);
    f.runtime.block_on(async {
        match f.services.sessions.verify_refresh(&f.app, token, now()).await {
            Ok(_) => assert_eq!(token, f.refresh, "a token that was never issued verified"),
            Err(SessionError::Rejected(_)) => {}
            Err(other) => panic!("bad input caused a server-side error: {other}"),
        }
        match f.services.sessions.verify(&f.app, token, now()).await {
            Ok(answer) if answer.verified => {
                assert_eq!(token, f.auth, "an auth token that was never issued verified")
            }
            Ok(_) => {}
            Err(other) => panic!("bad input caused a server-side error: {other}"),
        }
    });
});
