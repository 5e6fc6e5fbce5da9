//! The audit journal: the write-ahead log of the audit trail.
//!
//! Every audited request waits until its record is written to the journal (fail closed); a
//! request that changes state (and every background action) also waits until the record is on
//! disk (`fdatasync`). Records of requests that change nothing are written to the segment
//! before their response leaves, so a crash of certvault loses none, and are synced within
//! [`SYNC_INTERVAL`] (a power loss can lose at most that window of read records) — unless the
//! journal is opened with [`SyncPolicy::Always`], when every round is synced before anyone is
//! answered. See ARCHITECTURE §4b for the measurements behind this. Committing each
//! group of records to the SQLite `audit_log` table costs a B-tree insert per record, three
//! index inserts and a WAL frame per dirty page on every commit — measured at about a third of
//! the server's CPU time on the hottest request (GET of a secret). The journal makes the
//! durable step cheap instead: one thread takes every record queued since its last round,
//! chains them (seq, prev, MAC — the same chain as `audit_log`), appends them to a segment file
//! with one `write` and one `fdatasync`, and only then answers the requests. Records reach
//! `audit_log` afterwards in large batches (every [`IMPORT_INTERVAL`] or [`IMPORT_BATCH`]
//! records), as writes that do not advance the store's change epoch; a full segment file is
//! deleted once its records are committed there.
//!
//! Queries and verification call [`AuditJournal::flush`] first, so they see every record
//! appended before them. Opening the journal imports what a previous run left in segment files
//! (a crash between the durable append and the import loses nothing), after checking each
//! record's MAC: a torn record at the end of the last segment (a write that never completed,
//! so never answered) ends the recovery of that segment.
//!
//! Segment format: records one after another, each `length (u32, big-endian) ‖ canonical
//! encoding (see [`AuditRecord::canonical`]) ‖ prev (32) ‖ mac (32)`, then zeros to the end
//! of the preallocated file (a zero length ends the records).

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::StoreError;
use crate::audit::{AuditChain, AuditRecord, NewAuditRecord};
use crate::sqlite::SqliteStore;

/// Records are imported into `audit_log` at least this often while any are pending.
pub const IMPORT_INTERVAL: Duration = Duration::from_millis(250);
/// ... or as soon as this many are pending.
pub const IMPORT_BATCH: usize = 16_384;
/// The most records one round takes.
const MAX_ROUND: usize = 8192;
/// Records written without waiting for `fdatasync` are synced at most this long after the
/// first of them was written.
pub const SYNC_INTERVAL: Duration = Duration::from_millis(5);

/// When appends wait for `fdatasync`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncPolicy {
    /// Appends that ask for it wait for `fdatasync`; the others are synced within
    /// [`SYNC_INTERVAL`] after their write.
    #[default]
    Requested,
    /// Every append waits for `fdatasync`.
    Always,
}

/// What an append waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// The record is on disk (`fdatasync`) before the append resolves.
    Synced,
    /// The record is written to the segment (it survives a crash of the process) before the
    /// append resolves, and is synced within [`SYNC_INTERVAL`].
    Written,
}
/// Segment files are created at this size, filled with zeros and synced, before they take
/// records: an append then overwrites blocks the file already has, so its `fdatasync` writes
/// data only, without a file-system journal commit for the new size (measured here: 105 µs
/// instead of 172 µs per append + `fdatasync`). The next segment is prepared on another
/// thread while the current one fills.
pub const SEGMENT_BYTES: u64 = 8 << 20;

/// One caller's records (to be synced) and where their seqs go.
struct Unit {
    records: Vec<NewAuditRecord>,
    reply: oneshot::Sender<Result<Vec<i64>, String>>,
}

enum Msg {
    Append(Unit),
    /// A direct append wrote the first unsynced record, or the first record to import, or
    /// filled an import batch: the thread recomputes its deadlines.
    Wake,
    Flush {
        reply: oneshot::Sender<Result<(), String>>,
    },
    Imported {
        upto: i64,
        result: Result<(), String>,
        records: Arc<Vec<AuditRecord>>,
    },
    Close {
        reply: oneshot::Sender<()>,
    },
}

/// The gatherer's turn (see [`AuditJournal::append_written`]): on drop it clears the flag and
/// writes everything queued (or leaves it to the writer's holder).
struct Gathering<'a>(&'a AuditJournal);

impl Drop for Gathering<'_> {
    fn drop(&mut self) {
        self.0
            .writer
            .gathering
            .store(false, std::sync::atomic::Ordering::SeqCst);
        if self.0.writer.serve_queued() {
            // The journal thread may be asleep with no deadline: give it this one.
            let _ = self.0.send(Msg::Wake);
        }
    }
}

/// The durable front of the audit trail. Cloning shares it.
#[derive(Clone)]
pub struct AuditJournal {
    tx: Arc<Mutex<Option<mpsc::Sender<Msg>>>>,
    /// The segment being written; appends that need not wait for `fdatasync` write it
    /// directly, on the caller's thread.
    writer: Arc<Shared>,
    /// Every append waits for `fdatasync` ([`SyncPolicy::Always`]).
    always_sync: bool,
    /// Set when appends are refused until restart (see `Writer::broken`).
    broken: Arc<std::sync::atomic::AtomicBool>,
}

impl std::fmt::Debug for AuditJournal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditJournal")
    }
}

fn io_err(what: &str, path: &Path, e: &std::io::Error) -> StoreError {
    StoreError::Database(format!("audit journal: {what} {}: {e}", path.display()))
}

fn segment_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("{n:016}.seg"))
}

/// The segment files in `dir`, oldest first.
fn segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, StoreError> {
    let mut out = Vec::new();
    let rd = std::fs::read_dir(dir).map_err(|e| io_err("cannot list", dir, &e))?;
    for entry in rd {
        let entry = entry.map_err(|e| io_err("cannot list", dir, &e))?;
        let path = entry.path();
        let n = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".seg"))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(n) = n {
            out.push((n, path));
        }
    }
    out.sort();
    Ok(out)
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err("cannot sync", dir, &e))
}

