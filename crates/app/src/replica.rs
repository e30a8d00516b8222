//! The follower's use cases: applying the leader's log and installing its snapshots, with the checks that
//! keep a follower a faithful prefix of its leader's history.
//!
//! ## Invariants
//! - A follower's log holds the leader's LSNs, so its last LSN is its applied position, durable with the
//!   data (see `kv_domain::replication`).
//! - Entries are applied in LSN order with no gap: a frame that starts beyond `applied + 1` is refused
//!   ([`ReplicaError::Gap`]); entries at or below `applied` are skipped (re-delivery is harmless).
//! - A follower only ever applies the history it follows: a leader with another history id is refused
//!   ([`ReplicaError::HistoryMismatch`]), so a leader restarted on an empty or foreign data directory can
//!   never make a follower wipe or mix its data. Only a follower that never synced adopts a history.
//! - A snapshot replaces the contents key range by key range (each page deletes the follower's keys in its
//!   range that the page lacks). While one is unfinished, [`ReplicaMeta::snapshot_base`] is set and
//!   incremental entries are refused: after a crash the next catch-up is a snapshot again.

use std::sync::{Arc, Mutex};

use crate::Pager;
use kv_domain::{
    BatchOp, EngineError, Key, KeyRange, LogEntry, LogShipping, Lsn, MetaStore, ReplicaMeta, Value,
};

/// Why a follower refused what a leader sent.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    /// The leader's history is not the one this follower holds.
    #[error("history mismatch: this follower holds history {ours}, the leader sent history {theirs}; refusing (a leader restarted on an empty or foreign data directory?)")]
    HistoryMismatch {
        /// Ours.
        ours: String,
        /// The leader's.
        theirs: String,
    },
    /// The entries do not continue this follower's log.
    #[error("entries start at LSN {first} but this follower has applied up to {applied}: a gap")]
    Gap {
        /// First LSN sent.
        first: Lsn,
        /// Applied LSN here.
        applied: Lsn,
    },
    /// A snapshot is unfinished, or the request does not fit the snapshot in progress.
    #[error("{0}")]
    Snapshot(String),
    /// The engine or the metadata store failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// One page of a snapshot: every live key of the leader in `(after, through]` (`None`: unbounded).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotPage {
    /// The snapshot's base LSN: the leader streams from `base + 1` once the snapshot is complete.
    pub base: Lsn,
    /// The first page (starts the snapshot).
    pub first: bool,
    /// The last page (finishes it).
    pub last: bool,
    /// Exclusive lower bound of the page's key range.
    pub after: Option<Key>,
    /// Inclusive upper bound of the page's key range.
    pub through: Option<Key>,
    /// The leader's entries in that range, in key order.
    pub entries: Vec<(Key, Value)>,
}

/// What a follower reports to its leader.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaState {
    /// The history followed (`None`: never synced).
    pub history: Option<String>,
    /// The last applied LSN: everything up to it is here, nothing after it (zero while a snapshot is
    /// unfinished, when the contents are a mix).
    pub applied: Lsn,
    /// A snapshot is unfinished: the next catch-up must be a snapshot.
    pub snapshot_in_progress: bool,
}

/// The follower side of replication over any engine and metadata store.
pub struct Replica {
    engine: Arc<dyn LogShipping>,
    store: Arc<dyn MetaStore>,
    /// Cached metadata; the mutex also serialises applies (one leader stream at a time).
    meta: Mutex<ReplicaMeta>,
}

impl std::fmt::Debug for Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica").finish_non_exhaustive()
    }
}

