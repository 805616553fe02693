#!/usr/bin/env python3
"""keygate's OAuth 2.0 endpoints, driven by Authlib's requests client (OAuth2Session)
against a live gateway, and its RFC 9068 access tokens verified with PyJWT.

Usage: authlib_client.py CONFIG_JSON [-v]

CONFIG_JSON is written by interop/oauth/run.sh:
  {"backend": "sqlite"|"postgres", "public_url": "http://127.0.0.1:PORT",
   "apps": {"keygate": APP, "rfc9068": APP}}
  APP = {"app_id", "app_key", "issuer" (= public_url/app/app_id), "audience"}

Sessions are opened here with POST /app/{id}/sign (the app backend's call); everything
after that goes through OAuth2Session: refresh_token(), ensure_active_token() (also through
a request with an expired token), introspect_token(), revoke_token().

Every check prints nothing when it passes (unless -v) and one FAIL line when it fails. The
last line is "<summary>: N passed, M failed"; the exit code is 0 only if M == 0.
"""

import base64
import json
import platform
import sys
import time
from pathlib import Path
from importlib.metadata import version
from urllib.parse import parse_qsl

import jwt
import requests
from authlib.integrations.requests_client import OAuth2Session, OAuthError

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "python"))
from checks import CheckFailed, Checks, expect, expect_equal  # noqa: E402 (interop/python/checks.py)

CHAIN = 20
WRONG_KEY = "kg_" + "A" * 43
# The challenge of a 401 invalid_client on a request that used the Authorization header.
CHALLENGE = 'Basic realm="keygate"'
# What requests sends as User-Agent, and so what keygate records as the renew's `useragent`
# (the token endpoint takes the request's User-Agent header).
USER_AGENT = requests.utils.default_user_agent()
ACCESS_MEMBERS = ["active", "aud", "client_id", "exp", "iat", "iss", "jti", "nbf", "sid", "sub",
                  "token_type", "token_use"]
REFRESH_MEMBERS = ["active", "client_id", "exp", "iat", "iss", "jti", "nbf", "sid", "sub",
                   "token_type", "token_use"]


def expect_oauth_error(fn, error, what):
    """fn must raise Authlib's OAuthError with this error code."""
    try:
        result = fn()
    except OAuthError as e:
        expect(e.error == error, f"{what}: got {e.error} ({e.description}), want {error}")
        return e
    except Exception as e:
        raise CheckFailed(f"{what}: expected OAuthError {error}, got {type(e).__name__}: {e}")
    raise CheckFailed(f"{what}: was accepted" + (f": {sorted(result)}" if isinstance(result, dict) else ""))


def claims_of(token):
    return jwt.decode(token, options={"verify_signature": False})


def expect_no_store(response, what):
    got = (response.headers.get("Cache-Control"), response.headers.get("Pragma"))
    expect_equal(got, ("no-store", "no-cache"), f"{what}: Cache-Control, Pragma")


def expect_client_auth(request, method, app, what):
    """Authlib's encoding: Basic over the raw id:secret (keygate's ids and app keys are
    URL-safe, so that equals RFC 6749's form-urlencoded form), or the body parameters."""
    raw_body = request.body or ""
    body = dict(parse_qsl(raw_body.decode() if isinstance(raw_body, bytes) else raw_body))
    authz = request.headers.get("Authorization")
    if method == "client_secret_basic":
        raw = f"{app['app_id']}:{app['app_key']}".encode()
        expect_equal(authz, "Basic " + base64.b64encode(raw).decode(), f"{what}: Authorization")
        expect("client_secret" not in body, f"{what}: client_secret in the body as well")
    else:
        expect(authz is None, f"{what}: an Authorization header with client_secret_post")
        expect_equal((body.get("client_id"), body.get("client_secret")),
                     (app["app_id"], app["app_key"]), f"{what}: client_id, client_secret")
    expect_equal(request.headers.get("User-Agent"), USER_AGENT, f"{what}: User-Agent")


def verify_access_token(token, jwks, app):
    """What a resource server does with an RFC 9068 access token (RFC 8725 §3.11: check typ,
    which PyJWT leaves to the caller)."""
    if jwt.get_unverified_header(token).get("typ") != "at+jwt":
        raise jwt.InvalidTokenError("not an at+jwt access token")
    key = jwks.get_signing_key_from_jwt(token)
    return jwt.decode(token, key, algorithms=["ES256"], issuer=app["issuer"],
                      audience=app["audience"],
                      options={"require": ["exp", "iat", "sub", "client_id", "jti"]})


