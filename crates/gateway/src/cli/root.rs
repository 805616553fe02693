//! `keygate root-key` and `keygate master-key`: the platform's own keys.

use clap::Subcommand;
use serde_json::json;

use super::output::print_json_or;
use crate::bootstrap::Services;
use crate::usecases::{master_key, UseCaseError};

#[derive(Debug, Subcommand)]
pub enum RootKeyCommand {
    /// Replace the root key; prints the new key once.
    Rotate,
}

#[derive(Debug, Subcommand)]
pub enum MasterKeyCommand {
    /// Print a new random master key (base64 of 32 bytes), for KEYGATE_MASTER_KEY.
    Generate,
    /// Re-seal every private signing key under the current master key. Run it with the new
    /// key as KEYGATE_MASTER_KEY and the old one in KEYGATE_PREVIOUS_MASTER_KEYS
    /// (docs/operations.md has the whole procedure).
    Rotate,
}

/// Prints a new random master key; needs no database and no configured key: nothing is
/// created or opened.
pub fn generate_master_key(json: bool) {
    let key = keygate_keyring::MasterKey::generate();
    let encoded = key.to_base64();
    let body = json!({"master_key": encoded.as_str(), "master_key_id": key.id()});
    print_json_or(json, &body, || println!("{}", encoded.as_str()));
}

pub async fn rotate_master_key(services: &Services, json: bool) -> anyhow::Result<()> {
    let progress = |done: usize, total: usize| {
        if done == total || done % 100 == 0 {
            eprintln!("re-sealed {done}/{total} keys");
        }
    };
    let report = master_key::reseal_all(services, &progress).await?;
    print_json_or(json, &report, || {
        println!(
            "Every private key is sealed with master key {} now ({} re-sealed, {} already were).",
            report.master_key_id, report.resealed, report.already_current
        );
        println!("The previous master key is no longer needed: remove it from KEYGATE_PREVIOUS_MASTER_KEYS.");
    });
    Ok(())
}

pub async fn rotate_root_key(services: &Services, json: bool) -> anyhow::Result<()> {
    let key = services.tenants.rotate_root_key().await.map_err(UseCaseError::from)?;
    print_json_or(json, &json!({"root_key": key.expose()}), || {
        println!(
            "New root key (shown only now; the old one no longer works):\n\n  {}\n",
            key.expose()
        );
    });
    Ok(())
}
