//! The web console under `/ui` on the main TLS listener: server-rendered pages, sign-in with a
//! certvault token, server-side sessions, CSRF tokens on every form.
//!
//! - Sessions: a random 256-bit id in the cookie `__Host-certvault_session` (HttpOnly, Secure,
//!   SameSite=Strict, Path=/); the store keeps only its SHA-256, the principal, the SHA-256 of
//!   the token it was opened with (resolved again on every request, so revoking the token or
//!   disabling the principal ends the session), and its idle and absolute limits.
//! - CSRF: every form carries `csrf`, a value derived from the session id (SHA-256 of a label and
//!   the id; nothing to store, unknown without the cookie). Every POST is checked for it, and
//!   for `Origin` / `Sec-Fetch-Site` when the browser sends them; a failure is a 403 page and
//!   changes nothing.
//! - Actions go through the Key Vault router in-process ([`Req::kv`]): the same permission
//!   check, the same handler and the same audit record as the API request would get. Reads that
//!   the API has no query for (search, state filter) come from the store after the same
//!   permission check, and are audited too.

mod certs;
pub mod html;
mod manage;
// --- admin/dashboard pages (ui3) ---
mod admin;
mod audit;
mod dashboard;
// --- end admin/dashboard pages (ui3) ---

use std::net::SocketAddr;
use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;
use certvault_core::access::{ObjectType, Permission};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use serde_json::{Value, json};

use crate::audit::{Event, Outcome, Who};
use crate::auth::Caller;
use crate::http::Body;
use crate::state::{AppState, VaultCtx};
use html::{Assets, Chrome, page};

/// The session cookie.
pub const COOKIE: &str = "__Host-certvault_session";
/// A session ends after this long without a request.
pub const IDLE_SECONDS: i64 = 30 * 60;
/// A session ends this long after sign-in whatever happens.
pub const ABSOLUTE_SECONDS: i64 = 12 * 3600;
/// `last_seen` is written at most this often.
const TOUCH_SECONDS: i64 = 60;

/// Whether the path belongs to the console.
pub fn is_ui_path(path: &str) -> bool {
    path == "/ui" || path.starts_with("/ui/")
}

/// A signed-in session.
pub(crate) struct Session {
    pub csrf: String,
    pub caller: Arc<Caller>,
}

/// One console request of a signed-in user.
pub(crate) struct Req<'a> {
    pub state: &'a Arc<AppState>,
    pub peer: SocketAddr,
    pub request_id: &'a str,
    pub query: Vec<(String, String)>,
    pub form: Vec<(String, String)>,
    pub session: Session,
    pub vaults: Vec<String>,
    /// The manage pages' header links the caller may use in the current vault (ui::manage).
    pub manage_nav: Vec<(&'static str, &'static str)>,
}

/// What the Key Vault router answered to an in-process call.
pub(crate) struct ApiReply {
    pub status: StatusCode,
    pub json: Value,
}

impl ApiReply {
    pub fn ok(&self) -> bool {
        self.status.is_success()
    }

    /// The error message of a failed call.
    pub fn message(&self) -> String {
        self.json["error"]["message"].as_str().map_or_else(
            || format!("The request failed ({}).", self.status),
            str::to_owned,
        )
    }
}

