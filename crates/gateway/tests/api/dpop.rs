//! DPoP-bound sessions (RFC 9449) over HTTP, on both databases: `/sign` binds a session to
//! a device key (`dpop_jkt`), and the session then renews only with a proof by that key, at
//! the token endpoint (`DPoP` header, also from public clients) and at `/renew` (a proof
//! forwarded in `dpop`). The proofs here are made with aws-lc-rs keys and hand-built JWS,
//! independently of the gateway's own code; real client libraries drive the same flows in
//! interop/oauth (oauth4webapi, openid-client).

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    EcdsaKeyPair, Ed25519KeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING,
};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use keygate_gateway::Settings;
use reqwest::Method;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::helpers::{assert_error, parts, payload, spawn_app_with, Backend, CreatedApp, TestApp};
use crate::with_settings;

with_settings!(
    a_bound_session_renews_only_with_a_proof_by_its_key: published,
    the_token_endpoint_takes_dpop_proofs_from_public_clients: published,
    a_proof_must_carry_the_gateway_s_nonce_when_the_app_asks: published,
    ed25519_proofs_are_accepted_under_both_names: published,
    binding_follows_the_app_s_dpop_setting: published,
    introspection_and_metadata_describe_dpop: published,
    a_retry_within_the_grace_needs_a_fresh_proof_too: published,
    a_public_client_spends_no_quota_without_a_valid_refresh_token: published,
);

const PUBLIC_URL: &str = "https://auth.example.test";
const AGENT: &str = "dpop-test/1.0";

fn published(settings: &mut Settings) {
    settings.public_url = Some(PUBLIC_URL.into());
}

/// A key pair of a user's device.
enum DeviceKey {
    Es256(EcdsaKeyPair),
    Ed25519(Ed25519KeyPair),
}

impl DeviceKey {
    fn es256() -> Self {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        Self::Es256(
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap(),
        )
    }

    fn ed25519() -> Self {
        Self::Ed25519(Ed25519KeyPair::generate().unwrap())
    }

    /// The public JWK, members in RFC 7638's order.
    fn jwk(&self) -> Value {
        match self {
            Self::Es256(key) => {
                let point = key.public_key().as_ref();
                assert_eq!(point.len(), 65, "an uncompressed P-256 point");
                json!({"crv": "P-256", "kty": "EC",
                    "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
                    "y": URL_SAFE_NO_PAD.encode(&point[33..])})
            }
            Self::Ed25519(key) => json!({"crv": "Ed25519", "kty": "OKP",
                "x": URL_SAFE_NO_PAD.encode(key.public_key().as_ref())}),
        }
    }

    /// The RFC 7638 SHA-256 thumbprint: the required members, sorted, without whitespace.
    fn jkt(&self) -> String {
        let canonical = serde_json::to_string(&self.jwk()).unwrap();
        URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
    }

    fn alg(&self) -> &'static str {
        match self {
            Self::Es256(_) => "ES256",
            Self::Ed25519(_) => "EdDSA",
        }
    }

    /// A proof with this header and these claims, signed.
    fn sign(&self, header: &Value, claims: &Value) -> String {
        let encode = |v: &Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap());
        let message = format!("{}.{}", encode(header), encode(claims));
        let signature = match self {
            Self::Es256(key) => {
                key.sign(&SystemRandom::new(), message.as_bytes()).unwrap().as_ref().to_vec()
            }
            Self::Ed25519(key) => key.sign(message.as_bytes()).as_ref().to_vec(),
        };
        format!("{message}.{}", URL_SAFE_NO_PAD.encode(signature))
    }

    /// A proof for a POST to `htu` now, with a fresh `jti` (and `nonce`).
    fn proof(&self, htu: &str, now: i64, nonce: Option<&str>) -> String {
        let header = json!({"typ": "dpop+jwt", "alg": self.alg(), "jwk": self.jwk()});
        let mut claims = json!({"jti": ulid::Ulid::new().to_string(), "htm": "POST",
            "htu": htu, "iat": now});
        if let Some(nonce) = nonce {
            claims["nonce"] = nonce.into();
        }
        self.sign(&header, &claims)
    }
}

/// `proof` with the signature of `other`.
fn swapped_signature(proof: &str, other: &str) -> String {
    let (signed, _) = proof.rsplit_once('.').unwrap();
    format!("{signed}.{}", other.rsplit_once('.').unwrap().1)
}

