//! The audit trail: one record per request (and per background action), hash-chained with
//! HMAC-SHA256 under the audit key, written before the response leaves (fail closed).
//!
//! - [`Auditor`] computes the MACs and appends through the store's group commit.
//! - [`target`] names what a request does (operation, vault, object) from its method, path and
//!   host, before the request is routed; [`after_request`] completes the record from the
//!   response and stores it, or replaces the response with a 500 when it cannot.
//! - [`admin`] serves `GET /admin/v1/audit`, `GET /admin/v1/audit/export` and
//!   `POST /admin/v1/audit/verify`.
//!
//! Records never hold secret values, tokens, PINs or key material: only names, the outcome and
//! the Key Vault error code of a failure.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use certvault_core::clock::SharedClock;
use certvault_crypto::SymKey;
use certvault_store::{
    AuditChain, AuditFilter, AuditJournal, AuditMac, AuditRecord, AuditVerification, Durability,
    NewAuditRecord, Store, StoreError, SyncPolicy,
};
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, Uri, header, request::Parts};
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::http::{Body, error_response, json as json_response};
use crate::state::AppState;

/// The principal of background actions.
pub const SYSTEM: &str = "system";

/// Computes the chain's MACs with the audit key.
/// The chain's MAC key, set up once (not per record).
struct HmacChain(certvault_crypto::HmacSha256Key);

impl AuditMac for HmacChain {
    fn record(&self, prev: &[u8], rec: &AuditRecord) -> [u8; 32] {
        self.0.sign(&[prev, &rec.canonical()])
    }

    fn head(&self, seq: i64, mac: &[u8]) -> [u8; 32] {
        self.0
            .sign(&[mac, b"certvault/audit-head/v1\0", &seq.to_be_bytes()])
    }
}

/// How a request or action ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It succeeded.
    Ok,
    /// It was refused (401, 403).
    Denied,
    /// It failed.
    Error,
}

impl Outcome {
    /// The outcome of an HTTP status.
    pub fn of_status(status: u16) -> Self {
        match status {
            401 | 403 => Self::Denied,
            s if s < 400 => Self::Ok,
            _ => Self::Error,
        }
    }

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Denied => "denied",
            Self::Error => "error",
        }
    }
}

/// One record before it is stored.
#[derive(Debug, Clone)]
pub struct Event {
    /// The request id, when a request caused it.
    pub request_id: Option<String>,
    /// Who.
    pub principal: String,
    /// From which address.
    pub source: Option<String>,
    /// Which vault.
    pub vault: Option<String>,
    /// Which object.
    pub object: Option<String>,
    /// What (a stable operation name).
    pub operation: String,
    /// The HTTP status, when a request caused it.
    pub status: Option<u16>,
    /// How it ended.
    pub outcome: Outcome,
    /// Extra facts (never secret values).
    pub detail: Option<Value>,
}

/// Writes and reads the audit trail.
///
/// Once [`Auditor::start`] has run, records go through the store's [`AuditJournal`]: one
/// thread chains every record queued since its last round, makes them durable with one append
/// and one `fdatasync`, and answers each request; they reach the `audit_log` table in large
/// batches afterwards. Queries and verification flush the journal first. Before `start` (tests
/// that build the state by hand), each call appends to `audit_log` directly.
pub struct Auditor {
    store: Store,
    chain: AuditChain,
    clock: SharedClock,
    journal: std::sync::OnceLock<AuditJournal>,
    /// On PostgreSQL, after [`Auditor::start`]: the queue of the task that appends every
    /// record queued meanwhile in one transaction (group append).
    appender: std::sync::OnceLock<tokio::sync::mpsc::UnboundedSender<PendingAppend>>,
    sync: SyncPolicy,
}

/// Records waiting for the PostgreSQL appender, and where their seqs go.
/// The flag: whether the request waits for the records to be on disk (see
/// [`Durability`]); a group commits synchronously when any of its requests does.
type PendingAppend = (
    Vec<NewAuditRecord>,
    bool,
    tokio::sync::oneshot::Sender<Result<Vec<i64>, StoreError>>,
);

/// At most this many records go into one PostgreSQL append transaction.
const PG_APPEND_BATCH: usize = 4096;

/// The PostgreSQL group append: appends are serialised by one advisory lock held until the
/// commit (so the chain stays one chain across connections and replicas), which made one
/// transaction per request the ceiling of every audited request. This task takes everything
/// queued while the previous append ran and appends it in one transaction, then answers each
/// caller with its seqs (or each with the error: the transaction failed as a whole, and every
/// caller fails closed). A group holding only records of requests that changed nothing
/// commits without waiting for its WAL flush (the same policy as the SQLite journal's
/// `Durability::Written`), so the lock is not held through a disk flush for reads.
async fn pg_appender(
    store: Store,
    chain: AuditChain,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<PendingAppend>,
) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        let mut n = batch[0].0.len();
        while n < PG_APPEND_BATCH {
            match rx.try_recv() {
                Ok(p) => {
                    n += p.0.len();
                    batch.push(p);
                }
                Err(_) => break,
            }
        }
        let mut records = Vec::with_capacity(n);
        let mut waiters = Vec::with_capacity(batch.len());
        let mut synchronous = false;
        for (r, sync, tx) in batch {
            waiters.push((r.len(), tx));
            synchronous |= sync;
            records.extend(r);
        }
        let result = match &store {
            Store::Postgres(pg) => {
                pg.append_audit_with(records, chain.clone(), synchronous)
                    .await
            }
            other => other.append_audit(records, chain.clone()).await,
        };
        match result {
            Ok(seqs) => {
                let mut it = seqs.into_iter();
                for (len, tx) in waiters {
                    let _ = tx.send(Ok(it.by_ref().take(len).collect()));
                }
            }
            Err(e) => {
                let msg = e.to_string();
                for (_, tx) in waiters {
                    let _ = tx.send(Err(StoreError::Database(msg.clone())));
                }
            }
        }
    }
}

