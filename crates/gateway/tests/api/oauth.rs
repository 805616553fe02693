//! The OAuth 2.0 face of an app over HTTP, on both databases: the refresh grant of the
//! token endpoint (RFC 6749 §6) with the same rotation and reuse detection as `/renew`,
//! revocation (RFC 7009), introspection (RFC 7662), the authorization server metadata
//! (RFC 8414), and the `rfc9068` access token profile. Every request is a form body; the
//! client authenticates with `client_secret_basic` or `client_secret_post`; every error is
//! one of RFC 6749 §5.2.
//!
//! The gateway under test listens on 127.0.0.1; the rate-limit test binds 127.0.0.2 and
//! 127.0.0.3 to be other addresses.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read};
use std::net::IpAddr;
use std::process::{Command, Stdio};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use keygate_gateway::Settings;
use reqwest::header::HeaderMap;
use reqwest::Method;
use serde_json::{json, Value};
use url::form_urlencoded;

use crate::helpers::{assert_error, header, parts, payload, CreatedApp, TestApp};
use crate::{on_both_backends, with_settings};

on_both_backends!(
    refreshes_with_client_secret_basic_and_post,
    the_token_endpoint_rotates_and_detects_reuse_like_renew,
    refused_refresh_tokens_are_invalid_grant,
    another_app_s_refresh_token_is_refused_and_not_consumed,
    malformed_token_requests_are_invalid_request,
    client_authentication_comes_before_the_grant,
    grant_types_other_than_refresh_token_are_unsupported,
    scopes_are_refused_and_empty_parameters_are_absent,
    revocation_ends_the_session_of_a_live_token,
    revocation_of_anything_else_changes_nothing,
    a_token_not_valid_yet_is_revoked_and_inactive,
    an_oversized_refresh_token_is_invalid_grant,
    introspection_describes_live_tokens_exactly,
    introspection_answers_inactive_for_anything_not_live,
    the_rfc9068_profile_types_its_tokens,
    the_default_profile_keeps_plain_jwts,
    switching_the_profile_keeps_live_sessions,
    an_invalid_profile_is_refused_naming_the_field,
    failed_client_authentication_is_rate_limited,
    metadata_needs_public_url,
);

with_settings!(
    client_authentication_failures_are_invalid_client: unlimited,
    basic_credentials_are_form_urlencoded: unlimited,
    metadata_is_published_at_both_addresses: published,
    metadata_drops_a_trailing_slash_of_public_url: published_with_a_prefix,
);

/// The `User-Agent` of every OAuth request (the renew's `useragent`).
const AGENT: &str = "oauth-test/1.0";
const FORM: &str = "application/x-www-form-urlencoded";
/// The challenge of every 401 to a request that used `Authorization` or sent nothing.
const CHALLENGE: &str = r#"Basic realm="keygate""#;
/// A public URL the gateway need not be reachable at: the metadata only names it.
const PUBLIC_URL: &str = "https://auth.example.test";
/// The default burst of failed authentications: this many are answered, the next is 429.
const BURST: usize = 10;
/// The longest wait the default rate (10 a minute) can ask for.
const MAX_WAIT: u64 = 6;

/// The tests that fail to authenticate more often than the default burst allows.
fn unlimited(settings: &mut Settings) {
    settings.auth_failures_per_minute = 0;
}

fn published(settings: &mut Settings) {
    settings.public_url = Some(PUBLIC_URL.into());
}

/// `public_url` with a path prefix and a trailing `/`, read from TOML as an operator
/// would write it.
fn published_with_a_prefix(settings: &mut Settings) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keygate.toml");
    std::fs::write(&file, format!("public_url = \"{PUBLIC_URL}/keygate/\"\n")).unwrap();
    settings.public_url = Settings::load(Some(&file)).unwrap().public_url;
}

/// How a request presents its client credentials.
#[derive(Debug, Clone)]
enum Client {
    /// `client_secret_basic`: `Authorization: Basic` of the form-urlencoded id and secret.
    Basic(String, String),
    /// `client_secret_post`: `client_id` and `client_secret` in the form.
    Post(String, String),
    /// This `Authorization` header, as is.
    Header(String),
    /// No credentials at all.
    Anonymous,
}

fn basic(tenant: &CreatedApp) -> Client {
    Client::Basic(tenant.app_id.clone(), tenant.app_key.clone())
}

fn post(tenant: &CreatedApp) -> Client {
    Client::Post(tenant.app_id.clone(), tenant.app_key.clone())
}

/// The app's key with its last character changed: well formed, and wrong.
fn wrong_key(tenant: &CreatedApp) -> String {
    let mut key = tenant.app_key.clone();
    let last = key.pop().unwrap();
    key.push(if last == 'A' { 'B' } else { 'A' });
    key
}

fn urlencoded(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// Every byte of `text` as `%XX`, needed or not.
fn percent_all(text: &str) -> String {
    text.bytes().map(|b| format!("%{b:02X}")).collect()
}

/// `Basic` of these bytes, exactly.
fn basic_of(raw: &[u8]) -> String {
    format!("Basic {}", STANDARD.encode(raw))
}

/// `Basic` of `id` and `secret`, each form-urlencoded as RFC 6749 §2.3.1 asks.
fn basic_header(id: &str, secret: &str) -> String {
    basic_of(format!("{}:{}", urlencoded(id), urlencoded(secret)).as_bytes())
}

/// A form body of `pairs`, in order, repeats included.
fn form(pairs: &[(&str, &str)]) -> String {
    let mut serializer = form_urlencoded::Serializer::new(String::new());
    for (name, value) in pairs {
        serializer.append_pair(name, value);
    }
    serializer.finish()
}

fn text(token: &Value) -> &str {
    token.as_str().unwrap()
}

fn jid(token: &Value) -> Value {
    payload(token)["jid"].clone()
}

/// `token` with one character of its signature changed: well formed, badly signed.
fn tampered(token: &Value) -> Value {
    let mut chars: Vec<char> = text(token).chars().collect();
    let at = chars.len() - 10;
    chars[at] = if chars[at] == 'A' { 'B' } else { 'A' };
    Value::String(chars.into_iter().collect())
}

fn members(body: &Value) -> HashSet<&str> {
    body.as_object().map(|o| o.keys().map(String::as_str).collect()).unwrap_or_default()
}

/// An answer of an OAuth endpoint.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: HeaderMap,
    text: String,
    body: Value,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }
}

/// Reads an answer of the token, revocation or introspection endpoint, each of which
/// carries `Cache-Control: no-store` and `Pragma: no-cache`, success or error.
async fn reply(response: reqwest::Response) -> Reply {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap();
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("{status}, not JSON: {text}"))
    };
    let reply = Reply { status, headers, text, body };
    assert_eq!(reply.header("cache-control"), Some("no-store"), "{status} {}", reply.text);
    assert_eq!(reply.header("pragma"), Some("no-cache"), "{status} {}", reply.text);
    reply
}

/// A POST to an OAuth endpoint of an app, ready to send.
#[derive(Debug, Clone)]
struct Post {
    /// The app id of the path.
    app_id: String,
    /// `token`, `revoke` or `introspect`.
    endpoint: &'static str,
    authorization: Option<String>,
    content_type: Option<String>,
    user_agent: &'static str,
    body: Vec<u8>,
}

impl Post {
    /// `params` as a form for `endpoint` of `app_id`, with the credentials of `client`.
    fn form(
        app_id: &str,
        endpoint: &'static str,
        client: &Client,
        params: &[(&str, &str)],
    ) -> Self {
        let mut pairs: Vec<(&str, &str)> = params.to_vec();
        let authorization = match client {
            Client::Basic(id, secret) => Some(basic_header(id, secret)),
            Client::Post(id, secret) => {
                pairs.extend([("client_id", id.as_str()), ("client_secret", secret.as_str())]);
                None
            }
            Client::Header(value) => Some(value.clone()),
            Client::Anonymous => None,
        };
        Self {
            app_id: app_id.to_owned(),
            endpoint,
            authorization,
            content_type: Some(FORM.into()),
            user_agent: AGENT,
            body: form(&pairs).into_bytes(),
        }
    }

    /// The same request with this exact body.
    fn with_body(self, body: impl Into<Vec<u8>>) -> Self {
        Self { body: body.into(), ..self }
    }

    async fn send(&self, app: &TestApp) -> Reply {
        self.send_from(app, &app.client).await
    }

    async fn send_from(&self, app: &TestApp, http: &reqwest::Client) -> Reply {
        let url = format!("{}/app/{}/oauth/{}", app.address, self.app_id, self.endpoint);
        let mut request = http.post(url).header("User-Agent", self.user_agent);
        if let Some(value) = &self.authorization {
            request = request.header("Authorization", value);
        }
        if let Some(value) = &self.content_type {
            request = request.header("Content-Type", value);
        }
        reply(request.body(self.body.clone()).send().await.unwrap()).await
    }
}

/// A form request to `endpoint` of `tenant`'s path.
async fn call(
    app: &TestApp,
    tenant: &CreatedApp,
    endpoint: &'static str,
    client: &Client,
    params: &[(&str, &str)],
) -> Reply {
    Post::form(&tenant.app_id, endpoint, client, params).send(app).await
}

fn grant(token: &Value) -> [(&str, &str); 2] {
    [("grant_type", "refresh_token"), ("refresh_token", text(token))]
}

