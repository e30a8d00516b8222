//! openraft's own storage conformance suite (`openraft::testing::log::Suite`) against this crate's
//! [`LogStore`] (the `kv-infra-fs` Raft log) and [`StateMachine`] (an `FsEngine`), each case on a fresh
//! data directory: vote, append, truncate, purge, log state, apply, membership, and snapshot build,
//! install and transfer between two stores.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use kv_domain::Durability;
use kv_infra_fs::raft_log::RaftLogOptions;
use kv_infra_fs::{FsEngine, Options};
use kv_infra_raft::{LogStore, StateMachine, TypeConfig};
use openraft::testing::log::{StoreBuilder, Suite};
use openraft::StorageError;

struct OnDisk;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for OnDisk {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<TypeConfig>> {
        let dir = tempfile::tempdir().unwrap();
        let raft_dir = dir.path().join("raft");
        let (log, _) = LogStore::open(
            &raft_dir,
            RaftLogOptions {
                // Small segments, so the suite's truncations and purges cross segment boundaries.
                max_segment_bytes: 4096,
                ..RaftLogOptions::default()
            },
        )
        .unwrap();
        let engine = FsEngine::open(
            dir.path().join("data"),
            Options {
                durability: Durability::Always,
                ..Options::default()
            },
        )
        .unwrap();
        let sm = StateMachine::open(Arc::new(engine), &raft_dir).unwrap();
        Ok((dir, log, sm))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_storage_conformance_suite() -> Result<(), StorageError<TypeConfig>> {
    Suite::<TypeConfig, LogStore, StateMachine, OnDisk, tempfile::TempDir>::test_all(OnDisk).await
}
