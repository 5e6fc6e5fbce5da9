//! First start and later starts: the data directory, the master key, the bootstrap admin token,
//! the local TLS CA and server certificate, the database and the vault `default`.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use certvault_crypto::{CertParams, KeyAlg, PrivateKey, SymKey};
use certvault_store::{SqliteStore, Store};

use crate::ServerError;

/// What a start found or made.
#[derive(Debug)]
pub struct DataDir {
    /// The store.
    pub store: Store,
    /// The master key.
    pub master: MasterKey,
    /// The backup key.
    pub backup_key: SymKey,
    /// The audit key (HMAC key of the audit chain).
    pub audit_key: SymKey,
    /// SHA-256 of the admin token.
    pub admin_token_hash: [u8; 32],
    /// The admin token, when it was created by this start (to print once).
    pub new_admin_token: Option<String>,
    /// Path of the master key file.
    pub master_path: PathBuf,
    /// Path of the local CA certificate.
    pub ca_path: PathBuf,
    /// Path of the admin token file.
    pub token_path: PathBuf,
    /// Server certificate chain (PEM file).
    pub server_cert_path: PathBuf,
    /// Server key (PEM file).
    pub server_key_path: PathBuf,
}

use crate::masterkey::{
    self, AUDIT_KEY_AAD, BACKUP_KEY_AAD, MASTER_CHECK_AAD, MasterKey, MasterKind,
};
use certvault_hsm::Hsm;

fn io_err(path: &Path, e: std::io::Error) -> ServerError {
    ServerError::DataDir(format!("{}: {e}", path.display()))
}

/// Writes a new file with mode 0600, failing if it exists.
fn write_private(path: &Path, data: &[u8]) -> Result<(), ServerError> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| io_err(path, e))?;
    f.write_all(data).map_err(|e| io_err(path, e))?;
    f.sync_all().map_err(|e| io_err(path, e))
}

fn write_public(path: &Path, data: &[u8]) -> Result<(), ServerError> {
    std::fs::write(path, data).map_err(|e| io_err(path, e))
}

fn read_private(path: &Path) -> Result<Vec<u8>, ServerError> {
    let meta = std::fs::metadata(path).map_err(|e| io_err(path, e))?;
    if meta.permissions().mode() & 0o077 != 0 {
        tracing::warn!(path = %path.display(), "file is readable by other users; set its mode to 0600");
    }
    std::fs::read(path).map_err(|e| io_err(path, e))
}

fn random_token() -> Result<String, ServerError> {
    let bytes = certvault_crypto::random_bytes(32).map_err(ServerError::crypto)?;
    Ok(format!("cvt_{}", URL_SAFE_NO_PAD.encode(bytes)))
}

