//! The audit trail: an append-only, hash-chained table `audit_log`.
//!
//! Each record carries `prev` (the MAC of the record before it, 32 zero bytes for the first)
//! and `mac = MAC(prev ‖ canonical encoding of every other field, seq included)`. The store does
//! no cryptography: the server supplies the MAC through [`AuditMac`]. Appends run inside the
//! writer's group transaction, so concurrent appends read the head and chain one after the
//! other; the head (last seq, its MAC, and a MAC over both) is kept in `meta` in the same
//! transaction, so removing records from the end of the log is detected too.

use std::sync::Arc;

use rusqlite::{Connection, OptionalExtension, Row, params, params_from_iter};

use crate::StoreError;
use crate::sqlite::SqliteStore;

/// The schema (one migration). Indexes serve the filters whose values repeat (few principals,
/// vaults, operations: every insert lands at the end of its value's range, so a group commit
/// dirties a handful of index pages). There is deliberately no index on `object`: objects are
/// many, each insert would dirty a different leaf page, and measured on GET secret that halved
/// the append rate; an object filter scans in seq order instead (see [`query`]).
pub(crate) const MIGRATION: &str = r#"
CREATE TABLE audit_log (
    seq INTEGER PRIMARY KEY,
    time INTEGER NOT NULL,
    request_id TEXT,
    principal TEXT NOT NULL,
    source TEXT,
    vault TEXT,
    object TEXT,
    operation TEXT NOT NULL,
    status INTEGER,
    outcome TEXT NOT NULL,
    detail TEXT,
    prev BLOB NOT NULL,
    mac BLOB NOT NULL
);
CREATE INDEX audit_log_principal ON audit_log (principal, seq);
CREATE INDEX audit_log_vault ON audit_log (vault, seq);
CREATE INDEX audit_log_operation ON audit_log (operation, seq);
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
    BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
    BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
"#;

/// The `meta` key of the chain head: `seq (8, big-endian) ‖ mac (32) ‖ head tag (32)`.
pub(crate) const HEAD_KEY: &str = "audit_head";
/// The operation of the record an append writes when it finds the head missing, altered or
/// behind the last record: it chains on from the last record and leaves the finding in the log.
pub const HEAD_LOST_OPERATION: &str = "audit.head-lost";

/// Computes the chain's MACs. Supplied by the server, which holds the key.
pub trait AuditMac: Send + Sync {
    /// The MAC of `rec` after the record whose MAC is `prev`: over `prev ‖ rec.canonical()`.
    fn record(&self, prev: &[u8], rec: &AuditRecord) -> [u8; 32];
    /// The tag of the head kept in `meta`: the last record's seq and MAC.
    fn head(&self, seq: i64, mac: &[u8]) -> [u8; 32];
}

/// A shared [`AuditMac`].
pub type AuditChain = Arc<dyn AuditMac>;

/// A record to append (the store assigns seq, prev and mac).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NewAuditRecord {
    /// Unix milliseconds. The store keeps times non-decreasing in seq: a record is never
    /// stamped earlier than the one before it.
    pub time: i64,
    /// The request id (`x-ms-request-id`), if a request caused it.
    pub request_id: Option<String>,
    /// Who: the principal's name (`system` for background actions).
    pub principal: String,
    /// The client's address.
    pub source: Option<String>,
    /// The vault addressed.
    pub vault: Option<String>,
    /// The object, e.g. `certificates/web/<version>` or `admin/principals/bob`.
    pub object: Option<String>,
    /// A stable operation name, e.g. `secrets.get`.
    pub operation: String,
    /// The HTTP status, if any.
    pub status: Option<i64>,
    /// `ok`, `denied` or `error`.
    pub outcome: String,
    /// Extra facts as JSON (never secret values).
    pub detail: Option<String>,
}

/// A stored record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    /// Position in the chain, from 1, without gaps.
    pub seq: i64,
    /// The fields.
    pub fields: NewAuditRecord,
    /// The MAC of the record before (32 zero bytes for the first).
    pub prev: Vec<u8>,
    /// This record's MAC.
    pub mac: Vec<u8>,
}

fn put_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        None => out.push(0),
        Some(s) => {
            out.push(1);
            out.extend_from_slice(&u64::try_from(s.len()).unwrap_or(u64::MAX).to_be_bytes());
            out.extend_from_slice(s.as_bytes());
        }
    }
}

impl AuditRecord {
    /// The canonical encoding the MAC covers: a version tag, then every field but `prev` and
    /// `mac` in a fixed order: seq and time as 8-byte big-endian integers, each optional text
    /// as `0` (absent) or `1 ‖ length (8 bytes) ‖ UTF-8`, the status as `0` or `1 ‖ 8 bytes`.
    pub fn canonical(&self) -> Vec<u8> {
        let f = &self.fields;
        let mut out = Vec::with_capacity(
            96 + f.principal.len()
                + f.operation.len()
                + f.object.as_ref().map_or(0, String::len)
                + f.detail.as_ref().map_or(0, String::len),
        );
        out.extend_from_slice(b"certvault/audit/v1\0");
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&f.time.to_be_bytes());
        put_str(&mut out, f.request_id.as_deref());
        put_str(&mut out, Some(&f.principal));
        put_str(&mut out, f.source.as_deref());
        put_str(&mut out, f.vault.as_deref());
        put_str(&mut out, f.object.as_deref());
        put_str(&mut out, Some(&f.operation));
        match f.status {
            None => out.push(0),
            Some(s) => {
                out.push(1);
                out.extend_from_slice(&s.to_be_bytes());
            }
        }
        put_str(&mut out, Some(&f.outcome));
        put_str(&mut out, f.detail.as_deref());
        out
    }
}

/// Reads the canonical encoding's parts back; `None` if `b` is not one.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn i64(&mut self) -> Option<i64> {
        let (v, rest) = self.0.split_first_chunk::<8>()?;
        self.0 = rest;
        Some(i64::from_be_bytes(*v))
    }

    fn flag(&mut self) -> Option<bool> {
        let (f, rest) = self.0.split_first()?;
        self.0 = rest;
        match f {
            0 => Some(false),
            1 => Some(true),
            _ => None,
        }
    }

    fn opt_str(&mut self) -> Option<Option<String>> {
        if !self.flag()? {
            return Some(None);
        }
        let len = usize::try_from(self.i64()?).ok()?;
        if self.0.len() < len {
            return None;
        }
        let (s, rest) = self.0.split_at(len);
        self.0 = rest;
        Some(Some(String::from_utf8(s.to_vec()).ok()?))
    }

    fn str(&mut self) -> Option<String> {
        self.opt_str()?
    }
}

