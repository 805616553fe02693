//! Apps (tenants), their app-key hashes, and the instance-wide settings (the root key's
//! hash, the master key's id).

use keygate_kernel::{AppId, AppSettings, Change};

use crate::{Backend, Sql, StoreError};

/// An app as stored: its settings, and the hashes of the app keys it accepts (the keyed
/// form `hmac-sha256$…`, or an argon2id PHC string of a key made before it).
#[derive(Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct AppRow {
    pub app_id: AppId,
    pub name: String,
    #[sqlx(flatten)]
    pub settings: AppSettings,
    pub app_key_hash: String,
    pub prev_app_key_hash: Option<String>,
    pub prev_app_key_expires_at: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
}

impl std::fmt::Debug for AppRow {
    // The hashes stay out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppRow").field("app_id", &self.app_id).finish_non_exhaustive()
    }
}

const SELECT_APP: &str = "SELECT app_id, name, issuer, audience, token_expire, token_notbefore, \
    refresh_expire, refresh_notbefore, session_max_age, reuse_grace, rotation_period, \
    max_sessions_per_sub, refresh_rotation, on_reuse, access_token_profile, requests_per_second, \
    requests_burst, dpop, dpop_nonce, oauth_public_clients, app_key_hash, prev_app_key_hash, \
    prev_app_key_expires_at, created_at, updated_at FROM apps";

const INSERT_APP: &str = "INSERT INTO apps (app_id, name, issuer, audience, token_expire, \
    token_notbefore, refresh_expire, refresh_notbefore, session_max_age, reuse_grace, \
    rotation_period, max_sessions_per_sub, refresh_rotation, on_reuse, access_token_profile, \
    requests_per_second, requests_burst, dpop, dpop_nonce, oauth_public_clients, app_key_hash, \
    prev_app_key_hash, prev_app_key_expires_at, created_at, updated_at) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, \
    $20, $21, $22, $23, $24, $25)";

const UPDATE_APP: &str = "UPDATE apps SET name = $2, issuer = $3, audience = $4, \
    token_expire = $5, token_notbefore = $6, refresh_expire = $7, refresh_notbefore = $8, \
    session_max_age = $9, reuse_grace = $10, rotation_period = $11, \
    max_sessions_per_sub = $12, refresh_rotation = $13, on_reuse = $14, \
    access_token_profile = $15, requests_per_second = $16, requests_burst = $17, dpop = $18, \
    dpop_nonce = $19, oauth_public_clients = $20, updated_at = $21 WHERE app_id = $1";

const SET_APP_KEY: &str = "UPDATE apps SET app_key_hash = $2, prev_app_key_hash = $3, \
    prev_app_key_expires_at = $4, updated_at = $5 WHERE app_id = $1";

const DELETE_APP: &str = "DELETE FROM apps WHERE app_id = $1";
/// One stored form of an app key for another: whichever of the two columns holds `$2`.
const REPLACE_KEY_HASH: &str = "UPDATE apps SET \
    app_key_hash = CASE WHEN app_key_hash = $2 THEN $3 ELSE app_key_hash END, \
    prev_app_key_hash = CASE WHEN prev_app_key_hash = $2 THEN $3 ELSE prev_app_key_hash END \
    WHERE app_id = $1 AND (app_key_hash = $2 OR prev_app_key_hash = $2)";
/// How many stored app-key hashes (current ones, and previous ones still accepted at $1) are
/// argon2id PHC strings, and how many are keyed.
const KEY_HASH_FORMS: &str = "SELECT \
    COALESCE(SUM(CASE WHEN app_key_hash LIKE '$argon2%' THEN 1 ELSE 0 END), 0) \
    + COALESCE(SUM(CASE WHEN prev_app_key_hash LIKE '$argon2%' \
        AND prev_app_key_expires_at > $1 THEN 1 ELSE 0 END), 0), \
    COALESCE(SUM(CASE WHEN app_key_hash LIKE 'hmac-sha256$%' THEN 1 ELSE 0 END), 0) \
    + COALESCE(SUM(CASE WHEN prev_app_key_hash LIKE 'hmac-sha256$%' \
        AND prev_app_key_expires_at > $1 THEN 1 ELSE 0 END), 0) FROM apps";
const GET_SETTING: &str = "SELECT value FROM settings WHERE name = $1";
const REPLACE_SETTING: &str = "UPDATE settings SET value = $3 WHERE name = $1 AND value = $2";
const INSERT_SETTING: &str =
    "INSERT INTO settings (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING";
const PUT_SETTING: &str = "INSERT INTO settings (name, value) VALUES ($1, $2) \
    ON CONFLICT (name) DO UPDATE SET value = excluded.value";

/// The apps table. Every change to an app is announced to the other gateways.
#[derive(Debug, Clone, Copy)]
pub struct Apps<'a> {
    db: &'a Backend,
}

/// The settings table: instance-wide values by name.
#[derive(Debug, Clone, Copy)]
pub struct Settings<'a> {
    db: &'a Backend,
}

impl Backend {
    pub fn apps(&self) -> Apps<'_> {
        Apps { db: self }
    }

    pub fn settings(&self) -> Settings<'_> {
        Settings { db: self }
    }
}

/// The first 20 columns of [`INSERT_APP`] and of [`UPDATE_APP`], in order.
fn with_settings(sql: Sql, app: &AppRow) -> Sql {
    let s = &app.settings;
    sql.bind(app.app_id)
        .bind(&app.name)
        .bind(&s.issuer)
        .bind(&s.audience)
        .bind(s.token_expire)
        .bind(s.token_notbefore)
        .bind(s.refresh_expire)
        .bind(s.refresh_notbefore)
        .bind(s.session_max_age)
        .bind(s.reuse_grace)
        .bind(s.rotation_period)
        .bind(s.max_sessions_per_sub)
        .bind(s.refresh_rotation)
        .bind(s.on_reuse)
        .bind(s.access_token_profile)
        .bind(s.requests_per_second)
        .bind(s.requests_burst)
        .bind(s.dpop)
        .bind(s.dpop_nonce)
        .bind(s.oauth_public_clients)
}

