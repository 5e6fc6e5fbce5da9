//! Integration tests that start the real server (TLS listener, SQLite store, data directory) and
//! talk to it over HTTPS.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

struct Server {
    base: String,
    port: u16,
    ca: PathBuf,
    token: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    http: reqwest::Client,
}

fn opts(dir: &Path) -> certvault_server::ServeOptions {
    certvault_server::ServeOptions {
        max_body: 256 * 1024,
        database: certvault_testkit::test_database(dir),
        ..certvault_server::ServeOptions::local(dir, "certvault.test")
    }
}

fn started_addr(port: u16) -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], port))
}

async fn start(dir: &Path) -> Server {
    let clock: certvault_core::clock::SharedClock = Arc::new(certvault_core::SystemClock);
    let started = certvault_server::start(&opts(dir), clock)
        .await
        .expect("server starts");
    let port = started.addr.port();
    let base = format!("https://127.0.0.1:{port}");
    let ca = started.ca_path.clone();
    let token = std::fs::read_to_string(&started.token_path)
        .unwrap()
        .trim()
        .to_owned();
    for v in ["v2", "v3"] {
        if started.state.store.vault(v).await.unwrap().is_none() {
            started.state.create_vault(v).await.unwrap();
        }
    }
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
        .resolve("v2.certvault.test", started_addr(port))
        .resolve("v3.certvault.test", started_addr(port))
        .build()
        .unwrap();
    Server {
        base,
        port,
        ca,
        token,
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
        self.call_on(&self.base, method, path, body).await
    }

    fn vault_url(&self, vault: &str) -> String {
        if vault == "default" {
            self.base.clone()
        } else {
            format!("https://{vault}.certvault.test:{}", self.port)
        }
    }

    async fn call_on(
        &self,
        base: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let sep = if path.contains('?') { '&' } else { '?' };
        let mut req = self
            .http
            .request(method, format!("{base}{path}{sep}api-version=7.4"))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (
            status,
            if text.is_empty() {
                Value::Null
            } else {
                serde_json::from_str(&text).unwrap()
            },
        )
    }

    async fn create_self(&self, name: &str, key_props: Value, content_type: &str) -> Value {
        let body = json!({"policy": {
            "key_props": key_props,
            "secret_props": {"contentType": content_type},
            "x509_props": {"subject": format!("CN={name}.example.test"), "sans": {"dns_names": [format!("{name}.example.test")]}},
            "issuer": {"name": "Self"}}});
        let (s, op) = self
            .call(
                reqwest::Method::POST,
                &format!("/certificates/{name}/create"),
                Some(body),
            )
            .await;
        assert_eq!(s, 202, "{op}");
        assert_eq!(op["status"], "inProgress");
        let (s, op) = self
            .call(
                reqwest::Method::GET,
                &format!("/certificates/{name}/pending"),
                None,
            )
            .await;
        assert_eq!(s, 200);
        assert_eq!(op["status"], "completed", "{op}");
        let (s, cert) = self
            .call(
                reqwest::Method::GET,
                &format!("/certificates/{name}/"),
                None,
            )
            .await;
        assert_eq!(s, 200);
        cert
    }
}

#[tokio::test]
async fn challenge_healthz_and_auth() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(dir.path()).await;
    let r = srv
        .http
        .get(format!("{}/healthz", srv.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    for auth in [None, Some("Bearer wrong-token")] {
        let mut req = srv
            .http
            .post(format!(
                "{}/certificates/x/create?api-version=7.4",
                srv.base
            ))
            .body("{not json");
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status().as_u16(), 401);
        let challenge = r.headers()["www-authenticate"].to_str().unwrap().to_owned();
        assert!(
            challenge.starts_with("Bearer authorization=\"https://certvault.test:"),
            "{challenge}"
        );
        assert!(
            challenge.contains("resource=\"https://certvault.test:"),
            "{challenge}"
        );
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "Unauthorized");
    }
    // api-version rules
    let r = srv
        .http
        .get(format!("{}/certificates", srv.base))
        .bearer_auth(&srv.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let (s, _) = srv
        .call(
            reqwest::Method::GET,
            "/certificates?api-version=2099-01-01",
            None,
        )
        .await;
    assert_eq!(s, 200);
    srv.stop().await;
}

