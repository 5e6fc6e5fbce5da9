//! The audit trail on the real server: one record per request with who, what, which object and
//! the outcome; nothing secret in it; fail closed when it cannot be written; tampering with the
//! database is found by `POST /admin/v1/audit/verify`; master key rotation keeps it verifiable.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use reqwest::Method;
use serde_json::{Value, json};

struct Server {
    base: String,
    token: String,
    db: PathBuf,
    state: Arc<certvault_server::AppState>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    http: reqwest::Client,
}

fn opts(dir: &Path, sqlite_only: bool) -> certvault_server::ServeOptions {
    certvault_server::ServeOptions {
        max_body: 256 * 1024,
        database: if sqlite_only {
            None
        } else {
            certvault_testkit::test_database(dir)
        },
        ..certvault_server::ServeOptions::local(dir, "certvault.test")
    }
}

/// A server on the backend `CERTVAULT_TEST_DATABASE` names.
async fn start(dir: &Path) -> Server {
    start_on(dir, false).await
}

/// A server on SQLite whatever `CERTVAULT_TEST_DATABASE` says: for the tests of the audit
/// journal (a SQLite feature) and of tampering with the SQLite file directly.
async fn start_sqlite(dir: &Path) -> Server {
    start_on(dir, true).await
}

async fn start_on(dir: &Path, sqlite_only: bool) -> Server {
    let clock: certvault_core::clock::SharedClock = Arc::new(certvault_core::SystemClock);
    let started = certvault_server::start(&opts(dir, sqlite_only), clock)
        .await
        .expect("server starts");
    let port = started.addr.port();
    let ca = started.ca_path.clone();
    let token = std::fs::read_to_string(&started.token_path)
        .unwrap()
        .trim()
        .to_owned();
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
    let cert = reqwest::Certificate::from_pem(&std::fs::read(&ca).unwrap()).unwrap();
    let http = reqwest::Client::builder()
        .tls_certs_only([cert])
        .build()
        .unwrap();
    Server {
        base: format!("https://127.0.0.1:{port}"),
        token,
        db: dir.join("certvault.db"),
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

    /// A request with `token` (none when `None`); returns status, x-ms-request-id and body text.
    async fn raw(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, String, String) {
        let sep = if path.contains('?') { '&' } else { '?' };
        let mut req = self
            .http
            .request(method, format!("{}{path}{sep}api-version=7.4", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let id = resp
            .headers()
            .get("x-ms-request-id")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        (status, id, resp.text().await.unwrap())
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let (s, _, text) = self.raw(method, path, Some(&self.token), body).await;
        let v = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (s, v)
    }

    async fn create_cert(&self, name: &str) {
        let body = json!({"policy": {
            "key_props": {"kty": "EC", "crv": "P-256", "exportable": true},
            "secret_props": {"contentType": "application/x-pem-file"},
            "x509_props": {"subject": format!("CN={name}"), "key_usage": ["digitalSignature"]},
            "issuer": {"name": "Self"}}});
        let (s, v) = self
            .call(
                Method::POST,
                &format!("/certificates/{name}/create"),
                Some(body),
            )
            .await;
        assert_eq!(s, 202, "{v}");
    }

    /// Every record after seq `after`.
    async fn records_after(&self, after: i64) -> Vec<Value> {
        let (s, v) = self
            .call(
                Method::GET,
                &format!("/admin/v1/audit?after={after}&limit=1000"),
                None,
            )
            .await;
        assert_eq!(s, 200, "{v}");
        v["records"].as_array().unwrap().clone()
    }

    async fn last_seq(&self) -> i64 {
        let v = self.verify().await;
        v["head"]["seq"].as_i64().unwrap_or(0)
    }

    async fn verify(&self) -> Value {
        let (s, v) = self
            .call(Method::POST, "/admin/v1/audit/verify", None)
            .await;
        assert_eq!(s, 200, "{v}");
        v
    }

    /// A connection to the database file as an attacker would open it, with the append-only
    /// triggers dropped.
    fn tamper(&self) -> rusqlite::Connection {
        let c = rusqlite::Connection::open(&self.db).unwrap();
        c.busy_timeout(std::time::Duration::from_secs(10)).unwrap();
        c.execute_batch(
            "DROP TRIGGER IF EXISTS audit_log_no_update; DROP TRIGGER IF EXISTS audit_log_no_delete;",
        )
        .unwrap();
        c
    }
}

/// One request of the recording test and what its record must say.
struct Case {
    method: Method,
    path: String,
    token: Option<String>,
    body: Option<Value>,
    status: u16,
    operation: &'static str,
    object: Option<String>,
    principal: &'static str,
    outcome: &'static str,
}

impl Case {
    fn new(method: Method, path: &str, token: Option<&str>) -> Self {
        Self {
            method,
            path: path.to_owned(),
            token: token.map(str::to_owned),
            body: None,
            status: 0,
            operation: "",
            object: None,
            principal: "",
            outcome: "",
        }
    }

    fn body(mut self, body: Value) -> Self {
        self.body = Some(body);
        self
    }

    fn want(
        mut self,
        status: u16,
        operation: &'static str,
        object: Option<String>,
        principal: &'static str,
        outcome: &'static str,
    ) -> Self {
        self.status = status;
        self.operation = operation;
        self.object = object;
        self.principal = principal;
        self.outcome = outcome;
        self
    }
}

fn find<'a>(records: &'a [Value], request_id: &str) -> Vec<&'a Value> {
    records
        .iter()
        .filter(|r| r["request_id"] == request_id)
        .collect()
}

#[tokio::test]
async fn every_request_is_recorded_once_with_its_principal_operation_object_and_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(dir.path()).await;
    srv.create_cert("web").await;
    // a limited principal with certificate get only
    let (s, p) = srv
        .call(
            Method::POST,
            "/admin/v1/principals",
            Some(json!({"name": "bob"})),
        )
        .await;
    assert_eq!(s, 201, "{p}");
    let bob = p["token"]["token"].as_str().unwrap().to_owned();
    let (s, v) = srv
        .call(
            Method::PUT,
            "/admin/v1/vaults/default/access-policies/bob",
            Some(json!({"certificates": ["get"]})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let start_seq = srv.last_seq().await;

    let (_, cert) = srv.call(Method::GET, "/certificates/web/", None).await;
    let version = cert["id"]
        .as_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_owned();
    let admin = srv.token.clone();
    let v = version.as_str();
    let sign = json!({"alg": "ES256", "value": "47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU"});
    // (method, path, token, body) → (status, operation, object, principal, outcome)
    let cases = [
        Case::new(Method::GET, "/certificates/WEB", Some(&admin)).want(
            200,
            "certificates.get",
            Some(format!("certificates/web/{v}")),
            "admin",
            "ok",
        ),
        Case::new(Method::GET, "/secrets/web", Some(&admin)).want(
            200,
            "secrets.get",
            Some(format!("secrets/web/{v}")),
            "admin",
            "ok",
        ),
        Case::new(Method::GET, &format!("/secrets/web/{v}"), Some(&bob)).want(
            403,
            "secrets.get",
            Some(format!("secrets/web/{v}")),
            "bob",
            "denied",
        ),
        Case::new(Method::GET, "/certificates/web", Some(&bob)).want(
            200,
            "certificates.get",
            Some(format!("certificates/web/{v}")),
            "bob",
            "ok",
        ),
        Case::new(Method::POST, &format!("/keys/web/{v}/sign"), Some(&admin))
            .body(sign)
            .want(
                200,
                "keys.sign",
                Some(format!("keys/web/{v}")),
                "admin",
                "ok",
            ),
        Case::new(Method::GET, "/certificates/nope", Some(&admin)).want(
            404,
            "certificates.get",
            Some("certificates/nope".into()),
            "admin",
            "error",
        ),
        Case::new(Method::GET, "/certificates", None).want(
            401,
            "auth.invalid",
            None,
            "anonymous",
            "denied",
        ),
        Case::new(Method::GET, "/secrets/web", Some("cvt_not-a-token")).want(
            401,
            "auth.invalid",
            Some("secrets/web".into()),
            "anonymous",
            "denied",
        ),
        Case::new(Method::GET, "/admin/v1/audit", Some(&bob)).want(
            403,
            "admin.audit.list",
            None,
            "bob",
            "denied",
        ),
        Case::new(Method::GET, "/admin/v1/principals/bob", Some(&admin)).want(
            200,
            "admin.principals.get",
            Some("admin/principals/bob".into()),
            "admin",
            "ok",
        ),
    ];
    let mut secret_value = String::new();
    let mut ids = Vec::new();
    for c in &cases {
        let (s, id, text) = srv
            .raw(
                c.method.clone(),
                &c.path,
                c.token.as_deref(),
                c.body.clone(),
            )
            .await;
        assert_eq!(s, c.status, "{} {}: {text}", c.method, c.path);
        assert!(!id.is_empty());
        if c.operation == "secrets.get" && s == 200 {
            secret_value = serde_json::from_str::<Value>(&text).unwrap()["value"]
                .as_str()
                .unwrap()
                .to_owned();
        }
        ids.push(id);
    }
    let records = srv.records_after(start_seq).await;
    // the verify of last_seq(), the GET above and each case; the list request itself is
    // recorded after it answers
    assert_eq!(records.len(), 2 + cases.len(), "{records:#?}");
    for (c, id) in cases.iter().zip(&ids) {
        let found = find(&records, id);
        assert_eq!(found.len(), 1, "{id}: {found:?}");
        let r = found[0];
        assert_eq!(r["operation"], c.operation, "{r}");
        assert_eq!(r["principal"], c.principal, "{r}");
        assert_eq!(r["status"], c.status, "{r}");
        assert_eq!(r["outcome"], c.outcome, "{r}");
        assert_eq!(r["object"].as_str(), c.object.as_deref(), "{r}");
        assert_eq!(r["source"], "127.0.0.1", "{r}");
        assert_eq!(r["vault"].as_str().unwrap_or("default"), "default", "{r}");
        assert!(r["time"].as_str().unwrap().ends_with('Z'), "{r}");
    }
    let denied = find(&records, &ids[2])[0];
    assert_eq!(denied["detail"]["error"], "Forbidden", "{denied}");
    let anon = find(&records, &ids[7])[0];
    assert_eq!(anon["detail"]["attempted"], "secrets.get", "{anon}");

    // Nothing secret anywhere in the trail: not the secret's value (nor a line of it), not the
    // tokens.
    let (s, _, export) = srv
        .raw(Method::GET, "/admin/v1/audit/export", Some(&admin), None)
        .await;
    assert_eq!(s, 200);
    assert!(secret_value.contains("PRIVATE KEY"));
    for line in secret_value.lines().filter(|l| l.len() > 20) {
        assert!(!export.contains(line), "secret material in the audit trail");
    }
    for t in [&admin, &bob] {
        assert!(!export.contains(t.as_str()), "a token in the audit trail");
        assert!(!export.contains(&t[4..20]), "a token in the audit trail");
    }
    // JSON lines, in seq order, each a full record
    let lines: Vec<Value> = export
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines.len() >= records.len());
    assert!(
        lines
            .windows(2)
            .all(|w| w[0]["seq"].as_i64() < w[1]["seq"].as_i64())
    );
    assert!(lines.iter().all(|l| l["mac"].as_str().unwrap().len() == 64));

    // filters
    let (_, v) = srv
        .call(Method::GET, "/admin/v1/audit?principal=bob&limit=2", None)
        .await;
    let got = v["records"].as_array().unwrap();
    assert_eq!(got.len(), 2);
    assert!(got.iter().all(|r| r["principal"] == "bob"));
    let next = v["next"].as_i64().unwrap();
    let (_, v) = srv
        .call(
            Method::GET,
            &format!("/admin/v1/audit?principal=bob&after={next}"),
            None,
        )
        .await;
    assert_eq!(v["records"].as_array().unwrap().len(), 1);
    assert_eq!(v["next"], Value::Null);
    let (_, v) = srv
        .call(
            Method::GET,
            "/admin/v1/audit?object=secrets/web&operation=secrets.get",
            None,
        )
        .await;
    assert_eq!(v["records"].as_array().unwrap().len(), 2, "{v}");
    let (s, v) = srv
        .call(
            Method::GET,
            "/admin/v1/audit?from=2000-01-01T00:00:00Z&to=2000-01-02T00:00:00Z",
            None,
        )
        .await;
    assert_eq!((s, v["records"].as_array().unwrap().len()), (200, 0));
    let (s, _) = srv.call(Method::GET, "/admin/v1/audit?bogus=1", None).await;
    assert_eq!(s, 400);

    let v = srv.verify().await;
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["problem"], Value::Null);
    assert_eq!(v["records_checked"], v["head"]["seq"]);
    srv.stop().await;
}

