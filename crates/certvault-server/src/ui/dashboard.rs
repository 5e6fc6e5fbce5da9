//! The dashboard of a vault: counts by state, the expiry timeline of the next 90 days with the
//! next certificates to expire, recent failed orders and renewals, and (for administrators, as
//! in the admin API) the health of each notification channel.

use std::fmt::Write as _;

use certvault_core::access::ObjectType::Certificates as C;
use certvault_store::{UiCertQuery, UiSort, UiState};
use http::{Response, StatusCode};

use super::Req;
use super::certs::{SOON, state_of};
use super::html::{esc, notice, time_el, time_opt, url};
use crate::http::Body;
use crate::state::VaultCtx;

/// The timeline's width in days and its bar width.
const TIMELINE_DAYS: i64 = 90;
const BUCKET_DAYS: i64 = 7;
/// Room above the bars for their counts.
const TOP: i64 = 16;
/// The next expiries listed under the timeline.
const NEXT: usize = 10;
/// Failures listed.
const FAILURES: i64 = 10;

fn failed(r: &Req<'_>, vname: &str, e: &impl ToString) -> Response<Body> {
    r.error(
        StatusCode::INTERNAL_SERVER_ERROR,
        Some(vname),
        &e.to_string(),
    )
}

/// An SVG bar chart of expiries per week (no script, no inline style: the CSP allows neither).
fn timeline_svg(hist: &[i64], now: i64) -> String {
    let max = hist.iter().copied().max().unwrap_or(0).max(1);
    let (w, h, bar, gap) = (640i64, 160i64, 40i64, 8i64);
    let n = i64::try_from(hist.len()).unwrap_or(1);
    let width = (bar + gap) * n;
    let mut s = format!(
        r#"<svg class="timeline" viewBox="0 0 {width} {vh}" width="{w}" height="{hh}" role="img" aria-labelledby="timeline-title"><title id="timeline-title">Certificates expiring per week over the next {TIMELINE_DAYS} days</title>"#,
        vh = h + 56,
        hh = h + 56,
    );
    for (i, n) in hist.iter().enumerate() {
        let i = i64::try_from(i).unwrap_or(0);
        let bh = if *n == 0 { 0 } else { (n * h / max).max(2) };
        let x = i * (bar + gap);
        let from = now + i * BUCKET_DAYS * 86400;
        let label = html_date(from);
        let _ = write!(
            s,
            r#"<g><title>{n} expiring in the week from {label}</title><rect class="bar" x="{x}" y="{y}" width="{bar}" height="{bh}"></rect><text x="{tx}" y="{ty}" text-anchor="middle" class="n">{n}</text><text x="{tx}" y="{ly}" text-anchor="middle" class="wk">+{d}d</text></g>"#,
            y = TOP + h - bh,
            tx = x + bar / 2,
            ty = TOP + h - bh - 4,
            ly = TOP + h + 16,
            d = i * BUCKET_DAYS,
        );
    }
    s.push_str("</svg>");
    s
}

fn html_date(secs: i64) -> String {
    super::html::utc(secs).get(..10).unwrap_or("").to_owned()
}

