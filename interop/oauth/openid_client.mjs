// keygate's OAuth 2.0 endpoints, driven by openid-client v6 (panva) against a live gateway,
// and its RFC 9068 access tokens verified with jose.
//
// Usage: node openid_client.mjs CONFIG_JSON [-v]
//
// CONFIG_JSON is written by interop/oauth/run.sh:
//   {"backend": "sqlite"|"postgres", "public_url": "http://127.0.0.1:PORT",
//    "apps": {"keygate": APP, "rfc9068": APP}}
//   APP = {"app_id", "app_key", "issuer" (= public_url/app/app_id), "audience"}
//
// Sessions are opened here with POST /app/{id}/sign (the app backend's call); everything
// after that goes through openid-client: discovery, refreshTokenGrant, tokenIntrospection,
// tokenRevocation. A passing check prints nothing (unless -v), a failing one one FAIL line.
// The last line is "<summary>: N passed, M failed"; the exit code is 0 only if M == 0.

import { readFileSync } from 'node:fs';
import { Checks, expect, expectEqual, expectRejected, show } from '../node/checks.mjs';
import { createRequire } from 'node:module';
import { pathToFileURL } from 'node:url';

// The packages live in interop/node (one package.json and lock file for the interop
// checks); ESM imports resolve from this file's folder, so resolve them from there.
const require = createRequire(new URL('../node/package.json', import.meta.url));
const client = await import(pathToFileURL(require.resolve('openid-client')).href);
const jose = await import(pathToFileURL(require.resolve('jose')).href);
const VERSIONS = {
  openidClient: require('openid-client/package.json').version,
  oauth4webapi: require('oauth4webapi/package.json').version,
  jose: require('jose/package.json').version,
};
// What openid-client sends as User-Agent, and so what keygate records as the renew's
// `useragent` (the token endpoint takes the request's User-Agent header).
const USER_AGENT = `openid-client/v${VERSIONS.openidClient}`;
const WRONG_KEY = 'kg_' + 'A'.repeat(43);
const CHAIN = 5;
// The challenge of a 401 invalid_client on a request that used the Authorization header or
// sent no credentials (the spec: `WWW-Authenticate: Basic realm="keygate"`), as parsed by
// oauth4webapi.
const CHALLENGE = [{ scheme: 'basic', parameters: { realm: 'keygate' } }];


const sortedKeys = (o) => Object.keys(o).sort();

// A refused refresh token: openid-client's own error type for an OAuth error body.
async function expectOAuthError(fn, status, error, what) {
  const e = await expectRejected(fn, client.ResponseBodyError, what);
  expect(e.error === error && e.status === status,
    `${what}: got ${e.status} ${e.error} (${e.error_description}), want ${status} ${error}`);
  return e;
}

// Every request openid-client makes (through client.customFetch), tagged with the client
// authentication it was configured with, with the answer's status and headers, so that the
// checks can look at what went over the wire.
const wire = [];
const recordingFetch = (tag) => async (url, options) => {
  const response = await fetch(url, options);
  wire.push({
    tag, url, method: options.method, headers: options.headers,
    body: options.body === undefined ? undefined : String(options.body),
    status: response.status, responseHeaders: response.headers,
  });
  return response;
};
const lastRequest = () => wire[wire.length - 1];

// RFC 6749 §2.3.1: the server form-urldecodes each side of the Basic credentials.
const formUrlDecode = (s) => decodeURIComponent(s.replace(/\+/g, ' '));

function expectNoStore(exchange, what) {
  const h = exchange.responseHeaders;
  expectEqual([h.get('cache-control'), h.get('pragma')], ['no-store', 'no-cache'], `${what}: Cache-Control, Pragma`);
}

