//! The store suite of the sessions crate: every case runs against SQLite, and against
//! Postgres when `TEST_DATABASE_URL` is set, each in a fresh database (or schema).
//!
//! At the end, a model-based property test drives the `Sessions` service (over SQLite) with
//! random sequences of sign, renew, revoke and the passing of time, and checks every answer
//! and the stored state against a small model of the session states of
//! docs/architecture.md: rotation, reuse, grace.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use keygate_keyring::{key_store, KeyId, Keyring, KeyringConfig, MasterKey};
use keygate_sessions::{
    session_store, Introspected, Issued, Jid, Rejection, RenewInput, RenewMode, RenewOutcome,
    Restore, RevokeScope, Rotation, Session, SessionError, SessionId, SessionStore, Sessions,
    SignInput, TokenDigest,
};
use keygate_store::Backend;
use keygate_tenants::{
    app_store, App, AppId, KeyHashKey, OnReuse, SettingsPatch, StoreError, Tenants, TenantsConfig,
};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::FileFailurePersistence;
use serde_json::{json, Map, Value};

/// A fixed "now" (Unix seconds) for the store cases: time is a parameter, never read by the
/// code under test.
const NOW: i64 = 1_700_000_000;

keygate_store::store_cases!(
    multi_thread;
    create_and_get_round_trip_every_field,
    rotate_is_a_compare_and_swap,
    rotate_with_a_digest_needs_the_current_token_byte_for_byte,
    rotate_refuses_revoked_and_absolutely_expired_sessions,
    a_rotated_token_never_outlives_its_session,
    unrotate_gives_the_token_back_only_while_its_rotation_is_current,
    touch_records_a_renew_without_rotating,
    revoke_counts_only_live_sessions_in_its_scope,
    list_live_filters_by_subject_and_lists_oldest_first,
    a_session_limit_revokes_the_oldest_live_sessions,
    purge_deletes_sessions_that_ended_before_the_cutoff,
    of_fifty_concurrent_rotations_exactly_one_wins,
    concurrent_rotations_of_different_sessions_all_win,
    concurrent_creates_land_and_a_duplicate_fails_alone,
    bulk_insert_stores_every_session,
    a_dpop_proof_is_spent_once_even_by_concurrent_renews,
    a_rotation_with_a_proof_swaps_only_if_the_proof_is_new_and_spends_it_only_if_it_swaps,
);

// ---------------------------------------------------------------- helpers

/// One app with its signing keys, and the session store under test.
struct Fixture {
    tenants: Tenants,
    keyring: Keyring,
    store: Arc<SessionStore>,
    app_id: AppId,
    key_id: KeyId,
}

async fn fixture(db: Backend) -> Fixture {
    let mut f = Fixture {
        tenants: Tenants::new(
            app_store(&db),
            TenantsConfig::new(KeyHashKey::from_bytes(&[7; 32]).unwrap()),
        ),
        keyring: Keyring::new(key_store(&db), MasterKey::generate(), KeyringConfig::default()),
        store: session_store(&db),
        app_id: AppId::new(),
        key_id: KeyId::new(),
    };
    (f.app_id, f.key_id) = f.new_app("demo").await;
    f
}

impl Fixture {
    /// Sessions reference their app, so an app row (and its keys) must exist first.
    async fn new_app(&self, name: &str) -> (AppId, KeyId) {
        let (record, _app_key) =
            self.tenants.create_app(name, &SettingsPatch::default(), NOW).await.unwrap();
        let keys = self.keyring.create_app_keys(record.app.app_id, NOW).await.unwrap();
        (record.app.app_id, keys.signer().unwrap().key_id)
    }

    /// A fresh, live session of `sub` in the fixture's app: one hour of absolute life, a
    /// refresh token valid for half of it.
    fn session(&self, sub: &str, created_at: i64) -> Session {
        session_in(self.app_id, self.key_id, sub, created_at)
    }

    async fn create(&self, session: &Session) {
        assert_eq!(self.store.create(session, 0).await.unwrap(), 0, "no limit, no eviction");
    }

    async fn get(&self, session_id: SessionId) -> Session {
        self.store.get(self.app_id, session_id).await.unwrap().expect("the session is stored")
    }

    /// A rotation of a session of the fixture's app: the session as rotated, or `None`.
    async fn rotate(
        &self,
        session_id: SessionId,
        expected: Jid,
        new_jid: Jid,
        now: i64,
    ) -> Option<Session> {
        let r = rotation(new_jid, self.key_id);
        self.store.rotate(self.app_id, session_id, expected, &r, now).await.unwrap()
    }

    async fn live_ids(&self, sub: Option<&str>, now: i64) -> Vec<SessionId> {
        let live = self.store.list_live(self.app_id, sub, now).await.unwrap();
        live.iter().map(|s| s.session_id).collect()
    }
}

fn session_in(app_id: AppId, key_id: KeyId, sub: &str, created_at: i64) -> Session {
    Session {
        session_id: SessionId::new(),
        app_id,
        sub: sub.to_owned(),
        claims: object(json!({"aud": "demo"})),
        created_at,
        expires_at: created_at + 3600,
        current_jid: Jid::new(),
        current_iat: created_at,
        current_exp: created_at + 1800,
        current_digest: Some(TokenDigest::of(&format!("token of {sub} at {created_at}"))),
        key_id,
        prev_jid: None,
        rotated_at: None,
        ip: "192.0.2.1".to_owned(),
        useragent: "agent/1".to_owned(),
        last_renewed_at: created_at,
        revoked_at: None,
        revoked_reason: None,
    }
}

/// The refresh lifetime of the store cases' rotations.
const REFRESH: i64 = 1800;

fn rotation(new_jid: Jid, key_id: KeyId) -> Rotation<'static> {
    Rotation {
        new_jid,
        refresh_expire: REFRESH,
        key_id,
        ip: "198.51.100.7",
        useragent: "agent/2",
        presented: None,
        digest: None,
        proof: None,
    }
}

fn object(value: Value) -> Map<String, Value> {
    value.as_object().cloned().expect("a JSON object")
}

// ---------------------------------------------------------------- store cases

async fn create_and_get_round_trip_every_field(db: Backend) {
    let f = fixture(db).await;

    let mut fresh = f.session("alice", NOW);
    fresh.claims = object(json!({
        "aud": ["api", "web"],
        "roles": ["admin", "ops"],
        "personal": {"name": "Zoë 🦀", "age": 42, "score": 1.5, "verified": true, "nick": null},
        "big": 9_007_199_254_740_993_i64,
        "quote": "it's \"quoted\" \\ and '; DROP TABLE sessions; --",
    }));
    fresh.ip = "2001:db8::1".to_owned();
    fresh.useragent = String::new();
    f.create(&fresh).await;
    let got = f.get(fresh.session_id).await;
    assert_eq!(got, fresh);
    assert_eq!(got.claims["personal"]["name"], "Zoë 🦀");
    assert_eq!(got.claims["big"], json!(9_007_199_254_740_993_i64));
    assert_eq!((got.prev_jid, got.rotated_at, got.revoked_at), (None, None, None));
    assert_eq!(got.revoked_reason, None);

    // Every optional field set, and empty custom claims.
    let mut full = f.session("bob", NOW - 100);
    full.claims = Map::new();
    full.prev_jid = Some(Jid::new());
    full.rotated_at = Some(NOW - 50);
    full.last_renewed_at = NOW - 50;
    full.revoked_at = Some(NOW - 10);
    full.revoked_reason = Some("logout".to_owned());
    f.create(&full).await;
    assert_eq!(f.get(full.session_id).await, full);

    // Unknown ids and other apps see nothing.
    assert!(f.store.get(f.app_id, SessionId::new()).await.unwrap().is_none());
    let (other_app, _) = f.new_app("other").await;
    assert!(f.store.get(other_app, fresh.session_id).await.unwrap().is_none());

    // A second session with the same id is refused, and the first is left as it was.
    let mut twin = f.session("mallory", NOW);
    twin.session_id = fresh.session_id;
    let err = f.store.create(&twin, 0).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    assert_eq!(f.get(fresh.session_id).await, fresh);
}

async fn rotate_with_a_digest_needs_the_current_token_byte_for_byte(db: Backend) {
    let f = fixture(db).await;
    let s = f.session("alice", NOW);
    f.create(&s).await;
    let d0 = s.current_digest.expect("the fixture's sessions carry a digest");
    assert_eq!(f.get(s.session_id).await.current_digest, Some(d0), "stored as created");
    let (j0, j1, now) = (s.current_jid, Jid::new(), NOW + 10);
    let d1 = TokenDigest::of("the token that replaces it");
    let with = |presented: Option<TokenDigest>, new_jid| Rotation {
        presented,
        digest: Some(d1),
        ..rotation(new_jid, f.key_id)
    };

    // The right jid with another token's digest (a forged token that names the current
    // jid, say) does not swap, and changes nothing.
    let other = with(Some(TokenDigest::of("another token")), j1);
    assert_eq!(f.store.rotate(f.app_id, s.session_id, j0, &other, now).await.unwrap(), None);
    assert_eq!(f.get(s.session_id).await, s);

    // The current token's digest swaps, and the new token's digest becomes current.
    let rotated = f.store.rotate(f.app_id, s.session_id, j0, &with(Some(d0), j1), now).await;
    let rotated = rotated.unwrap().expect("the digest matches");
    assert_eq!((rotated.current_jid, rotated.current_digest), (j1, Some(d1)));
    assert_eq!(f.get(s.session_id).await, rotated);

    // The replaced token's digest no longer matches, even with the current jid.
    let stale = with(Some(d0), Jid::new());
    assert_eq!(f.store.rotate(f.app_id, s.session_id, j1, &stale, now).await.unwrap(), None);

    // A token whose signature was verified swaps on the jid alone; without a new digest the
    // session keeps none, and then no digest matches it.
    let j2 = Jid::new();
    let verified = Rotation { presented: None, digest: None, ..rotation(j2, f.key_id) };
    let rotated = f.store.rotate(f.app_id, s.session_id, j1, &verified, now).await.unwrap();
    assert_eq!(rotated.map(|r| (r.current_jid, r.current_digest)), Some((j2, None)));
    let any = with(Some(d1), Jid::new());
    assert_eq!(f.store.rotate(f.app_id, s.session_id, j2, &any, now).await.unwrap(), None);

    // An undone rotation leaves no digest: the restored token renews only once verified.
    let j3 = Jid::new();
    assert!(f
        .store
        .rotate(f.app_id, s.session_id, j2, &with(None, j3), now)
        .await
        .unwrap()
        .is_some());
    let restore = Restore { jid: j2, iat: now, exp: now + REFRESH };
    assert!(f.store.unrotate(f.app_id, s.session_id, j3, &restore).await.unwrap());
    let restored = f.get(s.session_id).await;
    assert_eq!((restored.current_jid, restored.current_digest), (j2, None));
}