impl Apps<'_> {
    /// Fails with `Conflict` when the name is taken.
    pub async fn insert(&self, app: &AppRow) -> Result<(), StoreError> {
        let sql = with_settings(Sql::new(INSERT_APP), app)
            .bind(&app.app_key_hash)
            .bind(&app.prev_app_key_hash)
            .bind(app.prev_app_key_expires_at)
            .bind(app.created_at)
            .bind(app.updated_at);
        self.db.write(sql).execute().await.map(drop)
    }

    pub async fn get(&self, app_id: AppId) -> Result<Option<AppRow>, StoreError> {
        let sql = Sql::new(format!("{SELECT_APP} WHERE app_id = $1")).bind(app_id);
        self.db.read(sql).fetch_optional().await
    }

    pub async fn find_by_name(&self, name: &str) -> Result<Option<AppRow>, StoreError> {
        let sql = Sql::new(format!("{SELECT_APP} WHERE name = $1")).bind(name);
        self.db.read(sql).fetch_optional().await
    }

    /// Every app, by id.
    pub async fn list(&self) -> Result<Vec<AppRow>, StoreError> {
        self.db.read(Sql::new(format!("{SELECT_APP} ORDER BY app_id"))).fetch_all().await
    }

    /// Writes the name and settings, and `updated_at`. `NotFound` if the app is gone,
    /// `Conflict` when the new name is taken.
    pub async fn update(&self, app: &AppRow) -> Result<(), StoreError> {
        let sql = with_settings(Sql::new(UPDATE_APP), app).bind(app.updated_at);
        if self.db.write(sql).execute().await? == 0 {
            return Err(StoreError::NotFound);
        }
        self.db.after_commit(Change::App(app.app_id)).await;
        Ok(())
    }

    /// Sets the app-key hashes the app accepts: `current`, and `previous` until
    /// `previous_expires_at`. `NotFound` if the app is gone.
    pub async fn set_key(
        &self,
        app_id: AppId,
        current: &str,
        previous: Option<&str>,
        previous_expires_at: Option<i64>,
        now: i64,
    ) -> Result<(), StoreError> {
        let sql = Sql::new(SET_APP_KEY)
            .bind(app_id)
            .bind(current)
            .bind(previous)
            .bind(previous_expires_at)
            .bind(now);
        if self.db.write(sql).execute().await? == 0 {
            return Err(StoreError::NotFound);
        }
        self.db.after_commit(Change::App(app_id)).await;
        Ok(())
    }

    /// Replaces the key hash `old` of the app with `new` (the same key, stored in another
    /// form), and announces the change. False when the app no longer has that hash.
    pub async fn replace_key_hash(
        &self,
        app_id: AppId,
        old: &str,
        new: &str,
    ) -> Result<bool, StoreError> {
        let sql = Sql::new(REPLACE_KEY_HASH).bind(app_id).bind(old).bind(new);
        let replaced = self.db.write(sql).execute().await? > 0;
        if replaced {
            self.db.after_commit(Change::App(app_id)).await;
        }
        Ok(replaced)
    }

    /// How many app-key hashes accepted at `now` are `(argon2id, keyed)`.
    pub async fn key_hash_forms(&self, now: i64) -> Result<(i64, i64), StoreError> {
        let row: Option<(i64, i64)> =
            self.db.read(Sql::new(KEY_HASH_FORMS).bind(now)).fetch_optional().await?;
        Ok(row.unwrap_or((0, 0)))
    }

    /// Deletes the app and, by cascade, everything it owns. False if there was no such app.
    pub async fn delete(&self, app_id: AppId) -> Result<bool, StoreError> {
        let deleted = self.db.write(Sql::new(DELETE_APP).bind(app_id)).execute().await?;
        self.db.after_commit(Change::App(app_id)).await;
        Ok(deleted > 0)
    }
}

impl Settings<'_> {
    pub async fn get(&self, name: &str) -> Result<Option<String>, StoreError> {
        let row: Option<(String,)> =
            self.db.read(Sql::new(GET_SETTING).bind(name)).fetch_optional().await?;
        Ok(row.map(|(value,)| value))
    }

    /// Inserts a setting unless it exists; true when this call inserted it.
    pub async fn insert(&self, name: &str, value: &str) -> Result<bool, StoreError> {
        let sql = Sql::new(INSERT_SETTING).bind(name).bind(value);
        Ok(self.db.write(sql).execute().await? > 0)
    }

    /// Replaces a setting that still holds `old` with `new`, and announces it; true when it
    /// did.
    pub async fn replace(&self, name: &str, old: &str, new: &str) -> Result<bool, StoreError> {
        let sql = Sql::new(REPLACE_SETTING).bind(name).bind(old).bind(new);
        let replaced = self.db.write(sql).execute().await? > 0;
        if replaced {
            self.db.after_commit(Change::Root).await;
        }
        Ok(replaced)
    }

    /// Writes a setting, and announces it (the root key's hash is one).
    pub async fn put(&self, name: &str, value: &str) -> Result<(), StoreError> {
        self.db.write(Sql::new(PUT_SETTING).bind(name).bind(value)).execute().await?;
        self.db.after_commit(Change::Root).await;
        Ok(())
    }
}