function expectClientAuth(exchange, method, app, what) {
  const authz = exchange.headers.authorization;
  const body = new URLSearchParams(exchange.body);
  if (method === 'client_secret_basic') {
    // openid-client form-urlencodes id and secret before base64 (RFC 6749 §2.3.1): the
    // "_" of every app key ("kg_...") goes over the wire as "%5F".
    expect(authz?.startsWith('Basic '), `${what}: Authorization ${show(authz)}, want Basic`);
    const decoded = atob(authz.slice('Basic '.length));
    const colon = decoded.indexOf(':');
    const [id, secret] = [decoded.slice(0, colon), decoded.slice(colon + 1)];
    expectEqual([formUrlDecode(id), formUrlDecode(secret)], [app.app_id, app.app_key], `${what}: Basic credentials`);
    expect(secret !== app.app_key && secret.includes('%5F'), `${what}: the secret was not form-urlencoded: ${secret}`);
    expect(!body.has('client_secret'), `${what}: client_secret in the body as well`);
  } else {
    expect(authz === undefined, `${what}: an Authorization header with client_secret_post`);
    expect(body.get('client_id') === app.app_id && body.get('client_secret') === app.app_key,
      `${what}: body has no client_id/client_secret: ${exchange.body}`);
  }
  expect(exchange.headers['user-agent'] === USER_AGENT,
    `${what}: User-Agent ${show(exchange.headers['user-agent'])}, want ${show(USER_AGENT)}`);
}

// The app backend opens a session (keygate's own API, not OAuth).
async function sign(app, sub) {
  const response = await fetch(`${CONFIG.public_url}/app/${app.app_id}/sign`, {
    method: 'POST',
    headers: { authorization: `Bearer ${app.app_key}`, 'content-type': 'application/json' },
    body: JSON.stringify({ sub, ip: '203.0.113.7', useragent: 'keygate-oauth-interop/1.0' }),
  });
  const text = await response.text();
  if (response.status !== 200) throw new Error(`POST /app/${app.app_id}/sign: HTTP ${response.status}: ${text}`);
  return JSON.parse(text);
}

function expectedMetadata(app) {
  const p = `${CONFIG.public_url}/app/${app.app_id}`;
  const methods = ['client_secret_basic', 'client_secret_post'];
  return {
    issuer: p,
    token_endpoint: `${p}/oauth/token`,
    revocation_endpoint: `${p}/oauth/revoke`,
    introspection_endpoint: `${p}/oauth/introspect`,
    jwks_uri: `${p}/jwks.json`,
    grant_types_supported: ['refresh_token'],
    response_types_supported: [],
    token_endpoint_auth_methods_supported: methods,
    revocation_endpoint_auth_methods_supported: methods,
    introspection_endpoint_auth_methods_supported: methods,
  };
}

const canonical = (o) => Object.fromEntries(sortedKeys(o).map((k) => [k, o[k]]));
const sameDocument = (metadata, app) => expectEqual(canonical(metadata), canonical(expectedMetadata(app)), 'metadata');

const authFor = (method) =>
  method === 'client_secret_basic' ? client.ClientSecretBasic() : client.ClientSecretPost();

// The client configuration of an app: RFC 8414 discovery from its issuer.
function discover(app, method) {
  return client.discovery(new URL(app.issuer), app.app_id, app.app_key, authFor(method), {
    algorithm: 'oauth2',                     // RFC 8414: /.well-known/oauth-authorization-server/app/{id}
    execute: [client.allowInsecureRequests], // the interop gateway is plain http on 127.0.0.1
    [client.customFetch]: recordingFetch(method),
  });
}

let CONFIG;

