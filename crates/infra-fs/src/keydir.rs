//! Keydir updates: the one place that changes the keydir for a record, shared by recovery (replaying the
//! log), the write path (`never`/`interval` writers) and group commit (the commit thread publishing a
//! group). Each update also counts, in the [`Garbage`] ledger, the bytes it makes obsolete, so the two
//! never disagree. Compaction's remapping is the other keydir mutation: a compare-and-swap of a location
//! that moves a live record to its compacted copy; it books the copy that lost (the input's, or a stale
//! output copy) in the ledger itself (see `engine/compaction.rs`).

use kv_domain::{Location, OrderedIndex};

use crate::codec::RecordKind;
use crate::garbage::Garbage;

/// One change to the keydir, with the garbage accounting that goes with it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Update<'a> {
    /// `key` now lives at the location.
    Put(&'a [u8], Location),
    /// `key` was deleted by the tombstone at the location.
    Delete(&'a [u8], Location),
    /// A batch header record (garbage from the start: it carries no data).
    Framing(Location),
}

/// Applies `update` to the keydir and counts the bytes it makes obsolete, in the segments holding them.
pub(crate) fn apply_update(index: &dyn OrderedIndex, garbage: &mut Garbage, update: Update<'_>) {
    match update {
        Update::Put(key, loc) => {
            if let Some(old) = index.insert(key, loc) {
                garbage.add(old.segment, old.len as u64);
            }
        }
        Update::Delete(key, loc) => {
            if let Some(old) = index.remove(key) {
                garbage.add(old.segment, old.len as u64);
            }
            garbage.add(loc.segment, loc.len as u64);
        }
        Update::Framing(loc) => garbage.add(loc.segment, loc.len as u64),
    }
}

impl<'a> Update<'a> {
    /// The update for a record of `kind` and `key` written at `loc`.
    pub(crate) fn of(kind: RecordKind, key: &'a [u8], loc: Location) -> Self {
        match kind {
            RecordKind::Put => Update::Put(key, loc),
            RecordKind::Tombstone => Update::Delete(key, loc),
            RecordKind::BatchHeader => Update::Framing(loc),
        }
    }
}
