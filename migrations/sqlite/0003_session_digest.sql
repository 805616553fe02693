-- SHA-256 of the session's current refresh token exactly as keygate issued it. A renew
-- that presents those exact bytes is authenticated by the match and needs no ECDSA
-- verification; anything else (NULL here, a token re-signed by a grace retry) is
-- verified by signature first.
ALTER TABLE sessions ADD COLUMN current_digest BLOB;
