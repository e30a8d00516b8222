//! Replication across real containers of the kv-server image, driven with the `testcontainers` crate
//! (see `integration_tests::docker`): convergence, a follower killed and restarted, a follower cut off the
//! network and reconnected, leader restarts, the leader killed with synchronous acknowledgement, and the
//! compose file itself. Each scenario runs with both engines of `REPLICATION_MODE`
//! (`REPLICATION_ENGINE=static`, the shipper; `raft`, one voter and learners). They need a Docker engine
//! and fail, saying how to get one, when there is none.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use integration_tests::cluster::{
    applied, assert_all_present, assert_clients_converged, contents, status, workload, AckedWriters,
};
use integration_tests::docker::{docker_ok, wait_healthy, ComposeProject, DockerCluster};
use integration_tests::Client;

const CONVERGE: Duration = Duration::from_secs(90);

/// Runs the scenario `$name(engine)` once per engine, as `$name::on_static` and `$name::on_raft`.
macro_rules! with_each_engine {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread")]
            async fn on_static() {
                super::$name(super::Engine::Static).await
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn on_raft() {
                super::$name(super::Engine::Raft).await
            }
        }
    )*};
}

with_each_engine!(
    writes_through_the_leader_and_followers_converge_across_containers,
    a_follower_killed_during_writes_catches_up_after_a_restart,
    a_follower_cut_off_the_network_converges_after_reconnecting_without_a_restart,
    the_leader_restarted_during_writes_loses_no_acknowledged_write,
    the_leader_killed_with_synchronous_acknowledgement_keeps_every_acknowledged_write,
);

/// `REPLICATION_ENGINE`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Engine {
    Static,
    Raft,
}

impl Engine {
    fn name(self) -> &'static str {
        match self {
            Engine::Static => "static",
            Engine::Raft => "raft",
        }
    }

    /// The leader's state of a follower that replicates.
    fn replicating(self) -> &'static str {
        match self {
            Engine::Static => "streaming",
            Engine::Raft => "learner",
        }
    }
}

