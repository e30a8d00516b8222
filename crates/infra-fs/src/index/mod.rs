//! Implementations of the keydir ([`kv_domain::OrderedIndex`]).
//!
//! - [`ConcurrentSkipIndex`] (the default): `crossbeam-skiplist`'s lock-free skip list. Readers never wait
//!   for the writer. Overwrites update the location **in place** under a per-entry byte-sized lock instead
//!   of re-inserting the key, which sidesteps crossbeam issue 1023 (an overwrite briefly hiding the key from
//!   concurrent readers in 0.1.3).
//! - [`LockedSkipListIndex`]: the `skiplist` crate's `SkipMap` (named by the design card) behind a
//!   reader-writer lock. It spends a fixed link array per node (~320 bytes/entry) and readers wait behind
//!   the writer's lock; kept for comparison in `benches/index.rs`.
//! - [`BTreeIndex`]: `std`'s `BTreeMap` behind a reader-writer lock; the compact baseline.
//!
//! `docs/benchmarks.md` has the memory per key and read latency under concurrent writes of all three.

mod btree;
mod concurrent;
mod inline_key;
mod locked_skiplist;

pub use btree::BTreeIndex;
pub use concurrent::ConcurrentSkipIndex;
pub use inline_key::InlineKey;
pub use locked_skiplist::LockedSkipListIndex;

use std::ops::Bound;

use kv_domain::KeyRange;

/// Borrowed bounds of a range, in the shape the map crates take.
pub(crate) fn borrowed_bounds(range: &KeyRange) -> (Bound<&[u8]>, Bound<&[u8]>) {
    fn b(x: &Bound<kv_domain::Key>) -> Bound<&[u8]> {
        match x {
            Bound::Included(k) => Bound::Included(k.as_bytes()),
            Bound::Excluded(k) => Bound::Excluded(k.as_bytes()),
            Bound::Unbounded => Bound::Unbounded,
        }
    }
    (b(&range.start), b(&range.end))
}

/// A [`Listing`] of the `n` `entries` (in key order), in one pass. The key buffer is reserved at
/// [`InlineKey::INLINE`] bytes a key: enough for the short keys an inline key holds, so the listing
/// makes three allocations; longer keys grow it. (A first pass to size it exactly costs as much as
/// the copy: at a million keys the walk over the index, not the allocation, is the cost.)
pub(super) fn listing_from<'a>(
    n: usize,
    entries: impl Iterator<Item = (&'a [u8], kv_domain::Location)>,
) -> kv_domain::Listing {
    let mut out = kv_domain::Listing::with_capacity(n, n.saturating_mul(InlineKey::INLINE));
    for (key, location) in entries {
        out.push(key, location);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use kv_domain::{Key, Location, OrderedIndex};
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn loc(n: u32) -> Location {
        Location {
            segment: n,
            offset: n,
            len: n,
        }
    }

    fn all() -> Vec<Box<dyn OrderedIndex>> {
        vec![
            Box::new(ConcurrentSkipIndex::new()),
            Box::new(LockedSkipListIndex::new()),
            Box::new(BTreeIndex::new()),
        ]
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u8, u32),
        Remove(u8),
        Range(u8, u8, bool, bool, usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..20, any::<u32>()).prop_map(|(k, v)| Op::Insert(k, v)),
            (0u8..20).prop_map(Op::Remove),
            (0u8..22, 0u8..22, any::<bool>(), any::<bool>(), 0usize..8)
                .prop_map(|(a, b, x, y, l)| Op::Range(a, b, x, y, l)),
        ]
    }

    proptest! {
        #[test]
        fn every_index_agrees_with_a_btreemap(ops in proptest::collection::vec(op(), 1..200)) {
            for index in all() {
                let mut model: BTreeMap<Vec<u8>, Location> = BTreeMap::new();
                for op in &ops {
                    match op {
                        Op::Insert(k, v) => prop_assert_eq!(index.insert(&[*k], loc(*v)), model.insert(vec![*k], loc(*v))),
                        Op::Remove(k) => prop_assert_eq!(index.remove(&[*k]), model.remove(&vec![*k])),
                        Op::Range(a, b, xa, xb, limit) => {
                            let bound = |k: u8, excl: bool| if excl { Bound::Excluded(Key::from(vec![k])) } else { Bound::Included(Key::from(vec![k])) };
                            let r = KeyRange { start: bound(*a, *xa), end: bound(*b, *xb) };
                            let got = index.range(&r, *limit);
                            let want: Vec<_> = model.iter().filter(|(k, _)| r.contains(k)).take(*limit).map(|(k, v)| (Key::from(k.clone()), *v)).collect();
                            prop_assert_eq!(got, want);
                        }
                    }
                    prop_assert_eq!(index.len(), model.len());
                }
                for (k, v) in &model {
                    prop_assert_eq!(index.get(k), Some(*v));
                }
                let listing = index.listing();
                prop_assert_eq!(listing.len(), model.len());
                for (i, (k, v)) in model.iter().enumerate() {
                    prop_assert_eq!(listing.get(i), Some((k.as_slice(), *v)));
                }
            }
        }
    }

    /// Keys longer than an inline key (kept on the heap by the B-tree) come out of a listing whole and
    /// in order among short ones.
    #[test]
    fn a_listing_holds_long_keys_whole_and_in_order() {
        let long = vec![b'm'; 40];
        for index in all() {
            index.insert(b"z", loc(3));
            index.insert(&long, loc(2));
            index.insert(b"a", loc(1));
            let listing = index.listing();
            let got: Vec<_> = (0..listing.len())
                .filter_map(|i| listing.get(i))
                .map(|(k, l)| (k.to_vec(), l))
                .collect();
            assert_eq!(
                got,
                vec![
                    (b"a".to_vec(), loc(1)),
                    (long.clone(), loc(2)),
                    (b"z".to_vec(), loc(3))
                ]
            );
        }
    }

    #[test]
    fn overwrite_never_hides_a_key_from_concurrent_readers() {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;
        let index = Arc::new(ConcurrentSkipIndex::new());
        for k in 0..64u8 {
            index.insert(&[k], loc(0));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let reader = {
            let (index, stop) = (index.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut misses = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    for k in 0..64u8 {
                        if index.get(&[k]).is_none() {
                            misses += 1;
                        }
                    }
                }
                misses
            })
        };
        for round in 0..20_000u32 {
            index.insert(&[(round % 64) as u8], loc(round));
        }
        stop.store(true, Ordering::Relaxed);
        assert_eq!(
            reader.join().unwrap(),
            0,
            "a present key was reported absent during an overwrite"
        );
    }
}
