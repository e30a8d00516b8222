//! [`Engine`] for [`FsEngine`]: the KV contract over the write path, the read path and compaction.

use std::sync::atomic::Ordering;

use kv_domain::{
    CompactionStats, Engine, EngineResult, EngineStatus, Entry, GroupCommitStats, Key, KeyRange,
    Lsn, Value, Write, WriteBatch, WriteDone,
};

use super::{compaction, FsEngine};
use crate::codec::WriteOp;

impl Engine for FsEngine {
    fn put(&self, key: &[u8], value: &[u8]) -> EngineResult<Lsn> {
        self.inner.write(WriteOp::Put(key, value))
    }

    fn submit(&self, write: Write<'_>, done: WriteDone) {
        let op = match write {
            Write::Put { key, value } => WriteOp::Put(key, value),
            Write::Delete { key } => WriteOp::Delete(key),
            Write::Batch(batch) => WriteOp::Batch(batch.ops()),
        };
        self.inner.submit(op, done)
    }

    fn get(&self, key: &[u8]) -> EngineResult<Option<Value>> {
        match self.inner.index.get(key) {
            Some(loc) => self.inner.read_current(key, loc),
            None => Ok(None),
        }
    }

    fn delete(&self, key: &[u8]) -> EngineResult<Lsn> {
        self.inner.write(WriteOp::Delete(key))
    }

    fn write_batch(&self, batch: &WriteBatch) -> EngineResult<Lsn> {
        // An empty batch is refused (by `validate`): it would need an LSN of its own for nothing.
        self.inner.write(WriteOp::Batch(batch.ops()))
    }

    fn scan(&self, range: &KeyRange, limit: usize) -> EngineResult<Vec<Entry>> {
        // A key the keydir listed can be deleted before its value is read (it is then skipped): keep
        // listing after the last key seen until `limit` entries came or the keydir has no more, so a short
        // answer always means the range is exhausted (pagers stop on one).
        let mut out = Vec::with_capacity(limit.min(1024));
        let mut rest = range.clone();
        while out.len() < limit {
            let want = limit - out.len();
            let listed = self.inner.index.range(&rest, want);
            let exhausted = listed.len() < want;
            let Some(last) = listed.last().map(|(k, _)| k.clone()) else {
                break;
            };
            out.extend(self.inner.read_listed(listed)?);
            if exhausted {
                break;
            }
            rest = range.after(last.as_bytes());
        }
        Ok(out)
    }

    fn scan_keys(&self, range: &KeyRange, limit: usize) -> EngineResult<Vec<Key>> {
        Ok(self
            .inner
            .index
            .range(range, limit)
            .into_iter()
            .map(|(k, _)| k)
            .collect())
    }

    fn last_lsn(&self) -> Lsn {
        Lsn(self.inner.acked_lsn.load(Ordering::Acquire))
    }

    fn sync(&self) -> EngineResult<()> {
        self.inner.poisoned()?;
        self.inner.sync_all()
    }

    /// Merges the sealed segments that hold garbage into new segments holding only live records, sealing
    /// the active segment first when it holds garbage too (see `compaction.rs`).
    fn compact(&self) -> EngineResult<CompactionStats> {
        compaction::compact(&self.inner, true)
    }

    fn status(&self) -> EngineStatus {
        let i = &self.inner;
        EngineStatus {
            last_lsn: self.last_lsn(),
            keys: i.index.len() as u64,
            segments: i.segments.read().len() as u64,
            disk_bytes: i.disk_bytes.load(Ordering::Relaxed),
            garbage_bytes: i.garbage_bytes.load(Ordering::Relaxed),
            durability: i.opts.durability,
            poisoned: i.poison.get().cloned(),
            read_only: i.read_only.clone(),
            fsyncs: i.fsyncs.load(Ordering::Relaxed),
            writes: i.writes.load(Ordering::Relaxed),
            recovery: i.report.clone(),
            compaction: i.compactions.lock().clone(),
            compacting: i.compacting.is_locked(),
            compaction_progress: i.compaction_progress.lock().clone(),
            group_commits: GroupCommitStats {
                counts: i
                    .group_sizes
                    .iter()
                    .map(|c| c.load(Ordering::Relaxed))
                    .collect(),
                writes: i.group_writes.load(Ordering::Relaxed),
            },
        }
    }
}
