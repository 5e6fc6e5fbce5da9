//! The PostgreSQL issue's benchmarks: the same release server on SQLite and on PostgreSQL in one
//! run, side by side.
//!
//! - GET managed secret: req/s on each backend in alternating rounds; the PostgreSQL figure
//!   over SQLite's of the same round (target ≥ 0.5 ×).
//! - create-certificate throughput on each backend, alternating windows.
//! - measured per-request costs for docs/capacity.md: CPU time of the certvault process and of
//!   the PostgreSQL server (postmaster and backends) per GET, per create and per renewal (from
//!   `/proc/<pid>/stat`), PostgreSQL transactions and tuples per request (`pg_stat_database`
//!   deltas), and bytes per stored object (`pg_total_relation_size` / row count).
//!
//! PostgreSQL is a private server from certvault-testkit (initdb into a temporary directory,
//! free loopback port) started with durable settings (`fsync`, `synchronous_commit`,
//! `full_page_writes` on), so both backends acknowledge a write only once it is on disk.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use certvault_testkit::Postgres;

use crate::benches::{CreateOp, measure, median_by};
use crate::lifecycle::{advance, create_certs, test_clock_server_with};
use crate::load::{self, Load, Stats};
use crate::net::Target;
use crate::seed::{Kty, cert_name};
use crate::server::Server;
use crate::{Common, check};

const API: &str = "api-version=7.4";
const DAY: i64 = 86_400;

/// Settings of `certvault-bench pg`.
#[derive(clap::Args, Debug)]
pub struct PgArgs {
    /// Certificates created through the API on each backend before the GET rounds.
    #[arg(long, default_value_t = 1000)]
    certs: usize,
    /// Key type of those certificates.
    #[arg(long, value_enum, default_value_t = Kty::Ec)]
    kty: Kty,
    /// Concurrent keep-alive connections for GET secret.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Alternating rounds (SQLite window, PostgreSQL window; the order flips each round).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Concurrent clients of the create-throughput windows (EC P-256, Self).
    #[arg(long, default_value_t = 32)]
    create_clients: usize,
    /// GET requests of the per-request cost phase on each backend.
    #[arg(long, default_value_t = 20_000)]
    cost_gets: usize,
    /// Certificates renewed at once (test clock) on each backend for the per-renewal cost;
    /// 0 skips the renewal phase.
    #[arg(long, default_value_t = 1000)]
    renewals: usize,
}

/// One backend under test.
struct Backend {
    name: &'static str,
    server: Server,
    /// `Some(database name)` on PostgreSQL.
    db: Option<String>,
}

/// Counters sampled before and after a phase.
#[derive(Debug, Clone, Copy, Default)]
struct Sample {
    certvault_cpu: f64,
    pg_cpu: f64,
    /// xacts, tup_returned, tup_fetched, tup_inserted, tup_updated, tup_deleted
    db: [i64; 6],
}

const DB_FIELDS: [&str; 6] = [
    "transactions",
    "tuples returned",
    "tuples fetched",
    "tuples inserted",
    "tuples updated",
    "tuples deleted",
];

/// CPU seconds of the postmaster and all its children (the backends).
fn pg_cpu(pg_pid: u32) -> f64 {
    let mut total = load::cpu_secs(&pg_pid.to_string()).unwrap_or(0.0);
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return total;
    };
    for e in dir.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|s| s.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, r)| r.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(pg_pid) {
            total += load::cpu_secs(pid).unwrap_or(0.0);
        }
    }
    total
}

fn psql(pg: &Postgres, db: &str, sql: &str) -> Result<String> {
    pg.psql(db, sql).map_err(|e| anyhow!("psql: {}", e.trim()))
}

fn db_stats(pg: &Postgres, db: &str) -> Result<[i64; 6]> {
    let out = psql(
        pg,
        db,
        "SELECT xact_commit + xact_rollback, tup_returned, tup_fetched, tup_inserted, \
         tup_updated, tup_deleted FROM pg_stat_database WHERE datname = current_database()",
    )?;
    let v: Vec<i64> = out
        .trim()
        .split('|')
        .map(|x| x.trim().parse::<i64>())
        .collect::<Result<_, _>>()
        .with_context(|| format!("pg_stat_database answered {out:?}"))?;
    v.try_into()
        .map_err(|_| anyhow!("pg_stat_database: unexpected columns"))
}

