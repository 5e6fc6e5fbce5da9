//! The `certvault` binary: `certvault serve` runs the server; the other subcommands are a client
//! of a running server over HTTPS.
#![forbid(unsafe_code)]

mod client;

/// mimalloc instead of glibc's allocator: the request path allocates and frees many small and
/// kilobyte-sized buffers across threads, where glibc spent ~8 % of the server's CPU (free-list
/// consolidation) on the hottest request.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use serde::Deserialize;

/// certvault: certificates as versioned objects in vaults, with the Azure Key Vault API.
#[derive(Parser, Debug)]
#[command(name = "certvault", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the server (zero configuration: ./certvault-data, SQLite, HTTPS on 127.0.0.1:8443).
    Serve(Box<ServeArgs>),
    /// Manage certificates on a running server.
    #[command(subcommand)]
    Cert(client::CertCommand),
    /// Use a certificate's key (sign, verify, encrypt, decrypt, wrap, unwrap).
    #[command(subcommand)]
    Key(client::KeyCommand),
    /// Manage vaults (admin).
    #[command(subcommand)]
    Vault(client::VaultCommand),
    /// Manage principals and their tokens (admin).
    #[command(subcommand)]
    Principal(client::PrincipalCommand),
    /// Manage access policies: who may do what in a vault (admin).
    #[command(subcommand)]
    Policy(client::PolicyCommand),
    /// Administer a running server.
    #[command(subcommand)]
    Admin(client::AdminCommand),
    /// Query, export and verify the audit trail (admin).
    #[command(subcommand)]
    Audit(client::AuditCommand),
    /// Notification channels of a vault: webhooks and Slack (admin).
    #[command(subcommand)]
    Channel(client::ChannelCommand),
    /// Deliveries of events to channels and e-mail: history, dead letters, replay (admin).
    #[command(subcommand)]
    Delivery(client::DeliveryCommand),
    /// Print the OpenAPI 3.1 document of the admin API (the one served at /openapi.json and
    /// committed as docs/openapi.json).
    Openapi,
}