/// The refresh grant with `token` at `tenant`'s token endpoint.
async fn refresh(app: &TestApp, tenant: &CreatedApp, client: &Client, token: &Value) -> Reply {
    call(app, tenant, "token", client, &grant(token)).await
}

async fn revoke(app: &TestApp, tenant: &CreatedApp, client: &Client, token: &Value) -> Reply {
    call(app, tenant, "revoke", client, &[("token", text(token))]).await
}

async fn introspect(app: &TestApp, tenant: &CreatedApp, client: &Client, token: &Value) -> Reply {
    call(app, tenant, "introspect", client, &[("token", text(token))]).await
}

/// Asserts a token response of exactly the designed members; returns it.
fn assert_tokens(reply: &Reply, expires_in: i64, context: &str) -> Value {
    assert_eq!(reply.status, 200, "{context}: {}", reply.text);
    assert_eq!(
        members(&reply.body),
        HashSet::from(["access_token", "token_type", "expires_in", "refresh_token"]),
        "{context}"
    );
    assert_eq!(reply.body["token_type"], "Bearer", "{context}");
    assert_eq!(reply.body["expires_in"], expires_in, "{context}");
    reply.body.clone()
}

/// Asserts an error of RFC 6749 §5.2: the status, the code, a description, nothing else.
fn assert_oauth_error(reply: &Reply, status: u16, code: &str, context: &str) {
    assert_eq!(reply.status, status, "{context}: {}", reply.text);
    assert_eq!(reply.body["error"], code, "{context}: {}", reply.text);
    assert!(
        reply.body["error_description"].as_str().is_some_and(|d| !d.is_empty()),
        "{context}: {}",
        reply.text
    );
    assert_eq!(members(&reply.body), HashSet::from(["error", "error_description"]), "{context}");
}

/// 401 `invalid_client`, with the Basic challenge when `challenged`.
fn assert_invalid_client(reply: &Reply, challenged: bool, context: &str) {
    assert_oauth_error(reply, 401, "invalid_client", context);
    if challenged {
        assert_eq!(reply.header("www-authenticate"), Some(CHALLENGE), "{context}");
    }
}

/// 200 with an empty body: what revocation answers, whatever the token.
fn assert_revoke_answer(reply: &Reply, context: &str) {
    assert_eq!(reply.status, 200, "{context}: {}", reply.text);
    assert_eq!(reply.text, "", "{context}");
}

fn assert_inactive(reply: &Reply, context: &str) {
    assert_eq!(reply.status, 200, "{context}: {}", reply.text);
    assert_eq!(reply.body, json!({"active": false}), "{context}");
}

/// The session of `refresh` and `auth` is over: the refresh token renews neither through
/// `/renew` nor through the token endpoint, and the auth token does not verify.
async fn assert_session_revoked(
    app: &TestApp,
    tenant: &CreatedApp,
    refresh_token: &Value,
    auth_token: &Value,
    context: &str,
) {
    let (status, body) = app.renew(tenant, refresh_token).await;
    assert_error(status, &body, 401, "invalid_grant");
    let reply = refresh(app, tenant, &basic(tenant), refresh_token).await;
    assert_oauth_error(&reply, 400, "invalid_grant", context);
    let (status, body) = app.app_post(tenant, "verify", &json!({"token": auth_token})).await;
    assert_eq!(status, 200, "{context}: {body}");
    assert_eq!(body, json!({"verified": false, "reason": "session revoked"}), "{context}");
}

