// keygate's DPoP-bound sessions (RFC 9449), driven by real client libraries against a live
// gateway: oauth4webapi and openid-client (panva) make the proofs with a WebCrypto device key
// and refresh as public clients; jose makes the hand-built proofs, computes the thumbprints
// and plays the resource server (dpop_resource_server.mjs).
//
// Usage: node dpop_clients.mjs CONFIG_JSON [-v]
//
// CONFIG_JSON is written by interop/oauth/run.sh:
//   {"backend": "sqlite"|"postgres", "public_url": "http://127.0.0.1:PORT",
//    "apps": {"keygate", "rfc9068", "dpop", "dpop_nonce", "dpop_allowed": APP}}
//   APP = {"app_id", "app_key", "issuer" (= public_url/app/app_id), "audience"}
//   dpop:         dpop "required", oauth_public_clients, reuse_grace 0, profile keygate
//   dpop_nonce:   the same with dpop_nonce, profile rfc9068
//   dpop_allowed: dpop "allowed", oauth_public_clients, profile keygate
//   keygate:      dpop "off" (the default), no public clients
//
// Sessions are opened with POST /app/{id}/sign (the app backend's call, plain fetch) with
// `dpop_jkt`, the device key's RFC 7638 thumbprint as jose computes it. A passing check
// prints nothing (unless -v), a failing one one FAIL line. The last line is
// "<summary>: N passed, M failed"; the exit code is 0 only if M == 0.

import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { createRequire } from 'node:module';
import { pathToFileURL } from 'node:url';
import { CheckFailed, Checks, expect, expectEqual, expectRejected, show } from '../node/checks.mjs';
import { DpopRequestError, verifyDpopRequest } from './dpop_resource_server.mjs';

// The packages live in interop/node (one package.json and lock file for the interop
// checks); ESM imports resolve from this file's folder, so resolve them from there.
const require = createRequire(new URL('../node/package.json', import.meta.url));
const load = async (name) => import(pathToFileURL(require.resolve(name)).href);
const oauth = await load('oauth4webapi');
const client = await load('openid-client');
const jose = await load('jose');
const VERSIONS = {
  oauth4webapi: require('oauth4webapi/package.json').version,
  openidClient: require('openid-client/package.json').version,
  jose: require('jose/package.json').version,
};

const CHAIN = 10;        // refreshes in a row with oauth4webapi
const SHORT_CHAIN = 3;   // with openid-client, through /renew, with Ed25519
const ALGS = ['ES256', 'EdDSA', 'Ed25519'];
const FORM = 'application/x-www-form-urlencoded';


// An OAuth error body as the library raised it (oauth4webapi's and openid-client's
// ResponseBodyError): status, error, and words the description must contain.
function expectBodyError(e, status, error, words, what) {
  expect(e.status === status && e.error === error,
    `${what}: got ${e.status} ${e.error} (${e.error_description}), want ${status} ${error}`);
  if (words) {
    expect(e.error_description?.includes(words), `${what}: error_description ${show(e.error_description)} does not say ${show(words)}`);
  }
}

// Every request a library made (through its customFetch hook), with the proof it sent and
// the answer's status and headers.
const wire = [];
const recordingFetch = (tag) => async (url, options) => {
  const response = await fetch(url, options);
  const headers = options.headers ?? {};
  wire.push({
    tag, url, method: options.method, headers,
    proof: headers.dpop,
    body: options.body === undefined ? undefined : String(options.body),
    status: response.status, responseHeaders: response.headers,
  });
  return response;
};
const lastRequest = () => wire[wire.length - 1];
const requestsSince = (mark) => wire.slice(mark);

// ---- device keys and hand-made proofs (WebCrypto + jose) --------------------

// A device key: the private half not extractable (WebCrypto always lets the public half be
// exported, and the libraries put it in each proof's jwk header).
const es256Key = () => crypto.subtle.generateKey({ name: 'ECDSA', namedCurve: 'P-256' }, false, ['sign', 'verify']);
const ed25519Key = () => crypto.subtle.generateKey({ name: 'Ed25519' }, false, ['sign', 'verify']);

// RFC 7638 SHA-256 thumbprint of the public key, computed by jose (not by keygate, not by
// the library that makes the proofs).
async function thumbprint(keyPair) {
  return jose.calculateJwkThumbprint(await jose.exportJWK(keyPair.publicKey), 'sha256');
}

// A DPoP proof made by hand with jose: header typ dpop+jwt and the public jwk, claims jti,
// htm, htu, iat (and nonce, ath when given).
async function makeProof(keyPair, { htm = 'POST', htu, nonce, ath, iat } = {}) {
  const alg = keyPair.privateKey.algorithm.name === 'ECDSA' ? 'ES256' : 'EdDSA';
  const claims = { htm, htu, jti: crypto.randomUUID() };
  if (nonce !== undefined) claims.nonce = nonce;
  if (ath !== undefined) claims.ath = ath;
  return new jose.SignJWT(claims)
    .setProtectedHeader({ alg, typ: 'dpop+jwt', jwk: await jose.exportJWK(keyPair.publicKey) })
    .setIssuedAt(iat)
    .sign(keyPair.privateKey);
}

const sha256b64u = async (text) =>
  jose.base64url.encode(new Uint8Array(await crypto.subtle.digest('SHA-256', new TextEncoder().encode(text))));

// ---- keygate's own API (plain fetch), as the app backend calls it -----------

const tokenUrl = (app) => `${app.issuer}/oauth/token`;

