//! The storage contract.

use std::ops::Bound;

use crate::{
    BatchOp, CompactionStats, EngineResult, EngineStatus, Entry, Key, LogCursor, LogEntry, LogRead,
    Lsn, Value, WriteBatch,
};

/// Inclusive/exclusive/unbounded limits of a range scan, over raw key bytes.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct KeyRange {
    /// Lower bound.
    pub start: Bound<Key>,
    /// Upper bound.
    pub end: Bound<Key>,
}

impl KeyRange {
    /// `start <= k <= end`, the semantics of the HTTP `readrange`.
    pub fn inclusive(start: impl Into<Key>, end: impl Into<Key>) -> Self {
        Self {
            start: Bound::Included(start.into()),
            end: Bound::Included(end.into()),
        }
    }
    /// Every key.
    pub fn all() -> Self {
        Self {
            start: Bound::Unbounded,
            end: Bound::Unbounded,
        }
    }
    /// Whether `key` lies within the range.
    pub fn contains(&self, key: &[u8]) -> bool {
        let above = match &self.start {
            Bound::Included(s) => key >= s.as_bytes(),
            Bound::Excluded(s) => key > s.as_bytes(),
            Bound::Unbounded => true,
        };
        let below = match &self.end {
            Bound::Included(e) => key <= e.as_bytes(),
            Bound::Excluded(e) => key < e.as_bytes(),
            Bound::Unbounded => true,
        };
        above && below
    }
    /// The same range, continued strictly after `key` (for paging: pass the last key of the previous page).
    pub fn after(&self, key: &[u8]) -> Self {
        Self {
            start: Bound::Excluded(Key::from(key)),
            end: self.end.clone(),
        }
    }
}

/// A persistent, ordered key/value store.
///
/// **Durability contract:** a write is durable once its method returns `Ok` when the engine runs with
/// [`crate::Durability::Always`]; with weaker modes it is durable only after a later [`Engine::sync`]
/// returns `Ok`.
///
/// **Visibility:** a write is visible to `get`/`scan` no later than when its method returns, and never
/// before it is durable in `Always` mode (no reader sees a write that a crash could still take back).
///
/// **Fail-stop:** once a write or sync fails with an I/O error, every later write fails with
/// [`crate::EngineError::Poisoned`] until the engine is reopened; reads keep working.
///
/// The trait is dyn-compatible: the layers above hold an `Arc<dyn Engine>`. Methods block (they do file
/// I/O), so async callers run them on a blocking thread.
pub trait Engine: Send + Sync {
    /// Sets `key` to `value`, returning the write's LSN.
    fn put(&self, key: &[u8], value: &[u8]) -> EngineResult<Lsn>;

    /// The latest value of `key`, or `None` if it is absent or deleted.
    fn get(&self, key: &[u8]) -> EngineResult<Option<Value>>;

    /// Deletes `key` by writing a tombstone; deleting an absent key succeeds (idempotent).
    fn delete(&self, key: &[u8]) -> EngineResult<Lsn>;

    /// Applies every operation of `batch` atomically under one LSN: after any crash either all of them are
    /// visible or none is. An empty batch is refused with [`crate::EngineError::InvalidInput`]: it would take an
    /// LSN for no write (or, answered with the last LSN, give two writes one LSN).
    fn write_batch(&self, batch: &WriteBatch) -> EngineResult<Lsn>;

    /// Up to `limit` live entries with keys in `range`, in ascending byte order of the key. Memory is bounded
    /// by `limit`; to page, call again with [`KeyRange::after`] the last key returned.
    fn scan(&self, range: &KeyRange, limit: usize) -> EngineResult<Vec<Entry>>;

    /// Up to `limit` live keys in `range`, ascending, without reading their values (memory bounded by the
    /// keys alone, whatever the value sizes).
    fn scan_keys(&self, range: &KeyRange, limit: usize) -> EngineResult<Vec<Key>>;

    /// LSN of the latest acknowledged write (`Lsn::ZERO` for a new store).
    fn last_lsn(&self) -> Lsn;

    /// Makes every acknowledged write durable (fsync), whatever the durability mode.
    fn sync(&self) -> EngineResult<()>;

    /// Counters and state for status endpoints and metrics.
    fn status(&self) -> EngineStatus;

    /// Reclaims the space of overwritten and deleted records without changing any contents; reads and
    /// writes continue meanwhile. Fails with `InvalidInput` while another compaction runs.
    fn compact(&self) -> EngineResult<CompactionStats>;

    // ----- Log shipping (replication). -----

    /// The highest LSN that is safe to ship to followers: durable on disk (`always`, `interval`), or
    /// written to the OS (`never`, which promises nothing more). Never above [`Engine::last_lsn`].
    fn durable_lsn(&self) -> Lsn;

    /// Entries with LSNs in `(from.after, durable_lsn]`, in LSN order, about `max_bytes` of payload at most
    /// (at least one entry when any is available). [`LogRead::Gone`] when the entry after `from.after` is no
    /// longer in the log (compaction dropped that history): the reader must take a snapshot.
    fn read_log(&self, from: &LogCursor, max_bytes: usize) -> EngineResult<LogRead>;

    /// Asks compaction to keep the log history of every LSN above `lsn` readable by [`Engine::read_log`]
    /// (`None`: no reader needs history). Followers being served pin their position with this.
    fn retain_log_after(&self, lsn: Option<Lsn>);

    /// Follower side: applies leader log entries with their own LSNs, skipping every entry at or below
    /// [`Engine::last_lsn`] (so re-delivery is harmless), each entry atomically. Everything applied is
    /// durable when this returns; returns the new last LSN.
    fn apply_log(&self, entries: &[LogEntry]) -> EngineResult<Lsn>;

    /// Follower side, snapshot installation: writes each op as its own record at LSN `at`, which must be at
    /// least [`Engine::last_lsn`] (every page of one snapshot shares the snapshot's base LSN). Durable when
    /// this returns. Pages are not atomic; the caller records that a snapshot is in progress.
    fn install_snapshot_page(&self, at: Lsn, ops: &[BatchOp]) -> EngineResult<()>;
}