impl AuditRecord {
    /// The record whose [`Self::canonical`] encoding is `b`, with `prev` and `mac`.
    pub fn from_canonical(b: &[u8], prev: &[u8], mac: &[u8]) -> Option<Self> {
        let mut r = Reader(b.strip_prefix(b"certvault/audit/v1\0".as_slice())?);
        let seq = r.i64()?;
        let time = r.i64()?;
        let request_id = r.opt_str()?;
        let principal = r.str()?;
        let source = r.opt_str()?;
        let vault = r.opt_str()?;
        let object = r.opt_str()?;
        let operation = r.str()?;
        let status = if r.flag()? { Some(r.i64()?) } else { None };
        let outcome = r.str()?;
        let detail = r.opt_str()?;
        if !r.0.is_empty() {
            return None;
        }
        Some(Self {
            seq,
            fields: NewAuditRecord {
                time,
                request_id,
                principal,
                source,
                vault,
                object,
                operation,
                status,
                outcome,
                detail,
            },
            prev: prev.to_vec(),
            mac: mac.to_vec(),
        })
    }
}

/// What to list. Time bounds are Unix milliseconds, `from` inclusive and `to` exclusive.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// Records at or after this time.
    pub from: Option<i64>,
    /// Records before this time.
    pub to: Option<i64>,
    /// Exactly this principal.
    pub principal: Option<String>,
    /// Exactly this vault.
    pub vault: Option<String>,
    /// This object or anything under it (`certificates/web` matches
    /// `certificates/web/<version>`, not `certificates/webapp`).
    pub object: Option<String>,
    /// Exactly this operation.
    pub operation: Option<String>,
    /// Records after this seq (paging cursor).
    pub after: i64,
}

/// What a verification found wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditProblemKind {
    /// A record's contents differ from what was recorded.
    Changed,
    /// Records are missing from the middle of the chain.
    Removed,
    /// Records stand at positions other than their own.
    Reordered,
    /// Records are missing at the end of the chain.
    Truncated,
}

impl AuditProblemKind {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Changed => "changed",
            Self::Removed => "removed",
            Self::Reordered => "reordered",
            Self::Truncated => "truncated",
        }
    }
}

/// The first problem a verification found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditProblem {
    /// The seq of the first bad (or first missing) record.
    pub seq: i64,
    /// What is wrong.
    pub kind: AuditProblemKind,
    /// A sentence naming the records involved.
    pub detail: String,
}

/// The result of walking the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditVerification {
    /// Records whose MAC and link were checked before the walk stopped.
    pub records_checked: u64,
    /// The head kept in `meta` (seq and MAC), if any.
    pub head: Option<(i64, Vec<u8>)>,
    /// The first problem, if any.
    pub problem: Option<AuditProblem>,
}

pub(crate) const COLS: &str = "seq, time, request_id, principal, source, vault, object, operation, status, \
     outcome, detail, prev, mac";

fn audit_row(r: &Row<'_>) -> rusqlite::Result<AuditRecord> {
    Ok(AuditRecord {
        seq: r.get(0)?,
        fields: NewAuditRecord {
            time: r.get(1)?,
            request_id: r.get(2)?,
            principal: r.get(3)?,
            source: r.get(4)?,
            vault: r.get(5)?,
            object: r.get(6)?,
            operation: r.get(7)?,
            status: r.get(8)?,
            outcome: r.get(9)?,
            detail: r.get(10)?,
        },
        prev: r.get(11)?,
        mac: r.get(12)?,
    })
}

/// The stored head: (seq, mac, tag).
pub(crate) type Head = (i64, Vec<u8>, Vec<u8>);

/// A value as bytes, whatever its storage class (tampering may change it): a head or MAC of
/// the wrong type then fails its check instead of failing every append.
fn bytes_of(v: rusqlite::types::Value) -> Vec<u8> {
    use rusqlite::types::Value;
    match v {
        Value::Blob(b) => b,
        Value::Text(t) => t.into_bytes(),
        Value::Integer(i) => i.to_be_bytes().to_vec(),
        Value::Real(_) | Value::Null => Vec::new(),
    }
}

fn read_head(c: &Connection) -> Result<Option<Head>, StoreError> {
    let v: Option<rusqlite::types::Value> = c
        .prepare_cached("SELECT value FROM meta WHERE key = ?1")?
        .query_row([HEAD_KEY], |r| r.get(0))
        .optional()?;
    Ok(v.map(bytes_of).map(parse_head))
}

fn last_record(c: &Connection) -> Result<Option<(i64, Vec<u8>, i64)>, StoreError> {
    Ok(
        c.prepare_cached("SELECT seq, mac, time FROM audit_log ORDER BY seq DESC LIMIT 1")?
            .query_row([], |r| {
                let mac: rusqlite::types::Value = r.get(1)?;
                let time: Option<i64> = r.get(2).ok();
                Ok((r.get(0)?, bytes_of(mac), time.unwrap_or(i64::MIN)))
            })
            .optional()?,
    )
}

/// Appends `records` after the current head inside the caller's transaction; returns their
/// seqs.
fn append(
    c: &Connection,
    records: Vec<NewAuditRecord>,
    chain: &dyn AuditMac,
) -> Result<Vec<i64>, StoreError> {
    append_at(c, records, chain).map(|(seqs, _)| seqs)
}

/// Where the chain continues: the last seq, its MAC, and the time floor.
pub(crate) type ChainEnd = (i64, Vec<u8>, i64);

/// What an append writes: the records (chained), the seqs of the caller's records, where the
/// chain continues, and the new head value for `meta`.
pub(crate) struct AppendPlan {
    pub(crate) rows: Vec<AuditRecord>,
    pub(crate) seqs: Vec<i64>,
    pub(crate) end: ChainEnd,
    pub(crate) head_value: Vec<u8>,
}