async fn rotate_is_a_compare_and_swap(db: Backend) {
    let f = fixture(db).await;
    let s = f.session("alice", NOW);
    f.create(&s).await;
    let j0 = s.current_jid;

    let j1 = Jid::new();
    let now = NOW + 10;
    let key_b = KeyId::new();
    let r1 = Rotation { key_id: key_b, ..rotation(j1, f.key_id) };
    let rotated = f.store.rotate(f.app_id, s.session_id, j0, &r1, now).await.unwrap();
    let expected = Session {
        current_jid: j1,
        current_iat: now,
        current_exp: now + REFRESH,
        current_digest: None,
        key_id: key_b,
        prev_jid: Some(j0),
        rotated_at: Some(now),
        ip: "198.51.100.7".to_owned(),
        useragent: "agent/2".to_owned(),
        last_renewed_at: now,
        ..s.clone()
    };
    assert_eq!(rotated.as_ref(), Some(&expected), "the swap returns the session as rotated");
    assert_eq!(f.get(s.session_id).await, expected, "and that is what is stored");

    // The old jid is stale now: the swap fails and changes nothing.
    let later = NOW + 20;
    assert_eq!(f.rotate(s.session_id, j0, Jid::new(), later).await, None);
    // So does the right jid under another app, or for an unknown session.
    let stale = rotation(Jid::new(), f.key_id);
    assert!(f.store.rotate(AppId::new(), s.session_id, j1, &stale, later).await.unwrap().is_none());
    assert!(f.store.rotate(f.app_id, SessionId::new(), j1, &stale, later).await.unwrap().is_none());
    assert_eq!(f.get(s.session_id).await, expected);

    // The next rotation succeeds once, and the previous jid is the one it replaced.
    let j2 = Jid::new();
    let rotated = f.rotate(s.session_id, j1, j2, later).await.expect("j1 is current");
    assert_eq!(
        (rotated.current_jid, rotated.prev_jid, rotated.rotated_at),
        (j2, Some(j1), Some(later))
    );
    assert_eq!(f.rotate(s.session_id, j1, Jid::new(), later).await, None, "only once");
    assert_eq!(f.get(s.session_id).await, rotated);
}

async fn rotate_refuses_revoked_and_absolutely_expired_sessions(db: Backend) {
    let f = fixture(db).await;

    let revoked = f.session("alice", NOW);
    f.create(&revoked).await;
    let scope = RevokeScope::Session(revoked.session_id);
    assert_eq!(f.store.revoke(f.app_id, scope, "logout", NOW + 1).await.unwrap(), 1);
    let before = f.get(revoked.session_id).await;
    assert_eq!(f.rotate(revoked.session_id, revoked.current_jid, Jid::new(), NOW + 2).await, None);
    assert_eq!(f.get(revoked.session_id).await, before, "a revoked session does not rotate");

    // expires_at is absolute: at that second and after, the swap fails whatever the jid.
    let mut short = f.session("bob", NOW);
    short.expires_at = NOW + 100;
    f.create(&short).await;
    for now in [NOW + 100, NOW + 101, NOW + 5000] {
        assert_eq!(f.rotate(short.session_id, short.current_jid, Jid::new(), now).await, None);
    }
    assert_eq!(f.get(short.session_id).await, short);
    // One second before, it still rotates.
    let j1 = Jid::new();
    let rotated = f.rotate(short.session_id, short.current_jid, j1, NOW + 99).await;
    assert_eq!(rotated.map(|s| s.current_jid), Some(j1));
    assert_eq!(f.get(short.session_id).await.current_jid, j1);
}

async fn a_rotated_token_never_outlives_its_session(db: Backend) {
    let f = fixture(db).await;
    let mut s = f.session("alice", NOW);
    s.expires_at = NOW + 1000;
    f.create(&s).await;

    // now + refresh_expire (NOW + 1810) is past the absolute expiry: capped to it.
    let j1 = Jid::new();
    let rotated = f.rotate(s.session_id, s.current_jid, j1, NOW + 10).await.unwrap();
    assert_eq!((rotated.current_iat, rotated.current_exp), (NOW + 10, NOW + 1000));

    // A lifetime that ends before the session is not capped.
    let j2 = Jid::new();
    let short = Rotation { refresh_expire: 60, ..rotation(j2, f.key_id) };
    let rotated = f.store.rotate(f.app_id, s.session_id, j1, &short, NOW + 20).await.unwrap();
    assert_eq!(rotated.map(|s| (s.current_iat, s.current_exp)), Some((NOW + 20, NOW + 80)));
    assert_eq!(f.get(s.session_id).await.current_exp, NOW + 80);

    // Exactly at the boundary: now + refresh_expire == expires_at.
    let j3 = Jid::new();
    let exact = Rotation { refresh_expire: 900, ..rotation(j3, f.key_id) };
    let rotated = f.store.rotate(f.app_id, s.session_id, j2, &exact, NOW + 100).await.unwrap();
    assert_eq!(rotated.map(|s| s.current_exp), Some(NOW + 1000));
}

async fn unrotate_gives_the_token_back_only_while_its_rotation_is_current(db: Backend) {
    let f = fixture(db).await;
    let s = f.session("alice", NOW);
    f.create(&s).await;
    let j0 = s.current_jid;
    let restore = Restore { jid: j0, iat: s.current_iat, exp: s.current_exp };

    // A rotation whose tokens could not be issued is undone: j0 is current again, with
    // its own iat and exp, and it renews as if nothing had happened.
    let j1 = Jid::new();
    f.rotate(s.session_id, j0, j1, NOW + 10).await.expect("j0 is current");
    assert!(!f.store.unrotate(AppId::new(), s.session_id, j1, &restore).await.unwrap());
    assert!(!f.store.unrotate(f.app_id, s.session_id, Jid::new(), &restore).await.unwrap());
    assert_eq!(f.get(s.session_id).await.current_jid, j1, "a mismatched undo changes nothing");
    assert!(f.store.unrotate(f.app_id, s.session_id, j1, &restore).await.unwrap());
    let undone = f.get(s.session_id).await;
    assert_eq!(
        (undone.current_jid, undone.current_iat, undone.current_exp),
        (j0, s.current_iat, s.current_exp)
    );
    assert_ne!(undone.prev_jid, Some(j1), "the undone jid is not a previous token");
    assert!(!f.store.unrotate(f.app_id, s.session_id, j1, &restore).await.unwrap(), "only once");
    assert_eq!(f.rotate(s.session_id, j1, Jid::new(), NOW + 11).await, None, "j1 is dead");
    let j2 = Jid::new();
    let rotated = f.rotate(s.session_id, j0, j2, NOW + 12).await.expect("j0 renews again");
    assert_eq!(rotated.prev_jid, Some(j0));

    // Once the session has moved on, an undo of an older rotation must not roll it back.
    let j3 = Jid::new();
    f.rotate(s.session_id, j2, j3, NOW + 13).await.expect("j2 is current");
    let stale = Restore { jid: j0, iat: s.current_iat, exp: s.current_exp };
    assert!(!f.store.unrotate(f.app_id, s.session_id, j2, &stale).await.unwrap());
    let after = f.get(s.session_id).await;
    assert_eq!((after.current_jid, after.prev_jid), (j3, Some(j2)));
}

async fn touch_records_a_renew_without_rotating(db: Backend) {
    let f = fixture(db).await;
    let s = f.session("alice", NOW);
    f.create(&s).await;

    assert!(f
        .store
        .touch(f.app_id, s.session_id, "203.0.113.9", "agent/touch", NOW + 5)
        .await
        .unwrap());
    let touched = Session {
        ip: "203.0.113.9".to_owned(),
        useragent: "agent/touch".to_owned(),
        last_renewed_at: NOW + 5,
        ..s.clone()
    };
    assert_eq!(f.get(s.session_id).await, touched, "only ip, useragent and last_renewed_at change");

    // Unknown session, or the session under another app: nothing to touch.
    assert!(!f.store.touch(f.app_id, SessionId::new(), "203.0.113.1", "x", NOW + 6).await.unwrap());
    assert!(!f.store.touch(AppId::new(), s.session_id, "203.0.113.1", "x", NOW + 6).await.unwrap());
    assert_eq!(f.get(s.session_id).await, touched);

    // Past the absolute expiry.
    assert!(!f
        .store
        .touch(f.app_id, s.session_id, "203.0.113.1", "x", s.expires_at)
        .await
        .unwrap());
    assert_eq!(f.get(s.session_id).await, touched);

    // Revoked.
    let scope = RevokeScope::Session(s.session_id);
    assert_eq!(f.store.revoke(f.app_id, scope, "logout", NOW + 7).await.unwrap(), 1);
    assert!(!f.store.touch(f.app_id, s.session_id, "203.0.113.1", "x", NOW + 8).await.unwrap());
    let after = f.get(s.session_id).await;
    assert_eq!((after.ip.as_str(), after.last_renewed_at), ("203.0.113.9", NOW + 5));
}

async fn revoke_counts_only_live_sessions_in_its_scope(db: Backend) {
    let f = fixture(db).await;
    let (other_app, other_key) = f.new_app("other").await;
    let t = NOW + 100;

    let alice1 = f.session("alice", NOW);
    let alice2 = f.session("alice", NOW + 1);
    let mut alice_revoked = f.session("alice", NOW + 2);
    alice_revoked.revoked_at = Some(NOW + 3);
    alice_revoked.revoked_reason = Some("earlier".to_owned());
    let mut alice_expired = f.session("alice", NOW + 3);
    alice_expired.expires_at = t - 1;
    let capital_alice = f.session("Alice", NOW + 4);
    let bob = f.session("bob", NOW + 5);
    let alice_elsewhere = session_in(other_app, other_key, "alice", NOW);
    for s in
        [&alice1, &alice2, &alice_revoked, &alice_expired, &capital_alice, &bob, &alice_elsewhere]
    {
        f.create(s).await;
    }

    // One session.
    assert_eq!(
        f.store
            .revoke(f.app_id, RevokeScope::Session(alice1.session_id), "logout", t)
            .await
            .unwrap(),
        1
    );
    let got = f.get(alice1.session_id).await;
    assert_eq!((got.revoked_at, got.revoked_reason.as_deref()), (Some(t), Some("logout")));
    // Again: nothing left to revoke, and the first revocation stands as it was.
    assert_eq!(
        f.store
            .revoke(f.app_id, RevokeScope::Session(alice1.session_id), "again", t + 1)
            .await
            .unwrap(),
        0
    );
    let got = f.get(alice1.session_id).await;
    assert_eq!((got.revoked_at, got.revoked_reason.as_deref()), (Some(t), Some("logout")));
    // An expired session is not live: not counted, not touched.
    assert_eq!(
        f.store
            .revoke(f.app_id, RevokeScope::Session(alice_expired.session_id), "logout", t)
            .await
            .unwrap(),
        0
    );
    assert_eq!(f.get(alice_expired.session_id).await, alice_expired);
    // Another app's session cannot be revoked through this app.
    assert_eq!(
        f.store
            .revoke(f.app_id, RevokeScope::Session(alice_elsewhere.session_id), "x", t)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        f.store.get(other_app, alice_elsewhere.session_id).await.unwrap().unwrap(),
        alice_elsewhere
    );

    // A subject: only its live sessions, matched exactly, in this app only.
    assert_eq!(
        f.store.revoke(f.app_id, RevokeScope::Subject("alice"), "subject", t).await.unwrap(),
        1
    );
    let got = f.get(alice2.session_id).await;
    assert_eq!((got.revoked_at, got.revoked_reason.as_deref()), (Some(t), Some("subject")));
    assert_eq!(f.get(alice_revoked.session_id).await, alice_revoked, "an old revocation is kept");
    assert_eq!(f.get(alice_expired.session_id).await, alice_expired);
    assert_eq!(f.get(capital_alice.session_id).await, capital_alice, "subjects are case-sensitive");
    assert_eq!(f.get(bob.session_id).await, bob);
    assert_eq!(
        f.store.revoke(f.app_id, RevokeScope::Subject("alice"), "subject", t).await.unwrap(),
        0
    );
    assert_eq!(
        f.store.revoke(f.app_id, RevokeScope::Subject("nobody"), "subject", t).await.unwrap(),
        0
    );

    // The whole app: "Alice" and bob are what is left.
    assert_eq!(f.store.revoke(f.app_id, RevokeScope::App, "app", t).await.unwrap(), 2);
    assert_eq!(f.get(bob.session_id).await.revoked_reason.as_deref(), Some("app"));
    assert!(f.live_ids(None, t).await.is_empty());
    assert_eq!(f.store.revoke(f.app_id, RevokeScope::App, "app", t).await.unwrap(), 0);
    // The other app is untouched until it is revoked itself.
    let elsewhere = f.store.get(other_app, alice_elsewhere.session_id).await.unwrap().unwrap();
    assert_eq!(elsewhere.revoked_at, None);
    assert_eq!(f.store.revoke(other_app, RevokeScope::App, "app", t).await.unwrap(), 1);
}

