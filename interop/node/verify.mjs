// Verify tokens issued by a real keygate with the `jose` npm package.
//
// Usage: node verify.mjs FIXTURE_DIR [-v]
//
// FIXTURE_DIR is written by interop/run.sh and holds:
//   expect.json  what the tokens must say: {"issuer", "audience", "sub", "roles"}
//   tokens.json  [{"step": "sign"|"renew", "request": {...}, "response": <token response>}]
//                exactly as keygate returned them
//   jwks.json    the body of GET /app/{id}/jwks.json
//
// A passing check prints nothing (unless -v), a failing one prints one FAIL line.
// The last line is "<summary>: N passed, M failed"; the exit code is 0 only if M == 0.

import { readFileSync } from 'node:fs';
import { CheckFailed, Checks, expect } from './checks.mjs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import * as jose from 'jose';

const ALGORITHMS = ['ES256'];
const ULID = /^[0-9A-HJKMNP-TV-Z]{26}$/;
const AUTH_CLAIMS = ['iss', 'sub', 'aud', 'iat', 'nbf', 'exp', 'jid', 'sid', 'ip', 'useragent'];


const sameJson = (a, b) => JSON.stringify(a) === JSON.stringify(b);

// fn must reject with an error of class `errorType`; returns that error.
async function expectRejected(fn, errorType, what) {
  try {
    await fn();
  } catch (e) {
    if (e instanceof errorType) return e;
    throw new CheckFailed(`${what}: expected ${errorType.name}, got ${e?.name ?? e}: ${e?.message ?? ''}`);
  }
  throw new CheckFailed(`${what}: was accepted`);
}

// Flip the low bit of one payload byte (the last character of the `sub` value), so
// the payload is still valid JSON with valid claims and only the signature is wrong.
function flipPayloadByte(token) {
  const [header, payload, signature] = token.split('.');
  const raw = Buffer.from(payload, 'base64url');
  const marker = Buffer.from('"sub":"');
  const start = raw.indexOf(marker) + marker.length;
  expect(start >= marker.length, 'token has no sub to tamper with');
  const last = raw.indexOf('"', start) - 1;
  expect(last >= start, 'token has an empty sub; cannot pick a byte to flip');
  raw[last] ^= 0x01;
  JSON.parse(raw.toString('utf8')); // still a well-formed claims set
  const tampered = [header, raw.toString('base64url'), signature].join('.');
  expect(tampered !== token, 'tampering did not change the token');
  return tampered;
}

function pemOf(response) {
  const b64 = response.public_key;
  expect(typeof b64 === 'string' && /^[A-Za-z0-9+/]+={0,2}$/.test(b64), 'public_key is not base64');
  const pem = Buffer.from(b64, 'base64').toString('utf8');
  expect(pem.startsWith('-----BEGIN PUBLIC KEY-----'), 'public_key is not an SPKI PEM');
  return pem;
}

