//! Webhooks: each app may name a URL that receives its audit events as JSON, signed with
//! HMAC-SHA256 under a secret keygate generates (shown once, sealed at rest under the
//! master key).
//!
//! Delivery runs in the background from the event table (an outbox), never on the path of
//! a request: a renew that detects reuse only records the event. Each gateway looks for due
//! deliveries every `webhook_poll_ms`, and at once when it records an event; a delivery is
//! claimed for a lease, so that gateways sharing a Postgres do not post the same attempt
//! twice. A failed attempt is retried after `webhook_retry_ms`, doubling each time, up to
//! `webhook_max_attempts`. Delivery is at least once: receivers deduplicate by event id.
//!
//! Each delivery carries `Keygate-Signature: t=UNIX_SECONDS,v1=HEX`, where HEX is the
//! HMAC-SHA256, under the secret, of `UNIX_SECONDS.` followed by the exact body bytes.

use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use keygate_tenants::events::{Actor, Claimed, Delivery, EventKind, Webhook};
use keygate_tenants::{hmac_sha256, AppId, Secret, StoreError};
use rand::RngCore;
use serde::Serialize;
use utoipa::ToSchema;
use zeroize::Zeroizing;

use super::{admin, chain, expose_secret, UseCaseError};
use crate::bootstrap::Services;
use crate::config::Settings;

/// The header that carries the signature.
pub const SIGNATURE_HEADER: &str = "keygate-signature";
/// The header that carries the event id.
pub const EVENT_ID_HEADER: &str = "keygate-event-id";

/// Prefix of webhook secrets, so a leaked one is recognised.
const SECRET_PREFIX: &str = "whsec_";
const MAX_URL_LEN: usize = 2048;
/// Events claimed per look.
const BATCH: i64 = 32;
/// The longest wait between two attempts at one event.
const MAX_RETRY: Duration = Duration::from_secs(3600);

/// The webhook of an app as admins see it (never its secret).
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookView {
    pub app_id: AppId,
    pub url: String,
    pub created_at: i64,
}

/// The answer to setting a webhook: the secret is shown only here.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookSet {
    pub app_id: AppId,
    pub url: String,
    #[serde(serialize_with = "expose_secret")]
    #[schema(value_type = String)]
    pub secret: Secret,
}

fn context(app_id: AppId) -> String {
    format!("webhook {app_id}")
}

/// `url` if keygate may post to it: `https`, or `http` to a loopback host only (a receiver
/// on the same machine), with a host and no credentials.
pub fn check_url(url: &str) -> Result<reqwest::Url, UseCaseError> {
    let bad = |message: &str| UseCaseError::invalid("url", message);
    if url.len() > MAX_URL_LEN {
        return Err(bad(&format!("must be at most {MAX_URL_LEN} bytes")));
    }
    let parsed = reqwest::Url::parse(url).map_err(|e| bad(&format!("is not a URL: {e}")))?;
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(bad("must not carry credentials"));
    }
    let loopback = match parsed.host() {
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => return Err(bad("must name a host")),
    };
    match parsed.scheme() {
        "https" => Ok(parsed),
        "http" if loopback => Ok(parsed),
        "http" => Err(bad("must be https (http is accepted only for a loopback host)")),
        _ => Err(bad("must be an https URL")),
    }
}

/// Sets the app's webhook with a new secret, which is returned once.
pub async fn set(
    services: &Services,
    app_id: AppId,
    url: &str,
    actor: Actor,
) -> Result<WebhookSet, UseCaseError> {
    let parsed = check_url(url)?;
    // Logged alone: a receiver's URL may carry a token in its path or query.
    let host = parsed.host_str().unwrap_or_default().to_owned();
    let url = parsed.to_string();
    let mut raw = Zeroizing::new([0u8; 32]);
    rand::rngs::OsRng.fill_bytes(raw.as_mut());
    let secret = Secret::new(format!("{SECRET_PREFIX}{}", URL_SAFE_NO_PAD.encode(raw.as_ref())));
    let (sealed_secret, master_key_id) =
        services.keyring.seal_secret(&context(app_id), secret.expose().as_bytes())?;
    let webhook = Webhook {
        app_id,
        url: url.clone(),
        sealed_secret,
        master_key_id,
        created_at: services.clock.now(),
    };
    services.audit.store().set_webhook(&webhook).await.map_err(|e| match e {
        StoreError::NotFound => UseCaseError::NotFound(format!("app {app_id} not found")),
        other => other.into(),
    })?;
    tracing::info!(%app_id, %host, "webhook set");
    services
        .audit
        .event(app_id, EventKind::WebhookSet, actor, serde_json::json!({"url": url}))
        .await;
    Ok(WebhookSet { app_id, url, secret })
}

