//! The HTTPS listener: TLS accept, HTTP/1.1 and HTTP/2, authentication before routing, body
//! limits, and the Key Vault error shape for every failure.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::error::ApiError;
use crate::state::AppState;

/// The body type of every response.
pub type Body = Full<Bytes>;

/// A JSON response.
pub fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let body = serde_json::to_vec(value).unwrap_or_default();
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    r
}

/// A JSON response from a body already serialised (see [`push_json_str`]).
pub fn json_bytes(status: StatusCode, body: Vec<u8>) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    r
}

/// Appends `s` as a JSON string literal, escaped byte for byte as `serde_json` escapes it
/// (`\"`, `\\`, `\b`, `\f`, `\n`, `\r`, `\t`, other control characters as `\u00xx`; everything
/// else as it is). It scans eight bytes at a time: a managed secret's value is kilobytes of
/// PEM with one escape per 64-character line, where `serde_json`'s byte-at-a-time escaping
/// was a noticeable part of the request.
pub fn push_json_str(out: &mut Vec<u8>, s: &str) {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    // True when some byte of `w` is < 0x20, '"' or '\\' (exact: no false negatives, and a
    // false positive only costs the byte-wise path for this word).
    fn special(w: u64) -> bool {
        let ctrl = w.wrapping_sub(ONES * 0x20) & !w;
        let q = w ^ (ONES * u64::from(b'"'));
        let quote = q.wrapping_sub(ONES) & !q;
        let b = w ^ (ONES * u64::from(b'\\'));
        let backslash = b.wrapping_sub(ONES) & !b;
        (ctrl | quote | backslash) & HIGHS != 0
    }
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = s.as_bytes();
    out.reserve(bytes.len() + 2 + bytes.len() / 32);
    out.push(b'"');
    let mut start = 0; // first byte not yet copied
    let mut i = 0;
    while i < bytes.len() {
        if let Some(chunk) = bytes.get(i..i + 8) {
            let mut w = [0u8; 8];
            w.copy_from_slice(chunk);
            if !special(u64::from_le_bytes(w)) {
                i += 8;
                continue;
            }
        }
        let end = (i + 8).min(bytes.len());
        while i < end {
            let c = bytes[i];
            let esc: Option<&[u8]> = match c {
                b'"' => Some(b"\\\""),
                b'\\' => Some(b"\\\\"),
                b'\n' => Some(b"\\n"),
                b'\r' => Some(b"\\r"),
                b'\t' => Some(b"\\t"),
                0x08 => Some(b"\\b"),
                0x0c => Some(b"\\f"),
                _ => None,
            };
            if let Some(e) = esc {
                out.extend_from_slice(&bytes[start..i]);
                out.extend_from_slice(e);
                start = i + 1;
            } else if c < 0x20 {
                out.extend_from_slice(&bytes[start..i]);
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(c >> 4)]);
                out.push(HEX[usize::from(c & 0xf)]);
                start = i + 1;
            }
            i += 1;
        }
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// An empty response.
pub fn empty(status: StatusCode) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = status;
    r
}

/// The error response.
pub fn error_response(e: &ApiError) -> Response<Body> {
    json(e.status, &e.body())
}

fn unauthorized(state: &AppState, message: &str) -> Response<Body> {
    let mut r = error_response(&ApiError::new(
        StatusCode::UNAUTHORIZED,
        "Unauthorized",
        message,
    ));
    if let Ok(v) = HeaderValue::from_str(&state.http.challenge()) {
        r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    r
}

/// Serves connections until `shutdown` resolves, then stops accepting (the listening socket
/// is closed, so new connections are refused) and waits up to `grace` for the connections
/// open to finish their requests (idle keep-alive connections close at once). Returns the
/// deadline (shutdown + `grace`), which the rest of the shutdown shares.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send,
    grace: Duration,
) -> tokio::time::Instant {
    let acceptor = TlsAcceptor::from(tls);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let state = state.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let tls =
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => return,
                };
            let svc = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(state, peer, req).await) }
            });
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), svc);
            if let Err(e) = watcher.watch(conn.into_owned()).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    let deadline = tokio::time::Instant::now() + grace;
    tokio::select! {
        () = graceful.shutdown() => {},
        () = tokio::time::sleep_until(deadline) => {
            tracing::warn!(grace_seconds = grace.as_secs(), "requests still in flight at the end of the grace period; closing their connections");
        }
    }
    deadline
}

