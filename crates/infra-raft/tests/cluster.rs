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
/// arrive it catches up, holds every write and takes part again. A formed cluster's members, new at
/// their first start, are never taken for wiped ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_member_back_under_its_old_id_does_not_vote_until_it_has_caught_up() {
    let mut c = Cluster::start(ClusterSettings::new(0, peers(3))).await;
    let mut leader = c.leader(Duration::from_secs(10)).await;
    for id in c.live() {
        assert!(!c.node(id).is_recovering(), "node {id} is new, not wiped");
    }
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
    assert_eq!(node.status().term, term, "{:?}", node.status());
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