impl std::fmt::Debug for Auditor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Auditor")
    }
}

impl Auditor {
    /// An auditor writing to `store` with the audit key.
    pub fn new(store: Store, key: SymKey, clock: SharedClock) -> Self {
        Self {
            store,
            chain: Arc::new(HmacChain(certvault_crypto::HmacSha256Key::new(&key))),
            clock,
            journal: std::sync::OnceLock::new(),
            appender: std::sync::OnceLock::new(),
            sync: SyncPolicy::default(),
        }
    }

    /// When records wait for `fdatasync` (before [`Self::start`]).
    pub fn set_sync_policy(&mut self, sync: SyncPolicy) {
        self.sync = sync;
    }

    /// Opens the audit journal (importing what a previous run left in it). Until this has
    /// run, records are appended to the store directly.
    pub async fn start(&self) -> Result<(), StoreError> {
        if self.journal.get().is_some() {
            return Ok(());
        }
        // The journal is a SQLite feature (a file beside the database); on PostgreSQL
        // records are appended to the store directly.
        let Some(sqlite) = self.store.as_sqlite() else {
            if self.appender.get().is_none() {
                let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                if self.appender.set(tx).is_ok() {
                    tokio::spawn(pg_appender(self.store.clone(), self.chain.clone(), rx));
                }
            }
            return Ok(());
        };
        let j = AuditJournal::open_with(sqlite, self.chain.clone(), self.sync).await?;
        let _ = self.journal.set(j);
        Ok(())
    }

    /// Whether the audit journal is open and accepting appends (for `/readyz`). On PostgreSQL
    /// there is no journal (records go to the table directly): always true.
    pub fn is_running(&self) -> bool {
        self.store.as_sqlite().is_none() || self.journal.get().is_some_and(AuditJournal::is_running)
    }

    /// Moves every journaled record into the store and stops the journal.
    pub async fn stop(&self) {
        if let Some(j) = self.journal.get() {
            j.close().await;
        }
    }

    /// Appends events (on disk when this returns). Returns their seqs.
    pub async fn record(&self, events: Vec<Event>) -> Result<Vec<i64>, StoreError> {
        self.record_with(events, Durability::Synced).await
    }

    /// Appends the events of a request that changed nothing: written to the journal when this
    /// returns (a crash of the process loses none), on disk within
    /// `SYNC_INTERVAL` (5 ms) — or at once under
    /// [`SyncPolicy::Always`]. Returns their seqs.
    pub async fn record_read(&self, events: Vec<Event>) -> Result<Vec<i64>, StoreError> {
        self.record_with(events, Durability::Written).await
    }

    async fn record_with(
        &self,
        events: Vec<Event>,
        durability: Durability,
    ) -> Result<Vec<i64>, StoreError> {
        let time = self.clock.now_millis();
        let records = events
            .into_iter()
            .map(|e| NewAuditRecord {
                time,
                request_id: e.request_id,
                principal: e.principal,
                source: e.source,
                vault: e.vault,
                object: e.object,
                operation: e.operation,
                status: e.status.map(i64::from),
                outcome: e.outcome.as_str().to_owned(),
                detail: e.detail.map(|d| d.to_string()),
            })
            .collect();
        if let Some(j) = self.journal.get() {
            return j.append_with(records, durability).await;
        }
        if let Some(q) = self.appender.get() {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let synchronous = durability == Durability::Synced || self.sync == SyncPolicy::Always;
            if q.send((records, synchronous, tx)).is_ok() {
                return rx.await.unwrap_or_else(|_| {
                    Err(StoreError::Database("the audit appender stopped".into()))
                });
            }
            return Err(StoreError::Database("the audit appender stopped".into()));
        }
        self.store.append_audit(records, self.chain.clone()).await
    }

    /// Resolves once every record appended so far is in the `audit_log` table.
    pub async fn flush(&self) -> Result<(), StoreError> {
        match self.journal.get() {
            Some(j) => j.flush().await,
            None => Ok(()),
        }
    }

    /// Records a background action (renewal, order step, notification, scheduled purge) as
    /// principal `system`. Callers that must not act unrecorded treat an error as a failure of
    /// the action.
    pub async fn system(
        &self,
        operation: &str,
        vault: Option<&str>,
        object: Option<&str>,
        outcome: Outcome,
        detail: Option<Value>,
    ) -> Result<i64, StoreError> {
        let seqs = self
            .record(vec![Event {
                request_id: None,
                principal: SYSTEM.to_owned(),
                source: None,
                vault: vault.map(str::to_owned),
                object: object.map(str::to_owned),
                operation: operation.to_owned(),
                status: None,
                outcome,
                detail,
            }])
            .await?;
        seqs.first()
            .copied()
            .ok_or_else(|| StoreError::Database("the audit record was not written".into()))
    }

