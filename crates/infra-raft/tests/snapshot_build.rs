//! A snapshot is the state at exactly one applied index although it is built while applies go on (see
//! the state machine's module doc): the builder freezes the engine between two applies, the build reads
//! the frozen view later. And a build that finishes after a newer snapshot was installed leaves the
//! newer one current.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use kv_domain::{BatchOp, Durability, Engine, Key, KeyRange, Value};
use kv_infra_fs::segment::{scan_records, ScanEnd};
use kv_infra_fs::vfs::{FileSystem, RealFs};
use kv_infra_fs::{FsEngine, Options};
use kv_infra_raft::alias::{Entry, LogId};
use kv_infra_raft::{Command, StateMachine, TypeConfig};
use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use openraft::vote::RaftLeaderId;
use openraft::EntryPayload;

type Contents = BTreeMap<Vec<u8>, Vec<u8>>;

fn open_engine(dir: &Path) -> Arc<FsEngine> {
    Arc::new(
        FsEngine::open(
            dir.join("data"),
            Options {
                durability: Durability::Never,
                max_segment_bytes: 16 << 10,
                ..Options::default()
            },
        )
        .unwrap(),
    )
}

fn entry(index: u64, op: BatchOp) -> Entry {
    let leader = openraft::type_config::alias::LeaderIdOf::<TypeConfig>::new(1, 1);
    Entry {
        log_id: LogId::new(leader.to_committed(), index),
        payload: EntryPayload::Normal(Command::from_ops(&[op])),
    }
}

fn put(key: u64, round: u64) -> BatchOp {
    BatchOp::Put {
        key: Key::from(format!("k{key:03}").as_str()),
        value: Value::from(format!("v{round}-{}", "x".repeat(200)).as_str()),
    }
}

fn delete(key: u64) -> BatchOp {
    BatchOp::Delete {
        key: Key::from(format!("k{key:03}").as_str()),
    }
}

/// Applies entries `from..=to`, the op of each made by `op(index)`.
async fn apply(sm: &mut StateMachine, from: u64, to: u64, op: impl Fn(u64) -> BatchOp) {
    let entries: Vec<_> = (from..=to).map(|i| Ok((entry(i, op(i)), None))).collect();
    sm.apply(futures_util::stream::iter(entries)).await.unwrap();
}

fn contents(engine: &dyn Engine) -> Contents {
    engine
        .scan(&KeyRange::all(), usize::MAX)
        .unwrap()
        .into_iter()
        .map(|e| (e.key.into_bytes(), e.value.into_bytes()))
        .collect()
}

/// The records of a snapshot file, checking each carries the snapshot's index as its LSN.
fn snapshot_contents(path: &Path, index: u64) -> Contents {
    let file = RealFs.open(path).unwrap();
    let len = file.len().unwrap();
    let mut out = Contents::new();
    let end = scan_records(&*file, 0, len, |_, rec| {
        assert_eq!(rec.header.lsn, index);
        out.insert(rec.key.to_vec(), rec.value.to_vec());
        Ok(())
    })
    .unwrap();
    assert!(matches!(end, ScanEnd::Clean), "{end:?}");
    out
}

#[tokio::test]
async fn a_snapshot_is_the_state_at_its_index_though_applies_go_on_while_it_is_built() {
    let root = tempfile::tempdir().unwrap();
    let engine = open_engine(root.path());
    let mut sm = StateMachine::open(engine.clone(), &root.path().join("raft")).unwrap();
    apply(&mut sm, 1, 300, |i| put(i % 150, i)).await;
    let at_300 = contents(&*engine);
    assert_eq!(at_300.len(), 150);

    let mut builder = sm.try_create_snapshot_builder(false).await.unwrap();
    // Overwrites, deletes and new keys after the builder was made, several segments' worth, and a
    // compaction attempt: none of it may show in the snapshot.
    apply(&mut sm, 301, 500, |i| match i % 3 {
        0 => delete(i % 150),
        1 => put(i % 150, i),
        _ => put(150 + i, i),
    })
    .await;
    assert!(engine.compact().is_err(), "compaction while a view is read");
    let at_500 = contents(&*engine);
    assert_ne!(at_500, at_300);

    let built = builder.build_snapshot().await.unwrap();
    assert_eq!(built.meta.last_log_id.unwrap().index, 300);
    assert_eq!(snapshot_contents(&built.snapshot.path, 300), at_300);
    let current = sm.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta.last_log_id.unwrap().index, 300);
    // The view is gone with the build: compaction runs again, and the engine kept every later write.
    engine.compact().unwrap();
    assert_eq!(contents(&*engine), at_500);
    assert!(
        builder.build_snapshot().await.is_err(),
        "a builder builds once"
    );
}

