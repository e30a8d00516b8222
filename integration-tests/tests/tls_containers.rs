//! The image with TLS and tokens on: a leader and a follower container replicating and forwarding over
//! `https://` on a network of their own, each verifying the other with `TLS_CA_FILE`, clients needing a
//! token; the image's HEALTHCHECK (`kv-server health`, over https) turns them healthy; the host writes
//! and reads over TLS with a bearer token, and plain HTTP gets no answer (`docs/security.md`).
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use integration_tests::docker::{docker_ok, ensure_image, image, run::RUN_LABEL, run_id};
use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair};

const TOKEN: &str = "tls-container-admin-token-0123456789";
const PEER: &str = "tls-container-replication-token-0123";

/// Containers and a network of this test, removed on drop.
struct Objects {
    containers: Vec<String>,
    network: String,
}

impl Drop for Objects {
    fn drop(&mut self) {
        for c in &self.containers {
            let _ = std::process::Command::new("docker")
                .args(["rm", "-f", c])
                .output();
        }
        let _ = std::process::Command::new("docker")
            .args(["network", "rm", &self.network])
            .output();
    }
}

/// A CA and one certificate for every name the nodes are reached by (PEM: CA, certificate, key).
fn certificates(names: &[&str]) -> (String, String, String) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let cert = params.signed_by(&key, &issuer).unwrap().pem();
    (ca_pem, cert, key.serialize_pem())
}

/// One HTTPS request to 127.0.0.1:`port` verified as `localhost` against `ca` (`Connection: close`):
/// (status, body).
fn https(
    ca: &str,
    port: u16,
    method: &str,
    path: &str,
    body: &[u8],
) -> std::io::Result<(u16, Vec<u8>)> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(ca.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let conn =
        rustls::ClientConnection::new(Arc::new(config), name).map_err(std::io::Error::other)?;
    let tcp = TcpStream::connect(("127.0.0.1", port))?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    tls.write_all(&req)?;
    let mut raw = Vec::new();
    // A peer that closes without close_notify ends the read with UnexpectedEof: what came is the answer.
    if let Err(e) = tls.read_to_end(&mut raw) {
        if e.kind() != std::io::ErrorKind::UnexpectedEof || raw.is_empty() {
            return Err(e);
        }
    }
    integration_tests::parse_answer(&raw).map(|a| (a.status, a.body))
}

fn healthy(container: &str) -> bool {
    docker_ok(&["inspect", "-f", "{{.State.Health.Status}}", container]) == "healthy"
}

fn host_port(container: &str) -> u16 {
    let mapped = docker_ok(&["port", container, "8080/tcp"]);
    let line = mapped
        .lines()
        .find(|l| l.starts_with("127.0.0.1:"))
        .unwrap();
    line.rsplit(':').next().unwrap().parse().unwrap()
}

#[test]
fn the_image_replicates_and_forwards_over_tls_with_tokens() {
    ensure_image();
    let prefix = run_id().cluster_prefix(&format!(
        "tls-{}-{:x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let (leader, follower) = (format!("{prefix}-leader"), format!("{prefix}-follower"));
    let objects = Objects {
        containers: vec![leader.clone(), follower.clone()],
        network: format!("{prefix}-net"),
    };
    let label = format!("{RUN_LABEL}={}", run_id().as_str());
    docker_ok(&["network", "create", "--label", &label, &objects.network]);

    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = certificates(&["localhost", "127.0.0.1", &leader, &follower]);
    let write = |name: &str, text: &str| {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        // Read by the image's unprivileged user (a bind mount keeps the host's owner).
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    };
    write("ca.crt", &ca);
    write("node.crt", &cert);
    write("node.key", &key);
    write("tokens", &format!("admin {TOKEN}\n"));
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let mount = format!("{}:/tls:ro", dir.path().display());
    let run = |name: &str, role: &[String]| {
        let mut args: Vec<String> = [
            "run",
            "-d",
            "--name",
            name,
            "--network",
            &objects.network,
            "--label",
            &label,
            "-v",
            &mount,
            "-p",
            "127.0.0.1::8080",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for env in [
            "TLS_CERT_FILE=/tls/node.crt",
            "TLS_KEY_FILE=/tls/node.key",
            "TLS_CA_FILE=/tls/ca.crt",
            "AUTH_TOKENS_FILE=/tls/tokens",
            &format!("REPLICATION_TOKEN={PEER}"),
            "RUST_LOG=info",
        ] {
            args.extend(["-e".to_string(), env.to_string()]);
        }
        for env in role {
            args.extend(["-e".to_string(), env.clone()]);
        }
        args.push(image());
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        docker_ok(&refs);
    };
    run(
        &follower,
        &[
            "REPLICATION_MODE=follower".into(),
            format!("REPLICATION_LEADER_HOST=https://{leader}:8080"),
        ],
    );
    run(
        &leader,
        &[format!("REPLICATION_REPLICA_HOSTS=https://{follower}:8080")],
    );
    // The HEALTHCHECK is readiness over https: the follower's needs its leader to answer over TLS.
    let deadline = Instant::now() + Duration::from_secs(90);
    while !(healthy(&leader) && healthy(&follower)) {
        assert!(
            Instant::now() < deadline,
            "not healthy: {}",
            docker_ok(&["logs", "--tail", "20", &follower])
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (lp, fp) = (host_port(&leader), host_port(&follower));
    let (code, body) = https(&ca, lp, "PUT", "/v1/kv/a", b"over tls").unwrap();
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    // Through the follower: forwarded to the leader over TLS, shipped back over TLS.
    let (code, body) = https(&ca, fp, "PUT", "/v1/kv/b", b"via the follower").unwrap();
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    let lsn = integration_tests::cluster::lsn_of(&body).unwrap();
    for (key, want) in [("a", "over tls"), ("b", "via the follower")] {
        let path = format!("/v1/kv/{key}?min_lsn={lsn}&max_wait_ms=30000");
        let (code, value) = https(&ca, fp, "GET", &path, b"").unwrap();
        assert_eq!((code, value), (200, want.as_bytes().to_vec()), "{key}");
    }
    // Plain HTTP to the published TLS port gets no HTTP answer.
    let plain = integration_tests::Client {
        addr: std::net::SocketAddr::from(([127, 0, 0, 1], lp)),
    };
    assert!(plain.try_request("GET", "/health-check", b"").is_err());
    drop(objects);
}
