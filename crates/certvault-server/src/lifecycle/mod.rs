//! The lifecycle engine: a background task that claims due scheduler items (one per
//! certificate, see `certvault_store::Scheduler`), plans each with
//! [`certvault_core::lifecycle::plan`], and does what is due — renew, mail the contacts, send
//! an expiry notice — recording the events, marks and the item's next due time in one
//! transaction. Renewal on demand (admin API, CLI) goes through [`renew`] as well.
//!
//! Every decision reads the server's [`certvault_core::Clock`], so a test clock drives it.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use certvault_core::ObjectName;
use certvault_core::lifecycle::{self as planner, Item, VersionFacts};
use certvault_core::policy::Policy;
use certvault_store::{Job, JobNext, Mark, NewEvent, Scheduler};
use serde_json::json;

use crate::audit::Outcome;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
pub use crate::kv::certs::{RenewalAudit, RenewalTerms};
use crate::notify::{DeliverySettings, Notifier, SmtpSettings};
use crate::state::AppState;

/// How long a claimed item stays leased (seconds of the server clock).
pub const JOB_LEASE: i64 = 300;

/// Items claimed per pass.
pub const JOB_BATCH: i64 = 256;

/// Settings of the lifecycle engine and of notification delivery.
#[derive(Debug, Clone)]
pub struct LifecycleSettings {
    /// Run the engine and the delivery worker (off only in special set-ups and tests).
    pub enabled: bool,
    /// Expiry notice offsets in days before expiry.
    pub notice_days: Vec<u32>,
    /// Wall-clock pause between passes when nothing is due.
    pub tick: Duration,
    /// Renewals run at the same time.
    pub renew_concurrency: usize,
    /// Seconds of the server clock claimed work stays leased (lifecycle items, ACME orders;
    /// deliveries at most 120): how long a dead replica's work waits before another takes it.
    pub lease: i64,
    /// Delivery of events to channels and e-mail.
    pub delivery: DeliverySettings,
    /// The SMTP server for e-mail to vault contacts; none: e-mail deliveries are skipped.
    pub smtp: Option<SmtpSettings>,
}

impl Default for LifecycleSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            notice_days: planner::DEFAULT_NOTICE_DAYS.to_vec(),
            tick: Duration::from_secs(1),
            renew_concurrency: 32,
            lease: JOB_LEASE,
            delivery: DeliverySettings::default(),
            smtp: None,
        }
    }
}

/// The engine's shared state: settings, wake-ups and the work in flight in this process.
pub struct Lifecycle {
    /// Settings.
    pub settings: LifecycleSettings,
    /// Wakes the engine and the delivery worker (new work, test clock moved).
    pub wake: tokio::sync::Notify,
    /// Wakes the delivery worker.
    pub wake_delivery: tokio::sync::Notify,
    /// The lease owner name of this process.
    pub owner: String,
    /// Outgoing webhooks and e-mail.
    pub notifier: Notifier,
    jobs_in_flight: Mutex<HashSet<i64>>,
    pub(crate) deliveries_in_flight: Mutex<HashSet<i64>>,
    /// Set to `true` at shutdown: the engine and the delivery worker claim nothing more.
    stop: tokio::sync::watch::Sender<bool>,
    renewal_gate: Mutex<Option<Arc<RenewalGate>>>,
}

/// Test hook: holds every renewal right before its conditional write, so a test can line up
/// two renewals of one version (the race [`certvault_store::RenewalGuard`] decides). Closed,
/// it lets nobody through; each [`RenewalGate::open`] lets the waiting renewals pass one at a
/// time, in arrival order, each holding the gate through its write. Not set in production.
#[doc(hidden)]
#[derive(Debug)]
pub struct RenewalGate {
    permits: Arc<tokio::sync::Semaphore>,
    waiting: std::sync::atomic::AtomicUsize,
}

