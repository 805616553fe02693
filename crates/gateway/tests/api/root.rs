//! The root (platform admin) API for apps.

use reqwest::Method;
use serde_json::json;

use crate::helpers::{assert_error, parts, TestApp};
use crate::on_both_backends;

on_both_backends!(
    app_lifecycle,
    unknown_apps_are_404_for_root,
    a_malformed_id_in_a_path_is_an_unknown_one_once_the_key_is_checked,
    live_sessions_are_counted_per_app,
    an_admin_finds_a_subjects_sessions_and_revokes_one_or_all,
);

async fn app_lifecycle(app: TestApp) {
    let created = app
        .create_app(json!({"name": "shop", "issuer": "https://shop.example", "audience": "shop-web", "reuse_grace": 0}))
        .await;
    assert!(created.app_key.starts_with("kg_"));
    assert_eq!(created.key_id.len(), 26);

    let (status, got) = parts(
        app.root(Method::GET, &format!("/root/apps/{}", created.app_id)).send().await.unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(got["issuer"], "https://shop.example");
    assert_eq!(got["audience"], "shop-web");
    assert_eq!(got["reuse_grace"], 0);
    assert_eq!(got["token_expire"], 900);
    assert_eq!(got["refresh_expire"], 2_592_000);
    assert_eq!(got["session_max_age"], 7_776_000);
    assert_eq!(got["rotation_period"], 2_592_000);
    assert_eq!(got["refresh_rotation"], true);
    assert_eq!(got["on_reuse"], "revoke_session");
    assert_eq!(got["max_sessions_per_sub"], 0);

    let response = app
        .root(Method::PATCH, &format!("/root/apps/{}", created.app_id))
        .json(&json!({"token_expire": 300, "on_reuse": "revoke_subject", "name": "shop2"}))
        .send()
        .await
        .unwrap();
    let (status, updated) = parts(response).await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(updated["token_expire"], 300);
    assert_eq!(updated["on_reuse"], "revoke_subject");
    assert_eq!(updated["name"], "shop2");
    assert_eq!(updated["issuer"], "https://shop.example", "untouched fields stay");

    // A rejected update changes nothing.
    let response = app
        .root(Method::PATCH, &format!("/root/apps/{}", created.app_id))
        .json(&json!({"token_expire": 120, "session_max_age": -1}))
        .send()
        .await
        .unwrap();
    let (status, body) = parts(response).await;
    assert_error(status, &body, 400, "invalid_request");
    assert_eq!(body["errors"][0]["error_field"], "session_max_age");
    let (_, got) = parts(
        app.root(Method::GET, &format!("/root/apps/{}", created.app_id)).send().await.unwrap(),
    )
    .await;
    assert_eq!(got["token_expire"], 300);

    let (status, list) = parts(app.root(Method::GET, "/root/apps").send().await.unwrap()).await;
    assert_eq!(status, 200);
    assert_eq!(list["apps"].as_array().unwrap().len(), 1);

    let (status, body) = parts(
        app.root(Method::DELETE, &format!("/root/apps/{}", created.app_id)).send().await.unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["deleted"], created.app_id.as_str());
    let (status, _) = parts(
        app.root(Method::GET, &format!("/root/apps/{}", created.app_id)).send().await.unwrap(),
    )
    .await;
    assert_eq!(status, 404);
    let (status, _) = parts(
        app.request(Method::GET, &format!("/app/{}/jwks.json", created.app_id))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 404);
    let response = app
        .request(Method::GET, &format!("/app/{}/pub-keys", created.app_id))
        .header("Authorization", &created.app_key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403, "a deleted app's key no longer works");
}

async fn unknown_apps_are_404_for_root(app: TestApp) {
    let missing = ulid::Ulid::new().to_string();
    for (method, path) in [
        (Method::GET, format!("/root/apps/{missing}")),
        (Method::DELETE, format!("/root/apps/{missing}")),
        (Method::GET, "/root/apps/not-an-id".to_owned()),
        (Method::POST, format!("/root/apps/{missing}/keys/rotate")),
        (Method::GET, format!("/root/apps/{missing}/keys")),
        (Method::POST, format!("/root/apps/{missing}/rotate-app-key")),
    ] {
        let (status, body) = parts(app.root(method, &path).send().await.unwrap()).await;
        assert_error(status, &body, 404, "not_found");
    }
}

/// A malformed id answers as an unknown one does, naming it; on a root route only once the
/// root key is checked.
async fn a_malformed_id_in_a_path_is_an_unknown_one_once_the_key_is_checked(app: TestApp) {
    let missing_key = ulid::Ulid::new().to_string();
    for (method, path, message) in [
        (Method::GET, "/root/apps/not-an-id".to_owned(), r#"app "not-an-id" not found"#),
        (Method::DELETE, "/root/apps/not-an-id".to_owned(), r#"app "not-an-id" not found"#),
        (Method::GET, "/root/apps/not-an-id/events".to_owned(), r#"app "not-an-id" not found"#),
        (Method::GET, "/root/apps/not-an-id/webhook".to_owned(), r#"app "not-an-id" not found"#),
        (
            Method::POST,
            format!("/root/apps/not-an-id/keys/{missing_key}/revoke"),
            r#"app "not-an-id" not found"#,
        ),
        (
            Method::POST,
            "/root/apps/not-an-id/keys/not-a-key/revoke".to_owned(),
            r#"key "not-a-key" not found"#,
        ),
    ] {
        let (status, body) = parts(app.root(method.clone(), &path).send().await.unwrap()).await;
        assert_error(status, &body, 404, "not_found");
        assert_eq!(body["message"], message, "{method} {path}");
        let (status, body) = parts(
            app.request(method.clone(), &path)
                .header("Authorization", "kgr_not_the_root_key")
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_error(status, &body, 403, "invalid_client");
    }
    let (status, body) =
        parts(app.request(Method::GET, "/app/not-an-id/jwks.json").send().await.unwrap()).await;
    assert_error(status, &body, 404, "not_found");
    assert_eq!(body["message"], "no such app");
}

/// `GET /root/live-sessions`: every app, with its sessions that are neither revoked nor
/// past their absolute expiry; the root key only.
async fn live_sessions_are_counted_per_app(app: TestApp) {
    let busy = app.create_app(json!({"name": "busy"})).await;
    let idle = app.create_app(json!({"name": "idle"})).await;
    let kept = app.sign(&busy, "ann").await;
    app.sign(&busy, "ben").await;
    let ended = app.sign(&busy, "cat").await;
    let (status, body) =
        app.app_post(&busy, "logout", &json!({"token": ended["auth_token"]})).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) =
        parts(app.root(Method::GET, "/root/live-sessions").send().await.unwrap()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["live_sessions"][&busy.app_id], 2, "{body}");
    assert_eq!(body["live_sessions"][&idle.app_id], 0, "{body}");
    assert_eq!(body["live_sessions"].as_object().unwrap().len(), 2, "{body}");
    assert!(kept["session_id"].is_string());
    let response = app.request(Method::GET, "/root/live-sessions").send().await.unwrap();
    let (status, body) = parts(response).await;
    assert_error(status, &body, 403, "invalid_client");
}

async fn an_admin_finds_a_subjects_sessions_and_revokes_one_or_all(app: TestApp) {
    let created = app.create_app(json!({"name": "support"})).await;
    let other = app.create_app(json!({"name": "elsewhere"})).await;
    let first = app.sign(&created, "dora").await;
    let second = app.sign(&created, "dora").await;
    app.sign(&created, "eve").await;
    app.sign(&other, "dora").await;
    let list = format!("/root/apps/{}/sessions?sub=dora", created.app_id);
    let (status, body) = parts(app.root(Method::GET, &list).send().await.unwrap()).await;
    assert_eq!(status, 200, "{body}");
    let sessions = body["sessions"].as_array().unwrap();
    let ids: Vec<&str> = sessions.iter().map(|s| s["session_id"].as_str().unwrap()).collect();
    assert_eq!(ids, [&first["session_id"], &second["session_id"]], "oldest first, this app's");
    for field in ["created_at", "last_renewed_at", "expires_at", "ip", "useragent", "key_id"] {
        assert!(!sessions[0][field].is_null(), "{field}: {body}");
    }
    assert_eq!(sessions[0]["ip"], "203.0.113.7");

    // Bad input: refused, nothing revoked.
    let revoke = format!("/root/apps/{}/sessions/revoke", created.app_id);
    for (query, field) in [("", "sub"), ("?sub=", "sub"), ("?sub=dora&x=1", "sub")] {
        let path = format!("/root/apps/{}/sessions{query}", created.app_id);
        let (status, body) = parts(app.root(Method::GET, &path).send().await.unwrap()).await;
        assert_error(status, &body, 400, "invalid_request");
        assert_eq!(body["errors"][0]["error_field"], field, "{query}");
    }
    for bad in [
        json!({}),
        json!({"sub": "dora", "session_id": first["session_id"]}),
        json!({"session_id": "nope"}),
        json!({"sub": ""}),
        json!({"sub": "dora", "all": true}),
    ] {
        let response = app.root(Method::POST, &revoke).json(&bad).send().await.unwrap();
        let (status, body) = parts(response).await;
        assert_error(status, &body, 400, "invalid_request");
    }
    let response = app.request(Method::POST, &revoke).json(&json!({"sub": "dora"})).send();
    let (status, body) = parts(response.await.unwrap()).await;
    assert_error(status, &body, 403, "invalid_client");
    let unknown = format!("/root/apps/{}/sessions/revoke", ulid::Ulid::new());
    let response = app.root(Method::POST, &unknown).json(&json!({"sub": "dora"})).send();
    let (status, body) = parts(response.await.unwrap()).await;
    assert_error(status, &body, 404, "not_found");
    let (_, body) = parts(app.root(Method::GET, &list).send().await.unwrap()).await;
    assert_eq!(body["sessions"].as_array().unwrap().len(), 2, "nothing was revoked");

    // One session, then the rest of the subject; the other subject and app keep theirs.
    let one = json!({"session_id": first["session_id"]});
    let response = app.root(Method::POST, &revoke).json(&one).send().await.unwrap();
    let (status, body) = parts(response).await;
    assert_eq!((status, body["revoked"].as_u64()), (200, Some(1)), "{body}");
    let (status, _) = app.renew(&created, &first["refresh_token"]).await;
    assert_eq!(status, 401, "the revoked session renews no more");
    let (_, body) = parts(app.root(Method::GET, &list).send().await.unwrap()).await;
    assert_eq!(body["sessions"][0]["session_id"], second["session_id"]);
    let response = app.root(Method::POST, &revoke).json(&json!({"sub": "dora"})).send();
    let (status, body) = parts(response.await.unwrap()).await;
    assert_eq!((status, body["revoked"].as_u64()), (200, Some(1)), "{body}");
    let (_, body) = parts(app.root(Method::GET, &list).send().await.unwrap()).await;
    assert_eq!(body["sessions"], json!([]));
    let (_, live) = parts(app.root(Method::GET, "/root/live-sessions").send().await.unwrap()).await;
    assert_eq!(live["live_sessions"][&created.app_id], 1, "eve's session: {live}");
    assert_eq!(live["live_sessions"][&other.app_id], 1, "the other app's: {live}");

    // Each revocation is in the audit trail, by root.
    let events = format!("/root/apps/{}/events?limit=2", created.app_id);
    let (_, page) = parts(app.root(Method::GET, &events).send().await.unwrap()).await;
    assert_eq!(page["events"][0]["kind"], "subject_revoked");
    assert_eq!(page["events"][1]["kind"], "session_revoked");
    assert_eq!(page["events"][1]["actor"], "root");
}
