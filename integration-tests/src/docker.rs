//! Containers of the kv-server image for the container tests, through the `testcontainers` crate.
//!
//! - **Engine**: [`require_docker`] fails (never skips) with instructions when no engine answers.
//!   `testcontainers` 0.28 talks to the engine through `bollard`, which sends unversioned API paths, so
//!   the engine's own API version is used: this works with the Debian engine here (20.10, API 1.41) as
//!   well as with current ones; nothing needs pinning.
//! - **Image**: `KV_TEST_IMAGE`, default the run's image `moniepoint-kv:test-<run>` ([`run`]); `make test`
//!   rebuilds it from the debug build first, and [`ensure_image`] builds it with `docker/build.sh` if it is
//!   missing.
//! - **Security on**: every node runs with a token file (the tests' client sends an admin token), the
//!   replication token, and mutual TLS for clients and peers with certificates of the tests' CA
//!   ([`crate::pki`]), as `docs/security.md` recommends for a deployment; so every container test also
//!   tests replication, Raft and forwarding over TLS. The compose projects run as their files say.
//! - **Isolation**: every cluster gets a user-defined network created for it and container names with a
//!   unique `kvtest-<run>-<id>-` prefix (containers are also labelled `kvtest.run=<run>`); the test reaches
//!   containers only through ports published on 127.0.0.1. Containers, their anonymous volumes and the
//!   network are removed when the cluster is dropped; `make test-clean` removes what a killed run left
//!   (names starting `kvtest-<run>-`, see [`run`]), and only that: other runs on the engine are left alone.

use std::collections::HashMap;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use testcontainers::bollard::models::{HostConfig, PortBinding};
use testcontainers::core::{ContainerPort, WaitFor};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, GenericImage, ImageExt};

use crate::cluster::TOKEN;
use crate::Client;

pub mod run;

/// This process's run id ([`run::current`], read once).
pub fn run_id() -> &'static run::RunId {
    static RUN: OnceLock<run::RunId> = OnceLock::new();
    RUN.get_or_init(run::current)
}

/// The image the tests run: `KV_TEST_IMAGE`, or the run's image.
pub fn image() -> String {
    std::env::var("KV_TEST_IMAGE").unwrap_or_else(|_| run_id().image())
}

fn docker(args: &[&str]) -> std::process::Output {
    Command::new("docker")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run `docker {}`: {e}", args.join(" ")))
}

/// Runs `docker args...`, panicking with its stderr on failure.
pub fn docker_ok(args: &[&str]) -> String {
    let out = docker(args);
    assert!(
        out.status.success(),
        "`docker {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Panics with instructions unless a Docker engine answers.
pub fn require_docker() {
    let ok = Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "no Docker engine is reachable: these tests run the server in containers and cannot pass without one. \
         Install Docker Engine (Debian: apt-get install docker.io docker-compose), start it (systemctl start docker, \
         or dockerd &), and make sure this user may use it (or set DOCKER_HOST)."
    );
}

/// Builds the test image with `docker/build.sh` if it does not exist (once per process).
pub fn ensure_image() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        require_docker();
        let image = image();
        if docker(&["image", "inspect", &image]).status.success() {
            return;
        }
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let status = Command::new(root.join("docker/build.sh"))
            .args([image.as_str(), "debug"])
            .current_dir(&root)
            .status()
            .expect("running docker/build.sh");
        assert!(status.success(), "docker/build.sh {image} debug failed");
    });
}

/// A fresh id telling this process's clusters apart within the run.
fn unique_id() -> String {
    format!("{}-{:x}", std::process::id(), rand::random::<u32>())
}

/// One container of the cluster.
#[derive(Debug)]
pub struct NodeContainer {
    /// Container (and host) name on the cluster network.
    pub name: String,
    /// The container.
    pub container: ContainerAsync<GenericImage>,
    port: u16,
}

impl NodeContainer {
    /// A client through the port published on 127.0.0.1, over TLS.
    pub fn client(&self) -> Client {
        Client::tls(std::net::SocketAddr::from(([127, 0, 0, 1], self.port)))
    }

    /// Base URL on the cluster network.
    pub fn url(&self) -> String {
        format!("https://{}:8080", self.name)
    }

    async fn refresh_port(&mut self) {
        self.port = self
            .container
            .get_host_port_ipv4(ContainerPort::Tcp(8080))
            .await
            .expect("published port");
    }

    /// SIGKILL (`docker kill`).
    pub fn kill(&self) {
        docker_ok(&["kill", self.container.id()]);
    }

    /// SIGTERM, then SIGKILL after 10 s (`docker stop`).
    pub fn stop(&self) {
        docker_ok(&["stop", self.container.id()]);
    }

