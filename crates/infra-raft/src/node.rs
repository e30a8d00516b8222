//! [`RaftNode`]: one member of a Raft cluster: openraft over this crate's log store, state machine and
//! network, with the operations the server needs in plain types (writes, linearizable-read barriers,
//! status, the handler of peers' messages), so nothing above this crate sees openraft's types.
//!
//! Formation: every node starts with the same peer list; the node with the lowest id initialises the
//! cluster with all of them as voters, once, when its log and vote are empty (openraft's advice:
//! initialise on one pristine node). The others wait to hear from a leader. A restarted node never
//! initialises again (openraft refuses: its log is not empty).
//!
//! Damaged logs (protocol-aware recovery): when the log's recovery found entries lost that may have been
//! acknowledged (`RaftLog::recovering`), this node neither campaigns (openraft's `elect` is off) nor
//! grants votes or pre-votes, nor takes leadership by transfer, until it has applied entries through
//! the highest index its log was known to hold (`Recovering::through`), or an entry of a term after
//! the one it started in (that term's leader held every entry committed before it). Entries are applied only once
//! committed, and a leader replicates them with Raft's consistency check, so by then every index it
//! had acknowledged holds the entry the cluster agreed on. Why refusing to vote is safe meanwhile:
//! Raft's election rule needs every voter to remember what it acknowledged; a forgetful node that
//! does not vote leaves any majority of the others intersecting every commit quorum it was part of
//! (with one forgetful node: |V ∩ (Q \ {me})| >= m + (m - 1) - (n - 1) = 2m - n >= 1). Two or more
//! damaged at once can leave no electable majority: `docs/cluster.md` has the operator's procedure.
//! A restarted leader never resumes leadership from its stored vote alone (`enable_leader_restore`
//! off), and leaders accept that a follower's log went back (`allow_log_reversion`).
//!
//! Wiped directories: a member whose `raft/` is empty at start (no log, no vote) asks its peers what
//! they know of it ([`Rpc::Progress`], at most [`PROGRESS_TIMEOUT`]). If a peer that leads now has
//! replicated to it, or any peer holds entries of an elected leader and counts it as a voter, it
//! takes itself to be wiped, not new, and recovers as a damaged node does: `RECOVERING` is stored
//! with the highest last log index any peer reports and the highest vote any peer holds; then, at
//! this and every start while the marker lives, that vote, uncommitted, unless its own is as high
//! (it refuses votes and appends below it, and takes the appends of the leader it names, whose
//! committed vote ranks above it). Its start term is that vote's, so only an entry of a later term,
//! or all the entries the cluster held, end the recovery; a wiped first member does not form the
//! cluster again. A voter that is merely new to a running cluster is caught too, and waits until a
//! leader has brought it up to date: the price of not telling the two apart. A cluster still forming
//! is not held up: until its first election is won no peer holds an entry of a term above 0. Limits
//! (`docs/cluster.md`): a node no peer answers within the timeout starts as a new one; the highest
//! vote is the highest among the peers that answered, so one that did not may hold a higher vote
//! this node gave; and a peer of a version before these answers counts only when it leads and had
//! replicated to the node, and gives a floor of its term with node 0 (below every candidate of it).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kv_domain::LogShipping;
use kv_infra_fs::raft_log::{RaftLogOptions, VoteFloor};
use openraft::async_runtime::WatchReceiver;
use openraft::errors::{ClientWriteError, LinearizableReadError, RaftError};
use openraft::storage::RaftLogStorage;
use openraft::{BasicNode, Config, ReadPolicy, ServerState, SnapshotPolicy};
use serde::{Deserialize, Serialize};

use crate::log_store::LogStore;
use crate::network::{Network, Progress, ProgressRequest, RaftTransport, Rpc, SnapshotChunk};
use crate::state_machine::{Closer, SnapshotFile, StateMachine};
use crate::types::{Command, NodeId, TypeConfig};

type Raft = openraft::Raft<TypeConfig, StateMachine>;

/// Most entries one append message carries. A receiver must accept a message of this many entries of the
/// largest write (each a JSON entry with base64 values: under twice the write's body), or replication to
/// it stalls on a burst of large writes: `kv-infra-http` sizes the Raft route's body limit from it.
pub const MAX_APPEND_ENTRIES: u64 = 64;

/// How long a leader may go without a majority's acknowledgement before it refuses writes and
/// linearizable reads (503, nothing proposed). Not the election timeout: an acknowledgement is dated
/// when its request was sent, and a follower catching up on appends of 64 large entries answers
/// seconds later while the cluster is healthy (an election-timeout threshold refused writes in the
/// burst test); a majority that is really gone is still reported well inside the 5 s write timeout.
pub const QUORUM_SILENCE: Duration = Duration::from_secs(2);

/// How a node joins its cluster.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    /// This node's id (`CLUSTER_NODE_ID`).
    pub node_id: NodeId,
    /// Every voter's id and base URL, this node's included (`CLUSTER_PEERS`).
    pub peers: BTreeMap<NodeId, String>,
    /// Leader heartbeat interval.
    pub heartbeat: Duration,
    /// Election timeout range: a follower that hears nothing for a random time in it campaigns.
    pub election_timeout: (Duration, Duration),
    /// A snapshot is taken after this many entries since the last one.
    pub snapshot_after_entries: u64,
    /// Entries kept in the log below the latest snapshot (lagging followers catch up from them without
    /// a snapshot); the rest is purged.
    pub keep_entries_after_snapshot: u64,
    /// The first member (lowest id) may form the cluster from the writes its engine already holds (a
    /// standalone server's), which become the cluster's initial state. Off by default: a first member
    /// that lost only its `raft/` directory would otherwise re-form a cluster beside the real one.
    pub init_from_data: bool,
    /// This node never forms a cluster: it waits for a leader to add it (a `REPLICATION_MODE`
    /// follower, which becomes a learner; `peers` then names only itself).
    pub join_only: bool,
}

