//! The TLS configuration of this process's outgoing `https://` connections, set at start and again on
//! a reload (`kv-server`: `TLS_CA_FILE`, its own certificate as client identity when the peers require
//! one, both read again on SIGHUP so that a rotated certificate is what it presents; `kvctl`:
//! `--cacert`). Connections open keep the configuration they shook hands with. Without one an
//! `https://` URL is refused with a message naming the setting: a node never falls back to trusting
//! whatever answers.

use std::path::Path;
use std::sync::Arc;

use parking_lot::RwLock;
use rustls::ClientConfig;

use super::files::{certificates, private_key, roots, TlsError};

static CLIENT: RwLock<Option<Arc<ClientConfig>>> = RwLock::new(None);

/// Trusts the CAs in `ca` for every later `https://` connection, presenting `identity` (a certificate
/// chain and its key) when a server asks for a client certificate. Replaces the configuration set
/// before, if any; on an error that one stays.
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
    *CLIENT.write() = Some(Arc::new(config));
    Ok(())
}

/// The configuration set by [`set_client_config`], if any.
pub fn client_config() -> Option<Arc<ClientConfig>> {
    CLIENT.read().clone()
}