async function call(method, url, { auth, json, form, headers = {} } = {}) {
  const h = { ...headers };
  if (auth) h.authorization = auth;
  let body;
  if (json !== undefined) { h['content-type'] = 'application/json'; body = JSON.stringify(json); }
  if (form !== undefined) { h['content-type'] = FORM; body = new URLSearchParams(form).toString(); }
  const response = await fetch(url, { method, headers: h, body });
  const text = await response.text();
  let parsed;
  try { parsed = JSON.parse(text); } catch { parsed = text; }
  return { status: response.status, headers: response.headers, body: parsed };
}

// POST /app/{id}/sign: returns {status, body}.
const signRaw = (app, extra) => call('POST', `${CONFIG.public_url}/app/${app.app_id}/sign`, {
  auth: `Bearer ${app.app_key}`,
  json: { ip: '203.0.113.7', useragent: 'keygate-dpop-interop/1.0', ...extra },
});

// A session bound to `keyPair`: the app backend names the device key's thumbprint.
async function signBound(app, sub, keyPair) {
  const jkt = await thumbprint(keyPair);
  const { status, body } = await signRaw(app, { sub, dpop_jkt: jkt });
  if (status !== 200) throw new CheckFailed(`POST /sign (dpop_jkt) of ${sub}: HTTP ${status}: ${show(body)}`);
  return { ...body, jkt };
}

// POST /app/{id}/renew, the app backend forwarding the device's proof in `dpop`.
const renew = (app, refreshToken, dpop) => call('POST', `${CONFIG.public_url}/app/${app.app_id}/renew`, {
  auth: `Bearer ${app.app_key}`,
  json: { refresh_token: refreshToken, ip: '203.0.113.7', useragent: 'keygate-dpop-interop/1.0', ...(dpop === undefined ? {} : { dpop }) },
});

// A token request sent by hand (no library): a public client with the given DPoP header.
const tokenByHand = (app, refreshToken, proof) => call('POST', tokenUrl(app), {
  form: { grant_type: 'refresh_token', refresh_token: refreshToken, client_id: app.app_id },
  headers: proof === undefined ? {} : { dpop: proof },
});

function expectHandError(answer, status, error, words, what) {
  expect(answer.status === status && answer.body?.error === error,
    `${what}: got ${answer.status} ${show(answer.body)}, want ${status} ${error}`);
  const description = answer.body.error_description ?? answer.body.message;
  if (words) expect(description?.includes(words), `${what}: ${show(description)} does not say ${show(words)}`);
}

// Both tokens of an answer are bound to `jkt`; the access token's sub and sid as signed.
function expectBound(tokens, jkt, session, what) {
  const access = jose.decodeJwt(tokens.access_token ?? tokens.auth_token);
  const refresh = jose.decodeJwt(tokens.refresh_token);
  expectEqual(access.cnf, { jkt }, `${what}: access token cnf`);
  expectEqual(refresh.cnf, { jkt }, `${what}: refresh token cnf`);
  if (session) expectEqual([access.sub, access.sid], [session.sub, session.session_id], `${what}: sub/sid`);
}

// ---- oauth4webapi -----------------------------------------------------------

// RFC 8414 discovery with oauth4webapi: the app's authorization server metadata.
async function discoverAs(app) {
  const issuer = new URL(app.issuer);
  const response = await oauth.discoveryRequest(issuer, {
    algorithm: 'oauth2', [oauth.allowInsecureRequests]: true, [oauth.customFetch]: recordingFetch('discovery'),
  });
  return oauth.processDiscoveryResponse(issuer, response);
}

// One public client's refresh with oauth4webapi: None() client auth, the DPoP handle.
async function o4wRefresh(as, app, dpop, refreshToken, tag = 'o4w') {
  const c = { client_id: app.app_id, token_endpoint_auth_method: 'none' };
  const response = await oauth.refreshTokenGrantRequest(as, c, oauth.None(), refreshToken, {
    DPoP: dpop, [oauth.allowInsecureRequests]: true, [oauth.customFetch]: recordingFetch(tag),
  });
  return oauth.processRefreshTokenResponse(as, c, response);
}

// oauth4webapi refreshes in a chain: each answer token_type dpop, bound to jkt, a new
// refresh token each time; the proofs the library sent are for POST to the token endpoint.
async function o4wChain(as, app, dpop, session, n, what, { alg = 'ES256' } = {}) {
  let refreshToken = session.refresh_token;
  const seen = new Set([refreshToken]);
  let tokens;
  for (let i = 0; i < n; i++) {
    const mark = wire.length;
    tokens = await o4wRefresh(as, app, dpop, refreshToken);
    const step = `${what} refresh ${i + 1}`;
    expectEqual(tokens.token_type, 'dpop', `${step}: token_type (lowercased by oauth4webapi)`);
    expect(!seen.has(tokens.refresh_token), `${step}: the refresh token is not new`);
    seen.add(tokens.refresh_token);
    expectBound(tokens, session.jkt, session, step);
    const [exchange] = requestsSince(mark);
    expectEqual([exchange.url, exchange.status], [tokenUrl(app), 200], `${step}: URL, status`);
    const body = new URLSearchParams(exchange.body);
    expect(body.get('client_id') === app.app_id && !body.has('client_secret') && !exchange.headers.authorization,
      `${step}: not a public client's request: ${exchange.body}`);
    const header = jose.decodeProtectedHeader(exchange.proof);
    const claims = jose.decodeJwt(exchange.proof);
    expectEqual([header.typ, header.alg], ['dpop+jwt', alg], `${step}: proof typ, alg`);
    expectEqual([claims.htm, claims.htu], ['POST', tokenUrl(app)], `${step}: proof htm, htu`);
    expectEqual(await jose.calculateJwkThumbprint(header.jwk), session.jkt, `${step}: the proof's jwk`);
    refreshToken = tokens.refresh_token;
  }
  return tokens;
}

