//! Attacks on the token endpoints, over HTTP, on both backends.
//!
//! Every forged, tampered or misdirected token is refused with the exact error body, and
//! changes nothing: no token is issued, no session consumed, none revoked. The apps have no
//! reuse grace, so a refused token that had been taken for the previous refresh token would
//! have revoked the session. Each case ends by showing that its victim session is as it
//! was: the session listing is identical, its auth token verifies, and its current refresh
//! token renews exactly once.
//!
//! Tokens that must fail only because of their claims or headers are signed with the app's
//! real key, unsealed from the gateway's database with its master key; a control case shows
//! that such a token with nothing wrong is accepted.

use std::sync::Arc;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use keygate_keyring::jsonwebtoken::{self, Algorithm, EncodingKey, Header};
use keygate_keyring::{key_store, KeyStore, MasterKey};
use keygate_store::{Backend, DatabaseUrl, PoolOptions};
use keygate_tenants::AppId;
use p256::ecdsa::signature::Signer as _;
use p256::ecdsa::{Signature, SigningKey};
use p256::elliptic_curve::scalar::IsHigh;
use p256::pkcs8::DecodePrivateKey;
use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::{header, parts, payload, CreatedApp, TestApp};
use crate::on_both_backends;

on_both_backends!(
    the_tools_of_the_attacks_are_sound,
    forged_algorithms_and_signatures_change_nothing,
    tampered_encodings_change_nothing,
    tokens_forged_with_real_ids_change_nothing,
    hostile_headers_change_nothing,
    hostile_claims_change_nothing,
    tokens_of_another_app_change_nothing,
    retired_keys_renew_and_revoked_keys_do_not,
);

/// The order of P-256, big-endian.
const ORDER: [u8; 32] = [
    0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63, 0x25, 0x51,
];

/// The largest token accepted (`keygate_keyring::MAX_TOKEN_LEN`; docs/api.md).
const MAX_TOKEN: usize = 8 * 1024;

fn invalid_grant() -> Value {
    json!({"error": "invalid_grant", "message": "invalid refresh token"})
}

fn invalid_token() -> Value {
    json!({"error": "invalid_grant", "message": "invalid token"})
}

/// The answer to a token over the cap: it is refused as input, before anything parses it.
fn too_large(field: &str) -> Value {
    json!({
        "error": "invalid_request",
        "message": "invalid request",
        "errors": [{"error_field": field, "error_message": "must be at most 8192 bytes"}],
    })
}

// ---------------------------------------------------------------------------------------
// Token surgery.

fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn unb64(text: &str) -> Vec<u8> {
    URL_SAFE_NO_PAD.decode(text).unwrap()
}

fn text(token: &Value) -> &str {
    token.as_str().unwrap()
}

/// The three segments of a compact JWS.
fn segments(token: &str) -> [&str; 3] {
    let mut parts = token.splitn(3, '.');
    [parts.next().unwrap(), parts.next().unwrap(), parts.next().unwrap()]
}

/// `token` with its signature segment replaced.
fn resigned(token: &str, signature: &str) -> String {
    let [h, p, _] = segments(token);
    format!("{h}.{p}.{signature}")
}

fn signature_of(token: &str) -> Signature {
    Signature::from_slice(&unb64(segments(token)[2])).unwrap()
}

/// A compact JWS of the given header and payload texts, with a low-S ES256 signature.
fn es256(key: &SigningKey, header: &str, payload: &str) -> String {
    let message = format!("{}.{}", b64(header), b64(payload));
    let signature: Signature = key.sign(message.as_bytes());
    let signature = signature.normalize_s().unwrap_or(signature);
    format!("{message}.{}", b64(signature.to_bytes()))
}

