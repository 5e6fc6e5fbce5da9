//! Prometheus metrics (text exposition format 0.0.4), hand-rolled on atomics.
//!
//! Request metrics sit on the hot path (every request, GET secret above all), so they are
//! lock-free and allocation-free: the operation names are a fixed sorted table (the audit
//! trail's operation names, `audit.rs`), found by binary search; each (operation, status)
//! counter and each (operation, status class) histogram is a preallocated atomic. The rest is
//! computed when scraped: per-certificate gauges of the soonest-expiring certificates (at
//! most `--metrics-certificate-series`) from one bounded store query and counts of all of
//! them from another (cached for a few seconds), queue depths from a third, and process-wide
//! counters (deliveries, ACME requests) read from atomics. Names and labels are documented in
//! `docs/metrics.md`.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use certvault_core::lifecycle as planner;

use crate::state::AppState;

/// The operations requests are counted by: the audit trail's names, plus the unaudited probe
/// endpoints (`ops.*`) and `unknown`. Sorted (binary search); anything else counts as
/// `unknown`.
pub const OPERATIONS: &[&str] = &[
    "admin.access-policies.delete",
    "admin.access-policies.get",
    "admin.access-policies.list",
    "admin.access-policies.set",
    "admin.audit.export",
    "admin.audit.list",
    "admin.audit.verify",
    "admin.backup",
    "admin.channels.create",
    "admin.channels.delete",
    "admin.channels.get",
    "admin.channels.list",
    "admin.channels.test",
    "admin.channels.update",
    "admin.deliveries.get",
    "admin.deliveries.list",
    "admin.deliveries.replay",
    "admin.events.list",
    "admin.master-key.rotate",
    "admin.principals.create",
    "admin.principals.delete",
    "admin.principals.get",
    "admin.principals.list",
    "admin.principals.update",
    "admin.test-clock.advance",
    "admin.test-clock.get",
    "admin.tokens.create",
    "admin.tokens.list",
    "admin.tokens.revoke",
    "admin.unknown",
    "admin.vaults.create",
    "admin.vaults.delete",
    "admin.vaults.get",
    "admin.vaults.list",
    "admin.vaults.list-deleted",
    "admin.vaults.purge",
    "admin.vaults.recover",
    "admin.vaults.update",
    "certificates.backup",
    "certificates.contacts.delete",
    "certificates.contacts.get",
    "certificates.contacts.set",
    "certificates.create",
    "certificates.delete",
    "certificates.deleted.get",
    "certificates.deleted.list",
    "certificates.get",
    "certificates.import",
    "certificates.issuers.delete",
    "certificates.issuers.get",
    "certificates.issuers.list",
    "certificates.issuers.set",
    "certificates.issuers.update",
    "certificates.list",
    "certificates.merge",
    "certificates.pending.acknowledge",
    "certificates.pending.cancel",
    "certificates.pending.delete",
    "certificates.pending.get",
    "certificates.policy.get",
    "certificates.policy.update",
    "certificates.purge",
    "certificates.recover",
    "certificates.renew",
    "certificates.restore",
    "certificates.update",
    "certificates.versions",
    "keys.decrypt",
    "keys.delete",
    "keys.encrypt",
    "keys.get",
    "keys.list",
    "keys.sign",
    "keys.unwrapKey",
    "keys.update",
    "keys.verify",
    "keys.versions",
    "keys.wrapKey",
    "ops.healthz",
    "ops.metrics",
    "ops.openapi",
    "ops.readyz",
    "secrets.delete",
    "secrets.get",
    "secrets.list",
    "secrets.set",
    "secrets.update",
    "secrets.versions",
    "unknown",
];

/// Status codes counted one by one; any other lands in `other`.
const STATUSES: &[u16] = &[
    200, 201, 202, 204, 400, 401, 403, 404, 405, 409, 413, 415, 429, 500, 501, 503,
];
const STATUS_OTHER: usize = STATUSES.len();
const CLASSES: &[&str] = &["2xx", "3xx", "4xx", "5xx"];

