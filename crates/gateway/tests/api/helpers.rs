use std::sync::Arc;

use keygate_gateway::clock::Clock;
use keygate_gateway::{Application, Services, Settings};
use keygate_store::testing;
use keygate_tenants::Tenants;
use reqwest::{Method, RequestBuilder, Response};
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A running gateway on its own fresh database.
#[derive(Debug)]
pub struct TestApp {
    pub address: String,
    pub root_key: String,
    pub tenants: Arc<Tenants>,
    /// The database this gateway runs on.
    pub database_url: String,
    pub client: reqwest::Client,
    /// The gateway's clock: move it ahead instead of sleeping.
    pub clock: Clock,
    _data_dir: tempfile::TempDir,
}

/// An app created through the root API.
#[derive(Debug, Clone)]
pub struct CreatedApp {
    pub app_id: String,
    pub app_key: String,
    pub key_id: String,
    pub public_key: String,
}

/// Starts a gateway, or `None` for Postgres when `TEST_DATABASE_URL` is unset.
pub async fn spawn_app(backend: Backend) -> Option<TestApp> {
    spawn_app_with(backend, |_| {}).await
}

/// Like [`spawn_app`], with settings adjusted by `adjust`.
pub async fn spawn_app_with(
    backend: Backend,
    adjust: impl FnOnce(&mut Settings),
) -> Option<TestApp> {
    let data_dir = tempfile::tempdir().unwrap();
    let database_url = match backend {
        // The embedded default: a SQLite file inside the data dir.
        Backend::Sqlite => None,
        Backend::Postgres => Some(testing::postgres_url().await?),
    };
    let root_key = format!("kgr_test_{}", ulid::Ulid::new());
    let settings = Settings {
        database_url,
        listen: "127.0.0.1:0".into(),
        data_dir: data_dir.path().to_owned(),
        root_key: Some(root_key.clone().into()),
        workers: Some(2),
        ..Settings::default()
    };
    let mut settings = settings;
    adjust(&mut settings);
    let clock = Clock::adjustable();
    let (services, bootstrap) = Services::open_with_clock(&settings, clock.clone()).await.unwrap();
    assert!(bootstrap.new_root_key.is_none(), "a supplied root key is never printed");
    let tenants = services.tenants.clone();
    let app = Application::build(&settings, services).unwrap();
    let address = format!("http://127.0.0.1:{}", app.port());
    tokio::spawn(app.run_until(std::future::pending()));
    Some(TestApp {
        address,
        root_key,
        tenants,
        database_url: settings.database_url(),
        client: reqwest::Client::new(),
        clock,
        _data_dir: data_dir,
    })
}

impl TestApp {
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.client.request(method, format!("{}{path}", self.address))
    }

    pub fn root(&self, method: Method, path: &str) -> RequestBuilder {
        self.request(method, path).header("Authorization", &self.root_key)
    }

    pub async fn create_app(&self, body: Value) -> CreatedApp {
        let response = self.root(Method::POST, "/root/apps").json(&body).send().await.unwrap();
        let (status, json) = parts(response).await;
        assert_eq!(status, 201, "{json}");
        CreatedApp {
            app_id: json["app_id"].as_str().unwrap().to_owned(),
            app_key: json["app_key"].as_str().unwrap().to_owned(),
            key_id: json["key_id"].as_str().unwrap().to_owned(),
            public_key: json["public_key"].as_str().unwrap().to_owned(),
        }
    }
}

/// Status and JSON body of a response (`Value::Null` for an empty body).
pub async fn parts(response: Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let json = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"))
    };
    (status, json)
}

/// Asserts the error contract: status, code, and a message.
pub fn assert_error(status: u16, body: &Value, want_status: u16, want_code: &str) {
    assert_eq!(status, want_status, "{body}");
    assert_eq!(body["error"], want_code, "{body}");
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
}

/// Generates `sqlite` and `postgres` test variants of `async fn $case(app: TestApp)`.
#[macro_export]
macro_rules! on_both_backends {
    ($($case:ident),* $(,)?) => {$(
        mod $case {
            use $crate::helpers::{spawn_app, Backend};

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$case(spawn_app(Backend::Sqlite).await.unwrap()).await;
            }

            #[cfg_attr(not(postgres_tests), ignore = "Postgres: needs TEST_DATABASE_URL when built (just test-pg)")]
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if let Some(app) = spawn_app(Backend::Postgres).await {
                    super::$case(app).await;
                }
            }
        }
    )*};
}

/// Like [`on_both_backends!`], each case with the settings `$adjust` changes:
/// `with_settings!(case: adjust, …)` with `fn adjust(settings: &mut Settings)`.
#[macro_export]
macro_rules! with_settings {
    ($($case:ident: $adjust:ident),* $(,)?) => {$(
        mod $case {
            use $crate::helpers::{spawn_app_with, Backend};

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$case(spawn_app_with(Backend::Sqlite, super::$adjust).await.unwrap()).await;
            }

            #[cfg_attr(not(postgres_tests), ignore = "Postgres: needs TEST_DATABASE_URL when built (just test-pg)")]
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if let Some(app) = spawn_app_with(Backend::Postgres, super::$adjust).await {
                    super::$case(app).await;
                }
            }
        }
    )*};
}