#[tokio::test]
async fn records_wait_in_the_journal_while_the_audit_table_refuses_them() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start_sqlite(dir.path()).await;
    srv.create_cert("web").await;
    let before = srv.last_seq().await;

    // The table refuses inserts: requests are still recorded durably (in the journal), but the
    // trail cannot be read until the table takes them.
    let c = rusqlite::Connection::open(&srv.db).unwrap();
    c.execute_batch(
        "CREATE TRIGGER audit_block BEFORE INSERT ON audit_log BEGIN SELECT RAISE(ABORT, 'x'); END;",
    )
    .unwrap();
    for _ in 0..3 {
        let (s, _) = srv.call(Method::GET, "/secrets/web", None).await;
        assert_eq!(s, 200);
    }
    let (s, v) = srv.call(Method::GET, "/admin/v1/audit", None).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (500, Some("InternalError")),
        "{v}"
    );
    c.execute_batch("DROP TRIGGER audit_block;").unwrap();
    let v = srv.verify().await;
    assert_eq!(v["ok"], true, "{v}");
    // nothing was lost while the table refused: the three reads and the refused query, in order
    let recs = srv.records_after(before).await;
    let ops: Vec<&str> = recs
        .iter()
        .map(|r| r["operation"].as_str().unwrap())
        .collect();
    assert_eq!(
        ops[..5],
        [
            "admin.audit.verify",
            "secrets.get",
            "secrets.get",
            "secrets.get",
            "admin.audit.list"
        ],
        "{ops:?}"
    );
    assert_eq!(recs[0]["seq"].as_i64().unwrap(), before + 1);
    assert_eq!(recs[4]["status"], 500);
    srv.stop().await;
}

