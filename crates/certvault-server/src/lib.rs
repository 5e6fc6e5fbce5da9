//! certvault server: the Azure Key Vault certificates wire API over HTTPS on an embedded store,
//! with bearer-token auth and vault routing by host name.
#![forbid(unsafe_code)]

pub mod acme;
pub mod admin;
pub mod admin_access;
pub mod admin_lifecycle;
pub mod audit;
pub mod auth;
pub mod bootstrap;
pub mod error;
pub mod http;
pub mod identity;
pub mod jwt;
pub mod kv;
pub mod lifecycle;
pub mod masterkey;
pub mod metrics;
pub mod notify;
pub mod openapi;
pub mod ops;
pub mod state;
pub mod ui;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use certvault_core::clock::SharedClock;

pub use state::{AppState, HttpSettings};

/// Errors that stop the server from starting or running.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The data directory could not be set up.
    #[error("data directory: {0}")]
    DataDir(String),
    /// The master key is missing, malformed or does not match the database.
    #[error("master key: {0}")]
    MasterKey(String),
    /// The store failed.
    #[error("store: {0}")]
    Store(String),
    /// TLS set-up failed.
    #[error("tls: {0}")]
    Tls(String),
    /// A cryptographic step failed.
    #[error("crypto: {0}")]
    Crypto(String),
    /// The PKCS#11 token failed or is misconfigured.
    #[error("pkcs11: {0}")]
    Hsm(String),
    /// Binding or serving failed.
    #[error("listener: {0}")]
    Io(String),
    /// A setting is invalid (JWT authentication, identity endpoint).
    #[error("configuration: {0}")]
    Config(String),
}

impl ServerError {
    pub(crate) fn crypto(e: certvault_crypto::CryptoError) -> Self {
        Self::Crypto(e.to_string())
    }
}

/// When audit records wait for `fdatasync` (`--audit-sync`).
pub use certvault_store::SyncPolicy as AuditSync;

/// Settings of `certvault serve`.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Data directory.
    pub data_dir: PathBuf,
    /// A `postgres://` URL to keep the store in PostgreSQL; `None`: SQLite in the data
    /// directory.
    pub database: Option<String>,
    /// Listen address.
    pub listen: SocketAddr,
    /// Base domain of vault host names.
    pub base_domain: String,
    /// The port clients use, when it differs from the listen port (e.g. behind a proxy).
    pub public_port: Option<u16>,
    /// Largest request body.
    pub max_body: usize,
    /// Soft-delete retention for new vaults.
    pub recoverable_days: i64,
    /// The PKCS#11 token for HSM keys (and optionally the master key), if any.
    pub pkcs11: Option<Pkcs11Options>,
    /// The kind of master key a new data directory gets.
    pub new_master_key: masterkey::MasterKind,
    /// JWT bearer tokens from an identity provider, when enabled.
    pub jwt: Option<jwt::JwtSettings>,
    /// The managed-identity token endpoint, when enabled.
    pub identity: Option<identity::IdentitySettings>,
    /// The lifecycle engine, notification delivery and SMTP.
    pub lifecycle: lifecycle::LifecycleSettings,
    /// When audit records wait for `fdatasync`: `Requested` (default: requests that change
    /// state and background actions; reads are synced within 5 ms) or `Always`.
    pub audit_sync: certvault_store::SyncPolicy,
    /// A separate plain-HTTP listener for `GET /metrics`, when enabled.
    pub metrics_listen: Option<metrics::MetricsListen>,
    /// Per-certificate `/metrics` series for at most this many certificates, those expiring
    /// soonest (`--metrics-certificate-series`; 0: none).
    pub metrics_certificate_series: usize,
    /// How long a shutdown waits for requests in flight and claimed lifecycle work.
    pub shutdown_grace: std::time::Duration,
}

impl ServeOptions {
    /// Defaults for a server on a free loopback port with `data_dir` and `base_domain`: 1 MiB
    /// bodies, 90 days' retention, a file master key, no token, no JWT, no identity endpoint.
    pub fn local(data_dir: &std::path::Path, base_domain: &str) -> Self {
        Self {
            data_dir: data_dir.to_owned(),
            database: None,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            base_domain: base_domain.to_owned(),
            public_port: None,
            max_body: 1024 * 1024,
            recoverable_days: 90,
            pkcs11: None,
            new_master_key: masterkey::MasterKind::File,
            jwt: None,
            identity: None,
            lifecycle: lifecycle::LifecycleSettings::default(),
            audit_sync: certvault_store::SyncPolicy::default(),
            metrics_listen: None,
            metrics_certificate_series: metrics::DEFAULT_CERTIFICATE_SERIES,
            shutdown_grace: std::time::Duration::from_secs(30),
        }
    }
}

