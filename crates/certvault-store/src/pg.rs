//! PostgreSQL store: tokio-postgres through a deadpool connection pool.
//!
//! Same method set and semantics as [`crate::SqliteStore`]. Every write runs in one
//! transaction (READ COMMITTED) that takes the row locks the SQLite writer's global lock gave
//! for free (`FOR UPDATE` on the certificate a version is added to), and advances the change
//! epoch after it commits. Every committing write also sends `NOTIFY certvault_epoch` (inside its
//! transaction, so at commit); a dedicated connection of each process `LISTEN`s and advances
//! the epoch on every notice from another process ([`PgStore::shared_epoch`]), so replicas'
//! caches follow each other's writes. Connections are plain TCP or Unix sockets without TLS (`NoTls`):
//! fine for loopback and the tests; a remote database needs TLS added (tokio-postgres-rustls).

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use deadpool_postgres::{
    GenericClient, Manager, ManagerConfig, Object, Pool, RecyclingMethod, Transaction,
};
use tokio_postgres::types::ToSql;
use tokio_postgres::{NoTls, Row};

use crate::pg_schema::PG_MIGRATIONS;
use crate::records::{decode_chain, encode_chain};
use crate::sqlite::{CERT_COLS, LATEST_COMPLETED_ID, LATEST_VERSION_ID, OP_COLS, VER_COLS};
use crate::{
    CertRecord, CertificateDump, Conflict, IssuerRecord, NewVersion, OperationRecord, RenewalGuard,
    Rewrap, SealedKind, StoreError, Vault, VersionRecord, VersionUpdate, Which,
};

/// The advisory lock key held while migrations run, so replicas starting together apply them
/// once ("certvault" in ASCII, truncated to 8 bytes).
const MIGRATION_LOCK: i64 = 0x6365_7274_7661_756c;

/// Sends the change notice (at commit, inside a transaction), with this process's id.
const NOTIFY_SQL: &str = "SELECT pg_notify('certvault_epoch', $1)";

/// Parameters of a statement.
pub(crate) type Params<'a> = [&'a (dyn ToSql + Sync)];

/// The PostgreSQL store.
#[derive(Clone)]
pub struct PgStore {
    inner: Arc<PgInner>,
}

struct PgInner {
    pool: Pool,
    /// The change epochs, shared with the listener task.
    epochs: Arc<Epochs>,
    /// This process's id in the notices it sends (its own notices are not remote changes).
    instance: String,
    /// The task that `LISTEN`s for other processes' changes.
    listener: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Where, for logs (the URL without its password).
    display: String,
}

impl Drop for PgInner {
    fn drop(&mut self) {
        if let Ok(mut l) = self.listener.lock()
            && let Some(h) = l.take()
        {
            h.abort();
        }
    }
}

/// The channel every committing write notifies.
const EPOCH_CHANNEL: &str = "certvault_epoch";

/// Change epochs of one process.
struct Epochs {
    /// Advanced after every committed write that may change objects, in this process or (by
    /// notice) another one (see [`crate::SqliteStore::epoch`]).
    any: AtomicU64,
    /// Advanced only by other processes' changes (notices) and while they cannot be heard.
    remote: AtomicU64,
    /// Whether the listener connection is up and listening; while it is not, changes of other
    /// processes go unheard, so every read of an epoch advances it (no cache is trusted).
    listening: AtomicBool,
}

impl Epochs {
    fn read(&self, which: &AtomicU64) -> u64 {
        if self.listening.load(Ordering::Acquire) {
            which.load(Ordering::Acquire)
        } else {
            self.remote_change();
            which.load(Ordering::Acquire)
        }
    }

    fn remote_change(&self) {
        self.remote.fetch_add(1, Ordering::AcqRel);
        self.any.fetch_add(1, Ordering::AcqRel);
    }
}

/// Listens for other processes' change notices on a dedicated connection, reconnecting (with
/// a pause of up to 2 s) whenever it is lost; every (re)connection counts as a change, since
/// notices sent while disconnected are lost.
async fn listen(config: tokio_postgres::Config, epochs: Arc<Epochs>, instance: String) {
    let mut pause = Duration::from_millis(100);
    let mut logged = false;
    loop {
        if let Ok((client, mut conn)) = config.connect(NoTls).await {
            let sql = format!("LISTEN {EPOCH_CHANNEL}");
            let mut subscribe = std::pin::pin!(client.batch_execute(&sql));
            let mut subscribed = false;
            loop {
                tokio::select! {
                    r = &mut subscribe, if !subscribed => {
                        if r.is_err() {
                            break;
                        }
                        subscribed = true;
                        epochs.listening.store(true, Ordering::Release);
                        epochs.remote_change();
                        pause = Duration::from_millis(100);
                        if logged {
                            tracing::info!("listening for other replicas' changes again");
                            logged = false;
                        }
                    }
                    m = std::future::poll_fn(|cx| conn.poll_message(cx)) => match m {
                        Some(Ok(tokio_postgres::AsyncMessage::Notification(n))) => {
                            if n.payload() != instance {
                                epochs.remote_change();
                            }
                        }
                        Some(Ok(_)) => {}
                        Some(Err(_)) | None => break,
                    },
                }
            }
        }
        epochs.listening.store(false, Ordering::Release);
        epochs.remote_change();
        if !logged {
            tracing::warn!(
                "lost the database connection that hears other replicas' changes; caches are \
                 bypassed until it is back"
            );
            logged = true;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(2));
    }
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("database", &self.inner.display)
            .finish()
    }
}

/// Maps a driver error to a store error: the SQLSTATE and the server's message, never the
/// DETAIL (which can quote row values).
pub(crate) fn pg_err(e: tokio_postgres::Error) -> StoreError {
    match e.as_db_error() {
        Some(db) => StoreError::Database(format!("{} ({})", db.message(), db.code().code())),
        None => StoreError::Database(e.to_string()),
    }
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        pg_err(e)
    }
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        match e {
            deadpool_postgres::PoolError::Backend(b) => pg_err(b),
            other => StoreError::Database(other.to_string()),
        }
    }
}