impl Req<'_> {
    /// A query parameter.
    pub fn q(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// A form field.
    pub fn f(&self, name: &str) -> Option<&str> {
        self.form
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether a checkbox was ticked.
    pub fn checked(&self, name: &str) -> bool {
        self.f(name).is_some_and(|v| !v.is_empty() && v != "0")
    }

    pub fn caller(&self) -> &Caller {
        &self.session.caller
    }

    pub fn csrf(&self) -> &str {
        &self.session.csrf
    }

    /// Whether the caller holds a certificate (or secret) permission in the vault.
    pub fn can(&self, vault_id: i64, object: ObjectType, name: &'static str) -> bool {
        self.caller()
            .authorize(vault_id, Permission::new(object, name))
            .is_ok()
    }

    pub fn chrome<'b>(&'b self, vault: Option<&'b str>, nav: &'b str) -> Chrome<'b> {
        Chrome {
            principal: Some(&self.session.caller.principal),
            admin: self.session.caller.admin,
            csrf: &self.session.csrf,
            vaults: &self.vaults,
            vault,
            nav,
            manage: &self.manage_nav,
        }
    }

    /// A full page.
    pub fn page(&self, vault: Option<&str>, nav: &str, title: &str, main: &str) -> Response<Body> {
        html_response(StatusCode::OK, page(title, &self.chrome(vault, nav), main))
    }

    /// An error page (403, 404, …); nothing was changed.
    pub fn error(&self, status: StatusCode, vault: Option<&str>, message: &str) -> Response<Body> {
        let title = match status {
            StatusCode::FORBIDDEN => "Not allowed",
            StatusCode::NOT_FOUND => "Not found",
            StatusCode::BAD_REQUEST => "Bad request",
            _ => "Something went wrong",
        };
        html_response(
            status,
            page(
                title,
                &self.chrome(vault, ""),
                &html::notice("error", message),
            ),
        )
    }

    /// Records a console read that the API would have recorded (the API records every request).
    pub async fn audit(
        &self,
        vault: &str,
        operation: &str,
        object: Option<String>,
        status: u16,
    ) -> bool {
        let ev = Event {
            request_id: Some(self.request_id.to_owned()),
            principal: self.caller().principal.clone(),
            source: Some(self.peer.ip().to_string()),
            vault: Some(vault.to_owned()),
            object,
            operation: operation.to_owned(),
            status: Some(status),
            outcome: Outcome::of_status(status),
            detail: Some(json!({"via": "ui"})),
        };
        match self.state.auditor.record(vec![ev]).await {
            Ok(_) => true,
            Err(e) => {
                tracing::error!(error = %e, "the audit record could not be written");
                false
            }
        }
    }

    /// Runs a Key Vault API request in-process as the signed-in principal: the router's
    /// permission check, the handler, and the audit record, exactly as over HTTP.
    pub async fn kv(
        &self,
        vault: &str,
        method: Method,
        path: &str,
        extra_query: &str,
        body: Option<&Value>,
    ) -> ApiReply {
        let host = format!("{vault}.{}", self.state.http.base_domain);
        let uri = format!(
            "https://{host}{path}?api-version={}{extra_query}",
            crate::kv::NEWEST_API_VERSION
        );
        let failed = |m: &str| ApiReply {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            json: json!({"error": {"message": m}}),
        };
        let Ok(req) = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::HOST, &host)
            .body(())
        else {
            return failed("The request could not be built.");
        };
        let (parts, ()) = req.into_parts();
        let target = crate::audit::target(
            &parts.method,
            &parts.uri,
            &parts.headers,
            &self.state.http.base_domain,
        );
        let body = body
            .map(|b| serde_json::to_vec(b).unwrap_or_default())
            .unwrap_or_default();
        let resp = match crate::kv::dispatch(
            self.state,
            &parts,
            Bytes::from(body),
            self.request_id,
            self.caller(),
        )
        .await
        {
            Ok(r) => r,
            Err(e) => crate::http::error_response(&e),
        };
        let resp = crate::audit::after_request(
            self.state,
            resp,
            target,
            Who::Principal(self.caller().principal.clone()),
            self.peer,
            self.request_id,
        )
        .await;
        let (parts, body) = resp.into_parts();
        let bytes = match body.collect().await {
            Ok(c) => c.to_bytes(),
            Err(never) => match never {},
        };
        ApiReply {
            status: parts.status,
            json: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        }
    }

    /// The vault, if the caller may see it (administrators, or any access policy in it).
    pub async fn vault(&self, name: &str) -> Option<Arc<VaultCtx>> {
        let v = self.state.vault(&name.to_ascii_lowercase()).await.ok()?;
        let c = self.caller();
        (c.admin || c.permissions.contains_key(&v.vault.id)).then_some(v)
    }
}

/// An HTML response.
pub fn html_response(status: StatusCode, body: String) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    r
}

