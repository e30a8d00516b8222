//! openraft's network ([`RaftNetworkV2`]) over a [`RaftTransport`]: each Raft message is serialised to
//! JSON and sent to the target node's URL by name ([`Rpc`]); the answer is the receiver's whole
//! `Result`, as JSON, so a remote refusal travels back as such. The transport (HTTP in `kv-infra-http`,
//! in-process in tests) only moves bytes and says whether the peer was reachable.
//!
//! Snapshots travel in chunks of at most [`SNAPSHOT_CHUNK`] bytes ([`SnapshotChunk`]), so memory stays
//! bounded whatever the snapshot's size; the receiver appends them to a file and installs it when the
//! last one arrives (`RaftNode::handle`).

use std::future::Future;
use std::sync::Arc;

use openraft::errors::{
    NetworkError, RPCError, RaftError, ReplicationClosed, StreamingError, Unreachable,
};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::{BasicNode, OptionalSend, RaftNetworkFactory, RaftNetworkV2};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::state_machine::SnapshotFile;
use crate::types::alias::{SnapshotMeta, Vote};
use crate::types::{NodeId, TypeConfig};

/// Largest piece of a snapshot sent in one message.
pub const SNAPSHOT_CHUNK: usize = 1 << 20;

/// The Raft messages between nodes, by name (the HTTP transport maps each to a path).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rpc {
    /// `AppendEntriesRequest` → `Result<AppendEntriesResponse, RaftError>`.
    Append,
    /// `VoteRequest` → `Result<VoteResponse, RaftError>`.
    Vote,
    /// `VoteRequest` → `Result<VoteResponse, RaftError>` (pre-vote: asks without bumping the term).
    PreVote,
    /// [`SnapshotChunk`] → `Result<Option<SnapshotResponse>, String>` (`Some` after the last chunk).
    Snapshot,
    /// `TransferLeaderRequest` → `Result<TransferLeaderResponse, String>`.
    TransferLeader,
    /// [`ProgressRequest`] → `Result<Progress, String>`: what a peer knows of the asking node (asked
    /// at start by a node whose `raft/` directory is empty; see `RaftNode::start`).
    Progress,
}

/// The question of [`Rpc::Progress`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgressRequest {
    /// The asking node.
    pub asker: NodeId,
}

/// The answer of [`Rpc::Progress`]: the peer's view now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// The peer's current term (its vote's).
    pub term: u64,
    /// The node the peer's vote in `term` is for (`None` from a peer of a version before this
    /// field).
    #[serde(default)]
    pub voted_for: Option<NodeId>,
    /// Whether the peer leads now.
    pub leads: bool,
    /// The peer's last log index, if its log holds any entry.
    pub last_log_index: Option<u64>,
    /// On a leader: the highest index it knows the asker's log held (acknowledged by the asker);
    /// `None` when it has never replicated to the asker, or is no leader.
    pub matched: Option<u64>,
    /// The term of the peer's last log entry, if its log holds any (or purged any). Above 0 means a
    /// leader was elected once: only the cluster's first membership entry has term 0. `None` from a
    /// peer of a version before this field.
    #[serde(default)]
    pub last_log_term: Option<u64>,
    /// Whether the asker is a voter in the peer's membership (`false` from a peer of a version
    /// before this field).
    #[serde(default)]
    pub asker_votes: bool,
}

impl Rpc {
    /// Every message, for route tables.
    pub const ALL: [Rpc; 6] = [
        Rpc::Append,
        Rpc::Vote,
        Rpc::PreVote,
        Rpc::Snapshot,
        Rpc::TransferLeader,
        Rpc::Progress,
    ];

    /// A stable name (the last path segment of the HTTP route).
    pub fn name(self) -> &'static str {
        match self {
            Rpc::Append => "append",
            Rpc::Vote => "vote",
            Rpc::PreVote => "pre-vote",
            Rpc::Snapshot => "snapshot",
            Rpc::TransferLeader => "transfer-leader",
            Rpc::Progress => "progress",
        }
    }

    /// The message named `name`.
    pub fn from_name(name: &str) -> Option<Rpc> {
        Rpc::ALL.into_iter().find(|r| r.name() == name)
    }
}

/// Why a message did not get an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransportError {
    /// The peer could not be reached (connection refused, no route): openraft backs off.
    Unreachable(String),
    /// The message may or may not have arrived (a timeout, a broken connection, a bad answer).
    Network(String),
}

/// Moves one message to a peer and brings its answer back.
pub trait RaftTransport: Send + Sync + 'static {
    /// Sends `body` as message `rpc` to node `target` at `url`; the peer's answer body.
    fn call(
        &self,
        target: NodeId,
        url: &str,
        rpc: Rpc,
        body: Vec<u8>,
    ) -> impl Future<Output = Result<Vec<u8>, TransportError>> + Send;
}

