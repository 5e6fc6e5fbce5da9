//! Delivery of events: webhooks (signed JSON), Slack incoming webhooks, and e-mail to the
//! vault's contacts over SMTP.
//!
//! A background worker claims sendable deliveries from the outbox (due, and the oldest pending
//! one of their lane: one channel and one certificate), sends them concurrently, and records
//! each attempt. A 2xx answer delivers; anything else retries with a capped exponential
//! backoff until the attempt limit, then the delivery is dead (listed and replayable through
//! the admin API). A slow or failing channel only holds up its own lanes: other certificates
//! and other channels go on, and nothing here ever changes a renewal's outcome.
//!
//! Webhook requests carry
//!
//! ```text
//! X-Certvault-Timestamp: <unix seconds>
//! X-Certvault-Signature: v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>
//! X-Certvault-Event-Id / Idempotency-Key: <event id>
//! ```

mod email;

use std::sync::Arc;
use std::time::{Duration, Instant};

use certvault_store::{
    ChannelRecord, DeliveryJob, DeliveryNext, DeliveryOutcome, EventRecord, StoreError,
};
use serde_json::{Value, json};
use zeroize::Zeroizing;

pub use email::{SmtpSettings, SmtpTls};

use crate::state::AppState;

/// Delivery settings.
#[derive(Debug, Clone)]
pub struct DeliverySettings {
    /// Attempts before a delivery is dead.
    pub max_attempts: i64,
    /// First retry after this many seconds (server clock), doubling each time.
    pub backoff_base: i64,
    /// Longest wait between attempts.
    pub backoff_cap: i64,
    /// Timeout of one request.
    pub timeout: Duration,
    /// Requests in flight at once.
    pub concurrency: usize,
}

impl Default for DeliverySettings {
    /// 20 attempts, 30 s doubling up to 6 h: about three days before a delivery is dead.
    fn default() -> Self {
        Self {
            max_attempts: 20,
            backoff_base: 30,
            backoff_cap: 6 * 3600,
            timeout: Duration::from_secs(10),
            concurrency: 64,
        }
    }
}

impl DeliverySettings {
    /// Seconds to wait after the `attempt`-th failure (1-based).
    pub fn backoff(&self, attempt: i64) -> i64 {
        let shift = u32::try_from(attempt.saturating_sub(1).clamp(0, 30)).unwrap_or(30);
        self.backoff_base
            .max(1)
            .saturating_mul(1i64 << shift)
            .min(self.backoff_cap.max(1))
    }
}

/// How deliveries leave: an HTTP client and, when configured, an SMTP transport.
#[derive(Default)]
pub struct Notifier {
    http: Option<reqwest::Client>,
    smtp: Option<email::Mailer>,
}

impl Notifier {
    /// Builds the HTTP client and the SMTP transport.
    pub fn new(
        d: &DeliverySettings,
        smtp: Option<&SmtpSettings>,
    ) -> Result<Self, crate::ServerError> {
        let http = reqwest::Client::builder()
            .timeout(d.timeout)
            .connect_timeout(d.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("certvault/", env!("CARGO_PKG_VERSION")))
            .pool_max_idle_per_host(64)
            .no_proxy()
            .build()
            .map_err(|e| crate::ServerError::Config(format!("webhook client: {e}")))?;
        let smtp = smtp.map(email::Mailer::new).transpose()?;
        Ok(Self {
            http: Some(http),
            smtp,
        })
    }

    fn http(&self) -> Result<&reqwest::Client, String> {
        self.http
            .as_ref()
            .ok_or_else(|| "notifications are not configured".to_owned())
    }
}

/// A channel's target and signing secret, as sealed in the store.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct ChannelSecret {
    /// Where requests go.
    pub url: String,
    /// The HMAC key.
    pub secret: String,
}

impl std::fmt::Debug for ChannelSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChannelSecret([redacted])")
    }
}

