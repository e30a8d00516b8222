//! openraft's log storage ([`RaftLogStorage`]) over [`RaftLog`], the checksummed segment log of
//! `kv-infra-fs`: entries, the vote and the purge marker are stored as JSON bytes.
//!
//! Durability: `append` returns, and reports the entries flushed, only after `RaftLog::append`'s
//! `fdatasync`; `save_vote` after the vote file is durable; `truncate_after` after the cut is. The file
//! work runs inline on openraft's storage task (an fsync is ~0.2 ms here); writes are serialised by
//! openraft, reads share the log behind a mutex.
//!
//! The committed log id (`save_committed`) goes to `raft/COMMITTED`, an in-place hint without an fsync
//! (`kv_infra_fs::raft_log::in_place`): openraft re-applies the log up to it at start, before the node
//! serves, so a restarted node's applied index (what `min_lsn` waits for) does not go back to `STATE`'s
//! older one while it waits for a leader. `read_committed` returns it only while the log still holds that very entry (same index,
//! same term), and never while the log recovers from damage: after a power loss the hint may name an
//! entry the log lost, and re-applying reads entries from the log.
//!
//! The newest entries are also kept decoded in memory ([`Recent`]): openraft reads every entry back
//! right after appending it, once to apply it and once per follower to replicate it, and each of those
//! reads from the file costs a `pread`, a CRC and a JSON decode.

use std::collections::VecDeque;
use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;

use kv_infra_fs::raft_log::in_place::InPlaceHint;
use kv_infra_fs::raft_log::{LogRecovery, RaftLog, RaftLogOptions, Recovering};
use kv_infra_fs::vfs::RealFs;
use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{EntryPayload, OptionalSend};
use parking_lot::Mutex;

use crate::types::alias::{Entry, LogId, Vote};
use crate::types::TypeConfig;

/// The Raft log and vote of one node. Cloning shares the log (a clone is also its reader).
#[derive(Debug, Clone)]
pub struct LogStore {
    inner: Arc<Mutex<Inner>>,
}

/// The log and its in-memory tail, behind one lock so they never disagree.
#[derive(Debug)]
struct Inner {
    log: RaftLog,
    recent: Recent,
    /// `COMMITTED`, and the log id it holds (see the module doc).
    committed: InPlaceHint,
    committed_saved: Option<LogId>,
}

const COMMITTED: &str = "COMMITTED";

/// Most entries, and most bytes of keys and values, [`Recent`] keeps.
const RECENT_ENTRIES: usize = 8192;
const RECENT_BYTES: usize = 32 << 20;

/// The newest entries of the log, decoded. Invariant: consecutive, and the last one is the log's last
/// entry (or it is empty): `append` pushes what it made durable, `truncate_after` and `purge` drop
/// what they removed from the file, all under the lock that guards the log, so an entry served from
/// here is exactly the one the file holds.
#[derive(Debug)]
struct Recent {
    entries: VecDeque<Entry>,
    /// Estimated size of `entries` (see [`entry_bytes`]).
    bytes: usize,
    /// Most entries kept, and most estimated bytes.
    max_entries: usize,
    max_bytes: usize,
}

/// An estimate of the memory an entry holds: its keys and values, plus a fixed overhead.
fn entry_bytes(entry: &Entry) -> usize {
    let data = match &entry.payload {
        EntryPayload::Normal(cmd) => cmd
            .ops
            .iter()
            .map(|op| match op {
                crate::types::Op::Put { key, value } => key.len() + value.len(),
                crate::types::Op::Delete { key } => key.len(),
            })
            .sum(),
        _ => 256,
    };
    data + 64
}

impl Recent {
    fn new(max_entries: usize, max_bytes: usize) -> Self {
        Self {
            entries: VecDeque::new(),
            bytes: 0,
            max_entries,
            max_bytes,
        }
    }

    fn first(&self) -> Option<u64> {
        self.entries.front().map(|e| e.log_id.index)
    }

    /// Adds entries just made durable; starts over if they do not follow the last one kept.
    fn extend(&mut self, entries: Vec<Entry>) {
        let follows = match (self.entries.back(), entries.first()) {
            (Some(last), Some(first)) => first.log_id.index == last.log_id.index + 1,
            _ => true,
        };
        if !follows {
            self.entries.clear();
            self.bytes = 0;
        }
        for entry in entries {
            self.bytes += entry_bytes(&entry);
            self.entries.push_back(entry);
        }
        while self.entries.len() > self.max_entries || self.bytes > self.max_bytes {
            let Some(old) = self.entries.pop_front() else {
                break;
            };
            self.bytes -= entry_bytes(&old);
        }
    }