/// Settings of `certvault serve`; each also reads a `CERTVAULT_*` variable and a key of the
/// `--config` TOML file (flags and variables win over the file).
#[derive(clap::Args, Debug)]
struct ServeArgs {
    /// Data directory (database, master key, admin token, TLS files). Default ./certvault-data.
    #[arg(long, env = "CERTVAULT_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Keep the store in PostgreSQL: postgres://user:password@host:port/database (also
    /// `?host=/socket/dir`). Without it the store is SQLite in the data directory. Connections
    /// are not encrypted (no TLS yet): use a loopback or Unix-socket database.
    #[arg(long, env = "CERTVAULT_DATABASE")]
    database: Option<String>,
    /// Address to listen on. Default 127.0.0.1:8443.
    #[arg(long, env = "CERTVAULT_LISTEN")]
    listen: Option<SocketAddr>,
    /// Vault host names are <vault>.<base-domain>; other hosts reach the vault `default`.
    /// Default certvault.localhost.
    #[arg(long, env = "CERTVAULT_BASE_DOMAIN")]
    base_domain: Option<String>,
    /// The port clients connect to, when a proxy makes it differ from the listen port.
    #[arg(long, env = "CERTVAULT_PUBLIC_PORT")]
    public_port: Option<u16>,
    /// Largest request body in bytes. Default 1 MiB.
    #[arg(long, env = "CERTVAULT_MAX_BODY")]
    max_body: Option<usize>,
    /// Days a deleted certificate stays recoverable (7 to 90). Default 90.
    #[arg(long, env = "CERTVAULT_RECOVERABLE_DAYS")]
    recoverable_days: Option<i64>,
    /// When audit records wait for fdatasync: `writes` (default: requests that change state
    /// and background actions wait; records of reads are written before the response and
    /// synced within 5 ms) or `always` (every audited request waits).
    #[arg(long, env = "CERTVAULT_AUDIT_SYNC")]
    audit_sync: Option<String>,
    /// PKCS#11 module for HSM keys (RSA-HSM / EC-HSM policies), e.g.
    /// /usr/lib/softhsm/libsofthsm2.so.
    #[arg(long, env = "CERTVAULT_PKCS11_MODULE")]
    pkcs11_module: Option<PathBuf>,
    /// Label of the PKCS#11 token. Default certvault.
    #[arg(long, env = "CERTVAULT_PKCS11_TOKEN")]
    pkcs11_token: Option<String>,
    /// File holding the token's user PIN (mode 0600). Without it the PIN is read from the
    /// environment variable CERTVAULT_PKCS11_PIN; it is never taken from a flag.
    #[arg(long, env = "CERTVAULT_PKCS11_PIN_FILE")]
    pkcs11_pin_file: Option<PathBuf>,
    /// Logged-in PKCS#11 sessions kept open. Default 4.
    #[arg(long, env = "CERTVAULT_PKCS11_SESSIONS")]
    pkcs11_sessions: Option<usize>,
    /// Where a NEW data directory's master key lives: file (master.key) or pkcs11 (a
    /// non-extractable AES key in the token; master.key then holds its reference). An existing
    /// data directory keeps its key; move it with `certvault admin rotate-master-key --to`.
    #[arg(long, env = "CERTVAULT_MASTER_KEY")]
    master_key: Option<String>,
    /// Accept JWT bearer tokens from the identity provider with this issuer (`iss`). Off when
    /// unset; needs --jwt-jwks-file or --jwt-jwks-url.
    #[arg(long, env = "CERTVAULT_JWT_ISSUER")]
    jwt_issuer: Option<String>,
    /// Accepted JWT audiences (`aud`), comma-separated. Default: the challenge resource
    /// https://<base-domain>[:port].
    #[arg(long, env = "CERTVAULT_JWT_AUDIENCE", value_delimiter = ',')]
    jwt_audience: Vec<String>,
    /// The identity provider's JSON Web Key Set, from a file.
    #[arg(long, env = "CERTVAULT_JWT_JWKS_FILE")]
    jwt_jwks_file: Option<PathBuf>,
    /// The identity provider's JSON Web Key Set, from an https:// URL (http:// only on a
    /// loopback host).
    #[arg(long, env = "CERTVAULT_JWT_JWKS_URL")]
    jwt_jwks_url: Option<String>,
    /// Extra CA certificates (PEM) to trust for the JWKS URL, besides the system's.
    #[arg(long, env = "CERTVAULT_JWT_JWKS_CA")]
    jwt_jwks_ca: Option<PathBuf>,
    /// Least seconds between two loads of the JWKS (on an unknown `kid`). Default 60.
    #[arg(long, env = "CERTVAULT_JWT_JWKS_REFRESH")]
    jwt_jwks_refresh: Option<u64>,
    /// Accepted JWT algorithms, comma-separated, from RS256 RS384 RS512 PS256 PS384 PS512
    /// ES256 ES384. Default: all of them.
    #[arg(long, env = "CERTVAULT_JWT_ALGORITHMS", value_delimiter = ',')]
    jwt_algorithms: Vec<String>,
    /// Clock skew allowed for `exp` and `nbf`, in seconds. Default 60.
    #[arg(long, env = "CERTVAULT_JWT_CLOCK_SKEW")]
    jwt_clock_skew: Option<i64>,
    /// The claim whose value is the principal's name (sub, oid, appid, preferred_username, …).
    /// Default sub. The config file's [jwt_principals] table can map values to names instead.
    #[arg(long, env = "CERTVAULT_JWT_PRINCIPAL_CLAIM")]
    jwt_principal_claim: Option<String>,
    /// Let a JWT authenticate an administrator principal (refused by default).
    #[arg(long, env = "CERTVAULT_JWT_ALLOW_ADMIN")]
    jwt_allow_admin: bool,
    /// Serve a managed-identity (Azure Arc style) token endpoint over plain HTTP on this
    /// loopback address, e.g. 127.0.0.1:40342. Off when unset; needs --identity-principal.
    #[arg(long, env = "CERTVAULT_IDENTITY_LISTEN")]
    identity_listen: Option<SocketAddr>,
    /// The principal whose tokens the identity endpoint issues.
    #[arg(long, env = "CERTVAULT_IDENTITY_PRINCIPAL")]
    identity_principal: Option<String>,
    /// Where the identity endpoint writes its challenge key files. Default
    /// /var/opt/azcmagent/tokens, the only directory the Azure SDKs read them from on Linux.
    #[arg(long, env = "CERTVAULT_IDENTITY_KEY_DIR")]
    identity_key_dir: Option<PathBuf>,
    /// Lifetime of identity endpoint tokens in seconds (300 to 86400). Default 3600.
    #[arg(long, env = "CERTVAULT_IDENTITY_TOKEN_LIFETIME")]
    identity_token_lifetime: Option<i64>,
    /// Make challenge key files readable by the directory's group (0640 instead of 0600), for
    /// applications that run as another user in that group.
    #[arg(long, env = "CERTVAULT_IDENTITY_KEY_GROUP_READABLE")]
    identity_key_group_readable: bool,
    /// Expiry notice offsets in days before expiry, comma-separated. Default 30,7,1.
    #[arg(long, env = "CERTVAULT_NOTICE_DAYS", value_delimiter = ',')]
    notice_days: Vec<u32>,
    /// SMTP server for e-mail to vault contacts (off when unset).
    #[arg(long, env = "CERTVAULT_SMTP_HOST")]
    smtp_host: Option<String>,
    /// SMTP port. Default 587 (starttls), 465 (tls), 25 (none).
    #[arg(long, env = "CERTVAULT_SMTP_PORT")]
    smtp_port: Option<u16>,
    /// SMTP connection security: starttls (default), tls, or none.
    #[arg(long, env = "CERTVAULT_SMTP_TLS")]
    smtp_tls: Option<String>,
    /// SMTP user name.
    #[arg(long, env = "CERTVAULT_SMTP_USERNAME")]
    smtp_username: Option<String>,
    /// File holding the SMTP password (mode 0600); else the variable CERTVAULT_SMTP_PASSWORD.
    #[arg(long, env = "CERTVAULT_SMTP_PASSWORD_FILE")]
    smtp_password_file: Option<PathBuf>,
    /// Sender address of notification e-mail. Default certvault@<smtp host>.
    #[arg(long, env = "CERTVAULT_SMTP_FROM")]
    smtp_from: Option<String>,
    /// PEM file of extra trusted roots for the SMTP server's certificate (in addition to the
    /// built-in webpki roots), e.g. a private CA. Verification always stays on.
    #[arg(long, env = "CERTVAULT_SMTP_CA_FILE")]
    smtp_ca_file: Option<PathBuf>,
    /// Attempts before a notification delivery is dead-lettered. Default 20 (about 3 days).
    #[arg(long, env = "CERTVAULT_DELIVERY_MAX_ATTEMPTS")]
    delivery_max_attempts: Option<i64>,
    /// Seconds (of the server clock) a replica holds claimed work — a lifecycle item, an ACME
    /// order; deliveries at most 120 — before another replica may take it over (5 to 3600).
    /// Default 300.
    #[arg(long, env = "CERTVAULT_LEASE_SECONDS")]
    lease_seconds: Option<i64>,
    /// DANGER, tests only: a clock that the admin API can move forward
    /// (POST /admin/v1/test-clock/advance). Refused unless CERTVAULT_ALLOW_TEST_CLOCK=1.
    #[arg(long)]
    test_clock: bool,
    /// TOML configuration file.
    #[arg(long, env = "CERTVAULT_CONFIG")]
    config: Option<PathBuf>,
    /// Serve GET /metrics (Prometheus) without a token over plain HTTP on this address too,
    /// e.g. 127.0.0.1:9464. Must be a loopback address unless --metrics-listen-public.
    #[arg(long, env = "CERTVAULT_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// Allow --metrics-listen on a non-loopback address (anyone who reaches it reads the
    /// metrics, vault and certificate names included).
    #[arg(long, env = "CERTVAULT_METRICS_LISTEN_PUBLIC")]
    metrics_listen_public: bool,
    /// Per-certificate series in /metrics for at most this many certificates, those whose
    /// current version expires soonest (0: none). The counts of all certificates
    /// (certvault_certificates, certvault_certificates_expiring) stay complete. Default 10000.
    #[arg(long, env = "CERTVAULT_METRICS_CERTIFICATE_SERIES")]
    metrics_certificate_series: Option<usize>,
    /// Seconds a shutdown (SIGTERM, SIGINT) waits for requests in flight and claimed
    /// lifecycle work before closing connections and releasing leases. Default 30.
    #[arg(long, env = "CERTVAULT_SHUTDOWN_GRACE")]
    shutdown_grace: Option<u64>,
    /// Log filter (e.g. info, debug, certvault_server=debug). Default info.
    #[arg(long, env = "CERTVAULT_LOG")]
    log: Option<String>,
    /// Log format: text (default) or json (one JSON object per line, with the request id of
    /// the request a line belongs to).
    #[arg(long, env = "CERTVAULT_LOG_FORMAT")]
    log_format: Option<String>,
    /// Same as --log-format json (kept for compatibility).
    #[arg(long, env = "CERTVAULT_LOG_JSON", hide = true)]
    log_json: bool,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    database: Option<String>,
    listen: Option<SocketAddr>,
    base_domain: Option<String>,
    public_port: Option<u16>,
    max_body: Option<usize>,
    recoverable_days: Option<i64>,
    audit_sync: Option<String>,
    log: Option<String>,
    pkcs11_module: Option<PathBuf>,
    pkcs11_token: Option<String>,
    pkcs11_pin_file: Option<PathBuf>,
    pkcs11_sessions: Option<usize>,
    master_key: Option<String>,
    jwt_issuer: Option<String>,
    jwt_audience: Option<Vec<String>>,
    jwt_jwks_file: Option<PathBuf>,
    jwt_jwks_url: Option<String>,
    jwt_jwks_ca: Option<PathBuf>,
    jwt_jwks_refresh: Option<u64>,
    jwt_algorithms: Option<Vec<String>>,
    jwt_clock_skew: Option<i64>,
    jwt_principal_claim: Option<String>,
    jwt_allow_admin: Option<bool>,
    /// Claim value → principal name; when present, only the values it lists are accepted.
    jwt_principals: Option<std::collections::HashMap<String, String>>,
    identity_listen: Option<SocketAddr>,
    identity_principal: Option<String>,
    identity_key_dir: Option<PathBuf>,
    identity_token_lifetime: Option<i64>,
    identity_key_group_readable: Option<bool>,
    notice_days: Option<Vec<u32>>,
    smtp_host: Option<String>,
    smtp_port: Option<u16>,
    smtp_tls: Option<String>,
    smtp_username: Option<String>,
    smtp_password_file: Option<PathBuf>,
    smtp_from: Option<String>,
    smtp_ca_file: Option<PathBuf>,
    delivery_max_attempts: Option<i64>,
    lease_seconds: Option<i64>,
    metrics_listen: Option<SocketAddr>,
    metrics_listen_public: Option<bool>,
    metrics_certificate_series: Option<usize>,
    shutdown_grace: Option<u64>,
    log_format: Option<String>,
}

