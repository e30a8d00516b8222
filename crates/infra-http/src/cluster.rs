//! The Raft cluster over HTTP (the cluster issue; `docs/cluster.md`).
//!
//! - [`HttpTransport`]: moves `kv-infra-raft`'s messages between nodes as `POST /v1/raft/{rpc}` with a
//!   JSON body, carrying the replication token (peers refuse a request without it, 401) and the cluster
//!   id (peers of another cluster refuse it, 409).
//! - [`ClusterNode`]: a [`RaftNode`] as the `domain::Consensus` port `KvService` proposes writes to,
//!   plus what the HTTP layer asks of it: who leads (to forward or redirect a write), the status of
//!   `GET /v1/cluster`, and the handler of the Raft routes.
//!
//! | method | path | body | answer |
//! |---|---|---|---|
//! | POST | `/v1/raft/append` | openraft's `AppendEntriesRequest` | the receiver's `Result`, JSON |
//! | POST | `/v1/raft/vote`, `/v1/raft/pre-vote` | `VoteRequest` | `Result<VoteResponse, _>` |
//! | POST | `/v1/raft/snapshot` | a chunk of at most 1 MiB (base64) | `Result<Option<SnapshotResponse>, _>` |
//! | POST | `/v1/raft/transfer-leader` | `TransferLeaderRequest` | `Result<_, String>` |
//! | GET | `/v1/cluster` | | [`ClusterStatus`] |

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use hyper::{Method, StatusCode};
use kv_domain::{BatchOp, Committed, Consensus, ConsensusError, Lsn};
use kv_infra_raft::{
    ClusterError, ClusterStatus, Command, NodeId, RaftNode, RaftTransport, Rpc, TransportError,
};
use parking_lot::Mutex;

use crate::client::{Client, ClientError};
use crate::error::ApiError;
use crate::replication::{Secret, TOKEN_HEADER};

pub use crate::route::RAFT_PREFIX;
/// Longest wait for a peer's answer to a Raft message (a snapshot chunk: 30 s).
const RPC_TIMEOUT: Duration = Duration::from_secs(3);
const SNAPSHOT_RPC_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for a proposed write to be committed and applied.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait for a linearizable read's barrier.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle connections kept per peer.
const POOL_PER_PEER: usize = 4;

/// The header naming the sender's cluster on every Raft message: a node refuses (409) a message from a
/// node of another cluster, so two clusters wired to each other by mistake cannot mix their logs.
pub const CLUSTER_HEADER: &str = "x-kv-cluster";

/// The header naming the node a Raft message is for: a node refuses (409) one for another id.
pub const TARGET_HEADER: &str = "x-kv-raft-target";