impl RenewalGate {
    /// A closed gate.
    pub fn closed() -> Arc<Self> {
        Arc::new(Self {
            permits: Arc::new(tokio::sync::Semaphore::new(0)),
            waiting: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// Renewals waiting at the gate.
    pub fn waiting(&self) -> usize {
        self.waiting.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Lets the waiting (and later) renewals through, one write at a time.
    pub fn open(&self) {
        self.permits.add_permits(1);
    }
}

impl std::fmt::Debug for Lifecycle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lifecycle")
            .field("settings", &self.settings)
            .field("owner", &self.owner)
            .finish_non_exhaustive()
    }
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self::with_notifier(LifecycleSettings::default(), Notifier::default())
    }
}

impl Lifecycle {
    /// The engine state for `settings` (builds the HTTP client and the SMTP transport).
    pub fn new(settings: LifecycleSettings) -> Result<Self, crate::ServerError> {
        let notifier = Notifier::new(&settings.delivery, settings.smtp.as_ref())?;
        Ok(Self::with_notifier(settings, notifier))
    }

    fn with_notifier(settings: LifecycleSettings, notifier: Notifier) -> Self {
        Self {
            settings,
            wake: tokio::sync::Notify::new(),
            wake_delivery: tokio::sync::Notify::new(),
            owner: format!("certvault-{}", uuid::Uuid::new_v4().simple()),
            notifier,
            jobs_in_flight: Mutex::new(HashSet::new()),
            deliveries_in_flight: Mutex::new(HashSet::new()),
            stop: tokio::sync::watch::Sender::new(false),
            renewal_gate: Mutex::new(None),
        }
    }

    /// Test hook: puts a [`RenewalGate`] in front of every renewal's write (`None`: removes it).
    #[doc(hidden)]
    pub fn set_renewal_gate(&self, gate: Option<Arc<RenewalGate>>) {
        if let Ok(mut g) = self.renewal_gate.lock() {
            *g = gate;
        }
    }

    /// Waits at the renewal gate, if a test set one; hold the result through the write.
    pub(crate) async fn renewal_gate_pass(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let gate = self.renewal_gate.lock().ok().and_then(|g| g.clone())?;
        gate.waiting
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let permit = gate.permits.clone().acquire_owned().await.ok();
        gate.waiting
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        permit
    }

    /// Stops claiming work (shutdown); what is in flight runs on.
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }

    /// Whether [`Lifecycle::stop`] was called.
    pub fn is_stopping(&self) -> bool {
        *self.stop.borrow()
    }

    /// Resolves once [`Lifecycle::stop`] has been called.
    pub(crate) async fn stopped(&self) {
        let mut rx = self.stop.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    /// Lifecycle items and deliveries being worked on in this process.
    pub fn in_flight(&self) -> (usize, usize) {
        let jobs = self.jobs_in_flight.lock().map(|s| s.len()).unwrap_or(0);
        let deliveries = self
            .deliveries_in_flight
            .lock()
            .map(|s| s.len())
            .unwrap_or(0);
        (jobs, deliveries)
    }

    /// Wakes both workers (e.g. after the test clock moved).
    pub fn wake_all(&self) {
        self.wake.notify_one();
        self.wake_delivery.notify_one();
    }

    fn begin_job(&self, id: i64) -> bool {
        self.jobs_in_flight
            .lock()
            .map(|mut s| s.insert(id))
            .unwrap_or(false)
    }

    fn end_job(&self, id: i64) {
        if let Ok(mut s) = self.jobs_in_flight.lock() {
            s.remove(&id);
        }
    }
}

/// Runs the engine until [`Lifecycle::stop`] (or the task is aborted). Items it claimed and
/// did not start when stopped stay leased to this process; the shutdown releases them.
pub async fn run_engine(state: Arc<AppState>) {
    let lc = &state.lifecycle;
    // SQLite: one process per database, so every lease is an earlier run's. A shared database
    // (replicas): only this process's own leases (none: its owner id is new); a dead replica's
    // items come back when their lease ends.
    let released = if state.store.shared() {
        state
            .store
            .release_leases_of(&lc.owner, state.clock.now())
            .await
    } else {
        state.store.release_leases(state.clock.now()).await
    };
    match released {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            items = n,
            "lifecycle items leased by an earlier run are due again"
        ),
        Err(e) => tracing::warn!(error = %e, "could not release lifecycle leases"),
    }
    let permits = Arc::new(tokio::sync::Semaphore::new(
        lc.settings.renew_concurrency.max(1),
    ));
    // Renewals' audit records left in the outbox by a process that died after committing
    // (its lease on them over) or by a failed append: drained every lease/3 (1 to 30 s).
    let drain_every =
        Duration::from_secs(u64::try_from((lc.settings.lease / 3).clamp(1, 30)).unwrap_or(1));
    let mut next_drain = tokio::time::Instant::now() + drain_every;
    loop {
        if lc.is_stopping() {
            return;
        }
        if tokio::time::Instant::now() >= next_drain {
            next_drain = tokio::time::Instant::now() + drain_every;
            drain_logged(&state, None).await;
        }
        let now = state.clock.now();
        let claimed = match state
            .store
            .claim_due(now, &lc.owner, lc.settings.lease, JOB_BATCH)
            .await
        {
            Ok(j) => j,
            Err(e) => {
                tracing::warn!(error = %e, "lifecycle pass failed");
                tokio::time::sleep(lc.settings.tick).await;
                continue;
            }
        };
        let full = i64::try_from(claimed.len()).unwrap_or(0) >= JOB_BATCH;
        for job in claimed {
            if lc.is_stopping() {
                return;
            }
            let permit = tokio::select! {
                p = permits.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => return,
                },
                () = lc.stopped() => return,
            };
            if !lc.begin_job(job.id) {
                continue;
            }
            let st = state.clone();
            tokio::spawn(async move {
                let id = job.id;
                if let Err(e) = run_job(&st, &job).await {
                    tracing::warn!(job = id, error = %e, "lifecycle item failed; it is retried after its lease");
                }
                st.lifecycle.end_job(id);
                drop(permit);
            });
        }
        if !full {
            tokio::select! {
                () = lc.wake.notified() => {}
                () = tokio::time::sleep(lc.settings.tick) => {}
                () = lc.stopped() => return,
            }
        }
    }
}

