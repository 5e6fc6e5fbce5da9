//! The three benchmarks of the foundation issue.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use http::{Method, StatusCode};
use serde_json::Value;

use crate::load::{self, GetOp, Load, Op, OpFuture, Rng, Stats, ms};
use crate::net::{Conn, Target};
use crate::seed::{self, Kty, Plan, cert_name};
use crate::server::Server;
use crate::{Common, check};

const API: &str = "api-version=7.4";

// ---------------------------------------------------------------------------------------------
// shared helpers

fn create_body(kty: Kty, name: &str) -> Result<Bytes> {
    let body = serde_json::json!({ "policy": kty.policy(&format!("CN={name}")) });
    Ok(Bytes::from(serde_json::to_vec(&body)?))
}

/// POST create, then GET pending until the status is no longer `inProgress`.
pub(crate) async fn create_and_wait(conn: &mut Conn, kty: Kty, name: &str) -> Result<u64> {
    create_body_and_wait(conn, create_body(kty, name)?, name).await
}

/// POST create with `body`, then GET pending until the status is no longer `inProgress`.
pub(crate) async fn create_body_and_wait(conn: &mut Conn, body: Bytes, name: &str) -> Result<u64> {
    let r = conn
        .request(
            Method::POST,
            &format!("/certificates/{name}/create?{API}"),
            Some(body),
        )
        .await?;
    if r.status != StatusCode::ACCEPTED {
        bail!("create answered {}", r.status);
    }
    let mut bytes = r.body.len() as u64;
    for _ in 0..10_000 {
        let p = conn
            .get_ok(&format!("/certificates/{name}/pending?{API}"))
            .await?;
        bytes += p.body.len() as u64;
        let v: Value = serde_json::from_slice(&p.body)?;
        match v["status"].as_str() {
            Some("inProgress") => tokio::time::sleep(Duration::from_millis(1)).await,
            Some("completed") => return Ok(bytes),
            other => bail!("operation ended with status {other:?}"),
        }
    }
    bail!("the operation stayed inProgress")
}

pub(crate) struct CreateOp {
    pub(crate) kty: Kty,
    pub(crate) tag: String,
}

impl Op for CreateOp {
    fn run<'a>(
        &'a self,
        conn: &'a mut Conn,
        w: usize,
        seq: u64,
        _rng: &'a mut Rng,
    ) -> OpFuture<'a> {
        Box::pin(async move {
            let name = format!("{}-w{w}-{seq}", self.tag);
            create_and_wait(conn, self.kty, &name).await
        })
    }
}

/// Creates certificates `0..n` through the API with `concurrency` connections.
async fn create_many(target: &Target, kty: Kty, n: usize, concurrency: usize) -> Result<f64> {
    let t = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..concurrency.max(1) {
        let mut conn = target.connect().await?;
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return Ok::<_, anyhow::Error>(());
                }
                create_and_wait(&mut conn, kty, &cert_name(i)).await?;
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(n as f64 / t.elapsed().as_secs_f64())
}

/// Reads one managed secret back and checks its shape (PEM with the private key first),
/// without printing it.
async fn check_secret(target: &Target, name: &str) -> Result<usize> {
    let mut c = target.connect().await?;
    let r = c.get_ok(&format!("/secrets/{name}?{API}")).await?;
    let v: Value = serde_json::from_slice(&r.body)?;
    if v["contentType"] != "application/x-pem-file" {
        bail!("secret {name}: unexpected contentType");
    }
    let value = v["value"].as_str().unwrap_or_default();
    if !value.starts_with("-----BEGIN PRIVATE KEY-----")
        || !value.contains("-----BEGIN CERTIFICATE-----")
    {
        bail!("secret {name}: not a PEM key + certificate");
    }
    Ok(r.body.len())
}

