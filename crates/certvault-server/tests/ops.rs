//! Operations endpoints against the real server (TLS listener, SQLite store, data directory):
//! `/healthz`, `/readyz`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::sync::Arc;

use serde_json::Value;

struct Server {
    base: String,
    token: String,
    state: Arc<certvault_server::AppState>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    http: reqwest::Client,
}

async fn start(dir: &Path) -> Server {
    let clock: certvault_core::clock::SharedClock = Arc::new(certvault_core::SystemClock);
    let opts = certvault_server::ServeOptions::local(dir, "certvault.test");
    let started = certvault_server::start(&opts, clock)
        .await
        .expect("server starts");
    let base = format!("https://127.0.0.1:{}", started.addr.port());
    let token = std::fs::read_to_string(&started.token_path)
        .unwrap()
        .trim()
        .to_owned();
    let cert = reqwest::Certificate::from_pem(&std::fs::read(&started.ca_path).unwrap()).unwrap();
    let http = reqwest::Client::builder()
        .tls_certs_only([cert])
        .build()
        .unwrap();
    let state = started.state.clone();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        started
            .run(async {
                let _ = rx.await;
            })
            .await
            .unwrap();
    });
    Server {
        base,
        token,
        state,
        stop: Some(tx),
        task: Some(task),
        http,
    }
}

impl Server {
    async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.unwrap();
        }
    }

    async fn get(&self, path: &str, auth: bool) -> (u16, String) {
        let mut req = self.http.get(format!("{}{path}", self.base));
        if auth {
            req = req.bearer_auth(&self.token);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.text().await.unwrap())
    }

    async fn audit_count(&self) -> usize {
        let (s, body) = self.get("/admin/v1/audit?limit=1000", true).await;
        assert_eq!(s, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        v["records"].as_array().map_or(0, Vec::len)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_and_readyz_answer_without_a_token_and_are_not_audited() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    let (st, body) = s.get("/healthz", false).await;
    assert_eq!((st, body.as_str()), (200, "ok\n"));
    let (st, body) = s.get("/readyz", false).await;
    assert_eq!(st, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], "ready");
    for c in [
        "database",
        "migrations",
        "master_key",
        "audit_journal",
        "shutdown",
    ] {
        assert_eq!(v["checks"][c]["ok"], true, "{c}: {body}");
    }
    let before = s.audit_count().await;
    for _ in 0..3 {
        assert_eq!(s.get("/readyz", false).await.0, 200);
        assert_eq!(s.get("/healthz", false).await.0, 200);
    }
    // the audit query itself is one record; the probes add none
    assert_eq!(s.audit_count().await, before + 1);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_naming_the_failed_check() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    assert_eq!(s.get("/readyz", false).await.0, 200);
    // The audit journal stops: audited requests would fail, so the server is not ready.
    s.state.auditor.stop().await;
    let (st, body) = s.get("/readyz", false).await;
    assert_eq!(st, 503, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], "not ready");
    assert_eq!(v["checks"]["audit_journal"]["ok"], false, "{body}");
    assert_eq!(v["checks"]["database"]["ok"], true, "{body}");
    // The store closes: the database check fails too.
    s.state.store.close();
    let (st, body) = s.get("/readyz", false).await;
    assert_eq!(st, 503, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["checks"]["database"]["ok"], false, "{body}");
    assert_eq!(
        v["checks"]["database"]["detail"], "the store is closed",
        "{body}"
    );
    // /healthz still says the process is up.
    assert_eq!(s.get("/healthz", false).await.0, 200);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_refuses_a_database_whose_schema_is_behind() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    let db = dir.path().join("certvault.db");
    let conn = rusqlite::Connection::open(&db).unwrap();
    let v: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    conn.pragma_update(None, "user_version", v - 1).unwrap();
    drop(conn);
    let (st, body) = s.get("/readyz", false).await;
    assert_eq!(st, 503, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["checks"]["migrations"]["ok"], false, "{body}");
    assert_eq!(v["checks"]["database"]["ok"], true, "{body}");
    s.stop().await;
}