/// `GET /ui/v/{vault}/dashboard`.
pub(crate) async fn page(r: &Req<'_>, v: &VaultCtx) -> Response<Body> {
    let vname = &v.vault.name;
    let vid = v.vault.id;
    if !r.can(vid, C, "list") {
        r.audit(vname, "ui.dashboard", None, 403).await;
        return r.error(
            StatusCode::FORBIDDEN,
            Some(vname),
            "You may not list certificates in this vault.",
        );
    }
    let now = r.state.clock.now();
    let store = &r.state.store;
    let counts = match store.ui_counts(vid, now, SOON).await {
        Ok(c) => c,
        Err(e) => return failed(r, vname, &e),
    };
    let buckets = TIMELINE_DAYS / BUCKET_DAYS + 1;
    let hist = match store
        .ui_expiry_histogram(vid, now, BUCKET_DAYS * 86400, buckets)
        .await
    {
        Ok(h) => h,
        Err(e) => return failed(r, vname, &e),
    };
    let next = match store
        .ui_list_certificates(UiCertQuery {
            vault_id: vid,
            deleted: false,
            search: None,
            state: UiState::All,
            now,
            soon: SOON,
            sort: UiSort::Expiry,
            descending: false,
            after: Some(String::new()),
            after_exp: Some(now),
            limit: NEXT,
        })
        .await
    {
        Ok(rows) => rows,
        Err(e) => return failed(r, vname, &e),
    };
    let failures = match store.ui_failures(vid, FAILURES).await {
        Ok(f) => f,
        Err(e) => return failed(r, vname, &e),
    };
    let admin = r.caller().admin;
    let channels = if admin {
        match store.ui_channel_health(vid).await {
            Ok(c) => Some(c),
            Err(e) => return failed(r, vname, &e),
        }
    } else {
        None
    };
    if !r.audit(vname, "ui.dashboard", None, 200).await {
        return r.error(
            StatusCode::INTERNAL_SERVER_ERROR,
            Some(vname),
            "The request could not be recorded in the audit trail.",
        );
    }
    let base = format!("/ui/v/{}/certificates", url(vname));
    let mut h = String::with_capacity(16 * 1024);
    h.push_str(
        r#"<section aria-labelledby="counts"><h2 id="counts">Certificates by state</h2><div class="cards">"#,
    );
    for (label, n, filter) in [
        ("Total", counts[0], "all"),
        ("Valid", counts[1], "valid"),
        ("Expiring ≤ 30 d", counts[2], "expiring"),
        ("Expired", counts[3], "expired"),
        ("Pending", counts[4], "pending"),
        ("Disabled", counts[5], "disabled"),
    ] {
        let _ = write!(
            h,
            r#"<a class="card" href="{base}?state={filter}" data-testid="count-{filter}"><div class="n">{n}</div><div>{label}</div></a>"#
        );
    }
    h.push_str("</div></section>");

    // Timeline.
    let total: i64 = hist.iter().sum();
    let _ = write!(
        h,
        r#"<section aria-labelledby="expiries"><h2 id="expiries">Expiring in the next {TIMELINE_DAYS} days <span class="hint" data-testid="expiring-90">({total})</span></h2>"#
    );
    h.push_str(r#"<div class="table-wrap">"#);
    h.push_str(&timeline_svg(&hist, now));
    h.push_str("</div>");
    let soon_rows: Vec<_> = next
        .iter()
        .filter(|(_, ver)| ver.exp.is_some_and(|e| e <= now + TIMELINE_DAYS * 86400))
        .collect();
    if soon_rows.is_empty() {
        h.push_str(&notice(
            "info",
            "No certificate expires in the next 90 days.",
        ));
    } else {
        h.push_str(
            r#"<div class="table-wrap"><table><caption>Next to expire</caption><thead><tr><th scope="col">Name</th><th scope="col">State</th><th scope="col">Expires</th></tr></thead><tbody>"#,
        );
        for (c, ver) in soon_rows {
            let (cls, label) = state_of(ver, now);
            let left = ver
                .exp
                .map(|e| format!("{} d left", (e - now) / 86400))
                .unwrap_or_default();
            let _ = write!(
                h,
                r#"<tr><td><a href="{base}/{href}">{name}</a></td><td><span class="state {cls}">{label}</span></td><td>{exp} <span class="hint">{left}</span></td></tr>"#,
                href = url(&c.name),
                name = esc(&c.name),
                exp = time_opt(ver.exp),
            );
        }
        let _ = write!(
            h,
            r#"</tbody></table></div><p><a href="{base}?sort=expiry">All certificates by expiry</a></p>"#
        );
    }
    h.push_str("</section>");

    // Failures.
    h.push_str(r#"<section aria-labelledby="failures"><h2 id="failures">Recent failures</h2>"#);
    if failures.is_empty() {
        h.push_str(&notice("info", "No failed orders or renewals."));
    } else {
        h.push_str(
            r#"<div class="table-wrap"><table data-testid="failures"><thead><tr><th scope="col">When</th><th scope="col">Certificate</th><th scope="col">What</th><th scope="col">Reason</th></tr></thead><tbody>"#,
        );
        for e in &failures {
            let what = match e.kind.as_str() {
                "order_failed" => "Order failed",
                "renewal_failed" => "Renewal failed",
                other => other,
            };
            let reason = e.body["reason"]
                .as_str()
                .or_else(|| e.body["error"].as_str())
                .unwrap_or("");
            let cert = e.cert_name.as_deref().map_or_else(String::new, |n| {
                format!(r#"<a href="{base}/{}">{}</a>"#, url(n), esc(n))
            });
            let _ = write!(
                h,
                r#"<tr><td>{when}</td><td>{cert}</td><td>{what}</td><td>{reason}</td></tr>"#,
                when = time_el(e.created),
                what = esc(what),
                reason = esc(&certvault_core::names::truncate(reason, 400)),
            );
        }
        h.push_str("</tbody></table></div>");
    }
    h.push_str("</section>");

    // Channels (administrators: channels are administered through the admin API).
    if let Some(channels) = channels {
        h.push_str(
            r#"<section aria-labelledby="channels"><h2 id="channels">Notification channels</h2>"#,
        );
        if channels.is_empty() {
            h.push_str(&notice("info", "No notification channels in this vault."));
        } else {
            h.push_str(
                r#"<div class="table-wrap"><table data-testid="channels"><thead><tr><th scope="col">Channel</th><th scope="col">Last delivery</th><th scope="col">When</th><th scope="col">Waiting</th><th scope="col">Dead letters</th></tr></thead><tbody>"#,
            );
            for ch in &channels {
                let (cls, label) = match ch.last_status.as_deref() {
                    _ if !ch.enabled => ("disabled", "Disabled".to_owned()),
                    None => ("pending", "Nothing sent yet".to_owned()),
                    Some("delivered") => ("valid", "OK".to_owned()),
                    Some("dead") => ("expired", "Failed (dead letter)".to_owned()),
                    Some(_) => ("expiring", "Failing, retrying".to_owned()),
                };
                let detail = match (&ch.last_code, &ch.last_error) {
                    (_, Some(e)) if ch.last_status.as_deref() != Some("delivered") => {
                        format!(
                            r#"<br><span class="hint">{}</span>"#,
                            esc(&certvault_core::names::truncate(e, 200))
                        )
                    }
                    (Some(c), _) => format!(r#" <span class="hint">HTTP {c}</span>"#),
                    _ => String::new(),
                };
                let _ = write!(
                    h,
                    r#"<tr><td>{name} <span class="hint">{kind}</span></td><td><span class="state {cls}">{label}</span>{detail}</td><td>{when}</td><td>{pending}</td><td>{dead}</td></tr>"#,
                    name = esc(&ch.name),
                    kind = esc(&ch.kind),
                    when = time_opt(ch.last_at),
                    pending = ch.pending,
                    dead = ch.dead,
                );
            }
            h.push_str("</tbody></table></div>");
        }
        h.push_str("</section>");
    }
    r.page(
        Some(vname),
        "dashboard",
        &format!("Dashboard · {vname}"),
        &h,
    )
}