async fn settings_of(app: &TestApp, tenant: &CreatedApp) -> Value {
    let response =
        app.root(Method::GET, &format!("/root/apps/{}", tenant.app_id)).send().await.unwrap();
    let (status, body) = parts(response).await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn patch_app(app: &TestApp, tenant: &CreatedApp, patch: &Value) -> (u16, Value) {
    let response = app
        .root(Method::PATCH, &format!("/root/apps/{}", tenant.app_id))
        .json(patch)
        .send()
        .await
        .unwrap();
    parts(response).await
}

async fn set_profile(app: &TestApp, tenant: &CreatedApp, profile: &str) {
    let (status, body) = patch_app(app, tenant, &json!({"access_token_profile": profile})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["access_token_profile"], profile, "{body}");
}

async fn refreshes_with_client_secret_basic_and_post(app: TestApp) {
    let tenant = app.create_app(json!({"name": "oauth-happy", "token_expire": 600})).await;
    for (method, client) in [("basic", basic(&tenant)), ("post", post(&tenant))] {
        let signed = app.sign(&tenant, "alice").await;
        let mut token = signed["refresh_token"].clone();
        for round in 0..3 {
            let context = format!("{method}, round {round}");
            let issued =
                assert_tokens(&refresh(&app, &tenant, &client, &token).await, 600, &context);
            let access = payload(&issued["access_token"]);
            assert_eq!(access["sub"], "alice", "{context}");
            assert_eq!(access["sid"], signed["session_id"], "{context}");
            assert_eq!(access["ip"], "127.0.0.1", "{context}: the renew's ip is the caller's");
            assert_eq!(access["useragent"], AGENT, "{context}: the renew's useragent");
            assert_eq!(payload(&issued["refresh_token"])["sid"], signed["session_id"]);
            assert_ne!(jid(&issued["refresh_token"]), jid(&token), "{context}: it rotates");
            assert!(app.verified(&tenant, &issued["access_token"]).await, "{context}");
            token = issued["refresh_token"].clone();
        }
        // The chain goes on through /renew.
        let (status, body) = app.renew(&tenant, &token).await;
        assert_eq!(status, 200, "{method}: {body}");
    }

    // A charset parameter on the form type is fine, and unknown parameters are ignored.
    let signed = app.sign(&tenant, "alice").await;
    let charset = Post {
        content_type: Some(format!("{FORM}; charset=UTF-8")),
        ..Post::form(&tenant.app_id, "token", &basic(&tenant), &grant(&signed["refresh_token"]))
    };
    let issued = assert_tokens(&charset.send(&app).await, 600, "with a charset");
    let mut params = grant(&issued["refresh_token"]).to_vec();
    params.extend([("audience", "web"), ("resource", "https://api.example"), ("x", "")]);
    let issued =
        assert_tokens(&call(&app, &tenant, "token", &post(&tenant), &params).await, 600, "extras");
    assert!(app.verified(&tenant, &issued["access_token"]).await);
}

async fn the_token_endpoint_rotates_and_detects_reuse_like_renew(app: TestApp) {
    // Without grace, a spent token is reuse: refused, and the session ends.
    let strict = app.create_app(json!({"name": "oauth-nograce", "reuse_grace": 0})).await;
    let signed = app.sign(&strict, "bob").await;
    let first = refresh(&app, &strict, &basic(&strict), &signed["refresh_token"]).await;
    let first = assert_tokens(&first, 900, "the first renew");
    let reply = refresh(&app, &strict, &basic(&strict), &signed["refresh_token"]).await;
    assert_oauth_error(&reply, 400, "invalid_grant", "the spent token");
    assert_session_revoked(
        &app,
        &strict,
        &first["refresh_token"],
        &first["access_token"],
        "after the reuse",
    )
    .await;
    assert!(!app.verified(&strict, &signed["auth_token"]).await);

    // Reuse seen by /renew ends the session for the token endpoint too, and the other way
    // round.
    let signed = app.sign(&strict, "bob").await;
    let (status, renewed) = app.renew(&strict, &signed["refresh_token"]).await;
    assert_eq!(status, 200, "{renewed}");
    let (status, _) = app.renew(&strict, &signed["refresh_token"]).await;
    assert_eq!(status, 401);
    let reply = refresh(&app, &strict, &basic(&strict), &renewed["refresh_token"]).await;
    assert_oauth_error(&reply, 400, "invalid_grant", "a session /renew revoked");

    // Within the grace, the previous token from the same User-Agent is a retry, answered
    // with the current refresh token; from another agent it is reuse.
    let lenient = app.create_app(json!({"name": "oauth-grace", "reuse_grace": 60})).await;
    let signed = app.sign(&lenient, "carol").await;
    let first = refresh(&app, &lenient, &basic(&lenient), &signed["refresh_token"]).await;
    let first = assert_tokens(&first, 900, "the first renew");
    let retry = refresh(&app, &lenient, &post(&lenient), &signed["refresh_token"]).await;
    let retry = assert_tokens(&retry, 900, "the retry");
    assert_eq!(jid(&retry["refresh_token"]), jid(&first["refresh_token"]), "the current token");
    assert_ne!(jid(&retry["access_token"]), jid(&first["access_token"]));
    // The token endpoint's useragent is its User-Agent header: /renew from that agent is
    // the same retry.
    let (status, body) = app.renew_as(&lenient, &signed["refresh_token"], AGENT).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(jid(&body["refresh_token"]), jid(&first["refresh_token"]));
    let other_agent = Post {
        user_agent: "another-agent/2.0",
        ..Post::form(&lenient.app_id, "token", &basic(&lenient), &grant(&signed["refresh_token"]))
    };
    assert_oauth_error(&other_agent.send(&app).await, 400, "invalid_grant", "another agent");
    assert_session_revoked(
        &app,
        &lenient,
        &first["refresh_token"],
        &first["access_token"],
        "after reuse within the grace",
    )
    .await;

    // And the other way round: the token endpoint retries what /renew rotated.
    let signed = app.sign(&lenient, "carol").await;
    let (status, renewed) = app.renew_as(&lenient, &signed["refresh_token"], AGENT).await;
    assert_eq!(status, 200, "{renewed}");
    let retry = refresh(&app, &lenient, &basic(&lenient), &signed["refresh_token"]).await;
    let retry = assert_tokens(&retry, 900, "a retry of /renew");
    assert_eq!(jid(&retry["refresh_token"]), jid(&renewed["refresh_token"]));
    let next = refresh(&app, &lenient, &basic(&lenient), &retry["refresh_token"]).await;
    assert_tokens(&next, 900, "the current token rotates");
}

async fn refused_refresh_tokens_are_invalid_grant(app: TestApp) {
    let tenant = app.create_app(json!({"name": "oauth-refused", "reuse_grace": 0})).await;
    let signed = app.sign(&tenant, "dave").await;
    let cases = [
        ("garbage", json!("garbage")),
        ("three empty parts", json!("a.b.c")),
        ("a bad signature", tampered(&signed["refresh_token"])),
        ("an auth token", signed["auth_token"].clone()),
    ];
    for (what, token) in &cases {
        for client in [basic(&tenant), post(&tenant)] {
            let reply = refresh(&app, &tenant, &client, token).await;
            assert_oauth_error(&reply, 400, "invalid_grant", what);
        }
    }
    // None of them touched the session.
    assert!(app.verified(&tenant, &signed["auth_token"]).await);
    let reply = refresh(&app, &tenant, &basic(&tenant), &signed["refresh_token"]).await;
    assert_tokens(&reply, 900, "the real token, after the refused ones");

    // Not yet valid: refused, and not reuse.
    let early = app.create_app(json!({"name": "oauth-early", "refresh_notbefore": 60})).await;
    let signed = app.sign(&early, "dave").await;
    let reply = refresh(&app, &early, &basic(&early), &signed["refresh_token"]).await;
    assert_oauth_error(&reply, 400, "invalid_grant", "not yet valid");
    assert!(app.verified(&early, &signed["auth_token"]).await, "an early renew is not reuse");

    // A revoked session's token.
    let signed = app.sign(&tenant, "dave").await;
    let (status, body) =
        app.app_post(&tenant, "revoke", &json!({"session_id": signed["session_id"]})).await;
    assert_eq!((status, body), (200, json!({"revoked": 1})));
    let reply = refresh(&app, &tenant, &basic(&tenant), &signed["refresh_token"]).await;
    assert_oauth_error(&reply, 400, "invalid_grant", "a revoked session");
}

async fn another_app_s_refresh_token_is_refused_and_not_consumed(app: TestApp) {
    let a = app.create_app(json!({"name": "oauth-a", "reuse_grace": 0})).await;
    let b = app.create_app(json!({"name": "oauth-b", "reuse_grace": 0})).await;
    let theirs = app.sign(&b, "erin").await;
    for (method, client) in [("basic", basic(&a)), ("post", post(&a))] {
        let reply = refresh(&app, &a, &client, &theirs["refresh_token"]).await;
        assert_oauth_error(&reply, 400, "invalid_grant", method);
    }
    // With grace 0, a consumed token would now be reuse.
    let (status, renewed) = app.renew(&b, &theirs["refresh_token"]).await;
    assert_eq!(status, 200, "B's token was not consumed by the attempts at A: {renewed}");
    assert!(app.verified(&b, &renewed["auth_token"]).await);
    let reply = refresh(&app, &b, &basic(&b), &renewed["refresh_token"]).await;
    assert_tokens(&reply, 900, "B's token at B");
}

async fn malformed_token_requests_are_invalid_request(app: TestApp) {
    let tenant = app.create_app(json!({"name": "oauth-malformed", "reuse_grace": 0})).await;
    let other = app.create_app(json!({"name": "oauth-other"})).await;
    let signed = app.sign(&tenant, "frank").await;
    let token = text(&signed["refresh_token"]);
    let id = tenant.app_id.as_str();
    let form_with =
        |client: &Client, params: &[(&str, &str)]| Post::form(id, "token", client, params);
    let valid = form_with(&basic(&tenant), &grant(&signed["refresh_token"]));
    let json_body =
        serde_json::to_vec(&json!({"grant_type": "refresh_token", "refresh_token": token}))
            .unwrap();
    let raw = format!("grant_type=refresh_token&refresh_token={token}");
    let cases: Vec<(&str, Post)> = vec![
        ("no grant_type", form_with(&basic(&tenant), &[("refresh_token", token)])),
        (
            "an empty grant_type",
            form_with(&basic(&tenant), &[("grant_type", ""), ("refresh_token", token)]),
        ),
        ("no refresh_token", form_with(&basic(&tenant), &[("grant_type", "refresh_token")])),
        (
            "an empty refresh_token",
            form_with(&basic(&tenant), &[("grant_type", "refresh_token"), ("refresh_token", "")]),
        ),
        (
            "grant_type twice",
            form_with(
                &basic(&tenant),
                &[
                    ("grant_type", "refresh_token"),
                    ("grant_type", "refresh_token"),
                    ("refresh_token", token),
                ],
            ),
        ),
        (
            "refresh_token twice, the same",
            form_with(
                &basic(&tenant),
                &[
                    ("grant_type", "refresh_token"),
                    ("refresh_token", token),
                    ("refresh_token", token),
                ],
            ),
        ),
        (
            "refresh_token twice, different",
            form_with(
                &basic(&tenant),
                &[
                    ("grant_type", "refresh_token"),
                    ("refresh_token", "garbage"),
                    ("refresh_token", token),
                ],
            ),
        ),
        ("client_id twice", {
            let mut params = grant(&signed["refresh_token"]).to_vec();
            params.push(("client_id", id));
            form_with(&post(&tenant), &params)
        }),
        ("Basic and client_secret_post at once", {
            let mut params = grant(&signed["refresh_token"]).to_vec();
            params.extend([("client_id", id), ("client_secret", tenant.app_key.as_str())]);
            form_with(&basic(&tenant), &params)
        }),
        ("Basic and a body client_secret alone", {
            let mut params = grant(&signed["refresh_token"]).to_vec();
            params.push(("client_secret", tenant.app_key.as_str()));
            form_with(&basic(&tenant), &params)
        }),
        ("Basic and another body client_id", {
            let mut params = grant(&signed["refresh_token"]).to_vec();
            params.push(("client_id", other.app_id.as_str()));
            form_with(&basic(&tenant), &params)
        }),
        (
            "bad percent-encoding",
            valid.clone().with_body(format!("grant_type=refresh_token&refresh_token=%ZZ{token}")),
        ),
        (
            "percent-encoded non-UTF-8",
            valid.clone().with_body(format!("grant_type=refresh_token&refresh_token={token}%FF")),
        ),
        ("raw non-UTF-8", {
            let mut body = raw.clone().into_bytes();
            body.push(0xff);
            valid.clone().with_body(body)
        }),
        (
            "a JSON body",
            Post { content_type: Some("application/json".into()), ..valid.clone() }
                .with_body(json_body),
        ),
        ("no content type", Post { content_type: None, ..valid.clone() }),
        ("text/plain", Post { content_type: Some("text/plain".into()), ..valid.clone() }),
        (
            "multipart/form-data",
            Post { content_type: Some("multipart/form-data; boundary=x".into()), ..valid.clone() },
        ),
    ];
    for (what, request) in &cases {
        assert_oauth_error(&request.send(&app).await, 400, "invalid_request", what);
    }

    // Over 16 KiB: 413, still in the OAuth error contract.
    let padding = "p".repeat(17 * 1024);
    let mut params = grant(&signed["refresh_token"]).to_vec();
    params.push(("padding", &padding));
    let reply = call(&app, &tenant, "token", &basic(&tenant), &params).await;
    assert_oauth_error(&reply, 413, "invalid_request", "a body over 16 KiB");

    // Nothing above consumed the token (with grace 0, a consumed token is reuse).
    let reply = valid.send(&app).await;
    assert_tokens(&reply, 900, "the token, after every malformed request");
}

/// Client authentication is checked after the body parses and before anything else.
async fn client_authentication_comes_before_the_grant(app: TestApp) {
    let tenant = app.create_app(json!({"name": "oauth-order"})).await;
    let signed = app.sign(&tenant, "gina").await;
    let cases: [(&str, &[(&str, &str)]); 4] = [
        ("no grant_type", &[("refresh_token", "garbage")]),
        ("an unsupported grant", &[("grant_type", "password"), ("username", "u")]),
        ("a scope", &[("grant_type", "refresh_token"), ("refresh_token", "x"), ("scope", "a")]),
        ("a bad refresh token", &[("grant_type", "refresh_token"), ("refresh_token", "x")]),
    ];
    for (what, params) in cases {
        let reply = call(&app, &tenant, "token", &Client::Anonymous, params).await;
        assert_invalid_client(&reply, true, what);
    }
    // A body that does not parse is refused before the missing credentials are.
    let body = serde_json::to_vec(&json!({"grant_type": "refresh_token"})).unwrap();
    let request = Post {
        content_type: Some("application/json".into()),
        ..Post::form(&tenant.app_id, "token", &Client::Anonymous, &[])
    };
    let reply = request.with_body(body).send(&app).await;
    assert_oauth_error(&reply, 400, "invalid_request", "JSON without credentials");
    let reply = refresh(&app, &tenant, &basic(&tenant), &signed["refresh_token"]).await;
    assert_tokens(&reply, 900, "the session is untouched");
}

async fn client_authentication_failures_are_invalid_client(app: TestApp) {
    let tenant = app.create_app(json!({"name": "oauth-clients", "reuse_grace": 0})).await;
    let other = app.create_app(json!({"name": "oauth-stranger"})).await;
    let signed = app.sign(&tenant, "hank").await;
    let id = tenant.app_id.clone();
    let unknown = ulid::Ulid::new().to_string();
    // (what, credentials, whether the 401 must carry the Basic challenge)
    let cases = [
        ("no credentials", Client::Anonymous, true),
        ("a wrong secret via Basic", Client::Basic(id.clone(), wrong_key(&tenant)), true),
        ("a wrong secret via post", Client::Post(id.clone(), wrong_key(&tenant)), false),
        ("the other app's id and key via Basic", basic(&other), true),
        ("the other app's id and key via post", post(&other), false),
        (
            "this id with the other app's key",
            Client::Basic(id.clone(), other.app_key.clone()),
            true,
        ),
        (
            "the other app's id with this key",
            Client::Basic(other.app_id.clone(), tenant.app_key.clone()),
            true,
        ),
        ("an unknown client id", Client::Basic(unknown.clone(), tenant.app_key.clone()), true),
        ("an unknown client id via post", Client::Post(unknown, tenant.app_key.clone()), false),
        ("a malformed client id", Client::Basic("not-a-ulid".into(), tenant.app_key.clone()), true),
        ("an empty secret via Basic", Client::Basic(id.clone(), String::new()), true),
        ("the root key as the secret", Client::Basic(id.clone(), app.root_key.clone()), true),
        (
            "the app key as a Bearer token",
            Client::Header(format!("Bearer {}", tenant.app_key)),
            true,
        ),
        ("the bare app key", Client::Header(tenant.app_key.clone()), true),
    ];
    for (what, client, challenged) in &cases {
        for endpoint in ["token", "revoke", "introspect"] {
            let params = match endpoint {
                "token" => grant(&signed["refresh_token"]).to_vec(),
                _ => vec![("token", text(&signed["refresh_token"]))],
            };
            let reply = call(&app, &tenant, endpoint, client, &params).await;
            assert_invalid_client(&reply, *challenged, &format!("{endpoint}: {what}"));
        }
    }
    // Half of client_secret_post.
    let half = [("client_id", id.as_str()), ("client_secret", tenant.app_key.as_str())];
    for (what, pair) in [("a client_id without a secret", half[0]), ("a secret alone", half[1])] {
        let mut params = grant(&signed["refresh_token"]).to_vec();
        params.push(pair);
        let reply = call(&app, &tenant, "token", &Client::Anonymous, &params).await;
        assert_invalid_client(&reply, false, what);
    }
    // None of them revoked or consumed anything (grace 0: a consumed token is reuse).
    assert!(app.verified(&tenant, &signed["auth_token"]).await);
    let reply = refresh(&app, &tenant, &basic(&tenant), &signed["refresh_token"]).await;
    assert_tokens(&reply, 900, "the token, after the refused clients");
}

async fn basic_credentials_are_form_urlencoded(app: TestApp) {
    let tenant = app.create_app(json!({"name": "oauth-basic", "reuse_grace": 0})).await;
    let (id, key) = (tenant.app_id.as_str(), tenant.app_key.as_str());
    let mut token = app.sign(&tenant, "ivy").await["refresh_token"].clone();
    let with_header = |authorization: String, token: &Value, params: &[(&str, &str)]| {
        let mut all = grant(token).to_vec();
        all.extend_from_slice(params);
        Post {
            authorization: Some(authorization),
            ..Post::form(id, "token", &Client::Anonymous, &all)
        }
    };

    // The app key's alphabet (base64url after `kg_`) needs no encoding, but encoding what
    // needs none is still the same id and secret.
    let (prefix, rest) = key.split_at(3);
    let accepted = [
        ("as is", basic_of(format!("{id}:{key}").as_bytes()), vec![]),
        ("encoded by the client", basic_header(id, key), vec![]),
        (
            "every byte of the id as %XX",
            basic_of(format!("{}:{key}", percent_all(id)).as_bytes()),
            vec![],
        ),
        (
            "the key's prefix as %XX",
            basic_of(format!("{id}:{}{rest}", percent_all(prefix)).as_bytes()),
            vec![],
        ),
        (
            "every byte of both as %XX",
            basic_of(format!("{}:{}", percent_all(id), percent_all(key)).as_bytes()),
            vec![],
        ),
        ("with the same client_id in the body", basic_header(id, key), vec![("client_id", id)]),
        (
            "an empty client_id in the body is absent",
            basic_header(id, key),
            vec![("client_id", "")],
        ),
        (
            "an empty client_secret in the body is absent",
            basic_header(id, key),
            vec![("client_secret", "")],
        ),
    ];
    for (what, authorization, params) in accepted {
        let reply = with_header(authorization, &token, &params).send(&app).await;
        token = assert_tokens(&reply, 900, what)["refresh_token"].clone();
    }

    // What decodes to anything else is a wrong client: 401 with the challenge.
    let refused: Vec<(&str, String)> = vec![
        // `+` is a space, and a space is part of the secret, not trimmed.
        ("a + after the key", basic_of(format!("{id}:{key}+").as_bytes())),
        ("a + before the key", basic_of(format!("{id}:+{key}").as_bytes())),
        ("%20 after the key", basic_of(format!("{id}:{key}%20").as_bytes())),
        ("a space before the id", basic_of(format!("+{id}:{key}").as_bytes())),
        // The secret runs from the first `:`; a `:` of the id is sent as %3A.
        ("a colon after the key", basic_of(format!("{id}:{key}:").as_bytes())),
        ("an encoded colon after the key", basic_of(format!("{id}:{key}%3A").as_bytes())),
        ("an encoded colon after the id", basic_of(format!("{id}%3A:{key}").as_bytes())),
        ("only an encoded colon", basic_of(format!("{id}%3A{key}").as_bytes())),
        // `%` is sent as %25: a bare one is bad percent-encoding.
        ("a bare % after the key", basic_of(format!("{id}:{key}%").as_bytes())),
        ("a bad escape in the key", basic_of(format!("{id}:{prefix}%G1{rest}").as_bytes())),
        ("an encoded % after the key", basic_of(format!("{id}:{key}%25").as_bytes())),
        ("no colon", basic_of(format!("{id}{key}").as_bytes())),
        ("the id alone", basic_of(id.as_bytes())),
        ("id and key swapped", basic_of(format!("{key}:{id}").as_bytes())),
        ("an empty pair", basic_of(b":")),
        ("bad base64", "Basic ***not-base64***".into()),
        ("base64 of a wrong length", "Basic a".into()),
        ("the scheme alone", "Basic".into()),
        ("the scheme and a space", "Basic ".into()),
        ("non-UTF-8 bytes", basic_of(b"\xff\xfe:\xfd")),
        ("non-UTF-8 after the key", {
            let mut raw = format!("{id}:{key}").into_bytes();
            raw.push(0xff);
            basic_of(&raw)
        }),
        ("percent-encoded non-UTF-8", basic_of(format!("{id}:{key}%FF").as_bytes())),
        // actix-http accepts request heads of up to 128 KiB (abuse.rs,
        // `oversized_request_heads_get_431`), so a 10 KB header reaches the gateway rather
        // than being answered 431 by the server; the gateway refuses a Basic value over
        // 4 KiB as malformed: 401 invalid_client, not 400 or 500.
        ("a 10 KB value", basic_of(format!("{id}:{}", "k".repeat(10 * 1024)).as_bytes())),
        (
            "a 10 KB value after the credentials",
            basic_of(format!("{id}:{key}{}", "k".repeat(10 * 1024)).as_bytes()),
        ),
    ];
    for (what, authorization) in refused {
        let reply = with_header(authorization, &token, &[]).send(&app).await;
        assert_invalid_client(&reply, true, what);
    }
    // None of them consumed the token (grace 0: a consumed token is reuse).
    let reply = with_header(basic_header(id, key), &token, &[]).send(&app).await;
    assert_tokens(&reply, 900, "the token, after the refused headers");
}

async fn grant_types_other_than_refresh_token_are_unsupported(app: TestApp) {
    let tenant = app.create_app(json!({"name": "oauth-grants", "reuse_grace": 0})).await;
    let signed = app.sign(&tenant, "jack").await;
    let token = text(&signed["refresh_token"]);
    let grants = [
        "client_credentials",
        "authorization_code",
        "password",
        "urn:ietf:params:oauth:grant-type:device_code",
        "urn:ietf:params:oauth:grant-type:token-exchange",
        "REFRESH_TOKEN",
    ];
    for grant_type in grants {
        let params = [("grant_type", grant_type), ("refresh_token", token)];
        let reply = call(&app, &tenant, "token", &basic(&tenant), &params).await;
        assert_oauth_error(&reply, 400, "unsupported_grant_type", grant_type);
    }
    // As real clients of those grants send them, without a refresh token.
    let requests: [&[(&str, &str)]; 3] = [
        &[("grant_type", "client_credentials")],
        &[("grant_type", "authorization_code"), ("code", "abc"), ("redirect_uri", "https://x")],
        &[("grant_type", "password"), ("username", "jack"), ("password", "hunter2")],
    ];
    for params in requests {
        let reply = call(&app, &tenant, "token", &post(&tenant), params).await;
        assert_oauth_error(&reply, 400, "unsupported_grant_type", params[0].1);
    }
    assert!(app.verified(&tenant, &signed["auth_token"]).await);
    let reply = refresh(&app, &tenant, &basic(&tenant), &signed["refresh_token"]).await;
    assert_tokens(&reply, 900, "the token was not consumed");
}

async fn scopes_are_refused_and_empty_parameters_are_absent(app: TestApp) {
    let tenant = app.create_app(json!({"name": "oauth-scope", "reuse_grace": 0})).await;
    let signed = app.sign(&tenant, "kim").await;
    for scope in ["openid", "openid profile", "offline_access"] {
        let mut params = grant(&signed["refresh_token"]).to_vec();
        params.push(("scope", scope));
        let reply = call(&app, &tenant, "token", &basic(&tenant), &params).await;
        assert_oauth_error(&reply, 400, "invalid_scope", scope);
    }
    // The refused scopes consumed nothing; an empty scope is no scope.
    let mut params = grant(&signed["refresh_token"]).to_vec();
    params.push(("scope", ""));
    let reply = call(&app, &tenant, "token", &basic(&tenant), &params).await;
    let issued = assert_tokens(&reply, 900, "an empty scope");

    // An empty refresh_token is no refresh_token; an empty grant_type no grant_type.
    for (what, params) in [
        ("refresh_token=", [("grant_type", "refresh_token"), ("refresh_token", "")]),
        ("grant_type=", [("grant_type", ""), ("refresh_token", text(&issued["refresh_token"]))]),
    ] {
        let reply = call(&app, &tenant, "token", &basic(&tenant), &params).await;
        assert_oauth_error(&reply, 400, "invalid_request", what);
    }
    // An empty token_type_hint and empty unknown parameters are absent too.
    let params =
        [("token", text(&issued["access_token"])), ("token_type_hint", ""), ("unknown", "")];
    let reply = call(&app, &tenant, "introspect", &basic(&tenant), &params).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.body["active"], true, "{}", reply.text);
    // An empty token is no token.
    for endpoint in ["revoke", "introspect"] {
        let reply = call(&app, &tenant, endpoint, &basic(&tenant), &[("token", "")]).await;
        assert_oauth_error(&reply, 400, "invalid_request", endpoint);
    }
    let reply = refresh(&app, &tenant, &post(&tenant), &issued["refresh_token"]).await;
    assert_tokens(&reply, 900, "the session is untouched");
}

