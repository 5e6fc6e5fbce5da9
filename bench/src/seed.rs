//! Seeds certificate versions straight through the store API, with keys sealed exactly as the
//! server seals them (vault key, per-version AAD), so the server can serve them afterwards.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, anyhow};
use certvault_core::VersionId;
use certvault_core::policy::{
    ContentType, Curve, IssuerParams, KeyPropsIn, KeyType, Origin, Policy, PolicyIn, SecretPropsIn,
    X509PropsIn,
};
use certvault_crypto::{CertParams, KeyAlg, PrivateKey};
use certvault_store::{NewVersion, Store, VersionRecord};
use tokio::task::JoinSet;

use crate::server::BASE_DOMAIN;

/// The key type of benchmark certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kty {
    /// RSA-2048.
    Rsa,
    /// EC P-256.
    Ec,
}

impl Kty {
    /// The crypto algorithm.
    pub fn alg(self) -> KeyAlg {
        match self {
            Self::Rsa => KeyAlg::Rsa(2048),
            Self::Ec => KeyAlg::Ec(Curve::P256),
        }
    }

    /// The label printed in results.
    pub fn label(self) -> &'static str {
        match self {
            Self::Rsa => "RSA-2048",
            Self::Ec => "EC P-256",
        }
    }

    /// The wire policy of benchmark certificates: self-signed, exportable, PEM secret.
    pub fn policy(self, subject: &str) -> PolicyIn {
        let (kty, key_size, crv) = match self {
            Self::Rsa => (KeyType::Rsa, Some(2048), None),
            Self::Ec => (KeyType::Ec, None, Some(Curve::P256)),
        };
        PolicyIn {
            key_props: Some(KeyPropsIn {
                exportable: Some(true),
                kty: Some(kty),
                key_size,
                reuse_key: Some(false),
                crv,
            }),
            secret_props: Some(SecretPropsIn {
                content_type: Some(ContentType::Pem),
            }),
            x509_props: Some(X509PropsIn {
                subject: Some(subject.to_owned()),
                validity_months: Some(12),
                ..X509PropsIn::default()
            }),
            issuer: Some(IssuerParams {
                name: Some("Self".into()),
                ..IssuerParams::default()
            }),
            ..PolicyIn::default()
        }
    }
}

/// The name of benchmark certificate `i`.
pub fn cert_name(i: usize) -> String {
    format!("c{i:07}")
}

/// AAD of a sealed private key: the same string the server's `kv::certs::key_aad` builds
/// (checked after seeding by reading a secret back through the server).
fn key_aad(version: &str) -> Vec<u8> {
    format!("certvault/key/v1/{version}").into_bytes()
}

struct Material {
    keys: Vec<(PrivateKey, Vec<u8>)>,
    policy_json: String,
    key_ops: String,
    nbf: i64,
    exp: i64,
}

/// A seeding plan: certificates `certs` (by index), `versions` new versions for each.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Certificate indexes.
    pub certs: std::ops::Range<usize>,
    /// New versions per certificate.
    pub versions: usize,
}