#[tokio::test]
async fn a_build_that_ends_after_a_newer_install_leaves_the_installed_snapshot_current() {
    let root = tempfile::tempdir().unwrap();
    // The leader's side: a snapshot at 400.
    let leader_engine = open_engine(&root.path().join("leader"));
    let mut leader =
        StateMachine::open(leader_engine.clone(), &root.path().join("leader/raft")).unwrap();
    apply(&mut leader, 1, 400, |i| put(i % 120, i)).await;
    let sent = leader
        .try_create_snapshot_builder(true)
        .await
        .unwrap()
        .build_snapshot()
        .await
        .unwrap();

    // This node: at 200, a build starts; the leader's snapshot is installed before it ends.
    let engine = open_engine(&root.path().join("node"));
    let mut sm = StateMachine::open(engine.clone(), &root.path().join("node/raft")).unwrap();
    apply(&mut sm, 1, 200, |i| put(i % 120, i)).await;
    let mut builder = sm.try_create_snapshot_builder(false).await.unwrap();
    let incoming = root.path().join("incoming.snap");
    std::fs::copy(&sent.snapshot.path, &incoming).unwrap();
    let received = kv_infra_raft::SnapshotFile { path: incoming };
    sm.install_snapshot(&sent.meta, received).await.unwrap();
    let late = builder.build_snapshot().await.unwrap();
    assert_eq!(late.meta.last_log_id.unwrap().index, 200);

    let current = sm.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(
        current.meta, sent.meta,
        "the installed snapshot stays current"
    );
    assert_eq!(
        snapshot_contents(&current.snapshot.path, 400),
        contents(&*leader_engine)
    );
    assert!(
        !late.snapshot.path.exists(),
        "the late build's file is removed"
    );
    assert_eq!(contents(&*engine), contents(&*leader_engine));
    let (applied, _) = sm.applied_state().await.unwrap();
    assert_eq!(applied.unwrap().index, 400);
}

/// A node whose Raft log, cut by damage, ends below what its `STATE` says is applied, and whose snapshot
/// is older than that, starts from the snapshot's index (openraft would otherwise purge its log through
/// the applied index, past the snapshot, and stop on its invariant); with a log that reaches the applied
/// index, or a snapshot that does, nothing changes.
#[tokio::test]
async fn a_log_cut_below_the_applied_index_falls_back_to_the_snapshot() {
    let root = tempfile::tempdir().unwrap();
    let engine = open_engine(root.path());
    let mut sm = StateMachine::open(engine.clone(), &root.path().join("raft")).unwrap();
    assert!(!sm.fall_back_to_snapshot(None), "nothing applied");
    apply(&mut sm, 1, 100, |i| put(i, i)).await;
    assert!(!sm.fall_back_to_snapshot(Some(100)));
    sm.try_create_snapshot_builder(true)
        .await
        .unwrap()
        .build_snapshot()
        .await
        .unwrap();
    assert!(
        !sm.fall_back_to_snapshot(Some(50)),
        "the snapshot covers the applied index"
    );
    apply(&mut sm, 101, 150, |i| put(i, i)).await;
    assert!(
        !sm.fall_back_to_snapshot(Some(150)),
        "the log reaches the applied index"
    );
    assert!(sm.fall_back_to_snapshot(Some(120)));
    let (applied, _) = sm.applied_state().await.unwrap();
    assert_eq!(applied.unwrap().index, 100);
    // Re-delivery of what the engine holds changes nothing.
    let before = contents(&*engine);
    apply(&mut sm, 101, 150, |i| put(i, i)).await;
    assert_eq!(contents(&*engine), before);

    // No snapshot: back to the start.
    let root = tempfile::tempdir().unwrap();
    let mut sm = StateMachine::open(open_engine(root.path()), &root.path().join("raft")).unwrap();
    apply(&mut sm, 1, 10, |i| put(i, i)).await;
    assert!(sm.fall_back_to_snapshot(Some(5)));
    assert_eq!(sm.applied_state().await.unwrap().0, None);
}

/// While the engine holds entries past the applied index (after a restart, before re-delivery catches
/// up with what the engine kept), a view would be of a later state than the snapshot's index: a policy
/// snapshot waits until the applies have caught up.
#[tokio::test]
async fn no_policy_snapshot_while_the_engine_is_ahead_of_the_applied_index() {
    let root = tempfile::tempdir().unwrap();
    let engine = open_engine(root.path());
    let mut sm = StateMachine::open(engine.clone(), &root.path().join("raft")).unwrap();
    apply(&mut sm, 1, 40, |i| put(i, i)).await;
    sm.fall_back_to_snapshot(Some(20)); // no snapshot: back to the start, the engine keeps 40
    assert!(sm.try_create_snapshot_builder(false).await.is_none());
    apply(&mut sm, 1, 40, |i| put(i, i)).await;
    let mut builder = sm.try_create_snapshot_builder(false).await.unwrap();
    let built = builder.build_snapshot().await.unwrap();
    assert_eq!(built.meta.last_log_id.unwrap().index, 40);
    assert_eq!(
        snapshot_contents(&built.snapshot.path, 40),
        contents(&*engine)
    );
}

