//! Opening everything a command needs: the database (migrated), the master key, the root
//! key, and the domain services over them.

use std::fs;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use keygate_keyring::{key_store, Keyring, KeyringConfig, MasterKey};
use keygate_sessions::dpop::NonceKey;
use keygate_sessions::{session_store, Sessions};
use keygate_store::{Backend, DatabaseUrl, PoolOptions};
use keygate_tenants::events::event_store;
use keygate_tenants::{
    app_store, hmac_sha256, AppStore, KeyHashKey, RootKey, TenantError, Tenants, TenantsConfig,
};
use secrecy::ExposeSecret;

use crate::admission::Admission;
use crate::audit::Audit;
use crate::clock::Clock;
use crate::config::Settings;
use crate::metrics::Metrics;

const MASTER_KEY_FILE: &str = "master.key";
/// The setting that names the master key the database's private keys are sealed with.
pub(crate) const MASTER_KEY_ID_SETTING: &str = "master_key_id";

/// The domain services of one process.
#[derive(Debug)]
pub struct Services {
    pub db: Backend,
    pub tenants: Arc<Tenants>,
    pub keyring: Arc<Keyring>,
    pub sessions: Arc<Sessions>,
    pub jwks_max_age: u64,
    pub metrics: Arc<Metrics>,
    /// The audit trail: events, their store, and the webhooks' outbox.
    pub audit: Arc<Audit>,
    /// Seconds audit events are kept; 0 keeps them forever.
    pub audit_retention: i64,
    /// `public_url`, checked and without its trailing `/`.
    pub public_url: Option<String>,
    /// The time of every request and job; tests move it ahead instead of sleeping.
    pub clock: Clock,
    /// Each app's request quota, and fair admission of app requests under load.
    pub admission: Arc<Admission>,
    /// The key of the DPoP nonces, the same in every gateway of the database.
    pub dpop_nonces: NonceKey,
}

/// What bootstrapping did that the operator must hear about.
#[derive(Debug, Default)]
pub struct Bootstrap {
    /// The root key, when this run created it. It is shown once and never again.
    pub new_root_key: Option<RootKey>,
}

impl Services {
    /// Opens the database, applies migrations, loads (or on first use generates) the master
    /// key, and makes sure a root key exists.
    pub async fn open(settings: &Settings) -> anyhow::Result<(Self, Bootstrap)> {
        Self::open_with_clock(settings, Clock::system()).await
    }

    /// Like [`Self::open`], with the services reading time from `clock`.
    pub async fn open_with_clock(
        settings: &Settings,
        clock: Clock,
    ) -> anyhow::Result<(Self, Bootstrap)> {
        let public_url = settings.public_url()?;
        if settings.uses_embedded_database() {
            create_private_dir(&settings.data_dir)?;
        }
        let url = DatabaseUrl::from(settings.database_url());
        let pool_options = PoolOptions {
            postgres_connections: settings.postgres_max_connections,
            busy_timeout: Duration::from_millis(settings.database_busy_timeout_ms.max(1)),
            in_doubt_timeout: Duration::from_millis(settings.database_in_doubt_timeout_ms),
            ..PoolOptions::default()
        };
        let db = Backend::connect(&url, &pool_options)
            .await
            .with_context(|| format!("database {url}"))?;
        db.migrate().await.with_context(|| format!("database {url}"))?;

        let master = load_master_key(settings)?;
        let previous = settings
            .previous_master_keys
            .iter()
            .enumerate()
            .map(|(i, encoded)| {
                MasterKey::from_base64(encoded.expose_secret())
                    .with_context(|| format!("previous_master_keys, entry {}", i + 1))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let apps = app_store(&db);
        check_master_key(apps.as_ref(), &master, &previous).await?;

        let cache_ttl = Duration::from_secs(settings.cache_ttl);
        let keyring = Arc::new(
            Keyring::new(
                key_store(&db),
                master,
                KeyringConfig { cache_ttl, ..KeyringConfig::default() },
            )
            .with_previous_master_keys(previous),
        );
        let key_hash_key = load_key_hash_key(apps.as_ref(), &keyring).await?;
        let dpop_nonces =
            NonceKey::new(hmac_sha256(key_hash_key.expose(), &[b"keygate dpop nonce key v1"]));
        let tenants = Arc::new(Tenants::new(apps, TenantsConfig { cache_ttl, key_hash_key }));
        let new_root_key = tenants
            .ensure_root_key(settings.root_key.as_ref().map(|key| key.expose_secret()))
            .await
            .map_err(|e| match e {
                TenantError::Invalid(errors) => {
                    let errors: Vec<_> = errors.iter().map(ToString::to_string).collect();
                    anyhow::anyhow!("root key: {}", errors.join("; "))
                }
                other => anyhow::anyhow!("root key: {:#}", anyhow::Error::new(other)),
            })?;
        let metrics = Arc::new(Metrics::new());
        let audit = Arc::new(Audit::new(event_store(&db), metrics.clone(), clock.clone()));
        let sessions =
            Arc::new(Sessions::new(session_store(&db), keyring.clone()).with_audit(audit.clone()));
        let services = Self {
            db,
            tenants,
            keyring,
            sessions,
            jwks_max_age: settings.jwks_max_age,
            metrics,
            audit,
            audit_retention: i64::try_from(settings.audit_retention_days.saturating_mul(86_400))
                .unwrap_or(i64::MAX),
            public_url,
            clock,
            admission: Arc::new(Admission::new(settings.admission_limits())),
            dpop_nonces,
        };
        Ok((services, Bootstrap { new_root_key }))
    }
}

/// The setting that holds the key app keys and the root key are hashed under, sealed under
/// the master key: `MASTER_KEY_ID.BASE64URL(SEALED)`.
pub(crate) const KEY_HASH_KEY_SETTING: &str = "key_hash_key";
/// What the key-hash key is sealed for (the associated data of its sealing).
pub(crate) const KEY_HASH_KEY_CONTEXT: &str = "key-hash key";

/// The key-hash key of the database, made (and stored sealed) by the first process that
/// needs it; a process that loses that race uses the winner's.
async fn load_key_hash_key(apps: &AppStore, keyring: &Keyring) -> anyhow::Result<KeyHashKey> {
    loop {
        if let Some(stored) = apps.get_setting(KEY_HASH_KEY_SETTING).await? {
            return open_key_hash_key(keyring, &stored);
        }
        let key = KeyHashKey::generate();
        if apps.insert_setting(KEY_HASH_KEY_SETTING, &seal_key_hash_key(keyring, &key)?).await? {
            return Ok(key);
        }
    }
}

/// The setting's value for `key`, sealed under the current master key.
pub(crate) fn seal_key_hash_key(
    keyring: &Keyring,
    key: &KeyHashKey,
) -> Result<String, keygate_keyring::KeyringError> {
    let (sealed, master_key_id) = keyring.seal_secret(KEY_HASH_KEY_CONTEXT, key.expose())?;
    Ok(format!("{master_key_id}.{}", URL_SAFE_NO_PAD.encode(sealed)))
}

/// The key-hash key from its setting's value.
pub(crate) fn open_key_hash_key(keyring: &Keyring, stored: &str) -> anyhow::Result<KeyHashKey> {
    let corrupt = || anyhow::anyhow!("the {KEY_HASH_KEY_SETTING} setting is not a sealed key");
    let (master_key_id, sealed) = stored.split_once('.').ok_or_else(corrupt)?;
    let sealed = URL_SAFE_NO_PAD.decode(sealed).map_err(|_| corrupt())?;
    let bytes = keyring.open_secret(KEY_HASH_KEY_CONTEXT, master_key_id, &sealed)?;
    KeyHashKey::from_bytes(&bytes).ok_or_else(corrupt)
}

fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    if dir.exists() {
        return Ok(());
    }
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).with_context(|| format!("creating data directory {}", dir.display()))
}

