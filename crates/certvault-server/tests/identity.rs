//! Integration tests of JWT bearer tokens (JWKS served over HTTPS by the test) and of the
//! managed-identity (Azure Arc style) token endpoint, against the real server.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::convert::Infallible;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use certvault_crypto::{Curve, Jwk, KeyAlg, PrivateKey, SignAlg};
use certvault_server::identity::IdentitySettings;
use certvault_server::jwt::{JwksSource, JwtSettings};
use serde_json::{Value, json};

const ISSUER: &str = "https://idp.certvault.test/tenant";

/// A JWKS document served over HTTPS, counting requests.
struct JwksServer {
    url: String,
    ca: PathBuf,
    doc: Arc<Mutex<Value>>,
    hits: Arc<AtomicUsize>,
    _dir: tempfile::TempDir,
}

async fn jwks_server(doc: Value) -> JwksServer {
    // TLS material: a throwaway data directory's local CA and server certificate.
    let dir = tempfile::tempdir().unwrap();
    let dd = certvault_server::bootstrap::open_data_dir(
        dir.path(),
        None,
        "idp.certvault.test",
        now(),
        None,
        certvault_server::masterkey::MasterKind::File,
    )
    .await
    .unwrap();
    dd.store.close();
    let tls = Arc::new(
        certvault_server::bootstrap::tls_config(&dd.server_cert_path, &dd.server_key_path).unwrap(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let doc = Arc::new(Mutex::new(doc));
    let hits = Arc::new(AtomicUsize::new(0));
    let (d, h) = (doc.clone(), hits.clone());
    tokio::spawn(async move {
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let (acceptor, d, h) = (acceptor.clone(), d.clone(), h.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper::service::service_fn(move |req: http::Request<_>| {
                    let (d, h) = (d.clone(), h.clone());
                    async move {
                        let mut r =
                            http::Response::new(http_body_util::Full::new(bytes::Bytes::new()));
                        if req.uri().path() == "/keys" {
                            h.fetch_add(1, Ordering::SeqCst);
                            let body = serde_json::to_vec(&*d.lock().unwrap()).unwrap();
                            *r.body_mut() = http_body_util::Full::new(bytes::Bytes::from(body));
                        } else {
                            *r.status_mut() = http::StatusCode::NOT_FOUND;
                        }
                        Ok::<_, Infallible>(r)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                .await;
            });
        }
    });
    JwksServer {
        url: format!("https://127.0.0.1:{port}/keys"),
        ca: dd.ca_path,
        doc,
        hits,
        _dir: dir,
    }
}

fn jwk(key: &PrivateKey, kid: &str) -> Value {
    match key.public_key().jwk() {
        Jwk::Rsa { n, e } => json!({"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256",
            "n": URL_SAFE_NO_PAD.encode(n), "e": URL_SAFE_NO_PAD.encode(e)}),
        Jwk::Ec { crv, x, y } => json!({"kty": "EC", "kid": kid, "crv": crv.as_str(),
            "x": URL_SAFE_NO_PAD.encode(x), "y": URL_SAFE_NO_PAD.encode(y)}),
    }
}

fn jwt(key: &PrivateKey, alg: SignAlg, kid: &str, claims: &Value) -> String {
    let enc = |v: &Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap());
    let input = format!(
        "{}.{}",
        enc(&json!({"alg": alg.as_str(), "typ": "JWT", "kid": kid})),
        enc(claims)
    );
    let sig = certvault_crypto::sign(key, alg, &alg.digest(input.as_bytes())).unwrap();
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

struct Server {
    base: String,
    resource: String,
    admin: String,
    identity: Option<String>,
    http: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

fn opts(dir: &Path) -> certvault_server::ServeOptions {
    certvault_server::ServeOptions {
        max_body: 256 * 1024,
        database: certvault_testkit::test_database(dir),
        ..certvault_server::ServeOptions::local(dir, "certvault.test")
    }
}

async fn start(o: certvault_server::ServeOptions) -> Server {
    let clock: certvault_core::clock::SharedClock = Arc::new(certvault_core::SystemClock);
    let started = certvault_server::start(&o, clock).await.expect("starts");
    let port = started.addr.port();
    let admin = std::fs::read_to_string(&started.token_path)
        .unwrap()
        .trim()
        .to_owned();
    let cert = reqwest::Certificate::from_pem(&std::fs::read(&started.ca_path).unwrap()).unwrap();
    let http = reqwest::Client::builder()
        .tls_certs_only([cert])
        .build()
        .unwrap();
    let identity = started.identity_addr.map(|a| format!("http://{a}"));
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
        base: format!("https://127.0.0.1:{port}"),
        resource: format!("https://certvault.test:{port}"),
        admin,
        identity,
        http,
        stop: Some(tx),
        task: Some(task),
    }
}

impl Server {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (u16, Value, Option<String>) {
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
        let challenge = resp
            .headers()
            .get("www-authenticate")
            .map(|v| v.to_str().unwrap().to_owned());
        let text = resp.text().await.unwrap();
        assert!(
            !text.contains(token) || token.is_empty(),
            "the response echoes the token"
        );
        let v = serde_json::from_str(&text).unwrap_or(Value::Null);
        (status, v, challenge)
    }

    async fn admin(&self, method: reqwest::Method, path: &str, body: Value) {
        let (s, v, _) = self
            .call(
                method,
                &format!("/admin/v1/{path}"),
                &self.admin,
                Some(body),
            )
            .await;
        assert!(s == 200 || s == 201, "{path}: {s} {v}");
    }

    /// A principal without a token, allowed to get and list certificates in `default`.
    async fn reader(&self, name: &str) {
        self.admin(
            reqwest::Method::POST,
            "principals",
            json!({"name": name, "token": false}),
        )
        .await;
        self.admin(
            reqwest::Method::PUT,
            &format!("vaults/default/access-policies/{name}"),
            json!({"certificates": ["get", "list"], "keys": [], "secrets": []}),
        )
        .await;
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

#[tokio::test]
async fn jwt_bearer_tokens_with_a_jwks_over_https() {
    let rsa = PrivateKey::generate(KeyAlg::Rsa(2048)).unwrap();
    let ec = PrivateKey::generate(KeyAlg::Ec(Curve::P256)).unwrap();
    let idp = jwks_server(json!({"keys": [jwk(&rsa, "r1")]})).await;
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts(dir.path());
    let mut s = JwtSettings::new(
        ISSUER,
        JwksSource::Url {
            url: idp.url.clone(),
            ca_file: Some(idp.ca.clone()),
        },
    );
    s.jwks_refresh_seconds = 1;
    o.jwt = Some(s);
    let srv = start(o).await;
    assert_eq!(idp.hits.load(Ordering::SeqCst), 1, "loaded at start");
    srv.reader("reader-app").await;

    let claims = |sub: &str, aud: &str, exp: i64| json!({"iss": ISSUER, "aud": aud, "sub": sub, "exp": exp, "nbf": now() - 5});
    let good = jwt(
        &rsa,
        SignAlg::RS256,
        "r1",
        &claims("reader-app", &srv.resource, now() + 600),
    );
    let (s, v, _) = srv
        .call(reqwest::Method::GET, "/certificates", &good, None)
        .await;
    assert_eq!(s, 200, "{v}");
    // the access policy applies: creating is refused
    let (s, v, _) = srv
        .call(
            reqwest::Method::POST,
            "/certificates/jwt-made/create",
            &good,
            Some(json!({"policy": {"issuer": {"name": "Self"},
                "x509_props": {"subject": "CN=x"}}})),
        )
        .await;
    assert_eq!(s, 403, "{v}");
    // the admin API refuses a non-admin
    let (s, _, _) = srv
        .call(reqwest::Method::GET, "/admin/v1/principals", &good, None)
        .await;
    assert_eq!(s, 403);
    // certvault's own tokens keep working
    let admin = srv.admin.clone();
    let (s, _, _) = srv
        .call(reqwest::Method::GET, "/certificates", &admin, None)
        .await;
    assert_eq!(s, 200);

    // refusals are 401 with the challenge
    let refused = [
        jwt(
            &rsa,
            SignAlg::RS256,
            "r1",
            &claims("reader-app", "https://vault.azure.net", now() + 600),
        ),
        jwt(
            &rsa,
            SignAlg::RS256,
            "r1",
            &claims("reader-app", &srv.resource, now() - 3600),
        ),
        jwt(
            &rsa,
            SignAlg::RS256,
            "r1",
            &claims("nobody", &srv.resource, now() + 600),
        ),
        jwt(
            &rsa,
            SignAlg::RS256,
            "r1",
            &claims("admin", &srv.resource, now() + 600),
        ),
    ];
    for t in &refused {
        let (s, v, ch) = srv
            .call(reqwest::Method::GET, "/certificates", t, None)
            .await;
        assert_eq!(s, 401, "{v}");
        assert!(ch.unwrap().starts_with("Bearer authorization="));
    }

    // an unknown kid loads the JWKS again, at most once per interval
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let hits = idp.hits.load(Ordering::SeqCst);
    let ec_token = jwt(
        &ec,
        SignAlg::ES256,
        "e1",
        &claims("reader-app", &srv.resource, now() + 600),
    );
    let (s, _, _) = srv
        .call(reqwest::Method::GET, "/certificates", &ec_token, None)
        .await;
    assert_eq!(s, 401);
    assert_eq!(idp.hits.load(Ordering::SeqCst), hits + 1);
    *idp.doc.lock().unwrap() = json!({"keys": [jwk(&rsa, "r1"), jwk(&ec, "e1")]});
    let (s, _, _) = srv
        .call(reqwest::Method::GET, "/certificates", &ec_token, None)
        .await;
    assert_eq!(s, 401, "within the interval the set is not loaded again");
    assert_eq!(idp.hits.load(Ordering::SeqCst), hits + 1);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (s, v, _) = srv
        .call(reqwest::Method::GET, "/certificates", &ec_token, None)
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(idp.hits.load(Ordering::SeqCst), hits + 2);

    // disabling the principal takes effect at once
    srv.admin(
        reqwest::Method::PATCH,
        "principals/reader-app",
        json!({"disabled": true}),
    )
    .await;
    let (s, _, _) = srv
        .call(reqwest::Method::GET, "/certificates", &good, None)
        .await;
    assert_eq!(s, 401);
    srv.stop().await;
}

#[tokio::test]
async fn bad_jwt_settings_stop_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts(dir.path());
    o.jwt = Some(JwtSettings::new(
        ISSUER,
        JwksSource::File(dir.path().join("missing.json")),
    ));
    let e = certvault_server::start(&o, Arc::new(certvault_core::SystemClock))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("missing.json"), "{e}");

    let mut o = opts(dir.path());
    let mut s = JwtSettings::new(ISSUER, JwksSource::File(dir.path().join("x")));
    s.algorithms = vec!["HS256".into()];
    o.jwt = Some(s);
    assert!(
        certvault_server::start(&o, Arc::new(certvault_core::SystemClock))
            .await
            .is_err()
    );

    let mut o = opts(dir.path());
    o.identity = Some(IdentitySettings::new("0.0.0.0:0".parse().unwrap(), "app"));
    let e = certvault_server::start(&o, Arc::new(certvault_core::SystemClock))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("loopback"), "{e}");
}

#[tokio::test]
async fn managed_identity_endpoint_arc_flow() {
    let dir = tempfile::tempdir().unwrap();
    let keys = tempfile::tempdir().unwrap();
    let mut o = opts(&dir.path().join("data"));
    let mut s = IdentitySettings::new("127.0.0.1:0".parse().unwrap(), "mi-app");
    s.key_dir = keys.path().to_owned();
    s.token_lifetime = 600;
    o.identity = Some(s);
    let srv = start(o).await;
    let endpoint = format!(
        "{}/metadata/identity/oauth2/token",
        srv.identity.as_ref().unwrap()
    );
    let plain = reqwest::Client::new();
    let get = |resource: &str, auth: Option<String>, metadata: bool| {
        let enc: String = resource
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                    char::from(b).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        let mut r = plain.get(format!("{endpoint}?api-version=2020-06-01&resource={enc}"));
        if metadata {
            r = r.header("Metadata", "true");
        }
        if let Some(a) = auth {
            r = r.header("Authorization", a);
        }
        r.send()
    };

    // without Metadata: true, or for another resource: 400, and no key file
    let r = get(&srv.resource, None, false).await.unwrap();
    assert_eq!(r.status(), 400);
    let r = get("https://vault.azure.net", None, true).await.unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(std::fs::read_dir(keys.path()).unwrap().count(), 0);

    // the challenge names a fresh key file (0600, .key, at most 4096 bytes)
    let r = get(&srv.resource, None, true).await.unwrap();
    assert_eq!(r.status(), 401);
    let header = r.headers()["www-authenticate"].to_str().unwrap().to_owned();
    let path = header.strip_prefix("Basic realm=").unwrap();
    assert_eq!(header.split('=').count(), 2, "MSAL splits on '='");
    let path = PathBuf::from(path);
    assert_eq!(path.parent().unwrap(), keys.path());
    assert_eq!(path.extension().unwrap(), "key");
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert!(meta.len() <= 4096);
    let secret = std::fs::read_to_string(&path).unwrap();

    // a wrong secret is refused (and does not use up the right one)
    let r = get(&srv.resource, Some("Basic wrong".into()), true)
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // the principal does not exist yet: 403, and the secret is used up
    let r = get(&srv.resource, Some(format!("Basic {secret}")), true)
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "{}", r.text().await.unwrap());
    assert!(!path.exists(), "a used key file is removed");

    srv.reader("mi-app").await;
    let r = get(&srv.resource, None, true).await.unwrap();
    let header = r.headers()["www-authenticate"].to_str().unwrap().to_owned();
    let path = PathBuf::from(header.strip_prefix("Basic realm=").unwrap());
    let secret = std::fs::read_to_string(&path).unwrap();
    let r = get(
        &format!("{}/", srv.resource),
        Some(format!("Basic {secret}")),
        true,
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    let token = body["access_token"].as_str().unwrap().to_owned();
    assert!(token.starts_with("cvt_"));
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["resource"], srv.resource.as_str());
    assert_eq!(body["expires_in"], "600");
    let expires_on: i64 = body["expires_on"].as_str().unwrap().parse().unwrap();
    assert!((expires_on - now() - 600).abs() < 5);

    // the secret is single-use
    let r = get(&srv.resource, Some(format!("Basic {secret}")), true)
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // the token works on the Key Vault listener, with the principal's policy
    let (s, v, _) = srv
        .call(reqwest::Method::GET, "/certificates", &token, None)
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, _, _) = srv
        .call(reqwest::Method::GET, "/secrets", &token, None)
        .await;
    assert_eq!(s, 403);
    // and it is listed among the principal's tokens, with its expiry
    let (s, v, _) = srv
        .call(
            reqwest::Method::GET,
            "/admin/v1/principals/mi-app/tokens",
            &srv.admin,
            None,
        )
        .await;
    assert_eq!(s, 200);
    let text = v.to_string();
    assert!(text.contains("managed identity endpoint"), "{text}");
    assert!(!text.contains(&token));
    srv.stop().await;
    assert_eq!(
        std::fs::read_dir(keys.path()).unwrap().count(),
        0,
        "no key file is left behind"
    );
}
