//! Principals, tokens, access policies and the vault lifecycle on PostgreSQL (see `access.rs`).

use deadpool_postgres::GenericClient;
use tokio_postgres::Row;

use crate::access::{POLICY_SELECT, PRINCIPAL_COLS, TOKEN_COLS, VAULT_COLS};
use crate::pg::{all, col, count, key_refs, one, vault_row};
use crate::{Conflict, PgStore, PolicyRecord, PrincipalRecord, StoreError, TokenRecord, Vault};

fn principal_row(r: &Row, o: usize) -> Result<PrincipalRecord, StoreError> {
    Ok(PrincipalRecord {
        id: col(r, o)?,
        name: col(r, o + 1)?,
        admin: col(r, o + 2)?,
        disabled: col(r, o + 3)?,
        description: col(r, o + 4)?,
        created: col(r, o + 5)?,
        updated: col(r, o + 6)?,
        metrics: col(r, o + 7)?,
    })
}

fn token_row(r: &Row, o: usize) -> Result<TokenRecord, StoreError> {
    Ok(TokenRecord {
        id: col(r, o)?,
        principal_id: col(r, o + 1)?,
        label: col(r, o + 2)?,
        created: col(r, o + 3)?,
        expires: col(r, o + 4)?,
        revoked: col(r, o + 5)?,
    })
}

fn policy_row(r: &Row) -> Result<PolicyRecord, StoreError> {
    Ok(PolicyRecord {
        vault_id: col(r, 0)?,
        vault: col(r, 1)?,
        principal_id: col(r, 2)?,
        principal: col(r, 3)?,
        permissions: col(r, 4)?,
        updated: col(r, 5)?,
    })
}

async fn get_principal<C: GenericClient>(
    c: &C,
    name_key: &str,
) -> Result<Option<PrincipalRecord>, StoreError> {
    one(
        c,
        &format!("SELECT {PRINCIPAL_COLS} FROM principals p WHERE p.name_key = $1"),
        &[&name_key],
        |r| principal_row(r, 0),
    )
    .await
}

async fn get_vault_any<C: GenericClient>(
    c: &C,
    name_key: &str,
) -> Result<Option<Vault>, StoreError> {
    one(
        c,
        &format!("SELECT {VAULT_COLS} FROM vaults WHERE name_key = $1"),
        &[&name_key],
        vault_row,
    )
    .await
}

async fn get_token<C: GenericClient>(c: &C, id: i64) -> Result<TokenRecord, StoreError> {
    one(
        c,
        &format!("SELECT {TOKEN_COLS} FROM tokens t WHERE t.id = $1"),
        &[&id],
        |r| token_row(r, 0),
    )
    .await?
    .ok_or(StoreError::NotFound)
}

/// Deletes a vault and everything in it; returns the HSM key references of its versions.
async fn purge_vault_rows<C: GenericClient>(
    c: &C,
    vault_id: i64,
) -> Result<Vec<String>, StoreError> {
    let refs = key_refs(c, "c.vault_id = $1", vault_id).await?;
    for table in ["certificates", "issuers", "contacts", "access_policies"] {
        c.execute(
            &format!("DELETE FROM {table} WHERE vault_id = $1"),
            &[&vault_id],
        )
        .await?;
    }
    c.execute("DELETE FROM vaults WHERE id = $1", &[&vault_id])
        .await?;
    Ok(refs)
}

impl PgStore {
    /// Runs one `UPDATE vaults … WHERE name_key = $1 …` that must hit a row and returns the
    /// vault after it.
    async fn vault_update(
        &self,
        sql: &str,
        params: &crate::pg::Params<'_>,
        name_key: &str,
    ) -> Result<Vault, StoreError> {
        let mut c = self.conn().await?;
        let tx = c.transaction().await?;
        if tx.execute(sql, params).await? == 0 {
            return Err(StoreError::NotFound);
        }
        let v = get_vault_any(&tx, name_key)
            .await?
            .ok_or(StoreError::NotFound)?;
        self.commit(tx).await?;
        Ok(v)
    }