    /// Drops the entries from `from` on.
    fn truncate_from(&mut self, from: u64) {
        while self.entries.back().is_some_and(|e| e.log_id.index >= from) {
            if let Some(old) = self.entries.pop_back() {
                self.bytes -= entry_bytes(&old);
            }
        }
    }

    /// Drops the entries through `through`.
    fn purge_through(&mut self, through: u64) {
        while self
            .entries
            .front()
            .is_some_and(|e| e.log_id.index <= through)
        {
            if let Some(old) = self.entries.pop_front() {
                self.bytes -= entry_bytes(&old);
            }
        }
    }

    /// Copies of the entries kept with indexes in `[from, to)`, `from` at or after [`Recent::first`].
    fn copy(&self, from: u64, to: u64) -> Vec<Entry> {
        let Some(first) = self.first() else {
            return Vec::new();
        };
        let skip = from.saturating_sub(first) as usize;
        let take = to.saturating_sub(from.max(first)) as usize;
        self.entries.iter().skip(skip).take(take).cloned().collect()
    }
}

fn io_err(e: impl std::error::Error + Send + Sync + 'static) -> io::Error {
    io::Error::other(e)
}

impl LogStore {
    /// Opens the log in `dir` (recovering it; see `kv_infra_fs::raft_log`).
    pub fn open(dir: &Path, opts: RaftLogOptions) -> io::Result<(Self, LogRecovery)> {
        Self::open_keeping(dir, opts, RECENT_ENTRIES)
    }

    /// [`LogStore::open`], keeping at most `recent` entries in memory (tests make it small, so reads
    /// span the file and memory).
    fn open_keeping(
        dir: &Path,
        opts: RaftLogOptions,
        recent: usize,
    ) -> io::Result<(Self, LogRecovery)> {
        let (log, report) = RaftLog::open(dir, opts).map_err(io_err)?;
        let (committed, saved) = InPlaceHint::open(&RealFs, dir, COMMITTED).map_err(io_err)?;
        // A hint that does not decode is no hint (see the module doc).
        let committed_saved = saved
            .and_then(|b| serde_json::from_slice(&b).ok())
            .flatten();
        let inner = Inner {
            log,
            recent: Recent::new(recent, RECENT_BYTES),
            committed,
            committed_saved,
        };
        Ok((
            Self {
                inner: Arc::new(Mutex::new(inner)),
            },
            report,
        ))
    }

    /// Why the log is recovering from damage, if it is (see `RaftLog::recovering`).
    pub fn recovering(&self) -> Option<Recovering> {
        self.inner.lock().log.recovering().cloned()
    }

    /// Starts a recovery from a loss the peers told of, durably (see `RaftLog::start_recovery`).
    pub fn start_recovery(&self, marker: Recovering) -> io::Result<()> {
        self.inner.lock().log.start_recovery(marker).map_err(io_err)
    }

    /// Ends the recovery from damage, durably (see `RaftLog::finish_recovery`).
    pub fn finish_recovery(&self) -> io::Result<()> {
        self.inner.lock().log.finish_recovery().map_err(io_err)
    }

    /// The log id of entry `index`, if the log holds it.
    fn log_id_at(inner: &Inner, index: u64) -> io::Result<Option<LogId>> {
        if let Some(first) = inner.recent.first() {
            if index >= first {
                return Ok(inner
                    .recent
                    .copy(index, index + 1)
                    .first()
                    .map(|e| e.log_id));
            }
        }
        match inner.log.entries(index, index + 1).map_err(io_err)?.first() {
            Some((i, bytes)) => Ok(Some(Self::decode_entry(*i, bytes)?.log_id)),
            None => Ok(None),
        }
    }

    fn decode_entry(index: u64, bytes: &[u8]) -> io::Result<Entry> {
        let entry: Entry = serde_json::from_slice(bytes).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("raft log entry {index}: {e}"),
            )
        })?;
        if entry.log_id.index != index {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("raft log entry {index} holds entry {}", entry.log_id.index),
            ));
        }
        Ok(entry)
    }
}

