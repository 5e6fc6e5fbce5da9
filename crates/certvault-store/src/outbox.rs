//! The transactional outbox: events, notification channels, deliveries and their history.
//!
//! An event is inserted in the same transaction as the state change that caused it: by the
//! triggers below for `issued` / `renewed` (an operation completing), and by the lifecycle
//! engine's writes for the others, together with the job outcome and the lifecycle mark. Each
//! event carries a unique `dedup` key, so an event that must happen once per version happens
//! once even when a write is retried. A trigger fans each event out into one delivery per
//! enabled channel of its vault (and one e-mail delivery to the vault's contacts when the event
//! asks for it), still in the same transaction.
//!
//! Deliveries are ordered per *lane* (one channel and one certificate): only the oldest pending
//! delivery of a lane may be sent, so a receiver sees a certificate's events in order, while
//! lanes (other certificates, other channels) proceed independently.

use rusqlite::{Connection, OptionalExtension, Row, params};

use crate::jobs::{Job, JobNext, finish_tx};
use crate::{Conflict, SqliteStore, StoreError};

/// The schema of this module (one migration).
pub(crate) const MIGRATION: &str = r#"
CREATE TABLE events (
    id INTEGER PRIMARY KEY,
    uid TEXT NOT NULL UNIQUE,
    dedup TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    vault_id INTEGER NOT NULL,
    vault TEXT NOT NULL,
    cert_id INTEGER,
    cert_name TEXT,
    version TEXT,
    email INTEGER NOT NULL DEFAULT 0,
    body TEXT NOT NULL,
    created INTEGER NOT NULL
);
CREATE INDEX events_vault ON events (vault_id, id);
CREATE TABLE channels (
    id INTEGER PRIMARY KEY,
    vault_id INTEGER NOT NULL REFERENCES vaults(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    name_key TEXT NOT NULL,
    kind TEXT NOT NULL,
    target TEXT NOT NULL,
    sealed BLOB NOT NULL,
    payload_version INTEGER NOT NULL,
    enabled INTEGER NOT NULL,
    created INTEGER NOT NULL,
    updated INTEGER NOT NULL,
    UNIQUE (vault_id, name_key)
);
CREATE TABLE deliveries (
    id INTEGER PRIMARY KEY,
    event_id INTEGER NOT NULL REFERENCES events(id) ON DELETE CASCADE,
    channel_id INTEGER REFERENCES channels(id) ON DELETE CASCADE,
    vault_id INTEGER NOT NULL,
    lane TEXT NOT NULL,
    status TEXT NOT NULL,
    leased INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_try INTEGER NOT NULL,
    last_status INTEGER,
    last_error TEXT,
    delivered_at INTEGER,
    created INTEGER NOT NULL
);
CREATE INDEX deliveries_due ON deliveries (next_try) WHERE status = 'pending';
CREATE INDEX deliveries_lane ON deliveries (lane, id) WHERE status = 'pending';
CREATE INDEX deliveries_channel ON deliveries (channel_id, id);
CREATE INDEX deliveries_vault ON deliveries (vault_id, status, id);
CREATE INDEX deliveries_event ON deliveries (event_id);
CREATE TABLE delivery_attempts (
    id INTEGER PRIMARY KEY,
    delivery_id INTEGER NOT NULL REFERENCES deliveries(id) ON DELETE CASCADE,
    at INTEGER NOT NULL,
    status_code INTEGER,
    error TEXT,
    millis INTEGER NOT NULL
);
CREATE INDEX delivery_attempts_delivery ON delivery_attempts (delivery_id, id);

CREATE TRIGGER events_fanout AFTER INSERT ON events BEGIN
    INSERT INTO deliveries (event_id, channel_id, vault_id, lane, status, next_try, created)
        SELECT NEW.id, ch.id, NEW.vault_id, 'c' || ch.id || ':' || COALESCE(NEW.cert_id, 0),
               'pending', NEW.created, NEW.created
        FROM channels ch WHERE ch.vault_id = NEW.vault_id AND ch.enabled = 1;
    INSERT INTO deliveries (event_id, channel_id, vault_id, lane, status, next_try, created)
        SELECT NEW.id, NULL, NEW.vault_id, 'e' || NEW.vault_id || ':' || COALESCE(NEW.cert_id, 0),
               'pending', NEW.created, NEW.created
        WHERE NEW.email = 1;
END;

CREATE TRIGGER events_issued AFTER INSERT ON operations WHEN NEW.status = 'completed' BEGIN
    INSERT INTO events (uid, dedup, kind, vault_id, vault, cert_id, cert_name, version, email, body, created)
        SELECT lower(hex(randomblob(16))), 'version:' || c.id || ':' || NEW.version,
            CASE WHEN (SELECT COUNT(*) FROM versions o WHERE o.cert_id = c.id AND o.cer IS NOT NULL) > 1
                 THEN 'renewed' ELSE 'issued' END,
            c.vault_id, va.name, c.id, c.name, NEW.version, 0,
            json_object('nbf', v.nbf, 'exp', v.exp, 'issuer', NEW.issuer_name),
            NEW.updated
        FROM certificates c JOIN vaults va ON va.id = c.vault_id
            JOIN versions v ON v.cert_id = c.id AND v.version = NEW.version
        WHERE c.id = NEW.cert_id AND v.cer IS NOT NULL
          AND NOT EXISTS (SELECT 1 FROM events WHERE dedup = 'version:' || c.id || ':' || NEW.version);
END;
CREATE TRIGGER events_merged AFTER UPDATE OF status ON operations
    WHEN NEW.status = 'completed' AND OLD.status <> 'completed' BEGIN
    INSERT INTO events (uid, dedup, kind, vault_id, vault, cert_id, cert_name, version, email, body, created)
        SELECT lower(hex(randomblob(16))), 'version:' || c.id || ':' || NEW.version,
            CASE WHEN (SELECT COUNT(*) FROM versions o WHERE o.cert_id = c.id AND o.cer IS NOT NULL) > 1
                 THEN 'renewed' ELSE 'issued' END,
            c.vault_id, va.name, c.id, c.name, NEW.version, 0,
            json_object('nbf', v.nbf, 'exp', v.exp, 'issuer', NEW.issuer_name),
            NEW.updated
        FROM certificates c JOIN vaults va ON va.id = c.vault_id
            JOIN versions v ON v.cert_id = c.id AND v.version = NEW.version
        WHERE c.id = NEW.cert_id AND v.cer IS NOT NULL
          AND NOT EXISTS (SELECT 1 FROM events WHERE dedup = 'version:' || c.id || ':' || NEW.version);
END;
"#;

// ------------------------------------------------------------------------------ events

/// An event to record.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    /// `about_to_expire`, `expired`, `renewal_failed`, …
    pub kind: String,
    /// The certificate.
    pub cert_id: i64,
    /// The version it is about.
    pub version: Option<String>,
    /// Whether the vault's contacts are mailed.
    pub email: bool,
    /// Once-only key: a second event with the same key is not recorded.
    pub dedup: String,
    /// Event data (times, reason, …).
    pub body: serde_json::Value,
    /// When.
    pub created: i64,
}

