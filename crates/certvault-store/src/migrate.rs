//! Copying a SQLite store into an empty PostgreSQL store (`certvault admin migrate`).
//!
//! Every table is copied row by row in one PostgreSQL transaction, columns converted by the
//! PostgreSQL column type (integers, flags, blobs, text); sealed blobs are copied as they are,
//! so the data stays sealed under the same master key and the data directory's `master.key`
//! opens it. Row ids are kept (identity sequences are moved past them), the audit chain and its
//! head are copied unchanged (it still verifies), and the triggers are off during the copy:
//! the jobs, marks, events and deliveries they would make are copied instead.

use std::path::Path;

use deadpool_postgres::GenericClient;
use rusqlite::types::Value;
use tokio_postgres::types::ToSql;

use crate::pg::col;
use crate::{Conflict, PgStore, SqliteStore, StoreError};

/// The tables, parents before children (foreign keys are checked row by row).
const TABLES: &[&str] = &[
    "meta",
    "vaults",
    "certificates",
    "versions",
    "operations",
    "issuers",
    "contacts",
    "principals",
    "tokens",
    "access_policies",
    "audit_log",
    "jobs",
    "lifecycle_marks",
    "events",
    "channels",
    "deliveries",
    "delivery_attempts",
    "acme_accounts",
    "acme_orders",
    "audit_outbox",
];

/// How many rows of each table were copied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrateReport {
    /// (table, rows), in copy order.
    pub tables: Vec<(String, u64)>,
}

type Param = Box<dyn ToSql + Sync + Send>;

/// One SQLite value as a parameter for a PostgreSQL column of type `ty`.
fn convert(v: Value, ty: &str, table: &str, column: &str) -> Result<Param, StoreError> {
    let bad = || {
        StoreError::Corrupt(format!(
            "{table}.{column}: a value that does not fit the PostgreSQL type {ty}"
        ))
    };
    Ok(match ty {
        "bigint" => match v {
            Value::Null => Box::new(None::<i64>),
            Value::Integer(i) => Box::new(Some(i)),
            _ => return Err(bad()),
        },
        "boolean" => match v {
            Value::Null => Box::new(None::<bool>),
            Value::Integer(i) => Box::new(Some(i != 0)),
            _ => return Err(bad()),
        },
        "bytea" => match v {
            Value::Null => Box::new(None::<Vec<u8>>),
            Value::Blob(b) => Box::new(Some(b)),
            Value::Text(t) => Box::new(Some(t.into_bytes())),
            _ => return Err(bad()),
        },
        "text" => match v {
            Value::Null => Box::new(None::<String>),
            Value::Text(t) => Box::new(Some(t)),
            Value::Integer(i) => Box::new(Some(i.to_string())),
            _ => return Err(bad()),
        },
        _ => return Err(bad()),
    })
}

