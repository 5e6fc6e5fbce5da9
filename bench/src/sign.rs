//! The key-operation benchmark of the keys issue: ES256 and RS256 `sign` through the API (TLS
//! keep-alive, the certificate's own key, digest in, raw signature out) against GET /healthz of
//! the same server, and RSA-2048 against the in-process aws-lc-rs signing rate.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};
use base64::Engine;
use bytes::Bytes;
use http::{Method, StatusCode};

use crate::benches::{create_and_wait, create_body_and_wait, healthz_op, measure, median_by};
use crate::load::{Op, OpFuture, Rng, Stats};
use crate::net::Conn;
use crate::seed::Kty;
use crate::server::Server;
use crate::{Common, check};
use certvault_core::policy::KeyType;

/// Settings of `sign`.
#[derive(clap::Args, Debug)]
pub struct SignArgs {
    /// Concurrent connections.
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// Rounds (each measures /healthz, then the signatures).
    #[arg(long, default_value_t = 2)]
    pub rounds: usize,
    /// Also report ES256 signing with an EC-HSM key in a SoftHSM2 token (a second server with
    /// `--pkcs11-module`); needs Debian's softhsm2 (`softhsm2-util`, the PKCS#11 module).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub softhsm: bool,
}

/// Debian's SoftHSM2 PKCS#11 module.
const SOFTHSM_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

/// Environment variables and `serve` arguments.
type ServeSetup = (Vec<(String, String)>, Vec<String>);

/// A fresh SoftHSM2 token in `dir`: the environment and `serve` arguments that use it.
fn softhsm_token(dir: &std::path::Path) -> Result<ServeSetup> {
    if !std::path::Path::new(SOFTHSM_MODULE).exists() {
        bail!("{SOFTHSM_MODULE} is missing: apt-get install softhsm2 (or pass --softhsm false)");
    }
    let tokens = dir.join("tokens");
    std::fs::create_dir_all(&tokens)?;
    let conf = dir.join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            tokens.display()
        ),
    )?;
    let pin = "bench-pin-4711";
    let label = "certvault-bench";
    let out = std::process::Command::new("softhsm2-util")
        .args(["--init-token", "--free", "--label", label])
        .args(["--so-pin", "bench-so-pin-0815", "--pin", pin])
        .env("SOFTHSM2_CONF", &conf)
        .output()
        .map_err(|e| anyhow!("softhsm2-util: {e} (apt-get install softhsm2)"))?;
    if !out.status.success() {
        bail!(
            "softhsm2-util --init-token failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let pin_file = dir.join("pin");
    std::fs::write(&pin_file, pin)?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&pin_file, std::fs::Permissions::from_mode(0o600))?;
    }
    let env = vec![("SOFTHSM2_CONF".to_owned(), conf.display().to_string())];
    let args = vec![
        "--pkcs11-module".to_owned(),
        SOFTHSM_MODULE.to_owned(),
        "--pkcs11-token".to_owned(),
        label.to_owned(),
        "--pkcs11-pin-file".to_owned(),
        pin_file.display().to_string(),
    ];
    Ok((env, args))
}

/// ES256 through the API with an EC-HSM (SoftHSM2) key, beside /healthz of the same server:
/// the figure the keys issue asks to report (no target).
async fn softhsm_sign(common: &Common, a: &SignArgs) -> Result<()> {
    let dir = common.tempdir("certvault-bench-sign-hsm-")?;
    let (env, args) = softhsm_token(dir.path())?;
    let env_ref: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let args_ref: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut server = Server::start_with(
        &common.server_bin,
        &dir.path().join("data"),
        &dir.path().join("server.log"),
        &args_ref,
        &env_ref,
    )
    .await?;
    let mut policy = Kty::Ec.policy("CN=sign-hsm");
    if let Some(k) = policy.key_props.as_mut() {
        k.kty = Some(KeyType::EcHsm);
        k.exportable = Some(false);
    }
    let body = Bytes::from(serde_json::to_vec(
        &serde_json::json!({ "policy": policy }),
    )?);
    let mut conn = server.target.connect().await?;
    create_body_and_wait(&mut conn, body, "sign-ec-hsm").await?;
    drop(conn);
    println!("  SoftHSM2 token, EC-HSM P-256 key (second server, same settings)");
    let h = measure(
        "GET /healthz (baseline, HSM server)",
        &server,
        common,
        a.connections,
        healthz_op(),
    )
    .await?;
    let s = measure(
        "POST /keys/{ec-hsm}//sign ES256",
        &server,
        common,
        a.connections,
        sign_op("sign-ec-hsm", "ES256")?,
    )
    .await?;
    server.stop();
    println!(
        "  SoftHSM2 ES256 sign through the API: {:.0}/s, {:.3} x /healthz of the same server (reported; no target)",
        s.rate(),
        s.rate() / h.rate().max(1e-9)
    );
    Ok(())
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
    if a.softhsm {
        softhsm_sign(common, a).await?;
    }
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
