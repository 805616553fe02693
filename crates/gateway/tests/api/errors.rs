//! The error contract: JSON bodies, statuses, and named fields.

use reqwest::Method;
use serde_json::json;

use crate::helpers::{assert_error, parts, TestApp};
use crate::on_both_backends;

on_both_backends!(
    bodies_must_be_json,
    oversized_bodies_get_413,
    malformed_json_gets_400_naming_the_field,
    unknown_routes_and_methods,
    settings_out_of_range_name_the_field,
);

async fn bodies_must_be_json(app: TestApp) {
    for content_type in [None, Some("text/plain"), Some("application/x-www-form-urlencoded")] {
        let mut request = app.root(Method::POST, "/root/apps").body(r#"{"name":"x"}"#);
        if let Some(ct) = content_type {
            request = request.header("Content-Type", ct);
        }
        let (status, body) = parts(request.send().await.unwrap()).await;
        assert_error(status, &body, 415, "unsupported_media_type");
    }
    let response = app
        .root(Method::POST, "/root/apps")
        .header("Content-Type", "application/json; charset=utf-8")
        .body(r#"{"name":"charset-ok"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
}

async fn oversized_bodies_get_413(app: TestApp) {
    let big = json!({"name": "x".repeat(17 * 1024)});
    let (status, body) =
        parts(app.root(Method::POST, "/root/apps").json(&big).send().await.unwrap()).await;
    assert_error(status, &body, 413, "payload_too_large");
    let (_, list) = parts(app.root(Method::GET, "/root/apps").send().await.unwrap()).await;
    assert_eq!(list["apps"], json!([]), "nothing was created");
}

async fn malformed_json_gets_400_naming_the_field(app: TestApp) {
    let cases = [
        (r#"{"name": "a""#, "body"),
        (r#"{"name": "a"} trailing"#, "body"),
        (r#"[{"name": "a"}]"#, "body"),
        (r#"{"name": "a", "token_expiry": 60}"#, "token_expiry"),
        (r#"{"name": "a", "token_expire": "sixty"}"#, "token_expire"),
        (r#"{"name": "a", "token_expire": 1e400}"#, "token_expire"),
        (r#"{"name": "a", "refresh_rotation": "yes"}"#, "refresh_rotation"),
        (r#"{"name": "a", "on_reuse": "shrug"}"#, "on_reuse"),
        (r#"{"token_expire": 60}"#, "name"),
        (r#"{"name": ""}"#, "name"),
    ];
    for (raw, field) in cases {
        let response = app
            .root(Method::POST, "/root/apps")
            .header("Content-Type", "application/json")
            .body(raw)
            .send()
            .await
            .unwrap();
        let (status, body) = parts(response).await;
        assert_error(status, &body, 400, "invalid_request");
        assert_eq!(body["errors"][0]["error_field"], field, "{raw} -> {body}");
        assert!(body["errors"][0]["error_message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    let (_, list) = parts(app.root(Method::GET, "/root/apps").send().await.unwrap()).await;
    assert_eq!(list["apps"], json!([]), "no rejected request created an app");
}

async fn unknown_routes_and_methods(app: TestApp) {
    // Inside the app scope too: a path under /app/{id} that names no route of it, or a
    // route with something after it, is the same 404 as any unknown path.
    for path in [
        "/nope",
        "/app",
        "/app/",
        "/app/01ARZ3NDEKTSV4RRFFQ69G5FAV/nope",
        "/app/01ARZ3NDEKTSV4RRFFQ69G5FAV/renew/more",
        "/app/01ARZ3NDEKTSV4RRFFQ69G5FAV/oauth",
    ] {
        let (status, body) = parts(app.request(Method::POST, path).send().await.unwrap()).await;
        assert_error(status, &body, 404, "not_found");
        assert_eq!(body["message"], "no such endpoint", "{path}");
    }
    for (method, path) in [
        (Method::GET, "/app/01ARZ3NDEKTSV4RRFFQ69G5FAV/renew"),
        (Method::GET, "/app/01ARZ3NDEKTSV4RRFFQ69G5FAV/oauth/token"),
        (Method::POST, "/app/01ARZ3NDEKTSV4RRFFQ69G5FAV"),
        (Method::POST, "/healthz"),
        (Method::DELETE, "/root/apps"),
        (Method::PUT, "/root/apps/01ARZ3NDEKTSV4RRFFQ69G5FAV"),
        (Method::POST, "/app/01ARZ3NDEKTSV4RRFFQ69G5FAV/jwks.json"),
    ] {
        let (status, body) = parts(app.request(method.clone(), path).send().await.unwrap()).await;
        assert_error(status, &body, 405, "method_not_allowed");
    }
    for path in ["/healthz", "/ping", "/health", "/readyz"] {
        let (status, body) = parts(app.request(Method::GET, path).send().await.unwrap()).await;
        assert_eq!(status, 200, "{path}");
        assert_eq!(body["status"], "ok");
    }
}

async fn settings_out_of_range_name_the_field(app: TestApp) {
    let response = app
        .root(Method::POST, "/root/apps")
        .json(&json!({"name": "ttl", "token_expire": -5, "refresh_expire": 9_999_999_999_i64, "reuse_grace": 5}))
        .send()
        .await
        .unwrap();
    let (status, body) = parts(response).await;
    assert_error(status, &body, 400, "invalid_request");
    let fields: Vec<_> =
        body["errors"].as_array().unwrap().iter().map(|e| e["error_field"].clone()).collect();
    assert_eq!(fields, [json!("token_expire"), json!("refresh_expire")]);

    app.create_app(json!({"name": "taken"})).await;
    let response =
        app.root(Method::POST, "/root/apps").json(&json!({"name": "taken"})).send().await.unwrap();
    let (status, body) = parts(response).await;
    assert_error(status, &body, 400, "invalid_request");
    assert_eq!(body["errors"][0]["error_field"], "name");
}
