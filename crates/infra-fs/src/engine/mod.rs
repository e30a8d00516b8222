//! [`FsEngine`]: the Bitcask-style engine over segment files.
//!
//! A Bitcask (<https://riak.com/assets/bitcask-intro.pdf>) appends every write to the active log segment and
//! keeps an in-memory keydir mapping each live key to the location of its latest record, so a read is one
//! keydir lookup and one positional read, and a range scan walks the ordered keydir. Differences from the
//! paper: the keydir is ordered (range scans); every record carries an LSN and a CRC32C; batches are atomic;
//! durability is a mode with group commit; compaction (the paper's merge) writes hint files beside its
//! outputs so start-up need not read their records.
//!
//! ## Write path
//! One writer at a time holds the writer lock: it assigns the next LSN, rotates the segment if needed and
//! encodes the record(s), all under the lock, so file order is LSN order.
//! - `never` / `interval`: the records are `pwrite`n in one call and the keydir is updated under the same
//!   lock; the write is acknowledged once it has reached the OS, so it survives a process crash.
//! - `always` (group commit): the records are appended to an in-memory group buffer and their keydir
//!   updates queued; the writer then waits until it is durable, parked (`put`) or with a callback
//!   (`submit`, the async path: no thread waits). The commit thread, under the writer lock, `pwrite`s the
//!   whole buffer (one call for the group) and takes the queue; then, without the lock, it `fdatasync`s
//!   once for everyone in the group, publishes the queued keydir updates in LSN order, and completes
//!   exactly the waiters now durable. Writers keep appending while it syncs, forming the next group. No
//!   reader ever sees a write before it is durable.
//!
//! ## Fail-stop
//! A failed `pwrite`, `fdatasync`, or rotation poisons the engine: the failure is recorded once, every
//! waiter of the failed group and every later write get an error, and nothing is ever retried and then
//! acknowledged (after a failed fsync the kernel may have dropped the dirty pages, so a retry that
//! succeeds proves nothing). Reads keep working. Reopening runs recovery, which trusts only the disk.
//!
//! ## Invariants
//! - `durable LSN <= acked LSN <= last accepted LSN`; in `never`/`interval` mode a write is acknowledged
//!   once `pwrite`n, before it is durable; in `always` mode acked and durable move together at the end of
//!   each group commit, and the keydir reflects exactly the acknowledged writes.
//! - The group buffer is written to the file under the writer lock, so a rotation never seals a segment
//!   while a group's bytes are still on their way to it.
//! - Segment ids only grow; the active segment is the one with the highest id.
//! - A sealed segment was fsynced before its successor was created (so recovery never sees it torn).
//!
//! ## Where each concern lives
//! - `open.rs`: opening (recovery wiring, the active segment, the manifest), closing, dropping;
//! - `write.rs`: the write path (validation, LSN assignment, encoding, `never`/`interval` publishing);
//! - `group_commit.rs`: the commit thread: every fsync a waiter asks for, and `always` mode's publishing;
//! - `segments.rs`: creating and rotating segments, and recording the segment set in the manifest;
//! - `read.rs`: the read path (keydir lookup to verified value);
//! - `fail_stop.rs`: poisoning and the read-only state;
//! - `background.rs`: the interval syncer and the automatic compactor;
//! - `compaction.rs`, `history.rs`: merging, and the log history replication reads;
//! - `kv.rs`, `shipping.rs`: the [`Engine`](kv_domain::Engine) and
//!   [`LogShipping`](kv_domain::LogShipping) implementations over all of the above.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;

use kv_domain::{CompactionStats, GroupCommitStats, Location, OrderedIndex, RecoveryReport};
use parking_lot::{Condvar, Mutex, RwLock};

use crate::codec::RecordKind;
use crate::garbage::Garbage;
use crate::options::Options;
use crate::segment::{FdBudget, Segment};
use crate::vfs::DirLock;

mod background;
mod compaction;
mod fail_stop;
mod frozen;
mod group_commit;
mod history;
mod kv;
mod open;
mod read;
mod segments;
mod shipping;
mod write;

/// The storage engine over a data directory. Cheap to share behind an `Arc`; dropping it stops the interval
/// syncer and makes everything written durable (best effort; call [`FsEngine::close`] to see errors).
pub struct FsEngine {
    inner: Arc<Inner>,
    /// Background threads (interval syncer, compactor) and their stop flags.
    background: Vec<(Arc<AtomicBool>, JoinHandle<()>)>,
    /// The commit thread (see `group_commit.rs`); stopped last, after the final sync.
    commit: Option<JoinHandle<()>>,
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
    /// The keydir. Mutated under the `publish` lock, by the writer (never/interval), the commit thread
    /// (always) or compaction's remapping.
    index: Box<dyn OrderedIndex>,
    /// Every segment by id. Readers clone an `Arc<Segment>` out and drop the guard before any I/O.
    segments: RwLock<BTreeMap<u32, Arc<Segment>>>,
    /// The single-writer state. A `parking_lot` mutex: held for one `pwrite` (plus a rotation now and then),
    /// never across an fsync of a group.
    writer: Mutex<Writer>,
    /// Group-commit coordination with the commit thread; separate from `writer` so that writers can append
    /// while a group syncs (see `group_commit.rs`).
    sync: Mutex<group_commit::SyncState>,
    /// Wakes the idle commit thread when a waiter arrives.
    commit_wake: Condvar,
    /// Everything up to this LSN is durable.
    durable_lsn: AtomicU64,
    /// Every accepted write up to this number ([`Writer::accepted`]) is durable and visible.
    durable_seq: AtomicU64,
    /// Serialises keydir mutations between the writer (`never`/`interval`), the commit thread (`always`) and
    /// compaction's remapping, so a remap can never overwrite a newer location; it guards the per-segment
    /// garbage ledger, which every keydir mutation updates (`garbage_bytes` mirrors its total).
    publish: Mutex<Garbage>,
    /// Serialises manifest rewrites with the segment-table change each one records (see `update_segments`).
    manifest: Mutex<()>,
    /// Set at open when the disk was too full to repair the log: writes fail with `DiskFull`.
    read_only: Option<String>,
    /// Held while a compaction runs: at most one at a time.
    compacting: Mutex<()>,
    /// Live [`kv_domain::FrozenView`]s: compaction retires no segment while one exists (see `frozen.rs`).
    frozen_views: AtomicUsize,
    /// Set when an automatic compaction was refused for a live view, cleared when one runs: no new view is
    /// taken meanwhile, so back-to-back snapshots cannot keep compaction off for good.
    compaction_waiting: AtomicBool,
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
    /// Times the automatic compactor has checked the garbage threshold (see `background.rs`).
    compactor_ticks: AtomicU64,
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
    /// How many writes were accepted since open: what durability waiters wait for (see `group_commit.rs`).
    accepted: u64,
    /// `never`/`interval`: bytes appended since the last background sync request.
    unsynced: u64,
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
