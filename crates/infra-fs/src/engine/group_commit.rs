//! Group commit: one commit thread makes accepted writes durable (and, in `always` mode, visible) for every
//! durability mode.
//!
//! A write is *accepted* under the writer lock and numbered by [`Writer::accepted`] (a count of accepted
//! writes, not an LSN: snapshot pages all share one LSN). Whoever needs it durable registers a
//! [`Waiter`] for that number: a parked thread (`sync_through`) or a callback (`on_durable`, the async
//! path: no thread waits). The commit thread sleeps while nobody waits; while anybody does it runs groups
//! back to back: under the writer lock it `pwrite`s the group buffer (`always` mode) and takes the queued
//! keydir updates, then without the lock it `fdatasync`s the active file once for everyone, publishes the
//! updates in LSN order, advances `durable_seq` and completes exactly the waiters now durable. Writers
//! keep appending while it syncs, forming the next group.
//!
//! Why a thread of its own rather than the first waiter leading (the scheme before): an async writer
//! cannot lead (it would block an async worker for an fsync), and parking one blocking-pool thread per
//! waiting request cost 64 threads and two context switches per write at 64 connections on 2 cores.
//!
//! It also runs syncs nobody waits for (`request_sync`): in `never`/`interval` mode writers ask for one
//! every [`BACKGROUND_SYNC_BYTES`], so a rotation's fsync under the writer lock finds little to flush.
//!
//! Invariants: `durable_seq` only grows and never passes `Writer::accepted`; a waiter is completed once,
//! with `Ok` only if its number is at or below `durable_seq`; a failed group poisons the engine and every
//! waiter gets its error (later ones the poison); the thread exits only when asked to and nobody waits.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;

use parking_lot::Mutex;

use kv_domain::{EngineError, EngineResult, GroupCommitStats, Lsn};

use super::{Inner, Writer};
use crate::keydir::{apply_update, Update};

/// Called once with the outcome of an accepted write: `Ok(lsn)` once it is durable and visible.
pub(super) use kv_domain::WriteDone as Done;

/// Someone waiting for accepted write number `seq` to be durable: `done` gets `Ok` then, or the error of the
/// group that failed first.
pub(super) struct Waiter {
    seq: u64,
    done: Box<dyn FnOnce(EngineResult<()>) + Send>,
}

