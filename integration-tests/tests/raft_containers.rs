//! A five-voter Raft cluster in containers of the kv-server image (`RaftContainers`, set up as
//! `docker/compose.cluster.yaml` sets up its nodes), under faults Docker makes real:
//! - the leader `docker kill`ed again and again under four writers (`KV_CLUSTER_KILLS` rounds, 3 by
//!   default; `make soak-cluster` runs 30): a new leader takes writes each time, nothing acknowledged
//!   is lost, all five converge, no LSN is acknowledged twice, and a client reading one node that stays
//!   up never sees a counter go down (local reads are monotonic per client);
//! - a leader cut off its peers (`docker network disconnect`) and one frozen (`docker pause`): the cut
//!   off one acknowledges nothing sent after the cut, the frozen one no write in its old term, while the
//!   majority elects another and goes on; writes and linearizable reads through every node across
//!   both faults are linearizable per key (the project's WGL checker);
//! - quorum arithmetic: with 2 of 5 down writes go on; with 3 of 5 down writes and linearizable reads
//!   fail fast with 503 while local reads answer; after the restore, no loss and convergence;
//! - membership under writers: a sixth node added as a learner, promoted, an old voter removed;
//! - the compose file itself: five healthy voters that agree on a leader.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use integration_tests::cluster::{
    assert_all_present, assert_unique_lsns, cluster_view, contents, Ack, AckedWriters, TOKEN,
};
use integration_tests::docker::{wait_healthy, ComposeProject, RaftContainers};
use integration_tests::histories::Histories;
use integration_tests::Client;
use serde_json::Value as Json;