    /// Records a background action that has already happened and succeeded; a failure to record
    /// it can only be logged.
    pub async fn system_logged(&self, operation: &str, detail: Value) {
        if let Err(e) = self
            .system(operation, None, None, Outcome::Ok, Some(detail))
            .await
        {
            tracing::error!(error = %e, operation, "a background action could not be recorded in the audit trail");
        }
    }

    /// Walks the chain.
    pub async fn verify(&self) -> Result<AuditVerification, StoreError> {
        self.flush().await?;
        self.store.verify_audit(self.chain.clone()).await
    }

    /// Records matching `filter`, up to `limit`.
    pub async fn records(
        &self,
        filter: AuditFilter,
        limit: usize,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        self.flush().await?;
        self.store.audit_records(filter, limit).await
    }
}

// ---------------------------------------------------------------------------------- naming

/// What a request does, named before it is routed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The operation name (e.g. `secrets.get`, `admin.principals.create`, `unknown`).
    pub operation: String,
    /// The vault addressed.
    pub vault: Option<String>,
    /// The object (e.g. `certificates/web`, `admin/principals/bob`).
    pub object: Option<String>,
    /// For creates whose name is in the body: where the response names the new object
    /// (a JSON pointer) and the object prefix it goes under.
    created: Option<(&'static str, String)>,
    /// Whether the object gets the version a handler resolved.
    versioned: bool,
    /// For a request no route knows: its method and path (shortened).
    unknown: Option<String>,
    /// Whether the request may change state (anything but GET, HEAD and the key operations,
    /// which read the key): its record must be on disk before the response leaves. The
    /// records of the others are written before the response and synced within a few
    /// milliseconds (see [`Auditor::record_read`]).
    pub changes_state: bool,
}

/// The Key Vault key operations: POSTs that change nothing.
const KEY_OPERATIONS: [&str; 6] = [
    "keys.sign",
    "keys.verify",
    "keys.encrypt",
    "keys.decrypt",
    "keys.wrapKey",
    "keys.unwrapKey",
];

fn changes_state(method: &Method, operation: &str) -> bool {
    !(method == Method::GET || method == Method::HEAD || KEY_OPERATIONS.contains(&operation))
}

/// The version a Key Vault handler resolved (a request for the latest version names none);
/// handlers put it in the response's extensions and the audit record names it.
#[derive(Debug, Clone)]
pub struct ResolvedVersion(pub String);

/// An object name segment from a path: as the client sent it, at most 127 characters.
fn seg_name(s: &str) -> String {
    certvault_core::names::truncate(s, 127)
}

