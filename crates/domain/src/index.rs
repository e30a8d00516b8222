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

    /// Every entry, in ascending key order, as one [`Listing`]: what a snapshot's frozen view copies
    /// while writes wait, so an index should build it under one read and without an allocation per key.
    fn listing(&self) -> Listing {
        let mut out = Listing::default();
        for (key, location) in self.range(&KeyRange::all(), usize::MAX) {
            out.push(key.as_bytes(), location);
        }
        out
    }

    /// Number of keys.
    fn len(&self) -> usize;

    /// Whether the index holds no key.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Entries of an index in key order, held compactly: the keys end to end in one buffer, where each
/// ends, and their locations. Three allocations however many keys (a `Vec<(Key, Location)>` makes one
/// per key, which at a million keys costs a snapshot tens of milliseconds of held writes).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listing {
    keys: Vec<u8>,
    ends: Vec<usize>,
    locations: Vec<Location>,
}

impl Listing {
    /// An empty listing with room for `entries` entries of `key_bytes` bytes of keys in all.
    pub fn with_capacity(entries: usize, key_bytes: usize) -> Self {
        Self {
            keys: Vec::with_capacity(key_bytes),
            ends: Vec::with_capacity(entries),
            locations: Vec::with_capacity(entries),
        }
    }

    /// Appends an entry (the caller keeps key order).
    pub fn push(&mut self, key: &[u8], location: Location) {
        self.keys.extend_from_slice(key);
        self.ends.push(self.keys.len());
        self.locations.push(location);
    }

    /// The number of entries.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether it holds no entry.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Entry `i`: its key and location.
    pub fn get(&self, i: usize) -> Option<(&[u8], Location)> {
        let end = *self.ends.get(i)?;
        let start = match i.checked_sub(1) {
            Some(before) => *self.ends.get(before)?,
            None => 0,
        };
        Some((self.keys.get(start..end)?, *self.locations.get(i)?))
    }
}

#[cfg(test)]
mod tests {
    use super::Listing;
    use crate::Location;

    #[test]
    fn a_listing_gives_back_each_key_and_location_in_order() {
        let loc = |offset| Location {
            segment: 1,
            offset,
            len: 10,
        };
        let mut l = Listing::with_capacity(1, 1);
        assert!(l.is_empty());
        l.push(b"", loc(0));
        l.push(b"a", loc(1));
        l.push(b"bcd", loc(2));
        assert_eq!(l.len(), 3);
        assert_eq!(l.get(0), Some((&b""[..], loc(0))));
        assert_eq!(l.get(1), Some((&b"a"[..], loc(1))));
        assert_eq!(l.get(2), Some((&b"bcd"[..], loc(2))));
        assert_eq!(l.get(3), None);
    }
}