    /// Every vault, live or (with `deleted`) soft-deleted, by name.
    pub async fn list_vaults(&self, deleted: bool) -> Result<Vec<Vault>, StoreError> {
        let cond = if deleted { "IS NOT NULL" } else { "IS NULL" };
        let c = self.conn().await?;
        all(
            &c,
            &format!("SELECT {VAULT_COLS} FROM vaults WHERE deleted_at {cond} ORDER BY name_key"),
            &[],
            vault_row,
        )
        .await
    }

    /// A vault in any state.
    pub async fn vault_any(&self, name_key: &str) -> Result<Option<Vault>, StoreError> {
        let c = self.conn().await?;
        get_vault_any(&c, name_key).await
    }

    /// Changes a live vault's retention period.
    pub async fn update_vault(
        &self,
        name_key: &str,
        recoverable_days: i64,
    ) -> Result<Vault, StoreError> {
        self.vault_update(
            "UPDATE vaults SET recoverable_days = $2 WHERE name_key = $1 AND deleted_at IS NULL",
            &[&name_key, &recoverable_days],
            name_key,
        )
        .await
    }

    /// Soft-deletes a live vault.
    pub async fn soft_delete_vault(
        &self,
        name_key: &str,
        now: i64,
        purge_at: i64,
    ) -> Result<Vault, StoreError> {
        self.vault_update(
            "UPDATE vaults SET deleted_at = $2, purge_at = $3 WHERE name_key = $1 AND deleted_at IS NULL",
            &[&name_key, &now, &purge_at],
            name_key,
        )
        .await
    }

    /// Recovers a soft-deleted vault.
    pub async fn recover_vault(&self, name_key: &str) -> Result<Vault, StoreError> {
        self.vault_update(
            "UPDATE vaults SET deleted_at = NULL, purge_at = NULL \
             WHERE name_key = $1 AND deleted_at IS NOT NULL",
            &[&name_key],
            name_key,
        )
        .await
    }

    /// Purges a soft-deleted vault with everything in it; returns its HSM key references.
    pub async fn purge_vault(&self, name_key: &str) -> Result<Vec<String>, StoreError> {
        let mut c = self.conn().await?;
        let tx = c.transaction().await?;
        let vault = one(
            &tx,
            &format!("SELECT {VAULT_COLS} FROM vaults WHERE name_key = $1 FOR UPDATE"),
            &[&name_key],
            vault_row,
        )
        .await?
        .ok_or(StoreError::NotFound)?;
        if vault.deleted_at.is_none() {
            return Err(StoreError::Conflict(Conflict::State));
        }
        let refs = purge_vault_rows(&tx, vault.id).await?;
        self.commit(tx).await?;
        Ok(refs)
    }

    /// Purges every soft-deleted vault whose purge date has passed.
    pub async fn purge_due_vaults(&self, now: i64) -> Result<(usize, Vec<String>), StoreError> {
        let mut c = self.conn().await?;
        let tx = c.transaction().await?;
        let ids: Vec<i64> = all(
            &tx,
            "SELECT id FROM vaults WHERE purge_at IS NOT NULL AND purge_at <= $1 FOR UPDATE",
            &[&now],
            |r| col(r, 0),
        )
        .await?;
        let mut refs = Vec::new();
        for id in &ids {
            refs.extend(purge_vault_rows(&tx, *id).await?);
        }
        self.commit(tx).await?;
        Ok((ids.len(), refs))
    }

    /// Creates a principal; `Conflict::Exists` if the name is taken.
    pub async fn create_principal(
        &self,
        name: &str,
        admin: bool,
        description: Option<String>,
        now: i64,
    ) -> Result<PrincipalRecord, StoreError> {
        let mut c = self.conn().await?;
        let tx = c.transaction().await?;
        let p = one(
            &tx,
            &format!(
                "INSERT INTO principals AS p (name, name_key, admin, description, created, updated) \
                 VALUES ($1, $2, $3, $4, $5, $5) ON CONFLICT (name_key) DO NOTHING \
                 RETURNING {PRINCIPAL_COLS}"
            ),
            &[&name, &name.to_ascii_lowercase(), &admin, &description, &now],
            |r| principal_row(r, 0),
        )
        .await?
        .ok_or(StoreError::Conflict(Conflict::Exists))?;
        self.commit(tx).await?;
        Ok(p)
    }

