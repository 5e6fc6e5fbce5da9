//! Renewals that cannot run twice and cannot go unaudited, on the real server (SQLite, or
//! PostgreSQL with `CERTVAULT_TEST_DATABASE=postgres`) with the test clock:
//!
//! - two renewals that read the same current version (the engine's and one on demand, or two
//!   on demand) are held just before their write by the server's renewal gate (a test hook)
//!   and let through one after the other: the first adds a version, the second writes nothing
//!   — the engine finishes its item without a failure, retry or notification; a request gets
//!   409 in the Key Vault error shape;
//! - a renewal committed through the store whose process "crashed" before appending its audit
//!   record gets exactly one `certificates.autorenew` record at the next start.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use certvault_server::lifecycle::RenewalGate;
use certvault_server::state::AppState;
use certvault_store::{
    AuditFilter, AuditIntent, EventFilter, NewVersion, OperationRecord, RenewalGuard, Which,
};
use serde_json::{Value, json};

const DAY: i64 = 86_400;

struct Server {
    base: String,
    token: String,
    state: Arc<AppState>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    http: reqwest::Client,
}

async fn start(dir: &Path) -> Server {
    let opts = certvault_server::ServeOptions {
        database: certvault_testkit::test_database(dir),
        ..certvault_server::ServeOptions::local(dir, "certvault.test")
    };
    let clock: certvault_core::clock::SharedClock = Arc::new(certvault_core::TestClock::new());
    let started = certvault_server::start(&opts, clock)
        .await
        .expect("server starts");
    let base = format!("https://127.0.0.1:{}", started.addr.port());
    let token = std::fs::read_to_string(&started.token_path)
        .unwrap()
        .trim()
        .to_owned();
    let ca = std::fs::read(&started.ca_path).unwrap();
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
    let http = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&ca).unwrap()])
        .build()
        .unwrap();
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

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        call(&self.http, &self.base, &self.token, method, path, body).await
    }

    /// A self-signed certificate that renews itself at 80 % of its one-month life.
    async fn create(&self, cert: &str) -> String {
        let body = json!({"policy": {
            "key_props": {"kty": "EC", "crv": "P-256"},
            "secret_props": {"contentType": "application/x-pem-file"},
            "x509_props": {"subject": format!("CN={cert}.example.test"), "validity_months": 1},
            "issuer": {"name": "Self"},
            "lifetime_actions": [{"trigger": {"lifetime_percentage": 80},
                                  "action": {"action_type": "AutoRenew"}}]}});
        let (s, op) = self
            .call(
                reqwest::Method::POST,
                &format!("/certificates/{cert}/create"),
                Some(body),
            )
            .await;
        assert_eq!(s, 202, "{op}");
        self.current(cert).await
    }

    async fn current(&self, cert: &str) -> String {
        let (s, b) = self
            .call(
                reqwest::Method::GET,
                &format!("/certificates/{cert}/"),
                None,
            )
            .await;
        assert_eq!(s, 200, "{b}");
        b["id"]
            .as_str()
            .unwrap()
            .rsplit('/')
            .next()
            .unwrap()
            .to_owned()
    }

    async fn versions(&self, cert: &str) -> usize {
        let (s, v) = self
            .call(
                reqwest::Method::GET,
                &format!("/certificates/{cert}/versions"),
                None,
            )
            .await;
        assert_eq!(s, 200, "{v}");
        v["value"].as_array().unwrap().len()
    }

    async fn advance(&self, seconds: i64) -> i64 {
        let (s, v) = self
            .call(
                reqwest::Method::POST,
                "/admin/v1/test-clock/advance",
                Some(json!({"seconds": seconds})),
            )
            .await;
        assert_eq!(s, 200, "{v}");
        v["now"].as_i64().unwrap()
    }

    /// A renewal on demand, sent from a task of its own: (status, body).
    fn renew_in_background(&self, cert: &str) -> tokio::task::JoinHandle<(u16, Value)> {
        let (http, base, token) = (self.http.clone(), self.base.clone(), self.token.clone());
        let path = format!("/certificates/{cert}/renew");
        tokio::spawn(async move {
            call(
                &http,
                &base,
                &token,
                reqwest::Method::POST,
                &path,
                Some(json!({})),
            )
            .await
        })
    }

    /// The `certificates.autorenew` audit records.
    async fn autorenew_records(&self) -> Vec<Value> {
        self.state
            .auditor
            .records(
                AuditFilter {
                    operation: Some("certificates.autorenew".into()),
                    ..AuditFilter::default()
                },
                1000,
            )
            .await
            .unwrap()
            .into_iter()
            .map(|r| {
                assert_eq!(r.fields.principal, "system");
                json!({
                    "outcome": r.fields.outcome,
                    "object": r.fields.object,
                    "detail": r.fields.detail.as_deref().map(|d| serde_json::from_str::<Value>(d).unwrap()),
                })
            })
            .collect()
    }

    /// Events of the default vault of `kind`.
    async fn events(&self, kind: &str) -> usize {
        let vault = self.state.store.vault("default").await.unwrap().unwrap();
        self.state
            .store
            .events(
                vault.id,
                EventFilter {
                    kind: Some(kind.into()),
                    limit: 1000,
                    ..EventFilter::default()
                },
            )
            .await
            .unwrap()
            .len()
    }

    async fn cert_id(&self, cert: &str) -> (i64, i64) {
        let vault = self.state.store.vault("default").await.unwrap().unwrap();
        let c = self
            .state
            .store
            .certificate(vault.id, cert)
            .await
            .unwrap()
            .unwrap();
        (vault.id, c.id)
    }
}

