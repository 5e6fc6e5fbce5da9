//! Console pages that manage a vault rather than one certificate: import (PEM / PFX upload),
//! issuers (incl. ACME with EAB and DNS-01 settings), contacts, and notification channels with
//! their delivery history and dead letters.
//!
//! Every action and every read runs the API request in-process — the Key Vault router
//! ([`Req::kv`]) for import, issuers and contacts, the admin API ([`admin_api`]) for channels
//! and deliveries — so the permission check, the handler and the audit record are the API's.
//! Secrets (PFX password, EAB HMAC key, TSIG secret, issuer password) are write-only: they
//! are sent to the API and never put back into a page.

use std::fmt::Write as _;

use base64::Engine as _;
use bytes::Bytes;
use certvault_core::access::ObjectType::Certificates as C;
use certvault_core::names::ObjectName;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::{Map, Value, json};

use super::html::{csrf_input, esc, notice, time_el, time_opt, url};
use super::{ApiReply, Req, redirect};
use crate::audit::Who;
use crate::auth::Caller;
use crate::http::Body;
use crate::state::{AppState, VaultCtx};

/// The first path segments (after `/ui/v/{vault}/`) served here.
pub const PAGES: &[&str] = &["import", "issuers", "contacts", "channels", "deliveries"];

/// The header links of these pages the caller may use in a vault: (key, label).
pub(crate) async fn nav_links(
    state: &AppState,
    caller: &Caller,
    vault: &str,
) -> Vec<(&'static str, &'static str)> {
    let Ok(v) = state.vault(&vault.to_ascii_lowercase()).await else {
        return Vec::new();
    };
    let can = |n: &'static str| {
        caller
            .authorize(v.vault.id, certvault_core::access::Permission::new(C, n))
            .is_ok()
    };
    let mut out = Vec::new();
    if can("import") {
        out.push(("import", "Import"));
    }
    if can("listissuers") {
        out.push(("issuers", "Issuers"));
    }
    if can("managecontacts") {
        out.push(("contacts", "Contacts"));
    }
    if caller.admin {
        out.push(("channels", "Notifications"));
    }
    out
}

/// Routes `/ui/v/{vault}/{page}/…` for the pages in [`PAGES`].
pub(crate) async fn route(
    r: &Req<'_>,
    method: &Method,
    vault: &str,
    page: &str,
    rest: &[&str],
) -> Response<Body> {
    let Some(v) = r.vault(vault).await else {
        return r.error(
            StatusCode::FORBIDDEN,
            None,
            "You have no access to this vault, or it does not exist.",
        );
    };
    let get = *method == Method::GET || *method == Method::HEAD;
    match (page, rest, get) {
        ("import", [], true) => import_form(r, &v, &ImportForm::default(), None),
        ("import", [], false) => import(r, &v).await,
        ("issuers", [], true) => issuers_page(r, &v, &IssuerForm::default(), None).await,
        ("issuers", [], false) => issuer_save(r, &v, None).await,
        ("issuers", [name], true) => issuer_edit(r, &v, name).await,
        ("issuers", [name], false) => issuer_save(r, &v, Some(name)).await,
        ("issuers", [name, "delete"], false) => issuer_delete(r, &v, name).await,
        ("contacts", [], true) => contacts_page(r, &v, None, None).await,
        ("contacts", [], false) => contacts_set(r, &v).await,
        ("contacts", ["delete"], false) => contacts_delete(r, &v).await,
        ("channels", [], true) => channels_page(r, &v, &ChannelForm::default(), None).await,
        ("channels", [], false) => channel_create(r, &v).await,
        ("channels", [c], true) => channel_page(r, &v, c, None).await,
        ("channels", [c, "test"], false) => channel_test(r, &v, c).await,
        ("channels", [c, "delete"], false) => channel_delete(r, &v, c).await,
        ("deliveries", [id, "replay"], false) => replay(r, &v, id).await,
        _ => r.error(
            StatusCode::NOT_FOUND,
            Some(&v.vault.name),
            "There is no such page.",
        ),
    }
}

// ------------------------------------------------------------------------------ helpers

fn base(vault: &str) -> String {
    format!("/ui/v/{}", url(vault))
}

/// A fixed set of confirmation messages (nothing from the query string is shown).
fn done_message(code: &str) -> Option<&'static str> {
    Some(match code {
        "issuer-saved" => "The issuer was saved.",
        "issuer-deleted" => "The issuer was deleted.",
        "contacts-saved" => "The contacts were saved.",
        "contacts-deleted" => "The contacts were removed.",
        "channel-added" => "The channel was added.",
        "channel-deleted" => "The channel was deleted.",
        "replayed" => "The delivery was queued again.",
        _ => return None,
    })
}

fn flash(r: &Req<'_>) -> String {
    r.q("done")
        .and_then(done_message)
        .map(|m| notice("ok", m))
        .unwrap_or_default()
}

/// A 403 page for a refused API call, any other failure as the given status.
fn refused(r: &Req<'_>, vault: &str, reply: &ApiReply) -> Response<Body> {
    r.error(reply.status, Some(vault), &reply.message())
}

