//! A closed-loop load generator: `connections` workers, each with its own keep-alive
//! connection, send one operation after another. Warm-up first, then a fixed measurement
//! window; only operations that finish inside the window are counted.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use crate::net::{Conn, Target};

/// A small xorshift generator (benchmark key choice only; not for secrets).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded from `seed` (never zero).
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next value.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        let n = n.max(1) as u64;
        usize::try_from(self.next_u64() % n).unwrap_or(0)
    }
}

/// One operation of a worker: returns the number of response bytes read.
pub type OpFuture<'a> = Pin<Box<dyn Future<Output = Result<u64>> + Send + 'a>>;

/// What a worker does once per iteration.
pub trait Op: Send + Sync + 'static {
    /// Runs one operation on `conn`. `worker` and `seq` make unique names possible.
    fn run<'a>(
        &'a self,
        conn: &'a mut Conn,
        worker: usize,
        seq: u64,
        rng: &'a mut Rng,
    ) -> OpFuture<'a>;
}

/// A GET of a path chosen per request.
pub struct GetOp<F>(pub F);

impl<F> Op for GetOp<F>
where
    F: Fn(&mut Rng) -> String + Send + Sync + 'static,
{
    fn run<'a>(&'a self, conn: &'a mut Conn, _w: usize, _s: u64, rng: &'a mut Rng) -> OpFuture<'a> {
        let path = (self.0)(rng);
        Box::pin(async move {
            let r = conn.get_ok(&path).await?;
            Ok(r.body.len() as u64)
        })
    }
}

/// Load settings.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    /// Concurrent connections (one worker each).
    pub connections: usize,
    /// Warm-up before measuring.
    pub warmup: Duration,
    /// Measurement window.
    pub duration: Duration,
    /// The server process, whose CPU time is sampled at the window's edges.
    pub server_pid: Option<u32>,
}

/// CPU time (user + system) of a process in seconds, from /proc/PID/stat.
pub fn cpu_secs(pid: &str) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = s.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// Busy CPU seconds of the whole machine (all CPUs), from /proc/stat.
pub fn machine_busy_secs() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/stat").ok()?;
    let line = s.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<f64> = line
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let total: f64 = v.iter().take(8).sum();
    let idle = v.get(3)? + v.get(4)?;
    Some((total - idle) / 100.0)
}

type CpuSample = (Option<f64>, Option<f64>, Option<f64>);

fn cpu_sample(server: Option<u32>) -> CpuSample {
    (
        server.and_then(|p| cpu_secs(&p.to_string())),
        cpu_secs("self"),
        machine_busy_secs(),
    )
}

/// Results of one measurement window.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// Operations completed inside the window.
    pub ops: u64,
    /// Failed operations inside the window.
    pub errors: u64,
    /// Window length in seconds.
    pub secs: f64,
    /// Response bytes inside the window.
    pub bytes: u64,
    /// Latency percentiles in microseconds: p50, p90, p99, p99.9, max.
    pub p50: u32,
    pub p90: u32,
    pub p99: u32,
    pub p999: u32,
    pub max: u32,
    /// CPU cores the server used during the window.
    pub server_cores: Option<f64>,
    /// CPU cores this load generator used during the window.
    pub client_cores: Option<f64>,
    /// CPU cores everything else on the machine used during the window (noise).
    pub other_cores: Option<f64>,
}

impl Stats {
    /// Operations per second.
    pub fn rate(&self) -> f64 {
        if self.secs > 0.0 {
            self.ops as f64 / self.secs
        } else {
            0.0
        }
    }

    /// CPU microseconds per operation of the server and of this load generator.
    pub fn cpu_us_per_op(&self) -> Option<(f64, f64)> {
        let per = |c: Option<f64>| c.map(|c| c * self.secs * 1e6 / (self.ops.max(1) as f64));
        Some((per(self.server_cores)?, per(self.client_cores)?))
    }

    /// A one-line summary.
    pub fn line(&self) -> String {
        let cores = |c: Option<f64>| c.map_or_else(|| "?".to_owned(), |c| format!("{c:.2}"));
        format!(
            "{:>9.1}/s  ops {:>8}  err {:>3}  p50 {:>8}  p90 {:>8}  p99 {:>8}  p99.9 {:>8}  max {:>8}  {:.1} MB/s  cpu: server {} client {} other {}",
            self.rate(),
            self.ops,
            self.errors,
            ms(self.p50),
            ms(self.p90),
            ms(self.p99),
            ms(self.p999),
            ms(self.max),
            self.bytes as f64 / self.secs.max(1e-9) / 1e6,
            cores(self.server_cores),
            cores(self.client_cores),
            cores(self.other_cores)
        )
    }
}

