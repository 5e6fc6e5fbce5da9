//! Token expiry with a controlled clock: the admin API's shortest expiry is one day, so the real
//! binary (wall clock) cannot show a token expiring within a test run. The server runs in-process
//! here with a clock the test moves forward.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use certvault_core::clock::Clock;
use serde_json::{Value, json};

/// A clock that only moves when the test says so.
#[derive(Debug)]
struct ManualClock(AtomicI64);

impl Clock for ManualClock {
    fn now(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

impl ManualClock {
    fn advance(&self, seconds: i64) {
        self.0.fetch_add(seconds, Ordering::SeqCst);
    }
}

fn opts(dir: &Path) -> certvault_server::ServeOptions {
    certvault_server::ServeOptions {
        max_body: 256 * 1024,
        database: certvault_testkit::test_database(dir),
        ..certvault_server::ServeOptions::local(dir, "certvault.test")
    }
}

struct Client {
    base: String,
    http: reqwest::Client,
}

impl Client {
    async fn call(
        &self,
        token: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let sep = if path.contains('?') { '&' } else { '?' };
        let mut req = self
            .http
            .request(method, format!("{}{path}{sep}api-version=7.4", self.base))
            .bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let challenge = resp.headers().contains_key("www-authenticate");
        let text = resp.text().await.unwrap();
        let mut v: Value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap()
        };
        if status == 401 {
            assert!(challenge, "401 without a challenge: {text}");
            v["challenge"] = json!(true);
        }
        (status, v)
    }
}

#[tokio::test]
async fn tokens_stop_working_at_their_expiry_and_not_before() {
    let dir = tempfile::tempdir().unwrap();
    let start = certvault_core::SystemClock.now();
    let clock = Arc::new(ManualClock(AtomicI64::new(start)));
    let shared: certvault_core::clock::SharedClock = clock.clone();
    let started = certvault_server::start(&opts(dir.path()), shared)
        .await
        .expect("server starts");
    let port = started.addr.port();
    let ca = std::fs::read(&started.ca_path).unwrap();
    let admin = std::fs::read_to_string(&started.token_path)
        .unwrap()
        .trim()
        .to_owned();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        started
            .run(async {
                let _ = rx.await;
            })
            .await
            .unwrap();
    });
    let c = Client {
        base: format!("https://127.0.0.1:{port}"),
        http: reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(&ca).unwrap()])
            .build()
            .unwrap(),
    };
    use reqwest::Method as M;

    // a principal whose token expires in one day, allowed to list certificates
    let (s, out) = c
        .call(
            &admin,
            M::POST,
            "/admin/v1/principals",
            Some(json!({"name": "short-lived", "token_expires_in_days": 1})),
        )
        .await;
    assert_eq!(s, 201, "{out}");
    let token = out["token"]["token"].as_str().unwrap().to_owned();
    assert_eq!(out["token"]["expires"], json!(start + 86_400), "{out}");
    let (s, out) = c
        .call(
            &admin,
            M::PUT,
            "/admin/v1/vaults/default/access-policies/short-lived",
            Some(json!({"certificates": ["list"]})),
        )
        .await;
    assert_eq!(s, 200, "{out}");
    // and one without expiry
    let (s, out) = c
        .call(
            &admin,
            M::POST,
            "/admin/v1/principals/short-lived/tokens",
            Some(json!({"label": "no expiry"})),
        )
        .await;
    assert_eq!(s, 201, "{out}");
    let lasting = out["token"].as_str().unwrap().to_owned();

    let list = |t: String| {
        let c = &c;
        async move { c.call(&t, M::GET, "/certificates", None).await }
    };
    assert_eq!(list(token.clone()).await.0, 200);

    // one second before expiry: still valid (resolved again from the store, the cache entry
    // being older than its lifetime)
    clock.advance(86_399);
    assert_eq!(list(token.clone()).await.0, 200);

    // at expiry: refused with 401 and the challenge, also while the resolved token is cached
    clock.advance(1);
    let (s, body) = list(token.clone()).await;
    assert_eq!(s, 401, "{body}");
    assert_eq!(body["error"]["code"], "Unauthorized", "{body}");
    assert!(
        !body.to_string().contains(&token),
        "the refusal must not echo the token: {body}"
    );
    // and later, after the cache entry is gone
    clock.advance(3_600);
    assert_eq!(list(token.clone()).await.0, 401);

    // the admin API too: an expired token of an administrator is refused
    let (s, out) = c
        .call(
            &admin,
            M::POST,
            "/admin/v1/principals",
            Some(json!({"name": "short-admin", "admin": true, "token_expires_in_days": 1})),
        )
        .await;
    assert_eq!(s, 201, "{out}");
    let admin_short = out["token"]["token"].as_str().unwrap().to_owned();
    assert_eq!(
        c.call(&admin_short, M::GET, "/admin/v1/principals", None)
            .await
            .0,
        200
    );
    clock.advance(86_400);
    assert_eq!(
        c.call(&admin_short, M::GET, "/admin/v1/principals", None)
            .await
            .0,
        401
    );

    // tokens without expiry, and the bootstrap token, are unaffected
    assert_eq!(list(lasting).await.0, 200);
    assert_eq!(
        c.call(&admin, M::GET, "/admin/v1/principals", None).await.0,
        200
    );

    let _ = tx.send(());
    task.await.unwrap();
}