#[tokio::test]
async fn create_get_secret_and_bad_input_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(dir.path()).await;
    let cert = srv
        .create_self(
            "web",
            json!({"kty": "EC", "crv": "P-256"}),
            "application/x-pem-file",
        )
        .await;
    let cer = STANDARD.decode(cert["cer"].as_str().unwrap()).unwrap();
    let info = certvault_crypto::parse_certificate(&cer).unwrap();
    assert_eq!(info.subject, "CN=web.example.test");
    assert_eq!(info.dns_names, vec!["web.example.test".to_owned()]);
    let (s, secret) = srv.call(reqwest::Method::GET, "/secrets/web/", None).await;
    assert_eq!(s, 200);
    let pem = secret["value"].as_str().unwrap();
    assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"), "{pem}");
    let bundle = certvault_crypto::parse_pem(pem.as_bytes()).unwrap();
    assert_eq!(
        bundle.key.unwrap().public_key().spki_der(),
        info.public_key.spki_der()
    );

    // bad input: each answered in the error shape, and nothing changes
    let (_, before) = srv
        .call(reqwest::Method::GET, "/certificates/web/versions", None)
        .await;
    let cases: Vec<(reqwest::Method, &str, Value, u16)> = vec![
        (
            reqwest::Method::POST,
            "/certificates/web/create",
            json!("not an object"),
            400,
        ),
        (
            reqwest::Method::POST,
            "/certificates/web/create",
            json!({"policy": {"key_props": {"kty": "rsa"}}}),
            400,
        ),
        (
            reqwest::Method::POST,
            "/certificates/bad_name/create",
            json!({"policy": {}}),
            400,
        ),
        (
            reqwest::Method::POST,
            "/certificates/web/import",
            json!({"value": "not base64 !!"}),
            400,
        ),
        (
            reqwest::Method::PATCH,
            "/certificates/web/policy",
            json!({"x509_props": {"validity_months": 0}}),
            400,
        ),
        (
            reqwest::Method::GET,
            "/certificates?maxresults=26",
            Value::Null,
            400,
        ),
    ];
    for (m, path, body, want) in cases {
        let b = if body.is_null() { None } else { Some(body) };
        let (s, err) = srv.call(m, path, b).await;
        assert_eq!(s, want, "{path}: {err}");
        assert!(
            err["error"]["code"].is_string() && err["error"]["message"].is_string(),
            "{err}"
        );
    }
    let (_, after) = srv
        .call(reqwest::Method::GET, "/certificates/web/versions", None)
        .await;
    assert_eq!(before, after);
    let (_, policy) = srv
        .call(reqwest::Method::GET, "/certificates/web/policy", None)
        .await;
    assert_eq!(policy["x509_props"]["validity_months"], 12);

    // oversize body
    let big = "x".repeat(300 * 1024);
    let r = srv
        .http
        .post(format!(
            "{}/certificates/web/import?api-version=7.4",
            srv.base
        ))
        .bearer_auth(&srv.token)
        .header("content-type", "application/json")
        .body(format!("{{\"value\":\"{big}\"}}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 413);
    srv.stop().await;
}

/// Scans the data directory and, on PostgreSQL, every file of the server's data directory
/// (tables, WAL) for the needles.
fn scan(dir: &Path, needles: &[(String, Vec<u8>)]) {
    fn walk(dir: &Path, deep: bool, files: &mut Vec<PathBuf>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() && deep {
                walk(&p, deep, files);
            } else if p.is_file() {
                files.push(p);
            }
        }
    }
    let mut files = vec![];
    // The top level of the data directory (tls/ holds the local CA's key, in PEM).
    walk(dir, false, &mut files);
    match certvault_testkit::test_database_dir() {
        None => assert!(files.iter().any(|f| f.ends_with("certvault.db"))),
        Some(pg) => {
            let before = files.len();
            walk(&pg, true, &mut files);
            assert!(
                files.len() > before + 100,
                "the PostgreSQL data files are scanned"
            );
        }
    }
    for f in files {
        // -wal and -shm files come and go with connections
        let Ok(data) = std::fs::read(&f) else {
            continue;
        };
        for (what, needle) in needles {
            assert!(
                !data.windows(needle.len()).any(|w| w == needle.as_slice()),
                "{what} found in {}",
                f.display()
            );
        }
    }
}