/// A 303 redirect.
pub fn redirect(location: &str) -> Response<Body> {
    let mut r = crate::http::empty(StatusCode::SEE_OTHER);
    if let Ok(v) = HeaderValue::from_str(location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

fn with_cookie(mut r: Response<Body>, value: &str) -> Response<Body> {
    if let Ok(v) = HeaderValue::from_str(value) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

fn clear_cookie() -> String {
    format!("{COOKIE}=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0")
}

fn static_asset(body: &'static str, ctype: &'static str) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=31536000, immutable"),
    );
    r
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// The CSRF token of a session id.
fn csrf_of(id: &[u8]) -> String {
    let mut m = b"certvault/ui-csrf/v1\0".to_vec();
    m.extend_from_slice(id);
    b64(&certvault_crypto::sha256(&m))
}

fn session_cookie(headers: &HeaderMap) -> Option<Vec<u8>> {
    for h in headers.get_all(header::COOKIE) {
        let Ok(s) = h.to_str() else { continue };
        for part in s.split(';') {
            if let Some((k, v)) = part.trim().split_once('=')
                && k == COOKIE
            {
                let id = base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(v.trim())
                    .ok()?;
                return (id.len() == 32).then_some(id);
            }
        }
    }
    None
}

/// Constant-time comparison.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A POST must come from this origin when the browser says where it comes from.
fn same_origin(parts: &http::request::Parts) -> bool {
    let headers = &parts.headers;
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok())
        && !matches!(site, "same-origin" | "none")
    {
        return false;
    }
    if let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        // HTTP/2 carries the host in `:authority` (the URI), HTTP/1.1 in `Host`.
        let host = parts
            .uri
            .authority()
            .map(|a| a.as_str())
            .or_else(|| headers.get(header::HOST).and_then(|v| v.to_str().ok()))
            .unwrap_or("");
        let want = format!("https://{host}");
        return !host.is_empty() && origin.eq_ignore_ascii_case(&want);
    }
    true
}

fn security_headers(r: &mut Response<Body>) {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        header::STRICT_TRANSPORT_SECURITY,
        HeaderValue::from_static("max-age=31536000"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
}

/// Serves one console request.
pub async fn handle(
    state: &Arc<AppState>,
    peer: SocketAddr,
    req: Request<Incoming>,
    request_id: &str,
) -> Response<Body> {
    let mut r = route(state, peer, req, request_id).await;
    security_headers(&mut r);
    if let Ok(v) = HeaderValue::from_str(request_id) {
        r.headers_mut().insert("x-ms-request-id", v);
    }
    r
}

fn bare_page(status: StatusCode, title: &str, main: &str) -> Response<Body> {
    let chrome = Chrome {
        principal: None,
        admin: false,
        csrf: "",
        vaults: &[],
        vault: None,
        nav: "",
        manage: &[],
    };
    html_response(status, page(title, &chrome, main))
}

fn login_page(status: StatusCode, message: Option<&str>) -> Response<Body> {
    let msg = message
        .map(|m| html::notice("error", m))
        .unwrap_or_default();
    let main = format!(
        r#"<div class="login">{msg}
<form class="stack" method="post" action="/ui/login">
<div class="field"><label for="token">Access token</label>
<input type="password" id="token" name="token" autocomplete="off" required aria-describedby="token-hint">
<span class="hint" id="token-hint">A certvault token (<code>cvt_…</code>), e.g. the contents of <code>admin.token</code> or one made with the admin API.</span></div>
<div><button type="submit">Sign in</button></div>
</form></div>"#
    );
    bare_page(status, "Sign in", &main)
}

async fn system_event(
    state: &AppState,
    peer: SocketAddr,
    request_id: &str,
    principal: &str,
    operation: &str,
    status: u16,
    detail: Option<Value>,
) -> bool {
    let ev = Event {
        request_id: Some(request_id.to_owned()),
        principal: principal.to_owned(),
        source: Some(peer.ip().to_string()),
        vault: None,
        object: None,
        operation: operation.to_owned(),
        status: Some(status),
        outcome: Outcome::of_status(status),
        detail,
    };
    state.auditor.record(vec![ev]).await.is_ok()
}

async fn login(
    state: &Arc<AppState>,
    peer: SocketAddr,
    request_id: &str,
    form: &[(String, String)],
) -> Response<Body> {
    const REFUSED: &str = "The token was not accepted.";
    let token = form
        .iter()
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.trim())
        .unwrap_or("");
    if !token.starts_with("cvt_") {
        let _ = system_event(
            state,
            peer,
            request_id,
            "anonymous",
            "ui.login",
            401,
            Some(json!({"reason": "not a certvault token"})),
        )
        .await;
        return login_page(
            StatusCode::UNAUTHORIZED,
            Some("Enter a certvault token (it starts with cvt_)."),
        );
    }
    let hash = certvault_crypto::sha256(token.as_bytes());
    let Ok(caller) = crate::auth::authenticate_hash(state, hash).await else {
        let _ = system_event(
            state,
            peer,
            request_id,
            "anonymous",
            "ui.login",
            401,
            Some(json!({"reason": "token not accepted"})),
        )
        .await;
        return login_page(StatusCode::UNAUTHORIZED, Some(REFUSED));
    };
    let Ok(id) = certvault_crypto::random_bytes(32) else {
        return login_page(
            StatusCode::INTERNAL_SERVER_ERROR,
            Some("No session could be created."),
        );
    };
    let now = state.clock.now();
    let expires = caller
        .expires
        .map_or(now + ABSOLUTE_SECONDS, |e| e.min(now + ABSOLUTE_SECONDS));
    let session = certvault_store::UiSession {
        id_hash: certvault_crypto::sha256(&id).to_vec(),
        principal: caller.principal.clone(),
        token_hash: hash.to_vec(),
        created: now,
        last_seen: now,
        expires,
    };
    if let Err(e) = state.store.ui_create_session(session).await {
        tracing::warn!(error = %e, "console session not stored");
        return login_page(
            StatusCode::INTERNAL_SERVER_ERROR,
            Some("No session could be created."),
        );
    }
    if !system_event(
        state,
        peer,
        request_id,
        &caller.principal,
        "ui.login",
        200,
        None,
    )
    .await
    {
        return login_page(
            StatusCode::INTERNAL_SERVER_ERROR,
            Some("The sign-in could not be recorded in the audit trail."),
        );
    }
    with_cookie(
        redirect("/ui/"),
        &format!(
            "{COOKIE}={}; Path=/; Secure; HttpOnly; SameSite=Strict",
            b64(&id)
        ),
    )
}