fn kv_target(method: &Method, path: &str) -> (String, Option<String>, bool) {
    use Method as M;
    let lower = path.to_ascii_lowercase();
    let l: Vec<&str> = lower.trim_start_matches('/').split('/').collect();
    // Key Vault names are case-insensitive: objects are named in lower case.
    let n = |i: usize| seg_name(l.get(i).copied().unwrap_or(""));
    let obj = |kind: &str, i: usize| Some(format!("{kind}/{}", n(i)));
    let ver = |kind: &str| Some(format!("{kind}/{}/{}", n(1), n(2)));
    let (op, object, versioned): (&str, Option<String>, bool) = match (l.as_slice(), method) {
        (["certificates"] | ["certificates", ""], &M::GET) => ("certificates.list", None, false),
        (["certificates", "issuers"] | ["certificates", "issuers", ""], &M::GET) => {
            ("certificates.issuers.list", None, false)
        }
        (["certificates", "issuers", _], m) => {
            let op = match *m {
                M::GET => "certificates.issuers.get",
                M::PUT => "certificates.issuers.set",
                M::PATCH => "certificates.issuers.update",
                M::DELETE => "certificates.issuers.delete",
                _ => "unknown",
            };
            (op, obj("issuers", 2), false)
        }
        (["certificates", "contacts"], m) => {
            let op = match *m {
                M::GET => "certificates.contacts.get",
                M::PUT => "certificates.contacts.set",
                M::DELETE => "certificates.contacts.delete",
                _ => "unknown",
            };
            (op, Some("contacts".into()), false)
        }
        (["certificates", "restore"], &M::POST) => ("certificates.restore", None, false),
        (["certificates", _] | ["certificates", _, ""], &M::GET) => {
            ("certificates.get", obj("certificates", 1), true)
        }
        (["certificates", _] | ["certificates", _, ""], &M::PATCH) => {
            ("certificates.update", obj("certificates", 1), true)
        }
        (["certificates", _], &M::DELETE) => ("certificates.delete", obj("certificates", 1), false),
        (["certificates", _, "versions"], &M::GET) => {
            ("certificates.versions", obj("certificates", 1), false)
        }
        (["certificates", _, "policy"], m) => {
            let op = match *m {
                M::GET => "certificates.policy.get",
                M::PATCH => "certificates.policy.update",
                _ => "unknown",
            };
            (op, obj("certificates", 1), false)
        }
        (["certificates", _, "pending"], m) => {
            let op = match *m {
                M::GET => "certificates.pending.get",
                M::PATCH => "certificates.pending.cancel",
                M::DELETE => "certificates.pending.delete",
                _ => "unknown",
            };
            (op, obj("certificates", 1), false)
        }
        (["certificates", _, "pending", "acknowledge"], &M::POST) => (
            "certificates.pending.acknowledge",
            obj("certificates", 1),
            false,
        ),
        (["certificates", _, "renew"], &M::POST) => {
            ("certificates.renew", obj("certificates", 1), false)
        }
        (["certificates", _, "pending", "merge"], &M::POST) => {
            ("certificates.merge", obj("certificates", 1), false)
        }
        (["certificates", _, "create"], &M::POST) => {
            ("certificates.create", obj("certificates", 1), false)
        }
        (["certificates", _, "import"], &M::POST) => {
            ("certificates.import", obj("certificates", 1), false)
        }
        (["certificates", _, "backup"], &M::POST) => {
            ("certificates.backup", obj("certificates", 1), false)
        }
        (["certificates", _, _], &M::GET) => ("certificates.get", ver("certificates"), false),
        (["certificates", _, _], &M::PATCH) => ("certificates.update", ver("certificates"), false),
        (["deletedcertificates"] | ["deletedcertificates", ""], &M::GET) => {
            ("certificates.deleted.list", None, false)
        }
        (["deletedcertificates", _], &M::GET) => {
            ("certificates.deleted.get", obj("certificates", 1), false)
        }
        (["deletedcertificates", _], &M::DELETE) => {
            ("certificates.purge", obj("certificates", 1), false)
        }
        (["deletedcertificates", _, "recover"], &M::POST) => {
            ("certificates.recover", obj("certificates", 1), false)
        }
        (["secrets"] | ["secrets", ""], &M::GET) => ("secrets.list", None, false),
        (["secrets", _, "versions"], &M::GET) => ("secrets.versions", obj("secrets", 1), false),
        (["secrets", _] | ["secrets", _, ""], &M::GET) => ("secrets.get", obj("secrets", 1), true),
        (["secrets", _, _], &M::GET) => ("secrets.get", ver("secrets"), false),
        (["secrets", _], &M::PUT) => ("secrets.set", obj("secrets", 1), false),
        (["secrets", _], &M::DELETE) => ("secrets.delete", obj("secrets", 1), false),
        (["secrets", _, _], &M::PATCH) => ("secrets.update", ver("secrets"), false),
        (["keys"] | ["keys", ""], &M::GET) => ("keys.list", None, false),
        (["keys", _, "versions"], &M::GET) => ("keys.versions", obj("keys", 1), false),
        (["keys", _] | ["keys", _, ""], &M::GET) => ("keys.get", obj("keys", 1), true),
        (["keys", _, _], &M::GET) => ("keys.get", ver("keys"), false),
        (["keys", _, v, op], &M::POST) => {
            let op = match *op {
                "sign" => "keys.sign",
                "verify" => "keys.verify",
                "encrypt" => "keys.encrypt",
                "decrypt" => "keys.decrypt",
                "wrapkey" => "keys.wrapKey",
                "unwrapkey" => "keys.unwrapKey",
                _ => "unknown",
            };
            if v.is_empty() {
                (op, obj("keys", 1), true)
            } else {
                (op, ver("keys"), false)
            }
        }
        (["keys", _], &M::DELETE) => ("keys.delete", obj("keys", 1), false),
        (["keys", _, _], &M::PATCH) => ("keys.update", ver("keys"), false),
        _ => ("unknown", None, false),
    };
    (op.to_owned(), object, versioned)
}