impl TestApp {
    /// POSTs JSON to an app endpoint with the app key; returns status and body.
    pub async fn app_post(&self, app: &CreatedApp, endpoint: &str, body: &Value) -> (u16, Value) {
        let response = self
            .request(Method::POST, &format!("/app/{}/{endpoint}", app.app_id))
            .header("Authorization", &app.app_key)
            .json(body)
            .send()
            .await
            .unwrap();
        parts(response).await
    }

    /// Opens a session for `sub`; returns the token response.
    pub async fn sign(&self, app: &CreatedApp, sub: &str) -> Value {
        let body = serde_json::json!({"sub": sub, "ip": "203.0.113.7", "useragent": "test-agent"});
        let (status, body) = self.app_post(app, "sign", &body).await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// Renews with `refresh_token` from the test user agent.
    pub async fn renew(&self, app: &CreatedApp, refresh_token: &Value) -> (u16, Value) {
        self.renew_as(app, refresh_token, "test-agent").await
    }

    pub async fn renew_as(
        &self,
        app: &CreatedApp,
        refresh_token: &Value,
        useragent: &str,
    ) -> (u16, Value) {
        let body = serde_json::json!({"refresh_token": refresh_token, "ip": "203.0.113.7", "useragent": useragent});
        self.app_post(app, "renew", &body).await
    }

    /// Whether `/verify` accepts an auth token.
    pub async fn verified(&self, app: &CreatedApp, auth_token: &Value) -> bool {
        let (status, body) =
            self.app_post(app, "verify", &serde_json::json!({"token": auth_token})).await;
        assert_eq!(status, 200, "{body}");
        body["verified"].as_bool().unwrap()
    }
}

/// The decoded payload of a JWT, without verifying it (tests inspect what was issued).
pub fn payload(token: &Value) -> Value {
    use base64::Engine;
    let token = token.as_str().unwrap();
    let part = token.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(part).unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

/// The decoded header of a JWT.
pub fn header(token: &Value) -> Value {
    use base64::Engine;
    let token = token.as_str().unwrap();
    let part = token.split('.').next().unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(part).unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

impl TestApp {
    /// The gateway's data directory: its SQLite file, and `master.key` (base64), which
    /// seals the apps' private signing keys.
    pub fn data_dir(&self) -> &std::path::Path {
        self._data_dir.path()
    }
}

/// The real `keygate serve` binary, running in a fresh directory (its data dir: the
/// embedded SQLite unless a database URL is given) with `root_key`.
#[derive(Debug)]
pub struct ServedBinary {
    pub address: String,
    pub child: std::process::Child,
    stderr: Option<std::thread::JoinHandle<Vec<u8>>>,
    _dir: tempfile::TempDir,
}

impl ServedBinary {
    /// Starts it with `extra` applied to the command (arguments, environment), and waits
    /// for its "listening" line.
    pub fn start(root_key: &str, extra: impl FnOnce(&mut std::process::Command)) -> Self {
        use std::io::{BufRead, BufReader, Read};
        use std::process::{Command, Stdio};
        let dir = tempfile::tempdir().unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_keygate"));
        command
            .current_dir(dir.path())
            .args(["serve", "--listen", "127.0.0.1:0"])
            .env_remove("KEYGATE_DATABASE_URL")
            .env("KEYGATE_ROOT_KEY", root_key)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        extra(&mut command);
        let mut child = command.spawn().unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let stderr = std::thread::spawn(move || {
            let mut all = Vec::new();
            let _ = stderr.read_to_end(&mut all);
            all
        });
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let address = loop {
            let mut line = String::new();
            if stdout.read_line(&mut line).unwrap() == 0 {
                let _ = child.kill();
                let _ = child.wait();
                let log = stderr.join().unwrap();
                panic!("serve exited early: {}", String::from_utf8_lossy(&log));
            }
            if let Some(rest) = line.strip_prefix("keygate listening on ") {
                break rest.split_whitespace().next().unwrap().to_owned();
            }
        };
        std::thread::spawn(move || for _ in stdout.lines() {});
        Self { address, child, stderr: Some(stderr), _dir: dir }
    }

    /// Stops it with SIGTERM and waits for it to exit: everything it had to write is
    /// written. Returns its exit status and what it wrote to stderr.
    pub fn terminate(mut self) -> (std::process::ExitStatus, Vec<u8>) {
        let pid = self.child.id().to_string();
        let sent = std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(sent.success(), "kill -TERM {pid}");
        let status = self.child.wait().unwrap();
        (status, self.stderr.take().map(|log| log.join().unwrap()).unwrap_or_default())
    }

    /// Stops it; returns everything it wrote to stderr.
    pub fn stop(mut self) -> Vec<u8> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.stderr.take().map(|log| log.join().unwrap()).unwrap_or_default()
    }
}

impl Drop for ServedBinary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
