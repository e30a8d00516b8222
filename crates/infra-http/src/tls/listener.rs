//! The listener's TLS configuration, replaced whole by [`TlsListener::reload`]: connections accepted
//! afterwards use the new certificate, those already open keep the one they shook hands with. A reload
//! that fails (a half-written file, a key that does not match) keeps the configuration in use.

use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::RwLock;
use rustls::server::WebPkiClientVerifier;
use rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

use super::files::{certificates, private_key, roots, TlsError};

/// Where the listener's TLS material is.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// The certificate chain (`TLS_CERT_FILE`).
    pub cert: PathBuf,
    /// Its private key (`TLS_KEY_FILE`).
    pub key: PathBuf,
    /// When set (`TLS_CLIENT_CA_FILE`), every client must present a certificate this CA signed.
    pub client_ca: Option<PathBuf>,
}

/// The listener's current TLS configuration (see the module doc).
#[derive(Debug)]
pub struct TlsListener {
    files: TlsFiles,
    current: RwLock<Arc<ServerConfig>>,
}

impl TlsListener {
    /// Reads `files` and builds the configuration.
    pub fn open(files: TlsFiles) -> Result<Self, TlsError> {
        let config = build(&files)?;
        Ok(Self {
            files,
            current: RwLock::new(config),
        })
    }

    /// Reads the files again and, if they make a configuration, uses it for every later connection.
    pub fn reload(&self) -> Result<(), TlsError> {
        let config = build(&self.files)?;
        *self.current.write() = config;
        Ok(())
    }

    /// An acceptor with the current configuration.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.current.read().clone())
    }

    /// Whether clients must present a certificate.
    pub fn requires_client_certificates(&self) -> bool {
        self.files.client_ca.is_some()
    }
}

fn build(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    let builder = ServerConfig::builder_with_provider(super::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots(ca)?),
                super::provider(),
            )
            .build()
            .map_err(|e| TlsError::Config(format!("client CA {}: {e}", ca.display())))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(certificates(&files.cert)?, private_key(&files.key)?)
        .map_err(|e| {
            TlsError::Config(format!(
                "{} with {}: {e}",
                files.cert.display(),
                files.key.display()
            ))
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