/// PKCS#11 settings. The PIN comes from a file or an environment variable, never a flag.
#[derive(Debug, Clone)]
pub struct Pkcs11Options {
    /// The module (e.g. /usr/lib/softhsm/libsofthsm2.so).
    pub module: PathBuf,
    /// The token label.
    pub token: String,
    /// A file holding the PIN (mode 0600).
    pub pin_file: Option<PathBuf>,
    /// An environment variable holding the PIN.
    pub pin_env: Option<String>,
    /// Sessions kept open and logged in.
    pub pool_size: usize,
}

/// Opens the PKCS#11 token (blocking work, off the runtime).
pub async fn open_hsm(o: &Pkcs11Options) -> Result<certvault_hsm::Hsm, ServerError> {
    let o = o.clone();
    tokio::task::spawn_blocking(move || {
        let pin = certvault_hsm::read_pin(o.pin_file.as_deref(), o.pin_env.as_deref())
            .map_err(masterkey::hsm_err)?;
        certvault_hsm::Hsm::open(certvault_hsm::HsmConfig {
            module: o.module,
            token_label: o.token,
            pin,
            pool_size: o.pool_size,
        })
        .map_err(masterkey::hsm_err)
    })
    .await
    .map_err(|e| ServerError::Hsm(e.to_string()))?
}

/// A started server.
#[derive(Debug)]
pub struct Started {
    /// The bound address.
    pub addr: SocketAddr,
    /// The local CA certificate clients should trust.
    pub ca_path: PathBuf,
    /// Where the admin token is stored.
    pub token_path: PathBuf,
    /// The admin token if it was created now (print it once).
    pub new_admin_token: Option<String>,
    /// The shared state.
    pub state: Arc<AppState>,
    /// The bound address of the managed-identity endpoint, when enabled.
    pub identity_addr: Option<SocketAddr>,
    /// The bound address of the separate metrics listener, when enabled.
    pub metrics_addr: Option<SocketAddr>,
    listener: tokio::net::TcpListener,
    metrics_listener: Option<tokio::net::TcpListener>,
    shutdown_grace: std::time::Duration,
    tls: Arc<rustls::ServerConfig>,
    identity: Option<(tokio::net::TcpListener, identity::IdentitySettings)>,
}

