//! The durable scheduler: work items are `jobs` rows with a due time and a lease.
//!
//! A worker *claims* due items (`due <= now`); claiming sets a lease (owner and end) and moves
//! `due` to the lease's end, so a claimed item leaves the due range and comes back by itself if
//! the worker dies before finishing it. Every query that looks for work is a range scan of the
//! `jobs_due` index, so its cost follows the number of due items, never the number of
//! certificates.
//!
//! Each row carries a generation (`gen`), bumped whenever the item is rescheduled from
//! elsewhere (a new version, a policy change — see the triggers below). A worker finishes an
//! item only if the generation is still the one it claimed; otherwise the item was replanned
//! meanwhile and the worker's outcome is dropped, the replanned item stands.
//!
//! Certificates get one job each (`kind = 'cert'`, subject = the certificate row id). Triggers
//! in the same transaction as the state change (version inserted or completed, policy changed,
//! certificate deleted or recovered, operation started or finished) reset it to "plan now"
//! (`due = 0`, `payload = NULL`), so a change reschedules at once and crash-safely.

use std::future::Future;

use rusqlite::{Connection, OptionalExtension, Row, params};

use crate::{SqliteStore, StoreError};

/// The schema of this module (one migration). The triggers avoid `INSERT OR …` and upserts
/// because the conflict clause of the outer statement (the store writes operations with
/// `INSERT OR REPLACE`) would override theirs.
pub(crate) const MIGRATION: &str = r#"
CREATE TABLE jobs (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    subject TEXT NOT NULL,
    cert_id INTEGER REFERENCES certificates(id) ON DELETE CASCADE,
    due INTEGER NOT NULL,
    lease_owner TEXT,
    lease_until INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0,
    gen INTEGER NOT NULL DEFAULT 0,
    payload TEXT,
    UNIQUE (kind, subject)
);
CREATE INDEX jobs_due ON jobs (due);
CREATE INDEX jobs_cert ON jobs (cert_id) WHERE cert_id IS NOT NULL;

-- Lifecycle facts per version: 'made' (certvault created or ordered it, as opposed to an
-- import), notices and actions already done ('notice:30d', 'action:0', …).
CREATE TABLE lifecycle_marks (
    cert_id INTEGER NOT NULL REFERENCES certificates(id) ON DELETE CASCADE,
    version TEXT NOT NULL,
    mark TEXT NOT NULL,
    at INTEGER NOT NULL,
    PRIMARY KEY (cert_id, version, mark)
) WITHOUT ROWID;

INSERT INTO jobs (kind, subject, cert_id, due, gen)
    SELECT 'cert', CAST(id AS TEXT), id, 0, 1 FROM certificates WHERE deleted_at IS NULL;
INSERT INTO lifecycle_marks (cert_id, version, mark, at)
    SELECT cert_id, version, 'made', created FROM operations;

CREATE TRIGGER lc_version_insert AFTER INSERT ON versions BEGIN
    UPDATE jobs SET due = 0, payload = NULL, attempts = 0, gen = gen + 1,
        lease_owner = NULL, lease_until = NULL
        WHERE kind = 'cert' AND subject = CAST(NEW.cert_id AS TEXT);
    INSERT INTO jobs (kind, subject, cert_id, due, gen)
        SELECT 'cert', CAST(NEW.cert_id AS TEXT), NEW.cert_id, 0, 1
        WHERE NOT EXISTS (SELECT 1 FROM jobs WHERE kind = 'cert' AND subject = CAST(NEW.cert_id AS TEXT));
END;
CREATE TRIGGER lc_version_update AFTER UPDATE OF cer, nbf, exp, enabled ON versions BEGIN
    UPDATE jobs SET due = 0, payload = NULL, attempts = 0, gen = gen + 1,
        lease_owner = NULL, lease_until = NULL
        WHERE kind = 'cert' AND subject = CAST(NEW.cert_id AS TEXT);
    INSERT INTO jobs (kind, subject, cert_id, due, gen)
        SELECT 'cert', CAST(NEW.cert_id AS TEXT), NEW.cert_id, 0, 1
        WHERE NOT EXISTS (SELECT 1 FROM jobs WHERE kind = 'cert' AND subject = CAST(NEW.cert_id AS TEXT));
