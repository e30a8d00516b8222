//! The type configuration openraft is instantiated with, and the command a log entry carries.

use std::fmt;

use kv_domain::{BatchOp, Key, Value};
use serde::{Deserialize, Serialize};

/// A node's id in the cluster (`CLUSTER_NODE_ID`).
pub type NodeId = u64;

/// One write of the key/value store, as a Raft log entry carries it: applied atomically, at the entry's
/// index as its LSN.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    /// The operations, in order (one for a put or a delete, several for a batch).
    pub ops: Vec<Op>,
}

/// One operation of a [`Command`]. Keys and values travel as base64 strings: JSON arrays of numbers
/// would triple every value in the log and on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Op {
    /// Set `key` to `value`.
    Put {
        /// The key.
        #[serde(with = "b64")]
        key: Vec<u8>,
        /// The value.
        #[serde(with = "b64")]
        value: Vec<u8>,
    },
    /// Remove `key`.
    Delete {
        /// The key.
        #[serde(with = "b64")]
        key: Vec<u8>,
    },
}

impl Command {
    /// The command of a domain write.
    pub fn from_ops(ops: &[BatchOp]) -> Self {
        Self {
            ops: ops
                .iter()
                .map(|op| match op {
                    BatchOp::Put { key, value } => Op::Put {
                        key: key.as_bytes().to_vec(),
                        value: value.as_bytes().to_vec(),
                    },
                    BatchOp::Delete { key } => Op::Delete {
                        key: key.as_bytes().to_vec(),
                    },
                })
                .collect(),
        }
    }

    /// The domain operations of this command.
    pub fn to_ops(&self) -> Vec<BatchOp> {
        self.ops
            .iter()
            .map(|op| match op {
                Op::Put { key, value } => BatchOp::Put {
                    key: Key::from(key.as_slice()),
                    value: Value::from(value.clone()),
                },
                Op::Delete { key } => BatchOp::Delete {
                    key: Key::from(key.as_slice()),
                },
            })
            .collect()
    }
}

/// openraft's log shows entries with `Display`: counts and sizes, never contents (values may be secret).
impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes: usize = self
            .ops
            .iter()
            .map(|op| match op {
                Op::Put { key, value } => key.len() + value.len(),
                Op::Delete { key } => key.len(),
            })
            .sum();
        write!(f, "command of {} ops, {bytes} bytes", self.ops.len())
    }
}

/// What applying a log entry answers the node that proposed it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// The entry's index: the write's LSN.
    pub lsn: u64,
}

openraft::declare_raft_types!(
    /// openraft's types for this store: everything not named takes openraft's default (u64 terms,
    /// `BasicNode { addr }` holding the node's base URL, tokio).
    pub TypeConfig:
        D = Command,
        R = Applied,
        NodeId = NodeId,
        Node = openraft::BasicNode,
);

/// Short names for openraft's types under [`TypeConfig`].
pub mod alias {
    use openraft::type_config::alias as a;

    use super::TypeConfig;

    /// A log id: (leader id with its term, index).
    pub type LogId = a::LogIdOf<TypeConfig>;
    /// A vote.
    pub type Vote = a::VoteOf<TypeConfig>;
    /// A log entry.
    pub type Entry = a::EntryOf<TypeConfig>;
    /// The membership config and the log id it was written at.
    pub type StoredMembership = a::StoredMembershipOf<TypeConfig>;
    /// What a snapshot covers.
    pub type SnapshotMeta = a::SnapshotMetaOf<TypeConfig>;
}

pub(crate) mod b64 {
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn commands_round_trip_through_json_and_the_domain() {
        let ops = vec![
            BatchOp::Put {
                key: Key::from("k"),
                value: Value::from(vec![0u8, 255, 10]),
            },
            BatchOp::Delete {
                key: Key::from("gone"),
            },
        ];
        let cmd = Command::from_ops(&ops);
        let json = serde_json::to_string(&cmd).unwrap();
        assert_eq!(
            json,
            r#"{"ops":[{"op":"put","key":"aw==","value":"AP8K"},{"op":"delete","key":"Z29uZQ=="}]}"#
        );
        let back: Command = serde_json::from_str(&json).unwrap();
        assert_eq!(back.to_ops(), ops);
        assert_eq!(back.to_string(), "command of 2 ops, 8 bytes");
    }
}
