//! The TLS configuration of this process's outgoing `https://` connections, set once at start
//! (`kv-server`: `TLS_CA_FILE`, its own certificate as client identity when the peers require one;
//! `kvctl`: `--cacert`). Without it an `https://` URL is refused with a message naming the setting: a
//! node never falls back to trusting whatever answers.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use rustls::ClientConfig;

use super::files::{certificates, private_key, roots, TlsError};

static CLIENT: OnceLock<Arc<ClientConfig>> = OnceLock::new();

/// Trusts the CAs in `ca` for every later `https://` connection, presenting `identity` (a certificate
/// chain and its key) when a server asks for a client certificate. Fails if already set.
pub fn set_client_config(ca: &Path, identity: Option<(&Path, &Path)>) -> Result<(), TlsError> {
    let builder = ClientConfig::builder_with_provider(super::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots(ca)?);
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => builder
            .with_client_auth_cert(certificates(cert)?, private_key(key)?)
            .map_err(|e| TlsError::Config(e.to_string()))?,
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    CLIENT
        .set(Arc::new(config))
        .map_err(|_| TlsError::Config("the TLS client configuration is set already".into()))
}

/// The configuration set by [`set_client_config`], if any.
pub fn client_config() -> Option<Arc<ClientConfig>> {
    CLIENT.get().cloned()
}
