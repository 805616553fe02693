//! Hostile and unusual input on every endpoint: wrong methods and media types; truncated,
//! trailing, nested, oversized and duplicated JSON; huge numbers; odd strings and
//! addresses. Each refusal is checked for its exact status, code and field names, and
//! against a snapshot of the database: a refused request creates, consumes, revokes and
//! changes nothing. (`errors.rs` covers the basic cases on `POST /root/apps`.)

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use keygate_store::{Backend, DatabaseUrl, PoolOptions, Sql};
use reqwest::{Method, RequestBuilder};
use serde_json::{json, Value};

use crate::helpers::{assert_error, parts, payload, CreatedApp, ServedBinary, TestApp};
use crate::on_both_backends;

on_both_backends!(
    wrong_methods_get_405_and_change_nothing,
    malformed_bodies_get_400_and_change_nothing,
    media_types_and_sizes,
    duplicate_members_are_refused,
    strings_are_stored_faithfully,
    nul_is_refused_in_every_field,
    addresses_on_sign,
    addresses_on_renew,
);

const APP_IP: &str = "203.0.113.9";

/// A gateway with one app (no reuse grace: a refresh token consumed even once never
/// renews again) and one live session of `alice`.
struct Fixture {
    app: TestApp,
    tenant: CreatedApp,
    /// The token response that opened alice's session.
    signed: Value,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    App,
    Root,
}

/// An endpoint that reads a JSON body.
struct Endpoint {
    method: Method,
    path: String,
    key: Key,
    /// A body it accepts.
    valid: Value,
    /// A member that must be a string, if any.
    text: Option<&'static str>,
    /// A member that must be an integer, if any.
    integer: Option<&'static str>,
}

impl Endpoint {
    fn name(&self) -> String {
        format!("{} {}", self.method, self.path)
    }

    /// `valid` with `member` set to a raw JSON text (which may be no valid JSON at all).
    fn with_raw(&self, member: &str, raw: &str) -> String {
        let mut body = self.valid.clone();
        body[member] = json!("@raw@");
        body.to_string().replace("\"@raw@\"", raw)
    }
}

async fn fixture(app: TestApp) -> Fixture {
    let tenant = app.create_app(json!({"name": "inputs", "reuse_grace": 0})).await;
    let signed = app.sign(&tenant, "alice").await;
    Fixture { app, tenant, signed }
}

impl Fixture {
    fn app_path(&self, endpoint: &str) -> String {
        format!("/app/{}/{endpoint}", self.tenant.app_id)
    }

    fn secret(&self, key: Key) -> &str {
        match key {
            Key::App => &self.tenant.app_key,
            Key::Root => &self.app.root_key,
        }
    }

    /// Every endpoint with a JSON body, each with a body it would accept.
    fn endpoints(&self) -> Vec<Endpoint> {
        let signed = &self.signed;
        let app = |endpoint: &str, valid, text| Endpoint {
            method: Method::POST,
            path: self.app_path(endpoint),
            key: Key::App,
            valid,
            text: Some(text),
            integer: None,
        };
        let id = &self.tenant.app_id;
        vec![
            app("sign", json!({"sub": "bob", "ip": APP_IP, "useragent": "ua"}), "sub"),
            app(
                "renew",
                json!({"refresh_token": signed["refresh_token"], "ip": APP_IP, "useragent": "ua"}),
                "refresh_token",
            ),
            app("verify", json!({"token": signed["auth_token"]}), "token"),
            app("logout", json!({"token": signed["refresh_token"]}), "token"),
            app("revoke", json!({"session_id": signed["session_id"]}), "session_id"),
            app("get-session", json!({"sub": "alice"}), "sub"),
            Endpoint {
                method: Method::POST,
                path: "/root/apps".into(),
                key: Key::Root,
                valid: json!({"name": "never-created"}),
                text: Some("name"),
                integer: Some("token_expire"),
            },
            Endpoint {
                method: Method::PATCH,
                path: format!("/root/apps/{id}"),
                key: Key::Root,
                valid: json!({"token_expire": 600}),
                text: Some("issuer"),
                integer: Some("token_expire"),
            },
            Endpoint {
                method: Method::POST,
                path: format!("/root/apps/{id}/rotate-app-key"),
                key: Key::Root,
                valid: json!({"grace": 60}),
                text: None,
                integer: Some("grace"),
            },
        ]
    }

    fn request(&self, method: Method, path: &str, key: Key) -> RequestBuilder {
        self.app.request(method, path).header("Authorization", self.secret(key))
    }

    /// Sends `body` as `application/json`.
    async fn send(&self, endpoint: &Endpoint, body: impl Into<reqwest::Body>) -> (u16, Value) {
        let request = self
            .request(endpoint.method.clone(), &endpoint.path, endpoint.key)
            .header("Content-Type", "application/json")
            .body(body);
        parts(request.send().await.unwrap()).await
    }

    async fn post(&self, endpoint: &str, body: &str) -> (u16, Value) {
        let request = self
            .request(Method::POST, &self.app_path(endpoint), Key::App)
            .header("Content-Type", "application/json")
            .body(body.to_owned());
        parts(request.send().await.unwrap()).await
    }

    /// The live sessions of `sub`, read back through `GET /sessions` and
    /// `POST /get-session`, which must agree.
    async fn sessions(&self, sub: &str) -> Vec<Value> {
        let request = self.request(Method::GET, &self.app_path("sessions"), Key::App);
        let (status, listed) = parts(request.query(&[("sub", sub)]).send().await.unwrap()).await;
        assert_eq!(status, 200, "{listed}");
        let (status, got) =
            self.app.app_post(&self.tenant, "get-session", &json!({"sub": sub})).await;
        assert_eq!(status, 200, "{got}");
        assert_eq!(listed, got);
        listed["sessions"].as_array().unwrap().clone()
    }

