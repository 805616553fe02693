//! The few keygate calls the load needs.

use anyhow::Context;
use serde::Deserialize;
use serde_json::json;

/// A session the load keeps renewing: its latest refresh token and auth token.
#[derive(Debug, Clone)]
pub struct Chain {
    pub refresh_token: String,
    pub auth_token: String,
}

#[derive(Deserialize)]
struct TokenResponse {
    auth_token: String,
    refresh_token: String,
}

/// The outcome of one request: its status (0 when the request never got an answer).
pub type Status = u16;

#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    sign_url: String,
    renew_url: String,
    verify_url: String,
    app_key: String,
}

impl Client {
    pub fn new(base: &str, app: &str, app_key: &str, connections: usize) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(connections.max(1))
            .tcp_nodelay(true)
            .build()
            .context("building the HTTP client")?;
        let base = base.trim_end_matches('/');
        Ok(Self {
            http,
            sign_url: format!("{base}/app/{app}/sign"),
            renew_url: format!("{base}/app/{app}/renew"),
            verify_url: format!("{base}/app/{app}/verify"),
            app_key: app_key.to_owned(),
        })
    }

    async fn post(
        &self,
        url: &str,
        body: &serde_json::Value,
    ) -> Result<(Status, bytes::Bytes), Status> {
        let response = self
            .http
            .post(url)
            .header("Authorization", &self.app_key)
            .json(body)
            .send()
            .await
            .map_err(|_| 0u16)?;
        let status = response.status().as_u16();
        let body = response.bytes().await.map_err(|_| 0u16)?;
        Ok((status, body))
    }

    /// Opens a session; `n` makes the subject distinct.
    pub async fn sign(&self, n: u64) -> Result<Chain, Status> {
        let body = json!({"sub": format!("bench-{n}"), "ip": "198.51.100.7", "useragent": "keygate-bench"});
        let (status, bytes) = self.post(&self.sign_url, &body).await?;
        chain(status, &bytes)
    }

    /// Renews the chain with its latest refresh token, which is then spent.
    pub async fn renew(&self, current: &Chain) -> Result<Chain, Status> {
        let body = json!({"refresh_token": current.refresh_token, "ip": "198.51.100.7", "useragent": "keygate-bench"});
        let (status, bytes) = self.post(&self.renew_url, &body).await?;
        chain(status, &bytes)
    }

    pub async fn verify(&self, current: &Chain) -> Status {
        let body = json!({"token": current.auth_token});
        match self.post(&self.verify_url, &body).await {
            Ok((200, bytes)) if bytes.starts_with(b"{\"verified\":true") => 200,
            // A 200 that does not verify is a failure of the run.
            Ok((200, _)) => 299,
            Ok((status, _)) => status,
            Err(status) => status,
        }
    }
}

fn chain(status: Status, bytes: &[u8]) -> Result<Chain, Status> {
    if status != 200 {
        return Err(status);
    }
    let parsed: TokenResponse = serde_json::from_slice(bytes).map_err(|_| 298u16)?;
    Ok(Chain { refresh_token: parsed.refresh_token, auth_token: parsed.auth_token })
}
