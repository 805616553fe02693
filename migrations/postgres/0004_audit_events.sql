-- Security events of each app (reuse detected, revocations, key and app-key rotations, app
-- changes), kept after the app is deleted. `delivery` tracks the app's webhook, if it had
-- one when the event was recorded: 'pending' until delivered, or 'failed' after the last
-- attempt. `detail` is a JSON object.
CREATE TABLE audit_events (
    event_id        TEXT PRIMARY KEY,
    app_id          TEXT NOT NULL,
    kind            TEXT NOT NULL,
    actor           TEXT NOT NULL,
    detail          TEXT NOT NULL,
    created_at      BIGINT NOT NULL,
    delivery        TEXT NOT NULL CHECK (delivery IN ('none', 'pending', 'delivered', 'failed')),
    attempts        BIGINT NOT NULL,
    next_attempt_at BIGINT NOT NULL
);

CREATE INDEX audit_events_by_app ON audit_events (app_id, event_id);
CREATE INDEX audit_events_pending ON audit_events (next_attempt_at) WHERE delivery = 'pending';

-- An app's webhook: where its events are posted, and the secret (sealed under the master
-- key, like a private signing key) that signs them with HMAC-SHA256.
CREATE TABLE app_webhooks (
    app_id        TEXT PRIMARY KEY REFERENCES apps (app_id) ON DELETE CASCADE,
    url           TEXT NOT NULL,
    sealed_secret BYTEA NOT NULL,
    master_key_id TEXT NOT NULL,
    created_at    BIGINT NOT NULL
);