/// Lifecycle and notification settings from flags, variables and the file.
fn lifecycle_settings(
    args: &mut ServeArgs,
    file: &mut FileConfig,
) -> Result<certvault_server::lifecycle::LifecycleSettings> {
    use certvault_server::notify::{SmtpSettings, SmtpTls};
    let mut s = certvault_server::lifecycle::LifecycleSettings::default();
    let days = if args.notice_days.is_empty() {
        file.notice_days.take().unwrap_or_default()
    } else {
        std::mem::take(&mut args.notice_days)
    };
    if !days.is_empty() {
        if days.iter().any(|d| *d == 0 || *d > 3650) {
            bail!("--notice-days takes days from 1 to 3650");
        }
        s.notice_days = days;
    }
    if let Some(n) = args.lease_seconds.or(file.lease_seconds) {
        if !(5..=3600).contains(&n) {
            bail!("--lease-seconds must be from 5 to 3600");
        }
        s.lease = n;
    }
    if let Some(n) = args.delivery_max_attempts.or(file.delivery_max_attempts) {
        if !(1..=100).contains(&n) {
            bail!("--delivery-max-attempts must be from 1 to 100");
        }
        s.delivery.max_attempts = n;
    }
    let host = args.smtp_host.take().or(file.smtp_host.take());
    let Some(host) = host else {
        if args.smtp_username.is_some()
            || file.smtp_username.is_some()
            || args.smtp_ca_file.is_some()
            || file.smtp_ca_file.is_some()
        {
            bail!("SMTP settings were given without --smtp-host");
        }
        return Ok(s);
    };
    let tls: SmtpTls = args
        .smtp_tls
        .take()
        .or(file.smtp_tls.take())
        .unwrap_or_else(|| "starttls".into())
        .parse()
        .map_err(|e: String| anyhow::anyhow!(e))?;
    let port = args.smtp_port.or(file.smtp_port).unwrap_or(match tls {
        SmtpTls::StartTls => 587,
        SmtpTls::Tls => 465,
        SmtpTls::None => 25,
    });
    let password = match args
        .smtp_password_file
        .take()
        .or(file.smtp_password_file.take())
    {
        Some(p) => Some(zeroize::Zeroizing::new(
            std::fs::read_to_string(&p)
                .with_context(|| format!("reading {}", p.display()))?
                .trim_end_matches(['\r', '\n'])
                .to_owned(),
        )),
        None => std::env::var("CERTVAULT_SMTP_PASSWORD")
            .ok()
            .map(zeroize::Zeroizing::new),
    };
    let from = args
        .smtp_from
        .take()
        .or(file.smtp_from.take())
        .unwrap_or_else(|| format!("certvault@{host}"));
    let ca_pem = match args.smtp_ca_file.take().or(file.smtp_ca_file.take()) {
        Some(p) => {
            if tls == SmtpTls::None {
                bail!("--smtp-ca-file needs --smtp-tls starttls or tls");
            }
            Some(std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?)
        }
        None => None,
    };
    s.smtp = Some(SmtpSettings {
        host,
        port,
        tls,
        username: args.smtp_username.take().or(file.smtp_username.take()),
        password,
        from,
        ca_pem,
    });
    Ok(s)
}

