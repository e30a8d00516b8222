//! HTTPS against the real `kv-server` and `kvctl`, with certificates this test makes (`rcgen`): a good
//! certificate, a client trusting another CA, an expired certificate, a client certificate required and
//! missing (then given), a certificate reloaded on SIGHUP, and a leader and follower replicating and
//! forwarding over `https://` with the replication token (`docs/security.md`).
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};

/// A CA: its certificate's PEM and what signs with it.
struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let pem = params.self_signed(&key).unwrap().pem();
        Self {
            pem,
            issuer: Issuer::new(params, key),
        }
    }

    /// A certificate for localhost and 127.0.0.1, for servers and clients, optionally long expired:
    /// (certificate PEM, key PEM).
    fn issue(&self, expired: bool) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        if expired {
            params.not_before = rcgen::date_time_ymd(2000, 1, 1);
            params.not_after = rcgen::date_time_ymd(2001, 1, 1);
        }
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// Writes `text` to `dir/name` and returns the path.
fn file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// Files of a node's certificate, its key, and the CA that signed it.
struct Identity {
    cert: PathBuf,
    key: PathBuf,
    ca: PathBuf,
}

fn identity(dir: &Path, name: &str, ca: &Ca, expired: bool) -> Identity {
    let (cert, key) = ca.issue(expired);
    Identity {
        cert: file(dir, &format!("{name}.crt"), &cert),
        key: file(dir, &format!("{name}.key"), &key),
        ca: file(dir, &format!("{name}-ca.crt"), &ca.pem),
    }
}

struct Server {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// `kv-server` on 127.0.0.1 with `id`'s certificate and `args`; returns once it answers a TCP
    /// connection (a TLS client may still be refused: that is what the tests look at).
    fn start(dir: &Path, id: &Identity, args: &[&str]) -> Self {
        Self::start_on(dir, id, integration_tests::free_port(), args)
    }