// ---- openid-client ----------------------------------------------------------

// A public client's configuration by discovery (auth method none): no secret.
function discoverPublic(app, tag = 'oidc') {
  return client.discovery(new URL(app.issuer), app.app_id, undefined, client.None(), {
    algorithm: 'oauth2', execute: [client.allowInsecureRequests], [client.customFetch]: recordingFetch(tag),
  });
}

function discoverConfidential(app, tag = 'oidc-confidential') {
  return client.discovery(new URL(app.issuer), app.app_id, app.app_key, client.ClientSecretBasic(), {
    algorithm: 'oauth2', execute: [client.allowInsecureRequests], [client.customFetch]: recordingFetch(tag),
  });
}

// ---- the resource server (a local HTTP server, dpop_resource_server.mjs) ----

// GET /api/me on 127.0.0.1:<free port>: answers the access token's sub and cnf.jkt, or 401
// with a DPoP challenge (RFC 9449 §7.1).
async function startResourceServer(app) {
  const jwks = jose.createRemoteJWKSet(new URL(`${app.issuer}/jwks.json`));
  const seen = new Map();
  let base;
  const server = createServer(async (req, res) => {
    const request = { method: req.method, url: `${base}${req.url}`, headers: new Headers(req.headers) };
    try {
      const claims = await verifyDpopRequest(request, { jwks, issuer: app.issuer, audience: app.audience, seen });
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ sub: claims.sub, jkt: claims.cnf.jkt }));
    } catch (e) {
      const code = e instanceof DpopRequestError ? e.code : 'invalid_request';
      res.writeHead(401, {
        'content-type': 'application/json',
        'www-authenticate': `DPoP error="${code}", algs="${ALGS.join(' ')}"`,
      });
      res.end(JSON.stringify({ error: code, error_description: e.message }));
    }
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  base = `http://127.0.0.1:${server.address().port}`;
  return { server, base, jwks, seen };
}

// ---- the checks ------------------------------------------------------------

let CONFIG;

