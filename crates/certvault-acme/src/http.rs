//! The HTTP client instant-acme talks through, and the retry policy around every ACME call.
//!
//! instant-acme keeps `Retry-After` and `Link` headers of most responses to itself. Our client
//! wraps hyper-rustls and copies those headers (and, when asked, the body) of each response
//! into a per-call [`Capture`] that lives in a tokio task-local for the duration of one call,
//! so concurrent orders on one client never see each other's headers.

use std::future::Future;
use std::ops::ControlFlow;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::Request;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use instant_acme::{BodyWrapper, BytesResponse, HttpClient};

use crate::error::{AcmeError, CaProblem};

/// Which roots the client trusts for the CA's HTTPS.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum TrustRoots {
    /// The operating system's roots (public CAs).
    #[default]
    System,
    /// The system's roots plus these PEM certificates.
    SystemPlus(String),
    /// Only these PEM certificates (a test CA such as pebble, or a private ACME server).
    Only(String),
}

/// What one call saw in the responses it caused.
#[derive(Debug, Default)]
pub(crate) struct Captured {
    pub(crate) retry_after: Option<Duration>,
    pub(crate) links: Vec<(String, String)>,
    pub(crate) want_body: bool,
    pub(crate) body: Option<Bytes>,
    pub(crate) status: Option<u16>,
}

pub(crate) type Capture = Arc<Mutex<Captured>>;

tokio::task_local! {
    pub(crate) static CAPTURE: Capture;
}

pub(crate) fn new_capture(want_body: bool) -> Capture {
    Arc::new(Mutex::new(Captured {
        want_body,
        ..Captured::default()
    }))
}

/// Reads a value out of a capture (a poisoned lock yields the default).
pub(crate) fn with_captured<R>(c: &Capture, f: impl FnOnce(&mut Captured) -> R) -> Option<R> {
    c.lock().ok().map(|mut g| f(&mut g))
}

pub(crate) struct Http {
    inner: HyperClient<HttpsConnector<HttpConnector>, BodyWrapper<Bytes>>,
}

impl Http {
    pub(crate) fn new(roots: &TrustRoots) -> Result<Self, AcmeError> {
        let mut store = rustls::RootCertStore::empty();
        if !matches!(roots, TrustRoots::Only(_)) {
            let native = rustls_native_certs::load_native_certs();
            for c in native.certs {
                // Unparsable system certificates are skipped, as every TLS client does.
                let _ = store.add(c);
            }
        }
        if let TrustRoots::Only(pem) | TrustRoots::SystemPlus(pem) = roots {
            use rustls_pki_types::pem::PemObject;
            let mut n = 0;
            for c in rustls_pki_types::CertificateDer::pem_slice_iter(pem.as_bytes()) {
                let c = c.map_err(|e| AcmeError::Invalid(format!("CA roots PEM: {e}")))?;
                store
                    .add(c)
                    .map_err(|e| AcmeError::Invalid(format!("CA roots PEM: {e}")))?;
                n += 1;
            }
            if n == 0 {
                return Err(AcmeError::Invalid(
                    "the CA roots PEM holds no certificate".into(),
                ));
            }
        }
        if store.is_empty() {
            return Err(AcmeError::Invalid("no trusted root certificates".into()));
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| AcmeError::Invalid(format!("TLS configuration: {e}")))?
            .with_root_certificates(store)
            .with_no_client_auth();
        // http:// is accepted by the connector; `validate_directory_url` allows it for
        // loopback hosts only.
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(config)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .build();
        Ok(Self {
            inner: HyperClient::builder(TokioExecutor::new()).build(connector),
        })
    }
}