/// The signed-in session of the cookie, if it is still valid.
async fn load_session(state: &Arc<AppState>, id: &[u8]) -> Option<Session> {
    let now = state.clock.now();
    let id_hash = certvault_crypto::sha256(id).to_vec();
    let s = state.store.ui_session(id_hash.clone()).await.ok()??;
    if s.expires <= now || s.last_seen + IDLE_SECONDS <= now {
        let _ = state
            .store
            .ui_delete_session(id_hash, now, now - IDLE_SECONDS)
            .await;
        return None;
    }
    let hash: [u8; 32] = s.token_hash.as_slice().try_into().ok()?;
    let caller = match crate::auth::authenticate_hash(state, hash).await {
        Ok(c) if c.principal == s.principal => c,
        _ => {
            let _ = state
                .store
                .ui_delete_session(id_hash, now, now - IDLE_SECONDS)
                .await;
            return None;
        }
    };
    if now - s.last_seen >= TOUCH_SECONDS {
        let _ = state.store.ui_touch_session(id_hash, now).await;
    }
    Some(Session {
        csrf: csrf_of(id),
        caller,
    })
}

/// The vaults the caller can open, by name.
async fn visible_vaults(state: &AppState, caller: &Caller) -> Vec<String> {
    match state.store.list_vaults(false).await {
        Ok(vs) => vs
            .into_iter()
            .filter(|v| caller.admin || caller.permissions.contains_key(&v.id))
            .map(|v| v.name)
            .collect(),
        Err(_) => Vec::new(),
    }
}

