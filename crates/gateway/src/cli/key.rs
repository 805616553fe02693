//! `keygate keys`: list, rotate and revoke an app's signing keys.

use clap::Subcommand;
use keygate_keyring::KeyId;
use serde_json::json;

use super::output::{format_time, print_json_or, table};
use crate::bootstrap::Services;
use crate::usecases::admin::{self, Actor, KeyView};
use crate::usecases::UseCaseError;

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// List an app's signing keys.
    List { app: String },
    /// Rotate now: next becomes active, active retires, a new next is published.
    Rotate { app: String },
    /// Revoke a key at once; revoking the active key promotes the next key.
    Revoke { app: String, key_id: String },
}

pub async fn run(services: &Services, command: KeysCommand, json: bool) -> anyhow::Result<()> {
    let now = services.clock.now();
    match command {
        KeysCommand::List { app } => {
            let app_id = admin::find_app(services, &app).await?.app.app_id;
            let keys = admin::list_keys(services, app_id).await?;
            print_json_or(json, &json!({"keys": keys}), || print_keys(&keys));
        }
        KeysCommand::Rotate { app } => {
            let app_id = admin::find_app(services, &app).await?.app.app_id;
            let rotation = admin::rotate_keys(services, app_id, Actor::Cli, now).await?;
            print_json_or(json, &rotation, || {
                println!("Rotated the signing keys of {app_id}:");
                println!("  active   {}", rotation.active_key_id);
                println!("  retired  {}", rotation.retired_key_id);
                println!("  next     {}", rotation.next_key_id);
            });
        }
        KeysCommand::Revoke { app, key_id } => {
            let app_id = admin::find_app(services, &app).await?.app.app_id;
            let key_id: KeyId = key_id.parse().map_err(|_| {
                UseCaseError::invalid(
                    "key_id",
                    format!("{key_id:?} is not a key id (a 26-character ULID)"),
                )
            })?;
            let revocation = admin::revoke_key(services, app_id, key_id, Actor::Cli, now).await?;
            print_json_or(json, &revocation, || {
                println!(
                    "Revoked key {} (was {}).",
                    revocation.revoked_key_id, revocation.previous_status
                );
                println!("  active   {}", revocation.active_key_id);
                println!("  next     {}", revocation.next_key_id);
            });
        }
    }
    Ok(())
}

pub fn print_keys(keys: &[KeyView]) {
    let optional = |t: Option<i64>| t.map(format_time).unwrap_or_else(|| "-".into());
    table(&["KEY_ID", "STATUS", "CREATED", "ACTIVATED", "RETIRED", "REVOKED"], keys, |k| {
        vec![
            k.key_id.to_string(),
            k.status.to_string(),
            format_time(k.created_at),
            optional(k.activated_at),
            optional(k.retired_at),
            optional(k.revoked_at),
        ]
    });
}
