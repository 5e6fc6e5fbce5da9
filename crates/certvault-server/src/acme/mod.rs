//! ACME ordering in the server: the `acme` issuer provider ([`config`]), the create hook used
//! by `POST /certificates/{n}/create` ([`prepare`], [`Plan::insert`], [`start`]), and the order
//! driver ([`driver`]): one tokio task per order, its [`certvault_acme::OrderState`] persisted
//! after every step, resumed at server start ([`resume_all`]), stopped by a cancellation.

pub mod config;
mod driver;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use certvault_acme::{AcmeClient, OrderRequest, OrderState};
use certvault_core::policy::Policy;
use certvault_store::{AcmeOrderRecord, IssuerRecord};

pub use config::{PROVIDER, is_acme};

use crate::error::{ApiError, ApiResult};
use crate::kv::Ctx;
use crate::state::AppState;

/// Running order tasks, cancellation signals and cached account clients. Lives in
/// [`AppState`].
#[derive(Default)]
pub struct AcmeRuntime {
    tasks: Mutex<HashMap<i64, tokio::task::JoinHandle<()>>>,
    cancels: Mutex<HashMap<(i64, String, String), Arc<tokio::sync::Notify>>>,
    clients: Mutex<HashMap<(i64, String, String), AcmeClient>>,
    account_lock: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for AcmeRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.tasks.lock().map(|t| t.len()).unwrap_or(0);
        f.debug_struct("AcmeRuntime").field("tasks", &n).finish()
    }
}

impl AcmeRuntime {
    /// Stops every order task (server shutdown). Their state is persisted; the next start (or
    /// another replica, once the shutdown released the leases) resumes them.
    pub fn shutdown(&self) {
        if let Ok(mut t) = self.tasks.lock() {
            for (_, h) in t.drain() {
                h.abort();
            }
        }
    }

    fn cancel_signal(&self, key: &(i64, String, String)) -> Arc<tokio::sync::Notify> {
        match self.cancels.lock() {
            Ok(mut m) => m.entry(key.clone()).or_default().clone(),
            Err(_) => Arc::new(tokio::sync::Notify::new()),
        }
    }

    fn forget(&self, id: i64, key: &(i64, String, String)) {
        if let Ok(mut t) = self.tasks.lock() {
            t.remove(&id);
        }
        if let Ok(mut m) = self.cancels.lock() {
            m.remove(key);
        }
    }
}

/// Tells a running order of (vault, certificate, version) that its operation was cancelled or
/// deleted; the driver deactivates the authorizations and removes the published records.
///
/// Only a driver that is running holds a signal; one that is not reads the operation's status
/// when it (re)starts, so nothing is registered for other issuers' operations.
pub fn cancel_requested(state: &Arc<AppState>, vault_id: i64, cert_key: &str, version: &str) {
    let key = (vault_id, cert_key.to_owned(), version.to_owned());
    if let Ok(m) = state.acme.cancels.lock()
        && let Some(n) = m.get(&key)
    {
        n.notify_one();
    }
}

/// What a create with an ACME issuer orders.
#[derive(Debug)]
pub struct Plan {
    issuer_key: String,
    issuer_name: String,
    /// The DNS names ordered (the CSR's SANs must be exactly these).
    pub identifiers: Vec<String>,
    /// The ARI certificate id of the version this order replaces (RFC 9773 `replaces`), set
    /// for renewals when the CA offers renewalInfo and knows the previous certificate.
    pub replaces: Option<String>,
}

