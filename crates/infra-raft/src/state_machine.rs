//! openraft's state machine ([`RaftStateMachine`]) over the key/value engine: a committed entry is
//! applied with its Raft index as its LSN (`LogShipping::apply_log_unsynced`), so `x-kv-lsn`, `min_lsn`
//! and read-your-writes keep their meaning under Raft.
//!
//! ## Durability: the Raft log is the record, the engine follows it
//! An apply returns once the entries are visible, without waiting for the engine's fsync (the server
//! runs a cluster member's engine in `interval` mode, so it syncs in the background). That is safe because
//! an entry leaves the Raft log only when a snapshot covers it, and a snapshot is recorded in `STATE`
//! after an engine sync (below): whatever the engine loses in a crash, openraft applies again from
//! `STATE`'s index out of the log. Waiting for the engine's fsync on every apply cost one fsync per
//! apply batch on every node (the leader's second fsync per write).
//!
//! ## State beside the engine, in `raft/STATE` (a checksummed small file, JSON)
//! The last applied log id, the membership and the current snapshot's metadata. It is stored at every
//! membership entry, snapshot build and snapshot install, not at every apply: after a restart openraft may
//! re-apply entries the engine already holds, which the apply skips (it ignores every entry at or below
//! the engine's last LSN), so a stale `STATE` costs re-delivery, never a double apply. The engine is
//! synced before each store, so `STATE` never runs ahead of what the engine holds durably. `STATE` also
//! records the engine's last LSN at that moment: an engine that comes back with less lost writes it had
//! applied, and the node refuses to start rather than serve without them.
//!
//! ## Snapshots: `raft/snapshot-<index>.snap`
//! Every live key at one applied index, in key order, one engine put record each (checksummed, LSN = the
//! snapshot's index; format in `kv_infra_fs::codec`).
//!
//! Exactness without a stall: openraft asks for a builder on the state machine's task, between two
//! applies, and runs the build on a task of its own. The builder takes a frozen view of the engine there
//! ([`LogShipping::freeze`]: a copy of the key index, no values), so the snapshot is the state at exactly
//! its index; the values are then read from the view and written to the file on a blocking thread while
//! applies go on. Applying waits only for the index copy (milliseconds per 100 000 keys), not for the
//! copy of the store, which held every write of the cluster up for hundreds of milliseconds. Memory: the
//! index copy, one page of values at a time. While a view lives the engine compacts nothing; when a
//! compaction runs (or waits to run) no view can be had, and a policy snapshot is deferred (openraft
//! asks again later); so is one while the engine holds entries past the applied index (re-delivery
//! after a restart), which a view would include. A snapshot openraft needs at once (at start only, when
//! its log was purged without one) is copied on the calling task before anything is applied.
//!
//! At shutdown ([`Closer::close`], after openraft's) a build already running stops at its next page,
//! removes its file and stores nothing, and the shutdown waits for it. openraft's shutdown does not
//! wait for its state-machine task, which may still run commands queued before it; so every command
//! that writes (an apply, an install, making a builder) holds the same guard a build does, from before
//! it checks for the close until it ends, and one that finds the node closed fails without touching the
//! engine or the files. A builder holds the guard from its making (before the freeze) until its build
//! ends, so a build spawned but not yet running is waited for too. Once `close` returns, nothing of the
//! state machine writes or holds the engine; the Raft log holds whatever was not applied.
//!
//! A build that finishes after a newer snapshot was installed is dropped (openraft ignores its metadata
//! too). The `files` lock orders every `STATE` store and every change to the snapshot files: a build's
//! tmp file is never removed under it, and an installed copy is current before a build can remove it.
//!
//! Installing replaces the engine's contents page by page (each page deletes the keys in its range the
//! snapshot lacks), at the snapshot's index as LSN.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_util::{Stream, StreamExt};
use kv_domain::{BatchOp, FrozenView, Key, KeyRange, LogEntry, LogShipping};
use kv_infra_fs::codec::{encode_record, RecordKind};
use kv_infra_fs::raft_log::small_file;
use kv_infra_fs::segment::{scan_records, ScanEnd};
use kv_infra_fs::vfs::{FileSystem, RealFs};
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::types::alias::{LogId, SnapshotMeta, StoredMembership};