/// Opens `data_dir` through the server's own start-up path (creating the data directory, the
/// master key and the vault `default` if needed), seeds the plan, and closes the store.
pub async fn seed(
    data_dir: &std::path::Path,
    kty: Kty,
    plans: &[Plan],
    pool: usize,
) -> Result<u64> {
    let opts = certvault_server::ServeOptions::local(data_dir, BASE_DOMAIN);
    let clock: certvault_core::clock::SharedClock = Arc::new(certvault_core::SystemClock);
    let now = clock.now();
    let started = certvault_server::start(&opts, clock)
        .await
        .map_err(|e| anyhow!("opening the data directory: {e}"))?;
    let state = started.state.clone();
    let vault = state
        .vault("default")
        .await
        .map_err(|e| anyhow!("vault default: {}", e.message))?;
    let store = state.store.clone();
    drop(started);

    // A pool of real key pairs with matching self-signed certificates.
    let t = Instant::now();
    let nbf = now - 600;
    let exp = now + 365 * 86_400;
    let pool = pool.max(1);
    let keys = tokio::task::spawn_blocking(move || -> Result<Vec<(PrivateKey, Vec<u8>)>> {
        let mut out = Vec::new();
        for i in 0..pool {
            let k = PrivateKey::generate(kty.alg()).map_err(|e| anyhow!("{e}"))?;
            let params = CertParams {
                subject: format!("CN=certvault-bench-seed-{i}"),
                not_before: nbf,
                not_after: exp,
                ..CertParams::default()
            };
            let der = certvault_crypto::self_signed(&k, &params).map_err(|e| anyhow!("{e}"))?;
            out.push((k, der));
        }
        Ok(out)
    })
    .await??;
    let policy = Policy::resolve(&kty.policy("CN=certvault-bench"), Origin::Created, true)
        .map_err(|e| anyhow!("policy: {e}"))?;
    let material = Arc::new(Material {
        keys,
        policy_json: serde_json::to_string(&policy)?,
        // As the server records them at create (`kv::certs::key_ops_string`).
        key_ops: policy
            .key_ops()
            .iter()
            .map(|o| o.as_str())
            .collect::<Vec<_>>()
            .join(","),
        nbf,
        exp,
    });
    eprintln!(
        "    seed: {} key pairs ({}) made in {:.1}s",
        material.keys.len(),
        kty.label(),
        t.elapsed().as_secs_f64()
    );

    let t = Instant::now();
    let mut done = 0u64;
    let total: u64 = plans
        .iter()
        .map(|p| (p.certs.len() * p.versions) as u64)
        .sum();
    let mut next_report = 100_000u64;
    const IN_FLIGHT: usize = 512;
    let mut set: JoinSet<Result<()>> = JoinSet::new();
    for plan in plans {
        // Round-robin over certificates so concurrent writes touch different certificates.
        for round in 0..plan.versions {
            for i in plan.certs.clone() {
                while set.len() >= IN_FLIGHT {
                    if let Some(r) = set.join_next().await {
                        r??;
                        done += 1;
                    }
                }
                let store = store.clone();
                let material = material.clone();
                let vault_key = vault.key.clone();
                let vault_id = vault.vault.id;
                set.spawn(async move {
                    add_one(&store, vault_id, &vault_key, &material, i, round).await
                });
                if done >= next_report {
                    eprintln!(
                        "    seed: {done}/{total} versions, {:.0}/s",
                        done as f64 / t.elapsed().as_secs_f64()
                    );
                    next_report += 100_000;
                }
            }
        }
    }
    while let Some(r) = set.join_next().await {
        r??;
        done += 1;
    }
    // One last durable write, then close: the writer thread finishes and checkpoints.
    store
        .put_meta(
            "certvault_bench_seeded",
            done.to_string().into_bytes(),
            false,
        )
        .await
        .context("final write")?;
    eprintln!(
        "    seed: {done} versions in {:.1}s ({:.0}/s)",
        t.elapsed().as_secs_f64(),
        done as f64 / t.elapsed().as_secs_f64()
    );
    store.close();
    drop(store);
    drop(vault);
    drop(state);
    // Give the writer thread a moment to exit and checkpoint.
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    Ok(done)
}

async fn add_one(
    store: &Store,
    vault_id: i64,
    vault_key: &certvault_crypto::SymKey,
    m: &Material,
    i: usize,
    round: usize,
) -> Result<()> {
    let (key, cer) = &m.keys[(i + round) % m.keys.len()];
    let version = VersionId::generate();
    let sealed =
        certvault_crypto::seal_object(vault_key, &key_aad(version.as_str()), key.pkcs8_der())
            .map_err(|e| anyhow!("{e}"))?;
    let now = m.nbf + 600;
    let record = VersionRecord {
        cert_id: 0,
        version: version.as_str().to_owned(),
        seq: 0,
        created: now,
        updated: now,
        enabled: true,
        nbf: Some(m.nbf),
        exp: Some(m.exp),
        tags: None,
        cer: Some(cer.clone()),
        chain: vec![],
        key_blob: Some(sealed),
        key_ref: None,
        spki: key.public_key().spki_der().to_vec(),
        content_type: ContentType::Pem.as_str().to_owned(),
        exportable: true,
        preserve_order: false,
        key_ops: Some(m.key_ops.clone()),
    };
    store
        .add_version(
            vault_id,
            &cert_name(i),
            m.policy_json.clone(),
            now,
            NewVersion {
                record,
                operation: None,
            },
        )
        .await
        .map_err(|e| anyhow!("add_version: {e}"))?;
    Ok(())
}
