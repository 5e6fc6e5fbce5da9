//! Web console support: sessions (only the SHA-256 of the session id is stored) and the
//! certificate list query (search, state filter, keyset paging on the `(vault_id, name_key)`
//! index).

use rusqlite::types::Value;
use rusqlite::{OptionalExtension, params, params_from_iter};

use crate::outbox::{EVENT_COLS, event_row};
use crate::sqlite::{CERT_COLS, LATEST_VERSION_ID, VER_COLS, cert_row, ver_row};
use crate::{CertRecord, EventRecord, SqliteStore, StoreError, VersionRecord};

/// The schema of this module (one migration).
pub(crate) const MIGRATION: &str = r#"
CREATE TABLE ui_sessions (
    id_hash BLOB PRIMARY KEY,
    principal TEXT NOT NULL,
    token_hash BLOB NOT NULL,
    created INTEGER NOT NULL,
    last_seen INTEGER NOT NULL,
    expires INTEGER NOT NULL
);
CREATE INDEX ui_sessions_expires ON ui_sessions (expires);
"#;

/// Refreshes the console's sort key and search text of the certificate rows `WHERE id = $id`
/// from the row and its newest version (the one the list shows: newest completed, else newest).
macro_rules! refresh_cert {
    ($id:literal) => {
        concat!(
            "UPDATE certificates SET \
             sort_exp = ifnull((SELECT v.exp FROM versions v WHERE v.id = COALESCE(\
               (SELECT v2.id FROM versions v2 WHERE v2.cert_id = certificates.id AND v2.cer IS NOT NULL \
                ORDER BY v2.seq DESC LIMIT 1), \
               (SELECT v3.id FROM versions v3 WHERE v3.cert_id = certificates.id ORDER BY v3.seq DESC LIMIT 1))), \
               9223372036854775807), \
             search_text = lower(name || ' ' || CASE WHEN json_valid(policy) THEN \
               ifnull(json_extract(policy, '$.x509_props.subject'), '') || ' ' || \
               ifnull(json_extract(policy, '$.x509_props.sans'), '') || ' ' || \
               ifnull(json_extract(policy, '$.issuer.name'), '') ELSE '' END || ' ' || \
               ifnull((SELECT v.tags FROM versions v WHERE v.id = COALESCE(\
                 (SELECT v2.id FROM versions v2 WHERE v2.cert_id = certificates.id AND v2.cer IS NOT NULL \
                  ORDER BY v2.seq DESC LIMIT 1), \
                 (SELECT v3.id FROM versions v3 WHERE v3.cert_id = certificates.id ORDER BY v3.seq DESC LIMIT 1))), '')) \
             WHERE id = ",
            $id,
            ";"
        )
    };
}

/// The sort key of a certificate without an expiry (pending): after every dated one.
pub const NO_EXPIRY: i64 = i64::MAX;

/// The console's indexed sort by expiry and search (one migration): `certificates.sort_exp`
/// (the shown version's expiry) with the index `(vault_id, sort_exp, name_key)`, and
/// `certificates.search_text` (name, subject, SANs, issuer, tags; lower-cased) mirrored into the
/// FTS5 trigram table `cert_search` (rowid = certificate id). Triggers keep both current on
/// every certificate and version write, so no write path has to remember them.
pub(crate) const SEARCH_MIGRATION: &str = concat!(
    "ALTER TABLE certificates ADD COLUMN sort_exp INTEGER NOT NULL DEFAULT 9223372036854775807;
ALTER TABLE certificates ADD COLUMN search_text TEXT NOT NULL DEFAULT '';
CREATE INDEX certificates_exp ON certificates (vault_id, sort_exp, name_key);
CREATE VIRTUAL TABLE cert_search USING fts5(text, tokenize='trigram');
CREATE TRIGGER ui_search_text AFTER UPDATE OF search_text ON certificates BEGIN
    DELETE FROM cert_search WHERE rowid = NEW.id;
    INSERT INTO cert_search (rowid, text) VALUES (NEW.id, NEW.search_text);
END;
CREATE TRIGGER ui_cert_delete AFTER DELETE ON certificates BEGIN
    DELETE FROM cert_search WHERE rowid = OLD.id;
END;
CREATE TRIGGER ui_cert_insert AFTER INSERT ON certificates BEGIN
    ",
    refresh_cert!("NEW.id"),
    "
END;
CREATE TRIGGER ui_cert_update AFTER UPDATE OF name, policy ON certificates BEGIN
    ",
    refresh_cert!("NEW.id"),
    "
END;
CREATE TRIGGER ui_version_insert AFTER INSERT ON versions BEGIN
    ",
    refresh_cert!("NEW.cert_id"),
    "
END;
CREATE TRIGGER ui_version_update AFTER UPDATE OF cer, exp, tags ON versions BEGIN
    ",
    refresh_cert!("NEW.cert_id"),
    "
END;
CREATE TRIGGER ui_version_delete AFTER DELETE ON versions BEGIN
    ",
    refresh_cert!("OLD.cert_id"),
    "
END;
",
    refresh_cert!("id"),
    "\n"
);

