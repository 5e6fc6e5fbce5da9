//! Console pages of one vault: dashboard, certificate list, create form, certificate detail
//! with its actions, deleted certificates.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use base64::Engine as _;
use bytes::Bytes;
use certvault_core::access::ObjectType::{Certificates as C, Secrets as S};
use certvault_core::names::ObjectName;
use certvault_store::{CertRecord, NO_EXPIRY, UiCertQuery, UiSort, UiState, VersionRecord};
use http::{HeaderValue, Method, Response, StatusCode, header};
use http_body_util::Full;
use serde_json::{Value, json};

use super::html::{csrf_input, esc, notice, time_el, time_opt, url};
use super::{Req, redirect};
use crate::http::Body;
use crate::state::VaultCtx;

/// "Expiring" means within this many seconds.
pub const SOON: i64 = 30 * 86400;
/// Rows per list page.
pub const PAGE: usize = 50;

/// Routes `/ui/v/{vault}/…`.
pub(crate) async fn route(
    r: &Req<'_>,
    method: &Method,
    vault: &str,
    rest: &[&str],
) -> Response<Body> {
    let Some(v) = r.vault(vault).await else {
        return r.error(
            StatusCode::FORBIDDEN,
            None,
            "You have no access to this vault, or it does not exist.",
        );
    };
    let vname = v.vault.name.clone();
    let get = *method == Method::GET || *method == Method::HEAD;
    match (rest, get) {
        ([] | ["dashboard"], true) => super::dashboard::page(r, &v).await,
        (["certificates"], true) => list(r, &v).await,
        (["certificates", "new"], true) => {
            let issuers = issuer_names(r, &v).await;
            new_form_with_issuers(r, &v, &NewCert::default(), &[], None, &issuers)
        }
        (["certificates", "new"], false) => create(r, &v).await,
        (["certificates", name], true) => detail(r, &v, name).await,
        (["certificates", name, "status"], true) => status_json(r, &v, name).await,
        (["certificates", name, action], false) => action_route(r, &v, name, action).await,
        (["deleted"], true) => deleted_list(r, &v).await,
        (["deleted", name, action], false) => deleted_action(r, &v, name, action).await,
        _ => r.error(
            StatusCode::NOT_FOUND,
            Some(&vname),
            "There is no such page.",
        ),
    }
}

// ------------------------------------------------------------------------------ helpers

fn cert_path(vault: &str, name: &str) -> String {
    format!("/ui/v/{}/certificates/{}", url(vault), url(name))
}

/// The console state of a version: (css class, label).
pub fn state_of(v: &VersionRecord, now: i64) -> (&'static str, &'static str) {
    if v.cer.is_none() {
        return ("pending", "Pending");
    }
    if !v.enabled {
        return ("disabled", "Disabled");
    }
    match v.exp {
        Some(e) if e <= now => ("expired", "Expired"),
        Some(e) if e <= now + SOON => ("expiring", "Expiring"),
        _ => ("valid", "Valid"),
    }
}

/// Subject, domains and issuer name from a stored policy.
fn policy_facts(policy: &str) -> (String, Vec<String>, String) {
    let p: Value = serde_json::from_str(policy).unwrap_or(Value::Null);
    let subject = p["x509_props"]["subject"].as_str().unwrap_or("").to_owned();
    let domains = p["x509_props"]["sans"]["dns_names"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|d| d.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let issuer = p["issuer"]["name"].as_str().unwrap_or("").to_owned();
    (subject, domains, issuer)
}

fn tags_of(v: &VersionRecord) -> BTreeMap<String, String> {
    v.tags
        .as_deref()
        .and_then(|t| serde_json::from_str(t).ok())
        .unwrap_or_default()
}

fn days_left(exp: Option<i64>, now: i64) -> String {
    match exp {
        Some(e) if e > now => format!("{} d left", (e - now) / 86400),
        Some(e) => format!("{} d ago", (now - e) / 86400),
        None => String::new(),
    }
}

/// A fixed set of confirmation messages (nothing from the query string is shown).
fn done_message(code: &str) -> Option<&'static str> {
    Some(match code {
        "created" => "The certificate was created.",
        "updated" => "The changes were saved.",
        "policy" => "The policy was saved.",
        "renewed" => "A new version was requested.",
        "enabled" => "The version was enabled.",
        "disabled" => "The version was disabled.",
        "deleted" => "The certificate was deleted. It can be recovered until it is purged.",
        "recovered" => "The certificate was recovered.",
        "purged" => "The certificate was purged.",
        "cancelled" => "Cancellation of the pending order was requested.",
        "acknowledged" => "Thanks — validation continues now.",
        _ => return None,
    })
}

fn flash(r: &Req<'_>) -> String {
    r.q("done")
        .and_then(done_message)
        .map(|m| notice("ok", m))
        .unwrap_or_default()
}

fn file_response(ctype: &'static str, filename: &str, body: Vec<u8>) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    let safe: String = filename
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
        .collect();
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{safe}\"")) {
        resp.headers_mut().insert(header::CONTENT_DISPOSITION, v);
    }
    resp
}

// ------------------------------------------------------------------------------ list

fn parse_state(s: Option<&str>) -> UiState {
    match s.unwrap_or("all") {
        "valid" => UiState::Valid,
        "expiring" => UiState::Expiring,
        "expired" => UiState::Expired,
        "pending" => UiState::Pending,
        "disabled" => UiState::Disabled,
        _ => UiState::All,
    }
}