/// The id of a cluster: `CLUSTER_ID` when set, else derived from its peer list (`CLUSTER_PEERS`, which
/// every member is started with): a hex FNV-1a hash of the `id=url` entries in id order.
pub fn cluster_id(
    explicit: Option<&str>,
    peers: &std::collections::BTreeMap<NodeId, String>,
) -> String {
    if let Some(id) = explicit.filter(|id| !id.is_empty()) {
        return id.to_string();
    }
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for (id, url) in peers {
        for b in format!("{id}={url},").bytes() {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{hash:016x}")
}

/// Raft messages over HTTP/1.1 with a small pool of connections per peer.
#[derive(Debug)]
pub struct HttpTransport {
    token: Option<Secret>,
    cluster: String,
    pool: Mutex<HashMap<String, Vec<Client>>>,
}

impl HttpTransport {
    /// A transport that sends `token` (the replication token) and the cluster id `cluster` with every
    /// message.
    pub fn new(token: Option<Secret>, cluster: String) -> Self {
        Self {
            token,
            cluster,
            pool: Mutex::new(HashMap::new()),
        }
    }
}

impl RaftTransport for HttpTransport {
    async fn call(
        &self,
        target: NodeId,
        url: &str,
        rpc: Rpc,
        body: Vec<u8>,
    ) -> Result<Vec<u8>, TransportError> {
        // Snapshot chunks get a connection of their own, with their longer timeout.
        let snapshot = rpc == Rpc::Snapshot;
        let pooled = if snapshot {
            None
        } else {
            self.pool.lock().get_mut(url).and_then(Vec::pop)
        };
        let mut client = match pooled {
            Some(c) => c,
            None => {
                let timeout = if snapshot {
                    SNAPSHOT_RPC_TIMEOUT
                } else {
                    RPC_TIMEOUT
                };
                Client::new(url)
                    .map_err(|e| {
                        TransportError::Unreachable(format!("node {target} at {url}: {e}"))
                    })?
                    .with_timeouts(Some(Duration::from_secs(1)), Some(timeout))
            }
        };
        let mut headers = vec![(CONTENT_TYPE, HeaderValue::from_static("application/json"))];
        if let Ok(v) = HeaderValue::from_str(&self.cluster) {
            headers.push((HeaderName::from_static(CLUSTER_HEADER), v));
        }
        headers.push((
            HeaderName::from_static(TARGET_HEADER),
            HeaderValue::from(target),
        ));
        if let Some(token) = &self.token {
            if let Ok(v) = HeaderValue::from_str(token.expose()) {
                headers.push((HeaderName::from_static(TOKEN_HEADER), v));
            }
        }
        let path = format!("{RAFT_PREFIX}{}", rpc.name());
        let answer = client
            .send_with(Method::POST, &path, &headers, Bytes::from(body))
            .await;
        match answer {
            Ok((StatusCode::OK, _, body)) if snapshot => Ok(body.to_vec()),
            Ok((StatusCode::OK, _, body)) => {
                let mut pool = self.pool.lock();
                let idle = pool.entry(url.to_string()).or_default();
                if idle.len() < POOL_PER_PEER {
                    idle.push(client);
                }
                Ok(body.to_vec())
            }
            Ok((status, _, body)) => Err(TransportError::Network(format!(
                "node {target} at {url} answered {status} to {}: {}",
                rpc.name(),
                String::from_utf8_lossy(&body)
            ))),
            Err(ClientError::Unreachable { source, .. }) => Err(TransportError::Unreachable(
                format!("node {target} at {url}: {source}"),
            )),
            Err(e) => Err(TransportError::Network(format!(
                "node {target} at {url}: {e}"
            ))),
        }
    }
}

/// A cluster member as the server uses it (see the module doc).
#[derive(Debug)]
pub struct ClusterNode {
    node: RaftNode,
    /// The cluster's id; `None` on a learner by invitation that no leader has reached yet.
    cluster: parking_lot::RwLock<Option<String>>,
    /// On a learner by invitation (a `REPLICATION_MODE` follower): its data directory, where the
    /// first leader's cluster id is stored when it adopts it.
    adopts_into: Option<std::path::PathBuf>,
    /// On such a learner: the leader it was configured with (`REPLICATION_LEADER_HOST`), where its
    /// writes go whatever the membership says (the leader's own URL is not known to the leader).
    fixed_leader: Option<String>,
    /// On such a learner: why it refused the last Raft message (another cluster's), until one is
    /// accepted again (readiness and status show it).
    refusing: parking_lot::RwLock<Option<String>>,
    /// Serialises the adoption of a first cluster id (heartbeats and appends arrive at once).
    adopting: tokio::sync::Mutex<()>,
    /// On such a learner: the latest probe of its leader, shared by readiness checks for a moment.
    probes: crate::replication::ready::ProbeMemo,
}

impl ClusterNode {
    /// Wraps a started node of the cluster with id `cluster` (see [`cluster_id`]).
    pub fn new(node: RaftNode, cluster: String) -> Self {
        Self {
            node,
            cluster: parking_lot::RwLock::new(Some(cluster)),
            adopts_into: None,
            fixed_leader: None,
            refusing: parking_lot::RwLock::new(None),
            adopting: tokio::sync::Mutex::new(()),
            probes: crate::replication::ready::ProbeMemo::default(),
        }
    }

    /// Wraps a learner by invitation (`REPLICATION_MODE=follower` on Raft): it belongs to `joined`, or,
    /// when it has joined none yet, adopts the cluster id of the first Raft message it accepts and
    /// stores it in `data_dir` (`kv_infra_raft::identity`); writes and linearizable reads go to
    /// `leader_url`.
    pub fn learner(
        node: RaftNode,
        joined: Option<String>,
        data_dir: &std::path::Path,
        leader_url: &str,
    ) -> Self {
        Self {
            node,
            cluster: parking_lot::RwLock::new(joined),
            adopts_into: Some(data_dir.to_path_buf()),
            fixed_leader: Some(leader_url.trim_end_matches('/').to_string()),
            refusing: parking_lot::RwLock::new(None),
            adopting: tokio::sync::Mutex::new(()),
            probes: crate::replication::ready::ProbeMemo::default(),
        }
    }

    /// On a learner by invitation: its configured leader's `GET /v1/cluster` (within a second).
    async fn leader_view(url: &str, token: Option<&Secret>) -> Result<serde_json::Value, String> {
        let mut client = Client::new(url)
            .map_err(|e| e.to_string())?
            .with_timeouts(Some(Duration::from_secs(1)), Some(Duration::from_secs(1)));
        let mut headers = Vec::new();
        if let Some(v) = token.and_then(|t| HeaderValue::from_str(t.expose()).ok()) {
            headers.push((HeaderName::from_static(TOKEN_HEADER), v));
        }
        let (status, _, body) = client
            .send_with(Method::GET, "/v1/cluster", &headers, Bytes::new())
            .await
            .map_err(|e| format!("the leader at {url} is unreachable: {e}"))?;
        if status != StatusCode::OK {
            return Err(format!(
                "the leader at {url} answered GET /v1/cluster with {status}: {}",
                String::from_utf8_lossy(&body)
            ));
        }
        serde_json::from_slice(&body)
            .map_err(|e| format!("the leader at {url} answered no JSON: {e}"))
    }

    /// On a learner by invitation: asks its configured leader whether it leads and which cluster;
    /// `Err` says why this learner cannot follow it now (unreachable, not leading, refusing the
    /// token, or of another history). Readiness asks this.
    pub async fn probe_leader(&self, token: Option<&Secret>) -> Result<(), String> {
        let Some(url) = &self.fixed_leader else {
            return Ok(());
        };
        let (url, token, ours) = (url.clone(), token.cloned(), self.cluster_id());
        self.probes
            .get_or_probe(async move { Self::probe_leader_at(&url, token.as_ref(), ours).await })
            .await
    }

    /// The probe itself: whether the node at `url` leads, and the cluster `ours` if this learner
    /// has joined one.
    async fn probe_leader_at(
        url: &str,
        token: Option<&Secret>,
        ours: Option<String>,
    ) -> Result<(), String> {
        let doc = Self::leader_view(url, token).await?;
        if doc["state"] != "leader" {
            return Err(format!(
                "the node at {url} does not lead (it is {})",
                doc["state"]
            ));
        }
        match (ours, doc["cluster_id"].as_str()) {
            (Some(ours), Some(theirs)) if ours != theirs => Err(format!(
                "refusing the leader: history mismatch: this follower holds cluster {ours}, the leader at {url} leads {theirs} (was it restarted on an empty or foreign data directory?)"
            )),
            _ => Ok(()),
        }
    }

    /// On a learner by invitation that has joined no cluster yet: joins `theirs`, the cluster of a
    /// Raft message, if and only if its configured leader (`REPLICATION_LEADER_HOST`) leads that
    /// cluster (so a stale leader that still lists this follower cannot claim it). Stored durably
    /// first (`kv_infra_raft::identity`); no lock is held across the probe or the file write.
    async fn adopt(&self, theirs: &str, token: Option<&Secret>) -> Result<(), ApiError> {
        let (Some(dir), Some(url)) = (&self.adopts_into, &self.fixed_leader) else {
            return Ok(());
        };
        let refuse = |why: String| ApiError::new(StatusCode::CONFLICT, why);
        let doc = Self::leader_view(url, token).await.map_err(|e| {
            refuse(format!(
                "cannot confirm the cluster {theirs} with the configured leader: {e}"
            ))
        })?;
        if doc["cluster_id"].as_str() != Some(theirs) {
            return Err(refuse(format!(
                "the message came from cluster {theirs} but the configured leader at {url} leads {}; not joining it",
                doc["cluster_id"]
            )));
        }
        let (dir, id) = (dir.clone(), theirs.to_string());
        tokio::task::spawn_blocking(move || kv_infra_raft::identity::join_cluster(&dir, &id))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()))
            .map_err(|e| {
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("cannot store the cluster id: {e}"),
                )
            })?;
        let mut cluster = self.cluster.write();
        if cluster.is_none() {
            tracing::info!(cluster = %theirs, "joined the leader's cluster");
            *cluster = Some(theirs.to_string());
        }
        Ok(())
    }

    /// On a learner by invitation: why it refuses its leader (a leader of another history), if it does.
    pub fn refusing(&self) -> Option<String> {
        self.refusing.read().clone()
    }

    /// [`Self::check_cluster`] (after a learner's adoption of its first cluster), remembering a
    /// learner's refusal until a message is accepted again.
    async fn admit(
        &self,
        headers: &hyper::HeaderMap,
        token: Option<&Secret>,
        may_adopt: bool,
    ) -> Result<(), ApiError> {
        let theirs = headers
            .get(CLUSTER_HEADER)
            .and_then(|v| v.to_str().ok())
            .filter(|t| !t.is_empty());
        let adopted = match theirs {
            Some(theirs)
                if may_adopt && self.adopts_into.is_some() && self.cluster.read().is_none() =>
            {
                // One adoption at a time; the one that waited finds the cluster joined.
                let _one = self.adopting.lock().await;
                if self.cluster.read().is_none() {
                    self.adopt(theirs, token).await
                } else {
                    Ok(())
                }
            }
            _ => Ok(()),
        };
        let verdict = adopted.and_then(|()| self.check_cluster(headers));
        if self.adopts_into.is_some() {
            let now = verdict
                .as_ref()
                .err()
                .map(|e| format!("refusing the leader: {}", e.message));
            // Every message asks: change (and log) only on a change of verdict.
            if *self.refusing.read() != now {
                let mut refusing = self.refusing.write();
                if *refusing != now {
                    match &now {
                        Some(why) => tracing::error!("REFUSING the leader: {why}"),
                        None => tracing::info!(
                            "no longer refusing the leader: its messages are of this node's cluster"
                        ),
                    }
                    *refusing = now;
                }
            }
        }
        verdict
    }

    /// Refuses (409) a Raft message from a node of another cluster, or one that does not say, or one
    /// addressed to another node (`x-kv-raft-target`: two ids of one process must not both count).
    fn check_cluster(&self, headers: &hyper::HeaderMap) -> Result<(), ApiError> {
        if let Some(target) = headers.get(TARGET_HEADER).and_then(|v| v.to_str().ok()) {
            if target != self.node.id().to_string() {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    format!(
                        "this message is for node {target}; this is node {} (a stale membership entry?)",
                        self.node.id()
                    ),
                ));
            }
        }
        let theirs = headers.get(CLUSTER_HEADER).and_then(|v| v.to_str().ok());
        let ours = self.cluster.read().clone();
        if ours.is_some() && ours.as_deref() == theirs {
            return Ok(());
        }
        let why = if self.adopts_into.is_some() {
            "a leader of another history, e.g. one restarted on an empty data directory: this follower keeps its data"
        } else {
            "CLUSTER_PEERS or CLUSTER_ID differ between the nodes"
        };
        Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "this node belongs to cluster {}; the message came from cluster {} ({why})",
                ours.as_deref().unwrap_or("<none yet>"),
                theirs.unwrap_or("<none>")
            ),
        ))
    }

    /// The Raft node.
    pub fn raft(&self) -> &RaftNode {
        &self.node
    }

    /// Who should take a write now: `Ok(None)` this node, `Ok(Some((id, url)))` another, `Err` nobody
    /// known (an election is under way, or this node is cut off).
    pub fn write_target(&self) -> Result<Option<(NodeId, String)>, ApiError> {
        let (leader, url, term) = self.node.leader();
        if let Some(url) = &self.fixed_leader {
            // A learner never leads: its configured leader takes every write.
            return Ok(Some((leader.unwrap_or_default(), url.clone())));
        }
        match (leader, url) {
            (Some(id), _) if id == self.node.id() => Ok(None),
            (Some(id), Some(url)) => Ok(Some((id, url))),
            _ => Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "no leader known to node {} (term {term}): an election may be under way; nothing was written, retry",
                    self.node.id()
                ),
            )),
        }
    }

    /// This node's view of the cluster.
    pub fn status(&self) -> ClusterStatus {
        self.node.status()
    }

    /// On a learner by invitation that has joined a cluster: its id, which forwarded writes carry.
    pub fn expected_history(&self) -> Option<String> {
        self.adopts_into.as_ref()?;
        self.cluster_id()
    }

    /// The cluster's id (`None`: a learner by invitation no leader has reached yet).
    pub fn cluster_id(&self) -> Option<String> {
        self.cluster.read().clone()
    }

    /// The cluster's series for `/metrics`: term, leader, log, commit and applied index, and on the
    /// leader each member's matched index and lag.
    pub fn write_metrics(&self, w: &mut crate::prom::Writer) {
        use crate::prom::Kind;
        let s = self.node.status();
        w.gauge(
            "kv_raft_term",
            "The current Raft term (it grows by at least one per election).",
            s.term,
        );
        w.counter(
            "kv_raft_elections_seen_total",
            "Terms this node has entered since it started: one per election it saw begin, won or not.",
            s.elections_seen,
        );
        w.gauge(
            "kv_raft_is_leader",
            "1 while this node leads the cluster.",
            u8::from(s.state == "leader"),
        );
        w.gauge(
            "kv_raft_leader_id",
            "The leader this node knows (0: none).",
            s.leader_id.unwrap_or(0),
        );
        w.gauge(
            "kv_raft_last_log_index",
            "The last index of this node's Raft log.",
            s.last_log_index.unwrap_or(0),
        );
        w.gauge(
            "kv_raft_commit_index",
            "The last index this node knows committed.",
            s.commit_index.unwrap_or(0),
        );
        w.gauge(
            "kv_raft_applied_index",
            "The last index this node's engine applied.",
            s.applied_index.unwrap_or(0),
        );
        let leader_view: Vec<_> = s
            .members
            .iter()
            .filter_map(|m| Some((m.id.to_string(), m.matched_index?, m.lag_entries?)))
            .collect();
        if !leader_view.is_empty() {
            w.family(
                "kv_raft_peer_matched_index",
                Kind::Gauge,
                "On the leader: the last index each member holds.",
            );
            for (id, matched, _) in &leader_view {
                w.sample("kv_raft_peer_matched_index", &[("peer", id)], matched);
            }
            w.family(
                "kv_raft_peer_lag_entries",
                Kind::Gauge,
                "On the leader: how many entries each member is behind its log.",
            );
            for (id, _, lag) in &leader_view {
                w.sample("kv_raft_peer_lag_entries", &[("peer", id)], lag);
            }
        }
    }

    /// Answers a Raft route (`path` below [`RAFT_PREFIX`]) with its JSON.
    pub async fn handle_rpc(&self, name: &str, body: &[u8]) -> Result<Vec<u8>, ApiError> {
        let rpc = Rpc::from_name(name)
            .ok_or_else(|| ApiError::not_found(format!("no Raft message {name:?}")))?;
        self.node
            .handle(rpc, body)
            .await
            .map_err(ApiError::bad_request)
    }
}

