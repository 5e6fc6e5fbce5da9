//! An ARI-serving stand-in in front of pebble (Debian's pebble 2.4 has no renewalInfo, RFC
//! 9773): an HTTPS reverse proxy that forwards every request to pebble (keeping the `Host`
//! header, so pebble's URLs and its JWS `url` checks name the proxy), adds `renewalInfo` to the
//! directory, answers `GET renewalInfo/<cert id>` with the window and `Retry-After` the test
//! sets, and records the `replaces` member of every newOrder payload.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::Pebble;

/// A window in RFC 3339 text: `(start, end)`.
pub type Window = (String, String);

#[derive(Default)]
struct Script {
    /// Per ARI certificate id.
    windows: HashMap<String, Window>,
    /// For ids without their own window.
    default_window: Option<Window>,
    /// `Retry-After` seconds sent with every renewalInfo answer.
    retry_after: Option<u64>,
    /// Every renewalInfo GET (certificate ids, in order).
    asked: Vec<String>,
    /// The `replaces` of every newOrder (in order; `None` when absent).
    replaces: Vec<Option<String>>,
    /// pebble's newOrder path (from its directory).
    new_order_path: Option<String>,
}

/// The running stand-in; stops when dropped.
pub struct AriStandIn {
    /// The directory URL to give the ACME client (the proxy's `/dir`).
    pub directory_url: String,
    script: Arc<Mutex<Script>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for AriStandIn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

const ARI_PATH: &str = "/renewal-info";

impl AriStandIn {
    /// Starts the proxy on a free loopback port in front of `pebble`, serving pebble's own
    /// HTTPS certificate (so the ACME client trusts it with `pebble.tls_ca_pem`).
    pub async fn start(pebble: &Pebble) -> Self {
        let d = pebble.dir();
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(d.join("cert.pem"))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(d.join("key.pem")).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let upstream = pebble.directory_url.trim_end_matches("/dir").to_owned();
        let client = reqwest::Client::builder()
            .http1_only()
            .tls_certs_only([reqwest::Certificate::from_pem(pebble.tls_ca_pem.as_bytes()).unwrap()])
            .build()
            .unwrap();
        let script = Arc::new(Mutex::new(Script::default()));
        let s2 = script.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                let script = s2.clone();
                let client = client.clone();
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(sock).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let script = script.clone();
                        let client = client.clone();
                        let upstream = upstream.clone();
                        async move {
                            Ok::<_, Infallible>(answer(req, &script, &client, &upstream).await)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        Self {
            directory_url: format!("https://127.0.0.1:{port}/dir"),
            script,
            task,
        }
    }

    /// The window answered for certificate `id` (`None`: for every id without its own).
    pub fn set_window(&self, id: Option<&str>, start: &str, end: &str) {
        let w = (start.to_owned(), end.to_owned());
        let mut s = self.script.lock().unwrap();
        match id {
            Some(id) => {
                s.windows.insert(id.to_owned(), w);
            }
            None => s.default_window = Some(w),
        }
    }

    /// The `Retry-After` (seconds) of every renewalInfo answer.
    pub fn set_retry_after(&self, seconds: Option<u64>) {
        self.script.lock().unwrap().retry_after = seconds;
    }

    /// The certificate ids asked about so far, in order.
    pub fn asked(&self) -> Vec<String> {
        self.script.lock().unwrap().asked.clone()
    }

    /// The `replaces` of every newOrder so far, in order.
    pub fn replaces(&self) -> Vec<Option<String>> {
        self.script.lock().unwrap().replaces.clone()
    }
}

fn plain(status: u16, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .body(Full::new(body.into()))
        .unwrap()
}

async fn answer(
    req: Request<Incoming>,
    script: &Mutex<Script>,
    client: &reqwest::Client,
    upstream: &str,
) -> Response<Full<Bytes>> {
    let host = req
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let method = req.method().clone();
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    // renewalInfo: answered here.
    if method == http::Method::GET
        && let Some(id) = path.strip_prefix(&format!("{ARI_PATH}/"))
    {
        let mut s = script.lock().unwrap();
        s.asked.push(id.to_owned());
        let Some((start, end)) = s.windows.get(id).or(s.default_window.as_ref()).cloned() else {
            return plain(404, "unknown certificate");
        };
        let mut r = Response::builder()
            .status(200)
            .header("content-type", "application/json");
        if let Some(ra) = s.retry_after {
            r = r.header("retry-after", ra.to_string());
        }
        let body = serde_json::json!({"suggestedWindow": {"start": start, "end": end}});
        return r.body(Full::new(Bytes::from(body.to_string()))).unwrap();
    }
    let headers = req.headers().clone();
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return plain(400, "unreadable body"),
    };
    let mut order_replaces = None;
    if method == http::Method::POST {
        let mut s = script.lock().unwrap();
        if s.new_order_path.as_deref() == Some(path.as_str()) {
            let replaces = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|jws| jws["payload"].as_str().map(str::to_owned))
                .and_then(|p| {
                    base64::engine::general_purpose::URL_SAFE_NO_PAD
                        .decode(p)
                        .ok()
                })
                .and_then(|p| serde_json::from_slice::<serde_json::Value>(&p).ok())
                .and_then(|p| p["replaces"].as_str().map(str::to_owned));
            s.replaces.push(replaces.clone());
            order_replaces = replaces;
        }
    }
    let mut fwd = client.request(method.clone(), format!("{upstream}{path}"));
    for (k, v) in &headers {
        if k == http::header::CONTENT_LENGTH || k == http::header::CONNECTION {
            continue;
        }
        fwd = fwd.header(k, v);
    }
    let resp = match fwd.body(body).send().await {
        Ok(r) => r,
        Err(e) => return plain(502, format!("pebble: {e}")),
    };
    let status = resp.status();
    let rh = resp.headers().clone();
    let Ok(mut out) = resp.bytes().await else {
        return plain(502, "pebble's body");
    };
    if method == http::Method::GET && path == "/dir" {
        let mut dir: serde_json::Value = serde_json::from_slice(&out).unwrap();
        if let Some(p) = dir["newOrder"].as_str() {
            let p = p.split_once("://").map_or(p, |(_, rest)| rest);
            let p = p.find('/').map_or("", |i| &p[i..]);
            script.lock().unwrap().new_order_path = Some(p.to_owned());
        }
        dir["renewalInfo"] = serde_json::json!(format!("https://{host}{ARI_PATH}"));
        out = Bytes::from(dir.to_string());
    }
    // An ARI server reflects `replaces` in the new order (RFC 9773 §5; clients check it).
    if let Some(rep) = order_replaces
        && status.is_success()
        && let Ok(mut order) = serde_json::from_slice::<serde_json::Value>(&out)
    {
        order["replaces"] = serde_json::json!(rep);
        out = Bytes::from(order.to_string());
    }
    let mut r = Response::builder().status(status.as_u16());
    for (k, v) in &rh {
        if k == http::header::CONTENT_LENGTH
            || k == http::header::TRANSFER_ENCODING
            || k == http::header::CONNECTION
        {
            continue;
        }
        r = r.header(k, v);
    }
    r.body(Full::new(out)).unwrap()
}
