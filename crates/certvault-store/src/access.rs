//! Principals, their bearer tokens (stored only as hashes), per-vault access policies, and the
//! vault lifecycle (soft delete, recover, purge).

use rusqlite::{Connection, OptionalExtension, Row, params};

use crate::{Conflict, SqliteStore, StoreError, Vault};

/// The schema of this module (one migration).
pub(crate) const MIGRATION: &str = r#"
ALTER TABLE vaults ADD COLUMN deleted_at INTEGER;
ALTER TABLE vaults ADD COLUMN purge_at INTEGER;
CREATE TABLE principals (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    name_key TEXT NOT NULL UNIQUE,
    admin INTEGER NOT NULL,
    disabled INTEGER NOT NULL DEFAULT 0,
    description TEXT,
    created INTEGER NOT NULL,
    updated INTEGER NOT NULL
);
CREATE TABLE tokens (
    id INTEGER PRIMARY KEY,
    principal_id INTEGER NOT NULL REFERENCES principals(id) ON DELETE CASCADE,
    token_hash BLOB NOT NULL UNIQUE,
    label TEXT,
    created INTEGER NOT NULL,
    expires INTEGER,
    revoked INTEGER
);
CREATE INDEX tokens_principal ON tokens (principal_id);
CREATE TABLE access_policies (
    vault_id INTEGER NOT NULL REFERENCES vaults(id),
    principal_id INTEGER NOT NULL REFERENCES principals(id) ON DELETE CASCADE,
    permissions TEXT NOT NULL,
    updated INTEGER NOT NULL,
    PRIMARY KEY (vault_id, principal_id)
);
CREATE INDEX access_policies_principal ON access_policies (principal_id);
"#;

/// A principal: a named identity that holds tokens and access policies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrincipalRecord {
    /// Row id.
    pub id: i64,
    /// Name as given.
    pub name: String,
    /// Administrators manage vaults, principals and policies and hold every permission.
    pub admin: bool,
    /// A disabled principal's tokens are refused.
    pub disabled: bool,
    /// May read `/metrics` (administrators may anyway).
    pub metrics: bool,
    /// Free text.
    pub description: Option<String>,
    /// Creation time.
    pub created: i64,
    /// Update time.
    pub updated: i64,
}

/// A bearer token (its hash is never returned).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    /// Row id.
    pub id: i64,
    /// Owner.
    pub principal_id: i64,
    /// Free text.
    pub label: Option<String>,
    /// Creation time.
    pub created: i64,
    /// Expiry, if any.
    pub expires: Option<i64>,
    /// When it was revoked.
    pub revoked: Option<i64>,
}

/// An access policy: a principal's permissions (normalized JSON) in a vault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyRecord {
    /// Vault row id.
    pub vault_id: i64,
    /// Vault name.
    pub vault: String,
    /// Principal row id.
    pub principal_id: i64,
    /// Principal name.
    pub principal: String,
    /// Permissions as JSON.
    pub permissions: String,
    /// Update time.
    pub updated: i64,
}

pub(crate) const PRINCIPAL_COLS: &str =
    "p.id, p.name, p.admin, p.disabled, p.description, p.created, p.updated, p.metrics";

fn principal_row(r: &Row<'_>, o: usize) -> rusqlite::Result<PrincipalRecord> {
    Ok(PrincipalRecord {
        id: r.get(o)?,
        name: r.get(o + 1)?,
        admin: r.get(o + 2)?,
        disabled: r.get(o + 3)?,
        description: r.get(o + 4)?,
        created: r.get(o + 5)?,
        updated: r.get(o + 6)?,
        metrics: r.get(o + 7)?,
    })
}

pub(crate) const TOKEN_COLS: &str =
    "t.id, t.principal_id, t.label, t.created, t.expires, t.revoked";

fn token_row(r: &Row<'_>, o: usize) -> rusqlite::Result<TokenRecord> {
    Ok(TokenRecord {
        id: r.get(o)?,
        principal_id: r.get(o + 1)?,
        label: r.get(o + 2)?,
        created: r.get(o + 3)?,
        expires: r.get(o + 4)?,
        revoked: r.get(o + 5)?,
    })
}

pub(crate) const POLICY_SELECT: &str = "SELECT a.vault_id, v.name, a.principal_id, p.name, a.permissions, a.updated \
     FROM access_policies a JOIN vaults v ON v.id = a.vault_id JOIN principals p ON p.id = a.principal_id";

fn policy_row(r: &Row<'_>) -> rusqlite::Result<PolicyRecord> {
    Ok(PolicyRecord {
        vault_id: r.get(0)?,
        vault: r.get(1)?,
        principal_id: r.get(2)?,
        principal: r.get(3)?,
        permissions: r.get(4)?,
        updated: r.get(5)?,
    })
}