type AdminName = (
    String,
    Option<String>,
    Option<String>,
    Option<(&'static str, String)>,
);

fn admin_target(method: &Method, segs: &[&str]) -> AdminName {
    use Method as M;
    let s = |i: usize| seg_name(segs.get(i).copied().unwrap_or(""));
    let vault = |i: usize| Some(s(i).to_ascii_lowercase());
    let (op, vault, object, created): (&str, Option<String>, Option<String>, _) =
        match (segs, method) {
            (["master-key", "rotate"], &M::POST) => (
                "admin.master-key.rotate",
                None,
                Some("admin/master-key".into()),
                None,
            ),
            (["audit"], &M::GET) => ("admin.audit.list", None, None, None),
            (["backup"], &M::POST) => ("admin.backup", None, Some("admin/backup".into()), None),
            (["audit", "export"], &M::GET) => ("admin.audit.export", None, None, None),
            (["audit", "verify"], &M::POST) => ("admin.audit.verify", None, None, None),
            (["vaults"], &M::GET) => ("admin.vaults.list", None, None, None),
            (["vaults"], &M::POST) => (
                "admin.vaults.create",
                None,
                None,
                Some(("/name", "admin/vaults".to_owned())),
            ),
            (["vaults", _], m) => {
                let op = match *m {
                    M::GET => "admin.vaults.get",
                    M::PATCH => "admin.vaults.update",
                    M::DELETE => "admin.vaults.delete",
                    _ => "admin.unknown",
                };
                let v = vault(1);
                (op, v.clone(), v.map(|v| format!("admin/vaults/{v}")), None)
            }
            (["deleted-vaults"], &M::GET) => ("admin.vaults.list-deleted", None, None, None),
            (["deleted-vaults", _, "recover"], &M::POST) | (["deleted-vaults", _], &M::DELETE) => {
                let op = if *method == M::POST {
                    "admin.vaults.recover"
                } else {
                    "admin.vaults.purge"
                };
                let v = vault(1);
                (op, v.clone(), v.map(|v| format!("admin/vaults/{v}")), None)
            }
            (["principals"], &M::GET) => ("admin.principals.list", None, None, None),
            (["principals"], &M::POST) => (
                "admin.principals.create",
                None,
                None,
                Some(("/principal/name", "admin/principals".to_owned())),
            ),
            (["principals", _], m) => {
                let op = match *m {
                    M::GET => "admin.principals.get",
                    M::PATCH => "admin.principals.update",
                    M::DELETE => "admin.principals.delete",
                    _ => "admin.unknown",
                };
                (op, None, Some(format!("admin/principals/{}", s(1))), None)
            }
            (["principals", _, "tokens"], &M::GET) => (
                "admin.tokens.list",
                None,
                Some(format!("admin/principals/{}", s(1))),
                None,
            ),
            (["principals", _, "tokens"], &M::POST) => (
                "admin.tokens.create",
                None,
                None,
                Some(("/id", format!("admin/principals/{}/tokens", s(1)))),
            ),
            (["principals", _, "tokens", _], &M::DELETE) => (
                "admin.tokens.revoke",
                None,
                Some(format!("admin/principals/{}/tokens/{}", s(1), s(3))),
                None,
            ),
            (["vaults", _, "access-policies"], &M::GET) => {
                ("admin.access-policies.list", vault(1), None, None)
            }
            (["vaults", _, "access-policies", _], m) => {
                let op = match *m {
                    M::GET => "admin.access-policies.get",
                    M::PUT => "admin.access-policies.set",
                    M::DELETE => "admin.access-policies.delete",
                    _ => "admin.unknown",
                };
                let v = vault(1);
                let object = v
                    .as_ref()
                    .map(|v| format!("admin/vaults/{v}/access-policies/{}", s(3)));
                (op, v, object, None)
            }
            (["test-clock"], &M::GET) => ("admin.test-clock.get", None, None, None),
            (["test-clock", "advance"], &M::POST) => (
                "admin.test-clock.advance",
                None,
                Some("admin/test-clock".into()),
                None,
            ),
            (["vaults", _, "certificates", _, "renew"], &M::POST) => {
                let v = vault(1);
                (
                    "certificates.renew",
                    v,
                    Some(format!("certificates/{}", s(3).to_ascii_lowercase())),
                    None,
                )
            }
            (["vaults", _, "channels"], m) => {
                let op = match *m {
                    M::GET => "admin.channels.list",
                    M::POST => "admin.channels.create",
                    _ => "admin.unknown",
                };
                let v = vault(1);
                let created = (*m == M::POST)
                    .then(|| {
                        v.as_ref()
                            .map(|v| ("/name", format!("admin/vaults/{v}/channels")))
                    })
                    .flatten();
                (op, v, None, created)
            }
            (["vaults", _, "channels", _, rest @ ..], m) => {
                let op = match (rest, m) {
                    ([], &M::GET) => "admin.channels.get",
                    ([], &M::PATCH) => "admin.channels.update",
                    ([], &M::DELETE) => "admin.channels.delete",
                    (["test"], &M::POST) => "admin.channels.test",
                    (["deliveries"], &M::GET) => "admin.deliveries.list",
                    _ => "admin.unknown",
                };
                let v = vault(1);
                let object = v
                    .as_ref()
                    .map(|v| format!("admin/vaults/{v}/channels/{}", s(3)));
                (op, v, object, None)
            }
            (["vaults", _, "deliveries"], &M::GET) => {
                ("admin.deliveries.list", vault(1), None, None)
            }
            (["vaults", _, "deliveries", _, rest @ ..], m) => {
                let op = match (rest, m) {
                    ([], &M::GET) => "admin.deliveries.get",
                    (["replay"], &M::POST) => "admin.deliveries.replay",
                    _ => "admin.unknown",
                };
                let v = vault(1);
                let object = v
                    .as_ref()
                    .map(|v| format!("admin/vaults/{v}/deliveries/{}", s(3)));
                (op, v, object, None)
            }
            (["vaults", _, "events"], &M::GET) => ("admin.events.list", vault(1), None, None),
            _ => ("admin.unknown", None, None, None),
        };
    (op.to_owned(), vault, object, created)
}

fn unknown_request(operation: &str, method: &Method, path: &str) -> Option<String> {
    (operation == "unknown" || operation == "admin.unknown")
        .then(|| format!("{method} {}", certvault_core::names::truncate(path, 200)))
}

/// Names what a request does from its method, path and host (the vault, as the Key Vault
/// router resolves it).
pub fn target(method: &Method, uri: &Uri, headers: &HeaderMap, base_domain: &str) -> Target {
    let path = uri.path();
    let probe = match path {
        "/healthz" => Some("ops.healthz"),
        "/readyz" => Some("ops.readyz"),
        "/metrics" => Some("ops.metrics"),
        "/openapi.json" => Some("ops.openapi"),
        _ => None,
    };
    if let Some(op) = probe
        && method == Method::GET
    {
        return Target {
            operation: op.to_owned(),
            vault: None,
            object: None,
            created: None,
            versioned: false,
            unknown: None,
            changes_state: false,
        };
    }
    if let Some(rest) = path.strip_prefix("/admin/") {
        let rest = rest.trim_end_matches('/');
        let segs: Vec<&str> = match rest.strip_prefix("v1/") {
            Some(r) => r.split('/').collect(),
            None => Vec::new(),
        };
        let (operation, vault, object, created) = admin_target(method, &segs);
        return Target {
            unknown: unknown_request(&operation, method, path),
            changes_state: changes_state(method, &operation),
            operation,
            vault,
            object,
            created,
            versioned: false,
        };
    }
    let host = uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| headers.get(header::HOST).and_then(|h| h.to_str().ok()))
        .unwrap_or("");
    let (operation, object, versioned) = kv_target(method, path);
    Target {
        unknown: unknown_request(&operation, method, path),
        changes_state: changes_state(method, &operation),
        operation,
        vault: Some(crate::kv::vault_from_host(host, base_domain)),
        object,
        created: None,
        versioned,
    }
}