impl ClusterSettings {
    /// Settings for a LAN cluster: heartbeats every 50 ms, elections after 300–600 ms of silence.
    pub fn new(node_id: NodeId, peers: BTreeMap<NodeId, String>) -> Self {
        Self {
            node_id,
            peers,
            heartbeat: Duration::from_millis(50),
            election_timeout: (Duration::from_millis(300), Duration::from_millis(600)),
            snapshot_after_entries: 100_000,
            keep_entries_after_snapshot: 1000,
            init_from_data: false,
            join_only: false,
        }
    }
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The settings are inconsistent.
    #[error("cluster settings: {0}")]
    Settings(String),
    /// The log or state machine could not be opened.
    #[error("raft storage: {0}")]
    Storage(#[from] std::io::Error),
    /// openraft refused to start.
    #[error("raft: {0}")]
    Raft(String),
}

/// A write that was committed and applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    /// Its log index: its LSN.
    pub lsn: u64,
    /// The leader's term it was committed in.
    pub term: u64,
}

/// Why a write or a linearizable read did not succeed here.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClusterError {
    /// Another node leads: send the request there.
    #[error("node {leader_id} leads the cluster, at {leader_url}")]
    NotLeader {
        /// The leader's id.
        leader_id: NodeId,
        /// The leader's base URL.
        leader_url: String,
    },
    /// No leader with a quorum within the timeout (a majority is down or cut off): nothing was written.
    #[error("no leader with a quorum: {0}")]
    Unavailable(String),
    /// The write was proposed but its fate is unknown (leadership changed, or the timeout passed
    /// before it was committed): it may or may not take effect.
    #[error("outcome unknown: {0}")]
    Unknown(String),
    /// The node has stopped (shut down, or its storage failed).
    #[error("raft node stopped: {0}")]
    Stopped(String),
    /// A membership change the cluster refuses (promoting a node that is not a learner, removing the
    /// last voter, a change while another is in progress).
    #[error("membership change refused: {0}")]
    Refused(String),
}

/// A member of the cluster, as `GET /v1/cluster` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Its id.
    pub id: NodeId,
    /// Its base URL.
    pub url: String,
    /// `voter` or `learner`.
    pub role: String,
    /// The last index the leader knows it holds (on the leader only).
    pub matched_index: Option<u64>,
    /// How far behind the leader's last index it is (on the leader only).
    pub lag_entries: Option<u64>,
}

/// This node's view of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// This node.
    pub node_id: NodeId,
    /// `leader`, `follower`, `candidate`, `learner` or `shutdown`.
    pub state: String,
    /// The leader it knows, if any.
    pub leader_id: Option<NodeId>,
    /// The leader's base URL.
    pub leader_url: Option<String>,
    /// The current term.
    pub term: u64,
    /// The last index of its log.
    pub last_log_index: Option<u64>,
    /// The last index it knows committed.
    pub commit_index: Option<u64>,
    /// The last index its state machine applied.
    pub applied_index: Option<u64>,
    /// The index of its latest snapshot (built here or installed from the leader).
    pub snapshot_index: Option<u64>,
    /// Whether it is recovering a damaged log (it neither votes nor leads meanwhile).
    pub recovering: bool,
    /// Terms this node has entered since it started (one per election it saw begin).
    pub elections_seen: u64,
    /// Voters and learners.
    pub members: Vec<Member>,
}

/// See the module doc.
pub struct RaftNode {
    id: NodeId,
    raft: Raft,
    /// The last index of this node's log when it started: it is ready once it has applied that far
    /// (or as far as the cluster has committed, if less).
    start_index: Option<u64>,
    raft_dir: PathBuf,
    /// Serialises incoming snapshot chunks (one leader sends them in order).
    incoming: tokio::sync::Mutex<()>,
    /// Set while the log is recovering from damage (see the module doc).
    recovering: Arc<std::sync::atomic::AtomicBool>,
    /// How long a leader may go without a majority's acknowledgement before it refuses work.
    quorum_silence: Duration,
    /// Terms this node has entered since it started: one per election it saw begin (won or not).
    elections: Arc<std::sync::atomic::AtomicU64>,
    /// Stops openraft's state machine at [`Self::shutdown`] (it holds nothing of the engine).
    closer: Closer,
    /// The term this node last became leader in and when, in this process: until a majority has
    /// acknowledged a leader (openraft's `last_quorum_acked` is empty until then), its silence counts
    /// from its election (see [`Self::quorum_silence_now`]).
    elected: Arc<parking_lot::Mutex<Option<(u64, Instant)>>>,
    /// When a leader's append (or heartbeat) was last accepted here, in this process: a follower
    /// restored its leader from its stored vote at start, and keeps it while no election succeeds, so
    /// "knows a leader" for readiness means "heard from it lately" (see [`Self::ready_reasons`]).
    leader_contact: parking_lot::Mutex<Option<Instant>>,
    /// This node's Raft log (shared with openraft), for what [`Rpc::Progress`] answers.
    log: LogStore,
}