async fn revocation_ends_the_session_of_a_live_token(app: TestApp) {
    let tenant = app.create_app(json!({"name": "oauth-revoke", "reuse_grace": 0})).await;
    // (what, whether the auth token is revoked rather than the refresh token, the hint)
    let cases = [
        ("a refresh token", false, None),
        ("an auth token", true, None),
        ("a refresh token hinted as one", false, Some("refresh_token")),
        ("an auth token hinted as one", true, Some("access_token")),
        ("a refresh token hinted as an access token", false, Some("access_token")),
        ("an auth token hinted as a refresh token", true, Some("refresh_token")),
        ("an auth token with an unknown hint", true, Some("id_token")),
    ];
    for (round, (what, auth, hint)) in cases.into_iter().enumerate() {
        let client = if round % 2 == 0 { basic(&tenant) } else { post(&tenant) };
        let signed = app.sign(&tenant, "lee").await;
        let reply = refresh(&app, &tenant, &client, &signed["refresh_token"]).await;
        let current = assert_tokens(&reply, 900, what);
        let token = if auth { &current["access_token"] } else { &current["refresh_token"] };
        let mut params = vec![("token", text(token))];
        params.extend(hint.map(|hint| ("token_type_hint", hint)));
        let reply = call(&app, &tenant, "revoke", &client, &params).await;
        assert_revoke_answer(&reply, what);
        assert_session_revoked(
            &app,
            &tenant,
            &current["refresh_token"],
            &current["access_token"],
            what,
        )
        .await;
        assert!(!app.verified(&tenant, &signed["auth_token"]).await, "{what}");
        // Revoking it again changes nothing and answers the same.
        let reply = call(&app, &tenant, "revoke", &client, &params).await;
        assert_revoke_answer(&reply, what);
    }

    // A spent refresh token still has a valid signature within its lifetime: it revokes
    // the session it belonged to.
    let signed = app.sign(&tenant, "lee").await;
    let (status, renewed) = app.renew(&tenant, &signed["refresh_token"]).await;
    assert_eq!(status, 200, "{renewed}");
    let reply = revoke(&app, &tenant, &basic(&tenant), &signed["refresh_token"]).await;
    assert_revoke_answer(&reply, "a spent refresh token");
    assert_session_revoked(
        &app,
        &tenant,
        &renewed["refresh_token"],
        &renewed["auth_token"],
        "revoked with a spent refresh token",
    )
    .await;

    // Revocation ends that session only.
    let mine = app.sign(&tenant, "lee").await;
    let same_sub = app.sign(&tenant, "lee").await;
    let reply = revoke(&app, &tenant, &basic(&tenant), &mine["auth_token"]).await;
    assert_revoke_answer(&reply, "one of two sessions");
    assert!(!app.verified(&tenant, &mine["auth_token"]).await);
    assert!(app.verified(&tenant, &same_sub["auth_token"]).await);
    let (status, body) = app.renew(&tenant, &same_sub["refresh_token"]).await;
    assert_eq!(status, 200, "the subject's other session lives on: {body}");
}

