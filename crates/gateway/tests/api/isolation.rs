//! Tenant isolation: each app's request quota (429 `rate_limited` with `Retry-After`, in
//! every contract, nothing spent), fair admission (a saturated gateway sheds with 503 and
//! `Retry-After`, nothing spent), and a bounded load test: one app floods, another renews
//! beside it without an error. Latency figures are `just bench`'s (`keygate-bench
//! isolation`), not asserted here.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keygate_gateway::Settings;
use reqwest::Method;
use serde_json::{json, Value};

use crate::events::metric;
use crate::helpers::{assert_error, parts, CreatedApp, TestApp};
use crate::{on_both_backends, with_settings};

on_both_backends!(
    the_quota_is_validated_and_changes_take_effect_at_once,
    oauth_clients_over_the_quota_get_rfc_6749_errors,
);

with_settings!(
    an_app_over_its_quota_is_refused_and_nothing_is_spent: quick_refusals,
    a_saturated_gateway_sheds_and_nothing_is_spent: one_slot_one_waiter,
    a_flooding_app_leaves_another_app_served: few_slots,
    a_compat_route_counts_against_the_app_s_quota: with_a_compat_route,
);

/// Refusals held 10 to 20 ms: a test that counts on the quota's one-second window keeps
/// well inside it.
fn quick_refusals(settings: &mut Settings) {
    settings.refusal_delay_ms = 20;
}

fn one_slot_one_waiter(settings: &mut Settings) {
    settings.admission_in_flight = Some(1);
    settings.admission_queue = 1;
    settings.admission_wait_ms = 200;
}

fn few_slots(settings: &mut Settings) {
    settings.admission_in_flight = Some(4);
    // Refusals answered after 20 ms: the flood keeps asking, and its served count is
    // measured against the quota.
    settings.refusal_delay_ms = 20;
}

fn with_a_compat_route(settings: &mut Settings) {
    let file = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy/compat/seed-002.toml");
    settings.compat = Settings::load(Some(&file)).unwrap().compat;
}

async fn patch_app(app: &TestApp, tenant: &CreatedApp, patch: &Value) -> (u16, Value) {
    let path = format!("/root/apps/{}", tenant.app_id);
    parts(app.root(Method::PATCH, &path).json(patch).send().await.unwrap()).await
}

/// A renew with the raw answer: status, `Retry-After`, body.
async fn renew_raw(app: &TestApp, tenant: &CreatedApp, token: &Value) -> (u16, Option<u64>, Value) {
    let body = json!({"refresh_token": token, "ip": "203.0.113.7", "useragent": "test-agent"});
    let response = app
        .request(Method::POST, &format!("/app/{}/renew", tenant.app_id))
        .header("Authorization", &tenant.app_key)
        .json(&body)
        .send()
        .await
        .unwrap();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().parse::<u64>().expect("Retry-After in whole seconds"));
    let (status, body) = parts(response).await;
    (status, retry_after, body)
}

/// The value of `keygate_app_requests_total{app="APP",result="RESULT"}`, 0 when absent.
async fn app_requests(app: &TestApp, tenant: &CreatedApp, result: &str) -> u64 {
    let series =
        format!("keygate_app_requests_total{{app=\"{}\",result=\"{result}\"}}", tenant.app_id);
    metric(app, &series).await as u64
}

