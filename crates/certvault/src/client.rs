//! The client side of the binary: `certvault cert …` talks to a server over HTTPS with the same
//! Key Vault wire API the Azure SDKs use.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

mod audit;
mod lifecycle;
pub(crate) use audit::{AuditCommand, run_audit};
pub(crate) use lifecycle::{ChannelCommand, DeliveryCommand, run_channel, run_delivery};

const API_VERSION: &str = "2025-07-01";

/// How to reach the server. Without flags or variables, a `./certvault-data` directory next to
/// the current one supplies the token and CA certificate.
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct Conn {
    /// Server (vault) URL.
    #[arg(
        long,
        env = "CERTVAULT_URL",
        default_value = "https://127.0.0.1:8443",
        global = true
    )]
    url: String,
    /// Bearer token (prefer CERTVAULT_TOKEN or --token-file: flags show in `ps`).
    #[arg(long, env = "CERTVAULT_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// File holding the bearer token.
    #[arg(long, env = "CERTVAULT_TOKEN_FILE", global = true)]
    token_file: Option<PathBuf>,
    /// CA certificate (PEM) that signed the server's certificate.
    #[arg(long, env = "CERTVAULT_CACERT", global = true)]
    cacert: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
}

/// Certificate commands.
#[derive(clap::Subcommand, Debug)]
pub(crate) enum CertCommand {
    /// Create a certificate (issuer Self signs at once; Unknown returns a CSR to merge).
    Create(CreateArgs),
    /// Order a certificate from an ACME issuer (`--issuer <name>` of an issuer with provider
    /// acme; DNS names with --dns) and wait until it is issued.
    Order(CreateArgs),
    /// Import a certificate with its private key from a PEM or PFX file.
    Import(ImportArgs),
    /// Show a certificate (latest version unless --version).
    Get(NameVersion),
    /// List certificates.
    List {
        #[command(flatten)]
        conn: Conn,
        /// Include certificates whose creation is still pending.
        #[arg(long)]
        include_pending: bool,
    },
    /// List the versions of a certificate.
    Versions {
        #[command(flatten)]
        conn: Conn,
        /// Certificate name.
        name: String,
    },
    /// Renew a certificate now: a new version under its policy (a new key with --rekey or
    /// when the policy does not reuse keys). Imported certificates cannot be renewed; issuer
    /// Unknown opens a new CSR to merge.
    Renew {
        #[command(flatten)]
        conn: Conn,
        /// Certificate name.
        name: String,
        /// Generate a new key even if the policy says reuse_key.
        #[arg(long)]
        rekey: bool,
    },
    /// Download a certificate (cer), or the certificate with its key (pem, pfx).
    Download(DownloadArgs),
    /// Delete a certificate (soft delete; --purge removes it for good).
    Delete {
        #[command(flatten)]
        conn: Conn,
        /// Certificate name.
        name: String,
        /// Purge after deleting (destroys the key material).
        #[arg(long)]
        purge: bool,
    },
}

#[derive(clap::Args, Debug)]
pub(crate) struct NameVersion {
    #[command(flatten)]
    conn: Conn,
    /// Certificate name.
    name: String,
    /// Version (32 hex characters).
    #[arg(long)]
    version: Option<String>,
}

#[derive(clap::Args, Debug)]
pub(crate) struct CreateArgs {
    #[command(flatten)]
    conn: Conn,
    /// Certificate name.
    name: String,
    /// Subject, e.g. "CN=web.example.com, O=Example".
    #[arg(long)]
    subject: Option<String>,
    /// DNS subject alternative name (repeatable).
    #[arg(long = "dns")]
    dns: Vec<String>,
    /// IP address subject alternative name (repeatable).
    #[arg(long = "ip")]
    ips: Vec<String>,
    /// E-mail subject alternative name (repeatable).
    #[arg(long = "email")]
    emails: Vec<String>,
    /// Issuer: Self, Unknown, or an issuer object's name.
    #[arg(long, default_value = "Self")]
    issuer: String,
    /// Key type: RSA or EC.
    #[arg(long, default_value = "RSA")]
    key_type: String,
    /// RSA key size: 2048, 3072 or 4096.
    #[arg(long)]
    key_size: Option<u32>,
    /// EC curve: P-256, P-384 or P-521.
    #[arg(long)]
    curve: Option<String>,
    /// Validity in months.
    #[arg(long)]
    validity_months: Option<u32>,
    /// Managed secret format: pkcs12 or pem.
    #[arg(long)]
    content_type: Option<String>,
    /// Key usage (repeatable): digitalSignature, keyEncipherment, dataEncipherment, … The key's
    /// allowed operations follow it.
    #[arg(long = "key-usage")]
    key_usage: Vec<String>,
    /// Extended key usage OID (repeatable).
    #[arg(long = "eku")]
    ekus: Vec<String>,
    /// Keep the private key inside certvault (never exportable).
    #[arg(long)]
    not_exportable: bool,
    /// Reuse the key when renewing.
    #[arg(long)]
    reuse_key: bool,
    /// Tag as key=value (repeatable).
    #[arg(long = "tag")]
    tags: Vec<String>,
    /// Return at once instead of waiting for the operation to finish.
    #[arg(long)]
    no_wait: bool,
}

#[derive(clap::Args, Debug)]
pub(crate) struct ImportArgs {
    #[command(flatten)]
    conn: Conn,
    /// Certificate name.
    name: String,
    /// PEM (key and certificates) or PFX file.
    #[arg(long)]
    file: PathBuf,
    /// Environment variable holding the PFX password.
    #[arg(long, default_value = "CERTVAULT_PFX_PASSWORD")]
    password_env: String,
    /// File holding the PFX password.
    #[arg(long)]
    password_file: Option<PathBuf>,
    /// Keep the private key inside certvault (never exportable).
    #[arg(long)]
    not_exportable: bool,
    /// Tag as key=value (repeatable).
    #[arg(long = "tag")]
    tags: Vec<String>,
}

