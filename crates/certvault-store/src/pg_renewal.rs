//! The audit outbox on PostgreSQL (see [`crate::renewal`]): claims take rows with
//! `FOR UPDATE SKIP LOCKED`, so replicas draining at once get disjoint rows.

use deadpool_postgres::GenericClient;
use tokio_postgres::Row;

use crate::pg::col;
use crate::renewal::OUTBOX_COLS;
use crate::{AuditIntent, AuditOutboxRow, PgStore, StoreError};

fn outbox_row(r: &Row) -> Result<AuditOutboxRow, StoreError> {
    Ok(AuditOutboxRow {
        id: col(r, 0)?,
        created: col(r, 1)?,
        operation: col(r, 2)?,
        vault: col(r, 3)?,
        object: col(r, 4)?,
        outcome: col(r, 5)?,
        detail: col(r, 6)?,
    })
}

/// Inserts `a` into `audit_outbox` (inside the renewal's transaction); its row id.
pub(crate) async fn insert_audit_outbox<C: GenericClient>(
    c: &C,
    a: &AuditIntent,
    now: i64,
) -> Result<i64, StoreError> {
    let r = c
        .query_one(
            "INSERT INTO audit_outbox (created, operation, vault, object, outcome, detail, \
             lease_owner, lease_until) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
            &[
                &now,
                &a.operation,
                &a.vault,
                &a.object,
                &a.outcome,
                &a.detail,
                &a.owner,
                &a.lease_until,
            ],
        )
        .await?;
    col(&r, 0)
}

impl PgStore {
    /// Claims outbox rows; see [`crate::SqliteStore::claim_audit_outbox`].
    pub async fn claim_audit_outbox(
        &self,
        owner: &str,
        now: i64,
        lease: i64,
        only: Option<i64>,
        limit: i64,
    ) -> Result<Vec<AuditOutboxRow>, StoreError> {
        let c = self.conn().await?;
        let rows = c
            .query(
                &format!(
                    "UPDATE audit_outbox SET lease_owner = $1, lease_until = $2 + $3 \
                     WHERE id IN (SELECT id FROM audit_outbox \
                     WHERE (lease_owner = $1 OR lease_until <= $2) \
                     AND ($4::BIGINT IS NULL OR id = $4) \
                     ORDER BY id LIMIT $5 FOR UPDATE SKIP LOCKED) RETURNING {OUTBOX_COLS}"
                ),
                &[&owner, &now, &lease, &only, &limit],
            )
            .await?;
        let mut out = rows.iter().map(outbox_row).collect::<Result<Vec<_>, _>>()?;
        out.sort_by_key(|r| r.id);
        Ok(out)
    }

    /// Deletes an outbox row (its record is in the audit chain).
    pub async fn delete_audit_outbox(&self, id: i64) -> Result<(), StoreError> {
        let c = self.conn().await?;
        c.execute("DELETE FROM audit_outbox WHERE id = $1", &[&id])
            .await?;
        Ok(())
    }

    /// Rows waiting in the audit outbox.
    pub async fn audit_outbox_depth(&self) -> Result<i64, StoreError> {
        let c = self.conn().await?;
        let r = c
            .query_one("SELECT COUNT(*) FROM audit_outbox", &[])
            .await?;
        col(&r, 0)
    }
}
