//! Opening and closing: the directory lock, recovery, the active segment, the manifest, the background
//! threads; and the final sync on close or drop.
//!
//! [`FsEngine::open`] runs these steps in order, one function each: check the options, take the
//! directory lock, run recovery (see [`crate::recovery`]), choose the active segment (creating one when
//! the newest is full or there is none), bring the manifest in line with the recovered table, assemble
//! the shared state, start the background threads. A disk too full for the last two writes of that list
//! opens the store read-only instead of failing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use kv_domain::{CompactionStats, Engine, EngineError, EngineResult, OrderedIndex, RecoveryReport};
use parking_lot::{Mutex, RwLock};

use super::segments::create_segment;
use super::{background, group_commit, history, FsEngine, Inner, Writer};
use crate::codec::SEGMENT_HEADER_LEN;
use crate::garbage::Garbage;
use crate::options::Options;
use crate::recovery::{recover, Recovered};
use crate::segment::{segment_name, FdBudget, Segment, FIRST_SEGMENT_ID};
use crate::vfs::{path_in, DirLock, FileSystem};

/// Where writing resumes: the active segment, the offset of its end, and the bytes on disk.
struct Active {
    segment: Arc<Segment>,
    offset: u64,
    disk_bytes: u64,
}

impl FsEngine {
    /// Opens (creating if needed) the data directory `dir`: takes its lock, runs recovery (see
    /// [`crate::recovery`]), and starts the background threads the options ask for (interval syncer,
    /// automatic compactor).
    pub fn open(dir: impl AsRef<Path>, opts: Options) -> EngineResult<Self> {
        let dir = dir.as_ref().to_path_buf();
        check_options(&opts)?;
        let fs = opts.fs.clone();
        let lock = lock_dir(&*fs, &dir)?;
        let index = opts.index.build();
        let mut garbage = Garbage::default();
        let budget = FdBudget::new(opts.max_open_files);
        let mut rec = recover(&fs, &dir, &*index, &mut garbage, &budget)?;
        let mut read_only = rec.read_only.take();
        let active = choose_active(&fs, &dir, &opts, &budget, &mut rec, &mut read_only)?;
        let segments = std::mem::take(&mut rec.segments);
        store_manifest(&*fs, &dir, &segments, rec.listed.as_ref(), &mut read_only)?;
        tracing::info!(
            dir = %dir.display(), segments = rec.report.segments, records = rec.report.records,
            keys = index.len(), last_lsn = rec.last_lsn, truncated_bytes = rec.report.truncated_bytes,
            "recovered data directory"
        );
        let parts = Parts {
            dir,
            opts,
            budget,
            index,
            segments,
            garbage,
            read_only,
            lock,
        };
        let inner = Arc::new(assemble(parts, active, rec)?);
        let commit = group_commit::start(&inner)
            .map_err(|e| EngineError::io("starting the commit thread", e))?;
        let background = background::start(&inner);
        Ok(Self {
            inner,
            background,
            commit: Some(commit),
        })
    }

    /// Makes everything durable, stops the background threads and releases the directory lock, reporting
    /// any error.
    pub fn close(mut self) -> EngineResult<()> {
        self.stop_background();
        self.inner.poisoned()?;
        self.sync()
    }

    fn stop_background(&mut self) {
        for (stop, handle) in self.background.drain(..) {
            stop.store(true, Ordering::Release);
            handle.thread().unpark();
            let _ = handle.join();
        }
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// What recovery did at open.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.inner.report
    }

    /// How many times the automatic compactor has checked the garbage threshold since open (whether or not
    /// it then compacted): lets a caller wait for the compactor to have looked.
    pub fn compactor_checks(&self) -> u64 {
        self.inner.compactor_ticks.load(Ordering::Relaxed)
    }

    /// Totals of the compactions run since open.
    pub fn compaction_stats(&self) -> CompactionStats {
        self.inner.compactions.lock().clone()
    }
}

impl Drop for FsEngine {
    fn drop(&mut self) {
        self.stop_background();
        // The last handle may be dropped by a write's callback, on the commit thread itself: waiting for
        // that thread (a sync through it, or a join) would then wait forever, so it syncs inline instead
        // and the thread exits by itself once its callbacks are done.
        let on_commit_thread = self
            .commit
            .as_ref()
            .is_some_and(|h| h.thread().id() == std::thread::current().id());
        if self.inner.poison.get().is_none() {
            if let Err(e) = self.inner.final_sync(on_commit_thread) {
                tracing::error!("final sync on close failed: {e}");
            }
        }
        if let Some(commit) = self.commit.take() {
            group_commit::stop(&self.inner, commit, !on_commit_thread);
        }
    }
}

/// Refuses a segment size the format cannot hold (offsets are `u32`) or below one header.
fn check_options(opts: &Options) -> EngineResult<()> {
    if opts.max_segment_bytes > Options::MAX_SEGMENT_BYTES
        || opts.max_segment_bytes < SEGMENT_HEADER_LEN as u64
    {
        return Err(EngineError::InvalidInput(format!(
            "max segment size {} is outside {}..={}",
            opts.max_segment_bytes,
            SEGMENT_HEADER_LEN,
            Options::MAX_SEGMENT_BYTES
        )));
    }
    Ok(())
}

/// Creates the data directory if needed and takes its lock (one engine per directory).
fn lock_dir(fs: &dyn FileSystem, dir: &Path) -> EngineResult<Box<dyn DirLock>> {
    fs.create_dir_all(dir)
        .map_err(|e| EngineError::io(format!("creating {}", dir.display()), e))?;
    crate::vfs::lock_data_dir(fs, dir)
}