fn valid_dns_name(n: &str) -> bool {
    let body = n.strip_prefix("*.").unwrap_or(n);
    !body.is_empty()
        && body.len() <= 253
        && body.contains('.')
        && body.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// The CN of a subject like `CN=www.example.com, O=…` (case-insensitive attribute name).
fn subject_cn(subject: &str) -> Option<String> {
    subject.split([',', '+']).find_map(|part| {
        let (k, v) = part.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("cn")
            .then(|| v.trim().trim_matches('"').to_owned())
    })
}

/// Checks that `policy` can be ordered from the ACME issuer `issuer` and returns the plan.
/// Bad input is a 400 and nothing is written.
pub fn prepare(ctx: &Ctx<'_>, policy: &Policy, issuer: &IssuerRecord) -> ApiResult<Plan> {
    if !issuer.enabled {
        return Err(ApiError::bad(format!(
            "The issuer '{}' is disabled.",
            issuer.name
        )));
    }
    let issuer_key = issuer.name.to_ascii_lowercase();
    // The settings must be readable (and complete) before anything is stored.
    config::load(
        &ctx.vault,
        &issuer_key,
        &issuer.body,
        issuer.secret.as_deref(),
    )?;
    let sans = policy.sans();
    if sans.emails.as_ref().is_some_and(|v| !v.is_empty())
        || sans.upns.as_ref().is_some_and(|v| !v.is_empty())
        || sans.uris.as_ref().is_some_and(|v| !v.is_empty())
        || sans.ip_addresses.as_ref().is_some_and(|v| !v.is_empty())
    {
        return Err(ApiError::bad(
            "An ACME issuer validates DNS names only (DNS-01): the policy may hold no e-mail, UPN, URI or IP address SANs.",
        ));
    }
    let mut identifiers: Vec<String> = Vec::new();
    let mut add = |n: &str| {
        let n = n.trim().trim_end_matches('.').to_ascii_lowercase();
        if !identifiers.contains(&n) {
            identifiers.push(n);
        }
    };
    for n in sans.dns_names.iter().flatten() {
        add(n);
    }
    if let Some(cn) = subject_cn(policy.subject())
        && valid_dns_name(&cn.to_ascii_lowercase())
    {
        add(&cn);
    }
    if identifiers.is_empty() {
        return Err(ApiError::bad(
            "An ACME issuer needs at least one DNS name (sans.dns_names, or a DNS name as the subject's CN).",
        ));
    }
    if identifiers.len() > 100 {
        return Err(ApiError::bad(
            "At most 100 DNS names can be ordered at once.",
        ));
    }
    if let Some(bad) = identifiers.iter().find(|n| !valid_dns_name(n)) {
        return Err(ApiError::bad(format!(
            "'{}' is not a DNS name an ACME CA can validate (a wildcard only as the left-most label).",
            certvault_core::names::truncate(bad, 80)
        )));
    }
    if policy.is_ca() {
        return Err(ApiError::bad(
            "An ACME CA does not issue CA certificates (basic_constraints.ca must be false).",
        ));
    }
    Ok(Plan {
        issuer_key,
        issuer_name: issuer.name.clone(),
        identifiers,
        replaces: None,
    })
}

impl Plan {
    /// The operation's first status details.
    pub fn status_details(&self) -> String {
        format!(
            "Pending certificate created. Ordering from the ACME CA of issuer '{}' for {}: creating the order.",
            self.issuer_name,
            self.identifiers.join(", ")
        )
    }

    /// Stores the order (before the pending version; see `certvault_store::acme`).
    pub async fn insert(
        &self,
        ctx: &Ctx<'_>,
        cert_key: &str,
        version: &str,
        enabled: bool,
    ) -> ApiResult<AcmeOrderRecord> {
        let issuer = ctx
            .state
            .store
            .issuer(ctx.vault_id(), &self.issuer_key)
            .await?
            .ok_or_else(|| ApiError::bad("The issuer was deleted."))?;
        let cfg = config::load(
            &ctx.vault,
            &self.issuer_key,
            &issuer.body,
            issuer.secret.as_deref(),
        )?;
        let st = OrderState::new(OrderRequest {
            identifiers: self.identifiers.clone(),
            replaces: self.replaces.clone(),
            profile: cfg.public.profile.clone(),
        });
        let rec = AcmeOrderRecord {
            id: 0,
            vault_id: ctx.vault_id(),
            vault_key: ctx.vault.vault.name.to_ascii_lowercase(),
            cert_key: cert_key.to_owned(),
            version: version.to_owned(),
            issuer_key: self.issuer_key.clone(),
            enabled,
            state: serde_json::to_string(&st).map_err(|e| ApiError::internal(&e))?,
            status: "active".into(),
            acknowledged: false,
            created: ctx.now,
            updated: ctx.now,
        };
        Ok(ctx.state.store.insert_acme_order(rec).await?)
    }
}

/// What the CA suggests for renewing one certificate (ACME Renewal Information, RFC 9773),
/// in server-clock seconds.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AriAdvice {
    /// The ARI certificate id (`replaces` of the renewal's order).
    pub cert_id: String,
    /// The suggested window.
    pub window_start: i64,
    /// The suggested window's end.
    pub window_end: i64,
    /// The chosen renewal time: a uniformly random point in the window (now when it passed).
    pub renew_at: i64,
    /// When to ask again (the CA's Retry-After, clamped).
    pub recheck_at: i64,
}

