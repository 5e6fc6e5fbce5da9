//! The audit log page of a vault (`/ui/v/{vault}/audit`): the admin API's audit query
//! (`GET /admin/v1/audit`, run in-process as the signed-in principal, so only administrators
//! see records and the read is itself audited as `admin.audit.list`), filtered by time range,
//! principal, operation, object and result, paged by the record sequence number.

use std::fmt::Write as _;

use http::{Method, Response, StatusCode};
use serde_json::Value;

use super::Req;
use super::html::{esc, notice, time_el, url};
use crate::http::Body;

/// Rows per page.
const PAGE: usize = 50;
/// Records read per admin API call.
const BATCH: usize = 500;
/// API calls per page at most when the result filter discards records.
const MAX_CALLS: usize = 4;

/// A `datetime-local` value (UTC on this page) or RFC 3339 / Unix seconds, as the API reads it.
fn api_time(v: &str) -> String {
    let v = v.trim();
    let b = v.as_bytes();
    // 2026-01-31T12:00 or 2026-01-31T12:00:30 → append seconds / zone.
    if b.len() == 16 && b.get(10) == Some(&b'T') {
        return format!("{v}:00Z");
    }
    if b.len() == 19 && b.get(10) == Some(&b'T') {
        return format!("{v}Z");
    }
    v.to_owned()
}