#[tokio::test]
async fn private_keys_never_reach_the_database_in_plaintext_and_survive_restart() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(dir.path()).await;
    let mut needles = Vec::new();
    let mut secrets = Vec::new();
    for (name, kp) in [
        ("rsa", json!({"kty": "RSA", "key_size": 2048})),
        ("ec", json!({"kty": "EC", "crv": "P-384"})),
    ] {
        srv.create_self(name, kp, "application/x-pem-file").await;
        let (_, s) = srv
            .call(reqwest::Method::GET, &format!("/secrets/{name}/"), None)
            .await;
        let pem = s["value"].as_str().unwrap().to_owned();
        let key = certvault_crypto::parse_pem(pem.as_bytes())
            .unwrap()
            .key
            .unwrap();
        let der = key.pkcs8_der().to_vec();
        let key_pem = certvault_crypto::to_pem(Some(&key), &[]);
        let body_line = key_pem.lines().nth(1).unwrap().as_bytes().to_vec();
        needles.push((format!("{name} PKCS#8 DER"), der));
        needles.push((format!("{name} PEM body line"), body_line));
        secrets.push((name, pem));
    }
    needles.push(("PEM header".into(), b"-----BEGIN PRIVATE KEY-----".to_vec()));
    // While running (WAL not yet checkpointed) and after stopping.
    scan(dir.path(), &needles);
    srv.stop().await;
    scan(dir.path(), &needles);

    let srv = start(dir.path()).await;
    for (name, pem) in secrets {
        let (s, v) = srv
            .call(reqwest::Method::GET, &format!("/secrets/{name}/"), None)
            .await;
        assert_eq!(s, 200);
        assert_eq!(v["value"].as_str().unwrap(), pem);
    }
    srv.stop().await;
}

fn digest_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            out.push((
                p.display().to_string(),
                certvault_crypto::sha256(&std::fs::read(&p).unwrap()).to_vec(),
            ));
        }
    }
    out.sort();
    out
}