/// Opens the data directory, binds the listener and returns the server ready to run.
pub async fn start(opts: &ServeOptions, clock: SharedClock) -> Result<Started, ServerError> {
    let now = clock.now();
    if clock.is_test() {
        tracing::warn!(
            "TEST CLOCK IN USE: time can be moved forward through the admin API; never run this in production"
        );
    }
    let mut lifecycle = lifecycle::Lifecycle::new(opts.lifecycle.clone())?;
    let metrics_listener = match opts.metrics_listen {
        Some(m) => Some(metrics::bind(m).await?),
        None => None,
    };
    let metrics_addr = match &metrics_listener {
        Some(l) => Some(l.local_addr().map_err(|e| ServerError::Io(e.to_string()))?),
        None => None,
    };
    let identity = match &opts.identity {
        Some(i) => {
            identity::prepare(i)?;
            Some((identity::bind(i).await?, i.clone()))
        }
        None => None,
    };
    let hsm = match &opts.pkcs11 {
        Some(o) => Some(open_hsm(o).await?),
        None => None,
    };
    let dd = bootstrap::open_data_dir(
        &opts.data_dir,
        opts.database.as_deref(),
        &opts.base_domain,
        now,
        hsm.as_ref(),
        opts.new_master_key,
    )
    .await?;
    // The lease owner id is kept in the data directory (each replica has its own), so a
    // restarted process is the same owner: it releases what its previous run held at once
    // instead of waiting for those leases to run out.
    lifecycle.owner = replica_id(&opts.data_dir)?;
    let tls = Arc::new(bootstrap::tls_config(
        &dd.server_cert_path,
        &dd.server_key_path,
    )?);
    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .map_err(|e| ServerError::Io(format!("cannot listen on {}: {e}", opts.listen)))?;
    let addr = listener
        .local_addr()
        .map_err(|e| ServerError::Io(e.to_string()))?;
    let http = HttpSettings {
        base_domain: opts.base_domain.clone(),
        public_port: opts.public_port.unwrap_or(addr.port()),
        max_body: opts.max_body,
        recoverable_days: opts.recoverable_days,
    };
    let jwt = match &opts.jwt {
        Some(s) => {
            let loaded = match jwt::JwtAuth::new(s.clone(), &http.resource()) {
                Ok(auth) => auth.load().await.map(|keys| (auth, keys)),
                Err(e) => Err(e),
            };
            let (auth, keys) = match loaded {
                Ok(x) => x,
                Err(e) => {
                    dd.store.close();
                    return Err(e);
                }
            };
            tracing::info!(issuer = %s.issuer, audiences = ?auth.audiences(), keys, "JWT authentication enabled");
            Some(auth)
        }
        None => None,
    };
    let identity_addr = match &identity {
        Some((l, _)) => Some(l.local_addr().map_err(|e| ServerError::Io(e.to_string()))?),
        None => None,
    };
    let state = Arc::new(
        AppState::new(
            dd.store,
            masterkey::MasterKeys::new(dd.master, dd.master_path),
            dd.backup_key,
            dd.audit_key,
            http,
            clock,
            hsm,
        )
        .with_jwt(jwt)
        .with_lifecycle(lifecycle)
        .with_audit_sync(opts.audit_sync)
        .with_metrics_certificate_series(opts.metrics_certificate_series),
    );
    let store_err = |e: certvault_store::StoreError| ServerError::Store(e.to_string());
    if let Err(e) = state.auditor.start().await {
        state.store.close();
        return Err(store_err(e));
    }
    // Audit records of renewals that committed while their process died before appending
    // them (this replica's earlier run, or one whose lease on them ended).
    lifecycle::drain_logged(&state, None).await;
    // Singletons of a first start: replicas starting together on an empty database all try
    // to create them; the first insert wins and the others read it back.
    let admin = match state.store.principal("admin").await.map_err(store_err)? {
        Some(p) => p,
        None => match state
            .store
            .create_principal("admin", true, Some("bootstrap administrator".into()), now)
            .await
        {
            Ok(p) => p,
            Err(certvault_store::StoreError::Conflict(_)) => state
                .store
                .principal("admin")
                .await
                .map_err(store_err)?
                .ok_or_else(|| ServerError::Store("the admin principal vanished".into()))?,
            Err(e) => return Err(store_err(e)),
        },
    };
    state
        .store
        .ensure_token(
            admin.id,
            dd.admin_token_hash.to_vec(),
            "bootstrap (admin.token)",
            now,
        )
        .await
        .map_err(store_err)?;
    if state
        .store
        .vault("default")
        .await
        .map_err(|e| ServerError::Store(e.to_string()))?
        .is_none()
        && let Err(e) = state.create_vault("default").await
        // (another replica may have created it at the same moment)
        && state
            .store
            .vault("default")
            .await
            .map_err(store_err)?
            .is_none()
    {
        return Err(ServerError::Store(e.message));
    }
    Ok(Started {
        addr,
        ca_path: dd.ca_path,
        token_path: dd.token_path,
        new_admin_token: dd.new_admin_token,
        state,
        identity_addr,
        metrics_addr,
        listener,
        metrics_listener,
        shutdown_grace: opts.shutdown_grace,
        tls,
        identity,
    })
}