/// Samples the counters after letting deferred work settle (the SQLite audit import runs every
/// 250 ms; PostgreSQL backends flush their statistics at most once a second when idle).
async fn sample(b: &Backend, pg: &Postgres) -> Result<Sample> {
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let certvault_cpu = b
        .server
        .pid()
        .and_then(|p| load::cpu_secs(&p.to_string()))
        .unwrap_or(0.0);
    let (pg_cpu, db) = match &b.db {
        Some(db) => (pg_cpu(pg.pid()), db_stats(pg, db)?),
        None => (0.0, [0; 6]),
    };
    Ok(Sample {
        certvault_cpu,
        pg_cpu,
        db,
    })
}

/// Prints the cost per operation between two samples; returns (certvault µs, PostgreSQL µs).
fn print_cost(b: &Backend, what: &str, n: usize, a: &Sample, z: &Sample) -> (f64, f64) {
    let n = n.max(1) as f64;
    let cv = (z.certvault_cpu - a.certvault_cpu) * 1e6 / n;
    let pgc = (z.pg_cpu - a.pg_cpu) * 1e6 / n;
    if b.db.is_some() {
        let per: Vec<String> = DB_FIELDS
            .iter()
            .zip(a.db.iter().zip(&z.db))
            .map(|(f, (x, y))| format!("{f} {:.2}", (y - x) as f64 / n))
            .collect();
        println!(
            "  cost per {what} [{}]: certvault CPU {cv:.0} us + PostgreSQL CPU {pgc:.0} us; per {what}: {}",
            b.name,
            per.join(", ")
        );
    } else {
        println!(
            "  cost per {what} [{}]: certvault CPU {cv:.0} us (store in process)",
            b.name
        );
    }
    (cv, pgc)
}

