//! The `keygate` command line. Admin commands work directly on the database with the same
//! configuration as `serve`, so they can run beside live gateways. With `--json` each
//! prints exactly one JSON object.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use serde_json::json;

use crate::bootstrap::Services;
use crate::config::Settings;
use crate::usecases::{admin, chain, UseCaseError};
pub use serve::LogFormat;

mod app;
mod events;
mod key;
mod output;
mod root;
mod serve;
mod session;

#[derive(Debug, Parser)]
#[command(name = "keygate", version, about = "keygate: a multi-tenant auth gateway", long_about = None)]
pub struct Cli {
    /// A TOML configuration file (also KEYGATE_CONFIG).
    #[arg(long, global = true, env = "KEYGATE_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// sqlite://PATH or postgres://… (overrides KEYGATE_DATABASE_URL).
    #[arg(long, global = true, value_name = "URL")]
    database_url: Option<String>,
    /// Print one JSON object instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// The format of the log on stderr: `pretty` (one line per event, for people) or
    /// `json` (one JSON object per line, for log collectors).
    #[arg(long, global = true, env = "KEYGATE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Pretty)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the HTTP gateway.
    Serve {
        /// Address to listen on (overrides KEYGATE_LISTEN).
        #[arg(long, value_name = "ADDR")]
        listen: Option<String>,
    },
    /// Apply database migrations and exit.
    Migrate,
    /// Manage apps (tenants).
    #[command(subcommand)]
    App(app::AppCommand),
    /// Manage an app's ES256 signing keys.
    #[command(subcommand)]
    Keys(key::KeysCommand),
    /// List or revoke an app's sessions.
    #[command(subcommand)]
    Sessions(session::SessionsCommand),
    /// Manage the root (platform admin) key.
    #[command(subcommand, name = "root-key")]
    RootKey(root::RootKeyCommand),
    /// Manage the master key that seals private signing keys at rest.
    #[command(subcommand, name = "master-key")]
    MasterKey(root::MasterKeyCommand),
    /// An app's audit events (reuse detected, revocations, rotations, app changes), newest
    /// first.
    Events {
        /// The app's id or name (the id of a deleted app still lists its events).
        app: String,
        /// Events per page (1 to 500).
        #[arg(long, default_value_t = admin::DEFAULT_EVENT_PAGE)]
        limit: i64,
        /// Only events older than this event id (the `next` of the previous page).
        #[arg(long, value_name = "EVENT_ID")]
        before: Option<String>,
        /// Only events of this kind (reuse_detected, session_revoked, key_rotated, …).
        #[arg(long)]
        kind: Option<String>,
    },
    /// Manage an app's webhook, which receives its audit events signed with HMAC-SHA256.
    #[command(subcommand)]
    Webhook(events::WebhookCommand),
}

/// Runs the command and reports failure with a message and a non-zero exit.
pub async fn run(cli: Cli) -> ExitCode {
    let json = cli.json;
    match execute(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            report(&err, json);
            ExitCode::FAILURE
        }
    }
}

/// A failure of a use case with its code, message and bad fields; any other failure with
/// its causes.
fn report(err: &anyhow::Error, json: bool) {
    if let Some(app_err) = err.downcast_ref::<UseCaseError>() {
        let fields: Vec<_> = match app_err {
            UseCaseError::Invalid(errors) => errors.iter().collect(),
            _ => Vec::new(),
        };
        if json {
            let errors: Vec<_> = fields
                .iter()
                .map(|e| json!({"error_field": e.field, "error_message": e.message}))
                .collect();
            let message = app_err.to_string();
            println!("{}", json!({"error": app_err.code(), "message": message, "errors": errors}));
        } else if fields.is_empty() {
            eprintln!("error: {}", chain(app_err));
        } else {
            eprintln!("error: invalid settings");
            for e in fields {
                eprintln!("  {} ({}): {}", e.field, app::flag_for(&e.field), e.message);
            }
        }
        return;
    }
    if json {
        println!("{}", json!({"error": "failed", "message": format!("{err:#}")}));
    } else {
        eprintln!("error: {err:#}");
    }
}

async fn execute(cli: Cli) -> anyhow::Result<()> {
    let mut settings = Settings::load(cli.config.as_deref())?;
    if let Some(url) = cli.database_url {
        settings.database_url = Some(url);
    }
    let json = cli.json;
    match cli.command {
        Command::Serve { listen } => {
            if let Some(listen) = listen {
                settings.listen = listen;
            }
            return serve::serve(settings, cli.log_format).await;
        }
        Command::MasterKey(root::MasterKeyCommand::Generate) => {
            root::generate_master_key(json);
            return Ok(());
        }
        _ => {}
    }
    let (services, bootstrap) = Services::open(&settings).await?;
    if let Some(root_key) = &bootstrap.new_root_key {
        // Admin commands print their result on stdout; the one-time key goes to stderr.
        eprintln!("{}", serve::root_key_banner(root_key.expose()));
    }
    let result = match cli.command {
        Command::Serve { .. } | Command::MasterKey(root::MasterKeyCommand::Generate) => Ok(()),
        Command::Migrate => {
            serve::migrate(&services, json);
            Ok(())
        }
        Command::App(command) => app::run(&services, command, json).await,
        Command::Keys(command) => key::run(&services, command, json).await,
        Command::Sessions(command) => session::run(&services, command, json).await,
        Command::Events { app, limit, before, kind } => {
            events::list(&services, &app, limit, before.as_deref(), kind.as_deref(), json).await
        }
        Command::Webhook(command) => events::webhook(&services, command, json).await,
        Command::MasterKey(root::MasterKeyCommand::Rotate) => {
            root::rotate_master_key(&services, json).await
        }
        Command::RootKey(root::RootKeyCommand::Rotate) => {
            root::rotate_root_key(&services, json).await
        }
    };
    services.db.close().await;
    result
}

#[cfg(test)]
mod tests {
    use super::app::{flag_for, parse_duration};
    use super::output::format_secs;
    use super::*;

    #[test]
    fn durations_take_units_or_seconds() {
        assert_eq!(parse_duration("15m"), Ok(900));
        assert_eq!(parse_duration("30d"), Ok(30 * 86_400));
        assert_eq!(parse_duration("42"), Ok(42));
        assert!(parse_duration("-5").is_err());
        assert!(parse_duration("soon").is_err());
        assert_eq!(format_secs(90 * 86_400), "90d");
        assert_eq!(format_secs(900), "15m");
        assert_eq!(format_secs(0), "0s");
        assert_eq!(format_secs(61), "61s");
    }

    #[test]
    fn the_cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn errors_point_at_the_flag() {
        assert_eq!(flag_for("token_expire"), "--auth-ttl");
        assert_eq!(flag_for("session_max_age"), "--session-max-age");
    }
}