/// The files of a Raft directory, with their contents: what a shutdown must leave alone once it returned.
fn raft_files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let path = e.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&path).unwrap())
        })
        .collect()
}

/// A builder made before the close holds the close until its build ends; the build, run after the
/// close began, stops and leaves nothing; and after the close every command that writes fails without
/// touching the engine or the files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_waits_for_a_builder_not_yet_built_and_later_commands_fail() {
    let root = tempfile::tempdir().unwrap();
    let raft_dir = root.path().join("raft");
    let engine = open_engine(root.path());
    let mut sm = StateMachine::open(engine.clone(), &raft_dir).unwrap();
    apply(&mut sm, 1, 300, |i| put(i % 150, i)).await;
    let first = sm
        .try_create_snapshot_builder(false)
        .await
        .unwrap()
        .build_snapshot()
        .await
        .unwrap();
    apply(&mut sm, 301, 500, |i| put(i % 150, i)).await;
    let mut builder = sm.try_create_snapshot_builder(false).await.unwrap();
    let before = raft_files(&raft_dir);
    let held = contents(&*engine);

    let closer = sm.closer();
    let close = tokio::spawn(async move { closer.close().await });
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(!close.is_finished(), "close returned while a builder lives");
    assert!(
        builder.build_snapshot().await.is_err(),
        "a build after close began"
    );
    drop(builder);
    tokio::time::timeout(std::time::Duration::from_secs(10), close)
        .await
        .expect("close returns once the builder is gone")
        .unwrap();
    assert_eq!(raft_files(&raft_dir), before, "nothing written or removed");

    // Every command that writes fails now, and changes nothing.
    let entries = vec![Ok((entry(501, put(1, 501)), None))];
    assert!(sm.apply(futures_util::stream::iter(entries)).await.is_err());
    assert!(sm.try_create_snapshot_builder(false).await.is_none());
    assert!(sm
        .try_create_snapshot_builder(true)
        .await
        .unwrap()
        .build_snapshot()
        .await
        .is_err());
    let incoming = root.path().join("incoming.snap");
    std::fs::copy(&first.snapshot.path, &incoming).unwrap();
    let received = kv_infra_raft::SnapshotFile { path: incoming };
    assert!(sm.install_snapshot(&first.meta, received).await.is_err());
    assert_eq!(contents(&*engine), held, "the engine is unchanged");
    assert_eq!(raft_files(&raft_dir), before, "the files are unchanged");
    let current = sm.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta, first.meta);
    assert_eq!(sm.applied_state().await.unwrap().0.unwrap().index, 500);
    // The stopped build let go of its view: compaction runs again.
    engine.compact().unwrap();
}

/// A build running when the close is called stops at its next page, removes its file, and the close
/// returns only after that. A build can outrun the close on a loaded machine; the test then tries again
/// on a fresh state machine, and needs one attempt in which the close caught the build.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_waits_for_a_build_in_flight_and_nothing_changes_after_it() {
    for attempt in 1..=3 {
        let root = tempfile::tempdir().unwrap();
        let raft_dir = root.path().join("raft");
        let engine = open_engine(root.path());
        let mut sm = StateMachine::open(engine.clone(), &raft_dir).unwrap();
        // Enough keys for a build of many pages, so that it is still running when close is called.
        apply(&mut sm, 1, 40_000, |i| put(i, i)).await;
        let mut builder = sm.try_create_snapshot_builder(false).await.unwrap();
        let build = tokio::spawn(async move { builder.build_snapshot().await });
        let started = std::time::Instant::now();
        while !raft_files(&raft_dir)
            .keys()
            .any(|name| name.ends_with(".snap.tmp"))
        {
            assert!(!build.is_finished(), "the build ended before it was seen");
            assert!(started.elapsed().as_secs() < 30, "the build never started");
            tokio::time::sleep(std::time::Duration::from_micros(200)).await;
        }

        sm.close().await;
        let after_close = raft_files(&raft_dir);
        assert!(
            !after_close.keys().any(|name| name.ends_with(".tmp")),
            "a stopped build leaves no file: {:?}",
            after_close.keys().collect::<Vec<_>>()
        );
        let built = build.await.unwrap();
        assert_eq!(
            raft_files(&raft_dir),
            after_close,
            "the build changed the Raft directory after close returned"
        );
        if built.is_err() {
            assert!(sm.get_current_snapshot().await.unwrap().is_none());
            return;
        }
        eprintln!("attempt {attempt}: the build finished before the close; again");
    }
    panic!("the close never caught a build in flight");
}