    /// Every row a request could create, consume, revoke or change.
    async fn snapshot(&self) -> Vec<String> {
        snapshot(&self.app.database_url).await
    }

    /// The bodies of [`Self::endpoints`] are accepted, in an order where none spoils the
    /// next: what the refused variants were refused for is the flaw each one carried.
    async fn accepts_the_valid_bodies(&self) {
        let endpoints = self.endpoints();
        let by_path = |suffix: &str| {
            endpoints
                .iter()
                .find(|e| e.path.ends_with(suffix))
                .unwrap_or_else(|| panic!("{suffix}"))
        };
        for suffix in ["/verify", "/get-session", "/sign", "/renew", "/logout", "/revoke"] {
            let endpoint = by_path(suffix);
            let (status, body) = self.send(endpoint, endpoint.valid.to_string()).await;
            assert_eq!(status, 200, "{}: {body}", endpoint.name());
            match suffix {
                "/verify" => assert_eq!(body["verified"], true, "{body}"),
                "/get-session" => assert_eq!(body["sessions"].as_array().unwrap().len(), 1),
                // The original refresh token was never consumed, so it still rotates.
                "/renew" => assert_ne!(body["refresh_token"], self.signed["refresh_token"]),
                "/logout" => assert_eq!(body["revoked"], 1, "{body}"),
                "/revoke" => assert_eq!(body["revoked"], 0, "logout revoked it: {body}"),
                _ => {}
            }
        }
        let endpoint = endpoints.iter().find(|e| e.path == "/root/apps").unwrap();
        let (status, body) = self.send(endpoint, endpoint.valid.to_string()).await;
        assert_eq!(status, 201, "{body}");
        for suffix in [self.tenant.app_id.as_str(), "/rotate-app-key"] {
            let endpoint = by_path(suffix);
            let (status, body) = self.send(endpoint, endpoint.valid.to_string()).await;
            assert_eq!(status, 200, "{}: {body}", endpoint.name());
        }
    }
}

/// The rows of sessions, apps and signing keys, each as one line of text.
async fn snapshot(database_url: &str) -> Vec<String> {
    const QUERIES: [&str; 3] = [
        "SELECT session_id || '|' || sub || '|' || claims || '|' || current_jid || '|' \
         || COALESCE(prev_jid, '-') || '|' || COALESCE(CAST(revoked_at AS TEXT), '-') || '|' \
         || ip || '|' || useragent || '|' || CAST(last_renewed_at AS TEXT) \
         FROM sessions ORDER BY session_id",
        "SELECT app_id || '|' || name || '|' || issuer || '|' || app_key_hash || '|' \
         || COALESCE(prev_app_key_hash, '-') || '|' || CAST(token_expire AS TEXT) || '|' \
         || CAST(updated_at AS TEXT) FROM apps ORDER BY app_id",
        "SELECT key_id || '|' || state FROM app_keys ORDER BY key_id",
    ];
    let options = PoolOptions { sqlite_readers: 1, postgres_connections: 1, ..Default::default() };
    let db = Backend::connect(&DatabaseUrl::from(database_url), &options).await.unwrap();
    let mut rows = Vec::new();
    for sql in QUERIES {
        let found: Vec<(String,)> = keygate_store::testing::fetch_all(&db, Sql::new(sql)).await;
        rows.extend(found.into_iter().map(|(row,)| row));
    }
    db.close().await;
    rows
}

/// A 400 `invalid_request` naming exactly `fields`, each with a message.
fn assert_fields(status: u16, body: &Value, fields: &[&str], context: &str) {
    assert_eq!(status, 400, "{context}: {body}");
    assert_error(status, body, 400, "invalid_request");
    let errors = body["errors"].as_array().unwrap_or_else(|| panic!("{context}: {body}"));
    let named: Vec<&str> = errors.iter().map(|e| e["error_field"].as_str().unwrap()).collect();
    assert_eq!(named, fields, "{context}: {body}");
    for error in errors {
        let message = error["error_message"].as_str().unwrap_or_default();
        assert!(!message.is_empty(), "{context}: {body}");
    }
}

/// The message given for `field`.
fn message_for<'a>(body: &'a Value, field: &str) -> &'a str {
    body["errors"]
        .as_array()
        .and_then(|errors| errors.iter().find(|e| e["error_field"] == field))
        .and_then(|e| e["error_message"].as_str())
        .unwrap_or_else(|| panic!("no error for {field}: {body}"))
}

// ---------------------------------------------------------------------------------------
// 1. Methods, bodies, media types and sizes