impl Replica {
    /// Loads the metadata.
    pub fn open(
        engine: Arc<dyn LogShipping>,
        store: Arc<dyn MetaStore>,
    ) -> Result<Self, ReplicaError> {
        let meta = store.load()?;
        Ok(Self {
            engine,
            store,
            meta: Mutex::new(meta),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ReplicaMeta> {
        // The guarded value is replaced only after a successful store, so it is never half-updated.
        self.meta.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The position to report to the leader.
    pub fn state(&self) -> ReplicaState {
        let meta = self.lock();
        let snapshot_in_progress = meta.snapshot_base.is_some();
        ReplicaState {
            history: meta.history.clone(),
            // Mid-snapshot the contents are a mix of old and new: no LSN is faithfully applied.
            applied: if snapshot_in_progress {
                Lsn::ZERO
            } else {
                self.engine.last_lsn()
            },
            snapshot_in_progress,
        }
    }

    fn check_history(meta: &ReplicaMeta, theirs: &str) -> Result<(), ReplicaError> {
        match &meta.history {
            Some(ours) if ours != theirs => Err(ReplicaError::HistoryMismatch {
                ours: ours.clone(),
                theirs: theirs.into(),
            }),
            _ => Ok(()),
        }
    }

    /// Applies leader entries of `history` (see the module invariants); returns the applied LSN, durable.
    pub fn apply(&self, history: &str, entries: &[LogEntry]) -> Result<Lsn, ReplicaError> {
        let meta = self.lock();
        Self::check_history(&meta, history)?;
        if meta.history.is_none() || meta.snapshot_base.is_some() {
            return Err(ReplicaError::Snapshot(
                "this follower needs a snapshot before incremental entries".into(),
            ));
        }
        let applied = self.engine.last_lsn();
        if let Some(first) = entries.iter().find(|e| e.lsn > applied) {
            if first.lsn.0 > applied.0 + 1 {
                return Err(ReplicaError::Gap {
                    first: first.lsn,
                    applied,
                });
            }
        }
        if entries.windows(2).any(|w| w[1].lsn <= w[0].lsn) {
            return Err(ReplicaError::Snapshot(
                "entries are not in increasing LSN order".into(),
            ));
        }
        Ok(self.engine.apply_log(entries)?)
    }

    /// Installs one snapshot page of `history`; returns the applied LSN: the base once the last page is in,
    /// zero before (see [`ReplicaState::applied`]).
    pub fn snapshot_page(&self, history: &str, page: &SnapshotPage) -> Result<Lsn, ReplicaError> {
        let mut meta = self.lock();
        Self::check_history(&meta, history)?;
        let applied = self.engine.last_lsn();
        if page.first {
            if page.base < applied {
                return Err(ReplicaError::Snapshot(format!(
                    "snapshot base {} is behind this follower's applied LSN {applied}",
                    page.base
                )));
            }
            let started = ReplicaMeta {
                history: Some(history.to_string()),
                snapshot_base: Some(page.base),
            };
            self.store.store(&started)?;
            *meta = started;
        } else if meta.snapshot_base != Some(page.base) {
            return Err(ReplicaError::Snapshot(format!(
                "no snapshot at base {} is in progress here",
                page.base
            )));
        }
        // Replace the range: the page's entries, and deletes of our keys in the range that it lacks.
        let range = KeyRange {
            start: page
                .after
                .clone()
                .map_or(std::ops::Bound::Unbounded, std::ops::Bound::Excluded),
            end: page
                .through
                .clone()
                .map_or(std::ops::Bound::Unbounded, std::ops::Bound::Included),
        };
        let mut ops: Vec<BatchOp> = Vec::with_capacity(page.entries.len());
        let mut theirs = page.entries.iter().map(|(k, _)| k).peekable();
        // A snapshot page's range is (after, through]: never inverted, so the pager cannot refuse it.
        let mut pager = Pager::new(range.clone(), usize::MAX, 1024)
            .map_err(|e| ReplicaError::Snapshot(e.to_string()))?;
        while let Some((cursor, want)) = pager.next_request() {
            let ours = self.engine.scan_keys(&cursor, want)?;
            pager.advance(ours.len(), ours.last().map(Key::as_bytes));
            for key in ours {
                while theirs.next_if(|k| **k < key).is_some() {}
                if theirs.peek().is_some_and(|k| **k == key) {
                    continue;
                }
                ops.push(BatchOp::Delete { key });
            }
        }
        for (key, value) in &page.entries {
            if !range.contains(key) {
                return Err(ReplicaError::Snapshot(format!(
                    "snapshot page entry {key:?} lies outside the page's range"
                )));
            }
            ops.push(BatchOp::Put {
                key: key.clone(),
                value: value.clone(),
            });
        }
        self.engine.install_snapshot_page(page.base, &ops)?;
        if page.last {
            let done = ReplicaMeta {
                history: Some(history.to_string()),
                snapshot_base: None,
            };
            self.store.store(&done)?;
            *meta = done;
            return Ok(self.engine.last_lsn());
        }
        Ok(Lsn::ZERO)
    }
}

/// A [`MetaStore`] in memory, for tests of the layers above.
#[derive(Debug, Default)]
pub struct MemoryMetaStore(Mutex<ReplicaMeta>);

impl MetaStore for MemoryMetaStore {
    fn load(&self) -> kv_domain::EngineResult<ReplicaMeta> {
        Ok(self.0.lock().unwrap_or_else(|e| e.into_inner()).clone())
    }
    fn store(&self, meta: &ReplicaMeta) -> kv_domain::EngineResult<()> {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = meta.clone();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use kv_domain::{Engine, LogCursor, LogRead, MemoryEngine};

    fn follower() -> (Replica, Arc<MemoryEngine>) {
        let engine = Arc::new(MemoryEngine::new());
        let r = Replica::open(engine.clone(), Arc::new(MemoryMetaStore::default())).unwrap();
        (r, engine)
    }

    fn entries(leader: &MemoryEngine, after: u64) -> Vec<LogEntry> {
        match leader
            .read_log(&LogCursor::after(Lsn(after)), usize::MAX)
            .unwrap()
        {
            LogRead::Entries { entries, .. } => entries,
            LogRead::Gone { .. } => unreachable!(),
        }
    }

    fn snapshot(leader: &MemoryEngine, r: &Replica, history: &str, page_size: usize) {
        let base = leader.last_lsn();
        let all = leader.scan(&KeyRange::all(), usize::MAX).unwrap();
        let chunks: Vec<_> = all.chunks(page_size.max(1)).collect();
        let mut after: Option<Key> = None;
        for (i, chunk) in chunks.iter().enumerate() {
            let last = i + 1 == chunks.len();
            let through = if last {
                None
            } else {
                Some(chunk[chunk.len() - 1].key.clone())
            };
            let page = SnapshotPage {
                base,
                first: i == 0,
                last,
                after: after.clone(),
                through: through.clone(),
                entries: chunk
                    .iter()
                    .map(|e| (e.key.clone(), e.value.clone()))
                    .collect(),
            };
            r.snapshot_page(history, &page).unwrap();
            after = through;
        }
    }

    #[test]
    fn a_new_follower_snapshots_then_streams_and_removes_stale_keys() {
        let leader = MemoryEngine::new();
        for i in 0..50u32 {
            leader.put(format!("k{i:02}").as_bytes(), b"v").unwrap();
        }
        leader.delete(b"k07").unwrap();
        let (r, engine) = follower();
        engine.put(b"k07", b"stale").unwrap();
        engine.put(b"zzz", b"stale").unwrap();
        assert!(matches!(
            r.apply("h1", &entries(&leader, 0)),
            Err(ReplicaError::Snapshot(_))
        ));
        snapshot(&leader, &r, "h1", 7);
        assert_eq!(r.state().applied, leader.last_lsn());
        assert!(!r.state().snapshot_in_progress);
        leader.put(b"k07", b"back").unwrap();
        leader.delete(b"k01").unwrap();
        let base = r.state().applied.0;
        r.apply("h1", &entries(&leader, base)).unwrap();
        // Re-delivery changes nothing.
        r.apply("h1", &entries(&leader, base)).unwrap();
        assert_eq!(
            engine.scan(&KeyRange::all(), usize::MAX).unwrap(),
            leader.scan(&KeyRange::all(), usize::MAX).unwrap()
        );
        assert_eq!(engine.last_lsn(), leader.last_lsn());
    }

    #[test]
    fn foreign_histories_gaps_and_unfinished_snapshots_are_refused() {
        let leader = MemoryEngine::new();
        leader.put(b"a", b"1").unwrap();
        let (r, engine) = follower();
        snapshot(&leader, &r, "h1", 10);
        leader.put(b"b", b"2").unwrap();
        leader.put(b"c", b"3").unwrap();
        let all = entries(&leader, 1);
        // Another history (a leader restarted on an empty directory) is refused, data kept.
        let err = r.apply("h2", &all).unwrap_err();
        assert!(matches!(err, ReplicaError::HistoryMismatch { .. }), "{err}");
        let page = SnapshotPage {
            base: Lsn(0),
            first: true,
            last: true,
            after: None,
            through: None,
            entries: vec![],
        };
        assert!(matches!(
            r.snapshot_page("h2", &page),
            Err(ReplicaError::HistoryMismatch { .. })
        ));
        assert_eq!(engine.get(b"a").unwrap(), Some(Value::from("1")));
        // A gap is refused; the right start is accepted.
        assert!(matches!(
            r.apply("h1", &all[1..]),
            Err(ReplicaError::Gap { .. })
        ));
        assert_eq!(r.apply("h1", &all).unwrap(), Lsn(3));
        // An unfinished snapshot blocks incremental entries until a snapshot completes.
        let first = SnapshotPage {
            base: Lsn(3),
            first: true,
            last: false,
            after: None,
            through: Some(Key::from("b")),
            entries: vec![
                (Key::from("a"), Value::from("1")),
                (Key::from("b"), Value::from("2")),
            ],
        };
        assert_eq!(r.snapshot_page("h1", &first).unwrap(), Lsn::ZERO);
        assert!(r.state().snapshot_in_progress);
        assert_eq!(
            r.state().applied,
            Lsn::ZERO,
            "mid-snapshot nothing counts as applied"
        );
        assert!(matches!(
            r.apply("h1", &all),
            Err(ReplicaError::Snapshot(_))
        ));
        let wrong_base = SnapshotPage {
            base: Lsn(9),
            first: false,
            ..first.clone()
        };
        assert!(r.snapshot_page("h1", &wrong_base).is_err());
    }
}
