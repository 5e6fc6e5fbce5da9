//! The master key: it seals each vault key and the server-wide values kept in `meta`. It can be
//! rotated while the server runs: every sealed value is re-wrapped under a new key in one
//! transaction, and requests keep working throughout because vault keys themselves do not change.
//!
//! Crash safety of a rotation: the new key is first written to `master.key.next` (fsync), then
//! the database is re-wrapped in one transaction, then `master.key.next` is renamed over
//! `master.key`. A start finds whichever of the two files opens the database (see
//! [`resolve_at_start`]).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use certvault_crypto::SymKey;
use certvault_hsm::{Hsm, KeyRef};
use certvault_store::{SealedKind, Store};
use zeroize::Zeroizing;

use crate::ServerError;
use crate::state::vault_key_aad;

/// AAD of the value that tells whether a master key belongs to a database.
pub const MASTER_CHECK_AAD: &[u8] = b"certvault/master-check/v1";
/// AAD of the sealed backup key.
pub const BACKUP_KEY_AAD: &[u8] = b"certvault/backup-key/v1";
/// AAD of the sealed audit key (the HMAC key of the audit chain).
pub const AUDIT_KEY_AAD: &[u8] = b"certvault/audit-key/v1";

/// `meta` entries sealed under the master key, with their AAD.
pub const SEALED_META: &[(&str, &[u8])] = &[
    ("master_check", MASTER_CHECK_AAD),
    ("backup_key", BACKUP_KEY_AAD),
    ("audit_key", AUDIT_KEY_AAD),
];

/// A master key.
#[derive(Debug)]
pub enum MasterKey {
    /// A 256-bit AES key held in `master.key`.
    File(SymKey),
    /// A non-extractable AES-256 key inside a PKCS#11 token; `master.key` holds its reference.
    Pkcs11 {
        /// The token.
        hsm: Hsm,
        /// The key.
        key: KeyRef,
    },
}

/// Which kind of master key a rotation makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MasterKind {
    /// A key file.
    File,
    /// A key inside the configured PKCS#11 token.
    Pkcs11,
}

impl MasterKey {
    /// Seals `plaintext` under the master key.
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, ServerError> {
        match self {
            Self::File(k) => certvault_crypto::seal(k, aad, plaintext).map_err(ServerError::crypto),
            Self::Pkcs11 { hsm, key } => hsm.aes_seal(key, aad, plaintext).map_err(hsm_err),
        }
    }

    /// Opens what [`MasterKey::seal`] sealed.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, ServerError> {
        match self {
            Self::File(k) => certvault_crypto::open(k, aad, sealed).map_err(ServerError::crypto),
            Self::Pkcs11 { hsm, key } => hsm.aes_open(key, aad, sealed).map_err(hsm_err),
        }
    }

    /// The kind of key.
    pub fn kind(&self) -> MasterKind {
        match self {
            Self::File(_) => MasterKind::File,
            Self::Pkcs11 { .. } => MasterKind::Pkcs11,
        }
    }

    /// A new master key of `kind`.
    pub fn generate(kind: MasterKind, hsm: Option<&Hsm>) -> Result<Self, ServerError> {
        match kind {
            MasterKind::File => Ok(Self::File(SymKey::generate().map_err(ServerError::crypto)?)),
            MasterKind::Pkcs11 => {
                let hsm = hsm.ok_or_else(|| {
                    ServerError::MasterKey(
                        "a PKCS#11 master key needs a token: configure --pkcs11-module".into(),
                    )
                })?;
                let suffix =
                    hex::encode(certvault_crypto::random_bytes(6).map_err(ServerError::crypto)?);
                let key = hsm
                    .generate_aes_key(&format!("certvault-master-{suffix}"))
                    .map_err(hsm_err)?;
                Ok(Self::Pkcs11 {
                    hsm: hsm.clone(),
                    key,
                })
            }
        }
    }

    /// What `master.key` holds for this key: the hex key, or the token key's reference.
    fn file_text(&self) -> Zeroizing<String> {
        match self {
            Self::File(k) => Zeroizing::new(format!("{}\n", hex::encode(k.as_bytes()))),
            Self::Pkcs11 { key, .. } => Zeroizing::new(format!("{key}\n")),
        }
    }
}