/// The header keygate puts on its tokens.
fn header_text(kid: &str) -> String {
    format!(r#"{{"alg":"ES256","typ":"JWT","kid":"{kid}"}}"#)
}

/// A key nobody but the attacker holds.
fn attacker() -> SigningKey {
    SigningKey::from_bytes(&[0x5a; 32].into()).unwrap()
}

/// `value` without the member `key`.
fn without(value: &Value, key: &str) -> Value {
    let mut map = value.as_object().unwrap().clone();
    map.remove(key);
    Value::Object(map)
}

/// `value` with the member `key` set.
fn with(value: &Value, key: &str, member: Value) -> Value {
    let mut map = value.as_object().unwrap().clone();
    map.insert(key.to_owned(), member);
    Value::Object(map)
}

/// The JSON text of `value` with `key` written twice: `first` at the start, `second` at the
/// end.
fn duplicated(value: &Value, key: &str, first: &Value, second: &Value) -> String {
    let rest = serde_json::to_string(&without(value, key)).unwrap();
    let rest = &rest[1..rest.len() - 1];
    format!(r#"{{"{key}":{first},{rest},"{key}":{second}}}"#)
}

/// A token of exactly `len` bytes, signed by `key`, whose header and payload carry `header`
/// and `claims` padded with JSON whitespace.
fn sized(key: &SigningKey, header: &str, claims: &Value, len: usize) -> String {
    let claims = serde_json::to_string(claims).unwrap();
    for header_pad in 0..3 {
        let header = format!("{header}{}", " ".repeat(header_pad));
        let fixed = b64(&header).len() + 2 + 86;
        let payload_b64 = len.checked_sub(fixed).unwrap();
        // n bytes take ceil(4n/3) characters; find the n that takes exactly payload_b64.
        let bytes = payload_b64 * 3 / 4;
        if b64(vec![0u8; bytes]).len() == payload_b64 && bytes >= claims.len() {
            let payload = format!("{claims}{}", " ".repeat(bytes - claims.len()));
            let token = es256(key, &header, &payload);
            assert_eq!(token.len(), len);
            return token;
        }
    }
    unreachable!("some header padding fits every length")
}

/// Replaces the last character of a base64url segment by one with an unused bit set, so it
/// decodes to the same bytes in a lenient decoder. `None` when the segment has no unused
/// bits (its length is a multiple of 4).
fn trailing_bits(segment: &str) -> Option<String> {
    if segment.len() % 4 == 0 {
        return None;
    }
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let last = *segment.as_bytes().last().unwrap();
    let index = alphabet.iter().position(|c| *c == last).unwrap();
    assert_eq!(index & 1, 0, "a canonical last character has its low bit clear");
    let mut noncanonical = segment[..segment.len() - 1].to_owned();
    noncanonical.push(alphabet[index | 1] as char);
    Some(noncanonical)
}

fn standard_alphabet(segment: &str) -> String {
    segment.replace('-', "+").replace('_', "/")
}

// ---------------------------------------------------------------------------------------
// The app's real keys, as the gateway holds them.

struct Vault {
    store: Arc<KeyStore>,
    master: MasterKey,
    _db: Backend,
}

impl Vault {
    async fn open(app: &TestApp) -> Self {
        let options =
            PoolOptions { sqlite_readers: 1, postgres_connections: 1, ..Default::default() };
        let url = DatabaseUrl::from(app.database_url.as_str());
        let db = Backend::connect(&url, &options).await.unwrap();
        let encoded = std::fs::read_to_string(app.data_dir().join("master.key")).unwrap();
        let master = MasterKey::from_base64(&encoded).unwrap();
        Self { store: key_store(&db), master, _db: db }
    }

    /// The private half of the app's key `kid`, whatever its state.
    async fn key(&self, tenant: &CreatedApp, kid: &str) -> SigningKey {
        let app_id: AppId = tenant.app_id.parse().unwrap();
        let keys = self.store.list_keys(app_id).await.unwrap();
        let record = keys
            .iter()
            .find(|k| k.key_id.to_string() == kid)
            .unwrap_or_else(|| panic!("the app has no key {kid}"));
        let pkcs8 = self.master.open(record.key_id, &record.sealed_private).unwrap();
        SigningKey::from(p256::SecretKey::from_pkcs8_der(&pkcs8).unwrap())
    }
}

// ---------------------------------------------------------------------------------------
// Victims, and what the attacks must not change.

/// A live session whose refresh token has rotated once.
struct Victim {
    sub: String,
    /// The first refresh token: now the session's previous one.
    previous: Value,
    /// The last token response: the session's current tokens.
    current: Value,
    /// The session listing after the rotation.
    listing: Value,
}

impl Victim {
    async fn new(app: &TestApp, tenant: &CreatedApp, sub: &str) -> Self {
        let signed = app.sign(tenant, sub).await;
        let (status, current) = app.renew(tenant, &signed["refresh_token"]).await;
        assert_eq!(status, 200, "{current}");
        let listing = listing(app, tenant, sub).await;
        assert_eq!(listing["sessions"].as_array().unwrap().len(), 1, "{listing}");
        Self { sub: sub.to_owned(), previous: signed["refresh_token"].clone(), current, listing }
    }

    fn refresh(&self) -> &str {
        text(&self.current["refresh_token"])
    }

    fn auth(&self) -> &str {
        text(&self.current["auth_token"])
    }

    fn previous(&self) -> &str {
        text(&self.previous)
    }

    /// The claims of the current refresh token.
    fn claims(&self) -> Value {
        payload(&self.current["refresh_token"])
    }

    fn kid(&self) -> String {
        header(&self.current["refresh_token"])["kid"].as_str().unwrap().to_owned()
    }

    /// The session is as it was: the same listing (count, times, ip, user agent, key), its
    /// auth token verifies, and its current refresh token renews exactly once.
    async fn assert_untouched(&self, app: &TestApp, tenant: &CreatedApp) {
        self.assert_unchanged(app, tenant).await;
        assert!(app.verified(tenant, &self.current["auth_token"]).await, "auth token refused");
        let (status, renewed) = app.renew(tenant, &self.current["refresh_token"]).await;
        assert_eq!(status, 200, "the current refresh token no longer renews: {renewed}");
        assert_eq!(renewed["session_id"], self.current["session_id"]);
        // Exactly once: without a grace, a second use is reuse.
        let (status, body) = app.renew(tenant, &self.current["refresh_token"]).await;
        assert_eq!((status, body), (401, invalid_grant()));
    }

    /// The session listing is identical to the one taken after the rotation.
    async fn assert_unchanged(&self, app: &TestApp, tenant: &CreatedApp) {
        assert_eq!(listing(app, tenant, &self.sub).await, self.listing, "the session changed");
    }
}

/// The subject's live sessions, read through both routes (which must agree).
async fn listing(app: &TestApp, tenant: &CreatedApp, sub: &str) -> Value {
    let response = app
        .request(Method::GET, &format!("/app/{}/sessions?sub={sub}", tenant.app_id))
        .header("Authorization", &tenant.app_key)
        .send()
        .await
        .unwrap();
    let (status, by_query) = parts(response).await;
    assert_eq!(status, 200, "{by_query}");
    let (status, by_post) = app.app_post(tenant, "get-session", &json!({"sub": sub})).await;
    assert_eq!(status, 200, "{by_post}");
    assert_eq!(by_query, by_post);
    by_query
}

async fn new_app(app: &TestApp, name: &str) -> CreatedApp {
    app.create_app(json!({"name": name, "reuse_grace": 0})).await
}

/// `/renew` refuses `token` as an invalid grant.
async fn refused(app: &TestApp, tenant: &CreatedApp, case: &str, token: &str) {
    let (status, body) = app.renew(tenant, &json!(token)).await;
    assert_eq!((status, &body), (401, &invalid_grant()), "{case}: {token}");
}

/// `/renew` refuses `token` as input over the size cap.
async fn refused_as_too_large(app: &TestApp, tenant: &CreatedApp, case: &str, token: &str) {
    assert!(token.len() > MAX_TOKEN, "{case}");
    let (status, body) = app.renew(tenant, &json!(token)).await;
    assert_eq!((status, &body), (400, &too_large("refresh_token")), "{case}");
}

/// `/logout` refuses `token`, so it revokes nothing.
async fn logout_refused(app: &TestApp, tenant: &CreatedApp, case: &str, token: &str) {
    let (status, body) = app.app_post(tenant, "logout", &json!({"token": token})).await;
    assert_eq!((status, &body), (401, &invalid_token()), "{case}: {token}");
}

/// `/verify` answers 200 with `verified: false` and `reason`.
async fn unverified(app: &TestApp, tenant: &CreatedApp, case: &str, token: &str, reason: &str) {
    let (status, body) = app.app_post(tenant, "verify", &json!({"token": token})).await;
    assert_eq!(
        (status, &body),
        (200, &json!({"verified": false, "reason": reason})),
        "{case}: {token}"
    );
}

/// The base64 PEM of one of the app's published keys, as `/pub-keys` shows it.
async fn published_key(app: &TestApp, tenant: &CreatedApp, status: &str) -> Value {
    let response = app
        .request(Method::GET, &format!("/app/{}/pub-keys", tenant.app_id))
        .header("Authorization", &tenant.app_key)
        .send()
        .await
        .unwrap();
    let (code, keys) = parts(response).await;
    assert_eq!(code, 200, "{keys}");
    keys["keys"].as_array().unwrap().iter().find(|k| k["status"] == status).unwrap().clone()
}

// ---------------------------------------------------------------------------------------
// The cases.

/// The real-key signer makes tokens the gateway accepts, up to exactly the size cap, so
/// the cases below fail only for what they change. And every signature keygate issues is
/// low-S: with a random S, 40 in a row are low once in 2^40.
async fn the_tools_of_the_attacks_are_sound(app: TestApp) {
    let tenant = new_app(&app, "control").await;
    let vault = Vault::open(&app).await;
    let real = vault.key(&tenant, &tenant.key_id).await;

    let victim = Victim::new(&app, &tenant, "control").await;
    let [h, p, _] = segments(victim.refresh());
    let copy =
        es256(&real, &String::from_utf8(unb64(h)).unwrap(), &String::from_utf8(unb64(p)).unwrap());
    assert_ne!(copy, victim.refresh());
    let (status, renewed) = app.renew(&tenant, &json!(copy)).await;
    assert_eq!(status, 200, "{renewed}");

    let at_cap =
        sized(&real, &header_text(&tenant.key_id), &payload(&renewed["refresh_token"]), MAX_TOKEN);
    let (status, renewed) = app.renew(&tenant, &json!(at_cap)).await;
    assert_eq!(status, 200, "a token of exactly {MAX_TOKEN} bytes: {renewed}");
    let auth_at_cap =
        sized(&real, &header_text(&tenant.key_id), &payload(&renewed["auth_token"]), MAX_TOKEN);
    assert!(app.verified(&tenant, &json!(auth_at_cap)).await);

    let mut tokens = Vec::new();
    for i in 0..20 {
        let signed = app.sign(&tenant, &format!("low-s-{i}")).await;
        tokens.push(signed["auth_token"].clone());
        tokens.push(signed["refresh_token"].clone());
    }
    for token in &tokens {
        assert!(!bool::from(signature_of(text(token)).s().is_high()), "high S: {token}");
    }
}

/// The forgeries of [`forged_algorithms_and_signatures_change_nothing`], made from `token`:
/// a name, the token, and the `/verify` reason when it is an auth token.
fn forgeries(
    token: &str,
    real: &SigningKey,
    public_key: &str,
) -> Vec<(String, String, &'static str)> {
    const HEADER: &str = "unacceptable token header";
    const SIGNATURE: &str = "invalid signature";
    let [_, p, s] = segments(token);
    let kid = header(&json!(token))["kid"].as_str().unwrap().to_owned();
    let claims = payload(&json!(token));
    let payload_text = String::from_utf8(unb64(p)).unwrap();
    let mut out = Vec::new();

    for alg in ["none", "None", "NONE"] {
        let none = b64(format!(r#"{{"alg":"{alg}","typ":"JWT","kid":"{kid}"}}"#));
        out.push((format!("alg {alg}, no signature"), format!("{none}.{p}."), HEADER));
        out.push((format!("alg {alg}, the real signature"), format!("{none}.{p}.{s}"), HEADER));
    }
    // The public key as an HMAC secret: as /pub-keys shows it (base64 of the PEM), and the
    // PEM itself.
    let pem = String::from_utf8(STANDARD.decode(public_key).unwrap()).unwrap();
    for (what, secret) in [("base64 PEM", public_key), ("PEM", pem.as_str())] {
        for alg in [Algorithm::HS256, Algorithm::HS512] {
            let header = Header { kid: Some(kid.clone()), ..Header::new(alg) };
            let forged = jsonwebtoken::encode(
                &header,
                &claims,
                &EncodingKey::from_secret(secret.as_bytes()),
            )
            .unwrap();
            out.push((format!("{alg:?} keyed with the {what}"), forged, HEADER));
        }
    }
    // Another algorithm named, over a real ES256 signature: only the name is wrong.
    for alg in ["ES384", "ES512", "RS256", "PS256", "EdDSA", "es256", "ES256K"] {
        let header = format!(r#"{{"alg":"{alg}","typ":"JWT","kid":"{kid}"}}"#);
        out.push((format!("alg {alg}"), es256(real, &header, &payload_text), HEADER));
    }

    let raw = unb64(s);
    let signature = Signature::from_slice(&raw).unwrap();
    let mut bad = |name: &str, bytes: Vec<u8>| {
        out.push((name.to_owned(), resigned(token, &b64(bytes)), SIGNATURE))
    };
    bad("r = s = 0", vec![0; 64]);
    bad("r = 0", [&[0; 32][..], &raw[32..]].concat());
    bad("s = 0", [&raw[..32], &[0; 32][..]].concat());
    bad("r = n", [&ORDER[..], &raw[32..]].concat());
    bad("s = n", [&raw[..32], &ORDER[..]].concat());
    bad("truncated to 63 bytes", raw[..63].to_vec());
    bad("truncated to 32 bytes", raw[..32].to_vec());
    bad("truncated to 1 byte", raw[..1].to_vec());
    bad("no signature", Vec::new());
    bad("a 65th byte", [&raw[..], &[0]].concat());
    bad("the signature twice", [&raw[..], &raw[..]].concat());
    bad("ASN.1 DER", signature.to_der().as_bytes().to_vec());
    let (r, s_scalar) = signature.split_scalars();
    let twin = Signature::from_scalars(r, -*s_scalar).unwrap();
    assert!(bool::from(twin.s().is_high()), "keygate issued a high S");
    bad("the high-S twin", twin.to_bytes().to_vec());
    out.push(("85 characters".into(), resigned(token, &s[..85]), SIGNATURE));
    out
}

async fn forged_algorithms_and_signatures_change_nothing(app: TestApp) {
    let tenant = new_app(&app, "signatures").await;
    let victim = Victim::new(&app, &tenant, "signature-victim").await;
    let vault = Vault::open(&app).await;
    let real = vault.key(&tenant, &victim.kid()).await;
    let public_key = published_key(&app, &tenant, "active").await;
    assert_eq!(public_key["key_id"], victim.kid());
    let public_key = public_key["public_key"].as_str().unwrap();

    for (which, token) in
        [("current", victim.refresh()), ("previous", victim.previous()), ("auth", victim.auth())]
    {
        let forged = forgeries(token, &real, public_key);
        assert_eq!(forged.len(), 31);
        for (case, forged, reason) in &forged {
            let case = format!("{which} refresh token, {case}");
            refused(&app, &tenant, &case, forged).await;
            logout_refused(&app, &tenant, &case, forged).await;
            if which == "auth" {
                unverified(&app, &tenant, &case, forged, reason).await;
            }
        }
    }
    // Of a token and its high-S twin, the twin was refused and the token itself is good.
    victim.assert_untouched(&app, &tenant).await;
}

async fn tampered_encodings_change_nothing(app: TestApp) {
    let tenant = new_app(&app, "encodings").await;
    let victim = Victim::new(&app, &tenant, "encoding-victim").await;
    let vault = Vault::open(&app).await;
    let real = vault.key(&tenant, &victim.kid()).await;

    for (which, token) in [("current", victim.refresh()), ("previous", victim.previous())] {
        let [h, p, s] = segments(token);
        let mut cases: Vec<(String, String)> = Vec::new();

        // One bit: the last digit of exp in the payload, the typ in the header, a bit of r.
        let mut bytes = unb64(p);
        let at = String::from_utf8(bytes.clone()).unwrap().find(r#""exp":"#).unwrap() + 6;
        let last_digit = at + bytes[at..].iter().take_while(|b| b.is_ascii_digit()).count() - 1;
        bytes[last_digit] ^= 1;
        assert!(serde_json::from_slice::<Value>(&bytes).is_ok(), "still JSON, another exp");
        cases.push(("one bit of exp flipped".into(), format!("{h}.{}.{s}", b64(&bytes))));
        let mut bytes = unb64(h);
        let at = String::from_utf8(bytes.clone()).unwrap().find("JWT").unwrap() + 2;
        bytes[at] ^= 1;
        cases.push(("one bit of the header flipped".into(), format!("{}.{p}.{s}", b64(&bytes))));
        let mut bytes = unb64(s);
        bytes[0] ^= 0x40;
        cases.push(("one bit of r flipped".into(), resigned(token, &b64(&bytes))));
        let mut bytes = unb64(s);
        bytes[63] ^= 1;
        cases.push(("one bit of s flipped".into(), resigned(token, &b64(&bytes))));

        // Padding, unused bits set, and the standard alphabet, on each segment.
        for (i, name) in ["header", "payload", "signature"].into_iter().enumerate() {
            let with_segment = |segment: &str| {
                let mut parts = [h, p, s].map(str::to_owned);
                parts[i] = segment.to_owned();
                parts.join(".")
            };
            let segment = [h, p, s][i];
            cases.push((format!("{name} padded with ="), with_segment(&format!("{segment}="))));
            cases.push((format!("{name} padded with =="), with_segment(&format!("{segment}=="))));
            if let Some(noncanonical) = trailing_bits(segment) {
                cases.push((format!("{name} with trailing bits set"), with_segment(&noncanonical)));
            }
            if segment.contains(['-', '_']) {
                cases.push((
                    format!("{name} in the standard alphabet"),
                    with_segment(&standard_alphabet(segment)),
                ));
            }
        }
        // A real-key signature that has a - or _, so the standard alphabet always has a case.
        let header_text = String::from_utf8(unb64(h)).unwrap();
        let payload_text = String::from_utf8(unb64(p)).unwrap();
        let with_marks = (0..64)
            .map(|pad| es256(&real, &header_text, &format!("{payload_text}{}", " ".repeat(pad))))
            .find(|t| segments(t)[2].contains(['-', '_']))
            .unwrap();
        let [mh, mp, ms] = segments(&with_marks);
        cases.push((
            "standard alphabet in a real signature".into(),
            format!("{mh}.{mp}.{}", standard_alphabet(ms)),
        ));
        cases.push(("padding on a real signature".into(), format!("{with_marks}==")));
        cases.push((
            "trailing bits in a real signature".into(),
            format!("{mh}.{mp}.{}", trailing_bits(ms).unwrap()),
        ));

        // Segments: too few, too many, empty, and surrounding bytes.
        cases.push(("1 segment".into(), h.to_owned()));
        cases.push(("2 segments".into(), format!("{h}.{p}")));
        cases.push(("2 segments, signature kept".into(), format!("{h}.{p}{s}")));
        cases.push(("4 segments".into(), format!("{token}.{s}")));
        cases.push(("4 segments, the last empty".into(), format!("{token}.")));
        cases.push(("5 segments".into(), format!("{h}.{p}.{h}.{p}.{s}")));
        cases.push(("an empty header".into(), format!(".{p}.{s}")));
        cases.push(("an empty payload".into(), format!("{h}..{s}")));
        cases.push(("dots only".into(), "..".into()));
        cases.push(("a leading space".into(), format!(" {token}")));
        cases.push(("a trailing newline".into(), format!("{token}\n")));
        cases.push(("Bearer prefix".into(), format!("Bearer {token}")));
        cases.push(("the token twice".into(), format!("{token}{token}")));

        for (case, forged) in &cases {
            refused(&app, &tenant, &format!("{which}: {case}"), forged).await;
        }
        // Over the cap: refused as input, for a token otherwise good.
        let over = sized(&real, &header_text, &payload(&json!(token)), MAX_TOKEN + 1);
        refused_as_too_large(&app, &tenant, &format!("{which}: 1 byte over the cap"), &over).await;
        let (status, body) = app.app_post(&tenant, "logout", &json!({"token": over})).await;
        assert_eq!((status, body), (400, too_large("token")));
    }
    victim.assert_untouched(&app, &tenant).await;
}

/// Signed by an attacker's key under the app's real kid (the active one, and the published
/// next one), carrying the session's real ids: the current jid, and the previous one, which
/// would be reuse and revoke the session if the token were believed.
async fn tokens_forged_with_real_ids_change_nothing(app: TestApp) {
    let tenant = new_app(&app, "forgery").await;
    let victim = Victim::new(&app, &tenant, "forgery-victim").await;
    let mallory = attacker();
    let next_kid =
        published_key(&app, &tenant, "next").await["key_id"].as_str().unwrap().to_owned();
    let previous = payload(&json!(victim.previous()));
    assert_eq!(previous["sid"], victim.claims()["sid"]);
    assert_ne!(previous["jid"], victim.claims()["jid"]);
    let fresh = with(&victim.claims(), "jid", json!(ulid::Ulid::new().to_string()));

    for kid in [victim.kid(), next_kid] {
        let header = header_text(&kid);
        for (what, claims) in [
            ("current jid", victim.claims()),
            ("previous jid", previous.clone()),
            ("new jid", fresh.clone()),
        ] {
            let forged = es256(&mallory, &header, &claims.to_string());
            let case = format!("attacker key, kid {kid}, {what}");
            refused(&app, &tenant, &case, &forged).await;
            logout_refused(&app, &tenant, &case, &forged).await;
            victim.assert_unchanged(&app, &tenant).await;
        }
        let forged_auth =
            es256(&mallory, &header, &payload(&victim.current["auth_token"]).to_string());
        unverified(&app, &tenant, "forged auth token", &forged_auth, "invalid signature").await;
        logout_refused(&app, &tenant, "forged auth token", &forged_auth).await;
        refused(&app, &tenant, "forged auth token", &forged_auth).await;
    }
    victim.assert_untouched(&app, &tenant).await;
}

/// Headers that name no key of the app, or try to bring their own, over the real claims and
/// a real signature.
async fn hostile_headers_change_nothing(app: TestApp) {
    let tenant = new_app(&app, "headers").await;
    let other = new_app(&app, "headers-other").await;
    let victim = Victim::new(&app, &tenant, "header-victim").await;
    let vault = Vault::open(&app).await;
    let real = vault.key(&tenant, &victim.kid()).await;
    let mallory = attacker();
    let kid = victim.kid();
    let claims = victim.claims().to_string();
    let point = mallory.verifying_key().to_encoded_point(false);
    let mallory_jwk = json!({
        "kty": "EC", "crv": "P-256", "x": b64(point.x().unwrap()), "y": b64(point.y().unwrap()),
    });

    let with_kid = |kid: &Value| json!({"alg": "ES256", "typ": "JWT", "kid": kid}).to_string();
    let mut cases: Vec<(String, String)> = vec![
        ("kid unknown".into(), with_kid(&json!(ulid::Ulid::new().to_string()))),
        ("kid of SQL".into(), with_kid(&json!("' OR 1=1 --"))),
        ("kid of SQL, quoted".into(), with_kid(&json!(format!("{kid}' OR '1'='1")))),
        ("kid of a path".into(), with_kid(&json!("../../etc/passwd"))),
        ("kid of a path to the key".into(), with_kid(&json!(format!("../{kid}")))),
        ("kid of 5000 bytes".into(), with_kid(&json!("k".repeat(5000)))),
        ("kid empty".into(), with_kid(&json!(""))),
        ("kid with NUL".into(), with_kid(&json!(format!("{kid}\u{0}")))),
        ("kid a number".into(), with_kid(&json!(42))),
        ("kid null".into(), with_kid(&Value::Null)),
        ("kid an array".into(), with_kid(&json!([kid]))),
        ("kid missing".into(), r#"{"alg":"ES256","typ":"JWT"}"#.into()),
        ("kid of another app".into(), with_kid(&json!(other.key_id))),
        (
            "kid twice, another app's last".into(),
            format!(r#"{{"alg":"ES256","kid":"{kid}","kid":"{}"}}"#, other.key_id),
        ),
        (
            "kid twice, the real one last".into(),
            format!(r#"{{"alg":"ES256","kid":"{}","kid":"{kid}"}}"#, other.key_id),
        ),
        ("alg twice, none last".into(), format!(r#"{{"alg":"ES256","alg":"none","kid":"{kid}"}}"#)),
        (
            "alg twice, ES256 last".into(),
            format!(r#"{{"alg":"none","alg":"ES256","kid":"{kid}"}}"#),
        ),
        ("alg missing".into(), format!(r#"{{"typ":"JWT","kid":"{kid}"}}"#)),
        ("alg null".into(), format!(r#"{{"alg":null,"kid":"{kid}"}}"#)),
        ("alg an array".into(), format!(r#"{{"alg":["ES256"],"kid":"{kid}"}}"#)),
        ("header an array".into(), format!(r#"["ES256","{kid}"]"#)),
        ("header a string".into(), r#""ES256""#.into()),
        ("header not JSON".into(), format!(r#"{{"alg":"ES256","kid":"{kid}""#)),
        ("header empty".into(), String::new()),
    ];
    for (name, value) in [
        ("crit", json!(["exp"])),
        ("crit", json!([])),
        ("jku", json!("https://attacker.example/jwks.json")),
        ("jwk", mallory_jwk.clone()),
        ("x5u", json!("https://attacker.example/cert.pem")),
        ("x5c", json!(["MIIBszCCAVmgAwIBAgIUWk"])),
    ] {
        let header = json!({"alg": "ES256", "typ": "JWT", "kid": kid, name: value});
        cases.push((format!("{name}: {value}"), header.to_string()));
    }
    let mut signed: Vec<(String, String)> =
        cases.iter().map(|(case, header)| (case.clone(), es256(&real, header, &claims))).collect();
    // The attacker's own key, announced in jwk, with no kid or the real one.
    for header in [
        json!({"alg": "ES256", "jwk": mallory_jwk}),
        json!({"alg": "ES256", "kid": kid, "jwk": mallory_jwk}),
    ] {
        signed.push((
            format!("attacker key in {header}"),
            es256(&mallory, &header.to_string(), &claims),
        ));
    }

    for (case, token) in &signed {
        refused(&app, &tenant, case, token).await;
        logout_refused(&app, &tenant, case, token).await;
    }
    let header = with_kid(&json!("k".repeat(10 * 1024)));
    let huge = es256(&real, &header, &claims);
    refused_as_too_large(&app, &tenant, "kid of 10 KiB", &huge).await;

    // The same headers on the real auth token's claims, at /verify.
    let auth_claims = payload(&victim.current["auth_token"]).to_string();
    for (case, reason) in [
        ("kid unknown", "unknown signing key"),
        ("kid of SQL", "unknown signing key"),
        ("kid of a path", "unknown signing key"),
        ("kid of another app", "unknown signing key"),
        ("alg twice, none last", "unacceptable token header"),
        ("jku: \"https://attacker.example/jwks.json\"", "unacceptable token header"),
    ] {
        let header = &cases.iter().find(|(c, _)| c == case).unwrap().1;
        unverified(&app, &tenant, case, &es256(&real, header, &auth_claims), reason).await;
    }
    victim.assert_untouched(&app, &tenant).await;
}

/// Claims that are wrong in type, range or shape, signed with the app's real key under its
/// real header, carrying the session's real ids.
async fn hostile_claims_change_nothing(app: TestApp) {
    let tenant = new_app(&app, "claims").await;
    let victim = Victim::new(&app, &tenant, "claims-victim").await;
    let vault = Vault::open(&app).await;
    let real = vault.key(&tenant, &victim.kid()).await;
    let header = header_text(&victim.kid());
    let claims = victim.claims();
    let previous_jid = payload(&json!(victim.previous()))["jid"].clone();

    // An auth token is not a refresh token, nor the other way round.
    refused(&app, &tenant, "the auth token at /renew", victim.auth()).await;
    unverified(&app, &tenant, "the refresh token at /verify", victim.refresh(), "invalid token")
        .await;

    let mut cases: Vec<(String, String)> = Vec::new();
    for name in ["exp", "nbf", "iat"] {
        let good = claims[name].as_i64().unwrap();
        for (what, value) in [
            ("a string", json!(good.to_string())),
            ("a float", json!(good as f64 + 0.5)),
            ("an integral float", json!(good as f64)),
            ("-1", json!(-1)),
            ("i64::MIN", json!(i64::MIN)),
            ("null", Value::Null),
            ("true", json!(true)),
            ("an object", json!({"$gt": 0})),
            ("1e300", json!(1e300)),
            ("i64::MAX + 1", json!(i64::MAX as u64 + 1)),
            ("u64::MAX", json!(u64::MAX)),
        ] {
            cases.push((format!("{name} {what}"), with(&claims, name, value).to_string()));
        }
        cases.push((format!("{name} missing"), without(&claims, name).to_string()));
    }
    for name in ["jid", "sid", "type", "iss"] {
        cases.push((format!("{name} missing"), without(&claims, name).to_string()));
        cases.push((format!("{name} null"), with(&claims, name, Value::Null).to_string()));
        cases.push((format!("{name} a number"), with(&claims, name, json!(1)).to_string()));
    }
    for (name, value) in [
        ("type", json!("auth")),
        ("type", json!("Refresh")),
        ("type", json!(["refresh"])),
        ("iss", json!("another issuer")),
        ("jid", json!("' OR 1=1 --")),
        ("sid", json!("../../etc/passwd")),
        ("jid", json!(claims["jid"].as_str().unwrap().to_lowercase() + "0")),
        ("sub", json!("claims-victim")),
        ("aud", json!("keygate")),
        ("jti", claims["jid"].clone()),
    ] {
        cases.push((format!("{name} = {value}"), with(&claims, name, value).to_string()));
    }
    let past = json!(claims["iat"].as_i64().unwrap() - 10);
    let other_sid = json!(ulid::Ulid::new().to_string());
    for (name, first, second) in [
        ("jid", previous_jid.clone(), claims["jid"].clone()),
        ("jid", claims["jid"].clone(), previous_jid.clone()),
        ("jid", claims["jid"].clone(), claims["jid"].clone()),
        ("sid", other_sid.clone(), claims["sid"].clone()),
        ("sid", claims["sid"].clone(), other_sid),
        ("exp", past.clone(), claims["exp"].clone()),
        ("exp", claims["exp"].clone(), past),
        ("exp", claims["exp"].clone(), claims["exp"].clone()),
        ("type", json!("refresh"), json!("refresh")),
    ] {
        cases.push((
            format!("{name} twice: {first}, then {second}"),
            duplicated(&claims, name, &first, &second),
        ));
    }
    for (what, text) in [
        ("an array", format!("[{claims}]")),
        ("a string", json!(claims.to_string()).to_string()),
        ("null", "null".into()),
        ("empty", String::new()),
        ("truncated JSON", claims.to_string()[..20].to_owned()),
        ("trailing garbage", format!("{claims}x")),
        ("two objects", format!("{claims}{claims}")),
        ("a UTF-16 BOM", format!("\u{feff}{claims}")),
    ] {
        cases.push((format!("payload {what}"), text));
    }

    for (case, text) in &cases {
        refused(&app, &tenant, case, &es256(&real, &header, text)).await;
    }

    // The same on auth tokens, at /verify.
    let auth = payload(&victim.current["auth_token"]);
    for (case, text, reason) in [
        (
            "exp a string",
            with(&auth, "exp", json!(auth["exp"].to_string())).to_string(),
            "invalid token",
        ),
        ("nbf missing", without(&auth, "nbf").to_string(), "invalid token"),
        ("iat null", with(&auth, "iat", Value::Null).to_string(), "invalid token"),
        ("iat -1", with(&auth, "iat", json!(-1)).to_string(), "invalid token"),
        ("sid missing", without(&auth, "sid").to_string(), "invalid token"),
        ("type refresh", with(&auth, "type", json!("refresh")).to_string(), "not an auth token"),
        ("sub twice", duplicated(&auth, "sub", &json!("admin"), &auth["sub"]), "invalid token"),
        ("exp twice", duplicated(&auth, "exp", &auth["exp"], &json!(i64::MAX)), "invalid token"),
    ] {
        unverified(&app, &tenant, case, &es256(&real, &header, &text), reason).await;
    }
    victim.assert_untouched(&app, &tenant).await;
}

/// Another app's key, and tokens of one app presented to another.
async fn tokens_of_another_app_change_nothing(app: TestApp) {
    let tenant = new_app(&app, "tenant-a").await;
    let other = new_app(&app, "tenant-b").await;
    let victim = Victim::new(&app, &tenant, "tenant-victim").await;
    let vault = Vault::open(&app).await;
    let theirs = vault.key(&other, &other.key_id).await;
    let previous = payload(&json!(victim.previous()));
    let their_header = header_text(&other.key_id);

    for (what, claims) in [
        ("current jid", victim.claims()),
        ("previous jid", previous.clone()),
        ("their issuer", with(&victim.claims(), "iss", json!("tenant-b"))),
    ] {
        for (whose, header) in
            [("their kid", their_header.clone()), ("our kid", header_text(&victim.kid()))]
        {
            let forged = es256(&theirs, &header, &claims.to_string());
            let case = format!("their key, {whose}, {what}");
            refused(&app, &tenant, &case, &forged).await;
            logout_refused(&app, &tenant, &case, &forged).await;
        }
    }
    let forged_auth =
        es256(&theirs, &their_header, &payload(&victim.current["auth_token"]).to_string());
    unverified(&app, &tenant, "their key", &forged_auth, "unknown signing key").await;

    // Our real tokens at their endpoints.
    refused(&app, &other, "our refresh token at theirs", victim.refresh()).await;
    refused(&app, &other, "our previous refresh token at theirs", victim.previous()).await;
    logout_refused(&app, &other, "our refresh token at theirs", victim.refresh()).await;
    logout_refused(&app, &other, "our auth token at theirs", victim.auth()).await;
    unverified(&app, &other, "our auth token at theirs", victim.auth(), "unknown signing key")
        .await;

    victim.assert_untouched(&app, &tenant).await;
}

/// A retired key still renews what it signed; a revoked one does not, and refusing its
/// tokens leaves their session live, so that a token of the new key renews it.
async fn retired_keys_renew_and_revoked_keys_do_not(app: TestApp) {
    let tenant = new_app(&app, "keys").await;
    let retiree = app.sign(&tenant, "retiree").await;
    let victim = Victim::new(&app, &tenant, "revokee").await;
    assert_eq!(victim.kid(), tenant.key_id);
    let vault = Vault::open(&app).await;

    let (status, rotation) = parts(
        app.root(Method::POST, &format!("/root/apps/{}/keys/rotate", tenant.app_id))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{rotation}");
    assert_eq!(rotation["retired_key_id"], tenant.key_id.as_str());
    let active = rotation["active_key_id"].as_str().unwrap().to_owned();

    // Retired: still renews, and the renewal is signed by the new active key.
    assert!(app.verified(&tenant, &retiree["auth_token"]).await);
    let (status, renewed) = app.renew(&tenant, &retiree["refresh_token"]).await;
    assert_eq!(status, 200, "{renewed}");
    assert_eq!(renewed["key_id"], active.as_str());
    victim.assert_unchanged(&app, &tenant).await;

    // Revoked: nothing it signed is accepted, whatever it carries.
    let path = format!("/root/apps/{}/keys/{}/revoke", tenant.app_id, tenant.key_id);
    let (status, revocation) = parts(app.root(Method::POST, &path).send().await.unwrap()).await;
    assert_eq!(status, 200, "{revocation}");
    assert_eq!(revocation["previous_status"], "retired");
    let revoked = vault.key(&tenant, &tenant.key_id).await;
    let fresh = es256(&revoked, &header_text(&tenant.key_id), &victim.claims().to_string());
    for (case, token) in [
        ("current refresh token", victim.refresh()),
        ("previous refresh token", victim.previous()),
        ("newly signed by the revoked key", fresh.as_str()),
    ] {
        refused(&app, &tenant, case, token).await;
        logout_refused(&app, &tenant, case, token).await;
    }
    unverified(&app, &tenant, "auth token of a revoked key", victim.auth(), "unknown signing key")
        .await;
    logout_refused(&app, &tenant, "auth token of a revoked key", victim.auth()).await;

    // The session was neither consumed nor revoked: its current jid, signed by the active
    // key, renews once.
    victim.assert_unchanged(&app, &tenant).await;
    let active_key = vault.key(&tenant, &active).await;
    let current = es256(&active_key, &header_text(&active), &victim.claims().to_string());
    let (status, renewed) = app.renew(&tenant, &json!(current)).await;
    assert_eq!(status, 200, "{renewed}");
    assert_eq!(renewed["session_id"], victim.current["session_id"]);
    let (status, body) = app.renew(&tenant, &json!(current)).await;
    assert_eq!((status, body), (401, invalid_grant()));
}
