//! `REPLICATION_MODE` on Raft (`--replication-engine raft`): the leader is a one-voter cluster and its
//! `REPLICATION_REPLICA_HOSTS` are kept learners (`docs/cluster.md`, "One voter and learners"). The
//! guarantees of static replication (`docs/replication.md`) with real processes on 127.0.0.1:
//! convergence, follower and leader crashes, catch-up from a snapshot, refusal of a leader of another
//! history, synchronous acknowledgement, read-your-writes, and a follower whose directory was replaced.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use integration_tests::cluster::{
    assert_converged, cluster_view, follower_args, lsn_of, workload, Node,
};
use integration_tests::topology::{
    cluster, follower_killed_during_writes, get, leader_restarts_under_writers, put, until, Engine,
    CONVERGE,
};
use integration_tests::Client;

const RAFT: Engine = Engine::Raft;

/// Starts `kv-server` on `dir` with `args`, asserts that it refuses to start (exit 1), and returns
/// what it said.
fn refused_start(dir: &std::path::Path, args: &[String]) -> String {
    let out = std::process::Command::new(integration_tests::binary("kv-server"))
        .args(["--bind", "127.0.0.1", "--port", "0", "--data-path"])
        .arg(dir)
        .args(args)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "it started");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A Raft append (empty: refused before openraft reads it, or answered as malformed) that claims to
/// come from cluster `cluster`, with the right token.
fn append_of_cluster(c: Client, cluster: &str) -> (u16, Vec<u8>) {
    c.try_request_with(
        "POST",
        "/v1/raft/append",
        &[
            ("x-kv-replication-token", integration_tests::cluster::TOKEN),
            ("x-kv-cluster", cluster),
        ],
        b"{}",
    )
    .unwrap()
}