/// An HSM error as a start/serve error.
pub fn hsm_err(e: certvault_hsm::HsmError) -> ServerError {
    ServerError::Hsm(e.to_string())
}

/// The master key in use, and the other key a sealed value read around a rotation may be under.
#[derive(Debug)]
pub struct MasterKeys {
    current: RwLock<(Arc<MasterKey>, Option<Arc<MasterKey>>)>,
    file: PathBuf,
    /// Held for writing during a rotation and for reading while a value is sealed under the
    /// current key and stored (vault creation), so no value sealed under the old key lands
    /// after the re-wrap.
    pub rotation: tokio::sync::RwLock<()>,
}

impl MasterKeys {
    /// Wraps the key loaded at start; `file` is the `master.key` path.
    pub fn new(key: MasterKey, file: PathBuf) -> Self {
        Self {
            current: RwLock::new((Arc::new(key), None)),
            file,
            rotation: tokio::sync::RwLock::new(()),
        }
    }

    fn keys(&self) -> (Arc<MasterKey>, Option<Arc<MasterKey>>) {
        match self.current.read() {
            Ok(g) => (g.0.clone(), g.1.clone()),
            Err(p) => {
                let g = p.into_inner();
                (g.0.clone(), g.1.clone())
            }
        }
    }

    /// Seals under the current key.
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, ServerError> {
        self.keys().0.seal(aad, plaintext)
    }

    /// Opens with the current key, or with the other one (the incoming key while a rotation
    /// commits, the previous key after it).
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, ServerError> {
        let (current, next) = self.keys();
        match current.open(aad, sealed) {
            Ok(v) => Ok(v),
            Err(e) => match next {
                Some(n) => n.open(aad, sealed),
                None => Err(e),
            },
        }
    }

    fn set(&self, current: Arc<MasterKey>, next: Option<Arc<MasterKey>>) {
        match self.current.write() {
            Ok(mut g) => *g = (current, next),
            Err(p) => *p.into_inner() = (current, next),
        }
    }

    /// The kind of the current key.
    pub fn kind(&self) -> MasterKind {
        self.keys().0.kind()
    }

    /// Re-wraps every vault key and sealed `meta` value under a new master key of `kind` (the
    /// current kind when `None`), then makes it the master key. Returns how many vault keys
    /// were re-wrapped.
    pub async fn rotate(
        &self,
        store: &Store,
        kind: Option<MasterKind>,
        hsm: Option<&Hsm>,
    ) -> Result<usize, ServerError> {
        let _exclusive = self.rotation.write().await;
        let (old, _) = self.keys();
        let kind = kind.unwrap_or_else(|| old.kind());
        let hsm = hsm.cloned();
        let new = tokio::task::spawn_blocking(move || MasterKey::generate(kind, hsm.as_ref()))
            .await
            .map_err(|e| ServerError::MasterKey(e.to_string()))??;
        let new = Arc::new(new);
        let next_path = next_path(&self.file);
        let _ = std::fs::remove_file(&next_path);
        write_key_file(&next_path, &new)?;
        // From here until the swap, values may be sealed under either key.
        self.set(old.clone(), Some(new.clone()));
        let (o, n) = (old.clone(), new.clone());
        let rewrap = move |kind: &SealedKind, sealed: &[u8]| -> Result<Vec<u8>, String> {
            let aad = match kind {
                SealedKind::VaultKey { name_key } => vault_key_aad(name_key),
                SealedKind::Meta { key } => SEALED_META
                    .iter()
                    .find(|(k, _)| k == key)
                    .map(|(_, aad)| aad.to_vec())
                    .ok_or_else(|| format!("unknown sealed meta value {key}"))?,
            };
            let plain = o.open(&aad, sealed).map_err(|e| e.to_string())?;
            n.seal(&aad, &plain).map_err(|e| e.to_string())
        };
        let meta: Vec<String> = SEALED_META.iter().map(|(k, _)| (*k).to_owned()).collect();
        match store.rewrap_sealed(meta, Box::new(rewrap)).await {
            Ok(n) => {
                std::fs::rename(&next_path, &self.file).map_err(|e| {
                    ServerError::MasterKey(format!("cannot install the new master key: {e}"))
                })?;
                sync_dir(&self.file);
                // The old key stays as the fallback for reads that fetched a value before the
                // commit and open it after the swap; nothing is sealed under it any more.
                self.set(new, Some(old));
                Ok(n)
            }
            Err(e) => {
                self.set(old, None);
                let _ = std::fs::remove_file(&next_path);
                Err(ServerError::Store(format!(
                    "master key rotation rolled back: {e}"
                )))
            }
        }
    }
}