/// A recorded event.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRecord {
    /// Row id (increases with time).
    pub id: i64,
    /// The idempotency id receivers see.
    pub uid: String,
    /// Event type.
    pub kind: String,
    /// Vault row id.
    pub vault_id: i64,
    /// Vault name.
    pub vault: String,
    /// Certificate row id.
    pub cert_id: Option<i64>,
    /// Certificate name.
    pub cert_name: Option<String>,
    /// Version.
    pub version: Option<String>,
    /// Whether contacts are mailed.
    pub email: bool,
    /// Event data.
    pub body: serde_json::Value,
    /// When.
    pub created: i64,
}

pub(crate) const EVENT_COLS: &str = "e.id, e.uid, e.kind, e.vault_id, e.vault, e.cert_id, e.cert_name, e.version, e.email, e.body, e.created";

pub(crate) fn event_row(r: &Row<'_>, o: usize) -> rusqlite::Result<EventRecord> {
    let body: String = r.get(o + 9)?;
    Ok(EventRecord {
        id: r.get(o)?,
        uid: r.get(o + 1)?,
        kind: r.get(o + 2)?,
        vault_id: r.get(o + 3)?,
        vault: r.get(o + 4)?,
        cert_id: r.get(o + 5)?,
        cert_name: r.get(o + 6)?,
        version: r.get(o + 7)?,
        email: r.get(o + 8)?,
        body: serde_json::from_str(&body).unwrap_or(serde_json::Value::Null),
        created: r.get(o + 10)?,
    })
}

impl SqliteStore {
    /// Records an event (and, by trigger, its deliveries) unless its dedup key exists; returns
    /// whether it was recorded. For events that are not the outcome of a scheduler job (e.g.
    /// the steps of an ACME order).
    pub async fn record_event(&self, e: NewEvent) -> Result<bool, StoreError> {
        self.write_bookkeeping(move |c| insert_event_tx(c, &e))
            .await
    }
}

/// Records `e` (and, by trigger, its deliveries) unless its dedup key exists. Inside a write.
pub(crate) fn insert_event_tx(c: &Connection, e: &NewEvent) -> Result<bool, StoreError> {
    let n = c.execute(
        "INSERT INTO events (uid, dedup, kind, vault_id, vault, cert_id, cert_name, version, email, body, created) \
         SELECT lower(hex(randomblob(16))), ?2, ?3, c.vault_id, va.name, c.id, c.name, ?4, ?5, ?6, ?7 \
         FROM certificates c JOIN vaults va ON va.id = c.vault_id WHERE c.id = ?1 \
         AND NOT EXISTS (SELECT 1 FROM events WHERE dedup = ?2)",
        params![
            e.cert_id,
            e.dedup,
            e.kind,
            e.version,
            e.email,
            e.body.to_string(),
            e.created
        ],
    )?;
    Ok(n > 0)
}

