//! Asynchronous ports: what the use cases of `kv-app` wait on, implemented by the adapters
//! (`kv-infra-http`) and faked in tests. They are object-safe (`async-trait`), so a use case takes a
//! `&dyn` port and needs no socket to be tested.

use std::time::Duration;

use async_trait::async_trait;

use crate::Lsn;

/// How far this node has applied the log, and a wait for it to get further that wakes on progress (a
/// notification, not a poll).
#[async_trait]
pub trait AppliedLsn: Send + Sync {
    /// The LSN applied here now: everything up to it is readable.
    fn applied(&self) -> Lsn;

    /// Waits until [`AppliedLsn::applied`] is at least `lsn`, at most `timeout`. `Err(applied)`: it was
    /// not reached in time; `applied` is where this node stood then.
    async fn wait_applied(&self, lsn: Lsn, timeout: Duration) -> Result<(), Lsn>;
}

/// How many followers must confirm a write, and how long a write waits for them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AckRequirement {
    /// Followers that must have applied a write durably (0: asynchronous replication).
    pub followers: usize,
    /// How long a write waits for them.
    pub timeout: Duration,
}

/// A leader's followers, as far as acknowledging a write needs them.
#[async_trait]
pub trait FollowerAcks: Send + Sync {
    /// Records a write the engine acknowledged at `lsn` (`payload_bytes`: its keys and values), so it is
    /// shipped.
    fn record_write(&self, lsn: Lsn, payload_bytes: usize);

    /// The acknowledgement policy.
    fn requirement(&self) -> AckRequirement;

    /// Waits until the required followers have applied `lsn`. `Err(n)`: only `n` had when the timeout
    /// struck.
    async fn wait_acks(&self, lsn: Lsn) -> Result<(), usize>;
}

/// A write committed by the cluster's consensus: its LSN (the Raft log index) and the leader's term.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Committed {
    /// The write's LSN.
    pub lsn: Lsn,
    /// The term of the leader that committed it.
    pub term: u64,
}

/// Why the consensus did not commit a write (or confirm a linearizable read) here.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConsensusError {
    /// Another node leads: nothing was proposed here; the request belongs there.
    #[error("node {leader_id} leads the cluster, at {leader_url}")]
    NotLeader {
        /// The leader's id.
        leader_id: u64,
        /// The leader's base URL.
        leader_url: String,
    },
    /// No leader with a quorum in time: nothing was written.
    #[error("the cluster has no leader with a quorum: {0}")]
    Unavailable(String),
    /// Proposed, but its fate is unknown: it may or may not take effect.
    #[error("outcome unknown: {0}")]
    Unknown(String),
}

/// Replication by consensus (the Raft cluster): writes are proposed, committed by a quorum, then applied
/// to the local engine at their log index as LSN, before [`Consensus::propose`] returns.
#[async_trait]
pub trait Consensus: Send + Sync + std::fmt::Debug {
    /// Proposes the operations of one write (applied atomically).
    async fn propose(&self, ops: Vec<crate::BatchOp>) -> Result<Committed, ConsensusError>;

    /// Waits until this node has applied every write committed before the call, confirmed by a quorum:
    /// a read of the local engine after it is linearizable. Returns the LSN read at.
    async fn read_barrier(&self) -> Result<Lsn, ConsensusError>;
}
