//! The LAN API's server certificate: the operator's own (`[signalling] cert`/`key`), or a
//! per-gateway one made at first start: a small CA of this gateway alone (`ca.pem`, to install on
//! the headset by MDM or to pin; its key is thrown away once the leaf is signed) and a server
//! certificate for the configured names. `heim sig enrol` prints the CA's SHA-256 fingerprint.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Certificate errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written.
    #[error("{path}: {what}")]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        what: String,
    },
    /// The certificate could not be generated.
    #[error("cannot generate the signalling certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls refused the material.
    #[error("TLS configuration refused: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Where the generated material lives.
#[derive(Debug, Clone)]
pub struct Generated {
    /// The gateway's signalling CA (what clients trust).
    pub ca: PathBuf,
    /// The server certificate chain.
    pub cert: PathBuf,
    /// Its key.
    pub key: PathBuf,
}

impl Generated {
    /// The files under `dir`.
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            ca: dir.join("ca.pem"),
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
        }
    }
}

fn file_err(path: &Path, what: impl std::fmt::Display) -> Error {
    Error::File {
        path: path.to_owned(),
        what: what.to_string(),
    }
}

/// Makes the CA and server certificate in `dir` unless they exist.
pub fn ensure(dir: &Path, gateway_id: &str, names: &[String]) -> Result<Generated, Error> {
    let g = Generated::in_dir(dir);
    if g.ca.exists() && g.cert.exists() && g.key.exists() {
        return Ok(g);
    }
    std::fs::create_dir_all(dir).map_err(|e| file_err(dir, e))?;
    super::tokens::match_owner(dir);
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.distinguished_name.push(
        DnType::CommonName,
        format!("Heim {gateway_id} signalling CA"),
    );
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    ca.not_before = rcgen::date_time_ymd(2024, 1, 1);
    ca.not_after = rcgen::date_time_ymd(2045, 1, 1);
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate()?;
    let mut leaf = CertificateParams::new(names.to_vec())?;
    leaf.distinguished_name
        .push(DnType::CommonName, format!("heim-{gateway_id}"));
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.not_before = rcgen::date_time_ymd(2024, 1, 1);
    leaf.not_after = rcgen::date_time_ymd(2045, 1, 1);
    let cert = leaf.signed_by(&key, &issuer)?;
    write_private(&g.key, key.serialize_pem().as_bytes())?;
    std::fs::write(&g.cert, format!("{}{}", cert.pem(), ca_cert.pem()))
        .map_err(|e| file_err(&g.cert, e))?;
    // Written last: its presence means the set is complete.
    std::fs::write(&g.ca, ca_cert.pem()).map_err(|e| file_err(&g.ca, e))?;
    for f in [&g.key, &g.cert, &g.ca] {
        super::tokens::match_owner(f);
    }
    tracing::info!(dir = %dir.display(), "Generated this gateway's signalling certificate.");
    Ok(g)
}

fn write_private(path: &Path, data: &[u8]) -> Result<(), Error> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| file_err(path, e))?;
    f.write_all(data).map_err(|e| file_err(path, e))
}

/// The SHA-256 fingerprint of the first certificate in a PEM file, `AA:BB:…`.
pub fn fingerprint(pem: &Path) -> Result<String, Error> {
    let c = CertificateDer::pem_file_iter(pem)
        .map_err(|e| file_err(pem, e))?
        .next()
        .ok_or_else(|| file_err(pem, "no certificate in the file"))?
        .map_err(|e| file_err(pem, e))?;
    let d = ring::digest::digest(&ring::digest::SHA256, c.as_ref());
    Ok(d.as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":"))
}

/// The rustls server configuration (HTTP/1.1 over TLS 1.2/1.3, no client certificates: LAN
/// clients authenticate with bearer tokens).
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, Error> {
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| file_err(cert, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(cert, format!("bad PEM: {e}")))?;
    if chain.is_empty() {
        return Err(file_err(cert, "no certificate in the file"));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| file_err(key, format!("no usable key: {e}")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}