END;
CREATE TRIGGER lc_cert_update AFTER UPDATE OF policy, deleted_at ON certificates BEGIN
    UPDATE jobs SET due = 0, payload = NULL, attempts = 0, gen = gen + 1,
        lease_owner = NULL, lease_until = NULL
        WHERE kind = 'cert' AND subject = CAST(NEW.id AS TEXT);
    INSERT INTO jobs (kind, subject, cert_id, due, gen)
        SELECT 'cert', CAST(NEW.id AS TEXT), NEW.id, 0, 1
        WHERE NOT EXISTS (SELECT 1 FROM jobs WHERE kind = 'cert' AND subject = CAST(NEW.id AS TEXT));
END;
CREATE TRIGGER lc_op_insert AFTER INSERT ON operations BEGIN
    INSERT INTO lifecycle_marks (cert_id, version, mark, at)
        SELECT NEW.cert_id, NEW.version, 'made', NEW.created
        WHERE NOT EXISTS (SELECT 1 FROM lifecycle_marks
            WHERE cert_id = NEW.cert_id AND version = NEW.version AND mark = 'made');
    UPDATE jobs SET due = 0, payload = NULL, attempts = 0, gen = gen + 1,
        lease_owner = NULL, lease_until = NULL
        WHERE kind = 'cert' AND subject = CAST(NEW.cert_id AS TEXT);
END;
CREATE TRIGGER lc_op_status AFTER UPDATE OF status ON operations BEGIN
    UPDATE jobs SET due = 0, payload = NULL, attempts = 0, gen = gen + 1,
        lease_owner = NULL, lease_until = NULL
        WHERE kind = 'cert' AND subject = CAST(NEW.cert_id AS TEXT);
END;
"#;

/// A claimed (or listed) work item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// Row id.
    pub id: i64,
    /// What kind of work (`cert`: a certificate's lifecycle).
    pub kind: String,
    /// What the work is about (for `cert`, the certificate row id).
    pub subject: String,
    /// The certificate, when the work is about one.
    pub cert_id: Option<i64>,
    /// When it is due (after a claim: when the lease ends).
    pub due: i64,
    /// Failed attempts since the item was last planned.
    pub attempts: i64,
    /// The generation claimed; outcomes apply only while it is unchanged.
    pub generation: i64,
    /// What to do, as JSON; `None` means "plan this item".
    pub payload: Option<String>,
}

pub(crate) const JOB_COLS: &str = "id, kind, subject, cert_id, due, attempts, gen, payload";

fn job_row(r: &Row<'_>) -> rusqlite::Result<Job> {
    Ok(Job {
        id: r.get(0)?,
        kind: r.get(1)?,
        subject: r.get(2)?,
        cert_id: r.get(3)?,
        due: r.get(4)?,
        attempts: r.get(5)?,
        generation: r.get(6)?,
        payload: r.get(7)?,
    })
}

/// The SQL that picks due items: a range scan of `jobs_due`, at most `?2` rows.
pub const CLAIM_SELECT: &str = "SELECT id FROM jobs WHERE due <= ?1 ORDER BY due LIMIT ?2";

/// Claims up to `limit` due items for `owner` until `now + lease` (inside a write).
pub(crate) fn claim_tx(
    c: &Connection,
    now: i64,
    owner: &str,
    lease: i64,
    limit: i64,
) -> Result<Vec<Job>, StoreError> {
    let until = now.saturating_add(lease);
    let mut st = c.prepare_cached(&format!(
        "UPDATE jobs SET lease_owner = ?3, lease_until = ?4, due = ?4 \
         WHERE id IN ({CLAIM_SELECT}) RETURNING {JOB_COLS}"
    ))?;
    let mut jobs = st
        .query_map(params![now, limit, owner, until], job_row)?
        .collect::<Result<Vec<_>, _>>()?;
    jobs.sort_by_key(|j| j.id);
    Ok(jobs)
}

