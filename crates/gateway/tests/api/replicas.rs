//! Scale-out: two gateways on one Postgres (the same schema, master key and root key), as
//! a platform runs them behind a load balancer. Sessions are only in the database, so a
//! session renewed through either gateway rotates exactly once; changes made with the CLI
//! reach both gateways' caches through `LISTEN`/`NOTIFY`.

use std::collections::HashSet;
use std::process::Command;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};

use keygate_gateway::Settings;

use crate::helpers::{parts, payload, spawn_app_with, Backend, CreatedApp, TestApp};

/// Caches that outlive every test here: only an announcement can refresh them in time.
const LONG_CACHE_TTL: u64 = 600;

/// Two gateways on one fresh Postgres schema; `None` without `TEST_DATABASE_URL`.
async fn pair() -> Option<(TestApp, TestApp)> {
    pair_with(|_| {}).await
}

/// [`pair`], with both gateways' settings adjusted by `adjust`.
async fn pair_with(
    adjust: impl Fn(&mut Settings) + Clone + Send + 'static,
) -> Option<(TestApp, TestApp)> {
    let adjust_first = adjust.clone();
    let first = spawn_app_with(Backend::Postgres, move |s| {
        s.cache_ttl = LONG_CACHE_TTL;
        adjust_first(s);
    })
    .await?;
    let master = std::fs::read_to_string(first.data_dir().join("master.key")).unwrap();
    let (url, root_key) = (first.database_url.clone(), first.root_key.clone());
    let mut second = spawn_app_with(Backend::Postgres, move |s| {
        s.database_url = Some(url);
        s.master_key = Some(master.trim().into());
        s.root_key = Some(root_key.into());
        s.cache_ttl = LONG_CACHE_TTL;
        adjust(s);
    })
    .await?;
    second.root_key = first.root_key.clone();
    assert_eq!(first.database_url, second.database_url, "one database for both");
    Some((first, second))
}

fn jid(token: &Value) -> String {
    payload(token)["jid"].as_str().unwrap().to_owned()
}

#[cfg_attr(
    not(postgres_tests),
    ignore = "Postgres: needs TEST_DATABASE_URL when built (just test-pg)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_renewed_alternately_through_both_never_double_mints() {
    let Some((a, b)) = pair().await else { return };
    let app = a.create_app(json!({"name": "replicas", "reuse_grace": 0})).await;
    let mut token = a.sign(&app, "alice").await["refresh_token"].clone();
    let mut jids = HashSet::from([jid(&token)]);
    let mut spent = Vec::new();
    for round in 0..20 {
        let gateway = if round % 2 == 0 { &b } else { &a };
        let (status, body) = gateway.renew(&app, &token).await;
        assert_eq!(status, 200, "round {round}: {body}");
        assert!(jids.insert(jid(&body["refresh_token"])), "round {round}: a jid minted twice");
        spent.push(std::mem::replace(&mut token, body["refresh_token"].clone()));
    }
    // A spent token is reuse on the other gateway too, and the session ends on both.
    let (status, _) = a.renew(&app, &spent[10]).await;
    assert_eq!(status, 401);
    for gateway in [&a, &b] {
        let (status, body) = gateway.renew(&app, &token).await;
        assert_eq!(status, 401, "{body}");
    }
}