async fn call(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let sep = if path.contains('?') { '&' } else { '?' };
    let mut req = http
        .request(method, format!("{base}{path}{sep}api-version=7.4"))
        .bearer_auth(token);
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

/// What a renewal commits — the new version `new` replacing `expected`, valid for 30 days
/// from now, with `audit` in the outbox — written through the store as another worker would.
async fn commit_renewal(
    state: &AppState,
    cert: &str,
    expected: &str,
    new: &str,
    audit: Option<AuditIntent>,
) -> Result<Option<i64>, certvault_store::StoreError> {
    let vault = state.store.vault("default").await.unwrap().unwrap();
    let (c, ver) = state
        .store
        .cert_version(vault.id, cert, false, Which::Latest)
        .await
        .unwrap()
        .unwrap();
    let now = state.clock.now();
    let mut record = ver.clone();
    record.version = new.to_owned();
    record.created = now;
    record.updated = now;
    record.nbf = Some(now - 600);
    record.exp = Some(now + 30 * DAY);
    let op = OperationRecord {
        cert_id: 0,
        request_id: "elsewhere".into(),
        version: new.to_owned(),
        issuer_name: "Self".into(),
        status: "completed".into(),
        status_details: String::new(),
        csr: None,
        error: None,
        cancellation_requested: false,
        created: now,
        updated: now,
    };
    let guard = RenewalGuard {
        expected: expected.to_owned(),
        audit,
    };
    state
        .store
        .renew_version(
            vault.id,
            cert,
            c.policy.clone(),
            now,
            NewVersion {
                record,
                operation: Some(op),
            },
            guard,
        )
        .await
        .map(|(_, _, outbox)| outbox)
}

async fn wait_for(what: &str, mut ok: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ok().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn an_engine_renewal_that_loses_the_race_finishes_its_item_without_a_failure() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(dir.path()).await;
    let v1 = srv.create("race").await;
    let (_, cert_id) = srv.cert_id("race").await;
    let gate = RenewalGate::closed();
    srv.state.lifecycle.set_renewal_gate(Some(gate.clone()));

    // The engine's AutoRenew falls due (80 % of a month, + jitter ≤ 1 %): it reads v1 and
    // waits at the gate, right before its write.
    srv.advance(27 * DAY).await;
    wait_for("the engine's renewal at the gate", async || {
        gate.waiting() == 1
    })
    .await;
    assert_eq!(srv.state.lifecycle.in_flight().0, 1);
    // Meanwhile another worker (a replica that took the item over) renews v1.
    let v2 = "0123456789abcdef0123456789abcdef".to_owned();
    commit_renewal(&srv.state, "race", &v1, &v2, None)
        .await
        .unwrap();
    // The engine's write finds v1 no longer current.
    gate.open();
    wait_for("the engine's item to finish", async || {
        srv.state.lifecycle.in_flight().0 == 0
    })
    .await;
    srv.state.lifecycle.set_renewal_gate(None);

    assert_eq!(
        srv.versions("race").await,
        2,
        "one renewal, one new version"
    );
    assert_eq!(srv.current("race").await, v2);
    assert_ne!(v1, v2);
    // No failure: no audit record of a failed (or any) automatic renewal, no renewal_failed
    // event, no retry planned: the item plans v2's own renewal (80 % of its life ahead).
    assert_eq!(srv.autorenew_records().await, Vec::<Value>::new());
    assert_eq!(srv.events("renewal_failed").await, 0);
    assert_eq!(srv.events("renewed").await, 1);
    let now = srv.state.clock.now();
    wait_for("the item planned for v2", async || {
        let job = srv
            .state
            .store
            .job("cert", &cert_id.to_string())
            .await
            .unwrap();
        job.is_some_and(|j| j.due > now + 20 * DAY && j.attempts == 0)
    })
    .await;
    let view = srv
        .state
        .store
        .lifecycle_view(cert_id)
        .await
        .unwrap()
        .unwrap();
    let cur = view.current.unwrap();
    assert_eq!(cur.version, v2);
    assert!(
        !cur.marks.iter().any(|m| m.starts_with("retry:")),
        "{:?}",
        cur.marks
    );

    // Without a competitor the engine renews v2, and its record reaches the chain at once
    // from the outbox, naming the outbox row.
    srv.advance(27 * DAY).await;
    wait_for("the engine's renewal of v2", async || {
        srv.versions("race").await == 3
    })
    .await;
    let v3 = srv.current("race").await;
    wait_for("the renewal's audit record", async || {
        srv.autorenew_records().await.len() == 1
    })
    .await;
    let recs = srv.autorenew_records().await;
    assert_eq!(recs[0]["outcome"], "ok");
    assert_eq!(recs[0]["object"], "certificates/race");
    let detail = &recs[0]["detail"];
    assert_eq!(detail["previous"], v2.as_str(), "{detail}");
    assert_eq!(detail["version"], v3.as_str(), "{detail}");
    assert_eq!(detail["status"], "completed", "{detail}");
    assert!(detail["outbox"].as_i64().unwrap() > 0, "{detail}");
    assert_eq!(srv.state.store.audit_outbox_depth().await.unwrap(), 0);
    assert_eq!(srv.events("renewal_failed").await, 0);
    assert_eq!(srv.state.auditor.verify().await.unwrap().problem, None);
    srv.stop().await;
}

#[tokio::test]
async fn of_two_renewals_on_demand_of_one_version_the_second_gets_409() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(dir.path()).await;
    let v1 = srv.create("twice").await;
    let gate = RenewalGate::closed();
    srv.state.lifecycle.set_renewal_gate(Some(gate.clone()));
    let first = srv.renew_in_background("twice");
    wait_for("the first renewal at the gate", async || {
        gate.waiting() == 1
    })
    .await;
    let second = srv.renew_in_background("twice");
    wait_for("the second renewal at the gate", async || {
        gate.waiting() == 2
    })
    .await;
    gate.open();
    let (s1, b1) = first.await.unwrap();
    let (s2, b2) = second.await.unwrap();
    srv.state.lifecycle.set_renewal_gate(None);
    assert_eq!(s1, 201, "{b1}");
    assert_eq!(s2, 409, "{b2}");
    assert_eq!(b2["error"]["code"], "Conflict", "{b2}");
    assert_eq!(
        b2["error"]["innererror"]["code"], "CertificateRenewedConcurrently",
        "{b2}"
    );
    assert!(b2["error"]["message"].as_str().unwrap().contains("renewed"));
    assert_eq!(srv.versions("twice").await, 2);
    assert_eq!(srv.current("twice").await, b1["version"].as_str().unwrap());
    assert_ne!(srv.current("twice").await, v1);
    assert_eq!(srv.events("renewed").await, 1);
    // Nothing of the loser is pending either: a third renewal goes through.
    let (s, b) = srv
        .call(
            reqwest::Method::POST,
            "/certificates/twice/renew",
            Some(json!({})),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    assert_eq!(srv.versions("twice").await, 3);
    srv.stop().await;
}

#[tokio::test]
async fn a_renewal_committed_before_a_crash_is_audited_once_at_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(dir.path()).await;
    let v1 = srv.create("crash").await;
    let state = srv.state.clone();
    // What the engine commits for a renewal — the new version and its audit record in the
    // outbox, in one transaction — written through the store; the process then "dies"
    // before appending the record (the server is stopped without draining).
    let now = state.clock.now();
    let v2 = "0123456789abcdef0123456789abcdef".to_owned();
    let audit = AuditIntent {
        operation: "certificates.autorenew".into(),
        vault: Some("default".into()),
        object: Some("certificates/crash".into()),
        outcome: "ok".into(),
        detail: Some(json!({"previous": v1, "version": v2, "status": "completed"}).to_string()),
        // This replica (same data directory, same owner id after the restart), whose
        // lease on the row has not ended.
        owner: state.lifecycle.owner.clone(),
        lease_until: now + 300,
    };
    let outbox = commit_renewal(&state, "crash", &v1, &v2, Some(audit))
        .await
        .unwrap();
    let outbox = outbox.unwrap();
    assert_eq!(srv.current("crash").await, v2);
    assert_eq!(srv.autorenew_records().await.len(), 0);
    drop(state);
    srv.stop().await;

    // The next start appends it, once, naming the outbox row.
    let srv = start(dir.path()).await;
    let recs = srv.autorenew_records().await;
    assert_eq!(recs.len(), 1, "{recs:?}");
    assert_eq!(recs[0]["outcome"], "ok");
    assert_eq!(recs[0]["object"], "certificates/crash");
    assert_eq!(recs[0]["detail"]["outbox"], outbox);
    assert_eq!(recs[0]["detail"]["version"], v2.as_str());
    assert_eq!(recs[0]["detail"]["committed"], now);
    assert_eq!(srv.state.store.audit_outbox_depth().await.unwrap(), 0);
    srv.stop().await;
    // And not again at the start after that.
    let srv = start(dir.path()).await;
    assert_eq!(srv.autorenew_records().await.len(), 1);
    assert_eq!(srv.state.auditor.verify().await.unwrap().problem, None);
    srv.stop().await;
}
