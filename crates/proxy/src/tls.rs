//! rustls configurations: server side for chains that terminate TLS, client side for clusters
//! that originate it. Both are built from PEM files once and cached by settings and file
//! modification times, so a renewed certificate is picked up by the next connection.

pub mod client;
pub mod server;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading {path}: {reason}")]
    Load { path: PathBuf, reason: String },
    #[error("{path}: no certificate in the file")]
    NoCertificate { path: PathBuf },
    #[error("{0}")]
    Rustls(#[from] rustls::Error),
    #[error("{0}")]
    Config(String),
}

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let load = |reason: String| Error::Load {
        path: path.to_owned(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| load(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| load(e.to_string()))?;
    if certs.is_empty() {
        return Err(Error::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, Error> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| Error::Load {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

pub fn load_roots(path: &Path) -> Result<RootCertStore, Error> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots.add(cert).map_err(|e| Error::Load {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    }
    Ok(roots)
}

/// Modification times of the files a configuration was built from: a change rebuilds it.
pub fn stamp<'a>(paths: impl IntoIterator<Item = &'a Path>) -> Vec<Option<SystemTime>> {
    paths
        .into_iter()
        .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .collect()
}

/// True when the certificate carries one of `names` as a DNS or IP SAN. URI SANs (SPIFFE)
/// are not matched yet: such a list never matches, so it fails closed.
pub fn cert_has_san(cert: &CertificateDer<'_>, names: &[String]) -> bool {
    let Ok(parsed) = rustls::server::ParsedCertificate::try_from(cert) else {
        return false;
    };
    names.iter().any(|n| {
        ServerName::try_from(n.as_str())
            .is_ok_and(|name| rustls::client::verify_server_name(&parsed, &name).is_ok())
    })
}