/// A snapshot of this state machine.
type SnapshotOf = openraft::type_config::alias::SnapshotOf<TypeConfig, SnapshotFile>;
use crate::types::{Applied, NodeId, TypeConfig};

const STATE: &str = "STATE";
/// Keys read from the engine, and ops written to it, per snapshot page.
const PAGE: usize = 1024;

/// How many bytes of a snapshot file are written between two flushes (see `write_snapshot`).
const SNAPSHOT_SYNC_BYTES: u64 = 4 << 20;

/// Most committed entries applied with one engine call.
const APPLY_BATCH: usize = 512;

/// A snapshot's data: the file holding it (see the module doc). The network streams it in bounded
/// pages; the receiving node writes them to its own file before installing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotFile {
    /// Where the snapshot's records are.
    pub path: PathBuf,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct State {
    last_applied: Option<LogId>,
    membership: StoredMembership,
    snapshot: Option<SnapshotMeta>,
    /// The engine's last LSN when this was stored, just after an engine sync: the engine must still
    /// reach it at open, or it lost writes it had applied durably (see [`StateMachine::open`]). Absent
    /// (0) in files written before it existed.
    #[serde(default)]
    engine_lsn: u64,
}

/// The state machine of one node. Cloning shares it.
#[derive(Clone)]
pub struct StateMachine {
    engine: Arc<dyn LogShipping>,
    dir: PathBuf,
    state: Arc<Mutex<State>>,
    /// Held across every store of `STATE` and every change to the snapshot files, so that the file's
    /// order is the memory's and a snapshot built in the background (see the module doc) never races an
    /// install or a membership change.
    files: Arc<Mutex<()>>,
    /// Taken at shutdown (see the module doc).
    closer: Closer,
}

/// Stops a state machine at shutdown (see the module doc); holds nothing of the engine, so that whoever
/// keeps it (the node) does not keep the engine shared.
#[derive(Clone, Debug, Default)]
pub struct Closer {
    /// Every command that writes and every builder holds a read guard of this while it runs;
    /// [`Self::close`] takes the write side after setting `closed`, so it returns once none runs.
    busy: Arc<tokio::sync::RwLock<()>>,
    /// Set by [`Self::close`]: a build stops at its next page and stores nothing; a command fails.
    closed: Arc<std::sync::atomic::AtomicBool>,
}

impl Closer {
    /// Stops every snapshot build and waits until none runs and no command that writes runs; later
    /// ones fail at once. Called after openraft's shutdown, so that once it returns nothing of the
    /// state machine writes this node's files or holds the engine (the server closes the engine next,
    /// which needs it unshared). A build stopped this way leaves no file behind; the current snapshot
    /// stays what it was.
    pub async fn close(&self) {
        self.closed
            .store(true, std::sync::atomic::Ordering::Release);
        let _none_runs = self.busy.write().await;
    }

    fn is_closed(&self) -> bool {
        self.closed.load(std::sync::atomic::Ordering::Acquire)
    }

    /// A guard that [`Self::close`] waits for, or an error if the node is closed already.
    async fn enter(&self) -> io::Result<tokio::sync::OwnedRwLockReadGuard<()>> {
        let guard = self.busy.clone().read_owned().await;
        if self.is_closed() {
            return Err(stopped());
        }
        Ok(guard)
    }
}

fn stopped() -> io::Error {
    io::Error::other("the node is shutting down: the state machine is closed")
}

impl std::fmt::Debug for StateMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateMachine")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

fn io_err(e: impl std::error::Error + Send + Sync + 'static) -> io::Error {
    io::Error::other(e)
}

fn invalid(reason: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, reason)
}

