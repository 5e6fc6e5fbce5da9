//! Replicas: several `certvault serve` processes (the real binary) on one PostgreSQL (a private
//! server from certvault-testkit) and one master key.
//!
//! - Three replicas started at the same instant on an empty database agree on one set of
//!   first-start singletons (one `default` vault, one admin principal, one audit key).
//! - 1,000 certificates fall due at once (test clock moved on every replica); one replica is
//!   killed with SIGKILL half-way; the others take its leased items over after the lease
//!   (`--lease-seconds 10`): every certificate gets exactly one new version, every renewal
//!   event reaches the webhook, and the audit chain verifies.
//! - PostgreSQL stopped and started again (same port and data directory) under a write load:
//!   `/readyz` turns not ready while it is down and ready again without restarting certvault;
//!   every write answered 2xx is there afterwards.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOKEN: &str = "cvt_replica-test-admin-token-0123456789abcdef";

struct Replica {
    child: Option<Child>,
    base: String,
    http: reqwest::Client,
    log: PathBuf,
}

impl Replica {
    /// Starts `certvault serve` on `url` with its own data directory holding `master_hex`.
    fn spawn(root: &Path, i: usize, url: &str, master_hex: &str) -> Self {
        use std::os::unix::fs::PermissionsExt;
        let dir = root.join(format!("replica{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        for (name, text) in [("master.key", master_hex), ("admin.token", TOKEN)] {
            let p = dir.join(name);
            std::fs::write(&p, format!("{text}\n")).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let port = certvault_testkit::free_port();
        let log = root.join(format!("replica{i}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_certvault"))
            .arg("serve")
            .arg("--data-dir")
            .arg(&dir)
            .args(["--database", url])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args([
                "--test-clock",
                "--lease-seconds",
                "10",
                "--notice-days",
                "1",
            ])
            .env("CERTVAULT_ALLOW_TEST_CLOCK", "1")
            .env("CERTVAULT_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        Self {
            child: Some(child),
            base: format!("https://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until `/readyz` answers 200 (the TLS CA is in the data directory once started).
    async fn ready(&mut self, dir: &Path) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let ca_path = dir.join("tls").join("ca.pem");
        let mut last = String::new();
        loop {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(st)) = c.try_wait()
            {
                panic!("replica exited with {st}: {}", self.log());
            }
            if let Ok(pem) = std::fs::read(&ca_path)
                && let Ok(ca) = reqwest::Certificate::from_pem(&pem)
            {
                let http = reqwest::Client::builder()
                    .tls_certs_only([ca])
                    .timeout(Duration::from_secs(30))
                    .build()
                    .unwrap();
                match http.get(format!("{}/readyz", self.base)).send().await {
                    Ok(r) if r.status() == 200 => {
                        self.http = http;
                        return;
                    }
                    Ok(r) => {
                        last = format!("{}: {}", r.status(), r.text().await.unwrap_or_default())
                    }
                    Err(e) => last = format!("{e:?}"),
                }
            }
            assert!(
                Instant::now() < deadline,
                "replica not ready ({last}): {}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn readyz(&self) -> Option<u16> {
        let r = self
            .http
            .get(format!("{}/readyz", self.base))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .ok()?;
        Some(r.status().as_u16())
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let sep = if path.contains('?') { '&' } else { '?' };
        let mut req = self
            .http
            .request(method, format!("{}{path}{sep}api-version=7.4", self.base))
            .bearer_auth(TOKEN);
        if let Some(b) = body {
            req = req.json(&b);
        }
        match req.send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let text = resp.text().await.unwrap_or_default();
                (status, serde_json::from_str(&text).unwrap_or(Value::Null))
            }
            Err(e) => (0, json!({"transport": e.to_string()})),
        }
    }

    async fn advance(&self, seconds: i64) {
        let (s, v) = self
            .call(
                reqwest::Method::POST,
                "/admin/v1/test-clock/advance",
                Some(json!({"seconds": seconds})),
            )
            .await;
        assert_eq!(s, 200, "{v}");
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill(); // SIGKILL
            let _ = c.wait();
        }
    }

    /// SIGTERM, then waits for the graceful shutdown.
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(40);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
    }
}

fn master_hex() -> String {
    certvault_testkit::random_bytes(32)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Starts `n` replicas at the same instant on `url` and waits until all are ready.
async fn replicas(root: &Path, n: usize, url: &str) -> Vec<Replica> {
    let master = master_hex();
    let mut rs: Vec<Replica> = (0..n)
        .map(|i| Replica::spawn(root, i, url, &master))
        .collect();
    for (i, r) in rs.iter_mut().enumerate() {
        r.ready(&root.join(format!("replica{i}"))).await;
    }
    rs
}

fn db_name(url: &str) -> String {
    url.rsplit('/').next().unwrap().to_owned()
}

fn sql(pg: &certvault_testkit::Postgres, db: &str, q: &str) -> String {
    pg.psql(db, q).unwrap_or_else(|e| panic!("{q}: {e}"))
}

/// A webhook receiver on loopback: records the JSON body of every POST.
async fn webhook() -> (String, Arc<Mutex<Vec<Value>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let got: Arc<Mutex<Vec<Value>>> = Arc::default();
    let sink = got.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let sink = sink.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    // one request: headers, then Content-Length bytes of body
                    let head_end = loop {
                        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break p + 4;
                        }
                        let mut chunk = [0u8; 8192];
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    while buf.len() < head_end + len {
                        let mut chunk = [0u8; 8192];
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let body: Vec<u8> = buf.drain(..head_end + len).skip(head_end).collect();
                    if let Ok(v) = serde_json::from_slice::<Value>(&body) {
                        sink.lock().unwrap().push(v);
                    }
                    if sock
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    (url, got)
}

fn renewing_policy(i: usize) -> Value {
    json!({"policy": {
        "key_props": {"kty": "EC", "crv": "P-256", "exportable": true},
        "secret_props": {"contentType": "application/x-pem-file"},
        "x509_props": {"subject": format!("CN=c{i}.example.test"), "validity_months": 12},
        "lifetime_actions": [{"trigger": {"lifetime_percentage": 80},
                              "action": {"action_type": "AutoRenew"}}],
        "issuer": {"name": "Self"}}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_renew_a_thousand_certificates_once_each_despite_a_sigkill() {
    const N: usize = 1000;
    let pg = tokio::task::spawn_blocking(certvault_testkit::Postgres::start)
        .await
        .unwrap();
    let url = pg.database();
    let db = db_name(&url);
    let root = tempfile::tempdir().unwrap();
    let mut rs = replicas(root.path(), 3, &url).await;

    // concurrent first start: one of every singleton, and all replicas use the same ones
    assert_eq!(sql(&pg, &db, "SELECT count(*) FROM vaults"), "1");
    assert_eq!(
        sql(
            &pg,
            &db,
            "SELECT count(*) FROM principals WHERE name = 'admin'"
        ),
        "1"
    );
    assert_eq!(
        sql(
            &pg,
            &db,
            "SELECT count(*) FROM meta WHERE key IN ('audit_key', 'backup_key', 'master_check')"
        ),
        "3"
    );
    for r in &rs {
        assert!(
            r.log().contains("owner="),
            "owner id not logged: {}",
            r.log()
        );
    }

    let (hook, received) = webhook().await;
    let (s, v) = rs[0]
        .call(
            reqwest::Method::POST,
            "/admin/v1/vaults/default/channels",
            Some(json!({"name": "hook", "type": "webhook", "url": hook})),
        )
        .await;
    assert_eq!(s, 201, "{v}");

    // 1,000 certificates through all three replicas (the channel is seen by all of them:
    // every issue event gets a delivery)
    let rs_ref = &rs;
    let mut next = 0usize;
    while next < N {
        let batch: Vec<usize> = (next..(next + 48).min(N)).collect();
        next += batch.len();
        let calls = batch.iter().map(|&i| async move {
            let r = &rs_ref[i % 3];
            let (s, v) = r
                .call(
                    reqwest::Method::POST,
                    &format!("/certificates/c{i}/create"),
                    Some(renewing_policy(i)),
                )
                .await;
            assert_eq!(s, 202, "c{i}: {v}");
        });
        futures_join_all(calls).await;
    }
    assert_eq!(
        sql(&pg, &db, "SELECT count(*) FROM versions"),
        N.to_string()
    );

    // every certificate falls due at once: 330 days on (80 % of 12 months is day 292)
    for r in &rs {
        r.advance(330 * 86_400).await;
    }
    let renewed = |pg: &certvault_testkit::Postgres| -> usize {
        sql(
            pg,
            &db,
            "SELECT count(*) FROM (SELECT cert_id FROM versions GROUP BY cert_id \
             HAVING count(*) >= 2) x",
        )
        .parse()
        .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(300);
    let half = loop {
        let half = renewed(&pg);
        if half >= N / 2 {
            break half;
        }
        assert!(Instant::now() < deadline, "renewals stalled at {half}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        half < N,
        "all renewed before the kill; the test proves nothing"
    );
    let leased_to_victim = sql(
        &pg,
        &db,
        "SELECT count(*) FROM jobs WHERE lease_owner IS NOT NULL",
    );
    rs[2].kill();
    eprintln!("killed replica 2 with {half} renewed, {leased_to_victim} items leased");

    // the survivors take the dead replica's items after the lease (server clock seconds)
    tokio::time::sleep(Duration::from_secs(1)).await;
    for r in &rs[..2] {
        r.advance(15).await;
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    while renewed(&pg) < N {
        assert!(
            Instant::now() < deadline,
            "only {} of {N} renewed; replica 0 log: {}",
            renewed(&pg),
            rs[0].log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // no certificate gets two new versions, even once everything settled
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        sql(
            &pg,
            &db,
            "SELECT count(*) FROM (SELECT cert_id FROM versions GROUP BY cert_id \
             HAVING count(*) <> 2) x"
        ),
        "0"
    );
    assert_eq!(
        sql(&pg, &db, "SELECT count(*) FROM versions"),
        (2 * N).to_string()
    );
    assert_eq!(
        sql(
            &pg,
            &db,
            "SELECT count(*) FROM events WHERE kind = 'renewed'"
        ),
        N.to_string()
    );

    // no notification lost: every renewal event reached the webhook (a delivery the killed
    // replica had in flight may arrive twice: at least once)
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let names: HashSet<String> = received
            .lock()
            .unwrap()
            .iter()
            .filter(|v| v["event_type"] == "renewed")
            .filter_map(|v| v["certificate_name"].as_str().map(str::to_owned))
            .collect();
        if names.len() == N {
            break;
        }
        if Instant::now() > deadline {
            panic!(
                "{} of {N} renewal notifications received; deliveries: {}",
                names.len(),
                sql(
                    &pg,
                    &db,
                    "SELECT status, count(*) FROM deliveries GROUP BY status"
                )
            );
        }
        // deliveries the dead replica leased come back after their lease
        for r in &rs[..2] {
            r.advance(15).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(
        sql(
            &pg,
            &db,
            "SELECT count(*) FROM deliveries WHERE status <> 'delivered'"
        ),
        "0"
    );

    // one audit chain, appended by three processes, verifies
    let (s, v) = rs[1]
        .call(reqwest::Method::POST, "/admin/v1/audit/verify", None)
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["ok"], true, "{v}");
    // Every renewal is recorded: its record is committed with the version (audit outbox);
    // the killed replica's rows are appended by a survivor once their lease ended. At least
    // once: a row appended but not yet deleted at the kill is appended again under the same
    // outbox id, so the records name every renewal's outbox row, each renewal once or more.
    let deadline = Instant::now() + Duration::from_secs(120);
    while sql(&pg, &db, "SELECT count(*) FROM audit_outbox") != "0" {
        assert!(
            Instant::now() < deadline,
            "audit outbox not drained: {} rows",
            sql(&pg, &db, "SELECT count(*) FROM audit_outbox")
        );
        for r in &rs[..2] {
            r.advance(15).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let autorenew: usize = sql(
        &pg,
        &db,
        "SELECT count(*) FROM audit_log WHERE operation = 'certificates.autorenew'",
    )
    .parse()
    .unwrap();
    let distinct: usize = sql(
        &pg,
        &db,
        "SELECT count(DISTINCT (detail::jsonb)->>'version') FROM audit_log \
         WHERE operation = 'certificates.autorenew' AND outcome = 'ok' \
         AND (detail::jsonb)->>'outbox' IS NOT NULL",
    )
    .parse()
    .unwrap();
    assert_eq!(distinct, N, "{autorenew} autorenew records");
    let victim_max: usize = leased_to_victim.parse().unwrap();
    assert!(
        autorenew >= N && autorenew <= N + victim_max,
        "{autorenew} autorenew records"
    );
    assert_eq!(
        sql(
            &pg,
            &db,
            "SELECT count(*) FROM (SELECT (detail::jsonb)->>'outbox' o FROM audit_log \
             WHERE operation = 'certificates.autorenew' \
             GROUP BY o HAVING count(DISTINCT (detail::jsonb)->>'version') <> 1) x"
        ),
        "0",
        "a duplicate record names the same outbox row and version"
    );

    // a graceful stop releases only the stopping replica's own leases
    for r in &mut rs[..2] {
        r.stop();
        let log = r.log();
        assert!(
            log.contains("shutdown complete"),
            "{}",
            &log[log.len().saturating_sub(4000)..]
        );
    }
}

/// Polls futures together (no `futures` crate in this package's dependencies).
async fn futures_join_all<F: Future<Output = ()> + Send>(fs: impl Iterator<Item = F>) {
    let mut pinned: Vec<std::pin::Pin<Box<F>>> = fs.map(Box::pin).collect();
    std::future::poll_fn(|cx| {
        pinned.retain_mut(|f| f.as_mut().poll(cx).is_pending());
        if pinned.is_empty() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_ride_out_a_postgres_restart_without_losing_an_accepted_write() {
    let mut pg = tokio::task::spawn_blocking(certvault_testkit::Postgres::start)
        .await
        .unwrap();
    let url = pg.database();
    let root = tempfile::tempdir().unwrap();
    let rs = Arc::new(replicas(root.path(), 2, &url).await);

    // writers: each creates its own certificates through alternating replicas and keeps the names
    // of the writes answered 2xx, until told to stop
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..6usize {
        let rs = rs.clone();
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            let mut accepted = Vec::new();
            let mut failed = 0usize;
            let mut first_failure = None;
            let mut i = 0usize;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let name = format!("w{w}-c{i}");
                let (s, v) = rs[i % 2]
                    .call(
                        reqwest::Method::POST,
                        &format!("/certificates/{name}/create"),
                        Some(renewing_policy(i)),
                    )
                    .await;
                if (200..300).contains(&s) {
                    accepted.push(name);
                } else {
                    failed += 1;
                    first_failure.get_or_insert((s, v));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                i += 1;
            }
            (accepted, failed, first_failure)
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    // PostgreSQL goes away: both replicas report not ready
    let pg = tokio::task::spawn_blocking(move || {
        pg.stop();
        pg
    })
    .await
    .unwrap();
    for r in rs.iter() {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let s = r.readyz().await;
            if s.is_some_and(|s| s != 200) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "still ready without the database: {s:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    // back on the same port and data directory: ready again, no certvault restart
    let mut pg = pg;
    let pg = tokio::task::spawn_blocking(move || {
        pg.start_again();
        pg
    })
    .await
    .unwrap();
    for r in rs.iter() {
        let deadline = Instant::now() + Duration::from_secs(60);
        while r.readyz().await != Some(200) {
            assert!(Instant::now() < deadline, "not ready again: {}", r.log());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut accepted = Vec::new();
    let mut failed = 0;
    let mut failure = None;
    for w in writers {
        let (a, f, first) = w.await.unwrap();
        accepted.extend(a);
        failed += f;
        failure = failure.or(first);
    }
    eprintln!(
        "{} writes accepted, {failed} refused (first: {failure:?})",
        accepted.len()
    );
    assert!(failed > 0, "no write failed: the database was never away");
    assert!(accepted.len() > 50, "too few writes to prove anything");

    // every accepted write is there, through either replica
    for (i, name) in accepted.iter().enumerate() {
        let (s, v) = rs[(i + 1) % 2]
            .call(
                reqwest::Method::GET,
                &format!("/certificates/{name}/"),
                None,
            )
            .await;
        assert_eq!(s, 200, "{name} was accepted and is gone: {v}");
        assert!(v["cer"].is_string(), "{name}: {v}");
    }
    // writes work again, and the audit chain of both replicas across the outage verifies
    let (s, v) = rs[0]
        .call(
            reqwest::Method::POST,
            "/certificates/after/create",
            Some(renewing_policy(0)),
        )
        .await;
    assert_eq!(s, 202, "{v}");
    let (s, v) = rs[1]
        .call(reqwest::Method::POST, "/admin/v1/audit/verify", None)
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["ok"], true, "{v}");
    drop(pg);
}
