//! The `certvault` binary: `certvault serve` runs the server; the other subcommands are a client
//! of a running server over HTTPS.
#![forbid(unsafe_code)]

mod client;

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
    Serve(ServeArgs),
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
}

/// Settings of `certvault serve`; each also reads a `CERTVAULT_*` variable and a key of the
/// `--config` TOML file (flags and variables win over the file).
#[derive(clap::Args, Debug)]
struct ServeArgs {
    /// Data directory (database, master key, admin token, TLS files). Default ./certvault-data.
    #[arg(long, env = "CERTVAULT_DATA_DIR")]
    data_dir: Option<PathBuf>,
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
    /// TOML configuration file.
    #[arg(long, env = "CERTVAULT_CONFIG")]
    config: Option<PathBuf>,
    /// Log filter (e.g. info, debug, certvault_server=debug). Default info.
    #[arg(long, env = "CERTVAULT_LOG")]
    log: Option<String>,
    /// Log as JSON lines.
    #[arg(long, env = "CERTVAULT_LOG_JSON")]
    log_json: bool,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    listen: Option<SocketAddr>,
    base_domain: Option<String>,
    public_port: Option<u16>,
    max_body: Option<usize>,
    recoverable_days: Option<i64>,
    log: Option<String>,
    pkcs11_module: Option<PathBuf>,
    pkcs11_token: Option<String>,
    pkcs11_pin_file: Option<PathBuf>,
    pkcs11_sessions: Option<usize>,
    master_key: Option<String>,
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

async fn serve(args: ServeArgs) -> Result<()> {
    let file = match &args.config {
        Some(p) => load_config(p)?,
        None => FileConfig::default(),
    };
    let log = args
        .log
        .clone()
        .or(file.log.clone())
        .unwrap_or_else(|| "info".into());
    init_logging(&log, args.log_json);
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
    };
    let clock: certvault_core::clock::SharedClock = Arc::new(certvault_core::SystemClock);
    let started = certvault_server::start(&opts, clock).await?;
    let port = started.addr.port();
    eprintln!("certvault listening on https://{}", started.addr);
    eprintln!("  data directory: {}", opts.data_dir.display());
    eprintln!(
        "  CA certificate for clients: {}",
        started.ca_path.display()
    );
    eprintln!(
        "  vault URLs: https://<vault>.{}:{port} (any other host name reaches the vault 'default')",
        opts.base_domain
    );
    match &started.new_admin_token {
        Some(t) => {
            eprintln!(
                "  bootstrap admin token (shown once; stored in {}):",
                started.token_path.display()
            );
            eprintln!("    {t}");
        }
        None => eprintln!("  admin token: stored in {}", started.token_path.display()),
    }
    tracing::info!(addr = %started.addr, "certvault started");
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

fn init_logging(filter: &str, json: bool) {
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
            Command::Serve(args) => serve(args).await,
            Command::Cert(cmd) => client::run_cert(cmd).await,
            Command::Admin(cmd) => client::run_admin(cmd).await,
            Command::Key(cmd) => client::run_key(cmd).await,
            Command::Vault(cmd) => client::run_vault(cmd).await,
            Command::Principal(cmd) => client::run_principal(cmd).await,
            Command::Policy(cmd) => client::run_policy(cmd).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