async fn route(
    state: &Arc<AppState>,
    peer: SocketAddr,
    req: Request<Incoming>,
    request_id: &str,
) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_owned();
    let method = parts.method.clone();
    if method == Method::GET {
        match path.as_str() {
            "/ui/static/ui.css" => return static_asset(Assets::CSS, "text/css; charset=utf-8"),
            "/ui/static/ui.js" => {
                return static_asset(Assets::JS, "text/javascript; charset=utf-8");
            }
            _ => {}
        }
    }
    let query = crate::kv::parse_query(parts.uri.query());
    let form = if method == Method::POST {
        if !same_origin(&parts) {
            return bare_page(
                StatusCode::FORBIDDEN,
                "Not allowed",
                &html::notice(
                    "error",
                    "The form was sent from another site. Nothing was changed.",
                ),
            );
        }
        let ctype = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        match crate::http::read_body(body, state.http.max_body).await {
            // File uploads (the import page).
            Ok(b)
                if ctype
                    .to_ascii_lowercase()
                    .starts_with("multipart/form-data") =>
            {
                match manage::parse_multipart(&ctype, &b) {
                    Some(f) => f,
                    None => {
                        return bare_page(
                            StatusCode::BAD_REQUEST,
                            "Bad request",
                            &html::notice("error", "The form data could not be read."),
                        );
                    }
                }
            }
            Ok(b) => crate::kv::parse_query(Some(&String::from_utf8_lossy(&b))),
            Err(e) => {
                return bare_page(e.status, "Bad request", &html::notice("error", &e.message));
            }
        }
    } else if method == Method::GET || method == Method::HEAD {
        Vec::new()
    } else {
        return bare_page(
            StatusCode::METHOD_NOT_ALLOWED,
            "Not allowed",
            &html::notice("error", "This method is not used by the console."),
        );
    };
    let cookie = session_cookie(&parts.headers);
    if path == "/ui/login" {
        if method == Method::POST {
            return login(state, peer, request_id, &form).await;
        }
        if let Some(id) = &cookie
            && load_session(state, id).await.is_some()
        {
            return redirect("/ui/");
        }
        return login_page(StatusCode::OK, None);
    }
    let session = match &cookie {
        Some(id) => load_session(state, id).await,
        None => None,
    };
    let Some(session) = session else {
        let r = if method == Method::GET && !query.iter().any(|(k, _)| k == "json") {
            redirect("/ui/login")
        } else {
            login_page(
                StatusCode::UNAUTHORIZED,
                Some("Your session has ended. Sign in again."),
            )
        };
        return if cookie.is_some() {
            with_cookie(r, &clear_cookie())
        } else {
            r
        };
    };
    if method == Method::POST {
        let sent = form
            .iter()
            .find(|(k, _)| k == "csrf")
            .map(|(_, v)| v.as_str())
            .unwrap_or("");
        if !same(sent.as_bytes(), session.csrf.as_bytes()) {
            let _ = system_event(
                state,
                peer,
                request_id,
                &session.caller.principal,
                "ui.csrf-refused",
                403,
                Some(json!({"path": certvault_core::names::truncate(&path, 200)})),
            )
            .await;
            return bare_page(
                StatusCode::FORBIDDEN,
                "Not allowed",
                &html::notice(
                    "error",
                    "The form's security token is missing or wrong (reload the page and try again). Nothing was changed.",
                ),
            );
        }
    }
    if path == "/ui/logout" {
        if method != Method::POST {
            return redirect("/ui/");
        }
        let now = state.clock.now();
        if let Some(id) = &cookie {
            let _ = state
                .store
                .ui_delete_session(
                    certvault_crypto::sha256(id).to_vec(),
                    now,
                    now - IDLE_SECONDS,
                )
                .await;
        }
        let _ = system_event(
            state,
            peer,
            request_id,
            &session.caller.principal,
            "ui.logout",
            200,
            None,
        )
        .await;
        return with_cookie(redirect("/ui/login"), &clear_cookie());
    }
    let vaults = visible_vaults(state, &session.caller).await;
    let segs: Vec<&str> = path
        .trim_start_matches("/ui")
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let manage_nav = match segs.as_slice() {
        ["v", vault, ..] => {
            manage::nav_links(state, &session.caller, &crate::kv::percent_decode(vault)).await
        }
        _ => Vec::new(),
    };
    let r = Req {
        state,
        peer,
        request_id,
        query,
        form,
        session,
        vaults,
        manage_nav,
    };
    match segs.as_slice() {
        [] => match r.vaults.first() {
            Some(v) => redirect(&format!("/ui/v/{}/certificates", html::url(v))),
            None => r.page(
                None,
                "",
                "No vault",
                &html::notice(
                    "info",
                    "You have no access to any vault. Ask an administrator for an access policy.",
                ),
            ),
        },
        ["go"] => match r.q("vault") {
            Some(v) if !v.is_empty() => redirect(&format!("/ui/v/{}/dashboard", html::url(v))),
            _ => redirect("/ui/"),
        },
        // --- manage pages (ui2) ---
        ["v", vault, page, rest @ ..] if manage::PAGES.contains(page) => {
            let vault = crate::kv::percent_decode(vault);
            manage::route(&r, &method, &vault, page, rest).await
        }
        // --- end manage pages (ui2) ---
        // --- admin/dashboard pages (ui3) ---
        ["v", vault, "audit"] if method == Method::GET || method == Method::HEAD => {
            audit::page(&r, &crate::kv::percent_decode(vault)).await
        }
        ["admin", rest @ ..] => admin::route(&r, &method, rest).await,
        // --- end admin/dashboard pages (ui3) ---
        ["v", vault, rest @ ..] => {
            let vault = crate::kv::percent_decode(vault);
            certs::route(&r, &method, &vault, rest).await
        }
        _ => r.error(StatusCode::NOT_FOUND, None, "There is no such page."),
    }
}
