//! Building the HTTP server on a bound listener, so tests can ask for port 0, with the
//! background jobs it owns; and stopping both cleanly.

use std::net::TcpListener;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::{middleware, web, App, HttpServer};
use anyhow::Context;

use crate::bootstrap::Services;
use crate::config::Settings;
use crate::http::client_ip::TrustedProxies;
use crate::http::rate_limit::{self, AuthLimiter};
use crate::http::{metrics, request_id, routes};
use crate::jobs::Jobs;
use crate::usecases::{maintenance, webhooks};
use crate::{cache_coherence, compat};

/// The target of the access log's lines (actix-web's own).
const ACCESS_LOG: &str = "actix_web::middleware::logger";
/// How often the failed-authentication limiter forgets addresses that are back to fresh.
const LIMITER_SWEEP: Duration = Duration::from_secs(30);
/// How long a stopping gateway waits for the requests in flight to be answered.
pub const DRAIN_LIMIT: Duration = Duration::from_secs(30);
/// How long a stopping gateway waits for its background jobs once the server has stopped.
const JOBS_STOP_LIMIT: Duration = Duration::from_secs(10);

/// A gateway: its HTTP server and the background jobs it owns.
pub struct Application {
    port: u16,
    server: Server,
    jobs: Jobs,
}

impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application").field("port", &self.port).finish_non_exhaustive()
    }
}

impl Application {
    /// Binds `listen` and prepares the server; it serves once [`Self::run_until_stopped`]
    /// is awaited.
    /// Refuses compatibility routes that do not check out, naming the key at fault.
    /// Also starts its background jobs (cache coherence, the maintenance pass when
    /// `settings.janitor_interval` is not 0, webhook delivery, the sweeper of the
    /// failed-authentication limiter). Refuses `trusted_proxies` entries that are not
    /// addresses or networks.
    pub fn build(settings: &Settings, services: Services) -> anyhow::Result<Self> {
        let compat = compat::compile(&settings.compat)
            .context("invalid compatibility route configuration")?;
        let trusted_proxies = web::Data::new(TrustedProxies::parse(&settings.trusted_proxies)?);
        let limiter = AuthLimiter::from_settings(
            settings.auth_failures_per_minute,
            settings.auth_failure_burst,
        )
        .map(web::Data::new);
        let listen = &settings.listen;
        let listener = TcpListener::bind(listen).with_context(|| format!("binding {listen}"))?;
        let port = listener.local_addr()?.port();
        let workers = settings
            .workers
            .or_else(|| std::thread::available_parallelism().ok().map(usize::from))
            .unwrap_or(2)
            .max(1);
        let services = web::Data::new(services);
        let console = if settings.console {
            let lifetime = settings.console_session()?;
            let secure = !settings.listens_on_loopback();
            Some(web::Data::new(crate::http::console::Console::new(lifetime, secure)))
        } else {
            None
        };
        let mut jobs = Jobs::new();
        let shared = || services.clone().into_inner();
        jobs.spawn("change listener", cache_coherence::listen_for_changes(shared()));
        jobs.spawn("change log poller", cache_coherence::poll(shared()));
        jobs.spawn("cache warm-up", cache_coherence::warm_up(shared()));
        if settings.janitor_interval > 0 {
            let every = Duration::from_secs(settings.janitor_interval);
            jobs.spawn("maintenance", maintenance::run_every(shared(), every));
        }
        if let Some(limiter) = &limiter {
            jobs.spawn("limiter sweeper", rate_limit::sweeper(limiter, LIMITER_SWEEP));
        }
        if settings.webhook_poll_ms > 0 {
            let deliverer = webhooks::Deliverer::from_settings(settings)?;
            let poll = Duration::from_millis(settings.webhook_poll_ms);
            jobs.spawn("webhook delivery", webhooks::deliver(shared(), deliverer, poll));
        }
        // The access log costs a copy of its format and a rendering of the request line for
        // every request; without a subscriber that takes its lines it is not installed.
        let access_log = tracing::enabled!(target: ACCESS_LOG, tracing::Level::INFO);
        let server = HttpServer::new(move || {
            let mut app = App::new().app_data(services.clone()).app_data(trusted_proxies.clone());
            if let Some(limiter) = &limiter {
                app = app.app_data(limiter.clone());
            }
            // The access log is outermost, so that it sees the request id answered.
            app.wrap(middleware::from_fn(metrics::middleware))
                .wrap(middleware::from_fn(request_id::middleware))
                .wrap(middleware::Condition::new(
                    access_log,
                    middleware::Logger::new(r#"%a "%r" %s %b %Dms request_id=%{x-request-id}o"#)
                        .log_target(ACCESS_LOG),
                ))
                .configure(routes::configure)
                .configure(|cfg| {
                    if let Some(console) = &console {
                        crate::http::console::configure(cfg, console.clone());
                    }
                })
                .configure(|cfg| crate::http::compat::configure(cfg, &compat))
                .default_service(web::to(routes::not_found))
        })
        .workers(workers)
        .client_request_timeout(Duration::from_millis(settings.client_request_timeout_ms))
        .client_disconnect_timeout(Duration::from_millis(settings.client_disconnect_timeout_ms))
        .max_connections(settings.max_connections.max(1))
        .shutdown_timeout(DRAIN_LIMIT.as_secs())
        // SIGTERM and SIGINT are handled in run_until_stopped, which also stops the jobs.
        .disable_signals()
        .listen(listener)?
        .run();
        Ok(Self { port, server, jobs })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves until SIGTERM or SIGINT, then stops taking connections, answers the requests
    /// in flight (for at most [`DRAIN_LIMIT`]), stops the background jobs, and returns.
    /// A background job that fails stops the server too, and is returned as the error.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        self.run_until(stop_signal()).await
    }

    /// Like [`Self::run_until_stopped`], stopping when `stop` answers (the reason, for the
    /// log) instead of on a signal.
    pub async fn run_until(
        self,
        stop: impl std::future::Future<Output = &'static str>,
    ) -> anyhow::Result<()> {
        let Self { server, mut jobs, .. } = self;
        let handle = server.handle();
        let mut server = tokio::spawn(server);
        let failed = tokio::select! {
            served = &mut server => {
                // The server stopped by itself (it only does on an error).
                jobs.stop(JOBS_STOP_LIMIT).await;
                return Ok(served.context("the HTTP server task failed")??);
            }
            why = stop => {
                tracing::info!(why, "stopping: answering the requests in flight");
                None
            }
            (job, why) = jobs.failed() => {
                tracing::error!(job, error = %why, "a background job failed; stopping the gateway");
                Some(anyhow::anyhow!("the background job {job} failed: {why}"))
            }
        };
        handle.stop(true).await;
        let served = server.await.context("the HTTP server task failed")?;
        let aborted = jobs.stop(JOBS_STOP_LIMIT).await;
        if aborted > 0 {
            tracing::warn!(aborted, "background jobs did not stop in time and were aborted");
        }
        tracing::info!("stopped");
        match failed {
            Some(error) => Err(error),
            None => Ok(served?),
        }
    }
}

/// Waits for SIGTERM or SIGINT; answers its name. Without a signal handler (it cannot be
/// installed), waits forever.
async fn stop_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) =
        (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        tracing::warn!("cannot handle SIGTERM and SIGINT; stop the gateway with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}