pub(crate) const VAULT_COLS: &str =
    "id, name, wrapped_key, recoverable_days, created, deleted_at, purge_at";

pub(crate) fn vault_row(r: &Row<'_>) -> rusqlite::Result<Vault> {
    Ok(Vault {
        id: r.get(0)?,
        name: r.get(1)?,
        wrapped_key: r.get(2)?,
        recoverable_days: r.get(3)?,
        created: r.get(4)?,
        deleted_at: r.get(5)?,
        purge_at: r.get(6)?,
    })
}

fn get_principal(c: &Connection, name_key: &str) -> Result<PrincipalRecord, StoreError> {
    c.query_row(
        &format!("SELECT {PRINCIPAL_COLS} FROM principals p WHERE p.name_key = ?1"),
        [name_key],
        |r| principal_row(r, 0),
    )
    .optional()?
    .ok_or(StoreError::NotFound)
}

fn get_vault_any(c: &Connection, name_key: &str) -> Result<Vault, StoreError> {
    c.query_row(
        &format!("SELECT {VAULT_COLS} FROM vaults WHERE name_key = ?1"),
        [name_key],
        vault_row,
    )
    .optional()?
    .ok_or(StoreError::NotFound)
}

impl SqliteStore {
    // ------------------------------------------------------------------ vaults