#[tokio::test]
async fn refuses_a_master_key_that_does_not_match() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(dir.path()).await;
    srv.create_self("a", json!({"kty": "EC"}), "application/x-pkcs12")
        .await;
    srv.stop().await;
    let master = dir.path().join("master.key");
    let original = std::fs::read(&master).unwrap();
    std::fs::write(&master, format!("{}\n", "ab".repeat(32))).unwrap();
    let before = digest_files(dir.path());
    let clock: certvault_core::clock::SharedClock = Arc::new(certvault_core::SystemClock);
    let err = certvault_server::start(&opts(dir.path()), clock.clone())
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("does not match the database"),
        "{err}"
    );
    assert_eq!(
        before,
        digest_files(dir.path()),
        "a refused start must write nothing"
    );

    std::fs::remove_file(&master).unwrap();
    let err = certvault_server::start(&opts(dir.path()), clock)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("master key file"), "{err}");
    assert!(
        !master.exists(),
        "no new master key may be created next to an existing database"
    );

    std::fs::write(&master, original).unwrap();
    let srv = start(dir.path()).await;
    let (s, _) = srv
        .call(reqwest::Method::GET, "/certificates/a/", None)
        .await;
    assert_eq!(s, 200);
    assert!(srv.ca.exists());
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_master_key_under_load_then_restart() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Arc::new(start(dir.path()).await);
    let vaults = ["default", "v2", "v3"];
    let mut expected = Vec::new();
    for v in vaults {
        let base = srv.vault_url(v);
        let body = json!({"policy": {"key_props": {"kty": "EC", "crv": "P-256"},
            "secret_props": {"contentType": "application/x-pem-file"},
            "x509_props": {"subject": format!("CN={v}.example.test")}, "issuer": {"name": "Self"}}});
        let (s, _) = srv
            .call_on(
                &base,
                reqwest::Method::POST,
                "/certificates/c/create",
                Some(body),
            )
            .await;
        assert_eq!(s, 202);
        let (s, secret) = srv
            .call_on(&base, reqwest::Method::GET, "/secrets/c/", None)
            .await;
        assert_eq!(s, 200, "{secret}");
        expected.push((v, secret["value"].as_str().unwrap().to_owned()));
    }
    let master = dir.path().join("master.key");
    let first = std::fs::read(&master).unwrap();

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for (i, (vault, pem)) in expected.iter().cloned().enumerate() {
        let srv = srv.clone();
        let base = srv.vault_url(vault);
        let stop = stop.clone();
        workers.push(tokio::spawn(async move {
            let (mut ok, mut errors) = (0u32, Vec::new());
            let digest = certvault_crypto::sha256(format!("msg {i}").as_bytes());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let (s, v) = srv.call_on(&base, reqwest::Method::GET, "/secrets/c/", None).await;
                if s != 200 || v["value"].as_str() != Some(pem.as_str()) {
                    errors.push(format!("GET secret: {s} {v}"));
                }
                let sign = json!({"alg": "ES256", "value": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest)});
                let (s, v) = srv.call_on(&base, reqwest::Method::POST, "/keys/c//sign", Some(sign)).await;
                if s != 200 {
                    errors.push(format!("sign: {s} {v}"));
                }
                ok += 1;
            }
            (ok, errors)
        }));
    }
    for _ in 0..3 {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let (s, v) = srv
            .call(
                reqwest::Method::POST,
                "/admin/v1/master-key/rotate",
                Some(json!({})),
            )
            .await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["vault_keys_rewrapped"], 3);
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in workers {
        let (ok, errors) = w.await.unwrap();
        assert!(ok > 5, "the load loop barely ran ({ok} rounds)");
        assert!(
            errors.is_empty(),
            "{} failed requests during rotation: {:?}",
            errors.len(),
            &errors[..errors.len().min(3)]
        );
    }
    assert_ne!(
        std::fs::read(&master).unwrap(),
        first,
        "master.key was not replaced"
    );
    assert!(!dir.path().join("master.key.next").exists());

    let srv = Arc::try_unwrap(srv).ok().expect("no other owner");
    srv.stop().await;
    let srv = start(dir.path()).await;
    for (vault, pem) in &expected {
        let (s, v) = srv
            .call_on(
                &srv.vault_url(vault),
                reqwest::Method::GET,
                "/secrets/c/",
                None,
            )
            .await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["value"].as_str().unwrap(), pem);
    }
    srv.stop().await;
}

#[tokio::test]
async fn interrupted_rotation_is_finished_or_undone_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let master = dir.path().join("master.key");
    let next = dir.path().join("master.key.next");
    let srv = start(dir.path()).await;
    srv.create_self("a", json!({"kty": "EC"}), "application/x-pem-file")
        .await;
    let (_, before) = srv.call(reqwest::Method::GET, "/secrets/a/", None).await;
    let old_key = std::fs::read(&master).unwrap();
    let (s, _) = srv
        .call(
            reqwest::Method::POST,
            "/admin/v1/master-key/rotate",
            Some(json!({})),
        )
        .await;
    assert_eq!(s, 200);
    let new_key = std::fs::read(&master).unwrap();
    srv.stop().await;

    // Crash after the database commit, before the rename: master.key is the old key.
    std::fs::write(&master, &old_key).unwrap();
    std::fs::write(&next, &new_key).unwrap();
    let srv = start(dir.path()).await;
    assert_eq!(
        std::fs::read(&master).unwrap(),
        new_key,
        "the rotation was finished"
    );
    assert!(!next.exists());
    let (_, after) = srv.call(reqwest::Method::GET, "/secrets/a/", None).await;
    assert_eq!(before["value"], after["value"]);
    srv.stop().await;

    // Crash before the commit: master.key is right, master.key.next is a stray new key.
    std::fs::write(&next, format!("{}\n", "cd".repeat(32))).unwrap();
    let srv = start(dir.path()).await;
    assert!(!next.exists(), "the uncommitted key was removed");
    assert_eq!(std::fs::read(&master).unwrap(), new_key);
    srv.stop().await;
}

