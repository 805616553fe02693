//! Sessions over HTTP: sign, renew with rotation, grace and reuse detection, verify,
//! logout and revoke, on both databases.

use std::collections::HashSet;

use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::{assert_error, header, parts, payload, TestApp};
use crate::on_both_backends;

on_both_backends!(
    a_full_session,
    reuse_revokes_the_session,
    a_retry_within_the_grace_is_idempotent,
    renews_near_the_absolute_expiry_are_capped_and_keep_working,
    concurrent_renews_rotate_exactly_once,
    concurrent_renews_without_grace_revoke_the_session,
    tokens_are_scoped_to_their_app,
    tokens_carry_exactly_the_designed_claims,
    refresh_notbefore_reproduces_jwtplus,
    non_rotating_apps_keep_their_refresh_token,
    the_session_limit_revokes_the_oldest,
    reuse_can_revoke_every_session_of_the_subject,
    sessions_are_listed_and_revoked,
    bad_input_names_every_field,
    a_revoked_signing_key_ends_its_tokens,
);

fn assert_invalid_grant(status: u16, body: &Value) {
    assert_error(status, body, 401, "invalid_grant");
    assert_eq!(body["message"], "invalid refresh token");
}

async fn a_full_session(app: TestApp) {
    let tenant = app.create_app(json!({"name": "full"})).await;
    let signed = app.sign(&tenant, "alice").await;
    assert_eq!(signed["token_type"], "Bearer");
    assert_eq!(signed["expires_in"], 900);
    assert_eq!(signed["key_id"], tenant.key_id.as_str());
    assert_eq!(signed["public_key"], tenant.public_key.as_str());
    assert!(app.verified(&tenant, &signed["auth_token"]).await);

    let mut refresh = signed["refresh_token"].clone();
    let mut auth_tokens = vec![signed["auth_token"].clone()];
    for _ in 0..3 {
        let (status, renewed) = app.renew(&tenant, &refresh).await;
        assert_eq!(status, 200, "{renewed}");
        assert_eq!(renewed["session_id"], signed["session_id"]);
        assert_ne!(payload(&renewed["refresh_token"])["jid"], payload(&refresh)["jid"]);
        refresh = renewed["refresh_token"].clone();
        auth_tokens.push(renewed["auth_token"].clone());
    }
    for token in &auth_tokens {
        assert!(app.verified(&tenant, token).await);
    }
    let (status, body) = app.app_post(&tenant, "logout", &json!({"token": auth_tokens[3]})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"status": "ok", "revoked": 1}));
    let (status, body) = app.renew(&tenant, &refresh).await;
    assert_invalid_grant(status, &body);
    for token in &auth_tokens {
        assert!(
            !app.verified(&tenant, token).await,
            "a logged-out session's tokens no longer verify"
        );
    }
    let (_, body) = app.app_post(&tenant, "logout", &json!({"token": refresh})).await;
    assert_eq!(body["revoked"], 0, "logging out twice revokes nothing more");
}

async fn reuse_revokes_the_session(app: TestApp) {
    let tenant = app.create_app(json!({"name": "reuse", "reuse_grace": 1})).await;
    let signed = app.sign(&tenant, "bob").await;
    let t = signed["refresh_token"].clone();
    let (status, t1) = app.renew(&tenant, &t).await;
    assert_eq!(status, 200);
    // Past the grace period of one second.
    app.clock.advance(2);
    let (status, body) = app.renew(&tenant, &t).await;
    assert_invalid_grant(status, &body);
    let (status, body) = app.renew(&tenant, &t1["refresh_token"]).await;
    assert_invalid_grant(status, &body);
    assert!(!app.verified(&tenant, &t1["auth_token"]).await);
    let (_, body) = app.app_post(&tenant, "verify", &json!({"token": t1["auth_token"]})).await;
    assert_eq!(body, json!({"verified": false, "reason": "session revoked"}));
}