/// Opens or initialises the data directory. `database` is a `postgres://` URL to keep the
/// store in PostgreSQL; `None` keeps it in SQLite in the data directory (`certvault.db`). The
/// master key, local CA, server certificate and admin token file stay in the data directory
/// either way (replicas sharing a database share the master key file).
pub async fn open_data_dir(
    dir: &Path,
    database: Option<&str>,
    base_domain: &str,
    now: i64,
    hsm: Option<&Hsm>,
    new_master: MasterKind,
) -> Result<DataDir, ServerError> {
    std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    let master_path = dir.join("master.key");
    let store_err = |e: certvault_store::StoreError| ServerError::Store(e.to_string());

    // the database, and whether it was initialised before
    let (store, db_existed, db_name) = match database {
        Some(url) => {
            if !certvault_store::is_postgres_url(url) {
                return Err(ServerError::Store(
                    "--database must be a postgres:// or postgresql:// URL (SQLite lives in the \
                     data directory without it)"
                        .into(),
                ));
            }
            let store = Store::open(url).await.map_err(store_err)?;
            let existed = match store.meta("master_check").await {
                Ok(v) => v.is_some(),
                Err(e) => {
                    store.close();
                    return Err(store_err(e));
                }
            };
            (store, existed, "the PostgreSQL database".to_owned())
        }
        None => {
            let db_path = dir.join("certvault.db");
            let existed = db_path.exists();
            let store = Store::Sqlite(SqliteStore::open(&db_path).map_err(store_err)?);
            (
                store,
                existed,
                format!("the database {}", db_path.display()),
            )
        }
    };

    // master key
    let master = if master_path.exists() {
        masterkey::read_key_file(&master_path, hsm)
    } else if db_existed {
        Err(ServerError::MasterKey(format!(
            "{db_name} exists but the master key file {} is missing: without it the stored keys \
             cannot be decrypted. Restore the master key file; certvault will not create a new one.",
            master_path.display()
        )))
    } else {
        MasterKey::generate(new_master, hsm)
            .and_then(|key| masterkey::write_key_file(&master_path, &key).map(|()| key))
    };
    let master = match master {
        Ok(k) => k,
        Err(e) => {
            store.close();
            return Err(e);
        }
    };

    // master key check: the database remembers a value sealed under its master key. Replicas
    // starting together on an empty database each try to insert it; one wins, the others read
    // the winner's back and must hold the same master key.
    let check = match store.meta("master_check").await {
        Ok(Some(v)) => Some(v),
        Ok(None) => {
            let sealed = master.seal(MASTER_CHECK_AAD, b"certvault")?;
            let written = store
                .put_meta("master_check", sealed, true)
                .await
                .map_err(store_err)?;
            if written {
                None
            } else {
                store.meta("master_check").await.map_err(store_err)?
            }
        }
        Err(e) => return Err(store_err(e)),
    };
    let master = match check {
        Some(sealed) => match masterkey::resolve_at_start(&master_path, master, &sealed, hsm) {
            Ok(k) => k,
            Err(e) => {
                store.close();
                return Err(e);
            }
        },
        None => master,
    };

    // backup and audit keys: 32 random bytes sealed under the master key, created once (the
    // first insert wins; concurrent first starts read the winner's back). The audit key never
    // changes (the chain depends on it).
    let backup_key = sealed_singleton(&store, &master, "backup_key", BACKUP_KEY_AAD).await?;
    let audit_key = sealed_singleton(&store, &master, "audit_key", AUDIT_KEY_AAD).await?;

    // admin token
    let token_path = dir.join("admin.token");
    let mut new_admin_token = None;
    let token = if token_path.exists() {
        String::from_utf8_lossy(&read_private(&token_path)?)
            .trim()
            .to_owned()
    } else {
        let t = random_token()?;
        write_private(&token_path, format!("{t}\n").as_bytes())?;
        new_admin_token = Some(t.clone());
        t
    };
    if token.is_empty() {
        return Err(ServerError::DataDir(format!(
            "{} is empty",
            token_path.display()
        )));
    }
    let admin_token_hash = certvault_crypto::sha256(token.as_bytes());

    // TLS
    let tls_dir = dir.join("tls");
    std::fs::create_dir_all(&tls_dir).map_err(|e| io_err(&tls_dir, e))?;
    let (ca_path, server_cert_path, server_key_path) = ensure_tls(&tls_dir, base_domain, now)?;

    Ok(DataDir {
        store,
        master,
        master_path,
        backup_key,
        audit_key,
        admin_token_hash,
        new_admin_token,
        ca_path,
        token_path,
        server_cert_path,
        server_key_path,
    })
}

/// The symmetric key sealed in `meta` under `key`: opened if present, else created with an
/// insert-if-absent and read back (so processes starting together agree on one).
async fn sealed_singleton(
    store: &Store,
    master: &MasterKey,
    key: &str,
    aad: &[u8],
) -> Result<SymKey, ServerError> {
    let store_err = |e: certvault_store::StoreError| ServerError::Store(e.to_string());
    let sealed = match store.meta(key).await.map_err(store_err)? {
        Some(sealed) => sealed,
        None => {
            let k = SymKey::generate().map_err(ServerError::crypto)?;
            let sealed = master.seal(aad, k.as_bytes())?;
            if store.put_meta(key, sealed, true).await.map_err(store_err)? {
                return Ok(k);
            }
            store.meta(key).await.map_err(store_err)?.ok_or_else(|| {
                ServerError::Store(format!("the {key} vanished while it was being created"))
            })?
        }
    };
    let raw = master.open(aad, &sealed)?;
    SymKey::from_slice(&raw).map_err(ServerError::crypto)
}

const DAY: i64 = 86_400;

