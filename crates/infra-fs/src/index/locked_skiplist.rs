//! Keydir over the `skiplist` crate's `SkipMap` behind a reader-writer lock (the design card's crate).

use kv_domain::{Key, KeyRange, Listing, Location, OrderedIndex};
use parking_lot::RwLock;
use skiplist::SkipMap;

use super::{borrowed_bounds, listing_from};

/// `skiplist::SkipMap` is not concurrent, so it sits behind a `parking_lot` reader-writer lock; every guard
/// lives for one map call and never crosses an `.await`.
pub struct LockedSkipListIndex {
    map: RwLock<SkipMap<Vec<u8>, Location>>,
}

impl std::fmt::Debug for LockedSkipListIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockedSkipListIndex")
            .field("len", &self.map.read().len())
            .finish()
    }
}

impl LockedSkipListIndex {
    /// An empty index.
    pub fn new() -> Self {
        Self {
            map: RwLock::new(SkipMap::new()),
        }
    }
}

impl Default for LockedSkipListIndex {
    fn default() -> Self {
        Self::new()
    }
}

impl OrderedIndex for LockedSkipListIndex {
    fn insert(&self, key: &[u8], location: Location) -> Option<Location> {
        let mut map = self.map.write();
        if let Some(slot) = map.get_mut(key) {
            return Some(std::mem::replace(slot, location));
        }
        map.insert(key.to_vec(), location)
    }
    fn remove(&self, key: &[u8]) -> Option<Location> {
        self.map.write().remove(key)
    }
    fn get(&self, key: &[u8]) -> Option<Location> {
        self.map.read().get(key).copied()
    }
    fn range(&self, range: &KeyRange, limit: usize) -> Vec<(Key, Location)> {
        // Empty by construction (start after end): the map crates panic on such bounds.
        if range.is_empty() {
            return Vec::new();
        }
        // This crate's `range` takes bounds of the key type itself, so the bounds are copied once.
        let (start, end) = borrowed_bounds(range);
        let bounds = (start.map(<[u8]>::to_vec), end.map(<[u8]>::to_vec));
        self.map
            .read()
            .range(bounds)
            .take(limit)
            .map(|(k, v)| (Key::from(k.as_slice()), *v))
            .collect()
    }
    fn listing(&self) -> Listing {
        let map = self.map.read();
        listing_from(
            map.len(),
            map.iter()
                .map(|(key, location)| (key.as_slice(), *location)),
        )
    }
    fn len(&self) -> usize {
        self.map.read().len()
    }
}