async fn wrong_methods_get_405_and_change_nothing(app: TestApp) {
    let f = fixture(app).await;
    let before = f.snapshot().await;
    let id = &f.tenant.app_id;
    let kid = &f.tenant.key_id;
    let app = |endpoint: &str| f.app_path(endpoint);
    let cases = [
        (Method::GET, app("sign")),
        (Method::PUT, app("sign")),
        (Method::GET, app("renew")),
        (Method::PATCH, app("renew")),
        (Method::GET, app("verify")),
        (Method::DELETE, app("logout")),
        (Method::GET, app("revoke")),
        (Method::DELETE, app("revoke")),
        (Method::GET, app("get-session")),
        (Method::POST, app("sessions")),
        (Method::DELETE, app("sessions")),
        (Method::POST, app("pub-keys")),
        (Method::DELETE, app("jwks.json")),
        (Method::PUT, app("jwks.json")),
        (Method::POST, format!("/app/{id}")),
        (Method::PUT, "/root/apps".into()),
        (Method::POST, format!("/root/apps/{id}")),
        (Method::POST, format!("/root/apps/{id}/keys")),
        (Method::GET, format!("/root/apps/{id}/keys/rotate")),
        (Method::DELETE, format!("/root/apps/{id}/keys/rotate")),
        (Method::GET, format!("/root/apps/{id}/keys/{kid}/revoke")),
        (Method::DELETE, format!("/root/apps/{id}/keys/{kid}/revoke")),
        (Method::GET, format!("/root/apps/{id}/rotate-app-key")),
        (Method::PUT, format!("/root/apps/{id}/sessions")),
        (Method::GET, format!("/root/apps/{id}/sessions/revoke")),
        (Method::POST, format!("/root/apps/{id}/sessions")),
    ];
    // Each with valid credentials and a body its real method would act on.
    let body = json!({
        "sub": "alice", "ip": APP_IP, "useragent": "ua", "token": f.signed["refresh_token"],
    });
    for (method, path) in cases {
        let key = if path.starts_with("/root") { Key::Root } else { Key::App };
        let request = f.request(method.clone(), &path, key).json(&body);
        let (status, response) = parts(request.send().await.unwrap()).await;
        assert_eq!(status, 405, "{method} {path}: {response}");
        assert_error(status, &response, 405, "method_not_allowed");
        assert!(response.get("errors").is_none(), "{response}");
    }
    assert_eq!(f.snapshot().await, before, "a wrong method created or changed something");
    f.accepts_the_valid_bodies().await;
}

async fn malformed_bodies_get_400_and_change_nothing(app: TestApp) {
    let f = fixture(app).await;
    let before = f.snapshot().await;
    for endpoint in f.endpoints() {
        let name = endpoint.name();
        // errors.rs already sends these to POST /root/apps.
        let basics = endpoint.path != "/root/apps";
        let valid = endpoint.valid.to_string();
        let mut cases: Vec<(String, String)> = Vec::new();
        let mut case = |body: String, field: &str| cases.push((body, field.to_owned()));
        if basics {
            case(valid[..valid.len() - 1].to_owned(), "body");
            case(format!("{valid} trailing"), "body");
            case(format!("[{valid}]"), "body");
        }
        case(format!("{valid}{{}}"), "body");
        case(format!("{valid},"), "body");
        case(format!("{valid}\0"), "body");
        case("[]".into(), "body");
        case("\"text\"".into(), "body");
        case("null".into(), "body");
        case("42".into(), "body");
        case("{".into(), "body");
        case("{\"a\" 1}".into(), "body");
        case("{'a': 1}".into(), "body");
        case("{\"a\": 1,}".into(), "body");
        case("\u{feff}{}".into(), "body");
        // Nested JSON: 10,000 levels are refused quickly, never overflow a stack.
        case("[".repeat(10_000), "body");
        case(format!("{}{}", "[".repeat(8_000), "]".repeat(8_000)), "body");
        // An empty body is "no body" only where the body is optional.
        if !endpoint.path.ends_with("/rotate-app-key") {
            case(String::new(), "body");
        }
        if let Some(text) = endpoint.text {
            for raw in ["1e400", "-1e400", "18446744073709551616", "-0", "1.0", "true", "{}", "[]"]
            {
                case(endpoint.with_raw(text, raw), text);
            }
            // Cut inside the string: the member is named.
            let cut = endpoint.with_raw(text, "\"abc");
            case(cut[..cut.find("\"abc").unwrap() + 4].to_owned(), text);
        }
        if let Some(integer) = endpoint.integer {
            for raw in [
                "1e400",
                "18446744073709551616",
                "9223372036854775808",
                "-9223372036854775809",
                "-0",
                "1.0",
                "6e2",
                "\"600\"",
            ] {
                if basics || raw != "1e400" {
                    case(endpoint.with_raw(integer, raw), integer);
                }
            }
        }
        // Unknown members; /sign takes them as custom claims, but not reserved names.
        if endpoint.path.ends_with("/sign") {
            for reserved in ["jti", "exp", "kid", "type"] {
                case(endpoint.with_raw(reserved, "1"), reserved);
            }
        } else if basics {
            case(endpoint.with_raw("unexpected", "1"), "unexpected");
        }
        for (body, field) in cases {
            let shown: String = body.chars().take(80).collect();
            let (status, response) = f.send(&endpoint, body).await;
            assert_fields(status, &response, &[&field], &format!("{name} {shown:?}"));
        }

        // Deep nesting inside a member: refused at serde_json's depth limit, naming the
        // path into the member.
        for deep in [
            endpoint.with_raw("deep", &"[".repeat(10_000)),
            endpoint.with_raw("deep", &format!("{}{}", "[".repeat(5_000), "]".repeat(5_000))),
            endpoint.with_raw("deep", &"{\"a\":".repeat(3_000)),
        ] {
            let (status, response) = f.send(&endpoint, deep).await;
            assert_error(status, &response, 400, "invalid_request");
            let field = response["errors"][0]["error_field"].as_str().unwrap();
            assert!(field.starts_with("deep"), "{name}: {field}");
            assert_eq!(response["errors"][0]["error_message"], "recursion limit exceeded");
        }
    }
    assert_eq!(f.snapshot().await, before, "a malformed body created or changed something");
    f.accepts_the_valid_bodies().await;
}