fn ensure_tls(
    tls_dir: &Path,
    base_domain: &str,
    now: i64,
) -> Result<(PathBuf, PathBuf, PathBuf), ServerError> {
    let ca_path = tls_dir.join("ca.pem");
    let ca_key_path = tls_dir.join("ca.key");
    let cert_path = tls_dir.join("server.pem");
    let key_path = tls_dir.join("server.key");
    let domain_path = tls_dir.join("server.domain");

    let (ca_key, ca_der) = if ca_path.exists() && ca_key_path.exists() {
        let key = certvault_crypto::parse_pem(&read_private(&ca_key_path)?)
            .map_err(ServerError::crypto)?
            .key
            .ok_or_else(|| {
                ServerError::DataDir(format!("{} holds no key", ca_key_path.display()))
            })?;
        let certs =
            certvault_crypto::parse_pem(&std::fs::read(&ca_path).map_err(|e| io_err(&ca_path, e))?)
                .map_err(ServerError::crypto)?
                .certs;
        let der = certs.into_iter().next().ok_or_else(|| {
            ServerError::DataDir(format!("{} holds no certificate", ca_path.display()))
        })?;
        (key, der)
    } else {
        let key = PrivateKey::generate(KeyAlg::Ec(certvault_core::policy::Curve::P256))
            .map_err(ServerError::crypto)?;
        let params = CertParams {
            subject: "CN=certvault local CA, O=certvault".into(),
            key_usage: vec![
                certvault_core::policy::KeyUsage::KeyCertSign,
                certvault_core::policy::KeyUsage::CrlSign,
                certvault_core::policy::KeyUsage::DigitalSignature,
            ],
            is_ca: true,
            not_before: now - 3600,
            not_after: now + 10 * 365 * DAY,
            ..CertParams::default()
        };
        let der = certvault_crypto::self_signed(&key, &params).map_err(ServerError::crypto)?;
        let _ = std::fs::remove_file(&ca_key_path);
        write_private(
            &ca_key_path,
            certvault_crypto::to_pem(Some(&key), &[]).as_bytes(),
        )?;
        write_public(
            &ca_path,
            certvault_crypto::to_pem(None, std::slice::from_ref(&der)).as_bytes(),
        )?;
        let _ = std::fs::remove_file(&cert_path);
        (key, der)
    };

    let domain_ok = std::fs::read_to_string(&domain_path).is_ok_and(|d| d.trim() == base_domain);
    let fresh = cert_path.exists()
        && key_path.exists()
        && std::fs::read(&cert_path)
            .ok()
            .and_then(|pem| certvault_crypto::parse_pem(&pem).ok())
            .and_then(|b| {
                b.certs
                    .first()
                    .and_then(|c| certvault_crypto::parse_certificate(c).ok())
            })
            .is_some_and(|info| info.not_after > now + 30 * DAY);
    if !(domain_ok && fresh) {
        let key = PrivateKey::generate(KeyAlg::Ec(certvault_core::policy::Curve::P256))
            .map_err(ServerError::crypto)?;
        let params = CertParams {
            subject: "CN=certvault".into(),
            dns_names: vec![
                "localhost".into(),
                base_domain.to_owned(),
                format!("*.{base_domain}"),
            ],
            ip_addresses: vec![
                std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
                std::net::IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
            ],
            ekus: vec!["1.3.6.1.5.5.7.3.1".into()],
            key_usage: vec![certvault_core::policy::KeyUsage::DigitalSignature],
            not_before: now - 3600,
            not_after: now + 397 * DAY,
            ..CertParams::default()
        };
        let der = certvault_crypto::issue(&ca_key, &ca_der, &key.public_key(), &params)
            .map_err(ServerError::crypto)?;
        let _ = std::fs::remove_file(&key_path);
        write_private(
            &key_path,
            certvault_crypto::to_pem(Some(&key), &[]).as_bytes(),
        )?;
        write_public(
            &cert_path,
            certvault_crypto::to_pem(None, &[der, ca_der]).as_bytes(),
        )?;
        write_public(&domain_path, format!("{base_domain}\n").as_bytes())?;
    }
    Ok((ca_path, cert_path, key_path))
}

/// Loads the rustls server configuration from the PEM files.
pub fn tls_config(cert_path: &Path, key_path: &Path) -> Result<rustls::ServerConfig, ServerError> {
    let chain =
        certvault_crypto::parse_pem(&std::fs::read(cert_path).map_err(|e| io_err(cert_path, e))?)
            .map_err(ServerError::crypto)?
            .certs
            .into_iter()
            .map(rustls::pki_types::CertificateDer::from)
            .collect::<Vec<_>>();
    let key = certvault_crypto::parse_pem(&read_private(key_path)?)
        .map_err(ServerError::crypto)?
        .key
        .ok_or_else(|| ServerError::DataDir(format!("{} holds no key", key_path.display())))?;
    let key_der = rustls::pki_types::PrivateKeyDer::Pkcs8(key.pkcs8_der().to_vec().into());
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ServerError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|e| ServerError::Tls(e.to_string()))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}
