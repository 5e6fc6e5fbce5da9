//! ACME accounts and orders on PostgreSQL (see `acme.rs`).

use deadpool_postgres::GenericClient;
use tokio_postgres::Row;

use crate::acme::ORDER_COLS;
use crate::pg::{all, col, one};
use crate::{AcmeAccountRecord, AcmeOrderRecord, Conflict, PgStore, StoreError};

fn order_row(r: &Row) -> Result<AcmeOrderRecord, StoreError> {
    Ok(AcmeOrderRecord {
        id: col(r, 0)?,
        vault_id: col(r, 1)?,
        vault_key: col(r, 2)?,
        cert_key: col(r, 3)?,
        version: col(r, 4)?,
        issuer_key: col(r, 5)?,
        enabled: col(r, 6)?,
        state: col(r, 7)?,
        status: col(r, 8)?,
        created: col(r, 9)?,
        updated: col(r, 10)?,
        acknowledged: col(r, 11)?,
    })
}

async fn get_order<C: GenericClient>(
    c: &C,
    id: i64,
) -> Result<Option<AcmeOrderRecord>, StoreError> {
    one(
        c,
        &format!("SELECT {ORDER_COLS} FROM acme_orders WHERE id = $1"),
        &[&id],
        order_row,
    )
    .await
}

impl PgStore {
    /// The stored account of an issuer for a configuration fingerprint.
    pub async fn acme_account(
        &self,
        vault_id: i64,
        issuer_key: &str,
        fingerprint: &str,
    ) -> Result<Option<AcmeAccountRecord>, StoreError> {
        let c = self.conn().await?;
        one(
            &c,
            "SELECT vault_id, issuer_key, fingerprint, account_url, sealed, created \
             FROM acme_accounts WHERE vault_id = $1 AND issuer_key = $2 AND fingerprint = $3",
            &[&vault_id, &issuer_key, &fingerprint],
            |r| {
                Ok(AcmeAccountRecord {
                    vault_id: col(r, 0)?,
                    issuer_key: col(r, 1)?,
                    fingerprint: col(r, 2)?,
                    account_url: col(r, 3)?,
                    sealed: col(r, 4)?,
                    created: col(r, 5)?,
                })
            },
        )
        .await
    }

    /// Stores an account (replacing one with the same key).
    pub async fn put_acme_account(&self, rec: AcmeAccountRecord) -> Result<(), StoreError> {
        self.exec(
            "INSERT INTO acme_accounts (vault_id, issuer_key, fingerprint, account_url, sealed, \
             created) VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (vault_id, issuer_key, fingerprint) DO UPDATE SET \
             account_url = excluded.account_url, sealed = excluded.sealed, created = excluded.created",
            &[
                &rec.vault_id,
                &rec.issuer_key,
                &rec.fingerprint,
                &rec.account_url,
                &rec.sealed,
                &rec.created,
            ],
        )
        .await?;
        Ok(())
    }

    /// Inserts an order (status `active`); `Conflict::Exists` when the version has one.
    pub async fn insert_acme_order(
        &self,
        rec: AcmeOrderRecord,
    ) -> Result<AcmeOrderRecord, StoreError> {
        let c = self.conn().await?;
        let out = one(
            &c,
            &format!(
                "INSERT INTO acme_orders (vault_id, vault_key, cert_key, version, issuer_key, \
                 enabled, state, status, created, updated) \
                 VALUES ($1, $8, $2, $3, $4, $5, $6, 'active', $7, $7) \
                 ON CONFLICT (vault_id, cert_key, version) DO NOTHING RETURNING {ORDER_COLS}"
            ),
            &[
                &rec.vault_id,
                &rec.cert_key,
                &rec.version,
                &rec.issuer_key,
                &rec.enabled,
                &rec.state,
                &rec.created,
                &rec.vault_key,
            ],
            order_row,
        )
        .await?
        .ok_or(StoreError::Conflict(Conflict::Exists))?;
        self.bump().await;
        Ok(out)
    }

    /// Deletes an order row that never got its operation.
    pub async fn delete_acme_order(&self, id: i64) -> Result<(), StoreError> {
        self.exec("DELETE FROM acme_orders WHERE id = $1", &[&id])
            .await?;
        Ok(())
    }

    /// An order by id.
    pub async fn acme_order(&self, id: i64) -> Result<Option<AcmeOrderRecord>, StoreError> {
        let c = self.conn().await?;
        get_order(&c, id).await
    }

