//! Read-only views for monitoring (the `/metrics` endpoint): every live certificate's current
//! version with its lifecycle marks in one query, and the depth of the work queues.

use rusqlite::params;

use crate::{SqliteStore, StoreError};

/// A live certificate (neither it nor its vault deleted) with its newest completed version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateStatus {
    /// Vault name.
    pub vault: String,
    /// Certificate name (case kept).
    pub name: String,
    /// The resolved policy JSON.
    pub policy: String,
    /// The newest completed version.
    pub version: String,
    /// Its sequence number (1 for the first version).
    pub seq: i64,
    /// Its creation time (Unix seconds).
    pub created: i64,
    /// Not before.
    pub nbf: Option<i64>,
    /// Expiry.
    pub exp: Option<i64>,
    /// Made by certvault (created, renewed or ordered), not imported or restored.
    pub made: bool,
    /// Its lifecycle marks (`made`, `notice:7d`, `retry:<n>:<t>`, …).
    pub marks: Vec<String>,
    /// An operation (a renewal or order) is in progress.
    pub op_in_progress: bool,
    /// When the newest failed renewal attempt of this version was recorded.
    pub last_failure_at: Option<i64>,
    /// The payload of the certificate's lifecycle job: what the engine planned last (with the
    /// CA's ACME renewal information when it asked), `None` while it has to plan again.
    pub job_payload: Option<String>,
}

/// The depth and age of the work queues at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueStatus {
    /// Deliveries waiting to be sent (including those waiting for a retry).
    pub deliveries_pending: i64,
    /// Deliveries given up on (dead letters), not replayed.
    pub deliveries_dead: i64,
    /// The oldest due time of a pending delivery that is due now and not leased.
    pub oldest_due_delivery: Option<i64>,
    /// Lifecycle jobs due now and not leased by a worker.
    pub jobs_due: i64,
    /// The oldest due time among them.
    pub oldest_due_job: Option<i64>,
    /// Lifecycle jobs leased by a worker right now.
    pub jobs_leased: i64,
}

const MARK_SEP: char = '\u{1f}';

impl SqliteStore {
    /// Every live certificate with its newest completed version and that version's marks, in
    /// one query (certificates without a completed version are left out).
    pub async fn certificate_statuses(&self) -> Result<Vec<CertificateStatus>, StoreError> {
        self.read(|c| {
            let mut st = c.prepare_cached(
                "SELECT va.name, ce.name, ce.policy, v.version, v.seq, v.created, v.nbf, v.exp, \
                 (SELECT group_concat(m.mark, char(31)) FROM lifecycle_marks m \
                    WHERE m.cert_id = ce.id AND m.version = v.version), \
                 EXISTS (SELECT 1 FROM operations o WHERE o.cert_id = ce.id AND o.status = 'inProgress'), \
                 (SELECT MAX(m.at) FROM lifecycle_marks m \
                    WHERE m.cert_id = ce.id AND m.version = v.version AND m.mark LIKE 'retry:%'), \
                 (SELECT j.payload FROM jobs j \
                    WHERE j.kind = 'cert' AND j.subject = CAST(ce.id AS TEXT)) \
                 FROM certificates ce \
                 JOIN vaults va ON va.id = ce.vault_id \
                 JOIN versions v ON v.id = (SELECT x.id FROM versions x \
                    WHERE x.cert_id = ce.id AND x.cer IS NOT NULL ORDER BY x.seq DESC LIMIT 1) \
                 WHERE ce.deleted_at IS NULL AND va.deleted_at IS NULL \
                 ORDER BY va.name_key, ce.name_key",
            )?;
            let rows = st.query_map([], |r| {
                let marks: Option<String> = r.get(8)?;
                let marks: Vec<String> = marks
                    .map(|m| m.split(MARK_SEP).map(str::to_owned).collect())
                    .unwrap_or_default();
                Ok(CertificateStatus {
                    vault: r.get(0)?,
                    name: r.get(1)?,
                    policy: r.get(2)?,
                    version: r.get(3)?,
                    seq: r.get(4)?,
                    created: r.get(5)?,
                    nbf: r.get(6)?,
                    exp: r.get(7)?,
                    made: marks.iter().any(|m| m == "made"),
                    marks,
                    op_in_progress: r.get(9)?,
                    last_failure_at: r.get(10)?,
                    job_payload: r.get(11)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// Copies the database into a new SQLite file at `out` with SQLite's online backup API,
    /// while the server keeps running: the copy is one consistent snapshot (the backup
    /// restarts when a write lands in the middle of it). `out` must not exist. Returns its
    /// size in bytes.
    pub async fn backup_to(&self, out: std::path::PathBuf) -> Result<u64, StoreError> {
        if out.exists() {
            return Err(StoreError::Open(format!("{} exists", out.display())));
        }
        let src = self.path().to_owned();
        tokio::task::spawn_blocking(move || {
            let from = rusqlite::Connection::open_with_flags(
                &src,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
            )
            .map_err(|e| StoreError::Open(e.to_string()))?;
            let mut to =
                rusqlite::Connection::open(&out).map_err(|e| StoreError::Open(e.to_string()))?;
            {
                let backup = rusqlite::backup::Backup::new(&from, &mut to)?;
                backup.run_to_completion(1024, std::time::Duration::from_millis(5), None)?;
            }
            // A self-contained file: no -wal beside it.
            to.pragma_update(None, "journal_mode", "DELETE")?;
            drop(to);
            let len = std::fs::metadata(&out)
                .map_err(|e| StoreError::Open(format!("{}: {e}", out.display())))?
                .len();
            Ok(len)
        })
        .await
        .map_err(|e| StoreError::Database(e.to_string()))?
    }

    /// The depth of the delivery outbox and the lifecycle job queue at `now`.
    pub async fn queue_status(&self, now: i64) -> Result<QueueStatus, StoreError> {
        self.read(move |c| {
            let (deliveries_pending, deliveries_dead): (i64, i64) = c.query_row(
                "SELECT COALESCE(SUM(status = 'pending'), 0), COALESCE(SUM(status = 'dead'), 0) \
                 FROM deliveries WHERE status IN ('pending', 'dead')",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            let oldest_due_delivery: Option<i64> = c.query_row(
                "SELECT MIN(next_try) FROM deliveries \
                 WHERE status = 'pending' AND leased = 0 AND next_try <= ?1",
                params![now],
                |r| r.get(0),
            )?;
            let (jobs_due, oldest_due_job): (i64, Option<i64>) = c.query_row(
                "SELECT COUNT(*), MIN(due) FROM jobs \
                 WHERE due <= ?1 AND (lease_until IS NULL OR lease_until <= ?1)",
                params![now],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            let jobs_leased: i64 = c.query_row(
                "SELECT COUNT(*) FROM jobs WHERE lease_until IS NOT NULL AND lease_until > ?1",
                params![now],
                |r| r.get(0),
            )?;
            Ok(QueueStatus {
                deliveries_pending,
                deliveries_dead,
                oldest_due_delivery,
                jobs_due,
                oldest_due_job,
                jobs_leased,
            })
        })
        .await
    }
}
