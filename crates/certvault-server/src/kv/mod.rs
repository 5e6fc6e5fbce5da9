//! The Key Vault data-plane wire API: certificates, and the managed key and secret of each
//! certificate version. Routes are matched on path segments, ignoring the case of route words.

pub(crate) mod certs;
mod issuers;
pub mod key_version_cache;
mod keys;
mod model;
pub mod secret_cache;
mod secrets;

use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Response, StatusCode, header, request::Parts};
use serde::de::DeserializeOwned;

use certvault_core::access::{ObjectType, Permission};

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::http::Body;
use crate::state::{AppState, VaultCtx};

/// The newest API version this server knows; unknown newer versions are served as this one.
pub const NEWEST_API_VERSION: &str = "2026-04-01";

/// Everything a handler needs about the request.
pub struct Ctx<'a> {
    /// Server state.
    pub state: &'a Arc<AppState>,
    /// The addressed vault.
    pub vault: Arc<VaultCtx>,
    /// `https://host[:port]` as the client addressed us.
    pub base: String,
    /// The requested API version.
    pub api_version: String,
    /// Decoded query parameters.
    pub query: Vec<(String, String)>,
    /// The request body.
    pub body: Bytes,
    /// Request time.
    pub now: i64,
    /// Request id.
    pub request_id: &'a str,
    /// Who is calling.
    pub caller: &'a Caller,
    /// The version a handler resolved for a request naming none (for the audit record).
    pub resolved_version: std::sync::OnceLock<String>,
}

impl Ctx<'_> {
    /// A query parameter (names compared case-insensitively).
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Parses the JSON body.
    pub fn json<T: DeserializeOwned>(&self) -> ApiResult<T> {
        self.json_ref()
    }

    /// Like [`Self::json`], for a type that may borrow strings from the body.
    pub fn json_ref<'de, T: serde::Deserialize<'de>>(&'de self) -> ApiResult<T> {
        if self.body.is_empty() {
            return Err(ApiError::bad(
                "The request body is empty; a JSON object is required.",
            ));
        }
        serde_json::from_slice(&self.body).map_err(|e| {
            ApiError::bad(format!(
                "The request body is not valid: {}",
                sanitize_serde(&e.to_string())
            ))
        })
    }

    /// The vault's row id.
    pub fn vault_id(&self) -> i64 {
        self.vault.vault.id
    }

    /// `maxresults`, 1 to 25 (default 25).
    pub fn max_results(&self) -> ApiResult<usize> {
        match self.param("maxresults") {
            None | Some("") => Ok(25),
            Some(v) => match v.parse::<usize>() {
                Ok(n) if (1..=25).contains(&n) => Ok(n),
                _ => Err(ApiError::bad(format!(
                    "maxresults must be an integer from 1 to 25, got '{}'.",
                    certvault_core::names::truncate(v, 20)
                ))),
            },
        }
    }

    /// The `$skiptoken` paging cursor.
    pub fn skiptoken(&self) -> Option<String> {
        self.param("$skiptoken")
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    }

    /// The absolute `nextLink` for a collection path (starting with `/`).
    pub fn next_link(&self, path: &str, token: &str, max: usize, extra: &[(&str, &str)]) -> String {
        let mut link = format!(
            "{}{}?api-version={}&$skiptoken={}&maxresults={}",
            self.base,
            path,
            self.api_version,
            percent_encode(token),
            max
        );
        for (k, v) in extra {
            link.push('&');
            link.push_str(k);
            link.push('=');
            link.push_str(&percent_encode(v));
        }
        link
    }
}

