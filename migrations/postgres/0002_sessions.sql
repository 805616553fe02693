-- Sessions: one row per refresh-token family. Storage grows with live sessions, not with
-- renewals: a renew rewrites the row. Times are Unix seconds.
CREATE TABLE sessions (
    session_id      TEXT PRIMARY KEY,
    app_id          TEXT NOT NULL REFERENCES apps (app_id) ON DELETE CASCADE,
    sub             TEXT NOT NULL,
    -- The claims re-issued in every auth token of the session: aud and custom claims (JSON).
    claims          TEXT NOT NULL,
    created_at      BIGINT NOT NULL,
    -- Absolute expiry: created_at + session_max_age.
    expires_at      BIGINT NOT NULL,
    -- The one refresh token of the session that renews (rotates).
    current_jid     TEXT NOT NULL,
    current_iat     BIGINT NOT NULL,
    current_exp     BIGINT NOT NULL,
    key_id          TEXT NOT NULL,
    -- The token it replaced, accepted as an idempotent retry within the reuse grace.
    prev_jid        TEXT,
    rotated_at      BIGINT,
    ip              TEXT NOT NULL,
    useragent       TEXT NOT NULL,
    last_renewed_at BIGINT NOT NULL,
    revoked_at      BIGINT,
    revoked_reason  TEXT
);

CREATE INDEX sessions_by_subject ON sessions (app_id, sub, created_at);
CREATE INDEX sessions_by_expiry ON sessions (expires_at);