    /// A principal by name.
    pub async fn principal(&self, name_key: &str) -> Result<Option<PrincipalRecord>, StoreError> {
        let c = self.conn().await?;
        get_principal(&c, name_key).await
    }

    /// Every principal, by name.
    pub async fn list_principals(&self) -> Result<Vec<PrincipalRecord>, StoreError> {
        let c = self.conn().await?;
        all(
            &c,
            &format!("SELECT {PRINCIPAL_COLS} FROM principals p ORDER BY p.name_key"),
            &[],
            |r| principal_row(r, 0),
        )
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
        let mut c = self.conn().await?;
        let tx = c.transaction().await?;
        let p = one(
            &tx,
            &format!("SELECT {PRINCIPAL_COLS} FROM principals p WHERE p.name_key = $1 FOR UPDATE"),
            &[&name_key],
            |r| principal_row(r, 0),
        )
        .await?
        .ok_or(StoreError::NotFound)?;
        let out = one(
            &tx,
            &format!(
                "UPDATE principals AS p SET disabled = $2, admin = $3, description = $4, \
                 updated = $5 WHERE id = $1 RETURNING {PRINCIPAL_COLS}"
            ),
            &[
                &p.id,
                &disabled.unwrap_or(p.disabled),
                &admin.unwrap_or(p.admin),
                &description.unwrap_or(p.description),
                &now,
            ],
            |r| principal_row(r, 0),
        )
        .await?
        .ok_or(StoreError::NotFound)?;
        self.commit(tx).await?;
        Ok(out)
    }

    /// Deletes a principal with its tokens and access policies.
    pub async fn delete_principal(&self, name_key: &str) -> Result<PrincipalRecord, StoreError> {
        let mut c = self.conn().await?;
        let tx = c.transaction().await?;
        let p = one(
            &tx,
            &format!(
                "DELETE FROM principals AS p WHERE p.name_key = $1 RETURNING {PRINCIPAL_COLS}"
            ),
            &[&name_key],
            |r| principal_row(r, 0),
        )
        .await?
        .ok_or(StoreError::NotFound)?;
        self.commit(tx).await?;
        Ok(p)
    }

    /// Stores a new token's hash for a principal.
    pub async fn add_token(
        &self,
        principal_id: i64,
        hash: Vec<u8>,
        label: Option<String>,
        expires: Option<i64>,
        now: i64,
    ) -> Result<TokenRecord, StoreError> {
        let mut c = self.conn().await?;
        let tx = c.transaction().await?;
        let t = one(
            &tx,
            &format!(
                "INSERT INTO tokens AS t (principal_id, token_hash, label, created, expires) \
                 VALUES ($1, $2, $3, $4, $5) RETURNING {TOKEN_COLS}"
            ),
            &[&principal_id, &hash, &label, &now, &expires],
            |r| token_row(r, 0),
        )
        .await?
        .ok_or(StoreError::NotFound)?;
        self.commit(tx).await?;
        Ok(t)
    }

    /// Adds a token hash for a principal unless that hash is already stored (bootstrap).
    pub async fn ensure_token(
        &self,
        principal_id: i64,
        hash: Vec<u8>,
        label: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        let mut c = self.conn().await?;
        let tx = c.transaction().await?;
        tx.execute(
            "INSERT INTO tokens (principal_id, token_hash, label, created) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (token_hash) DO NOTHING",
            &[&principal_id, &hash, &label, &now],
        )
        .await?;
        self.commit(tx).await
    }

    /// A principal's tokens (without hashes).
    pub async fn list_tokens(&self, principal_id: i64) -> Result<Vec<TokenRecord>, StoreError> {
        let c = self.conn().await?;
        all(
            &c,
            &format!("SELECT {TOKEN_COLS} FROM tokens t WHERE t.principal_id = $1 ORDER BY t.id"),
            &[&principal_id],
            |r| token_row(r, 0),
        )
        .await
    }

    /// Revokes one of a principal's tokens.
    pub async fn revoke_token(
        &self,
        principal_id: i64,
        token_id: i64,
        now: i64,
    ) -> Result<TokenRecord, StoreError> {
        let mut c = self.conn().await?;
        let tx = c.transaction().await?;
        let n = tx
            .execute(
                "UPDATE tokens SET revoked = COALESCE(revoked, $3) WHERE id = $1 AND principal_id = $2",
                &[&token_id, &principal_id, &now],
            )
            .await?;
        if n == 0 {
            return Err(StoreError::NotFound);
        }
        let t = get_token(&tx, token_id).await?;
        self.commit(tx).await?;
        Ok(t)
    }