async fn list_live_filters_by_subject_and_lists_oldest_first(db: Backend) {
    let f = fixture(db).await;
    let (other_app, other_key) = f.new_app("other").await;

    let mut a_expiring = f.session("alice", NOW);
    a_expiring.expires_at = NOW + 100;
    let a1 = f.session("alice", NOW + 10);
    let b1 = f.session("bob", NOW + 15);
    let a2 = f.session("alice", NOW + 20);
    let a3 = f.session("alice", NOW + 30);
    let mut a_revoked = f.session("alice", NOW + 5);
    a_revoked.revoked_at = Some(NOW + 6);
    a_revoked.revoked_reason = Some("logout".to_owned());
    let elsewhere = session_in(other_app, other_key, "alice", NOW + 1);
    // Inserted out of order: the listing sorts.
    for s in [&a3, &a_revoked, &a1, &elsewhere, &b1, &a_expiring, &a2] {
        f.create(s).await;
    }

    // One second before its expiry a session is live, at its expiry it is not.
    let ids = |v: &[&Session]| v.iter().map(|s| s.session_id).collect::<Vec<_>>();
    assert_eq!(f.live_ids(Some("alice"), NOW + 99).await, ids(&[&a_expiring, &a1, &a2, &a3]));
    assert_eq!(f.live_ids(Some("alice"), NOW + 100).await, ids(&[&a1, &a2, &a3]));
    assert_eq!(f.live_ids(None, NOW + 100).await, ids(&[&a1, &b1, &a2, &a3]));
    assert_eq!(f.live_ids(Some("bob"), NOW + 100).await, ids(&[&b1]));
    assert!(f.live_ids(Some("nobody"), NOW + 100).await.is_empty());
    assert!(f.live_ids(Some("alice"), NOW + 3600 + 30).await.is_empty(), "all expired");

    // The listed sessions are the stored ones, every field.
    let listed = f.store.list_live(f.app_id, Some("alice"), NOW + 100).await.unwrap();
    assert_eq!(listed, [a1.clone(), a2.clone(), a3.clone()]);
    // Another app lists only its own.
    let theirs = f.store.list_live(other_app, None, NOW + 100).await.unwrap();
    assert_eq!(theirs, [elsewhere]);
}

async fn a_session_limit_revokes_the_oldest_live_sessions(db: Backend) {
    let f = fixture(db).await;

    let s1 = f.session("alice", NOW);
    let s2 = f.session("alice", NOW + 1);
    let s3 = f.session("alice", NOW + 2);
    let bob = f.session("bob", NOW + 1);
    assert_eq!(f.store.create(&s1, 2).await.unwrap(), 0);
    assert_eq!(f.store.create(&s2, 2).await.unwrap(), 0);
    assert_eq!(f.store.create(&bob, 2).await.unwrap(), 0);
    assert_eq!(f.store.create(&s3, 2).await.unwrap(), 1, "the third session evicts one");
    let evicted = f.get(s1.session_id).await;
    assert_eq!(evicted.revoked_at, Some(NOW + 2), "revoked when the new session was created");
    assert_eq!(evicted.revoked_reason.as_deref(), Some("session limit"));
    assert_eq!(f.live_ids(Some("alice"), NOW + 2).await, [s2.session_id, s3.session_id]);
    assert_eq!(
        f.live_ids(Some("bob"), NOW + 2).await,
        [bob.session_id],
        "other subjects keep theirs"
    );

    // Revoked and expired sessions take no room.
    let mut carol_old = f.session("carol", NOW - 3600);
    carol_old.expires_at = NOW;
    assert_eq!(f.store.create(&carol_old, 1).await.unwrap(), 0);
    let carol = f.session("carol", NOW + 10);
    assert_eq!(f.store.create(&carol, 1).await.unwrap(), 0, "the expired session is not live");
    assert_eq!(f.get(carol_old.session_id).await.revoked_at, None);
    let carol2 = f.session("carol", NOW + 11);
    assert_eq!(f.store.create(&carol2, 1).await.unwrap(), 1);
    assert_eq!(f.live_ids(Some("carol"), NOW + 11).await, [carol2.session_id]);

    // 0 means no limit.
    for i in 0..4 {
        assert_eq!(f.store.create(&f.session("dave", NOW + i), 0).await.unwrap(), 0);
    }
    assert_eq!(f.live_ids(Some("dave"), NOW + 10).await.len(), 4);
}

async fn purge_deletes_sessions_that_ended_before_the_cutoff(db: Backend) {
    let f = fixture(db).await;
    let cutoff = NOW + 1000;

    let live = f.session("alice", NOW);
    let mut expired = f.session("alice", NOW - 5000);
    (expired.expires_at, expired.current_exp) = (cutoff - 1, cutoff - 2000);
    let mut expires_at_cutoff = f.session("alice", NOW - 5000);
    (expires_at_cutoff.expires_at, expires_at_cutoff.current_exp) = (cutoff, cutoff);
    // Its refresh token expired, so it can never renew again: it ended then.
    let mut refresh_expired = f.session("alice", NOW - 5000);
    refresh_expired.current_exp = cutoff - 1;
    refresh_expired.expires_at = cutoff + 10_000;
    let mut revoked_before = f.session("bob", NOW);
    revoked_before.revoked_at = Some(cutoff - 1);
    let mut revoked_at_cutoff = f.session("bob", NOW);
    revoked_at_cutoff.revoked_at = Some(cutoff);
    let mut revoked_after = f.session("bob", NOW);
    revoked_after.revoked_at = Some(cutoff + 500);
    let (other_app, other_key) = f.new_app("other").await;
    let mut expired_elsewhere = session_in(other_app, other_key, "carol", NOW - 5000);
    expired_elsewhere.expires_at = cutoff - 1;
    let mut live_elsewhere = session_in(other_app, other_key, "carol", NOW);
    live_elsewhere.expires_at = cutoff + 10_000;

    let all = [
        &live,
        &expired,
        &expires_at_cutoff,
        &refresh_expired,
        &revoked_before,
        &revoked_at_cutoff,
        &revoked_after,
        &expired_elsewhere,
        &live_elsewhere,
    ];
    for s in all {
        f.create(s).await;
    }
    let gone: BTreeSet<SessionId> =
        [&expired, &refresh_expired, &revoked_before, &expired_elsewhere]
            .iter()
            .map(|s| s.session_id)
            .collect();

    assert_eq!(f.store.purge(cutoff).await.unwrap(), gone.len() as u64);
    for s in all {
        let stored = f.store.get(s.app_id, s.session_id).await.unwrap();
        if gone.contains(&s.session_id) {
            assert!(stored.is_none(), "{} should be purged", s.session_id);
        } else {
            assert_eq!(stored.as_ref(), Some(s), "{} should be kept as it was", s.session_id);
        }
    }
    assert_eq!(f.store.purge(cutoff).await.unwrap(), 0, "nothing more to purge");
}

async fn of_fifty_concurrent_rotations_exactly_one_wins(db: Backend) {
    const TASKS: usize = 50;
    let f = fixture(db).await;
    let s = f.session("alice", NOW);
    f.create(&s).await;

    let mut expected = s.current_jid;
    for round in 0..10_i64 {
        let now = NOW + 1 + round;
        let start = Arc::new(tokio::sync::Barrier::new(TASKS));
        let tasks: Vec<_> = (0..TASKS)
            .map(|i| {
                let (store, start, key_id) = (f.store.clone(), start.clone(), f.key_id);
                let (app_id, session_id) = (f.app_id, s.session_id);
                tokio::spawn(async move {
                    let new_jid = Jid::new();
                    let useragent = format!("agent/{i}");
                    let r = Rotation { useragent: &useragent, ..rotation(new_jid, key_id) };
                    start.wait().await;
                    let rotated =
                        store.rotate(app_id, session_id, expected, &r, now).await.unwrap();
                    (rotated, new_jid, useragent)
                })
            })
            .collect();
        let mut winners = Vec::new();
        for task in tasks {
            let (rotated, new_jid, useragent) = task.await.unwrap();
            if let Some(rotated) = rotated {
                winners.push((rotated, new_jid, useragent));
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: exactly one rotation wins");
        let (rotated, winner, winner_agent) = winners.pop().unwrap();
        assert_eq!(rotated.current_jid, winner, "round {round}: the winner gets its own row");
        assert_eq!(rotated.useragent, winner_agent, "round {round}");
        let after = f.get(s.session_id).await;
        assert_eq!(after, rotated, "round {round}: the winner's row is what is stored");
        assert_eq!(after.prev_jid, Some(expected), "round {round}");
        assert_eq!(after.rotated_at, Some(now));
        expected = winner;
    }
}

/// Concurrent renews of different sessions (on SQLite, one group commit) each rotate their
/// own session, and each gets its own row back.
async fn concurrent_rotations_of_different_sessions_all_win(db: Backend) {
    const SESSIONS: usize = 40;
    let f = fixture(db).await;
    let mut sessions = Vec::new();
    for i in 0..SESSIONS {
        let s = f.session(&format!("user-{}", i % 7), NOW);
        f.create(&s).await;
        sessions.push(s);
    }
    let start = Arc::new(tokio::sync::Barrier::new(SESSIONS));
    let tasks: Vec<_> = sessions
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let (store, start, key_id) = (f.store.clone(), start.clone(), f.key_id);
            let (app_id, session_id, expected) = (f.app_id, s.session_id, s.current_jid);
            tokio::spawn(async move {
                let new_jid = Jid::new();
                // Different lifetimes, so that a row answered to the wrong job shows.
                let refresh_expire = 100 + i64::try_from(i).unwrap();
                let r = Rotation { refresh_expire, ..rotation(new_jid, key_id) };
                start.wait().await;
                let rotated = store.rotate(app_id, session_id, expected, &r, NOW + 5).await;
                (rotated.unwrap(), new_jid, refresh_expire)
            })
        })
        .collect();
    for (s, task) in sessions.iter().zip(tasks) {
        let (rotated, new_jid, refresh_expire) = task.await.unwrap();
        let rotated = rotated.expect("every session rotates");
        assert_eq!((rotated.session_id, rotated.current_jid), (s.session_id, new_jid));
        assert_eq!((rotated.prev_jid, rotated.sub.as_str()), (Some(s.current_jid), s.sub.as_str()));
        assert_eq!(rotated.current_exp, NOW + 5 + refresh_expire);
        assert_eq!(f.get(s.session_id).await, rotated);
    }
}