async fn a_retry_within_the_grace_is_idempotent(app: TestApp) {
    let tenant = app.create_app(json!({"name": "grace", "reuse_grace": 30})).await;
    let t = app.sign(&tenant, "carol").await["refresh_token"].clone();
    let (s1, first) = app.renew(&tenant, &t).await;
    let (s2, second) = app.renew(&tenant, &t).await;
    assert_eq!((s1, s2), (200, 200), "{first} {second}");
    let (p1, p2) = (payload(&first["refresh_token"]), payload(&second["refresh_token"]));
    assert_eq!(p1["jid"], p2["jid"], "the retry answers with the current refresh token");
    assert_eq!(p1["iat"], p2["iat"]);
    assert_eq!(p1["exp"], p2["exp"]);
    assert_ne!(payload(&first["auth_token"])["jid"], payload(&second["auth_token"])["jid"]);
    let (status, _) = app.renew(&tenant, &second["refresh_token"]).await;
    assert_eq!(status, 200, "the re-issued token is the current one and rotates");

    // The previous token from another user agent is reuse, even within the grace.
    let t = app.sign(&tenant, "carol").await["refresh_token"].clone();
    let (status, t1) = app.renew(&tenant, &t).await;
    assert_eq!(status, 200);
    let (status, body) = app.renew_as(&tenant, &t, "another-agent").await;
    assert_invalid_grant(status, &body);
    let (status, _) = app.renew(&tenant, &t1["refresh_token"]).await;
    assert_eq!(status, 401, "the session is revoked");
}

/// A refresh token never outlives its session: when `now + refresh_expire` passes the
/// session's absolute expiry, the new token is signed again with the capped `exp`. That
/// token is not the one whose digest the rotation stored, so its own renew is judged by
/// signature: it must still rotate, and its predecessor must still be reuse.
async fn renews_near_the_absolute_expiry_are_capped_and_keep_working(app: TestApp) {
    let settings = json!({"name": "capped", "refresh_expire": 7200, "session_max_age": 3600, "reuse_grace": 0});
    let tenant = app.create_app(settings).await;
    let signed = app.sign(&tenant, "erin").await;
    let end = payload(&signed["refresh_token"])["exp"].as_i64().unwrap();
    assert_eq!(end - payload(&signed["refresh_token"])["iat"].as_i64().unwrap(), 3600);
    let mut token = signed["refresh_token"].clone();
    let mut spent = Vec::new();
    for round in 0..3 {
        let (status, renewed) = app.renew(&tenant, &token).await;
        assert_eq!(status, 200, "round {round}: {renewed}");
        let claims = payload(&renewed["refresh_token"]);
        assert_eq!(claims["exp"].as_i64(), Some(end), "round {round}: capped at the session's end");
        let now = claims["iat"].as_i64().unwrap();
        assert_eq!(renewed["refresh_expires_in"].as_i64(), Some(end - now));
        spent.push(std::mem::replace(&mut token, renewed["refresh_token"].clone()));
    }
    let (status, body) = app.renew(&tenant, &spent[1]).await;
    assert_invalid_grant(status, &body);
    let (status, body) = app.renew(&tenant, &token).await;
    assert_invalid_grant(status, &body);
}

/// `n` renews of one token, all in flight at once.
async fn renew_burst(
    app: &TestApp,
    tenant: &crate::helpers::CreatedApp,
    token: &Value,
    n: usize,
) -> Vec<(u16, Value)> {
    futures::future::join_all((0..n).map(|_| app.renew(tenant, token))).await
}

