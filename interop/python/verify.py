#!/usr/bin/env python3
"""Verify tokens issued by a real keygate with PyJWT (+ cryptography).

Usage: verify.py FIXTURE_DIR [-v]

FIXTURE_DIR is written by interop/run.sh and holds:
  expect.json  what the tokens must say: {"issuer", "audience", "sub", "roles"}
  tokens.json  [{"step": "sign"|"renew", "request": {...}, "response": <token response>}]
               exactly as keygate returned them
  jwks.json    the body of GET /app/{id}/jwks.json

Every check prints nothing when it passes (unless -v) and one FAIL line when it
fails. The last line is "<summary>: N passed, M failed"; the exit code is 0 only if
M == 0.
"""

import base64
import binascii
import json
import re
import sys
from pathlib import Path

import cryptography
import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from checks import CheckFailed, Checks, expect  # interop/python/checks.py, beside this file
from jwt.exceptions import (
    InvalidAudienceError,
    InvalidIssuerError,
    InvalidSignatureError,
    MissingRequiredClaimError,
)

ALGORITHMS = ["ES256"]
REQUIRED = ["iss", "aud", "exp"]
ULID = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}$")
AUTH_CLAIMS = {"iss", "sub", "aud", "iat", "nbf", "exp", "jid", "sid", "ip", "useragent"}


def expect_rejected(fn, error_type, what):
    """fn must raise error_type; anything else (or success) is a failure."""
    try:
        fn()
    except error_type as e:
        return e
    except Exception as e:  # rejected, but for the wrong reason
        raise CheckFailed(f"{what}: expected {error_type.__name__}, got {type(e).__name__}: {e}")
    raise CheckFailed(f"{what}: was accepted")