/// Asks the CA of ACME issuer `issuer_name` when to renew `cert_der`. `Ok(None)` when the
/// issuer is not an ACME issuer or its CA offers no renewalInfo (then the lifetime actions
/// rule); an error when the CA could not be asked or does not know the certificate.
pub async fn renewal_info(
    state: &Arc<AppState>,
    vault_key: &str,
    issuer_name: &str,
    cert_der: &[u8],
) -> Result<Option<AriAdvice>, String> {
    let vault = state
        .vault(&vault_key.to_ascii_lowercase())
        .await
        .map_err(|e| e.message)?;
    let issuer_key = issuer_name.to_ascii_lowercase();
    let Some(issuer) = state
        .store
        .issuer(vault.vault.id, &issuer_key)
        .await
        .map_err(|e| e.to_string())?
    else {
        return Ok(None);
    };
    if !is_acme(&issuer.provider) {
        return Ok(None);
    }
    let cfg = config::load(&vault, &issuer_key, &issuer.body, issuer.secret.as_deref())
        .map_err(|e| e.message)?;
    let client = driver::account(state, &vault, &issuer_key, &cfg, false)
        .await
        .map_err(|e| e.to_string())?;
    if client.directory().renewal_info.is_none() {
        return Ok(None);
    }
    let now = state.clock.now();
    let now_t = time::OffsetDateTime::from_unix_timestamp(now).map_err(|e| e.to_string())?;
    // A uniform fraction from 53 random bits.
    let bits = uuid::Uuid::new_v4().as_u128() >> 75;
    let random = bits as f64 / (1u64 << 53) as f64;
    let Some(s) = client
        .renewal_info(cert_der, now_t, random)
        .await
        .map_err(|e| e.to_string())?
    else {
        return Ok(None);
    };
    let cert_id = certvault_acme::ari_cert_id(cert_der).map_err(|e| e.to_string())?;
    Ok(Some(AriAdvice {
        cert_id,
        window_start: s.window_start.unix_timestamp(),
        window_end: s.window_end.unix_timestamp(),
        renew_at: s.renew_at.unix_timestamp(),
        recheck_at: now + i64::try_from(s.recheck_after.as_secs()).unwrap_or(21_600),
    }))
}

/// Removes an order whose create failed before its operation was stored.
pub async fn discard(state: &Arc<AppState>, order: &AcmeOrderRecord) {
    if let Err(e) = state.store.delete_acme_order(order.id).await {
        tracing::warn!(error = %e, "could not remove an unused ACME order row; it will be abandoned at the next start");
    }
}

/// Starts the driver task of an order (no-op when one already runs for it).
pub fn start(state: &Arc<AppState>, order_id: i64) {
    let Ok(mut tasks) = state.acme.tasks.lock() else {
        return;
    };
    if tasks.get(&order_id).is_some_and(|h| !h.is_finished()) {
        return;
    }
    let st = state.clone();
    tasks.insert(
        order_id,
        tokio::spawn(async move { driver::drive(st, order_id).await }),
    );
}

