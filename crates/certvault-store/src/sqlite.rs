//! SQLite store: WAL mode, `synchronous=FULL`, one writer thread with group commit, pooled
//! readers.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, mpsc};

use rusqlite::{Connection, OptionalExtension, Row, params};
use tokio::sync::oneshot;

use crate::records::{decode_chain, encode_chain};
use crate::{
    CertRecord, CertificateDump, Conflict, IssuerRecord, NewVersion, OperationRecord, RenewalGuard,
    Rewrap, SealedKind, StoreError, Vault, VersionRecord, VersionUpdate,
};

const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE vaults (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    name_key TEXT NOT NULL UNIQUE,
    wrapped_key BLOB NOT NULL,
    recoverable_days INTEGER NOT NULL,
    created INTEGER NOT NULL
);
CREATE TABLE certificates (
    id INTEGER PRIMARY KEY,
    vault_id INTEGER NOT NULL REFERENCES vaults(id),
    name TEXT NOT NULL,
    name_key TEXT NOT NULL,
    policy TEXT NOT NULL,
    policy_created INTEGER NOT NULL,
    policy_updated INTEGER NOT NULL,
    created INTEGER NOT NULL,
    updated INTEGER NOT NULL,
    deleted_at INTEGER,
    purge_at INTEGER,
    UNIQUE (vault_id, name_key)
);
CREATE INDEX certificates_purge ON certificates (purge_at) WHERE purge_at IS NOT NULL;
CREATE TABLE versions (
    id INTEGER PRIMARY KEY,
    cert_id INTEGER NOT NULL REFERENCES certificates(id) ON DELETE CASCADE,
    version TEXT NOT NULL,
    seq INTEGER NOT NULL,
    created INTEGER NOT NULL,
    updated INTEGER NOT NULL,
    enabled INTEGER NOT NULL,
    nbf INTEGER,
    exp INTEGER,
    tags TEXT,
    cer BLOB,
    chain BLOB NOT NULL,
    key_blob BLOB,
    key_ref TEXT,
    spki BLOB NOT NULL,
    content_type TEXT NOT NULL,
    exportable INTEGER NOT NULL,
    UNIQUE (cert_id, version),
    UNIQUE (cert_id, seq)
);
CREATE TABLE operations (
    cert_id INTEGER PRIMARY KEY REFERENCES certificates(id) ON DELETE CASCADE,
    request_id TEXT NOT NULL,
    version TEXT NOT NULL,
    issuer_name TEXT NOT NULL,
    status TEXT NOT NULL,
    status_details TEXT NOT NULL,
    csr BLOB,
    error TEXT,
    cancellation_requested INTEGER NOT NULL,
    created INTEGER NOT NULL,
    updated INTEGER NOT NULL
);
CREATE TABLE issuers (
    vault_id INTEGER NOT NULL REFERENCES vaults(id),
    name TEXT NOT NULL,
    name_key TEXT NOT NULL,
    provider TEXT NOT NULL,
    body TEXT NOT NULL,
    secret BLOB,
    enabled INTEGER NOT NULL,
    created INTEGER NOT NULL,
    updated INTEGER NOT NULL,
    PRIMARY KEY (vault_id, name_key)
);
CREATE TABLE contacts (
    vault_id INTEGER PRIMARY KEY REFERENCES vaults(id),
    body TEXT NOT NULL
);
"#,
    r#"
ALTER TABLE versions ADD COLUMN preserve_order INTEGER NOT NULL DEFAULT 0;
"#,
    r#"
ALTER TABLE versions ADD COLUMN key_ops TEXT;
"#,
    crate::access::MIGRATION,
    crate::audit::MIGRATION,
    crate::jobs::MIGRATION,
    crate::outbox::MIGRATION,
    crate::acme::MIGRATION,
    // principals that may read /metrics (a monitoring role, not an administrator)
    r#"
ALTER TABLE principals ADD COLUMN metrics INTEGER NOT NULL DEFAULT 0;
"#,
    crate::ui::MIGRATION,
    crate::ui::SEARCH_MIGRATION,
    // renewals' audit records, written with the new version (crate::renewal)
    crate::renewal::MIGRATION,
    crate::status::LEASED_JOBS_MIGRATION,
];

type Job = Box<dyn WriteJob>;

trait WriteJob: Send {
    /// Runs inside the group transaction; returns whether it succeeded.
    fn run(&mut self, conn: &Connection) -> bool;
    /// Whether the job may change what readers see outside the audit trail (every job but
    /// audit imports): committing one advances the store's change epoch.
    fn changes_objects(&self) -> bool;
    /// Delivers the result once the group has committed (or failed to).
    fn finish(self: Box<Self>, committed: Result<(), String>);
}

struct Pending<F, R> {
    f: Option<F>,
    result: Option<Result<R, StoreError>>,
    reply: Reply<R>,
    changes_objects: bool,
}

/// Where a write job's result goes: an awaiting task, or a callback run on the writer thread
/// after the commit (for callers on plain threads that must not wait).
enum Reply<R> {
    Task(oneshot::Sender<Result<R, StoreError>>),
    Callback(Box<dyn FnOnce(Result<R, StoreError>) + Send>),
    Done,
}

impl<F, R> WriteJob for Pending<F, R>
where
    F: FnOnce(&Connection) -> Result<R, StoreError> + Send,
    R: Send,
{
    fn run(&mut self, conn: &Connection) -> bool {
        let r = match self.f.take() {
            Some(f) => f(conn),
            None => Err(StoreError::Closed),
        };
        let ok = r.is_ok();
        self.result = Some(r);
        ok
    }

    fn changes_objects(&self) -> bool {
        self.changes_objects
    }

    fn finish(mut self: Box<Self>, committed: Result<(), String>) {
        let result = match (self.result.take(), committed) {
            (Some(Ok(_)), Err(e)) => Err(StoreError::Database(e)),
            (Some(r), _) => r,
            (None, _) => Err(StoreError::Closed),
        };
        match std::mem::replace(&mut self.reply, Reply::Done) {
            Reply::Task(tx) => {
                let _ = tx.send(result);
            }
            Reply::Callback(f) => f(result),
            Reply::Done => {}
        }
    }
}

/// Reads on blocking threads at once ([`SqliteStore::read`]); more wait for a slot.
const READ_SLOTS: usize = 16;

/// Reader connections kept for reuse: one per read slot, plus the point reads that run on the
/// runtime's worker threads ([`SqliteStore::read_point`]).
const READERS_KEPT: usize = READ_SLOTS + 8;

/// The SQLite store.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    /// Advanced after every commit that may change objects (see [`SqliteStore::epoch`]).
    epoch: Arc<AtomicU64>,
    writer: Mutex<Option<mpsc::Sender<Job>>>,
    writer_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    readers: Mutex<Vec<Connection>>,
    /// Bounds the reads running on blocking threads at once (see [`SqliteStore::read`]).
    read_slots: Arc<tokio::sync::Semaphore>,
}