/// One piece of a snapshot on its way to a follower.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotChunk {
    /// The leader's vote, for `install_full_snapshot`.
    pub vote: Vote,
    /// What the snapshot covers.
    pub meta: SnapshotMeta,
    /// Where this piece starts in the snapshot file.
    pub offset: u64,
    /// The piece (base64 in JSON).
    #[serde(with = "crate::types::b64")]
    pub bytes: Vec<u8>,
    /// Whether this is the last piece.
    pub done: bool,
}

/// Creates a connection per peer over the shared transport.
#[derive(Debug)]
pub struct Network<T> {
    transport: Arc<T>,
}

impl<T> Network<T> {
    /// A network over `transport`.
    pub fn new(transport: Arc<T>) -> Self {
        Self { transport }
    }
}

impl<T> Clone for Network<T> {
    fn clone(&self) -> Self {
        Self {
            transport: self.transport.clone(),
        }
    }
}

/// Messages to one peer.
#[derive(Debug)]
pub struct Connection<T> {
    transport: Arc<T>,
    target: NodeId,
    url: String,
}

impl<T: RaftTransport> RaftNetworkFactory<TypeConfig> for Network<T> {
    type Network = Connection<T>;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Self::Network {
        Connection {
            transport: self.transport.clone(),
            target,
            url: node.addr.clone(),
        }
    }
}

fn network_error(reason: String) -> NetworkError<TypeConfig> {
    NetworkError::from_string(reason)
}

impl<T: RaftTransport> Connection<T> {
    /// Sends `req` as `rpc`, decoding the answer as `A`.
    async fn exchange<Q: Serialize, A: DeserializeOwned>(
        &self,
        rpc: Rpc,
        req: &Q,
    ) -> Result<A, RPCError<TypeConfig>> {
        let body = serde_json::to_vec(req).map_err(|e| {
            RPCError::Network(network_error(format!("encoding {}: {e}", rpc.name())))
        })?;
        let answer = self
            .transport
            .call(self.target, &self.url, rpc, body)
            .await
            .map_err(|e| match e {
                TransportError::Unreachable(r) => {
                    RPCError::Unreachable(Unreachable::from_string(r))
                }
                TransportError::Network(r) => RPCError::Network(network_error(r)),
            })?;
        serde_json::from_slice(&answer).map_err(|e| {
            RPCError::Network(network_error(format!(
                "node {}: bad {} answer: {e}",
                self.target,
                rpc.name()
            )))
        })
    }

    /// A remote `RaftError` (the peer is shutting down or failed its storage) makes the peer
    /// unreachable for now: openraft backs off and retries.
    fn remote<A>(
        &self,
        answer: Result<A, RaftError<TypeConfig>>,
    ) -> Result<A, RPCError<TypeConfig>> {
        answer.map_err(|e| {
            RPCError::Unreachable(Unreachable::from_string(format!(
                "node {} refused: {e}",
                self.target
            )))
        })
    }
}

impl<T: RaftTransport> RaftNetworkV2<TypeConfig> for Connection<T> {
    type SnapshotData = SnapshotFile;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        let answer = self.exchange(Rpc::Append, &rpc).await?;
        self.remote(answer)
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        let answer = self.exchange(Rpc::Vote, &rpc).await?;
        self.remote(answer)
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        let answer = self.exchange(Rpc::PreVote, &rpc).await?;
        self.remote(answer)
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: openraft::type_config::alias::SnapshotOf<TypeConfig, SnapshotFile>,
        _cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let file = std::fs::File::open(&snapshot.snapshot.path).map_err(|e| {
            StreamingError::Network(network_error(format!("opening the snapshot: {e}")))
        })?;
        let len = file
            .metadata()
            .map_err(|e| StreamingError::Network(network_error(e.to_string())))?
            .len();
        let mut offset = 0u64;
        loop {
            let want = (len - offset).min(SNAPSHOT_CHUNK as u64) as usize;
            let mut bytes = vec![0u8; want];
            std::os::unix::fs::FileExt::read_exact_at(&file, &mut bytes, offset).map_err(|e| {
                StreamingError::Network(network_error(format!("reading the snapshot: {e}")))
            })?;
            let done = offset + want as u64 == len;
            let chunk = SnapshotChunk {
                vote,
                meta: snapshot.meta.clone(),
                offset,
                bytes,
                done,
            };
            let answer: Result<Option<SnapshotResponse<TypeConfig>>, String> =
                self.exchange(Rpc::Snapshot, &chunk).await?;
            let answer = answer.map_err(|e| {
                StreamingError::Unreachable(Unreachable::from_string(format!(
                    "node {} refused the snapshot: {e}",
                    self.target
                )))
            })?;
            offset += want as u64;
            if done {
                return answer.ok_or_else(|| {
                    StreamingError::Network(network_error(
                        "the last snapshot chunk got no response".into(),
                    ))
                });
            }
        }
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        let answer: Result<TransferLeaderResponse<TypeConfig>, String> =
            self.exchange(Rpc::TransferLeader, &req).await?;
        answer.map_err(|e| {
            RPCError::Unreachable(Unreachable::from_string(format!(
                "node {} refused the transfer: {e}",
                self.target
            )))
        })
    }
}