/// The request header a client names its request with, echoed in the response.
const CLIENT_REQUEST_ID: &str = "x-ms-client-request-id";

/// A request id: 32 hex digits, unique within this process (a random start drawn once, plus a
/// counter) and unlikely to repeat across restarts. Drawing a random UUID per request cost a
/// `getrandom` system call on every request.
fn next_request_id() -> String {
    static START: std::sync::LazyLock<u128> =
        std::sync::LazyLock::new(|| uuid::Uuid::new_v4().as_u128());
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{:032x}", START.wrapping_add(u128::from(n)))
}

/// Handles one request inside a `request` span carrying its request id, so every log line
/// written while it runs (by any layer: auth, handlers, store errors, the audit hook) names
/// the request (`--log-format json`: the `span` member).
async fn handle(
    state: Arc<AppState>,
    peer: std::net::SocketAddr,
    req: Request<Incoming>,
) -> Response<Body> {
    use tracing::Instrument as _;
    let started = std::time::Instant::now();
    let request_id = next_request_id();
    let span = tracing::info_span!(
        "request",
        request_id = %request_id,
        client_request_id = tracing::field::Empty
    );
    // The client's own id (the Azure SDKs send `x-ms-client-request-id`), echoed back as Key
    // Vault does and recorded in the span, so a client's log and ours can be joined. Only a
    // short value of visible ASCII is taken; anything else is ignored.
    let client_request_id = req
        .headers()
        .get(CLIENT_REQUEST_ID)
        .filter(|v| {
            v.len() <= 256 && !v.is_empty() && v.as_bytes().iter().all(u8::is_ascii_graphic)
        })
        .cloned();
    if let Some(v) = &client_request_id {
        span.record("client_request_id", v.to_str().unwrap_or_default());
    }
    async move {
        // The web console has its own sessions, pages and audit records (see `ui`): no Key
        // Vault challenge there.
        if crate::ui::is_ui_path(req.uri().path()) {
            return crate::ui::handle(&state, peer, req, &request_id).await;
        }
        let method = req.method().clone();
        // The path only for the debug line (no copy per request otherwise).
        let path = tracing::enabled!(tracing::Level::DEBUG).then(|| req.uri().path().to_owned());
        let target =
            crate::audit::target(&method, req.uri(), req.headers(), &state.http.base_domain);
        let op = crate::metrics::operation_index(&target.operation);
        let mut who = crate::audit::Who::Nobody;
        let resp = route(&state, req, &request_id, &mut who).await;
        // Every request but the probes is recorded before its response leaves; if the record
        // cannot be written the client gets a 500 instead (fail closed).
        let mut resp =
            crate::audit::after_request(&state, resp, target, who, peer, &request_id).await;
        if let Ok(v) = HeaderValue::from_str(&request_id) {
            resp.headers_mut().insert("x-ms-request-id", v);
        }
        if let Some(v) = client_request_id {
            resp.headers_mut().insert(CLIENT_REQUEST_ID, v);
        }
        let status = resp.status().as_u16();
        state.metrics.request(op, status, started.elapsed());
        tracing::debug!(%peer, %method, path = path.as_deref().unwrap_or(""), operation = crate::metrics::OPERATIONS.get(op).copied().unwrap_or("unknown"), status, "request");
        resp
    }
    .instrument(span)
    .await
}