/// `master.key.next` beside `master.key`.
pub fn next_path(file: &Path) -> PathBuf {
    let mut p = file.as_os_str().to_owned();
    p.push(".next");
    PathBuf::from(p)
}

fn sync_dir(file: &Path) {
    if let Some(dir) = file.parent()
        && let Ok(d) = std::fs::File::open(dir)
    {
        let _ = d.sync_all();
    }
}

/// Writes a master key file (mode 0600, fsync); fails if it exists.
pub fn write_key_file(path: &Path, key: &MasterKey) -> Result<(), ServerError> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| ServerError::MasterKey(format!("{}: {e}", path.display())))?;
    f.write_all(key.file_text().as_bytes())
        .map_err(|e| ServerError::MasterKey(format!("{}: {e}", path.display())))?;
    f.sync_all()
        .map_err(|e| ServerError::MasterKey(format!("{}: {e}", path.display())))?;
    sync_dir(path);
    Ok(())
}

/// Reads a master key file: a hex key, or the reference of a key in the configured token.
pub fn read_key_file(path: &Path, hsm: Option<&Hsm>) -> Result<MasterKey, ServerError> {
    let text = Zeroizing::new(
        std::fs::read_to_string(path)
            .map_err(|e| ServerError::MasterKey(format!("{}: {e}", path.display())))?,
    );
    let text = text.trim();
    if text.starts_with("pkcs11:") {
        let key: KeyRef = text.parse().map_err(|e: certvault_hsm::HsmError| {
            ServerError::MasterKey(format!("{}: {e}", path.display()))
        })?;
        let hsm = hsm.filter(|h| h.token_label() == key.token()).ok_or_else(|| {
            ServerError::MasterKey(format!(
                "the master key lives in PKCS#11 token '{}': start certvault with --pkcs11-module and \
                 --pkcs11-token {} (and its PIN)",
                key.token(),
                key.token()
            ))
        })?;
        return Ok(MasterKey::Pkcs11 {
            hsm: hsm.clone(),
            key,
        });
    }
    let bytes = Zeroizing::new(hex::decode(text).map_err(|_| {
        ServerError::MasterKey(format!("{} is not a hex-encoded key", path.display()))
    })?);
    SymKey::from_slice(&bytes)
        .map(MasterKey::File)
        .map_err(|_| {
            ServerError::MasterKey(format!("{} does not hold a 256-bit key", path.display()))
        })
}

/// Decides which master key opens the database at start, finishing or undoing an interrupted
/// rotation: `master.key` if it opens the check value (a stale `master.key.next` is removed),
/// else `master.key.next` if it does (it is renamed over `master.key`). `check` is the sealed
/// check value from the database.
pub fn resolve_at_start(
    file: &Path,
    current: MasterKey,
    check: &[u8],
    hsm: Option<&Hsm>,
) -> Result<MasterKey, ServerError> {
    let next = next_path(file);
    if current.open(MASTER_CHECK_AAD, check).is_ok() {
        if next.exists() {
            tracing::warn!(file = %next.display(), "removing the key of a master key rotation that did not commit");
            let _ = std::fs::remove_file(&next);
        }
        return Ok(current);
    }
    if next.exists() {
        let candidate = read_key_file(&next, hsm)?;
        if candidate.open(MASTER_CHECK_AAD, check).is_ok() {
            tracing::warn!("finishing an interrupted master key rotation");
            std::fs::rename(&next, file).map_err(|e| {
                ServerError::MasterKey(format!("cannot install {}: {e}", next.display()))
            })?;
            sync_dir(file);
            return Ok(candidate);
        }
    }
    Err(ServerError::MasterKey(format!(
        "the master key in {} does not match the database; refusing to start (nothing was written)",
        file.display()
    )))
}
