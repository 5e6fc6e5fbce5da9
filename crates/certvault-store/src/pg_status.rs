//! The monitoring views of `status.rs` and the readiness probe on PostgreSQL.

use crate::pg::{all, col, one};
use crate::pg_schema::PG_MIGRATIONS;
use crate::status::horizons;
use crate::{CertificateCounts, CertificateStatus, PgStore, QueueStatus, StoreError, StoreHealth};

/// The soonest-expiring live certificates (`$1` = the limit; see `status.rs`).
pub(crate) const PG_CERTIFICATE_STATUSES_SQL: &str = "WITH top AS (\
               SELECT c.id AS cid, va.name AS vname, va.name_key AS vkey, c.sort_exp AS sexp, \
                 c.name_key AS nkey \
               FROM vaults va CROSS JOIN LATERAL (\
                 SELECT c.id, c.sort_exp, c.name_key FROM certificates c \
                 WHERE c.vault_id = va.id AND c.deleted_at IS NULL \
                 AND EXISTS (SELECT 1 FROM versions x WHERE x.cert_id = c.id AND x.cer IS NOT NULL) \
                 ORDER BY c.sort_exp, c.name_key LIMIT $1) c \
               WHERE va.deleted_at IS NULL \
               ORDER BY c.sort_exp, va.name_key, c.name_key LIMIT $1) \
             SELECT t.vname, ce.name, ce.policy, v.version, v.seq, v.created, v.nbf, v.exp, \
             ARRAY(SELECT m.mark FROM lifecycle_marks m \
                WHERE m.cert_id = ce.id AND m.version = v.version ORDER BY m.mark), \
             EXISTS (SELECT 1 FROM operations o WHERE o.cert_id = ce.id AND o.status = 'inProgress'), \
             (SELECT MAX(m.at) FROM lifecycle_marks m \
                WHERE m.cert_id = ce.id AND m.version = v.version AND m.mark LIKE 'retry:%'), \
             (SELECT j.payload FROM jobs j WHERE j.kind = 'cert' AND j.subject = ce.id::text) \
             FROM top t \
             JOIN certificates ce ON ce.id = t.cid \
             JOIN versions v ON v.id = (SELECT x.id FROM versions x \
                WHERE x.cert_id = ce.id AND x.cer IS NOT NULL ORDER BY x.seq DESC LIMIT 1) \
             ORDER BY t.sexp, t.vkey, t.nkey";

impl PgStore {
    /// The `limit` live certificates whose current version expires soonest (see
    /// `SqliteStore::certificate_statuses`): per live vault a `LATERAL` top-`limit` on the
    /// `(vault_id, sort_exp, name_key)` index, the first `limit` of those, then their details.
    pub async fn certificate_statuses(
        &self,
        limit: usize,
    ) -> Result<Vec<CertificateStatus>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        if limit <= 0 {
            return Ok(Vec::new());
        }
        let c = self.conn().await?;
        all(&c, PG_CERTIFICATE_STATUSES_SQL, &[&limit], |r| {
            let marks: Vec<String> = col(r, 8)?;
            Ok(CertificateStatus {
                vault: col(r, 0)?,
                name: col(r, 1)?,
                policy: col(r, 2)?,
                version: col(r, 3)?,
                seq: col(r, 4)?,
                created: col(r, 5)?,
                nbf: col(r, 6)?,
                exp: col(r, 7)?,
                made: marks.iter().any(|m| m == "made"),
                marks,
                op_in_progress: col(r, 9)?,
                last_failure_at: col(r, 10)?,
                job_payload: col(r, 11)?,
            })
        })
        .await
    }

    /// How many live certificates have a completed version, and how many expire within 7 and
    /// 30 days of `now` (see `SqliteStore::certificate_counts`).
    pub async fn certificate_counts(&self, now: i64) -> Result<CertificateCounts, StoreError> {
        let (d7, d30) = horizons(now);
        let c = self.conn().await?;
        let row = one(
            &c,
            "SELECT COUNT(*), COUNT(*) FILTER (WHERE ce.sort_exp <= $1), \
             COUNT(*) FILTER (WHERE ce.sort_exp <= $2) \
             FROM certificates ce JOIN vaults va ON va.id = ce.vault_id \
             WHERE ce.deleted_at IS NULL AND va.deleted_at IS NULL \
             AND EXISTS (SELECT 1 FROM versions x WHERE x.cert_id = ce.id AND x.cer IS NOT NULL)",
            &[&d7, &d30],
            |r| {
                Ok(CertificateCounts {
                    total: col(r, 0)?,
                    expiring_7d: col(r, 1)?,
                    expiring_30d: col(r, 2)?,
                })
            },
        )
        .await?;
        row.ok_or_else(|| {
            StoreError::Database("the certificate count query returned no row".into())
        })
    }

    /// The depth of the delivery outbox and the lifecycle job queue at `now`.
    pub async fn queue_status(&self, now: i64) -> Result<QueueStatus, StoreError> {
        let c = self.conn().await?;
        let row = one(
            &c,
            "SELECT \
               (SELECT COUNT(*) FROM deliveries WHERE status = 'pending'), \
               (SELECT COUNT(*) FROM deliveries WHERE status = 'dead'), \
               (SELECT MIN(next_try) FROM deliveries \
                  WHERE status = 'pending' AND leased = 0 AND next_try <= $1), \
               (SELECT COUNT(*) FROM jobs \
                  WHERE due <= $1 AND (lease_until IS NULL OR lease_until <= $1)), \
               (SELECT MIN(due) FROM jobs \
                  WHERE due <= $1 AND (lease_until IS NULL OR lease_until <= $1)), \
               (SELECT COUNT(*) FROM jobs WHERE lease_until IS NOT NULL AND lease_until > $1)",
            &[&now],
            |r| {
                Ok(QueueStatus {
                    deliveries_pending: col(r, 0)?,
                    deliveries_dead: col(r, 1)?,
                    oldest_due_delivery: col(r, 2)?,
                    jobs_due: col(r, 3)?,
                    oldest_due_job: col(r, 4)?,
                    jobs_leased: col(r, 5)?,
                })
            },
        )
        .await?;
        row.ok_or_else(|| StoreError::Database("the queue status query returned no row".into()))
    }

    /// The readiness probe's look at the database: a round trip and the schema version.
    pub async fn health(&self) -> Result<StoreHealth, StoreError> {
        let c = self.conn().await?;
        let version = one(
            &c,
            "SELECT COALESCE(MAX(version), 0)::BIGINT FROM schema_migrations",
            &[],
            |r| col::<i64>(r, 0),
        )
        .await?
        .unwrap_or(0);
        Ok(StoreHealth {
            writer: true,
            schema_version: version,
            schema_expected: i64::try_from(PG_MIGRATIONS.len()).unwrap_or(i64::MAX),
        })
    }
}