/// Microseconds as a short millisecond string.
pub fn ms(us: u32) -> String {
    format!("{:.2}ms", f64::from(us) / 1000.0)
}

fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let idx = ((sorted.len() as f64) * p).ceil() as usize;
    sorted[idx.clamp(1, sorted.len()) - 1]
}

struct WorkerOut {
    lat: Vec<u32>,
    errors: u64,
    bytes: u64,
    first_error: Option<String>,
}

const MAX_RECONNECTS: u32 = 20;

/// Runs `op` on `load.connections` connections and measures the window after the warm-up.
pub async fn run(target: &Target, load: Load, op: Arc<dyn Op>, seed: u64) -> Result<Stats> {
    // Connect everything first so handshakes are not part of the warm-up or window.
    let mut conns = Vec::with_capacity(load.connections);
    for _ in 0..load.connections {
        conns.push(target.connect().await?);
    }
    let start = Instant::now() + Duration::from_millis(20);
    let m0 = start + load.warmup;
    let m1 = m0 + load.duration;
    let server_pid = load.server_pid;
    let window = load.duration.as_secs_f64();
    let sampler = tokio::spawn(async move {
        tokio::time::sleep_until(m0.into()).await;
        let a = cpu_sample(server_pid);
        tokio::time::sleep_until(m1.into()).await;
        let b = cpu_sample(server_pid);
        let d = |x: Option<f64>, y: Option<f64>| Some((y? - x?) / window);
        let (server, client, all) = (d(a.0, b.0), d(a.1, b.1), d(a.2, b.2));
        let other = match (server, client, all) {
            (Some(s), Some(c), Some(t)) => Some((t - s - c).max(0.0)),
            _ => None,
        };
        (server, client, other)
    });
    let mut tasks = Vec::with_capacity(load.connections);
    for (w, mut conn) in conns.into_iter().enumerate() {
        let op = op.clone();
        let target = target.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng::new(seed ^ ((w as u64 + 1) << 32));
            let mut out = WorkerOut {
                lat: Vec::with_capacity(1 << 16),
                errors: 0,
                bytes: 0,
                first_error: None,
            };
            tokio::time::sleep_until(start.into()).await;
            let mut seq = 0u64;
            let mut reconnects = 0;
            loop {
                let t = Instant::now();
                if t >= m1 {
                    break;
                }
                seq += 1;
                let r = op.run(&mut conn, w, seq, &mut rng).await;
                let done = Instant::now();
                let inside = done >= m0 && done <= m1;
                match r {
                    Ok(n) if inside => {
                        let us =
                            u32::try_from(done.duration_since(t).as_micros()).unwrap_or(u32::MAX);
                        out.lat.push(us);
                        out.bytes += n;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        if inside {
                            out.errors += 1;
                        }
                        if out.first_error.is_none() {
                            out.first_error = Some(format!("{e:#}"));
                        }
                        reconnects += 1;
                        if reconnects > MAX_RECONNECTS {
                            break;
                        }
                        match target.connect().await {
                            Ok(c) => conn = c,
                            Err(_) => break,
                        }
                    }
                }
            }
            out
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    let mut bytes = 0;
    let mut first_error = None;
    for t in tasks {
        let out = t.await?;
        all.extend_from_slice(&out.lat);
        errors += out.errors;
        bytes += out.bytes;
        if first_error.is_none() {
            first_error = out.first_error;
        }
    }
    let (server_cores, client_cores, other_cores) = sampler.await.unwrap_or((None, None, None));
    if let Some(e) = &first_error {
        eprintln!("    note: first error seen: {e}");
    }
    if all.is_empty() {
        bail!("no operation completed inside the measurement window");
    }
    all.sort_unstable();
    Ok(Stats {
        ops: all.len() as u64,
        errors,
        secs: load.duration.as_secs_f64(),
        bytes,
        p50: percentile(&all, 0.50),
        p90: percentile(&all, 0.90),
        p99: percentile(&all, 0.99),
        p999: percentile(&all, 0.999),
        max: all.last().copied().unwrap_or(0),
        server_cores,
        client_cores,
        other_cores,
    })
}
