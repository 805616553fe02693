//! A master-key rotation (`keygate master-key rotate`; docs/operations.md has the whole
//! procedure).

use keygate_keyring::Reseal;
use keygate_tenants::app_store;

use super::{webhooks, UseCaseError};
use crate::bootstrap::{
    open_key_hash_key, seal_key_hash_key, Services, KEY_HASH_KEY_SETTING, MASTER_KEY_ID_SETTING,
};

/// Re-seals every private key and webhook secret under the current master key, then
/// records that key's id as the one the database's keys are sealed with.
pub async fn reseal_all(
    services: &Services,
    progress: &dyn Fn(usize, usize),
) -> Result<Reseal, UseCaseError> {
    let apps: Vec<_> = services.tenants.list_apps().await?.iter().map(|a| a.app_id).collect();
    let report = services.keyring.reseal(&apps, progress).await?;
    webhooks::reseal_all(services).await?;
    reseal_key_hash_key(services).await?;
    app_store(&services.db).put_setting(MASTER_KEY_ID_SETTING, &report.master_key_id).await?;
    Ok(report)
}

/// Re-seals the key-hash key (which app keys and the root key are hashed under) under the
/// current master key, unless it already is. The key itself does not change, so every
/// stored key hash stays valid.
async fn reseal_key_hash_key(services: &Services) -> Result<(), UseCaseError> {
    let store = app_store(&services.db);
    let Some(stored) = store.get_setting(KEY_HASH_KEY_SETTING).await? else { return Ok(()) };
    let current = services.keyring.master().id();
    if stored.split_once('.').is_some_and(|(id, _)| id == current) {
        return Ok(());
    }
    let key = open_key_hash_key(&services.keyring, &stored)
        .map_err(|e| UseCaseError::Internal(format!("{e:#}").into()))?;
    let value = seal_key_hash_key(&services.keyring, &key)?;
    // A concurrent rotation may have re-sealed it first: then it is done.
    store.replace_setting(KEY_HASH_KEY_SETTING, &stored, &value).await?;
    Ok(())
}
