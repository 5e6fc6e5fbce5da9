//! Who is calling, and what they may do: bearer tokens resolve to principals; a principal holds
//! Key Vault permissions per vault (access policies), or is an administrator.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use certvault_core::access::{Permission, Permissions};

use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The principal's name.
    pub principal: String,
    /// Administrators hold every permission in every vault and may use the admin API.
    pub admin: bool,
    /// May read `/metrics` (the `metrics` role; administrators may too).
    pub metrics: bool,
    /// Permissions per vault row id (empty for administrators).
    pub permissions: HashMap<i64, Permissions>,
    /// When the token stops being valid.
    pub expires: Option<i64>,
}

impl Caller {
    /// An administrator (used where no token is involved, e.g. in tests).
    pub fn admin(name: &str) -> Self {
        Self {
            principal: name.to_owned(),
            admin: true,
            metrics: true,
            permissions: HashMap::new(),
            expires: None,
        }
    }

    /// Refuses with 403 unless the caller holds `need` in the vault.
    pub fn authorize(&self, vault_id: i64, need: Permission) -> ApiResult<()> {
        if self.admin
            || self
                .permissions
                .get(&vault_id)
                .is_some_and(|p| p.allows(need))
        {
            return Ok(());
        }
        Err(ApiError::forbidden(format!(
            "The principal '{}' does not have {need} permission on this vault.",
            self.principal
        ))
        .inner("ForbiddenByPolicy"))
    }

    /// Refuses with 403 unless the caller may read `/metrics` (an administrator or a principal
    /// with the `metrics` role).
    pub fn require_metrics(&self) -> ApiResult<()> {
        if self.admin || self.metrics {
            return Ok(());
        }
        Err(ApiError::forbidden(format!(
            "The principal '{}' may not read metrics: it needs the metrics role.",
            self.principal
        ))
        .inner("ForbiddenByPolicy"))
    }

    /// Refuses with 403 unless the caller is an administrator.
    pub fn require_admin(&self) -> ApiResult<()> {
        if self.admin {
            return Ok(());
        }
        Err(ApiError::forbidden(format!(
            "The principal '{}' is not an administrator.",
            self.principal
        ))
        .inner("ForbiddenByPolicy"))
    }
}

/// Why a bearer token was not accepted.
#[derive(Debug)]
pub enum AuthError {
    /// The token is unknown, expired, revoked or its principal disabled: 401 with the
    /// challenge. The message names no token.
    Invalid(&'static str),
    /// The check itself failed (e.g. the store): answered as this error.
    Unavailable(ApiError),
}

/// How long a resolved token is trusted without looking at the store again. Changes made
/// through this server's admin API take effect at once (the cache is cleared), and so do
/// another replica's ([`AppState::follow_replicas`] clears it on their change notices); this
/// bounds how long any other change takes.
const CACHE_SECONDS: i64 = 30;
const CACHE_MAX: usize = 10_000;

/// A resolved token and when it was resolved.
type Cached = (Arc<Caller>, i64);

/// Resolved tokens by SHA-256 of the token.
#[derive(Debug, Default)]
pub struct AuthCache {
    entries: RwLock<HashMap<[u8; 32], Cached>>,
}

impl AuthCache {
    fn get(&self, hash: &[u8; 32], now: i64) -> Option<Arc<Caller>> {
        let entries = self.entries.read().ok()?;
        let (caller, at) = entries.get(hash)?;
        (now - at < CACHE_SECONDS).then(|| caller.clone())
    }

    fn put(&self, hash: [u8; 32], caller: Arc<Caller>, now: i64) {
        if let Ok(mut e) = self.entries.write() {
            if e.len() >= CACHE_MAX {
                e.retain(|_, (_, at)| now - *at < CACHE_SECONDS);
                if e.len() >= CACHE_MAX {
                    e.clear();
                }
            }
            e.insert(hash, (caller, now));
        }
    }

    /// Forgets every resolved token (after any change to principals, tokens, policies or
    /// vaults).
    pub fn clear(&self) {
        if let Ok(mut e) = self.entries.write() {
            e.clear();
        }
    }
}

/// Resolves a bearer token to its caller: a certvault token (by its hash), or, when JWT
/// authentication is configured, a JWT from the identity provider (see [`crate::jwt`]).
pub async fn authenticate(state: &Arc<AppState>, token: &str) -> Result<Arc<Caller>, AuthError> {
    let hash = certvault_crypto::sha256(token.as_bytes());
    resolve(state, Some(token), hash).await
}

/// Resolves a certvault token known only by its SHA-256 (the web console keeps the hash of the
/// token a session was opened with, never the token) exactly as [`authenticate`] would.
pub async fn authenticate_hash(
    state: &Arc<AppState>,
    hash: [u8; 32],
) -> Result<Arc<Caller>, AuthError> {
    resolve(state, None, hash).await
}

async fn resolve(
    state: &Arc<AppState>,
    token: Option<&str>,
    hash: [u8; 32],
) -> Result<Arc<Caller>, AuthError> {
    const INVALID: &str = "AKV10022: Invalid bearer token.";
    let now = state.clock.now();
    state.follow_replicas();
    let caller = match state.auth_cache.get(&hash, now) {
        Some(c) => c,
        None => {
            let store_err = |e| AuthError::Unavailable(ApiError::from(e));
            let (principal, expires) = match (&state.jwt, token) {
                (Some(jwt), Some(token)) if crate::jwt::looks_like_jwt(token) => {
                    match jwt.resolve(&state.store, token, now).await {
                        Ok((p, until)) => (p, Some(until)),
                        Err(Ok(refused)) => {
                            tracing::debug!(reason = %refused, "JWT refused");
                            return Err(AuthError::Invalid(refused.message()));
                        }
                        Err(Err(e)) => return Err(store_err(e)),
                    }
                }
                _ => {
                    let (tok, principal) = state
                        .store
                        .token_by_hash(hash.to_vec())
                        .await
                        .map_err(store_err)?
                        .ok_or(AuthError::Invalid(INVALID))?;
                    if tok.revoked.is_some() || principal.disabled {
                        return Err(AuthError::Invalid(INVALID));
                    }
                    (principal, tok.expires)
                }
            };
            let mut permissions = HashMap::new();
            if !principal.admin {
                for p in state
                    .store
                    .principal_access_policies(principal.id)
                    .await
                    .map_err(store_err)?
                {
                    let perms: Permissions = serde_json::from_str(&p.permissions)
                        .map_err(|e| AuthError::Unavailable(ApiError::internal(&e)))?;
                    permissions.insert(p.vault_id, perms);
                }
            }
            let caller = Arc::new(Caller {
                principal: principal.name,
                admin: principal.admin,
                metrics: principal.admin || principal.metrics,
                permissions,
                expires,
            });
            state.auth_cache.put(hash, caller.clone(), now);
            caller
        }
    };
    if caller.expires.is_some_and(|e| now >= e) {
        return Err(AuthError::Invalid(
            "AKV10022: The bearer token has expired.",
        ));
    }
    Ok(caller)
}

/// A new random bearer token: `cvt_` and 43 base64url characters (256 bits).
pub fn new_token() -> Result<String, ApiError> {
    use base64::Engine;
    let bytes = certvault_crypto::random_bytes(32).map_err(|e| ApiError::internal(&e))?;
    Ok(format!(
        "cvt_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}