async fn concurrent_renews_rotate_exactly_once(app: TestApp) {
    let tenant = app.create_app(json!({"name": "burst", "reuse_grace": 60})).await;
    let mut token = app.sign(&tenant, "dave").await["refresh_token"].clone();
    for round in 0..20 {
        let results = renew_burst(&app, &tenant, &token, 50).await;
        let statuses: Vec<u16> = results.iter().map(|(s, _)| *s).collect();
        assert!(
            statuses.iter().all(|s| *s == 200),
            "round {round}: {statuses:?} {:?}",
            results.iter().find(|(s, _)| *s != 200)
        );
        let jids: HashSet<String> = results
            .iter()
            .map(|(_, body)| payload(&body["refresh_token"])["jid"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(jids.len(), 1, "round {round}: exactly one new jid, got {jids:?}");
        assert_ne!(jids.iter().next().unwrap(), payload(&token)["jid"].as_str().unwrap());
        token = results[0].1["refresh_token"].clone();
    }
}

async fn concurrent_renews_without_grace_revoke_the_session(app: TestApp) {
    let tenant = app.create_app(json!({"name": "nograce", "reuse_grace": 0})).await;
    for round in 0..5 {
        let signed = app.sign(&tenant, "erin").await;
        let results = renew_burst(&app, &tenant, &signed["refresh_token"], 50).await;
        let ok: Vec<_> = results.iter().filter(|(s, _)| *s == 200).collect();
        assert_eq!(ok.len(), 1, "round {round}: exactly one 200");
        assert!(
            results.iter().all(|(s, _)| *s == 200 || *s == 401),
            "no 5xx: {:?}",
            results.iter().map(|r| r.0).collect::<Vec<_>>()
        );
        let (status, _) = app.renew(&tenant, &ok[0].1["refresh_token"]).await;
        assert_eq!(status, 401, "round {round}: the session is revoked afterwards");
        assert!(!app.verified(&tenant, &ok[0].1["auth_token"]).await);
    }
}

async fn tokens_are_scoped_to_their_app(app: TestApp) {
    let a = app.create_app(json!({"name": "tenant-a"})).await;
    let b = app.create_app(json!({"name": "tenant-b"})).await;
    let b_session = app.sign(&b, "frank").await;
    let (status, body) = app.renew(&a, &b_session["refresh_token"]).await;
    assert_invalid_grant(status, &body);
    assert!(!app.verified(&a, &b_session["auth_token"]).await);
    let (status, _) = app.app_post(&a, "logout", &json!({"token": b_session["auth_token"]})).await;
    assert_eq!(status, 401);
    let (status, renewed) = app.renew(&b, &b_session["refresh_token"]).await;
    assert_eq!(status, 200, "B's token was not consumed by the attempt on A: {renewed}");

    let response = app
        .request(Method::POST, &format!("/app/{}/renew", a.app_id))
        .header("Authorization", &b.app_key)
        .json(
            &json!({"refresh_token": renewed["refresh_token"], "ip": "1.1.1.1", "useragent": "x"}),
        )
        .send()
        .await
        .unwrap();
    let (status, body) = parts(response).await;
    assert_error(status, &body, 403, "invalid_client");
    let (status, _) = app.renew(&b, &renewed["refresh_token"]).await;
    assert_eq!(status, 200);
}

async fn tokens_carry_exactly_the_designed_claims(app: TestApp) {
    let tenant = app
        .create_app(json!({"name": "claims", "issuer": "https://id.example", "audience": "web", "token_expire": 600, "token_notbefore": 0, "refresh_expire": 3600}))
        .await;
    let body = json!({"sub": "grace@example.com", "ip": "2001:DB8::1", "useragent": "ua/1.0", "personal": {"name": "Grace"}, "roles": ["admin"]});
    let (status, signed) = app.app_post(&tenant, "sign", &body).await;
    assert_eq!(status, 200, "{signed}");
    let response_keys: HashSet<&str> =
        signed.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        response_keys,
        HashSet::from([
            "auth_token",
            "refresh_token",
            "key_id",
            "public_key",
            "token_type",
            "expires_in",
            "refresh_expires_in",
            "session_id"
        ])
    );
    assert_eq!(signed["refresh_expires_in"], 3600);

    for token in [&signed["auth_token"], &signed["refresh_token"]] {
        let h = header(token);
        assert_eq!(h, json!({"alg": "ES256", "typ": "JWT", "kid": tenant.key_id}));
    }
    let auth = payload(&signed["auth_token"]);
    let keys: HashSet<&str> = auth.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        HashSet::from([
            "iss",
            "sub",
            "aud",
            "iat",
            "nbf",
            "exp",
            "jid",
            "sid",
            "ip",
            "useragent",
            "personal",
            "roles"
        ])
    );
    assert_eq!(auth["iss"], "https://id.example");
    assert_eq!(auth["sub"], "grace@example.com");
    assert_eq!(auth["aud"], "web");
    assert_eq!(auth["ip"], "2001:db8::1", "the address in canonical form");
    assert_eq!(auth["useragent"], "ua/1.0");
    assert_eq!(auth["personal"], json!({"name": "Grace"}));
    assert_eq!(auth["nbf"], auth["iat"]);
    assert_eq!(auth["exp"].as_i64().unwrap() - auth["iat"].as_i64().unwrap(), 600);
    assert_eq!(auth["sid"], signed["session_id"]);

    let refresh = payload(&signed["refresh_token"]);
    let keys: HashSet<&str> = refresh.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, HashSet::from(["iss", "jid", "sid", "iat", "nbf", "exp", "type"]));
    assert_eq!(refresh["type"], "refresh");
    assert_eq!(refresh["exp"].as_i64().unwrap() - refresh["iat"].as_i64().unwrap(), 3600);

    // A refresh token is not an auth token, and the other way round.
    let (_, verified) =
        app.app_post(&tenant, "verify", &json!({"token": signed["refresh_token"]})).await;
    assert_eq!(verified["verified"], false);
    let (status, body) = app.renew(&tenant, &signed["auth_token"]).await;
    assert_invalid_grant(status, &body);
    let (status, _) = app.renew(&tenant, &signed["refresh_token"]).await;
    assert_eq!(status, 200, "the failed attempts consumed nothing");

    // An explicit audience, as a list.
    let body = json!({"sub": "x", "ip": "1.1.1.1", "useragent": "", "aud": ["web", "api"]});
    let (_, signed) = app.app_post(&tenant, "sign", &body).await;
    assert_eq!(payload(&signed["auth_token"])["aud"], json!(["web", "api"]));
    let (_, renewed) = app.renew_as(&tenant, &signed["refresh_token"], "").await;
    assert_eq!(
        payload(&renewed["auth_token"])["aud"],
        json!(["web", "api"]),
        "renew re-issues the session's claims"
    );

    // Reserved names are refused.
    let body =
        json!({"sub": "x", "ip": "1.1.1.1", "useragent": "ua", "iss": "evil", "type": "refresh"});
    let (status, body) = app.app_post(&tenant, "sign", &body).await;
    assert_error(status, &body, 400, "invalid_request");
    let fields: Vec<_> =
        body["errors"].as_array().unwrap().iter().map(|e| e["error_field"].clone()).collect();
    assert_eq!(fields, [json!("iss"), json!("type")]);
}

