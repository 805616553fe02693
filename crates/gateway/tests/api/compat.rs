//! Compatibility routes, each configured from its shipped example in `deploy/compat/`:
//! the response byte for byte, every error of the contract, and reuse detection across
//! routes.

use std::path::PathBuf;

use keygate_gateway::Settings;
use reqwest::header::CONTENT_TYPE;
use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::{parts, spawn_app_with, Backend, CreatedApp, TestApp};

/// How a seed's clients send their refresh token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seed {
    /// POST body `refresh_token`, with `Authorization: Bearer <auth token>`.
    S000,
    /// POST body `refreshToken`; non-rotating.
    S001,
    /// POST body `refreshToken`.
    S002,
    /// GET, header `x-refresh-token`.
    S003,
}

impl Seed {
    fn file(self) -> PathBuf {
        let name = match self {
            Self::S000 => "seed-000.toml",
            Self::S001 => "seed-001.toml",
            Self::S002 => "seed-002.toml",
            Self::S003 => "seed-003.toml",
        };
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy/compat").join(name)
    }

    fn path(self) -> &'static str {
        match self {
            Self::S000 => "/api/v1/auth/refresh",
            Self::S001 => "/api/v1/authenticate/refresh",
            Self::S002 => "/api/auth/refresh",
            Self::S003 => "/v1/auth/refresh-token",
        }
    }

    fn field(self) -> &'static str {
        match self {
            Self::S000 => "refresh_token",
            Self::S001 | Self::S002 => "refreshToken",
            Self::S003 => "x-refresh-token",
        }
    }
}

/// A gateway serving the seed's route from its example file.
async fn spawn(backend: Backend, seed: Seed) -> Option<TestApp> {
    let compat = Settings::load(Some(&seed.file())).unwrap().compat;
    spawn_app_with(backend, move |settings| settings.compat = compat).await
}

/// An app that rotates, with no grace: any replay is reuse.
async fn strict_app(app: &TestApp) -> CreatedApp {
    let name = format!("legacy-{}", ulid::Ulid::new());
    app.create_app(json!({"name": name, "reuse_grace": 0})).await
}

/// Calls the seed's route the way its clients do; `None` leaves the token out.
async fn call(app: &TestApp, seed: Seed, token: Option<&str>, bearer: Option<&str>) -> Raw {
    let mut request = match seed {
        Seed::S003 => {
            let request = app.request(Method::GET, seed.path());
            match token {
                Some(token) => request.header(seed.field(), token),
                None => request,
            }
        }
        _ => {
            let body = match token {
                Some(token) => json!({ seed.field(): token }),
                None => json!({}),
            };
            app.request(Method::POST, seed.path()).json(&body)
        }
    };
    if let Some(bearer) = bearer {
        request = request.bearer_auth(bearer);
    }
    Raw::of(request.send().await.unwrap()).await
}

/// A response as the client sees it.
#[derive(Debug)]
struct Raw {
    status: u16,
    content_type: String,
    retry_after: Option<String>,
    text: String,
}

impl Raw {
    async fn of(response: reqwest::Response) -> Self {
        let header =
            |name: &str| response.headers().get(name).map(|v| v.to_str().unwrap().to_owned());
        let content_type = header(CONTENT_TYPE.as_str()).unwrap_or_default();
        let retry_after = header("retry-after");
        Self {
            status: response.status().as_u16(),
            content_type,
            retry_after,
            text: response.text().await.unwrap(),
        }
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|_| panic!("not JSON: {}", self.text))
    }

    /// Asserts status and the exact body.
    fn is(&self, status: u16, body: &str) {
        assert_eq!((self.status, self.text.as_str()), (status, body));
        assert_eq!(self.content_type, "application/json");
    }
}

/// The new tokens of a successful renew through the seed's route.
fn tokens(seed: Seed, body: &Value) -> (String, Option<String>) {
    let text = |v: &Value| v.as_str().unwrap().to_owned();
    match seed {
        Seed::S000 => (text(&body["access_token"]), Some(text(&body["refresh_token"]))),
        Seed::S001 => (text(&body["jwtToken"]), None),
        Seed::S002 => (text(&body["token"]), Some(text(&body["refreshToken"]))),
        Seed::S003 => {
            let tokens = &body["data"]["tokens"];
            (text(&tokens["accessToken"]), Some(text(&tokens["refreshToken"])))
        }
    }
}

