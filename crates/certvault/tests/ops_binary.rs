//! The operations surface of the real `certvault` binary: graceful shutdown under load,
//! `/metrics` end to end (main listener and `--metrics-listen`), backup and restore (SQLite
//! through `certvault admin backup`; PostgreSQL through pg_dump / pg_restore, and the backup
//! endpoint's refusal there), and `--log-format json` with request ids.
//!
//! Each test starts `certvault serve` as a child process on a free port with a temporary data
//! directory. With `CERTVAULT_TEST_DATABASE=postgres` (test-all stage `test-pg`) the servers
//! whose backend does not matter to the test keep their store in the test process's private
//! PostgreSQL; the SQLite backup test and the PostgreSQL backup tests pick their backend
//! themselves.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_certvault");
const API: &str = "api-version=7.4";

/// Which store a test server uses.
enum Db {
    /// `CERTVAULT_TEST_DATABASE` decides (SQLite unless `postgres`).
    Default,
    /// SQLite in the data directory, whatever the environment says.
    Sqlite,
    /// This PostgreSQL database.
    Url(String),
}

struct Srv {
    child: Option<Child>,
    base: String,
    port: u16,
    dir: PathBuf,
    token: String,
    http: reqwest::Client,
    lines: Arc<Mutex<Vec<String>>>,
    /// The thread collecting stderr (done once the process has exited).
    reader: Option<std::thread::JoinHandle<()>>,
    metrics_url: Option<String>,
}