fn field(id: &str, label: &str, input: &str, hint: &str) -> String {
    let hint = if hint.is_empty() {
        String::new()
    } else {
        format!(r#"<span class="hint" id="{id}-hint">{hint}</span>"#)
    };
    format!(r#"<div class="field"><label for="{id}">{label}</label>{input}{hint}</div>"#)
}

fn text_input(id: &str, value: &str, extra: &str) -> String {
    format!(
        r#"<input type="text" id="{id}" name="{id}" value="{}"{extra}>"#,
        esc(value)
    )
}

/// A write-only input: never pre-filled.
fn secret_input(id: &str) -> String {
    format!(
        r#"<input type="password" id="{id}" name="{id}" value="" autocomplete="new-password" aria-describedby="{id}-hint">"#
    )
}

fn status_text(s: &Value) -> String {
    s.as_i64().map(|n| n.to_string()).unwrap_or_default()
}

/// Runs an admin API request (`/admin/v1{path}`) in-process as the signed-in principal: the
/// admin check, the handler and the audit record are those of the HTTP API.
pub(crate) async fn admin_api(
    r: &Req<'_>,
    method: Method,
    path: &str,
    query: &str,
    body: Option<&Value>,
) -> ApiReply {
    let state = r.state;
    let host = state.http.base_domain.clone();
    let q = if query.is_empty() {
        String::new()
    } else {
        format!("?{query}")
    };
    let failed = |m: &str| ApiReply {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        json: json!({"error": {"message": m}}),
    };
    let Ok(req) = Request::builder()
        .method(method)
        .uri(format!("https://{host}/admin/v1{path}{q}"))
        .header(header::HOST, &host)
        .body(())
    else {
        return failed("The request could not be built.");
    };
    let (parts, ()) = req.into_parts();
    let target = crate::audit::target(&parts.method, &parts.uri, &parts.headers, &host);
    let body = body
        .map(|b| serde_json::to_vec(b).unwrap_or_default())
        .unwrap_or_default();
    let resp = match crate::admin::dispatch(state, &parts, Bytes::from(body), r.caller()).await {
        Ok(x) => x,
        Err(e) => crate::http::error_response(&e),
    };
    let resp = crate::audit::after_request(
        state,
        resp,
        target,
        Who::Principal(r.caller().principal.clone()),
        r.peer,
        r.request_id,
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

// ------------------------------------------------------------------------------ multipart

/// Parses a `multipart/form-data` body into form fields. A file part's value is the standard
/// base64 of its bytes (field `{name}`), and its file name goes in `{name}.filename`. `None`
/// when the body is not well-formed.
pub(crate) fn parse_multipart(content_type: &str, body: &[u8]) -> Option<Vec<(String, String)>> {
    let boundary = content_type.split(';').map(str::trim).find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("boundary")
            .then(|| v.trim().trim_matches('"').to_owned())
    })?;
    if boundary.is_empty() || boundary.len() > 200 {
        return None;
    }
    let delim = format!("--{boundary}");
    let d = delim.as_bytes();
    let mut out = Vec::new();
    let mut pos = find(body, d, 0)? + d.len();
    loop {
        // After a delimiter: "--" ends the body, otherwise CRLF and a part.
        if body.get(pos..pos + 2) == Some(b"--") {
            return Some(out);
        }
        if body.get(pos..pos + 2) != Some(b"\r\n") {
            return None;
        }
        pos += 2;
        let head_end = find(body, b"\r\n\r\n", pos)?;
        let head = std::str::from_utf8(body.get(pos..head_end)?).ok()?;
        let content_start = head_end + 4;
        let mut end_delim = b"\r\n".to_vec();
        end_delim.extend_from_slice(d);
        let content_end = find(body, &end_delim, content_start)?;
        let content = body.get(content_start..content_end)?;
        let mut name = None;
        let mut filename = None;
        for line in head.split("\r\n") {
            let Some((k, v)) = line.split_once(':') else {
                continue;
            };
            if !k.trim().eq_ignore_ascii_case("content-disposition") {
                continue;
            }
            for p in v.split(';').map(str::trim) {
                if let Some((pk, pv)) = p.split_once('=') {
                    let pv = pv.trim().trim_matches('"').to_owned();
                    match pk.trim().to_ascii_lowercase().as_str() {
                        "name" => name = Some(pv),
                        "filename" => filename = Some(pv),
                        _ => {}
                    }
                }
            }
        }
        let name = name?;
        match filename {
            Some(f) => {
                out.push((
                    name.clone(),
                    base64::engine::general_purpose::STANDARD.encode(content),
                ));
                out.push((format!("{name}.filename"), f));
            }
            None => out.push((name, String::from_utf8_lossy(content).into_owned())),
        }
        pos = content_end + end_delim.len();
    }
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if needle.is_empty() || from > hay.len() {
        return None;
    }
    hay.get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|i| i + from)
}

// ------------------------------------------------------------------------------ import

#[derive(Default)]
struct ImportForm {
    name: String,
    tags: String,
}

fn import_form(
    r: &Req<'_>,
    v: &VaultCtx,
    f: &ImportForm,
    error: Option<(&str, &str)>,
) -> Response<Body> {
    let vname = &v.vault.name;
    if !r.can(v.vault.id, C, "import") {
        return r.error(
            StatusCode::FORBIDDEN,
            Some(vname),
            "You may not import certificates into this vault.",
        );
    }
    let mut h = String::new();
    let err_for = |id: &str| match error {
        Some((fid, m)) if fid == id => (
            format!(r#" aria-invalid="true" aria-describedby="{id}-err""#),
            format!(r#"<span class="err" id="{id}-err">{}</span>"#, esc(m)),
        ),
        _ => (String::new(), String::new()),
    };
    if let Some((_, m)) = error {
        h.push_str(&notice("error", &format!("Nothing was imported. {m}")));
    }
    let _ = write!(
        h,
        r#"<form class="stack" method="post" action="{}/import" enctype="multipart/form-data" novalidate>{}"#,
        base(vname),
        csrf_input(r.csrf())
    );
    let (a, e) = err_for("name");
    let _ = write!(
        h,
        r#"<div class="field"><label for="name">Name</label><input type="text" id="name" name="name" value="{}" required maxlength="127"{a}><span class="hint">Letters, digits and '-'. An existing certificate gets a new version.</span>{e}</div>"#,
        esc(&f.name)
    );
    let (a, e) = err_for("file");
    let _ = write!(
        h,
        r#"<div class="field"><label for="file">Certificate file (PEM or PFX)</label><input type="file" id="file" name="file" required accept=".pem,.crt,.cer,.key,.pfx,.p12"{a}><span class="hint">PEM: the certificate(s) and the private key in one file. PFX / PKCS#12: with its password.</span>{e}</div>"#
    );
    let (a, e) = err_for("password");
    let _ = write!(
        h,
        r#"<div class="field"><label for="password">PFX password</label><input type="password" id="password" name="password" value="" autocomplete="off"{a}><span class="hint">Leave empty for PEM or a PFX without a password. It is not stored.</span>{e}</div>"#
    );
    let (a, e) = err_for("tags");
    let _ = write!(
        h,
        r#"<div class="field"><label for="tags">Tags (optional)</label><textarea id="tags" name="tags" rows="3"{a}>{}</textarea><span class="hint">One <code>name=value</code> per line.</span>{e}</div>"#,
        esc(&f.tags)
    );
    h.push_str(r#"<div><button type="submit">Import</button></div></form>"#);
    let mut resp = r.page(
        Some(vname),
        "import",
        &format!("Import certificate · {vname}"),
        &h,
    );
    if error.is_some() {
        *resp.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
    }
    resp
}

fn parse_tags(s: &str) -> Result<Map<String, Value>, String> {
    let mut out = Map::new();
    for line in s.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let Some((k, v)) = line.split_once('=') else {
            return Err(format!(
                "'{}' is not name=value.",
                certvault_core::names::truncate(line, 60)
            ));
        };
        let k = k.trim();
        if k.is_empty() {
            return Err("A tag name is empty.".into());
        }
        out.insert(k.to_owned(), json!(v.trim()));
    }
    Ok(out)
}

async fn import(r: &Req<'_>, v: &VaultCtx) -> Response<Body> {
    let vname = &v.vault.name;
    if !r.can(v.vault.id, C, "import") {
        // The router refuses it and records the refusal, as for the API.
        let name = r.f("name").filter(|n| !n.is_empty()).unwrap_or("x");
        let reply = r
            .kv(
                vname,
                Method::POST,
                &format!("/certificates/{}/import", url(name)),
                "",
                Some(&json!({})),
            )
            .await;
        return refused(r, vname, &reply);
    }
    let f = ImportForm {
        name: r.f("name").unwrap_or("").trim().to_owned(),
        tags: r.f("tags").unwrap_or("").to_owned(),
    };
    if let Err(e) = ObjectName::parse(&f.name) {
        return import_form(r, v, &f, Some(("name", &e.to_string())));
    }
    let file = r.f("file").unwrap_or("");
    let raw = base64::engine::general_purpose::STANDARD
        .decode(file)
        .unwrap_or_default();
    if raw.is_empty() {
        return import_form(r, v, &f, Some(("file", "Choose a PEM or PFX file.")));
    }
    let tags = match parse_tags(&f.tags) {
        Ok(t) => t,
        Err(e) => return import_form(r, v, &f, Some(("tags", &e))),
    };
    // PEM goes as text, anything else as base64 (the API's import detects which).
    let value = match std::str::from_utf8(&raw) {
        Ok(t) if t.contains("-----BEGIN") => t.to_owned(),
        _ => file.to_owned(),
    };
    let mut body = json!({"value": value});
    if let Some(p) = r.f("password").filter(|p| !p.is_empty()) {
        body["pwd"] = json!(p);
    }
    if !tags.is_empty() {
        body["tags"] = Value::Object(tags);
    }
    let reply = r
        .kv(
            vname,
            Method::POST,
            &format!("/certificates/{}/import", f.name),
            "",
            Some(&body),
        )
        .await;
    if reply.ok() {
        return redirect(&format!(
            "{}/certificates/{}?done=updated",
            base(vname),
            url(&f.name)
        ));
    }
    if reply.status == StatusCode::FORBIDDEN {
        return refused(r, vname, &reply);
    }
    let m = reply.message();
    let fid = if m.contains("password") {
        "password"
    } else {
        "file"
    };
    import_form(r, v, &f, Some((fid, &m)))
}

// ------------------------------------------------------------------------------ issuers

/// The issuer form's values (secrets are never kept here for display).
#[derive(Default, Clone)]
struct IssuerForm {
    name: String,
    kind: String,
    provider: String,
    account_id: String,
    enabled: bool,
    directory: String,
    email: String,
    terms: bool,
    eab_kid: String,
    eab_set: bool,
    preferred_chain: String,
    ca_pem: String,
    dns_mode: String,
    window: String,
    nameservers: String,
    zone: String,
    server: String,
    tsig_key_name: String,
    tsig_set: bool,
    pwd_set: bool,
}

impl IssuerForm {
    fn from_api(name: &str, j: &Value) -> Self {
        let s = |v: &Value| v.as_str().unwrap_or("").to_owned();
        let provider = s(&j["provider"]);
        let a = &j["acme"];
        let dns = &a["dns"];
        Self {
            name: name.to_owned(),
            kind: if crate::acme::is_acme(&provider) {
                "acme".into()
            } else {
                "other".into()
            },
            provider,
            account_id: s(&j["credentials"]["account_id"]),
            enabled: j["attributes"]["enabled"].as_bool().unwrap_or(true),
            directory: a["preset"]
                .as_str()
                .map_or_else(|| s(&a["directory_url"]), str::to_owned),
            email: s(&a["email"]),
            terms: a["terms_agreed"].as_bool().unwrap_or(false),
            eab_kid: s(&a["eab_kid"]),
            eab_set: a["eab_hmac_key_set"].as_bool().unwrap_or(false),
            preferred_chain: s(&a["preferred_chain"]),
            ca_pem: s(&a["ca_pem"]),
            dns_mode: s(&dns["mode"]),
            window: dns["window_seconds"]
                .as_u64()
                .map(|n| n.to_string())
                .unwrap_or_default(),
            nameservers: dns["nameservers"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join("\n")
                })
                .unwrap_or_default(),
            zone: s(&dns["zone"]),
            server: s(&dns["server"]),
            tsig_key_name: s(&dns["tsig_key_name"]),
            tsig_set: dns["tsig_secret_set"].as_bool().unwrap_or(false),
            pwd_set: false,
        }
    }

    fn from_post(r: &Req<'_>, name: &str) -> Self {
        let f = |k: &str| r.f(k).unwrap_or("").trim().to_owned();
        Self {
            name: name.to_owned(),
            kind: if f("kind") == "other" {
                "other".into()
            } else {
                "acme".into()
            },
            provider: f("provider"),
            account_id: f("account_id"),
            enabled: r.checked("enabled"),
            directory: f("directory"),
            email: f("email"),
            terms: r.checked("terms"),
            eab_kid: f("eab_kid"),
            eab_set: false,
            preferred_chain: f("preferred_chain"),
            ca_pem: r.f("ca_pem").unwrap_or("").trim().to_owned(),
            dns_mode: f("dns_mode"),
            window: f("window"),
            nameservers: r.f("nameservers").unwrap_or("").to_owned(),
            zone: f("zone"),
            server: f("server"),
            tsig_key_name: f("tsig_key_name"),
            tsig_set: false,
            pwd_set: false,
        }
    }
}

/// The API body of a submitted issuer form; `Err` (field, message) before anything is sent.
fn issuer_body(r: &Req<'_>, f: &IssuerForm) -> Result<Value, (&'static str, String)> {
    let secret = |k: &str| r.f(k).map(str::trim).filter(|s| !s.is_empty());
    let mut body = json!({"attributes": {"enabled": f.enabled}});
    if f.kind == "acme" {
        if f.directory.is_empty() {
            return Err((
                "directory",
                "Give the ACME directory URL (https://…) or a preset name such as letsencrypt."
                    .into(),
            ));
        }
        body["provider"] = json!("acme");
        let mut dns = json!({"mode": f.dns_mode});
        match f.dns_mode.as_str() {
            "notify" => {
                if !f.window.is_empty() {
                    match f.window.parse::<u64>() {
                        Ok(n) => dns["window_seconds"] = json!(n),
                        Err(_) => {
                            return Err((
                                "window",
                                "The validation window is a whole number of seconds.".into(),
                            ));
                        }
                    }
                }
                let ns: Vec<&str> = f
                    .nameservers
                    .split([',', '\n', '\r', ' '])
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .collect();
                dns["nameservers"] = json!(ns);
            }
            "rfc2136" => {
                dns["zone"] = json!(f.zone);
                dns["server"] = json!(f.server);
                dns["tsig_key_name"] = json!(f.tsig_key_name);
                if let Some(t) = secret("tsig_secret") {
                    dns["tsig_secret"] = json!(t);
                }
            }
            _ => return Err(("dns_mode", "Choose how the DNS records are made.".into())),
        }
        let mut acme = json!({
            "directory": f.directory,
            "email": f.email,
            "terms_agreed": f.terms,
            "eab_kid": f.eab_kid,
            "preferred_chain": f.preferred_chain,
            "dns": dns,
        });
        if !f.ca_pem.is_empty() {
            acme["ca_pem"] = json!(f.ca_pem);
        }
        if let Some(k) = secret("eab_hmac_key") {
            acme["eab_hmac_key"] = json!(k);
        }
        body["acme"] = acme;
    } else {
        if f.provider.is_empty() {
            return Err(("provider", "Give the provider's name.".into()));
        }
        if crate::acme::is_acme(&f.provider) {
            return Err((
                "provider",
                "For an ACME issuer choose \"ACME\" above.".into(),
            ));
        }
        body["provider"] = json!(f.provider);
        let mut creds = Map::new();
        if !f.account_id.is_empty() {
            creds.insert("account_id".into(), json!(f.account_id));
        }
        if let Some(p) = secret("pwd") {
            creds.insert("pwd".into(), json!(p));
        }
        if !creds.is_empty() {
            body["credentials"] = Value::Object(creds);
        }
    }
    Ok(body)
}

fn issuer_fields(f: &IssuerForm, edit: bool, error: Option<(&str, &str)>) -> String {
    let err_for = |id: &str| match error {
        Some((fid, m)) if fid == id => (
            format!(r#" aria-invalid="true" aria-describedby="{id}-err""#),
            format!(r#"<span class="err" id="{id}-err">{}</span>"#, esc(m)),
        ),
        _ => (String::new(), String::new()),
    };
    let sel = |a: &str, b: &str| if a == b { " selected" } else { "" };
    let chk = |b: bool| if b { " checked" } else { "" };
    let set_hint = |set: bool| {
        if set {
            "A value is stored (not shown). Leave empty to keep it."
        } else {
            "Not shown again after saving."
        }
    };
    let mut h = String::new();
    if edit {
        let _ = write!(
            h,
            r#"<input type="hidden" name="name" value="{}">"#,
            esc(&f.name)
        );
    } else {
        let (a, e) = err_for("name");
        let _ = write!(
            h,
            r#"<div class="field"><label for="name">Name</label><input type="text" id="name" name="name" value="{}" required maxlength="127"{a}><span class="hint">Letters, digits and '-' (not Self or Unknown).</span>{e}</div>"#,
            esc(&f.name)
        );
    }
    let _ = write!(
        h,
        r#"<div class="field"><label for="kind">Type</label><select id="kind" name="kind"><option value="acme"{}>ACME (Let's Encrypt, ZeroSSL, a private ACME CA…)</option><option value="other"{}>Other provider</option></select></div>"#,
        sel(&f.kind, "acme"),
        sel(&f.kind, "other"),
    );
    let _ = write!(
        h,
        r#"<div class="field inline"><input type="checkbox" id="enabled" name="enabled" value="1"{}><label for="enabled">Enabled</label></div>"#,
        chk(f.enabled || !edit && f.name.is_empty())
    );
    h.push_str(r#"<fieldset><legend>ACME</legend>"#);
    let (a, e) = err_for("directory");
    let _ = write!(
        h,
        r#"<div class="field"><label for="directory">Directory URL or preset</label>{}<span class="hint">e.g. https://acme.example.com/directory, or letsencrypt, letsencrypt-staging, zerossl.</span>{e}</div>"#,
        text_input("directory", &f.directory, &a)
    );
    h.push_str(&field(
        "email",
        "Account contact e-mail",
        &format!(
            r#"<input type="email" id="email" name="email" value="{}">"#,
            esc(&f.email)
        ),
        "",
    ));
    let _ = write!(
        h,
        r#"<div class="field inline"><input type="checkbox" id="terms" name="terms" value="1"{}><label for="terms">I agree to the CA's terms of service</label></div>"#,
        chk(f.terms)
    );
    h.push_str(&field(
        "eab_kid",
        "EAB key id",
        &text_input("eab_kid", &f.eab_kid, ""),
        "External Account Binding, when the CA asks for it.",
    ));
    let (_, e) = err_for("eab_hmac_key");
    let _ = write!(
        h,
        r#"<div class="field"><label for="eab_hmac_key">EAB HMAC key</label>{}<span class="hint" id="eab_hmac_key-hint">{}</span>{e}</div>"#,
        secret_input("eab_hmac_key"),
        set_hint(f.eab_set)
    );
    h.push_str(&field(
        "preferred_chain",
        "Preferred chain (optional)",
        &text_input("preferred_chain", &f.preferred_chain, ""),
        "Text in the issuer name of the chain's top certificate.",
    ));
    let _ = write!(
        h,
        r#"<div class="field"><label for="ca_pem">Extra trusted CA for the ACME server (PEM, optional)</label><textarea id="ca_pem" name="ca_pem" rows="3">{}</textarea></div>"#,
        esc(&f.ca_pem)
    );
    let (a, e) = err_for("dns_mode");
    let _ = write!(
        h,
        r#"<div class="field"><label for="dns_mode">DNS-01 records</label><select id="dns_mode" name="dns_mode"{a}><option value="notify"{}>I add them myself (notify)</option><option value="rfc2136"{}>certvault adds them (RFC 2136 dynamic update)</option></select>{e}</div>"#,
        sel(&f.dns_mode, "notify"),
        sel(&f.dns_mode, "rfc2136"),
    );
    let (a, e) = err_for("window");
    let _ = write!(
        h,
        r#"<div class="field"><label for="window">Notify: validation window (seconds)</label><input type="number" id="window" name="window" min="1" value="{}"{a}>{e}</div>"#,
        esc(&f.window)
    );
    let _ = write!(
        h,
        r#"<div class="field"><label for="nameservers">Notify: name servers to check (host:port, optional)</label><textarea id="nameservers" name="nameservers" rows="2">{}</textarea></div>"#,
        esc(&f.nameservers)
    );
    h.push_str(&field(
        "zone",
        "RFC 2136: zone",
        &text_input("zone", &f.zone, ""),
        "",
    ));
    h.push_str(&field(
        "server",
        "RFC 2136: primary server (host:port)",
        &text_input("server", &f.server, ""),
        "",
    ));
    h.push_str(&field(
        "tsig_key_name",
        "RFC 2136: TSIG key name",
        &text_input("tsig_key_name", &f.tsig_key_name, ""),
        "",
    ));
    let _ = write!(
        h,
        r#"<div class="field"><label for="tsig_secret">RFC 2136: TSIG secret (base64, hmac-sha256)</label>{}<span class="hint" id="tsig_secret-hint">{}</span></div>"#,
        secret_input("tsig_secret"),
        set_hint(f.tsig_set)
    );
    h.push_str("</fieldset><fieldset><legend>Other provider</legend>");
    let (a, e) = err_for("provider");
    let _ = write!(
        h,
        r#"<div class="field"><label for="provider">Provider name</label>{}{e}</div>"#,
        text_input("provider", &f.provider, &a)
    );
    h.push_str(&field(
        "account_id",
        "Account id",
        &text_input("account_id", &f.account_id, ""),
        "",
    ));
    let _ = write!(
        h,
        r#"<div class="field"><label for="pwd">Account password / API key</label>{}<span class="hint" id="pwd-hint">{}</span></div>"#,
        secret_input("pwd"),
        set_hint(f.pwd_set)
    );
    h.push_str("</fieldset>");
    h
}

async fn issuer_list_rows(r: &Req<'_>, vname: &str) -> Result<Vec<(String, String)>, ApiReply> {
    let mut out = Vec::new();
    let mut extra = String::from("&maxresults=25");
    for _ in 0..8 {
        let reply = r
            .kv(vname, Method::GET, "/certificates/issuers", &extra, None)
            .await;
        if !reply.ok() {
            return Err(reply);
        }
        for it in reply.json["value"].as_array().into_iter().flatten() {
            let id = it["id"].as_str().unwrap_or("");
            let name = id.rsplit('/').next().unwrap_or("").to_owned();
            out.push((name, it["provider"].as_str().unwrap_or("").to_owned()));
        }
        let next = reply.json["nextLink"].as_str().and_then(|l| {
            let q = l.split_once('?')?.1;
            crate::kv::parse_query(Some(q))
                .into_iter()
                .find(|(k, _)| k == "$skiptoken")
                .map(|(_, v)| v)
        });
        match next {
            Some(t) => extra = format!("&maxresults=25&$skiptoken={}", url(&t)),
            None => break,
        }
    }
    Ok(out)
}

async fn issuers_page(
    r: &Req<'_>,
    v: &VaultCtx,
    f: &IssuerForm,
    error: Option<(&str, &str)>,
) -> Response<Body> {
    let vname = &v.vault.name;
    let rows = match issuer_list_rows(r, vname).await {
        Ok(rows) => rows,
        Err(reply) => return refused(r, vname, &reply),
    };
    let b = base(vname);
    let mut h = flash(r);
    if rows.is_empty() {
        h.push_str(&notice(
            "info",
            "No issuers yet. Self-signed and Unknown (CSR) certificates need none.",
        ));
    } else {
        h.push_str(r#"<div class="table-wrap"><table><caption class="hint">Issuers</caption><thead><tr><th scope="col">Name</th><th scope="col">Provider</th></tr></thead><tbody>"#);
        for (name, provider) in &rows {
            let _ = write!(
                h,
                r#"<tr><td><a href="{b}/issuers/{u}">{n}</a></td><td>{p}</td></tr>"#,
                u = url(name),
                n = esc(name),
                p = esc(provider),
            );
        }
        h.push_str("</tbody></table></div>");
    }
    if r.can(v.vault.id, C, "setissuers") {
        h.push_str(r#"<h2 id="add-issuer">Add an issuer</h2>"#);
        if let Some((_, m)) = error {
            h.push_str(&notice("error", &format!("Nothing was saved. {m}")));
        }
        let _ = write!(
            h,
            r#"<form class="stack" method="post" action="{b}/issuers" aria-labelledby="add-issuer" novalidate>{}{}<div><button type="submit">Add issuer</button></div></form>"#,
            csrf_input(r.csrf()),
            issuer_fields(f, false, error),
        );
    }
    let mut resp = r.page(Some(vname), "issuers", &format!("Issuers · {vname}"), &h);
    if error.is_some() {
        *resp.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
    }
    resp
}

async fn issuer_edit(r: &Req<'_>, v: &VaultCtx, name: &str) -> Response<Body> {
    let vname = &v.vault.name;
    let reply = r
        .kv(
            vname,
            Method::GET,
            &format!("/certificates/issuers/{}", url(name)),
            "",
            None,
        )
        .await;
    if !reply.ok() {
        return refused(r, vname, &reply);
    }
    let f = IssuerForm::from_api(name, &reply.json);
    issuer_edit_page(r, v, &f, None, flash(r))
}

fn issuer_edit_page(
    r: &Req<'_>,
    v: &VaultCtx,
    f: &IssuerForm,
    error: Option<(&str, &str)>,
    mut h: String,
) -> Response<Body> {
    let vname = &v.vault.name;
    let b = base(vname);
    let u = url(&f.name);
    if let Some((_, m)) = error {
        h.push_str(&notice("error", &format!("Nothing was saved. {m}")));
    }
    let _ = write!(
        h,
        r#"<dl class="props"><dt>Name</dt><dd>{}</dd><dt>Provider</dt><dd>{}</dd></dl>"#,
        esc(&f.name),
        esc(&f.provider)
    );
    if r.can(v.vault.id, C, "setissuers") {
        let _ = write!(
            h,
            r#"<form class="stack" method="post" action="{b}/issuers/{u}" novalidate>{}{}<div><button type="submit">Save issuer</button></div></form>"#,
            csrf_input(r.csrf()),
            issuer_fields(f, true, error),
        );
    }
    if r.can(v.vault.id, C, "deleteissuers") {
        let _ = write!(
            h,
            r#"<form class="actions" method="post" action="{b}/issuers/{u}/delete" data-confirm="Delete the issuer {n}?">{}<button type="submit" class="danger">Delete issuer</button></form>"#,
            csrf_input(r.csrf()),
            n = esc(&f.name),
        );
    }
    let _ = write!(h, r#"<p><a href="{b}/issuers">All issuers</a></p>"#);
    let mut resp = r.page(
        Some(vname),
        "issuers",
        &format!("Issuer {} · {vname}", f.name),
        &h,
    );
    if error.is_some() {
        *resp.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
    }
    resp
}

async fn issuer_save(r: &Req<'_>, v: &VaultCtx, edit: Option<&str>) -> Response<Body> {
    let vname = &v.vault.name;
    let name = edit
        .map(str::to_owned)
        .unwrap_or_else(|| r.f("name").unwrap_or("").trim().to_owned());
    let path = format!("/certificates/issuers/{}", url(&name));
    let method = if edit.is_some() {
        Method::PATCH
    } else {
        Method::PUT
    };
    if !r.can(v.vault.id, C, "setissuers") {
        // The router refuses it and records the refusal, as for the API.
        let reply = r.kv(vname, method, &path, "", Some(&json!({}))).await;
        return refused(r, vname, &reply);
    }
    let f = IssuerForm::from_post(r, &name);
    if edit.is_none()
        && let Err(e) = ObjectName::parse(&name)
    {
        return issuer_show(r, v, edit, &f, "name", &e.to_string()).await;
    }
    let body = match issuer_body(r, &f) {
        Ok(b) => b,
        Err((fid, m)) => return issuer_show(r, v, edit, &f, fid, &m).await,
    };
    if edit.is_none() {
        // PUT replaces: adding must not overwrite an issuer that exists.
        let exists = r
            .state
            .store
            .issuer(v.vault.id, &name.to_ascii_lowercase())
            .await
            .ok()
            .flatten()
            .is_some();
        if exists {
            return issuer_show(
                r,
                v,
                edit,
                &f,
                "name",
                "An issuer with this name exists; open it to edit.",
            )
            .await;
        }
    }
    let reply = r.kv(vname, method, &path, "", Some(&body)).await;
    if reply.ok() {
        return redirect(&format!(
            "{}/issuers/{}?done=issuer-saved",
            base(vname),
            url(&name)
        ));
    }
    if reply.status == StatusCode::FORBIDDEN || reply.status == StatusCode::NOT_FOUND {
        return refused(r, vname, &reply);
    }
    let m = reply.message();
    let fid = if m.contains("eab") || m.contains("External Account") {
        "eab_hmac_key"
    } else if m.contains("directory") {
        "directory"
    } else if m.contains("dns") || m.contains("DNS") {
        "dns_mode"
    } else if m.contains("reserved") {
        "name"
    } else {
        "directory"
    };
    issuer_show(r, v, edit, &f, fid, &m).await
}

async fn issuer_show(
    r: &Req<'_>,
    v: &VaultCtx,
    edit: Option<&str>,
    f: &IssuerForm,
    fid: &str,
    m: &str,
) -> Response<Body> {
    match edit {
        Some(_) => issuer_edit_page(r, v, f, Some((fid, m)), String::new()),
        None => issuers_page(r, v, f, Some((fid, m))).await,
    }
}

async fn issuer_delete(r: &Req<'_>, v: &VaultCtx, name: &str) -> Response<Body> {
    let vname = &v.vault.name;
    let reply = r
        .kv(
            vname,
            Method::DELETE,
            &format!("/certificates/issuers/{}", url(name)),
            "",
            None,
        )
        .await;
    if !reply.ok() {
        return refused(r, vname, &reply);
    }
    redirect(&format!("{}/issuers?done=issuer-deleted", base(vname)))
}

// ------------------------------------------------------------------------------ contacts

async fn contacts_page(
    r: &Req<'_>,
    v: &VaultCtx,
    submitted: Option<&str>,
    error: Option<&str>,
) -> Response<Body> {
    let vname = &v.vault.name;
    let reply = r
        .kv(vname, Method::GET, "/certificates/contacts", "", None)
        .await;
    let list: Vec<Value> = if reply.ok() {
        reply.json["contacts"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    } else if reply.status == StatusCode::NOT_FOUND {
        Vec::new()
    } else {
        return refused(r, vname, &reply);
    };
    let b = base(vname);
    let mut h = flash(r);
    if list.is_empty() {
        h.push_str(&notice("info", "No contacts are set for this vault."));
    } else {
        h.push_str(r#"<div class="table-wrap"><table><caption class="hint">Contacts</caption><thead><tr><th scope="col">E-mail</th><th scope="col">Name</th><th scope="col">Phone</th></tr></thead><tbody>"#);
        for c in &list {
            let s = |k: &str| esc(c[k].as_str().unwrap_or(""));
            let _ = write!(
                h,
                r#"<tr><td data-testid="contact-email">{}</td><td>{}</td><td>{}</td></tr>"#,
                s("email"),
                s("name"),
                s("phone")
            );
        }
        h.push_str("</tbody></table></div>");
    }
    let text = submitted.map(str::to_owned).unwrap_or_else(|| {
        list.iter()
            .map(|c| {
                let s = |k: &str| c[k].as_str().unwrap_or("").to_owned();
                let mut line = s("email");
                if !s("name").is_empty() || !s("phone").is_empty() {
                    line.push_str(&format!(", {}", s("name")));
                }
                if !s("phone").is_empty() {
                    line.push_str(&format!(", {}", s("phone")));
                }
                line
            })
            .collect::<Vec<_>>()
            .join("\n")
    });
    let (a, e) = match error {
        Some(m) => (
            r#" aria-invalid="true" aria-describedby="contacts-err""#.to_owned(),
            format!(r#"<span class="err" id="contacts-err">{}</span>"#, esc(m)),
        ),
        None => (String::new(), String::new()),
    };
    if let Some(m) = error {
        h.push_str(&notice("error", &format!("Nothing was saved. {m}")));
    }
    let _ = write!(
        h,
        r#"<h2>Set the contacts</h2><form class="stack" method="post" action="{b}/contacts" novalidate>{}<div class="field"><label for="contacts">Contacts</label><textarea id="contacts" name="contacts" rows="5"{a}>{}</textarea><span class="hint">One per line: <code>e-mail, name, phone</code> (name and phone optional). They get the e-mail notifications of this vault.</span>{e}</div><div><button type="submit">Save contacts</button></div></form>"#,
        csrf_input(r.csrf()),
        esc(&text),
    );
    if !list.is_empty() {
        let _ = write!(
            h,
            r#"<form class="actions" method="post" action="{b}/contacts/delete" data-confirm="Remove all contacts?">{}<button type="submit" class="danger">Remove all contacts</button></form>"#,
            csrf_input(r.csrf())
        );
    }
    let mut resp = r.page(Some(vname), "contacts", &format!("Contacts · {vname}"), &h);
    if error.is_some() {
        *resp.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
    }
    resp
}

fn parse_contacts(s: &str) -> Result<Vec<Value>, String> {
    let mut out = Vec::new();
    for line in s.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let mut parts = line.splitn(3, ',').map(str::trim);
        let email = parts.next().unwrap_or("");
        if !email.contains('@') || email.chars().any(char::is_whitespace) || email.len() > 254 {
            return Err(format!(
                "'{}' does not start with an e-mail address.",
                certvault_core::names::truncate(line, 60)
            ));
        }
        let mut c = json!({"email": email});
        if let Some(n) = parts.next().filter(|n| !n.is_empty()) {
            c["name"] = json!(n);
        }
        if let Some(p) = parts.next().filter(|p| !p.is_empty()) {
            c["phone"] = json!(p);
        }
        out.push(c);
    }
    if out.is_empty() {
        return Err("Give at least one contact (or use Remove all contacts).".into());
    }
    Ok(out)
}

async fn contacts_set(r: &Req<'_>, v: &VaultCtx) -> Response<Body> {
    let vname = &v.vault.name;
    let text = r.f("contacts").unwrap_or("");
    let list = match parse_contacts(text) {
        Ok(l) => l,
        Err(_) if !r.can(v.vault.id, C, "managecontacts") => Vec::new(),
        Err(e) => return contacts_page(r, v, Some(text), Some(&e)).await,
    };
    let reply = r
        .kv(
            vname,
            Method::PUT,
            "/certificates/contacts",
            "",
            Some(&json!({"contacts": list})),
        )
        .await;
    if reply.ok() {
        return redirect(&format!("{}/contacts?done=contacts-saved", base(vname)));
    }
    if reply.status == StatusCode::FORBIDDEN {
        return refused(r, vname, &reply);
    }
    contacts_page(r, v, Some(text), Some(&reply.message())).await
}

async fn contacts_delete(r: &Req<'_>, v: &VaultCtx) -> Response<Body> {
    let vname = &v.vault.name;
    let reply = r
        .kv(vname, Method::DELETE, "/certificates/contacts", "", None)
        .await;
    if !reply.ok() && reply.status != StatusCode::NOT_FOUND {
        return refused(r, vname, &reply);
    }
    redirect(&format!("{}/contacts?done=contacts-deleted", base(vname)))
}

// ------------------------------------------------------------------------------ channels

#[derive(Default)]
struct ChannelForm {
    name: String,
    kind: String,
}

fn forbid_channels(r: &Req<'_>, vname: &str) -> Option<Response<Body>> {
    (!r.caller().admin).then(|| {
        r.error(
            StatusCode::FORBIDDEN,
            Some(vname),
            "Only administrators manage notification channels.",
        )
    })
}

fn delivery_rows(h: &mut String, rows: &[Value], vname: &str, csrf: &str, replay: bool) {
    let b = base(vname);
    h.push_str(r#"<div class="table-wrap"><table><thead><tr><th scope="col">Id</th><th scope="col">Event</th><th scope="col" class="opt">Certificate</th><th scope="col">Channel</th><th scope="col">Status</th><th scope="col">Attempts</th><th scope="col" class="opt">Last answer</th><th scope="col">Time</th>"#);
    if replay {
        h.push_str(r#"<th scope="col">Action</th>"#);
    }
    h.push_str("</tr></thead><tbody>");
    for d in rows {
        let id = d["id"].as_i64().unwrap_or(0);
        let status = d["status"].as_str().unwrap_or("");
        let cls = match status {
            "delivered" => "valid",
            "dead" => "failed",
            _ => "pending",
        };
        let when = d["delivered_at"]
            .as_i64()
            .or(d["created"].as_i64())
            .map(time_el)
            .unwrap_or_default();
        let last = match (d["last_status"].as_i64(), d["last_error"].as_str()) {
            (Some(s), Some(e)) => format!("HTTP {s}: {e}"),
            (Some(s), None) => format!("HTTP {s}"),
            (None, Some(e)) => e.to_owned(),
            (None, None) => String::new(),
        };
        let _ = write!(
            h,
            r#"<tr data-testid="delivery-{id}"><td>{id}</td><td>{ev}</td><td class="opt">{cert}</td><td>{ch}</td><td><span class="state {cls}" data-testid="delivery-status">{status}</span></td><td data-testid="delivery-attempts">{att}</td><td class="opt">{last}</td><td>{when}</td>"#,
            ev = esc(d["event_type"].as_str().unwrap_or("")),
            cert = esc(d["certificate"].as_str().unwrap_or("")),
            ch = esc(d["channel"].as_str().unwrap_or("")),
            status = esc(status),
            att = status_text(&d["attempts"]),
            last = esc(&certvault_core::names::truncate(&last, 200)),
        );
        if replay {
            let _ = write!(
                h,
                r#"<td><form method="post" action="{b}/deliveries/{id}/replay">{}<button type="submit" class="secondary" aria-label="Replay delivery {id}">Replay</button></form></td>"#,
                csrf_input(csrf)
            );
        }
        h.push_str("</tr>");
    }
    h.push_str("</tbody></table></div>");
}

async fn channels_page(
    r: &Req<'_>,
    v: &VaultCtx,
    f: &ChannelForm,
    error: Option<(&str, &str)>,
) -> Response<Body> {
    let vname = &v.vault.name;
    if let Some(resp) = forbid_channels(r, vname) {
        return resp;
    }
    let vu = url(vname);
    let reply = admin_api(r, Method::GET, &format!("/vaults/{vu}/channels"), "", None).await;
    if !reply.ok() {
        return refused(r, vname, &reply);
    }
    let dead = admin_api(
        r,
        Method::GET,
        &format!("/vaults/{vu}/deliveries"),
        "status=dead&limit=100",
        None,
    )
    .await;
    if !dead.ok() {
        return refused(r, vname, &dead);
    }
    let b = base(vname);
    let mut h = flash(r);
    let channels = reply.json["value"].as_array().cloned().unwrap_or_default();
    if channels.is_empty() {
        h.push_str(&notice("info", "No notification channels in this vault."));
    } else {
        h.push_str(r#"<div class="table-wrap"><table><caption class="hint">Channels</caption><thead><tr><th scope="col">Name</th><th scope="col">Type</th><th scope="col" class="opt">Target</th><th scope="col">Enabled</th><th scope="col" class="opt">Created</th></tr></thead><tbody>"#);
        for c in &channels {
            let name = c["name"].as_str().unwrap_or("");
            let _ = write!(
                h,
                r#"<tr><td><a href="{b}/channels/{u}">{n}</a></td><td>{k}</td><td class="opt mono">{t}</td><td>{e}</td><td class="opt">{c}</td></tr>"#,
                u = url(name),
                n = esc(name),
                k = esc(c["type"].as_str().unwrap_or("")),
                t = esc(c["target"].as_str().unwrap_or("")),
                e = if c["enabled"].as_bool().unwrap_or(false) {
                    "Yes"
                } else {
                    "No"
                },
                c = time_opt(c["created"].as_i64()),
            );
        }
        h.push_str("</tbody></table></div>");
    }
    h.push_str(r#"<h2 id="add-channel">Add a channel</h2>"#);
    let err_for = |id: &str| match error {
        Some((fid, m)) if fid == id => (
            format!(r#" aria-invalid="true" aria-describedby="{id}-err""#),
            format!(r#"<span class="err" id="{id}-err">{}</span>"#, esc(m)),
        ),
        _ => (String::new(), String::new()),
    };
    if let Some((_, m)) = error {
        h.push_str(&notice("error", &format!("Nothing was added. {m}")));
    }
    let (na, ne) = err_for("name");
    let (ua, ue) = err_for("url");
    let (sa, se) = err_for("secret");
    let sel = |k: &str| if f.kind == k { " selected" } else { "" };
    let _ = write!(
        h,
        r#"<form class="stack" method="post" action="{b}/channels" aria-labelledby="add-channel" novalidate>{csrf}
<div class="field"><label for="name">Name</label><input type="text" id="name" name="name" value="{name}" maxlength="64" required{na}><span class="hint">Letters, digits, '-' or '_'.</span>{ne}</div>
<div class="field"><label for="type">Type</label><select id="type" name="type"><option value="webhook"{w}>Webhook (signed JSON to a callback URL)</option><option value="slack"{s}>Slack incoming webhook</option></select></div>
<div class="field"><label for="url">URL</label><input type="url" id="url" name="url" value="" required autocomplete="off"{ua}><span class="hint">https://… (http:// only to this machine). Not shown again: a Slack URL is a credential.</span>{ue}</div>
<div class="field"><label for="secret">Signing secret (optional)</label><input type="password" id="secret" name="secret" value="" autocomplete="new-password"{sa}><span class="hint">16 to 256 characters for the webhook signature; empty: one is generated and shown once.</span>{se}</div>
<div><button type="submit">Add channel</button></div></form>"#,
        csrf = csrf_input(r.csrf()),
        name = esc(&f.name),
        w = sel("webhook"),
        s = sel("slack"),
    );
    h.push_str(r#"<h2 id="dead-letters">Dead letters</h2>"#);
    let dead_rows = dead.json["value"].as_array().cloned().unwrap_or_default();
    if dead_rows.is_empty() {
        h.push_str(&notice("info", "No dead deliveries."));
    } else {
        h.push_str(
            r#"<p class="hint">Deliveries that failed every attempt. Replay sends one again.</p>"#,
        );
        delivery_rows(&mut h, &dead_rows, vname, r.csrf(), true);
    }
    let mut resp = r.page(
        Some(vname),
        "channels",
        &format!("Notification channels · {vname}"),
        &h,
    );
    if error.is_some() {
        *resp.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
    }
    resp
}

async fn channel_create(r: &Req<'_>, v: &VaultCtx) -> Response<Body> {
    let vname = &v.vault.name;
    let f = ChannelForm {
        name: r.f("name").unwrap_or("").trim().to_owned(),
        kind: r.f("type").unwrap_or("webhook").to_owned(),
    };
    let u = r.f("url").unwrap_or("").trim().to_owned();
    let mut body = json!({"name": f.name, "type": f.kind, "url": u});
    if let Some(s) = r.f("secret").filter(|s| !s.is_empty()) {
        body["secret"] = json!(s);
    }
    let reply = admin_api(
        r,
        Method::POST,
        &format!("/vaults/{}/channels", url(vname)),
        "",
        Some(&body),
    )
    .await;
    if reply.ok() {
        let name = reply.json["name"].as_str().unwrap_or(&f.name).to_owned();
        if let Some(secret) = reply.json["secret"].as_str() {
            // The generated signing secret is shown this once (the API's behaviour).
            let h = format!(
                "{}<p>The signing secret of <strong>{}</strong> (shown once; the receiver verifies <code>X-Certvault-Signature</code> with it):</p><p class=\"mono\" id=\"new-secret\">{}</p><p><button type=\"button\" class=\"secondary\" data-copy=\"new-secret\">Copy</button> <a href=\"{}/channels/{}\">Open the channel</a></p>",
                notice("ok", "The channel was added."),
                esc(&name),
                esc(secret),
                base(vname),
                url(&name)
            );
            return r.page(
                Some(vname),
                "channels",
                &format!("Channel added · {vname}"),
                &h,
            );
        }
        return redirect(&format!(
            "{}/channels/{}?done=channel-added",
            base(vname),
            url(&name)
        ));
    }
    if reply.status == StatusCode::FORBIDDEN {
        return refused(r, vname, &reply);
    }
    let m = reply.message();
    let fid = if m.contains("'url'") {
        "url"
    } else if m.contains("secret") {
        "secret"
    } else {
        "name"
    };
    channels_page(r, v, &f, Some((fid, &m))).await
}

async fn channel_page(r: &Req<'_>, v: &VaultCtx, c: &str, test: Option<&Value>) -> Response<Body> {
    let vname = &v.vault.name;
    if let Some(resp) = forbid_channels(r, vname) {
        return resp;
    }
    let p = format!("/vaults/{}/channels/{}", url(vname), url(c));
    let ch = admin_api(r, Method::GET, &p, "", None).await;
    if !ch.ok() {
        return refused(r, vname, &ch);
    }
    let after = r
        .q("after")
        .and_then(|a| a.parse::<i64>().ok())
        .unwrap_or(0);
    let hist = admin_api(
        r,
        Method::GET,
        &format!("{p}/deliveries"),
        &format!("after={after}&limit=50"),
        None,
    )
    .await;
    if !hist.ok() {
        return refused(r, vname, &hist);
    }
    let b = base(vname);
    let cu = url(c);
    let j = &ch.json;
    let mut h = flash(r);
    if let Some(t) = test {
        if t["delivered"].as_bool().unwrap_or(false) {
            h.push_str(&notice(
                "ok",
                &format!(
                    "The test notification was delivered (HTTP {}, {} ms).",
                    status_text(&t["status"]),
                    status_text(&t["millis"])
                ),
            ));
        } else {
            let why = t["error"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| format!("HTTP {}", status_text(&t["status"])));
            h.push_str(&notice(
                "error",
                &format!("The test notification was not delivered: {why}"),
            ));
        }
    }
    let _ = write!(
        h,
        r#"<dl class="props"><dt>Type</dt><dd>{}</dd><dt>Target</dt><dd class="mono">{}</dd><dt>Enabled</dt><dd>{}</dd><dt>Created</dt><dd>{}</dd></dl>"#,
        esc(j["type"].as_str().unwrap_or("")),
        esc(j["target"].as_str().unwrap_or("")),
        if j["enabled"].as_bool().unwrap_or(false) {
            "Yes"
        } else {
            "No"
        },
        time_opt(j["created"].as_i64()),
    );
    let _ = write!(
        h,
        r#"<div class="actions"><form method="post" action="{b}/channels/{cu}/test">{csrf}<button type="submit">Send test</button></form><form method="post" action="{b}/channels/{cu}/delete" data-confirm="Delete the channel {n} and its delivery history?">{csrf}<button type="submit" class="danger">Delete channel</button></form></div>"#,
        csrf = csrf_input(r.csrf()),
        n = esc(c),
    );
    h.push_str(r#"<h2>Delivery history</h2>"#);
    let rows = hist.json["value"].as_array().cloned().unwrap_or_default();
    if rows.is_empty() {
        h.push_str(&notice(
            "info",
            "No deliveries yet (events such as issued, renewed or about to expire create them).",
        ));
    } else {
        delivery_rows(&mut h, &rows, vname, r.csrf(), false);
    }
    h.push_str(r#"<nav class="pager" aria-label="Pages">"#);
    if after > 0 {
        let _ = write!(h, r#"<a href="{b}/channels/{cu}">First page</a>"#);
    }
    if let Some(n) = hist.json["next"].as_i64() {
        let _ = write!(
            h,
            r#"<a href="{b}/channels/{cu}?after={n}" rel="next">Next page</a>"#
        );
    }
    let _ = write!(
        h,
        r#"</nav><p><a href="{b}/channels">All channels and dead letters</a></p>"#
    );
    r.page(
        Some(vname),
        "channels",
        &format!("Channel {c} · {vname}"),
        &h,
    )
}

async fn channel_test(r: &Req<'_>, v: &VaultCtx, c: &str) -> Response<Body> {
    let vname = &v.vault.name;
    let reply = admin_api(
        r,
        Method::POST,
        &format!("/vaults/{}/channels/{}/test", url(vname), url(c)),
        "",
        None,
    )
    .await;
    if !reply.ok() {
        return refused(r, vname, &reply);
    }
    channel_page(r, v, c, Some(&reply.json)).await
}

async fn channel_delete(r: &Req<'_>, v: &VaultCtx, c: &str) -> Response<Body> {
    let vname = &v.vault.name;
    let reply = admin_api(
        r,
        Method::DELETE,
        &format!("/vaults/{}/channels/{}", url(vname), url(c)),
        "",
        None,
    )
    .await;
    if !reply.ok() {
        return refused(r, vname, &reply);
    }
    redirect(&format!("{}/channels?done=channel-deleted", base(vname)))
}

async fn replay(r: &Req<'_>, v: &VaultCtx, id: &str) -> Response<Body> {
    let vname = &v.vault.name;
    if id.parse::<i64>().is_err() {
        return r.error(
            StatusCode::NOT_FOUND,
            Some(vname),
            "There is no such delivery.",
        );
    }
    let reply = admin_api(
        r,
        Method::POST,
        &format!("/vaults/{}/deliveries/{id}/replay", url(vname)),
        "",
        None,
    )
    .await;
    if !reply.ok() {
        return refused(r, vname, &reply);
    }
    redirect(&format!("{}/channels?done=replayed", base(vname)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multipart_fields_and_files() {
        let body = b"--XyZ\r\nContent-Disposition: form-data; name=\"csrf\"\r\n\r\nabc\r\n--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"c.pfx\"\r\nContent-Type: application/octet-stream\r\n\r\n\x00\x01\r\n\xff\r\n--XyZ--\r\n";
        let f = parse_multipart("multipart/form-data; boundary=XyZ", body);
        let f = f.unwrap_or_default();
        assert_eq!(
            f,
            vec![
                ("csrf".to_owned(), "abc".to_owned()),
                (
                    "file".to_owned(),
                    base64::engine::general_purpose::STANDARD.encode(b"\x00\x01\r\n\xff")
                ),
                ("file.filename".to_owned(), "c.pfx".to_owned()),
            ]
        );
        assert!(parse_multipart("multipart/form-data", body).is_none());
        assert!(parse_multipart("multipart/form-data; boundary=XyZ", b"--XyZ\r\nno end").is_none());
    }

    #[test]
    fn contacts_lines() {
        let c = parse_contacts("a@example.com, Ann, +1 555\n\nb@example.com").unwrap_or_default();
        assert_eq!(c.len(), 2);
        assert_eq!(c[0]["name"], "Ann");
        assert_eq!(c[0]["phone"], "+1 555");
        assert!(c[1].get("name").is_none());
        assert!(parse_contacts("not an address").is_err());
        assert!(parse_contacts("").is_err());
    }
}