fn token_endpoint(app: &CreatedApp) -> String {
    format!("{PUBLIC_URL}/app/{}/oauth/token", app.app_id)
}

async fn create(gateway: &TestApp, name: &str, settings: Value) -> CreatedApp {
    let mut body = settings;
    body["name"] = name.into();
    body["reuse_grace"] = 0.into();
    gateway.create_app(body).await
}

/// Opens a session bound to `key`.
async fn sign_bound(gateway: &TestApp, app: &CreatedApp, key: &DeviceKey) -> Value {
    let body = json!({"sub": "user-1", "ip": "203.0.113.7", "useragent": AGENT,
        "dpop_jkt": key.jkt()});
    let (status, body) = gateway.app_post(app, "sign", &body).await;
    assert_eq!(status, 200, "{body}");
    body
}

/// `/renew` with a forwarded proof (or none).
async fn renew(
    gateway: &TestApp,
    app: &CreatedApp,
    refresh: &Value,
    proof: Option<&str>,
) -> (u16, Value) {
    let mut body = json!({"refresh_token": refresh, "ip": "203.0.113.7", "useragent": AGENT});
    if let Some(proof) = proof {
        body["dpop"] = proof.into();
    }
    gateway.app_post(app, "renew", &body).await
}

/// The token endpoint's refresh grant: as a public client (`client_id` only) or with the
/// app key, with a `DPoP` header or none. Status, body, and the `DPoP-Nonce` answered.
async fn refresh_grant(
    gateway: &TestApp,
    app: &CreatedApp,
    refresh: &Value,
    proof: Option<&str>,
    public: bool,
) -> (u16, Value, Option<String>) {
    let mut form = vec![
        ("grant_type", "refresh_token".to_owned()),
        ("refresh_token", refresh.as_str().unwrap().to_owned()),
        ("client_id", app.app_id.clone()),
    ];
    if !public {
        form.push(("client_secret", app.app_key.clone()));
    }
    let mut request = gateway
        .request(Method::POST, &format!("/app/{}/oauth/token", app.app_id))
        .header("User-Agent", AGENT)
        .form(&form);
    if let Some(proof) = proof {
        request = request.header("DPoP", proof);
    }
    let response = request.send().await.unwrap();
    let nonce = response.headers().get("DPoP-Nonce").map(|v| v.to_str().unwrap().to_owned());
    let (status, body) = parts(response).await;
    (status, body, nonce)
}

fn assert_oauth_error(status: u16, body: &Value, want_status: u16, want: &str) {
    assert_eq!((status, body["error"].as_str()), (want_status, Some(want)), "{body}");
    assert!(body["error_description"].as_str().is_some_and(|d| !d.is_empty()), "{body}");
}

/// The `dpop_rejected` events of the app, newest first.
async fn dpop_events(gateway: &TestApp, app: &CreatedApp) -> Vec<Value> {
    let path = format!("/root/apps/{}/events?kind=dpop_rejected", app.app_id);
    let (status, body) = parts(gateway.root(Method::GET, &path).send().await.unwrap()).await;
    assert_eq!(status, 200, "{body}");
    body["events"].as_array().unwrap().clone()
}

