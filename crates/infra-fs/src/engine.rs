//! [`FsEngine`]: the Bitcask-style engine over segment files.
//!
//! A Bitcask (<https://riak.com/assets/bitcask-intro.pdf>) appends every write to the active log segment and
//! keeps an in-memory keydir mapping each live key to the location of its latest record, so a read is one
//! keydir lookup and one positional read, and a range scan walks the ordered keydir. Differences from the
//! paper: the keydir is ordered (range scans); every record carries an LSN and a CRC32C; batches are atomic;
//! durability is a mode with group commit; and hint files and merging arrive with compaction.
//!
//! ## Write path
//! One writer at a time holds the writer lock: it assigns the next LSN, rotates the segment if needed and
//! encodes the record(s), all under the lock, so file order is LSN order.
//! - `never` / `interval`: the records are `pwrite`n in one call and the keydir is updated under the same
//!   lock; the write is acknowledged once it has reached the OS, so it survives a process crash.
//! - `always` (group commit): the records are appended to an in-memory group buffer and their keydir
//!   updates queued; the writer then waits until its LSN is durable. The first waiter becomes the *sync
//!   leader*: under the writer lock it `pwrite`s the whole buffer (one call for the group) and takes the
//!   queue; then, without the lock, it `fdatasync`s once for everyone in the group, publishes the queued
//!   keydir updates in LSN order, and unparks exactly the waiters now durable (plus one to lead the next
//!   group). Writers keep appending while the leader syncs, forming the next group. No reader ever sees a
//!   write before it is durable.
//!
//! ## Fail-stop
//! A failed `pwrite`, `fdatasync`, or rotation poisons the engine: the failure is recorded once, every
//! waiter of the failed group and every later write get an error, and nothing is ever retried and then
//! acknowledged (after a failed fsync the kernel may have dropped the dirty pages, so a retry that
//! succeeds proves nothing). Reads keep working. Reopening runs recovery, which trusts only the disk.
//!
//! ## Invariants
//! - `acked LSN <= durable LSN <= last accepted LSN`; in `always` mode the keydir reflects exactly the
//!   acknowledged writes.
//! - The group buffer is written to the file under the writer lock, so a rotation never seals a segment
//!   while a group's bytes are still on their way to it.
//! - Segment ids only grow; the active segment is the one with the highest id.
//! - A sealed segment was fsynced before its successor was created (so recovery never sees it torn).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use kv_domain::{
    check_batch, check_record, BatchOp, CompactionStats, Durability, Engine, EngineError,
    EngineResult, EngineStatus, Entry, GroupCommitStats, Key, KeyRange, Location, LogCursor,
    LogEntry, LogRead, LogShipping, Lsn, OrderedIndex, RecoveryReport, Value, WriteBatch,
};
use parking_lot::{Mutex, RwLock};

use crate::codec::{
    decode_record, encode_record, encode_segment_header, record_len, RecordKind, RECORD_HEADER_LEN,
    SEGMENT_HEADER_LEN,
};
use crate::options::Options;

#[path = "compaction.rs"]
mod compaction;
#[path = "history.rs"]
mod history;
use crate::garbage::{apply_update, Garbage, Update};
use crate::recovery::recover;
use crate::segment::{segment_name, FdBudget, Segment, FIRST_SEGMENT_ID};
use crate::vfs::{path_in, DirLock};

/// The storage engine over a data directory. Cheap to share behind an `Arc`; dropping it stops the interval
/// syncer and makes everything written durable (best effort; call [`FsEngine::close`] to see errors).
pub struct FsEngine {
    inner: Arc<Inner>,
    /// Background threads (interval syncer, compactor) and their stop flags.
    background: Vec<(Arc<AtomicBool>, JoinHandle<()>)>,
}

impl std::fmt::Debug for FsEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FsEngine")
            .field("dir", &self.inner.dir)
            .field("durability", &self.inner.opts.durability)
            .finish()
    }
}