/// Creates segment `n`: zeros up to [`SEGMENT_BYTES`], synced, then renamed into place, so a
/// segment file is either complete or absent (a crash leaves at most a `.tmp`).
fn prepare_segment(dir: &Path, n: u64) -> Result<File, StoreError> {
    let path = segment_path(dir, n);
    let tmp = path.with_extension("tmp");
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&tmp)
        .map_err(|e| io_err("cannot create", &tmp, &e))?;
    let zeros = vec![0u8; 1 << 20];
    let mut left = SEGMENT_BYTES;
    while left > 0 {
        let n = usize::try_from(left.min(zeros.len() as u64)).unwrap_or(zeros.len());
        file.write_all(&zeros[..n])
            .map_err(|e| io_err("cannot write", &tmp, &e))?;
        left -= n as u64;
    }
    file.sync_all()
        .map_err(|e| io_err("cannot sync", &tmp, &e))?;
    std::fs::rename(&tmp, &path).map_err(|e| io_err("cannot rename", &tmp, &e))?;
    sync_dir(dir)?;
    file.seek(SeekFrom::Start(0))
        .map_err(|e| io_err("cannot seek", &path, &e))?;
    Ok(file)
}

fn encode(rec: &AuditRecord, out: &mut Vec<u8>) {
    let canonical = rec.canonical();
    let len = canonical.len() + rec.prev.len() + rec.mac.len();
    out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(&canonical);
    out.extend_from_slice(&rec.prev);
    out.extend_from_slice(&rec.mac);
}

/// The records of one segment up to the first torn or unauthentic one, and whether the
/// segment ended cleanly.
fn decode_segment(bytes: &[u8], chain: &AuditChain) -> (Vec<AuditRecord>, bool) {
    let mut out = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let Some((len, tail)) = rest.split_first_chunk::<4>() else {
            return (out, false);
        };
        let len = u32::from_be_bytes(*len) as usize;
        if len == 0 && tail.iter().all(|b| *b == 0) {
            // the preallocated rest of the segment
            return (out, true);
        }
        if len < 64 || tail.len() < len {
            return (out, false);
        }
        let (body, next) = tail.split_at(len);
        let (canonical, macs) = body.split_at(len - 64);
        let (prev, mac) = macs.split_at(32);
        let Some(rec) = AuditRecord::from_canonical(canonical, prev, mac) else {
            return (out, false);
        };
        if chain.record(&rec.prev, &rec).as_slice() != rec.mac.as_slice() {
            return (out, false);
        }
        out.push(rec);
        rest = next;
    }
    (out, true)
}

/// The segment being written and the end of the chain: shared by the journal thread (which
/// writes the appends that wait for `fdatasync`, syncs, rotates and imports) and by callers
/// whose appends need only be written (they chain and write on their own thread, under the
/// lock, instead of handing the record to the journal thread and waiting to be woken: two
/// thread wake-ups per request were the largest cost left on the read path).
struct Writer {
    chain: AuditChain,
    dir: PathBuf,
    /// Shared so that `fdatasync` runs outside the lock (appends go on meanwhile).
    file: Arc<File>,
    segment: u64,
    len: u64,
    /// Full segments not yet deleted, with the last seq each holds.
    full: Vec<(u64, i64)>,
    /// The next segment, being prepared on another thread.
    next: Option<mpsc::Receiver<Result<File, StoreError>>>,
    /// Last seq, its MAC, and the time floor.
    seq: i64,
    prev: Vec<u8>,
    floor: i64,
    /// Appended to the current segment, not yet handed to the store.
    pending: Vec<AuditRecord>,
    /// Set when a failed append could not be undone, or a sync failed: every later append
    /// fails (fail closed).
    broken: Option<String>,
    /// When the oldest record written but not yet covered by a sync was written.
    unsynced_since: Option<Instant>,
    /// Set by `close`: later appends fail.
    closed: bool,
    /// Mirrors `broken` for [`AuditJournal::is_running`].
    broken_flag: Arc<std::sync::atomic::AtomicBool>,
}

impl Writer {
    /// Starts preparing the next segment when the current one is half full.
    fn prepare_next(&mut self) {
        if self.next.is_some() || self.len < SEGMENT_BYTES / 2 {
            return;
        }
        let (tx, rx) = mpsc::channel();
        let dir = self.dir.clone();
        let n = self.segment + 1;
        let spawned = std::thread::Builder::new()
            .name("certvault-audit-prepare".into())
            .spawn(move || {
                let _ = tx.send(prepare_segment(&dir, n));
            });
        if spawned.is_ok() {
            self.next = Some(rx);
        }
    }

    /// Moves to the next segment (prepared ahead if possible).
    fn rotate(&mut self) -> Result<(), StoreError> {
        // What the current segment holds must be on disk before records go elsewhere.
        if self.unsynced_since.is_some() {
            self.sync_locked();
            if let Some(why) = &self.broken {
                return Err(StoreError::Database(why.clone()));
            }
        }
        let n = self.segment + 1;
        let file = match self.next.take().map(|rx| rx.recv()) {
            Some(Ok(Ok(f))) => f,
            Some(Ok(Err(e))) => {
                tracing::warn!(error = %e, "audit journal: preparing the next segment failed; retrying");
                prepare_segment(&self.dir, n)?
            }
            _ => prepare_segment(&self.dir, n)?,
        };
        self.full.push((self.segment, self.seq));
        self.file = Arc::new(file);
        self.segment = n;
        self.len = 0;
        Ok(())
    }

    /// Syncs the current segment while holding the lock (rotation, close).
    fn sync_locked(&mut self) {
        if self.unsynced_since.is_none() {
            return;
        }
        match self.file.sync_data() {
            Ok(()) => self.unsynced_since = None,
            Err(e) => self.break_on_sync(&e),
        }
    }

