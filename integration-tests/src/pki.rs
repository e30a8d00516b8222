//! The container tests' certificate authority: one CA per test process (made with `rcgen`, never
//! written anywhere but into the containers it starts), a certificate per node for the names it is
//! reached by, and the client configuration [`crate::Client::tls`] uses.
//!
//! Every certificate is for server and client authentication: a node presents the same one to the
//! clients it serves and, for mutual TLS, to the peers it calls; the tests' client presents its own.
//! Everything is verified against the CA, as `docs/security.md` describes for a deployment.

use std::sync::{Arc, OnceLock};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The process's CA and the client configuration that trusts it.
pub struct TestPki {
    ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
    client: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for TestPki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestPki").finish_non_exhaustive()
    }
}

/// A certificate and its key, PEM.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The certificate.
    pub cert: String,
    /// Its private key.
    pub key: String,
}

/// The process's CA, made on first use.
pub fn pki() -> &'static TestPki {
    static PKI: OnceLock<TestPki> = OnceLock::new();
    PKI.get_or_init(TestPki::new)
}

impl TestPki {
    fn new() -> Self {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "kv container tests CA");
        let ca_pem = params.self_signed(&key).expect("CA certificate").pem();
        let issuer = Issuer::new(params, key);
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots.add(cert.expect("CA PEM")).expect("CA root");
        }
        let me = issue(&issuer, &["kv-test-client"]);
        let certs = CertificateDer::pem_slice_iter(me.cert.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .expect("client certificate PEM");
        let key = PrivateKeyDer::from_pem_slice(me.key.as_bytes()).expect("client key PEM");
        let client = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .expect("client certificate");
        Self {
            ca_pem,
            issuer,
            client: Arc::new(client),
        }
    }

    /// The CA's certificate (PEM): the nodes' `TLS_CA_FILE` and `TLS_CLIENT_CA_FILE`.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// A certificate for `names` and for `localhost` and `127.0.0.1` (the tests reach every node
    /// through a port published on the host's loopback and verify it as `localhost`).
    pub fn issue(&self, names: &[&str]) -> Identity {
        let mut all = vec!["localhost", "127.0.0.1"];
        all.extend_from_slice(names);
        issue(&self.issuer, &all)
    }

    /// The tests' client configuration: trusts the CA, presents a certificate it signed.
    pub fn client_config(&self) -> &Arc<rustls::ClientConfig> {
        &self.client
    }
}

fn issue(issuer: &Issuer<'static, KeyPair>, names: &[&str]) -> Identity {
    let key = KeyPair::generate().expect("key");
    let mut params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .expect("certificate parameters");
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let cert = params.signed_by(&key, issuer).expect("certificate").pem();
    Identity {
        cert,
        key: key.serialize_pem(),
    }
}
