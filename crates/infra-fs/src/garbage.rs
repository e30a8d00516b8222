//! Garbage accounting: per segment, the bytes of records that no longer hold the latest value of their key
//! (overwritten or deleted puts, tombstones, batch headers).
//!
//! Compaction uses it to skip segments with nothing to reclaim (every record of such a segment is the live
//! version of its key, so no tombstone elsewhere can refer to it) and to decide whether sealing the active
//! segment first reclaims anything. Every keydir mutation updates it under the engine's publish lock
//! (records through [`crate::keydir`], compaction's remapping in `engine/compaction.rs`), so the ledger
//! always matches the keydir.

use std::collections::HashMap;

/// Dead bytes per segment id, and their total.
#[derive(Debug, Default, Clone)]
pub(crate) struct Garbage {
    by_segment: HashMap<u32, u64>,
    total: u64,
}

impl Garbage {
    /// Counts `bytes` of segment `segment` as dead.
    pub(crate) fn add(&mut self, segment: u32, bytes: u64) {
        if bytes > 0 {
            *self.by_segment.entry(segment).or_default() += bytes;
            self.total += bytes;
        }
    }

    /// Dead bytes in `segment`.
    pub(crate) fn of(&self, segment: u32) -> u64 {
        self.by_segment.get(&segment).copied().unwrap_or(0)
    }

    /// Forgets a segment that was deleted; returns its dead bytes.
    pub(crate) fn remove(&mut self, segment: u32) -> u64 {
        let bytes = self.by_segment.remove(&segment).unwrap_or(0);
        self.total -= bytes.min(self.total);
        bytes
    }

    /// Dead bytes in all segments.
    pub(crate) fn total(&self) -> u64 {
        self.total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_segment_and_forgets_removed_segments() {
        let mut g = Garbage::default();
        g.add(1, 10);
        g.add(2, 5);
        g.add(1, 0);
        assert_eq!((g.of(1), g.of(2), g.of(3), g.total()), (10, 5, 0, 15));
        assert_eq!(g.remove(1), 10);
        assert_eq!((g.of(1), g.total()), (0, 5));
    }
}