impl HttpClient for Http {
    fn request(
        &self,
        req: Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let capture = CAPTURE.try_with(Arc::clone).ok();
        let fut = HttpClient::request(&self.inner, req);
        Box::pin(async move {
            let mut rsp = fut.await?;
            if let Some(c) = capture {
                let retry_after = rsp
                    .parts
                    .headers
                    .get(http::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| parse_retry_after(v, SystemTime::now()));
                let links: Vec<(String, String)> = rsp
                    .parts
                    .headers
                    .get_all(http::header::LINK)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .flat_map(parse_links)
                    .collect();
                let status = rsp.parts.status.as_u16();
                let want_body = with_captured(&c, |g| g.want_body).unwrap_or(false);
                let body = if want_body {
                    let b = rsp
                        .body
                        .into_bytes()
                        .await
                        .map_err(instant_acme::Error::Other)?;
                    rsp.body = Box::new(b.clone());
                    Some(b)
                } else {
                    None
                };
                with_captured(&c, |g| {
                    g.retry_after = retry_after;
                    g.links = links;
                    g.status = Some(status);
                    if body.is_some() {
                        g.body = body;
                    }
                });
            }
            Ok(rsp)
        })
    }
}

/// `Retry-After`: delay-seconds or an HTTP-date (RFC 9110 §10.2.3).
pub(crate) fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// `Link: <url>;rel="alternate", <url2>;rel="up"` → [(rel, url)].
pub(crate) fn parse_links(value: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for part in value.split(',') {
        let part = part.trim();
        let Some(rest) = part.strip_prefix('<') else {
            continue;
        };
        let Some((url, params)) = rest.split_once('>') else {
            continue;
        };
        for p in params.split(';') {
            let p = p.trim();
            if let Some(rel) = p.strip_prefix("rel=") {
                out.push((rel.trim_matches('"').to_owned(), url.to_owned()));
            }
        }
    }
    out
}

/// Bounds for retrying one ACME request.
#[derive(Clone, Debug)]
pub struct RetryConfig {
    /// How many times a request rejected with `badNonce` is sent again (on top of
    /// instant-acme's own two retries with the fresh nonce of the error response).
    pub bad_nonce_retries: u32,
    /// How many times a `rateLimited`, `serverInternal` or 5xx answer (and, for reads, a
    /// network error) is retried after waiting.
    pub transient_retries: u32,
    /// The first wait when the CA sends no `Retry-After`; doubled after each retry.
    pub initial_backoff: Duration,
    /// The longest wait this layer does by itself. A longer `Retry-After` ends the call with
    /// [`AcmeError::Ca`] carrying it, for the caller to reschedule the order.
    pub max_wait: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            bad_nonce_retries: 10,
            transient_retries: 4,
            initial_backoff: Duration::from_secs(1),
            max_wait: Duration::from_secs(60),
        }
    }
}

pub(crate) struct RetryTracker<'a> {
    cfg: &'a RetryConfig,
    what: &'static str,
    idempotent: bool,
    nonce_retries: u32,
    transient: u32,
    backoff: Duration,
}

impl<'a> RetryTracker<'a> {
    pub(crate) fn new(cfg: &'a RetryConfig, what: &'static str, idempotent: bool) -> Self {
        Self {
            cfg,
            what,
            idempotent,
            nonce_retries: 0,
            transient: 0,
            backoff: cfg.initial_backoff,
        }
    }

    /// Continue (retry) or break with the final result.
    pub(crate) async fn decide<T>(
        &mut self,
        result: Result<T, instant_acme::Error>,
        capture: &Capture,
    ) -> ControlFlow<Result<T, AcmeError>> {
        let retry_after = with_captured(capture, |g| g.retry_after).flatten();
        let status = with_captured(capture, |g| g.status).flatten();
        let err = match result {
            Ok(v) => {
                crate::stats::count(self.what, crate::stats::OK);
                return ControlFlow::Break(Ok(v));
            }
            Err(e) => e,
        };
        let decided = self.decide_err(err, retry_after, status).await;
        let result = match &decided {
            ControlFlow::Continue(()) => crate::stats::RETRY,
            ControlFlow::Break(_) => crate::stats::ERROR,
        };
        crate::stats::count(self.what, result);
        decided
    }

