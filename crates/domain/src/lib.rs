//! # kv-domain
//!
//! The vocabulary every other crate of the Moniepoint storage engine speaks: the entities ([`Key`],
//! [`Value`], [`Lsn`], [`Location`], [`WriteBatch`], [`EngineStatus`]), the typed [`EngineError`], and the
//! small traits the infrastructure implements:
//!
//! - [`Engine`]: the storage contract (put, get, delete, atomic batch, ordered range scan, status), with
//!   the input checks every engine shares ([`check_record`], [`check_batch`]);
//! - [`LogShipping`]: the replication contract on top of it (read the log back, apply it on a follower);
//! - [`OrderedIndex`]: the in-memory keydir, an ordered map from key to the [`Location`] of its value.
//!
//! The asynchronous ports the use cases wait on ([`AppliedLsn`], [`FollowerAcks`]) are object-safe traits
//! (with `async-trait`) that the HTTP adapter implements and tests fake.
//!
//! [`MemoryEngine`] implements [`Engine`] and [`LogShipping`] over a `BTreeMap`, refusing exactly what the
//! file engine refuses, so the layers above can be tested without disk.
//!
//! This crate depends on nothing of ours (DESIGN §1).

mod engine;
mod entities;
mod error;
mod index;
mod log_shipping;
mod memory;
mod ports;
mod replication;

pub use engine::{
    check_batch, check_record, write_cost, Engine, KeyRange, Write, WriteDone, BATCH_COST,
    MAX_KEY_LEN, MAX_VALUE_LEN, MAX_WRITE_COST, OP_COST,
};
pub use entities::{
    BatchOp, CompactionStats, Durability, EngineStatus, Entry, GroupCommitStats, Key, Location,
    Lsn, RecoveryReport, Value, WriteBatch,
};
pub use error::{EngineError, EngineResult};
pub use index::{Listing, OrderedIndex};
pub use log_shipping::{FrozenView, LogShipping};
pub use memory::MemoryEngine;
pub use ports::{AckRequirement, AppliedLsn, Committed, Consensus, ConsensusError, FollowerAcks};
pub use replication::{LogCursor, LogEntry, LogRead, MetaStore, ReplicaMeta};