async fn revocation_of_anything_else_changes_nothing(app: TestApp) {
    let tenant = app.create_app(json!({"name": "oauth-norevoke", "reuse_grace": 0})).await;
    let other = app.create_app(json!({"name": "oauth-theirs", "reuse_grace": 0})).await;
    let mine = app.sign(&tenant, "mia").await;
    let theirs = app.sign(&other, "mia").await;
    let cases = [
        ("garbage", json!("garbage"), None),
        ("three empty parts", json!("a.b.c"), Some("access_token")),
        ("a badly signed refresh token", tampered(&mine["refresh_token"]), None),
        ("a badly signed auth token", tampered(&mine["auth_token"]), Some("access_token")),
        ("the other app's refresh token", theirs["refresh_token"].clone(), None),
        (
            "the other app's refresh token, hinted",
            theirs["refresh_token"].clone(),
            Some("refresh_token"),
        ),
        ("the other app's auth token", theirs["auth_token"].clone(), None),
        ("the other app's auth token, hinted", theirs["auth_token"].clone(), Some("access_token")),
    ];
    for (what, token, hint) in &cases {
        for client in [basic(&tenant), post(&tenant)] {
            let mut params = vec![("token", text(token))];
            params.extend(hint.map(|hint| ("token_type_hint", hint)));
            let reply = call(&app, &tenant, "revoke", &client, &params).await;
            assert_revoke_answer(&reply, what);
        }
    }

    // Refused requests revoke nothing either.
    let reply = call(&app, &tenant, "revoke", &basic(&tenant), &[]).await;
    assert_oauth_error(&reply, 400, "invalid_request", "no token");
    let reply =
        call(&app, &tenant, "revoke", &basic(&tenant), &[("token_type_hint", "access_token")])
            .await;
    assert_oauth_error(&reply, 400, "invalid_request", "only a hint");
    let reply = revoke(&app, &tenant, &Client::Anonymous, &mine["refresh_token"]).await;
    assert_invalid_client(&reply, true, "unauthenticated");
    let wrong = Client::Post(tenant.app_id.clone(), wrong_key(&tenant));
    let reply = revoke(&app, &tenant, &wrong, &mine["auth_token"]).await;
    assert_invalid_client(&reply, false, "a wrong secret");
    let reply = revoke(&app, &tenant, &basic(&other), &mine["auth_token"]).await;
    assert_invalid_client(&reply, true, "the other app's credentials");
    let reply = revoke(&app, &other, &basic(&other), &mine["auth_token"]).await;
    assert_revoke_answer(&reply, "my token at the other app");
    let json_body = serde_json::to_vec(&json!({"token": mine["refresh_token"]})).unwrap();
    let request = Post {
        content_type: Some("application/json".into()),
        ..Post::form(&tenant.app_id, "revoke", &basic(&tenant), &[])
    };
    let reply = request.with_body(json_body).send(&app).await;
    assert_oauth_error(&reply, 400, "invalid_request", "a JSON body");

    // Both sessions live on.
    assert!(app.verified(&tenant, &mine["auth_token"]).await);
    assert!(app.verified(&other, &theirs["auth_token"]).await);
    let (status, body) = app.renew(&tenant, &mine["refresh_token"]).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = app.renew(&other, &theirs["refresh_token"]).await;
    assert_eq!(status, 200, "the other app's session still renews: {body}");
}

/// What introspecting a live auth token of `tenant` answers, from its claims.
fn active_access(tenant: &CreatedApp, token: &Value) -> Value {
    let claims = payload(token);
    json!({
        "active": true,
        "token_type": "Bearer",
        "token_use": "access_token",
        "client_id": tenant.app_id,
        "sub": claims["sub"],
        "aud": claims["aud"],
        "iss": claims["iss"],
        "exp": claims["exp"],
        "iat": claims["iat"],
        "nbf": claims["nbf"],
        "jti": claims["jid"],
        "sid": claims["sid"],
    })
}