/// Filter for listing events.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    /// Only this certificate (name, case-insensitive).
    pub cert_name: Option<String>,
    /// Only this type.
    pub kind: Option<String>,
    /// Events after this id.
    pub after: i64,
    /// Page size.
    pub limit: i64,
}

// ------------------------------------------------------------------------------ lifecycle

/// What the lifecycle engine needs to plan a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LifecycleView {
    /// Certificate row id.
    pub cert_id: i64,
    /// Vault row id.
    pub vault_id: i64,
    /// Vault name.
    pub vault: String,
    /// Certificate name.
    pub name: String,
    /// Policy JSON.
    pub policy: String,
    /// Soft-deleted.
    pub deleted: bool,
    /// The newest completed version: (version, nbf, exp, created), when there is one.
    pub current: Option<CurrentVersion>,
    /// An operation is in progress (a CSR waiting for its merge).
    pub op_in_progress: bool,
}

/// The newest completed version of a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CurrentVersion {
    /// Version id.
    pub version: String,
    /// Not before.
    pub nbf: Option<i64>,
    /// Expiry.
    pub exp: Option<i64>,
    /// Creation time.
    pub created: i64,
    /// Made by certvault (created or ordered), as opposed to imported or restored.
    pub made: bool,
    /// Lifecycle marks already recorded for it.
    pub marks: Vec<String>,
}

/// Marks to record for a version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mark {
    /// Certificate row id.
    pub cert_id: i64,
    /// Version.
    pub version: String,
    /// Mark.
    pub mark: String,
}

// ------------------------------------------------------------------------------ channels

/// A notification channel of a vault.
#[derive(Clone, PartialEq, Eq)]
pub struct ChannelRecord {
    /// Row id.
    pub id: i64,
    /// Vault row id.
    pub vault_id: i64,
    /// Name as given.
    pub name: String,
    /// `webhook` or `slack`.
    pub kind: String,
    /// What is shown of the target (the URL; a Slack URL redacted).
    pub target: String,
    /// URL and signing secret, sealed under the vault key.
    pub sealed: Vec<u8>,
    /// The payload `version` field sent.
    pub payload_version: i64,
    /// Whether events are delivered to it.
    pub enabled: bool,
    /// Creation time.
    pub created: i64,
    /// Update time.
    pub updated: i64,
}

impl std::fmt::Debug for ChannelRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelRecord")
            .field("id", &self.id)
            .field("vault_id", &self.vault_id)
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("target", &self.target)
            .field("enabled", &self.enabled)
            .finish_non_exhaustive()
    }
}

pub(crate) const CHANNEL_COLS: &str = "ch.id, ch.vault_id, ch.name, ch.kind, ch.target, ch.sealed, \
     ch.payload_version, ch.enabled, ch.created, ch.updated";

fn channel_row(r: &Row<'_>, o: usize) -> rusqlite::Result<ChannelRecord> {
    Ok(ChannelRecord {
        id: r.get(o)?,
        vault_id: r.get(o + 1)?,
        name: r.get(o + 2)?,
        kind: r.get(o + 3)?,
        target: r.get(o + 4)?,
        sealed: r.get(o + 5)?,
        payload_version: r.get(o + 6)?,
        enabled: r.get(o + 7)?,
        created: r.get(o + 8)?,
        updated: r.get(o + 9)?,
    })
}

// ------------------------------------------------------------------------------ deliveries

/// A delivery with what is needed to send it.
#[derive(Debug, Clone)]
pub struct DeliveryJob {
    /// Row id.
    pub id: i64,
    /// Attempts made before this one.
    pub attempts: i64,
    /// The channel (`None`: e-mail to the vault's contacts).
    pub channel: Option<ChannelRecord>,
    /// The event.
    pub event: EventRecord,
}

/// A delivery as listed (history, dead letters).
#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryRecord {
    /// Row id.
    pub id: i64,
    /// Event id.
    pub event_id: i64,
    /// Event idempotency id.
    pub event_uid: String,
    /// Event type.
    pub event_kind: String,
    /// Certificate name.
    pub cert_name: Option<String>,
    /// Channel name (`None`: e-mail).
    pub channel: Option<String>,
    /// `pending`, `delivered`, `dead` or `skipped`.
    pub status: String,
    /// Attempts made.
    pub attempts: i64,
    /// Next attempt (pending).
    pub next_try: i64,
    /// Last HTTP status (or SMTP code).
    pub last_status: Option<i64>,
    /// Last error.
    pub last_error: Option<String>,
    /// When it was delivered.
    pub delivered_at: Option<i64>,
    /// Creation time.
    pub created: i64,
}

