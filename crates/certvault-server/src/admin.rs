//! The admin API under the reserved prefix `/admin/v1/` on the same listener. JSON in and out;
//! errors in the same shape as the Key Vault API. Here: master key rotation and the online
//! database backup; the rest in `admin_access.rs`, `admin_lifecycle.rs` and `audit.rs`.

use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Response, StatusCode, request::Parts};
use serde_json::json;

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::http::{Body, json as json_response};
use crate::masterkey::MasterKind;
use crate::state::AppState;

/// The reserved path prefix.
pub const PREFIX: &str = "/admin/";

/// Routes one authenticated admin request.
pub async fn dispatch(
    state: &Arc<AppState>,
    parts: &Parts,
    body: Bytes,
    caller: &Caller,
) -> ApiResult<Response<Body>> {
    caller.require_admin()?;
    let path = parts.uri.path().trim_end_matches('/');
    if let Some(r) = crate::admin_access::dispatch(state, parts, &body, path).await {
        return r;
    }
    if let Some(r) = crate::admin_lifecycle::dispatch(state, parts, &body, path).await {
        return r;
    }
    if let Some(r) = crate::audit::admin(state, parts, path, caller).await {
        return r;
    }
    match (path, &parts.method) {
        ("/admin/v1/backup", &Method::POST) => backup(state).await,
        ("/admin/v1/master-key/rotate", &Method::POST) => {
            #[derive(serde::Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Rotate {
                to: Option<String>,
            }
            let req: Rotate = if body.is_empty() {
                Rotate { to: None }
            } else {
                serde_json::from_slice(&body)
                    .map_err(|e| ApiError::bad(format!("Invalid request body: {e}")))?
            };
            let kind = match req.to.as_deref() {
                None => None,
                Some("file") => Some(MasterKind::File),
                Some("pkcs11") => {
                    if state.hsm.is_none() {
                        return Err(ApiError::bad(
                            "No PKCS#11 token is configured (--pkcs11-module), so the master key cannot move into one.",
                        ));
                    }
                    Some(MasterKind::Pkcs11)
                }
                Some(other) => {
                    return Err(ApiError::bad(format!(
                        "'to' must be 'file' or 'pkcs11', not '{}'.",
                        certvault_core::names::truncate(other, 20)
                    )));
                }
            };
            let started = state.clock.now();
            let vaults = state
                .rotate_master_key(kind)
                .await
                .map_err(|e| ApiError::internal(&e))?;
            let kind = match state.master.kind() {
                MasterKind::File => "file",
                MasterKind::Pkcs11 => "pkcs11",
            };
            tracing::info!(vaults, kind, "master key rotated");
            Ok(json_response(
                StatusCode::OK,
                &json!({"rotated_at": started, "vault_keys_rewrapped": vaults, "master_key": kind}),
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

/// `POST /admin/v1/backup`: an online, consistent copy of the database (SQLite's backup API),
/// answered as the body (`application/vnd.sqlite3`). The audit journal is flushed first, so
/// the copy holds every record acknowledged before the call. The master key is not in it:
/// keep `master.key` separately (docs/operations.md).
async fn backup(state: &Arc<AppState>) -> ApiResult<Response<Body>> {
    state
        .auditor
        .flush()
        .await
        .map_err(|e| ApiError::internal(&e))?;
    let Some(sqlite) = state.store.as_sqlite() else {
        return Err(ApiError::bad(
            "This server's store is PostgreSQL: back it up with pg_dump (docs/operations.md).",
        ));
    };
    let dir = sqlite
        .path()
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_default();
    let tmp = dir.join(format!("backup-{}.db.tmp", uuid::Uuid::new_v4().simple()));
    let result = sqlite.backup_to(tmp.clone()).await;
    let bytes = match result {
        Ok(_) => tokio::fs::read(&tmp)
            .await
            .map_err(|e| ApiError::internal(&e)),
        Err(e) => Err(ApiError::internal(&e)),
    };
    let _ = tokio::fs::remove_file(&tmp).await;
    let bytes = bytes?;
    tracing::info!(bytes = bytes.len(), "database backup taken");
    let mut r = Response::new(http_body_util::Full::new(Bytes::from(bytes)));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/vnd.sqlite3"),
    );
    Ok(r)
}
