-- DPoP (RFC 9449): whether an app's sessions may or must be bound to a key of the user's
-- device, whether proofs must carry a nonce from the gateway, and whether the token endpoint
-- takes public clients (client_id without a secret) for bound sessions. A session's binding
-- is in its claims (cnf.jkt), not in a column.
ALTER TABLE apps ADD COLUMN dpop TEXT NOT NULL DEFAULT 'off'
    CHECK (dpop IN ('off', 'allowed', 'required'));
ALTER TABLE apps ADD COLUMN dpop_nonce BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE apps ADD COLUMN oauth_public_clients BOOLEAN NOT NULL DEFAULT FALSE;

-- The DPoP proofs accepted, by the SHA-256 of their jti, until their iat window has passed:
-- a proof seen by one gateway is refused as a replay by every other. The janitor deletes
-- rows past expires_at. Unlogged: its writes go to no WAL, so their commits wait for no
-- disk flush and no synchronous standby; a crash or a failover of the database empties
-- it, which forgets proofs at most a minute old (each still needs its session's current
-- refresh token, which its first use spent).
CREATE UNLOGGED TABLE dpop_proofs (
    app_id TEXT NOT NULL,
    jti_digest BYTEA NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (app_id, jti_digest)
);
CREATE INDEX dpop_proofs_expires_at ON dpop_proofs (expires_at);
