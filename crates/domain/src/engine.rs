//! The storage contract.

use std::ops::Bound;

use crate::{
    BatchOp, CompactionStats, EngineError, EngineResult, EngineStatus, Entry, Key, Lsn, Value,
    WriteBatch,
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
    /// Whether no key can lie within the range (its start is above its end, or they are equal and one of
    /// them is excluded). Scanning such a range returns nothing; it is not an error.
    pub fn is_empty(&self) -> bool {
        match (&self.start, &self.end) {
            (Bound::Included(s), Bound::Included(e)) => s > e,
            (Bound::Included(s) | Bound::Excluded(s), Bound::Excluded(e))
            | (Bound::Excluded(s), Bound::Included(e)) => s >= e,
            _ => false,
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

/// Longest key any engine accepts, in bytes (the configurable service limit of `kv-app` is far lower).
pub const MAX_KEY_LEN: usize = 1 << 20;
/// Longest value any engine accepts, in bytes (the configurable service limit of `kv-app` is lower).
pub const MAX_VALUE_LEN: usize = 1 << 30;
/// Largest [`write_cost`] of one batch: what one segment of the file engine can address with its `u32`
/// record offsets, after its header (a larger batch would need offsets past `u32::MAX`).
pub const MAX_WRITE_COST: u64 = (1 << 32) - 64;
/// What each operation of a batch costs on top of its key and value bytes: the framing of one record in
/// the file engine's log (its 29-byte record header).
pub const OP_COST: u64 = 29;
/// What a batch costs on top of its operations: the file engine's batch-header record (a record header
/// and the member count).
pub const BATCH_COST: u64 = 33;

/// The size one batch is charged for: every operation's key and value bytes plus [`OP_COST`], plus
/// [`BATCH_COST`]. For the file engine it is exactly the batch's encoded size.
pub fn write_cost(ops: &[BatchOp]) -> u64 {
    ops.iter()
        .map(|op| match op {
            BatchOp::Put { key, value } => key.len() + value.len(),
            BatchOp::Delete { key } => key.len(),
        })
        .map(|bytes| bytes as u64 + OP_COST)
        .sum::<u64>()
        + BATCH_COST
}

/// The engine-level check of one record, shared by every [`Engine`] so they refuse exactly the same
/// input: the key is non-empty and at most [`MAX_KEY_LEN`] bytes, the value at most [`MAX_VALUE_LEN`].
pub fn check_record(key: &[u8], value: &[u8]) -> EngineResult<()> {
    if key.is_empty() {
        return Err(EngineError::InvalidInput("key must not be empty".into()));
    }
    if key.len() > MAX_KEY_LEN || value.len() > MAX_VALUE_LEN {
        return Err(EngineError::InvalidInput(format!(
            "record too large for the log format (key {} bytes, max {MAX_KEY_LEN}; value {} bytes, max {MAX_VALUE_LEN})",
            key.len(),
            value.len()
        )));
    }
    Ok(())
}

/// The engine-level check of one batch (and of one replicated log entry of several operations): at
/// least one operation, each passing [`check_record`], and a [`write_cost`] of at most
/// [`MAX_WRITE_COST`].
pub fn check_batch(ops: &[BatchOp]) -> EngineResult<()> {
    if ops.is_empty() {
        // It would take an LSN for nothing (and be a batch header that recovery rejects).
        return Err(EngineError::InvalidInput(
            "a batch needs at least one operation".into(),
        ));
    }
    ops.iter().try_for_each(|op| match op {
        BatchOp::Put { key, value } => check_record(key, value),
        BatchOp::Delete { key } => check_record(key, &[]),
    })?;
    let cost = write_cost(ops);
    if cost > MAX_WRITE_COST {
        return Err(EngineError::InvalidInput(format!(
            "batch too large: {cost} bytes with framing, max {MAX_WRITE_COST}"
        )));
    }
    Ok(())
}

/// One write for [`Engine::submit`].
#[derive(Clone, Copy, Debug)]
pub enum Write<'a> {
    /// [`Engine::put`].
    Put {
        /// The key.
        key: &'a [u8],
        /// The value.
        value: &'a [u8],
    },
    /// [`Engine::delete`].
    Delete {
        /// The key.
        key: &'a [u8],
    },
    /// [`Engine::write_batch`].
    Batch(&'a WriteBatch),
}

/// Called exactly once with the outcome of a [`Engine::submit`]ted write. It may run on an engine thread
/// while other writes wait for it, so it must not block (send on a channel, advance a counter) nor call
/// the same engine's write or sync methods (which would wait for that thread), and must not panic.
pub type WriteDone = Box<dyn FnOnce(EngineResult<Lsn>) + Send>;

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
/// **Validation:** every engine refuses the same input with [`EngineError::InvalidInput`], before writing
/// anything: an empty key, a key or value over [`MAX_KEY_LEN`] / [`MAX_VALUE_LEN`], and a batch that
/// fails [`check_batch`]. A scan of an empty range ([`KeyRange::is_empty`]) returns no entry.
///
/// The trait is dyn-compatible: the layers above hold an `Arc<dyn Engine>`. Methods block (they do file
/// I/O), so async callers run them on a blocking thread, or write through [`Engine::submit`]. Replication needs more of an engine: see
/// [`crate::LogShipping`].
pub trait Engine: Send + Sync {
    /// Sets `key` to `value`, returning the write's LSN.
    fn put(&self, key: &[u8], value: &[u8]) -> EngineResult<Lsn>;

    /// The write without a thread waiting for it: accepts `write` (or refuses it) now and calls `done`
    /// with the outcome exactly when the blocking method would have returned it, durable and visible
    /// under the same contract. An engine whose writes wait for an fsync calls `done` later, from its own
    /// thread, so an async caller awaits a channel instead of holding a blocking thread per write. The
    /// default runs the blocking method and calls `done` before returning.
    fn submit(&self, write: Write<'_>, done: WriteDone) {
        done(match write {
            Write::Put { key, value } => self.put(key, value),
            Write::Delete { key } => self.delete(key),
            Write::Batch(batch) => self.write_batch(batch),
        })
    }

    /// The latest value of `key`, or `None` if it is absent or deleted.
    fn get(&self, key: &[u8]) -> EngineResult<Option<Value>>;

    /// Deletes `key` by writing a tombstone; deleting an absent key succeeds (idempotent) and takes an LSN
    /// like any other write.
    fn delete(&self, key: &[u8]) -> EngineResult<Lsn>;

    /// Applies every operation of `batch` atomically under one LSN: after any crash either all of them are
    /// visible or none is. A batch failing [`check_batch`] (an empty one, say) is refused with
    /// [`EngineError::InvalidInput`]: an empty one would take an LSN for no write (or, answered with the
    /// last LSN, give two writes one LSN).
    fn write_batch(&self, batch: &WriteBatch) -> EngineResult<Lsn>;

    /// Up to `limit` live entries with keys in `range`, in ascending byte order of the key; fewer than
    /// `limit` only when the range holds no more. Memory is bounded by `limit`; to page, call again with
    /// [`KeyRange::after`] the last key returned.
    fn scan(&self, range: &KeyRange, limit: usize) -> EngineResult<Vec<Entry>>;

    /// Up to `limit` live keys in `range`, ascending, without reading their values (memory bounded by the
    /// keys alone, whatever the value sizes); fewer than `limit` only when the range holds no more.
    fn scan_keys(&self, range: &KeyRange, limit: usize) -> EngineResult<Vec<Key>>;

    /// LSN of the latest acknowledged write (`Lsn::ZERO` for a new store).
    fn last_lsn(&self) -> Lsn;

    /// Makes every acknowledged write durable (fsync), whatever the durability mode.
    fn sync(&self) -> EngineResult<()>;

    /// Counters and state for status endpoints and metrics.
    fn status(&self) -> EngineStatus;

    /// Reclaims the space of overwritten and deleted records without changing any contents; reads and
    /// writes continue meanwhile. Fails with [`EngineError::Busy`] while another compaction runs.
    fn compact(&self) -> EngineResult<CompactionStats>;
}