struct Inner {
    dir: PathBuf,
    opts: Options,
    /// Bounds the open segment descriptors.
    budget: Arc<FdBudget>,
    /// The keydir. Mutated under the `publish` lock, by the writer (never/interval), the sync leader
    /// (always) or compaction's remapping.
    index: Box<dyn OrderedIndex>,
    /// Every segment by id. Readers clone an `Arc<Segment>` out and drop the guard before any I/O.
    segments: RwLock<BTreeMap<u32, Arc<Segment>>>,
    /// The single-writer state. A `parking_lot` mutex: held for one `pwrite` (plus a rotation now and then),
    /// never across an fsync of a group.
    writer: Mutex<Writer>,
    /// Group-commit coordination; separate from `writer` so that writers can append while a leader syncs.
    sync: Mutex<SyncState>,
    /// Everything up to this LSN is durable.
    durable_lsn: AtomicU64,
    /// Serialises keydir mutations between the writer (`never`/`interval`), the sync leader (`always`) and
    /// compaction's remapping, so a remap can never overwrite a newer location; it guards the per-segment
    /// garbage ledger, which every keydir mutation updates (`garbage_bytes` mirrors its total).
    publish: Mutex<Garbage>,
    /// Serialises manifest rewrites with the segment-table change each one records (see `update_segments`).
    manifest: Mutex<()>,
    /// Set at open when the disk was too full to repair the log: writes fail with `DiskFull`.
    read_only: Option<String>,
    /// Held while a compaction runs: at most one at a time.
    compacting: Mutex<()>,
    /// Counters of finished compactions.
    compactions: Mutex<CompactionStats>,
    /// Progress of the running compaction, if any.
    compaction_progress: Mutex<Option<CompactionStats>>,
    /// Set once, by the first write-path I/O failure; read lock-free by everyone after.
    poison: OnceLock<String>,
    acked_lsn: AtomicU64,
    /// Compaction keeps the history of every LSN above this (see `history.rs`); `RETAIN_NOTHING` if none.
    retain_after: AtomicU64,
    garbage_bytes: AtomicU64,
    disk_bytes: AtomicU64,
    fsyncs: AtomicU64,
    writes: AtomicU64,
    /// Group-commit size histogram (see `GroupCommitStats::BOUNDS`), and the writes they covered.
    group_sizes: [AtomicU64; GroupCommitStats::BOUNDS.len() + 1],
    group_writes: AtomicU64,
    report: RecoveryReport,
    _lock: Box<dyn DirLock>,
}

struct Writer {
    active: Arc<Segment>,
    /// The active segment's file (pinned open).
    active_file: Arc<dyn crate::vfs::FileHandle>,
    /// Where the next record goes in the active segment (counting records still in `buf`).
    offset: u64,
    /// LSN of the latest write accepted (in the file, or in `buf` in `always` mode).
    last_lsn: u64,
    /// `always` mode: encoded records of the current group, not yet written to the file.
    buf: Vec<u8>,
    /// File offset where `buf` starts.
    buf_start: u64,
    /// `always` mode: keydir updates of accepted but not yet durable writes, in LSN order.
    pending: Vec<PendingUpdate>,
    /// Reused encoding buffer (`never` and `interval` modes).
    scratch: Vec<u8>,
}

struct PendingUpdate {
    key: Box<[u8]>,
    location: Location,
    kind: RecordKind,
}

#[derive(Default)]
struct SyncState {
    /// A leader is syncing a group.
    syncing: bool,
    /// Parked writers and the LSN each waits for.
    waiters: Vec<(u64, std::thread::Thread)>,
}

/// A write to encode: a single record or a batch.
enum WriteOp<'a> {
    Put(&'a [u8], &'a [u8]),
    Delete(&'a [u8]),
    /// A batch's operations (non-empty).
    Batch(&'a [BatchOp]),
}

impl WriteOp<'_> {
    /// The engine-level input checks every engine shares (see [`kv_domain::check_batch`]).
    fn validate(&self) -> EngineResult<()> {
        match self {
            WriteOp::Put(k, v) => check_record(k, v),
            WriteOp::Delete(k) => check_record(k, &[]),
            WriteOp::Batch(b) => check_batch(b),
        }
    }

    fn encoded_len(&self) -> u64 {
        (match self {
            WriteOp::Put(k, v) => record_len(k, v),
            WriteOp::Delete(k) => record_len(k, &[]),
            WriteOp::Batch(b) => {
                RECORD_HEADER_LEN
                    + 4
                    + b.iter()
                        .map(|op| match op {
                            BatchOp::Put { key, value } => record_len(key, value),
                            BatchOp::Delete { key } => record_len(key, &[]),
                        })
                        .sum::<usize>()
            }
        }) as u64
    }
}

