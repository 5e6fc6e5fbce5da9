//! The web console's sessions and certificate list on PostgreSQL (see `ui.rs`).

use tokio_postgres::types::ToSql;

use crate::outbox::EVENT_COLS;
use crate::pg::{Params, all, cert_row, col, one, ver_row};
use crate::pg_outbox::event_row;
use crate::sqlite::{CERT_COLS, LATEST_VERSION_ID, VER_COLS};
use crate::ui::like_escape;
use crate::ui::{NO_EXPIRY, UI_CHANNEL_HEALTH_SQL, UiChannelHealth};
use crate::{
    CertRecord, EventRecord, PgStore, StoreError, UiCertQuery, UiSession, UiSort, UiState,
    VersionRecord,
};

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

/// The console's indexed sort by expiry and search on PostgreSQL (one migration): the same
/// `certificates.sort_exp` / `search_text` columns as SQLite (so `admin migrate` copies them),
/// kept current by triggers, with a pg_trgm GIN index on `search_text` (substring `LIKE`).
/// pg_trgm is a trusted extension shipped with Debian's `postgresql` package, so the
/// database owner may create it.
pub(crate) const PG_SEARCH_MIGRATION: &str = r#"
CREATE EXTENSION IF NOT EXISTS pg_trgm;
ALTER TABLE certificates ADD COLUMN sort_exp BIGINT NOT NULL DEFAULT 9223372036854775807;
ALTER TABLE certificates ADD COLUMN search_text TEXT NOT NULL DEFAULT '';
CREATE INDEX certificates_exp ON certificates (vault_id, sort_exp, name_key);
CREATE INDEX certificates_search ON certificates USING gin (search_text gin_trgm_ops);
CREATE FUNCTION ui_policy_text(p TEXT) RETURNS TEXT LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE j jsonb;
BEGIN
    j := p::jsonb;
    RETURN COALESCE(j #>> '{x509_props,subject}', '') || ' ' ||
        COALESCE((j #> '{x509_props,sans}')::text, '') || ' ' ||
        COALESCE(j #>> '{issuer,name}', '');
EXCEPTION WHEN others THEN
    RETURN '';
END $$;
CREATE FUNCTION ui_refresh_cert(cid BIGINT) RETURNS void LANGUAGE sql AS $$
    UPDATE certificates c SET
        sort_exp = COALESCE(v.exp, 9223372036854775807),
        search_text = lower(c.name || ' ' || ui_policy_text(c.policy) || ' ' || COALESCE(v.tags, ''))
    FROM (SELECT 1) one
    LEFT JOIN versions v ON v.id = COALESCE(
        (SELECT v2.id FROM versions v2 WHERE v2.cert_id = cid AND v2.cer IS NOT NULL
         ORDER BY v2.seq DESC LIMIT 1),
        (SELECT v3.id FROM versions v3 WHERE v3.cert_id = cid ORDER BY v3.seq DESC LIMIT 1))
    WHERE c.id = cid;
$$;
CREATE FUNCTION ui_cert_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM ui_refresh_cert(NEW.id);
    RETURN NULL;
END $$;
CREATE FUNCTION ui_version_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM ui_refresh_cert(OLD.cert_id);
    ELSE
        PERFORM ui_refresh_cert(NEW.cert_id);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER ui_cert_insert AFTER INSERT ON certificates
    FOR EACH ROW EXECUTE FUNCTION ui_cert_changed();
CREATE TRIGGER ui_cert_update AFTER UPDATE OF name, policy ON certificates
    FOR EACH ROW EXECUTE FUNCTION ui_cert_changed();
CREATE TRIGGER ui_version_insert AFTER INSERT OR DELETE ON versions
    FOR EACH ROW EXECUTE FUNCTION ui_version_changed();
CREATE TRIGGER ui_version_update AFTER UPDATE OF cer, exp, tags ON versions
    FOR EACH ROW EXECUTE FUNCTION ui_version_changed();
SELECT ui_refresh_cert(id) FROM certificates;
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
        let limit = i64::try_from(q.limit).unwrap_or(51);
        let search = q.search.as_deref().map(like_escape);
        let soon_end = q.now.saturating_add(q.soon);
        let after_exp = q.after_exp.unwrap_or(NO_EXPIRY);
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![&q.vault_id];
        let mut clauses = String::new();
        let (cmp, dir) = if q.descending {
            ("<", "DESC")
        } else {
            (">", "ASC")
        };
        let order = match q.sort {
            UiSort::Name => {
                if let Some(after) = &q.after {
                    params.push(after);
                    clauses.push_str(&format!(" AND c.name_key {cmp} ${}", params.len()));
                }
                format!("c.name_key {dir}")
            }
            UiSort::Expiry => {
                if let Some(after) = &q.after {
                    params.push(&after_exp);
                    params.push(after);
                    let n = params.len();
                    clauses.push_str(&format!(
                        " AND (c.sort_exp, c.name_key) {cmp} (${}, ${n})",
                        n - 1
                    ));
                }
                format!("c.sort_exp {dir}, c.name_key {dir}")
            }
        };
        if let Some(s) = &search {
            params.push(s);
            clauses.push_str(&format!(
                " AND c.search_text LIKE ${} ESCAPE '\\'",
                params.len()
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
             ORDER BY {order} LIMIT ${}",
            params.len()
        );
        let c = self.conn().await?;
        let p: &Params<'_> = &params;
        all(&c, &sql, p, |r| Ok((cert_row(r, 0)?, ver_row(r, 10)?))).await
    }

    /// The vault's newest failure events, newest first.
    pub async fn ui_failures(
        &self,
        vault_id: i64,
        limit: i64,
    ) -> Result<Vec<EventRecord>, StoreError> {
        let c = self.conn().await?;
        all(
            &c,
            &format!(
                "SELECT {EVENT_COLS} FROM events e WHERE e.vault_id = $1 \
                 AND e.kind IN ('order_failed', 'renewal_failed') ORDER BY e.id DESC LIMIT $2"
            ),
            &[&vault_id, &limit.clamp(1, 100)],
            |r| event_row(r, 0),
        )
        .await
    }

    /// Each notification channel of the vault with its newest tried delivery and dead letters.
    pub async fn ui_channel_health(
        &self,
        vault_id: i64,
    ) -> Result<Vec<UiChannelHealth>, StoreError> {
        let c = self.conn().await?;
        all(
            &c,
            &UI_CHANNEL_HEALTH_SQL.replace("?1", "$1"),
            &[&vault_id],
            |r| {
                Ok(UiChannelHealth {
                    name: col(r, 0)?,
                    kind: col(r, 1)?,
                    enabled: col(r, 2)?,
                    last_status: col(r, 3)?,
                    last_code: col(r, 4)?,
                    last_error: col(r, 5)?,
                    last_at: col(r, 6)?,
                    dead: col(r, 7)?,
                    pending: col(r, 8)?,
                })
            },
        )
        .await
    }

    /// Certificates expiring in each of `buckets` periods of `bucket` seconds after `now`.
    pub async fn ui_expiry_histogram(
        &self,
        vault_id: i64,
        now: i64,
        bucket: i64,
        buckets: i64,
    ) -> Result<Vec<i64>, StoreError> {
        let bucket = bucket.max(1);
        let buckets = buckets.clamp(1, 1000);
        let c = self.conn().await?;
        let rows = all(
            &c,
            "SELECT (sort_exp - $2 - 1) / $3, COUNT(*) FROM certificates \
             WHERE vault_id = $1 AND sort_exp > $2 AND sort_exp <= $2 + $3 * $4 \
             AND deleted_at IS NULL GROUP BY 1",
            &[&vault_id, &now, &bucket, &buckets],
            |r| Ok((col::<i64>(r, 0)?, col::<i64>(r, 1)?)),
        )
        .await?;
        let mut out = vec![0i64; usize::try_from(buckets).unwrap_or(1)];
        for (i, n) in rows {
            if let Some(slot) = usize::try_from(i).ok().and_then(|i| out.get_mut(i)) {
                *slot += n;
            }
        }
        Ok(out)
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
