//! The web console's sessions and certificate list on PostgreSQL (see `ui.rs`).

use tokio_postgres::types::ToSql;

use crate::pg::{Params, all, cert_row, col, one, ver_row};
use crate::sqlite::{CERT_COLS, LATEST_VERSION_ID, VER_COLS};
use crate::ui::like_escape;
use crate::{CertRecord, PgStore, StoreError, UiCertQuery, UiSession, UiState, VersionRecord};

/// The PostgreSQL schema of the console (one migration).
pub(crate) const PG_MIGRATION: &str = r#"
CREATE TABLE ui_sessions (
    id_hash BYTEA PRIMARY KEY,
    principal TEXT NOT NULL,
    token_hash BYTEA NOT NULL,
    created BIGINT NOT NULL,
    last_seen BIGINT NOT NULL,
    expires BIGINT NOT NULL
);
CREATE INDEX ui_sessions_expires ON ui_sessions (expires);
"#;

impl PgStore {
    /// Stores a new session.
    pub async fn ui_create_session(&self, s: UiSession) -> Result<(), StoreError> {
        let c = self.conn().await?;
        c.execute(
            "INSERT INTO ui_sessions (id_hash, principal, token_hash, created, last_seen, expires) \
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                &s.id_hash,
                &s.principal,
                &s.token_hash,
                &s.created,
                &s.last_seen,
                &s.expires,
            ],
        )
        .await?;
        Ok(())
    }

    /// A session by the hash of its id.
    pub async fn ui_session(&self, id_hash: Vec<u8>) -> Result<Option<UiSession>, StoreError> {
        let c = self.conn().await?;
        one(
            &c,
            "SELECT id_hash, principal, token_hash, created, last_seen, expires \
             FROM ui_sessions WHERE id_hash = $1",
            &[&id_hash],
            |r| {
                Ok(UiSession {
                    id_hash: col(r, 0)?,
                    principal: col(r, 1)?,
                    token_hash: col(r, 2)?,
                    created: col(r, 3)?,
                    last_seen: col(r, 4)?,
                    expires: col(r, 5)?,
                })
            },
        )
        .await
    }

    /// Records a session's use.
    pub async fn ui_touch_session(&self, id_hash: Vec<u8>, now: i64) -> Result<(), StoreError> {
        let c = self.conn().await?;
        c.execute(
            "UPDATE ui_sessions SET last_seen = $2 WHERE id_hash = $1",
            &[&id_hash, &now],
        )
        .await?;
        Ok(())
    }

    /// Deletes a session, and every expired or idle one.
    pub async fn ui_delete_session(
        &self,
        id_hash: Vec<u8>,
        now: i64,
        idle_before: i64,
    ) -> Result<bool, StoreError> {
        let c = self.conn().await?;
        let n = c
            .execute("DELETE FROM ui_sessions WHERE id_hash = $1", &[&id_hash])
            .await?;
        c.execute(
            "DELETE FROM ui_sessions WHERE expires <= $1 OR last_seen <= $2",
            &[&now, &idle_before],
        )
        .await?;
        Ok(n > 0)
    }

    /// One page of the console's certificate list with each certificate's latest version.
    pub async fn ui_list_certificates(
        &self,
        q: UiCertQuery,
    ) -> Result<Vec<(CertRecord, VersionRecord)>, StoreError> {
        let limit = i64::try_from(q.limit).unwrap_or(26);
        let search = q.search.as_deref().map(like_escape);
        let soon_end = q.now.saturating_add(q.soon);
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![&q.vault_id];
        let mut clauses = String::new();
        let (cmp, order) = if q.descending {
            ("<", "DESC")
        } else {
            (">", "ASC")
        };
        if let Some(after) = &q.after {
            params.push(after);
            clauses.push_str(&format!(" AND c.name_key {cmp} ${}", params.len()));
        }
        if let Some(s) = &search {
            params.push(s);
            let n = params.len();
            clauses.push_str(&format!(
                " AND (c.name_key LIKE ${n} ESCAPE '\\' OR lower(c.policy) LIKE ${n} ESCAPE '\\')"
            ));
        }
        match q.state {
            UiState::All => {}
            UiState::Valid => {
                params.push(&soon_end);
                clauses.push_str(&format!(
                    " AND v.cer IS NOT NULL AND v.enabled AND (v.exp IS NULL OR v.exp > ${})",
                    params.len()
                ));
            }
            UiState::Expiring => {
                params.push(&q.now);
                params.push(&soon_end);
                let n = params.len();
                clauses.push_str(&format!(
                    " AND v.cer IS NOT NULL AND v.exp > ${} AND v.exp <= ${n}",
                    n - 1
                ));
            }
            UiState::Expired => {
                params.push(&q.now);
                clauses.push_str(&format!(
                    " AND v.cer IS NOT NULL AND v.exp <= ${}",
                    params.len()
                ));
            }
            UiState::Pending => clauses.push_str(" AND v.cer IS NULL"),
            UiState::Disabled => clauses.push_str(" AND NOT v.enabled"),
        }
        params.push(&limit);
        let del = if q.deleted { "IS NOT NULL" } else { "IS NULL" };
        let sql = format!(
            "SELECT {CERT_COLS}, {VER_COLS} FROM certificates c \
             JOIN versions v ON v.id = {LATEST_VERSION_ID} \
             WHERE c.vault_id = $1 AND c.deleted_at {del}{clauses} \
             ORDER BY c.name_key {order} LIMIT ${}",
            params.len()
        );
        let c = self.conn().await?;
        let p: &Params<'_> = &params;
        all(&c, &sql, p, |r| Ok((cert_row(r, 0)?, ver_row(r, 10)?))).await
    }

    /// Counts of the vault's live certificates by the console's states:
    /// `(total, valid, expiring, expired, pending, disabled)`.
    pub async fn ui_counts(
        &self,
        vault_id: i64,
        now: i64,
        soon: i64,
    ) -> Result<[i64; 6], StoreError> {
        let soon_end = now.saturating_add(soon);
        let sql = format!(
            "SELECT COUNT(*), \
             COUNT(*) FILTER (WHERE v.cer IS NOT NULL AND v.enabled AND (v.exp IS NULL OR v.exp > $3)), \
             COUNT(*) FILTER (WHERE v.cer IS NOT NULL AND v.exp > $2 AND v.exp <= $3), \
             COUNT(*) FILTER (WHERE v.cer IS NOT NULL AND v.exp <= $2), \
             COUNT(*) FILTER (WHERE v.cer IS NULL), \
             COUNT(*) FILTER (WHERE NOT v.enabled) \
             FROM certificates c JOIN versions v ON v.id = {LATEST_VERSION_ID} \
             WHERE c.vault_id = $1 AND c.deleted_at IS NULL"
        );
        let c = self.conn().await?;
        let row = one(&c, &sql, &[&vault_id, &now, &soon_end], |r| {
            Ok([
                col::<i64>(r, 0)?,
                col::<i64>(r, 1)?,
                col::<i64>(r, 2)?,
                col::<i64>(r, 3)?,
                col::<i64>(r, 4)?,
                col::<i64>(r, 5)?,
            ])
        })
        .await?;
        Ok(row.unwrap_or([0; 6]))
    }
}
