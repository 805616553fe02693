//! Races over HTTP, on both databases, each repeated many times with exact assertions:
//! renews of one token, a parent against its child, a renew against a revoke, and renews
//! against a signing-key rotation.

use std::collections::HashSet;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::{assert_error, parts, payload, CreatedApp, TestApp};
use crate::on_both_backends;

on_both_backends!(
    parallel_renews_without_grace_rotate_once_and_revoke,
    parallel_renews_from_two_agents_within_grace,
    a_parent_racing_its_child_without_grace,
    a_parent_retry_racing_its_child_within_grace,
    a_renew_racing_a_revoke_leaves_nothing_usable,
    renews_racing_key_rotations_verify_against_the_new_jwks,
);

const ROUNDS: usize = 20;

fn jid(token: &Value) -> String {
    payload(token)["jid"].as_str().unwrap().to_owned()
}

/// No answer is a server-side failure, and every refusal is the 401 of the contract.
fn assert_clean(results: &[(u16, Value)], round: usize) {
    for (status, body) in results {
        assert!(*status == 200 || *status == 401, "round {round}: {status} {body}");
        if *status == 401 {
            assert_error(*status, body, 401, "invalid_grant");
        }
    }
}

/// The session of `tokens` is over: no refresh token renews, no auth token verifies.
async fn assert_session_dead(
    app: &TestApp,
    tenant: &CreatedApp,
    refresh: &[Value],
    auth: &[Value],
    round: usize,
) {
    for token in refresh {
        let (status, body) = app.renew(tenant, token).await;
        assert_eq!(status, 401, "round {round}: a token of an ended session renewed: {body}");
    }
    for token in auth {
        assert!(
            !app.verified(tenant, token).await,
            "round {round}: an auth token of an ended session verifies"
        );
    }
}

/// Extends sessions.rs' burst without grace: more rounds, and every token of the session,
/// the first pair included, is dead afterwards.
async fn parallel_renews_without_grace_rotate_once_and_revoke(app: TestApp) {
    let tenant = app.create_app(json!({"name": "race-nograce", "reuse_grace": 0})).await;
    for round in 0..ROUNDS {
        let signed = app.sign(&tenant, "race").await;
        let results = futures::future::join_all(
            (0..16).map(|_| app.renew(&tenant, &signed["refresh_token"])),
        )
        .await;
        assert_clean(&results, round);
        let ok: Vec<&Value> = results.iter().filter(|(s, _)| *s == 200).map(|(_, b)| b).collect();
        assert_eq!(ok.len(), 1, "round {round}: exactly one renew rotates");
        assert_ne!(jid(&ok[0]["refresh_token"]), jid(&signed["refresh_token"]));
        // 15 renews of a rotated token with grace 0: reuse, so the session is revoked.
        assert_session_dead(
            &app,
            &tenant,
            &[ok[0]["refresh_token"].clone(), signed["refresh_token"].clone()],
            &[ok[0]["auth_token"].clone(), signed["auth_token"].clone()],
            round,
        )
        .await;
    }
}

