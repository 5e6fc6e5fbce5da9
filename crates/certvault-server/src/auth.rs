//! Who is calling, and what they may do.

use certvault_core::access::Permission;

use crate::error::{ApiError, ApiResult};

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