impl Drop for Srv {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The text of a line the server wrote: the line itself, or `fields.message` of a JSON line.
fn message(line: &str) -> String {
    if line.starts_with('{')
        && let Ok(v) = serde_json::from_str::<Value>(line)
    {
        return v["fields"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
    }
    line.to_owned()
}

fn start(dir: &Path, extra: &[&str], db: Db) -> Srv {
    let database = match db {
        Db::Default => certvault_testkit::test_database(dir),
        Db::Sqlite => None,
        Db::Url(u) => Some(u),
    };
    let mut cmd = Command::new(BIN);
    cmd.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--base-domain",
        "ops.test",
    ])
    .arg("--data-dir")
    .arg(dir)
    .args(extra);
    if let Some(url) = &database {
        cmd.arg("--database").arg(url);
    }
    let mut child = cmd
        .env_remove("CERTVAULT_DATABASE")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(180);
    let (mut base, mut metrics_url) = (None, None);
    while Instant::now() < deadline {
        for l in lines.lock().unwrap().iter() {
            let m = message(l);
            if let Some(u) = m.strip_prefix("certvault listening on ") {
                base = Some(u.trim().to_owned());
            }
            if let Some(u) = m.trim().strip_prefix("metrics (no token): ") {
                metrics_url = Some(u.trim().to_owned());
            }
        }
        if base.is_some() {
            break;
        }
        if let Ok(Some(st)) = child.try_wait() {
            panic!("server exited early ({st}): {:?}", lines.lock().unwrap());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let Some(base) = base else {
        let _ = child.kill();
        panic!("server did not start: {:?}", lines.lock().unwrap());
    };
    let port = base.rsplit(':').next().unwrap().parse().unwrap();
    let token = std::fs::read_to_string(dir.join("admin.token"))
        .unwrap()
        .trim()
        .to_owned();
    let ca =
        reqwest::Certificate::from_pem(&std::fs::read(dir.join("tls/ca.pem")).unwrap()).unwrap();
    Srv {
        child: Some(child),
        base,
        port,
        dir: dir.to_owned(),
        token,
        http: reqwest::Client::builder()
            .tls_certs_only([ca])
            .build()
            .unwrap(),
        lines,
        reader: Some(reader),
        metrics_url,
    }
}

struct Resp {
    status: u16,
    body: Value,
    headers: reqwest::header::HeaderMap,
}

impl Srv {
    async fn call_as(
        &self,
        token: Option<&str>,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Resp {
        let url = if path.starts_with("/admin") || path.starts_with("/metrics") {
            format!("{}{path}", self.base)
        } else {
            let sep = if path.contains('?') { '&' } else { '?' };
            format!("{}{path}{sep}{API}", self.base)
        };
        let mut req = self.http.request(method, url);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Resp {
            status,
            body,
            headers,
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Resp {
        self.call_as(Some(&self.token), method, path, body).await
    }

    /// Creates a Self-signed certificate and waits until it is issued; returns its bundle.
    async fn create_cert(&self, name: &str, kty: &str) -> Value {
        let key = if kty == "EC" {
            json!({"kty": "EC", "crv": "P-256", "exportable": true})
        } else {
            json!({"kty": "RSA", "key_size": 2048, "exportable": true})
        };
        let policy = json!({
            "key_props": key,
            "secret_props": {"contentType": "application/x-pem-file"},
            "x509_props": {"subject": format!("CN={name}.ops.test"), "validity_months": 12},
            "issuer": {"name": "Self"},
            "lifetime_actions": [{"trigger": {"lifetime_percentage": 80}, "action": {"action_type": "AutoRenew"}}]
        });
        let r = self
            .call(
                reqwest::Method::POST,
                &format!("/certificates/{name}/create"),
                Some(json!({"policy": policy})),
            )
            .await;
        assert_eq!(r.status, 202, "{}", r.body);
        let deadline = Instant::now() + Duration::from_secs(180);
        while Instant::now() < deadline {
            let p = self
                .call(
                    reqwest::Method::GET,
                    &format!("/certificates/{name}/pending"),
                    None,
                )
                .await;
            match p.body["status"].as_str() {
                Some("inProgress") => tokio::time::sleep(Duration::from_millis(20)).await,
                Some("completed") => {
                    let c = self
                        .call(reqwest::Method::GET, &format!("/certificates/{name}"), None)
                        .await;
                    assert_eq!(c.status, 200, "{}", c.body);
                    return c.body;
                }
                other => panic!("{name}: operation {other:?}: {}", p.body),
            }
        }
        panic!("{name} stayed inProgress");
    }

    async fn secret_value(&self, name: &str) -> String {
        let r = self
            .call(reqwest::Method::GET, &format!("/secrets/{name}"), None)
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        r.body["value"].as_str().unwrap().to_owned()
    }

    async fn audit_verifies(&self) -> Value {
        let r = self
            .call(reqwest::Method::POST, "/admin/v1/audit/verify", None)
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body["ok"], true, "audit verify: {}", r.body);
        r.body
    }

    /// SIGTERM; waits for the exit (up to `within`); the status and the time it took.
    fn terminate(&mut self, within: Duration) -> (ExitStatus, Duration) {
        let mut child = self.child.take().unwrap();
        let t = Instant::now();
        sigterm(&child);
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                let took = t.elapsed();
                if let Some(r) = self.reader.take() {
                    r.join().unwrap();
                }
                return (st, took);
            }
            if t.elapsed() > within {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the server did not exit within {within:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn cli(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(BIN)
            .args(args)
            .env("CERTVAULT_URL", &self.base)
            .env("CERTVAULT_TOKEN_FILE", self.dir.join("admin.token"))
            .env("CERTVAULT_CACERT", self.dir.join("tls/ca.pem"))
            .env_remove("CERTVAULT_TOKEN")
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

fn sigterm(child: &Child) {
    let st = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
}

fn data_dir(tmp: &tempfile::TempDir, name: &str) -> PathBuf {
    tmp.path().join(name)
}

// ------------------------------------------------------------------------------ shutdown

/// A request sent over its own TLS connection whose body is only half written.
struct SlowRequest {
    stream: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
    rest: Vec<u8>,
}

impl SlowRequest {
    fn begin(srv: &Srv, name: &str) -> Self {
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for c in
            rustls::pki_types::CertificateDer::pem_file_iter(srv.dir.join("tls/ca.pem")).unwrap()
        {
            roots.add(c.unwrap()).unwrap();
        }
        let cfg = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let conn = rustls::ClientConnection::new(
            Arc::new(cfg),
            rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap(),
        )
        .unwrap();
        let tcp = TcpStream::connect(("127.0.0.1", srv.port)).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(120)))
            .unwrap();
        let mut stream = rustls::StreamOwned::new(conn, tcp);
        let body = serde_json::to_vec(&json!({"policy": {
            "key_props": {"kty": "EC", "crv": "P-256"},
            "x509_props": {"subject": format!("CN={name}"), "validity_months": 12},
            "issuer": {"name": "Self"}
        }}))
        .unwrap();
        let head = format!(
            "POST /certificates/{name}/create?{API} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n\
             Authorization: Bearer {}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n",
            srv.port,
            srv.token,
            body.len()
        );
        let half = body.len() / 2;
        stream.write_all(head.as_bytes()).unwrap();
        stream.write_all(&body[..half]).unwrap();
        stream.flush().unwrap();
        Self {
            stream,
            rest: body[half..].to_vec(),
        }
    }

    /// Sends the rest of the body and reads the response; its status.
    fn finish(mut self) -> u16 {
        self.stream.write_all(&self.rest).unwrap();
        self.stream.flush().unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_string();
                let len = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse::<usize>().ok())?
                    })
                    .unwrap_or(0);
                if buf.len() >= end + 4 + len {
                    let status = head.split_whitespace().nth(1).unwrap();
                    return status.parse().unwrap();
                }
            }
            match self.stream.read(&mut chunk) {
                Ok(0) => panic!(
                    "connection closed before a full response: {:?}",
                    String::from_utf8_lossy(&buf)
                ),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) => panic!("reading the response: {e}"),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_requests_in_flight_refuses_new_ones_and_exits_0() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = data_dir(&tmp, "data");
    let mut srv = start(&dir, &["--shutdown-grace", "60"], Db::Default);
    srv.create_cert("warm", "EC").await;
    let port = srv.port;

    // Three requests in flight: head and half of the body sent, the handlers reading the rest.
    let slow: Vec<SlowRequest> = (0..3)
        .map(|i| SlowRequest::begin(&srv, &format!("slow{i}")))
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut child = srv.child.take().unwrap();
    let t = Instant::now();
    sigterm(&child);

    // New connections are refused once the listener has closed (within a moment).
    let refused = loop {
        match TcpStream::connect(("127.0.0.1", port)) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => break true,
            _ if t.elapsed() > Duration::from_secs(20) => break false,
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    assert!(refused, "new connections still accepted 20 s after SIGTERM");
    assert!(
        child.try_wait().unwrap().is_none(),
        "the server exited with requests in flight"
    );

    // Two seconds into the grace period the slow requests complete, with 202.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let statuses: Vec<u16> =
        tokio::task::spawn_blocking(move || slow.into_iter().map(SlowRequest::finish).collect())
            .await
            .unwrap();
    assert_eq!(statuses, vec![202, 202, 202]);

    // Then the process exits 0, within the grace period.
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "no exit within the grace period"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "exit status {status}");
    if let Some(r) = srv.reader.take() {
        r.join().unwrap();
    }
    let lines = srv.lines.lock().unwrap().join("\n");
    assert!(lines.contains("shutdown complete"), "{lines}");

    // The writes of the requests that finished during the shutdown are there after a restart.
    let srv = start(&dir, &[], Db::Default);
    for i in 0..3 {
        let r = srv
            .call(
                reqwest::Method::GET,
                &format!("/certificates/slow{i}"),
                None,
            )
            .await;
        assert_eq!(r.status, 200, "slow{i}: {}", r.body);
    }
}

// ------------------------------------------------------------------------------- metrics

/// The samples of `metric` in an exposition: (labels, value).
fn samples(text: &str, metric: &str) -> Vec<(HashMap<String, String>, f64)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(metric) else {
            continue;
        };
        let (labels, value) = if let Some(r) = rest.strip_prefix('{') {
            let (l, v) = r.split_once('}').unwrap();
            (l, v)
        } else if rest.starts_with(' ') {
            ("", rest)
        } else {
            continue; // a longer metric name
        };
        let mut map = HashMap::new();
        for kv in labels.split(',').filter(|s| !s.is_empty()) {
            let (k, v) = kv.split_once('=').unwrap();
            map.insert(k.to_owned(), v.trim_matches('"').to_owned());
        }
        out.push((map, value.trim().parse::<f64>().unwrap()));
    }
    out
}

fn cert_sample(text: &str, metric: &str, name: &str) -> Option<f64> {
    samples(text, metric).into_iter().find_map(|(l, v)| {
        (l.get("vault").map(String::as_str) == Some("default")
            && l.get("name").map(String::as_str) == Some(name)
            && l.get("issuer").map(String::as_str) == Some("Self"))
        .then_some(v)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_for_scrapers_and_on_the_loopback_listener() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = data_dir(&tmp, "data");
    let mport = certvault_testkit::free_port();
    let srv = start(
        &dir,
        &["--metrics-listen", &format!("127.0.0.1:{mport}")],
        Db::Default,
    );
    assert_eq!(
        srv.metrics_url.as_deref(),
        Some(format!("http://127.0.0.1:{mport}/metrics").as_str())
    );
    let cert = srv.create_cert("web", "EC").await;
    let nbf = cert["attributes"]["nbf"].as_f64().unwrap();
    let exp = cert["attributes"]["exp"].as_f64().unwrap();

    let mut tokens = HashMap::new();
    for (name, metrics) in [("scraper", true), ("plain", false)] {
        let r = srv
            .call(
                reqwest::Method::POST,
                "/admin/v1/principals",
                Some(json!({"name": name, "metrics": metrics})),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
        tokens.insert(name, r.body["token"]["token"].as_str().unwrap().to_owned());
    }
    // The plain principal may read the vault, and still not the metrics.
    let r = srv
        .call(
            reqwest::Method::PUT,
            "/admin/v1/vaults/default/access-policies/plain",
            Some(json!({"certificates": ["get", "list"]})),
        )
        .await;
    assert!(r.status < 300, "{}", r.body);
    let r = srv
        .call_as(
            Some(&tokens["plain"]),
            reqwest::Method::GET,
            "/metrics",
            None,
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.body);
    let r = srv
        .call_as(None, reqwest::Method::GET, "/metrics", None)
        .await;
    assert_eq!(r.status, 401, "{}", r.body);

    // The scraper sees the certificate's series; the planned renewal appears once the
    // scheduler has planned it (the gauges are cached for 5 s).
    let deadline = Instant::now() + Duration::from_secs(120);
    let text = loop {
        let r = srv
            .call_as(
                Some(&tokens["scraper"]),
                reqwest::Method::GET,
                "/metrics",
                None,
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        let ct = r.headers["content-type"].to_str().unwrap().to_owned();
        assert!(ct.starts_with("text/plain"), "{ct}");
        let text = r.body.as_str().unwrap().to_owned();
        if cert_sample(
            &text,
            "certvault_certificate_next_renewal_timestamp_seconds",
            "web",
        )
        .is_some()
        {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "no planned renewal series:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(
        cert_sample(
            &text,
            "certvault_certificate_expiry_timestamp_seconds",
            "web"
        ),
        Some(exp)
    );
    assert_eq!(
        cert_sample(
            &text,
            "certvault_certificate_not_before_timestamp_seconds",
            "web"
        ),
        Some(nbf)
    );
    // AutoRenew at 80 % of the lifetime, plus the version's jitter (≤ 1 h and ≤ 1 %).
    let renew = cert_sample(
        &text,
        "certvault_certificate_next_renewal_timestamp_seconds",
        "web",
    )
    .unwrap();
    let at = nbf + 0.8 * (exp - nbf);
    assert!(
        renew >= at - 1.0 && renew <= at + 3601.0,
        "renewal planned at {renew}, expected 80 % of {nbf}..{exp} = {at} (+ jitter)"
    );
    assert_eq!(
        cert_sample(
            &text,
            "certvault_certificate_renewal_consecutive_failures",
            "web"
        ),
        Some(0.0)
    );
    let certs = samples(&text, "certvault_certificates");
    assert_eq!(certs.len(), 1);
    assert!(certs[0].1 >= 1.0);

    // The separate listener: plain HTTP, no token, the same series; nothing else there.
    let plain = reqwest::Client::new();
    let r = plain
        .get(format!("http://127.0.0.1:{mport}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert_eq!(
        cert_sample(
            &text,
            "certvault_certificate_expiry_timestamp_seconds",
            "web"
        ),
        Some(exp)
    );
    assert!(text.contains("certvault_http_requests_total{"), "{text}");
    let r = plain
        .get(format!("http://127.0.0.1:{mport}/secrets/web"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

/// `--metrics-certificate-series 2` with three certificates: series for the two expiring
/// soonest (the first two issued: same validity), the third counted in the aggregates and in
/// `certvault_certificate_series_omitted`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_certificate_series_are_bounded_and_the_aggregates_count_every_certificate() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = data_dir(&tmp, "data");
    let srv = start(&dir, &["--metrics-certificate-series", "2"], Db::Default);
    let mut exps = Vec::new();
    for name in ["c1", "c2", "c3"] {
        let cert = srv.create_cert(name, "EC").await;
        exps.push(cert["attributes"]["exp"].as_f64().unwrap());
    }
    let r = srv.call(reqwest::Method::GET, "/metrics", None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let text = r.body.as_str().unwrap().to_owned();
    let expiry = samples(&text, "certvault_certificate_expiry_timestamp_seconds");
    assert_eq!(expiry.len(), 2, "{text}");
    for (name, exp) in [("c1", exps[0]), ("c2", exps[1])] {
        assert_eq!(
            cert_sample(
                &text,
                "certvault_certificate_expiry_timestamp_seconds",
                name
            ),
            Some(exp),
            "{name}: {text}"
        );
    }
    assert_eq!(
        cert_sample(
            &text,
            "certvault_certificate_expiry_timestamp_seconds",
            "c3"
        ),
        None
    );
    // every per-certificate family is bounded the same way
    for family in [
        "certvault_certificate_not_before_timestamp_seconds",
        "certvault_certificate_renewal_consecutive_failures",
    ] {
        assert_eq!(samples(&text, family).len(), 2, "{family}: {text}");
    }
    let single = |metric: &str| {
        let s = samples(&text, metric);
        assert_eq!(s.len(), 1, "{metric}: {text}");
        s[0].1
    };
    assert_eq!(single("certvault_certificates"), 3.0);
    assert_eq!(single("certvault_certificate_series_omitted"), 1.0);
    let expiring = samples(&text, "certvault_certificates_expiring");
    let within = |h: &str| {
        expiring
            .iter()
            .find(|(l, _)| l.get("within").map(String::as_str) == Some(h))
            .map(|(_, v)| *v)
    };
    // twelve months' validity: none expires within 30 days
    assert_eq!(within("7d"), Some(0.0), "{text}");
    assert_eq!(within("30d"), Some(0.0), "{text}");
}

/// Only the first scrape waits for the store: once the per-certificate section exists, a
/// scrape that finds it stale (older than the 5 s reuse) is answered with it at once while a
/// fresh one is computed in the background, and a later scrape has the fresh one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_certificate_section_is_served_while_it_is_refreshed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = data_dir(&tmp, "data");
    let srv = start(&dir, &[], Db::Default);
    srv.create_cert("first", "EC").await;
    let count = |r: &Resp| {
        assert_eq!(r.status, 200, "{}", r.body);
        let text = r.body.as_str().unwrap().to_owned();
        let s = samples(&text, "certvault_certificates");
        assert_eq!(s.len(), 1, "{text}");
        s[0].1
    };
    assert_eq!(
        count(&srv.call(reqwest::Method::GET, "/metrics", None).await),
        1.0
    );
    srv.create_cert("second", "EC").await;
    // within the reuse time: the cached section
    assert_eq!(
        count(&srv.call(reqwest::Method::GET, "/metrics", None).await),
        1.0
    );
    tokio::time::sleep(Duration::from_millis(5_500)).await;
    // stale: served as it is, and the refresh starts
    assert_eq!(
        count(&srv.call(reqwest::Method::GET, "/metrics", None).await),
        1.0
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let n = count(&srv.call(reqwest::Method::GET, "/metrics", None).await);
        if n == 2.0 {
            break;
        }
        assert_eq!(n, 1.0);
        assert!(
            Instant::now() < deadline,
            "the refreshed section never arrived"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ------------------------------------------------------------------------------- backups

fn copy_0600(from: &Path, to: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::copy(from, to).unwrap();
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// A new data directory holding only the master key and the admin token of `from`.
fn fresh_dir_with_keys(from: &Path, to: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(to).unwrap();
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o700)).unwrap();
    copy_0600(&from.join("master.key"), &to.join("master.key"));
    copy_0600(&from.join("admin.token"), &to.join("admin.token"));
}

async fn make_objects(srv: &Srv) -> Vec<(String, Value, String)> {
    let mut out = Vec::new();
    for (name, kty) in [("web-ec", "EC"), ("web-rsa", "RSA"), ("api", "EC")] {
        let c = srv.create_cert(name, kty).await;
        let secret = srv.secret_value(name).await;
        assert!(secret.contains("PRIVATE KEY"));
        out.push((name.to_owned(), c, secret));
    }
    // A second version of one of them.
    let c = srv.create_cert("api", "EC").await;
    let secret = srv.secret_value("api").await;
    out[2] = ("api".to_owned(), c, secret);
    out
}

async fn check_objects(srv: &Srv, objects: &[(String, Value, String)]) {
    for (name, cert, secret) in objects {
        let r = srv
            .call(reqwest::Method::GET, &format!("/certificates/{name}"), None)
            .await;
        assert_eq!(r.status, 200, "{name}: {}", r.body);
        assert_eq!(r.body["cer"], cert["cer"], "{name}: certificate");
        assert_eq!(r.body["x5t"], cert["x5t"], "{name}");
        assert_eq!(&srv.secret_value(name).await, secret, "{name}: secret");
    }
    let r = srv
        .call(reqwest::Method::GET, "/certificates/api/versions", None)
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["value"].as_array().unwrap().len(), 2, "{}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_backup_restores_into_a_new_data_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = data_dir(&tmp, "data");
    let mut srv = start(&dir, &[], Db::Sqlite);
    let objects = make_objects(&srv).await;
    let head = srv.audit_verifies().await;

    let out = tmp.path().join("certvault-backup.db");
    let (ok, stdout, stderr) = srv.cli(&["admin", "backup", "--out", out.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("keep master.key"), "{stdout}");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&out).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    // A certificate made after the backup is not in it.
    srv.create_cert("after", "EC").await;
    let (st, _) = srv.terminate(Duration::from_secs(120));
    assert!(st.success());

    let restored = data_dir(&tmp, "restored");
    fresh_dir_with_keys(&dir, &restored);
    std::fs::copy(&out, restored.join("certvault.db")).unwrap();
    let srv = start(&restored, &[], Db::Sqlite);
    check_objects(&srv, &objects).await;
    let r = srv
        .call(reqwest::Method::GET, "/certificates/after", None)
        .await;
    assert_eq!(r.status, 404, "{}", r.body);
    let verified = srv.audit_verifies().await;
    assert!(
        verified["records_checked"].as_u64().unwrap_or(0)
            > head["records_checked"].as_u64().unwrap_or(0),
        "the restored trail holds the records up to the backup and goes on: {verified} vs {head}"
    );

    // Without the master key the backup does not open.
    let nokey = data_dir(&tmp, "nokey");
    std::fs::create_dir_all(&nokey).unwrap();
    std::fs::copy(&out, nokey.join("certvault.db")).unwrap();
    let o = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&nokey)
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("master"), "{err}");
}

/// pg_dump / pg_restore from Debian's PostgreSQL 15 (the version the test server runs).
fn pg_tool(name: &str) -> PathBuf {
    let p = Path::new("/usr/lib/postgresql/15/bin").join(name);
    assert!(
        p.is_file(),
        "{} not found: apt-get install -y postgresql (scripts/test-all.sh does); this test does not skip",
        p.display()
    );
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_backup_is_pg_dump_and_restores_with_the_master_key() {
    let pg = certvault_testkit::Postgres::shared();
    let url = pg.database();
    let db = url.rsplit('/').next().unwrap().to_owned();
    let tmp = tempfile::tempdir().unwrap();
    let dir = data_dir(&tmp, "data");
    let mut srv = start(&dir, &[], Db::Url(url));

    // The backup endpoint refuses, naming pg_dump, in the API's error shape; so does the CLI,
    // which writes no file.
    let r = srv
        .call(reqwest::Method::POST, "/admin/v1/backup", None)
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.body["error"]["code"], "BadParameter", "{}", r.body);
    let msg = r.body["error"]["message"].as_str().unwrap();
    assert!(msg.contains("pg_dump"), "{msg}");
    let out = tmp.path().join("backup.db");
    let (ok, _, stderr) = srv.cli(&["admin", "backup", "--out", out.to_str().unwrap()]);
    assert!(!ok);
    assert!(stderr.contains("pg_dump"), "{stderr}");
    assert!(!out.exists());

    // docs/operations.md: pg_dump while the server runs, restore into an empty database,
    // start with the data directory's master key.
    let objects = make_objects(&srv).await;
    srv.audit_verifies().await;
    let dump = tmp.path().join("certvault.dump");
    let port = pg.port().to_string();
    let o = Command::new(pg_tool("pg_dump"))
        .args([
            "--format=custom",
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-U",
            "postgres",
            "-f",
        ])
        .arg(&dump)
        .arg(&db)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    srv.create_cert("after", "EC").await;
    let (st, _) = srv.terminate(Duration::from_secs(120));
    assert!(st.success());

    let url2 = pg.database();
    let db2 = url2.rsplit('/').next().unwrap().to_owned();
    let o = Command::new(pg_tool("pg_restore"))
        .args([
            "--no-owner",
            "--exit-on-error",
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-U",
            "postgres",
            "-d",
            &db2,
        ])
        .arg(&dump)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let restored = data_dir(&tmp, "restored");
    fresh_dir_with_keys(&dir, &restored);
    let srv = start(&restored, &[], Db::Url(url2));
    check_objects(&srv, &objects).await;
    let r = srv
        .call(reqwest::Method::GET, "/certificates/after", None)
        .await;
    assert_eq!(r.status, 404, "{}", r.body);
    srv.audit_verifies().await;
}

// ---------------------------------------------------------------------------------- logs

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_json_and_name_each_request_by_its_id() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = data_dir(&tmp, "data");
    let mut srv = start(
        &dir,
        &[
            "--log-format",
            "json",
            "--log",
            "info,certvault_server=debug",
        ],
        Db::Default,
    );
    let mut ids = Vec::new();
    let r = srv.call(reqwest::Method::GET, "/certificates", None).await;
    assert_eq!(r.status, 200);
    ids.push(r.headers["x-ms-request-id"].to_str().unwrap().to_owned());
    let r = srv
        .call(reqwest::Method::GET, "/secrets/missing", None)
        .await;
    assert_eq!(r.status, 404);
    ids.push(r.headers["x-ms-request-id"].to_str().unwrap().to_owned());
    let r = srv
        .call_as(
            Some("cvt_not-a-token"),
            reqwest::Method::GET,
            "/certificates",
            None,
        )
        .await;
    assert_eq!(r.status, 401);
    ids.push(r.headers["x-ms-request-id"].to_str().unwrap().to_owned());
    // The Azure SDKs name their requests with x-ms-client-request-id: echoed, and logged.
    let r = srv
        .http
        .get(format!("{}/certificates?{API}", srv.base))
        .bearer_auth(&srv.token)
        .header("x-ms-client-request-id", "ops-test-0001")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-ms-client-request-id"], "ops-test-0001");
    let client_id_request = r.headers()["x-ms-request-id"].to_str().unwrap().to_owned();
    ids.push(client_id_request.clone());
    // A value that is not visible ASCII is not echoed.
    let r = srv
        .http
        .get(format!("{}/certificates?{API}", srv.base))
        .bearer_auth(&srv.token)
        .header("x-ms-client-request-id", "two words")
        .send()
        .await
        .unwrap();
    assert!(r.headers().get("x-ms-client-request-id").is_none());

    let (st, _) = srv.terminate(Duration::from_secs(120));
    assert!(st.success());
    let lines = srv.lines.lock().unwrap().clone();
    assert!(lines.len() > 10, "{lines:?}");
    let mut by_id: HashMap<String, Value> = HashMap::new();
    for l in &lines {
        let v: Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}"));
        assert!(
            v.is_object() && v["level"].is_string() && v["timestamp"].is_string(),
            "{l}"
        );
        if v["fields"]["message"] == "request" {
            let id = v["span"]["request_id"]
                .as_str()
                .unwrap_or_else(|| panic!("request line without request_id: {l}"));
            assert_eq!(id.len(), 32, "{l}");
            by_id.insert(id.to_owned(), v.clone());
        }
    }
    for id in &ids {
        assert!(
            by_id.contains_key(id),
            "no request line for x-ms-request-id {id}"
        );
    }
    assert_eq!(
        by_id[&client_id_request]["span"]["client_request_id"],
        "ops-test-0001"
    );
    assert_eq!(by_id[&ids[1]]["fields"]["status"], 404);
    assert_eq!(by_id[&ids[2]]["fields"]["status"], 401);
    // The banner is JSON too, and the admin token is in it once (shown once), nowhere else.
    assert!(
        lines
            .iter()
            .any(|l| message(l).starts_with("certvault listening on https://")),
        "{lines:?}"
    );
    let token_lines = lines.iter().filter(|l| l.contains(&srv.token)).count();
    assert_eq!(token_lines, 1);
}
