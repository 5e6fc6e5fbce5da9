//! HTML building blocks of the console: escaping, the page layout, times, forms. Pages are
//! plain Rust functions writing escaped strings (compiled in, no template files read at run
//! time); every value that came from a user or the store goes through [`esc`].

use std::fmt::Write as _;

/// Escapes text for HTML element content and double-quoted attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for ch in s.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Percent-encodes a path segment or query value.
pub fn url(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// RFC 3339 UTC text of Unix seconds.
pub fn utc(secs: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| secs.to_string())
}

/// A time: UTC in the markup and `title`, rewritten to the browser's zone by ui.js.
pub fn time_el(secs: i64) -> String {
    let u = esc(&utc(secs));
    format!(r#"<time datetime="{u}" title="{u}" data-local>{u}</time>"#)
}

/// An optional time, or a dash.
pub fn time_opt(secs: Option<i64>) -> String {
    secs.map_or_else(|| "—".to_owned(), time_el)
}

/// The static assets and their cache-busting versions.
pub struct Assets;

impl Assets {
    /// The stylesheet.
    pub const CSS: &'static str = include_str!("static/ui.css");
    /// The script.
    pub const JS: &'static str = include_str!("static/ui.js");

    /// A short content hash for the asset URL (long cache lifetimes stay correct on upgrade).
    pub fn tag(body: &str) -> String {
        hex::encode(certvault_crypto::sha256(body.as_bytes()))
            .get(..12)
            .unwrap_or("0")
            .to_owned()
    }
}

/// What the layout needs to know about the signed-in user.
pub struct Chrome<'a> {
    /// The principal, or None on the sign-in page.
    pub principal: Option<&'a str>,
    /// Whether the principal is an administrator.
    pub admin: bool,
    /// The CSRF token for the sign-out form.
    pub csrf: &'a str,
    /// Vaults to pick from, and the current one.
    pub vaults: &'a [String],
    /// The current vault.
    pub vault: Option<&'a str>,
    /// The current navigation entry.
    pub nav: &'a str,
    /// Links to the manage pages (import, issuers, …) the principal may use: (key, label).
    pub manage: &'a [(&'static str, &'static str)],
}

/// A complete page.
pub fn page(title: &str, chrome: &Chrome<'_>, main: &str) -> String {
    let css = Assets::tag(Assets::CSS);
    let js = Assets::tag(Assets::JS);
    let mut h = String::with_capacity(main.len() + 4096);
    let _ = write!(
        h,
        r##"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{t} · certvault</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="/ui/static/ui.css?v={css}">
<script src="/ui/static/ui.js?v={js}" defer></script>
</head>
<body>
<a class="skip" href="#main">Skip to content</a>
<header class="top">
<a class="brand" href="/ui/">certvault</a>
"##,
        t = esc(title)
    );
    if let Some(p) = chrome.principal {
        if !chrome.vaults.is_empty() {
            h.push_str(
                r#"<form class="picker" method="get" action="/ui/go"><label for="vault-picker">Vault</label> <select id="vault-picker" name="vault" data-autosubmit>"#,
            );
            for v in chrome.vaults {
                let sel = if Some(v.as_str()) == chrome.vault {
                    " selected"
                } else {
                    ""
                };
                let _ = write!(h, r#"<option value="{0}"{sel}>{0}</option>"#, esc(v));
            }
            h.push_str(r#"</select> <button type="submit" class="secondary">Open</button></form>"#);
        }
        h.push_str(r#"<nav aria-label="Main"><ul>"#);
        if let Some(v) = chrome.vault {
            let v = url(v);
            for (key, label, href) in [
                ("dashboard", "Dashboard", format!("/ui/v/{v}/dashboard")),
                (
                    "certificates",
                    "Certificates",
                    format!("/ui/v/{v}/certificates"),
                ),
                ("new", "Create", format!("/ui/v/{v}/certificates/new")),
                ("deleted", "Deleted", format!("/ui/v/{v}/deleted")),
            ] {
                let cur = if key == chrome.nav {
                    r#" aria-current="page""#
                } else {
                    ""
                };
                let _ = write!(h, r#"<li><a href="{href}"{cur}>{label}</a></li>"#);
            }
            // Manage pages (ui::manage), only those the principal may use.
            for (key, label) in chrome.manage {
                let cur = if *key == chrome.nav {
                    r#" aria-current="page""#
                } else {
                    ""
                };
                let _ = write!(h, r#"<li><a href="/ui/v/{v}/{key}"{cur}>{label}</a></li>"#);
            }
        }
        // --- admin/dashboard pages (ui3) ---
        if chrome.admin {
            let mut links: Vec<(&str, &str, String)> = Vec::new();
            if let Some(v) = chrome.vault {
                links.push(("audit", "Audit log", format!("/ui/v/{}/audit", url(v))));
            }
            links.push(("admin", "Admin", "/ui/admin".to_owned()));
            for (key, label, href) in links {
                let cur = if key == chrome.nav {
                    r#" aria-current="page""#
                } else {
                    ""
                };
                let _ = write!(h, r#"<li><a href="{href}"{cur}>{label}</a></li>"#);
            }
        }
        // --- end admin/dashboard pages (ui3) ---
        h.push_str("</ul></nav>");
        let _ = write!(
            h,
            r#"<form class="signout" method="post" action="/ui/logout"><input type="hidden" name="csrf" value="{c}"><span class="who">{p}{a}</span> <button type="submit" class="secondary">Sign out</button></form>"#,
            c = esc(chrome.csrf),
            p = esc(p),
            a = if chrome.admin { " (admin)" } else { "" },
        );
    }
    let _ = write!(
        h,
        "</header>\n<main id=\"main\" tabindex=\"-1\">\n<h1>{}</h1>\n{main}\n</main>\n</body>\n</html>\n",
        esc(title)
    );
    h
}

/// A hidden CSRF input.
pub fn csrf_input(csrf: &str) -> String {
    format!(r#"<input type="hidden" name="csrf" value="{}">"#, esc(csrf))
}

/// A message box (`kind`: ok, error, info).
pub fn notice(kind: &str, text: &str) -> String {
    let role = if kind == "error" { "alert" } else { "status" };
    format!(
        r#"<p class="notice {kind}" role="{role}">{}</p>"#,
        esc(text)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes() {
        assert_eq!(
            esc(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
        assert_eq!(url("a b/c"), "a%20b%2Fc");
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
    }
}