    /// Starts the stopped container again (same volume) and waits until it answers.
    pub async fn start(&mut self) {
        self.container.start().await.expect("docker start");
        self.refresh_port().await;
        wait_healthy(self.client());
    }

    /// Cuts the container off the cluster network (and so off its published port).
    pub fn disconnect(&self, network: &str) {
        docker_ok(&["network", "disconnect", network, self.container.id()]);
    }

    /// Joins the cluster network again (its name resolves again).
    pub async fn reconnect(&mut self, network: &str) {
        docker_ok(&["network", "connect", network, self.container.id()]);
        self.refresh_port().await;
        wait_healthy(self.client());
    }

    /// When the container's current run started (unchanged if it was never restarted).
    pub fn started_at(&self) -> String {
        docker_ok(&["inspect", "-f", "{{.State.StartedAt}}", self.container.id()])
    }
}

/// Waits until `GET /health-check` answers 200 (up to 60 s).
pub fn wait_healthy(c: Client) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Ok((200, _)) = c.try_request("GET", "/health-check", b"") {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{} did not become healthy", c.addr);
}

/// A leader and followers as containers on their own network.
#[derive(Debug)]
pub struct DockerCluster {
    /// Unique prefix of every name.
    pub prefix: String,
    /// The user-defined network.
    pub network: String,
    /// The leader.
    pub leader: NodeContainer,
    /// The followers.
    pub followers: Vec<NodeContainer>,
}

/// Starts one node of `prefix` on `network` as `name`, with `env` on top of what every node gets:
/// the replication token, a token file, and TLS on for clients and peers (mutual TLS: a certificate of
/// the tests' CA for `name`, `aliases` and `localhost`, and the CA to verify peers and clients).
async fn start_node(
    prefix: &str,
    network: &str,
    name: String,
    aliases: &[&str],
    env: Vec<(&str, String)>,
) -> NodeContainer {
    let mut names = vec![name.as_str()];
    names.extend_from_slice(aliases);
    let identity = crate::pki::pki().issue(&names);
    let follower = env
        .iter()
        .any(|(k, v)| *k == "REPLICATION_MODE" && v == "follower");
    // The image's HEALTHCHECK is readiness: a follower is not ready until its leader runs, and the
    // followers start first (the leader must know their names); a cluster member is not ready until a
    // majority runs. Wait for their liveness below instead.
    let member = env.iter().any(|(k, _)| *k == "CLUSTER_NODE_ID");
    let mut req = GenericImage::new(image_repo(), image_tag())
        .with_wait_for(if follower || member {
            WaitFor::Nothing
        } else {
            WaitFor::healthcheck()
        })
        .with_container_name(name.clone())
        .with_network(network.to_string())
        .with_label(run::RUN_LABEL, run_id().as_str())
        .with_label("kvtest.cluster", prefix.to_string())
        .with_env_var("REPLICATION_TOKEN", TOKEN)
        // Client tokens on: every request of the tests' client carries the admin token
        // (`crate::CLIENT_TOKEN`). Mode 0644 (copied as root; the server runs as another user), which
        // the server warns about.
        .with_copy_to(
            "/etc/kv/tokens",
            format!("admin {}\n", crate::CLIENT_TOKEN).into_bytes(),
        )
        .with_env_var("AUTH_TOKENS_FILE", "/etc/kv/tokens")
        // TLS everywhere (copied as root with mode 0644, readable by the server's user): the API and
        // the peers' traffic over https, every peer and client verified against the tests' CA.
        .with_copy_to("/etc/kv/node.crt", identity.cert.into_bytes())
        .with_copy_to("/etc/kv/node.key", identity.key.into_bytes())
        .with_copy_to(
            "/etc/kv/ca.crt",
            crate::pki::pki().ca_pem().as_bytes().to_vec(),
        )
        .with_env_var("TLS_CERT_FILE", "/etc/kv/node.crt")
        .with_env_var("TLS_KEY_FILE", "/etc/kv/node.key")
        .with_env_var("TLS_CA_FILE", "/etc/kv/ca.crt")
        .with_env_var("TLS_CLIENT_CA_FILE", "/etc/kv/ca.crt")
        .with_env_var("RUST_LOG", "info")
        .with_startup_timeout(Duration::from_secs(60))
        // Publish the API on the loopback interface only, on a port the engine picks.
        .with_host_config_modifier(|hc: &mut HostConfig| {
            hc.publish_all_ports = Some(false);
            hc.port_bindings = Some(HashMap::from([(
                "8080/tcp".to_string(),
                Some(vec![PortBinding {
                    host_ip: Some("127.0.0.1".into()),
                    host_port: Some(String::new()),
                }]),
            )]));
        });
    for (k, v) in env {
        req = req.with_env_var(k, v);
    }
    let container = req
        .start()
        .await
        .unwrap_or_else(|e| panic!("starting container {name} of {}: {e}", image()));
    let mut node = NodeContainer {
        name,
        container,
        port: 0,
    };
    node.refresh_port().await;
    wait_healthy(node.client());
    node
}