/// Latency bucket upper bounds, in seconds and nanoseconds.
const BUCKETS: &[(&str, u64)] = &[
    ("0.0005", 500_000),
    ("0.001", 1_000_000),
    ("0.0025", 2_500_000),
    ("0.005", 5_000_000),
    ("0.01", 10_000_000),
    ("0.025", 25_000_000),
    ("0.05", 50_000_000),
    ("0.1", 100_000_000),
    ("0.25", 250_000_000),
    ("0.5", 500_000_000),
    ("1", 1_000_000_000),
    ("2.5", 2_500_000_000),
    ("5", 5_000_000_000),
    ("10", 10_000_000_000),
];

/// How long the per-certificate section of a scrape is reused, at least.
pub const CERTIFICATE_CACHE: Duration = Duration::from_secs(5);

/// The per-certificate section is reused for at least this many times as long as computing it
/// took, so its queries (the counts scan every live certificate) take at most about a tenth of
/// the time however often Prometheus scrapes a large store.
pub const CERTIFICATE_CACHE_FACTOR: u32 = 10;

/// Clears the refreshing flag when a background refresh ends (also if it is cancelled).
struct Refreshing<'a>(&'a AtomicBool);

impl Drop for Refreshing<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// The default of `--metrics-certificate-series`: per-certificate series are exported for at
/// most this many certificates (those expiring soonest).
pub const DEFAULT_CERTIFICATE_SERIES: usize = 10_000;

#[derive(Debug)]
struct Histogram {
    /// Observations per bucket (not cumulative; the last is +Inf).
    buckets: [AtomicU64; BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

impl Histogram {
    const fn new() -> Self {
        Self {
            buckets: [const { AtomicU64::new(0) }; BUCKETS.len() + 1],
            sum_nanos: AtomicU64::new(0),
        }
    }

    fn observe(&self, nanos: u64) {
        let i = BUCKETS
            .iter()
            .position(|(_, b)| nanos <= *b)
            .unwrap_or(BUCKETS.len());
        if let Some(b) = self.buckets.get(i) {
            b.fetch_add(1, Ordering::Relaxed);
        }
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }
}

#[derive(Debug)]
struct OpSlot {
    statuses: [AtomicU64; STATUSES.len() + 1],
    latency: [Histogram; 4],
}

impl OpSlot {
    fn new() -> Self {
        Self {
            statuses: [const { AtomicU64::new(0) }; STATUSES.len() + 1],
            latency: [const { Histogram::new() }; 4],
        }
    }
}

/// The index of `operation` in [`OPERATIONS`] (`unknown` when it is not there).
pub fn operation_index(operation: &str) -> usize {
    OPERATIONS
        .binary_search(&operation)
        .or_else(|_| OPERATIONS.binary_search(&"unknown"))
        .unwrap_or(0)
}

/// Delivery results counted.
const DELIVERY_CHANNELS: &[&str] = &["webhook", "slack", "email", "other"];
const DELIVERY_RESULTS: &[&str] = &["delivered", "retry", "dead", "skipped"];

/// A delivery attempt's result, for [`Metrics::delivery`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryResult {
    /// The channel accepted it.
    Delivered = 0,
    /// It failed and is retried later.
    Retry = 1,
    /// It failed for the last time (dead letter).
    Dead = 2,
    /// Not sent (e.g. no SMTP server configured).
    Skipped = 3,
}

/// The metrics of one server process.
#[derive(Debug)]
pub struct Metrics {
    ops: Vec<OpSlot>,
    deliveries: [[AtomicU64; 4]; 4],
    started: Instant,
    /// The per-certificate section and until when it is fresh.
    certificates: tokio::sync::Mutex<Option<(Instant, Arc<String>)>>,
    /// A refresh of a stale section is running in the background.
    refreshing: AtomicBool,
    /// Per-certificate series for at most this many certificates (0: none).
    certificate_series: usize,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Zeroed metrics.
    pub fn new() -> Self {
        Self {
            ops: OPERATIONS.iter().map(|_| OpSlot::new()).collect(),
            deliveries: [const { [const { AtomicU64::new(0) }; 4] }; 4],
            started: Instant::now(),
            certificates: tokio::sync::Mutex::new(None),
            refreshing: AtomicBool::new(false),
            certificate_series: DEFAULT_CERTIFICATE_SERIES,
        }
    }

