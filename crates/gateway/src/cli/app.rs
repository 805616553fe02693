//! `keygate app`: create, list, show, update and delete apps, and rotate their app keys.

use clap::{Args, Subcommand};
use keygate_tenants::{AccessTokenProfile, App, DpopMode, OnReuse, SettingsPatch};
use serde_json::json;

use super::key::print_keys;
use super::output::{format_secs, format_time, print_json_or, table};
use crate::bootstrap::Services;
use crate::usecases::admin::{self, Actor};

#[derive(Debug, Subcommand)]
pub enum AppCommand {
    /// Create an app; prints its app key once.
    Create {
        #[arg(long)]
        name: String,
        #[command(flatten)]
        settings: SettingsArgs,
    },
    /// Create many apps in one run, from JSON lines (a file, or `-` for stdin): each line
    /// the body of `POST /root/apps`, e.g. `{"name": "shop", "token_expire": 600}`. Prints
    /// one JSON line per app created, with its app key (shown only now); a line that fails
    /// is reported on stderr with its number, and the rest go on.
    Import {
        /// The JSON-lines file, or `-` for stdin.
        file: String,
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

/// App settings as flags. Durations take a unit (`15m`, `30d`) or plain seconds.
#[derive(Debug, Args, Default)]
pub struct SettingsArgs {
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
    #[arg(long)]
    on_reuse: Option<OnReuse>,
    /// The profile of the app's tokens: keygate, or rfc9068 (typed for OAuth resource
    /// servers).
    #[arg(long)]
    access_token_profile: Option<AccessTokenProfile>,
    /// Requests a second the app may make on average (per gateway); 0 = no limit.
    #[arg(long)]
    requests_per_second: Option<i64>,
    /// Requests the app may make at once before the per-second rate applies; 0 = one
    /// second's worth.
    #[arg(long)]
    requests_burst: Option<i64>,
    /// Bind sessions to a key of the user's device with DPoP: off, allowed (when /sign
    /// names a key), or required (every session).
    #[arg(long)]
    dpop: Option<DpopMode>,
    /// DPoP proofs must carry a nonce from the gateway's DPoP-Nonce header (true/false).
    #[arg(long)]
    dpop_nonce: Option<bool>,
    /// The OAuth token endpoint takes public clients (client_id, no secret) for
    /// DPoP-bound sessions (true/false).
    #[arg(long)]
    oauth_public_clients: Option<bool>,
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
            access_token_profile: self.access_token_profile,
            requests_per_second: self.requests_per_second,
            requests_burst: self.requests_burst,
            dpop: self.dpop,
            dpop_nonce: self.dpop_nonce,
            oauth_public_clients: self.oauth_public_clients,
        }
    }
}

/// The flag that sets an API field, for error messages.
pub fn flag_for(field: &str) -> String {
    let flag = match field {
        "token_expire" => "auth-ttl",
        "token_notbefore" => "auth-nbf",
        "refresh_expire" => "refresh-ttl",
        "refresh_notbefore" => "refresh-nbf",
        other => return format!("--{}", other.replace('_', "-")),
    };
    format!("--{flag}")
}

pub(super) fn parse_duration(value: &str) -> Result<i64, String> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<i64>() {
        return if seconds >= 0 { Ok(seconds) } else { Err("must not be negative".into()) };
    }
    let duration = humantime::parse_duration(value)
        .map_err(|e| format!("{e} (use a number of seconds or a unit, e.g. 15m, 12h, 30d)"))?;
    i64::try_from(duration.as_secs()).map_err(|_| "too large".into())
}

