//! TLS with rustls: the listener's certificate (reloaded on demand: `kv-server` reloads on SIGHUP), an
//! optional CA whose client certificates the listener then requires, and the CA (and optional client
//! identity) with which this process's [`crate::client::Client`] verifies `https://` servers: peers,
//! leaders, or the server `kvctl` talks to.
//!
//! Files are PEM: a certificate chain (leaf first), a PKCS#8, PKCS#1 or SEC1 private key, a bundle of CA
//! certificates. The crypto provider is *ring*, named explicitly so that no other provider another
//! dependency enables can change it.

mod client;
mod files;
mod listener;

pub use client::{client_config, set_client_config};
pub use files::TlsError;
pub use listener::{TlsFiles, TlsListener};

/// The crypto provider of every TLS configuration here.
fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::ring::default_provider())
}