/// The outcome of one delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryOutcome {
    /// When the attempt was made.
    pub at: i64,
    /// Status code of the receiver, if it answered.
    pub status_code: Option<i64>,
    /// Why it failed (no secrets).
    pub error: Option<String>,
    /// Duration.
    pub millis: i64,
    /// What happens next.
    pub next: DeliveryNext,
}

/// The state a delivery goes to after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryNext {
    /// Delivered.
    Delivered,
    /// Try again at this time.
    RetryAt(i64),
    /// Give up: dead letter.
    Dead,
    /// Not sent and never will be (e.g. no SMTP configured, no contacts).
    Skipped,
}

/// The SQL that picks sendable deliveries: due, and the oldest pending one of their lane.
pub const DELIVERY_SELECT: &str = "SELECT d.id FROM deliveries d \
     WHERE d.status = 'pending' AND d.next_try <= ?1 \
     AND d.id = (SELECT MIN(e.id) FROM deliveries e WHERE e.lane = d.lane AND e.status = 'pending') \
     ORDER BY d.next_try LIMIT ?2";

pub(crate) const DELIVERY_LIST_COLS: &str = "d.id, d.event_id, e.uid, e.kind, e.cert_name, ch.name, d.status, \
     d.attempts, d.next_try, d.last_status, d.last_error, d.delivered_at, d.created";

fn delivery_row(r: &Row<'_>) -> rusqlite::Result<DeliveryRecord> {
    Ok(DeliveryRecord {
        id: r.get(0)?,
        event_id: r.get(1)?,
        event_uid: r.get(2)?,
        event_kind: r.get(3)?,
        cert_name: r.get(4)?,
        channel: r.get(5)?,
        status: r.get(6)?,
        attempts: r.get(7)?,
        next_try: r.get(8)?,
        last_status: r.get(9)?,
        last_error: r.get(10)?,
        delivered_at: r.get(11)?,
        created: r.get(12)?,
    })
}

/// Filter for listing deliveries.
#[derive(Debug, Clone, Default)]
pub struct DeliveryFilter {
    /// Only this channel (row id).
    pub channel_id: Option<i64>,
    /// Only this status.
    pub status: Option<String>,
    /// After this id.
    pub after: i64,
    /// Page size.
    pub limit: i64,
}

impl SqliteStore {
    // -------------------------------------------------------------------- lifecycle

    /// What the lifecycle engine needs to plan certificate `cert_id`; `None` if it is gone.
    pub async fn lifecycle_view(&self, cert_id: i64) -> Result<Option<LifecycleView>, StoreError> {
        self.read(move |c| {
            let head = c
                .query_row(
                    "SELECT c.vault_id, va.name, c.name, c.policy, c.deleted_at IS NOT NULL, \
                     EXISTS (SELECT 1 FROM operations o WHERE o.cert_id = c.id AND o.status = 'inProgress') \
                     FROM certificates c JOIN vaults va ON va.id = c.vault_id WHERE c.id = ?1",
                    [cert_id],
                    |r| {
                        Ok(LifecycleView {
                            cert_id,
                            vault_id: r.get(0)?,
                            vault: r.get(1)?,
                            name: r.get(2)?,
                            policy: r.get(3)?,
                            deleted: r.get(4)?,
                            current: None,
                            op_in_progress: r.get(5)?,
                        })
                    },
                )
                .optional()?;
            let Some(mut view) = head else {
                return Ok(None);
            };
            let cur = c
                .query_row(
                    "SELECT version, nbf, exp, created FROM versions \
                     WHERE cert_id = ?1 AND cer IS NOT NULL ORDER BY seq DESC LIMIT 1",
                    [cert_id],
                    |r| {
                        Ok(CurrentVersion {
                            version: r.get(0)?,
                            nbf: r.get(1)?,
                            exp: r.get(2)?,
                            created: r.get(3)?,
                            made: false,
                            marks: vec![],
                        })
                    },
                )
                .optional()?;
            if let Some(mut cur) = cur {
                let mut st = c.prepare_cached(
                    "SELECT mark FROM lifecycle_marks WHERE cert_id = ?1 AND version = ?2",
                )?;
                let marks = st
                    .query_map(params![cert_id, cur.version], |r| r.get::<_, String>(0))?
                    .collect::<Result<Vec<_>, _>>()?;
                cur.made = marks.iter().any(|m| m == "made");
                cur.marks = marks;
                view.current = Some(cur);
            }
            Ok(Some(view))
        })
        .await
    }

