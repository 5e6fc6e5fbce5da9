//! Admin API for vaults, principals, tokens and access policies (under `/admin/v1/`; the
//! caller is already known to be an administrator).
//!
//! | method and path | does |
//! |---|---|
//! | `GET /vaults`, `POST /vaults` | list, create (`{name, recoverable_days?}`) |
//! | `GET`, `PATCH`, `DELETE /vaults/{v}` | read, change `recoverable_days`, soft-delete |
//! | `GET /deleted-vaults`, `POST /deleted-vaults/{v}/recover`, `DELETE /deleted-vaults/{v}` | list, recover, purge |
//! | `GET /principals`, `POST /principals` | list, create (`{name, admin?, metrics?, description?, token?, token_label?, token_expires_in_days?}`) |
//! | `GET`, `PATCH`, `DELETE /principals/{p}` | read (with tokens and policies), change (`{disabled?, admin?, metrics?, description?}`), delete |
//! | `GET`, `POST /principals/{p}/tokens`, `DELETE /principals/{p}/tokens/{id}` | list, create (shown once), revoke |
//! | `GET /vaults/{v}/access-policies`, `GET`, `PUT`, `DELETE /vaults/{v}/access-policies/{p}` | per-vault permissions |

use std::sync::Arc;

use certvault_core::access::Permissions;
use certvault_store::{PolicyRecord, PrincipalRecord, StoreError, TokenRecord, Vault};
use http::{Method, Response, StatusCode, request::Parts};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::{ApiError, ApiResult};
use crate::http::{Body, empty, json as json_response};
use crate::state::AppState;

const PREFIX: &str = "/admin/v1/";

/// Routes the access-management part of the admin API; `None` when the path is not one of its.
pub async fn dispatch(
    state: &Arc<AppState>,
    parts: &Parts,
    body: &[u8],
    path: &str,
) -> Option<ApiResult<Response<Body>>> {
    let rest = path.strip_prefix(PREFIX)?;
    let segs: Vec<&str> = rest.split('/').collect();
    let m = &parts.method;
    let a = Admin { state, body };
    let r = match (segs.as_slice(), m) {
        (["vaults"], &Method::GET) => a.list_vaults(false).await,
        (["vaults"], &Method::POST) => a.create_vault().await,
        (["vaults", v], &Method::GET) => a.get_vault(v).await,
        (["vaults", v], &Method::PATCH) => a.update_vault(v).await,
        (["vaults", v], &Method::DELETE) => a.delete_vault(v).await,
        (["deleted-vaults"], &Method::GET) => a.list_vaults(true).await,
        (["deleted-vaults", v, "recover"], &Method::POST) => a.recover_vault(v).await,
        (["deleted-vaults", v], &Method::DELETE) => a.purge_vault(v).await,
        (["principals"], &Method::GET) => a.list_principals().await,
        (["principals"], &Method::POST) => a.create_principal().await,
        (["principals", p], &Method::GET) => a.get_principal(p).await,
        (["principals", p], &Method::PATCH) => a.update_principal(p).await,
        (["principals", p], &Method::DELETE) => a.delete_principal(p).await,
        (["principals", p, "tokens"], &Method::GET) => a.list_tokens(p).await,
        (["principals", p, "tokens"], &Method::POST) => a.create_token(p).await,
        (["principals", p, "tokens", id], &Method::DELETE) => a.revoke_token(p, id).await,
        (["vaults", v, "access-policies"], &Method::GET) => a.list_policies(v).await,
        (["vaults", v, "access-policies", p], &Method::GET) => a.get_policy(v, p).await,
        (["vaults", v, "access-policies", p], &Method::PUT) => a.set_policy(v, p).await,
        (["vaults", v, "access-policies", p], &Method::DELETE) => a.delete_policy(v, p).await,
        _ => return None,
    };
    Some(r)
}

struct Admin<'a> {
    state: &'a Arc<AppState>,
    body: &'a [u8],
}

