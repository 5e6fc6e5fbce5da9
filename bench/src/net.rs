//! One HTTP/1.1 keep-alive connection over TLS to the server, trusting its local CA.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use http::{HeaderValue, Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

type ConnDriver = http1::Connection<TokioIo<TlsStream<TcpStream>>, Full<Bytes>>;

/// Where and how to reach the server. The bearer token lives only in a header value marked
/// sensitive; it is never printed.
#[derive(Clone)]
pub struct Target {
    addr: SocketAddr,
    connector: TlsConnector,
    host: HeaderValue,
    auth: HeaderValue,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target").field("addr", &self.addr).finish()
    }
}

impl Target {
    /// Builds the target from the server's CA file and admin token file.
    pub fn new(addr: SocketAddr, ca_path: &Path, token_path: &Path) -> Result<Self> {
        let pem = std::fs::read(ca_path).with_context(|| format!("{}", ca_path.display()))?;
        let bundle = certvault_crypto::parse_pem(&pem).map_err(|e| anyhow!("CA file: {e}"))?;
        let mut roots = rustls::RootCertStore::empty();
        for der in bundle.certs {
            roots
                .add(CertificateDer::from(der))
                .map_err(|e| anyhow!("CA certificate: {e}"))?;
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        let token = std::fs::read_to_string(token_path)
            .with_context(|| format!("{}", token_path.display()))?;
        let mut auth = HeaderValue::from_str(&format!("Bearer {}", token.trim()))
            .map_err(|_| anyhow!("the admin token file does not hold a valid header value"))?;
        auth.set_sensitive(true);
        Ok(Self {
            addr,
            connector: TlsConnector::from(Arc::new(cfg)),
            host: HeaderValue::from_str(&addr.to_string())?,
            auth,
        })
    }

    /// The same server, with another bearer token.
    pub fn with_token(&self, token: &str) -> Result<Self> {
        let mut auth = HeaderValue::from_str(&format!("Bearer {}", token.trim()))
            .map_err(|_| anyhow!("the token is not a valid header value"))?;
        auth.set_sensitive(true);
        Ok(Self {
            auth,
            ..self.clone()
        })
    }

    /// Opens a connection (TCP, TLS handshake, HTTP/1.1).
    pub async fn connect(&self) -> Result<Conn> {
        let tcp = TcpStream::connect(self.addr).await?;
        tcp.set_nodelay(true)?;
        let tls = self
            .connector
            .connect(ServerName::IpAddress(self.addr.ip().into()), tcp)
            .await?;
        let (sender, driver) = http1::handshake(TokioIo::new(tls)).await?;
        Ok(Conn {
            sender,
            driver: Box::pin(driver),
            target: self.clone(),
        })
    }
}

/// A keep-alive connection. The connection is driven inside the task that sends on it (no
/// extra task per connection, like wrk's one event loop per connection set).
pub struct Conn {
    sender: http1::SendRequest<Full<Bytes>>,
    driver: std::pin::Pin<Box<ConnDriver>>,
    target: Target,
}

/// A response: status and the whole body.
pub struct Resp {
    pub status: StatusCode,
    pub body: Bytes,
}

impl Conn {
    /// Sends one request and reads the whole response body.
    pub async fn request(
        &mut self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<Resp> {
        let mut b = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, self.target.host.clone())
            .header(header::AUTHORIZATION, self.target.auth.clone());
        if body.is_some() {
            b = b.header(header::CONTENT_TYPE, "application/json");
        }
        let req = b.body(Full::new(body.unwrap_or_default()))?;
        let sender = &mut self.sender;
        let exchange = async move {
            std::future::poll_fn(|cx| sender.poll_ready(cx)).await?;
            let resp = sender.send_request(req).await?;
            let status = resp.status();
            let body = resp.into_body().collect().await?.to_bytes();
            Ok::<_, hyper::Error>(Resp { status, body })
        };
        tokio::select! {
            biased;
            r = exchange => Ok(r?),
            r = &mut self.driver => match r {
                Ok(()) => bail!("the server closed the connection"),
                Err(e) => Err(e.into()),
            },
        }
    }

    /// Sends a request without the bearer token, with extra headers (the web console: a form
    /// post or a session cookie); answers status, headers and body.
    pub async fn request_plain(
        &mut self,
        method: Method,
        path: &str,
        body: Option<(Bytes, &'static str)>,
        headers: &[(header::HeaderName, HeaderValue)],
    ) -> Result<(StatusCode, http::HeaderMap, Bytes)> {
        let mut b = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, self.target.host.clone());
        for (k, v) in headers {
            b = b.header(k, v.clone());
        }
        let body = match body {
            Some((bytes, ctype)) => {
                b = b.header(header::CONTENT_TYPE, ctype);
                bytes
            }
            None => Bytes::new(),
        };
        let req = b.body(Full::new(body))?;
        let sender = &mut self.sender;
        let exchange = async move {
            std::future::poll_fn(|cx| sender.poll_ready(cx)).await?;
            let resp = sender.send_request(req).await?;
            let (parts, body) = resp.into_parts();
            let body = body.collect().await?.to_bytes();
            Ok::<_, hyper::Error>((parts.status, parts.headers, body))
        };
        tokio::select! {
            biased;
            r = exchange => Ok(r?),
            r = &mut self.driver => match r {
                Ok(()) => bail!("the server closed the connection"),
                Err(e) => Err(e.into()),
            },
        }
    }

    /// GET expecting 200.
    pub async fn get_ok(&mut self, path: &str) -> Result<Resp> {
        let r = self.request(Method::GET, path, None).await?;
        if r.status != StatusCode::OK {
            bail!("GET {} answered {}", strip_query(path), r.status);
        }
        Ok(r)
    }
}

fn strip_query(p: &str) -> &str {
    p.split('?').next().unwrap_or(p)
}