/// The HTTP error of a cluster operation's failure.
fn api_error(e: ClusterError) -> ApiError {
    let status = match &e {
        ClusterError::Refused(_) => StatusCode::CONFLICT,
        ClusterError::Unknown(_) => StatusCode::GATEWAY_TIMEOUT,
        ClusterError::NotLeader { .. }
        | ClusterError::Unavailable(_)
        | ClusterError::Stopped(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    ApiError::new(status, e.to_string())
}

fn consensus_error(e: ClusterError) -> ConsensusError {
    match e {
        ClusterError::NotLeader {
            leader_id,
            leader_url,
        } => ConsensusError::NotLeader {
            leader_id,
            leader_url,
        },
        ClusterError::Unavailable(r) => ConsensusError::Unavailable(r),
        ClusterError::Unknown(r) => ConsensusError::Unknown(r),
        ClusterError::Stopped(r) => ConsensusError::Unavailable(format!("this node stopped: {r}")),
        ClusterError::Refused(r) => ConsensusError::Unavailable(r),
    }
}

#[async_trait]
impl Consensus for ClusterNode {
    async fn propose(&self, ops: Vec<BatchOp>) -> Result<Committed, ConsensusError> {
        let written = self
            .node
            .write(Command::from_ops(&ops), WRITE_TIMEOUT)
            .await
            .map_err(consensus_error)?;
        Ok(Committed {
            lsn: Lsn(written.lsn),
            term: written.term,
        })
    }

    async fn read_barrier(&self) -> Result<Lsn, ConsensusError> {
        self.node
            .read_barrier(READ_TIMEOUT)
            .await
            .map(Lsn)
            .map_err(consensus_error)
    }
}

/// The shared handle `KvService` and the server hold.
pub type SharedCluster = Arc<ClusterNode>;

/// Marks a write a node forwarded to the leader it knew: a node that is not the leader either refuses
/// it (503) instead of forwarding it again, so a request makes at most one hop.
pub const FORWARDED_HEADER: &str = "x-kv-forwarded";
/// Longest wait for the leader's answer to a forwarded request.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether a read asks for `consistency=linearizable` (`local`, the default, or absent: no); anything
/// else is a 400.
pub fn wants_linearizable(uri: &hyper::Uri) -> Result<bool, ApiError> {
    // Every read asks this: parse the query only when it can name the parameter (spelt out, or
    // percent-encoded).
    if !uri
        .query()
        .is_some_and(|q| q.contains("consistency") || q.contains('%'))
    {
        return Ok(false);
    }
    let params = crate::request::query(uri)?;
    match params.get("consistency").map(Vec::as_slice) {
        None | Some(b"local") => Ok(false),
        Some(b"linearizable") => Ok(true),
        Some(other) => Err(ApiError::bad_request(format!(
            "consistency must be local or linearizable, not {:?}",
            String::from_utf8_lossy(other)
        ))),
    }
}

/// A request for the leader at `leader_url`, arriving at another node (`from`): a 307 to the leader when
/// the query says `redirect=true`; otherwise forwarded once, the leader's answer relayed. A request that
/// was already forwarded is refused (503): the node that sent it had an outdated view of the leader. A
/// learner by invitation names the cluster it has joined (`x-kv-expected-history`): a leader of another
/// history refuses the write (409), relayed as 503, so nothing is applied by a stranger.
///
/// Identity: the client's `Authorization` goes along, and the leader decides on it (`crate::auth`); so
/// does this node's own replication `token` (never the client's), with which the leader admits a
/// request this node admitted in protected mode, and a cluster operation.
pub async fn send_to_leader(
    leader_url: &str,
    from: &ClusterNode,
    token: Option<&Secret>,
    req: hyper::Request<crate::body::RequestBody>,
    max_body: usize,
) -> Result<hyper::Response<crate::error::Body>, ApiError> {
    let path = req
        .uri()
        .path_and_query()
        .map_or_else(|| req.uri().path().to_string(), |p| p.as_str().to_string());
    let redirect = crate::request::query(req.uri())?
        .get("redirect")
        .is_some_and(|v| v.as_slice() == b"true");
    if redirect {
        let location = format!("{}{path}", leader_url.trim_end_matches('/'));
        let mut resp = ApiError::new(
            StatusCode::TEMPORARY_REDIRECT,
            format!("the leader is at {leader_url}"),
        )
        .into_response();
        if let Ok(v) = HeaderValue::from_str(&location) {
            resp.headers_mut().insert(hyper::header::LOCATION, v);
        }
        return Ok(resp);
    }
    if req.headers().contains_key(FORWARDED_HEADER) {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("this node is not the leader (the leader is at {leader_url}) and the request was already forwarded once; nothing was written, retry"),
        ));
    }
    let (parts, body) = req.into_parts();
    let bytes = crate::body::read_body(&parts.headers, body, max_body).await?;
    let mut pass: Vec<(HeaderName, HeaderValue)> = [CONTENT_TYPE]
        .iter()
        .filter_map(|n| parts.headers.get(n).map(|v| (n.clone(), v.clone())))
        .collect();
    pass.push((
        HeaderName::from_static(FORWARDED_HEADER),
        HeaderValue::from_static("1"),
    ));
    for name in [
        HeaderName::from_static(crate::replication::MIN_LSN_HEADER),
        hyper::header::AUTHORIZATION,
    ] {
        if let Some(v) = parts.headers.get(&name) {
            pass.push((name, v.clone()));
        }
    }
    if let Some(v) = token.and_then(|t| HeaderValue::from_str(t.expose()).ok()) {
        pass.push((HeaderName::from_static(TOKEN_HEADER), v));
    }
    if let Some(joined) = from.expected_history() {
        if let Ok(v) = HeaderValue::from_str(&joined) {
            pass.push((
                HeaderName::from_static(crate::replication::EXPECTED_HISTORY_HEADER),
                v,
            ));
        }
    }
    let mut client = Client::new(leader_url)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .with_timeouts(Some(Duration::from_secs(1)), Some(FORWARD_TIMEOUT));
    match client.send_with(parts.method, &path, &pass, bytes).await {
        Ok((status, headers, body)) => {
            let stranger = status == StatusCode::CONFLICT
                && headers.contains_key(crate::replication::HISTORY_HEADER);
            let mut resp = hyper::Response::new(crate::error::full(body));
            // The configured leader is of another history: this follower cannot take writes now.
            *resp.status_mut() = if stranger {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                status
            };
            for (name, value) in &headers {
                let relayed = name == CONTENT_TYPE
                    || name.as_str().starts_with("x-kv-")
                    || name == hyper::header::LOCATION;
                if relayed {
                    resp.headers_mut().insert(name.clone(), value.clone());
                }
            }
            Ok(resp)
        }
        Err(ClientError::Unreachable { source, .. }) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the leader at {leader_url} is unreachable ({source}); nothing was written, retry"),
        )),
        Err(e) => Err(ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            format!("outcome unknown: forwarding to the leader at {leader_url} failed after the request was sent ({e}); a write may or may not have been applied (it was not retried)"),
        )),
    }
}