impl FsEngine {
    /// Opens (creating if needed) the data directory `dir`: takes its lock, runs recovery (see
    /// [`crate::recovery`]), and starts the interval syncer if configured.
    pub fn open(dir: impl AsRef<Path>, opts: Options) -> EngineResult<Self> {
        let dir = dir.as_ref().to_path_buf();
        if opts.max_segment_bytes > Options::MAX_SEGMENT_BYTES
            || opts.max_segment_bytes < SEGMENT_HEADER_LEN as u64
        {
            return Err(EngineError::InvalidInput(format!(
                "max segment size {} is outside {}..={}",
                opts.max_segment_bytes,
                SEGMENT_HEADER_LEN,
                Options::MAX_SEGMENT_BYTES
            )));
        }
        let fs = opts.fs.clone();
        fs.create_dir_all(&dir)
            .map_err(|e| EngineError::io(format!("creating {}", dir.display()), e))?;
        let lock = crate::vfs::lock_data_dir(&*fs, &dir)?;
        let index = opts.index.build();
        let mut garbage = Garbage::default();
        let budget = FdBudget::new(opts.max_open_files);
        let rec = recover(&fs, &dir, &*index, &mut garbage, &budget)?;
        let mut segments = rec.segments;
        let newest = match (rec.newest, &rec.read_only) {
            // Read-only: never written to, so any segment serves as the writer's (idle) position.
            (None, Some(why)) => segments
                .values()
                .next_back()
                .map(|s| (s.clone(), 0))
                .ok_or_else(|| EngineError::DiskFull {
                    context: format!("opening an empty store read-only ({why})"),
                })
                .map(Some)?,
            (newest, _) => newest,
        };
        let mut read_only = rec.read_only;
        let (active, offset, disk_bytes) = match newest {
            Some((seg, len)) if len < opts.max_segment_bytes || read_only.is_some() => {
                (seg, len, rec.disk_bytes)
            }
            newest => {
                let id = if rec.max_id == 0 {
                    FIRST_SEGMENT_ID
                } else {
                    rec.max_id + 1
                };
                match (create_segment(&fs, &dir, id, rec.last_lsn, &budget), newest) {
                    (Ok(seg), _) => {
                        segments.insert(id, seg.clone());
                        (
                            seg,
                            SEGMENT_HEADER_LEN as u64,
                            rec.disk_bytes + SEGMENT_HEADER_LEN as u64,
                        )
                    }
                    // The newest segment is full and there is no room for the next one: serve reads.
                    (Err(EngineError::DiskFull { context }), Some((seg, len))) => {
                        let _ = fs.remove(&path_in(&dir, &segment_name(id)));
                        let why = format!("the disk is full: no room for a new segment ({context}); writes are refused until space is freed and the server restarted");
                        tracing::error!("opening read-only: {why}");
                        read_only = Some(why);
                        (seg, len, rec.disk_bytes)
                    }
                    (Err(e), _) => return Err(e),
                }
            }
        };
        // The manifest names exactly the table recovery built (it adopts or drops what recovery reconciled,
        // and a store from an older version gets its first one here); unchanged, it is not rewritten, so a
        // clean store on a full disk still opens.
        let ids: BTreeSet<u32> = segments.keys().copied().collect();
        if read_only.is_none() && rec.listed.as_ref() != Some(&ids) {
            match crate::manifest::store(&*fs, &dir, &ids) {
                Ok(()) => {}
                Err(EngineError::DiskFull { context }) => {
                    let why = format!("the disk is full: the manifest could not be updated ({context}); writes are refused until space is freed and the server restarted");
                    tracing::error!("opening read-only: {why}");
                    read_only = Some(why);
                }
                Err(e) => return Err(e),
            }
        }
        tracing::info!(
            dir = %dir.display(), segments = rec.report.segments, records = rec.report.records,
            keys = index.len(), last_lsn = rec.last_lsn, truncated_bytes = rec.report.truncated_bytes,
            "recovered data directory"
        );
        active.pin(true);
        let active_file = active
            .file()
            .map_err(|e| EngineError::io(format!("opening {}", active.name), e))?;
        let inner = Arc::new(Inner {
            budget,
            dir,
            index,
            segments: RwLock::new(segments),
            writer: Mutex::new(Writer {
                active,
                active_file,
                offset,
                last_lsn: rec.last_lsn,
                buf: Vec::new(),
                buf_start: offset,
                pending: Vec::new(),
                scratch: Vec::new(),
            }),
            sync: Mutex::new(SyncState::default()),
            durable_lsn: AtomicU64::new(rec.last_lsn),
            garbage_bytes: AtomicU64::new(garbage.total()),
            publish: Mutex::new(garbage),
            manifest: Mutex::new(()),
            read_only,
            compacting: Mutex::new(()),
            compactions: Mutex::new(CompactionStats::default()),
            compaction_progress: Mutex::new(None),
            poison: OnceLock::new(),
            acked_lsn: AtomicU64::new(rec.last_lsn),
            retain_after: AtomicU64::new(history::RETAIN_NOTHING),
            disk_bytes: AtomicU64::new(disk_bytes),
            fsyncs: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            group_sizes: Default::default(),
            group_writes: AtomicU64::new(0),
            report: rec.report,
            _lock: lock,
            opts,
        });
        let mut background = Vec::new();
        if let Durability::Interval { ms } = inner.opts.durability {
            background.extend(spawn_background(
                "kv-interval-sync",
                Arc::downgrade(&inner),
                Duration::from_millis(ms.max(1)),
                |inner| {
                    let target = inner.writer.lock().last_lsn;
                    if inner.poison.get().is_none() {
                        // A failure poisons the engine and is reported to writers; nothing to do here.
                        let _ = inner.sync_to(target);
                    }
                },
            ));
        }
        if let Some(auto) = inner.opts.auto_compaction {
            background.extend(spawn_background(
                "kv-compactor",
                Arc::downgrade(&inner),
                auto.check_every,
                move |inner| {
                    let garbage = inner.garbage_bytes.load(Ordering::Relaxed);
                    let disk = inner.disk_bytes.load(Ordering::Relaxed).max(1);
                    if inner.poison.get().is_none()
                        && inner.read_only.is_none()
                        && garbage >= auto.min_garbage_bytes
                        && garbage as f64 / disk as f64 >= auto.garbage_ratio
                    {
                        tracing::info!(garbage, disk, "garbage over the threshold: compacting");
                        if let Err(e) = compaction::compact(inner, false) {
                            tracing::warn!("automatic compaction failed: {e}");
                        }
                    }
                },
            ));
        }
        Ok(Self { inner, background })
    }