/// Plans or does one claimed item.
async fn run_job(state: &Arc<AppState>, job: &Job) -> Result<(), certvault_store::StoreError> {
    let store = &state.store;
    let done = |next| async move { store.finish_job(job, next).await.map(|_| ()) };
    let Some(cert_id) = job.cert_id else {
        return done(JobNext::Done).await;
    };
    let now = state.clock.now();
    let view = match store.lifecycle_view(cert_id).await? {
        Some(v) if !v.deleted => v,
        _ => return done(JobNext::Done).await,
    };
    let Some(cur) = &view.current else {
        return done(JobNext::Done).await;
    };
    let policy: Policy = match serde_json::from_str(&view.policy) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(certificate = %view.name, error = %e, "unreadable stored policy; no lifecycle actions");
            return done(JobNext::Done).await;
        }
    };
    // ACME Renewal Information: the CA's suggested time replaces the AutoRenew triggers.
    let (ari, ari_recheck) = if cur.made && auto_renews(&policy) && !view.op_in_progress {
        ari_advice(state, job, &view, &policy, cur, now).await
    } else {
        (None, None)
    };
    let facts = VersionFacts {
        nbf: cur.nbf,
        exp: cur.exp,
        created: cur.created,
        made: cur.made,
        op_in_progress: view.op_in_progress,
        marks: &cur.marks,
        seed: planner::seed_of(&cur.version),
        renew_at: ari.as_ref().map(|a| a.renew_at),
    };
    let planned = planner::plan(&policy, &facts, &state.lifecycle.settings.notice_days, now);
    let Some(p) = planned else {
        return match ari_recheck {
            Some(at) => {
                done(JobNext::At {
                    due: at,
                    payload: None,
                    attempts: 0,
                })
                .await
            }
            None => done(JobNext::Done).await,
        };
    };
    if p.at > now {
        let due = ari_recheck.map_or(p.at, |r| r.min(p.at));
        let payload =
            json!({"version": cur.version, "item": p.item.name(), "at": p.at, "ari": ari});
        return done(JobNext::At {
            due,
            payload: Some(payload.to_string()),
            attempts: 0,
        })
        .await;
    }
    let exp = cur.exp.unwrap_or(now);
    let base = json!({
        "nbf": cur.nbf,
        "exp": cur.exp,
        "seconds_to_expiry": exp - now,
    });
    let replan = JobNext::At {
        due: now,
        payload: None,
        attempts: 0,
    };
    match p.item {
        Item::Renew { attempt, .. } => {
            // A renewal must happen once: act only while this replica still holds the job's
            // lease (a lease that ran out under a slow worker, or a clock jump, may have
            // passed it to another replica, which then does the renewal).
            let lc = &state.lifecycle;
            if !store
                .extend_lease(job.id, &lc.owner, now, lc.settings.lease)
                .await?
            {
                tracing::warn!(vault = %view.vault, certificate = %view.name, "the lease of this renewal passed to another replica; leaving it to that one");
                return Ok(());
            }
            let object = format!("certificates/{}", view.name);
            let replaces = ari.as_ref().map(|a| a.cert_id.clone());
            // The renewal's audit record is committed with its version (audit outbox) and
            // appended to the chain right after: a crash in between only delays it.
            let audit = RenewalAudit {
                operation: "certificates.autorenew".into(),
                object: object.clone(),
                detail: json!({"previous": cur.version, "ari": ari}),
                owner: lc.owner.clone(),
                lease_until: now + lc.settings.lease,
            };
            let renewed = renew_with(
                state,
                &view.vault,
                &view.name,
                false,
                replaces,
                Some(cur.version.clone()),
                Some(audit),
            )
            .await;
            match renewed {
                Ok(r) => {
                    tracing::info!(vault = %view.vault, certificate = %view.name, version = %r.version, status = %r.status, "certificate renewed by its lifetime action");
                    if let Some(id) = r.outbox {
                        drain_logged(state, Some(id)).await;
                    }
                    // The new version (or operation) replanned the item in its own transaction.
                    store.finish_job(job, replan).await?;
                }
                Err(e) if e.is_superseded() => {
                    // Another worker (a replica that took the job over after this one's lease
                    // ran out, or a renewal on demand) renewed this version first; its
                    // transaction replanned the item. Nothing failed here.
                    tracing::info!(vault = %view.vault, certificate = %view.name, version = %cur.version, "certificate already renewed by another worker; nothing to do");
                    store.finish_job(job, replan).await?;
                    return Ok(());
                }
                Err(e) => {
                    let n = attempt.saturating_add(1);
                    let next = now + planner::retry_backoff(n);
                    tracing::warn!(vault = %view.vault, certificate = %view.name, attempt = n, error = %e.message, "automatic renewal failed");
                    if let Err(e) = state
                        .auditor
                        .system(
                            "certificates.autorenew",
                            Some(&view.vault),
                            Some(&object),
                            Outcome::Error,
                            Some(json!({"version": cur.version, "attempt": n, "error": e.message})),
                        )
                        .await
                    {
                        tracing::error!(error = %e, "a background action could not be recorded in the audit trail");
                    }
                    let mut body = base;
                    body["error"] = json!(e.message);
                    body["attempt"] = json!(n);
                    body["next_attempt"] = if next < exp { json!(next) } else { json!(null) };
                    let ev = NewEvent {
                        kind: "renewal_failed".into(),
                        cert_id,
                        version: Some(cur.version.clone()),
                        email: true,
                        dedup: format!("renewal_failed:{cert_id}:{}:{n}", cur.version),
                        body,
                        created: now,
                    };
                    let mark = Mark {
                        cert_id,
                        version: cur.version.clone(),
                        mark: planner::retry_mark(n, next),
                    };
                    store
                        .job_outcome(job, vec![ev], vec![mark], replan, now)
                        .await?;
                }
            }
        }
        item => {
            let (kind, mut body) = match item {
                Item::Email { index } => {
                    let la = policy.lifetime_actions.get(index);
                    let mut b = base;
                    b["reason"] = json!("lifetime_action");
                    b["action"] = json!("EmailContacts");
                    b["trigger"] = json!(la.map(|l| l.trigger));
                    ("about_to_expire", b)
                }
                Item::Notice { days } => {
                    let mut b = base;
                    b["reason"] = json!("expiry_notice");
                    b["days_before_expiry"] = json!(days);
                    ("about_to_expire", b)
                }
                _ => ("expired", base),
            };
            let mark = item.mark().unwrap_or_else(|| "done".into());
            body["notice"] = json!(mark);
            let ev = NewEvent {
                kind: kind.into(),
                cert_id,
                version: Some(cur.version.clone()),
                email: true,
                dedup: format!("{mark}:{cert_id}:{}", cur.version),
                body,
                created: now,
            };
            let marks = std::iter::once(mark)
                .chain(p.also_mark.iter().cloned())
                .map(|m| Mark {
                    cert_id,
                    version: cur.version.clone(),
                    mark: m,
                })
                .collect();
            store.job_outcome(job, vec![ev], marks, replan, now).await?;
        }
    }
    state.lifecycle.wake.notify_one();
    state.lifecycle.wake_delivery.notify_one();
    Ok(())
}

