//! ARI and rate-limit handling against a small in-test ACME stand-in (pebble 2.4 has no
//! renewalInfo, sends no Retry-After and enforces no rate limits). The stand-in speaks plain
//! HTTP on loopback, does not check JWS signatures, and answers from a script.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use certvault_acme::{AccountConfig, AcmeClient, AcmeError, RetryConfig, TrustRoots, ari_cert_id};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use time::OffsetDateTime;
use time::macros::datetime;

/// One scripted answer to POST /new-account: (status, Retry-After, problem type).
type Scripted = (u16, Option<&'static str>, &'static str);

#[derive(Default)]
struct Script {
    new_account: VecDeque<Scripted>,
    new_account_calls: usize,
    ari_path_seen: Vec<String>,
    ari_retry_after: Option<&'static str>,
}

struct StandIn {
    base: String,
    script: Arc<Mutex<Script>>,
}

async fn start(script: Script) -> StandIn {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let script = Arc::new(Mutex::new(script));
    let s2 = script.clone();
    let b2 = base.clone();
    tokio::spawn(async move {
        loop {
            let (sock, _) = listener.accept().await.unwrap();
            let script = s2.clone();
            let base = b2.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let r = answer(&base, &script, &req);
                    async move { Ok::<_, Infallible>(r) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(sock), svc)
                    .await;
            });
        }
    });
    StandIn { base, script }
}

fn answer(base: &str, script: &Mutex<Script>, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    let mut s = script.lock().unwrap();
    let json = |status: u16, body: serde_json::Value| {
        Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .header("replay-nonce", format!("nonce-{}", rand_suffix()))
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap()
    };
    match (req.method().as_str(), path.as_str()) {
        ("GET", "/dir") => json(
            200,
            serde_json::json!({
                "newNonce": format!("{base}/nonce"),
                "newAccount": format!("{base}/new-account"),
                "newOrder": format!("{base}/new-order"),
                "revokeCert": format!("{base}/revoke"),
                "keyChange": format!("{base}/key-change"),
                "renewalInfo": format!("{base}/ari"),
                "meta": {"termsOfService": format!("{base}/tos")}
            }),
        ),
        ("HEAD", "/nonce") | ("GET", "/nonce") => json(200, serde_json::json!({})),
        ("POST", "/new-account") => {
            s.new_account_calls += 1;
            match s.new_account.pop_front() {
                Some((status, retry_after, ty)) => {
                    let mut r = json(
                        status,
                        serde_json::json!({
                            "type": format!("urn:ietf:params:acme:error:{ty}"),
                            "detail": format!("scripted {ty}"),
                            "status": status
                        }),
                    );
                    if let Some(ra) = retry_after {
                        r.headers_mut().insert("retry-after", ra.parse().unwrap());
                    }
                    r
                }
                None => {
                    let mut r = json(201, serde_json::json!({"status": "valid"}));
                    r.headers_mut()
                        .insert("location", format!("{base}/acct/1").parse().unwrap());
                    r
                }
            }
        }
        ("GET", p) if p.starts_with("/ari/") => {
            s.ari_path_seen
                .push(p.trim_start_matches("/ari/").to_owned());
            let mut r = json(
                200,
                serde_json::json!({
                    "suggestedWindow": {
                        "start": "2026-03-01T00:00:00Z",
                        "end": "2026-03-03T00:00:00Z"
                    },
                    "explanationURL": format!("{base}/why")
                }),
            );
            if let Some(ra) = s.ari_retry_after {
                r.headers_mut().insert("retry-after", ra.parse().unwrap());
            }
            r
        }
        _ => json(
            404,
            serde_json::json!({"type": "about:blank", "detail": "no such path"}),
        ),
    }
}

fn rand_suffix() -> String {
    let b = certvault_testkit::random_bytes(8);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn config(base: &str) -> AccountConfig {
    let mut cfg = AccountConfig::new(format!("{base}/dir"));
    cfg.terms_of_service_agreed = true;
    // Plain HTTP on loopback; the roots are never used but must be valid.
    cfg.roots = TrustRoots::Only(certvault_testkit::tls_material().0);
    cfg
}

fn fast_retry() -> RetryConfig {
    RetryConfig {
        initial_backoff: Duration::from_millis(50),
        max_wait: Duration::from_secs(5),
        ..RetryConfig::default()
    }
}

#[tokio::test]
async fn rate_limited_and_server_internal_are_retried_after_retry_after() {
    let s = start(Script {
        new_account: VecDeque::from([
            (429, Some("1"), "rateLimited"),
            (500, None, "serverInternal"),
            (503, Some("1"), "serverInternal"),
        ]),
        ..Script::default()
    })
    .await;
    let t = Instant::now();
    let (client, _) = AcmeClient::create_account(&config(&s.base), fast_retry())
        .await
        .unwrap();
    let took = t.elapsed();
    assert_eq!(client.account_url(), format!("{}/acct/1", s.base));
    assert_eq!(s.script.lock().unwrap().new_account_calls, 4);
    // Two Retry-After: 1 waits plus one 100 ms backoff (50 ms doubled).
    assert!(took >= Duration::from_millis(2000), "waited only {took:?}");
    assert!(took < Duration::from_secs(5), "waited {took:?}");
    assert_eq!(
        client.directory().terms_of_service.as_deref(),
        Some(format!("{}/tos", s.base).as_str())
    );
}

#[tokio::test]
async fn a_long_retry_after_is_returned_to_the_caller() {
    let s = start(Script {
        new_account: VecDeque::from([(429, Some("3600"), "rateLimited")]),
        ..Script::default()
    })
    .await;
    let t = Instant::now();
    let err = AcmeClient::create_account(&config(&s.base), fast_retry())
        .await
        .unwrap_err();
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "must not sleep an hour"
    );
    let p = err.problem().unwrap();
    assert!(p.is("rateLimited"), "{p}");
    assert_eq!(err.retry_after(), Some(Duration::from_secs(3600)));
    assert!(err.is_transient());
    assert_eq!(s.script.lock().unwrap().new_account_calls, 1);
}

