//! The order driver: one task per order. It reads the order row, checks the certificate
//! operation it serves, gets (or registers) the issuer's ACME account, and runs the order's
//! steps, storing the state and the operation's status details after each step. A CA refusal
//! fails the operation with the problem; transient trouble (network, timeouts, rate limits)
//! is retried with a growing pause; a cancellation deactivates the authorizations and removes
//! the published records.

use std::sync::Arc;
use std::time::Duration;

use certvault_acme::{
    AccountConfig, AccountCredentials, AcmeClient, AcmeError, OrderState, OrderStatus, RetryConfig,
    Step, TxtRecord,
};
use certvault_store::{
    AcmeAccountRecord, AcmeOrderRecord, CertRecord, StoreError, VersionUpdate, Which,
};
use serde_json::json;

use super::config::{self, AcmeIssuer};
use crate::state::{AppState, VaultCtx};

/// Why a run stopped before the order ended.
enum Halt {
    /// Try again after a pause (the CA or DNS is unreachable, a rate limit, a timeout).
    Retry {
        why: String,
        wait: Option<Duration>,
        new_account: bool,
    },
}

fn retry(why: impl Into<String>) -> Halt {
    Halt::Retry {
        why: why.into(),
        wait: None,
        new_account: false,
    }
}

fn store_halt(e: StoreError) -> Halt {
    retry(format!("store: {e}"))
}

const MAX_PAUSE: Duration = Duration::from_secs(300);

/// Drives order `id` until it ends (or the task is aborted at shutdown).
pub(super) async fn drive(state: Arc<AppState>, id: i64) {
    let mut pause = Duration::from_secs(1);
    let mut new_account = false;
    loop {
        match run(&state, id, new_account).await {
            Ok(()) => break,
            Err(Halt::Retry {
                why,
                wait,
                new_account: fresh,
            }) => {
                new_account = fresh;
                let wait = wait.unwrap_or(pause).min(MAX_PAUSE);
                tracing::warn!(order = id, reason = %why, wait_s = wait.as_secs(), "ACME order paused; retrying");
                // A cancellation ends the pause: the next run sees the cancelled operation.
                let signal = state.store.acme_order(id).await.ok().flatten().map(|r| {
                    state
                        .acme
                        .cancel_signal(&(r.vault_id, r.cert_key, r.version))
                });
                match signal {
                    Some(sig) => {
                        tokio::select! {
                            () = tokio::time::sleep(wait) => {}
                            () = sig.notified() => {}
                        }
                    }
                    None => tokio::time::sleep(wait).await,
                }
                pause = (pause * 2).min(MAX_PAUSE);
            }
        }
    }
    if let Ok(mut t) = state.acme.tasks.lock() {
        t.remove(&id);
    }
}

/// The DNS side of an order.
enum Publisher {
    /// certvault adds and removes the records (RFC 2136 + TSIG).
    Rfc2136(certvault_dns::Rfc2136),
    /// The user adds them after an event; certvault checks the authoritative servers.
    Notify(Notify),
}

/// The publishers of an issuer: the default one and one per DNS suffix.
struct Publishers {
    /// `(suffix, publisher)`; `None` is the default.
    list: Vec<(Option<String>, Publisher)>,
}

impl Publishers {
    fn of(
        cfg: &AcmeIssuer,
        state: &Arc<AppState>,
        vault: &str,
        object: &str,
    ) -> Result<Self, String> {
        let mut list = Vec::new();
        for (suffix, dns, secret) in cfg.dns_settings() {
            let p = Publisher::of(dns, secret, state, vault, object.to_owned()).map_err(|e| {
                match suffix {
                    Some(x) => format!("{e} (names under {x})"),
                    None => e,
                }
            })?;
            list.push((suffix.map(str::to_owned), p));
        }
        Ok(Self { list })
    }

