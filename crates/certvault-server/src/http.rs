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

/// Serves connections until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send,
) {
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
    tokio::select! {
        () = graceful.shutdown() => {},
        () = tokio::time::sleep(Duration::from_secs(30)) => {
            tracing::warn!("connections still open after 30 s; closing");
        }
    }
}

async fn handle(
    state: Arc<AppState>,
    peer: std::net::SocketAddr,
    req: Request<Incoming>,
) -> Response<Body> {
    let request_id = uuid::Uuid::new_v4().simple().to_string();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let mut resp = route(&state, req, &request_id).await;
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        resp.headers_mut().insert("x-ms-request-id", v);
    }
    tracing::debug!(%peer, %method, %path, status = resp.status().as_u16(), request_id, "request");
    resp
}

async fn route(state: &Arc<AppState>, req: Request<Incoming>, request_id: &str) -> Response<Body> {
    let path = req.uri().path();
    if path == "/healthz" && req.method() == http::Method::GET {
        let mut r = Response::new(Full::new(Bytes::from_static(b"ok\n")));
        r.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        return r;
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
    match token {
        None => return unauthorized(state, "AKV10000: Request is missing a Bearer or PoP token."),
        Some(t) if !state.token_ok(t) => {
            return unauthorized(state, "AKV10022: Invalid bearer token.");
        }
        Some(_) => {}
    }
    let (parts, body) = req.into_parts();
    let body = match read_body(body, state.http.max_body).await {
        Ok(b) => b,
        Err(e) => return error_response(&e),
    };
    let result = if parts.uri.path().starts_with(crate::admin::PREFIX) {
        crate::admin::dispatch(state, &parts, body).await
    } else {
        crate::kv::dispatch(state, &parts, body, request_id).await
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
async fn read_body(mut body: Incoming, max: usize) -> Result<Bytes, ApiError> {
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
