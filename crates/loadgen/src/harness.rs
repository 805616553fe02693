//! What the crash and failover runs share: starting a gateway process, the HTTP calls of a
//! renew chain, reading a token's `jid`, and the checks of a reconciliation.

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use base64::Engine;
use serde_json::{json, Value};

/// The root key the harness installs through `KEYGATE_ROOT_KEY`.
pub(crate) const ROOT_KEY: &str = "kgr_crash_harness_root_key_not_for_production";

/// A token pair the gateway answered.
#[derive(Debug, Clone)]
pub(crate) struct Pair {
    pub(crate) refresh: String,
    pub(crate) auth: String,
}

/// The outcome of the reconciliation.
#[derive(Debug, Default)]
pub(crate) struct Checks {
    pub(crate) passed: u64,
    pub(crate) violations: Vec<String>,
}

impl Checks {
    pub(crate) fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if ok {
            self.passed += 1;
        } else {
            self.violations.push(what());
        }
    }
}

/// A gateway process and its address.
#[derive(Debug)]
pub(crate) struct Gateway {
    child: Child,
    pub(crate) url: String,
}

impl Gateway {
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, then reap it.
    pub(crate) fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the gateway in `dir` and waits for its "listening on" line. `env` is set last
/// (for example a `KEYGATE_MASTER_KEY` that several gateways share).
pub(crate) fn start_gateway(
    keygate: &Path,
    dir: &Path,
    database_url: Option<&str>,
    run: u32,
    env: &[(&str, &str)],
) -> anyhow::Result<Gateway> {
    let stdout_path = dir.join(format!("stdout.{run}"));
    let stdout = File::create(&stdout_path)?;
    let stderr = File::create(dir.join(format!("stderr.{run}")))?;
    let mut command = Command::new(keygate);
    command
        .args(["serve", "--listen", "127.0.0.1:0"])
        .current_dir(dir)
        .env_remove("KEYGATE_DATABASE_URL")
        .env_remove("KEYGATE_CONFIG")
        .env_remove("KEYGATE_MASTER_KEY")
        .env_remove("KEYGATE_MASTER_KEY_FILE")
        .env("KEYGATE_DATA_DIR", dir.join("data"))
        .env("KEYGATE_ROOT_KEY", ROOT_KEY)
        .env("KEYGATE_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr);
    if let Some(url) = database_url {
        command.env("KEYGATE_DATABASE_URL", url);
    }
    command.envs(env.iter().copied());
    let mut child = command.spawn().with_context(|| format!("starting {}", keygate.display()))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(&stdout_path).unwrap_or_default();
        if let Some(rest) = text.lines().find_map(|l| l.strip_prefix("keygate listening on ")) {
            let url = rest.split_whitespace().next().unwrap_or_default().to_owned();
            return Ok(Gateway { child, url });
        }
        if let Some(status) = child.try_wait()? {
            let log =
                std::fs::read_to_string(dir.join(format!("stderr.{run}"))).unwrap_or_default();
            bail!("the gateway exited ({status}) before listening:\n{log}");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the gateway did not start within 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The HTTP calls of the harness.
#[derive(Clone)]
pub(crate) struct Api {
    pub(crate) http: reqwest::Client,
    pub(crate) base: String,
    pub(crate) app_id: String,
    pub(crate) app_key: String,
    /// The `useragent` of every sign and renew (a grace retry must repeat it).
    pub(crate) useragent: String,
}

/// What the gateway answered: the status (0 when no answer came), whether a `Retry-After`
/// header came with it, and the body (`Null` when it is not JSON).
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) retry_after: bool,
    pub(crate) body: Value,
}

impl Api {
    /// POSTs to an app endpoint.
    pub(crate) async fn call(&self, endpoint: &str, body: &Value) -> Answer {
        let url = format!("{}/app/{}/{endpoint}", self.base, self.app_id);
        let sent = self.http.post(url).header("Authorization", &self.app_key).json(body).send();
        let lost = Answer { status: 0, retry_after: false, body: Value::Null };
        let Ok(response) = sent.await else { return lost };
        let status = response.status().as_u16();
        let retry_after = response.headers().contains_key(reqwest::header::RETRY_AFTER);
        match response.bytes().await {
            Ok(bytes) => Answer {
                status,
                retry_after,
                body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            },
            Err(_) => lost,
        }
    }

    /// POSTs to an app endpoint: status and body, or 0 when no answer came.
    pub(crate) async fn post(&self, endpoint: &str, body: &Value) -> (u16, Value) {
        let answer = self.call(endpoint, body).await;
        (answer.status, answer.body)
    }

    /// A renew, with the whole answer and the pair it carried.
    pub(crate) async fn renew_answer(&self, refresh: &str) -> (Answer, Option<Pair>) {
        let body =
            json!({"refresh_token": refresh, "ip": "198.51.100.9", "useragent": self.useragent});
        let answer = self.call("renew", &body).await;
        let child = pair(&answer.body);
        (answer, child)
    }

    pub(crate) async fn renew(&self, refresh: &str) -> (u16, Option<Pair>) {
        let (answer, child) = self.renew_answer(refresh).await;
        (answer.status, child)
    }

    /// Opens a session for `sub`: its id and its first pair.
    pub(crate) async fn sign(&self, sub: &str) -> anyhow::Result<(String, Pair)> {
        let body = json!({"sub": sub, "ip": "198.51.100.9", "useragent": self.useragent});
        let (status, body) = self.post("sign", &body).await;
        let (Some(first), Some(session_id)) = (pair(&body), body["session_id"].as_str()) else {
            bail!("sign answered {status}: {body}");
        };
        Ok((session_id.to_owned(), first))
    }

    pub(crate) async fn verified(&self, auth: &str) -> Option<bool> {
        let (status, body) = self.post("verify", &json!({"token": auth})).await;
        if status != 200 {
            return None;
        }
        body["verified"].as_bool()
    }
}

pub(crate) fn pair(body: &Value) -> Option<Pair> {
    Some(Pair {
        refresh: body["refresh_token"].as_str()?.to_owned(),
        auth: body["auth_token"].as_str()?.to_owned(),
    })
}

/// The `jid` claim of a JWT, read without verifying it.
pub(crate) fn jid(token: &str) -> Option<String> {
    let part = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(part).ok()?;
    let claims: Value = serde_json::from_slice(&bytes).ok()?;
    claims["jid"].as_str().map(str::to_owned)
}

/// Creates an app through the root API (root key [`ROOT_KEY`]) with this `reuse_grace`.
pub(crate) async fn create_app(
    http: &reqwest::Client,
    base: &str,
    name: &str,
    reuse_grace: u64,
    useragent: &str,
) -> anyhow::Result<Api> {
    let response = http
        .post(format!("{base}/root/apps"))
        .header("Authorization", ROOT_KEY)
        .json(&json!({"name": name, "reuse_grace": reuse_grace}))
        .send()
        .await?;
    let status = response.status();
    let created: Value = response.json().await?;
    if status != 201 {
        bail!("creating the app answered {status}: {created}");
    }
    Ok(Api {
        http: http.clone(),
        base: base.to_owned(),
        app_id: created["app_id"].as_str().context("no app_id")?.to_owned(),
        app_key: created["app_key"].as_str().context("no app_key")?.to_owned(),
        useragent: useragent.to_owned(),
    })
}

/// Runs `f` over `items` with at most `concurrency` at a time, keeping the order.
pub(crate) async fn each<T, R, F, Fut>(items: Vec<T>, concurrency: usize, f: F) -> Vec<R>
where
    T: Send + 'static,
    R: Send + 'static,
    F: Fn(T) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = R> + Send + 'static,
{
    let f = Arc::new(f);
    let semaphore = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    let handles: Vec<_> = items
        .into_iter()
        .map(|item| {
            let (f, semaphore) = (f.clone(), semaphore.clone());
            tokio::spawn(async move {
                let _permit = semaphore.acquire_owned().await;
                f(item).await
            })
        })
        .collect();
    let mut out = Vec::with_capacity(handles.len());
    for handle in handles {
        match handle.await {
            Ok(r) => out.push(r),
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
    out
}

/// The jid tree of the renews: parent jid -> child jid. A parent with two different
/// children is a violation (a grace retry answers the same child jid, signed again).
#[derive(Debug, Default)]
pub(crate) struct JidTree {
    children: HashMap<String, String>,
    /// How many edges gave a parent a second, different child.
    pub(crate) doubled: usize,
}

impl JidTree {
    /// Adds the edge of a 200: `parent` renewed to `child` (tokens, jids read from them).
    pub(crate) fn add(&mut self, parent: &str, child: &str, checks: &mut Checks) {
        let (Some(p), Some(c)) = (jid(parent), jid(child)) else {
            checks.violations.push("a token without a jid".into());
            return;
        };
        match self.children.get(&p) {
            Some(known) => {
                if *known != c {
                    self.doubled += 1;
                }
                checks.check(*known == c, || {
                    format!("parent jid {p} has two children: {known} and {c}")
                })
            }
            None => {
                self.children.insert(p, c);
                checks.passed += 1;
            }
        }
    }
}
