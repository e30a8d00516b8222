//! The log-shipping contract: what replication needs of an engine beyond the key/value contract.

use crate::{BatchOp, Engine, EngineResult, Entry, LogCursor, LogEntry, LogRead, Lsn};

/// An [`Engine`] whose log can be read back by a leader and applied by a follower.
///
/// A supertrait of [`Engine`], so an `Arc<dyn LogShipping>` upcasts to the `Arc<dyn Engine>` that the KV
/// use cases take: replication holds the one, everything else the other.
///
/// **Validation:** the log-applying methods refuse, with [`crate::EngineError::InvalidInput`], what the
/// KV methods refuse (see [`crate::check_record`] and [`crate::check_batch`]: an entry with no operation is
/// an empty batch), and an LSN below the log's position. They apply entries one at a time and stop at the
/// first refusal: the entries before it stay written (in `always` mode they are published by the next
/// sync or write).
pub trait LogShipping: Engine {
    /// The highest LSN that is safe to ship to followers: durable on disk (`always`, `interval`), or
    /// written to the OS (`never`, which promises nothing more). Never above [`Engine::last_lsn`].
    fn durable_lsn(&self) -> Lsn;

    /// Entries with LSNs in `(from.after, durable_lsn]`, in LSN order, about `max_bytes` of payload at most
    /// (at least one entry when any is available). [`LogRead::Gone`] when the entry after `from.after` is no
    /// longer in the log (compaction dropped that history): the reader must take a snapshot.
    fn read_log(&self, from: &LogCursor, max_bytes: usize) -> EngineResult<LogRead>;

    /// Asks compaction to keep the log history of every LSN above `lsn` readable by
    /// [`LogShipping::read_log`] (`None`: no reader needs history). Followers being served pin their
    /// position with this.
    fn retain_log_after(&self, lsn: Option<Lsn>);

    /// Follower side: applies leader log entries with their own LSNs, skipping every entry at or below
    /// the [`Engine::last_lsn`] seen on entry (so re-delivery is harmless), each entry atomically. An
    /// entry of one operation is written as a single record and may carry the LSN of the entry before it
    /// in the same call; an entry of several must be strictly above it. LSNs may skip (gaps are not
    /// checked). Everything applied is durable when this returns; returns the new last LSN.
    fn apply_log(&self, entries: &[LogEntry]) -> EngineResult<Lsn>;

    /// As [`LogShipping::apply_log`], but it returns once the entries are visible to reads, without
    /// waiting for them to be durable: they become durable with the engine's next sync (its own
    /// background syncs, or [`Engine::sync`]). In `always` mode, where a write becomes visible only with
    /// its group's fsync, this waits for it like `apply_log`.
    ///
    /// For a caller that holds the entries durably elsewhere and applies them again after a crash: a
    /// Raft state machine, whose log is the durable record (and which syncs the engine before it records
    /// what it has applied).
    fn apply_log_unsynced(&self, entries: &[LogEntry]) -> EngineResult<Lsn> {
        self.apply_log(entries)
    }

    /// Follower side, snapshot installation: writes each op as its own record at LSN `at`, which must be at
    /// least [`Engine::last_lsn`] (every page of one snapshot shares the snapshot's base LSN). Durable when
    /// this returns. Pages are not atomic; the caller records that a snapshot is in progress. A page with
    /// no op writes nothing and leaves the last LSN where it was.
    fn install_snapshot_page(&self, at: Lsn, ops: &[BatchOp]) -> EngineResult<()>;

    /// A [`FrozenView`] of the engine's contents as they are now: writes made after it was taken do not
    /// change what it reads. Taking it costs a copy of the key index (every live key with where its
    /// value is, not the values), so a Raft snapshot holds its writers back for that copy only, not for
    /// the whole read of the store.
    ///
    /// Exact only if no write is in flight while it is taken: the caller serialises it with its own
    /// writes (the Raft state machine, the only writer of a cluster member's engine, takes it between
    /// two applies). `Ok(None)` when it cannot be taken now (the file engine while a compaction runs or
    /// waits to run); the caller tries again later, or reads the engine itself with its writes held back.
    fn freeze(&self) -> EngineResult<Option<Box<dyn FrozenView>>> {
        Ok(None)
    }
}

/// The contents of an engine at one moment (see [`LogShipping::freeze`]), read in key order, page by
/// page, while the engine goes on taking writes.
pub trait FrozenView: Send {
    /// The next entries, at most `max` (at least 1), in key order: every key live at the moment the
    /// view was taken, with the value it had then. Empty once every entry has been read.
    fn next_page(&mut self, max: usize) -> EngineResult<Vec<Entry>>;
}