    /// The publisher for a record: the longest suffix its domain is under, else the default.
    fn for_record(&self, r: &TxtRecord) -> Option<&Publisher> {
        let domain = r
            .identifier
            .trim_start_matches("*.")
            .trim_end_matches('.')
            .to_ascii_lowercase();
        let under = |x: &str| domain == x || domain.ends_with(&format!(".{x}"));
        self.list
            .iter()
            .filter(|(s, _)| s.as_deref().is_some_and(under))
            .max_by_key(|(s, _)| s.as_ref().map_or(0, String::len))
            .or_else(|| self.list.iter().find(|(s, _)| s.is_none()))
            .map(|(_, p)| p)
    }

    async fn publish(&self, r: &TxtRecord) -> Result<(), String> {
        match self.for_record(r) {
            Some(p) => p.publish(r).await,
            None => Err("no DNS settings".into()),
        }
    }

    async fn unpublish(&self, r: &TxtRecord) -> Result<(), String> {
        match self.for_record(r) {
            Some(p) => p.unpublish(r).await,
            None => Err("no DNS settings".into()),
        }
    }

    /// Announces the records, then waits until every authoritative server serves them (marking
    /// each published), or the window passes.
    async fn wait(&self, st: &mut OrderState, run: &Run<'_>) -> Result<(), AcmeError> {
        let records = st.to_publish();
        let mut window = Duration::ZERO;
        let mut changed = false;
        for r in &records {
            if let Some(n) = self.notify_for(r) {
                window = window.max(n.window);
                // Once per record, also across restarts (the list is persisted with the state;
                // the outbox's once-only key covers a crash right after the event).
                let key = format!("{} {}", r.name, r.value);
                if !st.notified.contains(&key) {
                    n.event("cert_domain_validation_required", r, None).await;
                    st.notified.push(key);
                    changed = true;
                }
            }
        }
        // The window starts when the user is first told and survives restarts.
        let until_ts = match st.validation_deadline {
            Some(t) => t,
            None => {
                changed = true;
                let t = run.state.clock.now() + i64::try_from(window.as_secs()).unwrap_or(600);
                st.validation_deadline = Some(t);
                t
            }
        };
        if changed && run.save(st, None).await.is_err() {
            return Err(AcmeError::Network("the store is unavailable".into()));
        }
        let until = time::OffsetDateTime::from_unix_timestamp(until_ts)
            .ok()
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_else(|| until_ts.to_string());
        let mut last = String::new();
        loop {
            let acknowledged = run
                .state
                .store
                .acme_order(run.rec.id)
                .await
                .ok()
                .flatten()
                .is_some_and(|o| o.acknowledged);
            if acknowledged {
                // The user says the records are in place: let the CA look.
                for r in st.to_publish() {
                    st.mark_published(&r);
                }
                if run.save(st, None).await.is_err() {
                    return Err(AcmeError::Network("the store is unavailable".into()));
                }
                return Ok(());
            }
            for r in st.to_publish() {
                let Some(n) = self.notify_for(&r) else {
                    continue;
                };
                // Bounded, so that a slow DNS answer never holds the window open.
                let checked = tokio::time::timeout(Duration::from_secs(10), n.check(&r))
                    .await
                    .unwrap_or_else(|_| Err("no answer within 10 s".into()));
                match checked {
                    Ok((true, _)) => {
                        st.mark_published(&r);
                        if run.save(st, None).await.is_err() {
                            return Err(AcmeError::Network("the store is unavailable".into()));
                        }
                    }
                    Ok((false, summary)) => last = format!("{}: {summary}", r.name),
                    Err(e) => last = format!("{}: {e}", r.name),
                }
            }
            let left = st.to_publish();
            if left.is_empty() {
                return Ok(());
            }
            if run.state.clock.now() > until_ts {
                return Err(AcmeError::Invalid(format!(
                    "the DNS-01 TXT records were not visible on the zone's authoritative servers within {} s, by {until} ({last})",
                    window.as_secs()
                )));
            }
            let wanted: Vec<String> = left
                .iter()
                .map(|r| format!("{} TXT \"{}\"", r.name, r.value))
                .collect();
            let details = format!(
                "ACME order created; waiting for the DNS-01 TXT records (create them; checked on the zone's authoritative servers until {until}): {}.",
                wanted.join("; ")
            );
            if run.save(st, Some(details)).await.is_err() {
                return Err(AcmeError::Network("the store is unavailable".into()));
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    fn notify_for(&self, r: &TxtRecord) -> Option<&Notify> {
        match self.for_record(r) {
            Some(Publisher::Notify(n)) => Some(n),
            _ => None,
        }
    }
}

struct Notify {
    state: Arc<AppState>,
    vault: String,
    object: String,
    zone: Option<String>,
    servers: Option<Vec<String>>,
    window: Duration,
}

/// The notify mode's default window for the records to appear.
const NOTIFY_WINDOW: Duration = Duration::from_secs(600);

impl Publisher {
    fn of(
        dns: &config::DnsPublic,
        secret: Option<&str>,
        state: &Arc<AppState>,
        vault: &str,
        object: String,
    ) -> Result<Self, String> {
        if let Some(p) = config::rfc2136_of(dns, secret)? {
            return Ok(Self::Rfc2136(p));
        }
        match dns.mode.as_str() {
            "notify" => Ok(Self::Notify(Notify {
                state: state.clone(),
                vault: vault.to_owned(),
                object,
                zone: dns.zone.clone(),
                servers: dns.nameservers.clone(),
                window: dns
                    .window_seconds
                    .map_or(NOTIFY_WINDOW, Duration::from_secs),
            })),
            m => Err(format!("DNS-01 mode '{m}' is not supported")),
        }
    }

    async fn publish(&self, r: &TxtRecord) -> Result<(), String> {
        match self {
            Self::Rfc2136(d) => d
                .append_txt(&r.name, &r.value, 60)
                .await
                .map_err(|e| e.to_string()),
            Self::Notify(_) => Ok(()),
        }
    }

    async fn unpublish(&self, r: &TxtRecord) -> Result<(), String> {
        match self {
            Self::Rfc2136(d) => d
                .remove_txt(&r.name, &r.value)
                .await
                .map_err(|e| e.to_string()),
            Self::Notify(n) => {
                n.event(
                    "cert_domain_validation_completed",
                    r,
                    Some("The domain validation is over: remove this TXT record."),
                )
                .await;
                Ok(())
            }
        }
    }
}

impl Notify {
    async fn event(&self, event_type: &str, r: &TxtRecord, message: Option<&str>) {
        let mut payload = json!({
            "event_type": event_type,
            "version": "1",
            "certificate_id": self.object,
            "domain": r.identifier,
            "txt_record_name": r.name,
            "txt_record_val": r.value,
        });
        if let Some(m) = message {
            payload["message"] = json!(m);
        }
        super::emit_event(&self.state, &self.vault, &self.object, event_type, payload).await;
    }

    async fn check(&self, r: &TxtRecord) -> Result<(bool, String), String> {
        let zone = match &self.zone {
            Some(z) => z.clone(),
            None => certvault_dns::find_zone(&r.name, None)
                .await
                .map_err(|e| e.to_string())?,
        };
        let servers = match &self.servers {
            Some(s) => certvault_dns::NameServers::Explicit(s.clone()),
            None => certvault_dns::NameServers::default(),
        };
        let check =
            certvault_dns::AuthoritativeCheck::new(&zone, servers).map_err(|e| e.to_string())?;
        let report = check
            .check_txt(&r.name, &r.value)
            .await
            .map_err(|e| e.to_string())?;
        Ok((report.all_present(), report.pending_summary()))
    }
}

/// Removes every record the order published (best effort; failures are logged).
async fn unpublish_all(st: &mut OrderState, publisher: &Publishers) {
    for rec in st.published_records() {
        match publisher.unpublish(&rec).await {
            Ok(()) => {
                for a in &mut st.authorizations {
                    if a.txt_name == rec.name && a.txt_value == rec.value {
                        a.published = false;
                    }
                }
            }
            Err(e) => {
                tracing::warn!(record = %rec.name, error = %e, "could not remove an ACME TXT record");
            }
        }
    }
}

/// Everything a run works with.
struct Run<'a> {
    state: &'a Arc<AppState>,
    rec: AcmeOrderRecord,
    vault: Arc<VaultCtx>,
    cert: CertRecord,
}

impl Run<'_> {
    fn object(&self) -> String {
        format!("certificates/{}/{}", self.cert.name, self.rec.version)
    }

    async fn save(&self, st: &OrderState, details: Option<String>) -> Result<(), Halt> {
        let json = serde_json::to_string(st).map_err(|e| retry(e.to_string()))?;
        self.state
            .store
            .save_acme_order(
                self.rec.id,
                json,
                details.map(|d| (self.cert.id, d)),
                self.state.clock.now(),
            )
            .await
            .map_err(store_halt)
    }

    async fn end(&self, status: &str, st: Option<&OrderState>) -> Result<(), Halt> {
        let json = st.and_then(|s| serde_json::to_string(s).ok());
        self.state
            .store
            .end_acme_order(self.rec.id, status, json, self.state.clock.now())
            .await
            .map_err(store_halt)?;
        let key = (
            self.rec.vault_id,
            self.rec.cert_key.clone(),
            self.rec.version.clone(),
        );
        self.state.acme.forget(self.rec.id, &key);
        Ok(())
    }

    async fn audit(
        &self,
        operation: &str,
        outcome: crate::audit::Outcome,
        detail: serde_json::Value,
    ) {
        if let Err(e) = self
            .state
            .auditor
            .system(
                operation,
                Some(&self.vault.vault.name),
                Some(&self.object()),
                outcome,
                Some(detail),
            )
            .await
        {
            tracing::error!(error = %e, operation, "an ACME order event could not be recorded in the audit trail");
        }
    }

    /// Fails the operation with `error` (`{"code","message",…}`) and ends the order.
    async fn fail(
        &self,
        st: Option<&OrderState>,
        details: String,
        error: serde_json::Value,
    ) -> Result<(), Halt> {
        // The event and the audit record come first: a client that sees the operation failed
        // finds the `order_failed` event already there. (A crash in between replays the
        // failure; the event's idempotency key keeps notifications single.)
        self.audit(
            "certificates.acme.order-failed",
            crate::audit::Outcome::Error,
            json!({"reason": details, "error": error}),
        )
        .await;
        super::emit_event(
            self.state,
            &self.vault.vault.name,
            &self.object(),
            "order_failed",
            json!({"certificate": self.cert.name, "version": self.rec.version, "reason": details}),
        )
        .await;
        match self
            .state
            .store
            .finish_operation(
                self.cert.id,
                "failed",
                details.clone(),
                Some(error.to_string()),
                false,
                self.state.clock.now(),
            )
            .await
        {
            Ok(_) | Err(StoreError::Conflict(_)) | Err(StoreError::NotFound) => {}
            Err(e) => return Err(store_halt(e)),
        }
        self.end("failed", st).await?;
        Ok(())
    }

    async fn fail_plain(&self, st: Option<&OrderState>, message: String) -> Result<(), Halt> {
        self.fail(
            st,
            format!("The ACME order failed: {message}"),
            json!({"code": "AcmeOrderFailed", "message": message}),
        )
        .await
    }
}

fn problem_error(e: &AcmeError) -> (String, serde_json::Value) {
    match e.problem() {
        Some(p) => {
            let code = if p.problem_type.is_empty() {
                "AcmeOrderFailed".to_owned()
            } else {
                p.problem_type.clone()
            };
            (
                format!("The ACME CA refused the order: {p}"),
                json!({"code": code, "message": p.detail, "innererror": {"code": p.short_type()}}),
            )
        }
        None => (
            format!("The ACME order failed: {e}"),
            json!({"code": "AcmeOrderFailed", "message": e.to_string()}),
        ),
    }
}

fn account_aad(vault_id: i64, issuer_key: &str, fingerprint: &str) -> Vec<u8> {
    format!("certvault/acme-account/v1/{vault_id}/{issuer_key}/{fingerprint}").into_bytes()
}

/// The issuer's account client: cached, else loaded from its sealed credentials, else
/// registered (once: concurrent orders wait for the first registration).
pub(super) async fn account(
    state: &Arc<AppState>,
    vault: &VaultCtx,
    issuer_key: &str,
    cfg: &AcmeIssuer,
    fresh: bool,
) -> Result<AcmeClient, AcmeError> {
    let fp = cfg.fingerprint();
    let key = (vault.vault.id, issuer_key.to_owned(), fp.clone());
    let cached = || {
        state
            .acme
            .clients
            .lock()
            .ok()
            .and_then(|m| m.get(&key).cloned())
    };
    if !fresh && let Some(c) = cached() {
        return Ok(c);
    }
    let _one = state.acme.account_lock.lock().await;
    if !fresh && let Some(c) = cached() {
        return Ok(c);
    }
    let aad = account_aad(vault.vault.id, issuer_key, &fp);
    let internal = |what: &str| AcmeError::Credentials(what.to_owned());
    let stored = if fresh {
        None
    } else {
        state
            .store
            .acme_account(vault.vault.id, issuer_key, &fp)
            .await
            .map_err(|_| AcmeError::Network("the store is unavailable".into()))?
    };
    let client = match stored {
        Some(acc) => {
            let json = certvault_crypto::open_object(&vault.key, &aad, &acc.sealed)
                .map_err(|_| internal("cannot be opened with the vault key"))?;
            let json = std::str::from_utf8(&json).map_err(|_| internal("not text"))?;
            let creds = AccountCredentials::from_json(json)?;
            AcmeClient::from_credentials(&creds, &cfg.roots(), RetryConfig::default()).await?
        }
        None => {
            let mut ac = AccountConfig::new(cfg.public.directory_url.clone());
            ac.contact = cfg
                .public
                .email
                .iter()
                .map(|e| format!("mailto:{e}"))
                .collect();
            ac.terms_of_service_agreed = cfg.public.terms_agreed;
            ac.roots = cfg.roots();
            if let (Some(kid), Some(hmac)) = (&cfg.public.eab_kid, &cfg.secrets.eab_hmac_key) {
                ac.eab = Some(certvault_acme::ExternalAccountBinding::new(
                    kid.clone(),
                    hmac,
                )?);
            }
            let (client, creds) = AcmeClient::create_account(&ac, RetryConfig::default()).await?;
            let sealed =
                certvault_crypto::seal_object(&vault.key, &aad, creds.to_json().as_bytes())
                    .map_err(|_| internal("cannot be sealed"))?;
            state
                .store
                .put_acme_account(AcmeAccountRecord {
                    vault_id: vault.vault.id,
                    issuer_key: issuer_key.to_owned(),
                    fingerprint: fp.clone(),
                    account_url: client.account_url().to_owned(),
                    sealed,
                    created: state.clock.now(),
                })
                .await
                .map_err(|_| AcmeError::Network("the store is unavailable".into()))?;
            client
        }
    };
    if let Ok(mut m) = state.acme.clients.lock() {
        m.insert(key, client.clone());
    }
    Ok(client)
}

fn names(st: &OrderState) -> String {
    st.request.identifiers.join(", ")
}

/// The operation's status details after a step.
fn details_after(st: &OrderState) -> String {
    let ids = names(st);
    match st.next_step() {
        Step::CreateOrder => format!("Creating the ACME order for {ids}."),
        Step::FetchChallenges => {
            format!("ACME order created for {ids}; fetching its authorizations.")
        }
        Step::Publish => {
            let pending: Vec<String> = st.to_publish().into_iter().map(|r| r.name).collect();
            format!(
                "ACME order created; publishing DNS-01 TXT records: {}.",
                pending.join(", ")
            )
        }
        Step::SubmitChallenges => {
            format!(
                "ACME order created; DNS-01 TXT records published; asking the CA to validate {ids}."
            )
        }
        Step::PollAuthorizations => {
            format!("ACME order created; waiting for the CA to validate {ids} (DNS-01).")
        }
        Step::Finalize => format!("ACME order created; {ids} validated; sending the CSR."),
        Step::Download => {
            "ACME order created and finalized; waiting for the CA to issue the certificate.".into()
        }
        _ => "The ACME order ended.".into(),
    }
}

/// One attempt at running order `id` to its end.
/// Claims or extends this process's lease of order `id` (see `certvault_store`'s
/// `claim_acme_order`); whether it holds the order.
pub(super) async fn holds_lease(state: &Arc<AppState>, id: i64) -> Result<bool, StoreError> {
    state
        .store
        .claim_acme_order(
            id,
            &state.lifecycle.owner,
            state.clock.now(),
            state.lifecycle.settings.lease,
        )
        .await
}

async fn run(state: &Arc<AppState>, id: i64, fresh_account: bool) -> Result<(), Halt> {
    let store = &state.store;
    let Some(rec) = store.acme_order(id).await.map_err(store_halt)? else {
        return Ok(());
    };
    if rec.status != "active" {
        return Ok(());
    }
    // One replica drives an order: the one holding its lease.
    if !holds_lease(state, id).await.map_err(store_halt)? {
        tracing::debug!(order = id, "another replica drives this ACME order");
        return Ok(());
    }
    let key = (rec.vault_id, rec.cert_key.clone(), rec.version.clone());
    let cancel = state.acme.cancel_signal(&key);
    let now = state.clock.now();
    let vault = match state.vault(&rec.vault_key).await {
        Ok(v) => v,
        Err(e) if e.status == http::StatusCode::NOT_FOUND => {
            store
                .end_acme_order(id, "abandoned", None, now)
                .await
                .map_err(store_halt)?;
            return Ok(());
        }
        Err(e) => return Err(retry(e.message)),
    };
    let Ok(mut st) = serde_json::from_str::<OrderState>(&rec.state) else {
        tracing::error!(order = id, "unreadable ACME order state; order abandoned");
        store
            .end_acme_order(id, "abandoned", None, now)
            .await
            .map_err(store_halt)?;
        return Ok(());
    };
    let found = store
        .cert_version(
            rec.vault_id,
            &rec.cert_key,
            false,
            Which::Version(&rec.version),
        )
        .await
        .map_err(store_halt)?;
    let op = match &found {
        Some((c, _)) => store.operation(c.id).await.map_err(store_halt)?,
        None => None,
    };
    let issuer = store
        .issuer(rec.vault_id, &rec.issuer_key)
        .await
        .map_err(store_halt)?;
    let cfg = issuer
        .as_ref()
        .and_then(|i| config::load(&vault, &rec.issuer_key, &i.body, i.secret.as_deref()).ok());
    let object = format!("certificates/{}/{}", rec.cert_key, rec.version);
    let publisher = cfg
        .as_ref()
        .and_then(|c| Publishers::of(c, state, &vault.vault.name, &object).ok());

    let (cert, version, op) = match (found, op) {
        (Some((c, v)), Some(op)) if op.version == rec.version && op.status == "inProgress" => {
            (c, v, op)
        }
        (_, op) => {
            // The operation was cancelled, deleted or replaced (or never stored): stop the
            // order at the CA and remove what it published.
            if let (Some(cfg), Some(p)) = (&cfg, &publisher) {
                // Only an order that exists at the CA needs the account (a row whose create
                // never completed has none: nothing is registered for it).
                if st.order_url.is_some()
                    && let Ok(client) = account(state, &vault, &rec.issuer_key, cfg, false).await
                    && let Err(e) = client.cancel(&mut st).await
                {
                    tracing::warn!(order = id, error = %e, "could not deactivate the ACME authorizations");
                }
                unpublish_all(&mut st, p).await;
            }
            let status = match op.map(|o| o.status) {
                Some(s) if s == "cancelled" => "cancelled",
                _ => "abandoned",
            };
            store
                .end_acme_order(
                    id,
                    status,
                    serde_json::to_string(&st).ok(),
                    state.clock.now(),
                )
                .await
                .map_err(store_halt)?;
            state.acme.forget(id, &key);
            return Ok(());
        }
    };
    let run = Run {
        state,
        rec,
        vault: vault.clone(),
        cert,
    };
    let Some(cfg) = cfg else {
        return run
            .fail_plain(
                Some(&st),
                "the ACME issuer was deleted or its settings are unreadable".into(),
            )
            .await;
    };
    let publisher = match Publishers::of(&cfg, state, &vault.vault.name, &object) {
        Ok(p) => p,
        Err(e) => return run.fail_plain(Some(&st), e).await,
    };
    let Some(csr) = op.csr.clone() else {
        return run
            .fail_plain(Some(&st), "the operation has no CSR".into())
            .await;
    };
    let client = match account(state, &vault, &run.rec.issuer_key, &cfg, fresh_account).await {
        Ok(c) => c,
        Err(e) if e.is_transient() => {
            return Err(Halt::Retry {
                why: e.to_string(),
                wait: e.retry_after(),
                new_account: fresh_account,
            });
        }
        Err(e) => {
            let (details, error) = problem_error(&e);
            return run.fail(Some(&st), details, error).await;
        }
    };

    loop {
        let step = st.next_step();
        if step == Step::Failed {
            unpublish_all(&mut st, &publisher).await;
            let e = AcmeError::Ca(st.error.clone().unwrap_or(certvault_acme::CaProblem {
                problem_type: String::new(),
                detail: format!("the order is {:?}", st.status),
                status: None,
                subproblems: Vec::new(),
                retry_after: None,
            }));
            let (details, error) = problem_error(&e);
            return run.fail(Some(&st), details, error).await;
        }
        // Before every step that talks to the CA or the DNS: still ours? (A replica that
        // stalled past its lease lost the order to another and must not post for it.)
        if !holds_lease(state, id).await.map_err(store_halt)? {
            tracing::warn!(
                order = id,
                "the lease of this ACME order passed to another replica; stopping here"
            );
            return Ok(());
        }
        let outcome = tokio::select! {
            r = one_step(&client, &mut st, step, &publisher, &csr, &cfg, &run) => Some(r),
            () = cancel.notified() => None,
        };
        let Some(outcome) = outcome else {
            return cancelled(&run, &client, &mut st, &publisher).await;
        };
        match outcome {
            Ok(Some(chain)) => {
                return complete(&run, &mut st, &publisher, chain, &version.spki).await;
            }
            Ok(None) => run.save(&st, Some(details_after(&st))).await?,
            Err(e) => {
                let busy = e.problem().is_some_and(|p| {
                    p.is("rateLimited") || p.is("badNonce") || p.status.is_some_and(|s| s >= 500)
                });
                if step == Step::CreateOrder && st.request.replaces.is_some() && !busy {
                    // `replaces` is a hint: a CA that refuses it (alreadyReplaced, an unknown
                    // certificate) or does not reflect it still gets the order, without it.
                    tracing::warn!(order = run.rec.id, error = %e, "the CA did not take the order's `replaces`; ordering without it");
                    st.request.replaces = None;
                    run.save(&st, None).await?;
                    return Err(Halt::Retry {
                        why: "ordering again without `replaces`".into(),
                        wait: Some(Duration::from_millis(100)),
                        new_account: false,
                    });
                }
                run.save(&st, None).await?;
                if let Some(p) = e.problem()
                    && p.is("accountDoesNotExist")
                {
                    // The CA forgot the account (pebble does on restart): the order went with
                    // it. Register again and start a new order.
                    unpublish_all(&mut st, &publisher).await;
                    let fresh = OrderState::new(st.request.clone());
                    run.save(&fresh, Some(details_after(&fresh))).await?;
                    return Err(Halt::Retry {
                        why: "the CA no longer knows the account; registering again".into(),
                        wait: Some(Duration::from_millis(100)),
                        new_account: true,
                    });
                }
                if st.status == OrderStatus::Invalid || !e.is_transient() {
                    unpublish_all(&mut st, &publisher).await;
                    let (details, error) = problem_error(&e);
                    return run.fail(Some(&st), details, error).await;
                }
                return Err(Halt::Retry {
                    why: e.to_string(),
                    wait: e.retry_after(),
                    new_account: false,
                });
            }
        }
    }
}

/// Runs one step; `Some(chain)` when the certificate was downloaded.
async fn one_step(
    client: &AcmeClient,
    st: &mut OrderState,
    step: Step,
    publisher: &Publishers,
    csr: &[u8],
    cfg: &AcmeIssuer,
    run: &Run<'_>,
) -> Result<Option<certvault_acme::CertificateChain>, AcmeError> {
    match step {
        Step::CreateOrder => client.new_order(st).await?,
        Step::FetchChallenges => client.fetch_challenges(st).await?,
        Step::Publish => {
            // Records certvault publishes itself first; then those the user sets (notify).
            for rec in st.to_publish() {
                if publisher.notify_for(&rec).is_some() {
                    continue;
                }
                let mut tries = 0;
                loop {
                    match publisher.publish(&rec).await {
                        Ok(()) => break,
                        Err(e) if tries < 3 => {
                            tries += 1;
                            tracing::warn!(record = %rec.name, error = %e, "DNS update failed; retrying");
                            tokio::time::sleep(Duration::from_secs(2)).await;
                        }
                        Err(e) => {
                            return Err(AcmeError::Invalid(format!(
                                "publishing the TXT record {}: {e}",
                                rec.name
                            )));
                        }
                    }
                }
                st.mark_published(&rec);
                if run.save(st, None).await.is_err() {
                    return Err(AcmeError::Network("the store is unavailable".into()));
                }
            }
            if !st.to_publish().is_empty() {
                publisher.wait(st, run).await?;
            }
        }
        Step::SubmitChallenges => client.submit_challenges(st).await?,
        Step::PollAuthorizations => client.poll_authorizations(st).await?,
        Step::Finalize => client.finalize(st, csr).await?,
        Step::Download => {
            return client
                .download(st, cfg.public.preferred_chain.as_deref())
                .await
                .map(Some);
        }
        _ => {}
    }
    Ok(None)
}

async fn complete(
    run: &Run<'_>,
    st: &mut OrderState,
    publisher: &Publishers,
    chain: certvault_acme::CertificateChain,
    spki: &[u8],
) -> Result<(), Halt> {
    run.save(st, None).await?;
    unpublish_all(st, publisher).await;
    let Some((leaf, rest)) = chain.der.split_first() else {
        return run
            .fail_plain(Some(st), "the CA sent an empty chain".into())
            .await;
    };
    let info = match certvault_crypto::parse_certificate(leaf) {
        Ok(i) => i,
        Err(e) => {
            return run
                .fail_plain(Some(st), format!("the CA's certificate is unreadable: {e}"))
                .await;
        }
    };
    if info.public_key.spki_der() != spki {
        return run
            .fail_plain(
                Some(st),
                "the CA's certificate does not carry this certificate's key".into(),
            )
            .await;
    }
    let done = run
        .state
        .store
        .complete_version(
            run.cert.id,
            &run.rec.version,
            leaf.clone(),
            rest.to_vec(),
            VersionUpdate {
                enabled: Some(run.rec.enabled),
                nbf: Some(Some(info.not_before)),
                exp: Some(Some(info.not_after)),
                tags: None,
            },
            "Certificate issued by the ACME CA.".into(),
            run.state.clock.now(),
        )
        .await;
    match done {
        Ok(_) => {}
        // Cancelled or deleted while downloading: the certificate is dropped.
        Err(StoreError::Conflict(_)) | Err(StoreError::NotFound) => {
            return run.end("cancelled", Some(st)).await;
        }
        Err(e) => return Err(store_halt(e)),
    }
    run.end("completed", Some(st)).await?;
    run.audit(
        "certificates.acme.issued",
        crate::audit::Outcome::Ok,
        json!({"names": st.request.identifiers, "order": st.order_url, "serial": info.serial_hex}),
    )
    .await;
    Ok(())
}

async fn cancelled(
    run: &Run<'_>,
    client: &AcmeClient,
    st: &mut OrderState,
    publisher: &Publishers,
) -> Result<(), Halt> {
    if let Err(e) = client.cancel(st).await {
        tracing::warn!(order = run.rec.id, error = %e, "could not deactivate the ACME authorizations");
    }
    unpublish_all(st, publisher).await;
    run.end("cancelled", Some(st)).await?;
    run.audit(
        "certificates.acme.cancelled",
        crate::audit::Outcome::Ok,
        json!({"names": st.request.identifiers, "order": st.order_url}),
    )
    .await;
    Ok(())
}
