//! The audit chain on PostgreSQL (see `audit.rs`): the same chaining, head and verification
//! logic (shared, backend-independent), with appends serialised by a transaction-scoped
//! advisory lock, so appends from several connections (and later several replicas) chain one
//! after the other.

use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use crate::audit::{Arg, COLS, HEAD_KEY, Step, Verifier, parse_head, plan_append, query_sql};
use crate::pg::{all, col, one};
use crate::{
    AuditChain, AuditFilter, AuditRecord, AuditVerification, NewAuditRecord, PgStore, StoreError,
};

/// The advisory lock key that serialises appends ("cv-audit").
const AUDIT_LOCK: i64 = 0x6376_2d61_7564_6974;

/// Rows read per round trip while verifying.
const VERIFY_PAGE: i64 = 10_000;

fn audit_row(r: &Row) -> Result<AuditRecord, StoreError> {
    Ok(AuditRecord {
        seq: col(r, 0)?,
        fields: NewAuditRecord {
            time: col(r, 1)?,
            request_id: col(r, 2)?,
            principal: col(r, 3)?,
            source: col(r, 4)?,
            vault: col(r, 5)?,
            object: col(r, 6)?,
            operation: col(r, 7)?,
            status: col(r, 8)?,
            outcome: col(r, 9)?,
            detail: col(r, 10)?,
        },
        prev: col(r, 11)?,
        mac: col(r, 12)?,
    })
}

impl PgStore {
    /// Appends records to the audit chain in one transaction; resolves with their seqs once
    /// they are committed.
    pub async fn append_audit(
        &self,
        records: Vec<NewAuditRecord>,
        chain: AuditChain,
    ) -> Result<Vec<i64>, StoreError> {
        self.append_audit_with(records, chain, true).await
    }

    /// [`Self::append_audit`]; with `synchronous` false the commit does not wait for its WAL
    /// flush (`SET LOCAL synchronous_commit = off`): the records are visible and the chain's
    /// lock is free as soon as the commit is in PostgreSQL's WAL buffers, which the WAL writer
    /// flushes within 3 × `wal_writer_delay`, and any later synchronous commit flushes them
    /// first (the WAL is written in order, so a crash can lose only a tail of the chain, never
    /// a record before a synchronous one). For records of requests that changed nothing, the
    /// PostgreSQL counterpart of the SQLite journal's deferred sync.
    pub async fn append_audit_with(
        &self,
        records: Vec<NewAuditRecord>,
        chain: AuditChain,
        synchronous: bool,
    ) -> Result<Vec<i64>, StoreError> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let mut c = self.conn().await?;
        let tx = c.transaction().await?;
        // The statements of a group are pipelined (issued together, executed by the server in
        // the order sent), so the lock and the two reads cost one wait, not three: the chain's
        // lock is held for fewer round trips. The reads must reach the server after the lock
        // (a read sent first sees a chain end another replica is about to move): requests go
        // out in the order their futures are first polled, so the statements are prepared
        // beforehand (a query given as text is sent only after its own prepare round trip) and
        // joined `biased` (polled in the order written, not rotated).
        let lock_st = tx
            .prepare_cached("SELECT pg_advisory_xact_lock($1)")
            .await?;
        let head_st = tx
            .prepare_cached("SELECT value FROM meta WHERE key = $1")
            .await?;
        let last_st = tx
            .prepare_cached("SELECT seq, mac, time FROM audit_log ORDER BY seq DESC LIMIT 1")
            .await?;
        let lock = tx.execute(&lock_st, &[&AUDIT_LOCK]);
        let head = tx.query_opt(&head_st, &[&HEAD_KEY]);
        let last = tx.query_opt(&last_st, &[]);
        let no_sync = async {
            if synchronous {
                Ok(())
            } else {
                tx.batch_execute("SET LOCAL synchronous_commit = off").await
            }
        };
        let (lock, head, last, no_sync) = tokio::join!(biased; lock, head, last, no_sync);
        lock?;
        no_sync?;
        let head = match head? {
            Some(r) => Some(col::<Vec<u8>>(&r, 0)?),
            None => None,
        };
        let last = match last? {
            Some(r) => Some((col(&r, 0)?, col(&r, 1)?, col(&r, 2)?)),
            None => None,
        };
        let head = head.map(parse_head);
        let plan = plan_append(head, last, records, chain.as_ref());
        // One statement for the whole group (arrays unnested into rows): the advisory lock is
        // held for one round trip however many records the group has, not one per record.
        let n = plan.rows.len();
        let mut seq = Vec::with_capacity(n);
        let mut time = Vec::with_capacity(n);
        let mut request_id = Vec::with_capacity(n);
        let mut principal = Vec::with_capacity(n);
        let mut source = Vec::with_capacity(n);
        let mut vault = Vec::with_capacity(n);
        let mut object = Vec::with_capacity(n);
        let mut operation = Vec::with_capacity(n);
        let mut status = Vec::with_capacity(n);
        let mut outcome = Vec::with_capacity(n);
        let mut detail = Vec::with_capacity(n);
        let mut prev = Vec::with_capacity(n);
        let mut mac = Vec::with_capacity(n);
        for rec in &plan.rows {
            let f = &rec.fields;
            seq.push(rec.seq);
            time.push(f.time);
            request_id.push(f.request_id.as_deref());
            principal.push(f.principal.as_str());
            source.push(f.source.as_deref());
            vault.push(f.vault.as_deref());
            object.push(f.object.as_deref());
            operation.push(f.operation.as_str());
            status.push(f.status);
            outcome.push(f.outcome.as_str());
            detail.push(f.detail.as_deref());
            prev.push(rec.prev.as_slice());
            mac.push(rec.mac.as_slice());
        }
        let insert_params: [&(dyn ToSql + Sync); 13] = [
            &seq,
            &time,
            &request_id,
            &principal,
            &source,
            &vault,
            &object,
            &operation,
            &status,
            &outcome,
            &detail,
            &prev,
            &mac,
        ];
        let head_params: [&(dyn ToSql + Sync); 2] = [&HEAD_KEY, &plan.head_value];
        // Prepared once per connection (cached): a statement given as text is parsed and
        // planned by the server on every group.
        let insert_st = tx
            .prepare_cached(
                "INSERT INTO audit_log (seq, time, request_id, principal, source, vault, object, \
                 operation, status, outcome, detail, prev, mac) \
                 SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[], \
                 $5::text[], $6::text[], $7::text[], $8::text[], $9::bigint[], $10::text[], \
                 $11::text[], $12::bytea[], $13::bytea[])",
            )
            .await?;
        let head_st = tx
            .prepare_cached(
                "INSERT INTO meta (key, value) VALUES ($1, $2) \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            )
            .await?;
        let insert = tx.execute(&insert_st, &insert_params);
        let head = tx.execute(&head_st, &head_params);
        let (insert, head) = tokio::join!(insert, head);
        insert?;
        head?;
        tx.commit().await?;
        Ok(plan.seqs)
    }