/// A console session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UiSession {
    /// SHA-256 of the session id (the id itself is only in the browser's cookie).
    pub id_hash: Vec<u8>,
    /// The principal's name.
    pub principal: String,
    /// SHA-256 of the token the session was opened with (checked again on every request, so a
    /// revoked token ends its sessions).
    pub token_hash: Vec<u8>,
    /// Creation time (Unix seconds).
    pub created: i64,
    /// Last use (Unix seconds, updated at most once a minute).
    pub last_seen: i64,
    /// Absolute end (Unix seconds).
    pub expires: i64,
}

/// Which certificates the console list shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UiState {
    /// Every certificate.
    All,
    /// Completed, enabled, not expired, more than `soon` seconds left.
    Valid,
    /// Completed, not expired, expiring within `soon` seconds.
    Expiring,
    /// Completed and past its expiry.
    Expired,
    /// No completed version yet.
    Pending,
    /// The latest version is disabled.
    Disabled,
}

/// A notification channel's health on the console's dashboard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UiChannelHealth {
    /// Channel name.
    pub name: String,
    /// `webhook` or `slack`.
    pub kind: String,
    /// Whether events are delivered to it.
    pub enabled: bool,
    /// The newest tried delivery's status (`delivered`, `dead`, or `pending` while retrying).
    pub last_status: Option<String>,
    /// Its HTTP status.
    pub last_code: Option<i64>,
    /// Its error (no secrets).
    pub last_error: Option<String>,
    /// When it was delivered, or its next try.
    pub last_at: Option<i64>,
    /// Dead letters.
    pub dead: i64,
    /// Deliveries waiting.
    pub pending: i64,
}

/// The event kinds the dashboard lists as failures.
pub const FAILURE_KINDS: &[&str] = &["order_failed", "renewal_failed"];

/// The order of the console's certificate list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UiSort {
    /// By name (the `(vault_id, name_key)` index).
    Name,
    /// By the shown version's expiry, then name (the `(vault_id, sort_exp, name_key)` index);
    /// certificates without an expiry come last.
    Expiry,
}

/// A certificate list query of the console.
#[derive(Debug, Clone)]
pub struct UiCertQuery {
    /// Vault row id.
    pub vault_id: i64,
    /// Soft-deleted certificates instead of live ones.
    pub deleted: bool,
    /// Case-insensitive substring of the name, subject, SANs, issuer name or tags.
    pub search: Option<String>,
    /// State filter.
    pub state: UiState,
    /// Now (Unix seconds).
    pub now: i64,
    /// What "expiring" means (seconds).
    pub soon: i64,
    /// The order.
    pub sort: UiSort,
    /// Descending order.
    pub descending: bool,
    /// Keyset cursor: the name key of the last row of the previous page.
    pub after: Option<String>,
    /// Keyset cursor of the expiry order: the last row's sort key ([`NO_EXPIRY`] when it has
    /// no expiry); with `after`.
    pub after_exp: Option<i64>,
    /// Rows to return (the caller asks one more to learn whether more follow).
    pub limit: usize,
}

pub(crate) fn like_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('%');
    for ch in s.to_lowercase().chars() {
        if matches!(ch, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(ch);
    }
    out.push('%');
    out
}