/// Answers one page of a collection at `path`. `rows` holds up to `max + 1` rows: the extra
/// row only tells that more follow, and `cursor` of the last row shown becomes `$skiptoken`.
pub fn page<T>(
    ctx: &Ctx<'_>,
    path: &str,
    rows: &[T],
    max: usize,
    extra: &[(&str, &str)],
    item: impl Fn(&T) -> Option<serde_json::Value>,
    cursor: impl Fn(&T) -> String,
) -> Response<Body> {
    let items: Vec<serde_json::Value> = rows.iter().take(max).filter_map(item).collect();
    let next = if rows.len() > max {
        rows.get(max - 1)
            .map(|last| ctx.next_link(path, &cursor(last), max, extra))
    } else {
        None
    };
    crate::http::json(
        StatusCode::OK,
        &serde_json::json!({"value": items, "nextLink": next}),
    )
}

/// Serde messages can quote input; keep them short and on one line.
fn sanitize_serde(msg: &str) -> String {
    certvault_core::names::truncate(&msg.replace(['\n', '\r'], " "), 200)
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub(crate) fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    if !bytes.iter().any(|&b| b == b'%' || b == b'+') {
        return s.to_owned();
    }
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok());
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(v) => {
                        out.push(v);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            _ => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub(crate) fn parse_query(q: Option<&str>) -> Vec<(String, String)> {
    q.unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (percent_decode(k), percent_decode(v)),
            None => (percent_decode(p), String::new()),
        })
        .collect()
}

/// `7.4`, `7.6-preview.2`, `2016-10-01`, `2025-06-01-preview`.
fn api_version_ok(v: &str) -> bool {
    let (core, pre) = match v.split_once("-preview") {
        Some((c, rest)) => (c, Some(rest)),
        None => (v, None),
    };
    if let Some(rest) = pre {
        let digits = rest
            .strip_prefix('.')
            .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()));
        if !(rest.is_empty() || digits) {
            return false;
        }
    }
    let dotted = core.split_once('.').is_some_and(|(a, b)| {
        !a.is_empty()
            && !b.is_empty()
            && a.bytes().all(|c| c.is_ascii_digit())
            && b.bytes().all(|c| c.is_ascii_digit())
    });
    let date = {
        let p: Vec<&str> = core.split('-').collect();
        p.len() == 3
            && p.first().is_some_and(|y| y.len() == 4)
            && p.get(1).is_some_and(|m| m.len() == 2)
            && p.get(2).is_some_and(|d| d.len() == 2)
            && p.iter().all(|x| x.bytes().all(|c| c.is_ascii_digit()))
    };
    dotted || date
}

/// Resolves the vault from the host name: `<vault>.<base-domain>` names a vault; any other
/// host reaches `default`.
pub(crate) fn vault_from_host(host: &str, base_domain: &str) -> String {
    let name = host_without_port(host);
    let suffix_len = base_domain.len() + 1;
    if name.len() > suffix_len
        && name.is_char_boundary(name.len() - suffix_len)
        && name.as_bytes().get(name.len() - suffix_len) == Some(&b'.')
        && name[name.len() - base_domain.len()..].eq_ignore_ascii_case(base_domain)
    {
        let label = &name[..name.len() - suffix_len];
        if !label.contains('.') {
            return label.to_ascii_lowercase();
        }
    }
    "default".to_owned()
}

fn host_without_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