    async fn decide_err<T>(
        &mut self,
        err: instant_acme::Error,
        retry_after: Option<Duration>,
        status: Option<u16>,
    ) -> ControlFlow<Result<T, AcmeError>> {
        match &err {
            instant_acme::Error::Api(p) => {
                let problem = CaProblem::from_instant(p, retry_after);
                if problem.is("badNonce") && self.nonce_retries < self.cfg.bad_nonce_retries {
                    self.nonce_retries += 1;
                    tracing::debug!(
                        call = self.what,
                        n = self.nonce_retries,
                        "badNonce: retrying"
                    );
                    return ControlFlow::Continue(());
                }
                let transient = problem.is("rateLimited")
                    || problem.is("serverInternal")
                    || problem.status.or(status).is_some_and(|s| s >= 500);
                if transient && self.transient < self.cfg.transient_retries {
                    let wait = retry_after.unwrap_or(self.backoff);
                    if wait <= self.cfg.max_wait {
                        self.transient += 1;
                        self.backoff = self.backoff.saturating_mul(2);
                        tracing::info!(
                            call = self.what,
                            problem = problem.short_type(),
                            wait_ms = wait.as_millis() as u64,
                            "ACME CA asked to wait; retrying"
                        );
                        tokio::time::sleep(wait).await;
                        return ControlFlow::Continue(());
                    }
                }
                ControlFlow::Break(Err(AcmeError::Ca(problem)))
            }
            instant_acme::Error::Hyper(_)
            | instant_acme::Error::Other(_)
            | instant_acme::Error::Json(_)
                if self.idempotent
                    && self.transient < self.cfg.transient_retries
                    && status.is_none_or(|s| s >= 500) =>
            {
                self.transient += 1;
                let wait = self.backoff;
                self.backoff = self.backoff.saturating_mul(2);
                tracing::info!(call = self.what, error = %err, "transient error; retrying");
                tokio::time::sleep(wait).await;
                ControlFlow::Continue(())
            }
            _ => ControlFlow::Break(Err(map_error(err, status))),
        }
    }
}

pub(crate) fn map_error(e: instant_acme::Error, status: Option<u16>) -> AcmeError {
    use instant_acme::Error as E;
    match e {
        E::Api(p) => AcmeError::Ca(CaProblem::from_instant(&p, None)),
        E::Unsupported(s) => AcmeError::Unsupported(s.to_owned()),
        E::Timeout(_) => {
            AcmeError::Timeout("the CA's Retry-After is past the polling deadline".into())
        }
        E::Crypto | E::KeyRejected => AcmeError::Credentials("the account key is unusable".into()),
        E::Json(j) => AcmeError::Protocol(match status {
            Some(s) => format!("HTTP {s}, body is not the expected JSON: {j}"),
            None => format!("body is not the expected JSON: {j}"),
        }),
        E::Str(s) => AcmeError::Protocol(s.to_owned()),
        other => AcmeError::Network(other.to_string()),
    }
}

/// Runs one instant-acme call (an expression producing a future) with the retry policy, in a
/// fresh capture. Evaluates to `(Result<T, AcmeError>, Capture)`.
macro_rules! acme_call {
    ($retry:expr, $what:expr, $idempotent:expr, $want_body:expr, $call:expr) => {{
        let mut tracker = $crate::http::RetryTracker::new($retry, $what, $idempotent);
        loop {
            let capture = $crate::http::new_capture($want_body);
            let r = $crate::http::CAPTURE
                .scope(capture.clone(), async { $call.await })
                .await;
            match tracker.decide(r, &capture).await {
                ::std::ops::ControlFlow::Break(v) => break (v, capture),
                ::std::ops::ControlFlow::Continue(()) => continue,
            }
        }
    }};
}
pub(crate) use acme_call;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_and_retry_after() {
        assert_eq!(
            parse_links(r#"<https://a/cert/1/1>;rel="alternate", <https://a/dir>;rel="index""#),
            vec![
                ("alternate".to_owned(), "https://a/cert/1/1".to_owned()),
                ("index".to_owned(), "https://a/dir".to_owned())
            ]
        );
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(
            parse_retry_after(&later, now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }
}