    fn break_on_sync(&mut self, e: &std::io::Error) {
        tracing::error!(error = %e, "audit journal: fdatasync failed; audited requests fail until restart");
        self.broken = Some(format!("the audit journal cannot be synced: {e}"));
        self.broken_flag
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Chains and writes the records of several callers with one `write` (no sync); answers
    /// each caller's seqs. On a failed write the partial append is undone and nothing
    /// advances.
    fn write(&mut self, batches: Vec<Vec<NewAuditRecord>>) -> Result<Vec<Vec<i64>>, String> {
        if let Some(why) = &self.broken {
            return Err(why.clone());
        }
        if self.closed {
            return Err("the audit journal is closed".into());
        }
        let (seq0, prev0, floor0) = (self.seq, self.prev.clone(), self.floor);
        let mut buf = Vec::with_capacity(batches.iter().map(Vec::len).sum::<usize>() * 256);
        let mut chained = Vec::new();
        let mut answers = Vec::with_capacity(batches.len());
        for records in batches {
            let mut seqs = Vec::with_capacity(records.len());
            for mut fields in records {
                self.seq += 1;
                fields.time = fields.time.max(self.floor);
                self.floor = fields.time;
                let mut rec = AuditRecord {
                    seq: self.seq,
                    fields,
                    prev: std::mem::take(&mut self.prev),
                    mac: Vec::new(),
                };
                rec.mac = self.chain.record(&rec.prev, &rec).to_vec();
                self.prev = rec.mac.clone();
                encode(&rec, &mut buf);
                seqs.push(rec.seq);
                chained.push(rec);
            }
            answers.push(seqs);
        }
        if self.len > 0
            && self.len + buf.len() as u64 > SEGMENT_BYTES
            && let Err(e) = self.rotate()
        {
            tracing::error!(error = %e, "audit journal: cannot start a new segment");
            (self.seq, self.prev, self.floor) = (seq0, prev0, floor0);
            return Err(format!("the audit journal cannot start a new segment: {e}"));
        }
        let mut file: &File = &self.file;
        match file.write_all(&buf) {
            Ok(()) => {
                self.len += buf.len() as u64;
                if self.unsynced_since.is_none() {
                    self.unsynced_since = Some(Instant::now());
                }
                self.prepare_next();
                self.pending.extend(chained);
                Ok(answers)
            }
            Err(e) => {
                let why = format!("the audit journal cannot be written: {e}");
                tracing::error!(error = %e, "audit journal append failed");
                // Undo the partial append (zeros again where it wrote) so the segment stays a
                // clean chain; if that fails too, refuse every later append.
                let len = self.len;
                let undone = file
                    .seek(SeekFrom::Start(len))
                    .and_then(|_| file.write_all(&vec![0u8; buf.len()]))
                    .and_then(|()| file.seek(SeekFrom::Start(len)).map(|_| ()))
                    .and_then(|()| file.sync_data());
                if let Err(e2) = undone {
                    tracing::error!(error = %e2, "the audit journal cannot be repaired; audited requests fail until restart");
                    self.broken = Some(why.clone());
                    self.broken_flag
                        .store(true, std::sync::atomic::Ordering::Release);
                }
                (self.seq, self.prev, self.floor) = (seq0, prev0, floor0);
                Err(why)
            }
        }
    }
}

/// A direct append waiting for the writer's holder to write it.
type Waiting = (
    Vec<NewAuditRecord>,
    oneshot::Sender<Result<Vec<i64>, String>>,
);

/// The writer and the direct appends that found it busy.
///
/// A direct append never sleeps on the lock: when `try_lock` fails it queues its records and
/// awaits its answer, and whoever holds the writer writes everything queued (with one `write`)
/// before letting go, then looks once more after letting go (a record queued just before the
/// release tried the lock while it was still held, so it is the releasing side's to serve).
/// Every release of the writer goes through [`Shared::with`] or [`Shared::serve`], so nothing
/// queued is ever left behind.
struct Shared {
    writer: Mutex<Writer>,
    waiting: Mutex<Vec<Waiting>>,
    /// Set while a direct append is gathering others before writing (see
    /// [`AuditJournal::append_written`]).
    gathering: std::sync::atomic::AtomicBool,
}

impl Shared {
    fn take_waiting(&self) -> Vec<Waiting> {
        self.waiting
            .lock()
            .map(|mut q| std::mem::take(&mut *q))
            .unwrap_or_default()
    }

    fn has_waiting(&self) -> bool {
        self.waiting.lock().is_ok_and(|q| !q.is_empty())
    }

    /// Runs `f` on the writer, then serves what was queued meanwhile.
    fn with<R>(&self, f: impl FnOnce(&mut Writer) -> R) -> Option<R> {
        let r = {
            let mut g = self.writer.lock().ok()?;
            f(&mut g)
        };
        self.serve_queued();
        Some(r)
    }

    /// Serves queued appends if the writer is free. Returns whether the journal thread needs a
    /// wake-up.
    fn serve_queued(&self) -> bool {
        if !self.has_waiting() {
            return false;
        }
        match self.writer.try_lock() {
            Ok(g) => self.serve(g, None).1,
            Err(_) => false,
        }
    }