async fn an_app_over_its_quota_is_refused_and_nothing_is_spent(app: TestApp) {
    let limited = app
        .create_app(json!({"name": "limited", "requests_per_second": 1, "requests_burst": 3}))
        .await;
    let other = app.create_app(json!({"name": "unlimited"})).await;
    // sign, then two renews: the burst of three.
    let mut token = app.sign(&limited, "alice").await["refresh_token"].clone();
    for _ in 0..2 {
        let (status, _, body) = renew_raw(&app, &limited, &token).await;
        assert_eq!(status, 200, "{body}");
        token = body["refresh_token"].clone();
    }
    let asked = Instant::now();
    let (status, retry_after, body) = renew_raw(&app, &limited, &token).await;
    assert_error(status, &body, 429, "rate_limited");
    assert!(asked.elapsed() >= Duration::from_millis(10), "held half to all of refusal_delay_ms");
    assert!(body["message"].as_str().unwrap().contains("request quota"), "{body}");
    assert_eq!(retry_after, Some(1), "one request a second: the next in at most a second");
    // Every endpoint the app key opens is counted, and refused alike.
    for (endpoint, body) in [
        ("verify", json!({"token": "x"})),
        ("logout", json!({"token": "x"})),
        ("sign", json!({"sub": "mallory"})),
    ] {
        let (status, body) = app.app_post(&limited, endpoint, &body).await;
        assert_error(status, &body, 429, "rate_limited");
    }
    let response = app
        .request(Method::GET, &format!("/app/{}/pub-keys", limited.app_id))
        .header("Authorization", &limited.app_key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 429);
    // Another app is not limited by this one's quota.
    let mut other_token = app.sign(&other, "bob").await["refresh_token"].clone();
    for _ in 0..10 {
        let (status, body) = app.renew(&other, &other_token).await;
        assert_eq!(status, 200, "{body}");
        other_token = body["refresh_token"].clone();
    }
    // A wrong key is 403, not 429: the quota counts authenticated requests only, so nobody
    // without the key can spend it.
    let forged = CreatedApp { app_key: "kga_wrong".into(), ..limited.clone() };
    let (status, body) = app.app_post(&forged, "verify", &json!({"token": "x"})).await;
    assert_error(status, &body, 403, "invalid_client");

    // The refused renew spent nothing: the same token renews, once the wait is over.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, _, body) = renew_raw(&app, &limited, &token).await;
    assert_eq!(status, 200, "the refused token was not consumed: {body}");
    assert_ne!(body["refresh_token"], token);
    assert_eq!(app_requests(&app, &limited, "admitted").await, 4);
    assert_eq!(app_requests(&app, &limited, "rate_limited").await, 5);
    assert_eq!(app_requests(&app, &other, "rate_limited").await, 0);
    assert_eq!(app_requests(&app, &other, "admitted").await, 11);
}

async fn the_quota_is_validated_and_changes_take_effect_at_once(app: TestApp) {
    let tenant = app.create_app(json!({"name": "quota"})).await;
    for (patch, field) in [
        (json!({"requests_per_second": -1}), "requests_per_second"),
        (json!({"requests_per_second": 1_000_001}), "requests_per_second"),
        (json!({"requests_burst": -5}), "requests_burst"),
        (json!({"requests_burst": "many"}), "requests_burst"),
    ] {
        let (status, body) = patch_app(&app, &tenant, &patch).await;
        assert_error(status, &body, 400, "invalid_request");
        assert_eq!(body["errors"][0]["error_field"], field, "{patch}");
    }
    let (status, body) =
        patch_app(&app, &tenant, &json!({"requests_per_second": 1, "requests_burst": 1})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["requests_per_second"].as_i64(), body["requests_burst"].as_i64()),
        (Some(1), Some(1))
    );
    let (status, _) = app.app_post(&tenant, "verify", &json!({"token": "x"})).await;
    assert_eq!(status, 200);
    let (status, body) = app.app_post(&tenant, "verify", &json!({"token": "x"})).await;
    assert_error(status, &body, 429, "rate_limited");
    // The app reads its own settings, quota included, once it may again.
    let (status, _) = patch_app(&app, &tenant, &json!({"requests_per_second": 0})).await;
    assert_eq!(status, 200);
    for _ in 0..20 {
        let (status, body) = app.app_post(&tenant, "verify", &json!({"token": "x"})).await;
        assert_eq!(status, 200, "no limit once the quota is 0: {body}");
    }
    let response = app
        .request(Method::GET, &format!("/app/{}", tenant.app_id))
        .header("Authorization", &tenant.app_key)
        .send()
        .await
        .unwrap();
    let (status, settings) = parts(response).await;
    assert_eq!(status, 200, "{settings}");
    assert_eq!(
        (settings["requests_per_second"].as_i64(), settings["requests_burst"].as_i64()),
        (Some(0), Some(1))
    );
}

