//! openraft's log storage ([`RaftLogStorage`]) over [`RaftLog`], the checksummed segment log of
//! `kv-infra-fs`: entries, the vote and the purge marker are stored as JSON bytes.
//!
//! Durability: `append` returns, and reports the entries flushed, only after `RaftLog::append`'s
//! `fdatasync`; `save_vote` after the vote file is durable; `truncate_after` after the cut is. The file
//! work runs inline on openraft's storage task (an fsync is ~0.2 ms here); writes are serialised by
//! openraft, reads share the log behind a mutex.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;

use kv_infra_fs::raft_log::{LogRecovery, RaftLog, RaftLogOptions, Recovering};
use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::OptionalSend;
use parking_lot::Mutex;

use crate::types::alias::{Entry, LogId, Vote};
use crate::types::TypeConfig;

/// The Raft log and vote of one node. Cloning shares the log (a clone is also its reader).
#[derive(Debug, Clone)]
pub struct LogStore {
    log: Arc<Mutex<RaftLog>>,
}

fn io_err(e: impl std::error::Error + Send + Sync + 'static) -> io::Error {
    io::Error::other(e)
}

impl LogStore {
    /// Opens the log in `dir` (recovering it; see `kv_infra_fs::raft_log`).
    pub fn open(dir: &Path, opts: RaftLogOptions) -> io::Result<(Self, LogRecovery)> {
        let (log, report) = RaftLog::open(dir, opts).map_err(io_err)?;
        Ok((
            Self {
                log: Arc::new(Mutex::new(log)),
            },
            report,
        ))
    }

    /// Why the log is recovering from damage, if it is (see `RaftLog::recovering`).
    pub fn recovering(&self) -> Option<Recovering> {
        self.log.lock().recovering().cloned()
    }

    /// Ends the recovery from damage, durably (see `RaftLog::finish_recovery`).
    pub fn finish_recovery(&self) -> io::Result<()> {
        self.log.lock().finish_recovery().map_err(io_err)
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
        let raw = self.log.lock().entries(start, end).map_err(io_err)?;
        raw.iter()
            .map(|(index, bytes)| Self::decode_entry(*index, bytes))
            .collect()
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        match self.log.lock().vote() {
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
        let log = self.log.lock();
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

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        let bytes = serde_json::to_vec(vote).map_err(io_err)?;
        self.log.lock().save_vote(&bytes).map_err(io_err)
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
        let encoded: Vec<(u64, Vec<u8>)> = entries
            .into_iter()
            .map(|e| serde_json::to_vec(&e).map(|bytes| (e.log_id.index, bytes)))
            .collect::<Result<_, _>>()
            .map_err(io_err)?;
        let result = self
            .log
            .lock()
            .append(encoded.iter().map(|(i, b)| (*i, b.as_slice())))
            .map_err(io_err);
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
        self.log.lock().truncate_from(from).map_err(io_err)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        let marker = serde_json::to_vec(&log_id).map_err(io_err)?;
        self.log
            .lock()
            .purge_through(log_id.index, &marker)
            .map_err(io_err)
    }
}
