//! Writes in doubt (Postgres): the gateway reaches Postgres through a proxy that reads the
//! protocol and, on purpose, makes exactly one write's commit go in doubt. Either the write
//! reaches Postgres and commits and its answer is dropped (`LoseAnswer`), or it never
//! reaches Postgres (`Swallow`); both times the connection closes, so the gateway cannot
//! tell which. It must find out before it answers: 200 with tokens that work when the write
//! is (or can still be) committed, and never a spent token behind a 503.

use keygate_gateway::Settings;
use keygate_store::testing::{Fault, FaultProxy};
use reqwest::Method;
use serde_json::{json, Value};

use crate::events::metric;
use crate::helpers::{assert_error, parts, spawn_app_with, Backend, CreatedApp, TestApp};

/// A gateway on a fresh schema, through a fault proxy; `None` without `TEST_DATABASE_URL`.
async fn through_proxy(adjust: impl FnOnce(&mut Settings)) -> Option<(TestApp, FaultProxy)> {
    let Ok(base) = std::env::var("TEST_DATABASE_URL") else {
        // On CI this fails instead of skipping.
        let _ = keygate_store::testing::postgres_url().await;
        return None;
    };
    let proxy = FaultProxy::start(&base).await;
    let app = spawn_app_with(Backend::Postgres, |s| {
        let real = s.database_url.take().unwrap();
        s.database_url = Some(proxy.url(&real));
        adjust(s);
    })
    .await?;
    Some((app, proxy))
}

/// How many writes of this kind ended in doubt with this outcome, from `/metrics`.
async fn in_doubt(app: &TestApp, write: &str, outcome: &str) -> f64 {
    let sample =
        format!(r#"keygate_db_in_doubt_writes_total{{outcome="{outcome}",write="{write}"}}"#);
    metric(app, &sample).await
}

async fn app_with_session(app: &TestApp, sub: &str) -> (CreatedApp, Value) {
    let tenant = app.create_app(json!({"name": "in-doubt", "reuse_grace": 0})).await;
    let signed = app.sign(&tenant, sub).await;
    (tenant, signed)
}

/// The answered pair works, and the presented token was spent exactly once: with
/// `reuse_grace` 0 it is now reuse.
async fn assert_rotated_once(
    app: &TestApp,
    tenant: &CreatedApp,
    presented: &Value,
    renewed: &Value,
) {
    assert!(app.verified(tenant, &renewed["auth_token"]).await, "the answered auth token verifies");
    let (status, next) = app.renew(tenant, &renewed["refresh_token"]).await;
    assert_eq!(status, 200, "the answered refresh token renews: {next}");
    let (status, body) = app.renew(tenant, presented).await;
    assert_error(status, &body, 401, "invalid_grant");
}

#[cfg_attr(
    not(postgres_tests),
    ignore = "Postgres: needs TEST_DATABASE_URL when built (just test-pg)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_that_committed_with_its_answer_lost_is_answered_200() {
    let Some((app, proxy)) = through_proxy(|_| {}).await else { return };
    let (tenant, signed) = app_with_session(&app, "ada").await;
    proxy.arm(&[signed["session_id"].as_str().unwrap()], Fault::LoseAnswer);

    let (status, renewed) = app.renew(&tenant, &signed["refresh_token"]).await;
    assert_eq!(proxy.fired(), 1, "the rotation's answer was lost");
    assert_eq!(status, 200, "{renewed}");
    assert_eq!(in_doubt(&app, "rotate", "committed").await, 1.0);
    assert_eq!(in_doubt(&app, "rotate", "applied").await, 0.0);
    assert_rotated_once(&app, &tenant, &signed["refresh_token"], &renewed).await;
}

#[cfg_attr(
    not(postgres_tests),
    ignore = "Postgres: needs TEST_DATABASE_URL when built (just test-pg)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_that_never_arrived_is_applied_and_answered_200() {
    let Some((app, proxy)) = through_proxy(|_| {}).await else { return };
    let (tenant, signed) = app_with_session(&app, "bo").await;
    proxy.arm(&[signed["session_id"].as_str().unwrap()], Fault::Swallow);

    let (status, renewed) = app.renew(&tenant, &signed["refresh_token"]).await;
    assert_eq!(proxy.fired(), 1, "the rotation was swallowed");
    assert_eq!(status, 200, "{renewed}");
    assert_eq!(in_doubt(&app, "rotate", "applied").await, 1.0);
    assert_eq!(in_doubt(&app, "rotate", "committed").await, 0.0);
    assert_rotated_once(&app, &tenant, &signed["refresh_token"], &renewed).await;
}