async fn a_bound_session_renews_only_with_a_proof_by_its_key(gateway: TestApp) {
    let app = create(&gateway, "dpop-renew", json!({"dpop": "allowed"})).await;
    let device = DeviceKey::es256();
    let signed = sign_bound(&gateway, &app, &device).await;
    assert_eq!(signed["token_type"], "DPoP", "{signed}");
    let cnf = json!({"jkt": device.jkt()});
    assert_eq!(payload(&signed["auth_token"])["cnf"], cnf);
    assert_eq!(payload(&signed["refresh_token"])["cnf"], cnf);
    let session = signed["session_id"].as_str().unwrap();
    let htu = token_endpoint(&app);
    let now = gateway.clock.now();
    let refresh = &signed["refresh_token"];

    // Refused without a proof, with a proof by another key, for another URL, or made
    // too long ago: each a 401, and the token is not spent.
    let other = DeviceKey::es256();
    let elsewhere = format!("{PUBLIC_URL}/app/{}/renew", app.app_id);
    for (proof, why) in [
        (None, "a DPoP proof is required"),
        (Some(other.proof(&htu, now, None)), "another key"),
        (Some(device.proof(&elsewhere, now, None)), "htu"),
        (Some(device.proof(&htu, now - 120, None)), "iat"),
        (
            Some(swapped_signature(&device.proof(&htu, now, None), &other.proof(&htu, now, None))),
            "signature",
        ),
    ] {
        let (status, body) = renew(&gateway, &app, refresh, proof.as_deref()).await;
        assert_error(status, &body, 401, "invalid_grant");
        let message = body["message"].as_str().unwrap();
        assert!(message.starts_with("invalid DPoP proof: "), "{message}");
        assert!(message.contains(why), "{why}: {message}");
    }
    let events = dpop_events(&gateway, &app).await;
    assert_eq!(events.len(), 5, "{events:?}");
    assert!(events.iter().all(|e| e["detail"]["session_id"] == session), "{events:?}");
    assert_eq!(
        events[4]["detail"]["reason"],
        "the session is bound to a DPoP key: a DPoP proof is required"
    );

    // A chain of renews, each with a fresh proof by the device.
    let mut refresh = refresh.clone();
    for _ in 0..3 {
        let proof = device.proof(&htu, now, None);
        let (status, body) = renew(&gateway, &app, &refresh, Some(&proof)).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["token_type"], "DPoP");
        assert_eq!(payload(&body["auth_token"])["cnf"], cnf);
        assert_eq!(payload(&body["refresh_token"])["cnf"], cnf);
        assert_eq!(body["session_id"], session);

        // The same proof again, with the new token: a replay, refused; nothing spent.
        let (status, replayed) = renew(&gateway, &app, &body["refresh_token"], Some(&proof)).await;
        assert_error(status, &replayed, 401, "invalid_grant");
        assert!(replayed["message"].as_str().unwrap().contains("used before"), "{replayed}");
        refresh = body["refresh_token"].clone();
    }
    // Still live: the refusals revoked nothing.
    let (status, body) =
        renew(&gateway, &app, &refresh, Some(&device.proof(&htu, now, None))).await;
    assert_eq!(status, 200, "{body}");
    assert!(gateway.verified(&app, &body["auth_token"]).await);
}

