//! Abuse controls: failed app-key and root-key attempts are limited per client address
//! (429 with Retry-After, before any key is hashed), `X-Forwarded-For` counts only from
//! trusted proxies, and oversized bodies and heads and slow clients are cut off.
//!
//! The gateway under test listens on 127.0.0.1; a second client binds 127.0.0.2 to be
//! another address.

use std::io::{Read, Write};
use std::net::{IpAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use keygate_gateway::{Application, Services, Settings};
use reqwest::{Method, RequestBuilder, Response};
use serde_json::{json, Value};

use crate::helpers::{assert_error, parts, CreatedApp, TestApp};
use crate::{on_both_backends, with_settings};

on_both_backends!(
    failed_app_keys_are_limited_per_address,
    failed_root_keys_share_the_limit,
    successes_do_not_count,
    a_spoofed_forwarded_for_does_not_escape_the_limit,
    a_body_over_16_kib_is_413,
);

with_settings!(
    a_trusted_proxy_s_clients_are_limited_one_by_one: trust_localhost,
    compat_routes_record_the_client_address: trust_localhost_with_a_compat_route,
    compat_routes_ignore_forwarded_for_from_untrusted_peers: with_a_compat_route,
    a_slow_request_head_is_cut_off: short_request_timeout,
);

/// The default burst: this many failures are answered 403, the next one 429.
const BURST: usize = 10;
/// The longest wait the default rate (10 a minute) can ask for.
const MAX_WAIT: u64 = 6;

fn trust_localhost(settings: &mut Settings) {
    settings.trusted_proxies = vec!["127.0.0.1".into()];
}

fn with_a_compat_route(settings: &mut Settings) {
    let file = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy/compat/seed-002.toml");
    settings.compat = Settings::load(Some(&file)).unwrap().compat;
}

fn trust_localhost_with_a_compat_route(settings: &mut Settings) {
    with_a_compat_route(settings);
    trust_localhost(settings);
}

fn short_request_timeout(settings: &mut Settings) {
    settings.client_request_timeout_ms = 1000;
}

/// A client whose connections come from `ip` (any 127.0.0.0/8 address reaches the
/// gateway on 127.0.0.1).
fn client_from(ip: &str) -> reqwest::Client {
    reqwest::Client::builder().local_address(ip.parse::<IpAddr>().unwrap()).build().unwrap()
}

fn get(app: &TestApp, client: &reqwest::Client, path: &str, key: &str) -> RequestBuilder {
    client.request(Method::GET, format!("{}{path}", app.address)).header("Authorization", key)
}

/// The app's key with its last character changed: well formed, so it is checked with
/// argon2, and wrong.
fn wrong_key(created: &CreatedApp) -> String {
    let mut key = created.app_key.clone();
    let last = key.pop().unwrap();
    key.push(if last == 'A' { 'B' } else { 'A' });
    key
}

async fn status(request: RequestBuilder) -> u16 {
    request.send().await.unwrap().status().as_u16()
}

/// Asserts a 429 in the error contract, with a whole number of seconds to wait.
async fn assert_limited(response: Response) {
    let retry_after = response.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
    let (status, body) = parts(response).await;
    assert_error(status, &body, 429, "rate_limited");
    let retry_after = retry_after.expect("a 429 carries Retry-After");
    let secs: u64 = retry_after.parse().unwrap_or_else(|_| panic!("Retry-After {retry_after}"));
    assert!((1..=MAX_WAIT).contains(&secs), "Retry-After {secs}");
}

/// Spends the default burst of failures from `client` with `request`, each answered 403.
async fn spend_the_burst(request: impl Fn() -> RequestBuilder) {
    for attempt in 1..=BURST {
        let (status, body) = parts(request().send().await.unwrap()).await;
        assert_eq!(status, 403, "failure {attempt} of the burst: {body}");
    }
}

async fn failed_app_keys_are_limited_per_address(app: TestApp) {
    let target = app.create_app(json!({"name": "target"})).await;
    let other = app.create_app(json!({"name": "other"})).await;
    let here = client_from("127.0.0.1");
    let elsewhere = client_from("127.0.0.2");
    let settings = |created: &CreatedApp| format!("/app/{}", created.app_id);

    spend_the_burst(|| get(&app, &here, &settings(&target), &wrong_key(&target))).await;

    let argon2_runs = app.tenants.argon2_runs();
    assert_limited(get(&app, &here, &settings(&target), &wrong_key(&target)).send().await.unwrap())
        .await;
    // A limited address is refused whatever it presents: its guesses, the right key (it
    // could have guessed it), other apps, apps that do not exist.
    assert_limited(get(&app, &here, &settings(&target), &target.app_key).send().await.unwrap())
        .await;
    assert_limited(get(&app, &here, &settings(&other), &other.app_key).send().await.unwrap()).await;
    let unknown = format!("/app/{}", ulid::Ulid::new());
    assert_limited(get(&app, &here, &unknown, &target.app_key).send().await.unwrap()).await;
    let response = here
        .post(format!("{}/app/{}/sign", app.address, target.app_id))
        .header("Authorization", &target.app_key)
        .json(&json!({"sub": "mallory", "ip": "203.0.113.7", "useragent": "x"}))
        .send()
        .await
        .unwrap();
    assert_limited(response).await;
    assert_eq!(app.tenants.argon2_runs(), argon2_runs, "a refused attempt costs no argon2");

    // Other addresses are not affected, for this app or another one.
    assert_eq!(status(get(&app, &elsewhere, &settings(&other), &other.app_key)).await, 200);
    assert_eq!(status(get(&app, &elsewhere, &settings(&target), &target.app_key)).await, 200);
    assert_eq!(status(get(&app, &elsewhere, &settings(&target), &wrong_key(&target))).await, 403);
    // Public endpoints need no key and are not limited.
    let jwks = here.get(format!("{}/app/{}/jwks.json", app.address, target.app_id));
    assert_eq!(status(jwks).await, 200);
}

async fn failed_root_keys_share_the_limit(app: TestApp) {
    let created = app.create_app(json!({"name": "shared"})).await;
    let here = client_from("127.0.0.1");
    let elsewhere = client_from("127.0.0.2");
    let wrong_root = format!("{}x", app.root_key);

    spend_the_burst(|| get(&app, &here, "/root/apps", &wrong_root)).await;
    let argon2_runs = app.tenants.argon2_runs();
    assert_limited(get(&app, &here, "/root/apps", &wrong_root).send().await.unwrap()).await;
    assert_limited(get(&app, &here, "/root/apps", &app.root_key).send().await.unwrap()).await;
    // One budget per address, whichever secret it guesses.
    let path = format!("/app/{}", created.app_id);
    assert_limited(get(&app, &here, &path, &created.app_key).send().await.unwrap()).await;
    assert_eq!(app.tenants.argon2_runs(), argon2_runs);

    assert_eq!(status(get(&app, &elsewhere, "/root/apps", &app.root_key)).await, 200);
    assert_eq!(status(get(&app, &elsewhere, &path, &created.app_key)).await, 200);
    // Operations endpoints take no key.
    assert_eq!(status(here.get(format!("{}/healthz", app.address))).await, 200);
}

async fn successes_do_not_count(app: TestApp) {
    let created = app.create_app(json!({"name": "busy"})).await;
    let here = client_from("127.0.0.1");
    let path = format!("/app/{}", created.app_id);
    for _ in 0..3 * BURST {
        assert_eq!(status(get(&app, &here, &path, &created.app_key)).await, 200);
    }
    // The whole burst of failures is still there to spend, and then the limit holds.
    spend_the_burst(|| get(&app, &here, &path, &wrong_key(&created))).await;
    assert_limited(get(&app, &here, &path, &wrong_key(&created)).send().await.unwrap()).await;
}

async fn a_spoofed_forwarded_for_does_not_escape_the_limit(app: TestApp) {
    let created = app.create_app(json!({"name": "spoofed"})).await;
    let here = client_from("127.0.0.1");
    let path = format!("/app/{}", created.app_id);
    let attempt = std::sync::atomic::AtomicUsize::new(0);
    let spoofed = || {
        let n = attempt.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        get(&app, &here, &path, &wrong_key(&created))
            .header("X-Forwarded-For", format!("198.51.100.{n}"))
    };
    spend_the_burst(spoofed).await;
    assert_limited(spoofed().send().await.unwrap()).await;
    let fresh = get(&app, &here, &path, &created.app_key).header("X-Forwarded-For", "192.0.2.1");
    assert_limited(fresh.send().await.unwrap()).await;
}

async fn a_trusted_proxy_s_clients_are_limited_one_by_one(app: TestApp) {
    let created = app.create_app(json!({"name": "proxied"})).await;
    // The proxy is 127.0.0.1: every request below comes through it.
    let proxy = client_from("127.0.0.1");
    let path = format!("/app/{}", created.app_id);
    let from = |forwarded_for: &str, key: &str| {
        get(&app, &proxy, &path, key).header("X-Forwarded-For", forwarded_for.to_owned())
    };

    spend_the_burst(|| from("198.51.100.1", &wrong_key(&created))).await;
    assert_limited(from("198.51.100.1", &wrong_key(&created)).send().await.unwrap()).await;
    assert_limited(from("198.51.100.1", &created.app_key).send().await.unwrap()).await;
    // What the client wrote left of the address the proxy saw does not change who it is,
    // and trusted hops on the right are skipped.
    assert_limited(from("192.0.2.99, 198.51.100.1", &created.app_key).send().await.unwrap()).await;
    assert_limited(from("198.51.100.1, 127.0.0.1", &created.app_key).send().await.unwrap()).await;

    // Another client behind the same proxy has its own budget.
    assert_eq!(status(from("198.51.100.2", &created.app_key)).await, 200);
    assert_eq!(status(from("198.51.100.2", &wrong_key(&created))).await, 403);
    assert_eq!(status(from("198.51.100.1, 198.51.100.2", &created.app_key)).await, 200);
    // The proxy's own requests (no header) are not limited by its clients' failures.
    assert_eq!(status(get(&app, &proxy, &path, &created.app_key)).await, 200);
}

/// Signs a session for `sub` and renews it once through the seed-002 route, with
/// `X-Forwarded-For: 198.51.100.77`; returns the session's recorded address.
async fn renew_through_the_compat_route(app: &TestApp) -> Value {
    let created = app.create_app(json!({"name": "legacy"})).await;
    let signed = app.sign(&created, "carol").await;
    let response = app
        .request(Method::POST, "/api/auth/refresh")
        .header("X-Forwarded-For", "198.51.100.77")
        .json(&json!({"refreshToken": signed["refresh_token"]}))
        .send()
        .await
        .unwrap();
    let (status, body) = parts(response).await;
    assert_eq!(status, 200, "{body}");
    let response = app
        .request(Method::GET, &format!("/app/{}/sessions?sub=carol", created.app_id))
        .header("Authorization", &created.app_key)
        .send()
        .await
        .unwrap();
    let (status, body) = parts(response).await;
    assert_eq!(status, 200, "{body}");
    body["sessions"][0]["ip"].clone()
}

async fn compat_routes_record_the_client_address(app: TestApp) {
    assert_eq!(renew_through_the_compat_route(&app).await, "198.51.100.77");
}

async fn compat_routes_ignore_forwarded_for_from_untrusted_peers(app: TestApp) {
    assert_eq!(renew_through_the_compat_route(&app).await, "127.0.0.1");
}

async fn a_body_over_16_kib_is_413(app: TestApp) {
    let created = app.create_app(json!({"name": "big"})).await;
    let body =
        json!({"sub": "bob", "ip": "203.0.113.7", "useragent": "x", "pad": "p".repeat(17 * 1024)});
    let (status, body) = app.app_post(&created, "sign", &body).await;
    assert_error(status, &body, 413, "payload_too_large");
}

/// A chunked body (no declared length) over the limit is 413 as well.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_body_over_16_kib_is_413() {
    let app = crate::helpers::spawn_app(crate::helpers::Backend::Sqlite).await.unwrap();
    let created = app.create_app(json!({"name": "chunked"})).await;
    let chunk = format!("400\r\n{}\r\n", " ".repeat(1024));
    let request = format!(
        "POST /app/{}/sign HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\
         Connection: close\r\n\r\n{}0\r\n\r\n",
        created.app_id,
        created.app_key,
        chunk.repeat(17)
    );
    let port = port(&app);
    let response =
        tokio::task::spawn_blocking(move || exchange(port, request.as_bytes())).await.unwrap();
    assert!(status_line(&response).starts_with("HTTP/1.1 413"), "{response}");
    assert!(response.contains(r#""error":"payload_too_large""#), "{response}");
}

/// The port of the gateway under test.
fn port(app: &TestApp) -> u16 {
    app.address.rsplit(':').next().unwrap().parse().unwrap()
}

/// Writes `request` on a raw connection and reads until the server closes it or 10 s
/// pass; returns what was read. A reset after the server answered counts as a close.
fn exchange(port: u16, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // The server may answer and close before it has read everything.
    let _ = stream.write_all(request);
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => received.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&received).into_owned()
}

fn status_line(response: &str) -> &str {
    response.lines().next().unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_request_heads_get_431() {
    let app = crate::helpers::spawn_app(crate::helpers::Backend::Sqlite).await.unwrap();
    let port = port(&app);
    let with_header = |size: usize| {
        format!(
            "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
            "a".repeat(size)
        )
        .into_bytes()
    };
    let run = move |request: Vec<u8>| tokio::task::spawn_blocking(move || exchange(port, &request));

    // actix-http buffers at most 128 KiB of request head: a head that does not fit is 431.
    let response = run(with_header(132 * 1024)).await.unwrap();
    assert!(status_line(&response).starts_with("HTTP/1.1 431"), "{}", status_line(&response));
    // Far over it, the server may reset the connection before the client reads the answer.
    let response = run(with_header(1024 * 1024)).await.unwrap();
    assert!(
        response.is_empty() || status_line(&response).starts_with("HTTP/1.1 431"),
        "{}",
        status_line(&response)
    );
    // So is a head with more than 96 headers, however small.
    let many: String = (0..100).map(|i| format!("X-H{i}: v\r\n")).collect();
    let response =
        run(format!("GET /healthz HTTP/1.1\r\nHost: x\r\n{many}\r\n").into_bytes()).await.unwrap();
    assert!(status_line(&response).starts_with("HTTP/1.1 431"), "{}", status_line(&response));

    // Below that, a large header is accepted (and the app then rejects what it does not
    // want, for instance a 100 KB Authorization as a bad key).
    let response = run(with_header(100_000)).await.unwrap();
    assert!(status_line(&response).starts_with("HTTP/1.1 200"), "{}", status_line(&response));
    let created = app.create_app(json!({"name": "headers"})).await;
    let request = format!(
        "GET /app/{}/pub-keys HTTP/1.1\r\nHost: x\r\nAuthorization: kg_{}\r\nConnection: close\r\n\r\n",
        created.app_id,
        "k".repeat(100_000)
    );
    let response = run(request.into_bytes()).await.unwrap();
    assert!(status_line(&response).starts_with("HTTP/1.1 403"), "{}", status_line(&response));
}

async fn a_slow_request_head_is_cut_off(app: TestApp) {
    let port = port(&app);
    // Sends the head a byte at a time, one every 100 ms, for at most 10 s.
    let outcome = tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let started = Instant::now();
        let head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ";
        let mut received = Vec::new();
        let mut buf = [0u8; 1024];
        for byte in head.iter().chain(std::iter::repeat(&b'z')) {
            if started.elapsed() > Duration::from_secs(10) || stream.write_all(&[*byte]).is_err() {
                break;
            }
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => received.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(_) => break,
            }
        }
        (started.elapsed(), String::from_utf8_lossy(&received).into_owned())
    })
    .await
    .unwrap();
    let (elapsed, response) = outcome;
    // The timeout under test is 1 s (actix's own default is 5 s).
    assert!(elapsed < Duration::from_secs(4), "still connected after {elapsed:?}");
    assert!(elapsed >= Duration::from_millis(800), "cut off after only {elapsed:?}");
    assert!(
        response.is_empty() || status_line(&response).starts_with("HTTP/1.1 408"),
        "{response}"
    );

    // A client that sends its request in time is served.
    let response = tokio::task::spawn_blocking(move || {
        exchange(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    })
    .await
    .unwrap();
    assert!(status_line(&response).starts_with("HTTP/1.1 200"), "{response}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_trusted_proxy_stops_startup() {
    for bad in ["10.0.0.0/33", "proxy.internal", "10.0.0"] {
        let data_dir = tempfile::tempdir().unwrap();
        let settings = Settings {
            listen: "127.0.0.1:0".into(),
            data_dir: data_dir.path().to_owned(),
            root_key: Some(format!("kgr_test_{}", ulid::Ulid::new()).into()),
            trusted_proxies: vec!["127.0.0.1".into(), bad.into()],
            janitor_interval: 0,
            ..Settings::default()
        };
        let (services, _) = Services::open(&settings).await.unwrap();
        let err = Application::build(&settings, services).unwrap_err();
        let message = format!("{err:#}");
        assert!(message.contains("trusted_proxies") && message.contains(bad), "{message}");
    }
}
