//! Group commit (`always` mode): the first waiter leads, writes the group's buffer, fsyncs once for every
//! writer in it, publishes the group's keydir updates in LSN order and wakes the waiters it made durable
//! (see the write-path section of the `engine` module doc).

use std::sync::atomic::Ordering;
use std::time::Duration;

use kv_domain::{EngineResult, GroupCommitStats};

use super::{Inner, Writer};
use crate::keydir::{apply_update, Update};

impl Inner {
    /// Writes the group-commit buffer to the active file. Called with the writer lock held, so the bytes
    /// land before any rotation can seal the file.
    pub(super) fn flush_buffer(&self, w: &mut Writer) -> EngineResult<()> {
        if w.buf.is_empty() {
            return Ok(());
        }
        let written = w.active_file.write_all_at(&w.buf, w.buf_start);
        w.buf.clear();
        written.map_err(|e| self.io_failure(format!("appending to {}", w.active.name), e))
    }

    /// Blocks until everything up to `lsn` is durable, leading a group sync if nobody else is.
    ///
    /// Waiters park individually and are woken by the leader only once their LSN is durable (plus one
    /// waiter to lead the next group), so finishing a group wakes its members in parallel instead of
    /// passing a mutex from one to the next.
    pub(super) fn sync_to(&self, lsn: u64) -> EngineResult<()> {
        loop {
            if self.durable_lsn.load(Ordering::Acquire) >= lsn {
                return Ok(());
            }
            self.poisoned()?;
            let mut s = self.sync.lock();
            if self.durable_lsn.load(Ordering::Acquire) >= lsn {
                return Ok(());
            }
            self.poisoned()?;
            if s.syncing {
                s.waiters.push((lsn, std::thread::current()));
                drop(s);
                // Spurious wake-ups are fine: the loop re-checks.
                std::thread::park();
                continue;
            }
            s.syncing = true;
            drop(s);
            self.lead_group()?;
        }
    }

    /// Runs one group commit as the sync leader (`SyncState::syncing` is set by the caller) and wakes the
    /// waiters it made durable plus one to lead the next group.
    fn lead_group(&self) -> EngineResult<()> {
        {
            let result = self.sync_group();
            let mut s = self.sync.lock();
            s.syncing = false;
            let durable = self.durable_lsn.load(Ordering::Acquire);
            let mut wake = Vec::new();
            let mut next_leader = None;
            s.waiters.retain(|(l, t)| {
                if *l <= durable || result.is_err() {
                    wake.push(t.clone());
                    false
                } else if next_leader.is_none() {
                    next_leader = Some(t.clone());
                    false
                } else {
                    true
                }
            });
            drop(s);
            wake.into_iter().chain(next_leader).for_each(|t| t.unpark());
            result
        }
    }

    /// A group commit now, whatever the durable LSN says. Snapshot pages are all written at one LSN, so
    /// after the first page `sync_to(base)` would find the base already durable and neither fsync nor
    /// publish the later pages.
    pub(super) fn sync_forced(&self) -> EngineResult<()> {
        loop {
            self.poisoned()?;
            let mut s = self.sync.lock();
            if s.syncing {
                // Another group is in flight (rare: a follower has one writer); let it finish.
                drop(s);
                std::thread::sleep(Duration::from_micros(50));
                continue;
            }
            s.syncing = true;
            drop(s);
            return self.lead_group();
        }
    }

    /// One group commit: write the buffer and fsync everything written so far, then publish the group's
    /// keydir updates in LSN order. Runs with `SyncState::syncing` set, so groups never overlap.
    fn sync_group(&self) -> EngineResult<()> {
        let (file, name, target, pending) = {
            let mut w = self.writer.lock();
            self.poisoned()?;
            self.flush_buffer(&mut w)?;
            let pending = std::mem::take(&mut w.pending);
            (
                w.active_file.clone(),
                w.active.name.clone(),
                w.last_lsn,
                pending,
            )
        };
        self.fsyncs.fetch_add(1, Ordering::Relaxed);
        // Records of a sealed segment were fsynced by `rotate`; the active file holds the rest.
        file.sync_data()
            .map_err(|e| self.io_failure(format!("syncing {name}"), e))?;
        let mut garbage = self.publish.lock();
        for u in &pending {
            apply_update(
                &*self.index,
                &mut garbage,
                Update::of(u.kind, &u.key, u.location),
            );
        }
        self.garbage_bytes.store(garbage.total(), Ordering::Relaxed);
        drop(garbage);
        self.acked_lsn.fetch_max(target, Ordering::AcqRel);
        let before = self.durable_lsn.fetch_max(target, Ordering::AcqRel);
        let size = target.saturating_sub(before);
        if size > 0 {
            let bucket = GroupCommitStats::BOUNDS
                .iter()
                .position(|&b| size <= b)
                .unwrap_or(GroupCommitStats::BOUNDS.len());
            if let Some(counter) = self.group_sizes.get(bucket) {
                counter.fetch_add(1, Ordering::Relaxed);
            }
            self.group_writes.fetch_add(size, Ordering::Relaxed);
        }
        Ok(())
    }
}