/// Lifecycle items not planned yet (due at 0, the mark of a new version) or being worked on,
/// read from the server's database file (a read-only WAL reader; `/metrics` would render a
/// series per certificate on every poll, a million of them here).
fn scheduler_backlog(data_dir: &std::path::Path) -> Result<u64> {
    let c = rusqlite::Connection::open_with_flags(
        data_dir.join("certvault.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )?;
    let n: i64 = c.query_row(
        "SELECT COUNT(*) FROM jobs WHERE due = 0 OR lease_owner IS NOT NULL",
        [],
        |r| r.get(0),
    )?;
    Ok(u64::try_from(n).unwrap_or(0))
}

fn secret_op(n: usize) -> Arc<dyn Op> {
    Arc::new(GetOp(move |rng: &mut Rng| {
        format!("/secrets/{}?{API}", cert_name(rng.below(n)))
    }))
}

pub(crate) fn healthz_op() -> Arc<dyn Op> {
    Arc::new(GetOp(|_: &mut Rng| "/healthz".to_owned()))
}

fn list_op() -> Arc<dyn Op> {
    Arc::new(GetOp(|_: &mut Rng| {
        format!("/certificates?{API}&maxresults=25")
    }))
}

pub(crate) async fn measure(
    label: &str,
    server: &Server,
    common: &Common,
    connections: usize,
    op: Arc<dyn Op>,
) -> Result<Stats> {
    measure_on(label, server, &server.target, common, connections, op).await
}

/// [`measure`] with requests sent to `target` (e.g. with another principal's token).
pub(crate) async fn measure_on(
    label: &str,
    server: &Server,
    target: &Target,
    common: &Common,
    connections: usize,
    op: Arc<dyn Op>,
) -> Result<Stats> {
    let l = Load {
        connections,
        warmup: common.warmup,
        duration: common.duration,
        server_pid: server.pid(),
    };
    let perf = match (&common.perf, server.pid()) {
        (Some((want, out)), Some(pid)) if label.contains(want.as_str()) => {
            let n = PERF_RUNS.fetch_add(1, Ordering::Relaxed);
            Some(spawn_perf(
                pid,
                common,
                &out.with_extension(format!("{n}.data")),
            )?)
        }
        _ => None,
    };
    let s = load::run(target, l, op, 0x5eed).await?;
    if let Some(p) = perf {
        p.await??;
    }
    println!("  {label:<34} {}", s.line());
    Ok(s)
}

static PERF_RUNS: AtomicUsize = AtomicUsize::new(0);

/// `perf record -g` on the server for the measurement window (starts after the warm-up).
fn spawn_perf(
    pid: u32,
    common: &Common,
    out: &std::path::Path,
) -> Result<tokio::task::JoinHandle<Result<()>>> {
    let delay = common.warmup + Duration::from_millis(100);
    let secs = (common.duration.as_secs_f64() - 0.3).max(0.5);
    let out = out.to_owned();
    Ok(tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        // CERTVAULT_BENCH_PERF_ARGS replaces the sampling options (e.g. "-F 299 --call-graph
        // dwarf,32768" for inclusive costs through Rust code, which has no frame pointers).
        let opts =
            std::env::var("CERTVAULT_BENCH_PERF_ARGS").unwrap_or_else(|_| "-F 999 -g".into());
        let st = tokio::process::Command::new("perf")
            .arg("record")
            .args(opts.split_whitespace())
            .args(["-p", &pid.to_string(), "-o"])
            .arg(&out)
            .args(["--", "sleep", &format!("{secs:.1}")])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .await?;
        eprintln!("    perf: {} ({st})", out.display());
        Ok(())
    }))
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

// ---------------------------------------------------------------------------------------------
// 1. GET secret

/// Target 1 settings.
#[derive(clap::Args, Debug)]
pub struct GetSecretArgs {
    /// Certificates created through the API before measuring.
    #[arg(long, default_value_t = 1000)]
    certs: usize,
    /// Concurrent keep-alive connections.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Key type of the certificates.
    #[arg(long, value_enum, default_value_t = Kty::Rsa)]
    kty: Kty,
    /// Alternating healthz/secret rounds (machine noise then hits both alike); the figures are
    /// the medians over the rounds.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Also measure both with `wrk` (a second opinion; wrk does not verify the server
    /// certificate), one round, same connections, 2 threads.
    #[arg(long)]
    wrk: bool,
    /// The access-control issue's variant: read the secrets as a principal whose only
    /// permission is `secrets: get` on the vault (policy check per request), require ≥ 0.4 ×
    /// /healthz and ≥ 10,000 req/s, and check afterwards that the audit trail verifies and holds
    /// exactly one record per request that principal sent.
    #[arg(long)]
    limited: bool,
}

/// A GET of a random secret that counts every request it sends.
struct CountingSecretOp {
    certs: usize,
    sent: Arc<std::sync::atomic::AtomicU64>,
}

impl Op for CountingSecretOp {
    fn run<'a>(&'a self, conn: &'a mut Conn, _w: usize, _s: u64, rng: &'a mut Rng) -> OpFuture<'a> {
        let path = format!("/secrets/{}?{API}", cert_name(rng.below(self.certs)));
        self.sent.fetch_add(1, Ordering::Relaxed);
        Box::pin(async move {
            let r = conn.get_ok(&path).await?;
            Ok(r.body.len() as u64)
        })
    }
}