#[cfg_attr(
    not(postgres_tests),
    ignore = "Postgres: needs TEST_DATABASE_URL when built (just test-pg)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_renews_split_across_both_rotate_once() {
    let Some((a, b)) = pair().await else { return };
    let app = a.create_app(json!({"name": "burst", "reuse_grace": 60})).await;
    let mut token = b.sign(&app, "bob").await["refresh_token"].clone();
    for round in 0..5 {
        let renews =
            (0..50).map(|i| if i % 2 == 0 { a.renew(&app, &token) } else { b.renew(&app, &token) });
        let results = futures::future::join_all(renews).await;
        let failed: Vec<&(u16, Value)> = results.iter().filter(|(s, _)| *s != 200).collect();
        assert!(failed.is_empty(), "round {round}: {failed:?}");
        let minted: HashSet<String> =
            results.iter().map(|(_, body)| jid(&body["refresh_token"])).collect();
        assert_eq!(minted.len(), 1, "round {round}: exactly one rotation, got {minted:?}");
        assert_ne!(minted.iter().next(), Some(&jid(&token)));
        token = results[0].1["refresh_token"].clone();
    }

    // Without a grace, one of 50 wins and the others are reuse: the session is revoked.
    let app = a.create_app(json!({"name": "no-grace", "reuse_grace": 0})).await;
    let token = a.sign(&app, "bob").await["refresh_token"].clone();
    let renews =
        (0..50).map(|i| if i % 2 == 0 { a.renew(&app, &token) } else { b.renew(&app, &token) });
    let statuses: Vec<u16> =
        futures::future::join_all(renews).await.iter().map(|(s, _)| *s).collect();
    assert!(statuses.iter().all(|s| *s == 200 || *s == 401), "{statuses:?}");
    assert!(statuses.iter().filter(|s| **s == 200).count() <= 1, "{statuses:?}");
}

/// Runs the CLI on the database of `gateway` (and with its master key); returns its JSON.
fn cli(gateway: &TestApp, args: &[&str]) -> Value {
    let master = std::fs::read_to_string(gateway.data_dir().join("master.key")).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_keygate"))
        .current_dir(gateway.data_dir())
        .env_remove("KEYGATE_ROOT_KEY")
        .env("KEYGATE_DATABASE_URL", &gateway.database_url)
        .env("KEYGATE_MASTER_KEY", master.trim())
        .args(args)
        .arg("--json")
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&output.stdout)))
}

/// Waits up to 5 s for `check` to hold on both gateways; returns how long it took.
async fn on_both_within_5s<'a, F, Fut>(
    a: &'a TestApp,
    b: &'a TestApp,
    what: &str,
    check: F,
) -> Duration
where
    F: Fn(&'a TestApp) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if check(a).await && check(b).await {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{what}: not on both gateways within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn signing_key(gateway: &TestApp, app: &CreatedApp) -> String {
    gateway.sign(app, "carol").await["key_id"].as_str().unwrap().to_owned()
}

#[cfg_attr(
    not(postgres_tests),
    ignore = "Postgres: needs TEST_DATABASE_URL when built (just test-pg)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_rotated_or_revoked_with_the_cli_reach_both_within_5s() {
    let Some((a, b)) = pair().await else { return };
    let app = a.create_app(json!({"name": "rotating"})).await;
    // Both gateways have the keys cached (for LONG_CACHE_TTL) before the CLI changes them.
    assert_eq!(signing_key(&a, &app).await, app.key_id);
    assert_eq!(signing_key(&b, &app).await, app.key_id);
    let old = b.sign(&app, "dave").await;

    let rotation = cli(&a, &["keys", "rotate", &app.app_id]);
    let active = rotation["active_key_id"].as_str().unwrap().to_owned();
    assert_ne!(active, app.key_id);
    let took = on_both_within_5s(&a, &b, "rotation", |g| {
        let (app, active) = (&app, &active);
        async move { signing_key(g, app).await == *active }
    })
    .await;
    eprintln!("rotation seen by both gateways after {took:?}");
    // A token of the retired key still verifies and renews.
    let (status, renewed) = a.renew(&app, &old["refresh_token"]).await;
    assert_eq!(status, 200, "{renewed}");
    assert!(b.verified(&app, &old["auth_token"]).await);

    // An emergency revoke of the active key: its tokens stop verifying on both, and both
    // sign with the key that was published as next.
    let fresh = a.sign(&app, "erin").await;
    assert_eq!(fresh["key_id"], active.as_str());
    let revocation = cli(&a, &["keys", "revoke", &app.app_id, &active]);
    let promoted = revocation["active_key_id"].as_str().unwrap().to_owned();
    let took = on_both_within_5s(&a, &b, "revocation", |g| {
        let (app, fresh, promoted) = (&app, &fresh, &promoted);
        async move {
            !g.verified(app, &fresh["auth_token"]).await && signing_key(g, app).await == *promoted
        }
    })
    .await;
    eprintln!("revocation seen by both gateways after {took:?}");
    for gateway in [&a, &b] {
        let (status, body) = gateway.renew(&app, &fresh["refresh_token"]).await;
        assert_eq!(status, 401, "{body}");
    }
}