fn image_repo() -> String {
    image()
        .rsplit_once(':')
        .map_or(image(), |(r, _)| r.to_string())
}

fn image_tag() -> String {
    image()
        .rsplit_once(':')
        .map_or("latest".to_string(), |(_, t)| t.to_string())
}

impl DockerCluster {
    /// Starts `followers` followers and a leader (with `leader_env` on top of the replication settings),
    /// all with `REPLICATION_ENGINE=engine`.
    pub async fn start(followers: usize, engine: &str, leader_env: &[(&str, &str)]) -> Self {
        ensure_image();
        let prefix = run_id().cluster_prefix(&unique_id());
        let network = format!("{prefix}-net");
        let leader_name = format!("{prefix}-leader");
        let mut nodes = Vec::new();
        for i in 0..followers {
            nodes.push(
                start_node(
                    &prefix,
                    &network,
                    format!("{prefix}-f{i}"),
                    &[],
                    vec![
                        ("REPLICATION_ENGINE", engine.into()),
                        ("REPLICATION_MODE", "follower".into()),
                        (
                            "REPLICATION_LEADER_HOST",
                            format!("https://{leader_name}:8080"),
                        ),
                    ],
                )
                .await,
            );
        }
        let hosts: Vec<String> = nodes.iter().map(NodeContainer::url).collect();
        let mut env = vec![
            ("REPLICATION_ENGINE", engine.to_string()),
            ("REPLICATION_MODE", "leader".to_string()),
            ("REPLICATION_REPLICA_HOSTS", hosts.join(",")),
        ];
        env.extend(leader_env.iter().map(|(k, v)| (*k, v.to_string())));
        let leader = start_node(&prefix, &network, leader_name, &[], env).await;
        Self {
            prefix,
            network,
            leader,
            followers: nodes,
        }
    }

    /// Clients of the followers.
    pub fn follower_clients(&self) -> Vec<Client> {
        self.followers.iter().map(NodeContainer::client).collect()
    }
}

/// A Raft cluster of voters as containers, configured as `docker/compose.cluster.yaml` configures its
/// nodes (`CLUSTER_NODE_ID`, the same `CLUSTER_PEERS`, the replication token). Two networks: the
/// cluster network carries the clients (the API port is published on 127.0.0.1 from it), the peers
/// network carries Raft traffic and forwarded writes, under the alias `<prefix>-pN`. Cutting a node off
/// the peers network ([`RaftContainers::isolate`]) isolates it from the others while the test still
/// reaches it.
#[derive(Debug)]
pub struct RaftContainers {
    /// Unique prefix of every name.
    pub prefix: String,
    /// The clients' network.
    network: String,
    /// The peers network.
    pub peers_network: String,
    /// Settings every node gets on top of the cluster's.
    env: Vec<(String, String)>,
    /// Node `i` has id `i + 1`.
    pub nodes: Vec<NodeContainer>,
}

impl RaftContainers {
    /// Starts `n` voters with `env` on top of the cluster settings, and waits until each answers.
    pub async fn start(n: usize, env: &[(&str, &str)]) -> Self {
        ensure_image();
        let prefix = run_id().cluster_prefix(&unique_id());
        let network = format!("{prefix}-net");
        let peers_network = format!("{prefix}-peers");
        docker_ok(&[
            "network",
            "create",
            "--label",
            &format!("{}={}", run::RUN_LABEL, run_id().as_str()),
            &peers_network,
        ]);
        let mut cluster = Self {
            prefix,
            network,
            peers_network,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            nodes: Vec::new(),
        };
        for _ in 0..n {
            cluster.add_node(n).await;
        }
        cluster
    }

    /// The base URL peers reach node index `i` at.
    pub fn peer_url(&self, i: usize) -> String {
        format!("https://{}:8080", self.alias(i))
    }