impl StateMachine {
    /// The state machine over `engine`, keeping its own files in `dir` (the Raft directory).
    pub fn open(engine: Arc<dyn LogShipping>, dir: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let state: State = match small_file::load(&RealFs, dir, STATE).map_err(io_err)? {
            None => State::default(),
            Some(bytes) => {
                serde_json::from_slice(&bytes).map_err(|e| invalid(format!("raft/{STATE}: {e}")))?
            }
        };
        // Entries up to STATE's index are not re-applied after a restart: if the engine lost records
        // it had durably applied (damage in its newest segment, cut at open), they would be missing for
        // good while the node serves reads. Stop instead; the operator rebuilds the node.
        let engine_lsn = engine.last_lsn().0;
        if engine_lsn < state.engine_lsn {
            return Err(invalid(format!(
                "the engine lost writes it had applied: its last LSN is {engine_lsn}, raft/{STATE} was stored at LSN {}. \
                 Rebuild this node: remove it from the cluster (kvctl cluster remove), clear its data directory, \
                 and add it again as a learner under a new id (docs/cluster.md, \"Damaged Raft logs\"); \
                 a REPLICATION_MODE follower: restart it on an empty directory",
                state.engine_lsn
            )));
        }
        // A snapshot whose build a crash interrupted (no build runs before open returns).
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            if path.to_string_lossy().ends_with(".snap.tmp") {
                std::fs::remove_file(&path)?;
            }
        }
        Ok(Self {
            engine,
            dir: dir.to_path_buf(),
            state: Arc::new(Mutex::new(state)),
            files: Arc::new(Mutex::new(())),
            closer: Closer::default(),
        })
    }

    /// What stops this state machine at shutdown.
    pub fn closer(&self) -> Closer {
        self.closer.clone()
    }

    /// Shorthand for [`Closer::close`].
    pub async fn close(&self) {
        self.closer.close().await;
    }

    fn is_closed(&self) -> bool {
        self.closer.is_closed()
    }

    /// The last applied log id.
    pub fn last_applied(&self) -> Option<LogId> {
        self.state.lock().last_applied
    }

    /// Called at start with the last index the recovered Raft log holds. When it is below `STATE`'s
    /// applied index (damage cut entries this node had applied) and the current snapshot is older than
    /// that index, the applied index (and membership) fall back to the snapshot's, in memory, and this
    /// returns true.
    ///
    /// Why: openraft then purges the log through the applied index (it takes a log that ends below it
    /// for one a snapshot install left behind) and requires a snapshot covering every purged entry; ours
    /// is older whenever `STATE` was stored after it (at a membership change, or by a snapshot built
    /// while applies went on), and openraft would stop on its invariant. Falling back costs
    /// re-delivery only: the entries after the snapshot come again from a leader and the engine skips
    /// what it holds. Without a snapshot there is nothing to fall back to but the start: the same.
    pub fn fall_back_to_snapshot(&self, log_last: Option<u64>) -> bool {
        let mut s = self.state.lock();
        let applied = s.last_applied.map(|id| id.index);
        let snapshot = s.snapshot.as_ref().and_then(|m| m.last_log_id);
        if log_last >= applied || snapshot.map(|id| id.index) >= applied {
            return false;
        }
        tracing::warn!(
            applied = applied.unwrap_or_default(),
            log_last = log_last.unwrap_or_default(),
            snapshot = snapshot.map_or(0, |id| id.index),
            "the raft log ends below the applied index: applying again from the snapshot's"
        );
        let membership = s
            .snapshot
            .as_ref()
            .map(|m| m.last_membership.clone())
            .unwrap_or_default();
        s.last_applied = snapshot;
        s.membership = membership;
        true
    }

    /// Makes the writes this fresh state machine's engine already holds (a standalone server's, through
    /// its last LSN `n`) the cluster's initial state, instead of `Raft::initialize`'s empty one: `STATE`
    /// says entries through `n` are applied, at a log id of term 0 led by `node` (as openraft's own first
    /// entry is), with `members` as voters. openraft then purges its (empty) log through `n` at start,
    /// builds a snapshot of the engine at `n` for the others, and appends from `n + 1`; LSNs keep their
    /// meaning. One atomic store, so a crash leaves either a fresh node or a bootstrapped one. Returns `n`.
    pub fn bootstrap(
        &self,
        node: NodeId,
        members: std::collections::BTreeMap<NodeId, openraft::BasicNode>,
    ) -> io::Result<u64> {
        use openraft::vote::RaftLeaderId;
        let n = self.engine.last_lsn().0;
        let leader = openraft::type_config::alias::LeaderIdOf::<TypeConfig>::new(0, node);
        let log_id = LogId::new(leader.to_committed(), n);
        let voters: std::collections::BTreeSet<NodeId> = members.keys().copied().collect();
        let membership = openraft::Membership::new(vec![voters], members)
            .map_err(|e| invalid(format!("cluster members: {e}")))?;
        let membership = StoredMembership::new(Some(log_id), membership);
        self.update_state(|s| {
            s.last_applied = Some(log_id);
            s.membership = membership.clone();
            s.snapshot = None;
        })?;
        Ok(n)
    }

    /// Changes the state with `change`: first in a copy that is stored, then in memory, both under the
    /// `files` lock (so stores happen in the order of the changes). `change` sets fields, and is applied to
    /// the memory as well rather than the copy assigned, so that a field the state machine's task moves
    /// meanwhile (`last_applied`, set at every apply) is not set back.
    fn update_state(&self, change: impl Fn(&mut State)) -> io::Result<()> {
        let _files = self.files.lock();
        self.update_state_locked(change)
    }

    /// [`Self::update_state`] with the `files` lock held.
    fn update_state_locked(&self, change: impl Fn(&mut State)) -> io::Result<()> {
        let mut next = self.state.lock().clone();
        change(&mut next);
        self.store_state(&next)?;
        change(&mut self.state.lock());
        Ok(())
    }

    /// Stores `STATE`; called with the `files` lock held. IMPORTANT: the engine is synced first, so
    /// `STATE` never claims an applied index the engine could lose (in `never` or `interval` mode a power loss may drop its unsynced tail; openraft
    /// re-applies only entries after `STATE`'s index, and may have purged the ones before).
    fn store_state(&self, state: &State) -> io::Result<()> {
        // Read before the sync, so the recorded LSN is never above what the sync made durable.
        let engine_lsn = self.engine.last_lsn().0;
        self.engine.sync().map_err(io_err)?;
        let state = State {
            engine_lsn,
            ..state.clone()
        };
        let bytes = serde_json::to_vec(&state).map_err(io_err)?;
        small_file::store(&RealFs, &self.dir, STATE, &bytes).map_err(io_err)
    }

    fn snapshot_path(&self, meta: &SnapshotMeta) -> PathBuf {
        let index = meta.last_log_id.map_or(0, |id| id.index);
        self.dir.join(format!("snapshot-{index:020}.snap"))
    }

    /// Applies `run` (consecutive normal entries) to the engine in one call, then records every entry in
    /// `done` as applied and answers its proposer (`Applied` with its index as LSN).
    fn apply_run(
        &self,
        run: &mut Vec<LogEntry>,
        done: &mut Vec<(LogId, Option<openraft::storage::ApplyResponder<TypeConfig>>)>,
    ) -> io::Result<()> {
        if !run.is_empty() {
            self.engine.apply_log_unsynced(run).map_err(io_err)?;
            run.clear();
        }
        for (log_id, responder) in done.drain(..) {
            self.state.lock().last_applied = Some(log_id);
            if let Some(responder) = responder {
                responder.send(Applied { lsn: log_id.index });
            }
        }
        Ok(())
    }

    /// The metadata of a snapshot of the state as it is now (the state machine's task calls this between
    /// two applies).
    fn snapshot_meta(&self) -> SnapshotMeta {
        let s = self.state.lock();
        SnapshotMeta {
            last_log_id: s.last_applied,
            last_membership: s.membership.clone(),
        }
    }

    /// Copies the engine to a new snapshot file on the calling task, durably, and makes it the current
    /// one: for when no frozen view can be had and openraft needs the snapshot now (`force`: only at
    /// start, in `Raft::new`, before anything is applied, so the copy is of the same state).
    fn copy_snapshot_now(&self) -> io::Result<SnapshotOf> {
        let meta = self.snapshot_meta();
        let mut range = KeyRange::all();
        let mut done = false;
        self.write_snapshot(meta, || {
            if done {
                return Ok(Vec::new());
            }
            let page = self.engine.scan(&range, PAGE).map_err(io_err)?;
            match page.last() {
                Some(last) if page.len() == PAGE => range = range.after(last.key.as_bytes()),
                _ => done = true,
            }
            Ok(page)
        })
    }

    /// Writes the entries `next_page` gives (in key order, until an empty page) as the snapshot `meta`,
    /// durably, then makes it the current snapshot unless a newer one became current meanwhile (an install
    /// during a background build: then the file is removed again).
    fn write_snapshot(
        &self,
        meta: SnapshotMeta,
        mut next_page: impl FnMut() -> io::Result<Vec<kv_domain::Entry>>,
    ) -> io::Result<SnapshotOf> {
        let index = meta.last_log_id.map_or(0, |id| id.index);
        let path = self.snapshot_path(&meta);
        let tmp = path.with_extension("snap.tmp");
        let file = RealFs.create(&tmp).or_else(|e| {
            if e.kind() == io::ErrorKind::AlreadyExists {
                RealFs.remove(&tmp)?;
                RealFs.create(&tmp)
            } else {
                Err(e)
            }
        })?;
        let mut offset = 0u64;
        let mut synced = 0u64;
        let mut buf = Vec::new();
        loop {
            if self.is_closed() {
                drop(file);
                RealFs.remove(&tmp)?;
                return Err(stopped());
            }
            let page = next_page()?;
            if page.is_empty() {
                break;
            }
            buf.clear();
            for entry in &page {
                encode_record(
                    &mut buf,
                    RecordKind::Put,
                    index,
                    0,
                    entry.key.as_bytes(),
                    entry.value.as_bytes(),
                );
            }
            file.write_all_at(&buf, offset)?;
            offset += buf.len() as u64;
            // Flushed as it grows, not all at the end: one fsync of a whole store (hundreds of MB)
            // queues every Raft log fsync behind it on the same disk, stalling writes for tens of
            // milliseconds; a few MB at a time keeps each flush short.
            if offset - synced >= SNAPSHOT_SYNC_BYTES {
                file.sync_data()?;
                synced = offset;
            }
        }
        // IMPORTANT: contents durable, then the name, then the directory entry.
        file.sync_data()?;
        drop(file);
        let _files = self.files.lock();
        if self.is_closed() {
            RealFs.remove(&tmp)?;
            return Err(stopped());
        }
        RealFs.rename(&tmp, &path)?;
        RealFs.sync_dir(&self.dir)?;
        let newer = self
            .state
            .lock()
            .snapshot
            .as_ref()
            .and_then(|m| m.last_log_id);
        if newer > meta.last_log_id {
            tracing::info!(
                built = index,
                current = newer.map_or(0, |id| id.index),
                "a newer snapshot was installed while this one was built: dropping it"
            );
            std::fs::remove_file(&path)?;
        } else {
            self.make_current_locked(&meta)?;
        }
        Ok(SnapshotOf {
            meta,
            snapshot: SnapshotFile { path },
        })
    }

    /// Records `meta` as the current snapshot and deletes the other snapshot files (never one being
    /// built: those end in `.tmp`). Called with the `files` lock held.
    fn make_current_locked(&self, meta: &SnapshotMeta) -> io::Result<()> {
        self.update_state_locked(|s| s.snapshot = Some(meta.clone()))?;
        self.remove_other_snapshots(meta)
    }

    /// Deletes every snapshot file but `meta`'s (never one being built). With the `files` lock held.
    fn remove_other_snapshots(&self, meta: &SnapshotMeta) -> io::Result<()> {
        let keep = self.snapshot_path(meta);
        for entry in std::fs::read_dir(&self.dir)? {
            let path = entry?.path();
            let is_snapshot = path.file_name().is_some_and(|n| {
                let n = n.to_string_lossy();
                n.starts_with("snapshot-") && n.ends_with(".snap")
            });
            if is_snapshot && path != keep {
                std::fs::remove_file(&path)?;
            }
        }
        Ok(())
    }

    /// Replaces the engine's contents with the snapshot in `file`, page by page, at LSN `at`.
    fn replace_contents(&self, file: &Path, at: u64) -> io::Result<()> {
        let held = self.engine.last_lsn().0;
        if held > at {
            // The engine applied committed entries past the snapshot already (a node whose Raft log
            // was cut by damage below what its engine holds): its contents are a later state of the
            // same log, so keep them; re-applying after `at` skips what the engine holds.
            tracing::info!(
                snapshot = at,
                engine = held,
                "snapshot behind this node's engine: keeping the engine's contents"
            );
            return Ok(());
        }
        let handle = RealFs.open(file)?;
        let len = handle.len()?;
        let mut page: Vec<BatchOp> = Vec::with_capacity(PAGE);
        let mut after: Option<Key> = None;
        let mut failed: Option<io::Error> = None;
        let ended = scan_records(&*handle, 0, len, |_, rec| {
            if failed.is_some() {
                return Ok(());
            }
            page.push(BatchOp::Put {
                key: Key::from(rec.key),
                value: kv_domain::Value::from(rec.value.to_vec()),
            });
            if page.len() == PAGE {
                if let Err(e) = self.install_page(&mut page, &mut after, at, false) {
                    failed = Some(e);
                }
            }
            Ok(())
        })?;
        if let Some(e) = failed {
            return Err(e);
        }
        if let ScanEnd::Invalid { offset, error } = ended {
            return Err(invalid(format!(
                "snapshot {} damaged at byte {offset}: {error}",
                file.display()
            )));
        }
        self.install_page(&mut page, &mut after, at, true)
    }

    /// Installs `page` (keys ascending, after `after`): deletes the engine's keys in the page's range
    /// that it lacks (to the end of the key space when `last`), writes its puts, then empties it.
    fn install_page(
        &self,
        page: &mut Vec<BatchOp>,
        after: &mut Option<Key>,
        at: u64,
        last: bool,
    ) -> io::Result<()> {
        let through = page.last().map(|op| op.key().clone());
        let mut range = match after {
            Some(k) => KeyRange::all().after(k.as_bytes()),
            None => KeyRange::all(),
        };
        if !last {
            if let Some(t) = &through {
                range.end = std::ops::Bound::Included(t.clone());
            }
        }
        let wanted: std::collections::BTreeSet<&[u8]> =
            page.iter().map(|op| op.key().as_bytes()).collect();
        let mut deletes = Vec::new();
        loop {
            let keys = self.engine.scan_keys(&range, PAGE).map_err(io_err)?;
            for k in &keys {
                if !wanted.contains(k.as_bytes()) {
                    deletes.push(BatchOp::Delete { key: k.clone() });
                }
            }
            match keys.last() {
                Some(k) if keys.len() == PAGE => range = range.after(k.as_bytes()),
                _ => break,
            }
        }
        let mut ops = deletes;
        ops.append(page);
        self.engine
            .install_snapshot_page(kv_domain::Lsn(at), &ops)
            .map_err(io_err)?;
        if through.is_some() {
            *after = through;
        }
        Ok(())
    }
}

