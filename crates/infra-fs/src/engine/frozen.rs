//! [`LogShipping::freeze`] for [`FsEngine`]: the keydir's listing at one moment, read later from the
//! segments while writes go on.
//!
//! Why it is exact: a record is never rewritten in place. The bytes at a location stay the value they
//! were written with until compaction retires the segment and deletes its file, and a later write of
//! the same key goes to a new location. So a copy of the keydir (every key with its location) taken at
//! one moment, read while no segment is retired, yields that moment's contents.
//!
//! IMPORTANT (the pin): `freeze` registers the view in `Inner::frozen_views` under the `compacting`
//! lock, and `compaction::compact` refuses to start, under the same lock, while any view is
//! registered. So no compaction runs while a view is taken, and none starts before the last view is
//! dropped. `freeze` does not wait for a running compaction: it answers `None`. Nor does it take a
//! view once a compaction was refused for one, until a compaction has run (`compaction_waiting`), so
//! snapshots taken back to back cannot keep compaction off for good (the automatic compactor's refusals
//! only: it retries at its next tick, a manual compaction is simply refused). A view holds the engine's
//! state (and its directory lock) until it is dropped.
//!
//! [`LogShipping::freeze`]: kv_domain::LogShipping::freeze

use std::sync::atomic::Ordering;
use std::sync::Arc;

use kv_domain::{EngineError, EngineResult, Entry, FrozenView, Key, Listing, Location};

use super::{FsEngine, Inner};
use crate::segment::segment_name;

/// A registered view: the listing, and how far it has been read.
struct Frozen {
    inner: Arc<Inner>,
    listed: Listing,
    next: usize,
}

impl FsEngine {
    /// See the module doc.
    pub(super) fn freeze_view(&self) -> EngineResult<Option<Box<dyn FrozenView>>> {
        let inner = &self.inner;
        inner.poisoned()?;
        {
            let Some(_no_compaction) = inner.compacting.try_lock() else {
                return Ok(None);
            };
            // A compaction refused for a view goes first (see `Inner::compaction_waiting`).
            if inner.compaction_waiting.load(Ordering::Acquire) {
                return Ok(None);
            }
            inner.frozen_views.fetch_add(1, Ordering::AcqRel);
        }
        // Registered first, so from here on no segment the listing points into can be retired.
        let mut view = Frozen {
            inner: Arc::clone(inner),
            listed: Listing::default(),
            next: 0,
        };
        view.listed = inner.index.listing();
        Ok(Some(Box::new(view)))
    }
}

impl FrozenView for Frozen {
    fn next_page(&mut self, max: usize) -> EngineResult<Vec<Entry>> {
        let end = self.listed.len().min(self.next + max.max(1));
        let page: Vec<(Key, Location)> = (self.next..end)
            .filter_map(|i| self.listed.get(i))
            .map(|(key, location)| (Key::from(key), location))
            .collect();
        {
            // The pin keeps every segment of the listing; one missing means the invariant broke, and
            // reading on would fall back to the key's current value, not the frozen one.
            let table = self.inner.segments.read();
            if let Some((_, loc)) = page
                .iter()
                .find(|(_, loc)| !table.contains_key(&loc.segment))
            {
                return Err(EngineError::Corrupted {
                    file: segment_name(loc.segment),
                    offset: loc.offset as u64,
                    reason: "a segment a snapshot view reads was retired while it was read".into(),
                });
            }
        }
        let entries = self.inner.read_listed(page)?;
        self.next = end;
        Ok(entries)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        self.inner.frozen_views.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Arc;

    use kv_domain::{Durability, Engine, LogShipping};

    use crate::sim::SimFs;
    use crate::vfs::FileSystem;
    use crate::{FsEngine, Options};

    /// While a compaction runs (its lock held), `freeze` does not wait for it: it answers `None`, and
    /// registers nothing, so compaction still runs once the lock is free. An automatic compaction
    /// refused for a live view goes before the next view; a manual one refused does not hold views off.
    #[test]
    fn no_view_is_taken_while_a_compaction_runs_or_waits() {
        let fs = SimFs::new();
        let opts = Options {
            durability: Durability::Never,
            fs: Arc::new(fs) as Arc<dyn FileSystem>,
            ..Options::default()
        };
        let engine = FsEngine::open("/e", opts).unwrap();
        engine.put(b"k", b"v").unwrap();
        {
            let _running = engine.inner.compacting.lock();
            assert!(engine.freeze().unwrap().is_none());
        }
        assert_eq!(
            engine
                .inner
                .frozen_views
                .load(std::sync::atomic::Ordering::Acquire),
            0
        );
        let view = engine.freeze().unwrap();
        assert!(view.is_some());
        assert_eq!(
            engine
                .inner
                .frozen_views
                .load(std::sync::atomic::Ordering::Acquire),
            1
        );
        assert!(engine.compact().is_err(), "manual, refused");
        let manual = engine.freeze().unwrap();
        assert!(
            manual.is_some(),
            "a refused manual compaction holds no view off"
        );
        drop(manual);
        let automatic = crate::engine::compaction::compact(&engine.inner, false);
        assert!(matches!(automatic, Err(kv_domain::EngineError::Busy(_))));
        assert!(
            engine.freeze().unwrap().is_none(),
            "the automatic compaction goes first"
        );
        drop(view);
        crate::engine::compaction::compact(&engine.inner, false).unwrap();
        assert!(
            engine.freeze().unwrap().is_some(),
            "views again once it ran"
        );
    }
}