/// Resumes unfinished orders, at start and then for as long as the server runs: every pass
/// extends the leases of the orders this process drives (an order whose lease another replica
/// took is stopped) and claims the active orders no live lease holds — at start an earlier
/// run's, later those of a replica that died (after their lease) — and drives them. With
/// SQLite (one process per database) every active order is this process's.
pub async fn resume_all(state: Arc<AppState>) {
    let lease = state.lifecycle.settings.lease;
    let pause = std::time::Duration::from_secs(u64::try_from(lease / 3).unwrap_or(1).clamp(1, 30));
    let mut first = true;
    // Orders this replica's previous run held (same owner id, kept in the data directory)
    // are free at once rather than after their lease.
    if state.store.shared()
        && let Err(e) = state
            .store
            .release_acme_orders(&state.lifecycle.owner)
            .await
    {
        tracing::warn!(error = %e, "could not release the ACME orders of this replica's previous run");
    }
    loop {
        if state.lifecycle.is_stopping() {
            return;
        }
        let running: Vec<i64> = match state.acme.tasks.lock() {
            Ok(t) => t
                .iter()
                .filter(|(_, h)| !h.is_finished())
                .map(|(id, _)| *id)
                .collect(),
            Err(_) => Vec::new(),
        };
        for id in running {
            if let Ok(false) = driver::holds_lease(&state, id).await
                && let Ok(mut t) = state.acme.tasks.lock()
                && let Some(h) = t.remove(&id)
            {
                tracing::warn!(order = id, "another replica took over this ACME order");
                h.abort();
            }
        }
        match state
            .store
            .claim_acme_orders(&state.lifecycle.owner, state.clock.now(), lease, 256)
            .await
        {
            Ok(orders) => {
                if !orders.is_empty() {
                    if first {
                        tracing::info!(orders = orders.len(), "resuming ACME orders");
                    } else {
                        tracing::info!(
                            orders = orders.len(),
                            "taking over ACME orders whose lease ended"
                        );
                    }
                }
                for id in orders {
                    start(&state, id);
                }
            }
            Err(e) => tracing::error!(error = %e, "could not claim the ACME orders to resume"),
        }
        first = false;
        if !state.store.shared() {
            return;
        }
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = state.lifecycle.stopped() => return,
        }
    }
}

/// Records an ACME event for the user: in the audit trail, and in the outbox, from where the
/// lifecycle engine delivers it to the vault's channels (webhook, Slack) and contacts (e-mail).
/// The domain-validation events carry the IBM seed's fields (`domain`, `txt_record_name`,
/// `txt_record_val`), also at the top level of the webhook payload.
pub async fn emit_event(
    state: &Arc<AppState>,
    vault: &str,
    object: &str,
    event_type: &str,
    payload: serde_json::Value,
) {
    if let Err(e) = state
        .auditor
        .system(
            &format!("certificates.acme.{event_type}"),
            Some(vault),
            Some(object),
            crate::audit::Outcome::Ok,
            Some(payload.clone()),
        )
        .await
    {
        tracing::error!(error = %e, event_type, "an ACME event could not be recorded");
    }
    // The vault's notification channels (and its contacts by e-mail) through the outbox.
    let mut parts = object.splitn(3, '/');
    let (Some("certificates"), Some(name), version) = (parts.next(), parts.next(), parts.next())
    else {
        return;
    };
    let Ok(v) = state.vault(&vault.to_ascii_lowercase()).await else {
        return;
    };
    let Ok(Some(cert)) = state
        .store
        .certificate(v.vault.id, &name.to_ascii_lowercase())
        .await
    else {
        return;
    };
    let field = |k: &str| payload.get(k).and_then(|x| x.as_str()).unwrap_or("");
    let event = certvault_store::NewEvent {
        kind: event_type.to_owned(),
        cert_id: cert.id,
        version: version.map(str::to_owned),
        email: true,
        // once per order, domain and TXT value: a resumed order does not notify twice
        dedup: format!(
            "acme:{event_type}:{}:{}:{}:{}",
            cert.id,
            version.unwrap_or(""),
            field("domain"),
            field("txt_record_val")
        ),
        body: payload,
        created: state.clock.now(),
    };
    match state.store.record_event(event).await {
        Ok(_) => state.lifecycle.wake_all(),
        Err(e) => {
            tracing::error!(error = %e, event_type, "an ACME event could not be queued for delivery")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_names() {
        assert!(valid_dns_name("www.example.test"));
        assert!(valid_dns_name("*.example.test"));
        assert!(!valid_dns_name("*.*.example.test"));
        assert!(!valid_dns_name("www.*.example.test"));
        assert!(!valid_dns_name("localhost"));
        assert!(!valid_dns_name("-a.example.test"));
        assert_eq!(
            subject_cn("CN=www.example.test, O=x").as_deref(),
            Some("www.example.test")
        );
        assert_eq!(subject_cn("O=x"), None);
    }
}