/// What to do with a claimed item when the worker is done with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobNext {
    /// Remove the item (nothing more to do until a change recreates it).
    Done,
    /// Run it again at `due` with `payload` (`None`: plan again); `attempts` counts failures.
    At {
        /// When.
        due: i64,
        /// What.
        payload: Option<String>,
        /// Failed attempts so far.
        attempts: i64,
    },
}

/// Applies `next` to `job` if it still has the generation that was claimed (inside a write).
/// Returns whether it applied.
pub(crate) fn finish_tx(c: &Connection, job: &Job, next: &JobNext) -> Result<bool, StoreError> {
    let n = match next {
        JobNext::Done => c.execute(
            "DELETE FROM jobs WHERE id = ?1 AND gen = ?2",
            params![job.id, job.generation],
        )?,
        JobNext::At {
            due,
            payload,
            attempts,
        } => c.execute(
            "UPDATE jobs SET due = ?3, payload = ?4, attempts = ?5, lease_owner = NULL, \
             lease_until = NULL WHERE id = ?1 AND gen = ?2",
            params![job.id, job.generation, due, payload, attempts],
        )?,
    };
    Ok(n > 0)
}

/// The scheduler's method set. SQLite implements it with one writer and a range scan of the
/// `due` index; PostgreSQL will implement the claim with `FOR UPDATE SKIP LOCKED`.
pub trait Scheduler {
    /// Claims up to `limit` items due at `now`, leased to `owner` for `lease` seconds.
    fn claim_due(
        &self,
        now: i64,
        owner: &str,
        lease: i64,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<Job>, StoreError>> + Send;

    /// Finishes a claimed item (see [`JobNext`]); `false` when it was replanned meanwhile.
    fn finish_job(
        &self,
        job: &Job,
        next: JobNext,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Creates or replaces the item (`kind`, `subject`), due at `due`.
    fn put_job(
        &self,
        kind: &str,
        subject: &str,
        cert_id: Option<i64>,
        due: i64,
        payload: Option<String>,
    ) -> impl Future<Output = Result<Job, StoreError>> + Send;

    /// Makes every leased item due at `now` (at start: with one server per SQLite database,
    /// every lease belongs to a process that is gone). Returns how many.
    fn release_leases(&self, now: i64) -> impl Future<Output = Result<usize, StoreError>> + Send;

    /// Makes the items leased to `owner` due at `now` (at a clean shutdown: work this process
    /// claimed and did not finish is taken at once by the next claimer instead of after the
    /// lease). Returns how many.
    fn release_leases_of(
        &self,
        owner: &str,
        now: i64,
    ) -> impl Future<Output = Result<usize, StoreError>> + Send;

    /// How many items are leased to `owner` now.
    fn leases_of(
        &self,
        owner: &str,
        now: i64,
    ) -> impl Future<Output = Result<usize, StoreError>> + Send;

    /// Renews `owner`'s lease on job `id` for `lease` seconds from `now`, if `owner` still
    /// holds it and it has not run out; false when it has passed to another replica (or ran
    /// out), so the caller must not act on the job. Checked right before an action that must
    /// happen once (a renewal).
    fn extend_lease(
        &self,
        id: i64,
        owner: &str,
        now: i64,
        lease: i64,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
}

impl Scheduler for SqliteStore {
    async fn claim_due(
        &self,
        now: i64,
        owner: &str,
        lease: i64,
        limit: i64,
    ) -> Result<Vec<Job>, StoreError> {
        let owner = owner.to_owned();
        self.write_bookkeeping(move |c| claim_tx(c, now, &owner, lease, limit))
            .await
    }

    async fn finish_job(&self, job: &Job, next: JobNext) -> Result<bool, StoreError> {
        let job = job.clone();
        self.write_bookkeeping(move |c| finish_tx(c, &job, &next))
            .await
    }

    async fn put_job(
        &self,
        kind: &str,
        subject: &str,
        cert_id: Option<i64>,
        due: i64,
        payload: Option<String>,
    ) -> Result<Job, StoreError> {
        let kind = kind.to_owned();
        let subject = subject.to_owned();
        self.write(move |c| {
            c.execute(
                "INSERT INTO jobs (kind, subject, cert_id, due, payload, gen) \
                 VALUES (?1, ?2, ?3, ?4, ?5, 1) \
                 ON CONFLICT (kind, subject) DO UPDATE SET due = excluded.due, \
                 payload = excluded.payload, attempts = 0, gen = gen + 1, \
                 lease_owner = NULL, lease_until = NULL",
                params![kind, subject, cert_id, due, payload],
            )?;
            Ok(c.query_row(
                &format!("SELECT {JOB_COLS} FROM jobs WHERE kind = ?1 AND subject = ?2"),
                params![kind, subject],
                job_row,
            )?)
        })
        .await
    }

    async fn release_leases(&self, now: i64) -> Result<usize, StoreError> {
        self.write_bookkeeping(move |c| {
            Ok(c.execute(
                "UPDATE jobs SET due = ?1, lease_owner = NULL, lease_until = NULL \
                 WHERE lease_owner IS NOT NULL",
                [now],
            )?)
        })
        .await
    }

    async fn release_leases_of(&self, owner: &str, now: i64) -> Result<usize, StoreError> {
        let owner = owner.to_owned();
        self.write_bookkeeping(move |c| {
            Ok(c.execute(
                "UPDATE jobs SET due = ?1, lease_owner = NULL, lease_until = NULL \
                 WHERE lease_owner = ?2",
                params![now, owner],
            )?)
        })
        .await
    }

    async fn extend_lease(
        &self,
        id: i64,
        owner: &str,
        now: i64,
        lease: i64,
    ) -> Result<bool, StoreError> {
        let owner = owner.to_owned();
        let until = now.saturating_add(lease);
        self.write_bookkeeping(move |c| {
            Ok(c.execute(
                "UPDATE jobs SET lease_until = ?1, due = ?1 \
                 WHERE id = ?2 AND lease_owner = ?3 AND lease_until > ?4",
                params![until, id, owner, now],
            )? == 1)
        })
        .await
    }

    async fn leases_of(&self, owner: &str, now: i64) -> Result<usize, StoreError> {
        let owner = owner.to_owned();
        self.read(move |c| {
            let n: i64 = c.query_row(
                "SELECT COUNT(*) FROM jobs WHERE lease_owner = ?1 AND lease_until > ?2",
                params![owner, now],
                |r| r.get(0),
            )?;
            Ok(usize::try_from(n).unwrap_or(0))
        })
        .await
    }
}

impl SqliteStore {
    /// A write to the scheduler's and outbox's own tables (jobs, marks, events, deliveries):
    /// it changes no object a reader caches, so it does not advance the change epoch (the
    /// secret cache stays valid while the engine and the delivery worker run).
    pub(crate) async fn write_bookkeeping<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        F: FnOnce(&Connection) -> Result<R, StoreError> + Send + 'static,
        R: Send + 'static,
    {
        self.write_audit(f).await
    }

    /// The job of (`kind`, `subject`), if any.
    pub async fn job(&self, kind: &str, subject: &str) -> Result<Option<Job>, StoreError> {
        let kind = kind.to_owned();
        let subject = subject.to_owned();
        self.read(move |c| {
            Ok(c.query_row(
                &format!("SELECT {JOB_COLS} FROM jobs WHERE kind = ?1 AND subject = ?2"),
                params![kind, subject],
                job_row,
            )
            .optional()?)
        })
        .await
    }

    /// The query plan of the claim's selection, as `EXPLAIN QUERY PLAN` details.
    pub async fn claim_plan(&self) -> Result<Vec<String>, StoreError> {
        self.read(|c| {
            let mut st = c.prepare(&format!("EXPLAIN QUERY PLAN {CLAIM_SELECT}"))?;
            let rows = st
                .query_map(params![0i64, 10i64], |r| r.get::<_, String>(3))?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    use crate::Store;
    use crate::store::testing::backends;

    fn store() -> (tempfile::TempDir, SqliteStore) {
        let d = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&d.path().join("t.db")).unwrap();
        (d, s)
    }

    #[tokio::test]
    async fn claim_takes_due_items_once_and_leases_them() {
        for t in backends().await {
            eprintln!("backend: {}", t.store.backend());
            claim_on(&t.store).await;
        }
    }

    async fn claim_on(s: &Store) {
        for i in 0..10 {
            s.put_job("t", &i.to_string(), None, 100 + i, None)
                .await
                .unwrap();
        }
        // Nothing due before 100.
        assert!(s.claim_due(99, "w1", 30, 100).await.unwrap().is_empty());
        let a = s.claim_due(104, "w1", 30, 100).await.unwrap();
        assert_eq!(a.len(), 5);
        assert!(a.iter().all(|j| j.due == 134));
        // Claimed items are not claimed again while leased.
        let b = s.claim_due(110, "w2", 30, 100).await.unwrap();
        assert_eq!(
            b.iter().map(|j| j.subject.as_str()).collect::<Vec<_>>(),
            ["5", "6", "7", "8", "9"]
        );
        // The lease of the first batch ends at 134: a dead worker's items come back.
        let c = s.claim_due(134, "w3", 30, 100).await.unwrap();
        assert_eq!(c.len(), 5);
        assert_eq!(c[0].subject, "0");
        // The limit holds.
        for i in 10..20 {
            s.put_job("t", &i.to_string(), None, 0, None).await.unwrap();
        }
        assert_eq!(s.claim_due(1, "w", 30, 3).await.unwrap().len(), 3);
    }

    #[tokio::test]
    async fn finish_applies_only_to_the_claimed_generation() {
        for t in backends().await {
            eprintln!("backend: {}", t.store.backend());
            finish_on(&t.store).await;
        }
    }

    async fn finish_on(s: &Store) {
        s.put_job("t", "a", None, 5, Some("x".into()))
            .await
            .unwrap();
        let j = s.claim_due(10, "w", 60, 10).await.unwrap().remove(0);
        // Replanned meanwhile (e.g. a policy change): the worker's outcome is dropped.
        s.put_job("t", "a", None, 0, None).await.unwrap();
        assert!(!s.finish_job(&j, JobNext::Done).await.unwrap());
        let j2 = s.claim_due(10, "w", 60, 10).await.unwrap().remove(0);
        assert_eq!(j2.payload, None);
        assert!(
            s.finish_job(
                &j2,
                JobNext::At {
                    due: 50,
                    payload: Some("y".into()),
                    attempts: 2
                }
            )
            .await
            .unwrap()
        );
        let j3 = s.job("t", "a").await.unwrap().unwrap();
        assert_eq!((j3.due, j3.attempts), (50, 2));
        assert_eq!(j3.payload.as_deref(), Some("y"));
        let j4 = s.claim_due(50, "w", 60, 10).await.unwrap().remove(0);
        assert!(s.finish_job(&j4, JobNext::Done).await.unwrap());
        assert!(s.job("t", "a").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn release_leases_makes_leased_items_due() {
        for t in backends().await {
            eprintln!("backend: {}", t.store.backend());
            release_on(&t.store).await;
        }
    }

    async fn release_on(s: &Store) {
        s.put_job("t", "a", None, 5, None).await.unwrap();
        s.put_job("t", "b", None, 500, None).await.unwrap();
        assert_eq!(s.claim_due(10, "dead", 3600, 10).await.unwrap().len(), 1);
        assert!(s.claim_due(11, "w", 60, 10).await.unwrap().is_empty());
        assert_eq!(s.release_leases(11).await.unwrap(), 1);
        assert_eq!(s.claim_due(11, "w", 60, 10).await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_lease_is_extended_only_by_its_live_holder() {
        let (_d, s) = store();
        s.put_job("t", "a", None, 5, None).await.unwrap();
        let job = s.claim_due(10, "me", 60, 1).await.unwrap().remove(0);
        assert!(
            !s.extend_lease(job.id, "other", 20, 60).await.unwrap(),
            "not its holder"
        );
        assert!(s.extend_lease(job.id, "me", 20, 60).await.unwrap());
        // extended to 80: nobody else can claim it at 75
        assert!(s.claim_due(75, "other", 60, 1).await.unwrap().is_empty());
        // once it ran out it goes to another replica, and the old holder may not act on it
        assert_eq!(s.claim_due(81, "other", 60, 1).await.unwrap().len(), 1);
        assert!(!s.extend_lease(job.id, "me", 82, 60).await.unwrap());
    }

    #[tokio::test]
    async fn release_leases_of_frees_only_that_owners_items() {
        let (_d, s) = store();
        s.put_job("t", "a", None, 5, None).await.unwrap();
        s.put_job("t", "b", None, 6, None).await.unwrap();
        assert_eq!(s.claim_due(10, "me", 3600, 1).await.unwrap().len(), 1);
        assert_eq!(s.claim_due(10, "other", 3600, 1).await.unwrap().len(), 1);
        assert_eq!(s.leases_of("me", 11).await.unwrap(), 1);
        assert_eq!(s.release_leases_of("me", 11).await.unwrap(), 1);
        assert_eq!(s.leases_of("me", 11).await.unwrap(), 0);
        assert_eq!(s.leases_of("other", 11).await.unwrap(), 1);
        // The released item is due at once; the other stays leased.
        let again = s.claim_due(11, "w", 60, 10).await.unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].subject, "a");
    }

    #[tokio::test]
    async fn the_claim_is_a_range_scan_of_the_due_index() {
        let (_d, s) = store();
        let plan = s.claim_plan().await.unwrap().join(" | ");
        assert!(
            plan.contains("SEARCH jobs USING") && plan.contains("jobs_due (due<?)"),
            "{plan}"
        );
        assert!(!plan.contains("SCAN jobs"), "{plan}");
        assert!(!plan.contains("TEMP B-TREE"), "{plan}");
    }

    /// Two claimers at once get disjoint items: on PostgreSQL through `FOR UPDATE SKIP
    /// LOCKED` (each claim is its own transaction on its own connection), on SQLite through
    /// the single writer.
    #[tokio::test]
    async fn concurrent_claims_are_disjoint() {
        for t in backends().await {
            eprintln!("backend: {}", t.store.backend());
            let s = &t.store;
            for i in 0..200 {
                s.put_job("t", &i.to_string(), None, i, None).await.unwrap();
            }
            let mut tasks = Vec::new();
            for w in 0..8 {
                let s = s.clone();
                tasks.push(tokio::spawn(async move {
                    let mut got = Vec::new();
                    loop {
                        let batch = s.claim_due(1000, &format!("w{w}"), 600, 7).await.unwrap();
                        if batch.is_empty() {
                            break got;
                        }
                        got.extend(batch.into_iter().map(|j| j.id));
                    }
                }));
            }
            let mut all = Vec::new();
            for task in tasks {
                all.extend(task.await.unwrap());
            }
            let n = all.len();
            all.sort_unstable();
            all.dedup();
            assert_eq!((n, all.len()), (200, 200), "each item claimed exactly once");
        }
    }
}
