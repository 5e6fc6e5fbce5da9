//! Lifecycle benchmarks (issue 5): a scheduler pass over a million certificates, due EC P-256
//! renewals through the real engine, and webhook delivery throughput to a local receiver.
//! Each figure is printed with a baseline measured in the same run.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use certvault_store::{Scheduler, SqliteStore};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::task::JoinSet;

use crate::net::Target;
use crate::seed::Kty;
use crate::server::Server;
use crate::{Common, check};

const DAY: i64 = 86_400;

// ---------------------------------------------------------------------------------------------
// scheduler pass

/// Scheduler pass settings.
#[derive(clap::Args, Debug)]
pub struct SchedulerArgs {
    /// Certificates (and scheduler rows) in the large store.
    #[arg(long, default_value_t = 1_000_000)]
    pub certs: usize,
    /// Items due in each pass.
    #[arg(long, default_value_t = 1_000)]
    pub due: usize,
    /// Measured passes per store (the baseline store has a tenth of the certificates and the
    /// same number of due items).
    #[arg(long, default_value_t = 21)]
    pub rounds: usize,
}

const NOW: i64 = 2_000_000_000;

/// Writes a store with `certs` certificates, each with its scheduler row; `due` of them due at
/// `NOW`, the others spread over the next year.
fn fill(path: &Path, certs: usize, due: usize) -> Result<()> {
    SqliteStore::open(path).map_err(|e| anyhow!("{e}"))?.close();
    let mut c = rusqlite::Connection::open(path)?;
    c.pragma_update(None, "synchronous", "OFF")?;
    let tx = c.transaction()?;
    tx.execute(
        "INSERT INTO vaults (id, name, name_key, wrapped_key, recoverable_days, created) \
         VALUES (1, 'bench', 'bench', x'00', 90, 0)",
        [],
    )?;
    let every = (certs / due.max(1)).max(1);
    {
        let mut ins_c = tx.prepare(
            "INSERT INTO certificates (id, vault_id, name, name_key, policy, policy_created, \
             policy_updated, created, updated) VALUES (?1, 1, ?2, ?2, '{}', 0, 0, 0, 0)",
        )?;
        let mut ins_j = tx.prepare(
            "INSERT INTO jobs (kind, subject, cert_id, due, gen) VALUES ('cert', ?1, ?2, ?3, 1)",
        )?;
        let mut made_due = 0;
        for i in 0..certs {
            let id = i64::try_from(i + 1)?;
            let name = format!("c{i:07}");
            ins_c.execute(rusqlite::params![id, name])?;
            let t = if i % every == 0 && made_due < due {
                made_due += 1;
                NOW - 1 - (id % 3600)
            } else {
                NOW + 1 + (id.wrapping_mul(7919) % (365 * DAY))
            };
            ins_j.execute(rusqlite::params![id.to_string(), id, t])?;
        }
    }
    tx.commit()?;
    Ok(())
}

fn reset(path: &Path) -> Result<usize> {
    let c = rusqlite::Connection::open(path)?;
    c.busy_timeout(Duration::from_secs(30))?;
    Ok(c.execute(
        "UPDATE jobs SET due = ?1, lease_owner = NULL, lease_until = NULL WHERE lease_owner IS NOT NULL",
        [NOW - 1],
    )?)
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v.get(i).copied().unwrap_or(0.0)
}

/// Times `rounds` claims of all due items on the store at `path`; returns the pass times (ms)
/// and the empty-pass times (ms).
async fn passes(path: &Path, due: usize, rounds: usize) -> Result<(Vec<f64>, Vec<f64>)> {
    let store = SqliteStore::open(path).map_err(|e| anyhow!("{e}"))?;
    let limit = i64::try_from(due * 10)?;
    let (mut full, mut empty) = (Vec::new(), Vec::new());
    for round in 0..=rounds {
        let t = Instant::now();
        let got = store
            .claim_due(NOW, "bench", 300, limit)
            .await
            .map_err(|e| anyhow!("{e}"))?;
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        if got.len() != due {
            bail!("a pass found {} due items, expected {due}", got.len());
        }
        let t = Instant::now();
        let none = store
            .claim_due(NOW, "bench", 300, limit)
            .await
            .map_err(|e| anyhow!("{e}"))?;
        let ms_empty = t.elapsed().as_secs_f64() * 1000.0;
        if !none.is_empty() {
            bail!("claimed items were claimed again");
        }
        if round > 0 {
            full.push(ms);
            empty.push(ms_empty);
        }
        let p = path.to_owned();
        tokio::task::spawn_blocking(move || reset(&p)).await??;
    }
    store.close();
    Ok((full, empty))
}

