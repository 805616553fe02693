//! The `keygate` command line. Admin commands work directly on the database with the same
//! configuration as `serve`, so they can run beside live gateways. With `--json` each
//! prints exactly one JSON object.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use keygate_keyring::KeyId;
use keygate_tenants::{App, OnReuse, SettingsPatch};
use serde::Serialize;
use serde_json::json;

use crate::admin::Actor;
use crate::error::ApiError;
use crate::{admin, clock, webhooks, Application, Services, Settings};

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

/// The format of the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Pretty,
    Json,
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
    App(AppCommand),
    /// Manage an app's ES256 signing keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// List or revoke an app's sessions.
    #[command(subcommand)]
    Sessions(SessionsCommand),
    /// Manage the root (platform admin) key.
    #[command(subcommand, name = "root-key")]
    RootKey(RootKeyCommand),
    /// Manage the master key that seals private signing keys at rest.
    #[command(subcommand, name = "master-key")]
    MasterKey(MasterKeyCommand),
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
    },
    /// Manage an app's webhook, which receives its audit events signed with HMAC-SHA256.
    #[command(subcommand)]
    Webhook(WebhookCommand),
}

#[derive(Debug, Subcommand)]
enum WebhookCommand {
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

#[derive(Debug, Subcommand)]
enum MasterKeyCommand {
    /// Print a new random master key (base64 of 32 bytes), for KEYGATE_MASTER_KEY.
    Generate,
    /// Re-seal every private signing key under the current master key. Run it with the new
    /// key as KEYGATE_MASTER_KEY and the old one in KEYGATE_PREVIOUS_MASTER_KEYS
    /// (docs/operations.md has the whole procedure).
    Rotate,
}

#[derive(Debug, Subcommand)]
enum AppCommand {
    /// Create an app; prints its app key once.
    Create {
        #[arg(long)]
        name: String,
        #[command(flatten)]
        settings: SettingsArgs,
    },
    /// List apps.
    List,
    /// Show an app's settings and keys.
    Show { app: String },
    /// Change an app's settings.
    Update {
        app: String,
        /// A new name.
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        settings: SettingsArgs,
    },
    /// Delete an app with all its keys and sessions.
    Delete {
        app: String,
        /// Confirm the deletion.
        #[arg(long)]
        yes: bool,
    },
    /// Replace the app key; prints the new key once.
    RotateKey {
        app: String,
        /// How long the previous key keeps working (e.g. 10m; default: not at all).
        #[arg(long, value_parser = parse_duration, default_value = "0s")]
        grace: i64,
    },
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// List an app's signing keys.
    List { app: String },
    /// Rotate now: next becomes active, active retires, a new next is published.
    Rotate { app: String },
    /// Revoke a key at once; revoking the active key promotes the next key.
    Revoke { app: String, key_id: String },
}

#[derive(Debug, Subcommand)]
enum SessionsCommand {
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
struct RevokeTarget {
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

#[derive(Debug, Subcommand)]
enum RootKeyCommand {
    /// Replace the root key; prints the new key once.
    Rotate,
}

/// App settings as flags. Durations take a unit (`15m`, `30d`) or plain seconds.
#[derive(Debug, Args, Default)]
struct SettingsArgs {
    #[arg(long)]
    issuer: Option<String>,
    #[arg(long)]
    audience: Option<String>,
    /// Auth token lifetime (token_expire).
    #[arg(long, value_parser = parse_duration)]
    auth_ttl: Option<i64>,
    /// Delay before an auth token is valid (token_notbefore).
    #[arg(long, value_parser = parse_duration)]
    auth_nbf: Option<i64>,
    /// Refresh token lifetime since the last renew (refresh_expire).
    #[arg(long, value_parser = parse_duration)]
    refresh_ttl: Option<i64>,
    /// Delay before a refresh token is valid (refresh_notbefore).
    #[arg(long, value_parser = parse_duration)]
    refresh_nbf: Option<i64>,
    /// Absolute session lifetime (session_max_age).
    #[arg(long, value_parser = parse_duration)]
    session_max_age: Option<i64>,
    /// Window in which the previous refresh token is an idempotent retry (reuse_grace).
    #[arg(long, value_parser = parse_duration)]
    reuse_grace: Option<i64>,
    /// Signing key rotation period (rotation_period).
    #[arg(long, value_parser = parse_duration)]
    rotation_period: Option<i64>,
    /// Most live sessions per subject; 0 = no limit.
    #[arg(long)]
    max_sessions_per_sub: Option<i64>,
    /// Rotate the refresh token on every renew (true/false).
    #[arg(long)]
    refresh_rotation: Option<bool>,
    /// What a reused refresh token revokes.
    #[arg(long, value_parser = parse_on_reuse)]
    on_reuse: Option<OnReuse>,
}

impl SettingsArgs {
    fn into_patch(self, name: Option<String>) -> SettingsPatch {
        SettingsPatch {
            name,
            issuer: self.issuer,
            audience: self.audience,
            token_expire: self.auth_ttl,
            token_notbefore: self.auth_nbf,
            refresh_expire: self.refresh_ttl,
            refresh_notbefore: self.refresh_nbf,
            session_max_age: self.session_max_age,
            reuse_grace: self.reuse_grace,
            rotation_period: self.rotation_period,
            max_sessions_per_sub: self.max_sessions_per_sub,
            refresh_rotation: self.refresh_rotation,
            on_reuse: self.on_reuse,
        }
    }
}

/// The flag that sets an API field, for error messages.
fn flag_for(field: &str) -> String {
    let flag = match field {
        "token_expire" => "auth-ttl",
        "token_notbefore" => "auth-nbf",
        "refresh_expire" => "refresh-ttl",
        "refresh_notbefore" => "refresh-nbf",
        other => return format!("--{}", other.replace('_', "-")),
    };
    format!("--{flag}")
}

fn parse_duration(value: &str) -> Result<i64, String> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<i64>() {
        return if seconds >= 0 { Ok(seconds) } else { Err("must not be negative".into()) };
    }
    let duration = humantime::parse_duration(value)
        .map_err(|e| format!("{e} (use a number of seconds or a unit, e.g. 15m, 12h, 30d)"))?;
    i64::try_from(duration.as_secs()).map_err(|_| "too large".into())
}

fn parse_on_reuse(value: &str) -> Result<OnReuse, String> {
    value.parse()
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

fn report(err: &anyhow::Error, json: bool) {
    if let Some(api) = err.downcast_ref::<ApiError>() {
        let fields: Vec<_> = match api {
            ApiError::Invalid { errors, .. } => errors.iter().collect(),
            _ => Vec::new(),
        };
        if json {
            let errors: Vec<_> = fields
                .iter()
                .map(|e| json!({"error_field": e.field, "error_message": e.message}))
                .collect();
            println!(
                "{}",
                json!({"error": api.code(), "message": api.to_string(), "errors": errors})
            );
        } else if fields.is_empty() {
            eprintln!("error: {}", crate::error::chain(api));
        } else {
            eprintln!("error: invalid settings");
            for e in fields {
                eprintln!("  {} ({}): {}", e.field, flag_for(&e.field), e.message);
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
    if let Command::Serve { listen } = cli.command {
        if let Some(listen) = listen {
            settings.listen = listen;
        }
        return serve(settings, cli.log_format).await;
    }
    if let Command::MasterKey(MasterKeyCommand::Generate) = cli.command {
        // Needs no database and no configured key: nothing is created or opened.
        let key = keygate_keyring::MasterKey::generate();
        let encoded = key.to_base64();
        let body = json!({"master_key": encoded.as_str(), "master_key_id": key.id()});
        print_json_or(json, &body, || println!("{}", encoded.as_str()));
        return Ok(());
    }
    let (services, bootstrap) = Services::open(&settings).await?;
    if let Some(root_key) = &bootstrap.new_root_key {
        // Admin commands print their result on stdout; the one-time key goes to stderr.
        eprintln!("{}", root_key_banner(root_key.expose()));
    }
    let result = match cli.command {
        Command::Serve { .. } => Ok(()),
        Command::Migrate => {
            print_json_or(json, &json!({"status": "ok", "backend": services.db.backend()}), || {
                println!("migrations applied ({})", services.db.backend());
            });
            Ok(())
        }
        Command::App(command) => app_command(&services, command, json).await,
        Command::Keys(command) => keys_command(&services, command, json).await,
        Command::Sessions(command) => sessions_command(&services, command, json).await,
        Command::Events { app, limit, before } => {
            events_command(&services, &app, limit, before.as_deref(), json).await
        }
        Command::Webhook(command) => webhook_command(&services, command, json).await,
        Command::MasterKey(MasterKeyCommand::Generate) => Ok(()),
        Command::MasterKey(MasterKeyCommand::Rotate) => {
            let progress = |done: usize, total: usize| {
                if done == total || done % 100 == 0 {
                    eprintln!("re-sealed {done}/{total} keys");
                }
            };
            let report = crate::bootstrap::reseal_all(&services, &progress).await?;
            print_json_or(json, &report, || {
                println!(
                    "Every private key is sealed with master key {} now ({} re-sealed, {} already were).",
                    report.master_key_id, report.resealed, report.already_current
                );
                println!("The previous master key is no longer needed: remove it from KEYGATE_PREVIOUS_MASTER_KEYS.");
            });
            Ok(())
        }
        Command::RootKey(RootKeyCommand::Rotate) => {
            let key = services.tenants.rotate_root_key().await.map_err(ApiError::from)?;
            print_json_or(json, &json!({"root_key": key.expose()}), || {
                println!(
                    "New root key (shown only now; the old one no longer works):\n\n  {}\n",
                    key.expose()
                );
            });
            Ok(())
        }
    };
    services.db.close().await;
    result
}

/// The app named by id or name; the id of a deleted app, for its events.
async fn app_or_id(services: &Services, app: &str) -> anyhow::Result<keygate_tenants::AppId> {
    match admin::find_app(services, app).await {
        Ok(record) => Ok(record.app.app_id),
        Err(err) => app.parse().map_err(|_| err.into()),
    }
}

async fn events_command(
    services: &Services,
    app: &str,
    limit: i64,
    before: Option<&str>,
    json: bool,
) -> anyhow::Result<()> {
    let app_id = app_or_id(services, app).await?;
    let page = admin::list_events(services, app_id, before, Some(limit)).await?;
    print_json_or(json, &page, || {
        let rows: Vec<Vec<String>> = page
            .events
            .iter()
            .map(|e| {
                vec![
                    e.event_id.clone(),
                    format_time(e.created_at),
                    e.kind.clone(),
                    e.actor.clone(),
                    e.detail.to_string(),
                ]
            })
            .collect();
        table(&["EVENT_ID", "TIME", "KIND", "ACTOR", "DETAIL"], &rows);
        if let Some(next) = &page.next {
            println!("(more: --before {next})");
        }
    });
    Ok(())
}

async fn webhook_command(
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
                    set.secret
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

fn root_key_banner(root_key: &str) -> String {
    format!(
        "\nkeygate created its root key. It is shown only this once; store it safely:\n\n  \
         {root_key}\n\nCreate your first app with:\n  keygate app create --name demo\nor \
         over HTTP:\n  curl -X POST -H 'Authorization: <root key>' -H 'Content-Type: \
         application/json' -d '{{\"name\":\"demo\"}}' http://127.0.0.1:8080/root/apps\n"
    )
}

async fn serve(settings: Settings, log_format: LogFormat) -> anyhow::Result<()> {
    init_tracing(log_format);
    // Checked before the database is touched, so a bad route fails fast.
    let compat_routes = crate::compat::compile(&settings.compat)
        .context("invalid compatibility route configuration")?;
    let (services, bootstrap) = Services::open(&settings).await?;
    if let Some(root_key) = &bootstrap.new_root_key {
        println!("{}", root_key_banner(root_key.expose()));
    }
    let backend = services.db.backend();
    let app = Application::build(&settings, services)?;
    let shown = settings
        .listen
        .rsplit_once(':')
        .map_or(settings.listen.clone(), |(host, _)| format!("{host}:{}", app.port()));
    for route in &compat_routes {
        println!("compatibility route {}: {} {}", route.name, route.method, route.path);
    }
    println!(
        "keygate listening on http://{shown} (database: {backend}, {})",
        keygate_store::redact_url(&settings.database_url())
    );
    app.run_until_stopped().await?;
    Ok(())
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("KEYGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Pretty => {
            let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
            builder.with_ansi(ansi).try_init()
        }
        LogFormat::Json => builder.json().with_current_span(true).with_span_list(false).try_init(),
    };
}

fn print_json_or(json: bool, value: &impl Serialize, human: impl FnOnce()) {
    if json {
        match serde_json::to_string(value) {
            Ok(text) => println!("{text}"),
            Err(e) => eprintln!("error: {e}"),
        }
    } else {
        human();
    }
}

async fn app_command(services: &Services, command: AppCommand, json: bool) -> anyhow::Result<()> {
    let now = clock::now();
    match command {
        AppCommand::Create { name, settings } => {
            let created =
                admin::create_app(services, &settings.into_patch(Some(name)), Actor::Cli, now)
                    .await?;
            print_json_or(json, &created, || {
                println!("Created app {}", created.app_id);
                println!("  app_key     {}", created.app_key);
                println!("              (shown only now: store it safely)");
                println!("  key_id      {}", created.key_id);
                println!("  public_key  {}", created.public_key);
            });
        }
        AppCommand::List => {
            let apps = admin::list_apps(services).await?;
            print_json_or(json, &json!({"apps": apps}), || print_apps(&apps));
        }
        AppCommand::Show { app } => {
            let record = admin::find_app(services, &app).await?;
            let keys = admin::list_keys(services, record.app.app_id).await?;
            print_json_or(json, &json!({"app": record.app, "keys": keys}), || {
                print_app(&record.app);
                println!();
                print_keys(&keys);
            });
        }
        AppCommand::Update { app, name, settings } => {
            let app_id = admin::find_app(services, &app).await?.app.app_id;
            let patch = settings.into_patch(name);
            let updated = admin::update_app(services, app_id, &patch, Actor::Cli, now).await?;
            print_json_or(json, &updated, || print_app(&updated));
        }
        AppCommand::Delete { app, yes } => {
            let record = admin::find_app(services, &app).await?;
            if !yes {
                anyhow::bail!(
                    "refusing to delete app {} ({}) and all its keys and sessions without --yes",
                    record.app.app_id,
                    record.app.name
                );
            }
            admin::delete_app(services, record.app.app_id, Actor::Cli).await?;
            print_json_or(json, &json!({"deleted": record.app.app_id}), || {
                println!("Deleted app {} ({})", record.app.app_id, record.app.name);
            });
        }
        AppCommand::RotateKey { app, grace } => {
            let app_id = admin::find_app(services, &app).await?.app.app_id;
            let rotated = admin::rotate_app_key(services, app_id, grace, Actor::Cli, now).await?;
            print_json_or(json, &rotated, || {
                println!("New app key for {app_id} (shown only now):\n\n  {}\n", rotated.app_key);
                match rotated.previous_key_valid_until {
                    Some(until) => {
                        println!("The previous key keeps working until {}.", format_time(until))
                    }
                    None => println!("The previous key no longer works."),
                }
            });
        }
    }
    Ok(())
}

async fn keys_command(services: &Services, command: KeysCommand, json: bool) -> anyhow::Result<()> {
    let now = clock::now();
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
                ApiError::invalid(
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

async fn sessions_command(
    services: &Services,
    command: SessionsCommand,
    json: bool,
) -> anyhow::Result<()> {
    let now = clock::now();
    match command {
        SessionsCommand::List { app, sub } => {
            let app_id = admin::find_app(services, &app).await?.app.app_id;
            let sessions = admin::list_sessions(services, app_id, &sub, now).await?;
            print_json_or(json, &json!({"sessions": sessions}), || {
                let rows: Vec<Vec<String>> = sessions
                    .iter()
                    .map(|s| {
                        vec![
                            s.session_id.to_string(),
                            s.sub.clone(),
                            format_time(s.created_at),
                            format_time(s.last_renewed_at),
                            format_time(s.expires_at),
                            s.ip.clone(),
                            s.useragent.escape_debug().to_string(),
                        ]
                    })
                    .collect();
                table(
                    &["SESSION_ID", "SUB", "CREATED", "LAST_RENEWED", "EXPIRES", "IP", "USERAGENT"],
                    &rows,
                );
            });
        }
        SessionsCommand::Revoke { app, target } => {
            let app_id = admin::find_app(services, &app).await?.app.app_id;
            let session_id = match &target.session {
                Some(id) => Some(id.parse().map_err(|_| {
                    ApiError::invalid(
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

fn format_time(unix: i64) -> String {
    u64::try_from(unix)
        .ok()
        .map(|s| {
            humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + std::time::Duration::from_secs(s),
            )
            .to_string()
        })
        .unwrap_or_else(|| unix.to_string())
}

/// Seconds in the largest unit that divides them: `90d`, `15m`, `10s`.
fn format_secs(seconds: i64) -> String {
    for (unit, size) in [("d", 86_400), ("h", 3_600), ("m", 60)] {
        if seconds != 0 && seconds % size == 0 {
            return format!("{}{unit}", seconds / size);
        }
    }
    format!("{seconds}s")
}

/// Prints rows as aligned columns under a header.
fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> =
            cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(header.iter().map(|h| (*h).to_owned()).collect());
    for row in rows {
        line(row.clone());
    }
}

fn print_apps(apps: &[App]) {
    if apps.is_empty() {
        println!("No apps yet. Create one with: keygate app create --name NAME");
        return;
    }
    let rows: Vec<Vec<String>> = apps
        .iter()
        .map(|a| {
            vec![
                a.app_id.to_string(),
                a.name.clone(),
                format_secs(a.settings.token_expire),
                format_secs(a.settings.refresh_expire),
                format_time(a.created_at),
            ]
        })
        .collect();
    table(&["APP_ID", "NAME", "AUTH_TTL", "REFRESH_TTL", "CREATED"], &rows);
}

fn print_app(app: &App) {
    let s = &app.settings;
    let rows = [
        ("app_id", app.app_id.to_string()),
        ("name", app.name.clone()),
        ("issuer", s.issuer.clone()),
        ("audience", s.audience.clone()),
        ("token_expire", format_secs(s.token_expire)),
        ("token_notbefore", format_secs(s.token_notbefore)),
        ("refresh_expire", format_secs(s.refresh_expire)),
        ("refresh_notbefore", format_secs(s.refresh_notbefore)),
        ("session_max_age", format_secs(s.session_max_age)),
        ("reuse_grace", format_secs(s.reuse_grace)),
        ("rotation_period", format_secs(s.rotation_period)),
        ("max_sessions_per_sub", s.max_sessions_per_sub.to_string()),
        ("refresh_rotation", s.refresh_rotation.to_string()),
        ("on_reuse", s.on_reuse.as_str().to_owned()),
        ("created_at", format_time(app.created_at)),
        ("updated_at", format_time(app.updated_at)),
    ];
    for (name, value) in rows {
        println!("{name:<21} {value}");
    }
}

fn print_keys(keys: &[admin::KeyView]) {
    let optional = |t: Option<i64>| t.map(format_time).unwrap_or_else(|| "-".into());
    let rows: Vec<Vec<String>> = keys
        .iter()
        .map(|k| {
            vec![
                k.key_id.to_string(),
                k.status.to_string(),
                format_time(k.created_at),
                optional(k.activated_at),
                optional(k.retired_at),
                optional(k.revoked_at),
            ]
        })
        .collect();
    table(&["KEY_ID", "STATUS", "CREATED", "ACTIVATED", "RETIRED", "REVOKED"], &rows);
}

#[cfg(test)]
mod tests {
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
