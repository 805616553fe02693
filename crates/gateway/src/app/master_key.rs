//! A master-key rotation (`keygate master-key rotate`; docs/operations.md has the whole
//! procedure).

use keygate_keyring::Reseal;
use keygate_tenants::app_store;

use super::{webhooks, AppError};
use crate::bootstrap::{Services, MASTER_KEY_ID_SETTING};

/// Re-seals every private key and webhook secret under the current master key, then
/// records that key's id as the one the database's keys are sealed with.
pub async fn reseal_all(
    services: &Services,
    progress: &dyn Fn(usize, usize),
) -> Result<Reseal, AppError> {
    let apps: Vec<_> = services.tenants.list_apps().await?.iter().map(|a| a.app_id).collect();
    let report = services.keyring.reseal(&apps, progress).await?;
    webhooks::reseal_all(services).await?;
    app_store(&services.db).put_setting(MASTER_KEY_ID_SETTING, &report.master_key_id).await?;
    Ok(report)
}
