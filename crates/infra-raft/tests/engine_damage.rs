//! An engine that comes back from a crash with fewer writes than `raft/STATE` says it had applied (its
//! newest segment damaged mid-way, so recovery cut writes that were durable) must not be served: openraft
//! re-applies only entries after STATE's index, so those writes would be missing for good. The state
//! machine refuses to open instead, naming the rebuild; an intact engine opens.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;

use kv_domain::{Durability, Engine};
use kv_infra_fs::{FsEngine, Options};
use kv_infra_raft::StateMachine;
use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};

fn open_engine(dir: &Path) -> Arc<FsEngine> {
    Arc::new(
        FsEngine::open(
            dir.join("data"),
            Options {
                durability: Durability::Always,
                ..Options::default()
            },
        )
        .unwrap(),
    )
}

fn newest_segment(dir: &Path) -> std::path::PathBuf {
    let mut segs: Vec<_> = std::fs::read_dir(dir.join("data"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    segs.sort();
    segs.pop().unwrap()
}

#[tokio::test]
async fn an_engine_that_lost_applied_writes_is_refused_and_an_intact_one_opens() {
    let root = tempfile::tempdir().unwrap();
    let raft_dir = root.path().join("raft");
    {
        let engine = open_engine(root.path());
        for i in 0..50u32 {
            engine
                .put(format!("key-{i:03}").as_bytes(), &[b'v'; 64])
                .unwrap();
        }
        // A snapshot stores STATE (after an engine sync), recording the engine's last LSN.
        let mut sm = StateMachine::open(engine.clone(), &raft_dir).unwrap();
        sm.get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
    }
    // Intact: it opens again.
    StateMachine::open(open_engine(root.path()), &raft_dir).unwrap();

    // A flipped byte in the middle of the newest segment: recovery keeps the records before it.
    let seg = newest_segment(root.path());
    let mut bytes = std::fs::read(&seg).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x40;
    std::fs::write(&seg, bytes).unwrap();
    let engine = open_engine(root.path());
    assert!(engine.last_lsn().0 < 50, "the damage cut nothing");
    let err = StateMachine::open(engine, &raft_dir)
        .unwrap_err()
        .to_string();
    assert!(err.contains("lost writes it had applied"), "{err}");
    assert!(err.contains("Rebuild this node"), "{err}");
}