/// The database stays away past the in-doubt timeout: the renew is answered 503 with
/// Retry-After, counted as unresolved, and the token was not spent: once the database is
/// back it renews (with `reuse_grace` 0, a spent token would be reuse).
#[cfg_attr(
    not(postgres_tests),
    ignore = "Postgres: needs TEST_DATABASE_URL when built (just test-pg)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_whose_outcome_stays_unknown_is_503_and_spends_nothing() {
    let Some((app, proxy)) = through_proxy(|s| {
        s.database_busy_timeout_ms = 300;
        s.database_in_doubt_timeout_ms = 800;
    })
    .await
    else {
        return;
    };
    let (tenant, signed) = app_with_session(&app, "cy").await;
    proxy.arm(&[signed["session_id"].as_str().unwrap()], Fault::SwallowAndCut);

    let started = std::time::Instant::now();
    let response = app
        .request(Method::POST, &format!("/app/{}/renew", tenant.app_id))
        .header("Authorization", &tenant.app_key)
        .json(&json!({"refresh_token": signed["refresh_token"], "ip": "203.0.113.7", "useragent": "test-agent"}))
        .send()
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(proxy.fired(), 1);
    assert_eq!(response.headers().get("retry-after").map(|v| v.to_str().unwrap()), Some("1"));
    let (status, body) = parts(response).await;
    assert_error(status, &body, 503, "unavailable");
    // The busy timeout to send, then the in-doubt timeout to learn the outcome.
    assert!(took.as_millis() >= 800, "answered after the in-doubt timeout: {took:?}");
    assert_eq!(in_doubt(&app, "rotate", "unresolved").await, 1.0);

    proxy.restore().await;
    let mut renewed = None;
    for _ in 0..100 {
        let (status, body) = app.renew(&tenant, &signed["refresh_token"]).await;
        if status == 200 {
            renewed = Some(body);
            break;
        }
        assert_error(status, &body, 503, "unavailable");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let renewed = renewed.expect("the presented token renews once the database is back");
    assert_rotated_once(&app, &tenant, &signed["refresh_token"], &renewed).await;
}

#[cfg_attr(
    not(postgres_tests),
    ignore = "Postgres: needs TEST_DATABASE_URL when built (just test-pg)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sign_that_committed_with_its_answer_lost_opens_one_session() {
    let Some((app, proxy)) = through_proxy(|_| {}).await else { return };
    let tenant = app.create_app(json!({"name": "in-doubt-sign", "reuse_grace": 0})).await;
    let sub = format!("dee-{}", ulid::Ulid::new());
    proxy.arm(&[&sub], Fault::LoseAnswer);

    let signed = app.sign(&tenant, &sub).await;
    assert_eq!(proxy.fired(), 1, "the insert's answer was lost");
    assert_eq!(in_doubt(&app, "sign", "committed").await, 1.0);
    let response = app
        .request(Method::GET, &format!("/app/{}/sessions?sub={sub}", tenant.app_id))
        .header("Authorization", &tenant.app_key)
        .send()
        .await
        .unwrap();
    let (status, listed) = parts(response).await;
    assert_eq!(status, 200, "{listed}");
    let sessions = listed["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 1, "{listed}");
    assert_eq!(sessions[0]["session_id"], signed["session_id"]);
    let (status, renewed) = app.renew(&tenant, &signed["refresh_token"]).await;
    assert_eq!(status, 200, "{renewed}");
}

#[cfg_attr(
    not(postgres_tests),
    ignore = "Postgres: needs TEST_DATABASE_URL when built (just test-pg)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sign_that_never_arrived_is_applied() {
    let Some((app, proxy)) = through_proxy(|_| {}).await else { return };
    let tenant = app.create_app(json!({"name": "in-doubt-sign", "reuse_grace": 0})).await;
    let sub = format!("eve-{}", ulid::Ulid::new());
    proxy.arm(&[&sub], Fault::Swallow);

    let signed = app.sign(&tenant, &sub).await;
    assert_eq!(proxy.fired(), 1, "the insert was swallowed");
    assert_eq!(in_doubt(&app, "sign", "applied").await, 1.0);
    let (status, renewed) = app.renew(&tenant, &signed["refresh_token"]).await;
    assert_eq!(status, 200, "{renewed}");
}

