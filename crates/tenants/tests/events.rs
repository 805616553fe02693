//! The event store: recording, paging, the delivery outbox (claims, leases, settling), the
//! webhook rows, and retention. SQLite always; Postgres when `TEST_DATABASE_URL` is set.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use keygate_store::Backend;
use keygate_tenants::events::{event_store, Delivery, Event, Webhook};
use keygate_tenants::{app_store, AppId, KeyHashKey, Tenants, TenantsConfig};
use serde_json::json;

const NOW: i64 = 1_700_000_000;

keygate_store::store_cases!(
    events_page_newest_first_per_app,
    only_events_of_an_app_with_a_webhook_are_queued,
    a_claim_holds_an_event_for_its_lease,
    settled_events_leave_the_queue,
    webhooks_are_set_replaced_resealed_and_removed,
    retention_deletes_old_events_only,
);

async fn new_app(db: &Backend) -> AppId {
    let tenants =
        Tenants::new(app_store(db), TenantsConfig::new(KeyHashKey::from_bytes(&[7; 32]).unwrap()));
    let (record, _) = tenants
        .create_app(&format!("app-{}", AppId::new()), &Default::default(), NOW)
        .await
        .unwrap();
    record.app.app_id
}

fn event(app_id: AppId, kind: &str, at: i64) -> Event {
    Event {
        event_id: keygate_kernel::EventId::new_monotonic().to_string(),
        app_id: app_id.to_string(),
        kind: kind.to_owned(),
        actor: "root".to_owned(),
        detail: json!({"n": at}),
        created_at: at,
    }
}

fn webhook(app_id: AppId, url: &str) -> Webhook {
    Webhook {
        app_id,
        url: url.to_owned(),
        sealed_secret: vec![1, 2, 3],
        master_key_id: "mk1".into(),
        created_at: NOW,
    }
}

async fn events_page_newest_first_per_app(db: Backend) {
    let store = event_store(&db);
    let (a, b) = (new_app(&db).await, new_app(&db).await);
    let mut recorded = Vec::new();
    for i in 0..5 {
        let e = event(a, "app_updated", NOW + i);
        store.record(&e).await.unwrap();
        recorded.push(e);
    }
    store.record(&event(b, "app_created", NOW)).await.unwrap();
    let page = store.list(a, None, None, 3).await.unwrap();
    let ids: Vec<_> = page.iter().map(|e| e.event_id.clone()).collect();
    let want: Vec<_> = recorded.iter().rev().take(3).map(|e| e.event_id.clone()).collect();
    assert_eq!(ids, want);
    assert_eq!(page[0], recorded[4], "every field round-trips");
    let rest = store.list(a, Some(&ids[2]), None, 3).await.unwrap();
    assert_eq!(rest.len(), 2);
    assert_eq!(rest[1].event_id, recorded[0].event_id);
    assert_eq!(store.list(b, None, None, 10).await.unwrap().len(), 1, "scoped to the app");
}

async fn only_events_of_an_app_with_a_webhook_are_queued(db: Backend) {
    let store = event_store(&db);
    let (hooked, plain) = (new_app(&db).await, new_app(&db).await);
    store.set_webhook(&webhook(hooked, "https://h.example/")).await.unwrap();
    store.record(&event(hooked, "key_rotated", NOW)).await.unwrap();
    store.record(&event(plain, "key_rotated", NOW)).await.unwrap();
    let claimed = store.claim(NOW, 30, 10).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].event.app_id, hooked.to_string());
    assert_eq!(claimed[0].attempts, 1);
}

async fn a_claim_holds_an_event_for_its_lease(db: Backend) {
    let store = event_store(&db);
    let app = new_app(&db).await;
    store.set_webhook(&webhook(app, "https://h.example/")).await.unwrap();
    store.record(&event(app, "key_revoked", NOW)).await.unwrap();
    assert_eq!(store.claim(NOW, 30, 10).await.unwrap().len(), 1);
    assert!(store.claim(NOW + 29, 30, 10).await.unwrap().is_empty(), "held by the lease");
    // A claimer that died leaves the event to the next one after the lease.
    let again = store.claim(NOW + 30, 30, 10).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].attempts, 2);
}

async fn settled_events_leave_the_queue(db: Backend) {
    let store = event_store(&db);
    let app = new_app(&db).await;
    store.set_webhook(&webhook(app, "https://h.example/")).await.unwrap();
    for i in 0..4 {
        store.record(&event(app, "app_updated", NOW + i)).await.unwrap();
    }
    let claimed = store.claim(NOW + 10, 30, 10).await.unwrap();
    assert_eq!(claimed.len(), 4);
    let ids: Vec<_> = claimed.iter().map(|c| c.event.event_id.clone()).collect();
    store.settle(&ids[0], Delivery::Delivered).await.unwrap();
    store.settle(&ids[1], Delivery::Failed).await.unwrap();
    store.settle(&ids[2], Delivery::Dropped).await.unwrap();
    store.settle(&ids[3], Delivery::RetryAt(NOW + 100)).await.unwrap();
    assert!(store.claim(NOW + 99, 30, 10).await.unwrap().is_empty(), "not due yet");
    let retried = store.claim(NOW + 100, 30, 10).await.unwrap();
    assert_eq!(retried.len(), 1, "only the retry comes back");
    assert_eq!(retried[0].event.event_id, ids[3]);
}

async fn webhooks_are_set_replaced_resealed_and_removed(db: Backend) {
    let store = event_store(&db);
    let app = new_app(&db).await;
    assert!(store.webhook(app).await.unwrap().is_none());
    let unknown = store.set_webhook(&webhook(AppId::new(), "https://x.example/")).await;
    assert!(matches!(unknown, Err(keygate_tenants::StoreError::NotFound)), "{unknown:?}");
    store.set_webhook(&webhook(app, "https://one.example/")).await.unwrap();
    store.set_webhook(&webhook(app, "https://two.example/")).await.unwrap();
    assert_eq!(store.webhook(app).await.unwrap().unwrap().url, "https://two.example/");
    assert_eq!(store.webhooks().await.unwrap().len(), 1);
    // Compare-and-swap on the sealed bytes.
    assert!(!store.reseal_webhook(app, &[9], &[4, 5], "mk2").await.unwrap());
    assert!(store.reseal_webhook(app, &[1, 2, 3], &[4, 5], "mk2").await.unwrap());
    let now = store.webhook(app).await.unwrap().unwrap();
    assert_eq!((now.sealed_secret, now.master_key_id.as_str()), (vec![4, 5], "mk2"));
    assert!(store.delete_webhook(app).await.unwrap());
    assert!(!store.delete_webhook(app).await.unwrap());
}

async fn retention_deletes_old_events_only(db: Backend) {
    let store = event_store(&db);
    let app = new_app(&db).await;
    store.record(&event(app, "app_created", NOW - 100)).await.unwrap();
    store.record(&event(app, "app_updated", NOW)).await.unwrap();
    assert_eq!(store.purge(NOW - 50).await.unwrap(), 1);
    let left = store.list(app, None, None, 10).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].kind, "app_updated");
}
