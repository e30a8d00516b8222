//! Who may do what, against the real `kv-server`: every route × (no token, an unknown token, each role,
//! the replication token) × (a loopback source, a source that is not loopback), with the exact status;
//! protected mode; forwarded writes decided by the leader; and no secret in the logs, the status or the
//! metrics (`docs/security.md`).
//!
//! A source that is not loopback: the server listens on the gateway address of a Docker network this
//! test creates (an address of this host's bridge), and a client connects to it either from 127.0.0.1
//! (bound before connecting: a loopback source) or from whatever address the kernel picks (the
//! bridge's or the host's own: not loopback). Nothing listens on another interface.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use integration_tests::docker::{docker_ok, run_id};

const READ: &str = "read-token-0a1b2c3d4e5f6a7b";
const WRITE: &str = "write-token-1b2c3d4e5f6a7b8c";
const ADMIN: &str = "admin-token-2c3d4e5f6a7b8c9d";
const PEER: &str = "replication-token-3d4e5f6a7b8c9d0e";
const UNKNOWN: &str = "unknown-token-4e5f6a7b8c9d0e1f";

/// A Docker network this test created, removed on drop; its gateway is an address of this host.
struct Network {
    name: String,
    gateway: IpAddr,
}

impl Network {
    fn create() -> Self {
        let name = run_id().cluster_prefix(&format!(
            "sec-{}-{:x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        docker_ok(&[
            "network",
            "create",
            "--label",
            &format!(
                "{}={}",
                integration_tests::docker::run::RUN_LABEL,
                run_id().as_str()
            ),
            &name,
        ]);
        let gateway = docker_ok(&[
            "network",
            "inspect",
            "-f",
            "{{(index .IPAM.Config 0).Gateway}}",
            &name,
        ]);
        let gateway: IpAddr = gateway
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("gateway of {name}: {gateway:?}: {e}"));
        assert!(!gateway.is_loopback(), "{gateway}");
        Self { name, gateway }
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["network", "rm", &self.name])
            .output();
    }
}

/// A `kv-server` child with its log in a file, killed on drop.
struct Server {
    child: Child,
    addr: SocketAddr,
    log: std::path::PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn start(dir: &Path, bind: IpAddr, args: &[&str]) -> Self {
        let port = integration_tests::free_port();
        let log = dir.join("server.log");
        let child = Command::new(integration_tests::binary("kv-server"))
            .args(["--bind", &bind.to_string(), "--port", &port.to_string()])
            .args(["--data-path", dir.join("data").to_str().unwrap()])
            .args(args)
            .env("RUST_LOG", "info")
            .env_remove("AUTH_TOKENS_FILE")
            .env_remove("PROTECTED_MODE")
            .env_remove("REPLICATION_TOKEN")
            .env_remove("REPLICATION_TOKEN_ACCEPTED")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let server = Self {
            child,
            addr: SocketAddr::new(bind, port),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while request(
            server.addr,
            Source::Loopback,
            "GET",
            "/health-check",
            &[],
            b"",
        )
        .0 != 200
        {
            assert!(Instant::now() < deadline, "{}", server.log_text());
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    Loopback,
    Elsewhere,
}

/// One request from `source` (`Connection: close`): (status, body). Status 0: no answer.
fn request(
    addr: SocketAddr,
    source: Source,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<u8>) {
    let socket = match addr {
        SocketAddr::V4(_) => std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)),
        SocketAddr::V6(_) => unreachable!("IPv4 only"),
    };
    let stream = match source {
        Source::Elsewhere => socket,
        Source::Loopback => connect_from_loopback(addr),
    };
    let Ok(mut s) = stream else {
        return (0, Vec::new());
    };
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let extra: String = headers
        .iter()
        .map(|(n, v)| format!("{n}: {v}\r\n"))
        .collect();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n{extra}Content-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    if s.write_all(&req).is_err() {
        return (0, Vec::new());
    }
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    match integration_tests::parse_answer(&raw) {
        Ok(answer) => (answer.status, answer.body),
        Err(_) => (0, Vec::new()),
    }
}

/// A connection to `addr` from 127.0.0.1 (std cannot bind before connecting; tokio can).
fn connect_from_loopback(addr: SocketAddr) -> std::io::Result<std::net::TcpStream> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        let stream = tokio::time::timeout(Duration::from_secs(5), socket.connect(addr))
            .await
            .map_err(|_| std::io::Error::other("connect timed out"))??;
        let std = stream.into_std()?;
        std.set_nonblocking(false)?;
        Ok(std)
    })
}