#[cfg_attr(
    not(postgres_tests),
    ignore = "Postgres: needs TEST_DATABASE_URL when built (just test-pg)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_key_rotated_on_one_gateway_is_refused_by_the_other_at_once() {
    let Some((a, b)) = pair().await else { return };
    let app = a.create_app(json!({"name": "app-key"})).await;
    b.sign(&app, "frank").await; // b remembers the app key as checked
    let response = a
        .root(Method::POST, &format!("/root/apps/{}/rotate-app-key", app.app_id))
        .json(&json!({"grace": 0}))
        .send()
        .await
        .unwrap();
    let (status, body) = parts(response).await;
    assert_eq!(status, 200, "{body}");
    let took = on_both_within_5s(&a, &b, "app key rotation", |g| {
        let app = &app;
        async move {
            let body = json!({"sub": "frank", "ip": "203.0.113.7", "useragent": "test-agent"});
            g.app_post(app, "sign", &body).await.0 == 403
        }
    })
    .await;
    eprintln!("app key rotation seen by both gateways after {took:?}");
}

/// The keys of an app as the root API lists them: (key_id, status).
async fn keys(gateway: &TestApp, app: &CreatedApp) -> Vec<(String, String)> {
    let response =
        gateway.root(Method::GET, &format!("/root/apps/{}/keys", app.app_id)).send().await.unwrap();
    let (status, body) = parts(response).await;
    assert_eq!(status, 200, "{body}");
    body["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            (k["key_id"].as_str().unwrap().to_owned(), k["status"].as_str().unwrap().to_owned())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scheduled_rotation_runs_once_not_twice() {
    // Both gateways run the background jobs every second, and a next key counts as
    // published after 1 s.
    let Some((a, b)) = pair_with(|s| {
        s.janitor_interval = 1;
        s.jwks_max_age = 1;
    })
    .await
    else {
        return;
    };
    let app = a.create_app(json!({"name": "scheduled"})).await;
    let next = keys(&a, &app).await.into_iter().find(|(_, s)| s == "next").unwrap().0;
    // The API's shortest rotation period is an hour; the test shortens it in the database.
    let db = sqlx::PgPool::connect(&a.database_url).await.unwrap();
    sqlx::query("UPDATE apps SET rotation_period = 3 WHERE app_id = $1")
        .bind(&app.app_id)
        .execute(&db)
        .await
        .unwrap();

    let start = Instant::now();
    while !keys(&a, &app).await.iter().any(|(_, s)| s == "retired") {
        assert!(start.elapsed() < Duration::from_secs(10), "no scheduled rotation within 10 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Both gateways ran passes meanwhile; the period (3 s) has not come round again.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let now = keys(&b, &app).await;
    let count = |status: &str| now.iter().filter(|(_, s)| s == status).count();
    assert_eq!((count("retired"), count("active"), count("next")), (1, 1, 1), "{now:?}");
    assert!(now.contains(&(app.key_id.clone(), "retired".to_owned())), "{now:?}");
    assert!(now.contains(&(next, "active".to_owned())), "the published next key: {now:?}");
    // And both gateways sign with it.
    let active = &now.iter().find(|(_, s)| s == "active").unwrap().0;
    for gateway in [&a, &b] {
        assert_eq!(&signing_key(gateway, &app).await, active);
    }
}
