//! `certvault admin migrate`: a server's SQLite data directory moved into PostgreSQL (the
//! real binary against a private PostgreSQL from certvault-testkit), then served from there
//! with the same master key: the same certificate, secret and audit chain.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::sync::Arc;

use serde_json::{Value, json};

struct Server {
    base: String,
    token: String,
    http: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

async fn start(dir: &Path, database: Option<String>) -> Server {
    let clock: certvault_core::clock::SharedClock = Arc::new(certvault_core::SystemClock);
    let opts = certvault_server::ServeOptions {
        database,
        ..certvault_server::ServeOptions::local(dir, "certvault.test")
    };
    let started = certvault_server::start(&opts, clock)
        .await
        .expect("server starts");
    let base = format!("https://127.0.0.1:{}", started.addr.port());
    let token = std::fs::read_to_string(&started.token_path)
        .unwrap()
        .trim()
        .to_owned();
    let ca = reqwest::Certificate::from_pem(&std::fs::read(&started.ca_path).unwrap()).unwrap();
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
        http: reqwest::Client::builder()
            .tls_certs_only([ca])
            .build()
            .unwrap(),
        stop: Some(tx),
        task: Some(task),
    }
}

impl Server {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let sep = if path.contains('?') { '&' } else { '?' };
        let mut req = self
            .http
            .request(method, format!("{}{path}{sep}api-version=7.4", self.base))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        let v = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap()
        };
        (status, v)
    }

    async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.unwrap();
        }
    }
}

fn migrate(dir: &Path, url: &str) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_certvault"))
        .args(["admin", "migrate", "--from-sqlite"])
        .arg(dir)
        .args(["--to", url])
        .output()
        .unwrap()
}

#[tokio::test]
async fn a_sqlite_data_directory_moves_to_postgres_and_serves_the_same_objects() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(dir.path(), None).await;
    let body = json!({"policy": {
        "key_props": {"kty": "EC", "crv": "P-256", "exportable": true},
        "secret_props": {"contentType": "application/x-pem-file"},
        "x509_props": {"subject": "CN=web.example.test"},
        "issuer": {"name": "Self"}}});
    let (s, op) = srv
        .call(
            reqwest::Method::POST,
            "/certificates/web/create",
            Some(body),
        )
        .await;
    assert_eq!(s, 202, "{op}");
    let (s, secret) = srv.call(reqwest::Method::GET, "/secrets/web/", None).await;
    assert_eq!(s, 200, "{secret}");
    let (s, cert) = srv
        .call(reqwest::Method::GET, "/certificates/web/", None)
        .await;
    assert_eq!(s, 200, "{cert}");
    srv.stop().await;

    let pg = tokio::task::spawn_blocking(certvault_testkit::Postgres::start)
        .await
        .unwrap();
    let url = pg.database();
    let out = migrate(dir.path(), &url);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("copied "), "{stdout}");

    // Served from PostgreSQL with the same master key: the same objects, the chain verifies.
    let srv = start(dir.path(), Some(url.clone())).await;
    let (s, secret2) = srv.call(reqwest::Method::GET, "/secrets/web/", None).await;
    assert_eq!(s, 200, "{secret2}");
    assert_eq!(secret2["value"], secret["value"]);
    assert!(
        secret2["value"]
            .as_str()
            .unwrap()
            .contains("BEGIN PRIVATE KEY")
    );
    let (_, cert2) = srv
        .call(reqwest::Method::GET, "/certificates/web/", None)
        .await;
    assert_eq!(cert2["cer"], cert["cer"]);
    // The same version (ids repeat the origin, whose port is new).
    let version = |v: &Value| {
        v["id"]
            .as_str()
            .unwrap()
            .rsplit('/')
            .next()
            .unwrap()
            .to_owned()
    };
    assert_eq!(version(&cert2), version(&cert));
    let (s, v) = srv
        .call(reqwest::Method::POST, "/admin/v1/audit/verify", None)
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["ok"], true, "{v}");
    assert!(v["records_checked"].as_u64().unwrap() >= 3, "{v}");
    srv.stop().await;

    // A second migration into the now used database is refused.
    let out = migrate(dir.path(), &url);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already holds certvault data"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(pg);
}