async fn refresh_notbefore_reproduces_jwtplus(app: TestApp) {
    let tenant = app.create_app(json!({"name": "nbf", "refresh_notbefore": 60})).await;
    let signed = app.sign(&tenant, "gina").await;
    let refresh = payload(&signed["refresh_token"]);
    assert_eq!(refresh["nbf"].as_i64().unwrap() - refresh["iat"].as_i64().unwrap(), 60);
    let (status, body) = app.renew(&tenant, &signed["refresh_token"]).await;
    assert_invalid_grant(status, &body);
    assert!(
        app.verified(&tenant, &signed["auth_token"]).await,
        "an early renew is refused, not reuse"
    );
}

async fn non_rotating_apps_keep_their_refresh_token(app: TestApp) {
    let tenant = app.create_app(json!({"name": "static", "refresh_rotation": false})).await;
    let signed = app.sign(&tenant, "hank").await;
    for _ in 0..3 {
        let (status, renewed) = app.renew(&tenant, &signed["refresh_token"]).await;
        assert_eq!(status, 200, "{renewed}");
        assert_eq!(renewed["refresh_token"], signed["refresh_token"]);
        assert!(app.verified(&tenant, &renewed["auth_token"]).await);
    }
}

async fn the_session_limit_revokes_the_oldest(app: TestApp) {
    let tenant = app.create_app(json!({"name": "limited", "max_sessions_per_sub": 2})).await;
    let first = app.sign(&tenant, "ivy").await;
    let second = app.sign(&tenant, "ivy").await;
    let third = app.sign(&tenant, "ivy").await;
    let other = app.sign(&tenant, "jack").await;
    let (status, _) = app.renew(&tenant, &first["refresh_token"]).await;
    assert_eq!(status, 401, "the oldest of three was revoked");
    for live in [&second, &third, &other] {
        let (status, _) = app.renew(&tenant, &live["refresh_token"]).await;
        assert_eq!(status, 200);
    }
    let (_, listed) = app.app_post(&tenant, "get-session", &json!({"sub": "ivy"})).await;
    let ids: Vec<_> =
        listed["sessions"].as_array().unwrap().iter().map(|s| s["session_id"].clone()).collect();
    assert_eq!(ids, [second["session_id"].clone(), third["session_id"].clone()]);
}

