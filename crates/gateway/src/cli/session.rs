//! `keygate sessions`: list or revoke an app's sessions.

use clap::{Args, Subcommand};
use serde_json::json;

use super::output::{format_time, print_json_or, table};
use crate::bootstrap::Services;
use crate::usecases::admin::{self, Actor};
use crate::usecases::UseCaseError;

#[derive(Debug, Subcommand)]
pub enum SessionsCommand {
    /// A subject's live sessions.
    List {
        app: String,
        #[arg(long)]
        sub: String,
    },
    /// Revoke sessions at once: their refresh tokens stop renewing and their auth tokens
    /// stop verifying.
    Revoke {
        app: String,
        #[command(flatten)]
        target: RevokeTarget,
    },
}

#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct RevokeTarget {
    /// One session, by id.
    #[arg(long, value_name = "SESSION_ID")]
    session: Option<String>,
    /// Every session of this subject.
    #[arg(long)]
    sub: Option<String>,
    /// Every session of the app.
    #[arg(long)]
    all: bool,
}

pub async fn run(services: &Services, command: SessionsCommand, json: bool) -> anyhow::Result<()> {
    let now = services.clock.now();
    match command {
        SessionsCommand::List { app, sub } => {
            let app_id = admin::find_app(services, &app).await?.app.app_id;
            let sessions = admin::list_sessions(services, app_id, &sub, now).await?;
            print_json_or(json, &json!({"sessions": sessions}), || {
                let header =
                    ["SESSION_ID", "SUB", "CREATED", "LAST_RENEWED", "EXPIRES", "IP", "USERAGENT"];
                table(&header, &sessions, |s| {
                    vec![
                        s.session_id.to_string(),
                        s.sub.clone(),
                        format_time(s.created_at),
                        format_time(s.last_renewed_at),
                        format_time(s.expires_at),
                        s.ip.clone(),
                        s.useragent.escape_debug().to_string(),
                    ]
                });
            });
        }
        SessionsCommand::Revoke { app, target } => {
            let app_id = admin::find_app(services, &app).await?.app.app_id;
            let session_id = match &target.session {
                Some(id) => Some(id.parse().map_err(|_| {
                    UseCaseError::invalid(
                        "session",
                        format!("{id:?} is not a session id (a 26-character ULID)"),
                    )
                })?),
                None => None,
            };
            let target = match (session_id, target.sub.as_deref()) {
                (Some(id), _) => Some(admin::SessionTarget::Session(id)),
                (None, Some(sub)) => Some(admin::SessionTarget::Subject(sub)),
                (None, None) => None,
            };
            let revoked = admin::revoke_sessions(services, app_id, target, Actor::Cli, now).await?;
            print_json_or(json, &json!({"revoked": revoked}), || {
                println!("Revoked {revoked} session(s).")
            });
        }
    }
    Ok(())
}