/// Chains `records` after the stored `head` and `last` record (read in the same transaction,
/// which must keep other appends out until it commits). Backend-independent.
pub(crate) fn plan_append(
    head: Option<Head>,
    last: Option<(i64, Vec<u8>, i64)>,
    records: Vec<NewAuditRecord>,
    chain: &dyn AuditMac,
) -> AppendPlan {
    let head_ok = head
        .as_ref()
        .map(|(seq, mac, tag)| chain.head(*seq, mac).as_slice() == tag.as_slice());
    // Where the chain continues, and whether the head was lost.
    let mut lost: Option<(&str, Option<i64>)> = None;
    let (mut seq, mut prev, mut floor) = match (&head, head_ok, &last) {
        (None, _, None) => (0, vec![0u8; 32], i64::MIN),
        // The head is authentic and not behind the last record: continue after it. When
        // records were removed from the end, the new records leave the gap visible.
        (Some((hs, hm, _)), Some(true), Some((ls, _, lt))) if hs >= ls => (*hs, hm.clone(), *lt),
        (Some((hs, hm, _)), Some(true), None) => (*hs, hm.clone(), i64::MIN),
        (h, ok, l) => {
            let reason = match (h, ok) {
                (None, _) => "missing",
                (Some(_), Some(false)) => "altered",
                _ => "behind",
            };
            lost = Some((reason, h.as_ref().map(|h| h.0)));
            match l {
                Some((ls, lm, lt)) => (*ls, lm.clone(), *lt),
                None => (0, vec![0u8; 32], i64::MIN),
            }
        }
    };
    let mut all = Vec::with_capacity(records.len() + 1);
    if let Some((reason, head_seq)) = lost {
        tracing::error!(
            reason,
            last_seq = seq,
            "the audit chain head was {reason}; the finding is recorded in the log"
        );
        let detail = serde_json::json!({"reason": reason, "last_seq": seq, "head_seq": head_seq});
        all.push((
            false,
            NewAuditRecord {
                time: records.first().map_or(floor, |r| r.time),
                principal: "system".into(),
                operation: HEAD_LOST_OPERATION.into(),
                outcome: "error".into(),
                detail: Some(detail.to_string()),
                ..NewAuditRecord::default()
            },
        ));
    }
    all.extend(records.into_iter().map(|r| (true, r)));
    let mut seqs = Vec::with_capacity(all.len());
    let mut rows = Vec::with_capacity(all.len());
    for (theirs, mut fields) in all {
        seq += 1;
        fields.time = fields.time.max(floor);
        floor = fields.time;
        let mut rec = AuditRecord {
            seq,
            fields,
            prev,
            mac: Vec::new(),
        };
        rec.mac = chain.record(&rec.prev, &rec).to_vec();
        if theirs {
            seqs.push(seq);
        }
        prev = rec.mac.clone();
        rows.push(rec);
    }
    let head_value = head_value(seq, &prev, chain);
    AppendPlan {
        rows,
        seqs,
        end: (seq, prev, floor),
        head_value,
    }
}

/// The `meta` value of the head at (`seq`, `mac`).
pub(crate) fn head_value(seq: i64, mac: &[u8], chain: &dyn AuditMac) -> Vec<u8> {
    let mut value = Vec::with_capacity(72);
    value.extend_from_slice(&seq.to_be_bytes());
    value.extend_from_slice(mac);
    value.extend_from_slice(&chain.head(seq, mac));
    value
}

/// Parses a stored head value (see [`HEAD_KEY`]).
pub(crate) fn parse_head(v: Vec<u8>) -> Head {
    match v.split_first_chunk::<8>() {
        Some((seq, rest)) if rest.len() == 64 => {
            let (mac, tag) = rest.split_at(32);
            (i64::from_be_bytes(*seq), mac.to_vec(), tag.to_vec())
        }
        // A head of the wrong shape counts as altered: its tag cannot match.
        Some((seq, rest)) => (i64::from_be_bytes(*seq), rest.to_vec(), Vec::new()),
        None => (0, Vec::new(), Vec::new()),
    }
}

/// [`append`], also returning where the chain continues after the appended records.
fn append_at(
    c: &Connection,
    records: Vec<NewAuditRecord>,
    chain: &dyn AuditMac,
) -> Result<(Vec<i64>, ChainEnd), StoreError> {
    let plan = plan_append(read_head(c)?, last_record(c)?, records, chain);
    let mut insert = c.prepare_cached(
        "INSERT INTO audit_log (seq, time, request_id, principal, source, vault, object, \
         operation, status, outcome, detail, prev, mac) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
    )?;
    for rec in &plan.rows {
        insert_record(&mut insert, rec)?;
    }
    c.prepare_cached("INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)")?
        .execute(params![HEAD_KEY, plan.head_value])?;
    Ok((plan.seqs, plan.end))
}

/// Runs an `INSERT … INTO audit_log` statement whose 13 parameters are a record's columns.
fn insert_record(
    insert: &mut rusqlite::Statement<'_>,
    rec: &AuditRecord,
) -> Result<(), StoreError> {
    let f = &rec.fields;
    insert.execute(params![
        rec.seq,
        f.time,
        f.request_id,
        f.principal,
        f.source,
        f.vault,
        f.object,
        f.operation,
        f.status,
        f.outcome,
        f.detail,
        rec.prev,
        rec.mac
    ])?;
    Ok(())
}

/// Stores records already chained by the journal (seq, prev and MAC given), skipping those
/// already stored, and moves the head forward to the last of them.
pub(crate) fn import(
    c: &Connection,
    records: &[AuditRecord],
    chain: &dyn AuditMac,
) -> Result<(), StoreError> {
    let mut insert = c.prepare_cached(
        "INSERT OR IGNORE INTO audit_log (seq, time, request_id, principal, source, vault, \
         object, operation, status, outcome, detail, prev, mac) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
    )?;
    for rec in records {
        insert_record(&mut insert, rec)?;
    }
    let Some(last) = records.last() else {
        return Ok(());
    };
    let head_seq = read_head(c)?.map_or(0, |h| h.0);
    if last.seq > head_seq {
        c.prepare_cached("INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)")?
            .execute(params![HEAD_KEY, head_value(last.seq, &last.mac, chain)])?;
    }
    Ok(())
}

/// `s` with its last character incremented: the exclusive upper bound of strings starting
/// with `s`.
fn next_prefix(s: &str) -> Option<String> {
    let mut chars: Vec<char> = s.chars().collect();
    while let Some(c) = chars.pop() {
        let mut n = u32::from(c) + 1;
        while n <= 0x10_FFFF {
            if let Some(next) = char::from_u32(n) {
                chars.push(next);
                return Some(chars.into_iter().collect());
            }
            n += 1;
        }
    }
    None
}