/// Creates the principal `bench-reader` with only `secrets: get` on the vault `default`;
/// returns its token (never printed).
async fn limited_principal(target: &Target) -> Result<String> {
    let mut c = target.connect().await?;
    let r = c
        .request(
            Method::POST,
            "/admin/v1/principals",
            Some(Bytes::from_static(br#"{"name":"bench-reader"}"#)),
        )
        .await?;
    if r.status != StatusCode::CREATED {
        bail!("creating the principal answered {}", r.status);
    }
    let v: Value = serde_json::from_slice(&r.body)?;
    let token = v["token"]["token"]
        .as_str()
        .ok_or_else(|| anyhow!("no token in the principal's creation answer"))?
        .to_owned();
    let r = c
        .request(
            Method::PUT,
            "/admin/v1/vaults/default/access-policies/bench-reader",
            Some(Bytes::from_static(br#"{"secrets":["get"]}"#)),
        )
        .await?;
    if !r.status.is_success() {
        bail!("setting the access policy answered {}", r.status);
    }
    Ok(token)
}

/// Verifies the audit chain and counts the records of `principal` (through the export).
async fn audit_count(target: &Target, principal: &str) -> Result<(bool, u64)> {
    let mut c = target.connect().await?;
    let r = c
        .request(Method::POST, "/admin/v1/audit/verify", None)
        .await?;
    let v: Value = serde_json::from_slice(&r.body)?;
    let ok = v["ok"].as_bool() == Some(true);
    let r = c
        .request(
            Method::GET,
            &format!("/admin/v1/audit/export?principal={principal}"),
            None,
        )
        .await?;
    if r.status != StatusCode::OK {
        bail!("the audit export answered {}", r.status);
    }
    let n = r
        .body
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .count() as u64;
    Ok((ok, n))
}

/// Runs target 1.
pub async fn get_secret(common: &Common, a: &GetSecretArgs) -> Result<bool> {
    println!(
        "== get-secret: {} {} certificates (PEM secret with key), {} connections, TLS keep-alive, random access",
        a.certs,
        a.kty.label(),
        a.connections
    );
    let dir = common.tempdir("certvault-bench-get-")?;
    let data = dir.path().join("data");
    let mut server =
        Server::start(&common.server_bin, &data, &dir.path().join("server.log")).await?;
    let rate = create_many(&server.target, a.kty, a.certs, 32).await?;
    println!(
        "  created {} certificates through the API ({rate:.1}/s)",
        a.certs
    );
    let size = check_secret(&server.target, &cert_name(0)).await?;
    println!("  secret response size: {size} bytes (checked: PEM, key first)");
    let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let limited = if a.limited {
        let token = limited_principal(&server.target).await?;
        println!(
            "  reading as principal bench-reader (access policy: secrets get on vault default)"
        );
        Some(server.target.with_token(&token)?)
    } else {
        None
    };
    let mut health = Vec::new();
    let mut secret = Vec::new();
    for round in 0..a.rounds.max(1) {
        if a.rounds > 1 {
            println!("  round {}", round + 1);
        }
        health.push(
            measure(
                "GET /healthz (baseline)",
                &server,
                common,
                a.connections,
                healthz_op(),
            )
            .await?,
        );
        secret.push(match &limited {
            None => {
                measure(
                    "GET /secrets/{name}",
                    &server,
                    common,
                    a.connections,
                    secret_op(a.certs),
                )
                .await?
            }
            Some(t) => {
                measure_on(
                    "GET /secrets/{name} as bench-reader",
                    &server,
                    t,
                    common,
                    a.connections,
                    Arc::new(CountingSecretOp {
                        certs: a.certs,
                        sent: sent.clone(),
                    }),
                )
                .await?
            }
        });
    }
    if a.wrk {
        let h = run_wrk(&server, common, a.connections, 0, dir.path()).await?;
        let s = run_wrk(&server, common, a.connections, a.certs, dir.path()).await?;
        println!("  wrk: ratio secret/healthz {:.3}", s / h.max(1e-9));
    }
    let (rss, hwm) = server.memory_kib()?;
    println!(
        "  server memory: VmRSS {:.1} MiB, VmHWM {:.1} MiB",
        mib(rss),
        mib(hwm)
    );
    let audit = if a.limited {
        let (verified, records) = audit_count(&server.target, "bench-reader").await?;
        let sent = sent.load(Ordering::Relaxed);
        println!(
            "  audit trail: chain verified {verified}; {records} records of bench-reader for {sent} requests sent"
        );
        Some((verified, records, sent))
    } else {
        None
    };
    server.stop();
    let h = median_by(&health, Stats::rate);
    let s = median_by(&secret, Stats::rate);
    let p99 = median_by(&secret, |s| f64::from(s.p99));
    // The ratio of each round (adjacent windows), then the median.
    let mut ratios: Vec<f64> = secret
        .iter()
        .zip(&health)
        .map(|(s, h)| s.rate() / h.rate().max(1e-9))
        .collect();
    ratios.sort_by(f64::total_cmp);
    let ratio = ratios.get(ratios.len() / 2).copied().unwrap_or(0.0);
    // Noise-independent view: CPU time (server + load generator) per request.
    let mut cpu_ratios: Vec<f64> = secret
        .iter()
        .zip(&health)
        .filter_map(|(s, h)| {
            let (ss, sc) = s.cpu_us_per_op()?;
            let (hs, hc) = h.cpu_us_per_op()?;
            println!(
                "  cpu per request: /healthz server {hs:.1} us + client {hc:.1} us; secret server {ss:.1} us + client {sc:.1} us"
            );
            Some((hs + hc) / (ss + sc))
        })
        .collect();
    cpu_ratios.sort_by(f64::total_cmp);
    if let Some(r) = cpu_ratios.get(cpu_ratios.len() / 2) {
        println!(
            "  CPU-normalised ratio (healthz cpu/request over secret cpu/request, median): {r:.3}"
        );
    }
    if ratios.len() > 1 {
        println!(
            "  per-round ratios: {}",
            ratios
                .iter()
                .map(|r| format!("{r:.3}"))
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    println!("RESULT get-secret {}:", a.kty.label());
    let mut ok = check(
        "throughput >= 20,000 req/s",
        s >= 20_000.0,
        &format!("{s:.0} req/s"),
    );
    let want = if a.limited { 0.4 } else { 0.5 };
    ok &= check(
        &format!("ratio to /healthz >= {want}"),
        ratio >= want,
        &format!("median of per-round ratios {ratio:.3} (median rates {s:.0} / {h:.0})"),
    );
    ok &= check("p99 < 10 ms", p99 < 10_000.0, &ms(p99 as u32));
    if let Some((verified, records, sent)) = audit {
        ok &= check(
            "audit trail verifies and holds one record per request",
            verified && records == sent,
            &format!("verified {verified}, {records} records for {sent} requests"),
        );
    }
    Ok(ok)
}

/// The wrk script: the bearer token is read from the data directory inside wrk (never
/// printed); `CV_CERTS` = 0 requests /healthz, else a random managed secret.
const WRK_LUA: &str = r#"
local f = assert(io.open(os.getenv("CV_TOKEN_FILE")))
local token = f:read("*l")
f:close()
wrk.headers["Authorization"] = "Bearer " .. token
local n = tonumber(os.getenv("CV_CERTS"))
math.randomseed(os.time())
request = function()
  if n == 0 then
    return wrk.format("GET", "/healthz")
  end
  return wrk.format("GET", string.format("/secrets/c%07d?api-version=7.4", math.random(0, n - 1)))
end
"#;

/// Runs wrk (warm-up, then the window) and returns its requests/s.
async fn run_wrk(
    server: &Server,
    common: &Common,
    connections: usize,
    certs: usize,
    dir: &std::path::Path,
) -> Result<f64> {
    let script = dir.join("bench.lua");
    std::fs::write(&script, WRK_LUA)?;
    let url = format!("https://{}/", server.addr);
    let mut out = String::new();
    for (secs, keep) in [
        (common.warmup.as_secs_f64(), false),
        (common.duration.as_secs_f64(), true),
    ] {
        if secs < 1.0 && !keep {
            continue;
        }
        let o = tokio::process::Command::new("wrk")
            .args(["-t", "2", "-c", &connections.to_string()])
            .args(["-d", &format!("{}s", secs.ceil().max(1.0))])
            .arg("--latency")
            .arg("-s")
            .arg(&script)
            .arg(&url)
            .env("CV_TOKEN_FILE", server.data_dir.join("admin.token"))
            .env("CV_CERTS", certs.to_string())
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .context("running wrk (apt-get install wrk)")?;
        if !o.status.success() {
            bail!("wrk failed: {}", String::from_utf8_lossy(&o.stderr).trim());
        }
        if keep {
            out = String::from_utf8_lossy(&o.stdout).into_owned();
        }
    }
    let field = |prefix: &str| {
        out.lines()
            .map(str::trim)
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or("?")
            .to_owned()
    };
    let rps: f64 = field("Requests/sec:").parse().unwrap_or(0.0);
    let non2xx = field("Non-2xx");
    println!(
        "  wrk {:<30} {rps:>9.1}/s  p50 {:>8}  p90 {:>8}  p99 {:>8}{}",
        if certs == 0 {
            "GET /healthz"
        } else {
            "GET /secrets/{name}"
        },
        field("50%"),
        field("90%"),
        field("99%"),
        if non2xx == "?" {
            String::new()
        } else {
            format!(
                "  NON-2xx responses: {}",
                field("Non-2xx or 3xx responses:")
            )
        }
    );
    Ok(rps)
}

pub(crate) fn median_by(v: &[Stats], f: impl Fn(&Stats) -> f64) -> f64 {
    let mut x: Vec<f64> = v.iter().map(f).collect();
    x.sort_by(f64::total_cmp);
    x.get(x.len() / 2).copied().unwrap_or(0.0)
}

// ---------------------------------------------------------------------------------------------
// 2. create

/// Target 2 settings.
#[derive(clap::Args, Debug)]
pub struct CreateArgs {
    /// Concurrent clients (one connection each).
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// Key types to measure.
    #[arg(long, value_enum, num_args = 1.., default_values_t = [Kty::Ec, Kty::Rsa])]
    kty: Vec<Kty>,
    /// Threads of the in-process key generation baseline (the server has 2 cores).
    #[arg(long, default_value_t = 2)]
    baseline_threads: usize,
    /// Measurement seconds per window for RSA (its key generation rate is noisy; default 3 ×
    /// --duration).
    #[arg(long)]
    rsa_duration: Option<f64>,
    /// Rounds of (baseline window, server window).
    #[arg(long, default_value_t = 2)]
    rounds: usize,
}

/// In-process baseline: `threads` threads doing `f` for `d`; returns operations per second.
pub(crate) fn baseline_rate(threads: usize, d: Duration, f: fn() -> Result<()>) -> Result<f64> {
    let start = Instant::now();
    let end = start + d;
    let handles: Vec<_> = (0..threads.max(1))
        .map(|_| {
            std::thread::spawn(move || -> Result<u64> {
                let mut n = 0;
                // Count only what finishes inside the window.
                loop {
                    f()?;
                    if Instant::now() > end {
                        return Ok(n);
                    }
                    n += 1;
                }
            })
        })
        .collect();
    let mut total = 0;
    for h in handles {
        total += h.join().map_err(|_| anyhow!("baseline thread failed"))??;
    }
    Ok(total as f64 / d.as_secs_f64())
}

fn rsa_keygen() -> Result<()> {
    aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
        .map_err(|_| anyhow!("RSA key generation failed"))?;
    Ok(())
}

pub(crate) fn ec_keygen_and_sign() -> Result<()> {
    let k = certvault_crypto::PrivateKey::generate(Kty::Ec.alg()).map_err(|e| anyhow!("{e}"))?;
    let params = certvault_crypto::CertParams {
        subject: "CN=baseline".into(),
        not_before: 1_700_000_000,
        not_after: 1_800_000_000,
        ..certvault_crypto::CertParams::default()
    };
    certvault_crypto::self_signed(&k, &params).map_err(|e| anyhow!("{e}"))?;
    Ok(())
}

/// Runs target 2. Each round measures the in-process baseline (server idle) and then the
/// server, so that machine noise hits both alike; the figures are the totals over the rounds.
pub async fn create(common: &Common, a: &CreateArgs) -> Result<bool> {
    let mut ok = true;
    for &kty in &a.kty {
        let duration = match kty {
            Kty::Rsa => Duration::from_secs_f64(
                a.rsa_duration
                    .unwrap_or(common.duration.as_secs_f64() * 3.0)
                    .max(1.0),
            ),
            Kty::Ec => common.duration,
        };
        let rounds = a.rounds.max(1);
        println!(
            "== create: {} Self certificates, {} clients (POST create + GET pending), durable commits, {rounds} x {:.0}s windows",
            kty.label(),
            a.clients,
            duration.as_secs_f64()
        );
        let (base_label, f): (&str, fn() -> Result<()>) = match kty {
            Kty::Rsa => ("aws-lc-rs RSA-2048 key generation", rsa_keygen),
            Kty::Ec => (
                "EC P-256 key generation + self-signed certificate",
                ec_keygen_and_sign,
            ),
        };
        let threads = a.baseline_threads;
        let dir = common.tempdir("certvault-bench-create-")?;
        let mut server = Server::start(
            &common.server_bin,
            &dir.path().join("data"),
            &dir.path().join("server.log"),
        )
        .await?;
        let (mut base_ops, mut server_ops, mut errors) = (0.0, 0.0, 0);
        let (mut base_cpu, mut server_cpu) = (0.0, 0.0);
        for round in 0..rounds {
            let busy0 = load::machine_busy_secs();
            let self0 = load::cpu_secs("self");
            let base =
                tokio::task::spawn_blocking(move || baseline_rate(threads, duration, f)).await??;
            let d = duration.as_secs_f64();
            let own = self0.zip(load::cpu_secs("self")).map(|(a, b)| (b - a) / d);
            let other = busy0
                .zip(load::machine_busy_secs())
                .zip(own)
                .map(|((a, b), o)| ((b - a) / d - o).max(0.0));
            let cores = |c: Option<f64>| c.map_or_else(|| "?".to_owned(), |c| format!("{c:.2}"));
            if let Some(o) = own {
                base_cpu += o * d;
            }
            println!(
                "  round {}: baseline in-process {base_label}, {threads} threads: {base:.1}/s  (cpu: baseline {} other {})",
                round + 1,
                cores(own),
                cores(other)
            );
            base_ops += base * duration.as_secs_f64();
            let l = Load {
                connections: a.clients,
                warmup: common.warmup,
                duration,
                server_pid: server.pid(),
            };
            let op = Arc::new(CreateOp {
                kty,
                tag: format!("r{round}"),
            });
            let s = load::run(&server.target, l, op, 7 + round as u64).await?;
            println!(
                "  round {}: {:<25} {}",
                round + 1,
                "create + poll (per cert)",
                s.line()
            );
            server_ops += s.ops as f64;
            if let Some(c) = s.server_cores {
                server_cpu += c * duration.as_secs_f64();
            }
            errors += s.errors;
        }
        server.stop();
        let secs = duration.as_secs_f64() * rounds as f64;
        let rate = server_ops / secs;
        let base = base_ops / secs;
        if base_cpu > 0.0 && server_cpu > 0.0 {
            println!(
                "  per CPU-second: server {:.1} certificates, baseline {:.1} (ratio {:.3}; noise-independent view)",
                server_ops / server_cpu,
                base_ops / base_cpu,
                (server_ops / server_cpu) / (base_ops / base_cpu)
            );
        }
        println!("RESULT create {}:", kty.label());
        match kty {
            Kty::Ec => {
                ok &= check(
                    "certificates/s >= 1,000",
                    rate >= 1000.0,
                    &format!(
                        "{rate:.0}/s (in-process keygen+sign {base:.0}/s, ratio {:.3})",
                        rate / base
                    ),
                );
            }
            Kty::Rsa => {
                let ratio = rate / base;
                ok &= check(
                    "ratio to in-process RSA-2048 keygen (2 threads) >= 0.8",
                    ratio >= 0.8,
                    &format!("{rate:.1}/s / {base:.1}/s = {ratio:.3}"),
                );
            }
        }
        if errors > 0 {
            ok = check("no errors", false, &format!("{errors} errors")) && ok;
        }
    }
    Ok(ok)
}

// ---------------------------------------------------------------------------------------------
// 3. scale

/// How the million versions are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Shape {
    /// `--base-certs` certificates with `--total / --base-certs` versions each (deep history).
    Versions,
    /// `--total` certificates with one version each.
    Certs,
}

/// Target 3 settings.
#[derive(clap::Args, Debug)]
pub struct ScaleArgs {
    /// Certificate versions in the store in the large phase.
    #[arg(long, default_value_t = 1_000_000)]
    total: usize,
    /// Certificates of the baseline phase (one version each).
    #[arg(long, default_value_t = 1000)]
    base_certs: usize,
    /// Layout of the large phase.
    #[arg(long, value_enum, default_value_t = Shape::Versions)]
    shape: Shape,
    /// Concurrent keep-alive connections for GET secret.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Key type of the seeded certificates.
    #[arg(long, value_enum, default_value_t = Kty::Rsa)]
    kty: Kty,
    /// Distinct key pairs the seeded versions cycle through (each version is sealed on its own).
    #[arg(long, default_value_t = 16)]
    key_pool: usize,
    /// Alternating rounds (store A, then store B).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Scrape `GET /metrics` (admin token) of both servers every 500 ms during the measured
    /// rounds; prints each server's scrape latency p50/p99, body size and series counts.
    #[arg(long)]
    scrape_metrics: bool,
    /// Passed to both servers as `--metrics-certificate-series` (default: the server's).
    #[arg(long)]
    metrics_certificate_series: Option<usize>,
}

/// `GET /metrics` every 500 ms on one server until stopped: latencies and the last body.
struct Scraper {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<ScrapeOut>>,
}

#[derive(Default)]
struct ScrapeOut {
    /// Microseconds per scrape.
    lat: Vec<u32>,
    /// Body bytes per scrape.
    sizes: Vec<usize>,
    /// The last exposition.
    last: Bytes,
}

impl Scraper {
    fn start(target: &Target) -> Self {
        let target = target.clone();
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            let mut out = ScrapeOut::default();
            let mut conn = target.connect().await?;
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stopped.changed() => break,
                }
                let t = Instant::now();
                let r = conn.get_ok("/metrics").await?;
                out.lat
                    .push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX));
                out.sizes.push(r.body.len());
                out.last = r.body;
            }
            Ok(out)
        });
        Self { stop, task }
    }

    /// Stops it and prints its figures under `label`.
    async fn finish(self, label: &str) -> Result<()> {
        let _ = self.stop.send(true);
        let mut out = self.task.await.map_err(|e| anyhow!("scraper: {e}"))??;
        out.lat.sort_unstable();
        let pct = |p: f64| -> u32 {
            let i = ((out.lat.len() as f64) * p).ceil() as usize;
            out.lat
                .get(i.clamp(1, out.lat.len().max(1)) - 1)
                .copied()
                .unwrap_or(0)
        };
        let text = String::from_utf8_lossy(&out.last);
        let value = |metric: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(metric)?.strip_prefix(' '))
                .unwrap_or("-")
                .to_owned()
        };
        let expiry_series = text
            .lines()
            .filter(|l| l.starts_with("certvault_certificate_expiry_timestamp_seconds{"))
            .count();
        println!(
            "  /metrics [{label}]: {} scrapes every 500 ms, latency p50 {} p99 {} max {}; body max {:.1} KiB (last {:.1} KiB); certvault_certificates {}, expiry series {expiry_series}, certvault_certificate_series_omitted {}",
            out.lat.len(),
            ms(pct(0.5)),
            ms(pct(0.99)),
            ms(out.lat.last().copied().unwrap_or(0)),
            out.sizes.iter().copied().max().unwrap_or(0) as f64 / 1024.0,
            out.last.len() as f64 / 1024.0,
            value("certvault_certificates"),
            value("certvault_certificate_series_omitted"),
        );
        Ok(())
    }
}

