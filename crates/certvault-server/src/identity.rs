//! A managed-identity token endpoint in the Azure Arc style, so that applications keep
//! `ManagedIdentityCredential` / `DefaultAzureCredential` unchanged: with `IDENTITY_ENDPOINT`
//! and `IMDS_ENDPOINT` set (and no `IDENTITY_HEADER`), azure-identity (through MSAL) takes the
//! Azure Arc path and
//!
//! 1. sends `GET <IDENTITY_ENDPOINT>?api-version=2020-06-01&resource=<resource>` with
//!    `Metadata: true`;
//! 2. expects **401** with `WWW-Authenticate: Basic realm=<path of a key file>`, reads
//!    `/var/opt/azcmagent/tokens/<name>.key` (on Linux the directory is fixed in the SDKs; the
//!    file must end in `.key` and hold at most 4096 bytes);
//! 3. sends the same request again with `Authorization: Basic <file content>`;
//! 4. expects **200** with JSON `access_token`, `expires_in` (MSAL requires it), `expires_on`,
//!    `resource` and `token_type`.
//!
//! The endpoint is a separate plain-HTTP listener bound to a loopback address (the Arc agent
//! listens on `http://localhost:40342`); proof of being a local process allowed to read the key
//! directory is the only credential, exactly as on an Arc machine. Each challenge writes a new
//! random secret into a new file (mode 0600, or 0640 when configured), valid once and for 60
//! seconds, deleted when used or expired. A successful exchange issues a short-lived `cvt_`
//! token for the one configured principal, stored hashed with its expiry like every token, and
//! only for the server's own resource (`https://<base-domain>[:port]`).

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::ServerError;
use crate::audit::{Event, Outcome};
use crate::http::{Body, json as json_response};
use crate::state::AppState;

/// Where the Azure SDKs read Arc key files on Linux (fixed in azure-identity and MSAL).
pub const ARC_KEY_DIR: &str = "/var/opt/azcmagent/tokens";
/// The path of the token endpoint (the Arc agent's).
pub const TOKEN_PATH: &str = "/metadata/identity/oauth2/token";
/// The label of the tokens this endpoint issues.
pub const TOKEN_LABEL: &str = "managed identity endpoint";
/// How long a challenge secret may be used.
const CHALLENGE_TTL: Duration = Duration::from_secs(60);
/// Challenges outstanding at once (each is a file).
const MAX_PENDING: usize = 256;
/// Issued tokens are deleted from the store this long after they expired.
const KEEP_EXPIRED: i64 = 24 * 3600;

/// Settings of the identity endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentitySettings {
    /// The loopback address of the plain-HTTP listener.
    pub listen: SocketAddr,
    /// The principal whose tokens this endpoint issues.
    pub principal: String,
    /// Where challenge key files are written ([`ARC_KEY_DIR`] unless the SDKs' view of that
    /// directory is a mount of another one).
    pub key_dir: PathBuf,
    /// Lifetime of an issued token in seconds (300 to 86400).
    pub token_lifetime: i64,
    /// Key files readable by the directory's group too (0640 instead of 0600), for
    /// applications that run as another user in that group.
    pub group_readable: bool,
}

impl IdentitySettings {
    /// Settings with the defaults: key files in [`ARC_KEY_DIR`], mode 0600, tokens for one hour.
    pub fn new(listen: SocketAddr, principal: impl Into<String>) -> Self {
        Self {
            listen,
            principal: principal.into(),
            key_dir: PathBuf::from(ARC_KEY_DIR),
            token_lifetime: 3600,
            group_readable: false,
        }
    }
}

fn config(msg: impl Into<String>) -> ServerError {
    ServerError::Config(msg.into())
}

