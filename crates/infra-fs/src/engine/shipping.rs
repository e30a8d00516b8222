//! [`LogShipping`] for [`FsEngine`]: reading the log back (see `history.rs`) and applying a leader's log
//! on a follower.

use std::sync::atomic::Ordering;

use kv_domain::{
    BatchOp, Durability, Engine, EngineResult, FrozenView, LogCursor, LogEntry, LogRead,
    LogShipping, Lsn,
};

use super::{history, FsEngine, Inner};
use crate::codec::WriteOp;

impl Inner {
    /// The highest LSN safe to ship to followers (see [`LogShipping::durable_lsn`]).
    pub(super) fn shippable_lsn(&self) -> u64 {
        let acked = self.acked_lsn.load(Ordering::Acquire);
        match self.opts.durability {
            Durability::Never => acked,
            _ => self.durable_lsn.load(Ordering::Acquire).min(acked),
        }
    }
}

impl LogShipping for FsEngine {
    fn durable_lsn(&self) -> Lsn {
        Lsn(self.inner.shippable_lsn())
    }

    fn read_log(&self, from: &LogCursor, max_bytes: usize) -> EngineResult<LogRead> {
        history::read_log(&self.inner, from, max_bytes)
    }

    fn retain_log_after(&self, lsn: Option<Lsn>) {
        self.inner.retain_after.store(
            lsn.map_or(history::RETAIN_NOTHING, |l| l.0),
            Ordering::Release,
        );
    }

    fn apply_log(&self, entries: &[LogEntry]) -> EngineResult<Lsn> {
        self.apply_entries(entries, true)
    }

    fn apply_log_unsynced(&self, entries: &[LogEntry]) -> EngineResult<Lsn> {
        // In `always` mode a write is published by its group's fsync: waiting for it is what makes the
        // entries visible.
        let sync = self.inner.opts.durability == Durability::Always;
        self.apply_entries(entries, sync)
    }

    fn freeze(&self) -> EngineResult<Option<Box<dyn FrozenView>>> {
        self.freeze_view()
    }

    fn install_snapshot_page(&self, at: Lsn, ops: &[BatchOp]) -> EngineResult<()> {
        let i = &self.inner;
        let written = ops.iter().try_for_each(|op| {
            let op = match op {
                BatchOp::Put { key, value } => WriteOp::Put(key, value),
                BatchOp::Delete { key } => WriteOp::Delete(key),
            };
            i.write_at(op, Some(at.0)).map(drop)
        });
        // Also after a refused op: the ops before it stay written, durable and visible. (Every page is
        // written at one LSN: waiting by accepted-write number, not LSN, is what makes this sync.)
        let synced = i.sync_all();
        written.and(synced)
    }
}

impl FsEngine {
    /// `apply_log`'s work; with `sync`, returns once what it wrote is durable (see
    /// [`LogShipping::apply_log_unsynced`] for when it may not).
    fn apply_entries(&self, entries: &[LogEntry], sync: bool) -> EngineResult<Lsn> {
        let i = &self.inner;
        let mut last = None;
        // The applier is a follower's only writer, so the position read once stays current.
        let applied = i.writer.lock().last_lsn;
        let written = entries
            .iter()
            .filter(|e| e.lsn.0 > applied)
            .try_for_each(|e| {
                let op = match e.ops.as_slice() {
                    [BatchOp::Put { key, value }] => WriteOp::Put(key, value),
                    [BatchOp::Delete { key }] => WriteOp::Delete(key),
                    ops => WriteOp::Batch(ops),
                };
                // write_at refuses an LSN below the last one (or equal, for a batch), so concurrent
                // writers could not reorder it.
                last = Some(i.write_at(op, Some(e.lsn.0))?);
                Ok(())
            });
        // The entries before a refused one stay written: make them durable and visible like the others
        // (in `always` mode they would otherwise wait for the next group commit).
        let synced = match last {
            Some(at) if sync => i.sync_through(at.seq),
            _ => Ok(()),
        };
        written.and(synced)?;
        Ok(self.last_lsn())
    }
}