#[tokio::test]
async fn a_failing_audit_journal_fails_the_request_without_leaking_the_response() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start_sqlite(dir.path()).await;
    srv.create_cert("web").await;
    let (s, ok) = srv.call(Method::GET, "/secrets/web", None).await;
    assert_eq!(s, 200);
    let value = ok["value"].as_str().unwrap().to_owned();
    let before = srv.last_seq().await;

    // The journal stops taking records: every audited request fails, without its response.
    srv.state.auditor.stop().await;
    for (m, path) in [
        (Method::GET, "/secrets/web"),
        (Method::GET, "/certificates/web"),
        (Method::GET, "/admin/v1/audit"),
        (Method::GET, "/nothing/here"),
    ] {
        let (s, id, text) = srv.raw(m, path, Some(&srv.token), None).await;
        assert_eq!(s, 500, "{path}: {text}");
        assert!(!id.is_empty());
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["error"]["code"], "InternalError", "{v}");
        assert_eq!(v.as_object().unwrap().len(), 1, "only the error: {v}");
        assert!(!text.contains("PRIVATE KEY") && !text.contains(&value[40..80]));
    }
    // also for a request without a token
    let (s, _, _) = srv.raw(Method::GET, "/secrets/web", None, None).await;
    assert_eq!(s, 500);
    // /healthz is not recorded and keeps answering
    let r = srv
        .http
        .get(format!("{}/healthz", srv.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let dir_path = dir.path().to_owned();
    srv.stop().await;

    // after a restart the chain goes on without a gap: nothing was recorded while refused
    let srv = start_sqlite(&dir_path).await;
    let (s, again) = srv.call(Method::GET, "/secrets/web", None).await;
    assert_eq!((s, again["value"].as_str()), (200, Some(value.as_str())));
    let v = srv.verify().await;
    assert_eq!(v["ok"], true, "{v}");
    let recs = srv.records_after(before).await;
    assert_eq!(recs[0]["seq"].as_i64().unwrap(), before + 1);
    assert_eq!(recs[0]["operation"], "admin.audit.verify");
    assert_eq!(recs[1]["operation"], "secrets.get");
    srv.stop().await;
}

async fn some_traffic(srv: &Server, n: usize) {
    for i in 0..n {
        let path = if i % 2 == 0 {
            "/secrets/web"
        } else {
            "/certificates/web"
        };
        let (s, _) = srv.call(Method::GET, path, None).await;
        assert_eq!(s, 200);
    }
}

fn problem(v: &Value) -> (i64, String) {
    assert_eq!(v["ok"], false, "{v}");
    (
        v["problem"]["seq"].as_i64().unwrap(),
        v["problem"]["kind"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test]
async fn tampering_in_the_database_is_reported_with_the_record_and_kind() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start_sqlite(dir.path()).await;
    srv.create_cert("web").await;
    some_traffic(&srv, 12).await;
    assert_eq!(srv.verify().await["ok"], true);
    let c = srv.tamper();

    // a changed field, while the server runs
    let original: String = c
        .query_row("SELECT principal FROM audit_log WHERE seq = 5", [], |r| {
            r.get(0)
        })
        .unwrap();
    c.execute(
        "UPDATE audit_log SET principal = 'someone-else' WHERE seq = 5",
        [],
    )
    .unwrap();
    let v = srv.verify().await;
    assert_eq!(problem(&v), (5, "changed".into()));
    assert!(
        v["problem"]["detail"]
            .as_str()
            .unwrap()
            .contains("record 5"),
        "{v}"
    );
    assert_eq!(v["records_checked"], 4);
    c.execute(
        "UPDATE audit_log SET principal = ?1 WHERE seq = 5",
        [&original],
    )
    .unwrap();
    assert_eq!(srv.verify().await["ok"], true);

    // two records' contents swapped
    let swap = |a: i64, b: i64| {
        c.execute_batch(&format!(
            "DROP TABLE IF EXISTS temp.t;
             CREATE TEMP TABLE t AS SELECT * FROM audit_log WHERE seq IN ({a}, {b});
             UPDATE audit_log SET (time, request_id, principal, source, vault, object, operation,
                 status, outcome, detail, prev, mac) =
               (SELECT time, request_id, principal, source, vault, object, operation, status,
                   outcome, detail, prev, mac FROM t
                WHERE t.seq = CASE audit_log.seq WHEN {a} THEN {b} ELSE {a} END)
             WHERE seq IN ({a}, {b});"
        ))
        .unwrap();
    };
    swap(6, 9);
    assert_eq!(problem(&srv.verify().await), (6, "reordered".into()));
    swap(6, 9);
    assert_eq!(srv.verify().await["ok"], true);

    // a removed record in the middle; more requests do not hide it
    c.execute_batch(
        "CREATE TEMP TABLE saved AS SELECT * FROM audit_log WHERE seq = 7;
         DELETE FROM audit_log WHERE seq = 7;",
    )
    .unwrap();
    assert_eq!(problem(&srv.verify().await), (7, "removed".into()));
    some_traffic(&srv, 2).await;
    assert_eq!(problem(&srv.verify().await), (7, "removed".into()));
    c.execute_batch("INSERT INTO audit_log SELECT * FROM temp.saved;")
        .unwrap();
    assert_eq!(srv.verify().await["ok"], true);
    drop(c);

    // the last records removed from a stopped server's database: found after the restart
    let dir_path = dir.path().to_owned();
    srv.stop().await;
    let c = rusqlite::Connection::open(dir_path.join("certvault.db")).unwrap();
    let last: i64 = c
        .query_row("SELECT MAX(seq) FROM audit_log", [], |r| r.get(0))
        .unwrap();
    c.execute_batch("DROP TRIGGER IF EXISTS audit_log_no_delete;")
        .unwrap();
    c.execute("DELETE FROM audit_log WHERE seq > ?1", [last - 3])
        .unwrap();
    drop(c);
    let srv = start_sqlite(&dir_path).await;
    let v = srv.verify().await;
    assert_eq!(problem(&v), (last - 2, "truncated".into()), "{v}");
    // and the CLI-facing detail names the records
    assert!(
        v["problem"]["detail"]
            .as_str()
            .unwrap()
            .contains(&format!("records {} to {last}", last - 2)),
        "{v}"
    );
    // after more requests it is still reported (as records missing before the new ones)
    some_traffic(&srv, 2).await;
    assert_eq!(problem(&srv.verify().await), (last - 2, "removed".into()));
    srv.stop().await;
}

#[tokio::test]
async fn master_key_rotation_keeps_the_chain_verifiable() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start_sqlite(dir.path()).await;
    srv.create_cert("web").await;
    some_traffic(&srv, 5).await;
    let sealed_before: Vec<u8> = rusqlite::Connection::open(&srv.db)
        .unwrap()
        .query_row("SELECT value FROM meta WHERE key = 'audit_key'", [], |r| {
            r.get(0)
        })
        .unwrap();
    let (s, v) = srv
        .call(Method::POST, "/admin/v1/master-key/rotate", Some(json!({})))
        .await;
    assert_eq!(s, 200, "{v}");
    some_traffic(&srv, 5).await;
    let v = srv.verify().await;
    assert_eq!(v["ok"], true, "{v}");
    // the audit key was re-wrapped under the new master key (same key, new seal)
    let sealed_after: Vec<u8> = rusqlite::Connection::open(&srv.db)
        .unwrap()
        .query_row("SELECT value FROM meta WHERE key = 'audit_key'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_ne!(sealed_before, sealed_after);
    let rotate = srv.records_after(0).await;
    assert!(
        rotate
            .iter()
            .any(|r| r["operation"] == "admin.master-key.rotate"
                && r["object"] == "admin/master-key"
                && r["outcome"] == "ok")
    );
    let dir_path = dir.path().to_owned();
    srv.stop().await;
    // after a restart with the new master key the same chain continues and verifies
    let srv = start_sqlite(&dir_path).await;
    some_traffic(&srv, 3).await;
    let v = srv.verify().await;
    assert_eq!(v["ok"], true, "{v}");
    let checked = v["records_checked"].as_i64().unwrap();
    assert_eq!(Some(checked), v["head"]["seq"].as_i64());
    // every request is one record: create, 5 reads, rotate, 5 reads, verify, list, 3 reads
    assert_eq!(checked, 1 + 5 + 1 + 5 + 1 + 1 + 3);
    srv.stop().await;
}

#[tokio::test]
async fn background_actions_are_recorded_as_system() {
    use certvault_server::audit::Outcome;
    let dir = tempfile::tempdir().unwrap();
    let srv = start(dir.path()).await;
    srv.create_cert("web").await;
    let seq = srv
        .state
        .auditor
        .system(
            "certificates.renew",
            Some("default"),
            Some("certificates/web"),
            Outcome::Error,
            Some(json!({"step": "order", "error": "timeout"})),
        )
        .await
        .unwrap();
    assert_eq!(seq, 2);
    let recs = srv.records_after(1).await;
    let r = &recs[0];
    assert_eq!(
        (
            &r["principal"],
            &r["operation"],
            &r["object"],
            &r["outcome"]
        ),
        (
            &json!("system"),
            &json!("certificates.renew"),
            &json!("certificates/web"),
            &json!("error")
        )
    );
    assert_eq!(
        (&r["request_id"], &r["status"], &r["source"]),
        (&Value::Null, &Value::Null, &Value::Null)
    );
    assert_eq!(r["detail"]["step"], "order");
    assert_eq!(srv.verify().await["ok"], true);
    srv.stop().await;
}

#[tokio::test]
async fn concurrent_requests_get_exactly_one_record_each_in_one_chain() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Arc::new(start(dir.path()).await);
    srv.create_cert("web").await;
    let start_seq = srv.last_seq().await;
    let mut tasks = Vec::new();
    for t in 0..16 {
        let srv = srv.clone();
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..25 {
                let path = if (t + i) % 3 == 0 {
                    "/certificates/web"
                } else {
                    "/secrets/web"
                };
                let (s, id, _) = srv.raw(Method::GET, path, Some(&srv.token), None).await;
                assert_eq!(s, 200);
                ids.push(id);
            }
            ids
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.extend(t.await.unwrap());
    }
    let records = srv.records_after(start_seq + 1).await;
    assert_eq!(records.len(), ids.len());
    for id in &ids {
        assert_eq!(find(&records, id).len(), 1, "{id}");
    }
    let v = srv.verify().await;
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(
        v["records_checked"].as_i64().unwrap(),
        start_seq + 1 + 400 + 1
    );
    Arc::into_inner(srv).unwrap().stop().await;
}
