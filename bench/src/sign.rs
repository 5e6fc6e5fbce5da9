//! The key-operation benchmark of the keys issue: ES256 and RS256 `sign` through the API (TLS
//! keep-alive, the certificate's own key, digest in, raw signature out) against GET /healthz of
//! the same server, and RSA-2048 against the in-process aws-lc-rs signing rate.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};
use base64::Engine;
use bytes::Bytes;
use http::{Method, StatusCode};

use crate::benches::{create_and_wait, healthz_op, measure, median_by};
use crate::load::{Op, OpFuture, Rng, Stats};
use crate::net::Conn;
use crate::seed::Kty;
use crate::server::Server;
use crate::{Common, check};

/// Settings of `sign`.
#[derive(clap::Args, Debug)]
pub struct SignArgs {
    /// Concurrent connections.
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// Rounds (each measures /healthz, then the signatures).
    #[arg(long, default_value_t = 2)]
    pub rounds: usize,
}

struct SignOp {
    path: String,
    body: Bytes,
}

impl Op for SignOp {
    fn run<'a>(
        &'a self,
        conn: &'a mut Conn,
        _w: usize,
        _s: u64,
        _rng: &'a mut Rng,
    ) -> OpFuture<'a> {
        Box::pin(async move {
            let r = conn
                .request(Method::POST, &self.path, Some(self.body.clone()))
                .await?;
            if r.status != StatusCode::OK {
                bail!("sign answered {}", r.status);
            }
            Ok(r.body.len() as u64)
        })
    }
}

fn sign_op(name: &str, alg: &str) -> Result<Arc<dyn Op>> {
    let digest = certvault_crypto::sha256(b"certvault sign benchmark");
    let value = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest);
    let body = serde_json::to_vec(&serde_json::json!({"alg": alg, "value": value}))?;
    Ok(Arc::new(SignOp {
        path: format!("/keys/{name}//sign?api-version=7.4"),
        body: Bytes::from(body),
    }))
}

/// In-process RSA-2048 RS256 signing with `threads` threads for `d` (the same crypto call the
/// server makes, on an already-parsed key): operations per second.
fn rsa_sign_baseline(threads: usize, d: Duration) -> Result<f64> {
    let key = certvault_crypto::PrivateKey::generate(Kty::Rsa.alg()).map_err(|e| anyhow!("{e}"))?;
    let digest = certvault_crypto::sha256(b"baseline");
    let end = Instant::now() + d;
    let handles: Vec<_> = (0..threads.max(1))
        .map(|_| {
            let key = key.clone();
            std::thread::spawn(move || -> Result<u64> {
                let mut n = 0;
                loop {
                    certvault_crypto::sign(&key, certvault_crypto::SignAlg::RS256, &digest)
                        .map_err(|e| anyhow!("{e}"))?;
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

/// Runs the benchmark.
pub async fn sign(common: &Common, a: &SignArgs) -> Result<bool> {
    println!(
        "== sign: ES256 (P-256) and RS256 (RSA-2048) through the API, {} connections, TLS keep-alive",
        a.connections
    );
    let dir = common.tempdir("certvault-bench-sign-")?;
    let mut server = Server::start(
        &common.server_bin,
        &dir.path().join("data"),
        &dir.path().join("server.log"),
    )
    .await?;
    let mut conn = server.target.connect().await?;
    create_and_wait(&mut conn, Kty::Ec, "sign-ec").await?;
    create_and_wait(&mut conn, Kty::Rsa, "sign-rsa").await?;
    drop(conn);
    let (mut health, mut ec, mut rsa, mut base) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 0..a.rounds.max(1) {
        println!("  round {}", round + 1);
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
        ec.push(
            measure(
                "POST /keys/{ec}//sign ES256",
                &server,
                common,
                a.connections,
                sign_op("sign-ec", "ES256")?,
            )
            .await?,
        );
        rsa.push(
            measure(
                "POST /keys/{rsa}//sign RS256",
                &server,
                common,
                a.connections,
                sign_op("sign-rsa", "RS256")?,
            )
            .await?,
        );
        let b = tokio::task::spawn_blocking({
            let d = common.duration;
            move || rsa_sign_baseline(2, d)
        })
        .await??;
        println!("  in-process aws-lc-rs RSA-2048 RS256 sign, 2 threads: {b:.1}/s");
        base.push(b);
    }
    server.stop();
    let h = median_by(&health, Stats::rate);
    let e = median_by(&ec, Stats::rate);
    let r = median_by(&rsa, Stats::rate);
    let mut ratios: Vec<f64> = ec
        .iter()
        .zip(&health)
        .map(|(s, h)| s.rate() / h.rate().max(1e-9))
        .collect();
    ratios.sort_by(f64::total_cmp);
    let ec_ratio = ratios.get(ratios.len() / 2).copied().unwrap_or(0.0);
    base.sort_by(f64::total_cmp);
    let b = base.get(base.len() / 2).copied().unwrap_or(0.0);
    println!("RESULT sign:");
    let mut ok = check(
        "ES256 sign >= 10,000/s",
        e >= 10_000.0,
        &format!("{e:.0}/s"),
    );
    ok &= check(
        "ES256 sign >= 0.4 x /healthz",
        ec_ratio >= 0.4,
        &format!("median per-round ratio {ec_ratio:.3} (median rates {e:.0} / {h:.0})"),
    );
    ok &= check(
        "RS256 sign >= 0.8 x in-process aws-lc-rs signing",
        r >= 0.8 * b,
        &format!("{r:.0}/s / {b:.0}/s = {:.3}", r / b.max(1e-9)),
    );
    Ok(ok)
}
