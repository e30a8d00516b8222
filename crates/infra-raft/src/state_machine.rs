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
//! Engine records (checksummed; format in `kv_infra_fs::codec`), in three parts:
//! 1. a batch-header record whose LSN is the copy's *base* index `B` (value [`SNAPSHOT_BASE_MARK`]);
//! 2. every live key, in key order, one put record each at LSN `B`: a copy of the engine read in pages
//!    (so memory stays bounded whatever the store's size) *while entries keep being applied*;
//! 3. the entries applied from `B + 1` through the snapshot's index, in order, as put and tombstone
//!    records at their own indexes (an entry of several operations is several records at one LSN).
//!
//! Exactness by redo: the copy began with the engine at `B` and ended at some later state; every entry
//! applied meanwhile is recorded (`apply_run` applies and records under the state lock, and the copy's
//! end takes that lock), and an entry sets or removes whole keys, so replaying part 3 over part 2 gives
//! exactly the state at the snapshot's index. Writes therefore never wait for a snapshot; the memory it
//! costs is the entries applied during the copy. (Files without part 1, written before it existed, are
//! an exact copy at the snapshot's index.)
//!
//! Installing replaces the engine's contents page by page (each page deletes the keys in its range the
//! snapshot lacks), then writes part 3 in order, all at the snapshot's index as LSN: always the whole
//! file, so a node whose earlier install was cut short (its engine then at that LSN, half replaced) is
//! repaired by the next one.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_util::{Stream, StreamExt};
use kv_domain::{BatchOp, Key, KeyRange, LogEntry, LogShipping};
use kv_infra_fs::codec::{encode_record, RecordKind};
use kv_infra_fs::raft_log::small_file;
use kv_infra_fs::segment::{scan_records, ScanEnd};
use kv_infra_fs::vfs::{FileHandle, FileSystem, RealFs};
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
/// Most committed entries applied with one engine call.
const APPLY_BATCH: usize = 512;
/// The value of a snapshot file's first record, a batch header (no key, a 4-byte value) whose LSN is the
/// copy's base index (see the module doc).
pub const SNAPSHOT_BASE_MARK: &[u8; 4] = b"base";
/// A snapshot file being written is fsynced every this many bytes.
const SNAPSHOT_SYNC_BYTES: usize = 4 << 20;

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
    /// While a snapshot copies the engine: the entries applied since it began (see the module doc).
    /// Locked after `state`, never before.
    capture: Arc<Mutex<Option<Vec<LogEntry>>>>,
    /// Held by a snapshot being built, from its start on the state machine's task to its end, so an
    /// install (which replaces the engine's contents outside `apply`) waits for it.
    building: Arc<tokio::sync::Mutex<()>>,
    /// Serialises the stores of `STATE` (the state machine's task and a snapshot being built both store
    /// it) and the update of `state` they go with. Locked before `state`.
    storing: Arc<Mutex<()>>,
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

