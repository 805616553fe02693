//! Operations: `/metrics`, the audit trail (`/root/apps/{id}/events`) and webhooks.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use hmac::{Hmac, Mac};
use reqwest::Method;
use serde_json::{json, Value};
use sha2::Sha256;

use crate::helpers::{assert_error, parts, spawn_app_with, Backend, CreatedApp, TestApp};
use crate::on_both_backends;

/// The value of one sample of `/metrics`, or 0 when it is not there (yet).
pub(crate) async fn metric(app: &TestApp, sample: &str) -> f64 {
    let response = app.request(Method::GET, "/metrics").send().await.unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let text = response.text().await.unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// Signs, renews once, then presents the first refresh token again from another agent:
/// reuse. Returns the session id.
async fn reuse(app: &TestApp, created: &CreatedApp) -> String {
    let issued = app.sign(created, "user-1").await;
    let (status, renewed) = app.renew(created, &issued["refresh_token"]).await;
    assert_eq!(status, 200, "{renewed}");
    let (status, body) = app.renew_as(created, &issued["refresh_token"], "other-agent").await;
    assert_eq!(status, 401, "{body}");
    issued["session_id"].as_str().unwrap().to_owned()
}

async fn metrics_count_renew_outcomes_and_requests(app: TestApp) {
    let created = app.create_app(json!({"name": "metered"})).await;
    let reuse_line = r#"keygate_renew_total{outcome="reuse_detected"}"#;
    assert_eq!(metric(&app, reuse_line).await, 0.0);
    reuse(&app, &created).await;
    assert_eq!(metric(&app, reuse_line).await, 1.0);
    assert_eq!(metric(&app, r#"keygate_renew_total{outcome="rotated"}"#).await, 1.0);
    assert_eq!(metric(&app, "keygate_sessions_opened_total").await, 1.0);
    assert_eq!(metric(&app, r#"keygate_sessions_revoked_total{reason="reuse"}"#).await, 1.0);
    let renews_401 =
        r#"keygate_http_requests_total{method="POST",route="/app/{app_id}/renew",status="401"}"#;
    assert_eq!(metric(&app, renews_401).await, 1.0);
    let renew_count = r#"keygate_http_request_duration_seconds_count{method="POST",route="/app/{app_id}/renew",status="200"}"#;
    assert_eq!(metric(&app, renew_count).await, 1.0);
    // The root key and the app key are checked by their keyed hashes: no argon2.
    assert!(metric(&app, r#"keygate_key_checks_total{by="keyed"}"#).await >= 4.0);
    assert_eq!(metric(&app, r#"keygate_key_checks_total{by="argon2"}"#).await, 0.0);
    assert_eq!(metric(&app, r#"keygate_key_hashes{form="keyed"}"#).await, 2.0, "app and root");
    assert_eq!(metric(&app, r#"keygate_key_hashes{form="argon2id"}"#).await, 0.0);
    // A garbage token is an invalid renew.
    let (status, _) = app.renew(&created, &json!("not.a.token")).await;
    assert_eq!(status, 401);
    assert_eq!(metric(&app, r#"keygate_renew_total{outcome="invalid"}"#).await, 1.0);
    // Key rotations and revocations through the root API.
    let path = format!("/root/apps/{}/keys/rotate", created.app_id);
    assert_eq!(app.root(Method::POST, &path).send().await.unwrap().status(), 200);
    assert_eq!(metric(&app, r#"keygate_key_rotations_total{trigger="manual"}"#).await, 1.0);
    // Paths that match no route share one label, whatever they are.
    app.request(Method::GET, "/no/such/thing").send().await.unwrap();
    let unmatched = r#"keygate_http_requests_total{method="GET",route="unmatched",status="404"}"#;
    assert_eq!(metric(&app, unmatched).await, 1.0);
    let text = app.request(Method::GET, "/metrics").send().await.unwrap().text().await.unwrap();
    // App ids label only the per-app request counts (one series per result, for apps that
    // made an authenticated request), never the HTTP series.
    for line in text.lines().filter(|line| line.contains(&created.app_id)) {
        assert!(line.starts_with("keygate_app_requests_total{"), "{line}");
    }
    let admitted =
        format!("keygate_app_requests_total{{app=\"{}\",result=\"admitted\"}}", created.app_id);
    assert!(metric(&app, &admitted).await >= 4.0);
    assert!(text.contains("keygate_db_pool_connections{"), "{text}");
}

async fn events_record_who_did_what_and_page(app: TestApp) {
    let created = app.create_app(json!({"name": "audited"})).await;
    let session_id = reuse(&app, &created).await;
    let path = format!("/root/apps/{}/events", created.app_id);
    let (status, page) = parts(app.root(Method::GET, &path).send().await.unwrap()).await;
    assert_eq!(status, 200, "{page}");
    let events = page["events"].as_array().unwrap();
    let kinds: Vec<&str> = events.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["reuse_detected", "app_created"], "newest first");
    assert_eq!(events[0]["actor"], "gateway");
    assert_eq!(events[0]["detail"]["session_id"], session_id.as_str());
    assert_eq!(events[0]["detail"]["revoked"], 1);
    assert_eq!(events[1]["actor"], "root");
    assert_eq!(page["next"], Value::Null);

    // The app revokes a subject; an admin revokes everything.
    let (status, _) = app.app_post(&created, "revoke", &json!({"sub": "user-1"})).await;
    assert_eq!(status, 200);
    let all = format!("/root/apps/{}/sessions", created.app_id);
    assert_eq!(app.root(Method::DELETE, &all).send().await.unwrap().status(), 200);

    // Pages of one event, following `next`.
    let mut seen = Vec::new();
    let mut seen_ids = Vec::new();
    let mut before: Option<String> = None;
    loop {
        let query = match &before {
            Some(id) => format!("{path}?limit=1&before={id}"),
            None => format!("{path}?limit=1"),
        };
        let (status, page) = parts(app.root(Method::GET, &query).send().await.unwrap()).await;
        assert_eq!(status, 200, "{page}");
        let events = page["events"].as_array().unwrap();
        if let Some(event) = events.first() {
            seen.push((event["kind"].as_str().unwrap().to_owned(), event["actor"].clone()));
            seen_ids.push(event["event_id"].as_str().unwrap().to_owned());
        }
        match page["next"].as_str() {
            Some(next) => before = Some(next.to_owned()),
            None => break,
        }
        assert!(seen.len() < 10, "paging does not end: {seen:?}");
    }
    let kinds: Vec<&str> = seen.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(kinds, ["sessions_revoked", "subject_revoked", "reuse_detected", "app_created"]);
    assert_eq!(seen[0].1, "root");
    assert_eq!(seen[1].1, "app");

    // One kind only, still newest first and paged.
    let (status, page) =
        parts(app.root(Method::GET, &format!("{path}?kind=reuse_detected")).send().await.unwrap())
            .await;
    assert_eq!(status, 200, "{page}");
    let kinds: Vec<&str> =
        page["events"].as_array().unwrap().iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["reuse_detected"]);
    let revoked = format!("{path}?kind=subject_revoked&limit=1&before={}", seen_ids[0]);
    let (status, page) = parts(app.root(Method::GET, &revoked).send().await.unwrap()).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["events"][0]["kind"], "subject_revoked");
    assert_eq!(page["events"].as_array().unwrap().len(), 1);
    let (status, body) =
        parts(app.root(Method::GET, &format!("{path}?kind=reuse")).send().await.unwrap()).await;
    assert_error(status, &body, 400, "invalid_request");
    assert_eq!(body["errors"][0]["error_field"], "kind");
    assert!(body["errors"][0]["error_message"].as_str().unwrap().contains("reuse_detected"));

    // Bad input and bad credentials change nothing and say why.
    let (status, body) =
        parts(app.root(Method::GET, &format!("{path}?limit=0")).send().await.unwrap()).await;
    assert_error(status, &body, 400, "invalid_request");
    assert_eq!(body["errors"][0]["error_field"], "limit");
    let (status, body) =
        parts(app.root(Method::GET, &format!("{path}?before=nope")).send().await.unwrap()).await;
    assert_error(status, &body, 400, "invalid_request");
    let (status, body) =
        parts(app.root(Method::GET, &format!("{path}?colour=red")).send().await.unwrap()).await;
    assert_error(status, &body, 400, "invalid_request");
    let (status, body) = parts(app.request(Method::GET, &path).send().await.unwrap()).await;
    assert_error(status, &body, 403, "invalid_client");
    let unknown = format!("/root/apps/{}/events", ulid::Ulid::new());
    let (status, body) = parts(app.root(Method::GET, &unknown).send().await.unwrap()).await;
    assert_error(status, &body, 404, "not_found");

    // The events of a deleted app are kept.
    let app_path = format!("/root/apps/{}", created.app_id);
    assert_eq!(app.root(Method::DELETE, &app_path).send().await.unwrap().status(), 200);
    let (status, page) = parts(app.root(Method::GET, &path).send().await.unwrap()).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["events"][0]["kind"], "app_deleted");
    assert_eq!(page["events"].as_array().unwrap().len(), 5);
}

on_both_backends!(metrics_count_renew_outcomes_and_requests, events_record_who_did_what_and_page);

/// What a webhook receiver got: headers and body of each delivery.
#[derive(Debug, Clone)]
struct Delivery {
    signature: String,
    event_id: String,
    body: Vec<u8>,
}

/// A webhook receiver on port 0 that fails the first `failures` deliveries with 500.
async fn receiver(failures: usize) -> (String, Arc<Mutex<Vec<Delivery>>>) {
    let got = Arc::new(Mutex::new(Vec::<Delivery>::new()));
    let attempts = Arc::new(Mutex::new(0usize));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let state = (got.clone(), attempts);
    let server = HttpServer::new(move || {
        let state = state.clone();
        App::new().route(
            "/hook",
            web::post().to(move |request: HttpRequest, body: web::Bytes| {
                let (got, attempts) = state.clone();
                async move {
                    let header = |name: &str| {
                        request.headers().get(name).unwrap().to_str().unwrap().to_owned()
                    };
                    let mut n = attempts.lock().unwrap();
                    *n += 1;
                    if *n <= failures {
                        return HttpResponse::InternalServerError().finish();
                    }
                    got.lock().unwrap().push(Delivery {
                        signature: header("keygate-signature"),
                        event_id: header("keygate-event-id"),
                        body: body.to_vec(),
                    });
                    HttpResponse::Ok().finish()
                }
            }),
        )
    })
    .workers(1)
    .listen(listener)
    .unwrap()
    .run();
    tokio::spawn(server);
    (format!("http://127.0.0.1:{port}/hook"), got)
}

/// Waits up to 10 s for the receiver to hold `n` deliveries.
async fn wait_for(got: &Arc<Mutex<Vec<Delivery>>>, n: usize) -> Vec<Delivery> {
    for _ in 0..200 {
        let now = got.lock().unwrap().clone();
        if now.len() >= n {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the receiver got {:?}, wanted {n} deliveries", got.lock().unwrap());
}

/// Checks `t=…,v1=…` against the secret, the way a receiver would.
fn check_signature(secret: &str, delivery: &Delivery) {
    let (t, v1) = delivery.signature.split_once(',').unwrap();
    let t = t.strip_prefix("t=").unwrap();
    let v1 = v1.strip_prefix("v1=").unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(t.as_bytes());
    mac.update(b".");
    mac.update(&delivery.body);
    let want: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(v1, want, "signature of {}", String::from_utf8_lossy(&delivery.body));
    let age = keygate_gateway::clock::now() - t.parse::<i64>().unwrap();
    assert!((0..60).contains(&age), "timestamp {t}");
}

async fn a_webhook_receives_signed_events_and_failures_are_retried(backend: Backend) {
    let Some(app) = spawn_app_with(backend, |s| {
        s.webhook_poll_ms = 100;
        s.webhook_retry_ms = 0;
    })
    .await
    else {
        return;
    };
    let created = app.create_app(json!({"name": "hooked"})).await;
    // The receiver fails the first delivery: it is retried.
    let (url, got) = receiver(1).await;
    let path = format!("/root/apps/{}/webhook", created.app_id);
    let (status, set) =
        parts(app.root(Method::PUT, &path).json(&json!({"url": url})).send().await.unwrap()).await;
    assert_eq!(status, 200, "{set}");
    let secret = set["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"), "{set}");
    let (status, shown) = parts(app.root(Method::GET, &path).send().await.unwrap()).await;
    assert_eq!(status, 200);
    assert_eq!(shown["url"], url.as_str());
    assert!(!shown.to_string().contains(&secret), "the secret is shown once: {shown}");

    let session_id = reuse(&app, &created).await;
    // webhook_set, then reuse_detected.
    let deliveries = wait_for(&got, 2).await;
    for delivery in &deliveries {
        check_signature(&secret, delivery);
    }
    let events: Vec<Value> =
        deliveries.iter().map(|d| serde_json::from_slice(&d.body).unwrap()).collect();
    let reuse = events.iter().find(|e| e["kind"] == "reuse_detected").expect("reuse delivered");
    assert_eq!(reuse["app_id"], created.app_id.as_str());
    assert_eq!(reuse["detail"]["session_id"], session_id.as_str());
    let reuse_delivery = deliveries
        .iter()
        .find(|d| serde_json::from_slice::<Value>(&d.body).unwrap() == *reuse)
        .unwrap();
    assert_eq!(reuse_delivery.event_id, reuse["event_id"].as_str().unwrap());
    let retries = r#"keygate_webhook_deliveries_total{result="retry"}"#;
    assert_eq!(metric(&app, retries).await, 1.0);
    assert!(metric(&app, r#"keygate_webhook_deliveries_total{result="delivered"}"#).await >= 2.0);

    // A tampered body does not check out.
    let mut tampered = deliveries[0].clone();
    tampered.body.push(b' ');
    let caught = std::panic::catch_unwind(|| check_signature(&secret, &tampered));
    assert!(caught.is_err(), "a changed body must fail the signature check");

    // Bad URLs are refused; removing the webhook stops deliveries.
    for bad in ["http://hooks.example.com/x", "ftp://127.0.0.1/", "nope"] {
        let (status, body) =
            parts(app.root(Method::PUT, &path).json(&json!({"url": bad})).send().await.unwrap())
                .await;
        assert_error(status, &body, 400, "invalid_request");
        assert_eq!(body["errors"][0]["error_field"], "url");
    }
    assert_eq!(app.root(Method::DELETE, &path).send().await.unwrap().status(), 200);
    let (status, body) = parts(app.root(Method::GET, &path).send().await.unwrap()).await;
    assert_error(status, &body, 404, "not_found");
}

mod webhooks {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        a_webhook_receives_signed_events_and_failures_are_retried(Backend::Sqlite).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        a_webhook_receives_signed_events_and_failures_are_retried(Backend::Postgres).await;
    }
}

/// A renew that detects reuse answers at once even when the webhook receiver hangs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_receiver_never_slows_a_renew() {
    let app = spawn_app_with(Backend::Sqlite, |s| {
        s.webhook_poll_ms = 100;
        s.webhook_timeout_ms = 10_000;
    })
    .await
    .unwrap();
    // Accepts connections and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let created = app.create_app(json!({"name": "slow-hook"})).await;
    let path = format!("/root/apps/{}/webhook", created.app_id);
    let url = format!("http://127.0.0.1:{port}/hook");
    let response = app.root(Method::PUT, &path).json(&json!({"url": url})).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let started = std::time::Instant::now();
    for _ in 0..3 {
        reuse(&app, &created).await;
    }
    assert!(started.elapsed() < Duration::from_secs(5), "renews waited on the webhook");
}

/// A master-key rotation re-seals webhook secrets too: once the old master key is gone,
/// deliveries still open their secret.
#[tokio::test]
async fn a_master_key_rotation_reseals_webhook_secrets() {
    use keygate_gateway::usecases::{admin, master_key, webhooks};
    use keygate_gateway::{Services, Settings};
    use keygate_keyring::MasterKey;

    let dir = tempfile::tempdir().unwrap();
    let (old, new) = (MasterKey::generate(), MasterKey::generate());
    let settings = |master: &MasterKey, previous: Vec<secrecy::SecretString>| Settings {
        data_dir: dir.path().to_owned(),
        root_key: Some("kgr_reseal_test_root_key_000000000000000".into()),
        master_key: Some(master.to_base64().to_string().into()),
        previous_master_keys: previous,
        ..Settings::default()
    };
    let (services, _) = Services::open(&settings(&old, vec![])).await.unwrap();
    let patch =
        keygate_tenants::SettingsPatch { name: Some("resealed".into()), ..Default::default() };
    let created =
        admin::create_app(&services, &patch, admin::Actor::Cli, 1_800_000_000).await.unwrap();
    let set =
        webhooks::set(&services, created.app_id, "https://hooks.example/k", admin::Actor::Cli)
            .await
            .unwrap();
    services.db.close().await;

    let during = settings(&new, vec![old.to_base64().to_string().into()]);
    let (services, _) = Services::open(&during).await.unwrap();
    master_key::reseal_all(&services, &|_, _| {}).await.unwrap();
    services.db.close().await;

    let (services, _) = Services::open(&settings(&new, vec![])).await.unwrap();
    let webhook = services.audit.store().webhook(created.app_id).await.unwrap().unwrap();
    assert_eq!(webhook.master_key_id, new.id());
    let context = format!("webhook {}", created.app_id);
    let secret =
        services.keyring.open_secret(&context, &webhook.master_key_id, &webhook.sealed_secret);
    assert_eq!(&*secret.unwrap(), set.secret.expose().as_bytes());
}
