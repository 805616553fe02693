//! App-key and root-key authentication: every failure looks the same, and argon2 runs
//! only on a cache miss.

use reqwest::Method;
use serde_json::json;

use crate::helpers::{assert_error, parts, CreatedApp, TestApp};
use crate::on_both_backends;

on_both_backends!(
    a_keyed_app_key_is_checked_without_argon2,
    every_bad_app_credential_gets_the_same_403,
    the_app_key_is_checked_with_argon2_once,
    concurrent_requests_with_a_new_key_run_argon2_once,
    bearer_and_bare_keys_both_work,
    root_endpoints_need_the_root_key,
    a_rotated_app_key_honours_its_grace,
);

async fn every_bad_app_credential_gets_the_same_403(app: TestApp) {
    let created = app.create_app(json!({"name": "alpha"})).await;
    let other = app.create_app(json!({"name": "beta"})).await;
    let path = |id: &str| format!("/app/{id}/pub-keys");
    let unknown_app = ulid::Ulid::new().to_string();
    let cases: Vec<(String, Option<String>)> = vec![
        (path(&created.app_id), Some("kg_wrongwrongwrongwrongwrongwrongwrongwrongwro".into())),
        (path(&created.app_id), Some(other.app_key.clone())),
        (path(&created.app_id), None),
        (path(&created.app_id), Some("x".repeat(10 * 1024))),
        (path(&created.app_id), Some(format!("Bearer {}", "y".repeat(10 * 1024)))),
        (path(&unknown_app), Some(created.app_key.clone())),
        (path("not-a-ulid"), Some(created.app_key.clone())),
        (path(&created.app_id.to_lowercase()), Some(created.app_key.clone())),
        (format!("/app/{}", created.app_id), Some(app.root_key.clone())),
    ];
    let mut bodies = Vec::new();
    for (path, key) in cases {
        let mut request = app.request(Method::GET, &path);
        if let Some(key) = key {
            request = request.header("Authorization", key);
        }
        let (status, body) = parts(request.send().await.unwrap()).await;
        assert_error(status, &body, 403, "invalid_client");
        bodies.push(body);
    }
    assert!(bodies.windows(2).all(|w| w[0] == w[1]), "bodies differ: {bodies:?}");
    assert_eq!(bodies[0]["message"], "invalid app key or id");
}

/// Stores the app's key as an argon2id hash, as keygate did before the keyed form.
async fn make_legacy(app: &TestApp, created: &CreatedApp) {
    let app_id = created.app_id.parse().unwrap();
    let hashes = keygate_tenants::AppKeyHashes {
        current: keygate_tenants::hash_secret(&created.app_key).unwrap(),
        previous: None,
        previous_expires_at: None,
    };
    app.tenants.store().set_app_key(app_id, &hashes, 1_700_000_000).await.unwrap();
    app.tenants.forget(app_id);
}

async fn a_keyed_app_key_is_checked_without_argon2(app: TestApp) {
    let created = app.create_app(json!({"name": "keyed"})).await;
    let before = app.tenants.key_check_counts();
    for key in [created.app_key.as_str(), "kg_0123456789012345678901234567890123456789012"] {
        let response = app
            .request(Method::GET, &format!("/app/{}", created.app_id))
            .header("Authorization", key)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), if key == created.app_key { 200 } else { 403 });
    }
    let after = app.tenants.key_check_counts();
    assert_eq!(after.argon2, before.argon2, "no argon2 for a keyed hash, right key or wrong");
    assert_eq!(after.keyed, before.keyed + 1);
}

