//! Replication across real containers of the kv-server image, driven with the `testcontainers` crate
//! (see `integration_tests::docker`): convergence, a follower killed and restarted, a follower cut off the
//! network and reconnected, leader restarts, the leader killed with synchronous acknowledgement, and the
//! compose file itself. They need a Docker engine and fail, saying how to get one, when there is none.
#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use integration_tests::cluster::{assert_clients_converged, contents, status, workload};
use integration_tests::docker::{docker_ok, ensure_image, image, wait_healthy, DockerCluster};
use integration_tests::{free_port, Client};

const CONVERGE: Duration = Duration::from_secs(90);

/// Writes unique keys `{tag}-{i}` through `c` until `stop`, recording those answered 200.
fn writer(
    c: Client,
    tag: String,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<String>>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut i = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let key = format!("{tag}-{i}");
            if let Ok((200, _)) = c.try_request("PUT", &format!("/v1/kv/{key}"), b"v") {
                acked.lock().unwrap().push(key);
            } else {
                std::thread::sleep(Duration::from_millis(20));
            }
            i += 1;
        }
    })
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

#[tokio::test(flavor = "multi_thread")]
async fn writes_through_the_leader_and_followers_converge_across_containers() {
    let cluster = DockerCluster::start(3, &[]).await;
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
        assert_eq!(status(f)["replication"]["forwarded_writes"], 150);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_follower_killed_during_writes_catches_up_after_a_restart() {
    let mut cluster = DockerCluster::start(2, &[]).await;
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let w = writer(
        cluster.leader.client(),
        "kill".into(),
        stop.clone(),
        acked.clone(),
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = status(cluster.followers[0].client())["replication"]["applied_lsn"]
        .as_u64()
        .unwrap();
    cluster.followers[0].kill();
    tokio::time::sleep(Duration::from_millis(800)).await;
    cluster.followers[0].start().await;
    let after = status(cluster.followers[0].client())["replication"]["applied_lsn"]
        .as_u64()
        .unwrap();
    assert!(
        after >= before,
        "applied LSN went backwards across the kill: {after} < {before}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    w.join().unwrap();
    let contents = assert_clients_converged(
        cluster.leader.client(),
        &cluster.follower_clients(),
        CONVERGE,
    );
    let acked = acked.lock().unwrap();
    assert!(acked.len() > 20, "the writer made progress");
    assert!(acked.iter().all(|k| contents.contains_key(k)));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_follower_cut_off_the_network_converges_after_reconnecting_without_a_restart() {
    let mut cluster = DockerCluster::start(2, &[]).await;
    let started = cluster.followers[0].started_at();
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let w = writer(
        cluster.leader.client(),
        "part".into(),
        stop.clone(),
        acked.clone(),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.followers[0].disconnect(&cluster.network);
    // The leader notices and keeps serving writes.
    wait_for_state(cluster.leader.client(), 0, "down");
    let during = acked.lock().unwrap().len();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(
        acked.lock().unwrap().len() > during,
        "the leader kept taking writes during the partition"
    );
    let network = cluster.network.clone();
    cluster.followers[0].reconnect(&network).await;
    wait_for_state(cluster.leader.client(), 0, "streaming");
    stop.store(true, Ordering::Relaxed);
    w.join().unwrap();
    let contents = assert_clients_converged(
        cluster.leader.client(),
        &cluster.follower_clients(),
        CONVERGE,
    );
    assert!(acked
        .lock()
        .unwrap()
        .iter()
        .all(|k| contents.contains_key(k)));
    assert_eq!(
        cluster.followers[0].started_at(),
        started,
        "the follower was never restarted"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_leader_restarted_during_writes_loses_no_acknowledged_write() {
    let mut cluster = DockerCluster::start(2, &[]).await;
    let acked = Arc::new(Mutex::new(Vec::new()));
    for (round, kill) in [(0, false), (1, true)] {
        let stop = Arc::new(AtomicBool::new(false));
        let w = writer(
            cluster.leader.client(),
            format!("r{round}"),
            stop.clone(),
            acked.clone(),
        );
        tokio::time::sleep(Duration::from_millis(600)).await;
        if kill {
            cluster.leader.kill();
        } else {
            cluster.leader.stop();
        }
        // The writer's client points at the old published port; stop it while the leader is down.
        stop.store(true, Ordering::Relaxed);
        w.join().unwrap();
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
            acked.lock().unwrap().push(key);
        }
        let contents = assert_clients_converged(
            cluster.leader.client(),
            &cluster.follower_clients(),
            CONVERGE,
        );
        let acked = acked.lock().unwrap();
        let lost: Vec<_> = acked
            .iter()
            .filter(|k| !contents.contains_key(*k))
            .take(5)
            .collect();
        assert!(
            lost.is_empty(),
            "acknowledged writes lost (kill = {kill}): {lost:?}"
        );
    }
    assert!(acked.lock().unwrap().len() > 20);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_leader_killed_with_synchronous_acknowledgement_keeps_every_acknowledged_write() {
    let mut cluster = DockerCluster::start(
        1,
        &[
            ("REPLICATION_ACK_FOLLOWERS", "1"),
            ("REPLICATION_ACK_TIMEOUT_MS", "2000"),
        ],
    )
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let writers: Vec<_> = (0..4)
        .map(|t| {
            writer(
                cluster.leader.client(),
                format!("sync{t}"),
                stop.clone(),
                acked.clone(),
            )
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(800)).await;
    cluster.leader.kill();
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 20, "writes were acknowledged before the kill");
    // Every acknowledged write is already on the follower that acknowledged it ...
    let on_follower = contents(cluster.followers[0].client());
    let missing: Vec<_> = acked
        .iter()
        .filter(|k| !on_follower.contains_key(*k))
        .take(5)
        .collect();
    assert!(
        missing.is_empty(),
        "acknowledged but not on the follower: {missing:?}"
    );
    // ... and on the leader after its restart.
    cluster.leader.start().await;
    let on_leader = contents(cluster.leader.client());
    let missing: Vec<_> = acked
        .iter()
        .filter(|k| !on_leader.contains_key(*k))
        .take(5)
        .collect();
    assert!(
        missing.is_empty(),
        "acknowledged but not on the restarted leader: {missing:?}"
    );
    assert_clients_converged(
        cluster.leader.client(),
        &cluster.follower_clients(),
        CONVERGE,
    );
}

fn compose(project: &str, ports: &[u16], args: &[&str]) -> std::process::Output {
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/../docker/compose.yaml");
    let mut cmd = Command::new("docker-compose");
    cmd.args(["-f", file, "-p", project]).args(args);
    cmd.env("KV_IMAGE", image());
    for (name, port) in [
        "KV_LEADER_PORT",
        "KV_FOLLOWER1_PORT",
        "KV_FOLLOWER2_PORT",
        "KV_FOLLOWER3_PORT",
        "KV_FOLLOWER4_PORT",
    ]
    .iter()
    .zip(ports)
    {
        cmd.env(name, port.to_string());
    }
    cmd.output()
        .expect("docker-compose (Debian: apt-get install docker-compose)")
}

/// Tears the compose project down (volumes too) even when the test fails.
struct ComposeProject {
    name: String,
    ports: Vec<u16>,
}

impl Drop for ComposeProject {
    fn drop(&mut self) {
        let _ = compose(&self.name, &self.ports, &["down", "-v", "--remove-orphans"]);
    }
}

#[test]
fn the_compose_file_validates_and_runs_a_leader_and_four_followers() {
    ensure_image();
    let project = ComposeProject {
        name: format!("kvtest-{}-compose", std::process::id()),
        ports: (0..5).map(|_| free_port()).collect(),
    };
    let config = compose(&project.name, &project.ports, &["config", "-q"]);
    assert!(
        config.status.success(),
        "docker-compose config: {}",
        String::from_utf8_lossy(&config.stderr)
    );
    let up = compose(&project.name, &project.ports, &["up", "-d"]);
    assert!(
        up.status.success(),
        "docker-compose up: {}",
        String::from_utf8_lossy(&up.stderr)
    );
    let client = |port: u16| Client {
        addr: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
    };
    for &p in &project.ports {
        wait_healthy(client(p));
    }
    let leader = client(project.ports[0]);
    let (code, body) = leader.request("POST", "/put", br#"{"key":"compose","value":"works"}"#);
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    let lsn = integration_tests::cluster::lsn_of(&body).unwrap();
    for &p in &project.ports[1..] {
        let (code, value) = client(p).request(
            "GET",
            &format!("/read?key=compose&min_lsn={lsn}&max_wait_ms=30000"),
            b"",
        );
        assert_eq!(
            (code, value),
            (200, b"works".to_vec()),
            "follower on port {p}"
        );
    }
    let st = status(leader);
    assert_eq!(st["followers"].as_array().unwrap().len(), 4);
    // Every container runs as the unprivileged user and is healthy by its own HEALTHCHECK.
    let ids = compose(&project.name, &project.ports, &["ps", "-q"]);
    let ids = String::from_utf8_lossy(&ids.stdout).to_string();
    let ids: Vec<&str> = ids.split_whitespace().collect();
    assert_eq!(ids.len(), 5);
    for id in ids {
        assert_eq!(
            docker_ok(&["inspect", "-f", "{{.Config.User}}", id]),
            "10001:10001"
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
