//! The default keydir: a lock-free skip list with in-place overwrites.

use crossbeam_skiplist::SkipMap;
use kv_domain::{Key, KeyRange, Listing, Location, OrderedIndex};
use parking_lot::Mutex;

use super::{borrowed_bounds, InlineKey};

/// `crossbeam-skiplist` map from key to a location cell. Readers are lock-free on the skip list and take the
/// 1-byte per-entry lock only to copy 12 bytes. Overwrites replace the cell's contents in place (never
/// remove and re-insert), so a key that exists is never transiently absent (crossbeam issue 1023).
pub struct ConcurrentSkipIndex {
    map: SkipMap<Box<[u8]>, Mutex<Location>>,
}

impl std::fmt::Debug for ConcurrentSkipIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConcurrentSkipIndex")
            .field("len", &self.map.len())
            .finish()
    }
}

impl ConcurrentSkipIndex {
    /// An empty index.
    pub fn new() -> Self {
        Self {
            map: SkipMap::new(),
        }
    }
}

impl Default for ConcurrentSkipIndex {
    fn default() -> Self {
        Self::new()
    }
}

impl OrderedIndex for ConcurrentSkipIndex {
    fn insert(&self, key: &[u8], location: Location) -> Option<Location> {
        // One mutator at a time (the OrderedIndex contract), so nothing can insert or remove `key` between `get` and `insert`.
        if let Some(entry) = self.map.get(key) {
            let mut cell = entry.value().lock();
            let old = *cell;
            *cell = location;
            return Some(old);
        }
        self.map.insert(key.into(), Mutex::new(location));
        None
    }

    fn remove(&self, key: &[u8]) -> Option<Location> {
        self.map.remove(key).map(|e| *e.value().lock())
    }

    fn get(&self, key: &[u8]) -> Option<Location> {
        self.map.get(key).map(|e| *e.value().lock())
    }

    fn range(&self, range: &KeyRange, limit: usize) -> Vec<(Key, Location)> {
        // Empty by construction (start after end): the map crates panic on such bounds.
        if range.is_empty() {
            return Vec::new();
        }
        self.map
            .range::<[u8], _>(borrowed_bounds(range))
            .take(limit)
            .map(|e| (Key::from(&e.key()[..]), *e.value().lock()))
            .collect()
    }

    fn listing(&self) -> Listing {
        // Entries borrow from the skip list's guards, so this fills by hand, sized as
        // `listing_from` does.
        let n = self.map.len();
        let mut out = Listing::with_capacity(n, n.saturating_mul(InlineKey::INLINE));
        for e in self.map.iter() {
            out.push(&e.key()[..], *e.value().lock());
        }
        out
    }

    fn len(&self) -> usize {
        self.map.len()
    }
}
