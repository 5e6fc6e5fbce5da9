//! Read-only views for monitoring (the `/metrics` endpoint): the soonest-expiring live
//! certificates' current versions with their lifecycle marks in one bounded query, the counts
//! of all live certificates by expiry, and the depth of the work queues.

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

/// The `/metrics` count of leased lifecycle items reads only the leased ones (one migration, the
/// same text on SQLite and PostgreSQL): without it the count scanned every certificate's job
/// on each scrape (~100 ms at 1,000,000 certificates).
pub(crate) const LEASED_JOBS_MIGRATION: &str =
    "CREATE INDEX jobs_leased ON jobs (lease_until) WHERE lease_until IS NOT NULL;\n";

/// The leased lifecycle items at `?1` (the partial index [`LEASED_JOBS_MIGRATION`]).
pub(crate) const LEASED_JOBS_SQL: &str =
    "SELECT COUNT(*) FROM jobs WHERE lease_until IS NOT NULL AND lease_until > ?1";

/// The live certificates with a completed version, counted by expiry
/// ([`SqliteStore::certificate_counts`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CertificateCounts {
    /// Live certificates (neither they nor their vault deleted) with a completed version.
    pub total: i64,
    /// Those whose current version expires within 7 days (expired ones included).
    pub expiring_7d: i64,
    /// Those whose current version expires within 30 days (expired ones included).
    pub expiring_30d: i64,
}

/// The horizons of [`CertificateCounts`]: `now` + 7 days and `now` + 30 days.
pub(crate) fn horizons(now: i64) -> (i64, i64) {
    (
        now.saturating_add(7 * 86_400),
        now.saturating_add(30 * 86_400),
    )
}

/// The soonest-expiring live certificates (`?1` = the limit): per live vault at most `?1`
/// ids from the `(vault_id, sort_exp, name_key)` index (skipping deleted ones and those
/// without a completed version), the first `?1` of them by (expiry, vault, name), and only
/// then their policy, current version, marks, operation and job.
const CERTIFICATE_STATUSES_SQL: &str = "\
WITH top AS (\
  SELECT ce.id AS cid, va.name AS vname, va.name_key AS vkey, ce.sort_exp AS sexp, ce.name_key AS nkey \
  FROM vaults va CROSS JOIN certificates ce ON ce.id IN (\
    SELECT c.id FROM certificates c \
    WHERE c.vault_id = va.id AND c.deleted_at IS NULL \
    AND EXISTS (SELECT 1 FROM versions x WHERE x.cert_id = c.id AND x.cer IS NOT NULL) \
    ORDER BY c.sort_exp, c.name_key LIMIT ?1) \
  WHERE va.deleted_at IS NULL \
  ORDER BY ce.sort_exp, va.name_key, ce.name_key LIMIT ?1) \
SELECT t.vname, ce.name, ce.policy, v.version, v.seq, v.created, v.nbf, v.exp, \
 (SELECT group_concat(m.mark, char(31)) FROM lifecycle_marks m \
    WHERE m.cert_id = ce.id AND m.version = v.version), \
 EXISTS (SELECT 1 FROM operations o WHERE o.cert_id = ce.id AND o.status = 'inProgress'), \
 (SELECT MAX(m.at) FROM lifecycle_marks m \
    WHERE m.cert_id = ce.id AND m.version = v.version AND m.mark LIKE 'retry:%'), \
 (SELECT j.payload FROM jobs j \
    WHERE j.kind = 'cert' AND j.subject = CAST(ce.id AS TEXT)) \
FROM top t \
JOIN certificates ce ON ce.id = t.cid \
JOIN versions v ON v.id = (SELECT x.id FROM versions x \
   WHERE x.cert_id = ce.id AND x.cer IS NOT NULL ORDER BY x.seq DESC LIMIT 1) \
ORDER BY t.sexp, t.vkey, t.nkey";