/// `KEYGATE_MASTER_KEY`, else `KEYGATE_MASTER_KEY_FILE`, else `DATA_DIR/master.key`, which
/// is generated (mode 0600) on first use.
fn load_master_key(settings: &Settings) -> anyhow::Result<MasterKey> {
    if let Some(encoded) = &settings.master_key {
        return MasterKey::from_base64(encoded.expose_secret()).context("KEYGATE_MASTER_KEY");
    }
    if let Some(path) = &settings.master_key_file {
        return read_master_key(path);
    }
    let path = settings.data_dir.join(MASTER_KEY_FILE);
    if path.exists() {
        warn_if_readable_by_others(&path);
        return read_master_key(&path);
    }
    create_private_dir(&settings.data_dir)?;
    let master = MasterKey::generate();
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(&path)
        .with_context(|| format!("creating the master key file {}", path.display()))?;
    file.write_all(master.to_base64().as_bytes())
        .and_then(|()| file.write_all(b"\n"))
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing the master key file {}", path.display()))?;
    warn_operator(&format!(
        "generated a new master key in {} (mode 0600). It seals every private signing key: \
         back it up, and in production supply your own with KEYGATE_MASTER_KEY or \
         KEYGATE_MASTER_KEY_FILE.",
        path.display()
    ));
    Ok(master)
}

fn read_master_key(path: &Path) -> anyhow::Result<MasterKey> {
    let encoded = fs::read_to_string(path)
        .with_context(|| format!("reading the master key file {}", path.display()))?;
    MasterKey::from_base64(&encoded).with_context(|| format!("master key file {}", path.display()))
}

/// A warning for the operator: through the log when `serve` has set one up (so that a
/// JSON log stays one JSON object per line), else on stderr as text.
fn warn_operator(message: &str) {
    if tracing::dispatcher::has_been_set() {
        tracing::warn!("{message}");
    } else {
        eprintln!("warning: {message}");
    }
}

fn warn_if_readable_by_others(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = fs::metadata(path) {
            if meta.permissions().mode() & 0o077 != 0 {
                warn_operator(&format!(
                    "the master key file {} is readable by other users; run chmod 600 on it",
                    path.display()
                ));
            }
        }
    }
}

/// A database remembers the id of the master key that sealed its keys, so that a wrong
/// master key fails at startup with a clear message instead of at the first signature.
///
/// During a master-key rotation the database names the previous key until
/// `keygate master-key rotate` has re-sealed every private key; that key must then be among
/// `previous_master_keys`.
async fn check_master_key(
    apps: &keygate_tenants::AppStore,
    master: &MasterKey,
    previous: &[MasterKey],
) -> anyhow::Result<()> {
    apps.insert_setting(MASTER_KEY_ID_SETTING, master.id()).await?;
    let Some(expected) = apps.get_setting(MASTER_KEY_ID_SETTING).await? else {
        bail!("the database lost its master key id");
    };
    if expected != master.id() && !previous.iter().any(|p| p.id() == expected) {
        bail!(
            "the master key (id {}) is not the one this database's signing keys are sealed \
             with (id {expected}). Supply the right key with KEYGATE_MASTER_KEY or \
             KEYGATE_MASTER_KEY_FILE; while rotating the master key, also give the old one in \
             KEYGATE_PREVIOUS_MASTER_KEYS until `keygate master-key rotate` has run.",
            master.id()
        );
    }
    Ok(())
}
