//! Mutual-TLS client configuration for the broker connection. There is no plaintext mode: the
//! uplink cannot be built without a CA, a client certificate and its key.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ClientConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Why the TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A PEM file could not be read or holds nothing usable.
    #[error("{path}: {what}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        what: String,
    },
    /// rustls refused the material (e.g. the key does not match the certificate).
    #[error("TLS configuration refused: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Builds the rustls client configuration: the broker must chain to `ca`; we present `cert`/`key`.
pub fn client_config(ca: &Path, cert: &Path, key: &Path) -> Result<Arc<ClientConfig>, Error> {
    let pem_err = |path: &Path, what: String| Error::Pem {
        path: path.to_owned(),
        what,
    };
    let mut roots = rustls::RootCertStore::empty();
    let cas = CertificateDer::pem_file_iter(ca)
        .map_err(|e| pem_err(ca, format!("cannot read CA certificates: {e}")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_err(ca, format!("bad PEM: {e}")))?;
    if cas.is_empty() {
        return Err(pem_err(ca, "no CA certificate in the file".into()));
    }
    for c in cas {
        roots
            .add(c)
            .map_err(|e| pem_err(ca, format!("unusable CA certificate: {e}")))?;
    }
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| pem_err(cert, format!("cannot read the client certificate: {e}")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_err(cert, format!("bad PEM: {e}")))?;
    if chain.is_empty() {
        return Err(pem_err(cert, "no certificate in the file".into()));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| pem_err(key, format!("no usable private key: {e}")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
    Ok(Arc::new(cfg))
}
