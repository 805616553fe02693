//! Loading many live sessions straight into the store, to measure renew at scale.

use std::io::Write;
use std::time::Instant;

use anyhow::{bail, Context};
use keygate_kernel::KeyId;
use keygate_sessions::{session_store, Jid, Session, SessionId};
use keygate_store::{Backend, DatabaseUrl, PoolOptions};
use keygate_tenants::AppId;

#[derive(Debug, Clone, clap::Args)]
pub struct PreloadArgs {
    /// The gateway's database (sqlite://… or postgres://…).
    #[arg(long, env = "KEYGATE_DATABASE_URL", hide_env_values = true)]
    database_url: String,
    /// The app that owns the sessions.
    #[arg(long)]
    app: String,
    /// How many sessions to insert.
    #[arg(long, default_value_t = 1_000_000)]
    sessions: u64,
    /// Sessions per transaction.
    #[arg(long, default_value_t = 10_000)]
    batch: u64,
}

/// Wall-clock seconds; the loader stamps sessions as created now.
#[allow(clippy::disallowed_methods)] // a load tool, outside the gateway's clock
fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

pub async fn run(args: &PreloadArgs) -> anyhow::Result<()> {
    let app_id: AppId = args.app.parse().map_err(|_| anyhow::anyhow!("--app is not an app id"))?;
    if args.batch == 0 {
        bail!("--batch must be at least 1");
    }
    let url = DatabaseUrl::from(args.database_url.as_str());
    let db = Backend::connect(&url, &PoolOptions::default())
        .await
        .with_context(|| format!("database {url}"))?;
    db.migrate().await?;
    let store = session_store(&db);
    let started = Instant::now();
    let mut done = 0u64;
    while done < args.sessions {
        let n = args.batch.min(args.sessions - done);
        let now = now();
        let batch: Vec<Session> = (0..n).map(|i| preloaded(app_id, done + i, now)).collect();
        done += store.bulk_insert(&batch).await.context("inserting sessions")?;
        let rate = done as f64 / started.elapsed().as_secs_f64();
        eprint!("\rpreloaded {done}/{} sessions ({rate:.0}/s)", args.sessions);
        let _ = std::io::stderr().flush();
    }
    eprintln!();
    println!(
        "{}",
        serde_json::json!({"preloaded": done, "seconds": (started.elapsed().as_secs_f64() * 10.0).round() / 10.0})
    );
    db.close().await;
    Ok(())
}

fn preloaded(app_id: AppId, n: u64, now: i64) -> Session {
    Session {
        session_id: SessionId::new(),
        app_id,
        sub: format!("preloaded-{n}"),
        claims: serde_json::Map::from_iter([(
            "aud".to_owned(),
            serde_json::Value::String("bench".into()),
        )]),
        created_at: now,
        expires_at: now + 90 * 86_400,
        current_jid: Jid::new(),
        current_iat: now,
        current_exp: now + 30 * 86_400,
        current_digest: None,
        // No token of a preloaded session was ever signed: an id that names no key.
        key_id: KeyId::new(),
        prev_jid: None,
        rotated_at: None,
        ip: "192.0.2.1".into(),
        useragent: "preloaded".into(),
        last_renewed_at: now,
        revoked_at: None,
        revoked_reason: None,
    }
}