class Client(Checks):
    def __init__(self, config, verbose):
        super().__init__(verbose)
        self.config = config
        self.public_url = config["public_url"]
        self.app = config["apps"]["keygate"]
        self.at_app = config["apps"]["rfc9068"]
        self.wire = []  # (auth method, response with its .request) of every OAuth2Session

    # ---- helpers ------------------------------------------------------------

    def sign(self, app, sub):
        """The app backend opens a session (keygate's own API, not OAuth)."""
        r = requests.post(f"{self.public_url}/app/{app['app_id']}/sign",
                          headers={"Authorization": f"Bearer {app['app_key']}"},
                          json={"sub": sub, "ip": "203.0.113.7",
                                "useragent": "keygate-oauth-interop/1.0"},
                          timeout=10)
        if r.status_code != 200:
            raise RuntimeError(f"POST /app/{app['app_id']}/sign: HTTP {r.status_code}: {r.text}")
        return r.json()

    def metadata(self, app):
        r = requests.get(f"{self.public_url}/.well-known/oauth-authorization-server/app/{app['app_id']}",
                         timeout=10)
        r.raise_for_status()
        return r.json()

    def expected_metadata(self, app):
        p = f"{self.public_url}/app/{app['app_id']}"
        methods = ["client_secret_basic", "client_secret_post"]
        return {
            "issuer": p,
            "token_endpoint": f"{p}/oauth/token",
            "revocation_endpoint": f"{p}/oauth/revoke",
            "introspection_endpoint": f"{p}/oauth/introspect",
            "jwks_uri": f"{p}/jwks.json",
            "grant_types_supported": ["refresh_token"],
            "response_types_supported": [],
            "token_endpoint_auth_methods_supported": methods,
            "revocation_endpoint_auth_methods_supported": methods,
            "introspection_endpoint_auth_methods_supported": methods,
        }

    def session(self, app, method, signed=None, client_secret=None, updates=None):
        """An OAuth2Session for the app, holding the token pair of a /sign answer marked as
        expired (expires_at in the past), so that Authlib refreshes it when asked."""
        meta = self.expected_metadata(app)
        token = None
        if signed is not None:
            token = {"access_token": signed["auth_token"], "refresh_token": signed["refresh_token"],
                     "token_type": "Bearer", "expires_at": int(time.time()) - 60}

        def update_token(token, refresh_token=None, access_token=None):
            if updates is not None:
                updates.append((token, refresh_token))

        client = OAuth2Session(
            client_id=app["app_id"],
            client_secret=client_secret or app["app_key"],
            token_endpoint_auth_method=method,        # client_secret_basic or client_secret_post
            revocation_endpoint_auth_method=method,
            token_endpoint=meta["token_endpoint"],    # where ensure_active_token() refreshes
            token=token,
            update_token=update_token,
        )
        tag = method if client_secret is None else "wrong-secret"
        client.hooks["response"].append(lambda r, *args, **kwargs: self.wire.append((tag, r)))
        return client

    # ---- checks -------------------------------------------------------------

    def run(self):
        app = self.app

        def metadata_documents():
            a = requests.get(f"{self.public_url}/.well-known/oauth-authorization-server/app/{app['app_id']}", timeout=10)
            b = requests.get(f"{app['issuer']}/.well-known/oauth-authorization-server", timeout=10)
            for r in (a, b):
                expect_equal(r.status_code, 200, f"GET {r.url}")
                expect_equal(r.json(), self.expected_metadata(app), f"GET {r.url}")
                expect_equal(r.headers.get("Cache-Control"), "public, max-age=300", f"GET {r.url}: Cache-Control")

        self.check("metadata: the RFC 8414 URL and the app's well-known URL answer the document", metadata_documents)

        def metadata_unknown_app():
            r = requests.get(f"{self.public_url}/app/01ARZ3NDEKTSV4RRFFQ69G5FAV/.well-known/oauth-authorization-server", timeout=10)
            expect_equal(r.status_code, 404, "status")
            expect_equal(r.json().get("error"), "not_found", "error")

        self.check("metadata: an unknown app gets 404 not_found", metadata_unknown_app)

        meta = self.expected_metadata(app)
        for method in ("client_secret_basic", "client_secret_post"):
            tag = method.replace("client_secret_", "")
            self.method_checks(app, meta, method, tag)
        self.rfc9068_checks()

    def method_checks(self, app, meta, method, tag):
        def refresh_token():
            signed = self.sign(app, f"authlib-{tag}-refresh")
            client = self.session(app, method, signed)
            token = client.refresh_token(meta["token_endpoint"])
            response = self.wire[-1][1]
            expect_equal((response.request.method, response.request.url, response.status_code),
                         ("POST", meta["token_endpoint"], 200), "request")
            expect_equal(sorted(response.json()), ["access_token", "expires_in", "refresh_token", "token_type"], "members")
            expect_equal(token["token_type"], "Bearer", "token_type")
            expect(token["refresh_token"] != signed["refresh_token"], "the refresh token did not rotate")
            expect(client.token["access_token"] == token["access_token"], "the session did not keep the new token")
            claims = claims_of(token["access_token"])
            expect_equal((claims["sub"], claims["sid"], claims["iss"], claims["aud"]),
                         (f"authlib-{tag}-refresh", signed["session_id"], meta["issuer"], app["audience"]), "sub/sid/iss/aud")
            expect_equal(claims["exp"] - claims["iat"], token["expires_in"], "exp - iat")
            # The renew's ip is the caller's address, its useragent the User-Agent header.
            expect_equal((claims["ip"], claims["useragent"]), ("127.0.0.1", USER_AGENT), "ip/useragent")

        self.check(f"{tag}: refresh_token(): a new pair, client auth as {method}", refresh_token)

        def ensure_active_chain():
            signed = self.sign(app, f"authlib-{tag}-chain")
            updates = []
            client = self.session(app, method, signed, updates=updates)
            seen = {signed["refresh_token"]}
            previous = signed["refresh_token"]
            for i in range(CHAIN):
                client.token["expires_at"] = int(time.time()) - 60  # the token has expired
                expect(client.ensure_active_token() is True, f"refresh {i + 1}: ensure_active_token() is not True")
                expect_equal(len(updates), i + 1, f"refresh {i + 1}: update_token calls")
                token, old = updates[-1]
                expect_equal(old, previous, f"refresh {i + 1}: update_token's refresh_token")
                expect(token["refresh_token"] not in seen, f"refresh {i + 1}: the refresh token is not new")
                expect(not token.is_expired(), f"refresh {i + 1}: the new token is expired")
                expect_equal(claims_of(token["access_token"])["sid"], signed["session_id"], f"refresh {i + 1}: sid")
                seen.add(token["refresh_token"])
                previous = token["refresh_token"]
            expect(client.ensure_active_token() is True, "a live token")
            expect_equal(len(updates), CHAIN, "a live token was refreshed")

        self.check(f"{tag}: ensure_active_token() refreshes an expired token {CHAIN} times in a row", ensure_active_chain)

        def refresh_before_request():
            signed = self.sign(app, f"authlib-{tag}-request")
            updates = []
            client = self.session(app, method, signed, updates=updates)
            start = len(self.wire)
            r = client.get(f"{self.public_url}/healthz", timeout=10)
            expect_equal(r.status_code, 200, "GET /healthz")
            expect_equal(len(updates), 1, "update_token calls")
            expect_equal([(w.request.method, w.request.url) for _, w in self.wire[start:]],
                         [("POST", meta["token_endpoint"]), ("GET", f"{self.public_url}/healthz")], "requests")
            expect_equal(r.request.headers.get("Authorization"), f"Bearer {client.token['access_token']}",
                         "the request's Authorization")
            expect(client.token["access_token"] != signed["auth_token"], "the request carried the expired token")

        self.check(f"{tag}: a request with an expired token refreshes it first", refresh_before_request)

        def introspect():
            signed = self.sign(app, f"authlib-{tag}-introspect")
            client = self.session(app, method, signed)
            token = client.refresh_token(meta["token_endpoint"])
            claims = claims_of(token["access_token"])
            r = client.introspect_token(meta["introspection_endpoint"], token=token["access_token"],
                                        token_type_hint="access_token")
            expect_equal(r.status_code, 200, "status")
            access = r.json()
            expect_equal(sorted(access), ACCESS_MEMBERS, "access token: members")
            expect_equal((access["active"], access["token_type"], access["token_use"], access["client_id"],
                          access["sub"], access["sid"]),
                         (True, "Bearer", "access_token", app["app_id"], f"authlib-{tag}-introspect",
                          signed["session_id"]), "access token")
            expect_equal((access["iss"], access["aud"], access["exp"], access["iat"], access["nbf"], access["jti"]),
                         (claims["iss"], claims["aud"], claims["exp"], claims["iat"], claims["nbf"], claims["jid"]),
                         "access token: iss/aud/exp/iat/nbf/jti")
            refresh = client.introspect_token(meta["introspection_endpoint"], token=token["refresh_token"]).json()
            expect_equal(sorted(refresh), REFRESH_MEMBERS, "refresh token: members")
            expect_equal((refresh["active"], refresh["token_type"], refresh["token_use"], refresh["sub"], refresh["sid"]),
                         (True, "N_A", "refresh_token", f"authlib-{tag}-introspect", signed["session_id"]),
                         "refresh token")
            old = client.introspect_token(meta["introspection_endpoint"], token=signed["refresh_token"],
                                          token_type_hint="refresh_token").json()
            expect_equal(old, {"active": False}, "rotated-away refresh token")
            expect_equal(client.introspect_token(meta["introspection_endpoint"], token="not-a-token").json(),
                         {"active": False}, "garbage")
            client.refresh_token(meta["token_endpoint"])  # introspection changed nothing

        self.check(f"{tag}: introspect_token(): live access and refresh tokens, a rotated-away one, garbage", introspect)

        def revoke():
            signed = self.sign(app, f"authlib-{tag}-revoke")
            client = self.session(app, method, signed)
            token = client.refresh_token(meta["token_endpoint"])
            r = client.revoke_token(meta["revocation_endpoint"], token=token["refresh_token"],
                                    token_type_hint="refresh_token")
            expect_equal((r.status_code, r.content), (200, b""), "revocation answer")
            expect_equal(client.introspect_token(meta["introspection_endpoint"], token=token["access_token"]).json(),
                         {"active": False}, "its access token")
            expect_oauth_error(lambda: client.refresh_token(meta["token_endpoint"]), "invalid_grant",
                               "refresh after revocation")
            signed = self.sign(app, f"authlib-{tag}-revoke-access")
            client = self.session(app, method, signed)
            r = client.revoke_token(meta["revocation_endpoint"], token=signed["auth_token"],
                                    token_type_hint="access_token")
            expect_equal((r.status_code, r.content), (200, b""), "revoking an access token")
            expect_oauth_error(lambda: client.refresh_token(meta["token_endpoint"]), "invalid_grant",
                               "refresh after revoking the access token")
            r = client.revoke_token(meta["revocation_endpoint"], token="not-a-token")
            expect_equal((r.status_code, r.content), (200, b""), "revoking garbage")

        self.check(f"{tag}: revoke_token() of a refresh token, of an access token, of garbage", revoke)

        def replay():
            signed = self.sign(app, f"authlib-{tag}-replay")
            client = self.session(app, method, signed)
            first = dict(client.refresh_token(meta["token_endpoint"]))
            latest = dict(client.refresh_token(meta["token_endpoint"]))
            e = expect_oauth_error(lambda: client.refresh_token(meta["token_endpoint"], refresh_token=first["refresh_token"]),
                                   "invalid_grant", "replay")
            expect_equal(self.wire[-1][1].status_code, 400, "replay status")
            expect(e.description, "no error_description")
            expect_oauth_error(lambda: client.refresh_token(meta["token_endpoint"], refresh_token=latest["refresh_token"]),
                               "invalid_grant", "the latest refresh token after the replay")

        self.check(f"{tag}: a replayed refresh token gets OAuthError invalid_grant and revokes the session", replay)

        def wrong_secret():
            signed = self.sign(app, f"authlib-{tag}-wrong-secret")
            wrong = self.session(app, method, signed, client_secret=WRONG_KEY)
            expect_oauth_error(lambda: wrong.refresh_token(meta["token_endpoint"]), "invalid_client", "wrong secret")
            response = self.wire[-1][1]
            expect_equal(response.status_code, 401, "status")
            # Basic used the Authorization header: a challenge; client_secret_post did not.
            want = CHALLENGE if method == "client_secret_basic" else None
            expect_equal(response.headers.get("WWW-Authenticate"), want, "WWW-Authenticate")
            self.session(app, method, signed).refresh_token(meta["token_endpoint"])  # not consumed

        self.check(f"{tag}: a wrong client secret gets OAuthError invalid_client and consumes nothing", wrong_secret)

        def every_request():
            requests_ = [r for t, r in self.wire if t == method and r.request.url.startswith(f"{app['issuer']}/oauth/")]
            expect(len(requests_) >= 30, f"only {len(requests_)} requests")
            for r in requests_:
                expect_client_auth(r.request, method, app, r.request.url[len(app["issuer"]):])

        self.check(f"{tag}: every token/introspection/revocation request authenticated as {method}, "
                   "with requests' User-Agent", every_request)

    def rfc9068_checks(self):
        at_app, app = self.at_app, self.app
        at_meta = self.expected_metadata(at_app)
        at_jwks = jwt.PyJWKClient(at_meta["jwks_uri"])

        def access_token():
            expect_equal(self.metadata(at_app)["jwks_uri"], at_meta["jwks_uri"], "jwks_uri")
            signed = self.sign(at_app, "authlib-rfc9068")
            client = self.session(at_app, "client_secret_basic", signed)
            token = client.refresh_token(at_meta["token_endpoint"])
            header = jwt.get_unverified_header(token["access_token"])
            expect_equal((header["alg"], header["typ"]), ("ES256", "at+jwt"), "header")
            expect(header.get("kid"), "no kid")
            claims = verify_access_token(token["access_token"], at_jwks, at_app)
            expect_equal(claims["client_id"], at_app["app_id"], "client_id")
            expect_equal(claims["jti"], claims["jid"], "jti")
            expect_equal((claims["sub"], claims["sid"]), ("authlib-rfc9068", signed["session_id"]), "sub/sid")
            claims = verify_access_token(signed["auth_token"], at_jwks, at_app)  # /sign's too
            expect_equal(claims["client_id"], at_app["app_id"], "/sign's token: client_id")

        self.check("rfc9068: access tokens (token endpoint, /sign) verify with typ at+jwt against the JWKS", access_token)

        def refresh_token():
            signed = self.sign(at_app, "authlib-rfc9068-refresh")
            expect_equal(jwt.get_unverified_header(signed["refresh_token"])["typ"], "refresh+jwt", "typ")
            try:
                verify_access_token(signed["refresh_token"], at_jwks, at_app)
            except jwt.InvalidTokenError as e:
                expect("at+jwt" in str(e), f"refused for another reason: {e}")
            else:
                raise CheckFailed("a refresh token passed the access-token check")
            token = self.session(at_app, "client_secret_post", signed).refresh_token(at_meta["token_endpoint"])
            expect_equal(jwt.get_unverified_header(token["refresh_token"])["typ"], "refresh+jwt", "renewed typ")

        self.check("rfc9068: a refresh token (typ refresh+jwt) is refused by the access-token check, and renews", refresh_token)

        def default_profile():
            meta = self.expected_metadata(app)
            signed = self.sign(app, "authlib-default-profile")
            token = self.session(app, "client_secret_basic", signed).refresh_token(meta["token_endpoint"])
            for name in ("access_token", "refresh_token"):
                expect_equal(jwt.get_unverified_header(token[name])["typ"], "JWT", f"{name} typ")
            jwks = jwt.PyJWKClient(meta["jwks_uri"])
            try:
                verify_access_token(token["access_token"], jwks, app)
            except jwt.InvalidTokenError as e:
                expect("at+jwt" in str(e), f"refused for another reason: {e}")
            else:
                raise CheckFailed("a default-profile token passed the at+jwt check")
            claims = jwt.decode(token["access_token"], jwks.get_signing_key_from_jwt(token["access_token"]),
                                algorithms=["ES256"], issuer=app["issuer"], audience=app["audience"])
            expect("client_id" not in claims and "jti" not in claims, f"client_id/jti in {claims}")

        self.check("default profile: tokens have typ JWT, no client_id/jti; refused as at+jwt", default_profile)

        def every_answer():
            answers = [r for _, r in self.wire if "/oauth/" in r.request.url]
            statuses = {r.status_code for r in answers}
            expect(len(answers) >= 60 and {200, 400, 401} <= statuses, f"too few answers: {len(answers)}, {statuses}")
            for r in answers:
                expect_no_store(r, f"{r.status_code} from {r.request.url[len(self.public_url):]}")

        self.check("every answer of the token, revocation and introspection endpoints (errors too): "
                   "Cache-Control no-store, Pragma no-cache", every_answer)


def main(argv):
    args = [a for a in argv[1:] if a != "-v"]
    if len(args) != 1:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    config = json.load(open(args[0]))
    c = Client(config, verbose="-v" in argv[1:])
    try:
        c.run()
    except Exception as e:  # a bug in this script: count it, never pass silently
        c.failed += 1
        print(f"  FAIL setup: {type(e).__name__}: {e}")
    who = (f"authlib {version('authlib')} (requests {requests.__version__}, PyJWT {jwt.__version__}, "
           f"python {platform.python_version()})")
    print(f"{config.get('backend', '?'):<8} {who}: {c.passed} passed, {c.failed} failed")
    return 0 if c.failed == 0 and c.passed > 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