    /// Makes everything durable, stops the background threads and releases the directory lock, reporting
    /// any error.
    pub fn close(mut self) -> EngineResult<()> {
        self.stop_background();
        self.inner.poisoned()?;
        self.sync()
    }

    fn stop_background(&mut self) {
        for (stop, handle) in self.background.drain(..) {
            stop.store(true, Ordering::Release);
            handle.thread().unpark();
            let _ = handle.join();
        }
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// What recovery did at open.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.inner.report
    }

    /// Totals of the compactions run since open.
    pub fn compaction_stats(&self) -> CompactionStats {
        self.inner.compactions.lock().clone()
    }
}

impl Drop for FsEngine {
    fn drop(&mut self) {
        self.stop_background();
        if self.inner.poison.get().is_none() {
            let target = self.inner.writer.lock().last_lsn;
            if let Err(e) = self.inner.sync_to(target) {
                tracing::error!("final sync on close failed: {e}");
            }
        }
    }
}

/// Runs `task` every `every` on a named thread until the engine is dropped. The thread holds only a weak
/// reference, so it never keeps the engine alive.
fn spawn_background(
    name: &str,
    inner: Weak<Inner>,
    every: Duration,
    task: impl Fn(&Inner) + Send + 'static,
) -> Option<(Arc<AtomicBool>, JoinHandle<()>)> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let spawned = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            while !flag.load(Ordering::Acquire) {
                std::thread::park_timeout(every);
                if flag.load(Ordering::Acquire) {
                    return;
                }
                let Some(inner) = inner.upgrade() else { return };
                task(&inner);
            }
        });
    match spawned {
        Ok(handle) => Some((stop, handle)),
        Err(e) => {
            tracing::error!("cannot start the {name} thread: {e}");
            None
        }
    }
}

/// Creates segment `id` with its header, durably (file and directory entry).
fn create_segment(
    fs: &Arc<dyn crate::vfs::FileSystem>,
    dir: &Path,
    id: u32,
    base_lsn: u64,
    budget: &Arc<FdBudget>,
) -> EngineResult<Arc<Segment>> {
    let name = segment_name(id);
    let path = path_in(dir, &name);
    let file = fs
        .create(&path)
        .map_err(|e| EngineError::io(format!("creating {name}"), e))?;
    // IMPORTANT: header durable, then the directory entry, before any record is appended: recovery relies
    // on "a segment with a bad header holds no acknowledged record".
    file.write_all_at(&encode_segment_header(id, base_lsn), 0)
        .and_then(|_| file.sync_data())
        .and_then(|_| fs.sync_dir(dir))
        .map_err(|e| EngineError::io(format!("initialising {name}"), e))?;
    Ok(Segment::new(
        id,
        path,
        fs.clone(),
        budget.clone(),
        Some(file),
    ))
}

impl Inner {
    /// Fails if the engine was opened read-only (see [`Inner::read_only`]).
    fn writable(&self) -> EngineResult<()> {
        match &self.read_only {
            Some(why) => Err(EngineError::DiskFull {
                context: format!("writing (the store opened read-only: {why})"),
            }),
            None => Ok(()),
        }
    }

    /// Records a change of the segment set: rewrites the manifest to list the table plus `add` minus
    /// `remove`, then makes the same change to the table, both under the manifest lock so concurrent
    /// changes (a rotation during a compaction) never drop each other's entries. IMPORTANT: a segment is
    /// added only once its file and directory entry are durable, and removed before its file is deleted
    /// (see [`crate::manifest`]).
    fn update_segments(&self, add: Option<Arc<Segment>>, remove: &[u32]) -> EngineResult<()> {
        let _serialised = self.manifest.lock();
        let mut ids: BTreeSet<u32> = self.segments.read().keys().copied().collect();
        if let Some(seg) = &add {
            ids.insert(seg.id);
        }
        for id in remove {
            ids.remove(id);
        }
        crate::manifest::store(&*self.opts.fs, &self.dir, &ids)?;
        let mut table = self.segments.write();
        if let Some(seg) = add {
            table.insert(seg.id, seg);
        }
        for id in remove {
            if let Some(seg) = table.remove(id) {
                // No descriptor stays on a file about to be deleted (reads in flight keep theirs).
                seg.close();
            }
        }
        Ok(())
    }

