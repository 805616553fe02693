//! The admin console's security model over HTTP: off by default; on, a sign-in with the
//! root key gives an opaque HttpOnly cookie and a CSRF token; changes need the token; a
//! signed-out session is refused; wrong keys meet the per-address limit; every answer under
//! `/console` carries the strict headers. (The pages themselves are driven in Chromium by
//! `interop/console/console.mjs`.)

use reqwest::header::{HeaderMap, COOKIE, SET_COOKIE};
use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::{assert_error, parts, spawn_app, spawn_app_with, Backend, TestApp};

async fn console_app() -> TestApp {
    spawn_app_with(Backend::Sqlite, |s| {
        s.console = true;
        s.auth_failure_burst = 3;
    })
    .await
    .unwrap()
}

/// `POST /console/api/login` with `root_key`.
async fn login(app: &TestApp, root_key: &str) -> reqwest::Response {
    app.request(Method::POST, "/console/api/login")
        .json(&json!({"root_key": root_key}))
        .send()
        .await
        .unwrap()
}

/// Signs in: the `Cookie` header to send, and the CSRF token.
async fn sign_in(app: &TestApp) -> (String, String) {
    let response = login(app, &app.root_key).await;
    let set_cookie = response.headers()[SET_COOKIE].to_str().unwrap().to_owned();
    let (status, body) = parts(response).await;
    assert_eq!(status, 200, "{body}");
    let cookie = set_cookie.split(';').next().unwrap().to_owned();
    (cookie, body["csrf_token"].as_str().unwrap().to_owned())
}