/// What introspecting the current refresh token of a session of `sub` answers.
fn active_refresh(tenant: &CreatedApp, token: &Value, sub: &str) -> Value {
    let claims = payload(token);
    json!({
        "active": true,
        "token_type": "N_A",
        "token_use": "refresh_token",
        "client_id": tenant.app_id,
        "sub": sub,
        "iss": claims["iss"],
        "exp": claims["exp"],
        "iat": claims["iat"],
        "nbf": claims["nbf"],
        "jti": claims["jid"],
        "sid": claims["sid"],
    })
}

async fn introspection_describes_live_tokens_exactly(app: TestApp) {
    let settings = json!({
        "name": "oauth-introspect", "issuer": "https://id.example", "audience": "web",
        "reuse_grace": 0
    });
    let tenant = app.create_app(settings).await;
    let signed = app.sign(&tenant, "ned").await;
    let access = active_access(&tenant, &signed["auth_token"]);
    let claims = payload(&signed["auth_token"]);
    // The expectation, member by member, with what the gateway knows independently.
    assert_eq!(access["sub"], "ned");
    assert_eq!(access["aud"], "web");
    assert_eq!(access["iss"], "https://id.example");
    assert_eq!(access["sid"], signed["session_id"]);
    assert_eq!(claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(), 900);
    let refresh_claims = payload(&signed["refresh_token"]);
    let current = active_refresh(&tenant, &signed["refresh_token"], "ned");
    assert_eq!(current["sid"], signed["session_id"]);
    assert_ne!(current["jti"], access["jti"]);
    assert_eq!(
        refresh_claims["exp"].as_i64().unwrap() - refresh_claims["iat"].as_i64().unwrap(),
        2_592_000
    );

    // The hint does not change the answer.
    for hint in [None, Some("access_token"), Some("refresh_token"), Some("id_token")] {
        for client in [basic(&tenant), post(&tenant)] {
            let context = format!("hint {hint:?}");
            for (token, expected) in
                [(&signed["auth_token"], &access), (&signed["refresh_token"], &current)]
            {
                let mut params = vec![("token", text(token))];
                params.extend(hint.map(|hint| ("token_type_hint", hint)));
                let reply = call(&app, &tenant, "introspect", &client, &params).await;
                assert_eq!(reply.status, 200, "{context}: {}", reply.text);
                assert_eq!(&reply.body, expected, "{context}");
            }
        }
    }

    // Introspection consumed nothing (grace 0: a consumed token would be reuse). After a
    // rotation the new token is the current one, and the spent one is inactive.
    let reply = refresh(&app, &tenant, &basic(&tenant), &signed["refresh_token"]).await;
    let issued = assert_tokens(&reply, 900, "the introspected token renews");
    let reply = introspect(&app, &tenant, &basic(&tenant), &issued["refresh_token"]).await;
    assert_eq!(reply.body, active_refresh(&tenant, &issued["refresh_token"], "ned"));
    let reply = introspect(&app, &tenant, &basic(&tenant), &issued["access_token"]).await;
    assert_eq!(reply.body, active_access(&tenant, &issued["access_token"]));
    assert_eq!(reply.body["sid"], signed["session_id"]);
    let reply = introspect(&app, &tenant, &basic(&tenant), &signed["refresh_token"]).await;
    assert_inactive(&reply, "the spent refresh token");
    let reply = introspect(&app, &tenant, &basic(&tenant), &signed["auth_token"]).await;
    assert_eq!(reply.body, access, "an earlier auth token of a live session is still live");

    // An audience given at sign, as a list.
    let body = json!({"sub": "ned", "ip": "203.0.113.7", "useragent": "ua", "aud": ["web", "api"]});
    let (status, listed) = app.app_post(&tenant, "sign", &body).await;
    assert_eq!(status, 200, "{listed}");
    let reply = introspect(&app, &tenant, &post(&tenant), &listed["auth_token"]).await;
    assert_eq!(reply.body["aud"], json!(["web", "api"]));
    assert_eq!(reply.body, active_access(&tenant, &listed["auth_token"]));
}

async fn introspection_answers_inactive_for_anything_not_live(app: TestApp) {
    let tenant = app.create_app(json!({"name": "oauth-inactive", "reuse_grace": 0})).await;
    let other = app.create_app(json!({"name": "oauth-elsewhere"})).await;
    let early = app
        .create_app(json!({"name": "oauth-notyet", "token_notbefore": 60, "refresh_notbefore": 60}))
        .await;
    let signed = app.sign(&tenant, "olga").await;
    let (status, renewed) = app.renew(&tenant, &signed["refresh_token"]).await;
    assert_eq!(status, 200, "{renewed}");
    let theirs = app.sign(&other, "olga").await;
    let not_yet = app.sign(&early, "olga").await;
    let cases = [
        ("garbage", &tenant, json!("garbage")),
        ("three empty parts", &tenant, json!("a.b.c")),
        ("a badly signed auth token", &tenant, tampered(&renewed["auth_token"])),
        ("a badly signed refresh token", &tenant, tampered(&renewed["refresh_token"])),
        ("a rotated-away refresh token", &tenant, signed["refresh_token"].clone()),
        ("the other app's auth token", &tenant, theirs["auth_token"].clone()),
        ("the other app's refresh token", &tenant, theirs["refresh_token"].clone()),
        ("a not yet valid auth token", &early, not_yet["auth_token"].clone()),
        ("a not yet valid refresh token", &early, not_yet["refresh_token"].clone()),
    ];
    for (what, at, token) in &cases {
        for client in [basic(at), post(at)] {
            let reply = introspect(&app, at, &client, token).await;
            assert_inactive(&reply, what);
        }
    }
    // Introspecting the spent token was not reuse, and introspecting the other app's tokens
    // did nothing to them.
    let reply = refresh(&app, &tenant, &basic(&tenant), &renewed["refresh_token"]).await;
    let current = assert_tokens(&reply, 900, "the session's current token");
    let (status, body) = app.renew(&other, &theirs["refresh_token"]).await;
    assert_eq!(status, 200, "{body}");

    // A revoked session's tokens.
    let (status, body) =
        app.app_post(&tenant, "revoke", &json!({"session_id": signed["session_id"]})).await;
    assert_eq!((status, body), (200, json!({"revoked": 1})));
    for (what, token) in [
        ("its auth token", &current["access_token"]),
        ("its refresh token", &current["refresh_token"]),
    ] {
        let reply = introspect(&app, &tenant, &basic(&tenant), token).await;
        assert_inactive(&reply, what);
    }

    // Refused requests.
    let reply = call(&app, &tenant, "introspect", &basic(&tenant), &[]).await;
    assert_oauth_error(&reply, 400, "invalid_request", "no token");
    let reply = introspect(&app, &tenant, &Client::Anonymous, &renewed["auth_token"]).await;
    assert_invalid_client(&reply, true, "unauthenticated");
    let reply = introspect(&app, &tenant, &basic(&other), &theirs["auth_token"]).await;
    assert_invalid_client(&reply, true, "the other app's credentials");
}

/// The claims of every auth token the tests sign (no custom claims).
const AUTH_CLAIMS: [&str; 10] =
    ["iss", "sub", "aud", "iat", "nbf", "exp", "jid", "sid", "ip", "useragent"];
const REFRESH_CLAIMS: [&str; 7] = ["iss", "jid", "sid", "iat", "nbf", "exp", "type"];

/// Asserts that `auth` and `refresh` are tokens of the `rfc9068` profile of `tenant`.
fn assert_rfc9068(tenant: &CreatedApp, auth: &Value, refresh_token: &Value, context: &str) {
    let kid = header(auth)["kid"].clone();
    assert_eq!(header(auth), json!({"alg": "ES256", "typ": "at+jwt", "kid": kid}), "{context}");
    let claims = payload(auth);
    let mut expected: HashSet<&str> = AUTH_CLAIMS.into();
    expected.extend(["client_id", "jti"]);
    assert_eq!(members(&claims), expected, "{context}");
    assert_eq!(claims["client_id"], tenant.app_id.as_str(), "{context}");
    assert_eq!(claims["jti"], claims["jid"], "{context}");
    let kid = header(refresh_token)["kid"].clone();
    assert_eq!(
        header(refresh_token),
        json!({"alg": "ES256", "typ": "refresh+jwt", "kid": kid}),
        "{context}"
    );
    assert_eq!(members(&payload(refresh_token)), HashSet::from(REFRESH_CLAIMS), "{context}");
}

/// Asserts that `auth` and `refresh` are tokens of the default `keygate` profile.
fn assert_keygate(auth: &Value, refresh_token: &Value, context: &str) {
    for token in [auth, refresh_token] {
        let kid = header(token)["kid"].clone();
        assert_eq!(header(token), json!({"alg": "ES256", "typ": "JWT", "kid": kid}), "{context}");
    }
    assert_eq!(
        members(&payload(auth)),
        HashSet::from(AUTH_CLAIMS),
        "{context}: no client_id, no jti"
    );
    assert_eq!(members(&payload(refresh_token)), HashSet::from(REFRESH_CLAIMS), "{context}");
}