async fn the_token_endpoint_takes_dpop_proofs_from_public_clients(gateway: TestApp) {
    let settings = json!({"dpop": "required", "oauth_public_clients": true});
    let app = create(&gateway, "dpop-public", settings).await;
    let device = DeviceKey::es256();
    let htu = token_endpoint(&app);
    let now = gateway.clock.now();
    let mut refresh = sign_bound(&gateway, &app, &device).await["refresh_token"].clone();

    // A chain of ten as a public client.
    for n in 0..10 {
        let proof = device.proof(&htu, now, None);
        let (status, body, nonce) =
            refresh_grant(&gateway, &app, &refresh, Some(&proof), true).await;
        assert_eq!(status, 200, "renew {n}: {body}");
        assert_eq!(body["token_type"], "DPoP", "{body}");
        assert_eq!(nonce, None, "no nonce unless the app asks for one");
        assert_eq!(payload(&body["access_token"])["cnf"]["jkt"], device.jkt());
        refresh = body["refresh_token"].clone();
    }

    // Refused with nothing rotated: no proof, another key's, a replay, another htu, a
    // malformed header, two headers.
    let spent = device.proof(&htu, now, None);
    let (status, body, _) = refresh_grant(&gateway, &app, &refresh, Some(&spent), true).await;
    assert_eq!(status, 200, "{body}");
    refresh = body["refresh_token"].clone();
    let elsewhere = format!("{PUBLIC_URL}/app/{}/oauth/revoke", app.app_id);
    for proof in [
        None,
        Some(DeviceKey::es256().proof(&htu, now, None)),
        Some(spent.clone()),
        Some(device.proof(&elsewhere, now, None)),
        Some("not.a.proof".to_owned()),
    ] {
        let (status, body, _) =
            refresh_grant(&gateway, &app, &refresh, proof.as_deref(), true).await;
        assert_oauth_error(status, &body, 400, "invalid_dpop_proof");
    }
    let response = gateway
        .request(Method::POST, &format!("/app/{}/oauth/token", app.app_id))
        .header("DPoP", device.proof(&htu, now, None))
        .header("DPoP", device.proof(&htu, now, None))
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh.as_str().unwrap()),
            ("client_id", &app.app_id),
        ])
        .send()
        .await
        .unwrap();
    let (status, body) = parts(response).await;
    assert_oauth_error(status, &body, 400, "invalid_dpop_proof");
    // The confidential client needs the proof too.
    let (status, body, _) = refresh_grant(&gateway, &app, &refresh, None, false).await;
    assert_oauth_error(status, &body, 400, "invalid_dpop_proof");
    let proof = device.proof(&htu, now, None);
    let (status, body, _) = refresh_grant(&gateway, &app, &refresh, Some(&proof), false).await;
    assert_eq!(status, 200, "the token survived every refusal: {body}");

    // A public client renews bound sessions only, and only on an app that takes them.
    let open =
        create(&gateway, "dpop-open", json!({"dpop": "allowed", "oauth_public_clients": true}))
            .await;
    let unbound = gateway.sign(&open, "user-2").await;
    let proof = device.proof(&token_endpoint(&open), now, None);
    let (status, body, _) =
        refresh_grant(&gateway, &open, &unbound["refresh_token"], Some(&proof), true).await;
    assert_oauth_error(status, &body, 400, "invalid_grant");
    let (status, body) = gateway.renew_as(&open, &unbound["refresh_token"], AGENT).await;
    assert_eq!(status, 200, "the public client's refusal spent nothing: {body}");
    assert_eq!(body["token_type"], "Bearer");

    let closed = create(&gateway, "dpop-closed", json!({"dpop": "allowed"})).await;
    let bound = sign_bound(&gateway, &closed, &device).await;
    let proof = device.proof(&token_endpoint(&closed), now, None);
    let (status, body, _) =
        refresh_grant(&gateway, &closed, &bound["refresh_token"], Some(&proof), true).await;
    assert_oauth_error(status, &body, 401, "invalid_client");
    // Another app's id as a public client of this app's endpoint; no credentials came, so
    // the refusal carries the challenge.
    let response = gateway
        .request(Method::POST, &format!("/app/{}/oauth/token", app.app_id))
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", "x"),
            ("client_id", &closed.app_id),
        ])
        .send()
        .await
        .unwrap();
    let challenge = response.headers().get("WWW-Authenticate").cloned();
    let (status, body) = parts(response).await;
    assert_oauth_error(status, &body, 401, "invalid_client");
    assert_eq!(challenge.unwrap(), r#"Basic realm="keygate""#);
}

async fn a_proof_must_carry_the_gateway_s_nonce_when_the_app_asks(gateway: TestApp) {
    let settings = json!({"dpop": "required", "dpop_nonce": true, "oauth_public_clients": true});
    let app = create(&gateway, "dpop-nonce", settings).await;
    let device = DeviceKey::es256();
    let htu = token_endpoint(&app);
    let now = gateway.clock.now();
    let mut refresh = sign_bound(&gateway, &app, &device).await["refresh_token"].clone();

    // RFC 9449 §8: the first proof has no nonce; the answer gives one.
    let proof = device.proof(&htu, now, None);
    let (status, body, nonce) = refresh_grant(&gateway, &app, &refresh, Some(&proof), true).await;
    assert_oauth_error(status, &body, 400, "use_dpop_nonce");
    let nonce = nonce.expect("a DPoP-Nonce header");
    let proof = device.proof(&htu, now, Some("a nonce of nobody's"));
    let (status, body, _) = refresh_grant(&gateway, &app, &refresh, Some(&proof), true).await;
    assert_oauth_error(status, &body, 400, "use_dpop_nonce");

    let proof = device.proof(&htu, now, Some(&nonce));
    let (status, body, next) = refresh_grant(&gateway, &app, &refresh, Some(&proof), true).await;
    assert_eq!(status, 200, "{body}");
    let next = next.expect("a fresh nonce with every answer");
    refresh = body["refresh_token"].clone();

    // At /renew: the contract's 401, with the nonce in DPoP-Nonce.
    let path = format!("/app/{}/renew", app.app_id);
    let body = json!({"refresh_token": refresh, "ip": "203.0.113.7", "useragent": AGENT,
        "dpop": device.proof(&htu, now, None)});
    let response = gateway
        .request(Method::POST, &path)
        .header("Authorization", &app.app_key)
        .json(&body)
        .send()
        .await
        .unwrap();
    let offered = response.headers().get("DPoP-Nonce").map(|v| v.to_str().unwrap().to_owned());
    let (status, answer) = parts(response).await;
    assert_error(status, &answer, 401, "invalid_grant");
    assert!(answer["message"].as_str().unwrap().starts_with("use_dpop_nonce"), "{answer}");
    assert!(offered.is_some(), "a DPoP-Nonce header");
    let (status, body) =
        renew(&gateway, &app, &refresh, Some(&device.proof(&htu, now, Some(&next)))).await;
    assert_eq!(status, 200, "the nonce refusal spent nothing: {body}");

    // A nonce is good for five minutes, then no more.
    gateway.clock.advance(301);
    let later = gateway.clock.now();
    let proof = device.proof(&htu, later, Some(&next));
    let (status, body, _) =
        refresh_grant(&gateway, &app, &body["refresh_token"], Some(&proof), true).await;
    assert_oauth_error(status, &body, 400, "use_dpop_nonce");
}