    fn start_on(dir: &Path, id: &Identity, port: u16, args: &[&str]) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let log = dir.join("server.log");
        let child = Command::new(integration_tests::binary("kv-server"))
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--data-path", dir.join("data").to_str().unwrap()])
            .args(["--tls-cert-file", id.cert.to_str().unwrap()])
            .args(["--tls-key-file", id.key.to_str().unwrap()])
            .args(args)
            .env("RUST_LOG", "info")
            .env_remove("AUTH_TOKENS_FILE")
            .env_remove("PROTECTED_MODE")
            .env_remove("REPLICATION_TOKEN")
            .env_remove("REPLICATION_TOKEN_ACCEPTED")
            .env_remove("TLS_CA_FILE")
            .env_remove("TLS_CLIENT_CA_FILE")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "kv-server never listened");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child, port, log }
    }

    /// Waits until the server's log holds `line`.
    fn wait_for_log(&self, line: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .contains(line)
        {
            assert!(Instant::now() < deadline, "the log never said {line:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn url(&self) -> String {
        format!("https://localhost:{}", self.port)
    }
}

fn kvctl(url: &str, tls: &[&str], args: &[&str]) -> Output {
    Command::new(integration_tests::binary("kvctl"))
        .args(["--url", url, "--timeout", "10s"])
        .args(tls)
        .args(args)
        .env_remove("KV_CACERT")
        .env_remove("KV_CLIENT_CERT")
        .env_remove("KV_CLIENT_KEY")
        .env_remove("KV_TOKEN")
        .env_remove("KV_TOKEN_FILE")
        .output()
        .unwrap()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "kvctl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn refused(out: &Output, says: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains(says), "expected {says:?} in: {stderr}");
}

/// Polls until `kvctl status` over TLS succeeds.
fn wait_ready(url: &str, tls: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = kvctl(url, tls, &["status"]);
        if out.status.success() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{url} never answered: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Polls until `kvctl get` of `key` over TLS answers `want`.
fn wait_for(url: &str, tls: &[&str], key: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = kvctl(url, tls, &["get", key]);
        if out.status.success() && String::from_utf8_lossy(&out.stdout) == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{url} never served {key}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_good_certificate_serves_and_a_wrong_ca_or_an_expired_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, other) = (Ca::new("test CA"), Ca::new("another CA"));
    let good = identity(dir.path(), "good", &ca, false);
    let server = Server::start(&dir.path().join("s1"), &good, &[]);
    let trust = ["--cacert", good.ca.to_str().unwrap()];
    wait_ready(&server.url(), &trust);
    ok(&kvctl(&server.url(), &trust, &["put", "k", "over tls"]));
    assert_eq!(ok(&kvctl(&server.url(), &trust, &["get", "k"])), "over tls");

    let wrong = file(dir.path(), "other-ca.crt", &other.pem);
    let out = kvctl(
        &server.url(),
        &["--cacert", wrong.to_str().unwrap()],
        &["get", "k"],
    );
    refused(&out, "TLS handshake failed");
    // Without a CA an https:// URL is a usage error, never an unverified connection.
    let out = kvctl(&server.url(), &[], &["get", "k"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--cacert"));
    // Plain HTTP to the TLS port gets no answer.
    let plain = integration_tests::Client::local(server.port);
    assert!(
        plain.try_request("GET", "/health-check", b"").is_err(),
        "plain HTTP gets no HTTP answer from the TLS port"
    );

    let expired = identity(dir.path(), "expired", &ca, true);
    let server = Server::start(&dir.path().join("s2"), &expired, &[]);
    let out = kvctl(&server.url(), &trust, &["get", "k"]);
    refused(&out, "certificate expired");
}

#[test]
fn a_required_client_certificate_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test CA");
    let server_id = identity(dir.path(), "server", &ca, false);
    let server = Server::start(
        &dir.path().join("s"),
        &server_id,
        &["--tls-client-ca-file", server_id.ca.to_str().unwrap()],
    );
    let trust = ["--cacert", server_id.ca.to_str().unwrap()];
    let out = kvctl(&server.url(), &trust, &["put", "k", "v"]);
    refused(&out, "CertificateRequired");
    let client = identity(dir.path(), "client", &ca, false);
    let with_cert = [
        trust[0],
        trust[1],
        "--client-cert",
        client.cert.to_str().unwrap(),
        "--client-key",
        client.key.to_str().unwrap(),
    ];
    wait_ready(&server.url(), &with_cert);
    ok(&kvctl(&server.url(), &with_cert, &["put", "k", "v"]));
    // A client certificate of another CA is refused too.
    let stranger = identity(dir.path(), "stranger", &Ca::new("another CA"), false);
    let out = kvctl(
        &server.url(),
        &[
            trust[0],
            trust[1],
            "--client-cert",
            stranger.cert.to_str().unwrap(),
            "--client-key",
            stranger.key.to_str().unwrap(),
        ],
        &["get", "k"],
    );
    refused(&out, "UnknownCA");
}

#[test]
fn sighup_reloads_the_certificate_and_a_bad_reload_keeps_the_old_one() {
    let dir = tempfile::tempdir().unwrap();
    let (first, second) = (Ca::new("first CA"), Ca::new("second CA"));
    let id = identity(dir.path(), "node", &first, false);
    let server = Server::start(&dir.path().join("s"), &id, &[]);
    let first_ca = file(dir.path(), "first.crt", &first.pem);
    let second_ca = file(dir.path(), "second.crt", &second.pem);
    let trust_first = ["--cacert", first_ca.to_str().unwrap()];
    let trust_second = ["--cacert", second_ca.to_str().unwrap()];
    wait_ready(&server.url(), &trust_first);
    let hup = || {
        assert!(Command::new("kill")
            .args(["-HUP", &server.child.id().to_string()])
            .status()
            .unwrap()
            .success());
    };
    // A broken key file: the reload fails and the first certificate stays.
    std::fs::write(&id.key, "not a key").unwrap();
    hup();
    server.wait_for_log("TLS reload failed");
    ok(&kvctl(&server.url(), &trust_first, &["put", "k", "1"]));
    // The second CA's certificate: new connections use it.
    let (cert, key) = second.issue(false);
    std::fs::write(&id.cert, cert).unwrap();
    std::fs::write(&id.key, key).unwrap();
    hup();
    wait_for(&server.url(), &trust_second, "k", "1");
    refused(
        &kvctl(&server.url(), &trust_first, &["get", "k"]),
        "TLS handshake failed",
    );
}

/// Static replication over https:// with mutual TLS: the leader ships to the follower and the follower
/// forwards a write to the leader, each verifying the other's certificate with TLS_CA_FILE and
/// presenting its own (TLS_CERT_FILE) to the other, which requires one (TLS_CLIENT_CA_FILE).
#[test]
fn a_leader_and_a_follower_replicate_and_forward_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("cluster CA");
    let (leader_id, follower_id) = (
        identity(dir.path(), "leader", &ca, false),
        identity(dir.path(), "follower", &ca, false),
    );
    let (leader_port, follower_port) = (
        integration_tests::free_port(),
        integration_tests::free_port(),
    );
    let token = "replication-token-0123456789";
    let ca_file = leader_id.ca.to_str().unwrap().to_string();
    let follower = Server::start_on(
        &dir.path().join("follower"),
        &follower_id,
        follower_port,
        &[
            "--replication-mode",
            "follower",
            "--replication-leader-host",
            &format!("https://localhost:{leader_port}"),
            "--replication-token",
            token,
            "--tls-ca-file",
            &ca_file,
            "--tls-client-ca-file",
            &ca_file,
        ],
    );
    let leader = Server::start_on(
        &dir.path().join("leader"),
        &leader_id,
        leader_port,
        &[
            "--replication-replica-hosts",
            &format!("https://localhost:{follower_port}"),
            "--replication-token",
            token,
            "--tls-ca-file",
            &ca_file,
            "--tls-client-ca-file",
            &ca_file,
        ],
    );
    let client = identity(dir.path(), "client", &ca, false);
    let trust = [
        "--cacert",
        ca_file.as_str(),
        "--client-cert",
        client.cert.to_str().unwrap(),
        "--client-key",
        client.key.to_str().unwrap(),
    ];
    wait_ready(&leader.url(), &trust);
    ok(&kvctl(
        &leader.url(),
        &trust,
        &["put", "a", "from the leader"],
    ));
    wait_for(&follower.url(), &trust, "a", "from the leader");
    // Through the follower: forwarded to the leader, shipped back.
    ok(&kvctl(
        &follower.url(),
        &trust,
        &["put", "b", "via the follower"],
    ));
    assert_eq!(
        ok(&kvctl(&leader.url(), &trust, &["get", "b"])),
        "via the follower"
    );
    wait_for(&follower.url(), &trust, "b", "via the follower");
}
