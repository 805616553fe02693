//! `keygate serve` and `keygate migrate`.

use anyhow::Context;
use serde_json::json;

use super::output::print_json_or;
use crate::bootstrap::Services;
use crate::config::Settings;
use crate::startup::Application;

/// The format of the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Pretty,
    Json,
}

pub fn root_key_banner(root_key: &str) -> String {
    format!(
        "\nkeygate created its root key. It is shown only this once; store it safely:\n\n  \
         {root_key}\n\nCreate your first app with:\n  keygate app create --name demo\nor \
         over HTTP:\n  curl -X POST -H 'Authorization: <root key>' -H 'Content-Type: \
         application/json' -d '{{\"name\":\"demo\"}}' http://127.0.0.1:8080/root/apps\n"
    )
}

pub async fn serve(settings: Settings, log_format: LogFormat) -> anyhow::Result<()> {
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
        keygate_store::DatabaseUrl::from(settings.database_url())
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

/// `keygate migrate`: opening the services has applied the migrations.
pub fn migrate(services: &Services, json: bool) {
    print_json_or(json, &json!({"status": "ok", "backend": services.db.backend()}), || {
        println!("migrations applied ({})", services.db.backend());
    });
}
