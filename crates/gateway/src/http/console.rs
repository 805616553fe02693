//! The admin console in the browser, served when `console = true`: a page, its script and
//! its style, embedded in the binary, and a JSON API under `/console/api/`.
//!
//! The API is the root API itself (`routes::root`), mounted a second time, with one
//! difference: it authenticates by a console session instead of the root key. A session
//! starts with `POST /console/api/login` and the root key (counted against the same
//! per-address failure limit as the root API). It is an opaque random cookie (`HttpOnly`,
//! `SameSite=Strict`, `Path=/console`, `Secure` unless the gateway listens on loopback),
//! kept by this gateway in memory under its SHA-256, with a CSRF token that every request
//! that changes something must carry in `X-CSRF-Token`. Every response under `/console` has a
//! strict `Content-Security-Policy`. docs/console.md describes the model.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use actix_web::http::{header, Method};
use actix_web::middleware::DefaultHeaders;
use actix_web::{web, HttpRequest, HttpResponse};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use keygate_tenants::AppId;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::bootstrap::Services;
use crate::http::error::ApiError;
use crate::http::extract::JsonBody;
use crate::http::rate_limit::Attempt;
use crate::http::resource::{resource_as, Answer};
use crate::usecases::admin;

/// The console session's cookie.
pub const COOKIE: &str = "keygate_console";
/// The header that carries the CSRF token of the console session.
pub const CSRF_HEADER: &str = "x-csrf-token";

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    connect-src 'self'; img-src 'self'; form-action 'self'; base-uri 'none'; \
    frame-ancestors 'none'";

const INDEX: &str = include_str!("../../console/index.html");
const SCRIPT: &str = include_str!("../../console/console.js");
const STYLE: &str = include_str!("../../console/console.css");
/// uPlot (MIT, vendored from npm `uplot`; see `console/vendor/`), which draws the charts.
const UPLOT_SCRIPT: &str = include_str!("../../console/vendor/uPlot.iife.min.js");
const UPLOT_STYLE: &str = include_str!("../../console/vendor/uPlot.min.css");

/// The console sessions of this gateway. Registered only in the `/console` scope, so a
/// [`RootAuth`] that finds it is one of the root API mounted under `/console/api`, and takes
/// a console session instead of the root key.
///
/// [`RootAuth`]: crate::http::extract::RootAuth
#[derive(Debug)]
pub struct Console {
    sessions: Mutex<HashMap<[u8; 32], Session>>,
    lifetime: Duration,
    secure: bool,
}

#[derive(Debug)]
struct Session {
    csrf: String,
    expires: Instant,
}

impl Console {
    /// Sessions that last `lifetime`; cookies marked `Secure` when `secure`.
    pub fn new(lifetime: Duration, secure: bool) -> Self {
        Self { sessions: Mutex::default(), lifetime, secure }
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Session>> {
        self.sessions.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A new session: its cookie value and its CSRF token.
    fn open(&self) -> (String, String) {
        let (id, csrf) = (random_token(), random_token());
        let now = Instant::now();
        let mut sessions = self.sessions();
        sessions.retain(|_, s| s.expires > now);
        sessions.insert(digest(&id), Session { csrf: csrf.clone(), expires: now + self.lifetime });
        (id, csrf)
    }

    /// The CSRF token and remaining lifetime of the request's session, if it has a live one.
    fn find(&self, req: &HttpRequest) -> Option<(String, Duration)> {
        let id = cookie(req)?;
        let sessions = self.sessions();
        let session = sessions.get(&digest(&id))?;
        let left = session.expires.checked_duration_since(Instant::now())?;
        Some((session.csrf.clone(), left))
    }

    fn close(&self, req: &HttpRequest) {
        if let Some(id) = cookie(req) {
            self.sessions().remove(&digest(&id));
        }
    }

    /// The `Set-Cookie` value for session `id` (or, with `None`, one that removes it).
    fn set_cookie(&self, id: Option<&str>) -> String {
        let (value, age) = match id {
            Some(id) => (id, self.lifetime.as_secs()),
            None => ("", 0),
        };
        let secure = if self.secure { "; Secure" } else { "" };
        format!("{COOKIE}={value}; Path=/console; HttpOnly; SameSite=Strict; Max-Age={age}{secure}")
    }

    /// Whether `req` may use the root API under `/console/api`: a live session, and for a
    /// method that changes something, its CSRF token in [`CSRF_HEADER`].
    pub fn authorize(&self, req: &HttpRequest) -> Result<(), ApiError> {
        let Some((csrf, _)) = self.find(req) else { return Err(ApiError::ConsoleSignIn) };
        if matches!(*req.method(), Method::GET | Method::HEAD) {
            return Ok(());
        }
        let presented = req.headers().get(CSRF_HEADER).map(|v| v.as_bytes()).unwrap_or_default();
        if bool::from(presented.ct_eq(csrf.as_bytes())) && !presented.is_empty() {
            Ok(())
        } else {
            Err(ApiError::Csrf)
        }
    }
}

fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

fn digest(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

/// The console cookie of the request.
fn cookie(req: &HttpRequest) -> Option<String> {
    req.headers().get_all(header::COOKIE).filter_map(|v| v.to_str().ok()).find_map(|line| {
        line.split(';').find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == COOKIE && !value.is_empty()).then(|| value.to_owned())
        })
    })
}