/// Column `i` of a row.
pub(crate) fn col<'a, T: tokio_postgres::types::FromSql<'a>>(
    r: &'a Row,
    i: usize,
) -> Result<T, StoreError> {
    r.try_get(i).map_err(pg_err)
}

/// A `usize` count as the `i64` PostgreSQL takes.
pub(crate) fn count(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

pub(crate) fn cert_row(r: &Row, o: usize) -> Result<CertRecord, StoreError> {
    Ok(CertRecord {
        id: col(r, o)?,
        vault_id: col(r, o + 1)?,
        name: col(r, o + 2)?,
        policy: col(r, o + 3)?,
        policy_created: col(r, o + 4)?,
        policy_updated: col(r, o + 5)?,
        created: col(r, o + 6)?,
        updated: col(r, o + 7)?,
        deleted_at: col(r, o + 8)?,
        purge_at: col(r, o + 9)?,
    })
}

pub(crate) fn ver_row(r: &Row, o: usize) -> Result<VersionRecord, StoreError> {
    let chain: Vec<u8> = col(r, o + 10)?;
    Ok(VersionRecord {
        cert_id: col(r, o)?,
        version: col(r, o + 1)?,
        seq: col(r, o + 2)?,
        created: col(r, o + 3)?,
        updated: col(r, o + 4)?,
        enabled: col(r, o + 5)?,
        nbf: col(r, o + 6)?,
        exp: col(r, o + 7)?,
        tags: col(r, o + 8)?,
        cer: col(r, o + 9)?,
        chain: decode_chain(&chain)
            .ok_or_else(|| StoreError::Corrupt("bad chain encoding".into()))?,
        key_blob: col(r, o + 11)?,
        key_ref: col(r, o + 12)?,
        spki: col(r, o + 13)?,
        content_type: col(r, o + 14)?,
        exportable: col(r, o + 15)?,
        preserve_order: col(r, o + 16)?,
        key_ops: col(r, o + 17)?,
    })
}

fn op_row(r: &Row) -> Result<OperationRecord, StoreError> {
    Ok(OperationRecord {
        cert_id: col(r, 0)?,
        request_id: col(r, 1)?,
        version: col(r, 2)?,
        issuer_name: col(r, 3)?,
        status: col(r, 4)?,
        status_details: col(r, 5)?,
        csr: col(r, 6)?,
        error: col(r, 7)?,
        cancellation_requested: col(r, 8)?,
        created: col(r, 9)?,
        updated: col(r, 10)?,
    })
}

fn issuer_row(r: &Row) -> Result<IssuerRecord, StoreError> {
    Ok(IssuerRecord {
        vault_id: col(r, 0)?,
        name: col(r, 1)?,
        provider: col(r, 2)?,
        body: col(r, 3)?,
        secret: col(r, 4)?,
        enabled: col(r, 5)?,
        created: col(r, 6)?,
        updated: col(r, 7)?,
    })
}

pub(crate) fn vault_row(r: &Row) -> Result<Vault, StoreError> {
    Ok(Vault {
        id: col(r, 0)?,
        name: col(r, 1)?,
        wrapped_key: col(r, 2)?,
        recoverable_days: col(r, 3)?,
        created: col(r, 4)?,
        deleted_at: col(r, 5)?,
        purge_at: col(r, 6)?,
    })
}

/// One optional row mapped by `f`.
pub(crate) async fn one<C: GenericClient, T>(
    c: &C,
    sql: &str,
    params: &Params<'_>,
    f: impl FnOnce(&Row) -> Result<T, StoreError>,
) -> Result<Option<T>, StoreError> {
    match c.query_opt(sql, params).await? {
        Some(r) => Ok(Some(f(&r)?)),
        None => Ok(None),
    }
}

/// Every row mapped by `f`.
pub(crate) async fn all<C: GenericClient, T>(
    c: &C,
    sql: &str,
    params: &Params<'_>,
    f: impl Fn(&Row) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError> {
    c.query(sql, params).await?.iter().map(f).collect()
}

async fn insert_version(
    c: &Transaction<'_>,
    cert_id: i64,
    v: &VersionRecord,
) -> Result<i64, StoreError> {
    let seq: i64 = col(
        &c.query_one(
            "SELECT COALESCE(MAX(seq), 0) + 1 FROM versions WHERE cert_id = $1",
            &[&cert_id],
        )
        .await?,
        0,
    )?;
    c.execute(
        "INSERT INTO versions (cert_id, version, seq, created, updated, enabled, nbf, exp, tags, \
         cer, chain, key_blob, key_ref, spki, content_type, exportable, preserve_order, key_ops) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)",
        &[
            &cert_id,
            &v.version,
            &seq,
            &v.created,
            &v.updated,
            &v.enabled,
            &v.nbf,
            &v.exp,
            &v.tags,
            &v.cer,
            &encode_chain(&v.chain),
            &v.key_blob,
            &v.key_ref,
            &v.spki,
            &v.content_type,
            &v.exportable,
            &v.preserve_order,
            &v.key_ops,
        ],
    )
    .await?;
    Ok(seq)
}

/// Replaces the operation as SQLite's `INSERT OR REPLACE` does: delete, then insert, so the
/// insert triggers (lifecycle mark, issued event) fire as they do there.
async fn replace_operation(c: &Transaction<'_>, op: &OperationRecord) -> Result<(), StoreError> {
    c.execute("DELETE FROM operations WHERE cert_id = $1", &[&op.cert_id])
        .await?;
    c.execute(
        "INSERT INTO operations (cert_id, request_id, version, issuer_name, status, \
         status_details, csr, error, cancellation_requested, created, updated) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        &[
            &op.cert_id,
            &op.request_id,
            &op.version,
            &op.issuer_name,
            &op.status,
            &op.status_details,
            &op.csr,
            &op.error,
            &op.cancellation_requested,
            &op.created,
            &op.updated,
        ],
    )
    .await?;
    Ok(())
}

/// The distinct `key_ref`s of the versions of the certificates matching `cond` (one `$1`).
pub(crate) async fn key_refs<C: GenericClient>(
    c: &C,
    cond: &str,
    arg: i64,
) -> Result<Vec<String>, StoreError> {
    all(
        c,
        &format!(
            "SELECT DISTINCT v.key_ref FROM versions v JOIN certificates c ON c.id = v.cert_id \
             WHERE {cond} AND v.key_ref IS NOT NULL"
        ),
        &[&arg],
        |r| col(r, 0),
    )
    .await
}

async fn get_operation<C: GenericClient>(
    c: &C,
    cert_id: i64,
) -> Result<Option<OperationRecord>, StoreError> {
    one(
        c,
        &format!("SELECT {OP_COLS} FROM operations WHERE cert_id = $1"),
        &[&cert_id],
        op_row,
    )
    .await
}

async fn get_cert_by_id<C: GenericClient>(c: &C, id: i64) -> Result<CertRecord, StoreError> {
    one(
        c,
        &format!("SELECT {CERT_COLS} FROM certificates c WHERE c.id = $1"),
        &[&id],
        |r| cert_row(r, 0),
    )
    .await?
    .ok_or(StoreError::NotFound)
}

async fn get_version<C: GenericClient>(
    c: &C,
    cert_id: i64,
    version: &str,
) -> Result<VersionRecord, StoreError> {
    one(
        c,
        &format!("SELECT {VER_COLS} FROM versions v WHERE v.cert_id = $1 AND v.version = $2"),
        &[&cert_id, &version],
        |r| ver_row(r, 0),
    )
    .await?
    .ok_or(StoreError::NotFound)
}

fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let userinfo = &url[s + 3..at];
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{}{}@{}", &url[..s + 3], user, &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

impl PgStore {
    /// Connects to the database at `url` (`postgres://user:password@host:port/db`, or
    /// `postgres:///db?host=/socket/dir`) and applies the migrations it lacks, in one
    /// transaction under an advisory lock.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let config = tokio_postgres::Config::from_str(url)
            .map_err(|e| StoreError::Open(format!("bad PostgreSQL URL: {e}")))?;
        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(16)
            .build()
            .map_err(|e| StoreError::Open(e.to_string()))?;
        let epochs = Arc::new(Epochs {
            any: AtomicU64::new(1),
            remote: AtomicU64::new(1),
            listening: AtomicBool::new(false),
        });
        let instance = uuid::Uuid::new_v4().simple().to_string();
        let store = Self {
            inner: Arc::new(PgInner {
                pool,
                epochs: epochs.clone(),
                instance: instance.clone(),
                listener: std::sync::Mutex::new(None),
                display: redact(url),
            }),
        };
        let mut c = store
            .conn()
            .await
            .map_err(|e| StoreError::Open(format!("{}: {e}", store.inner.display)))?;
        migrate(&mut c).await?;
        let task = tokio::spawn(listen(config, epochs, instance));
        if let Ok(mut l) = store.inner.listener.lock() {
            *l = Some(task);
        }
        Ok(store)
    }

    /// Closes the pool: later calls fail with [`StoreError::Closed`].
    pub fn close(&self) {
        self.inner.pool.close();
        if let Ok(mut l) = self.inner.listener.lock()
            && let Some(h) = l.take()
        {
            h.abort();
        }
    }

    /// The change epoch (see [`crate::SqliteStore::epoch`]): advanced by this process's
    /// committed writes and by other processes' (their notices). While the listener connection
    /// is down, every call returns a new value.
    pub fn epoch(&self) -> u64 {
        self.inner.epochs.read(&self.inner.epochs.any)
    }

    /// The epoch of other processes' changes only (notices of replicas sharing the database;
    /// every call returns a new value while they cannot be heard). Caches that this process's
    /// own writes already keep current drop everything when it moves.
    pub fn shared_epoch(&self) -> u64 {
        self.inner.epochs.read(&self.inner.epochs.remote)
    }

    /// Whether the listener connection is up (for tests and health).
    pub fn listening(&self) -> bool {
        self.inner.epochs.listening.load(Ordering::Acquire)
    }

    /// A pooled connection.
    pub(crate) async fn conn(&self) -> Result<Object, StoreError> {
        if self.inner.pool.is_closed() {
            return Err(StoreError::Closed);
        }
        Ok(self.inner.pool.get().await?)
    }

    /// Notifies the other processes inside `tx` (delivered at commit), commits it and
    /// advances the change epoch.
    pub(crate) async fn commit(&self, tx: Transaction<'_>) -> Result<(), StoreError> {
        tx.execute(NOTIFY_SQL, &[&self.inner.instance]).await?;
        tx.commit().await?;
        self.inner.epochs.any.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    /// Notifies the other processes and advances the change epoch (after a committed write
    /// outside [`Self::commit`]). A failed notice is logged: the write stands.
    pub(crate) async fn bump(&self) {
        self.inner.epochs.any.fetch_add(1, Ordering::AcqRel);
        let sent = match self.conn().await {
            Ok(c) => c
                .execute(NOTIFY_SQL, &[&self.inner.instance])
                .await
                .map_err(StoreError::from),
            Err(e) => Err(e),
        };
        if let Err(e) = sent {
            tracing::warn!(error = %e, "could not notify other replicas of a change");
        }
    }

    /// Runs one writing statement (atomic on its own) with the change notice in one
    /// transaction and advances the change epoch; returns the number of rows it changed.
    pub(crate) async fn exec(&self, sql: &str, params: &Params<'_>) -> Result<u64, StoreError> {
        let mut c = self.conn().await?;
        let tx = c.transaction().await?;
        let n = tx.execute(sql, params).await?;
        self.commit(tx).await?;
        Ok(n)
    }

    // ------------------------------------------------------------------ meta

    /// Reads a meta value.
    pub async fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let c = self.conn().await?;
        one(&c, "SELECT value FROM meta WHERE key = $1", &[&key], |r| {
            col(r, 0)
        })
        .await
    }

    /// Writes a meta value, only if absent when `only_new`. Returns whether it was written.
    pub async fn put_meta(
        &self,
        key: &str,
        value: Vec<u8>,
        only_new: bool,
    ) -> Result<bool, StoreError> {
        let sql = if only_new {
            "INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING"
        } else {
            "INSERT INTO meta (key, value) VALUES ($1, $2) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value"
        };
        let mut c = self.conn().await?;
        let tx = c.transaction().await?;
        let n = tx.execute(sql, &[&key, &value]).await?;
        self.commit(tx).await?;
        Ok(n > 0)
    }

    /// Re-seals every vault key and the named `meta` values with `rewrap`, in one transaction.
    pub async fn rewrap_sealed(
        &self,
        meta: Vec<String>,
        rewrap: Rewrap,
    ) -> Result<usize, StoreError> {
        let mut c = self.conn().await?;
        let tx = c.transaction().await?;
        let vaults: Vec<(i64, String, Vec<u8>)> = all(
            &tx,
            "SELECT id, name_key, wrapped_key FROM vaults FOR UPDATE",
            &[],
            |r| Ok((col(r, 0)?, col(r, 1)?, col(r, 2)?)),
        )
        .await?;
        for (id, name_key, sealed) in &vaults {
            let kind = SealedKind::VaultKey {
                name_key: name_key.clone(),
            };
            let new = rewrap(&kind, sealed).map_err(StoreError::Corrupt)?;
            tx.execute(
                "UPDATE vaults SET wrapped_key = $2 WHERE id = $1",
                &[id, &new],
            )
            .await?;
        }
        for key in &meta {
            let sealed: Option<Vec<u8>> = one(
                &tx,
                "SELECT value FROM meta WHERE key = $1 FOR UPDATE",
                &[key],
                |r| col(r, 0),
            )
            .await?;
            if let Some(sealed) = sealed {
                let new = rewrap(&SealedKind::Meta { key: key.clone() }, &sealed)
                    .map_err(StoreError::Corrupt)?;
                tx.execute("UPDATE meta SET value = $2 WHERE key = $1", &[key, &new])
                    .await?;
            }
        }
        self.commit(tx).await?;
        Ok(vaults.len())
    }

    // ------------------------------------------------------------------ vaults

    /// Looks a live vault up by name key.
    pub async fn vault(&self, name_key: &str) -> Result<Option<Vault>, StoreError> {
        let c = self.conn().await?;
        one(
            &c,
            "SELECT id, name, wrapped_key, recoverable_days, created, deleted_at, purge_at \
             FROM vaults WHERE name_key = $1 AND deleted_at IS NULL",
            &[&name_key],
            vault_row,
        )
        .await
    }

    /// Creates a vault; `Conflict::Exists` if the name is taken.
    pub async fn create_vault(
        &self,
        name: &str,
        wrapped_key: Vec<u8>,
        recoverable_days: i64,
        now: i64,
    ) -> Result<Vault, StoreError> {
        let mut c = self.conn().await?;
        let tx = c.transaction().await?;
        let id: Option<i64> = one(
            &tx,
            "INSERT INTO vaults (name, name_key, wrapped_key, recoverable_days, created) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (name_key) DO NOTHING RETURNING id",
            &[
                &name,
                &name.to_ascii_lowercase(),
                &wrapped_key,
                &recoverable_days,
                &now,
            ],
            |r| col(r, 0),
        )
        .await?;
        let id = id.ok_or(StoreError::Conflict(Conflict::Exists))?;
        self.commit(tx).await?;
        Ok(Vault {
            id,
            name: name.to_owned(),
            wrapped_key,
            recoverable_days,
            created: now,
            deleted_at: None,
            purge_at: None,
        })
    }

    // ------------------------------------------------------------------ certificates: reads

    /// A certificate by name, in any state.
    pub async fn certificate(
        &self,
        vault_id: i64,
        name_key: &str,
    ) -> Result<Option<CertRecord>, StoreError> {
        let c = self.conn().await?;
        one(
            &c,
            &format!(
                "SELECT {CERT_COLS} FROM certificates c WHERE c.vault_id = $1 AND c.name_key = $2"
            ),
            &[&vault_id, &name_key],
            |r| cert_row(r, 0),
        )
        .await
    }

    /// A live or deleted certificate and one of its versions, in one indexed read.
    pub async fn cert_version(
        &self,
        vault_id: i64,
        name_key: &str,
        deleted: bool,
        which: Which<'_>,
    ) -> Result<Option<(CertRecord, VersionRecord)>, StoreError> {
        let del = if deleted { "IS NOT NULL" } else { "IS NULL" };
        let join = match which {
            Which::Latest => format!("v.id = {LATEST_VERSION_ID}"),
            Which::LatestCompleted => format!("v.id = ({LATEST_COMPLETED_ID})"),
            Which::Version(_) => "v.cert_id = c.id AND v.version = $3".to_owned(),
        };
        let sql = format!(
            "SELECT {CERT_COLS}, {VER_COLS} FROM certificates c JOIN versions v ON {join} \
             WHERE c.vault_id = $1 AND c.name_key = $2 AND c.deleted_at {del}"
        );
        let c = self.conn().await?;
        let st = c.prepare_cached(&sql).await?;
        let row = match which {
            Which::Version(v) => {
                let v = v.to_ascii_lowercase();
                c.query_opt(&st, &[&vault_id, &name_key, &v]).await?
            }
            Which::Latest | Which::LatestCompleted => {
                c.query_opt(&st, &[&vault_id, &name_key]).await?
            }
        };
        match row {
            Some(r) => Ok(Some((cert_row(&r, 0)?, ver_row(&r, 10)?))),
            None => Ok(None),
        }
    }

    /// Lists certificates by name key after `after`, with their latest version.
    pub async fn list_certificates(
        &self,
        vault_id: i64,
        deleted: bool,
        after: Option<String>,
        limit: usize,
        include_pending: bool,
    ) -> Result<Vec<(CertRecord, VersionRecord)>, StoreError> {
        let del = if deleted { "IS NOT NULL" } else { "IS NULL" };
        let pending = if include_pending {
            ""
        } else {
            "AND v.cer IS NOT NULL"
        };
        let sql = format!(
            "SELECT {CERT_COLS}, {VER_COLS} FROM certificates c \
             JOIN versions v ON v.id = {LATEST_VERSION_ID} \
             WHERE c.vault_id = $1 AND c.deleted_at {del} AND c.name_key > $2 {pending} \
             ORDER BY c.name_key LIMIT $3"
        );
        let limit = i64::try_from(limit).unwrap_or(25);
        let after = after.unwrap_or_default();
        let c = self.conn().await?;
        all(&c, &sql, &[&vault_id, &after, &limit], |r| {
            Ok((cert_row(r, 0)?, ver_row(r, 10)?))
        })
        .await
    }

    /// Lists versions with `seq > after_seq`, oldest first.
    pub async fn list_versions(
        &self,
        cert_id: i64,
        after_seq: i64,
        limit: usize,
    ) -> Result<Vec<VersionRecord>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(25);
        let c = self.conn().await?;
        all(
            &c,
            &format!(
                "SELECT {VER_COLS} FROM versions v WHERE v.cert_id = $1 AND v.seq > $2 \
                 ORDER BY v.seq LIMIT $3"
            ),
            &[&cert_id, &after_seq, &limit],
            |r| ver_row(r, 0),
        )
        .await
    }

    /// The operation of a certificate.
    pub async fn operation(&self, cert_id: i64) -> Result<Option<OperationRecord>, StoreError> {
        let c = self.conn().await?;
        get_operation(&c, cert_id).await
    }

    /// Everything about a certificate, for backup.
    pub async fn dump(&self, cert_id: i64) -> Result<CertificateDump, StoreError> {
        let mut c = self.conn().await?;
        // One snapshot for the certificate and its versions.
        let tx = c
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await?;
        let cert = get_cert_by_id(&tx, cert_id).await?;
        let versions = all(
            &tx,
            &format!(
                "SELECT {VER_COLS} FROM versions v WHERE v.cert_id = $1 AND v.cer IS NOT NULL \
                 ORDER BY v.seq"
            ),
            &[&cert_id],
            |r| ver_row(r, 0),
        )
        .await?;
        tx.commit().await?;
        Ok(CertificateDump { cert, versions })
    }

    // ------------------------------------------------------------------ certificates: writes

    /// Adds a version to the certificate `name` (creating it if needed); see
    /// [`crate::SqliteStore::add_version`]. The certificate row is locked for the transaction,
    /// so concurrent adds to one certificate take their sequence numbers one after the other.
    pub async fn add_version(
        &self,
        vault_id: i64,
        name: &str,
        policy: String,
        now: i64,
        new: NewVersion,
    ) -> Result<(CertRecord, VersionRecord), StoreError> {
        self.add_version_guarded(vault_id, name, policy, now, new, None)
            .await
            .map(|(c, v, _)| (c, v))
    }

    /// A renewal's version, added only while the certificate is still as the renewal read it;
    /// see [`crate::SqliteStore::renew_version`]. The check runs under the certificate's row
    /// lock, which every add of a version takes, so of two renewals of one version only the
    /// first to lock adds one; an operation completed meanwhile (merge, ACME) is seen by the
    /// check, which runs after its commit or sees it in progress.
    pub async fn renew_version(
        &self,
        vault_id: i64,
        name: &str,
        policy: String,
        now: i64,
        new: NewVersion,
        guard: RenewalGuard,
    ) -> Result<(CertRecord, VersionRecord, Option<i64>), StoreError> {
        self.add_version_guarded(vault_id, name, policy, now, new, Some(&guard))
            .await
    }

    async fn add_version_guarded(
        &self,
        vault_id: i64,
        name: &str,
        policy: String,
        now: i64,
        new: NewVersion,
        guard: Option<&RenewalGuard>,
    ) -> Result<(CertRecord, VersionRecord, Option<i64>), StoreError> {
        let key = name.to_ascii_lowercase();
        let mut c = self.conn().await?;
        let tx = c.transaction().await?;
        if guard.is_none() {
            let created: Option<i64> = one(
                &tx,
                "INSERT INTO certificates (vault_id, name, name_key, policy, policy_created, \
                 policy_updated, created, updated) VALUES ($1, $2, $3, $4, $5, $5, $5, $5) \
                 ON CONFLICT (vault_id, name_key) DO NOTHING RETURNING id",
                &[&vault_id, &name, &key, &policy, &now],
                |r| col(r, 0),
            )
            .await?;
            if let Some(id) = created {
                return self.add_version_to(tx, id, new, None, now).await;
            }
        }
        // The certificate exists (an insert racing ours has committed by now): lock it.
        // A renewal renews an existing certificate only.
        let existing = one(
            &tx,
            &format!(
                "SELECT {CERT_COLS} FROM certificates c WHERE c.vault_id = $1 AND c.name_key = $2 \
                 FOR UPDATE"
            ),
            &[&vault_id, &key],
            |r| cert_row(r, 0),
        )
        .await?;
        let cert = existing.ok_or(StoreError::NotFound)?;
        if cert.deleted_at.is_some() {
            return Err(StoreError::Conflict(Conflict::Deleted));
        }
        let busy: Option<String> = one(
            &tx,
            "SELECT status FROM operations WHERE cert_id = $1",
            &[&cert.id],
            |r| col(r, 0),
        )
        .await?;
        if busy.as_deref() == Some("inProgress") {
            // A renewal read no operation in progress: one started since is another's.
            return Err(StoreError::Conflict(match guard {
                Some(_) => Conflict::Superseded,
                None => Conflict::OperationInProgress,
            }));
        }
        if let Some(g) = guard {
            let current: Option<String> = one(
                &tx,
                "SELECT version FROM versions WHERE cert_id = $1 AND cer IS NOT NULL \
                 ORDER BY seq DESC LIMIT 1",
                &[&cert.id],
                |r| col(r, 0),
            )
            .await?;
            if current.as_deref() != Some(g.expected.as_str()) {
                return Err(StoreError::Conflict(Conflict::Superseded));
            }
        }
        tx.execute(
            "UPDATE certificates SET policy = $2, policy_updated = $3, updated = $3 WHERE id = $1",
            &[&cert.id, &policy, &now],
        )
        .await?;
        self.add_version_to(tx, cert.id, new, guard, now).await
    }

    async fn add_version_to(
        &self,
        tx: Transaction<'_>,
        cert_id: i64,
        new: NewVersion,
        guard: Option<&RenewalGuard>,
        now: i64,
    ) -> Result<(CertRecord, VersionRecord, Option<i64>), StoreError> {
        insert_version(&tx, cert_id, &new.record).await?;
        match new.operation {
            Some(mut op) => {
                op.cert_id = cert_id;
                replace_operation(&tx, &op).await?;
            }
            None => {
                tx.execute("DELETE FROM operations WHERE cert_id = $1", &[&cert_id])
                    .await?;
            }
        }
        let outbox = match guard.and_then(|g| g.audit.as_ref()) {
            Some(a) => Some(crate::pg_renewal::insert_audit_outbox(&tx, a, now).await?),
            None => None,
        };
        let out = (
            get_cert_by_id(&tx, cert_id).await?,
            get_version(&tx, cert_id, &new.record.version).await?,
            outbox,
        );
        self.commit(tx).await?;
        Ok(out)
    }

    /// Completes a pending version (merge); see [`crate::SqliteStore::complete_version`].
    #[allow(clippy::too_many_arguments)]
    pub async fn complete_version(
        &self,
        cert_id: i64,
        version: &str,
        cer: Vec<u8>,
        chain: Vec<Vec<u8>>,
        update: VersionUpdate,
        status_details: String,
        now: i64,
    ) -> Result<VersionRecord, StoreError> {
        let mut c = self.conn().await?;
        let tx = c.transaction().await?;
        let status: Option<String> = one(
            &tx,
            "SELECT status FROM operations WHERE cert_id = $1 AND version = $2 FOR UPDATE",
            &[&cert_id, &version],
            |r| col(r, 0),
        )
        .await?;
        let v = get_version(&tx, cert_id, version).await?;
        if !v.is_pending() || status.as_deref() != Some("inProgress") {
            return Err(StoreError::Conflict(Conflict::State));
        }
        let enabled = update.enabled.unwrap_or(true);
        let nbf = update.nbf.unwrap_or(v.nbf);
        let exp = update.exp.unwrap_or(v.exp);
        let tags = update.tags.unwrap_or(v.tags);
        tx.execute(
            "UPDATE versions SET cer = $3, chain = $4, enabled = $5, nbf = $6, exp = $7, \
             tags = $8, updated = $9 WHERE cert_id = $1 AND version = $2",
            &[
                &cert_id,
                &version,
                &cer,
                &encode_chain(&chain),
                &enabled,
                &nbf,
                &exp,
                &tags,
                &now,
            ],
        )
        .await?;
        tx.execute(
            "UPDATE operations SET status = 'completed', status_details = $2, updated = $3 \
             WHERE cert_id = $1",
            &[&cert_id, &status_details, &now],
        )
        .await?;
        tx.execute(
            "UPDATE certificates SET updated = $2 WHERE id = $1",
            &[&cert_id, &now],
        )
        .await?;
        let out = get_version(&tx, cert_id, version).await?;
        self.commit(tx).await?;
        Ok(out)
    }

    /// Updates a version's attributes and tags.
    pub async fn update_version(
        &self,
        cert_id: i64,
        version: &str,
        update: VersionUpdate,
        now: i64,
    ) -> Result<VersionRecord, StoreError> {
        let mut c = self.conn().await?;
        let tx = c.transaction().await?;
        let v = one(
            &tx,
            &format!(
                "SELECT {VER_COLS} FROM versions v WHERE v.cert_id = $1 AND v.version = $2 \
                 FOR UPDATE"
            ),
            &[&cert_id, &version],
            |r| ver_row(r, 0),
        )
        .await?
        .ok_or(StoreError::NotFound)?;
        let enabled = update.enabled.unwrap_or(v.enabled);
        let nbf = update.nbf.unwrap_or(v.nbf);
        let exp = update.exp.unwrap_or(v.exp);
        let tags = update.tags.unwrap_or(v.tags);
        tx.execute(
            "UPDATE versions SET enabled = $3, nbf = $4, exp = $5, tags = $6, updated = $7 \
             WHERE cert_id = $1 AND version = $2",
            &[&cert_id, &version, &enabled, &nbf, &exp, &tags, &now],
        )
        .await?;
        let out = get_version(&tx, cert_id, version).await?;
        self.commit(tx).await?;
        Ok(out)
    }

    /// Replaces a certificate's policy.
    pub async fn update_policy(
        &self,
        cert_id: i64,
        policy: String,
        now: i64,
    ) -> Result<CertRecord, StoreError> {
        let mut c = self.conn().await?;
        let tx = c.transaction().await?;
        let n = tx
            .execute(
                "UPDATE certificates SET policy = $2, policy_updated = $3, updated = $3 \
                 WHERE id = $1 AND deleted_at IS NULL",
                &[&cert_id, &policy, &now],
            )
            .await?;
        if n == 0 {
            return Err(StoreError::NotFound);
        }
        let out = get_cert_by_id(&tx, cert_id).await?;
        self.commit(tx).await?;
        Ok(out)
    }

    /// Replaces the operation record (cancel, fail, complete).
    pub async fn put_operation(&self, op: OperationRecord) -> Result<(), StoreError> {
        let mut c = self.conn().await?;
        let tx = c.transaction().await?;
        replace_operation(&tx, &op).await?;
        self.commit(tx).await
    }

    /// Ends the operation with `status` and removes its pending version; see
    /// [`crate::SqliteStore::finish_operation`].
    pub async fn finish_operation(
        &self,
        cert_id: i64,
        status: &str,
        status_details: String,
        error: Option<String>,
        cancellation_requested: bool,
        now: i64,
    ) -> Result<OperationRecord, StoreError> {
        let mut c = self.conn().await?;
        let tx = c.transaction().await?;
        let op = one(
            &tx,
            &format!("SELECT {OP_COLS} FROM operations WHERE cert_id = $1 FOR UPDATE"),
            &[&cert_id],
            op_row,
        )
        .await?
        .ok_or(StoreError::NotFound)?;
        if op.status != "inProgress" {
            return Err(StoreError::Conflict(Conflict::State));
        }
        tx.execute(
            "UPDATE operations SET status = $2, status_details = $3, error = $4, \
             cancellation_requested = $5, updated = $6 WHERE cert_id = $1",
            &[
                &cert_id,
                &status,
                &status_details,
                &error,
                &cancellation_requested,
                &now,
            ],
        )
        .await?;
        tx.execute(
            "DELETE FROM versions WHERE cert_id = $1 AND version = $2 AND cer IS NULL",
            &[&cert_id, &op.version],
        )
        .await?;
        let out = get_operation(&tx, cert_id)
            .await?
            .ok_or(StoreError::NotFound)?;
        self.commit(tx).await?;
        Ok(out)
    }

    /// Deletes the operation (and a still-pending version it was creating).
    pub async fn delete_operation(&self, cert_id: i64) -> Result<OperationRecord, StoreError> {
        let mut c = self.conn().await?;
        let tx = c.transaction().await?;
        let op = one(
            &tx,
            &format!("SELECT {OP_COLS} FROM operations WHERE cert_id = $1 FOR UPDATE"),
            &[&cert_id],
            op_row,
        )
        .await?
        .ok_or(StoreError::NotFound)?;
        tx.execute("DELETE FROM operations WHERE cert_id = $1", &[&cert_id])
            .await?;
        tx.execute(
            "DELETE FROM versions WHERE cert_id = $1 AND version = $2 AND cer IS NULL",
            &[&cert_id, &op.version],
        )
        .await?;
        let left: i64 = col(
            &tx.query_one(
                "SELECT COUNT(*) FROM versions WHERE cert_id = $1",
                &[&cert_id],
            )
            .await?,
            0,
        )?;
        if left == 0 {
            tx.execute("DELETE FROM certificates WHERE id = $1", &[&cert_id])
                .await?;
        }
        self.commit(tx).await?;
        Ok(op)
    }

    /// Runs one `UPDATE certificates …` that must hit a row (else `NotFound`) and returns the
    /// certificate after it.
    async fn cert_update(
        &self,
        sql: &str,
        params: &Params<'_>,
        cert_id: i64,
    ) -> Result<CertRecord, StoreError> {
        let mut c = self.conn().await?;
        let tx = c.transaction().await?;
        if tx.execute(sql, params).await? == 0 {
            return Err(StoreError::NotFound);
        }
        let out = get_cert_by_id(&tx, cert_id).await?;
        self.commit(tx).await?;
        Ok(out)
    }

    /// Soft-deletes a certificate.
    pub async fn soft_delete(
        &self,
        cert_id: i64,
        now: i64,
        purge_at: i64,
    ) -> Result<CertRecord, StoreError> {
        self.cert_update(
            "UPDATE certificates SET deleted_at = $2, purge_at = $3, updated = $2 \
             WHERE id = $1 AND deleted_at IS NULL",
            &[&cert_id, &now, &purge_at],
            cert_id,
        )
        .await
    }

    /// Recovers a soft-deleted certificate.
    pub async fn recover(&self, cert_id: i64, now: i64) -> Result<CertRecord, StoreError> {
        self.cert_update(
            "UPDATE certificates SET deleted_at = NULL, purge_at = NULL, updated = $2 \
             WHERE id = $1 AND deleted_at IS NOT NULL",
            &[&cert_id, &now],
            cert_id,
        )
        .await
    }

    /// Purges a soft-deleted certificate; returns its HSM key references.
    pub async fn purge(&self, cert_id: i64) -> Result<Vec<String>, StoreError> {
        let mut c = self.conn().await?;
        let tx = c.transaction().await?;
        let refs = key_refs(&tx, "c.id = $1 AND c.deleted_at IS NOT NULL", cert_id).await?;
        let n = tx
            .execute(
                "DELETE FROM certificates WHERE id = $1 AND deleted_at IS NOT NULL",
                &[&cert_id],
            )
            .await?;
        if n == 0 {
            return Err(StoreError::NotFound);
        }
        self.commit(tx).await?;
        Ok(refs)
    }

    /// Purges every soft-deleted certificate whose purge date has passed.
    pub async fn purge_due(&self, now: i64) -> Result<(usize, Vec<String>), StoreError> {
        let mut c = self.conn().await?;
        let tx = c.transaction().await?;
        let refs = key_refs(&tx, "c.purge_at IS NOT NULL AND c.purge_at <= $1", now).await?;
        let n = tx
            .execute(
                "DELETE FROM certificates WHERE purge_at IS NOT NULL AND purge_at <= $1",
                &[&now],
            )
            .await?;
        self.commit(tx).await?;
        Ok((count(n), refs))
    }

    /// Restores a certificate from a dump; `Conflict::Exists` when the name is taken.
    pub async fn restore(
        &self,
        vault_id: i64,
        dump: CertificateDump,
        now: i64,
    ) -> Result<CertRecord, StoreError> {
        let key = dump.cert.name.to_ascii_lowercase();
        let mut c = self.conn().await?;
        let tx = c.transaction().await?;
        let id: Option<i64> = one(
            &tx,
            "INSERT INTO certificates (vault_id, name, name_key, policy, policy_created, \
             policy_updated, created, updated) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (vault_id, name_key) DO NOTHING RETURNING id",
            &[
                &vault_id,
                &dump.cert.name,
                &key,
                &dump.cert.policy,
                &dump.cert.policy_created,
                &dump.cert.policy_updated,
                &dump.cert.created,
                &now,
            ],
            |r| col(r, 0),
        )
        .await?;
        let id = id.ok_or(StoreError::Conflict(Conflict::Exists))?;
        for v in &dump.versions {
            insert_version(&tx, id, v).await?;
        }
        let out = get_cert_by_id(&tx, id).await?;
        self.commit(tx).await?;
        Ok(out)
    }

    // ------------------------------------------------------------------ issuers and contacts

    /// An issuer by name.
    pub async fn issuer(
        &self,
        vault_id: i64,
        name_key: &str,
    ) -> Result<Option<IssuerRecord>, StoreError> {
        let c = self.conn().await?;
        one(
            &c,
            "SELECT vault_id, name, provider, body, secret, enabled, created, updated FROM issuers \
             WHERE vault_id = $1 AND name_key = $2",
            &[&vault_id, &name_key],
            issuer_row,
        )
        .await
    }

    /// Issuers after `after`, by name key.
    pub async fn list_issuers(
        &self,
        vault_id: i64,
        after: Option<String>,
        limit: usize,
    ) -> Result<Vec<IssuerRecord>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(25);
        let after = after.unwrap_or_default();
        let c = self.conn().await?;
        all(
            &c,
            "SELECT vault_id, name, provider, body, secret, enabled, created, updated FROM issuers \
             WHERE vault_id = $1 AND name_key > $2 ORDER BY name_key LIMIT $3",
            &[&vault_id, &after, &limit],
            issuer_row,
        )
        .await
    }

    /// Creates or replaces an issuer.
    pub async fn put_issuer(&self, rec: IssuerRecord) -> Result<IssuerRecord, StoreError> {
        let mut c = self.conn().await?;
        let tx = c.transaction().await?;
        tx.execute(
            "INSERT INTO issuers (vault_id, name, name_key, provider, body, secret, enabled, \
             created, updated) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
             ON CONFLICT (vault_id, name_key) DO UPDATE SET name = excluded.name, \
             provider = excluded.provider, body = excluded.body, secret = excluded.secret, \
             enabled = excluded.enabled, created = excluded.created, updated = excluded.updated",
            &[
                &rec.vault_id,
                &rec.name,
                &rec.name.to_ascii_lowercase(),
                &rec.provider,
                &rec.body,
                &rec.secret,
                &rec.enabled,
                &rec.created,
                &rec.updated,
            ],
        )
        .await?;
        self.commit(tx).await?;
        Ok(rec)
    }

    /// Deletes an issuer, returning it.
    pub async fn delete_issuer(
        &self,
        vault_id: i64,
        name_key: &str,
    ) -> Result<IssuerRecord, StoreError> {
        let mut c = self.conn().await?;
        let tx = c.transaction().await?;
        let rec = one(
            &tx,
            "DELETE FROM issuers WHERE vault_id = $1 AND name_key = $2 \
             RETURNING vault_id, name, provider, body, secret, enabled, created, updated",
            &[&vault_id, &name_key],
            issuer_row,
        )
        .await?
        .ok_or(StoreError::NotFound)?;
        self.commit(tx).await?;
        Ok(rec)
    }

    /// The vault's contacts (JSON array), if set.
    pub async fn contacts(&self, vault_id: i64) -> Result<Option<String>, StoreError> {
        let c = self.conn().await?;
        one(
            &c,
            "SELECT body FROM contacts WHERE vault_id = $1",
            &[&vault_id],
            |r| col(r, 0),
        )
        .await
    }

    /// Sets the vault's contacts.
    pub async fn set_contacts(&self, vault_id: i64, body: String) -> Result<(), StoreError> {
        let mut c = self.conn().await?;
        let tx = c.transaction().await?;
        tx.execute(
            "INSERT INTO contacts (vault_id, body) VALUES ($1, $2) \
             ON CONFLICT (vault_id) DO UPDATE SET body = excluded.body",
            &[&vault_id, &body],
        )
        .await?;
        self.commit(tx).await
    }

    /// Deletes the vault's contacts, returning them.
    pub async fn delete_contacts(&self, vault_id: i64) -> Result<Option<String>, StoreError> {
        let mut c = self.conn().await?;
        let tx = c.transaction().await?;
        let old = one(
            &tx,
            "DELETE FROM contacts WHERE vault_id = $1 RETURNING body",
            &[&vault_id],
            |r| col(r, 0),
        )
        .await?;
        self.commit(tx).await?;
        Ok(old)
    }
}

/// Applies the missing migrations in one transaction, holding an advisory lock so that
/// replicas starting together do not race.
async fn migrate(c: &mut Object) -> Result<(), StoreError> {
    let tx = c.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (\
         version BIGINT PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
    )
    .await?;
    let current: i64 = col(
        &tx.query_one(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
            &[],
        )
        .await?,
        0,
    )?;
    let known = i64::try_from(PG_MIGRATIONS.len()).unwrap_or(i64::MAX);
    if current > known {
        return Err(StoreError::Open(format!(
            "the database schema ({current}) is newer than this certvault ({known}); upgrade certvault"
        )));
    }
    for (i, sql) in PG_MIGRATIONS.iter().enumerate() {
        let version = i64::try_from(i + 1).unwrap_or(i64::MAX);
        if version <= current {
            continue;
        }
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO schema_migrations (version) VALUES ($1)",
            &[&version],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_redaction() {
        assert_eq!(
            redact("postgres://u:secret@h:5/db"),
            "postgres://u@h:5/db".to_owned()
        );
        assert_eq!(
            redact("postgres:///db?host=/tmp"),
            "postgres:///db?host=/tmp"
        );
    }
}
