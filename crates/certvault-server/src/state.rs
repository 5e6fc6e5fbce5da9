//! Shared server state: the store, the master key, vault keys, configuration and the clock.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use certvault_core::clock::SharedClock;
use certvault_crypto::SymKey;

use crate::masterkey::{MasterKeys, MasterKind};
use certvault_hsm::Hsm;
use certvault_store::{Store, Vault};

use crate::error::{ApiError, ApiResult};

/// Settings the request handlers need.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// Vault host names are `<vault>.<base_domain>`.
    pub base_domain: String,
    /// The port clients use (left out of URLs when 443).
    pub public_port: u16,
    /// Largest request body accepted, in bytes.
    pub max_body: usize,
    /// Soft-delete retention for new vaults, in days.
    pub recoverable_days: i64,
}

impl HttpSettings {
    /// `https://<base-domain>[:port]`, the challenge `resource`.
    pub fn resource(&self) -> String {
        if self.public_port == 443 {
            format!("https://{}", self.base_domain)
        } else {
            format!("https://{}:{}", self.base_domain, self.public_port)
        }
    }

    /// The `WWW-Authenticate` challenge value.
    pub fn challenge(&self) -> String {
        format!(
            "Bearer authorization=\"{}/certvault\", resource=\"{}\"",
            self.resource(),
            self.resource()
        )
    }
}

/// A vault with its unwrapped key.
#[derive(Debug)]
pub struct VaultCtx {
    /// The vault row.
    pub vault: Vault,
    /// The vault key.
    pub key: SymKey,
}

/// Server state shared by all requests.
#[derive(Debug)]
pub struct AppState {
    /// The store.
    pub store: Store,
    /// The master key (rotatable).
    pub master: MasterKeys,
    /// The key backups are sealed with.
    pub backup_key: SymKey,
    /// The audit trail.
    pub auditor: crate::audit::Auditor,
    /// HTTP settings.
    pub http: HttpSettings,
    /// The clock.
    pub clock: SharedClock,
    /// Resolved bearer tokens.
    pub auth_cache: crate::auth::AuthCache,
    /// JWT bearer tokens from an identity provider, when configured.
    pub jwt: Option<crate::jwt::JwtAuth>,
    /// The PKCS#11 token, when configured.
    pub hsm: Option<Hsm>,
    /// Opened software keys used for key operations, so that a key signing many times is
    /// decrypted and parsed once.
    pub key_cache: KeyCache,
    /// Rendered managed secrets of the current store epoch.
    pub secret_cache: crate::kv::secret_cache::SecretCache,
    /// Key versions resolved for key operations in the current store epoch.
    pub key_version_cache: crate::kv::key_version_cache::KeyVersionCache,
    /// The lifecycle engine and notification delivery (settings, wake-ups, work in flight).
    pub lifecycle: crate::lifecycle::Lifecycle,
    /// ACME order tasks and account clients.
    pub acme: crate::acme::AcmeRuntime,
    vaults: RwLock<HashMap<String, Arc<VaultCtx>>>,
    /// Request counters and histograms, delivery counters, the per-certificate scrape cache.
    pub metrics: crate::metrics::Metrics,
    /// Set when a shutdown has begun (`/readyz` answers 503 from then on).
    shutting_down: std::sync::atomic::AtomicBool,
    /// The store's shared epoch the vault, token and key caches were last cleared at (see
    /// [`AppState::follow_replicas`]).
    shared_seen: std::sync::atomic::AtomicU64,
}

/// The most rendered secrets kept in memory (bytes): 32 MiB holds about 10,000 RSA-2048
/// PEM secrets with their key.
pub const SECRET_CACHE_BYTES: usize = 32 << 20;

/// AAD binding a sealed vault key to its vault.
pub fn vault_key_aad(name_key: &str) -> Vec<u8> {
    format!("certvault/vault-key/v1/{name_key}").into_bytes()
}

