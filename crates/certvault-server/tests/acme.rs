//! ACME ordering through the Key Vault API, against the real server, Debian's pebble and a
//! real BIND 9 updated with RFC 2136 + TSIG. Every component is started by the test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use certvault_testkit::{
    AriStandIn, Bind, ChallTestSrv, Pebble, PebbleOptions, openssl_sans, openssl_verify,
};
use serde_json::{Value, json};

struct Server {
    base: String,
    token: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    http: reqwest::Client,
}

async fn start(dir: &Path) -> Server {
    start_with(dir, Arc::new(certvault_core::SystemClock)).await
}

/// A server on `clock` (a `TestClock` lets the test move time: `POST /admin/v1/test-clock/advance`).
async fn start_with(dir: &Path, clock: certvault_core::clock::SharedClock) -> Server {
    let opts = certvault_server::ServeOptions {
        database: certvault_testkit::test_database(dir),
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
    let ca = std::fs::read(&started.ca_path).unwrap();
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

    async fn put_issuer(&self, name: &str, body: Value) -> (u16, Value) {
        self.call(
            reqwest::Method::PUT,
            &format!("/certificates/issuers/{name}"),
            Some(body),
        )
        .await
    }

    /// POST create with a PEM policy for `names` from `issuer`; asserts the 202.
    async fn create(&self, cert: &str, issuer: &str, names: &[&str]) -> Value {
        let body = json!({"policy": {
            "key_props": {"kty": "EC", "crv": "P-256"},
            "secret_props": {"contentType": "application/x-pem-file"},
            "x509_props": {"subject": format!("CN={}", names[0]), "sans": {"dns_names": names}},
            "issuer": {"name": issuer}}});
        let (s, op) = self
            .call(
                reqwest::Method::POST,
                &format!("/certificates/{cert}/create"),
                Some(body),
            )
            .await;
        assert_eq!(s, 202, "{op}");
        assert_eq!(op["status"], "inProgress", "{op}");
        assert!(op["csr"].is_string());
        op
    }

    async fn pending(&self, cert: &str) -> Value {
        let (s, op) = self
            .call(
                reqwest::Method::GET,
                &format!("/certificates/{cert}/pending"),
                None,
            )
            .await;
        assert_eq!(s, 200, "{op}");
        op
    }

    /// Polls the pending operation until it leaves `inProgress`.
    async fn wait_done(&self, cert: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let op = self.pending(cert).await;
            if op["status"] != "inProgress" {
                return op;
            }
            assert!(Instant::now() < deadline, "still in progress: {op}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Polls until the status details contain `text` (while in progress).
    async fn wait_details(&self, cert: &str, text: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let op = self.pending(cert).await;
            assert_eq!(op["status"], "inProgress", "ended before '{text}': {op}");
            if op["status_details"].as_str().unwrap_or("").contains(text) {
                return op;
            }
            assert!(Instant::now() < deadline, "never '{text}': {op}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The managed secret (PEM: key, leaf, chain).
    async fn chain_pem(&self, cert: &str) -> String {
        let (s, secret) = self
            .call(reqwest::Method::GET, &format!("/secrets/{cert}/"), None)
            .await;
        assert_eq!(s, 200, "{secret}");
        secret["value"].as_str().unwrap().to_owned()
    }
}

fn issuer_body(pebble: &Pebble, bind: &Bind) -> Value {
    json!({
        "provider": "acme",
        "acme": {
            "directory": pebble.directory_url,
            "email": "ops@example.test",
            "terms_agreed": true,
            "ca_pem": pebble.tls_ca_pem,
            "dns": {
                "mode": "rfc2136",
                "zone": bind.zone,
                "server": bind.addr,
                "tsig_key_name": bind.key_name,
                "tsig_secret": bind.key_secret,
            }
        }
    })
}

async fn check_issued(srv: &Server, pebble: &Pebble, cert: &str, names: &[&str]) {
    let op = srv.wait_done(cert).await;
    assert_eq!(op["status"], "completed", "{op}\n{}", pebble.log());
    assert!(
        op["target"]
            .as_str()
            .unwrap()
            .ends_with(&format!("/certificates/{cert}"))
    );
    let (s, bundle) = srv
        .call(
            reqwest::Method::GET,
            &format!("/certificates/{cert}/"),
            None,
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(bundle["attributes"]["enabled"], true, "{bundle}");
    assert!(bundle["cer"].is_string());
    let pem = srv.chain_pem(cert).await;
    assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));
    let certs = &pem[pem.find("-----BEGIN CERTIFICATE-----").unwrap()..];
    openssl_verify(certs, &pebble.root_pem(0).await);
    let mut want: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(openssl_sans(certs), want);
}

#[tokio::test]
async fn issuer_settings_are_validated_and_secrets_never_shown() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(dir.path()).await;
    let tsig = "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0MTI=";
    let eab = "ZWFiLWhtYWMta2V5LXRoYXQtaXMtc2VjcmV0LTAxMjM0";
    let good = json!({
        "provider": "acme",
        "acme": {
            "directory": "letsencrypt-staging",
            "email": "ops@example.test",
            "terms_agreed": true,
            "eab_kid": "kid-1",
            "eab_hmac_key": eab,
            "preferred_chain": "ISRG Root X1",
            "dns": {"mode": "rfc2136", "zone": "example.test", "server": "127.0.0.1:53",
                    "tsig_key_name": "certvault", "tsig_secret": tsig}
        }
    });
    let bad_cases = [
        json!({"provider": "acme"}),
        json!({"provider": "acme", "acme": {"directory": "http://ca.example.test/dir", "dns": {"mode": "notify"}}}),
        json!({"provider": "acme", "acme": {"directory": "nosuchpreset", "dns": {"mode": "notify"}}}),
        json!({"provider": "acme", "acme": {"directory": "letsencrypt"}}),
        json!({"provider": "acme", "acme": {"directory": "letsencrypt", "dns": {"mode": "carrier-pigeon"}}}),
        json!({"provider": "acme", "acme": {"directory": "letsencrypt", "dns": {"mode": "rfc2136", "zone": "example.test"}}}),
        json!({"provider": "acme", "acme": {"directory": "letsencrypt", "eab_kid": "k", "dns": {"mode": "notify"}}}),
        json!({"provider": "acme", "acme": {"directory": "letsencrypt", "email": "no at sign", "dns": {"mode": "notify"}}}),
        json!({"provider": "acme", "acme": {"directory": "letsencrypt", "unknown": 1, "dns": {"mode": "notify"}}}),
        json!({"provider": "acme", "acme": {"directory": "letsencrypt", "ca_pem": "not pem", "dns": {"mode": "notify"}}}),
        json!({"provider": "Test", "acme": {"directory": "letsencrypt"}}),
    ];
    for b in bad_cases {
        let (s, e) = srv.put_issuer("le", b.clone()).await;
        assert_eq!(s, 400, "{b} → {e}");
        assert_eq!(e["error"]["code"], "BadParameter");
    }
    let (s, _) = srv
        .call(reqwest::Method::GET, "/certificates/issuers/le", None)
        .await;
    assert_eq!(s, 404, "nothing stored by refused requests");

    let (s, out) = srv.put_issuer("le", good).await;
    assert_eq!(s, 200, "{out}");
    let text = out.to_string();
    assert!(!text.contains(tsig) && !text.contains(eab), "{text}");
    assert_eq!(out["provider"], "acme");
    assert_eq!(
        out["acme"]["directory_url"],
        "https://acme-staging-v02.api.letsencrypt.org/directory"
    );
    assert_eq!(out["acme"]["preset"], "letsencrypt-staging");
    assert_eq!(out["acme"]["eab_kid"], "kid-1");
    assert_eq!(out["acme"]["eab_hmac_key_set"], true);
    assert_eq!(out["acme"]["dns"]["tsig_secret_set"], true);

    // PATCH changes one member and keeps the secrets.
    let (s, out) = srv
        .call(
            reqwest::Method::PATCH,
            "/certificates/issuers/le",
            Some(json!({"acme": {"email": "new@example.test"}})),
        )
        .await;
    assert_eq!(s, 200, "{out}");
    assert_eq!(out["acme"]["email"], "new@example.test");
    assert_eq!(out["acme"]["eab_hmac_key_set"], true);
    assert_eq!(out["acme"]["dns"]["tsig_secret_set"], true);
    let (s, got) = srv
        .call(reqwest::Method::GET, "/certificates/issuers/le", None)
        .await;
    assert_eq!(s, 200);
    assert_eq!(got, out);
    assert!(!got.to_string().contains(tsig));

    // A policy the CA cannot validate is refused before anything is stored.
    for sans in [
        json!({"dns_names": ["a.example.test"], "emails": ["x@example.test"]}),
        json!({"dns_names": ["a.*.example.test"]}),
        json!({"dns_names": ["localhost"]}),
    ] {
        let (s, e) = srv
            .call(
                reqwest::Method::POST,
                "/certificates/refused/create",
                Some(json!({"policy": {"x509_props": {"subject": "O=x", "sans": sans}, "issuer": {"name": "le"}}})),
            )
            .await;
        assert_eq!(s, 400, "{e}");
    }
    let (s, _) = srv
        .call(reqwest::Method::GET, "/certificates/refused/pending", None)
        .await;
    assert_eq!(s, 404);
    srv.stop().await;

    // The secrets are not in the database files in plain text.
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let p = entry.unwrap().path();
        if p.is_file() {
            let bytes = std::fs::read(&p).unwrap();
            for secret in [tsig, eab] {
                assert!(
                    !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                    "{} holds a secret",
                    p.display()
                );
            }
        }
    }
}

#[tokio::test]
async fn orders_single_san_and_wildcard_through_bind() {
    let bind = Bind::start("order.test");
    let pebble = Pebble::start(&PebbleOptions::new(&bind.addr)).await;
    let dir = tempfile::tempdir().unwrap();
    let srv = start(dir.path()).await;
    let (s, out) = srv.put_issuer("pebble", issuer_body(&pebble, &bind)).await;
    assert_eq!(s, 200, "{out}");

    let single = ["www.order.test"];
    let san = ["san.order.test", "www.san.order.test", "api.san.order.test"];
    let wild = ["*.wild.order.test", "wild.order.test"];
    let op = srv.create("single", "pebble", &single).await;
    assert!(
        op["status_details"].as_str().unwrap().contains("ACME"),
        "{op}"
    );
    srv.create("san", "pebble", &san).await;
    srv.create("wild", "pebble", &wild).await;
    check_issued(&srv, &pebble, "single", &single).await;
    check_issued(&srv, &pebble, "san", &san).await;
    check_issued(&srv, &pebble, "wild", &wild).await;
    assert_eq!(pebble.orders_created(), 3);
    // The records were removed again.
    for name in [
        "_acme-challenge.www.order.test",
        "_acme-challenge.wild.order.test",
        "_acme-challenge.san.order.test",
    ] {
        assert!(bind.dig_txt(name).is_empty(), "{name} left behind");
    }

    // A second certificate from the same issuer reuses the account; a new version of an
    // existing certificate is a new order.
    srv.create("single", "pebble", &single).await;
    check_issued(&srv, &pebble, "single", &single).await;
    let (_, versions) = srv
        .call(reqwest::Method::GET, "/certificates/single/versions", None)
        .await;
    assert_eq!(versions["value"].as_array().unwrap().len(), 2);
    assert_eq!(pebble.orders_created(), 4);

    // The CA's problem ends the operation failed, with its type: pebble refuses an account
    // that did not agree to its terms.
    let mut body = issuer_body(&pebble, &bind);
    body["acme"]["terms_agreed"] = json!(false);
    let (s, _) = srv.put_issuer("noterms", body).await;
    assert_eq!(s, 200);
    srv.create("refused", "noterms", &["refused.order.test"])
        .await;
    let op = srv.wait_done("refused").await;
    assert_eq!(op["status"], "failed", "{op}");
    let code = op["error"]["code"].as_str().unwrap();
    assert!(code.starts_with("urn:ietf:params:acme:error:"), "{op}");
    assert!(!op["error"]["message"].as_str().unwrap().is_empty(), "{op}");
    // The failed operation left no pending version behind.
    let (s, _) = srv
        .call(reqwest::Method::GET, "/certificates/refused/", None)
        .await;
    assert_eq!(s, 404);
    srv.stop().await;
}

#[tokio::test]
async fn failed_validation_fails_the_operation_with_the_problem_type() {
    // Pebble's VA asks a server that does not have the records that certvault published to
    // BIND: the authorization becomes invalid.
    let bind = Bind::start("fail.test");
    let chall = ChallTestSrv::start();
    let pebble = Pebble::start(&PebbleOptions::new(&chall.dns_addr)).await;
    let dir = tempfile::tempdir().unwrap();
    let srv = start(dir.path()).await;
    let (s, _) = srv.put_issuer("pebble", issuer_body(&pebble, &bind)).await;
    assert_eq!(s, 200);
    srv.create("bad", "pebble", &["bad.fail.test"]).await;
    let op = srv.wait_done("bad").await;
    assert_eq!(op["status"], "failed", "{op}");
    assert_eq!(
        op["error"]["code"], "urn:ietf:params:acme:error:unauthorized",
        "{op}"
    );
    assert_eq!(op["error"]["innererror"]["code"], "unauthorized");
    assert!(bind.dig_txt("_acme-challenge.bad.fail.test").is_empty());
    // A new create is allowed after the failure.
    let (s, _) = srv
        .call(reqwest::Method::GET, "/certificates/bad/pending", None)
        .await;
    assert_eq!(s, 200);
    srv.stop().await;
}

#[tokio::test]
async fn cancel_and_restart_mid_order() {
    let bind = Bind::start("resume.test");
    let mut opts = PebbleOptions::new(&bind.addr);
    opts.va_sleep = true;
    let pebble = Pebble::start(&opts).await;
    let dir = tempfile::tempdir().unwrap();
    let srv = start(dir.path()).await;
    let (s, _) = srv.put_issuer("pebble", issuer_body(&pebble, &bind)).await;
    assert_eq!(s, 200);

    // Cancel while the CA validates: the operation is cancelled and the record removed.
    srv.create("cancel", "pebble", &["cancel.resume.test"])
        .await;
    srv.wait_details("cancel", "waiting for the CA to validate")
        .await;
    assert_eq!(bind.dig_txt("_acme-challenge.cancel.resume.test").len(), 1);
    let (s, op) = srv
        .call(
            reqwest::Method::PATCH,
            "/certificates/cancel/pending",
            Some(json!({"cancellation_requested": true})),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(op["status"], "cancelled");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !bind
        .dig_txt("_acme-challenge.cancel.resume.test")
        .is_empty()
    {
        assert!(Instant::now() < deadline, "record not removed after cancel");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(srv.pending("cancel").await["status"], "cancelled");

    // Stop the server once the order exists at the CA; the next start resumes it.
    let names = ["resume.test", "*.resume.test"];
    srv.create("resumed", "pebble", &names).await;
    srv.wait_details("resumed", "ACME order created").await;
    let before = pebble.orders_created();
    srv.stop().await;
    let srv = start(dir.path()).await;
    check_issued(&srv, &pebble, "resumed", &names).await;
    assert_eq!(
        pebble.orders_created(),
        before,
        "no second order after the restart"
    );
    srv.stop().await;
}

/// The records a notify-mode operation waits for, from its status details
/// (`NAME TXT "VALUE"; …`).
fn wanted_records(op: &Value) -> Vec<(String, String)> {
    let details = op["status_details"].as_str().unwrap();
    let list = details.rsplit_once("): ").unwrap().1.trim_end_matches('.');
    list.split("; ")
        .map(|item| {
            let (name, value) = item.split_once(" TXT ").unwrap();
            (name.to_owned(), value.trim_matches('"').to_owned())
        })
        .collect()
}

#[tokio::test]
async fn notify_mode_waits_for_the_user_and_the_window() {
    let bind = Bind::start("notify.test");
    let pebble = Pebble::start(&PebbleOptions::new(&bind.addr)).await;
    let dir = tempfile::tempdir().unwrap();
    let srv = start(dir.path()).await;
    let notify = |window: u64| {
        json!({
            "provider": "acme",
            "acme": {
                "directory": pebble.directory_url,
                "terms_agreed": true,
                "ca_pem": pebble.tls_ca_pem,
                "dns": {"mode": "notify", "zone": bind.zone, "nameservers": [bind.addr],
                        "window_seconds": window}
            }
        })
    };
    let (s, out) = srv.put_issuer("manual", notify(600)).await;
    assert_eq!(s, 200, "{out}");
    assert_eq!(out["acme"]["dns"]["mode"], "notify");

    // The user (this test) sets the records the operation asks for; certvault sees them on
    // the authoritative server and has the CA validate. Wildcard + apex: two values, one name.
    let names = ["notify.test", "*.notify.test"];
    srv.create("manual", "manual", &names).await;
    let op = srv
        .wait_details("manual", "waiting for the DNS-01 TXT records")
        .await;
    let records = wanted_records(&op);
    assert_eq!(records.len(), 2, "{op}");
    let dns = certvault_dns::Rfc2136::new(
        &bind.zone,
        &bind.addr,
        certvault_dns::TsigKey::hmac_sha256(&bind.key_name, &bind.key_secret).unwrap(),
    )
    .unwrap();
    for (name, value) in &records {
        dns.append_txt(name, value, 60).await.unwrap();
    }
    check_issued(&srv, &pebble, "manual", &names).await;
    // The user was told through the outbox (the vault's channels and contacts): one
    // `cert_domain_validation_required` per record, with the seed's fields at the top level,
    // and the notice to remove them afterwards.
    let (s, ev) = srv
        .call(
            reqwest::Method::GET,
            "/admin/v1/vaults/default/events?certificate=manual",
            None,
        )
        .await;
    assert_eq!(s, 200, "{ev}");
    let evs = ev["value"].as_array().unwrap();
    let of = |t: &str| -> Vec<&Value> { evs.iter().filter(|e| e["event_type"] == t).collect() };
    let required = of("cert_domain_validation_required");
    assert_eq!(required.len(), 2, "{ev}");
    let mut told: Vec<(String, String)> = required
        .iter()
        .map(|e| {
            (
                e["txt_record_name"].as_str().unwrap().to_owned(),
                e["txt_record_val"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    told.sort();
    let mut wanted = records.clone();
    wanted.sort();
    assert_eq!(told, wanted);
    assert!(
        required
            .iter()
            .all(|e| e["domain"].is_string() && e["id"].is_string())
    );
    assert_eq!(of("cert_domain_validation_completed").len(), 2, "{ev}");

    // The authoritative check cannot see the records (it asks a server that does not answer),
    // but the user acknowledges: the CA is asked at once.
    let mut body = notify(600);
    body["acme"]["dns"]["nameservers"] =
        json!([format!("127.0.0.1:{}", certvault_testkit::free_port())]);
    let (s, _) = srv.put_issuer("acked", body).await;
    assert_eq!(s, 200);
    let (s, e) = srv
        .call(
            reqwest::Method::POST,
            "/certificates/manual/pending/acknowledge",
            None,
        )
        .await;
    assert_eq!(s, 404, "nothing in progress: {e}");
    srv.create("acked", "acked", &["www.notify.test"]).await;
    let op = srv
        .wait_details("acked", "waiting for the DNS-01 TXT records")
        .await;
    for (name, value) in wanted_records(&op) {
        dns.append_txt(&name, &value, 60).await.unwrap();
    }
    let (s, op) = srv
        .call(
            reqwest::Method::POST,
            "/certificates/acked/pending/acknowledge",
            None,
        )
        .await;
    assert_eq!(s, 200, "{op}");
    check_issued(&srv, &pebble, "acked", &["www.notify.test"]).await;

    // Nobody sets the record: the window passes and the order fails with a clear reason.
    let (s, _) = srv.put_issuer("short", notify(10)).await;
    assert_eq!(s, 200);
    srv.create("late", "short", &["late.notify.test"]).await;
    let op = srv.wait_done("late").await;
    assert_eq!(op["status"], "failed", "{op}");
    let msg = op["error"]["message"].as_str().unwrap();
    assert!(msg.contains("not visible") && msg.contains("10 s"), "{op}");
    let (_, ev) = srv
        .call(
            reqwest::Method::GET,
            "/admin/v1/vaults/default/events?certificate=late&type=order_failed",
            None,
        )
        .await;
    assert_eq!(ev["value"].as_array().map(Vec::len), Some(1), "{ev}");
    srv.stop().await;
}

#[tokio::test]
async fn external_account_binding() {
    let bind = Bind::start("eab.test");
    let hmac = {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(certvault_testkit::random_bytes(32))
    };
    let mut opts = PebbleOptions::new(&bind.addr);
    opts.eab = Some(vec![("kid-1".into(), hmac.clone())]);
    let pebble = Pebble::start(&opts).await;
    let dir = tempfile::tempdir().unwrap();
    let srv = start(dir.path()).await;

    // Without EAB the CA (whose directory requires it) is not asked: the operation fails.
    let (s, _) = srv.put_issuer("noeab", issuer_body(&pebble, &bind)).await;
    assert_eq!(s, 200);
    srv.create("noeab", "noeab", &["noeab.eab.test"]).await;
    let op = srv.wait_done("noeab").await;
    assert_eq!(op["status"], "failed", "{op}");
    assert!(
        op["error"]["message"]
            .as_str()
            .unwrap()
            .contains("External Account Binding"),
        "{op}"
    );

    // With the key id and HMAC key given as Key Vault credentials (account_id / pwd).
    let mut body = issuer_body(&pebble, &bind);
    body["credentials"] = json!({"account_id": "kid-1", "pwd": hmac});
    let (s, out) = srv.put_issuer("eab", body).await;
    assert_eq!(s, 200, "{out}");
    assert!(!out.to_string().contains(&hmac));
    assert_eq!(out["acme"]["eab_kid"], "kid-1");
    srv.create("eab", "eab", &["www.eab.test"]).await;
    check_issued(&srv, &pebble, "eab", &["www.eab.test"]).await;
    srv.stop().await;
}

#[tokio::test]
async fn concurrent_orders_with_half_the_nonces_rejected() {
    let bind = Bind::start("many.test");
    let mut opts = PebbleOptions::new(&bind.addr);
    opts.nonce_reject_percent = 50;
    let pebble = Pebble::start(&opts).await;
    let dir = tempfile::tempdir().unwrap();
    let srv = start(dir.path()).await;
    let (s, _) = srv.put_issuer("pebble", issuer_body(&pebble, &bind)).await;
    assert_eq!(s, 200);
    let names: Vec<[String; 2]> = (0..10)
        .map(|i| [format!("c{i}.many.test"), format!("*.c{i}.many.test")])
        .collect();
    for (i, n) in names.iter().enumerate() {
        let refs: Vec<&str> = n.iter().map(String::as_str).collect();
        srv.create(&format!("c{i}"), "pebble", &refs).await;
    }
    for (i, n) in names.iter().enumerate() {
        let refs: Vec<&str> = n.iter().map(String::as_str).collect();
        check_issued(&srv, &pebble, &format!("c{i}"), &refs).await;
    }
    // One account for all of them, one order each.
    assert_eq!(pebble.log().matches("There are now 1 accounts").count(), 1);
    assert_eq!(pebble.orders_created(), 10);
    srv.stop().await;
}

#[tokio::test]
async fn dns_settings_per_domain_suffix() {
    let bind = Bind::start("suf.test");
    let pebble = Pebble::start(&PebbleOptions::new(&bind.addr)).await;
    let dir = tempfile::tempdir().unwrap();
    let srv = start(dir.path()).await;
    // The default settings hold a key BIND does not know; names under ok.suf.test use the
    // right one.
    let mut body = issuer_body(&pebble, &bind);
    body["acme"]["dns"]["tsig_secret"] = json!("d3Jvbmctd3Jvbmctd3Jvbmctd3Jvbmctd3Jvbmc=");
    body["acme"]["dns_suffixes"] = json!([{
        "suffix": "ok.suf.test",
        "dns": {"mode": "rfc2136", "zone": bind.zone, "server": bind.addr,
                "tsig_key_name": bind.key_name, "tsig_secret": bind.key_secret}
    }]);
    let (s, out) = srv.put_issuer("split", body).await;
    assert_eq!(s, 200, "{out}");
    assert!(!out.to_string().contains(&bind.key_secret));
    assert_eq!(
        out["acme"]["dns_suffixes"][0]["dns"]["tsig_secret_set"],
        true
    );
    // Sent again without its secret, an entry keeps the stored one.
    let (s, out) = srv
        .call(
            reqwest::Method::PATCH,
            "/certificates/issuers/split",
            Some(json!({"acme": {"dns_suffixes": [{"suffix": "ok.suf.test", "dns": {"server": bind.addr}}]}})),
        )
        .await;
    assert_eq!(s, 200, "{out}");
    assert_eq!(
        out["acme"]["dns_suffixes"][0]["dns"]["tsig_secret_set"],
        true
    );
    let (s, e) = srv
        .call(
            reqwest::Method::PATCH,
            "/certificates/issuers/split",
            Some(json!({"acme": {"dns_suffixes": [{"suffix": "x.test", "dns": {"mode": "rfc2136"}}]}})),
        )
        .await;
    assert_eq!(s, 400, "{e}");

    let names = ["ok.suf.test", "*.ok.suf.test", "www.ok.suf.test"];
    srv.create("split", "split", &names).await;
    check_issued(&srv, &pebble, "split", &names).await;
    srv.stop().await;
}

// ------------------------------------------------------------------------------ renewal, ARI

/// A create body for `names` from `issuer`: EC P-256, PEM, key reuse as asked, AutoRenew at
/// 80 % of the lifetime.
fn renewing_policy(issuer: &str, names: &[&str], reuse_key: bool) -> Value {
    json!({"policy": {
        "key_props": {"kty": "EC", "crv": "P-256", "reuse_key": reuse_key},
        "secret_props": {"contentType": "application/x-pem-file"},
        "x509_props": {"subject": format!("CN={}", names[0]), "sans": {"dns_names": names}},
        "lifetime_actions": [{"trigger": {"lifetime_percentage": 80}, "action": {"action_type": "AutoRenew"}}],
        "issuer": {"name": issuer}}})
}

impl Server {
    async fn create_body(&self, cert: &str, body: Value) {
        let (s, op) = self
            .call(
                reqwest::Method::POST,
                &format!("/certificates/{cert}/create"),
                Some(body),
            )
            .await;
        assert_eq!(s, 202, "{op}");
    }

    /// The current version: (version id, leaf DER, created).
    async fn current(&self, cert: &str) -> (String, Vec<u8>, i64) {
        let (s, b) = self
            .call(
                reqwest::Method::GET,
                &format!("/certificates/{cert}/"),
                None,
            )
            .await;
        assert_eq!(s, 200, "{b}");
        use base64::Engine as _;
        let der = base64::engine::general_purpose::STANDARD
            .decode(b["cer"].as_str().unwrap())
            .unwrap();
        let version = b["id"]
            .as_str()
            .unwrap()
            .rsplit('/')
            .next()
            .unwrap()
            .to_owned();
        (version, der, b["attributes"]["created"].as_i64().unwrap())
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

    /// The `certvault_certificate_next_renewal_timestamp_seconds` sample of `cert` in `/metrics`.
    async fn planned_renewal(&self, cert: &str) -> Option<i64> {
        let resp = self
            .http
            .get(format!("{}/metrics", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        let text = resp.text().await.unwrap();
        let label = format!("name=\"{cert}\"");
        text.lines()
            .filter(|l| l.starts_with("certvault_certificate_next_renewal_timestamp_seconds{"))
            .find(|l| l.contains(&label))
            .and_then(|l| l.rsplit(' ').next())
            .map(|v| v.parse().unwrap())
    }

    async fn now(&self) -> i64 {
        let (s, v) = self
            .call(reqwest::Method::GET, "/admin/v1/test-clock", None)
            .await;
        assert_eq!(s, 200, "{v}");
        v["now"].as_i64().unwrap()
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

    /// Renews on demand through the Key Vault route; returns the new version.
    async fn renew(&self, cert: &str, rekey: bool) -> String {
        let (s, r) = self
            .call(
                reqwest::Method::POST,
                &format!("/certificates/{cert}/renew"),
                Some(json!({"rekey": rekey})),
            )
            .await;
        assert_eq!(s, 201, "{r}");
        assert_eq!(
            r["status"], "inProgress",
            "an ACME renewal is an order: {r}"
        );
        r["version"].as_str().unwrap().to_owned()
    }

    /// Waits until the current version differs from `old` and its operation completed.
    async fn wait_new_version(&self, cert: &str, old: &str) -> (String, Vec<u8>, i64) {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let op = self.pending(cert).await;
            if op["status"] == "completed" {
                let cur = self.current(cert).await;
                if cur.0 != old {
                    return cur;
                }
            }
            assert_ne!(op["status"], "failed", "{op}");
            assert!(Instant::now() < deadline, "no new version: {op}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn spki(der: &[u8]) -> Vec<u8> {
    certvault_crypto::parse_certificate(der)
        .unwrap()
        .public_key
        .spki_der()
        .to_vec()
}

fn rfc3339(t: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(t)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

#[tokio::test]
async fn renewal_on_demand_and_by_the_lifecycle_engine() {
    let bind = Bind::start("renew.test");
    let mut opts = PebbleOptions::new(&bind.addr);
    opts.validity_seconds = Some(86_400);
    let pebble = Pebble::start(&opts).await;
    let dir = tempfile::tempdir().unwrap();
    let srv = start_with(dir.path(), Arc::new(certvault_core::TestClock::new())).await;
    let (s, _) = srv.put_issuer("pebble", issuer_body(&pebble, &bind)).await;
    assert_eq!(s, 200);
    let names = ["renew.test", "*.renew.test", "www.renew.test"];
    srv.create_body("ren", renewing_policy("pebble", &names, true))
        .await;
    check_issued(&srv, &pebble, "ren", &names).await;
    let (v1, leaf1, _) = srv.current("ren").await;

    // On demand, keeping the key (the policy says reuse_key): a new order, a new version with
    // the same public key.
    let v2 = srv.renew("ren", false).await;
    assert_ne!(v2, v1);
    let (cur, leaf2, _) = srv.wait_new_version("ren", &v1).await;
    assert_eq!(cur, v2);
    check_issued(&srv, &pebble, "ren", &names).await;
    assert_ne!(leaf2, leaf1);
    assert_eq!(spki(&leaf2), spki(&leaf1), "reuse-key keeps the public key");

    // On demand with rekey: a new key.
    let v3 = srv.renew("ren", true).await;
    let (cur, leaf3, _) = srv.wait_new_version("ren", &v2).await;
    assert_eq!(cur, v3);
    check_issued(&srv, &pebble, "ren", &names).await;
    assert_ne!(spki(&leaf3), spki(&leaf2), "rekey changes the public key");
    assert_eq!(srv.versions("ren").await, 3, "earlier versions are kept");
    assert_eq!(pebble.orders_created(), 3);

    // By the lifecycle engine: AutoRenew at 80 % of pebble's one-day lifetime (+ jitter ≤ 1 %).
    srv.advance(86_400 * 80 / 100 + 900).await;
    let (v4, leaf4, _) = srv.wait_new_version("ren", &v3).await;
    check_issued(&srv, &pebble, "ren", &names).await;
    assert_eq!(spki(&leaf4), spki(&leaf3), "the engine reuses the key too");
    assert_eq!(srv.versions("ren").await, 4);
    // The new version is due by the old trigger already (pebble dates it by the wall clock):
    // it is renewed after two thirds of its remaining life, not at once, again and again.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(srv.current("ren").await.0, v4);
    assert_eq!(srv.versions("ren").await, 4);
    assert_eq!(pebble.orders_created(), 4);
    // The previous versions are still there with their certificates.
    for v in [&v1, &v2, &v3] {
        let (s, b) = srv
            .call(
                reqwest::Method::GET,
                &format!("/certificates/ren/{v}"),
                None,
            )
            .await;
        assert_eq!(s, 200, "{b}");
        assert!(b["cer"].is_string());
    }
    srv.stop().await;
}

#[tokio::test]
async fn ari_window_decides_when_the_engine_renews_and_the_order_replaces() {
    let bind = Bind::start("ari.test");
    let pebble = Pebble::start(&PebbleOptions::new(&bind.addr)).await;
    let ari = AriStandIn::start(&pebble).await;
    let dir = tempfile::tempdir().unwrap();
    let srv = start_with(dir.path(), Arc::new(certvault_core::TestClock::new())).await;
    let mut body = issuer_body(&pebble, &bind);
    body["acme"]["directory"] = json!(ari.directory_url);
    let (s, out) = srv.put_issuer("ari", body).await;
    assert_eq!(s, 200, "{out}");

    // Far window for every certificate; Retry-After 600 s.
    let t0 = srv.now().await;
    ari.set_window(None, &rfc3339(t0 + 30 * 86_400), &rfc3339(t0 + 31 * 86_400));
    ari.set_retry_after(Some(600));
    let names = ["ari.test", "www.ari.test"];
    srv.create_body("ari", renewing_policy("ari", &names, false))
        .await;
    check_issued(&srv, &pebble, "ari", &names).await;
    let (v1, leaf1, _) = srv.current("ari").await;
    let id1 = certvault_acme::ari_cert_id(&leaf1).unwrap();
    assert_eq!(ari.replaces(), vec![None], "a first order replaces nothing");

    // The engine asks the CA once the version exists; the window is far: no renewal.
    let deadline = Instant::now() + Duration::from_secs(30);
    while ari.asked().is_empty() {
        assert!(Instant::now() < deadline, "renewalInfo never asked");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(ari.asked(), vec![id1.clone()]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(srv.versions("ari").await, 1, "far window: not renewed");
    // The planned-renewal gauge reports the engine's time: inside the CA's window, not the
    // lifetime action's 80 % (years away with pebble's certificates). The section is cached 5 s.
    let window = (t0 + 30 * 86_400)..=(t0 + 31 * 86_400);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let planned = srv.planned_renewal("ari").await;
        if planned.is_some_and(|p| window.contains(&p)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "planned renewal {planned:?} is not in the ARI window {window:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // The window moves into the past, but Retry-After (600 s) has not passed: not asked again.
    ari.set_window(Some(&id1), &rfc3339(t0 - 7200), &rfc3339(t0 - 3600));
    srv.advance(300).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(ari.asked().len(), 1, "asked again before Retry-After");
    assert_eq!(srv.versions("ari").await, 1);
    // After Retry-After it asks again, and renews at once, replacing the old certificate.
    srv.advance(400).await;
    let (v2, leaf2, _) = srv.wait_new_version("ari", &v1).await;
    check_issued(&srv, &pebble, "ari", &names).await;
    assert_eq!(ari.asked()[..2], [id1.clone(), id1.clone()]);
    assert_eq!(ari.replaces(), vec![None, Some(id1.clone())]);

    // A window ahead: renewed inside it (the test moves the clock in 5-minute steps).
    let id2 = certvault_acme::ari_cert_id(&leaf2).unwrap();
    let now = srv.now().await;
    let (start, end) = (now + 3600, now + 7200);
    ari.set_window(Some(&id2), &rfc3339(start), &rfc3339(end));
    // The engine's first look at v2 may have seen the far default window: wait for its
    // Retry-After to pass before the window starts (both are before `start`).
    srv.advance(3600).await;
    // Up to the window's end in steps shorter than Retry-After; the engine's own tick (1 s)
    // covers the last seconds.
    let deadline = Instant::now() + Duration::from_secs(60);
    while srv.versions("ari").await <= 2 {
        assert!(Instant::now() < deadline, "not renewed inside the window");
        let clock = srv.now().await;
        if clock < end - 10 {
            srv.advance((end - 5 - clock).min(300)).await;
        }
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    let (v3, _, created) = srv.wait_new_version("ari", &v2).await;
    assert_ne!(v3, v2);
    assert!(
        created >= start && created <= end + 2,
        "renewed at {created}, outside [{start}, {end}] (+ the engine's tick)"
    );
    assert_eq!(
        ari.replaces().last().unwrap().as_deref(),
        Some(id2.as_str())
    );
    // The new certificate's window is the far default: nothing more.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(srv.versions("ari").await, 3);
    assert_eq!(pebble.orders_created(), 3);

    // On demand, the order replaces the current certificate too.
    let (v3, leaf3, _) = srv.current("ari").await;
    srv.renew("ari", false).await;
    srv.wait_new_version("ari", &v3).await;
    let id3 = certvault_acme::ari_cert_id(&leaf3).unwrap();
    assert_eq!(
        ari.replaces().last().unwrap().as_deref(),
        Some(id3.as_str())
    );
    srv.stop().await;
}

#[tokio::test]
async fn wrong_txt_value_fails_the_order_with_the_ca_problem() {
    let bind = Bind::start("wrong.test");
    let pebble = Pebble::start(&PebbleOptions::new(&bind.addr)).await;
    let dir = tempfile::tempdir().unwrap();
    let srv = start(dir.path()).await;
    let (s, out) = srv
        .put_issuer(
            "manual",
            json!({
                "provider": "acme",
                "acme": {
                    "directory": pebble.directory_url,
                    "terms_agreed": true,
                    "ca_pem": pebble.tls_ca_pem,
                    "dns": {"mode": "notify", "zone": bind.zone, "nameservers": [bind.addr]}
                }
            }),
        )
        .await;
    assert_eq!(s, 200, "{out}");
    srv.create("wrong", "manual", &["www.wrong.test"]).await;
    let op = srv
        .wait_details("wrong", "waiting for the DNS-01 TXT records")
        .await;
    let dns = certvault_dns::Rfc2136::new(
        &bind.zone,
        &bind.addr,
        certvault_dns::TsigKey::hmac_sha256(&bind.key_name, &bind.key_secret).unwrap(),
    )
    .unwrap();
    // The user sets a wrong value: the authoritative check does not accept it …
    for (name, value) in wanted_records(&op) {
        dns.append_txt(&name, &format!("x{value}"), 60)
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let op = srv.pending("wrong").await;
    assert_eq!(op["status"], "inProgress", "{op}");
    assert!(
        op["status_details"]
            .as_str()
            .unwrap()
            .contains("waiting for the DNS-01 TXT records"),
        "{op}"
    );
    // … and when the user acknowledges anyway, the CA sees the wrong value and refuses.
    let (s, _) = srv
        .call(
            reqwest::Method::POST,
            "/certificates/wrong/pending/acknowledge",
            None,
        )
        .await;
    assert_eq!(s, 200);
    let op = srv.wait_done("wrong").await;
    assert_eq!(op["status"], "failed", "{op}");
    assert_eq!(
        op["error"]["code"], "urn:ietf:params:acme:error:unauthorized",
        "{op}"
    );
    assert!(!op["error"]["message"].as_str().unwrap().is_empty());
    srv.stop().await;
}