/// A scheduler pass (claim every due item) with `certs` certificates vs a store holding only
/// the due items.
pub async fn scheduler(common: &Common, a: &SchedulerArgs) -> Result<bool> {
    println!(
        "== scheduler pass: {} certificates, {} due, durable claim (one write transaction), {} rounds",
        a.certs, a.due, a.rounds
    );
    let dir = common.tempdir("certvault-bench-sched-")?;
    let big = dir.path().join("big.db");
    let small = dir.path().join("small.db");
    let t = Instant::now();
    {
        let (b, s, n, d) = (big.clone(), small.clone(), a.certs, a.due);
        tokio::task::spawn_blocking(move || -> Result<()> {
            fill(&b, n, d)?;
            fill(&s, (n / 10).max(d), d)
        })
        .await??;
    }
    println!("  filled both stores in {:.1}s", t.elapsed().as_secs_f64());
    let (mut base, mut base_empty) = passes(&small, a.due, a.rounds).await?;
    let (mut big_full, mut big_empty) = passes(&big, a.due, a.rounds).await?;
    let (b50, b_max) = (pct(&mut base, 0.5), pct(&mut base, 1.0));
    let (f50, f90, f_max) = (
        pct(&mut big_full, 0.5),
        pct(&mut big_full, 0.9),
        pct(&mut big_full, 1.0),
    );
    println!(
        "  baseline ({} rows, {} due): pass p50 {b50:.2} ms, max {b_max:.2} ms; empty pass p50 {:.3} ms",
        (a.certs / 10).max(a.due),
        a.due,
        pct(&mut base_empty, 0.5)
    );
    let (mut sel, bp) = (Vec::new(), big.clone());
    for _ in 0..a.rounds {
        let p = bp.clone();
        let ms = tokio::task::spawn_blocking(move || -> Result<f64> {
            let c = rusqlite::Connection::open_with_flags(
                &p,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
            )?;
            let mut st = c.prepare(certvault_store::CLAIM_SELECT)?;
            let t = Instant::now();
            let n = st
                .query_map(rusqlite::params![NOW, 1_000_000i64], |r| r.get::<_, i64>(0))?
                .count();
            let ms = t.elapsed().as_secs_f64() * 1000.0;
            if n == 0 {
                bail!("nothing due");
            }
            Ok(ms)
        })
        .await??;
        sel.push(ms);
    }
    println!(
        "  {} rows: finding the due items alone (the claim's SELECT, read-only): p50 {:.2} ms",
        a.certs,
        pct(&mut sel, 0.5)
    );
    println!(
        "  {} rows, {} due:           pass p50 {f50:.2} ms, p90 {f90:.2} ms, max {f_max:.2} ms; empty pass p50 {:.3} ms",
        a.certs,
        a.due,
        pct(&mut big_empty, 0.5)
    );
    println!("RESULT scheduler:");
    let ok = check(
        "pass finding the due items < 50 ms (p90)",
        f90 < 50.0,
        &format!(
            "p50 {f50:.2} ms, p90 {f90:.2} ms (baseline p50 {b50:.2} ms, ratio {:.2})",
            f50 / b50.max(1e-9)
        ),
    );
    println!(
        "  note: 10x the certificates with the same due items costs {:.2}x (finding them is the \
         index range scan above; the rest is writing {} leases, one table page each)",
        f50 / b50.max(1e-9),
        a.due
    );
    Ok(ok)
}

// ---------------------------------------------------------------------------------------------
// API helpers

async fn send(
    conn: &mut crate::net::Conn,
    m: Method,
    path: &str,
    body: &serde_json::Value,
) -> Result<crate::net::Resp> {
    let r = conn
        .request(m, path, Some(Bytes::from(body.to_string())))
        .await?;
    if !r.status.is_success() {
        bail!(
            "{path} answered {}: {}",
            r.status,
            String::from_utf8_lossy(&r.body)
        );
    }
    Ok(r)
}

