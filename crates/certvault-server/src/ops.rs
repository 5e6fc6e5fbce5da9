//! Operations endpoints on the main listener: `/healthz` (the process answers), `/readyz`
//! (the server can do its work: database, schema, master key, audit journal) and
//! `/openapi.json` (the admin API's description). They are unauthenticated, cheap and not
//! recorded in the audit trail.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;
use serde_json::{Value, json};

use crate::http::Body;
use crate::state::AppState;

/// `GET /healthz`: the process is up and its listener answers.
pub fn healthz() -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from_static(b"ok\n")));
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// One check of `/readyz`.
fn check(ok: bool, detail: impl Into<String>) -> Value {
    json!({"ok": ok, "detail": detail.into()})
}

/// `GET /readyz`: 200 when every check passes, else 503; the body names each check
/// (`database`, `migrations`, `master_key`, `audit_journal`, `shutdown`) with `ok` and a
/// detail. Never a secret: details are fixed texts, error messages of the store and versions.
pub async fn readyz(state: &Arc<AppState>) -> Response<Body> {
    let mut checks = serde_json::Map::new();
    let mut ready = true;
    match state.store.health().await {
        Ok(h) => {
            ready &= h.writer;
            checks.insert(
                "database".into(),
                check(
                    h.writer,
                    if h.writer {
                        "reachable"
                    } else {
                        "the store is closed"
                    },
                ),
            );
            let migrated = h.schema_version == h.schema_expected;
            ready &= migrated;
            checks.insert(
                "migrations".into(),
                check(
                    migrated,
                    format!(
                        "schema version {} of {}",
                        h.schema_version, h.schema_expected
                    ),
                ),
            );
        }
        Err(e) => {
            ready = false;
            checks.insert(
                "database".into(),
                check(false, format!("not reachable: {e}")),
            );
            checks.insert(
                "migrations".into(),
                check(false, "unknown: the database is not reachable"),
            );
        }
    }
    let master = master_key_check(state).await;
    ready &= master.is_ok();
    checks.insert(
        "master_key".into(),
        match master {
            Ok(()) => check(true, "loaded; it opens the database's check value"),
            Err(why) => check(false, why),
        },
    );
    let audit = state.auditor.is_running();
    ready &= audit;
    checks.insert(
        "audit_journal".into(),
        check(
            audit,
            if audit {
                "running"
            } else {
                "not running: audited requests fail"
            },
        ),
    );
    let stopping = state.is_shutting_down();
    ready &= !stopping;
    checks.insert(
        "shutdown".into(),
        check(
            !stopping,
            if stopping { "shutting down" } else { "serving" },
        ),
    );
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut r = crate::http::json(
        status,
        &json!({"status": if ready { "ready" } else { "not ready" }, "checks": checks}),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// The master key opens the check value the database keeps (on a blocking thread: a PKCS#11
/// master key asks the token).
async fn master_key_check(state: &Arc<AppState>) -> Result<(), String> {
    let sealed = match state.store.meta("master_check").await {
        Ok(Some(s)) => s,
        Ok(None) => return Err("the database holds no master key check value".into()),
        Err(e) => return Err(format!("unknown: {e}")),
    };
    let st = state.clone();
    let opened = tokio::task::spawn_blocking(move || {
        st.master
            .open(crate::masterkey::MASTER_CHECK_AAD, &sealed)
            .map(|_| ())
    })
    .await;
    match opened {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("the master key does not open the check value: {e}")),
        Err(e) => Err(format!("the check failed: {e}")),
    }
}

/// `GET /openapi.json`: the admin API's OpenAPI 3.1 document (rendered once per process).
pub fn openapi() -> Response<Body> {
    static DOC: std::sync::LazyLock<Bytes> =
        std::sync::LazyLock::new(|| Bytes::from(crate::openapi::document_text()));
    let mut r = Response::new(Full::new(DOC.clone()));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    r
}