/// The policy has an AutoRenew lifetime action.
fn auto_renews(policy: &Policy) -> bool {
    policy
        .lifetime_actions
        .iter()
        .any(|la| la.action.action_type == certvault_core::policy::ActionType::AutoRenew)
}

/// The CA's renewal advice for `version` that the engine kept in its job payload (written
/// when it planned the version's next item), if any. The `/metrics` planned-renewal gauge reads
/// the same advice, so it reports the time the engine will use.
pub fn cached_ari(payload: Option<&str>, version: &str) -> Option<crate::acme::AriAdvice> {
    payload
        .and_then(|p| serde_json::from_str::<serde_json::Value>(p).ok())
        .filter(|v| v["version"] == version)
        .and_then(|v| serde_json::from_value::<crate::acme::AriAdvice>(v["ari"].clone()).ok())
}

/// How long the engine waits before asking a CA's renewalInfo again after it failed.
const ARI_ERROR_RECHECK: i64 = 3600;

/// The CA's renewal advice for the current version (ARI, RFC 9773), from the job's payload
/// while its Retry-After has not passed, else asked again; and when to ask next. `(None,
/// None)` when the issuer offers no ARI: the lifetime actions rule.
async fn ari_advice(
    state: &Arc<AppState>,
    job: &Job,
    view: &certvault_store::LifecycleView,
    policy: &Policy,
    cur: &certvault_store::CurrentVersion,
    now: i64,
) -> (Option<crate::acme::AriAdvice>, Option<i64>) {
    let issuer = policy.issuer_name();
    if issuer.eq_ignore_ascii_case("Self") || issuer.eq_ignore_ascii_case("Unknown") {
        return (None, None);
    }
    let cached = cached_ari(job.payload.as_deref(), &cur.version);
    if let Some(a) = cached
        && now < a.recheck_at
    {
        let at = a.recheck_at;
        return (Some(a), Some(at));
    }
    let Some(leaf) = current_leaf(state, view.vault_id, &view.name, &cur.version).await else {
        return (None, None);
    };
    let asked = tokio::time::timeout(
        Duration::from_secs(60),
        crate::acme::renewal_info(state, &view.vault, issuer, &leaf),
    )
    .await
    .unwrap_or_else(|_| Err("renewalInfo did not answer within 60 s".into()));
    match asked {
        Ok(Some(a)) => {
            tracing::info!(vault = %view.vault, certificate = %view.name, version = %cur.version,
                window_start = a.window_start, window_end = a.window_end, renew_at = a.renew_at,
                recheck_at = a.recheck_at, "ACME renewal information");
            let at = a.recheck_at;
            (Some(a), Some(at))
        }
        Ok(None) => (None, None),
        Err(e) => {
            tracing::warn!(vault = %view.vault, certificate = %view.name, error = %e,
                "could not ask the CA for renewal information; the lifetime actions rule until it answers");
            (None, Some(now + ARI_ERROR_RECHECK))
        }
    }
}