/// Routes one authenticated request.
pub async fn dispatch(
    state: &Arc<AppState>,
    parts: &Parts,
    body: Bytes,
    request_id: &str,
    caller: &Caller,
) -> ApiResult<Response<Body>> {
    let host = parts
        .uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| {
            parts
                .headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
        })
        .ok_or_else(|| ApiError::bad("The request has no Host header."))?;
    let host = host.strip_suffix(":443").unwrap_or(host);
    if host.is_empty() || host.contains(['/', ' ', '@']) {
        return Err(ApiError::bad("The Host header is not valid."));
    }
    let query = parse_query(parts.uri.query());
    let api_version = query
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("api-version"))
        .map(|(_, v)| v.clone())
        .ok_or_else(|| ApiError::bad("The api-version query parameter is missing."))?;
    if !api_version_ok(&api_version) {
        return Err(ApiError::bad(format!(
            "The api-version '{}' is not valid.",
            certvault_core::names::truncate(&api_version, 40)
        )));
    }
    let vault_name = vault_from_host(host, &state.http.base_domain);
    // Only administrators learn whether a vault exists; anyone else gets the same 403 for a
    // missing vault as for one they hold no permission in.
    let vault = match state.vault(&vault_name).await {
        Ok(v) => v,
        Err(e) if e.status == StatusCode::NOT_FOUND && !caller.admin => {
            return Err(ApiError::forbidden(format!(
                "The principal '{}' has no access to this vault.",
                caller.principal
            ))
            .inner("ForbiddenByPolicy"));
        }
        Err(e) => return Err(e),
    };
    let ctx = Ctx {
        state,
        vault,
        base: format!("https://{host}"),
        api_version,
        query,
        body,
        now: state.clock.now(),
        request_id,
        caller,
        resolved_version: std::sync::OnceLock::new(),
    };
    let path = parts.uri.path();
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    // Route words match case-insensitively: one lower-cased copy of the path, split the same
    // way (ASCII lower-casing keeps every byte offset).
    let lower = path.to_ascii_lowercase();
    let l: Vec<&str> = lower.trim_start_matches('/').split('/').collect();
    let m = &parts.method;
    let seg = |i: usize| segs.get(i).copied().unwrap_or("");

    use Method as M;
    use ObjectType::{Certificates as C, Keys as K, Secrets as S};
    let p = Permission::new;
    let (need, handler): (Permission, Handler<'_>) = match (l.as_slice(), m) {
        // certificates collection and route words
        (["certificates"] | ["certificates", ""], &M::GET) => {
            (p(C, "list"), Box::pin(certs::list(&ctx, false)))
        }
        (["certificates", "issuers"] | ["certificates", "issuers", ""], &M::GET) => {
            (p(C, "listissuers"), Box::pin(issuers::list(&ctx)))
        }
        (["certificates", "issuers", _], &M::GET) => {
            (p(C, "getissuers"), Box::pin(issuers::get(&ctx, seg(2))))
        }
        (["certificates", "issuers", _], &M::PUT) => {
            (p(C, "setissuers"), Box::pin(issuers::set(&ctx, seg(2))))
        }
        (["certificates", "issuers", _], &M::PATCH) => {
            (p(C, "setissuers"), Box::pin(issuers::update(&ctx, seg(2))))
        }
        (["certificates", "issuers", _], &M::DELETE) => (
            p(C, "deleteissuers"),
            Box::pin(issuers::delete(&ctx, seg(2))),
        ),
        (["certificates", "contacts"], &M::GET) => (
            p(C, "managecontacts"),
            Box::pin(issuers::get_contacts(&ctx)),
        ),
        (["certificates", "contacts"], &M::PUT) => (
            p(C, "managecontacts"),
            Box::pin(issuers::set_contacts(&ctx)),
        ),
        (["certificates", "contacts"], &M::DELETE) => (
            p(C, "managecontacts"),
            Box::pin(issuers::delete_contacts(&ctx)),
        ),
        (["certificates", "restore"], &M::POST) => {
            (p(C, "restore"), Box::pin(certs::restore(&ctx)))
        }
        // one certificate
        (["certificates", _] | ["certificates", _, ""], &M::GET) => {
            (p(C, "get"), Box::pin(certs::get(&ctx, seg(1), None)))
        }
        (["certificates", _] | ["certificates", _, ""], &M::PATCH) => {
            (p(C, "update"), Box::pin(certs::update(&ctx, seg(1), None)))
        }
        (["certificates", _], &M::DELETE) => {
            (p(C, "delete"), Box::pin(certs::delete(&ctx, seg(1))))
        }
        (["certificates", _, "versions"], &M::GET) => {
            (p(C, "list"), Box::pin(certs::versions(&ctx, seg(1))))
        }
        (["certificates", _, "policy"], &M::GET) => {
            (p(C, "get"), Box::pin(certs::get_policy(&ctx, seg(1))))
        }
        (["certificates", _, "policy"], &M::PATCH) => {
            (p(C, "update"), Box::pin(certs::update_policy(&ctx, seg(1))))
        }
        (["certificates", _, "pending"], &M::GET) => {
            (p(C, "get"), Box::pin(certs::get_pending(&ctx, seg(1))))
        }
        (["certificates", _, "pending"], &M::PATCH) => (
            p(C, "update"),
            Box::pin(certs::cancel_pending(&ctx, seg(1))),
        ),
        // Key Vault's DeleteCertificateOperation requires certificates/update (REST spec),
        // not delete: it abandons the order, the certificate itself stays.
        (["certificates", _, "pending"], &M::DELETE) => (
            p(C, "update"),
            Box::pin(certs::delete_pending(&ctx, seg(1))),
        ),
        (["certificates", _, "pending", "acknowledge"], &M::POST) => (
            p(C, "update"),
            Box::pin(certs::acknowledge_pending(&ctx, seg(1))),
        ),
        (["certificates", _, "pending", "merge"], &M::POST) => {
            (p(C, "create"), Box::pin(certs::merge(&ctx, seg(1))))
        }
        (["certificates", _, "create"], &M::POST) => {
            (p(C, "create"), Box::pin(certs::create(&ctx, seg(1))))
        }
        (["certificates", _, "renew"], &M::POST) => (
            p(C, "create"),
            Box::pin(crate::lifecycle::renew_route(&ctx, seg(1))),
        ),
        (["certificates", _, "import"], &M::POST) => {
            (p(C, "import"), Box::pin(certs::import(&ctx, seg(1))))
        }
        (["certificates", _, "backup"], &M::POST) => {
            (p(C, "backup"), Box::pin(certs::backup(&ctx, seg(1))))
        }
        (["certificates", _, _], &M::GET) => (
            p(C, "get"),
            Box::pin(certs::get(&ctx, seg(1), Some(seg(2)))),
        ),
        (["certificates", _, _], &M::PATCH) => (
            p(C, "update"),
            Box::pin(certs::update(&ctx, seg(1), Some(seg(2)))),
        ),
        // deleted certificates
        (["deletedcertificates"] | ["deletedcertificates", ""], &M::GET) => {
            (p(C, "list"), Box::pin(certs::list(&ctx, true)))
        }
        (["deletedcertificates", _], &M::GET) => {
            (p(C, "get"), Box::pin(certs::get_deleted(&ctx, seg(1))))
        }
        (["deletedcertificates", _], &M::DELETE) => {
            (p(C, "purge"), Box::pin(certs::purge(&ctx, seg(1))))
        }
        (["deletedcertificates", _, "recover"], &M::POST) => {
            (p(C, "recover"), Box::pin(certs::recover(&ctx, seg(1))))
        }
        // managed secrets
        (["secrets"] | ["secrets", ""], &M::GET) => (p(S, "list"), Box::pin(secrets::list(&ctx))),
        (["secrets", _, "versions"], &M::GET) => {
            (p(S, "list"), Box::pin(secrets::versions(&ctx, seg(1))))
        }
        (["secrets", _] | ["secrets", _, ""], &M::GET) => {
            (p(S, "get"), Box::pin(secrets::get(&ctx, seg(1), None)))
        }
        (["secrets", _, _], &M::GET) => (
            p(S, "get"),
            Box::pin(secrets::get(&ctx, seg(1), Some(seg(2)))),
        ),
        (["secrets", _], &M::PUT) => (p(S, "set"), Box::pin(secrets::refuse(&ctx, seg(1)))),
        (["secrets", _], &M::DELETE) => (p(S, "delete"), Box::pin(secrets::refuse(&ctx, seg(1)))),
        (["secrets", _, _], &M::PATCH) => (p(S, "set"), Box::pin(secrets::refuse(&ctx, seg(1)))),
        // managed keys
        (["keys"] | ["keys", ""], &M::GET) => (p(K, "list"), Box::pin(keys::list(&ctx))),
        (["keys", _, "versions"], &M::GET) => {
            (p(K, "list"), Box::pin(keys::versions(&ctx, seg(1))))
        }
        (["keys", _] | ["keys", _, ""], &M::GET) => {
            (p(K, "get"), Box::pin(keys::get(&ctx, seg(1), None)))
        }
        (["keys", _, _], &M::GET) => (p(K, "get"), Box::pin(keys::get(&ctx, seg(1), Some(seg(2))))),
        (["keys", _, _, op], &M::POST) => match key_op_permission(op) {
            Some(name) => (
                p(K, name),
                Box::pin(keys::operation(&ctx, seg(1), seg(2), op)),
            ),
            None => return Err(no_route(m, path)),
        },
        (["keys", _], &M::DELETE) => (p(K, "delete"), Box::pin(keys::refuse(&ctx, seg(1)))),
        (["keys", _, _], &M::PATCH) => (p(K, "update"), Box::pin(keys::refuse(&ctx, seg(1)))),
        _ => return Err(no_route(m, path)),
    };
    ctx.caller.authorize(ctx.vault_id(), need)?;
    let mut resp = handler.await?;
    if let Some(v) = ctx.resolved_version.get() {
        resp.extensions_mut()
            .insert(crate::audit::ResolvedVersion(v.clone()));
    }
    Ok(resp)
}