/// The first record (by seq) stamped at or after `t`, found by binary search on seq: times never
/// decrease along the chain, so "the first record from seq m on is at or after t" is monotone
/// in m. About 2 log2(n) point reads.
fn first_seq_at(c: &Connection, t: i64) -> Result<Option<i64>, StoreError> {
    let bounds: (Option<i64>, Option<i64>) = c
        .prepare_cached("SELECT MIN(seq), MAX(seq) FROM audit_log")?
        .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    let (Some(mut lo), Some(mut hi)) = bounds else {
        return Ok(None);
    };
    let mut st =
        c.prepare_cached("SELECT seq, time FROM audit_log WHERE seq >= ?1 ORDER BY seq LIMIT 1")?;
    let mut at = |m: i64| -> Result<Option<(i64, i64)>, StoreError> {
        Ok(st
            .query_row([m], |r| {
                let time: Option<i64> = r.get(1).ok();
                Ok((r.get(0)?, time.unwrap_or(i64::MIN)))
            })
            .optional()?)
    };
    if at(hi)?.is_none_or(|(_, time)| time < t) {
        return Ok(None);
    }
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        match at(mid)? {
            Some((_, time)) if time >= t => hi = mid,
            _ => lo = mid + 1,
        }
    }
    Ok(at(lo)?.map(|(seq, _)| seq))
}

/// An argument of [`query_sql`].
pub(crate) enum Arg {
    Int(i64),
    Text(String),
}

/// The statement of an audit query and its arguments, placeholders made by `ph` (1-based).
/// `lo` is the first seq at or after `f.from` (the caller found one, else there is nothing to
/// return), `hi` the first seq at or after `f.to`.
pub(crate) fn query_sql(
    f: &AuditFilter,
    limit: usize,
    lo: Option<i64>,
    hi: Option<i64>,
    ph: fn(usize) -> String,
) -> (String, Vec<Arg>) {
    let mut cond: Vec<String> = Vec::new();
    let mut args: Vec<Arg> = Vec::new();
    let mut add = |sql: &str, new: Vec<Arg>| {
        let mut out = String::new();
        let mut n = args.len();
        for (i, part) in sql.split('?').enumerate() {
            if i > 0 {
                n += 1;
                out.push_str(&ph(n));
            }
            out.push_str(part);
        }
        args.extend(new);
        cond.push(out);
    };
    add("seq > ?", vec![Arg::Int(f.after)]);
    if let (Some(from), Some(lo)) = (f.from, lo) {
        add("seq >= ? AND time >= ?", vec![Arg::Int(lo), Arg::Int(from)]);
    }
    if let Some(to) = f.to {
        if let Some(hi) = hi {
            add("seq < ?", vec![Arg::Int(hi)]);
        }
        add("time < ?", vec![Arg::Int(to)]);
    }
    for (col, v) in [
        ("principal", &f.principal),
        ("vault", &f.vault),
        ("operation", &f.operation),
    ] {
        if let Some(v) = v {
            add(&format!("{col} = ?"), vec![Arg::Text(v.clone())]);
        }
    }
    if let Some(o) = &f.object {
        let o = o.trim_end_matches('/');
        let under = format!("{o}/");
        match next_prefix(&under) {
            Some(upper) => add(
                "(object = ? OR (object >= ? AND object < ?))",
                vec![Arg::Text(o.to_owned()), Arg::Text(under), Arg::Text(upper)],
            ),
            None => add(
                "(object = ? OR object >= ?)",
                vec![Arg::Text(o.to_owned()), Arg::Text(under)],
            ),
        }
    }
    let mut sql = format!(
        "SELECT {COLS} FROM audit_log WHERE {} ORDER BY seq LIMIT ",
        cond.join(" AND ")
    );
    sql.push_str(&ph(args.len() + 1));
    args.push(Arg::Int(i64::try_from(limit).unwrap_or(i64::MAX)));
    (sql, args)
}