/// Concurrent creates (one group commit on either backend) all land; a duplicate id among them
/// fails on its own and takes no other session with it.
async fn concurrent_creates_land_and_a_duplicate_fails_alone(db: Backend) {
    const SESSIONS: usize = 30;
    let f = fixture(db).await;
    let existing = f.session("alice", NOW);
    f.create(&existing).await;

    let mut batch: Vec<Session> =
        (0..SESSIONS).map(|i| f.session(&format!("user-{i}"), NOW + 1)).collect();
    let duplicate = SESSIONS / 2;
    batch[duplicate].session_id = existing.session_id;
    let start = Arc::new(tokio::sync::Barrier::new(SESSIONS));
    let tasks: Vec<_> = batch
        .iter()
        .cloned()
        .map(|s| {
            let (store, start) = (f.store.clone(), start.clone());
            tokio::spawn(async move {
                start.wait().await;
                store.create(&s, 0).await
            })
        })
        .collect();
    for (i, task) in tasks.into_iter().enumerate() {
        let result = task.await.unwrap();
        if i == duplicate {
            assert!(matches!(result, Err(StoreError::Conflict(_))), "{result:?}");
        } else {
            assert_eq!(result.unwrap(), 0, "session {i}");
            assert_eq!(f.get(batch[i].session_id).await, batch[i]);
        }
    }
    assert_eq!(f.get(existing.session_id).await, existing, "the first of that id stays");
    assert_eq!(f.live_ids(None, NOW + 2).await.len(), SESSIONS);
}

async fn bulk_insert_stores_every_session(db: Backend) {
    const SESSIONS: usize = 1234;
    let f = fixture(db).await;
    let sessions: Vec<Session> = (0..SESSIONS)
        .map(|i| {
            let mut s = f.session(&format!("user-{}", i % 10), NOW + i64::try_from(i).unwrap());
            s.claims = object(json!({"aud": "demo", "n": i}));
            s
        })
        .collect();
    assert_eq!(f.store.bulk_insert(&sessions).await.unwrap(), SESSIONS as u64);
    assert_eq!(f.live_ids(None, NOW + 10).await.len(), SESSIONS);
    for s in [&sessions[0], &sessions[499], &sessions[500], &sessions[SESSIONS - 1]] {
        assert_eq!(&f.get(s.session_id).await, s);
    }
    assert!(f.store.bulk_insert(&[]).await.is_ok());
}

// ---------------------------------------------------------------- service model

const SUBJECTS: [&str; 2] = ["alice", "bob"];
const AGENTS: [&str; 3] = ["firefox/128", "curl/8.5", "safari/17"];
const REUSE: &str = "refresh token reuse";
const REVOKED_SESSION: &str = "test: revoke session";
const REVOKED_SUBJECT: &str = "test: revoke subject";
/// The longest sequence and the most time it can make pass.
const MAX_STEPS: usize = 30;
const MAX_WAIT: i64 = 30;

#[derive(Debug, Clone, Copy)]
enum Forgery {
    /// The current refresh token with a byte of its signature changed.
    BadSignature,
    /// The header and payload of the current token under the signature of another token.
    SwappedSignature,
    /// The session's auth token presented as a refresh token.
    AuthToken,
    /// A refresh token of another app.
    OtherApp,
}

/// Which session an operation is about: mostly a live one (when there is one), so that
/// sequences do not spend most of their steps on sessions that are already gone.
#[derive(Debug, Clone)]
struct Pick {
    index: Index,
    live: bool,
}

#[derive(Debug, Clone)]
enum Op {
    Sign {
        sub: usize,
        agent: usize,
    },
    /// The session's current refresh token, from any of the agents.
    RenewCurrent {
        session: Pick,
        agent: usize,
    },
    /// The previous token, from the agent of the rotation or from another one.
    RenewPrevious {
        session: Pick,
        same_agent: bool,
    },
    /// A token from before the previous one.
    RenewOlder {
        session: Pick,
        which: Index,
    },
    RenewForged {
        session: Pick,
        forgery: Forgery,
    },
    RevokeSession {
        session: Pick,
    },
    RevokeSubject {
        sub: usize,
    },
    Wait {
        secs: i64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Rotated,
    GraceRetry,
    Rejected(Rejection),
}

/// A refresh token with the claims the model needs.
#[derive(Debug, Clone)]
struct Token {
    raw: String,
    jid: Jid,
    sid: SessionId,
    iat: i64,
    exp: i64,
}

impl Token {
    /// Reads the claims without verifying: the service under test does the verifying.
    fn decode(raw: String) -> Self {
        let payload = raw.split('.').nth(1).expect("a JWS has a payload");
        let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap())
            .expect("the payload is JSON");
        assert_eq!(claims["type"], "refresh", "{claims}");
        Self {
            jid: claims["jid"].as_str().unwrap().parse().unwrap(),
            sid: claims["sid"].as_str().unwrap().parse().unwrap(),
            iat: claims["iat"].as_i64().unwrap(),
            exp: claims["exp"].as_i64().unwrap(),
            raw,
        }
    }
}

/// What the model knows of one session.
#[derive(Debug)]
struct Tracked {
    session_id: SessionId,
    sub: &'static str,
    live: bool,
    revoked_reason: Option<&'static str>,
    current: Token,
    prev: Option<Token>,
    rotated_at: Option<i64>,
    /// The agent of the sign or of the last rotation.
    agent: &'static str,
    older: Vec<Token>,
    auth_token: String,
}

struct Model {
    now: i64,
    reuse_grace: i64,
    on_reuse: OnReuse,
    sessions: Vec<Tracked>,
}

impl Model {
    fn pick(&self, pick: &Pick) -> Option<usize> {
        let live: Vec<usize> =
            (0..self.sessions.len()).filter(|&i| self.sessions[i].live).collect();
        if pick.live && !live.is_empty() {
            Some(live[pick.index.index(live.len())])
        } else {
            (!self.sessions.is_empty()).then(|| pick.index.index(self.sessions.len()))
        }
    }

    /// What a renew with `presented` (a token of session `i`) from `agent` must answer.
    fn predict(&self, i: usize, presented: Jid, agent: &str) -> Outcome {
        let s = &self.sessions[i];
        if !s.live {
            Outcome::Rejected(Rejection::SessionGone)
        } else if presented == s.current.jid {
            Outcome::Rotated
        } else if s.prev.as_ref().is_some_and(|p| p.jid == presented)
            && s.rotated_at.is_some_and(|at| self.now - at < self.reuse_grace)
            && agent == s.agent
        {
            Outcome::GraceRetry
        } else {
            Outcome::Rejected(Rejection::ReuseDetected)
        }
    }

    fn revoke(&mut self, which: impl Fn(&Tracked) -> bool, reason: &'static str) -> u64 {
        let mut revoked = 0;
        for s in self.sessions.iter_mut().filter(|s| s.live && which(s)) {
            s.live = false;
            s.revoked_reason = Some(reason);
            revoked += 1;
        }
        revoked
    }

    fn reuse_detected(&mut self, i: usize) {
        let (id, sub) = (self.sessions[i].session_id, self.sessions[i].sub);
        match self.on_reuse {
            OnReuse::RevokeSession => self.revoke(|s| s.session_id == id, REUSE),
            OnReuse::RevokeSubject => self.revoke(|s| s.sub == sub, REUSE),
        };
    }
}

/// The service under test, and a session of another app for cross-tenant attempts.
struct Harness {
    sessions: Sessions,
    app: App,
    foreign_app: App,
    foreign: Token,
}

impl Harness {
    async fn new(db: &Backend, reuse_grace: i64, on_reuse: OnReuse, now: i64) -> Self {
        let tenants = Tenants::new(
            app_store(db),
            TenantsConfig::new(KeyHashKey::from_bytes(&[7; 32]).unwrap()),
        );
        let keyring =
            Arc::new(Keyring::new(key_store(db), MasterKey::generate(), KeyringConfig::default()));
        let mut apps = Vec::new();
        for name in ["model", "foreign"] {
            // Long lifetimes, so that no token or session expires during a sequence.
            let patch = SettingsPatch {
                token_expire: Some(86_400),
                refresh_expire: Some(400 * 86_400),
                session_max_age: Some(5 * 365 * 86_400),
                reuse_grace: Some(reuse_grace),
                on_reuse: Some(on_reuse),
                ..SettingsPatch::default()
            };
            let (record, _app_key) = tenants.create_app(name, &patch, now).await.unwrap();
            keyring.create_app_keys(record.app.app_id, now).await.unwrap();
            apps.push(record.app);
        }
        let foreign_app = apps.pop().unwrap();
        let app = apps.pop().unwrap();
        let sessions = Sessions::new(session_store(db), keyring);
        let issued =
            sessions.sign(&foreign_app, sign_input("alice", AGENTS[0]), now).await.unwrap();
        let foreign = Token::decode(issued.refresh_token);
        Self { sessions, app, foreign_app, foreign }
    }

    async fn renew(&self, token: &str, agent: &str, now: i64) -> (Outcome, Option<Issued>) {
        let input = RenewInput {
            refresh_token: token.to_owned(),
            ip: "192.0.2.10".to_owned(),
            useragent: agent.to_owned(),
            dpop: None,
            proof: None,
            public_client: false,
        };
        match self.sessions.renew(&self.app, input, now).await {
            Ok(renewed) => {
                let outcome = match renewed.outcome {
                    RenewOutcome::Rotated => Outcome::Rotated,
                    RenewOutcome::GraceRetry => Outcome::GraceRetry,
                    RenewOutcome::NotRotating => panic!("the app rotates refresh tokens"),
                };
                (outcome, Some(renewed.issued))
            }
            Err(SessionError::Rejected(why)) => (Outcome::Rejected(why), None),
            Err(other) => panic!("a renew failed on the server side: {other:?}"),
        }
    }
}