    /// Up to `limit` records matching `filter`, in seq order. Times never decrease along the
    /// chain, so a time bound is a seq bound, found through the BRIN index on `time`.
    pub async fn audit_records(
        &self,
        filter: AuditFilter,
        limit: usize,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        let c = self.conn().await?;
        let first_at = async |t: i64| -> Result<Option<i64>, StoreError> {
            let r = c
                .query_one("SELECT MIN(seq) FROM audit_log WHERE time >= $1", &[&t])
                .await?;
            col(&r, 0)
        };
        let lo = match filter.from {
            Some(from) => match first_at(from).await? {
                Some(lo) => Some(lo),
                None => return Ok(Vec::new()),
            },
            None => None,
        };
        let hi = match filter.to {
            Some(to) => first_at(to).await?,
            None => None,
        };
        let (sql, args) = query_sql(&filter, limit, lo, hi, |n| format!("${n}"));
        let boxed: Vec<Box<dyn ToSql + Sync + Send>> = args
            .into_iter()
            .map(|a| -> Box<dyn ToSql + Sync + Send> {
                match a {
                    Arg::Int(i) => Box::new(i),
                    Arg::Text(t) => Box::new(t),
                }
            })
            .collect();
        let params: Vec<&(dyn ToSql + Sync)> = boxed
            .iter()
            .map(|b| -> &(dyn ToSql + Sync) { b.as_ref() })
            .collect();
        all(&c, &sql, &params, audit_row).await
    }

    /// Walks the whole chain (one snapshot) and reports the first problem.
    pub async fn verify_audit(&self, chain: AuditChain) -> Result<AuditVerification, StoreError> {
        let mut c = self.conn().await?;
        let tx = c
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await?;
        let head = one(
            &tx,
            "SELECT value FROM meta WHERE key = $1",
            &[&HEAD_KEY],
            |r| col::<Vec<u8>>(r, 0),
        )
        .await?
        .map(parse_head);
        let last: i64 = col(
            &tx.query_one("SELECT COALESCE(MAX(seq), 0) FROM audit_log", &[])
                .await?,
            0,
        )?;
        let max_seq = last.max(head.as_ref().map_or(0, |h| h.0));
        let mut v = Verifier::new(chain.as_ref(), max_seq);
        let page = tx
            .prepare(&format!(
                "SELECT {COLS} FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2"
            ))
            .await?;
        let mut after = i64::MIN;
        'pages: loop {
            let rows = tx.query(&page, &[&after, &VERIFY_PAGE]).await?;
            let Some(last_row) = rows.last() else {
                break;
            };
            after = col(last_row, 0)?;
            for row in &rows {
                let seq: i64 = col(row, 0)?;
                match v.row(seq, audit_row(row).map_err(|e| e.to_string())) {
                    Step::Next => {}
                    Step::Stop => break 'pages,
                    Step::Lookup {
                        seq,
                        made_as,
                        expected,
                    } => {
                        let own: Option<i64> = one(
                            &tx,
                            "SELECT seq FROM audit_log WHERE prev = $1 AND seq != $2 LIMIT 1",
                            &[&expected, &seq],
                            |r| col(r, 0),
                        )
                        .await?;
                        v.misplaced(seq, made_as, own);
                        break 'pages;
                    }
                }
            }
        }
        tx.commit().await?;
        Ok(v.finish(head))
    }
}