/// Renders the certificate list (also used by the benchmark).
pub(crate) async fn list(r: &Req<'_>, v: &VaultCtx) -> Response<Body> {
    let vname = &v.vault.name;
    if !r.can(v.vault.id, C, "list") {
        r.audit(vname, "certificates.list", None, 403).await;
        return r.error(
            StatusCode::FORBIDDEN,
            Some(vname),
            "You may not list certificates in this vault.",
        );
    }
    let now = r.state.clock.now();
    let search = r
        .q("q")
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| certvault_core::names::truncate(s, 200));
    let state_s = r.q("state").unwrap_or("all").to_owned();
    let sort_s = r
        .q("sort")
        .filter(|s| matches!(*s, "-name" | "expiry" | "-expiry"))
        .unwrap_or("name");
    let descending = sort_s.starts_with('-');
    let sort = if sort_s.ends_with("expiry") {
        UiSort::Expiry
    } else {
        UiSort::Name
    };
    let after = r.q("after").filter(|s| !s.is_empty()).map(str::to_owned);
    let after_exp = r.q("after_exp").and_then(|s| s.parse::<i64>().ok());
    let query = UiCertQuery {
        vault_id: v.vault.id,
        deleted: false,
        search: search.clone(),
        state: parse_state(Some(&state_s)),
        now,
        soon: SOON,
        sort,
        descending,
        after: after.clone(),
        after_exp,
        limit: PAGE + 1,
    };
    let rows = match r.state.store.ui_list_certificates(query).await {
        Ok(rows) => rows,
        Err(e) => {
            return r.error(
                StatusCode::INTERNAL_SERVER_ERROR,
                Some(vname),
                &e.to_string(),
            );
        }
    };
    if !r.audit(vname, "certificates.list", None, 200).await {
        return r.error(
            StatusCode::INTERNAL_SERVER_ERROR,
            Some(vname),
            "The request could not be recorded in the audit trail.",
        );
    }
    let base = format!("/ui/v/{}/certificates", url(vname));
    let mut h = String::with_capacity(32 * 1024);
    h.push_str(&flash(r));
    let _ = write!(
        h,
        r#"<form class="filters" method="get" action="{base}" role="search">
<div class="field"><label for="q">Search</label><input type="search" id="q" name="q" value="{q}" placeholder="name, subject, domain, issuer or tag"></div>
<div class="field"><label for="state">State</label><select id="state" name="state">"#,
        q = esc(search.as_deref().unwrap_or(""))
    );
    for (val, label) in [
        ("all", "All"),
        ("valid", "Valid"),
        ("expiring", "Expiring ≤ 30 days"),
        ("expired", "Expired"),
        ("pending", "Pending"),
        ("disabled", "Disabled"),
    ] {
        let sel = if val == state_s { " selected" } else { "" };
        let _ = write!(h, r#"<option value="{val}"{sel}>{label}</option>"#);
    }
    let _ = write!(
        h,
        r#"</select></div>
<div class="field"><label for="sort">Sort</label><select id="sort" name="sort">"#,
    );
    for (val, label) in [
        ("name", "Name A–Z"),
        ("-name", "Name Z–A"),
        ("expiry", "Expiry, soonest first"),
        ("-expiry", "Expiry, latest first"),
    ] {
        let sel = if val == sort_s { " selected" } else { "" };
        let _ = write!(h, r#"<option value="{val}"{sel}>{label}</option>"#);
    }
    h.push_str(
        r#"</select></div>
<div><button type="submit">Apply</button></div></form>"#,
    );
    if r.can(v.vault.id, C, "create") {
        let _ = write!(
            h,
            r#"<p class="actions"><a class="button" href="{base}/new">Create certificate</a></p>"#
        );
    }
    if rows.is_empty() {
        h.push_str(&notice("info", "No certificates match."));
    } else {
        h.push_str(
            r#"<div class="table-wrap"><table><caption class="hint">Certificates</caption><thead><tr><th scope="col">Name</th><th scope="col" class="opt">Subject / domains</th><th scope="col" class="opt">Issuer</th><th scope="col">State</th><th scope="col">Expires</th><th scope="col" class="opt">Tags</th></tr></thead><tbody>"#,
        );
        for (c, ver) in rows.iter().take(PAGE) {
            let (subject, domains, issuer) = policy_facts(&c.policy);
            let (cls, label) = state_of(ver, now);
            let tags = tags_of(ver)
                .iter()
                .map(|(k, v)| format!("{}={}", esc(k), esc(v)))
                .collect::<Vec<_>>()
                .join(", ");
            let _ = write!(
                h,
                r#"<tr><td><a href="{href}">{name}</a></td><td class="opt">{subject}<br><span class="hint">{domains}</span></td><td class="opt">{issuer}</td><td><span class="state {cls}">{label}</span></td><td>{exp} <span class="hint">{left}</span></td><td class="opt">{tags}</td></tr>"#,
                href = cert_path(vname, &c.name),
                name = esc(&c.name),
                subject = esc(&subject),
                domains = esc(&domains.join(", ")),
                issuer = esc(&issuer),
                exp = time_opt(ver.exp),
                left = esc(&days_left(ver.exp, now)),
            );
        }
        h.push_str("</tbody></table></div>");
    }
    let keep = format!(
        "q={}&state={}&sort={}",
        url(search.as_deref().unwrap_or("")),
        url(&state_s),
        sort_s
    );
    h.push_str(r#"<nav class="pager" aria-label="Pages">"#);
    if after.is_some() {
        let _ = write!(h, r#"<a href="{base}?{keep}">First page</a>"#);
    }
    if rows.len() > PAGE
        && let Some((last, last_v)) = rows.get(PAGE - 1)
    {
        let exp = if sort == UiSort::Expiry {
            format!("&after_exp={}", last_v.exp.unwrap_or(NO_EXPIRY))
        } else {
            String::new()
        };
        let _ = write!(
            h,
            r#"<a href="{base}?{keep}&after={}{exp}" rel="next">Next page</a>"#,
            url(&last.name.to_ascii_lowercase())
        );
    }
    h.push_str("</nav>");
    r.page(
        Some(vname),
        "certificates",
        &format!("Certificates · {vname}"),
        &h,
    )
}

// ------------------------------------------------------------------------------ create

/// The create form's values.
#[derive(Debug, Clone)]
pub(crate) struct NewCert {
    name: String,
    issuer: String,
    subject: String,
    domain: String,
    alt: String,
    key: String,
    exportable: bool,
    validity: String,
    action: String,
    trigger: String,
    trigger_value: String,
}

impl Default for NewCert {
    fn default() -> Self {
        Self {
            name: String::new(),
            issuer: "Self".into(),
            subject: String::new(),
            domain: String::new(),
            alt: String::new(),
            key: "RSA-2048".into(),
            exportable: true,
            validity: "12".into(),
            action: "AutoRenew".into(),
            trigger: "percentage".into(),
            trigger_value: "80".into(),
        }
    }
}

const KEYS: &[(&str, &str)] = &[
    ("RSA-2048", "RSA 2048"),
    ("RSA-3072", "RSA 3072"),
    ("RSA-4096", "RSA 4096"),
    ("EC-P-256", "EC P-256"),
    ("EC-P-384", "EC P-384"),
    ("EC-P-521", "EC P-521"),
];
const HSM_KEYS: &[(&str, &str)] = &[
    ("RSA-HSM-2048", "RSA 2048 (HSM)"),
    ("RSA-HSM-3072", "RSA 3072 (HSM)"),
    ("RSA-HSM-4096", "RSA 4096 (HSM)"),
    ("EC-HSM-P-256", "EC P-256 (HSM)"),
    ("EC-HSM-P-384", "EC P-384 (HSM)"),
    ("EC-HSM-P-521", "EC P-521 (HSM)"),
];

/// The key properties of a key choice.
fn key_props(choice: &str, exportable: bool) -> Option<Value> {
    let (kty, rest) = if let Some(r) = choice.strip_prefix("RSA-HSM-") {
        ("RSA-HSM", r)
    } else if let Some(r) = choice.strip_prefix("RSA-") {
        ("RSA", r)
    } else if let Some(r) = choice.strip_prefix("EC-HSM-") {
        ("EC-HSM", r)
    } else if let Some(r) = choice.strip_prefix("EC-") {
        ("EC", r)
    } else {
        return None;
    };
    if kty.starts_with("RSA") {
        let size: u32 = rest.parse().ok()?;
        [2048, 3072, 4096].contains(&size).then(
            || json!({"kty": kty, "key_size": size, "exportable": exportable, "reuse_key": false}),
        )
    } else {
        ["P-256", "P-384", "P-521"]
            .contains(&rest)
            .then(|| json!({"kty": kty, "crv": rest, "exportable": exportable, "reuse_key": false}))
    }
}

/// A DNS name, optionally a leading wildcard label.
pub fn valid_domain(d: &str, wildcard_ok: bool) -> Result<(), String> {
    let body = match d.strip_prefix("*.") {
        Some(rest) if wildcard_ok => rest,
        Some(_) => return Err(format!("'{d}': this issuer does not allow wildcards.")),
        None => d,
    };
    if body.is_empty() || body.len() > 253 {
        return Err(format!("'{d}' is not a domain name."));
    }
    for label in body.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(format!(
                "'{}' is not a domain name (labels of letters, digits and '-', separated by dots{}).",
                certvault_core::names::truncate(d, 80),
                if wildcard_ok { "; '*.' may lead" } else { "" }
            ));
        }
    }
    Ok(())
}

fn split_domains(s: &str) -> Vec<String> {
    s.split([',', '\n', '\r', ' '])
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(str::to_ascii_lowercase)
        .collect()
}

/// Validates the form; returns the errors by field and the request body when valid.
pub(crate) fn validate_new(f: &NewCert, hsm: bool) -> (Vec<(&'static str, String)>, Option<Value>) {
    let mut errs: Vec<(&'static str, String)> = Vec::new();
    if let Err(e) = ObjectName::parse(f.name.trim()) {
        errs.push(("name", e.to_string()));
    }
    if f.issuer.trim().is_empty() {
        errs.push(("issuer", "Choose an issuer.".into()));
    }
    let mut domains = Vec::new();
    let primary = f.domain.trim().to_ascii_lowercase();
    if !primary.is_empty() {
        match valid_domain(&primary, true) {
            Ok(()) => domains.push(primary.clone()),
            Err(e) => errs.push(("domain", e)),
        }
    }
    for d in split_domains(&f.alt) {
        match valid_domain(&d, true) {
            Ok(()) => {
                if !domains.contains(&d) {
                    domains.push(d);
                }
            }
            Err(e) => {
                errs.push(("alt", e));
                break;
            }
        }
    }
    let subject = if f.subject.trim().is_empty() {
        if primary.is_empty() {
            String::new()
        } else {
            format!("CN={primary}")
        }
    } else {
        f.subject.trim().to_owned()
    };
    if subject.is_empty() {
        errs.push((
            "subject",
            "Give a subject (e.g. CN=www.example.com) or a primary domain.".into(),
        ));
    } else if let Err(e) = certvault_crypto::validate_subject(&subject) {
        errs.push(("subject", format!("The subject is not valid: {e}.")));
    }
    let hsm_choice = f.key.contains("-HSM-");
    let kp = if hsm_choice && !hsm {
        None
    } else {
        key_props(&f.key, f.exportable && !hsm_choice)
    };
    if kp.is_none() {
        errs.push(("key", "Choose one of the listed key types.".into()));
    }
    let validity = match f.validity.trim().parse::<u32>() {
        Ok(n) if (1..=certvault_core::policy::MAX_VALIDITY_MONTHS).contains(&n) => Some(n),
        _ => {
            errs.push((
                "validity",
                format!(
                    "Validity is a whole number of months from 1 to {}.",
                    certvault_core::policy::MAX_VALIDITY_MONTHS
                ),
            ));
            None
        }
    };
    let action = match f.action.as_str() {
        "AutoRenew" | "EmailContacts" => Some(f.action.clone()),
        _ => {
            errs.push(("action", "Choose a lifetime action.".into()));
            None
        }
    };
    let trigger = match (f.trigger.as_str(), f.trigger_value.trim().parse::<u32>()) {
        ("percentage", Ok(n)) if (1..=99).contains(&n) => Some(json!({"lifetime_percentage": n})),
        ("days", Ok(n)) if n >= 1 => {
            if let Some(m) = validity
                && n >= m * 28
            {
                errs.push((
                    "trigger_value",
                    "The days before expiry must be shorter than the validity.".into(),
                ));
                None
            } else {
                Some(json!({"days_before_expiry": n}))
            }
        }
        ("percentage", _) => {
            errs.push((
                "trigger_value",
                "The percentage of the lifetime is a whole number from 1 to 99.".into(),
            ));
            None
        }
        _ => {
            errs.push((
                "trigger_value",
                "The days before expiry is a whole number of at least 1.".into(),
            ));
            None
        }
    };
    if !errs.is_empty() {
        return (errs, None);
    }
    let mut x509 = json!({"subject": subject, "validity_months": validity});
    if !domains.is_empty() {
        x509["sans"] = json!({"dns_names": domains});
    }
    let body = json!({
        "policy": {
            "key_props": kp,
            "secret_props": {"contentType": "application/x-pkcs12"},
            "x509_props": x509,
            "issuer": {"name": f.issuer.trim()},
            "lifetime_actions": [{"trigger": trigger, "action": {"action_type": action}}],
        },
        "attributes": {"enabled": true},
    });
    (errs, Some(body))
}

fn field_err(errs: &[(&'static str, String)], field: &str) -> (String, String) {
    match errs.iter().find(|(f, _)| *f == field) {
        Some((_, m)) => (
            format!(r#" aria-invalid="true" aria-describedby="{field}-err""#),
            format!(r#"<span class="err" id="{field}-err">{}</span>"#, esc(m)),
        ),
        None => (String::new(), String::new()),
    }
}

fn new_form_with_issuers(
    r: &Req<'_>,
    v: &VaultCtx,
    f: &NewCert,
    errs: &[(&'static str, String)],
    api_error: Option<&str>,
    issuers: &[String],
) -> Response<Body> {
    let vname = &v.vault.name;
    if !r.can(v.vault.id, C, "create") {
        return r.error(
            StatusCode::FORBIDDEN,
            Some(vname),
            "You may not create certificates in this vault.",
        );
    }
    let mut h = String::new();
    if let Some(m) = api_error {
        h.push_str(&notice("error", m));
    }
    if !errs.is_empty() {
        h.push_str(&notice(
            "error",
            "Some fields need attention; nothing was created.",
        ));
    }
    let _ = write!(
        h,
        r#"<form class="stack" method="post" action="/ui/v/{vu}/certificates/new" novalidate>{csrf}"#,
        vu = url(vname),
        csrf = csrf_input(r.csrf())
    );
    let (a, e) = field_err(errs, "name");
    let _ = write!(
        h,
        r#"<div class="field"><label for="name">Name</label><input type="text" id="name" name="name" value="{}" required maxlength="127" pattern="[0-9A-Za-z\-]+"{a}><span class="hint">Letters, digits and '-'.</span>{e}</div>"#,
        esc(&f.name)
    );
    let (a, e) = field_err(errs, "issuer");
    let _ = write!(
        h,
        r#"<div class="field"><label for="issuer">Issuer</label><select id="issuer" name="issuer"{a}>"#
    );
    let mut choices = vec![
        ("Self".to_owned(), "Self-signed".to_owned()),
        (
            "Unknown".to_owned(),
            "Unknown (CSR, merge later)".to_owned(),
        ),
    ];
    choices.extend(issuers.iter().map(|i| (i.clone(), i.clone())));
    for (val, label) in &choices {
        let sel = if *val == f.issuer { " selected" } else { "" };
        let _ = write!(
            h,
            r#"<option value="{}"{sel}>{}</option>"#,
            esc(val),
            esc(label)
        );
    }
    let _ = write!(h, "</select>{e}</div>");
    let (a, e) = field_err(errs, "domain");
    let _ = write!(
        h,
        r#"<div class="field"><label for="domain">Primary domain</label><input type="text" id="domain" name="domain" value="{}" placeholder="www.example.com"{a}><span class="hint">Wildcards (<code>*.example.com</code>) where the issuer allows them.</span>{e}</div>"#,
        esc(&f.domain)
    );
    let (a, e) = field_err(errs, "alt");
    let _ = write!(
        h,
        r#"<div class="field"><label for="alt">Alternative domains</label><textarea id="alt" name="alt" rows="3"{a}>{}</textarea><span class="hint">One per line or separated by commas.</span>{e}</div>"#,
        esc(&f.alt)
    );
    let (a, e) = field_err(errs, "subject");
    let _ = write!(
        h,
        r#"<div class="field"><label for="subject">Subject</label><input type="text" id="subject" name="subject" value="{}" placeholder="CN=www.example.com, O=Example"{a}><span class="hint">Leave empty for CN=&lt;primary domain&gt;.</span>{e}</div>"#,
        esc(&f.subject)
    );
    let (a, e) = field_err(errs, "key");
    let _ = write!(
        h,
        r#"<div class="field"><label for="key">Key algorithm</label><select id="key" name="key"{a}>"#
    );
    let hsm = r.state.hsm.is_some();
    for (val, label) in KEYS
        .iter()
        .chain(if hsm { HSM_KEYS.iter() } else { [].iter() })
    {
        let sel = if *val == f.key { " selected" } else { "" };
        let _ = write!(h, r#"<option value="{val}"{sel}>{label}</option>"#);
    }
    let _ = write!(h, "</select>{e}</div>");
    let _ = write!(
        h,
        r#"<div class="field inline"><input type="checkbox" id="exportable" name="exportable" value="1"{}><label for="exportable">Private key exportable</label></div>"#,
        if f.exportable { " checked" } else { "" }
    );
    let (a, e) = field_err(errs, "validity");
    let _ = write!(
        h,
        r#"<div class="field"><label for="validity">Validity (months)</label><input type="number" id="validity" name="validity" min="1" max="1200" value="{}"{a}>{e}</div>"#,
        esc(&f.validity)
    );
    let (a, e) = field_err(errs, "action");
    let _ = write!(
        h,
        r#"<div class="field"><label for="action">Lifetime action</label><select id="action" name="action"{a}><option value="AutoRenew"{}>Renew automatically</option><option value="EmailContacts"{}>E-mail the contacts</option></select>{e}</div>"#,
        if f.action == "AutoRenew" {
            " selected"
        } else {
            ""
        },
        if f.action == "EmailContacts" {
            " selected"
        } else {
            ""
        },
    );
    let (a, e) = field_err(errs, "trigger_value");
    let _ = write!(
        h,
        r#"<div class="field"><label for="trigger">When</label><select id="trigger" name="trigger"><option value="percentage"{}>At a percentage of the lifetime</option><option value="days"{}>Days before expiry</option></select></div>
<div class="field"><label for="trigger_value">Percentage or days</label><input type="number" id="trigger_value" name="trigger_value" min="1" value="{}"{a}>{e}</div>"#,
        if f.trigger == "percentage" {
            " selected"
        } else {
            ""
        },
        if f.trigger == "days" { " selected" } else { "" },
        esc(&f.trigger_value),
    );
    h.push_str(r#"<div><button type="submit">Create</button></div></form>"#);
    r.page(
        Some(vname),
        "new",
        &format!("Create certificate · {vname}"),
        &h,
    )
}

async fn issuer_names(r: &Req<'_>, v: &VaultCtx) -> Vec<String> {
    if !r.can(v.vault.id, C, "listissuers") {
        return Vec::new();
    }
    r.state
        .store
        .list_issuers(v.vault.id, None, 100)
        .await
        .map(|is| is.into_iter().map(|i| i.name).collect())
        .unwrap_or_default()
}

async fn create(r: &Req<'_>, v: &VaultCtx) -> Response<Body> {
    let vname = &v.vault.name;
    let f = NewCert {
        name: r.f("name").unwrap_or("").trim().to_owned(),
        issuer: r.f("issuer").unwrap_or("Self").to_owned(),
        subject: r.f("subject").unwrap_or("").to_owned(),
        domain: r.f("domain").unwrap_or("").to_owned(),
        alt: r.f("alt").unwrap_or("").to_owned(),
        key: r.f("key").unwrap_or("").to_owned(),
        exportable: r.checked("exportable"),
        validity: r.f("validity").unwrap_or("").to_owned(),
        action: r.f("action").unwrap_or("").to_owned(),
        trigger: r.f("trigger").unwrap_or("").to_owned(),
        trigger_value: r.f("trigger_value").unwrap_or("").to_owned(),
    };
    let issuers = issuer_names(r, v).await;
    let (errs, body) = validate_new(&f, r.state.hsm.is_some());
    let Some(body) = body else {
        let mut resp = new_form_with_issuers(r, v, &f, &errs, None, &issuers);
        if resp.status() == StatusCode::OK {
            *resp.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
        }
        return resp;
    };
    let reply = r
        .kv(
            vname,
            Method::POST,
            &format!("/certificates/{}/create", f.name),
            "",
            Some(&body),
        )
        .await;
    if reply.ok() {
        return redirect(&format!("{}?done=created", cert_path(vname, &f.name)));
    }
    if reply.status == StatusCode::FORBIDDEN {
        return r.error(StatusCode::FORBIDDEN, Some(vname), &reply.message());
    }
    let mut resp = new_form_with_issuers(r, v, &f, &[], Some(&reply.message()), &issuers);
    *resp.status_mut() = reply.status;
    resp
}

// ------------------------------------------------------------------------------ detail

async fn load(r: &Req<'_>, v: &VaultCtx, name: &str) -> Option<CertRecord> {
    r.state
        .store
        .certificate(v.vault.id, &name.to_ascii_lowercase())
        .await
        .ok()
        .flatten()
}

fn version_block(
    r: &Req<'_>,
    vname: &str,
    cert: &CertRecord,
    ver: &VersionRecord,
    latest: bool,
    now: i64,
    can_update: bool,
) -> String {
    let (cls, label) = state_of(ver, now);
    let mut h = String::new();
    let _ = write!(
        h,
        r#"<details class="version"{open}><summary>Version <span class="mono">{id}</span> — <span class="state {cls}">{label}</span>{lat}</summary><dl class="props">"#,
        open = if latest { " open" } else { "" },
        id = esc(&ver.version),
        lat = if latest { " (current)" } else { "" },
    );
    let _ = write!(
        h,
        "<dt>Created</dt><dd>{}</dd><dt>Not before</dt><dd>{}</dd><dt>Expires</dt><dd>{} <span class=\"hint\">{}</span></dd>",
        time_el(ver.created),
        time_opt(ver.nbf),
        time_opt(ver.exp),
        esc(&days_left(ver.exp, now))
    );
    if let Some(info) = ver
        .cer
        .as_deref()
        .and_then(|c| certvault_crypto::parse_certificate(c).ok())
    {
        let mut sans: Vec<String> = info.dns_names.clone();
        sans.extend(info.ip_addresses.iter().cloned());
        sans.extend(info.emails.iter().cloned());
        sans.extend(info.uris.iter().cloned());
        let _ = write!(
            h,
            r#"<dt>Subject</dt><dd>{}</dd><dt>Issuer</dt><dd>{}</dd><dt>Serial</dt><dd class="mono" data-testid="serial">{}</dd><dt>Thumbprint (SHA-1)</dt><dd class="mono" data-testid="thumbprint">{}</dd><dt>SANs</dt><dd>{}</dd><dt>Key type</dt><dd data-testid="keytype">{}</dd><dt>Public key (SHA-256)</dt><dd class="mono" data-testid="spki">{}</dd>"#,
            esc(&info.subject),
            esc(&info.issuer),
            esc(&info.serial_hex),
            hex::encode_upper(info.sha1),
            esc(&sans.join(", ")),
            esc(&info.public_key.alg().to_string()),
            hex::encode(certvault_crypto::sha256(info.public_key.spki_der())),
        );
        if !ver.chain.is_empty() {
            h.push_str("<dt>Issuer chain</dt><dd><ol>");
            for c in &ver.chain {
                if let Ok(ci) = certvault_crypto::parse_certificate(c) {
                    let _ = write!(h, "<li>{}</li>", esc(&ci.subject));
                }
            }
            h.push_str("</ol></dd>");
        } else if info.self_issued {
            h.push_str("<dt>Issuer chain</dt><dd>Self-signed</dd>");
        }
    } else {
        let _ = write!(
            h,
            r#"<dt>Public key (SHA-256)</dt><dd class="mono">{}</dd>"#,
            hex::encode(certvault_crypto::sha256(&ver.spki))
        );
    }
    let _ = write!(
        h,
        "<dt>Exportable</dt><dd>{}</dd><dt>Storage</dt><dd>{}</dd>",
        if ver.exportable { "Yes" } else { "No" },
        if ver.key_ref.is_some() {
            "HSM"
        } else {
            "Software"
        }
    );
    let tags = tags_of(ver);
    if !tags.is_empty() {
        let t: Vec<String> = tags
            .iter()
            .map(|(k, v)| format!("{}={}", esc(k), esc(v)))
            .collect();
        let _ = write!(h, "<dt>Tags</dt><dd>{}</dd>", t.join(", "));
    }
    h.push_str("</dl>");
    if can_update && ver.cer.is_some() {
        let (to, word) = if ver.enabled {
            ("0", "Disable")
        } else {
            ("1", "Enable")
        };
        let _ = write!(
            h,
            r#"<div class="actions"><form method="post" action="{p}/enable">{csrf}<input type="hidden" name="version" value="{ver}"><input type="hidden" name="enabled" value="{to}"><button type="submit" class="secondary">{word} this version</button></form></div>"#,
            p = cert_path(vname, &cert.name),
            csrf = csrf_input(r.csrf()),
            ver = esc(&ver.version),
        );
    }
    h.push_str("</details>");
    h
}

async fn detail(r: &Req<'_>, v: &VaultCtx, name: &str) -> Response<Body> {
    let vname = &v.vault.name;
    let vid = v.vault.id;
    let object = Some(format!("certificates/{}", name.to_ascii_lowercase()));
    if !r.can(vid, C, "get") {
        r.audit(vname, "certificates.get", object, 403).await;
        return r.error(
            StatusCode::FORBIDDEN,
            Some(vname),
            "You may not read certificates in this vault.",
        );
    }
    let Some(cert) = load(r, v, name).await.filter(|c| c.deleted_at.is_none()) else {
        r.audit(vname, "certificates.get", object, 404).await;
        return r.error(
            StatusCode::NOT_FOUND,
            Some(vname),
            "There is no such certificate (it may have been deleted).",
        );
    };
    let versions = match r.state.store.list_versions(cert.id, 0, 10_000).await {
        Ok(vs) => vs,
        Err(e) => {
            return r.error(
                StatusCode::INTERNAL_SERVER_ERROR,
                Some(vname),
                &e.to_string(),
            );
        }
    };
    let op = r.state.store.operation(cert.id).await.ok().flatten();
    if !r.audit(vname, "certificates.get", object, 200).await {
        return r.error(
            StatusCode::INTERNAL_SERVER_ERROR,
            Some(vname),
            "The request could not be recorded in the audit trail.",
        );
    }
    let now = r.state.clock.now();
    let can_update = r.can(vid, C, "update");
    let can_create = r.can(vid, C, "create");
    let can_delete = r.can(vid, C, "delete");
    let can_export = r.can(vid, S, "get");
    let path = cert_path(vname, &cert.name);
    let csrf = csrf_input(r.csrf());
    let latest = versions
        .iter()
        .rev()
        .find(|x| x.cer.is_some())
        .or_else(|| versions.last());
    let (subject, domains, issuer) = policy_facts(&cert.policy);
    let mut h = String::with_capacity(16 * 1024);
    h.push_str(&flash(r));
    let state_label = latest.map_or(("pending", "No version"), |l| state_of(l, now));
    let _ = write!(
        h,
        r#"<dl class="props"><dt>State</dt><dd><span class="state {}" data-testid="state">{}</span></dd><dt>Subject</dt><dd>{}</dd><dt>Domains</dt><dd>{}</dd><dt>Issuer</dt><dd>{}</dd><dt>Created</dt><dd>{}</dd><dt>Versions</dt><dd data-testid="version-count">{}</dd></dl>"#,
        state_label.0,
        state_label.1,
        esc(&subject),
        esc(&domains.join(", ")),
        esc(&issuer),
        time_el(cert.created),
        versions.len(),
    );
    if let Some(op) = &op {
        let pending = op.status == "inProgress";
        let _ = write!(
            h,
            r#"<section aria-labelledby="op-h"><h2 id="op-h">{title}</h2><dl class="props"{poll}><dt>Status</dt><dd id="live-status" data-testid="op-status">{}</dd><dt>Issuer</dt><dd>{}</dd><dt>Details</dt><dd id="live-reason">{}</dd><dt>Since</dt><dd>{}</dd></dl>"#,
            esc(&op.status),
            esc(&op.issuer_name),
            esc(op.error.as_deref().unwrap_or(&op.status_details)),
            time_el(op.created),
            title = if pending {
                "Pending order"
            } else {
                "Last order"
            },
            poll = if pending {
                format!(
                    r#" data-poll="{path}/status?json=1" data-stage="{}""#,
                    esc(&op.status_details)
                )
            } else {
                String::new()
            },
        );
        if pending && let Some(end) = window_end(&op.status_details) {
            let left = (end - now).max(0);
            let _ = write!(
                h,
                r#"<p>Validation window ends {} <span data-testid="time-left">({} min {} s left)</span></p>"#,
                time_el(end),
                left / 60,
                left % 60
            );
        }
        if pending && let Some(order) = acme_order(r, v.vault.id, &cert, &op.version).await {
            h.push_str(&acme_records(r, &path, &order, can_update));
        }
        if can_update && pending {
            let _ = write!(
                h,
                r#"<div class="actions"><form method="post" action="{path}/cancel" data-confirm="Cancel the pending order?">{csrf}<button type="submit" class="secondary">Cancel the order</button></form></div>"#
            );
        }
        h.push_str("</section>");
    }
    // actions
    h.push_str(
        r#"<section aria-labelledby="act-h"><h2 id="act-h">Actions</h2><div class="actions">"#,
    );
    // The renew API refuses (409 Conflict) while an order is in progress, so the console does
    // not offer it then; the pending order section above offers Cancel instead.
    let order_pending = op.as_ref().is_some_and(|o| o.status == "inProgress");
    if can_create && order_pending {
        h.push_str(r#"<p class="hint" data-testid="renew-blocked">Renewal is not available while an order is in progress: let it finish or cancel it first.</p>"#);
    } else if can_create {
        let _ = write!(
            h,
            r#"<form method="post" action="{path}/renew">{csrf}<span class="field inline"><input type="checkbox" id="rekey" name="rekey" value="1"><label for="rekey">Rekey (new key pair)</label></span><button type="submit">Renew now</button></form>"#
        );
    }
    if can_delete {
        let _ = write!(
            h,
            r#"<form method="post" action="{path}/delete" data-confirm="Delete certificate {n}? It can be recovered until it is purged.">{csrf}<button type="submit" class="danger">Delete</button></form>"#,
            n = esc(&cert.name)
        );
    }
    h.push_str("</div></section>");
    // download
    if let Some(l) = latest.filter(|l| l.cer.is_some()) {
        h.push_str(r#"<section aria-labelledby="dl-h"><h2 id="dl-h">Download</h2>"#);
        let _ = write!(
            h,
            r#"<form class="stack" method="post" action="{path}/download">{csrf}<input type="hidden" name="version" value="{ver}"><div class="field"><label for="format">Format</label><select id="format" name="format"><option value="cer">Certificate only (PEM)</option>"#,
            ver = esc(&l.version)
        );
        if can_export {
            if l.exportable {
                h.push_str(r#"<option value="pem">Certificate and private key (PEM)</option><option value="pfx">PKCS#12 / PFX (password-protected)</option>"#);
            } else {
                h.push_str(r#"<option value="pfx">PKCS#12 / PFX, certificate only</option>"#);
            }
        }
        h.push_str(r#"</select></div>"#);
        if can_export {
            h.push_str(r#"<div class="field"><label for="password">PFX password</label><input type="password" id="password" name="password" autocomplete="new-password" aria-describedby="pw-hint"><span class="hint" id="pw-hint">Required for PFX; the file is encrypted with it.</span></div>"#);
        }
        if !l.exportable {
            h.push_str(r#"<p class="hint">The private key is not exportable.</p>"#);
        }
        h.push_str(r#"<div><button type="submit">Download</button></div></form></section>"#);
    }
    // attributes and tags
    if let Some(l) = latest {
        h.push_str(r#"<section aria-labelledby="attr-h"><h2 id="attr-h">Attributes and tags</h2>"#);
        let tags = tags_of(l)
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("\n");
        if l.cer.is_none() {
            // A version whose order has not completed has no meaningful Enabled attribute yet
            // (it is enabled when the certificate arrives): shown as pending, with no action.
            let _ = write!(
                h,
                r#"<dl class="props"><dt>Enabled</dt><dd><span class="state pending" data-testid="enabled-pending">Pending</span> <span class="hint">set when the order completes</span></dd><dt>Tags</dt><dd>{}</dd></dl>"#,
                esc(&tags)
            );
        } else if can_update {
            let _ = write!(
                h,
                r#"<form class="stack" method="post" action="{path}/update">{csrf}<input type="hidden" name="version" value="{ver}"><div class="field inline"><input type="checkbox" id="enabled" name="enabled" value="1"{chk}><label for="enabled">Enabled</label></div><div class="field"><label for="tags">Tags</label><textarea id="tags" name="tags" rows="3" aria-describedby="tags-hint">{tags}</textarea><span class="hint" id="tags-hint">One <code>name=value</code> per line.</span></div><div><button type="submit">Save</button></div></form>"#,
                ver = esc(&l.version),
                chk = if l.enabled { " checked" } else { "" },
                tags = esc(&tags),
            );
        } else {
            let _ = write!(
                h,
                "<p>Enabled: {}. Tags: {}</p>",
                if l.enabled { "yes" } else { "no" },
                esc(&tags)
            );
        }
        h.push_str("</section>");
    }
    // policy
    let pretty = serde_json::from_str::<Value>(&cert.policy)
        .ok()
        .and_then(|p| serde_json::to_string_pretty(&p).ok())
        .unwrap_or_else(|| cert.policy.clone());
    h.push_str(r#"<section aria-labelledby="pol-h"><h2 id="pol-h">Policy</h2>"#);
    if can_update {
        let _ = write!(
            h,
            r#"<form class="stack" method="post" action="{path}/policy">{csrf}<div class="field"><label for="policy">Policy (JSON, Key Vault shape)</label><textarea id="policy" name="policy" rows="16" class="mono" spellcheck="false">{}</textarea></div><div><button type="submit">Save policy</button></div></form>"#,
            esc(&pretty)
        );
    } else {
        let _ = write!(h, r#"<pre class="mono">{}</pre>"#, esc(&pretty));
    }
    h.push_str("</section>");
    h.push_str(r#"<section aria-labelledby="ver-h"><h2 id="ver-h">Versions</h2>"#);
    let latest_id = latest.map(|l| l.version.clone());
    for ver in versions.iter().rev() {
        h.push_str(&version_block(
            r,
            vname,
            &cert,
            ver,
            Some(&ver.version) == latest_id.as_ref(),
            now,
            can_update,
        ));
    }
    h.push_str("</section>");
    r.page(Some(vname), "certificates", &cert.name, &h)
}

/// The end of a notify-mode order's validation window, from its status details
/// (`… checked on the zone's authoritative servers until 2026-11-27T01:01:56Z): …`).
fn window_end(details: &str) -> Option<i64> {
    let rest = details.split_once(" until ")?.1;
    let stamp = rest.split([')', ' ', ';']).next()?;
    time::OffsetDateTime::parse(stamp, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(time::OffsetDateTime::unix_timestamp)
}

/// The active ACME order of a certificate version, if any.
async fn acme_order(
    r: &Req<'_>,
    vault_id: i64,
    cert: &CertRecord,
    version: &str,
) -> Option<certvault_store::AcmeOrderRecord> {
    let key = cert.name.to_ascii_lowercase();
    r.state
        .store
        .active_acme_orders()
        .await
        .ok()?
        .into_iter()
        .find(|o| o.vault_id == vault_id && o.cert_key == key && o.version == version)
}

/// The DNS-01 records of an order in progress, with copy buttons and the acknowledge action.
fn acme_records(
    r: &Req<'_>,
    path: &str,
    order: &certvault_store::AcmeOrderRecord,
    can_update: bool,
) -> String {
    let st: Value = serde_json::from_str(&order.state).unwrap_or(Value::Null);
    let authz = st["authorizations"].as_array().cloned().unwrap_or_default();
    let mut h = String::from(
        r#"<h3>DNS records to add</h3><div class="table-wrap"><table><thead><tr><th scope="col">Domain</th><th scope="col">TXT record name</th><th scope="col">TXT value</th><th scope="col">Status</th></tr></thead><tbody>"#,
    );
    let mut any = false;
    for (i, a) in authz.iter().enumerate() {
        let name = a["txt_name"].as_str().unwrap_or("");
        let value = a["txt_value"].as_str().unwrap_or("");
        if name.is_empty() {
            continue;
        }
        any = true;
        let _ = write!(
            h,
            r#"<tr><td>{d}</td><td><code class="mono" id="txt-name-{i}" data-testid="txt-name">{n}</code> <button type="button" class="secondary" data-copy="txt-name-{i}">Copy</button></td><td><code class="mono" id="txt-value-{i}" data-testid="txt-value">{v}</code> <button type="button" class="secondary" data-copy="txt-value-{i}">Copy</button></td><td>{s}</td></tr>"#,
            d = esc(a["identifier"].as_str().unwrap_or("")),
            n = esc(name),
            v = esc(value),
            s = esc(a["status"].as_str().unwrap_or("")),
        );
    }
    h.push_str("</tbody></table></div>");
    if !any {
        return r#"<p class="hint">Waiting for the CA's challenges…</p>"#.to_owned();
    }
    if order.acknowledged {
        h.push_str(r#"<p class="notice info">You said the records are in place; the CA is validating.</p>"#);
    } else if can_update {
        let _ = write!(
            h,
            r#"<div class="actions"><form method="post" action="{path}/acknowledge">{csrf}<button type="submit">I have added the records</button></form></div>"#,
            csrf = csrf_input(r.csrf())
        );
    }
    h
}

async fn status_json(r: &Req<'_>, v: &VaultCtx, name: &str) -> Response<Body> {
    let reply = r
        .kv(
            &v.vault.name,
            Method::GET,
            &format!("/certificates/{name}/pending"),
            "",
            None,
        )
        .await;
    let body = if reply.ok() {
        json!({
            "status": reply.json["status"],
            "details": reply.json["status_details"],
            "error": reply.json["error"]["message"],
        })
    } else if reply.status == StatusCode::NOT_FOUND {
        json!({"status": "completed"})
    } else {
        json!({"status": "unknown", "error": reply.message()})
    };
    crate::http::json(
        if reply.status == StatusCode::FORBIDDEN {
            StatusCode::FORBIDDEN
        } else {
            StatusCode::OK
        },
        &body,
    )
}

// ------------------------------------------------------------------------------ actions

fn parse_tags(s: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
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
        out.insert(k.to_owned(), v.trim().to_owned());
    }
    Ok(out)
}

async fn action_route(r: &Req<'_>, v: &VaultCtx, name: &str, action: &str) -> Response<Body> {
    let vname = &v.vault.name;
    if ObjectName::parse(name).is_err() {
        return r.error(
            StatusCode::NOT_FOUND,
            Some(vname),
            "There is no such certificate.",
        );
    }
    let path = cert_path(vname, name);
    let version = r
        .f("version")
        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit()))
        .unwrap_or("");
    let (method, api_path, body, done) = match action {
        "renew" => (
            Method::POST,
            format!("/certificates/{name}/renew"),
            Some(json!({"rekey": r.checked("rekey")})),
            "renewed",
        ),
        "delete" => (
            Method::DELETE,
            format!("/certificates/{name}"),
            None,
            "deleted",
        ),
        "acknowledge" => (
            Method::POST,
            format!("/certificates/{name}/pending/acknowledge"),
            None,
            "acknowledged",
        ),
        "cancel" => (
            Method::PATCH,
            format!("/certificates/{name}/pending"),
            Some(json!({"cancellation_requested": true})),
            "cancelled",
        ),
        "enable" => {
            let on = r.f("enabled") == Some("1");
            (
                Method::PATCH,
                format!("/certificates/{name}/{version}"),
                Some(json!({"attributes": {"enabled": on}})),
                if on { "enabled" } else { "disabled" },
            )
        }
        "update" => match parse_tags(r.f("tags").unwrap_or("")) {
            Ok(tags) => (
                Method::PATCH,
                format!("/certificates/{name}/{version}"),
                Some(json!({"attributes": {"enabled": r.checked("enabled")}, "tags": tags})),
                "updated",
            ),
            Err(m) => {
                return r.error(
                    StatusCode::BAD_REQUEST,
                    Some(vname),
                    &format!("The tags are not valid: {m} Nothing was changed."),
                );
            }
        },
        "policy" => match serde_json::from_str::<Value>(r.f("policy").unwrap_or("")) {
            Ok(p) if p.is_object() => (
                Method::PATCH,
                format!("/certificates/{name}/policy"),
                Some(p),
                "policy",
            ),
            _ => {
                return r.error(
                    StatusCode::BAD_REQUEST,
                    Some(vname),
                    "The policy is not a JSON object. Nothing was changed.",
                );
            }
        },
        "download" => return download(r, v, name, version).await,
        _ => {
            return r.error(
                StatusCode::NOT_FOUND,
                Some(vname),
                "There is no such action.",
            );
        }
    };
    let reply = r.kv(vname, method, &api_path, "", body.as_ref()).await;
    if !reply.ok() {
        return r.error(
            reply.status,
            Some(vname),
            &format!("{} Nothing was changed.", reply.message()),
        );
    }
    if action == "delete" {
        return redirect(&format!("/ui/v/{}/deleted?done=deleted", url(vname)));
    }
    redirect(&format!("{path}?done={done}"))
}

async fn download(r: &Req<'_>, v: &VaultCtx, name: &str, version: &str) -> Response<Body> {
    let vname = &v.vault.name;
    let format = r.f("format").unwrap_or("cer");
    let password = r.f("password").unwrap_or("");
    let vpath = if version.is_empty() {
        String::new()
    } else {
        format!("/{version}")
    };
    match format {
        "cer" => {
            let reply = r
                .kv(
                    vname,
                    Method::GET,
                    &format!("/certificates/{name}{vpath}"),
                    "",
                    None,
                )
                .await;
            if !reply.ok() {
                return r.error(reply.status, Some(vname), &reply.message());
            }
            let der = reply.json["cer"]
                .as_str()
                .and_then(|c| base64::engine::general_purpose::STANDARD.decode(c).ok());
            let Some(der) = der else {
                return r.error(
                    StatusCode::CONFLICT,
                    Some(vname),
                    "This version has no certificate yet.",
                );
            };
            let pem = certvault_crypto::to_pem(None, &[der]);
            file_response(
                "application/x-pem-file",
                &format!("{name}.crt.pem"),
                pem.into_bytes(),
            )
        }
        "pem" => {
            let reply = r
                .kv(
                    vname,
                    Method::GET,
                    &format!("/secrets/{name}{vpath}"),
                    "&outContentType=application/x-pem-file",
                    None,
                )
                .await;
            if !reply.ok() {
                return r.error(reply.status, Some(vname), &reply.message());
            }
            let pem = reply.json["value"].as_str().unwrap_or("").to_owned();
            file_response(
                "application/x-pem-file",
                &format!("{name}.pem"),
                pem.into_bytes(),
            )
        }
        "pfx" => {
            if password.is_empty() {
                return r.error(
                    StatusCode::BAD_REQUEST,
                    Some(vname),
                    "Enter a password for the PFX file.",
                );
            }
            let reply = r
                .kv(
                    vname,
                    Method::GET,
                    &format!("/secrets/{name}{vpath}"),
                    "&outContentType=application/x-pkcs12",
                    None,
                )
                .await;
            if !reply.ok() {
                return r.error(reply.status, Some(vname), &reply.message());
            }
            let raw = reply.json["value"]
                .as_str()
                .and_then(|c| base64::engine::general_purpose::STANDARD.decode(c).ok())
                .map(zeroize::Zeroizing::new);
            let Some(raw) = raw else {
                return r.error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    Some(vname),
                    "The secret could not be read.",
                );
            };
            let password = zeroize::Zeroizing::new(password.to_owned());
            let made = tokio::task::spawn_blocking(move || {
                let bundle = certvault_crypto::parse_pfx(&raw, "")?;
                certvault_crypto::write_pfx(bundle.key.as_ref(), &bundle.certs, &password)
            })
            .await;
            match made {
                Ok(Ok(pfx)) => file_response("application/x-pkcs12", &format!("{name}.pfx"), pfx),
                _ => r.error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    Some(vname),
                    "The PFX file could not be made.",
                ),
            }
        }
        _ => r.error(StatusCode::BAD_REQUEST, Some(vname), "Choose a format."),
    }
}

// ------------------------------------------------------------------------------ deleted

async fn deleted_list(r: &Req<'_>, v: &VaultCtx) -> Response<Body> {
    let vname = &v.vault.name;
    let vid = v.vault.id;
    if !r.can(vid, C, "list") {
        r.audit(vname, "certificates.list-deleted", None, 403).await;
        return r.error(
            StatusCode::FORBIDDEN,
            Some(vname),
            "You may not list certificates in this vault.",
        );
    }
    let now = r.state.clock.now();
    let after = r.q("after").filter(|s| !s.is_empty()).map(str::to_owned);
    let rows = match r
        .state
        .store
        .ui_list_certificates(UiCertQuery {
            vault_id: vid,
            deleted: true,
            search: None,
            state: UiState::All,
            now,
            soon: SOON,
            sort: UiSort::Name,
            descending: false,
            after: after.clone(),
            after_exp: None,
            limit: PAGE + 1,
        })
        .await
    {
        Ok(rows) => rows,
        Err(e) => {
            return r.error(
                StatusCode::INTERNAL_SERVER_ERROR,
                Some(vname),
                &e.to_string(),
            );
        }
    };
    if !r.audit(vname, "certificates.list-deleted", None, 200).await {
        return r.error(
            StatusCode::INTERNAL_SERVER_ERROR,
            Some(vname),
            "The request could not be recorded in the audit trail.",
        );
    }
    let can_recover = r.can(vid, C, "recover");
    let can_purge = r.can(vid, C, "purge");
    let csrf = csrf_input(r.csrf());
    let mut h = flash(r);
    if rows.is_empty() {
        h.push_str(&notice("info", "No deleted certificates."));
    } else {
        h.push_str(r#"<div class="table-wrap"><table><thead><tr><th scope="col">Name</th><th scope="col">Deleted</th><th scope="col">Purged on</th><th scope="col">Actions</th></tr></thead><tbody>"#);
        for (c, _) in rows.iter().take(PAGE) {
            let p = format!("/ui/v/{}/deleted/{}", url(vname), url(&c.name));
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td><div class=\"actions\">",
                esc(&c.name),
                time_opt(c.deleted_at),
                time_opt(c.purge_at)
            );
            if can_recover {
                let _ = write!(
                    h,
                    r#"<form method="post" action="{p}/recover">{csrf}<button type="submit" class="secondary">Recover</button></form>"#
                );
            }
            if can_purge {
                let _ = write!(
                    h,
                    r#"<form method="post" action="{p}/purge" data-confirm="Purge {n} for ever? This cannot be undone.">{csrf}<span class="field inline"><input type="checkbox" id="confirm-{id}" name="confirm" value="1" required><label for="confirm-{id}">I understand this cannot be undone</label></span><button type="submit" class="danger">Purge</button></form>"#,
                    n = esc(&c.name),
                    id = c.id
                );
            }
            h.push_str("</div></td></tr>");
        }
        h.push_str("</tbody></table></div>");
    }
    if rows.len() > PAGE
        && let Some((last, _)) = rows.get(PAGE - 1)
    {
        let _ = write!(
            h,
            r#"<nav class="pager" aria-label="Pages"><a href="/ui/v/{}/deleted?after={}" rel="next">Next page</a></nav>"#,
            url(vname),
            url(&last.name.to_ascii_lowercase())
        );
    }
    r.page(
        Some(vname),
        "deleted",
        &format!("Deleted certificates · {vname}"),
        &h,
    )
}

async fn deleted_action(r: &Req<'_>, v: &VaultCtx, name: &str, action: &str) -> Response<Body> {
    let vname = &v.vault.name;
    if ObjectName::parse(name).is_err() {
        return r.error(
            StatusCode::NOT_FOUND,
            Some(vname),
            "There is no such certificate.",
        );
    }
    let (method, api_path) = match action {
        "recover" => (Method::POST, format!("/deletedcertificates/{name}/recover")),
        "purge" => {
            if !r.checked("confirm") {
                return r.error(
                    StatusCode::BAD_REQUEST,
                    Some(vname),
                    "Tick the confirmation box to purge. Nothing was changed.",
                );
            }
            (Method::DELETE, format!("/deletedcertificates/{name}"))
        }
        _ => {
            return r.error(
                StatusCode::NOT_FOUND,
                Some(vname),
                "There is no such action.",
            );
        }
    };
    let reply = r.kv(vname, method, &api_path, "", None).await;
    if !reply.ok() {
        return r.error(
            reply.status,
            Some(vname),
            &format!("{} Nothing was changed.", reply.message()),
        );
    }
    if action == "recover" {
        redirect(&format!("{}?done=recovered", cert_path(vname, name)))
    } else {
        redirect(&format!("/ui/v/{}/deleted?done=purged", url(vname)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_validation() {
        let mut f = NewCert {
            name: "web".into(),
            domain: "www.example.com".into(),
            alt: "*.example.com, api.example.com".into(),
            ..NewCert::default()
        };
        let (errs, body) = validate_new(&f, false);
        assert!(errs.is_empty(), "{errs:?}");
        let body = body.unwrap_or_default();
        assert_eq!(
            body["policy"]["x509_props"]["subject"],
            "CN=www.example.com"
        );
        assert_eq!(
            body["policy"]["x509_props"]["sans"]["dns_names"],
            json!(["www.example.com", "*.example.com", "api.example.com"])
        );
        assert_eq!(body["policy"]["key_props"]["key_size"], 2048);
        f.name = "bad name".into();
        f.domain = "exa mple".into();
        f.validity = "0".into();
        f.key = "RSA-HSM-2048".into();
        f.trigger_value = "100".into();
        let (errs, body) = validate_new(&f, false);
        assert!(body.is_none());
        let fields: Vec<&str> = errs.iter().map(|(f, _)| *f).collect();
        assert_eq!(
            fields,
            ["name", "domain", "key", "validity", "trigger_value"]
        );
        assert!(valid_domain("*.a.b", false).is_err());
        assert!(valid_domain("-a.b", true).is_err());
        assert!(valid_domain("a..b", true).is_err());
        assert_eq!(parse_tags("a=1\n b = 2 ").unwrap_or_default().len(), 2);
        assert!(parse_tags("novalue").is_err());
        assert_eq!(
            window_end("waiting (create them; checked until 1970-01-01T00:01:00Z): a TXT \"b\"."),
            Some(60)
        );
        assert_eq!(window_end("creating the order"), None);
    }
}