/// A snapshot being taken (see the module doc): either already copied, or a frozen view of the engine
/// to copy in the background.
pub struct Builder {
    job: Mutex<Option<Job>>,
}

enum Job {
    Copied(io::Result<SnapshotOf>),
    Frozen {
        sm: StateMachine,
        meta: SnapshotMeta,
        view: Box<dyn FrozenView>,
        /// Held from before the freeze until the build ends, so that `close` waits for it.
        running: tokio::sync::OwnedRwLockReadGuard<()>,
    },
}

impl std::fmt::Debug for Builder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Builder").finish_non_exhaustive()
    }
}

impl RaftSnapshotBuilder<TypeConfig> for Builder {
    type SnapshotData = SnapshotFile;

    async fn build_snapshot(&mut self) -> Result<SnapshotOf, io::Error> {
        match self.job.get_mut().take() {
            None => Err(io::Error::other("this snapshot builder was used already")),
            Some(Job::Copied(taken)) => taken,
            Some(Job::Frozen {
                sm,
                meta,
                mut view,
                running,
            }) => {
                // File I/O for a whole store: off the async workers.
                tokio::task::spawn_blocking(move || {
                    let built = sm.write_snapshot(meta, || view.next_page(PAGE).map_err(io_err));
                    // The view goes before the guard: once `close` returns, this build holds no engine.
                    drop(view);
                    drop(sm);
                    drop(running);
                    built
                })
                .await
                .map_err(io_err)?
            }
        }
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotFile;
    type SnapshotBuilder = Builder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        let s = self.state.lock();
        Ok((s.last_applied, s.membership.clone()))
    }