pub async fn run(services: &Services, command: AppCommand, json: bool) -> anyhow::Result<()> {
    let now = services.clock.now();
    match command {
        AppCommand::Create { name, settings } => {
            let created =
                admin::create_app(services, &settings.into_patch(Some(name)), Actor::Cli, now)
                    .await?;
            print_json_or(json, &created, || {
                println!("Created app {}", created.app_id);
                println!("  app_key     {}", created.app_key.expose());
                println!("              (shown only now: store it safely)");
                println!("  key_id      {}", created.key_id);
                println!("  public_key  {}", created.public_key);
            });
        }
        AppCommand::Import { file } => import(services, &file, now).await?,
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
                println!(
                    "New app key for {app_id} (shown only now):\n\n  {}\n",
                    rotated.app_key.expose()
                );
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

fn print_apps(apps: &[App]) {
    if apps.is_empty() {
        println!("No apps yet. Create one with: keygate app create --name NAME");
        return;
    }
    table(&["APP_ID", "NAME", "AUTH_TTL", "REFRESH_TTL", "CREATED"], apps, |a| {
        vec![
            a.app_id.to_string(),
            a.name.clone(),
            format_secs(a.settings.token_expire),
            format_secs(a.settings.refresh_expire),
            format_time(a.created_at),
        ]
    });
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
        ("access_token_profile", s.access_token_profile.as_str().to_owned()),
        ("requests_per_second", s.requests_per_second.to_string()),
        ("requests_burst", s.requests_burst.to_string()),
        ("dpop", s.dpop.as_str().to_owned()),
        ("dpop_nonce", s.dpop_nonce.to_string()),
        ("oauth_public_clients", s.oauth_public_clients.to_string()),
        ("created_at", format_time(app.created_at)),
        ("updated_at", format_time(app.updated_at)),
    ];
    for (name, value) in rows {
        println!("{name:<21} {value}");
    }
}

/// Apps created at once by `app import`: the database takes one at a time anyway, and a few
/// in flight keep it busy.
const IMPORT_IN_FLIGHT: usize = 8;

/// `keygate app import FILE`: one app per JSON line; see [`AppCommand::Import`].
async fn import(services: &Services, file: &str, now: i64) -> anyhow::Result<()> {
    use futures::stream::{self, StreamExt};
    use std::io::BufRead;

    let reader: Box<dyn BufRead> = if file == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        let opened = std::fs::File::open(file).map_err(|e| anyhow::anyhow!("{file}: {e}"))?;
        Box::new(std::io::BufReader::new(opened))
    };
    let mut lines = Vec::new();
    for (n, line) in reader.lines().enumerate() {
        let line = line.map_err(|e| anyhow::anyhow!("{file}, line {}: {e}", n + 1))?;
        if !line.trim().is_empty() {
            lines.push((n + 1, line));
        }
    }
    let total = lines.len();
    let started = std::time::Instant::now();
    let create = |(n, line): (usize, String)| async move {
        let outcome = match serde_json::from_str::<SettingsPatch>(&line) {
            Ok(patch) => admin::create_app(services, &patch, Actor::Cli, now)
                .await
                .map(|created| (patch.name.unwrap_or_default(), created))
                .map_err(|e| describe(&e)),
            Err(e) => Err(format!("not an app's settings: {e}")),
        };
        (n, outcome)
    };
    let mut outcomes = stream::iter(lines).map(create).buffered(IMPORT_IN_FLIGHT);
    let (mut done, mut failed) = (0usize, 0usize);
    while let Some((n, outcome)) = outcomes.next().await {
        match outcome {
            Ok((name, created)) => {
                let line = json!({"line": n, "name": name, "app_id": created.app_id,
                    "app_key": created.app_key.expose(), "key_id": created.key_id});
                println!("{line}");
            }
            Err(message) => {
                failed += 1;
                eprintln!("line {n}: {message}");
            }
        }
        done += 1;
        if done % 500 == 0 {
            eprintln!("imported {done}/{total}");
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    eprintln!("{} of {total} apps created in {seconds:.1} s", total - failed);
    if failed > 0 {
        anyhow::bail!("{failed} of {total} lines failed (see above); the others were created");
    }
    Ok(())
}

/// One line about a failed creation: the bad fields, or the error and its causes.
fn describe(err: &crate::usecases::UseCaseError) -> String {
    match err {
        crate::usecases::UseCaseError::Invalid(errors) => {
            errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
        }
        other => format!("{:#}", anyhow::anyhow!("{other}")),
    }
}
