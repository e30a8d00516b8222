//! Entities: plain data with no behaviour beyond construction and inspection.

use std::fmt;
use std::ops::Deref;

/// A key: a non-empty byte string. Emptiness and size limits are enforced where a key enters a store
/// (every engine's [`crate::check_record`], and the stricter configured limits of `kv-app`), not by the
/// type, so that decoders can build one from whatever bytes they read and check them after.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Key(Vec<u8>);

/// A value: any byte string, including the empty one (an empty value is *present*, unlike in the Go system).
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Value(Vec<u8>);

macro_rules! bytes_newtype {
    ($t:ident) => {
        impl $t {
            /// Wraps the given bytes.
            pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
                Self(bytes.into())
            }
            /// The bytes.
            pub fn as_bytes(&self) -> &[u8] {
                &self.0
            }
            /// Unwraps the bytes.
            pub fn into_bytes(self) -> Vec<u8> {
                self.0
            }
        }
        impl Deref for $t {
            type Target = [u8];
            fn deref(&self) -> &[u8] {
                &self.0
            }
        }
        impl AsRef<[u8]> for $t {
            fn as_ref(&self) -> &[u8] {
                &self.0
            }
        }
        impl From<Vec<u8>> for $t {
            fn from(v: Vec<u8>) -> Self {
                Self(v)
            }
        }
        impl From<&[u8]> for $t {
            fn from(v: &[u8]) -> Self {
                Self(v.to_vec())
            }
        }
        impl From<String> for $t {
            fn from(v: String) -> Self {
                Self(v.into_bytes())
            }
        }
        impl From<&str> for $t {
            fn from(v: &str) -> Self {
                Self(v.as_bytes().to_vec())
            }
        }
        impl fmt::Debug for $t {
            /// Printable ASCII as is, everything else escaped, so logs and test failures stay readable.
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "\"{}\"", self.0.escape_ascii())
            }
        }
    };
}
bytes_newtype!(Key);

/// Keys order and hash exactly like their bytes, so maps keyed by `Key` can be queried with `&[u8]`.
impl std::borrow::Borrow<[u8]> for Key {
    fn borrow(&self) -> &[u8] {
        &self.0
    }
}
bytes_newtype!(Value);

/// A log sequence number. Strictly increasing on the node that accepted the write; stored in every record,
/// so it survives restarts (and, later, compaction). `Lsn(0)` means "nothing written yet".
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Debug)]
pub struct Lsn(pub u64);

impl Lsn {
    /// The LSN before any write.
    pub const ZERO: Lsn = Lsn(0);
    /// The LSN that follows this one.
    pub fn next(self) -> Lsn {
        Lsn(self.0 + 1)
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Where the record holding a key's latest value lives: 12 bytes, kept for every live key in the keydir, so
/// it is deliberately small (segments are capped below 4 GiB so that a `u32` offset suffices).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct Location {
    /// The segment file's id.
    pub segment: u32,
    /// Byte offset of the record's first byte within the segment file.
    pub offset: u32,
    /// Length in bytes of the whole record (header, key and value).
    pub len: u32,
}

/// One operation of a [`WriteBatch`].
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum BatchOp {
    /// Set `key` to `value`.
    Put { key: Key, value: Value },
    /// Remove `key` (a tombstone).
    Delete { key: Key },
}

impl BatchOp {
    /// The key this operation writes.
    pub fn key(&self) -> &Key {
        match self {
            BatchOp::Put { key, .. } | BatchOp::Delete { key } => key,
        }
    }
}

/// An atomic group of writes: after any crash either every operation is visible or none is. Operations apply
/// in order, so a later operation on the same key wins.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct WriteBatch {
    ops: Vec<BatchOp>,
}

impl WriteBatch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }
    /// Adds a put.
    pub fn put(&mut self, key: impl Into<Key>, value: impl Into<Value>) -> &mut Self {
        self.ops.push(BatchOp::Put {
            key: key.into(),
            value: value.into(),
        });
        self
    }
    /// Adds a delete.
    pub fn delete(&mut self, key: impl Into<Key>) -> &mut Self {
        self.ops.push(BatchOp::Delete { key: key.into() });
        self
    }
    /// The operations, in order.
    pub fn ops(&self) -> &[BatchOp] {
        &self.ops
    }
    /// Number of operations.
    pub fn len(&self) -> usize {
        self.ops.len()
    }
    /// Whether the batch holds no operation.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

