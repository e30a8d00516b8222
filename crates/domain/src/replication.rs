//! Entities of log shipping: what a leader reads from its log and a follower applies.
//!
//! Followers store the leader's LSNs unchanged, so a follower's last LSN *is* its applied position, made
//! durable atomically with the data it describes (no side file that could disagree with the log).

use crate::{BatchOp, Lsn};

/// One write of the leader's log: its LSN and its operations (one for a put or a delete; a batch's members
/// for a batch, applied atomically).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogEntry {
    /// The leader's LSN of the write.
    pub lsn: Lsn,
    /// The operations, in order.
    pub ops: Vec<BatchOp>,
}

impl LogEntry {
    /// Bytes of keys and values (a size estimate for batching).
    pub fn payload_bytes(&self) -> usize {
        self.ops
            .iter()
            .map(|op| match op {
                BatchOp::Put { key, value } => key.len() + value.len(),
                BatchOp::Delete { key } => key.len(),
            })
            .sum()
    }
}

/// Where a log reader is: every entry up to `after` has been read. The position is an engine-private hint
/// that lets the next read continue without searching; it is ignored when no longer valid.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogCursor {
    /// The last LSN read.
    pub after: Lsn,
    /// Engine-specific resume position (for the file engine: segment id and byte offset).
    pub position: Option<(u32, u64)>,
}

impl LogCursor {
    /// A cursor that starts after `lsn`, with no position hint.
    pub fn after(lsn: Lsn) -> Self {
        Self {
            after: lsn,
            position: None,
        }
    }
}

/// The answer of [`crate::LogShipping::read_log`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogRead {
    /// The entries after the cursor (possibly none yet), and the cursor to continue from.
    Entries {
        /// In LSN order, all durable.
        entries: Vec<LogEntry>,
        /// Pass this to the next read.
        next: LogCursor,
    },
    /// The log no longer holds the entry after the cursor (compacted away): the reader needs a snapshot.
    Gone {
        /// The oldest LSN still readable, when known.
        oldest: Lsn,
    },
}

/// What a node remembers about replication beside its log (the applied LSN is the log's own last LSN).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplicaMeta {
    /// The id of the history this node's log belongs to: a leader creates one for a new data directory;
    /// a follower adopts its leader's with its first snapshot. `None`: a follower that never synced.
    pub history: Option<String>,
    /// A snapshot at this base LSN was started and not finished: the contents are a mix until a snapshot
    /// completes, and the next catch-up must be a snapshot.
    pub snapshot_base: Option<Lsn>,
}

/// Durable storage of [`ReplicaMeta`] (a small file next to the log). `store` is atomic and durable.
pub trait MetaStore: Send + Sync {
    /// The stored metadata (the default when none was ever stored).
    fn load(&self) -> crate::EngineResult<ReplicaMeta>;
    /// Replaces the stored metadata; durable when this returns.
    fn store(&self, meta: &ReplicaMeta) -> crate::EngineResult<()>;
}