async fn oauth_clients_over_the_quota_get_rfc_6749_errors(app: TestApp) {
    let tenant = app
        .create_app(json!({"name": "oauth-quota", "requests_per_second": 1, "requests_burst": 1}))
        .await;
    let token = app.sign(&tenant, "carol").await["refresh_token"].clone();
    let form = [("grant_type", "refresh_token"), ("refresh_token", token.as_str().unwrap())];
    let refresh = || {
        app.request(Method::POST, &format!("/app/{}/oauth/token", tenant.app_id))
            .basic_auth(&tenant.app_id, Some(&tenant.app_key))
            .form(&form)
            .send()
    };
    let response = refresh().await.unwrap();
    assert_eq!(response.status().as_u16(), 429);
    assert_eq!(response.headers()["retry-after"], "1");
    assert_eq!(response.headers()["cache-control"], "no-store");
    let (_, body) = parts(response).await;
    assert_eq!(body["error"], "rate_limited", "{body}");
    assert!(body["error_description"].as_str().unwrap().contains("quota"), "{body}");
    // Nothing was spent: the token refreshes once the quota allows it again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let response = refresh().await.unwrap();
    let (status, body) = parts(response).await;
    assert_eq!(status, 200, "{body}");
}

async fn a_compat_route_counts_against_the_app_s_quota(app: TestApp) {
    let tenant = app
        .create_app(json!({"name": "compat-quota", "requests_per_second": 1, "requests_burst": 1}))
        .await;
    let token = app.sign(&tenant, "dave").await["refresh_token"].clone();
    let refresh = || {
        app.request(Method::POST, "/api/auth/refresh").json(&json!({"refreshToken": token})).send()
    };
    let response = refresh().await.unwrap();
    assert_eq!(response.status().as_u16(), 429);
    assert_eq!(response.headers()["retry-after"], "1");
    let (_, body) = parts(response).await;
    assert_eq!(body, json!({"error": "too many requests for this app, retry later"}));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let response = refresh().await.unwrap();
    let (status, body) = parts(response).await;
    assert_eq!(status, 200, "the refused token was not consumed: {body}");
}

async fn a_saturated_gateway_sheds_and_nothing_is_spent(app: TestApp) {
    let tenant = app.create_app(json!({"name": "shed"})).await;
    let mut tokens = Vec::new();
    for n in 0..32 {
        tokens.push(app.sign(&tenant, &format!("user-{n}")).await["refresh_token"].clone());
    }
    let app = Arc::new(app);
    // One slot and one waiting place: of 32 renews at once most are shed.
    let answers = futures::future::join_all(tokens.iter().map(|token| {
        let (app, tenant, token) = (app.clone(), tenant.clone(), token.clone());
        async move { renew_raw(&app, &tenant, &token).await }
    }))
    .await;
    let mut shed = 0;
    for ((status, retry_after, body), token) in answers.iter().zip(&tokens) {
        match status {
            200 => {}
            503 => {
                shed += 1;
                assert_error(*status, body, 503, "unavailable");
                assert_eq!(*retry_after, Some(1));
                // Nothing was spent: the shed token renews now.
                let (status, _, body) = renew_raw(&app, &tenant, token).await;
                assert_eq!(status, 200, "a shed renew consumed nothing: {body}");
            }
            other => panic!("{other}: {body}"),
        }
    }
    assert!(shed > 0, "32 renews at once on one slot: some were shed");
    assert_eq!(app_requests(&app, &tenant, "shed").await, shed);
}

