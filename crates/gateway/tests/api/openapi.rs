//! `GET /openapi.json` and the routes stay in step, both ways:
//!
//! - every (method, path) the document describes is routed: a request to it does not end in
//!   the "no such endpoint" 404 or the 405 of the router's fallbacks;
//! - every route the server registers is described. The paths are the route literals of
//!   `src/http/routes/` (the only place routes are registered; compatibility routes come from the
//!   configuration and are out of scope), and the methods each path serves are found by
//!   asking the running server every method: an unserved one answers 405.
//!
//! Requests carry no key and name ids that do not exist, so that nothing changes.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use reqwest::Method;
use serde_json::Value;

use crate::helpers::{parts, spawn_app, Backend, TestApp};

const METHODS: [&str; 7] = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"];

/// The path patterns of `src/http/routes/`: every string literal that looks like a route.
fn registered_paths() -> BTreeSet<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/http/routes");
    let mut paths = BTreeSet::new();
    let mut files = vec![dir];
    while let Some(path) = files.pop() {
        if path.is_dir() {
            files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        } else if path.extension().is_some_and(|e| e == "rs") {
            let source = std::fs::read_to_string(&path).unwrap();
            paths.extend(string_literals(&source).into_iter().filter(|s| is_route(s)));
        }
    }
    paths
}

fn is_route(s: &str) -> bool {
    s.starts_with('/')
        && s.len() > 1
        && s.chars().all(|c| c.is_ascii_alphanumeric() || "/{}_.-".contains(c))
}

/// The contents of the plain string literals of Rust source, outside comments.
fn string_literals(source: &str) -> Vec<String> {
    let mut literals = Vec::new();
    let mut chars = source.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '/' if chars.peek() == Some(&'/') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
            }
            '\'' => {
                // A char literal ('"', '\\') or a lifetime; skip a char literal whole.
                let rest: String = chars.clone().take(3).collect();
                if rest.starts_with('\\') {
                    chars.nth(2);
                } else if rest.chars().nth(1) == Some('\'') {
                    chars.nth(1);
                }
            }
            '"' => {
                let mut literal = String::new();
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => {
                            chars.next();
                        }
                        '"' => break,
                        c => literal.push(c),
                    }
                }
                literals.push(literal);
            }
            _ => {}
        }
    }
    literals
}