async fn route(
    state: &Arc<AppState>,
    req: Request<Incoming>,
    request_id: &str,
    who: &mut crate::audit::Who,
) -> Response<Body> {
    use crate::audit::Who;
    let path = req.uri().path();
    // Unauthenticated and not audited: probes.
    if req.method() == http::Method::GET {
        match path {
            "/healthz" => return crate::ops::healthz(),
            "/readyz" => return crate::ops::readyz(state).await,
            "/openapi.json" => return crate::ops::openapi(),
            _ => {}
        }
    }
    // Authentication comes before routing and before the body is read.
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    let caller = match token {
        None => {
            const MISSING: &str = "AKV10000: Request is missing a Bearer or PoP token.";
            *who = Who::Anonymous {
                operation: "auth.invalid",
                reason: MISSING,
            };
            return unauthorized(state, MISSING);
        }
        Some(t) => match crate::auth::authenticate(state, t).await {
            Ok(c) => c,
            Err(crate::auth::AuthError::Invalid(msg)) => {
                *who = Who::Anonymous {
                    operation: "auth.invalid",
                    reason: msg,
                };
                return unauthorized(state, msg);
            }
            Err(crate::auth::AuthError::Unavailable(e)) => {
                *who = Who::Anonymous {
                    operation: "auth.unavailable",
                    reason: "the token could not be checked",
                };
                return error_response(&e);
            }
        },
    };
    *who = Who::Principal(caller.principal.clone());
    if req.uri().path() == "/metrics" && req.method() == http::Method::GET {
        if let Err(e) = caller.require_metrics() {
            return error_response(&e);
        }
        let text = state.metrics.render(state).await;
        let mut r = Response::new(Full::new(Bytes::from(text)));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        );
        return r;
    }
    let (parts, body) = req.into_parts();
    let body = match read_body(body, state.http.max_body).await {
        Ok(b) => b,
        Err(e) => return error_response(&e),
    };
    let result = if parts.uri.path().starts_with(crate::admin::PREFIX) {
        crate::admin::dispatch(state, &parts, body, &caller).await
    } else {
        crate::kv::dispatch(state, &parts, body, request_id, &caller).await
    };
    match result {
        Ok(r) => r,
        Err(e) => error_response(&e),
    }
}

/// A request body larger than this is not even drained: the connection is closed instead.
const DRAIN_CAP: usize = 16 * 1024 * 1024;

/// Reads the body up to `max` bytes. A larger body is drained (up to [`DRAIN_CAP`], within a
/// time limit) before answering 413, because clients such as Python's `requests` send the whole
/// body before they read a reply, and would see a broken connection instead of the error.
pub(crate) async fn read_body(mut body: Incoming, max: usize) -> Result<Bytes, ApiError> {
    use hyper::body::Body as _;
    if body.size_hint().lower() > DRAIN_CAP as u64 {
        return Err(too_large(max));
    }
    let mut buf = bytes::BytesMut::new();
    let mut seen = 0usize;
    let read = async {
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|_| ApiError::bad("The request body could not be read."))?;
            if let Ok(data) = frame.into_data() {
                seen = seen.saturating_add(data.len());
                if seen <= max {
                    buf.extend_from_slice(&data);
                } else if seen > DRAIN_CAP {
                    break;
                }
            }
        }
        Ok::<(), ApiError>(())
    };
    match tokio::time::timeout(Duration::from_secs(30), read).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e),
        Err(_) => return Err(ApiError::bad("Timed out reading the request body.")),
    }
    if seen > max {
        return Err(too_large(max));
    }
    Ok(buf.freeze())
}

fn too_large(max: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "BadParameter",
        format!("The request body is larger than the limit of {max} bytes."),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_str_escapes_like_serde_json() {
        let mut cases: Vec<String> = vec![
            String::new(),
            "a".into(),
            "abcdefgh".into(),
            "abcdefghi".into(),
            "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQ\n-----END PRIVATE KEY-----\n"
                .into(),
            "quote \" backslash \\ slash / tab \t cr \r bs \u{8} ff \u{c} nul \u{0} us \u{1f} del \u{7f}"
                .into(),
            "unicode é ü 日本 😀 \u{2028} \u{2029}".into(),
        ];
        cases.push((0u8..=0x7f).map(char::from).collect());
        cases.push(
            (0u8..=0x7f)
                .rev()
                .map(char::from)
                .collect::<String>()
                .repeat(3),
        );
        for shift in 0..9 {
            cases.push(format!(
                "{}\"x\\{}\n",
                "y".repeat(shift),
                "z".repeat(17 - shift)
            ));
        }
        for s in &cases {
            let mut out = Vec::new();
            push_json_str(&mut out, s);
            let want = serde_json::to_vec(s).unwrap_or_default();
            assert_eq!(
                String::from_utf8_lossy(&out),
                String::from_utf8_lossy(&want),
                "{s:?}"
            );
        }
    }
}
