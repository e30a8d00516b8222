//! # kv-app
//!
//! The use cases of the store, over `kv_domain`'s traits and ports only: [`KvService::put`],
//! [`KvService::read`], [`KvService::read_range`], [`KvService::batch_put`] and [`KvService::delete`].
//! Input is validated here, against configurable [`Limits`], before anything reaches the engine: an invalid
//! request is rejected with a typed [`AppError`] and writes nothing.
//!
//! [`Replica`] holds the follower's use cases: applying the leader's log and installing its snapshots, with
//! the history, gap and snapshot checks that keep a follower a faithful prefix of its leader.
//!
//! The rest is what every adapter (the HTTP server, `kvctl`) shares:
//! - [`Pager`]: the one walk of a key range a page at a time, with the inversion check ([`check_range`]);
//! - [`wait_for_lsn`]: a read's wait for a minimum LSN, over the [`kv_domain::AppliedLsn`] port;
//! - [`replicate_write`]: shipping a leader's write and waiting for follower acknowledgements, over the
//!   [`kv_domain::FollowerAcks`] port, with a typed [`WriteOutcome`];
//! - [`leader_history`]: the history id a data directory leads, created at its first start as leader.

mod consistency;
mod history;
mod limits;
mod pager;
mod service;

pub use consistency::{replicate_write, wait_for_lsn, LsnNotReached, WriteOutcome};
pub use history::{leader_history, HistoryError, LeaderHistory};
pub use limits::Limits;
pub use pager::{check_range, Pager, Pages};
pub use service::{Acked, AppError, KvService};

mod replica;
pub use replica::{MemoryMetaStore, Replica, ReplicaError, ReplicaState, SnapshotPage};