#[derive(clap::Args, Debug)]
pub(crate) struct DownloadArgs {
    #[command(flatten)]
    conn: Conn,
    /// Certificate name.
    name: String,
    /// Version (default latest).
    #[arg(long)]
    version: Option<String>,
    /// cer (certificate only, PEM), pem (key and chain), pfx (PKCS#12, empty password).
    #[arg(long, default_value = "pem")]
    format: String,
    /// Output file (default: standard output; pfx needs --out).
    #[arg(long)]
    out: Option<PathBuf>,
}

struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

fn default_data_file(rel: &str) -> Option<PathBuf> {
    let p = Path::new("certvault-data").join(rel);
    p.exists().then_some(p)
}

impl Client {
    fn new(conn: &Conn) -> Result<Self> {
        let token = match (&conn.token, &conn.token_file) {
            (Some(t), _) => t.trim().to_owned(),
            (None, Some(f)) => read_trim(f)?,
            (None, None) => match default_data_file("admin.token") {
                Some(f) => read_trim(&f)?,
                None => bail!("no token: set CERTVAULT_TOKEN or --token-file"),
            },
        };
        let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(60));
        let ca = conn
            .cacert
            .clone()
            .or_else(|| default_data_file("tls/ca.pem"));
        if let Some(ca) = ca {
            let pem = std::fs::read(&ca).with_context(|| format!("reading {}", ca.display()))?;
            let cert = reqwest::Certificate::from_pem(&pem)
                .with_context(|| format!("parsing {}", ca.display()))?;
            builder = builder.tls_certs_only([cert]);
        }
        let url = conn.url.trim_end_matches('/').to_owned();
        if !url.starts_with("https://") {
            bail!("the server URL must start with https://");
        }
        Ok(Self {
            http: builder.build()?,
            base: url,
            token,
        })
    }

    fn url(&self, path: &str) -> String {
        let sep = if path.contains('?') { '&' } else { '?' };
        format!("{}{path}{sep}api-version={API_VERSION}", self.base)
    }

    async fn send(
        &self,
        method: reqwest::Method,
        url: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value)> {
        let mut req = self.http.request(method, url).bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("cannot reach {}", self.base))?;
        let status = resp.status().as_u16();
        let text = resp.text().await?;
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        if status >= 400 {
            let code = value["error"]["code"].as_str().unwrap_or("Error");
            let msg = value["error"]["message"]
                .as_str()
                .map_or_else(|| value.to_string(), str::to_owned);
            bail!("{status} {code}: {msg}");
        }
        Ok((status, value))
    }

    async fn get(&self, path: &str) -> Result<Value> {
        Ok(self
            .send(reqwest::Method::GET, &self.url(path), None)
            .await?
            .1)
    }

    async fn list_all(&self, path: &str) -> Result<Vec<Value>> {
        let mut out = Vec::new();
        let mut url = self.url(path);
        loop {
            let (_, page) = self.send(reqwest::Method::GET, &url, None).await?;
            if let Some(items) = page["value"].as_array() {
                out.extend(items.iter().cloned());
            }
            match page["nextLink"].as_str() {
                Some(next) if !next.is_empty() => url = next.to_owned(),
                _ => break,
            }
        }
        Ok(out)
    }
}

fn read_trim(p: &Path) -> Result<String> {
    Ok(std::fs::read_to_string(p)
        .with_context(|| format!("reading {}", p.display()))?
        .trim()
        .to_owned())
}

fn tags(list: &[String]) -> Result<Option<Value>> {
    if list.is_empty() {
        return Ok(None);
    }
    let mut m = serde_json::Map::new();
    for t in list {
        let (k, v) = t
            .split_once('=')
            .ok_or_else(|| anyhow!("--tag takes key=value, got '{t}'"))?;
        m.insert(k.to_owned(), json!(v));
    }
    Ok(Some(Value::Object(m)))
}

fn content_type(s: &str) -> Result<&'static str> {
    match s.to_ascii_lowercase().as_str() {
        "pem" | "application/x-pem-file" => Ok("application/x-pem-file"),
        "pkcs12" | "pfx" | "p12" | "application/x-pkcs12" => Ok("application/x-pkcs12"),
        _ => bail!("content type must be pem or pkcs12"),
    }
}

fn fmt_time(ts: Option<i64>) -> String {
    ts.and_then(|t| time::OffsetDateTime::from_unix_timestamp(t).ok())
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "-".into())
}

fn name_of(id: &str) -> &str {
    id.split('/').nth(4).unwrap_or(id)
}

fn version_of(id: &str) -> &str {
    id.split('/').nth(5).unwrap_or("")
}

fn print_table(rows: &[Vec<String>], header: &[&str]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        let parts: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths.get(i).copied().unwrap_or(0)))
            .collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(header.iter().map(|h| (*h).to_owned()).collect());
    for r in rows {
        line(r.clone());
    }
}

fn item_row(v: &Value) -> Vec<String> {
    let id = v["id"].as_str().unwrap_or("");
    vec![
        name_of(id).to_owned(),
        version_of(id).to_owned(),
        v["attributes"]["enabled"]
            .as_bool()
            .map_or("-".into(), |b| b.to_string()),
        fmt_time(v["attributes"]["nbf"].as_i64()),
        fmt_time(v["attributes"]["exp"].as_i64()),
        v["x5t"].as_str().unwrap_or("-").to_owned(),
    ]
}