/// The result of a renewal.
#[derive(Debug, Clone)]
pub struct Renewed {
    /// The new version.
    pub version: String,
    /// `completed`, or `inProgress` when a CSR waits for its merge (issuer Unknown).
    pub status: String,
    /// The CSR (base64 DER) to have signed, for issuer Unknown.
    pub csr: Option<String>,
    /// The audit outbox row of the renewal's audit record, when it has one.
    pub outbox: Option<i64>,
}

/// Appends the claimable rows of the audit outbox (`only`: that row) to the audit chain as
/// `system` records, each with its row id as `outbox` (and its commit time as `committed`) in
/// the detail, and deletes each row once appended. Claimable: rows this process holds and rows
/// whose lease ended (their writer died). At least once: a crash between the append and the
/// delete appends the row again later, under the same `outbox` id. Returns how many.
pub async fn drain_audit_outbox(
    state: &AppState,
    only: Option<i64>,
) -> Result<usize, certvault_store::StoreError> {
    const BATCH: i64 = 64;
    let lc = &state.lifecycle;
    let mut n = 0;
    loop {
        let rows = state
            .store
            .claim_audit_outbox(
                &lc.owner,
                state.clock.now(),
                lc.settings.lease.max(1),
                only,
                BATCH,
            )
            .await?;
        let full = i64::try_from(rows.len()).unwrap_or(0) >= BATCH;
        for row in rows {
            let mut detail = row
                .detail
                .as_deref()
                .and_then(|d| serde_json::from_str::<serde_json::Value>(d).ok())
                .filter(serde_json::Value::is_object)
                .unwrap_or_else(|| json!({}));
            detail["outbox"] = json!(row.id);
            detail["committed"] = json!(row.created);
            let outcome = match row.outcome.as_str() {
                "ok" => Outcome::Ok,
                "denied" => Outcome::Denied,
                _ => Outcome::Error,
            };
            state
                .auditor
                .system(
                    &row.operation,
                    row.vault.as_deref(),
                    row.object.as_deref(),
                    outcome,
                    Some(detail),
                )
                .await?;
            state.store.delete_audit_outbox(row.id).await?;
            n += 1;
        }
        if only.is_some() || !full {
            return Ok(n);
        }
    }
}