async function main(argv) {
  const args = argv.filter((a) => a !== '-v');
  const verbose = argv.includes('-v');
  if (args.length !== 1) {
    console.error('usage: node verify.mjs FIXTURE_DIR [-v]');
    return 2;
  }
  const dir = args[0];
  const want = JSON.parse(readFileSync(join(dir, 'expect.json'), 'utf8'));
  const steps = JSON.parse(readFileSync(join(dir, 'tokens.json'), 'utf8'));
  const jwks = JSON.parse(readFileSync(join(dir, 'jwks.json'), 'utf8'));
  const jwksResolver = jose.createLocalJWKSet(jwks);

  const checks = new Checks(verbose);
  const check = (name, fn) => checks.check(name, fn);

  const options = (overrides = {}) => ({
    algorithms: ALGORITHMS,
    issuer: want.issuer,
    audience: want.audience,
    requiredClaims: ['exp'],
    ...overrides,
  });
  const pemKey = (response) => jose.importSPKI(pemOf(response), 'ES256');

  function checkAuthClaims({ payload: c, protectedHeader: h }, step) {
    const { request: req, response: resp } = step;
    expect(h.alg === 'ES256', `header alg ${h.alg}`);
    expect(h.typ === 'JWT', `header typ ${h.typ}`);
    expect(h.kid === resp.key_id, `header kid ${h.kid} != key_id ${resp.key_id}`);
    const missing = AUTH_CLAIMS.filter((k) => !(k in c));
    expect(missing.length === 0, `missing claims ${missing}`);
    expect(c.sub === want.sub, `sub ${c.sub}`);
    expect(sameJson(c.roles, want.roles), `roles ${JSON.stringify(c.roles)}`);
    expect(c.ip === req.ip, `ip ${c.ip} != request ip ${req.ip}`);
    expect(c.useragent === req.useragent, `useragent ${c.useragent}`);
    expect(c.sid === resp.session_id, `sid ${c.sid} != session_id`);
    expect(ULID.test(c.jid), `jid ${c.jid} is not a ULID`);
    expect(c.exp - c.iat === resp.expires_in, `exp - iat = ${c.exp - c.iat} != expires_in ${resp.expires_in}`);
    expect(c.iat <= c.nbf && c.nbf < c.exp, 'nbf outside [iat, exp)');
  }

  expect(Array.isArray(steps) && steps.length >= 1, 'tokens.json holds no token responses');

  for (const step of steps) {
    const label = step.step;
    const resp = step.response;
    const auth = resp.auth_token;
    const refresh = resp.refresh_token;

    await check(`${label}: auth token verifies with public_key PEM`, async () => {
      checkAuthClaims(await jose.jwtVerify(auth, await pemKey(resp), options()), step);
    });
    await check(`${label}: auth token verifies with JWKS key by kid`, async () => {
      checkAuthClaims(await jose.jwtVerify(auth, jwksResolver, options()), step);
    });
    await check(`${label}: flipped payload byte rejected (PEM)`, async () => {
      const bad = flipPayloadByte(auth);
      const key = await pemKey(resp);
      await expectRejected(() => jose.jwtVerify(bad, key, options()),
        jose.errors.JWSSignatureVerificationFailed, 'tampered token');
    });
    await check(`${label}: flipped payload byte rejected (JWKS)`, async () => {
      const bad = flipPayloadByte(auth);
      await expectRejected(() => jose.jwtVerify(bad, jwksResolver, options()),
        jose.errors.JWSSignatureVerificationFailed, 'tampered token');
    });
    await check(`${label}: wrong audience rejected`, async () => {
      const key = await pemKey(resp);
      const e = await expectRejected(
        () => jose.jwtVerify(auth, key, options({ audience: `${want.audience}-other` })),
        jose.errors.JWTClaimValidationFailed, 'token for another audience');
      expect(e.claim === 'aud', `rejected for ${e.claim}, not aud`);
    });
    await check(`${label}: wrong issuer rejected`, async () => {
      const key = await pemKey(resp);
      const e = await expectRejected(
        () => jose.jwtVerify(auth, key, options({ issuer: `${want.issuer}.evil` })),
        jose.errors.JWTClaimValidationFailed, 'token from another issuer');
      expect(e.claim === 'iss', `rejected for ${e.claim}, not iss`);
    });
    await check(`${label}: refresh token rejected when aud is required`, async () => {
      const key = await pemKey(resp);
      const e = await expectRejected(() => jose.jwtVerify(refresh, key, options()),
        jose.errors.JWTClaimValidationFailed, 'refresh token as auth token');
      expect(e.claim === 'aud' && e.reason === 'missing', `rejected for ${e.claim} (${e.reason}), not a missing aud`);
    });
    await check(`${label}: refresh token signature valid, type=refresh, no sub/aud`, async () => {
      // Positive control: the refresh token is a genuine token of this key; it is
      // refused above only because it has no aud.
      const { payload: c, protectedHeader: h } = await jose.jwtVerify(refresh, await pemKey(resp),
        options({ audience: undefined }));
      expect(c.type === 'refresh', `type ${c.type}`);
      expect(!('aud' in c) && !('sub' in c), 'refresh token carries aud or sub');
      expect(c.sid === resp.session_id, 'refresh sid != session_id');
      expect(h.kid === resp.key_id, 'refresh kid != key_id');
    });
  }

  await check('JWKS: EC P-256 ES256 signing keys, unique kids, no private members', async () => {
    const keys = jwks.keys;
    expect(Array.isArray(keys) && keys.length > 0, 'JWKS has no keys');
    const kids = keys.map((k) => k.kid);
    expect(new Set(kids).size === kids.length, 'duplicate kids in JWKS');
    for (const k of keys) {
      expect(k.kty === 'EC' && k.crv === 'P-256', `${k.kid}: not an EC P-256 key`);
      expect(k.alg === 'ES256' && k.use === 'sig', `${k.kid}: alg/use`);
      expect(!('d' in k), `${k.kid}: JWKS exposes private material`);
      const key = await jose.importJWK(k, 'ES256');
      expect(key.type === 'public', `${k.kid}: not a public key`);
    }
  });
  await check('public_key PEM equals the JWKS key with the same kid', async () => {
    for (const { step: label, response: resp } of steps) {
      const key = await jose.importSPKI(pemOf(resp), 'ES256', { extractable: true });
      const fromPem = await jose.exportJWK(key);
      const entry = jwks.keys.find((k) => k.kid === resp.key_id);
      expect(entry, `${label}: key_id ${resp.key_id} is not in the JWKS`);
      expect(fromPem.crv === entry.crv && fromPem.x === entry.x && fromPem.y === entry.y,
        `${label}: public_key PEM and JWKS key ${resp.key_id} differ`);
    }
  });
  await check('renew kept the session and rotated jids', async () => {
    expect(steps.length >= 2, 'no renewed token to compare');
    const first = steps[0].response;
    const last = steps[steps.length - 1].response;
    const [a, b] = [jose.decodeJwt(first.auth_token), jose.decodeJwt(last.auth_token)];
    const [ra, rb] = [jose.decodeJwt(first.refresh_token), jose.decodeJwt(last.refresh_token)];
    expect(a.sid === b.sid, 'renew changed the session id');
    expect(a.jid !== b.jid, 'renewed auth token reuses the jid');
    expect(ra.jid !== rb.jid, 'renew did not rotate the refresh token jid');
  });

  const require = createRequire(import.meta.url);
  const joseVersion = require('jose/package.json').version;
  console.log(`node    (jose ${joseVersion}, node ${process.versions.node}): ${checks.passed} passed, ${checks.failed} failed`);
  return checks.failed === 0 && checks.passed > 0 ? 0 : 1;
}

main(process.argv.slice(2)).then(
  (code) => { process.exitCode = code; },
  (e) => {
    console.log(`  FAIL fixture: ${e?.message ?? e}`);
    console.log('node    (jose): 0 passed, 1 failed');
    process.exitCode = 1;
  },
);