impl Inner {
    /// Runs `f` on a pooled reader connection (opening one if the pool is empty) on this thread.
    fn with_reader<R>(
        &self,
        f: impl FnOnce(&Connection) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let pooled = self.readers.lock().map_err(|_| StoreError::Closed)?.pop();
        let conn = match pooled {
            Some(c) => c,
            None => open_reader(&self.path)?,
        };
        let r = f(&conn);
        if let Ok(mut pool) = self.readers.lock()
            && pool.len() < READERS_KEPT
        {
            pool.push(conn);
        }
        r
    }
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.inner.path)
            .finish()
    }
}

fn open_conn(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path).map_err(|e| StoreError::Open(e.to_string()))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.pragma_update(None, "busy_timeout", 10_000)?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// A reader connection. The query planner stability guarantee is on: without it SQLite marks
/// every join with a bound parameter for re-preparation on each new binding, so every cached
/// read statement (`cert_version`, `list_certificates`) was parsed and planned again on every
/// call. The plans do not depend on the bound values, so the results are the same.
fn open_reader(path: &Path) -> Result<Connection, StoreError> {
    let conn = open_conn(path)?;
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )?;
    Ok(conn)
}

const MAX_GROUP: usize = 256;

fn writer_loop(conn: Connection, rx: mpsc::Receiver<Job>, epoch: Arc<AtomicU64>) {
    while let Ok(first) = rx.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(j) => group.push(j),
                Err(_) => break,
            }
        }
        let begun = conn
            .execute_batch("BEGIN IMMEDIATE")
            .map_err(|e| e.to_string());
        if let Err(e) = begun {
            for j in group {
                j.finish(Err(e.clone()));
            }
            continue;
        }
        for j in &mut group {
            if conn.execute_batch("SAVEPOINT job").is_err() {
                continue;
            }
            let ok = j.run(&conn);
            let end = if ok {
                "RELEASE job"
            } else {
                "ROLLBACK TO job; RELEASE job"
            };
            if let Err(e) = conn.execute_batch(end) {
                tracing::error!(error = %e, "savepoint handling failed");
            }
        }
        let committed = conn.execute_batch("COMMIT").map_err(|e| e.to_string());
        if committed.is_err() {
            let _ = conn.execute_batch("ROLLBACK");
        }
        // After the commit and before any writer hears of it: a reader that has seen the
        // epoch before this point may hold data from before the commit, and its cache entry
        // is now stale; a caller told of the commit reads the new epoch.
        if group.iter().any(|j| j.changes_objects()) {
            epoch.fetch_add(1, Ordering::AcqRel);
        }
        for j in group {
            j.finish(committed.clone());
        }
    }
}

/// [`SqliteStore::add_version`] and [`SqliteStore::renew_version`] inside the write.
fn add_version_tx(
    c: &Connection,
    vault_id: i64,
    name: &str,
    policy: &str,
    now: i64,
    new: NewVersion,
    guard: Option<&RenewalGuard>,
) -> Result<(CertRecord, VersionRecord, Option<i64>), StoreError> {
    let key = name.to_ascii_lowercase();
    let existing: Option<CertRecord> = now_none(c.query_row(
        &format!(
            "SELECT {CERT_COLS} FROM certificates c WHERE c.vault_id = ?1 AND c.name_key = ?2"
        ),
        params![vault_id, key],
        |r| cert_row(r, 0),
    ))?;
    let cert_id = match existing {
        Some(cert) => {
            if cert.deleted_at.is_some() {
                return Err(StoreError::Conflict(Conflict::Deleted));
            }
            let busy: Option<String> = now_none(c.query_row(
                "SELECT status FROM operations WHERE cert_id = ?1",
                [cert.id],
                |r| r.get(0),
            ))?;
            if busy.as_deref() == Some("inProgress") {
                // A renewal read no operation in progress: one started since is another's.
                return Err(StoreError::Conflict(match guard {
                    Some(_) => Conflict::Superseded,
                    None => Conflict::OperationInProgress,
                }));
            }
            if let Some(g) = guard {
                let current: Option<String> = now_none(c.query_row(
                    "SELECT version FROM versions WHERE cert_id = ?1 AND cer IS NOT NULL \
                     ORDER BY seq DESC LIMIT 1",
                    [cert.id],
                    |r| r.get(0),
                ))?;
                if current.as_deref() != Some(g.expected.as_str()) {
                    return Err(StoreError::Conflict(Conflict::Superseded));
                }
            }
            c.execute(
                "UPDATE certificates SET policy = ?2, policy_updated = ?3, updated = ?3 WHERE id = ?1",
                params![cert.id, policy, now],
            )?;
            cert.id
        }
        // A renewal renews an existing certificate.
        None if guard.is_some() => return Err(StoreError::NotFound),
        None => {
            c.execute(
                "INSERT INTO certificates (vault_id, name, name_key, policy, policy_created, \
                 policy_updated, created, updated) VALUES (?1, ?2, ?3, ?4, ?5, ?5, ?5, ?5)",
                params![vault_id, name, key, policy, now],
            )?;
            c.last_insert_rowid()
        }
    };
    insert_version(c, cert_id, &new.record)?;
    match new.operation {
        Some(mut op) => {
            op.cert_id = cert_id;
            replace_operation(c, &op)?;
        }
        None => {
            c.execute("DELETE FROM operations WHERE cert_id = ?1", [cert_id])?;
        }
    }
    let outbox = match guard.and_then(|g| g.audit.as_ref()) {
        Some(a) => Some(crate::renewal::insert_audit_outbox(c, a, now)?),
        None => None,
    };
    Ok((
        get_cert_by_id(c, cert_id)?,
        get_version(c, cert_id, &new.record.version)?,
        outbox,
    ))
}

fn now_none<T>(r: Result<T, rusqlite::Error>) -> Result<Option<T>, StoreError> {
    r.optional().map_err(StoreError::from)
}

pub(crate) const CERT_COLS: &str = "c.id, c.vault_id, c.name, c.policy, c.policy_created, c.policy_updated, \
     c.created, c.updated, c.deleted_at, c.purge_at";
pub(crate) const VER_COLS: &str = "v.cert_id, v.version, v.seq, v.created, v.updated, v.enabled, v.nbf, \
     v.exp, v.tags, v.cer, v.chain, v.key_blob, v.key_ref, v.spki, v.content_type, v.exportable, v.preserve_order, v.key_ops";
/// The id of certificate `c`'s newest completed version (the (cert_id, seq) index read
/// backwards; stops at the first completed one).
pub(crate) const LATEST_COMPLETED_ID: &str = "SELECT v2.id FROM versions v2 \
     WHERE v2.cert_id = c.id AND v2.cer IS NOT NULL ORDER BY v2.seq DESC LIMIT 1";
/// The id of certificate `c`'s newest completed version, or of its newest (pending) version
/// when none is completed: `ORDER BY (cer IS NOT NULL) DESC, seq DESC LIMIT 1` without reading
/// and sorting every version.
pub(crate) const LATEST_VERSION_ID: &str = "COALESCE(\
     (SELECT v2.id FROM versions v2 WHERE v2.cert_id = c.id AND v2.cer IS NOT NULL \
      ORDER BY v2.seq DESC LIMIT 1), \
     (SELECT v3.id FROM versions v3 WHERE v3.cert_id = c.id ORDER BY v3.seq DESC LIMIT 1))";
pub(crate) const OP_COLS: &str = "cert_id, request_id, version, issuer_name, status, status_details, csr, \
     error, cancellation_requested, created, updated";