fn print_bundle(v: &Value, json_out: bool) {
    if json_out {
        println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
        return;
    }
    let id = v["id"].as_str().unwrap_or("");
    println!("name:        {}", name_of(id));
    println!("version:     {}", version_of(id));
    println!("id:          {id}");
    println!("enabled:     {}", v["attributes"]["enabled"]);
    println!("not before:  {}", fmt_time(v["attributes"]["nbf"].as_i64()));
    println!("expires:     {}", fmt_time(v["attributes"]["exp"].as_i64()));
    if let Some(p) = v.get("policy") {
        println!(
            "subject:     {}",
            p["x509_props"]["subject"].as_str().unwrap_or("")
        );
        let dns = p["x509_props"]["sans"]["dns_names"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let dns: Vec<&str> = dns.iter().filter_map(Value::as_str).collect();
        if !dns.is_empty() {
            println!("dns names:   {}", dns.join(", "));
        }
        println!(
            "issuer:      {}",
            p["issuer"]["name"].as_str().unwrap_or("")
        );
        let kp = &p["key_props"];
        println!(
            "key:         {} {}{} exportable={}",
            kp["kty"].as_str().unwrap_or(""),
            kp["key_size"]
                .as_u64()
                .map(|s| s.to_string())
                .unwrap_or_default(),
            kp["crv"].as_str().unwrap_or(""),
            kp["exportable"]
        );
    }
    if let Some(x) = v["x5t"].as_str() {
        println!("thumbprint:  {x}");
    }
    if let Some(t) = v.get("tags").and_then(Value::as_object) {
        let t: Vec<String> = t
            .iter()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
            .collect();
        println!("tags:        {}", t.join(", "));
    }
}

pub(crate) async fn run_cert(cmd: CertCommand) -> Result<()> {
    match cmd {
        CertCommand::Create(a) => create(a).await,
        CertCommand::Order(a) => {
            if a.issuer.eq_ignore_ascii_case("self") || a.issuer.eq_ignore_ascii_case("unknown") {
                bail!("`cert order` needs --issuer <name of an issuer with provider acme>");
            }
            create(a).await
        }
        CertCommand::Import(a) => import(a).await,
        CertCommand::Get(a) => {
            let c = Client::new(&a.conn)?;
            let v = c
                .get(&format!(
                    "/certificates/{}/{}",
                    a.name,
                    a.version.as_deref().unwrap_or("")
                ))
                .await?;
            print_bundle(&v, a.conn.json);
            Ok(())
        }
        CertCommand::List {
            conn,
            include_pending,
        } => {
            let c = Client::new(&conn)?;
            let path = if include_pending {
                "/certificates?includePending=true"
            } else {
                "/certificates"
            };
            let items = c.list_all(path).await?;
            if conn.json {
                println!("{}", serde_json::to_string_pretty(&items)?);
            } else {
                let rows: Vec<Vec<String>> = items
                    .iter()
                    .map(|i| {
                        let mut r = item_row(i);
                        r.remove(1);
                        r
                    })
                    .collect();
                print_table(
                    &rows,
                    &["NAME", "ENABLED", "NOT BEFORE", "EXPIRES", "THUMBPRINT"],
                );
            }
            Ok(())
        }
        CertCommand::Versions { conn, name } => {
            let c = Client::new(&conn)?;
            let items = c
                .list_all(&format!("/certificates/{name}/versions"))
                .await?;
            if conn.json {
                println!("{}", serde_json::to_string_pretty(&items)?);
            } else {
                let rows: Vec<Vec<String>> = items.iter().map(item_row).collect();
                print_table(
                    &rows,
                    &[
                        "NAME",
                        "VERSION",
                        "ENABLED",
                        "NOT BEFORE",
                        "EXPIRES",
                        "THUMBPRINT",
                    ],
                );
            }
            Ok(())
        }
        CertCommand::Renew { conn, name, rekey } => lifecycle::renew(&conn, &name, rekey).await,
        CertCommand::Download(a) => download(a).await,
        CertCommand::Delete { conn, name, purge } => {
            let c = Client::new(&conn)?;
            let (_, v) = c
                .send(
                    reqwest::Method::DELETE,
                    &c.url(&format!("/certificates/{name}")),
                    None,
                )
                .await?;
            if purge {
                c.send(
                    reqwest::Method::DELETE,
                    &c.url(&format!("/deletedcertificates/{name}")),
                    None,
                )
                .await?;
            }
            if conn.json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else if purge {
                println!("deleted and purged {name}");
            } else {
                println!(
                    "deleted {name}; recoverable until {}",
                    fmt_time(v["scheduledPurgeDate"].as_i64())
                );
            }
            Ok(())
        }
    }
}

async fn create(a: CreateArgs) -> Result<()> {
    let c = Client::new(&a.conn)?;
    let mut key_props = json!({"kty": a.key_type.to_ascii_uppercase(), "exportable": !a.not_exportable, "reuse_key": a.reuse_key});
    if let Some(s) = a.key_size {
        key_props["key_size"] = json!(s);
    }
    if let Some(crv) = &a.curve {
        key_props["crv"] = json!(crv.to_ascii_uppercase());
    }
    let mut x509 = json!({"sans": {"dns_names": a.dns, "ipAddresses": a.ips, "emails": a.emails}});
    if let Some(s) = &a.subject {
        x509["subject"] = json!(s);
    }
    if let Some(m) = a.validity_months {
        x509["validity_months"] = json!(m);
    }
    if !a.key_usage.is_empty() {
        x509["key_usage"] = json!(a.key_usage);
    }
    if !a.ekus.is_empty() {
        x509["ekus"] = json!(a.ekus);
    }
    let mut policy =
        json!({"key_props": key_props, "x509_props": x509, "issuer": {"name": a.issuer}});
    if let Some(ct) = &a.content_type {
        policy["secret_props"] = json!({"contentType": content_type(ct)?});
    }
    let mut body = json!({"policy": policy});
    if let Some(t) = tags(&a.tags)? {
        body["tags"] = t;
    }
    let (_, mut op) = c
        .send(
            reqwest::Method::POST,
            &c.url(&format!("/certificates/{}/create", a.name)),
            Some(&body),
        )
        .await?;
    let is_unknown = a.issuer.eq_ignore_ascii_case("unknown");
    if !a.no_wait && !is_unknown {
        for _ in 0..600 {
            op = c.get(&format!("/certificates/{}/pending", a.name)).await?;
            if op["status"].as_str() != Some("inProgress") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        match op["status"].as_str() {
            Some("completed") => {
                let v = c.get(&format!("/certificates/{}/", a.name)).await?;
                print_bundle(&v, a.conn.json);
                return Ok(());
            }
            Some(s) => bail!(
                "the operation ended {s}: {} {}",
                op["error"]["code"].as_str().unwrap_or(""),
                op["error"]["message"].as_str().unwrap_or("")
            ),
            None => bail!("unexpected operation: {op}"),
        }
    }
    if a.conn.json {
        println!("{}", serde_json::to_string_pretty(&op)?);
    } else {
        println!("operation: {}", op["status"].as_str().unwrap_or(""));
        if let Some(csr) = op["csr"].as_str() {
            let der = STANDARD.decode(csr)?;
            println!("-----BEGIN CERTIFICATE REQUEST-----");
            for chunk in STANDARD.encode(der).as_bytes().chunks(64) {
                println!("{}", String::from_utf8_lossy(chunk));
            }
            println!("-----END CERTIFICATE REQUEST-----");
        }
    }
    Ok(())
}

async fn import(a: ImportArgs) -> Result<()> {
    let c = Client::new(&a.conn)?;
    let data = std::fs::read(&a.file).with_context(|| format!("reading {}", a.file.display()))?;
    let is_pem = data.windows(10).any(|w| w == b"-----BEGIN");
    let mut body = json!({"value": STANDARD.encode(&data)});
    if !is_pem {
        let pwd = match &a.password_file {
            Some(f) => Some(read_trim(f)?),
            None => std::env::var(&a.password_env).ok(),
        };
        if let Some(p) = pwd {
            body["pwd"] = json!(p);
        }
    }
    let ct = if is_pem {
        "application/x-pem-file"
    } else {
        "application/x-pkcs12"
    };
    body["policy"] = json!({"secret_props": {"contentType": ct}, "key_props": {"exportable": !a.not_exportable}});
    if let Some(t) = tags(&a.tags)? {
        body["tags"] = t;
    }
    let (_, v) = c
        .send(
            reqwest::Method::POST,
            &c.url(&format!("/certificates/{}/import", a.name)),
            Some(&body),
        )
        .await?;
    print_bundle(&v, a.conn.json);
    Ok(())
}

async fn download(a: DownloadArgs) -> Result<()> {
    let c = Client::new(&a.conn)?;
    let ver = a.version.as_deref().unwrap_or("");
    let bytes: Vec<u8> = match a.format.to_ascii_lowercase().as_str() {
        "cer" | "crt" => {
            let v = c.get(&format!("/certificates/{}/{ver}", a.name)).await?;
            let der = STANDARD.decode(
                v["cer"]
                    .as_str()
                    .ok_or_else(|| anyhow!("the certificate is still pending"))?,
            )?;
            certvault_crypto::to_pem(None, &[der]).into_bytes()
        }
        "pem" => {
            let v = c
                .get(&format!(
                    "/secrets/{}/{ver}?outContentType=application/x-pem-file",
                    a.name
                ))
                .await?;
            v["value"]
                .as_str()
                .ok_or_else(|| anyhow!("no secret value"))?
                .as_bytes()
                .to_vec()
        }
        "pfx" | "p12" | "pkcs12" => {
            let v = c.get(&format!("/secrets/{}/{ver}", a.name)).await?;
            let value = v["value"]
                .as_str()
                .ok_or_else(|| anyhow!("no secret value"))?;
            if v["contentType"].as_str() == Some("application/x-pkcs12") {
                STANDARD.decode(value)?
            } else {
                let b = certvault_crypto::parse_pem(value.as_bytes())?;
                certvault_crypto::write_pfx(b.key.as_ref(), &b.certs, "")?
            }
        }
        other => bail!("unknown format '{other}': use cer, pem or pfx"),
    };
    match &a.out {
        Some(p) => {
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create(true).truncate(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                opts.mode(0o600);
            }
            let mut f = opts
                .open(p)
                .with_context(|| format!("writing {}", p.display()))?;
            f.write_all(&bytes)?;
            eprintln!("wrote {} ({} bytes)", p.display(), bytes.len());
        }
        None => {
            if a.format.eq_ignore_ascii_case("pfx") {
                bail!("--out is required for pfx");
            }
            std::io::stdout().write_all(&bytes)?;
        }
    }
    Ok(())
}

/// Administration commands.
#[derive(clap::Subcommand, Debug)]
pub(crate) enum AdminCommand {
    /// Re-wrap every vault key under a new master key while the server runs. The new key
    /// replaces master.key in the server's data directory: back it up afterwards.
    RotateMasterKey {
        #[command(flatten)]
        conn: Conn,
        /// Move the master key: file (master.key) or pkcs11 (into the server's token).
        #[arg(long)]
        to: Option<String>,
    },
    /// Copy a SQLite data directory's store into an empty PostgreSQL database (every table,
    /// sealed values as they are: the data directory's master.key keeps opening them). Stop
    /// the server first; afterwards start it with `--data-dir DATADIR --database URL`.
    Migrate {
        /// The data directory whose certvault.db is copied.
        #[arg(long, value_name = "DATADIR")]
        from_sqlite: PathBuf,
        /// The PostgreSQL database to copy into (postgres://…); it must hold no certvault data.
        #[arg(long, value_name = "URL")]
        to: String,
    },
    /// Take an online backup of the server's database (SQLite's backup API; the audit trail
    /// is flushed into it first) and write it to --out. Keep master.key separately: the backup
    /// is useless without it (docs/operations.md).
    Backup {
        #[command(flatten)]
        conn: Conn,
        /// Where to write the backup (a SQLite database file, created with mode 0600; it must
        /// not exist).
        #[arg(long)]
        out: PathBuf,
    },
    /// Show the server's clock, or move a test clock forward (servers started with
    /// --test-clock only).
    TestClock {
        #[command(flatten)]
        conn: Conn,
        /// Seconds to move the clock forward.
        #[arg(long)]
        advance: Option<i64>,
    },
}

pub(crate) async fn run_admin(cmd: AdminCommand) -> Result<()> {
    match cmd {
        AdminCommand::TestClock { conn, advance } => lifecycle::test_clock(&conn, advance).await,
        AdminCommand::Migrate { from_sqlite, to } => migrate(&from_sqlite, &to).await,
        AdminCommand::Backup { conn, out } => backup(&conn, &out).await,
        AdminCommand::RotateMasterKey { conn, to } => {
            let c = Client::new(&conn)?;
            let url = format!("{}/admin/v1/master-key/rotate", c.base);
            let body = match to {
                Some(t) => json!({"to": t}),
                None => json!({}),
            };
            let (_, v) = c.send(reqwest::Method::POST, &url, Some(&body)).await?;
            if conn.json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!(
                    "master key rotated ({}): {} vault key(s) re-wrapped; back up the new master.key",
                    v["master_key"].as_str().unwrap_or("?"),
                    v["vault_keys_rewrapped"]
                );
            }
            Ok(())
        }
    }
}

/// `certvault admin migrate`: SQLite data directory → PostgreSQL.
async fn migrate(data_dir: &Path, to: &str) -> Result<()> {
    if !certvault_store::is_postgres_url(to) {
        bail!("--to must be a postgres:// or postgresql:// URL");
    }
    let db = data_dir.join("certvault.db");
    if !db.is_file() {
        bail!(
            "{} is not a certvault data directory (no certvault.db)",
            data_dir.display()
        );
    }
    if !data_dir.join("master.key").is_file() {
        bail!(
            "{} has no master.key: the copied data could not be opened",
            data_dir.display()
        );
    }
    let pg = certvault_store::PgStore::open(to)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let report = pg.copy_from_sqlite(&db).await.map_err(|e| match e {
        certvault_store::StoreError::Conflict(_) => anyhow::anyhow!(
            "the PostgreSQL database already holds certvault data: migrate into an empty one"
        ),
        other => anyhow::anyhow!("{other}"),
    });
    pg.close();
    let report = report?;
    let total: u64 = report.tables.iter().map(|(_, n)| n).sum();
    for (table, n) in &report.tables {
        println!("{table:<18} {n:>10}");
    }
    println!(
        "copied {total} rows; start the server with --data-dir {} --database <URL>",
        data_dir.display()
    );
    Ok(())
}

async fn backup(conn: &Conn, out: &Path) -> Result<()> {
    let c = Client::new(conn)?;
    let url = format!("{}/admin/v1/backup", c.base);
    let resp = c
        .http
        .post(url)
        .bearer_auth(&c.token)
        .timeout(Duration::from_secs(3600))
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
    let bytes = resp.bytes().await?;
    if !bytes.starts_with(b"SQLite format 3\0") {
        bail!("the server's answer is not a SQLite database");
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(out)
        .with_context(|| format!("creating {}", out.display()))?;
    f.write_all(&bytes)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", out.display()))?;
    if conn.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({"out": out, "bytes": bytes.len()}))?
        );
    } else {
        println!(
            "backup written to {} ({} bytes); keep master.key with it",
            out.display(),
            bytes.len()
        );
    }
    Ok(())
}