fn sign_input(sub: &str, agent: &str) -> SignInput {
    SignInput {
        sub: sub.to_owned(),
        ip: "192.0.2.10".to_owned(),
        useragent: agent.to_owned(),
        aud: None,
        dpop_jkt: None,
        custom: Map::new(),
    }
}

/// The store agrees with the model: which sessions are live, and each one's token chain.
async fn check_store(h: &Harness, model: &Model, step: usize) -> Result<(), TestCaseError> {
    let listed = h.sessions.list(h.app.app_id, None, model.now).await.unwrap();
    let listed: BTreeSet<SessionId> = listed.iter().map(|v| v.session_id).collect();
    let live: BTreeSet<SessionId> =
        model.sessions.iter().filter(|s| s.live).map(|s| s.session_id).collect();
    prop_assert_eq!(listed, live, "step {}: live sessions", step);
    for s in &model.sessions {
        let row = h.sessions.store().get(h.app.app_id, s.session_id).await.unwrap();
        let row = row.expect("a session row stays until it is purged");
        prop_assert_eq!(row.current_jid, s.current.jid, "step {}: current jid", step);
        prop_assert_eq!(row.prev_jid, s.prev.as_ref().map(|t| t.jid), "step {}: prev jid", step);
        prop_assert_eq!(row.rotated_at, s.rotated_at, "step {}: rotated_at", step);
        prop_assert_eq!(row.useragent.as_str(), s.agent, "step {}: useragent", step);
        prop_assert_eq!(row.revoked_at.is_some(), !s.live, "step {}: revoked", step);
        prop_assert_eq!(row.revoked_reason.as_deref(), s.revoked_reason, "step {}", step);
    }
    // Nothing done in this app ever touches the other app's session.
    let foreign = h.sessions.store().get(h.foreign_app.app_id, h.foreign.sid).await.unwrap();
    let foreign = foreign.expect("the foreign session exists");
    prop_assert_eq!(foreign.revoked_at, None, "step {}: the foreign session is live", step);
    prop_assert_eq!(foreign.current_jid, h.foreign.jid);
    Ok(())
}

#[allow(clippy::disallowed_methods)] // jsonwebtoken checks `exp` against the real clock
async fn run_model(ops: Vec<Op>, reuse_grace: i64, on_reuse: OnReuse) -> Result<(), TestCaseError> {
    let test_db = keygate_store::testing::sqlite().await;
    // The service verifies `exp` and `nbf` against the real clock (jsonwebtoken), so the
    // model's clock starts far enough in the past that it never runs ahead of it.
    let wall =
        i64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()).unwrap();
    let start = wall - MAX_WAIT * i64::try_from(MAX_STEPS).unwrap() - 60;
    let h = Harness::new(&test_db.db, reuse_grace, on_reuse, start).await;
    let mut model = Model { now: start, reuse_grace, on_reuse, sessions: Vec::new() };
    let mut jids_seen: HashSet<Jid> = HashSet::new();

    for (step, op) in ops.iter().enumerate() {
        let now = model.now;
        match *op {
            Op::Sign { sub, agent } => {
                let issued = h
                    .sessions
                    .sign(&h.app, sign_input(SUBJECTS[sub], AGENTS[agent]), now)
                    .await
                    .unwrap();
                let token = Token::decode(issued.refresh_token);
                prop_assert_eq!(token.sid, issued.session_id);
                prop_assert!(jids_seen.insert(token.jid), "step {}: a jid was issued twice", step);
                model.sessions.push(Tracked {
                    session_id: issued.session_id,
                    sub: SUBJECTS[sub],
                    live: true,
                    revoked_reason: None,
                    current: token,
                    prev: None,
                    rotated_at: None,
                    agent: AGENTS[agent],
                    older: Vec::new(),
                    auth_token: issued.auth_token,
                });
            }
            Op::RenewCurrent { ref session, agent } => {
                let Some(i) = model.pick(session) else { continue };
                let s = &model.sessions[i];
                let expected = model.predict(i, s.current.jid, AGENTS[agent]);
                let (outcome, issued) = h.renew(&s.current.raw, AGENTS[agent], now).await;
                prop_assert_eq!(outcome, expected, "step {}: {:?}", step, op);
                if let Some(issued) = issued {
                    let new = Token::decode(issued.refresh_token);
                    prop_assert_eq!(new.sid, s.session_id);
                    prop_assert_eq!(issued.session_id, s.session_id);
                    prop_assert!(jids_seen.insert(new.jid), "step {}: a jid was reused", step);
                    let s = &mut model.sessions[i];
                    let replaced = std::mem::replace(&mut s.current, new);
                    if let Some(prev) = s.prev.replace(replaced) {
                        s.older.push(prev);
                    }
                    s.rotated_at = Some(now);
                    s.agent = AGENTS[agent];
                    s.auth_token = issued.auth_token;
                }
            }
            Op::RenewPrevious { ref session, same_agent } => {
                let Some(i) = model.pick(session) else { continue };
                let s = &model.sessions[i];
                let Some(prev) = &s.prev else { continue };
                let agent = if same_agent { s.agent } else { other_agent(s.agent) };
                let expected = model.predict(i, prev.jid, agent);
                let (outcome, issued) = h.renew(&prev.raw, agent, now).await;
                prop_assert_eq!(outcome, expected, "step {}: {:?}", step, op);
                match outcome {
                    Outcome::GraceRetry => {
                        // The session's current token again: same jid, iat and exp.
                        let issued = issued.unwrap();
                        let again = Token::decode(issued.refresh_token);
                        prop_assert_eq!(issued.session_id, s.session_id);
                        prop_assert_eq!(again.sid, s.session_id);
                        prop_assert_eq!(again.jid, s.current.jid, "step {}: grace jid", step);
                        prop_assert_eq!((again.iat, again.exp), (s.current.iat, s.current.exp));
                        // Re-signed, it is as good as the one it repeats: use it from now on.
                        model.sessions[i].current = again;
                    }
                    Outcome::Rejected(Rejection::ReuseDetected) => model.reuse_detected(i),
                    _ => {}
                }
            }
            Op::RenewOlder { ref session, ref which } => {
                let Some(i) = model.pick(session) else { continue };
                let s = &model.sessions[i];
                if s.older.is_empty() {
                    continue;
                }
                let old = &s.older[which.index(s.older.len())];
                let expected = model.predict(i, old.jid, s.agent);
                let (outcome, _) = h.renew(&old.raw, s.agent, now).await;
                prop_assert_eq!(outcome, expected, "step {}: {:?}", step, op);
                if outcome == Outcome::Rejected(Rejection::ReuseDetected) {
                    model.reuse_detected(i);
                }
            }
            Op::RenewForged { ref session, forgery } => {
                let Some(i) = model.pick(session) else { continue };
                let s = &model.sessions[i];
                let token = match forgery {
                    Forgery::BadSignature => corrupt_signature(&s.current.raw),
                    Forgery::SwappedSignature => swap_signature(&s.current.raw, &s.auth_token),
                    Forgery::AuthToken => s.auth_token.clone(),
                    Forgery::OtherApp => h.foreign.raw.clone(),
                };
                // Refused before any session is looked at, and nothing changes.
                let (outcome, _) = h.renew(&token, s.agent, now).await;
                let expected = Outcome::Rejected(Rejection::InvalidToken);
                prop_assert_eq!(outcome, expected, "step {}: {:?}", step, op);
            }
            Op::RevokeSession { ref session } => {
                let Some(i) = model.pick(session) else { continue };
                let id = model.sessions[i].session_id;
                let scope = RevokeScope::Session(id);
                let revoked =
                    h.sessions.revoke(h.app.app_id, scope, REVOKED_SESSION, now).await.unwrap();
                let expected = model.revoke(|s| s.session_id == id, REVOKED_SESSION);
                prop_assert_eq!(revoked, expected, "step {}: {:?}", step, op);
            }
            Op::RevokeSubject { sub } => {
                let scope = RevokeScope::Subject(SUBJECTS[sub]);
                let revoked =
                    h.sessions.revoke(h.app.app_id, scope, REVOKED_SUBJECT, now).await.unwrap();
                let expected = model.revoke(|s| s.sub == SUBJECTS[sub], REVOKED_SUBJECT);
                prop_assert_eq!(revoked, expected, "step {}: {:?}", step, op);
            }
            Op::Wait { secs } => model.now += secs,
        }
        check_store(&h, &model, step).await?;
    }
    test_db.db.close().await;
    Ok(())
}

fn other_agent(agent: &str) -> &'static str {
    AGENTS.iter().find(|a| **a != agent).copied().unwrap()
}

/// The same token with the first character of its signature changed.
fn corrupt_signature(token: &str) -> String {
    let (signed, signature) = token.rsplit_once('.').unwrap();
    let mut chars: Vec<char> = signature.chars().collect();
    chars[0] = if chars[0] == 'A' { 'B' } else { 'A' };
    format!("{signed}.{}", chars.into_iter().collect::<String>())
}

/// The header and payload of `token` with the (valid, same-key) signature of `donor`.
fn swap_signature(token: &str, donor: &str) -> String {
    let (signed, _) = token.rsplit_once('.').unwrap();
    let (_, signature) = donor.rsplit_once('.').unwrap();
    format!("{signed}.{signature}")
}

/// `reuse_grace` is the app's: waits often land on either side of the grace boundary.
fn op(reuse_grace: i64) -> impl Strategy<Value = Op> {
    let forgery = prop_oneof![
        Just(Forgery::BadSignature),
        Just(Forgery::SwappedSignature),
        Just(Forgery::AuthToken),
        Just(Forgery::OtherApp),
    ];
    let pick = || {
        (any::<Index>(), prop::bool::weighted(0.8)).prop_map(|(index, live)| Pick { index, live })
    };
    prop_oneof![
        3 => (0..SUBJECTS.len(), 0..AGENTS.len()).prop_map(|(sub, agent)| Op::Sign { sub, agent }),
        5 => (pick(), 0..AGENTS.len())
            .prop_map(|(session, agent)| Op::RenewCurrent { session, agent }),
        4 => (pick(), prop::bool::weighted(0.75))
            .prop_map(|(session, same_agent)| Op::RenewPrevious { session, same_agent }),
        1 => (pick(), any::<Index>())
            .prop_map(|(session, which)| Op::RenewOlder { session, which }),
        1 => (pick(), forgery)
            .prop_map(|(session, forgery)| Op::RenewForged { session, forgery }),
        1 => pick().prop_map(|session| Op::RevokeSession { session }),
        1 => (0..SUBJECTS.len()).prop_map(|sub| Op::RevokeSubject { sub }),
        2 => (0..=MAX_WAIT).prop_map(|secs| Op::Wait { secs }),
        2 => prop_oneof![Just(reuse_grace), Just((reuse_grace - 1).max(0))]
            .prop_map(|secs| Op::Wait { secs }),
    ]
}

