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