/// A handler's future.
type Handler<'a> = std::pin::Pin<Box<dyn Future<Output = ApiResult<Response<Body>>> + Send + 'a>>;

/// The key permission a key operation (route word, any case) needs.
fn key_op_permission(op: &str) -> Option<&'static str> {
    [
        "sign",
        "verify",
        "encrypt",
        "decrypt",
        "wrapKey",
        "unwrapKey",
    ]
    .into_iter()
    .find(|n| n.eq_ignore_ascii_case(op))
}

fn no_route(m: &Method, path: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "NotFound",
        format!(
            "No operation {m} {} exists in this API.",
            certvault_core::names::truncate(path, 120)
        ),
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn api_versions() {
        for ok in [
            "7.0",
            "7.4",
            "7.6-preview.2",
            "2016-10-01",
            "2025-07-01",
            "2026-04-01",
            "2025-06-01-preview",
            "2099-01-01",
        ] {
            assert!(api_version_ok(ok), "{ok}");
        }
        for bad in [
            "",
            "abc",
            "7",
            "7.x",
            "2025-7-01",
            "2025-07-01-beta",
            "1.2.3",
        ] {
            assert!(!api_version_ok(bad), "{bad}");
        }
    }

    #[test]
    fn hosts() {
        assert_eq!(vault_from_host("prod.kv.test:8443", "kv.test"), "prod");
        assert_eq!(vault_from_host("PROD.KV.TEST", "kv.test"), "prod");
        assert_eq!(vault_from_host("127.0.0.1:8443", "kv.test"), "default");
        assert_eq!(vault_from_host("[::1]:8443", "kv.test"), "default");
        assert_eq!(vault_from_host("a.b.kv.test", "kv.test"), "default");
        assert_eq!(vault_from_host("kv.test", "kv.test"), "default");
    }

    #[test]
    fn query() {
        let q = parse_query(Some("api-version=7.4&$skiptoken=a%2Fb&maxresults=5&x"));
        assert_eq!(q[1], ("$skiptoken".to_owned(), "a/b".to_owned()));
        assert_eq!(q[3], ("x".to_owned(), String::new()));
        assert_eq!(percent_encode("a/b c"), "a%2Fb%20c");
    }
}
