//! The few keygate calls the load needs.

use anyhow::Context;
use serde::Deserialize;
use serde_json::json;

use crate::dpop::DeviceKey;

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

/// A renew's whole answer: what a run that must tell refusals apart (429, 503) needs.
#[derive(Debug, Clone)]
pub struct Renewal {
    /// The status; 0 when no answer came, 298 for a 200 whose body is not a token response.
    pub status: Status,
    /// Whether the answer carried `Retry-After`.
    pub retry_after: bool,
    /// The `error` code of a JSON error body, if there was one.
    pub error: Option<String>,
    /// The renewed chain, on a 200.
    pub next: Option<Chain>,
}

impl Renewal {
    fn lost() -> Self {
        Self { status: 0, retry_after: false, error: None, next: None }
    }
}

#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    sign_url: String,
    renew_url: String,
    verify_url: String,
    app_key: String,
    /// With a device key, sessions are DPoP-bound to it and renews forward its proofs for
    /// this URL (the app's token endpoint).
    dpop: Option<(std::sync::Arc<DeviceKey>, String)>,
}

impl Client {
    pub fn new(base: &str, app: &str, app_key: &str, connections: usize) -> anyhow::Result<Self> {
        Self::with_timeout(base, app, app_key, connections, None)
    }

    /// A client whose requests give up after `timeout` (an answer of status 0), if given.
    pub fn with_timeout(
        base: &str,
        app: &str,
        app_key: &str,
        connections: usize,
        timeout: Option<std::time::Duration>,
    ) -> anyhow::Result<Self> {
        let mut builder =
            reqwest::Client::builder().pool_max_idle_per_host(connections.max(1)).tcp_nodelay(true);
        if let Some(timeout) = timeout {
            builder = builder.timeout(timeout);
        }
        let http = builder.build().context("building the HTTP client")?;
        let base = base.trim_end_matches('/');
        Ok(Self {
            http,
            sign_url: format!("{base}/app/{app}/sign"),
            renew_url: format!("{base}/app/{app}/renew"),
            verify_url: format!("{base}/app/{app}/verify"),
            app_key: app_key.to_owned(),
            dpop: None,
        })
    }

    /// This client with its sessions bound to `device` (DPoP): `/sign` names the key, and
    /// each renew forwards a fresh proof for the app's token endpoint under `base`.
    pub fn with_device(mut self, base: &str, app: &str, device: DeviceKey) -> Self {
        let htu = format!("{}/app/{app}/oauth/token", base.trim_end_matches('/'));
        self.dpop = Some((std::sync::Arc::new(device), htu));
        self
    }

    /// A renew's body, with a proof when the sessions are bound.
    fn renew_body(&self, current: &Chain) -> serde_json::Value {
        let mut body = json!({"refresh_token": current.refresh_token, "ip": "198.51.100.7", "useragent": "keygate-bench"});
        if let Some((device, htu)) = &self.dpop {
            body["dpop"] = device.proof(htu).into();
        }
        body
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
        let mut body = json!({"sub": format!("bench-{n}"), "ip": "198.51.100.7", "useragent": "keygate-bench"});
        if let Some((device, _)) = &self.dpop {
            body["dpop_jkt"] = device.jkt.clone().into();
        }
        let (status, bytes) = self.post(&self.sign_url, &body).await?;
        chain(status, &bytes)
    }

    /// Renews the chain with its latest refresh token, which is then spent.
    pub async fn renew(&self, current: &Chain) -> Result<Chain, Status> {
        let body = self.renew_body(current);
        let (status, bytes) = self.post(&self.renew_url, &body).await?;
        chain(status, &bytes)
    }

    /// Renews like [`Client::renew`], with the whole answer: a refusal's `Retry-After` and
    /// `error` code too. The chain's token is spent only when the answer is a 200.
    pub async fn renew_answer(&self, current: &Chain) -> Renewal {
        let body = self.renew_body(current);
        let sent =
            self.http.post(&self.renew_url).header("Authorization", &self.app_key).json(&body);
        let Ok(response) = sent.send().await else { return Renewal::lost() };
        let status = response.status().as_u16();
        let retry_after = response.headers().contains_key(reqwest::header::RETRY_AFTER);
        let Ok(bytes) = response.bytes().await else { return Renewal::lost() };
        match chain(status, &bytes) {
            Ok(next) => Renewal { status, retry_after, error: None, next: Some(next) },
            Err(status) => {
                let body: Option<serde_json::Value> = serde_json::from_slice(&bytes).ok();
                let error = body.as_ref().and_then(|b| b["error"].as_str()).map(str::to_owned);
                Renewal { status, retry_after, error, next: None }
            }
        }
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

/// How an OAuth client authenticates at the token endpoint.
#[derive(Debug, Clone)]
enum ClientAuth {
    /// `Authorization: Basic …`, computed once.
    Basic(reqwest::header::HeaderValue),
    /// `client_id` and `client_secret` in the form body, already encoded.
    Post(String),
}

/// The pre-minted refresh tokens and the client that owns them, from a `--chains` file.
#[derive(Debug, Clone)]
pub struct OidcChains {
    pub client_id: String,
    pub client_secret: String,
    /// `client_secret_basic` (the default) or `client_secret_post`.
    pub auth: String,
    /// The token endpoint's path, `/token` unless told.
    pub token_path: String,
    pub refresh_tokens: Vec<String>,
}

impl OidcChains {
    /// Reads `key=value` settings (client_id, client_secret, auth, token_path) and one
    /// refresh token a line; blank lines and lines starting with `#` are skipped.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let mut chains = Self {
            client_id: String::new(),
            client_secret: String::new(),
            auth: "client_secret_basic".into(),
            token_path: "/token".into(),
            refresh_tokens: Vec::new(),
        };
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let setting = line.split_once('=').and_then(|(key, value)| match key {
                "client_id" => Some((&mut chains.client_id, value)),
                "client_secret" => Some((&mut chains.client_secret, value)),
                "auth" => Some((&mut chains.auth, value)),
                "token_path" => Some((&mut chains.token_path, value)),
                _ => None,
            });
            match setting {
                Some((field, value)) => *field = value.to_owned(),
                None => chains.refresh_tokens.push(line.to_owned()),
            }
        }
        if chains.client_id.is_empty() {
            anyhow::bail!("the chains file has no client_id= line");
        }
        if !matches!(chains.auth.as_str(), "client_secret_basic" | "client_secret_post") {
            anyhow::bail!(
                "auth={} is not supported: use client_secret_basic or client_secret_post",
                chains.auth
            );
        }
        Ok(chains)
    }
}

