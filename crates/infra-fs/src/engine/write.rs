//! The write path: validation, LSN assignment and encoding under the writer lock; in `never`/`interval`
//! mode the `pwrite` and the keydir update too, in `always` mode hand-off to group commit.

use std::sync::atomic::Ordering;

use kv_domain::{check_batch, check_record, Durability, EngineError, EngineResult, Location, Lsn};

use super::group_commit::{Done, BACKGROUND_SYNC_BYTES};
use super::{Inner, PendingUpdate};
use crate::codec::{u32_field, WriteOp, SEGMENT_HEADER_LEN};
use crate::keydir::{apply_update, Update};

/// The engine-level input checks every engine shares (see [`kv_domain::check_batch`]).
fn validate(op: &WriteOp<'_>) -> EngineResult<()> {
    match op {
        WriteOp::Put(k, v) => check_record(k, v),
        WriteOp::Delete(k) => check_record(k, &[]),
        WriteOp::Batch(b) => check_batch(b),
    }
}

/// A write the engine accepted: its LSN and its number among the writes accepted since open (what
/// durability waits are for, see `group_commit.rs`).
#[derive(Clone, Copy, Debug)]
pub(super) struct Accepted {
    pub(super) lsn: Lsn,
    pub(super) seq: u64,
}

impl Inner {
    /// Writes `op` at the next LSN and, in `always` mode, blocks until it is durable.
    pub(super) fn write(&self, op: WriteOp<'_>) -> EngineResult<Lsn> {
        let at = self.write_at(op, None)?;
        if self.opts.durability == Durability::Always {
            self.sync_through(at.seq)?;
        }
        Ok(at.lsn)
    }

    /// Writes `op` at the next LSN and calls `done` with its LSN once it is acknowledged: in `always` mode
    /// from the commit thread once durable, in the other modes at once. Never blocks on an fsync (a
    /// rotation aside), so async workers call it directly.
    pub(super) fn submit(&self, op: WriteOp<'_>, done: Done) {
        match self.write_at(op, None) {
            Ok(at) if self.opts.durability == Durability::Always => {
                self.on_durable(at.seq, at.lsn, done)
            }
            Ok(at) => done(Ok(at.lsn)),
            Err(e) => done(Err(e)),
        }
    }

    /// Writes `op` with the LSN `at` (replication: the leader's LSN; it may equal the last one for a single
    /// record, as every page of a snapshot does, but a batch must be strictly above it, the invariant
    /// recovery checks) or else the next LSN. In `always` mode it returns before the group commit: the
    /// caller waits with `sync_through` or `on_durable` (until then the write is neither durable nor
    /// visible).
    pub(super) fn write_at(&self, op: WriteOp<'_>, at: Option<u64>) -> EngineResult<Accepted> {
        validate(&op)?;
        self.writable()?;
        let always = self.opts.durability == Durability::Always;
        let total = op.encoded_len();
        let mut w = self.writer.lock();
        self.poisoned()?;
        if w.offset + total > self.opts.max_segment_bytes && w.offset > SEGMENT_HEADER_LEN as u64 {
            self.rotate(&mut w)?;
        }
        let lsn = match at {
            None => w.last_lsn + 1,
            Some(at)
                if at > w.last_lsn || (at == w.last_lsn && !matches!(op, WriteOp::Batch(_))) =>
            {
                at
            }
            Some(at) => {
                return Err(EngineError::InvalidInput(format!(
                    "cannot write at LSN {at}: the log is already at LSN {}",
                    w.last_lsn
                )))
            }
        };
        let ts = self.opts.clock.now_micros();
        let base = w.offset;
        let seg_id = w.active.id;
        // The limit check that makes every `Location` below exact: the write ends within what a `u32`
        // offset addresses. It cannot fail today (`base` is at most `Options::MAX_SEGMENT_BYTES`, or the
        // header length right after a rotation, and a batch costs at most `kv_domain::MAX_WRITE_COST`),
        // but it is what the narrowing relies on, so it is checked before any byte is encoded.
        if u32::try_from(base + total).is_err() {
            return Err(EngineError::InvalidInput(format!(
                "a write of {total} bytes at offset {base} does not fit a segment"
            )));
        }
        let location = |at: usize, len: usize| Location {
            segment: seg_id,
            offset: u32_field(base + at as u64),
            len: u32_field(len),
        };
        if always {
            // Group commit: append to the shared buffer; the commit thread writes and fsyncs it for everyone.
            if w.buf.is_empty() {
                w.buf_start = base;
            }
            op.encode(lsn, ts, &mut w.buf);
            let w = &mut *w;
            op.for_each_record(|at, len, kind, key| {
                w.pending.push(PendingUpdate {
                    key: key.into(),
                    location: location(at, len),
                    kind,
                });
            });
            w.offset += total;
            w.last_lsn = lsn;
        } else {
            let mut scratch = std::mem::take(&mut w.scratch);
            scratch.clear();
            op.encode(lsn, ts, &mut scratch);
            let written = w.active_file.write_all_at(&scratch, base);
            w.scratch = scratch;
            written.map_err(|e| self.io_failure(format!("appending to {}", w.active.name), e))?;
            w.offset += total;
            w.last_lsn = lsn;
            // The bytes are in the file: publish under the writer lock, so keydir order is LSN order.
            let mut garbage = self.publish.lock();
            op.for_each_record(|at, len, kind, key| {
                apply_update(
                    &*self.index,
                    &mut garbage,
                    Update::of(kind, key, location(at, len)),
                );
            });
            self.garbage_bytes.store(garbage.total(), Ordering::Relaxed);
            drop(garbage);
            self.acked_lsn.store(lsn, Ordering::Release);
            w.unsynced += total;
        }
        let sync_soon = w.unsynced >= BACKGROUND_SYNC_BYTES;
        if sync_soon {
            w.unsynced = 0;
        }
        w.accepted += 1;
        let seq = w.accepted;
        drop(w);
        if sync_soon {
            self.request_sync();
        }
        self.disk_bytes.fetch_add(total, Ordering::Relaxed);
        if !always {
            // Acknowledged now; an `always` write is counted by the group commit that acknowledges it.
            self.writes.fetch_add(1, Ordering::Relaxed);
        }
        Ok(Accepted { lsn: Lsn(lsn), seq })
    }
}