/// This node's cluster membership (the caller was admitted by `crate::auth` already): 404 on a node
/// that is not a cluster member.
fn member(repl: &crate::replication::Replication) -> Result<&ClusterNode, ApiError> {
    repl.cluster.as_deref().ok_or_else(|| {
        ApiError::not_found(
            "this node is not a member of a Raft cluster (start it with CLUSTER_NODE_ID and CLUSTER_PEERS)",
        )
    })
}

/// The largest Raft message accepted: an append of [`kv_infra_raft::MAX_APPEND_ENTRIES`] entries of the
/// largest write a client may send (`max_body`), each under twice its body once JSON and base64 (a
/// snapshot chunk, 1 MiB of base64, is far below). A smaller limit would stall replication for good on a
/// burst of large writes: the leader resends the same append.
pub fn raft_body_limit(max_body: usize) -> usize {
    (kv_infra_raft::MAX_APPEND_ENTRIES as usize)
        .saturating_mul(max_body.saturating_mul(2))
        .saturating_add(1 << 20)
}

/// `POST /v1/raft/{rpc}`: a peer's Raft message (replication token required).
pub async fn handle_raft(
    repl: &crate::replication::Replication,
    req: hyper::Request<crate::body::RequestBody>,
    max_body: usize,
) -> Result<hyper::Response<crate::error::Body>, ApiError> {
    let cluster = member(repl)?;
    let name = req
        .uri()
        .path()
        .strip_prefix(RAFT_PREFIX)
        .unwrap_or_default()
        .to_string();
    // A question (`progress`) never makes a learner by invitation join the asker's cluster.
    let may_adopt = name != kv_infra_raft::Rpc::Progress.name();
    cluster
        .admit(req.headers(), repl.token.as_ref(), may_adopt)
        .await?;
    let (parts, body) = req.into_parts();
    let bytes = crate::body::read_body(&parts.headers, body, raft_body_limit(max_body)).await?;
    let answer = cluster.handle_rpc(&name, &bytes).await?;
    let mut resp = hyper::Response::new(crate::error::full(answer));
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(resp)
}