def b64url_decode(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def b64url_encode(b):
    return base64.urlsafe_b64encode(bytes(b)).rstrip(b"=").decode("ascii")


def flip_payload_byte(token):
    """Flip the low bit of one payload byte (the last character of the `sub` value),
    so the payload is still valid JSON with valid claims and only the signature is wrong."""
    header, payload, signature = token.split(".")
    raw = bytearray(b64url_decode(payload))
    start = raw.index(b'"sub":"') + len(b'"sub":"')
    last = raw.index(b'"', start) - 1
    expect(last >= start, "token has an empty sub; cannot pick a byte to flip")
    raw[last] ^= 0x01
    json.loads(raw)  # still a well-formed claims set
    tampered = ".".join([header, b64url_encode(raw), signature])
    expect(tampered != token, "tampering did not change the token")
    return tampered


class Verifier(Checks):
    def __init__(self, fixture_dir, verbose):
        super().__init__(verbose)
        d = Path(fixture_dir)
        self.expect = json.loads((d / "expect.json").read_text())
        self.steps = json.loads((d / "tokens.json").read_text())
        self.jwks = json.loads((d / "jwks.json").read_text())

    # -- keys ----------------------------------------------------------------

    @staticmethod
    def pem_of(response):
        """The PEM from the token response's base64 `public_key`."""
        try:
            pem = base64.b64decode(response["public_key"], validate=True)
        except binascii.Error as e:
            raise CheckFailed(f"public_key is not valid base64: {e}")
        expect(pem.startswith(b"-----BEGIN PUBLIC KEY-----"), "public_key is not an SPKI PEM")
        return pem

    def jwk_for(self, token):
        kid = jwt.get_unverified_header(token).get("kid")
        matches = [k for k in self.jwks.get("keys", []) if k.get("kid") == kid]
        expect(len(matches) == 1, f"JWKS has {len(matches)} keys with kid {kid!r}")
        return jwt.PyJWK(matches[0])

    # -- decoding ------------------------------------------------------------

    def decode(self, token, key, *, audience=None, issuer=None):
        return jwt.decode(
            token,
            key,
            algorithms=ALGORITHMS,
            audience=audience or self.expect["audience"],
            issuer=issuer or self.expect["issuer"],
            options={"require": REQUIRED},
        )

    def check_auth_claims(self, token, claims, step):
        req, resp = step["request"], step["response"]
        header = jwt.get_unverified_header(token)
        expect(header.get("alg") == "ES256", f"header alg {header.get('alg')!r}")
        expect(header.get("typ") == "JWT", f"header typ {header.get('typ')!r}")
        expect(header.get("kid") == resp["key_id"], f"header kid {header.get('kid')!r} != key_id {resp['key_id']!r}")
        missing = AUTH_CLAIMS - claims.keys()
        expect(not missing, f"missing claims {sorted(missing)}")
        expect(claims["sub"] == self.expect["sub"], f"sub {claims['sub']!r}")
        expect(claims.get("roles") == self.expect["roles"], f"roles {claims.get('roles')!r}")
        expect(claims["ip"] == req["ip"], f"ip {claims['ip']!r} != request ip {req['ip']!r}")
        expect(claims["useragent"] == req["useragent"], f"useragent {claims['useragent']!r}")
        expect(claims["sid"] == resp["session_id"], f"sid {claims['sid']!r} != session_id")
        expect(ULID.match(claims["jid"]), f"jid {claims['jid']!r} is not a ULID")
        expect(claims["exp"] - claims["iat"] == resp["expires_in"],
               f"exp - iat = {claims['exp'] - claims['iat']} != expires_in {resp['expires_in']}")
        expect(claims["iat"] <= claims["nbf"] < claims["exp"], "nbf outside [iat, exp)")

    # -- the checks ----------------------------------------------------------

    def run(self):
        expect(len(self.steps) >= 1, "tokens.json holds no token responses")

        for step in self.steps:
            label, resp = step["step"], step["response"]
            auth, refresh = resp["auth_token"], resp["refresh_token"]

            def valid_pem(step=step, auth=auth, resp=resp):
                claims = self.decode(auth, self.pem_of(resp))
                self.check_auth_claims(auth, claims, step)

            def valid_jwks(step=step, auth=auth):
                claims = self.decode(auth, self.jwk_for(auth))
                self.check_auth_claims(auth, claims, step)

            def tampered_pem(auth=auth, resp=resp):
                bad = flip_payload_byte(auth)
                expect_rejected(lambda: self.decode(bad, self.pem_of(resp)),
                                InvalidSignatureError, "tampered token")

            def tampered_jwks(auth=auth):
                bad = flip_payload_byte(auth)
                expect_rejected(lambda: self.decode(bad, self.jwk_for(auth)),
                                InvalidSignatureError, "tampered token")

            def wrong_aud(auth=auth, resp=resp):
                expect_rejected(
                    lambda: self.decode(auth, self.pem_of(resp), audience=self.expect["audience"] + "-other"),
                    InvalidAudienceError, "token for another audience")

            def wrong_iss(auth=auth, resp=resp):
                expect_rejected(
                    lambda: self.decode(auth, self.pem_of(resp), issuer=self.expect["issuer"] + ".evil"),
                    InvalidIssuerError, "token from another issuer")

            def refresh_needs_aud(refresh=refresh, resp=resp):
                e = expect_rejected(lambda: self.decode(refresh, self.pem_of(resp)),
                                    MissingRequiredClaimError, "refresh token as auth token")
                expect(e.claim == "aud", f"rejected for missing {e.claim!r}, not 'aud'")

            def refresh_signature(refresh=refresh, resp=resp):
                # Positive control: the refresh token is a genuine token of this key;
                # it is refused above only because it has no aud.
                claims = jwt.decode(refresh, self.pem_of(resp), algorithms=ALGORITHMS,
                                    issuer=self.expect["issuer"],
                                    options={"require": ["iss", "exp"], "verify_aud": False})
                expect(claims.get("type") == "refresh", f"type {claims.get('type')!r}")
                expect("aud" not in claims and "sub" not in claims, "refresh token carries aud or sub")
                expect(claims.get("sid") == resp["session_id"], "refresh sid != session_id")
                expect(jwt.get_unverified_header(refresh).get("kid") == resp["key_id"], "refresh kid != key_id")

            self.check(f"{label}: auth token verifies with public_key PEM", valid_pem)
            self.check(f"{label}: auth token verifies with JWKS key by kid", valid_jwks)
            self.check(f"{label}: flipped payload byte rejected (PEM)", tampered_pem)
            self.check(f"{label}: flipped payload byte rejected (JWKS)", tampered_jwks)
            self.check(f"{label}: wrong audience rejected", wrong_aud)
            self.check(f"{label}: wrong issuer rejected", wrong_iss)
            self.check(f"{label}: refresh token rejected when aud is required", refresh_needs_aud)
            self.check(f"{label}: refresh token signature valid, type=refresh, no sub/aud", refresh_signature)

        def jwks_shape():
            keys = self.jwks.get("keys")
            expect(isinstance(keys, list) and keys, "JWKS has no keys")
            kids = [k.get("kid") for k in keys]
            expect(len(set(kids)) == len(kids), "duplicate kids in JWKS")
            for k in keys:
                expect(k.get("kty") == "EC" and k.get("crv") == "P-256", f"{k.get('kid')}: not an EC P-256 key")
                expect(k.get("alg") == "ES256" and k.get("use") == "sig", f"{k.get('kid')}: alg/use")
                expect("d" not in k, f"{k.get('kid')}: JWKS exposes private material")
                key = jwt.PyJWK(k).key
                expect(isinstance(key, ec.EllipticCurvePublicKey), f"{k.get('kid')}: not a public key")

        def pem_matches_jwks():
            for step in self.steps:
                resp = step["response"]
                pem_key = load_pem_public_key(self.pem_of(resp))
                expect(isinstance(pem_key, ec.EllipticCurvePublicKey)
                       and pem_key.curve.name == "secp256r1", "public_key is not a P-256 key")
                jwk_key = self.jwk_for(resp["auth_token"]).key
                expect(pem_key.public_numbers() == jwk_key.public_numbers(),
                       f"{step['step']}: public_key PEM and JWKS key {resp['key_id']} differ")

        def renew_rotated():
            expect(len(self.steps) >= 2, "no renewed token to compare")
            first, last = self.steps[0]["response"], self.steps[-1]["response"]
            a = jwt.decode(first["auth_token"], options={"verify_signature": False})
            b = jwt.decode(last["auth_token"], options={"verify_signature": False})
            ra = jwt.decode(first["refresh_token"], options={"verify_signature": False})
            rb = jwt.decode(last["refresh_token"], options={"verify_signature": False})
            expect(a["sid"] == b["sid"], "renew changed the session id")
            expect(a["jid"] != b["jid"], "renewed auth token reuses the jid")
            expect(ra["jid"] != rb["jid"], "renew did not rotate the refresh token jid")

        self.check("JWKS: EC P-256 ES256 signing keys, unique kids, no private members", jwks_shape)
        self.check("public_key PEM equals the JWKS key with the same kid", pem_matches_jwks)
        self.check("renew kept the session and rotated jids", renew_rotated)


def main(argv):
    args = [a for a in argv[1:] if a != "-v"]
    if len(args) != 1:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    v = Verifier(args[0], verbose="-v" in argv[1:])
    try:
        v.run()
    except Exception as e:  # the fixture itself is unusable
        v.failed += 1
        print(f"  FAIL fixture: {type(e).__name__}: {e}")
    print(f"python  (PyJWT {jwt.__version__}, cryptography {cryptography.__version__}): "
          f"{v.passed} passed, {v.failed} failed")
    return 0 if v.failed == 0 and v.passed > 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