fn ok(v: &Value) -> ApiResult<Response<Body>> {
    Ok(json_response(StatusCode::OK, v))
}

fn created(v: &Value) -> ApiResult<Response<Body>> {
    Ok(json_response(StatusCode::CREATED, v))
}

fn vault_name(s: &str) -> ApiResult<String> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if !ok {
        return Err(ApiError::bad(format!(
            "'{}' is not a valid vault name: 1 to 63 letters, digits and inner hyphens (a DNS label).",
            certvault_core::names::truncate(s, 70)
        )));
    }
    Ok(s.to_owned())
}

fn principal_name(s: &str) -> ApiResult<String> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b));
    if !ok {
        return Err(ApiError::bad(format!(
            "'{}' is not a valid principal name: 1 to 64 of letters, digits, '-', '_', '.', '@'.",
            certvault_core::names::truncate(s, 70)
        )));
    }
    Ok(s.to_owned())
}

fn not_found(what: &str, name: &str) -> ApiError {
    ApiError::not_found(
        "NotFound",
        format!(
            "The {what} '{}' does not exist.",
            certvault_core::names::truncate(name, 70)
        ),
    )
}

fn days(n: i64) -> ApiResult<i64> {
    if (7..=90).contains(&n) {
        Ok(n)
    } else {
        Err(ApiError::bad("recoverable_days must be from 7 to 90."))
    }
}

