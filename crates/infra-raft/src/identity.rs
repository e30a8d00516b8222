//! What a node that joins by invitation remembers about itself (the learner topology of
//! `REPLICATION_MODE=follower`, `docs/cluster.md`): its own node id and the id of the cluster it
//! belongs to. Both are [`small_file`]s in `<data dir>/raft/`, stored durably before they are used.
//!
//! - `NODE_ID` (u64, little-endian): chosen at random the first time the node starts, so it is unique
//!   per data directory. A follower knows only its leader's URL, never its own, so it cannot be
//!   numbered from the configuration; the leader asks it for this id (`GET /v1/cluster`) and adds it
//!   as a learner. A wiped directory gets a new id: it rejoins as a new learner and never reuses the
//!   vote or log position of the old one.
//! - `CLUSTER_ID` (UTF-8): the id of the first cluster whose leader reached this node (its leader's
//!   history id). From then on the node refuses Raft messages of any other cluster, so a leader
//!   restarted on an empty directory (a new history) cannot overwrite what the follower holds.
//!
//! And, for a node that forms a cluster (the first member, or a `REPLICATION_MODE` leader),
//! `RAFT_FORMED` in the data directory itself, outside `raft/` (empty): the directory formed a
//! cluster. A pristine `raft/` beside it means `raft/` was lost, not that the node is new: forming
//! again would start a second cluster (or history) beside the first, so the node refuses to start.

use std::hash::{BuildHasher, Hasher};
use std::io;
use std::path::Path;

use kv_infra_fs::raft_log::small_file;
use kv_infra_fs::vfs::{FileSystem, RealFs};

use crate::types::NodeId;

const NODE_ID: &str = "NODE_ID";
const CLUSTER_ID: &str = "CLUSTER_ID";
const FORMED: &str = "RAFT_FORMED";

/// Ids chosen here lie in `[2^40, 2^52)`: far from the small ids of `CLUSTER_PEERS` and of a
/// `REPLICATION_MODE` leader (1), and exact in JSON numbers (below 2^53).
const ID_FLOOR: u64 = 1 << 40;
const ID_SPAN: u64 = (1 << 52) - ID_FLOOR;

fn io_err(e: impl std::error::Error + Send + Sync + 'static) -> io::Error {
    io::Error::other(e)
}

/// This node's id: the stored one, or a new random one, stored durably first.
pub fn node_id(data_dir: &Path) -> io::Result<NodeId> {
    let dir = data_dir.join("raft");
    RealFs.create_dir_all(&dir)?;
    if let Some(bytes) = small_file::load(&RealFs, &dir, NODE_ID).map_err(io_err)? {
        let raw: [u8; 8] = bytes.as_slice().try_into().map_err(|_| {
            io::Error::new(io::ErrorKind::InvalidData, "raft/NODE_ID is not 8 bytes")
        })?;
        return Ok(u64::from_le_bytes(raw));
    }
    // A process-random SipHash key is random enough to tell data directories apart.
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    let id = ID_FLOOR + hasher.finish() % ID_SPAN;
    small_file::store(&RealFs, &dir, NODE_ID, &id.to_le_bytes()).map_err(io_err)?;
    Ok(id)
}

/// The cluster this node has joined, if it has.
pub fn cluster_id(data_dir: &Path) -> io::Result<Option<String>> {
    let dir = data_dir.join("raft");
    match small_file::load(&RealFs, &dir, CLUSTER_ID).map_err(io_err)? {
        None => Ok(None),
        Some(bytes) => String::from_utf8(bytes).map(Some).map_err(|_| {
            io::Error::new(io::ErrorKind::InvalidData, "raft/CLUSTER_ID is not UTF-8")
        }),
    }
}

/// Records, durably, that this node has joined cluster `id`.
pub fn join_cluster(data_dir: &Path, id: &str) -> io::Result<()> {
    let dir = data_dir.join("raft");
    RealFs.create_dir_all(&dir)?;
    small_file::store(&RealFs, &dir, CLUSTER_ID, id.as_bytes()).map_err(io_err)
}

/// Whether this data directory formed a cluster (see the module doc).
pub fn formed(data_dir: &Path) -> io::Result<bool> {
    Ok(small_file::load(&RealFs, data_dir, FORMED)
        .map_err(io_err)?
        .is_some())
}

/// Records, durably, that this data directory formed a cluster.
pub fn record_formed(data_dir: &Path) -> io::Result<()> {
    small_file::store(&RealFs, data_dir, FORMED, b"").map_err(io_err)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_node_keeps_its_random_id_and_a_new_directory_gets_another() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let id = node_id(a.path()).unwrap();
        assert!((ID_FLOOR..ID_FLOOR + ID_SPAN).contains(&id));
        assert_eq!(node_id(a.path()).unwrap(), id, "stored, not drawn again");
        assert_ne!(node_id(b.path()).unwrap(), id);
    }

    #[test]
    fn the_joined_cluster_is_remembered() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(cluster_id(dir.path()).unwrap(), None);
        join_cluster(dir.path(), "abc").unwrap();
        assert_eq!(cluster_id(dir.path()).unwrap().as_deref(), Some("abc"));
    }
}
