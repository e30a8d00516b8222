//! The `/v1/status` document: one serde type that the server answers with and that `kvctl` prints for an
//! embedded data directory, so the two cannot drift. It lives here, beside [`crate::client`], so the CLI
//! uses it without depending on the server's modules.
//!
//! The fields are declared in alphabetical order: the document was first written with `serde_json::json!`,
//! whose objects are sorted maps, and declaration order is serde's output order, so the bytes on the wire
//! are the same as they were.

use kv_domain::{CompactionStats, EngineStatus, RecoveryReport};
use serde::{Deserialize, Serialize};

/// A node's status.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// A compaction is running.
    pub compacting: bool,
    /// Totals of the compactions finished since open.
    pub compaction: CompactionReport,
    /// The running compaction's progress, while one runs.
    pub compaction_progress: Option<CompactionReport>,
    /// Bytes in segment files.
    pub disk_bytes: u64,
    /// The durability mode.
    pub durability: String,
    /// On a leader: each follower's state (an empty array otherwise).
    pub followers: serde_json::Value,
    /// `fdatasync` calls since open.
    pub fsyncs: u64,
    /// Bytes of overwritten or deleted records.
    pub garbage_bytes: u64,
    /// `garbage_bytes / disk_bytes` (0 for an empty store).
    pub garbage_ratio: f64,
    /// Live keys.
    pub keys: u64,
    /// LSN of the latest acknowledged write.
    pub last_lsn: u64,
    /// Why writes are refused after an I/O failure, if they are.
    pub poisoned: Option<String>,
    /// Why the engine was opened read-only, if it was.
    pub read_only: Option<String>,
    /// What recovery found at open.
    pub recovery: RecoveryDoc,
    /// On a follower: its replication state.
    pub replication: Option<serde_json::Value>,
    /// In a Raft cluster: this node's view of it (as `GET /v1/cluster` shows it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<serde_json::Value>,
    /// `leader`, `follower`, or `embedded` (kvctl on a data directory).
    pub role: String,
    /// Segment files.
    pub segments: u64,
    /// Writes acknowledged since open.
    pub writes: u64,
}

/// What recovery found at open.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoveryDoc {
    /// Human-readable notes.
    pub notes: Vec<String>,
    /// Records replayed.
    pub records: u64,
    /// Segments read.
    pub segments: u64,
    /// Bytes of torn tail cut off.
    pub truncated_bytes: u64,
    /// Where the cut-off bytes were copied, if anywhere.
    pub truncated_copy: Option<String>,
}

/// A compaction's (or the compactions') figures; also the answer of `/v1/admin/compact`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompactionReport {
    /// Bytes of segments merged.
    pub input_bytes: u64,
    /// Segments merged.
    pub input_segments: u64,
    /// Time taken, in milliseconds.
    pub millis: u64,
    /// Bytes of segments written.
    pub output_bytes: u64,
    /// Segments written.
    pub output_segments: u64,
    /// Records copied.
    pub records_copied: u64,
    /// Compactions finished.
    pub runs: u64,
}

impl From<&CompactionStats> for CompactionReport {
    fn from(s: &CompactionStats) -> Self {
        Self {
            input_bytes: s.input_bytes,
            input_segments: s.input_segments,
            millis: s.millis,
            output_bytes: s.output_bytes,
            output_segments: s.output_segments,
            records_copied: s.records_copied,
            runs: s.runs,
        }
    }
}

impl From<&RecoveryReport> for RecoveryDoc {
    fn from(r: &RecoveryReport) -> Self {
        Self {
            notes: r.notes.clone(),
            records: r.records,
            segments: r.segments as u64,
            truncated_bytes: r.truncated_bytes,
            truncated_copy: r.truncated_copy.clone(),
        }
    }
}

impl NodeStatus {
    /// The status of a node in `role` whose engine reports `s`; `followers` and `replication` are the
    /// role's own parts (`[]` and `None` for a node without followers or leader).
    pub fn new(
        role: &str,
        s: &EngineStatus,
        followers: serde_json::Value,
        replication: Option<serde_json::Value>,
    ) -> Self {
        let garbage_ratio = if s.disk_bytes == 0 {
            0.0
        } else {
            s.garbage_bytes as f64 / s.disk_bytes as f64
        };
        Self {
            compacting: s.compacting,
            compaction: (&s.compaction).into(),
            compaction_progress: s.compaction_progress.as_ref().map(Into::into),
            disk_bytes: s.disk_bytes,
            durability: s.durability.to_string(),
            followers,
            fsyncs: s.fsyncs,
            garbage_bytes: s.garbage_bytes,
            garbage_ratio,
            keys: s.keys,
            last_lsn: s.last_lsn.0,
            poisoned: s.poisoned.clone(),
            read_only: s.read_only.clone(),
            recovery: (&s.recovery).into(),
            replication,
            cluster: None,
            role: role.to_string(),
            segments: s.segments,
            writes: s.writes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The document as the server wrote it by hand before this type: the same bytes.
    #[test]
    fn serializes_as_the_hand_built_document_did() {
        let mut s = EngineStatus {
            keys: 3,
            disk_bytes: 200,
            garbage_bytes: 50,
            poisoned: Some("x".into()),
            ..EngineStatus::default()
        };
        s.recovery.notes.push("n".into());
        s.compaction.runs = 2;
        s.compaction_progress = Some(CompactionStats::default());
        let followers = serde_json::json!([{"url": "u"}]);
        let typed = NodeStatus::new("leader", &s, followers.clone(), None);
        let c = |s: &CompactionStats| {
            serde_json::json!({
                "runs": s.runs, "input_segments": s.input_segments, "output_segments": s.output_segments,
                "input_bytes": s.input_bytes, "output_bytes": s.output_bytes,
                "records_copied": s.records_copied, "millis": s.millis,
            })
        };
        let by_hand = serde_json::json!({
            "role": "leader", "last_lsn": s.last_lsn.0, "keys": s.keys, "segments": s.segments,
            "disk_bytes": s.disk_bytes, "garbage_bytes": s.garbage_bytes, "garbage_ratio": 0.25,
            "durability": s.durability.to_string(), "poisoned": s.poisoned, "read_only": s.read_only,
            "writes": s.writes, "fsyncs": s.fsyncs,
            "recovery": {
                "segments": s.recovery.segments, "records": s.recovery.records,
                "truncated_bytes": s.recovery.truncated_bytes, "truncated_copy": s.recovery.truncated_copy,
                "notes": s.recovery.notes,
            },
            "followers": followers, "replication": None::<serde_json::Value>,
            "compacting": s.compacting, "compaction": c(&s.compaction),
            "compaction_progress": s.compaction_progress.as_ref().map(c),
        });
        assert_eq!(serde_json::to_string(&typed).unwrap(), by_hand.to_string());
        let back: NodeStatus = serde_json::from_str(&by_hand.to_string()).unwrap();
        assert_eq!(back, typed);
    }
}