/// One app floods (16 chains, closed loop), another renews a chain every 10 ms beside it,
/// first with a quota on the flooding app, then without. The other app is never refused;
/// every refusal of the flooding app is a 429 (with the quota) or a 503 (shed), and spent
/// nothing: each chain goes on with the token it had.
async fn a_flooding_app_leaves_another_app_served(app: TestApp) {
    let flood = app.create_app(json!({"name": "flood"})).await;
    let steady = app.create_app(json!({"name": "steady"})).await;
    let app = Arc::new(app);
    const RATE: u64 = 40;
    const BURST: u64 = 10;
    const SECONDS: u64 = 3;

    for quota in [Some(RATE), None] {
        let mut chains = Vec::new();
        for n in 0..16 {
            chains.push(app.sign(&flood, &format!("flood-{n}")).await["refresh_token"].clone());
        }
        let per_second = quota.unwrap_or(0);
        let (status, body) = patch_app(
            &app,
            &flood,
            &json!({"requests_per_second": per_second, "requests_burst": BURST}),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let admitted_before = app_requests(&app, &flood, "admitted").await;
        let shed_before = app_requests(&app, &flood, "shed").await;
        let stop = Arc::new(AtomicBool::new(false));
        let (served, limited, shed) =
            (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let started = Instant::now();
        let flooders: Vec<_> = chains
            .into_iter()
            .map(|mut token| {
                let (app, flood, stop) = (app.clone(), flood.clone(), stop.clone());
                let (served, limited, shed) = (served.clone(), limited.clone(), shed.clone());
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let (status, _, body) = renew_raw(&app, &flood, &token).await;
                        match status {
                            200 => {
                                served.fetch_add(1, Ordering::Relaxed);
                                token = body["refresh_token"].clone();
                            }
                            // Refused: the chain goes on with the same token.
                            429 => drop(limited.fetch_add(1, Ordering::Relaxed)),
                            503 => drop(shed.fetch_add(1, Ordering::Relaxed)),
                            other => panic!("flooding app: {other} {body}"),
                        }
                    }
                    // Whatever was refused, the chain's last token still renews.
                    token
                })
            })
            .collect();
        let mut token = app.sign(&steady, "steady").await["refresh_token"].clone();
        let mut renews = 0;
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        while started.elapsed() < Duration::from_secs(SECONDS) {
            tick.tick().await;
            let (status, _, body) = renew_raw(&app, &steady, &token).await;
            assert_eq!(status, 200, "the steady app is never refused ({quota:?}): {body}");
            token = body["refresh_token"].clone();
            renews += 1;
        }
        stop.store(true, Ordering::Relaxed);
        let last_tokens: Vec<Value> =
            futures::future::join_all(flooders).await.into_iter().map(Result::unwrap).collect();
        let elapsed = started.elapsed().as_secs_f64();
        assert!(renews > 0);
        let served = served.load(Ordering::Relaxed);
        let (limited, shed) = (limited.load(Ordering::Relaxed), shed.load(Ordering::Relaxed));
        assert_eq!(app_requests(&app, &flood, "admitted").await - admitted_before, served);
        if quota.is_some() {
            // GCRA: the burst, then RATE a second; the loop outruns it many times over.
            let allowed = BURST as f64 + RATE as f64 * elapsed;
            assert!(limited > 0, "the flood was limited: {served} served, {limited} refused");
            assert!(
                (served as f64) <= allowed + 1.0 && (served as f64) >= 0.9 * allowed,
                "served {served} in {elapsed:.2} s against a quota allowing {allowed:.0}"
            );
        } else {
            assert_eq!(limited, 0, "no quota, no 429");
            assert!(served > 0);
        }
        assert_eq!(app_requests(&app, &flood, "shed").await - shed_before, shed);
        // Whatever was refused spent nothing: each chain's last token renews.
        let (status, body) = patch_app(&app, &flood, &json!({"requests_per_second": 0})).await;
        assert_eq!(status, 200, "{body}");
        for token in last_tokens {
            let (status, _, body) = renew_raw(&app, &flood, &token).await;
            assert_eq!(
                status, 200,
                "a chain's token is intact after the flood ({quota:?}): {body}"
            );
        }
    }
}