/// AAD binding a channel's sealed secret to its vault and name.
pub fn channel_aad(vault_key: &str, channel_key: &str) -> Vec<u8> {
    format!("certvault/channel/v1/{vault_key}/{channel_key}").into_bytes()
}

/// Opens a channel's sealed URL and secret.
pub fn open_channel(
    state: &AppState,
    vault: &crate::state::VaultCtx,
    ch: &ChannelRecord,
) -> Result<Zeroizing<ChannelSecretOwned>, String> {
    let aad = channel_aad(
        &vault.vault.name.to_ascii_lowercase(),
        &ch.name.to_ascii_lowercase(),
    );
    let _ = state;
    let plain = certvault_crypto::open_object(&vault.key, &aad, &ch.sealed)
        .map_err(|_| "the channel's secret cannot be opened".to_owned())?;
    let s: ChannelSecret = serde_json::from_slice(&plain)
        .map_err(|_| "the channel's secret is unreadable".to_owned())?;
    Ok(Zeroizing::new(ChannelSecretOwned {
        url: s.url,
        secret: s.secret,
    }))
}

/// An opened channel secret, wiped when dropped.
#[derive(Default)]
pub struct ChannelSecretOwned {
    /// Where requests go.
    pub url: String,
    /// The HMAC key.
    pub secret: String,
}

impl zeroize::Zeroize for ChannelSecretOwned {
    fn zeroize(&mut self) {
        self.url.zeroize();
        self.secret.zeroize();
    }
}