/// JWT settings from flags, variables and the file (flags and variables win).
fn jwt_settings(
    args: &mut ServeArgs,
    file: &mut FileConfig,
) -> Result<Option<certvault_server::jwt::JwtSettings>> {
    use certvault_server::jwt::{JwksSource, JwtSettings};
    let issuer = args.jwt_issuer.take().or(file.jwt_issuer.take());
    let jwks_file = args.jwt_jwks_file.take().or(file.jwt_jwks_file.take());
    let jwks_url = args.jwt_jwks_url.take().or(file.jwt_jwks_url.take());
    let Some(issuer) = issuer else {
        if jwks_file.is_some() || jwks_url.is_some() || file.jwt_principals.is_some() {
            bail!(
                "JWT settings were given without --jwt-issuer (which turns JWT authentication on)"
            );
        }
        return Ok(None);
    };
    let jwks = match (jwks_file, jwks_url) {
        (Some(f), None) => JwksSource::File(f),
        (None, Some(url)) => JwksSource::Url {
            url,
            ca_file: args.jwt_jwks_ca.take().or(file.jwt_jwks_ca.take()),
        },
        (Some(_), Some(_)) => bail!("give one of --jwt-jwks-file and --jwt-jwks-url, not both"),
        (None, None) => bail!("--jwt-issuer needs --jwt-jwks-file or --jwt-jwks-url"),
    };
    let mut s = JwtSettings::new(issuer, jwks);
    let nonempty = |v: Vec<String>| -> Vec<String> {
        v.into_iter()
            .map(|x| x.trim().to_owned())
            .filter(|x| !x.is_empty())
            .collect()
    };
    s.audiences = nonempty(if args.jwt_audience.is_empty() {
        file.jwt_audience.take().unwrap_or_default()
    } else {
        std::mem::take(&mut args.jwt_audience)
    });
    s.algorithms = nonempty(if args.jwt_algorithms.is_empty() {
        file.jwt_algorithms.take().unwrap_or_default()
    } else {
        std::mem::take(&mut args.jwt_algorithms)
    });
    if let Some(v) = args.jwt_clock_skew.or(file.jwt_clock_skew) {
        s.clock_skew = v;
    }
    if let Some(v) = args.jwt_jwks_refresh.or(file.jwt_jwks_refresh) {
        s.jwks_refresh_seconds = v;
    }
    if let Some(v) = args
        .jwt_principal_claim
        .take()
        .or(file.jwt_principal_claim.take())
    {
        s.principal_claim = v;
    }
    s.principal_map = file.jwt_principals.take().unwrap_or_default();
    s.allow_admin = args.jwt_allow_admin || file.jwt_allow_admin.unwrap_or(false);
    Ok(Some(s))
}