impl PgStore {
    /// Copies the SQLite database at `sqlite_path` (migrated to the current schema first) into
    /// this store, which must be empty (`Conflict::Exists` otherwise). All or nothing: one
    /// transaction. Refused while the database has an audit journal with records not yet
    /// imported (start and stop certvault on it once).
    pub async fn copy_from_sqlite(&self, sqlite_path: &Path) -> Result<MigrateReport, StoreError> {
        if !sqlite_path.is_file() {
            return Err(StoreError::Open(format!(
                "{} is not a SQLite database file",
                sqlite_path.display()
            )));
        }
        let source = SqliteStore::open(sqlite_path)?;
        let journal = source.audit_journal_dir();
        source.close();
        let pending = std::fs::read_dir(&journal)
            .map(|rd| rd.flatten().any(|e| e.path().is_file()))
            .unwrap_or(false);
        if pending {
            return Err(StoreError::Open(format!(
                "{} holds audit records not yet in the database: start and stop certvault on \
                 this data directory once, then migrate",
                journal.display()
            )));
        }
        let src = rusqlite::Connection::open_with_flags(
            sqlite_path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .map_err(|e| StoreError::Open(e.to_string()))?;

        let mut c = self.conn().await?;
        let tx = c.transaction().await?;
        for t in TABLES {
            let n: i64 = col(
                &tx.query_one(&format!("SELECT COUNT(*) FROM {t}"), &[])
                    .await?,
                0,
            )?;
            if n > 0 {
                return Err(StoreError::Conflict(Conflict::Exists));
            }
        }
        let mut report = MigrateReport::default();
        for t in TABLES {
            tx.batch_execute(&format!("ALTER TABLE {t} DISABLE TRIGGER USER"))
                .await?;
            let cols: Vec<(String, String)> = tx
                .query(
                    "SELECT column_name::text, data_type::text FROM information_schema.columns \
                     WHERE table_schema = current_schema() AND table_name = $1 \
                     ORDER BY ordinal_position",
                    &[t],
                )
                .await?
                .iter()
                .map(|r| Ok((col(r, 0)?, col(r, 1)?)))
                .collect::<Result<_, StoreError>>()?;
            // Columns only PostgreSQL has (replicas' lease owners) start empty.
            let src_cols: Vec<String> = {
                let mut st = src.prepare(&format!("SELECT name FROM pragma_table_info('{t}')"))?;
                st.query_map([], |r| r.get::<_, String>(0))?
                    .collect::<Result<_, _>>()?
            };
            let cols: Vec<(String, String)> = cols
                .into_iter()
                .filter(|(n, _)| src_cols.iter().any(|c| c == n))
                .collect();
            let names: Vec<&str> = cols.iter().map(|(n, _)| n.as_str()).collect();
            let placeholders: Vec<String> = (1..=cols.len()).map(|i| format!("${i}")).collect();
            let insert = tx
                .prepare(&format!(
                    "INSERT INTO {t} ({}) VALUES ({})",
                    names.join(", "),
                    placeholders.join(", ")
                ))
                .await?;
            let rows: Vec<Vec<Value>> = {
                let mut st = src.prepare(&format!("SELECT {} FROM {t}", names.join(", ")))?;
                let width = cols.len();
                st.query_map([], |r| (0..width).map(|i| r.get::<_, Value>(i)).collect())?
                    .collect::<Result<_, _>>()?
            };
            let mut copied = 0u64;
            for row in rows {
                let params = row
                    .into_iter()
                    .zip(&cols)
                    .map(|(v, (name, ty))| convert(v, ty, t, name))
                    .collect::<Result<Vec<Param>, _>>()?;
                let refs: Vec<&(dyn ToSql + Sync)> = params
                    .iter()
                    .map(|p| -> &(dyn ToSql + Sync) { p.as_ref() })
                    .collect();
                tx.execute(&insert, &refs).await?;
                copied += 1;
            }
            if names.contains(&"id") {
                tx.batch_execute(&format!(
                    "SELECT setval(pg_get_serial_sequence('{t}', 'id'), \
                     COALESCE((SELECT MAX(id) FROM {t}), 0) + 1, false)"
                ))
                .await?;
            }
            tx.batch_execute(&format!("ALTER TABLE {t} ENABLE TRIGGER USER"))
                .await?;
            report.tables.push(((*t).to_owned(), copied));
        }
        self.commit(tx).await?;
        Ok(report)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::audit::tests::{chain, rec};
    use crate::store::testing::postgres;
    use crate::{
        AcmeOrderRecord, AuditFilter, ChannelRecord, DeliveryFilter, EventFilter, IssuerRecord,
        NewVersion, OperationRecord, Scheduler, Store, VersionRecord, Which,
    };

    fn ver(v: &str, cer: Option<Vec<u8>>) -> VersionRecord {
        VersionRecord {
            cert_id: 0,
            version: v.into(),
            seq: 0,
            created: 1,
            updated: 1,
            enabled: true,
            nbf: Some(1),
            exp: Some(1_000),
            tags: Some("{\"t\":\"1\"}".into()),
            cer,
            chain: vec![vec![1, 2], vec![3]],
            key_blob: Some(vec![0xA5; 40]),
            key_ref: None,
            spki: vec![7],
            content_type: "application/x-pkcs12".into(),
            exportable: true,
            preserve_order: true,
            key_ops: Some("[\"sign\"]".into()),
        }
    }

    /// A SQLite store with something in every table.
    async fn populate(s: &SqliteStore) -> i64 {
        s.put_meta("master_check", vec![1, 2, 3], true)
            .await
            .unwrap();
        let v = s.create_vault("Default", vec![9; 32], 90, 1).await.unwrap();
        s.create_channel(ChannelRecord {
            id: 0,
            vault_id: v.id,
            name: "Hook".into(),
            kind: "webhook".into(),
            target: "https://example.test/h".into(),
            sealed: vec![4; 16],
            payload_version: 1,
            enabled: true,
            created: 1,
            updated: 1,
        })
        .await
        .unwrap();
        let op = OperationRecord {
            cert_id: 0,
            request_id: "r1".into(),
            version: "a1".into(),
            issuer_name: "Self".into(),
            status: "completed".into(),
            status_details: String::new(),
            csr: Some(vec![5]),
            error: None,
            cancellation_requested: false,
            created: 2,
            updated: 2,
        };
        for (name, v1) in [("Web", "a1"), ("api", "b1")] {
            s.add_version(
                v.id,
                name,
                "{\"p\":1}".into(),
                2,
                NewVersion {
                    record: ver(v1, Some(vec![6; 10])),
                    operation: Some(OperationRecord {
                        version: v1.into(),
                        ..op.clone()
                    }),
                },
            )
            .await
            .unwrap();
        }
        s.soft_delete(2, 3, 100).await.unwrap();
        // A renewal (a CSR waiting for its merge) whose audit record waits in the outbox.
        s.renew_version(
            v.id,
            "Web",
            "{\"p\":1}".into(),
            4,
            NewVersion {
                record: ver("a2", None),
                operation: Some(OperationRecord {
                    version: "a2".into(),
                    status: "inProgress".into(),
                    ..op.clone()
                }),
            },
            crate::RenewalGuard {
                expected: "a1".into(),
                audit: Some(crate::AuditIntent {
                    operation: "certificates.autorenew".into(),
                    vault: Some("Default".into()),
                    object: Some("certificates/web".into()),
                    outcome: "ok".into(),
                    detail: Some("{}".into()),
                    owner: "r1".into(),
                    lease_until: 64,
                }),
            },
        )
        .await
        .unwrap();
        s.put_issuer(IssuerRecord {
            vault_id: v.id,
            name: "Acme".into(),
            provider: "acme".into(),
            body: "{}".into(),
            secret: Some(vec![8; 8]),
            enabled: true,
            created: 1,
            updated: 1,
        })
        .await
        .unwrap();
        s.set_contacts(v.id, "[]".into()).await.unwrap();
        let p = s
            .create_principal("Bob", false, Some("d".into()), 1)
            .await
            .unwrap();
        s.add_token(p.id, vec![7; 32], Some("ci".into()), None, 1)
            .await
            .unwrap();
        s.set_access_policy(v.id, p.id, "{}".into(), 1)
            .await
            .unwrap();
        s.append_audit(
            (1..=5)
                .map(|i| rec(i, "bob", "secrets.get", "secrets/web"))
                .collect(),
            chain(),
        )
        .await
        .unwrap();
        s.insert_acme_order(AcmeOrderRecord {
            id: 0,
            vault_id: v.id,
            vault_key: "default".into(),
            cert_key: "web".into(),
            version: "c1".into(),
            issuer_key: "acme".into(),
            enabled: true,
            state: "{}".into(),
            status: "active".into(),
            acknowledged: false,
            created: 1,
            updated: 1,
        })
        .await
        .unwrap();
        s.put_acme_account(crate::AcmeAccountRecord {
            vault_id: v.id,
            issuer_key: "acme".into(),
            fingerprint: "f".into(),
            account_url: "https://ca.test/acct/1".into(),
            sealed: vec![3; 12],
            created: 1,
        })
        .await
        .unwrap();
        let claimed = s.claim_deliveries(10, "t", 60, 10).await.unwrap();
        assert!(!claimed.is_empty());
        s.finish_delivery(
            claimed[0].id,
            crate::DeliveryOutcome {
                at: 10,
                status_code: Some(500),
                error: Some("boom".into()),
                millis: 3,
                next: crate::DeliveryNext::RetryAt(100),
            },
        )
        .await
        .unwrap();
        s.put_job("t", "x", None, 50, Some("{}".into()))
            .await
            .unwrap();
        v.id
    }

    #[tokio::test]
    async fn a_populated_sqlite_store_moves_to_an_empty_postgres_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("certvault.db");
        let sqlite = SqliteStore::open(&path).unwrap();
        let vid = populate(&sqlite).await;
        sqlite.close();
        let t = postgres().await;
        let Store::Postgres(pg) = &t.store else {
            unreachable!()
        };
        let report = pg.copy_from_sqlite(&path).await.unwrap();
        for (table, n) in &report.tables {
            assert!(*n > 0, "{table} copied nothing: {report:?}");
        }
        let a = Store::Sqlite(SqliteStore::open(&path).unwrap());
        let b = &t.store;

        // the same objects through the store API on both sides
        assert_eq!(
            a.vault("default").await.unwrap(),
            b.vault("default").await.unwrap()
        );
        assert_eq!(
            a.meta("master_check").await.unwrap(),
            b.meta("master_check").await.unwrap()
        );
        for (name, deleted) in [("web", false), ("api", true)] {
            let x = a
                .cert_version(vid, name, deleted, Which::Latest)
                .await
                .unwrap();
            assert!(x.is_some());
            assert_eq!(
                x,
                b.cert_version(vid, name, deleted, Which::Latest)
                    .await
                    .unwrap()
            );
            let id = x.unwrap().0.id;
            assert_eq!(
                a.operation(id).await.unwrap(),
                b.operation(id).await.unwrap()
            );
            assert_eq!(
                a.lifecycle_view(id).await.unwrap(),
                b.lifecycle_view(id).await.unwrap()
            );
        }
        assert_eq!(
            a.list_issuers(vid, None, 10).await.unwrap(),
            b.list_issuers(vid, None, 10).await.unwrap()
        );
        assert_eq!(
            a.contacts(vid).await.unwrap(),
            b.contacts(vid).await.unwrap()
        );
        assert_eq!(
            a.token_by_hash(vec![7; 32]).await.unwrap(),
            b.token_by_hash(vec![7; 32]).await.unwrap()
        );
        assert_eq!(
            a.vault_access_policies(vid).await.unwrap(),
            b.vault_access_policies(vid).await.unwrap()
        );
        let events = a
            .events(
                vid,
                EventFilter {
                    limit: 100,
                    ..EventFilter::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(events.len(), 2, "{events:?}");
        assert_eq!(
            events,
            b.events(
                vid,
                EventFilter {
                    limit: 100,
                    ..EventFilter::default()
                }
            )
            .await
            .unwrap()
        );
        let deliveries = DeliveryFilter {
            limit: 100,
            ..DeliveryFilter::default()
        };
        assert_eq!(
            a.deliveries(vid, deliveries.clone()).await.unwrap(),
            b.deliveries(vid, deliveries).await.unwrap()
        );
        assert_eq!(
            a.active_acme_orders().await.unwrap(),
            b.active_acme_orders().await.unwrap()
        );
        assert_eq!(
            a.acme_account(vid, "acme", "f").await.unwrap(),
            b.acme_account(vid, "acme", "f").await.unwrap()
        );
        let d = a
            .deliveries(
                vid,
                DeliveryFilter {
                    limit: 1,
                    ..DeliveryFilter::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(
            a.delivery_attempts(d[0].id).await.unwrap(),
            b.delivery_attempts(d[0].id).await.unwrap()
        );
        assert_eq!(a.delivery_attempts(d[0].id).await.unwrap().len(), 1);
        // the audit outbox row (a renewal's record not yet in the chain), lease and all
        assert_eq!(
            a.claim_audit_outbox("r1", 5, 60, None, 10).await.unwrap(),
            b.claim_audit_outbox("r1", 5, 60, None, 10).await.unwrap()
        );
        assert!(
            b.claim_audit_outbox("other", 5, 60, None, 10)
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            a.job("t", "x").await.unwrap(),
            b.job("t", "x").await.unwrap()
        );
        assert_eq!(
            a.job("cert", "1").await.unwrap(),
            b.job("cert", "1").await.unwrap()
        );
        // the audit chain is the same and still verifies under the same key
        let all = AuditFilter::default();
        assert_eq!(
            a.audit_records(all.clone(), 100).await.unwrap(),
            b.audit_records(all, 100).await.unwrap()
        );
        let v = b.verify_audit(chain()).await.unwrap();
        assert_eq!((v.problem, v.records_checked), (None, 5));
        b.append_audit(vec![rec(6, "bob", "x", "y")], chain())
            .await
            .unwrap();
        assert_eq!(b.verify_audit(chain()).await.unwrap().problem, None);

        // new rows get fresh ids, and the triggers are back on
        let v2 = b.create_vault("second", vec![1], 90, 5).await.unwrap();
        assert!(v2.id > vid);
        let (c, _) = b
            .add_version(
                vid,
                "new",
                "{}".into(),
                6,
                NewVersion {
                    record: ver("n1", Some(vec![1])),
                    operation: None,
                },
            )
            .await
            .unwrap();
        assert!(c.id > 2);
        assert_eq!(
            b.job("cert", &c.id.to_string())
                .await
                .unwrap()
                .map(|j| j.due),
            Some(0)
        );

        // a second copy into the now non-empty database is refused and changes nothing
        assert!(matches!(
            pg.copy_from_sqlite(&path).await,
            Err(StoreError::Conflict(Conflict::Exists))
        ));
        assert_eq!(b.list_vaults(false).await.unwrap().len(), 2);
        a.close();
    }
}