    /// Exports per-certificate series for at most `n` certificates, those whose current
    /// version expires soonest (`--metrics-certificate-series`; 0: none). The aggregates
    /// (`certvault_certificates`, `certvault_certificates_expiring`) still count every one.
    pub fn set_certificate_series(&mut self, n: usize) {
        self.certificate_series = n;
    }

    /// Counts one answered request (lock-free, no allocation).
    pub fn request(&self, operation: usize, status: u16, elapsed: Duration) {
        let Some(slot) = self.ops.get(operation) else {
            return;
        };
        let si = STATUSES
            .iter()
            .position(|s| *s == status)
            .unwrap_or(STATUS_OTHER);
        if let Some(c) = slot.statuses.get(si) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        let class = match status {
            0..=299 => 0,
            300..=399 => 1,
            400..=499 => 2,
            _ => 3,
        };
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        if let Some(h) = slot.latency.get(class) {
            h.observe(nanos);
        }
    }

    /// Counts one delivery attempt on a channel of `kind` (`webhook`, `slack`; `None` for
    /// e-mail).
    pub fn delivery(&self, kind: Option<&str>, result: DeliveryResult) {
        let ci = match kind {
            None => 2,
            Some(k) => DELIVERY_CHANNELS
                .iter()
                .take(2)
                .position(|c| *c == k)
                .unwrap_or(3),
        };
        if let Some(row) = self.deliveries.get(ci)
            && let Some(c) = row.get(result as usize)
        {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The whole exposition: request and process counters, queue depths and scheduler lag,
    /// and the per-certificate gauges.
    pub async fn render(&self, state: &Arc<AppState>) -> String {
        let mut out = String::with_capacity(16 * 1024);
        self.render_requests(&mut out);
        self.render_deliveries(&mut out);
        render_acme(&mut out);
        let now = state.clock.now();
        match state.store.queue_status(now).await {
            Ok(q) => render_queues(&mut out, &q, now),
            Err(e) => tracing::warn!(error = %e, "metrics: reading the queue depths failed"),
        }
        out.push_str(&self.certificates(state).await);
        let _ = writeln!(
            out,
            "# HELP certvault_uptime_seconds Seconds since this server process started.\n\
             # TYPE certvault_uptime_seconds gauge\n\
             certvault_uptime_seconds {}",
            self.started.elapsed().as_secs()
        );
        let up = i32::from(!state.is_shutting_down());
        let _ = writeln!(
            out,
            "# HELP certvault_up 1 while the server serves, 0 once it is shutting down.\n\
             # TYPE certvault_up gauge\n\
             certvault_up {up}"
        );
        out
    }

    fn render_requests(&self, out: &mut String) {
        out.push_str(
            "# HELP certvault_http_requests_total API requests answered, by operation and status code.\n\
             # TYPE certvault_http_requests_total counter\n",
        );
        for (name, slot) in OPERATIONS.iter().zip(&self.ops) {
            for (i, c) in slot.statuses.iter().enumerate() {
                let n = c.load(Ordering::Relaxed);
                if n == 0 {
                    continue;
                }
                let status = STATUSES
                    .get(i)
                    .map_or_else(|| "other".to_owned(), u16::to_string);
                let _ = writeln!(
                    out,
                    "certvault_http_requests_total{{operation=\"{name}\",status=\"{status}\"}} {n}"
                );
            }
        }
        out.push_str(
            "# HELP certvault_http_request_duration_seconds Time from reading the request head to the response (audit record included), by operation and status class.\n\
             # TYPE certvault_http_request_duration_seconds histogram\n",
        );
        for (name, slot) in OPERATIONS.iter().zip(&self.ops) {
            for (class, h) in CLASSES.iter().zip(&slot.latency) {
                let counts: Vec<u64> = h
                    .buckets
                    .iter()
                    .map(|b| b.load(Ordering::Relaxed))
                    .collect();
                let total: u64 = counts.iter().sum();
                if total == 0 {
                    continue;
                }
                let labels = format!("operation=\"{name}\",status_class=\"{class}\"");
                let mut cum = 0u64;
                for ((le, _), n) in BUCKETS.iter().zip(&counts) {
                    cum += n;
                    let _ = writeln!(
                        out,
                        "certvault_http_request_duration_seconds_bucket{{{labels},le=\"{le}\"}} {cum}"
                    );
                }
                let _ = writeln!(
                    out,
                    "certvault_http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {total}"
                );
                let sum = h.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
                let _ = writeln!(
                    out,
                    "certvault_http_request_duration_seconds_sum{{{labels}}} {sum}"
                );
                let _ = writeln!(
                    out,
                    "certvault_http_request_duration_seconds_count{{{labels}}} {total}"
                );
            }
        }
    }

    fn render_deliveries(&self, out: &mut String) {
        out.push_str(
            "# HELP certvault_notification_deliveries_total Notification delivery attempts, by channel kind and result (retry: failed, tried again later; dead: failed for the last time).\n\
             # TYPE certvault_notification_deliveries_total counter\n",
        );
        for (ch, row) in DELIVERY_CHANNELS.iter().zip(&self.deliveries) {
            for (res, c) in DELIVERY_RESULTS.iter().zip(row) {
                let _ = writeln!(
                    out,
                    "certvault_notification_deliveries_total{{channel=\"{ch}\",result=\"{res}\"}} {}",
                    c.load(Ordering::Relaxed)
                );
            }
        }
    }

    /// The per-certificate section, from the store at most every [`CERTIFICATE_CACHE`], or
    /// [`CERTIFICATE_CACHE_FACTOR`] times as long as the last computation took when that is
    /// longer. Only the first scrape waits for the store (concurrent first scrapes wait for one
    /// computation): once a section exists, a scrape that finds it stale is answered with it
    /// and starts one refresh in the background, so a large store's counts (seconds at
    /// millions of certificates) never hold a scrape past Prometheus's timeout.
    async fn certificates(&self, state: &Arc<AppState>) -> Arc<String> {
        let mut cache = self.certificates.lock().await;
        match cache.as_ref() {
            Some((until, text)) if Instant::now() < *until => return text.clone(),
            Some((_, stale)) => {
                if !self.refreshing.swap(true, Ordering::AcqRel) {
                    let state = state.clone();
                    tokio::spawn(async move {
                        let m = &state.metrics;
                        let _done = Refreshing(&m.refreshing);
                        if let Some(fresh) = m.compute_certificates(&state).await {
                            *m.certificates.lock().await = Some(fresh);
                        }
                    });
                }
                return stale.clone();
            }
            None => {}
        }
        match self.compute_certificates(state).await {
            Some((until, text)) => {
                *cache = Some((until, text.clone()));
                text
            }
            None => Arc::new(String::new()),
        }
    }

    /// Reads the counts and the soonest-expiring certificates and renders the section; with
    /// until when it is fresh. `None` (logged) when the store fails.
    async fn compute_certificates(&self, state: &AppState) -> Option<(Instant, Arc<String>)> {
        let started = Instant::now();
        let counts = state.store.certificate_counts(state.clock.now()).await;
        let rows = state
            .store
            .certificate_statuses(self.certificate_series)
            .await;
        let text = match (counts, rows) {
            (Ok(counts), Ok(rows)) => Arc::new(render_certificates(&rows, &counts)),
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(error = %e, "metrics: reading the certificates failed");
                return None;
            }
        };
        let reuse = CERTIFICATE_CACHE.max(started.elapsed() * CERTIFICATE_CACHE_FACTOR);
        Some((Instant::now() + reuse, text))
    }
}

fn render_acme(out: &mut String) {
    out.push_str(
        "# HELP certvault_acme_requests_total Requests to ACME CAs, by endpoint and result (retry: answered with badNonce, rateLimited, serverInternal or a transient error and sent again).\n\
         # TYPE certvault_acme_requests_total counter\n",
    );
    for (endpoint, result, n) in certvault_acme::stats::snapshot() {
        let _ = writeln!(
            out,
            "certvault_acme_requests_total{{endpoint=\"{endpoint}\",result=\"{result}\"}} {n}"
        );
    }
}

fn render_queues(out: &mut String, q: &certvault_store::QueueStatus, now: i64) {
    let lag = |oldest: Option<i64>| oldest.map_or(0, |t| (now - t).max(0));
    let _ = write!(
        out,
        "# HELP certvault_notification_outbox_depth Deliveries waiting to be sent (including those waiting for a retry).\n\
         # TYPE certvault_notification_outbox_depth gauge\n\
         certvault_notification_outbox_depth {}\n\
         # HELP certvault_notification_dead_letters Deliveries given up on and not replayed.\n\
         # TYPE certvault_notification_dead_letters gauge\n\
         certvault_notification_dead_letters {}\n\
         # HELP certvault_notification_delivery_lag_seconds How long the oldest due delivery has waited past its due time.\n\
         # TYPE certvault_notification_delivery_lag_seconds gauge\n\
         certvault_notification_delivery_lag_seconds {}\n\
         # HELP certvault_scheduler_due_jobs Lifecycle items due now and not claimed by a worker.\n\
         # TYPE certvault_scheduler_due_jobs gauge\n\
         certvault_scheduler_due_jobs {}\n\
         # HELP certvault_scheduler_leased_jobs Lifecycle items claimed by a worker (lease not expired).\n\
         # TYPE certvault_scheduler_leased_jobs gauge\n\
         certvault_scheduler_leased_jobs {}\n\
         # HELP certvault_scheduler_lag_seconds How long the oldest due, unclaimed lifecycle item has waited past its due time.\n\
         # TYPE certvault_scheduler_lag_seconds gauge\n\
         certvault_scheduler_lag_seconds {}\n",
        q.deliveries_pending,
        q.deliveries_dead,
        lag(q.oldest_due_delivery),
        q.jobs_due,
        q.jobs_leased,
        lag(q.oldest_due_job),
    );
}

/// A label value with `\`, `"` and newlines escaped.
fn label(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => o.push_str("\\\\"),
            '"' => o.push_str("\\\""),
            '\n' => o.push_str("\\n"),
            c => o.push(c),
        }
    }
    o
}