/// `application/x-www-form-urlencoded` for one name or value.
fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(b as char);
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[derive(Deserialize)]
struct OAuthTokenResponse {
    access_token: String,
    refresh_token: String,
}

/// An OAuth 2.0 client doing the refresh_token grant against a token endpoint.
#[derive(Debug, Clone)]
pub struct OidcClient {
    http: reqwest::Client,
    token_url: String,
    auth: ClientAuth,
}

impl OidcClient {
    pub fn new(base: &str, chains: &OidcChains, connections: usize) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(connections.max(1))
            .tcp_nodelay(true)
            .build()
            .context("building the HTTP client")?;
        let token_url =
            format!("{}/{}", base.trim_end_matches('/'), chains.token_path.trim_start_matches('/'));
        let (id, secret) = (form_encode(&chains.client_id), form_encode(&chains.client_secret));
        let auth = if chains.auth == "client_secret_post" {
            ClientAuth::Post(format!("&client_id={id}&client_secret={secret}"))
        } else {
            // reqwest's basic_auth does the base64; the header is made once, here.
            let request = http
                .post(&token_url)
                .basic_auth(id, Some(secret))
                .build()
                .context("building the Authorization header")?;
            let header = request
                .headers()
                .get(reqwest::header::AUTHORIZATION)
                .cloned()
                .context("no Authorization header")?;
            ClientAuth::Basic(header)
        };
        Ok(Self { http, token_url, auth })
    }

    /// The token endpoint of a keygate app, with the app id and key as client credentials.
    pub fn keygate(
        base: &str,
        app: &str,
        app_key: &str,
        connections: usize,
    ) -> anyhow::Result<Self> {
        let chains = OidcChains {
            client_id: app.to_owned(),
            client_secret: app_key.to_owned(),
            auth: "client_secret_basic".into(),
            token_path: format!("/app/{app}/oauth/token"),
            refresh_tokens: Vec::new(),
        };
        Self::new(base, &chains, connections)
    }

    /// A chain that starts from a pre-minted refresh token.
    pub fn chain(refresh_token: &str) -> Chain {
        Chain { refresh_token: refresh_token.to_owned(), auth_token: String::new() }
    }

    /// The refresh_token grant with the chain's latest refresh token, which is then spent.
    pub async fn renew(&self, current: &Chain) -> Result<Chain, Status> {
        let mut body = format!(
            "grant_type=refresh_token&refresh_token={}",
            form_encode(&current.refresh_token)
        );
        let mut request = self
            .http
            .post(&self.token_url)
            .header(reqwest::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(reqwest::header::ACCEPT, "application/json");
        match &self.auth {
            ClientAuth::Basic(header) => {
                request = request.header(reqwest::header::AUTHORIZATION, header.clone());
            }
            ClientAuth::Post(credentials) => body.push_str(credentials),
        }
        let response = request.body(body).send().await.map_err(|_| 0u16)?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await.map_err(|_| 0u16)?;
        if status != 200 {
            return Err(status);
        }
        let parsed: OAuthTokenResponse = serde_json::from_slice(&bytes).map_err(|_| 298u16)?;
        Ok(Chain { refresh_token: parsed.refresh_token, auth_token: parsed.access_token })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chains_file_settings_and_tokens() {
        let text = "# comment\nclient_id=bench\nclient_secret=s3=cr%t\nauth=client_secret_post\n\nAAA-b_c\nDDD\n";
        let chains = OidcChains::parse(text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(chains.client_id, "bench");
        assert_eq!(chains.client_secret, "s3=cr%t");
        assert_eq!(chains.auth, "client_secret_post");
        assert_eq!(chains.token_path, "/token");
        assert_eq!(chains.refresh_tokens, ["AAA-b_c", "DDD"]);
    }

    #[test]
    fn chains_file_needs_a_client_and_a_known_auth() {
        assert!(OidcChains::parse("AAA\n").is_err());
        assert!(OidcChains::parse("client_id=x\nauth=private_key_jwt\n").is_err());
    }

    #[test]
    fn form_encoding_keeps_unreserved_bytes_only() {
        assert_eq!(form_encode("aZ09-._~"), "aZ09-._~");
        assert_eq!(form_encode("a b+c/=é"), "a%20b%2Bc%2F%3D%C3%A9");
    }
}