    /// Deletes the tokens labelled `label` that expired before `before`; returns how many.
    pub async fn delete_expired_tokens(
        &self,
        label: &str,
        before: i64,
    ) -> Result<usize, StoreError> {
        let mut c = self.conn().await?;
        let tx = c.transaction().await?;
        let n = tx
            .execute(
                "DELETE FROM tokens WHERE label = $1 AND expires IS NOT NULL AND expires < $2",
                &[&label, &before],
            )
            .await?;
        self.commit(tx).await?;
        Ok(count(n))
    }

    /// The token with this hash and its principal.
    pub async fn token_by_hash(
        &self,
        hash: Vec<u8>,
    ) -> Result<Option<(TokenRecord, PrincipalRecord)>, StoreError> {
        let c = self.conn().await?;
        one(
            &c,
            &format!(
                "SELECT {TOKEN_COLS}, {PRINCIPAL_COLS} FROM tokens t \
                 JOIN principals p ON p.id = t.principal_id WHERE t.token_hash = $1"
            ),
            &[&hash],
            |r| Ok((token_row(r, 0)?, principal_row(r, 6)?)),
        )
        .await
    }

    /// Sets (replaces) a principal's permissions in a vault.
    pub async fn set_access_policy(
        &self,
        vault_id: i64,
        principal_id: i64,
        permissions: String,
        now: i64,
    ) -> Result<(), StoreError> {
        let mut c = self.conn().await?;
        let tx = c.transaction().await?;
        tx.execute(
            "INSERT INTO access_policies (vault_id, principal_id, permissions, updated) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (vault_id, principal_id) DO UPDATE \
             SET permissions = excluded.permissions, updated = excluded.updated",
            &[&vault_id, &principal_id, &permissions, &now],
        )
        .await?;
        self.commit(tx).await
    }

    /// Removes a principal's access policy in a vault.
    pub async fn delete_access_policy(
        &self,
        vault_id: i64,
        principal_id: i64,
    ) -> Result<(), StoreError> {
        let mut c = self.conn().await?;
        let tx = c.transaction().await?;
        let n = tx
            .execute(
                "DELETE FROM access_policies WHERE vault_id = $1 AND principal_id = $2",
                &[&vault_id, &principal_id],
            )
            .await?;
        if n == 0 {
            return Err(StoreError::NotFound);
        }
        self.commit(tx).await
    }

    /// The access policies of a vault.
    pub async fn vault_access_policies(
        &self,
        vault_id: i64,
    ) -> Result<Vec<PolicyRecord>, StoreError> {
        let c = self.conn().await?;
        all(
            &c,
            &format!("{POLICY_SELECT} WHERE a.vault_id = $1 ORDER BY p.name_key"),
            &[&vault_id],
            policy_row,
        )
        .await
    }

    /// The access policies of a principal, in live vaults.
    pub async fn principal_access_policies(
        &self,
        principal_id: i64,
    ) -> Result<Vec<PolicyRecord>, StoreError> {
        let c = self.conn().await?;
        all(
            &c,
            &format!(
                "{POLICY_SELECT} WHERE a.principal_id = $1 AND v.deleted_at IS NULL ORDER BY v.name_key"
            ),
            &[&principal_id],
            policy_row,
        )
        .await
    }
}

impl PgStore {
    /// Grants or withdraws the `metrics` role (reading `/metrics`).
    pub async fn set_principal_metrics(
        &self,
        name_key: &str,
        metrics: bool,
        now: i64,
    ) -> Result<PrincipalRecord, StoreError> {
        let c = self.conn().await?;
        let out = one(
            &c,
            &format!(
                "UPDATE principals AS p SET metrics = $2, updated = $3 WHERE name_key = $1 \
                 RETURNING {PRINCIPAL_COLS}"
            ),
            &[&name_key, &metrics, &now],
            |r| principal_row(r, 0),
        )
        .await?
        .ok_or(StoreError::NotFound)?;
        self.bump().await;
        Ok(out)
    }
}