async fn reuse_can_revoke_every_session_of_the_subject(app: TestApp) {
    let tenant = app
        .create_app(json!({"name": "subject", "reuse_grace": 0, "on_reuse": "revoke_subject"}))
        .await;
    let phone = app.sign(&tenant, "kim").await;
    let laptop = app.sign(&tenant, "kim").await;
    let stranger = app.sign(&tenant, "lee").await;
    let (status, _) = app.renew(&tenant, &phone["refresh_token"]).await;
    assert_eq!(status, 200);
    let (status, _) = app.renew(&tenant, &phone["refresh_token"]).await;
    assert_eq!(status, 401);
    let (status, _) = app.renew(&tenant, &laptop["refresh_token"]).await;
    assert_eq!(status, 401, "every session of the subject is revoked");
    let (status, _) = app.renew(&tenant, &stranger["refresh_token"]).await;
    assert_eq!(status, 200, "other subjects are untouched");
}

async fn sessions_are_listed_and_revoked(app: TestApp) {
    let tenant = app.create_app(json!({"name": "admin"})).await;
    let a = app.sign(&tenant, "mia").await;
    let b = app.sign(&tenant, "mia").await;
    let c = app.sign(&tenant, "ned").await;
    let response = app
        .request(Method::GET, &format!("/app/{}/sessions?sub=mia", tenant.app_id))
        .header("Authorization", &tenant.app_key)
        .send()
        .await
        .unwrap();
    let (status, listed) = parts(response).await;
    assert_eq!(status, 200);
    let sessions = listed["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 2);
    let keys: HashSet<&str> = sessions[0].as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        HashSet::from([
            "session_id",
            "sub",
            "created_at",
            "last_renewed_at",
            "expires_at",
            "ip",
            "useragent",
            "key_id"
        ])
    );
    assert_eq!(sessions[0]["ip"], "203.0.113.7");

    let (status, body) =
        app.app_post(&tenant, "revoke", &json!({"session_id": a["session_id"]})).await;
    assert_eq!((status, body), (200, json!({"revoked": 1})));
    let (status, body) = app.app_post(&tenant, "revoke", &json!({"sub": "mia"})).await;
    assert_eq!((status, body), (200, json!({"revoked": 1})));
    let (status, _) = app.renew(&tenant, &b["refresh_token"]).await;
    assert_eq!(status, 401);
    let (status, body) = app
        .app_post(&tenant, "revoke", &json!({"sub": "mia", "session_id": a["session_id"]}))
        .await;
    assert_error(status, &body, 400, "invalid_request");

    let (status, body) = parts(
        app.root(Method::DELETE, &format!("/root/apps/{}/sessions", tenant.app_id))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, body), (200, json!({"revoked": 1})));
    let (status, _) = app.renew(&tenant, &c["refresh_token"]).await;
    assert_eq!(status, 401);
}

