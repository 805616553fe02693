-- Which profile an app's tokens follow: 'keygate' (JOSE typ JWT, keygate's claims), or
-- 'rfc9068' (auth tokens typed at+jwt with client_id and jti, refresh tokens typed
-- refresh+jwt). Existing apps keep keygate's tokens.
ALTER TABLE apps ADD COLUMN access_token_profile TEXT NOT NULL DEFAULT 'keygate'
    CHECK (access_token_profile IN ('keygate', 'rfc9068'));