/// Identity endpoint settings from flags, variables and the file (flags and variables win).
fn identity_settings(
    args: &mut ServeArgs,
    file: &mut FileConfig,
) -> Result<Option<certvault_server::identity::IdentitySettings>> {
    let listen = args.identity_listen.or(file.identity_listen);
    let principal = args
        .identity_principal
        .take()
        .or(file.identity_principal.take());
    let (listen, principal) = match (listen, principal) {
        (None, None) => return Ok(None),
        (Some(l), Some(p)) => (l, p),
        (Some(_), None) => bail!("--identity-listen needs --identity-principal"),
        (None, Some(_)) => bail!("--identity-principal needs --identity-listen"),
    };
    let mut s = certvault_server::identity::IdentitySettings::new(listen, principal);
    if let Some(d) = args
        .identity_key_dir
        .take()
        .or(file.identity_key_dir.take())
    {
        s.key_dir = d;
    }
    if let Some(l) = args
        .identity_token_lifetime
        .or(file.identity_token_lifetime)
    {
        s.token_lifetime = l;
    }
    s.group_readable =
        args.identity_key_group_readable || file.identity_key_group_readable.unwrap_or(false);
    Ok(Some(s))
}

fn load_config(path: &Path) -> Result<FileConfig> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

fn valid_domain(d: &str) -> bool {
    !d.is_empty()
        && d.len() <= 253
        && d.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

async fn serve(mut args: ServeArgs) -> Result<()> {
    let mut file = match &args.config {
        Some(p) => load_config(p)?,
        None => FileConfig::default(),
    };
    let jwt = jwt_settings(&mut args, &mut file)?;
    let identity = identity_settings(&mut args, &mut file)?;
    let lifecycle = lifecycle_settings(&mut args, &mut file)?;
    if args.test_clock && std::env::var("CERTVAULT_ALLOW_TEST_CLOCK").as_deref() != Ok("1") {
        bail!(
            "--test-clock is for tests only and needs the environment variable CERTVAULT_ALLOW_TEST_CLOCK=1"
        );
    }
    let log = args
        .log
        .clone()
        .or(file.log.clone())
        .unwrap_or_else(|| "info".into());
    let json_logs = match args
        .log_format
        .clone()
        .or(file.log_format.clone())
        .as_deref()
    {
        None => args.log_json,
        Some("json") => true,
        Some("text") => false,
        Some(other) => bail!("--log-format must be json or text, not '{other}'"),
    };
    init_logging(&log, json_logs);
    let shutdown_grace = args.shutdown_grace.or(file.shutdown_grace).unwrap_or(30);
    if shutdown_grace > 3600 {
        bail!("--shutdown-grace must be at most 3600 seconds");
    }
    let metrics_listen = args.metrics_listen.or(file.metrics_listen).map(|addr| {
        certvault_server::metrics::MetricsListen {
            addr,
            public: args.metrics_listen_public || file.metrics_listen_public.unwrap_or(false),
        }
    });
    let base_domain = args
        .base_domain
        .or(file.base_domain)
        .unwrap_or_else(|| "certvault.localhost".into())
        .to_ascii_lowercase();
    if !valid_domain(&base_domain) {
        bail!("--base-domain '{base_domain}' is not a valid DNS name");
    }
    let recoverable_days = args
        .recoverable_days
        .or(file.recoverable_days)
        .unwrap_or(90);
    if !(7..=90).contains(&recoverable_days) {
        bail!("--recoverable-days must be from 7 to 90");
    }
    let audit_sync = match args
        .audit_sync
        .or(file.audit_sync.take())
        .as_deref()
        .unwrap_or("writes")
    {
        "writes" => certvault_server::AuditSync::Requested,
        "always" => certvault_server::AuditSync::Always,
        other => bail!("--audit-sync must be 'writes' or 'always', not '{other}'"),
    };
    let pkcs11 = match args.pkcs11_module.or(file.pkcs11_module) {
        Some(module) => Some(certvault_server::Pkcs11Options {
            module,
            token: args
                .pkcs11_token
                .or(file.pkcs11_token)
                .unwrap_or_else(|| "certvault".into()),
            pin_file: args.pkcs11_pin_file.or(file.pkcs11_pin_file),
            pin_env: Some("CERTVAULT_PKCS11_PIN".into()),
            pool_size: args
                .pkcs11_sessions
                .or(file.pkcs11_sessions)
                .unwrap_or(4)
                .clamp(1, 64),
        }),
        None => None,
    };
    let new_master_key = match args.master_key.or(file.master_key).as_deref() {
        None | Some("file") => certvault_server::masterkey::MasterKind::File,
        Some("pkcs11") if pkcs11.is_some() => certvault_server::masterkey::MasterKind::Pkcs11,
        Some("pkcs11") => bail!("--master-key pkcs11 needs --pkcs11-module"),
        Some(other) => bail!("--master-key must be file or pkcs11, not '{other}'"),
    };
    let opts = certvault_server::ServeOptions {
        data_dir: args
            .data_dir
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from("certvault-data")),
        database: args.database.or(file.database),
        listen: args
            .listen
            .or(file.listen)
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8443))),
        base_domain,
        public_port: args.public_port.or(file.public_port),
        max_body: args.max_body.or(file.max_body).unwrap_or(1024 * 1024),
        recoverable_days,
        pkcs11,
        new_master_key,
        jwt,
        identity,
        lifecycle,
        audit_sync,
        metrics_listen,
        metrics_certificate_series: args
            .metrics_certificate_series
            .or(file.metrics_certificate_series)
            .unwrap_or(certvault_server::metrics::DEFAULT_CERTIFICATE_SERIES),
        shutdown_grace: std::time::Duration::from_secs(shutdown_grace),
    };
    let clock: certvault_core::clock::SharedClock = if args.test_clock {
        say("!!! certvault runs with a TEST CLOCK: the admin API can move time forward.");
        say("!!! Never use --test-clock outside tests.");
        Arc::new(certvault_core::TestClock::new())
    } else {
        Arc::new(certvault_core::SystemClock)
    };
    let started = certvault_server::start(&opts, clock).await?;
    let port = started.addr.port();
    say(&format!("certvault listening on https://{}", started.addr));
    say(&format!("  data directory: {}", opts.data_dir.display()));
    say(&format!(
        "  database: {}",
        if opts.database.is_some() {
            "PostgreSQL"
        } else {
            "SQLite (in the data directory)"
        }
    ));
    say(&format!(
        "  CA certificate for clients: {}",
        started.ca_path.display()
    ));
    say(&format!(
        "  vault URLs: https://<vault>.{}:{port} (any other host name reaches the vault 'default')",
        opts.base_domain
    ));
    if let Some(a) = started.metrics_addr {
        say(&format!("  metrics (no token): http://{a}/metrics"));
    }
    if let Some(a) = started.identity_addr {
        say(&format!(
            "  managed identity endpoint: http://{a}/metadata/identity/oauth2/token"
        ));
        say(&format!(
            "    applications: IDENTITY_ENDPOINT=http://{a}/metadata/identity/oauth2/token IMDS_ENDPOINT=http://{a}"
        ));
    }
    match &started.new_admin_token {
        Some(t) => {
            say(&format!(
                "  bootstrap admin token (shown once; stored in {}):",
                started.token_path.display()
            ));
            say(&format!("    {t}"));
        }
        None => say(&format!(
            "  admin token: stored in {}",
            started.token_path.display()
        )),
    }
    tracing::info!(
        addr = %started.addr,
        backend = started.state.store.backend(),
        owner = %started.state.lifecycle.owner,
        "certvault started"
    );
    started.run(shutdown_signal()).await?;
    tracing::info!("certvault stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        else {
            let _ = ctrl_c.await;
            return;
        };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// Set once logging is set up with `--log-format json`.