impl std::fmt::Debug for RaftNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftNode")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl RaftNode {
    /// Starts this node over `engine` (its state machine) with its Raft files in `data_dir/raft`.
    pub async fn start<T: RaftTransport>(
        settings: ClusterSettings,
        data_dir: &Path,
        engine: Arc<dyn LogShipping>,
        transport: Arc<T>,
    ) -> Result<Self, StartError> {
        if !settings.peers.contains_key(&settings.node_id) {
            return Err(StartError::Settings(format!(
                "node {} is not among the peers {:?}",
                settings.node_id,
                settings.peers.keys().collect::<Vec<_>>()
            )));
        }
        let raft_dir = data_dir.join("raft");
        let (mut log, report) = LogStore::open(&raft_dir, RaftLogOptions::default())?;
        if report.cut_bytes > 0 && report.damage.is_none() {
            tracing::warn!(
                cut_bytes = report.cut_bytes,
                "raft log: cut a torn tail at open"
            );
        }
        let start_index = log.get_log_state().await?.last_log_id.map(|id| id.index);
        let stored_vote = openraft::storage::RaftLogReader::read_vote(&mut log).await?;
        // The term this node starts in, from its stored vote. IMPORTANT: not from the metrics right
        // after `Raft::new`, which still hold openraft's initial zeros until its core has started.
        let mut start_term = stored_vote.as_ref().map_or(0, |v| v.leader_id.term);
        let pristine = start_index.is_none() && stored_vote.is_none();
        // A wiped directory looks new: ask the peers whether this node had acknowledged entries (see
        // the module doc). A learner by invitation gets a new id when wiped, so never asks.
        // RECOVERING in an otherwise empty raft/ is a wiped start that crashed before its vote was
        // stored: its marker keeps what the peers said, so they are asked again only when it has no
        // vote floor (a marker of a version before floors).
        let marker_has_floor = log.recovering().map(|r| r.vote_floor.is_some());
        let mut wiped = pristine && marker_has_floor.is_some();
        if pristine && marker_has_floor != Some(true) && !settings.join_only {
            if let Some(lost) = lost_progress(&settings, &transport).await {
                tracing::warn!(
                    through = lost.through,
                    vote_floor = ?lost.vote_floor,
                    "{}: this node will not vote or lead until a leader has brought it up to date",
                    lost.reason
                );
                log.start_recovery(lost)?;
                wiped = true;
            }
        }
        let held = engine.last_lsn().0;
        if wiped && held > 0 {
            // Its raft/ is gone but its engine is not: entries at or below the engine's LSN would be
            // skipped on apply, so the cluster's log would never replace what the engine holds.
            // IMPORTANT: refused before the vote is stored, so raft/ stays without one and the next
            // start is taken for wiped (and refused) again.
            return Err(StartError::Settings(format!(
                "this node's raft/ directory is gone but its engine still holds writes (last LSN \
                 {held}), and its peers say it was a member: empty the whole data directory (the \
                 node then recovers everything from its peers under its id), or rebuild it under a \
                 new id (docs/cluster.md)"
            )));
        }
        let damaged = log.recovering();
        let floor = damaged.as_ref().and_then(|d| d.vote_floor);
        let stored = stored_vote.as_ref().map(|v| VoteFloor {
            term: v.leader_id.term,
            node_id: v.leader_id.node_id,
        });
        if let Some(floor) = floor.filter(|f| stored.is_none_or(|s| s < *f)) {
            // A wiped node's vote is gone too: it may have voted, or helped elect a leader, up to the
            // highest vote its peers hold (`Recovering::vote_floor`; openraft orders votes by term,
            // then by the node voted for). That vote, uncommitted (it claims no majority), makes this
            // node refuse votes and appends below it, and take the appends of the leader it names (a
            // committed vote ranks above it). A vote for itself instead would rank above a leader of
            // a lower id in the same term, and depose it. Stored here at every start rather than once
            // beside RECOVERING, so a crash between the two cannot leave a restart with a lower vote.
            let vote = crate::types::alias::Vote::new(floor.term, floor.node_id);
            openraft::storage::RaftLogStorage::save_vote(&mut log, &vote).await?;
            start_term = start_term.max(floor.term);
        }
        if let Some(damage) = damaged.as_ref().filter(|_| !wiped) {
            tracing::warn!(
                damage = %damage.reason,
                through = damage.through,
                "raft log is recovering from damage: this node will not vote or lead until a leader has brought it up to date"
            );
        }
        let log_handle = log.clone();
        let progress_log = log.clone();
        let ms = |d: Duration| d.as_millis().min(u64::MAX as u128) as u64;
        let config = Config {
            cluster_name: "moniepoint-kv".into(),
            heartbeat_interval: ms(settings.heartbeat),
            election_timeout_min: ms(settings.election_timeout.0),
            election_timeout_max: ms(settings.election_timeout.1),
            install_snapshot_timeout: 10_000,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(settings.snapshot_after_entries),
            max_in_snapshot_log_to_keep: settings.keep_entries_after_snapshot,
            // openraft bounds an append by entries, not bytes: a small count keeps each message (and
            // the receiver's body limit, see `MAX_APPEND_ENTRIES`) proportionate to the value limit.
            max_payload_entries: MAX_APPEND_ENTRIES,
            // A rejoining node asks before bumping the term, so it does not depose a healthy leader.
            enable_pre_vote: Some(true),
            // A restarted leader campaigns like anyone: restoring its leadership from its vote alone
            // would let a node whose log lost entries lead in its old term without an election (and
            // with the engine not synced per apply, serve stale linearizable reads after a crash).
            enable_leader_restore: Some(false),
            // A follower's log may go back (a damaged one, cut at open): the leader must then search
            // again from below what it last matched rather than assert it never happens.
            allow_log_reversion: Some(true),
            // A recovering node must not campaign, from the first tick on (see the module doc).
            enable_elect: damaged.is_none(),
            ..Config::default()
        }
        .validate()
        .map_err(|e| StartError::Settings(e.to_string()))?;

        // A node that never heard from a cluster (no log, no vote) holding writes made outside it (a
        // standalone server's): entries are applied with their Raft index as LSN and skipped at or below
        // the engine's last LSN, so as an ordinary member those writes would hide the cluster's first
        // ones on this node and exist on no other. The first member (the one that forms the cluster)
        // carries them in as the cluster's initial state instead; any other refuses to start.
        let outside = engine.last_lsn().0;
        let lowest = settings.peers.keys().next().copied();
        let first_member = lowest == Some(settings.node_id) && !settings.join_only;
        if pristine && outside > 0 && settings.join_only {
            return Err(StartError::Settings(format!(
                "this data directory holds writes (last LSN {outside}) but this follower has never \
                 been reached by its leader: a leader's log would be applied over them. Start the \
                 follower on an empty directory; it receives everything from the leader"
            )));
        }
        if pristine && outside > 0 && !(first_member && settings.init_from_data) {
            return Err(StartError::Settings(format!(
                "this data directory holds writes made outside the cluster (last LSN {outside}): only the \
                 first member (node {}, the lowest id), started with --cluster-init-from-data, may start \
                 with data, which becomes the new cluster's; start this one on an empty directory, or load \
                 the data through the cluster (kvctl --data-dir <this directory> export ..., then \
                 kvctl --url <member> import)",
                lowest.unwrap_or_default()
            )));
        }
        let sm = StateMachine::open(engine, &raft_dir)?;
        // A STATE without a log or a vote is a bootstrap that stopped before its purge marker: raft/
        // is there, not lost.
        if pristine
            && !wiped
            && first_member
            && sm.last_applied().is_none()
            && crate::identity::formed(data_dir)?
        {
            return Err(StartError::Settings(
                "this data directory formed a Raft cluster before, and its raft/ directory (vote and \
                 log) is gone: forming the cluster again would start a second one beside the first. \
                 Rebuild the node instead (docs/cluster.md: remove it, then add it back under a new id \
                 on an empty directory); to form a new cluster from its data on purpose, delete \
                 RAFT_FORMED from the data directory"
                    .into(),
            ));
        }
        let members: BTreeMap<NodeId, BasicNode> = settings
            .peers
            .iter()
            .map(|(id, url)| (*id, BasicNode::new(url)))
            .collect();
        // Bootstrapped now or before a restart: the cluster's first state is this engine's.
        let mut bootstrapped = pristine && sm.last_applied().is_some();
        if pristine && outside > 0 && sm.last_applied().is_none() {
            let n = sm.bootstrap(settings.node_id, members.clone())?;
            tracing::info!(
                node = settings.node_id,
                through_lsn = n,
                "formed the cluster from this node's existing data: it is the cluster's initial state"
            );
            bootstrapped = true;
        }
        // Not for a bootstrap (no log yet, by design): openraft builds its first snapshot then.
        if !pristine {
            sm.fall_back_to_snapshot(start_index);
        }
        let closer = sm.closer();
        let raft = Raft::new(
            settings.node_id,
            Arc::new(config),
            Network::new(transport),
            log,
            sm,
        )
        .await
        .map_err(|e| StartError::Raft(e.to_string()))?;
        let recovering = Arc::new(std::sync::atomic::AtomicBool::new(damaged.is_some()));
        if let Some(damage) = &damaged {
            tokio::spawn(finish_recovery_when_caught_up(
                raft.clone(),
                start_term,
                damage.through,
                log_handle,
                recovering.clone(),
            ));
        }
        let elections = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let elected = Arc::new(parking_lot::Mutex::new(None));
        tokio::spawn(watch_terms(
            raft.clone(),
            start_term,
            elections.clone(),
            elected.clone(),
        ));
        // A wiped first member must not form the cluster again: it exists, and it is catching up.
        if pristine && first_member && !bootstrapped && !wiped {
            match raft.initialize(members).await {
                Ok(()) => tracing::info!(node = settings.node_id, "initialised the cluster"),
                // Not pristine after all (a vote or a log arrived first): nothing to do.
                Err(RaftError::APIError(e)) => tracing::info!(error = %e, "cluster already formed"),
                Err(e) => return Err(StartError::Raft(e.to_string())),
            }
        }
        // The first member has formed its cluster now (or did before a restart, perhaps before this
        // marker existed, or stopped between forming and recording): record it if it is missing.
        if first_member && !crate::identity::formed(data_dir)? {
            crate::identity::record_formed(data_dir)?;
        }
        Ok(Self {
            id: settings.node_id,
            raft,
            start_index,
            raft_dir,
            incoming: tokio::sync::Mutex::new(()),
            recovering,
            quorum_silence: QUORUM_SILENCE.max(settings.election_timeout.1),
            elections,
            closer,
            elected,
            leader_contact: parking_lot::Mutex::new(None),
            log: progress_log,
        })
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// What this node knows of node `asker` now (the answer to [`Rpc::Progress`]).
    async fn progress_of(&self, asker: NodeId) -> Result<Progress, String> {
        let mut log = self.log.clone();
        let last_log_id = log
            .get_log_state()
            .await
            .map_err(|e| format!("reading the raft log's state: {e}"))?
            .last_log_id;
        let stored = openraft::storage::RaftLogReader::read_vote(&mut log)
            .await
            .map_err(|e| format!("reading the raft vote: {e}"))?;
        let m = self.raft.metrics().borrow_watched().clone();
        // Right after a start the metrics hold openraft's initial zeros (no membership, vote 0)
        // until its core has loaded the log: an answer then would make a wiped asker look new.
        if last_log_id.is_some()
            && m.membership_config
                .membership()
                .voter_ids()
                .next()
                .is_none()
        {
            return Err("this node is starting: ask again".into());
        }
        let leads = m.state == ServerState::Leader;
        let asker_votes = m
            .membership_config
            .membership()
            .voter_ids()
            .any(|v| v == asker);
        // The higher of the stored vote and the one in memory, by openraft's order of leader ids.
        let vote = [Some(&m.vote), stored.as_ref()]
            .into_iter()
            .flatten()
            .map(|v| (v.leader_id.term, v.leader_id.node_id))
            .max()
            .unwrap_or((0, 0));
        Ok(Progress {
            term: vote.0,
            voted_for: Some(vote.1),
            leads,
            last_log_index: m.last_log_index,
            matched: m
                .replication
                .as_ref()
                .filter(|_| leads)
                .and_then(|r| r.get(&asker).copied().flatten())
                .map(|l| l.index),
            last_log_term: last_log_id.map(|l| l.leader_id.term),
            asker_votes,
        })
    }

    /// Proposes `cmd` and waits until it is committed and applied here, for at most `timeout`. A
    /// leader just elected refuses writes until a quorum has acknowledged it: this waits that out.
    pub async fn write(&self, cmd: Command, timeout: Duration) -> Result<Written, ClusterError> {
        let deadline = Instant::now() + timeout;
        loop {
            self.check_quorum_contact()?;
            let left = deadline.saturating_duration_since(Instant::now());
            let attempt = tokio::time::timeout(left, self.raft.client_write(cmd.clone())).await;
            let answer = match attempt {
                Ok(answer) => answer,
                Err(_) => {
                    return Err(ClusterError::Unknown(format!(
                        "not committed within {timeout:?}; it may still be"
                    )))
                }
            };
            match answer {
                Ok(resp) => {
                    return Ok(Written {
                        lsn: resp.log_id.index,
                        term: resp.log_id.leader_id.term,
                    })
                }
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(fwd))) => {
                    // Nothing was proposed: safe to retry or to forward.
                    match (fwd.leader_id, fwd.leader_node) {
                        (Some(id), Some(node)) if id != self.id => {
                            return Err(ClusterError::NotLeader {
                                leader_id: id,
                                leader_url: node.addr,
                            })
                        }
                        _ if Instant::now() + Duration::from_millis(20) < deadline => {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        _ => {
                            return Err(ClusterError::Unavailable(format!(
                                "no leader with a quorum within {timeout:?}"
                            )))
                        }
                    }
                }
                Err(RaftError::APIError(ClientWriteError::LogEntryDiscarded(fwd))) => {
                    return Err(ClusterError::Unknown(format!(
                        "leadership changed after the write was proposed ({fwd})"
                    )))
                }
                Err(RaftError::APIError(e)) => return Err(ClusterError::Unknown(e.to_string())),
                // Proposed, then the node stopped: the entry may still commit elsewhere.
                Err(RaftError::Fatal(e)) => {
                    return Err(ClusterError::Unknown(format!(
                        "the raft node stopped after the write was proposed: {e}"
                    )))
                }
            }
        }
    }

    /// Waits until this node has applied everything committed before the call, as confirmed by a quorum
    /// (read index), for at most `timeout`: a read of the engine after it is linearizable. Returns the
    /// index read at.
    pub async fn read_barrier(&self, timeout: Duration) -> Result<u64, ClusterError> {
        self.check_quorum_contact()?;
        let attempt = tokio::time::timeout(
            timeout,
            self.raft.ensure_linearizable(ReadPolicy::ReadIndex),
        )
        .await;
        match attempt {
            Err(_) => Err(ClusterError::Unavailable(format!(
                "no quorum confirmed leadership within {timeout:?}"
            ))),
            Ok(Ok(read)) => Ok(read.log_id().index),
            Ok(Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(fwd)))) => {
                match (fwd.leader_id, fwd.leader_node) {
                    (Some(id), Some(node)) if id != self.id => Err(ClusterError::NotLeader {
                        leader_id: id,
                        leader_url: node.addr,
                    }),
                    _ => Err(ClusterError::Unavailable("no leader known".into())),
                }
            }
            Ok(Err(RaftError::APIError(e))) => Err(ClusterError::Unavailable(e.to_string())),
            Ok(Err(RaftError::Fatal(e))) => Err(ClusterError::Stopped(e.to_string())),
        }
    }

    /// Fails fast, before anything is proposed, when this node leads but no majority has acknowledged
    /// it for [`QUORUM_SILENCE`]: the majority is down or cut off (openraft keeps
    /// such a leader; a write to it would wait out its timeout with an unknown outcome). Such a
    /// leader's quorum may meanwhile have elected another: either way nothing can commit here now.
    fn check_quorum_contact(&self) -> Result<(), ClusterError> {
        let Some(silent) = self.quorum_silence_now() else {
            return Ok(());
        };
        if silent > self.quorum_silence {
            return Err(ClusterError::Unavailable(format!(
                "this node leads but no majority has answered it for {} ms: nothing was written",
                silent.as_millis()
            )));
        }
        Ok(())
    }

    /// How long this leader has gone without a majority's acknowledgement (counted from its election
    /// while none has acknowledged it yet: a leader cut off right after winning would otherwise pass
    /// for good); `None` when it does not lead, is a lone voter (its own quorum: openraft never
    /// re-dates its acknowledgement), or was elected so recently that [`watch_terms`] has not seen it
    /// yet (its first heartbeats are under way; `write` waits for them).
    fn quorum_silence_now(&self) -> Option<Duration> {
        let metrics = self.raft.metrics();
        // Read in place: this runs before every write, and the metrics hold maps worth not cloning.
        let m = metrics.borrow_watched();
        if m.state != ServerState::Leader {
            return None;
        }
        let mut voters = m.membership_config.membership().voter_ids();
        if voters.next() == Some(self.id) && voters.next().is_none() {
            return None;
        }
        if let Some(acked) = m.last_quorum_acked.as_ref() {
            return Some(openraft::Instant::elapsed(&**acked));
        }
        // Lock order: the metrics, then `elected` (the watcher never holds both).
        match *self.elected.lock() {
            Some((term, at)) if term == m.current_term => Some(at.elapsed()),
            _ => None,
        }
    }

    /// Adds node `id` at `url` as a learner (it receives the log but does not vote); returns once the
    /// change is committed (the learner may still be catching up: see `lag_entries`).
    pub async fn add_learner(&self, id: NodeId, url: &str) -> Result<u64, ClusterError> {
        let answer = self.raft.add_learner(id, BasicNode::new(url), false).await;
        Self::membership_outcome(answer)
    }

    /// Makes the learners `ids` voters (through openraft's joint consensus).
    pub async fn promote(
        &self,
        ids: std::collections::BTreeSet<NodeId>,
    ) -> Result<u64, ClusterError> {
        let answer = self
            .raft
            .change_membership(openraft::ChangeMembers::AddVoterIds(ids), false)
            .await;
        Self::membership_outcome(answer)
    }

    /// Removes node `id` from the cluster: from the voters if it is one, then from the members.
    pub async fn remove(&self, id: NodeId) -> Result<u64, ClusterError> {
        let is_voter = self
            .raft
            .metrics()
            .borrow_watched()
            .membership_config
            .membership()
            .voter_ids()
            .any(|v| v == id);
        let ids: std::collections::BTreeSet<NodeId> = [id].into();
        if is_voter {
            let answer = self
                .raft
                .change_membership(openraft::ChangeMembers::RemoveVoters(ids.clone()), false)
                .await;
            Self::membership_outcome(answer)?;
        }
        let answer = self
            .raft
            .change_membership(openraft::ChangeMembers::RemoveNodes(ids), false)
            .await;
        Self::membership_outcome(answer)
    }

    /// The log index of a committed membership change, or why there is none.
    fn membership_outcome(
        answer: Result<
            openraft::raft::ClientWriteResponse<TypeConfig>,
            RaftError<TypeConfig, ClientWriteError<TypeConfig>>,
        >,
    ) -> Result<u64, ClusterError> {
        match answer {
            Ok(resp) => Ok(resp.log_id.index),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(fwd))) => {
                match (fwd.leader_id, fwd.leader_node) {
                    (Some(leader_id), Some(node)) => Err(ClusterError::NotLeader {
                        leader_id,
                        leader_url: node.addr,
                    }),
                    _ => Err(ClusterError::Unavailable("no leader known".into())),
                }
            }
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => {
                Err(ClusterError::Refused(e.to_string()))
            }
            Err(RaftError::APIError(e)) => Err(ClusterError::Unknown(e.to_string())),
            Err(RaftError::Fatal(e)) => Err(ClusterError::Stopped(e.to_string())),
        }
    }

    /// Asks the leader (this node) to hand leadership to `to`.
    pub async fn transfer_leader(&self, to: NodeId) -> Result<(), ClusterError> {
        self.raft
            .trigger()
            .transfer_leader(to)
            .await
            .map_err(|e| ClusterError::Stopped(e.to_string()))
    }

    /// On the leader: waits until at least `needed` other members hold entry `index` in their logs
    /// (durably: a follower answers an append after its fsync), for at most `timeout`. `Err(n)`: only
    /// `n` did in time.
    pub async fn wait_replicated(
        &self,
        index: u64,
        needed: usize,
        timeout: Duration,
    ) -> Result<(), usize> {
        let mut metrics = self.raft.metrics();
        let holding = |m: &openraft::RaftMetrics<TypeConfig>| {
            m.replication.as_ref().map_or(0, |r| {
                r.iter()
                    .filter(|(id, matched)| {
                        **id != self.id && matched.is_some_and(|l| l.index >= index)
                    })
                    .count()
            })
        };
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let now = holding(&metrics.borrow_watched());
            if now >= needed {
                return Ok(());
            }
            match tokio::time::timeout_at(deadline, metrics.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return Err(now),
            }
        }
    }

    /// Waits until this node's state machine has applied log index `index`, for at most `timeout`;
    /// whether it did.
    pub async fn wait_applied(&self, index: u64, timeout: Duration) -> bool {
        let mut metrics = self.raft.metrics();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let applied = metrics
                .borrow_watched()
                .last_applied
                .as_ref()
                .map_or(0, |l| l.index);
            if applied >= index {
                return true;
            }
            match tokio::time::timeout_at(deadline, metrics.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return false,
            }
        }
    }

    /// Whether this node is recovering a damaged log (it does not vote or lead meanwhile).
    pub fn is_recovering(&self) -> bool {
        self.recovering.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Why this node cannot serve as a cluster member yet (empty: ready): it knows no leader, it has
    /// not applied what its log held at start (or what the cluster committed, if that is less; while no
    /// leader has told it, everything its log held), or it is recovering a damaged log.
    pub fn ready_reasons(&self) -> Vec<String> {
        let status = self.status();
        let mut reasons = Vec::new();
        if self.is_recovering() {
            reasons.push(
                "recovering a damaged raft log: not voting or leading until a leader has brought it up to date"
                    .into(),
            );
        }
        match (status.leader_id, &status.leader_url) {
            (None, _) => reasons.push(format!(
                "no Raft leader known (term {}): an election is under way or this node is cut off from the majority",
                status.term
            )),
            // Voted for, but not in the membership this node holds yet: writes could not be forwarded.
            (Some(id), None) => reasons.push(format!(
                "Raft leader {id} known (term {}) but not its address: the membership has not arrived yet",
                status.term
            )),
            (Some(id), Some(_)) if id == self.id => match self.quorum_silence_now() {
                Some(silent) if silent > self.quorum_silence => reasons.push(format!(
                    "this node leads (term {}) but no majority has answered it for {} ms",
                    status.term,
                    silent.as_millis()
                )),
                _ => {}
            },
            (Some(id), Some(_)) => {
                let heard = self.leader_contact.lock().map(|at| at.elapsed());
                match heard {
                    Some(silent) if silent <= self.quorum_silence => {}
                    Some(silent) => reasons.push(format!(
                        "no word from Raft leader {id} for {} ms (term {}): it may be gone, and no new leader is elected yet",
                        silent.as_millis(),
                        status.term
                    )),
                    None => reasons.push(format!(
                        "Raft leader {id} (term {}) remembered from before this node started has not been heard from since",
                        status.term
                    )),
                }
            }
        }
        let applied = status.applied_index.unwrap_or(0);
        // The commit index a leader granted (or this node as leader), not the local one: after a
        // restart the local one starts at what this node saved, and a log that holds entries past it
        // is caught up only once the cluster says how far they are committed (openraft's own
        // `wait_for_recovery` waits for the same).
        let cluster_commit = self
            .raft
            .metrics()
            .borrow_watched()
            .cluster_committed
            .map(|l| l.index);
        match (self.start_index, cluster_commit) {
            (Some(start), _) if applied >= start => {}
            (Some(start), None) => reasons.push(format!(
                "catching up: applied index {applied}, this node's log held {start} at start, and no leader has said yet how far it is committed"
            )),
            (Some(start), Some(commit)) if applied < start.min(commit) => reasons.push(format!(
                "catching up: applied index {applied}, {} needed (what this node's log held at start, as far as the cluster committed it)",
                start.min(commit)
            )),
            _ => {}
        }
        reasons
    }

    /// The leader this node knows (its id, and its URL if the membership names it) and the current
    /// term: what routing a request needs, read in place (every write asks; [`Self::status`] copies
    /// the whole membership).
    pub fn leader(&self) -> (Option<NodeId>, Option<String>, u64) {
        let metrics = self.raft.metrics();
        let m = metrics.borrow_watched();
        let url = m.current_leader.and_then(|l| {
            m.membership_config
                .membership()
                .get_node(&l)
                .map(|n| n.addr.clone())
        });
        (m.current_leader, url, m.current_term)
    }

    /// This node's view of the cluster.
    pub fn status(&self) -> ClusterStatus {
        let m = self.raft.metrics().borrow_watched().clone();
        let membership = m.membership_config.membership();
        let voters: std::collections::BTreeSet<NodeId> = membership.voter_ids().collect();
        let last = m.last_log_index;
        let members = membership
            .nodes()
            .map(|(id, node)| {
                let matched = m
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(id).copied().flatten())
                    .map(|l| l.index);
                Member {
                    id: *id,
                    url: node.addr.clone(),
                    role: if voters.contains(id) {
                        "voter"
                    } else {
                        "learner"
                    }
                    .into(),
                    matched_index: matched,
                    lag_entries: match (m.replication.as_ref(), last) {
                        (Some(_), Some(last)) => Some(last.saturating_sub(matched.unwrap_or(0))),
                        _ => None,
                    },
                }
            })
            .collect();
        let leader_url = m
            .current_leader
            .and_then(|l| membership.get_node(&l).map(|n| n.addr.clone()));
        ClusterStatus {
            node_id: self.id,
            state: match m.state {
                ServerState::Leader => "leader",
                ServerState::Follower => "follower",
                ServerState::Candidate => "candidate",
                ServerState::Learner => "learner",
                ServerState::Shutdown => "shutdown",
            }
            .into(),
            leader_id: m.current_leader,
            leader_url,
            term: m.current_term,
            last_log_index: last,
            commit_index: m.local_committed.map(|l| l.index),
            applied_index: m.last_applied.map(|l| l.index),
            snapshot_index: m.snapshot.map(|l| l.index),
            recovering: self.is_recovering(),
            elections_seen: self.elections.load(std::sync::atomic::Ordering::Relaxed),
            members,
        }
    }

    /// Answers a peer's message `rpc` (JSON `body`, see [`Rpc`]) with the JSON of the outcome; `Err`
    /// when the body is not such a message (the transport answers 400).
    pub async fn handle(&self, rpc: Rpc, body: &[u8]) -> Result<Vec<u8>, String> {
        fn decode<Q: serde::de::DeserializeOwned>(rpc: Rpc, body: &[u8]) -> Result<Q, String> {
            serde_json::from_slice(body).map_err(|e| format!("bad {} message: {e}", rpc.name()))
        }
        if self.is_recovering() {
            // Refuse what would make this node count in an election (see the module doc).
            match rpc {
                Rpc::Vote | Rpc::PreVote => {
                    let _: openraft::raft::VoteRequest<TypeConfig> = decode(rpc, body)?;
                    let vote = self.raft.metrics().borrow_watched().vote;
                    let refused: Result<
                        openraft::raft::VoteResponse<TypeConfig>,
                        RaftError<TypeConfig>,
                    > = Ok(openraft::raft::VoteResponse::new(vote, None, false));
                    return serde_json::to_vec(&refused)
                        .map_err(|e| format!("encoding the {} answer: {e}", rpc.name()));
                }
                Rpc::TransferLeader => {
                    let req: openraft::raft::TransferLeaderRequest<TypeConfig> = decode(rpc, body)?;
                    // openraft sends the request to every node; only one naming this node is refused.
                    if *req.to_node_id() == self.id {
                        let refused: Result<(), String> = Err(
                            "this node is recovering a damaged raft log and cannot lead yet".into(),
                        );
                        return serde_json::to_vec(&refused)
                            .map_err(|e| format!("encoding the {} answer: {e}", rpc.name()));
                    }
                }
                Rpc::Append | Rpc::Snapshot | Rpc::Progress => {}
            }
        }
        let encoded = match rpc {
            Rpc::Append => {
                let answer = self.raft.append_entries(decode(rpc, body)?).await;
                // Any answer but "your term is over" means a leader of this node's term spoke.
                if matches!(
                    answer,
                    Ok(ref r) if !matches!(r, openraft::raft::AppendEntriesResponse::HigherVote(_))
                ) {
                    *self.leader_contact.lock() = Some(Instant::now());
                }
                serde_json::to_vec(&answer)
            }
            Rpc::Vote => serde_json::to_vec(&self.raft.vote(decode(rpc, body)?).await),
            Rpc::PreVote => serde_json::to_vec(&self.raft.pre_vote(decode(rpc, body)?).await),
            Rpc::TransferLeader => serde_json::to_vec(
                &self
                    .raft
                    .handle_transfer_leader(decode(rpc, body)?)
                    .await
                    .map_err(|e| e.to_string()),
            ),
            Rpc::Snapshot => {
                let chunk: SnapshotChunk = decode(rpc, body)?;
                serde_json::to_vec(&self.receive_chunk(chunk).await)
            }
            Rpc::Progress => {
                let ask: ProgressRequest = decode(rpc, body)?;
                serde_json::to_vec(&self.progress_of(ask.asker).await)
            }
        };
        encoded.map_err(|e| format!("encoding the {} answer: {e}", rpc.name()))
    }

    /// Appends a snapshot chunk to `raft/incoming.snap`; installs the snapshot after the last one.
    async fn receive_chunk(
        &self,
        chunk: SnapshotChunk,
    ) -> Result<Option<openraft::raft::SnapshotResponse<TypeConfig>>, String> {
        let _one_at_a_time = self.incoming.lock().await;
        let path = self.raft_dir.join("incoming.snap");
        let written = (|| -> std::io::Result<()> {
            use std::os::unix::fs::FileExt;
            let file = if chunk.offset == 0 {
                std::fs::File::create(&path)?
            } else {
                std::fs::OpenOptions::new().write(true).open(&path)?
            };
            let have = file.metadata()?.len();
            if have != chunk.offset {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("chunk at {} but {have} bytes received", chunk.offset),
                ));
            }
            file.write_all_at(&chunk.bytes, chunk.offset)?;
            if chunk.done {
                file.sync_all()?;
            }
            Ok(())
        })();
        written.map_err(|e| format!("receiving the snapshot: {e}"))?;
        if !chunk.done {
            return Ok(None);
        }
        let snapshot = openraft::type_config::alias::SnapshotOf::<TypeConfig, SnapshotFile> {
            meta: chunk.meta,
            snapshot: SnapshotFile { path },
        };
        self.raft
            .install_full_snapshot(chunk.vote, snapshot)
            .await
            .map(Some)
            .map_err(|e| e.to_string())
    }

    /// Stops this node's Raft tasks, then any snapshot build running in the background, and returns
    /// once none runs. openraft's state-machine task may still finish commands queued before its
    /// shutdown (see `StateMachine::close`); the engine stays open with its owner, who closes it.
    pub async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
        self.closer.close().await;
    }
}