/// `GET /v1/cluster` (an admin token or the replication token: `crate::auth`).
pub fn handle_status(
    repl: &crate::replication::Replication,
) -> Result<hyper::Response<crate::error::Body>, ApiError> {
    let cluster = member(repl)?;
    let mut status = serde_json::to_value(cluster.status())
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    if let Some(doc) = status.as_object_mut() {
        // A leader of learners by invitation reads it to tell whether a follower refuses it.
        doc.insert("cluster_id".into(), serde_json::json!(cluster.cluster_id()));
    }
    Ok(crate::response::json(&status))
}

/// The bodies of the membership operations.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeRef {
    id: NodeId,
    #[serde(default)]
    url: Option<String>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeIds {
    ids: Vec<NodeId>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TransferTo {
    to: NodeId,
}

fn parse<T: serde::de::DeserializeOwned>(
    op: &str,
    body: &[u8],
    shape: &str,
) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("{op} takes {shape}: {e}")))
}

/// `POST /v1/cluster/{add-learner,promote,remove,transfer-leader}` (replication token): runs on the
/// leader (another node forwards it there once, or redirects with `?redirect=true`) and answers once the
/// change is committed, `{"ok":true,"log_index":N}` (a transfer: once the new leader leads).
pub async fn handle_op(
    repl: &crate::replication::Replication,
    req: hyper::Request<crate::body::RequestBody>,
    max_body: usize,
) -> Result<hyper::Response<crate::error::Body>, ApiError> {
    let cluster = member(repl)?;
    let op = req
        .uri()
        .path()
        .strip_prefix(crate::route::CLUSTER_OP_PREFIX)
        .unwrap_or_default()
        .to_string();
    const OPS: [&str; 4] = ["add-learner", "promote", "remove", "transfer-leader"];
    if !OPS.contains(&op.as_str()) {
        return Err(ApiError::not_found(format!(
            "no cluster operation {op:?}; there are {}",
            OPS.join(", ")
        )));
    }
    if let Some((_, leader_url)) = cluster.write_target()? {
        return send_to_leader(&leader_url, cluster, repl.token.as_ref(), req, max_body).await;
    }
    if repl.learners.is_some() {
        // One voter and learners: the membership follows REPLICATION_REPLICA_HOSTS. A promoted
        // follower would double the quorum or take the lead from the only node that should have it.
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("{op} is refused: with REPLICATION_MODE the leader is the only voter and its learners are REPLICATION_REPLICA_HOSTS; change that setting instead"),
        ));
    }
    let (parts, body) = req.into_parts();
    let bytes = crate::body::read_body(&parts.headers, body, max_body).await?;
    let node = cluster.raft();
    let answer = match op.as_str() {
        "add-learner" => {
            let n: NodeRef = parse(&op, &bytes, r#"{"id":N,"url":"http://host:port"}"#)?;
            let url = n
                .url
                .filter(|u| u.starts_with("http://") || u.starts_with("https://"))
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "add-learner needs the node's base URL as url (http://...)",
                    )
                })?;
            node.add_learner(n.id, url.trim_end_matches('/'))
                .await
                .map_err(api_error)?
        }
        "promote" => {
            let n: NodeIds = parse(&op, &bytes, r#"{"ids":[N,...]}"#)?;
            if n.ids.is_empty() {
                return Err(ApiError::bad_request("promote needs at least one id"));
            }
            node.promote(n.ids.into_iter().collect())
                .await
                .map_err(api_error)?
        }
        "remove" => {
            let n: NodeRef = parse(&op, &bytes, r#"{"id":N}"#)?;
            node.remove(n.id).await.map_err(api_error)?
        }
        _ => {
            let t: TransferTo = parse(&op, &bytes, r#"{"to":N}"#)?;
            let members = cluster.status().members;
            if !members.iter().any(|m| m.id == t.to && m.role == "voter") {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    format!("node {} is not a voter of this cluster", t.to),
                ));
            }
            node.transfer_leader(t.to).await.map_err(api_error)?;
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            loop {
                let status = cluster.status();
                if status.leader_id == Some(t.to) {
                    break status.commit_index.unwrap_or(0);
                }
                if std::time::Instant::now() > deadline {
                    return Err(ApiError::new(
                        StatusCode::GATEWAY_TIMEOUT,
                        format!("leadership transfer to node {} requested but not complete within 5 s (leader now: {:?})", t.to, status.leader_id),
                    ));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    Ok(crate::response::json(
        &serde_json::json!({ "ok": true, "log_index": answer }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linearizable_is_asked_for_by_name_even_percent_encoded_and_anything_else_is_refused() {
        let ask = |q: &str| wants_linearizable(&format!("/read?{q}").parse().unwrap());
        assert_eq!(ask("key=a").ok(), Some(false));
        assert_eq!(ask("key=a&consistency=local").ok(), Some(false));
        assert_eq!(ask("key=a&consistency=linearizable").ok(), Some(true));
        assert_eq!(ask("key=%61&consisten%63y=linearizable").ok(), Some(true));
        assert!(ask("consistency=strong").is_err());
    }

    #[test]
    fn the_cluster_id_is_the_explicit_one_or_a_hash_of_the_peer_list() {
        let peers = |list: &[(u64, &str)]| -> std::collections::BTreeMap<u64, String> {
            list.iter().map(|(i, u)| (*i, u.to_string())).collect()
        };
        let a = peers(&[(1, "http://a"), (2, "http://b")]);
        assert_eq!(cluster_id(Some("prod"), &a), "prod");
        assert_eq!(cluster_id(None, &a), cluster_id(Some(""), &a));
        assert_eq!(cluster_id(None, &a).len(), 16);
        // Another list (other URLs, other ids) is another cluster.
        assert_ne!(
            cluster_id(None, &a),
            cluster_id(None, &peers(&[(1, "http://a"), (2, "http://c")]))
        );
        assert_ne!(
            cluster_id(None, &a),
            cluster_id(None, &peers(&[(1, "http://a"), (3, "http://b")]))
        );
    }
}