// ---------------------------------------------------------------------------------- the hook

/// Who a request is recorded as.
#[derive(Debug, Clone)]
pub enum Who {
    /// Not recorded (`/healthz`).
    Nobody,
    /// No caller: the token was missing or not accepted, or could not be checked.
    Anonymous {
        /// The operation recorded (`auth.invalid`, `auth.unavailable`).
        operation: &'static str,
        /// Why (no token material).
        reason: &'static str,
    },
    /// An authenticated principal.
    Principal(String),
}

/// The Key Vault error code of an error response (small JSON bodies only).
fn error_code(body: &[u8]) -> Option<String> {
    if body.len() > 16 * 1024 {
        return None;
    }
    let v: Value = serde_json::from_slice(body).ok()?;
    v["error"]["code"].as_str().map(seg_name)
}

/// Records the request, then answers `resp`; if the record cannot be written, answers 500 in
/// the Key Vault error shape instead (nothing of `resp` leaves).
pub async fn after_request(
    state: &AppState,
    resp: Response<Body>,
    target: Target,
    who: Who,
    peer: SocketAddr,
    request_id: &str,
) -> Response<Body> {
    let (principal, operation, mut detail) = match who {
        Who::Nobody => return resp,
        Who::Anonymous { operation, reason } => (
            "anonymous".to_owned(),
            operation.to_owned(),
            json!({"reason": reason, "attempted": target.operation}),
        ),
        Who::Principal(p) => (p, target.operation.clone(), json!({})),
    };
    let status = resp.status().as_u16();
    let mut object = target.object;
    let mut resp = resp;
    if target.versioned
        && let Some(v) = resp.extensions().get::<ResolvedVersion>()
        && let Some(o) = object.as_mut()
    {
        o.push('/');
        o.push_str(&seg_name(&v.0));
    }
    let needs_body = status >= 400 || (target.created.is_some() && status < 300);
    if needs_body {
        let (parts, body) = resp.into_parts();
        let bytes: Bytes = match body.collect().await {
            Ok(c) => c.to_bytes(),
            Err(never) => match never {},
        };
        if status >= 400 {
            if let Some(code) = error_code(&bytes) {
                detail["error"] = json!(code);
            }
        } else if let Some((pointer, prefix)) = &target.created
            && let Ok(v) = serde_json::from_slice::<Value>(&bytes)
        {
            let name = match v.pointer(pointer) {
                Some(Value::String(s)) => Some(seg_name(s)),
                Some(Value::Number(n)) => Some(n.to_string()),
                _ => None,
            };
            if let Some(name) = name {
                object = Some(format!("{prefix}/{name}"));
            }
        }
        resp = Response::from_parts(parts, Full::new(bytes));
    }
    if let Some(path) = target.unknown {
        detail["request"] = json!(path);
    }
    let event = Event {
        request_id: Some(request_id.to_owned()),
        principal,
        source: Some(peer.ip().to_string()),
        vault: target.vault,
        object,
        operation,
        status: Some(status),
        outcome: Outcome::of_status(status),
        detail: match &detail {
            Value::Object(m) if m.is_empty() => None,
            _ => Some(detail),
        },
    };
    // A refused or failed request changed nothing (handlers are transactional).
    let recorded = if target.changes_state && status < 400 {
        state.auditor.record(vec![event]).await
    } else {
        state.auditor.record_read(vec![event]).await
    };
    match recorded {
        Ok(_) => resp,
        Err(e) => {
            tracing::error!(error = %e, request_id, "the audit record could not be written; the request fails");
            let mut r = error_response(&ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                "The request could not be recorded in the audit trail.",
            ));
            r.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            r
        }
    }
}

// ---------------------------------------------------------------------------------- admin API

fn time_text(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| ms.to_string())
}

/// A record as the admin API shows it.
pub fn record_json(r: &AuditRecord) -> Value {
    let f = &r.fields;
    let detail = f
        .detail
        .as_deref()
        .map(|d| serde_json::from_str::<Value>(d).unwrap_or_else(|_| Value::String(d.to_owned())));
    json!({
        "seq": r.seq,
        "time": time_text(f.time),
        "time_ms": f.time,
        "request_id": f.request_id,
        "principal": f.principal,
        "source": f.source,
        "vault": f.vault,
        "object": f.object,
        "operation": f.operation,
        "status": f.status,
        "outcome": f.outcome,
        "detail": detail,
        "prev": hex::encode(&r.prev),
        "mac": hex::encode(&r.mac),
    })
}

