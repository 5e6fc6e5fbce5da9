//! Web console issue: the server-rendered certificate list with 100,000 certificates in the
//! vault must render in under 100 ms. The store is seeded directly (as `scale` does), the real
//! release server serves it, and one keep-alive connection signed in to the console requests
//! each page in alternating rounds with `/healthz` (the baseline). Times are measured around
//! each whole request on the client (TLS, HTTP, handler, audit record), so the handler's own time
//! is at most the figure printed. Search pages: one match, ≤ 100 matches (trigram index, then
//! a sort of the matches), every certificate matching (the order index is walked), no match;
//! the expiry order: first, middle (keyset cursor) and last pages.

use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use http::{HeaderValue, Method, StatusCode, header};

use crate::seed::{self, Kty, Plan};
use crate::server::Server;
use crate::{Common, check};

/// Arguments of `ui`.
#[derive(clap::Args, Debug)]
pub struct UiArgs {
    /// Certificates in the vault.
    #[arg(long, default_value_t = 100_000)]
    pub certs: usize,
    /// Measured requests per page.
    #[arg(long, default_value_t = 200)]
    pub requests: usize,
    /// Key type of the seeded certificates.
    #[arg(long, value_enum, default_value_t = Kty::Ec)]
    pub kty: Kty,
    /// Distinct key pairs reused by the seeded certificates.
    #[arg(long, default_value_t = 16)]
    pub key_pool: usize,
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Runs the benchmark.
pub async fn ui(common: &Common, a: &UiArgs) -> Result<bool> {
    println!(
        "== ui: certificate list page with {} certificates ({}), {} requests per page, baseline GET /healthz",
        a.certs,
        a.kty.label(),
        a.requests
    );
    let dir = common.tempdir("certvault-bench-ui-")?;
    let data = dir.path().join("data");
    let t = Instant::now();
    seed::seed(
        &data,
        a.kty,
        &[Plan {
            certs: 0..a.certs,
            versions: 1,
        }],
        a.key_pool,
    )
    .await
    .context("seeding")?;
    println!("  seeded in {:.1}s", t.elapsed().as_secs_f64());
    let mut server =
        Server::start(&common.server_bin, &data, &dir.path().join("server.log")).await?;
    let mut conn = server.target.connect().await?;
    let token = std::fs::read_to_string(data.join("admin.token"))?;
    let form = format!("token={}", token.trim());
    let (status, headers, _) = conn
        .request_plain(
            Method::POST,
            "/ui/login",
            Some((Bytes::from(form), "application/x-www-form-urlencoded")),
            &[],
        )
        .await?;
    if status != StatusCode::SEE_OTHER {
        bail!("console sign-in answered {status}");
    }
    let cookie = headers
        .get(header::SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .ok_or_else(|| anyhow!("no session cookie"))?
        .to_owned();
    let mut cookie = HeaderValue::from_str(&cookie)?;
    cookie.set_sensitive(true);
    let hdrs = [(header::COOKIE, cookie)];
    let mid = seed::cert_name(a.certs / 2).to_ascii_lowercase();
    // The keyset cursor of the expiry order comes from the first page's "Next page" link.
    let (s, _, body) = conn
        .request_plain(
            Method::GET,
            "/ui/v/default/certificates?sort=expiry",
            None,
            &hdrs,
        )
        .await?;
    if s != StatusCode::OK {
        bail!("list by expiry answered {s}");
    }
    let text = String::from_utf8_lossy(&body);
    let after_exp = text
        .split("after_exp=")
        .nth(1)
        .map(|t| {
            t.chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
        })
        .filter(|t| !t.is_empty())
        .ok_or_else(|| anyhow!("the list by expiry has no next-page link"))?;
    let one = seed::cert_name(a.certs.saturating_sub(1) / 3).to_ascii_lowercase();
    let hundred = seed::cert_name(a.certs.saturating_sub(1))
        .get(..6)
        .unwrap_or("c00999")
        .to_owned();
    let pages: Vec<(&str, String)> = vec![
        ("GET /healthz (baseline)", "/healthz".into()),
        ("list, first page", "/ui/v/default/certificates".into()),
        (
            "list, page in the middle",
            format!("/ui/v/default/certificates?after={mid}"),
        ),
        ("list, Z-A", "/ui/v/default/certificates?sort=-name".into()),
        (
            "search, 1 match",
            format!("/ui/v/default/certificates?q={one}"),
        ),
        (
            "search, ≤100 matches",
            format!("/ui/v/default/certificates?q={hundred}"),
        ),
        (
            "search, every cert matches",
            "/ui/v/default/certificates?q=certvault-bench".into(),
        ),
        (
            "search, no match",
            "/ui/v/default/certificates?q=no-such-domain.example".into(),
        ),
        (
            "list, by expiry",
            "/ui/v/default/certificates?sort=expiry".into(),
        ),
        (
            "list, by expiry, middle",
            format!("/ui/v/default/certificates?sort=expiry&after={mid}&after_exp={after_exp}"),
        ),
        (
            "list, by expiry, latest",
            "/ui/v/default/certificates?sort=-expiry".into(),
        ),
        (
            "list, state=valid",
            "/ui/v/default/certificates?state=valid".into(),
        ),
        (
            "certificate detail",
            format!("/ui/v/default/certificates/{}", seed::cert_name(42)),
        ),
    ];
    // check every page renders, and warm up
    for (label, path) in &pages {
        for _ in 0..20 {
            let (s, _, body) = conn.request_plain(Method::GET, path, None, &hdrs).await?;
            if s != StatusCode::OK {
                bail!("{label}: {path} answered {s}");
            }
            let text = String::from_utf8_lossy(&body);
            let rows = text.matches("<tr>").count().saturating_sub(1);
            let want = if path.contains("no-such-domain") {
                0..=0
            } else if path.contains(&format!("q={one}")) {
                1..=1
            } else if !path.contains("certificates/") && path.contains("certificates") {
                2..=50
            } else {
                0..=usize::MAX
            };
            if !want.contains(&rows) {
                bail!("{label}: the page lists {rows} certificates, expected {want:?}");
            }
        }
    }
    let mut times: Vec<Vec<f64>> = vec![Vec::with_capacity(a.requests); pages.len()];
    for _ in 0..a.requests {
        for (i, (_, path)) in pages.iter().enumerate() {
            let t = Instant::now();
            let (s, _, _) = conn.request_plain(Method::GET, path, None, &hdrs).await?;
            let ms = t.elapsed().as_secs_f64() * 1000.0;
            if s != StatusCode::OK {
                bail!("{path} answered {s}");
            }
            times[i].push(ms);
        }
    }
    for t in &mut times {
        t.sort_by(f64::total_cmp);
    }
    let base50 = pct(&times[0], 0.5).max(1e-6);
    println!(
        "  {:<28} {:>9} {:>9} {:>12} {:>12}",
        "page", "p50 ms", "p99 ms", "p50/healthz", "p99/healthz"
    );
    let base99 = pct(&times[0], 0.99).max(1e-6);
    for (i, (label, _)) in pages.iter().enumerate() {
        println!(
            "  {:<28} {:>9.2} {:>9.2} {:>11.1}x {:>11.1}x",
            label,
            pct(&times[i], 0.5),
            pct(&times[i], 0.99),
            pct(&times[i], 0.5) / base50,
            pct(&times[i], 0.99) / base99
        );
    }
    let first99 = pct(&times[1], 0.99);
    let mut ok = check(
        "certificate list page (first page) p99 < 100 ms",
        first99 < 100.0,
        &format!("{first99:.2} ms with {} certificates", a.certs),
    );
    for (i, (label, _)) in pages.iter().enumerate() {
        if label.starts_with("search") || label.contains("expiry") {
            let p99 = pct(&times[i], 0.99);
            ok &= check(
                &format!("{label}: p99 < 100 ms"),
                p99 < 100.0,
                &format!("{p99:.2} ms with {} certificates", a.certs),
            );
        }
    }
    server.stop();
    Ok(ok)
}
