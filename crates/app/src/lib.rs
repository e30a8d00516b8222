//! # kv-app
//!
//! The use cases of the store, over the [`kv_domain::Engine`] trait only: [`KvService::put`],
//! [`KvService::read`], [`KvService::read_range`], [`KvService::batch_put`] and [`KvService::delete`].
//! Input is validated here, against configurable [`Limits`], before anything reaches the engine: an invalid
//! request is rejected with a typed [`AppError`] and writes nothing.
//!
//! [`Replica`] holds the follower's use cases: applying the leader's log and installing its snapshots, with
//! the history, gap and snapshot checks that keep a follower a faithful prefix of its leader.

mod consistency;
mod history;
mod limits;
mod pager;
mod service;

pub use consistency::{replicate_write, wait_for_lsn, LsnNotReached, WriteOutcome};
pub use history::{leader_history, HistoryError, LeaderHistory};
pub use limits::Limits;
pub use pager::{check_range, Pager, Pages};
pub use service::{AppError, KvService};
mod replica;

pub use replica::{MemoryMetaStore, Replica, ReplicaError, ReplicaState, SnapshotPage};