    /// As the writer's holder: writes `own` (if any) with everything queued, answers the
    /// queued callers, repeats until nothing is queued, and lets go. Returns `own`'s seqs and
    /// whether the journal thread needs a wake-up (first unsynced record, first record
    /// pending import, or a full import batch).
    fn serve(
        &self,
        guard: std::sync::MutexGuard<'_, Writer>,
        own: Option<Vec<NewAuditRecord>>,
    ) -> (Result<Vec<i64>, String>, bool) {
        let mut guard = Some(guard);
        let mut own = own;
        let mut mine = Ok(Vec::new());
        let mut wake = false;
        while let Some(mut g) = guard.take() {
            let queued = self.take_waiting();
            if own.is_none() && queued.is_empty() {
                drop(g);
                if self.has_waiting()
                    && let Ok(g2) = self.writer.try_lock()
                {
                    guard = Some(g2);
                }
                continue;
            }
            let first_unsynced = g.unsynced_since.is_none();
            let before = g.pending.len();
            let has_own = own.is_some();
            let (records, replies): (Vec<_>, Vec<_>) = queued.into_iter().unzip();
            let mut batches = Vec::with_capacity(records.len() + 1);
            batches.extend(own.take());
            batches.extend(records);
            let written = g.write(batches);
            let after = g.pending.len();
            wake |=
                first_unsynced || before == 0 || (before < IMPORT_BATCH && after >= IMPORT_BATCH);
            match written {
                Ok(seqs) => {
                    let mut seqs = seqs.into_iter();
                    if has_own {
                        mine = Ok(seqs.next().unwrap_or_default());
                    }
                    for (s, reply) in seqs.zip(replies) {
                        let _ = reply.send(Ok(s));
                    }
                }
                Err(why) => {
                    for reply in replies {
                        let _ = reply.send(Err(why.clone()));
                    }
                    if has_own {
                        mine = Err(why);
                    }
                }
            }
            guard = Some(g);
        }
        (mine, wake)
    }
}

/// Syncs what the current segment holds, with the lock released during `fdatasync` so that
/// appends go on meanwhile (a record written during the sync marks the segment unsynced
/// again, and is synced by the next round). Returns the error a sync failure sets.
fn sync_shared(w: &Shared) -> Result<(), String> {
    let file = w
        .with(|g| {
            if let Some(why) = &g.broken {
                return Err(why.clone());
            }
            if g.unsynced_since.is_none() {
                return Ok(None);
            }
            g.unsynced_since = None;
            Ok(Some(g.file.clone()))
        })
        .unwrap_or_else(|| Err("the audit journal lock is poisoned".into()))?;
    let Some(file) = file else {
        return Ok(());
    };
    match file.sync_data() {
        Ok(()) => Ok(()),
        Err(e) => w
            .with(|g| {
                g.break_on_sync(&e);
                Err(g.broken.clone().unwrap_or_default())
            })
            .unwrap_or_else(|| Err("the audit journal lock is poisoned".into())),
    }
}

/// The journal thread: writes and syncs the appends that wait for `fdatasync` (group
/// commit), syncs directly written records within [`SYNC_INTERVAL`], imports records into
/// `audit_log` and deletes imported segments.
struct Journal {
    store: SqliteStore,
    chain: AuditChain,
    dir: PathBuf,
    self_tx: mpsc::Sender<Msg>,
    writer: Arc<Shared>,
    /// Imports that failed, to hand to the store again.
    retry: Vec<Vec<AuditRecord>>,
    /// Imports queued at the store and not yet answered.
    importing: usize,
    /// Every record up to this seq is in `audit_log`.
    imported_upto: i64,
    /// Flushes waiting for `imported_upto` to reach a seq.
    flushes: Vec<(i64, oneshot::Sender<Result<(), String>>)>,
    last_import: Instant,
}

impl Journal {
    /// Syncs directly written records once the oldest has waited [`SYNC_INTERVAL`].
    fn sync_if_due(&mut self) {
        let due = self
            .writer
            .with(|g| {
                g.unsynced_since
                    .is_some_and(|t| t.elapsed() >= SYNC_INTERVAL)
            })
            .unwrap_or(false);
        if due {
            let _ = sync_shared(&self.writer);
        }
    }

    /// Writes one round of appends with one `write`, syncs it, and answers each.
    fn append_round(&mut self, units: Vec<Unit>) {
        let (batches, replies): (Vec<_>, Vec<_>) =
            units.into_iter().map(|u| (u.records, u.reply)).unzip();
        let written = self
            .writer
            .with(|g| g.write(batches))
            .unwrap_or_else(|| Err("the audit journal lock is poisoned".into()));
        let answered = written.and_then(|seqs| sync_shared(&self.writer).map(|()| seqs));
        match answered {
            Ok(seqs) => {
                for (s, reply) in seqs.into_iter().zip(replies) {
                    let _ = reply.send(Ok(s));
                }
            }
            Err(why) => {
                for reply in replies {
                    let _ = reply.send(Err(why.clone()));
                }
            }
        }
    }

    /// Hands the pending records (and failed imports) to the store.
    fn import(&mut self) {
        for records in std::mem::take(&mut self.retry) {
            self.submit(records);
        }
        let records = self
            .writer
            .with(|g| std::mem::take(&mut g.pending))
            .unwrap_or_default();
        if records.is_empty() {
            return;
        }
        self.submit(records);
        self.last_import = Instant::now();
    }

    fn submit(&mut self, records: Vec<AuditRecord>) {
        let upto = records.last().map_or(0, |r| r.seq);
        let tx = self.self_tx.clone();
        let chain = self.chain.clone();
        // Shared with the store's closure rather than copied: a batch holds up to
        // IMPORT_BATCH records.
        let records = Arc::new(records);
        let for_store = records.clone();
        let queued = self.store.write_detached(
            move |c| crate::audit::import(c, &for_store, chain.as_ref()),
            move |r: Result<(), StoreError>| {
                let _ = tx.send(Msg::Imported {
                    upto,
                    result: r.map_err(|e| e.to_string()),
                    records,
                });
            },
        );
        match queued {
            Ok(()) => self.importing += 1,
            Err(e) => {
                tracing::error!(error = %e, "audit journal: the store refused an import");
            }
        }
    }

    fn imported(&mut self, upto: i64, result: Result<(), String>, recs: Arc<Vec<AuditRecord>>) {
        self.importing = self.importing.saturating_sub(1);
        match result {
            Ok(()) => {
                // Imports are committed in the order they were queued; a retried one may
                // come later, so the mark only moves when nothing failed before it.
                if self.retry.is_empty() {
                    self.imported_upto = self.imported_upto.max(upto);
                }
                let done = self.imported_upto;
                let dir = self.dir.clone();
                self.writer.with(|g| {
                    g.full.retain(|(n, last)| {
                        if *last > done {
                            return true;
                        }
                        let path = segment_path(&dir, *n);
                        if let Err(e) = std::fs::remove_file(&path) {
                            tracing::warn!(error = %e, path = %path.display(), "audit journal: cannot remove an imported segment");
                        }
                        false
                    });
                });
                let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.flushes)
                    .into_iter()
                    .partition(|(s, _)| *s <= done);
                self.flushes = waiting;
                for (_, reply) in ready {
                    let _ = reply.send(Ok(()));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "audit journal: importing into the audit log failed; retrying");
                for (_, reply) in std::mem::take(&mut self.flushes) {
                    let _ = reply.send(Err(format!("the audit log could not be updated: {e}")));
                }
                self.retry
                    .push(Arc::try_unwrap(recs).unwrap_or_else(|shared| shared.as_ref().clone()));
            }
        }
    }