/// Sequences that start by opening a session, so that few steps are wasted.
fn ops(reuse_grace: i64) -> impl Strategy<Value = Vec<Op>> {
    let first =
        (0..SUBJECTS.len(), 0..AGENTS.len()).prop_map(|(sub, agent)| Op::Sign { sub, agent });
    (first, prop::collection::vec(op(reuse_grace), 0..MAX_STEPS)).prop_map(|(first, mut rest)| {
        rest.insert(0, first);
        rest
    })
}

proptest! {
    #![proptest_config(ProptestConfig {
        // 24 keeps the suite within seconds; PROPTEST_CASES=1000 for a deeper run.
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(24),
        max_shrink_iters: 256,
        // Relative to the crate directory, where `cargo test` runs integration tests.
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/store.txt",
        ))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn the_service_renews_revokes_and_detects_reuse_as_the_model_predicts(
        (reuse_grace, ops) in (0i64..=20).prop_flat_map(|grace| (Just(grace), ops(grace))),
        revoke_subject in any::<bool>(),
    ) {
        let on_reuse = if revoke_subject { OnReuse::RevokeSubject } else { OnReuse::RevokeSession };
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(run_model(ops, reuse_grace, on_reuse))?;
    }
}

/// Each request reads the clock when it starts, so a renew that lost the swap can carry a
/// time before the rotation that beat it. Without a grace that is reuse, never a retry; with
/// one, it is a retry from the same user agent.
#[tokio::test]
#[allow(clippy::disallowed_methods)] // jsonwebtoken checks `exp` against the real clock
async fn a_renew_that_read_the_clock_before_the_winning_rotation() {
    let wall =
        i64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()).unwrap();
    let start = wall - 60;
    for (reuse_grace, expected) in
        [(0, Outcome::Rejected(Rejection::ReuseDetected)), (10, Outcome::GraceRetry)]
    {
        let test_db = keygate_store::testing::sqlite().await;
        let h = Harness::new(&test_db.db, reuse_grace, OnReuse::RevokeSession, start).await;
        let signed = h.sessions.sign(&h.app, sign_input("alice", AGENTS[0]), start).await.unwrap();
        let (won, _) = h.renew(&signed.refresh_token, AGENTS[0], start + 1).await;
        assert_eq!(won, Outcome::Rotated);
        let (late, _) = h.renew(&signed.refresh_token, AGENTS[0], start).await;
        assert_eq!(late, expected, "reuse_grace {reuse_grace}");
        test_db.db.close().await;
    }
}

// ---------------------------------------------------------------- service cases

/// A harness over a fresh SQLite database whose clock starts a minute ago, as in
/// [`a_renew_that_read_the_clock_before_the_winning_rotation`].
#[allow(clippy::disallowed_methods)] // jsonwebtoken checks `exp` against the real clock
async fn service_harness(reuse_grace: i64) -> (keygate_store::testing::TestDb, Harness, i64) {
    let wall =
        i64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()).unwrap();
    let start = wall - 60;
    let test_db = keygate_store::testing::sqlite().await;
    let h = Harness::new(&test_db.db, reuse_grace, OnReuse::RevokeSession, start).await;
    (test_db, h, start)
}

fn renew_input(token: &str, agent: &str) -> RenewInput {
    RenewInput {
        refresh_token: token.to_owned(),
        ip: "203.0.113.50".to_owned(),
        useragent: agent.to_owned(),
        dpop: None,
        proof: None,
        public_client: false,
    }
}

/// A renew of `app`'s token: the outcome and the issued pair, or the rejection.
async fn renew_of(
    sessions: &Sessions,
    app: &App,
    token: &str,
    agent: &str,
    now: i64,
) -> Result<(RenewOutcome, Issued), Rejection> {
    match sessions.renew(app, renew_input(token, agent), now).await {
        Ok(renewed) => Ok((renewed.outcome, renewed.issued)),
        Err(SessionError::Rejected(why)) => Err(why),
        Err(other) => panic!("a renew failed on the server side: {other:?}"),
    }
}

/// A renew of the current token answers a token whose digest the session stored, so that
/// its own renew is matched by digest; the lifetimes it reports are the app's.
#[tokio::test]
async fn a_rotation_answers_the_token_whose_digest_it_stored() {
    let (test_db, h, start) = service_harness(0).await;
    let signed = h.sessions.sign(&h.app, sign_input("alice", AGENTS[0]), start).await.unwrap();
    let s = &h.app.settings;
    assert_eq!((signed.expires_in, signed.refresh_expires_in), (s.token_expire, s.refresh_expire));
    let stored = h.sessions.store().get(h.app.app_id, signed.session_id).await.unwrap().unwrap();
    assert_eq!(stored.current_digest, Some(TokenDigest::of(&signed.refresh_token)));

    let now = start + 7;
    let (outcome, issued) =
        renew_of(&h.sessions, &h.app, &signed.refresh_token, AGENTS[0], now).await.unwrap();
    assert_eq!(outcome, RenewOutcome::Rotated);
    assert_eq!((issued.expires_in, issued.refresh_expires_in), (s.token_expire, s.refresh_expire));
    let token = Token::decode(issued.refresh_token.clone());
    assert_eq!((token.iat, token.exp), (now, now + s.refresh_expire));
    let stored = h.sessions.store().get(h.app.app_id, signed.session_id).await.unwrap().unwrap();
    assert_eq!(stored.current_digest, Some(TokenDigest::of(&issued.refresh_token)));
    assert_eq!((stored.current_jid, stored.current_exp), (token.jid, token.exp));
    test_db.db.close().await;
}

/// Near its absolute expiry a session's new refresh token expires with it: the token is
/// signed again with the capped expiry, and it still renews (verified by signature).
#[tokio::test]
async fn a_rotation_near_the_end_of_the_session_caps_the_new_token() {
    let (test_db, mut h, start) = service_harness(0).await;
    h.app.settings.session_max_age = 100;
    let signed = h.sessions.sign(&h.app, sign_input("alice", AGENTS[0]), start).await.unwrap();
    assert_eq!(signed.refresh_expires_in, 100, "capped at the session's end from the start");
    let now = start + 10;
    let (outcome, issued) =
        renew_of(&h.sessions, &h.app, &signed.refresh_token, AGENTS[0], now).await.unwrap();
    assert_eq!(outcome, RenewOutcome::Rotated);
    let token = Token::decode(issued.refresh_token.clone());
    assert_eq!(token.exp, start + 100, "the new token ends with the session");
    assert_eq!(issued.refresh_expires_in, 90);
    let (outcome, _) =
        renew_of(&h.sessions, &h.app, &issued.refresh_token, AGENTS[0], now + 1).await.unwrap();
    assert_eq!(outcome, RenewOutcome::Rotated);
    test_db.db.close().await;
}

/// The session's current token, presented byte for byte, is still checked for its
/// lifetime and issuer: a digest match alone never renews it.
#[tokio::test]
async fn the_current_token_renews_only_within_its_lifetime_and_under_the_apps_issuer() {
    let (test_db, mut h, start) = service_harness(0).await;
    h.app.settings.refresh_expire = 100;
    h.app.settings.refresh_notbefore = 10;
    let signed = h.sessions.sign(&h.app, sign_input("alice", AGENTS[0]), start).await.unwrap();
    let t = &signed.refresh_token;
    for now in [start, start + 9, start + 100, start + 101] {
        let answer = renew_of(&h.sessions, &h.app, t, AGENTS[0], now).await;
        assert_eq!(answer.err(), Some(Rejection::InvalidToken), "at start + {}", now - start);
    }
    let mut moved = h.app.clone();
    moved.settings.issuer = "https://issuer.example/elsewhere".to_owned();
    let answer = renew_of(&h.sessions, &moved, t, AGENTS[0], start + 50).await;
    assert_eq!(answer.err(), Some(Rejection::InvalidToken), "another issuer");
    let stored = h.sessions.store().get(h.app.app_id, signed.session_id).await.unwrap().unwrap();
    assert_eq!((stored.prev_jid, stored.revoked_at), (None, None), "nothing happened");
    // From nbf (inclusive) to exp (exclusive).
    let (outcome, issued) = renew_of(&h.sessions, &h.app, t, AGENTS[0], start + 10).await.unwrap();
    assert_eq!(outcome, RenewOutcome::Rotated);
    let next = &issued.refresh_token;
    let (outcome, _) = renew_of(&h.sessions, &h.app, next, AGENTS[0], start + 109).await.unwrap();
    assert_eq!(outcome, RenewOutcome::Rotated);
    test_db.db.close().await;
}

/// An app that does not rotate: the refresh token stays current and only a new auth token
/// is issued; the session records the renew. A token that a rotation replaced before the
/// app stopped rotating is refused, and is not reuse.
#[tokio::test]
async fn an_app_that_does_not_rotate_keeps_the_refresh_token() {
    let (test_db, mut h, start) = service_harness(0).await;
    let signed = h.sessions.sign(&h.app, sign_input("alice", AGENTS[0]), start).await.unwrap();
    let (_, rotated) =
        renew_of(&h.sessions, &h.app, &signed.refresh_token, AGENTS[0], start + 1).await.unwrap();
    h.app.settings.refresh_rotation = false;

    let t1 = &rotated.refresh_token;
    let now = start + 5;
    let (outcome, issued) = renew_of(&h.sessions, &h.app, t1, AGENTS[1], now).await.unwrap();
    assert_eq!(outcome, RenewOutcome::NotRotating);
    assert_eq!(&issued.refresh_token, t1);
    let exp = Token::decode(t1.clone()).exp;
    assert_eq!(issued.refresh_expires_in, exp - now);
    assert!(h
        .sessions
        .is_auth_token_of(&h.app, &issued.auth_token, signed.session_id)
        .await
        .unwrap());
    let stored = h.sessions.store().get(h.app.app_id, signed.session_id).await.unwrap().unwrap();
    assert_eq!(stored.current_jid, Token::decode(t1.clone()).jid, "still current");
    assert_eq!((stored.useragent.as_str(), stored.ip.as_str()), (AGENTS[1], "203.0.113.50"));
    assert_eq!(stored.last_renewed_at, now);

    let answer = renew_of(&h.sessions, &h.app, &signed.refresh_token, AGENTS[1], now).await;
    assert_eq!(answer.err(), Some(Rejection::InvalidToken), "not the session's token");
    let stored = h.sessions.store().get(h.app.app_id, signed.session_id).await.unwrap().unwrap();
    assert_eq!(stored.revoked_at, None, "and not reuse");

    let scope = RevokeScope::Session(signed.session_id);
    h.sessions.revoke(h.app.app_id, scope, "logout", now + 1).await.unwrap();
    let answer = renew_of(&h.sessions, &h.app, t1, AGENTS[1], now + 2).await;
    assert_eq!(answer.err(), Some(Rejection::SessionGone));
    test_db.db.close().await;
}