/// Up to `limit` records matching `f` in seq order. Principal, vault and operation use their
/// `(value, seq)` index and the time range a seq range, so the cost follows the page; the object
/// filter has no index and follows the records scanned within the other conditions.
fn query(c: &Connection, f: &AuditFilter, limit: usize) -> Result<Vec<AuditRecord>, StoreError> {
    use rusqlite::types::Value;
    // Times never decrease along the chain (the append keeps them so), so a time range is a
    // seq range, found by a binary search on seq (no index on time to maintain).
    let lo = match f.from {
        Some(from) => match first_seq_at(c, from)? {
            Some(lo) => Some(lo),
            None => return Ok(Vec::new()),
        },
        None => None,
    };
    let hi = match f.to {
        Some(to) => first_seq_at(c, to)?,
        None => None,
    };
    let (sql, args) = query_sql(f, limit, lo, hi, |_| "?".to_owned());
    let args = args.into_iter().map(|a| match a {
        Arg::Int(i) => Value::Integer(i),
        Arg::Text(t) => Value::Text(t),
    });
    let mut st = c.prepare_cached(&sql)?;
    let rows = st.query_map(params_from_iter(args), audit_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn problem(seq: i64, kind: AuditProblemKind, detail: String) -> Option<AuditProblem> {
    Some(AuditProblem { seq, kind, detail })
}

/// How far from its position a misplaced record's original seq is searched for.
const ORIGIN_SEARCH: i64 = 1_000_000;

/// Where a record whose `prev` is not the MAC of the record before it (`expected`) came
/// from: `Ok(s)`, the seq it was made for (an authentic record from another position), or
/// `Err(problem)` when that is already the explanation.
fn misplaced_origin(
    chain: &dyn AuditMac,
    rec: &AuditRecord,
    expected: &[u8],
    max_seq: i64,
) -> Result<i64, Option<AuditProblem>> {
    use AuditProblemKind::Changed;
    let p = rec.seq;
    // Only the prev field was edited: the record is authentic after its real predecessor.
    if chain.record(expected, rec).as_slice() == rec.mac.as_slice() {
        return Err(problem(
            p,
            Changed,
            format!(
                "record {p} was changed: its link to record {} was edited",
                p - 1
            ),
        ));
    }
    // An authentic record from another position: find the seq it was made for.
    let mut probe = rec.clone();
    for d in 1..=ORIGIN_SEARCH {
        let mut any = false;
        for s in [p + d, p - d] {
            if s < 1 || s > max_seq + 1024 {
                continue;
            }
            any = true;
            probe.seq = s;
            if chain.record(&rec.prev, &probe).as_slice() == rec.mac.as_slice() {
                return Ok(s);
            }
        }
        if !any {
            break;
        }
    }
    Err(problem(
        p,
        Changed,
        format!(
            "record {p} was changed: it neither links to record {} nor matches its MAC",
            p - 1
        ),
    ))
}

/// The problem of position `p` holding the record made as `s`, given where the record that
/// belongs at `p` stands now (`own`: the seq of a record whose `prev` is what `p`'s should be).
fn misplaced_problem(p: i64, s: i64, own: Option<i64>) -> Option<AuditProblem> {
    use AuditProblemKind::{Removed, Reordered};
    match own {
        Some(r) => problem(
            p,
            Reordered,
            format!(
                "records were reordered: position {p} holds the record made as {s}, and the \
                 record made as {p} stands at position {r}"
            ),
        ),
        None if s > p => problem(
            p,
            Removed,
            format!(
                "record {p} was removed and the records after it renumbered: position {p} \
                 holds the record made as {s}"
            ),
        ),
        None => problem(
            p,
            Removed,
            format!("record {p} was removed: a copy of record {s} stands in its place"),
        ),
    }
}

/// What the verifier wants after a row.
pub(crate) enum Step {
    /// The row is fine: the next one.
    Next,
    /// A problem was found: stop reading.
    Stop,
    /// The row is misplaced and was made for seq `s`: the caller looks up the record whose
    /// `prev` is `expected` (other than at `seq`) and calls [`Verifier::misplaced`].
    Lookup {
        seq: i64,
        made_as: i64,
        expected: Vec<u8>,
    },
}

/// Walks the chain row by row (in seq order), independent of the backend.
pub(crate) struct Verifier<'a> {
    chain: &'a dyn AuditMac,
    max_seq: i64,
    checked: u64,
    expected_seq: i64,
    expected_prev: Vec<u8>,
    found: Option<AuditProblem>,
}

impl<'a> Verifier<'a> {
    /// A verifier for a log whose highest seq (of the last row and the head) is `max_seq`.
    pub(crate) fn new(chain: &'a dyn AuditMac, max_seq: i64) -> Self {
        Self {
            chain,
            max_seq,
            checked: 0,
            expected_seq: 1,
            expected_prev: vec![0u8; 32],
            found: None,
        }
    }

    /// Checks the next row: its seq and the record (or why it cannot be read).
    pub(crate) fn row(&mut self, seq: i64, rec: Result<AuditRecord, String>) -> Step {
        use AuditProblemKind::{Changed, Removed, Truncated};
        let expected_seq = self.expected_seq;
        let rec = match rec {
            Ok(r) => r,
            Err(e) => {
                self.found = problem(
                    seq,
                    Changed,
                    format!("record {seq} was changed: it cannot be read ({e})"),
                );
                return Step::Stop;
            }
        };
        if seq != expected_seq {
            self.found = if seq > expected_seq {
                let what = if seq - 1 == expected_seq {
                    format!("record {expected_seq} is")
                } else {
                    format!("records {expected_seq} to {} are", seq - 1)
                };
                problem(
                    expected_seq,
                    Removed,
                    format!("{what} missing (the next record present is {seq})"),
                )
            } else {
                problem(seq, Changed, format!("record {seq} is out of sequence"))
            };
            return Step::Stop;
        }
        if rec.prev != self.expected_prev {
            return match misplaced_origin(self.chain, &rec, &self.expected_prev, self.max_seq) {
                Ok(made_as) => Step::Lookup {
                    seq,
                    made_as,
                    expected: self.expected_prev.clone(),
                },
                Err(p) => {
                    self.found = p;
                    Step::Stop
                }
            };
        }
        let mac = self.chain.record(&rec.prev, &rec);
        if mac.as_slice() != rec.mac.as_slice() {
            self.found = problem(
                seq,
                Changed,
                format!("record {seq} was changed: it does not match its MAC"),
            );
            return Step::Stop;
        }
        if rec.fields.operation == HEAD_LOST_OPERATION && rec.fields.principal == "system" {
            let detail: serde_json::Value = rec
                .fields
                .detail
                .as_deref()
                .and_then(|d| serde_json::from_str(d).ok())
                .unwrap_or_default();
            let reason = detail["reason"].as_str().unwrap_or("lost");
            self.found = problem(
                seq,
                if reason == "missing" {
                    Truncated
                } else {
                    Changed
                },
                format!(
                    "when record {seq} was appended the stored chain head was {reason}: \
                     records after {} may have been removed",
                    seq - 1
                ),
            );
            return Step::Stop;
        }
        self.checked += 1;
        self.expected_seq += 1;
        self.expected_prev = rec.mac;
        Step::Next
    }

    /// Records the answer to a [`Step::Lookup`].
    pub(crate) fn misplaced(&mut self, seq: i64, made_as: i64, own: Option<i64>) {
        self.found = misplaced_problem(seq, made_as, own);
    }

    /// The result, after the rows, given the stored head.
    pub(crate) fn finish(self, head: Option<Head>) -> AuditVerification {
        use AuditProblemKind::{Changed, Truncated};
        let last_seq = self.expected_seq - 1;
        let expected_prev = self.expected_prev;
        let chain = self.chain;
        let found = self.found.or_else(|| match &head {
            None if last_seq == 0 => None,
            None => problem(
                last_seq + 1,
                Truncated,
                format!(
                    "the stored chain head is missing: records after {last_seq} may have been removed"
                ),
            ),
            Some((hs, hm, tag)) => {
                if chain.head(*hs, hm).as_slice() != tag.as_slice() {
                    problem(*hs, Changed, "the stored chain head was altered".into())
                } else if *hs > last_seq {
                    let what = if *hs == last_seq + 1 {
                        format!("record {hs} is")
                    } else {
                        format!("records {} to {hs} are", last_seq + 1)
                    };
                    problem(
                        last_seq + 1,
                        Truncated,
                        format!("{what} missing from the end of the log (the chain head is {hs})"),
                    )
                } else if *hs < last_seq {
                    problem(
                        hs + 1,
                        Changed,
                        format!(
                            "the stored chain head ({hs}) is behind the last record ({last_seq}): \
                             it was replaced by an older one"
                        ),
                    )
                } else if *hm != expected_prev {
                    problem(
                        *hs,
                        Changed,
                        format!("record {hs} differs from the stored chain head"),
                    )
                } else {
                    None
                }
            }
        });
        AuditVerification {
            records_checked: self.checked,
            head: head.map(|(s, m, _)| (s, m)),
            problem: found,
        }
    }
}

fn verify(c: &Connection, chain: &dyn AuditMac) -> Result<AuditVerification, StoreError> {
    // One read transaction: the head and the rows are one snapshot, whatever is appended
    // meanwhile.
    let tx = c.unchecked_transaction()?;
    let head = read_head(&tx)?;
    let max_seq = {
        let last = last_record(&tx)?.map_or(0, |l| l.0);
        last.max(head.as_ref().map_or(0, |h| h.0))
    };
    let mut v = Verifier::new(chain, max_seq);
    {
        let mut st = tx.prepare(&format!("SELECT {COLS} FROM audit_log ORDER BY seq"))?;
        let mut rows = st.query([])?;
        while let Some(row) = rows.next()? {
            let seq: i64 = row.get(0)?;
            match v.row(seq, audit_row(row).map_err(|e| e.to_string())) {
                Step::Next => {}
                Step::Stop => break,
                Step::Lookup {
                    seq,
                    made_as,
                    expected,
                } => {
                    let own: Option<i64> = tx
                        .prepare("SELECT seq FROM audit_log WHERE prev = ?1 AND seq != ?2 LIMIT 1")?
                        .query_row(params![expected, seq], |r| r.get(0))
                        .optional()?;
                    v.misplaced(seq, made_as, own);
                    break;
                }
            }
        }
    }
    tx.finish()?;
    Ok(v.finish(head))
}

impl SqliteStore {
    /// Appends records to the audit chain in one write (one job of the group commit); resolves
    /// with their seqs once they are durable.
    pub async fn append_audit(
        &self,
        records: Vec<NewAuditRecord>,
        chain: AuditChain,
    ) -> Result<Vec<i64>, StoreError> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        self.write_audit(move |c| append(c, records, chain.as_ref()))
            .await
    }

    /// Checks the chain head as an append does (recording a lost head in the log) without
    /// appending anything else; returns where the next record continues the chain.
    pub(crate) async fn audit_chain_end(&self, chain: AuditChain) -> Result<ChainEnd, StoreError> {
        self.write_audit(move |c| append_at(c, Vec::new(), chain.as_ref()).map(|(_, end)| end))
            .await
    }

    /// The last stored record's seq (0 when there is none).
    pub(crate) async fn audit_last_seq(&self) -> Result<i64, StoreError> {
        self.read(|c| Ok(last_record(c)?.map_or(0, |r| r.0))).await
    }

    /// Up to `limit` records matching `filter`, in seq order.
    pub async fn audit_records(
        &self,
        filter: AuditFilter,
        limit: usize,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        self.read(move |c| query(c, &filter, limit)).await
    }

    /// Walks the whole chain and reports the first problem.
    pub async fn verify_audit(&self, chain: AuditChain) -> Result<AuditVerification, StoreError> {
        self.read(move |c| verify(c, chain.as_ref())).await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
pub(crate) mod tests {
    use super::*;
    use crate::AuditProblemKind::*;
    use crate::Store;
    use crate::store::testing::{TestStore, backends};

    /// A keyed stand-in for the server's HMAC (the store tests need a MAC that depends on the
    /// key, every field and the order; not a secure one).
    pub(crate) struct TestMac(pub(crate) u64);

    fn fnv(seed: u64, parts: &[&[u8]]) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (lane, chunk) in out.chunks_mut(8).enumerate() {
            let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed ^ (lane as u64).wrapping_mul(0x9e37);
            for p in parts {
                for b in *p {
                    h ^= u64::from(*b);
                    h = h.wrapping_mul(0x0100_0000_01b3);
                }
                h ^= 0xff;
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
            chunk.copy_from_slice(&h.to_be_bytes());
        }
        out
    }

    impl AuditMac for TestMac {
        fn record(&self, prev: &[u8], rec: &AuditRecord) -> [u8; 32] {
            fnv(self.0, &[prev, &rec.canonical()])
        }
        fn head(&self, seq: i64, mac: &[u8]) -> [u8; 32] {
            fnv(self.0, &[mac, b"head", &seq.to_be_bytes()])
        }
    }

    pub(crate) fn chain() -> AuditChain {
        Arc::new(TestMac(42))
    }

    pub(crate) fn rec(i: i64, principal: &str, op: &str, object: &str) -> NewAuditRecord {
        NewAuditRecord {
            time: 1_000 + i,
            request_id: Some(format!("req{i}")),
            principal: principal.into(),
            source: Some("127.0.0.1".into()),
            vault: Some("default".into()),
            object: Some(object.into()),
            operation: op.into(),
            status: Some(200),
            outcome: "ok".into(),
            detail: None,
        }
    }

    /// One store per backend, each with `n` records appended.
    async fn stores_with(n: i64) -> Vec<TestStore> {
        let mut out = Vec::new();
        for t in backends().await {
            eprintln!("backend: {}", t.store.backend());
            for i in 1..=n {
                t.store
                    .append_audit(
                        vec![rec(i, "alice", "secrets.get", &format!("secrets/s{i}"))],
                        chain(),
                    )
                    .await
                    .unwrap();
            }
            out.push(t);
        }
        out
    }

    /// Runs `sql` on a raw connection with the append-only triggers dropped, as an attacker
    /// would do.
    async fn tamper(t: &TestStore, sql: &str) {
        let drop = match t.store {
            Store::Sqlite(_) => {
                "DROP TRIGGER IF EXISTS audit_log_no_update; \
                                 DROP TRIGGER IF EXISTS audit_log_no_delete;"
            }
            Store::Postgres(_) => "DROP TRIGGER IF EXISTS audit_log_no_change ON audit_log;",
        };
        t.raw(&format!("{drop} {sql}")).await.unwrap();
    }

    /// 32 zero bytes as an SQL expression of the backend.
    fn zero32(t: &TestStore) -> &'static str {
        match t.store {
            Store::Sqlite(_) => "zeroblob(32)",
            Store::Postgres(_) => "decode(repeat('00', 32), 'hex')",
        }
    }

    async fn verify_problem(s: &Store) -> AuditProblem {
        let v = s.verify_audit(chain()).await.unwrap();
        v.problem.expect("a problem is found")
    }

    #[tokio::test]
    async fn concurrent_appends_chain_without_gaps_and_verify() {
        for t in stores_with(0).await {
            concurrent_appends_on(&t.store).await;
        }
    }

    async fn concurrent_appends_on(s: &Store) {
        let mut tasks = Vec::new();
        for t in 0..32 {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                let mut seqs = Vec::new();
                for i in 0..25 {
                    // some appends carry several records (one job)
                    let n = if i % 5 == 0 { 3 } else { 1 };
                    let recs = (0..n)
                        .map(|k| {
                            rec(
                                i64::from(t * 100 + i * 3 + k),
                                &format!("p{t}"),
                                "keys.sign",
                                "keys/k",
                            )
                        })
                        .collect();
                    let got = s.append_audit(recs, chain()).await.unwrap();
                    assert_eq!(got.len(), n as usize);
                    // one job's records are consecutive
                    assert!(got.windows(2).all(|w| w[1] == w[0] + 1));
                    seqs.extend(got);
                }
                seqs
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        all.sort_unstable();
        let n = 32 * (20 + 5 * 3);
        assert_eq!(all, (1..=n).collect::<Vec<i64>>());
        let v = s.verify_audit(chain()).await.unwrap();
        assert_eq!(v.problem, None);
        assert_eq!(v.records_checked, u64::try_from(n).unwrap());
        assert_eq!(v.head.as_ref().map(|h| h.0), Some(n));
        // times never go backwards along the chain
        let rows = s
            .audit_records(AuditFilter::default(), 10_000)
            .await
            .unwrap();
        assert!(
            rows.windows(2)
                .all(|w| w[0].fields.time <= w[1].fields.time)
        );
        // a different key does not verify
        let v = s.verify_audit(Arc::new(TestMac(7))).await.unwrap();
        assert_eq!(v.problem.unwrap().seq, 1);
    }

    /// Two stores on one PostgreSQL database (two replicas) appending at once, with both
    /// commit modes: every append continues the chain from the record before it (the chain's
    /// lock is taken before its end is read), so the chain verifies with no "head lost" record.
    #[tokio::test]
    async fn replicas_append_to_one_postgres_chain_without_forks() {
        let t = crate::store::testing::postgres().await;
        let other = Store::open(&t.database).await.unwrap();
        let mut tasks = Vec::new();
        for (r, s) in [t.store.clone(), other.clone()].into_iter().enumerate() {
            for k in 0..6 {
                let s = s.clone();
                tasks.push(tokio::spawn(async move {
                    let Store::Postgres(pg) = &s else {
                        unreachable!("a PostgreSQL store")
                    };
                    for i in 0..60 {
                        let recs = vec![rec(i, &format!("r{r}k{k}"), "secrets.get", "secrets/s")];
                        pg.append_audit_with(recs, chain(), i % 3 == 0)
                            .await
                            .unwrap();
                    }
                }));
            }
        }
        for t in tasks {
            t.await.unwrap();
        }
        let v = t.store.verify_audit(chain()).await.unwrap();
        assert_eq!(v.problem, None);
        assert_eq!(v.records_checked, 2 * 6 * 60);
        other.close();
    }

    #[tokio::test]
    async fn updates_and_deletes_are_refused_by_the_schema() {
        for t in stores_with(3).await {
            assert!(
                t.raw("UPDATE audit_log SET principal = 'x' WHERE seq = 2")
                    .await
                    .is_err()
            );
            assert!(t.raw("DELETE FROM audit_log WHERE seq = 3").await.is_err());
            assert_eq!(t.store.verify_audit(chain()).await.unwrap().problem, None);
        }
    }

    #[tokio::test]
    async fn an_edited_field_is_reported_as_changed() {
        for (col, val) in [
            ("principal", "'mallory'"),
            ("time", "time + 1"),
            ("status", "403"),
            ("detail", "'{}'"),
            ("object", "NULL"),
            ("principal", "5"),
        ] {
            for t in stores_with(6).await {
                tamper(
                    &t,
                    &format!("UPDATE audit_log SET {col} = {val} WHERE seq = 4"),
                )
                .await;
                let s = &t.store;
                let p = verify_problem(s).await;
                assert_eq!((p.seq, p.kind), (4, Changed), "{col}: {p:?}");
                assert_eq!(s.verify_audit(chain()).await.unwrap().records_checked, 3);
            }
        }
        // an edited link alone
        for t in stores_with(6).await {
            let zero = zero32(&t);
            tamper(
                &t,
                &format!("UPDATE audit_log SET prev = {zero} WHERE seq = 5"),
            )
            .await;
            let p = verify_problem(&t.store).await;
            assert_eq!((p.seq, p.kind), (5, Changed), "{p:?}");
        }
    }

    #[tokio::test]
    async fn a_removed_middle_record_is_reported_even_after_more_appends() {
        for t in stores_with(8).await {
            let s = &t.store;
            tamper(&t, "DELETE FROM audit_log WHERE seq = 5").await;
            let p = verify_problem(s).await;
            assert_eq!((p.seq, p.kind), (5, Removed), "{p:?}");
            assert!(p.detail.contains("record 5 is missing"), "{p:?}");
            s.append_audit(
                vec![rec(9, "bob", "certificates.get", "certificates/c")],
                chain(),
            )
            .await
            .unwrap();
            assert_eq!(verify_problem(s).await.seq, 5);
        }

        // removed, then the later records renumbered to close the gap
        for t in stores_with(8).await {
            tamper(
                &t,
                "DELETE FROM audit_log WHERE seq = 3; \
                 UPDATE audit_log SET seq = seq - 1 WHERE seq > 3;",
            )
            .await;
            let p = verify_problem(&t.store).await;
            assert_eq!((p.seq, p.kind), (3, Removed), "{p:?}");
            assert!(p.detail.contains("renumbered"), "{p:?}");
        }
    }

    #[tokio::test]
    async fn removed_last_records_are_reported_as_truncated() {
        for t in stores_with(8).await {
            let s = &t.store;
            tamper(&t, "DELETE FROM audit_log WHERE seq >= 7").await;
            let p = verify_problem(s).await;
            assert_eq!((p.seq, p.kind), (7, Truncated), "{p:?}");
            assert!(p.detail.contains("records 7 to 8 are missing"), "{p:?}");
            // the next append continues after the head, so the gap stays visible
            s.append_audit(
                vec![rec(9, "bob", "certificates.get", "certificates/c")],
                chain(),
            )
            .await
            .unwrap();
            let p = verify_problem(s).await;
            assert_eq!((p.seq, p.kind), (7, Removed), "{p:?}");
        }

        // every record removed
        for t in stores_with(3).await {
            tamper(&t, "DELETE FROM audit_log").await;
            let p = verify_problem(&t.store).await;
            assert_eq!((p.seq, p.kind), (1, Truncated), "{p:?}");
        }

        // the tail and the head removed: the next append leaves the finding in the log
        for t in stores_with(8).await {
            let s = &t.store;
            tamper(
                &t,
                "DELETE FROM audit_log WHERE seq >= 7; DELETE FROM meta WHERE key = 'audit_head';",
            )
            .await;
            let p = verify_problem(s).await;
            assert_eq!((p.seq, p.kind), (7, Truncated), "{p:?}");
            let got = s
                .append_audit(
                    vec![rec(9, "bob", "certificates.get", "certificates/c")],
                    chain(),
                )
                .await
                .unwrap();
            assert_eq!(got, vec![8]);
            let p = verify_problem(s).await;
            assert_eq!((p.seq, p.kind), (7, Truncated), "{p:?}");
            assert!(p.detail.contains("head was missing"), "{p:?}");
        }

        // the tail removed and the head forged to match: the tag does not match
        for t in stores_with(8).await {
            let forged = match t.store {
                Store::Sqlite(_) => "CAST(X'0000000000000006' || mac || zeroblob(32) AS BLOB)",
                Store::Postgres(_) => {
                    "'\\x0000000000000006'::bytea || mac || decode(repeat('00', 32), 'hex')"
                }
            };
            tamper(
                &t,
                &format!(
                    "DELETE FROM audit_log WHERE seq >= 7; \
                     UPDATE meta SET value = (SELECT {forged} FROM audit_log WHERE seq = 6) \
                     WHERE key = 'audit_head';"
                ),
            )
            .await;
            let p = verify_problem(&t.store).await;
            assert_eq!((p.seq, p.kind), (6, Changed), "{p:?}");
            assert!(p.detail.contains("head was altered"), "{p:?}");
        }
    }

    #[tokio::test]
    async fn swapped_records_are_reported_as_reordered() {
        for (a, b) in [(3, 6), (4, 5)] {
            for t in stores_with(8).await {
                // swap everything but seq between the two rows
                tamper(
                    &t,
                    &format!(
                        "CREATE TEMP TABLE t AS SELECT * FROM audit_log WHERE seq IN ({a}, {b});
                         UPDATE audit_log SET (time, request_id, principal, source, vault, object,
                             operation, status, outcome, detail, prev, mac) =
                           (SELECT time, request_id, principal, source, vault, object, operation,
                               status, outcome, detail, prev, mac FROM t
                            WHERE t.seq = CASE audit_log.seq WHEN {a} THEN {b} ELSE {a} END)
                         WHERE seq IN ({a}, {b});"
                    ),
                )
                .await;
                let p = verify_problem(&t.store).await;
                assert_eq!((p.seq, p.kind), (a, Reordered), "{p:?}");
                assert!(
                    p.detail.contains(&format!("holds the record made as {b}"))
                        && p.detail.contains(&format!("stands at position {b}")),
                    "{p:?}"
                );
            }
        }
    }

    #[tokio::test]
    async fn queries_filter_and_page_by_seq() {
        for t in stores_with(0).await {
            queries_on(&t.store).await;
        }
    }

    async fn queries_on(s: &Store) {
        for i in 1..=30 {
            let principal = if i % 3 == 0 { "bob" } else { "alice" };
            let object = match i % 4 {
                0 => "certificates/web".to_owned(),
                1 => format!("certificates/web/v{i}"),
                2 => "certificates/webapp".to_owned(),
                _ => "secrets/web".to_owned(),
            };
            let op = if i % 2 == 0 {
                "certificates.get"
            } else {
                "certificates.update"
            };
            let mut r = rec(i, principal, op, &object);
            r.time = i * 1000;
            r.vault = Some(if i <= 10 { "default" } else { "prod" }.into());
            s.append_audit(vec![r], chain()).await.unwrap();
        }
        let seqs = |rows: Vec<AuditRecord>| rows.into_iter().map(|r| r.seq).collect::<Vec<_>>();
        let all = s.audit_records(AuditFilter::default(), 100).await.unwrap();
        assert_eq!(all.len(), 30);
        let page = s
            .audit_records(
                AuditFilter {
                    after: 10,
                    ..Default::default()
                },
                5,
            )
            .await
            .unwrap();
        assert_eq!(seqs(page), vec![11, 12, 13, 14, 15]);
        let f = AuditFilter {
            principal: Some("bob".into()),
            ..Default::default()
        };
        assert_eq!(
            seqs(s.audit_records(f, 100).await.unwrap()),
            (1..=10).map(|i| i * 3).collect::<Vec<_>>()
        );
        let f = AuditFilter {
            from: Some(5000),
            to: Some(9000),
            ..Default::default()
        };
        assert_eq!(
            seqs(s.audit_records(f, 100).await.unwrap()),
            vec![5, 6, 7, 8]
        );
        let f = AuditFilter {
            from: Some(31_000),
            ..Default::default()
        };
        assert!(s.audit_records(f, 100).await.unwrap().is_empty());
        let f = AuditFilter {
            object: Some("certificates/web".into()),
            ..Default::default()
        };
        let got = seqs(s.audit_records(f, 100).await.unwrap());
        assert_eq!(got, (1..=30).filter(|i| i % 4 <= 1).collect::<Vec<_>>());
        let f = AuditFilter {
            object: Some("certificates/web".into()),
            operation: Some("certificates.get".into()),
            vault: Some("prod".into()),
            after: 12,
            ..Default::default()
        };
        assert_eq!(seqs(s.audit_records(f, 2).await.unwrap()), vec![16, 20]);
    }

    #[tokio::test]
    async fn time_ranges_follow_seq_with_equal_and_clamped_times() {
        for t in stores_with(0).await {
            time_ranges_on(&t.store).await;
        }
    }

    async fn time_ranges_on(s: &Store) {
        // 1000 1000 2000 2000 2000 3000, and one stamped earlier that is kept at 3000
        for t in [1000, 1000, 2000, 2000, 2000, 3000, 1500] {
            let mut r = rec(t, "a", "x", "o");
            r.time = t;
            s.append_audit(vec![r], chain()).await.unwrap();
        }
        let q = |from: Option<i64>, to: Option<i64>| {
            let s = s.clone();
            async move {
                s.audit_records(
                    AuditFilter {
                        from,
                        to,
                        ..Default::default()
                    },
                    100,
                )
                .await
                .unwrap()
                .into_iter()
                .map(|r| r.seq)
                .collect::<Vec<_>>()
            }
        };
        assert_eq!(q(Some(2000), None).await, vec![3, 4, 5, 6, 7]);
        assert_eq!(q(None, Some(2000)).await, vec![1, 2]);
        assert_eq!(q(Some(1001), Some(3000)).await, vec![3, 4, 5]);
        assert_eq!(q(Some(2500), Some(2600)).await, Vec::<i64>::new());
        assert_eq!(q(Some(0), Some(10_000)).await, (1..=7).collect::<Vec<_>>());
        assert_eq!(q(Some(3001), None).await, Vec::<i64>::new());
        assert_eq!(q(None, Some(1000)).await, Vec::<i64>::new());
        let last = s
            .audit_records(
                AuditFilter {
                    after: 6,
                    ..Default::default()
                },
                1,
            )
            .await
            .unwrap();
        assert_eq!(last[0].fields.time, 3000);
    }

    #[test]
    fn prefix_bounds() {
        assert_eq!(next_prefix("ab/").as_deref(), Some("ab0"));
        assert_eq!(next_prefix("").as_deref(), None);
        assert_eq!(next_prefix("a\u{10FFFF}").as_deref(), Some("b"));
    }
}