/// Creates certificates `0..n` (EC P-256, Self, 12 months) with `clients` connections.
pub(crate) async fn create_certs(
    target: &Target,
    n: usize,
    clients: usize,
    prefix: &str,
) -> Result<f64> {
    let t = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let mut set: JoinSet<Result<()>> = JoinSet::new();
    for _ in 0..clients.max(1) {
        let target = target.clone();
        let next = next.clone();
        let prefix = prefix.to_owned();
        set.spawn(async move {
            let mut conn = target.connect().await?;
            let policy = serde_json::to_value(Kty::Ec.policy("CN=bench-lifecycle"))?;
            let body = json!({"policy": policy});
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n as u64 {
                    return Ok(());
                }
                send(
                    &mut conn,
                    Method::POST,
                    &format!("/certificates/{prefix}{i:06}/create?api-version=7.6"),
                    &body,
                )
                .await?;
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    Ok(n as f64 / t.elapsed().as_secs_f64())
}

pub(crate) async fn advance(target: &Target, seconds: i64) -> Result<()> {
    let mut c = target.connect().await?;
    send(
        &mut c,
        Method::POST,
        "/admin/v1/test-clock/advance",
        &json!({"seconds": seconds}),
    )
    .await?;
    Ok(())
}

pub(crate) fn count(db: &Path, sql: &str) -> Result<i64> {
    let c = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    c.busy_timeout(Duration::from_secs(10))?;
    Ok(c.query_row(sql, [], |r| r.get(0))?)
}

async fn wait_count(db: &Path, sql: &str, want: i64, timeout: Duration) -> Result<Duration> {
    let t = Instant::now();
    loop {
        let (d, s) = (db.to_owned(), sql.to_owned());
        let n = tokio::task::spawn_blocking(move || count(&d, &s)).await??;
        if n >= want {
            return Ok(t.elapsed());
        }
        if t.elapsed() > timeout {
            bail!(
                "timed out: {n} of {want} after {:.0}s",
                timeout.as_secs_f64()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn test_clock_server(common: &Common, dir: &Path) -> Result<Server> {
    test_clock_server_with(common, dir, &[]).await
}

/// A test-clock server with extra `serve` arguments (e.g. `--database postgres://…`).
pub(crate) async fn test_clock_server_with(
    common: &Common,
    dir: &Path,
    extra: &[&str],
) -> Result<Server> {
    let mut args = vec!["--test-clock"];
    args.extend_from_slice(extra);
    Server::start_with(
        &common.server_bin,
        &dir.join("data"),
        &dir.join("server.log"),
        &args,
        &[("CERTVAULT_ALLOW_TEST_CLOCK", "1")],
    )
    .await
}

// ---------------------------------------------------------------------------------------------
// renewals

/// Renewal settings.
#[derive(clap::Args, Debug)]
pub struct RenewalsArgs {
    /// Certificates that come due together.
    #[arg(long, default_value_t = 10_000)]
    pub certs: usize,
    /// Connections creating them.
    #[arg(long, default_value_t = 32)]
    pub clients: usize,
}

/// `certs` EC P-256 certificates come due at once (test clock moved past 80 % of their
/// lifetime); the time until the engine has renewed every one.
pub async fn renewals(common: &Common, a: &RenewalsArgs) -> Result<bool> {
    println!(
        "== renewals: {} EC P-256 Self certificates due at once (AutoRenew at 80 %), through the engine",
        a.certs
    );
    let base = tokio::task::spawn_blocking(|| {
        crate::benches::baseline_rate(
            2,
            Duration::from_secs(5),
            crate::benches::ec_keygen_and_sign,
        )
    })
    .await??;
    println!("  baseline: in-process EC P-256 keygen + self-sign, 2 threads: {base:.0}/s");
    let dir = common.tempdir("certvault-bench-renew-")?;
    let mut server = test_clock_server(common, dir.path()).await?;
    let rate = create_certs(&server.target, a.certs, a.clients, "r").await?;
    println!("  created {} certificates at {rate:.0}/s", a.certs);
    let db = server.data_dir.join("certvault.db");
    let n = i64::try_from(a.certs)?;
    // Every certificate is planned (due at 80 % plus jitter) before the clock moves.
    wait_count(
        &db,
        "SELECT COUNT(*) FROM jobs WHERE payload IS NOT NULL",
        n,
        Duration::from_secs(300),
    )
    .await
    .context("planning")?;
    let cpu0 = server
        .pid()
        .and_then(|p| crate::load::cpu_secs(&p.to_string()));
    advance(&server.target, 366 * DAY * 81 / 100 + 2 * 3600).await?;
    let took = wait_count(
        &db,
        "SELECT COUNT(*) FROM events WHERE kind = 'renewed'",
        n,
        Duration::from_secs(600),
    )
    .await
    .context("renewals")?;
    let cpu = server
        .pid()
        .and_then(|p| crate::load::cpu_secs(&p.to_string()))
        .zip(cpu0)
        .map(|(b, a)| b - a);
    let versions = count(&db, "SELECT COUNT(*) FROM versions")?;
    server.stop();
    let secs = took.as_secs_f64();
    println!(
        "  renewed {} in {secs:.2}s = {:.0}/s (server CPU {}), {} versions in the store; \
         baseline would take {:.2}s (ratio {:.2})",
        a.certs,
        a.certs as f64 / secs,
        cpu.map_or_else(|| "?".into(), |c| format!("{c:.1}s")),
        versions,
        a.certs as f64 / base,
        (a.certs as f64 / secs) / base
    );
    println!("RESULT renewals:");
    let mut ok = check(
        &format!("{} due renewals < 30 s", a.certs),
        secs < 30.0,
        &format!("{secs:.2}s"),
    );
    ok &= check(
        "each renewed exactly once",
        versions == 2 * n,
        &format!("{versions} versions for {n} certificates"),
    );
    Ok(ok)
}

// ---------------------------------------------------------------------------------------------
// webhooks

/// Webhook settings.
#[derive(clap::Args, Debug)]
pub struct WebhooksArgs {
    /// Events to deliver (one per certificate created).
    #[arg(long, default_value_t = 20_000)]
    pub events: usize,
    /// Connections creating the certificates.
    #[arg(long, default_value_t = 32)]
    pub clients: usize,
}

const SECRET: &str = "bench-webhook-secret-0123456789abcdef";

struct Receiver {
    down: AtomicBool,
    attempts: AtomicU64,
    accepted: AtomicU64,
    bad: AtomicU64,
}

async fn handle(
    r: Arc<Receiver>,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let ts = req
        .headers()
        .get("x-certvault-timestamp")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let sig = req
        .headers()
        .get("x-certvault-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    r.attempts.fetch_add(1, Ordering::Relaxed);
    let status = if r.down.load(Ordering::Relaxed) {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, SECRET.as_bytes());
        let mut msg = ts.into_bytes();
        msg.push(b'.');
        msg.extend_from_slice(&body);
        let want = format!(
            "v1={}",
            hex_lower(aws_lc_rs::hmac::sign(&key, &msg).as_ref())
        );
        if want == sig {
            r.accepted.fetch_add(1, Ordering::Relaxed);
            StatusCode::OK
        } else {
            r.bad.fetch_add(1, Ordering::Relaxed);
            StatusCode::UNAUTHORIZED
        }
    };
    let mut resp = Response::new(Full::new(Bytes::from_static(b"{\"ok\":true}")));
    *resp.status_mut() = status;
    Ok(resp)
}

fn hex_lower(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

async fn start_receiver(r: Arc<Receiver>) -> Result<SocketAddr> {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let r = r.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| handle(r.clone(), req));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    Ok(addr)
}

/// The baseline: this process POSTs `n` signed JSON bodies to the receiver over 64 keep-alive
/// connections.
async fn direct_rate(addr: SocketAddr, n: usize) -> Result<f64> {
    let body = Bytes::from(
        json!({"version": 1, "id": "0123456789abcdef0123456789abcdef", "event_type": "issued",
        "vault": "default", "certificate_name": "c0000001", "data": {"nbf": 1, "exp": 2}})
        .to_string(),
    );
    let next = Arc::new(AtomicU64::new(0));
    let t = Instant::now();
    let mut set: JoinSet<Result<()>> = JoinSet::new();
    for _ in 0..64 {
        let next = next.clone();
        let body = body.clone();
        set.spawn(async move {
            let s = tokio::net::TcpStream::connect(addr).await?;
            s.set_nodelay(true)?;
            let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s)).await?;
            tokio::spawn(conn);
            loop {
                if next.fetch_add(1, Ordering::Relaxed) >= n as u64 {
                    return Ok(());
                }
                let key =
                    aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, SECRET.as_bytes());
                let ts = "1700000000";
                let mut msg = ts.as_bytes().to_vec();
                msg.push(b'.');
                msg.extend_from_slice(&body);
                let sig = format!(
                    "v1={}",
                    hex_lower(aws_lc_rs::hmac::sign(&key, &msg).as_ref())
                );
                let req = Request::post("/hook")
                    .header("host", addr.to_string())
                    .header("content-type", "application/json")
                    .header("x-certvault-timestamp", ts)
                    .header("x-certvault-signature", sig)
                    .body(Full::new(body.clone()))?;
                let resp = tx.send_request(req).await?;
                let _ = resp.into_body().collect().await?;
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    Ok(n as f64 / t.elapsed().as_secs_f64())
}

/// `events` queued deliveries (the receiver was down) sent once the receiver is back.
pub async fn webhooks(common: &Common, a: &WebhooksArgs) -> Result<bool> {
    println!(
        "== webhooks: {} queued events delivered (signed) to a local receiver",
        a.events
    );
    let recv = Arc::new(Receiver {
        down: AtomicBool::new(false),
        attempts: AtomicU64::new(0),
        accepted: AtomicU64::new(0),
        bad: AtomicU64::new(0),
    });
    let addr = start_receiver(recv.clone()).await?;
    let base = direct_rate(addr, a.events).await?;
    println!("  baseline: this process POSTing to the receiver, 64 connections: {base:.0}/s");
    let accepted_before = recv.accepted.load(Ordering::Relaxed);
    recv.down.store(true, Ordering::Relaxed);
    let dir = common.tempdir("certvault-bench-hooks-")?;
    let mut server = test_clock_server(common, dir.path()).await?;
    {
        let mut c = server.target.connect().await?;
        send(
            &mut c,
            Method::POST,
            "/admin/v1/vaults/default/channels",
            &json!({"name": "bench", "type": "webhook", "url": format!("http://{addr}/hook"), "secret": SECRET}),
        )
        .await?;
    }
    let rate = create_certs(&server.target, a.events, a.clients, "w").await?;
    println!(
        "  created {} certificates ({} events) at {rate:.0}/s",
        a.events, a.events
    );
    let db = server.data_dir.join("certvault.db");
    let n = i64::try_from(a.events)?;
    wait_count(
        &db,
        "SELECT COUNT(*) FROM deliveries WHERE attempts >= 1",
        n,
        Duration::from_secs(600),
    )
    .await
    .context("first (failing) attempts")?;
    recv.down.store(false, Ordering::Relaxed);
    let cpu0 = server
        .pid()
        .and_then(|p| crate::load::cpu_secs(&p.to_string()));
    let t = Instant::now();
    advance(&server.target, 3600).await?;
    loop {
        let got = recv.accepted.load(Ordering::Relaxed) - accepted_before;
        if got >= a.events as u64 {
            break;
        }
        if t.elapsed() > Duration::from_secs(600) {
            bail!("timed out: {got} of {} delivered", a.events);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let secs = t.elapsed().as_secs_f64();
    let cpu = server
        .pid()
        .and_then(|p| crate::load::cpu_secs(&p.to_string()))
        .zip(cpu0)
        .map(|(b, a)| b - a);
    let delivered = count(
        &db,
        "SELECT COUNT(*) FROM deliveries WHERE status = 'delivered'",
    )?;
    server.stop();
    let r = a.events as f64 / secs;
    println!(
        "  delivered {} in {secs:.2}s = {r:.0} events/s (server CPU {}; {:.0} µs per event), bad signatures {}",
        a.events,
        cpu.map_or_else(|| "?".into(), |c| format!("{c:.1}s")),
        cpu.map_or(0.0, |c| c * 1e6 / a.events as f64),
        recv.bad.load(Ordering::Relaxed)
    );
    println!("RESULT webhooks:");
    let mut ok = check(
        "deliveries >= 2,000 events/s",
        r >= 2000.0,
        &format!(
            "{r:.0}/s (direct POST baseline {base:.0}/s, ratio {:.3})",
            r / base
        ),
    );
    ok &= check(
        "every event delivered once, signatures valid",
        delivered == n && recv.bad.load(Ordering::Relaxed) == 0,
        &format!("{delivered} delivered rows"),
    );
    Ok(ok)
}