    /// (records pending import, when the oldest unsynced record was written, last seq)
    fn writer_state(&self) -> (usize, Option<Instant>, i64) {
        self.writer
            .with(|g| (g.pending.len(), g.unsynced_since, g.seq))
            .unwrap_or((0, None, 0))
    }

    fn run(mut self, rx: mpsc::Receiver<Msg>) {
        let mut closing: Option<oneshot::Sender<()>> = None;
        loop {
            let (pending, unsynced_since, _) = self.writer_state();
            let mut wait = if pending == 0 && self.retry.is_empty() {
                Duration::from_secs(3600)
            } else {
                IMPORT_INTERVAL.saturating_sub(self.last_import.elapsed())
            };
            if let Some(t) = unsynced_since {
                wait = wait.min(SYNC_INTERVAL.saturating_sub(t.elapsed()));
            }
            let first = match rx.recv_timeout(wait) {
                Ok(m) => Some(m),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            };
            let mut units = Vec::new();
            let mut n = 0;
            let mut force = false;
            let mut next = first;
            while let Some(m) = next {
                match m {
                    Msg::Append(u) => {
                        n += u.records.len();
                        units.push(u);
                    }
                    Msg::Wake => {}
                    Msg::Flush { reply } => {
                        // Direct appends made before the flush have advanced the writer's
                        // seq already; the units of this round come after it.
                        let seq = self.writer_state().2;
                        self.flushes.push((seq + n_as_i64(n), reply));
                        force = true;
                    }
                    Msg::Imported {
                        upto,
                        result,
                        records,
                    } => self.imported(upto, result, records),
                    Msg::Close { reply } => {
                        closing = Some(reply);
                        force = true;
                    }
                }
                if n >= MAX_ROUND || closing.is_some() {
                    break;
                }
                next = rx.try_recv().ok();
            }
            if !units.is_empty() {
                self.append_round(units);
            }
            if closing.is_some() {
                self.writer.with(|g| {
                    g.closed = true;
                    g.sync_locked();
                });
            }
            self.sync_if_due();
            let (pending, _, _) = self.writer_state();
            // Flushes with nothing left to import are answered at once.
            if pending == 0 && self.importing == 0 && self.retry.is_empty() {
                for (_, reply) in std::mem::take(&mut self.flushes) {
                    let _ = reply.send(Ok(()));
                }
            }
            if force
                || pending >= IMPORT_BATCH
                || ((pending > 0 || !self.retry.is_empty())
                    && self.last_import.elapsed() >= IMPORT_INTERVAL)
            {
                self.import();
                self.last_import = Instant::now();
            }
            if closing.is_some() {
                break;
            }
        }
        // Wait (boundedly) for the imports in flight, so a clean stop leaves no segment.
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.importing > 0 {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(Msg::Imported {
                    upto,
                    result,
                    records,
                }) => self.imported(upto, result, records),
                Ok(Msg::Append(u)) => {
                    let _ = u.reply.send(Err("the audit journal is closed".into()));
                }
                Ok(Msg::Flush { reply }) => {
                    let _ = reply.send(Err("the audit journal is closed".into()));
                }
                Ok(Msg::Close { reply }) => {
                    let _ = reply.send(());
                }
                Ok(Msg::Wake) => {}
                Err(_) => break,
            }
        }
        // Everything is in the table: no segment is needed any more.
        let (pending, _, _) = self.writer_state();
        if pending == 0 && self.retry.is_empty() && self.importing == 0 {
            let next = self.writer.with(|g| g.next.take()).flatten();
            if let Some(rx) = next {
                let _ = rx.recv();
            }
            if let Ok(all) = segments(&self.dir) {
                for (_, path) in all {
                    let _ = std::fs::remove_file(path);
                }
            }
        }
        if let Some(reply) = closing {
            let _ = reply.send(());
        }
    }
}

