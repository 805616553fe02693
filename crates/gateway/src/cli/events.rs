//! `keygate events` and `keygate webhook`: an app's audit events, and the webhook that
//! receives them.

use clap::Subcommand;
use serde_json::json;

use super::output::{format_time, print_json_or, table};
use crate::bootstrap::Services;
use crate::usecases::admin::{self, Actor};
use crate::usecases::webhooks;

#[derive(Debug, Subcommand)]
pub enum WebhookCommand {
    /// Set the URL (https, or http to a loopback host) and a new signing secret, which is
    /// printed once.
    Set {
        app: String,
        #[arg(long)]
        url: String,
    },
    /// Show the webhook (never its secret).
    Show { app: String },
    /// Remove the webhook; pending deliveries are dropped.
    Remove { app: String },
}

/// The app named by id or name; the id of a deleted app, for its events.
async fn app_or_id(services: &Services, app: &str) -> anyhow::Result<keygate_tenants::AppId> {
    match admin::find_app(services, app).await {
        Ok(record) => Ok(record.app.app_id),
        Err(err) => app.parse().map_err(|_| err.into()),
    }
}

pub async fn list(
    services: &Services,
    app: &str,
    limit: i64,
    before: Option<&str>,
    kind: Option<&str>,
    json: bool,
) -> anyhow::Result<()> {
    let app_id = app_or_id(services, app).await?;
    let page = admin::list_events(services, app_id, before, kind, Some(limit)).await?;
    print_json_or(json, &page, || {
        table(&["EVENT_ID", "TIME", "KIND", "ACTOR", "DETAIL"], &page.events, |e| {
            vec![
                e.event_id.clone(),
                format_time(e.created_at),
                e.kind.clone(),
                e.actor.clone(),
                e.detail.to_string(),
            ]
        });
        if let Some(next) = &page.next {
            println!("(more: --before {next})");
        }
    });
    Ok(())
}

pub async fn webhook(
    services: &Services,
    command: WebhookCommand,
    json: bool,
) -> anyhow::Result<()> {
    match command {
        WebhookCommand::Set { app, url } => {
            let app_id = admin::find_app(services, &app).await?.app.app_id;
            let set = webhooks::set(services, app_id, &url, Actor::Cli).await?;
            print_json_or(json, &set, || {
                println!("Webhook of {app_id}: {}", set.url);
                println!(
                    "Signing secret (shown only now; deliveries carry Keygate-Signature: \
                     t=TIME,v1=HMAC-SHA256(secret, \"TIME.BODY\")):\n\n  {}\n",
                    set.secret.expose()
                );
            });
        }
        WebhookCommand::Show { app } => {
            let app_id = admin::find_app(services, &app).await?.app.app_id;
            let view = webhooks::get(services, app_id).await?;
            print_json_or(json, &view, || {
                println!("url         {}", view.url);
                println!("created_at  {}", format_time(view.created_at));
            });
        }
        WebhookCommand::Remove { app } => {
            let app_id = admin::find_app(services, &app).await?.app.app_id;
            webhooks::remove(services, app_id).await?;
            print_json_or(json, &json!({"removed": app_id}), || {
                println!("Removed the webhook of {app_id}.");
            });
        }
    }
    Ok(())
}
