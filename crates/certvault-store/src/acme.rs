//! ACME accounts (credentials sealed by the caller) and ACME orders (the resumable order state
//! as JSON, one row per certificate version being ordered).
//!
//! An order row is written *before* the certificate's pending version and operation, keyed by
//! vault, certificate name and version (not the certificate row, which may not exist yet): a
//! crash between the two writes leaves an order without an operation, which the resume at
//! start ends as `abandoned` without ever creating an order at the CA.

use rusqlite::{Connection, OptionalExtension, Row, params};

use crate::{SqliteStore, StoreError};

/// The schema of this module (one migration).
pub(crate) const MIGRATION: &str = r#"
CREATE TABLE acme_accounts (
    vault_id INTEGER NOT NULL REFERENCES vaults(id) ON DELETE CASCADE,
    issuer_key TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    account_url TEXT NOT NULL,
    sealed BLOB NOT NULL,
    created INTEGER NOT NULL,
    PRIMARY KEY (vault_id, issuer_key, fingerprint)
);
CREATE TABLE acme_orders (
    id INTEGER PRIMARY KEY,
    vault_id INTEGER NOT NULL REFERENCES vaults(id) ON DELETE CASCADE,
    vault_key TEXT NOT NULL,
    cert_key TEXT NOT NULL,
    version TEXT NOT NULL,
    issuer_key TEXT NOT NULL,
    enabled INTEGER NOT NULL,
    state TEXT NOT NULL,
    status TEXT NOT NULL,
    acknowledged INTEGER NOT NULL DEFAULT 0,
    created INTEGER NOT NULL,
    updated INTEGER NOT NULL,
    UNIQUE (vault_id, cert_key, version)
);
CREATE INDEX acme_orders_active ON acme_orders (status) WHERE status = 'active';
"#;

/// A stored ACME account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeAccountRecord {
    /// Vault row id.
    pub vault_id: i64,
    /// The issuer's lower-case name.
    pub issuer_key: String,
    /// What the account was registered with (directory, EAB key id, …), hashed by the caller:
    /// a changed issuer configuration gets a new account.
    pub fingerprint: String,
    /// The account URL (not secret).
    pub account_url: String,
    /// The credentials, sealed by the caller.
    pub sealed: Vec<u8>,
    /// Creation time.
    pub created: i64,
}

/// An ACME order of one certificate version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeOrderRecord {
    /// Row id (0 before insertion).
    pub id: i64,
    /// Vault row id.
    pub vault_id: i64,
    /// The vault's lower-case name.
    pub vault_key: String,
    /// The certificate's lower-case name.
    pub cert_key: String,
    /// The version being ordered.
    pub version: String,
    /// The issuer's lower-case name.
    pub issuer_key: String,
    /// Whether the version is enabled once issued.
    pub enabled: bool,
    /// The order state (JSON).
    pub state: String,
    /// `active`, `completed`, `failed`, `cancelled` or `abandoned`.
    pub status: String,
    /// The user said the notify-mode records are in place (skip the authoritative check).
    pub acknowledged: bool,
    /// Creation time.
    pub created: i64,
    /// Update time.
    pub updated: i64,
}

pub(crate) const ORDER_COLS: &str = "id, vault_id, vault_key, cert_key, version, issuer_key, enabled, state, status, created, updated, acknowledged";

fn order_row(r: &Row<'_>) -> rusqlite::Result<AcmeOrderRecord> {
    Ok(AcmeOrderRecord {
        id: r.get(0)?,
        vault_id: r.get(1)?,
        vault_key: r.get(2)?,
        cert_key: r.get(3)?,
        version: r.get(4)?,
        issuer_key: r.get(5)?,
        enabled: r.get(6)?,
        state: r.get(7)?,
        status: r.get(8)?,
        created: r.get(9)?,
        updated: r.get(10)?,
        acknowledged: r.get(11)?,
    })
}

fn get_order(c: &Connection, id: i64) -> Result<AcmeOrderRecord, StoreError> {
    c.query_row(
        &format!("SELECT {ORDER_COLS} FROM acme_orders WHERE id = ?1"),
        [id],
        order_row,
    )
    .optional()?
    .ok_or(StoreError::NotFound)
}

impl SqliteStore {
    /// The stored account of an issuer for a configuration fingerprint.
    pub async fn acme_account(
        &self,
        vault_id: i64,
        issuer_key: &str,
        fingerprint: &str,
    ) -> Result<Option<AcmeAccountRecord>, StoreError> {
        let (ik, fp) = (issuer_key.to_owned(), fingerprint.to_owned());
        self.read(move |c| {
            Ok(c.query_row(
                "SELECT vault_id, issuer_key, fingerprint, account_url, sealed, created \
                 FROM acme_accounts WHERE vault_id = ?1 AND issuer_key = ?2 AND fingerprint = ?3",
                params![vault_id, ik, fp],
                |r| {
                    Ok(AcmeAccountRecord {
                        vault_id: r.get(0)?,
                        issuer_key: r.get(1)?,
                        fingerprint: r.get(2)?,
                        account_url: r.get(3)?,
                        sealed: r.get(4)?,
                        created: r.get(5)?,
                    })
                },
            )
            .optional()?)
        })
        .await
    }