/// The dashboard's channel health (both backends; `?1`/`$1` is the vault id).
pub(crate) const UI_CHANNEL_HEALTH_SQL: &str = "SELECT ch.name, ch.kind, ch.enabled, \
     d.status, d.last_status, d.last_error, COALESCE(d.delivered_at, d.next_try), \
     (SELECT COUNT(*) FROM deliveries x WHERE x.channel_id = ch.id AND x.status = 'dead'), \
     (SELECT COUNT(*) FROM deliveries x WHERE x.channel_id = ch.id AND x.status = 'pending') \
     FROM channels ch LEFT JOIN deliveries d ON d.id = (SELECT y.id FROM deliveries y \
       WHERE y.channel_id = ch.id AND y.attempts > 0 ORDER BY y.id DESC LIMIT 1) \
     WHERE ch.vault_id = ?1 ORDER BY ch.name_key";

/// How the list answers a search.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SearchPlan {
    /// No search.
    None,
    /// Few matches: the trigram index finds them, the page is sorted from those.
    Index,
    /// Many matches (or a search too short for trigrams): walk the order index and test each
    /// row's search text until the page is full.
    Walk,
}

/// The most matches the trigram index is asked to count before the list walks its order index
/// instead (sorting up to this many rows is cheap; walking finds a page of common matches
/// after a few rows).
pub const SEARCH_INDEX_LIMIT: i64 = 1000;

/// The GLOB pattern of a search: lower-cased, `*`/`?`/`[` taken literally, anywhere in the text.
pub(crate) fn glob_pattern(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 4);
    out.push('*');
    for ch in s.to_lowercase().chars() {
        match ch {
            '*' => out.push_str("[*]"),
            '?' => out.push_str("[?]"),
            '[' => out.push_str("[[]"),
            c => out.push(c),
        }
    }
    out.push('*');
    out
}

/// Whether the trigram index can narrow the search: it holds a run of three characters
/// without a GLOB special.
fn indexable(s: &str) -> bool {
    let mut run = 0;
    for ch in s.chars() {
        if matches!(ch, '*' | '?' | '[') {
            run = 0;
        } else {
            run += 1;
            if run >= 3 {
                return true;
            }
        }
    }
    false
}

/// The SQL and parameters of [`SqliteStore::ui_list_certificates`] for a search plan.
pub(crate) fn ui_list_sql(q: &UiCertQuery, plan: SearchPlan) -> (String, Vec<Value>) {
    let mut params: Vec<Value> = vec![Value::Integer(q.vault_id)];
    let p = |params: &mut Vec<Value>, v: Value| {
        params.push(v);
        params.len()
    };
    let del = if q.deleted { "IS NOT NULL" } else { "IS NULL" };
    let (cmp, dir) = if q.descending {
        ("<", "DESC")
    } else {
        (">", "ASC")
    };
    // With few matches the rows come from the trigram index by id; `+` keeps the planner from
    // walking an order index instead.
    let plus = if plan == SearchPlan::Index { "+" } else { "" };
    let mut clauses = String::new();
    let order = match q.sort {
        UiSort::Name => {
            if let Some(after) = &q.after {
                let n = p(&mut params, Value::Text(after.clone()));
                clauses.push_str(&format!(" AND c.name_key {cmp} ?{n}"));
            }
            format!("{plus}c.name_key {dir}")
        }
        UiSort::Expiry => {
            if let Some(after) = &q.after {
                let e = p(
                    &mut params,
                    Value::Integer(q.after_exp.unwrap_or(NO_EXPIRY)),
                );
                let n = p(&mut params, Value::Text(after.clone()));
                clauses.push_str(&format!(" AND (c.sort_exp, c.name_key) {cmp} (?{e}, ?{n})"));
            }
            format!("{plus}c.sort_exp {dir}, {plus}c.name_key {dir}")
        }
    };
    if let Some(s) = &q.search {
        let n = p(&mut params, Value::Text(glob_pattern(s)));
        match plan {
            SearchPlan::Index => clauses.push_str(&format!(
                " AND c.id IN (SELECT rowid FROM cert_search WHERE text GLOB ?{n})"
            )),
            SearchPlan::Walk | SearchPlan::None => {
                clauses.push_str(&format!(" AND c.search_text GLOB ?{n}"));
            }
        }
    }
    let soon_end = q.now.saturating_add(q.soon);
    match q.state {
        UiState::All => {}
        UiState::Valid => {
            let n = p(&mut params, Value::Integer(soon_end));
            clauses.push_str(&format!(
                " AND v.cer IS NOT NULL AND v.enabled = 1 AND (v.exp IS NULL OR v.exp > ?{n})"
            ));
        }
        UiState::Expiring => {
            let a = p(&mut params, Value::Integer(q.now));
            let b = p(&mut params, Value::Integer(soon_end));
            clauses.push_str(&format!(
                " AND v.cer IS NOT NULL AND v.exp > ?{a} AND v.exp <= ?{b}"
            ));
        }
        UiState::Expired => {
            let a = p(&mut params, Value::Integer(q.now));
            clauses.push_str(&format!(" AND v.cer IS NOT NULL AND v.exp <= ?{a}"));
        }
        UiState::Pending => clauses.push_str(" AND v.cer IS NULL"),
        UiState::Disabled => clauses.push_str(" AND v.enabled = 0"),
    }
    let limit = p(
        &mut params,
        Value::Integer(i64::try_from(q.limit).unwrap_or(51)),
    );
    let sql = format!(
        "SELECT {CERT_COLS}, {VER_COLS} FROM certificates c \
         JOIN versions v ON v.id = {LATEST_VERSION_ID} \
         WHERE {plus}c.vault_id = ?1 AND c.deleted_at {del}{clauses} \
         ORDER BY {order} LIMIT ?{limit}"
    );
    (sql, params)
}