#[cfg_attr(
    not(postgres_tests),
    ignore = "Postgres: needs TEST_DATABASE_URL when built (just test-pg)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logout_that_committed_with_its_answer_lost_is_answered_with_its_count() {
    let Some((app, proxy)) = through_proxy(|_| {}).await else { return };
    let (tenant, signed) = app_with_session(&app, "flo").await;
    proxy.arm(&[signed["session_id"].as_str().unwrap()], Fault::LoseAnswer);

    let (status, body) =
        app.app_post(&tenant, "logout", &json!({"token": signed["auth_token"]})).await;
    assert_eq!(proxy.fired(), 1, "the revocation's answer was lost");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["revoked"], 1, "{body}");
    assert_eq!(in_doubt(&app, "revoke", "committed").await, 1.0);
    assert!(!app.verified(&tenant, &signed["auth_token"]).await);
    let (status, body) = app.renew(&tenant, &signed["refresh_token"]).await;
    assert_error(status, &body, 401, "invalid_grant");
}

#[cfg_attr(
    not(postgres_tests),
    ignore = "Postgres: needs TEST_DATABASE_URL when built (just test-pg)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoke_that_never_arrived_is_applied() {
    let Some((app, proxy)) = through_proxy(|_| {}).await else { return };
    let (tenant, signed) = app_with_session(&app, "gus").await;
    let session_id = signed["session_id"].as_str().unwrap();
    proxy.arm(&[session_id], Fault::Swallow);

    let (status, body) = app.app_post(&tenant, "revoke", &json!({"session_id": session_id})).await;
    assert_eq!(proxy.fired(), 1, "the revocation was swallowed");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["revoked"], 1, "{body}");
    assert_eq!(in_doubt(&app, "revoke", "applied").await, 1.0);
    let (status, body) = app.renew(&tenant, &signed["refresh_token"]).await;
    assert_error(status, &body, 401, "invalid_grant");
}

/// While no host takes connections, no renew is held longer than the busy timeout: one
/// queued behind a batch that waits for a connection is withdrawn at its own deadline (and
/// never sent later), instead of waiting for that batch and then for its own connection,
/// twice the timeout. Sixteen clients renew for three seconds of outage; every answer is a
/// 503 with Retry-After, and the slowest takes the timeout plus a margin for the machine,
/// far from twice the timeout.
#[cfg_attr(
    not(postgres_tests),
    ignore = "Postgres: needs TEST_DATABASE_URL when built (just test-pg)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_renew_waits_longer_than_the_busy_timeout_for_a_writable_host() {
    const BUSY_MS: u64 = 1000;
    let Some((app, proxy)) = through_proxy(|s| s.database_busy_timeout_ms = BUSY_MS).await else {
        return;
    };
    let tenant = app.create_app(json!({"name": "bounded", "reuse_grace": 0})).await;
    let mut tokens = Vec::new();
    for i in 0..16 {
        tokens.push(app.sign(&tenant, &format!("bounded-{i}")).await["refresh_token"].clone());
    }
    proxy.cut().await;
    let until = std::time::Instant::now() + std::time::Duration::from_secs(3);
    let clients = tokens.iter().map(|token| {
        let (app, tenant) = (&app, &tenant);
        async move {
            let mut slowest = std::time::Duration::ZERO;
            let mut answers = 0;
            while std::time::Instant::now() < until {
                let started = std::time::Instant::now();
                let response = app
                    .request(Method::POST, &format!("/app/{}/renew", tenant.app_id))
                    .header("Authorization", &tenant.app_key)
                    .json(&json!({"refresh_token": token, "ip": "203.0.113.7", "useragent": "test-agent"}))
                    .send()
                    .await
                    .unwrap();
                slowest = slowest.max(started.elapsed());
                assert_eq!(response.headers().get("retry-after").map(|v| v.to_str().unwrap()), Some("1"));
                let (status, body) = parts(response).await;
                assert_error(status, &body, 503, "unavailable");
                answers += 1;
            }
            (slowest, answers)
        }
    });
    let results = futures::future::join_all(clients).await;
    let slowest = results.iter().map(|(s, _)| *s).max().unwrap();
    let answers: usize = results.iter().map(|(_, n)| n).sum();
    assert!(answers >= 32, "the outage was observed: {answers} answers");
    assert!(
        slowest.as_millis() < u128::from(BUSY_MS) * 3 / 2,
        "a renew was held {slowest:?} with a busy timeout of {BUSY_MS} ms"
    );
    proxy.restore().await;
    // Nothing was spent: once the database is back, every token renews.
    for token in &tokens {
        let mut status = 0;
        for _ in 0..100 {
            status = app.renew(&tenant, token).await.0;
            if status == 200 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert_eq!(status, 200, "a token refused during the outage renews afterwards");
    }
}
