//! API errors in the Key Vault error shape: each carries its HTTP status, its Key Vault `code`
//! and optional `innererror` code, and a message that is safe to show to the client.

use http::StatusCode;
use serde_json::json;

/// The inner error code of [`ApiError::superseded`].
pub const SUPERSEDED: &str = "CertificateRenewedConcurrently";

/// An error answered to a client.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Key Vault error code.
    pub code: &'static str,
    /// Inner error code.
    pub inner: Option<&'static str>,
    /// Message (never contains secrets).
    pub message: String,
}

impl ApiError {
    /// A new error.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            inner: None,
            message: message.into(),
        }
    }

    /// With an inner error code.
    pub fn inner(mut self, inner: &'static str) -> Self {
        self.inner = Some(inner);
        self
    }

    /// 400 BadParameter.
    pub fn bad(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "BadParameter", message)
    }

    /// 403 Forbidden.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "Forbidden", message)
    }

    /// 404 with a code.
    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }

    /// 409 Conflict.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "Conflict", message)
    }

    /// 409: a renewal lost the race to another renewal of the same version (on this or
    /// another replica), which added a version or started an operation first; this one
    /// changed nothing. [`ApiError::is_superseded`] tells it from other conflicts.
    pub fn superseded() -> Self {
        Self::conflict(
            "The certificate was renewed by another request while this renewal ran; nothing was \
             changed. Read the certificate's current version and renew again if still needed.",
        )
        .inner(SUPERSEDED)
    }

    /// Whether this is [`ApiError::superseded`].
    pub fn is_superseded(&self) -> bool {
        self.status == StatusCode::CONFLICT && self.inner == Some(SUPERSEDED)
    }

    /// 500, with a message that hides the cause (which is logged instead).
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            "An internal error occurred.",
        )
    }

    /// The `CertificateNotFound` 404.
    pub fn cert_not_found(name: &str) -> Self {
        Self::not_found(
            "CertificateNotFound",
            format!("A certificate with (name/id) {name} was not found in this key vault."),
        )
    }

    /// The JSON body.
    pub fn body(&self) -> serde_json::Value {
        let mut err = json!({"code": self.code, "message": self.message});
        if let Some(inner) = self.inner {
            err["innererror"] = json!({"code": inner});
        }
        json!({"error": err})
    }
}

impl From<certvault_core::CoreError> for ApiError {
    fn from(e: certvault_core::CoreError) -> Self {
        match e {
            certvault_core::CoreError::BadParameter(m) => Self::bad(m),
            other => Self::bad(other.to_string()),
        }
    }
}

impl From<certvault_store::StoreError> for ApiError {
    fn from(e: certvault_store::StoreError) -> Self {
        use certvault_store::{Conflict, StoreError};
        match e {
            StoreError::Conflict(Conflict::OperationInProgress) => {
                Self::conflict("A certificate operation is already in progress for this certificate.")
            }
            StoreError::Conflict(Conflict::Deleted) => Self::conflict(
                "The certificate is currently in a deleted but recoverable state, and its name cannot be reused; \
                 either recover or purge it.",
            )
            .inner("ObjectIsDeletedButRecoverable"),
            StoreError::Conflict(Conflict::Exists) => Self::conflict("An object with this name already exists."),
            StoreError::Conflict(Conflict::Superseded) => Self::superseded(),
            StoreError::Conflict(_) => Self::conflict("The object is not in a state that allows this operation."),
            StoreError::NotFound => Self::not_found("NotFound", "The object was not found."),
            other => Self::internal(&other),
        }
    }
}

impl From<certvault_crypto::CryptoError> for ApiError {
    fn from(e: certvault_crypto::CryptoError) -> Self {
        // Crypto error messages are written to be client-safe.
        Self::bad(e.to_string())
    }
}

/// Result alias for handlers.
pub type ApiResult<T> = Result<T, ApiError>;