/// Operations on a certificate's key (the key never leaves the server).
#[derive(clap::Subcommand, Debug)]
pub(crate) enum KeyCommand {
    /// Show the public key (JWK) and the operations it allows.
    Get(NameVersion),
    /// Sign: the digest of --in FILE (hashed here with the algorithm's hash), or --digest.
    Sign(KeyOpArgs),
    /// Verify --signature over the digest of --in FILE, or --digest (checked by the server).
    Verify(KeyOpArgs),
    /// Encrypt --in FILE or --value with the public key.
    Encrypt(KeyOpArgs),
    /// Decrypt --in FILE or --value inside the server.
    Decrypt(KeyOpArgs),
    /// Wrap a key (--in FILE or --value).
    Wrap(KeyOpArgs),
    /// Unwrap a wrapped key inside the server.
    Unwrap(KeyOpArgs),
}

#[derive(clap::Args, Debug)]
pub(crate) struct KeyOpArgs {
    #[command(flatten)]
    conn: Conn,
    /// Certificate (and key) name.
    name: String,
    /// Key version (default latest).
    #[arg(long)]
    version: Option<String>,
    /// Algorithm: RS256 … ES512 for sign/verify; RSA1_5, RSA-OAEP, RSA-OAEP-256 otherwise.
    #[arg(long)]
    alg: String,
    /// Input file (raw bytes; for sign/verify the data to hash).
    #[arg(long = "in")]
    input: Option<PathBuf>,
    /// Input as base64url (for sign/verify: the digest itself).
    #[arg(long, conflicts_with = "input")]
    value: Option<String>,
    /// Digest as base64url (sign/verify), instead of hashing --in.
    #[arg(long, conflicts_with_all = ["input", "value"])]
    digest: Option<String>,
    /// Signature as base64url (verify).
    #[arg(long)]
    signature: Option<String>,
    /// Write the raw result bytes here instead of printing base64url.
    #[arg(long)]
    out: Option<PathBuf>,
}