async fn ed25519_proofs_are_accepted_under_both_names(gateway: TestApp) {
    let app = create(&gateway, "dpop-ed25519", json!({"dpop": "allowed"})).await;
    let device = DeviceKey::ed25519();
    let htu = token_endpoint(&app);
    let now = gateway.clock.now();
    let mut refresh = sign_bound(&gateway, &app, &device).await["refresh_token"].clone();
    for alg in ["EdDSA", "Ed25519"] {
        let header = json!({"typ": "dpop+jwt", "alg": alg, "jwk": device.jwk()});
        let claims = json!({"jti": ulid::Ulid::new().to_string(), "htm": "POST", "htu": htu,
            "iat": now});
        let proof = device.sign(&header, &claims);
        let (status, body, _) = refresh_grant(&gateway, &app, &refresh, Some(&proof), false).await;
        assert_eq!(status, 200, "{alg}: {body}");
        refresh = body["refresh_token"].clone();
    }
    // An Ed25519 key under ES256, and a key with its private part, are refused.
    let header = json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": device.jwk()});
    let claims = json!({"jti": "x1", "htm": "POST", "htu": htu, "iat": now});
    let (status, body, _) =
        refresh_grant(&gateway, &app, &refresh, Some(&device.sign(&header, &claims)), false).await;
    assert_oauth_error(status, &body, 400, "invalid_dpop_proof");
    let mut jwk = device.jwk();
    jwk["d"] = URL_SAFE_NO_PAD.encode([1u8; 32]).into();
    let header = json!({"typ": "dpop+jwt", "alg": "EdDSA", "jwk": jwk});
    let claims = json!({"jti": "x2", "htm": "POST", "htu": htu, "iat": now});
    let (status, body, _) =
        refresh_grant(&gateway, &app, &refresh, Some(&device.sign(&header, &claims)), false).await;
    assert_oauth_error(status, &body, 400, "invalid_dpop_proof");
    assert!(body["error_description"].as_str().unwrap().contains("private"), "{body}");
}