/// The leader's view of its followers (`followers` of `/v1/status`), by URL.
fn follower_states(leader: &Node) -> Vec<(String, String)> {
    leader.status()["followers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["url"].as_str().unwrap().to_string(),
                f["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn writes_through_the_leader_and_learners_converge_everywhere() {
    let root = tempfile::tempdir().unwrap();
    let (mut leader, mut followers) =
        cluster(RAFT, root.path(), 2, &["--durability", "interval:5"]);
    for f in &mut followers {
        f.start();
    }
    leader.start();
    until("both followers are learners", CONVERGE, || {
        follower_states(&leader).iter().all(|(_, s)| s == "learner")
    });
    let mut targets = vec![leader.client(), leader.client()];
    targets.extend(followers.iter().map(Node::client));
    let threads: Vec<_> = targets
        .into_iter()
        .enumerate()
        .map(|(i, c)| std::thread::spawn(move || workload(c, i as u64, 300)))
        .collect();
    let written: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(written, 1200);
    let refs: Vec<&Node> = followers.iter().collect();
    let contents = assert_converged(&leader, &refs, CONVERGE);
    assert!(!contents.is_empty());
    let st = leader.status();
    assert_eq!(st["cluster"]["state"], "leader");
    let voters: Vec<_> = st["cluster"]["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "voter")
        .collect();
    assert_eq!(voters.len(), 1, "the leader is the only voter: {st}");
    for f in st["followers"].as_array().unwrap() {
        assert_eq!(f["state"], "learner", "{f}");
        assert_eq!(f["lag_entries"], 0, "{f}");
    }
    for f in &followers {
        let view = cluster_view(f.client()).unwrap();
        assert_eq!(view["state"], "learner", "{view}");
        assert_eq!(view["cluster_id"], st["cluster"]["cluster_id"], "{view}");
        let (code, body) = f.client().request("GET", "/readyz", b"");
        assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    }
}

#[test]
fn a_learner_killed_during_writes_catches_up_and_never_goes_backwards() {
    let root = tempfile::tempdir().unwrap();
    follower_killed_during_writes(RAFT, root.path(), 3);
}

#[test]
fn a_new_learner_after_the_log_was_purged_catches_up_from_a_snapshot() {
    let root = tempfile::tempdir().unwrap();
    let (mut leader, mut followers) = cluster(
        RAFT,
        root.path(),
        1,
        &["--durability", "never", "--cluster-snapshot-entries", "500"],
    );
    leader.start();
    let c = leader.client();
    for b in 0..20 {
        let pairs: Vec<String> = (0..100)
            .map(|i| format!(r#""key{:05}":"value-{b}-{i}""#, b * 100 + i))
            .collect();
        assert_eq!(
            c.request(
                "POST",
                "/batchput",
                format!("{{{}}}", pairs.join(",")).as_bytes()
            )
            .0,
            200
        );
    }
    for i in 0..3000 {
        assert_eq!(put(c, &format!("k{}", i % 300), &format!("v{i}")).0, 200);
    }
    for i in 0..50 {
        assert_eq!(
            c.request("DELETE", &format!("/v1/kv/key{:05}", i * 3), b"")
                .0,
            200
        );
    }
    let f = &mut followers[0];
    f.start();
    for i in 0..200 {
        assert_eq!(put(c, &format!("late{i}"), "x").0, 200);
    }
    let contents = assert_converged(&leader, &[f], CONVERGE);
    assert_eq!(contents.len(), 2000 - 50 + 300 + 200);
    let view = cluster_view(f.client()).unwrap();
    assert!(
        view["snapshot_index"].as_u64().unwrap_or(0) > 0,
        "it caught up from a snapshot: {view}"
    );
}

#[test]
fn leader_restarts_lose_no_acknowledged_write_and_learners_continue() {
    let root = tempfile::tempdir().unwrap();
    leader_restarts_under_writers(RAFT, root.path(), 1);
}

#[test]
fn learners_refuse_a_leader_restarted_on_an_empty_directory_and_keep_their_data() {
    let root = tempfile::tempdir().unwrap();
    let (mut leader, mut followers) = cluster(RAFT, root.path(), 1, &[]);
    let f = &mut followers[0];
    f.start();
    leader.start();
    for i in 0..50 {
        assert_eq!(put(leader.client(), &format!("k{i}"), "v").0, 200);
    }
    let before = assert_converged(&leader, &[f], CONVERGE);
    let joined = cluster_view(f.client()).unwrap()["cluster_id"].clone();
    assert!(
        joined.is_string(),
        "the learner joined the leader's cluster"
    );
    leader.stop();
    // Same port, a new empty data directory: a new history, so another cluster.
    leader.dir = root.path().join("empty");
    leader.start();
    assert_eq!(put(leader.client(), "new", "x").0, 200);
    until(
        "the leader reports the refusal",
        Duration::from_secs(20),
        || {
            let st = leader.status();
            st["followers"][0]["state"] == "refused"
                && st["followers"][0]["detail"]
                    .as_str()
                    .is_some_and(|d| d.contains("history mismatch"))
        },
    );
    // The learner keeps its data, forwards no write to the stranger, and is not ready.
    let (status, body) = put(f.client(), "through", "f");
    assert_eq!(status, 503, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("history mismatch"));
    assert_eq!(
        get(leader.client(), "through"),
        None,
        "not applied by the stranger"
    );
    until(
        "the learner refuses the stranger's messages",
        Duration::from_secs(20),
        || f.client().request("GET", "/readyz", b"").0 == 503,
    );
    let (_, body) = f.client().request("GET", "/readyz", b"");
    assert!(String::from_utf8_lossy(&body).contains("refusing the leader"));
    // A Raft message of the stranger's cluster is refused by the learner itself, before openraft.
    let stranger = leader.status()["cluster"]["cluster_id"]
        .as_str()
        .unwrap()
        .to_string();
    let (code, body) = append_of_cluster(f.client(), &stranger);
    assert_eq!(code, 409, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("another history"));
    let refusing = f.status()["cluster"]["refusing"].clone();
    assert!(
        refusing
            .as_str()
            .is_some_and(|r| r.contains("belongs to cluster")),
        "{refusing}"
    );
    assert_eq!(f.contents(), before, "the learner kept its data");
    assert_eq!(cluster_view(f.client()).unwrap()["cluster_id"], joined);
    assert_eq!(get(f.client(), "new"), None);
}

#[test]
fn synchronous_acknowledgement_waits_for_a_learner_and_times_out_as_documented() {
    let root = tempfile::tempdir().unwrap();
    let (mut leader, mut followers) = cluster(
        RAFT,
        root.path(),
        1,
        &[
            "--replication-ack-followers",
            "1",
            "--replication-ack-timeout-ms",
            "500",
        ],
    );
    let f = &mut followers[0];
    f.start();
    leader.start();
    until("the follower is a learner", CONVERGE, || {
        follower_states(&leader).iter().all(|(_, s)| s == "learner")
    });
    // An acknowledged write is in the learner's log; with min_lsn it is readable there at once.
    for i in 0..50 {
        let (status, body) = put(leader.client(), &format!("s{i}"), &format!("v{i}"));
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        let lsn = lsn_of(&body).unwrap();
        let (code, value) = f.client().request(
            "GET",
            &format!("/v1/kv/s{i}?min_lsn={lsn}&max_wait_ms=2000"),
            b"",
        );
        assert_eq!((code, value), (200, format!("v{i}").into_bytes()));
    }
    f.stop();
    let started = Instant::now();
    let (status, body) = put(leader.client(), "lonely", "v");
    let took = started.elapsed();
    assert_eq!(status, 504, "{}", String::from_utf8_lossy(&body));
    assert!(
        took >= Duration::from_millis(450),
        "answered after {took:?}"
    );
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["committed"], true);
    assert_eq!(body["replicated"], 0);
    assert_eq!(get(leader.client(), "lonely"), Some("v".into()));
    f.start();
    assert_converged(&leader, &[f], CONVERGE);
    assert_eq!(put(leader.client(), "again", "v").0, 200);
}

#[test]
fn reads_with_min_lsn_on_a_learner_see_its_own_forwarded_writes() {
    let root = tempfile::tempdir().unwrap();
    let (mut leader, mut followers) =
        cluster(RAFT, root.path(), 1, &["--durability", "interval:20"]);
    let f = &mut followers[0];
    f.start();
    leader.start();
    for i in 0..100 {
        let (status, body) = f.client().request(
            "POST",
            "/put",
            format!(r#"{{"key":"ryw{i}","value":"v{i}"}}"#).as_bytes(),
        );
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        let lsn = lsn_of(&body).unwrap();
        let (status, value) =
            f.client()
                .request("GET", &format!("/read?key=ryw{i}&min_lsn={lsn}"), b"");
        assert_eq!(
            (status, value),
            (200, format!("v{i}").into_bytes()),
            "write {i}"
        );
    }
    // A learner's linearizable read goes to the leader, as its writes do.
    let (status, body) = f
        .client()
        .request("GET", "/read?key=ryw1&consistency=linearizable", b"");
    assert_eq!((status, body), (200, b"v1".to_vec()));
    // Leader down: writes through the learner answer 503 and say why; local reads keep working.
    leader.stop();
    let (status, body) = f
        .client()
        .request("POST", "/put", br#"{"key":"x","value":"y"}"#);
    assert_eq!(status, 503, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("unreachable"));
    assert_eq!(get(f.client(), "ryw1"), Some("v1".into()));
}

#[test]
fn a_follower_on_a_replaced_directory_rejoins_under_a_new_id() {
    let root = tempfile::tempdir().unwrap();
    let (mut leader, mut followers) = cluster(RAFT, root.path(), 1, &[]);
    let f = &mut followers[0];
    f.start();
    leader.start();
    for i in 0..100 {
        assert_eq!(put(leader.client(), &format!("k{i}"), "v").0, 200);
    }
    assert_converged(&leader, &[f], CONVERGE);
    let old_id = cluster_view(f.client()).unwrap()["node_id"]
        .as_u64()
        .unwrap();
    f.stop();
    f.dir = root.path().join("wiped");
    f.start();
    let new_id = cluster_view(f.client()).unwrap()["node_id"]
        .as_u64()
        .unwrap();
    assert_ne!(new_id, old_id, "a new directory is a new node");
    until("the old id is replaced by the new one", CONVERGE, || {
        let members = leader.status()["cluster"]["members"].clone();
        let ids: Vec<u64> = members
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_u64().unwrap())
            .collect();
        ids.contains(&new_id) && !ids.contains(&old_id)
    });
    assert_converged(&leader, &[f], CONVERGE);
}

#[test]
fn a_follower_holding_data_of_its_own_refuses_to_start_and_says_why() {
    let root = tempfile::tempdir().unwrap();
    // A standalone server's data directory, then started as a Raft follower.
    let mut alone = Node::new(&root.path().join("f"), vec![]);
    alone.start();
    assert_eq!(put(alone.client(), "mine", "v").0, 200);
    alone.stop();
    let stderr = refused_start(&alone.dir, &follower_args(1, RAFT.args()));
    assert!(stderr.contains("empty directory"), "{stderr}");
}

#[test]
fn a_new_learner_joins_only_the_cluster_its_configured_leader_leads() {
    let root = tempfile::tempdir().unwrap();
    let (mut leader, mut followers) = cluster(RAFT, root.path(), 1, &[]);
    leader.start();
    let f = &mut followers[0];
    // Not yet joined; the configured leader is up but a message claims another cluster.
    let leader_port = leader.port;
    f.args = follower_args(leader_port, RAFT.args());
    f.start();
    let (code, body) = append_of_cluster(f.client(), "not-the-leaders");
    // Refused either way: before the leader reached it ("not joining it", the usual order: the leader
    // asks once a second), or after ("belongs to cluster"). Had it joined the bogus cluster, the
    // leader's messages would be refused below and it would never converge.
    assert_eq!(code, 409, "{}", String::from_utf8_lossy(&body));
    let text = String::from_utf8_lossy(&body);
    assert!(
        text.contains("not joining it") || text.contains("belongs to cluster"),
        "{text}"
    );
    // The real leader's messages are then accepted: it joins that cluster and converges.
    assert_eq!(put(leader.client(), "k", "v").0, 200);
    assert_converged(&leader, &[f], CONVERGE);
    assert_eq!(
        cluster_view(f.client()).unwrap()["cluster_id"],
        leader.status()["cluster"]["cluster_id"]
    );
}

#[test]
fn membership_operations_and_engine_switches_that_would_break_the_topology_are_refused() {
    let root = tempfile::tempdir().unwrap();
    let (mut leader, mut followers) = cluster(RAFT, root.path(), 1, &[]);
    let f = &mut followers[0];
    f.start();
    leader.start();
    until("the follower is a learner", CONVERGE, || {
        follower_states(&leader).iter().all(|(_, s)| s == "learner")
    });
    let id = cluster_view(f.client()).unwrap()["node_id"]
        .as_u64()
        .unwrap();
    let token = [("x-kv-replication-token", integration_tests::cluster::TOKEN)];
    for (op, body) in [
        ("promote", format!(r#"{{"ids":[{id}]}}"#)),
        ("transfer-leader", format!(r#"{{"to":{id}}}"#)),
    ] {
        for node in [leader.client(), f.client()] {
            let (code, answer) = node
                .try_request_with(
                    "POST",
                    &format!("/v1/cluster/{op}"),
                    &token,
                    body.as_bytes(),
                )
                .unwrap();
            assert_eq!(code, 409, "{op}: {}", String::from_utf8_lossy(&answer));
            assert!(String::from_utf8_lossy(&answer).contains("REPLICATION_REPLICA_HOSTS"));
        }
    }
    assert_eq!(put(leader.client(), "k", "v").0, 200);
    // The leader's directory restarted with static replication: refused, its Raft log would be skipped.
    leader.stop();
    let stderr = refused_start(&leader.dir, &[]);
    assert!(stderr.contains("holds Raft state"), "{stderr}");
    // And it still starts on Raft, with its data.
    leader.start();
    assert_eq!(get(leader.client(), "k"), Some("v".into()));
}

#[test]
fn a_leader_that_lost_its_raft_directory_refuses_to_form_a_second_history() {
    let root = tempfile::tempdir().unwrap();
    let (mut leader, mut followers) = cluster(RAFT, root.path(), 1, &[]);
    let f = &mut followers[0];
    f.start();
    leader.start();
    assert_eq!(put(leader.client(), "k", "v").0, 200);
    assert_converged(&leader, &[f], CONVERGE);
    leader.stop();
    std::fs::remove_dir_all(leader.dir.join("raft")).unwrap();
    let stderr = refused_start(&leader.dir, &leader.args);
    assert!(
        stderr.contains("raft/ directory") && stderr.contains("RAFT_FORMED"),
        "{stderr}"
    );
    // The follower still holds everything.
    assert_eq!(get(f.client(), "k"), Some("v".into()));
}