fn wait_for_state(leader: Client, follower: usize, state: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let st = status(leader);
        if st["followers"][follower]["state"] == state {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "follower {follower} never became {state}: {}",
            st["followers"][follower]
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

async fn writes_through_the_leader_and_followers_converge_across_containers(engine: Engine) {
    let cluster = DockerCluster::start(3, engine.name(), &[]).await;
    let mut targets = vec![cluster.leader.client()];
    targets.extend(cluster.follower_clients());
    let threads: Vec<_> = targets
        .into_iter()
        .enumerate()
        .map(|(i, c)| std::thread::spawn(move || workload(c, i as u64, 150)))
        .collect();
    let written: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(written, 600);
    let contents = assert_clients_converged(
        cluster.leader.client(),
        &cluster.follower_clients(),
        CONVERGE,
    );
    assert!(!contents.is_empty());
    for f in cluster.follower_clients() {
        match engine {
            Engine::Static => assert_eq!(status(f)["replication"]["forwarded_writes"], 150),
            Engine::Raft => assert_eq!(status(f)["cluster"]["state"], "learner"),
        }
    }
}

async fn a_follower_killed_during_writes_catches_up_after_a_restart(engine: Engine) {
    let mut cluster = DockerCluster::start(2, engine.name(), &[]).await;
    let writers = AckedWriters::start(cluster.leader.client(), "kill", 1);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = applied(cluster.followers[0].client());
    cluster.followers[0].kill();
    tokio::time::sleep(Duration::from_millis(800)).await;
    cluster.followers[0].start().await;
    let after = applied(cluster.followers[0].client());
    assert!(
        after >= before,
        "applied LSN went backwards across the kill: {after} < {before}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let acked = writers.stop();
    let contents = assert_clients_converged(
        cluster.leader.client(),
        &cluster.follower_clients(),
        CONVERGE,
    );
    assert!(acked.len() > 20, "the writer made progress");
    assert_all_present(&acked, &contents, "everywhere");
}

async fn a_follower_cut_off_the_network_converges_after_reconnecting_without_a_restart(
    engine: Engine,
) {
    let mut cluster = DockerCluster::start(2, engine.name(), &[]).await;
    wait_for_state(cluster.leader.client(), 0, engine.replicating());
    let started = cluster.followers[0].started_at();
    let writers = AckedWriters::start(cluster.leader.client(), "part", 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.followers[0].disconnect(&cluster.network);
    // The leader notices and keeps serving writes.
    wait_for_state(cluster.leader.client(), 0, "down");
    let during = writers.count();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(
        writers.count() > during,
        "the leader kept taking writes during the partition"
    );
    let network = cluster.network.clone();
    cluster.followers[0].reconnect(&network).await;
    wait_for_state(cluster.leader.client(), 0, engine.replicating());
    let acked = writers.stop();
    let contents = assert_clients_converged(
        cluster.leader.client(),
        &cluster.follower_clients(),
        CONVERGE,
    );
    assert_all_present(&acked, &contents, "everywhere");
    assert_eq!(
        cluster.followers[0].started_at(),
        started,
        "the follower was never restarted"
    );
}

async fn the_leader_restarted_during_writes_loses_no_acknowledged_write(engine: Engine) {
    let mut cluster = DockerCluster::start(2, engine.name(), &[]).await;
    let mut acked = Vec::new();
    for (round, kill) in [(0, false), (1, true)] {
        let writers = AckedWriters::start(cluster.leader.client(), &format!("r{round}"), 1);
        tokio::time::sleep(Duration::from_millis(600)).await;
        if kill {
            cluster.leader.kill();
        } else {
            cluster.leader.stop();
        }
        // The writers' client points at the old published port; stop them while the leader is down.
        acked.extend(writers.stop());
        cluster.leader.start().await;
        // Writes after the restart reach the followers too.
        for i in 0..20 {
            let key = format!("after{round}-{i}");
            assert_eq!(
                cluster
                    .leader
                    .client()
                    .request("PUT", &format!("/v1/kv/{key}"), b"v")
                    .0,
                200
            );
            acked.push(key);
        }
        let contents = assert_clients_converged(
            cluster.leader.client(),
            &cluster.follower_clients(),
            CONVERGE,
        );
        assert_all_present(
            &acked,
            &contents,
            &format!("after the restart (kill = {kill})"),
        );
    }
    assert!(acked.len() > 40);
}

async fn the_leader_killed_with_synchronous_acknowledgement_keeps_every_acknowledged_write(
    engine: Engine,
) {
    let mut cluster = DockerCluster::start(
        1,
        engine.name(),
        &[
            ("REPLICATION_ACK_FOLLOWERS", "1"),
            ("REPLICATION_ACK_TIMEOUT_MS", "2000"),
        ],
    )
    .await;
    // Acknowledgements wait for a follower that replicates, not for the leader's first contact.
    wait_for_state(cluster.leader.client(), 0, engine.replicating());
    let writers = AckedWriters::start(cluster.leader.client(), "sync", 4);
    tokio::time::sleep(Duration::from_millis(800)).await;
    cluster.leader.kill();
    let acks = writers.stop_acks();
    let acked: Vec<String> = acks.iter().map(|a| a.key.clone()).collect();
    assert!(acked.len() > 20, "writes were acknowledged before the kill");
    // Static: every acknowledged write is already readable on the follower that acknowledged it. Raft
    // learners: an acknowledgement means the learner holds the entry durably in its Raft log; it
    // applies it (and so serves it) only once a leader tells it the entry is committed, which the
    // killed leader may not have done yet (docs/cluster.md): checked once the leader is back.
    if engine == Engine::Static {
        let on_follower = contents(cluster.followers[0].client());
        assert_all_present(&acked, &on_follower, "on the acknowledging follower");
    } else {
        // The learner's log already reaches every acknowledged LSN, with the leader still down.
        let highest = acks.iter().filter_map(|a| a.lsn).max().unwrap();
        let (_, metrics) = cluster.followers[0]
            .client()
            .request("GET", "/metrics", b"");
        let metrics = String::from_utf8_lossy(&metrics);
        let held: u64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix("kv_raft_last_log_index "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no kv_raft_last_log_index in {metrics}"));
        assert!(
            held >= highest,
            "the learner's log ends at {held}, below the acknowledged LSN {highest}"
        );
    }
    // ... and on the leader after its restart.
    cluster.leader.start().await;
    let on_leader = contents(cluster.leader.client());
    assert_all_present(&acked, &on_leader, "on the restarted leader");
    assert_clients_converged(
        cluster.leader.client(),
        &cluster.follower_clients(),
        CONVERGE,
    );
    let on_follower = contents(cluster.followers[0].client());
    assert_all_present(&acked, &on_follower, "on the acknowledging follower");
}

/// The port settings of `docker/compose.yaml`, leader first.
const COMPOSE_PORTS: [&str; 5] = [
    "KV_LEADER_PORT",
    "KV_FOLLOWER1_PORT",
    "KV_FOLLOWER2_PORT",
    "KV_FOLLOWER3_PORT",
    "KV_FOLLOWER4_PORT",
];

#[test]
fn the_compose_file_validates_and_runs_a_leader_and_four_followers() {
    compose_runs_a_leader_and_four_followers(Engine::Static);
}

#[test]
fn the_compose_file_runs_a_leader_and_four_learners_on_raft() {
    compose_runs_a_leader_and_four_followers(Engine::Raft);
}

fn compose_runs_a_leader_and_four_followers(engine: Engine) {
    let project = ComposeProject::up_with(
        "compose.yaml",
        &COMPOSE_PORTS,
        &[("REPLICATION_ENGINE", engine.name())],
    );
    let clients = project.clients();
    for &c in &clients {
        wait_healthy(c);
    }
    let leader = clients[0];
    let (code, body) = leader.request("POST", "/put", br#"{"key":"compose","value":"works"}"#);
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    let lsn = integration_tests::cluster::lsn_of(&body).unwrap();
    for &c in &clients[1..] {
        let (code, value) = c.request(
            "GET",
            &format!("/read?key=compose&min_lsn={lsn}&max_wait_ms=30000"),
            b"",
        );
        assert_eq!(
            (code, value),
            (200, b"works".to_vec()),
            "follower {}",
            c.addr
        );
    }
    let st = status(leader);
    assert_eq!(st["followers"].as_array().unwrap().len(), 4);
    // Every container runs as the unprivileged user and is healthy by its own HEALTHCHECK.
    let ids = project.run(&["ps", "-q"]);
    let ids = String::from_utf8_lossy(&ids.stdout).to_string();
    let ids: Vec<&str> = ids.split_whitespace().collect();
    assert_eq!(ids.len(), 5);
    for id in ids {
        assert_eq!(
            docker_ok(&["inspect", "-f", "{{.Config.User}}", id]),
            "10001:10001"
        );
        // Published on the loopback interface only: the file opens the API (PROTECTED_MODE=false)
        // to whoever reaches the port.
        let bindings = docker_ok(&["inspect", "-f", "{{json .HostConfig.PortBindings}}", id]);
        assert!(
            bindings.contains(r#""HostIp":"127.0.0.1""#),
            "{id}: {bindings}"
        );
        let deadline = Instant::now() + Duration::from_secs(60);
        while docker_ok(&["inspect", "-f", "{{.State.Health.Status}}", id]) != "healthy" {
            assert!(
                Instant::now() < deadline,
                "container {id} never became healthy"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}