async fn media_types_and_sizes(app: TestApp) {
    let f = fixture(app).await;
    let before = f.snapshot().await;
    let address = f.app.address.trim_start_matches("http://").to_owned();
    for endpoint in f.endpoints() {
        let name = endpoint.name();
        let basics = endpoint.path != "/root/apps";
        let valid = endpoint.valid.to_string();
        let mut types = vec![
            Some("text/json"),
            Some("application/jsonp"),
            Some("application/json-patch+json"),
            Some("application/x-json"),
            Some("json"),
            Some("multipart/form-data; boundary=x"),
        ];
        if basics {
            types.extend([None, Some("text/plain"), Some("application/x-www-form-urlencoded")]);
        }
        for content_type in types {
            let mut request = f.request(endpoint.method.clone(), &endpoint.path, endpoint.key);
            if let Some(content_type) = content_type {
                request = request.header("Content-Type", content_type);
            }
            let (status, body) = parts(request.body(valid.clone()).send().await.unwrap()).await;
            assert_eq!(status, 415, "{name} {content_type:?}: {body}");
            assert_error(status, &body, 415, "unsupported_media_type");
        }

        // Over 16 KiB: with a Content-Length, chunked, and a huge declared length of which
        // only a few bytes ever come. Whitespace keeps the oversized body valid JSON.
        let padded = |len: usize| format!("{valid}{}", " ".repeat(len - valid.len()));
        if basics {
            let (status, body) = f.send(&endpoint, padded(16 * 1024 + 1)).await;
            assert_error(status, &body, 413, "payload_too_large");
        }
        let head = |extra: &str| {
            format!(
                "{} {} HTTP/1.1\r\nHost: {address}\r\nAuthorization: {}\r\n\
                 Content-Type: application/json\r\nConnection: close\r\n{extra}\r\n",
                endpoint.method,
                endpoint.path,
                f.secret(endpoint.key)
            )
        };
        let mut chunked = head("Transfer-Encoding: chunked\r\n");
        for chunk in padded(20 * 1024).as_bytes().chunks(1000) {
            chunked.push_str(&format!(
                "{:x}\r\n{}\r\n",
                chunk.len(),
                std::str::from_utf8(chunk).unwrap()
            ));
        }
        chunked.push_str("0\r\n\r\n");
        let declared = format!("{}{{\"sub\": \"", head("Content-Length: 104857600\r\n"));
        for raw in [chunked, declared] {
            let (status, body) = raw_exchange(&address, raw.into_bytes()).await;
            assert_error(status, &body, 413, "payload_too_large");
        }
    }

    // The limit is exactly 16 KiB: a read-only endpoint takes a body of 16,384 bytes.
    let endpoints = f.endpoints();
    for suffix in ["/verify", "/get-session"] {
        let endpoint = endpoints.iter().find(|e| e.path.ends_with(suffix)).unwrap();
        let valid = endpoint.valid.to_string();
        let body = format!("{valid}{}", " ".repeat(16 * 1024 - valid.len()));
        let (status, response) = f.send(endpoint, body.clone()).await;
        assert_eq!(status, 200, "{suffix}: {response}");
        let (status, response) = f.send(endpoint, format!("{body} ")).await;
        assert_error(status, &response, 413, "payload_too_large");
    }
    // A charset parameter and any case of the media type are fine.
    for content_type in
        ["application/json; charset=utf-8", "Application/JSON", "application/json ;x=y"]
    {
        let request = f
            .request(Method::POST, &f.app_path("get-session"), Key::App)
            .header("Content-Type", content_type)
            .body(r#"{"sub":"alice"}"#);
        let (status, body) = parts(request.send().await.unwrap()).await;
        assert_eq!(status, 200, "{content_type}: {body}");
    }
    assert_eq!(f.snapshot().await, before, "a refused body created or changed something");
    f.accepts_the_valid_bodies().await;
}

/// Writes `request` on a fresh connection and reads the whole answer (the request asks
/// to close). The read timeout only turns a hung server into a failure.
async fn raw_exchange(address: &str, request: Vec<u8>) -> (u16, Value) {
    let address = address.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect(&address).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        // The server may answer and close before it has read everything we send.
        let _ = stream.write_all(&request);
        let mut answer = Vec::new();
        let mut buf = [0; 4096];
        loop {
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset && !answer.is_empty() => {
                    break
                }
                Err(e) => panic!("reading the answer: {e} (so far {answer:?})"),
            }
        }
        parse_answer(&answer)
    })
    .await
    .unwrap()
}

/// Status and JSON body of a raw HTTP/1.1 answer.
fn parse_answer(answer: &[u8]) -> (u16, Value) {
    let text = String::from_utf8_lossy(answer);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("{text}"));
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap();
    let chunked = head.to_ascii_lowercase().contains("transfer-encoding: chunked");
    let body = if chunked {
        let mut out = String::new();
        let mut rest = body;
        while let Some((size, after)) = rest.split_once("\r\n") {
            let size = usize::from_str_radix(size.trim(), 16).unwrap();
            if size == 0 {
                break;
            }
            out.push_str(&after[..size]);
            rest = &after[size + 2..];
        }
        out
    } else {
        body.to_owned()
    };
    (status, serde_json::from_str(&body).unwrap_or_else(|_| panic!("not JSON: {text}")))
}