impl AppState {
    /// Builds the state.
    pub fn new(
        store: Store,
        master: MasterKeys,
        backup_key: SymKey,
        audit_key: SymKey,
        http: HttpSettings,
        clock: SharedClock,
        hsm: Option<Hsm>,
    ) -> Self {
        Self {
            auditor: crate::audit::Auditor::new(store.clone(), audit_key, clock.clone()),
            store,
            master,
            backup_key,
            http,
            clock,
            auth_cache: crate::auth::AuthCache::default(),
            jwt: None,
            hsm,
            key_cache: KeyCache::new(4096),
            secret_cache: crate::kv::secret_cache::SecretCache::new(SECRET_CACHE_BYTES),
            key_version_cache: crate::kv::key_version_cache::KeyVersionCache::new(4096),
            lifecycle: crate::lifecycle::Lifecycle::default(),
            acme: crate::acme::AcmeRuntime::default(),
            vaults: RwLock::new(HashMap::new()),
            metrics: crate::metrics::Metrics::new(),
            shutting_down: std::sync::atomic::AtomicBool::new(false),
            shared_seen: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Drops the vault, token and key caches when another replica changed something since
    /// the last look (the store's shared epoch moved; on PostgreSQL it moves on every notice
    /// of another process's write, and on every look while those notices cannot be heard).
    /// A no-op on SQLite. This process's own changes clear what they affect directly.
    pub fn follow_replicas(&self) {
        use std::sync::atomic::Ordering;
        let now = self.store.shared_epoch();
        if self.shared_seen.swap(now, Ordering::AcqRel) != now {
            if let Ok(mut cache) = self.vaults.write() {
                cache.clear();
            }
            self.auth_cache.clear();
            self.key_cache.clear();
        }
    }

    /// Marks the server as shutting down.
    pub fn begin_shutdown(&self) {
        self.shutting_down
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Whether a shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Accepts JWTs verified by `jwt` as bearer tokens.
    pub fn with_jwt(mut self, jwt: Option<crate::jwt::JwtAuth>) -> Self {
        self.jwt = jwt;
        self
    }

    /// When audit records wait for `fdatasync` (before the auditor starts).
    pub fn with_audit_sync(mut self, sync: certvault_store::SyncPolicy) -> Self {
        self.auditor.set_sync_policy(sync);
        self
    }

    /// Exports per-certificate metrics series for at most `n` certificates (0: none).
    pub fn with_metrics_certificate_series(mut self, n: usize) -> Self {
        self.metrics.set_certificate_series(n);
        self
    }

    /// Uses `lifecycle` (settings, SMTP transport) for the lifecycle engine.
    pub fn with_lifecycle(mut self, lifecycle: crate::lifecycle::Lifecycle) -> Self {
        self.lifecycle = lifecycle;
        self
    }

    /// The vault named `name_key`, with its key, cached after the first load.
    pub async fn vault(&self, name_key: &str) -> ApiResult<Arc<VaultCtx>> {
        self.follow_replicas();
        if let Ok(cache) = self.vaults.read()
            && let Some(v) = cache.get(name_key)
        {
            return Ok(v.clone());
        }
        let vault = self.store.vault(name_key).await?.ok_or_else(|| {
            ApiError::not_found(
                "VaultNotFound",
                format!("The vault '{name_key}' does not exist."),
            )
        })?;
        let key_bytes = self
            .master
            .open(&vault_key_aad(name_key), &vault.wrapped_key)
            .map_err(|e| ApiError::internal(&e))?;
        let key = SymKey::from_slice(&key_bytes).map_err(|e| ApiError::internal(&e))?;
        let ctx = Arc::new(VaultCtx { vault, key });
        if let Ok(mut cache) = self.vaults.write() {
            cache.insert(name_key.to_owned(), ctx.clone());
        }
        Ok(ctx)
    }

    /// Creates a vault with a fresh vault key sealed under the master key.
    pub async fn create_vault(&self, name: &str) -> ApiResult<Vault> {
        let key = SymKey::generate().map_err(|e| ApiError::internal(&e))?;
        // No rotation may re-wrap the vault keys between sealing this one and storing it.
        let _no_rotation = self.master.rotation.read().await;
        let wrapped = self
            .master
            .seal(&vault_key_aad(&name.to_ascii_lowercase()), key.as_bytes())
            .map_err(|e| ApiError::internal(&e))?;
        Ok(self
            .store
            .create_vault(name, wrapped, self.http.recoverable_days, self.clock.now())
            .await?)
    }

    /// Drops a vault from the cache (deleted, recovered or changed).
    pub fn forget_vault(&self, name_key: &str) {
        if let Ok(mut cache) = self.vaults.write() {
            cache.remove(name_key);
        }
    }

    /// Destroys purged keys inside the token (best effort: a failure is logged, the purge
    /// stands).
    pub async fn destroy_hsm_keys(&self, refs: Vec<String>) {
        if refs.is_empty() {
            return;
        }
        let Some(hsm) = self.hsm.clone() else {
            tracing::warn!(
                keys = refs.len(),
                "purged certificates had HSM keys, but no PKCS#11 token is configured: they were not destroyed"
            );
            return;
        };
        let done = tokio::task::spawn_blocking(move || {
            for r in refs {
                match r.parse::<certvault_hsm::KeyRef>() {
                    Ok(k) if k.token() == hsm.token_label() => {
                        if let Err(e) = hsm.destroy(&k) {
                            tracing::warn!(key = %k, error = %e, "could not destroy a purged HSM key");
                        }
                    }
                    Ok(k) => tracing::warn!(key = %k, "a purged HSM key lives in another token; not destroyed"),
                    Err(e) => tracing::warn!(error = %e, "unreadable HSM key reference"),
                }
            }
        })
        .await;
        if let Err(e) = done {
            tracing::warn!(error = %e, "destroying purged HSM keys failed");
        }
    }

    /// Rotates the master key (see [`MasterKeys::rotate`]), then drops the cached vault keys so
    /// that every vault is loaded again through the new master key.
    pub async fn rotate_master_key(
        &self,
        kind: Option<MasterKind>,
    ) -> Result<usize, crate::ServerError> {
        let n = self
            .master
            .rotate(&self.store, kind, self.hsm.as_ref())
            .await?;
        if let Ok(mut cache) = self.vaults.write() {
            cache.clear();
        }
        Ok(n)
    }
}

/// A bounded map from (certificate row, version) to the opened private key.
#[derive(Debug)]
pub struct KeyCache {
    map: std::sync::Mutex<HashMap<(i64, String), certvault_crypto::PrivateKey>>,
    cap: usize,
}

impl KeyCache {
    /// An empty cache holding at most `cap` keys.
    pub fn new(cap: usize) -> Self {
        Self {
            map: std::sync::Mutex::new(HashMap::new()),
            cap,
        }
    }

    /// The cached key.
    pub fn get(&self, id: &(i64, String)) -> Option<certvault_crypto::PrivateKey> {
        self.map.lock().ok().and_then(|m| m.get(id).cloned())
    }

    /// Caches a key, evicting an arbitrary one when full.
    pub fn put(&self, id: (i64, String), key: certvault_crypto::PrivateKey) {
        if let Ok(mut m) = self.map.lock() {
            if m.len() >= self.cap
                && let Some(victim) = m.keys().next().cloned()
            {
                m.remove(&victim);
            }
            m.insert(id, key);
        }
    }

    /// Forgets every key (e.g. after a purge).
    pub fn clear(&self) {
        if let Ok(mut m) = self.map.lock() {
            m.clear();
        }
    }
}
