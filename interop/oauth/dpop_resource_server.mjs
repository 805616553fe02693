// What a resource server must do with a DPoP-bound access token of keygate (RFC 9449 §7,
// with the proof checks of §4.3), with jose alone. interop/oauth/dpop_clients.mjs runs it
// against the requests that oauth4webapi and openid-client send; docs/verifying-tokens.md
// ("DPoP-bound access tokens") shows verifyDpopRequest as it is here.

import { createRequire } from 'node:module';
import { pathToFileURL } from 'node:url';

// jose lives in interop/node (the interop checks' package.json): resolve it from there.
const require = createRequire(new URL('../node/package.json', import.meta.url));
const { EmbeddedJWK, base64url, calculateJwkThumbprint, jwtVerify } =
  await import(pathToFileURL(require.resolve('jose')).href);

// A refused request: `code` is the error of the `WWW-Authenticate: DPoP` challenge to answer
// with (RFC 9449 §7.1): `invalid_token` or `invalid_dpop_proof`.
export class DpopRequestError extends Error {
  constructor(code, message, options) {
    super(message, options);
    this.code = code;
  }
}

const refuse = (code, message, cause) => { throw new DpopRequestError(code, message, { cause }); };

// The URI without its query and fragment, normalized by the URL parser (§4.3 step 9).
const withoutQuery = (uri) => {
  try {
    const url = new URL(uri);
    url.search = url.hash = '';
    return url.href;
  } catch {
    return undefined;
  }
};

// Verifies the DPoP-bound access token of an HTTP request and the DPoP proof beside it.
//   request: {method, url (as the client addressed this server), headers (a fetch Headers)}
//   jwks:    the app's keys, e.g. createRemoteJWKSet(new URL(`${issuer}/jwks.json`))
//   seen:    a Map (jti -> iat) of the proofs already accepted, for the replay check
// Returns the access token's claims; throws DpopRequestError.
export async function verifyDpopRequest(request, { jwks, issuer, audience, seen, maxAge = 60 }) {
  // §7.1: the token comes in `Authorization: DPoP <token>`; §4.3 step 1: one DPoP header.
  const [scheme, token, ...rest] = (request.headers.get('authorization') ?? '').split(' ');
  if (scheme.toLowerCase() !== 'dpop' || !token || rest.length) {
    refuse('invalid_token', 'the Authorization header must be "DPoP <access token>"');
  }
  const proof = request.headers.get('dpop');
  if (!proof || proof.includes(',')) refuse('invalid_dpop_proof', 'send exactly one DPoP header');

  // The access token: keygate's signature (the app's JWKS), issuer, audience, lifetime,
  // and a confirmation claim (§6.1): the thumbprint of the key it is bound to.
  const { payload: claims } = await jwtVerify(token, jwks, { issuer, audience, algorithms: ['ES256'] })
    .catch((e) => refuse('invalid_token', `access token: ${e.message}`, e));
  const jkt = claims.cnf?.jkt;
  if (typeof jkt !== 'string') refuse('invalid_token', 'the access token is not DPoP-bound (no cnf.jkt)');

  // §4.3 steps 2-7 and 11: a JWT, typ dpop+jwt, an asymmetric alg, signed by the public key
  // of its own jwk header (not a private one), with jti, htm, htu and iat, iat within
  // maxAge seconds of now.
  const { payload, protectedHeader } = await jwtVerify(proof, EmbeddedJWK, {
    typ: 'dpop+jwt',
    algorithms: ['ES256', 'EdDSA', 'Ed25519'],
    requiredClaims: ['jti', 'htm', 'htu', 'iat'],
    maxTokenAge: maxAge,
    clockTolerance: 5,
  }).catch((e) => refuse('invalid_dpop_proof', `proof: ${e.message}`, e));
  // §4.3 steps 8 and 9: made for this request's method and URI (query and fragment ignored).
  if (payload.htm !== request.method) refuse('invalid_dpop_proof', `the proof's htm is not ${request.method}`);
  if (typeof payload.htu !== 'string' || withoutQuery(payload.htu) !== withoutQuery(request.url)) {
    refuse('invalid_dpop_proof', `the proof's htu is not ${withoutQuery(request.url)}`);
  }
  // §4.3 step 12: made for this access token: ath = base64url(SHA-256(token)).
  const ath = base64url.encode(new Uint8Array(
    await crypto.subtle.digest('SHA-256', new TextEncoder().encode(token))));
  if (payload.ath !== ath) refuse('invalid_dpop_proof', 'the proof\'s ath is not the hash of this access token');
  // §4.3 step 12 and §6.1: signed by the key the access token is bound to.
  if (await calculateJwkThumbprint(protectedHeader.jwk, 'sha256') !== jkt) {
    refuse('invalid_dpop_proof', 'the proof is signed by another key than the access token\'s');
  }
  // §11.1: a proof is good once; remember its jti as long as its iat is in the window.
  if (seen) {
    const now = Math.floor(Date.now() / 1000);
    for (const [jti, iat] of seen) if (iat < now - maxAge - 5) seen.delete(jti);
    if (typeof payload.jti !== 'string' || seen.has(payload.jti)) refuse('invalid_dpop_proof', 'the proof was used before (its jti)');
    seen.set(payload.jti, payload.iat);
  }
  return claims;
}