pub async fn get(services: &Services, app_id: AppId) -> Result<WebhookView, UseCaseError> {
    admin::get_app(services, app_id).await?;
    let webhook = services
        .audit
        .store()
        .webhook(app_id)
        .await?
        .ok_or_else(|| UseCaseError::NotFound(format!("app {app_id} has no webhook")))?;
    Ok(WebhookView { app_id, url: webhook.url, created_at: webhook.created_at })
}

pub async fn remove(services: &Services, app_id: AppId) -> Result<(), UseCaseError> {
    admin::get_app(services, app_id).await?;
    if !services.audit.store().delete_webhook(app_id).await? {
        return Err(UseCaseError::NotFound(format!("app {app_id} has no webhook")));
    }
    tracing::info!(%app_id, "webhook removed");
    Ok(())
}

/// Re-seals every webhook secret sealed under a previous master key (a master-key
/// rotation); returns how many changed.
pub async fn reseal_all(services: &Services) -> Result<usize, UseCaseError> {
    let store = services.audit.store();
    let current = services.keyring.master().id().to_owned();
    let mut resealed = 0;
    for webhook in store.webhooks().await? {
        if webhook.master_key_id == current {
            continue;
        }
        let ctx = context(webhook.app_id);
        let secret =
            services.keyring.open_secret(&ctx, &webhook.master_key_id, &webhook.sealed_secret)?;
        let (sealed, master_key_id) = services.keyring.seal_secret(&ctx, &secret)?;
        if store
            .reseal_webhook(webhook.app_id, &webhook.sealed_secret, &sealed, &master_key_id)
            .await?
        {
            resealed += 1;
        }
    }
    Ok(resealed)
}

/// `t=SECONDS,v1=HEX`: the HMAC-SHA256 of `SECONDS.BODY` under `secret`.
pub fn signature(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let mac = hmac_sha256(secret, &[timestamp.to_string().as_bytes(), b".", body]);
    format!("t={timestamp},v1={}", hex::encode(mac))
}

/// How deliveries are made and retried.
#[derive(Debug, Clone)]
pub struct Deliverer {
    client: reqwest::Client,
    timeout: Duration,
    max_attempts: i64,
    first_retry: Duration,
}

impl Deliverer {
    pub fn from_settings(settings: &Settings) -> anyhow::Result<Self> {
        let timeout = Duration::from_millis(settings.webhook_timeout_ms.max(1));
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("keygate-webhook/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            client,
            timeout,
            max_attempts: i64::from(settings.webhook_max_attempts.max(1)),
            first_retry: Duration::from_millis(settings.webhook_retry_ms),
        })
    }

    /// The wait after failed attempt number `attempts` (1 for the first).
    fn retry_after(&self, attempts: i64) -> Duration {
        let doublings = u32::try_from(attempts.saturating_sub(1)).unwrap_or(u32::MAX).min(20);
        self.first_retry.saturating_mul(1 << doublings).min(MAX_RETRY)
    }

    /// Delivers what is due at `now`; returns how many events were settled.
    pub async fn deliver_due(&self, services: &Services, now: i64) -> Result<usize, UseCaseError> {
        let store = services.audit.store();
        // Long enough for an attempt to finish before another gateway may take it over.
        let lease = i64::try_from(self.timeout.as_secs()).unwrap_or(60).saturating_add(30);
        let claimed = store.claim(now, lease, BATCH).await?;
        let count = claimed.len();
        for item in claimed {
            let delivery = self.attempt(services, &item).await;
            let result = match delivery {
                Delivery::Delivered => "delivered",
                Delivery::RetryAt(_) => "retry",
                Delivery::Failed => "failed",
                Delivery::Dropped => "dropped",
            };
            services.metrics.webhook_delivery(result);
            store.settle(&item.event.event_id, delivery).await?;
        }
        Ok(count)
    }

    async fn attempt(&self, services: &Services, item: &Claimed) -> Delivery {
        let event = &item.event;
        let Ok(app_id) = event.app_id.parse::<AppId>() else { return Delivery::Dropped };
        let webhook = match services.audit.store().webhook(app_id).await {
            Ok(Some(webhook)) => webhook,
            Ok(None) => return Delivery::Dropped,
            Err(err) => return self.failed(services, item, &format!("reading the webhook: {err}")),
        };
        let secret = match services.keyring.open_secret(
            &context(app_id),
            &webhook.master_key_id,
            &webhook.sealed_secret,
        ) {
            Ok(secret) => secret,
            Err(err) => {
                return self.failed(services, item, &format!("opening the webhook secret: {err}"))
            }
        };
        let body = match serde_json::to_vec(event) {
            Ok(body) => body,
            Err(err) => return self.failed(services, item, &format!("encoding the event: {err}")),
        };
        let sent = self
            .client
            .post(&webhook.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(EVENT_ID_HEADER, &event.event_id)
            .header(SIGNATURE_HEADER, signature(&secret, services.clock.now(), &body))
            .body(body)
            .send()
            .await;
        match sent {
            Ok(response) if response.status().is_success() => {
                tracing::debug!(event_id = %event.event_id, "webhook delivered");
                Delivery::Delivered
            }
            Ok(response) => {
                self.failed(services, item, &format!("the receiver answered {}", response.status()))
            }
            Err(err) => self.failed(services, item, without_url(&err)),
        }
    }

    fn failed(&self, services: &Services, item: &Claimed, why: &str) -> Delivery {
        let event_id = &item.event.event_id;
        if item.attempts >= self.max_attempts {
            tracing::warn!(%event_id, attempts = item.attempts, why, "webhook delivery failed for good");
            return Delivery::Failed;
        }
        let wait = self.retry_after(item.attempts);
        tracing::info!(%event_id, attempts = item.attempts, retry_in_ms = wait.as_millis() as u64, why, "webhook delivery failed; will retry");
        let wait = i64::try_from(wait.as_secs()).unwrap_or(i64::MAX).max(0);
        Delivery::RetryAt(services.clock.now().saturating_add(wait))
    }
}