impl From<Vec<BatchOp>> for WriteBatch {
    fn from(ops: Vec<BatchOp>) -> Self {
        Self { ops }
    }
}

/// A key with its value, as returned by range scans.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Entry {
    /// The key.
    pub key: Key,
    /// Its latest value.
    pub value: Value,
}

/// When a write reaches stable storage, relative to its acknowledgement.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub enum Durability {
    /// `fdatasync` before the write is acknowledged (default). Survives process crash and power loss.
    /// Concurrent writers share one `fdatasync` (group commit).
    #[default]
    Always,
    /// `fdatasync` every `ms` milliseconds. A process crash loses nothing that reached the OS; power loss may
    /// lose up to the last interval of acknowledged writes.
    Interval { ms: u64 },
    /// Never wait for an `fdatasync`: the file engine syncs on rotation, close and an explicit sync, and in
    /// the background once per MiB written (so a rotation has little left to flush), but acknowledges a
    /// write once its one `pwrite` has handed it to the OS (the engine buffers nothing), so a process crash
    /// loses nothing; power loss may lose anything not yet synced.
    Never,
}

impl fmt::Display for Durability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Durability::Always => write!(f, "always"),
            Durability::Interval { ms } => write!(f, "interval({ms}ms)"),
            Durability::Never => write!(f, "never"),
        }
    }
}

/// What recovery did when the engine was opened.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct RecoveryReport {
    /// Segments read.
    pub segments: usize,
    /// Valid records replayed.
    pub records: u64,
    /// Sealed segments loaded from their hint files instead of being scanned.
    pub hinted_segments: usize,
    /// Bytes cut from the newest segment's torn or invalid tail (0 when it was clean).
    pub truncated_bytes: u64,
    /// Where the cut bytes were saved for forensics, if any were cut.
    pub truncated_copy: Option<String>,
    /// Human-readable notes (what was cut and why, leftovers removed).
    pub notes: Vec<String>,
}

/// A snapshot of the engine's state for status endpoints and metrics.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct EngineStatus {
    /// LSN of the latest acknowledged write.
    pub last_lsn: Lsn,
    /// Live keys.
    pub keys: u64,
    /// Segment files.
    pub segments: u64,
    /// Bytes in all segment files.
    pub disk_bytes: u64,
    /// Bytes of records that are no longer the latest version of their key (overwritten values, tombstones).
    pub garbage_bytes: u64,
    /// The configured durability.
    pub durability: Durability,
    /// Why the engine stopped accepting writes, if it did (fail-stop after an I/O error).
    pub poisoned: Option<String>,
    /// Why the engine was opened read-only, if it was (the disk was full at open, so recovery could not
    /// repair the log's tail): reads are served, writes fail with [`crate::EngineError::DiskFull`] until a
    /// restart with free space.
    pub read_only: Option<String>,
    /// `fdatasync` calls made on segment files since open.
    pub fsyncs: u64,
    /// Writes acknowledged since open.
    pub writes: u64,
    /// What recovery did at open.
    pub recovery: RecoveryReport,
    /// How many writes each group commit made durable with one `fdatasync` (`always` mode).
    pub group_commits: GroupCommitStats,
    /// Totals of the compactions finished since open.
    pub compaction: CompactionStats,
    /// Whether a compaction is running now.
    pub compacting: bool,
    /// How far the running compaction has got (inputs' total bytes, outputs and records so far).
    pub compaction_progress: Option<CompactionStats>,
}

/// What compaction did: one run, or the totals since open.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompactionStats {
    /// Compactions finished.
    pub runs: u64,
    /// Input segments merged.
    pub input_segments: u64,
    /// Output segments written.
    pub output_segments: u64,
    /// Bytes of the inputs.
    pub input_bytes: u64,
    /// Bytes of the outputs.
    pub output_bytes: u64,
    /// Live records copied.
    pub records_copied: u64,
    /// Milliseconds spent.
    pub millis: u64,
}

/// A histogram of group-commit sizes: `counts[i]` groups held at most `GroupCommitStats::BOUNDS[i]` writes
/// (and more than the previous bound); the last count is for larger groups.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct GroupCommitStats {
    /// Groups per size bucket; `BOUNDS.len() + 1` entries (the last is "larger").
    pub counts: Vec<u64>,
    /// Writes made durable by all groups together.
    pub writes: u64,
}

impl GroupCommitStats {
    /// Upper bounds of the size buckets.
    pub const BOUNDS: [u64; 8] = [1, 2, 4, 8, 16, 32, 64, 128];
}
