//! Throw-away certificates for the demo, tests and benchmarks: a CA, a broker certificate for
//! `127.0.0.1`/`localhost`, and client certificates — generated at run time with `rcgen`, never
//! committed.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// Certificate generation or file errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// rcgen failed.
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// Writing the files failed.
    #[error("writing certificates: {0}")]
    Io(#[from] std::io::Error),
}

/// Paths of one certificate and its key.
#[derive(Debug, Clone)]
pub struct CertFiles {
    /// Certificate (PEM).
    pub cert: PathBuf,
    /// Private key (PEM, PKCS#8).
    pub key: PathBuf,
}

/// A test CA that can issue more certificates.
pub struct Pki {
    dir: PathBuf,
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate (PEM file).
    pub ca: PathBuf,
    /// The broker's server certificate (SAN 127.0.0.1, localhost).
    pub server: CertFiles,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki").field("dir", &self.dir).finish()
    }
}

impl Pki {
    /// A new CA named `name` in `dir`, with a broker certificate.
    pub fn generate(dir: &Path, name: &str) -> Result<Self, Error> {
        std::fs::create_dir_all(dir)?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key)?;
        let ca = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&ca, cert.pem())?;
        let issuer = Issuer::new(params, key);
        let mut pki = Self {
            dir: dir.to_owned(),
            issuer,
            ca,
            server: CertFiles {
                cert: PathBuf::new(),
                key: PathBuf::new(),
            },
        };
        pki.server = pki.issue("broker", &["127.0.0.1", "localhost"], true, None)?;
        Ok(pki)
    }

    /// Issues a certificate with common name `cn`. `server` selects server-auth usage (else
    /// client-auth). `not_after` overrides the validity end (to make expired certificates).
    pub fn issue(
        &self,
        cn: &str,
        sans: &[&str],
        server: bool,
        not_after: Option<(i32, u8, u8)>,
    ) -> Result<CertFiles, Error> {
        let key = KeyPair::generate()?;
        let mut params =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())?;
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![if server {
            ExtendedKeyUsagePurpose::ServerAuth
        } else {
            ExtendedKeyUsagePurpose::ClientAuth
        }];
        if let Some((y, m, d)) = not_after {
            params.not_before = rcgen::date_time_ymd(y - 1, m, d);
            params.not_after = rcgen::date_time_ymd(y, m, d);
        }
        let cert = params.signed_by(&key, &self.issuer)?;
        let files = CertFiles {
            cert: self.dir.join(format!("{cn}.pem")),
            key: self.dir.join(format!("{cn}.key")),
        };
        std::fs::write(&files.cert, cert.pem())?;
        write_private(&files.key, key.serialize_pem().as_bytes())?;
        Ok(files)
    }
}

fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(data)
}
