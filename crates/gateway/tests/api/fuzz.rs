//! Property-based fuzzing of the same entry points as the coverage-guided targets in
//! `fuzz/`: the JSON body decoder with the `/sign` and `/renew` validators, and presented
//! tokens (whole, or a genuine token with random edits) through the real token checks of
//! a gateway over SQLite. Nothing but the issued tokens may verify, nothing may panic, and
//! bad input never causes a server-side error.

use std::net::IpAddr;
use std::sync::OnceLock;

use keygate_gateway::http::extract::parse;
use keygate_gateway::usecases::admin;
use keygate_gateway::{clock, Services, Settings};
use keygate_keyring::MAX_TOKEN_LEN;
use keygate_sessions::{
    token_field, RenewInput, SessionError, SignInput, MAX_SUB, MAX_USERAGENT, RESERVED_CLAIMS,
};
use keygate_tenants::{App, SettingsPatch};
use proptest::prelude::*;
use serde_json::{json, Map, Value};

struct Fixture {
    runtime: tokio::runtime::Runtime,
    services: Services,
    app: App,
    refresh: String,
    auth: String,
    _dir: tempfile::TempDir,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let settings = Settings {
            data_dir: dir.path().to_owned(),
            root_key: Some(format!("kgr_fuzz_{}", ulid::Ulid::new()).into()),
            janitor_interval: 0,
            ..Settings::default()
        };
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let (services, app, refresh, auth) = runtime.block_on(async {
            let (services, _) = Services::open(&settings).await.unwrap();
            let patch = SettingsPatch { name: Some("fuzz".into()), ..SettingsPatch::default() };
            let created = admin::create_app(&services, &patch, admin::Actor::Cli, clock::now())
                .await
                .unwrap();
            let app = services.tenants.app(created.app_id).await.unwrap().unwrap().app.clone();
            let body = json!({"sub": "fuzz", "ip": "203.0.113.7", "useragent": "fuzz"});
            let input = SignInput::parse(body.as_object().unwrap().clone()).unwrap();
            let issued = services.sessions.sign(&app, input, clock::now()).await.unwrap();
            (services, app, issued.refresh_token, issued.auth_token)
        });
        Fixture { runtime, services, app, refresh, auth, _dir: dir }
    })
}

/// One edit of a token: truncate, delete, replace or insert at a relative position.
#[derive(Debug, Clone)]
enum Edit {
    Truncate(u8),
    Delete(u8),
    Replace(u8, u8),
    Insert(u8, u8),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        any::<u8>().prop_map(Edit::Truncate),
        any::<u8>().prop_map(Edit::Delete),
        (any::<u8>(), any::<u8>()).prop_map(|(at, b)| Edit::Replace(at, b)),
        (any::<u8>(), any::<u8>()).prop_map(|(at, b)| Edit::Insert(at, b)),
    ]
}

fn apply(base: &str, edits: &[Edit]) -> Vec<u8> {
    let mut bytes = base.as_bytes().to_vec();
    for edit in edits {
        let at = |pos: u8, len: usize| usize::from(pos) * len / 256;
        match *edit {
            Edit::Truncate(pos) => bytes.truncate(at(pos, bytes.len())),
            Edit::Delete(pos) if !bytes.is_empty() => {
                bytes.remove(at(pos, bytes.len()));
            }
            Edit::Replace(pos, byte) if !bytes.is_empty() => {
                let i = at(pos, bytes.len());
                bytes[i] = byte;
            }
            Edit::Insert(pos, byte) => bytes.insert(at(pos, bytes.len() + 1), byte),
            _ => {}
        }
    }
    bytes
}

/// The checks of the token target: only the issued tokens verify, and nothing fails on
/// our side.
fn check_token(candidate: &[u8]) {
    let Ok(token) = std::str::from_utf8(candidate) else { return };
    let f = fixture();
    let _ = keygate_keyring::inspect(token);
    f.runtime.block_on(async {
        match f.services.sessions.verify_refresh(&f.app, token, clock::now()).await {
            Ok(_) => assert_eq!(token, f.refresh, "a token that was never issued verified"),
            Err(SessionError::Rejected(_)) => {}
            Err(other) => panic!("bad input caused a server-side error: {other}"),
        }
        match f.services.sessions.verify(&f.app, token, clock::now()).await {
            Ok(answer) if answer.verified => {
                assert_eq!(token, f.auth, "an auth token that was never issued verified")
            }
            Ok(_) => {}
            Err(other) => panic!("bad input caused a server-side error: {other}"),
        }
    });
}

/// The checks of the request target.
fn check_body(data: &[u8]) {
    let Ok(body) = parse::<Map<String, Value>>(data) else { return };
    if let Ok(input) = RenewInput::parse(&body) {
        assert!(!input.refresh_token.is_empty() && input.refresh_token.len() <= MAX_TOKEN_LEN);
        assert!(input.useragent.len() <= MAX_USERAGENT && !input.useragent.contains('\0'));
        let canonical = input.ip.parse::<IpAddr>().map(|ip| ip.to_string()).ok();
        assert_eq!(canonical.as_deref(), Some(input.ip.as_str()));
    }
    if let Ok(input) = SignInput::parse(body.clone()) {
        assert!(!input.sub.is_empty() && input.sub.len() <= MAX_SUB && !input.sub.contains('\0'));
        assert!(input.custom.keys().all(|k| !RESERVED_CLAIMS.contains(&k.as_str())));
    }
    if let Ok(token) = token_field(&body, "token") {
        assert!(!token.is_empty() && token.len() <= MAX_TOKEN_LEN);
    }
}

/// JSON-shaped text: objects of the fields the validators read, with values of every type.
fn json_body() -> impl Strategy<Value = Vec<u8>> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        "\\PC{0,40}".prop_map(Value::String),
        prop_oneof![
            Just("127.1"),
            Just("::ffff:1.2.3.4"),
            Just("203.0.113.7"),
            Just("fe80::1%eth0")
        ]
        .prop_map(|s| Value::String(s.into())),
    ];
    let value = leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z]{1,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    });
    let names = prop_oneof![
        Just("sub".to_owned()),
        Just("ip".to_owned()),
        Just("useragent".to_owned()),
        Just("refresh_token".to_owned()),
        Just("token".to_owned()),
        Just("aud".to_owned()),
        Just("exp".to_owned()),
        "\\PC{0,8}",
    ];
    prop::collection::vec((names, value), 0..6).prop_map(|fields| {
        let object: Map<String, Value> = fields.into_iter().collect();
        serde_json::to_vec(&object).unwrap()
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn any_bytes_as_a_body(data in prop::collection::vec(any::<u8>(), 0..256)) {
        check_body(&data);
    }

    #[test]
    fn json_bodies(data in json_body()) {
        check_body(&data);
    }

    #[test]
    fn any_text_as_a_token(token in "\\PC{0,300}") {
        check_token(token.as_bytes());
    }

    #[test]
    fn edited_refresh_tokens(edits in prop::collection::vec(edit(), 1..4)) {
        check_token(&apply(&fixture().refresh, &edits));
    }

    #[test]
    fn edited_auth_tokens(edits in prop::collection::vec(edit(), 1..4)) {
        check_token(&apply(&fixture().auth, &edits));
    }
}