    /// Every order still `active`, oldest first.
    pub async fn active_acme_orders(&self) -> Result<Vec<AcmeOrderRecord>, StoreError> {
        let c = self.conn().await?;
        all(
            &c,
            &format!("SELECT {ORDER_COLS} FROM acme_orders WHERE status = 'active' ORDER BY id"),
            &[],
            order_row,
        )
        .await
    }

    /// Stores an order's state after a step and, with `details`, the status details of the
    /// operation it drives, in one transaction.
    pub async fn save_acme_order(
        &self,
        id: i64,
        state: String,
        details: Option<(i64, String)>,
        now: i64,
    ) -> Result<(), StoreError> {
        let mut c = self.conn().await?;
        let tx = c.transaction().await?;
        let n = tx
            .execute(
                "UPDATE acme_orders SET state = $2, updated = $3 WHERE id = $1",
                &[&id, &state, &now],
            )
            .await?;
        if n == 0 {
            return Err(StoreError::NotFound);
        }
        if let Some((cert_id, details)) = details {
            tx.execute(
                "UPDATE operations SET status_details = $2, updated = $3 WHERE cert_id = $1 \
                 AND status = 'inProgress' AND version = \
                 (SELECT version FROM acme_orders WHERE id = $4)",
                &[&cert_id, &details, &now, &id],
            )
            .await?;
        }
        self.commit(tx).await
    }

    /// Records the user's acknowledgement of the active order of (vault, certificate,
    /// version); whether there was one.
    pub async fn acknowledge_acme_order(
        &self,
        vault_id: i64,
        cert_key: &str,
        version: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        let n = self
            .exec(
                "UPDATE acme_orders SET acknowledged = TRUE, updated = $4 WHERE vault_id = $1 \
                 AND cert_key = $2 AND version = $3 AND status = 'active'",
                &[&vault_id, &cert_key, &version, &now],
            )
            .await?;
        Ok(n > 0)
    }

    /// Claims active order `id` for `owner` until `now + lease` when no other owner's lease
    /// is live (or extends `owner`'s own); `FOR UPDATE SKIP LOCKED`, so of replicas claiming
    /// together one wins. Returns whether `owner` holds it.
    pub async fn claim_acme_order(
        &self,
        id: i64,
        owner: &str,
        now: i64,
        lease: i64,
    ) -> Result<bool, StoreError> {
        let c = self.conn().await?;
        let n = c
            .execute(
                "UPDATE acme_orders SET lease_owner = $2, lease_until = $4 WHERE id IN (\
                 SELECT id FROM acme_orders WHERE id = $1 AND status = 'active' \
                 AND (lease_owner IS NULL OR lease_owner = $2 OR lease_until <= $3) \
                 FOR UPDATE SKIP LOCKED)",
                &[&id, &owner, &now, &now.saturating_add(lease)],
            )
            .await?;
        Ok(n > 0)
    }

    /// Claims up to `limit` active orders no live lease holds (new ones, and a dead replica's
    /// once their lease ended) for `owner`. Returns their ids.
    pub async fn claim_acme_orders(
        &self,
        owner: &str,
        now: i64,
        lease: i64,
        limit: i64,
    ) -> Result<Vec<i64>, StoreError> {
        let c = self.conn().await?;
        let mut ids = all(
            &c,
            "UPDATE acme_orders SET lease_owner = $1, lease_until = $3 WHERE id IN (\
             SELECT id FROM acme_orders WHERE status = 'active' \
             AND (lease_owner IS NULL OR lease_until <= $2) ORDER BY id LIMIT $4 \
             FOR UPDATE SKIP LOCKED) RETURNING id",
            &[&owner, &now, &now.saturating_add(lease), &limit],
            |r| col(r, 0),
        )
        .await?;
        ids.sort_unstable();
        Ok(ids)
    }

    /// Releases `owner`'s order leases (a clean shutdown: another replica takes them at once).
    pub async fn release_acme_orders(&self, owner: &str) -> Result<usize, StoreError> {
        let c = self.conn().await?;
        let n = c
            .execute(
                "UPDATE acme_orders SET lease_owner = NULL, lease_until = NULL \
                 WHERE lease_owner = $1",
                &[&owner],
            )
            .await?;
        Ok(crate::pg::count(n))
    }

    /// Ends an order with `status`.
    pub async fn end_acme_order(
        &self,
        id: i64,
        status: &str,
        state: Option<String>,
        now: i64,
    ) -> Result<(), StoreError> {
        self.exec(
            "UPDATE acme_orders SET status = $2, state = COALESCE($3, state), updated = $4 \
             WHERE id = $1",
            &[&id, &status, &state, &now],
        )
        .await?;
        Ok(())
    }
}
