//! The keydir contract.

use crate::{Key, KeyRange, Location};

/// The in-memory ordered index (Bitcask's "keydir"): every live key mapped to the [`Location`] of the record
/// holding its latest value. A pure data structure: no I/O.
///
/// **Concurrency contract:** one caller at a time calls the mutating methods: the engine serialises every
/// mutator (the writer, the group-commit leader and compaction) on one lock; any number of readers may call
/// `get`, `range` and `len` concurrently with it and with each other. A reader concurrent with an overwrite
/// sees either the old or the new location, never "absent".
pub trait OrderedIndex: Send + Sync {
    /// Points `key` at `location`, returning the location it replaced.
    fn insert(&self, key: &[u8], location: Location) -> Option<Location>;

    /// Removes `key`, returning its location if it was present.
    fn remove(&self, key: &[u8]) -> Option<Location>;

    /// The location of `key`'s latest value.
    fn get(&self, key: &[u8]) -> Option<Location>;

    /// Up to `limit` entries with keys in `range`, in ascending key order.
    fn range(&self, range: &KeyRange, limit: usize) -> Vec<(Key, Location)>;

    /// Number of keys.
    fn len(&self) -> usize;

    /// Whether the index holds no key.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