fn assert_strict_headers(headers: &HeaderMap) {
    let csp = headers["content-security-policy"].to_str().unwrap();
    for part in ["default-src 'none'", "script-src 'self'", "frame-ancestors 'none'"] {
        assert!(csp.contains(part), "{csp}");
    }
    assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"), "{csp}");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(headers["referrer-policy"], "no-referrer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_is_off_by_default() {
    let app = spawn_app(Backend::Sqlite).await.unwrap();
    for path in ["/console/", "/console/console.js"] {
        let (status, _) = parts(app.request(Method::GET, path).send().await.unwrap()).await;
        assert_eq!(status, 404, "{path}");
    }
    let response = login(&app, &app.root_key).await;
    assert_eq!(response.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_and_its_assets_are_served_with_strict_headers() {
    let app = console_app().await;
    for (path, kind) in [
        ("/console/", "text/html"),
        ("/console/console.js", "text/javascript"),
        ("/console/console.css", "text/css"),
    ] {
        let response = app.request(Method::GET, path).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        assert_strict_headers(response.headers());
        let content_type = response.headers()["content-type"].to_str().unwrap().to_owned();
        assert!(content_type.starts_with(kind), "{path}: {content_type}");
        let text = response.text().await.unwrap();
        assert!(!text.contains("<script>") && !text.contains(" style="), "{path}: no inline code");
    }
    // uPlot, vendored, under the same headers.
    for (path, kind) in
        [("/console/vendor/uplot.js", "text/javascript"), ("/console/vendor/uplot.css", "text/css")]
    {
        let response = app.request(Method::GET, path).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        assert_strict_headers(response.headers());
        let content_type = response.headers()["content-type"].to_str().unwrap().to_owned();
        assert!(content_type.starts_with(kind), "{path}: {content_type}");
        assert!(response.text().await.unwrap().contains("uplot"), "{path}");
    }
    let page = app.request(Method::GET, "/console/").send().await.unwrap().text().await.unwrap();
    assert!(page.contains(r#"<script src="/console/console.js" defer></script>"#));
    // Anything else under /console is the API's 404, with the same headers.
    let response = app.request(Method::GET, "/console/nothing").send().await.unwrap();
    assert_strict_headers(response.headers());
    let (status, body) = parts(response).await;
    assert_error(status, &body, 404, "not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sign_in_gives_an_opaque_cookie_and_changes_need_the_csrf_token() {
    let app = console_app().await;
    let response = login(&app, &app.root_key).await;
    assert_strict_headers(response.headers());
    let set_cookie = response.headers()[SET_COOKIE].to_str().unwrap().to_owned();
    let (status, body) = parts(response).await;
    assert_eq!(status, 200, "{body}");
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/console", "Max-Age=43200"] {
        assert!(set_cookie.contains(attribute), "{set_cookie}");
    }
    assert!(!set_cookie.contains("Secure"), "the gateway listens on loopback: {set_cookie}");
    assert!(!set_cookie.contains(&app.root_key), "{set_cookie}");
    let cookie = set_cookie.split(';').next().unwrap().to_owned();
    let csrf = body["csrf_token"].as_str().unwrap().to_owned();
    assert!(csrf.len() >= 43 && !cookie.contains(&csrf), "{cookie} {csrf}");

    // Reading needs the session; a page loaded again gets its CSRF token back.
    let (status, _) =
        parts(app.request(Method::GET, "/console/api/apps").send().await.unwrap()).await;
    assert_eq!(status, 403, "no session, nothing listed");
    let response =
        app.request(Method::GET, "/console/api/apps").header(COOKIE, &cookie).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let response = app
        .request(Method::GET, "/console/api/session")
        .header(COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(parts(response).await.1["csrf_token"], csrf.as_str());
    // The root key does not open the console's API, nor the cookie the root API.
    let response = app
        .request(Method::GET, "/console/api/apps")
        .header("Authorization", &app.root_key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    let response =
        app.request(Method::GET, "/root/apps").header(COOKIE, &cookie).send().await.unwrap();
    assert_eq!(response.status(), 403);

    // A change without the token, or with another, is refused and changes nothing.
    let create = |token: Option<&str>| {
        let mut request = app
            .request(Method::POST, "/console/api/apps")
            .header(COOKIE, &cookie)
            .json(&json!({"name": "from-the-console"}));
        if let Some(token) = token {
            request = request.header("X-CSRF-Token", token);
        }
        request.send()
    };
    for token in [None, Some(""), Some("not-the-token")] {
        let (status, body) = parts(create(token).await.unwrap()).await;
        assert_error(status, &body, 403, "invalid_client");
    }
    let listed = app.root(Method::GET, "/root/apps").send().await.unwrap();
    assert_eq!(parts(listed).await.1["apps"], json!([]), "nothing was created");
    let (status, created) = parts(create(Some(&csrf)).await.unwrap()).await;
    assert_eq!(status, 201, "{created}");
    assert!(created["app_key"].as_str().unwrap().starts_with("kg_"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_out_session_is_refused() {
    let app = console_app().await;
    let (cookie, csrf) = sign_in(&app).await;
    let logout = || app.request(Method::POST, "/console/api/logout").header(COOKIE, &cookie);
    let (status, _) = parts(logout().send().await.unwrap()).await;
    assert_eq!(status, 403, "signing out needs the CSRF token too");
    let response = logout().header("X-CSRF-Token", &csrf).send().await.unwrap();
    let cleared = response.headers()[SET_COOKIE].to_str().unwrap().to_owned();
    assert!(cleared.starts_with("keygate_console=;") && cleared.contains("Max-Age=0"), "{cleared}");
    assert_eq!(response.status(), 200);
    // The cookie, kept by a client, opens nothing any more.
    for (method, path) in
        [(Method::GET, "/console/api/apps"), (Method::GET, "/console/api/session")]
    {
        let response = app.request(method, path).header(COOKIE, &cookie).send().await.unwrap();
        let (status, body) = parts(response).await;
        assert_error(status, &body, 403, "invalid_client");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_root_keys_meet_the_per_address_limit() {
    let app = console_app().await;
    let attempt = || async {
        let response = login(&app, "kgr_not_the_root_key_at_all_0123456789").await;
        let retry_after = response.headers().get("retry-after").cloned();
        let (status, body): (u16, Value) = parts(response).await;
        (status, body, retry_after)
    };
    for _ in 0..3 {
        let (status, body, _) = attempt().await;
        assert_error(status, &body, 403, "invalid_client");
    }
    let (status, body, retry_after) = attempt().await;
    assert_error(status, &body, 429, "rate_limited");
    assert!(retry_after.is_some());
    // The right key is refused too from that address, until the wait is over.
    let response = login(&app, &app.root_key).await;
    assert_eq!(response.status(), 429);
}

#[test]
fn a_console_session_longer_than_twelve_hours_is_refused() {
    let settings = keygate_gateway::Settings { console_session_minutes: 721, ..Default::default() };
    let error = settings.console_session().unwrap_err().to_string();
    assert!(error.contains("console_session_minutes must be 1 to 720"), "{error}");
    let settings = keygate_gateway::Settings { console_session_minutes: 0, ..Default::default() };
    assert!(settings.console_session().is_err());
}

/// A GET (or, with a body, a change carrying the CSRF token) on the console's API.
async fn console_call(
    app: &TestApp,
    (cookie, csrf): &(String, String),
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request =
        app.request(method.clone(), &format!("/console/api{path}")).header(COOKIE, cookie);
    if method != Method::GET {
        request = request.header("X-CSRF-Token", csrf);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    parts(request.send().await.unwrap()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_serves_sessions_events_and_webhooks_of_the_root_api() {
    let app = console_app().await;
    let session = sign_in(&app).await;
    let created = app.create_app(json!({"name": "watched"})).await;
    let issued = app.sign(&created, "fay").await;
    let id = &created.app_id;

    let (status, body) =
        console_call(&app, &session, Method::GET, &format!("/apps/{id}/sessions?sub=fay"), None)
            .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["sessions"][0]["session_id"], issued["session_id"]);
    // Revoking needs the CSRF token, like every change.
    let path = format!("/console/api/apps/{id}/sessions/revoke");
    let response = app
        .request(Method::POST, &path)
        .header(COOKIE, &session.0)
        .json(&json!({"sub": "fay"}))
        .send()
        .await
        .unwrap();
    let (status, body) = parts(response).await;
    assert_error(status, &body, 403, "invalid_client");
    let revoke = format!("/apps/{id}/sessions/revoke");
    let (status, body) =
        console_call(&app, &session, Method::POST, &revoke, Some(json!({"sub": "fay"}))).await;
    assert_eq!((status, body["revoked"].as_u64()), (200, Some(1)), "{body}");

    let events = format!("/apps/{id}/events?kind=subject_revoked");
    let (status, body) = console_call(&app, &session, Method::GET, &events, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["events"][0]["kind"], "subject_revoked");
    assert_eq!(body["events"][0]["actor"], "root");

    let webhook = format!("/apps/{id}/webhook");
    let (status, body) = console_call(&app, &session, Method::GET, &webhook, None).await;
    assert_error(status, &body, 404, "not_found");
    let url = json!({"url": "http://127.0.0.1:9/hook"});
    let (status, set) = console_call(&app, &session, Method::PUT, &webhook, Some(url)).await;
    assert_eq!(status, 200, "{set}");
    let secret = set["secret"].as_str().unwrap();
    let (status, shown) = console_call(&app, &session, Method::GET, &webhook, None).await;
    assert_eq!(status, 200, "{shown}");
    assert_eq!(shown["url"], "http://127.0.0.1:9/hook");
    assert!(!shown.to_string().contains(secret), "the secret is shown once: {shown}");
    let (status, _) = console_call(&app, &session, Method::DELETE, &webhook, None).await;
    assert_eq!(status, 200);
    let (status, _) = console_call(&app, &session, Method::GET, &webhook, None).await;
    assert_eq!(status, 404);

    // The metrics count the console's routes and the root API's under their own patterns.
    for (sample, count) in [
        (r#"method="GET",route="/console/api/apps/{app_id}/webhook",status="404""#, 2.0),
        (r#"method="POST",route="/console/api/apps/{app_id}/sessions/revoke",status="403""#, 1.0),
        (r#"method="POST",route="/root/apps",status="201""#, 1.0),
    ] {
        let sample = format!("keygate_http_requests_total{{{sample}}}");
        assert_eq!(crate::events::metric(&app, &sample).await, count, "{sample}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_overview_counts_renews_reuse_and_live_sessions_per_app() {
    let app = console_app().await;
    let busy = app.create_app(json!({"name": "busy"})).await;
    let quiet = app.create_app(json!({"name": "quiet"})).await;
    let response = app.request(Method::GET, "/console/api/activity").send().await.unwrap();
    let (status, body) = parts(response).await;
    assert_error(status, &body, 403, "invalid_client");
    let session = sign_in(&app).await;

    app.sign(&quiet, "gus").await;
    let issued = app.sign(&busy, "hal").await;
    let (status, renewed) = app.renew(&busy, &issued["refresh_token"]).await;
    assert_eq!(status, 200, "{renewed}");
    let (status, _) = app.renew(&busy, &renewed["refresh_token"]).await;
    assert_eq!(status, 200);
    let (status, _) = app.renew_as(&busy, &issued["refresh_token"], "thief").await;
    assert_eq!(status, 401, "reuse");

    let (status, body) = console_call(&app, &session, Method::GET, "/activity", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["bucket_seconds"], 60);
    assert_eq!(body["apps_total"], 2);
    let apps = body["apps"].as_array().unwrap();
    assert_eq!(apps[0]["name"], "busy", "the busiest first: {body}");
    let sum = |v: &Value| v.as_array().unwrap().iter().map(|n| n.as_u64().unwrap()).sum::<u64>();
    assert_eq!(apps[0]["renews"].as_array().unwrap().len(), 60);
    assert_eq!(sum(&apps[0]["renews"]), 2, "{body}");
    assert_eq!(sum(&apps[0]["reuse_detected"]), 1, "{body}");
    assert_eq!(apps[0]["live_sessions"], 0, "the reuse revoked the session: {body}");
    assert_eq!(apps[1]["live_sessions"], 1, "{body}");
    assert_eq!(sum(&apps[1]["renews"]), 0);
    assert_eq!(apps[1]["live_history"].as_array().unwrap().last().unwrap(), 1);
    let from = body["from"].as_i64().unwrap();
    assert!(body["live_sampled_at"].as_i64().unwrap() - from >= 59 * 60, "{body}");

    let (status, body) = console_call(&app, &session, Method::GET, "/activity?limit=1", None).await;
    assert_eq!((status, body["apps"].as_array().unwrap().len()), (200, 1), "{body}");
    for bad in ["limit=0", "limit=101", "colour=red"] {
        let path = format!("/activity?{bad}");
        let (status, body) = console_call(&app, &session, Method::GET, &path, None).await;
        assert_error(status, &body, 400, "invalid_request");
    }
}