/// `[start, end)` of a range of indexes (empty when inverted).
fn bounds(range: &impl RangeBounds<u64>) -> (u64, u64) {
    let start = match range.start_bound() {
        Bound::Included(s) => *s,
        Bound::Excluded(s) => s.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(e) => e.saturating_add(1),
        Bound::Excluded(e) => *e,
        Bound::Unbounded => u64::MAX,
    };
    (start, end.max(start))
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let (start, end) = bounds(&range);
        let inner = self.inner.lock();
        // The part before the in-memory tail from the file, the rest from memory.
        let kept_from = inner.recent.first().unwrap_or(u64::MAX);
        let mut out = Vec::new();
        if start < kept_from {
            let raw = inner
                .log
                .entries(start, end.min(kept_from))
                .map_err(io_err)?;
            out = raw
                .iter()
                .map(|(index, bytes)| Self::decode_entry(*index, bytes))
                .collect::<Result<_, _>>()?;
        }
        if end > kept_from {
            out.extend(inner.recent.copy(start.max(kept_from), end));
        }
        Ok(out)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        match self.inner.lock().log.vote() {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(bytes)
                .map(Some)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("raft vote: {e}"))),
        }
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let inner = self.inner.lock();
        let log = &inner.log;
        let last_purged_log_id: Option<LogId> = match log.purged() {
            None => None,
            Some(p) => Some(serde_json::from_slice(&p.marker).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("raft purge marker: {e}"),
                )
            })?),
        };
        let last_log_id = match log.last_index() {
            None => last_purged_log_id,
            Some(_) if !inner.recent.entries.is_empty() => {
                inner.recent.entries.back().map(|e| e.log_id)
            }
            Some(last) => {
                let raw = log.entries(last, last + 1).map_err(io_err)?;
                match raw.first() {
                    Some((index, bytes)) => Some(Self::decode_entry(*index, bytes)?.log_id),
                    None => last_purged_log_id,
                }
            }
        };
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        let bytes = serde_json::to_vec(&committed).map_err(io_err)?;
        let mut inner = self.inner.lock();
        inner.committed.store(&bytes).map_err(io_err)?;
        inner.committed_saved = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        let inner = self.inner.lock();
        let Some(saved) = inner.committed_saved else {
            return Ok(None);
        };
        if inner.log.recovering().is_some() {
            return Ok(None);
        }
        // IMPORTANT: only an entry the log still holds, the same one (see the module doc).
        Ok((Self::log_id_at(&inner, saved.index)? == Some(saved)).then_some(saved))
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        let bytes = serde_json::to_vec(vote).map_err(io_err)?;
        self.inner.lock().log.save_vote(&bytes).map_err(io_err)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let encoded: Vec<(u64, Vec<u8>)> = entries
            .iter()
            .map(|e| serde_json::to_vec(e).map(|bytes| (e.log_id.index, bytes)))
            .collect::<Result<_, _>>()
            .map_err(io_err)?;
        let result = {
            let mut inner = self.inner.lock();
            let appended = inner
                .log
                .append(encoded.iter().map(|(i, b)| (*i, b.as_slice())))
                .map_err(io_err);
            // Kept in memory only once the file holds them (a failed append poisons the log).
            if appended.is_ok() {
                inner.recent.extend(entries);
            }
            appended
        };
        // IMPORTANT: reported flushed only once `RaftLog::append` has fsynced.
        match result {
            Ok(()) => {
                callback.io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.io_completed(Err(io::Error::new(e.kind(), e.to_string())));
                Err(e)
            }
        }
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let from = last_log_id.map_or(0, |id| id.index + 1);
        let mut inner = self.inner.lock();
        // Dropped from memory first: even a failed cut (which poisons the log) may have removed some.
        inner.recent.truncate_from(from);
        inner.log.truncate_from(from).map_err(io_err)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        let marker = serde_json::to_vec(&log_id).map_err(io_err)?;
        let mut inner = self.inner.lock();
        inner.recent.purge_through(log_id.index);
        inner
            .log
            .purge_through(log_id.index, &marker)
            .map_err(io_err)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::types::Command;
    use openraft::vote::RaftLeaderId;

    fn entry(term: u64, index: u64) -> Entry {
        let leader = openraft::type_config::alias::LeaderIdOf::<TypeConfig>::new(term, 1);
        Entry {
            log_id: LogId::new(leader.to_committed(), index),
            payload: EntryPayload::Normal(Command::from_ops(&[kv_domain::BatchOp::Put {
                key: kv_domain::Key::from(format!("k{index}").as_str()),
                value: kv_domain::Value::from(format!("v{term}").as_str()),
            }])),
        }
    }

    async fn append(log: &mut LogStore, entries: Vec<Entry>) {
        log.append(entries, IOFlushed::noop()).await.unwrap();
    }

    async fn read(log: &mut LogStore, from: u64, to: u64) -> Vec<(u64, u64)> {
        log.try_get_log_entries(from..to)
            .await
            .unwrap()
            .iter()
            .map(|e| (e.log_id.index, e.log_id.leader_id.term))
            .collect()
    }

    /// Reads that span the file and the in-memory tail answer what the file holds, through appends, a
    /// truncation and a purge, and after a reopen (nothing in memory).
    #[tokio::test]
    async fn reads_across_the_file_and_the_in_memory_tail_match_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) =
            LogStore::open_keeping(dir.path(), RaftLogOptions::default(), 4).unwrap();
        append(&mut log, (1..=10).map(|i| entry(1, i)).collect()).await;
        let all: Vec<(u64, u64)> = (1..=10).map(|i| (i, 1)).collect();
        assert_eq!(read(&mut log, 0, 100).await, all);
        assert_eq!(read(&mut log, 5, 9).await, all[4..8]);
        assert_eq!(log.inner.lock().recent.first(), Some(7), "four kept");
        // A conflicting suffix replaced: 8.. in term 2.
        log.truncate_after(Some(entry(1, 7).log_id)).await.unwrap();
        assert_eq!(read(&mut log, 0, 100).await, all[..7]);
        append(&mut log, (8..=12).map(|i| entry(2, i)).collect()).await;
        let mut now: Vec<(u64, u64)> = (1..=7).map(|i| (i, 1)).collect();
        now.extend((8..=12).map(|i| (i, 2)));
        assert_eq!(read(&mut log, 0, 100).await, now);
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_log_id, Some(entry(2, 12).log_id));
        log.purge(entry(2, 9).log_id).await.unwrap();
        assert_eq!(read(&mut log, 0, 100).await, now[9..]);
        drop(log);
        let (mut log, _) =
            LogStore::open_keeping(dir.path(), RaftLogOptions::default(), 4).unwrap();
        assert_eq!(read(&mut log, 0, 100).await, now[9..]);
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_log_id, Some(entry(2, 12).log_id));
        // A truncation below everything kept in memory, then a purge past the last entry (a snapshot
        // installed beyond the log) and the append that must follow it.
        append(&mut log, (13..=20).map(|i| entry(2, i)).collect()).await;
        log.truncate_after(Some(entry(2, 11).log_id)).await.unwrap();
        assert_eq!(read(&mut log, 0, 100).await, now[9..11]);
        log.purge(entry(3, 30).log_id).await.unwrap();
        assert_eq!(read(&mut log, 0, 100).await, vec![]);
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_log_id, Some(entry(3, 30).log_id));
        append(&mut log, (31..=32).map(|i| entry(3, i)).collect()).await;
        assert_eq!(read(&mut log, 0, 100).await, vec![(31, 3), (32, 3)]);
    }

    /// The committed log id survives a reopen while the log still holds that entry, in the file or in
    /// memory; it is not returned once that entry is gone or is another term's, nor when the file is
    /// damaged.
    #[tokio::test]
    async fn the_committed_hint_is_returned_only_for_an_entry_the_log_holds() {
        let dir = tempfile::tempdir().unwrap();
        let open = || {
            LogStore::open_keeping(dir.path(), RaftLogOptions::default(), 4)
                .unwrap()
                .0
        };
        let mut log = open();
        assert_eq!(log.read_committed().await.unwrap(), None);
        append(&mut log, (1..=10).map(|i| entry(1, i)).collect()).await;
        log.save_committed(Some(entry(1, 4).log_id)).await.unwrap();
        assert_eq!(
            log.read_committed().await.unwrap(),
            Some(entry(1, 4).log_id),
            "from the file"
        );
        log.save_committed(Some(entry(1, 9).log_id)).await.unwrap();
        assert_eq!(
            log.read_committed().await.unwrap(),
            Some(entry(1, 9).log_id),
            "from memory"
        );
        drop(log);
        let mut log = open();
        assert_eq!(
            log.read_committed().await.unwrap(),
            Some(entry(1, 9).log_id),
            "after a reopen"
        );

        // The entry is gone (a lost tail), then back in another term: no hint either way.
        log.truncate_after(Some(entry(1, 6).log_id)).await.unwrap();
        assert_eq!(log.read_committed().await.unwrap(), None);
        append(&mut log, (7..=10).map(|i| entry(2, i)).collect()).await;
        drop(log);
        let mut log = open();
        assert_eq!(
            log.read_committed().await.unwrap(),
            None,
            "entry 9 of term 2 is not entry 9 of term 1"
        );

        log.save_committed(Some(entry(2, 8).log_id)).await.unwrap();
        drop(log);
        let path = dir.path().join(COMMITTED);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[6] ^= 0x01;
        std::fs::write(&path, bytes).unwrap();
        let mut log = open();
        assert_eq!(log.read_committed().await.unwrap(), None, "a damaged hint");
    }
}