async fn bad_input_names_every_field(app: TestApp) {
    let tenant = app.create_app(json!({"name": "strict"})).await;
    let cases = [
        (json!({"sub": "", "ip": "010.1.1.1", "useragent": "u"}), vec!["sub", "ip"]),
        (
            json!({"sub": "x".repeat(256), "ip": "1.2.3.256", "useragent": "u".repeat(513)}),
            vec!["sub", "ip", "useragent"],
        ),
        (json!({"sub": "a\u{0}b", "ip": "1.1.1.1", "useragent": "u"}), vec!["sub"]),
        (json!({"ip": "1.1.1.1"}), vec!["sub", "useragent"]),
        (
            json!({"sub": "s", "ip": "1.1.1.1", "useragent": "u", "blob": "x".repeat(4100)}),
            vec!["blob"],
        ),
        (json!({"sub": "s", "ip": "1.1.1.1", "useragent": "u", "jti": 1}), vec!["jti"]),
    ];
    for (body, fields) in cases {
        let (status, answer) = app.app_post(&tenant, "sign", &body).await;
        assert_error(status, &answer, 400, "invalid_request");
        let named: Vec<_> = answer["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["error_field"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(named, fields, "{body}");
    }
    let big = json!({"refresh_token": "x".repeat(8 * 1024 + 1), "ip": "1.1.1.1", "useragent": "u"});
    let (status, answer) = app.app_post(&tenant, "renew", &big).await;
    assert_error(status, &answer, 400, "invalid_request");
    assert_eq!(answer["errors"][0]["error_field"], "refresh_token");
    let (status, answer) =
        app.app_post(&tenant, "renew", &json!({"refresh_token": 5, "ip": "x"})).await;
    assert_error(status, &answer, 400, "invalid_request");
    let named: Vec<_> = answer["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["error_field"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(named, ["refresh_token", "ip", "useragent"]);

    // Faithful storage of unusual user agents.
    let agent = "Mozilla\u{202e}/5.0 \r\n\u{1b}[31m";
    let (status, signed) = app
        .app_post(&tenant, "sign", &json!({"sub": "s", "ip": "::ffff:1.2.3.4", "useragent": agent}))
        .await;
    assert_eq!(status, 200, "{signed}");
    assert_eq!(payload(&signed["auth_token"])["useragent"], agent);
    assert_eq!(payload(&signed["auth_token"])["ip"], "::ffff:1.2.3.4");
}

async fn a_revoked_signing_key_ends_its_tokens(app: TestApp) {
    let tenant = app.create_app(json!({"name": "keyrevoke"})).await;
    let signed = app.sign(&tenant, "olga").await;
    // A planned rotation: tokens of the retired key still verify and renew.
    let (status, rotation) = parts(
        app.root(Method::POST, &format!("/root/apps/{}/keys/rotate", tenant.app_id))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    assert!(app.verified(&tenant, &signed["auth_token"]).await);
    let (status, renewed) = app.renew(&tenant, &signed["refresh_token"]).await;
    assert_eq!(status, 200, "{renewed}");
    assert_eq!(
        renewed["key_id"], rotation["active_key_id"],
        "renewals sign with the new active key"
    );

    // An emergency revoke: the key's tokens stop at once.
    let path = format!(
        "/root/apps/{}/keys/{}/revoke",
        tenant.app_id,
        rotation["active_key_id"].as_str().unwrap()
    );
    let (status, _) = parts(app.root(Method::POST, &path).send().await.unwrap()).await;
    assert_eq!(status, 200);
    assert!(!app.verified(&tenant, &renewed["auth_token"]).await);
    let (status, _) = app.renew(&tenant, &renewed["refresh_token"]).await;
    assert_eq!(status, 401);
}