/// The certificate aggregates (`counts`, of every live certificate) and the per-certificate
/// gauges of `rows` (the soonest-expiring ones, in that order).
pub fn render_certificates(
    rows: &[certvault_store::CertificateStatus],
    counts: &certvault_store::CertificateCounts,
) -> String {
    struct Row {
        labels: String,
        nbf: Option<i64>,
        exp: Option<i64>,
        renew_at: Option<i64>,
        last_attempt: Option<(i64, bool)>,
        failures: u32,
    }
    let parsed: Vec<Row> = rows
        .iter()
        .map(|r| {
            let policy: Option<certvault_core::policy::Policy> =
                serde_json::from_str(&r.policy).ok();
            let issuer = policy
                .as_ref()
                .and_then(|p| p.issuer.name.clone())
                .unwrap_or_else(|| "unknown".into());
            let (failures, _) = planner::retries(&r.marks);
            let renew_at = policy.as_ref().and_then(|p| {
                planner::renewal_time(
                    p,
                    &planner::VersionFacts {
                        nbf: r.nbf,
                        exp: r.exp,
                        created: r.created,
                        made: r.made,
                        op_in_progress: r.op_in_progress,
                        marks: &r.marks,
                        seed: planner::seed_of(&r.version),
                        // the CA's ARI advice the engine kept in the job payload replaces
                        // the lifetime actions' time, as in the engine's plan
                        renew_at: crate::lifecycle::cached_ari(
                            r.job_payload.as_deref(),
                            &r.version,
                        )
                        .map(|a| a.renew_at),
                    },
                )
            });
            let last_attempt = match r.last_failure_at {
                Some(t) if failures > 0 => Some((t, false)),
                _ if r.made && r.seq > 1 => Some((r.created, true)),
                _ => None,
            };
            Row {
                labels: format!(
                    "vault=\"{}\",name=\"{}\",issuer=\"{}\"",
                    label(&r.vault),
                    label(&r.name),
                    label(&issuer)
                ),
                nbf: r.nbf,
                exp: r.exp,
                renew_at,
                last_attempt,
                failures,
            }
        })
        .collect();
    let mut out = String::with_capacity(rows.len() * 600 + 2048);
    let shown = i64::try_from(rows.len()).unwrap_or(i64::MAX);
    let _ = writeln!(
        out,
        "# HELP certvault_certificates Live certificates with a completed version.\n\
         # TYPE certvault_certificates gauge\n\
         certvault_certificates {}\n\
         # HELP certvault_certificate_series_omitted Live certificates with a completed version that have no per-certificate series (beyond --metrics-certificate-series; the series kept are those expiring soonest).\n\
         # TYPE certvault_certificate_series_omitted gauge\n\
         certvault_certificate_series_omitted {}\n\
         # HELP certvault_certificates_expiring Live certificates whose current version expires within the horizon from now (expired ones included).\n\
         # TYPE certvault_certificates_expiring gauge\n\
         certvault_certificates_expiring{{within=\"7d\"}} {}\n\
         certvault_certificates_expiring{{within=\"30d\"}} {}",
        counts.total,
        (counts.total - shown).max(0),
        counts.expiring_7d,
        counts.expiring_30d,
    );
    let mut family = |name: &str, help: &str, value: &dyn Fn(&Row) -> Option<String>| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for r in &parsed {
            if let Some(v) = value(r) {
                let _ = writeln!(out, "{name}{{{}}} {v}", r.labels);
            }
        }
    };
    family(
        "certvault_certificate_expiry_timestamp_seconds",
        "Expiry (notAfter) of the certificate's current version, Unix seconds.",
        &|r| r.exp.map(|v| v.to_string()),
    );
    family(
        "certvault_certificate_not_before_timestamp_seconds",
        "Start of validity (notBefore) of the certificate's current version, Unix seconds.",
        &|r| r.nbf.map(|v| v.to_string()),
    );
    family(
        "certvault_certificate_next_renewal_timestamp_seconds",
        "When the lifecycle engine plans to renew the current version (the CA's ARI time or the AutoRenew action, or the retry after a failure), Unix seconds; absent when nothing renews it.",
        &|r| r.renew_at.map(|v| v.to_string()),
    );
    family(
        "certvault_certificate_last_renewal_attempt_timestamp_seconds",
        "When the newest renewal attempt happened (a failure recorded for the current version, or the creation of the current version when it replaced an earlier one), Unix seconds.",
        &|r| r.last_attempt.map(|(t, _)| t.to_string()),
    );
    family(
        "certvault_certificate_last_renewal_success",
        "1 when the newest renewal attempt succeeded, 0 when it failed; absent without an attempt.",
        &|r| r.last_attempt.map(|(_, ok)| u8::from(ok).to_string()),
    );
    family(
        "certvault_certificate_renewal_consecutive_failures",
        "Failed automatic renewal attempts of the current version since it was issued.",
        &|r| Some(r.failures.to_string()),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_are_sorted_and_cover_every_audited_request_operation() {
        assert!(OPERATIONS.windows(2).all(|w| w[0] < w[1]), "sorted, unique");
        // Every operation name the request router can produce (audit.rs, kv_target and
        // admin_target) has its own slot.
        let src = include_str!("audit.rs");
        let start = src.find("fn kv_target").unwrap_or(0);
        let end = src.find("// the hook").unwrap_or(src.len());
        for lit in src[start..end].split('"').skip(1).step_by(2) {
            let looks_like_op = ["admin.", "certificates.", "secrets.", "keys."]
                .iter()
                .any(|p| lit.starts_with(p))
                && lit
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-');
            if looks_like_op {
                assert!(
                    OPERATIONS.binary_search(&lit).is_ok(),
                    "{lit} is missing from OPERATIONS"
                );
            }
        }
        assert_eq!(OPERATIONS[operation_index("secrets.get")], "secrets.get");
        assert_eq!(OPERATIONS[operation_index("no.such.op")], "unknown");
    }

    #[test]
    fn requests_are_counted_by_operation_status_and_latency_bucket() {
        let m = Metrics::new();
        let op = operation_index("secrets.get");
        m.request(op, 200, Duration::from_micros(300));
        m.request(op, 200, Duration::from_millis(3));
        m.request(op, 404, Duration::from_millis(30));
        m.request(op, 418, Duration::from_secs(30));
        let mut out = String::new();
        m.render_requests(&mut out);
        assert!(out.contains(
            "certvault_http_requests_total{operation=\"secrets.get\",status=\"200\"} 2\n"
        ));
        assert!(out.contains(
            "certvault_http_requests_total{operation=\"secrets.get\",status=\"other\"} 1\n"
        ));
        let b = |le: &str, class: &str| {
            format!(
                "certvault_http_request_duration_seconds_bucket{{operation=\"secrets.get\",status_class=\"{class}\",le=\"{le}\"}}"
            )
        };
        assert!(
            out.contains(&format!("{} 1\n", b("0.0005", "2xx"))),
            "{out}"
        );
        assert!(
            out.contains(&format!("{} 1\n", b("0.0025", "2xx"))),
            "{out}"
        );
        assert!(out.contains(&format!("{} 2\n", b("0.005", "2xx"))), "{out}");
        assert!(out.contains(&format!("{} 1\n", b("10", "4xx"))), "{out}");
        assert!(out.contains(&format!("{} 2\n", b("+Inf", "4xx"))), "{out}");
        assert!(!out.contains("operation=\"keys.sign\""), "no empty series");
    }

    #[test]
    fn planned_renewal_follows_the_ari_advice_the_engine_kept() {
        let policy = r#"{"key_props":{},"secret_props":{},"x509_props":{},"attributes":{},"issuer":{"name":"le"},"lifetime_actions":[{"trigger":{"lifetime_percentage":80},"action":{"action_type":"AutoRenew"}}]}"#;
        let row = |name: &str, payload: Option<String>| certvault_store::CertificateStatus {
            vault: "v".into(),
            name: name.into(),
            policy: policy.into(),
            version: "aa11".into(),
            seq: 1,
            created: 1_000,
            nbf: Some(1_000),
            exp: Some(1_001_000),
            made: true,
            marks: vec!["made".into()],
            op_in_progress: false,
            last_failure_at: None,
            job_payload: payload,
        };
        let payload = |version: &str| {
            serde_json::json!({"version": version, "item": "renew", "at": 400_000,
                "ari": {"cert_id": "x.y", "window_start": 300_000, "window_end": 500_000,
                        "renew_at": 400_000, "recheck_at": 2_000}})
            .to_string()
        };
        let out = render_certificates(
            &[
                row("ari", Some(payload("aa11"))),
                row("stale", Some(payload("bb22"))),
                row("none", None),
            ],
            &certvault_store::CertificateCounts {
                total: 5,
                expiring_7d: 1,
                expiring_30d: 2,
            },
        );
        for line in [
            "certvault_certificates 5\n",
            "certvault_certificate_series_omitted 2\n",
            "certvault_certificates_expiring{within=\"7d\"} 1\n",
            "certvault_certificates_expiring{within=\"30d\"} 2\n",
        ] {
            assert!(out.contains(line), "{line}: {out}");
        }
        let value = |name: &str| -> i64 {
            let prefix = format!(
                "certvault_certificate_next_renewal_timestamp_seconds{{vault=\"v\",name=\"{name}\","
            );
            out.lines()
                .find(|l| l.starts_with(&prefix))
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no sample for {name}: {out}"))
        };
        assert_eq!(
            value("ari"),
            400_000,
            "the CA's time, as the engine plans it"
        );
        // advice for another version, or none: the AutoRenew action at 80 % (with jitter)
        for name in ["stale", "none"] {
            let t = value(name);
            assert!((700_000..1_001_000).contains(&t), "{name}: {t}");
        }
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}

/// Settings of the separate plain-HTTP metrics listener (`--metrics-listen`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricsListen {
    /// The address.
    pub addr: std::net::SocketAddr,
    /// Allow a non-loopback address (`--metrics-listen-public`): anyone who reaches it reads
    /// the metrics (names of vaults and certificates included) without a token.
    pub public: bool,
}