/// What a route needs (written out here, apart from the server's route table).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Need {
    Open,
    Read,
    Write,
    Admin,
    /// An admin token or the replication token.
    Operator,
    /// The replication token.
    Peer,
}

/// One request of every route and method, with what it needs.
const REQUESTS: &[(&str, &str, &[u8], Need)] = &[
    ("POST", "/put", br#"{"key":"k2","value":"v"}"#, Need::Write),
    ("GET", "/read?key=k", b"", Need::Read),
    ("HEAD", "/read?key=k", b"", Need::Read),
    ("GET", "/readrange?start=a&end=z", b"", Need::Read),
    ("POST", "/batchput", br#"{"b":"1"}"#, Need::Write),
    ("POST", "/delete?key=absent", b"", Need::Write),
    ("DELETE", "/delete?key=absent", b"", Need::Write),
    ("GET", "/health-check", b"", Need::Open),
    ("GET", "/readyz", b"", Need::Open),
    ("PUT", "/v1/kv/k3", b"v", Need::Write),
    ("GET", "/v1/kv/k", b"", Need::Read),
    ("DELETE", "/v1/kv/k3", b"", Need::Write),
    ("GET", "/v1/kv?limit=10", b"", Need::Read),
    ("GET", "/v1/status", b"", Need::Read),
    ("GET", "/metrics", b"", Need::Open),
    ("POST", "/v1/admin/compact", b"", Need::Admin),
    ("GET", "/v1/replication/state", b"", Need::Peer),
    ("POST", "/v1/replication/apply", b"", Need::Peer),
    ("POST", "/v1/replication/snapshot", b"", Need::Peer),
    ("POST", "/v1/raft/vote", b"{}", Need::Peer),
    ("GET", "/v1/cluster", b"", Need::Operator),
    ("POST", "/v1/cluster/promote", br#"{"ids":[2]}"#, Need::Peer),
];

#[derive(Clone, Copy, Debug)]
enum Caller {
    Nobody,
    Bearer(&'static str),
    Replication(&'static str),
}

impl Caller {
    fn headers(self) -> Vec<(&'static str, String)> {
        match self {
            Caller::Nobody => vec![],
            Caller::Bearer(t) => vec![("authorization", format!("Bearer {t}"))],
            Caller::Replication(t) => vec![("x-kv-replication-token", t.to_string())],
        }
    }
}

fn send(server: &Server, source: Source, caller: Caller, i: usize) -> (u16, Vec<u8>) {
    let (method, path, body, _) = REQUESTS[i];
    let owned = caller.headers();
    let headers: Vec<(&str, &str)> = owned.iter().map(|(n, v)| (*n, v.as_str())).collect();
    request(server.addr, source, method, path, &headers, body)
}

fn token_file(dir: &Path, text: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("tokens");
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// The status each request gets when admitted, from a server open to all (PROTECTED_MODE=false, no
/// tokens) holding key `k`: what a handler answers, the reference for the admitted cells below.
fn admitted_statuses(net: &Network) -> Vec<u16> {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), net.gateway, &["--protected-mode", "false"]);
    let put = request(server.addr, Source::Elsewhere, "PUT", "/v1/kv/k", &[], b"v");
    assert_eq!(put.0, 200);
    let statuses: Vec<u16> = (0..REQUESTS.len())
        .map(|i| send(&server, Source::Elsewhere, Caller::Nobody, i).0)
        .collect();
    for (status, (method, path, _, _)) in statuses.iter().zip(REQUESTS) {
        assert!(
            ![0, 401, 403].contains(status),
            "{method} {path}: {status} on an open server"
        );
    }
    assert!(
        server.log_text().contains("PROTECTED_MODE=false"),
        "the start-up warns"
    );
    statuses
}

#[test]
fn every_route_answers_each_caller_and_source_with_the_exact_status() {
    let net = Network::create();
    let admitted = admitted_statuses(&net);
    let dir = tempfile::tempdir().unwrap();
    let tokens = token_file(
        dir.path(),
        &format!("# one of each\nread {READ}\nwrite {WRITE}\nadmin {ADMIN}\n"),
    );
    let server = Server::start(
        dir.path(),
        net.gateway,
        &[
            "--auth-tokens-file",
            tokens.to_str().unwrap(),
            "--replication-token",
            PEER,
        ],
    );
    let put = request(
        server.addr,
        Source::Elsewhere,
        "PUT",
        "/v1/kv/k",
        &[("authorization", &format!("Bearer {WRITE}"))],
        b"v",
    );
    assert_eq!(put.0, 200);
    let rank = |t: &str| [READ, WRITE, ADMIN].iter().position(|x| *x == t);
    let mut cells = 0;
    for source in [Source::Loopback, Source::Elsewhere] {
        for caller in [
            Caller::Nobody,
            Caller::Bearer(UNKNOWN),
            Caller::Bearer(READ),
            Caller::Bearer(WRITE),
            Caller::Bearer(ADMIN),
            Caller::Replication(PEER),
            Caller::Replication(UNKNOWN),
        ] {
            for (i, (method, path, _, need)) in REQUESTS.iter().enumerate() {
                let role_needed = match need {
                    Need::Read => Some(0),
                    Need::Write => Some(1),
                    Need::Admin | Need::Operator => Some(2),
                    Need::Open | Need::Peer => None,
                };
                let want = match (need, caller) {
                    (Need::Open, _) => admitted[i],
                    (Need::Peer | Need::Operator, Caller::Replication(PEER)) => admitted[i],
                    (_, Caller::Replication(_)) => 401,
                    (Need::Peer, _) => 401,
                    (_, Caller::Nobody) => 401,
                    (_, Caller::Bearer(t)) => match (rank(t), role_needed) {
                        (None, _) => 401,
                        (Some(have), Some(needed)) if have >= needed => admitted[i],
                        _ => 403,
                    },
                };
                let (got, body) = send(&server, source, caller, i);
                assert_eq!(
                    got,
                    want,
                    "{method} {path} as {caller:?} from {source:?}: {}",
                    String::from_utf8_lossy(&body)
                );
                cells += 1;
            }
        }
    }
    assert_eq!(cells, 2 * 7 * REQUESTS.len());
    // No secret anywhere: the log, the status, the metrics, a refusal.
    let bearer = [("authorization", format!("Bearer {ADMIN}"))];
    let headers: Vec<(&str, &str)> = bearer.iter().map(|(n, v)| (*n, v.as_str())).collect();
    let status = request(
        server.addr,
        Source::Elsewhere,
        "GET",
        "/v1/status",
        &headers,
        b"",
    );
    let metrics = request(server.addr, Source::Elsewhere, "GET", "/metrics", &[], b"");
    let refused = request(
        server.addr,
        Source::Elsewhere,
        "GET",
        "/v1/status",
        &[("authorization", &format!("Bearer {READ}x"))],
        b"",
    );
    assert_eq!((status.0, metrics.0, refused.0), (200, 200, 401));
    let log = server.log_text();
    assert!(log.contains("client tokens"), "{log}");
    for (what, text) in [
        ("log", log.clone()),
        ("status", String::from_utf8_lossy(&status.1).into_owned()),
        ("metrics", String::from_utf8_lossy(&metrics.1).into_owned()),
        ("refusal", String::from_utf8_lossy(&refused.1).into_owned()),
    ] {
        for secret in [READ, WRITE, ADMIN, PEER] {
            assert!(!text.contains(secret), "the {what} shows a secret");
        }
    }
}

#[test]
fn protected_mode_serves_loopback_clients_only_and_says_so() {
    let net = Network::create();
    let admitted = admitted_statuses(&net);
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), net.gateway, &["--replication-token", PEER]);
    let put = request(server.addr, Source::Loopback, "PUT", "/v1/kv/k", &[], b"v");
    assert_eq!(put.0, 200);
    assert!(
        server.log_text().contains("protected mode"),
        "{}",
        server.log_text()
    );
    for (i, (method, path, _, need)) in REQUESTS.iter().enumerate() {
        for caller in [
            Caller::Nobody,
            Caller::Bearer(ADMIN),
            Caller::Replication(PEER),
        ] {
            let peer_ok = matches!(caller, Caller::Replication(_));
            for source in [Source::Loopback, Source::Elsewhere] {
                let want = match (need, source) {
                    (Need::Open, _) => admitted[i],
                    (Need::Peer | Need::Operator, _) if peer_ok => admitted[i],
                    (Need::Peer, _) => 401,
                    (_, Source::Loopback) => admitted[i],
                    (_, Source::Elsewhere) => 403,
                };
                let (got, body) = send(&server, source, caller, i);
                let text = String::from_utf8_lossy(&body);
                assert_eq!(
                    got, want,
                    "{method} {path} as {caller:?} from {source:?}: {text}"
                );
                if got == 403 && *method != "HEAD" {
                    assert!(text.contains("protected mode"), "{text}");
                    assert!(text.contains("PROTECTED_MODE=false"), "{text}");
                }
            }
        }
    }
}

/// A follower forwards a client's write with the client's token, and the leader decides on it: here
/// the follower's file calls a token `write` and the leader's calls it `read`, so the leader refuses
/// what the follower admitted. In protected mode the follower vouches for its loopback client with the
/// replication token, so the leader (reached from an address that is not loopback) admits the write it
/// would refuse from that address directly. Both replication engines: the static follower's forward and
/// a Raft learner's (`REPLICATION_ENGINE=raft`) are separate paths.
#[test]
fn the_leader_decides_on_forwarded_writes() {
    let net = Network::create();
    for (engine, protected) in [
        ("static", false),
        ("static", true),
        ("raft", false),
        ("raft", true),
    ] {
        let root = tempfile::tempdir().unwrap();
        let (leader_dir, follower_dir) = (root.path().join("leader"), root.path().join("follower"));
        std::fs::create_dir_all(&leader_dir).unwrap();
        std::fs::create_dir_all(&follower_dir).unwrap();
        let follower_port = integration_tests::free_port();
        let follower_url = format!("http://127.0.0.1:{follower_port}");
        let mut leader_args = vec![
            "--replication-engine".to_string(),
            engine.to_string(),
            "--replication-token".to_string(),
            PEER.to_string(),
            "--replication-replica-hosts".to_string(),
            follower_url.clone(),
        ];
        let mut follower_args = vec![
            "--replication-engine".to_string(),
            engine.to_string(),
            "--replication-token".to_string(),
            PEER.to_string(),
        ];
        if !protected {
            let lf = token_file(&leader_dir, &format!("read {WRITE}\nadmin {ADMIN}\n"));
            let ff = token_file(&follower_dir, &format!("write {WRITE}\nadmin {ADMIN}\n"));
            leader_args.extend(["--auth-tokens-file".into(), lf.to_str().unwrap().into()]);
            follower_args.extend(["--auth-tokens-file".into(), ff.to_str().unwrap().into()]);
        }
        let leader_refs: Vec<&str> = leader_args.iter().map(String::as_str).collect();
        let leader = Server::start(&leader_dir, net.gateway, &leader_refs);
        follower_args.extend([
            "--replication-mode".into(),
            "follower".into(),
            "--replication-leader-host".into(),
            format!("http://{}", leader.addr),
        ]);
        let follower = start_follower(&follower_dir, follower_port, &follower_args);
        if protected {
            let (got, body) = request(
                follower.addr,
                Source::Loopback,
                "PUT",
                "/v1/kv/f",
                &[],
                b"1",
            );
            assert_eq!(
                got,
                200,
                "{engine}, vouched: {}",
                String::from_utf8_lossy(&body)
            );
            let (got, _) = request(leader.addr, Source::Elsewhere, "PUT", "/v1/kv/f", &[], b"1");
            assert_eq!(got, 403, "the same write sent straight from elsewhere");
        } else {
            let auth = format!("Bearer {WRITE}");
            let (got, body) = request(
                follower.addr,
                Source::Loopback,
                "PUT",
                "/v1/kv/f",
                &[("authorization", &auth)],
                b"1",
            );
            let text = String::from_utf8_lossy(&body);
            assert_eq!(got, 403, "{engine}: the leader's role decides: {text}");
            assert!(text.contains("role is read"), "{text}");
            let auth = format!("Bearer {ADMIN}");
            let (got, _) = request(
                follower.addr,
                Source::Loopback,
                "PUT",
                "/v1/kv/f",
                &[("authorization", &auth)],
                b"1",
            );
            assert_eq!(got, 200);
        }
    }
}

fn start_follower(dir: &Path, port: u16, args: &[String]) -> FollowerProcess {
    let child = Command::new(integration_tests::binary("kv-server"))
        .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
        .args(["--data-path", dir.join("data").to_str().unwrap()])
        .args(args)
        .env("RUST_LOG", "warn")
        .env_remove("AUTH_TOKENS_FILE")
        .env_remove("PROTECTED_MODE")
        .env_remove("REPLICATION_TOKEN")
        .env_remove("REPLICATION_TOKEN_ACCEPTED")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let follower = FollowerProcess {
        child,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
    };
    // Ready: its leader answers it (the follower's readiness probes the leader).
    let deadline = Instant::now() + Duration::from_secs(60);
    while request(follower.addr, Source::Loopback, "GET", "/readyz", &[], b"").0 != 200 {
        assert!(Instant::now() < deadline, "the follower never became ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    follower
}

struct FollowerProcess {
    child: Child,
    addr: SocketAddr,
}

impl Drop for FollowerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// SIGHUP reads the token file again: a token added is admitted and a token removed refused from the
/// next request on; a file that fails to load (here: writable by others) keeps the tokens in use.
#[test]
fn sighup_reloads_the_token_file_and_a_bad_one_keeps_the_tokens_in_use() {
    use std::os::unix::fs::PermissionsExt;
    let net = Network::create();
    let dir = tempfile::tempdir().unwrap();
    let tokens = token_file(dir.path(), &format!("admin {ADMIN}\n"));
    let server = Server::start(
        dir.path(),
        net.gateway,
        &["--auth-tokens-file", tokens.to_str().unwrap()],
    );
    let status_as = |token: &str| {
        let auth = format!("Bearer {token}");
        request(
            server.addr,
            Source::Elsewhere,
            "GET",
            "/v1/status",
            &[("authorization", &auth)],
            b"",
        )
        .0
    };
    let hup_and_wait_for = |token: &str, want: u16| {
        assert!(Command::new("kill")
            .args(["-HUP", &server.child.id().to_string()])
            .status()
            .unwrap()
            .success());
        let deadline = Instant::now() + Duration::from_secs(10);
        while status_as(token) != want {
            assert!(Instant::now() < deadline, "{}", server.log_text());
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    assert_eq!((status_as(ADMIN), status_as(READ)), (200, 401));
    std::fs::write(&tokens, format!("read {READ}\n")).unwrap();
    hup_and_wait_for(READ, 200);
    assert_eq!(status_as(ADMIN), 401, "a token removed is refused");
    // Writable by others: refused, the tokens in use stay.
    std::fs::write(&tokens, format!("read {READ}\nadmin {ADMIN}\n")).unwrap();
    std::fs::set_permissions(&tokens, std::fs::Permissions::from_mode(0o666)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    assert!(Command::new("kill")
        .args(["-HUP", &server.child.id().to_string()])
        .status()
        .unwrap()
        .success());
    while !server.log_text().contains("the token file failed to load") {
        assert!(Instant::now() < deadline, "{}", server.log_text());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!((status_as(READ), status_as(ADMIN)), (200, 401));
    let log = server.log_text();
    for secret in [READ, ADMIN] {
        assert!(!log.contains(secret), "the log shows a token");
    }
}
