//! Reading PEM certificates, keys and CA bundles, with errors that name the file.

use std::path::Path;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Why a TLS configuration could not be built. Never holds key material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or holds no usable PEM item.
    #[error("{what} {path}: {reason}")]
    File {
        /// What the file is for (certificate, private key, CA bundle).
        what: &'static str,
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// rustls refused the combination (a key that does not match the certificate, a bad CA).
    #[error("TLS configuration: {0}")]
    Config(String),
}

fn file_error(what: &'static str, path: &Path, reason: impl ToString) -> TlsError {
    TlsError::File {
        what,
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

/// The certificate chain in `path` (leaf first).
pub fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    const WHAT: &str = "certificate file";
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(WHAT, path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(WHAT, path, e))?;
    if certs.is_empty() {
        return Err(file_error(WHAT, path, "no PEM certificate in it"));
    }
    Ok(certs)
}

/// The private key in `path`.
pub fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| file_error("private key file", path, e))
}

/// The CA certificates in `path`, as a root store.
pub fn roots(path: &Path) -> Result<rustls::RootCertStore, TlsError> {
    let mut store = rustls::RootCertStore::empty();
    for cert in certificates(path)? {
        store
            .add(cert)
            .map_err(|e| file_error("CA file", path, e))?;
    }
    Ok(store)
}