impl SqliteStore {
    /// The `limit` live certificates whose current version (newest completed) expires
    /// soonest, with that version and its marks, in one query; ties by vault name, then
    /// certificate name, so the same set comes back from scrape to scrape. `limit` 0 returns
    /// none. Certificates without a completed version are left out.
    ///
    /// The order is the console's `certificates.sort_exp` (kept by triggers: the expiry of the
    /// newest completed version), read per live vault from the `(vault_id, sort_exp,
    /// name_key)` index with at most `limit` rows each: never more than vaults × `limit` rows
    /// are looked at, and only the `limit` kept load their policy, marks and job.
    pub async fn certificate_statuses(
        &self,
        limit: usize,
    ) -> Result<Vec<CertificateStatus>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        if limit <= 0 {
            return Ok(Vec::new());
        }
        self.read(move |c| {
            let mut st = c.prepare_cached(CERTIFICATE_STATUSES_SQL)?;
            let rows = st.query_map(params![limit], |r| {
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

    /// How many live certificates have a completed version, and how many of them expire
    /// (current version's notAfter) at or before `now` + 7 days and `now` + 30 days, expired
    /// ones included. Counted in SQL, no row loaded.
    pub async fn certificate_counts(&self, now: i64) -> Result<CertificateCounts, StoreError> {
        let (d7, d30) = horizons(now);
        self.read(move |c| {
            Ok(c.query_row(
                "SELECT COUNT(*), COALESCE(SUM(ce.sort_exp <= ?1), 0), \
                 COALESCE(SUM(ce.sort_exp <= ?2), 0) \
                 FROM certificates ce JOIN vaults va ON va.id = ce.vault_id \
                 WHERE ce.deleted_at IS NULL AND va.deleted_at IS NULL \
                 AND EXISTS (SELECT 1 FROM versions x WHERE x.cert_id = ce.id AND x.cer IS NOT NULL)",
                params![d7, d30],
                |r| {
                    Ok(CertificateCounts {
                        total: r.get(0)?,
                        expiring_7d: r.get(1)?,
                        expiring_30d: r.get(2)?,
                    })
                },
            )?)
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
            let jobs_leased: i64 = c.query_row(LEASED_JOBS_SQL, params![now], |r| r.get(0))?;
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::{NewVersion, VersionRecord};

    const NOW: i64 = 1_000_000;
    const DAY: i64 = 86_400;

    fn version(i: usize, exp: Option<i64>) -> NewVersion {
        NewVersion {
            record: VersionRecord {
                cert_id: 0,
                version: format!("{i:032x}"),
                seq: 0,
                created: 1,
                updated: 1,
                enabled: true,
                nbf: Some(1),
                exp,
                tags: None,
                cer: exp.map(|_| vec![1, 2, 3]),
                chain: Vec::new(),
                key_blob: None,
                key_ref: None,
                spki: vec![1],
                content_type: "application/x-pkcs12".into(),
                exportable: true,
                preserve_order: false,
                key_ops: None,
            },
            operation: None,
        }
    }

    /// Vault `v`: five live certificates of distinct expiries (one expired), one pending (no
    /// completed version), one soft-deleted that would expire first; vault `a` (sorts first):
    /// `zed`, expiring at the same second as `v/Bravo`; vault `gone` (soft-deleted) with a
    /// certificate expired long ago.
    async fn seed(store: &crate::Store) {
        let v = store.create_vault("v", vec![0], 90, 1).await.unwrap();
        let a = store.create_vault("a", vec![0], 90, 1).await.unwrap();
        let gone = store.create_vault("gone", vec![0], 90, 1).await.unwrap();
        let policy = r#"{"issuer":{"name":"Self"}}"#;
        let certs = [
            (v.id, "alpha", Some(NOW + 40 * DAY)),
            (v.id, "Bravo", Some(NOW + 3 * DAY)),
            (v.id, "charlie", Some(NOW - 10)),
            (v.id, "delta", Some(NOW + 20 * DAY)),
            (v.id, "echo", Some(NOW + 100 * DAY)),
            (v.id, "pending", None),
            (v.id, "deleted", Some(NOW - 5 * DAY)),
            (a.id, "zed", Some(NOW + 3 * DAY)),
            (gone.id, "old", Some(NOW - 50 * DAY)),
        ];
        for (i, (vault, name, exp)) in certs.into_iter().enumerate() {
            let (cert, _) = store
                .add_version(vault, name, policy.into(), 1, version(i, exp))
                .await
                .unwrap();
            if name == "deleted" {
                store.soft_delete(cert.id, 2, NOW + 90 * DAY).await.unwrap();
            }
        }
        store
            .soft_delete_vault("gone", 2, NOW + 90 * DAY)
            .await
            .unwrap();
    }

    fn names(rows: &[CertificateStatus]) -> Vec<String> {
        rows.iter()
            .map(|r| format!("{}/{}", r.vault, r.name))
            .collect()
    }

    #[tokio::test]
    async fn soonest_expiring_first_bounded_by_the_limit_and_counts_of_all_on_both_backends() {
        for t in crate::store::testing::backends().await {
            let store = &t.store;
            seed(store).await;
            let two = store.certificate_statuses(2).await.unwrap();
            assert_eq!(names(&two), ["v/charlie", "a/zed"]);
            assert_eq!(two[0].exp, Some(NOW - 10));
            assert_eq!(two[0].policy, r#"{"issuer":{"name":"Self"}}"#);
            // ties by vault name: a/zed before v/Bravo, both at NOW + 3 days
            assert_eq!(
                names(&store.certificate_statuses(3).await.unwrap()),
                ["v/charlie", "a/zed", "v/Bravo"]
            );
            assert!(store.certificate_statuses(0).await.unwrap().is_empty());
            // everything live with a completed version, soonest first: no pending, no
            // deleted certificate, nothing of the deleted vault
            let all = store.certificate_statuses(100).await.unwrap();
            assert_eq!(
                names(&all),
                [
                    "v/charlie",
                    "a/zed",
                    "v/Bravo",
                    "v/delta",
                    "v/alpha",
                    "v/echo"
                ]
            );
            let exps: Vec<Option<i64>> = all.iter().map(|r| r.exp).collect();
            assert!(exps.windows(2).all(|w| w[0] <= w[1]), "{exps:?}");
            assert_eq!(
                store.certificate_counts(NOW).await.unwrap(),
                CertificateCounts {
                    total: 6,
                    expiring_7d: 3,
                    expiring_30d: 4,
                }
            );
            // the horizons are inclusive and move with `now`
            assert_eq!(
                store
                    .certificate_counts(NOW + 3 * DAY - 7 * DAY)
                    .await
                    .unwrap()
                    .expiring_7d,
                3
            );
            assert_eq!(
                store
                    .certificate_counts(NOW + 3 * DAY - 7 * DAY - 1)
                    .await
                    .unwrap()
                    .expiring_7d,
                1
            );
            // a renewal (a newer completed version) moves the certificate by its new expiry
            let bravo = store.certificate_statuses(3).await.unwrap()[2].clone();
            assert_eq!(bravo.name, "Bravo");
            store
                .add_version(
                    vault_id(store, "v").await,
                    "Bravo",
                    r#"{"issuer":{"name":"Self"}}"#.into(),
                    3,
                    version(50, Some(NOW + 200 * DAY)),
                )
                .await
                .unwrap();
            let after = store.certificate_statuses(100).await.unwrap();
            assert_eq!(after.last().map(|r| r.name.as_str()), Some("Bravo"));
            assert_eq!(after.last().unwrap().seq, 2);
            assert_eq!(
                store.certificate_counts(NOW).await.unwrap(),
                CertificateCounts {
                    total: 6,
                    expiring_7d: 2,
                    expiring_30d: 3,
                }
            );
        }
    }

    async fn vault_id(store: &crate::Store, name: &str) -> i64 {
        store.vault(name).await.unwrap().unwrap().id
    }

    /// The leased-items count of `/metrics` reads the partial index of leased jobs, not the
    /// whole `jobs` table (one row per certificate).
    #[tokio::test]
    async fn the_leased_jobs_count_reads_the_partial_index() {
        let t = crate::store::testing::sqlite().await;
        seed(&t.store).await;
        let c = rusqlite::Connection::open(&t.database).unwrap();
        let mut st = c
            .prepare(&format!("EXPLAIN QUERY PLAN {LEASED_JOBS_SQL}"))
            .unwrap();
        let plan: Vec<String> = st
            .query_map(params![0], |r| r.get::<_, String>(3))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let text = plan.join("\n");
        assert!(text.contains("USING COVERING INDEX jobs_leased"), "{text}");
        assert!(!text.contains("SCAN jobs"), "{text}");
    }

    /// The per-vault top-N reads the `(vault_id, sort_exp, name_key)` index in order (no sort of
    /// a vault's certificates), and the counts read no row beyond the certificates.
    #[tokio::test]
    async fn the_sqlite_query_reads_the_expiry_index_in_order() {
        let t = crate::store::testing::sqlite().await;
        seed(&t.store).await;
        let c = rusqlite::Connection::open(&t.database).unwrap();
        let mut st = c
            .prepare(&format!("EXPLAIN QUERY PLAN {CERTIFICATE_STATUSES_SQL}"))
            .unwrap();
        let plan: Vec<String> = st
            .query_map(params![10], |r| r.get::<_, String>(3))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let text = plan.join("\n");
        assert!(
            text.contains("USING INDEX certificates_exp (vault_id=?)"),
            "{text}"
        );
        // one sort only: of the (at most vaults × limit) candidates, not of a vault's rows
        assert_eq!(
            plan.iter()
                .filter(|l| l.contains("TEMP B-TREE FOR ORDER BY"))
                .count(),
            1,
            "{text}"
        );
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod pg_plan {
    use crate::Store;
    use crate::pg::{all, col};
    use crate::pg_status::PG_CERTIFICATE_STATUSES_SQL;

    /// With 5,000 analyzed certificates PostgreSQL reads each vault's top `limit` from the
    /// `(vault_id, sort_exp, name_key)` index (no sort of the vault's certificates), and the
    /// soonest come back.
    #[tokio::test]
    async fn the_postgres_query_reads_the_expiry_index_in_order() {
        let t = crate::store::testing::postgres().await;
        let v = t.store.create_vault("bulk", vec![0], 90, 1).await.unwrap();
        t.raw(&format!(
            "INSERT INTO certificates (vault_id, name, name_key, policy, policy_created, \
               policy_updated, created, updated) \
             SELECT {vid}, 'c' || g, 'c' || g, '{{}}', 1, 1, 1, 1 FROM generate_series(1, 5000) g;
             INSERT INTO versions (cert_id, version, seq, created, updated, enabled, nbf, exp, \
               cer, chain, spki, content_type, exportable) \
             SELECT id, 'v' || id, 1, 1, 1, true, 1, 3000000 - id, '\\x01'::bytea, ''::bytea, \
               '\\x01'::bytea, 'application/x-pkcs12', true FROM certificates WHERE vault_id = {vid};
             ANALYZE;",
            vid = v.id
        ))
        .await
        .unwrap();
        let Store::Postgres(p) = &t.store else {
            panic!("not PostgreSQL");
        };
        let c = p.conn().await.unwrap();
        let plan: Vec<String> = all(
            &c,
            &format!("EXPLAIN {PG_CERTIFICATE_STATUSES_SQL}"),
            &[&10i64],
            |r| col::<String>(r, 0),
        )
        .await
        .unwrap();
        let text = plan.join("\n");
        assert!(
            text.contains("certificates_exp on certificates c"),
            "{text}"
        );
        drop(c);
        let rows = t.store.certificate_statuses(3).await.unwrap();
        let names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["c5000", "c4999", "c4998"]);
        let counts = t.store.certificate_counts(0).await.unwrap();
        assert_eq!(counts.total, 5000);
    }
}
