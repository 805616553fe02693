// Pre-mints refresh tokens for the load, straight through the provider's models, as the
// authorization_code grant would have issued them: one account, Grant and refresh token
// (scope "offline_access api", for the one resource server) per chain.
//
//   node mint.mjs DIR N FILE...
//
// Each FILE gets N fresh refresh tokens, one a line, after the client's credentials
// (`key=value` lines), in the chains format `keygate-bench run --target oidc --chains` reads.

import * as fs from 'node:fs';

import {
  ACCOUNT_PREFIX, CLIENT_ID, RESOURCE, SCOPE, makeProvider, secrets,
} from './provider.mjs';

const [dir, countArg, ...files] = process.argv.slice(2);
const count = Number.parseInt(countArg ?? '', 10);
if (!dir || !Number.isInteger(count) || count < 1 || files.length === 0) {
  console.error('usage: node mint.mjs DIR N FILE...');
  process.exit(64);
}

const { provider, db } = makeProvider(dir);
const client = await provider.Client.find(CLIENT_ID);
if (!client) throw new Error(`client ${CLIENT_ID} not found`);
const { client_secret: clientSecret } = secrets(dir);

const run = `${Date.now().toString(36)}-${process.pid}`;
let n = 0;
for (const file of files) {
  const lines = [
    '# keygate-bench chains: the peer\'s client, then one refresh token a line',
    `client_id=${CLIENT_ID}`,
    `client_secret=${clientSecret}`,
    'auth=client_secret_basic',
    'token_path=/token',
  ];
  for (let i = 0; i < count; i += 1) {
    const accountId = `${ACCOUNT_PREFIX}${run}-${n}`;
    n += 1;
    const grant = new provider.Grant({ accountId, clientId: CLIENT_ID });
    grant.addOIDCScope('offline_access');
    grant.addResourceScope(RESOURCE, SCOPE);
    const grantId = await grant.save();
    const refreshToken = new provider.RefreshToken({
      accountId,
      client,
      grantId,
      gty: 'authorization_code',
      scope: `offline_access ${SCOPE}`,
      resource: RESOURCE,
      expiresWithSession: false,
      authTime: Math.floor(Date.now() / 1000),
      rotations: 0,
    });
    lines.push(await refreshToken.save());
  }
  fs.writeFileSync(file, `${lines.join('\n')}\n`, { mode: 0o600 });
}
db.close();
console.error(`minted ${n} refresh tokens into ${files.length} file(s)`);