/// `v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`.
pub fn signature(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
    let mut ctx = aws_lc_rs::hmac::Context::with_key(&key);
    ctx.update(timestamp.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    format!("v1={}", hex::encode(ctx.sign().as_ref()))
}

/// The webhook payload of an event (payload version 1).
pub fn webhook_payload(state: &AppState, ev: &EventRecord, payload_version: i64) -> Value {
    let base = crate::lifecycle::vault_url(state, &ev.vault);
    let cert_id = match (&ev.cert_name, &ev.version) {
        (Some(n), Some(v)) => Some(format!("{base}/certificates/{n}/{v}")),
        (Some(n), None) => Some(format!("{base}/certificates/{n}")),
        _ => None,
    };
    let mut p = json!({
        "version": payload_version,
        "id": ev.uid,
        "event_type": ev.kind,
        "vault": ev.vault,
        "vault_url": base,
        "certificate_id": cert_id,
        "certificate_name": ev.cert_name,
        "certificate_version": ev.version,
        "occurred_at": ev.created,
        "occurred_at_iso": iso(ev.created),
        "data": ev.body,
    });
    // The domain-validation events keep the IBM seed's field names at the top level too.
    for k in ["domain", "txt_record_name", "txt_record_val"] {
        if let Some(v) = ev.body.get(k) {
            p[k] = v.clone();
        }
    }
    p
}

fn iso(t: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|d| {
            d.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// A one-line human description of an event (Slack, e-mail subject).
pub fn describe(ev: &EventRecord) -> String {
    let name = ev.cert_name.as_deref().unwrap_or("-");
    let exp = ev.body.get("exp").and_then(Value::as_i64);
    let exp_s = exp.map(iso).unwrap_or_default();
    match ev.kind.as_str() {
        "issued" => format!(
            "Certificate {name} in vault {} was issued (expires {exp_s}).",
            ev.vault
        ),
        "renewed" => format!(
            "Certificate {name} in vault {} was renewed: new version {} (expires {exp_s}).",
            ev.vault,
            ev.version.as_deref().unwrap_or("-")
        ),
        "about_to_expire" => format!("Certificate {name} in vault {} expires {exp_s}.", ev.vault),
        "expired" => format!("Certificate {name} in vault {} expired {exp_s}.", ev.vault),
        "renewal_failed" => format!(
            "Renewing certificate {name} in vault {} failed: {}",
            ev.vault,
            ev.body
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("unknown error")
        ),
        "test" => format!("certvault test notification for vault {}.", ev.vault),
        other => format!(
            "certvault event {other} for certificate {name} in vault {}.",
            ev.vault
        ),
    }
}

/// What a receiver answered.
#[derive(Debug, Clone)]
pub struct Answer {
    /// HTTP status (or SMTP code), when it answered.
    pub status: Option<u16>,
    /// The first bytes of its body.
    pub body: String,
    /// Why it failed, when it did.
    pub error: Option<String>,
}

impl Answer {
    /// Whether the attempt counts as delivered.
    pub fn ok(&self) -> bool {
        self.error.is_none() && self.status.is_some_and(|s| (200..300).contains(&s))
    }
}

/// Sends `ev` to a channel (webhook or Slack), signed with its secret.
pub async fn send_channel(state: &AppState, ch: &ChannelRecord, ev: &EventRecord) -> Answer {
    let fail = |e: String| Answer {
        status: None,
        body: String::new(),
        error: Some(e),
    };
    let vault = match state.vault(&ev.vault.to_ascii_lowercase()).await {
        Ok(v) => v,
        Err(e) => return fail(e.message),
    };
    let secret = match open_channel(state, &vault, ch) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let body = match ch.kind.as_str() {
        "slack" => json!({"text": describe(ev)}),
        _ => webhook_payload(state, ev, ch.payload_version),
    };
    let body = body.to_string().into_bytes();
    let ts = state.clock.now();
    let sig = signature(secret.secret.as_bytes(), ts, &body);
    let client = match state.lifecycle.notifier.http() {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let resp = client
        .post(secret.url.as_str())
        .header("content-type", "application/json")
        .header("x-certvault-timestamp", ts.to_string())
        .header("x-certvault-signature", sig)
        .header("x-certvault-event", ev.kind.as_str())
        .header("x-certvault-event-id", ev.uid.as_str())
        .header("idempotency-key", ev.uid.as_str())
        .body(body)
        .send()
        .await;
    match resp {
        Ok(r) => {
            let status = r.status().as_u16();
            let text = r.text().await.unwrap_or_default();
            let body: String = text.chars().take(2048).collect();
            let error = if (200..300).contains(&status) {
                None
            } else {
                Some(format!("the receiver answered {status}"))
            };
            Answer {
                status: Some(status),
                body,
                error,
            }
        }
        // reqwest errors name the URL, which for Slack is a credential: keep only the kind.
        Err(e) => fail(request_error(&e)),
    }
}

fn request_error(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "the request timed out".into()
    } else if e.is_connect() {
        "cannot connect to the receiver".into()
    } else if e.is_request() {
        "the request could not be sent".into()
    } else {
        "the request failed".into()
    }
}

/// Runs the delivery worker until the lifecycle is stopped (or the task is aborted).
pub async fn run_dispatcher(state: Arc<AppState>) {
    const LEASE: i64 = 120;
    const BATCH: i64 = 512;
    let lc = &state.lifecycle;
    // SQLite: one process per database, so every lease is an earlier run's. A shared database
    // (replicas): other replicas' leases are live work; a dead replica's expire by themselves.
    if !state.store.shared() {
        match state.store.release_delivery_leases(state.clock.now()).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                deliveries = n,
                "deliveries leased by an earlier run are due again"
            ),
            Err(e) => tracing::warn!(error = %e, "could not release delivery leases"),
        }
    }
    let permits = Arc::new(tokio::sync::Semaphore::new(
        lc.settings.delivery.concurrency.max(1),
    ));
    loop {
        if lc.is_stopping() {
            return;
        }
        let now = state.clock.now();
        let claimed = match state
            .store
            .claim_deliveries(now, &lc.owner, LEASE.min(lc.settings.lease), BATCH)
            .await
        {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "delivery pass failed");
                tokio::time::sleep(lc.settings.tick).await;
                continue;
            }
        };
        let full = i64::try_from(claimed.len()).unwrap_or(0) >= BATCH;
        for d in claimed {
            if lc.is_stopping() {
                return;
            }
            let fresh = lc
                .deliveries_in_flight
                .lock()
                .map(|mut s| s.insert(d.id))
                .unwrap_or(false);
            if !fresh {
                continue;
            }
            let permit = tokio::select! {
                p = permits.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => return,
                },
                () = lc.stopped() => {
                    if let Ok(mut s) = lc.deliveries_in_flight.lock() {
                        s.remove(&d.id);
                    }
                    return;
                }
            };
            let st = state.clone();
            tokio::spawn(async move {
                let id = d.id;
                if let Err(e) = deliver(&st, d).await {
                    tracing::warn!(delivery = id, error = %e, "recording a delivery failed");
                }
                if let Ok(mut s) = st.lifecycle.deliveries_in_flight.lock() {
                    s.remove(&id);
                }
                drop(permit);
                st.lifecycle.wake_delivery.notify_one();
            });
        }
        if !full {
            tokio::select! {
                () = lc.wake_delivery.notified() => {}
                () = tokio::time::sleep(lc.settings.tick) => {}
                () = lc.stopped() => return,
            }
        }
    }
}