    async fn apply<Strm>(&mut self, entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        let _running = self.closer.enter().await?;
        // The entries already committed arrive together: apply each run of them with one engine call
        // (one fsync in `always` mode), then answer their proposers.
        let mut chunks = entries.ready_chunks(APPLY_BATCH);
        while let Some(chunk) = chunks.next().await {
            let mut run: Vec<LogEntry> = Vec::new();
            let mut done: Vec<(LogId, Option<openraft::storage::ApplyResponder<TypeConfig>>)> =
                Vec::new();
            for item in chunk {
                let (entry, responder) = item?;
                let index = entry.log_id.index;
                match entry.payload {
                    EntryPayload::Blank => {}
                    // An entry with no operation writes nothing (the engine refuses empty batches);
                    // proposers never send one, but a replica must not wedge on it.
                    EntryPayload::Normal(cmd) if cmd.ops.is_empty() => {}
                    EntryPayload::Normal(cmd) => run.push(LogEntry {
                        lsn: kv_domain::Lsn(index),
                        ops: cmd.to_ops(),
                    }),
                    EntryPayload::Membership(m) => {
                        // Everything before it is applied first, so STATE's index is truthful.
                        self.apply_run(&mut run, &mut done)?;
                        let membership = StoredMembership::new(Some(entry.log_id), m);
                        self.update_state(|s| {
                            s.membership = membership.clone();
                            s.last_applied = Some(entry.log_id);
                        })?;
                    }
                }
                done.push((entry.log_id, responder));
            }
            self.apply_run(&mut run, &mut done)?;
        }
        Ok(())
    }

