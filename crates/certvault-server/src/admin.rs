//! The admin API under the reserved prefix `/admin/v1/` on the same listener. JSON in and out;
//! errors in the same shape as the Key Vault API. Today: master key rotation.

use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Response, StatusCode, request::Parts};
use serde_json::json;

use crate::error::{ApiError, ApiResult};
use crate::http::{Body, json as json_response};
use crate::state::AppState;

/// The reserved path prefix.
pub const PREFIX: &str = "/admin/";

/// Routes one authenticated admin request.
pub async fn dispatch(
    state: &Arc<AppState>,
    parts: &Parts,
    _body: Bytes,
) -> ApiResult<Response<Body>> {
    let path = parts.uri.path().trim_end_matches('/');
    match (path, &parts.method) {
        ("/admin/v1/master-key/rotate", &Method::POST) => {
            let started = state.clock.now();
            let vaults = state
                .rotate_master_key()
                .await
                .map_err(|e| ApiError::internal(&e))?;
            tracing::info!(vaults, "master key rotated");
            Ok(json_response(
                StatusCode::OK,
                &json!({"rotated_at": started, "vault_keys_rewrapped": vaults}),
            ))
        }
        _ => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!(
                "No admin operation {} {}.",
                parts.method,
                certvault_core::names::truncate(path, 120)
            ),
        )),
    }
}