async fn binding_follows_the_app_s_dpop_setting(gateway: TestApp) {
    let device = DeviceKey::es256();
    let sign = |app: CreatedApp, jkt: Option<String>| {
        let gateway = &gateway;
        async move {
            let mut body = json!({"sub": "u", "ip": "203.0.113.7", "useragent": AGENT});
            if let Some(jkt) = jkt {
                body["dpop_jkt"] = jkt.into();
            }
            gateway.app_post(&app, "sign", &body).await
        }
    };
    let off = create(&gateway, "dpop-off", json!({})).await;
    let (status, body) = sign(off.clone(), Some(device.jkt())).await;
    assert_error(status, &body, 400, "invalid_request");
    assert_eq!(body["errors"][0]["error_field"], "dpop_jkt", "{body}");
    let (status, body) = sign(off, None).await;
    assert_eq!((status, body["token_type"].as_str()), (200, Some("Bearer")), "{body}");
    assert!(payload(&body["auth_token"]).get("cnf").is_none());

    let required = create(&gateway, "dpop-required", json!({"dpop": "required"})).await;
    let (status, body) = sign(required.clone(), None).await;
    assert_error(status, &body, 400, "invalid_request");
    assert_eq!(body["errors"][0]["error_field"], "dpop_jkt", "{body}");
    let (status, body) = sign(required.clone(), Some("not-a-thumbprint".into())).await;
    assert_error(status, &body, 400, "invalid_request");
    let (status, body) = sign(required.clone(), Some(device.jkt())).await;
    assert_eq!(status, 200, "{body}");

    // Turning DPoP off later does not unbind: the session still needs its key's proofs.
    let path = format!("/root/apps/{}", required.app_id);
    let response =
        gateway.root(Method::PATCH, &path).json(&json!({"dpop": "off"})).send().await.unwrap();
    let (status, settings) = parts(response).await;
    assert_eq!((status, settings["dpop"].as_str()), (200, Some("off")), "{settings}");
    let (status, refused) = renew(&gateway, &required, &body["refresh_token"], None).await;
    assert_error(status, &refused, 401, "invalid_grant");

    // Settings are checked and echoed.
    for bad in [
        json!({"dpop": "sometimes"}),
        json!({"dpop_nonce": "yes"}),
        json!({"oauth_public_clients": 1}),
    ] {
        let response = gateway.root(Method::PATCH, &path).json(&bad).send().await.unwrap();
        let (status, body) = parts(response).await;
        assert_error(status, &body, 400, "invalid_request");
        let field = bad.as_object().unwrap().keys().next().unwrap().clone();
        assert_eq!(body["errors"][0]["error_field"], field.as_str(), "{body}");
    }
    let fresh = create(&gateway, "dpop-defaults", json!({})).await;
    let response =
        gateway.root(Method::GET, &format!("/root/apps/{}", fresh.app_id)).send().await.unwrap();
    let (_, settings) = parts(response).await;
    assert_eq!(
        (&settings["dpop"], &settings["dpop_nonce"], &settings["oauth_public_clients"]),
        (&json!("off"), &json!(false), &json!(false)),
        "{settings}"
    );
}

/// The previous token again within `reuse_grace` is a retry, with a fresh proof: the
/// digest-matched swap it first tries fails, and must not have spent the proof that the
/// verified path then spends.
async fn a_retry_within_the_grace_needs_a_fresh_proof_too(gateway: TestApp) {
    let body = json!({"name": "dpop-grace", "dpop": "allowed", "reuse_grace": 30});
    let app = gateway.create_app(body).await;
    let device = DeviceKey::es256();
    let htu = token_endpoint(&app);
    let now = gateway.clock.now();
    let first = sign_bound(&gateway, &app, &device).await["refresh_token"].clone();
    let (status, rotated) =
        renew(&gateway, &app, &first, Some(&device.proof(&htu, now, None))).await;
    assert_eq!(status, 200, "{rotated}");
    let (status, retried) =
        renew(&gateway, &app, &first, Some(&device.proof(&htu, now, None))).await;
    assert_eq!(status, 200, "a retry within the grace: {retried}");
    assert_eq!(
        payload(&retried["refresh_token"])["jid"],
        payload(&rotated["refresh_token"])["jid"]
    );
    assert_eq!(payload(&retried["auth_token"])["cnf"]["jkt"], device.jkt());
    // Without a proof, or with another key's, the retry is refused and revokes nothing.
    let (status, body) = renew(&gateway, &app, &first, None).await;
    assert_error(status, &body, 401, "invalid_grant");
    let other = DeviceKey::es256().proof(&htu, now, None);
    let (status, body) = renew(&gateway, &app, &first, Some(&other)).await;
    assert_error(status, &body, 401, "invalid_grant");
    let (status, body) =
        renew(&gateway, &app, &rotated["refresh_token"], Some(&device.proof(&htu, now, None)))
            .await;
    assert_eq!(status, 200, "the session is live: {body}");
}

/// A public client proves nothing by its `client_id`: requests with a token that is not a
/// valid one of the app are refused before they count against the app's quota, and count
/// against the sender's address instead.
async fn a_public_client_spends_no_quota_without_a_valid_refresh_token(gateway: TestApp) {
    let settings = json!({"dpop": "allowed", "oauth_public_clients": true,
        "requests_per_second": 1, "requests_burst": 2});
    let app = create(&gateway, "dpop-quota", settings).await;
    for _ in 0..5 {
        let (status, body, _) =
            refresh_grant(&gateway, &app, &json!("not.a.token"), None, true).await;
        assert_oauth_error(status, &body, 400, "invalid_grant");
    }
    // The app's own requests still have the whole burst.
    let device = DeviceKey::es256();
    let signed = sign_bound(&gateway, &app, &device).await;
    let proof = device.proof(&token_endpoint(&app), gateway.clock.now(), None);
    let (status, body) = renew(&gateway, &app, &signed["refresh_token"], Some(&proof)).await;
    assert_eq!(status, 200, "the quota is untouched by the refused public requests: {body}");
}