async fn the_rfc9068_profile_types_its_tokens(app: TestApp) {
    let tenant = app
        .create_app(
            json!({"name": "oauth-9068", "access_token_profile": "rfc9068", "audience": "api"}),
        )
        .await;
    assert_eq!(settings_of(&app, &tenant).await["access_token_profile"], "rfc9068");
    let signed = app.sign(&tenant, "pat").await;
    assert_rfc9068(&tenant, &signed["auth_token"], &signed["refresh_token"], "signed");
    assert_eq!(header(&signed["auth_token"])["kid"], tenant.key_id.as_str());
    assert_eq!(payload(&signed["auth_token"])["aud"], "api");
    assert!(app.verified(&tenant, &signed["auth_token"]).await);

    let (status, renewed) = app.renew(&tenant, &signed["refresh_token"]).await;
    assert_eq!(status, 200, "{renewed}");
    assert_rfc9068(&tenant, &renewed["auth_token"], &renewed["refresh_token"], "renewed");
    assert!(app.verified(&tenant, &renewed["auth_token"]).await);

    let reply = refresh(&app, &tenant, &basic(&tenant), &renewed["refresh_token"]).await;
    let issued = assert_tokens(&reply, 900, "the token endpoint");
    assert_rfc9068(&tenant, &issued["access_token"], &issued["refresh_token"], "oauth/token");
    assert!(app.verified(&tenant, &issued["access_token"]).await);
    let reply = introspect(&app, &tenant, &basic(&tenant), &issued["access_token"]).await;
    assert_eq!(reply.body, active_access(&tenant, &issued["access_token"]));
    let reply = introspect(&app, &tenant, &basic(&tenant), &issued["refresh_token"]).await;
    assert_eq!(reply.body, active_refresh(&tenant, &issued["refresh_token"], "pat"));

    // One kind is not the other.
    assert!(!app.verified(&tenant, &issued["refresh_token"]).await);
    let reply = refresh(&app, &tenant, &basic(&tenant), &issued["access_token"]).await;
    assert_oauth_error(&reply, 400, "invalid_grant", "an at+jwt as a refresh token");
    let (status, body) = app.renew(&tenant, &issued["refresh_token"]).await;
    assert_eq!(status, 200, "{body}");

    // Revocation works on both.
    let reply = revoke(&app, &tenant, &basic(&tenant), &body["auth_token"]).await;
    assert_revoke_answer(&reply, "an at+jwt");
    assert_session_revoked(&app, &tenant, &body["refresh_token"], &body["auth_token"], "at+jwt")
        .await;
}

async fn the_default_profile_keeps_plain_jwts(app: TestApp) {
    let tenant = app.create_app(json!({"name": "oauth-plain"})).await;
    assert_eq!(settings_of(&app, &tenant).await["access_token_profile"], "keygate");
    let explicit =
        app.create_app(json!({"name": "oauth-explicit", "access_token_profile": "keygate"})).await;
    for tenant in [&tenant, &explicit] {
        let signed = app.sign(tenant, "quinn").await;
        assert_keygate(&signed["auth_token"], &signed["refresh_token"], "signed");
        let (status, renewed) = app.renew(tenant, &signed["refresh_token"]).await;
        assert_eq!(status, 200, "{renewed}");
        assert_keygate(&renewed["auth_token"], &renewed["refresh_token"], "renewed");
        let reply = refresh(&app, tenant, &basic(tenant), &renewed["refresh_token"]).await;
        let issued = assert_tokens(&reply, 900, "the token endpoint");
        assert_keygate(&issued["access_token"], &issued["refresh_token"], "oauth/token");
        assert!(app.verified(tenant, &issued["access_token"]).await);
    }
}

async fn switching_the_profile_keeps_live_sessions(app: TestApp) {
    let tenant = app.create_app(json!({"name": "oauth-switch", "reuse_grace": 0})).await;
    let first = app.sign(&tenant, "rae").await;
    let second = app.sign(&tenant, "sam").await;
    assert_keygate(&first["auth_token"], &first["refresh_token"], "before the switch");

    set_profile(&app, &tenant, "rfc9068").await;
    assert_eq!(settings_of(&app, &tenant).await["access_token_profile"], "rfc9068");
    assert!(app.verified(&tenant, &first["auth_token"]).await, "a JWT issued before verifies");
    // Refresh tokens of typ JWT renew, through either endpoint, into the new profile.
    let reply = refresh(&app, &tenant, &basic(&tenant), &first["refresh_token"]).await;
    let issued = assert_tokens(&reply, 900, "a JWT refresh token at the token endpoint");
    assert_rfc9068(&tenant, &issued["access_token"], &issued["refresh_token"], "after the switch");
    assert!(app.verified(&tenant, &issued["access_token"]).await);
    let (status, renewed) = app.renew(&tenant, &second["refresh_token"]).await;
    assert_eq!(status, 200, "a JWT refresh token at /renew: {renewed}");
    assert_rfc9068(&tenant, &renewed["auth_token"], &renewed["refresh_token"], "/renew after");

    // And back: refresh+jwt tokens renew into plain JWTs.
    set_profile(&app, &tenant, "keygate").await;
    assert!(app.verified(&tenant, &issued["access_token"]).await, "an at+jwt issued before");
    let reply = refresh(&app, &tenant, &post(&tenant), &issued["refresh_token"]).await;
    let back = assert_tokens(&reply, 900, "a refresh+jwt at the token endpoint");
    assert_keygate(&back["access_token"], &back["refresh_token"], "switched back");
    let (status, body) = app.renew(&tenant, &renewed["refresh_token"]).await;
    assert_eq!(status, 200, "a refresh+jwt at /renew: {body}");
    assert_keygate(&body["auth_token"], &body["refresh_token"], "/renew switched back");
    // Both sessions are the ones opened at the start.
    assert_eq!(payload(&back["access_token"])["sid"], first["session_id"]);
    assert_eq!(payload(&body["auth_token"])["sid"], second["session_id"]);
}

async fn an_invalid_profile_is_refused_naming_the_field(app: TestApp) {
    let tenant = app.create_app(json!({"name": "oauth-profile"})).await;
    for (n, bad) in [json!("RFC9068"), json!("jwt"), json!(""), json!(9068), json!(["rfc9068"])]
        .into_iter()
        .enumerate()
    {
        let body = json!({"name": format!("oauth-bad-{n}"), "access_token_profile": bad});
        let response = app.root(Method::POST, "/root/apps").json(&body).send().await.unwrap();
        let (status, answer) = parts(response).await;
        assert_error(status, &answer, 400, "invalid_request");
        assert_eq!(answer["errors"][0]["error_field"], "access_token_profile", "create {bad}");
        let (status, answer) =
            patch_app(&app, &tenant, &json!({"access_token_profile": bad})).await;
        assert_error(status, &answer, 400, "invalid_request");
        assert_eq!(answer["errors"][0]["error_field"], "access_token_profile", "patch {bad}");
    }
    assert_eq!(settings_of(&app, &tenant).await["access_token_profile"], "keygate");
    let (_, list) = parts(app.root(Method::GET, "/root/apps").send().await.unwrap()).await;
    assert_eq!(list["apps"].as_array().unwrap().len(), 1, "no app was created: {list}");
}

/// A client whose connections come from `ip` (any 127.0.0.0/8 address reaches the
/// gateway on 127.0.0.1).
fn client_from(ip: &str) -> reqwest::Client {
    reqwest::Client::builder().local_address(ip.parse::<IpAddr>().unwrap()).build().unwrap()
}

/// Asserts the 429 of the OAuth endpoints, with a whole number of seconds to wait.
fn assert_limited(reply: &Reply, context: &str) {
    assert_oauth_error(reply, 429, "rate_limited", context);
    let retry_after = reply.header("retry-after").expect("a 429 carries Retry-After");
    let secs: u64 = retry_after.parse().unwrap_or_else(|_| panic!("Retry-After {retry_after}"));
    assert!((1..=MAX_WAIT).contains(&secs), "{context}: Retry-After {secs}");
}

async fn failed_client_authentication_is_rate_limited(app: TestApp) {
    let tenant = app.create_app(json!({"name": "oauth-limited", "reuse_grace": 0})).await;
    let signed = app.sign(&tenant, "tess").await;
    let here = client_from("127.0.0.1");
    let elsewhere = client_from("127.0.0.2");
    let token_with = |client: &Client| {
        Post::form(&tenant.app_id, "token", client, &grant(&signed["refresh_token"]))
    };
    let wrong = [
        Client::Basic(tenant.app_id.clone(), wrong_key(&tenant)),
        Client::Post(tenant.app_id.clone(), wrong_key(&tenant)),
    ];
    for attempt in 0..BURST {
        let reply = token_with(&wrong[attempt % 2]).send_from(&app, &here).await;
        assert_invalid_client(&reply, attempt % 2 == 0, &format!("failure {attempt} of the burst"));
    }
    // Limited: refused before its credentials are checked, the right ones included, at
    // every endpoint.
    let reply = token_with(&wrong[0]).send_from(&app, &here).await;
    assert_limited(&reply, "one failure too many");
    let argon2_runs = app.tenants.argon2_runs();
    for client in [basic(&tenant), post(&tenant)] {
        let reply = token_with(&client).send_from(&app, &here).await;
        assert_limited(&reply, "the right credentials");
        for endpoint in ["revoke", "introspect"] {
            let params = [("token", text(&signed["refresh_token"]))];
            let request = Post::form(&tenant.app_id, endpoint, &client, &params);
            assert_limited(&request.send_from(&app, &here).await, endpoint);
        }
    }
    assert_eq!(app.tenants.argon2_runs(), argon2_runs, "a refused attempt costs no argon2");
    // One budget per address, shared with the app-key routes.
    let response = here
        .get(format!("{}/app/{}", app.address, tenant.app_id))
        .header("Authorization", &tenant.app_key)
        .send()
        .await
        .unwrap();
    let (status, body) = parts(response).await;
    assert_error(status, &body, 429, "rate_limited");

    // Another address is not affected, and the refused attempts consumed nothing: the
    // revoke was not carried out, and with grace 0 a consumed token would be reuse.
    let reply = token_with(&basic(&tenant)).send_from(&app, &elsewhere).await;
    assert_tokens(&reply, 900, "from another address");

    // Failures on the app-key routes count against the OAuth endpoints too.
    let third = client_from("127.0.0.3");
    for attempt in 0..BURST {
        let response = third
            .get(format!("{}/app/{}", app.address, tenant.app_id))
            .header("Authorization", wrong_key(&tenant))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 403, "failure {attempt} of the burst");
    }
    let reply = token_with(&basic(&tenant)).send_from(&app, &third).await;
    assert_limited(&reply, "after failures on an app-key route");
}

