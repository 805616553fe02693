//! Signing keys over HTTP: JWKS, pub-keys, rotation and revocation.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::pkcs8::DecodePublicKey;
use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::{assert_error, parts, CreatedApp, TestApp};
use crate::on_both_backends;

on_both_backends!(jwks_and_pub_keys_publish_the_same_keys, rotation_and_revocation);

async fn jwks(app: &TestApp, created: &CreatedApp) -> Value {
    let response = app
        .request(Method::GET, &format!("/app/{}/jwks.json", created.app_id))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["cache-control"], "public, max-age=300");
    let (status, body) = parts(response).await;
    assert_eq!(status, 200);
    body
}

fn kids(jwks: &Value) -> Vec<String> {
    jwks["keys"].as_array().unwrap().iter().map(|k| k["kid"].as_str().unwrap().to_owned()).collect()
}

async fn jwks_and_pub_keys_publish_the_same_keys(app: TestApp) {
    let created = app.create_app(json!({"name": "keys"})).await;
    let jwks = jwks(&app, &created).await;
    let keys = jwks["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2, "active and next");
    for key in keys {
        assert_eq!(key["kty"], "EC");
        assert_eq!(key["crv"], "P-256");
        assert_eq!(key["alg"], "ES256");
        assert_eq!(key["use"], "sig");
        assert!(key.get("d").is_none(), "no private material");
    }
    let response = app
        .request(Method::GET, &format!("/app/{}/pub-keys", created.app_id))
        .header("Authorization", &created.app_key)
        .send()
        .await
        .unwrap();
    let (status, pub_keys) = parts(response).await;
    assert_eq!(status, 200);
    let listed = pub_keys["keys"].as_array().unwrap();
    let statuses: Vec<_> = listed.iter().map(|k| k["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["active", "next"]);
    assert_eq!(listed[0]["key_id"], created.key_id.as_str());
    assert_eq!(listed[0]["public_key"], created.public_key.as_str());
    for (listed, jwk) in listed.iter().zip(keys) {
        assert_eq!(listed["key_id"], jwk["kid"]);
        assert_eq!(listed["alg"], "ES256");
        // The base64 PEM and the JWK are the same point.
        let pem =
            String::from_utf8(STANDARD.decode(listed["public_key"].as_str().unwrap()).unwrap())
                .unwrap();
        assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----"));
        let point = p256::PublicKey::from_public_key_pem(&pem).unwrap().to_encoded_point(false);
        assert_eq!(jwk["x"], URL_SAFE_NO_PAD.encode(point.x().unwrap()));
        assert_eq!(jwk["y"], URL_SAFE_NO_PAD.encode(point.y().unwrap()));
    }
}

async fn rotation_and_revocation(app: TestApp) {
    let created = app.create_app(json!({"name": "rotating"})).await;
    let before = kids(&jwks(&app, &created).await);
    let (status, rotation) = parts(
        app.root(Method::POST, &format!("/root/apps/{}/keys/rotate", created.app_id))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{rotation}");
    assert_eq!(rotation["retired_key_id"], created.key_id.as_str());
    assert_eq!(rotation["active_key_id"], before[1].as_str(), "the published next key is promoted");
    let after = kids(&jwks(&app, &created).await);
    assert_eq!(after.len(), 3, "retired, active and a new next key are published");
    assert!(after.contains(&created.key_id));

    // Emergency revoke of the active key: gone from the JWKS at once, next promoted.
    let active = rotation["active_key_id"].as_str().unwrap().to_owned();
    let next = rotation["next_key_id"].as_str().unwrap().to_owned();
    let path = format!("/root/apps/{}/keys/{active}/revoke", created.app_id);
    let (status, revocation) = parts(app.root(Method::POST, &path).send().await.unwrap()).await;
    assert_eq!(status, 200, "{revocation}");
    assert_eq!(revocation["previous_status"], "active");
    assert_eq!(revocation["active_key_id"], next.as_str());
    let after = kids(&jwks(&app, &created).await);
    assert!(!after.contains(&active), "a revoked key leaves the JWKS at once");
    assert!(after.contains(&next));

    let (status, body) = parts(app.root(Method::POST, &path).send().await.unwrap()).await;
    assert_error(status, &body, 400, "invalid_request");
    let unknown = format!("/root/apps/{}/keys/{}/revoke", created.app_id, ulid::Ulid::new());
    let (status, body) = parts(app.root(Method::POST, &unknown).send().await.unwrap()).await;
    assert_error(status, &body, 404, "not_found");

    let (status, listed) = parts(
        app.root(Method::GET, &format!("/root/apps/{}/keys", created.app_id)).send().await.unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    let states: Vec<_> = listed["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["status"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(states.iter().filter(|s| *s == "active").count(), 1);
    assert_eq!(states.iter().filter(|s| *s == "next").count(), 1);
    assert_eq!(states.iter().filter(|s| *s == "revoked").count(), 1);
}