    /// Starts the next node (id = count + 1) with the peer list of the first `max(voters, count + 1)`
    /// ids; a node beyond the initial voters waits to be added (`add-learner`, `promote`). Every node
    /// shares an explicit `CLUSTER_ID` (the default one derives from the peer list, which grows). Returns
    /// its index.
    pub async fn add_node(&mut self, voters: usize) -> usize {
        let i = self.nodes.len();
        let peers: Vec<String> = (0..voters.max(i + 1))
            .map(|j| format!("{}={}", j + 1, self.peer_url(j)))
            .collect();
        let mut env = vec![
            ("CLUSTER_NODE_ID", (i + 1).to_string()),
            ("CLUSTER_PEERS", peers.join(",")),
            ("CLUSTER_ID", self.prefix.clone()),
        ];
        env.extend(self.env.iter().map(|(k, v)| (k.as_str(), v.clone())));
        let node = start_node(
            &self.prefix,
            &self.network,
            format!("{}-n{}", self.prefix, i + 1),
            &[&self.alias(i)],
            env,
        )
        .await;
        self.nodes.push(node);
        self.rejoin(i);
        i
    }

    /// The peer alias of node index `i`.
    fn alias(&self, i: usize) -> String {
        format!("{}-p{}", self.prefix, i + 1)
    }

    /// Cuts node index `i` off the peers network: it hears no peer and no peer hears it.
    pub fn isolate(&self, i: usize) {
        docker_ok(&[
            "network",
            "disconnect",
            &self.peers_network,
            self.nodes[i].container.id(),
        ]);
    }

    /// Joins node index `i` to the peers network again.
    pub fn rejoin(&self, i: usize) {
        docker_ok(&[
            "network",
            "connect",
            "--alias",
            &self.alias(i),
            &self.peers_network,
            self.nodes[i].container.id(),
        ]);
    }

    /// Freezes node index `i` (`docker pause`): it neither answers nor times out anything.
    pub fn pause(&self, i: usize) {
        docker_ok(&["pause", self.nodes[i].container.id()]);
    }

    /// Thaws node index `i`.
    pub fn unpause(&self, i: usize) {
        docker_ok(&["unpause", self.nodes[i].container.id()]);
    }

    /// Starts the stopped or killed node index `i` again (same volume) on the peers network.
    pub async fn restart(&mut self, i: usize) {
        // A stopped container keeps its networks: docker start reconnects it to both.
        self.nodes[i].start().await;
    }

    /// Clients of every node.
    pub fn clients(&self) -> Vec<Client> {
        self.nodes.iter().map(NodeContainer::client).collect()
    }
}

impl Drop for RaftContainers {
    fn drop(&mut self) {
        // The containers go first (testcontainers removes them again, harmlessly), or the peers network
        // would still have endpoints.
        for node in &self.nodes {
            let _ = docker(&["rm", "-f", "-v", node.container.id()]);
        }
        let _ = docker(&["network", "rm", &self.peers_network]);
    }
}

/// A project of one of the compose files in `docker/`, on ports of this run's choosing, torn down
/// (volumes too) when dropped, even when the test fails.
#[derive(Debug)]
pub struct ComposeProject {
    file: String,
    /// The project name (unique to this run and process).
    pub name: String,
    /// Each port setting of the file and the port given to it, in the file's order.
    pub ports: Vec<(String, u16)>,
    /// More settings of the file's variables.
    env: Vec<(String, String)>,
}

impl ComposeProject {
    /// Validates `docker/<file>` and starts it (`up -d`) with the run's image, giving each of
    /// `port_settings` a free port.
    pub fn up(file: &str, port_settings: &[&str]) -> Self {
        Self::up_with(file, port_settings, &[])
    }

    /// [`ComposeProject::up`] with more of the file's variables set (`env`).
    pub fn up_with(file: &str, port_settings: &[&str], env: &[(&str, &str)]) -> Self {
        ensure_image();
        let project = Self {
            file: format!("{}/../docker/{file}", env!("CARGO_MANIFEST_DIR")),
            name: run_id().compose_project(std::process::id()),
            ports: port_settings
                .iter()
                .map(|s| (s.to_string(), crate::free_port()))
                .collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        for args in [&["config", "-q"][..], &["up", "-d"][..]] {
            let out = project.run(args);
            assert!(
                out.status.success(),
                "docker-compose {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        project
    }

    /// Runs `docker-compose args...` on the project.
    pub fn run(&self, args: &[&str]) -> std::process::Output {
        let mut cmd = Command::new("docker-compose");
        cmd.args(["-f", &self.file, "-p", &self.name]).args(args);
        cmd.env("KV_IMAGE", image());
        for (name, port) in &self.ports {
            cmd.env(name, port.to_string());
        }
        for (name, value) in &self.env {
            cmd.env(name, value);
        }
        cmd.output()
            .expect("docker-compose (Debian: apt-get install docker-compose)")
    }

    /// Clients of the published ports, in the file's order.
    pub fn clients(&self) -> Vec<Client> {
        self.ports.iter().map(|(_, p)| Client::local(*p)).collect()
    }
}

impl Drop for ComposeProject {
    fn drop(&mut self) {
        let _ = self.run(&["down", "-v", "--remove-orphans"]);
    }
}