/// Apps made before the keyed form (argon2id hashes) still authenticate: argon2 runs once,
/// and the hash is upgraded to the keyed form.
async fn the_app_key_is_checked_with_argon2_once(app: TestApp) {
    let created = app.create_app(json!({"name": "gamma"})).await;
    make_legacy(&app, &created).await;
    let before = app.tenants.argon2_runs();
    for _ in 0..20 {
        let response = app
            .request(Method::GET, &format!("/app/{}", created.app_id))
            .header("Authorization", &created.app_key)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    let runs = app.tenants.argon2_runs() - before;
    assert_eq!(runs, 1, "argon2 ran {runs} times for 20 requests with the same key");
    let app_id = created.app_id.parse().unwrap();
    let stored = app.tenants.store().get_app(app_id).await.unwrap().unwrap();
    assert!(stored.key.current.starts_with("hmac-sha256$"), "upgraded on its first check");

    // Malformed keys, unknown apps and missing headers never reach argon2.
    let before = app.tenants.argon2_runs();
    for key in ["", "short", &"k".repeat(10_000)] {
        let _ = app
            .request(Method::GET, &format!("/app/{}", created.app_id))
            .header("Authorization", key)
            .send()
            .await
            .unwrap();
    }
    let _ = app
        .request(Method::GET, &format!("/app/{}", ulid::Ulid::new()))
        .header("Authorization", &created.app_key)
        .send()
        .await
        .unwrap();
    assert_eq!(app.tenants.argon2_runs(), before);
}

/// A burst of requests with an argon2id-hashed key not yet in the cache runs argon2 once: the others wait for that run, rather than taking the other argon2 slots
/// (19 MiB and a core each) to check the same key again.
async fn concurrent_requests_with_a_new_key_run_argon2_once(app: TestApp) {
    let created = app.create_app(json!({"name": "burst"})).await;
    make_legacy(&app, &created).await;
    let before = app.tenants.argon2_runs();
    let requests = (0..16).map(|_| {
        app.request(Method::GET, &format!("/app/{}", created.app_id))
            .header("Authorization", &created.app_key)
            .send()
    });
    for response in futures::future::join_all(requests).await {
        assert_eq!(response.unwrap().status(), 200);
    }
    let runs = app.tenants.argon2_runs() - before;
    assert_eq!(runs, 1, "argon2 ran {runs} times for 16 concurrent requests with one key");
}

async fn bearer_and_bare_keys_both_work(app: TestApp) {
    let created = app.create_app(json!({"name": "delta", "token_expire": 60})).await;
    for header in [created.app_key.clone(), format!("Bearer {}", created.app_key)] {
        let response = app
            .request(Method::GET, &format!("/app/{}", created.app_id))
            .header("Authorization", header)
            .send()
            .await
            .unwrap();
        let (status, body) = parts(response).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["app_id"], created.app_id.as_str());
        assert_eq!(body["name"], "delta");
        assert_eq!(body["token_expire"], 60);
        let text = body.to_string();
        assert!(!text.contains("hash") && !text.contains(&created.app_key), "{text}");
    }
}

async fn root_endpoints_need_the_root_key(app: TestApp) {
    let created = app.create_app(json!({"name": "epsilon"})).await;
    let wrong =
        [None, Some("kgr_not_the_root_key_at_all_000000000"), Some(created.app_key.as_str())];
    for key in wrong {
        let mut request = app.request(Method::GET, "/root/apps");
        if let Some(key) = key {
            request = request.header("Authorization", key);
        }
        let (status, body) = parts(request.send().await.unwrap()).await;
        assert_error(status, &body, 403, "invalid_client");
    }
    // A rejected request changes nothing.
    let response = app
        .request(Method::POST, "/root/apps")
        .header("Authorization", "kgr_wrong_wrong_wrong_wrong_wrong_wrong")
        .json(&json!({"name": "sneaky"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    let (_, list) = parts(app.root(Method::GET, "/root/apps").send().await.unwrap()).await;
    let names: Vec<_> =
        list["apps"].as_array().unwrap().iter().map(|a| a["name"].clone()).collect();
    assert_eq!(names, [json!("epsilon")]);
}

async fn a_rotated_app_key_honours_its_grace(app: TestApp) {
    let created = app.create_app(json!({"name": "zeta"})).await;
    let get = |key: String| {
        app.request(Method::GET, &format!("/app/{}", created.app_id))
            .header("Authorization", key)
            .send()
    };
    assert_eq!(get(created.app_key.clone()).await.unwrap().status(), 200);

    let rotate = |body: serde_json::Value| {
        app.root(Method::POST, &format!("/root/apps/{}/rotate-app-key", created.app_id))
            .json(&body)
            .send()
    };
    let (status, rotated) = parts(rotate(json!({"grace": 600})).await.unwrap()).await;
    assert_eq!(status, 200, "{rotated}");
    let second = rotated["app_key"].as_str().unwrap().to_owned();
    assert!(rotated["previous_key_valid_until"].as_i64().is_some());
    assert_eq!(get(second.clone()).await.unwrap().status(), 200);
    assert_eq!(get(created.app_key.clone()).await.unwrap().status(), 200, "old key within grace");

    // Without a grace the previous key stops at once.
    let response = app
        .root(Method::POST, &format!("/root/apps/{}/rotate-app-key", created.app_id))
        .send()
        .await
        .unwrap();
    let (status, rotated) = parts(response).await;
    assert_eq!(status, 200, "{rotated}");
    assert!(rotated["previous_key_valid_until"].is_null());
    let third = rotated["app_key"].as_str().unwrap().to_owned();
    assert_eq!(get(third).await.unwrap().status(), 200);
    assert_eq!(get(second).await.unwrap().status(), 403);
    assert_eq!(get(created.app_key.clone()).await.unwrap().status(), 403);

    let (status, body) = parts(rotate(json!({"grace": -1})).await.unwrap()).await;
    assert_error(status, &body, 400, "invalid_request");
    assert_eq!(body["errors"][0]["error_field"], "grace");
}
