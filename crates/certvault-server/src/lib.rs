//! certvault server: the Azure Key Vault certificates wire API over HTTPS on an embedded store,
//! with bearer-token auth and vault routing by host name.
#![forbid(unsafe_code)]

pub mod admin;
pub mod auth;
pub mod bootstrap;
pub mod error;
pub mod http;
pub mod kv;
pub mod masterkey;
pub mod state;

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
    /// Binding or serving failed.
    #[error("listener: {0}")]
    Io(String),
}

impl ServerError {
    pub(crate) fn crypto(e: certvault_crypto::CryptoError) -> Self {
        Self::Crypto(e.to_string())
    }
}

/// Settings of `certvault serve`.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Data directory.
    pub data_dir: PathBuf,
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
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
}

/// Opens the data directory, binds the listener and returns the server ready to run.
pub async fn start(opts: &ServeOptions, clock: SharedClock) -> Result<Started, ServerError> {
    let now = clock.now();
    let dd = bootstrap::open_data_dir(&opts.data_dir, &opts.base_domain, now).await?;
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
    let state = Arc::new(AppState::new(
        dd.store,
        masterkey::MasterKeys::new(masterkey::MasterKey::File(dd.master), dd.master_path),
        dd.backup_key,
        http,
        clock,
        vec![dd.admin_token_hash],
    ));
    if state
        .store
        .vault("default")
        .await
        .map_err(|e| ServerError::Store(e.to_string()))?
        .is_none()
    {
        state
            .create_vault("default")
            .await
            .map_err(|e| ServerError::Store(e.message))?;
    }
    Ok(Started {
        addr,
        ca_path: dd.ca_path,
        token_path: dd.token_path,
        new_admin_token: dd.new_admin_token,
        state,
        listener,
        tls,
    })
}

impl Started {
    /// Serves until `shutdown` resolves, then stops accepting and lets open requests finish.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), ServerError> {
        let store = self.state.store.clone();
        let purger = tokio::spawn(purge_loop(self.state.clone()));
        http::serve(self.listener, self.tls, self.state, shutdown).await;
        purger.abort();
        let _ = purger.await;
        store.close();
        Ok(())
    }
}

/// Purges soft-deleted certificates whose scheduled purge date has passed, at start and then
/// every ten minutes.
async fn purge_loop(state: Arc<AppState>) {
    loop {
        match state.store.purge_due(state.clock.now()).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                purged = n,
                "purged certificates past their scheduled purge date"
            ),
            Err(e) => tracing::warn!(error = %e, "scheduled purge failed"),
        }
        tokio::time::sleep(std::time::Duration::from_secs(600)).await;
    }
}