/// `from`/`to`: RFC 3339, or Unix seconds.
fn parse_time(name: &str, v: &str) -> ApiResult<i64> {
    if let Ok(secs) = v.parse::<i64>() {
        return secs
            .checked_mul(1000)
            .ok_or_else(|| ApiError::bad(format!("'{name}' is out of range.")));
    }
    let t = time::OffsetDateTime::parse(v, &time::format_description::well_known::Rfc3339)
        .map_err(|_| {
            ApiError::bad(format!(
                "'{name}' must be an RFC 3339 time (2026-01-31T12:00:00Z) or Unix seconds, not '{}'.",
                certvault_core::names::truncate(v, 40)
            ))
        })?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000)
        .map_err(|_| ApiError::bad(format!("'{name}' is out of range.")))
}

/// The largest page of `GET /admin/v1/audit`.
pub const MAX_PAGE: usize = 1000;

fn parse_filter(parts: &Parts) -> ApiResult<(AuditFilter, Option<usize>)> {
    let mut f = AuditFilter::default();
    let mut limit = None;
    let text = |v: &str| (!v.is_empty()).then(|| v.to_owned());
    for (k, v) in crate::kv::parse_query(parts.uri.query()) {
        match k.as_str() {
            "from" => f.from = Some(parse_time("from", &v)?),
            "to" => f.to = Some(parse_time("to", &v)?),
            "principal" => f.principal = text(&v),
            "vault" => f.vault = text(&v).map(|v| v.to_ascii_lowercase()),
            "object" => f.object = text(&v),
            "operation" => f.operation = text(&v),
            "after" => {
                f.after =
                    v.parse::<i64>().ok().filter(|a| *a >= 0).ok_or_else(|| {
                        ApiError::bad("'after' must be a record seq (0 or more).")
                    })?;
            }
            "limit" => {
                limit = Some(
                    v.parse::<usize>()
                        .ok()
                        .filter(|n| *n >= 1)
                        .ok_or_else(|| ApiError::bad("'limit' must be a positive integer."))?,
                );
            }
            "api-version" => {}
            other => {
                return Err(ApiError::bad(format!(
                    "Unknown query parameter '{}'; use from, to, principal, vault, object, \
                     operation, after, limit.",
                    certvault_core::names::truncate(other, 40)
                )));
            }
        }
    }
    Ok((f, limit))
}

fn store_err(e: StoreError) -> ApiError {
    ApiError::internal(&e)
}

/// Serves the audit part of the admin API; `None` when the path is not one of its.
pub async fn admin(
    state: &Arc<AppState>,
    parts: &Parts,
    path: &str,
    caller: &Caller,
) -> Option<ApiResult<Response<Body>>> {
    let route = match (path, &parts.method) {
        ("/admin/v1/audit", &Method::GET) => 0,
        ("/admin/v1/audit/export", &Method::GET) => 1,
        ("/admin/v1/audit/verify", &Method::POST) => 2,
        _ => return None,
    };
    if !caller.admin {
        return Some(Err(ApiError::forbidden(format!(
            "The principal '{}' is not an administrator.",
            caller.principal
        ))
        .inner("ForbiddenByPolicy")));
    }
    Some(match route {
        0 => list(state, parts).await,
        1 => export(state, parts).await,
        _ => verify(state).await,
    })
}

async fn list(state: &AppState, parts: &Parts) -> ApiResult<Response<Body>> {
    let (filter, limit) = parse_filter(parts)?;
    let limit = limit.unwrap_or(100).min(MAX_PAGE);
    let mut rows = state
        .auditor
        .records(filter, limit + 1)
        .await
        .map_err(store_err)?;
    let more = rows.len() > limit;
    rows.truncate(limit);
    let next = if more {
        rows.last().map(|r| r.seq)
    } else {
        None
    };
    let records: Vec<Value> = rows.iter().map(record_json).collect();
    Ok(json_response(
        StatusCode::OK,
        &json!({"records": records, "next": next}),
    ))
}

async fn export(state: &AppState, parts: &Parts) -> ApiResult<Response<Body>> {
    let (mut filter, limit) = parse_filter(parts)?;
    let mut left = limit.unwrap_or(usize::MAX);
    let mut out = Vec::new();
    while left > 0 {
        let page = state
            .auditor
            .records(filter.clone(), left.min(MAX_PAGE))
            .await
            .map_err(store_err)?;
        let Some(last) = page.last() else { break };
        filter.after = last.seq;
        left -= page.len();
        for r in &page {
            serde_json::to_writer(&mut out, &record_json(r)).map_err(|e| ApiError::internal(&e))?;
            out.push(b'\n');
        }
        if page.len() < MAX_PAGE.min(left + page.len()) {
            break;
        }
    }
    let mut r = Response::new(Full::new(Bytes::from(out)));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    Ok(r)
}