/// Creates `path`, replacing a leftover of an interrupted attempt.
fn create_replacing(path: &Path) -> io::Result<Arc<dyn FileHandle>> {
    RealFs.create(path).or_else(|e| {
        if e.kind() == io::ErrorKind::AlreadyExists {
            RealFs.remove(path)?;
            RealFs.create(path)
        } else {
            Err(e)
        }
    })
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
        Ok(Self {
            engine,
            dir: dir.to_path_buf(),
            state: Arc::new(Mutex::new(state)),
            capture: Arc::new(Mutex::new(None)),
            building: Arc::new(tokio::sync::Mutex::new(())),
            storing: Arc::new(Mutex::new(())),
        })
    }

    /// The last applied log id.
    pub fn last_applied(&self) -> Option<LogId> {
        self.state.lock().last_applied
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
        let state = State {
            last_applied: Some(log_id),
            membership: StoredMembership::new(Some(log_id), membership),
            snapshot: None,
            engine_lsn: n,
        };
        let _storing = self.storing.lock();
        self.store_state(&state)?;
        *self.state.lock() = state;
        Ok(n)
    }

    /// Stores `STATE`. IMPORTANT: the engine is synced first, so `STATE` never claims an applied index the
    /// engine could lose (in `never` or `interval` mode a power loss may drop its unsynced tail; openraft
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
    ///
    /// IMPORTANT: the engine call and the recording (in `capture` and `last_applied`) happen under the
    /// state lock, so a snapshot's copy that ends by taking that lock finds every entry whose effect it
    /// may have read recorded (see the module doc).
    fn apply_run(
        &self,
        run: &mut Vec<LogEntry>,
        done: &mut Vec<(LogId, Option<openraft::storage::ApplyResponder<TypeConfig>>)>,
    ) -> io::Result<()> {
        let mut state = self.state.lock();
        if !run.is_empty() {
            if let Err(e) = self.engine.apply_log_unsynced(run) {
                // Some entries may be written, unrecorded: a snapshot being copied would be inexact.
                *self.capture.lock() = None;
                return Err(io_err(e));
            }
            match self.capture.lock().as_mut() {
                Some(captured) => captured.append(run),
                None => run.clear(),
            }
        }
        for (log_id, responder) in done.drain(..) {
            state.last_applied = Some(log_id);
            if let Some(responder) = responder {
                responder.send(Applied { lsn: log_id.index });
            }
        }
        Ok(())
    }

    /// Builds a snapshot while entries keep being applied (see the module doc): `base` is the last
    /// applied entry when the capture began. Stops the capture whatever happens.
    fn fuzzy_snapshot(&self, base: Option<LogId>) -> io::Result<SnapshotOf> {
        let built = self.copy_and_replay(base);
        *self.capture.lock() = None;
        built
    }

    fn copy_and_replay(&self, base: Option<LogId>) -> io::Result<SnapshotOf> {
        let base_index = base.map_or(0, |id| id.index);
        let tmp = self.dir.join("snapshot-building.tmp");
        let file = create_replacing(&tmp)?;
        let mut buf = Vec::new();
        encode_record(
            &mut buf,
            RecordKind::BatchHeader,
            base_index,
            0,
            b"",
            SNAPSHOT_BASE_MARK,
        );
        file.write_all_at(&buf, 0)?;
        let mut offset = buf.len() as u64;
        offset = self.copy_engine(&*file, offset, base_index)?;
        // The end of the copy: every entry whose effect it may have read is recorded by now.
        let (replay, last_applied, membership) = {
            let state = self.state.lock();
            let replay = self.capture.lock().take().ok_or_else(|| {
                io::Error::other("the snapshot's record of applied entries was dropped")
            })?;
            (replay, state.last_applied, state.membership.clone())
        };
        buf.clear();
        for entry in &replay {
            for op in &entry.ops {
                match op {
                    BatchOp::Put { key, value } => encode_record(
                        &mut buf,
                        RecordKind::Put,
                        entry.lsn.0,
                        0,
                        key.as_bytes(),
                        value.as_bytes(),
                    ),
                    BatchOp::Delete { key } => encode_record(
                        &mut buf,
                        RecordKind::Tombstone,
                        entry.lsn.0,
                        0,
                        key.as_bytes(),
                        b"",
                    ),
                };
            }
        }
        file.write_all_at(&buf, offset)?;
        let meta = SnapshotMeta {
            last_log_id: last_applied,
            last_membership: membership,
        };
        self.publish_snapshot(&*file, &tmp, meta)
    }

    /// Writes every live key of the engine to `file` from `offset` on, as put records at LSN `at`, in
    /// pages; returns the offset after the last one.
    fn copy_engine(&self, file: &dyn FileHandle, mut offset: u64, at: u64) -> io::Result<u64> {
        let mut range = KeyRange::all();
        let mut buf = Vec::new();
        let mut unsynced = 0usize;
        loop {
            let page = self.engine.scan(&range, PAGE).map_err(io_err)?;
            buf.clear();
            for entry in &page {
                encode_record(
                    &mut buf,
                    RecordKind::Put,
                    at,
                    0,
                    entry.key.as_bytes(),
                    entry.value.as_bytes(),
                );
            }
            file.write_all_at(&buf, offset)?;
            offset += buf.len() as u64;
            // Flushed as it grows: one fsync of the whole file at the end would hold the disk (and the
            // Raft log's fsyncs queued behind it) for as long as it takes to write it all.
            unsynced += buf.len();
            if unsynced >= SNAPSHOT_SYNC_BYTES {
                file.sync_data()?;
                unsynced = 0;
            }
            match page.last() {
                Some(last) if page.len() == PAGE => range = range.after(last.key.as_bytes()),
                _ => return Ok(offset),
            }
        }
    }

    /// Makes the snapshot written to `tmp` durable under its name, then the current one.
    fn publish_snapshot(
        &self,
        file: &dyn FileHandle,
        tmp: &Path,
        meta: SnapshotMeta,
    ) -> io::Result<SnapshotOf> {
        let path = self.snapshot_path(&meta);
        // IMPORTANT: contents durable, then the name, then the directory entry.
        file.sync_data()?;
        RealFs.rename(tmp, &path)?;
        RealFs.sync_dir(&self.dir)?;
        self.make_current(&meta)?;
        Ok(SnapshotOf {
            meta,
            snapshot: SnapshotFile { path },
        })
    }

    /// Records `meta` as the current snapshot and deletes the older snapshot files.
    fn make_current(&self, meta: &SnapshotMeta) -> io::Result<()> {
        {
            let _storing = self.storing.lock();
            let mut state = self.state.lock().clone();
            state.snapshot = Some(meta.clone());
            self.store_state(&state)?;
            self.state.lock().snapshot = Some(meta.clone());
        }
        let keep = self.snapshot_path(meta);
        for entry in std::fs::read_dir(&self.dir)? {
            let path = entry?.path();
            let is_snapshot = path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("snapshot-"));
            if is_snapshot && path != keep {
                std::fs::remove_file(&path)?;
            }
        }
        Ok(())
    }

    /// Replaces the engine's contents with the snapshot in `file` (see the module doc): its copy page by
    /// page, then the entries it recorded, all at LSN `at` (its index).
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
        // A file without a base record (older) is an exact copy at `at`.
        let mut base: Option<u64> = None;
        let mut first = true;
        let mut page: Vec<BatchOp> = Vec::with_capacity(PAGE);
        let mut after: Option<Key> = None;
        // The recorded entries (part 3), in order: written after the copy's last page.
        let mut replay: Vec<BatchOp> = Vec::new();
        let mut last_replayed = 0u64;
        let mut failed: Option<io::Error> = None;
        let ended = scan_records(&*handle, 0, len, |_, rec| {
            if failed.is_some() {
                return Ok(());
            }
            if std::mem::take(&mut first)
                && rec.header.kind == RecordKind::BatchHeader
                && rec.value == SNAPSHOT_BASE_MARK
            {
                if rec.header.lsn > at {
                    failed = Some(invalid(format!(
                        "snapshot {}: its copy's base {} is past its index {at}",
                        file.display(),
                        rec.header.lsn
                    )));
                }
                base = Some(rec.header.lsn);
                return Ok(());
            }
            let copy_at = base.unwrap_or(at);
            let op = match rec.header.kind {
                RecordKind::Put => BatchOp::Put {
                    key: Key::from(rec.key),
                    value: kv_domain::Value::from(rec.value.to_vec()),
                },
                RecordKind::Tombstone => BatchOp::Delete {
                    key: Key::from(rec.key),
                },
                RecordKind::BatchHeader => {
                    failed = Some(invalid(format!(
                        "snapshot {}: a stray batch header",
                        file.display()
                    )));
                    return Ok(());
                }
            };
            let lsn = rec.header.lsn;
            if lsn == copy_at && matches!(op, BatchOp::Put { .. }) && replay.is_empty() {
                page.push(op);
                if page.len() == PAGE {
                    if let Err(e) = self.install_page(&mut page, &mut after, at, false) {
                        failed = Some(e);
                    }
                }
            } else if lsn <= copy_at || lsn > at || lsn < last_replayed {
                failed = Some(invalid(format!(
                    "snapshot {}: a record at LSN {lsn} out of order or outside ({copy_at}, {at}]",
                    file.display()
                )));
            } else {
                last_replayed = lsn;
                replay.push(op);
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
        self.install_page(&mut page, &mut after, at, true)?;
        // Each op as its own record at `at`, in order: the final value of every key they touch is the
        // one at the snapshot's index. Durable on return, like the pages.
        for ops in replay.chunks(PAGE) {
            self.engine
                .install_snapshot_page(kv_domain::Lsn(at), ops)
                .map_err(io_err)?;
        }
        Ok(())
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

/// Builds a snapshot while entries keep being applied (see the module doc). It holds the state
/// machine's `building` lock from its creation on the state machine's task, where the capture of
/// applied entries began, to its end.
pub struct Builder {
    sm: StateMachine,
    /// The last applied entry when the capture began.
    base: Option<LogId>,
    _building: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl std::fmt::Debug for Builder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Builder")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

/// A builder dropped before its copy began stops the capture (it would grow for good).
impl Drop for Builder {
    fn drop(&mut self) {
        if self._building.is_some() {
            *self.sm.capture.lock() = None;
        }
    }
}

impl RaftSnapshotBuilder<TypeConfig> for Builder {
    type SnapshotData = SnapshotFile;

    async fn build_snapshot(&mut self) -> Result<SnapshotOf, io::Error> {
        if self._building.is_none() {
            return Err(io::Error::other("a snapshot is already being built"));
        }
        let (sm, base) = (self.sm.clone(), self.base);
        // The copy reads the whole engine: on a blocking thread, not an async worker. It holds the
        // `building` lock to its end, even if this future is dropped meanwhile.
        let building = self._building.take();
        tokio::task::spawn_blocking(move || {
            let built = sm.fuzzy_snapshot(base);
            drop(building);
            built
        })
        .await
        .map_err(io::Error::other)?
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
                        let _storing = self.storing.lock();
                        let mut state = self.state.lock().clone();
                        state.membership = StoredMembership::new(Some(entry.log_id), m);
                        state.last_applied = Some(entry.log_id);
                        self.store_state(&state)?;
                        *self.state.lock() = state;
                    }
                }
                done.push((entry.log_id, responder));
            }
            self.apply_run(&mut run, &mut done)?;
        }
        Ok(())
    }

    /// `None` (not now) while a snapshot is being built, unless `force`d (openraft forces one only at
    /// start, when none can be).
    async fn try_create_snapshot_builder(&mut self, force: bool) -> Option<Self::SnapshotBuilder> {
        if !force && self.building.try_lock().is_err() {
            return None;
        }
        Some(self.get_snapshot_builder().await)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        // On the state machine's task: no entry is applied between reading the base and starting the
        // capture. openraft builds one snapshot at a time; a second one meanwhile is refused.
        let building = self.building.clone().try_lock_owned().ok();
        let state = self.state.lock();
        if building.is_some() {
            *self.capture.lock() = Some(Vec::new());
        }
        Builder {
            sm: self.clone(),
            base: state.last_applied,
            _building: building,
        }
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: SnapshotFile,
    ) -> Result<(), io::Error> {
        let at = meta.last_log_id.map_or(0, |id| id.index);
        // A snapshot being built copies the engine: it must not see the contents replaced under it.
        let _building = self.building.lock().await;
        self.replace_contents(&snapshot.path, at)?;
        // Keep a copy as this node's current snapshot (the received file may be a temporary).
        let kept = self.snapshot_path(meta);
        if snapshot.path != kept {
            std::fs::copy(&snapshot.path, &kept)?;
            std::fs::File::open(&kept)?.sync_all()?;
            RealFs.sync_dir(&self.dir)?;
        }
        {
            let _storing = self.storing.lock();
            let mut state = self.state.lock().clone();
            state.last_applied = meta.last_log_id;
            state.membership = meta.last_membership.clone();
            self.store_state(&state)?;
            *self.state.lock() = state;
        }
        self.make_current(meta)
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use kv_domain::{
        CompactionStats, Engine, EngineResult, EngineStatus, Entry, LogCursor, LogRead, Lsn,
        MemoryEngine, Value, WriteBatch,
    };
    use openraft::vote::RaftLeaderId;

    /// A memory engine that runs `hook` once, right after the first page a scan reads: entries applied
    /// by it are missing from a snapshot's copy, as when they are applied while the copy runs.
    #[derive(Default)]
    struct Hooked {
        inner: MemoryEngine,
        hook: Mutex<Option<Box<dyn FnOnce() + Send>>>,
    }

    impl Engine for Hooked {
        fn put(&self, key: &[u8], value: &[u8]) -> EngineResult<Lsn> {
            self.inner.put(key, value)
        }
        fn get(&self, key: &[u8]) -> EngineResult<Option<Value>> {
            self.inner.get(key)
        }
        fn delete(&self, key: &[u8]) -> EngineResult<Lsn> {
            self.inner.delete(key)
        }
        fn write_batch(&self, batch: &WriteBatch) -> EngineResult<Lsn> {
            self.inner.write_batch(batch)
        }
        fn scan(&self, range: &KeyRange, limit: usize) -> EngineResult<Vec<Entry>> {
            let page = self.inner.scan(range, limit);
            let hook = self.hook.lock().take();
            if let Some(hook) = hook {
                hook();
            }
            page
        }
        fn scan_keys(&self, range: &KeyRange, limit: usize) -> EngineResult<Vec<Key>> {
            self.inner.scan_keys(range, limit)
        }
        fn last_lsn(&self) -> Lsn {
            self.inner.last_lsn()
        }
        fn sync(&self) -> EngineResult<()> {
            self.inner.sync()
        }
        fn status(&self) -> EngineStatus {
            self.inner.status()
        }
        fn compact(&self) -> EngineResult<CompactionStats> {
            self.inner.compact()
        }
    }

    impl LogShipping for Hooked {
        fn durable_lsn(&self) -> Lsn {
            self.inner.durable_lsn()
        }
        fn read_log(&self, from: &LogCursor, max_bytes: usize) -> EngineResult<LogRead> {
            self.inner.read_log(from, max_bytes)
        }
        fn retain_log_after(&self, lsn: Option<Lsn>) {
            self.inner.retain_log_after(lsn)
        }
        fn apply_log(&self, entries: &[LogEntry]) -> EngineResult<Lsn> {
            self.inner.apply_log(entries)
        }
        fn install_snapshot_page(&self, at: Lsn, ops: &[BatchOp]) -> EngineResult<()> {
            self.inner.install_snapshot_page(at, ops)
        }
    }

    fn log_id(index: u64) -> LogId {
        let leader = openraft::type_config::alias::LeaderIdOf::<TypeConfig>::new(1, 1);
        LogId::new(leader.to_committed(), index)
    }

    fn put(k: &str, v: &str) -> BatchOp {
        BatchOp::Put {
            key: Key::from(k),
            value: Value::from(v),
        }
    }

    fn delete(k: &str) -> BatchOp {
        BatchOp::Delete { key: Key::from(k) }
    }

    /// Applies `entries` (index, ops) as the state machine's task does.
    fn apply(sm: &StateMachine, entries: Vec<(u64, Vec<BatchOp>)>) {
        let mut done = entries.iter().map(|(i, _)| (log_id(*i), None)).collect();
        let mut run = entries
            .into_iter()
            .map(|(i, ops)| LogEntry { lsn: Lsn(i), ops })
            .collect();
        sm.apply_run(&mut run, &mut done).unwrap();
    }

    fn contents(engine: &dyn Engine) -> Vec<(Key, Value)> {
        engine
            .scan(&KeyRange::all(), usize::MAX)
            .unwrap()
            .into_iter()
            .map(|e| (e.key, e.value))
            .collect()
    }

    /// Entries applied while a snapshot copies the engine (here: after its first page) are recorded and
    /// replayed: the snapshot is the state at the last of them, installed alike on an empty node and on
    /// one whose engine already holds the copy's base.
    #[tokio::test]
    async fn a_snapshot_taken_while_entries_are_applied_is_the_state_at_its_index() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Arc::new(Hooked::default());
        let mut sm = StateMachine::open(engine.clone(), &dir.path().join("a")).unwrap();
        let early = vec![
            (1, vec![put("a", "1")]),
            (2, vec![put("b", "2"), put("c", "3")]),
            (3, vec![put("d", "4")]),
        ];
        apply(&sm, early.clone());
        let mut builder = sm.get_snapshot_builder().await;
        let during = sm.clone();
        *engine.hook.lock() = Some(Box::new(move || {
            apply(
                &during,
                vec![
                    (4, vec![put("a", "new")]),
                    (5, vec![delete("b")]),
                    (6, vec![put("e", "5"), delete("c")]),
                ],
            )
        }));
        let snapshot = builder.build_snapshot().await.unwrap();
        assert_eq!(snapshot.meta.last_log_id, Some(log_id(6)));
        let want = contents(&*engine);
        assert_eq!(
            want,
            vec![
                (Key::from("a"), Value::from("new")),
                (Key::from("d"), Value::from("4")),
                (Key::from("e"), Value::from("5")),
            ]
        );
        assert!(
            sm.capture.lock().is_none(),
            "the capture ends with the build"
        );

        for base_applied in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let other = Arc::new(Hooked::default());
            let mut to = StateMachine::open(other.clone(), dir.path()).unwrap();
            if base_applied {
                apply(&to, early.clone());
            }
            to.install_snapshot(&snapshot.meta, snapshot.snapshot.clone())
                .await
                .unwrap();
            assert_eq!(contents(&*other), want, "base applied: {base_applied}");
            assert_eq!(other.last_lsn(), Lsn(6));
            assert_eq!(to.last_applied(), Some(log_id(6)));
        }

        // An install cut short (a crash after its first page) leaves the engine at the snapshot's
        // index, half replaced; the next install of the same snapshot must still replace it all.
        let dir = tempfile::tempdir().unwrap();
        let other = Arc::new(Hooked::default());
        let mut to = StateMachine::open(other.clone(), dir.path()).unwrap();
        apply(&to, early.clone());
        apply(&to, vec![(4, vec![put("stale", "x")])]);
        other
            .install_snapshot_page(Lsn(6), &[put("a", "half")])
            .unwrap();
        to.install_snapshot(&snapshot.meta, snapshot.snapshot.clone())
            .await
            .unwrap();
        assert_eq!(contents(&*other), want, "after an interrupted install");
    }

    /// A copy of several pages, with entries landing meanwhile in a page already copied and in one not
    /// yet copied (a put then a delete of one key among them): installed, it equals the source.
    #[tokio::test]
    async fn a_snapshot_of_several_pages_is_exact_whichever_pages_the_writes_meanwhile_touch() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Arc::new(Hooked::default());
        let mut sm = StateMachine::open(engine.clone(), dir.path()).unwrap();
        let keys = 3 * PAGE as u64;
        apply(
            &sm,
            (1..=keys)
                .map(|i| (i, vec![put(&format!("k{i:05}"), "old")]))
                .collect(),
        );
        let mut builder = sm.get_snapshot_builder().await;
        let during = sm.clone();
        *engine.hook.lock() = Some(Box::new(move || {
            let n = keys;
            apply(
                &during,
                vec![
                    (n + 1, vec![put("k00002", "new"), delete("k00003")]),
                    (n + 2, vec![put(&format!("k{:05}", n - 1), "new")]),
                    (n + 3, vec![delete(&format!("k{:05}", n - 2))]),
                    (n + 4, vec![put("k99999", "added"), delete("k99999")]),
                    (n + 5, vec![put("k00002", "newer")]),
                ],
            )
        }));
        let snapshot = builder.build_snapshot().await.unwrap();
        assert_eq!(snapshot.meta.last_log_id, Some(log_id(keys + 5)));
        let want = contents(&*engine);
        assert_eq!(want.len() as u64, keys - 2);
        let dir = tempfile::tempdir().unwrap();
        let other = Arc::new(Hooked::default());
        let mut to = StateMachine::open(other.clone(), dir.path()).unwrap();
        to.install_snapshot(&snapshot.meta, snapshot.snapshot)
            .await
            .unwrap();
        assert_eq!(contents(&*other), want);
    }
}