/// The metadata document of `app_id` under `public_url`.
fn metadata(public_url: &str, app_id: &str) -> Value {
    let issuer = format!("{public_url}/app/{app_id}");
    let methods = json!(["client_secret_basic", "client_secret_post"]);
    json!({
        "issuer": issuer,
        "token_endpoint": format!("{issuer}/oauth/token"),
        "revocation_endpoint": format!("{issuer}/oauth/revoke"),
        "introspection_endpoint": format!("{issuer}/oauth/introspect"),
        "jwks_uri": format!("{issuer}/jwks.json"),
        "grant_types_supported": ["refresh_token"],
        "response_types_supported": [],
        "token_endpoint_auth_methods_supported": methods,
        "revocation_endpoint_auth_methods_supported": methods,
        "introspection_endpoint_auth_methods_supported": methods,
    })
}

/// Both addresses of an app's metadata: under the app, and as RFC 8414 §3.1 builds it.
fn metadata_paths(app_id: &str) -> [String; 2] {
    [
        format!("/app/{app_id}/.well-known/oauth-authorization-server"),
        format!("/.well-known/oauth-authorization-server/app/{app_id}"),
    ]
}

/// GETs `path` without credentials; returns the status, the Cache-Control and the body.
async fn get_metadata(app: &TestApp, path: &str) -> (u16, Option<String>, Value) {
    let response = app.request(Method::GET, path).send().await.unwrap();
    let cache_control =
        response.headers().get("cache-control").map(|v| v.to_str().unwrap().to_owned());
    let (status, body) = parts(response).await;
    (status, cache_control, body)
}

/// Asserts that both metadata addresses of `tenant` answer the document under `public_url`.
async fn assert_published(app: &TestApp, tenant: &CreatedApp, public_url: &str) {
    let expected = metadata(public_url, &tenant.app_id);
    for path in metadata_paths(&tenant.app_id) {
        let (status, cache_control, body) = get_metadata(app, &path).await;
        assert_eq!(status, 200, "{path}: {body}");
        assert_eq!(body, expected, "{path}");
        assert_eq!(cache_control.as_deref(), Some("public, max-age=300"), "{path}");
    }
}

async fn metadata_is_published_at_both_addresses(app: TestApp) {
    let tenant = app.create_app(json!({"name": "oauth-meta"})).await;
    let other = app.create_app(json!({"name": "oauth-meta-2"})).await;
    assert_published(&app, &tenant, PUBLIC_URL).await;
    assert_published(&app, &other, PUBLIC_URL).await;
    for id in [ulid::Ulid::new().to_string(), "not-a-ulid".to_owned()] {
        for path in metadata_paths(&id) {
            let (status, _, body) = get_metadata(&app, &path).await;
            assert_error(status, &body, 404, "not_found");
        }
    }

    // Tokens keep the app's issuer; set to the metadata's, new sessions carry it (a
    // changed issuer ends the sessions of the old one, as before).
    let issuer = metadata(PUBLIC_URL, &tenant.app_id)["issuer"].clone();
    let signed = app.sign(&tenant, "uma").await;
    assert_eq!(payload(&signed["auth_token"])["iss"], "oauth-meta");
    let (status, body) = patch_app(&app, &tenant, &json!({"issuer": issuer})).await;
    assert_eq!(status, 200, "{body}");
    let signed = app.sign(&tenant, "uma").await;
    assert_eq!(payload(&signed["auth_token"])["iss"], issuer);
    let reply = refresh(&app, &tenant, &basic(&tenant), &signed["refresh_token"]).await;
    let issued = assert_tokens(&reply, 900, "after the issuer changed");
    assert_eq!(payload(&issued["access_token"])["iss"], issuer);
    assert_eq!(payload(&issued["refresh_token"])["iss"], issuer);
    let reply = introspect(&app, &tenant, &basic(&tenant), &issued["access_token"]).await;
    assert_eq!(reply.body["iss"], issuer);
    assert_published(&app, &tenant, PUBLIC_URL).await;
}

async fn metadata_drops_a_trailing_slash_of_public_url(app: TestApp) {
    let tenant = app.create_app(json!({"name": "oauth-prefixed"})).await;
    assert_published(&app, &tenant, &format!("{PUBLIC_URL}/keygate")).await;
}

async fn metadata_needs_public_url(app: TestApp) {
    let tenant = app.create_app(json!({"name": "oauth-unpublished"})).await;
    for path in metadata_paths(&tenant.app_id) {
        let (status, _, body) = get_metadata(&app, &path).await;
        assert_error(status, &body, 404, "not_found");
        assert!(body["message"].as_str().unwrap().contains("public_url"), "{path}: {body}");
    }
    for path in metadata_paths(&ulid::Ulid::new().to_string()) {
        let (status, _, body) = get_metadata(&app, &path).await;
        assert_error(status, &body, 404, "not_found");
    }
    // The OAuth endpoints themselves need no public_url.
    let signed = app.sign(&tenant, "vic").await;
    let reply = refresh(&app, &tenant, &basic(&tenant), &signed["refresh_token"]).await;
    assert_tokens(&reply, 900, "without public_url");
}

/// `keygate serve` with an invalid `KEYGATE_PUBLIC_URL` exits with an error naming it.
#[test]
fn an_invalid_public_url_stops_the_gateway() {
    let invalid = [
        "auth.example.test",
        "/keygate",
        "ftp://auth.example.test",
        "https://auth.example.test/?tenant=1",
        "https://auth.example.test/#top",
        "https://user:secret@auth.example.test",
    ];
    for bad in invalid {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_keygate"))
            .current_dir(dir.path())
            .args(["serve", "--listen", "127.0.0.1:0"])
            .env_remove("KEYGATE_DATABASE_URL")
            .env("KEYGATE_ROOT_KEY", format!("kgr_test_{}", ulid::Ulid::new()))
            .env("KEYGATE_PUBLIC_URL", bad)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let stderr = std::thread::spawn(move || {
            let mut all = Vec::new();
            let _ = stderr.read_to_end(&mut all);
            String::from_utf8_lossy(&all).into_owned()
        });
        for line in BufReader::new(child.stdout.take().unwrap()).lines() {
            let line = line.unwrap();
            if line.starts_with("keygate listening on ") {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{bad:?}: the gateway started: {line}");
            }
        }
        let status = child.wait().unwrap();
        let log = stderr.join().unwrap();
        assert!(!status.success(), "{bad:?}: {log}");
        assert!(log.to_lowercase().contains("public_url"), "{bad:?} is not named: {log}");
    }
}

/// A pair fresh from `/sign` on an app with `token_notbefore` and `refresh_notbefore` is not
/// valid yet: introspection says inactive, yet revoking either token ends the session (a
/// client that logs out at once is not told "done" while its session lives on).
async fn a_token_not_valid_yet_is_revoked_and_inactive(app: TestApp) {
    let settings = json!({"name": "oauth-nbf", "token_notbefore": 60, "refresh_notbefore": 60});
    let tenant = app.create_app(settings).await;
    for which in ["refresh_token", "auth_token"] {
        let signed = app.sign(&tenant, "nora").await;
        let inactive = introspect(&app, &tenant, &basic(&tenant), &signed[which]).await;
        assert_inactive(&inactive, which);
        let reply = revoke(&app, &tenant, &basic(&tenant), &signed[which]).await;
        assert_revoke_answer(&reply, which);
        let (status, listed) = app.app_post(&tenant, "get-session", &json!({"sub": "nora"})).await;
        assert_eq!(status, 200, "{listed}");
        assert_eq!(listed["sessions"], json!([]), "{which}: the session ended");
    }
}

/// A refresh token over the 8 KiB a token may have is a refused grant, like any token that
/// is not one of ours, and changes nothing.
async fn an_oversized_refresh_token_is_invalid_grant(app: TestApp) {
    let tenant = app.create_app(json!({"name": "oauth-oversized"})).await;
    let signed = app.sign(&tenant, "otto").await;
    let oversized =
        Value::String(format!("{}.{}", text(&signed["refresh_token"]), "A".repeat(9000)));
    let reply = refresh(&app, &tenant, &basic(&tenant), &oversized).await;
    assert_oauth_error(&reply, 400, "invalid_grant", "a 9 KB refresh token");
    let reply = refresh(&app, &tenant, &basic(&tenant), &signed["refresh_token"]).await;
    assert_tokens(&reply, 900, "the real one still renews");
}
