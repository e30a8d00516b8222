//! Engine configuration.

use std::sync::Arc;

use kv_domain::{Durability, OrderedIndex};

use crate::index::{BTreeIndex, ConcurrentSkipIndex, LockedSkipListIndex};
use crate::vfs::{FileSystem, RealFs};

/// Which keydir implementation to use (see [`crate::index`]).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub enum IndexKind {
    /// `BTreeMap` of inline keys behind a reader-writer lock (default: fastest and smallest; see
    /// `docs/benchmarks.md`).
    #[default]
    BTree,
    /// Lock-free `crossbeam-skiplist` with in-place overwrites.
    ConcurrentSkipList,
    /// The `skiplist` crate behind a reader-writer lock.
    LockedSkipList,
}

impl IndexKind {
    /// A new, empty index of this kind.
    pub fn build(self) -> Box<dyn OrderedIndex> {
        match self {
            IndexKind::ConcurrentSkipList => Box::new(ConcurrentSkipIndex::new()),
            IndexKind::LockedSkipList => Box::new(LockedSkipListIndex::new()),
            IndexKind::BTree => Box::new(BTreeIndex::new()),
        }
    }
}

/// Where record timestamps come from.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub enum Clock {
    /// The system clock (default).
    #[default]
    System,
    /// A fixed value, for golden tests.
    Fixed(u64),
}

impl Clock {
    /// Microseconds since the Unix epoch.
    pub fn now_micros(self) -> u64 {
        match self {
            Clock::System => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_micros() as u64),
            Clock::Fixed(t) => t,
        }
    }
}

/// Options of [`crate::FsEngine::open`].
#[derive(Clone, Debug)]
pub struct Options {
    /// When writes reach stable storage (default [`Durability::Always`]).
    pub durability: Durability,
    /// The active segment is sealed and a new one started once it would grow past this many bytes
    /// (default 64 MiB; at most [`Options::MAX_SEGMENT_BYTES`]). A single record larger than this gets a
    /// segment of its own.
    pub max_segment_bytes: u64,
    /// The keydir implementation.
    pub index: IndexKind,
    /// Record timestamps.
    pub clock: Clock,
    /// The file system (the real one, or a simulated one in tests).
    pub fs: Arc<dyn FileSystem>,
    /// Compact automatically when garbage passes a threshold (`None`: only when asked).
    pub auto_compaction: Option<AutoCompaction>,
    /// Most segment files kept open at once (least recently used ones are closed beyond it; default 256).
    pub max_open_files: usize,
}

/// When the background compactor runs: every `check_every` it compacts if garbage bytes are at least
/// `min_garbage_bytes` and at least `garbage_ratio` of the bytes on disk.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AutoCompaction {
    /// Garbage share of the disk bytes that triggers a compaction (default 0.5).
    pub garbage_ratio: f64,
    /// Garbage bytes below which nothing happens whatever the ratio (default 64 MiB).
    pub min_garbage_bytes: u64,
    /// How often to check (default 10 s).
    pub check_every: std::time::Duration,
}

impl Default for AutoCompaction {
    fn default() -> Self {
        Self {
            garbage_ratio: 0.5,
            min_garbage_bytes: 64 << 20,
            check_every: std::time::Duration::from_secs(10),
        }
    }
}

impl Options {
    /// Largest allowed segment size: record offsets are stored as `u32`, and a segment may exceed the
    /// configured size by one maximal record.
    pub const MAX_SEGMENT_BYTES: u64 = 1 << 30;
    /// Default segment size.
    pub const DEFAULT_SEGMENT_BYTES: u64 = 64 << 20;
}

impl Default for Options {
    fn default() -> Self {
        Self {
            durability: Durability::Always,
            max_segment_bytes: Self::DEFAULT_SEGMENT_BYTES,
            index: IndexKind::default(),
            clock: Clock::System,
            fs: Arc::new(RealFs),
            auto_compaction: Some(AutoCompaction::default()),
            max_open_files: 256,
        }
    }
}