    /// Every vault, live or (with `deleted`) soft-deleted, by name.
    pub async fn list_vaults(&self, deleted: bool) -> Result<Vec<Vault>, StoreError> {
        let cond = if deleted { "IS NOT NULL" } else { "IS NULL" };
        self.read(move |c| {
            let mut st = c.prepare(&format!(
                "SELECT {VAULT_COLS} FROM vaults WHERE deleted_at {cond} ORDER BY name_key"
            ))?;
            let rows = st.query_map([], vault_row)?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    /// A vault in any state.
    pub async fn vault_any(&self, name_key: &str) -> Result<Option<Vault>, StoreError> {
        let key = name_key.to_owned();
        self.read(move |c| match get_vault_any(c, &key) {
            Ok(v) => Ok(Some(v)),
            Err(StoreError::NotFound) => Ok(None),
            Err(e) => Err(e),
        })
        .await
    }

    /// Changes a live vault's retention period.
    pub async fn update_vault(
        &self,
        name_key: &str,
        recoverable_days: i64,
    ) -> Result<Vault, StoreError> {
        let key = name_key.to_owned();
        self.write(move |c| {
            let n = c.execute(
                "UPDATE vaults SET recoverable_days = ?2 WHERE name_key = ?1 AND deleted_at IS NULL",
                params![key, recoverable_days],
            )?;
            if n == 0 {
                return Err(StoreError::NotFound);
            }
            get_vault_any(c, &key)
        })
        .await
    }

    /// Soft-deletes a live vault: it stops answering, and everything in it stays until purge.
    pub async fn soft_delete_vault(
        &self,
        name_key: &str,
        now: i64,
        purge_at: i64,
    ) -> Result<Vault, StoreError> {
        let key = name_key.to_owned();
        self.write(move |c| {
            let n = c.execute(
                "UPDATE vaults SET deleted_at = ?2, purge_at = ?3 WHERE name_key = ?1 AND deleted_at IS NULL",
                params![key, now, purge_at],
            )?;
            if n == 0 {
                return Err(StoreError::NotFound);
            }
            get_vault_any(c, &key)
        })
        .await
    }

    /// Recovers a soft-deleted vault.
    pub async fn recover_vault(&self, name_key: &str) -> Result<Vault, StoreError> {
        let key = name_key.to_owned();
        self.write(move |c| {
            let n = c.execute(
                "UPDATE vaults SET deleted_at = NULL, purge_at = NULL WHERE name_key = ?1 AND deleted_at IS NOT NULL",
                [&key],
            )?;
            if n == 0 {
                return Err(StoreError::NotFound);
            }
            get_vault_any(c, &key)
        })
        .await
    }

    /// Purges a soft-deleted vault with everything in it. Returns the references of keys held
    /// outside the database (HSM keys) that went with it.
    pub async fn purge_vault(&self, name_key: &str) -> Result<Vec<String>, StoreError> {
        let key = name_key.to_owned();
        self.write(move |c| {
            let vault = get_vault_any(c, &key)?;
            if vault.deleted_at.is_none() {
                return Err(StoreError::Conflict(Conflict::State));
            }
            purge_vault_rows(c, vault.id)
        })
        .await
    }

    /// Purges every soft-deleted vault whose purge date has passed; returns the vault count and
    /// the HSM key references that went with them.
    pub async fn purge_due_vaults(&self, now: i64) -> Result<(usize, Vec<String>), StoreError> {
        self.write(move |c| {
            let ids: Vec<i64> = {
                let mut st = c.prepare(
                    "SELECT id FROM vaults WHERE purge_at IS NOT NULL AND purge_at <= ?1",
                )?;
                let rows = st.query_map([now], |r| r.get(0))?;
                rows.collect::<Result<_, _>>()?
            };
            let mut refs = Vec::new();
            for id in &ids {
                refs.extend(purge_vault_rows(c, *id)?);
            }
            Ok((ids.len(), refs))
        })
        .await
    }

    // ------------------------------------------------------------------ principals

    /// Creates a principal; `Conflict::Exists` if the name is taken.
    pub async fn create_principal(
        &self,
        name: &str,
        admin: bool,
        description: Option<String>,
        now: i64,
    ) -> Result<PrincipalRecord, StoreError> {
        let name = name.to_owned();
        self.write(move |c| {
            let n = c.execute(
                "INSERT OR IGNORE INTO principals (name, name_key, admin, description, created, updated) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
                params![name, name.to_ascii_lowercase(), admin, description, now],
            )?;
            if n == 0 {
                return Err(StoreError::Conflict(Conflict::Exists));
            }
            get_principal(c, &name.to_ascii_lowercase())
        })
        .await
    }

    /// A principal by name.
    pub async fn principal(&self, name_key: &str) -> Result<Option<PrincipalRecord>, StoreError> {
        let key = name_key.to_owned();
        self.read(move |c| match get_principal(c, &key) {
            Ok(p) => Ok(Some(p)),
            Err(StoreError::NotFound) => Ok(None),
            Err(e) => Err(e),
        })
        .await
    }

    /// Every principal, by name.
    pub async fn list_principals(&self) -> Result<Vec<PrincipalRecord>, StoreError> {
        self.read(move |c| {
            let mut st = c.prepare(&format!(
                "SELECT {PRINCIPAL_COLS} FROM principals p ORDER BY p.name_key"
            ))?;
            let rows = st.query_map([], |r| principal_row(r, 0))?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    /// Changes a principal's flags or description.
    pub async fn update_principal(
        &self,
        name_key: &str,
        disabled: Option<bool>,
        admin: Option<bool>,
        description: Option<Option<String>>,
        now: i64,
    ) -> Result<PrincipalRecord, StoreError> {
        let key = name_key.to_owned();
        self.write(move |c| {
            let p = get_principal(c, &key)?;
            c.execute(
                "UPDATE principals SET disabled = ?2, admin = ?3, description = ?4, updated = ?5 WHERE id = ?1",
                params![
                    p.id,
                    disabled.unwrap_or(p.disabled),
                    admin.unwrap_or(p.admin),
                    description.unwrap_or(p.description),
                    now
                ],
            )?;
            get_principal(c, &key)
        })
        .await
    }

    /// Gives or takes the `metrics` role (reading `/metrics`).
    pub async fn set_principal_metrics(
        &self,
        name_key: &str,
        metrics: bool,
        now: i64,
    ) -> Result<PrincipalRecord, StoreError> {
        let key = name_key.to_owned();
        self.write(move |c| {
            let p = get_principal(c, &key)?;
            c.execute(
                "UPDATE principals SET metrics = ?2, updated = ?3 WHERE id = ?1",
                params![p.id, metrics, now],
            )?;
            get_principal(c, &key)
        })
        .await
    }

    /// Deletes a principal with its tokens and access policies.
    pub async fn delete_principal(&self, name_key: &str) -> Result<PrincipalRecord, StoreError> {
        let key = name_key.to_owned();
        self.write(move |c| {
            let p = get_principal(c, &key)?;
            c.execute("DELETE FROM principals WHERE id = ?1", [p.id])?;
            Ok(p)
        })
        .await
    }

    // ------------------------------------------------------------------ tokens

    /// Stores a new token's hash for a principal.
    pub async fn add_token(
        &self,
        principal_id: i64,
        hash: Vec<u8>,
        label: Option<String>,
        expires: Option<i64>,
        now: i64,
    ) -> Result<TokenRecord, StoreError> {
        self.write(move |c| {
            c.execute(
                "INSERT INTO tokens (principal_id, token_hash, label, created, expires) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![principal_id, hash, label, now, expires],
            )?;
            let id = c.last_insert_rowid();
            Ok(c.query_row(&format!("SELECT {TOKEN_COLS} FROM tokens t WHERE t.id = ?1"), [id], |r| {
                token_row(r, 0)
            })?)
        })
        .await
    }

    /// Adds a token hash for a principal unless that hash is already stored (bootstrap).
    pub async fn ensure_token(
        &self,
        principal_id: i64,
        hash: Vec<u8>,
        label: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        let label = label.to_owned();
        self.write(move |c| {
            c.execute(
                "INSERT OR IGNORE INTO tokens (principal_id, token_hash, label, created) VALUES (?1, ?2, ?3, ?4)",
                params![principal_id, hash, label, now],
            )?;
            Ok(())
        })
        .await
    }

    /// A principal's tokens (without hashes).
    pub async fn list_tokens(&self, principal_id: i64) -> Result<Vec<TokenRecord>, StoreError> {
        self.read(move |c| {
            let mut st = c.prepare(&format!(
                "SELECT {TOKEN_COLS} FROM tokens t WHERE t.principal_id = ?1 ORDER BY t.id"
            ))?;
            let rows = st.query_map([principal_id], |r| token_row(r, 0))?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    /// Revokes one of a principal's tokens.
    pub async fn revoke_token(
        &self,
        principal_id: i64,
        token_id: i64,
        now: i64,
    ) -> Result<TokenRecord, StoreError> {
        self.write(move |c| {
            let n = c.execute(
                "UPDATE tokens SET revoked = COALESCE(revoked, ?3) WHERE id = ?1 AND principal_id = ?2",
                params![token_id, principal_id, now],
            )?;
            if n == 0 {
                return Err(StoreError::NotFound);
            }
            Ok(c.query_row(&format!("SELECT {TOKEN_COLS} FROM tokens t WHERE t.id = ?1"), [token_id], |r| {
                token_row(r, 0)
            })?)
        })
        .await
    }

    /// Deletes the tokens labelled `label` that expired before `before` (e.g. the short-lived
    /// tokens of the managed identity endpoint); returns how many.
    pub async fn delete_expired_tokens(
        &self,
        label: &str,
        before: i64,
    ) -> Result<usize, StoreError> {
        let label = label.to_owned();
        self.write(move |c| {
            Ok(c.execute(
                "DELETE FROM tokens WHERE label = ?1 AND expires IS NOT NULL AND expires < ?2",
                params![label, before],
            )?)
        })
        .await
    }

    /// The token with this hash and its principal.
    pub async fn token_by_hash(
        &self,
        hash: Vec<u8>,
    ) -> Result<Option<(TokenRecord, PrincipalRecord)>, StoreError> {
        self.read(move |c| {
            Ok(c.query_row(
                &format!(
                    "SELECT {TOKEN_COLS}, {PRINCIPAL_COLS} FROM tokens t JOIN principals p ON p.id = t.principal_id \
                     WHERE t.token_hash = ?1"
                ),
                [hash],
                |r| Ok((token_row(r, 0)?, principal_row(r, 6)?)),
            )
            .optional()?)
        })
        .await
    }

    // ------------------------------------------------------------------ access policies

    /// Sets (replaces) a principal's permissions in a vault.
    pub async fn set_access_policy(
        &self,
        vault_id: i64,
        principal_id: i64,
        permissions: String,
        now: i64,
    ) -> Result<(), StoreError> {
        self.write(move |c| {
            c.execute(
                "INSERT OR REPLACE INTO access_policies (vault_id, principal_id, permissions, updated) \
                 VALUES (?1, ?2, ?3, ?4)",
                params![vault_id, principal_id, permissions, now],
            )?;
            Ok(())
        })
        .await
    }

    /// Removes a principal's access policy in a vault.
    pub async fn delete_access_policy(
        &self,
        vault_id: i64,
        principal_id: i64,
    ) -> Result<(), StoreError> {
        self.write(move |c| {
            let n = c.execute(
                "DELETE FROM access_policies WHERE vault_id = ?1 AND principal_id = ?2",
                params![vault_id, principal_id],
            )?;
            if n == 0 {
                return Err(StoreError::NotFound);
            }
            Ok(())
        })
        .await
    }

    /// The access policies of a vault.
    pub async fn vault_access_policies(
        &self,
        vault_id: i64,
    ) -> Result<Vec<PolicyRecord>, StoreError> {
        self.read(move |c| {
            let mut st = c.prepare(&format!(
                "{POLICY_SELECT} WHERE a.vault_id = ?1 ORDER BY p.name_key"
            ))?;
            let rows = st.query_map([vault_id], policy_row)?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    /// The access policies of a principal, in live vaults.
    pub async fn principal_access_policies(
        &self,
        principal_id: i64,
    ) -> Result<Vec<PolicyRecord>, StoreError> {
        self.read(move |c| {
            let mut st = c.prepare(&format!(
                "{POLICY_SELECT} WHERE a.principal_id = ?1 AND v.deleted_at IS NULL ORDER BY v.name_key"
            ))?;
            let rows = st.query_map([principal_id], policy_row)?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }
}

/// Deletes a vault and everything in it; returns the HSM key references of its versions.
fn purge_vault_rows(c: &Connection, vault_id: i64) -> Result<Vec<String>, StoreError> {
    let refs: Vec<String> = {
        let mut st = c.prepare(
            "SELECT DISTINCT v.key_ref FROM versions v JOIN certificates c ON c.id = v.cert_id \
             WHERE c.vault_id = ?1 AND v.key_ref IS NOT NULL",
        )?;
        let rows = st.query_map([vault_id], |r| r.get(0))?;
        rows.collect::<Result<_, _>>()?
    };
    c.execute("DELETE FROM certificates WHERE vault_id = ?1", [vault_id])?;
    c.execute("DELETE FROM issuers WHERE vault_id = ?1", [vault_id])?;
    c.execute("DELETE FROM contacts WHERE vault_id = ?1", [vault_id])?;
    c.execute(
        "DELETE FROM access_policies WHERE vault_id = ?1",
        [vault_id],
    )?;
    c.execute("DELETE FROM vaults WHERE id = ?1", [vault_id])?;
    Ok(refs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn principals_tokens_policies_and_vault_purge() {
        for t in crate::store::testing::backends().await {
            eprintln!("backend: {}", t.store.backend());
            access_on(&t.store).await;
        }
    }

    async fn access_on(s: &crate::Store) {
        let v = s.create_vault("Team", vec![1], 30, 1).await.unwrap();
        let p = s.create_principal("Bob", false, None, 1).await.unwrap();
        assert!(matches!(
            s.create_principal("bob", false, None, 1).await,
            Err(StoreError::Conflict(Conflict::Exists))
        ));
        let t = s
            .add_token(p.id, vec![7; 32], Some("ci".into()), Some(100), 2)
            .await
            .unwrap();
        let (found, owner) = s.token_by_hash(vec![7; 32]).await.unwrap().unwrap();
        assert_eq!((found.id, owner.name.as_str()), (t.id, "Bob"));
        assert!(s.token_by_hash(vec![8; 32]).await.unwrap().is_none());
        s.add_token(p.id, vec![9; 32], Some("mi".into()), Some(50), 2)
            .await
            .unwrap();
        assert_eq!(s.delete_expired_tokens("mi", 50).await.unwrap(), 0);
        assert_eq!(s.delete_expired_tokens("ci", 100).await.unwrap(), 0);
        assert_eq!(s.delete_expired_tokens("mi", 51).await.unwrap(), 1);
        assert!(s.token_by_hash(vec![9; 32]).await.unwrap().is_none());
        let revoked = s.revoke_token(p.id, t.id, 5).await.unwrap();
        assert_eq!(revoked.revoked, Some(5));
        s.set_access_policy(v.id, p.id, r#"{"certificates":["get"]}"#.into(), 3)
            .await
            .unwrap();
        assert_eq!(s.principal_access_policies(p.id).await.unwrap().len(), 1);
        assert_eq!(
            s.vault_access_policies(v.id).await.unwrap()[0].principal,
            "Bob"
        );

        // soft delete hides the vault and its policies; purge removes everything
        s.soft_delete_vault("team", 10, 20).await.unwrap();
        assert!(s.vault("team").await.unwrap().is_none());
        assert!(s.vault_any("team").await.unwrap().is_some());
        assert!(s.principal_access_policies(p.id).await.unwrap().is_empty());
        assert_eq!(s.list_vaults(true).await.unwrap().len(), 1);
        s.recover_vault("team").await.unwrap();
        assert!(s.vault("team").await.unwrap().is_some());
        assert!(matches!(
            s.purge_vault("team").await,
            Err(StoreError::Conflict(Conflict::State))
        ));
        s.soft_delete_vault("team", 10, 20).await.unwrap();
        assert_eq!(s.purge_due_vaults(19).await.unwrap().0, 0);
        assert_eq!(s.purge_due_vaults(20).await.unwrap().0, 1);
        assert!(s.vault_any("team").await.unwrap().is_none());
        s.delete_principal("bob").await.unwrap();
        assert!(s.token_by_hash(vec![7; 32]).await.unwrap().is_none());
    }
}