/// One store under test: its server and its measurements.
struct Phase {
    label: String,
    server: Server,
    live: usize,
    secret: Vec<Stats>,
    list: Vec<Stats>,
    rss_idle: u64,
}

impl Phase {
    async fn start(
        common: &Common,
        dir: &std::path::Path,
        live: usize,
        label: String,
        series: Option<usize>,
    ) -> Result<Self> {
        let series = series.map(|n| n.to_string());
        let mut args = Vec::new();
        if let Some(n) = &series {
            args.extend(["--metrics-certificate-series", n.as_str()]);
        }
        let server = Server::start_with(
            &common.server_bin,
            &dir.join("data"),
            &dir.join("server.log"),
            &args,
            &[],
        )
        .await?;
        let (rss_idle, _) = server.memory_kib()?;
        // The seeded keys open and serve (first and last certificate).
        check_secret(&server.target, &cert_name(0)).await?;
        check_secret(&server.target, &cert_name(live - 1)).await?;
        // Seeding through the store leaves every certificate's lifecycle item due at once (the
        // store marks an item due when a version is added; the engine then plans it). The
        // targets are about a store at rest, so the measurement starts once the engine has
        // planned them all; how long that took is a figure of its own (a bulk import).
        let t0 = Instant::now();
        loop {
            let due = scheduler_backlog(&dir.join("data"))?;
            if due == 0 {
                break;
            }
            if t0.elapsed() > Duration::from_secs(1800) {
                bail!("[{label}] the lifecycle engine still has {due} items due after 30 min");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        println!(
            "  [{label}] lifecycle engine planned the seeded certificates in {:.1}s ({:.0}/s)",
            t0.elapsed().as_secs_f64(),
            live as f64 / t0.elapsed().as_secs_f64().max(0.001)
        );
        Ok(Self {
            label,
            server,
            live,
            secret: Vec::new(),
            list: Vec::new(),
            rss_idle,
        })
    }

    async fn round(&mut self, common: &Common, connections: usize) -> Result<()> {
        let label = &self.label;
        self.secret.push(
            measure(
                &format!("GET /secrets/{{name}} [{label}]"),
                &self.server,
                common,
                connections,
                secret_op(self.live),
            )
            .await?,
        );
        self.list.push(
            measure(
                &format!("GET /certificates?maxresults=25 [{label}]"),
                &self.server,
                common,
                1,
                list_op(),
            )
            .await?,
        );
        Ok(())
    }
}

async fn seed_dir(dir: &std::path::Path, a: &ScaleArgs, plans: &[Plan], what: &str) -> Result<u64> {
    let data = dir.join("data");
    seed::seed(&data, a.kty, plans, a.key_pool)
        .await
        .with_context(|| format!("seeding {what}"))?;
    let db = std::fs::metadata(data.join("certvault.db"))
        .map(|m| m.len())
        .unwrap_or(0);
    println!("  {what}: database {:.1} MiB", db as f64 / 1024.0 / 1024.0);
    Ok(db)
}

fn median_u32(v: &[Stats], f: impl Fn(&Stats) -> u32) -> u32 {
    let mut x: Vec<u32> = v.iter().map(f).collect();
    x.sort_unstable();
    x.get(x.len() / 2).copied().unwrap_or(0)
}

/// Runs target 3: a store with `--base-certs` certificates (A) and one with `--total`
/// versions (B), both served at once and measured in alternating rounds so that machine noise
/// hits both alike.
pub async fn scale(common: &Common, a: &ScaleArgs) -> Result<bool> {
    let base = a.base_certs.max(1);
    let (plan, live) = match a.shape {
        Shape::Versions => {
            let per = (a.total / base).max(1);
            (
                Plan {
                    certs: 0..base,
                    versions: per - 1,
                },
                base,
            )
        }
        Shape::Certs => (
            Plan {
                certs: base..a.total.max(base),
                versions: 1,
            },
            a.total.max(base),
        ),
    };
    let total = base + plan.certs.len() * plan.versions;
    println!(
        "== scale: {} {} versions in the store ({}) vs {base} certificates; GET secret with {} connections, first list page, RSS; {} rounds",
        total,
        a.kty.label(),
        match a.shape {
            Shape::Versions => format!("{base} certificates x {} versions", plan.versions + 1),
            Shape::Certs => format!("{live} certificates x 1 version"),
        },
        a.connections,
        a.rounds.max(1)
    );
    let base_plan = Plan {
        certs: 0..base,
        versions: 1,
    };
    let dir_a = common.tempdir("certvault-bench-scale-a-")?;
    let dir_b = common.tempdir("certvault-bench-scale-b-")?;
    println!("  store A: seeding {base} certificates x 1 version");
    seed_dir(dir_a.path(), a, std::slice::from_ref(&base_plan), "store A").await?;
    println!(
        "  store B: seeding {base} certificates x 1 version, then {} more versions",
        plan.certs.len() * plan.versions
    );
    seed_dir(dir_b.path(), a, &[base_plan, plan], "store B").await?;
    let series = a.metrics_certificate_series;
    let mut pa = Phase::start(common, dir_a.path(), base, format!("A: {base}"), series).await?;
    let mut pb = Phase::start(common, dir_b.path(), live, format!("B: {total}"), series).await?;
    let scrapers = a.scrape_metrics.then(|| {
        (
            Scraper::start(&pa.server.target),
            Scraper::start(&pb.server.target),
        )
    });
    for round in 0..a.rounds.max(1) {
        println!("  round {}", round + 1);
        pa.round(common, a.connections).await?;
        pb.round(common, a.connections).await?;
    }
    if let Some((sa, sb)) = scrapers {
        sa.finish(&pa.label).await?;
        sb.finish(&pb.label).await?;
    }
    let (rss_b, hwm_b) = pb.server.memory_kib()?;
    let (rss_a, hwm_a) = pa.server.memory_kib()?;
    println!(
        "  server memory: B VmRSS idle {:.1} MiB, after load {:.1} MiB, VmHWM {:.1} MiB; A VmRSS {:.1} MiB, VmHWM {:.1} MiB",
        mib(pb.rss_idle),
        mib(rss_b),
        mib(hwm_b),
        mib(rss_a),
        mib(hwm_a)
    );
    pa.server.stop();
    pb.server.stop();

    println!(
        "RESULT scale {} ({total} versions, shape {:?}):",
        a.kty.label(),
        a.shape
    );
    let mut ratios: Vec<f64> = pb
        .secret
        .iter()
        .zip(&pa.secret)
        .map(|(b, a)| f64::from(b.p99) / f64::from(a.p99.max(1)))
        .collect();
    println!(
        "  per-round p99 ratios B/A: {}",
        ratios
            .iter()
            .map(|r| format!("{r:.2}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    ratios.sort_by(f64::total_cmp);
    let ratio = ratios.get(ratios.len() / 2).copied().unwrap_or(f64::MAX);
    let list_p99 = median_u32(&pb.list, |s| s.p99);
    let mut ok = check(
        "GET secret p99 <= 2 x the 1,000-certificate p99",
        ratio <= 2.0,
        &format!(
            "median per-round ratio {ratio:.2} (median p99 {} vs {}; throughput {:.0} vs {:.0} req/s)",
            ms(median_u32(&pb.secret, |s| s.p99)),
            ms(median_u32(&pa.secret, |s| s.p99)),
            median_by(&pb.secret, Stats::rate),
            median_by(&pa.secret, Stats::rate)
        ),
    );
    ok &= check(
        "first list page p99 < 5 ms",
        list_p99 < 5000,
        &format!(
            "median p50 {} p99 {} (store A: p50 {} p99 {})",
            ms(median_u32(&pb.list, |s| s.p50)),
            ms(list_p99),
            ms(median_u32(&pa.list, |s| s.p50)),
            ms(median_u32(&pa.list, |s| s.p99))
        ),
    );
    ok &= check(
        "server RSS < 200 MB",
        (hwm_b.max(rss_b) as f64) * 1024.0 < 200e6,
        &format!(
            "VmHWM {:.1} MiB, VmRSS {:.1} MiB (idle {:.1}); store A VmHWM {:.1} MiB",
            mib(hwm_b),
            mib(rss_b),
            mib(pb.rss_idle),
            mib(hwm_a)
        ),
    );
    Ok(ok)
}
