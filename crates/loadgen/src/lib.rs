//! `keygate-bench`: drives a running keygate over HTTP.
//!
//! Each connection opens its own session and keeps renewing with the refresh token it
//! received last, since a refresh token is single-use: these are rotating chains. Closed
//! loop runs C connections back to back for D seconds; open loop sends at a fixed rate and
//! measures latency from each request's intended start, so a slow server cannot hide its
//! queueing (coordinated omission).
//!
//! `--target oidc` drives an OAuth 2.0 server's refresh_token grant instead (the benchmark
//! peer, see bench/peer.sh): each connection takes its own pre-minted refresh token from
//! `--chains FILE` and keeps renewing with the latest one via `POST /token`.
//!
//! For both targets every chain checks that it never sends the same refresh token twice
//! (`resent`), and renews that fail are counted (`failed_renews`); both over the whole run,
//! warmup included. Either one makes the run exit 2, like any failed request.

mod client;
mod crash;
mod dpop;
mod failover;
mod harness;
mod isolation;
mod load;
mod preload;
mod procstat;
mod report;
mod tenants;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

pub use report::Report;

#[derive(Debug, Parser)]
#[command(name = "keygate-bench", version, about = "Load generator for keygate", long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Drive load against a running gateway and report throughput and latency.
    Run(RunArgs),
    /// Insert many live sessions for an app directly through the store, in bulk.
    Preload(preload::PreloadArgs),
    /// Kill a gateway under renew load, restart it on the same database, and check the
    /// journal of what it answered against what it now accepts (exit 1 on a violation).
    Crash(crash::CrashArgs),
    /// Fail a replicated Postgres over again and again under renew load on several
    /// gateways, and check that no token was lost, revived or doubled (exit 1 on a
    /// violation); reports the window of failed renews per failover.
    Failover(failover::FailoverArgs),
    /// Many apps on one gateway: create them, restart the gateway, then time the first
    /// renew of every app, renews round-robin across them against one app, RSS, and the
    /// cost of wrong app keys.
    Tenants(tenants::TenantsArgs),
    /// Tenant isolation: one app (B) renewing at a steady rate, alone, then beside another
    /// app (A) flooding the gateway under a request quota, then without one; B's latency
    /// and errors, A's served rate, 429s and 503s (exit 2 on an unexpected answer).
    Isolation(isolation::IsolationArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Rotate refresh tokens: each connection renews its own chain.
    Renew,
    /// Open sessions.
    Sign,
    /// Verify an auth token.
    Verify,
    /// 50% renew, 40% verify, 10% sign.
    Mixed,
    /// Renew like `renew`, through the app's OAuth 2.0 token endpoint
    /// (`/app/{app}/oauth/token`, `grant_type=refresh_token`, HTTP Basic client
    /// authentication).
    OauthRefresh,
    /// Renew like `renew`, for DPoP-bound sessions: each session is bound to a device key at
    /// `/sign` (`dpop_jkt`), and each renew forwards a fresh ES256 proof by it (`dpop`). The
    /// app needs `dpop` = `allowed` or `required`.
    DpopRenew,
}

/// What the load drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Target {
    /// A keygate gateway (`/app/{app}/renew`, `/sign`, `/verify`).
    Keygate,
    /// An OAuth 2.0 server's refresh_token grant (`POST /token`), renew only, from
    /// pre-minted refresh tokens (`--chains`).
    Oidc,
}

#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// What to drive.
    #[arg(long, value_enum, default_value = "keygate")]
    target: Target,
    /// The server's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// The app to drive (keygate).
    #[arg(long, required_unless_present = "chains")]
    app: Option<String>,
    /// The app key (keygate).
    #[arg(
        long,
        env = "KEYGATE_BENCH_APP_KEY",
        hide_env_values = true,
        required_unless_present = "chains"
    )]
    app_key: Option<String>,
    /// The pre-minted chains (oidc): `client_id=`, `client_secret=`, optional
    /// `auth=client_secret_basic|client_secret_post` and `token_path=/token` lines, then one
    /// refresh token a line; `#` starts a comment. Each connection takes its own token.
    #[arg(long, required_if_eq("target", "oidc"))]
    chains: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "renew")]
    mode: Mode,
    /// Concurrent connections (closed loop), or the most requests in flight (open loop).
    #[arg(long, short = 'c', default_value_t = 32)]
    connections: usize,
    /// How long to measure.
    #[arg(long, short = 'd', value_parser = humantime::parse_duration, default_value = "10s")]
    duration: Duration,
    /// Unmeasured load before the measurement.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1s")]
    warmup: Duration,
    /// Open loop: requests per second, sent on schedule whatever the server does.
    #[arg(long)]
    rate: Option<u64>,
    /// The server's PID, to report its CPU use and peak RSS.
    #[arg(long)]
    pid: Option<u32>,
    /// The command name of the database's processes (for example `postgres`), to report
    /// their CPU use per request too (they must run on this machine).
    #[arg(long)]
    db_process: Option<String>,
    /// A label for the report (for example the database).
    #[arg(long, default_value = "")]
    label: String,
    /// Print only the JSON line.
    #[arg(long)]
    json: bool,
    /// Client worker threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

impl Cli {
    /// Threads for the client's runtime: few, so the client leaves the CPU to the server.
    pub fn client_threads(&self) -> usize {
        match &self.command {
            Command::Run(args) => args.threads.max(1),
            Command::Preload(_) | Command::Crash(_) | Command::Failover(_) => 2,
            Command::Tenants(_) => 2,
            // A's flood; B has a thread and runtime of its own.
            Command::Isolation(_) => 2,
        }
    }
}

/// Runs the command. A load run with any failed request exits 2.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run(args) => {
            let report = load::run(&args).await?;
            if args.json {
                println!("{}", report.json_line());
            } else {
                print!("{}", report.table());
                println!("{}", report.json_line());
            }
            if report.failures() > 0 || report.tally.failed_renews > 0 || report.tally.resent > 0 {
                eprintln!("{}", report.failure_banner());
                return Ok(ExitCode::from(2));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Preload(args) => {
            preload::run(&args).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Crash(args) => {
            if crash::run(&args).await? {
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!("crash harness: VIOLATIONS found (see above)");
                Ok(ExitCode::FAILURE)
            }
        }
        Command::Tenants(args) => {
            let report = tenants::run(&args).await?;
            print!("{}", tenants::table(&report));
            println!("{report}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Isolation(args) => {
            let outcome = isolation::run(&args).await?;
            print!("{}", outcome.table);
            for line in &outcome.lines {
                println!("{line}");
            }
            if !outcome.unexpected.is_empty() {
                eprintln!(
                    "!!! ISOLATION: {} UNEXPECTED RESULTS:\n{} !!!",
                    outcome.unexpected.len(),
                    outcome.unexpected.join("\n")
                );
                return Ok(ExitCode::from(2));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Failover(args) => {
            if failover::run(&args).await? {
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!("failover: VIOLATIONS found, or the run did not finish (see above)");
                Ok(ExitCode::FAILURE)
            }
        }
    }
}