fn b64url_decode(s: &str, what: &str) -> Result<Vec<u8>> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s.trim().trim_end_matches('='))
        .with_context(|| format!("{what} is not base64url"))
}

fn b64url_encode(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

impl KeyOpArgs {
    /// The digest to sign or verify.
    fn digest_b64(&self) -> Result<String> {
        if let Some(d) = self.digest.as_ref().or(self.value.as_ref()) {
            b64url_decode(d, "--digest")?;
            return Ok(d.clone());
        }
        let file = self
            .input
            .as_ref()
            .ok_or_else(|| anyhow!("give --in FILE or --digest"))?;
        let alg: certvault_crypto::SignAlg = self
            .alg
            .parse()
            .map_err(|_| anyhow!("unknown signing algorithm '{}'", self.alg))?;
        let data = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
        Ok(b64url_encode(&alg.digest(&data)))
    }

    /// The payload of encrypt/decrypt/wrap/unwrap.
    fn payload_b64(&self) -> Result<String> {
        match (&self.value, &self.input) {
            (Some(v), _) => {
                b64url_decode(v, "--value")?;
                Ok(v.clone())
            }
            (None, Some(f)) => Ok(b64url_encode(
                &std::fs::read(f).with_context(|| format!("reading {}", f.display()))?,
            )),
            (None, None) => bail!("give --in FILE or --value"),
        }
    }

    fn emit(&self, value_b64: &str) -> Result<()> {
        match &self.out {
            Some(p) => {
                let bytes = b64url_decode(value_b64, "the result")?;
                let mut opts = std::fs::OpenOptions::new();
                opts.write(true).create(true).truncate(true);
                #[cfg(unix)]
                {
                    use std::os::unix::fs::OpenOptionsExt;
                    opts.mode(0o600);
                }
                opts.open(p)
                    .and_then(|mut f| f.write_all(&bytes))
                    .with_context(|| format!("writing {}", p.display()))?;
                eprintln!("wrote {} ({} bytes)", p.display(), bytes.len());
            }
            None => println!("{value_b64}"),
        }
        Ok(())
    }
}

pub(crate) async fn run_key(cmd: KeyCommand) -> Result<()> {
    let (a, op) = match cmd {
        KeyCommand::Get(a) => {
            let c = Client::new(&a.conn)?;
            let v = c
                .get(&format!(
                    "/keys/{}/{}",
                    a.name,
                    a.version.as_deref().unwrap_or("")
                ))
                .await?;
            if a.conn.json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                let k = &v["key"];
                println!("kid:         {}", k["kid"].as_str().unwrap_or(""));
                println!("kty:         {}", k["kty"].as_str().unwrap_or(""));
                if let Some(crv) = k["crv"].as_str() {
                    println!("crv:         {crv}");
                }
                let ops: Vec<&str> = k["key_ops"]
                    .as_array()
                    .map(|a| a.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                println!("key_ops:     {}", ops.join(", "));
                println!("exportable:  {}", v["attributes"]["exportable"]);
                println!("enabled:     {}", v["attributes"]["enabled"]);
            }
            return Ok(());
        }
        KeyCommand::Sign(a) => (a, "sign"),
        KeyCommand::Verify(a) => (a, "verify"),
        KeyCommand::Encrypt(a) => (a, "encrypt"),
        KeyCommand::Decrypt(a) => (a, "decrypt"),
        KeyCommand::Wrap(a) => (a, "wrapkey"),
        KeyCommand::Unwrap(a) => (a, "unwrapkey"),
    };
    let c = Client::new(&a.conn)?;
    let body = match op {
        "sign" => json!({"alg": a.alg, "value": a.digest_b64()?}),
        "verify" => {
            let sig = a
                .signature
                .as_deref()
                .ok_or_else(|| anyhow!("verify needs --signature"))?;
            json!({"alg": a.alg, "digest": a.digest_b64()?, "value": sig})
        }
        _ => json!({"alg": a.alg, "value": a.payload_b64()?}),
    };
    let url = c.url(&format!(
        "/keys/{}/{}/{op}",
        a.name,
        a.version.as_deref().unwrap_or("")
    ));
    let (_, v) = c.send(reqwest::Method::POST, &url, Some(&body)).await?;
    if a.conn.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    if op == "verify" {
        let valid = v["value"].as_bool().unwrap_or(false);
        println!("{}", if valid { "valid" } else { "invalid" });
        if !valid {
            bail!("the signature does not verify");
        }
        return Ok(());
    }
    a.emit(
        v["value"]
            .as_str()
            .ok_or_else(|| anyhow!("no value in the answer"))?,
    )
}

impl Client {
    async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value> {
        let url = format!("{}/admin/v1/{path}", self.base);
        Ok(self.send(method, &url, body).await?.1)
    }
}

fn print_json_or(v: &Value, json_out: bool, text: impl FnOnce(&Value)) -> Result<()> {
    if json_out {
        println!("{}", serde_json::to_string_pretty(v)?);
    } else {
        text(v);
    }
    Ok(())
}

/// Vaults (admin).
#[derive(clap::Subcommand, Debug)]
pub(crate) enum VaultCommand {
    /// Create a vault; it answers at once at https://<name>.<base-domain>.
    Create {
        #[command(flatten)]
        conn: Conn,
        /// Vault name (a DNS label).
        name: String,
        /// Days a deleted certificate (and the vault itself) stays recoverable.
        #[arg(long)]
        recoverable_days: Option<i64>,
    },
    /// List vaults (--deleted: the soft-deleted ones).
    List {
        #[command(flatten)]
        conn: Conn,
        /// List soft-deleted vaults.
        #[arg(long)]
        deleted: bool,
    },
    /// Show a vault.
    Get {
        #[command(flatten)]
        conn: Conn,
        /// Vault name.
        name: String,
    },
    /// Soft-delete a vault (recoverable until its purge date).
    Delete {
        #[command(flatten)]
        conn: Conn,
        /// Vault name.
        name: String,
    },
    /// Recover a soft-deleted vault.
    Recover {
        #[command(flatten)]
        conn: Conn,
        /// Vault name.
        name: String,
    },
    /// Purge a soft-deleted vault and everything in it.
    Purge {
        #[command(flatten)]
        conn: Conn,
        /// Vault name.
        name: String,
    },
}

fn vault_line(v: &Value) -> Vec<String> {
    vec![
        v["name"].as_str().unwrap_or("").to_owned(),
        v["url"].as_str().unwrap_or("").to_owned(),
        v["recoverable_days"].to_string(),
        fmt_time(v["deleted_at"].as_i64()),
    ]
}

pub(crate) async fn run_vault(cmd: VaultCommand) -> Result<()> {
    use reqwest::Method as M;
    let (conn, method, path, body) = match cmd {
        VaultCommand::Create {
            conn,
            name,
            recoverable_days,
        } => {
            let mut b = json!({"name": name});
            if let Some(d) = recoverable_days {
                b["recoverable_days"] = json!(d);
            }
            (conn, M::POST, "vaults".to_owned(), Some(b))
        }
        VaultCommand::List { conn, deleted } => {
            let c = Client::new(&conn)?;
            let v = c
                .admin(
                    M::GET,
                    if deleted { "deleted-vaults" } else { "vaults" },
                    None,
                )
                .await?;
            return print_json_or(&v, conn.json, |v| {
                let rows: Vec<Vec<String>> = v["vaults"]
                    .as_array()
                    .map(|a| a.iter().map(vault_line).collect())
                    .unwrap_or_default();
                print_table(&rows, &["NAME", "URL", "RECOVERABLE DAYS", "DELETED"]);
            });
        }
        VaultCommand::Get { conn, name } => (conn, M::GET, format!("vaults/{name}"), None),
        VaultCommand::Delete { conn, name } => (conn, M::DELETE, format!("vaults/{name}"), None),
        VaultCommand::Recover { conn, name } => (
            conn,
            M::POST,
            format!("deleted-vaults/{name}/recover"),
            None,
        ),
        VaultCommand::Purge { conn, name } => {
            (conn, M::DELETE, format!("deleted-vaults/{name}"), None)
        }
    };
    let c = Client::new(&conn)?;
    let v = c.admin(method, &path, body.as_ref()).await?;
    print_json_or(&v, conn.json, |v| {
        if v.is_null() {
            println!("done");
        } else {
            print_table(
                &[vault_line(v)],
                &["NAME", "URL", "RECOVERABLE DAYS", "DELETED"],
            );
        }
    })
}

/// Principals and their tokens (admin).
#[derive(clap::Subcommand, Debug)]
pub(crate) enum PrincipalCommand {
    /// Create a principal; its first token is printed once.
    Create {
        #[command(flatten)]
        conn: Conn,
        /// Principal name.
        name: String,
        /// Make it an administrator.
        #[arg(long)]
        admin: bool,
        /// Free text.
        #[arg(long)]
        description: Option<String>,
        /// Do not create a token now.
        #[arg(long)]
        no_token: bool,
        /// Label of the first token.
        #[arg(long)]
        token_label: Option<String>,
        /// Days until the first token expires (default: never).
        #[arg(long)]
        expires_in_days: Option<i64>,
    },
    /// List principals.
    List {
        #[command(flatten)]
        conn: Conn,
    },
    /// Show a principal with its tokens and access policies.
    Get {
        #[command(flatten)]
        conn: Conn,
        /// Principal name.
        name: String,
    },
    /// Disable a principal: its tokens stop working.
    Disable {
        #[command(flatten)]
        conn: Conn,
        /// Principal name.
        name: String,
    },
    /// Enable a disabled principal.
    Enable {
        #[command(flatten)]
        conn: Conn,
        /// Principal name.
        name: String,
    },
    /// Delete a principal with its tokens and policies.
    Delete {
        #[command(flatten)]
        conn: Conn,
        /// Principal name.
        name: String,
    },
    /// Create a token for a principal (printed once).
    TokenCreate {
        #[command(flatten)]
        conn: Conn,
        /// Principal name.
        name: String,
        /// Label.
        #[arg(long)]
        label: Option<String>,
        /// Days until it expires (default: never).
        #[arg(long)]
        expires_in_days: Option<i64>,
    },
    /// List a principal's tokens (never their values).
    TokenList {
        #[command(flatten)]
        conn: Conn,
        /// Principal name.
        name: String,
    },
    /// Revoke a token.
    TokenRevoke {
        #[command(flatten)]
        conn: Conn,
        /// Principal name.
        name: String,
        /// Token id (from token-list).
        id: i64,
    },
}

fn principal_line(p: &Value) -> Vec<String> {
    vec![
        p["name"].as_str().unwrap_or("").to_owned(),
        p["admin"].to_string(),
        p["disabled"].to_string(),
        p["description"].as_str().unwrap_or("").to_owned(),
    ]
}

fn token_line(t: &Value) -> Vec<String> {
    vec![
        t["id"].to_string(),
        t["label"].as_str().unwrap_or("").to_owned(),
        fmt_time(t["created"].as_i64()),
        fmt_time(t["expires"].as_i64()),
        fmt_time(t["revoked"].as_i64()),
    ]
}

pub(crate) async fn run_principal(cmd: PrincipalCommand) -> Result<()> {
    use reqwest::Method as M;
    const P_HEAD: [&str; 4] = ["NAME", "ADMIN", "DISABLED", "DESCRIPTION"];
    const T_HEAD: [&str; 5] = ["ID", "LABEL", "CREATED", "EXPIRES", "REVOKED"];
    match cmd {
        PrincipalCommand::Create {
            conn,
            name,
            admin,
            description,
            no_token,
            token_label,
            expires_in_days,
        } => {
            let c = Client::new(&conn)?;
            let body = json!({"name": name, "admin": admin, "description": description, "token": !no_token,
                              "token_label": token_label, "token_expires_in_days": expires_in_days});
            let v = c.admin(M::POST, "principals", Some(&body)).await?;
            print_json_or(&v, conn.json, |v| {
                print_table(&[principal_line(&v["principal"])], &P_HEAD);
                if let Some(t) = v["token"]["token"].as_str() {
                    println!("\ntoken (shown once; store it now): {t}");
                }
            })
        }
        PrincipalCommand::List { conn } => {
            let c = Client::new(&conn)?;
            let v = c.admin(M::GET, "principals", None).await?;
            print_json_or(&v, conn.json, |v| {
                let rows: Vec<Vec<String>> = v["principals"]
                    .as_array()
                    .map(|a| a.iter().map(principal_line).collect())
                    .unwrap_or_default();
                print_table(&rows, &P_HEAD);
            })
        }
        PrincipalCommand::Get { conn, name } => {
            let c = Client::new(&conn)?;
            let v = c.admin(M::GET, &format!("principals/{name}"), None).await?;
            print_json_or(&v, conn.json, |v| {
                print_table(&[principal_line(v)], &P_HEAD);
                let tokens: Vec<Vec<String>> = v["tokens"]
                    .as_array()
                    .map(|a| a.iter().map(token_line).collect())
                    .unwrap_or_default();
                println!();
                print_table(&tokens, &T_HEAD);
                for p in v["access_policies"].as_array().into_iter().flatten() {
                    println!(
                        "\nvault {}: {}",
                        p["vault"].as_str().unwrap_or(""),
                        p["permissions"]
                    );
                }
            })
        }
        PrincipalCommand::Disable { conn, name } => set_disabled(conn, &name, true).await,
        PrincipalCommand::Enable { conn, name } => set_disabled(conn, &name, false).await,
        PrincipalCommand::Delete { conn, name } => {
            let c = Client::new(&conn)?;
            let v = c
                .admin(M::DELETE, &format!("principals/{name}"), None)
                .await?;
            print_json_or(&v, conn.json, |_| println!("deleted principal {name}"))
        }
        PrincipalCommand::TokenCreate {
            conn,
            name,
            label,
            expires_in_days,
        } => {
            let c = Client::new(&conn)?;
            let body = json!({"label": label, "expires_in_days": expires_in_days});
            let v = c
                .admin(M::POST, &format!("principals/{name}/tokens"), Some(&body))
                .await?;
            print_json_or(&v, conn.json, |v| {
                print_table(&[token_line(v)], &T_HEAD);
                println!(
                    "\ntoken (shown once; store it now): {}",
                    v["token"].as_str().unwrap_or("")
                );
            })
        }
        PrincipalCommand::TokenList { conn, name } => {
            let c = Client::new(&conn)?;
            let v = c
                .admin(M::GET, &format!("principals/{name}/tokens"), None)
                .await?;
            print_json_or(&v, conn.json, |v| {
                let rows: Vec<Vec<String>> = v["tokens"]
                    .as_array()
                    .map(|a| a.iter().map(token_line).collect())
                    .unwrap_or_default();
                print_table(&rows, &T_HEAD);
            })
        }
        PrincipalCommand::TokenRevoke { conn, name, id } => {
            let c = Client::new(&conn)?;
            let v = c
                .admin(M::DELETE, &format!("principals/{name}/tokens/{id}"), None)
                .await?;
            print_json_or(&v, conn.json, |v| print_table(&[token_line(v)], &T_HEAD))
        }
    }
}

async fn set_disabled(conn: Conn, name: &str, disabled: bool) -> Result<()> {
    let c = Client::new(&conn)?;
    let v = c
        .admin(
            reqwest::Method::PATCH,
            &format!("principals/{name}"),
            Some(&json!({"disabled": disabled})),
        )
        .await?;
    print_json_or(&v, conn.json, |v| {
        print_table(
            &[principal_line(v)],
            &["NAME", "ADMIN", "DISABLED", "DESCRIPTION"],
        )
    })
}

/// Access policies: a principal's permissions in a vault (admin).
#[derive(clap::Subcommand, Debug)]
pub(crate) enum PolicyCommand {
    /// Set (replace) a principal's permissions in a vault. Names as in Key Vault, comma
    /// separated, or `all`; e.g. --certificates get,list --secrets get.
    Set {
        #[command(flatten)]
        conn: Conn,
        /// Vault name.
        #[arg(long)]
        vault: String,
        /// Principal name.
        #[arg(long)]
        principal: String,
        /// Certificate permissions.
        #[arg(long, value_delimiter = ',')]
        certificates: Vec<String>,
        /// Key permissions.
        #[arg(long, value_delimiter = ',')]
        keys: Vec<String>,
        /// Secret permissions.
        #[arg(long, value_delimiter = ',')]
        secrets: Vec<String>,
    },
    /// Show the access policies of a vault.
    List {
        #[command(flatten)]
        conn: Conn,
        /// Vault name.
        #[arg(long)]
        vault: String,
    },
    /// Remove a principal's access policy in a vault.
    Delete {
        #[command(flatten)]
        conn: Conn,
        /// Vault name.
        #[arg(long)]
        vault: String,
        /// Principal name.
        #[arg(long)]
        principal: String,
    },
}

fn policy_line(p: &Value) -> Vec<String> {
    let list = |k: &str| {
        p["permissions"][k]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default()
    };
    vec![
        p["principal"].as_str().unwrap_or("").to_owned(),
        list("certificates"),
        list("keys"),
        list("secrets"),
    ]
}

pub(crate) async fn run_policy(cmd: PolicyCommand) -> Result<()> {
    use reqwest::Method as M;
    const HEAD: [&str; 4] = ["PRINCIPAL", "CERTIFICATES", "KEYS", "SECRETS"];
    match cmd {
        PolicyCommand::Set {
            conn,
            vault,
            principal,
            certificates,
            keys,
            secrets,
        } => {
            let c = Client::new(&conn)?;
            let body = json!({"certificates": certificates, "keys": keys, "secrets": secrets});
            let v = c
                .admin(
                    M::PUT,
                    &format!("vaults/{vault}/access-policies/{principal}"),
                    Some(&body),
                )
                .await?;
            print_json_or(&v, conn.json, |v| print_table(&[policy_line(v)], &HEAD))
        }
        PolicyCommand::List { conn, vault } => {
            let c = Client::new(&conn)?;
            let v = c
                .admin(M::GET, &format!("vaults/{vault}/access-policies"), None)
                .await?;
            print_json_or(&v, conn.json, |v| {
                let rows: Vec<Vec<String>> = v["access_policies"]
                    .as_array()
                    .map(|a| a.iter().map(policy_line).collect())
                    .unwrap_or_default();
                print_table(&rows, &HEAD);
            })
        }
        PolicyCommand::Delete {
            conn,
            vault,
            principal,
        } => {
            let c = Client::new(&conn)?;
            c.admin(
                M::DELETE,
                &format!("vaults/{vault}/access-policies/{principal}"),
                None,
            )
            .await?;
            if conn.json {
                println!("{{}}");
            } else {
                println!("removed the access policy of {principal} in {vault}");
            }
            Ok(())
        }
    }
}