/// [`RenewMode::KeepRefreshToken`] on an app that rotates: the current token gets a new
/// auth token and stays current, and the session is left as it is (its user agent is the
/// one the grace compares retries with). Any other token is judged as on a rotating renew.
#[tokio::test]
async fn a_renew_that_keeps_the_refresh_token_on_a_rotating_app_changes_nothing() {
    let (test_db, h, start) = service_harness(10).await;
    let signed = h.sessions.sign(&h.app, sign_input("alice", AGENTS[0]), start).await.unwrap();
    let (_, rotated) =
        renew_of(&h.sessions, &h.app, &signed.refresh_token, AGENTS[0], start + 1).await.unwrap();
    let before = h.sessions.store().get(h.app.app_id, signed.session_id).await.unwrap().unwrap();

    let keep = |token: &str, agent: &str, now: i64| {
        let (sessions, app) = (&h.sessions, &h.app);
        let (token, agent) = (token.to_owned(), agent.to_owned());
        async move {
            let presented = sessions.verify_refresh(app, &token, now).await.unwrap();
            let input = renew_input(&token, &agent);
            match sessions
                .renew_presented(app, &presented, &input, RenewMode::KeepRefreshToken, now)
                .await
            {
                Ok(renewed) => Ok((renewed.outcome, renewed.issued)),
                Err(SessionError::Rejected(why)) => Err(why),
                Err(other) => panic!("{other:?}"),
            }
        }
    };
    let now = start + 3;
    let (outcome, issued) = keep(&rotated.refresh_token, AGENTS[1], now).await.unwrap();
    assert_eq!(outcome, RenewOutcome::NotRotating);
    assert_eq!(issued.refresh_token, rotated.refresh_token);
    assert_eq!(issued.refresh_expires_in, Token::decode(rotated.refresh_token.clone()).exp - now);
    let after = h.sessions.store().get(h.app.app_id, signed.session_id).await.unwrap().unwrap();
    assert_eq!(after, before, "nothing written");

    // The replaced token, within the grace from the agent of the rotation: a retry.
    let (outcome, retried) = keep(&signed.refresh_token, AGENTS[0], now).await.unwrap();
    assert_eq!(outcome, RenewOutcome::GraceRetry);
    assert_eq!(Token::decode(retried.refresh_token).jid, after.current_jid);
    // From another agent: reuse, and the session ends.
    let answer = keep(&signed.refresh_token, AGENTS[1], now).await;
    assert_eq!(answer.err(), Some(Rejection::ReuseDetected));
    let ended = h.sessions.store().get(h.app.app_id, signed.session_id).await.unwrap().unwrap();
    assert_eq!(ended.revoked_reason.as_deref(), Some(REUSE));
    test_db.db.close().await;
}

/// `/verify`: an auth token verifies while its session is live, and each refusal says why.
#[tokio::test]
async fn verify_accepts_a_live_sessions_auth_token_and_says_why_it_refuses() {
    let (test_db, mut h, start) = service_harness(0).await;
    h.app.settings.session_max_age = 100;
    h.app.settings.token_expire = 1000;
    let signed = h.sessions.sign(&h.app, sign_input("alice", AGENTS[0]), start).await.unwrap();
    let auth = &signed.auth_token;
    let verified = h.sessions.verify(&h.app, auth, start + 99).await.unwrap();
    assert!(verified.verified && verified.reason.is_none());
    let claims = verified.claims.expect("a verified token's claims");
    assert_eq!((claims["sub"].as_str(), claims["iat"].as_i64()), (Some("alice"), Some(start)));

    let refused = |token: String, now: i64| {
        let (sessions, app) = (&h.sessions, &h.app);
        async move {
            let answer = sessions.verify(app, &token, now).await.unwrap();
            assert!(!answer.verified && answer.claims.is_none());
            answer.reason.unwrap()
        }
    };
    assert_eq!(refused(auth.clone(), start + 100).await, "session expired or unknown");
    assert_eq!(refused(auth.clone(), start + 1000).await, "token expired");
    assert_eq!(refused(corrupt_signature(auth), start + 1).await, "invalid signature");
    assert_eq!(refused("not.a.token".to_owned(), start + 1).await, "malformed token");
    assert_eq!(refused("x".repeat(9000), start + 1).await, "token too large");
    assert_eq!(refused(h.foreign.raw.clone(), start + 1).await, "unknown signing key");
    let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","typ":"JWT"}"#);
    let (_, rest) = auth.split_once('.').unwrap();
    assert_eq!(refused(format!("{header}.{rest}"), start + 1).await, "unacceptable token header");
    let mut moved = h.app.clone();
    moved.settings.issuer = "https://issuer.example/elsewhere".to_owned();
    let answer = h.sessions.verify(&moved, auth, start + 1).await.unwrap();
    assert_eq!(answer.reason, Some("wrong issuer"));

    // A token whose custom claims carry a reserved name is not an auth token.
    let mut input = sign_input("bob", AGENTS[0]);
    input.custom.insert("type".into(), json!("refresh"));
    let odd = h.sessions.sign(&h.app, input, start).await.unwrap();
    assert_eq!(refused(odd.auth_token, start + 1).await, "not an auth token");

    let scope = RevokeScope::Session(signed.session_id);
    h.sessions.revoke(h.app.app_id, scope, "logout", start + 2).await.unwrap();
    assert_eq!(refused(auth.clone(), start + 3).await, "session revoked");
    test_db.db.close().await;
}

/// Whether a token is an auth token of a given session: of this app, of that session,
/// and not a refresh token.
#[tokio::test]
async fn an_auth_token_belongs_to_its_session_only() {
    let (test_db, h, start) = service_harness(0).await;
    let a = h.sessions.sign(&h.app, sign_input("alice", AGENTS[0]), start).await.unwrap();
    let b = h.sessions.sign(&h.app, sign_input("bob", AGENTS[0]), start).await.unwrap();
    let of = |token: &str, sid: SessionId| {
        let (sessions, app, token) = (&h.sessions, &h.app, token.to_owned());
        async move { sessions.is_auth_token_of(app, &token, sid).await.unwrap() }
    };
    assert!(of(&a.auth_token, a.session_id).await);
    assert!(!of(&a.auth_token, b.session_id).await, "another session");
    assert!(!of(&a.refresh_token, a.session_id).await, "a refresh token");
    assert!(!of(&corrupt_signature(&a.auth_token), a.session_id).await, "a forgery");
    test_db.db.close().await;
}

/// The janitor deletes a session only once it ended more than a day ago, so that none of
/// its auth tokens (at most a day long) is still valid when it goes.
#[tokio::test]
async fn purge_keeps_an_ended_session_for_a_day() {
    let (test_db, h, start) = service_harness(0).await;
    let signed = h.sessions.sign(&h.app, sign_input("alice", AGENTS[0]), start).await.unwrap();
    let scope = RevokeScope::Session(signed.session_id);
    h.sessions.revoke(h.app.app_id, scope, "logout", start + 1).await.unwrap();
    assert_eq!(h.sessions.purge(start + 1 + 86_400).await.unwrap(), 0);
    assert!(h.sessions.store().get(h.app.app_id, signed.session_id).await.unwrap().is_some());
    assert_eq!(h.sessions.purge(start + 2 + 86_400).await.unwrap(), 1);
    assert!(h.sessions.store().get(h.app.app_id, signed.session_id).await.unwrap().is_none());
    test_db.db.close().await;
}

/// RFC 7009 revocation, introspection and logout find the session of either token.
#[tokio::test]
async fn revocation_introspection_and_logout_find_the_tokens_session() {
    let (test_db, h, start) = service_harness(0).await;
    let now = start + 1;
    let a = h.sessions.sign(&h.app, sign_input("alice", AGENTS[0]), start).await.unwrap();
    let live = h.sessions.introspect(&h.app, &a.refresh_token, now).await.unwrap();
    assert!(matches!(live, Some(Introspected::Refresh { ref sub, .. }) if sub == "alice"));
    let live = h.sessions.introspect(&h.app, &a.auth_token, now).await.unwrap();
    assert!(matches!(live, Some(Introspected::Auth(ref c)) if c.sid == a.session_id));
    assert_eq!(h.sessions.revoke_token(&h.app, &a.refresh_token, now).await.unwrap(), 1);
    assert!(h.sessions.introspect(&h.app, &a.auth_token, now).await.unwrap().is_none());
    assert_eq!(h.sessions.revoke_token(&h.app, &a.auth_token, now).await.unwrap(), 0);

    let b = h.sessions.sign(&h.app, sign_input("bob", AGENTS[0]), start).await.unwrap();
    assert_eq!(h.sessions.revoke_token(&h.app, &b.auth_token, now).await.unwrap(), 1);
    let c = h.sessions.sign(&h.app, sign_input("carol", AGENTS[0]), start).await.unwrap();
    assert_eq!(h.sessions.logout(&h.app, &c.refresh_token, now).await.unwrap(), 1);
    let d = h.sessions.sign(&h.app, sign_input("dave", AGENTS[0]), start).await.unwrap();
    assert_eq!(h.sessions.logout(&h.app, &d.auth_token, now).await.unwrap(), 1);
    for s in [&b, &c, &d] {
        let row = h.sessions.store().get(h.app.app_id, s.session_id).await.unwrap().unwrap();
        assert!(row.revoked_at.is_some(), "{}", s.session_id);
    }

    // A refresh token that a rotation replaced is not active any more; neither is a token
    // whose custom claims carry a reserved name.
    let e = h.sessions.sign(&h.app, sign_input("erin", AGENTS[0]), start).await.unwrap();
    let (_, rotated) =
        renew_of(&h.sessions, &h.app, &e.refresh_token, AGENTS[0], now).await.unwrap();
    assert!(h.sessions.introspect(&h.app, &e.refresh_token, now).await.unwrap().is_none());
    let current = h.sessions.introspect(&h.app, &rotated.refresh_token, now).await.unwrap();
    assert!(matches!(current, Some(Introspected::Refresh { .. })));
    let mut input = sign_input("frank", AGENTS[0]);
    input.custom.insert("kid".into(), json!("mine"));
    let odd = h.sessions.sign(&h.app, input, start).await.unwrap();
    assert!(h.sessions.introspect(&h.app, &odd.auth_token, now).await.unwrap().is_none());
    assert_eq!(h.sessions.revoke_token(&h.app, &odd.auth_token, now).await.unwrap(), 0);
    test_db.db.close().await;
}

// ---------------------------------------------------------------- writes in doubt