/// Chooses the search plan (see [`SearchPlan`]): counts the trigram index's matches up to
/// [`SEARCH_INDEX_LIMIT`] + 1.
fn search_plan(c: &rusqlite::Connection, search: Option<&str>) -> Result<SearchPlan, StoreError> {
    let Some(s) = search else {
        return Ok(SearchPlan::None);
    };
    if !indexable(s) {
        return Ok(SearchPlan::Walk);
    }
    let n: i64 = c
        .prepare_cached(
            "SELECT COUNT(*) FROM (SELECT 1 FROM cert_search WHERE text GLOB ?1 LIMIT ?2)",
        )?
        .query_row(params![glob_pattern(s), SEARCH_INDEX_LIMIT + 1], |r| {
            r.get(0)
        })?;
    Ok(if n > SEARCH_INDEX_LIMIT {
        SearchPlan::Walk
    } else {
        SearchPlan::Index
    })
}

impl SqliteStore {
    /// Stores a new session.
    pub async fn ui_create_session(&self, s: UiSession) -> Result<(), StoreError> {
        self.write(move |c| {
            c.execute(
                "INSERT INTO ui_sessions (id_hash, principal, token_hash, created, last_seen, expires) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![s.id_hash, s.principal, s.token_hash, s.created, s.last_seen, s.expires],
            )?;
            Ok(())
        })
        .await
    }

    /// A session by the hash of its id.
    pub async fn ui_session(&self, id_hash: Vec<u8>) -> Result<Option<UiSession>, StoreError> {
        self.read(move |c| {
            Ok(c.query_row(
                "SELECT id_hash, principal, token_hash, created, last_seen, expires \
                 FROM ui_sessions WHERE id_hash = ?1",
                [id_hash],
                |r| {
                    Ok(UiSession {
                        id_hash: r.get(0)?,
                        principal: r.get(1)?,
                        token_hash: r.get(2)?,
                        created: r.get(3)?,
                        last_seen: r.get(4)?,
                        expires: r.get(5)?,
                    })
                },
            )
            .optional()?)
        })
        .await
    }

    /// Records a session's use.
    pub async fn ui_touch_session(&self, id_hash: Vec<u8>, now: i64) -> Result<(), StoreError> {
        self.write(move |c| {
            c.execute(
                "UPDATE ui_sessions SET last_seen = ?2 WHERE id_hash = ?1",
                params![id_hash, now],
            )?;
            Ok(())
        })
        .await
    }