async fn verify(state: &AppState) -> ApiResult<Response<Body>> {
    let v = state.auditor.verify().await.map_err(store_err)?;
    let problem = v
        .problem
        .as_ref()
        .map(|p| json!({"seq": p.seq, "kind": p.kind.as_str(), "detail": p.detail}));
    if let Some(p) = &v.problem {
        tracing::error!(seq = p.seq, kind = p.kind.as_str(), detail = %p.detail, "audit chain verification failed");
    }
    let head = v
        .head
        .as_ref()
        .map(|(seq, mac)| json!({"seq": seq, "mac": hex::encode(mac)}));
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "ok": v.problem.is_none(),
            "records_checked": v.records_checked,
            "problem": problem,
            "head": head,
        }),
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn t(method: Method, url: &str) -> Target {
        let uri: Uri = url.parse().unwrap();
        target(&method, &uri, &HeaderMap::new(), "kv.test")
    }

    #[test]
    fn names_lifecycle_and_acme_requests() {
        let name = |m: Method, url: &str| {
            let x = t(m, url);
            (x.operation, x.vault, x.object)
        };
        let s = |v: &str| Some(v.to_owned());
        assert_eq!(
            name(Method::POST, "https://kv.test/certificates/Web/renew"),
            (
                "certificates.renew".into(),
                s("default"),
                s("certificates/web")
            )
        );
        assert_eq!(
            name(
                Method::POST,
                "https://kv.test/certificates/web/pending/acknowledge"
            )
            .0,
            "certificates.pending.acknowledge"
        );
        assert_eq!(
            name(Method::POST, "https://kv.test/admin/v1/test-clock/advance").0,
            "admin.test-clock.advance"
        );
        assert_eq!(
            name(
                Method::POST,
                "https://kv.test/admin/v1/vaults/Prod/channels/ops/test"
            ),
            (
                "admin.channels.test".into(),
                s("prod"),
                s("admin/vaults/prod/channels/ops")
            )
        );
        assert_eq!(
            name(
                Method::POST,
                "https://kv.test/admin/v1/vaults/prod/deliveries/7/replay"
            )
            .0,
            "admin.deliveries.replay"
        );
        assert_eq!(
            name(
                Method::POST,
                "https://kv.test/admin/v1/vaults/prod/certificates/web/renew"
            ),
            (
                "certificates.renew".into(),
                s("prod"),
                s("certificates/web")
            )
        );
    }

    #[test]
    fn names_key_vault_requests() {
        let x = t(
            Method::GET,
            "https://prod.kv.test/secrets/Web/?api-version=7.4",
        );
        assert_eq!(
            (
                x.operation.as_str(),
                x.vault.as_deref(),
                x.object.as_deref(),
                x.versioned
            ),
            ("secrets.get", Some("prod"), Some("secrets/web"), true)
        );
        let x = t(Method::POST, "https://127.0.0.1/keys/k/0123abcd/WRAPKEY");
        assert_eq!(
            (
                x.operation.as_str(),
                x.vault.as_deref(),
                x.object.as_deref()
            ),
            ("keys.wrapKey", Some("default"), Some("keys/k/0123abcd"))
        );
        let x = t(Method::POST, "https://127.0.0.1/keys/k//sign");
        assert_eq!((x.operation.as_str(), x.versioned), ("keys.sign", true));
        let x = t(Method::DELETE, "https://127.0.0.1/deletedcertificates/c");
        assert_eq!(
            (x.operation.as_str(), x.object.as_deref()),
            ("certificates.purge", Some("certificates/c"))
        );
        let x = t(Method::PUT, "https://127.0.0.1/certificates/issuers/Ca1");
        assert_eq!(
            (x.operation.as_str(), x.object.as_deref()),
            ("certificates.issuers.set", Some("issuers/ca1"))
        );
        assert_eq!(
            t(Method::GET, "https://127.0.0.1/nope/x").operation,
            "unknown"
        );
    }

    #[test]
    fn names_admin_requests() {
        let x = t(
            Method::PUT,
            "https://127.0.0.1/admin/v1/vaults/Prod/access-policies/bob",
        );
        assert_eq!(
            (
                x.operation.as_str(),
                x.vault.as_deref(),
                x.object.as_deref()
            ),
            (
                "admin.access-policies.set",
                Some("prod"),
                Some("admin/vaults/prod/access-policies/bob")
            )
        );
        let x = t(Method::POST, "https://127.0.0.1/admin/v1/master-key/rotate");
        assert_eq!(x.operation, "admin.master-key.rotate");
        let x = t(
            Method::DELETE,
            "https://127.0.0.1/admin/v1/principals/bob/tokens/7",
        );
        assert_eq!(
            (x.operation.as_str(), x.object.as_deref()),
            ("admin.tokens.revoke", Some("admin/principals/bob/tokens/7"))
        );
        assert_eq!(
            t(Method::GET, "https://127.0.0.1/admin/v2/x").operation,
            "admin.unknown"
        );
    }

    #[test]
    fn outcomes() {
        assert_eq!(Outcome::of_status(200), Outcome::Ok);
        assert_eq!(Outcome::of_status(204), Outcome::Ok);
        assert_eq!(Outcome::of_status(401), Outcome::Denied);
        assert_eq!(Outcome::of_status(403), Outcome::Denied);
        assert_eq!(Outcome::of_status(404), Outcome::Error);
        assert_eq!(Outcome::of_status(500), Outcome::Error);
    }
}
