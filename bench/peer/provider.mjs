// The peer's configuration, shared by server.mjs and mint.mjs: panva's oidc-provider doing
// the refresh_token grant with rotation, access tokens as ES256-signed JWTs for one
// resource server, on the better-sqlite3 adapter (WAL, synchronous=FULL).

import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';

import Provider from 'oidc-provider';

import { openDatabase, sqliteAdapter } from './adapter.mjs';

export const ISSUER = 'http://127.0.0.1/keygate-bench-peer';
export const CLIENT_ID = 'keygate-bench';
export const RESOURCE = 'urn:keygate-bench:api';
export const SCOPE = 'api';
export const ACCOUNT_PREFIX = 'bench-';

/** The signing key and client secret, made once per data folder and shared by every process. */
export function secrets(dir) {
  const file = path.join(dir, 'secrets.json');
  if (!fs.existsSync(file)) {
    const { privateKey } = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const jwk = { ...privateKey.export({ format: 'jwk' }), kid: 'bench-es256', alg: 'ES256', use: 'sig' };
    const made = {
      jwk,
      client_secret: crypto.randomBytes(32).toString('base64url'),
      cookie_key: crypto.randomBytes(32).toString('base64url'),
    };
    fs.mkdirSync(dir, { recursive: true });
    fs.writeFileSync(`${file}.tmp`, JSON.stringify(made), { mode: 0o600 });
    fs.renameSync(`${file}.tmp`, file);
  }
  return JSON.parse(fs.readFileSync(file, 'utf8'));
}

/** A provider on DIR/peer.sqlite; returns it and its database. */
export function makeProvider(dir) {
  const { jwk, client_secret: clientSecret, cookie_key: cookieKey } = secrets(dir);
  const db = openDatabase(path.join(dir, 'peer.sqlite'));
  const provider = new Provider(ISSUER, {
    adapter: sqliteAdapter(db),
    clients: [{
      client_id: CLIENT_ID,
      client_secret: clientSecret,
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      redirect_uris: ['https://bench.example/callback'],
      token_endpoint_auth_method: 'client_secret_basic',
      id_token_signed_response_alg: 'ES256',
    }],
    clientDefaults: { id_token_signed_response_alg: 'ES256' },
    jwks: { keys: [jwk] },
    cookies: { keys: [cookieKey] },
    scopes: ['openid', 'offline_access', SCOPE],
    features: {
      devInteractions: { enabled: false },
      resourceIndicators: {
        enabled: true,
        defaultResource: async () => RESOURCE,
        useGrantedResource: async () => true,
        getResourceServerInfo: async (_ctx, resource) => {
          if (resource !== RESOURCE) throw new Provider.errors.InvalidTarget();
          return {
            scope: SCOPE,
            audience: RESOURCE,
            accessTokenTTL: 15 * 60,
            accessTokenFormat: 'jwt',
            jwt: { sign: { alg: 'ES256' } },
          };
        },
      },
    },
    rotateRefreshToken: true,
    issueRefreshToken: async () => true,
    findAccount: async (_ctx, sub) => ({ accountId: sub, claims: async () => ({ sub }) }),
    ttl: {
      AccessToken: 15 * 60,
      AuthorizationCode: 60,
      Grant: 90 * 86400,
      IdToken: 15 * 60,
      Interaction: 3600,
      RefreshToken: 30 * 86400,
      Session: 90 * 86400,
    },
  });
  return { provider, db };
}