fn n_as_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl AuditJournal {
    /// Opens the journal of `store` (the directory `<database>-audit` beside the database),
    /// imports what a previous run left there, and starts the journal thread.
    pub async fn open(store: &SqliteStore, chain: AuditChain) -> Result<Self, StoreError> {
        Self::open_with(store, chain, SyncPolicy::default()).await
    }

    /// [`Self::open`] with a sync policy.
    pub async fn open_with(
        store: &SqliteStore,
        chain: AuditChain,
        policy: SyncPolicy,
    ) -> Result<Self, StoreError> {
        let dir = store.audit_journal_dir();
        std::fs::create_dir_all(&dir).map_err(|e| io_err("cannot create", &dir, &e))?;
        // Leftovers of a segment being prepared at a crash.
        if let Ok(rd) = std::fs::read_dir(&dir) {
            for e in rd.flatten() {
                if e.path().extension().is_some_and(|x| x == "tmp") {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        // Recovery: every record of every segment, in order, up to the first bad one; those
        // the table has already (imported before the crash) are skipped.
        let stored = store.audit_last_seq().await?;
        let mut last_segment = 0;
        for (n, path) in segments(&dir)? {
            let bytes = std::fs::read(&path).map_err(|e| io_err("cannot read", &path, &e))?;
            let (mut records, clean) = decode_segment(&bytes, &chain);
            records.retain(|r| r.seq > stored);
            if !clean {
                tracing::warn!(
                    path = %path.display(),
                    recovered = records.len(),
                    "audit journal: a segment ends in an incomplete record (a write interrupted \
                     by a crash, never acknowledged); the complete records before it are kept"
                );
            }
            if !records.is_empty() {
                let c2 = chain.clone();
                store
                    .write_audit(move |c| crate::audit::import(c, &records, c2.as_ref()))
                    .await?;
            }
            std::fs::remove_file(&path).map_err(|e| io_err("cannot remove", &path, &e))?;
            last_segment = n;
        }
        // Check the head (recording a lost head) and continue the chain after the last record.
        let (seq, prev, floor) = store.audit_chain_end(chain.clone()).await?;
        let (tx, rx) = mpsc::channel();
        let broken_flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let first_dir = dir.clone();
        let file =
            tokio::task::spawn_blocking(move || prepare_segment(&first_dir, last_segment + 1))
                .await
                .map_err(|e| StoreError::Open(e.to_string()))??;
        let writer = Arc::new(Shared {
            gathering: std::sync::atomic::AtomicBool::new(false),
            writer: Mutex::new(Writer {
                chain: chain.clone(),
                dir: dir.clone(),
                file: Arc::new(file),
                segment: last_segment + 1,
                len: 0,
                full: Vec::new(),
                next: None,
                seq,
                prev,
                floor,
                pending: Vec::new(),
                broken: None,
                unsynced_since: None,
                closed: false,
                broken_flag: broken_flag.clone(),
            }),
            waiting: Mutex::new(Vec::new()),
        });
        let journal = Journal {
            store: store.clone(),
            chain,
            dir,
            self_tx: tx.clone(),
            writer: writer.clone(),
            retry: Vec::new(),
            importing: 0,
            imported_upto: seq,
            flushes: Vec::new(),
            last_import: Instant::now(),
        };
        std::thread::Builder::new()
            .name("certvault-audit-journal".into())
            .spawn(move || journal.run(rx))
            .map_err(|e| StoreError::Open(e.to_string()))?;
        Ok(Self {
            tx: Arc::new(Mutex::new(Some(tx))),
            writer,
            always_sync: policy == SyncPolicy::Always,
            broken: broken_flag,
        })
    }

    /// Whether the journal accepts appends: open, not closed, and not refusing appends after
    /// a write it could not undo.
    pub fn is_running(&self) -> bool {
        let open = self.tx.lock().map(|g| g.is_some()).unwrap_or(false);
        open && !self.broken.load(std::sync::atomic::Ordering::Acquire)
    }

    fn send(&self, m: Msg) -> Result<(), StoreError> {
        let guard = self.tx.lock().map_err(|_| StoreError::Closed)?;
        guard
            .as_ref()
            .ok_or(StoreError::Closed)?
            .send(m)
            .map_err(|_| StoreError::Closed)
    }

    /// Appends records; resolves with their seqs once they are on disk.
    pub async fn append(&self, records: Vec<NewAuditRecord>) -> Result<Vec<i64>, StoreError> {
        self.append_with(records, Durability::Synced).await
    }

    /// Appends records; resolves with their seqs once they are written (`Written`) or on disk
    /// (`Synced`, or any append when the journal was opened with [`SyncPolicy::Always`]).
    ///
    /// A `Written` append chains and writes its records on the calling thread, under the
    /// writer's lock (one `write` of a few hundred bytes), and returns without waiting for
    /// the journal thread; that thread syncs them within [`SYNC_INTERVAL`]. A `Synced` append
    /// is handed to the journal thread, which writes and syncs every append queued since its
    /// last round together.
    pub async fn append_with(
        &self,
        records: Vec<NewAuditRecord>,
        durability: Durability,
    ) -> Result<Vec<i64>, StoreError> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        if durability == Durability::Written && !self.always_sync {
            return self.append_written(records).await;
        }
        let (reply, answer) = oneshot::channel();
        self.send(Msg::Append(Unit { records, reply }))?;
        match answer.await {
            Ok(Ok(seqs)) => Ok(seqs),
            Ok(Err(msg)) => Err(StoreError::Database(msg)),
            Err(_) => Err(StoreError::Closed),
        }
    }

    /// A direct append. Appends made at about the same time share one `write`: each one
    /// queues its records; the first of them to find nobody gathering becomes the gatherer,
    /// yields once to the runtime (the requests ready meanwhile reach their own append and
    /// queue behind it), then takes the writer and writes everything queued with one `write`
    /// (or, when the writer is busy, leaves it to the holder, which serves the queue before
    /// letting go). One `write(2)` of a few hundred bytes costs more than the chaining of a
    /// record, so under load this is the cheaper path; alone, an append costs one yield more.
    ///
    /// No record is stranded: a record queued while the flag is set was queued before the
    /// gatherer clears it, and the gatherer takes the queue only after clearing it.
    async fn append_written(&self, records: Vec<NewAuditRecord>) -> Result<Vec<i64>, StoreError> {
        use std::sync::atomic::Ordering::SeqCst;
        let (reply, answer) = oneshot::channel();
        self.writer
            .waiting
            .lock()
            .map_err(|_| StoreError::Closed)?
            .push((records, reply));
        if self
            .writer
            .gathering
            .compare_exchange(false, true, SeqCst, SeqCst)
            .is_ok()
        {
            // Ends the gathering and writes, also when this future is dropped while it
            // yields (a cancelled request must not leave the flag set).
            let gather = Gathering(self);
            tokio::task::yield_now().await;
            drop(gather);
        }
        match answer.await {
            Ok(Ok(seqs)) => Ok(seqs),
            Ok(Err(msg)) => Err(StoreError::Database(msg)),
            Err(_) => Err(StoreError::Closed),
        }
    }

    /// Resolves once every record appended before the call is in `audit_log`.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let (reply, answer) = oneshot::channel();
        self.send(Msg::Flush { reply })?;
        match answer.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(msg)) => Err(StoreError::Database(msg)),
            Err(_) => Err(StoreError::Closed),
        }
    }

    /// Imports what is pending and stops the journal thread. Later appends fail.
    pub async fn close(&self) {
        let (reply, answer) = oneshot::channel();
        if self.send(Msg::Close { reply }).is_ok() {
            let _ = answer.await;
        }
        if let Ok(mut g) = self.tx.lock() {
            g.take();
        }
        self.writer.with(|g| g.closed = true);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::audit::tests::{chain, rec};
    use crate::{AuditFilter, NewAuditRecord};

    fn recs(from: i64, n: i64) -> Vec<NewAuditRecord> {
        (from..from + n)
            .map(|i| rec(i, "alice", "secrets.get", "secrets/web"))
            .collect()
    }

    async fn all(s: &SqliteStore) -> Vec<AuditRecord> {
        s.audit_records(AuditFilter::default(), 100_000)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn appends_are_durable_chained_and_imported_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("t.db")).unwrap();
        s.append_audit(recs(0, 2), chain()).await.unwrap();
        let j = AuditJournal::open(&s, chain()).await.unwrap();
        let mut tasks = Vec::new();
        for t in 0..16 {
            let j = j.clone();
            tasks.push(tokio::spawn(async move {
                let mut got = Vec::new();
                for k in 0..20 {
                    got.extend(j.append(recs(t * 100 + k, 1 + k % 3)).await.unwrap());
                }
                got
            }));
        }
        let mut seqs: Vec<i64> = Vec::new();
        for t in tasks {
            seqs.extend(t.await.unwrap());
        }
        seqs.sort_unstable();
        let n = seqs.len() as i64;
        assert_eq!(
            seqs,
            (3..3 + n).collect::<Vec<_>>(),
            "consecutive after the table's 2"
        );
        j.flush().await.unwrap();
        let stored = all(&s).await;
        assert_eq!(stored.len() as i64, 2 + n);
        let v = s.verify_audit(chain()).await.unwrap();
        assert_eq!(v.problem, None);
        assert_eq!(v.head.map(|h| h.0), Some(2 + n));
        // times never decrease along the chain
        assert!(
            stored
                .windows(2)
                .all(|w| w[0].fields.time <= w[1].fields.time)
        );
        j.close().await;
        assert!(j.append(recs(0, 1)).await.is_err(), "closed: appends fail");
        // a clean stop leaves no segment behind
        assert!(segments(&s.audit_journal_dir()).unwrap().is_empty());
    }

    /// Direct (`Written`) appends from many tasks on several threads, mixed with synced ones:
    /// appends that find the writer busy are written by its holder; every append gets its
    /// own seqs, none is lost or duplicated, and the chain verifies.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_direct_appends_are_combined_without_loss() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("t.db")).unwrap();
        let j = AuditJournal::open(&s, chain()).await.unwrap();
        let mut tasks = Vec::new();
        for t in 0..32 {
            let j = j.clone();
            tasks.push(tokio::spawn(async move {
                let mut got = Vec::new();
                for k in 0..200 {
                    let d = if k % 50 == 0 {
                        Durability::Synced
                    } else {
                        Durability::Written
                    };
                    let seqs = j
                        .append_with(recs(t * 1000 + k, 1 + k % 2), d)
                        .await
                        .unwrap();
                    assert_eq!(seqs.len() as i64, 1 + k % 2);
                    got.extend(seqs);
                }
                got
            }));
        }
        let mut seqs: Vec<i64> = Vec::new();
        for t in tasks {
            seqs.extend(t.await.unwrap());
        }
        seqs.sort_unstable();
        let n = seqs.len() as i64;
        assert_eq!(
            seqs,
            (1..=n).collect::<Vec<_>>(),
            "each seq once, none missing"
        );
        j.flush().await.unwrap();
        assert_eq!(all(&s).await.len() as i64, n);
        let v = s.verify_audit(chain()).await.unwrap();
        assert_eq!(v.problem, None);
        j.close().await;
        assert!(
            j.append_with(recs(0, 1), Durability::Written)
                .await
                .is_err(),
            "closed: direct appends fail too"
        );
    }

    /// A gathering append dropped while it yields (a cancelled request) still ends the
    /// gathering: its record is written, and later appends are not left waiting.
    #[tokio::test]
    async fn a_cancelled_gatherer_leaves_nothing_waiting() {
        use std::future::Future;
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("t.db")).unwrap();
        let j = AuditJournal::open(&s, chain()).await.unwrap();
        {
            let mut fut = std::pin::pin!(j.append_with(recs(1, 1), Durability::Written));
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            assert!(
                fut.as_mut().poll(&mut cx).is_pending(),
                "the gatherer yields once"
            );
            assert!(j.writer.gathering.load(std::sync::atomic::Ordering::SeqCst));
        }
        assert!(!j.writer.gathering.load(std::sync::atomic::Ordering::SeqCst));
        let seqs = tokio::time::timeout(
            Duration::from_secs(5),
            j.append_with(recs(2, 1), Durability::Written),
        )
        .await
        .expect("a later append is answered")
        .unwrap();
        assert_eq!(
            seqs,
            vec![2],
            "the cancelled request's record was written first"
        );
        j.flush().await.unwrap();
        assert_eq!(all(&s).await.len(), 2);
        j.close().await;
    }

    #[tokio::test]
    async fn written_records_are_in_the_segment_when_the_append_resolves() {
        for policy in [SyncPolicy::Requested, SyncPolicy::Always] {
            let dir = tempfile::tempdir().unwrap();
            let s = SqliteStore::open(&dir.path().join("t.db")).unwrap();
            let j = AuditJournal::open_with(&s, chain(), policy).await.unwrap();
            let seqs = j
                .append_with(recs(0, 3), Durability::Written)
                .await
                .unwrap();
            assert_eq!(seqs, vec![1, 2, 3]);
            // What a new process reads after this one crashes: the segment holds them, before
            // any import or deferred sync.
            let files = segments(&s.audit_journal_dir()).unwrap();
            let (_, last) = files.last().unwrap();
            let (got, clean) = decode_segment(&std::fs::read(last).unwrap(), &chain());
            assert!(clean);
            assert_eq!(got.iter().map(|r| r.seq).collect::<Vec<_>>(), seqs);
            // Later appends of either kind continue the chain across the deferred sync.
            tokio::time::sleep(SYNC_INTERVAL * 3).await;
            let more = j.append(recs(10, 2)).await.unwrap();
            assert_eq!(more, vec![4, 5]);
            let read = j
                .append_with(recs(20, 1), Durability::Written)
                .await
                .unwrap();
            assert_eq!(read, vec![6]);
            j.flush().await.unwrap();
            assert_eq!(all(&s).await.len(), 6);
            assert_eq!(s.verify_audit(chain()).await.unwrap().problem, None);
            j.close().await;
            assert!(segments(&s.audit_journal_dir()).unwrap().is_empty());
        }
    }

    #[tokio::test]
    async fn full_segments_rotate_and_are_removed_once_imported() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("t.db")).unwrap();
        let j = AuditJournal::open(&s, chain()).await.unwrap();
        let big = "d".repeat(100_000);
        let mut n = 0;
        // ~1.5 segments of records
        while n * 100_000 < SEGMENT_BYTES * 3 / 2 {
            let mut r = rec(n as i64, "alice", "secrets.get", "secrets/web");
            r.detail = Some(format!("\"{big}\""));
            j.append(vec![r]).await.unwrap();
            n += 1;
        }
        // rotated: the journal writes to a later segment (the first may already be imported
        // and removed by a periodic import)
        let files = segments(&s.audit_journal_dir()).unwrap();
        assert!(files.iter().any(|f| f.0 >= 2), "rotated: {files:?}");
        j.flush().await.unwrap();
        let files: Vec<u64> = segments(&s.audit_journal_dir())
            .unwrap()
            .into_iter()
            .map(|f| f.0)
            .collect();
        assert!(
            !files.contains(&1),
            "the full first segment is removed once imported: {files:?}"
        );
        assert_eq!(all(&s).await.len() as u64, n);
        assert_eq!(s.verify_audit(chain()).await.unwrap().problem, None);
        j.close().await;
        assert!(segments(&s.audit_journal_dir()).unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_crash_loses_nothing_acknowledged_and_drops_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let s = SqliteStore::open(&path).unwrap();
        s.append_audit(recs(0, 3), chain()).await.unwrap();
        // What a journal thread had made durable when the process died: two segments, the
        // second ending in a record whose write never completed.
        let (mut seq, mut prev, _) = s.audit_chain_end(chain()).await.unwrap();
        let jdir = s.audit_journal_dir();
        std::fs::create_dir_all(&jdir).unwrap();
        let mut write_seg = |n: u64, count: i64, torn: bool| {
            let mut buf = Vec::new();
            for f in recs(10 * n as i64, count) {
                seq += 1;
                let mut r = AuditRecord {
                    seq,
                    fields: f,
                    prev: prev.clone(),
                    mac: Vec::new(),
                };
                r.mac = chain().record(&r.prev, &r).to_vec();
                prev = r.mac.clone();
                encode(&r, &mut buf);
            }
            if torn {
                let mut half = Vec::new();
                let mut r = AuditRecord {
                    seq: seq + 1,
                    fields: rec(99, "mallory", "secrets.get", "x"),
                    prev: prev.clone(),
                    mac: Vec::new(),
                };
                r.mac = chain().record(&r.prev, &r).to_vec();
                encode(&r, &mut half);
                buf.extend_from_slice(&half[..half.len() / 2]);
            }
            std::fs::write(segment_path(&jdir, n), buf).unwrap();
        };
        write_seg(1, 4, false);
        write_seg(2, 3, true);
        // The first segment was imported already before the crash (its file not yet removed).
        let seg1 = std::fs::read(segment_path(&jdir, 1)).unwrap();
        let (first, clean) = decode_segment(&seg1, &chain());
        assert!(clean);
        let c2 = chain();
        s.write_audit(move |c| crate::audit::import(c, &first, c2.as_ref()))
            .await
            .unwrap();

        let j = AuditJournal::open(&s, chain()).await.unwrap();
        let stored = all(&s).await;
        assert_eq!(
            stored.len(),
            3 + 4 + 3,
            "each record once; the torn one not at all"
        );
        assert!(stored.iter().all(|r| r.fields.principal != "mallory"));
        assert_eq!(s.verify_audit(chain()).await.unwrap().problem, None);
        // the chain goes on after the recovered records
        let next = j.append(recs(50, 1)).await.unwrap();
        assert_eq!(next, vec![11]);
        j.flush().await.unwrap();
        assert_eq!(s.verify_audit(chain()).await.unwrap().problem, None);
        j.close().await;
    }

    #[tokio::test]
    async fn an_unauthentic_record_ends_recovery_there() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("t.db")).unwrap();
        let j = AuditJournal::open(&s, chain()).await.unwrap();
        j.append(recs(0, 3)).await.unwrap();
        // Stop the thread without importing: keep the segment as a crash would.
        let seg = segments(&s.audit_journal_dir()).unwrap();
        let bytes = std::fs::read(&seg[0].1).unwrap();
        let (good, clean) = decode_segment(&bytes, &chain());
        assert_eq!((good.len(), clean), (3, true));
        // one byte of the second record's principal changed
        let mut bad = bytes.clone();
        let first_len = 4 + u32::from_be_bytes(bad[..4].try_into().unwrap()) as usize;
        let pos = first_len
            + 4
            + bad[first_len + 4..]
                .windows(5)
                .position(|w| w == b"alice")
                .unwrap();
        bad[pos] = b'A';
        let (got, clean) = decode_segment(&bad, &chain());
        assert_eq!((got.len(), clean), (1, false));
        // and with another key nothing is accepted
        let (got, _) = decode_segment(
            &bytes,
            &(Arc::new(crate::audit::tests::TestMac(7)) as AuditChain),
        );
        assert!(got.is_empty());
        j.close().await;
    }

    #[tokio::test]
    async fn a_failed_append_is_undone_and_answered_with_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("t.db")).unwrap();
        let jdir = s.audit_journal_dir();
        std::fs::create_dir_all(&jdir).unwrap();
        let ro = segment_path(&jdir, 1);
        std::fs::write(&ro, b"").unwrap();
        let mut w = Writer {
            chain: chain(),
            dir: jdir,
            // opened read-only: every write fails
            file: Arc::new(File::open(&ro).unwrap()),
            segment: 1,
            len: 0,
            full: Vec::new(),
            next: None,
            seq: 0,
            prev: vec![0u8; 32],
            floor: i64::MIN,
            pending: Vec::new(),
            broken: None,
            unsynced_since: None,
            closed: false,
            broken_flag: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        };
        assert!(w.write(vec![recs(0, 2)]).is_err());
        assert_eq!((w.seq, w.pending.len()), (0, 0), "nothing advanced");
        // The partial append could not be cut off either (read-only): the journal refuses
        // every later append instead of writing after a damaged record (fail closed).
        assert!(w.broken.is_some());
        assert!(w.broken_flag.load(std::sync::atomic::Ordering::Acquire));
        w.rotate().unwrap();
        assert!(w.write(vec![recs(0, 2)]).is_err());
    }
}