impl Started {
    /// Serves until `shutdown` resolves, then shuts down gracefully:
    ///
    /// 1. `/readyz` turns 503 and the listeners stop accepting connections;
    /// 2. requests in flight finish (up to the grace period; then their connections close);
    /// 3. the lifecycle engine and the delivery worker claim nothing more; the items they are
    ///    working on finish within what is left of the grace period; the leases of items
    ///    still unfinished (or claimed and not started) are released, so another process
    ///    (or the next start) takes them at once;
    /// 4. ACME order tasks stop (their state is stored after every step; the next start
    ///    resumes them);
    /// 5. the audit journal is flushed into the database and the store is closed.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), ServerError> {
        let store = self.state.store.clone();
        let state = self.state.clone();
        let grace = self.shutdown_grace;
        let purger = tokio::spawn(purge_loop(self.state.clone()));
        let lifecycle = self.state.lifecycle.settings.enabled.then(|| {
            (
                tokio::spawn(lifecycle::run_engine(self.state.clone())),
                tokio::spawn(notify::run_dispatcher(self.state.clone())),
            )
        });
        let (stop_listeners, listeners_stopped) = tokio::sync::watch::channel(false);
        let stopped = |rx: &tokio::sync::watch::Receiver<bool>| {
            let mut rx = rx.clone();
            async move {
                let _ = rx.wait_for(|s| *s).await;
            }
        };
        let identity = self.identity.map(|(listener, settings)| {
            let endpoint = Arc::new(identity::IdentityEndpoint::new(
                self.state.clone(),
                settings,
            ));
            tokio::spawn(endpoint.serve(listener, stopped(&listeners_stopped)))
        });
        let metrics_task = self.metrics_listener.map(|listener| {
            tokio::spawn(metrics::serve(
                self.state.clone(),
                listener,
                stopped(&listeners_stopped),
            ))
        });
        tokio::spawn(acme::resume_all(self.state.clone()));
        let stopping = self.state.clone();
        let shutdown = async move {
            shutdown.await;
            stopping.begin_shutdown();
            tracing::info!("shutting down: no new connections; finishing requests in flight");
        };
        let deadline = http::serve(self.listener, self.tls, self.state, shutdown, grace).await;
        let _ = stop_listeners.send(true);
        // Background work: claim nothing more, let what runs finish, release the rest.
        state.lifecycle.stop();
        purger.abort();
        let _ = purger.await;
        if let Some((engine, dispatcher)) = lifecycle {
            let _ = engine.await;
            let _ = dispatcher.await;
            loop {
                let (jobs, deliveries) = state.lifecycle.in_flight();
                if jobs == 0 && deliveries == 0 {
                    break;
                }
                if tokio::time::Instant::now() >= deadline {
                    tracing::warn!(
                        jobs,
                        deliveries,
                        "lifecycle work still running at the end of the grace period; its leases are released"
                    );
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            release_leases(&state).await;
        }
        state.acme.shutdown();
        if state.store.shared() {
            match state
                .store
                .release_acme_orders(&state.lifecycle.owner)
                .await
            {
                Ok(0) => {}
                Ok(n) => tracing::info!(orders = n, "released the leases of ACME orders"),
                Err(e) => tracing::warn!(error = %e, "could not release ACME order leases"),
            }
        }
        if let Some(task) = identity {
            let _ = task.await;
        }
        if let Some(task) = metrics_task {
            let _ = task.await;
        }
        state.auditor.stop().await;
        store.close();
        tracing::info!("shutdown complete");
        Ok(())
    }
}

/// Releases the leases this process holds (lifecycle items it claimed and did not finish),
/// and, when deliveries are still in flight, its delivery leases (by owner id: other replicas'
/// leases stay).
async fn release_leases(state: &AppState) {
    use certvault_store::Scheduler as _;
    let now = state.clock.now();
    match state
        .store
        .release_leases_of(&state.lifecycle.owner, now)
        .await
    {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            items = n,
            "released the leases of unfinished lifecycle items"
        ),
        Err(e) => tracing::warn!(error = %e, "could not release lifecycle leases"),
    }
    if state.lifecycle.in_flight().1 > 0 {
        match state
            .store
            .release_delivery_leases_of(&state.lifecycle.owner, now)
            .await
        {
            Ok(n) => tracing::info!(
                deliveries = n,
                "released the leases of unfinished deliveries"
            ),
            Err(e) => tracing::warn!(error = %e, "could not release delivery leases"),
        }
    }
}

/// Purges soft-deleted certificates whose scheduled purge date has passed, at start and then
/// every ten minutes.
async fn purge_loop(state: Arc<AppState>) {
    loop {
        match state.store.purge_due(state.clock.now()).await {
            Ok((0, _)) => {}
            Ok((n, refs)) => {
                tracing::info!(
                    purged = n,
                    "purged certificates past their scheduled purge date"
                );
                state.key_cache.clear();
                state.destroy_hsm_keys(refs).await;
                state
                    .auditor
                    .system_logged(
                        "certificates.purge-scheduled",
                        serde_json::json!({"purged": n}),
                    )
                    .await;
            }
            Err(e) => tracing::warn!(error = %e, "scheduled purge failed"),
        }
        match state.store.purge_due_vaults(state.clock.now()).await {
            Ok((0, _)) => {}
            Ok((n, refs)) => {
                tracing::info!(purged = n, "purged vaults past their scheduled purge date");
                state.key_cache.clear();
                state.auth_cache.clear();
                state.destroy_hsm_keys(refs).await;
                state
                    .auditor
                    .system_logged("vaults.purge-scheduled", serde_json::json!({"purged": n}))
                    .await;
            }
            Err(e) => tracing::warn!(error = %e, "scheduled vault purge failed"),
        }
        tokio::time::sleep(std::time::Duration::from_secs(600)).await;
    }
}

/// The replica's lease owner id, `certvault-<32 hex>`: read from `<data-dir>/replica.id`, or
/// made and written there on first start.
fn replica_id(data_dir: &std::path::Path) -> Result<String, ServerError> {
    let path = data_dir.join("replica.id");
    if let Ok(s) = std::fs::read_to_string(&path) {
        let id = s.trim();
        if id.starts_with("certvault-")
            && id.len() <= 64
            && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            return Ok(id.to_owned());
        }
    }
    let id = format!("certvault-{}", uuid::Uuid::new_v4().simple());
    std::fs::write(&path, format!("{id}\n"))
        .map_err(|e| ServerError::Io(format!("cannot write {}: {e}", path.display())))?;
    Ok(id)
}