/// The index of the node that leads, as every node in `among` sees it (and it says so itself).
fn leader_among(clients: &[Client], among: &[usize], within: Duration) -> usize {
    let deadline = Instant::now() + within;
    loop {
        let views: Vec<Option<u64>> = among
            .iter()
            .map(|&i| {
                cluster_view(clients[i])
                    .filter(|v| v["leader_url"].is_string())
                    .and_then(|v| v["leader_id"].as_u64())
            })
            .collect();
        if let Some(Some(l)) = views.first() {
            let l = (*l - 1) as usize;
            let says_so = among.contains(&l)
                && cluster_view(clients[l]).is_some_and(|v| v["state"] == "leader");
            if says_so && views.iter().all(|v| *v == Some(l as u64 + 1)) {
                return l;
            }
        }
        assert!(Instant::now() < deadline, "no agreed leader: {views:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until every client lists the same contents; returns them.
fn converged(clients: &[Client], within: Duration) -> BTreeMap<String, String> {
    let deadline = Instant::now() + within;
    loop {
        let all: Vec<_> = clients.iter().map(|c| contents(*c)).collect();
        if all.windows(2).all(|w| w[0] == w[1]) {
            return all.into_iter().next().unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "contents never converged: sizes {:?}",
            all.iter().map(BTreeMap::len).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn total(writers: &[AckedWriters]) -> usize {
    writers.iter().map(AckedWriters::count).sum()
}

fn wait_for_acks(writers: &[AckedWriters], more_than: usize, within: Duration, what: &str) {
    let start = Instant::now();
    while total(writers) <= more_than {
        assert!(start.elapsed() < within, "{what}: no acknowledgement");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A writer putting `counter` = from + 1, from + 2, ... (each after the previous one's answer) through `writer`,
/// and one reader per node in `readers` reading it locally, until stopped. Returns, per reader, the
/// first decrease it saw (`None`: its values never went down). Log order is the writer's order (a write
/// of unknown outcome that commits later still sits before the next one in the log), and a node applies
/// the log in order, so a client reading one node that stays up must never see the counter go down.
fn monotonic_reads(
    from: u64,
    writer: Client,
    readers: Vec<Client>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<Vec<Option<(u64, u64)>>> {
    use std::sync::atomic::Ordering::Relaxed;
    std::thread::spawn(move || {
        let w = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut n = from;
                while !stop.load(Relaxed) {
                    n += 1;
                    let _ = writer.try_request("PUT", "/v1/kv/counter", n.to_string().as_bytes());
                }
            })
        };
        let rs: Vec<_> = readers
            .into_iter()
            .map(|c| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut last = 0u64;
                    while !stop.load(Relaxed) {
                        if let Ok((200, body)) = c.try_request("GET", "/v1/kv/counter", b"") {
                            let v: u64 = String::from_utf8_lossy(&body).parse().unwrap();
                            if v < last {
                                return Some((last, v));
                            }
                            last = v;
                        }
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    None
                })
            })
            .collect();
        w.join().unwrap();
        rs.into_iter().map(|r| r.join().unwrap()).collect()
    })
}

fn keys(acks: &[Ack]) -> Vec<String> {
    acks.iter().map(|a| a.key.clone()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_leader_killed_again_and_again_under_four_writers_loses_no_acknowledged_write() {
    let kills: usize = std::env::var("KV_CLUSTER_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let mut cluster = RaftContainers::start(5, &[]).await;
    let all: Vec<usize> = (0..5).collect();
    let mut acks: Vec<Ack> = Vec::new();
    let mut failovers = Vec::new();
    for round in 0..kills {
        let clients = cluster.clients();
        let leader = leader_among(&clients, &all, Duration::from_secs(30));
        // Four writers, one through each other node (they forward to the leader).
        let writers: Vec<AckedWriters> = all
            .iter()
            .filter(|i| **i != leader)
            .map(|&i| AckedWriters::start(clients[i], &format!("r{round}n{i}"), 1))
            .collect();
        // Local reads on the nodes that stay up this round.
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let followers: Vec<Client> = all
            .iter()
            .filter(|i| **i != leader)
            .map(|&i| clients[i])
            .collect();
        // Each round counts on from where the last one could have reached.
        let from = round as u64 * 1_000_000_000;
        let readers = monotonic_reads(from, followers[0], followers, stop.clone());
        wait_for_acks(&writers, 4, Duration::from_secs(20), "before the kill");
        let old_term = cluster_view(clients[leader]).unwrap()["term"]
            .as_u64()
            .unwrap();
        let killed = Instant::now();
        cluster.nodes[leader].kill();
        let new_term = |a: &Ack| a.term.is_some_and(|t| t > old_term);
        while !writers.iter().any(|w| w.any(new_term)) {
            assert!(
                killed.elapsed() < Duration::from_secs(30),
                "round {round}: no new leader committed a write within 30 s"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(300));
        let mut round_acks = Vec::new();
        for w in writers {
            round_acks.extend(w.stop_acks());
        }
        // Failover: from the kill to the first write committed in a later term (a new leader's).
        let first_new = round_acks
            .iter()
            .filter(|a| new_term(a))
            .map(|a| a.at)
            .min()
            .expect("no write committed by a new leader");
        failovers.push(first_new.saturating_duration_since(killed));
        acks.extend(round_acks);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for (reader, decrease) in readers.join().unwrap().into_iter().enumerate() {
            assert_eq!(
                decrease, None,
                "round {round}: reader {reader}'s local reads went back (last, then)"
            );
        }
        cluster.restart(leader).await;
    }
    let reference = converged(&cluster.clients(), Duration::from_secs(90));
    assert_all_present(&keys(&acks), &reference, "on the converged cluster");
    assert_unique_lsns(&acks);
    failovers.sort();
    eprintln!(
        "{kills} leader kills, {} acknowledged writes, 0 lost; docker kill to the first write a new leader committed: p50 {:?}, max {:?}, all {:?}",
        acks.len(),
        failovers[failovers.len() / 2],
        failovers.last().unwrap(),
        failovers
    );
}

/// One write answered: when it was sent, its status and its term.
#[derive(Debug)]
struct Sent {
    at: Instant,
    status: Option<u16>,
    ack: Option<Ack>,
}

/// Sends `n` writes of keys `{tag}-{i}` one after another through `c`, `gap` apart.
fn send_writes(
    c: Client,
    tag: String,
    n: usize,
    gap: Duration,
) -> std::thread::JoinHandle<Vec<Sent>> {
    std::thread::spawn(move || {
        (0..n)
            .map(|i| {
                let key = format!("{tag}-{i}");
                let at = Instant::now();
                let answer = c.try_exchange("PUT", &format!("/v1/kv/{key}"), &[], b"v");
                let status = answer.as_ref().ok().map(|a| a.status);
                let ack = answer.ok().filter(|a| a.status == 200).map(|a| {
                    let stamp = |h| a.header(h).and_then(|v| v.parse().ok());
                    Ack {
                        key,
                        lsn: stamp("x-kv-lsn"),
                        term: stamp("x-kv-term"),
                        at: Instant::now(),
                    }
                });
                std::thread::sleep(gap);
                Sent { at, status, ack }
            })
            .collect()
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn a_leader_cut_off_or_frozen_acknowledges_nothing_stale_while_the_majority_goes_on() {
    let cluster = RaftContainers::start(5, &[]).await;
    let clients = cluster.clients();
    let all: Vec<usize> = (0..5).collect();
    let mut acks: Vec<Ack> = Vec::new();

    // Cut off: the old leader still answers clients, but cannot commit anything sent after the cut.
    let cut_off = leader_among(&clients, &all, Duration::from_secs(30));
    let rest: Vec<usize> = all.iter().copied().filter(|i| *i != cut_off).collect();
    let writers = vec![AckedWriters::start(clients[rest[0]], "majority", 2)];
    // Writes and linearizable reads through every node, the cut off one included, across the cut.
    let histories = Histories::start(
        clients.clone(),
        "lincut",
        3,
        4,
        40,
        Duration::from_millis(150),
    );
    std::thread::sleep(Duration::from_millis(500));
    cluster.isolate(cut_off);
    let cut = Instant::now();
    let to_cut_off = send_writes(
        clients[cut_off],
        "cutoff".into(),
        6,
        Duration::from_millis(200),
    );
    let new_leader = leader_among(&clients, &rest, Duration::from_secs(30));
    wait_for_acks(
        &writers,
        10,
        Duration::from_secs(30),
        "majority after the cut",
    );
    std::thread::sleep(Duration::from_secs(1));
    let (code, body) = clients[cut_off].request("GET", "/v1/kv/any?consistency=linearizable", b"");
    assert_eq!(
        code,
        503,
        "a linearizable read on the cut off leader: {}",
        String::from_utf8_lossy(&body)
    );
    let answered = to_cut_off.join().unwrap();
    for s in &answered {
        assert!(
            s.at < cut || s.status != Some(200),
            "the cut off leader acknowledged a write: {s:?}"
        );
    }
    for w in writers {
        acks.extend(w.stop_acks());
    }
    cluster.rejoin(cut_off);
    leader_among(&clients, &all, Duration::from_secs(30));
    let (ops, acked, unknown) = histories.finish("across the cut");
    eprintln!("across the cut: {ops} operations, {acked} acknowledged writes, {unknown} unknown: linearizable");

    // Frozen: requests sent while it is paused are served after it thaws; by then another leads,
    // so anything acknowledged is of a later term.
    let frozen = leader_among(&clients, &all, Duration::from_secs(30));
    let frozen_term = cluster_view(clients[frozen]).unwrap()["term"]
        .as_u64()
        .unwrap();
    let histories = Histories::start(
        clients.clone(),
        "linfrozen",
        3,
        4,
        40,
        Duration::from_millis(150),
    );
    std::thread::sleep(Duration::from_millis(500));
    cluster.pause(frozen);
    let to_frozen: Vec<_> = (0..3)
        .map(|i| send_writes(clients[frozen], format!("frozen{i}"), 1, Duration::ZERO))
        .collect();
    let rest: Vec<usize> = all.iter().copied().filter(|i| *i != frozen).collect();
    let writers = vec![AckedWriters::start(clients[rest[0]], "thawed", 2)];
    let other = leader_among(&clients, &rest, Duration::from_secs(30));
    assert_ne!(other, frozen);
    wait_for_acks(
        &writers,
        10,
        Duration::from_secs(30),
        "majority while one is frozen",
    );
    cluster.unpause(frozen);
    for t in to_frozen {
        for s in t.join().unwrap() {
            if let Some(ack) = &s.ack {
                assert!(
                    ack.term.is_some_and(|t| t > frozen_term),
                    "the frozen leader acknowledged a write in its old term {frozen_term}: {s:?}"
                );
                acks.push(ack.clone());
            }
        }
    }
    for w in writers {
        acks.extend(w.stop_acks());
    }
    let (ops, acked, unknown) = histories.finish("across the freeze");
    eprintln!("across the freeze: {ops} operations, {acked} acknowledged writes, {unknown} unknown: linearizable");
    acks.extend(answered.into_iter().filter_map(|s| s.ack));
    let reference = converged(&clients, Duration::from_secs(90));
    assert_all_present(&keys(&acks), &reference, "after the cut and the freeze");
    assert_unique_lsns(&acks);
    eprintln!(
        "new leader after the cut: node {}; {} acknowledged writes, 0 lost",
        new_leader + 1,
        acks.len()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn with_two_of_five_down_writes_go_on_and_with_three_they_fail_fast_then_all_converge() {
    let mut cluster = RaftContainers::start(5, &[]).await;
    let clients = cluster.clients();
    let all: Vec<usize> = (0..5).collect();
    let leader = leader_among(&clients, &all, Duration::from_secs(30));
    let followers: Vec<usize> = all.iter().copied().filter(|i| *i != leader).collect();
    let mut acks: Vec<Ack> = Vec::new();
    let writers = vec![AckedWriters::start(clients[followers[3]], "quorum", 2)];
    wait_for_acks(&writers, 5, Duration::from_secs(20), "all five up");
    // A key both remaining nodes hold, for the local reads below.
    let (code, _) = clients[leader].request("PUT", "/v1/kv/held", b"v");
    assert_eq!(code, 200);
    acks.push(Ack {
        key: "held".into(),
        lsn: None,
        term: None,
        at: Instant::now(),
    });
    // Two down: three of five remain, a majority.
    cluster.nodes[followers[0]].kill();
    cluster.nodes[followers[1]].kill();
    let two_down = total(&writers);
    wait_for_acks(
        &writers,
        two_down + 20,
        Duration::from_secs(10),
        "two of five down",
    );
    for w in writers {
        acks.extend(w.stop_acks());
    }
    // Three down: the leader and one follower remain.
    cluster.nodes[followers[2]].kill();
    // Past QUORUM_SILENCE (2 s): from then on the leader refuses before proposing.
    std::thread::sleep(Duration::from_millis(2500));
    for (i, c) in [
        (leader, clients[leader]),
        (followers[3], clients[followers[3]]),
    ] {
        let sent = Instant::now();
        let (code, body) = c.request("PUT", &format!("/v1/kv/refused-{i}"), b"v");
        let took = sent.elapsed();
        let text = String::from_utf8_lossy(&body).to_string();
        assert_eq!(code, 503, "write on node {}: {text}", i + 1);
        assert!(
            took < Duration::from_secs(5),
            "took {took:?}: not within the request timeout"
        );
        let (code, _) = c.request("GET", "/v1/kv/held?consistency=linearizable", b"");
        assert_eq!(code, 503, "linearizable read on node {}", i + 1);
        let (code, body) = c.request("GET", "/v1/kv/held", b"");
        assert_eq!(
            (code, body),
            (200, b"v".to_vec()),
            "local read on node {}",
            i + 1
        );
    }
    for &i in &followers[..3] {
        cluster.restart(i).await;
    }
    let clients = cluster.clients();
    for &c in &clients {
        wait_healthy(c);
    }
    leader_among(&clients, &all, Duration::from_secs(30));
    let writers = vec![AckedWriters::start(clients[leader], "restored", 1)];
    wait_for_acks(&writers, 10, Duration::from_secs(20), "after the restore");
    for w in writers {
        acks.extend(w.stop_acks());
    }
    let reference = converged(&clients, Duration::from_secs(90));
    assert_all_present(&keys(&acks), &reference, "after the restore");
    assert!(
        !reference.keys().any(|k| k.starts_with("refused-")),
        "a write refused with 503 took effect"
    );
    assert_unique_lsns(&acks[1..]);
}

/// `POST /v1/cluster/{op}` on the node behind `c` (forwarded to the leader): (status, body).
fn cluster_op(c: Client, op: &str, body: &str) -> (u16, String) {
    let (code, body) = c
        .try_request_with(
            "POST",
            &format!("/v1/cluster/{op}"),
            &[("x-kv-replication-token", TOKEN)],
            body.as_bytes(),
        )
        .unwrap();
    (code, String::from_utf8_lossy(&body).to_string())
}

/// Membership under load: a sixth container joins as a learner, is promoted once it has caught up, and
/// an old voter is removed and its container killed, while writers go on; nothing acknowledged is lost
/// and the five remaining members converge.
#[tokio::test(flavor = "multi_thread")]
async fn a_sixth_node_joins_is_promoted_and_an_old_voter_leaves_under_writers() {
    let mut cluster = RaftContainers::start(5, &[]).await;
    let all: Vec<usize> = (0..5).collect();
    let clients = cluster.clients();
    let leader = leader_among(&clients, &all, Duration::from_secs(30));
    let others: Vec<usize> = all.iter().copied().filter(|i| *i != leader).collect();
    let (through, leaving) = (others[0], others[1]);
    let writers = vec![AckedWriters::start(clients[through], "members", 2)];
    wait_for_acks(&writers, 10, Duration::from_secs(20), "before the changes");
    let six = cluster.add_node(5).await;
    let clients = cluster.clients();
    let (code, body) = cluster_op(
        clients[through],
        "add-learner",
        &format!(r#"{{"id":6,"url":"{}"}}"#, cluster.peer_url(six)),
    );
    assert_eq!(code, 200, "{body}");
    // Promote it once the leader sees it caught up.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let lag = cluster_view(clients[leader]).and_then(|v| {
            v["members"]
                .as_array()?
                .iter()
                .find(|m| m["id"] == 6)
                .and_then(|m| m["lag_entries"].as_u64())
        });
        if lag.is_some_and(|l| l < 50) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the learner never caught up: lag {lag:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (code, body) = cluster_op(clients[through], "promote", r#"{"ids":[6]}"#);
    assert_eq!(code, 200, "{body}");
    let (code, body) = cluster_op(
        clients[through],
        "remove",
        &format!(r#"{{"id":{}}}"#, leaving + 1),
    );
    assert_eq!(code, 200, "{body}");
    cluster.nodes[leaving].kill();
    let during = total(&writers);
    wait_for_acks(
        &writers,
        during + 20,
        Duration::from_secs(20),
        "after the changes",
    );
    let mut acks = Vec::new();
    for w in writers {
        acks.extend(w.stop_acks());
    }
    let members: Vec<usize> = (0..6).filter(|i| *i != leaving).collect();
    let remaining: Vec<Client> = members.iter().map(|&i| clients[i]).collect();
    let reference = converged(&remaining, Duration::from_secs(90));
    assert_all_present(&keys(&acks), &reference, "after the membership changes");
    assert_unique_lsns(&acks);
    let view = cluster_view(clients[six]).unwrap();
    let voters: Vec<u64> = view["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "voter")
        .map(|m| m["id"].as_u64().unwrap())
        .collect();
    assert_eq!(voters.len(), 5, "{view}");
    assert!(
        voters.contains(&6) && !voters.contains(&(leaving as u64 + 1)),
        "{view}"
    );
}

/// The port settings of `docker/compose.cluster.yaml`, node 1 first.
const CLUSTER_PORTS: [&str; 5] = [
    "KV_NODE1_PORT",
    "KV_NODE2_PORT",
    "KV_NODE3_PORT",
    "KV_NODE4_PORT",
    "KV_NODE5_PORT",
];

#[test]
fn the_cluster_compose_file_runs_five_voters_that_agree_on_a_leader() {
    let project = ComposeProject::up("compose.cluster.yaml", &CLUSTER_PORTS);
    let clients = project.clients();
    for &c in &clients {
        wait_healthy(c);
    }
    // The file's default token: the compose file is what is under test.
    let view = |c: Client| -> Option<Json> {
        let (code, body) = c
            .try_request_with(
                "GET",
                "/v1/cluster",
                &[("x-kv-replication-token", "change-me-in-production")],
                b"",
            )
            .ok()?;
        (code == 200).then(|| serde_json::from_slice(&body).unwrap())
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let leader = loop {
        let leaders: Vec<Option<u64>> = clients
            .iter()
            .map(|c| view(*c).and_then(|v| v["leader_id"].as_u64()))
            .collect();
        if leaders[0].is_some() && leaders.iter().all(|l| *l == leaders[0]) {
            break leaders[0].unwrap();
        }
        assert!(Instant::now() < deadline, "no agreed leader: {leaders:?}");
        std::thread::sleep(Duration::from_millis(200));
    };
    // Ready (GET /readyz: a leader known, caught up) everywhere, as the image's HEALTHCHECK sees it.
    for &c in &clients {
        let deadline = Instant::now() + Duration::from_secs(60);
        while c.request("GET", "/readyz", b"").0 != 200 {
            assert!(Instant::now() < deadline, "{} never became ready", c.addr);
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let members = view(clients[0]).unwrap()["members"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(members, 5);
    // A write on node 2 (forwarded if it does not lead), a linearizable read on node 5.
    // 503 means nothing was written: retry, as a client would (a leader may still be settling in).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (code, body) = clients[1].request("PUT", "/v1/kv/compose", b"cluster");
        if code == 200 {
            break;
        }
        assert!(
            code == 503 && Instant::now() < deadline,
            "{code}: {}",
            String::from_utf8_lossy(&body)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (code, value) = clients[4].request("GET", "/v1/kv/compose?consistency=linearizable", b"");
    assert_eq!((code, value), (200, b"cluster".to_vec()), "leader {leader}");
}
