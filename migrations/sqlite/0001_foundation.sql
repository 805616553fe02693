-- Apps, their signing keys, and instance-wide settings (root key hash, master key id).
-- Times are Unix seconds.

CREATE TABLE settings (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE apps (
    app_id                  TEXT PRIMARY KEY,
    name                    TEXT NOT NULL UNIQUE,
    issuer                  TEXT NOT NULL,
    audience                TEXT NOT NULL,
    token_expire            INTEGER NOT NULL,
    token_notbefore         INTEGER NOT NULL,
    refresh_expire          INTEGER NOT NULL,
    refresh_notbefore       INTEGER NOT NULL,
    session_max_age         INTEGER NOT NULL,
    reuse_grace             INTEGER NOT NULL,
    rotation_period         INTEGER NOT NULL,
    max_sessions_per_sub    INTEGER NOT NULL,
    refresh_rotation        BOOLEAN NOT NULL,
    on_reuse                TEXT NOT NULL CHECK (on_reuse IN ('revoke_session', 'revoke_subject')),
    app_key_hash            TEXT NOT NULL,
    prev_app_key_hash       TEXT,
    prev_app_key_expires_at INTEGER,
    created_at              INTEGER NOT NULL,
    updated_at              INTEGER NOT NULL
);

-- ES256 signing keys. The private key is sealed (AES-256-GCM) under the master key.
CREATE TABLE app_keys (
    key_id         TEXT PRIMARY KEY,
    app_id         TEXT NOT NULL REFERENCES apps (app_id) ON DELETE CASCADE,
    state          TEXT NOT NULL CHECK (state IN ('next', 'active', 'retired', 'revoked')),
    public_pem     TEXT NOT NULL,
    sealed_private BLOB NOT NULL,
    master_key_id  TEXT NOT NULL,
    created_at     INTEGER NOT NULL,
    activated_at   INTEGER,
    retired_at     INTEGER,
    revoked_at     INTEGER
);

CREATE INDEX app_keys_by_app ON app_keys (app_id);
CREATE UNIQUE INDEX app_keys_one_active ON app_keys (app_id) WHERE state = 'active';
CREATE UNIQUE INDEX app_keys_one_next ON app_keys (app_id) WHERE state = 'next';