/// Ends the recovery from a damaged log once it is safe (see the module doc): this node has applied
/// entries through `through`, or an entry of a term after `start_term` (the term of its vote when it
/// started). The latter covers a `through` past the cluster's log (a deposed leader's uncommitted tail):
/// the leader of that later term held every entry committed before it, so the applied prefix does too.
/// A lone voter never finishes by itself: with nobody to fetch from, accepting the loss is the
/// operator's call (remove `raft/RECOVERING`; docs/cluster.md).
async fn finish_recovery_when_caught_up(
    raft: Raft,
    start_term: u64,
    through: u64,
    log: LogStore,
    flag: Arc<std::sync::atomic::AtomicBool>,
) {
    let mut metrics = raft.metrics();
    loop {
        let caught_up = {
            let m = metrics.borrow_watched();
            m.last_applied
                .as_ref()
                .is_some_and(|a| a.index >= through || a.leader_id.term > start_term)
        };
        if caught_up {
            match log.finish_recovery() {
                Ok(()) => {
                    flag.store(false, std::sync::atomic::Ordering::Release);
                    raft.runtime_config().elect(true);
                    tracing::info!(
                        "raft log caught up after its loss: voting and campaigning again"
                    );
                }
                Err(e) => tracing::error!(error = %e, "raft log: cannot end the recovery"),
            }
            return;
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

/// How long a starting node waits for its peers' answers to [`Rpc::Progress`].
const PROGRESS_TIMEOUT: Duration = Duration::from_secs(1);

/// What this node may have acknowledged before its `raft/` directory was emptied, as its peers tell
/// it: `Some(marker)` when a peer that leads now has replicated to this node, or when a peer holds
/// entries of an elected leader (a last entry of a term above 0) and counts this node as a voter. In
/// the first case this node held entries; in the second it may have (a quorum elected that leader,
/// and any entry committed since had a quorum this node may have been part of, as leader or
/// follower, whoever leads now), and treating a new voter as one that forgot costs only the wait
/// until a leader has brought it up to date. `through` is the highest last log index any peer
/// reports (at least what the leader had matched: every entry the cluster may have committed with
/// this node's help is at or below it), and `vote_floor` the highest vote any peer holds (the term
/// rule of [`finish_recovery_when_caught_up`] counts from its term). `None` when no peer answers within
/// [`PROGRESS_TIMEOUT`] or none holds entries of a leader: a cluster still forming (its first
/// election is not won, so none of its members voted in a term that counts or holds an entry to
/// lose), or one nobody can vouch for (`docs/cluster.md` says what that leaves).
async fn lost_progress<T: RaftTransport>(
    settings: &ClusterSettings,
    transport: &Arc<T>,
) -> Option<kv_infra_fs::raft_log::Recovering> {
    let ask = serde_json::to_vec(&ProgressRequest {
        asker: settings.node_id,
    })
    .ok()?;
    let asks = settings
        .peers
        .iter()
        .filter(|(id, _)| **id != settings.node_id)
        .map(|(id, url)| {
            let (transport, ask) = (transport.clone(), ask.clone());
            async move {
                // A peer that answers "starting" (its metrics not loaded yet) is asked again until the
                // timeout; one that cannot be reached is not waited for (a cluster forming starts all
                // its nodes at once, and none answers before it has started).
                let deadline = tokio::time::Instant::now() + PROGRESS_TIMEOUT;
                loop {
                    let call = transport.call(*id, url, Rpc::Progress, ask.clone());
                    let answer = tokio::time::timeout_at(deadline, call).await.ok()?.ok()?;
                    let progress: Result<Progress, String> = match serde_json::from_slice(&answer) {
                        Ok(progress) => progress,
                        Err(e) => {
                            // Counted as silence, which may let a wiped node start as a new one.
                            tracing::warn!(peer = *id, "unreadable answer to progress: {e}");
                            return None;
                        }
                    };
                    match progress {
                        Ok(p) => return Some((*id, p)),
                        Err(_) if tokio::time::Instant::now() < deadline => {
                            let next = tokio::time::Instant::now() + Duration::from_millis(50);
                            tokio::time::sleep_until(next.min(deadline)).await;
                        }
                        Err(_) => return None,
                    }
                }
            }
        });
    let answers: Vec<(NodeId, Progress)> = futures_util::future::join_all(asks)
        .await
        .into_iter()
        .flatten()
        .collect();
    let vouched = answers
        .iter()
        .find_map(|(id, p)| p.leads.then_some(p.matched).flatten().map(|m| (*id, m)));
    let elected = answers
        .iter()
        .find(|(_, p)| p.asker_votes && p.last_log_term.is_some_and(|t| t > 0))
        .map(|(id, _)| *id);
    let reason = match (vouched, elected) {
        (Some((leader, matched)), _) => format!(
            "raft/ was empty at start, but node {leader}, which leads, had replicated to this node \
             through index {matched}: this node's data directory was wiped, and it forgot entries it \
             had acknowledged and any vote it had given"
        ),
        (None, Some(peer)) => format!(
            "raft/ was empty at start, but node {peer} holds entries of an elected leader and counts \
             this node as a voter: this node may have acknowledged entries or given a vote that it no \
             longer has (a wiped data directory), so it takes itself to have lost them"
        ),
        (None, None) => return None,
    };
    // A peer of a version without `voted_for`: node 0, below every node of its term.
    let vote_floor = answers
        .iter()
        .map(|(_, p)| VoteFloor {
            term: p.term,
            node_id: p.voted_for.unwrap_or(0),
        })
        .max();
    let through = answers
        .iter()
        .filter_map(|(_, p)| p.last_log_index)
        .max()
        .unwrap_or(0)
        .max(vouched.map_or(0, |(_, m)| m));
    Some(kv_infra_fs::raft_log::Recovering {
        through,
        vote_floor,
        reason,
    })
}

/// Counts the terms this node enters after it started (from its own campaign or a peer's message),
/// and records when it became leader in each term it leads.
async fn watch_terms(
    raft: Raft,
    start_term: u64,
    count: Arc<std::sync::atomic::AtomicU64>,
    elected: Arc<parking_lot::Mutex<Option<(u64, Instant)>>>,
) {
    let mut metrics = raft.metrics();
    let mut term = start_term;
    loop {
        let (now, leads) = {
            let m = metrics.borrow_watched();
            (m.current_term, m.state == ServerState::Leader)
        };
        if now > term {
            count.fetch_add(now - term, std::sync::atomic::Ordering::Relaxed);
            term = now;
        }
        if leads {
            let mut elected = elected.lock();
            if elected.is_none_or(|(t, _)| t != now) {
                *elected = Some((now, Instant::now()));
            }
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}