/// Secrets are served from a cache of rendered responses: every change that affects a
/// secret (attributes, tags, a new version, deletion, recovery) shows in the very next GET.
#[tokio::test]
async fn cached_secrets_follow_every_change() {
    use reqwest::Method as M;
    let dir = tempfile::tempdir().unwrap();
    let srv = start(dir.path()).await;
    let first = srv
        .create_self(
            "web",
            json!({"kty": "EC", "crv": "P-256"}),
            "application/x-pem-file",
        )
        .await;
    let v1 = first["id"]
        .as_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_owned();
    let get = |path: &'static str| srv.call(M::GET, path, None);
    let (s, a) = get("/secrets/web").await;
    assert_eq!(s, 200);
    let (_, b) = get("/secrets/web").await;
    assert_eq!(a, b, "a repeated read answers the same");
    // the ids follow the address the client used, also from the cache
    let other = format!("https://localhost:{}", srv.port);
    let (s, c) = srv.call_on(&other, M::GET, "/secrets/web", None).await;
    assert_eq!(s, 200);
    assert!(c["id"].as_str().unwrap().starts_with(&other), "{c}");
    assert_eq!(c["value"], a["value"]);
    // and back: the shared body made for the first address is still that address's
    let (_, d) = get("/secrets/web").await;
    assert_eq!(d, a, "the first address's ids again");
    let (_, e) = srv.call_on(&other, M::GET, "/secrets/web", None).await;
    assert_eq!(e, c, "the second address's ids again");

    // tags
    let (s, _) = srv
        .call(
            M::PATCH,
            &format!("/certificates/web/{v1}"),
            Some(json!({"tags": {"env": "prod"}})),
        )
        .await;
    assert_eq!(s, 200);
    let (_, t) = get("/secrets/web").await;
    assert_eq!(t["tags"], json!({"env": "prod"}));
    // disabled: refused at once, for the latest and for the version
    let (s, _) = srv
        .call(
            M::PATCH,
            &format!("/certificates/web/{v1}"),
            Some(json!({"attributes": {"enabled": false}})),
        )
        .await;
    assert_eq!(s, 200);
    let (s, e) = get("/secrets/web").await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (403, Some("Forbidden")),
        "{e}"
    );
    let (s, _) = srv.call(M::GET, &format!("/secrets/web/{v1}"), None).await;
    assert_eq!(s, 403);
    let (s, _) = srv
        .call(
            M::PATCH,
            &format!("/certificates/web/{v1}"),
            Some(json!({"attributes": {"enabled": true}})),
        )
        .await;
    assert_eq!(s, 200);
    let (s, _) = srv.call(M::GET, &format!("/secrets/web/{v1}"), None).await;
    assert_eq!(s, 200);

    // a new version becomes the latest; the old one stays readable by version
    let second = srv
        .create_self(
            "web",
            json!({"kty": "EC", "crv": "P-256"}),
            "application/x-pem-file",
        )
        .await;
    let v2 = second["id"]
        .as_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_owned();
    assert_ne!(v1, v2);
    let (_, latest) = get("/secrets/web").await;
    assert!(latest["id"].as_str().unwrap().ends_with(&v2), "{latest}");
    assert_ne!(latest["value"], a["value"]);
    let (_, old) = srv.call(M::GET, &format!("/secrets/web/{v1}"), None).await;
    assert_eq!(old["value"], a["value"]);

    // deleted: gone at once; recovered: back
    let (s, _) = srv.call(M::DELETE, "/certificates/web", None).await;
    assert_eq!(s, 200);
    let (s, e) = get("/secrets/web").await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (404, Some("SecretNotFound")),
        "{e}"
    );
    let (s, _) = srv
        .call(M::POST, "/deletedcertificates/web/recover", None)
        .await;
    assert_eq!(s, 200);
    let (s, back) = get("/secrets/web").await;
    assert_eq!((s, &back["value"]), (200, &latest["value"]));
    srv.stop().await;
}