/// `GET /ui/v/{vault}/audit`.
pub(crate) async fn page(r: &Req<'_>, vault: &str) -> Response<Body> {
    let Some(v) = r.vault(vault).await else {
        return r.error(
            StatusCode::FORBIDDEN,
            None,
            "You have no access to this vault, or it does not exist.",
        );
    };
    let vname = v.vault.name.clone();
    let field = |k: &str| r.q(k).map(str::trim).unwrap_or("").to_owned();
    let (from, to, principal, operation, object, result) = (
        field("from"),
        field("to"),
        field("principal"),
        field("operation"),
        field("object"),
        field("result"),
    );
    let result = match result.as_str() {
        "ok" | "denied" | "error" => result,
        _ => String::new(),
    };
    let mut after: i64 = r.q("after").and_then(|a| a.parse().ok()).unwrap_or(0);
    let mut base_q = format!("vault={}", url(&vname));
    for (k, val) in [
        ("principal", &principal),
        ("operation", &operation),
        ("object", &object),
    ] {
        if !val.is_empty() {
            let _ = write!(base_q, "&{k}={}", url(val));
        }
    }
    for (k, val) in [("from", &from), ("to", &to)] {
        if !val.is_empty() {
            let _ = write!(base_q, "&{k}={}", url(&api_time(val)));
        }
    }
    let mut rows: Vec<Value> = Vec::new();
    let mut next: Option<i64> = None;
    let mut error: Option<(StatusCode, String)> = None;
    for _ in 0..MAX_CALLS {
        let limit = if result.is_empty() { PAGE } else { BATCH };
        let reply = r
            .admin(
                Method::GET,
                "/admin/v1/audit",
                &format!("{base_q}&after={after}&limit={limit}"),
                None,
            )
            .await;
        if !reply.ok() {
            error = Some((reply.status, reply.message()));
            break;
        }
        let records = reply.json["records"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        next = reply.json["next"].as_i64();
        let mut full = false;
        for rec in records {
            if !result.is_empty() && rec["outcome"].as_str() != Some(result.as_str()) {
                continue;
            }
            rows.push(rec);
            if rows.len() == PAGE {
                full = true;
                break;
            }
        }
        if full {
            next = rows.last().and_then(|x| x["seq"].as_i64());
            break;
        }
        match next {
            Some(n) => after = n,
            None => break,
        }
    }
    if let Some((StatusCode::FORBIDDEN, _)) = &error {
        return r.error(
            StatusCode::FORBIDDEN,
            Some(&vname),
            "Only administrators may read the audit log.",
        );
    }
    let mut h = String::with_capacity(32 * 1024);
    if let Some((_, message)) = &error {
        h.push_str(&notice("error", message));
    }
    let base = format!("/ui/v/{}/audit", url(&vname));
    let _ = write!(
        h,
        r#"<form class="filters" method="get" action="{base}" role="search">
<div class="field"><label for="from">From (UTC)</label><input type="datetime-local" id="from" name="from" value="{from}"></div>
<div class="field"><label for="to">To (UTC)</label><input type="datetime-local" id="to" name="to" value="{to}"></div>
<div class="field"><label for="principal">Principal</label><input id="principal" name="principal" value="{principal}"></div>
<div class="field"><label for="operation">Operation</label><input id="operation" name="operation" value="{operation}" placeholder="e.g. certificates.create" list="operations"></div>
<div class="field"><label for="object">Object</label><input id="object" name="object" value="{object}" placeholder="e.g. certificates/web"></div>
<div class="field"><label for="result">Result</label><select id="result" name="result">"#,
        from = esc(&from),
        to = esc(&to),
        principal = esc(&principal),
        operation = esc(&operation),
        object = esc(&object),
    );
    for (val, label) in [
        ("", "Any"),
        ("ok", "OK"),
        ("denied", "Denied"),
        ("error", "Error"),
    ] {
        let sel = if val == result { " selected" } else { "" };
        let _ = write!(h, r#"<option value="{val}"{sel}>{label}</option>"#);
    }
    h.push_str(r#"</select></div><div><button type="submit">Apply</button></div></form>"#);
    h.push_str(r#"<datalist id="operations">"#);
    for op in [
        "certificates.create",
        "certificates.get",
        "certificates.list",
        "certificates.update",
        "certificates.delete",
        "certificates.renew",
        "certificates.import",
        "secrets.get",
        "ui.login",
        "ui.dashboard",
        "admin.audit.list",
        "admin.principals.create",
        "admin.access-policies.set",
    ] {
        let _ = write!(h, r#"<option value="{op}">"#);
    }
    h.push_str("</datalist>");
    if rows.is_empty() && error.is_none() {
        h.push_str(&notice("info", "No audit records match."));
    } else if !rows.is_empty() {
        h.push_str(
            r#"<div class="table-wrap"><table data-testid="audit"><thead><tr><th scope="col">#</th><th scope="col">Time</th><th scope="col">Principal</th><th scope="col">Operation</th><th scope="col">Object</th><th scope="col">Result</th><th scope="col" class="opt">Source</th></tr></thead><tbody>"#,
        );
        for rec in &rows {
            let s = |k: &str| rec[k].as_str().unwrap_or("").to_owned();
            let outcome = s("outcome");
            let cls = match outcome.as_str() {
                "ok" => "valid",
                "denied" => "expiring",
                _ => "expired",
            };
            let status = rec["status"]
                .as_i64()
                .map(|c| format!(" {c}"))
                .unwrap_or_default();
            let secs = rec["time_ms"].as_i64().unwrap_or(0).div_euclid(1000);
            let _ = write!(
                h,
                r#"<tr><td>{seq}</td><td>{time}</td><td>{principal}</td><td class="op">{op}</td><td>{object}</td><td><span class="state {cls}">{outcome}{status}</span></td><td class="opt">{source}</td></tr>"#,
                seq = rec["seq"].as_i64().unwrap_or(0),
                time = time_el(secs),
                principal = esc(&s("principal")),
                op = esc(&s("operation")),
                object = esc(&s("object")),
                outcome = esc(&outcome),
                source = esc(&s("source")),
            );
        }
        h.push_str("</tbody></table></div>");
    }
    let keep = format!(
        "from={}&to={}&principal={}&operation={}&object={}&result={}",
        url(&from),
        url(&to),
        url(&principal),
        url(&operation),
        url(&object),
        url(&result)
    );
    h.push_str(r#"<nav class="pager" aria-label="Pages">"#);
    if r.q("after").is_some() {
        let _ = write!(h, r#"<a href="{base}?{keep}">First page</a>"#);
    }
    if let Some(n) = next {
        let _ = write!(
            h,
            r#"<a href="{base}?{keep}&after={n}" rel="next">Next page</a>"#
        );
    }
    h.push_str("</nav>");
    r.page(Some(&vname), "audit", &format!("Audit log · {vname}"), &h)
}
