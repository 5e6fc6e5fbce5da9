//! certvault benchmarks: a small closed-loop load generator (tokio + hyper HTTP/1.1 keep-alive +
//! rustls with the server's CA) that starts the release server itself on a free loopback port
//! with a temporary data directory, warms up, measures for a fixed time and prints each figure
//! with a baseline measured in the same run, the ratio, and pass/fail against the target.
//!
//! Secrets (the admin token, keys, secret values) are never printed.

mod benches;
mod lifecycle;
mod load;
mod net;
mod pg;
mod seed;
mod server;
mod sign;
mod ui;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "certvault-bench",
    about = "certvault benchmarks (see bench/RESULTS.md)"
)]
struct Cli {
    /// The server binary.
    #[arg(long, global = true, default_value_os_t = default_server_bin())]
    server_bin: PathBuf,
    /// Warm-up seconds before each measurement window.
    #[arg(long, global = true, default_value_t = 3.0)]
    warmup: f64,
    /// Seconds per measured figure.
    #[arg(long, global = true, default_value_t = 10.0)]
    duration: f64,
    /// Worker threads of the load generator's runtime (it shares the machine with the server).
    #[arg(long, global = true, default_value_t = 2)]
    client_threads: usize,
    /// Directory for the temporary data directories (default: the system temp directory).
    #[arg(long, global = true)]
    work_dir: Option<PathBuf>,
    /// Profile the server with `perf record -g` during each measurement window whose label
    /// contains this text; the data goes to `--perf-out`.
    #[arg(long, global = true)]
    perf: Option<String>,
    /// Where `--perf` writes (one file per profiled window, suffixed with a counter).
    #[arg(long, global = true, default_value = "/tmp/certvault-bench-perf.data")]
    perf_out: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Target 1: GET managed secret (PEM with key) vs GET /healthz, same client, same run.
    GetSecret(benches::GetSecretArgs),
    /// Target 2: create self-signed certificates through the API (create + poll pending).
    Create(benches::CreateArgs),
    /// Target 3: GET secret, list and RSS with many certificate versions in the store.
    Scale(benches::ScaleArgs),
    /// Keys issue: ES256 and RS256 sign through the API vs /healthz and in-process signing.
    Sign(sign::SignArgs),
    /// Lifecycle issue: one scheduler pass over a million certificates vs a store of due items.
    Scheduler(lifecycle::SchedulerArgs),
    /// Lifecycle issue: due EC P-256 renewals through the engine (test clock).
    Renewals(lifecycle::RenewalsArgs),
    /// Lifecycle issue: signed webhook deliveries to a local receiver vs direct POSTs.
    Webhooks(lifecycle::WebhooksArgs),
    /// Web console issue: the certificate list page with 100,000 certificates vs /healthz.
    Ui(ui::UiArgs),
    /// PostgreSQL issue: GET secret, create throughput and per-request costs on SQLite and on
    /// PostgreSQL (private testkit server) in the same run.
    Pg(pg::PgArgs),
}

fn default_server_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/certvault")
}

/// Settings shared by all benchmarks.
#[derive(Debug, Clone)]
pub struct Common {
    /// The server binary.
    pub server_bin: PathBuf,
    /// Warm-up.
    pub warmup: Duration,
    /// Measurement window.
    pub duration: Duration,
    /// Where temporary directories go.
    pub work_dir: Option<PathBuf>,
    /// Windows to profile (label substring) and where to write.
    pub perf: Option<(String, PathBuf)>,
}

impl Common {
    /// A fresh temporary directory (removed when dropped).
    pub fn tempdir(&self, prefix: &str) -> anyhow::Result<tempfile::TempDir> {
        let mut b = tempfile::Builder::new();
        b.prefix(prefix);
        Ok(match &self.work_dir {
            Some(d) => {
                std::fs::create_dir_all(d)?;
                b.tempdir_in(d)?
            }
            None => b.tempdir()?,
        })
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let common = Common {
        server_bin: cli.server_bin.clone(),
        warmup: Duration::from_secs_f64(cli.warmup.max(0.0)),
        duration: Duration::from_secs_f64(cli.duration.max(0.5)),
        work_dir: cli.work_dir.clone(),
        perf: cli.perf.clone().map(|p| (p, cli.perf_out.clone())),
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cli.client_threads.max(1))
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    print_machine();
    let r = rt.block_on(async move {
        match cli.cmd {
            Cmd::GetSecret(a) => benches::get_secret(&common, &a).await,
            Cmd::Create(a) => benches::create(&common, &a).await,
            Cmd::Scale(a) => benches::scale(&common, &a).await,
            Cmd::Sign(a) => sign::sign(&common, &a).await,
            Cmd::Scheduler(a) => lifecycle::scheduler(&common, &a).await,
            Cmd::Renewals(a) => lifecycle::renewals(&common, &a).await,
            Cmd::Webhooks(a) => lifecycle::webhooks(&common, &a).await,
            Cmd::Ui(a) => ui::ui(&common, &a).await,
            Cmd::Pg(a) => pg::pg(&common, &a).await,
        }
    });
    match r {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn print_machine() {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "?".into());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .unwrap_or(0);
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    println!(
        "machine: {cpus} CPUs ({cpu}), {:.1} GiB RAM",
        mem as f64 / 1024.0 / 1024.0
    );
}

/// Prints one target check and returns whether it passed.
pub fn check(label: &str, ok: bool, detail: &str) -> bool {
    println!("  {} {label}: {detail}", if ok { "PASS" } else { "FAIL" });
    ok
}
