//! Keydir over `std`'s `BTreeMap` of inline keys behind a reader-writer lock.

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;

use kv_domain::{Key, KeyRange, Listing, Location, OrderedIndex};
use parking_lot::RwLock;

use super::{borrowed_bounds, listing_from, InlineKey};

/// A `BTreeMap` behind a `parking_lot` reader-writer lock; every guard lives for one map call. Keys up to
/// 22 bytes live inside the B-tree nodes ([`InlineKey`]), so a lookup compares contiguous memory instead of
/// chasing a pointer per comparison, and short keys cost no allocation.
#[derive(Debug, Default)]
pub struct BTreeIndex {
    map: RwLock<BTreeMap<InlineKey, Location>>,
}

impl BTreeIndex {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }
}

impl OrderedIndex for BTreeIndex {
    fn insert(&self, key: &[u8], location: Location) -> Option<Location> {
        let mut map = self.map.write();
        if key.len() <= InlineKey::INLINE {
            // One tree search: building an inline key costs no allocation.
            return match map.entry(InlineKey::from(key)) {
                Entry::Occupied(mut e) => Some(std::mem::replace(e.get_mut(), location)),
                Entry::Vacant(e) => {
                    e.insert(location);
                    None
                }
            };
        }
        // A long key would be allocated just to find out it exists: look it up first.
        if let Some(slot) = map.get_mut(key) {
            return Some(std::mem::replace(slot, location));
        }
        map.insert(InlineKey::from(key), location)
    }
    fn remove(&self, key: &[u8]) -> Option<Location> {
        self.map.write().remove(key)
    }
    fn get(&self, key: &[u8]) -> Option<Location> {
        if key.len() <= InlineKey::INLINE {
            // Searching by inline key compares words, not slices (see `InlineKey`'s `Ord`).
            let key = InlineKey::from(key);
            return self.map.read().get(&key).copied();
        }
        self.map.read().get(key).copied()
    }
    fn range(&self, range: &KeyRange, limit: usize) -> Vec<(Key, Location)> {
        // Empty by construction (start after end): the map crates panic on such bounds.
        if range.is_empty() {
            return Vec::new();
        }
        self.map
            .read()
            .range::<[u8], _>(borrowed_bounds(range))
            .take(limit)
            .map(|(k, v)| (Key::from(k.as_slice()), *v))
            .collect()
    }
    fn listing(&self) -> Listing {
        // One read of the map, no allocation per key: writers wait only for the copy itself.
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