pub(crate) fn cert_row(r: &Row<'_>, o: usize) -> rusqlite::Result<CertRecord> {
    Ok(CertRecord {
        id: r.get(o)?,
        vault_id: r.get(o + 1)?,
        name: r.get(o + 2)?,
        policy: r.get(o + 3)?,
        policy_created: r.get(o + 4)?,
        policy_updated: r.get(o + 5)?,
        created: r.get(o + 6)?,
        updated: r.get(o + 7)?,
        deleted_at: r.get(o + 8)?,
        purge_at: r.get(o + 9)?,
    })
}

pub(crate) fn ver_row(r: &Row<'_>, o: usize) -> rusqlite::Result<VersionRecord> {
    let chain: Vec<u8> = r.get(o + 10)?;
    Ok(VersionRecord {
        cert_id: r.get(o)?,
        version: r.get(o + 1)?,
        seq: r.get(o + 2)?,
        created: r.get(o + 3)?,
        updated: r.get(o + 4)?,
        enabled: r.get(o + 5)?,
        nbf: r.get(o + 6)?,
        exp: r.get(o + 7)?,
        tags: r.get(o + 8)?,
        cer: r.get(o + 9)?,
        chain: decode_chain(&chain).ok_or_else(|| {
            rusqlite::Error::FromSqlConversionFailure(
                o + 10,
                rusqlite::types::Type::Blob,
                "bad chain encoding".into(),
            )
        })?,
        key_blob: r.get(o + 11)?,
        key_ref: r.get(o + 12)?,
        spki: r.get(o + 13)?,
        content_type: r.get(o + 14)?,
        exportable: r.get(o + 15)?,
        preserve_order: r.get(o + 16)?,
        key_ops: r.get(o + 17)?,
    })
}

fn op_row(r: &Row<'_>) -> rusqlite::Result<OperationRecord> {
    Ok(OperationRecord {
        cert_id: r.get(0)?,
        request_id: r.get(1)?,
        version: r.get(2)?,
        issuer_name: r.get(3)?,
        status: r.get(4)?,
        status_details: r.get(5)?,
        csr: r.get(6)?,
        error: r.get(7)?,
        cancellation_requested: r.get(8)?,
        created: r.get(9)?,
        updated: r.get(10)?,
    })
}

fn issuer_row(r: &Row<'_>) -> rusqlite::Result<IssuerRecord> {
    Ok(IssuerRecord {
        vault_id: r.get(0)?,
        name: r.get(1)?,
        provider: r.get(2)?,
        body: r.get(3)?,
        secret: r.get(4)?,
        enabled: r.get(5)?,
        created: r.get(6)?,
        updated: r.get(7)?,
    })
}

fn insert_version(conn: &Connection, cert_id: i64, v: &VersionRecord) -> Result<i64, StoreError> {
    let seq: i64 = conn.query_row(
        "SELECT COALESCE(MAX(seq), 0) + 1 FROM versions WHERE cert_id = ?1",
        [cert_id],
        |r| r.get(0),
    )?;
    conn.prepare_cached(
        "INSERT INTO versions (cert_id, version, seq, created, updated, enabled, nbf, exp, tags, \
         cer, chain, key_blob, key_ref, spki, content_type, exportable, preserve_order, key_ops) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)",
    )?
    .execute(params![
        cert_id,
        v.version,
        seq,
        v.created,
        v.updated,
        v.enabled,
        v.nbf,
        v.exp,
        v.tags,
        v.cer,
        encode_chain(&v.chain),
        v.key_blob,
        v.key_ref,
        v.spki,
        v.content_type,
        v.exportable,
        v.preserve_order,
        v.key_ops
    ])?;
    Ok(seq)
}

fn replace_operation(conn: &Connection, op: &OperationRecord) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT OR REPLACE INTO operations (cert_id, request_id, version, issuer_name, status, \
         status_details, csr, error, cancellation_requested, created, updated) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    )?
    .execute(params![
        op.cert_id,
        op.request_id,
        op.version,
        op.issuer_name,
        op.status,
        op.status_details,
        op.csr,
        op.error,
        op.cancellation_requested,
        op.created,
        op.updated
    ])?;
    Ok(())
}

