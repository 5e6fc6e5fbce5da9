//! Who is calling, and what they may do.

use certvault_core::access::Permission;

use std::sync::Arc;

use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// Why a bearer token was not accepted.
#[derive(Debug)]
pub enum AuthError {
    /// The token is unknown, expired, revoked or its principal disabled: 401 with the
    /// challenge. The message names no token.
    Invalid(&'static str),
    /// The check itself failed (e.g. the store): answered as this error.
    Unavailable(ApiError),
}

/// Resolves a bearer token to its caller.
pub async fn authenticate(state: &Arc<AppState>, token: &str) -> Result<Caller, AuthError> {
    if state.token_ok(token) {
        return Ok(Caller::admin("admin"));
    }
    Err(AuthError::Invalid("AKV10022: Invalid bearer token."))
}

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The principal's name.
    pub principal: String,
    /// Administrators hold every permission in every vault and may use the admin API.
    pub admin: bool,
}

impl Caller {
    /// The bootstrap administrator.
    pub fn admin(name: &str) -> Self {
        Self {
            principal: name.to_owned(),
            admin: true,
        }
    }

    /// Refuses with 403 unless the caller holds `need` in the vault.
    pub fn authorize(&self, _vault_id: i64, need: Permission) -> ApiResult<()> {
        if self.admin {
            return Ok(());
        }
        Err(ApiError::forbidden(format!(
            "The caller '{}' does not have {need} permission on this vault.",
            self.principal
        ))
        .inner("ForbiddenByPolicy"))
    }
}
