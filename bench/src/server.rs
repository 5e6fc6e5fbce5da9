//! Starts and stops the release server as a child process on a free loopback port.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::net::Target;

/// The base domain the benchmarks use.
pub const BASE_DOMAIN: &str = "certvault.test";

/// A running server process.
pub struct Server {
    child: Option<Child>,
    /// Its address.
    pub addr: SocketAddr,
    /// Its data directory (the admin token is `admin.token` in it).
    pub data_dir: PathBuf,
    /// How to reach it.
    pub target: Target,
}

/// A free loopback port (bound and released; the server binds it right after).
pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

impl Server {
    /// Starts `bin serve` on `data_dir` and waits until `/healthz` answers. The server's output
    /// (which shows a new admin token once) goes to `log` and is never printed.
    pub async fn start(bin: &Path, data_dir: &Path, log: &Path) -> Result<Self> {
        Self::start_with(bin, data_dir, log, &[], &[]).await
    }

    /// As [`Self::start`], with extra `serve` arguments and environment variables.
    pub async fn start_with(
        bin: &Path,
        data_dir: &Path,
        log: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Self> {
        if !bin.exists() {
            bail!(
                "{} not found; build it with `cargo build --release -p certvault` (bench/run.sh does)",
                bin.display()
            );
        }
        let port = free_port()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let logf = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("{}", log.display()))?;
        let child = Command::new(bin)
            .arg("serve")
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--base-domain")
            .arg(BASE_DOMAIN)
            .arg("--log")
            .arg("warn")
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(logf.try_clone()?)
            .stderr(logf)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        // Until it is ready, a guard stops the child on every error path.
        let mut guard = ChildGuard(Some(child));
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(c) = guard.0.as_mut()
                && let Some(status) = c.try_wait()?
            {
                bail!("the server exited early ({status}); see {}", log.display());
            }
            let ca = data_dir.join("tls/ca.pem");
            let token = data_dir.join("admin.token");
            if ca.exists()
                && token.exists()
                && let Ok(t) = Target::new(addr, &ca, &token)
                && let Ok(mut c) = t.connect().await
                && c.get_ok("/healthz").await.is_ok()
            {
                return Ok(Self {
                    child: guard.0.take(),
                    addr,
                    data_dir: data_dir.to_owned(),
                    target: t,
                });
            }
            if Instant::now() > deadline {
                bail!(
                    "the server did not become ready in 120 s; see {}",
                    log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The server's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `VmRSS` and `VmHWM` in KiB, from /proc/PID/status.
    pub fn memory_kib(&self) -> Result<(u64, u64)> {
        let pid = self.pid().context("the server is not running")?;
        let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let field = |name: &str| -> Option<u64> {
            s.lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        };
        Ok((field("VmRSS:").unwrap_or(0), field("VmHWM:").unwrap_or(0)))
    }

    /// Stops the server with SIGTERM (graceful), then SIGKILL after 30 s.
    pub fn stop(&mut self) {
        if let Some(child) = self.child.take() {
            stop_child(child);
        }
    }
}

struct ChildGuard(Option<Child>);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(c) = self.0.take() {
            stop_child(c);
        }
    }
}

/// SIGTERM to this child (by its pid), then SIGKILL after 30 s.
fn stop_child(mut child: Child) {
    {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}