/// The distinct `key_ref`s of the versions of the certificates matching `cond` (one `?1`).
fn key_refs(conn: &Connection, cond: &str, arg: i64) -> Result<Vec<String>, StoreError> {
    let mut st = conn.prepare(&format!(
        "SELECT DISTINCT v.key_ref FROM versions v JOIN certificates c ON c.id = v.cert_id \
         WHERE {cond} AND v.key_ref IS NOT NULL"
    ))?;
    let rows = st.query_map([arg], |r| r.get::<_, String>(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn get_operation(conn: &Connection, cert_id: i64) -> Result<Option<OperationRecord>, StoreError> {
    now_none(conn.query_row(
        &format!("SELECT {OP_COLS} FROM operations WHERE cert_id = ?1"),
        [cert_id],
        op_row,
    ))
}

fn get_cert_by_id(conn: &Connection, id: i64) -> Result<CertRecord, StoreError> {
    now_none(conn.query_row(
        &format!("SELECT {CERT_COLS} FROM certificates c WHERE c.id = ?1"),
        [id],
        |r| cert_row(r, 0),
    ))?
    .ok_or(StoreError::NotFound)
}

fn get_version(
    conn: &Connection,
    cert_id: i64,
    version: &str,
) -> Result<VersionRecord, StoreError> {
    now_none(conn.query_row(
        &format!("SELECT {VER_COLS} FROM versions v WHERE v.cert_id = ?1 AND v.version = ?2"),
        params![cert_id, version],
        |r| ver_row(r, 0),
    ))?
    .ok_or(StoreError::NotFound)
}

/// The statement of [`SqliteStore::cert_version`], built once per form: the certificate by its
/// (vault_id, name_key) index, then the version by its (cert_id, version) index or the newest
/// by the (cert_id, seq) index read backwards, so the cost does not grow with the number of
/// versions (`?3` is the version id).
fn cert_version_sql(deleted: bool, which: Which<'_>) -> &'static str {
    static SQL: LazyLock<[[String; 3]; 2]> = LazyLock::new(|| {
        let one = |deleted: bool, join: &str| {
            let del = if deleted { "IS NOT NULL" } else { "IS NULL" };
            format!(
                "SELECT {CERT_COLS}, {VER_COLS} FROM certificates c JOIN versions v ON {join} \
                 WHERE c.vault_id = ?1 AND c.name_key = ?2 AND c.deleted_at {del}"
            )
        };
        [false, true].map(|d| {
            [
                one(d, &format!("v.id = {LATEST_VERSION_ID}")),
                one(d, &format!("v.id = ({LATEST_COMPLETED_ID})")),
                one(d, "v.cert_id = c.id AND v.version = ?3"),
            ]
        })
    });
    let form = match which {
        Which::Latest => 0,
        Which::LatestCompleted => 1,
        Which::Version(_) => 2,
    };
    SQL[usize::from(deleted)][form].as_str()
}

/// What [`SqliteStore::health`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreHealth {
    /// Whether writes are accepted (the writer is running).
    pub writer: bool,
    /// The schema version of the database.
    pub schema_version: i64,
    /// The schema version this build migrates to.
    pub schema_expected: i64,
}

/// Which version a read wants.
#[derive(Debug, Clone, Copy)]
pub enum Which<'a> {
    /// The newest completed version, or the pending one when nothing completed yet.
    Latest,
    /// The newest completed version only.
    LatestCompleted,
    /// A named version.
    Version(&'a str),
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and applies migrations.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let conn = open_conn(path)?;
        migrate(&conn)?;
        let (tx, rx) = mpsc::channel::<Job>();
        let epoch = Arc::new(AtomicU64::new(1));
        let writer_epoch = epoch.clone();
        let thread = std::thread::Builder::new()
            .name("certvault-sqlite-writer".into())
            .spawn(move || writer_loop(conn, rx, writer_epoch))
            .map_err(|e| StoreError::Open(e.to_string()))?;
        Ok(Self {
            inner: Arc::new(Inner {
                path: path.to_owned(),
                epoch,
                writer: Mutex::new(Some(tx)),
                writer_thread: Mutex::new(Some(thread)),
                readers: Mutex::new(Vec::new()),
                read_slots: Arc::new(tokio::sync::Semaphore::new(READ_SLOTS)),
            }),
        })
    }

    /// Stops the writer thread after it has committed what is queued, waits for it, and closes
    /// the pooled readers. Later calls fail with [`StoreError::Closed`].
    pub fn close(&self) {
        if let Ok(mut w) = self.inner.writer.lock() {
            w.take();
        }
        let thread = self
            .inner
            .writer_thread
            .lock()
            .ok()
            .and_then(|mut t| t.take());
        if let Some(t) = thread {
            let _ = t.join();
        }
        if let Ok(mut r) = self.inner.readers.lock() {
            r.clear();
        }
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Where the audit journal keeps its segments: `<database>-audit`.
    pub fn audit_journal_dir(&self) -> PathBuf {
        let mut p = self.inner.path.clone().into_os_string();
        p.push("-audit");
        PathBuf::from(p)
    }

    /// The readiness probe's look at the database: a trivial query on a reader connection,
    /// the schema version the database is at, and whether the writer thread is running.
    pub async fn health(&self) -> Result<StoreHealth, StoreError> {
        let writer = self
            .inner
            .writer
            .lock()
            .map(|w| w.is_some())
            .unwrap_or(false);
        let schema = self
            .read(|c| {
                let one: i64 = c.query_row("SELECT 1", [], |r| r.get(0))?;
                if one != 1 {
                    return Err(StoreError::Corrupt("SELECT 1 did not return 1".into()));
                }
                Ok(c.pragma_query_value(None, "user_version", |r| r.get::<_, i64>(0))?)
            })
            .await?;
        Ok(StoreHealth {
            writer,
            schema_version: schema,
            schema_expected: i64::try_from(MIGRATIONS.len()).unwrap_or(i64::MAX),
        })
    }

    /// The change epoch: a number that grows after every committed write that may change
    /// certificates, versions, vaults, issuers, contacts or access data (everything but audit
    /// imports). A cache filled after reading the epoch `e` is valid while the epoch is still
    /// `e`: read the epoch first, then the data.
    pub fn epoch(&self) -> u64 {
        self.inner.epoch.load(Ordering::Acquire)
    }

    fn submit(&self, job: Job) -> Result<(), StoreError> {
        let guard = self.inner.writer.lock().map_err(|_| StoreError::Closed)?;
        let sender = guard.as_ref().ok_or(StoreError::Closed)?;
        sender.send(job).map_err(|_| StoreError::Closed)
    }

    /// Runs `f` inside the group transaction; resolves once it is durably committed.
    pub(crate) async fn write<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        F: FnOnce(&Connection) -> Result<R, StoreError> + Send + 'static,
        R: Send + 'static,
    {
        self.write_as(f, true).await
    }

    /// [`Self::write`] for writes that change nothing but the audit trail: committing them does
    /// not advance the change epoch.
    pub(crate) async fn write_audit<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        F: FnOnce(&Connection) -> Result<R, StoreError> + Send + 'static,
        R: Send + 'static,
    {
        self.write_as(f, false).await
    }

    async fn write_as<R, F>(&self, f: F, changes_objects: bool) -> Result<R, StoreError>
    where
        F: FnOnce(&Connection) -> Result<R, StoreError> + Send + 'static,
        R: Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        self.submit(Box::new(Pending {
            f: Some(f),
            result: None,
            reply: Reply::Task(tx),
            changes_objects,
        }))?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Queues `f` for the group transaction without waiting; `done` runs on the writer thread
    /// once the group has committed (or failed). The write does not advance the change epoch:
    /// only for writes that change nothing but the audit trail.
    pub(crate) fn write_detached<R, F>(
        &self,
        f: F,
        done: impl FnOnce(Result<R, StoreError>) + Send + 'static,
    ) -> Result<(), StoreError>
    where
        F: FnOnce(&Connection) -> Result<R, StoreError> + Send + 'static,
        R: Send + 'static,
    {
        self.submit(Box::new(Pending {
            f: Some(f),
            result: None,
            reply: Reply::Callback(Box::new(done)),
            changes_objects: false,
        }))
    }

    /// Runs `f` on a pooled reader connection on a blocking thread.
    pub(crate) async fn read<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        F: FnOnce(&Connection) -> Result<R, StoreError> + Send + 'static,
        R: Send + 'static,
    {
        let inner = self.inner.clone();
        // Waiting for a slot costs no thread. Without the bound, 64 concurrent requests that
        // miss the caches made 64 blocking threads, each opening a reader connection of its own
        // when the pool was empty (and closing it after, beyond the pool's size): on a store of
        // 1,000,000 certificates ~160 µs of CPU per read and 250 MB of resident memory.
        let slot = inner
            .read_slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| StoreError::Closed)?;
        tokio::task::spawn_blocking(move || {
            let r = inner.with_reader(f);
            drop(slot);
            r
        })
        .await
        .map_err(|e| StoreError::Database(e.to_string()))?
    }

    /// Runs `f`, a read of a few rows by primary or unique key (a handful of pages, normally in
    /// the page cache; WAL readers never wait for the writer), on a pooled reader connection
    /// on the calling thread. Handing such a read to a blocking thread and back costs more
    /// (two thread wake-ups and context switches) than the read itself, and those dominated
    /// the CPU time of the hottest request, GET of a secret. Longer reads use [`Self::read`].
    fn read_point<R>(
        &self,
        f: impl FnOnce(&Connection) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        self.inner.with_reader(f)
    }

    // ------------------------------------------------------------------ meta

    /// Reads a meta value.
    pub async fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let key = key.to_owned();
        self.read(move |c| {
            now_none(c.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0)))
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
        let key = key.to_owned();
        self.write(move |c| {
            let sql = if only_new {
                "INSERT OR IGNORE INTO meta (key, value) VALUES (?1, ?2)"
            } else {
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)"
            };
            Ok(c.execute(sql, params![key, value])? > 0)
        })
        .await
    }

    /// Re-seals every vault key and the named `meta` values with `rewrap`, in one transaction:
    /// either all are re-sealed or none. Returns how many vault keys were re-sealed.
    pub async fn rewrap_sealed(
        &self,
        meta: Vec<String>,
        rewrap: Rewrap,
    ) -> Result<usize, StoreError> {
        self.write(move |c| {
            let vaults: Vec<(i64, String, Vec<u8>)> = {
                let mut st = c.prepare("SELECT id, name_key, wrapped_key FROM vaults")?;
                let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
                rows.collect::<Result<_, _>>()?
            };
            for (id, name_key, sealed) in &vaults {
                let new = rewrap(
                    &SealedKind::VaultKey {
                        name_key: name_key.clone(),
                    },
                    sealed,
                )
                .map_err(StoreError::Corrupt)?;
                c.execute(
                    "UPDATE vaults SET wrapped_key = ?2 WHERE id = ?1",
                    params![id, new],
                )?;
            }
            for key in &meta {
                let sealed: Option<Vec<u8>> =
                    now_none(
                        c.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0)),
                    )?;
                if let Some(sealed) = sealed {
                    let new = rewrap(&SealedKind::Meta { key: key.clone() }, &sealed)
                        .map_err(StoreError::Corrupt)?;
                    c.execute(
                        "UPDATE meta SET value = ?2 WHERE key = ?1",
                        params![key, new],
                    )?;
                }
            }
            Ok(vaults.len())
        })
        .await
    }

    // ------------------------------------------------------------------ vaults

    /// Looks a vault up by name (case-insensitive key).
    pub async fn vault(&self, name_key: &str) -> Result<Option<Vault>, StoreError> {
        let key = name_key.to_owned();
        self.read(move |c| {
            now_none(c.query_row(
                "SELECT id, name, wrapped_key, recoverable_days, created, deleted_at, purge_at FROM vaults \
                 WHERE name_key = ?1 AND deleted_at IS NULL",
                [key],
                crate::access::vault_row,
            ))
        })
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
        let name = name.to_owned();
        self.write(move |c| {
            let n = c.execute(
                "INSERT OR IGNORE INTO vaults (name, name_key, wrapped_key, recoverable_days, created) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![name, name.to_ascii_lowercase(), wrapped_key, recoverable_days, now],
            )?;
            if n == 0 {
                return Err(StoreError::Conflict(Conflict::Exists));
            }
            Ok(Vault {
                id: c.last_insert_rowid(),
                name,
                wrapped_key,
                recoverable_days,
                created: now,
                deleted_at: None,
                purge_at: None,
            })
        })
        .await
    }

    // ------------------------------------------------------------------ certificates: reads

    /// A certificate by name, in any state.
    pub async fn certificate(
        &self,
        vault_id: i64,
        name_key: &str,
    ) -> Result<Option<CertRecord>, StoreError> {
        let key = name_key.to_owned();
        self.read(move |c| {
            now_none(c.query_row(
                &format!("SELECT {CERT_COLS} FROM certificates c WHERE c.vault_id = ?1 AND c.name_key = ?2"),
                params![vault_id, key],
                |r| cert_row(r, 0),
            ))
        })
        .await
    }

    /// A live (not deleted) or deleted certificate and one of its versions, in one indexed read.
    pub async fn cert_version(
        &self,
        vault_id: i64,
        name_key: &str,
        deleted: bool,
        which: Which<'_>,
    ) -> Result<Option<(CertRecord, VersionRecord)>, StoreError> {
        let ver = match which {
            Which::Version(v) => Some(v.to_ascii_lowercase()),
            Which::Latest | Which::LatestCompleted => None,
        };
        let sql = cert_version_sql(deleted, which);
        self.read_point(|c| {
            let mut st = c.prepare_cached(sql)?;
            let r = match &ver {
                Some(v) => st.query_row(params![vault_id, name_key, v], |r| {
                    Ok((cert_row(r, 0)?, ver_row(r, 10)?))
                }),
                None => st.query_row(params![vault_id, name_key], |r| {
                    Ok((cert_row(r, 0)?, ver_row(r, 10)?))
                }),
            };
            now_none(r)
        })
    }

    /// Lists certificates by name key after `after`, with their latest version. `deleted`
    /// selects soft-deleted ones instead of live ones.
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
             WHERE c.vault_id = ?1 AND c.deleted_at {del} AND c.name_key > ?2 {pending} \
             ORDER BY c.name_key LIMIT ?3"
        );
        let limit = i64::try_from(limit).unwrap_or(25);
        self.read(move |c| {
            let mut st = c.prepare_cached(&sql)?;
            let rows = st.query_map(params![vault_id, after.unwrap_or_default(), limit], |r| {
                Ok((cert_row(r, 0)?, ver_row(r, 10)?))
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// The name key of a certificate row, for paging tokens.
    pub fn name_key(cert: &CertRecord) -> String {
        cert.name.to_ascii_lowercase()
    }

    /// Lists versions with `seq > after_seq`, oldest first.
    pub async fn list_versions(
        &self,
        cert_id: i64,
        after_seq: i64,
        limit: usize,
    ) -> Result<Vec<VersionRecord>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(25);
        self.read(move |c| {
            let mut st = c.prepare_cached(&format!(
                "SELECT {VER_COLS} FROM versions v WHERE v.cert_id = ?1 AND v.seq > ?2 ORDER BY v.seq LIMIT ?3"
            ))?;
            let rows = st.query_map(params![cert_id, after_seq, limit], |r| ver_row(r, 0))?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// The operation of a certificate.
    pub async fn operation(&self, cert_id: i64) -> Result<Option<OperationRecord>, StoreError> {
        self.read(move |c| get_operation(c, cert_id)).await
    }

    /// Everything about a certificate, for backup.
    pub async fn dump(&self, cert_id: i64) -> Result<CertificateDump, StoreError> {
        self.read(move |c| {
            let cert = get_cert_by_id(c, cert_id)?;
            let mut st = c.prepare_cached(&format!(
                "SELECT {VER_COLS} FROM versions v WHERE v.cert_id = ?1 AND v.cer IS NOT NULL ORDER BY v.seq"
            ))?;
            let versions =
                st.query_map([cert_id], |r| ver_row(r, 0))?.collect::<Result<Vec<_>, _>>()?;
            Ok(CertificateDump { cert, versions })
        })
        .await
    }

    // ------------------------------------------------------------------ certificates: writes

    /// Adds a version to the certificate `name` (creating the certificate if it does not exist)
    /// and stores `policy` as its policy. Refused when the name is soft-deleted or an
    /// operation is in progress.
    pub async fn add_version(
        &self,
        vault_id: i64,
        name: &str,
        policy: String,
        now: i64,
        new: NewVersion,
    ) -> Result<(CertRecord, VersionRecord), StoreError> {
        let name = name.to_owned();
        self.write(move |c| {
            add_version_tx(c, vault_id, &name, &policy, now, new, None).map(|(c, v, _)| (c, v))
        })
        .await
    }

    /// Adds a renewal's version to the existing certificate `name` only while its newest
    /// completed version is still `guard.expected` and no operation is in progress (a
    /// compare-and-swap in the write's transaction); otherwise writes nothing and fails with
    /// [`Conflict::Superseded`]. `guard.audit`, if any, goes to `audit_outbox` in the same
    /// transaction; its row id is returned.
    pub async fn renew_version(
        &self,
        vault_id: i64,
        name: &str,
        policy: String,
        now: i64,
        new: NewVersion,
        guard: RenewalGuard,
    ) -> Result<(CertRecord, VersionRecord, Option<i64>), StoreError> {
        let name = name.to_owned();
        self.write(move |c| add_version_tx(c, vault_id, &name, &policy, now, new, Some(&guard)))
            .await
    }

    /// Completes a pending version with its certificate and chain (merge), and marks the
    /// operation completed. Refused unless the version is pending and the operation in progress.
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
        let version = version.to_owned();
        self.write(move |c| {
            let v = get_version(c, cert_id, &version)?;
            let status: Option<String> = now_none(c.query_row(
                "SELECT status FROM operations WHERE cert_id = ?1 AND version = ?2",
                params![cert_id, version],
                |r| r.get(0),
            ))?;
            if !v.is_pending() || status.as_deref() != Some("inProgress") {
                return Err(StoreError::Conflict(Conflict::State));
            }
            let enabled = update.enabled.unwrap_or(true);
            let nbf = update.nbf.unwrap_or(v.nbf);
            let exp = update.exp.unwrap_or(v.exp);
            let tags = update.tags.unwrap_or(v.tags);
            c.execute(
                "UPDATE versions SET cer = ?3, chain = ?4, enabled = ?5, nbf = ?6, exp = ?7, tags = ?8, \
                 updated = ?9 WHERE cert_id = ?1 AND version = ?2",
                params![cert_id, version, cer, encode_chain(&chain), enabled, nbf, exp, tags, now],
            )?;
            c.execute(
                "UPDATE operations SET status = 'completed', status_details = ?2, updated = ?3 WHERE cert_id = ?1",
                params![cert_id, status_details, now],
            )?;
            c.execute("UPDATE certificates SET updated = ?2 WHERE id = ?1", params![cert_id, now])?;
            get_version(c, cert_id, &version)
        })
        .await
    }

    /// Updates a version's attributes and tags.
    pub async fn update_version(
        &self,
        cert_id: i64,
        version: &str,
        update: VersionUpdate,
        now: i64,
    ) -> Result<VersionRecord, StoreError> {
        let version = version.to_owned();
        self.write(move |c| {
            let v = get_version(c, cert_id, &version)?;
            let enabled = update.enabled.unwrap_or(v.enabled);
            let nbf = update.nbf.unwrap_or(v.nbf);
            let exp = update.exp.unwrap_or(v.exp);
            let tags = update.tags.unwrap_or(v.tags);
            c.execute(
                "UPDATE versions SET enabled = ?3, nbf = ?4, exp = ?5, tags = ?6, updated = ?7 \
                 WHERE cert_id = ?1 AND version = ?2",
                params![cert_id, version, enabled, nbf, exp, tags, now],
            )?;
            get_version(c, cert_id, &version)
        })
        .await
    }

    /// Replaces a certificate's policy.
    pub async fn update_policy(
        &self,
        cert_id: i64,
        policy: String,
        now: i64,
    ) -> Result<CertRecord, StoreError> {
        self.write(move |c| {
            let n = c.execute(
                "UPDATE certificates SET policy = ?2, policy_updated = ?3, updated = ?3 \
                 WHERE id = ?1 AND deleted_at IS NULL",
                params![cert_id, policy, now],
            )?;
            if n == 0 {
                return Err(StoreError::NotFound);
            }
            get_cert_by_id(c, cert_id)
        })
        .await
    }

    /// Replaces the operation record (cancel, fail, complete).
    pub async fn put_operation(&self, op: OperationRecord) -> Result<(), StoreError> {
        self.write(move |c| replace_operation(c, &op)).await
    }

    /// Ends the operation with `status` (`cancelled` or `failed`) and removes the pending
    /// version it was creating. Refused unless the operation is in progress.
    pub async fn finish_operation(
        &self,
        cert_id: i64,
        status: &str,
        status_details: String,
        error: Option<String>,
        cancellation_requested: bool,
        now: i64,
    ) -> Result<OperationRecord, StoreError> {
        let status = status.to_owned();
        self.write(move |c| {
            let op = get_operation(c, cert_id)?.ok_or(StoreError::NotFound)?;
            if op.status != "inProgress" {
                return Err(StoreError::Conflict(Conflict::State));
            }
            c.execute(
                "UPDATE operations SET status = ?2, status_details = ?3, error = ?4, \
                 cancellation_requested = ?5, updated = ?6 WHERE cert_id = ?1",
                params![
                    cert_id,
                    status,
                    status_details,
                    error,
                    cancellation_requested,
                    now
                ],
            )?;
            c.execute(
                "DELETE FROM versions WHERE cert_id = ?1 AND version = ?2 AND cer IS NULL",
                params![cert_id, op.version],
            )?;
            get_operation(c, cert_id)?.ok_or(StoreError::NotFound)
        })
        .await
    }

    /// Deletes the operation; a still-pending version it was creating is removed with it.
    /// Returns the removed operation.
    pub async fn delete_operation(&self, cert_id: i64) -> Result<OperationRecord, StoreError> {
        self.write(move |c| {
            let op = get_operation(c, cert_id)?.ok_or(StoreError::NotFound)?;
            c.execute("DELETE FROM operations WHERE cert_id = ?1", [cert_id])?;
            c.execute(
                "DELETE FROM versions WHERE cert_id = ?1 AND version = ?2 AND cer IS NULL",
                params![cert_id, op.version],
            )?;
            let left: i64 = c.query_row(
                "SELECT COUNT(*) FROM versions WHERE cert_id = ?1",
                [cert_id],
                |r| r.get(0),
            )?;
            if left == 0 {
                c.execute("DELETE FROM certificates WHERE id = ?1", [cert_id])?;
            }
            Ok(op)
        })
        .await
    }

    /// Soft-deletes a certificate (its key and secret go with it).
    pub async fn soft_delete(
        &self,
        cert_id: i64,
        now: i64,
        purge_at: i64,
    ) -> Result<CertRecord, StoreError> {
        self.write(move |c| {
            let n = c.execute(
                "UPDATE certificates SET deleted_at = ?2, purge_at = ?3, updated = ?2 \
                 WHERE id = ?1 AND deleted_at IS NULL",
                params![cert_id, now, purge_at],
            )?;
            if n == 0 {
                return Err(StoreError::NotFound);
            }
            get_cert_by_id(c, cert_id)
        })
        .await
    }

    /// Recovers a soft-deleted certificate.
    pub async fn recover(&self, cert_id: i64, now: i64) -> Result<CertRecord, StoreError> {
        self.write(move |c| {
            let n = c.execute(
                "UPDATE certificates SET deleted_at = NULL, purge_at = NULL, updated = ?2 \
                 WHERE id = ?1 AND deleted_at IS NOT NULL",
                params![cert_id, now],
            )?;
            if n == 0 {
                return Err(StoreError::NotFound);
            }
            get_cert_by_id(c, cert_id)
        })
        .await
    }

    /// Purges a soft-deleted certificate with all its versions and key material.
    pub async fn purge(&self, cert_id: i64) -> Result<Vec<String>, StoreError> {
        self.write(move |c| {
            let refs = key_refs(c, "c.id = ?1 AND c.deleted_at IS NOT NULL", cert_id)?;
            let n = c.execute(
                "DELETE FROM certificates WHERE id = ?1 AND deleted_at IS NOT NULL",
                [cert_id],
            )?;
            if n == 0 {
                return Err(StoreError::NotFound);
            }
            Ok(refs)
        })
        .await
    }

    /// Purges every soft-deleted certificate whose purge date has passed. Returns how many,
    /// and the references of keys held outside the database (HSM keys) that went with them.
    pub async fn purge_due(&self, now: i64) -> Result<(usize, Vec<String>), StoreError> {
        self.write(move |c| {
            let refs = key_refs(c, "c.purge_at IS NOT NULL AND c.purge_at <= ?1", now)?;
            let n = c.execute(
                "DELETE FROM certificates WHERE purge_at IS NOT NULL AND purge_at <= ?1",
                [now],
            )?;
            Ok((n, refs))
        })
        .await
    }

    /// Restores a certificate from a dump; `Conflict::Exists` when the name is taken (live or
    /// deleted).
    pub async fn restore(
        &self,
        vault_id: i64,
        dump: CertificateDump,
        now: i64,
    ) -> Result<CertRecord, StoreError> {
        self.write(move |c| {
            let key = dump.cert.name.to_ascii_lowercase();
            let taken: Option<i64> = now_none(c.query_row(
                "SELECT id FROM certificates WHERE vault_id = ?1 AND name_key = ?2",
                params![vault_id, key],
                |r| r.get(0),
            ))?;
            if taken.is_some() {
                return Err(StoreError::Conflict(Conflict::Exists));
            }
            c.execute(
                "INSERT INTO certificates (vault_id, name, name_key, policy, policy_created, \
                 policy_updated, created, updated) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    vault_id,
                    dump.cert.name,
                    key,
                    dump.cert.policy,
                    dump.cert.policy_created,
                    dump.cert.policy_updated,
                    dump.cert.created,
                    now
                ],
            )?;
            let id = c.last_insert_rowid();
            for v in &dump.versions {
                insert_version(c, id, v)?;
            }
            get_cert_by_id(c, id)
        })
        .await
    }

    // ------------------------------------------------------------------ issuers and contacts

    /// An issuer by name.
    pub async fn issuer(
        &self,
        vault_id: i64,
        name_key: &str,
    ) -> Result<Option<IssuerRecord>, StoreError> {
        let key = name_key.to_owned();
        self.read(move |c| {
            now_none(c.query_row(
                "SELECT vault_id, name, provider, body, secret, enabled, created, updated FROM issuers \
                 WHERE vault_id = ?1 AND name_key = ?2",
                params![vault_id, key],
                issuer_row,
            ))
        })
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
        self.read(move |c| {
            let mut st = c.prepare_cached(
                "SELECT vault_id, name, provider, body, secret, enabled, created, updated FROM issuers \
                 WHERE vault_id = ?1 AND name_key > ?2 ORDER BY name_key LIMIT ?3",
            )?;
            let rows = st.query_map(params![vault_id, after.unwrap_or_default(), limit], issuer_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// Creates or replaces an issuer.
    pub async fn put_issuer(&self, rec: IssuerRecord) -> Result<IssuerRecord, StoreError> {
        self.write(move |c| {
            c.execute(
                "INSERT OR REPLACE INTO issuers (vault_id, name, name_key, provider, body, secret, \
                 enabled, created, updated) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    rec.vault_id,
                    rec.name,
                    rec.name.to_ascii_lowercase(),
                    rec.provider,
                    rec.body,
                    rec.secret,
                    rec.enabled,
                    rec.created,
                    rec.updated
                ],
            )?;
            Ok(rec)
        })
        .await
    }

    /// Deletes an issuer, returning it.
    pub async fn delete_issuer(
        &self,
        vault_id: i64,
        name_key: &str,
    ) -> Result<IssuerRecord, StoreError> {
        let key = name_key.to_owned();
        self.write(move |c| {
            let rec = now_none(c.query_row(
                "SELECT vault_id, name, provider, body, secret, enabled, created, updated FROM issuers \
                 WHERE vault_id = ?1 AND name_key = ?2",
                params![vault_id, key],
                issuer_row,
            ))?
            .ok_or(StoreError::NotFound)?;
            c.execute("DELETE FROM issuers WHERE vault_id = ?1 AND name_key = ?2", params![vault_id, key])?;
            Ok(rec)
        })
        .await
    }

    /// The vault's contacts (JSON array), if set.
    pub async fn contacts(&self, vault_id: i64) -> Result<Option<String>, StoreError> {
        self.read(move |c| {
            now_none(c.query_row(
                "SELECT body FROM contacts WHERE vault_id = ?1",
                [vault_id],
                |r| r.get(0),
            ))
        })
        .await
    }

    /// Sets the vault's contacts.
    pub async fn set_contacts(&self, vault_id: i64, body: String) -> Result<(), StoreError> {
        self.write(move |c| {
            c.execute(
                "INSERT OR REPLACE INTO contacts (vault_id, body) VALUES (?1, ?2)",
                params![vault_id, body],
            )?;
            Ok(())
        })
        .await
    }

    /// Deletes the vault's contacts, returning them.
    pub async fn delete_contacts(&self, vault_id: i64) -> Result<Option<String>, StoreError> {
        self.write(move |c| {
            let old = now_none(c.query_row(
                "SELECT body FROM contacts WHERE vault_id = ?1",
                [vault_id],
                |r| r.get::<_, String>(0),
            ))?;
            c.execute("DELETE FROM contacts WHERE vault_id = ?1", [vault_id])?;
            Ok(old)
        })
        .await
    }
}

fn migrate(conn: &Connection) -> Result<(), StoreError> {
    let current: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let current =
        usize::try_from(current).map_err(|_| StoreError::Corrupt("bad user_version".into()))?;
    if current > MIGRATIONS.len() {
        return Err(StoreError::Open(format!(
            "the database schema ({current}) is newer than this certvault ({}); upgrade certvault",
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current) {
        let tx = conn.unchecked_transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(
            None,
            "user_version",
            i64::try_from(i + 1).unwrap_or(i64::MAX),
        )?;
        tx.commit()?;
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::Store;
    use crate::store::testing::{TestStore, backends};

    fn ver(v: &str, cer: Option<Vec<u8>>) -> VersionRecord {
        VersionRecord {
            cert_id: 0,
            version: v.into(),
            seq: 0,
            created: 1,
            updated: 1,
            enabled: cer.is_some(),
            nbf: Some(1),
            exp: Some(100),
            tags: None,
            cer,
            chain: vec![vec![1, 2], vec![3]],
            key_blob: Some(vec![9; 8]),
            key_ref: None,
            spki: vec![7],
            content_type: "application/x-pkcs12".into(),
            exportable: true,
            preserve_order: false,
            key_ops: None,
        }
    }

    /// 64 concurrent reads run at most `READ_SLOTS` at a time, all answered, and leave at
    /// most that many reader connections (no connection opened per read beyond the pool).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_reads_are_bounded_by_the_read_slots() {
        use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("t.db")).unwrap();
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..64 {
            let (s, running, most) = (s.clone(), running.clone(), most.clone());
            tasks.push(tokio::spawn(async move {
                s.read(move |c| {
                    let now = running.fetch_add(1, SeqCst) + 1;
                    most.fetch_max(now, SeqCst);
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    let one: i64 = c.query_row("SELECT 1", [], |r| r.get(0))?;
                    running.fetch_sub(1, SeqCst);
                    Ok(one)
                })
                .await
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap(), 1);
        }
        let most = most.load(SeqCst);
        assert!(most <= READ_SLOTS, "{most} reads ran at once");
        assert!(most >= 2, "reads still run concurrently ({most})");
        let kept = s.inner.readers.lock().unwrap().len();
        assert!(kept <= READ_SLOTS, "{kept} reader connections");
    }

    #[tokio::test]
    async fn versions_delete_recover_purge() {
        for t in backends().await {
            eprintln!("backend: {}", t.store.backend());
            versions_delete_recover_purge_on(&t.store).await;
        }
    }

    async fn versions_delete_recover_purge_on(s: &Store) {
        let vault = s.create_vault("Default", vec![1], 90, 1).await.unwrap();
        assert!(matches!(
            s.create_vault("default", vec![1], 90, 1).await,
            Err(StoreError::Conflict(Conflict::Exists))
        ));
        let (c, v1) = s
            .add_version(
                vault.id,
                "Web",
                "{}".into(),
                5,
                NewVersion {
                    record: ver("a1", Some(vec![1])),
                    operation: None,
                },
            )
            .await
            .unwrap();
        assert_eq!(v1.seq, 1);
        assert_eq!(v1.chain, vec![vec![1, 2], vec![3]]);
        let (_, v2) = s
            .add_version(
                vault.id,
                "web",
                "{}".into(),
                6,
                NewVersion {
                    record: ver("a2", Some(vec![2])),
                    operation: None,
                },
            )
            .await
            .unwrap();
        assert_eq!(v2.seq, 2);
        let (c2, latest) = s
            .cert_version(vault.id, "web", false, Which::Latest)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((c2.name.as_str(), latest.version.as_str()), ("Web", "a2"));
        let vs = s.list_versions(c.id, 0, 1).await.unwrap();
        assert_eq!(vs.len(), 1);
        assert_eq!(s.list_versions(c.id, vs[0].seq, 10).await.unwrap().len(), 1);

        s.soft_delete(c.id, 10, 20).await.unwrap();
        assert!(
            s.cert_version(vault.id, "web", false, Which::Latest)
                .await
                .unwrap()
                .is_none()
        );
        assert!(
            s.cert_version(vault.id, "web", true, Which::Latest)
                .await
                .unwrap()
                .is_some()
        );
        assert!(matches!(
            s.add_version(
                vault.id,
                "web",
                "{}".into(),
                6,
                NewVersion {
                    record: ver("a3", None),
                    operation: None
                }
            )
            .await,
            Err(StoreError::Conflict(Conflict::Deleted))
        ));
        s.recover(c.id, 11).await.unwrap();
        assert!(
            s.cert_version(vault.id, "web", false, Which::Version("a1"))
                .await
                .unwrap()
                .is_some()
        );
        s.soft_delete(c.id, 12, 20).await.unwrap();
        assert_eq!(s.purge_due(19).await.unwrap().0, 0);
        assert_eq!(s.purge_due(20).await.unwrap().0, 1);
        assert!(s.certificate(vault.id, "web").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn pending_merge_and_failed_writes_change_nothing() {
        for t in backends().await {
            eprintln!("backend: {}", t.store.backend());
            pending_merge_on(&t.store).await;
        }
    }

    async fn pending_merge_on(s: &Store) {
        let vault = s.create_vault("default", vec![1], 90, 1).await.unwrap();
        let op = OperationRecord {
            cert_id: 0,
            request_id: "r".into(),
            version: "p1".into(),
            issuer_name: "Unknown".into(),
            status: "inProgress".into(),
            status_details: String::new(),
            csr: Some(vec![1]),
            error: None,
            cancellation_requested: false,
            created: 1,
            updated: 1,
        };
        let (c, _) = s
            .add_version(
                vault.id,
                "m",
                "{}".into(),
                1,
                NewVersion {
                    record: ver("p1", None),
                    operation: Some(op),
                },
            )
            .await
            .unwrap();
        // a second create while in progress is refused and adds nothing
        assert!(matches!(
            s.add_version(
                vault.id,
                "m",
                "{}".into(),
                2,
                NewVersion {
                    record: ver("p2", None),
                    operation: None
                }
            )
            .await,
            Err(StoreError::Conflict(Conflict::OperationInProgress))
        ));
        assert_eq!(s.list_versions(c.id, 0, 10).await.unwrap().len(), 1);
        let (_, pend) = s
            .cert_version(vault.id, "m", false, Which::Latest)
            .await
            .unwrap()
            .unwrap();
        assert!(pend.is_pending());
        assert!(
            s.cert_version(vault.id, "m", false, Which::LatestCompleted)
                .await
                .unwrap()
                .is_none()
        );
        let done = s
            .complete_version(
                c.id,
                "p1",
                vec![5],
                vec![],
                VersionUpdate::default(),
                "done".into(),
                3,
            )
            .await
            .unwrap();
        assert!(done.enabled && !done.is_pending());
        assert_eq!(
            s.operation(c.id).await.unwrap().unwrap().status,
            "completed"
        );
        // merging twice is refused
        assert!(
            s.complete_version(
                c.id,
                "p1",
                vec![5],
                vec![],
                VersionUpdate::default(),
                "x".into(),
                4
            )
            .await
            .is_err()
        );
        // restore onto an existing name conflicts
        let dump = s.dump(c.id).await.unwrap();
        assert!(matches!(
            s.restore(vault.id, dump, 5).await,
            Err(StoreError::Conflict(Conflict::Exists))
        ));
    }

    #[tokio::test]
    async fn group_commit_under_concurrency() {
        for mut t in backends().await {
            eprintln!("backend: {}", t.store.backend());
            concurrent_writes_on(&mut t).await;
        }
    }

    async fn concurrent_writes_on(t: &mut TestStore) {
        let s = t.store.clone();
        let vault = s.create_vault("default", vec![1], 90, 1).await.unwrap();
        let mut tasks = Vec::new();
        for i in 0..200 {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                s.add_version(
                    vault.id,
                    &format!("c{i}"),
                    "{}".into(),
                    1,
                    NewVersion {
                        record: ver(&format!("v{i}"), Some(vec![1])),
                        operation: None,
                    },
                )
                .await
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let mut n = 0;
        let mut after = None;
        loop {
            let page = s
                .list_certificates(vault.id, false, after.clone(), 25, false)
                .await
                .unwrap();
            if page.is_empty() {
                break;
            }
            n += page.len();
            after = page.last().map(|(c, _)| Store::name_key(c));
        }
        assert_eq!(n, 200);
        // reopen: everything is durable
        drop(s);
        t.reopen().await;
        assert!(
            t.store
                .certificate(vault.id, "c199")
                .await
                .unwrap()
                .is_some()
        );
    }
}