/// [`drain_audit_outbox`], logging instead of failing (what is left is drained later).
pub async fn drain_logged(state: &AppState, only: Option<i64>) {
    match drain_audit_outbox(state, only).await {
        Ok(0) => {}
        Ok(n) if only.is_none() => {
            tracing::info!(
                records = n,
                "audit records of earlier renewals appended from the outbox"
            );
        }
        Ok(_) => {}
        Err(e) => {
            tracing::error!(error = %e, "the audit record of a renewal could not be appended yet; it stays in the outbox and is retried");
        }
    }
}

/// Renews certificate `name` of vault `vault_key`: creates a new version under the stored
/// policy (the Key Vault "create again"), with a new key when `rekey` or when the policy does
/// not say `reuse_key`. Refused for imported certificates and while an operation is in
/// progress. Earlier versions stay as they are.
pub async fn renew(
    state: &Arc<AppState>,
    vault_key: &str,
    name: &str,
    rekey: bool,
) -> ApiResult<Renewed> {
    renew_with(state, vault_key, name, rekey, None, None, None).await
}

/// [`renew`], with the ARI certificate id the new ACME order replaces. Without one, and when
/// the policy's issuer is an ACME issuer whose CA offers renewalInfo and knows the current
/// version, its id is sent (RFC 9773 `replaces`).
///
/// Renews once: the new version (or operation) is stored only while the current version is
/// still `expected` (the engine's read; default: the one read here) and no operation is in
/// progress — checked in the write's transaction. Otherwise nothing is written and the error
/// is [`ApiError::superseded`] (409): another renewal came first. `audit` is committed with
/// the version into the audit outbox ([`Renewed::outbox`]; [`drain_audit_outbox`]).
pub async fn renew_with(
    state: &Arc<AppState>,
    vault_key: &str,
    name: &str,
    rekey: bool,
    replaces: Option<String>,
    expected: Option<String>,
    audit: Option<RenewalAudit>,
) -> ApiResult<Renewed> {
    let vault = state.vault(&vault_key.to_ascii_lowercase()).await?;
    let n = ObjectName::parse(name)?;
    let cert = state
        .store
        .certificate(vault.vault.id, &n.key())
        .await?
        .filter(|c| c.deleted_at.is_none())
        .ok_or_else(|| ApiError::cert_not_found(n.as_str()))?;
    let view = state
        .store
        .lifecycle_view(cert.id)
        .await?
        .ok_or_else(|| ApiError::cert_not_found(n.as_str()))?;
    if view.op_in_progress {
        if expected.is_some() {
            return Err(ApiError::superseded());
        }
        return Err(ApiError::conflict(
            "A certificate operation is already in progress for this certificate; merge or cancel it first.",
        ));
    }
    match &view.current {
        None => {
            return Err(ApiError::bad(format!(
                "Certificate {n} has no completed version to renew."
            )));
        }
        Some(c) if !c.made => {
            return Err(ApiError::bad(format!(
                "Certificate {n} was imported: certvault did not issue it and cannot renew it. \
                 Renew it with its issuer and import the new certificate."
            ))
            .inner("ImportedCertificateNotRenewable"));
        }
        Some(_) => {}
    }
    let read = view.current.as_ref().map(|c| c.version.clone());
    if expected.is_some() && expected != read {
        return Err(ApiError::superseded());
    }
    let expected = expected
        .or(read)
        .ok_or_else(|| ApiError::internal(&"the renewal read no current version"))?;
    let replaces = match (replaces, &view.current) {
        (Some(r), _) => Some(r),
        (None, Some(cur)) => {
            ari_replaces(
                state,
                &vault.vault.name,
                &view.policy,
                vault.vault.id,
                n.as_str(),
                cur,
            )
            .await
        }
        (None, None) => None,
    };
    let caller = Caller::admin(crate::audit::SYSTEM);
    let request_id = uuid::Uuid::new_v4().to_string();
    let ctx = crate::kv::Ctx {
        state,
        vault: vault.clone(),
        base: vault_url(state, &vault.vault.name),
        api_version: "7.6".into(),
        query: vec![],
        body: Bytes::from_static(b"{}"),
        now: state.clock.now(),
        request_id: &request_id,
        caller: &caller,
        resolved_version: std::sync::OnceLock::new(),
    };
    let terms = RenewalTerms {
        expected,
        replaces,
        audit,
    };
    let (_, outbox) = crate::kv::certs::create_with(&ctx, n.as_str(), rekey, Some(terms)).await?;
    let op = state
        .store
        .operation(cert.id)
        .await?
        .ok_or_else(|| ApiError::internal(&"the renewal left no operation"))?;
    use base64::Engine as _;
    Ok(Renewed {
        version: op.version,
        status: op.status,
        csr: op
            .csr
            .map(|c| base64::engine::general_purpose::STANDARD.encode(c)),
        outbox,
    })
}