async fn duplicate_members_are_refused(app: TestApp) {
    let f = fixture(app).await;
    let before = f.snapshot().await;
    for endpoint in f.endpoints() {
        let name = endpoint.name();
        let members = endpoint.valid.as_object().unwrap();
        let listed: Vec<String> = members.iter().map(|(k, v)| format!("{k:?}:{v}")).collect();
        for (key, value) in members {
            // Twice the same value, and a different value first or last: refused alike,
            // since another reader of the body may keep the other one.
            for twice in [value.clone(), json!("forged"), json!(null)] {
                for forged_first in [false, true] {
                    let duplicate = format!("{key:?}:{twice}");
                    let mut all = listed.clone();
                    if forged_first {
                        all.insert(0, duplicate);
                    } else {
                        all.push(duplicate);
                    }
                    let body = format!("{{{}}}", all.join(","));
                    let (status, response) = f.send(&endpoint, body.clone()).await;
                    assert_fields(status, &response, &[key], &format!("{name} {body}"));
                    assert!(message_for(&response, key).contains("duplicate"), "{response}");
                }
            }
        }
        // The same name spelled with an escape.
        let key = members.keys().next().unwrap();
        let escaped: String = key.chars().map(|c| format!("\\u{:04x}", c as u32)).collect();
        let body = format!("{{\"{escaped}\":\"forged\",{}}}", listed.join(","));
        let (status, response) = f.send(&endpoint, body.clone()).await;
        assert_fields(status, &response, &[key], &format!("{name} {body}"));
    }

    // Inside custom claims, at any depth, the duplicated member is named by its path.
    let sign =
        |claims: &str| format!(r#"{{"sub":"bob","ip":"{APP_IP}","useragent":"ua",{claims}}}"#);
    for (claims, field) in [
        (r#""roles":["a"],"roles":["admin"]"#, "roles"),
        (r#""profile":{"id":1,"id":2}"#, "profile.id"),
        (r#""profile":{"org":{"role":"user","role":"admin"}}"#, "profile.org.role"),
        (r#""items":[{"k":1},{"k":1,"k":2}]"#, "items[1].k"),
        (r#""a`b":1,"a`b":2"#, "a`b"),
    ] {
        let (status, response) = f.post("sign", &sign(claims)).await;
        assert_fields(status, &response, &[field], claims);
    }
    // The same name in different objects is no duplicate.
    let (status, body) =
        f.post("sign", &sign(r#""x":{"id":1},"y":{"id":1},"z":[{"id":1},{"id":2}]"#)).await;
    assert_eq!(status, 200, "{body}");
    let claims = payload(&body["auth_token"]);
    assert_eq!(claims["z"], json!([{"id": 1}, {"id": 2}]));
    assert_eq!(f.sessions("bob").await.len(), 1);

    // A query string naming `sub` twice.
    let request = f.request(Method::GET, &f.app_path("sessions"), Key::App);
    let (status, response) =
        parts(request.query(&[("sub", "alice"), ("sub", "bob")]).send().await.unwrap()).await;
    assert_fields(status, &response, &["sub"], "?sub=alice&sub=bob");

    // Only bob's session is new.
    let after = f.snapshot().await;
    assert_eq!(after.len(), before.len() + 1, "{after:#?}");
    assert!(before.iter().all(|row| after.contains(row)), "a refused request changed a row");
}

// ---------------------------------------------------------------------------------------
// 2. Strings

/// User agents a client may send, stored and returned byte for byte.
const ODD_AGENTS: [&str; 9] = [
    "Mozilla/5.0 (X11; 日本語; Ελληνικά; العربية) 🦀",
    "\u{202e}gpj.exe\u{202c} and \u{200f}rtl\u{200e}",
    "line one\r\nX-Injected: yes\r\n\r\n",
    "\u{1b}[31mred\u{1b}[0m \u{1b}]0;title\u{7}",
    "tab\there\u{7f}del\u{8}\u{c}",
    "e\u{301} vs \u{e9}, \u{feff}bom, \u{2028}sep\u{2029}",
    "\\u0000 is six characters, not NUL",
    "quotes \" and \\ backslash",
    "",
];

async fn strings_are_stored_faithfully(app: TestApp) {
    let f = fixture(app).await;
    let sub = "ユーザー\u{202e}1\r\n\u{1b}[0m";
    let mut sessions = Vec::new();
    for agent in ODD_AGENTS {
        let body = json!({"sub": sub, "ip": APP_IP, "useragent": agent, "note": agent});
        let (status, signed) = f.app.app_post(&f.tenant, "sign", &body).await;
        assert_eq!(status, 200, "{agent:?}: {signed}");
        let claims = payload(&signed["auth_token"]);
        assert_eq!(claims["useragent"].as_str(), Some(agent));
        assert_eq!(claims["note"].as_str(), Some(agent));
        assert_eq!(claims["sub"].as_str(), Some(sub));
        sessions.push(signed);
    }
    let listed = f.sessions(sub).await;
    assert_eq!(listed.len(), ODD_AGENTS.len());
    for (agent, signed) in ODD_AGENTS.iter().zip(&sessions) {
        let session = listed.iter().find(|s| s["session_id"] == signed["session_id"]).unwrap();
        assert_eq!(session["useragent"].as_str().map(str::as_bytes), Some(agent.as_bytes()));
        assert_eq!(session["sub"].as_str().map(str::as_bytes), Some(sub.as_bytes()));
    }

    // A renew records its own user agent, as faithfully.
    let renewed_agent = ODD_AGENTS[3];
    let (status, renewed) =
        f.app.renew_as(&f.tenant, &sessions[0]["refresh_token"], renewed_agent).await;
    assert_eq!(status, 200, "{renewed}");
    assert_eq!(payload(&renewed["auth_token"])["useragent"].as_str(), Some(renewed_agent));
    let listed = f.sessions(sub).await;
    let session = listed.iter().find(|s| s["session_id"] == sessions[0]["session_id"]).unwrap();
    assert_eq!(session["useragent"].as_str(), Some(renewed_agent));

    // Raw control characters, lone surrogates and invalid UTF-8 are not JSON: refused, and
    // no session is opened.
    let before = f.snapshot().await;
    let head = format!(r#"{{"sub":"bob","ip":"{APP_IP}","useragent":""#).into_bytes();
    let sign = f.endpoints().into_iter().find(|e| e.path.ends_with("/sign")).unwrap();
    for bad in
        [&b"\x1b[31m"[..], b"a\rb", b"a\nb", b"\x00", b"\\ud800", b"\\udc00x", b"\xff\xfe", b"\xc3"]
    {
        let mut body = head.clone();
        body.extend_from_slice(bad);
        body.extend_from_slice(b"\"}");
        let (status, response) = f.send(&sign, body).await;
        assert_fields(status, &response, &["useragent"], &String::from_utf8_lossy(bad));
    }
    assert_eq!(f.snapshot().await, before);
    assert!(f.sessions("bob").await.is_empty());
}

async fn nul_is_refused_in_every_field(app: TestApp) {
    let f = fixture(app).await;
    let before = f.snapshot().await;
    let nul = "a\u{0}b";
    let refresh = &f.signed["refresh_token"];
    let cases = [
        ("sign", json!({"sub": nul, "ip": APP_IP, "useragent": "ua"}), vec!["sub"]),
        ("sign", json!({"sub": "bob", "ip": APP_IP, "useragent": nul}), vec!["useragent"]),
        ("sign", json!({"sub": "bob", "ip": "1.2.3.4\u{0}", "useragent": "ua"}), vec!["ip"]),
        ("sign", json!({"sub": "bob", "ip": APP_IP, "useragent": "ua", "note": nul}), vec!["note"]),
        ("sign", json!({"sub": "bob", "ip": APP_IP, "useragent": "ua", nul: 1}), vec![nul]),
        (
            "sign",
            json!({"sub": "bob", "ip": APP_IP, "useragent": "ua", "p": {"k": [nul]}}),
            vec!["p"],
        ),
        ("sign", json!({"sub": "bob", "ip": APP_IP, "useragent": "ua", "p": {nul: 1}}), vec!["p"]),
        ("sign", json!({"sub": "bob", "ip": APP_IP, "useragent": "ua", "aud": nul}), vec!["aud"]),
        (
            "sign",
            json!({"sub": "bob", "ip": APP_IP, "useragent": "ua", "aud": ["x", nul]}),
            vec!["aud"],
        ),
        (
            "sign",
            json!({"sub": nul, "ip": APP_IP, "useragent": nul, "note": nul, "x\u{0}": true}),
            vec!["sub", "useragent", "note", "x\u{0}"],
        ),
        (
            "renew",
            json!({"refresh_token": refresh, "ip": APP_IP, "useragent": nul}),
            vec!["useragent"],
        ),
        ("renew", json!({"refresh_token": refresh, "ip": "\u{0}", "useragent": "ua"}), vec!["ip"]),
        (
            "renew",
            json!({"refresh_token": format!("{}\u{0}", refresh.as_str().unwrap()), "ip": APP_IP, "useragent": "ua"}),
            vec!["refresh_token"],
        ),
        (
            "verify",
            json!({"token": format!("{}\u{0}", f.signed["auth_token"].as_str().unwrap())}),
            vec!["token"],
        ),
        ("logout", json!({"token": format!("{}\u{0}", refresh.as_str().unwrap())}), vec!["token"]),
        ("revoke", json!({"sub": "alice\u{0}"}), vec!["sub"]),
        ("get-session", json!({"sub": "alice\u{0}"}), vec!["sub"]),
    ];
    for (endpoint, body, fields) in cases {
        let (status, response) = f.app.app_post(&f.tenant, endpoint, &body).await;
        assert_fields(status, &response, &fields, &format!("{endpoint} {body}"));
        for field in fields {
            assert!(message_for(&response, field).contains("NUL"), "{response}");
        }
    }
    let request = f.request(Method::GET, &f.app_path("sessions"), Key::App);
    let (status, response) =
        parts(request.query(&[("sub", "alice\u{0}")]).send().await.unwrap()).await;
    assert_fields(status, &response, &["sub"], "?sub=alice%00");
    for body in [json!({"name": nul}), json!({"name": "ok-name", "issuer": nul})] {
        let request = f.request(Method::POST, "/root/apps", Key::Root).json(&body);
        let (status, response) = parts(request.send().await.unwrap()).await;
        let field = if body["issuer"].is_null() { "name" } else { "issuer" };
        assert_fields(status, &response, &[field], &body.to_string());
    }
    assert_eq!(f.snapshot().await, before, "a refused NUL created or changed something");
    f.accepts_the_valid_bodies().await;
}

// ---------------------------------------------------------------------------------------
// 3. Addresses

/// Forms that other parsers read differently, or that are no bare address at all.
const REFUSED_ADDRESSES: [(&str, &str); 22] = [
    ("127.1", "an IPv4 or IPv6 address"),
    ("0x7f.0.0.1", "an IPv4 or IPv6 address"),
    ("0177.0.0.1", "an IPv4 or IPv6 address"),
    ("010.1.1.1", "an IPv4 or IPv6 address"),
    ("2130706433", "an IPv4 or IPv6 address"),
    ("1.2.3", "an IPv4 or IPv6 address"),
    ("1.2.3.256", "an IPv4 or IPv6 address"),
    ("1.2.3.4 ", "an IPv4 or IPv6 address"),
    (" 1.2.3.4", "an IPv4 or IPv6 address"),
    ("1.2.3.4\n", "an IPv4 or IPv6 address"),
    ("1.2.3.4.", "an IPv4 or IPv6 address"),
    ("\u{ff11}.2.3.4", "an IPv4 or IPv6 address"),
    ("::ffff:1.2.3.4 ", "an IPv4 or IPv6 address"),
    ("fe80::1%eth0", "an IPv4 or IPv6 address"),
    ("fe80::1%25eth0", "an IPv4 or IPv6 address"),
    ("[::1]", "an IPv4 or IPv6 address"),
    ("1.2.3.4:80", "an IPv4 or IPv6 address"),
    ("[::1]:80", "an IPv4 or IPv6 address"),
    ("::1::2", "an IPv4 or IPv6 address"),
    ("localhost", "an IPv4 or IPv6 address"),
    ("", "must not be empty"),
    (
        "1111:2222:3333:4444:5555:6666:7777:8888:9999:aaaa:bbbb:cccc:ddddd",
        "must be at most 64 bytes",
    ),
];

/// Accepted spellings and the one canonical form stored for each.
const ACCEPTED_ADDRESSES: [(&str, &str); 8] = [
    ("203.0.113.7", "203.0.113.7"),
    ("::ffff:1.2.3.4", "::ffff:1.2.3.4"),
    ("::FFFF:1.2.3.4", "::ffff:1.2.3.4"),
    ("::ffff:102:304", "::ffff:1.2.3.4"),
    ("0:0:0:0:0:ffff:0102:0304", "::ffff:1.2.3.4"),
    ("2001:DB8:0:0:0:0:0:1", "2001:db8::1"),
    ("2001:0db8::0001", "2001:db8::1"),
    ("::1", "::1"),
];

/// 65 bytes: one over the cap.
fn long_address() -> String {
    let long = "1".repeat(65);
    let (last, _) = REFUSED_ADDRESSES[REFUSED_ADDRESSES.len() - 1];
    assert_eq!((long.len(), last.len()), (65, 65));
    long
}

async fn addresses_on_sign(app: TestApp) {
    let f = fixture(app).await;
    let before = f.snapshot().await;
    let long = long_address();
    let refused = REFUSED_ADDRESSES
        .iter()
        .map(|(ip, why)| (*ip, *why))
        .chain([(long.as_str(), "must be at most 64 bytes")]);
    for (ip, why) in refused {
        let body = json!({"sub": "bob", "ip": ip, "useragent": "ua"});
        let (status, response) = f.app.app_post(&f.tenant, "sign", &body).await;
        assert_fields(status, &response, &["ip"], &format!("{ip:?}"));
        assert!(message_for(&response, "ip").contains(why), "{ip:?}: {response}");
    }
    for (body, message) in [
        (json!({"sub": "bob", "ip": 16909060, "useragent": "ua"}), "must be a string"),
        (json!({"sub": "bob", "ip": null, "useragent": "ua"}), "is required"),
        (json!({"sub": "bob", "useragent": "ua"}), "is required"),
        (json!({"sub": "bob", "ip": ["1.2.3.4"], "useragent": "ua"}), "must be a string"),
    ] {
        let (status, response) = f.app.app_post(&f.tenant, "sign", &body).await;
        assert_fields(status, &response, &["ip"], &body.to_string());
        assert_eq!(message_for(&response, "ip"), message);
    }
    assert_eq!(f.snapshot().await, before, "a refused address opened a session");

    for (i, (ip, canonical)) in ACCEPTED_ADDRESSES.iter().enumerate() {
        let sub = format!("ip-{i}");
        let body = json!({"sub": sub, "ip": ip, "useragent": "ua"});
        let (status, signed) = f.app.app_post(&f.tenant, "sign", &body).await;
        assert_eq!(status, 200, "{ip}: {signed}");
        assert_eq!(payload(&signed["auth_token"])["ip"], *canonical, "{ip}");
        let sessions = f.sessions(&sub).await;
        assert_eq!(sessions[0]["ip"], *canonical, "{ip}");
    }
}

async fn addresses_on_renew(app: TestApp) {
    let f = fixture(app).await;
    let before = f.snapshot().await;
    let refresh = &f.signed["refresh_token"];
    let long = long_address();
    let refused = REFUSED_ADDRESSES
        .iter()
        .map(|(ip, why)| (*ip, *why))
        .chain([(long.as_str(), "must be at most 64 bytes")]);
    for (ip, why) in refused {
        let body = json!({"refresh_token": refresh, "ip": ip, "useragent": "ua"});
        let (status, response) = f.app.app_post(&f.tenant, "renew", &body).await;
        assert_fields(status, &response, &["ip"], &format!("{ip:?}"));
        assert!(message_for(&response, "ip").contains(why), "{ip:?}: {response}");
    }
    // Every field of a renew is checked before the token is looked at.
    let body = json!({"refresh_token": refresh, "ip": "127.1", "useragent": 5, "extra": 1});
    let (status, response) = f.app.app_post(&f.tenant, "renew", &body).await;
    assert_fields(status, &response, &["ip", "useragent", "extra"], &body.to_string());
    assert_eq!(f.snapshot().await, before, "a refused renew consumed or changed something");

    // The refresh token was not consumed: it still rotates (the app has no reuse grace,
    // so a consumed token would be reuse). The stored address is the canonical one.
    let mut token = refresh.clone();
    for (ip, canonical) in [("::FFFF:1.2.3.4", "::ffff:1.2.3.4"), ("2001:DB8::0:1", "2001:db8::1")]
    {
        let body = json!({"refresh_token": token, "ip": ip, "useragent": "ua"});
        let (status, renewed) = f.app.app_post(&f.tenant, "renew", &body).await;
        assert_eq!(status, 200, "{ip}: {renewed}");
        assert_eq!(payload(&renewed["auth_token"])["ip"], canonical);
        let sessions = f.sessions("alice").await;
        assert_eq!(sessions[0]["ip"], canonical);
        assert_eq!(sessions[0]["session_id"], f.signed["session_id"]);
        token = renewed["refresh_token"].clone();
    }
}

// ---------------------------------------------------------------------------------------
// The log of the real binary

#[tokio::test]
async fn control_characters_never_reach_the_log_raw() {
    control_characters_in_the_log(None).await;
    if let Some(url) = keygate_store::testing::postgres_url().await {
        control_characters_in_the_log(Some(url)).await;
    }
}

/// Runs `keygate serve` at debug level, sends it control characters in a user agent, a
/// path, a field name and an app name, and reads its whole stderr: no raw ESC and no CR.
async fn control_characters_in_the_log(database_url: Option<String>) {
    const ROOT_KEY: &str = "kgr_inputs_log_test_root_key_000000000001";
    let served = ServedBinary::start(ROOT_KEY, |command| {
        command.env("KEYGATE_LOG", "debug");
        if let Some(url) = &database_url {
            command.args(["--database-url", url]);
        }
    });
    let address = served.address.clone();

    let client = reqwest::Client::new();
    let root = |method: Method, path: &str| {
        client.request(method, format!("{address}{path}")).header("Authorization", ROOT_KEY)
    };
    let evil = "\u{1b}[31mred\r\nX-Injected: yes\r\n\u{1b}]0;title\u{7}\u{202e}";
    let (status, created) = parts(
        root(Method::POST, "/root/apps")
            .json(&json!({"name": "logs", "reuse_grace": 0}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let (app_id, app_key) =
        (created["app_id"].as_str().unwrap(), created["app_key"].as_str().unwrap());
    let app = |method: Method, path: &str| {
        client
            .request(method, format!("{address}/app/{app_id}/{path}"))
            .header("Authorization", app_key)
    };
    let sign = json!({"sub": evil, "ip": APP_IP, "useragent": evil, "note": evil});
    let (status, signed) = parts(app(Method::POST, "sign").json(&sign).send().await.unwrap()).await;
    assert_eq!(status, 200, "{signed}");
    let renew = json!({"refresh_token": signed["refresh_token"], "ip": APP_IP, "useragent": evil});
    let (status, renewed) =
        parts(app(Method::POST, "renew").json(&renew).send().await.unwrap()).await;
    assert_eq!(status, 200, "{renewed}");
    // Reuse of the first token is logged as a warning, with the session it revoked.
    let (status, body) = parts(app(Method::POST, "renew").json(&renew).send().await.unwrap()).await;
    assert_error(status, &body, 401, "invalid_grant");
    let (status, listed) =
        parts(app(Method::GET, "sessions").query(&[("sub", evil)]).send().await.unwrap()).await;
    assert_eq!(status, 200, "{listed}");
    let sessions = listed["sessions"].as_array().unwrap();
    assert!(sessions.is_empty(), "reuse revoked the only session: {listed}");
    // Refused input carrying the same characters: a field name, an app name, paths.
    let bad = json!({"refresh_token": "x", "ip": APP_IP, "useragent": "ua", evil: 1});
    let (status, _) = parts(app(Method::POST, "renew").json(&bad).send().await.unwrap()).await;
    assert_eq!(status, 400);
    let (status, _) =
        parts(root(Method::POST, "/root/apps").json(&json!({"name": evil})).send().await.unwrap())
            .await;
    assert_eq!(status, 400);
    let evil_path = "%1b%5b31m%0d%0aX-Injected:%20yes%0d%0a%0a%0d";
    for path in [
        format!("/app/{app_id}/sign{evil_path}"),
        format!("/root/apps/{evil_path}"),
        format!("/{evil_path}"),
    ] {
        let (status, body) = parts(root(Method::GET, &path).send().await.unwrap()).await;
        assert_error(status, &body, 404, "not_found");
    }

    let log = served.stop();
    let text = String::from_utf8_lossy(&log);
    // The requests were logged, and at debug level: this is the log the input could reach.
    assert!(text.contains("DEBUG"), "{text}");
    assert!(text.contains(&format!("/root/apps/{evil_path}")), "{text}");
    assert!(text.contains(&format!("POST /app/{app_id}/renew")), "{text}");
    assert!(!log.contains(&0x1b), "a raw ESC reached the log:\n{text}");
    assert!(!log.contains(&b'\r'), "a raw CR reached the log:\n{text}");
    assert!(!log.contains(&0x07), "a raw BEL reached the log:\n{text}");
    assert!(!text.contains("\u{202e}"), "a raw RTL override reached the log:\n{text}");
    assert!(!text.lines().any(|l| l.starts_with("X-Injected")), "{text}");
}