static JSON_LOGS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Writes one line of the start-up banner to stderr: as is, or with `--log-format json` as a
/// JSON object shaped like the log lines (`timestamp`, `level`, `fields.message`, `target`),
/// so that every line the server writes parses as JSON.
fn say(line: &str) {
    say_at("INFO", line);
}

fn say_at(level: &str, line: &str) {
    if JSON_LOGS.load(std::sync::atomic::Ordering::Relaxed) {
        let ts = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        eprintln!(
            "{}",
            serde_json::json!({"timestamp": ts, "level": level, "fields": {"message": line}, "target": "certvault"})
        );
    } else {
        eprintln!("{line}");
    }
}

fn init_logging(filter: &str, json: bool) {
    JSON_LOGS.store(json, std::sync::atomic::Ordering::Relaxed);
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = rt.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve(*args).await,
            Command::Cert(cmd) => client::run_cert(cmd).await,
            Command::Admin(cmd) => client::run_admin(cmd).await,
            Command::Audit(cmd) => client::run_audit(cmd).await,
            Command::Channel(cmd) => client::run_channel(cmd).await,
            Command::Delivery(cmd) => client::run_delivery(cmd).await,
            Command::Key(cmd) => client::run_key(cmd).await,
            Command::Vault(cmd) => client::run_vault(cmd).await,
            Command::Principal(cmd) => client::run_principal(cmd).await,
            Command::Policy(cmd) => client::run_policy(cmd).await,
            Command::Openapi => {
                print!("{}", certvault_server::openapi::document_text());
                Ok(())
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            say_at("ERROR", &format!("error: {e:#}"));
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    const EXAMPLE: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/certvault.example.toml"
    );

    /// docs/certvault.example.toml parses with the real loader as it is, and with every
    /// commented-out key uncommented; and it names every setting of `certvault serve`.
    #[test]
    fn the_example_config_parses_and_names_every_setting() {
        let cfg = load_config(Path::new(EXAMPLE)).unwrap();
        assert_eq!(cfg.listen, Some(SocketAddr::from(([127, 0, 0, 1], 8443))));
        assert_eq!(cfg.shutdown_grace, Some(30));
        assert_eq!(cfg.log_format.as_deref(), Some("text"));
        let text = std::fs::read_to_string(EXAMPLE).unwrap();
        let uncommented: String = text
            .lines()
            .map(|l| {
                let rest = l.strip_prefix("# ").unwrap_or("");
                let key = rest.split(" = ").next().unwrap_or("");
                let is_key = !key.is_empty()
                    && rest.contains(" = ")
                    && (key
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
                        || key.starts_with('"'));
                if is_key || rest.starts_with('[') {
                    // drop a trailing comment after the value
                    rest.split("   #")
                        .next()
                        .unwrap_or(rest)
                        .trim_end()
                        .to_owned()
                } else {
                    l.to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        let dir = tempfile::tempdir().unwrap();
        let all = dir.path().join("all.toml");
        std::fs::write(&all, &uncommented).unwrap();
        let full = load_config(&all).unwrap_or_else(|e| panic!("{e:#}\n{uncommented}"));
        assert!(
            full.smtp_host.is_some()
                && full.jwt_principals.is_some()
                && full.metrics_listen.is_some()
        );
        let keys: std::collections::HashSet<&str> = uncommented
            .lines()
            .filter_map(|l| l.split(" = ").next())
            .collect();
        let cmd = <Cli as clap::CommandFactory>::command();
        let serve = cmd.find_subcommand("serve").unwrap();
        for arg in serve.get_arguments() {
            let id = arg.get_id().as_str();
            if ["config", "test_clock", "log_json", "help"].contains(&id) {
                continue;
            }
            assert!(
                keys.contains(id),
                "docs/certvault.example.toml does not name `{id}`"
            );
        }
    }
}