async function main(argv) {
  const verbose = argv.includes('-v');
  const args = argv.filter((a) => a !== '-v');
  if (args.length !== 1) {
    console.error('usage: node openid_client.mjs CONFIG_JSON [-v]');
    return 2;
  }
  CONFIG = JSON.parse(readFileSync(args[0], 'utf8'));
  const APP = CONFIG.apps.keygate;
  const AT_APP = CONFIG.apps.rfc9068;

  const checks = new Checks(verbose);
  const check = (name, fn) => checks.check(name, fn);

  // ---- discovery -----------------------------------------------------------

  await check('discovery from the issuer (RFC 8414 URL, issuer checked by openid-client)', async () => {
    const config = await discover(APP, 'client_secret_basic');
    const exchange = lastRequest();
    expectEqual(exchange.url, `${CONFIG.public_url}/.well-known/oauth-authorization-server/app/${APP.app_id}`, 'discovery URL');
    sameDocument(config.serverMetadata(), APP);
    expectEqual(exchange.responseHeaders.get('cache-control'), 'public, max-age=300', 'metadata Cache-Control');
  });

  await check('discovery from the app\'s /.well-known/oauth-authorization-server URL', async () => {
    const url = new URL(`${APP.issuer}/.well-known/oauth-authorization-server`);
    const config = await client.discovery(url, APP.app_id, APP.app_key, client.ClientSecretBasic(), {
      execute: [client.allowInsecureRequests],
      [client.customFetch]: recordingFetch('well-known'),
    });
    expectEqual(lastRequest().url, url.href, 'discovery URL');
    sameDocument(config.serverMetadata(), APP);
  });

  // ---- per client authentication method ------------------------------------

  for (const method of ['client_secret_basic', 'client_secret_post']) {
    const tag = method.replace('client_secret_', '');
    let config;
    await check(`${tag}: discovery`, async () => {
      config = await discover(APP, method);
      expectEqual(config.serverMetadata().issuer, APP.issuer, 'issuer');
    });
    if (!config) continue;

    // refreshTokenGrant, chained: each answer's refresh token is the next request's.
    await check(`${tag}: refreshTokenGrant chained ${CHAIN} times, a new refresh token each time`, async () => {
      const session = await sign(APP, `oidc-${tag}-chain`);
      let refreshToken = session.refresh_token;
      const seen = new Set([session.refresh_token, session.auth_token]);
      for (let i = 0; i < CHAIN; i++) {
        const tokens = await client.refreshTokenGrant(config, refreshToken);
        const exchange = lastRequest();
        const what = `refresh ${i + 1}`;
        expectEqual(exchange.url, `${APP.issuer}/oauth/token`, `${what}: URL`);
        expectEqual(exchange.status, 200, `${what}: status`);
        expectEqual(sortedKeys(tokens), ['access_token', 'expires_in', 'refresh_token', 'token_type'], `${what}: members`);
        expect(tokens.token_type === 'bearer', `${what}: token_type ${tokens.token_type}`); // lowercased by openid-client
        expect(!seen.has(tokens.refresh_token), `${what}: refresh token not new`);
        expect(!seen.has(tokens.access_token), `${what}: access token not new`);
        seen.add(tokens.refresh_token).add(tokens.access_token);
        const body = new URLSearchParams(exchange.body);
        expectEqual(body.get('grant_type'), 'refresh_token', `${what}: grant_type`);
        const claims = jose.decodeJwt(tokens.access_token);
        expectEqual(claims.sub, `oidc-${tag}-chain`, `${what}: sub`);
        expectEqual(claims.sid, session.session_id, `${what}: sid`);
        expectEqual(claims.iss, config.serverMetadata().issuer, `${what}: iss`);
        expectEqual(claims.aud, APP.audience, `${what}: aud`);
        expectEqual(claims.exp - claims.iat, tokens.expires_in, `${what}: exp - iat`);
        // The renew's ip is the caller's address, its useragent the User-Agent header.
        expectEqual(claims.ip, '127.0.0.1', `${what}: ip`);
        expectEqual(claims.useragent, USER_AGENT, `${what}: useragent`);
        refreshToken = tokens.refresh_token;
      }
    });

    await check(`${tag}: tokenIntrospection: live access and refresh tokens, a rotated-away refresh token, garbage`, async () => {
      const session = await sign(APP, `oidc-${tag}-introspect`);
      const tokens = await client.refreshTokenGrant(config, session.refresh_token);
      const claims = jose.decodeJwt(tokens.access_token);

      const access = await client.tokenIntrospection(config, tokens.access_token, { token_type_hint: 'access_token' });
      expectEqual(sortedKeys(access), ['active', 'aud', 'client_id', 'exp', 'iat', 'iss', 'jti', 'nbf', 'sid', 'sub', 'token_type', 'token_use'], 'access token: members');
      expectEqual([access.active, access.token_type, access.token_use], [true, 'Bearer', 'access_token'], 'access token: active/token_type/token_use');
      expectEqual([access.client_id, access.sub, access.sid], [APP.app_id, `oidc-${tag}-introspect`, session.session_id], 'access token: client_id/sub/sid');
      expectEqual([access.iss, access.aud, access.exp, access.iat, access.nbf, access.jti],
        [claims.iss, claims.aud, claims.exp, claims.iat, claims.nbf, claims.jid], 'access token: iss/aud/exp/iat/nbf/jti');

      const refresh = await client.tokenIntrospection(config, tokens.refresh_token);
      const rclaims = jose.decodeJwt(tokens.refresh_token);
      expectEqual(sortedKeys(refresh), ['active', 'client_id', 'exp', 'iat', 'iss', 'jti', 'nbf', 'sid', 'sub', 'token_type', 'token_use'], 'refresh token: members');
      expectEqual([refresh.active, refresh.token_type, refresh.token_use, refresh.client_id, refresh.sub, refresh.sid],
        [true, 'N_A', 'refresh_token', APP.app_id, `oidc-${tag}-introspect`, session.session_id], 'refresh token');
      expectEqual([refresh.iss, refresh.exp, refresh.iat, refresh.nbf, refresh.jti],
        [rclaims.iss, rclaims.exp, rclaims.iat, rclaims.nbf, rclaims.jid], 'refresh token: iss/exp/iat/nbf/jti');

      const old = await client.tokenIntrospection(config, session.refresh_token, { token_type_hint: 'refresh_token' });
      expectEqual(old, { active: false }, 'rotated-away refresh token');
      expectEqual(await client.tokenIntrospection(config, 'not-a-token'), { active: false }, 'garbage');

      // Introspection changes nothing: the introspected refresh token still renews, and the
      // rotated-away one was not treated as a reuse.
      const next = await client.refreshTokenGrant(config, tokens.refresh_token);
      expect(typeof next.refresh_token === 'string', 'the introspected refresh token did not renew');
    });

    await check(`${tag}: tokenRevocation of a live access token: inactive, and its refresh token gets invalid_grant`, async () => {
      const session = await sign(APP, `oidc-${tag}-revoke-access`);
      const tokens = await client.refreshTokenGrant(config, session.refresh_token);
      const result = await client.tokenRevocation(config, tokens.access_token, { token_type_hint: 'access_token' });
      expectEqual(result, undefined, 'tokenRevocation result');
      const exchange = lastRequest();
      expectEqual([exchange.url, exchange.status], [`${APP.issuer}/oauth/revoke`, 200], 'revocation URL and status');
      expectEqual(await client.tokenIntrospection(config, tokens.access_token), { active: false }, 'revoked access token');
      expectEqual(await client.tokenIntrospection(config, tokens.refresh_token), { active: false }, 'its refresh token');
      await expectOAuthError(() => client.refreshTokenGrant(config, tokens.refresh_token), 400, 'invalid_grant', 'refresh after revocation');
    });

    await check(`${tag}: tokenRevocation of a live refresh token; of garbage: 200`, async () => {
      const session = await sign(APP, `oidc-${tag}-revoke-refresh`);
      await client.tokenRevocation(config, session.refresh_token, { token_type_hint: 'refresh_token' });
      expectEqual(await client.tokenIntrospection(config, session.auth_token), { active: false }, 'its access token');
      await expectOAuthError(() => client.refreshTokenGrant(config, session.refresh_token), 400, 'invalid_grant', 'refresh after revocation');
      await client.tokenRevocation(config, 'not-a-token');
      expectEqual(lastRequest().status, 200, 'revoking garbage');
    });

    await check(`${tag}: a replayed refresh token gets invalid_grant (ResponseBodyError), and the session is revoked`, async () => {
      const session = await sign(APP, `oidc-${tag}-replay`);
      const first = await client.refreshTokenGrant(config, session.refresh_token);
      const second = await client.refreshTokenGrant(config, first.refresh_token);
      await expectOAuthError(() => client.refreshTokenGrant(config, first.refresh_token), 400, 'invalid_grant', 'replay');
      await expectOAuthError(() => client.refreshTokenGrant(config, second.refresh_token), 400, 'invalid_grant', 'the latest refresh token after the replay');
      expectEqual(await client.tokenIntrospection(config, second.access_token), { active: false }, 'the latest access token after the replay');
    });

    await check(`${tag}: a scope parameter gets invalid_scope and does not consume the token`, async () => {
      const session = await sign(APP, `oidc-${tag}-scope`);
      await expectOAuthError(() => client.refreshTokenGrant(config, session.refresh_token, { scope: 'openid' }), 400, 'invalid_scope', 'scope');
      const tokens = await client.refreshTokenGrant(config, session.refresh_token);
      expect(typeof tokens.refresh_token === 'string', 'the token did not renew afterwards');
    });

    await check(`${tag}: a wrong client secret gets 401 invalid_client and does not consume the token`, async () => {
      const session = await sign(APP, `oidc-${tag}-wrong-secret`);
      const wrong = new client.Configuration(config.serverMetadata(), APP.app_id, WRONG_KEY, authFor(method));
      client.allowInsecureRequests(wrong);
      wrong[client.customFetch] = recordingFetch('wrong-secret');
      if (method === 'client_secret_basic') {
        // A 401 with a WWW-Authenticate challenge is openid-client's WWWAuthenticateChallengeError.
        const e = await expectRejected(() => client.refreshTokenGrant(wrong, session.refresh_token),
          client.WWWAuthenticateChallengeError, 'wrong secret');
        expectEqual(e.status, 401, 'status');
        expectEqual(e.cause, CHALLENGE, 'challenge');
        const body = await e.response.json();
        expectEqual(body.error, 'invalid_client', 'error');
      } else {
        await expectOAuthError(() => client.refreshTokenGrant(wrong, session.refresh_token), 401, 'invalid_client', 'wrong secret');
      }
      const tokens = await client.refreshTokenGrant(config, session.refresh_token);
      expect(typeof tokens.refresh_token === 'string', 'the token did not renew afterwards');
    });

    await check(`${tag}: every token/introspection/revocation request authenticated as ${method}, with openid-client's User-Agent`, async () => {
      const requests = wire.filter((e) => e.tag === method && e.url.startsWith(`${APP.issuer}/oauth/`));
      expect(requests.length >= 20, `only ${requests.length} requests`);
      for (const e of requests) expectClientAuth(e, method, APP, `${e.url.slice(APP.issuer.length)}`);
    });
  }

  await check('another app\'s tokens: refresh invalid_grant, introspection inactive, revocation a no-op; not consumed', async () => {
    const config = await discover(APP, 'client_secret_basic');
    const other = await discover(AT_APP, 'client_secret_basic');
    const session = await sign(AT_APP, 'oidc-other-app');
    await expectOAuthError(() => client.refreshTokenGrant(config, session.refresh_token), 400, 'invalid_grant', 'refresh at another app');
    expectEqual(await client.tokenIntrospection(config, session.auth_token), { active: false }, 'introspection at another app');
    await client.tokenRevocation(config, session.refresh_token);
    expectEqual(lastRequest().status, 200, 'revocation at another app');
    const tokens = await client.refreshTokenGrant(other, session.refresh_token);
    expect(typeof tokens.refresh_token === 'string', 'the token did not renew at its own app');
  });

  // ---- RFC 9068 access tokens (jose) ---------------------------------------

  const rfc9068 = await discover(AT_APP, 'client_secret_basic').catch(() => undefined);
  const atJwks = jose.createRemoteJWKSet(new URL(`${AT_APP.issuer}/jwks.json`));
  // What a resource server does with an RFC 9068 access token.
  const verifyAccessToken = (token, jwks, app) => jose.jwtVerify(token, jwks, {
    typ: 'at+jwt', issuer: app.issuer, audience: app.audience, algorithms: ['ES256'],
  });

  await check('rfc9068: the token endpoint\'s access token verifies against the JWKS with typ at+jwt', async () => {
    expect(rfc9068, 'discovery of the rfc9068 app failed');
    expectEqual(rfc9068.serverMetadata().jwks_uri, `${AT_APP.issuer}/jwks.json`, 'jwks_uri');
    const session = await sign(AT_APP, 'oidc-rfc9068');
    const tokens = await client.refreshTokenGrant(rfc9068, session.refresh_token);
    const { payload, protectedHeader } = await verifyAccessToken(tokens.access_token, atJwks, AT_APP);
    expectEqual([protectedHeader.alg, protectedHeader.typ], ['ES256', 'at+jwt'], 'header');
    expect(typeof protectedHeader.kid === 'string' && protectedHeader.kid, 'no kid');
    expectEqual(payload.client_id, AT_APP.app_id, 'client_id');
    expect(typeof payload.jti === 'string' && payload.jti === payload.jid, `jti ${payload.jti}, jid ${payload.jid}`);
    expectEqual([payload.sub, payload.sid], ['oidc-rfc9068', session.session_id], 'sub/sid');
    const active = await client.tokenIntrospection(rfc9068, tokens.access_token);
    expectEqual([active.active, active.jti, active.client_id], [true, payload.jti, AT_APP.app_id], 'introspection');
  });

  await check('rfc9068: /sign\'s access token verifies the same way', async () => {
    const session = await sign(AT_APP, 'oidc-rfc9068-sign');
    const { payload } = await verifyAccessToken(session.auth_token, atJwks, AT_APP);
    expectEqual([payload.client_id, payload.jti], [AT_APP.app_id, payload.jid], 'client_id/jti');
  });

  await check('rfc9068: a refresh token (typ refresh+jwt) is refused by the access-token check, and renews', async () => {
    expect(rfc9068, 'discovery of the rfc9068 app failed');
    const session = await sign(AT_APP, 'oidc-rfc9068-refresh');
    expectEqual(jose.decodeProtectedHeader(session.refresh_token).typ, 'refresh+jwt', 'refresh token typ');
    const e = await expectRejected(() => verifyAccessToken(session.refresh_token, atJwks, AT_APP),
      jose.errors.JWTClaimValidationFailed, 'refresh token as an access token');
    expectEqual(e.claim, 'typ', 'rejected claim');
    const tokens = await client.refreshTokenGrant(rfc9068, session.refresh_token);
    expectEqual(jose.decodeProtectedHeader(tokens.refresh_token).typ, 'refresh+jwt', 'renewed refresh token typ');
  });

  await check('default profile: access and refresh tokens have typ JWT, no client_id/jti; refused as at+jwt', async () => {
    const config = await discover(APP, 'client_secret_basic');
    const session = await sign(APP, 'oidc-default-profile');
    const tokens = await client.refreshTokenGrant(config, session.refresh_token);
    expectEqual(jose.decodeProtectedHeader(tokens.access_token).typ, 'JWT', 'access token typ');
    expectEqual(jose.decodeProtectedHeader(tokens.refresh_token).typ, 'JWT', 'refresh token typ');
    const jwks = jose.createRemoteJWKSet(new URL(config.serverMetadata().jwks_uri));
    const e = await expectRejected(() => verifyAccessToken(tokens.access_token, jwks, APP),
      jose.errors.JWTClaimValidationFailed, 'default-profile access token as at+jwt');
    expectEqual(e.claim, 'typ', 'rejected claim');
    const { payload } = await jose.jwtVerify(tokens.access_token, jwks, {  // positive control
      issuer: APP.issuer, audience: APP.audience, algorithms: ['ES256'],
    });
    expect(!('client_id' in payload) && !('jti' in payload), `client_id/jti in a default-profile token: ${show(payload)}`);
  });

  await check('every answer of the token, revocation and introspection endpoints (errors too): Cache-Control no-store, Pragma no-cache', async () => {
    const answers = wire.filter((e) => e.url.includes('/oauth/'));
    expect(answers.length >= 40 && answers.some((e) => e.status === 400) && answers.some((e) => e.status === 401),
      `too few answers: ${answers.length}, statuses ${[...new Set(answers.map((e) => e.status))]}`);
    for (const e of answers) expectNoStore(e, `${e.status} from ${e.url.slice(CONFIG.public_url.length)}`);
  });

  const who = `openid-client ${VERSIONS.openidClient} (oauth4webapi ${VERSIONS.oauth4webapi}, jose ${VERSIONS.jose}, node ${process.versions.node})`;
  console.log(`${CONFIG.backend.padEnd(8)} ${who}: ${checks.passed} passed, ${checks.failed} failed`);
  return checks.failed === 0 && checks.passed > 0 ? 0 : 1;
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (e) => {
    console.log(`  FAIL setup: ${e?.message ?? e}`);
    console.log(`openid-client ${VERSIONS.openidClient}: 0 passed, 1 failed`);
    process.exit(1);
  },
);
