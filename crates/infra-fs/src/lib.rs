//! # kv-infra-fs
//!
//! The Bitcask-style storage of the Moniepoint storage engine: checksummed, append-only log segments
//! ([`codec`], [`segment`]), crash recovery ([`recovery`]), the keydir implementations ([`index`]), and
//! [`FsEngine`], which implements [`kv_domain::Engine`] over them with group commit and fail-stop I/O.
//! All file I/O goes through the [`vfs`] seam (reads of segments through the memory maps of [`mapped`],
//! the only `unsafe` code); [`sim`] is a simulated file system for crash tests.
//! [`dump`] prints a segment record by record (golden tests, debugging). [`raft_log`] is the Raft
//! cluster's durable log and vote, on the same record format.

pub mod codec;
pub mod dump;
mod engine;
mod garbage;
pub mod hint;
pub mod index;
mod keydir;
pub mod manifest;
pub mod mapped;
pub mod meta;
mod options;
pub mod raft_log;
pub mod recovery;
pub mod repair;
pub mod segment;
pub mod sim;
pub mod vfs;

pub use engine::FsEngine;
pub use meta::FileMetaStore;
pub use options::{AutoCompaction, Clock, IndexKind, Options};