/// Checks the settings and binds the listener.
pub async fn bind(m: MetricsListen) -> Result<tokio::net::TcpListener, crate::ServerError> {
    if !m.public && !m.addr.ip().is_loopback() {
        return Err(crate::ServerError::Config(format!(
            "--metrics-listen must be a loopback address (127.0.0.1 or [::1]), not {}: it is \
             plain HTTP without authentication; add --metrics-listen-public to serve it on \
             another address anyway",
            m.addr
        )));
    }
    tokio::net::TcpListener::bind(m.addr)
        .await
        .map_err(|e| crate::ServerError::Io(format!("cannot listen on {}: {e}", m.addr)))
}

/// Serves `GET /metrics` (and nothing else) over plain HTTP/1.1 until `shutdown` resolves.
/// Not authenticated and not audited: access is by network reach (loopback by default).
pub async fn serve(
    state: Arc<AppState>,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) {
    use bytes::Bytes;
    use http::{HeaderValue, Response, StatusCode, header};
    use http_body_util::Full;
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let st = state.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let svc =
                hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let st = st.clone();
                    async move {
                        let started = Instant::now();
                        let resp = if req.uri().path() != "/metrics" {
                            let mut r = Response::new(Full::new(Bytes::from_static(
                                b"not found: this listener serves GET /metrics only\n",
                            )));
                            *r.status_mut() = StatusCode::NOT_FOUND;
                            r
                        } else if req.method() != http::Method::GET {
                            let mut r = Response::new(Full::new(Bytes::from_static(
                                b"method not allowed: GET /metrics\n",
                            )));
                            *r.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
                            r.headers_mut()
                                .insert(header::ALLOW, HeaderValue::from_static("GET"));
                            r
                        } else {
                            let mut r =
                                Response::new(Full::new(Bytes::from(st.metrics.render(&st).await)));
                            r.headers_mut().insert(
                                header::CONTENT_TYPE,
                                HeaderValue::from_static(
                                    "text/plain; version=0.0.4; charset=utf-8",
                                ),
                            );
                            r
                        };
                        st.metrics.request(
                            operation_index("ops.metrics"),
                            resp.status().as_u16(),
                            started.elapsed(),
                        );
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc);
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(%peer, error = %e, "metrics listener: connection ended with an error");
            }
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {},
        () = tokio::time::sleep(Duration::from_secs(5)) => {}
    }
}
