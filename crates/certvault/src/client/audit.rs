//! `certvault audit list|export|verify`: the audit trail through the admin API.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;

use super::{Client, Conn, print_table};

/// Audit trail commands (admin).
#[derive(clap::Subcommand, Debug)]
pub(crate) enum AuditCommand {
    /// List audit records, oldest first (a table, or --json).
    List {
        #[command(flatten)]
        conn: Conn,
        #[command(flatten)]
        filter: Filter,
        /// How many records to show at most.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Start after this record (seq), e.g. the `next` a previous listing printed.
        #[arg(long)]
        after: Option<i64>,
    },
    /// Export the matching records as JSON lines (one record per line).
    Export {
        #[command(flatten)]
        conn: Conn,
        #[command(flatten)]
        filter: Filter,
        /// Output file (default: standard output).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Check the hash chain of the whole trail; exits with 1 naming the first bad record.
    Verify {
        #[command(flatten)]
        conn: Conn,
    },
}

/// Which records.
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct Filter {
    /// From this time on: RFC 3339 (2026-01-31T12:00:00Z), Unix seconds, or an age such as
    /// 30m, 12h, 7d.
    #[arg(long)]
    from: Option<String>,
    /// Before this time (same forms as --from).
    #[arg(long)]
    to: Option<String>,
    /// Only this principal.
    #[arg(long)]
    principal: Option<String>,
    /// Only this vault.
    #[arg(long)]
    vault: Option<String>,
    /// Only this object and what is under it (e.g. certificates/web).
    #[arg(long)]
    object: Option<String>,
    /// Only this operation (e.g. secrets.get, keys.sign, admin.principals.create).
    #[arg(long)]
    operation: Option<String>,
}

/// `30m`, `12h`, `7d`, `90s` → that long ago as RFC 3339; anything else as it is.
fn time_arg(s: &str) -> Result<String> {
    let s = s.trim();
    let unit = s.chars().last().unwrap_or(' ');
    let mult = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        _ => return Ok(s.to_owned()),
    };
    let Ok(n) = s[..s.len() - 1].parse::<i64>() else {
        return Ok(s.to_owned());
    };
    let t = time::OffsetDateTime::now_utc() - time::Duration::seconds(n.saturating_mul(mult));
    t.format(&time::format_description::well_known::Rfc3339)
        .context("formatting the time")
}

impl Filter {
    fn pairs(&self) -> Result<Vec<(&'static str, String)>> {
        let mut out = Vec::new();
        if let Some(f) = &self.from {
            out.push(("from", time_arg(f)?));
        }
        if let Some(t) = &self.to {
            out.push(("to", time_arg(t)?));
        }
        for (k, v) in [
            ("principal", &self.principal),
            ("vault", &self.vault),
            ("object", &self.object),
            ("operation", &self.operation),
        ] {
            if let Some(v) = v {
                out.push((k, v.clone()));
            }
        }
        Ok(out)
    }
}