async function main(argv) {
  const verbose = argv.includes('-v');
  const args = argv.filter((a) => a !== '-v');
  if (args.length !== 1) {
    console.error('usage: node dpop_clients.mjs CONFIG_JSON [-v]');
    return 2;
  }
  CONFIG = JSON.parse(readFileSync(args[0], 'utf8'));
  const { dpop: APP, dpop_nonce: NONCE_APP, dpop_allowed: ALLOWED_APP, keygate: PLAIN_APP } = CONFIG.apps;
  for (const [name, app] of Object.entries({ dpop: APP, dpop_nonce: NONCE_APP, dpop_allowed: ALLOWED_APP, keygate: PLAIN_APP })) {
    if (!app?.app_id) throw new Error(`config.json has no app "${name}"`);
  }

  const checks = new Checks(verbose);
  const check = (name, fn) => checks.check(name, fn);
  const skip = (name, why) => console.log(`  skip ${name}: ${why}`);

  const device = await es256Key();
  const other = await es256Key();   // another device's key: its proofs must not do
  let as;
  let nonceAs;

  // ---- metadata and binding at /sign -----------------------------------------

  await check('metadata (oauth4webapi discovery): dpop_signing_alg_values_supported, auth method none', async () => {
    as = await discoverAs(APP);
    nonceAs = await discoverAs(NONCE_APP);
    for (const [doc, app] of [[as, APP], [nonceAs, NONCE_APP]]) {
      expectEqual(doc.issuer, app.issuer, 'issuer');
      expectEqual(doc.dpop_signing_alg_values_supported, ALGS, 'dpop_signing_alg_values_supported');
      expectEqual(doc.token_endpoint_auth_methods_supported, ['client_secret_basic', 'client_secret_post', 'none'],
        'token_endpoint_auth_methods_supported');
    }
    const plain = await discoverAs(PLAIN_APP);
    expect(!plain.token_endpoint_auth_methods_supported.includes('none'), 'an app without oauth_public_clients lists none');
  });

  await check('/sign with dpop_jkt (the thumbprint by jose): token_type DPoP, both tokens carry cnf.jkt; oauth4webapi\'s thumbprint agrees', async () => {
    const session = await signBound(APP, 'dpop-sign', device);
    expectEqual(session.token_type, 'DPoP', 'token_type');
    expectBound(session, session.jkt, { sub: 'dpop-sign', session_id: session.session_id }, '/sign');
    expectEqual(await oauth.DPoP({}, device).calculateThumbprint(), session.jkt, 'oauth4webapi\'s calculateThumbprint');
  });

  await check('an unbound session on a dpop=required app: /sign refused, 400 dpop_jkt', async () => {
    const { status, body } = await signRaw(APP, { sub: 'dpop-unbound' });
    expectEqual([status, body?.error, body?.errors?.[0]?.error_field], [400, 'invalid_request', 'dpop_jkt'], '/sign without dpop_jkt');
  });

  await check('a dpop_jkt on an app with dpop off: /sign refused, 400 dpop_jkt', async () => {
    const { status, body } = await signRaw(PLAIN_APP, { sub: 'dpop-off', dpop_jkt: await thumbprint(device) });
    expectEqual([status, body?.error, body?.errors?.[0]?.error_field], [400, 'invalid_request', 'dpop_jkt'], '/sign with dpop_jkt');
  });

  if (!as) {
    console.log('  FAIL setup: no authorization server metadata');
    console.log(`dpop: 0 passed, ${checks.failed + 1} failed`);
    return 1;
  }

  // ---- oauth4webapi ------------------------------------------------------------

  await check(`oauth4webapi: public client (None) with DPoP(client, keyPair), ${CHAIN} refreshes in a chain`, async () => {
    const session = await signBound(APP, 'o4w-chain', device);
    await o4wChain(as, APP, oauth.DPoP({}, device), { ...session, sub: 'o4w-chain' }, CHAIN, 'oauth4webapi');
  });

  await check('oauth4webapi: the nonce app answers use_dpop_nonce first (isDPoPNonceError), the retry with the nonce succeeds, and the handle keeps the nonce', async () => {
    const session = await signBound(NONCE_APP, 'o4w-nonce', device);
    const dpop = oauth.DPoP({}, device);
    const mark = wire.length;
    const e = await expectRejected(() => o4wRefresh(nonceAs, NONCE_APP, dpop, session.refresh_token),
      oauth.ResponseBodyError, 'the first proof (no nonce)');
    expect(oauth.isDPoPNonceError(e), `isDPoPNonceError is false for ${e.status} ${e.error}`);
    expectBodyError(e, 400, 'use_dpop_nonce', undefined, 'the first proof');
    const [first] = requestsSince(mark);
    const nonce = first.responseHeaders.get('dpop-nonce');
    expect(nonce, 'the use_dpop_nonce answer has no DPoP-Nonce header');
    expectEqual(jose.decodeJwt(first.proof).nonce, undefined, 'the first proof\'s nonce');

    let tokens = await o4wRefresh(nonceAs, NONCE_APP, dpop, session.refresh_token);   // the same token: nothing was spent
    const retry = lastRequest();
    expectEqual(jose.decodeJwt(retry.proof).nonce, nonce, 'the retry\'s nonce');
    expectEqual(tokens.token_type, 'dpop', 'token_type');
    expectBound(tokens, session.jkt, { sub: 'o4w-nonce', session_id: session.session_id }, 'after the retry');
    let fresh = retry.responseHeaders.get('dpop-nonce');
    expect(fresh, 'the 200 has no DPoP-Nonce header');
    for (let i = 0; i < SHORT_CHAIN; i++) {
      const before = wire.length;
      tokens = await o4wRefresh(nonceAs, NONCE_APP, dpop, tokens.refresh_token);
      const sent = requestsSince(before);
      expectEqual(sent.map((x) => x.status), [200], `refresh ${i + 2}: statuses (one request, no nonce error)`);
      expectEqual(jose.decodeJwt(sent[0].proof).nonce, fresh, `refresh ${i + 2}: the proof carries the last DPoP-Nonce`);
      fresh = sent[0].responseHeaders.get('dpop-nonce');
      expect(fresh, `refresh ${i + 2}: no DPoP-Nonce on the 200`);
    }
  });

  // ---- openid-client -----------------------------------------------------------

  await check(`openid-client: discovery as a public client (None), getDPoPHandle, refreshTokenGrant chained ${SHORT_CHAIN} times`, async () => {
    const config = await discoverPublic(APP);
    expectEqual(config.serverMetadata().dpop_signing_alg_values_supported, ALGS, 'dpop_signing_alg_values_supported');
    const dpop = client.getDPoPHandle(config, device);
    const session = await signBound(APP, 'oidc-chain', device);
    let refreshToken = session.refresh_token;
    const seen = new Set([refreshToken]);
    for (let i = 0; i < SHORT_CHAIN; i++) {
      const tokens = await client.refreshTokenGrant(config, refreshToken, undefined, { DPoP: dpop });
      const exchange = lastRequest();
      const step = `refresh ${i + 1}`;
      expectEqual([exchange.url, exchange.status], [tokenUrl(APP), 200], `${step}: URL, status`);
      expectEqual(tokens.token_type, 'dpop', `${step}: token_type`);
      expect(!seen.has(tokens.refresh_token), `${step}: the refresh token is not new`);
      seen.add(tokens.refresh_token);
      expectBound(tokens, session.jkt, { sub: 'oidc-chain', session_id: session.session_id }, step);
      expectEqual(jose.decodeJwt(exchange.proof).htu, tokenUrl(APP), `${step}: proof htu`);
      refreshToken = tokens.refresh_token;
    }
  });

  await check('openid-client: on the nonce app, refreshTokenGrant retries use_dpop_nonce by itself, then goes on with the nonce it was given', async () => {
    const config = await discoverPublic(NONCE_APP);
    const dpop = client.getDPoPHandle(config, device);
    const session = await signBound(NONCE_APP, 'oidc-nonce', device);
    let mark = wire.length;
    let tokens = await client.refreshTokenGrant(config, session.refresh_token, undefined, { DPoP: dpop });
    let sent = requestsSince(mark);
    expectEqual(sent.map((x) => x.status), [400, 200], 'the first refresh: statuses');
    expectEqual(jose.decodeJwt(sent[1].proof).nonce, sent[0].responseHeaders.get('dpop-nonce'), 'the retry\'s nonce');
    expectBound(tokens, session.jkt, { sub: 'oidc-nonce', session_id: session.session_id }, 'first refresh');
    for (let i = 0; i < SHORT_CHAIN - 1; i++) {
      const nonce = lastRequest().responseHeaders.get('dpop-nonce');
      mark = wire.length;
      tokens = await client.refreshTokenGrant(config, tokens.refresh_token, undefined, { DPoP: dpop });
      sent = requestsSince(mark);
      expectEqual(sent.map((x) => x.status), [200], `refresh ${i + 2}: statuses`);
      expectEqual(jose.decodeJwt(sent[0].proof).nonce, nonce, `refresh ${i + 2}: nonce`);
      expectEqual(tokens.token_type, 'dpop', `refresh ${i + 2}: token_type`);
    }
  });

  await check('openid-client: tokenIntrospection (client_secret_basic) of bound tokens: token_type DPoP and cnf.jkt', async () => {
    const config = await discoverConfidential(APP);
    const session = await signBound(APP, 'oidc-introspect', device);
    const access = await client.tokenIntrospection(config, session.auth_token);
    expectEqual([access.active, access.token_type, access.token_use, access.cnf], [true, 'DPoP', 'access_token', { jkt: session.jkt }], 'access token');
    const refresh = await client.tokenIntrospection(config, session.refresh_token);
    expectEqual([refresh.active, refresh.token_use, refresh.cnf], [true, 'refresh_token', { jkt: session.jkt }], 'refresh token');
  });

  // ---- refusals that rotate nothing ---------------------------------------------

  await check('a proof by ANOTHER key pair (oauth4webapi): 400 invalid_dpop_proof, then the same token with the right key: 200', async () => {
    const session = await signBound(APP, 'o4w-other-key', device);
    const e = await expectRejected(() => o4wRefresh(as, APP, oauth.DPoP({}, other), session.refresh_token),
      oauth.ResponseBodyError, 'another key\'s proof');
    expectBodyError(e, 400, 'invalid_dpop_proof', 'another key', 'another key\'s proof');
    const tokens = await o4wRefresh(as, APP, oauth.DPoP({}, device), session.refresh_token);
    expectBound(tokens, session.jkt, null, 'afterwards');
  });

  await check('no proof: the public client and the confidential one (app key) both get 400 invalid_dpop_proof; nothing rotated', async () => {
    const session = await signBound(APP, 'no-proof', device);
    expectHandError(await tokenByHand(APP, session.refresh_token), 400, 'invalid_dpop_proof', 'proof is required', 'public client without a proof');
    const config = await discoverConfidential(APP);
    const e = await expectRejected(() => client.refreshTokenGrant(config, session.refresh_token), client.ResponseBodyError,
      'confidential client without a proof');
    expectBodyError(e, 400, 'invalid_dpop_proof', undefined, 'confidential client without a proof');
    const tokens = await client.refreshTokenGrant(config, session.refresh_token, undefined, { DPoP: client.getDPoPHandle(config, device) });
    expectEqual(tokens.token_type, 'dpop', 'afterwards (confidential client with a proof): token_type');
  });

  await check('a replayed proof: the one oauth4webapi sent (captured by customFetch), again with the next refresh token: 400 invalid_dpop_proof; the token still works', async () => {
    const session = await signBound(APP, 'o4w-replay', device);
    const dpop = oauth.DPoP({}, device);
    const tokens = await o4wRefresh(as, APP, dpop, session.refresh_token);
    const captured = lastRequest().proof;
    expect(typeof captured === 'string' && captured.split('.').length === 3, `no proof captured: ${captured}`);
    expectHandError(await tokenByHand(APP, tokens.refresh_token, captured), 400, 'invalid_dpop_proof', 'used before', 'the replayed proof');
    const next = await o4wRefresh(as, APP, dpop, tokens.refresh_token);
    expectBound(next, session.jkt, null, 'afterwards');
  });

  await check('proofs made with jose SignJWT: for the token endpoint accepted; for the revocation URL, for GET, out of the time window: 400 invalid_dpop_proof', async () => {
    const session = await signBound(APP, 'jose-htu', device);
    const revocation = `${APP.issuer}/oauth/revoke`;
    const now = Math.floor(Date.now() / 1000);
    const refusals = [
      [{ htu: revocation }, 'htu'],
      [{ htu: tokenUrl(APP), htm: 'GET' }, 'htm'],
      [{ htu: tokenUrl(APP), iat: now - 300 }, 'iat'],
      [{ htu: tokenUrl(APP), iat: now + 300 }, 'iat'],
    ];
    for (const [options, words] of refusals) {
      const answer = await tokenByHand(APP, session.refresh_token, await makeProof(device, options));
      expectHandError(answer, 400, 'invalid_dpop_proof', words, `a proof with ${show(options)}`);
    }
    // The same token with a good hand-made proof, with a query on its htu (§4.3: ignored).
    const answer = await tokenByHand(APP, session.refresh_token, await makeProof(device, { htu: `${tokenUrl(APP)}?x=1` }));
    expectEqual([answer.status, answer.body?.token_type], [200, 'DPoP'], 'a good hand-made proof');
    expect(answer.headers.get('cache-control') === 'no-store', 'no Cache-Control: no-store');
  });

  // ---- /renew (the app backend forwards the device's proof) --------------------

  await check(`/renew with proofs for the token endpoint URL (jose SignJWT, the device key), ${SHORT_CHAIN} in a chain; without dpop or with a proof for /renew's URL: 401 invalid_grant, nothing rotated`, async () => {
    const session = await signBound(APP, 'renew-chain', device);
    let refreshToken = session.refresh_token;
    const seen = new Set([refreshToken]);
    for (let i = 0; i < SHORT_CHAIN; i++) {
      const answer = await renew(APP, refreshToken, await makeProof(device, { htu: tokenUrl(APP) }));
      const step = `/renew ${i + 1}`;
      expectEqual([answer.status, answer.body?.token_type], [200, 'DPoP'], `${step}: status, token_type`);
      expect(!seen.has(answer.body.refresh_token), `${step}: the refresh token is not new`);
      seen.add(answer.body.refresh_token);
      expectBound(answer.body, session.jkt, { sub: 'renew-chain', session_id: session.session_id }, step);
      refreshToken = answer.body.refresh_token;
    }
    const without = await renew(APP, refreshToken);
    expectEqual([without.status, without.body?.error], [401, 'invalid_grant'], `/renew without dpop: ${show(without.body)}`);
    expect(without.body.message?.startsWith('invalid DPoP proof: '), `/renew without dpop: message ${show(without.body.message)}`);
    const wrongUrl = await renew(APP, refreshToken, await makeProof(device, { htu: `${CONFIG.public_url}/app/${APP.app_id}/renew` }));
    expectEqual([wrongUrl.status, wrongUrl.body?.error], [401, 'invalid_grant'], `/renew with a proof for /renew: ${show(wrongUrl.body)}`);
    expect(wrongUrl.body.message?.includes('htu'), `/renew with a proof for /renew: message ${show(wrongUrl.body.message)}`);
    const byOther = await renew(APP, refreshToken, await makeProof(other, { htu: tokenUrl(APP) }));
    expectEqual([byOther.status, byOther.body?.error], [401, 'invalid_grant'], `/renew with another key's proof: ${show(byOther.body)}`);
    const after = await renew(APP, refreshToken, await makeProof(device, { htu: tokenUrl(APP) }));
    expectEqual([after.status, after.body?.token_type], [200, 'DPoP'], `the same token afterwards: ${show(after.body)}`);
  });

  await check('/renew on the nonce app: 401 use_dpop_nonce with a DPoP-Nonce header, the retry with that nonce: 200 and a fresh DPoP-Nonce', async () => {
    const session = await signBound(NONCE_APP, 'renew-nonce', device);
    const first = await renew(NONCE_APP, session.refresh_token, await makeProof(device, { htu: tokenUrl(NONCE_APP) }));
    expectEqual([first.status, first.body?.error], [401, 'invalid_grant'], `without a nonce: ${show(first.body)}`);
    expect(first.body.message?.startsWith('use_dpop_nonce'), `without a nonce: message ${show(first.body.message)}`);
    const nonce = first.headers.get('dpop-nonce');
    expect(nonce, 'no DPoP-Nonce header on the 401');
    const bogus = await renew(NONCE_APP, session.refresh_token, await makeProof(device, { htu: tokenUrl(NONCE_APP), nonce: 'not-a-nonce' }));
    expect(bogus.status === 401 && bogus.body?.message?.startsWith('use_dpop_nonce'), `with a made-up nonce: ${bogus.status} ${show(bogus.body)}`);
    const retry = await renew(NONCE_APP, session.refresh_token, await makeProof(device, { htu: tokenUrl(NONCE_APP), nonce }));
    expectEqual([retry.status, retry.body?.token_type], [200, 'DPoP'], `with the nonce: ${show(retry.body)}`);
    expect(retry.headers.get('dpop-nonce'), 'no DPoP-Nonce header on the 200');
    expectBound(retry.body, session.jkt, { sub: 'renew-nonce', session_id: session.session_id }, 'with the nonce');
  });

  // ---- public clients and unbound sessions ---------------------------------------

  await check('dpop=allowed: an unbound session\'s token from a public client (oauth4webapi None, with or without a proof): 400 invalid_grant; the app key renews it (Bearer)', async () => {
    const allowedAs = await discoverAs(ALLOWED_APP);
    const { status, body: session } = await signRaw(ALLOWED_APP, { sub: 'allowed-unbound' });
    expectEqual([status, session?.token_type], [200, 'Bearer'], 'unbound /sign');
    expect(!('cnf' in jose.decodeJwt(session.auth_token)), 'cnf in an unbound token');
    for (const dpop of [undefined, oauth.DPoP({}, device)]) {
      const e = await expectRejected(() => o4wRefresh(allowedAs, ALLOWED_APP, dpop, session.refresh_token),
        oauth.ResponseBodyError, `public client, ${dpop ? 'with' : 'without'} a proof`);
      expectBodyError(e, 400, 'invalid_grant', undefined, `public client, ${dpop ? 'with' : 'without'} a proof`);
    }
    const config = await discoverConfidential(ALLOWED_APP);
    const tokens = await client.refreshTokenGrant(config, session.refresh_token);
    expectEqual(tokens.token_type, 'bearer', 'confidential client: token_type');
    // ... and a bound session of the same app renews as a public client.
    const bound = await signBound(ALLOWED_APP, 'allowed-bound', device);
    expectEqual(bound.token_type, 'DPoP', 'bound /sign: token_type');
    await o4wChain(allowedAs, ALLOWED_APP, oauth.DPoP({}, device), { ...bound, sub: 'allowed-bound' }, 2, 'allowed app');
  });

  await check('a public client of an app without oauth_public_clients: 401 invalid_client', async () => {
    const { status, body: session } = await signRaw(PLAIN_APP, { sub: 'plain-public' });
    expectEqual(status, 200, '/sign');
    const answer = await tokenByHand(PLAIN_APP, session.refresh_token);
    expectEqual([answer.status, answer.body?.error], [401, 'invalid_client'], `public client: ${show(answer.body)}`);
  });

  // ---- Ed25519 ------------------------------------------------------------------

  let edKey;
  try {
    edKey = await ed25519Key();
  } catch (e) {
    edKey = undefined;
    skip('Ed25519 device keys', `WebCrypto of node ${process.versions.node} cannot generate Ed25519 keys (${e?.message ?? e})`);
  }
  if (edKey) {
    await check(`Ed25519 device key (oauth4webapi, alg Ed25519, and EdDSA through modifyAssertion): ${SHORT_CHAIN - 1} refreshes each`, async () => {
      const session = await signBound(APP, 'o4w-ed25519', edKey);
      const tokens = await o4wChain(as, APP, oauth.DPoP({}, edKey), { ...session, sub: 'o4w-ed25519' }, SHORT_CHAIN - 1,
        'Ed25519', { alg: 'Ed25519' });
      const remap = { [oauth.modifyAssertion]: (header) => { if (header.alg === 'Ed25519') header.alg = 'EdDSA'; } };
      await o4wChain(as, APP, oauth.DPoP({}, edKey, remap), { ...session, sub: 'o4w-ed25519', refresh_token: tokens.refresh_token },
        SHORT_CHAIN - 1, 'EdDSA', { alg: 'EdDSA' });
    });
  }

  // ---- the resource server (RFC 9449 §7) ------------------------------------------

  const rs = await startResourceServer(APP);
  try {
    await check('resource server: openid-client\'s fetchProtectedResource and oauth4webapi\'s protectedResourceRequest pass verifyDpopRequest (jose: JWKS, EmbeddedJWK, htm/htu/iat/ath, cnf.jkt)', async () => {
      const config = await discoverPublic(APP, 'oidc-rs');
      const dpop = client.getDPoPHandle(config, device);
      const session = await signBound(APP, 'rs-user', device);
      const tokens = await client.refreshTokenGrant(config, session.refresh_token, undefined, { DPoP: dpop });
      const url = new URL(`${rs.base}/api/me?page=1`);
      const response = await client.fetchProtectedResource(config, tokens.access_token, url, 'GET', undefined, undefined, { DPoP: dpop });
      expectEqual([response.status, await response.json()], [200, { sub: 'rs-user', jkt: session.jkt }], 'openid-client');
      const sent = lastRequest();
      expect(sent.headers.authorization === `DPoP ${tokens.access_token}`, `Authorization: ${sent.headers.authorization?.slice(0, 20)}…`);
      const claims = jose.decodeJwt(sent.proof);
      expectEqual([claims.htm, claims.htu, claims.ath], ['GET', `${rs.base}/api/me`, await sha256b64u(tokens.access_token)], 'the proof\'s htm, htu, ath');
      const o4w = await oauth.protectedResourceRequest(tokens.access_token, 'GET', url, undefined, undefined, {
        DPoP: oauth.DPoP({}, device), [oauth.allowInsecureRequests]: true, [oauth.customFetch]: recordingFetch('o4w-rs'),
      });
      expectEqual([o4w.status, await o4w.json()], [200, { sub: 'rs-user', jkt: session.jkt }], 'oauth4webapi');
    });

    await check('resource server: a proof by another key (openid-client) gets 401 DPoP error="invalid_dpop_proof"; so do a replay, another ath, htm, htu, and Bearer', async () => {
      const config = await discoverPublic(APP, 'oidc-rs');
      const session = await signBound(APP, 'rs-refusals', device);
      const tokens = await client.refreshTokenGrant(config, session.refresh_token, undefined, { DPoP: client.getDPoPHandle(config, device) });
      const url = new URL(`${rs.base}/api/me`);
      const e = await expectRejected(
        () => client.fetchProtectedResource(config, tokens.access_token, url, 'GET', undefined, undefined, { DPoP: client.getDPoPHandle(config, other) }),
        client.WWWAuthenticateChallengeError, 'another key\'s proof');
      expectEqual([e.status, e.cause?.[0]?.scheme, e.cause?.[0]?.parameters?.error], [401, 'dpop', 'invalid_dpop_proof'], 'the challenge');

      // The same function, called directly with proofs made with jose.
      const ath = await sha256b64u(tokens.access_token);
      const verify = async (proof, { scheme = 'DPoP', method = 'GET', seen } = {}) => verifyDpopRequest(
        { method, url: url.href, headers: new Headers({ authorization: `${scheme} ${tokens.access_token}`, dpop: proof }) },
        { jwks: rs.jwks, issuer: APP.issuer, audience: APP.audience, seen });
      const good = await makeProof(device, { htm: 'GET', htu: url.href, ath });
      const seen = new Map();
      const claims = await verify(good, { seen });
      expectEqual(claims.cnf, { jkt: session.jkt }, 'a good jose proof: cnf');
      const refused = async (proof, options, words, what) => {
        const err = await expectRejected(() => verify(proof, options), DpopRequestError, what);
        expect(err.message.includes(words), `${what}: ${err.message}`);
      };
      await refused(good, { seen }, 'used before', 'a replayed proof');
      await refused(await makeProof(other, { htm: 'GET', htu: url.href, ath }), {}, 'another key', 'another key');
      await refused(await makeProof(device, { htm: 'GET', htu: url.href, ath: await sha256b64u('another token') }), {}, 'ath', 'another ath');
      await refused(await makeProof(device, { htm: 'GET', htu: url.href }), {}, 'ath', 'no ath');
      await refused(await makeProof(device, { htm: 'POST', htu: url.href, ath }), {}, 'htm', 'another htm');
      await refused(await makeProof(device, { htm: 'GET', htu: `${rs.base}/api/other`, ath }), {}, 'htu', 'another htu');
      await refused(await makeProof(device, { htm: 'GET', htu: url.href, ath, iat: Math.floor(Date.now() / 1000) - 600 }), {}, 'iat', 'an old proof');
      await refused(await makeProof(device, { htm: 'GET', htu: url.href, ath }), { scheme: 'Bearer' }, 'Authorization', 'the Bearer scheme');
      // The refresh token is not an access token (no aud).
      const asRefresh = await makeProof(device, { htm: 'GET', htu: url.href, ath: await sha256b64u(tokens.refresh_token) });
      const err = await expectRejected(() => verifyDpopRequest(
        { method: 'GET', url: url.href, headers: new Headers({ authorization: `DPoP ${tokens.refresh_token}`, dpop: asRefresh }) },
        { jwks: rs.jwks, issuer: APP.issuer, audience: APP.audience }), DpopRequestError, 'a refresh token');
      expectEqual(err.code, 'invalid_token', 'a refresh token: code');
    });

    if (edKey) {
      await check('resource server: an Ed25519 proof (oauth4webapi) passes verifyDpopRequest', async () => {
        const dpop = oauth.DPoP({}, edKey);
        const session = await signBound(APP, 'rs-ed25519', edKey);
        const tokens = await o4wRefresh(as, APP, dpop, session.refresh_token);
        const response = await oauth.protectedResourceRequest(tokens.access_token, 'GET', new URL(`${rs.base}/api/me`), undefined, undefined, {
          DPoP: dpop, [oauth.allowInsecureRequests]: true, [oauth.customFetch]: recordingFetch('o4w-rs'),
        });
        expectEqual([response.status, await response.json()], [200, { sub: 'rs-ed25519', jkt: session.jkt }], 'answer');
        expectEqual(jose.decodeProtectedHeader(lastRequest().proof).alg, 'Ed25519', 'proof alg');
      });
    }

    await check('resource server, RFC 9068 app: oauth4webapi\'s validateJwtAccessToken (requireDPoP) and verifyDpopRequest agree on the nonce app\'s at+jwt', async () => {
      const config = await discoverPublic(NONCE_APP, 'oidc-rs');
      const dpop = client.getDPoPHandle(config, device);
      const session = await signBound(NONCE_APP, 'rs-rfc9068', device);
      const tokens = await client.refreshTokenGrant(config, session.refresh_token, undefined, { DPoP: dpop });
      expectEqual(jose.decodeProtectedHeader(tokens.access_token).typ, 'at+jwt', 'access token typ');
      const url = `${rs.base}/api/me`;
      const request = async (key) => new Request(url, { headers: {
        authorization: `DPoP ${tokens.access_token}`,
        dpop: await makeProof(key, { htm: 'GET', htu: url, ath: await sha256b64u(tokens.access_token) }),
      } });
      const validate = async (req) => oauth.validateJwtAccessToken(nonceAs, req, NONCE_APP.audience, {
        requireDPoP: true, [oauth.allowInsecureRequests]: true,
      });
      const req = await request(device);
      const byLib = await validate(req);
      const byJose = await verifyDpopRequest(
        { method: req.method, url: req.url, headers: req.headers },
        { jwks: jose.createRemoteJWKSet(new URL(nonceAs.jwks_uri)), issuer: NONCE_APP.issuer, audience: NONCE_APP.audience });
      expectEqual([byLib.cnf, byLib.client_id, byLib.sub], [{ jkt: session.jkt }, NONCE_APP.app_id, 'rs-rfc9068'], 'validateJwtAccessToken');
      expectEqual(byJose.jti, byLib.jti, 'verifyDpopRequest: jti');
      const e = await expectRejected(async () => validate(await request(other)), oauth.OperationProcessingError, 'another key (validateJwtAccessToken)');
      expect(/confirmation/.test(e.message), `another key: ${e.message}`);
    });
  } finally {
    rs.server.close();
  }

  await check('docs/verifying-tokens.md shows dpop_resource_server.mjs as it is', async () => {
    const module = readFileSync(new URL('./dpop_resource_server.mjs', import.meta.url), 'utf8');
    const doc = readFileSync(new URL('../../docs/verifying-tokens.md', import.meta.url), 'utf8');
    const section = doc.slice(doc.indexOf('## DPoP-bound access tokens'));
    const block = /```js\nimport [^\n]* from 'jose';\n\n([\s\S]*?)```/.exec(section)?.[1];
    const shown = module.slice(module.indexOf('// A refused request'));
    expect(block !== undefined, 'no js code block in the "DPoP-bound access tokens" section');
    expect(block === shown, 'the code block differs from interop/oauth/dpop_resource_server.mjs (from "// A refused request" on)');
  });

  const who = `dpop: oauth4webapi ${VERSIONS.oauth4webapi}, openid-client ${VERSIONS.openidClient} (jose ${VERSIONS.jose}, node ${process.versions.node})`;
  console.log(`${CONFIG.backend.padEnd(8)} ${who}: ${checks.passed} passed, ${checks.failed} failed`);
  return checks.failed === 0 && checks.passed > 0 ? 0 : 1;
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (e) => {
    console.log(`  FAIL setup: ${e?.message ?? e}`);
    console.log(`dpop: oauth4webapi ${VERSIONS.oauth4webapi}, openid-client ${VERSIONS.openidClient}: 0 passed, 1 failed`);
    process.exit(1);
  },
);