/// Eight rotations share one batch whose commit goes in doubt (Postgres, through a proxy
/// that loses the batch's answer after it committed, or swallows the batch): each caller
/// resolves its own rotation, gets the session as rotated to its new token, and each
/// session rotated exactly once.
async fn a_batch_of_rotations_in_doubt_is_resolved_job_by_job(
    fault: keygate_store::testing::Fault,
    outcome: keygate_store::in_doubt::Outcome,
) {
    use keygate_store::in_doubt::Write;
    use keygate_store::testing::FaultProxy;
    let Ok(base) = std::env::var("TEST_DATABASE_URL") else { return };
    let proxy = FaultProxy::start(&base).await;
    let test_db = keygate_store::testing::postgres_through(&proxy).await.unwrap();
    let f = fixture(test_db.db.clone()).await;
    let sessions: Vec<Session> = (0..8).map(|i| f.session(&format!("batch-{i}"), NOW)).collect();
    for session in &sessions {
        f.create(session).await;
    }
    let ids: Vec<String> = sessions.iter().map(|s| s.session_id.to_string()).collect();
    proxy.arm(&ids.iter().map(String::as_str).collect::<Vec<_>>(), fault);

    // One task polls all eight before the batcher runs (a current-thread runtime): they
    // share one statement, which the proxy sees carrying all eight session ids.
    let new_jids: Vec<Jid> = sessions.iter().map(|_| Jid::new()).collect();
    let f = &f;
    let renews = sessions.iter().zip(&new_jids).map(|(s, new_jid)| async move {
        let r = rotation(*new_jid, f.key_id);
        f.store.rotate(f.app_id, s.session_id, s.current_jid, &r, NOW + 1).await
    });
    let rotated = futures::future::join_all(renews).await;
    assert_eq!(proxy.fired(), 1, "one statement carried the eight rotations");

    for ((session, new_jid), rotated) in sessions.iter().zip(&new_jids).zip(rotated) {
        let rotated = rotated.unwrap().expect("resolved as rotated");
        assert_eq!(rotated.current_jid, *new_jid);
        assert_eq!(rotated.prev_jid, Some(session.current_jid));
        // Exactly once: the old token swaps no more, the new one does.
        assert!(f
            .rotate(session.session_id, session.current_jid, Jid::new(), NOW + 2)
            .await
            .is_none());
        assert!(f.rotate(session.session_id, *new_jid, Jid::new(), NOW + 2).await.is_some());
    }
    let counts = test_db.db.in_doubt_counts();
    let count =
        |o| counts.iter().find(|c| c.write == Write::Rotate && c.outcome == o).unwrap().count;
    assert_eq!(count(outcome), 8, "{counts:?}");
    assert_eq!(counts.iter().map(|c| c.count).sum::<u64>(), 8, "{counts:?}");
    test_db.db.close().await;
}

#[cfg_attr(
    not(postgres_tests),
    ignore = "Postgres: needs TEST_DATABASE_URL when built (just test-pg)"
)]
#[tokio::test]
async fn a_batch_of_rotations_that_committed_with_its_answer_lost_is_resolved_job_by_job() {
    use keygate_store::in_doubt::Outcome;
    use keygate_store::testing::Fault;
    a_batch_of_rotations_in_doubt_is_resolved_job_by_job(Fault::LoseAnswer, Outcome::Committed)
        .await;
}

#[cfg_attr(
    not(postgres_tests),
    ignore = "Postgres: needs TEST_DATABASE_URL when built (just test-pg)"
)]
#[tokio::test]
async fn a_batch_of_rotations_that_never_arrived_is_resolved_job_by_job() {
    use keygate_store::in_doubt::Outcome;
    use keygate_store::testing::Fault;
    a_batch_of_rotations_in_doubt_is_resolved_job_by_job(Fault::Swallow, Outcome::Applied).await;
}

/// The Postgres batcher keeps its connection from one batch to the next. When that
/// connection is dropped while idle (here by a proxy between the gateway and Postgres; in
/// production a restart, a failover, a network cut), the next renew still rotates, exactly
/// once: its batch fails on the dead connection, is resolved as in doubt, and the batcher
/// takes a new connection for the batches after it. And the pool still closes while the
/// batcher holds a connection (closing waits for every connection lent).
#[cfg_attr(
    not(postgres_tests),
    ignore = "Postgres: needs TEST_DATABASE_URL when built (just test-pg)"
)]
#[tokio::test]
async fn a_renew_after_the_batchers_connection_dropped_while_idle_rotates_once() {
    use keygate_store::testing::FaultProxy;
    let Ok(base) = std::env::var("TEST_DATABASE_URL") else { return };
    let proxy = FaultProxy::start(&base).await;
    let test_db = keygate_store::testing::postgres_through(&proxy).await.unwrap();
    let f = fixture(test_db.db.clone()).await;
    let session = f.session("idle", NOW);
    f.create(&session).await;
    let first = Jid::new();
    let rotated = f.rotate(session.session_id, session.current_jid, first, NOW + 1).await;
    assert_eq!(
        rotated.map(|row| row.current_jid),
        Some(first),
        "the batcher now holds a connection"
    );

    proxy.cut().await;
    proxy.restore().await;
    let second = Jid::new();
    let rotated = f.rotate(session.session_id, first, second, NOW + 2).await;
    assert_eq!(rotated.map(|row| row.current_jid), Some(second));
    assert!(f.rotate(session.session_id, first, Jid::new(), NOW + 3).await.is_none(), "once");
    let in_doubt = |db: &Backend| db.in_doubt_counts().iter().map(|c| c.count).sum::<u64>();
    let after_cut = in_doubt(&test_db.db);
    assert!(after_cut <= 1, "at most the batch on the dead connection: {after_cut}");

    // The batches after it run on a new connection: nothing more in doubt.
    let third = Jid::new();
    let rotated = f.rotate(session.session_id, second, third, NOW + 4).await;
    assert_eq!(rotated.map(|row| row.current_jid), Some(third));
    assert_eq!(in_doubt(&test_db.db), after_cut);
    test_db.db.close().await;
}

/// Postgres plans every statement for its values (`plan_cache_mode`), on every connection
/// of the pool: a generic plan cached while `sessions` was small made each batched
/// rotation scan the whole table once it had grown (docs/benchmarks.md).
#[cfg_attr(
    not(postgres_tests),
    ignore = "Postgres: needs TEST_DATABASE_URL when built (just test-pg)"
)]
#[tokio::test]
async fn every_postgres_connection_plans_each_statement_for_its_values() {
    use keygate_store::testing::{fetch_all, postgres};
    use keygate_store::Sql;
    let Some(test_db) = postgres().await else { return };
    // Several at once, so that the pool opens more than one connection.
    let shows =
        (0..4).map(|_| fetch_all::<(String,)>(&test_db.db, Sql::new("SHOW plan_cache_mode")));
    for rows in futures::future::join_all(shows).await {
        assert_eq!(rows, vec![("force_custom_plan".to_owned(),)]);
    }
    test_db.db.close().await;
}

/// Of many concurrent spends of one DPoP proof exactly one is new (they share a batch on
/// Postgres); proofs of other apps or other `jti`s are their own; a proof is remembered until
/// its time, then forgotten by the purge.
async fn a_dpop_proof_is_spent_once_even_by_concurrent_renews(db: Backend) {
    const SPENDS: usize = 30;
    let f = fixture(db).await;
    let (other_app, _) = f.new_app("other").await;
    let proof = [7u8; 32];
    let until = NOW + 61;
    let start = Arc::new(tokio::sync::Barrier::new(SPENDS));
    let tasks: Vec<_> = (0..SPENDS)
        .map(|_| {
            let (store, start, app_id) = (f.store.clone(), start.clone(), f.app_id);
            tokio::spawn(async move {
                start.wait().await;
                store.spend_proof(app_id, proof, until, NOW).await.unwrap()
            })
        })
        .collect();
    let mut new = 0;
    for task in tasks {
        new += usize::from(task.await.unwrap());
    }
    assert_eq!(new, 1, "one of {SPENDS} concurrent spends of one proof is new");
    assert!(!f.store.spend_proof(f.app_id, proof, until, NOW + 30).await.unwrap(), "a replay");
    assert!(f.store.spend_proof(other_app, proof, until, NOW).await.unwrap(), "another app's");
    assert!(f.store.spend_proof(f.app_id, [8u8; 32], until, NOW).await.unwrap(), "another jti");

    // Past its time the purge forgets it; until then it stays.
    f.store.purge_proofs(until - 1).await.unwrap();
    assert!(!f.store.spend_proof(f.app_id, proof, until, NOW + 30).await.unwrap());
    f.store.purge_proofs(until).await.unwrap();
    assert!(f.store.spend_proof(f.app_id, proof, until + 100, until).await.unwrap());
}

/// A rotation that carries a DPoP proof swaps only if the proof was never spent, and spends
/// it exactly when it swaps (on Postgres in the batch's statement itself, on SQLite around
/// it): a swap lost to a stale jid leaves the proof unspent, for the renew's verified path.
async fn a_rotation_with_a_proof_swaps_only_if_the_proof_is_new_and_spends_it_only_if_it_swaps(
    db: Backend,
) {
    let f = fixture(db).await;
    let (a, b) = (f.session("alice", NOW), f.session("bob", NOW));
    f.create(&a).await;
    f.create(&b).await;
    let until = NOW + 61;
    let with_proof = |jti: u8, new_jid| Rotation {
        proof: Some(([jti; 32], until)),
        ..rotation(new_jid, f.key_id)
    };

    // A new proof: the swap happens and the proof is spent.
    let j1 = Jid::new();
    let rotated =
        f.store.rotate(f.app_id, a.session_id, a.current_jid, &with_proof(1, j1), NOW).await;
    assert_eq!(rotated.unwrap().map(|s| s.current_jid), Some(j1));
    assert!(
        !f.store.spend_proof(f.app_id, [1; 32], until, NOW).await.unwrap(),
        "spent by the swap"
    );

    // The same proof again, for a swap that would otherwise happen: no swap.
    let again = with_proof(1, Jid::new());
    let r = f.store.rotate(f.app_id, b.session_id, b.current_jid, &again, NOW).await;
    assert_eq!(r.unwrap(), None);
    assert_eq!(f.get(b.session_id).await, b, "nothing changed");

    // A new proof with a stale jid: no swap, and the proof is not spent.
    let stale = with_proof(2, Jid::new());
    let r = f.store.rotate(f.app_id, a.session_id, a.current_jid, &stale, NOW).await;
    assert_eq!(r.unwrap(), None);
    assert!(f.store.spend_proof(f.app_id, [2; 32], until, NOW).await.unwrap(), "not spent");

    // Concurrent rotations of one session with one new proof: one swaps, the proof is spent.
    let start = Arc::new(tokio::sync::Barrier::new(10));
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let (store, start, key_id) = (f.store.clone(), start.clone(), f.key_id);
            let (app_id, session_id, expected) = (f.app_id, b.session_id, b.current_jid);
            tokio::spawn(async move {
                let r = Rotation { proof: Some(([3; 32], until)), ..rotation(Jid::new(), key_id) };
                start.wait().await;
                store.rotate(app_id, session_id, expected, &r, NOW).await.unwrap().is_some()
            })
        })
        .collect();
    let mut swapped = 0;
    for task in tasks {
        swapped += usize::from(task.await.unwrap());
    }
    assert_eq!(swapped, 1);
    assert!(!f.store.spend_proof(f.app_id, [3; 32], until, NOW).await.unwrap(), "spent");
}
