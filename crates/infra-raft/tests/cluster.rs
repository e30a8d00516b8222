//! Three Raft nodes in one process, each over its own data directory (the `kv-infra-fs` Raft log and an
//! `FsEngine` state machine), talking JSON through an in-process transport that can cut a node off: the
//! cluster forms by itself, a write is acknowledged once, the leader's loss elects another that takes
//! writes, the old leader returns and converges, and a node that missed a purged stretch of the log
//! catches up from a snapshot sent in chunks. No acknowledged write may be lost anywhere.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kv_domain::{BatchOp, Durability, Engine, Key, KeyRange, LogShipping, Value};
use kv_infra_fs::{FsEngine, Options};
use kv_infra_raft::{
    ClusterError, ClusterSettings, Command, NodeId, RaftNode, RaftTransport, Rpc, TransportError,
};
use parking_lot::Mutex;

/// Routes each message to the target node's `handle`, through the JSON both ends speak.
#[derive(Default)]
struct Loopback {
    nodes: Mutex<BTreeMap<NodeId, Arc<RaftNode>>>,
    /// Appends (heartbeats too) are lost while set; votes still go through.
    lose_appends: std::sync::atomic::AtomicBool,
    /// Appends and snapshots to these nodes are lost; everything else goes through.
    starved: Mutex<std::collections::BTreeSet<NodeId>>,
    /// This many `progress` questions are answered "starting" (as a peer whose metrics are not loaded
    /// yet does) before they reach the node.
    progress_starting: std::sync::atomic::AtomicU32,
}

impl RaftTransport for Loopback {
    async fn call(
        &self,
        target: NodeId,
        _url: &str,
        rpc: Rpc,
        body: Vec<u8>,
    ) -> Result<Vec<u8>, TransportError> {
        if rpc == Rpc::Append && self.lose_appends.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(TransportError::Unreachable("appends are lost".into()));
        }
        if matches!(rpc, Rpc::Append | Rpc::Snapshot) && self.starved.lock().contains(&target) {
            return Err(TransportError::Unreachable(format!(
                "appends to node {target} are lost"
            )));
        }
        if rpc == Rpc::Progress
            && self
                .progress_starting
                .fetch_update(
                    std::sync::atomic::Ordering::Relaxed,
                    std::sync::atomic::Ordering::Relaxed,
                    |n| n.checked_sub(1),
                )
                .is_ok()
        {
            return Ok(
                serde_json::to_vec(&Err::<(), _>("this node is starting: ask again")).unwrap(),
            );
        }
        let node = self.nodes.lock().get(&target).cloned();
        match node {
            None => Err(TransportError::Unreachable(format!(
                "node {target} is down"
            ))),
            Some(node) => node
                .handle(rpc, &body)
                .await
                .map_err(TransportError::Network),
        }
    }
}

struct Cluster {
    transport: Arc<Loopback>,
    dirs: BTreeMap<NodeId, PathBuf>,
    engines: BTreeMap<NodeId, Arc<FsEngine>>,
    settings: ClusterSettings,
    _root: tempfile::TempDir,
}

fn peers(n: u64) -> BTreeMap<NodeId, String> {
    (1..=n)
        .map(|id| (id, format!("http://node-{id}")))
        .collect()
}

fn open_engine(dir: &Path) -> Arc<FsEngine> {
    Arc::new(
        FsEngine::open(
            dir.join("data"),
            Options {
                durability: Durability::Always,
                ..Options::default()
            },
        )
        .unwrap(),
    )
}

impl Cluster {
    async fn start(settings: ClusterSettings) -> Self {
        Self::start_over(settings, Loopback::default()).await
    }

    async fn start_over(settings: ClusterSettings, transport: Loopback) -> Self {
        let root = tempfile::tempdir().unwrap();
        let mut cluster = Cluster {
            transport: Arc::new(transport),
            dirs: BTreeMap::new(),
            engines: BTreeMap::new(),
            settings,
            _root: root,
        };
        for id in cluster.settings.peers.keys().copied().collect::<Vec<_>>() {
            let dir = cluster._root.path().join(format!("node-{id}"));
            cluster.dirs.insert(id, dir);
            cluster.boot(id).await;
        }
        cluster
    }

    async fn boot(&mut self, id: NodeId) {
        let dir = self.dirs[&id].clone();
        let engine = open_engine(&dir);
        let settings = ClusterSettings {
            node_id: id,
            ..self.settings.clone()
        };
        let shipping: Arc<dyn LogShipping> = engine.clone();
        let node = RaftNode::start(settings, &dir, shipping, self.transport.clone())
            .await
            .unwrap();
        self.engines.insert(id, engine);
        self.transport.nodes.lock().insert(id, Arc::new(node));
    }

