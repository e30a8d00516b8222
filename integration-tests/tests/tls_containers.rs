//! What TLS refuses, against containers of the image. Every container test runs its nodes with mutual
//! TLS and tokens (`integration_tests::docker`), so replication, Raft and forwarding over `https://`
//! are tested there; this test checks what they cannot: that the image's HEALTHCHECK (`kv-server
//! health`, over https, presenting the node's own certificate) turns both a leader and a follower
//! healthy, and that the published port answers neither plain HTTP nor a TLS client without a
//! certificate of the CA (`docs/security.md`).
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use integration_tests::docker::{docker_ok, DockerCluster};
use integration_tests::Client;
use rustls::pki_types::pem::PemObject;

fn healthy(container: &str) -> bool {
    docker_ok(&["inspect", "-f", "{{.State.Health.Status}}", container]) == "healthy"
}

/// One GET over TLS to `port` from a client that trusts the tests' CA but shows no certificate: the
/// bytes of the answer, or the error that ended the exchange.
fn without_client_certificate(port: u16) -> std::io::Result<Vec<u8>> {
    let mut roots = rustls::RootCertStore::empty();
    let ca = integration_tests::pki::pki().ca_pem();
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
    let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let tcp = TcpStream::connect(("127.0.0.1", port))?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    tls.write_all(b"GET /health-check HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
    let mut raw = Vec::new();
    tls.read_to_end(&mut raw)?;
    Ok(raw)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_image_checks_its_health_over_tls_and_refuses_plain_http_and_unknown_clients() {
    let cluster = DockerCluster::start(1, "static", &[]).await;
    let (leader, follower) = (&cluster.leader, &cluster.followers[0]);
    // The HEALTHCHECK is readiness over https: the follower's needs its leader to answer over TLS.
    let deadline = Instant::now() + Duration::from_secs(90);
    while !(healthy(&leader.name) && healthy(&follower.name)) {
        assert!(
            Instant::now() < deadline,
            "not healthy: {}",
            docker_ok(&["logs", "--tail", "20", &follower.name])
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let tls = leader.client();
    assert!(tls.is_tls());
    assert_eq!(tls.request("GET", "/health-check", b"").0, 200);
    // Plain HTTP to the published TLS port gets no HTTP answer.
    let plain = Client::new(tls.addr);
    assert!(plain.try_request("GET", "/health-check", b"").is_err());
    // The listener requires a client certificate of the CA (TLS_CLIENT_CA_FILE).
    let refused = without_client_certificate(tls.addr.port());
    let reason = format!("{refused:?}");
    assert!(
        refused.is_err() && reason.contains("CertificateRequired"),
        "a client without a certificate got {reason}"
    );
}
