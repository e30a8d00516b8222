//! A Raft cluster of three real `kv-server` processes on 127.0.0.1 (`CLUSTER_NODE_ID`, `CLUSTER_PEERS`,
//! the replication token on): the nodes form the cluster by themselves; writes sent to any node are
//! forwarded to the leader (or redirected with `?redirect=true`); a linearizable read on a follower sees
//! them; Raft traffic and `/v1/cluster` need the token, and Raft traffic the cluster's id;
//! the leader is SIGKILLed three times under four writers, a new one takes writes each time, and after
//! the old ones return all three hold the same contents with every acknowledged write.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use integration_tests::cluster::{assert_all_present, AckedWriters, Node, TOKEN};
use serde_json::Value as Json;

fn cluster_status(node: &Node) -> Option<Json> {
    integration_tests::cluster::cluster_view(node.client())
}

/// The leader every running node agrees on, within `within`, each knowing its address too (a node that
/// has the leader's id from a vote but not yet the membership cannot forward a write).
fn agreed_leader(nodes: &[Node], within: Duration) -> u64 {
    let deadline = Instant::now() + within;
    loop {
        let views: Vec<Option<u64>> = nodes
            .iter()
            .filter(|n| n.server.is_some())
            .map(|n| {
                cluster_status(n)
                    .filter(|s| s["leader_url"].is_string())
                    .and_then(|s| s["leader_id"].as_u64())
            })
            .collect();
        if let Some(Some(l)) = views.first() {
            let leader_up = nodes[(*l - 1) as usize].server.is_some();
            if leader_up && views.iter().all(|v| *v == Some(*l)) {
                return *l;
            }
        }
        assert!(Instant::now() < deadline, "no agreed leader: {views:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until every running node lists the same contents (each answers from its own engine); returns
/// them.
fn converged(nodes: &[Node], within: Duration) -> std::collections::BTreeMap<String, String> {
    let deadline = Instant::now() + within;
    loop {
        let all: Vec<_> = nodes
            .iter()
            .filter(|n| n.server.is_some())
            .map(Node::contents)
            .collect();
        if all.windows(2).all(|w| w[0] == w[1]) {
            return all.into_iter().next().unwrap();
        }
        assert!(Instant::now() < deadline, "contents never converged");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Three nodes (not started) in `root`, and their CLUSTER_PEERS entries.
fn three_nodes(root: &std::path::Path) -> (Vec<Node>, Vec<String>) {
    let nodes: Vec<Node> = (1..=3)
        .map(|i| Node::new(&root.join(format!("n{i}")), Vec::new()))
        .collect();
    let peers = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| format!("{}={}", i + 1, n.url()))
        .collect();
    (nodes, peers)
}

fn start_cluster(root: &std::path::Path) -> Vec<Node> {
    start_cluster_with(root, &[])
}

/// Three started members with the token on, each also given `extra` arguments.
fn start_cluster_with(root: &std::path::Path, extra: &[&str]) -> Vec<Node> {
    let (mut nodes, peers) = three_nodes(root);
    for (i, node) in nodes.iter_mut().enumerate() {
        node.args = vec![
            "--cluster-node-id".into(),
            (i + 1).to_string(),
            "--cluster-peers".into(),
            peers.join(","),
            "--replication-token".into(),
            TOKEN.into(),
        ];
        node.args.extend(extra.iter().map(|a| a.to_string()));
        node.start();
    }
    nodes
}

#[test]
fn writes_to_any_node_reach_the_leader_or_redirect_and_linearizable_reads_see_them() {
    let root = tempfile::tempdir().unwrap();
    let mut nodes = start_cluster(root.path());
    let leader = agreed_leader(&nodes, Duration::from_secs(20));
    let follower = &nodes[(leader % 3) as usize];
    let (code, body) = follower
        .client()
        .request("PUT", "/v1/kv/through-a-follower", b"v1");
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    let (code, body) = follower
        .client()
        .request("PUT", "/v1/kv/redirected?redirect=true", b"v2");
    assert_eq!(code, 307, "{}", String::from_utf8_lossy(&body));
    // A linearizable read on a follower sees the write at once (it is served by the leader).
    let (code, body) = follower.client().request(
        "GET",
        "/v1/kv/through-a-follower?consistency=linearizable",
        b"",
    );
    assert_eq!((code, body.as_slice()), (200, &b"v1"[..]));
    let (code, _) = follower
        .client()
        .request("GET", "/v1/kv/x?consistency=strong", b"");
    assert_eq!(code, 400, "an unknown consistency level is refused");
    // Raft traffic needs the token.
    let (code, _) = follower.client().request("POST", "/v1/raft/vote", b"{}");
    assert_eq!(code, 401);
    // ... and the cluster's id: a node of another cluster is refused.
    for cluster in [None, Some("another-cluster")] {
        let mut headers = vec![("x-kv-replication-token", TOKEN)];
        headers.extend(cluster.map(|c| ("x-kv-cluster", c)));
        let (code, body) = follower
            .client()
            .try_request_with("POST", "/v1/raft/vote", &headers, b"{}")
            .unwrap();
        assert_eq!(code, 409, "{cluster:?}: {}", String::from_utf8_lossy(&body));
    }
    // Cluster operations take the replication token (or an admin client token); a wrong one is refused
    // even from loopback, where protected mode admits a request without any.
    let (code, _) = follower
        .client()
        .try_request_with(
            "GET",
            "/v1/cluster",
            &[("x-kv-replication-token", "wrong-token")],
            b"",
        )
        .unwrap();
    assert_eq!(code, 401);
    let status = cluster_status(follower).unwrap();
    assert_eq!(status["members"].as_array().unwrap().len(), 3);
    assert_eq!(status["leader_id"].as_u64(), Some(leader));
    // Every node is ready, shows the cluster in its status, and exports the Raft series.
    for node in &nodes {
        let (code, body) = node.client().request("GET", "/readyz", b"");
        assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
        let st = node.status();
        assert_eq!(st["cluster"]["leader_id"].as_u64(), Some(leader));
        let (code, body) = node.client().request("GET", "/metrics", b"");
        assert_eq!(code, 200);
        let text = String::from_utf8(body).unwrap();
        assert!(text.contains("\nkv_raft_leader_id "), "{text}");
        assert!(text.contains("\nkv_raft_applied_index "));
        assert!(text.contains("\nkv_raft_elections_seen_total "), "{text}");
    }
    // kvctl cluster status: the token from the flag, the environment or a file; a wrong one, exit 2.
    let token_file = root.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let kvctl = |args: &[&str], env: &[(&str, &str)]| {
        let out = std::process::Command::new(integration_tests::binary("kvctl"))
            .env_remove("KV_REPLICATION_TOKEN")
            .envs(env.iter().copied())
            .args(["--url", &follower.url(), "--output", "json", "cluster"])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let file_arg = token_file.to_str().unwrap();
    for (args, env) in [
        (vec!["status", "--replication-token", TOKEN], vec![]),
        (vec!["status"], vec![("KV_REPLICATION_TOKEN", TOKEN)]),
        (vec!["status", "--replication-token-file", file_arg], vec![]),
    ] {
        let (code, stdout, stderr) = kvctl(&args, &env);
        assert_eq!(code, Some(0), "{args:?}: {stderr}");
        let doc: Json = serde_json::from_str(&stdout).unwrap();
        assert_eq!(doc["leader_id"].as_u64(), Some(leader));
    }
    // A wrong token is refused (401, exit 2) even from loopback, where protected mode would admit a
    // request without one.
    let (code, _, stderr) = kvctl(&["status", "--replication-token", "wrong-token"], &[]);
    assert_eq!(code, Some(2), "401 is a usage error: {stderr}");
    assert!(stderr.contains("token"), "{stderr}");
    let (_, body) = nodes[(leader - 1) as usize]
        .client()
        .request("GET", "/metrics", b"");
    let text = String::from_utf8(body).unwrap();
    assert!(text.contains("kv_raft_is_leader 1"));
    assert!(
        text.contains("kv_raft_peer_lag_entries{peer=\""),
        "the leader shows each member's lag"
    );
    for node in &mut nodes {
        node.stop();
    }
}

#[test]
fn the_leader_is_killed_three_times_under_writers_and_no_acknowledged_write_is_lost() {
    let root = tempfile::tempdir().unwrap();
    let mut nodes = start_cluster(root.path());
    let mut acked = Vec::new();
    let mut failovers = Vec::new();
    for round in 0..3 {
        let leader = agreed_leader(&nodes, Duration::from_secs(20));
        // Four writers through the two other nodes, which forward to the leader.
        let others: Vec<usize> = (0..3).filter(|i| *i as u64 + 1 != leader).collect();
        let writers: Vec<AckedWriters> = others
            .iter()
            .map(|i| AckedWriters::start(nodes[*i].client(), &format!("r{round}n{i}"), 2))
            .collect();
        std::thread::sleep(Duration::from_millis(500));
        assert!(
            writers.iter().map(AckedWriters::count).sum::<usize>() > 0,
            "no write acknowledged before the kill"
        );
        nodes[(leader - 1) as usize].kill();
        // Counted once the kill has returned: acknowledgements until then came from the old leader.
        let killed = Instant::now();
        let before: usize = writers.iter().map(AckedWriters::count).sum();
        // A new leader is there once acknowledgements resume.
        loop {
            std::thread::sleep(Duration::from_millis(20));
            let now: usize = writers.iter().map(AckedWriters::count).sum();
            if now > before + 8 {
                break;
            }
            assert!(
                killed.elapsed() < Duration::from_secs(15),
                "writes never resumed"
            );
        }
        failovers.push(killed.elapsed());
        std::thread::sleep(Duration::from_millis(300));
        for w in writers {
            acked.extend(w.stop());
        }
        nodes[(leader - 1) as usize].start();
    }
    let leader = agreed_leader(&nodes, Duration::from_secs(20));
    // A leader entered its term by an election after it started.
    let view = cluster_status(&nodes[(leader - 1) as usize]).unwrap();
    assert!(view["elections_seen"].as_u64().unwrap() >= 1, "{view}");
    // Everyone catches up: wait for equal contents (each node answers from its own engine).
    let reference = converged(&nodes, Duration::from_secs(30));
    assert_all_present(&acked, &reference, "on the converged cluster");
    failovers.sort();
    eprintln!(
        "leader {leader}; {} acknowledged writes; time from SIGKILL to resumed acknowledgements: {:?}",
        acked.len(),
        failovers
    );
    for node in &mut nodes {
        node.stop();
    }
}

#[test]
fn a_member_without_a_majority_is_not_ready_refuses_writes_and_still_reads_locally() {
    let root = tempfile::tempdir().unwrap();
    let (mut nodes, peers) = three_nodes(root.path());
    // Node 2 alone: it does not initialise the cluster (node 1 would) and hears from no leader.
    let alone = &mut nodes[1];
    alone.args = vec![
        "--cluster-node-id".into(),
        "2".into(),
        "--cluster-peers".into(),
        peers.join(","),
    ];
    alone.start();
    let (code, body) = alone.client().request("GET", "/readyz", b"");
    let text = String::from_utf8_lossy(&body).to_string();
    assert_eq!(code, 503, "{text}");
    assert!(text.contains("no Raft leader known"), "{text}");
    let (code, body) = alone.client().request("PUT", "/v1/kv/k", b"v");
    assert_eq!(code, 503, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("nothing was written"));
    let (code, _) = alone.client().request("GET", "/v1/kv/k", b"");
    assert_eq!(code, 404, "local reads still answer");
    alone.stop();
}

/// A member SIGKILLed and restarted while no leader can be reached applies, before it serves, every
/// entry it knew committed (`raft/COMMITTED`), rather than going back to the index of its last `STATE`
/// store until a leader tells it; and it is not ready, although it remembers a leader from its vote.
#[test]
fn a_restarted_member_applies_what_it_knew_committed_before_it_hears_from_a_leader() {
    let root = tempfile::tempdir().unwrap();
    let mut nodes = start_cluster(root.path());
    let leader = agreed_leader(&nodes, Duration::from_secs(20));
    let f = (leader % 3) as usize;
    let mut last = 0;
    for i in 0..40 {
        let (code, body) = nodes[f]
            .client()
            .request("PUT", &format!("/v1/kv/k{i}"), b"v");
        assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
        last = integration_tests::cluster::lsn_of(&body).unwrap_or(last);
    }
    assert!(last > 40, "LSNs of the writes: {last}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while cluster_status(&nodes[f]).and_then(|s| s["commit_index"].as_u64()) < Some(last) {
        assert!(
            Instant::now() < deadline,
            "the follower never learnt the commit"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    for (i, node) in nodes.iter_mut().enumerate() {
        if i != f {
            node.kill();
        }
    }
    nodes[f].kill();
    nodes[f].start();
    let view = cluster_status(&nodes[f]).unwrap();
    assert!(
        view["applied_index"].as_u64() >= Some(last),
        "applied at start {} (the last write's LSN {last}): {view}",
        view["applied_index"]
    );
    // It remembers its leader from its vote, but that leader is gone: not ready, now and later.
    for _ in 0..2 {
        let (code, body) = nodes[f].client().request("GET", "/readyz", b"");
        let text = String::from_utf8_lossy(&body).to_string();
        assert_eq!(code, 503, "{text}");
        assert!(
            text.contains("not been heard from") || text.contains("no Raft leader known"),
            "{text}"
        );
        std::thread::sleep(Duration::from_secs(3));
    }
    nodes[f].stop();
}

fn cluster_op(node: &Node, op: &str, body: &str) -> (u16, String) {
    let (code, body) = node
        .client()
        .try_request_with(
            "POST",
            &format!("/v1/cluster/{op}"),
            &[("x-kv-replication-token", TOKEN)],
            body.as_bytes(),
        )
        .unwrap();
    (code, String::from_utf8_lossy(&body).to_string())
}

#[test]
fn a_fourth_node_joins_as_learner_is_promoted_an_old_voter_is_removed_and_leadership_moves() {
    let root = tempfile::tempdir().unwrap();
    let mut nodes = start_cluster(root.path());
    let writers = AckedWriters::start(nodes[1].client(), "members", 2);
    let leader = agreed_leader(&nodes, Duration::from_secs(20));
    // Node 4 starts with the same peer list plus itself; it waits to hear from the leader.
    let mut fourth = Node::new(&root.path().join("n4"), Vec::new());
    let mut peers: Vec<String> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| format!("{}={}", i + 1, n.url()))
        .collect();
    let cluster_id = "membership-test";
    for node in &mut nodes {
        // The peer list changes with node 4: give every node the same explicit cluster id.
        node.stop();
        node.args
            .extend(["--cluster-id".to_string(), cluster_id.to_string()]);
        node.start();
    }
    peers.push(format!("4={}", fourth.url()));
    fourth.args = vec![
        "--cluster-node-id".into(),
        "4".into(),
        "--cluster-peers".into(),
        peers.join(","),
        "--replication-token".into(),
        TOKEN.into(),
        "--cluster-id".into(),
        cluster_id.into(),
    ];
    fourth.start();
    let leader = agreed_leader(&nodes, Duration::from_secs(20)).max(leader);
    let follower = &nodes[(leader % 3) as usize];
    // Through a follower: forwarded to the leader.
    let (code, body) = cluster_op(
        follower,
        "add-learner",
        &format!(r#"{{"id":4,"url":"{}"}}"#, fourth.url()),
    );
    assert_eq!(code, 200, "{body}");
    let (code, body) = cluster_op(follower, "promote", r#"{"ids":[4]}"#);
    assert_eq!(code, 200, "{body}");
    let (code, body) = cluster_op(follower, "promote", r#"{"ids":[]}"#);
    assert_eq!(code, 400, "{body}");
    let (code, body) = cluster_op(follower, "transfer-leader", r#"{"to":9}"#);
    assert_eq!(code, 409, "{body}");
    // The transfer through kvctl.
    let out = std::process::Command::new(integration_tests::binary("kvctl"))
        .args([
            "--url",
            &follower.url(),
            "cluster",
            "transfer-leader",
            "4",
            "--replication-token",
            TOKEN,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status = cluster_status(&fourth).unwrap();
    assert_eq!(status["leader_id"].as_u64(), Some(4), "{status}");
    // Remove node 1, then stop it: the three others keep taking writes.
    let (code, body) = cluster_op(&fourth, "remove", r#"{"id":1}"#);
    assert_eq!(code, 200, "{body}");
    nodes[0].stop();
    std::thread::sleep(Duration::from_millis(300));
    let acked = writers.stop();
    let (code, body) = nodes[2]
        .client()
        .request("PUT", "/v1/kv/after-removal", b"v");
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    let status = cluster_status(&fourth).unwrap();
    let ids: Vec<u64> = status["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, vec![2, 3, 4], "{status}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let live = [&nodes[1], &nodes[2], &fourth];
    let reference = loop {
        let all: Vec<_> = live.iter().map(|n| n.contents()).collect();
        if all.windows(2).all(|w| w[0] == w[1]) && all[0].contains_key("after-removal") {
            break all.into_iter().next().unwrap();
        }
        assert!(Instant::now() < deadline, "contents never converged");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_all_present(&acked, &reference, "after the membership changes");
    for node in nodes.iter_mut().chain(std::iter::once(&mut fourth)) {
        node.stop();
    }
}

#[test]
fn writes_and_linearizable_reads_on_any_node_stay_linearizable_while_the_leader_is_killed() {
    use integration_tests::histories::Histories;

    let root = tempfile::tempdir().unwrap();
    let mut nodes = start_cluster(root.path());
    let leader = agreed_leader(&nodes, Duration::from_secs(20));
    let clients: Vec<integration_tests::Client> = nodes.iter().map(Node::client).collect();
    // 4 clients, 40 operations each ~60 ms apart: ~3 s, across the kill, the election and the return.
    let histories = Histories::start(clients, "lin", 3, 4, 40, Duration::from_millis(60));
    std::thread::sleep(Duration::from_millis(300));
    nodes[(leader - 1) as usize].kill();
    std::thread::sleep(Duration::from_millis(1500));
    nodes[(leader - 1) as usize].start();
    let (ops, acked, unknown) = histories.finish("across the leader's SIGKILL");
    assert!(acked >= 20, "only {acked} writes were acknowledged");
    eprintln!("{ops} operations, {acked} acknowledged writes, {unknown} of unknown outcome");
    for node in &mut nodes {
        node.stop();
    }
}

#[test]
fn a_follower_catches_up_after_a_burst_of_large_writes() {
    // 300 values of 256 KiB while a follower is down: catching up takes appends far larger than any
    // client request. (With a fixed 64 MiB limit on Raft messages and openraft's 300-entry appends,
    // replication to it stalled for good: the leader resent the same 100 MB append.)
    let root = tempfile::tempdir().unwrap();
    let mut nodes = start_cluster_with(root.path(), &["--max-value-bytes", "262144"]);
    let leader = agreed_leader(&nodes, Duration::from_secs(20));
    let lagging = (leader % 3) as usize;
    nodes[lagging].kill();
    let value = vec![b'x'; 256 << 10];
    let leader_client = nodes[(leader - 1) as usize].client();
    let writers: Vec<_> = (0..4)
        .map(|t| {
            let value = value.clone();
            std::thread::spawn(move || {
                for i in 0..75 {
                    let (code, body) =
                        leader_client.request("PUT", &format!("/v1/kv/big-{t}-{i}"), &value);
                    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    nodes[lagging].start();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (code, body) = nodes[lagging]
            .client()
            .request("GET", "/v1/kv/big-3-74", b"");
        if code == 200 {
            assert_eq!(body.len(), 256 << 10);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the follower never caught up: {:?}",
            nodes[lagging].status()["cluster"]
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(nodes[lagging].status()["keys"].as_u64(), Some(300));
    for node in &mut nodes {
        node.stop();
    }
}

/// The newest segment of `node`'s Raft log.
fn newest_raft_segment(node: &Node) -> std::path::PathBuf {
    let mut segs: Vec<_> = std::fs::read_dir(node.dir.join("raft"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    segs.sort();
    segs.pop().expect("a raft log segment")
}

/// Protocol-aware recovery (docs/cluster.md): a flipped byte in the middle of a follower's Raft log makes
/// it forget entries it acknowledged. With the leader down, it and the other follower could elect a
/// leader that lacks writes acknowledged to clients; it must refuse to vote or campaign instead, until
/// the old leader returns and brings its log up to date. Then new writes, and all three agree.
#[test]
fn a_node_whose_raft_log_was_damaged_neither_votes_nor_leads_until_it_has_caught_up() {
    let root = tempfile::tempdir().unwrap();
    // Snapshots every 100 entries store STATE with entries of term 1 or more (a recovery end condition
    // read from a term of 0 would be met at once: found by review).
    let mut nodes = start_cluster_with(root.path(), &["--cluster-snapshot-entries", "100"]);
    let leader = agreed_leader(&nodes, Duration::from_secs(20));
    let writers = AckedWriters::start(nodes[(leader - 1) as usize].client(), "before", 2);
    while writers.count() < 300 {
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut acked = writers.stop();
    let followers: Vec<usize> = (0..3).filter(|i| *i as u64 + 1 != leader).collect();
    let (damaged, other) = (followers[0], followers[1]);
    for node in &mut nodes {
        node.stop();
    }
    let seg = newest_raft_segment(&nodes[damaged]);
    let mut bytes = std::fs::read(&seg).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x40;
    std::fs::write(&seg, bytes).unwrap();

    // The damaged node and the other follower, without the old leader: no election may succeed.
    nodes[damaged].start();
    nodes[other].start();
    let status = cluster_status(&nodes[damaged]).unwrap();
    assert_eq!(status["recovering"], true, "{status}");
    let (code, body) = nodes[damaged].client().request("GET", "/readyz", b"");
    assert_eq!(code, 503);
    assert!(
        String::from_utf8_lossy(&body).contains("recovering a damaged raft log"),
        "{}",
        String::from_utf8_lossy(&body)
    );
    // Ten election timeouts or more (300-600 ms each): with its vote the two would have a leader.
    let watch = Instant::now();
    while watch.elapsed() < Duration::from_secs(6) {
        // (`leader_id` may show the last leader known before the restart: it is the state that counts.)
        for n in [damaged, other] {
            let s = cluster_status(&nodes[n]).unwrap();
            assert!(
                s["state"] != "leader",
                "a leader was elected without the node that holds every acknowledged write: {s}"
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }

    // The old leader returns: a leader is elected, the damaged node catches up and votes again.
    nodes[(leader - 1) as usize].start();
    agreed_leader(&nodes, Duration::from_secs(20));
    let deadline = Instant::now() + Duration::from_secs(30);
    while cluster_status(&nodes[damaged]).unwrap()["recovering"] == true {
        assert!(
            Instant::now() < deadline,
            "the damaged node never recovered"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let writers = AckedWriters::start(nodes[damaged].client(), "after", 2);
    while writers.count() < 100 {
        std::thread::sleep(Duration::from_millis(20));
    }
    acked.extend(writers.stop());
    let reference = converged(&nodes, Duration::from_secs(30));
    assert_all_present(&acked, &reference, "after the damaged node recovered");
    for node in &mut nodes {
        node.stop();
    }
}

/// Quorum arithmetic on three nodes: with both followers down the leader cannot commit, so writes and
/// linearizable reads on it fail fast with 503 (it checks that a majority answered it lately before
/// proposing anything, rather than waiting out the 5 s write timeout with an unknown outcome), while
/// local reads still answer; once the followers return, writes resume and nothing acknowledged is lost.
#[test]
fn with_a_majority_down_the_leader_refuses_fast_and_reads_locally_then_recovers() {
    let root = tempfile::tempdir().unwrap();
    let mut nodes = start_cluster(root.path());
    let leader = (agreed_leader(&nodes, Duration::from_secs(20)) - 1) as usize;
    let writers = AckedWriters::start(nodes[leader].client(), "quorum", 1);
    while writers.count() < 50 {
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut acked = writers.stop();
    let c = nodes[leader].client();
    assert_eq!(c.request("PUT", "/v1/kv/kept", b"v").0, 200);
    acked.push("kept".into());
    for i in (0..3).filter(|i| *i != leader) {
        nodes[i].kill();
    }
    // Past QUORUM_SILENCE (2 s): from then on the leader refuses before proposing.
    std::thread::sleep(Duration::from_millis(2500));
    for attempt in 0..3 {
        let sent = Instant::now();
        let (code, body) = c.request("PUT", &format!("/v1/kv/lost-{attempt}"), b"v");
        let took = sent.elapsed();
        let text = String::from_utf8_lossy(&body).to_string();
        assert_eq!(code, 503, "{text}");
        assert!(text.contains("nothing was written"), "{text}");
        assert!(took < Duration::from_secs(3), "took {took:?}: not fast");
        let (code, body) = c.request("GET", "/v1/kv/kept?consistency=linearizable", b"");
        assert_eq!(code, 503, "{}", String::from_utf8_lossy(&body));
        let (code, body) = c.request("GET", "/v1/kv/kept", b"");
        assert_eq!(
            (code, body.as_slice()),
            (200, &b"v"[..]),
            "local reads answer"
        );
    }
    for i in (0..3).filter(|i| *i != leader) {
        nodes[i].start();
    }
    agreed_leader(&nodes, Duration::from_secs(20));
    let writers = AckedWriters::start(nodes[leader].client(), "restored", 1);
    while writers.count() < 20 {
        std::thread::sleep(Duration::from_millis(20));
    }
    acked.extend(writers.stop());
    let reference = converged(&nodes, Duration::from_secs(30));
    assert_all_present(&acked, &reference, "after the majority returned");
    assert!(
        !reference.keys().any(|k| k.starts_with("lost-")),
        "a write refused with 503 took effect"
    );
    for node in &mut nodes {
        node.stop();
    }
}

/// A follower stopped while the others write past a snapshot (every 200 entries here; the log keeps
/// 1 000 below it) finds the entries it needs purged: it catches up from the leader's snapshot, sent in
/// chunks, and converges with no acknowledged write missing.
#[test]
fn a_follower_stopped_while_the_log_was_purged_catches_up_from_a_snapshot() {
    let root = tempfile::tempdir().unwrap();
    let mut nodes = start_cluster_with(root.path(), &["--cluster-snapshot-entries", "200"]);
    let leader = (agreed_leader(&nodes, Duration::from_secs(20)) - 1) as usize;
    let behind = (0..3).find(|i| *i != leader).unwrap();
    nodes[behind].stop();
    let writers = AckedWriters::start(nodes[leader].client(), "past", 4);
    while writers.count() < 1600 {
        std::thread::sleep(Duration::from_millis(50));
    }
    let acked = writers.stop();
    let purged_past = cluster_status(&nodes[leader]).unwrap()["snapshot_index"]
        .as_u64()
        .unwrap();
    assert!(purged_past > 1000, "no snapshot far enough: {purged_past}");
    nodes[behind].start();
    let reference = converged(&nodes, Duration::from_secs(60));
    assert_all_present(&acked, &reference, "after the catch-up");
    let view = cluster_status(&nodes[behind]).unwrap();
    assert!(
        view["snapshot_index"].as_u64().is_some_and(|i| i >= 200),
        "it caught up without a snapshot: {view}"
    );
    for node in &mut nodes {
        node.stop();
    }
}

/// `docs/cluster.md`, "Recovering when a majority is lost for good", step by step: two of three nodes
/// are lost; the survivor's data directory is exported with `kvctl --data-dir ... export`, and a new
/// cluster is loaded with `kvctl import`. Every write the survivor held is in the new cluster.
#[test]
fn after_a_majority_is_lost_for_good_a_new_cluster_is_rebuilt_from_the_survivor() {
    let root = tempfile::tempdir().unwrap();
    let mut nodes = start_cluster(root.path());
    let leader = (agreed_leader(&nodes, Duration::from_secs(20)) - 1) as usize;
    let writers = AckedWriters::start(nodes[leader].client(), "kept", 2);
    while writers.count() < 200 {
        std::thread::sleep(Duration::from_millis(20));
    }
    let acked = writers.stop();
    // Let the survivor apply everything first, so that every acknowledged write is on it.
    let survivor = (0..3).find(|i| *i != leader).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while nodes[survivor].contents().len() < acked.len() {
        assert!(Instant::now() < deadline, "the survivor never caught up");
        std::thread::sleep(Duration::from_millis(100));
    }
    for i in (0..3).filter(|i| *i != survivor) {
        nodes[i].kill();
    }
    nodes[survivor].stop();
    let kvctl = |args: &[&str]| {
        let out = std::process::Command::new(integration_tests::binary("kvctl"))
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "kvctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    let dir = nodes[survivor].dir.to_string_lossy().to_string();
    let exported = kvctl(&["--data-dir", &dir, "export", " ", "\u{10FFFF}"]);
    let dump = root.path().join("all.jsonl");
    std::fs::write(&dump, &exported).unwrap();

    let fresh = tempfile::tempdir().unwrap();
    let mut rebuilt = start_cluster(fresh.path());
    let leader = agreed_leader(&rebuilt, Duration::from_secs(20));
    let url = rebuilt[(leader - 1) as usize].url();
    kvctl(&["--url", &url, "import", &dump.to_string_lossy()]);
    let contents = rebuilt[(leader - 1) as usize].contents();
    assert_all_present(&acked, &contents, "in the rebuilt cluster");
    for node in &mut rebuilt {
        node.stop();
    }
}

/// A data directory with writes made outside the cluster (a standalone server's) cannot become an
/// ordinary member: Raft entries are applied with their index as LSN and skipped at or below the
/// engine's last LSN, so the cluster's first writes would be silently missing on it. Node 2 refuses to
/// start, saying why (node 1, the first member, would carry the data in: the next test).
#[test]
fn a_data_directory_with_writes_made_outside_the_cluster_cannot_join_one() {
    let root = tempfile::tempdir().unwrap();
    let (mut nodes, peers) = three_nodes(root.path());
    let standalone = &mut nodes[1];
    standalone.start();
    assert_eq!(
        standalone.client().request("PUT", "/v1/kv/old", b"v").0,
        200
    );
    standalone.stop();
    let stderr = refused_start(standalone, "2", &peers);
    assert!(
        stderr.contains("holds writes made outside the cluster"),
        "{stderr}"
    );
}

/// Starts `node`'s directory as member `id` of `peers`, which must refuse to start: its stderr.
fn refused_start(node: &Node, id: &str, peers: &[String]) -> String {
    let mut child = std::process::Command::new(integration_tests::binary("kv-server"))
        .args(["--bind", "127.0.0.1", "--port", &node.port.to_string()])
        .args(["--data-path", &node.dir.to_string_lossy()])
        .args(["--cluster-node-id", id, "--cluster-peers", &peers.join(",")])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the server started on a directory with writes made outside the cluster");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "{stderr}");
    stderr
}

/// A standalone server's data becomes a cluster's: restarted as node 1 (the member that forms the
/// cluster) with `--cluster-init-from-data` beside two empty nodes, its writes are the cluster's initial
/// state; the others receive them as a snapshot, new writes get LSNs after the old ones, and all three
/// converge. Without the flag node 1 refuses to start, like any member with data.
#[test]
fn a_standalone_servers_data_becomes_the_clusters_when_it_starts_as_the_first_member() {
    let root = tempfile::tempdir().unwrap();
    let (mut nodes, peers) = three_nodes(root.path());
    nodes[0].start();
    let writers = AckedWriters::start(nodes[0].client(), "standalone", 2);
    while writers.count() < 100 {
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut acked = writers.stop();
    let before = nodes[0].last_lsn();
    nodes[0].stop();
    let stderr = refused_start(&nodes[0], "1", &peers);
    assert!(stderr.contains("--cluster-init-from-data"), "{stderr}");
    for (i, node) in nodes.iter_mut().enumerate() {
        node.args = vec![
            "--cluster-node-id".into(),
            (i + 1).to_string(),
            "--cluster-peers".into(),
            peers.join(","),
            "--replication-token".into(),
            TOKEN.into(),
        ];
        if i == 0 {
            node.args.push("--cluster-init-from-data".into());
        }
        node.start();
    }
    let leader = agreed_leader(&nodes, Duration::from_secs(20));
    let (code, body) = nodes[2].client().request("PUT", "/v1/kv/after", b"v");
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    let lsn = integration_tests::cluster::lsn_of(&body).unwrap();
    assert!(
        lsn > before,
        "LSN {lsn} after the standalone server's {before}"
    );
    acked.push("after".into());
    let reference = converged(&nodes, Duration::from_secs(30));
    assert_all_present(&acked, &reference, "on every member");
    eprintln!(
        "leader {leader}; {} standalone writes carried in",
        acked.len() - 1
    );
    for node in &mut nodes {
        node.stop();
    }
}

/// A one-voter cluster (`--cluster-peers` of itself) in `root`, started, once it has taken a write.
fn lone_voter(root: &std::path::Path) -> Node {
    let mut node = Node::new(&root.join("n1"), Vec::new());
    node.args = vec![
        "--cluster-node-id".into(),
        "1".into(),
        "--cluster-peers".into(),
        format!("1={}", node.url()),
    ];
    node.start();
    let deadline = Instant::now() + Duration::from_secs(20);
    while node.client().request("PUT", "/v1/kv/first", b"v").0 != 200 {
        assert!(Instant::now() < deadline, "the lone voter never led");
        std::thread::sleep(Duration::from_millis(50));
    }
    node
}

/// A lone voter is its own quorum: it keeps taking writes long after the quorum-contact window (2 s)
/// that makes a leader without a majority refuse.
#[test]
fn a_single_voter_cluster_keeps_taking_writes() {
    let root = tempfile::tempdir().unwrap();
    let mut node = lone_voter(root.path());
    std::thread::sleep(Duration::from_millis(2500));
    let (code, body) = node.client().request("PUT", "/v1/kv/later", b"v");
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    let (code, _) = node
        .client()
        .request("GET", "/v1/kv/later?consistency=linearizable", b"");
    assert_eq!(code, 200);
    node.stop();
}

/// A cluster member's engine does not fsync its applies: the Raft log is the durable record
/// (`kv_infra_raft::StateMachine`). A power loss that takes the engine's unsynced tail (here: SIGKILL,
/// then the tail of the engine's newest segment cut off) loses no acknowledged write: at restart the
/// node applies those entries again from its log.
#[test]
fn a_members_engine_that_lost_its_unsynced_tail_gets_it_back_from_the_raft_log() {
    let root = tempfile::tempdir().unwrap();
    let mut node = lone_voter(root.path());
    let value = "x".repeat(100);
    for i in 0..300 {
        let (code, body) =
            node.client()
                .request("PUT", &format!("/v1/kv/k{i:03}"), value.as_bytes());
        assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    }
    node.kill();
    // The engine's newest segment (the Raft log's are under raft/): cut about 100 records off its end.
    let mut segments: Vec<_> = std::fs::read_dir(&node.dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    segments.sort();
    let newest = segments.pop().expect("an engine segment");
    let len = std::fs::metadata(&newest).unwrap().len();
    let cut = 100 * 130;
    assert!(
        len > cut + 1024,
        "the segment holds the writes ({len} bytes)"
    );
    std::fs::OpenOptions::new()
        .write(true)
        .open(&newest)
        .unwrap()
        .set_len(len - cut)
        .unwrap();
    node.start();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (code, _) = node
            .client()
            .request("GET", "/v1/kv/k299?consistency=linearizable", b"");
        if code == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the write cut from the engine never came back"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    for i in 0..300 {
        let (code, body) = node
            .client()
            .request("GET", &format!("/v1/kv/k{i:03}"), b"");
        assert_eq!(code, 200, "k{i:03} lost");
        assert_eq!(body, value.as_bytes());
    }
    node.stop();
}

/// A follower whose Raft log was damaged is restarted while the leader stays up (the leader's record of
/// what it matched is now beyond the follower's log): the leader searches again from below, the
/// follower catches up, votes again, and all three converge.
#[test]
fn a_damaged_follower_restarted_under_a_live_leader_catches_up() {
    let root = tempfile::tempdir().unwrap();
    let mut nodes = start_cluster(root.path());
    let leader = agreed_leader(&nodes, Duration::from_secs(20));
    let writers = AckedWriters::start(nodes[(leader - 1) as usize].client(), "live", 2);
    while writers.count() < 300 {
        std::thread::sleep(Duration::from_millis(20));
    }
    let damaged = (0..3).find(|i| *i as u64 + 1 != leader).unwrap();
    nodes[damaged].stop();
    let seg = newest_raft_segment(&nodes[damaged]);
    let mut bytes = std::fs::read(&seg).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x40;
    std::fs::write(&seg, bytes).unwrap();
    nodes[damaged].start();
    let deadline = Instant::now() + Duration::from_secs(30);
    while cluster_status(&nodes[damaged]).unwrap()["recovering"] == true {
        assert!(
            Instant::now() < deadline,
            "the damaged node never recovered"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let acked = writers.stop();
    let reference = converged(&nodes, Duration::from_secs(30));
    assert_all_present(&acked, &reference, "after the damaged follower recovered");
    for node in &mut nodes {
        node.stop();
    }
}

/// Sets node's `--replication-token` to `sends` and its `--replication-token-accepted` to `accepts`.
fn set_replication_tokens(node: &mut Node, sends: &str, accepts: Option<&str>) {
    let mut args = Vec::new();
    let mut it = std::mem::take(&mut node.args).into_iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--replication-token" | "--replication-token-accepted" => {
                it.next();
            }
            _ => args.push(arg),
        }
    }
    args.extend(["--replication-token".to_string(), sends.to_string()]);
    if let Some(accepts) = accepts {
        args.extend([
            "--replication-token-accepted".to_string(),
            accepts.to_string(),
        ]);
    }
    node.args = args;
}

/// Every node takes part in the cluster: a write through each one is acknowledged (forwarded to the
/// leader, which checks the forwarder's replication token), and every node applies all of them
/// (appended to it by the leader, which it checks the token of).
fn every_node_takes_part(nodes: &[Node], tag: &str) {
    let mut last = 0;
    for (i, node) in nodes.iter().enumerate() {
        let path = format!("/v1/kv/{tag}-via-{i}");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let answer = node.client().try_exchange("PUT", &path, &[], b"v");
            if let Some(a) = answer.as_ref().ok().filter(|a| a.status == 200) {
                last = last.max(a.header("x-kv-lsn").unwrap().parse::<u64>().unwrap());
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{tag}: node {} never took a write: {:?}",
                i + 1,
                answer.map(|a| (a.status, String::from_utf8_lossy(&a.body).to_string()))
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    for (i, node) in nodes.iter().enumerate() {
        for j in 0..nodes.len() {
            let path = format!("/v1/kv/{tag}-via-{j}?min_lsn={last}&max_wait_ms=20000");
            let (code, body) = node.client().request("GET", &path, b"");
            assert_eq!(
                code,
                200,
                "{tag}: node {} did not apply LSN {last}: {}",
                i + 1,
                String::from_utf8_lossy(&body)
            );
        }
    }
}

/// The replication token changed one node at a time (`docs/security.md`, "Rotating"), under writers:
/// every node first also accepts the new token, then sends it and still accepts the old one, then
/// takes the new one only. After each restart every node still takes part (writes through it are
/// forwarded, the leader's appends reach it); at the end the old token is refused, no acknowledged
/// write is lost and the nodes agree.
#[test]
fn the_replication_token_is_changed_one_node_at_a_time_while_writes_go_on() {
    const NEW: &str = "the-new-replication-token-0123456789";
    let root = tempfile::tempdir().unwrap();
    // Reads wait up to 20 s for a just-restarted node to apply (the default bound is 5 s).
    let mut nodes = start_cluster_with(root.path(), &["--read-max-wait-ms", "20000"]);
    agreed_leader(&nodes, Duration::from_secs(20));
    let writers: Vec<AckedWriters> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| AckedWriters::start(n.client(), &format!("w{i}"), 1))
        .collect();
    for (step, (sends, accepts)) in [(TOKEN, Some(NEW)), (NEW, Some(TOKEN)), (NEW, None)]
        .into_iter()
        .enumerate()
    {
        for i in 0..nodes.len() {
            nodes[i].stop();
            set_replication_tokens(&mut nodes[i], sends, accepts);
            nodes[i].start();
            every_node_takes_part(&nodes, &format!("step{step}-node{i}"));
        }
    }
    let peer_route = |token: &str| {
        nodes[0]
            .client()
            .try_request_with(
                "POST",
                "/v1/raft/vote",
                &[("x-kv-replication-token", token)],
                b"{}",
            )
            .unwrap()
            .0
    };
    assert_eq!(
        peer_route(TOKEN),
        401,
        "the old token is refused at the end"
    );
    assert_eq!(
        peer_route(NEW),
        409,
        "the new one passes (a vote without the cluster id is refused after it)"
    );
    let acked: Vec<String> = writers.into_iter().flat_map(AckedWriters::stop).collect();
    assert!(!acked.is_empty());
    let contents = converged(&nodes, Duration::from_secs(30));
    assert_all_present(&acked, &contents, "after the rotation");
}

/// A member's data directory wiped and the member started again under its old id (the natural way to
/// "rebuild" a node): its empty `raft/` would pass for a new node's, so it could vote for a candidate
/// missing writes it had acknowledged. It asks its peers (`POST /v1/raft/progress`, with the
/// replication token) and, since the leader had replicated to it, recovers first: its log says so, it
/// gets every write back, and afterwards it votes again (with the old leader killed, it and the third
/// node elect a new one).
#[test]
fn a_wiped_member_restarted_under_its_old_id_recovers_before_it_votes() {
    let root = tempfile::tempdir().unwrap();
    let mut nodes = start_cluster(root.path());
    let leader = agreed_leader(&nodes, Duration::from_secs(20)) as usize - 1;
    let writers = AckedWriters::start(nodes[leader].client(), "before-wipe", 2);
    while writers.count() < 100 {
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut acked = writers.stop();
    let victim = (leader + 1) % 3;
    nodes[victim].kill();
    std::fs::remove_dir_all(&nodes[victim].dir).unwrap();
    let log = root.path().join("wiped.log");
    nodes[victim].start_logging_to(&log);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("data directory was wiped"),
        "the wiped node did not notice: {text}"
    );
    let contents = converged(&nodes, Duration::from_secs(30));
    assert_all_present(&acked, &contents, "on the rebuilt node");
    let deadline = Instant::now() + Duration::from_secs(20);
    while cluster_status(&nodes[victim]).map(|s| s["recovering"].clone()) != Some(Json::Bool(false))
    {
        assert!(Instant::now() < deadline, "the recovery never ended");
        std::thread::sleep(Duration::from_millis(50));
    }
    nodes[leader].kill();
    let new_leader = agreed_leader(&nodes, Duration::from_secs(20)) as usize - 1;
    assert_ne!(new_leader, leader);
    let writers = AckedWriters::start(nodes[victim].client(), "after-wipe", 1);
    while writers.count() < 10 {
        std::thread::sleep(Duration::from_millis(20));
    }
    acked.extend(writers.stop());
    nodes[leader].start();
    let contents = converged(&nodes, Duration::from_secs(30));
    assert_all_present(&acked, &contents, "after the old leader returned");
}