async fn deliver(state: &AppState, d: DeliveryJob) -> Result<(), StoreError> {
    let started = Instant::now();
    let (answer, skip) = match &d.channel {
        Some(ch) => (send_channel(state, ch, &d.event).await, false),
        None => match &state.lifecycle.notifier.smtp {
            None => (
                Answer {
                    status: None,
                    body: String::new(),
                    error: Some("no SMTP server is configured".into()),
                },
                true,
            ),
            Some(m) => m.send_event(state, &d.event).await,
        },
    };
    let now = state.clock.now();
    let settings = &state.lifecycle.settings.delivery;
    let attempt = d.attempts + 1;
    let next = if skip {
        DeliveryNext::Skipped
    } else if answer.ok() {
        DeliveryNext::Delivered
    } else if attempt >= settings.max_attempts {
        DeliveryNext::Dead
    } else {
        DeliveryNext::RetryAt(now + settings.backoff(attempt))
    };
    state.metrics.delivery(
        d.channel.as_ref().map(|c| c.kind.as_str()),
        match next {
            DeliveryNext::Skipped => crate::metrics::DeliveryResult::Skipped,
            DeliveryNext::Delivered => crate::metrics::DeliveryResult::Delivered,
            DeliveryNext::Dead => crate::metrics::DeliveryResult::Dead,
            DeliveryNext::RetryAt(_) => crate::metrics::DeliveryResult::Retry,
        },
    );
    if !answer.ok() && !skip {
        tracing::info!(delivery = d.id, event = %d.event.uid, attempt, error = ?answer.error, "delivery attempt failed");
    }
    state
        .store
        .finish_delivery(
            d.id,
            DeliveryOutcome {
                at: now,
                status_code: answer.status.map(i64::from),
                error: answer.error,
                millis: i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX),
                next,
            },
        )
        .await
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hmac_sha256_over_timestamp_dot_body() {
        // Python: hmac.new(b"key", b"1700000000.{}", hashlib.sha256).hexdigest()
        let s = signature(b"key", 1_700_000_000, b"{}");
        assert_eq!(
            s,
            "v1=9d713ed406bb7076d4123f0dc2c39d2df5c654ed4b0cd56b52c8b4c940bd63ae"
        );
        assert_ne!(s, signature(b"key", 1_700_000_001, b"{}"));
        assert_ne!(s, signature(b"other", 1_700_000_000, b"{}"));
    }

    #[test]
    fn delivery_backoff_doubles_up_to_the_cap() {
        let d = DeliverySettings::default();
        assert_eq!(d.backoff(1), 30);
        assert_eq!(d.backoff(2), 60);
        assert_eq!(d.backoff(10), 30 * 512);
        assert_eq!(d.backoff(11), 6 * 3600);
        assert_eq!(d.backoff(1000), 6 * 3600);
        // The default limit keeps a delivery alive for more than a day.
        let total: i64 = (1..d.max_attempts).map(|a| d.backoff(a)).sum();
        assert!(total > 2 * 86_400, "{total}");
    }
}