/// The console's routes, under `/console`, with its security headers on every answer.
pub fn configure(cfg: &mut web::ServiceConfig, console: web::Data<Console>) {
    let headers = DefaultHeaders::new()
        .add((header::CONTENT_SECURITY_POLICY, CSP))
        .add((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .add((header::REFERRER_POLICY, "no-referrer"))
        .add((header::X_FRAME_OPTIONS, "DENY"))
        .add((header::CACHE_CONTROL, "no-store"));
    cfg.service(web::resource("/console").route(web::get().to(|| async {
        HttpResponse::PermanentRedirect().insert_header((header::LOCATION, "/console/")).finish()
    })));
    cfg.service(
        web::scope("/console")
            .app_data(console)
            .wrap(headers)
            .service(resource_as("/", "/console/").route(web::get().to(page)))
            .service(resource_as("/console.js", "/console/console.js").route(web::get().to(script)))
            .service(
                resource_as("/console.css", "/console/console.css").route(web::get().to(style)),
            )
            .service(resource_as("/api/login", "/console/api/login").route(web::post().to(login)))
            .service(
                resource_as("/api/logout", "/console/api/logout").route(web::post().to(logout)),
            )
            .service(
                resource_as("/api/session", "/console/api/session").route(web::get().to(session)),
            )
            .service(
                resource_as("/api/activity", "/console/api/activity")
                    .route(web::get().to(activity)),
            )
            .service(resource_as("/vendor/uplot.js", "/console/vendor/uplot.js").route(
                web::get().to(|| async { asset("text/javascript; charset=utf-8", UPLOT_SCRIPT) }),
            ))
            .service(
                resource_as("/vendor/uplot.css", "/console/vendor/uplot.css").route(
                    web::get().to(|| async { asset("text/css; charset=utf-8", UPLOT_STYLE) }),
                ),
            )
            .configure(crate::http::routes::console_api)
            .default_service(web::to(crate::http::resource::not_found)),
    );
}

fn asset(content_type: &'static str, body: &'static str) -> HttpResponse {
    HttpResponse::Ok().content_type(content_type).body(body)
}

async fn page() -> HttpResponse {
    HttpResponse::Ok().content_type("text/html; charset=utf-8").body(INDEX)
}

async fn script() -> HttpResponse {
    HttpResponse::Ok().content_type("text/javascript; charset=utf-8").body(SCRIPT)
}

async fn style() -> HttpResponse {
    HttpResponse::Ok().content_type("text/css; charset=utf-8").body(STYLE)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Login {
    root_key: String,
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Login(<redacted>)")
    }
}

/// Signs in with the root key: a new console session (its cookie) and its CSRF token. A
/// wrong key counts against the address as on the root API.
async fn login(
    req: HttpRequest,
    console: web::Data<Console>,
    services: web::Data<Services>,
    body: JsonBody<Login>,
) -> Answer {
    let attempt = Attempt::of(&req);
    attempt.admit()?;
    let admit = || attempt.admitted();
    let outcome = services.tenants.authenticate_root_admitted(Some(&body.0.root_key), &admit).await;
    attempt.settle(outcome, ApiError::InvalidRootKey)?;
    let (id, csrf) = console.open();
    tracing::info!("console: signed in with the root key");
    Ok(HttpResponse::Ok()
        .insert_header((header::SET_COOKIE, console.set_cookie(Some(&id))))
        .json(serde_json::json!({"csrf_token": csrf, "expires_in": console.lifetime.as_secs()})))
}

/// Ends the console session on the server, and removes its cookie.
async fn logout(req: HttpRequest, console: web::Data<Console>) -> Answer {
    console.authorize(&req)?;
    console.close(&req);
    Ok(HttpResponse::Ok()
        .insert_header((header::SET_COOKIE, console.set_cookie(None)))
        .json(serde_json::json!({"signed_out": true})))
}

/// The CSRF token of the request's session (a page loaded again needs it); 403 without one.
/// Another site cannot read this answer (no CORS), nor send the cookie (`SameSite=Strict`).
async fn session(req: HttpRequest, console: web::Data<Console>) -> Answer {
    let (csrf, left) = console.find(&req).ok_or(ApiError::ConsoleSignIn)?;
    Ok(HttpResponse::Ok()
        .json(serde_json::json!({"csrf_token": csrf, "expires_in": left.as_secs()})))
}

/// Apps in the overview when the page does not say.
const DEFAULT_ACTIVITY_APPS: usize = 12;
/// The most apps one overview holds.
const MAX_ACTIVITY_APPS: usize = 100;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ActivityQuery {
    limit: Option<usize>,
}

/// The overview's answer: the busiest apps' last hour, minute by minute.
#[derive(Debug, Serialize)]
struct ActivityView {
    /// Seconds per point (60).
    bucket_seconds: i64,
    /// Unix time of each series' first point.
    from: i64,
    /// When the live sessions were counted (at most every 10 s).
    live_sampled_at: i64,
    /// How many apps there are; `apps` holds the busiest `limit` of them.
    apps_total: usize,
    apps: Vec<AppActivity>,
}

#[derive(Debug, Serialize)]
struct AppActivity {
    app_id: AppId,
    name: String,
    /// Live sessions now (at `live_sampled_at`).
    live_sessions: u64,
    /// Per minute: renews answered with a token pair.
    renews: Vec<u32>,
    /// Per minute: refresh tokens presented again (reuse detected).
    reuse_detected: Vec<u32>,
    /// Per minute: live sessions, where a count was taken in that minute.
    live_history: Vec<Option<u64>>,
}

/// The overview: for the busiest apps (reuse detections, then renews, then live sessions in
/// the last hour), renews and reuse detections per minute as this gateway counted them, and
/// live sessions as counted from the database at most every 10 s (see `crate::activity`).
/// `?limit=` apps, 1 to 100 (default 12).
async fn activity(
    req: HttpRequest,
    console: web::Data<Console>,
    services: web::Data<Services>,
) -> Answer {
    console.authorize(&req)?;
    let limit = web::Query::<ActivityQuery>::from_query(req.query_string())
        .ok()
        .map(|q| q.limit.unwrap_or(DEFAULT_ACTIVITY_APPS))
        .filter(|limit| (1..=MAX_ACTIVITY_APPS).contains(limit))
        .ok_or_else(|| {
            ApiError::invalid("limit", format!("takes only limit, 1 to {MAX_ACTIVITY_APPS}"))
        })?;
    let now = services.clock.now();
    let apps = admin::list_apps(&services).await?;
    let activity = services.metrics.activity();
    let (live_sampled_at, live) = activity
        .live_sessions(now, || admin::live_session_counts_of(&services, &apps, now))
        .await?;
    let known: HashSet<AppId> = apps.iter().map(|app| app.app_id).collect();
    activity.retain(|app| known.contains(app));
    let mut rows: Vec<AppActivity> = apps
        .into_iter()
        .map(|app| {
            let series = activity.series(app.app_id, now);
            AppActivity {
                live_sessions: live.get(&app.app_id).copied().unwrap_or(0),
                app_id: app.app_id,
                name: app.name,
                renews: series.renews,
                reuse_detected: series.reuse_detected,
                live_history: series.live_sessions,
            }
        })
        .collect();
    let total = |v: &[u32]| v.iter().map(|&n| u64::from(n)).sum::<u64>();
    rows.sort_by_key(|row| {
        std::cmp::Reverse((total(&row.reuse_detected), total(&row.renews), row.live_sessions))
    });
    let apps_total = rows.len();
    rows.truncate(limit);
    Ok(HttpResponse::Ok().json(ActivityView {
        bucket_seconds: 60,
        from: crate::activity::hour_from(now),
        live_sampled_at,
        apps_total,
        apps: rows,
    }))
}