    /// Stores an account (replacing one with the same key: an account the CA forgot).
    pub async fn put_acme_account(&self, rec: AcmeAccountRecord) -> Result<(), StoreError> {
        self.write(move |c| {
            c.execute(
                "INSERT OR REPLACE INTO acme_accounts (vault_id, issuer_key, fingerprint, \
                 account_url, sealed, created) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    rec.vault_id,
                    rec.issuer_key,
                    rec.fingerprint,
                    rec.account_url,
                    rec.sealed,
                    rec.created
                ],
            )?;
            Ok(())
        })
        .await
    }

    /// Inserts an order (status `active`); returns it with its id. Refused with
    /// `Conflict::Exists` when the version already has one.
    pub async fn insert_acme_order(
        &self,
        rec: AcmeOrderRecord,
    ) -> Result<AcmeOrderRecord, StoreError> {
        self.write(move |c| {
            let n = c.execute(
                "INSERT OR IGNORE INTO acme_orders (vault_id, vault_key, cert_key, version, \
                 issuer_key, enabled, state, status, created, updated) \
                 VALUES (?1, ?8, ?2, ?3, ?4, ?5, ?6, 'active', ?7, ?7)",
                params![
                    rec.vault_id,
                    rec.cert_key,
                    rec.version,
                    rec.issuer_key,
                    rec.enabled,
                    rec.state,
                    rec.created,
                    rec.vault_key
                ],
            )?;
            if n == 0 {
                return Err(StoreError::Conflict(crate::Conflict::Exists));
            }
            get_order(c, c.last_insert_rowid())
        })
        .await
    }

    /// Deletes an order row that never got its operation (the create that wrote it failed).
    pub async fn delete_acme_order(&self, id: i64) -> Result<(), StoreError> {
        self.write(move |c| {
            c.execute("DELETE FROM acme_orders WHERE id = ?1", [id])?;
            Ok(())
        })
        .await
    }

    /// An order by id.
    pub async fn acme_order(&self, id: i64) -> Result<Option<AcmeOrderRecord>, StoreError> {
        self.read(move |c| match get_order(c, id) {
            Ok(o) => Ok(Some(o)),
            Err(StoreError::NotFound) => Ok(None),
            Err(e) => Err(e),
        })
        .await
    }

    /// Every order still `active`, oldest first.
    pub async fn active_acme_orders(&self) -> Result<Vec<AcmeOrderRecord>, StoreError> {
        self.read(move |c| {
            let mut st = c.prepare(&format!(
                "SELECT {ORDER_COLS} FROM acme_orders WHERE status = 'active' ORDER BY id"
            ))?;
            let rows = st.query_map([], order_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// Claims order `id` for `owner` until `now + lease` (or extends `owner`'s lease). On
    /// SQLite one process owns the database, so this only checks that the order is active.
    pub async fn claim_acme_order(
        &self,
        id: i64,
        _owner: &str,
        _now: i64,
        _lease: i64,
    ) -> Result<bool, StoreError> {
        Ok(self
            .acme_order(id)
            .await?
            .is_some_and(|o| o.status == "active"))
    }

    /// Claims up to `limit` active orders that no live lease holds; on SQLite every active
    /// order (one process owns the database). Returns their ids.
    pub async fn claim_acme_orders(
        &self,
        _owner: &str,
        _now: i64,
        _lease: i64,
        limit: i64,
    ) -> Result<Vec<i64>, StoreError> {
        let mut ids: Vec<i64> = self
            .active_acme_orders()
            .await?
            .into_iter()
            .map(|o| o.id)
            .collect();
        ids.truncate(usize::try_from(limit).unwrap_or(0));
        Ok(ids)
    }

    /// Releases `owner`'s order leases (shutdown); nothing to do on SQLite.
    pub async fn release_acme_orders(&self, _owner: &str) -> Result<usize, StoreError> {
        Ok(0)
    }

    /// Stores an order's state after a step, and, when `details` is given, the status details
    /// of the certificate operation it drives (only while that operation is in progress for
    /// the order's version), in one transaction.
    pub async fn save_acme_order(
        &self,
        id: i64,
        state: String,
        details: Option<(i64, String)>,
        now: i64,
    ) -> Result<(), StoreError> {
        self.write(move |c| {
            let n = c.execute(
                "UPDATE acme_orders SET state = ?2, updated = ?3 WHERE id = ?1",
                params![id, state, now],
            )?;
            if n == 0 {
                return Err(StoreError::NotFound);
            }
            if let Some((cert_id, details)) = details {
                c.execute(
                    "UPDATE operations SET status_details = ?2, updated = ?3 WHERE cert_id = ?1 \
                     AND status = 'inProgress' AND version = \
                     (SELECT version FROM acme_orders WHERE id = ?4)",
                    params![cert_id, details, now, id],
                )?;
            }
            Ok(())
        })
        .await
    }

    /// Records that the user acknowledged the notify-mode records of the active order of
    /// (vault, certificate, version). Returns whether there was such an order.
    pub async fn acknowledge_acme_order(
        &self,
        vault_id: i64,
        cert_key: &str,
        version: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        let (ck, v) = (cert_key.to_owned(), version.to_owned());
        self.write(move |c| {
            let n = c.execute(
                "UPDATE acme_orders SET acknowledged = 1, updated = ?4 WHERE vault_id = ?1 \
                 AND cert_key = ?2 AND version = ?3 AND status = 'active'",
                params![vault_id, ck, v, now],
            )?;
            Ok(n > 0)
        })
        .await
    }

    /// Ends an order with `status` (`completed`, `failed`, `cancelled`, `abandoned`).
    pub async fn end_acme_order(
        &self,
        id: i64,
        status: &str,
        state: Option<String>,
        now: i64,
    ) -> Result<(), StoreError> {
        let status = status.to_owned();
        self.write(move |c| {
            c.execute(
                "UPDATE acme_orders SET status = ?2, state = COALESCE(?3, state), updated = ?4 \
                 WHERE id = ?1",
                params![id, status, state, now],
            )?;
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn orders_round_trip() {
        for t in crate::store::testing::backends().await {
            eprintln!("backend: {}", t.store.backend());
            orders_on(&t.store).await;
        }
    }

    async fn orders_on(s: &crate::Store) {
        let v = s.create_vault("v", vec![1, 2, 3], 90, 1).await.unwrap();
        let rec = AcmeOrderRecord {
            id: 0,
            vault_id: v.id,
            vault_key: "v".into(),
            cert_key: "c".into(),
            version: "0123".into(),
            issuer_key: "i".into(),
            enabled: true,
            state: "{}".into(),
            status: "active".into(),
            acknowledged: false,
            created: 5,
            updated: 5,
        };
        let o = s.insert_acme_order(rec.clone()).await.unwrap();
        assert_eq!(o.status, "active");
        assert!(matches!(
            s.insert_acme_order(rec).await,
            Err(StoreError::Conflict(_))
        ));
        assert_eq!(s.active_acme_orders().await.unwrap().len(), 1);
        // one driver per order: a second owner is refused while the lease lives, takes the
        // order over once it ended, and the first owner's renewal then fails
        assert!(s.claim_acme_order(o.id, "a", 10, 30).await.unwrap());
        assert!(s.claim_acme_order(o.id, "a", 20, 30).await.unwrap());
        if s.shared() {
            assert!(!s.claim_acme_order(o.id, "b", 49, 30).await.unwrap());
            assert!(
                s.claim_acme_orders("b", 49, 30, 10)
                    .await
                    .unwrap()
                    .is_empty()
            );
            assert_eq!(
                s.claim_acme_orders("b", 50, 30, 10).await.unwrap(),
                vec![o.id]
            );
            assert!(!s.claim_acme_order(o.id, "a", 51, 30).await.unwrap());
            assert_eq!(s.release_acme_orders("b").await.unwrap(), 1);
            assert!(s.claim_acme_order(o.id, "a", 52, 30).await.unwrap());
        } else {
            assert_eq!(
                s.claim_acme_orders("b", 50, 30, 10).await.unwrap(),
                vec![o.id]
            );
        }
        assert!(
            s.acknowledge_acme_order(v.id, "c", "0123", 6)
                .await
                .unwrap()
        );
        assert!(s.acme_order(o.id).await.unwrap().unwrap().acknowledged);
        s.save_acme_order(o.id, "{\"a\":1}".into(), None, 7)
            .await
            .unwrap();
        s.end_acme_order(o.id, "completed", None, 8).await.unwrap();
        let o = s.acme_order(o.id).await.unwrap().unwrap();
        assert_eq!(
            (o.status.as_str(), o.state.as_str()),
            ("completed", "{\"a\":1}")
        );
        assert!(s.active_acme_orders().await.unwrap().is_empty());
        assert!(
            !s.acknowledge_acme_order(v.id, "c", "0123", 9)
                .await
                .unwrap()
        );
    }
}