impl Admin<'_> {
    fn json<T: serde::de::DeserializeOwned>(&self) -> ApiResult<T> {
        let body = if self.body.is_empty() {
            b"{}".as_slice()
        } else {
            self.body
        };
        serde_json::from_slice(body).map_err(|e| {
            ApiError::bad(format!(
                "The request body is not valid: {}",
                certvault_core::names::truncate(&e.to_string().replace('\n', " "), 200)
            ))
        })
    }

    fn vault_json(&self, v: &Vault) -> Value {
        let http = &self.state.http;
        let port = if http.public_port == 443 {
            String::new()
        } else {
            format!(":{}", http.public_port)
        };
        let mut j = json!({
            "name": v.name,
            "url": format!("https://{}.{}{port}", v.name.to_ascii_lowercase(), http.base_domain),
            "recoverable_days": v.recoverable_days,
            "created": v.created,
        });
        if let Some(d) = v.deleted_at {
            j["deleted_at"] = json!(d);
        }
        if let Some(p) = v.purge_at {
            j["purge_at"] = json!(p);
        }
        j
    }

    fn changed(&self) {
        self.state.auth_cache.clear();
    }

    async fn live_vault(&self, name: &str) -> ApiResult<Vault> {
        self.state
            .store
            .vault(&name.to_ascii_lowercase())
            .await?
            .ok_or_else(|| not_found("vault", name))
    }

    async fn principal(&self, name: &str) -> ApiResult<PrincipalRecord> {
        self.state
            .store
            .principal(&name.to_ascii_lowercase())
            .await?
            .ok_or_else(|| not_found("principal", name))
    }

    // ------------------------------------------------------------------ vaults

    async fn list_vaults(&self, deleted: bool) -> ApiResult<Response<Body>> {
        let vaults = self.state.store.list_vaults(deleted).await?;
        ok(&json!({"vaults": vaults.iter().map(|v| self.vault_json(v)).collect::<Vec<_>>()}))
    }

    async fn create_vault(&self) -> ApiResult<Response<Body>> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Body {
            name: String,
            recoverable_days: Option<i64>,
        }
        let b: Body = self.json()?;
        let name = vault_name(&b.name)?;
        let days = days(
            b.recoverable_days
                .unwrap_or(self.state.http.recoverable_days),
        )?;
        let vault = self.state.create_vault(&name).await.map_err(|e| {
            if e.status == StatusCode::CONFLICT {
                ApiError::conflict(format!(
                    "A vault named '{name}' exists (perhaps soft-deleted: recover or purge it)."
                ))
            } else {
                e
            }
        })?;
        let vault = if days == vault.recoverable_days {
            vault
        } else {
            self.state
                .store
                .update_vault(&name.to_ascii_lowercase(), days)
                .await?
        };
        self.state.forget_vault(&name.to_ascii_lowercase());
        created(&self.vault_json(&vault))
    }

    async fn get_vault(&self, name: &str) -> ApiResult<Response<Body>> {
        let v = self.live_vault(name).await?;
        ok(&self.vault_json(&v))
    }

    async fn update_vault(&self, name: &str) -> ApiResult<Response<Body>> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Body {
            recoverable_days: Option<i64>,
        }
        let b: Body = self.json()?;
        let v = self.live_vault(name).await?;
        let v = match b.recoverable_days {
            Some(d) => {
                self.state
                    .store
                    .update_vault(&v.name.to_ascii_lowercase(), days(d)?)
                    .await?
            }
            None => v,
        };
        self.state.forget_vault(&v.name.to_ascii_lowercase());
        ok(&self.vault_json(&v))
    }

    async fn delete_vault(&self, name: &str) -> ApiResult<Response<Body>> {
        let v = self.live_vault(name).await?;
        let key = v.name.to_ascii_lowercase();
        if key == "default" {
            return Err(ApiError::conflict("The vault 'default' cannot be deleted."));
        }
        let now = self.state.clock.now();
        let v = self
            .state
            .store
            .soft_delete_vault(&key, now, now + v.recoverable_days * 86_400)
            .await?;
        self.state.forget_vault(&key);
        self.changed();
        ok(&self.vault_json(&v))
    }

    async fn recover_vault(&self, name: &str) -> ApiResult<Response<Body>> {
        let key = name.to_ascii_lowercase();
        let v = self
            .state
            .store
            .recover_vault(&key)
            .await
            .map_err(|e| match e {
                StoreError::NotFound => not_found("deleted vault", name),
                other => other.into(),
            })?;
        self.state.forget_vault(&key);
        self.changed();
        ok(&self.vault_json(&v))
    }

    async fn purge_vault(&self, name: &str) -> ApiResult<Response<Body>> {
        let key = name.to_ascii_lowercase();
        let refs = self
            .state
            .store
            .purge_vault(&key)
            .await
            .map_err(|e| match e {
                StoreError::NotFound | StoreError::Conflict(_) => not_found("deleted vault", name),
                other => other.into(),
            })?;
        self.state.forget_vault(&key);
        self.state.key_cache.clear();
        self.state.destroy_hsm_keys(refs).await;
        self.changed();
        Ok(empty(StatusCode::NO_CONTENT))
    }

    // ------------------------------------------------------------------ principals

    async fn list_principals(&self) -> ApiResult<Response<Body>> {
        let ps = self.state.store.list_principals().await?;
        ok(&json!({"principals": ps.iter().map(principal_json).collect::<Vec<_>>()}))
    }

    async fn create_principal(&self) -> ApiResult<Response<Body>> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Body {
            name: String,
            admin: Option<bool>,
            metrics: Option<bool>,
            description: Option<String>,
            token: Option<bool>,
            token_label: Option<String>,
            token_expires_in_days: Option<i64>,
        }
        let b: Body = self.json()?;
        let name = principal_name(&b.name)?;
        let now = self.state.clock.now();
        let p = self
            .state
            .store
            .create_principal(&name, b.admin.unwrap_or(false), b.description, now)
            .await
            .map_err(|e| match e {
                StoreError::Conflict(_) => {
                    ApiError::conflict(format!("A principal named '{name}' exists."))
                }
                other => other.into(),
            })?;
        let p = if b.metrics == Some(true) {
            self.state
                .store
                .set_principal_metrics(&name.to_ascii_lowercase(), true, now)
                .await?
        } else {
            p
        };
        let mut out = json!({"principal": principal_json(&p)});
        if b.token.unwrap_or(true) {
            let (token, rec) = self
                .issue_token(&p, b.token_label, b.token_expires_in_days)
                .await?;
            out["token"] = token_json(&rec);
            out["token"]["token"] = json!(token);
        }
        self.changed();
        created(&out)
    }

    async fn get_principal(&self, name: &str) -> ApiResult<Response<Body>> {
        let p = self.principal(name).await?;
        let tokens = self.state.store.list_tokens(p.id).await?;
        let policies = self.state.store.principal_access_policies(p.id).await?;
        let mut out = principal_json(&p);
        out["tokens"] = json!(tokens.iter().map(token_json).collect::<Vec<_>>());
        out["access_policies"] = json!(policies.iter().map(policy_json).collect::<Vec<_>>());
        ok(&out)
    }

    /// Refuses a change that would leave no enabled administrator.
    async fn keep_an_admin(&self, p: &PrincipalRecord, stays_admin: bool) -> ApiResult<()> {
        if !p.admin || p.disabled || stays_admin {
            return Ok(());
        }
        let others = self.state.store.list_principals().await?;
        if others
            .iter()
            .any(|o| o.id != p.id && o.admin && !o.disabled)
        {
            return Ok(());
        }
        Err(ApiError::conflict(format!(
            "'{}' is the last enabled administrator; make another administrator first.",
            p.name
        )))
    }

    async fn update_principal(&self, name: &str) -> ApiResult<Response<Body>> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Body {
            disabled: Option<bool>,
            admin: Option<bool>,
            metrics: Option<bool>,
            description: Option<String>,
        }
        let b: Body = self.json()?;
        let p = self.principal(name).await?;
        let stays_admin = b.admin.unwrap_or(p.admin) && !b.disabled.unwrap_or(p.disabled);
        self.keep_an_admin(&p, stays_admin).await?;
        let p = self
            .state
            .store
            .update_principal(
                &p.name.to_ascii_lowercase(),
                b.disabled,
                b.admin,
                b.description.map(Some),
                self.state.clock.now(),
            )
            .await?;
        let p = match b.metrics {
            Some(m) if m != p.metrics => {
                self.state
                    .store
                    .set_principal_metrics(&p.name.to_ascii_lowercase(), m, self.state.clock.now())
                    .await?
            }
            _ => p,
        };
        self.changed();
        ok(&principal_json(&p))
    }

    async fn delete_principal(&self, name: &str) -> ApiResult<Response<Body>> {
        let p = self.principal(name).await?;
        self.keep_an_admin(&p, false).await?;
        let p = self
            .state
            .store
            .delete_principal(&p.name.to_ascii_lowercase())
            .await?;
        self.changed();
        ok(&principal_json(&p))
    }

    // ------------------------------------------------------------------ tokens

    async fn issue_token(
        &self,
        p: &PrincipalRecord,
        label: Option<String>,
        expires_in_days: Option<i64>,
    ) -> ApiResult<(String, TokenRecord)> {
        if let Some(l) = &label
            && l.chars().count() > 200
        {
            return Err(ApiError::bad("A token label is at most 200 characters."));
        }
        let now = self.state.clock.now();
        let expires = match expires_in_days {
            None => None,
            Some(d) if (1..=3650).contains(&d) => Some(now + d * 86_400),
            Some(_) => return Err(ApiError::bad("expires_in_days must be from 1 to 3650.")),
        };
        let token = crate::auth::new_token()?;
        let hash = certvault_crypto::sha256(token.as_bytes()).to_vec();
        let rec = self
            .state
            .store
            .add_token(p.id, hash, label, expires, now)
            .await?;
        Ok((token, rec))
    }

    async fn list_tokens(&self, name: &str) -> ApiResult<Response<Body>> {
        let p = self.principal(name).await?;
        let tokens = self.state.store.list_tokens(p.id).await?;
        ok(&json!({"tokens": tokens.iter().map(token_json).collect::<Vec<_>>()}))
    }

    async fn create_token(&self, name: &str) -> ApiResult<Response<Body>> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Body {
            label: Option<String>,
            expires_in_days: Option<i64>,
        }
        let b: Body = self.json()?;
        let p = self.principal(name).await?;
        let (token, rec) = self.issue_token(&p, b.label, b.expires_in_days).await?;
        let mut out = token_json(&rec);
        out["token"] = json!(token);
        self.changed();
        created(&out)
    }

    async fn revoke_token(&self, name: &str, id: &str) -> ApiResult<Response<Body>> {
        let p = self.principal(name).await?;
        let id: i64 = id
            .parse()
            .map_err(|_| ApiError::bad("The token id must be a number."))?;
        let rec = self
            .state
            .store
            .revoke_token(p.id, id, self.state.clock.now())
            .await
            .map_err(|e| match e {
                StoreError::NotFound => not_found("token", &id.to_string()),
                other => other.into(),
            })?;
        self.changed();
        ok(&token_json(&rec))
    }

    // ------------------------------------------------------------------ access policies

    async fn list_policies(&self, vault: &str) -> ApiResult<Response<Body>> {
        let v = self.live_vault(vault).await?;
        let ps = self.state.store.vault_access_policies(v.id).await?;
        ok(&json!({"access_policies": ps.iter().map(policy_json).collect::<Vec<_>>()}))
    }

    async fn get_policy(&self, vault: &str, principal: &str) -> ApiResult<Response<Body>> {
        let v = self.live_vault(vault).await?;
        let p = self.principal(principal).await?;
        let ps = self.state.store.vault_access_policies(v.id).await?;
        let found = ps
            .iter()
            .find(|x| x.principal_id == p.id)
            .ok_or_else(|| not_found("access policy", &format!("{}/{}", v.name, p.name)))?;
        ok(&policy_json(found))
    }

    async fn set_policy(&self, vault: &str, principal: &str) -> ApiResult<Response<Body>> {
        let v = self.live_vault(vault).await?;
        let p = self.principal(principal).await?;
        let wanted: Permissions = self.json()?;
        let perms = wanted.normalize()?;
        let text = serde_json::to_string(&perms).map_err(|e| ApiError::internal(&e))?;
        let now = self.state.clock.now();
        self.state
            .store
            .set_access_policy(v.id, p.id, text.clone(), now)
            .await?;
        self.changed();
        ok(&policy_json(&PolicyRecord {
            vault_id: v.id,
            vault: v.name,
            principal_id: p.id,
            principal: p.name,
            permissions: text,
            updated: now,
        }))
    }

    async fn delete_policy(&self, vault: &str, principal: &str) -> ApiResult<Response<Body>> {
        let v = self.live_vault(vault).await?;
        let p = self.principal(principal).await?;
        self.state
            .store
            .delete_access_policy(v.id, p.id)
            .await
            .map_err(|e| match e {
                StoreError::NotFound => {
                    not_found("access policy", &format!("{}/{}", v.name, p.name))
                }
                other => other.into(),
            })?;
        self.changed();
        Ok(empty(StatusCode::NO_CONTENT))
    }
}

fn principal_json(p: &PrincipalRecord) -> Value {
    json!({
        "name": p.name, "admin": p.admin, "metrics": p.metrics, "disabled": p.disabled,
        "description": p.description,
        "created": p.created, "updated": p.updated,
    })
}

fn token_json(t: &TokenRecord) -> Value {
    json!({"id": t.id, "label": t.label, "created": t.created, "expires": t.expires, "revoked": t.revoked})
}

fn policy_json(p: &PolicyRecord) -> Value {
    let perms: Value = serde_json::from_str(&p.permissions).unwrap_or_else(|_| json!({}));
    json!({"vault": p.vault, "principal": p.principal, "permissions": perms, "updated": p.updated})
}
