//! The scheduler on PostgreSQL: claims with `FOR UPDATE SKIP LOCKED`, so concurrent claimers
//! (several workers, later several replicas) get disjoint items; the lease is the `due` column
//! moved to the lease end (as on SQLite), so a dead claimer's items come back by themselves.

use tokio_postgres::Row;

use crate::jobs::JOB_COLS;
use crate::pg::{col, count, one};
use crate::{Job, JobNext, PgStore, Scheduler, StoreError};

fn job_row(r: &Row) -> Result<Job, StoreError> {
    Ok(Job {
        id: col(r, 0)?,
        kind: col(r, 1)?,
        subject: col(r, 2)?,
        cert_id: col(r, 3)?,
        due: col(r, 4)?,
        attempts: col(r, 5)?,
        generation: col(r, 6)?,
        payload: col(r, 7)?,
    })
}

/// Applies `next` to `job` if it still has the claimed generation (inside a transaction).
pub(crate) async fn finish_tx<C: deadpool_postgres::GenericClient>(
    c: &C,
    job: &Job,
    next: &JobNext,
) -> Result<bool, StoreError> {
    let n = match next {
        JobNext::Done => {
            c.execute(
                "DELETE FROM jobs WHERE id = $1 AND gen = $2",
                &[&job.id, &job.generation],
            )
            .await?
        }
        JobNext::At {
            due,
            payload,
            attempts,
        } => {
            c.execute(
                "UPDATE jobs SET due = $3, payload = $4, attempts = $5, lease_owner = NULL, \
                 lease_until = NULL WHERE id = $1 AND gen = $2",
                &[&job.id, &job.generation, due, payload, attempts],
            )
            .await?
        }
    };
    Ok(n > 0)
}

impl Scheduler for PgStore {
    async fn claim_due(
        &self,
        now: i64,
        owner: &str,
        lease: i64,
        limit: i64,
    ) -> Result<Vec<Job>, StoreError> {
        let until = now.saturating_add(lease);
        let c = self.conn().await?;
        let rows = c
            .query(
                &format!(
                    "UPDATE jobs SET lease_owner = $3, lease_until = $4, due = $4 WHERE id IN (\
                     SELECT id FROM jobs WHERE due <= $1 ORDER BY due LIMIT $2 \
                     FOR UPDATE SKIP LOCKED) RETURNING {JOB_COLS}"
                ),
                &[&now, &limit, &owner, &until],
            )
            .await?;
        let mut jobs = rows.iter().map(job_row).collect::<Result<Vec<_>, _>>()?;
        jobs.sort_by_key(|j| j.id);
        Ok(jobs)
    }

    async fn finish_job(&self, job: &Job, next: JobNext) -> Result<bool, StoreError> {
        let c = self.conn().await?;
        finish_tx(&c, job, &next).await
    }

    async fn put_job(
        &self,
        kind: &str,
        subject: &str,
        cert_id: Option<i64>,
        due: i64,
        payload: Option<String>,
    ) -> Result<Job, StoreError> {
        let c = self.conn().await?;
        let row = c
            .query_one(
                &format!(
                    "INSERT INTO jobs (kind, subject, cert_id, due, payload, gen) \
                     VALUES ($1, $2, $3, $4, $5, 1) \
                     ON CONFLICT (kind, subject) DO UPDATE SET due = excluded.due, \
                     payload = excluded.payload, attempts = 0, gen = jobs.gen + 1, \
                     lease_owner = NULL, lease_until = NULL RETURNING {JOB_COLS}"
                ),
                &[&kind, &subject, &cert_id, &due, &payload],
            )
            .await?;
        job_row(&row)
    }

    async fn release_leases(&self, now: i64) -> Result<usize, StoreError> {
        let c = self.conn().await?;
        let n = c
            .execute(
                "UPDATE jobs SET due = $1, lease_owner = NULL, lease_until = NULL \
                 WHERE lease_owner IS NOT NULL",
                &[&now],
            )
            .await?;
        Ok(count(n))
    }

    async fn release_leases_of(&self, owner: &str, now: i64) -> Result<usize, StoreError> {
        let c = self.conn().await?;
        let n = c
            .execute(
                "UPDATE jobs SET due = $1, lease_owner = NULL, lease_until = NULL \
                 WHERE lease_owner = $2",
                &[&now, &owner],
            )
            .await?;
        Ok(count(n))
    }

    async fn extend_lease(
        &self,
        id: i64,
        owner: &str,
        now: i64,
        lease: i64,
    ) -> Result<bool, StoreError> {
        let until = now.saturating_add(lease);
        let c = self.conn().await?;
        let n = c
            .execute(
                "UPDATE jobs SET lease_until = $1, due = $1 \
                 WHERE id = $2 AND lease_owner = $3 AND lease_until > $4",
                &[&until, &id, &owner, &now],
            )
            .await?;
        Ok(n == 1)
    }

    async fn leases_of(&self, owner: &str, now: i64) -> Result<usize, StoreError> {
        let c = self.conn().await?;
        let row = c
            .query_one(
                "SELECT COUNT(*) FROM jobs WHERE lease_owner = $1 AND lease_until > $2",
                &[&owner, &now],
            )
            .await?;
        let n: i64 = row.try_get(0)?;
        Ok(usize::try_from(n).unwrap_or(0))
    }
}

impl PgStore {
    /// The job of (`kind`, `subject`), if any.
    pub async fn job(&self, kind: &str, subject: &str) -> Result<Option<Job>, StoreError> {
        let c = self.conn().await?;
        one(
            &c,
            &format!("SELECT {JOB_COLS} FROM jobs WHERE kind = $1 AND subject = $2"),
            &[&kind, &subject],
            job_row,
        )
        .await
    }

    /// The query plan of the claim's selection (`EXPLAIN` lines).
    pub async fn claim_plan(&self) -> Result<Vec<String>, StoreError> {
        let c = self.conn().await?;
        let rows = c
            .query(
                "EXPLAIN SELECT id FROM jobs WHERE due <= $1 ORDER BY due LIMIT $2 \
                 FOR UPDATE SKIP LOCKED",
                &[&0i64, &10i64],
            )
            .await?;
        rows.iter().map(|r| col(r, 0)).collect()
    }
}