fn admin_url(c: &Client, path: &str, pairs: &[(&str, String)]) -> Result<reqwest::Url> {
    let mut url = reqwest::Url::parse(&format!("{}/admin/v1/{path}", c.base))
        .with_context(|| format!("bad server URL {}", c.base))?;
    if !pairs.is_empty() {
        let mut q = url.query_pairs_mut();
        for (k, v) in pairs {
            q.append_pair(k, v);
        }
    }
    Ok(url)
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

pub(crate) async fn run_audit(cmd: AuditCommand) -> Result<()> {
    match cmd {
        AuditCommand::List {
            conn,
            filter,
            limit,
            after,
        } => {
            let c = Client::new(&conn)?;
            let base = filter.pairs()?;
            let mut records: Vec<Value> = Vec::new();
            let mut cursor = after;
            let mut more = None;
            while records.len() < limit {
                let mut pairs = base.clone();
                pairs.push(("limit", (limit - records.len()).min(1000).to_string()));
                if let Some(a) = cursor {
                    pairs.push(("after", a.to_string()));
                }
                let url = admin_url(&c, "audit", &pairs)?;
                let (_, page) = c.send(reqwest::Method::GET, url.as_str(), None).await?;
                let got = page["records"]
                    .as_array()
                    .ok_or_else(|| anyhow!("unexpected answer: {page}"))?;
                records.extend(got.iter().cloned());
                more = page["next"].as_i64();
                match more {
                    Some(n) if !got.is_empty() => cursor = Some(n),
                    _ => break,
                }
            }
            if conn.json {
                println!("{}", serde_json::to_string_pretty(&records)?);
            } else {
                let rows: Vec<Vec<String>> = records
                    .iter()
                    .map(|r| {
                        vec![
                            cell(&r["seq"]),
                            cell(&r["time"]),
                            cell(&r["principal"]),
                            cell(&r["source"]),
                            cell(&r["operation"]),
                            cell(&r["vault"]),
                            cell(&r["object"]),
                            cell(&r["status"]),
                            cell(&r["outcome"]),
                        ]
                    })
                    .collect();
                print_table(
                    &rows,
                    &[
                        "SEQ",
                        "TIME",
                        "PRINCIPAL",
                        "SOURCE",
                        "OPERATION",
                        "VAULT",
                        "OBJECT",
                        "STATUS",
                        "OUTCOME",
                    ],
                );
            }
            if let Some(n) = more {
                eprintln!("(more records follow: --after {n})");
            }
            Ok(())
        }
        AuditCommand::Export { conn, filter, out } => {
            let c = Client::new(&conn)?;
            let url = admin_url(&c, "audit/export", &filter.pairs()?)?;
            let mut resp = c
                .http
                .get(url)
                .bearer_auth(&c.token)
                .timeout(std::time::Duration::from_secs(3600))
                .send()
                .await
                .with_context(|| format!("cannot reach {}", c.base))?;
            let status = resp.status();
            if !status.is_success() {
                let text = resp.text().await.unwrap_or_default();
                let v: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
                bail!(
                    "{} {}: {}",
                    status.as_u16(),
                    v["error"]["code"].as_str().unwrap_or("Error"),
                    v["error"]["message"].as_str().unwrap_or("")
                );
            }
            let mut sink: Box<dyn Write> = match &out {
                Some(p) => {
                    let mut opts = std::fs::OpenOptions::new();
                    opts.write(true).create(true).truncate(true);
                    #[cfg(unix)]
                    {
                        use std::os::unix::fs::OpenOptionsExt;
                        opts.mode(0o600);
                    }
                    Box::new(std::io::BufWriter::new(
                        opts.open(p)
                            .with_context(|| format!("writing {}", p.display()))?,
                    ))
                }
                None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
            };
            let mut lines = 0usize;
            while let Some(chunk) = resp.chunk().await? {
                lines += chunk.iter().filter(|b| **b == b'\n').count();
                sink.write_all(&chunk)?;
            }
            sink.flush()?;
            if let Some(p) = &out {
                eprintln!("wrote {lines} record(s) to {}", p.display());
            }
            Ok(())
        }
        AuditCommand::Verify { conn } => {
            let c = Client::new(&conn)?;
            let url = admin_url(&c, "audit/verify", &[])?;
            let (_, v) = c.send(reqwest::Method::POST, url.as_str(), None).await?;
            if conn.json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            }
            let checked = v["records_checked"].as_i64().unwrap_or(0);
            if v["ok"].as_bool() == Some(true) {
                if !conn.json {
                    match v["head"]["seq"].as_i64() {
                        Some(seq) => println!(
                            "audit chain OK: {checked} record(s) verified; head is record {seq} (mac {})",
                            v["head"]["mac"].as_str().unwrap_or("?")
                        ),
                        None => println!("audit chain OK: no records yet"),
                    }
                }
                return Ok(());
            }
            let p = &v["problem"];
            bail!(
                "audit chain BROKEN at record {} ({}): {} [{checked} record(s) verified before it]",
                cell(&p["seq"]),
                p["kind"].as_str().unwrap_or("?"),
                p["detail"].as_str().unwrap_or("")
            )
        }
    }
}