/// Coordination between waiters and the commit thread (guarded by `Inner::sync`).
#[derive(Default)]
pub(super) struct SyncState {
    waiters: Vec<Waiter>,
    /// The commit thread is asleep on `Inner::commit_wake`.
    idle: bool,
    /// A sync nobody waits for was asked for (`request_sync`).
    requested: bool,
    /// Set on close: the thread exits once nobody waits.
    stop: bool,
}

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

    /// The sync on close: through the commit thread, or, when closing on the commit thread itself (the
    /// last handle dropped by a callback, between two groups), one group right here.
    pub(super) fn final_sync(&self, on_commit_thread: bool) -> EngineResult<()> {
        if on_commit_thread {
            self.sync_group()
        } else {
            self.sync_all()
        }
    }

    /// Blocks until every write accepted so far is durable and visible.
    pub(super) fn sync_all(&self) -> EngineResult<()> {
        let target = self.writer.lock().accepted;
        self.sync_through(target)
    }

    /// Blocks until accepted write number `seq` (and every one before it) is durable and visible.
    pub(super) fn sync_through(&self, seq: u64) -> EngineResult<()> {
        if self.durable_seq.load(Ordering::Acquire) >= seq {
            return Ok(());
        }
        self.poisoned()?;
        let slot = Arc::new(Mutex::new(None));
        let (filled, thread) = (Arc::clone(&slot), std::thread::current());
        self.enqueue(Waiter {
            seq,
            done: Box::new(move |result| {
                *filled.lock() = Some(result);
                thread.unpark();
            }),
        });
        loop {
            if let Some(result) = slot.lock().take() {
                return result;
            }
            // Spurious wake-ups (or an unpark meant for an earlier wait) are fine: the loop re-checks.
            std::thread::park();
        }
    }

    /// Calls `done(Ok(lsn))` once accepted write number `seq` is durable and visible, or `done(Err(..))`
    /// if the engine fails first. `done` runs on the commit thread (or here, when already decided): it
    /// must not block.
    pub(super) fn on_durable(&self, seq: u64, lsn: Lsn, done: Done) {
        if self.durable_seq.load(Ordering::Acquire) >= seq {
            return done(Ok(lsn));
        }
        if let Err(e) = self.poisoned() {
            return done(Err(e));
        }
        self.enqueue(Waiter {
            seq,
            done: Box::new(move |result| done(result.map(|()| lsn))),
        });
    }

    /// Queues `waiter` and wakes the commit thread if it sleeps; completes it at once if its group
    /// finished meanwhile (`durable_seq` is advanced before the commit thread takes this lock, so a waiter
    /// queued after that check would otherwise cost an extra group).
    /// Asks the commit thread for a sync that nobody waits for: `never`/`interval` writers call it every
    /// [`BACKGROUND_SYNC_BYTES`] appended, so the active segment's dirty pages are flushed off the writer
    /// lock as they accumulate and the fsync a rotation must do under the lock stays small. (Before, a
    /// `never` rotation flushed a whole 64 MiB segment with every writer and both async workers stalled
    /// behind it: the p99 of PUT at 64 connections was 13-15 ms, against 5-7 ms with these syncs.)
    pub(super) fn request_sync(&self) {
        let mut s = self.sync.lock();
        s.requested = true;
        if s.idle {
            s.idle = false;
            self.commit_wake.notify_one();
        }
    }

    fn enqueue(&self, waiter: Waiter) {
        let mut s = self.sync.lock();
        if self.durable_seq.load(Ordering::Acquire) >= waiter.seq {
            drop(s);
            return (waiter.done)(Ok(()));
        }
        s.waiters.push(waiter);
        if s.idle {
            s.idle = false;
            self.commit_wake.notify_one();
        }
    }

    /// The commit thread's loop (see the module doc).
    fn commit_loop(&self) {
        loop {
            {
                let mut s = self.sync.lock();
                while s.waiters.is_empty() && !s.requested && !s.stop {
                    s.idle = true;
                    self.commit_wake.wait(&mut s);
                }
                s.idle = false;
                if s.waiters.is_empty() && !s.requested {
                    return;
                }
                s.requested = false;
            }
            let result = self.sync_group();
            let durable = self.durable_seq.load(Ordering::Acquire);
            let done: Vec<Waiter> = {
                let mut s = self.sync.lock();
                let (done, waiting) = std::mem::take(&mut s.waiters)
                    .into_iter()
                    .partition(|w| w.seq <= durable || result.is_err());
                s.waiters = waiting;
                done
            };
            for w in done {
                (w.done)(match &result {
                    Ok(()) => Ok(()),
                    Err(e) => Err(copy_error(e)),
                });
            }
        }
    }

    /// One group commit: write the buffer and fsync everything written so far, then publish the group's
    /// keydir updates in LSN order. Only the commit thread runs it, so groups never overlap.
    fn sync_group(&self) -> EngineResult<()> {
        let (file, name, target, seq, pending) = {
            let mut w = self.writer.lock();
            self.poisoned()?;
            self.flush_buffer(&mut w)?;
            let pending = std::mem::take(&mut w.pending);
            (
                w.active_file.clone(),
                w.active.name.clone(),
                w.last_lsn,
                w.accepted,
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
        let synced_before = self.durable_seq.fetch_max(seq, Ordering::AcqRel);
        if self.opts.durability == kv_domain::Durability::Always {
            // The writes this group acknowledges (the other modes count theirs when written).
            self.writes
                .fetch_add(seq.saturating_sub(synced_before), Ordering::Relaxed);
        }
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

/// The error of a failed group, for each of its waiters (an `io::Error` is not `Clone`): the same
/// variant, context and message, so every writer of the group sees what the first failure was.
fn copy_error(e: &EngineError) -> EngineError {
    match e {
        EngineError::Io { context, source } => EngineError::Io {
            context: context.clone(),
            source: std::io::Error::new(source.kind(), source.to_string()),
        },
        EngineError::DiskFull { context } => EngineError::DiskFull {
            context: context.clone(),
        },
        other => EngineError::Poisoned {
            reason: other.to_string(),
        },
    }
}

/// Bytes a `never`/`interval` writer appends between two background sync requests (see `request_sync`).
pub(super) const BACKGROUND_SYNC_BYTES: u64 = 1 << 20;

/// Starts the commit thread. It holds the engine until [`stop`] returns: the engine's drop stops it after
/// its final sync.
pub(super) fn start(inner: &Arc<Inner>) -> std::io::Result<JoinHandle<()>> {
    let inner = Arc::clone(inner);
    std::thread::Builder::new()
        .name("kv-commit".into())
        .spawn(move || inner.commit_loop())
}

/// Asks the commit thread to exit once nobody waits, and joins it if `join` (not when called on the commit
/// thread itself).
pub(super) fn stop(inner: &Inner, handle: JoinHandle<()>, join: bool) {
    inner.sync.lock().stop = true;
    inner.commit_wake.notify_one();
    if join {
        let _ = handle.join();
    }
}