    /// Cuts the node off, stops it and closes its engine (as a crash would, minus the torn tail).
    async fn kill(&mut self, id: NodeId) {
        let node = self.transport.nodes.lock().remove(&id).unwrap();
        node.shutdown().await;
        drop(node);
        let mut engine = self.engines.remove(&id).unwrap();
        // The state machine holds the other handle until openraft's state-machine task has ended,
        // which can be a moment after `shutdown` returns.
        let deadline = Instant::now() + Duration::from_secs(10);
        let engine = loop {
            match Arc::try_unwrap(engine) {
                Ok(engine) => break engine,
                Err(shared) => {
                    assert!(Instant::now() < deadline, "engine of {id} still shared");
                    engine = shared;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        };
        engine.close().unwrap();
    }

    fn node(&self, id: NodeId) -> Arc<RaftNode> {
        self.transport.nodes.lock()[&id].clone()
    }

    fn live(&self) -> Vec<NodeId> {
        self.transport.nodes.lock().keys().copied().collect()
    }

    /// Waits for a leader among the live nodes that they all agree on.
    async fn leader(&self, within: Duration) -> NodeId {
        let deadline = Instant::now() + within;
        loop {
            let live = self.live();
            let views: Vec<_> = live.iter().map(|id| self.node(*id).status()).collect();
            if let Some(leader) = views.iter().find(|s| s.state == "leader") {
                if live.contains(&leader.node_id)
                    && views.iter().all(|s| s.leader_id == Some(leader.node_id))
                {
                    return leader.node_id;
                }
            }
            assert!(Instant::now() < deadline, "no agreed leader: {views:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn put(&self, key: &str, value: &[u8]) -> Result<(u64, u64), ClusterError> {
        self.write(BatchOp::Put {
            key: Key::from(key),
            value: Value::from(value.to_vec()),
        })
        .await
    }

    /// Writes through any live node, following a `NotLeader` answer once, as a client would.
    async fn write(&self, op: BatchOp) -> Result<(u64, u64), ClusterError> {
        let cmd = Command::from_ops(&[op]);
        let first = self.live()[0];
        let timeout = Duration::from_secs(5);
        match self.node(first).write(cmd.clone(), timeout).await {
            Err(ClusterError::NotLeader { leader_id, .. }) => {
                let Some(leader) = self.transport.nodes.lock().get(&leader_id).cloned() else {
                    // Its peers have not noticed yet that the leader is gone.
                    return Err(ClusterError::Unavailable(format!(
                        "leader {leader_id} is down"
                    )));
                };
                let w = leader.write(cmd, timeout).await?;
                Ok((w.term, w.lsn))
            }
            other => other.map(|w| (w.term, w.lsn)),
        }
    }

    async fn wait_applied(&self, id: NodeId, lsn: u64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.node(id).status().applied_index.unwrap_or(0) < lsn {
            assert!(
                Instant::now() < deadline,
                "node {id} never applied {lsn}: {:?}",
                self.node(id).status()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn wait_none_recovering(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        for id in self.live() {
            while self.node(id).is_recovering() {
                assert!(
                    Instant::now() < deadline,
                    "node {id} is still recovering: {:?}",
                    self.node(id).status()
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    /// The term node `id` shows once its metrics have left openraft's initial zeros (at most 2 s).
    async fn settled_term(&self, id: NodeId) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let term = self.node(id).status().term;
            if term != 0 || Instant::now() >= deadline {
                return term;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn wait_recovered(&self, id: NodeId) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.node(id).is_recovering() {
            assert!(
                Instant::now() < deadline,
                "node {id} never recovered: {:?}",
                self.node(id).status()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Asserts that every key `k000`.. of `n` written by [`write_keys`] holds its value on `id`.
    fn assert_keys(&self, id: NodeId, n: usize) {
        for i in 0..n {
            assert_eq!(
                self.engines[&id]
                    .get(&Key::from(format!("k{i:03}").as_str()))
                    .unwrap(),
                Some(Value::from(value(i, 50))),
                "k{i:03} on node {id}"
            );
        }
    }

    /// Writes keys `k000`.. of `n`; the index of the last one.
    async fn write_keys(&self, n: usize) -> u64 {
        let mut last = 0;
        for i in 0..n {
            last = self
                .put(&format!("k{i:03}"), &value(i, 50))
                .await
                .unwrap()
                .1;
        }
        last
    }

    fn contents(&self, id: NodeId) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.engines[&id]
            .scan(&KeyRange::all(), usize::MAX)
            .unwrap()
            .into_iter()
            .map(|e| (e.key.as_bytes().to_vec(), e.value.as_bytes().to_vec()))
            .collect()
    }
}

fn value(i: usize, size: usize) -> Vec<u8> {
    let mut v = format!("value {i} ").into_bytes();
    v.resize(size, b'x');
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_dies_another_takes_writes_and_no_acknowledged_write_is_lost() {
    let mut c = Cluster::start(ClusterSettings::new(0, peers(3))).await;
    let first_leader = c.leader(Duration::from_secs(10)).await;
    // Two must elect without the first leader: none may still be catching up from its first start.
    c.wait_none_recovering().await;
    let mut acked: BTreeMap<String, (Vec<u8>, u64, u64)> = BTreeMap::new();
    for i in 0..30 {
        let key = format!("k{i:03}");
        let (term, lsn) = c.put(&key, &value(i, 100)).await.unwrap();
        acked.insert(key, (value(i, 100), term, lsn));
    }
    c.kill(first_leader).await;
    let down = Instant::now();
    // The first write the survivors acknowledge after the loss.
    let (term, lsn) = loop {
        match c.put("after-failover", b"1").await {
            Ok(ack) => break ack,
            Err(
                ClusterError::Unavailable(_)
                | ClusterError::Unknown(_)
                | ClusterError::NotLeader { .. },
            ) => {
                assert!(
                    down.elapsed() < Duration::from_secs(15),
                    "no leader took writes"
                );
            }
            Err(e) => panic!("{e}"),
        }
    };
    eprintln!(
        "a new leader took a write {:?} after the old one died",
        down.elapsed()
    );
    acked.insert("after-failover".into(), (b"1".to_vec(), term, lsn));
    let second_leader = c.leader(Duration::from_secs(10)).await;
    assert_ne!(second_leader, first_leader);
    for i in 30..60 {
        let key = format!("k{i:03}");
        let (term, lsn) = c.put(&key, &value(i, 100)).await.unwrap();
        acked.insert(key, (value(i, 100), term, lsn));
    }
    // Every acknowledgement's (term, LSN) is unique per LSN, and LSNs only grow with terms.
    let lsns: HashSet<u64> = acked.values().map(|(_, _, lsn)| *lsn).collect();
    assert_eq!(lsns.len(), acked.len(), "two acknowledgements share an LSN");
    c.boot(first_leader).await;
    let last = acked.values().map(|(_, _, lsn)| *lsn).max().unwrap();
    for id in c.live() {
        c.wait_applied(id, last).await;
    }
    let reference = c.contents(second_leader);
    for id in c.live() {
        assert_eq!(c.contents(id), reference, "node {id} differs");
    }
    let held: BTreeMap<Vec<u8>, Vec<u8>> = reference.into_iter().collect();
    for (key, (v, _, lsn)) in &acked {
        assert_eq!(
            held.get(key.as_bytes()),
            Some(v),
            "acknowledged write {key} at {lsn} lost"
        );
    }
    for id in c.live() {
        c.node(id).shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_missed_a_purged_stretch_catches_up_from_a_chunked_snapshot() {
    let settings = ClusterSettings {
        snapshot_after_entries: 20,
        keep_entries_after_snapshot: 0,
        ..ClusterSettings::new(0, peers(3))
    };
    let mut c = Cluster::start(settings).await;
    let leader = c.leader(Duration::from_secs(10)).await;
    c.wait_none_recovering().await;
    let lagging = *c.live().iter().find(|id| **id != leader).unwrap();
    // Keys the lagging node holds and the others delete while it is away: the snapshot must remove them.
    let mut last = 0;
    for i in 0..10 {
        last = c.put(&format!("old{i}"), b"doomed").await.unwrap().1;
    }
    c.wait_applied(lagging, last).await;
    c.kill(lagging).await;
    for i in 0..10 {
        c.write(BatchOp::Delete {
            key: Key::from(format!("old{i}").as_str()),
        })
        .await
        .unwrap();
    }
    // 120 values of 20 KiB: a snapshot of ~2.4 MB, sent in three chunks.
    for i in 0..120 {
        last = c
            .put(&format!("k{i:03}"), &value(i, 20 << 10))
            .await
            .unwrap()
            .1;
    }
    c.boot(lagging).await;
    let leader = c.leader(Duration::from_secs(10)).await;
    c.wait_applied(lagging, last).await;
    let status = c.node(lagging).status();
    assert!(
        status.snapshot_index.is_some_and(|s| s > 20),
        "caught up without a snapshot: {status:?}"
    );
    assert_eq!(c.contents(lagging), c.contents(leader), "{status:?}");
    assert_eq!(c.contents(lagging).len(), 120);
    for id in c.live() {
        c.node(id).shutdown().await;
    }
}

/// A leader no majority ever acknowledged (here every append is lost from the start, so it wins its
/// election by votes and the others never even learn the membership; in production, a leader cut off
/// right after winning) counts its silence from its election: after the quorum silence it is not
/// ready, and it refuses a write at once instead of waiting out the write's timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_no_majority_ever_acknowledged_is_not_ready_and_refuses_writes_at_once() {
    let transport = Loopback::default();
    transport
        .lose_appends
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let c = Cluster::start_over(ClusterSettings::new(0, peers(3)), transport).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.node(1).status().state != "leader" {
        assert!(Instant::now() < deadline, "{:?}", c.node(1).status());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elected = Instant::now();
    let reasons = loop {
        let reasons = c.node(1).ready_reasons();
        if !reasons.is_empty() {
            break reasons;
        }
        assert!(
            elected.elapsed() < Duration::from_secs(10),
            "a leader nobody acknowledged stays ready: {:?}",
            c.node(1).status()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        elected.elapsed() >= kv_infra_raft::QUORUM_SILENCE - Duration::from_millis(100),
        "not ready before the quorum silence passed: {reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("no majority")),
        "{reasons:?}"
    );
    assert_eq!(c.node(1).status().state, "leader", "the scenario holds");
    let started = Instant::now();
    let answer = c
        .node(1)
        .write(
            Command::from_ops(&[BatchOp::Put {
                key: Key::from("k"),
                value: Value::from(b"v".to_vec()),
            }]),
            Duration::from_secs(5),
        )
        .await;
    assert!(
        matches!(answer, Err(ClusterError::Unavailable(_))),
        "{answer:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "refused after {:?}",
        started.elapsed()
    );
    for id in c.live() {
        c.node(id).shutdown().await;
    }
}

/// A member whose data directory was wiped, started again under its old id: its `raft/` is empty, so
/// by itself it would look new and could vote for a candidate missing writes it had acknowledged. Its
/// peers tell it otherwise (the leader had replicated to it), so it neither votes nor leads until a
/// leader has brought it up to date: while the leader's appends to it are lost it stays so; once they
/// arrive it catches up, holds every write and takes part again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_member_back_under_its_old_id_does_not_vote_until_it_has_caught_up() {
    let mut c = Cluster::start(ClusterSettings::new(0, peers(3))).await;
    let mut leader = c.leader(Duration::from_secs(10)).await;
    // A node booted after the first election was won takes itself for wiped until the leader has
    // brought it up to date (see `lost_progress`); that takes moments.
    c.wait_none_recovering().await;
    // The victim is node 1, the member that formed the cluster: wiped, it must not form it again.
    let victim = 1;
    if leader == victim {
        c.node(victim).transfer_leader(2).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while leader == victim {
            assert!(Instant::now() < deadline, "leadership never moved");
            tokio::time::sleep(Duration::from_millis(20)).await;
            leader = c.leader(Duration::from_secs(10)).await;
        }
    }
    let mut last = 0;
    for i in 0..40 {
        last = c.put(&format!("k{i:03}"), &value(i, 50)).await.unwrap().1;
    }
    let term = c.node(leader).status().term;
    c.wait_applied(victim, last).await;
    c.kill(victim).await;
    std::fs::remove_dir_all(&c.dirs[&victim]).unwrap();
    c.transport.starved.lock().insert(victim);
    c.boot(victim).await;
    let node = c.node(victim);
    assert!(node.is_recovering(), "{:?}", node.status());
    assert!(node.status().recovering);
    // It starts in the leader's term (its forgotten vote replaced by one it cannot have given), not
    // in term 0 as a new node would, and did not form a second cluster.
    assert_eq!(c.settled_term(victim).await, term, "{:?}", node.status());
    let at_leader = c.node(leader).status();
    assert_eq!((at_leader.state.as_str(), at_leader.term), ("leader", term));
    let reasons = node.ready_reasons();
    assert!(
        reasons.iter().any(|r| r.contains("recovering")),
        "{reasons:?}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(node.is_recovering(), "nothing arrived: still recovering");
    assert_eq!(node.status().applied_index, None);

    c.transport.starved.lock().clear();
    let deadline = Instant::now() + Duration::from_secs(10);
    while node.is_recovering() {
        assert!(
            Instant::now() < deadline,
            "never recovered: {:?}",
            node.status()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    c.wait_applied(victim, last).await;
    let engine = &c.engines[&victim];
    for i in 0..40 {
        assert_eq!(
            engine.get(&Key::from(format!("k{i:03}").as_str())).unwrap(),
            Some(Value::from(value(i, 50))),
            "k{i:03} on the rebuilt node"
        );
    }
    // It takes part again: with the old leader gone, the other two elect one and take writes.
    c.kill(leader).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while c.put("after", b"1").await.is_err() {
        assert!(Instant::now() < deadline, "no leader without the old one");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A wiped leader comes back under its old id after the others elected a new one, which has never
/// replicated to it: nobody can vouch for what it held, but a peer holds entries of an elected
/// leader and counts it as a voter, so it recovers (in the new leader's term) instead of starting as
/// a new node, and votes only once it holds everything again. Its peers first answer "starting", as
/// one whose metrics are not loaded yet does: it asks again within its second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_leader_back_under_its_old_id_recovers_though_no_leader_replicated_to_it() {
    let mut c = Cluster::start(ClusterSettings::new(0, peers(3))).await;
    let victim = c.leader(Duration::from_secs(10)).await;
    c.wait_none_recovering().await;
    let last = c.write_keys(40).await;
    for id in c.live() {
        c.wait_applied(id, last).await;
    }
    c.kill(victim).await;
    std::fs::remove_dir_all(&c.dirs[&victim]).unwrap();
    let leader = c.leader(Duration::from_secs(10)).await;
    let term = c.node(leader).status().term;
    c.transport.starved.lock().insert(victim);
    // Its peers answer "starting" at first: it asks again rather than take them for silent.
    c.transport
        .progress_starting
        .store(4, std::sync::atomic::Ordering::Relaxed);
    c.boot(victim).await;
    let node = c.node(victim);
    assert!(node.is_recovering(), "{:?}", node.status());
    assert_eq!(c.settled_term(victim).await, term, "{:?}", node.status());
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(node.is_recovering(), "nothing arrived: still recovering");
    let at_leader = c.node(leader).status();
    assert_eq!(
        (at_leader.state.as_str(), at_leader.term),
        ("leader", term),
        "undisturbed"
    );

    c.transport.starved.lock().clear();
    c.wait_recovered(victim).await;
    c.wait_applied(victim, last).await;
    c.assert_keys(victim, 40);
}

/// A wiped follower comes back while its leader is down: the one peer left does not lead, so none
/// can vouch for it, but that peer holds entries of an elected leader, so the wiped node refuses its
/// vote. The peer alone cannot be elected (it might lack entries the wiped node had acknowledged):
/// no leader until the old one returns; then the wiped node catches up and votes again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_member_no_leader_can_vouch_for_refuses_its_vote_until_it_has_caught_up() {
    let mut c = Cluster::start(ClusterSettings::new(0, peers(3))).await;
    let leader = c.leader(Duration::from_secs(10)).await;
    c.wait_none_recovering().await;
    let last = c.write_keys(40).await;
    for id in c.live() {
        c.wait_applied(id, last).await;
    }
    let victim = c.live().into_iter().find(|id| *id != leader).unwrap();
    let survivor = c
        .live()
        .into_iter()
        .find(|id| *id != leader && *id != victim)
        .unwrap();
    c.kill(victim).await;
    c.kill(leader).await;
    std::fs::remove_dir_all(&c.dirs[&victim]).unwrap();
    c.boot(victim).await;
    assert!(
        c.node(victim).is_recovering(),
        "{:?}",
        c.node(victim).status()
    );
    // Several election timeouts (300–600 ms): the survivor campaigns and is refused every time.
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        for id in [victim, survivor] {
            let s = c.node(id).status();
            assert_ne!(
                s.state, "leader",
                "node {id} leads without a safe majority: {s:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(c.node(victim).is_recovering());

    c.boot(leader).await;
    c.wait_recovered(victim).await;
    c.wait_applied(victim, last).await;
    c.assert_keys(victim, 40);
    assert!(c.put("after", b"1").await.is_ok());
}

/// A wiped node crashed after storing `RECOVERING` but before its vote: the marker's vote floor still
/// makes the restart start in the leader's term, so entries of that term do not end the recovery
/// early (the term rule counts only a later term), and one of a later term does. The victim's id is
/// above the leader's, where a vote for itself would have deposed the leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_node_that_crashed_before_its_vote_still_starts_in_its_peers_term() {
    let mut c = Cluster::start(ClusterSettings::new(0, peers(3))).await;
    let mut leader = c.leader(Duration::from_secs(10)).await;
    if leader != 1 {
        c.node(leader).transfer_leader(1).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while leader != 1 {
            assert!(Instant::now() < deadline, "leadership never moved");
            tokio::time::sleep(Duration::from_millis(20)).await;
            leader = c.leader(Duration::from_secs(10)).await;
        }
    }
    c.wait_none_recovering().await;
    let last = c.write_keys(40).await;
    let victim = 3;
    c.wait_applied(victim, last).await;
    let term = c.node(leader).status().term;
    let elections = c.node(leader).status().elections_seen;
    c.kill(victim).await;
    std::fs::remove_dir_all(&c.dirs[&victim]).unwrap();
    // The wiped start, held back from appends so it stores its marker and vote and nothing else.
    c.transport.starved.lock().insert(victim);
    c.boot(victim).await;
    assert!(c.node(victim).is_recovering());
    c.kill(victim).await;
    // What a crash between the two would have left: the marker, no vote. `through` is raised past
    // the cluster's log (as a deposed leader's uncommitted tail would be), so only the term rule can
    // end this recovery.
    let raft_dir = c.dirs[&victim].join("raft");
    std::fs::remove_file(raft_dir.join("VOTE")).unwrap();
    {
        let (mut log, _) = kv_infra_fs::raft_log::RaftLog::open(
            &raft_dir,
            kv_infra_fs::raft_log::RaftLogOptions::default(),
        )
        .unwrap();
        assert_eq!(log.vote(), None);
        let mut marker = log.recovering().unwrap().clone();
        assert_eq!(
            marker.vote_floor.map(|f| (f.term, f.node_id)),
            Some((term, leader)),
            "the leader's vote, not one for itself"
        );
        marker.through = last + 1_000;
        log.start_recovery(marker).unwrap();
    }
    c.boot(victim).await;
    let node = c.node(victim);
    assert!(node.is_recovering(), "{:?}", node.status());
    assert_eq!(c.settled_term(victim).await, term, "{:?}", node.status());
    c.transport.starved.lock().clear();
    c.wait_applied(victim, last).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        node.is_recovering(),
        "entries of the start term ended the recovery: {:?}",
        node.status()
    );
    let at_leader = c.node(leader).status();
    assert_eq!(
        (
            at_leader.state.as_str(),
            at_leader.term,
            at_leader.elections_seen
        ),
        ("leader", term, elections),
        "the returning node deposed nobody"
    );
    c.assert_keys(victim, 40);

    c.node(leader).transfer_leader(2).await.unwrap();
    c.wait_recovered(victim).await;
    assert!(c.node(victim).status().term > term);
}

/// A member that lost its `raft/` directory but kept its engine: applying the cluster's log would
/// skip every entry at or below the engine's LSN, so it would keep its own versions of them. Once its
/// peers say it was a member it is refused at start, with what to do instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_lost_only_its_raft_directory_is_refused_with_what_to_do() {
    let mut c = Cluster::start(ClusterSettings::new(0, peers(3))).await;
    let leader = c.leader(Duration::from_secs(10)).await;
    c.wait_none_recovering().await;
    let last = c.write_keys(10).await;
    let victim = c.live().into_iter().find(|id| *id != leader).unwrap();
    c.wait_applied(victim, last).await;
    c.kill(victim).await;
    let dir = c.dirs[&victim].clone();
    std::fs::remove_dir_all(dir.join("raft")).unwrap();
    let engine: Arc<dyn LogShipping> = open_engine(&dir);
    let settings = ClusterSettings {
        node_id: victim,
        ..c.settings.clone()
    };
    // Refused at every start, not only the first (a service manager restarts it).
    for start in 1..=2 {
        let refused = RaftNode::start(settings.clone(), &dir, engine.clone(), c.transport.clone())
            .await
            .unwrap_err()
            .to_string();
        assert!(
            refused.contains("raft/ directory is gone but its engine still holds writes")
                && refused.contains("empty the whole data directory"),
            "start {start}: {refused}"
        );
    }
}