/// The segment writes resume in: the newest one if it has room (or the store is read-only), else a new
/// one after it. A new segment that the disk has no room for leaves the store read-only on the newest.
fn choose_active(
    fs: &Arc<dyn FileSystem>,
    dir: &Path,
    opts: &Options,
    budget: &Arc<FdBudget>,
    rec: &mut Recovered,
    read_only: &mut Option<String>,
) -> EngineResult<Active> {
    let newest = match (rec.newest.take(), &*read_only) {
        // Read-only: never written to, so any segment serves as the writer's (idle) position.
        (None, Some(why)) => rec
            .segments
            .values()
            .next_back()
            .map(|s| (s.clone(), 0))
            .ok_or_else(|| EngineError::DiskFull {
                context: format!("opening an empty store read-only ({why})"),
            })
            .map(Some)?,
        (newest, _) => newest,
    };
    let newest = match newest {
        Some((seg, len)) if len < opts.max_segment_bytes || read_only.is_some() => {
            return Ok(Active {
                segment: seg,
                offset: len,
                disk_bytes: rec.disk_bytes,
            })
        }
        newest => newest,
    };
    let id = if rec.max_id == 0 {
        FIRST_SEGMENT_ID
    } else {
        rec.max_id + 1
    };
    match (create_segment(fs, dir, id, rec.last_lsn, budget), newest) {
        (Ok(seg), _) => {
            rec.segments.insert(id, seg.clone());
            Ok(Active {
                segment: seg,
                offset: SEGMENT_HEADER_LEN as u64,
                disk_bytes: rec.disk_bytes + SEGMENT_HEADER_LEN as u64,
            })
        }
        // The newest segment is full and there is no room for the next one: serve reads.
        (Err(EngineError::DiskFull { context }), Some((seg, len))) => {
            let _ = fs.remove(&path_in(dir, &segment_name(id)));
            let why = format!("the disk is full: no room for a new segment ({context}); writes are refused until space is freed and the server restarted");
            tracing::error!("opening read-only: {why}");
            *read_only = Some(why);
            Ok(Active {
                segment: seg,
                offset: len,
                disk_bytes: rec.disk_bytes,
            })
        }
        (Err(e), _) => Err(e),
    }
}

/// Makes the manifest name exactly the table recovery built (it adopts or drops what recovery
/// reconciled, and a store from an older version gets its first one here). Unchanged, it is not
/// rewritten, so a clean store on a full disk still opens; no room to rewrite it opens read-only.
fn store_manifest(
    fs: &dyn FileSystem,
    dir: &Path,
    segments: &BTreeMap<u32, Arc<Segment>>,
    listed: Option<&BTreeSet<u32>>,
    read_only: &mut Option<String>,
) -> EngineResult<()> {
    let ids: BTreeSet<u32> = segments.keys().copied().collect();
    if read_only.is_some() || listed == Some(&ids) {
        return Ok(());
    }
    match crate::manifest::store(fs, dir, &ids) {
        Ok(()) => Ok(()),
        Err(EngineError::DiskFull { context }) => {
            let why = format!("the disk is full: the manifest could not be updated ({context}); writes are refused until space is freed and the server restarted");
            tracing::error!("opening read-only: {why}");
            *read_only = Some(why);
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// What [`assemble`] builds the shared state from, besides the active segment and recovery's result.
struct Parts {
    dir: PathBuf,
    opts: Options,
    budget: Arc<FdBudget>,
    index: Box<dyn OrderedIndex>,
    segments: BTreeMap<u32, Arc<Segment>>,
    garbage: Garbage,
    read_only: Option<String>,
    lock: Box<dyn DirLock>,
}

/// The shared state, with the active segment pinned open for the writer.
fn assemble(p: Parts, active: Active, rec: Recovered) -> EngineResult<Inner> {
    let Active {
        segment,
        offset,
        disk_bytes,
    } = active;
    segment.pin(true);
    let active_file = segment
        .file()
        .map_err(|e| EngineError::io(format!("opening {}", segment.name), e))?;
    Ok(Inner {
        budget: p.budget,
        dir: p.dir,
        index: p.index,
        segments: RwLock::new(p.segments),
        writer: Mutex::new(Writer {
            active: segment,
            active_file,
            offset,
            last_lsn: rec.last_lsn,
            accepted: 0,
            unsynced: 0,
            buf: Vec::new(),
            buf_start: offset,
            pending: Vec::new(),
            scratch: Vec::new(),
        }),
        sync: Mutex::new(group_commit::SyncState::default()),
        commit_wake: parking_lot::Condvar::new(),
        durable_lsn: AtomicU64::new(rec.last_lsn),
        durable_seq: AtomicU64::new(0),
        garbage_bytes: AtomicU64::new(p.garbage.total()),
        compactor_ticks: AtomicU64::new(0),
        publish: Mutex::new(p.garbage),
        manifest: Mutex::new(()),
        read_only: p.read_only,
        compacting: Mutex::new(()),
        frozen_views: std::sync::atomic::AtomicUsize::new(0),
        compaction_waiting: std::sync::atomic::AtomicBool::new(false),
        compactions: Mutex::new(CompactionStats::default()),
        compaction_progress: Mutex::new(None),
        poison: OnceLock::new(),
        acked_lsn: AtomicU64::new(rec.last_lsn),
        retain_after: AtomicU64::new(history::RETAIN_NOTHING),
        disk_bytes: AtomicU64::new(disk_bytes),
        fsyncs: AtomicU64::new(0),
        writes: AtomicU64::new(0),
        group_sizes: Default::default(),
        group_writes: AtomicU64::new(0),
        report: rec.report,
        _lock: p.lock,
        opts: p.opts,
    })
}
