//! Web console support: sessions (only the SHA-256 of the session id is stored) and the
//! certificate list query (search, state filter, keyset paging on the `(vault_id, name_key)`
//! index).

use rusqlite::{OptionalExtension, params};

use crate::sqlite::{CERT_COLS, LATEST_VERSION_ID, VER_COLS, cert_row, ver_row};
use crate::{CertRecord, SqliteStore, StoreError, VersionRecord};

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

/// A certificate list query of the console.
#[derive(Debug, Clone)]
pub struct UiCertQuery {
    /// Vault row id.
    pub vault_id: i64,
    /// Soft-deleted certificates instead of live ones.
    pub deleted: bool,
    /// Case-insensitive substring of the name, or of the policy (subject, domains, issuer).
    pub search: Option<String>,
    /// State filter.
    pub state: UiState,
    /// Now (Unix seconds).
    pub now: i64,
    /// What "expiring" means (seconds).
    pub soon: i64,
    /// Descending name order.
    pub descending: bool,
    /// Keyset cursor: the name key of the last row of the previous page.
    pub after: Option<String>,
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

/// The SQL of [`SqliteStore::ui_list_certificates`] (public for the query-plan test).
pub fn ui_list_sql(q: &UiCertQuery) -> String {
    let del = if q.deleted { "IS NOT NULL" } else { "IS NULL" };
    let (cmp, order) = if q.descending {
        ("<", "DESC")
    } else {
        (">", "ASC")
    };
    let cursor = if q.after.is_some() {
        format!("AND c.name_key {cmp} ?2")
    } else {
        "AND ?2 IS NULL".to_owned()
    };
    let search = if q.search.is_some() {
        "AND (c.name_key LIKE ?5 ESCAPE '\\' OR lower(c.policy) LIKE ?5 ESCAPE '\\')"
    } else {
        "AND ?5 IS NULL"
    };
    let state = match q.state {
        UiState::All => "",
        UiState::Valid => {
            "AND v.cer IS NOT NULL AND v.enabled = 1 AND (v.exp IS NULL OR v.exp > ?3 + ?4)"
        }
        UiState::Expiring => "AND v.cer IS NOT NULL AND v.exp > ?3 AND v.exp <= ?3 + ?4",
        UiState::Expired => "AND v.cer IS NOT NULL AND v.exp <= ?3",
        UiState::Pending => "AND v.cer IS NULL",
        UiState::Disabled => "AND v.enabled = 0",
    };
    format!(
        "SELECT {CERT_COLS}, {VER_COLS} FROM certificates c \
         JOIN versions v ON v.id = {LATEST_VERSION_ID} \
         WHERE c.vault_id = ?1 AND c.deleted_at {del} {cursor} {search} {state} \
         AND ?3 IS NOT NULL AND ?4 IS NOT NULL \
         ORDER BY c.name_key {order} LIMIT ?6"
    )
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
        let sql = ui_list_sql(&q);
        let limit = i64::try_from(q.limit).unwrap_or(26);
        let search = q.search.as_deref().map(like_escape);
        self.read(move |c| {
            let mut st = c.prepare_cached(&sql)?;
            let rows = st.query_map(
                params![q.vault_id, q.after, q.now, q.soon, search, limit],
                |r| Ok((cert_row(r, 0)?, ver_row(r, 10)?)),
            )?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// The query plan of the console's certificate list (for the index test).
    pub async fn ui_list_plan(&self, q: UiCertQuery) -> Result<Vec<String>, StoreError> {
        let sql = format!("EXPLAIN QUERY PLAN {}", ui_list_sql(&q));
        self.read(move |c| {
            let mut st = c.prepare(&sql)?;
            let search = q.search.as_deref().map(like_escape);
            let rows = st.query_map(
                params![q.vault_id, q.after, q.now, q.soon, search, 26],
                |r| r.get::<_, String>(3),
            )?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
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
                exp: Some(exp),
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
            descending: false,
            after: None,
            limit: 3,
        }
    }

    #[tokio::test]
    async fn list_search_filter_paging_and_plan() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("t.db")).unwrap();
        let v = store.create_vault("v", vec![0], 90, 1).await.unwrap();
        let now = 1_000_000;
        for (i, (name, exp, done)) in [
            ("alpha", now + 90 * 86400, true),
            ("Bravo", now + 86400, true),
            ("charlie", now - 10, true),
            ("delta", now + 90 * 86400, false),
            ("echo", now + 90 * 86400, true),
        ]
        .into_iter()
        .enumerate()
        {
            let policy = format!(r#"{{"x509_props":{{"subject":"CN={name}.example.org"}}}}"#);
            store
                .add_version(v.id, name, policy, 1, version(i as i64, exp, done))
                .await
                .unwrap();
        }
        let names = |rows: Vec<(CertRecord, VersionRecord)>| -> Vec<String> {
            rows.into_iter().map(|(c, _)| c.name).collect()
        };
        let page1 = store.ui_list_certificates(query(v.id)).await.unwrap();
        assert_eq!(names(page1), ["alpha", "Bravo", "charlie"]);
        let mut q = query(v.id);
        q.after = Some("charlie".into());
        assert_eq!(
            names(store.ui_list_certificates(q).await.unwrap()),
            ["delta", "echo"]
        );
        let mut q = query(v.id);
        q.descending = true;
        q.after = Some("charlie".into());
        assert_eq!(
            names(store.ui_list_certificates(q).await.unwrap()),
            ["Bravo", "alpha"]
        );
        for (state, want) in [
            (UiState::Valid, vec!["alpha", "echo"]),
            (UiState::Expiring, vec!["Bravo"]),
            (UiState::Expired, vec!["charlie"]),
            (UiState::Pending, vec!["delta"]),
        ] {
            let mut q = query(v.id);
            q.state = state;
            q.limit = 10;
            assert_eq!(names(store.ui_list_certificates(q).await.unwrap()), want);
        }
        let mut q = query(v.id);
        q.search = Some("ECHO.example".into());
        assert_eq!(
            names(store.ui_list_certificates(q).await.unwrap()),
            ["echo"]
        );
        let mut q = query(v.id);
        q.search = Some("%".into());
        assert!(store.ui_list_certificates(q).await.unwrap().is_empty());
        assert_eq!(
            store.ui_counts(v.id, now, 30 * 86400).await.unwrap(),
            [5, 2, 1, 1, 1, 0]
        );
        // The list walks the (vault_id, name_key) index in order and sorts nothing.
        for descending in [false, true] {
            let mut q = query(v.id);
            q.descending = descending;
            q.after = Some("b".into());
            let plan = store.ui_list_plan(q).await.unwrap().join("\n");
            assert!(plan.contains("sqlite_autoindex_certificates_1"), "{plan}");
            assert!(!plan.contains("TEMP B-TREE"), "{plan}");
        }
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