async fn introspection_and_metadata_describe_dpop(gateway: TestApp) {
    let app =
        create(&gateway, "dpop-meta", json!({"dpop": "allowed", "oauth_public_clients": true}))
            .await;
    let device = DeviceKey::es256();
    let signed = sign_bound(&gateway, &app, &device).await;
    let introspect = |token: Value| {
        let gateway = &gateway;
        let app = &app;
        async move {
            let response = gateway
                .request(Method::POST, &format!("/app/{}/oauth/introspect", app.app_id))
                .basic_auth(&app.app_id, Some(&app.app_key))
                .form(&[("token", token.as_str().unwrap())])
                .send()
                .await
                .unwrap();
            parts(response).await.1
        }
    };
    let access = introspect(signed["auth_token"].clone()).await;
    assert_eq!(access["active"], true, "{access}");
    assert_eq!(access["token_type"], "DPoP", "{access}");
    assert_eq!(access["cnf"], json!({"jkt": device.jkt()}), "{access}");
    let refresh = introspect(signed["refresh_token"].clone()).await;
    assert_eq!(
        (&refresh["token_type"], &refresh["cnf"]),
        (&json!("N_A"), &json!({"jkt": device.jkt()}))
    );
    let unbound = gateway.sign(&app, "user-3").await;
    let access = introspect(unbound["auth_token"].clone()).await;
    assert_eq!(access["token_type"], "Bearer", "{access}");
    assert!(access.get("cnf").is_none(), "{access}");

    let metadata = |app: &CreatedApp| {
        let path = format!("/app/{}/.well-known/oauth-authorization-server", app.app_id);
        let request = gateway.request(Method::GET, &path);
        async move { parts(request.send().await.unwrap()).await.1 }
    };
    let document = metadata(&app).await;
    assert_eq!(document["dpop_signing_alg_values_supported"], json!(["ES256", "EdDSA", "Ed25519"]));
    assert_eq!(
        document["token_endpoint_auth_methods_supported"],
        json!(["client_secret_basic", "client_secret_post", "none"])
    );
    let confidential = create(&gateway, "dpop-meta-confidential", json!({"dpop": "allowed"})).await;
    assert_eq!(
        metadata(&confidential).await["token_endpoint_auth_methods_supported"],
        json!(["client_secret_basic", "client_secret_post"])
    );
    let off = create(&gateway, "dpop-meta-off", json!({})).await;
    assert!(metadata(&off).await.get("dpop_signing_alg_values_supported").is_none());
}

/// With two gateways on one Postgres, a proof one accepted is a replay at the other.
#[cfg_attr(
    not(postgres_tests),
    ignore = "Postgres: needs TEST_DATABASE_URL when built (just test-pg)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proof_accepted_by_one_gateway_is_a_replay_at_another() {
    let Some(first) = spawn_app_with(Backend::Postgres, published).await else {
        return;
    };
    let master = std::fs::read_to_string(first.data_dir().join("master.key")).unwrap();
    let (url, root_key) = (first.database_url.clone(), first.root_key.clone());
    let second = spawn_app_with(Backend::Postgres, move |s| {
        published(s);
        s.database_url = Some(url);
        s.master_key = Some(master.trim().into());
        s.root_key = Some(root_key.into());
    })
    .await
    .unwrap();
    let app = create(&first, "dpop-two-gateways", json!({"dpop": "allowed"})).await;
    let device = DeviceKey::es256();
    let htu = token_endpoint(&app);
    let signed = sign_bound(&first, &app, &device).await;
    let proof = device.proof(&htu, first.clock.now(), None);
    let (status, body) = renew(&first, &app, &signed["refresh_token"], Some(&proof)).await;
    assert_eq!(status, 200, "{body}");
    let (status, replayed) = renew(&second, &app, &body["refresh_token"], Some(&proof)).await;
    assert_error(status, &replayed, 401, "invalid_grant");
    assert!(replayed["message"].as_str().unwrap().contains("used before"), "{replayed}");
    let fresh = device.proof(&htu, second.clock.now(), None);
    let (status, body) = renew(&second, &app, &body["refresh_token"], Some(&fresh)).await;
    assert_eq!(status, 200, "the replay spent nothing: {body}");
}
