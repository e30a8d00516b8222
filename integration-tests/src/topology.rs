//! The leader-and-followers topology (`REPLICATION_MODE`) on either replication engine, with the
//! scenarios both engines must pass alike. `tests/replication.rs` (static shipping) and
//! `tests/learners.rs` (one Raft voter and its learners) run them and add each engine's own checks.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cluster::{
    assert_all_present, assert_converged, follower_args, leader_args, AckedWriters, Node,
};
use crate::Client;

/// How long a topology may take to converge after its writes stop.
pub const CONVERGE: Duration = Duration::from_secs(60);

/// The replication engine under `REPLICATION_MODE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// The shipper and follower apply (`--replication-engine static`, the default).
    Static,
    /// One Raft voter with its followers as learners (`--replication-engine raft`).
    Raft,
}

impl Engine {
    /// The server arguments that select it.
    pub fn args(self) -> &'static [&'static str] {
        match self {
            Engine::Static => &[],
            Engine::Raft => &["--replication-engine", "raft"],
        }
    }
}

/// A leader and `n` followers on `engine`, not started; the followers' ports are known to the leader
/// up front. `leader_extra` goes to the leader only.
pub fn cluster(
    engine: Engine,
    root: &std::path::Path,
    n: usize,
    leader_extra: &[&str],
) -> (Node, Vec<Node>) {
    let leader_port = crate::free_port();
    let followers: Vec<Node> = (0..n)
        .map(|i| {
            Node::new(
                &root.join(format!("f{i}")),
                follower_args(leader_port, engine.args()),
            )
        })
        .collect();
    let refs: Vec<&Node> = followers.iter().collect();
    let mut extra = engine.args().to_vec();
    extra.extend_from_slice(leader_extra);
    let mut leader = Node::new(&root.join("leader"), leader_args(&refs, &extra));
    leader.port = leader_port;
    (leader, followers)
}

/// `PUT /v1/kv/{key}`: the status and body.
pub fn put(c: Client, key: &str, value: &str) -> (u16, Vec<u8>) {
    c.request("PUT", &format!("/v1/kv/{key}"), value.as_bytes())
}

/// `GET /v1/kv/{key}`: the value, `None` on 404; panics on any other answer.
pub fn get(c: Client, key: &str) -> Option<String> {
    match c.request("GET", &format!("/v1/kv/{key}"), b"") {
        (200, v) => Some(String::from_utf8(v).expect("a value the tests wrote is UTF-8")),
        (404, _) => None,
        (s, b) => panic!("GET {key}: {s} {}", String::from_utf8_lossy(&b)),
    }
}

/// Waits until `check` holds, or panics with `what`.
pub fn until(what: &str, within: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A count from the environment (soaks raise it), or `default`.
pub fn env_count(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One follower SIGKILLed `rounds` times while a client writes through the leader (500 keys, over and
/// over): its applied LSN never goes back, across a kill or between kills, and it converges with the
/// leader after the writes stop. Returns the leader, the follower (both running) and the writes made.
pub fn follower_killed_during_writes(
    engine: Engine,
    root: &std::path::Path,
    rounds: u64,
) -> (Node, Node, u64) {
    let (mut leader, mut followers) = cluster(engine, root, 1, &[]);
    let mut f = followers.remove(0);
    f.start();
    leader.start();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (c, stop) = (leader.client(), stop.clone());
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                assert_eq!(put(c, &format!("k{}", i % 500), &format!("v{i}")).0, 200);
                i += 1;
            }
            i
        })
    };
    let mut last_seen = 0;
    for round in 0..rounds {
        std::thread::sleep(Duration::from_millis(300));
        let before = f.applied();
        assert!(
            before >= last_seen,
            "applied LSN went backwards: {before} < {last_seen}"
        );
        f.kill();
        std::thread::sleep(Duration::from_millis(200 + 100 * (round % 4)));
        f.start();
        let after = f.applied();
        assert!(
            after >= before,
            "applied LSN after restart {after} < {before} before the kill"
        );
        last_seen = after;
    }
    stop.store(true, Ordering::Relaxed);
    let writes = writer
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e));
    assert!(writes > 100, "the writer made progress ({writes} writes)");
    assert_converged(&leader, &[&f], CONVERGE);
    (leader, f, writes)
}

/// The leader SIGKILLed, then SIGTERMed, `rounds` times each, under 4 acknowledged writers, with two
/// followers: after every restart no follower is ahead of the leader, all converge, and every
/// acknowledged write is on each of them. Returns the number of acknowledged writes.
pub fn leader_restarts_under_writers(engine: Engine, root: &std::path::Path, rounds: u64) -> usize {
    let (mut leader, mut followers) = cluster(engine, root, 2, &["--durability", "always"]);
    for f in &mut followers {
        f.start();
    }
    leader.start();
    let mut acked = Vec::new();
    let plan: Vec<&str> = (0..rounds).flat_map(|_| ["KILL", "TERM"]).collect();
    for (round, how) in plan.iter().enumerate() {
        let writers = AckedWriters::start(leader.client(), &format!("r{round}"), 4);
        std::thread::sleep(Duration::from_millis(700));
        let before = writers.count();
        if *how == "KILL" {
            leader.kill();
        } else {
            leader.stop();
        }
        std::thread::sleep(Duration::from_millis(300));
        leader.start();
        std::thread::sleep(Duration::from_millis(500));
        acked.extend(writers.stop());
        let refs: Vec<&Node> = followers.iter().collect();
        // Also checks that no follower is ahead of the restarted leader.
        let contents = assert_converged(&leader, &refs, CONVERGE);
        assert_all_present(&acked, &contents, &format!("after SIG{how}"));
        assert!(before > 50, "writers made progress");
    }
    acked.len()
}