/// Parallel renews of one token from two user agents, within the grace. One renew rotates;
/// every other one failed the swap and is judged afterwards: from the winner's agent it is
/// a retry (200, the same new token), from the other agent reuse (401). Half the requests
/// come from each agent, so reuse always happens and the session always ends; every 200
/// carries the one new refresh token.
async fn parallel_renews_from_two_agents_within_grace(app: TestApp) {
    let tenant = app.create_app(json!({"name": "race-agents", "reuse_grace": 60})).await;
    for round in 0..ROUNDS {
        let signed = app.sign(&tenant, "race").await;
        let token = &signed["refresh_token"];
        let results = futures::future::join_all((0..12).map(|i| {
            let agent = if i % 2 == 0 { "test-agent" } else { "other-agent" };
            app.renew_as(&tenant, token, agent)
        }))
        .await;
        assert_clean(&results, round);
        let ok: Vec<&Value> = results.iter().filter(|(s, _)| *s == 200).map(|(_, b)| b).collect();
        assert!(!ok.is_empty(), "round {round}: one renew always rotates");
        assert!(ok.len() <= 6, "round {round}: only the winner's agent may retry");
        let jids: HashSet<String> = ok.iter().map(|b| jid(&b["refresh_token"])).collect();
        assert_eq!(jids.len(), 1, "round {round}: one new refresh token, got {jids:?}");
        assert_ne!(jids.iter().next().unwrap(), &jid(token));
        let agents: HashSet<String> = ok
            .iter()
            .map(|b| payload(&b["auth_token"])["useragent"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(agents.len(), 1, "round {round}: 200s went to one agent only: {agents:?}");
        let mut auth: Vec<Value> = ok.iter().map(|b| b["auth_token"].clone()).collect();
        auth.push(signed["auth_token"].clone());
        let refresh = [ok[0]["refresh_token"].clone(), token.clone()];
        assert_session_dead(&app, &tenant, &refresh, &auth, round).await;
    }
}

/// P was renewed into C. Then renew(P) races renew(C), with grace 0. P is never current
/// again, so its renew is reuse whenever it runs: it is refused and the session ends. C
/// rotates only if it ran first; either way nothing of the session works afterwards, so no
/// chain continues.
async fn a_parent_racing_its_child_without_grace(app: TestApp) {
    let tenant = app.create_app(json!({"name": "race-parent", "reuse_grace": 0})).await;
    let mut child_first = 0;
    for round in 0..ROUNDS {
        let signed = app.sign(&tenant, "race").await;
        let (status, c) = app.renew(&tenant, &signed["refresh_token"]).await;
        assert_eq!(status, 200, "{c}");
        let (parent, child) = tokio::join!(
            app.renew(&tenant, &signed["refresh_token"]),
            app.renew(&tenant, &c["refresh_token"]),
        );
        assert_clean(&[parent.clone(), child.clone()], round);
        assert_eq!(parent.0, 401, "round {round}: the parent is never accepted again");
        let mut refresh = vec![signed["refresh_token"].clone(), c["refresh_token"].clone()];
        let mut auth = vec![signed["auth_token"].clone(), c["auth_token"].clone()];
        if child.0 == 200 {
            child_first += 1;
            assert_ne!(jid(&child.1["refresh_token"]), jid(&c["refresh_token"]));
            refresh.push(child.1["refresh_token"].clone());
            auth.push(child.1["auth_token"].clone());
        }
        assert_session_dead(&app, &tenant, &refresh, &auth, round).await;
    }
    eprintln!("parent against child: the child ran first in {child_first} of {ROUNDS} rounds");
}

/// The same race within the grace, from one agent. If the parent's retry runs first it is
/// answered with C (the current token), and C then rotates to G: exactly one chain goes on,
/// through G. If C runs first, the parent is two rotations old: reuse, and the session
/// ends. So: the parent's 200 implies C's 200 and the same jid as C, and then G is the one
/// valid current token; the parent's 401 implies that nothing works any more.
async fn a_parent_retry_racing_its_child_within_grace(app: TestApp) {
    let tenant = app.create_app(json!({"name": "race-retry", "reuse_grace": 60})).await;
    let mut retry_first = 0;
    for round in 0..ROUNDS {
        let signed = app.sign(&tenant, "race").await;
        let (status, c) = app.renew(&tenant, &signed["refresh_token"]).await;
        assert_eq!(status, 200, "{c}");
        let (parent, child) = tokio::join!(
            app.renew(&tenant, &signed["refresh_token"]),
            app.renew(&tenant, &c["refresh_token"]),
        );
        assert_clean(&[parent.clone(), child.clone()], round);
        let mut refresh = vec![c["refresh_token"].clone()];
        let mut auth = vec![c["auth_token"].clone()];
        if child.0 == 200 {
            refresh.push(child.1["refresh_token"].clone());
            auth.push(child.1["auth_token"].clone());
        }
        if parent.0 == 200 {
            retry_first += 1;
            assert_eq!(
                jid(&parent.1["refresh_token"]),
                jid(&c["refresh_token"]),
                "round {round}: a retry is answered with the current token"
            );
            assert_eq!(child.0, 200, "round {round}: the retry changed nothing, C rotates");
            let g = &child.1;
            for token in &auth {
                assert!(app.verified(&tenant, token).await, "round {round}");
            }
            assert!(app.verified(&tenant, &parent.1["auth_token"]).await, "round {round}");
            let (status, body) = app.renew(&tenant, &g["refresh_token"]).await;
            assert_eq!(status, 200, "round {round}: G is the one current token: {body}");
        } else {
            auth.push(signed["auth_token"].clone());
            refresh.push(signed["refresh_token"].clone());
            assert_session_dead(&app, &tenant, &refresh, &auth, round).await;
        }
    }
    eprintln!(
        "parent retry against child: the retry ran first in {retry_first} of {ROUNDS} rounds"
    );
}

/// A renew racing `/revoke` of its session: the revoke always revokes (the session was
/// live), the renew answers 200 or 401, and afterwards no token of the session works.
async fn a_renew_racing_a_revoke_leaves_nothing_usable(app: TestApp) {
    let tenant = app.create_app(json!({"name": "race-revoke", "reuse_grace": 10})).await;
    let mut renewed_first = 0;
    for round in 0..ROUNDS {
        let signed = app.sign(&tenant, "race").await;
        let (status, first) = app.renew(&tenant, &signed["refresh_token"]).await;
        assert_eq!(status, 200, "{first}");
        let revoke_body = json!({"session_id": signed["session_id"]});
        let (renew, revoke) = tokio::join!(
            app.renew(&tenant, &first["refresh_token"]),
            app.app_post(&tenant, "revoke", &revoke_body),
        );
        assert_eq!(revoke, (200, json!({"revoked": 1})), "round {round}");
        assert_clean(std::slice::from_ref(&renew), round);
        let mut refresh = vec![signed["refresh_token"].clone(), first["refresh_token"].clone()];
        let mut auth = vec![signed["auth_token"].clone(), first["auth_token"].clone()];
        if renew.0 == 200 {
            renewed_first += 1;
            refresh.push(renew.1["refresh_token"].clone());
            auth.push(renew.1["auth_token"].clone());
        }
        assert_session_dead(&app, &tenant, &refresh, &auth, round).await;
        let (_, again) = app.app_post(&tenant, "revoke", &revoke_body).await;
        assert_eq!(again, json!({"revoked": 0}), "round {round}: it stays revoked");
    }
    eprintln!("renew against revoke: the renew ran first in {renewed_first} of {ROUNDS} rounds");
}

/// Renews of many sessions while the signing key rotates twice: every renew is a 200 (each
/// chain sends each token once, so nothing is reuse), and every token issued during the
/// race verifies, offline, against the JWKS published after the rotations.
async fn renews_racing_key_rotations_verify_against_the_new_jwks(app: TestApp) {
    let rounds = ROUNDS / 2;
    for round in 0..rounds {
        let tenant =
            app.create_app(json!({"name": format!("race-keys-{round}"), "reuse_grace": 0})).await;
        let mut chains = Vec::new();
        for n in 0..8 {
            chains.push(app.sign(&tenant, &format!("race-{n}")).await["refresh_token"].clone());
        }
        let rotate_path = format!("/root/apps/{}/keys/rotate", tenant.app_id);
        let renewing = futures::future::join_all(chains.into_iter().map(|mut token| {
            let (app, tenant) = (&app, &tenant);
            async move {
                let mut issued = Vec::new();
                for _ in 0..6 {
                    let (status, body) = app.renew(tenant, &token).await;
                    assert_eq!(status, 200, "round {round}: {body}");
                    token = body["refresh_token"].clone();
                    issued.push(body);
                }
                issued
            }
        }));
        let rotating = async {
            let mut active = Vec::new();
            for _ in 0..2 {
                let (status, body) =
                    parts(app.root(Method::POST, &rotate_path).send().await.unwrap()).await;
                assert_eq!(status, 200, "round {round}: {body}");
                active.push(body["active_key_id"].as_str().unwrap().to_owned());
                tokio::task::yield_now().await;
            }
            active
        };
        let (issued, active) = tokio::join!(renewing, rotating);

        let response = app
            .request(Method::GET, &format!("/app/{}/jwks.json", tenant.app_id))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let jwks: JwkSet = response.json().await.unwrap();
        let published: HashSet<String> =
            jwks.keys.iter().filter_map(|k| k.common.key_id.clone()).collect();
        assert!(published.contains(&tenant.key_id), "round {round}: the retired key is published");
        assert!(published.contains(&active[1]), "round {round}: the active key is published");
        let mut validation = Validation::new(Algorithm::ES256);
        validation.validate_aud = false;
        validation.set_issuer(&[format!("race-keys-{round}")]);
        let mut kids = HashSet::new();
        for body in issued.iter().flatten() {
            for token in [&body["auth_token"], &body["refresh_token"]] {
                let token = token.as_str().unwrap();
                let header = jsonwebtoken::decode_header(token).unwrap();
                assert_eq!(header.alg, Algorithm::ES256);
                let kid = header.kid.unwrap();
                assert_eq!(body["key_id"], kid.as_str(), "round {round}: key_id names the signer");
                let jwk = jwks.find(&kid).unwrap_or_else(|| {
                    panic!("round {round}: kid {kid} is not in the JWKS after the rotation")
                });
                let key = DecodingKey::from_jwk(jwk).unwrap();
                let claims = jsonwebtoken::decode::<Value>(token, &key, &validation)
                    .unwrap_or_else(|e| {
                        panic!("round {round}: a token does not verify with its JWK: {e}")
                    });
                assert_eq!(claims.claims["sid"], body["session_id"]);
                kids.insert(kid);
            }
        }
        assert!(kids.iter().all(|k| published.contains(k)));
    }
}