/// The error without its URL: a webhook URL may carry a token in its query.
fn without_url(err: &reqwest::Error) -> &'static str {
    if err.is_timeout() {
        "timed out"
    } else if err.is_connect() {
        "could not connect"
    } else if err.is_request() {
        "the request failed"
    } else {
        "the delivery failed"
    }
}

/// Delivers webhooks until the gateway stops: every `poll`, and whenever an event
/// is recorded.
pub async fn deliver(services: Arc<Services>, deliverer: Deliverer, poll: Duration) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(poll) => {}
            () = services.audit.recorded() => {}
        }
        loop {
            match deliverer.deliver_due(&services, services.clock.now()).await {
                // A full batch: more may be waiting.
                Ok(n) if n as i64 == BATCH => continue,
                Ok(_) => break,
                Err(err) => {
                    tracing::warn!(error = %chain(&err), "webhook delivery pass failed");
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_https_or_loopback_http_urls_are_accepted() {
        for url in [
            "https://hooks.example.com/keygate",
            "http://127.0.0.1:9000/hook",
            "http://localhost/hook",
            "http://[::1]:8080/",
        ] {
            assert!(check_url(url).is_ok(), "{url}");
        }
        for url in [
            "http://hooks.example.com/",
            "ftp://127.0.0.1/",
            "https://user:pw@example.com/",
            "not a url",
            "file:///etc/passwd",
            &format!("https://example.com/{}", "a".repeat(MAX_URL_LEN)),
        ] {
            assert!(check_url(url).is_err(), "{url}");
        }
    }

    #[test]
    fn the_signature_covers_the_time_and_the_body() {
        // The reference value, from an independent implementation:
        // python3 -c 'import hmac,hashlib; print(hmac.new(b"whsec_test",
        //   b"1700000000.{\"a\":1}", hashlib.sha256).hexdigest())'
        let sig = signature(b"whsec_test", 1_700_000_000, br#"{"a":1}"#);
        assert_eq!(
            sig,
            "t=1700000000,v1=38877139021993b830af32feea6e18a8da83eb2f6e49ee50bd9e4cf4ca4d3789"
        );
        assert_ne!(sig, signature(b"whsec_test", 1_700_000_001, br#"{"a":1}"#));
        assert_ne!(sig, signature(b"whsec_test", 1_700_000_000, br#"{"a":2}"#));
        assert_ne!(sig, signature(b"whsec_other", 1_700_000_000, br#"{"a":1}"#));
    }

    #[test]
    fn retries_back_off_and_are_capped() {
        let deliverer = Deliverer {
            client: reqwest::Client::new(),
            timeout: Duration::from_secs(5),
            max_attempts: 8,
            first_retry: Duration::from_secs(1),
        };
        assert_eq!(deliverer.retry_after(1), Duration::from_secs(1));
        assert_eq!(deliverer.retry_after(2), Duration::from_secs(2));
        assert_eq!(deliverer.retry_after(4), Duration::from_secs(8));
        assert_eq!(deliverer.retry_after(40), MAX_RETRY);
    }
}