    /// Deletes a session (sign-out), and every session past `expired_before`'s limits:
    /// `expires <= now` or `last_seen <= idle_before`.
    pub async fn ui_delete_session(
        &self,
        id_hash: Vec<u8>,
        now: i64,
        idle_before: i64,
    ) -> Result<bool, StoreError> {
        self.write(move |c| {
            let n = c.execute("DELETE FROM ui_sessions WHERE id_hash = ?1", [id_hash])?;
            c.execute(
                "DELETE FROM ui_sessions WHERE expires <= ?1 OR last_seen <= ?2",
                params![now, idle_before],
            )?;
            Ok(n > 0)
        })
        .await
    }

    /// One page of the console's certificate list with each certificate's latest version.
    pub async fn ui_list_certificates(
        &self,
        q: UiCertQuery,
    ) -> Result<Vec<(CertRecord, VersionRecord)>, StoreError> {
        self.read(move |c| {
            let plan = search_plan(c, q.search.as_deref())?;
            let (sql, params) = ui_list_sql(&q, plan);
            let mut st = c.prepare_cached(&sql)?;
            let rows = st.query_map(params_from_iter(params), |r| {
                Ok((cert_row(r, 0)?, ver_row(r, 10)?))
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// The search plan and query plan of the console's certificate list (for the index test).
    pub async fn ui_list_plan(
        &self,
        q: UiCertQuery,
    ) -> Result<(SearchPlan, Vec<String>), StoreError> {
        self.read(move |c| {
            let plan = search_plan(c, q.search.as_deref())?;
            let (sql, params) = ui_list_sql(&q, plan);
            let mut st = c.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))?;
            let rows = st.query_map(params_from_iter(params), |r| r.get::<_, String>(3))?;
            Ok((plan, rows.collect::<Result<Vec<_>, _>>()?))
        })
        .await
    }

    /// The vault's newest failure events (failed orders and renewals), newest first.
    pub async fn ui_failures(
        &self,
        vault_id: i64,
        limit: i64,
    ) -> Result<Vec<EventRecord>, StoreError> {
        self.read(move |c| {
            let mut st = c.prepare_cached(&format!(
                "SELECT {EVENT_COLS} FROM events e WHERE e.vault_id = ?1 \
                 AND e.kind IN ('order_failed', 'renewal_failed') ORDER BY e.id DESC LIMIT ?2"
            ))?;
            let rows = st.query_map(params![vault_id, limit.clamp(1, 100)], |r| event_row(r, 0))?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// Each notification channel of the vault with its newest tried delivery and its dead
    /// letters.
    pub async fn ui_channel_health(
        &self,
        vault_id: i64,
    ) -> Result<Vec<UiChannelHealth>, StoreError> {
        self.read(move |c| {
            let mut st = c.prepare_cached(UI_CHANNEL_HEALTH_SQL)?;
            let rows = st.query_map([vault_id], |r| {
                Ok(UiChannelHealth {
                    name: r.get(0)?,
                    kind: r.get(1)?,
                    enabled: r.get(2)?,
                    last_status: r.get(3)?,
                    last_code: r.get(4)?,
                    last_error: r.get(5)?,
                    last_at: r.get(6)?,
                    dead: r.get(7)?,
                    pending: r.get(8)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// How many of the vault's live certificates expire in each of `buckets` periods of
    /// `bucket` seconds after `now` (the `(vault_id, sort_exp, name_key)` index, one range).
    pub async fn ui_expiry_histogram(
        &self,
        vault_id: i64,
        now: i64,
        bucket: i64,
        buckets: i64,
    ) -> Result<Vec<i64>, StoreError> {
        let bucket = bucket.max(1);
        let buckets = buckets.clamp(1, 1000);
        self.read(move |c| {
            let mut out = vec![0i64; usize::try_from(buckets).unwrap_or(1)];
            let mut st = c.prepare_cached(
                "SELECT (sort_exp - ?2 - 1) / ?3, COUNT(*) FROM certificates \
                 WHERE vault_id = ?1 AND sort_exp > ?2 AND sort_exp <= ?2 + ?3 * ?4 \
                 AND deleted_at IS NULL GROUP BY 1",
            )?;
            let rows = st.query_map(params![vault_id, now, bucket, buckets], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
            })?;
            for row in rows {
                let (i, n) = row?;
                if let Some(slot) = usize::try_from(i).ok().and_then(|i| out.get_mut(i)) {
                    *slot += n;
                }
            }
            Ok(out)
        })
        .await
    }

    /// Counts of the vault's live certificates by the console's states:
    /// `(total, valid, expiring, expired, pending, disabled)`.
    pub async fn ui_counts(
        &self,
        vault_id: i64,
        now: i64,
        soon: i64,
    ) -> Result<[i64; 6], StoreError> {
        let sql = format!(
            "SELECT COUNT(*), \
             SUM(v.cer IS NOT NULL AND v.enabled = 1 AND (v.exp IS NULL OR v.exp > ?2 + ?3)), \
             SUM(v.cer IS NOT NULL AND v.exp > ?2 AND v.exp <= ?2 + ?3), \
             SUM(v.cer IS NOT NULL AND v.exp <= ?2), \
             SUM(v.cer IS NULL), \
             SUM(v.enabled = 0) \
             FROM certificates c JOIN versions v ON v.id = {LATEST_VERSION_ID} \
             WHERE c.vault_id = ?1 AND c.deleted_at IS NULL"
        );
        self.read(move |c| {
            Ok(c.query_row(&sql, params![vault_id, now, soon], |r| {
                Ok([
                    r.get::<_, Option<i64>>(0)?.unwrap_or(0),
                    r.get::<_, Option<i64>>(1)?.unwrap_or(0),
                    r.get::<_, Option<i64>>(2)?.unwrap_or(0),
                    r.get::<_, Option<i64>>(3)?.unwrap_or(0),
                    r.get::<_, Option<i64>>(4)?.unwrap_or(0),
                    r.get::<_, Option<i64>>(5)?.unwrap_or(0),
                ])
            })?)
        })
        .await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::NewVersion;

    fn version(i: i64, exp: i64, done: bool) -> NewVersion {
        NewVersion {
            record: VersionRecord {
                cert_id: 0,
                version: format!("{i:032x}"),
                seq: 0,
                created: 1,
                updated: 1,
                enabled: true,
                nbf: Some(1),
                exp: done.then_some(exp),
                tags: None,
                cer: done.then(|| vec![1, 2, 3]),
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

    fn query(vault_id: i64) -> UiCertQuery {
        UiCertQuery {
            vault_id,
            deleted: false,
            search: None,
            state: UiState::All,
            now: 1_000_000,
            soon: 30 * 86400,
            sort: UiSort::Name,
            descending: false,
            after: None,
            after_exp: None,
            limit: 3,
        }
    }

    fn names(rows: Vec<(CertRecord, VersionRecord)>) -> Vec<String> {
        rows.into_iter().map(|(c, _)| c.name).collect()
    }

    /// Five certificates: alpha (90 days), Bravo (1 day), charlie (expired), delta (pending),
    /// echo (90 days + 1 s, SAN www.echo-san.example.net, tag team=payments).
    async fn seed(store: &crate::Store) -> i64 {
        let v = store.create_vault("v", vec![0], 90, 1).await.unwrap();
        let now = 1_000_000;
        for (i, (name, exp, done)) in [
            ("alpha", now + 90 * 86400, true),
            ("Bravo", now + 86400, true),
            ("charlie", now - 10, true),
            ("delta", now + 90 * 86400, false),
            ("echo", now + 90 * 86400 + 1, true),
        ]
        .into_iter()
        .enumerate()
        {
            let sans = if name == "echo" {
                r#","sans":{"dns_names":["www.Echo-SAN.example.net","*.wild.example.net"]}"#
            } else {
                ""
            };
            let policy = format!(
                r#"{{"x509_props":{{"subject":"CN={name}.example.org"{sans}}},"issuer":{{"name":"Self"}}}}"#
            );
            let mut nv = version(i as i64, exp, done);
            if name == "echo" {
                nv.record.tags = Some(r#"{"team":"Payments"}"#.into());
            }
            store.add_version(v.id, name, policy, 1, nv).await.unwrap();
        }
        v.id
    }

    #[tokio::test]
    async fn list_search_sort_filter_paging_on_both_backends() {
        for t in crate::store::testing::backends().await {
            let store = &t.store;
            let vid = seed(store).await;
            let now = 1_000_000;
            let page1 = store.ui_list_certificates(query(vid)).await.unwrap();
            assert_eq!(names(page1), ["alpha", "Bravo", "charlie"]);
            let mut q = query(vid);
            q.after = Some("charlie".into());
            assert_eq!(
                names(store.ui_list_certificates(q).await.unwrap()),
                ["delta", "echo"]
            );
            let mut q = query(vid);
            q.descending = true;
            q.after = Some("charlie".into());
            assert_eq!(
                names(store.ui_list_certificates(q).await.unwrap()),
                ["Bravo", "alpha"]
            );
            // By expiry: pending (no completed version, no expiry) last; ties by name; keyset.
            let mut q = query(vid);
            q.sort = UiSort::Expiry;
            q.limit = 10;
            assert_eq!(
                names(store.ui_list_certificates(q.clone()).await.unwrap()),
                ["charlie", "Bravo", "alpha", "echo", "delta"]
            );
            q.limit = 2;
            q.after = Some("bravo".into());
            q.after_exp = Some(now + 86400);
            assert_eq!(
                names(store.ui_list_certificates(q.clone()).await.unwrap()),
                ["alpha", "echo"]
            );
            q.descending = true;
            q.after = Some("echo".into());
            q.after_exp = Some(now + 90 * 86400 + 1);
            assert_eq!(
                names(store.ui_list_certificates(q).await.unwrap()),
                ["alpha", "Bravo"]
            );
            for (state, want) in [
                (UiState::Valid, vec!["alpha", "echo"]),
                (UiState::Expiring, vec!["Bravo"]),
                (UiState::Expired, vec!["charlie"]),
                (UiState::Pending, vec!["delta"]),
            ] {
                let mut q = query(vid);
                q.state = state;
                q.limit = 10;
                assert_eq!(names(store.ui_list_certificates(q).await.unwrap()), want);
            }
            // Search: subject, SAN (any case), wildcard SAN taken literally, tag, issuer.
            for (search, want) in [
                ("ECHO.example", vec!["echo"]),
                ("echo-san.EXAMPLE", vec!["echo"]),
                ("*.wild", vec!["echo"]),
                ("payments", vec!["echo"]),
                ("ec", vec!["echo"]),
                ("example.org", vec!["alpha", "Bravo", "charlie"]),
                ("%", vec![]),
                ("*", vec!["echo"]),
                ("nothing-like-this", vec![]),
            ] {
                let mut q = query(vid);
                q.search = Some(search.into());
                assert_eq!(
                    names(store.ui_list_certificates(q).await.unwrap()),
                    want,
                    "{search}"
                );
            }
            // The search text follows writes: a new tag, a new policy, a renamed subject.
            let (cert, ver) = store
                .ui_list_certificates(query(vid))
                .await
                .unwrap()
                .remove(0);
            store
                .update_version(
                    cert.id,
                    &ver.version,
                    crate::VersionUpdate {
                        tags: Some(Some(r#"{"owner":"Zebra-Team"}"#.into())),
                        ..Default::default()
                    },
                    2,
                )
                .await
                .unwrap();
            let mut q = query(vid);
            q.search = Some("zebra-team".into());
            assert_eq!(
                names(store.ui_list_certificates(q).await.unwrap()),
                ["alpha"]
            );
            store
                .update_policy(
                    cert.id,
                    r#"{"x509_props":{"subject":"CN=renamed.example.com"}}"#.into(),
                    3,
                )
                .await
                .unwrap();
            let mut q = query(vid);
            q.search = Some("alpha.example.org".into());
            assert!(store.ui_list_certificates(q).await.unwrap().is_empty());
            let mut q = query(vid);
            q.search = Some("renamed.example".into());
            assert_eq!(
                names(store.ui_list_certificates(q).await.unwrap()),
                ["alpha"]
            );
            assert_eq!(
                store.ui_counts(vid, now, 30 * 86400).await.unwrap(),
                [5, 2, 1, 1, 1, 0]
            );
        }
    }

    #[tokio::test]
    async fn dashboard_queries_on_both_backends() {
        for t in crate::store::testing::backends().await {
            let store = &t.store;
            let vid = seed(store).await;
            let now = 1_000_000;
            // alpha at +90 d (bucket 12 of 7-day buckets), Bravo at +1 d (bucket 0), echo at
            // +90 d + 1 s (bucket 12); charlie has expired, delta is pending.
            let hist = store
                .ui_expiry_histogram(vid, now, 7 * 86400, 13)
                .await
                .unwrap();
            assert_eq!(hist.iter().sum::<i64>(), 3, "{hist:?}");
            assert_eq!(hist[0], 1);
            assert_eq!(hist[12], 2);
            let certs = store.ui_list_certificates(query(vid)).await.unwrap();
            for (i, kind) in ["issued", "order_failed", "renewal_failed"]
                .iter()
                .enumerate()
            {
                assert!(
                    store
                        .record_event(crate::NewEvent {
                            kind: (*kind).into(),
                            cert_id: certs[0].0.id,
                            version: None,
                            email: false,
                            dedup: format!("t{i}"),
                            body: serde_json::json!({"reason": format!("reason {i}")}),
                            created: now + i as i64,
                        })
                        .await
                        .unwrap()
                );
            }
            let f = store.ui_failures(vid, 10).await.unwrap();
            let kinds: Vec<&str> = f.iter().map(|e| e.kind.as_str()).collect();
            assert_eq!(kinds, ["renewal_failed", "order_failed"]);
            assert_eq!(f[0].body["reason"], "reason 2");
            assert!(store.ui_channel_health(vid).await.unwrap().is_empty());
        }
    }

    #[tokio::test]
    async fn list_plans_use_indexes() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("t.db")).unwrap();
        let vid = seed(&crate::Store::Sqlite(store.clone())).await;
        // Both orders walk their index in order and sort nothing.
        for sort in [UiSort::Name, UiSort::Expiry] {
            for descending in [false, true] {
                let mut q = query(vid);
                q.sort = sort;
                q.descending = descending;
                q.after = Some("b".into());
                q.after_exp = Some(5);
                let (plan, steps) = store.ui_list_plan(q).await.unwrap();
                let steps = steps.join("\n");
                assert_eq!(plan, SearchPlan::None);
                let index = match sort {
                    UiSort::Name => "sqlite_autoindex_certificates_1",
                    UiSort::Expiry => "certificates_exp",
                };
                assert!(steps.contains(index), "{steps}");
                assert!(!steps.contains("TEMP B-TREE"), "{steps}");
            }
        }
        // A rare search comes from the trigram index by id (then sorts its few rows).
        let mut q = query(vid);
        q.search = Some("echo-san".into());
        let (plan, steps) = store.ui_list_plan(q).await.unwrap();
        let steps = steps.join("\n");
        assert_eq!(plan, SearchPlan::Index);
        assert!(steps.contains("cert_search VIRTUAL TABLE"), "{steps}");
        assert!(steps.contains("INTEGER PRIMARY KEY"), "{steps}");
        assert!(
            !steps
                .lines()
                .any(|l| l == "SCAN c" || l.starts_with("SCAN c USING")),
            "{steps}"
        );
        // A short one walks the order index.
        let mut q = query(vid);
        q.search = Some("ec".into());
        let (plan, steps) = store.ui_list_plan(q).await.unwrap();
        assert_eq!(plan, SearchPlan::Walk);
        assert!(
            steps.join("\n").contains("sqlite_autoindex_certificates_1"),
            "{steps:?}"
        );
        store.close();
    }

    #[tokio::test]
    async fn sessions() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("t.db")).unwrap();
        let s = UiSession {
            id_hash: vec![7; 32],
            principal: "p".into(),
            token_hash: vec![8; 32],
            created: 10,
            last_seen: 10,
            expires: 100,
        };
        store.ui_create_session(s.clone()).await.unwrap();
        assert_eq!(store.ui_session(vec![7; 32]).await.unwrap(), Some(s));
        store.ui_touch_session(vec![7; 32], 20).await.unwrap();
        assert_eq!(
            store
                .ui_session(vec![7; 32])
                .await
                .unwrap()
                .unwrap()
                .last_seen,
            20
        );
        assert!(store.ui_delete_session(vec![7; 32], 30, 0).await.unwrap());
        assert_eq!(store.ui_session(vec![7; 32]).await.unwrap(), None);
        store.close();
    }
}
