// An oidc-provider adapter on better-sqlite3: one table for every model, WAL mode,
// synchronous=FULL (the setting keygate's SQLite store uses), so a committed write has
// been fsynced on both sides of the comparison. Each write is its own transaction, as
// oidc-provider calls the adapter: a rotating renew makes two (consume, then the new
// refresh token), and with FULL each waits for one fsync of the WAL.
//
// better-sqlite3 is synchronous: each call below runs to completion (and a write to its
// fsync) on the event loop, which is how it is meant to be used and as fast as it gets.

import Database from 'better-sqlite3';

const GRANTABLE = new Set([
  'AccessToken',
  'AuthorizationCode',
  'RefreshToken',
  'DeviceCode',
  'BackchannelAuthenticationRequest',
  'PreAuthorizedCode',
  'ClientCredentials',
]);

const now = () => Math.floor(Date.now() / 1000);

// FULL unless PEER_SYNCHRONOUS says otherwise (NORMAL, for a diagnosis only: the comparison
// is FULL against FULL).
const SYNCHRONOUS = { OFF: 0, NORMAL: 1, FULL: 2, EXTRA: 3 };

/** Opens (and creates) the database; every connection gets the same pragmas. */
export function openDatabase(file) {
  const wanted = (process.env.PEER_SYNCHRONOUS ?? 'FULL').toUpperCase();
  if (!(wanted in SYNCHRONOUS)) throw new Error(`PEER_SYNCHRONOUS=${wanted} is not a synchronous setting`);
  const db = new Database(file);
  db.pragma('journal_mode = WAL');
  db.pragma(`synchronous = ${wanted}`);
  db.pragma('busy_timeout = 5000');
  const journal = db.pragma('journal_mode', { simple: true });
  const synchronous = db.pragma('synchronous', { simple: true });
  if (journal !== 'wal' || synchronous !== SYNCHRONOUS[wanted]) {
    throw new Error(`SQLite is not in WAL/${wanted} mode (journal_mode=${journal}, synchronous=${synchronous})`);
  }
  db.exec(`
    CREATE TABLE IF NOT EXISTS oidc_payloads (
      type TEXT NOT NULL,
      id TEXT NOT NULL,
      payload TEXT NOT NULL,
      grant_id TEXT,
      user_code TEXT,
      uid TEXT,
      expires_at INTEGER,
      consumed_at INTEGER,
      PRIMARY KEY (type, id)
    ) WITHOUT ROWID;
    CREATE INDEX IF NOT EXISTS oidc_payloads_grant_id ON oidc_payloads (grant_id);
    CREATE INDEX IF NOT EXISTS oidc_payloads_user_code ON oidc_payloads (user_code);
    CREATE INDEX IF NOT EXISTS oidc_payloads_uid ON oidc_payloads (uid);
  `);
  return db;
}

/** Returns the adapter class oidc-provider instantiates once per model name. */
export function sqliteAdapter(db) {
  const stmt = {
    upsert: db.prepare(`
      INSERT INTO oidc_payloads (type, id, payload, grant_id, user_code, uid, expires_at, consumed_at)
      VALUES (@type, @id, @payload, @grant_id, @user_code, @uid, @expires_at, NULL)
      ON CONFLICT (type, id) DO UPDATE SET payload = excluded.payload, grant_id = excluded.grant_id,
        user_code = excluded.user_code, uid = excluded.uid, expires_at = excluded.expires_at,
        consumed_at = NULL`),
    find: db.prepare('SELECT payload, expires_at, consumed_at FROM oidc_payloads WHERE type = ? AND id = ?'),
    findByUid: db.prepare('SELECT payload, expires_at, consumed_at FROM oidc_payloads WHERE type = ? AND uid = ?'),
    findByUserCode: db.prepare('SELECT payload, expires_at, consumed_at FROM oidc_payloads WHERE type = ? AND user_code = ?'),
    consume: db.prepare('UPDATE oidc_payloads SET consumed_at = ? WHERE type = ? AND id = ?'),
    destroy: db.prepare('DELETE FROM oidc_payloads WHERE type = ? AND id = ?'),
    revokeByGrantId: db.prepare('DELETE FROM oidc_payloads WHERE grant_id = ?'),
  };

  const row = (r) => {
    if (!r || (r.expires_at !== null && r.expires_at < now())) return undefined;
    const payload = JSON.parse(r.payload);
    return r.consumed_at === null ? payload : { ...payload, consumed: r.consumed_at };
  };

  return class SqliteAdapter {
    constructor(name) {
      this.name = name;
    }

    async upsert(id, payload, expiresIn) {
      stmt.upsert.run({
        type: this.name,
        id,
        payload: JSON.stringify(payload),
        grant_id: GRANTABLE.has(this.name) ? (payload.grantId ?? null) : null,
        user_code: payload.userCode ?? null,
        uid: payload.uid ?? null,
        expires_at: typeof expiresIn === 'number' ? now() + expiresIn : null,
      });
    }

    async find(id) {
      return row(stmt.find.get(this.name, id));
    }

    async findByUid(uid) {
      return row(stmt.findByUid.get(this.name, uid));
    }

    async findByUserCode(userCode) {
      return row(stmt.findByUserCode.get(this.name, userCode));
    }

    async consume(id) {
      stmt.consume.run(now(), this.name, id);
    }

    async destroy(id) {
      stmt.destroy.run(this.name, id);
    }

    async revokeByGrantId(grantId) {
      stmt.revokeByGrantId.run(grantId);
    }
  };
}
