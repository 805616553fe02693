-- DPoP (RFC 9449): whether an app's sessions may or must be bound to a key of the user's
-- device, whether proofs must carry a nonce from the gateway, and whether the token endpoint
-- takes public clients (client_id without a secret) for bound sessions. A session's binding
-- is in its claims (cnf.jkt), not in a column. The proofs seen (their jti, against replay)
-- are kept in the gateway's memory on SQLite, where one gateway owns the database; on
-- PostgreSQL they are in the table dpop_proofs, which every gateway sees.
ALTER TABLE apps ADD COLUMN dpop TEXT NOT NULL DEFAULT 'off'
    CHECK (dpop IN ('off', 'allowed', 'required'));
ALTER TABLE apps ADD COLUMN dpop_nonce BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE apps ADD COLUMN oauth_public_clients BOOLEAN NOT NULL DEFAULT FALSE;