/// `n` GETs of random `/{kind}/{name}` with `connections` connections; returns requests/s.
async fn get_n(
    target: &Target,
    kind: &'static str,
    certs: usize,
    n: usize,
    connections: usize,
) -> Result<f64> {
    let t = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for w in 0..connections.max(1) {
        let mut conn = target.connect().await?;
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = load::Rng::new(0xc057 + w as u64);
            loop {
                if next.fetch_add(1, Ordering::Relaxed) >= n {
                    return Ok::<_, anyhow::Error>(());
                }
                conn.get_ok(&format!("/{kind}/{}?{API}", cert_name(rng.below(certs))))
                    .await?;
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(n as f64 / t.elapsed().as_secs_f64())
}

/// Creates certificates `0..n` with `concurrency` connections; returns certificates/s.
async fn create_n(target: &Target, kty: Kty, n: usize, concurrency: usize) -> Result<f64> {
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
                crate::benches::create_and_wait(&mut conn, kty, &cert_name(i)).await?;
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(n as f64 / t.elapsed().as_secs_f64())
}

fn db_name(url: &str) -> String {
    url.rsplit('/').next().unwrap_or_default().to_owned()
}

/// Table sizes and row counts of the PostgreSQL database; prints bytes per object.
fn storage(pg: &Postgres, db: &str, certs: usize) -> Result<()> {
    psql(pg, db, "VACUUM ANALYZE")?;
    let out = psql(
        pg,
        db,
        "SELECT c.relname, pg_total_relation_size(c.oid), c.reltuples::bigint \
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = 'public' AND c.relkind = 'r' ORDER BY 2 DESC",
    )?;
    let mut per_cert = 0i64;
    let mut rows = Vec::new();
    for line in out.lines() {
        let f: Vec<&str> = line.split('|').collect();
        if f.len() != 3 {
            continue;
        }
        let (name, bytes) = (f[0], f[1].parse::<i64>().unwrap_or(0));
        let n = psql(pg, db, &format!("SELECT count(*) FROM {name}"))?
            .trim()
            .parse::<i64>()
            .unwrap_or(0);
        if matches!(
            name,
            "certificates" | "versions" | "operations" | "jobs" | "lifecycle_marks" | "events"
        ) {
            per_cert += bytes;
        }
        rows.push((name.to_owned(), bytes, n));
    }
    println!("  PostgreSQL storage (table + indexes + TOAST, after VACUUM ANALYZE):");
    for (name, bytes, n) in rows.iter().take(10) {
        println!(
            "    {name:<20} {:>9.1} KiB  {n:>9} rows  {:>7} bytes/row",
            *bytes as f64 / 1024.0,
            if *n > 0 {
                format!("{:.0}", *bytes as f64 / *n as f64)
            } else {
                "-".into()
            }
        );
    }
    let total = psql(pg, db, "SELECT pg_database_size(current_database())")?;
    println!(
        "    certificate-side tables (certificates, versions, operations, jobs, lifecycle_marks, events): {:.0} bytes per certificate version ({certs} certificates); whole database {:.1} MiB",
        per_cert as f64 / certs.max(1) as f64,
        total.trim().parse::<f64>().unwrap_or(0.0) / 1024.0 / 1024.0
    );
    Ok(())
}

/// Runs `certvault-bench pg`.
pub async fn pg(common: &Common, a: &PgArgs) -> Result<bool> {
    println!(
        "== pg: SQLite vs PostgreSQL, same release server, same run: {} {} certificates, GET secret with {} connections, {} rounds; create throughput ({} clients); per-request costs",
        a.certs,
        a.kty.label(),
        a.connections,
        a.rounds.max(1),
        a.create_clients
    );
    let pg = Arc::new(
        tokio::task::spawn_blocking(|| {
            Postgres::start_with(&[
                ("fsync", "on"),
                ("synchronous_commit", "on"),
                ("full_page_writes", "on"),
                ("shared_buffers", "256MB"),
            ])
        })
        .await
        .map_err(|_| anyhow!("starting PostgreSQL failed (see the panic above)"))?,
    );
    let version = psql(&pg, "postgres", "SHOW server_version")?;
    println!(
        "  PostgreSQL {} (private, 127.0.0.1:{}, fsync/synchronous_commit/full_page_writes on, shared_buffers 256MB)",
        version.trim(),
        pg.port()
    );
    let dir = common.tempdir("certvault-bench-pg-")?;
    let url = pg.database();
    let sqlite = Backend {
        name: "SQLite",
        server: Server::start(
            &common.server_bin,
            &dir.path().join("sqlite"),
            &dir.path().join("sqlite.log"),
        )
        .await?,
        db: None,
    };
    let postgres = Backend {
        name: "PostgreSQL",
        server: Server::start_with(
            &common.server_bin,
            &dir.path().join("pg"),
            &dir.path().join("pg.log"),
            &["--database", &url],
            &[],
        )
        .await?,
        db: Some(db_name(&url)),
    };
    let backends = [&sqlite, &postgres];

    // Seeding doubles as the per-create cost phase.
    let mut create_costs = Vec::new();
    for b in backends {
        let s0 = sample(b, &pg).await?;
        let rate = create_n(&b.server.target, a.kty, a.certs, 32).await?;
        let s1 = sample(b, &pg).await?;
        println!(
            "  [{}] created {} {} certificates through the API at {rate:.1}/s (32 clients)",
            b.name,
            a.certs,
            a.kty.label()
        );
        create_costs.push(print_cost(b, "create", a.certs, &s0, &s1));
    }

    // GET secret rounds.
    let (mut lite, mut pgs) = (Vec::<Stats>::new(), Vec::<Stats>::new());
    for round in 0..a.rounds.max(1) {
        println!("  round {}", round + 1);
        let order: [(&Backend, bool); 2] = if round % 2 == 0 {
            [(&sqlite, false), (&postgres, true)]
        } else {
            [(&postgres, true), (&sqlite, false)]
        };
        for (b, is_pg) in order {
            let op = secret_op(a.certs);
            let s = measure(
                &format!("GET /secrets/{{name}} [{}]", b.name),
                &b.server,
                common,
                a.connections,
                op,
            )
            .await?;
            if is_pg { &mut pgs } else { &mut lite }.push(s);
        }
    }
    // Per-request costs, by count. GET secret is served from the secret cache here (1,000
    // certificates fit); GET certificate reads the store every time, which is what a GET
    // secret costs once the certificates no longer fit in the cache (plus unsealing and
    // rendering the key, which the SQLite figures show).
    let (mut get_costs, mut getc_costs) = (Vec::new(), Vec::new());
    for b in backends {
        for (kind, costs) in [
            ("secrets", &mut get_costs),
            ("certificates", &mut getc_costs),
        ] {
            let s0 = sample(b, &pg).await?;
            let rate = get_n(&b.server.target, kind, a.certs, a.cost_gets, a.connections).await?;
            let s1 = sample(b, &pg).await?;
            let what = if kind == "secrets" {
                "GET secret"
            } else {
                "GET certificate"
            };
            println!("  [{}] {} x {what}: {rate:.0}/s", b.name, a.cost_gets);
            costs.push(print_cost(b, what, a.cost_gets, &s0, &s1));
        }
    }

    // Create throughput windows.
    let (mut c_lite, mut c_pg) = (Vec::<Stats>::new(), Vec::<Stats>::new());
    for round in 0..a.rounds.max(1) {
        let order: [(&Backend, bool); 2] = if round % 2 == 0 {
            [(&sqlite, false), (&postgres, true)]
        } else {
            [(&postgres, true), (&sqlite, false)]
        };
        for (b, is_pg) in order {
            let l = Load {
                connections: a.create_clients,
                warmup: common.warmup,
                duration: common.duration,
                server_pid: b.server.pid(),
            };
            let op = Arc::new(CreateOp {
                kty: Kty::Ec,
                tag: format!("t{round}"),
            });
            let s = load::run(&b.server.target, l, op, 11 + round as u64).await?;
            println!(
                "  round {}: create EC P-256 + poll [{:<10}] {}",
                round + 1,
                b.name,
                s.line()
            );
            if s.errors > 0 {
                bail!("{} create errors on {}", s.errors, b.name);
            }
            if is_pg { &mut c_pg } else { &mut c_lite }.push(s);
        }
    }
    let db = postgres.db.clone().unwrap_or_default();
    let total_certs = usize::try_from(
        psql(&pg, &db, "SELECT count(*) FROM versions")?
            .trim()
            .parse::<i64>()
            .unwrap_or(0),
    )
    .unwrap_or(0);
    storage(&pg, &db, total_certs)?;
    let audit = psql(
        &pg,
        &db,
        "SELECT count(*), pg_total_relation_size('audit_log') FROM audit_log",
    )?;
    if let Some((n, bytes)) = audit.trim().split_once('|') {
        let (n, bytes) = (
            n.parse::<f64>().unwrap_or(0.0),
            bytes.parse::<f64>().unwrap_or(0.0),
        );
        println!(
            "    audit_log: {n:.0} records, {:.0} bytes per record (one record per request)",
            bytes / n.max(1.0)
        );
    }
    let (mut sqlite, mut postgres) = (sqlite, postgres);
    sqlite.server.stop();
    postgres.server.stop();

    // Renewals (test clock).
    let mut renew_costs = Vec::new();
    if a.renewals > 0 {
        for is_pg in [false, true] {
            let bdir = dir
                .path()
                .join(if is_pg { "renew-pg" } else { "renew-sqlite" });
            std::fs::create_dir_all(&bdir)?;
            let url = pg.database();
            let args: Vec<&str> = if is_pg {
                vec!["--database", &url]
            } else {
                vec![]
            };
            let b = Backend {
                name: if is_pg { "PostgreSQL" } else { "SQLite" },
                server: test_clock_server_with(common, &bdir, &args).await?,
                db: is_pg.then(|| db_name(&url)),
            };
            let n = a.renewals;
            let rate = create_certs(&b.server.target, n, 32, "r").await?;
            let want = i64::try_from(n)?;
            let count_sql_planned = "SELECT COUNT(*) FROM jobs WHERE payload IS NOT NULL";
            let count_sql_renewed = "SELECT COUNT(*) FROM events WHERE kind = 'renewed'";
            wait_count(&b, &pg, &bdir, count_sql_planned, want, 300)
                .await
                .context("planning")?;
            let s0 = sample(&b, &pg).await?;
            advance(&b.server.target, 366 * DAY * 81 / 100 + 2 * 3600).await?;
            let took = wait_count(&b, &pg, &bdir, count_sql_renewed, want, 900)
                .await
                .context("renewals")?;
            let s1 = sample(&b, &pg).await?;
            println!(
                "  [{}] {n} EC P-256 certificates (created at {rate:.0}/s) renewed in {:.2}s = {:.0}/s",
                b.name,
                took.as_secs_f64(),
                n as f64 / took.as_secs_f64()
            );
            renew_costs.push(print_cost(&b, "renewal", n, &s0, &s1));
            let mut b = b;
            b.server.stop();
        }
    }

    println!("RESULT pg:");
    let mut ratios: Vec<f64> = pgs
        .iter()
        .zip(&lite)
        .map(|(p, s)| p.rate() / s.rate().max(1e-9))
        .collect();
    println!(
        "  per-round ratios PostgreSQL/SQLite: {}",
        ratios
            .iter()
            .map(|r| format!("{r:.3}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    ratios.sort_by(f64::total_cmp);
    let ratio = ratios.get(ratios.len() / 2).copied().unwrap_or(0.0);
    let (rp, rs) = (median_by(&pgs, Stats::rate), median_by(&lite, Stats::rate));
    let mut ok = check(
        "GET managed secret on PostgreSQL >= 0.5 x SQLite (same run)",
        ratio >= 0.5,
        &format!(
            "median per-round ratio {ratio:.3} (median {rp:.0} vs {rs:.0} req/s; p99 {} vs {})",
            load::ms(median_by(&pgs, |s| f64::from(s.p99)) as u32),
            load::ms(median_by(&lite, |s| f64::from(s.p99)) as u32)
        ),
    );
    let (cp, cs) = (
        median_by(&c_pg, Stats::rate),
        median_by(&c_lite, Stats::rate),
    );
    println!(
        "  create EC P-256 certificates/s ({} clients, median of {} windows): PostgreSQL {cp:.0}, SQLite {cs:.0} (ratio {:.3})",
        a.create_clients,
        c_pg.len(),
        cp / cs.max(1e-9)
    );
    let row = |what: &str, v: &[(f64, f64)]| {
        if let [s, p] = v {
            println!(
                "  CPU per {what}: SQLite certvault {:.0} us; PostgreSQL certvault {:.0} us + database {:.0} us",
                s.0, p.0, p.1
            );
        }
    };
    row(&format!("create ({})", a.kty.label()), &create_costs);
    row("GET secret (cache hit)", &get_costs);
    row("GET certificate (store read)", &getc_costs);
    row("renewal (EC P-256)", &renew_costs);
    ok &= check(
        "no create errors",
        c_pg.iter().chain(&c_lite).all(|s| s.errors == 0),
        "0 errors",
    );
    Ok(ok)
}

fn secret_op(n: usize) -> Arc<dyn load::Op> {
    Arc::new(load::GetOp(move |rng: &mut load::Rng| {
        format!("/secrets/{}?{API}", cert_name(rng.below(n)))
    }))
}

/// Waits until `sql` counts `want` rows in the backend's store (SQLite file or PostgreSQL).
async fn wait_count(
    b: &Backend,
    pg: &Arc<Postgres>,
    dir: &Path,
    sql: &str,
    want: i64,
    timeout_secs: u64,
) -> Result<Duration> {
    let t = Instant::now();
    let timeout = Duration::from_secs(timeout_secs);
    loop {
        let n = match &b.db {
            Some(db) => {
                let (pg, db, sql) = (pg.clone(), db.clone(), sql.to_owned());
                tokio::task::spawn_blocking(move || psql(&pg, &db, &sql))
                    .await??
                    .trim()
                    .parse::<i64>()
                    .unwrap_or(0)
            }
            None => {
                let (d, s) = (dir.join("data/certvault.db"), sql.to_owned());
                tokio::task::spawn_blocking(move || crate::lifecycle::count(&d, &s)).await??
            }
        };
        if n >= want {
            return Ok(t.elapsed());
        }
        if t.elapsed() > timeout {
            bail!("timed out: {n} of {want} after {timeout_secs}s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