/// Checks the settings and prepares the key directory (created with mode 0700 when missing;
/// key files of an earlier run older than ten minutes are removed).
pub fn prepare(s: &IdentitySettings) -> Result<(), ServerError> {
    if !s.listen.ip().is_loopback() {
        return Err(config(format!(
            "--identity-listen must be a loopback address (127.0.0.1 or [::1]), not {}: the \
             endpoint is plain HTTP and trusts whoever can read the key directory",
            s.listen
        )));
    }
    if s.principal.trim().is_empty() {
        return Err(config("--identity-principal must name a principal"));
    }
    if !(300..=86_400).contains(&s.token_lifetime) {
        return Err(config(
            "the identity token lifetime must be from 300 to 86400 seconds",
        ));
    }
    let dir = &s.key_dir;
    let text = dir.to_str().unwrap_or("");
    if !dir.is_absolute() || text.is_empty() || text.contains(['=', ',', ' ', '"']) {
        return Err(config(format!(
            "the identity key directory {} must be an absolute path without '=', ',', '\"' or spaces",
            dir.display()
        )));
    }
    if !dir.exists() {
        std::fs::create_dir_all(dir)
            .map_err(|e| config(format!("cannot create {}: {e}", dir.display())))?;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    }
    let meta = std::fs::metadata(dir).map_err(|e| config(format!("{}: {e}", dir.display())))?;
    if !meta.is_dir() {
        return Err(config(format!("{} is not a directory", dir.display())));
    }
    if meta.permissions().mode() & 0o002 != 0 {
        return Err(config(format!(
            "the identity key directory {} is writable by every user; make it 0700 or 0750",
            dir.display()
        )));
    }
    if dir != Path::new(ARC_KEY_DIR) {
        tracing::warn!(
            dir = %dir.display(),
            "the Azure SDKs read Arc key files only from {ARC_KEY_DIR}; this works only when that \
             is where applications see this directory"
        );
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > Duration::from_secs(600));
            if name.starts_with("certvault-") && name.ends_with(".key") && old {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    Ok(())
}

/// Binds the listener.
pub async fn bind(s: &IdentitySettings) -> Result<TcpListener, ServerError> {
    TcpListener::bind(s.listen)
        .await
        .map_err(|e| ServerError::Io(format!("cannot listen on {}: {e}", s.listen)))
}

struct Pending {
    path: PathBuf,
    until: Instant,
}

/// The running endpoint.
pub struct IdentityEndpoint {
    state: Arc<AppState>,
    settings: IdentitySettings,
    pending: Mutex<HashMap<[u8; 32], Pending>>,
}

impl std::fmt::Debug for IdentityEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityEndpoint")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

fn answer(status: StatusCode, error: &str, description: &str) -> Response<Body> {
    let mut r = json_response(
        status,
        &json!({"error": error, "error_description": description}),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

impl IdentityEndpoint {
    /// The endpoint for `state`.
    pub fn new(state: Arc<AppState>, settings: IdentitySettings) -> Self {
        Self {
            state,
            settings,
            pending: Mutex::new(HashMap::new()),
        }
    }

    /// Serves until `shutdown` resolves; then removes the key files still outstanding.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) {
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        let mut tick = tokio::time::interval(Duration::from_secs(15));
        let mut last_cleanup = Instant::now();
        tokio::pin!(shutdown);
        loop {
            let (tcp, peer) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "identity endpoint: accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = tick.tick() => {
                    self.prune();
                    if last_cleanup.elapsed() > Duration::from_secs(600) {
                        last_cleanup = Instant::now();
                        self.delete_expired_tokens().await;
                    }
                    continue;
                }
                () = &mut shutdown => break,
            };
            let this = self.clone();
            let watcher = graceful.watcher();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let this = this.clone();
                    async move { Ok::<_, Infallible>(this.handle(peer, req).await) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(10))
                    .serve_connection(TokioIo::new(tcp), svc);
                if let Err(e) = watcher.watch(conn).await {
                    tracing::debug!(%peer, error = %e, "identity endpoint: connection ended with an error");
                }
            });
        }
        drop(listener);
        tokio::select! {
            () = graceful.shutdown() => {},
            () = tokio::time::sleep(Duration::from_secs(10)) => {}
        }
        let all: Vec<Pending> = match self.pending.lock() {
            Ok(mut p) => p.drain().map(|(_, v)| v).collect(),
            Err(_) => Vec::new(),
        };
        for p in all {
            let _ = std::fs::remove_file(&p.path);
        }
    }

    /// Forgets expired challenges and removes their files.
    fn prune(&self) {
        let now = Instant::now();
        let gone: Vec<PathBuf> = match self.pending.lock() {
            Ok(mut p) => {
                let expired: Vec<[u8; 32]> = p
                    .iter()
                    .filter(|(_, v)| v.until <= now)
                    .map(|(k, _)| *k)
                    .collect();
                expired
                    .iter()
                    .filter_map(|k| p.remove(k))
                    .map(|v| v.path)
                    .collect()
            }
            Err(_) => Vec::new(),
        };
        for path in gone {
            let _ = std::fs::remove_file(path);
        }
    }

    async fn delete_expired_tokens(&self) {
        let before = self.state.clock.now() - KEEP_EXPIRED;
        match self
            .state
            .store
            .delete_expired_tokens(TOKEN_LABEL, before)
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                tokens = n,
                "deleted expired tokens of the managed identity endpoint"
            ),
            Err(e) => tracing::warn!(error = %e, "could not delete expired identity tokens"),
        }
    }

    async fn handle(&self, peer: SocketAddr, req: Request<Incoming>) -> Response<Body> {
        let (resp, principal, operation) = self.route(&req).await;
        let status = resp.status().as_u16();
        tracing::debug!(%peer, method = %req.method(), path = req.uri().path(), status, "identity endpoint request");
        if status == 404 || status == 405 {
            return resp;
        }
        let event = Event {
            request_id: None,
            principal: principal.unwrap_or_else(|| "anonymous".to_owned()),
            source: Some(peer.ip().to_string()),
            vault: None,
            object: None,
            operation: operation.to_owned(),
            status: Some(status),
            outcome: Outcome::of_status(status),
            detail: None,
        };
        match self.state.auditor.record(vec![event]).await {
            Ok(_) => resp,
            Err(e) => {
                tracing::error!(error = %e, "the audit record could not be written; the identity request fails");
                answer(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "server_error",
                    "The request could not be recorded in the audit trail.",
                )
            }
        }
    }

    /// The response, the principal a token was issued to, and the audited operation name.
    async fn route(
        &self,
        req: &Request<Incoming>,
    ) -> (Response<Body>, Option<String>, &'static str) {
        const INVALID: &str = "identity.invalid";
        if req.uri().path() != TOKEN_PATH {
            let r = answer(
                StatusCode::NOT_FOUND,
                "not_found",
                "Unknown path; the token endpoint is /metadata/identity/oauth2/token.",
            );
            return (r, None, INVALID);
        }
        if req.method() != Method::GET {
            let r = answer(
                StatusCode::METHOD_NOT_ALLOWED,
                "invalid_request",
                "Use GET.",
            );
            return (r, None, INVALID);
        }
        let metadata = req
            .headers()
            .get("metadata")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("true"));
        if !metadata {
            let r = answer(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "Required metadata header not specified",
            );
            return (r, None, INVALID);
        }
        let query = crate::kv::parse_query(req.uri().query());
        let get = |k: &str| {
            query
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(k))
                .map(|(_, v)| v.as_str())
        };
        if get("api-version").is_none_or(str::is_empty) {
            let r = answer(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "Required query variable 'api-version' is missing",
            );
            return (r, None, INVALID);
        }
        if [
            "client_id",
            "object_id",
            "msi_res_id",
            "mi_res_id",
            "principal_id",
        ]
        .iter()
        .any(|k| get(k).is_some())
        {
            let r = answer(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "certvault's identity endpoint serves one (system-assigned) identity; \
                 user-assigned identity selectors are not supported",
            );
            return (r, None, INVALID);
        }
        let ours = self.state.http.resource();
        match get("resource") {
            Some(r) if r.trim_end_matches('/') == ours => {}
            Some(_) => {
                let r = answer(
                    StatusCode::BAD_REQUEST,
                    "invalid_resource",
                    &format!("certvault issues tokens only for the resource {ours}"),
                );
                return (r, None, INVALID);
            }
            None => {
                let r = answer(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "Required query variable 'resource' is missing",
                );
                return (r, None, INVALID);
            }
        }
        let auth = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let Some(auth) = auth else {
            return (self.challenge().await, None, "identity.challenge");
        };
        let secret = auth
            .strip_prefix("Basic ")
            .or_else(|| auth.strip_prefix("basic "));
        if !secret.is_some_and(|s| self.consume(s)) {
            let r = answer(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "The challenge secret is unknown, used or expired; request a new challenge.",
            );
            return (r, None, INVALID);
        }
        self.issue(&ours).await
    }

    /// Writes a new key file and answers 401 with its path.
    async fn challenge(&self) -> Response<Body> {
        self.prune();
        let full = self.pending.lock().map(|p| p.len() >= MAX_PENDING);
        if full.unwrap_or(true) {
            return answer(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_requests",
                "Too many challenges outstanding; try again shortly.",
            );
        }
        let made = (|| {
            let id = certvault_crypto::random_bytes(16).ok()?;
            let secret = certvault_crypto::random_bytes(32).ok()?;
            Some((hex::encode(id), URL_SAFE_NO_PAD.encode(secret)))
        })();
        let Some((id, secret)) = made else {
            return answer(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "No random numbers.",
            );
        };
        let path = self.settings.key_dir.join(format!("certvault-{id}.key"));
        let mode = if self.settings.group_readable {
            0o640
        } else {
            0o600
        };
        let write_path = path.clone();
        let content = secret.clone();
        let written = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .open(&write_path)?;
            f.write_all(content.as_bytes())?;
            f.sync_all()
        })
        .await;
        if !matches!(written, Ok(Ok(()))) {
            let why = match written {
                Ok(Err(e)) => e.to_string(),
                Err(e) => e.to_string(),
                Ok(Ok(())) => String::new(),
            };
            tracing::error!(dir = %self.settings.key_dir.display(), error = %why, "identity endpoint: cannot write a key file");
            return answer(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "The key file could not be written.",
            );
        }
        let hash = certvault_crypto::sha256(secret.as_bytes());
        if let Ok(mut p) = self.pending.lock() {
            p.insert(
                hash,
                Pending {
                    path: path.clone(),
                    until: Instant::now() + CHALLENGE_TTL,
                },
            );
        }
        let mut r = answer(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Read the key file named in WWW-Authenticate and send its content as Basic \
             authorization.",
        );
        if let Ok(v) = HeaderValue::from_str(&format!("Basic realm={}", path.display())) {
            r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
        }
        r
    }

    /// Uses up a challenge secret: true when it was outstanding and fresh.
    fn consume(&self, secret: &str) -> bool {
        let hash = certvault_crypto::sha256(secret.as_bytes());
        let found = self.pending.lock().ok().and_then(|mut p| p.remove(&hash));
        match found {
            Some(p) => {
                let _ = std::fs::remove_file(&p.path);
                p.until > Instant::now()
            }
            None => false,
        }
    }

    /// Issues a token for the configured principal.
    async fn issue(&self, resource: &str) -> (Response<Body>, Option<String>, &'static str) {
        const OP: &str = "identity.token";
        let fail = |status, error: &str, msg: &str| (answer(status, error, msg), None, OP);
        let name = &self.settings.principal;
        let principal = match self.state.store.principal(&name.to_ascii_lowercase()).await {
            Ok(Some(p)) => p,
            Ok(None) => {
                tracing::warn!(principal = %name, "identity endpoint: the configured principal does not exist");
                return fail(
                    StatusCode::FORBIDDEN,
                    "invalid_identity",
                    &format!(
                        "The identity principal '{name}' does not exist; create it with \
                         `certvault principal create {name}`."
                    ),
                );
            }
            Err(e) => {
                tracing::error!(error = %e, "identity endpoint: store failed");
                return fail(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "server_error",
                    "The store failed.",
                );
            }
        };
        if principal.disabled {
            return fail(
                StatusCode::FORBIDDEN,
                "invalid_identity",
                &format!("The identity principal '{name}' is disabled."),
            );
        }
        let Ok(token) = crate::auth::new_token() else {
            return fail(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "No random numbers.",
            );
        };
        let now = self.state.clock.now();
        let lifetime = self.settings.token_lifetime;
        let hash = certvault_crypto::sha256(token.as_bytes()).to_vec();
        if let Err(e) = self
            .state
            .store
            .add_token(
                principal.id,
                hash,
                Some(TOKEN_LABEL.to_owned()),
                Some(now + lifetime),
                now,
            )
            .await
        {
            tracing::error!(error = %e, "identity endpoint: could not store the token");
            return fail(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "The token could not be stored.",
            );
        }
        tracing::info!(principal = %principal.name, expires_in = lifetime, "issued a managed-identity token");
        let body: Value = json!({
            "access_token": token,
            "expires_in": lifetime.to_string(),
            "expires_on": (now + lifetime).to_string(),
            "ext_expires_in": lifetime.to_string(),
            "not_before": now.to_string(),
            "resource": resource,
            "token_type": "Bearer",
        });
        let mut r = json_response(StatusCode::OK, &body);
        r.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        (r, Some(principal.name), OP)
    }
}