    fn poisoned(&self) -> EngineResult<()> {
        match self.poison.get() {
            Some(reason) => Err(EngineError::Poisoned {
                reason: reason.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Records the first write-path failure; later ones are logged only.
    fn poison_with(&self, err: &EngineError) {
        let reason = err.to_string();
        if self.poison.set(reason.clone()).is_ok() {
            tracing::error!("engine poisoned, refusing writes until reopened: {reason}");
        }
    }

    fn io_failure(&self, context: String, e: std::io::Error) -> EngineError {
        let err = EngineError::io(context, e);
        self.poison_with(&err);
        err
    }

    /// Writes the group-commit buffer to the active file. Called with the writer lock held, so the bytes
    /// land before any rotation can seal the file.
    fn flush_buffer(&self, w: &mut Writer) -> EngineResult<()> {
        if w.buf.is_empty() {
            return Ok(());
        }
        let written = w.active_file.write_all_at(&w.buf, w.buf_start);
        w.buf.clear();
        written.map_err(|e| self.io_failure(format!("appending to {}", w.active.name), e))
    }

    /// Seals the active segment and starts the next one. Called with the writer lock held.
    fn rotate(&self, w: &mut Writer) -> EngineResult<()> {
        self.flush_buffer(w)?;
        // IMPORTANT: fsync the old segment before its successor exists, so only the newest can be torn.
        self.fsyncs.fetch_add(1, Ordering::Relaxed);
        w.active_file
            .sync_data()
            .map_err(|e| self.io_failure(format!("syncing {}", w.active.name), e))?;
        let seg = create_segment(
            &self.opts.fs,
            &self.dir,
            w.active.id + 1,
            w.last_lsn,
            &self.budget,
        )
        .inspect_err(|e| self.poison_with(e))?;
        seg.pin(true);
        let file = seg
            .file()
            .map_err(|e| self.io_failure(format!("opening {}", seg.name), e))?;
        self.fsyncs.fetch_add(2, Ordering::Relaxed);
        self.update_segments(Some(seg.clone()), &[])
            .inspect_err(|e| self.poison_with(e))?;
        self.disk_bytes
            .fetch_add(SEGMENT_HEADER_LEN as u64, Ordering::Relaxed);
        w.active.pin(false);
        w.active = seg;
        w.active_file = file;
        w.offset = SEGMENT_HEADER_LEN as u64;
        Ok(())
    }

    fn write(&self, op: WriteOp<'_>) -> EngineResult<Lsn> {
        self.write_at(op, None, true)
    }

    /// The highest LSN safe to ship to followers (see [`Engine::durable_lsn`]).
    fn shippable_lsn(&self) -> u64 {
        let acked = self.acked_lsn.load(Ordering::Acquire);
        match self.opts.durability {
            Durability::Never => acked,
            _ => self.durable_lsn.load(Ordering::Acquire).min(acked),
        }
    }

    /// Writes `op` with the LSN `at` (replication: the leader's LSN; must not be below the last one, and a
    /// batch must be strictly above it, the invariant recovery checks) or else the next LSN. With `wait`
    /// false, `always` mode returns before the group commit: the caller syncs (and until then the write
    /// is neither durable nor visible).
    fn write_at(&self, op: WriteOp<'_>, at: Option<u64>, wait: bool) -> EngineResult<Lsn> {
        op.validate()?;
        self.writable()?;
        let always = self.opts.durability == Durability::Always;
        let total = op.encoded_len();
        let mut w = self.writer.lock();
        self.poisoned()?;
        if w.offset + total > self.opts.max_segment_bytes && w.offset > SEGMENT_HEADER_LEN as u64 {
            self.rotate(&mut w)?;
        }
        let lsn = match at {
            None => w.last_lsn + 1,
            Some(at)
                if at > w.last_lsn || (at == w.last_lsn && !matches!(op, WriteOp::Batch(_))) =>
            {
                at
            }
            Some(at) => {
                return Err(EngineError::InvalidInput(format!(
                    "cannot write at LSN {at}: the log is already at LSN {}",
                    w.last_lsn
                )))
            }
        };
        let ts = self.opts.clock.now_micros();
        let base = w.offset;
        let seg_id = w.active.id;
        let location = |at: usize, len: usize| Location {
            segment: seg_id,
            offset: (base + at as u64) as u32,
            len: len as u32,
        };
        if always {
            // Group commit: append to the shared buffer; the sync leader writes and fsyncs it for everyone.
            if w.buf.is_empty() {
                w.buf_start = base;
            }
            encode_op(&op, lsn, ts, &mut w.buf);
            let w = &mut *w;
            for_each_record(&op, |at, len, kind, key| {
                w.pending.push(PendingUpdate {
                    key: key.into(),
                    location: location(at, len),
                    kind,
                });
            });
            w.offset += total;
            w.last_lsn = lsn;
        } else {
            let mut scratch = std::mem::take(&mut w.scratch);
            scratch.clear();
            encode_op(&op, lsn, ts, &mut scratch);
            let written = w.active_file.write_all_at(&scratch, base);
            w.scratch = scratch;
            written.map_err(|e| self.io_failure(format!("appending to {}", w.active.name), e))?;
            w.offset += total;
            w.last_lsn = lsn;
            // The bytes are in the file: publish under the writer lock, so keydir order is LSN order.
            let mut garbage = self.publish.lock();
            for_each_record(&op, |at, len, kind, key| {
                apply_update(
                    &*self.index,
                    &mut garbage,
                    to_update(kind, key, location(at, len)),
                );
            });
            self.garbage_bytes.store(garbage.total(), Ordering::Relaxed);
            drop(garbage);
            self.acked_lsn.store(lsn, Ordering::Release);
        }
        drop(w);
        self.disk_bytes.fetch_add(total, Ordering::Relaxed);
        if always && wait {
            self.sync_to(lsn)?;
        }
        self.writes.fetch_add(1, Ordering::Relaxed);
        Ok(Lsn(lsn))
    }

    /// Blocks until everything up to `lsn` is durable, leading a group sync if nobody else is.
    ///
    /// Waiters park individually and are woken by the leader only once their LSN is durable (plus one
    /// waiter to lead the next group), so finishing a group wakes its members in parallel instead of
    /// passing a mutex from one to the next.
    fn sync_to(&self, lsn: u64) -> EngineResult<()> {
        loop {
            if self.durable_lsn.load(Ordering::Acquire) >= lsn {
                return Ok(());
            }
            self.poisoned()?;
            let mut s = self.sync.lock();
            if self.durable_lsn.load(Ordering::Acquire) >= lsn {
                return Ok(());
            }
            self.poisoned()?;
            if s.syncing {
                s.waiters.push((lsn, std::thread::current()));
                drop(s);
                // Spurious wake-ups are fine: the loop re-checks.
                std::thread::park();
                continue;
            }
            s.syncing = true;
            drop(s);
            self.lead_group()?;
        }
    }

    /// Runs one group commit as the sync leader (`SyncState::syncing` is set by the caller) and wakes the
    /// waiters it made durable plus one to lead the next group.
    fn lead_group(&self) -> EngineResult<()> {
        {
            let result = self.sync_group();
            let mut s = self.sync.lock();
            s.syncing = false;
            let durable = self.durable_lsn.load(Ordering::Acquire);
            let mut wake = Vec::new();
            let mut next_leader = None;
            s.waiters.retain(|(l, t)| {
                if *l <= durable || result.is_err() {
                    wake.push(t.clone());
                    false
                } else if next_leader.is_none() {
                    next_leader = Some(t.clone());
                    false
                } else {
                    true
                }
            });
            drop(s);
            wake.into_iter().chain(next_leader).for_each(|t| t.unpark());
            result
        }
    }

    /// A group commit now, whatever the durable LSN says. Snapshot pages are all written at one LSN, so
    /// after the first page `sync_to(base)` would find the base already durable and neither fsync nor
    /// publish the later pages.
    fn sync_forced(&self) -> EngineResult<()> {
        loop {
            self.poisoned()?;
            let mut s = self.sync.lock();
            if s.syncing {
                // Another group is in flight (rare: a follower has one writer); let it finish.
                drop(s);
                std::thread::sleep(Duration::from_micros(50));
                continue;
            }
            s.syncing = true;
            drop(s);
            return self.lead_group();
        }
    }

    /// One group commit: write the buffer and fsync everything written so far, then publish the group's
    /// keydir updates in LSN order. Runs with `SyncState::syncing` set, so groups never overlap.
    fn sync_group(&self) -> EngineResult<()> {
        let (file, name, target, pending) = {
            let mut w = self.writer.lock();
            self.poisoned()?;
            self.flush_buffer(&mut w)?;
            let pending = std::mem::take(&mut w.pending);
            (
                w.active_file.clone(),
                w.active.name.clone(),
                w.last_lsn,
                pending,
            )
        };
        self.fsyncs.fetch_add(1, Ordering::Relaxed);
        // Records of a sealed segment were fsynced by `rotate`; the active file holds the rest.
        file.sync_data()
            .map_err(|e| self.io_failure(format!("syncing {name}"), e))?;
        let mut garbage = self.publish.lock();
        for u in &pending {
            apply_update(
                &*self.index,
                &mut garbage,
                to_update(u.kind, &u.key, u.location),
            );
        }
        self.garbage_bytes.store(garbage.total(), Ordering::Relaxed);
        drop(garbage);
        self.acked_lsn.fetch_max(target, Ordering::AcqRel);
        let before = self.durable_lsn.fetch_max(target, Ordering::AcqRel);
        let size = target.saturating_sub(before);
        if size > 0 {
            let bucket = GroupCommitStats::BOUNDS
                .iter()
                .position(|&b| size <= b)
                .unwrap_or(GroupCommitStats::BOUNDS.len());
            if let Some(counter) = self.group_sizes.get(bucket) {
                counter.fetch_add(1, Ordering::Relaxed);
            }
            self.group_writes.fetch_add(size, Ordering::Relaxed);
        }
        Ok(())
    }

    /// The value of `key`, starting from the location `loc` the keydir gave. If compaction retired that
    /// segment in between (the keydir then points at the compacted copy), looks the key up again.
    fn read_current(&self, key: &[u8], mut loc: Location) -> EngineResult<Option<Value>> {
        for _ in 0..8 {
            let seg = self.segments.read().get(&loc.segment).cloned();
            // A segment retired (and deleted) by compaction after we looked it up reads as missing too.
            let file = match seg.as_ref().map(|s| s.file()) {
                Some(Ok(file)) => Some(file),
                Some(Err(e)) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(EngineError::io(
                        format!("opening {}", segment_name(loc.segment)),
                        e,
                    ));
                }
                _ => None,
            };
            match (seg, file) {
                (Some(seg), Some(file)) => {
                    return self.read_value(&seg, &*file, key, loc).map(Some)
                }
                _ => match self.index.get(key) {
                    Some(now) if now != loc => loc = now,
                    Some(_) => break,
                    None => return Ok(None),
                },
            }
        }
        Err(EngineError::Corrupted {
            file: segment_name(loc.segment),
            offset: loc.offset as u64,
            reason: "keydir points into a missing segment".into(),
        })
    }

    /// Reads and verifies the record at `loc`, which the keydir says holds `key`'s latest value.
    fn read_value(
        &self,
        seg: &Segment,
        file: &dyn crate::vfs::FileHandle,
        key: &[u8],
        loc: Location,
    ) -> EngineResult<Value> {
        let mut buf = vec![0u8; loc.len as usize];
        file.read_exact_at(&mut buf, loc.offset as u64)
            .map_err(|e| EngineError::io(format!("reading {} at {}", seg.name, loc.offset), e))?;
        let corrupted = |reason: String| EngineError::Corrupted {
            file: seg.name.clone(),
            offset: loc.offset as u64,
            reason,
        };
        let rec = decode_record(&buf).map_err(|e| corrupted(e.to_string()))?;
        if rec.header.kind != RecordKind::Put || rec.key != key {
            return Err(corrupted(format!(
                "expected a put of key {:?}, found {rec:?}",
                Key::from(key)
            )));
        }
        let value_start = RECORD_HEADER_LEN + rec.key.len();
        buf.drain(..value_start);
        Ok(Value::from(buf))
    }
}

/// Encodes every record of `op` (a batch: its header, then its members) onto `out`.
fn encode_op(op: &WriteOp<'_>, lsn: u64, ts: u64, out: &mut Vec<u8>) {
    match op {
        WriteOp::Put(k, v) => {
            encode_record(out, RecordKind::Put, lsn, ts, k, v);
        }
        WriteOp::Delete(k) => {
            encode_record(out, RecordKind::Tombstone, lsn, ts, k, &[]);
        }
        WriteOp::Batch(b) => {
            let count = (b.len() as u32).to_le_bytes();
            encode_record(out, RecordKind::BatchHeader, lsn, ts, &[], &count);
            for member in b.iter() {
                let (kind, key, value) = member_parts(member);
                encode_record(out, kind, lsn, ts, key, value);
            }
        }
    }
}

fn member_parts(op: &BatchOp) -> (RecordKind, &[u8], &[u8]) {
    match op {
        BatchOp::Put { key, value } => (RecordKind::Put, key, value),
        BatchOp::Delete { key } => (RecordKind::Tombstone, key, &[]),
    }
}

/// Calls `f(offset, len, kind, key)` for every record [`encode_op`] writes, offsets relative to its start.
fn for_each_record<'a>(op: &WriteOp<'a>, mut f: impl FnMut(usize, usize, RecordKind, &'a [u8])) {
    match *op {
        WriteOp::Put(k, v) => f(0, record_len(k, v), RecordKind::Put, k),
        WriteOp::Delete(k) => f(0, record_len(k, &[]), RecordKind::Tombstone, k),
        WriteOp::Batch(b) => {
            let header = RECORD_HEADER_LEN + 4;
            f(0, header, RecordKind::BatchHeader, &[]);
            let mut at = header;
            for member in b.iter() {
                let (kind, key, value) = member_parts(member);
                let len = record_len(key, value);
                f(at, len, kind, key);
                at += len;
            }
        }
    }
}

fn to_update(kind: RecordKind, key: &[u8], loc: Location) -> Update<'_> {
    match kind {
        RecordKind::Put => Update::Put(key, loc),
        RecordKind::Tombstone => Update::Delete(key, loc),
        RecordKind::BatchHeader => Update::Framing(loc),
    }
}

impl Engine for FsEngine {
    fn put(&self, key: &[u8], value: &[u8]) -> EngineResult<Lsn> {
        self.inner.write(WriteOp::Put(key, value))
    }

    fn get(&self, key: &[u8]) -> EngineResult<Option<Value>> {
        match self.inner.index.get(key) {
            Some(loc) => self.inner.read_current(key, loc),
            None => Ok(None),
        }
    }

    fn delete(&self, key: &[u8]) -> EngineResult<Lsn> {
        self.inner.write(WriteOp::Delete(key))
    }

    fn write_batch(&self, batch: &WriteBatch) -> EngineResult<Lsn> {
        // An empty batch is refused (by `validate`): it would need an LSN of its own for nothing.
        self.inner.write(WriteOp::Batch(batch.ops()))
    }

    fn scan(&self, range: &KeyRange, limit: usize) -> EngineResult<Vec<Entry>> {
        self.inner
            .index
            .range(range, limit)
            .into_iter()
            .filter_map(|(key, loc)| match self.inner.read_current(&key, loc) {
                Ok(Some(value)) => Some(Ok(Entry { key, value })),
                Ok(None) => None,
                Err(e) => Some(Err(e)),
            })
            .collect()
    }

    fn scan_keys(&self, range: &KeyRange, limit: usize) -> EngineResult<Vec<Key>> {
        Ok(self
            .inner
            .index
            .range(range, limit)
            .into_iter()
            .map(|(k, _)| k)
            .collect())
    }

    fn last_lsn(&self) -> Lsn {
        Lsn(self.inner.acked_lsn.load(Ordering::Acquire))
    }

    fn sync(&self) -> EngineResult<()> {
        self.inner.poisoned()?;
        let target = self.inner.writer.lock().last_lsn;
        self.inner.sync_to(target)
    }

    /// Merges the sealed segments that hold garbage into new segments holding only live records, sealing
    /// the active segment first when it holds garbage too (see `compaction.rs`).
    fn compact(&self) -> EngineResult<CompactionStats> {
        compaction::compact(&self.inner, true)
    }

    fn status(&self) -> EngineStatus {
        let i = &self.inner;
        EngineStatus {
            last_lsn: self.last_lsn(),
            keys: i.index.len() as u64,
            segments: i.segments.read().len() as u64,
            disk_bytes: i.disk_bytes.load(Ordering::Relaxed),
            garbage_bytes: i.garbage_bytes.load(Ordering::Relaxed),
            durability: i.opts.durability,
            poisoned: i.poison.get().cloned(),
            read_only: i.read_only.clone(),
            fsyncs: i.fsyncs.load(Ordering::Relaxed),
            writes: i.writes.load(Ordering::Relaxed),
            recovery: i.report.clone(),
            compaction: i.compactions.lock().clone(),
            compacting: i.compacting.is_locked(),
            compaction_progress: i.compaction_progress.lock().clone(),
            group_commits: GroupCommitStats {
                counts: i
                    .group_sizes
                    .iter()
                    .map(|c| c.load(Ordering::Relaxed))
                    .collect(),
                writes: i.group_writes.load(Ordering::Relaxed),
            },
        }
    }
}

impl LogShipping for FsEngine {
    fn durable_lsn(&self) -> Lsn {
        Lsn(self.inner.shippable_lsn())
    }

    fn read_log(&self, from: &LogCursor, max_bytes: usize) -> EngineResult<LogRead> {
        history::read_log(&self.inner, from, max_bytes)
    }

    fn retain_log_after(&self, lsn: Option<Lsn>) {
        self.inner.retain_after.store(
            lsn.map_or(history::RETAIN_NOTHING, |l| l.0),
            Ordering::Release,
        );
    }

    fn apply_log(&self, entries: &[LogEntry]) -> EngineResult<Lsn> {
        let i = &self.inner;
        let mut last = None;
        // The applier is a follower's only writer, so the position read once stays current.
        let applied = i.writer.lock().last_lsn;
        let written = entries
            .iter()
            .filter(|e| e.lsn.0 > applied)
            .try_for_each(|e| {
                let op = match e.ops.as_slice() {
                    [BatchOp::Put { key, value }] => WriteOp::Put(key, value),
                    [BatchOp::Delete { key }] => WriteOp::Delete(key),
                    ops => WriteOp::Batch(ops),
                };
                // write_at refuses an LSN below the last one (or equal, for a batch), so concurrent
                // writers could not reorder it.
                last = Some(i.write_at(op, Some(e.lsn.0), false)?);
                Ok(())
            });
        // The entries before a refused one stay written: make them durable and visible like the others
        // (in `always` mode they would otherwise wait for the next group commit).
        let synced = last.map_or(Ok(()), |lsn| i.sync_to(lsn.0));
        written.and(synced)?;
        Ok(self.last_lsn())
    }

    fn install_snapshot_page(&self, at: Lsn, ops: &[BatchOp]) -> EngineResult<()> {
        let i = &self.inner;
        let written = ops.iter().try_for_each(|op| {
            let op = match op {
                BatchOp::Put { key, value } => WriteOp::Put(key, value),
                BatchOp::Delete { key } => WriteOp::Delete(key),
            };
            i.write_at(op, Some(at.0), false).map(drop)
        });
        // Also after a refused op: the ops before it stay written, durable and visible.
        let synced = i.sync_forced();
        written.and(synced)
    }
}