    /// Records the outcome of a claimed job in one transaction: the events it caused, the
    /// marks, and the job's next state (only if the job was not replanned meanwhile; events
    /// and marks are recorded either way, they describe what happened). Returns whether the
    /// job change applied.
    pub async fn job_outcome(
        &self,
        job: &Job,
        events: Vec<NewEvent>,
        marks: Vec<Mark>,
        next: JobNext,
        now: i64,
    ) -> Result<bool, StoreError> {
        let job = job.clone();
        self.write_bookkeeping(move |c| {
            for e in &events {
                insert_event_tx(c, e)?;
            }
            for m in &marks {
                c.execute(
                    "INSERT INTO lifecycle_marks (cert_id, version, mark, at) \
                     SELECT ?1, ?2, ?3, ?4 WHERE EXISTS (SELECT 1 FROM certificates WHERE id = ?1) \
                     ON CONFLICT DO NOTHING",
                    params![m.cert_id, m.version, m.mark, now],
                )?;
            }
            finish_tx(c, &job, &next)
        })
        .await
    }

    /// Events of a vault, oldest first.
    pub async fn events(
        &self,
        vault_id: i64,
        f: EventFilter,
    ) -> Result<Vec<EventRecord>, StoreError> {
        self.read(move |c| {
            let mut st = c.prepare_cached(&format!(
                "SELECT {EVENT_COLS} FROM events e WHERE e.vault_id = ?1 AND e.id > ?2 \
                 AND (?3 IS NULL OR lower(e.cert_name) = lower(?3)) AND (?4 IS NULL OR e.kind = ?4) \
                 ORDER BY e.id LIMIT ?5"
            ))?;
            let rows = st
                .query_map(
                    params![vault_id, f.after, f.cert_name, f.kind, f.limit.clamp(1, 1000)],
                    |r| event_row(r, 0),
                )?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }

    // -------------------------------------------------------------------- channels

    /// Creates a channel. Refused when the name exists in the vault.
    pub async fn create_channel(&self, ch: ChannelRecord) -> Result<ChannelRecord, StoreError> {
        self.write(move |c| {
            let key = ch.name.to_ascii_lowercase();
            let n = c.execute(
                "INSERT INTO channels (vault_id, name, name_key, kind, target, sealed, payload_version, \
                 enabled, created, updated) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9) \
                 ON CONFLICT DO NOTHING",
                params![
                    ch.vault_id,
                    ch.name,
                    key,
                    ch.kind,
                    ch.target,
                    ch.sealed,
                    ch.payload_version,
                    ch.enabled,
                    ch.created
                ],
            )?;
            if n == 0 {
                return Err(StoreError::Conflict(Conflict::Exists));
            }
            get_channel(c, ch.vault_id, &key)?.ok_or(StoreError::NotFound)
        })
        .await
    }

    /// A channel by name.
    pub async fn channel(
        &self,
        vault_id: i64,
        name: &str,
    ) -> Result<Option<ChannelRecord>, StoreError> {
        let key = name.to_ascii_lowercase();
        self.read(move |c| get_channel(c, vault_id, &key)).await
    }

    /// The channels of a vault, by name.
    pub async fn channels(&self, vault_id: i64) -> Result<Vec<ChannelRecord>, StoreError> {
        self.read(move |c| {
            let mut st = c.prepare_cached(&format!(
                "SELECT {CHANNEL_COLS} FROM channels ch WHERE ch.vault_id = ?1 ORDER BY ch.name_key"
            ))?;
            let rows = st
                .query_map([vault_id], |r| channel_row(r, 0))?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }

    /// Changes a channel's settings (target, sealed URL and secret, payload version, enabled).
    pub async fn update_channel(&self, ch: ChannelRecord) -> Result<ChannelRecord, StoreError> {
        self.write(move |c| {
            let n = c.execute(
                "UPDATE channels SET target = ?2, sealed = ?3, payload_version = ?4, enabled = ?5, \
                 updated = ?6 WHERE id = ?1",
                params![
                    ch.id,
                    ch.target,
                    ch.sealed,
                    ch.payload_version,
                    ch.enabled,
                    ch.updated
                ],
            )?;
            if n == 0 {
                return Err(StoreError::NotFound);
            }
            get_channel(c, ch.vault_id, &ch.name.to_ascii_lowercase())?.ok_or(StoreError::NotFound)
        })
        .await
    }

    /// Deletes a channel with its deliveries.
    pub async fn delete_channel(&self, id: i64) -> Result<(), StoreError> {
        self.write(move |c| {
            if c.execute("DELETE FROM channels WHERE id = ?1", [id])? == 0 {
                return Err(StoreError::NotFound);
            }
            Ok(())
        })
        .await
    }

    // -------------------------------------------------------------------- deliveries

    /// Claims up to `limit` sendable deliveries (due, and first in their lane), leased until
    /// `now + lease`. `owner` is not stored: one process owns a SQLite database, so every lease
    /// is its own.
    pub async fn claim_deliveries(
        &self,
        now: i64,
        _owner: &str,
        lease: i64,
        limit: i64,
    ) -> Result<Vec<DeliveryJob>, StoreError> {
        self.write_bookkeeping(move |c| {
            let ids = {
                let mut st = c.prepare_cached(&format!(
                    "UPDATE deliveries SET next_try = ?3, leased = 1 WHERE id IN ({DELIVERY_SELECT}) \
                     RETURNING id"
                ))?;
                st.query_map(params![now, limit, now.saturating_add(lease)], |r| {
                    r.get::<_, i64>(0)
                })?
                .collect::<Result<Vec<_>, _>>()?
            };
            let mut st = c.prepare_cached(&format!(
                "SELECT d.id, d.attempts, {EVENT_COLS}, ch.id IS NOT NULL, {CHANNEL_COLS} \
                 FROM deliveries d JOIN events e ON e.id = d.event_id \
                 LEFT JOIN channels ch ON ch.id = d.channel_id WHERE d.id = ?1"
            ))?;
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                let job = st.query_row([id], |r| {
                    let has_channel: bool = r.get(13)?;
                    Ok(DeliveryJob {
                        id: r.get(0)?,
                        attempts: r.get(1)?,
                        event: event_row(r, 2)?,
                        channel: if has_channel {
                            Some(channel_row(r, 14)?)
                        } else {
                            None
                        },
                    })
                })?;
                out.push(job);
            }
            out.sort_by_key(|d| d.id);
            Ok(out)
        })
        .await
    }

    /// Records an attempt and moves the delivery on.
    pub async fn finish_delivery(&self, id: i64, o: DeliveryOutcome) -> Result<(), StoreError> {
        self.write_bookkeeping(move |c| {
            let (status, next_try, delivered_at, bump) = match o.next {
                DeliveryNext::Delivered => ("delivered", o.at, Some(o.at), 1),
                DeliveryNext::RetryAt(t) => ("pending", t, None, 1),
                DeliveryNext::Dead => ("dead", o.at, None, 1),
                DeliveryNext::Skipped => ("skipped", o.at, None, 0),
            };
            c.execute(
                "UPDATE deliveries SET status = ?2, next_try = ?3, delivered_at = ?4, \
                 attempts = attempts + ?5, last_status = ?6, last_error = ?7, leased = 0 WHERE id = ?1",
                params![id, status, next_try, delivered_at, bump, o.status_code, o.error],
            )?;
            if bump > 0 {
                c.execute(
                    "INSERT INTO delivery_attempts (delivery_id, at, status_code, error, millis) \
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![id, o.at, o.status_code, o.error, o.millis],
                )?;
            }
            Ok(())
        })
        .await
    }

    /// Makes every leased delivery due at `now` (at start, as for jobs).
    pub async fn release_delivery_leases(&self, now: i64) -> Result<usize, StoreError> {
        self.write_bookkeeping(move |c| {
            Ok(c.execute(
                "UPDATE deliveries SET next_try = ?1, leased = 0 WHERE status = 'pending' AND leased = 1",
                [now],
            )?)
        })
        .await
    }

    /// Makes the deliveries leased to `owner` due at `now`: on SQLite every lease is this
    /// process's (see [`Self::claim_deliveries`]), so all of them.
    pub async fn release_delivery_leases_of(
        &self,
        _owner: &str,
        now: i64,
    ) -> Result<usize, StoreError> {
        self.release_delivery_leases(now).await
    }

    /// Deliveries of a vault, oldest first.
    pub async fn deliveries(
        &self,
        vault_id: i64,
        f: DeliveryFilter,
    ) -> Result<Vec<DeliveryRecord>, StoreError> {
        self.read(move |c| {
            let mut st = c.prepare_cached(&format!(
                "SELECT {DELIVERY_LIST_COLS} FROM deliveries d JOIN events e ON e.id = d.event_id \
                 LEFT JOIN channels ch ON ch.id = d.channel_id \
                 WHERE d.vault_id = ?1 AND d.id > ?2 AND (?3 IS NULL OR d.channel_id = ?3) \
                 AND (?4 IS NULL OR d.status = ?4) ORDER BY d.id LIMIT ?5"
            ))?;
            let rows = st
                .query_map(
                    params![
                        vault_id,
                        f.after,
                        f.channel_id,
                        f.status,
                        f.limit.clamp(1, 1000)
                    ],
                    delivery_row,
                )?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }

    /// The attempts of a delivery: (at, status code, error, millis).
    pub async fn delivery_attempts(
        &self,
        delivery_id: i64,
    ) -> Result<Vec<(i64, Option<i64>, Option<String>, i64)>, StoreError> {
        self.read(move |c| {
            let mut st = c.prepare_cached(
                "SELECT at, status_code, error, millis FROM delivery_attempts \
                 WHERE delivery_id = ?1 ORDER BY id",
            )?;
            let rows = st
                .query_map([delivery_id], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }

    /// Sends a dead (or skipped) delivery again: pending, no attempts, due at `now`. Refused
    /// unless it is dead or skipped.
    pub async fn replay_delivery(
        &self,
        vault_id: i64,
        id: i64,
        now: i64,
    ) -> Result<DeliveryRecord, StoreError> {
        self.write_bookkeeping(move |c| {
            let status: Option<String> = c
                .query_row(
                    "SELECT status FROM deliveries WHERE id = ?1 AND vault_id = ?2",
                    params![id, vault_id],
                    |r| r.get(0),
                )
                .optional()?;
            match status.as_deref() {
                None => return Err(StoreError::NotFound),
                Some("dead" | "skipped") => {}
                Some(_) => return Err(StoreError::Conflict(Conflict::State)),
            }
            c.execute(
                "UPDATE deliveries SET status = 'pending', attempts = 0, next_try = ?2, leased = 0 \
                 WHERE id = ?1",
                params![id, now],
            )?;
            Ok(c.query_row(
                &format!(
                    "SELECT {DELIVERY_LIST_COLS} FROM deliveries d JOIN events e ON e.id = d.event_id \
                     LEFT JOIN channels ch ON ch.id = d.channel_id WHERE d.id = ?1"
                ),
                [id],
                delivery_row,
            )?)
        })
        .await
    }
}

fn get_channel(
    c: &Connection,
    vault_id: i64,
    key: &str,
) -> Result<Option<ChannelRecord>, StoreError> {
    Ok(c.query_row(
        &format!(
            "SELECT {CHANNEL_COLS} FROM channels ch WHERE ch.vault_id = ?1 AND ch.name_key = ?2"
        ),
        params![vault_id, key],
        |r| channel_row(r, 0),
    )
    .optional()?)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::{NewVersion, OperationRecord, Scheduler, VersionRecord};

    fn ver(v: &str, exp: i64) -> VersionRecord {
        VersionRecord {
            cert_id: 0,
            version: v.into(),
            seq: 0,
            created: 1,
            updated: 1,
            enabled: true,
            nbf: Some(0),
            exp: Some(exp),
            tags: None,
            cer: Some(vec![1]),
            chain: vec![],
            key_blob: Some(vec![9; 8]),
            key_ref: None,
            spki: vec![7],
            content_type: "application/x-pkcs12".into(),
            exportable: true,
            preserve_order: false,
            key_ops: None,
        }
    }

    fn op(v: &str, status: &str) -> OperationRecord {
        OperationRecord {
            cert_id: 0,
            request_id: "r".into(),
            version: v.into(),
            issuer_name: "Self".into(),
            status: status.into(),
            status_details: String::new(),
            csr: None,
            error: None,
            cancellation_requested: false,
            created: 5,
            updated: 5,
        }
    }

    /// One fresh store per backend, each with the vault `v`.
    async fn setups() -> Vec<(crate::store::testing::TestStore, i64)> {
        let mut out = Vec::new();
        for t in crate::store::testing::backends().await {
            eprintln!("backend: {}", t.store.backend());
            let v = t.store.create_vault("v", vec![1], 90, 1).await.unwrap();
            out.push((t, v.id));
        }
        out
    }

    async fn setup() -> (tempfile::TempDir, SqliteStore, i64) {
        let d = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&d.path().join("t.db")).unwrap();
        let v = s.create_vault("v", vec![1], 90, 1).await.unwrap();
        (d, s, v.id)
    }

    fn channel(vault_id: i64, name: &str) -> ChannelRecord {
        ChannelRecord {
            id: 0,
            vault_id,
            name: name.into(),
            kind: "webhook".into(),
            target: "http://x".into(),
            sealed: vec![1, 2, 3],
            payload_version: 1,
            enabled: true,
            created: 1,
            updated: 1,
        }
    }

    #[tokio::test]
    async fn versions_schedule_the_certificate_and_emit_events_in_the_same_transaction() {
        for (t, vid) in setups().await {
            versions_schedule_on(&t.store, vid).await;
        }
    }

    async fn versions_schedule_on(s: &crate::Store, vid: i64) {
        s.create_channel(channel(vid, "hook")).await.unwrap();
        let nv = |v: &str, status: &str| NewVersion {
            record: ver(v, 1000),
            operation: Some(op(v, status)),
        };
        let (cert, _) = s
            .add_version(vid, "web", "{}".into(), 5, nv("a1", "completed"))
            .await
            .unwrap();
        let job = s.job("cert", &cert.id.to_string()).await.unwrap().unwrap();
        assert_eq!((job.due, job.payload.clone()), (0, None));
        let view = s.lifecycle_view(cert.id).await.unwrap().unwrap();
        let cur = view.current.unwrap();
        assert!(cur.made);
        assert_eq!(cur.version, "a1");
        s.add_version(vid, "web", "{}".into(), 6, nv("a2", "completed"))
            .await
            .unwrap();
        let ev = s
            .events(
                vid,
                EventFilter {
                    limit: 10,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(
            ev.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>(),
            ["issued", "renewed"]
        );
        assert_eq!(ev[1].version.as_deref(), Some("a2"));
        let d = s
            .deliveries(
                vid,
                DeliveryFilter {
                    limit: 10,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(d.len(), 2);
        // An import has no operation: not 'made', no event.
        s.add_version(
            vid,
            "imp",
            "{}".into(),
            7,
            NewVersion {
                record: ver("b1", 1000),
                operation: None,
            },
        )
        .await
        .unwrap();
        let imp = s.certificate(vid, "imp").await.unwrap().unwrap();
        assert!(
            !s.lifecycle_view(imp.id)
                .await
                .unwrap()
                .unwrap()
                .current
                .unwrap()
                .made
        );
        assert_eq!(
            s.events(
                vid,
                EventFilter {
                    limit: 10,
                    ..Default::default()
                }
            )
            .await
            .unwrap()
            .len(),
            2
        );
    }

    #[tokio::test]
    async fn job_outcome_records_events_once_and_lanes_keep_order() {
        for (t, vid) in setups().await {
            job_outcome_on(&t.store, vid).await;
        }
    }

    async fn job_outcome_on(s: &crate::Store, vid: i64) {
        s.create_channel(channel(vid, "hook")).await.unwrap();
        let (cert, _) = s
            .add_version(
                vid,
                "web",
                "{}".into(),
                5,
                NewVersion {
                    record: ver("a1", 1000),
                    operation: None,
                },
            )
            .await
            .unwrap();
        let job = s.claim_due(10, "w", 60, 10).await.unwrap().remove(0);
        let ev = |n: i64| NewEvent {
            kind: "about_to_expire".into(),
            cert_id: cert.id,
            version: Some("a1".into()),
            email: true,
            dedup: format!("notice:{n}"),
            body: serde_json::json!({"n": n}),
            created: 10,
        };
        let applied = s
            .job_outcome(
                &job,
                vec![ev(1), ev(1), ev(2)],
                vec![Mark {
                    cert_id: cert.id,
                    version: "a1".into(),
                    mark: "notice:1".into(),
                }],
                JobNext::At {
                    due: 50,
                    payload: None,
                    attempts: 0,
                },
                10,
            )
            .await
            .unwrap();
        assert!(applied);
        let events = s
            .events(
                vid,
                EventFilter {
                    limit: 10,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(events.len(), 2);
        let view = s.lifecycle_view(cert.id).await.unwrap().unwrap();
        assert!(view.current.unwrap().marks.contains(&"notice:1".to_owned()));
        // Two events × (webhook + e-mail) = 4 deliveries in 2 lanes: only the lane heads go.
        let first = s.claim_deliveries(10, "t", 30, 100).await.unwrap();
        assert_eq!(first.len(), 2);
        assert!(first.iter().all(|d| d.event.id == events[0].id));
        assert!(
            s.claim_deliveries(11, "t", 30, 100)
                .await
                .unwrap()
                .is_empty()
        );
        for d in &first {
            s.finish_delivery(
                d.id,
                DeliveryOutcome {
                    at: 12,
                    status_code: Some(500),
                    error: Some("down".into()),
                    millis: 1,
                    next: DeliveryNext::RetryAt(100),
                },
            )
            .await
            .unwrap();
        }
        // Failed heads still block their lanes until they are delivered or dead.
        assert!(
            s.claim_deliveries(50, "t", 30, 100)
                .await
                .unwrap()
                .is_empty()
        );
        let again = s.claim_deliveries(100, "t", 30, 100).await.unwrap();
        assert_eq!(again.len(), 2);
        for d in &again {
            s.finish_delivery(
                d.id,
                DeliveryOutcome {
                    at: 101,
                    status_code: Some(200),
                    error: None,
                    millis: 1,
                    next: if d.channel.is_some() {
                        DeliveryNext::Delivered
                    } else {
                        DeliveryNext::Dead
                    },
                },
            )
            .await
            .unwrap();
        }
        let next = s.claim_deliveries(101, "t", 30, 100).await.unwrap();
        assert_eq!(next.len(), 2);
        assert!(next.iter().all(|d| d.event.id == events[1].id));
        let dead = s
            .deliveries(
                vid,
                DeliveryFilter {
                    status: Some("dead".into()),
                    limit: 10,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(s.delivery_attempts(dead[0].id).await.unwrap().len(), 2);
        let r = s.replay_delivery(vid, dead[0].id, 200).await.unwrap();
        assert_eq!((r.status.as_str(), r.attempts), ("pending", 0));
        assert!(s.replay_delivery(vid, dead[0].id, 200).await.is_err());
    }

    #[tokio::test]
    async fn delivery_claim_plan_uses_indexes() {
        let (_d, s, _) = setup().await;
        let plan: Vec<String> = s
            .read(|c| {
                let mut st = c.prepare(&format!("EXPLAIN QUERY PLAN {DELIVERY_SELECT}"))?;
                let rows = st
                    .query_map(params![0i64, 10i64], |r| r.get::<_, String>(3))?
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(rows)
            })
            .await
            .unwrap();
        let plan = plan.join(" | ");
        assert!(plan.contains("deliveries_due"), "{plan}");
        assert!(plan.contains("deliveries_lane"), "{plan}");
    }
}