#[tokio::test]
async fn retries_are_bounded() {
    let s = start(Script {
        new_account: VecDeque::from(vec![(503, None, "serverInternal"); 20]),
        ..Script::default()
    })
    .await;
    let cfg = RetryConfig {
        transient_retries: 3,
        initial_backoff: Duration::from_millis(10),
        ..RetryConfig::default()
    };
    let err = AcmeClient::create_account(&config(&s.base), cfg)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, AcmeError::Ca(p) if p.is("serverInternal")),
        "{err}"
    );
    assert_eq!(s.script.lock().unwrap().new_account_calls, 4);
}

#[tokio::test]
async fn renewal_info_window_and_retry_after() {
    let s = start(Script {
        ari_retry_after: Some("21600"),
        ..Script::default()
    })
    .await;
    let (client, _) = AcmeClient::create_account(&config(&s.base), fast_retry())
        .await
        .unwrap();
    assert!(client.directory().renewal_info.is_some());
    let cert = test_cert();
    let id = ari_cert_id(&cert).unwrap();

    // Before the window: a time inside it, chosen by the random fraction.
    let now = datetime!(2026-02-01 00:00 UTC);
    let sched = client.renewal_info(&cert, now, 0.5).await.unwrap().unwrap();
    assert_eq!(sched.window_start, datetime!(2026-03-01 00:00 UTC));
    assert_eq!(sched.window_end, datetime!(2026-03-03 00:00 UTC));
    assert_eq!(sched.renew_at, datetime!(2026-03-02 00:00 UTC));
    assert_eq!(sched.recheck_after, Duration::from_secs(21600));
    assert_eq!(sched.explanation_url, Some(format!("{}/why", s.base)));
    // The request named the certificate by its ARI id.
    assert_eq!(s.script.lock().unwrap().ari_path_seen, vec![id.clone()]);

    // After the window started: renew now.
    let late = datetime!(2026-03-02 12:00 UTC);
    let sched = client
        .renewal_info(&cert, late, 0.1)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(sched.renew_at, late);

    // Without Retry-After: the default recheck; a tiny one is clamped up.
    s.script.lock().unwrap().ari_retry_after = None;
    let sched = client.renewal_info(&cert, now, 0.0).await.unwrap().unwrap();
    assert_eq!(sched.recheck_after, certvault_acme::ARI_DEFAULT_RECHECK);
    assert_eq!(sched.renew_at, datetime!(2026-03-01 00:00 UTC));
    s.script.lock().unwrap().ari_retry_after = Some("5");
    let sched = client.renewal_info(&cert, now, 0.0).await.unwrap().unwrap();
    assert_eq!(sched.recheck_after, certvault_acme::ARI_MIN_RECHECK);
}

/// A CA-issued leaf (it has an AKI) and its ARI id computed independently.
fn test_cert() -> Vec<u8> {
    use certvault_crypto::{CertParams, Curve, KeyAlg, PrivateKey};
    let ca_key = PrivateKey::generate(KeyAlg::Ec(Curve::P256)).unwrap();
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let ca = certvault_crypto::self_signed(
        &ca_key,
        &CertParams {
            subject: "CN=ARI test CA".into(),
            is_ca: true,
            not_before: now - 60,
            not_after: now + 86400,
            ..CertParams::default()
        },
    )
    .unwrap();
    let leaf_key = PrivateKey::generate(KeyAlg::Ec(Curve::P256)).unwrap();
    let leaf = certvault_crypto::issue(
        &ca_key,
        &ca,
        &leaf_key.public_key(),
        &CertParams {
            dns_names: vec!["ari.example.test".into()],
            not_before: now - 60,
            not_after: now + 86400,
            ..CertParams::default()
        },
    )
    .unwrap();
    // Independent computation of the id: AKI keyIdentifier and the serial's DER content.
    let (_, c) = x509_parser::parse_x509_certificate(&leaf).unwrap();
    let aki = c
        .extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            x509_parser::extensions::ParsedExtension::AuthorityKeyIdentifier(a) => {
                a.key_identifier.as_ref().map(|k| k.0.to_vec())
            }
            _ => None,
        })
        .unwrap();
    let serial = c.tbs_certificate.raw_serial().to_vec();
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    assert_eq!(
        ari_cert_id(&leaf).unwrap(),
        format!("{}.{}", b64.encode(aki), b64.encode(serial))
    );
    leaf
}