/// The current version's leaf (DER).
async fn current_leaf(
    state: &Arc<AppState>,
    vault_id: i64,
    name: &str,
    version: &str,
) -> Option<Vec<u8>> {
    state
        .store
        .cert_version(
            vault_id,
            &name.to_ascii_lowercase(),
            false,
            certvault_store::Which::Version(version),
        )
        .await
        .ok()
        .flatten()
        .and_then(|(_, v)| v.cer)
}

/// The ARI certificate id of the current version when its policy's issuer is an ACME CA that
/// offers renewalInfo and knows the certificate (best effort: `None` otherwise).
async fn ari_replaces(
    state: &Arc<AppState>,
    vault: &str,
    policy_json: &str,
    vault_id: i64,
    name: &str,
    cur: &certvault_store::CurrentVersion,
) -> Option<String> {
    let policy: Policy = serde_json::from_str(policy_json).ok()?;
    let leaf = current_leaf(state, vault_id, name, &cur.version).await?;
    // A renewal on demand waits for the CA's answer only briefly.
    let asked = tokio::time::timeout(
        Duration::from_secs(5),
        crate::acme::renewal_info(state, vault, policy.issuer_name(), &leaf),
    )
    .await
    .unwrap_or_else(|_| Err("renewalInfo did not answer within 5 s".into()));
    match asked {
        Ok(a) => a.map(|a| a.cert_id),
        Err(e) => {
            tracing::debug!(error = %e, "no ARI certificate id for the renewal");
            None
        }
    }
}

/// POST /certificates/{n}/renew (certvault extension, permission `certificates/create`):
/// `{"rekey": bool}` optional. Answers 201 with the new version and its status.
pub async fn renew_route(
    ctx: &crate::kv::Ctx<'_>,
    seg: &str,
) -> ApiResult<http::Response<crate::http::Body>> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body {
        rekey: Option<bool>,
    }
    let body: Body = if ctx.body.is_empty() {
        Body { rekey: None }
    } else {
        ctx.json()?
    };
    let r = renew(
        ctx.state,
        &ctx.vault.vault.name,
        seg,
        body.rekey.unwrap_or(false),
    )
    .await?;
    let _ = ctx.resolved_version.set(r.version.clone());
    ctx.state.lifecycle.wake_all();
    Ok(crate::http::json(
        http::StatusCode::CREATED,
        &json!({
            "id": format!("{}/certificates/{seg}/{}", ctx.base, r.version),
            "certificate": seg,
            "version": r.version,
            "status": r.status,
            "csr": r.csr,
        }),
    ))
}

/// `https://<vault>.<base-domain>[:port]`.
pub fn vault_url(state: &AppState, vault: &str) -> String {
    let v = vault.to_ascii_lowercase();
    if state.http.public_port == 443 {
        format!("https://{v}.{}", state.http.base_domain)
    } else {
        format!(
            "https://{v}.{}:{}",
            state.http.base_domain, state.http.public_port
        )
    }
}
