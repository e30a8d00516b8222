//! # kv-infra-raft
//!
//! Replication on Raft for the Moniepoint storage engine. Consensus (terms, elections, log matching,
//! membership changes) comes from openraft, pinned exactly in the workspace `Cargo.toml`; this crate
//! supplies what openraft leaves to the application, and keeps openraft's types out of `domain` and
//! `app`:
//! - [`LogStore`]: the Raft log and vote, on `kv-infra-fs`'s checksummed segment log
//!   ([`kv_infra_fs::raft_log`]);
//! - [`StateMachine`]: the key/value engine, applying committed entries at their index as LSN, with
//!   snapshots of one exact applied index streamed from and into files.
//!
//! - [`Network`]: openraft's messages as JSON over any [`RaftTransport`] (HTTP in `kv-infra-http`);
//! - [`RaftNode`]: a cluster member, with writes, read barriers and status in plain types.
//!
//! openraft's storage conformance suite runs against the log store and state machine (`tests/suite.rs`);
//! `tests/cluster.rs` runs three nodes in one process over an in-process transport.

pub mod identity;
mod log_store;
mod network;
mod node;
mod state_machine;
mod types;

pub use log_store::LogStore;
pub use network::{
    Network, Progress, ProgressRequest, RaftTransport, Rpc, SnapshotChunk, TransportError,
    SNAPSHOT_CHUNK,
};
pub use node::{
    ClusterError, ClusterSettings, ClusterStatus, Member, RaftNode, StartError, Written,
    MAX_APPEND_ENTRIES, QUORUM_SILENCE,
};
pub use state_machine::{Builder, Closer, SnapshotFile, StateMachine};
pub use types::{alias, Applied, Command, NodeId, Op, TypeConfig};