    async fn try_create_snapshot_builder(&mut self, force: bool) -> Option<Self::SnapshotBuilder> {
        // On the state machine's task, between two applies: the view is of exactly `meta`'s index,
        // unless the engine holds entries past it (re-delivery after a restart, before the applies
        // catch up with what the engine kept): then a view would be of a later state, so wait.
        let running = match self.closer.enter().await {
            Ok(guard) => guard,
            Err(e) if force => {
                return Some(Builder {
                    job: Mutex::new(Some(Job::Copied(Err(e)))),
                })
            }
            Err(_) => return None,
        };
        let meta = self.snapshot_meta();
        let applied = meta.last_log_id.map_or(0, |id| id.index);
        if !force && self.engine.last_lsn().0 > applied {
            return None;
        }
        let job = match self.engine.freeze() {
            Ok(Some(view)) => Job::Frozen {
                sm: self.clone(),
                meta,
                view,
                running,
            },
            // A compaction runs: a policy snapshot waits for the next try, a needed one is copied now.
            Ok(None) if !force => return None,
            Ok(None) => Job::Copied(self.copy_snapshot_now()),
            Err(e) => Job::Copied(Err(io_err(e))),
        };
        Some(Builder {
            job: Mutex::new(Some(job)),
        })
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        match self.try_create_snapshot_builder(true).await {
            Some(builder) => builder,
            // Not reached (`force` always gives a builder); kept total rather than a panic.
            None => Builder {
                job: Mutex::new(Some(Job::Copied(self.copy_snapshot_now()))),
            },
        }
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: SnapshotFile,
    ) -> Result<(), io::Error> {
        let _running = self.closer.enter().await?;
        let at = meta.last_log_id.map_or(0, |id| id.index);
        self.replace_contents(&snapshot.path, at)?;
        // Under the lock: a background build must not delete the copy before it is current.
        let _files = self.files.lock();
        // Keep a copy as this node's current snapshot (the received file may be a temporary).
        let kept = self.snapshot_path(meta);
        if snapshot.path != kept {
            std::fs::copy(&snapshot.path, &kept)?;
            std::fs::File::open(&kept)?.sync_all()?;
            RealFs.sync_dir(&self.dir)?;
        }
        // One store: a crash leaves either the old state or the installed one, never the installed
        // index with the old snapshot.
        self.update_state_locked(|s| {
            s.last_applied = meta.last_log_id;
            s.membership = meta.last_membership.clone();
            s.snapshot = Some(meta.clone());
        })?;
        self.remove_other_snapshots(meta)
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<SnapshotOf>, io::Error> {
        let meta = self.state.lock().snapshot.clone();
        Ok(meta.map(|meta| {
            let path = self.snapshot_path(&meta);
            SnapshotOf {
                meta,
                snapshot: SnapshotFile { path },
            }
        }))
    }
}
