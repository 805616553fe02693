//! Building the HTTP server on a bound listener, so tests can ask for port 0.

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
use crate::usecases::{maintenance, webhooks};
use crate::{cache_coherence, compat};

/// How often the failed-authentication limiter forgets addresses that are back to fresh.
const LIMITER_SWEEP: Duration = Duration::from_secs(30);

pub struct Application {
    port: u16,
    server: Server,
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
    /// Also starts the janitor, when `settings.janitor_interval` is not 0, and the sweeper
    /// of the failed-authentication limiter. Refuses `trusted_proxies` entries that are not
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
        cache_coherence::spawn_listener(services.clone().into_inner());
        cache_coherence::spawn_poller(services.clone().into_inner());
        cache_coherence::spawn_warm_up(services.clone().into_inner());
        if settings.janitor_interval > 0 {
            let every = Duration::from_secs(settings.janitor_interval);
            maintenance::spawn(services.clone().into_inner(), every);
        }
        if let Some(limiter) = &limiter {
            rate_limit::spawn_sweeper(limiter, LIMITER_SWEEP);
        }
        if settings.webhook_poll_ms > 0 {
            let deliverer = webhooks::Deliverer::from_settings(settings)?;
            let poll = Duration::from_millis(settings.webhook_poll_ms);
            webhooks::spawn(services.clone().into_inner(), deliverer, poll);
        }
        let server = HttpServer::new(move || {
            let mut app = App::new().app_data(services.clone()).app_data(trusted_proxies.clone());
            if let Some(limiter) = &limiter {
                app = app.app_data(limiter.clone());
            }
            // The access log is outermost, so that it sees the request id answered.
            app.wrap(middleware::from_fn(metrics::middleware))
                .wrap(middleware::from_fn(request_id::middleware))
                .wrap(middleware::Logger::new(r#"%a "%r" %s %b %Dms request_id=%{x-request-id}o"#))
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
        .listen(listener)?
        .run();
        Ok(Self { port, server })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.server.await
    }
}