/// A concrete path for a pattern: ids that are well formed and unknown.
fn concrete(pattern: &str) -> String {
    pattern
        .split('/')
        .map(|segment| {
            if segment.starts_with('{') && segment.ends_with('}') {
                ulid::Ulid::new().to_string()
            } else {
                segment.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// The status and body of a keyless request.
async fn ask(app: &TestApp, method: &str, pattern: &str) -> (u16, Value) {
    let method = Method::from_bytes(method.as_bytes()).unwrap();
    let response = app.request(method, &concrete(pattern)).send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Whether the router sent this request to a handler, rather than to a fallback.
fn routed(status: u16, body: &Value) -> bool {
    let no_such_endpoint = status == 404 && body["message"] == "no such endpoint";
    status != 405 && !no_such_endpoint
}

async fn document(app: &TestApp) -> Value {
    let response = app.request(Method::GET, "/openapi.json").send().await.unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"].to_str().unwrap().to_owned();
    assert_eq!(content_type, "application/json");
    let (_, doc) = parts(response).await;
    doc
}

/// (method, path) of every operation of the document.
fn operations(doc: &Value) -> BTreeMap<(String, String), Value> {
    let mut operations = BTreeMap::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            if METHODS.contains(&method.to_uppercase().as_str()) || method == "trace" {
                operations.insert((method.to_uppercase(), path.clone()), operation.clone());
            }
        }
    }
    operations
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_and_the_routes_agree() {
    let app = spawn_app(Backend::Sqlite).await.unwrap();
    let doc = document(&app).await;
    let documented = operations(&doc);
    let registered = registered_paths();
    // A change in how routes are registered must not make this test see none of them.
    for path in ["/app/{app_id}/sign", "/root/apps/{app_id}", "/healthz", "/openapi.json"] {
        assert!(registered.contains(path), "{path} not found among {registered:?}");
    }

    let mut problems = Vec::new();
    for (method, path) in documented.keys() {
        let (status, body) = ask(&app, method, path).await;
        if !routed(status, &body) {
            problems.push(format!("{method} {path} is documented but not routed ({status})"));
        }
    }
    for path in &registered {
        // A literal that the router does not know (a path in a text) is not a route.
        let (status, body) = ask(&app, "GET", path).await;
        if !routed(status, &body) && status != 405 {
            continue;
        }
        if doc["paths"].get(path).is_none() {
            problems.push(format!("{path} is routed but not documented"));
            continue;
        }
        for method in METHODS {
            let (status, body) = ask(&app, method, path).await;
            let served = routed(status, &body);
            let known = documented.contains_key(&(method.to_owned(), path.clone()));
            if served && !known {
                problems.push(format!("{method} {path} is served ({status}) but not documented"));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "the OpenAPI document and the routes differ:\n{}",
        problems.join("\n")
    );
}

/// The schema a `$ref` names.
fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema["$ref"].as_str() {
        Some(reference) => {
            let name = reference.strip_prefix("#/components/schemas/").unwrap();
            &doc["components"]["schemas"][name]
        }
        None => schema,
    }
}

fn required(schema: &Value) -> BTreeSet<&str> {
    schema["required"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_states_the_contract() {
    let app = spawn_app(Backend::Sqlite).await.unwrap();
    let doc = document(&app).await;
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."), "{}", doc["openapi"]);
    let schemas = &doc["components"]["schemas"];

    // The error body, and its codes.
    let error = &schemas["ErrorBody"];
    assert_eq!(required(error), BTreeSet::from(["error", "message"]));
    let codes = resolve(&doc, &error["properties"]["error"]);
    for code in [
        "invalid_request",
        "invalid_grant",
        "invalid_client",
        "not_found",
        "method_not_allowed",
        "payload_too_large",
        "unsupported_media_type",
        "rate_limited",
        "unavailable",
        "internal",
    ] {
        assert!(codes["enum"].as_array().unwrap().contains(&Value::from(code)), "{code}");
    }
    let entry = schemas["ErrorBody"]["properties"]["errors"]["items"].clone();
    let entry = resolve(&doc, &entry);
    assert_eq!(required(entry), BTreeSet::from(["error_field", "error_message"]));

    // The keys: both in Authorization.
    for scheme in ["app_key", "root_key"] {
        let scheme = &doc["components"]["securitySchemes"][scheme];
        assert_eq!(
            (&scheme["type"], &scheme["in"], &scheme["name"]),
            (&Value::from("apiKey"), &Value::from("header"), &Value::from("Authorization"))
        );
    }

    // The token response.
    let token = resolve(&doc, &schemas["Issued"]);
    assert_eq!(
        required(token),
        BTreeSet::from([
            "auth_token",
            "refresh_token",
            "key_id",
            "public_key",
            "token_type",
            "expires_in",
            "refresh_expires_in",
            "session_id",
        ])
    );

    let public = [
        "/app/{app_id}/jwks.json",
        "/app/{app_id}/.well-known/oauth-authorization-server",
        "/.well-known/oauth-authorization-server/app/{app_id}",
    ];
    for ((method, path), operation) in operations(&doc) {
        let at = format!("{method} {path}");
        let responses = operation["responses"].as_object().unwrap();
        let error_in = |status: &str, body: &str| {
            let schema = &responses.get(status).unwrap_or_else(|| panic!("{at}: no {status}"))
                ["content"]["application/json"]["schema"];
            assert_eq!(schema["$ref"], format!("#/components/schemas/{body}"), "{at} {status}");
        };
        let error_of = |status: &str| error_in(status, "ErrorBody");
        // The OAuth endpoints: Basic or form credentials, a form body, RFC 6749's errors.
        if path.contains("/oauth/") {
            let basic_or_form = serde_json::json!([{"client_secret_basic": []}, {}]);
            assert_eq!(operation["security"], basic_or_form, "{at}");
            let body = &operation["requestBody"];
            let form = &body["content"]["application/x-www-form-urlencoded"]["schema"];
            assert!(form.is_object(), "{at}: a form body");
            assert_eq!(body["required"], Value::Bool(true), "{at}");
            for status in ["400", "401", "413", "429", "500", "503"] {
                error_in(status, "OAuthErrorBody");
            }
            assert!(responses.contains_key("200"), "{at}: no success response");
            for (status, response) in responses {
                assert!(response["headers"]["X-Request-Id"].is_object(), "{at} {status}");
            }
            continue;
        }
        // Security: the app key on /app/, the root key on /root/, none elsewhere.
        let scheme = if public.contains(&path.as_str()) {
            None
        } else if path.starts_with("/app/") {
            Some("app_key")
        } else if path.starts_with("/root/") {
            Some("root_key")
        } else {
            None
        };
        match scheme {
            Some(scheme) => {
                assert_eq!(operation["security"], serde_json::json!([{scheme: []}]), "{at}");
                for status in ["403", "429", "500", "503"] {
                    error_of(status);
                }
            }
            None => assert!(operation.get("security").is_none(), "{at}"),
        }
        // A JSON body: required (unless optional by design), and its failures.
        if let Some(body) = operation.get("requestBody") {
            assert!(body["content"]["application/json"]["schema"].is_object(), "{at}");
            let optional = path.ends_with("/rotate-app-key");
            assert_eq!(body["required"] == Value::Bool(true), !optional, "{at}");
            for status in ["400", "413", "415"] {
                error_of(status);
            }
        }
        assert!(responses.keys().any(|s| s.starts_with('2')), "{at}: no success response");
        for (status, response) in responses {
            assert!(response["headers"]["X-Request-Id"].is_object(), "{at} {status}");
        }
    }
    let sign = &doc["paths"]["/app/{app_id}/sign"]["post"];
    let request = resolve(&doc, &sign["requestBody"]["content"]["application/json"]["schema"]);
    assert_eq!(required(request), BTreeSet::from(["sub", "ip", "useragent"]));
    let ok = &sign["responses"]["200"]["content"]["application/json"]["schema"];
    assert_eq!(ok["$ref"], "#/components/schemas/Issued");
    let renew = &doc["paths"]["/app/{app_id}/renew"]["post"];
    assert!(renew["responses"]["401"].is_object(), "renew answers 401 invalid_grant");
}