/// The exact success body of the seed's contract.
fn success_body(seed: Seed, auth: &str, refresh: Option<&str>) -> String {
    let refresh = refresh.unwrap_or_default();
    match seed {
        Seed::S000 => format!(
            r#"{{"access_token":"{auth}","refresh_token":"{refresh}","token_type":"bearer"}}"#
        ),
        Seed::S001 => format!(r#"{{"jwtToken":"{auth}"}}"#),
        Seed::S002 => format!(
            r#"{{"message":"Token refreshed successfully","token":"{auth}","refreshToken":"{refresh}","expiresIn":900}}"#
        ),
        Seed::S003 => format!(
            r#"{{"status":200,"message":"Token refreshed successfully","data":{{"tokens":{{"accessToken":"{auth}","refreshToken":"{refresh}"}}}}}}"#
        ),
    }
}

/// The exact error bodies of the seed's contract: (missing token, invalid or reused token).
fn error_bodies(seed: Seed) -> ((u16, &'static str), (u16, &'static str)) {
    match seed {
        Seed::S000 => (
            (
                422,
                r#"{"detail":[{"loc":["body","refresh_token"],"msg":"Field required","type":"missing"}]}"#,
            ),
            (401, r#"{"detail":"Invalid refresh token"}"#),
        ),
        Seed::S001 => (
            (
                400,
                r#"{"error":{"code":"BadRequest","message":"The refresh token is required.","target":"refreshToken","details":[]}}"#,
            ),
            (
                401,
                r#"{"error":{"code":"Unauthorized","message":"The refresh token is invalid or expired.","target":"refreshToken","details":[]}}"#,
            ),
        ),
        Seed::S002 => (
            (400, r#"{"error":"Refresh token is required"}"#),
            (401, r#"{"error":"Invalid or expired refresh token"}"#),
        ),
        Seed::S003 => (
            (400, r#"{"status":400,"message":"Refresh token is required"}"#),
            (401, r#"{"status":401,"message":"Invalid or expired refresh token"}"#),
        ),
    }
}

/// The whole contract of one seed.
async fn contract(app: TestApp, seed: Seed) {
    let created = strict_app(&app).await;
    let signed = app.sign(&created, "alice").await;
    let (r0, a0) =
        (signed["refresh_token"].as_str().unwrap(), signed["auth_token"].as_str().unwrap());
    let bearer = (seed == Seed::S000).then_some(a0);

    // A renew answers in the contract's shape, byte for byte, with tokens that verify.
    let renewed = call(&app, seed, Some(r0), bearer).await;
    assert_eq!(renewed.status, 200, "{}", renewed.text);
    let (auth, refresh) = tokens(seed, &renewed.json());
    renewed.is(200, &success_body(seed, &auth, refresh.as_deref()));
    assert!(app.verified(&created, &json!(auth)).await);
    if let Some(refresh) = &refresh {
        assert_ne!(refresh, r0, "the refresh token rotated");
    }
    // The token now current: the new one, or the same one on a non-rotating route.
    let current = refresh.clone().unwrap_or_else(|| r0.to_owned());

    // Every error of the contract, and none of them consumes the current token.
    let ((missing_status, missing_body), (invalid_status, invalid_body)) = error_bodies(seed);
    call(&app, seed, None, bearer).await.is(missing_status, missing_body);
    call(&app, seed, Some(""), bearer).await.is(missing_status, missing_body);
    call(&app, seed, Some("not-a-token"), bearer).await.is(invalid_status, invalid_body);
    let mut forged = current.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == 'A' { 'B' } else { 'A' });
    call(&app, seed, Some(&forged), bearer).await.is(invalid_status, invalid_body);
    let other = strict_app(&app).await;
    let foreign = app.sign(&other, "alice").await;
    let foreign_bearer = (seed == Seed::S000).then(|| foreign["auth_token"].as_str().unwrap());
    if seed == Seed::S000 {
        // Another app's session with this session's bearer: refused, and not consumed.
        let wrong = call(&app, seed, Some(foreign["refresh_token"].as_str().unwrap()), bearer);
        wrong.await.is(401, r#"{"detail":"Could not validate credentials"}"#);
    }
    // Each app's tokens work through a `kid` route: the other app's renew succeeds.
    let theirs =
        call(&app, seed, Some(foreign["refresh_token"].as_str().unwrap()), foreign_bearer).await;
    assert_eq!(theirs.status, 200, "{}", theirs.text);

    // The current token still renews: nothing above changed the session.
    let (current_bearer, next) = {
        let response = call(&app, seed, Some(&current), bearer.map(|_| auth.as_str())).await;
        assert_eq!(response.status, 200, "{}", response.text);
        let (auth, refresh) = tokens(seed, &response.json());
        (auth, refresh.unwrap_or_else(|| current.clone()))
    };

    // Reuse: an already rotated token revokes the session, on this route too.
    if seed != Seed::S001 {
        let reused = call(&app, seed, Some(r0), bearer.map(|_| current_bearer.as_str())).await;
        reused.is(invalid_status, invalid_body);
        let (status, body) = app.renew(&created, &json!(next)).await;
        assert_eq!(status, 401, "the session is revoked: {body}");
        assert!(!app.verified(&created, &json!(current_bearer)).await);
    }
}

/// Reuse detection spans routes: a token rotated on the seed's route (or, for the
/// non-rotating seed, on `/renew`) and then replayed elsewhere revokes the session.
async fn reuse_across_routes(app: TestApp, seed: Seed) {
    let created = strict_app(&app).await;
    let signed = app.sign(&created, "bob").await;
    let r0 = signed["refresh_token"].as_str().unwrap();
    let a0 = signed["auth_token"].as_str().unwrap();
    let bearer = (seed == Seed::S000).then_some(a0);
    let ((_, _), (invalid_status, invalid_body)) = error_bodies(seed);

    if seed == Seed::S001 {
        // The non-rotating route leaves r0 current; `/renew` rotates it; the route then
        // sees r0 as reuse, and the session ends.
        assert_eq!(call(&app, seed, Some(r0), None).await.status, 200);
        assert_eq!(call(&app, seed, Some(r0), None).await.status, 200);
        let (status, body) = app.renew(&created, &json!(r0)).await;
        assert_eq!(status, 200, "{body}");
        call(&app, seed, Some(r0), None).await.is(invalid_status, invalid_body);
        let (status, _) = app.renew(&created, &body["refresh_token"]).await;
        assert_eq!(status, 401, "the session is revoked");
        assert!(!app.verified(&created, &body["auth_token"]).await);
        return;
    }
    let renewed = call(&app, seed, Some(r0), bearer).await;
    assert_eq!(renewed.status, 200, "{}", renewed.text);
    let (auth, refresh) = tokens(seed, &renewed.json());
    let (status, body) = app.renew(&created, &json!(r0)).await;
    assert_eq!((status, body["error"].as_str()), (401, Some("invalid_grant")), "{body}");
    // The session is gone: the token the route issued no longer renews anywhere.
    let bearer = bearer.map(|_| auth.as_str());
    call(&app, seed, refresh.as_deref(), bearer).await.is(invalid_status, invalid_body);
    assert!(!app.verified(&created, &json!(auth)).await);
}

/// Errors only some contracts have.
async fn seed_000_bearer(app: TestApp, seed: Seed) {
    let created = strict_app(&app).await;
    let alice = app.sign(&created, "alice").await;
    let bob = app.sign(&created, "bob").await;
    let r0 = alice["refresh_token"].as_str().unwrap();
    call(&app, seed, Some(r0), None).await.is(401, r#"{"detail":"Not authenticated"}"#);
    let refused = r#"{"detail":"Could not validate credentials"}"#;
    // Another session's auth token, a refresh token, or garbage as the bearer.
    call(&app, seed, Some(r0), bob["auth_token"].as_str()).await.is(401, refused);
    call(&app, seed, Some(r0), Some(r0)).await.is(401, refused);
    call(&app, seed, Some(r0), Some("x.y.z")).await.is(401, refused);
    let bad_json = app
        .request(Method::POST, seed.path())
        .bearer_auth(alice["auth_token"].as_str().unwrap())
        .header("Content-Type", "application/json")
        .body("{\"refresh_token\": ")
        .send()
        .await
        .unwrap();
    Raw::of(bad_json).await.is(
        422,
        r#"{"detail":[{"loc":["body"],"msg":"JSON decode error","type":"json_invalid"}]}"#,
    );
    // None of that consumed the token.
    let renewed = call(&app, seed, Some(r0), alice["auth_token"].as_str()).await;
    assert_eq!(renewed.status, 200, "{}", renewed.text);
}

async fn seed_003_methods_and_headers(app: TestApp, seed: Seed) {
    let created = strict_app(&app).await;
    let signed = app.sign(&created, "carol").await;
    let r0 = signed["refresh_token"].as_str().unwrap();
    let post =
        app.request(Method::POST, seed.path()).header(seed.field(), r0).send().await.unwrap();
    let (status, body) = parts(post).await;
    assert_eq!((status, body["error"].as_str()), (405, Some("method_not_allowed")));
    let blank =
        app.request(Method::GET, seed.path()).header(seed.field(), "  ").send().await.unwrap();
    Raw::of(blank).await.is(400, r#"{"status":400,"message":"Refresh token is required"}"#);
    // The user agent of a direct client is kept on the session.
    let renewed = app
        .request(Method::GET, seed.path())
        .header(seed.field(), r0)
        .header("User-Agent", "legacy-app/1.0")
        .send()
        .await
        .unwrap();
    assert_eq!(renewed.status(), 200);
    let (status, body) = app.app_post(&created, "get-session", &json!({"sub": "carol"})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["sessions"][0]["useragent"], "legacy-app/1.0", "{body}");
}

async fn seed_002_bad_bodies(app: TestApp, seed: Seed) {
    let required = r#"{"error":"Refresh token is required"}"#;
    for (content_type, body) in [
        ("application/json", "[\"not\", \"an object\"]"),
        ("application/json", "{\"refreshToken\": 5}"),
        ("application/json", "{\"refreshToken\": \"x\"} trailing"),
        ("text/plain", "{\"refreshToken\": \"x\"}"),
        ("application/json", "{\"refreshToken\": \"x\", \"refreshToken\": \"y\"}"),
    ] {
        let response = app
            .request(Method::POST, seed.path())
            .header("Content-Type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        Raw::of(response).await.is(400, required);
    }
    let huge = json!({"refreshToken": "x".repeat(20_000)});
    let response = app.request(Method::POST, seed.path()).json(&huge).send().await.unwrap();
    Raw::of(response).await.is(400, required);
}

/// A database that cannot be reached gives the route's 503, with Retry-After, and the
/// token still works once it is back.
async fn seed_002_unavailable(backend: Backend) {
    let seed = Seed::S002;
    let compat = Settings::load(Some(&seed.file())).unwrap().compat;
    let Some(app) = spawn_app_with(backend, move |settings| {
        settings.compat = compat;
        settings.database_busy_timeout_ms = 300;
    })
    .await
    else {
        return;
    };
    let created = strict_app(&app).await;
    let signed = app.sign(&created, "dave").await;
    let r0 = signed["refresh_token"].as_str().unwrap();
    let lock = crate::outage::with_lock_held(&app, backend).await;
    let refused = call(&app, seed, Some(r0), None).await;
    refused.is(503, r#"{"error":"Service unavailable, retry later"}"#);
    assert_eq!(refused.retry_after.as_deref(), Some("1"));
    lock.release().await;
    let renewed = call(&app, seed, Some(r0), None).await;
    assert_eq!(renewed.status, 200, "{}", renewed.text);
}

/// On an app that rotates, a renew through the non-rotating route does not change the
/// session: a lost rotation is still retried within the grace by its own client.
async fn seed_001_keeps_the_rotations_user_agent(app: TestApp, seed: Seed) {
    let name = format!("graceful-{}", ulid::Ulid::new());
    let created = app.create_app(json!({"name": name, "reuse_grace": 60})).await;
    let signed = app.sign(&created, "erin").await;
    let a = signed["refresh_token"].clone();
    // The rotation A -> B whose answer the client lost.
    let (status, rotated) = app.renew_as(&created, &a, "App/1").await;
    assert_eq!(status, 200, "{rotated}");
    let b = rotated["refresh_token"].as_str().unwrap();
    let keep = app
        .request(Method::POST, seed.path())
        .header("User-Agent", "Mozilla/5.0")
        .json(&json!({ seed.field(): b }))
        .send()
        .await
        .unwrap();
    assert_eq!(keep.status(), 200);
    // The retry of A by the client of the rotation is answered with B again.
    let (status, retried) = app.renew_as(&created, &a, "App/1").await;
    assert_eq!(status, 200, "{retried}");
    // B again: the same header and claims, signed anew (ECDSA signatures are randomized).
    let signed_part =
        |token: &Value| token.as_str().unwrap().rsplit_once('.').unwrap().0.to_owned();
    assert_eq!(signed_part(&retried["refresh_token"]), signed_part(&rotated["refresh_token"]));
}

macro_rules! compat_cases {
    ($($case:ident($seed:expr) => $body:expr),* $(,)?) => {$(
        mod $case {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let app = spawn(Backend::Sqlite, $seed).await.unwrap();
                $body(app, $seed).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if let Some(app) = spawn(Backend::Postgres, $seed).await {
                    $body(app, $seed).await;
                }
            }
        }
    )*};
}

compat_cases! {
    seed_000_contract(Seed::S000) => contract,
    seed_001_contract(Seed::S001) => contract,
    seed_002_contract(Seed::S002) => contract,
    seed_003_contract(Seed::S003) => contract,
    seed_000_reuse_across_routes(Seed::S000) => reuse_across_routes,
    seed_001_reuse_across_routes(Seed::S001) => reuse_across_routes,
    seed_002_reuse_across_routes(Seed::S002) => reuse_across_routes,
    seed_003_reuse_across_routes(Seed::S003) => reuse_across_routes,
    seed_000_bearer_checks(Seed::S000) => seed_000_bearer,
    seed_003_methods(Seed::S003) => seed_003_methods_and_headers,
    seed_002_bodies(Seed::S002) => seed_002_bad_bodies,
    seed_001_grace(Seed::S001) => seed_001_keeps_the_rotations_user_agent,
}

mod seed_002_outage {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        seed_002_unavailable(Backend::Sqlite).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        seed_002_unavailable(Backend::Postgres).await;
    }
}
